"""``--method trades``: TRADES (Zhang et al. 2019), CE(f(x), y) + β·KL(f(x) ‖ f(x')) per example, with x'
from TRADES' inner maximisation of the KL; the cross-entropy is label-smoothed as in every method here."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import trades_attack
from ..configs import Options, at_least
from ..train.compile import attack_target
from ..train.finetune import FinetuneMethod
from .registry import register


@dataclass(kw_only=True)
class TradesOptions(Options):
    """TRADES' trade-off between accuracy and robustness."""

    FLAG_PREFIX = "trades_"

    beta: float = 6.0
    """Weight β of the KL term."""

    def validate(self) -> None:
        at_least("trades_beta", self.beta, 0)


@register
class Trades(FinetuneMethod):
    name = "trades"
    summary = "TRADES: clean cross-entropy plus β·KL(f(x) ‖ f(x'))"
    options_cls = TradesOptions

    def losses(self, model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``acc`` is the accuracy on the adversarial examples. With DDP, pass the wrapped model."""
        cfg = self.cfg
        x_adv = trades_attack(attack_target(model), imgs, eps=cfg.eps / 255, alpha=cfg.alpha / 255, steps=cfg.steps)
        clean_logits = model(imgs)
        logits = model(x_adv)
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.softmax(clean_logits, dim=1), reduction="batchmean")
        return self.result(self.cross_entropy(clean_logits, labels) + self.options.beta * kl, logits, labels)
