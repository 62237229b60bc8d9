"""Compile-level evidence without a GPU: ``python -m bench.compile_check`` compiles every kernel variant the
benchmarks launch for sm_90a with the installed Triton (once per session, about a minute on 2 cores), and its
records must show what a CPU test cannot: no register spills, shared memory that fits, tensor cores wherever
the operands allow them, and the attention scores rounded as in the forward."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SMEM_PER_BLOCK = 227 * 1024
"""Largest shared memory of one block on compute capability 9.0."""


@pytest.fixture(scope="module")
def compile_check(tmp_path_factory):
    """(exit status, JSON document) of one full run, in a fresh process: the test session's Triton runs in
    interpreter mode (TRITON_INTERPRET=1), which compiles nothing."""
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("compile_check") / "compile-check.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-m", "bench.compile_check", "--quiet", "--out", str(out)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=1800)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.returncode, json.loads(out.read_text())


def _ok(doc):
    return [r for r in doc["results"] if r["status"] != "error"]


def _name(r):
    return f"{r['kernel']} {r['constexprs']} {sorted({u['dtype'] for u in r['uses']})}"


def test_every_variant_compiles(compile_check):
    status, doc = compile_check
    failed = [f"{_name(r)}: {r['error'][:300]}" for r in doc["results"] if r["status"] == "error"]
    assert not failed and not doc["launcher_errors"], (failed, doc["launcher_errors"])
    assert status == 0
    ops = {u["op"] for r in doc["results"] for u in r["uses"]}
    assert ops == {"patch_embed_visible", "decoder_unshuffle", "masked_mse_loss", "visible_attention", "hsic_gram"}
    assert all(a["available"] is not False for a in doc["api_scan"]), "tl names missing in this Triton"


def test_no_variant_spills_registers(compile_check):
    spilling = [f"{_name(r)}: {r['spill_stores']}/{r['spill_loads']} B" for r in _ok(compile_check[1])
                if r.get("spill_stores") or r.get("spill_loads")]
    assert not spilling
    assert all("regs" in r for r in _ok(compile_check[1])), "ptxas reported no register count"


def test_shared_memory_fits_a_block(compile_check):
    assert not [f"{_name(r)}: {r['shared']} B" for r in _ok(compile_check[1]) if r["shared"] > SMEM_PER_BLOCK]


def test_16_bit_and_tf32_dots_lower_to_wgmma(compile_check):
    """A dot on fp16/bf16 operands, or on fp32 ones in TF32 or 3xTF32, runs on Hopper's warpgroup MMA."""
    tensor_core_inputs = {"fp16", "bf16", "tf32", "tf32x3"}
    missed = [f"{_name(r)}: {r['dot_inputs']} -> {r['tensor_core']}" for r in _ok(compile_check[1])
              if tensor_core_inputs & set(r["dot_inputs"]) and r["tensor_core"] != "wgmma"]
    assert not missed
    assert any(r["tensor_core"] == "wgmma" for r in _ok(compile_check[1]))


def test_no_16_bit_input_runs_an_ieee_fp32_dot(compile_check):
    """Where the inputs are fp16/bf16, no matmul falls back to IEEE fp32 on CUDA cores."""
    slow = [_name(r) for r in _ok(compile_check[1])
            if "ieee" in r["dot_inputs"] and {u["dtype"] for u in r["uses"]} & {"fp16", "bf16"}]
    assert not slow


def test_attention_rounds_the_scaled_scores_before_the_row_max(compile_check):
    """No attention kernel fuses ``score · sm_scale`` with the subtraction of the row max into one FMA: the
    backward's recomputed scores must round as the forward's do (kernels/visible_attention.py)."""
    attention = [r for r in _ok(compile_check[1]) if r["kernel"].startswith("_visible_attention")]
    assert {r["kernel"] for r in attention} >= {"_visible_attention_fwd_kernel", "_visible_attention_bwd_dq_kernel",
                                                "_visible_attention_bwd_dkdv_kernel"}
    assert not [_name(r) for r in attention if "sm_scale" in r["float_args_in_fma"]]


def test_result_document_is_a_summary_without_machine_paths(compile_check):
    doc = compile_check[1]
    text = json.dumps(doc)
    assert "ptxas_log" not in text and "triton_path" not in text
    strings = re.findall(r'"((?:[^"\\]|\\.)*)"', text)
    assert not [s for s in strings if s.startswith("/") or str(REPO) in s or "site-packages/" in s]
    summary = doc["summary"]
    assert summary["variants"] == len(doc["results"]) and summary["error"] == 0 and summary["spilling"] == 0
