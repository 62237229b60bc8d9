#!/usr/bin/env bash
# One device session: `mimir-fast doctor` (GPU-marked tests, every op validated and timed, the step and loader
# suites, the performance targets) within its 10-minute budget. Extra arguments go to the doctor.
# Usage (on the GPU machine, from the repo root):  OUT=/some/dir bash bench/gpu_session.sh [--budget_s 540 ...]
# The GPU machine has torch and no package registry: install this package only, without dependencies.
set -uo pipefail
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
unset TRITON_INTERPRET
python -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.txt" 2>&1 || export PYTHONPATH=$PWD
python -m mimir_fast.doctor --out "$OUT" "$@"
