"""The benchmark runners produce well-formed JSON results (tiny shapes; timings are not asserted)."""

import json
import math

import pytest
import torch

from bench import baseline, ops, registry, step, step_configs
from bench.harness import SCHEMA
from mimir_fast.ops import hsic_normalized_cca
from mimir_fast.ops._dispatch import kernel_mode


def _load(folder, suite):
    (path,) = folder.glob(f"{suite}_*.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA and doc["suite"] == suite
    assert {"device", "torch", "git_commit", "cpu_count"} <= set(doc["env"])
    return doc["results"]


def test_op_benchmark_writes_records(tmp_path):
    ops.main(["--shapes", "tiny", "--providers", "ref,triton", "--iters", "2", "--out", str(tmp_path)])
    path = next(tmp_path.glob("ops_*.json"))
    roof = json.loads(path.read_text())["roofline"]
    assert roof["copy_gbps"] > 0 and roof["matmul_tflops"] > 0
    assert path.with_suffix(".md").read_text().startswith("| op |")
    records = _load(tmp_path, "ops")
    assert {r["op"] for r in records} == set(registry.OP_NAMES)
    for r in records:
        assert "error" not in r, r
        assert r["median_ms"] > 0 and r["p20_ms"] <= r["median_ms"] <= r["p80_ms"]
        assert (r["gbps"] or 0) > 0 or (r["tflops"] or 0) > 0
        if r["provider"] == "ref":
            assert r["speedup"] == 1.0 and r["correct"]["max_abs_err_vs_ref"] == 0.0
        else:  # the kernel under the interpreter, against the eager reference
            assert r["is_kernel"] and r["correct"]["rms_ratio_vs_ref"] < 1e-3


def test_step_benchmark_writes_records(tmp_path):
    step.main(["--configs", "digits_micro", "--methods", "mimir", "mae", "--iters", "2", "--out", str(tmp_path)])
    records = {r["method"]: r for r in _load(tmp_path, "step")}
    assert records["mimir"]["attack_steps"] == 1 and records["mae"]["attack_steps"] == 0
    for r in records.values():
        assert "error" not in r, r["error"]
        assert r["kind"] == "step" and r["mode"] == "fast" and r["compile"] == "off"  # auto is eager on the CPU
        assert r["img_per_sec"] > 0 and r["gflop_per_img"] > 0 and r["precision"] == "fp32"
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"] and r["iters"] == 2
        assert r["mfu"] is None and r["peak_memory_gb"] is None  # no peak FLOP/s or device memory on a CPU
        assert len(r["first_calls_s"]) == step.FIRST_CALLS and r["compile_s"] is None
        assert r["decoder"] == "128x2" and r["kept_tokens"] == 16 and r["skipped_updates"] == 0
    assert 1.6 < records["mimir"]["gflop_per_img"] / records["mae"]["gflop_per_img"] < 1.8  # ≈ (2K+3)/3


def test_step_suites_write_summaries(tmp_path, capsys):
    results = step.main(["--suite", "all", "--configs", "digits_tiny", "--pgd_steps", "1", "3", "--compile", "off",
                         "--compile_backend", "aot_eager", "--iters", "2", "--out", str(tmp_path)])
    assert _load(tmp_path, "step-all") == results
    steps = [r for r in results if r["kind"] == "step"]
    assert not [r["error"] for r in steps if "error" in r]
    # shared points are measured once: mask 0, mask 0.75 (= PGD-1 = the eager and the baseline's own), PGD-3,
    # the reference-style step and the compiled step
    assert len(steps) == 5
    summary = {(s["summary"], s.get("attack_steps")): s for s in results if s["kind"] == "summary"}

    unmasked = next(r for r in steps if r["mask_ratio"] == 0)
    assert unmasked["attack_mask_ratio"] == 0 and unmasked["kept_tokens"] == 16
    assert unmasked["skipped_updates"] == 1 + step.FIRST_CALLS + 2  # 0/0 loss: every update skipped, none applied
    mask = summary["masking_speedup", 1]
    assert mask["mask_ratio_base"] == 0 and mask["mask_ratio"] == 0.75 and mask["decoder"] == "128x2"
    assert mask["speedup"] == pytest.approx(mask["img_per_sec"] / mask["img_per_sec_base"]) and mask["speedup"] > 0
    assert mask["flop_ratio"] > 1.5  # the encoder sees 4x the tokens at ratio 0

    pgd3 = summary["pgd_scaling", 3]
    assert pgd3["model_ratio"] == pytest.approx(9 / 5)
    assert pgd3["deviation_pct"] == pytest.approx(100 * (pgd3["time_ratio"] / pgd3["model_ratio"] - 1))
    assert abs(pgd3["flop_ratio"] / pgd3["model_ratio"] - 1) < 0.1  # the counted FLOPs follow (2K+3)F
    assert summary["pgd_scaling", 1]["time_ratio"] == 1.0

    ref = next(r for r in steps if r["mode"] == "reference")
    assert ref["precision"].startswith("fp32") and ref["compile"] == "off"
    assert ref["hsic_left_out"] == 0 and ref["nonfinite_losses"] == 0
    base = next(s for (name, _), s in summary.items() if name == "baseline_speedup")
    assert base["speedup"] == pytest.approx(base["reference_ms"] / base["ours_ms"])

    comp = next(s for (name, _), s in summary.items() if name == "compile_speedup")
    assert comp["compile"] == "on" and comp["compile_backend"] == "aot_eager" and comp["compile_s"] >= 0
    assert comp["speedup"] == pytest.approx(comp["eager_ms"] / comp["compiled_ms"])
    assert "target" not in comp and "target" not in mask  # the targets are for ViT-B/16 on a GPU
    out = capsys.readouterr().out
    assert "| config | mode |" in out and "masking 0 -> 0.75" in out and "PGD-3 / PGD-1" in out


def test_reference_hsic_matches_ours_and_backpropagates():
    x = torch.randn(16, 5, 12, dtype=torch.float64, requires_grad=True)
    y = torch.rand(16, 3, 8, 8, dtype=torch.float64)
    ref = baseline.hsic_normalized_cca_cpu(x, y)
    assert ref.dtype == torch.float32 and ref.device.type == "cpu"  # the reference's host float32
    torch.testing.assert_close(ref.double(), hsic_normalized_cca(x, y), rtol=1e-4, atol=1e-4)
    ref.backward()
    assert x.grad.abs().sum() > 0  # through the inverses and the copy back


def test_reference_step_trains_without_kernels():
    cfg, model = step_configs.build("digits_tiny", "mimir", 1, None, torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    modes, encode = [], model.forward_encoder
    model.forward_encoder = lambda *a, **k: (modes.append(kernel_mode()), encode(*a, **k))[1]
    ref = baseline.ReferenceStep(model, cfg, torch.device("cpu"))
    policy = kernel_mode()
    loss = ref(torch.rand(8, 3, 16, 16))
    assert modes == ["torch", "torch"]  # the attack's forward and the training forward, on the plain-torch ops
    assert kernel_mode() == policy  # the policy is restored after the step
    assert isinstance(loss, float) and math.isfinite(loss) and ref.hsic_left_out == 0
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))  # it trained
    assert not any(g.get("fused") for g in ref.optimizer.param_groups)  # torch's default AdamW, as the reference


def test_step_records_are_appended_as_they_are_measured(tmp_path):
    """``--records_jsonl``: each step record as soon as it is measured (what ``mimir-fast doctor`` keeps when a
    suite runs past its time box), with the path each op took."""
    log = tmp_path / "points.jsonl"
    results = step.main(["--configs", "digits_tiny", "--methods", "mae", "--iters", "1", "--warmup", "0",
                         "--out", str(tmp_path), "--records_jsonl", str(log)])
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert lines == [r for r in results if r["kind"] == "step"] and len(lines) == 1
    assert lines[0]["kernels"].startswith("kernels: patch_embed_visible reference (no CUDA)")
