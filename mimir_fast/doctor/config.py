"""``mimir-fast doctor``'s options (one CLI flag per field)."""

from __future__ import annotations

from dataclasses import dataclass

from ..configs import Config, check, choice
from ..device import DEVICES
from ..ops.catalog import OPS
from ..ops.validate import DTYPES

COMPILE_MODES = ("off", "on", "cudagraphs")


def split(value: str) -> list[str]:
    """A comma-separated field as a list (empty items dropped)."""
    return [v.strip() for v in value.split(",") if v.strip()]


@dataclass(kw_only=True)
class DoctorConfig(Config):
    """What the doctor checks and where it writes."""

    out: str = ""
    """Folder for doctor_<device>_<date>_<sha>.json and its .md report (empty: print the report only)."""
    device: str = "auto"
    """auto (cuda if available), cpu or cuda."""
    budget_s: float = 600.0
    """Wall-time budget of the whole doctor on a CUDA machine, in seconds; every stage is time-boxed within it."""
    ops: str = ""
    """Ops to check, comma-separated (empty: all five)."""
    dtypes: str = ""
    """Precisions of the op checks, comma-separated (empty: bfloat16,float32 on CUDA; float32,float16 under
    the CPU interpreter, whose bf16 arithmetic is wrong)."""
    shapes: str = ""
    """Named op shapes to check on CUDA, comma-separated (empty: every benchmark shape; the CPU checks tiny)."""
    compiled_reference: bool = True
    """Also time the torch.compile'd reference of each op (CUDA)."""
    write_records: bool = True
    """Write the dispatch records of the CUDA op checks to the per-user cache (what auto reads)."""
    gpu_tests: bool = True
    """Run the GPU-marked tests (CUDA, from a repository checkout)."""
    suites: bool = True
    """Run the step and loader suites (CUDA, from a repository checkout)."""
    compile: str = "cudagraphs"
    """Compile mode of the step suites' fast step: off, on or cudagraphs."""

    def validate(self) -> None:
        check(30.0 <= self.budget_s <= 7200.0, f"budget_s must be within [30, 7200] seconds, got {self.budget_s}")
        choice("device", self.device, DEVICES)
        for name, values, known in (("op", split(self.ops), OPS), ("dtype", split(self.dtypes), DTYPES),
                                    ("shape", split(self.shapes), {s for e in OPS.values() for s in e.shapes})):
            unknown = [v for v in values if v not in known]
            check(not unknown, f"unknown {name}(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        choice("compile", self.compile, COMPILE_MODES)
