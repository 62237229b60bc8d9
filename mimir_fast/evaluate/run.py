"""``mimir-fast eval``: load a classifier, attack a fixed set of examples, check, report.

Under torchrun the examples are sharded across ranks (rank r takes every world-size-th example), each rank
attacks its shard, and rank 0 merges the per-example outcomes and writes the report. All numbers come from
fp32 runs with the model in eval mode.
"""

from __future__ import annotations

import math
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from ..distributed import finish_distributed, gather, init_distributed
from ..errors import CheckpointError, ConfigError, DataError
from ..models_vit import create_classifier, is_classifier_state
from ..train.checkpoint import load_checkpoint, load_model_state
from ..train.runner import resolve_device
from .checks import run_checks
from .config import EvalConfig
from .data import eval_dataset, load_examples, subset_indices
from .report import accuracy_of, plot_curve, table, write_json
from .suite import ShardResult, attack_shard, curve_key


@dataclass(frozen=True)
class ClassifierInfo:
    model: str
    num_classes: int
    input_size: int
    patch_size: int


def load_classifier(cfg: EvalConfig, device: torch.device) -> tuple[torch.nn.Module, ClassifierInfo]:
    """Build the checkpoint's classifier. Sizes come from the weights themselves; requested values must agree."""
    path = cfg.resume
    ckpt = load_checkpoint(path)
    state = ckpt["model"]
    if not is_classifier_state(state):
        raise CheckpointError(f"{path} is a pretraining checkpoint; eval needs a classifier from mimir-fast finetune")
    args = ckpt.get("args") or {}
    classes = state["head.weight"].shape[0]
    patch = state["patch_embed.proj.weight"].shape[-1]
    size = math.isqrt(state["pos_embed"].shape[1] - 1) * patch
    name = args.get("model") or cfg.model
    if not name:
        raise ConfigError(f"{path} does not record its model: give --model")
    for flag, wanted, found in (("model", cfg.model, name), ("num_classes", cfg.num_classes, classes),
                                ("input_size", cfg.input_size, size)):
        if wanted is not None and wanted != found:
            raise CheckpointError(f"{path} has {flag} {found}, but --{flag} is {wanted}")
    model = create_classifier(name, img_size=size, patch_size=patch, num_classes=classes)
    load_model_state(model, state, path)
    return model.to(device).float().eval(), ClassifierInfo(name, classes, size, patch)


def _merge(parts: list[ShardResult], order: list[int]) -> ShardResult:
    """Merge the ranks' results into one, per example, in evaluation order."""
    merged = ShardResult(indices=list(order), zero_grad=sum(p.zero_grad for p in parts))
    position = {idx: i for i, idx in enumerate(order)}
    for key in parts[0].correct:
        values = [False] * len(order)
        for part in parts:
            for idx, ok in zip(part.indices, part.correct[key]):
                values[position[idx]] = ok
        merged.correct[key] = values
        merged.seconds[key] = max(p.seconds[key] for p in parts)
        found = [p.max_perturbation[key] for p in parts if key in p.max_perturbation]
        if found:
            merged.max_perturbation[key] = max(found)
    for key in parts[0].aa_after:
        names = [name for name, _ in parts[0].aa_after[key]]
        counts = [sum(p.aa_after[key][i][1] for p in parts if i < len(p.aa_after[key])) for i in range(len(names))]
        merged.aa_after[key] = list(zip(names, counts))
    return merged


def build_report(cfg: EvalConfig, info: ClassifierInfo, parts: list[ShardResult], order: list[int],
                 world_size: int = 1) -> dict:
    """Merge the ranks' shard results and compute accuracies, the curve and the integrity checks."""
    merged = _merge(parts, order)
    n = len(order)
    accuracy = {key: accuracy_of(values) for key, values in merged.correct.items()}
    aa_after = {k: [(name, 100.0 * c / n if n else 0.0) for name, c in v] for k, v in merged.aa_after.items()}
    return {
        "checkpoint": str(cfg.resume), "model": info.model, "num_classes": info.num_classes,
        "input_size": info.input_size, "patch_size": info.patch_size, "n_examples": n,
        "subset": cfg.ids or (f"first {cfg.n_ex}" if cfg.n_ex else "all"), "preprocessing": cfg.preprocessing,
        "eps": cfg.eps, "alpha": cfg.alpha, "seed": cfg.seed, "world_size": world_size, "precision": "fp32",
        "accuracy": {k: v for k, v in accuracy.items() if not k.startswith("curve:")},
        "attacks": {k: {"seconds": merged.seconds[k], "max_perturbation": merged.max_perturbation.get(k)}
                    for k in merged.correct if not k.startswith("curve:")},
        "curve": [{"eps": e, "accuracy": accuracy[curve_key(e)]} for e in cfg.curve],
        "autoattack": {k: [{"attack": name, "accuracy_after": acc} for name, acc in v] for k, v in aa_after.items()},
        "checks": run_checks(cfg, accuracy, merged.correct, n, merged.zero_grad, aa_after, merged.max_perturbation),
        "per_example": {"index": merged.indices, **merged.correct},
        "config": cfg.to_dict(),
        "env": {"torch": torch.__version__, "python": platform.python_version()},
    }


def run_eval(cfg: EvalConfig) -> dict | None:
    """Evaluate ``cfg``; returns the report on rank 0 (None on other ranks)."""
    device = resolve_device(cfg.device)
    env = init_distributed(device)
    try:
        return _evaluate(cfg, device, env)
    finally:
        finish_distributed()


def _evaluate(cfg: EvalConfig, device: torch.device, env) -> dict | None:
    model, info = load_classifier(cfg, device)
    if cfg.defense == "de3":  # attack purifier + classifier end to end (mimir_fast.purify.de3)
        from ..purify.de3 import PurifiedClassifier, load_de3_purifier

        purifier = load_de3_purifier(cfg.purifier, cfg.gamma, cfg.denorm_stats, image_size=info.input_size)
        model = PurifiedClassifier(purifier.to(device), model).eval()
        torch.manual_seed(cfg.seed + env.rank)  # the purifier's noise draws
    dataset = eval_dataset(cfg, info.input_size)
    found = getattr(dataset, "num_classes", None)
    if found is not None and found > info.num_classes:
        raise DataError(f"the evaluation data has {found} classes, but the classifier has {info.num_classes}")
    order = subset_indices(cfg, dataset)
    shard = order[env.rank::env.world_size]
    x, y = load_examples(dataset, shard, info.input_size)
    parts = gather(attack_shard(model, x.to(device), y.to(device), shard, cfg, info.num_classes), env)
    if not env.is_main:
        return None
    report = build_report(cfg, info, parts, order, env.world_size)
    report["env"]["device"] = str(device)
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    report["files"] = {"json": str(output_dir / "eval_results.json"),
                       "curve_png": str(plot_curve(report, output_dir))}
    write_json(report, output_dir)
    print(table(report))
    return report
