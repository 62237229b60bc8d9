"""Evaluation outputs: ``eval_results.json``, ``robust_curve.png`` and a console table."""

from __future__ import annotations

import json
from pathlib import Path


def write_json(report: dict, output_dir: Path, name: str = "eval_results.json") -> Path:
    """Write ``report`` to ``output_dir/name`` atomically (a temporary file, then a rename)."""
    path = output_dir / name
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(path)
    return path


def plot_curve(report: dict, output_dir: Path) -> Path:
    """Robust accuracy (%) against ε (/255) for PGD-20, with PGD-100, PGD-MI and AutoAttack at the run's ε."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    xs = [p["eps"] for p in report["curve"]]
    ax.plot(xs, [p["accuracy"] for p in report["curve"]], "o-", label="PGD-20")
    markers = {"pgd100": ("s", "PGD-100"), "pgd-mi": ("^", "PGD-MI"), "aa": ("*", "AutoAttack"),
               "aa-rand": ("P", "AutoAttack rand"), "pgd20-gb": ("x", "PGD-20 gray-box (weaker)"),
               "aa-gb": ("X", "AutoAttack gray-box (weaker)")}
    for key, (marker, label) in markers.items():
        if key in report["accuracy"]:
            ax.plot([report["eps"]], [report["accuracy"][key]], marker, markersize=9, label=label)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("L∞ radius ε (/255)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"{report['model']}: {report['n_examples']} examples, clean {report['accuracy']['clean']:.1f}%",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = output_dir / "robust_curve.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def table(report: dict) -> str:
    """Accuracy per attack and the integrity checks, as plain text."""
    lines = [f"{report['model']} on {report['n_examples']} examples, eps {report['eps']:g}/255"]
    defense = report.get("defense") or {}
    if defense.get("name", "none") != "none":
        lines.append(f"  defence: {defense['summary']}")
    worst = report.get("accuracy_worst", {})
    for key, acc in report["accuracy"].items():
        if not key.startswith("curve:"):
            info = report["attacks"].get(key, {})
            secs = info.get("seconds")
            text = f"  {key:10s} {acc:6.2f}%"
            if key in worst:
                text += f" (worst of {report['eval_draws']} draws {worst[key]:.2f}%)"
            if secs is not None:
                text += f"   ({secs:.1f} s)"
            if info.get("setting"):
                text += f"   [{info['setting']}]"
            lines.append(text)
    curve = ", ".join(f"{p['eps']:g}: {p['accuracy']:.1f}%" for p in report["curve"])
    lines.append(f"  PGD-20 curve (eps/255: acc): {curve}")
    for check in report["checks"]:
        lines.append(f"  check {check['name']:26s} {check['status']:7s} {check['detail']}")
    return "\n".join(lines)


def accuracy_of(correct: list[int], draws: int = 1) -> float:
    """Mean accuracy in % from per-example counts of correct draws (bools for one draw)."""
    return 100.0 * sum(correct) / (len(correct) * draws) if correct else 0.0


def worst_accuracy_of(correct: list[int], draws: int) -> float:
    """Accuracy in % counting an example right only if every one of its ``draws`` passes was right."""
    return 100.0 * sum(c == draws for c in correct) / len(correct) if correct else 0.0


def plot_gamma_curve(sweep: dict, output_dir: Path) -> Path:
    """Clean and robust accuracy (%) against the De^3 noise level γ (/255): ``gamma_curve.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for key, values in sweep["accuracy"].items():
        style = "o-" if key == "clean" else ("s--" if key.endswith("-gb") else "^-")
        ax.plot(sweep["gammas"], values, style, label=sweep["labels"].get(key, key))
    ax.set_xlabel("De^3 noise level γ (/255)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"De^3, {sweep['n_examples']} examples, eps {sweep['eps']:g}/255; γ > 0: mean of "
                 f"{sweep['eval_draws']} seeded draws", fontsize=9)
    ax.legend(fontsize=6, loc="lower left")
    fig.tight_layout()
    path = output_dir / "gamma_curve.png"
    fig.savefig(path)
    plt.close(fig)
    return path
