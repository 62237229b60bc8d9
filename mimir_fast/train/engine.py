"""One training epoch, for any objective (``loss_fn``): pretraining and fine-tuning share it.

The step (lr update, forward with the attack, backward, optimizer step) never reads a value back to the
host. An update whose loss or gradients are NaN or inf is skipped on the device (``nonfinite.py``) and
counted; losses of finite steps and the skip counters are summed on the device and read only every
``print_freq`` steps, where the run stops with a ``TrainingError`` once ``max_nonfinite_steps`` updates in a
row were skipped (the reference checks ``math.isfinite`` on every step, which costs a sync per step, and
stops at the first non-finite loss).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterable

import torch
from torch import nn

from ..distributed import all_mean
from ..errors import TrainingError
from .compile import mark_step_begin
from .logger import Progress, RunLog
from .nonfinite import NonFiniteGuard
from .optim import lr_at, set_lr

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict]


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """bf16 autocast for ``dtype=torch.bfloat16``; a no-op context for fp32 (``dtype=None``)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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


def train_one_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    cfg,
    loss_fn: LossFn,
    loss_keys: tuple[str, ...],
    *,
    epoch: int,
    steps: int,
    base_lr: float,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    run_log: RunLog | None = None,
    start_step: int = 0,
    sums: torch.Tensor | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> dict[str, float]:
    """Train ``steps`` steps of epoch ``epoch``; returns the epoch's mean losses (over the steps whose loss was
    finite), last lr, updates skipped as non-finite, img/s (without the first step), the whole epoch's time
    and the first step's time (``first_step_s``, with compilation when the model is compiled).

    Mid-epoch resume: ``batches`` then starts at batch ``start_step`` of the epoch, and ``sums`` (len(loss_keys)
    + 1,) carries the loss sums of the steps before it. ``on_step(done, sums)`` is called after every update
    (``done`` steps of the epoch finished; ``sums`` the running device sums), e.g. to write a mid-epoch
    checkpoint; it must not read device values unless it acts.
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    progress = Progress(epoch, cfg.epochs, steps)
    guard = NonFiniteGuard(optimizer, device)
    # finite steps' losses, then their count
    sums = torch.zeros(len(loss_keys) + 1, device=device) if sums is None else sums.to(device).clone()
    logged_sums = sums.clone()  # at the previous print point
    lr = 0.0
    start = time.perf_counter()
    first_step_s = 0.0
    done = start_step
    for it, (imgs, labels) in enumerate(batches, start=start_step):
        if it % cfg.accum_iter == 0:
            lr = lr_at(
                epoch + it / steps, lr=base_lr, min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs
            )
            set_lr(optimizer, lr)
        imgs, labels = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        losses = train_step(model, imgs, labels, optimizer, loss_fn, amp_dtype, cfg.accum_iter,
                            update=(it + 1) % cfg.accum_iter == 0, guard=guard)
        values = torch.stack([losses[k].float() for k in loss_keys])
        finite = torch.isfinite(values[0])
        sums += torch.cat([torch.where(finite, values, 0.0), finite.float()[None]])
        done = it + 1
        if done == start_step + 1:  # timed on its own: it includes compilation (one sync per epoch)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            first_step_s = time.perf_counter() - start

        if done % cfg.print_freq == 0 or done == steps:  # the only host reads of the epoch
            synced = all_mean(sums)  # over the ranks: every rank logs, and stops, alike
            *totals, count = synced.tolist()
            means = {k: v / count if count else float("nan") for k, v in zip(loss_keys, totals)}
            skipped, longest = guard.read()
            if longest >= cfg.max_nonfinite_steps:
                raise TrainingError(
                    f"the loss or gradients were non-finite on {longest} updates in a row (max_nonfinite_steps "
                    f"{cfg.max_nonfinite_steps}) in epoch {epoch} by step {done}; stopping (checkpoints already "
                    "written are intact)"
                )
            progress.update(done, done * cfg.batch_size, {**means, **({"skipped": skipped} if skipped else {})}, lr)
            if run_log is not None:  # TensorBoard gets the mean over the steps since the last print point
                *window, n = (synced - logged_sums).tolist()
                if n:
                    run_log.scalars({**dict(zip(loss_keys, (v / n for v in window))), "lr": lr},
                                    int((epoch + (done - 1) / steps) * 1000))
            logged_sums = synced.clone()
        if on_step is not None and (it + 1) % cfg.accum_iter == 0:
            on_step(done, sums)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    *totals, count = all_mean(sums).tolist()
    means = {k: v / count if count else float("nan") for k, v in zip(loss_keys, totals)}
    trained = done - start_step
    rate = (trained - 1) * cfg.batch_size / (elapsed - first_step_s) if trained > 1 else (
        trained * cfg.batch_size / elapsed)
    return {**means, "lr": lr, "skipped_steps": guard.read()[0], "img_per_sec": rate, "epoch_time_s": elapsed,
            "first_step_s": first_step_s}
