"""``mimir-fast demo``: the whole pipeline on the embedded digits, compared under one fine-tuning budget.

Three rows, each fine-tuned with the same recipe (the ``digits`` fine-tuning preset: 10 epochs of PGD-2
adversarial training at ε = 8/255, step 2/255, same lr, batch and seed) and evaluated on the same examples:

1. MIMIR pretraining (the ``digits`` pretraining preset), then adversarial fine-tuning;
2. plain MAE pretraining (same preset, ``--method mae``), then adversarial fine-tuning;
3. adversarial training from scratch. Its layer-wise lr decay is 1.0 instead of 0.65: layer decay is MAE's
   device for pretrained trunks, and with it a scratch model's lower blocks barely train.

Every run starts fresh (no auto-resume). The table (clean, PGD-20 and AutoAttack accuracy, wall times, the
integrity checks) is printed and written to ``results.md`` and ``results.json``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import ConfigError


@dataclass(kw_only=True)
class DemoConfig:
    """The demo's few knobs; everything else comes from the digits presets."""

    output_dir: str = "output_dir/demo"
    """Where each run's folder, results.md and results.json go."""
    n_ex: int = 200
    """Validation examples evaluated (the first n_ex of the 297)."""
    attacks: str = "clean,pgd20,aa"
    """Attacks of the evaluation (see mimir-fast eval)."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu or cuda."""

    def __post_init__(self) -> None:
        if self.n_ex < 1:
            raise ConfigError(f"n_ex must be >= 1, got {self.n_ex}")


ROWS = (
    ("MIMIR pretraining", "mimir"),
    ("MAE pretraining", "mae"),
    ("adversarial training from scratch", None),
)


def run_demo(cfg: DemoConfig) -> list[dict]:
    """Run the three pipelines; returns one row per pipeline."""
    from .evaluate.config import EvalConfig
    from .evaluate.run import run_eval
    from .train.finetune import run_finetune
    from .train.presets import build_config, build_finetune_config
    from .train.pretrain import run_pretrain

    out = Path(cfg.output_dir)
    rows = []
    for label, method in ROWS:
        tag = method or "scratch"
        row: dict = {"start": label}
        t = time.perf_counter()
        finetune_from = None
        if method:
            pre = run_pretrain(build_config("digits", method=method, device=cfg.device, auto_resume=False,
                                            output_dir=str(out / f"pretrain_{tag}")))
            finetune_from = str(pre.checkpoint)
        row["pretrain_s"] = time.perf_counter() - t
        t = time.perf_counter()
        ft = run_finetune(build_finetune_config(
            "digits", finetune=finetune_from, layer_decay=0.65 if method else 1.0, device=cfg.device,
            auto_resume=False, output_dir=str(out / f"finetune_{tag}"),
        ))
        row["finetune_s"] = time.perf_counter() - t
        t = time.perf_counter()
        report = run_eval(EvalConfig(resume=str(ft.checkpoint), attacks=cfg.attacks, n_ex=cfg.n_ex,
                                     eps_curve="0,8,128", device=cfg.device, output_dir=str(out / f"eval_{tag}")))
        row["eval_s"] = time.perf_counter() - t
        row["accuracy"] = report["accuracy"]
        row["checks_passed"] = sum(c["status"] == "pass" for c in report["checks"])
        row["checks_failed"] = [c["name"] for c in report["checks"] if c["status"] == "fail"]
        row["checks_total"] = sum(c["status"] != "skipped" for c in report["checks"])
        rows.append(row)
    text = results_table(rows, cfg)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"config": asdict(cfg), "rows": rows}, indent=1) + "\n")
    print("\n" + text)
    return rows


def results_table(rows: list[dict], cfg: DemoConfig) -> str:
    names = {"clean": "clean", "pgd20": "PGD-20", "aa": "AutoAttack", "pgd100": "PGD-100", "pgd-mi": "PGD-MI",
             "aa-rand": "AA rand"}
    keys = [k for k in cfg.attacks.split(",") if k in names]
    head = ["start"] + [f"{names[k]} (%)" for k in keys] + ["pretrain (s)", "fine-tune (s)", "eval (s)",
                                                             "total (s)", "checks"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        total = r["pretrain_s"] + r["finetune_s"] + r["eval_s"]
        checks = f"{r['checks_passed']}/{r['checks_total']} pass"
        if r["checks_failed"]:
            checks += f" (failed: {', '.join(r['checks_failed'])})"
        cells = [r["start"]] + [f"{r['accuracy'][k]:.1f}" for k in keys] + [
            f"{r['pretrain_s']:.0f}", f"{r['finetune_s']:.0f}", f"{r['eval_s']:.0f}", f"{total:.0f}", checks]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nDigits validation set, first {cfg.n_ex} images; L∞ ε = 8/255; fp32 evaluation.")
    return "\n".join(lines)
