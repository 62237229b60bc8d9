"""``mimir-fast demo``: the whole pipeline on the embedded digits, compared under one fine-tuning budget.

Three rows, each fine-tuned with the same recipe (the ``digits`` fine-tuning preset: 10 epochs of PGD-2
adversarial training at ε = 8/255, step 2/255, same lr, batch and seed) and evaluated on the same examples:

1. MIMIR pretraining (the ``digits`` pretraining preset), then adversarial fine-tuning;
2. plain MAE pretraining (same preset, ``--method mae``), then adversarial fine-tuning;
3. adversarial training from scratch. Its layer-wise lr decay is 1.0 instead of 0.65: layer decay is MAE's
   device for pretrained trunks, and with it a scratch model's lower blocks barely train.

``--purifiers`` (``make demo-purifiers``) adds the two test-time purifiers on the same digits, examples and ε:

4. NIM pretraining (``--method nim``), a classifier fine-tuned from the NIM encoder on De^3 reconstructions
   (``finetune --method de3``, σ ~ U(0, 30)), evaluated through De^3 at γ = ``gamma``; then a γ sweep
   (``gamma_sweep``: clean and robust accuracy against γ, ``gamma_sweep/gamma_curve.{json,png}``);
5. MAEP (stage 1 ``--method maep`` and stage 2, the decoder's LoRA fine-tune at mask ratio 0) in front of a
   standard classifier (``finetune --method clean`` from row 2's MAE encoder: MAEP defends a non-robust model).

Every row is attacked with full gradients through whatever it is (PGD-20, and AutoAttack: ``rand`` with EOT-20
for the randomised De^3, standard otherwise); the purifier rows also get the gray-box PGD-20 (attack on the
classifier alone; non-adaptive, weaker), and report the purifier's own inference cost per image.

Every run starts fresh (no auto-resume). The table (accuracies, wall times, the integrity checks) is printed and
written to ``results.md`` and ``results.json``.
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
    """Attacks of the evaluation (see mimir-fast eval); purifier rows use aa-rand for De^3 and add pgd20-gb."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu or cuda."""
    purifiers: bool = False
    """Also run the NIM/De^3 and MAEP rows (and the γ sweep)."""
    gamma: float = 70.0
    """De^3 noise level of the NIM/De^3 row (/255; NIM's default test-time 70)."""
    gamma_sweep: str = "0,70,140"
    """γ values of the De^3 sweep (clean and PGD-20 at ε = 8/255); empty: no sweep."""
    maep_lora_epochs: int = 5
    """Epochs of MAEP's stage 2 (LoRA on the decoder at mask ratio 0)."""

    def __post_init__(self) -> None:
        if self.n_ex < 1:
            raise ConfigError(f"n_ex must be >= 1, got {self.n_ex}")
        if not self.gamma >= 0:
            raise ConfigError(f"gamma must be >= 0 (De^3 noise std in /255 units), got {self.gamma}")
        if self.maep_lora_epochs < 1:
            raise ConfigError(f"maep_lora_epochs must be >= 1, got {self.maep_lora_epochs}")


ROWS = (
    ("MIMIR pretraining", "mimir"),
    ("MAE pretraining", "mae"),
    ("adversarial training from scratch", None),
)


def purifier_attacks(attacks: str, randomized: bool) -> str:
    """The demo's attacks for a purifier row: AutoAttack rand for a randomised defence, plus gray-box PGD-20."""
    keys = [k.strip() for k in attacks.split(",") if k.strip()]
    if randomized:
        keys = ["aa-rand" if k == "aa" else k for k in keys]
    if "pgd20" in keys:
        keys.append("pgd20-gb")
    return ",".join(dict.fromkeys(keys))


def _checks(row: dict, report: dict) -> None:
    row["checks_passed"] = sum(c["status"] == "pass" for c in report["checks"])
    row["checks_failed"] = [c["name"] for c in report["checks"] if c["status"] == "fail"]
    row["checks_total"] = sum(c["status"] != "skipped" for c in report["checks"])


