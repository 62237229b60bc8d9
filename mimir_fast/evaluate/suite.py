"""Run the requested attacks on one shard of evaluation examples and record per-example outcomes.

PGD's random start is drawn per example from a generator seeded with ``(seed, example index)``, so PGD
results do not depend on how examples are batched or sharded across ranks. AutoAttack follows fra31's
driver, whose random draws are seeded per chunk of ``batch_size`` still-robust points, as in fra31 itself.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import pgd, pgd_mi
from .autoattack import build_attacks, run_autoattack
from .config import EvalConfig


def curve_key(eps: float) -> str:
    return f"curve:{eps:g}"


@dataclass
class ShardResult:
    """One rank's outcomes. ``correct[key]`` holds one bool per example of ``indices``."""

    indices: list[int]
    correct: dict[str, list[bool]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    max_perturbation: dict[str, float] = field(default_factory=dict)
    aa_after: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """Per AutoAttack version: robust examples left after each attack."""
    zero_grad: int = 0
    """Examples whose clean input gradient of the cross-entropy is exactly zero."""


def example_starts(indices: list[int], shape: tuple, seed: int) -> torch.Tensor:
    """Uniform noise in [−1, 1], one generator per example index: (N, *shape)."""
    out = torch.empty(len(indices), *shape)
    for row, idx in enumerate(indices):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + idx)
        out[row] = torch.rand(shape, generator=gen) * 2 - 1
    return out


def _batched_attack(attack, x, y, unit, bs: int) -> torch.Tensor:
    return torch.cat([attack(x[i:i + bs], y[i:i + bs], unit[i:i + bs]) for i in range(0, len(x), bs)])


@torch.no_grad()
def _correct(model, x, y, bs: int) -> torch.Tensor:
    return torch.cat([model(x[i:i + bs]).argmax(1) == y[i:i + bs] for i in range(0, len(x), bs)])


def attack_shard(model: nn.Module, x: torch.Tensor, y: torch.Tensor, indices: list[int], cfg: EvalConfig,
                 num_classes: int) -> ShardResult:
    """All of ``cfg``'s attacks on x (N, C, H, W) in [0, 1], y (N,), with the model in eval mode, fp32."""
    model = model.float().eval()
    bs = cfg.batch_size
    result = ShardResult(indices=list(indices))
    unit = example_starts(list(indices), tuple(x.shape[1:]), cfg.seed).to(x.device)

    def record(key: str, x_adv: torch.Tensor | None, start: float) -> None:
        adv = x if x_adv is None else x_adv
        result.correct[key] = _correct(model, adv, y, bs).tolist()
        result.seconds[key] = time.perf_counter() - start
        if x_adv is not None and len(x):
            result.max_perturbation[key] = (x_adv - x).abs().max().item()

    t = time.perf_counter()
    record("clean", None, t)

    def pgd_at(eps255: float, steps: int):
        eps, alpha = eps255 / 255, (cfg.alpha * eps255 / cfg.eps if cfg.eps > 0 else cfg.alpha) / 255
        return lambda xb, yb, ub: pgd(model, xb, yb, eps=eps, alpha=alpha, steps=steps, start=ub * eps)

    curve = set(cfg.curve) | ({cfg.eps} if "pgd20" in cfg.attack_list else set())
    for e in sorted(curve):
        t = time.perf_counter()
        record(curve_key(e), _batched_attack(pgd_at(e, 20), x, y, unit, bs), t)
    if "pgd20" in cfg.attack_list:
        result.correct["pgd20"] = result.correct[curve_key(cfg.eps)]
        result.seconds["pgd20"] = result.seconds[curve_key(cfg.eps)]
        result.max_perturbation["pgd20"] = result.max_perturbation.get(curve_key(cfg.eps), 0.0)
    if "pgd100" in cfg.attack_list:
        t = time.perf_counter()
        record("pgd100", _batched_attack(pgd_at(cfg.eps, 100), x, y, unit, bs), t)
    if "pgd-mi" in cfg.attack_list:
        eps, alpha = cfg.eps / 255, cfg.alpha / 255

        def mi(xb, yb, ub):
            return pgd_mi(model, xb, yb, eps=eps, alpha=alpha, steps=cfg.pgd_mi_steps, lam=cfg.pgd_mi_lambda,
                          start=ub * eps)

        t = time.perf_counter()
        record("pgd-mi", _batched_attack(mi, x, y, unit, bs), t)
    for key, version in (("aa", "standard"), ("aa-rand", "rand")):
        if key in cfg.attack_list:
            t = time.perf_counter()
            attacks = build_attacks(model, version, cfg.eps / 255, num_classes, cfg.seed)
            _, x_adv, after = run_autoattack(model, attacks, x, y, bs=bs)
            record(key, x_adv, t)
            result.aa_after[key] = after

    for i in range(0, len(x), bs):  # gradient-masking probe on clean inputs
        xb = x[i:i + bs].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(xb), y[i:i + bs], reduction="sum"), xb)
        result.zero_grad += int((grad.flatten(1).abs().amax(dim=1) == 0).sum())
    return result
