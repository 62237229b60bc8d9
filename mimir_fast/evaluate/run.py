"""``mimir-fast eval``: load a classifier (behind a purifier with ``--defense``), attack a fixed set of
examples, check, report.

Under torchrun the examples are sharded across ranks (rank r takes every world-size-th example), each rank
attacks its shard, and rank 0 merges the per-example outcomes and writes the report. All numbers come from
fp32 runs with the model in eval mode. With ``--gamma_sweep`` the whole evaluation runs once per De^3 γ
(``gamma_<γ>/eval_results.json`` each) and ``gamma_curve.json``/``gamma_curve.png`` summarise them.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..device import resolve_device
from ..distributed import finish_distributed, gather, init_distributed, quiet_unless_main
from ..errors import CheckpointError, ConfigError, DataError
from ..models_vit import create_classifier, is_classifier_state
from ..ops.runcheck import check_unrecorded, kernel_report, kernel_report_line
from ..outputs import writable_dir
from ..purify.defended import BPDA, PurifiedClassifier
from ..train.checkpoint import load_checkpoint, load_model_state
from .checks import run_checks
from .config import RANDOMIZED_DRAWS, RANDOMIZED_EOT, EvalConfig
from .data import eval_dataset, load_examples, subset_indices
from .defenses import DEFENSES
from .report import accuracy_of, plot_curve, plot_gamma_curve, table, worst_accuracy_of, write_json
from .suite import ShardResult, Target, attack_shard, curve_key


@dataclass(frozen=True)
class ClassifierInfo:
    model: str
    num_classes: int
    input_size: int
    patch_size: int
    classes: list[str] | None = None
    """The training data's class names in label order (None in checkpoints that do not record them)."""


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
    names = ckpt.get("classes")
    if names is not None and len(names) != classes:
        raise CheckpointError(f"{path} records {len(names)} class names for a {classes}-class head")
    model = create_classifier(name, img_size=size, patch_size=patch, num_classes=classes)
    load_model_state(model, state, path)
    return model.to(device).float().eval(), ClassifierInfo(name, classes, size, patch, names)


def _merge(parts: list[ShardResult], order: list[int]) -> ShardResult:
    """Merge the ranks' results into one, per example, in evaluation order."""
    merged = ShardResult(indices=list(order), draws=parts[0].draws, zero_grad=sum(p.zero_grad for p in parts))
    position = {idx: i for i, idx in enumerate(order)}
    for key in parts[0].correct:
        values = [0] * len(order)
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


def attack_settings(cfg: EvalConfig, target: Target) -> dict[str, str]:
    """A label per attack key saying what the attacker sees (reported next to each number)."""
    if DEFENSES[cfg.defense].load is None:
        return {}
    how = "BPDA (identity backward) through the purifier" if cfg.gradient == "bpda" else "exact gradients"
    eot = f", EOT-{target.eot_iter}" if target.eot_iter > 1 else ""
    full = f"full-gradient: purifier + classifier, {how}{eot}"
    gray = "gray-box: attack on the classifier alone, then purified (non-adaptive, weaker)"
    return {"clean": "no attack", "pgd20": full, "pgd100": full, "pgd-mi": full, "aa": f"full-gradient, {how}",
            "aa-rand": f"full-gradient, {how}, APGD-CE/DLR with EOT-20", "pgd20-gb": gray, "aa-gb": gray}


def build_report(cfg: EvalConfig, info: ClassifierInfo, parts: list[ShardResult], order: list[int],
                 world_size: int = 1, *, defense: dict | None = None, settings: dict[str, str] | None = None) -> dict:
    """Merge the ranks' shard results and compute accuracies, the curve and the integrity checks."""
    merged = _merge(parts, order)
    n, draws = len(order), merged.draws
    defense = defense or {"name": "none", "randomized": False}
    settings = settings or {}
    accuracy = {key: accuracy_of(values, draws) for key, values in merged.correct.items()}
    aa_after = {k: [(name, 100.0 * c / n if n else 0.0) for name, c in v] for k, v in merged.aa_after.items()}
    report = {
        "checkpoint": str(cfg.resume), "model": info.model, "num_classes": info.num_classes,
        "input_size": info.input_size, "patch_size": info.patch_size, "n_examples": n,
        "subset": cfg.ids or (f"first {cfg.n_ex}" if cfg.n_ex else "all"), "preprocessing": cfg.preprocessing,
        "eps": cfg.eps, "alpha": cfg.alpha, "seed": cfg.seed, "world_size": world_size, "precision": "fp32",
        "defense": defense, "eval_draws": draws,
        "accuracy": {k: v for k, v in accuracy.items() if not k.startswith("curve:")},
        "attacks": {k: {"seconds": merged.seconds[k], "max_perturbation": merged.max_perturbation.get(k),
                        "setting": settings.get(k)}
                    for k in merged.correct if not k.startswith("curve:")},
        "curve": [{"eps": e, "accuracy": accuracy[curve_key(e)]} for e in cfg.curve],
        "autoattack": {k: [{"attack": name, "accuracy_after": acc} for name, acc in v] for k, v in aa_after.items()},
        "checks": run_checks(cfg, accuracy, merged.correct, n, merged.zero_grad, aa_after, merged.max_perturbation,
                             randomized=bool(defense.get("randomized"))),
        "per_example": {"index": merged.indices, **merged.correct},
        "config": cfg.to_dict(),
        "env": {"torch": torch.__version__, "python": platform.python_version()},
    }
    if draws > 1:
        report["accuracy_worst"] = {k: worst_accuracy_of(v, draws) for k, v in merged.correct.items()
                                    if not k.startswith("curve:")}
    return report


