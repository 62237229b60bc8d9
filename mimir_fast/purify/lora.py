"""LoRA (Hu et al. 2021) for ``nn.Linear`` layers: ``y = W x + b + (alpha / rank) · B A x``.

``A`` (rank, in) is Kaiming-uniform, ``B`` (out, rank) starts at zero, so a freshly wrapped layer gives the base
layer's output exactly. ``apply_lora`` swaps chosen ``nn.Linear`` modules for ``LoRALinear`` wrappers and freezes
everything but ``A`` and ``B``; ``merge_lora`` folds ``B A`` into the base weights and puts plain ``nn.Linear``
modules back, so the model's ``state_dict`` has its original keys and shapes again (MAE's checkpoint layout).
Before merging, a wrapped layer ``name`` holds ``name.base.weight``, ``name.base.bias``, ``name.lora_A`` and
``name.lora_B``; ``lora_state`` maps a plain state_dict onto that layout (to start LoRA from a trained model).

MAEP uses it to fine-tune only the decoder at mask ratio 0 (``decoder_lora_targets``).
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn

from ..errors import ConfigError


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update.

    Args:
        base: the layer to adapt; its parameters are frozen (``requires_grad=False``).
        rank: r ≥ 1, the update's rank (at most min(in, out)).
        alpha: scale numerator; the update is multiplied by ``alpha / rank``.

    Shapes: ``(..., in) -> (..., out)``.
    """

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 8.0):
        super().__init__()
        if rank < 1 or rank > min(base.in_features, base.out_features):
            raise ConfigError(
                f"lora rank must be in [1, {min(base.in_features, base.out_features)}] for a "
                f"{base.in_features}->{base.out_features} layer, got {rank}"
            )
        if alpha <= 0:
            raise ConfigError(f"lora alpha must be > 0, got {alpha}")
        self.base = base
        base.requires_grad_(False)
        self.rank = rank
        self.scale = alpha / rank
        w = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=w.device, dtype=w.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        return y + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    def delta(self) -> torch.Tensor:
        """The weight update ``(alpha / rank) · B A``, (out, in)."""
        return (self.lora_B @ self.lora_A) * self.scale

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update to the base weight (the forward then skips the low-rank branch)."""
        if not self.merged:
            self.base.weight += self.delta()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract the update again (undoes ``merge``, up to float rounding)."""
        if self.merged:
            self.base.weight -= self.delta()
            self.merged = False


def decoder_lora_targets(model: nn.Module) -> list[str]:
    """Names of a ``MaskedAutoencoderViT``'s decoder linears: ``decoder_embed``, each decoder block's
    ``attn.qkv``, ``attn.proj``, ``mlp.fc1``, ``mlp.fc2``, and ``decoder_pred``."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.split(".")[0] in ("decoder_embed", "decoder_blocks", "decoder_pred")
    ]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_lora(model: nn.Module, targets: Iterable[str], rank: int = 4, alpha: float = 8.0) -> list[nn.Parameter]:
    """Freeze ``model`` and wrap each ``nn.Linear`` named in ``targets`` with ``LoRALinear``, in place.

    Returns the trainable LoRA parameters (``A`` and ``B`` of every wrapped layer); nothing else requires grad.
    """
    targets = list(targets)
    if not targets:
        raise ConfigError("apply_lora got no target layers")
    model.requires_grad_(False)
    params: list[nn.Parameter] = []
    for name in targets:
        layer = model.get_submodule(name)
        if not isinstance(layer, nn.Linear):
            raise ConfigError(f"lora target {name!r} is a {type(layer).__name__}, not nn.Linear")
        wrapped = LoRALinear(layer, rank, alpha)
        _set_module(model, name, wrapped)
        params += [wrapped.lora_A, wrapped.lora_B]
    return params


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """The model's ``LoRALinear`` modules by name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_state(model: nn.Module, plain_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``plain_state`` (keys of the unwrapped model) in the layout of ``model`` (with ``LoRALinear`` layers):
    each wrapped layer's ``weight`` and ``bias`` move under ``base.``, and its ``lora_A`` and ``lora_B`` are
    taken from ``model`` as they are (their initialisation). Keys of no wrapped layer pass through unchanged,
    so a state that does not fit still fails ``load_state_dict`` by name."""
    wrapped = lora_layers(model)
    out: dict[str, torch.Tensor] = {}
    for key, value in plain_state.items():
        owner, _, leaf = key.rpartition(".")
        out[f"{owner}.base.{leaf}" if owner in wrapped else key] = value
    for name, layer in wrapped.items():
        out[f"{name}.lora_A"] = layer.lora_A.detach().clone()
        out[f"{name}.lora_B"] = layer.lora_B.detach().clone()
    return out


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every LoRA update into its base weight and put the plain ``nn.Linear`` back, in place.

    The model keeps its ``requires_grad`` flags as they are (frozen); call ``requires_grad_(True)`` to train it
    further. Returns ``model``."""
    for name, layer in lora_layers(model).items():
        layer.merge()
        _set_module(model, name, layer.base)
    return model
