"""hsic_normalized_cca against an fp64 re-derivation of mimir-spec.md §3, on fresh random inputs.

Tolerances are tied to float32's own error on this formula: the fp32 result may be at most twice as far
from the fp64 truth as the reference's own fp32 execution typically is (Gram trick, ``exp``, ``K·H``,
explicit inverses), plus a rounding floor of 4 ulp of the value.
"""

import statistics

import pytest
import torch

from mimir_fast.ops import gaussian_kernel_centered, hsic_normalized_cca


def hsic_fp64(x, y, sigma=5.0, eps=1e-5):
    """The spec's formula in float64, with explicit pairwise distances, H matrix and inverses."""
    m = x.shape[0]

    def centered_kernel(a):
        a = a.reshape(m, -1).double()
        d = a.shape[1]
        dist = torch.cdist(a, a, compute_mode="donot_use_mm_for_euclid_dist") ** 2  # exact differences
        k = torch.exp(-dist / (2 * sigma**2 * d))
        h = torch.eye(m, dtype=torch.float64) - torch.ones(m, m, dtype=torch.float64) / m
        return k @ h

    kx, ky = centered_kernel(x), centered_kernel(y)
    eye = torch.eye(m, dtype=torch.float64)
    rx = kx @ torch.inverse(kx + eps * m * eye)
    ry = ky @ torch.inverse(ky + eps * m * eye)
    return (rx * ry.T).sum()


def hsic_reference_fp32(x, y, sigma=5.0, eps=1e-5):
    """MIMIR's own execution in float32: Gram-trick distances, K·H by matmul, explicit inverses."""
    m = x.shape[0]

    def centered_kernel(a):
        a = a.reshape(m, -1).float()
        r = (a * a).sum(1).view(-1, 1)
        dist = (r - 2 * a @ a.T + r.T).abs()
        k = torch.exp(-dist / (2.0 * sigma * sigma * a.shape[1]))
        return k @ (torch.eye(m) - torch.ones(m, m) / m)

    kx, ky = centered_kernel(x), centered_kernel(y)
    rx = kx @ torch.inverse(kx + eps * m * torch.eye(m))
    ry = ky @ torch.inverse(ky + eps * m * torch.eye(m))
    return (rx * ry.T).sum()


SHAPES = [
    pytest.param(5, (7,), (3, 4), id="m5"),
    pytest.param(17, (9, 13), (3, 8, 8), id="m17"),
    pytest.param(33, (17, 40), (3, 5, 7), id="m33"),
    pytest.param(64, (17, 48), (3, 16, 16), id="m64"),
    pytest.param(128, (65, 384), (3, 32, 32), id="m128-cifar-vit-s"),
]


def _inputs(m, zshape, xshape, correlated):
    z = torch.randn(m, *zshape)  # a LayerNorm'd latent is roughly standard normal
    x = torch.rand(m, *xshape)  # pixels in [0, 1]
    if correlated:  # make the latent depend on the pixels, so the statistic is far from its null value
        proj = torch.randn(x[0].numel(), z[0].numel()) / x[0].numel() ** 0.5
        z = z * 0.3 + (x.reshape(m, -1) @ proj).reshape(z.shape)
    return z, x


@pytest.mark.parametrize("m,zshape,xshape", SHAPES)
@pytest.mark.parametrize("correlated", [False, True])
def test_value_matches_fp64_rederivation(m, zshape, xshape, correlated):
    """Over 4 fresh draws: our worst error ≤ 2 × the reference's typical (median) fp32 error + 4 ulp."""
    ours_errs, ref32_errs, floors = [], [], []
    for _ in range(4):
        z, x = _inputs(m, zshape, xshape, correlated)
        truth = hsic_fp64(z, x)
        ours = hsic_normalized_cca(z, x, sigma=5.0, ridge=1e-5)
        assert ours.dtype == torch.float32 and ours.shape == ()
        ours_errs.append((ours.double() - truth).abs().item())
        ref32_errs.append((hsic_reference_fp32(z, x).double() - truth).abs().item())
        floors.append(4 * torch.finfo(torch.float32).eps * truth.abs().item())
    assert max(ours_errs) <= 2 * statistics.median(ref32_errs) + max(floors), (ours_errs, ref32_errs)


