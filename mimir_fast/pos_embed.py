"""Fixed 2-D sine-cosine positional embeddings, with MAE's exact layout and values.

For a ``g × g`` patch grid and width ``D``: the first ``D/2`` channels encode the column index (MAE's
``meshgrid(w, h)`` puts the width coordinate first and calls that half "h"), the last ``D/2`` encode
the row index; each half is ``[sin(pos·ω), cos(pos·ω)]`` with ``ω_k = 10000^(-k/(D/4))``.

The arithmetic runs in numpy float32 in MAE's order: torch's float32 ``pow``/``sin`` differ from numpy's
by up to an ulp, and matching MAE bit for bit keeps a fresh model's loss identical to MAE's.
"""

from __future__ import annotations

import numpy as np
import torch


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """Embed positions ``pos`` (any shape, M values) into ``(M, dim)`` float32; ``dim`` must be even."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = np.arange(dim // 2, dtype=np.float32)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega  # (dim/2,)
    out = np.outer(pos.reshape(-1).astype(np.float32), omega)  # (M, dim/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, grid_size: int, cls_token: bool = False) -> torch.Tensor:
    """The ``(g·g [+1], dim)`` float32 embedding of a ``g × g`` grid; row 0 is zeros when ``cls_token``."""
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}")
    coords = np.arange(grid_size, dtype=np.float32)
    row, col = np.meshgrid(coords, coords, indexing="ij")  # (g, g) each, row-major over patches
    emb = np.concatenate([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], axis=1)  # (g·g, dim)
    if cls_token:
        emb = np.concatenate([np.zeros((1, dim), dtype=np.float32), emb], axis=0)
    return torch.from_numpy(emb.astype(np.float32))
