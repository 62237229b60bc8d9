"""End-to-end pretraining step: img/s, step ms, counted FLOPs, TFLOP/s, MFU and peak memory.

    python -m bench.step --configs digits_micro --methods mimir mae --out bench/results

It times ``mimir_fast.train.engine.train_step`` (attack, forward, HSIC, backward, AdamW) on a device-resident
synthetic batch, so the loader is not measured. FLOPs are counted once per configuration with torch's flop
formulas (matmuls, convolutions, attention: 2 per multiply-add) and MFU uses the device's dense bf16 peak.
This is the eager reference path that later speed-ups are measured against.
"""

from __future__ import annotations

import argparse

import torch

from mimir_fast.models_mae import create_model
from mimir_fast.train.engine import train_step
from mimir_fast.train.objective import pretrain_losses
from mimir_fast.train.optim import build_optimizer, param_groups_weight_decay
from mimir_fast.train.presets import build_config
from mimir_fast.train.runner import autocast_dtype, resolve_device

from .harness import FlopCount, add_run_args, peak_flops, synchronize, time_fn, write_results

# name -> (preset, overrides); the batch is the per-GPU batch timed
CONFIGS = {
    "digits_micro": ("digits", dict(batch_size=64, input_size=32)),  # as measured in bench/results (32 px)
    "cifar10_vit_t_p2": ("cifar10_vit_t", dict(batch_size=32)),
    "cifar10_vit_s_p2": ("cifar10_vit_s", dict(batch_size=128)),
    "imagenet_vit_b_b256": ("imagenet_vit_b", dict(batch_size=256)),
    "imagenet_vit_b_mae_decoder_b256": ("imagenet_vit_b", dict(batch_size=256, model="mae_vit_base_patch16")),
}


def bench_config(name: str, method: str, steps: int, device: torch.device, iters: int) -> dict:
    preset, overrides = CONFIGS[name]
    cfg = build_config(preset, method=method, steps=steps, **overrides)
    model = create_model(cfg.model, img_size=cfg.input_size, patch_size=cfg.patch_size,
                         norm_pix_loss=cfg.norm_pix_loss).to(device)
    optimizer = build_optimizer(param_groups_weight_decay(model, cfg.weight_decay), 1e-4, (0.9, 0.95), device)
    amp = autocast_dtype(cfg.precision, device)
    imgs = torch.rand(cfg.batch_size, 3, cfg.input_size, cfg.input_size, device=device)
    labels = torch.zeros(cfg.batch_size, dtype=torch.long, device=device)

    def step():
        train_step(model, imgs, labels, optimizer, lambda m, x, y: pretrain_losses(m, x, cfg), amp)

    step()
    with FlopCount() as counter:
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timing = time_fn(step, device, warmup=2, iters=iters)
    synchronize(device)
    peak = peak_flops(device)
    achieved = counter.flops / (timing["median_ms"] / 1e3)
    record = {
        "config": name, "preset": preset, "model": cfg.model, "method": method,
        "attack_steps": steps if method == "mimir" else 0, "batch_size": cfg.batch_size,
        "input_size": cfg.input_size, "patch_size": cfg.patch_size, "mask_ratio": cfg.mask_ratio,
        "precision": "bf16" if amp else "fp32", "path": "eager reference",
        **timing, "img_per_sec": cfg.batch_size / (timing["median_ms"] / 1e3),
        "step_gflop": counter.flops / 1e9, "gflop_per_img": counter.flops / 1e9 / cfg.batch_size,
        "achieved_tflops": achieved / 1e12, "mfu": achieved / peak if peak else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
    }
    print(f"{name:32s} {method:5s} K={record['attack_steps']:<2d} {timing['median_ms']:9.1f} ms/step "
          f"{record['img_per_sec']:9.1f} img/s  {record['gflop_per_img']:6.2f} GFLOP/img  "
          f"{record['achieved_tflops']:7.3f} TFLOP/s" + (f"  MFU {record['mfu']:.1%}" if peak else ""))
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=None, help=f"from {', '.join(CONFIGS)}")
    p.add_argument("--methods", nargs="+", default=["mimir", "mae"], choices=["mimir", "mae"])
    p.add_argument("--attack_steps", nargs="+", type=int, default=[1])
    add_run_args(p)
    args = p.parse_args(argv)
    device = resolve_device(args.device)
    configs = args.configs or (list(CONFIGS) if device.type == "cuda" else ["digits_micro", "cifar10_vit_t_p2"])
    results = []
    for name in configs:
        for method in args.methods:
            for k in args.attack_steps if method == "mimir" else [1]:
                results.append(bench_config(name, method, k, device, args.iters))
    print(f"wrote {write_results(args.out, 'step', device, results)}")


if __name__ == "__main__":
    main()
