"""Mid-epoch checkpoints: ``checkpoint-mid.pth``, written every ``--save_every_steps`` updates and resumed exactly.

Besides MAE's ``model``/``optimizer``/``epoch``/``args`` it holds ``step`` (updates done in ``epoch``) and, per
rank, the torch CPU/CUDA, NumPy and Python RNG states and the running loss sums. Resuming rebuilds the epoch's
loader in the same order, skips its first ``step`` batches, and restores the RNG states; a per-epoch checkpoint
supersedes the file (docs/pretraining.md).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..distributed import DistEnv, gather
from ..errors import CheckpointError
from .checkpoint import save_checkpoint

MID_NAME = "checkpoint-mid.pth"


def mid_path(output_dir: str | Path) -> Path:
    return Path(output_dir) / MID_NAME


def capture_rng(device: torch.device) -> dict:
    """This process's RNG states, as tensors and plain values (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device) -> None:
    """Set this process's RNG states from ``capture_rng``'s dict."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_mid(ckpt: dict, path: Path, world_size: int, steps: int) -> None:
    """One-line ``CheckpointError`` if the mid-epoch checkpoint cannot resume this run."""
    ranks = ckpt.get("ranks") or []
    if len(ranks) != world_size:
        raise CheckpointError(f"mid-epoch checkpoint {path} was written by {len(ranks)} process(es), but this run has "
                              f"{world_size}: resume it with the same world size (or from a checkpoint-{{epoch}}.pth)")
    if not 0 < int(ckpt["step"]) < steps:
        raise CheckpointError(f"mid-epoch checkpoint {path} is at step {ckpt['step']}, outside this run's epoch of "
                              f"{steps} steps (was the batch size or the data changed?)")


class MidEpochCheckpoints:
    """Writes ``checkpoint-mid.pth`` after every ``every``-th update of an epoch (never after its last step,
    which the per-epoch checkpoint covers).

    Args:
        every: updates between writes; 0 turns it off.
        steps: steps per epoch.
        output_dir: where the file goes (rank 0 writes it).
        env: this process's place; every rank must call ``after_update`` (it gathers the ranks' RNG states).
        device: the training device (its RNG state is saved too).
        training_state: ``epoch -> dict``, the checkpoint's model, optimizer, epoch and args (a collective
            under FSDP2).
    """

    def __init__(self, every: int, steps: int, output_dir: Path, env: DistEnv, device: torch.device,
                 training_state: Callable[[int], dict]):
        self.every, self.steps, self.output_dir = every, steps, Path(output_dir)
        self.env, self.device, self.training_state = env, device, training_state

    def after_update(self, epoch: int, done: int, sums: torch.Tensor) -> None:
        """Called after every update: ``done`` steps of ``epoch`` finished, ``sums`` the epoch's running loss sums
        (device). Reads nothing from the device unless it writes."""
        if not self.every or done % self.every or done >= self.steps:
            return
        ranks = gather({"rng": capture_rng(self.device), "sums": sums.cpu()}, self.env)  # a collective
        state = {**self.training_state(epoch), "step": done, "ranks": ranks}
        if self.env.is_main:
            save_checkpoint(state, mid_path(self.output_dir))
