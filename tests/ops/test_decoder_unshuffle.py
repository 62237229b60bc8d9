"""decoder_unshuffle: the fused Triton kernel against the model's own cat/gather/+pos decoder input.

The forward (one add per element, one rounding) and the x gradient (a permutation) must equal the reference
computed in the same dtype bit for bit; the mask-token and positional-embedding gradients (sums) are compared
with the float64 reference within twice the error of the reference at the test dtype (tests/ops/_testing.py).
Without a GPU the kernels run in Triton's CPU interpreter (small shapes).
"""

import pytest
import torch

from mimir_fast.models_mae import MaskedAutoencoderViT, masking_indices
from mimir_fast.ops._dispatch import KernelUnavailable
from mimir_fast.ops.decoder_unshuffle import decoder_unshuffle, decoder_unshuffle_ref
from tests.ops._testing import assert_close, assert_equal, enable_device_asserts

# (N, L, L_keep, Dd): L = 4..196 (MIMIR at 224/16), L_keep = L/4 and odd counts, none and all kept,
# Dd not a power of two (40, 200: two 128-column tiles when BD caps) and smaller than one 16-wide tile (8).
SHAPES = [
    pytest.param(1, 4, 1, 8, id="N1-L4-keep1-D8"),
    pytest.param(3, 16, 4, 40, id="N3-L16-keep4-D40"),
    pytest.param(5, 16, 0, 8, id="N5-L16-keep0-D8"),
    pytest.param(3, 16, 16, 40, id="N3-L16-keep16-D40"),
    pytest.param(5, 49, 12, 8, id="N5-L49-keep12-D8"),
    pytest.param(3, 49, 13, 200, id="N3-L49-keep13-D200"),
    pytest.param(1, 64, 16, 128, id="N1-L64-keep16-D128"),
    pytest.param(5, 64, 33, 40, id="N5-L64-keep33-D40"),
    pytest.param(3, 196, 49, 128, id="N3-L196-keep49-D128"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]
NAMES = ["dx", "dmask_token", "dpos"]


def make_inputs(n, length, l_keep, dd, device, dtype, mask_dtype=None, pos_dtype=None):
    """x, mask_token, pos_embed (leaves needing gradients) and MAE's ids_restore for one shape."""
    x = torch.randn(n, 1 + l_keep, dd, device=device).to(dtype)
    mask_token = torch.randn(dd, device=device).to(mask_dtype or dtype)
    pos = torch.randn(1 + length, dd, device=device).to(pos_dtype or dtype)
    _, ids_restore, _ = masking_indices(torch.rand(n, length, device=device), l_keep)
    return [t.requires_grad_() for t in (x, mask_token, pos)], ids_restore


def run(leaves, ids_restore, grad_out, fn=decoder_unshuffle, cast=None):
    """Output and the gradients of every leaf, optionally on copies of the leaves cast to ``cast``."""
    if cast is not None:
        leaves = [t.detach().to(cast).requires_grad_() for t in leaves]
    x, mask_token, pos = leaves
    out = fn(x, mask_token, ids_restore, pos)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return out, grads


def check(monkeypatch, leaves, ids_restore, dtype):
    """Kernel vs reference: forward and dx bit-exact at the inputs' dtypes, reductions within the rule."""
    n, length = ids_restore.shape
    grad_out = torch.randn(n, 1 + length, leaves[0].shape[-1], device=ids_restore.device)
    _, truth_grads = run(leaves, ids_restore, grad_out, fn=decoder_unshuffle_ref, cast=torch.float64)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    lowp, lowp_grads = run(leaves, ids_restore, grad_out)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    tri, tri_grads = run(leaves, ids_restore, grad_out)

    assert tri.dtype == lowp.dtype
    assert_equal("out", lowp, tri)
    assert_equal("dx", lowp_grads[0], tri_grads[0])
    for name, leaf, t, r, lp in zip(NAMES[1:], leaves[1:], truth_grads[1:], tri_grads[1:], lowp_grads[1:]):
        assert r.dtype == leaf.dtype, name
        assert_close(name, t, r, lp, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, length, l_keep, dd", SHAPES)
def test_forward_backward(monkeypatch, kernel_device, n, length, l_keep, dd, dtype):
    leaves, ids_restore = make_inputs(n, length, l_keep, dd, kernel_device, dtype)
    check(monkeypatch, leaves, ids_restore, dtype)


MIXED = [
    pytest.param(torch.float32, torch.float32, id="fp32-mask_token-fp32-pos"),
    pytest.param(torch.float16, torch.float32, id="fp16-mask_token-fp32-pos"),
]


@pytest.mark.parametrize("mask_dtype, pos_dtype", MIXED)
def test_mixed_dtypes(monkeypatch, kernel_device, mask_dtype, pos_dtype):
    """Autocast's case: an fp16 latent with fp32 parameters gives fp32 tokens, as the reference promotes."""
    leaves, ids_restore = make_inputs(3, 16, 5, 40, kernel_device, torch.float16, mask_dtype, pos_dtype)
    check(monkeypatch, leaves, ids_restore, torch.float16)


def test_matches_model_forward_decoder(monkeypatch, kernel_device):
    """The model's own forward_decoder input (cat, gather, + decoder_pos_embed), with its parameters."""
    model = MaskedAutoencoderViT(img_size=16, patch_size=2, in_chans=3, embed_dim=24, depth=1, num_heads=2,
                                 decoder_embed_dim=40, decoder_depth=1, decoder_num_heads=2).to(kernel_device)
    length = model.patch_embed.num_patches
    _, ids_restore, _ = masking_indices(torch.rand(3, length, device=kernel_device), 13)
    latent = torch.randn(3, 14, 24, device=kernel_device)
    with torch.no_grad():  # forward_decoder up to the blocks, verbatim
        x = model.decoder_embed(latent)
        n, t, dd = x.shape
        mask_tokens = model.mask_token.expand(n, length + 1 - t, -1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dd))
        expected = torch.cat([x[:, :1, :], x_], dim=1) + model.decoder_pos_embed
        args = (x, model.mask_token.view(-1), ids_restore, model.decoder_pos_embed[0])
        for mode in ("torch", "triton"):
            monkeypatch.setenv("MIMIR_FAST_KERNELS", mode)
            assert_equal(f"{mode} vs model", expected, decoder_unshuffle(*args))


def test_only_needed_gradients_run(monkeypatch, kernel_device):
    """A frozen pos_embed (MAE's) is not reduced; MIMIR's attack (latent only) reduces nothing."""
    from mimir_fast.kernels import decoder_unshuffle as kernels

    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    (x, mask_token, pos), ids_restore = make_inputs(3, 16, 4, 40, kernel_device, torch.float32)
    needs = []
    launcher = kernels.decoder_unshuffle_bwd
    monkeypatch.setattr(kernels, "decoder_unshuffle_bwd", lambda *a: needs.append(a[-3:]) or launcher(*a))

    out = decoder_unshuffle(x, mask_token, ids_restore, pos.detach())
    dx, dmask = torch.autograd.grad(out.sum(), [x, mask_token])
    assert needs == [(True, True, False)] and torch.isfinite(dx).all() and torch.isfinite(dmask).all()
    needs.clear()
    out = decoder_unshuffle(x, mask_token.detach(), ids_restore, pos.detach())
    (dx,) = torch.autograd.grad(out.sum(), [x])
    assert needs == [(True, False, False)] and torch.isfinite(dx).all()


def test_opcheck(kernel_device):
    (x, mask_token, pos), ids_restore = make_inputs(3, 16, 4, 40, kernel_device, torch.float32)
    ops = torch.ops.mimir_fast
    torch.library.opcheck(ops.decoder_unshuffle_fwd.default, (x, mask_token, ids_restore, pos))
    g = torch.randn(3, 17, 40, device=kernel_device)
    f32 = torch.float32
    torch.library.opcheck(ops.decoder_unshuffle_bwd.default, (g, ids_restore, 4, f32, f32, f32, True, True, True))
    torch.library.opcheck(ops.decoder_unshuffle_bwd.default, (g, ids_restore, 4, f32, f32, f32, True, False, False))


@pytest.mark.parametrize("mode", ["auto", "torch"])
def test_cpu_dispatch_runs_the_reference(monkeypatch, mode):
    """On the CPU, ``auto`` and ``torch`` give the reference bit for bit, gradients included."""
    monkeypatch.setenv("MIMIR_FAST_KERNELS", mode)
    leaves, ids_restore = make_inputs(3, 16, 4, 40, torch.device("cpu"), torch.float32)
    grad_out = torch.randn(3, 17, 40)
    ref, ref_grads = run(leaves, ids_restore, grad_out, fn=decoder_unshuffle_ref)
    out, grads = run(leaves, ids_restore, grad_out)
    assert_equal("out", ref, out)
    for name, r, g in zip(NAMES, ref_grads, grads):
        assert_equal(name, r, g)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a device-side assert ends the CUDA context; interpreter only")
def test_out_of_range_ids_restore_stop_the_kernel_in_debug(monkeypatch):
    """With TRITON_DEBUG=1 an index outside [0, L) is a device-side assert (else read as a mask token, or out of
    bounds when negative)."""
    from triton.runtime.errors import InterpreterError

    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    enable_device_asserts(monkeypatch)
    (x, mask_token, pos), ids_restore = make_inputs(3, 16, 4, 40, torch.device("cpu"), torch.float32)
    bad = ids_restore.clone()
    bad[1, 5] = 16  # L = 16
    with torch.no_grad(), pytest.raises(InterpreterError, match="ids_restore out of range"):
        decoder_unshuffle(x, mask_token, bad, pos)


def test_triton_rejects_unsupported(monkeypatch, kernel_device):
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    (x, mask_token, pos), ids_restore = make_inputs(1, 4, 1, 8, kernel_device, torch.float64)
    with pytest.raises(KernelUnavailable, match="decoder_unshuffle"):
        decoder_unshuffle(x, mask_token, ids_restore, pos)
    with pytest.raises(ValueError, match="pos_embed"):
        decoder_unshuffle(x, mask_token, ids_restore, pos[1:])


@pytest.mark.gpu
@pytest.mark.parametrize("n, length, l_keep, dd", SHAPES)
def test_bf16_gpu(monkeypatch, n, length, l_keep, dd):
    leaves, ids_restore = make_inputs(n, length, l_keep, dd, torch.device("cuda"), torch.bfloat16)
    check(monkeypatch, leaves, ids_restore, torch.bfloat16)
