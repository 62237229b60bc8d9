"""The in-run dispatch check, on the CPU: a fake CUDA identity (every device is ``FAKE_GPU``), a fake timer, and
the kernels in Triton's interpreter. A wrong or raising kernel is rejected and the reference runs; a faster
validated one is chosen, also inside a compiled (aot_eager) step; the budget and the off switches hold."""

import pytest
import torch

from mimir_fast.ops import _dispatch, records, runcheck
from mimir_fast.ops.catalog import OPS

from .test_dispatch import FAKE_GPU

CPU = torch.device("cpu")


@pytest.fixture
def fake_cuda(monkeypatch):
    """The process "has CUDA", every tensor's device is ``FAKE_GPU``, and the in-run check is on."""
    monkeypatch.setattr(runcheck, "cuda_present", lambda: True)
    monkeypatch.setattr(_dispatch, "device_identity", lambda device: FAKE_GPU)
    monkeypatch.setenv(runcheck.CHECK_ENV, "1")
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "auto")


def fake_timer(kernel_ms: dict[str, float] | None = None):
    """Runs each timed call once (the closures must work) and reports the reference at 2 ms and every
    candidate at ``kernel_ms[op]`` (default 1 ms: faster)."""

    def timer(label, fn):
        fn()
        op, what = label.split(":")
        return 2.0 if what == "reference" else (kernel_ms or {}).get(op, 1.0)

    return timer


def op_call(op: str):
    """A zero-argument forward+backward of ``op`` at its tiny shape, and the inputs it uses."""
    entry = OPS[op]
    inputs = entry.make_inputs(entry.shapes["tiny"], CPU, torch.float32, True)

    def run_once():
        out = entry.fn(*inputs)
        torch.autograd.grad(out, [inputs[i] for i in entry.grad_argnums], torch.ones_like(out))

    return run_once, inputs


def _check(run_once, lines, **kwargs):
    kwargs.setdefault("timer", fake_timer())
    return runcheck.check_unrecorded(run_once, compiled=False, out=lines.append, **kwargs)


def _spy(monkeypatch, module: str, name: str, wrap=None) -> list:
    """Count the calls of one kernel launcher (optionally replacing what it returns)."""
    import importlib

    kernels = importlib.import_module(f"mimir_fast.kernels.{module}")
    real, calls = getattr(kernels, name), []

    def launcher(*args):
        calls.append(1)
        return wrap(real, *args) if wrap else real(*args)

    monkeypatch.setattr(kernels, name, launcher)
    return calls


def _scale(factor):
    """A launcher wrapper that scales the first tensor it returns: a deliberately wrong kernel."""

    def wrap(real, *args):
        out = real(*args)
        return (out[0] * factor, *out[1:]) if isinstance(out, tuple) else out * factor

    return wrap


@pytest.mark.parametrize("op,module,launcher,wrong", [
    ("masked_mse_loss", "masked_mse_loss", "masked_mse_loss_fwd", "out"),  # a wrong loss
    ("patch_embed_visible", "patch_embed_visible", "patch_embed_visible_bwd_weight", "dweight"),  # a wrong gradient
])
def test_a_wrong_kernel_is_rejected_and_the_reference_runs(fake_cuda, monkeypatch, op, module, launcher, wrong):
    calls = _spy(monkeypatch, module, launcher, _scale(1.001))
    run_once, inputs = op_call(op)
    lines = []
    assert _check(run_once, lines) > 0
    assert calls, "the check did not run the kernel"
    assert len(lines) == 2 and lines[0].startswith(f"kernels: {op} [")
    assert f"rejected (mismatch: {wrong} error" in lines[0]
    assert "checked 1 shape classes" in lines[1] and "1 reference" in lines[1]
    (rec,) = records.load().values()  # recorded as failed for that key
    assert rec["op"] == op and rec["candidates"]["triton"]["validated"] is False
    del calls[:]
    out = OPS[op].fn(*inputs)  # auto now runs the reference, bit for bit
    assert not calls and torch.equal(out, OPS[op].reference(*inputs))
    assert f"{op} reference (mismatch: {wrong} error" in runcheck.kernel_report_line()


def test_a_raising_kernel_is_disabled_and_never_tried_again(fake_cuda, monkeypatch):
    def boom(real, *args):
        raise RuntimeError("boom")

    calls = _spy(monkeypatch, "decoder_unshuffle", "decoder_unshuffle_fwd", boom)
    run_once, inputs = op_call("decoder_unshuffle")
    lines = []
    _check(run_once, lines)
    assert calls == [1] and "rejected (failed: RuntimeError: boom)" in lines[0]
    out = OPS["decoder_unshuffle"].fn(*inputs)  # the run goes on, on the reference
    assert torch.equal(out, OPS["decoder_unshuffle"].reference(*inputs))
    assert _check(run_once, lines := []) == 0.0 and not lines  # same process: recorded
    _dispatch.reset()  # a new process reads the record back
    assert _check(run_once, lines) == 0.0 and not lines
    assert calls == [1]
    assert runcheck.kernel_report()["ops"]["decoder_unshuffle"][0]["reason"] == "failed: RuntimeError: boom"


def test_a_validated_faster_kernel_runs_and_is_reported(fake_cuda, monkeypatch):
    calls = _spy(monkeypatch, "patch_embed_visible", "patch_embed_visible_fwd")
    run_once, inputs = op_call("patch_embed_visible")
    lines = []
    _check(run_once, lines)
    assert lines == [lines[0]] and "checked 1 shape classes" in lines[0] and "1 triton" in lines[0]
    del calls[:]
    OPS["patch_embed_visible"].fn(*inputs)
    assert calls == [1]
    line = runcheck.kernel_report_line()
    assert line.startswith("kernels: patch_embed_visible triton (validated, 2.00x) · decoder_unshuffle not called")


