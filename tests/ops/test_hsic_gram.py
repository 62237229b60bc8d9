"""hsic_gram: the split-K Triton kernels against ``gaussian_kernel_centered`` of both variables, and the dispatch.

The kernel computes in float32 whatever the input dtype (as ``hsic_normalized_cca`` does), so PyTorch's own
low-precision error is that of the float32 reference on the same (possibly fp16-rounded) inputs: every check
is ``_testing.assert_close`` against the reference in float64 on those inputs (truth), within twice the
float32 reference's error. Gradients in fp16 are rounded to fp16 like the reference's. Without a GPU the
kernels run in Triton's CPU interpreter (small shapes; the (dx, dy) widths still span several K-chunks).
"""

import pytest
import torch

from mimir_fast.ops import hsic_normalized_cca
from mimir_fast.ops._dispatch import KernelUnavailable
from mimir_fast.ops.hsic_gram import MAX_D, hsic_gram, hsic_gram_ref
from tests.ops._testing import assert_close, assert_equal
from tests.ops.test_hsic import hsic_fp64

# (m, dx, dy, σ): m from the range, irregular widths, 3·16·16 and 3·32·32 pixels for split-K,
# |z| = D/2σ²d on both sides of the expm1 branch point (σ = 1: ≈ 1 for the latents; σ = 5: ≈ 0.04).
SHAPES = [
    pytest.param(2, 50, 131, 5.0, id="m2-dx50-dy131-s5"),
    pytest.param(3, 131, 50, 1.0, id="m3-dx131-dy50-s1"),
    pytest.param(17, 50, 768, 5.0, id="m17-dx50-dy768-s5"),
    pytest.param(17, 768, 131, 1.0, id="m17-dx768-dy131-s1"),
    pytest.param(33, 131, 3072, 5.0, id="m33-dx131-dy3072-s5"),
    pytest.param(33, 3072, 50, 1.0, id="m33-dx3072-dy50-s1"),
]
DTYPES = [pytest.param(torch.float32, id="fp32"), pytest.param(torch.float16, id="fp16")]


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """IEEE fp32 matmuls in the reference and (the kernel follows the same setting) in the kernel."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(old)


def assert_close_at_scale(name, truth, tri, ref_lowp, dtype):
    """``assert_close`` on the tensors divided by a power of two near ``max |truth|``: its rounding floor
    (``FLOOR[dtype] · max(1, max |truth|)``) then applies at the tensor's own magnitude. The centered kernels
    are ≪ 1 for wide bandwidths (≈ 1e-3 at σ = 5), where a floor at 1 would hide every digit exp − 1 loses."""
    scale = 2.0 ** torch.frexp(truth.double().abs().max().clamp_min(1e-300))[1].item()  # exact division
    assert_close(name, truth.double() / scale, tri.double() / scale, ref_lowp.double() / scale, dtype)


def make_inputs(m, dx, dy, device, dtype):
    """A latent-like x ~ N(0, 1) and a pixel-like y ~ U[0, 1), rounded to ``dtype``, both leaves."""
    x = torch.randn(m, dx, device=device).to(dtype).requires_grad_()
    y = torch.rand(m, dy, device=device).to(dtype).requires_grad_()
    return x, y


def run(fn, x, y, sigma, grad_out, cast=None):
    """Output and (dx, dy) of ``fn``, optionally on copies of the inputs cast to ``cast``."""
    if cast is not None:
        x, y = (t.detach().to(cast).requires_grad_() for t in (x, y))
    out = fn(x, y, sigma)
    return out, torch.autograd.grad(out, (x, y), grad_out.to(out.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, dx, dy, sigma", SHAPES)
def test_forward_backward(monkeypatch, kernel_device, m, dx, dy, sigma, dtype):
    x, y = make_inputs(m, dx, dy, kernel_device, dtype)
    grad_out = torch.randn(2, m, m, device=kernel_device)
    truth, truth_grads = run(hsic_gram_ref, x, y, sigma, grad_out, cast=torch.float64)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    lowp, lowp_grads = run(hsic_gram, x, y, sigma, grad_out)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    tri, tri_grads = run(hsic_gram, x, y, sigma, grad_out)

    assert tri.dtype == torch.float32 and tri.shape == (2, m, m)
    assert_close_at_scale("out", truth, tri, lowp, torch.float32)
    for name, t, r, lp in zip(["dx", "dy"], truth_grads, tri_grads, lowp_grads):
        assert r.dtype == dtype, name
        assert_close_at_scale(name, t, r, lp, dtype)


def test_lower_triangle_is_mirrored_exactly(kernel_device):
    """m = 70 spans 2 × 2 tiles of 64 (3 computed, 1 mirrored). The uncentered part is symmetric bit for bit,
    its diagonal is exactly 0, the centered rows sum to 0, and the splits do not change the result."""
    from mimir_fast.kernels import hsic_gram as kernels

    x, y = (t.detach() for t in make_inputs(70, 40, 300, kernel_device, torch.float32))
    out, r = kernels.hsic_gram_fwd(x, y, 5.0)
    assert_equal("r mirrored", r.mT, r)
    assert_equal("r diagonal", torch.zeros(2, 70, device=kernel_device), r.diagonal(dim1=1, dim2=2))
    truth, lowp = hsic_gram_ref(x.double(), y.double(), 5.0), hsic_gram_ref(x, y, 5.0)
    assert_close_at_scale("out", truth, out, lowp, torch.float32)
    scale = 2.0 ** torch.frexp(truth.abs().max())[1].item()  # centered rows sum to 0, at the entries' scale
    assert_close("row sums", truth.sum(-1) / scale, out.sum(-1) / scale, lowp.sum(-1) / scale, torch.float32)
    again, _ = kernels.hsic_gram_fwd(x, y, 5.0)
    assert_equal("deterministic", out, again)
    bk = kernels.INTERPRETER_BK if kernel_device.type == "cpu" else 32
    one_split, _ = kernels.hsic_gram_fwd(x, y, 5.0, chunk=bk * 100)  # one chunk per variable
    many_splits, _ = kernels.hsic_gram_fwd(x, y, 5.0, chunk=bk)  # 1 + 2 chunks (interpreter), 2 + 10 (GPU)
    assert_close_at_scale("one split", truth, one_split, lowp, torch.float32)
    assert_close_at_scale("many splits", truth, many_splits, lowp, torch.float32)


def test_expm1_accuracy(kernel_device):
    """The kernels' expm1 on z ≤ 0 (|z| from 1e-9 to 100, densely over every reduction interval up to 10):
    relative error within twice torch.expm1's in float32 plus 4 ulp, where exp(z) − 1 loses every digit."""
    from mimir_fast.kernels import hsic_gram as kernels

    z = -torch.cat([torch.logspace(-9, 2, 2000), torch.linspace(0, 10, 20001)]).to(kernel_device)
    truth = torch.expm1(z.double())
    scale = truth.abs().clamp_min(1e-300)

    def rel(e):
        return ((e.double() - truth).abs() / scale).max().item()

    ours, torch32 = rel(kernels.expm1(z)), rel(torch.expm1(z))
    assert ours <= 2 * torch32 + 4 * torch.finfo(torch.float32).eps, (ours, torch32)
    assert rel(torch.exp(z) - 1) > 1e3 * max(ours, torch.finfo(torch.float32).eps)  # what expm1 is for
    nan = kernels.expm1(torch.tensor([float("nan"), -float("inf")], device=kernel_device))
    assert nan[0].isnan() and nan[1] == -1


