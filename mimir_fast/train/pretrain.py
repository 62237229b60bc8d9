"""A whole pretraining run: build, resume, train epochs, checkpoint, log, draw the figure, summarise.

Reproducibility: each epoch reseeds every RNG from ``(seed, rank, epoch)`` and takes its shuffle order
from a generator with that seed. An epoch is therefore a function of the model and optimizer state at its
start, and resuming from ``checkpoint-{e}.pth`` continues bit-identically on the CPU.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import build_train_dataset, steps_per_epoch, train_loader, visual_batch
from ..errors import CheckpointError, ConfigError
from ..models_mae import create_model
from .checkpoint import checkpoint_path, load_checkpoint, load_model_state, newest_checkpoint, save_checkpoint
from .config import PretrainConfig
from .engine import train_one_epoch
from .logger import RunLog
from .optim import build_optimizer
from .visualize import save_reconstruction_figure


@dataclass
class RunSummary:
    """What a run reports at the end."""

    final_loss: float | None
    """Mean loss of the last epoch trained in this run (None if nothing was left to train)."""
    img_per_sec: float | None
    """Training images per second over the epochs trained in this run."""
    checkpoint: Path | None
    """The newest checkpoint written or resumed."""
    figure: Path | None
    """The reconstruction figure."""
    epochs_trained: int
    """Epochs trained in this run."""

    def line(self) -> str:
        loss = "n/a" if self.final_loss is None else f"{self.final_loss:.4f}"
        rate = "n/a" if self.img_per_sec is None else f"{self.img_per_sec:.1f}"
        return f"done: final loss {loss} | {rate} img/s | checkpoint {self.checkpoint}"


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


def _resume(cfg: PretrainConfig, model, optimizer, output_dir: Path) -> tuple[int, Path | None]:
    path = Path(cfg.resume) if cfg.resume else (newest_checkpoint(output_dir) if cfg.auto_resume else None)
    if path is None:
        return 0, None
    ckpt = load_checkpoint(path)
    saved_model = (ckpt.get("args") or {}).get("model")
    if saved_model and saved_model != cfg.model:
        raise CheckpointError(f"checkpoint {path} was trained with model {saved_model!r}, but --model is {cfg.model!r}")
    load_model_state(model, ckpt["model"], path)
    if "optimizer" not in ckpt or "epoch" not in ckpt:
        print(f"loaded weights from {path} (it has no optimizer state: starting at epoch 0)")
        return 0, path
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} has an optimizer state that does not fit ({e})") from None
    for group in optimizer.param_groups:  # run-time choice, not saved state
        group["fused"] = optimizer.defaults.get("fused")
    print(f"resumed from {path} (epoch {ckpt['epoch']})")
    return int(ckpt["epoch"]) + 1, path


def run_pretrain(cfg: PretrainConfig, rank: int = 0, world_size: int = 1) -> RunSummary:
    """Train ``cfg`` and return its summary (see the module docstring for reproducibility)."""
    device = resolve_device(cfg.device)
    amp_dtype = autocast_dtype(cfg.precision, device)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    dataset = build_train_dataset(cfg)
    steps = steps_per_epoch(cfg, dataset)

    seed_everything(cfg.seed + rank)
    model = create_model(
        cfg.model, img_size=cfg.input_size, patch_size=cfg.patch_size, norm_pix_loss=cfg.norm_pix_loss
    ).to(device)
    eff_batch = cfg.batch_size * cfg.accum_iter * world_size
    lr = cfg.lr if cfg.lr is not None else cfg.blr * eff_batch / 256
    print(f"model {cfg.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) on {device}, "
          f"{'bf16 autocast' if amp_dtype else 'fp32'}, method {cfg.method}")
    print(f"effective batch size: {eff_batch} ({cfg.batch_size} x {cfg.accum_iter} accum x {world_size} processes)")
    print(f"lr: {lr:.3e} (base lr {lr * 256 / eff_batch:.3e}), {steps} steps per epoch")

    optimizer = build_optimizer(model, lr, cfg.weight_decay, device)
    start_epoch, last_ckpt = _resume(cfg, model, optimizer, output_dir)
    (output_dir / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    run_log = RunLog(output_dir, Path(cfg.log_dir) if cfg.log_dir else output_dir)
    stats: dict = {}
    images = seconds = 0.0
    try:
        for epoch in range(start_epoch, cfg.epochs):
            seed = epoch_seed(cfg.seed, rank, epoch)
            seed_everything(seed)
            batches = train_loader(cfg, dataset, torch.Generator().manual_seed(seed), device)
            stats = train_one_epoch(
                model, batches, optimizer, cfg, epoch=epoch, steps=steps, base_lr=lr, device=device,
                amp_dtype=amp_dtype, run_log=run_log,
            )
            images += steps * cfg.batch_size
            seconds += stats["epoch_time_s"]
            if epoch % cfg.save_freq == 0 or epoch + 1 == cfg.epochs:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "epoch": epoch,
                    "scaler": {},  # bf16 needs no GradScaler; {} is what a disabled GradScaler saves
                    "args": cfg.to_dict(),
                }
                last_ckpt = save_checkpoint(state, checkpoint_path(output_dir, epoch))
            run_log.epoch({**{f"train_{k}": v for k, v in stats.items()}, "epoch": epoch})
    finally:
        run_log.close()
    if start_epoch >= cfg.epochs:
        print(f"{last_ckpt} already completed {cfg.epochs} epochs: nothing left to train")

    figure = save_reconstruction_figure(
        model, visual_batch(cfg).to(device), cfg.mask_ratio, output_dir / "reconstruction.png", seed=cfg.seed
    )
    return RunSummary(
        final_loss=stats.get("loss"),
        img_per_sec=images / seconds if seconds else None,
        checkpoint=last_ckpt,
        figure=figure,
        epochs_trained=max(0, cfg.epochs - start_epoch),
    )
