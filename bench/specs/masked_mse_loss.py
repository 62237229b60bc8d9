"""Benchmark entry for ``masked_mse_loss``: MAE's reconstruction loss (patchify, norm_pix, masked mean) from one
kernel that reads the image directly, with the image and prediction gradients of its backward."""

from __future__ import annotations

import torch

from mimir_fast.ops.masked_mse_loss import GRAD_ARGNUMS, SHAPES, make_inputs, masked_mse_loss

from ..registry import OpSpec
from .common import standard_providers


def _dims(shape: dict) -> tuple[int, int]:
    """Patches N·L and the patch size K = C·p²; the image holds exactly N·L·K pixels."""
    length = (shape["px"] // shape["p"]) ** 2
    return shape["n"] * length, shape["c"] * shape["p"] ** 2


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
    shapes=SHAPES,
    make_inputs=make_inputs,
    providers=standard_providers(masked_mse_loss),
    bytes=_bytes,
    grad_argnums=GRAD_ARGNUMS,
)
