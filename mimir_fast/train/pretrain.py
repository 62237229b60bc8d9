"""MIMIR / MAE pretraining: the ``Task`` the shared runner trains, and ``run_pretrain``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data import visual_batch
from ..data.transforms import pretrain_transform
from ..errors import CheckpointError
from ..models_mae import create_model
from ..models_vit import is_classifier_state
from .config import PretrainConfig
from .objective import LOSS_KEYS, pretrain_losses
from .optim import param_groups_weight_decay
from .runner import RunSummary, Task, run
from .visualize import save_reconstruction_figure


class PretrainTask(Task):
    """MAE pretraining on PGD examples plus HSIC (MIMIR), or plain MAE."""

    kind = "pretrain"
    loss_keys = LOSS_KEYS
    betas = (0.9, 0.95)

    def train_transform(self, cfg: PretrainConfig):
        return pretrain_transform(cfg.input_size)

    def build_model(self, cfg: PretrainConfig, dataset) -> nn.Module:
        return create_model(cfg.model, img_size=cfg.input_size, patch_size=cfg.patch_size,
                            norm_pix_loss=cfg.norm_pix_loss)

    def param_groups(self, model: nn.Module, cfg: PretrainConfig) -> list[dict]:
        return param_groups_weight_decay(model, cfg.weight_decay)

    def losses(self, model, imgs, labels, cfg: PretrainConfig) -> dict:
        return pretrain_losses(model, imgs, cfg)

    def check_resume(self, ckpt: dict, path: Path, cfg: PretrainConfig) -> None:
        if is_classifier_state(ckpt["model"]):
            raise CheckpointError(f"{path} is a classifier checkpoint; pretraining resumes pretraining checkpoints")

    def after_run(self, model, cfg: PretrainConfig, output_dir: Path, device: torch.device) -> dict:
        if cfg.method == "nim":  # original, noisy input, reconstruction (no masking)
            from ..purify.nim import save_nim_figure, typical_sigma

            return {"figure": save_nim_figure(model, visual_batch(cfg).to(device), output_dir / "reconstruction.png",
                                              sigma=typical_sigma(cfg), seed=cfg.seed)}
        figure = save_reconstruction_figure(
            model, visual_batch(cfg).to(device), cfg.maep_mask_ratio if cfg.method == "maep" else cfg.mask_ratio,
            output_dir / "reconstruction.png", seed=cfg.seed,
        )
        return {"figure": figure}


def run_pretrain(cfg: PretrainConfig) -> RunSummary:
    """Pretrain ``cfg``; see ``mimir_fast.train.runner`` for checkpoints, resume and reproducibility."""
    task = PretrainTask()
    if cfg.method == "maep":  # also log MAEP's L1 purification loss
        task.loss_keys = (*LOSS_KEYS, "pur_loss")
    return run(task, cfg)
