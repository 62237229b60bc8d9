"""De^3, NIM's test-time defence: add Gaussian noise of std γ (/255), reconstruct every patch with the NIM
model, de-normalise each patch, clamp, classify. x (N, C, H, W) in [0, 1] -> P(x) of the same shape.

``denorm_stats`` says where each patch's mean and std come from: ``clean`` (the un-noised input, as released;
it gives an attacker a noise-free gradient path), ``noisy`` (the noisy input) or ``none`` (a NIM model trained
without norm-pix). docs/purifiers.md explains the choice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models_mae import create_model
from ..train.checkpoint import load_checkpoint, load_model_state
from .noise import add_noise

DENORM_STATS = ("clean", "noisy", "none")


def patch_stats(model: nn.Module, imgs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-patch mean and std ``sqrt(unbiased var + 1e-6)`` of ``imgs`` (N, C, H, W) for a
    ``MaskedAutoencoderViT`` ``model``: two (N, L, 1) tensors, the statistics norm-pix normalises targets by."""
    patches = model.patchify(imgs)
    return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5


def check_gamma(gamma: float) -> None:
    """γ must be a finite number >= 0 (in /255 units): a one-line ``ConfigError`` otherwise."""
    if not (isinstance(gamma, (int, float)) and gamma >= 0 and gamma != float("inf")):
        raise ConfigError(f"De^3 gamma must be >= 0 (noise std in /255 units), got {gamma}")


class De3Purifier(nn.Module):
    """De^3 purification with a NIM-pretrained ``MaskedAutoencoderViT`` (see the module docstring).

    Args:
        nim_model: the NIM model; its parameters are frozen (``requires_grad_(False)``) and it is put in eval mode.
        gamma: the test-time noise std in /255 units (NIM-AdvDef evaluates 70 and 140), >= 0.
        denorm_stats: ``clean`` (released; leaks a noise-free gradient path), ``noisy`` or ``none``; must
            match the model: ``none`` for a model trained without norm-pix, ``clean``/``noisy`` with it.
    """

    def __init__(self, nim_model: nn.Module, gamma: float, denorm_stats: str = "clean"):
        super().__init__()
        check_gamma(gamma)
        if denorm_stats not in DENORM_STATS:
            raise ConfigError(f"unknown denorm_stats {denorm_stats!r}; choose one of: {', '.join(DENORM_STATS)}")
        norm_pix = bool(getattr(nim_model, "norm_pix_loss", False))
        if norm_pix and denorm_stats == "none":
            raise ConfigError("denorm_stats none needs a NIM model trained without norm-pix; this one predicts "
                              "normalised patches: use clean or noisy")
        if not norm_pix and denorm_stats != "none":
            raise ConfigError(f"denorm_stats {denorm_stats} needs a NIM model trained with norm-pix; this one "
                              "predicts pixels: use none")
        self.nim = nim_model.eval().requires_grad_(False)
        self.gamma = float(gamma)
        self.denorm_stats = denorm_stats

    @property
    def randomized(self) -> bool:
        """γ > 0: each forward draws fresh noise (γ = 0 is a deterministic reconstruction)."""
        return self.gamma > 0

    def train(self, mode: bool = True) -> De3Purifier:
        """The NIM model stays in eval mode (no dropout/drop-path); the noise is drawn in either mode."""
        super().train(mode)
        self.nim.eval()
        return self

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None,
                sigma: torch.Tensor | float | None = None) -> torch.Tensor:
        """Purify ``x`` (N, C, H, W) in [0, 1]: returns (N, C, H, W) fp32 in [0, 1], differentiable in ``x``.

        ε is drawn from the global RNG unless ``noise`` (N, C, H, W), a standard-normal draw, is given (to
        hold the randomness fixed). ``sigma`` (a scalar or (N,), /255 units) replaces γ for this call (the
        classifier's fine-tuning draws one σ per image).
        """
        noisy = add_noise(x, self.gamma if sigma is None else sigma, noise)
        pred = self.nim.reconstruct(noisy).float()  # (N, L, p·p·C)
        if self.denorm_stats != "none":
            mean, std = patch_stats(self.nim, x if self.denorm_stats == "clean" else noisy)
            pred = pred * std + mean
        return self.nim.unpatchify(pred).clamp(0, 1)

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}, denorm_stats={self.denorm_stats}"


def load_de3_purifier(path: str | Path, gamma: float, denorm_stats: str = "clean", *,
                      image_size: int | None = None) -> De3Purifier:
    """A ``De3Purifier`` (eval mode, frozen, CPU) from a ``--method nim`` pretraining checkpoint.

    One-line errors, before any work: γ < 0 or a ``denorm_stats`` that does not fit the checkpoint's
    norm-pix setting (``ConfigError``); an ``image_size`` (the classifier's input side) other than the
    checkpoint's (``ConfigError``); a checkpoint of another method (``CheckpointError``).
    """
    check_gamma(gamma)
    ckpt = load_checkpoint(path)
    args = ckpt.get("args") or {}
    if args.get("method") != "nim":
        raise CheckpointError(f"checkpoint {path} was pretrained with method {args.get('method')!r}, not nim")
    size = int(args["input_size"])
    if image_size is not None and image_size != size:
        raise ConfigError(f"the De^3 purifier {path} was trained on {size} px images but the classifier takes "
                          f"{image_size} px")
    model = create_model(args["model"], img_size=size, patch_size=int(args["patch_size"]),
                         norm_pix_loss=bool(args.get("norm_pix_loss", True)))
    load_model_state(model, ckpt["model"], path)
    return De3Purifier(model, gamma, denorm_stats)


def seeded_de3(purifier: De3Purifier, gamma: float, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """De^3 at a fixed ``gamma`` as a function of a batch (N, C, H, W), with ε from a CPU generator seeded with
    ``seed``: a fresh function repeats the same noise over the same batches, on any device, and leaves the
    global RNG alone (no gradient)."""
    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def purify(x: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator).to(x.device)
        return purifier(x, noise, float(gamma))

    return purify
