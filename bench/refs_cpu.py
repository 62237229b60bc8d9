"""Run bench/test_refs_cpu.py under pytest-benchmark and store its JSON in the bench/results naming scheme.

    python -m bench.refs_cpu [--out bench/results]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

from .harness import environment, result_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results")
    args = p.parse_args(argv)
    path = result_path(args.out, "refs-cpu", environment(torch.device("cpu")))
    path.parent.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    return pytest.main([str(here / "test_refs_cpu.py"), "-q", "-p", "no:cacheprovider", "--rootdir", str(here.parent),
                        f"--benchmark-json={path}", "--benchmark-columns=median,iqr,rounds"])


if __name__ == "__main__":
    sys.exit(main())