@pytest.mark.parametrize("m, zshape, xshape", [pytest.param(5, (7,), (3, 4), id="m5"),
                                               pytest.param(17, (9, 13), (3, 8, 8), id="m17")])
def test_hsic_normalized_cca_with_the_kernel(monkeypatch, kernel_device, m, zshape, xshape):
    """HSIC value and latent gradient (the images need none, as in MIMIR) through the kernel, against the
    spec's formula re-derived in float64 (explicit distances, ``exp``, H matrix, inverses: tests/ops/test_hsic.py)
    within twice the error of ``hsic_normalized_cca``'s own float32 reference path."""
    z = torch.randn(m, *zshape, device=kernel_device, requires_grad=True)
    x = torch.rand(m, *xshape, device=kernel_device)
    z64 = z.detach().cpu().double().requires_grad_()
    truth = hsic_fp64(z64, x.cpu().double())
    (truth_grad,) = torch.autograd.grad(truth, z64)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    lowp = hsic_normalized_cca(z, x)
    (lowp_grad,) = torch.autograd.grad(lowp, z)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    tri = hsic_normalized_cca(z, x)
    (tri_grad,) = torch.autograd.grad(tri, z)
    assert_close("hsic", truth, tri.cpu(), lowp.cpu(), torch.float32)
    assert_close_at_scale("dz", truth_grad, tri_grad.cpu(), lowp_grad.cpu(), torch.float32)

    x_bad = x.clone()
    x_bad[1, 0, 0] = float("nan")  # non-finite pixels: 0 and an exactly zero latent gradient
    value = hsic_normalized_cca(z, x_bad)
    (grad,) = torch.autograd.grad(value, z)
    assert value.item() == 0.0 and (grad == 0).all()


def test_spec_sanity_magnitudes(monkeypatch, kernel_device):
    """mimir-spec.md §3 (tests/ops/test_hsic.py): m = 128, Gaussian Z (24 960 dims), uniform X (3 072 dims)."""
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    z = torch.randn(128, 65 * 384, device=kernel_device)
    x = torch.rand(128, 3 * 32 * 32, device=kernel_device)
    assert 84 < hsic_normalized_cca(z, x).item() < 92
    assert 115 < hsic_normalized_cca(z, z).item() <= 127


