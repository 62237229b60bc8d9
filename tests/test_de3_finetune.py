"""NIM/De^3 classifier fine-tuning (``finetune --method de3``, docs/purifiers.md): the per-image σ, the training
input against a hand re-derivation, the frozen purifier outside the classifier, seeded validation, a short run on
the embedded digits that resumes exactly, and one-line CLI errors."""

import json
import shutil

import pytest
import torch
from torch import nn

from mimir_fast.errors import CheckpointError, ConfigError
from mimir_fast.methods import build_config, build_finetune_config, create_method, run_finetune, run_pretrain
from mimir_fast.methods.de3 import De3Options, training_inputs
from mimir_fast.models_vit import create_classifier, is_classifier_state
from mimir_fast.purify.de3 import De3Purifier, seeded_de3
from mimir_fast.purify.noise import sample_sigma
from mimir_fast.train.checkpoint import load_checkpoint, save_checkpoint
from tests.helpers import finetune_losses
from tests.test_cli import assert_one_line_error, run
from tests.test_nim import _nim_ckpt, my_stats, my_unpatchify, tiny_nim


def _cfg(out=None, **kw):
    base = {"method": "de3", "purifier": "nim.pth", "input_size": 16, "patch_size": 4}
    if out is not None:
        base["output_dir"] = str(out)
    return build_finetune_config("digits", **{**base, **kw})


def sample_train_sigma(n, low, high):
    return sample_sigma(n, "uniform", low=low, high=high)


def released_prediction(model, noisy):
    """NIM's released forward by hand: every patch of ``noisy`` encoded, no mask tokens; (N, L, p·p·C)."""
    n = noisy.shape[0]
    tok = model.patch_embed.proj(noisy).flatten(2).transpose(1, 2) + model.pos_embed[:, 1:]
    tok = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(n, -1, -1), tok], 1)
    for blk in model.blocks:
        tok = blk(tok)
    dec = model.decoder_embed(model.norm(tok)) + model.decoder_pos_embed
    for blk in model.decoder_blocks:
        dec = blk(dec)
    return model.decoder_pred(model.decoder_norm(dec))[:, 1:]


# ---------------------------------------------------------------------- σ per image
def test_training_sigma_is_uniform_low_high():
    n = 200_000
    s = sample_train_sigma(n, 5.0, 30.0)
    assert s.shape == (n,) and s.min() >= 5 and s.max() <= 30
    assert abs(s.mean().item() - 17.5) < 0.1  # se 25/sqrt(12 n) ≈ 0.016
    assert abs(s.var().item() - 25.0**2 / 12) < 1.0  # 52.1, se ≈ 0.15
    hist = torch.histc(s, bins=5, min=5, max=30) / n
    assert (hist - 0.2).abs().max() < 0.01  # flat
    assert torch.equal(sample_train_sigma(4, 12.0, 12.0), torch.full((4,), 12.0))


def test_each_image_gets_its_own_sigma_before_the_nim_model():
    purifier = De3Purifier(tiny_nim(), 0.0)
    seen = []
    reconstruct_nim = purifier.nim.reconstruct
    purifier.nim.reconstruct = lambda noisy: (seen.append(noisy), reconstruct_nim(noisy))[1]
    x = torch.rand(6, 3, 16, 16)  # 768 values per image: the noise's std is measured to ~2.6% (1 se)
    torch.manual_seed(5)
    training_inputs(purifier, x, De3Options(purifier="nim.pth", sigma_low=0.0, sigma_high=30.0))
    torch.manual_seed(5)
    sigma = torch.rand(6) * 30.0  # the same draw: σ first, then ε
    assert sigma.std() > 3  # distinct per image
    measured = (seen[0] - x).flatten(1).std(dim=1) * 255
    torch.testing.assert_close(measured, sigma, rtol=0.1, atol=0.0)


# ---------------------------------------------------------------------- the training input
@pytest.mark.parametrize("stats", ["clean", "noisy", "none"])
def test_training_input_is_the_clamped_reconstruction_by_hand(stats):
    p, low, high = 4, 10.0, 30.0
    model = tiny_nim(norm_pix=stats != "none")
    with torch.no_grad():
        model.decoder_pred.bias.add_(0.8)  # pushes some pixels past 1, so the clamp matters
    purifier = De3Purifier(model, 0.0, stats)
    classifier = create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=10)
    seen = []
    forward = classifier.forward
    classifier.forward = lambda inp: (seen.append(inp), forward(inp))[1]
    x, labels = torch.rand(4, 3, 16, 16), torch.randint(0, 10, (4,))
    cfg = _cfg(de3_sigma_low=low, de3_sigma_high=high, denorm_stats=stats)
    method = create_method(cfg)
    method.purifier = purifier
    torch.manual_seed(11)
    out = method.losses(classifier, x, labels)
    torch.manual_seed(11)
    sigma = torch.rand(4) * (high - low) + low
    noisy = x + torch.randn_like(x) * sigma.view(-1, 1, 1, 1) / 255
    with torch.no_grad():
        pred = released_prediction(model, noisy)
        if stats != "none":
            mean, std = my_stats(x if stats == "clean" else noisy, p)
            pred = pred * std + mean
        expected = my_unpatchify(pred, p).clamp(0, 1)
    assert len(seen) == 1 and not seen[0].requires_grad
    torch.testing.assert_close(seen[0], expected, rtol=1e-4, atol=1e-5)
    assert (expected == 1).any() and (expected < 1).any()
    ref = nn.functional.cross_entropy(forward(expected), labels, label_smoothing=0.1)
    torch.testing.assert_close(out["loss"], ref, rtol=1e-4, atol=1e-5)


