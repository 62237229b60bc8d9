"""Run the requested attacks on one shard of evaluation examples and record per-example outcomes.

PGD's random start is drawn per example from ``(seed, example index)``, so results do not depend on batching or
sharding. A randomised defence is attacked with EOT and scored on ``draws`` forward passes seeded by
``(seed, example index, draw)``; ``correct[key]`` counts the draws that classify an example right.
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
class Target:
    """What an evaluation attacks and scores.

    ``model`` scores examples (the defended model: ``model(x)`` or, when ``randomized``, ``model(x, noise)``);
    ``attack_model`` is what full-gradient attacks differentiate (``model``, or the BPDA variant);
    ``classifier`` is what gray-box attacks see (the bare classifier; ``model`` without a defence).
    """

    model: nn.Module
    attack_model: nn.Module
    classifier: nn.Module
    randomized: bool = False
    """The defence draws noise on each forward."""
    eot_iter: int = 1
    """Gradients averaged per PGD step."""
    draws: int = 1
    """Forward passes per example when scoring."""

    @classmethod
    def plain(cls, model: nn.Module) -> Target:
        return cls(model=model, attack_model=model, classifier=model)


@dataclass
class ShardResult:
    """One rank's outcomes. ``correct[key]`` holds, per example of ``indices``, how many of the ``draws``
    scoring passes classified it right (0 or 1 for a deterministic model)."""

    indices: list[int]
    draws: int = 1
    correct: dict[str, list[int]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    max_perturbation: dict[str, float] = field(default_factory=dict)
    aa_after: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    """Per AutoAttack version: robust examples left after each attack."""
    zero_grad: int = 0
    """Examples whose clean input gradient of the cross-entropy is exactly zero."""


def _per_example(indices: list[int], shape: tuple, seed_of, sample) -> torch.Tensor:
    """(N, *shape): row i is ``sample(shape, generator)`` from a CPU generator seeded with ``seed_of(indices[i])``."""
    out = torch.empty(len(indices), *shape)
    for row, idx in enumerate(indices):
        out[row] = sample(shape, torch.Generator().manual_seed(seed_of(idx)))
    return out


def example_starts(indices: list[int], shape: tuple, seed: int) -> torch.Tensor:
    """Uniform noise in [−1, 1], one generator per example index: (N, *shape)."""
    return _per_example(indices, shape, lambda idx: seed * 1_000_003 + idx,
                        lambda sh, gen: torch.rand(sh, generator=gen) * 2 - 1)


def example_noise(indices: list[int], shape: tuple, seed: int, draw: int) -> torch.Tensor:
    """Standard-normal noise (N, *shape), one generator per (seed, example index, draw): the randomised
    defence's draw when scoring example ``indices[i]`` on pass ``draw``."""
    return _per_example(indices, shape, lambda idx: ((seed * 1_000_003 + idx) * 1_009 + draw) * 2 + 1,
                        lambda sh, gen: torch.randn(sh, generator=gen))


def _batched_attack(attack, x, y, unit, bs: int) -> torch.Tensor:
    return torch.cat([attack(x[i:i + bs], y[i:i + bs], unit[i:i + bs]) for i in range(0, len(x), bs)])


@torch.no_grad()
def score(target: Target, x: torch.Tensor, y: torch.Tensor, indices: list[int], seed: int, bs: int) -> torch.Tensor:
    """Correct draws per example (N,) int64 for x (N, C, H, W), y (N,)."""
    hits = torch.zeros(len(x), dtype=torch.long, device=x.device)
    for i in range(0, len(x), bs):
        xb, yb = x[i:i + bs], y[i:i + bs]
        for draw in range(target.draws):
            if target.randomized:
                noise = example_noise(indices[i:i + bs], tuple(x.shape[1:]), seed, draw).to(x.device)
                logits = target.model(xb, noise)
            else:
                logits = target.model(xb)
            hits[i:i + bs] += logits.argmax(1) == yb
    return hits


