"""Dispatch records: what the check measured for one op on one machine, and the per-user cache file that keeps them.

A record says, for one key (device name and compute capability, Triton and torch versions, the op's kernel
sources, the op, its shape class and dtype), whether each candidate (the Triton kernel; for attention also each
SDPA backend) matched a float64 reference within the tolerance rule, and its forward+backward median against
the reference path's (eager, and compiled where measured). ``decide`` turns a record into the path ``auto``
takes. Records live in one JSON file per user:

    {"schema": "mimir_fast.dispatch/1", "records": {"<key>": {...record...}, ...}}

``$MIMIR_FAST_DISPATCH_CACHE`` overrides its path (default ``$XDG_CACHE_HOME/mimir_fast/dispatch.json``, else
``~/.cache/mimir_fast/dispatch.json``). Writes merge into the file as it is on disk and replace it atomically.
A file that cannot be read as records is ignored with a warning; the next write moves it aside to
``<name>.corrupt`` (so nothing the user had is lost) before writing a fresh file.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import tempfile
import warnings
from pathlib import Path

import torch

SCHEMA = "mimir_fast.dispatch/1"
PATH_ENV = "MIMIR_FAST_DISPATCH_CACHE"
REFERENCE = "reference"
TRITON = "triton"


def cache_path() -> Path:
    """The cache file: ``$MIMIR_FAST_DISPATCH_CACHE``, else ``$XDG_CACHE_HOME`` or ``~/.cache``, then
    ``mimir_fast/dispatch.json``."""
    if os.environ.get(PATH_ENV):
        return Path(os.environ[PATH_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mimir_fast" / "dispatch.json"


def versions() -> dict[str, str | None]:
    """torch's and Triton's versions (Triton's from its package metadata: nothing is imported)."""
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = None
    return {"torch": torch.__version__, "triton": triton}


_FINGERPRINTS: dict[str, str] = {}


def fingerprint(op: str) -> str:
    """12 hex digits of the SHA-256 of the op's kernel module, the kernels' shared helpers and its wrapper in
    ``mimir_fast/ops``: a record is only trusted for the code it was measured on. Read once per process."""
    if op not in _FINGERPRINTS:
        h = hashlib.sha256()
        for module in (f"mimir_fast.kernels.{op}", "mimir_fast.kernels._utils", f"mimir_fast.ops.{op}"):
            spec = importlib.util.find_spec(module)  # imports the parent package only (which imports nothing)
            h.update(Path(spec.origin).read_bytes() if spec and spec.origin else module.encode())
        _FINGERPRINTS[op] = h.hexdigest()[:12]
    return _FINGERPRINTS[op]


def record_key(identity: str, op: str, shape_class: str, dtype: str) -> str:
    """The cache key of one (device, versions, kernel sources, op, shape class, dtype)."""
    v = versions()
    return f"{identity}|triton {v['triton']}|torch {v['torch']}|{op} {fingerprint(op)}|{shape_class}|{dtype}"


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _read(path: Path) -> tuple[dict[str, dict] | None, str]:
    """(records, "") for a good file, ({}, "") when there is none, (None, why) when it cannot be used."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}, ""
    except OSError as exc:
        return None, f"cannot be read ({exc})"
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return None, f"is not JSON ({exc})"
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or not isinstance(doc.get("records"), dict):
        return None, f"is not a {SCHEMA} file"
    records = {k: r for k, r in doc["records"].items() if isinstance(r, dict) and isinstance(r.get("candidates"), dict)}
    return records, ""


def load(path: Path | None = None) -> dict[str, dict]:
    """Every record in the cache file; a file that cannot be used is ignored with a warning (no records)."""
    path = path or cache_path()
    records, why = _read(path)
    if records is None:
        warnings.warn(f"mimir_fast: dispatch cache {path} {why}: ignored (the kernels' references run until it is "
                      "rewritten; the next write moves it to " + path.name + ".corrupt)", RuntimeWarning, stacklevel=2)
        return {}
    return records


def save(new: dict[str, dict], path: Path | None = None) -> Path:
    """Merge ``new`` into the cache file as it is now on disk and replace it atomically (temporary file in the
    same folder, fsync, rename). A corrupt file is first moved aside to ``<name>.corrupt``, with a warning."""
    path = path or cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    records, why = _read(path)
    if records is None:
        aside = path.with_name(path.name + ".corrupt")
        os.replace(path, aside)
        warnings.warn(f"mimir_fast: dispatch cache {path} {why}: moved to {aside}, writing a new one",
                      RuntimeWarning, stacklevel=2)
        records = {}
    records.update(new)
    doc = {"schema": SCHEMA, "records": dict(sorted(records.items()))}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def mismatch(candidate: dict) -> str:
    """``"<tensor> error E > tolerance T"`` of a candidate that failed the rule."""
    return (f"{candidate.get('worst', '?')} error {candidate.get('max_error', float('nan')):.2e} > tolerance "
            f"{candidate.get('tolerance', float('nan')):.2e}")


def _x(speedup: float) -> str:
    return f"{speedup:.2f}x"


def decide(record: dict, compiled: bool) -> tuple[str, str]:
    """(path, reason) for a run that is compiled or not: the fastest validated candidate when it beats the
    reference path the run would otherwise take, else ``"reference"``.

    The baseline is the compiled reference's median for a compiled run when it was measured, else the eager
    reference's (and the reason says so).
    """
    candidates = record.get("candidates", {})
    timed = {name: c["ms"] for name, c in candidates.items() if c.get("validated") and c.get("ms") is not None}
    kernel = candidates.get(TRITON, {})
    if not timed:
        if kernel.get("error"):
            return REFERENCE, f"failed: {kernel['error']}"
        if kernel and kernel.get("validated") is False:
            return REFERENCE, f"mismatch: {mismatch(kernel)}"
        return REFERENCE, "validated, not timed"
    baseline, vs = record.get("reference_ms"), ""
    if compiled:
        if record.get("compiled_reference_ms") is not None:
            baseline = record["compiled_reference_ms"]
        else:
            vs = " vs eager reference"
    best = min(timed, key=timed.get)
    if baseline is None:
        return REFERENCE, "reference not timed"
    speedup = baseline / timed[best]
    if timed[best] < baseline:
        return best, f"validated, {_x(speedup)}{vs}"
    if best != TRITON and kernel and not kernel.get("validated"):
        return REFERENCE, f"slower: {_x(speedup)}{vs}; triton failed"
    return REFERENCE, f"slower: {_x(speedup)}{vs}"
