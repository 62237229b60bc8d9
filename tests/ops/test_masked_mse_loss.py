"""masked_mse_loss: the fused Triton loss against the model's own patchify + norm_pix + masked-mean path.

The loss and the gradients of pred and imgs are compared with the reference in float64 (the truth) within twice
the error of the reference at the test dtype (tests/ops/_testing.py). The loss's upstream gradient is K·Σmask,
so the gradients are O(1) and the comparison is not swallowed by the absolute floor. Every pixel of the image
gradient must be written (outputs start as NaN). Without a GPU the kernels run in Triton's CPU interpreter; the
kernel computes in fp32 after loading, so its bf16 cases run there too. The reference itself is checked against
an independent re-derivation (``F.unfold`` patches, explicit mean and unbiased variance).
"""

import pytest
import torch
import torch.nn.functional as F

from mimir_fast.models_mae import MaskedAutoencoderViT, masking_indices
from mimir_fast.ops._dispatch import KernelUnavailable
from mimir_fast.ops.masked_mse_loss import masked_mse_loss, masked_mse_loss_ref
from tests.ops._testing import FLOOR, assert_close, assert_equal, max_err

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
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16"),
          pytest.param(torch.bfloat16, id="bf16")]
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


def loss_rederived(imgs, pred, mask, p, norm_pix):
    """MAE's loss derived independently of the reference: patches from ``F.unfold`` ((c, i, j) rows, reordered
    to patchify's (i, j, c)), explicit mean and unbiased variance, per-patch mean, weighted mean."""
    n, c = imgs.shape[:2]
    cols = F.unfold(imgs, kernel_size=p, stride=p)  # (N, C·p·p, L)
    t = cols.reshape(n, c, p * p, -1).permute(0, 3, 2, 1).reshape(n, cols.shape[-1], p * p * c)
    k = t.shape[-1]
    if norm_pix:
        mu = t.sum(-1, keepdim=True) / k
        var = ((t - mu) ** 2).sum(-1, keepdim=True) / (k - 1)
        t = (t - mu) / torch.sqrt(var + 1e-6)
    per_patch = ((pred - t) ** 2).sum(-1) / k
    return (per_patch * mask).sum() / mask.sum()


@pytest.mark.parametrize("norm_pix", NORM)
@pytest.mark.parametrize("n, c, gh, gw, p, mask_kind", SHAPES[:4])
def test_reference_matches_rederivation(n, c, gh, gw, p, mask_kind, norm_pix):
    """In float64 the reference and the re-derivation agree to float64's rounding, gradients included."""
    imgs, pred, mask = make_inputs(n, c, gh, gw, p, mask_kind, torch.device("cpu"), torch.float64)
    ref, ref_grads = run(imgs, pred, mask.double(), p, norm_pix, fn=masked_mse_loss_ref)
    new, new_grads = run(imgs, pred, mask.double(), p, norm_pix, fn=loss_rederived)
    for name, a, b in zip(["loss", "dimgs", "dpred"], [ref, *ref_grads], [new, *new_grads]):
        assert max_err(a, b) <= FLOOR[torch.float64] * max(1.0, b.abs().max().item()), name


@pytest.mark.parametrize("norm_pix", NORM)
def test_model_forward_loss(monkeypatch, kernel_device, norm_pix):
    """The model's forward_loss through the kernel, with pred as the decoder makes it (the strided view
    ``x[:, 1:, :]``), against the re-derivation in float64; gradients of pred and the images included."""
    model = MaskedAutoencoderViT(img_size=12, patch_size=4, in_chans=3, embed_dim=24, depth=1, num_heads=2,
                                 decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2,
                                 norm_pix_loss=norm_pix).to(kernel_device)
    imgs, _, mask = make_inputs(3, 3, 3, 3, 4, "mae", kernel_device, torch.float32)
    decoded = torch.randn(3, 10, 48, device=kernel_device, requires_grad=True)  # CLS row + 9 patches
    pred = decoded[:, 1:, :]
    truth, truth_grads = run(imgs, pred, mask, 4, norm_pix, fn=loss_rederived, cast=torch.float64)
    lowp, lowp_grads = run(imgs, pred, mask, 4, norm_pix, fn=masked_mse_loss_ref)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    tri, tri_grads = run(imgs, pred, mask, 4, norm_pix, fn=lambda i, q, m, p, n: model.forward_loss(i, q, m))
    for name, t, r, lp in zip(["loss", "dimgs", "dpred"], [truth, *truth_grads], [tri, *tri_grads],
                              [lowp, *lowp_grads]):
        assert_close(name, t, r, lp, torch.float32)


def test_strided_pred_is_read_in_place(monkeypatch, kernel_device):
    """The decoder's pred ``x[:, 1:, :]`` reaches both kernels as that view (read through its strides), not a
    copy."""
    from mimir_fast.kernels import masked_mse_loss as kernels

    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    seen = []

    class Spy:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                seen.append(args[1].data_ptr())  # pred
                return self.kernel[grid](*args, **kwargs)

            return launch

    for name in ("_masked_mse_loss_fwd_kernel", "_masked_mse_loss_bwd_kernel"):
        monkeypatch.setattr(kernels, name, Spy(getattr(kernels, name)))
    imgs, _, mask = make_inputs(3, 3, 3, 3, 4, "mae", kernel_device, torch.float32)
    decoded = torch.randn(3, 10, 48, device=kernel_device, requires_grad=True)
    pred = decoded[:, 1:, :]
    loss = masked_mse_loss(imgs, pred, mask, 4, True)
    (d_decoded,) = torch.autograd.grad(loss, decoded)
    assert seen == [pred.data_ptr(), pred.data_ptr()]
    assert (d_decoded[:, 0] == 0).all() and torch.isfinite(d_decoded).all()


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
