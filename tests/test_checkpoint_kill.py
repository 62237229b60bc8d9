"""No partial checkpoints: a process killed in the middle of ``save_checkpoint`` leaves the previous
checkpoint loadable and nothing truncated under a checkpoint name."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mimir_fast.errors import CheckpointError
from mimir_fast.train.checkpoint import (
    CHECKPOINT_RE,
    checkpoint_path,
    load_checkpoint,
    newest_checkpoint,
    save_checkpoint,
)

REPO = Path(__file__).resolve().parents[1]

# Writes half of the serialised checkpoint, forces it to disk, and dies (os._exit: no cleanup, as SIGKILL).
DIE_MID_SAVE = """
import io, os, sys, torch
from mimir_fast.train.checkpoint import checkpoint_path, save_checkpoint
real_save = torch.save
def dying_save(obj, f, *args, **kwargs):
    buf = io.BytesIO()
    real_save(obj, buf)
    f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
    f.flush()
    os.fsync(f.fileno())
    os._exit(9)
torch.save = dying_save
save_checkpoint({"model": {"w": torch.full((4096,), 2.0)}, "epoch": 1}, checkpoint_path(sys.argv[1], int(sys.argv[2])))
"""


def _die_saving(folder: Path, epoch: int) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", DIE_MID_SAVE, str(folder), str(epoch)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr  # it died inside the save


@pytest.mark.parametrize("epoch", [0, 1], ids=["overwriting", "next-epoch"])
def test_a_process_killed_mid_save_leaves_the_previous_checkpoint_intact(tmp_path, epoch):
    good = save_checkpoint({"model": {"w": torch.full((4096,), 1.0)}, "epoch": 0}, checkpoint_path(tmp_path, 0))
    _die_saving(tmp_path, epoch)

    assert torch.equal(load_checkpoint(good)["model"]["w"], torch.full((4096,), 1.0))
    assert newest_checkpoint(tmp_path) == good  # what auto-resume picks
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in names if CHECKPOINT_RE.match(n)] == ["checkpoint-0.pth"]
    leftovers = [tmp_path / n for n in names if not CHECKPOINT_RE.match(n)]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(f".checkpoint-{epoch}.pth.tmp-")
    with pytest.raises(CheckpointError):  # the save really was cut short
        load_checkpoint(leftovers[0])

    save_checkpoint({"model": {"w": torch.full((4096,), 3.0)}, "epoch": 1}, checkpoint_path(tmp_path, epoch))
    assert not leftovers[0].exists()  # the next save of that checkpoint removes the dead writer's temp file
