"""The step benchmark's derived figures (summary records) and its printed lines and table.

Summary records (``kind: summary``), one per configuration and comparison:

- ``masking_speedup``: img/s at a mask ratio over img/s at the lowest one measured (0), beside the counted FLOP
  ratio of the two steps;
- ``pgd_scaling``: step time t(K)/t(K₀) of PGD-K over the smallest K measured (1), beside the (2K+3)F model's
  (2K+3)/(2K₀+3) and the counted FLOP ratio; ``deviation_pct`` = 100·(measured/model − 1);
- ``baseline_speedup``: reference-style step time over this project's at the same configuration;
- ``compile_speedup``: eager step time over compiled, with the compile time;
- ``step_targets``: the issue's single-GPU targets that a step record can show (MFU, ViT-L memory).

``target`` and ``meets_target`` are set where the issue states a target for that configuration (the figures on
other configurations, e.g. the CPU stand-ins, have none).
"""

from __future__ import annotations

from collections import defaultdict

from mimir_fast.doctor.targets import TARGET_CONFIG
from mimir_fast.doctor.targets import TARGETS as _TARGETS

TARGETS = {t.name: t.threshold for t in _TARGETS}
"""The targets on one H100 (ViT-B/16, 224 px, MIMIR decoder, B = 256, bf16, PGD-1), defined with
``mimir-fast doctor``'s (mimir_fast/doctor/targets.py)."""


def _by_config(records: list[dict]) -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for r in records:
        groups[r["config"]].append(r)
    return groups


def _target(config: str, name: str, value: float, higher_is_better: bool = True) -> dict:
    if config != TARGET_CONFIG and not (name == "vit_l_memory_gb" and config == "imagenet_vit_l_b128"):
        return {}
    target = TARGETS[name]
    return {"target": target, "meets_target": value >= target if higher_is_better else value <= target}


def masking(records: list[dict]) -> list[dict]:
    out = []
    for config, rs in _by_config(records).items():
        base = min(rs, key=lambda r: r["mask_ratio"])
        for r in rs:
            if r is base:
                continue
            speedup = r["img_per_sec"] / base["img_per_sec"]
            out.append({
                "kind": "summary", "summary": "masking_speedup", "config": config, "decoder": r["decoder"],
                "model": r["model"], "attack_steps": r["attack_steps"], "mode": r["mode"], "compile": r["compile"],
                "precision": r["precision"], "mask_ratio_base": base["mask_ratio"], "mask_ratio": r["mask_ratio"],
                "img_per_sec_base": base["img_per_sec"], "img_per_sec": r["img_per_sec"], "speedup": speedup,
                "flop_ratio": base["step_gflop"] / r["step_gflop"],
                **(_target(config, "masking_speedup", speedup) if r["mask_ratio"] == 0.75 else {}),
            })
    return out


def pgd(records: list[dict]) -> list[dict]:
    out = []
    for config, rs in _by_config(records).items():
        base = min(rs, key=lambda r: r["attack_steps"])
        k0 = base["attack_steps"]
        for r in sorted(rs, key=lambda r: r["attack_steps"]):
            k = r["attack_steps"]
            measured = r["median_ms"] / base["median_ms"]
            model = (2 * k + 3) / (2 * k0 + 3)
            deviation = 100 * (measured / model - 1)
            out.append({
                "kind": "summary", "summary": "pgd_scaling", "config": config, "mode": r["mode"],
                "compile": r["compile"], "precision": r["precision"], "attack_steps_base": k0, "attack_steps": k,
                "median_ms": r["median_ms"], "time_ratio": measured, "model_ratio": model, "deviation_pct": deviation,
                "flop_ratio": r["step_gflop"] / base["step_gflop"],
                **(_target(config, "pgd10_deviation_pct", abs(deviation), False) if k == 10 and k0 == 1 else {}),
            })
    return out


def _pair(records: list[dict], is_base) -> list[tuple[str, dict, dict]]:
    pairs = []
    for config, rs in _by_config(records).items():
        base = [r for r in rs if is_base(r)]
        other = [r for r in rs if not is_base(r)]
        if base and other:
            pairs.append((config, base[0], other[0]))
    return pairs


def baseline(records: list[dict]) -> list[dict]:
    out = []
    for config, ref, ours in _pair(records, lambda r: r["mode"] == "reference"):
        speedup = ref["median_ms"] / ours["median_ms"]
        out.append({
            "kind": "summary", "summary": "baseline_speedup", "config": config, "attack_steps": ours["attack_steps"],
            "ours_ms": ours["median_ms"], "reference_ms": ref["median_ms"], "speedup": speedup,
            "ours": f"{ours['path']}, {ours['precision']}", "reference": f"{ref['path']}, {ref['precision']}",
            **_target(config, "baseline_speedup", speedup),
        })
    return out


def compiled(records: list[dict]) -> list[dict]:
    out = []
    for config, eager, comp in _pair(records, lambda r: r["compile"] == "off"):
        out.append({
            "kind": "summary", "summary": "compile_speedup", "config": config, "precision": comp["precision"],
            "compile": comp["compile"], "compile_backend": comp["compile_backend"], "eager_ms": eager["median_ms"],
            "compiled_ms": comp["median_ms"], "speedup": eager["median_ms"] / comp["median_ms"],
            "compile_s": comp["compile_s"], "first_calls_s": comp["first_calls_s"],
        })
    return out