def test_traces_without_graph_breaks(monkeypatch, kernel_device):
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    x, y = make_inputs(5, 12, 20, kernel_device, torch.float32)
    compiled = torch.compile(hsic_gram, fullgraph=True, backend="aot_eager")
    grad_out = torch.randn(2, 5, 5, device=kernel_device)
    out, grads = run(compiled, x, y, 1.0, grad_out)
    ref, ref_grads = run(hsic_gram, x, y, 1.0, grad_out)
    assert_equal("out", ref, out)
    for name, r, g in zip(["dx", "dy"], ref_grads, grads):
        assert_equal(name, r, g)


def test_opcheck(kernel_device):
    x, y = make_inputs(5, 12, 20, kernel_device, torch.float32)
    ops = torch.ops.mimir_fast
    torch.library.opcheck(ops.hsic_gram_fwd.default, (x, y, 1.0))
    _, r = ops.hsic_gram_fwd(x.detach(), y.detach(), 1.0)
    grad = torch.randn(2, 5, 5, device=kernel_device)
    for need in [(True, True), (True, False), (False, True)]:
        torch.library.opcheck(ops.hsic_gram_bwd.default, (grad, r, x.detach(), y.detach(), 1.0, *need))


@pytest.mark.parametrize("mode", ["auto", "torch"])
def test_cpu_dispatch_runs_the_reference(monkeypatch, mode):
    """On the CPU, ``auto`` and ``torch`` give the reference bit for bit, gradients included."""
    monkeypatch.setenv("MIMIR_FAST_KERNELS", mode)
    x, y = make_inputs(6, 10, 12, torch.device("cpu"), torch.float32)
    grad_out = torch.randn(2, 6, 6)
    ref, ref_grads = run(hsic_gram_ref, x, y, 5.0, grad_out)
    out, grads = run(hsic_gram, x, y, 5.0, grad_out)
    assert_equal("out", ref, out)
    for name, r, g in zip(["dx", "dy"], ref_grads, grads):
        assert_equal(name, r, g)


def test_triton_rejects_unsupported(monkeypatch, kernel_device):
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    x, y = make_inputs(4, 6, 8, kernel_device, torch.float64)
    with pytest.raises(KernelUnavailable, match="hsic_gram"):
        hsic_gram(x, y, 5.0)
    with pytest.raises(ValueError, match="expected x"):
        hsic_gram(x.float()[:3], y.float(), 5.0)


def test_triton_rejects_too_wide_variables(monkeypatch):
    """A width beyond MAX_D (2³¹ − 1 columns, shapes only: fake tensors) is not the kernel's."""
    from mimir_fast.kernels import hsic_gram as kernels
    from torch._subclasses.fake_tensor import FakeTensorMode

    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    with FakeTensorMode():
        x, y = torch.empty(2, MAX_D + 1, dtype=torch.float16), torch.empty(2, 8, dtype=torch.float16)
        with pytest.raises(KernelUnavailable, match="d ≤"):
            hsic_gram(x, y, 5.0)
        with pytest.raises(ValueError, match="d ≤"):
            kernels.hsic_gram_fwd(y, x, 5.0)


@pytest.mark.gpu
class TestGPU:
    @pytest.mark.parametrize("m, dx, dy, sigma", SHAPES + [
        pytest.param(128, 65 * 384, 3 * 32 * 32, 5.0, id="m128-cifar-vit-s"),
        pytest.param(256, 50 * 768, 3 * 112 * 112, 5.0, id="m256-vit-b-px112"),
    ])
    def test_bf16(self, monkeypatch, m, dx, dy, sigma):
        x, y = make_inputs(m, dx, dy, torch.device("cuda"), torch.bfloat16)
        grad_out = torch.randn(2, m, m, device="cuda")
        truth, truth_grads = run(hsic_gram_ref, x, y, sigma, grad_out, cast=torch.float64)
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
        lowp, lowp_grads = run(hsic_gram, x, y, sigma, grad_out)
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
        tri, tri_grads = run(hsic_gram, x, y, sigma, grad_out)
        assert_close_at_scale("out", truth, tri, lowp, torch.float32)
        for name, t, r, lp in zip(["dx", "dy"], truth_grads, tri_grads, lowp_grads):
            assert_close_at_scale(name, t, r, lp, torch.bfloat16)

    def test_fp32_large(self, monkeypatch):
        """The issue's largest y width (3·224·224) in fp32, m = 64, against the float64 reference."""
        x, y = make_inputs(64, 50 * 768, 3 * 224 * 224, torch.device("cuda"), torch.float32)
        grad_out = torch.randn(2, 64, 64, device="cuda")
        truth, truth_grads = run(hsic_gram_ref, x, y, 5.0, grad_out, cast=torch.float64)
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
        lowp, lowp_grads = run(hsic_gram, x, y, 5.0, grad_out)
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
        tri, tri_grads = run(hsic_gram, x, y, 5.0, grad_out)
        assert_close_at_scale("out", truth, tri, lowp, torch.float32)
        for name, t, r, lp in zip(["dx", "dy"], truth_grads, tri_grads, lowp_grads):
            assert_close_at_scale(name, t, r, lp, torch.float32)
