"""Run output: a progress bar with img/s, MAE's ``log.txt`` (one JSON line per epoch), TensorBoard scalars."""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import TextIO


class Progress:
    """One progress line per epoch: redrawn in place on a terminal, printed at each update otherwise.

    The epoch is shown 1-based (``Epoch [1/1]`` for a one-epoch run); img/s and the ETA count only the steps
    trained in this process (after a mid-epoch resume, not the ones before ``start_step``)."""

    _open: Progress | None = None  # a terminal line drawn without its newline yet

    def __init__(self, epoch: int, epochs: int, steps: int, batch_size: int, start_step: int = 0,
                 stream: TextIO | None = None):
        self.epoch, self.epochs, self.steps, self.batch_size = epoch, epochs, steps, batch_size
        self.start_step = start_step
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.start = time.perf_counter()

    def update(self, step: int, values: dict[str, float], lr: float) -> None:
        """Show progress after ``step`` of ``steps`` steps of the epoch."""
        elapsed = time.perf_counter() - self.start
        trained = step - self.start_step
        rate = trained * self.batch_size / elapsed if elapsed > 0 else 0.0
        eta = elapsed / trained * (self.steps - step) if trained > 0 else 0.0
        width = 20
        done = int(width * step / self.steps)
        bar = "#" * done + "." * (width - done)
        terms = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        line = (
            f"Epoch [{self.epoch + 1}/{self.epochs}] [{bar}] {step}/{self.steps}  {terms}  lr {lr:.3e}  "
            f"{rate:.1f} img/s  eta {datetime.timedelta(seconds=int(eta))}"
        )
        if self.tty:
            last = step == self.steps
            self.stream.write("\r" + line + ("\n" if last else ""))
            Progress._open = None if last else self
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    @classmethod
    def end_line(cls) -> None:
        """End a progress line left open on a terminal (before an error message is written)."""
        if cls._open is not None:
            cls._open.stream.write("\n")
            cls._open.stream.flush()
            cls._open = None


class RunLog:
    """``log.txt`` JSON lines and TensorBoard scalars for one run (TensorBoard is opened lazily)."""

    def __init__(self, output_dir: Path, log_dir: Path):
        self.log_txt = output_dir / "log.txt"
        self.log_dir = log_dir
        self._writer = None

    @property
    def tensorboard(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: ~1 s, only when logging

            self._writer = SummaryWriter(log_dir=str(self.log_dir))
        return self._writer

    def scalars(self, values: dict[str, float], epoch_1000x: int) -> None:
        """Add ``train_<name>`` scalars at MAE's x-axis, ``int(epoch fraction × 1000)``."""
        for name, value in values.items():
            self.tensorboard.add_scalar(f"train_{name}", value, epoch_1000x)

    def forget_from(self, epoch: int) -> None:
        """Drop the ``log.txt`` rows of epochs ``epoch`` and later (a resumed run trains them again)."""
        if not self.log_txt.is_file():
            return
        lines = self.log_txt.read_text(encoding="utf-8").splitlines()
        kept = [ln for ln in lines if ln.strip() and json.loads(ln).get("epoch", -1) < epoch]
        if len(kept) != len([ln for ln in lines if ln.strip()]):
            tmp = self.log_txt.with_name(self.log_txt.name + ".tmp")
            tmp.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
            tmp.replace(self.log_txt)

    def epoch(self, stats: dict) -> None:
        """Append one JSON line to ``log.txt`` and flush TensorBoard."""
        with open(self.log_txt, "a", encoding="utf-8") as f:
            f.write(json.dumps(stats) + "\n")
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
