"""The doctor's outputs: the environment it ran in, ``doctor_<device>_<date>_<sha>.json`` and the ``.md`` beside it."""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from ..device import device_name
from ..ops import records
from . import targets as targets_module
from .procs import repo_root

SCHEMA = "mimir_fast.doctor/1"


def _git_commit() -> str | None:
    root = repo_root()
    if root is None:
        return None
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=root)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    """Device, versions and commit of this run."""
    env = {"device_type": device.type, "python": platform.python_version(), **records.versions(),
           "cuda": torch.version.cuda, "cpu_count": os.cpu_count(), "git_commit": _git_commit(),
           "repository_checkout": repo_root() is not None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}",
                   memory_gb=round(props.total_memory / 2**30, 1))
    else:
        env["device"] = device_name(torch.device("cpu"))
    return env


def file_stem(env: dict, now: datetime.datetime) -> str:
    """``doctor_<device slug>_<yyyymmdd>_<short sha>``."""
    slug = re.sub(r"[^a-z0-9]+", "-", env["device"].lower()).strip("-")[:32] or env["device_type"]
    return f"doctor_{slug}_{now:%Y%m%d}_{(env['git_commit'] or 'nogit')[:8]}"


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def markdown(doc: dict) -> str:
    """The human-readable report."""
    env = doc["env"]
    lines = [f"# mimir-fast doctor: {env['device']}", "",
             f"{doc['created_utc']}, torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}, "
             f"commit {(env['git_commit'] or 'unknown')[:8]}; {doc['seconds']:.0f} s.", "", "## Stages", "",
             "| stage | status | seconds | budget s | detail |", "|---|---|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {_f(s.get('budget_s'), '.0f')} | "
              f"{s.get('detail', '')} |" for s in doc["stages"]]
    lines += ["", "## Ops", "", "| op | shape | dtype | validated | max error | tolerance | kernel ms | reference ms | "
              "compiled ref ms | speedup | path | reason |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["ops"]:
        lines.append(f"| {r['op']} | {r.get('shape_name', '')} | {r['dtype']} | {'yes' if r['validated'] else 'no'} | "
                     f"{_f(r['max_error'], '.2e')} | {_f(r['tolerance'], '.2e')} | {_f(r['kernel_ms'], '.3f')} | "
                     f"{_f(r['reference_ms'], '.3f')} | {_f(r.get('compiled_reference_ms'), '.3f')} | "
                     f"{_f(r['speedup'], '.2f')} | {r['path']} | {r['reason']} |")
    lines += ["", "## The path `auto` takes", "", doc["kernels"], ""]
    if doc.get("needs_gpu"):
        lines += ["## Needs a CUDA GPU", ""] + [f"- {item}" for item in doc["needs_gpu"]] + [""]
    lines += ["## Targets", ""] + [f"    {targets_module.line(t)}" for t in doc["targets"]] + [""]
    return "\n".join(lines)


def _strict(value):
    """``value`` with every non-finite float as None: the file stays strict JSON (an infinite error means the
    result held NaN; the record's ``reason`` says what failed)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write(doc: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write the JSON document (strict JSON) and its ``.md`` into ``out_dir``; return both paths."""
    now = datetime.datetime.fromisoformat(doc["created_utc"])
    path = Path(out_dir) / f"{file_stem(doc['env'], now)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    md = path.with_suffix(".md")
    doc["files"] = {"json": str(path), "md": str(md)}
    path.write_text(json.dumps(_strict(doc), indent=2, allow_nan=False) + "\n")
    md.write_text(markdown(doc))
    return path, md
