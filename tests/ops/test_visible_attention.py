"""visible_attention: the Triton FlashAttention kernel against the explicit-math reference, and the dispatch.

Kernel tests run under ``MIMIR_FAST_KERNELS=triton`` on ``kernel_device`` (the CPU interpreter without a GPU):
forward and dq, dk, dv against ``visible_attention_ref`` in float64 (truth) within twice the reference's own
error at the test dtype (``_testing.assert_close``). Inputs are views of one permuted (N, T, 3, H, hd) tensor,
as the model makes them, unless a case says otherwise.
"""

import pytest
import torch
import torch.nn.functional as F

from mimir_fast.ops import _dispatch
from mimir_fast.ops._dispatch import KernelUnavailable
from mimir_fast.ops.visible_attention import (
    BACKENDS,
    _sdpa_with,
    shape_class,
    shape_of,
    visible_attention,
    visible_attention_ref,
)

from ._testing import assert_close


def _qkv(n, h, t, hd, dtype, device, layout="permuted", scale=1.0):
    """A (3, N, H, T, hd) tensor whose ``unbind(0)`` gives q, k, v in the requested memory layout."""
    if layout == "permuted":  # the model: qkv(x).reshape(N, T, 3, H, hd).permute(2, 0, 3, 1, 4)
        base = torch.randn(n, t, 3, h, hd, dtype=torch.float32).permute(2, 0, 3, 1, 4)
    elif layout == "contiguous":
        base = torch.randn(3, n, h, t, hd, dtype=torch.float32)
    elif layout == "hd_strided":  # the head dimension is not dense: the launcher must copy
        base = torch.randn(3, n, h, hd, t, dtype=torch.float32).transpose(-1, -2)
    else:
        raise ValueError(layout)
    out = (base * scale).to(device=device, dtype=dtype)  # .to keeps the strides of a dense view
    assert out.stride() == base.stride()
    return out


def _run(fn, qkv, do):
    """(o, dq, dk, dv) of ``fn`` on the q, k, v views of a fresh leaf with ``qkv``'s strides."""
    leaf = qkv.detach().clone().requires_grad_()
    q, k, v = leaf.unbind(0)
    o = fn(q, k, v)
    (g,) = torch.autograd.grad(o, leaf, do)
    return (o.detach(), *g.unbind(0))


def _grid_case(i, t, hd):
    n, h = [(1, 1), (3, 2), (2, 3), (3, 1), (1, 3)][i % 5]
    return pytest.param(n, h, t, hd, "permuted", 1.0, id=f"N{n}-H{h}-T{t}-hd{hd}")


CASES = [  # every T × hd of the issue, with batch and head counts cycling through small odd values
    _grid_case(i, t, hd) for i, (t, hd) in enumerate((t, hd) for t in (17, 50, 65) for hd in (8, 16, 40, 64, 72))
] + [
    pytest.param(1, 1, 17, 128, "permuted", 1.0, id="N1-H1-T17-hd128"),
    pytest.param(1, 2, 197, 8, "permuted", 1.0, id="N1-H2-T197-hd8-mimir-dec"),
    pytest.param(1, 1, 257, 8, "permuted", 1.0, id="N1-H1-T257-hd8-cifar-p2"),
    pytest.param(2, 1, 50, 40, "contiguous", 1.0, id="N2-H1-T50-hd40-contiguous"),
    pytest.param(1, 3, 17, 72, "hd_strided", 1.0, id="N1-H3-T17-hd72-hd-strided"),
    pytest.param(2, 1, 65, 16, "permuted", 4.0, id="N2-H1-T65-hd16-peaked"),  # scores of ±60: see the kernel
    pytest.param(3, 2, 50, 8, "permuted", 6.0, id="N3-H2-T50-hd8-peaked"),
]


