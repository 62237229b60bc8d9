"""The performance targets on one H100/H200 and their pass/fail, from the step and loader measurements.

Each target is read from ``bench.step`` records (``kind: step``) of the target configuration, ViT-B/16 at
224 px with MIMIR's decoder, B = 256, bf16, PGD-1 at mask ratio 0.75 (``imagenet_vit_b_b256``): MFU, the
reference-style speedup and the loader's rate from the compiled step; the masking speedup and PGD-K scaling
from a pair of compiled steps if measured, else of eager ones; and from ``bench.loader`` records. A target whose
measurement is missing has ``value`` and ``pass`` None and says why.
"""

from __future__ import annotations

from dataclasses import dataclass

TARGET_CONFIG = "imagenet_vit_b_b256"
VIT_L_CONFIG = "imagenet_vit_l_b128"


@dataclass(frozen=True)
class Target:
    """One performance target."""

    name: str
    """Key in the report (and in ``bench/step_summary.py``)."""
    goal: str
    """The target in words."""
    threshold: float
    """The bound the value is held to."""
    higher_is_better: bool
    """Pass when value ≥ threshold (else when value ≤ threshold)."""

    def verdict(self, value: float | None) -> bool | None:
        if value is None:
            return None
        return value >= self.threshold if self.higher_is_better else value <= self.threshold


TARGETS = (
    Target("mfu", "≥ 45% MFU (ViT-B/16, B=256, bf16, PGD-1)", 0.45, True),
    Target("masking_speedup", "masking speedup ≥ 3.7× (img/s at mask ratio 0.75 over 0)", 3.7, True),
    Target("pgd10_deviation_pct", "PGD-10 / PGD-1 step time within 10% of (2K+3)/5 = 4.6", 10.0, False),
    Target("baseline_speedup", "≥ 4× the reference-style step", 4.0, True),
    Target("dali_headroom", "DALI loader img/s ≥ the step's img/s", 1.0, True),
    Target("vit_l_memory_gb", "ViT-L/16 B=128 step within 80 GB peak memory", 80.0, False),
)
"""Every target, in report order."""

BY_NAME = {t.name: t for t in TARGETS}


def point(steps: list[dict], config: str = TARGET_CONFIG, *, mode: str = "fast", compiled: bool = True,
           attack_steps: int = 1, mask_ratio: float = 0.75) -> dict | None:
    """The step record of one point (compiled: any compile mode but off), or None."""
    for r in steps:
        if (r.get("kind") == "step" and "error" not in r and r.get("config") == config and r.get("mode") == mode
                and r.get("method", "mimir") == "mimir" and r.get("attack_steps") == attack_steps
                and abs(r.get("mask_ratio", -1) - mask_ratio) < 1e-9
                and (mode == "reference" or (r.get("compile") != "off") == compiled)):
            return r
    return None


def evaluate(steps: list[dict], loader: list[dict] | None = None, *, loader_skipped: str = "") -> list[dict]:
    """Every target's record ``{name, goal, value, pass, detail}`` from the measurements at hand.

    Args:
        steps: ``bench.step`` step records (any order; failed points carry ``error`` and are ignored).
        loader: ``bench.loader`` records, if the loader was measured.
        loader_skipped: why the loader was not measured (e.g. DALI not installed), for its detail.
    """
    base = point(steps)
    values: dict[str, tuple[float | None, str]] = {}
    if base is None:
        missing = f"no measured {TARGET_CONFIG} PGD-1 step at mask ratio 0.75"
        values = {name: (None, missing) for name in ("mfu", "masking_speedup", "pgd10_deviation_pct",
                                                     "baseline_speedup", "dali_headroom")}
    else:
        where = f"{base['compile']}, {base['median_ms']:.1f} ms, {base['img_per_sec']:.0f} img/s"
        values["mfu"] = (base.get("mfu"), f"{where}; counted FLOPs over the bf16 dense peak"
                         if base.get("mfu") is not None else "no peak FLOP/s known for this device")
        values["masking_speedup"] = (None, "no step measured at mask ratio 0")
        values["pgd10_deviation_pct"] = (None, "no PGD-10 step measured")
        for compiled in (False, True):  # a compiled pair wins over an eager one
            one, zero, k10 = (point(steps, compiled=compiled, **kw)
                              for kw in ({}, {"mask_ratio": 0.0}, {"attack_steps": 10}))
            how = one["compile"] if one else ""
            if one and zero:
                values["masking_speedup"] = (one["img_per_sec"] / zero["img_per_sec"], f"{how}: mask 0 "
                                             f"{zero['img_per_sec']:.0f} img/s, 0.75 {one['img_per_sec']:.0f} img/s")
            if one and k10:
                ratio = k10["median_ms"] / one["median_ms"]
                values["pgd10_deviation_pct"] = (abs(100 * (ratio / ((2 * 10 + 3) / 5) - 1)),
                                                 f"{how}: PGD-10 / PGD-1 = {ratio:.2f} vs model 4.60")
        ref = point(steps, mode="reference")
        values["baseline_speedup"] = ((ref["median_ms"] / base["median_ms"], f"reference-style {ref['median_ms']:.1f} "
                                       f"ms vs {base['median_ms']:.1f} ms") if ref
                                      else (None, "no reference-style step measured"))
        dali = [r for r in loader or [] if r.get("backend") == "dali" and r.get("img_per_sec")]
        if dali:
            values["dali_headroom"] = (dali[0]["img_per_sec"] / base["img_per_sec"],
                                       f"DALI {dali[0]['img_per_sec']:.0f} img/s vs step {base['img_per_sec']:.0f}")
        else:
            values["dali_headroom"] = (None, loader_skipped or "DALI loader not measured")
    vit_l = next((r for r in steps if r.get("kind") == "step" and "error" not in r and r.get("config") == VIT_L_CONFIG
                  and r.get("peak_memory_gb") is not None), None)
    values["vit_l_memory_gb"] = ((vit_l["peak_memory_gb"], f"compile {vit_l['compile']}") if vit_l
                                 else (None, "no ViT-L B=128 step measured"))
    out = []
    for t in TARGETS:
        value, detail = values[t.name]
        out.append({"name": t.name, "goal": t.goal, "value": value, "pass": t.verdict(value), "detail": detail})
    return out


def not_measured(why: str) -> list[dict]:
    """Every target, unmeasured, with one reason (e.g. no CUDA GPU)."""
    return [{"name": t.name, "goal": t.goal, "value": None, "pass": None, "detail": why} for t in TARGETS]


def line(target: dict) -> str:
    """``PASS  mfu 0.471  (≥ 45% MFU ...)``: one printed line per target."""
    verdict = {True: "PASS", False: "FAIL", None: "n/a "}[target["pass"]]
    value = "-" if target["value"] is None else f"{target['value']:.3g}"
    return f"{verdict}  {target['name']:20s} {value:>8s}  {target['goal']}  ({target['detail']})"
