"""The trainer: schedule, parameter groups, a loss that falls, exact resume, divergence, outputs, gradient
accumulation against one large batch."""

import json
import math
import shutil

import pytest
import torch
from PIL import Image

from mimir_fast.errors import TrainingError
from mimir_fast.methods import build_config, run_pretrain
from mimir_fast.methods.mimir import Mimir
from mimir_fast.models_mae import mae_vit_micro
from mimir_fast.train.checkpoint import load_checkpoint
from mimir_fast.train.optim import lr_at, param_groups_weight_decay


def test_lr_schedule_warmup_then_half_cosine():
    kw = dict(lr=1e-3, min_lr=1e-5, warmup_epochs=4, epochs=20)
    assert lr_at(0, **kw) == 0
    assert lr_at(2, **kw) == pytest.approx(5e-4)
    assert lr_at(4, **kw) == pytest.approx(1e-3)
    assert lr_at(12, **kw) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert lr_at(20, **kw) == pytest.approx(1e-5)
    values = [lr_at(e / 10, **kw) for e in range(40, 200)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay after warmup


def test_weight_decay_groups_follow_mimir():
    model = mae_vit_micro(img_size=32, patch_size=4)
    no_decay, decay = param_groups_weight_decay(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert {"cls_token", "mask_token", "blocks.0.attn.qkv.weight", "patch_embed.proj.weight"} <= decayed
    assert {"blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "patch_embed.proj.bias"} <= skipped
    assert "pos_embed" not in decayed | skipped and "decoder_pos_embed" not in decayed | skipped
    assert len(decayed) + len(skipped) == sum(p.requires_grad for p in model.parameters())


def _read_log(folder):
    return [json.loads(line) for line in (folder / "log.txt").read_text().splitlines()]


@pytest.mark.slow
def test_two_epoch_embedded_run_loss_falls(tmp_path):
    summary = run_pretrain(build_config("digits", epochs=2, output_dir=str(tmp_path)))
    log = _read_log(tmp_path)
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[1]["train_loss"] < log[0]["train_loss"]
    assert all(math.isfinite(r["train_hsic"]) and r["train_hsic"] > 0 for r in log)
    assert summary.final_loss == pytest.approx(log[1]["train_loss"])
    assert summary.checkpoint == tmp_path / "checkpoint-1.pth" and summary.checkpoint.is_file()
    assert summary.img_per_sec > 0
    assert {"train_loss", "train_lr", "train_mae_loss", "train_hsic", "train_img_per_sec", "epoch"} <= set(log[0])
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] == 2
    figure = Image.open(summary.figure)
    assert figure.size[0] > 4 * 96  # four panels of 96 px wide images
    assert summary.line().startswith("done: final loss ")


def _assert_same_run_state(a, b):
    ca, cb = load_checkpoint(a), load_checkpoint(b)
    assert ca["epoch"] == cb["epoch"]
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)


def _fast_digits(out, **kw):
    return build_config("digits", input_size=16, patch_size=4, epochs=3, save_freq=1, output_dir=str(out), **kw)


@pytest.mark.slow
def test_resume_continues_bit_identically(tmp_path):
    full, auto, explicit = tmp_path / "full", tmp_path / "auto", tmp_path / "explicit"
    run_pretrain(_fast_digits(full))
    auto.mkdir()
    shutil.copy(full / "checkpoint-0.pth", auto)  # as if the run had stopped after epoch 0
    run_pretrain(_fast_digits(auto))
    _assert_same_run_state(full / "checkpoint-2.pth", auto / "checkpoint-2.pth")
    run_pretrain(_fast_digits(explicit, resume=str(full / "checkpoint-1.pth")))
    _assert_same_run_state(full / "checkpoint-2.pth", explicit / "checkpoint-2.pth")
    assert [r["epoch"] for r in _read_log(auto)] == [1, 2]


def _image_folder(root, n_per_class=12, size=20):
    gen = torch.Generator().manual_seed(0)
    for c in ("cat", "dog"):
        (root / "train" / c).mkdir(parents=True)
        for i in range(n_per_class):
            arr = (torch.rand(size, size, 3, generator=gen) * 255).byte().numpy()
            Image.fromarray(arr).save(root / "train" / c / f"{i}.png")
    return root


@pytest.mark.slow
def test_resume_is_exact_with_loader_workers(tmp_path):
    data = _image_folder(tmp_path / "data")

    def cfg(out, **kw):
        return build_config("digits", data_path=str(data), input_size=16, patch_size=4, batch_size=8, epochs=2,
                            save_freq=1, num_workers=2, output_dir=str(out), **kw)

    run_pretrain(cfg(tmp_path / "a"))
    run_pretrain(cfg(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-0.pth")))
    _assert_same_run_state(tmp_path / "a" / "checkpoint-1.pth", tmp_path / "b" / "checkpoint-1.pth")


def test_nothing_left_to_train_is_not_an_error(tmp_path, capsys):
    cfg = build_config("digits", input_size=16, patch_size=4, epochs=1, method="mae", output_dir=str(tmp_path))
    run_pretrain(cfg)
    summary = run_pretrain(cfg)
    assert summary.epochs_trained == 0 and summary.final_loss is None
    assert summary.checkpoint == tmp_path / "checkpoint-0.pth"
    assert "nothing left to train" in capsys.readouterr().out


def test_a_diverged_loss_stops_the_run_without_writing_a_checkpoint(tmp_path, monkeypatch):
    real = Mimir.losses

    def poisoned(self, model, imgs, labels):
        out = real(self, model, imgs, labels)
        return {**out, "loss": out["loss"] * float("nan")}

    monkeypatch.setattr(Mimir, "losses", poisoned)
    cfg = build_config("digits", input_size=16, patch_size=4, epochs=1, print_freq=5, output_dir=str(tmp_path))
    with pytest.raises(TrainingError, match="non-finite .* in epoch 0 by step 5"):
        run_pretrain(cfg)
    assert not list(tmp_path.glob("checkpoint-*.pth"))


def test_synthetic_data_and_gradient_accumulation(tmp_path):
    cfg = build_config("digits", data="synthetic", synthetic_size=32, batch_size=8, accum_iter=2, input_size=16,
                       patch_size=4, epochs=1, output_dir=str(tmp_path))
    summary = run_pretrain(cfg)
    assert math.isfinite(summary.final_loss)
    ckpt = load_checkpoint(summary.checkpoint)
    steps = {int(s["step"]) for s in ckpt["optimizer"]["state"].values()}
    assert steps == {2}  # 4 micro-batches, accumulated 2 at a time


class _RecordingSGD(torch.optim.SGD):
    """Plain SGD that keeps a copy of the gradients each ``step`` saw."""

    def __init__(self, params):
        super().__init__(params, lr=0.1)
        self.seen = []

    def step(self, closure=None):
        self.seen.append([p.grad.clone() for g in self.param_groups for p in g["params"] if p.grad is not None])
        return super().step(closure)


def _mae_epoch(batches, accum_iter, noise):
    """One epoch of ``train_one_epoch`` with plain MAE on ``batches``; each forward takes its mask noise from the
    front of ``noise``. Returns the gradients every update saw and the epoch's mean loss."""
    from mimir_fast.methods import create_method
    from mimir_fast.train.engine import EpochContext, train_one_epoch
    from tests.test_attack import tiny_mae

    torch.manual_seed(6)
    model = tiny_mae()
    encoder = model.forward_encoder
    model.forward_encoder = lambda x, r, noise_=None: encoder(x, r, noise.pop(0))
    cfg = build_config("digits", method="mae", batch_size=len(batches[0][0]), accum_iter=accum_iter, input_size=16,
                       patch_size=4, warmup_epochs=0, epochs=1)
    method = create_method(cfg)
    optimizer = _RecordingSGD(model.parameters())
    ctx = EpochContext(model=model, optimizer=optimizer, cfg=cfg, loss_fn=method.losses, loss_keys=method.loss_keys,
                       steps=len(batches), base_lr=0.1, device=torch.device("cpu"))
    stats = train_one_epoch(ctx, batches, 0)
    assert not noise  # every mask came from the table
    return optimizer.seen, stats["loss"]


def test_two_micro_batches_of_8_update_as_one_batch_of_16():
    """Gradient accumulation: the gradient of one update over micro-batches of 8 and 8 is the gradient of the mean
    MAE loss over the 16 images (every image masks the same number of patches, so the 16-image mean is the mean of
    the two 8-image means), with the same masks."""
    x, labels = torch.rand(16, 3, 16, 16), torch.zeros(16, dtype=torch.long)
    noise = torch.rand(16, 16)
    whole, whole_loss = _mae_epoch([(x, labels)], 1, [noise])
    split, split_loss = _mae_epoch([(x[:8], labels[:8]), (x[8:], labels[8:])], 2, [noise[:8], noise[8:]])
    assert len(whole) == len(split) == 1 and len(whole[0]) > 10  # one update each, of every trained tensor
    ulp = torch.finfo(torch.float32).eps
    for g_split, g_whole in zip(split[0], whole[0], strict=True):
        # fp32 sums in another order: within 16 ulps of the tensor's largest entry (4 measured)
        torch.testing.assert_close(g_split, g_whole, rtol=0, atol=16 * ulp * g_whole.abs().max().item())
    assert split_loss == pytest.approx(whole_loss, rel=8 * ulp)  # the mean of two fp32 means (1.5 ulps measured)