def test_no_gradient_reaches_the_nim_model_and_it_is_not_in_the_classifier(tmp_path):
    nim_path = _nim_ckpt(tmp_path / "nim.pth")
    cfg = _cfg(tmp_path, purifier=str(nim_path))
    task = create_method(cfg)
    classifier = task.build_model(None)
    reference = create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=10)
    assert list(classifier.state_dict()) == list(reference.state_dict())  # the classifier's layout, nothing more
    purifier = task.purifier_on(torch.device("cpu"))
    assert isinstance(purifier, De3Purifier) and not purifier.nim.training
    nim_params = list(purifier.parameters())
    assert nim_params and all(not q.requires_grad for q in nim_params)
    assert not {id(q) for q in nim_params} & {id(q) for q in classifier.parameters()}
    before = {k: v.clone() for k, v in purifier.state_dict().items()}
    classifier.train()
    out = task.losses(classifier, torch.rand(8, 3, 16, 16), torch.randint(0, 10, (8,)))
    out["loss"].backward()
    assert classifier.head.weight.grad is not None and classifier.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(q.grad is None for q in nim_params)
    assert not purifier.nim.training  # training the classifier leaves the NIM model in eval mode
    assert all(torch.equal(v, purifier.state_dict()[k]) for k, v in before.items())


def test_validation_through_de3_is_seeded():
    purifier = De3Purifier(tiny_nim(), 0.0)
    x = torch.rand(3, 3, 16, 16)
    a, b = seeded_de3(purifier, 70.0, seed=4)(x), seeded_de3(purifier, 70.0, seed=4)(x)
    assert torch.equal(a, b)
    assert not torch.equal(a, seeded_de3(purifier, 70.0, seed=5)(x))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(a, De3Purifier(purifier.nim, 70.0)(x, eps))  # De^3 itself at γ = 70
    torch.testing.assert_close(a, purifier(x, eps, 70.0))


# ---------------------------------------------------------------------- a short run on the digits
@pytest.mark.slow
def test_short_de3_run_loss_falls_and_resumes_exactly(tmp_path):
    pre = run_pretrain(build_config("digits", method="nim", epochs=1, output_dir=str(tmp_path / "nim")))
    nim = str(pre.checkpoint)
    kw = {"finetune": nim, "purifier": nim, "epochs": 2, "warmup_epochs": 0.5, "save_freq": 1}
    full = run_finetune(_cfg(tmp_path / "ft", **kw))
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert all(0 <= r["test_acc1"] <= 100 for r in log) and "val acc" in full.line()
    ckpt = load_checkpoint(full.checkpoint)
    assert ckpt["args"]["method"] == "de3" and ckpt["args"]["purifier"] == nim
    assert is_classifier_state(ckpt["model"]) and not any(k.startswith(("nim.", "decoder")) for k in ckpt["model"])
    (tmp_path / "again").mkdir()
    shutil.copy(tmp_path / "ft" / "checkpoint-0.pth", tmp_path / "again")
    run_finetune(_cfg(tmp_path / "again", **kw))
    resumed = load_checkpoint(tmp_path / "again" / "checkpoint-1.pth")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, resumed["model"][k]), k
    again = json.loads((tmp_path / "again" / "log.txt").read_text().splitlines()[-1])
    assert again["test_acc1"] == log[-1]["test_acc1"]  # seeded De^3 validation


# ---------------------------------------------------------------------- errors
def test_config_errors():
    with pytest.raises(ConfigError, match="method de3 needs --purifier"):
        _cfg(purifier=None)
    with pytest.raises(ConfigError, match="de3_sigma_low and de3_sigma_high"):
        _cfg(de3_sigma_low=40.0, de3_sigma_high=10.0)
    with pytest.raises(ConfigError, match="de3_sigma_low and de3_sigma_high"):
        _cfg(de3_sigma_low=-1.0)
    with pytest.raises(ConfigError, match="unknown denorm_stats"):
        _cfg(denorm_stats="mean")
    with pytest.raises(ConfigError, match="val_gamma must be >= 0"):
        _cfg(val_gamma=-1.0)
    with pytest.raises(ConfigError, match="--purifier is a flag of --method de3, not of --method pgd"):
        _cfg(method="pgd")
    with pytest.raises(CheckpointError, match="nim.pth does not exist"):  # loaded on first use
        finetune_losses(nn.Identity(), torch.rand(2, 3, 16, 16), torch.zeros(2, dtype=torch.long), _cfg())


def test_cli_errors_are_one_line(tmp_path, capsys):
    nim = _nim_ckpt(tmp_path / "nim.pth")
    nim32 = _nim_ckpt(tmp_path / "nim32.pth", size=32)
    mimir = tmp_path / "mimir.pth"
    ckpt = load_checkpoint(nim)
    save_checkpoint({**ckpt, "args": {**ckpt["args"], "method": "mimir"}}, mimir)
    base = ["finetune", "--method", "de3", "--epochs", "1", "--output_dir", str(tmp_path / "out")]
    cases = [
        ([], ["method de3 needs --purifier"]),
        (["--purifier", str(nim), "--de3_sigma_low", "40", "--de3_sigma_high", "10"], ["de3_sigma_low"]),
        (["--purifier", str(mimir)], ["pretrained with method 'mimir', not nim"]),
        (["--purifier", str(nim32)], ["trained on 32 px images but the classifier takes 16"]),
        (["--purifier", str(nim), "--denorm_stats", "none"], ["without norm-pix"]),
    ]
    for argv, needles in cases:
        code, _, err = run([*base, *argv], capsys)
        assert_one_line_error(code, err, *needles)
    assert not list((tmp_path / "out").glob("checkpoint-*.pth"))  # refused before any training
