"""A whole training run, shared by every method (``method.py``): data, model, resume, seeded epochs, atomic
checkpoints in MAE's layout, logs, the summary. docs/pretraining.md describes reproducibility, resume rules,
mid-epoch checkpoints and multi-process runs.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..data import build_train_dataset, steps_per_epoch, train_loader
from ..device import autocast_context, autocast_dtype, resolve_device
from ..distributed import (
    DistEnv,
    abort_distributed,
    finish_distributed,
    init_distributed,
    local_device,
    quiet_unless_main,
)
from ..errors import CheckpointError, ConfigError
from ..ops.runcheck import check_unrecorded, kernel_report, kernel_report_line
from ..outputs import writable_dir
from .checkpoint import (
    CHECKPOINT_RE,
    checkpoint_path,
    load_checkpoint,
    load_model_state,
    newest_checkpoint,
    save_checkpoint,
)
from .compile import compile_model, resolve_compile
from .config import RESUMABLE_CHANGES
from .engine import EpochContext, train_one_epoch
from .logger import RunLog
from .method import Method
from .midepoch import MidEpochCheckpoints, check_mid, mid_path, restore_rng
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


@dataclass
class Resumed:
    """Where a run starts."""

    start_epoch: int = 0
    path: Path | None = None
    """The checkpoint resumed (None: a fresh run)."""
    optimizer_state: dict | None = None
    """Its optimizer state (None: nothing to load)."""
    mid: dict | None = None
    """For a mid-epoch checkpoint, its ``{"step", "ranks"}``."""
    changed: list[str] = field(default_factory=list)
    """Settings that differ from the checkpoint's record (``name old -> new``); only an explicit ``--resume`` may
    change those that define the run."""


def _checkpoint_to_resume(cfg) -> tuple[Path | None, dict | None]:
    """The checkpoint ``cfg`` resumes (``--resume`` a file or a folder's newest, else auto-resume), and the loaded
    checkpoint when it was read to decide."""
    if cfg.resume:
        path = Path(cfg.resume)
        if not path.is_dir():
            return path, None
        found = _auto_resume(path)
        if found[0] is None:
            raise CheckpointError(f"--resume {path} is a folder with no checkpoint-*.pth in it")
        return found
    return _auto_resume(Path(cfg.output_dir)) if cfg.auto_resume else (None, None)


def changed_settings(saved: dict, now: dict) -> list[str]:
    """The fields of ``now`` whose value differs from ``saved`` (a checkpoint's ``args``), as ``name old -> new``;
    fields in ``RESUMABLE_CHANGES`` and fields ``saved`` does not record are not compared."""
    return [f"{k} {saved[k]!r} -> {v!r}" for k, v in now.items()
            if k not in RESUMABLE_CHANGES and k in saved and saved[k] != v]


def _resume(method: Method, model) -> Resumed:
    """Load the resumed weights into the unwrapped ``model``, or initialise it for a fresh run."""
    cfg = method.cfg
    path, ckpt = _checkpoint_to_resume(cfg)
    if path is None:
        method.initialise(model)
        return Resumed()
    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    method.check_resume(ckpt, path)
    saved = ckpt.get("args") or {}
    if saved.get("model") and saved["model"] != cfg.model:
        raise CheckpointError(f"checkpoint {path} was trained with model {saved['model']!r}, but --model is "
                              f"{cfg.model!r}")
    changed = changed_settings(saved, {**cfg.to_dict(), "task": method.task})
    if changed and not cfg.resume:
        raise ConfigError(f"{cfg.output_dir} holds a run with other settings ({'; '.join(changed)}): give a new "
                          "--output_dir, or --no-auto_resume to start over there, or --resume it on purpose")
    if changed:
        print(f"resuming {path} with changed settings: {'; '.join(changed)}")
    load_model_state(model, ckpt["model"], path)
    if "optimizer" not in ckpt or "epoch" not in ckpt:
        print(f"loaded weights from {path} (it has no optimizer state: starting at epoch 0)")
        return Resumed(0, path, changed=changed)
    if "step" in ckpt:  # mid-epoch (midepoch.py): go on inside that epoch
        print(f"resumed from {path} (epoch {ckpt['epoch'] + 1}, after step {ckpt['step']})")
        return Resumed(int(ckpt["epoch"]), path, ckpt["optimizer"],
                       {"step": int(ckpt["step"]), "ranks": ckpt.get("ranks")}, changed)
    print(f"resumed from {path} (epoch {ckpt['epoch'] + 1} done)")
    return Resumed(int(ckpt["epoch"]) + 1, path, ckpt["optimizer"], None, changed)


def _write_config(output_dir: Path, args: dict, resumed: Resumed) -> None:
    """``config.json``: the settings of the run in ``output_dir`` as started. A resumed run leaves it as it is;
    one resumed with changed settings records them in ``config-resumed-<epoch>.json`` beside it."""
    text = json.dumps(args, indent=2) + "\n"
    first = output_dir / "config.json"
    if resumed.path is None or not first.exists():
        first.write_text(text)
    elif resumed.changed:
        (output_dir / f"config-resumed-{resumed.start_epoch}.json").write_text(text)


def _check_kernels(method: Method, model, device: torch.device, amp_dtype, env: DistEnv, compiled: bool) -> None:
    """The dispatch check before the first step (``ops/runcheck.py``; a no-op off CUDA): rank 0 runs one forward
    and backward of the eager, unwrapped model on a random batch of the run's shape (the kernel choice depends on
    shapes and dtypes only); the other ranks then load the records it wrote, so every rank takes the same paths."""
    cfg = method.cfg
    imgs = torch.rand(cfg.batch_size, 3, cfg.input_size, cfg.input_size, device=device)
    labels = torch.zeros(cfg.batch_size, dtype=torch.long, device=device)

    def run_once() -> None:
        with autocast_context(device, amp_dtype):
            loss = method.losses(model, imgs, labels)["loss"]
        loss.backward()
        model.zero_grad(set_to_none=True)

    if env.is_main:
        check_unrecorded(run_once, compiled=compiled)
    if env.world_size > 1:
        dist.barrier()
        if not env.is_main:
            check_unrecorded(lambda: None, compiled=compiled)


def _training_state(model, optimizer, epoch: int, args: dict, extras: dict) -> dict:
    """A checkpoint's contents in MAE's layout (full, unwrapped states, gathered under FSDP2: a collective), plus
    the method's ``extras``."""
    return {
        "model": full_model_state(model),
        "optimizer": full_optimizer_state(model, optimizer),
        "epoch": epoch,
        "scaler": {},  # bf16 needs no GradScaler; {} is what a disabled GradScaler saves
        "args": args,
        **extras,
    }


def _load_optimizer(model, optimizer, state: dict, path: Path) -> None:
    """Load a checkpoint's optimizer ``state`` into the optimizer of the (possibly wrapped) ``model``."""
    try:
        load_optimizer_state(model, optimizer, state)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} has an optimizer state that does not fit ({e})") from None
    for group in optimizer.param_groups:  # run-time choice, not saved state
        group["fused"] = optimizer.defaults.get("fused")


