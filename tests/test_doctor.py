"""``mimir-fast doctor`` on the CPU: a reduced run (its JSON schema, report and exit code), and the CUDA-side
logic with given measurements (targets, op records, stage budgets), a dying check process, a stage timeout."""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from mimir_fast.doctor import DoctorConfig, opscheck, procs, run, run_doctor, targets
from mimir_fast.errors import ConfigError
from mimir_fast.ops import records

OP_FIELDS = {"op", "dtype", "shape", "validated", "max_error", "tolerance", "kernel_ms", "reference_ms", "speedup",
             "path", "reason"}
TARGET_FIELDS = {"name", "goal", "value", "pass"}


def test_reduced_cpu_doctor_writes_its_report_and_exits_0(tmp_path):
    lines = []
    start = time.perf_counter()
    doc = run_doctor(DoctorConfig(out=str(tmp_path), ops="decoder_unshuffle,masked_mse_loss", dtypes="float32"),
                     out=lines.append)
    assert time.perf_counter() - start < 60
    assert doc["exit_code"] == 0
    (path,) = tmp_path.glob("doctor_*.json")
    stem = path.stem.split("_")
    assert stem[0] == "doctor" and len(stem) == 4 and len(stem[2]) == 8  # doctor_<device>_<date>_<sha>
    assert path.with_suffix(".md").read_text().startswith("# mimir-fast doctor: ")
    saved = json.loads(path.read_text())
    assert saved["schema"] == "mimir_fast.doctor/1" and saved["exit_code"] == 0
    assert [(r["op"], r["dtype"]) for r in saved["ops"]] == [("decoder_unshuffle", "float32"),
                                                              ("masked_mse_loss", "float32")]
    for r in saved["ops"]:
        assert OP_FIELDS <= set(r), r
        assert isinstance(r["validated"], bool) and r["validated"] and r["max_error"] <= r["tolerance"]
        assert r["path"] == "reference" and r["reason"] == "no CUDA: auto runs the reference"
        assert r["kernel_ms"] is r["reference_ms"] is r["speedup"] is None  # the interpreter's times mean nothing
    assert [t["name"] for t in saved["targets"]] == [t.name for t in targets.TARGETS]
    for t in saved["targets"]:
        assert TARGET_FIELDS <= set(t) and t["pass"] is None and t["detail"] == "needs a CUDA GPU"
    assert saved["needs_gpu"] and saved["kernels"].startswith("kernels: patch_embed_visible reference (no CUDA)")
    assert {s["name"]: s["status"] for s in saved["stages"]} == {
        "ops": "ok", "step": "skipped", "scaling": "skipped", "vit_l_memory": "skipped", "loader": "skipped",
        "gpu_tests": "skipped"}
    assert not records.cache_path().exists()  # interpreter checks write no dispatch record
    assert sum(ln.startswith("n/a ") for ln in lines) == len(targets.TARGETS)  # a line per target


