"""The dispatch predicate: MIMIR_FAST_KERNELS modes, CPU fallback, and the errors of a forced kernel."""

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