def run_eval(cfg: EvalConfig) -> dict | None:
    """Evaluate ``cfg``; returns the report on rank 0 (None on other ranks)."""
    device = resolve_device(cfg.device)
    env = init_distributed(device)
    try:
        with quiet_unless_main(env):  # under torchrun only rank 0 prints
            return _evaluate(cfg, device, env)
    finally:
        finish_distributed()


def build_target(cfg: EvalConfig, classifier: torch.nn.Module, info: ClassifierInfo, device: torch.device,
                 gamma: float) -> tuple[Target, dict]:
    """The model to attack and score for ``cfg.defense`` (at De^3 noise level ``gamma``) and its description."""
    defense = DEFENSES[cfg.defense]
    if defense.load is None:
        return Target.plain(classifier), {"name": cfg.defense, "randomized": False}
    purifier, summary, extra = defense.load(cfg, info.input_size, gamma)
    purifier = purifier.to(device).eval()
    model = PurifiedClassifier(purifier, classifier).eval()
    randomized = model.randomized
    eot = (cfg.eot_iter or RANDOMIZED_EOT) if randomized else 1  # a deterministic purifier: one draw is exact
    draws = (cfg.eval_draws or RANDOMIZED_DRAWS) if randomized else 1
    attack_model = PurifiedClassifier(BPDA(purifier), classifier).eval() if cfg.gradient == "bpda" else model
    summary += f"; {'randomised' if randomized else 'deterministic'}, EOT {eot}, scored on {draws} draw(s)"
    description = {"name": cfg.defense, "purifier": str(cfg.purifier), "randomized": randomized, "eot_iter": eot,
                   "eval_draws": draws, "gradient": cfg.gradient, "summary": summary, **extra}
    target = Target(model=model, attack_model=attack_model, classifier=classifier, randomized=randomized,
                    eot_iter=eot, draws=draws)
    return target, description


@torch.no_grad()
def purifier_cost(target: Target, x: torch.Tensor, bs: int) -> float:
    """Milliseconds per image of the purifier alone (no gradient, batches of ``bs``; after one warm-up batch)."""
    purify = target.model.purify
    purify(x[:bs])
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    start = time.perf_counter()
    for i in range(0, len(x), bs):
        purify(x[i:i + bs])
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return 1000.0 * (time.perf_counter() - start) / max(len(x), 1)


