"""A classifier behind a test-time purifier, as attacks and evaluation see it.

``PurifiedClassifier(purifier, classifier)``: x (N, C, H, W) in [0, 1] -> ``classifier(purifier(x))``
(N, num_classes), differentiable end to end (the full-gradient setting). ``BPDA(purifier)``: the purifier's output
forward, the identity's gradient backward (Athalye et al. 2018), for comparison. A randomised purifier takes an
optional ``noise`` (N, C, H, W) standard-normal draw, so an evaluation can hold its randomness fixed.
"""

from __future__ import annotations

import torch
from torch import nn


def is_randomized(module: nn.Module) -> bool:
    """Whether ``module``'s forward draws random numbers (a randomised purifier, or a model behind one)."""
    return bool(getattr(module, "randomized", False))


class BPDA(nn.Module):
    """``purifier``'s output in the forward pass, the identity's gradient in the backward pass.

    x (N, C, H, W) -> P(x) (N, C, H, W), computed without building a graph through the purifier.
    """

    def __init__(self, purifier: nn.Module):
        super().__init__()
        self.purifier = purifier

    @property
    def randomized(self) -> bool:
        return is_randomized(self.purifier)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        with torch.no_grad():
            purified = self.purifier(x, noise) if noise is not None else self.purifier(x)
        return x + (purified - x).detach()


class PurifiedClassifier(nn.Module):
    """``classifier(purifier(x))``: the defended model, for clean evaluation and full-gradient attacks.

    ``x`` (N, C, H, W) in [0, 1] -> logits (N, num_classes). Gradients flow through both parts (the purifier's
    parameters are frozen; the input gradient is exact). ``eval()``/``train()`` reach both parts; a De^3
    purifier stays randomised in eval mode.
    """

    def __init__(self, purifier: nn.Module, classifier: nn.Module):
        super().__init__()
        self.purifier = purifier
        self.classifier = classifier

    @property
    def randomized(self) -> bool:
        """True when the purifier draws noise on each forward (so attacks need EOT)."""
        return is_randomized(self.purifier)

    def purify(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """The purified images (N, C, H, W); ``noise`` fixes a randomised purifier's draw (ignored otherwise)."""
        if noise is not None and self.randomized:
            return self.purifier(x, noise)
        return self.purifier(x)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.purify(x, noise))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's features of the purified ``x`` (for PGD-MI): (N, D)."""
        return self.classifier.forward_features(self.purify(x))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """The classifier's head: (N, D) -> (N, num_classes)."""
        return self.classifier.forward_head(features)
