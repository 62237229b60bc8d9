"""One training epoch, for any objective (``loss_fn``): pretraining and fine-tuning share it.

The step (lr update, forward with the attack, backward, optimizer step) never reads a value back to the
host. Losses are summed on the device and read only every ``print_freq`` steps, where the run also stops
with a ``TrainingError`` if the loss has become non-finite (the reference checks ``math.isfinite`` on
every step, which costs a sync per step).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterable

import torch
from torch import nn

from ..errors import TrainingError
from .logger import Progress, RunLog
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
) -> dict[str, torch.Tensor]:
    """One step on a device batch: ``loss_fn(model, imgs (N, C, H, W), labels (N,))``, backward of its
    ``loss`` scaled by 1/accum_iter and, when ``update``, the optimizer step. Returns the detached losses;
    never reads a value back to the host."""
    with autocast_context(imgs.device, amp_dtype):
        losses = loss_fn(model, imgs, labels)
    (losses["loss"] / accum_iter).backward()
    if update:
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
) -> dict[str, float]:
    """Train ``steps`` steps of epoch ``epoch``; returns the epoch's mean losses, last lr, img/s and time."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    progress = Progress(epoch, cfg.epochs, steps)
    sums = torch.zeros(len(loss_keys), device=device)
    logged_sums, logged_done = sums.clone(), 0  # at the previous print point
    lr = 0.0
    start = time.perf_counter()
    done = 0
    for it, (imgs, labels) in enumerate(batches):
        if it % cfg.accum_iter == 0:
            lr = lr_at(
                epoch + it / steps, lr=base_lr, min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs, epochs=cfg.epochs
            )
            set_lr(optimizer, lr)
        imgs, labels = imgs.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        losses = train_step(model, imgs, labels, optimizer, loss_fn, amp_dtype, cfg.accum_iter,
                            update=(it + 1) % cfg.accum_iter == 0)
        sums += torch.stack([losses[k].float() for k in loss_keys])
        done = it + 1

        if done % cfg.print_freq == 0 or done == steps:  # the only host reads of the epoch
            means = dict(zip(loss_keys, (sums / done).tolist()))
            if not all(map(math.isfinite, means.values())):
                raise TrainingError(
                    f"the loss became non-finite ({means['loss']}) in epoch {epoch} by step {done}; stopping "
                    "(checkpoints already written are intact)"
                )
            progress.update(done, done * cfg.batch_size, means, lr)
            if run_log is not None:  # TensorBoard gets the mean over the steps since the last print point
                window = dict(zip(loss_keys, ((sums - logged_sums) / (done - logged_done)).tolist()))
                run_log.scalars({**window, "lr": lr}, int((epoch + (done - 1) / steps) * 1000))
            logged_sums, logged_done = sums.clone(), done
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    means = dict(zip(loss_keys, (sums / max(done, 1)).tolist()))
    return {**means, "lr": lr, "img_per_sec": done * cfg.batch_size / elapsed, "epoch_time_s": elapsed}
