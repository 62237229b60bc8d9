"""The demo's plan: every run's config built (and so checked) before anything runs, as rows (``RowPlan``) and as
runs with the checkpoints each takes from earlier ones (``Task``)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from . import config as recipes
from .config import SUBSET_ATTACKS, DemoConfig, parse_numbers

PENDING = "pending"  # stands in a planned config for a checkpoint that an earlier run of the plan writes

ROWS = (
    ("MIMIR pretraining", "mimir"),
    ("MAE pretraining", "mae"),
    ("adversarial training from scratch", "scratch"),
)

PURIFIER_ROWS = (
    ("NIM pretraining + De^3 (γ = {gamma:g})", "de3"),
    ("MAEP purifier + standard classifier", "maep"),
)


def purifier_attacks(attacks: str, randomized: bool) -> str:
    """The demo's attacks for a purifier row: AutoAttack rand for a randomised defence, plus gray-box PGD-20."""
    keys = [k.strip() for k in attacks.split(",") if k.strip()]
    if randomized:
        keys = ["aa-rand" if k == "aa" else k for k in keys]
    if "pgd20" in keys:
        keys.append("pgd20-gb")
    return ",".join(dict.fromkeys(keys))


@dataclass
class RowPlan:
    """One row of one seed, every config built (and so validated) before anything runs. Checkpoints that an
    earlier run writes are ``PENDING`` here; ``plan_tasks`` says which run fills each."""

    label: str
    tag: str
    seed: int
    pretrain: list = field(default_factory=list)
    """PretrainConfigs, run in order (MAEP: stage 1, then stage 2 from it)."""
    finetune: object = None
    """The FinetuneConfig."""
    evals: dict = field(default_factory=dict)
    """EvalConfigs: ``full`` (the n_ex images), ``aa`` (the AutoAttack subset; absent without AutoAttack) and, for
    De^3, ``sweep``."""
    purifier: str | None = None
    """The purifier row's defence (de3, maep); None for a plain classifier."""
    encoder: object = None
    """MAEP's row: the MAE pretraining (``digits`` preset) whose encoder its standard classifier starts from."""


def _row_dir(cfg: DemoConfig, seed: int) -> Path:
    out = Path(cfg.output_dir)
    return out if cfg.seeds == 1 else out / f"seed_{seed}"


def _eval_configs(cfg: DemoConfig, out: Path, tag: str, attacks: str, seed: int, **defense) -> dict:
    """The full-set and AutoAttack-subset evaluations of one row."""
    from ..evaluate.config import EvalConfig

    keys = [k for k in attacks.split(",") if k]
    full = [k for k in keys if k not in SUBSET_ATTACKS]
    subset = [k for k in keys if k in SUBSET_ATTACKS]
    common = dict(resume=PENDING, device=cfg.device, seed=seed, **defense)
    evals = {"full": EvalConfig(attacks=",".join(full), n_ex=cfg.n_images, eps_curve=cfg.eps_curve,
                                output_dir=str(out / f"eval_{tag}"), **common)}
    if subset:
        evals["aa"] = EvalConfig(attacks=",".join(["clean", *subset]), n_ex=cfg.aa_n_ex, eps_curve="",
                                 output_dir=str(out / f"eval_{tag}_aa"), **common)
    return evals


def plan_rows(cfg: DemoConfig) -> list[RowPlan]:
    """Every run of the demo in order, seeds outermost; raises ConfigError before anything has run."""
    from ..methods import build_config, build_finetune_config

    plans = []
    for seed in range(cfg.seeds):
        out = _row_dir(cfg, seed)
        run = dict(device=cfg.device, auto_resume=False, seed=seed)
        for label, tag in ROWS:
            pre = [] if tag == "scratch" else [build_config("digits", **{**recipes.PRETRAIN_RECIPE, "method": tag},
                                                            **run, output_dir=str(out / f"pretrain_{tag}"))]
            recipe = {**recipes.FINETUNE_RECIPE, **(recipes.SCRATCH_RECIPE if tag == "scratch" else {})}
            ft = build_finetune_config("digits", **recipe, **run, output_dir=str(out / f"finetune_{tag}"),
                                       finetune=None if tag == "scratch" else PENDING)
            plans.append(RowPlan(label, tag, seed, pre, ft, _eval_configs(cfg, out, tag, cfg.attacks, seed=seed)))
        if cfg.purifiers:
            plans += _purifier_plans(cfg, out, run, seed)
    return plans


