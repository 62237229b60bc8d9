"""``--method pgd`` (the fine-tuning default): Madry et al.'s PGD adversarial training, MIMIR's recipe.

The attack runs in eval mode (no drop-path) with input gradients only; the loss is the label-smoothed
cross-entropy on the adversarial examples alone.
"""

from __future__ import annotations

import torch
from torch import nn

from ..attacks import pgd
from ..train.compile import attack_target
from ..train.finetune import FinetuneMethod
from .registry import register


@register
class Pgd(FinetuneMethod):
    name = "pgd"
    summary = "PGD adversarial training (Madry et al.): cross-entropy on PGD examples only"

    def losses(self, model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """With DDP, pass the wrapped model: the attack runs on the module inside, without gradient sync."""
        cfg = self.cfg
        x_adv = pgd(attack_target(model), imgs, labels, eps=cfg.eps / 255, alpha=cfg.alpha / 255, steps=cfg.steps)
        logits = model(x_adv)
        return self.result(self.cross_entropy(logits, labels), logits, labels)
