"""The integrity checks that run with every evaluation (signs of a broken evaluation or of gradient masking).

Each returns ``{"name", "status", "detail"}`` with status ``pass``, ``fail`` or ``skipped``; docs/finetuning.md
lists what each one asserts. Against a randomised defence the attacks themselves are random, so
``monotone_in_eps`` and ``autoattack_le_pgd`` allow a rise of two binomial standard errors, 2·sqrt(p(1 − p)/n).
"""

from __future__ import annotations

import math

from .config import LARGE_EPS, EvalConfig
from .suite import curve_key

LARGE_EPS_MAX_ACC = 5.0  # % at the largest curve radius
ZERO_GRAD_MAX_FRACTION = 0.10
SQUARE_MAX_GAIN = 0.2  # percentage points


def _result(name: str, ok: bool | None, detail: str) -> dict:
    return {"name": name, "status": "skipped" if ok is None else ("pass" if ok else "fail"), "detail": detail}


def sampling_slack(acc: float, n: int, randomized: bool) -> float:
    """Percentage points a randomised evaluation may rise by chance: two binomial standard errors at ``acc``."""
    if not randomized or n == 0:
        return 0.0
    p = acc / 100
    return 200.0 * math.sqrt(p * (1 - p) / n)


def run_checks(cfg: EvalConfig, accuracy: dict[str, float], per_example: dict[str, list[int]], n: int,
               zero_grad: int, aa_after: dict[str, list[tuple[str, float]]],
               max_perturbation: dict[str, float], randomized: bool = False) -> list[dict]:
    """``accuracy`` in %, ``per_example`` counts of correct draws by key, ``aa_after`` accuracy (%) after each
    AutoAttack attack; ``randomized``: the defence draws noise (see the module docstring)."""
    checks = []
    zero = curve_key(0.0)
    if zero in per_example:
        changed = sum(a != b for a, b in zip(per_example[zero], per_example["clean"]))
        checks.append(_result("eps0_equals_clean", changed == 0,
                              f"{changed} of {n} predictions differ between clean and PGD at eps 0"))
    else:
        checks.append(_result("eps0_equals_clean", None, "eps_curve has no 0"))

    curve = sorted((e, accuracy[curve_key(e)]) for e in cfg.curve)
    rises = [(a, b) for (a, b) in zip(curve, curve[1:]) if b[1] > a[1] + sampling_slack(b[1], n, randomized)]
    checks.append(_result(
        "monotone_in_eps", None if len(curve) < 2 else not rises,
        "non-increasing" if not rises else "; ".join(f"{a[1]:.2f}% at {a[0]:g} < {b[1]:.2f}% at {b[0]:g}"
                                                      for a, b in rises),
    ))

    pgds = {k: accuracy[k] for k in ("pgd20", "pgd100") if k in accuracy}
    aas = {k: accuracy[k] for k in ("aa", "aa-rand") if k in accuracy}
    if aas and pgds:
        worst = min(pgds.values())
        ok = all(v <= worst + sampling_slack(v, n, randomized) for v in aas.values())
        names = {"aa": "AutoAttack", "aa-rand": "AutoAttack rand"}
        detail = ", ".join(f"{names[k]} {v:.2f}%" for k, v in aas.items()) + f" vs PGD {worst:.2f}%"
        checks.append(_result("autoattack_le_pgd", ok, detail))
    else:
        checks.append(_result("autoattack_le_pgd", None, "needs aa or aa-rand, and pgd20 or pgd100"))

    big = max(cfg.curve, default=0.0)
    if big >= LARGE_EPS:
        acc = accuracy[curve_key(big)]
        checks.append(_result("large_eps_breaks_model", acc <= LARGE_EPS_MAX_ACC,
                              f"{acc:.2f}% accuracy at eps {big:g}/255 (should be <= {LARGE_EPS_MAX_ACC:g}%)"))
    else:
        checks.append(_result("large_eps_breaks_model", None, f"eps_curve has no radius >= {LARGE_EPS:g}"))

    fraction = zero_grad / n if n else 0.0
    checks.append(_result("gradients_flow", fraction <= ZERO_GRAD_MAX_FRACTION,
                          f"{zero_grad} of {n} examples have an all-zero input gradient"))

    if "aa" in aa_after and len(aa_after["aa"]) == 4:
        before, after = aa_after["aa"][2][1], aa_after["aa"][3][1]
        checks.append(_result("square_adds_little", before - after <= SQUARE_MAX_GAIN,
                              f"Square lowered robust accuracy by {before - after:.2f} points after APGD and FAB"))
    else:
        checks.append(_result("square_adds_little", None, "needs aa (standard)"))

    over = {k: v for k, v in max_perturbation.items() if v > _eps_of(cfg, k) + 1e-6}
    checks.append(_result("perturbation_within_eps", not over,
                          "all within eps" if not over else ", ".join(f"{k}: {v:.4f}" for k, v in over.items())))
    return checks


def _eps_of(cfg: EvalConfig, key: str) -> float:
    return float(key.split(":", 1)[1]) / 255 if key.startswith("curve:") else cfg.eps / 255