def test_a_slower_kernel_is_recorded_and_not_run(fake_cuda, monkeypatch):
    run_once, inputs = op_call("hsic_gram")
    _check(run_once, [], timer=fake_timer({"hsic_gram": 3.0}))
    calls = _spy(monkeypatch, "hsic_gram", "hsic_gram_fwd")
    OPS["hsic_gram"].fn(*inputs)
    assert not calls
    assert "hsic_gram reference (slower: 0.67x)" in runcheck.kernel_report_line()
    (rec,) = records.load().values()
    assert rec["candidates"]["triton"]["validated"] and rec["candidates"]["triton"]["ms"] == 3.0


def test_over_budget_keys_stay_on_the_reference_unrecorded(fake_cuda):
    run_once, inputs = op_call("masked_mse_loss")
    lines = []
    _check(run_once, lines, budget_s=0.0)
    assert lines == ["kernels: checked 0 shape classes in " + lines[0].split(" in ")[1]]
    assert "1 left unchecked (reference)" in lines[0]
    assert records.load() == {}  # not recorded as failed: a later run checks it
    assert "masked_mse_loss reference (unchecked: in-run check budget spent)" in runcheck.kernel_report_line()
    _dispatch.reset()
    _check(run_once, lines := [])
    assert "checked 1 shape classes" in lines[0]


def test_the_check_is_off_when_disabled_forced_or_without_cuda(fake_cuda, monkeypatch):
    def run_once():
        pytest.fail("run_once ran")

    monkeypatch.setenv(runcheck.CHECK_ENV, "0")
    assert _check(run_once, lines := []) == 0.0 and not lines
    monkeypatch.setenv(runcheck.CHECK_ENV, "1")
    for mode in ("torch", "triton"):
        monkeypatch.setenv("MIMIR_FAST_KERNELS", mode)
        assert _check(run_once, lines) == 0.0 and not lines
        assert runcheck.kernel_report_line().startswith(f"kernels: patch_embed_visible "
                                                        f"{'reference' if mode == 'torch' else 'triton'} "
                                                        f"(MIMIR_FAST_KERNELS={mode})")
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "auto")
    monkeypatch.setattr(runcheck, "cuda_present", lambda: False)
    assert _check(run_once, lines) == 0.0 and not lines
    assert runcheck.kernel_report_line() == "kernels: " + " · ".join(f"{op} reference (no CUDA)" for op in OPS)


def test_the_check_leaves_the_callers_rng_alone():
    from mimir_fast.ops.validate import check_op

    state = torch.random.get_rng_state()
    check_op("decoder_unshuffle", OPS["decoder_unshuffle"].shapes["tiny"], "float32", CPU, timer=None)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_a_compiled_step_traces_the_paths_the_records_chose(fake_cuda, monkeypatch):
    """A tiny MAE, checked in-run (kernels faster for the encoder input and the loss, slower for the decoder
    input and attention), then compiled with aot_eager: its graph calls exactly the chosen kernels, and its
    loss and gradients match the reference model."""
    from torch._dynamo import lookup_backend

    from mimir_fast.models_mae import MaskedAutoencoderViT
    from tests.ops._testing import assert_close

    def build(dtype=torch.float32):
        torch.manual_seed(0)
        return MaskedAutoencoderViT(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=4,
                                    decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=4,
                                    norm_pix_loss=True).to(dtype)

    def step(m, params, imgs):
        torch.manual_seed(1)  # the same masks in every run
        loss = m(imgs, 0.75)[0]
        return [loss.detach(), *torch.autograd.grad(loss, params)]

    model = build()
    names, params = zip(*[(n, p) for n, p in model.named_parameters() if p.requires_grad])
    imgs = torch.rand(3, 3, 16, 16)
    slow = {"decoder_unshuffle": 5.0, "visible_attention": 5.0}
    runcheck.check_unrecorded(lambda: step(model, params, imgs), compiled=True, timer=fake_timer(slow),
                              out=lambda line: None)
    chosen = {op: e[0]["path"] for op, e in runcheck.kernel_report()["ops"].items()}
    assert chosen == {"patch_embed_visible": "triton", "decoder_unshuffle": "reference",
                      "masked_mse_loss": "triton", "visible_attention": "reference", "hsic_gram": None}

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    got = step(torch.compile(model, backend=capture), params, imgs)
    torch._dynamo.reset()
    called = {str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"}
    kernels = {t.split(".")[1] for t in called if t.startswith("mimir_fast.")}
    assert kernels == {"patch_embed_visible_fwd", "masked_mse_loss_fwd"}, called
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    plain = step(model, params, imgs)
    model64 = build(torch.float64)
    truth = step(model64, [p for p in model64.parameters() if p.requires_grad], imgs.double())
    for name, t, g, p in zip(("loss", *names), truth, got, plain):
        assert_close(name, t, g, p, torch.float32)


def test_a_check_that_cannot_run_leaves_the_key_unchecked(fake_cuda, monkeypatch):
    """A failure of the check itself (here: its inputs) says nothing about the kernel: unchecked, not failed."""
    import dataclasses

    from mimir_fast.ops import validate

    def broken(*args):
        raise RuntimeError("no inputs")

    run_once, _ = op_call("decoder_unshuffle")
    monkeypatch.setitem(validate.OPS, "decoder_unshuffle", dataclasses.replace(OPS["decoder_unshuffle"],
                                                                               make_inputs=broken))
    lines = []
    _check(run_once, lines)
    assert "1 left unchecked (reference)" in lines[0] and records.load() == {}
    assert "reference (unchecked: the check raised RuntimeError: no inputs)" in runcheck.kernel_report_line()