def step_targets(records: list[dict]) -> list[dict]:
    out = []
    for r in records:
        if r["mode"] != "fast":
            continue
        if (r["config"] == TARGET_CONFIG and r["method"] == "mimir" and r["attack_steps"] == 1
                and r["mask_ratio"] == 0.75 and r["mfu"] is not None):
            out.append({"kind": "summary", "summary": "step_targets", "config": r["config"], "figure": "mfu",
                        "value": r["mfu"], "img_per_sec": r["img_per_sec"], "compile": r["compile"],
                        **_target(r["config"], "mfu", r["mfu"])})
        if r["config"] == "imagenet_vit_l_b128" and r["peak_memory_gb"] is not None:
            out.append({"kind": "summary", "summary": "step_targets", "config": r["config"],
                        "figure": "peak_memory_gb", "value": r["peak_memory_gb"], "compile": r["compile"],
                        **_target(r["config"], "vit_l_memory_gb", r["peak_memory_gb"], False)})
    return out


SUMMARIES = {"step": step_targets, "masking": masking, "pgd": pgd, "baseline": baseline, "compile": compiled}


def summarize(by_suite: dict[str, list[dict]]) -> list[dict]:
    """Every summary record of the suites run (``by_suite``: suite name → its step records)."""
    return [s for suite, records in by_suite.items()
            for s in SUMMARIES[suite]([r for r in records if "error" not in r])]


def _f(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def step_line(r: dict) -> str:
    """One printed line per step record, as it is measured."""
    k = f"K={r['attack_steps']}" if r["method"] == "mimir" else "MAE"
    return (f"{r['config']:32s} {r['mode']:9s} compile={r['compile']:10s} {k:5s} mask={r['mask_ratio']:.2f} "
            f"{r['median_ms']:9.1f} ms {r['img_per_sec']:9.1f} img/s {r['gflop_per_img']:7.2f} GFLOP/img "
            f"{r['achieved_tflops']:7.3f} TFLOP/s  MFU {_f(r['mfu'], '.1%')}  mem {_f(r['peak_memory_gb'], '.1f')} GB"
            f"  compile {_f(r['compile_s'], '.1f')} s")


def _summary_line(s: dict) -> str:
    kind = s["summary"]
    target = ""
    if "target" in s:
        target = f"  (target {s['target']:g}: {'met' if s['meets_target'] else 'NOT met'})"
    if kind == "masking_speedup":
        body = (f"masking {s['mask_ratio_base']:g} -> {s['mask_ratio']:g}, decoder {s['decoder']}: "
                f"{s['speedup']:.2f}x img/s (FLOP ratio {s['flop_ratio']:.2f}x)")
    elif kind == "pgd_scaling":
        body = (f"PGD-{s['attack_steps']} / PGD-{s['attack_steps_base']}: time {s['time_ratio']:.2f}x, "
                f"(2K+3) model {s['model_ratio']:.2f}x, deviation {s['deviation_pct']:+.1f}% "
                f"(counted FLOPs {s['flop_ratio']:.2f}x)")
    elif kind == "baseline_speedup":
        body = (f"ours {s['ours_ms']:.1f} ms vs reference-style {s['reference_ms']:.1f} ms: "
                f"{s['speedup']:.2f}x faster")
    elif kind == "compile_speedup":
        body = (f"compiled ({s['compile']}, {s['compile_backend']}) {s['compiled_ms']:.1f} ms vs eager "
                f"{s['eager_ms']:.1f} ms: {s['speedup']:.2f}x; compile {s['compile_s']:.1f} s")
    else:
        body = f"{s['figure']} = {s['value']:.3g}"
    return f"{s['config']:32s} {body}{target}"


def table(results: list[dict]) -> str:
    """The readable end-of-run table: one row per step record, then one line per summary."""
    rows = ["| config | mode | compile | method | mask | ms (p20-p80) | img/s | GFLOP/img | TFLOP/s | MFU | mem GB |"
            " compile s |", "|---" * 12 + "|"]
    for r in results:
        if r["kind"] != "step":
            continue
        if "error" in r:
            rows.append(f"| {r['config']} | {r['mode']} | {r['compile']} | K={r['attack_steps']} | {r['mask_ratio']} | "
                        f"FAILED: {r['error']} |")
            continue
        method = f"MIMIR PGD-{r['attack_steps']}" if r["method"] == "mimir" else "MAE"
        rows.append(
            f"| {r['config']} | {r['mode']} | {r['compile']} | {method} | {r['mask_ratio']:g} | {r['median_ms']:.1f} "
            f"({r['p20_ms']:.1f}-{r['p80_ms']:.1f}) | {r['img_per_sec']:.1f} | {r['gflop_per_img']:.3f} | "
            f"{r['achieved_tflops']:.3f} | {_f(r['mfu'], '.1%')} | {_f(r['peak_memory_gb'], '.1f')} | "
            f"{_f(r['compile_s'], '.1f')} |")
    rows += [_summary_line(s) for s in results if s["kind"] == "summary"]
    return "\n".join(rows)
