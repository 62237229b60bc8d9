"""``mimir-fast export``: weights for other tools.

- Default: a fine-tuned classifier's state_dict, saved bare (``torch.load(path)`` is the state_dict). It loads
  with ``strict=True`` into timm's ``VisionTransformer`` of the same size created with ``global_pool='avg'``,
  ``qkv_bias=True`` and the checkpoint's ``num_classes``, and gives the same logits.
- ``--encoder_only``: the transformer trunk shared by MAE and the classifier (``cls_token``, ``pos_embed``,
  ``patch_embed``, ``blocks``), as ``{"model": state_dict}`` like MAE's released weights, from a pretraining or
  a classifier checkpoint. It loads with ``strict=False`` wherever MAE's fine-tuning loads an encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError, ConfigError
from .models_vit import encoder_state, is_classifier_state
from .outputs import writable_file
from .train.checkpoint import load_checkpoint, save_checkpoint, strip_module


@dataclass(kw_only=True)
class ExportConfig:
    """What to export and where."""

    resume: str = ""
    """The checkpoint to export (a classifier; or any checkpoint with --encoder_only)."""
    output: str = ""
    """The file to write (written atomically)."""
    encoder_only: bool = False
    """Write only the transformer trunk, as {"model": state_dict} (MAE's released-weights layout)."""

    def __post_init__(self) -> None:
        if not self.resume or not self.output:
            raise ConfigError("export needs --resume CHECKPOINT and --output FILE")


def export(cfg: ExportConfig) -> Path:
    """Write the export of ``cfg.resume`` to ``cfg.output`` and return its path."""
    out = writable_file(cfg.output, "--output")  # before the checkpoint is read
    state = strip_module(load_checkpoint(cfg.resume)["model"])
    if cfg.encoder_only:
        payload = {"model": encoder_state(state)}
    elif is_classifier_state(state):
        payload = dict(state)
    else:
        raise CheckpointError(
            f"{cfg.resume} is a pretraining checkpoint: the timm export needs a classifier (or use --encoder_only)"
        )
    return save_checkpoint(payload, out)