def test_module_entry_point_exit_codes(tmp_path, capsys):
    from mimir_fast.doctor.__main__ import main

    assert main(["--budget_s", "5"]) == 2
    assert capsys.readouterr().err == "mimir_fast.doctor: error: budget_s must be within [30, 7200] seconds, got 5.0\n"
    assert main(["--ops", "decoder_unshuffle", "--dtypes", "float32"]) == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(budget_s=10.0), "budget_s must be within"), (dict(ops="conv"), "unknown op"),
    (dict(dtypes="float64"), "unknown dtype"), (dict(shapes="huge"), "unknown shape"),
    (dict(compile="max"), "unknown compile 'max'"), (dict(device="tpu"), "unknown device 'tpu'"),
])
def test_config_range_checks(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DoctorConfig(**kwargs)


def test_every_config_field_has_a_docstring_and_a_cli_type():
    from mimir_fast.configs import field_docs
    from mimir_fast.flags import _TYPES

    docs = field_docs(DoctorConfig)
    for f in fields(DoctorConfig):
        assert docs[f.name], f.name
        assert f.type == "bool" or f.type in _TYPES, (f.name, f.type)


def _step(**kw):
    base = dict(kind="step", config="imagenet_vit_b_b256", mode="fast", method="mimir", attack_steps=1,
                mask_ratio=0.75, compile="cudagraphs", median_ms=250.0, img_per_sec=1024.0, mfu=0.47,
                peak_memory_gb=30.0)
    return {**base, **kw}


def test_targets_from_given_measurements():
    steps = [
        _step(),
        _step(mask_ratio=0.0, img_per_sec=1024.0 / 3.5),  # masking 3.5x: below 3.7
        _step(attack_steps=10, median_ms=250.0 * 4.6 * 1.05),  # +5 %: within 10 %
        _step(mode="reference", compile="off", median_ms=1100.0),  # 4.4x
        _step(compile="off", median_ms=400.0, mfu=0.3),  # eager: not what the targets read
        _step(config="imagenet_vit_l_b128", peak_memory_gb=81.5),
        {"kind": "step", "config": "imagenet_vit_b_b256", "error": "OutOfMemoryError: ..."},
    ]
    got = {t["name"]: t for t in targets.evaluate(steps, [{"backend": "dali", "img_per_sec": 2048.0}])}
    assert {k: v["pass"] for k, v in got.items()} == {
        "mfu": True, "masking_speedup": False, "pgd10_deviation_pct": True, "baseline_speedup": True,
        "dali_headroom": True, "vit_l_memory_gb": False}
    assert got["mfu"]["value"] == 0.47 and got["masking_speedup"]["value"] == pytest.approx(3.5)
    assert got["pgd10_deviation_pct"]["value"] == pytest.approx(5.0)
    assert got["baseline_speedup"]["value"] == pytest.approx(4.4) and got["dali_headroom"]["value"] == 2.0
    assert targets.line(got["vit_l_memory_gb"]).startswith("FAIL  vit_l_memory_gb")
    missing = {t["name"]: t for t in targets.evaluate([_step()], loader_skipped="DALI is not installed")}
    assert missing["mfu"]["pass"] is True and missing["masking_speedup"]["pass"] is None
    assert missing["dali_headroom"]["detail"] == "DALI is not installed"
    assert all(t["pass"] is None for t in targets.evaluate([]))
    eager = [_step(), _step(compile="off", median_ms=400.0), _step(compile="off", mask_ratio=0.0, img_per_sec=160.0),
             _step(compile="off", attack_steps=10, median_ms=400.0 * 4.6 * 0.85)]
    got = {t["name"]: t for t in targets.evaluate(eager)}  # the scaling figures of an eager pair
    assert got["masking_speedup"]["value"] == pytest.approx(1024.0 / 160.0)
    assert got["masking_speedup"]["detail"].startswith("off: ") and got["masking_speedup"]["pass"] is True
    assert got["pgd10_deviation_pct"]["value"] == pytest.approx(15.0) and got["pgd10_deviation_pct"]["pass"] is False


def test_op_record_on_cuda_reports_the_path_of_a_compiled_and_an_eager_run():
    from mimir_fast.ops.validate import CheckResult

    item = {"op": "hsic_gram", "shape_name": "imagenet_vit_b_b256", "dtype": "bfloat16",
            "shape": {"m": 256, "dx": 38400, "dy": 150528}}
    result = CheckResult("hsic_gram", "bfloat16", item["shape"], "m256-dx38400-dy150528",
                         candidates={"triton": {"validated": True, "max_error": 1e-6, "tolerance": 1e-5,
                                                "worst": "out", "ms": 1.0, "error": None}},
                         reference_ms=2.0, compiled_reference_ms=0.8)
    rec = opscheck.op_record(item, {"result": result.__dict__, "record": None}, cuda=True, compiled_run=True)
    assert OP_FIELDS <= set(rec)
    assert (rec["path"], rec["reason"]) == ("reference", "slower: 0.80x")
    assert (rec["path_eager"], rec["reason_eager"]) == ("triton", "validated, 2.00x")
    assert rec["speedup"] == 2.0 and rec["speedup_vs_compiled"] == 0.8 and not rec["kernel_failed"]
    skipped = opscheck.op_record(item, None, cuda=True, compiled_run=True)
    assert OP_FIELDS <= set(skipped) and skipped["reason"] == "not checked (doctor budget spent)"


def test_stage_boxes_leave_the_later_stages_their_share():
    clock = run._Clock(600.0, run.GPU_SHARES)
    assert sum(run.GPU_SHARES.values()) + run.RESERVE_S == 600.0
    assert clock.box("ops", list(run.GPU_SHARES)[1:]) == pytest.approx(180.0, abs=1)
    clock.deadline -= 150  # the first stages overran: the last one gets what is left
    assert clock.box("gpu_tests", []) == pytest.approx(440.0, abs=1)
    assert run._Clock(300.0, run.GPU_SHARES).shares["ops"] == 90.0


def test_a_check_that_kills_its_process_is_a_failed_kernel_and_the_rest_still_run(tmp_path, monkeypatch):
    """A kernel that takes the process down (here: exit 7 in masked_mse_loss's check) costs that check only."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('DOCTOR_TEST_CRASH'):\n"
        "    import mimir_fast.ops.validate as v\n"
        "    real = v.check_op\n"
        "    def check_op(op, *args, **kwargs):\n"
        "        if op == os.environ['DOCTOR_TEST_CRASH']:\n"
        "            os._exit(7)\n"
        "        return real(op, *args, **kwargs)\n"
        "    v.check_op = check_op\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("DOCTOR_TEST_CRASH", "masked_mse_loss")
    items = opscheck.plan(["decoder_unshuffle", "masked_mse_loss", "hsic_gram"], [], ["float32"], cuda=False)
    events, notes = opscheck.run_stage(items, device="cpu", deadline=time.time() + 120, compiled_reference=False,
                                       write_records=False, workdir=tmp_path / "logs")
    recs = [opscheck.op_record(i, e, cuda=False, compiled_run=False) for i, e in zip(items, events)]
    assert [r["validated"] for r in recs] == [True, False, True]
    assert recs[1]["kernel_failed"] and "process died (exit 7)" in recs[1]["error"]
    assert len(notes) == 1 and "exit status 7" in notes[0]


def test_a_stage_past_its_time_box_is_killed_with_its_children(tmp_path):
    script = ("import subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
              "print(child.pid, flush=True)\n"
              "time.sleep(60)\n")
    result = procs.run(["-c", script], timeout_s=2.0, log=tmp_path / "log.txt")
    assert result.timed_out and result.seconds < 20
    grandchild = int(result.log.read_text().split()[0])
    for _ in range(50):  # reaped by init once killed
        if not Path(f"/proc/{grandchild}").exists():
            break
        time.sleep(0.1)
    assert not Path(f"/proc/{grandchild}").exists() or "Z" in Path(f"/proc/{grandchild}/stat").read_text().split()[2]


def test_plan_puts_the_target_shapes_of_every_op_first():
    items = opscheck.plan(["patch_embed_visible", "hsic_gram"], [], ["bfloat16", "float32"], cuda=True)
    assert [(i["op"], i["shape_name"], i["dtype"]) for i in items[:3]] == [
        ("patch_embed_visible", "vit_b_224_b256", "bfloat16"), ("hsic_gram", "cifar10_vit_s", "bfloat16"),
        ("patch_embed_visible", "vit_s_224_b256", "bfloat16")]
    assert all(i["shape_name"] != "tiny" for i in items) and items[-1]["dtype"] == "float32"
    assert [i["shape_name"] for i in opscheck.plan(["hsic_gram"], [], ["float32"], cuda=False)] == ["tiny"]


if sys.platform != "linux":  # /proc and process groups
    pytestmark = pytest.mark.skip(reason="Linux only")


def test_the_cuda_run_wires_its_stages_into_one_document(tmp_path, monkeypatch):
    """The CUDA branch of ``run_doctor`` on the CPU, every stage faked with what it would return: the op records
    and paths, each stage's time box, the targets from the suites' step records, the files and the exit code."""
    from dataclasses import asdict

    import torch

    from mimir_fast.doctor import report, suites
    from mimir_fast.ops.catalog import OPS
    from mimir_fast.ops.validate import CheckResult

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(report, "environment", lambda device: {
        "device": "NVIDIA H200", "device_type": "cuda", "capability": "9.0", "torch": "2.11.0", "triton": "3.6.0",
        "cuda": "12.8", "python": "3.12", "git_commit": "0123456789abcdef", "repository_checkout": True})
    monkeypatch.setattr(run, "repo_root", lambda: tmp_path)
    monkeypatch.setattr(run, "_dali", lambda: False)
    boxes = {}

    def fake_ops(items, *, device, deadline, compiled_reference, write_records, workdir):
        assert device == "cuda" and compiled_reference and write_records
        boxes["ops"] = deadline - time.time()
        events = []
        for item in items:
            fast = item["op"] != "hsic_gram"
            result = CheckResult(item["op"], item["dtype"], item["shape"], OPS[item["op"]].shape_class(item["shape"]),
                                 candidates={"triton": {"validated": item["op"] != "decoder_unshuffle",
                                                        "max_error": 1e-3, "tolerance": 2e-3, "worst": "out",
                                                        "ms": 1.0 if fast else 3.0, "error": None}},
                                 reference_ms=2.0, compiled_reference_ms=1.5)
            events.append({"event": "done", "result": asdict(result), "record": None})
        return events, []

    def fake_suite(name, recs):
        def run_suite(root, *, timeout_s, workdir, env, **kwargs):
            boxes[name] = timeout_s
            assert "MIMIR_FAST_KERNELS" not in env
            return {"status": "ok", "detail": f"{len(recs)} measurements", "log": "x.log"}, recs
        return run_suite

    monkeypatch.setattr(opscheck, "run_stage", fake_ops)
    monkeypatch.setattr(suites, "step", fake_suite("step", [_step(), _step(compile="off", median_ms=400.0),
                                                            _step(mode="reference", compile="off", median_ms=900.0)]))
    monkeypatch.setattr(suites, "scaling", fake_suite("scaling", [
        _step(compile="off", median_ms=400.0), _step(compile="off", mask_ratio=0.0, img_per_sec=256.0),
        _step(compile="off", attack_steps=10, median_ms=400.0 * 4.6)]))
    monkeypatch.setattr(suites, "vit_l_memory", fake_suite("vit_l_memory", [
        _step(config="imagenet_vit_l_b128", compile="off", peak_memory_gb=70.0)]))
    def fake_tests(root, *, timeout_s, workdir, env):
        boxes["gpu_tests"] = timeout_s
        return {"status": "failed", "detail": "1 failed, 80 passed"}

    monkeypatch.setattr(suites, "gpu_tests", fake_tests)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    doc = run_doctor(DoctorConfig(out=str(tmp_path / "out"), ops="patch_embed_visible,decoder_unshuffle,hsic_gram"),
                     out=lambda line: None)
    assert boxes["ops"] == pytest.approx(180, abs=2) and boxes["gpu_tests"] > 90  # unused time rolls over
    stages = {s["name"]: (s["status"], s["detail"]) for s in doc["stages"]}
    assert stages["loader"] == ("skipped", "DALI is not installed") and stages["gpu_tests"][0] == "failed"
    assert stages["ops"][0] == "failed"  # decoder_unshuffle mismatched
    paths = {(r["op"], r["shape_name"], r["dtype"]): (r["path"], r["reason"]) for r in doc["ops"]}
    assert paths[("patch_embed_visible", "vit_b_224_b256", "bfloat16")] == ("triton", "validated, 1.50x")
    assert paths[("hsic_gram", "imagenet_vit_b_b256", "float32")] == ("reference", "slower: 0.50x")
    assert paths[("decoder_unshuffle", "mimir_224_b256", "bfloat16")][1].startswith("mismatch: out error")
    assert {r["dtype"] for r in doc["ops"]} == {"bfloat16", "float32"}
    got = {t["name"]: t["pass"] for t in doc["targets"]}
    assert got == {"mfu": True, "masking_speedup": True, "pgd10_deviation_pct": True, "baseline_speedup": False,
                   "dali_headroom": None, "vit_l_memory_gb": True}
    assert doc["exit_code"] == 1 and doc["kernels"].startswith("kernels (auto): patch_embed_visible[vit_b_224_b256 "
                                                                "bfloat16] triton (validated, 1.50x)")
    (path,) = (tmp_path / "out").glob("doctor_nvidia-h200_*_01234567.json")
    md = path.with_suffix(".md").read_text()
    assert "PASS  mfu" in md and "FAIL  baseline_speedup" in md and "| gpu_tests | failed |" in md
