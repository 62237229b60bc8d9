"""Checkpoints in MAE's layout, written atomically and loaded safely.

A checkpoint is ``{output_dir}/checkpoint-{epoch}.pth`` holding ``model`` (the unwrapped state_dict),
``optimizer``, ``epoch``, ``scaler`` and ``args`` (a plain dict). Writes go to a temporary file in the
same folder, are flushed to disk, then renamed over the target, so a crash mid-write never replaces a
good checkpoint (a process killed mid-write leaves only its hidden temporary file, which the next save of
the same checkpoint removes). Loads use ``torch.load(weights_only=True)``; official MAE/MIMIR files store ``args`` as
an ``argparse.Namespace``, so exactly that class is allowed too.
"""

from __future__ import annotations

import argparse
import glob
import os
import pickle
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)\.pth$")


def checkpoint_path(output_dir: str | Path, epoch: int) -> Path:
    """``output_dir/checkpoint-{epoch}.pth``."""
    return Path(output_dir) / f"checkpoint-{epoch}.pth"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically: temp file, fsync, rename, fsync of the folder; then remove the
    temporary files that killed writers of ``path`` left behind."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        stale.unlink(missing_ok=True)
    return path


def newest_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint-{epoch}.pth`` in ``output_dir`` with the highest epoch, or None."""
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return max(found)[1] if found else None


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint on the CPU with ``weights_only=True``; ``args`` comes back as a plain dict.

    Raises ``CheckpointError`` when the file is missing, corrupt, holds other Python objects, or has no
    ``model`` state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
        if found:
            raise CheckpointError(
                f"checkpoint {path} holds a Python object of type {found.group(1)} and cannot be loaded "
                "safely (only tensors, containers and argparse.Namespace are allowed)"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch checkpoint") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a torch checkpoint ({reason})") from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"checkpoint {path} has no 'model' state_dict")
    if isinstance(ckpt.get("args"), argparse.Namespace):
        ckpt["args"] = vars(ckpt["args"])
    return ckpt


def strip_module(state_dict: dict) -> dict:
    """Drop the ``module.`` prefix DDP adds to every key, if present."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def load_model_state(model: nn.Module, state_dict: dict, source: str | Path) -> None:
    """``load_state_dict(strict=True)``, with a one-line ``CheckpointError`` naming what does not fit."""
    state_dict = strip_module(state_dict)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f", ... ({len(items)} in all)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit the model ({'; '.join(problems)})")
    model.load_state_dict(state_dict, strict=True)