def run_demo(cfg: DemoConfig) -> list[dict]:
    """Run the pipelines; returns one row per pipeline."""
    from .evaluate.config import EvalConfig
    from .evaluate.run import run_eval
    from .methods import build_config, build_finetune_config, run_finetune, run_pretrain

    out = Path(cfg.output_dir)
    rows = []
    pretrained: dict[str, str] = {}
    for label, method in ROWS:
        tag = method or "scratch"
        row: dict = {"start": label}
        t = time.perf_counter()
        finetune_from = None
        if method:
            pre = run_pretrain(build_config("digits", method=method, device=cfg.device, auto_resume=False,
                                            output_dir=str(out / f"pretrain_{tag}")))
            finetune_from = pretrained[method] = str(pre.checkpoint)
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
        _checks(row, report)
        rows.append(row)
    if cfg.purifiers:
        rows.append(_de3_row(cfg, out, run_pretrain, run_finetune, run_eval, build_config, build_finetune_config,
                             EvalConfig))
        rows.append(_maep_row(cfg, out, pretrained.get("mae"), run_pretrain, run_finetune, run_eval, build_config,
                              build_finetune_config, EvalConfig))
    text = results_table(rows, cfg)
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"config": asdict(cfg), "rows": rows}, indent=1) + "\n")
    print("\n" + text)
    return rows


def _purifier_eval(row: dict, report: dict) -> None:
    row["accuracy"] = report["accuracy"]
    row["accuracy_worst"] = report.get("accuracy_worst", {})
    row["purifier_ms_per_image"] = report["defense"]["ms_per_image"]
    row["defense"] = report["defense"]["summary"]
    row["settings"] = {k: v["setting"] for k, v in report["attacks"].items()}
    _checks(row, report)


def _de3_row(cfg: DemoConfig, out: Path, run_pretrain, run_finetune, run_eval, build_config, build_finetune_config,
             EvalConfig) -> dict:
    row: dict = {"start": f"NIM pretraining + De^3 (γ = {cfg.gamma:g})", "purifier": "de3"}
    t = time.perf_counter()
    nim = str(run_pretrain(build_config("digits", method="nim", device=cfg.device, auto_resume=False,
                                        output_dir=str(out / "pretrain_nim"))).checkpoint)
    row["pretrain_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ft = run_finetune(build_finetune_config("digits", method="de3", finetune=nim, purifier=nim, device=cfg.device,
                                            auto_resume=False, output_dir=str(out / "finetune_de3")))
    row["finetune_s"] = time.perf_counter() - t
    t = time.perf_counter()
    randomized = cfg.gamma > 0
    report = run_eval(EvalConfig(resume=str(ft.checkpoint), defense="de3", purifier=nim, gamma=cfg.gamma,
                                 attacks=purifier_attacks(cfg.attacks, randomized), n_ex=cfg.n_ex,
                                 eps_curve="0,8,128", device=cfg.device, output_dir=str(out / "eval_de3")))
    row["eval_s"] = time.perf_counter() - t
    _purifier_eval(row, report)
    if cfg.gamma_sweep.strip():
        t = time.perf_counter()
        sweep = run_eval(EvalConfig(resume=str(ft.checkpoint), defense="de3", purifier=nim,
                                    gamma_sweep=cfg.gamma_sweep, attacks="clean,pgd20,pgd20-gb", n_ex=cfg.n_ex,
                                    eps_curve="8", device=cfg.device, output_dir=str(out / "gamma_sweep")))
        row["gamma_sweep"] = {"gammas": sweep["gammas"], "accuracy": sweep["accuracy"], "files": sweep["files"],
                              "seconds": time.perf_counter() - t}
    return row


