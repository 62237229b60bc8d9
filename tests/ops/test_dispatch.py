"""The dispatch predicate: MIMIR_FAST_KERNELS modes, CPU fallback, and the errors of a forced kernel."""

from types import SimpleNamespace

import pytest
import torch

from mimir_fast.errors import ConfigError
from mimir_fast.ops import _dispatch
from mimir_fast.ops._dispatch import KernelUnavailable, kernel_mode, use_triton


@pytest.mark.parametrize("value,mode", [(None, "auto"), ("", "auto"), ("AUTO", "auto"), ("triton", "triton"),
                                        (" torch ", "torch")])
def test_modes(monkeypatch, value, mode):
    if value is None:
        monkeypatch.delenv("MIMIR_FAST_KERNELS", raising=False)
    else:
        monkeypatch.setenv("MIMIR_FAST_KERNELS", value)
    assert kernel_mode() == mode


def test_unknown_mode_is_a_config_error(monkeypatch):
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "cuda")
    with pytest.raises(ConfigError, match="MIMIR_FAST_KERNELS='cuda' is not one of auto, triton, torch"):
        use_triton("op", torch.zeros(1))


def test_auto_and_torch_run_the_reference_on_cpu(monkeypatch):
    for mode in ("auto", "torch"):
        monkeypatch.setenv("MIMIR_FAST_KERNELS", mode)
        assert not use_triton("op", torch.zeros(1))


def test_forced_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert use_triton("op", torch.zeros(1), torch.zeros(2))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelUnavailable, match="MIMIR_FAST_KERNELS=triton needs CUDA tensors .* on cpu"):
        use_triton("op", torch.zeros(1))


def test_forced_triton_names_why_a_call_is_unsupported(monkeypatch):
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(KernelUnavailable, match="op: MIMIR_FAST_KERNELS=triton cannot run this call: float64"):
        use_triton("op", torch.zeros(1), supported=False, reason="float64")


def test_forced_triton_without_triton(monkeypatch):
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    with pytest.raises(KernelUnavailable, match="triton is not installed"):
        use_triton("op", torch.zeros(1))
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "auto")
    assert not use_triton("op", torch.zeros(1))


def test_kernel_unavailable_is_a_one_line_user_error():
    assert issubclass(KernelUnavailable, ConfigError)