@pytest.mark.parametrize("m,zshape,xshape", SHAPES[:4])
def test_gradients_match_fp64_rederivation(m, zshape, xshape):
    z, x = _inputs(m, zshape, xshape, correlated=True)
    z64 = z.double().requires_grad_(True)
    (g_truth,) = torch.autograd.grad(hsic_fp64(z64, x), z64)
    z32 = z.clone().requires_grad_(True)
    (g_ours,) = torch.autograd.grad(hsic_normalized_cca(z32, x), z32)
    z32r = z.clone().requires_grad_(True)
    (g_ref32,) = torch.autograd.grad(hsic_reference_fp32(z32r, x), z32r)

    def rel_rmse(g):
        return ((g.double() - g_truth).norm() / g_truth.norm()).item()

    assert rel_rmse(g_ours) <= 2 * rel_rmse(g_ref32) + 4 * torch.finfo(torch.float32).eps


def test_gradcheck_in_fp64():
    z = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    x = torch.rand(6, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: hsic_normalized_cca(a, b, sigma=1.0, ridge=1e-2), (z, x))


def test_magnitudes_match_the_spec_sanity_check():
    """mimir-spec.md §3: m = 128, Gaussian Z (24 960 dims), uniform X (3 072 dims): ≈ 88 independent, ≈ 119 for
    HSIC(Z, Z), which is at most m − 1."""
    z, x = _inputs(128, (65, 384), (3, 32, 32), correlated=False)
    independent = hsic_normalized_cca(z, x).item()
    self_hsic = hsic_normalized_cca(z, z).item()
    assert 84 < independent < 92
    assert 115 < self_hsic <= 127
    k = gaussian_kernel_centered(z.reshape(128, -1), 5.0) + 0  # centered rows sum to 0
    torch.testing.assert_close(k.sum(dim=1), torch.zeros(128), atol=1e-5, rtol=0)


def test_non_finite_inputs_give_zero_without_raising():
    z, x = torch.randn(9, 12, requires_grad=True), torch.rand(9, 3, 4, 4)
    x_bad = x.clone()
    x_bad[2, 0, 1, 1] = float("nan")
    value = hsic_normalized_cca(z, x_bad)
    assert value.item() == 0.0
    (grad,) = torch.autograd.grad(value, z)
    assert torch.isfinite(grad).all() and (grad == 0).all()  # a dropped term contributes no gradient
    z_inf = z.detach().clone()
    z_inf[0, 0] = float("inf")
    assert hsic_normalized_cca(z_inf, x).item() == 0.0


def test_identical_samples_are_finite():
    z = torch.ones(4, 10, requires_grad=True)  # K is all ones, K·H = 0
    value = hsic_normalized_cca(z, torch.rand(4, 5))
    assert value.item() == 0.0
    (grad,) = torch.autograd.grad(value, z)
    assert torch.isfinite(grad).all()


def test_half_precision_inputs_run_in_fp32_under_autocast():
    z = torch.randn(7, 3, 16).to(torch.bfloat16)
    x = torch.rand(7, 3, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = hsic_normalized_cca(z, x)
    assert value.dtype == torch.float32
    assert torch.equal(value, hsic_normalized_cca(z.float(), x))


def test_traces_without_graph_breaks():
    """fullgraph tracing fails on any host read (.item(), Python branching on values)."""
    compiled = torch.compile(hsic_normalized_cca, fullgraph=True, backend="eager")
    z, x = torch.randn(6, 10), torch.rand(6, 3, 2, 2)
    torch.testing.assert_close(compiled(z, x), hsic_normalized_cca(z, x))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="5 samples but y has 4"):
        hsic_normalized_cca(torch.randn(5, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        hsic_normalized_cca(torch.randn(1, 3), torch.randn(1, 3))


@pytest.mark.gpu
def test_cuda_has_no_host_sync_and_matches_cpu():
    z, x = torch.randn(64, 17, 48), torch.rand(64, 3, 16, 16)
    expected = hsic_normalized_cca(z, x)
    zc, xc = z.cuda().requires_grad_(True), x.cuda()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        value = hsic_normalized_cca(zc, xc)
        value.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(value.cpu(), expected, rtol=1e-4, atol=1e-4)