def _maep_row(cfg: DemoConfig, out: Path, mae_ckpt: str | None, run_pretrain, run_finetune, run_eval, build_config,
              build_finetune_config, EvalConfig) -> dict:
    row: dict = {"start": "MAEP purifier + standard classifier", "purifier": "maep"}
    t = time.perf_counter()
    stage1 = run_pretrain(build_config("digits", method="maep", device=cfg.device,
                                       auto_resume=False, output_dir=str(out / "pretrain_maep")))
    stage2 = run_pretrain(build_config("digits", method="maep", maep_stage="lora",
                                       maep_init=str(stage1.checkpoint), epochs=cfg.maep_lora_epochs,
                                       warmup_epochs=0.0, device=cfg.device, auto_resume=False,
                                       output_dir=str(out / "pretrain_maep_lora")))
    maep = str(stage2.checkpoint)
    row["pretrain_s"] = time.perf_counter() - t
    t = time.perf_counter()
    ft = run_finetune(build_finetune_config("digits", method="clean", finetune=mae_ckpt, device=cfg.device,
                                            auto_resume=False, output_dir=str(out / "finetune_clean")))
    row["finetune_s"] = time.perf_counter() - t
    t = time.perf_counter()
    report = run_eval(EvalConfig(resume=str(ft.checkpoint), defense="maep", purifier=maep,
                                 attacks=purifier_attacks(cfg.attacks, False), n_ex=cfg.n_ex, eps_curve="0,8,128",
                                 device=cfg.device, output_dir=str(out / "eval_maep")))
    row["eval_s"] = time.perf_counter() - t
    _purifier_eval(row, report)
    return row


def results_table(rows: list[dict], cfg: DemoConfig) -> str:
    names = {"clean": "clean", "pgd20": "PGD-20", "aa": "AutoAttack", "pgd100": "PGD-100", "pgd-mi": "PGD-MI",
             "aa-rand": "AA rand"}
    keys = [k for k in cfg.attacks.split(",") if k in names]
    purifiers = any("purifier" in r for r in rows)
    head = ["start"] + [f"{names[k]} (%)" for k in keys]
    if purifiers:
        head += ["PGD-20 gray-box (%)"]
    head += ["pretrain (s)", "fine-tune (s)", "eval (s)", "total (s)"]
    if purifiers:
        head += ["purifier (ms/img)"]
    head += ["checks"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        total = r["pretrain_s"] + r["finetune_s"] + r["eval_s"]
        checks = f"{r['checks_passed']}/{r['checks_total']} pass"
        if r["checks_failed"]:
            checks += f" (failed: {', '.join(r['checks_failed'])})"
        cells = [r["start"]]
        for k in keys:
            if k == "aa" and "aa" not in r["accuracy"] and "aa-rand" in r["accuracy"]:
                cells.append(f"{r['accuracy']['aa-rand']:.1f} (rand)")
            else:
                cells.append(f"{r['accuracy'][k]:.1f}" if k in r["accuracy"] else "–")
        if purifiers:
            cells.append(f"{r['accuracy']['pgd20-gb']:.1f}" if "pgd20-gb" in r["accuracy"] else "–")
        cells += [f"{r['pretrain_s']:.0f}", f"{r['finetune_s']:.0f}", f"{r['eval_s']:.0f}", f"{total:.0f}"]
        if purifiers:
            cells.append(f"{r['purifier_ms_per_image']:.2f}" if "purifier_ms_per_image" in r else "–")
        cells.append(checks)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append(f"\nDigits validation set, first {cfg.n_ex} images; L∞ ε = 8/255; fp32 evaluation.")
    if purifiers:
        lines.append("Purifier rows: full-gradient attacks through purifier and classifier (De^3: EOT-20 per step, "
                     "AutoAttack rand, accuracy the mean of 10 seeded noise draws per example); gray-box = PGD-20 on "
                     "the classifier alone, then purified (non-adaptive, so weaker). Purifier cost: forward only, "
                     "batch 250, on the evaluation device.")
        sweep = next((r["gamma_sweep"] for r in rows if "gamma_sweep" in r), None)
        if sweep:
            cells = "; ".join(f"γ {g:g}: clean {c:.1f}, PGD-20 {p:.1f}, gray-box {b:.1f}" for g, c, p, b in zip(
                sweep["gammas"], sweep["accuracy"]["clean"], sweep["accuracy"]["pgd20"],
                sweep["accuracy"]["pgd20-gb"]))
            lines.append(f"De^3 γ sweep ({sweep['seconds']:.0f} s): {cells}.")
    return "\n".join(lines)
