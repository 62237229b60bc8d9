"""What every pretraining method shares: a ``MaskedAutoencoderViT``, MAE's augmentation, optimizer groups and
betas, and the reconstruction figure at the end. A method adds its loss (``mimir_fast.methods``)."""

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
from .method import Method
from .optim import param_groups_weight_decay
from .visualize import save_reconstruction_figure


class PretrainMethod(Method):
    """MAE pretraining: the model, data and optimizer of every method run by ``mimir-fast pretrain``."""

    task = "pretrain"
    betas = (0.9, 0.95)
    cfg: PretrainConfig

    @property
    def figure_mask_ratio(self) -> float:
        """The mask ratio of the end-of-run reconstruction figure (the training forward's)."""
        return self.cfg.mask_ratio

    def train_transform(self):
        return pretrain_transform(self.cfg.input_size)

    def build_model(self, dataset) -> nn.Module:
        cfg = self.cfg
        return create_model(cfg.model, img_size=cfg.input_size, patch_size=cfg.patch_size,
                            norm_pix_loss=cfg.norm_pix_loss)

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups_weight_decay(model, self.cfg.weight_decay)

    def check_resume(self, ckpt: dict, path: Path) -> None:
        if is_classifier_state(ckpt["model"]):
            raise CheckpointError(f"{path} is a classifier checkpoint; pretraining resumes pretraining checkpoints")

    def after_run(self, model: nn.Module, output_dir: Path, device: torch.device) -> dict:
        figure = save_reconstruction_figure(model, visual_batch(self.cfg).to(device), self.figure_mask_ratio,
                                            output_dir / "reconstruction.png", seed=self.cfg.seed)
        return {"figure": figure}
