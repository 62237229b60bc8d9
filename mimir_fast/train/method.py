"""The interface between a training method and the shared runner.

A method (``mimir_fast.methods``) subclasses ``PretrainMethod`` or ``FinetuneMethod``, declares its name, its
options dataclass and its defaults for shared fields, and implements ``losses``; the runner calls the hooks
below and never asks which method it is running.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from ..configs import Options
from .config import RunConfig


class Method:
    """One training method, bound to a run's config (``cfg.options`` holds the method's own settings)."""

    name: ClassVar[str] = ""
    """The ``--method`` value."""
    task: ClassVar[str] = ""
    """``pretrain`` or ``finetune``: the command that runs it (recorded in checkpoints as ``args['task']``)."""
    summary: ClassVar[str] = ""
    """One line for ``--help``."""
    options_cls: ClassVar[type[Options] | None] = None
    """The method's own settings, or None when it has none."""
    defaults: ClassVar[dict[str, object]] = {}
    """Shared fields this method sets before the user's flags are applied (e.g. maep: norm_pix_loss off)."""
    betas: ClassVar[tuple[float, float]] = (0.9, 0.999)
    """AdamW betas."""

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg

    @property
    def options(self):
        """The method's own settings (an instance of ``options_cls``), or None."""
        return self.cfg.options

    @property
    def loss_keys(self) -> tuple[str, ...]:
        """The keys ``losses`` returns and the run logs (``loss`` is backpropagated)."""
        return ("loss",)

    def check(self) -> None:
        """Checks across the shared fields and the options (raise ``ConfigError``); called once at creation."""

    def train_transform(self):
        raise NotImplementedError

    def build_model(self, dataset) -> nn.Module:
        raise NotImplementedError

    def param_groups(self, model: nn.Module) -> list[dict]:
        raise NotImplementedError

    def losses(self, model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """The step's losses for a device batch imgs (N, C, H, W) in [0, 1], labels (N,): device tensors,
        ``loss`` to backpropagate and the other ``loss_keys`` detached. Must not read values back to the host."""
        raise NotImplementedError

    def check_resume(self, ckpt: dict, path: Path) -> None:
        """Raise ``CheckpointError`` if ``ckpt`` is not a checkpoint this method can resume."""

    def initialise(self, model: nn.Module) -> None:
        """Set the starting weights of a fresh (not resumed) run."""

    def checkpoint_extras(self) -> dict:
        """Entries this method adds to every checkpoint, beside MAE's ``model``/``optimizer``/``epoch``/``args``."""
        return {}

    def after_epoch(self, model: nn.Module, device: torch.device) -> dict:
        """Metrics to log after each epoch (e.g. validation accuracy)."""
        return {}

    def after_run(self, model: nn.Module, output_dir: Path, device: torch.device) -> dict:
        """Artifacts to write at the end (e.g. a figure); returns what to report."""
        return {}
