"""``mimir-fast doctor``: what works on this machine, and how fast.

On a CUDA machine (at most ``budget_s``, 10 minutes by default on one H100/H200) it validates and times every
op at the benchmark shapes in bf16 and fp32 against the eager and compiled references and writes the dispatch
records ``auto`` reads; runs the step suites (MFU, masking speedup, PGD-K scaling, speedup over the
reference-style step, compiled vs eager, ViT-L memory, the DALI loader where installed) and the GPU-marked
tests; and ends with one pass/fail line per performance target. On a CPU it validates every kernel in Triton's
interpreter at small shapes and says which checks need a GPU. ``--out DIR`` writes
``doctor_<device>_<date>_<sha>.json`` and a ``.md`` report beside it.

    from mimir_fast.doctor import DoctorConfig, run_doctor
    doc = run_doctor(DoctorConfig(out="doctor_results"))   # doc["exit_code"]: 0, or 1 if a kernel failed
"""

from .config import DoctorConfig
from .run import run_doctor

__all__ = ["DoctorConfig", "run_doctor"]
