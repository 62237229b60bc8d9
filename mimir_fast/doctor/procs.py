"""Child processes of the doctor: each stage that can hang or crash a CUDA context runs in its own process group,
with a timeout, its output kept in a log file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import mimir_fast


def repo_root() -> Path | None:
    """The repository checkout this package runs from (it has ``bench/`` and ``tests/``), or None when the
    package is installed without one."""
    root = Path(mimir_fast.__file__).resolve().parent.parent
    return root if (root / "bench" / "step.py").is_file() and (root / "tests").is_dir() else None


@dataclass
class ProcResult:
    """How a child process ended."""

    returncode: int | None
    """Its exit status; None when it was killed at the timeout."""
    seconds: float
    log: Path
    """Its stdout and stderr."""

    @property
    def timed_out(self) -> bool:
        return self.returncode is None

    def tail(self, lines: int = 5) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""


def run(args: list[str], *, timeout_s: float, log: Path, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> ProcResult:
    """Run ``python args...`` (this interpreter) with ``cwd`` and this package's folder on ``PYTHONPATH``; at
    ``timeout_s`` its whole process group is killed (pytest's or a DataLoader's children too)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ if env is None else env)
    paths = [str(cwd)] if cwd is not None else []
    paths += [str(Path(mimir_fast.__file__).resolve().parent.parent), child_env.get("PYTHONPATH", "")]
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=child_env, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the group this call started, and only it
            proc.wait()
            code = None
    return ProcResult(code, time.perf_counter() - start, log)
