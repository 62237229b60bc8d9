"""Fine-tuning: the loss falls, the PGD and TRADES losses against hand re-derivations, and the checkpoint rules
(pretrain vs classifier)."""

import json
import shutil

import pytest
import torch

from mimir_fast.errors import CheckpointError, ConfigError, DataError
from mimir_fast.methods import build_config, build_finetune_config, run_finetune, run_pretrain
from mimir_fast.models_mae import create_model
from mimir_fast.models_vit import create_classifier
from mimir_fast.train.checkpoint import load_checkpoint, save_checkpoint
from mimir_fast.train.config import FinetuneConfig
from mimir_fast.train.presets import FINETUNE_PRESETS
from tests.helpers import finetune_losses
from tests.test_attack_classify import plain_pgd, plain_trades


def _cfg(out, **kw):
    return build_finetune_config("digits", input_size=16, output_dir=str(out), **kw)


@pytest.mark.slow
def test_finetune_from_a_mimir_checkpoint_loss_falls_and_resumes_exactly(tmp_path):
    pre = run_pretrain(build_config("digits", input_size=16, epochs=1, output_dir=str(tmp_path / "pre")))
    full = run_finetune(_cfg(tmp_path / "ft", epochs=3, save_freq=1, finetune=str(pre.checkpoint)))
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.txt").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert all(0 <= r["test_acc1"] <= 100 for r in log) and "train_acc" in log[0] and "train_train_acc" not in log[0]
    assert full.line().startswith("done: final loss") and "val acc" in full.line()
    ckpt = load_checkpoint(full.checkpoint)
    assert ckpt["args"]["task"] == "finetune" and ckpt["args"]["finetune"] == str(pre.checkpoint)
    (tmp_path / "again").mkdir()
    shutil.copy(tmp_path / "ft" / "checkpoint-1.pth", tmp_path / "again")
    run_finetune(_cfg(tmp_path / "again", epochs=3, save_freq=1, finetune=str(pre.checkpoint)))
    resumed = load_checkpoint(tmp_path / "again" / "checkpoint-2.pth")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


@pytest.mark.parametrize("method", ["pgd", "trades", "clean"])
def test_objectives(method):
    model = create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=10)
    imgs, labels = torch.rand(6, 3, 16, 16), torch.randint(0, 10, (6,))
    cfg = FinetuneConfig(input_size=16, method=method, steps=2)
    out = finetune_losses(model, imgs, labels, cfg)
    assert out["loss"].requires_grad and torch.isfinite(out["loss"]) and 0 <= out["acc"] <= 100
    out["loss"].backward()
    assert model.head.weight.grad is not None
    if method == "clean":
        expected = torch.nn.functional.cross_entropy(model(imgs), labels, label_smoothing=0.1)
        torch.testing.assert_close(out["loss"], expected)


def test_checkpoint_kinds_are_not_confused(tmp_path):
    mae = create_model("mae_vit_micro", img_size=16, patch_size=4)
    save_checkpoint({"model": mae.state_dict(), "epoch": 0, "args": {"model": "mae_vit_micro"}}, tmp_path / "pre.pth")
    clf = create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=10)
    save_checkpoint({"model": clf.state_dict(), "epoch": 0, "args": {"model": "vit_micro"}}, tmp_path / "clf.pth")
    with pytest.raises(CheckpointError, match="pretraining checkpoint, not a classifier: pass it with --finetune"):
        run_finetune(_cfg(tmp_path / "a", resume=str(tmp_path / "pre.pth")))
    with pytest.raises(CheckpointError, match="is a classifier checkpoint, not a pretraining one"):
        run_finetune(_cfg(tmp_path / "b", finetune=str(tmp_path / "clf.pth")))
    with pytest.raises(CheckpointError, match="is a classifier checkpoint; pretraining resumes"):
        run_pretrain(build_config("digits", input_size=16, output_dir=str(tmp_path / "c"),
                                  resume=str(tmp_path / "clf.pth")))
    with pytest.raises(CheckpointError, match="classifies 10 classes, but --num_classes is 7"):
        run_finetune(_cfg(tmp_path / "d", resume=str(tmp_path / "clf.pth"), num_classes=7, data="synthetic"))
    with pytest.raises(CheckpointError, match="pretrained with 16 patches"):
        run_finetune(build_finetune_config("digits", input_size=32, output_dir=str(tmp_path / "e"),
                                           finetune=str(tmp_path / "pre.pth")))


def test_class_count_must_match_the_data(tmp_path):
    with pytest.raises(DataError, match="has 10 classes, but --num_classes is 5"):
        run_finetune(_cfg(tmp_path, num_classes=5))


