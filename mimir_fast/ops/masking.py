"""MAE's random masking as indices: which patches each sample keeps, and the permutation that undoes the shuffle."""

from __future__ import annotations

import torch


def masking_indices(noise: torch.Tensor, len_keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample shuffle from uniform ``noise`` (N, L): the lowest ``len_keep`` values are kept.

    Returns ``ids_keep`` (N, L_keep) in shuffled order, ``ids_restore`` (N, L) that undoes the shuffle,
    and ``mask`` (N, L) float, 0 = kept, 1 = removed, in patch order.
    """
    n, length = noise.shape
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(n, length, device=noise.device)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :len_keep], ids_restore, mask
