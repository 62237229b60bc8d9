"""The inputs of NIM/De^3's classifier fine-tuning (``nim-maep-spec.md`` §A.3): NIM reconstructions of noisy images.

For a training batch x (N, C, H, W) in [0, 1]:

    σ_i ~ U(low, high)  per image, in /255 units (A.3: U(0, 30), much weaker than the test-time γ),
    x̃ = x + (σ_i/255)·ε,  ε ~ N(0, I)         (``nim.add_noise``; not clamped),
    x̂ = clamp(unpatchify(denorm(NIM(x̃))), 0, 1),

with the frozen NIM model (eval mode, no gradient) and the de-normalisation rule of ``De3Purifier``
(``denorm_stats``: the clean or noisy input's per-patch statistics, or none). The classifier trains on x̂.
Validation during fine-tuning is De^3 itself, at a fixed σ = γ (NIM: 70), with noise from a seeded generator.

The purifier is a ``De3Purifier`` (its scalar ``gamma`` is not used here: σ is passed per call); it stays
outside the classifier, so the classifier's parameters and checkpoints do not include it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from .de3 import De3Purifier, load_de3_purifier
from .nim import sample_sigma


def load_finetune_purifier(path: str | Path, denorm_stats: str, image_size: int) -> De3Purifier:
    """The frozen NIM purifier (eval mode, ``requires_grad`` off, CPU) of a ``--method nim`` checkpoint.

    One-line errors: a checkpoint of another method (``CheckpointError``), an image size other than the
    classifier's ``image_size`` or a ``denorm_stats`` that does not fit its norm-pix setting (``ConfigError``).
    """
    return load_de3_purifier(path, 0.0, denorm_stats, image_size=image_size)


def sample_train_sigma(n: int, low: float, high: float, device: torch.device | str | None = None,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image training noise σ ~ U(low, high) (n,), in /255 units, drawn on ``device`` (no host sync)."""
    return sample_sigma(n, "uniform", low=low, high=high, device=device, generator=generator)


@torch.no_grad()
def reconstruct(purifier: De3Purifier, x: torch.Tensor, sigma: torch.Tensor | float,
                noise: torch.Tensor | None = None) -> torch.Tensor:
    """clamp(denorm(NIM(x + (σ/255)·ε)), 0, 1) for ``x`` (N, C, H, W) in [0, 1]: (N, C, H, W) fp32, no gradient.

    ``sigma`` is a scalar or (N,) (one σ per image), in /255 units; ε ~ N(0, I) is drawn from the global RNG
    unless ``noise`` (N, C, H, W) is given. The NIM forward runs under the caller's autocast, if any.
    """
    return purifier(x, noise, sigma)


def training_inputs(purifier: De3Purifier, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """One training batch's inputs: ``reconstruct`` of ``x`` (N, C, H, W) with σ ~ U(low, high) drawn per image
    (first σ (N,), then ε (N, C, H, W), both from the global RNG on ``x``'s device; no host sync)."""
    sigma = sample_train_sigma(x.shape[0], low, high, device=x.device)
    return reconstruct(purifier, x, sigma)


def seeded_de3(purifier: De3Purifier, gamma: float, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """De^3 at a fixed ``gamma`` as a function of a batch (N, C, H, W), with ε from a CPU generator seeded with
    ``seed``: a fresh function repeats the same noise over the same batches, on any device, and leaves the
    global RNG alone (the validation of each epoch)."""
    generator = torch.Generator().manual_seed(seed)

    def purify(x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        return reconstruct(purifier, x, float(gamma), noise)

    return purify
