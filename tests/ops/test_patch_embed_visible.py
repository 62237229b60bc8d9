"""patch_embed_visible: the fused Triton kernel against the model's own patch-embed + random_masking path.

The forward and every input gradient are compared with the reference in float64 (the truth) within twice the
error of the reference at the test dtype (tests/ops/_testing.py). Masked patches must get exactly zero image
gradient. Without a GPU the kernels run in Triton's CPU interpreter (small shapes).
"""

import pytest
import torch

from mimir_fast.models_mae import MaskedAutoencoderViT, masking_indices
from mimir_fast.ops._dispatch import KernelUnavailable
from mimir_fast.ops.patch_embed_visible import patch_embed_visible, patch_embed_visible_ref
from tests.ops._testing import assert_close, assert_equal, enable_device_asserts

# (N, C, image side, p, D, L_keep): p = 2, 4, 8, 16 (K = C·p² = 12, 16, 48, 192, 256, 768), D not powers of two,
# odd L_keep, rows spanning several 64-row tiles and D spanning two 128-column tiles.
SHAPES = [
    pytest.param(3, 3, 8, 2, 24, 7, id="N3-C3-p2-D24-keep7"),
    pytest.param(5, 3, 16, 2, 136, 17, id="N5-C3-p2-D136-keep17"),
    pytest.param(5, 1, 16, 4, 40, 5, id="N5-C1-p4-D40-keep5"),
    pytest.param(1, 3, 16, 4, 40, 11, id="N1-C3-p4-D40-keep11"),
    pytest.param(3, 3, 24, 8, 72, 5, id="N3-C3-p8-D72-keep5"),
    pytest.param(1, 3, 32, 16, 24, 3, id="N1-C3-p16-D24-keep3"),
    pytest.param(3, 1, 32, 16, 72, 1, id="N3-C1-p16-D72-keep1"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


@pytest.fixture(autouse=True)
def _ieee_fp32(monkeypatch):
    """fp32 reference convolutions (and so the kernel, which follows the same flag) without TF32 on a GPU."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def make_inputs(n, c, side, p, d, l_keep, device, dtype, pos_dtype=None):
    """imgs, weight, bias, pos_embed (all leaves needing gradients) and MAE ids_keep for one shape."""
    length = (side // p) ** 2
    imgs = torch.randn(n, c, side, side, device=device)
    weight = torch.randn(d, c, p, p, device=device) / (c * p * p) ** 0.5
    bias = 0.1 * torch.randn(d, device=device)
    pos = torch.randn(length, d, device=device)
    ids_keep, _, _ = masking_indices(torch.rand(n, length, device=device), l_keep)
    leaves = [imgs.to(dtype), weight.to(dtype), bias.to(dtype), pos.to(pos_dtype or dtype)]
    return [t.requires_grad_() for t in leaves], ids_keep


def run(leaves, ids_keep, grad_out, fn=patch_embed_visible, cast=None):
    """Output and the gradients of every leaf, optionally on copies of the leaves cast to ``cast``."""
    if cast is not None:
        leaves = [t.detach().to(cast).requires_grad_() for t in leaves]
    out = fn(*leaves, ids_keep)
    grads = torch.autograd.grad(out, leaves, grad_out.to(out.dtype))
    return out, grads


def kept_pixels(ids_keep, c, side, p):
    """(N, C, H, W) bool: the pixels of the kept patches."""
    n, g = ids_keep.shape[0], side // p
    kept = torch.zeros(n, g * g, dtype=torch.bool, device=ids_keep.device).scatter_(1, ids_keep, True)
    return kept.reshape(n, 1, g, 1, g, 1).expand(n, c, g, p, g, p).reshape(n, c, side, side)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, c, side, p, d, l_keep", SHAPES)
def test_forward_backward(monkeypatch, kernel_device, n, c, side, p, d, l_keep, dtype):
    leaves, ids_keep = make_inputs(n, c, side, p, d, l_keep, kernel_device, dtype)
    grad_out = torch.randn(n, l_keep, d, device=kernel_device)
    truth, truth_grads = run(leaves, ids_keep, grad_out, fn=patch_embed_visible_ref, cast=torch.float64)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    lowp, lowp_grads = run(leaves, ids_keep, grad_out)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    tri, tri_grads = run(leaves, ids_keep, grad_out)

    assert tri.dtype == dtype
    assert_close("out", truth, tri, lowp, dtype)
    for name, t, r, lp in zip(["dimgs", "dweight", "dbias", "dpos"], truth_grads, tri_grads, lowp_grads):
        assert r.dtype == dtype, name
        assert_close(name, t, r, lp, dtype)
    masked = ~kept_pixels(ids_keep, c, side, p)
    assert_equal("dimgs on masked patches", torch.zeros_like(tri_grads[0][masked]), tri_grads[0][masked])


def test_mixed_pos_dtype(monkeypatch, kernel_device):
    """fp16 conv inputs with an fp32 pos_embed give fp32 tokens, as the reference's type promotion does."""
    leaves, ids_keep = make_inputs(3, 3, 16, 4, 40, 5, kernel_device, torch.float16, pos_dtype=torch.float32)
    grad_out = torch.randn(3, 5, 40, device=kernel_device)
    truth, truth_grads = run(leaves, ids_keep, grad_out, fn=patch_embed_visible_ref, cast=torch.float64)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    lowp, lowp_grads = run(leaves, ids_keep, grad_out)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    tri, tri_grads = run(leaves, ids_keep, grad_out)
    assert tri.dtype == lowp.dtype == torch.float32
    assert_close("out", truth, tri, lowp, torch.float16)
    for name, t, r, lp in zip(["dimgs", "dweight", "dbias", "dpos"], truth_grads, tri_grads, lowp_grads):
        assert r.dtype == lp.dtype, name
        assert_close(name, t, r, lp, torch.float16)


def test_autocast(monkeypatch, kernel_device):
    """Under autocast the conv inputs are cast as F.conv2d casts them; fp32 pos_embed makes fp32 tokens."""
    amp = torch.bfloat16 if kernel_device.type == "cpu" else torch.float16  # the interpreter's bf16 stores truncate
    leaves, ids_keep = make_inputs(3, 3, 16, 4, 40, 5, kernel_device, torch.float32)
    grad_out = torch.randn(3, 5, 40, device=kernel_device)
    rounded = [t.detach().to(amp).to(torch.float32) for t in leaves[:3]] + [leaves[3].detach()]
    truth, truth_grads = run(rounded, ids_keep, grad_out, fn=patch_embed_visible_ref, cast=torch.float64)
    with torch.autocast(kernel_device.type, dtype=amp):
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
        lowp, lowp_grads = run(leaves, ids_keep, grad_out)
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
        tri, tri_grads = run(leaves, ids_keep, grad_out)
    assert tri.dtype == lowp.dtype == torch.float32
    assert_close("out", truth, tri, lowp, amp)
    for name, t, r, lp in zip(["dimgs", "dweight", "dbias", "dpos"], truth_grads, tri_grads, lowp_grads):
        assert_close(name, t, r, lp, amp)


@pytest.mark.parametrize("p, img_size", [pytest.param(2, 8, id="p2"), pytest.param(4, 16, id="p4")])
def test_matches_model_random_masking(monkeypatch, kernel_device, p, img_size):
    """The model's own forward_encoder tokens (patch_embed + pos_embed, random_masking with the same noise)."""
    model = MaskedAutoencoderViT(img_size=img_size, patch_size=p, in_chans=3, embed_dim=24, depth=1, num_heads=2,
                                 decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2).to(kernel_device)
    model.patch_embed.proj.bias.data.normal_()  # MAE initialises the bias to 0: make it count
    x = torch.randn(3, 3, img_size, img_size, device=kernel_device)
    length = model.patch_embed.num_patches
    noise = torch.rand(3, length, device=kernel_device)
    with torch.no_grad():
        tokens = model.patch_embed(x) + model.pos_embed[:, 1:, :]
        x_masked, _, _ = model.random_masking(tokens, 0.75, noise=noise)
    ids_keep, _, _ = masking_indices(noise, int(length * 0.25))
    args = (model.patch_embed.proj.weight, model.patch_embed.proj.bias, model.pos_embed[0, 1:], ids_keep)

    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    with torch.no_grad():
        assert_equal("reference vs model", x_masked, patch_embed_visible(x, *args))
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
        tri = patch_embed_visible(x, *args)
        truth = patch_embed_visible_ref(x.double(), *[a.double() for a in args[:3]], ids_keep)
    assert_close("kernel vs model", truth, tri, x_masked, torch.float32)


def test_only_needed_gradients_run(monkeypatch, kernel_device):
    """MIMIR's attack (imgs only) never runs the weight kernel; MAE training (params only) never the image one."""
    from mimir_fast.kernels import patch_embed_visible as kernels

    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    (imgs, weight, bias, pos), ids_keep = make_inputs(3, 3, 8, 2, 24, 5, kernel_device, torch.float32)
    called = []
    for name in ("patch_embed_visible_bwd_imgs", "patch_embed_visible_bwd_weight"):
        launcher = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, _f=launcher, _n=name: called.append(_n) or _f(*a))

    out = patch_embed_visible(imgs, weight.detach(), bias.detach(), pos.detach(), ids_keep)
    (d_imgs,) = torch.autograd.grad(out.sum(), [imgs])
    assert called == ["patch_embed_visible_bwd_imgs"] and not torch.isnan(d_imgs).any()
    called.clear()
    out = patch_embed_visible(imgs.detach(), weight, bias, pos.detach(), ids_keep)
    d_weight, d_bias = torch.autograd.grad(out.sum(), [weight, bias])
    assert called == ["patch_embed_visible_bwd_weight"]
    assert torch.isfinite(d_weight).all() and torch.isfinite(d_bias).all()


def test_opcheck(kernel_device):
    (imgs, weight, bias, pos), ids_keep = make_inputs(3, 3, 8, 2, 24, 5, kernel_device, torch.float32)
    ops = torch.ops.mimir_fast
    torch.library.opcheck(ops.patch_embed_visible_fwd.default, (imgs, weight, bias, pos, ids_keep))
    dy = torch.randn(3, 5, 24, device=kernel_device)
    torch.library.opcheck(ops.patch_embed_visible_bwd_imgs.default, (dy, weight.detach(), ids_keep, [3, 3, 8, 8]))
    torch.library.opcheck(ops.patch_embed_visible_bwd_weight.default, (dy, imgs.detach(), ids_keep, [24, 3, 2, 2]))


@pytest.mark.parametrize("mode", ["auto", "torch"])
def test_cpu_dispatch_runs_the_reference(monkeypatch, mode):
    """On the CPU, ``auto`` and ``torch`` give the reference bit for bit, gradients included."""
    monkeypatch.setenv("MIMIR_FAST_KERNELS", mode)
    leaves, ids_keep = make_inputs(3, 3, 16, 4, 40, 5, torch.device("cpu"), torch.float32)
    grad_out = torch.randn(3, 5, 40)
    ref, ref_grads = run(leaves, ids_keep, grad_out, fn=patch_embed_visible_ref)
    out, grads = run(leaves, ids_keep, grad_out)
    assert_equal("out", ref, out)
    for name, r, g in zip(["dimgs", "dweight", "dbias", "dpos"], ref_grads, grads):
        assert_equal(name, r, g)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a device-side assert ends the CUDA context; interpreter only")
def test_out_of_range_ids_keep_stop_the_kernel_in_debug(monkeypatch):
    """With TRITON_DEBUG=1 an index outside [0, L) is a device-side assert (else a silent out-of-bounds read)."""
    from triton.runtime.errors import InterpreterError

    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    enable_device_asserts(monkeypatch)
    leaves, ids_keep = make_inputs(3, 3, 8, 2, 24, 7, torch.device("cpu"), torch.float32)
    bad = ids_keep.clone()
    bad[0, 2] = 16  # L = 16 patches: reads sample 1's pixels without the check
    with torch.no_grad(), pytest.raises(InterpreterError, match="ids_keep out of range"):
        patch_embed_visible(*leaves, bad)


def test_triton_rejects_unsupported(monkeypatch, kernel_device):
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    leaves, ids_keep = make_inputs(1, 3, 8, 2, 24, 3, kernel_device, torch.float64)
    with pytest.raises(KernelUnavailable, match="patch_embed_visible"):
        patch_embed_visible(*leaves, ids_keep)
    with pytest.raises(ValueError, match="pos_embed"):
        patch_embed_visible(*leaves[:3], leaves[3][1:], ids_keep)


@pytest.mark.gpu
@pytest.mark.parametrize("n, c, side, p, d, l_keep", SHAPES)
def test_bf16_gpu(monkeypatch, n, c, side, p, d, l_keep):
    leaves, ids_keep = make_inputs(n, c, side, p, d, l_keep, torch.device("cuda"), torch.bfloat16)
    grad_out = torch.randn(n, l_keep, d, device="cuda")
    truth, truth_grads = run(leaves, ids_keep, grad_out, fn=patch_embed_visible_ref, cast=torch.float64)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    lowp, lowp_grads = run(leaves, ids_keep, grad_out)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    tri, tri_grads = run(leaves, ids_keep, grad_out)
    assert_close("out", truth, tri, lowp, torch.bfloat16)
    for name, t, r, lp in zip(["dimgs", "dweight", "dbias", "dpos"], truth_grads, tri_grads, lowp_grads):
        assert_close(name, t, r, lp, torch.bfloat16)
    masked = ~kept_pixels(ids_keep, c, side, p)
    assert_equal("dimgs on masked patches", torch.zeros_like(tri_grads[0][masked]), tri_grads[0][masked])
