"""Benchmark entry for ``masked_mse_loss``: MAE's reconstruction loss (patchify, norm_pix, masked mean) from one
kernel that reads the image directly, with the image and prediction gradients of its backward."""

from __future__ import annotations

import torch

from mimir_fast.models_mae import masking_indices
from mimir_fast.ops.masked_mse_loss import masked_mse_loss

from ..registry import OpSpec
from .common import standard_providers


def _dims(shape: dict) -> tuple[int, int]:
    """Patches N·L and the patch size K = C·p²; the image holds exactly N·L·K pixels."""
    length = (shape["px"] // shape["p"]) ** 2
    return shape["n"] * length, shape["c"] * shape["p"] ** 2


def _inputs(shape: dict, device: torch.device, dtype: torch.dtype, requires_grad: bool) -> tuple:
    n, c, px, p = shape["n"], shape["c"], shape["px"], shape["p"]
    length = (px // p) ** 2
    imgs = torch.randn(n, c, px, px, device=device, dtype=dtype, requires_grad=requires_grad)
    # the decoder's x[:, 1:, :] (CLS row dropped), a view with row stride (1 + L)·K, as the model passes it
    pred = torch.randn(n, 1 + length, p * p * c, device=device, dtype=dtype, requires_grad=requires_grad)[:, 1:]
    _, _, mask = masking_indices(torch.rand(n, length, device=device), length // 4)  # fp32, as the model's
    return imgs, pred, mask, p, shape["norm_pix"]


def _bytes(shape: dict, mode: str, dtype: torch.dtype) -> float:
    """Forward: read the image and the prediction (N·L·K elements each) and the fp32 mask (N·L); the scalar
    and the per-program partials are negligible. Backward, at least: read the three again, write the image
    gradient and the prediction gradient (N·L·K elements each)."""
    rows, k = _dims(shape)
    s = torch.finfo(dtype).bits // 8
    fwd = 2 * s * rows * k + 4 * rows
    bwd = 4 * s * rows * k + 4 * rows
    return fwd if mode == "fwd" else fwd + bwd


SPEC = OpSpec(
    name="masked_mse_loss",
    shapes={
        "tiny": dict(n=4, c=3, px=16, p=4, norm_pix=True),
        "vit_b_224_b256": dict(n=256, c=3, px=224, p=16, norm_pix=True),  # MAE/MIMIR ImageNet, 196 patches
        "vit_b_224_b256_plain": dict(n=256, c=3, px=224, p=16, norm_pix=False),  # without norm_pix_loss
        "cifar_p2_b256": dict(n=256, c=3, px=32, p=2, norm_pix=True),  # MIMIR CIFAR-10, patch 2, 256 patches
        "cifar_p2_b128": dict(n=128, c=3, px=32, p=2, norm_pix=True),
    },
    make_inputs=_inputs,
    providers=standard_providers(masked_mse_loss),
    bytes=_bytes,
    grad_argnums=(0, 1),
)
