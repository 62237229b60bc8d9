"""``--method mae``: plain MAE pretraining (He et al. 2021), the masked reconstruction loss alone."""

from __future__ import annotations

import torch
from torch import nn

from ..train.pretrain import PretrainMethod
from .registry import register


@register
class Mae(PretrainMethod):
    name = "mae"
    summary = "plain MAE: the masked reconstruction loss (no attack, no HSIC)"

    def losses(self, model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": model(imgs, self.cfg.mask_ratio)[0]}
