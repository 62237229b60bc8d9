"""Run output: a progress bar with img/s, MAE's ``log.txt`` (one JSON line per epoch), TensorBoard scalars."""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import TextIO


class Progress:
    """One progress line per epoch: redrawn in place on a terminal, printed at each update otherwise."""

    def __init__(self, epoch: int, epochs: int, steps: int, stream: TextIO | None = None):
        self.epoch, self.epochs, self.steps = epoch, epochs, steps
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.start = time.perf_counter()

    def update(self, step: int, images: int, values: dict[str, float], lr: float) -> None:
        """Show progress after ``step`` of ``steps`` steps and ``images`` images this epoch."""
        elapsed = time.perf_counter() - self.start
        rate = images / elapsed if elapsed > 0 else 0.0
        eta = elapsed / step * (self.steps - step)
        width = 20
        done = int(width * step / self.steps)
        bar = "#" * done + "." * (width - done)
        terms = "  ".join(f"{k} {v:.4g}" for k, v in values.items())
        line = (
            f"Epoch [{self.epoch}/{self.epochs - 1}] [{bar}] {step}/{self.steps}  {terms}  lr {lr:.3e}  "
            f"{rate:.1f} img/s  eta {datetime.timedelta(seconds=int(eta))}"
        )
        if self.tty:
            self.stream.write("\r" + line + ("\n" if step == self.steps else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


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

    def epoch(self, stats: dict) -> None:
        """Append one JSON line to ``log.txt`` and flush TensorBoard."""
        with open(self.log_txt, "a", encoding="utf-8") as f:
            f.write(json.dumps(stats) + "\n")
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