def test_cli_rejects_a_bad_mode_before_any_work(monkeypatch, capsys, tmp_path):
    from mimir_fast.cli import main

    monkeypatch.setenv("MIMIR_FAST_KERNELS", "fast")
    assert main(["pretrain", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["mimir-fast: error: MIMIR_FAST_KERNELS='fast' is not one of auto, triton, torch"]
    assert not any(tmp_path.iterdir())


# --- auto on CUDA: the records decide ------------------------------------------------------------------------

FAKE_GPU = "Fake GPU sm90"
SHAPE = dict(n=4, c=3, px=16, p=4, d=40, keep=4)


def fake_record(op="patch_embed_visible", shape=SHAPE, dtype="float32", *, kernel_ms=1.0, reference_ms=2.0,
                validated=True, error=None, compiled_reference_ms=None, extra=None):
    """A dispatch record on ``FAKE_GPU`` as a check would write it, with chosen timings and verdict."""
    from mimir_fast.ops.catalog import OPS
    from mimir_fast.ops.validate import CheckResult

    cands = {"triton": {"validated": validated, "max_error": 1e-7 if validated else 0.5, "tolerance": 1e-6,
                        "worst": "out", "ms": kernel_ms if validated else None, "error": error}}
    cands.update(extra or {})
    result = CheckResult(op, dtype, dict(shape), OPS[op].shape_class(shape), candidates=cands,
                         reference_ms=reference_ms, compiled_reference_ms=compiled_reference_ms)
    return result.record(FAKE_GPU, source="test")


@pytest.fixture
def cuda_identity(monkeypatch):
    """CUDA device 0 is ``FAKE_GPU``: the real ``device_identity`` finds it cached and queries nothing."""
    monkeypatch.setitem(_dispatch._IDENTITY, 0, FAKE_GPU)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "auto")


def _ask(tensors, supported=True, shape=SHAPE):
    from mimir_fast.ops.patch_embed_visible import shape_class

    return use_triton("patch_embed_visible", *tensors, supported=supported, reason="float64", dtype=torch.float32,
                      shape=shape, shape_class=shape_class(shape))


def test_auto_on_a_cuda_identity_runs_the_kernel_only_where_a_record_allows_it(cuda_identity, monkeypatch):
    """``use_triton`` reads only ``.device``, so a stand-in object stands for a CUDA tensor on the CPU."""
    gpu = SimpleNamespace(device=torch.device("cuda", 0))
    assert not _ask([gpu])  # no record: the reference
    _dispatch.install([fake_record()])
    assert _ask([gpu])  # validated and faster: the kernel
    assert _ask([gpu, gpu])
    assert not _ask([gpu], supported=False)  # a call the kernel cannot take
    assert not _ask([gpu], shape=dict(SHAPE, d=48))  # another shape class: no record
    assert not _ask([torch.zeros(1)])  # CPU tensors, same class: no CUDA
    assert not _ask([gpu, torch.zeros(1)])  # several devices
    monkeypatch.setattr(_dispatch, "triton_available", lambda: False)
    assert not _ask([gpu])  # triton missing


@pytest.mark.parametrize("kwargs,reason", [
    (dict(kernel_ms=3.0), "slower: 0.67x"),
    (dict(validated=False), "mismatch: out error 5.00e-01 > tolerance 1.00e-06"),
    (dict(validated=False, error="RuntimeError: boom"), "failed: RuntimeError: boom"),
])
def test_auto_runs_the_reference_for_a_slower_or_failed_kernel(cuda_identity, kwargs, reason):
    from mimir_fast.ops.runcheck import kernel_report

    gpu = SimpleNamespace(device=torch.device("cuda", 0))
    _dispatch.install([fake_record(**kwargs)])
    assert not _ask([gpu])
    (entry,) = kernel_report()["ops"]["patch_embed_visible"]
    assert entry == {"shape_class": "n4-c3-px16-p4-d40-keep4", "dtype": "float32", "path": "reference",
                     "reason": reason}


def test_decide_compares_with_the_reference_the_run_uses():
    from mimir_fast.ops.records import decide

    assert decide(fake_record(), compiled=False) == ("triton", "validated, 2.00x")
    rec = fake_record(compiled_reference_ms=0.5)  # faster than eager, slower than the compiled reference
    assert decide(rec, compiled=False) == ("triton", "validated, 2.00x")
    assert decide(rec, compiled=True) == ("reference", "slower: 0.50x")
    assert decide(fake_record(), compiled=True) == ("triton", "validated, 2.00x vs eager reference")


def test_decide_picks_the_fastest_validated_attention_backend():
    from mimir_fast.ops.records import decide
    from mimir_fast.ops.visible_attention import BACKENDS

    shape = dict(n=2, h=2, t=17, hd=8)

    def sdpa(ms, validated=True):
        return {"validated": validated, "max_error": 0.0, "tolerance": 1.0, "worst": "out", "ms": ms, "error": None}

    rec = fake_record("visible_attention", shape, kernel_ms=1.5,
                      extra={"sdpa_flash": sdpa(1.0), "sdpa_math": sdpa(0.1, validated=False)})
    assert decide(rec, compiled=False) == ("sdpa_flash", "validated, 2.00x")
    rec = fake_record("visible_attention", shape, validated=False, error="RuntimeError: boom",
                      extra={"sdpa_flash": sdpa(2.5)})
    assert decide(rec, compiled=False) == ("reference", "slower: 0.80x; triton failed")
    for kernel_ms in (0.5, 1.5, 3.0):
        path, _ = decide(fake_record("visible_attention", shape, kernel_ms=kernel_ms, extra={"sdpa_flash": sdpa(1.0)}),
                         compiled=False)
        assert path in (*BACKENDS, "reference")


def test_records_are_only_trusted_for_this_torch_triton_and_kernel_source(cuda_identity):
    from mimir_fast.ops.records import fingerprint, versions

    gpu = SimpleNamespace(device=torch.device("cuda", 0))
    rec, v = fake_record(), versions()
    for now, other in ((f"|triton {v['triton']}|", "|triton 0.0|"), (f"|torch {v['torch']}|", "|torch 0.0|"),
                       (fingerprint("patch_embed_visible"), "0" * 12)):
        assert now in rec["key"]
        _dispatch.install([dict(rec, key=rec["key"].replace(now, other))])
        assert not _ask([gpu]), other
    _dispatch.install([rec])
    assert _ask([gpu])
