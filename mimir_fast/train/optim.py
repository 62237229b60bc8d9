"""AdamW parameter groups and MAE's per-iteration learning-rate schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ConfigError


def param_groups_weight_decay(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups, as timm's ``param_groups_weight_decay`` makes them for MAE and MIMIR.

    1-D parameters (norm weights, biases) and any ``*.bias`` get no decay; everything else, including the
    (1, 1, D) ``cls_token`` and ``mask_token``, is decayed. Frozen parameters (the sin-cos ``pos_embed``)
    are left out.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def param_groups_layer_decay(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """MAE's fine-tuning groups (``util/lr_decay.py``): layer-wise lr scales and weight-decay exemptions.

    Layer ids: 0 for ``cls_token``, ``pos_embed`` and ``patch_embed``; k + 1 for block k; depth + 1 for the
    rest (``fc_norm``, ``head``). A group's ``lr_scale`` is ``layer_decay ** (depth + 1 − id)``. No weight decay
    for 1-D parameters, ``pos_embed`` and ``cls_token``.
    """
    top = len(model.blocks) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
            layer = 0
        elif name.startswith("blocks."):
            layer = int(name.split(".")[1]) + 1
        else:
            layer = top
        decay = not (p.ndim == 1 or name in ("pos_embed", "cls_token"))
        group = groups.setdefault((layer, decay), {
            "params": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": layer_decay ** (top - layer),
        })
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def build_optimizer(
    param_groups: list[dict], lr: float, betas: tuple[float, float], device: torch.device, kind: str = "adamw"
) -> torch.optim.Optimizer:
    """The optimizer over ``param_groups`` (MAE pretraining uses betas (0.9, 0.95)).

    ``adamw``: torch's fused AdamW kernel on CPU and CUDA (``foreach`` elsewhere); the fused kernel also
    skips non-finite steps without a sync (``nonfinite.py``). ``apex_fused_adam``: NVIDIA apex's
    ``FusedAdam`` in AdamW mode, only when apex is importable (it is not on PyPI).
    """
    if kind == "apex_fused_adam":
        try:
            from apex.optimizers import FusedAdam
        except ImportError:
            raise ConfigError(
                "optimizer 'apex_fused_adam' needs NVIDIA apex, which is not installed (it is not on PyPI: build it "
                "from github.com/NVIDIA/apex, or use --optimizer adamw, torch's fused AdamW)"
            ) from None
        return FusedAdam(param_groups, lr=lr, betas=betas, adam_w_mode=True)
    return torch.optim.AdamW(param_groups, lr=lr, betas=betas, fused=device.type in ("cpu", "cuda"))


def lr_at(epoch: float, *, lr: float, min_lr: float, warmup_epochs: float, epochs: int) -> float:
    """Learning rate at fractional ``epoch``: linear warmup from 0, then half-cosine to ``min_lr``."""
    if epoch < warmup_epochs:
        return lr * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-12)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, value: float) -> None:
    """Set every group's lr (scaled by a group's ``lr_scale`` when it has one, as MAE does)."""
    for group in optimizer.param_groups:
        group["lr"] = value * group.get("lr_scale", 1.0)
