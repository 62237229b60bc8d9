#!/usr/bin/env bash
# One device session: the whole test suite (GPU-marked tests included) and every benchmark.
# Usage (on the lent GPU machine, from the repo root):  OUT=/some/dir bash bench/gpu_session.sh PART
# PART: kernels (kernel tests, op benchmarks, attention table), step (the step grid), suites (masking, PGD-K,
# reference-style and compile comparisons), tests (the whole suite, GPU-marked tests included), or all.
# Each part is meant to fit one 10-minute device call; run them as separate calls.
# Results land in $OUT in the bench/results layout; copy the JSON files into bench/results/ and commit them.
# The GPU machine has torch and no package registry: install this package only, without dependencies.
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
unset TRITON_INTERPRET
python -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.txt" 2>&1 || export PYTHONPATH=$PWD
# AutoAttack needs torchattacks (140 KB): carry its wheel in wheels/ (pip download --no-deps torchattacks==3.5.1)
ls wheels/torchattacks-*.whl >/dev/null 2>&1 && python -m pip install -q --no-deps wheels/torchattacks-*.whl >>"$OUT/install.txt" 2>&1
{ nvidia-smi; python -c "import torch, triton; print(torch.__version__, triton.__version__)"; } >"$OUT/env.txt" 2>&1
PART=${1:-all}
if [ "$PART" = kernels ] || [ "$PART" = all ]; then
  # kernels on the GPU: every op test (the interpreter cases run compiled here) and the whole-model checks
  python -m pytest tests/ops tests/test_accelerate.py -q -p no:cacheprovider >"$OUT/tests_kernels.txt" 2>&1
  echo "kernel tests rc=$?" >>"$OUT/tests_kernels.txt"
  # op benchmarks in bf16 at the issue's shapes (tiny left out), then the attention dispatch table
  python -m bench.ops --out "$OUT" --skip_shapes tiny >"$OUT/bench_ops.txt" 2>&1
  python -m bench.attention_table "$(ls -t "$OUT"/ops_*.json | head -n 1)" >"$OUT/attention_table.txt" 2>&1
fi
if [ "$PART" = step ] || [ "$PART" = all ]; then
  # the step grid (ViT-B both decoders, ViT-L B=128)
  python -m bench.step --out "$OUT" --compile cudagraphs >"$OUT/bench_step.txt" 2>&1
fi
if [ "$PART" = suites ] || [ "$PART" = all ]; then
  # masking, PGD-K, reference-style and compile comparisons
  python -m bench.step --out "$OUT" --suite all --compile cudagraphs >"$OUT/bench_step_suites.txt" 2>&1
fi
if [ "$PART" = tests ] || [ "$PART" = all ]; then
  python -m pytest tests -q -p no:cacheprovider >"$OUT/tests.txt" 2>&1
  echo "tests rc=$?" >>"$OUT/tests.txt"
fi
tail -n 3 "$OUT"/*.txt