def _purifier_plans(cfg: DemoConfig, out: Path, run: dict, seed: int) -> list[RowPlan]:
    from ..methods import build_config, build_finetune_config

    de3_label, maep_label = (label.format(gamma=cfg.gamma) for label, _ in PURIFIER_ROWS)
    de3 = RowPlan(de3_label, "de3", seed, purifier="de3")
    de3.pretrain = [build_config("digits", method="nim", **run, output_dir=str(out / "pretrain_nim"))]
    de3.finetune = build_finetune_config("digits", method="de3", finetune=PENDING, purifier=PENDING, **run,
                                         output_dir=str(out / "finetune_de3"))
    de3.evals = _eval_configs(cfg, out, "de3", purifier_attacks(cfg.attacks, cfg.gamma > 0), seed=seed,
                              defense="de3", purifier=PENDING, gamma=cfg.gamma)
    if parse_numbers("gamma_sweep", cfg.gamma_sweep):
        from ..evaluate.config import EvalConfig

        de3.evals["sweep"] = EvalConfig(resume=PENDING, defense="de3", purifier=PENDING, gamma_sweep=cfg.gamma_sweep,
                                        attacks="clean,pgd20,pgd20-gb", n_ex=cfg.n_images, eps_curve="8",
                                        device=cfg.device, seed=seed, output_dir=str(out / "gamma_sweep"))
    maep = RowPlan(maep_label, "maep", seed, purifier="maep")
    maep.pretrain = [
        build_config("digits", method="maep", **run, output_dir=str(out / "pretrain_maep")),
        build_config("digits", method="maep", maep_stage="lora", maep_init=PENDING,
                     epochs=cfg.maep_lora_epochs, warmup_epochs=0.0, **run, output_dir=str(out / "pretrain_maep_lora")),
    ]
    maep.encoder = build_config("digits", method="mae", **run, output_dir=str(out / "pretrain_mae_classifier"))
    maep.finetune = build_finetune_config("digits", method="clean", finetune=PENDING, **run,
                                          output_dir=str(out / "finetune_clean"))
    maep.evals = _eval_configs(cfg, out, "maep", purifier_attacks(cfg.attacks, False), seed=seed, defense="maep",
                               purifier=PENDING)
    return [de3, maep]


PHASES = ("pretrain", "finetune", "eval", "sweep")  # also the scheduling priority: training first


@dataclass
class Task:
    """One run of the plan: ``kind`` is a ``Runners`` field; ``needs`` maps a config field to the key of the task
    whose checkpoint fills it."""

    key: str
    kind: str
    config: object
    row: int
    phase: str
    needs: dict = field(default_factory=dict)
    order: int = 0


def plan_tasks(plans: list[RowPlan]) -> list[Task]:
    """The runs of every planned row, with what each takes from earlier ones (in plan order)."""
    tasks: list[Task] = []
    for i, plan in enumerate(plans):
        tag = f"seed{plan.seed}/{plan.tag}"
        pre = [f"{tag}/pretrain{j}" for j in range(len(plan.pretrain))]
        for j, cfg in enumerate(plan.pretrain):
            needs = {"maep_init": pre[0]} if flag_of(cfg, "maep_init") == PENDING else {}
            tasks.append(Task(pre[j], "pretrain", cfg, i, "pretrain", needs))
        needs = {}
        if plan.encoder is not None:
            tasks.append(Task(f"{tag}/encoder", "pretrain", plan.encoder, i, "pretrain"))
        if plan.finetune.finetune == PENDING:
            needs["finetune"] = f"{tag}/encoder" if plan.encoder is not None else pre[0]
        if flag_of(plan.finetune, "purifier") == PENDING:
            needs["purifier"] = pre[0]
        tasks.append(Task(f"{tag}/finetune", "finetune", plan.finetune, i, "finetune", needs))
        for name, cfg in plan.evals.items():
            needs = {"resume": f"{tag}/finetune", **({"purifier": pre[-1]} if plan.purifier else {})}
            tasks.append(Task(f"{tag}/eval_{name}", "evaluate", cfg, i, "sweep" if name == "sweep" else "eval",
                              needs))
    for n, task in enumerate(tasks):
        task.order = n
    return tasks


def flag_of(config, flag: str):
    """The value of CLI flag ``flag`` in a run or eval config (a shared field or its method's option), else None."""
    return config.to_dict().get(flag)  # the flat view checkpoints and config.json store


def with_flags(config, values: dict):
    """``config`` with the CLI flags in ``values`` set (shared fields, or its method's options)."""
    shared = {f.name for f in fields(config)}
    direct = {k: v for k, v in values.items() if k in shared}
    options = getattr(config, "options", None)
    own = {options.flags()[k]: v for k, v in values.items() if k not in shared}
    if own:
        direct["options"] = replace(options, **own)
    return replace(config, **direct)
