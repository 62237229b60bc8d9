"""Mid-epoch checkpoints (``--save_every_steps``): loader position, RNG states and loss sums resume exactly."""

import json
import shutil

import pytest
import torch

from mimir_fast.cli import main
from mimir_fast.data.sharding import ShardedBatchSampler
from mimir_fast.errors import CheckpointError
from mimir_fast.methods import build_config, run_pretrain
from mimir_fast.train import checkpoint as ckpt_mod
from mimir_fast.train.checkpoint import load_checkpoint
from tests.test_cli import assert_one_line_error


def test_sampler_start_skips_batches_of_the_same_order():
    full = list(ShardedBatchSampler(103, 7, torch.Generator().manual_seed(4), rank=1, world_size=2))
    rest = list(ShardedBatchSampler(103, 7, torch.Generator().manual_seed(4), rank=1, world_size=2, start=3))
    assert rest == full[3:] and len(full) == 7
    with pytest.raises(ValueError, match="cannot skip 8"):
        ShardedBatchSampler(103, 7, torch.Generator(), 1, 2, start=8)


def _cfg(out, **kw):
    # MIMIR on digits: PGD random starts, masks and augmentation all draw from the RNGs being resumed
    settings = dict(epochs=2, warmup_epochs=0.5, batch_size=128, save_freq=1, save_every_steps=4)
    return build_config("digits", output_dir=str(out), **{**settings, **kw})


def test_resume_from_a_mid_epoch_checkpoint_is_exact(tmp_path, monkeypatch):
    kept = tmp_path / "kept"
    kept.mkdir()
    real_save = ckpt_mod.save_checkpoint

    def save_and_keep(state, path):  # keep a copy of each mid-epoch checkpoint before it is overwritten
        out = real_save(state, path)
        if "step" in state:
            shutil.copy(out, kept / f"mid-{state['epoch']}-{state['step']}.pth")
        return out

    monkeypatch.setattr("mimir_fast.train.midepoch.save_checkpoint", save_and_keep)
    run_pretrain(_cfg(tmp_path / "a"))
    assert sorted(p.name for p in kept.iterdir()) == ["mid-0-4.pth", "mid-0-8.pth", "mid-1-4.pth", "mid-1-8.pth"]
    assert not (tmp_path / "a" / "checkpoint-mid.pth").exists()  # superseded by checkpoint-1.pth
    mid = load_checkpoint(kept / "mid-1-8.pth")
    assert mid["epoch"] == 1 and mid["step"] == 8 and len(mid["ranks"]) == 1

    b_dir = tmp_path / "b"
    b_dir.mkdir()
    shutil.copy(kept / "mid-1-8.pth", b_dir / "checkpoint-mid.pth")
    shutil.copy(tmp_path / "a" / "checkpoint-0.pth", b_dir / "checkpoint-0.pth")
    b = run_pretrain(_cfg(b_dir))  # auto-resume picks the mid-epoch checkpoint (epoch 1 > 0)
    assert b.epochs_trained == 1
    final_a = load_checkpoint(tmp_path / "a" / "checkpoint-1.pth")
    final_b = load_checkpoint(b_dir / "checkpoint-1.pth")
    for k, v in final_a["model"].items():
        assert torch.equal(v, final_b["model"][k]), k
    log_a = json.loads((tmp_path / "a" / "log.txt").read_text().splitlines()[-1])
    log_b = json.loads((b_dir / "log.txt").read_text().splitlines()[-1])
    assert log_a["train_loss"] == log_b["train_loss"] and log_a["epoch"] == log_b["epoch"] == 1


def test_an_older_mid_checkpoint_is_ignored_and_a_bad_one_refused(tmp_path, capsys):
    out = tmp_path / "run"
    run_pretrain(_cfg(out, epochs=1))
    state = load_checkpoint(out / "checkpoint-0.pth")
    torch.save({**state, "epoch": 0, "step": 4, "ranks": [{}]}, out / "checkpoint-mid.pth")
    from mimir_fast.train.runner import _auto_resume

    assert _auto_resume(out)[0].name == "checkpoint-0.pth"  # epoch 0 is complete: the mid one is older
    torch.save({**state, "epoch": 0, "step": 4, "ranks": [{}, {}]}, tmp_path / "two.pth")
    from mimir_fast.train.midepoch import check_mid

    with pytest.raises(CheckpointError, match="written by 2 process"):
        check_mid(load_checkpoint(tmp_path / "two.pth"), tmp_path / "two.pth", 1, 11)
    with pytest.raises(CheckpointError, match="outside this run's epoch"):
        check_mid({"ranks": [{}], "step": 40}, tmp_path / "x.pth", 1, 11)
    try:
        code = main(["pretrain", "--save_every_steps", "-1", "--output_dir", str(tmp_path / "e")])
    except SystemExit as e:
        code = e.code
    assert_one_line_error(code, capsys.readouterr().err, "save_every_steps must be >= 0")
