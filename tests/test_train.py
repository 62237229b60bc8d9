"""The trainer: schedule, parameter groups, a loss that falls, exact resume, divergence, outputs."""

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
