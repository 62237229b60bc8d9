"""A whole training run, shared by pretraining and fine-tuning; a ``Task`` supplies what differs.

The runner builds the data and model, resumes, trains seeded epochs, writes atomic checkpoints in MAE's
layout, logs, and summarises. Reproducibility: each epoch reseeds every RNG from ``(seed, rank, epoch)`` and
takes its shuffle order from a generator with that seed, so an epoch is a function of the model and
optimizer state at its start, and resuming from ``checkpoint-{e}.pth`` continues bit-identically on the CPU.

Under torchrun (``distributed.py``, ``parallel.py``) every rank builds the same initial model (seeded with
``seed`` alone), resumes from the same checkpoint, draws the epoch's order from ``(seed, epoch)`` and trains
its slice of each global batch, with ``(seed, rank, epoch)`` seeding its augmentation, masks and random starts.
Rank 0 alone prints, writes checkpoints, logs and figures.

``--save_every_steps N`` also writes ``checkpoint-mid.pth`` every N updates within an epoch, with the loader
position, RNG states and running loss sums, and resuming from it continues inside the epoch exactly
(``midepoch.py``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..data import build_train_dataset, steps_per_epoch, train_loader
from ..distributed import (
    DistEnv,
    abort_distributed,
    finish_distributed,
    gather,
    init_distributed,
    local_device,
    quiet_unless_main,
)
from ..errors import CheckpointError, ConfigError
from .checkpoint import (
    CHECKPOINT_RE,
    checkpoint_path,
    load_checkpoint,
    load_model_state,
    newest_checkpoint,
    save_checkpoint,
)
from .compile import compile_model, resolve_compile
from .config import RunConfig
from .engine import train_one_epoch
from .logger import RunLog
from .midepoch import capture_rng, check_mid, mid_path, restore_rng
from .optim import build_optimizer
from .parallel import (
    full_model_state,
    full_optimizer_state,
    is_fsdp,
    load_optimizer_state,
    per_rank_config,
    unwrap,
    wrap_model,
)


class Task:
    """What a kind of run adds to the shared loop. Subclasses set ``kind`` and ``loss_keys``."""

    kind: str = ""
    """Recorded in checkpoints as ``args['task']``."""
    loss_keys: tuple[str, ...] = ("loss",)
    """The keys ``losses`` returns; ``loss`` is backpropagated."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""

    def train_transform(self, cfg: RunConfig):
        raise NotImplementedError

    def build_model(self, cfg: RunConfig, dataset) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module, cfg: RunConfig) -> list[dict]:
        raise NotImplementedError

    def losses(self, model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor, cfg: RunConfig) -> dict:
        """The step's losses (device tensors; ``loss`` is backpropagated, the rest detached)."""
        raise NotImplementedError

    def check_resume(self, ckpt: dict, path: Path, cfg: RunConfig) -> None:
        """Raise ``CheckpointError`` if ``ckpt`` is not a checkpoint this task can resume."""

    def initialise(self, model: nn.Module, cfg: RunConfig) -> None:
        """Set the starting weights of a fresh (not resumed) run."""

    def after_epoch(self, model: nn.Module, cfg: RunConfig, device: torch.device) -> dict:
        """Metrics to log after each epoch (e.g. validation accuracy)."""
        return {}

    def after_run(self, model: nn.Module, cfg: RunConfig, output_dir: Path, device: torch.device) -> dict:
        """Artifacts to write at the end (e.g. a figure); returns what to report."""
        return {}


@dataclass
class RunSummary:
    """What a run reports at the end."""

    final_loss: float | None
    """Mean loss of the last epoch trained in this run (None if nothing was left to train)."""
    img_per_sec: float | None
    """Training images per second over the epochs trained in this run."""
    checkpoint: Path | None
    """The newest checkpoint written or resumed."""
    epochs_trained: int
    """Epochs trained in this run."""
    extras: dict = field(default_factory=dict)
    """Task-specific results: the last epoch's metrics and the end-of-run artifacts."""

    @property
    def figure(self) -> Path | None:
        return self.extras.get("figure")

    def line(self) -> str:
        loss = "n/a" if self.final_loss is None else f"{self.final_loss:.4f}"
        rate = "n/a" if self.img_per_sec is None else f"{self.img_per_sec:.1f}"
        val = self.extras.get("val", {})
        acc = f" | val acc {val['acc1']:.2f}%" if "acc1" in val else ""
        return f"done: final loss {loss}{acc} | {rate} img/s | checkpoint {self.checkpoint}"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without one is a ``ConfigError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA device is available")
    return torch.device(name)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA by default, fp32 (None) on the CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return torch.bfloat16 if precision == "bf16" else None


