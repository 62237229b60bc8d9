"""MAEP at test time: a masked autoencoder trained to map adversarial images to clean ones (Chen & Lu, arXiv
2501.16904), applied as one deterministic, unmasked, differentiable reconstruction. x (N, C, H, W) in [0, 1] ->
clamp(P(x), 0, 1) of the same shape. Training is the ``maep`` pretraining method (``mimir_fast.methods.maep``);
its two stages and our choices where the paper is silent are in docs/purifiers.md.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models_mae import create_model
from ..models_vit import is_classifier_state
from ..train.checkpoint import load_checkpoint, load_model_state
from .lora import apply_lora, decoder_lora_targets, merge_lora

TRANSFERS = ("none", "resize", "tile")
STAGES = ("masked", "lora")


def reconstruct(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The full reconstruction ``P(x)`` (N, C, H, W), not clamped, of a ``MaskedAutoencoderViT`` trained without
    norm-pix: every patch encoded in order, decoded, unpatchified."""
    return model.unpatchify(model.reconstruct(x))


def apply_maep_lora(model: nn.Module, rank: int, alpha: float) -> list[nn.Parameter]:
    """Wrap every decoder linear of the ``MaskedAutoencoderViT`` ``model`` with LoRA (rank, alpha), in place;
    returns the trainable ``A`` and ``B`` matrices (everything else is frozen)."""
    return apply_lora(model, decoder_lora_targets(model), rank, alpha)


def maep_stage(args: dict) -> str:
    """The MAEP stage a checkpoint's ``args`` record (``masked`` when absent: stage 1)."""
    return args.get("maep_stage") or "masked"


def maep_args(ckpt: dict, path) -> dict:
    """The ``args`` of a ``--method maep`` pretraining checkpoint; a one-line ``CheckpointError`` otherwise."""
    if is_classifier_state(ckpt["model"]):
        raise CheckpointError(f"checkpoint {path} is a classifier checkpoint, not a --method maep pretraining one")
    args = ckpt.get("args") or {}
    if args.get("method") != "maep":
        raise CheckpointError(f"checkpoint {path} was pretrained with method {args.get('method')!r}, not maep")
    if args.get("norm_pix_loss"):
        raise CheckpointError(f"checkpoint {path} was trained with norm-pix loss; MAEP purifiers predict pixels "
                              "(--no-norm_pix_loss)")
    return args


def check_transfer(purifier_size: int, image_size: int, transfer: str) -> None:
    """Raise a one-line ``ConfigError`` if a purifier trained at ``purifier_size`` px cannot purify
    ``image_size`` px images under ``transfer`` (an unknown transfer, or a size mismatch with ``none``)."""
    if transfer not in TRANSFERS:
        raise ConfigError(f"unknown purifier transfer {transfer!r}; choose one of: {', '.join(TRANSFERS)}")
    if purifier_size != image_size and transfer == "none":
        raise ConfigError(
            f"the purifier was trained on {purifier_size} px images but the classifier takes {image_size} px; "
            "choose a transfer (resize or tile) to apply it across sizes"
        )


class MAEPPurifier(nn.Module):
    """MAEP at test time: ``x (N, C, H, W) in [0, 1] -> clamp(P(x), 0, 1)`` of the same shape.

    Deterministic (mask ratio 0, no random draw) and differentiable end to end, so white-box attacks can take
    exact gradients through it. ``transfer`` applies a purifier trained at S px to H × W images:
    ``none`` (sizes must match), ``resize`` (bilinear to S × S and back; anti-aliased when shrinking) or
    ``tile`` (reflect-pad H and W up to multiples of S, purify each S × S tile, crop).
    """

    def __init__(self, model: nn.Module, transfer: str = "none"):
        super().__init__()
        if transfer not in TRANSFERS:
            raise ConfigError(f"unknown purifier transfer {transfer!r}; choose one of: {', '.join(TRANSFERS)}")
        if model.norm_pix_loss:
            raise ConfigError("this purifier was trained with norm-pix loss; MAEP purifiers predict pixels "
                              "(train with --method maep --no-norm_pix_loss)")
        self.model = model
        self.transfer = transfer
        self.size = model.patch_embed.img_size[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.model.in_chans:
            raise ConfigError(f"the purifier takes (N, {self.model.in_chans}, H, W) images, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = self.size
        if (h, w) == (s, s):
            return reconstruct(self.model, x).clamp(0, 1)
        if self.transfer == "none":
            raise ConfigError(f"the purifier was trained on {s} px images but got {h}x{w}; choose a transfer "
                              "(resize or tile) to apply it across sizes")
        if self.transfer == "resize":
            small = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=h > s or w > s)
            out = reconstruct(self.model, small)
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False, antialias=h < s or w < s)
            return out.clamp(0, 1)
        # tile
        ph, pw = -h % s, -w % s
        padded = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
        n, c, hh, ww = padded.shape
        gh, gw = hh // s, ww // s
        tiles = padded.reshape(n, c, gh, s, gw, s).permute(0, 2, 4, 1, 3, 5).reshape(n * gh * gw, c, s, s)
        out = reconstruct(self.model, tiles).reshape(n, gh, gw, c, s, s).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(n, c, hh, ww)[..., :h, :w].clamp(0, 1)


def load_maep_purifier(path: str | Path, *, image_size: int | None = None, transfer: str = "none") -> MAEPPurifier:
    """Build a ``MAEPPurifier`` (eval mode, frozen, CPU) from a ``--method maep`` pretraining checkpoint of
    either stage: a ``--maep_stage lora`` one is rebuilt with its recorded LoRA rank and alpha, loaded, and
    merged, so the purifier holds a plain ``MaskedAutoencoderViT``.

    With ``image_size`` (the classifier's input side) a size mismatch without a transfer is a one-line
    ``ConfigError`` here, before any work; a checkpoint of another method is a ``CheckpointError``.
    """
    ckpt = load_checkpoint(path)
    args = maep_args(ckpt, path)
    size = int(args["input_size"])
    if image_size is not None:
        check_transfer(size, image_size, transfer)
    model = create_model(args["model"], img_size=size, patch_size=int(args["patch_size"]), norm_pix_loss=False)
    if maep_stage(args) == "lora":
        apply_maep_lora(model, int(args["maep_lora_rank"]), float(args["maep_lora_alpha"]))
    load_model_state(model, ckpt["model"], path)
    merge_lora(model)
    model.requires_grad_(False)
    return MAEPPurifier(model.eval(), transfer)
