"""The benchmark runners produce well-formed JSON results (tiny shapes; timings are not asserted)."""

import json

from bench import ops, step
from bench.harness import SCHEMA


def _load(folder, suite):
    (path,) = folder.glob(f"{suite}_*.json")
    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA and doc["suite"] == suite
    assert {"device", "torch", "git_commit", "cpu_count"} <= set(doc["env"])
    return doc["results"]


def test_op_benchmark_writes_records(tmp_path):
    ops.main(["--shapes", "tiny", "--providers", "ref", "--iters", "2", "--out", str(tmp_path)])
    records = _load(tmp_path, "ops")
    assert {(r["op"], r["mode"], r["provider"]) for r in records} == {
        ("hsic_normalized_cca", "fwd", "ref"), ("hsic_normalized_cca", "fwdbwd", "ref")}
    for r in records:
        assert r["median_ms"] > 0 and r["speedup"] == 1.0 and r["correct"]["max_abs_err_vs_ref"] == 0.0
        assert r["p20_ms"] <= r["median_ms"] <= r["p80_ms"] and r["tflops"] > 0


def test_step_benchmark_writes_records(tmp_path):
    step.main(["--configs", "digits_micro", "--methods", "mimir", "mae", "--iters", "2", "--out", str(tmp_path)])
    records = {r["method"]: r for r in _load(tmp_path, "step")}
    assert records["mimir"]["attack_steps"] == 1 and records["mae"]["attack_steps"] == 0
    for r in records.values():
        assert r["img_per_sec"] > 0 and r["gflop_per_img"] > 0 and r["precision"] == "fp32"
        assert r["mfu"] is None  # no peak FLOP/s is claimed for a CPU
    assert 1.6 < records["mimir"]["gflop_per_img"] / records["mae"]["gflop_per_img"] < 1.8  # ≈ (2K+3)/3
