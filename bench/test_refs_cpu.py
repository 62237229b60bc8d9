"""pytest-benchmark runs of every op's references on the CPU (eager and compiled), at each op's CPU shapes.

    python -m bench.refs_cpu          # writes bench/results/refs-cpu_<device>_<date>_<commit>.json

Not part of the test suite (``testpaths = tests``); the kernels themselves are timed on a GPU by bench.ops.
"""

from __future__ import annotations

import pytest
import torch

from bench.registry import OP_NAMES, load

CPU_SHAPES = ("tiny", "cifar10_vit_s", "cifar_p2_b128", "cifar_p2", "cifar_p2_b256")
"""Shape names small enough for a 2-core CPU (each op has ``tiny``; some have a CIFAR one)."""

CASES = [
    pytest.param(name, shape, provider, mode, id=f"{name}-{shape}-{provider}-{mode}")
    for name in OP_NAMES
    for shape in load(name).shapes
    if shape in CPU_SHAPES
    for provider in ("ref", "ref_compiled")
    for mode in ("fwd", "fwdbwd")
]


@pytest.mark.parametrize("name,shape_name,provider,mode", CASES)
def test_reference(benchmark, name, shape_name, provider, mode):
    spec = load(name)
    shape = spec.shapes[shape_name]
    torch.manual_seed(0)
    inputs = spec.make_inputs(shape, torch.device("cpu"), torch.float32, mode != "fwd")
    fn = spec.providers[provider]()
    out = fn(*inputs)
    grad_out = None if out.dim() == 0 else torch.randn_like(out)
    wrt = [inputs[i] for i in spec.grad_argnums]

    def call():
        out = fn(*inputs)
        if mode == "fwd":
            return out
        return torch.autograd.grad(out, wrt, grad_outputs=grad_out, allow_unused=True)

    call()  # compile outside the timed rounds
    benchmark.extra_info.update(op=name, shape=shape, provider=provider, mode=mode,
                                flops=spec.flops(shape, mode) if spec.flops else None,
                                bytes=spec.bytes(shape, mode, torch.float32) if spec.bytes else None)
    benchmark.pedantic(call, rounds=10, warmup_rounds=2)
