"""``--method clean``: standard (non-adversarial) fine-tuning, for ablations and for classifiers that a
purifier defends."""

from __future__ import annotations

import torch
from torch import nn

from ..train.finetune import FinetuneMethod
from .registry import register


@register
class Clean(FinetuneMethod):
    name = "clean"
    summary = "standard fine-tuning on clean images (no attack)"

    def losses(self, model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = model(imgs)
        return self.result(self.cross_entropy(logits, labels), logits, labels)
