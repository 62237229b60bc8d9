"""masked_mse_loss: the fused Triton loss against the model's own patchify + norm_pix + masked-mean path.

The loss and the gradients of pred and imgs are compared with the reference in float64 (the truth) within twice
the error of the reference at the test dtype (tests/ops/_testing.py). The loss's upstream gradient is K·Σmask,
so the gradients are O(1) and the comparison is not swallowed by the absolute floor. Every pixel of the image
gradient must be written (outputs start as NaN). Without a GPU the kernels run in Triton's CPU interpreter.
"""

import pytest
import torch

from mimir_fast.models_mae import MaskedAutoencoderViT, masking_indices
from mimir_fast.ops._dispatch import KernelUnavailable
from mimir_fast.ops.masked_mse_loss import masked_mse_loss, masked_mse_loss_ref
from tests.ops._testing import assert_close, assert_equal

# (N, C, grid rows, grid cols, p, mask): p = 2, 4, 8, 16 (K = p²C from 4 to 768), odd and rectangular grids;
# masks: MAE's (75% removed), random 0/1, non-binary weights in [0, 1).
SHAPES = [
    pytest.param(1, 3, 3, 3, 2, "mae", id="N1-C3-3x3-p2-mae"),
    pytest.param(3, 3, 5, 5, 2, "weights", id="N3-C3-5x5-p2-weights"),
    pytest.param(3, 1, 7, 7, 4, "binary", id="N3-C1-7x7-p4-binary"),
    pytest.param(1, 3, 3, 5, 4, "weights", id="N1-C3-3x5-p4-weights"),
    pytest.param(3, 3, 3, 3, 8, "binary", id="N3-C3-3x3-p8-binary"),
    pytest.param(1, 1, 5, 5, 8, "mae", id="N1-C1-5x5-p8-mae"),
    pytest.param(3, 3, 3, 3, 16, "mae", id="N3-C3-3x3-p16-mae"),
    pytest.param(1, 1, 3, 3, 16, "weights", id="N1-C1-3x3-p16-weights"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]
NORM = [pytest.param(False, id="plain"), pytest.param(True, id="norm_pix")]


def make_inputs(n, c, gh, gw, p, mask_kind, device, dtype, pred_dtype=None):
    """imgs and pred (leaves needing gradients) and an fp32 mask (the model's dtype) of the given kind."""
    length = gh * gw
    imgs = (0.5 + torch.randn(n, c, gh * p, gw * p, device=device)).to(dtype).requires_grad_()
    pred = torch.randn(n, length, p * p * c, device=device).to(pred_dtype or dtype).requires_grad_()
    if mask_kind == "mae":
        _, _, mask = masking_indices(torch.rand(n, length, device=device), max(1, length // 4))
    elif mask_kind == "binary":
        mask = (torch.rand(n, length, device=device) < 0.5).float()
        mask[0, 0] = 1.0  # never all zero
    else:
        mask = torch.rand(n, length, device=device)
    return imgs, pred, mask


def run(imgs, pred, mask, p, norm_pix, fn=masked_mse_loss, cast=None):
    """The loss and the gradients of imgs and pred for an upstream gradient of K·Σmask."""
    if cast is not None:
        imgs, pred = (t.detach().to(cast).requires_grad_() for t in (imgs, pred))
        mask = mask.to(cast)
    loss = fn(imgs, pred, mask, p, norm_pix)
    scale = (pred.shape[-1] * mask.sum()).to(loss.dtype)
    return loss, torch.autograd.grad(loss, [imgs, pred], scale)


def check(monkeypatch, imgs, pred, mask, p, norm_pix, dtype):
    truth, truth_grads = run(imgs, pred, mask, p, norm_pix, fn=masked_mse_loss_ref, cast=torch.float64)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    lowp, lowp_grads = run(imgs, pred, mask, p, norm_pix)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    tri, tri_grads = run(imgs, pred, mask, p, norm_pix)

    assert tri.dtype == torch.float32 and tri.shape == ()
    assert_close("loss", truth, tri, lowp, dtype)
    for name, leaf, t, r, lp in zip(["dimgs", "dpred"], [imgs, pred], truth_grads, tri_grads, lowp_grads):
        assert r.dtype == leaf.dtype, name
        assert_close(name, t, r, lp, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm_pix", NORM)
@pytest.mark.parametrize("n, c, gh, gw, p, mask_kind", SHAPES)
def test_forward_backward(monkeypatch, kernel_device, n, c, gh, gw, p, mask_kind, norm_pix, dtype):
    imgs, pred, mask = make_inputs(n, c, gh, gw, p, mask_kind, kernel_device, dtype)
    check(monkeypatch, imgs, pred, mask, p, norm_pix, dtype)


@pytest.mark.parametrize("norm_pix", NORM)
def test_mixed_dtypes(monkeypatch, kernel_device, norm_pix):
    """Autocast's case: fp16 predictions (the decoder's output) against fp32 images."""
    imgs, pred, mask = make_inputs(3, 3, 3, 3, 4, "mae", kernel_device, torch.float32, pred_dtype=torch.float16)
    check(monkeypatch, imgs, pred, mask, 4, norm_pix, torch.float16)


def test_zero_weight_patches_get_zero_gradients(monkeypatch, kernel_device):
    """Kept (weight 0) patches contribute nothing: their pred and pixel gradients are exact zeros."""
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    imgs, pred, mask = make_inputs(3, 3, 3, 3, 4, "mae", kernel_device, torch.float32)
    _, (d_imgs, d_pred) = run(imgs, pred, mask, 4, True)
    kept = mask == 0
    assert_equal("dpred on kept patches", torch.zeros_like(d_pred[kept]), d_pred[kept])
    pixels = kept.reshape(3, 1, 3, 1, 3, 1).expand(3, 3, 3, 4, 3, 4).reshape(3, 3, 12, 12)
    assert_equal("dimgs on kept patches", torch.zeros_like(d_imgs[pixels]), d_imgs[pixels])


@pytest.mark.parametrize("norm_pix", NORM)
def test_matches_model_forward_loss(monkeypatch, kernel_device, norm_pix):
    """The model's own forward_loss (patchify, norm_pix_loss, masked mean) with its mask."""
    model = MaskedAutoencoderViT(img_size=12, patch_size=4, in_chans=3, embed_dim=24, depth=1, num_heads=2,
                                 decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                                 norm_pix_loss=norm_pix).to(kernel_device)
    imgs, pred, mask = make_inputs(3, 3, 3, 3, 4, "mae", kernel_device, torch.float32)
    with torch.no_grad():
        expected = model.forward_loss(imgs, pred, mask)
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
        assert_equal("reference vs model", expected, masked_mse_loss(imgs, pred, mask, 4, norm_pix))
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
        tri = masked_mse_loss(imgs, pred, mask, 4, norm_pix)
        truth = masked_mse_loss_ref(imgs.double(), pred.double(), mask.double(), 4, norm_pix)
    assert_close("kernel vs model", truth, tri, expected, torch.float32)


def test_only_needed_gradients_run(monkeypatch, kernel_device):
    """MIMIR's attack asks for the image gradient only; MAE training for the prediction's only."""
    from mimir_fast.kernels import masked_mse_loss as kernels

    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    imgs, pred, mask = make_inputs(3, 3, 3, 3, 2, "mae", kernel_device, torch.float32)
    needs = []
    launcher = kernels.masked_mse_loss_bwd
    monkeypatch.setattr(kernels, "masked_mse_loss_bwd", lambda *a: needs.append(a[-2:]) or launcher(*a))

    (d_imgs,) = torch.autograd.grad(masked_mse_loss(imgs, pred.detach(), mask, 2, True), [imgs])
    assert needs == [(True, False)] and torch.isfinite(d_imgs).all()
    needs.clear()
    (d_pred,) = torch.autograd.grad(masked_mse_loss(imgs.detach(), pred, mask, 2, True), [pred])
    assert needs == [(False, True)] and torch.isfinite(d_pred).all()


def test_opcheck(kernel_device):
    imgs, pred, mask = make_inputs(3, 3, 3, 3, 2, "weights", kernel_device, torch.float32)
    ops = torch.ops.mimir_fast
    for norm_pix in (False, True):
        torch.library.opcheck(ops.masked_mse_loss_fwd.default, (imgs, pred, mask, 2, norm_pix))
    g, msum = torch.tensor(1.5, device=kernel_device), mask.sum()
    args = (g, imgs.detach(), pred.detach(), mask, msum, 2, True)
    torch.library.opcheck(ops.masked_mse_loss_bwd.default, (*args, True, True))
    torch.library.opcheck(ops.masked_mse_loss_bwd.default, (*args, True, False))


@pytest.mark.parametrize("mode", ["auto", "torch"])
def test_cpu_dispatch_runs_the_reference(monkeypatch, mode):
    """On the CPU, ``auto`` and ``torch`` give the reference bit for bit, gradients included."""
    monkeypatch.setenv("MIMIR_FAST_KERNELS", mode)
    imgs, pred, mask = make_inputs(3, 3, 3, 3, 4, "mae", torch.device("cpu"), torch.float32)
    ref, ref_grads = run(imgs, pred, mask, 4, True, fn=masked_mse_loss_ref)
    out, grads = run(imgs, pred, mask, 4, True)
    assert_equal("loss", ref, out)
    for name, r, g in zip(["dimgs", "dpred"], ref_grads, grads):
        assert_equal(name, r, g)


def test_triton_rejects_unsupported(monkeypatch, kernel_device):
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    imgs, pred, mask = make_inputs(1, 3, 3, 3, 2, "mae", kernel_device, torch.float64)
    with pytest.raises(KernelUnavailable, match="masked_mse_loss"):
        masked_mse_loss(imgs, pred, mask, 2)
    with pytest.raises(ValueError, match="pred"):
        masked_mse_loss(imgs.float(), pred[:, 1:].float(), mask.float(), 2)
    with pytest.raises(ValueError, match="grid"):
        masked_mse_loss(imgs.float(), pred.float(), mask.float(), 4)


@pytest.mark.gpu
@pytest.mark.parametrize("norm_pix", NORM)
@pytest.mark.parametrize("n, c, gh, gw, p, mask_kind", SHAPES)
def test_bf16_gpu(monkeypatch, n, c, gh, gw, p, mask_kind, norm_pix):
    imgs, pred, mask = make_inputs(n, c, gh, gw, p, mask_kind, torch.device("cuda"), torch.bfloat16)
    check(monkeypatch, imgs, pred, mask, p, norm_pix, torch.bfloat16)
