"""One training epoch, for any objective (``loss_fn``): pretraining and fine-tuning share it.

The step (lr update, forward with the attack, backward, optimizer step) never reads a value back to the
host. An update whose loss or gradients are NaN or inf is skipped on the device (``nonfinite.py``) and
counted; losses of finite steps and the skip counters are summed on the device and read only every
``print_freq`` steps, where the run stops with a ``TrainingError`` once ``max_nonfinite_steps`` updates in a
row were skipped (the reference checks ``math.isfinite`` on every step, which costs a sync per step, and
stops at the first non-finite loss).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from ..device import autocast_context, synchronize
from ..distributed import all_mean
from ..errors import TrainingError
from .compile import mark_step_begin
from .config import RunConfig
from .logger import Progress, RunLog
from .midepoch import MidEpochCheckpoints
from .nonfinite import NonFiniteGuard
from .optim import lr_at, set_lr

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict]


class LossSums:
    """An epoch's running loss sums on the device: ``values`` (len(keys) + 1,) holds, per loss key, the sum over
    the steps whose loss was finite, then the number of those steps (one tensor, so that the ranks reduce it in
    one collective and a mid-epoch checkpoint stores it as one value)."""

    def __init__(self, keys: tuple[str, ...], values: torch.Tensor):
        self.keys = keys
        self.values = values

    @classmethod
    def zeros(cls, keys: tuple[str, ...], device: torch.device) -> LossSums:
        return cls(keys, torch.zeros(len(keys) + 1, device=device))

    @property
    def count(self) -> torch.Tensor:
        """() the number of finite steps summed."""
        return self.values[-1]

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        """Add one step's losses, unless its ``loss`` is non-finite (decided on the device)."""
        step = torch.stack([losses[k].float() for k in self.keys])
        finite = torch.isfinite(step[0])
        self.values += torch.cat([torch.where(finite, step, 0.0), finite.float()[None]])

    def reduced(self) -> LossSums:
        """The mean of the sums over the ranks (a collective; ``self`` in a single process)."""
        return LossSums(self.keys, all_mean(self.values))

    def means(self, since: LossSums | None = None) -> dict[str, float]:
        """Mean per key (a host read), over every step summed or only over those after ``since``."""
        values = self.values if since is None else self.values - since.values
        *totals, count = values.tolist()
        return {k: v / count if count else float("nan") for k, v in zip(self.keys, totals)}

    def clone(self) -> LossSums:
        return LossSums(self.keys, self.values.clone())


@dataclass
class EpochContext:
    """What every epoch of a run shares."""

    model: nn.Module
    """The module the step calls (compiled and/or wrapped by DDP or FSDP2)."""
    optimizer: torch.optim.Optimizer
    cfg: RunConfig
    loss_fn: LossFn
    """``loss_fn(model, imgs, labels)``: the step's losses (the method's ``losses``)."""
    loss_keys: tuple[str, ...]
    """The keys of ``loss_fn``'s result that are summed and logged; ``loss`` first."""
    steps: int
    """Steps per epoch."""
    base_lr: float
    """The peak learning rate of the schedule."""
    device: torch.device
    amp_dtype: torch.dtype | None = None
    """bf16 autocast, or None for fp32."""
    run_log: RunLog | None = None
    """``log.txt`` and TensorBoard (rank 0 only)."""
    mid: MidEpochCheckpoints | None = None
    """Writes ``checkpoint-mid.pth`` within epochs (``--save_every_steps``)."""


def train_step(
    model: nn.Module,
    imgs: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    amp_dtype: torch.dtype | None,
    accum_iter: int = 1,
    update: bool = True,
    guard: NonFiniteGuard | None = None,
) -> dict[str, torch.Tensor]:
    """One step on a device batch: ``loss_fn(model, imgs (N, C, H, W), labels (N,))``, backward of its
    ``loss`` scaled by 1/accum_iter and, when ``update``, the optimizer step, made through ``guard`` (which
    skips it if a loss or gradient is non-finite) when one is given. Returns the detached losses; never reads
    a value back to the host."""
    mark_step_begin(model)
    with autocast_context(imgs.device, amp_dtype):
        losses = loss_fn(model, imgs, labels)
    if guard is not None:
        guard.observe(losses["loss"])
    (losses["loss"] / accum_iter).backward()
    if update:
        if guard is not None:
            guard.step()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return {k: v.detach() for k, v in losses.items()}


