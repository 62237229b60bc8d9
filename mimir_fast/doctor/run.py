"""``run_doctor``: the stages, each time-boxed within the doctor's budget, and the document they produce.

On CUDA, in this order (seconds of a 600 s budget; a stage also gets what earlier ones left unused):

- ``ops`` (180): every op at every benchmark shape in bf16 and fp32, validated against float64 and timed
  against the eager and compiled references; writes the dispatch records;
- ``step`` (150): ViT-B/16 B=256 bf16 PGD-1: compiled (MFU), eager (compiled vs eager), reference-style;
- ``scaling`` (90): the same configuration eager at mask ratio 0 and 0.75 and with PGD-10;
- ``vit_l_memory`` (60): one eager ViT-L/16 B=128 step's peak memory;
- ``loader`` (20): DALI against the step's rate, where DALI is installed;
- ``gpu_tests`` (90): ``pytest -m gpu tests``.

On a CPU, only ``ops``: every kernel at a tiny shape in Triton's interpreter (fp32, fp16), and the report of
what needs a GPU. Every failure is recorded in the document; nothing raises past ``run_doctor``.
"""

from __future__ import annotations

import datetime
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..errors import ConfigError
from ..ops import _dispatch
from ..ops.catalog import OPS
from ..ops.runcheck import kernel_report_line
from . import opscheck, report, suites
from .config import DoctorConfig, split
from .procs import repo_root
from .targets import evaluate, line, not_measured, point

GPU_SHARES = {"ops": 180.0, "step": 150.0, "scaling": 90.0, "vit_l_memory": 60.0, "loader": 20.0,
              "gpu_tests": 90.0}
"""Each CUDA stage's share of a 600 s budget (scaled to ``budget_s``), in run order."""
RESERVE_S = 10.0
"""Of a 600 s budget (scaled), kept for starting up and writing the report."""
CPU_OPS_S = 240.0
"""The most the CPU's interpreter checks may take."""
NEEDS_GPU = (
    "the GPU-marked tests (pytest -m gpu tests)",
    "op timings at the benchmark shapes in bfloat16 and float32, against the eager and compiled references, "
    "and the dispatch records they write (auto runs the references until a CUDA check allows a kernel)",
    "the step suites: MFU, masking speedup, PGD-K scaling, speedup over the reference-style step, compiled vs "
    "eager with CUDA graphs, ViT-L B=128 peak memory",
    "the DALI loader against the step's rate",
    "every performance target",
)


class _Clock:
    """The doctor's deadline and each stage's time box."""

    def __init__(self, budget_s: float, shares: dict[str, float]):
        self.start = time.time()
        self.deadline = self.start + budget_s
        scale = budget_s / 600.0
        self.shares = {k: v * scale for k, v in shares.items()}
        self.reserve = RESERVE_S * scale

    def box(self, stage: str, later: list[str]) -> float:
        """Seconds for ``stage``: what is left, less the reserve and the shares of the stages still to run."""
        return max(0.0, self.deadline - time.time() - self.reserve - sum(self.shares[s] for s in later))


def _stage(stages: list[dict], name: str, status: str, seconds: float, budget_s: float | None, detail: str,
           out: Callable[[str], None], **extra) -> None:
    stages.append({"name": name, "status": status, "seconds": seconds, "budget_s": budget_s, "detail": detail,
                   **extra})
    out(f"doctor: {name:13s} {status:8s} {seconds:6.1f} s  {detail}")


def _kernels_line(op_records: list[dict]) -> str:
    """Per op, the path ``auto`` takes at its first checked shape in each dtype."""
    parts = []
    for op in OPS:
        first = {}
        for r in op_records:
            if r["op"] == op:
                first.setdefault(r["dtype"], r)
        parts += [f"{op}[{r.get('shape_name')} {dt}] {r['path']} ({r['reason']})" for dt, r in first.items()]
    return "kernels (auto): " + " · ".join(parts)