def _check_against_reference(n, h, t, hd, layout, scale, dtype, device):
    qkv = _qkv(n, h, t, hd, dtype, device, layout, scale)
    do = torch.randn(n, h, t, hd, dtype=torch.float32).to(device=device, dtype=dtype)
    truth = _run(visible_attention_ref, qkv.double(), do.double())
    ref_lowp = _run(visible_attention_ref, qkv, do)
    tri = _run(visible_attention, qkv, do)
    assert tri[0].transpose(1, 2).is_contiguous(), "the kernel's o is an (N, T, H, hd) buffer: did it run?"
    for name, a, b, c in zip(("o", "dq", "dk", "dv"), truth, tri, ref_lowp):
        assert b.dtype == dtype
        assert_close(name, a, b, c, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("n,h,t,hd,layout,scale", CASES)
def test_kernel_matches_reference(monkeypatch, kernel_device, n, h, t, hd, layout, scale, dtype):
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    _check_against_reference(n, h, t, hd, layout, scale, dtype, kernel_device)


def test_expanded_output_gradient(monkeypatch, kernel_device):
    """``o.sum().backward()`` hands the op a stride-0 gradient."""
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    qkv = _qkv(3, 2, 50, 40, torch.float32, kernel_device)
    runs = ((visible_attention_ref, qkv.double()), (visible_attention, qkv), (visible_attention_ref, qkv))
    grads = [_run(lambda q, k, v, fn=fn: fn(q, k, v).sum(), x, None)[1:] for fn, x in runs]
    for name, truth, tri, lowp in zip(("dq", "dk", "dv"), *grads):
        assert_close(name, truth, tri, lowp, torch.float32)


def test_lse_is_row_logsumexp(kernel_device):
    q, k, v = _qkv(2, 3, 50, 40, torch.float32, kernel_device).unbind(0)
    _, stats = torch.ops.mimir_fast.visible_attention_fwd(q, k, v)
    assert stats.dtype == torch.float32 and stats.shape == (2, 2, 3, 50)
    lse = stats.sum(0)
    truth = ((q.double() @ k.double().transpose(-2, -1)) * 40**-0.5).logsumexp(-1)
    lowp = ((q @ k.transpose(-2, -1)) * 40**-0.5).logsumexp(-1)
    assert_close("lse", truth, lse, lowp, torch.float32)


def test_opcheck(kernel_device):
    qkv = _qkv(1, 2, 17, 8, torch.float32, kernel_device).requires_grad_()
    q, k, v = qkv.unbind(0)
    torch.library.opcheck(torch.ops.mimir_fast.visible_attention_fwd.default, (q, k, v))
    with torch.no_grad():
        o, stats = torch.ops.mimir_fast.visible_attention_fwd(q, k, v)
    do = torch.randn_like(o)
    # The backward op has no autograd formula of its own (no double backward): inputs without grad.
    q, k, v = (x.detach() for x in (q, k, v))
    torch.library.opcheck(torch.ops.mimir_fast.visible_attention_bwd.default, (do, q, k, v, o, stats))


def test_reference_is_attention():
    """The explicit math agrees with SDPA, within float32's own error (fp64 SDPA as truth)."""
    q, k, v = _qkv(3, 2, 50, 40, torch.float32, "cpu").unbind(0)
    truth = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert_close("ref", truth, visible_attention_ref(q, k, v), F.scaled_dot_product_attention(q, k, v),
                 torch.float32)
    assert visible_attention_ref(q.half(), k.half(), v.half()).dtype == torch.float16


@pytest.mark.parametrize("mode", ["auto", "torch"])
def test_non_kernel_path_is_sdpa_bitwise(monkeypatch, mode):
    """On the CPU (auto) and under ``torch``, the op is exactly the models' ``F.scaled_dot_product_attention``."""
    monkeypatch.setenv("MIMIR_FAST_KERNELS", mode)
    qkv = _qkv(3, 2, 50, 40, torch.float32, "cpu")
    do = torch.randn(3, 2, 50, 40)
    for a, b in zip(_run(visible_attention, qkv, do), _run(F.scaled_dot_product_attention, qkv, do)):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "shape,dtype", [((1, 2, 17, 160), torch.float32), ((1, 2, 17, 8), torch.float64)], ids=["hd160", "fp64"]
)
def test_forced_triton_rejects_unsupported(monkeypatch, kernel_device, shape, dtype):
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    q = torch.randn(*shape, dtype=dtype, device=kernel_device)
    with pytest.raises(KernelUnavailable, match="visible_attention"):
        visible_attention(q, q, q)