def _evaluate(cfg: EvalConfig, device: torch.device, env) -> dict | None:
    output_dir = Path(cfg.output_dir)
    if env.is_main:  # before any attack: a run that cannot save its results stops now
        writable_dir(output_dir, "--output_dir")
    classifier, info = load_classifier(cfg, device)
    targets = [build_target(cfg, classifier, info, device, g) for g in cfg.gammas]  # errors before any attack
    dataset = eval_dataset(cfg, info.input_size, info.classes)
    found = getattr(dataset, "num_classes", None)
    if found is not None and found > info.num_classes:
        raise DataError(f"the evaluation data has {found} classes, but the classifier has {info.num_classes}")
    order = subset_indices(cfg, dataset)
    shard = order[env.rank::env.world_size]
    x, y = load_examples(dataset, shard, info.input_size)
    x, y = x.to(device), y.to(device)
    _check_kernels([t for t, _ in targets], x[:cfg.batch_size], y[:cfg.batch_size], env)
    reports = []
    for gamma, (target, description) in zip(cfg.gammas, targets):
        if DEFENSES[cfg.defense].load is not None:
            description["ms_per_image"] = purifier_cost(target, x, cfg.batch_size)
            torch.manual_seed(cfg.seed + env.rank)  # the purifier's noise draws during the attacks
        parts = gather(attack_shard(target, x, y, shard, cfg, info.num_classes), env)
        if not env.is_main:
            continue
        report = build_report(cfg, info, parts, order, env.world_size, defense=description,
                              settings=attack_settings(cfg, target))
        report["env"]["device"] = str(device)
        report["kernels"] = kernel_report()
        print(kernel_report_line(report["kernels"]))
        print(table(report))  # before anything is written: a write failure cannot lose it
        folder = output_dir / f"gamma_{gamma:g}" if cfg.gamma_sweep else output_dir
        report["files"] = save_report(report, folder)
        reports.append(report)
    if not env.is_main:
        return None
    if not cfg.gamma_sweep:
        return reports[0]
    sweep = gamma_sweep_summary(cfg, reports)
    print("gamma sweep: " + "; ".join(
        f"{g:g}: " + ", ".join(f"{k} {v[i]:.1f}%" for k, v in sweep["accuracy"].items())
        for i, g in enumerate(sweep["gammas"])))
    sweep["files"] = save_report(sweep, output_dir, "gamma_curve.json", plot=plot_gamma_curve)
    return sweep


def _check_kernels(targets: list[Target], x: torch.Tensor, y: torch.Tensor, env) -> None:
    """The dispatch check before the first attack (``ops/runcheck.py``; a no-op off CUDA): rank 0 runs a forward
    and an input-gradient backward of each model an attack differentiates; the other ranks then load its records."""

    def run_once() -> None:
        for target in targets:
            xb = x.clone().requires_grad_(True)
            F.cross_entropy(target.attack_model(xb), y).backward()
            target.attack_model.zero_grad(set_to_none=True)

    if env.is_main and len(x):
        check_unrecorded(run_once, compiled=False)
    if env.world_size > 1:
        torch.distributed.barrier()
        if not env.is_main:
            check_unrecorded(lambda: None, compiled=False)


def save_report(report: dict, folder: Path, name: str = "eval_results.json", plot=plot_curve) -> dict:
    """Write ``report`` as JSON and its plot into ``folder``; if that fails, write the JSON to a fallback file in
    the temporary folder and say where, so computed results are never lost. Returns the files written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        files = {"json": str(folder / name)}
        files["png"] = str(plot(report, folder))
        write_json({**report, "files": files}, folder, name)
        return files
    except OSError as e:
        fallback = Path(tempfile.mkstemp(prefix="mimir-fast-", suffix="-" + name)[1])
        fallback.write_text(json.dumps(report, indent=1) + "\n")
        print(f"mimir-fast: could not write {folder / name} ({e.strerror or e}); the results are in {fallback}",
              file=sys.stderr)
        return {"json": str(fallback)}


def gamma_sweep_summary(cfg: EvalConfig, reports: list[dict]) -> dict:
    """Clean and robust accuracy against γ from the per-γ reports (in the order of ``--gamma_sweep``)."""
    keys = list(reports[0]["accuracy"])
    # labels and draws from a randomised γ (γ = 0 is deterministic: one draw, no EOT) when there is one
    ref = max(reports, key=lambda r: r["eval_draws"])
    labels = {k: f"{k} [{ref['attacks'][k]['setting']}]" if k != "clean" else "clean" for k in keys}
    return {
        "gammas": [r["defense"]["gamma"] for r in reports],
        "eps": cfg.eps, "n_examples": reports[0]["n_examples"], "eval_draws": ref["eval_draws"],
        "denorm_stats": cfg.denorm_stats, "purifier": str(cfg.purifier), "checkpoint": str(cfg.resume),
        "accuracy": {k: [r["accuracy"][k] for r in reports] for k in keys},
        "accuracy_worst": {k: [r.get("accuracy_worst", r["accuracy"])[k] for r in reports] for k in keys},
        "labels": labels,
        "checks_failed": {f"{r['defense']['gamma']:g}": [c["name"] for c in r["checks"] if c["status"] == "fail"]
                          for r in reports},
        "reports": [r["files"]["json"] for r in reports],
        "config": cfg.to_dict(),
    }


def failed_checks(report: dict | None) -> list[str]:
    """The names of the integrity checks that failed in an evaluation's (or a γ sweep's) report."""
    if report is None:  # not rank 0
        return []
    if "checks_failed" in report:  # a γ sweep
        return sorted({f"{name} (gamma {g})" for g, names in report["checks_failed"].items() for name in names})
    return [c["name"] for c in report["checks"] if c["status"] == "fail"]