def epoch_seed(seed: int, rank: int, epoch: int) -> int:
    """A well-mixed 32-bit seed for one (seed, rank, epoch)."""
    return int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def _auto_resume(output_dir: Path) -> tuple[Path | None, dict | None]:
    """The newest ``checkpoint-{epoch}.pth``, or ``checkpoint-mid.pth`` when its epoch is after that one's; with
    the loaded checkpoint when it had to be read to decide (so it is not read twice)."""
    newest = newest_checkpoint(output_dir)
    mid = mid_path(output_dir)
    if not mid.is_file():
        return newest, None
    ckpt = load_checkpoint(mid)
    if newest is None or int(ckpt.get("epoch", -1)) > int(CHECKPOINT_RE.match(newest.name).group(1)):
        return mid, ckpt
    return newest, None


def _resume(task: Task, cfg: RunConfig, model, output_dir: Path) -> tuple[int, Path | None, dict | None, dict | None]:
    """Load the resumed weights into the unwrapped ``model`` (or initialise it); returns the start epoch, the
    checkpoint, its optimizer state (None when there is none to load) and, for a mid-epoch checkpoint, its
    ``{"step", "ranks"}`` (None otherwise)."""
    path, ckpt = (Path(cfg.resume), None) if cfg.resume else (
        _auto_resume(output_dir) if cfg.auto_resume else (None, None))
    if path is None:
        task.initialise(model, cfg)
        return 0, None, None, None
    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    task.check_resume(ckpt, path, cfg)
    saved_model = (ckpt.get("args") or {}).get("model")
    if saved_model and saved_model != cfg.model:
        raise CheckpointError(f"checkpoint {path} was trained with model {saved_model!r}, but --model is {cfg.model!r}")
    load_model_state(model, ckpt["model"], path)
    if "optimizer" not in ckpt or "epoch" not in ckpt:
        print(f"loaded weights from {path} (it has no optimizer state: starting at epoch 0)")
        return 0, path, None, None
    if "step" in ckpt:  # mid-epoch (midepoch.py): go on inside that epoch
        print(f"resumed from {path} (epoch {ckpt['epoch']}, after step {ckpt['step']})")
        return int(ckpt["epoch"]), path, ckpt["optimizer"], {"step": int(ckpt["step"]), "ranks": ckpt.get("ranks")}
    print(f"resumed from {path} (epoch {ckpt['epoch']})")
    return int(ckpt["epoch"]) + 1, path, ckpt["optimizer"], None


def _training_state(model, optimizer, epoch: int, args: dict) -> dict:
    """A checkpoint's contents in MAE's layout: full, unwrapped states (gathered under FSDP2: a collective)."""
    return {
        "model": full_model_state(model),
        "optimizer": full_optimizer_state(model, optimizer),
        "epoch": epoch,
        "scaler": {},  # bf16 needs no GradScaler; {} is what a disabled GradScaler saves
        "args": args,
    }


def _load_optimizer(model, optimizer, state: dict, path: Path) -> None:
    """Load a checkpoint's optimizer ``state`` into the optimizer of the (possibly wrapped) ``model``."""
    try:
        load_optimizer_state(model, optimizer, state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} has an optimizer state that does not fit ({e})") from None
    for group in optimizer.param_groups:  # run-time choice, not saved state
        group["fused"] = optimizer.defaults.get("fused")


def run(task: Task, cfg: RunConfig) -> RunSummary:
    """Train ``cfg`` with ``task`` and return the summary (see the module docstring for reproducibility).

    Launched by torchrun (or srun), it joins the process group (leaving it at the end if it joined it)."""
    device = resolve_device(cfg.device)
    owns_group = not dist.is_initialized()
    env = init_distributed(device)
    try:
        with quiet_unless_main(env):
            summary = _run(task, per_rank_config(cfg, env.world_size), env, local_device(device, env))
    except BaseException:
        if owns_group:
            abort_distributed()
        raise
    if owns_group:
        finish_distributed()
    return summary