def run_doctor(cfg: DoctorConfig, out: Callable[[str], None] = print) -> dict:
    """Check this machine (see the module docstring); write ``cfg.out``'s files; return the document.

    The document: ``schema``, ``created_utc``, ``seconds``, ``env``, ``stages`` (name, status, seconds, budget,
    detail), ``ops`` (records with ``op, dtype, shape, validated, max_error, tolerance, kernel_ms,
    reference_ms, speedup, path, reason``), ``kernels`` (the path ``auto`` takes per op, one line), ``targets``
    (records with ``name, goal, value, pass``), ``needs_gpu`` (on a CPU), ``exit_code`` (1 when a kernel failed
    its check or the GPU tests failed, else 0) and ``files``.
    """
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("doctor: --device cuda but CUDA is not available")
    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    clock = _Clock(cfg.budget_s, GPU_SHARES)
    created = datetime.datetime.now(datetime.timezone.utc)
    env = report.environment(device)
    where = f"budget {cfg.budget_s:.0f} s" if cuda else "no CUDA: the kernels run in Triton's interpreter"
    out(f"doctor: {env['device']}, torch {env['torch']}, triton {env['triton']}; {where}")
    workdir = Path(cfg.out) / "doctor_logs" if cfg.out else Path(tempfile.mkdtemp(prefix="mimir_fast_doctor_"))
    workdir.mkdir(parents=True, exist_ok=True)
    stages: list[dict] = []
    root = repo_root()
    order = list(GPU_SHARES) if cuda else ["ops"]

    # ops: validate (and on CUDA time) every kernel; write the dispatch records
    ops = split(cfg.ops) or list(OPS)
    dtypes = split(cfg.dtypes) or (["bfloat16", "float32"] if cuda else ["float32", "float16"])
    items = opscheck.plan(ops, split(cfg.shapes), dtypes, cuda)
    t0 = time.time()
    if not _dispatch.triton_available():
        op_records = [dict(opscheck.op_record(i, None, cuda=cuda, compiled_run=False), reason="triton not installed")
                      for i in items]
        _stage(stages, "ops", "skipped", 0.0, None, "triton is not installed: auto runs every reference", out)
    else:
        box = clock.box("ops", order[1:]) if cuda else min(cfg.budget_s, CPU_OPS_S)
        try:
            events, notes = opscheck.run_stage(items, device=device.type, deadline=t0 + box,
                                               compiled_reference=cfg.compiled_reference,
                                               write_records=cfg.write_records and cuda, workdir=workdir)
        except Exception as exc:  # the stage's own failure is recorded, never raised
            events, notes = [None] * len(items), [f"the op stage failed: {type(exc).__name__}: {exc}"[:300]]
        op_records = [opscheck.op_record(i, e, cuda=cuda, compiled_run=cfg.compile != "off")
                      for i, e in zip(items, events)]
        bad = [r for r in op_records if r.get("kernel_failed")]
        reached = sum(e is not None for e in events)
        detail = (f"{reached} of {len(items)} checks ({', '.join(dtypes)}"
                  f"{'' if cuda else ', Triton interpreter, tiny shapes'}); "
                  f"{sum(r['validated'] for r in op_records)} validated, {len(bad)} failed")
        status = "failed" if bad or notes else ("ok" if reached == len(items) else "timeout")
        _stage(stages, "ops", status, time.time() - t0, box, detail + "".join(f"; {n}" for n in notes), out)
    kernels = _kernels_line(op_records) if cuda else kernel_report_line()

    # the step and loader suites, and the GPU-marked tests (CUDA, from a repository checkout)
    step_records: list[dict] = []
    loader_records: list[dict] = []
    loader_skipped = ""
    if cuda:
        children = suites.child_env(None if cfg.write_records else workdir / "dispatch.json")
        plan = {"step": cfg.suites, "scaling": cfg.suites, "vit_l_memory": cfg.suites, "loader": cfg.suites,
                "gpu_tests": cfg.gpu_tests}
        for i, name in enumerate(order[1:], start=1):
            later = [s for s in order[i + 1:] if plan[s]]
            if not plan[name]:
                _stage(stages, name, "skipped", 0.0, None, "not asked for", out)
                continue
            if root is None:
                _stage(stages, name, "skipped", 0.0, None, "needs a repository checkout", out)
                continue
            if name == "loader" and not _dali():
                loader_skipped = "DALI is not installed"
                _stage(stages, name, "skipped", 0.0, None, loader_skipped, out)
                continue
            box, t0 = clock.box(name, later), time.time()
            if box < 10:
                _stage(stages, name, "skipped", 0.0, box, "doctor budget spent", out)
                continue
            try:
                if name == "step":
                    stage, recs = suites.step(root, compile_mode=cfg.compile, timeout_s=box, workdir=workdir,
                                                env=children)
                    step_records += recs
                elif name == "scaling":
                    stage, recs = suites.scaling(root, timeout_s=box, workdir=workdir, env=children)
                    step_records += recs
                elif name == "vit_l_memory":
                    stage, recs = suites.vit_l_memory(root, timeout_s=box, workdir=workdir, env=children)
                    step_records += recs
                elif name == "loader":
                    base = point(step_records)  # the compiled target step: the rate the loader must keep up with
                    stage, loader_records = suites.loader(root, step_img_per_sec=base and base["img_per_sec"],
                                                          timeout_s=box, workdir=workdir, env=children)
                else:
                    stage = suites.gpu_tests(root, timeout_s=box, workdir=workdir, env=children)
            except Exception as exc:  # a stage's own failure is recorded, never raised
                stage = {"status": "failed", "detail": f"{type(exc).__name__}: {exc}"[:300]}
            _stage(stages, name, stage.pop("status"), time.time() - t0, box, stage.pop("detail"), out, **stage)
        targets = evaluate(step_records, loader_records, loader_skipped=loader_skipped)
    else:
        for name in order[1:] or list(GPU_SHARES)[1:]:
            _stage(stages, name, "skipped", 0.0, None, "needs a CUDA GPU", out)
        targets = not_measured("needs a CUDA GPU")

    failed_kernels = [r for r in op_records if r.get("kernel_failed")]
    tests_failed = any(s["name"] == "gpu_tests" and s["status"] == "failed" for s in stages)
    doc = {"schema": report.SCHEMA, "created_utc": created.isoformat(timespec="seconds"),
           "seconds": time.time() - clock.start, "env": env, "config": asdict(cfg), "stages": stages,
           "ops": op_records, "kernels": kernels, "targets": targets,
           "needs_gpu": [] if cuda else list(NEEDS_GPU), "steps": step_records, "loader": loader_records,
           "exit_code": 1 if failed_kernels or tests_failed else 0, "files": {}}
    out(kernels)
    if not cuda:
        out("needs a CUDA GPU: " + "; ".join(NEEDS_GPU))
    for t in targets:
        out(line(t))
    if cfg.out:
        path, md = report.write(doc, cfg.out)
        out(f"doctor: wrote {path} and {md.name}")
    return doc


def _dali() -> bool:
    from ..data.dali import dali_available

    return dali_available()