def test_finetune_presets_follow_mimir():
    c10 = build_finetune_config("cifar10_vit_s")
    assert (c10.steps, c10.eps, c10.alpha, c10.epochs, c10.warmup_epochs, c10.blr) == (10, 8.0, 2.0, 50, 5, 0.05)
    assert (c10.layer_decay, c10.drop_path, c10.smoothing, c10.head_init_std) == (0.65, 0.1, 0.1, 2e-2)
    inet = build_finetune_config("imagenet_vit_b")
    assert (inet.steps, inet.eps, inet.alpha, inet.num_classes, inet.head_init_std) == (1, 4.0, 5.0, 1000, 2e-5)
    assert set(FINETUNE_PRESETS) >= {"digits", "cifar10_vit_s", "imagenet_vit_b"}
    with pytest.raises(ConfigError, match="unknown method 'madry'"):
        build_finetune_config("digits", method="madry")
    with pytest.raises(ConfigError, match="eps must be >= 0"):
        build_finetune_config("digits", eps=-1.0)


# ---------------------------------------------------------------------- the adversarial objectives by hand
def _seen_inputs(model):
    """Every forward's input and whether the model was in training mode then."""
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append((args[0].detach().clone(), m.training)))
    return seen


def _kl_by_hand(p_logits, q_logits):
    """Per-example Σ_k p_k (log p_k − log q_k) for logits (N, K): (N,), in float64."""
    log_p, log_q = p_logits.double().log_softmax(1), q_logits.double().log_softmax(1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def _smoothed_ce_by_hand(logits, labels, smoothing):
    """Label-smoothed cross-entropy: mean over examples of −Σ_k ((1 − s)·1[k = y] + s/K) log softmax_k, float64."""
    log_q = logits.double().log_softmax(1)
    target = torch.full_like(log_q, smoothing / log_q.shape[1])
    target[torch.arange(len(labels)), labels] += 1 - smoothing
    return -(target * log_q).sum(1).mean()


def _classifier(classes=10):
    torch.manual_seed(4)
    return create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=classes, drop_path_rate=0.2,
                             head_init_std=0.5).train()


# the fp32 loss against a float64 re-derivation from the same logits: a few roundings in log-softmax and the means
# (at most 1.3 ulps measured)
FP32_TOL = {"rtol": 8 * torch.finfo(torch.float32).eps, "atol": 0.0}


@pytest.mark.parametrize("steps,batch", [(1, 5), (3, 3)])
def test_pgd_finetuning_loss_by_hand(steps, batch):
    """The attack runs in eval mode on the clean images; the loss is the label-smoothed CE of the training-mode
    (drop-path) forward of the adversarial examples alone."""
    model = _classifier()
    seen = _seen_inputs(model)
    x, y = torch.rand(batch, 3, 16, 16), torch.randint(0, 10, (batch,))
    cfg = build_finetune_config("digits", input_size=16, method="pgd", steps=steps, eps=8.0, alpha=3.0)
    torch.manual_seed(13)
    out = finetune_losses(model, x, y, cfg)
    assert [training for _, training in seen] == [False] * steps + [True]

    torch.manual_seed(13)  # same draws in the same order: the start, then drop-path in the training forward
    x_adv = plain_pgd(model, x, y, 8 / 255, 3 / 255, steps)  # in eval mode
    logits = model.train()(x_adv)
    assert torch.equal(seen[-1][0], x_adv) and 0 < (x_adv - x).abs().max() <= 8 / 255 + 1e-7
    expected = _smoothed_ce_by_hand(logits, y, cfg.smoothing)
    torch.testing.assert_close(out["loss"].double(), expected, **FP32_TOL)
    assert (out["loss"].double() - _smoothed_ce_by_hand(model(x), y, cfg.smoothing)).abs() > 1e-3  # clean differs
    assert out["acc"] == 100 * (logits.argmax(1) == y).float().mean()


@pytest.mark.parametrize("beta", [6.0, 1.5])
def test_trades_finetuning_loss_by_hand(beta):
    """CE(f(x), y) + β · (1/N) Σ_i KL(f(x_i) ‖ f(x'_i)), both forwards in training mode; ``acc`` on x'."""
    model = _classifier()
    seen = _seen_inputs(model)
    x, y = torch.rand(5, 3, 16, 16), torch.randint(0, 10, (5,))
    cfg = build_finetune_config("digits", input_size=16, method="trades", steps=2, eps=8.0, alpha=4.0, trades_beta=beta)
    torch.manual_seed(17)
    out = finetune_losses(model, x, y, cfg)
    # the attack's clean reference and its 2 steps in eval mode; then the clean and adversarial training forwards
    assert [training for _, training in seen] == [False, False, False, True, True]

    torch.manual_seed(17)
    x_adv = plain_trades(model, x, 8 / 255, 4 / 255, 2)  # in eval mode
    model.train()
    clean_logits, adv_logits = model(x), model(x_adv)
    assert torch.equal(seen[-1][0], x_adv) and torch.equal(seen[-2][0], x)
    ce = _smoothed_ce_by_hand(clean_logits, y, cfg.smoothing)
    kl = _kl_by_hand(clean_logits, adv_logits).mean()
    torch.testing.assert_close(out["loss"].double(), ce + beta * kl, **FP32_TOL)
    assert beta * kl > 1e4 * FP32_TOL["rtol"] * out["loss"].abs()  # the KL term is far above the tolerance
    assert out["acc"] == 100 * (adv_logits.argmax(1) == y).float().mean()