def _run(task: Task, cfg: RunConfig, env: DistEnv, device: torch.device) -> RunSummary:
    rank, world_size = env.rank, env.world_size
    amp_dtype = autocast_dtype(cfg.precision, device)
    output_dir = Path(cfg.output_dir)
    if env.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)

    dataset = build_train_dataset(cfg, task.train_transform(cfg), world_size)
    steps = steps_per_epoch(cfg, dataset, world_size)

    seed_everything(cfg.seed)  # the same initial weights on every rank (FSDP2 does not broadcast them)
    model = task.build_model(cfg, dataset).to(device)
    eff_batch = cfg.batch_size * cfg.accum_iter * world_size
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    print(f"{task.kind}: model {cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) "
          f"on {device}, {'bf16 autocast' if amp_dtype else 'fp32'}, method {getattr(cfg, 'method', '-')}")
    print(f"effective batch size: {eff_batch} ({cfg.batch_size} x {cfg.accum_iter} accum x {world_size} processes)")
    print(f"lr: {lr:.3e} (base lr {lr * 256 / eff_batch:.3e}), {steps} steps per epoch")

    start_epoch, last_ckpt, optimizer_state, mid = _resume(task, cfg, model, output_dir)
    if mid is not None:
        check_mid(mid, last_ckpt, world_size, steps)
    model = wrap_model(model, env, device, cfg.fsdp)  # DDP (or FSDP2) under torchrun; checkpoints save unwrap(model)
    optimizer = build_optimizer(task.param_groups(unwrap(model), cfg), lr, task.betas, device, cfg.optimizer)
    if optimizer_state is not None:
        _load_optimizer(model, optimizer, optimizer_state, last_ckpt)
    compile_mode = resolve_compile(cfg.compile, device)
    step_model = compile_model(model, compile_mode)  # shares the parameters; checkpoints save ``model``
    args = {**cfg.to_dict(), "task": task.kind}
    if env.is_main:
        (output_dir / "config.json").write_text(json.dumps(args, indent=2) + "\n")

    def loss_fn(m, imgs, labels):
        return task.losses(m, imgs, labels, cfg)

    run_log = RunLog(output_dir, Path(cfg.log_dir) if cfg.log_dir else output_dir) if env.is_main else None
    stats: dict = {}
    val: dict = {}
    images = seconds = 0.0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            seed = epoch_seed(cfg.seed, rank, epoch)
            seed_everything(seed)
            resumed = mid["ranks"][rank] if mid is not None and epoch == start_epoch else None
            start_step = mid["step"] if resumed is not None else 0
            order = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0, epoch))  # alike on every rank
            batches = train_loader(cfg, dataset, torch.Generator().manual_seed(seed), device, rank=rank,
                                   world_size=world_size, order=order, start_step=start_step)
            if resumed is not None:  # the RNG states at the saved step (midepoch.py)
                restore_rng(resumed["rng"], device)

            def save_mid(done: int, sums: torch.Tensor, epoch: int = epoch) -> None:
                if not cfg.save_every_steps or done % cfg.save_every_steps or done >= steps:
                    return
                ranks = gather({"rng": capture_rng(device), "sums": sums.cpu()}, env)  # a collective
                state = {**_training_state(model, optimizer, epoch, args), "step": done, "ranks": ranks}
                if env.is_main:
                    save_checkpoint(state, mid_path(output_dir))

            stats = train_one_epoch(
                step_model, batches, optimizer, cfg, loss_fn, task.loss_keys, epoch=epoch, steps=steps, base_lr=lr,
                device=device, amp_dtype=amp_dtype, run_log=run_log, start_step=start_step,
                sums=resumed["sums"] if resumed is not None else None, on_step=save_mid,
            )
            val = task.after_epoch(unwrap(model), cfg, device)  # on every rank: FSDP2's forward is a collective
            images += (steps - start_step) * cfg.batch_size * world_size
            seconds += (steps - start_step) * cfg.batch_size / stats["img_per_sec"]  # without the first step
            if compile_mode != "off" and epoch == start_epoch:
                print(f"compile: {stats['first_step_s']:.1f} s (the first step, with compilation; {compile_mode})")
            if epoch % cfg.save_freq == 0 or epoch + 1 == cfg.epochs:
                state = _training_state(model, optimizer, epoch, args)
                last_ckpt = checkpoint_path(output_dir, epoch)
                if env.is_main:
                    save_checkpoint(state, last_ckpt)
                    mid_path(output_dir).unlink(missing_ok=True)  # superseded
            if run_log is not None:
                run_log.epoch({**{f"train_{k}": v for k, v in stats.items()},
                               **{f"test_{k}": v for k, v in val.items()}, "epoch": epoch})
    finally:
        if run_log is not None:
            run_log.close()
    if start_epoch >= cfg.epochs:
        print(f"{last_ckpt} already completed {cfg.epochs} epochs: nothing left to train")

    extras = {**{k: v for k, v in stats.items() if k not in task.loss_keys}, "val": val}
    final = unwrap(model)
    if is_fsdp(model):  # the end-of-run artifacts come from an unsharded copy on rank 0
        state = full_model_state(model)
        if env.is_main:
            final = task.build_model(cfg, dataset).to(device)
            final.load_state_dict(state)
    if env.is_main:
        extras.update(task.after_run(final, cfg, output_dir, device))
    return RunSummary(
        final_loss=stats.get("loss"),
        img_per_sec=images / seconds if seconds else None,
        checkpoint=last_ckpt,
        epochs_trained=max(0, cfg.epochs - start_epoch),
        extras=extras,
    )