def test_shape_class_buckets():
    """The fastest-backend table's classes: N·H, hd (≥ 8) and T (≥ 16) rounded up to powers of two."""
    assert shape_class(shape_of(torch.empty(256, 12, 50, 64))) == "nh4096-hd64-t64"
    assert shape_class(shape_of(torch.empty(2, 16, 197, 8))) == "nh32-hd8-t256"
    assert shape_class(shape_of(torch.empty(2, 6, 65, 40))) == "nh16-hd64-t128"
    assert shape_class(shape_of(torch.empty(1, 1, 3, 5))) == "nh1-hd8-t16"


@pytest.mark.gpu
class TestGPU:
    """bf16 (and larger shapes) on the GPU; the table-driven dispatch; torch.compile."""

    @pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
    @pytest.mark.parametrize(
        "n,h,t,hd",
        [(1, 1, 17, 8), (3, 12, 50, 64), (2, 16, 197, 8), (2, 16, 197, 32), (3, 6, 65, 64), (2, 3, 257, 72),
         (2, 2, 257, 128)],
        ids=lambda v: str(v),
    )
    def test_kernel_matches_reference(self, monkeypatch, n, h, t, hd, dtype):
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
        _check_against_reference(n, h, t, hd, "permuted", 1.0, dtype, torch.device("cuda"))

    def test_autocast(self, monkeypatch):
        """Under autocast the kernel runs in the autocast dtype, as SDPA does."""
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
        q, k, v = _qkv(2, 4, 50, 64, torch.float32, torch.device("cuda")).unbind(0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            o = visible_attention(q, k, v)
            expected = F.scaled_dot_product_attention(q, k, v)
        assert o.dtype == expected.dtype == torch.bfloat16
        qb, kb, vb = q.bfloat16(), k.bfloat16(), v.bfloat16()
        truth = visible_attention_ref(qb.double(), kb.double(), vb.double())
        assert_close("o", truth, o, visible_attention_ref(qb, kb, vb), torch.bfloat16)

    @pytest.mark.parametrize("backend", BACKENDS)
    def test_table_backend(self, monkeypatch, backend):
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "auto")
        q, k, v = _qkv(2, 4, 50, 64, torch.bfloat16, torch.device("cuda")).unbind(0)
        assert torch.equal(visible_attention(q, k, v), F.scaled_dot_product_attention(q, k, v))  # no record
        key = (_dispatch.device_identity(q.device), "visible_attention", shape_class(shape_of(q)), "bfloat16")
        monkeypatch.setitem(_dispatch._DECISIONS, key, (backend, "test"))
        o = visible_attention(q, k, v)
        if backend == "triton":
            assert o.transpose(1, 2).is_contiguous(), "the kernel's o is an (N, T, H, hd) buffer: did it run?"
            truth = visible_attention_ref(q.double(), k.double(), v.double())
            assert_close(backend, truth, o, visible_attention_ref(q, k, v), torch.bfloat16)
        else:
            assert torch.equal(o, _sdpa_with(backend, q, k, v))

    def test_compile_fullgraph(self, monkeypatch):
        monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
        qkv = _qkv(2, 4, 50, 64, torch.bfloat16, torch.device("cuda"))
        do = torch.randn(2, 4, 50, 64, device="cuda", dtype=torch.bfloat16)
        eager = _run(visible_attention, qkv, do)
        compiled = _run(torch.compile(visible_attention, fullgraph=True), qkv, do)
        for a, b in zip(eager, compiled):
            assert torch.equal(a, b)
