"""The fine-tuning classifier (facebookresearch/mae and MIMIR ``models_vit``): global average of the patch tokens,
``fc_norm``, ``head``; drop-path rising over depth; a trainable ``pos_embed``. Its state_dict loads strict into
timm's ``VisionTransformer(global_pool='avg', qkv_bias=True)``. The encoder comes from a pretraining checkpoint
(``load_pretrained_encoder``) or starts from MAE's initialisation. Factories: ``vit_ti``, ``vit_small``,
``vit_base``, ``vit_large``, ``vit_base_patch16``, ``vit_large_patch16``, ``vit_huge_patch14``, ``vit_micro``.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import torch
from torch import nn

from .errors import CheckpointError, ConfigError
from .pos_embed import sincos_2d
from .vit_layers import Block, PatchEmbed

ENCODER_PREFIXES = ("cls_token", "pos_embed", "patch_embed.", "blocks.")


class VisionTransformer(nn.Module):
    """ViT classifier. ``forward(x)``: images (N, C, H, W) in [0, 1] -> logits (N, num_classes)."""

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        norm_layer: Callable[[int], nn.Module] = partial(nn.LayerNorm, eps=1e-6),
        drop_path_rate: float = 0.0,
        head_init_std: float = 2e-5,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, matmul=True)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear, 0 at the first block
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer, drop_path=r) for r in rates]
        )
        self.fc_norm = norm_layer(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        self._init_weights(head_init_std)

    def _init_weights(self, head_init_std: float) -> None:
        self.pos_embed.data.copy_(sincos_2d(self.pos_embed.shape[-1], self.patch_embed.grid_size[0], True)[None])
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.head.weight, std=head_init_std)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, C, H, W) -> all tokens after the last block, (N, 1 + L, D) (CLS first)."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> pooled features (N, D): the mean of the patch tokens, then ``fc_norm``."""
        return self.fc_norm(self.forward_tokens(x)[:, 1:].mean(dim=1))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features (N, D) -> logits (N, num_classes)."""
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_LN = partial(nn.LayerNorm, eps=1e-6)


def _vit(embed_dim: int, depth: int, num_heads: int, default_patch: int = 16):
    def factory(**kwargs) -> VisionTransformer:
        kwargs.setdefault("patch_size", default_patch)
        return VisionTransformer(embed_dim=embed_dim, depth=depth, num_heads=num_heads, norm_layer=_LN, **kwargs)

    factory.__doc__ = f"ViT {embed_dim} wide, {depth} blocks, {num_heads} heads (patch {default_patch} by default)."
    return factory


vit_micro = _vit(128, 6, 4)
vit_ti = _vit(192, 12, 3)
vit_small = _vit(384, 12, 6)
vit_base = _vit(768, 12, 12)
vit_large = _vit(1024, 24, 16)
vit_base_patch16 = _vit(768, 12, 12)
vit_large_patch16 = _vit(1024, 24, 16)
vit_huge_patch14 = _vit(1280, 32, 16, default_patch=14)

CLASSIFIERS: dict[str, Callable[..., VisionTransformer]] = {
    "vit_micro": vit_micro,
    "vit_ti": vit_ti,
    "vit_small": vit_small,
    "vit_base": vit_base,
    "vit_large": vit_large,
    "vit_base_patch16": vit_base_patch16,
    "vit_large_patch16": vit_large_patch16,
    "vit_huge_patch14": vit_huge_patch14,
}

PRETRAIN_TO_CLASSIFIER = {
    "mae_vit_micro": "vit_micro",
    "mae_vit_ti": "vit_ti",
    "mae_vit_small": "vit_small",
    "mae_vit_base": "vit_base",
    "mae_vit_large": "vit_large",
    "mae_vit_base_patch16": "vit_base_patch16",
    "mae_vit_large_patch16": "vit_large_patch16",
    "mae_vit_huge_patch14": "vit_huge_patch14",
}


def create_classifier(name: str, **kwargs) -> VisionTransformer:
    """Build a registered classifier; an unknown name is a ``ConfigError`` listing the choices."""
    if name not in CLASSIFIERS:
        raise ConfigError(f"unknown classifier {name!r}; choose one of: {', '.join(CLASSIFIERS)}")
    return CLASSIFIERS[name](**kwargs)


def is_classifier_state(state_dict: dict) -> bool:
    """A classifier state_dict has a ``head``; a pretraining one (MAE/MIMIR) does not."""
    return "head.weight" in state_dict


def encoder_state(state_dict: dict) -> dict:
    """The transformer trunk shared by MAE and the classifier: CLS, positions, patch embedding, blocks."""
    return {k: v for k, v in state_dict.items() if k.startswith(ENCODER_PREFIXES)}


def load_pretrained_encoder(model: VisionTransformer, state_dict: dict, source: str) -> None:
    """Initialise ``model``'s trunk from a MAE/MIMIR pretraining state_dict (``fc_norm`` and ``head`` stay new).

    Raises ``CheckpointError`` for a classifier checkpoint, a different image or patch size, or a different
    encoder width or depth.
    """
    if is_classifier_state(state_dict):
        raise CheckpointError(f"{source} is a classifier checkpoint, not a pretraining one (use --resume for it)")
    trunk = encoder_state(state_dict)
    own = encoder_state(model.state_dict())
    if "pos_embed" in trunk and trunk["pos_embed"].shape != own["pos_embed"].shape:
        raise CheckpointError(
            f"{source} was pretrained with {trunk['pos_embed'].shape[1] - 1} patches of width "
            f"{trunk['pos_embed'].shape[2]}, but the classifier has {own['pos_embed'].shape[1] - 1} of width "
            f"{own['pos_embed'].shape[2]} (check --model, --input_size and --patch_size)"
        )
    missing = sorted(set(own) - set(trunk))
    unexpected = sorted(set(trunk) - set(own))
    shapes = [k for k in own if k in trunk and trunk[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source} does not fit the classifier (missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shape {shapes[:3]}): check --model"
        )
    model.load_state_dict(trunk, strict=False)
