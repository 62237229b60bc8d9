"""The benchmark runners produce well-formed JSON results (tiny shapes; timings are not asserted)."""

import json

from bench import ops, registry, step
from bench.harness import SCHEMA


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
        assert r["img_per_sec"] > 0 and r["gflop_per_img"] > 0 and r["precision"] == "fp32"
        assert r["mfu"] is None  # no peak FLOP/s is claimed for a CPU
    assert 1.6 < records["mimir"]["gflop_per_img"] / records["mae"]["gflop_per_img"] < 1.8  # ≈ (2K+3)/3
