"""MIMIR / MAE pretraining: the ``Task`` the shared runner trains, and ``run_pretrain``.

``--method maep --maep_stage lora`` (MAEP's stage 2, ``mimir_fast.purify.maep``) is a pretraining run too: the
model is the ``--maep_init`` stage-1 model with LoRA on its decoder, and only the LoRA matrices train.
"""

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
        model = create_model(cfg.model, img_size=cfg.input_size, patch_size=cfg.patch_size,
                             norm_pix_loss=cfg.norm_pix_loss)
        if _lora_stage(cfg):  # MAEP stage 2: LoRA on the decoder's linears, everything else frozen
            from ..purify.maep import apply_maep_lora

            apply_maep_lora(model, cfg.maep_lora_rank, cfg.maep_lora_alpha)
        return model

    def param_groups(self, model: nn.Module, cfg: PretrainConfig) -> list[dict]:
        if _lora_stage(cfg):  # the LoRA matrices alone (all 2-D), decayed like any weight matrix
            return [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": cfg.weight_decay}]
        return param_groups_weight_decay(model, cfg.weight_decay)

    def losses(self, model, imgs, labels, cfg: PretrainConfig) -> dict:
        return pretrain_losses(model, imgs, cfg)

    def check_resume(self, ckpt: dict, path: Path, cfg: PretrainConfig) -> None:
        if is_classifier_state(ckpt["model"]):
            raise CheckpointError(f"{path} is a classifier checkpoint; pretraining resumes pretraining checkpoints")
        if cfg.method == "maep":
            from ..purify.maep import check_maep_resume

            check_maep_resume(ckpt, path, cfg)

    def initialise(self, model: nn.Module, cfg: PretrainConfig) -> None:
        if _lora_stage(cfg):
            from ..purify.lora import lora_layers
            from ..purify.maep import load_maep_init

            load_maep_init(model, cfg)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            print(f"maep stage lora: initialised from {cfg.maep_init}; LoRA rank {cfg.maep_lora_rank}, alpha "
                  f"{cfg.maep_lora_alpha} on {len(lora_layers(model))} decoder linears ({trainable} trainable "
                  "parameters)")

    def after_run(self, model, cfg: PretrainConfig, output_dir: Path, device: torch.device) -> dict:
        if cfg.method == "nim":  # original, noisy input, reconstruction (no masking)
            from ..purify.nim import save_nim_figure, typical_sigma

            return {"figure": save_nim_figure(model, visual_batch(cfg).to(device), output_dir / "reconstruction.png",
                                              sigma=typical_sigma(cfg), seed=cfg.seed)}
        if cfg.method == "maep":  # stage lora trains (and MAEP purifies) at mask ratio 0
            ratio = 0.0 if _lora_stage(cfg) else cfg.maep_mask_ratio
        else:
            ratio = cfg.mask_ratio
        figure = save_reconstruction_figure(model, visual_batch(cfg).to(device), ratio,
                                            output_dir / "reconstruction.png", seed=cfg.seed)
        return {"figure": figure}


def run_pretrain(cfg: PretrainConfig) -> RunSummary:
    """Pretrain ``cfg``; see ``mimir_fast.train.runner`` for checkpoints, resume and reproducibility."""
    task = PretrainTask()
    if cfg.method == "maep":  # also log MAEP's L1 purification loss (stage lora: it is the loss)
        from ..purify.maep import MAEP_LORA_LOSS_KEYS, MAEP_LOSS_KEYS

        task.loss_keys = MAEP_LORA_LOSS_KEYS if _lora_stage(cfg) else MAEP_LOSS_KEYS
    return run(task, cfg)


def _lora_stage(cfg: PretrainConfig) -> bool:
    """Whether ``cfg`` is MAEP's stage 2 (LoRA on the decoder of a stage-1 model)."""
    return cfg.method == "maep" and cfg.maep_stage == "lora"
