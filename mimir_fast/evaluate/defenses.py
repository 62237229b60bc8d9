"""The test-time defences ``mimir-fast eval --defense`` puts in front of the classifier, by name."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from torch import nn

from ..purify.de3 import load_de3_purifier
from ..purify.maep import load_maep_purifier

if TYPE_CHECKING:
    from .config import EvalConfig

Loader = Callable[["EvalConfig", int, float], tuple[nn.Module, str, dict]]


@dataclass(frozen=True)
class Defense:
    """A defence: where its purifier comes from and what an evaluation attacks by default."""

    name: str
    purifier_method: str
    """The pretraining ``--method`` whose checkpoint ``--purifier`` takes ("" without a purifier)."""
    default_attacks: str
    """Full-gradient attacks first; a purifier also gets its labelled gray-box number."""
    load: Loader | None
    """``(cfg, image size, γ) -> (purifier on the CPU, summary line, fields for the report)``; None: no defence."""


def _load_de3(cfg: EvalConfig, image_size: int, gamma: float) -> tuple[nn.Module, str, dict]:
    purifier = load_de3_purifier(cfg.purifier, gamma, cfg.denorm_stats, image_size=image_size)
    summary = f"De^3, gamma {gamma:g}/255, denorm_stats {cfg.denorm_stats}, NIM {cfg.purifier}"
    return purifier, summary, {"gamma": gamma, "denorm_stats": cfg.denorm_stats}


def _load_maep(cfg: EvalConfig, image_size: int, gamma: float) -> tuple[nn.Module, str, dict]:
    purifier = load_maep_purifier(cfg.purifier, image_size=image_size, transfer=cfg.transfer)
    return purifier, f"MAEP {cfg.purifier}, transfer {cfg.transfer}", {"transfer": cfg.transfer}


DEFENSES: dict[str, Defense] = {d.name: d for d in (
    Defense("none", "", "clean,pgd20,pgd100,aa", None),
    Defense("de3", "nim", "clean,pgd20,aa-rand,pgd20-gb", _load_de3),
    Defense("maep", "maep", "clean,pgd20,aa,pgd20-gb", _load_maep),
)}
