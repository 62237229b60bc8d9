"""Output locations checked before any work: a folder is created and a probe file written and removed in it, so
that a run which cannot save its results stops at once with a one-line error instead of after hours."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from .errors import UserError


class OutputError(UserError):
    """An output location cannot be written."""


def writable_dir(path: str | Path, what: str) -> Path:
    """Create ``path`` (and its parents) and check that a file can be written in it; returns it as a ``Path``.

    ``what`` names the location in the error, e.g. ``"--output_dir"``."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".mimir-fast-probe-{uuid.uuid4().hex}"
        with open(probe, "wb") as f:
            f.write(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{what} {folder} is not writable ({e.strerror or e})") from None
    return folder


def writable_file(path: str | Path, what: str) -> Path:
    """Check that ``path`` names a file that can be written: not a folder, in a writable folder."""
    target = Path(path).expanduser()
    if target.is_dir() or str(path).endswith(os.sep):
        raise OutputError(f"{what} {target} is a folder; give a file name")
    writable_dir(target.parent, f"the folder of {what}")
    return target
