"""Triton kernels for mimir_fast, installed as ``mimir_fast.kernels`` (an unrelated PyPI package owns ``kernels``).

One module per op, beside its reference, autograd registration and dispatch in ``mimir_fast/ops/<op>.py``:

- ``patch_embed_visible``: patch embedding of the kept patches only, + bias + positions (MAE encoder input);
- ``decoder_unshuffle``: visible tokens back in place, mask tokens, decoder positions (MAE decoder input);
- ``masked_mse_loss``: MAE's (norm-pix) loss on the removed patches, read straight from the images;
- ``visible_attention``: flash attention, forward and backward, on the fixed-length visible token set;
- ``hsic_gram``: both centred Gaussian kernel matrices of MIMIR's HSIC in one launch (split-K, symmetric tiles).

Importing this package imports nothing: ``mimir_fast.ops`` imports each kernel module lazily, the first time
its kernel runs, so the package works without triton and without a GPU.
"""
