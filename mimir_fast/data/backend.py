"""Which loader feeds training (``--data_backend``), and the DALI loader built from a run's config.

- ``synthetic``: one random device batch, repeated (``SyntheticBatches``): no loading cost, for throughput;
- ``torch``: torchvision transforms in a ``DataLoader`` (any data);
- ``dali``: NVIDIA DALI over an image folder (``mimir_fast.data.dali``), decoding on the GPU or the CPU;
- ``auto``: synthetic for ``--data synthetic``; dali when DALI is installed, CUDA is available and the data is
  an image folder; torch otherwise.

Asking for what cannot run is a one-line ``ConfigError``: dali without DALI installed, dali on the embedded
digits (in memory, not a folder), or DALI's GPU decoding without CUDA.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from .dali import DaliLoader, DaliSpec, check_dali, dali_available, recipe_from_transform


def resolve_backend(cfg, device: torch.device) -> str:
    """``cfg.data_backend`` with ``auto`` resolved; raises ``ConfigError`` for a dali request that cannot run."""
    backend, kind = cfg.data_backend, cfg.data_kind
    if backend == "auto":
        if kind == "synthetic":
            return "synthetic"
        use_dali = kind == "folder" and device.type == "cuda" and torch.cuda.is_available() and dali_available()
        return "dali" if use_dali else "torch"
    if backend == "dali":
        if kind != "folder":
            what = "the embedded digits are in memory" if kind.startswith("digits") else "synthetic data has no files"
            raise ConfigError(f"--data_backend dali reads image folders, but the data is {kind!r} ({what}): "
                              "give --data_path, or use --data_backend torch")
        resolve_dali_device(cfg, device)
        check_dali()  # without importing it (the import alone takes about 2 s)
    if backend == "torch" and kind == "synthetic":
        return "synthetic"
    return backend


def resolve_dali_device(cfg, device: torch.device) -> str:
    """'gpu' or 'cpu' from ``cfg.dali_device`` (auto: the training device's); GPU decoding needs CUDA."""
    choice = cfg.dali_device
    if choice == "auto":
        return "gpu" if device.type == "cuda" else "cpu"
    if choice == "gpu":
        if not torch.cuda.is_available():
            raise ConfigError("--dali_device gpu decodes on DALI's 'mixed' device (hardware JPEG decoder), but no "
                              "CUDA device is available: use --dali_device cpu")
        if device.type != "cuda":
            raise ConfigError("--dali_device gpu puts batches on the GPU, but training runs on the CPU (--device "
                              "cpu): use --dali_device cpu")
    return choice


def dali_train_loader(cfg, dataset, device: torch.device, *, seed: int, rank: int = 0, world_size: int = 1,
                      skip: int = 0) -> DaliLoader:
    """One epoch of DALI batches over ``dataset`` (an ``ImageFiles``: its files, labels and training transform),
    float32 in [0, 1] like the torch path; ``seed`` must be the same on every rank."""
    samples = getattr(dataset, "samples", None)
    if samples is None:
        raise ConfigError("--data_backend dali reads image folders; this dataset has no files: use --data_backend "
                          "torch")
    dali_device = resolve_dali_device(cfg, device)
    spec = DaliSpec(input_size=cfg.input_size, batch_size=cfg.batch_size, device=dali_device,
                    min_crop_scale=recipe_from_transform(dataset.transform),
                    num_threads=max(4 if dali_device == "gpu" else 2, cfg.num_workers))
    files, labels = zip(*samples)
    return DaliLoader(files, labels, spec, seed=seed, rank=rank, world_size=world_size, skip=skip)
