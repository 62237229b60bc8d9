"""``--method de3``: NIM/De^3's classifier fine-tuning on reconstructions of a frozen NIM purifier.

Each batch x (N, C, H, W) in [0, 1] is noised with σ ~ U(de3_sigma_low, de3_sigma_high) per image (/255 units;
0 and 30 by default), reconstructed by the NIM model of ``--purifier`` (no gradient, eval mode; de-normalised by
``--denorm_stats``), clamped to [0, 1], and the classifier trains on the result with the label-smoothed
cross-entropy. The purifier is loaded once per run and is not part of the classifier or its checkpoints. The
validation accuracy of each epoch goes through De^3 at γ = ``val_gamma`` with noise seeded by ``seed``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from ..configs import Options, at_least, check, choice
from ..purify.de3 import DENORM_STATS, De3Purifier, load_de3_purifier, seeded_de3
from ..purify.noise import sample_sigma
from ..train.finetune import FinetuneMethod
from .registry import register


@dataclass(kw_only=True)
class De3Options(Options):
    """The NIM purifier, the training noise and the validation noise of De^3's fine-tuning."""

    FLAG_PREFIX = "de3_"
    FLAG_NAMES = {"purifier": "purifier", "denorm_stats": "denorm_stats", "val_gamma": "val_gamma"}

    purifier: str | None = None
    """The NIM pretraining checkpoint (mimir-fast pretrain --method nim) whose frozen model reconstructs the
    training inputs (required)."""
    sigma_low: float = 0.0
    """Lower end of the per-image training noise σ ~ U(low, high), in /255 units (NIM: 0)."""
    sigma_high: float = 30.0
    """Upper end of the per-image training noise σ ~ U(low, high), in /255 units (NIM: 30)."""
    denorm_stats: str = "clean"
    """Where the reconstruction's per-patch mean and std come from: clean (the un-noised input, as released),
    noisy (the noisy input) or none (a NIM model trained without norm-pix); as eval's --denorm_stats."""
    val_gamma: float = 70.0
    """The De^3 noise std γ (/255 units) of the per-epoch validation accuracy (NIM: 70; seeded noise)."""

    def validate(self) -> None:
        check(bool(self.purifier), "method de3 needs --purifier CHECKPOINT (from mimir-fast pretrain --method nim)")
        check(0 <= self.sigma_low <= self.sigma_high,
              f"de3_sigma_low and de3_sigma_high need 0 <= low <= high, got {self.sigma_low} and {self.sigma_high}")
        choice("denorm_stats", self.denorm_stats, DENORM_STATS)
        check(self.val_gamma != float("inf"), "val_gamma must be finite")
        at_least("val_gamma", self.val_gamma, 0, " (in /255 units)")


@register
class De3(FinetuneMethod):
    name = "de3"
    summary = "NIM/De^3: fine-tune on a frozen NIM purifier's reconstructions of x + σε, σ ~ U(0, 30)"
    options_cls = De3Options

    def __init__(self, cfg):
        super().__init__(cfg)
        self.purifier: De3Purifier | None = None
        """The frozen NIM purifier, loaded once per run (held here, not in the classifier)."""
        self._purifier_device: torch.device | None = None

    def build_model(self, dataset) -> nn.Module:
        self.purifier_on(torch.device("cpu"))  # loaded (and checked) before any training
        return super().build_model(dataset)

    def purifier_on(self, device: torch.device) -> De3Purifier:
        """The purifier on ``device`` (loaded from ``--purifier`` on first use)."""
        if self.purifier is None:
            opts = self.options
            self.purifier = load_de3_purifier(opts.purifier, 0.0, opts.denorm_stats, image_size=self.cfg.input_size)
            self._purifier_device = torch.device("cpu")
        if self._purifier_device != device:
            self.purifier.to(device)
            self._purifier_device = device
        return self.purifier

    def losses(self, model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``acc`` is the accuracy on the reconstructions. σ (N,) then ε (N, C, H, W) come from the global RNG on
        ``imgs``' device (no host sync)."""
        logits = model(training_inputs(self.purifier_on(imgs.device), imgs, self.options))
        return self.result(self.cross_entropy(logits, labels), logits, labels)

    def val_inputs(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        return seeded_de3(self.purifier_on(device), self.options.val_gamma, self.cfg.seed)


@torch.no_grad()
def training_inputs(purifier: De3Purifier, x: torch.Tensor, opts: De3Options) -> torch.Tensor:
    """clamp(denorm(NIM(x + (σ/255)·ε)), 0, 1) with σ ~ U(sigma_low, sigma_high) per image: (N, C, H, W) fp32."""
    sigma = sample_sigma(x.shape[0], "uniform", low=opts.sigma_low, high=opts.sigma_high, device=x.device)
    return purifier(x, None, sigma)