def run(method: Method) -> RunSummary:
    """Train ``method.cfg`` with ``method`` and return the summary (see the module docstring for
    reproducibility).

    Launched by torchrun (or srun), it joins the process group (leaving it at the end if it joined it)."""
    device = resolve_device(method.cfg.device)
    owns_group = not dist.is_initialized()
    env = init_distributed(device)
    try:
        with quiet_unless_main(env):
            method.cfg = per_rank_config(method.cfg, env.world_size)
            summary = _run(method, env, local_device(device, env))
    except BaseException:
        if owns_group:
            abort_distributed()
        raise
    if owns_group:
        finish_distributed()
    return summary


def _run(method: Method, env: DistEnv, device: torch.device) -> RunSummary:
    # Each epoch reseeds every RNG from (seed, rank, epoch) and draws its order from (seed, epoch), alike on every
    # rank, so an epoch is a function of the model and optimizer state at its start: resuming continues exactly.
    cfg = method.cfg
    rank, world_size = env.rank, env.world_size
    amp_dtype = autocast_dtype(cfg.precision, device)
    output_dir = Path(cfg.output_dir)
    if env.is_main:  # before any work: a run that cannot save stops now
        writable_dir(output_dir, "--output_dir")
        if cfg.log_dir:
            writable_dir(cfg.log_dir, "--log_dir")

    dataset = build_train_dataset(cfg, method.train_transform(), world_size)
    steps = steps_per_epoch(cfg, dataset, world_size)

    seed_everything(cfg.seed)  # the same initial weights on every rank (FSDP2 does not broadcast them)
    model = method.build_model(dataset).to(device)
    eff_batch = cfg.batch_size * cfg.accum_iter * world_size
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    print(f"{method.task}: method {method.name}, model {cfg.model} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on {device}, "
          f"{'bf16 autocast' if amp_dtype else 'fp32'}")
    print(f"effective batch size: {eff_batch} ({cfg.batch_size} x {cfg.accum_iter} accum x {world_size} processes)")
    print(f"lr: {lr:.3e} (base lr {lr * 256 / eff_batch:.3e}), {steps} steps per epoch")

    resumed = _resume(method, model)
    start_epoch, last_ckpt, optimizer_state, mid = (resumed.start_epoch, resumed.path, resumed.optimizer_state,
                                                    resumed.mid)
    if mid is not None:
        check_mid(mid, last_ckpt, world_size, steps)
    compile_mode = resolve_compile(cfg.compile, device)
    _check_kernels(method, model, device, amp_dtype, env, compiled=compile_mode != "off")
    model = wrap_model(model, env, device, cfg.fsdp)  # DDP (or FSDP2) under torchrun; checkpoints save unwrap(model)
    optimizer = build_optimizer(method.param_groups(unwrap(model)), lr, method.betas, device, cfg.optimizer)
    if optimizer_state is not None:
        _load_optimizer(model, optimizer, optimizer_state, last_ckpt)
    step_model = compile_model(model, compile_mode)  # shares the parameters; checkpoints save ``model``
    args = {**cfg.to_dict(), "task": method.task}
    if env.is_main:
        _write_config(output_dir, args, resumed)

    def training_state(epoch: int) -> dict:
        return _training_state(model, optimizer, epoch, args, method.checkpoint_extras())

    run_log = RunLog(output_dir, Path(cfg.log_dir) if cfg.log_dir else output_dir) if env.is_main else None
    if run_log is not None:
        run_log.forget_from(start_epoch)  # rows of epochs after the checkpoint belong to an abandoned continuation
    ctx = EpochContext(
        model=step_model, optimizer=optimizer, cfg=cfg, loss_fn=method.losses, loss_keys=method.loss_keys,
        steps=steps, base_lr=lr, device=device, amp_dtype=amp_dtype, run_log=run_log,
        mid=MidEpochCheckpoints(cfg.save_every_steps, steps, output_dir, env, device, training_state),
    )
    stats: dict = {}
    val: dict = {}
    images = seconds = 0.0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            seed = epoch_seed(cfg.seed, rank, epoch)
            seed_everything(seed)
            rank_mid = mid["ranks"][rank] if mid is not None and epoch == start_epoch else None
            start_step = mid["step"] if rank_mid is not None else 0
            order = torch.Generator().manual_seed(epoch_seed(cfg.seed, 0, epoch))  # alike on every rank
            batches = train_loader(cfg, dataset, torch.Generator().manual_seed(seed), device, rank=rank,
                                   world_size=world_size, order=order, start_step=start_step)
            if rank_mid is not None:  # the RNG states at the saved step (midepoch.py)
                restore_rng(rank_mid["rng"], device)
            stats = train_one_epoch(ctx, batches, epoch, start_step=start_step,
                                    sums=rank_mid["sums"] if rank_mid is not None else None)
            val = method.after_epoch(unwrap(model), device)  # on every rank: FSDP2's forward is a collective
            images += (steps - start_step) * cfg.batch_size * world_size
            seconds += (steps - start_step) * cfg.batch_size / stats["img_per_sec"]  # without the first step
            if compile_mode != "off" and epoch == start_epoch:
                print(f"compile: {stats['first_step_s']:.1f} s (the first step, with compilation; {compile_mode})")
            if epoch % cfg.save_freq == 0 or epoch + 1 == cfg.epochs:
                state = training_state(epoch)
                last_ckpt = checkpoint_path(output_dir, epoch)
                if env.is_main:
                    save_checkpoint(state, last_ckpt)
                    mid_path(output_dir).unlink(missing_ok=True)  # superseded
            row = {**{f"train_{k}": v for k, v in stats.items()}, **{f"test_{k}": v for k, v in val.items()},
                   "epoch": epoch}
            if epoch == start_epoch:  # the path each op took, once the step has run
                kernels = kernel_report()
                print(kernel_report_line(kernels))
                row["kernels"] = kernels
                if env.is_main and resumed.path is None:
                    _write_config(output_dir, {**args, "kernels": kernels}, resumed)
            if run_log is not None:
                run_log.epoch(row)
    finally:
        if run_log is not None:
            run_log.close()
    if start_epoch >= cfg.epochs:
        print(f"{last_ckpt} already completed {cfg.epochs} epochs: nothing left to train")

    extras = {**{k: v for k, v in stats.items() if k not in method.loss_keys}, "val": val}
    final = unwrap(model)
    if is_fsdp(model):  # the end-of-run artifacts come from an unsharded copy on rank 0
        state = full_model_state(model)
        if env.is_main:
            final = method.build_model(dataset).to(device)
            final.load_state_dict(state)
    if env.is_main:
        extras.update(method.after_run(final, output_dir, device))
    return RunSummary(
        final_loss=stats.get("loss"),
        img_per_sec=images / seconds if seconds else None,
        checkpoint=last_ckpt,
        epochs_trained=max(0, cfg.epochs - start_epoch),
        extras=extras,
    )