def train_one_epoch(ctx: EpochContext, batches: Iterable, epoch: int, *, start_step: int = 0,
                    sums: torch.Tensor | None = None) -> dict[str, float]:
    """Train ``ctx.steps`` steps of epoch ``epoch``; returns the epoch's mean losses (over the steps whose loss
    was finite), last lr, updates skipped as non-finite, img/s (over the steps trained here, without the first),
    the epoch's time and the first step's time (``first_step_s``, with compilation when the model is compiled).

    Mid-epoch resume: ``batches`` then starts at batch ``start_step`` of the epoch, and ``sums`` (the saved
    ``LossSums.values``) carries the loss sums of the steps before it.
    """
    cfg, device, model, optimizer = ctx.cfg, ctx.device, ctx.model, ctx.optimizer
    model.train()
    optimizer.zero_grad(set_to_none=True)
    progress = Progress(epoch, cfg.epochs, ctx.steps, cfg.batch_size, start_step=start_step)
    guard = NonFiniteGuard(optimizer, device)
    running = LossSums(ctx.loss_keys, sums.to(device).clone()) if sums is not None else LossSums.zeros(
        ctx.loss_keys, device)
    logged = running.clone()  # at the previous print point
    lr = 0.0
    start = time.perf_counter()
    first_step_s = 0.0
    done = start_step
    for it, (imgs, labels) in enumerate(batches, start=start_step):
        if it % cfg.accum_iter == 0:
            lr = lr_at(epoch + it / ctx.steps, lr=ctx.base_lr, min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs,
                       epochs=cfg.epochs)
            set_lr(optimizer, lr)
        imgs, labels = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        update = (it + 1) % cfg.accum_iter == 0
        running.add(train_step(model, imgs, labels, optimizer, ctx.loss_fn, ctx.amp_dtype, cfg.accum_iter,
                               update=update, guard=guard))
        done = it + 1
        if done == start_step + 1:  # timed on its own: it includes compilation (one sync per epoch)
            synchronize(device)
            first_step_s = time.perf_counter() - start

        if done % cfg.print_freq == 0 or done == ctx.steps:  # the only host reads of the epoch
            synced = running.reduced()  # over the ranks: every rank logs, and stops, alike
            skipped, longest = guard.read()
            if longest >= cfg.max_nonfinite_steps:
                raise TrainingError(
                    f"the loss or gradients were non-finite on {longest} updates in a row (max_nonfinite_steps "
                    f"{cfg.max_nonfinite_steps}) in epoch {epoch} by step {done}; stopping (checkpoints already "
                    "written are intact)"
                )
            progress.update(done, {**synced.means(), **({"skipped": skipped} if skipped else {})}, lr)
            if ctx.run_log is not None and float(synced.count - logged.count):  # TensorBoard: since the last print
                ctx.run_log.scalars({**synced.means(since=logged), "lr": lr},
                                    int((epoch + (done - 1) / ctx.steps) * 1000))
            logged = synced.clone()
        if ctx.mid is not None and update:
            ctx.mid.after_update(epoch, done, running.values)
    synchronize(device)
    elapsed = time.perf_counter() - start
    means = running.reduced().means()
    trained = done - start_step
    rate = (trained - 1) * cfg.batch_size / (elapsed - first_step_s) if trained > 1 else (
        trained * cfg.batch_size / elapsed)
    return {**means, "lr": lr, "skipped_steps": guard.read()[0], "img_per_sec": rate, "epoch_time_s": elapsed,
            "first_step_s": first_step_s}
