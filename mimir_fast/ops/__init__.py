"""Public ops, usable on their own. Each has a plain-PyTorch reference (``<op>_ref``) that runs on any device
and dtype, and a Triton kernel chosen per call by ``_dispatch.choose`` (``MIMIR_FAST_KERNELS``; under ``auto``
the dispatch records of ``records``, see docs/dispatch.md).

Shapes: N batch, C channels, H = W image side, p patch side, L = (H/p)² patches, L_keep kept patches,
D / Dd encoder / decoder width, heads H_a, tokens T, head width hd, m HSIC samples.

- ``patch_embed_visible(imgs, weight, bias, pos_embed, ids_keep)``: (N, C, H, W), (D, C, p, p), (D,), (L, D),
  (N, L_keep) int64 -> (N, L_keep, D): the encoder's tokens after MAE's random masking.
- ``decoder_unshuffle(x, mask_token, ids_restore, pos_embed)``: (N, 1 + L_keep, Dd), (Dd,), (N, L) int64,
  (1 + L, Dd) -> (N, 1 + L, Dd): the decoder's input, tokens back in patch order.
- ``masked_mse_loss(imgs, pred, mask, patch_size, norm_pix)``: (N, C, H, W), (N, L, p·p·C), (N, L) -> scalar.
- ``visible_attention(q, k, v)``: (N, H_a, T, hd) × 3 -> (N, H_a, T, hd), softmax(q kᵀ / √hd) v.
- ``hsic_gram(x, y, sigma)``: (m, dx), (m, dy) -> (2, m, m): both right-centred Gaussian kernel matrices.
- ``hsic_normalized_cca(x, y, sigma=5.0, ridge=1e-5)``: MIMIR's HSIC penalty; x (m, ...), y (m, ...) -> scalar.
- ``gaussian_kernel_centered(a, sigma)``: the right-centred Gaussian kernel matrix; a (m, d) -> (m, m).
"""

from .decoder_unshuffle import decoder_unshuffle, decoder_unshuffle_ref
from .hsic import gaussian_kernel_centered, hsic_normalized_cca
from .hsic_gram import hsic_gram, hsic_gram_ref
from .masked_mse_loss import masked_mse_loss, masked_mse_loss_ref
from .patch_embed_visible import patch_embed_visible, patch_embed_visible_ref
from .visible_attention import visible_attention, visible_attention_ref

__all__ = [
    "decoder_unshuffle",
    "decoder_unshuffle_ref",
    "gaussian_kernel_centered",
    "hsic_gram",
    "hsic_gram_ref",
    "hsic_normalized_cca",
    "masked_mse_loss",
    "masked_mse_loss_ref",
    "patch_embed_visible",
    "patch_embed_visible_ref",
    "visible_attention",
    "visible_attention_ref",
]
