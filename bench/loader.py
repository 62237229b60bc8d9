"""Loader throughput (img/s) of the training backends, against the rate at which the step consumes images.

    python -m bench.loader --generate 256 --input_size 224 --batch_size 32 --backends dali torch
    python -m bench.loader --data_path /data/imagenet --batch_size 256 --step_json bench/results/step_*.json \\
        --step_config imagenet_vit_b_b256

Each backend is built through ``mimir_fast.data.train_loader`` (the code training uses, with the pretraining
augmentation), warmed up, and timed over ``--batches`` batches with the device synchronised at the end; the
time to build the loader (DALI: the pipeline; torch: the workers' start) is reported apart. The step's rate
comes from ``--step_img_per_sec`` or from a ``bench.step`` result file; each record says whether the loader
keeps up (``headroom`` = loader img/s ÷ step img/s ≥ 1). ``--generate N`` writes N JPEGs of about ImageNet's
mean size (``--image_px``) to a temporary ImageFolder when no ``--data_path`` is given.
"""

from __future__ import annotations

import argparse
import glob
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mimir_fast.data import build_train_dataset, train_loader
from mimir_fast.data.dali import dali_available
from mimir_fast.data.transforms import pretrain_transform
from mimir_fast.device import resolve_device
from mimir_fast.train.config import PretrainConfig

from .harness import synchronize, write_results


def generate_folder(root: Path, n: int, px: tuple[int, int], seed: int = 0) -> Path:
    """``n`` JPEGs (quality 90) of ``px`` = (width, height) in 10 class folders under ``root``: smooth
    gradients plus noise, so they compress like photos rather than like noise or flat colour."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = px
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        a, b, c = rng.uniform(0.2, 1.0, 3)
        base = np.stack([a * 255 * x / w, b * 255 * y / h, c * 255 * (x + y) / (w + h)], -1)
        img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = root / f"class{i % 10}" / f"{i:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path, quality=90)
    return root


def step_rate(args) -> tuple[float | None, str | None]:
    """The step's img/s and where it came from: ``--step_img_per_sec``, or the fastest record (the most
    demanding for the loader) of the newest (``created_utc``) file matching ``--step_json``, among those of
    ``--step_config``, or else among those at ``--input_size``."""
    if args.step_img_per_sec:
        return args.step_img_per_sec, "--step_img_per_sec"
    if not args.step_json:
        return None, None
    paths = sorted(glob.glob(args.step_json))
    if not paths:
        raise SystemExit(f"no step result file matches {args.step_json}")
    path, doc = max(((p, json.loads(Path(p).read_text())) for p in paths), key=lambda pd: pd[1]["created_utc"])
    records = [r for r in doc["results"] if (r.get("config") == args.step_config if args.step_config
                                             else r.get("input_size") == args.input_size)]
    records = [r for r in records if r.get("method", "mimir") == args.step_method and r.get("img_per_sec")]
    if not records:
        if args.step_config:
            raise SystemExit(f"{path} has no {args.step_method} record for config {args.step_config!r}")
        print(f"{path} has no {args.step_method} record at {args.input_size} px: no step rate to compare with")
        return None, None
    best = max(records, key=lambda r: r["img_per_sec"])
    return best["img_per_sec"], f"{path} ({best.get('config')}, {best.get('method')}, {doc['env']['device']})"


def bench_backend(backend: str, args, data_path: str, device: torch.device) -> dict:
    """Time one backend: build, ``--warmup`` batches, then ``--batches`` timed batches."""
    cfg = PretrainConfig(data_path=data_path, data_backend=backend, dali_device=args.dali_device,
                         input_size=args.input_size, patch_size=args.input_size // 4, batch_size=args.batch_size,
                         num_workers=args.num_workers, device=device.type, output_dir=tempfile.gettempdir())
    dataset = build_train_dataset(cfg, pretrain_transform(cfg.input_size))
    start = time.perf_counter()
    loader = train_loader(cfg, dataset, torch.Generator().manual_seed(0), device)
    it = iter(loader)
    first = next(it)
    build_s = time.perf_counter() - start
    available = len(loader) - 1
    n = min(args.batches + args.warmup, available)
    if n <= args.warmup:
        raise SystemExit(f"{len(dataset)} images give only {len(loader)} batches: generate or give more images")
    for _ in range(args.warmup):
        next(it)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n - args.warmup):
        imgs, _labels = next(it)
        imgs = imgs.to(device, non_blocking=True)  # what the engine does with each batch
    synchronize(device)
    seconds = time.perf_counter() - start
    timed = n - args.warmup
    record = {
        "backend": backend, "dali_device": getattr(getattr(loader, "spec", None), "device", None),
        "device": device.type, "images": len(dataset), "input_size": cfg.input_size, "batch_size": cfg.batch_size,
        "num_workers": cfg.num_workers, "batches_timed": timed, "build_and_first_batch_s": build_s,
        "ms_per_batch": seconds / timed * 1e3, "img_per_sec": timed * cfg.batch_size / seconds,
        "dtype": str(first[0].dtype).replace("torch.", ""), "batch_device": first[0].device.type,
    }
    del it, loader
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_path", default=None, help="an ImageFolder (default: a generated one, see --generate)")
    p.add_argument("--generate", type=int, default=256, help="images to generate when --data_path is not given")
    p.add_argument("--image_px", type=int, nargs=2, default=[500, 375], metavar=("W", "H"),
                   help="generated image size (ImageNet's mean is about 500 × 375)")
    p.add_argument("--backends", nargs="+", default=None, choices=["dali", "torch", "synthetic"],
                   help="default: dali (when installed) and torch")
    p.add_argument("--dali_device", default="auto", choices=["auto", "cpu", "gpu"])
    p.add_argument("--input_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--num_workers", type=int, default=2, help="DataLoader workers; DALI threads (at least 2)")
    p.add_argument("--batches", type=int, default=10, help="timed batches per backend")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--step_img_per_sec", type=float, default=None, help="the step's consumption rate")
    p.add_argument("--step_json", default=None, help="a bench.step result file (a glob: the newest match)")
    p.add_argument("--step_config", default=None, help="the configuration to read from --step_json")
    p.add_argument("--step_method", default="mimir")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda")
    p.add_argument("--out", default="bench/results", help="folder for the JSON result file")
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    backends = args.backends or (["dali", "torch"] if dali_available() else ["torch"])
    rate, rate_source = step_rate(args)
    with tempfile.TemporaryDirectory() as tmp:
        data_path = args.data_path
        if data_path is None:
            start = time.perf_counter()
            data_path = str(generate_folder(Path(tmp) / "train", args.generate, tuple(args.image_px)))
            print(f"generated {args.generate} JPEGs of {args.image_px[0]}x{args.image_px[1]} px in "
                  f"{time.perf_counter() - start:.1f} s")
        results = []
        for backend in backends:
            record = bench_backend(backend, args, data_path, device)
            record.update(step_img_per_sec=rate, step_source=rate_source,
                          headroom=record["img_per_sec"] / rate if rate else None,
                          generated=args.data_path is None,
                          image_px=args.image_px if args.data_path is None else None)
            results.append(record)
            keeps = "" if rate is None else f"  {record['headroom']:.2f}x the step's {rate:.0f} img/s"
            print(f"{backend:9s} {record['dali_device'] or '':4s} {record['img_per_sec']:9.1f} img/s "
                  f"{record['ms_per_batch']:8.1f} ms/batch (build + first batch {record['build_and_first_batch_s']:.2f}"
                  f" s){keeps}")
    print(f"wrote {write_results(args.out, 'loader', device, results)}")


if __name__ == "__main__":
    main()
