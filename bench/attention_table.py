"""Print the ``FASTEST_BACKEND`` entries that an ops result file supports, for mimir_fast/ops/visible_attention.py.

    python -m bench.attention_table bench/results/ops_<gpu>_<date>_<sha>.json

For each visible_attention shape measured in fwdbwd mode, the fastest of ``triton`` and the SDPA backends
(median ms) becomes the entry for that shape's class; the gap to the best SDPA backend is printed beside it,
for the README. Shapes of one class that disagree are reported, and the class keeps the faster total.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from mimir_fast.ops.visible_attention import BACKENDS, shape_class_of


def entries(results: list[dict]) -> dict[tuple, tuple[str, float, dict]]:
    """Shape class -> (fastest backend, its ms over the best SDPA ms, {backend: total median ms})."""
    per_class: dict[tuple, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in results:
        if r["op"] == "visible_attention" and r["mode"] == "fwdbwd" and r["provider"] in BACKENDS and "error" not in r:
            per_class[shape_class_of(r["shape"]["hd"], r["shape"]["t"], r["dtype"])][r["provider"]] += r["median_ms"]
    out = {}
    for key, times in per_class.items():
        best = min(times, key=times.get)
        sdpa = [v for k, v in times.items() if k != "triton"]
        out[key] = (best, times.get("triton", float("nan")) / min(sdpa) if sdpa else float("nan"), dict(times))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("result", type=Path)
    args = p.parse_args(argv)
    doc = json.loads(args.result.read_text())
    print(f"# from {args.result.name} ({doc['env']['device']}, torch {doc['env']['torch']}, "
          f"triton {doc['env'].get('triton')})")
    print("FASTEST_BACKEND = {")
    for key, (best, ratio, times) in sorted(entries(doc["results"]).items()):
        detail = ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(times.items(), key=lambda kv: kv[1]))
        print(f"    {key!r}: {best!r},  # triton / best SDPA = {ratio:.2f}; {detail}")
    print("}")


if __name__ == "__main__":
    main()
