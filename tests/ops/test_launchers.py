"""The kernels' launchers on fake CUDA tensors (shapes, dtypes and strides only; nothing runs, no GPU needed):
the launches ``bench/compile_check.py`` records, checked for the device they run on and their grids."""

import pytest
import torch

from bench import compile_check
from bench.registry import load

CUDA_GRID_MAX = (2**31 - 1, 65535, 65535)
"""Largest grid dimensions of a CUDA launch (x, y, z)."""


def _bench_shapes():
    for op in compile_check.OPS:
        for name in load(op).shapes:
            yield pytest.param(op, load(op).shapes[name], id=f"{op}-{name}")


@pytest.mark.parametrize("op, shape", [pytest.param(op, load(op).shapes["tiny"], id=op) for op in compile_check.OPS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_every_launch_runs_on_its_tensors_device(op, shape, dtype):
    """Triton launches on the current CUDA device: with tensors on cuda:1 (cuda:0 current), every launch must
    happen inside a device guard of cuda:1."""
    launches = compile_check.record_launches(op, shape, dtype, False, device="cuda:1")
    assert launches
    for launch in launches:
        assert launch.device == torch.device("cuda:1"), launch.kernel.fn.__name__


def test_expm1_launch_runs_on_its_tensors_device():
    from mimir_fast.kernels import hsic_gram as kernels
    from torch._subclasses.fake_tensor import FakeTensorMode

    launches = []
    with FakeTensorMode(), compile_check._intercept(kernels, launches):
        kernels.expm1(torch.empty(100, device="cuda:1"))
    assert [launch.device for launch in launches] == [torch.device("cuda:1")]


@pytest.mark.parametrize("op, shape", [
    *_bench_shapes(),
    pytest.param("hsic_gram", dict(m=8, dx=4_500_000, dy=3 * 16 * 16), id="hsic_gram-dx4.5M"),
])
def test_grids_fit_cuda_limits(op, shape):
    """Every grid of the benchmark shapes, and of an HSIC latent wider than 65 535 gradient tiles of 64."""
    for launch in compile_check.record_launches(op, shape, torch.bfloat16, False):
        grid = launch.grid + (1,) * (3 - len(launch.grid))
        assert all(1 <= g <= top for g, top in zip(grid, CUDA_GRID_MAX)), (launch.kernel.fn.__name__, grid)


def test_decoder_backward_split_does_not_depend_on_the_position_gradient():
    """The positional-embedding gradient uses the default split (programs per SM) like the others."""
    shape = load("decoder_unshuffle").shapes["mimir_224_b256"]
    launches = compile_check.record_launches("decoder_unshuffle", shape, torch.bfloat16, False)
    grids = {launch.kwargs["NEED_POS"]: launch.grid for launch in launches if "NEED_POS" in launch.kwargs}
    assert grids[True] == grids[False]
    n_l, n_d, split = grids[True]
    assert n_l * n_d * split >= 2 * compile_check.H100_SMS