def attack_shard(target: Target | nn.Module, x: torch.Tensor, y: torch.Tensor, indices: list[int], cfg: EvalConfig,
                 num_classes: int) -> ShardResult:
    """All of ``cfg``'s attacks on x (N, C, H, W) in [0, 1], y (N,), with the models in eval mode, fp32."""
    if not isinstance(target, Target):
        target = Target.plain(target)
    for m in (target.model, target.attack_model, target.classifier):
        m.float().eval()
    bs = cfg.batch_size
    attacks = cfg.attack_list
    result = ShardResult(indices=list(indices), draws=target.draws)
    unit = example_starts(list(indices), tuple(x.shape[1:]), cfg.seed).to(x.device)

    def record(key: str, x_adv: torch.Tensor | None, start: float) -> None:
        adv = x if x_adv is None else x_adv
        result.correct[key] = score(target, adv, y, list(indices), cfg.seed, bs).tolist()
        result.seconds[key] = time.perf_counter() - start
        if x_adv is not None and len(x):
            result.max_perturbation[key] = (x_adv - x).abs().max().item()

    t = time.perf_counter()
    record("clean", None, t)

    def pgd_at(eps255: float, steps: int, model: nn.Module, eot_iter: int):
        eps, alpha = eps255 / 255, (cfg.alpha * eps255 / cfg.eps if cfg.eps > 0 else cfg.alpha) / 255
        return lambda xb, yb, ub: pgd(model, xb, yb, eps=eps, alpha=alpha, steps=steps, start=ub * eps,
                                      eot_iter=eot_iter)

    white = (target.attack_model, target.eot_iter)
    curve = set(cfg.curve) | ({cfg.eps} if "pgd20" in attacks else set())
    for e in sorted(curve):
        t = time.perf_counter()
        record(curve_key(e), _batched_attack(pgd_at(e, 20, *white), x, y, unit, bs), t)
    if "pgd20" in attacks:
        result.correct["pgd20"] = result.correct[curve_key(cfg.eps)]
        result.seconds["pgd20"] = result.seconds[curve_key(cfg.eps)]
        result.max_perturbation["pgd20"] = result.max_perturbation.get(curve_key(cfg.eps), 0.0)
    if "pgd100" in attacks:
        t = time.perf_counter()
        record("pgd100", _batched_attack(pgd_at(cfg.eps, 100, *white), x, y, unit, bs), t)
    if "pgd-mi" in attacks:
        eps, alpha = cfg.eps / 255, cfg.alpha / 255

        def mi(xb, yb, ub):
            return pgd_mi(target.attack_model, xb, yb, eps=eps, alpha=alpha, steps=cfg.pgd_mi_steps,
                          lam=cfg.pgd_mi_lambda, start=ub * eps, eot_iter=target.eot_iter)

        t = time.perf_counter()
        record("pgd-mi", _batched_attack(mi, x, y, unit, bs), t)
    if "pgd20-gb" in attacks:  # gray-box: PGD-20 on the bare classifier, scored through the defence
        t = time.perf_counter()
        record("pgd20-gb", _batched_attack(pgd_at(cfg.eps, 20, target.classifier, 1), x, y, unit, bs), t)
    for key, version, model in (("aa", "standard", target.attack_model), ("aa-rand", "rand", target.attack_model),
                                ("aa-gb", "standard", target.classifier)):
        if key in attacks:
            t = time.perf_counter()
            built = build_attacks(model, version, cfg.eps / 255, num_classes, cfg.seed)
            randomized = target.randomized and model is target.attack_model  # scored over draws: keep every adv
            _, x_adv, after = run_autoattack(model, built, x, y, bs=bs, attack_all=randomized)
            record(key, x_adv, t)
            result.aa_after[key] = after

    for i in range(0, len(x), bs):  # gradient-masking probe on clean inputs (through what attacks differentiate)
        xb = x[i:i + bs].clone().requires_grad_(True)
        loss = F.cross_entropy(target.attack_model(xb), y[i:i + bs], reduction="sum")
        (grad,) = torch.autograd.grad(loss, xb)
        result.zero_grad += int((grad.flatten(1).abs().amax(dim=1) == 0).sum())
    return result
