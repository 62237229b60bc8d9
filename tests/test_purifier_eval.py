"""Evaluation fit for purifiers (docs/purifiers.md): EOT, BPDA, seeded scoring draws, gray-box, MAEP, γ sweep."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mimir_fast.attacks import pgd
from mimir_fast.attacks.linf import eot_gradient
from mimir_fast.errors import ConfigError
from mimir_fast.evaluate.checks import run_checks, sampling_slack
from mimir_fast.evaluate.config import EvalConfig
from mimir_fast.evaluate.suite import Target, example_noise, score
from mimir_fast.models_vit import create_classifier
from mimir_fast.purify.de3 import De3Purifier
from mimir_fast.purify.defended import BPDA, PurifiedClassifier
from tests.test_cli import assert_one_line_error, run
from tests.test_eval import _classifier_ckpt
from tests.test_nim import _nim_ckpt, _pretrain_ckpt, tiny_nim


class NoisyLinear(nn.Module):
    """A randomised toy model: logits = W (x + s·ε) with ε ~ N(0, I) from the global RNG, and a
    nonlinearity so that the gradient depends on the draw."""

    randomized = True

    def __init__(self, d=12, classes=4, s=0.5):
        super().__init__()
        self.lin = nn.Linear(d, classes)
        self.s = s

    def forward(self, x, noise=None):
        noise = torch.randn_like(x) if noise is None else noise
        return self.lin(torch.tanh((x + self.s * noise).flatten(1)))


def _clf(seed=0, size=16):
    torch.manual_seed(seed)
    return create_classifier("vit_micro", img_size=size, patch_size=4, num_classes=10, head_init_std=0.5).eval()


# ---------------------------------------------------------------------- EOT
@pytest.mark.parametrize("k", [1, 3, 20])
def test_eot_gradient_is_the_mean_of_per_draw_gradients(k):
    torch.manual_seed(1)
    model = NoisyLinear()
    x = torch.rand(5, 3, 2, 2, requires_grad=True)
    y = torch.randint(0, 4, (5,))

    def objective(z):
        return F.cross_entropy(model(z), y)

    torch.manual_seed(7)
    ours = eot_gradient(objective, x, k)
    torch.manual_seed(7)  # the same k draws, one gradient each, averaged by hand
    grads = [torch.autograd.grad(objective(x), x)[0] for _ in range(k)]
    expected = torch.stack(grads).mean(0)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-7)
    if k > 1:  # the draws really differ: each single gradient is not the average
        assert not torch.allclose(grads[0], expected)


def test_pgd_with_eot_steps_on_the_averaged_gradient():
    torch.manual_seed(2)
    model = NoisyLinear()
    x, y = torch.rand(6, 3, 2, 2), torch.randint(0, 4, (6,))
    eps, alpha, steps, k = 8 / 255, 2 / 255, 4, 5
    start = torch.empty_like(x).uniform_(-eps, eps)
    torch.manual_seed(3)
    ours = pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, start=start, eot_iter=k)
    torch.manual_seed(3)  # PGD written out with EOT: sign of the mean of k gradients per step
    adv = (x + start).clamp(0, 1)
    for _ in range(steps):
        adv.requires_grad_(True)
        g = sum(torch.autograd.grad(F.cross_entropy(model(adv), y), adv)[0] for _ in range(k)) / k
        adv = adv.detach() + alpha * g.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    assert torch.equal(ours, adv)
    assert (ours - x).abs().max() <= eps + 1e-7


def test_eps_zero_returns_the_clean_images_without_gradients():
    model = NoisyLinear()
    x, y = torch.rand(3, 3, 2, 2), torch.randint(0, 4, (3,))
    out = pgd(model, x, y, eps=0.0, alpha=0.0, steps=5, eot_iter=7)
    assert torch.equal(out, x)


# ---------------------------------------------------------------------- BPDA, noise pass-through
def test_bpda_forward_is_the_purifier_and_backward_is_the_identity():
    purifier = De3Purifier(tiny_nim(), 70, "clean")
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    noise = torch.randn(3, 3, 16, 16)
    out = BPDA(purifier)(x, noise)
    torch.testing.assert_close(out, purifier(x.detach(), noise), rtol=0, atol=1e-6)
    weights = torch.randn_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), x)
    assert torch.equal(grad, weights)
    assert BPDA(purifier).randomized


def test_purified_classifier_is_deterministic_given_the_noise():
    model = PurifiedClassifier(De3Purifier(tiny_nim(), 70, "noisy"), _clf()).eval()
    assert model.randomized
    assert not PurifiedClassifier(De3Purifier(tiny_nim(), 0, "noisy"), _clf()).randomized
    x, noise = torch.rand(4, 3, 16, 16), torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(model(x, noise), model(x, noise), rtol=0, atol=0)
    assert not torch.allclose(model(x), model(x))  # fresh draws otherwise


def test_scoring_draws_are_seeded_per_example_not_per_batch():
    model = PurifiedClassifier(De3Purifier(tiny_nim(), 140, "noisy"), _clf()).eval()
    target = Target(model=model, attack_model=model, classifier=model.classifier, randomized=True, draws=4)
    x, y = torch.rand(7, 3, 16, 16), torch.randint(0, 10, (7,))
    idx = [3, 11, 5, 0, 42, 8, 9]
    whole = score(target, x, y, idx, seed=5, bs=7)
    pieces = torch.cat([score(target, x[:3], y[:3], idx[:3], 5, 2), score(target, x[3:], y[3:], idx[3:], 5, 4)])
    assert torch.equal(whole, pieces)
    assert whole.min() >= 0 and whole.max() <= 4
    a = example_noise([1, 2], (3, 4, 4), seed=0, draw=0)
    assert torch.equal(a, example_noise([1, 2], (3, 4, 4), 0, 0))
    assert not torch.equal(a[0], example_noise([1], (3, 4, 4), 0, 1)[0])  # another draw
    assert not torch.equal(a[0], a[1])  # another example


# ---------------------------------------------------------------------- config and checks
def test_defaults_follow_the_defence():
    assert EvalConfig(resume="c").attack_list == ["clean", "pgd20", "pgd100", "aa"]
    de3 = EvalConfig(resume="c", defense="de3", purifier="p")
    assert de3.attack_list == ["clean", "pgd20", "aa-rand", "pgd20-gb"]
    assert EvalConfig(resume="c", defense="maep", purifier="p").attack_list == ["clean", "pgd20", "aa", "pgd20-gb"]
    assert EvalConfig(resume="c", defense="de3", purifier="p", gamma_sweep="70,0,70,35").gammas == [70, 0, 35]
    cases = [
        (dict(attacks="clean,pgd20-gb"), "need a defence"),
        (dict(defense="maep"), "needs --purifier"),
        (dict(defense="de3", purifier="p", gamma_sweep="0,-1"), "gamma_sweep values must be >= 0"),
        (dict(defense="maep", purifier="p", gamma_sweep="0,70"), "needs --defense de3"),
        (dict(defense="de3", purifier="p", gamma_sweep="a"), "comma-separated"),
        (dict(eot_iter=0), "eot_iter must be >= 1"),
        (dict(eval_draws=0), "eval_draws must be >= 1"),
        (dict(gradient="fd"), "unknown gradient"),
        (dict(transfer="crop"), "unknown transfer"),
    ]
    for kw, needle in cases:
        with pytest.raises(ConfigError, match=needle):
            EvalConfig(resume="c", **kw)


def test_randomised_checks_allow_two_standard_errors_only():
    cfg = EvalConfig(resume="c", eps_curve="0,8")
    n = 100
    acc = {"clean": 50.0, "curve:0": 50.0, "curve:8": 30.0, "pgd20": 30.0, "aa-rand": 38.0}
    per = {"clean": [1] * 50 + [0] * 50, "curve:0": [1] * 50 + [0] * 50}
    slack = sampling_slack(38.0, n, True)
    assert slack == pytest.approx(200 * (0.38 * 0.62 / 100) ** 0.5) and sampling_slack(38.0, n, False) == 0
    status = {c["name"]: c["status"] for c in run_checks(cfg, acc, per, n, 0, {}, {}, randomized=True)}
    assert status["autoattack_le_pgd"] == "pass"  # 8 points above PGD, within 2·9.7
    status = {c["name"]: c["status"] for c in run_checks(cfg, acc, per, n, 0, {}, {}, randomized=False)}
    assert status["autoattack_le_pgd"] == "fail"
    acc["aa-rand"] = 30 + slack + 0.5
    status = {c["name"]: c["status"] for c in run_checks(cfg, acc, per, n, 0, {}, {}, randomized=True)}
    assert status["autoattack_le_pgd"] == "fail"


# ---------------------------------------------------------------------- end to end through the CLI
def _maep_ckpt(path, size=16):
    return _pretrain_ckpt(path, "maep", False, size)


def test_eval_de3_full_gradient_eot_and_graybox(tmp_path, capsys):
    clf, nim = _classifier_ckpt(tmp_path / "clf.pth"), _nim_ckpt(tmp_path / "nim.pth")
    out = tmp_path / "ev"
    code, stdout, err = run(["eval", "--resume", str(clf), "--defense", "de3", "--gamma", "70", "--purifier", str(nim),
                             "--n_ex", "8", "--attacks", "clean,pgd20,pgd20-gb", "--eps_curve", "0,8",
                             "--eot_iter", "3", "--eval_draws", "4", "--output_dir", str(out)], capsys)
    assert code == 0, err
    report = json.loads((out / "eval_results.json").read_text())
    d = report["defense"]
    assert d["name"] == "de3" and d["randomized"] and d["eot_iter"] == 3 and d["eval_draws"] == 4
    assert d["ms_per_image"] > 0
    assert report["eval_draws"] == 4 and set(report["accuracy"]) == {"clean", "pgd20", "pgd20-gb"}
    assert "EOT-3" in report["attacks"]["pgd20"]["setting"]
    assert "gray-box" in report["attacks"]["pgd20-gb"]["setting"] and "weaker" in stdout
    for key, acc in report["accuracy"].items():  # per example: how many of the 4 draws were right
        counts = report["per_example"][key]
        assert len(counts) == 8 and all(0 <= c <= 4 for c in counts)
        assert acc == pytest.approx(100 * sum(counts) / 32, abs=1e-9)
        assert report["accuracy_worst"][key] == pytest.approx(100 * sum(c == 4 for c in counts) / 8, abs=1e-9)
    status = {c["name"]: c["status"] for c in report["checks"]}
    assert status["eps0_equals_clean"] == "pass"  # the same seeded draws score clean and PGD at eps 0
    assert report["per_example"]["curve:0"] == report["per_example"]["clean"]


def test_eval_maep_and_bpda(tmp_path, capsys):
    clf, maep = _classifier_ckpt(tmp_path / "clf.pth"), _maep_ckpt(tmp_path / "maep.pth")
    base = ["eval", "--resume", str(clf), "--defense", "maep", "--purifier", str(maep), "--n_ex", "6",
            "--attacks", "clean,pgd20,pgd20-gb", "--eps_curve", "0,8"]
    code, _, err = run([*base, "--output_dir", str(tmp_path / "a")], capsys)
    assert code == 0, err
    exact = json.loads((tmp_path / "a" / "eval_results.json").read_text())
    d = exact["defense"]
    assert d["name"] == "maep" and not d["randomized"] and d["eot_iter"] == 1 and d["eval_draws"] == 1
    assert "accuracy_worst" not in exact
    assert {c["name"]: c["status"] for c in exact["checks"]}["eps0_equals_clean"] == "pass"
    code, _, err = run([*base, "--gradient", "bpda", "--output_dir", str(tmp_path / "b")], capsys)
    assert code == 0, err
    bpda = json.loads((tmp_path / "b" / "eval_results.json").read_text())
    assert "BPDA" in bpda["attacks"]["pgd20"]["setting"]
    assert bpda["accuracy"]["clean"] == exact["accuracy"]["clean"]  # BPDA changes the attack only

    maep32, nim = _maep_ckpt(tmp_path / "m32.pth", size=32), _nim_ckpt(tmp_path / "nim.pth")
    short = ["eval", "--resume", str(clf), "--n_ex", "2", "--attacks", "clean", "--output_dir", str(tmp_path / "c")]
    cases = [
        (["--defense", "maep"], ["needs --purifier", "--method maep"]),
        (["--defense", "maep", "--purifier", str(maep32)], ["trained on 32 px", "choose a transfer"]),
        (["--defense", "maep", "--purifier", str(nim)], ["not maep"]),
        (["--defense", "de3", "--purifier", str(maep)], ["not nim"]),
        (["--attacks", "clean,aa-gb"], ["need a defence"]),
        (["--defense", "de3", "--purifier", str(nim), "--gamma_sweep", "0,-3"], ["gamma_sweep values must be >= 0"]),
    ]
    for argv, needles in cases:
        code, _, err = run([*short, *argv], capsys)
        assert_one_line_error(code, err, *needles)
    code, _, err = run([*short, "--defense", "maep", "--purifier", str(maep32), "--transfer", "resize"], capsys)
    assert code == 0, err


def test_gamma_sweep_writes_the_curve(tmp_path, capsys):
    clf, nim = _classifier_ckpt(tmp_path / "clf.pth"), _nim_ckpt(tmp_path / "nim.pth")
    out = tmp_path / "sweep"
    code, stdout, err = run(["eval", "--resume", str(clf), "--defense", "de3", "--purifier", str(nim),
                             "--gamma_sweep", "70,0", "--n_ex", "5", "--attacks", "clean,pgd20,pgd20-gb",
                             "--eps_curve", "8", "--eot_iter", "2", "--eval_draws", "2", "--output_dir", str(out)],
                            capsys)
    assert code == 0, err
    sweep = json.loads((out / "gamma_curve.json").read_text())
    assert sweep["gammas"] == [70, 0]
    assert set(sweep["accuracy"]) == {"clean", "pgd20", "pgd20-gb"}
    assert all(len(v) == 2 for v in sweep["accuracy"].values())
    assert (out / "gamma_curve.png").stat().st_size > 0
    for g in ("70", "0"):
        per = json.loads((out / f"gamma_{g}" / "eval_results.json").read_text())
        assert per["defense"]["gamma"] == float(g)
        assert sweep["accuracy"]["clean"][["70", "0"].index(g)] == per["accuracy"]["clean"]
    zero = json.loads((out / "gamma_0" / "eval_results.json").read_text())
    assert not zero["defense"]["randomized"] and zero["eval_draws"] == 1  # γ = 0 draws nothing
    assert "gamma sweep:" in stdout


def test_autoattack_attack_all_keeps_every_adversarial_example():
    from mimir_fast.evaluate.autoattack import run_autoattack

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    x = torch.rand(9, 3, 2, 2)
    y = model(x).argmax(1)
    y[:3] = (y[:3] + 1) % 3  # three points start misclassified

    def shift(xb, yb):  # an "attack" that moves every point but fools none of them (logits barely move)
        return (xb + 1e-6).clamp(0, 1)

    _, kept, _ = run_autoattack(model, [("shift", shift)], x, y, bs=4)
    assert torch.equal(kept, x)  # fra31: only fooled points keep their adversarial example
    robust, every, after = run_autoattack(model, [("shift", shift)], x, y, bs=4, attack_all=True)
    assert torch.equal(every, (x + 1e-6).clamp(0, 1))  # every point attacked, every output kept
    assert after == [("shift", int(robust.sum()))] and robust[3:].all() and not robust[:3].any()
