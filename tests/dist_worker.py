"""Pretraining made a function of the global batch alone, for comparing process counts (test_distributed.py).

A single process and a torchrun job see the same global batches (``data/sharding.py``), but augmentation,
masks and random starts are drawn from each rank's RNG, so they would differ. The patches make each draw a
function of the image's label instead (the test data has one image per class): no augmentation, mask noise
and the attack's random start read from fixed per-label tables. ``split=k`` computes a single process's loss
as the mean of the losses of k equal chunks of its batch, i.e. what k DDP replicas average (HSIC then runs over
each chunk, MIMIR's per-replica batch).

Run as ``python -m torch.distributed.run ... tests/dist_worker.py RUNS.json``: it joins the process group
once and runs each ``{"argv": [...], "split": k}`` of the file through ``mimir_fast.cli.main``; a run's
``"compile_backend"`` (e.g. ``aot_eager``) replaces inductor for its ``--compile``. A run with ``"record": DIR``
is not patched but records each rank's own draws instead (``recorders``).
"""

from __future__ import annotations

import json
import sys

import torch

TABLE_SIZE = 256  # labels < TABLE_SIZE
_current: dict[str, torch.Tensor] = {}  # "labels": the chunk being trained (a dict entry: a compiled forward
# reads it as a tensor input, so a new chunk of the same size reuses the graph)


def _noise(n_patches: int) -> torch.Tensor:
    return torch.rand(TABLE_SIZE, n_patches, generator=torch.Generator().manual_seed(7))


def patches(split: int = 1) -> list[tuple[object, str, object]]:
    """``(owner, attribute, value)`` triples to apply (with ``setattr`` or pytest's ``monkeypatch``)."""
    import importlib

    from mimir_fast.data.transforms import eval_transform
    from mimir_fast.methods.mae import Mae
    from mimir_fast.methods.mimir import Mimir
    from mimir_fast.models_mae import MaskedAutoencoderViT
    from mimir_fast.train.pretrain import PretrainMethod

    pgd_mae_module = importlib.import_module("mimir_fast.attacks.pgd_mae")  # the package exports the function
    original_encoder = MaskedAutoencoderViT.forward_encoder

    def forward_encoder(self, x, mask_ratio, noise=None):
        if noise is None:
            noise = _noise(self.patch_embed.num_patches)[_current["labels"]].to(x.device)
        return original_encoder(self, x, mask_ratio, noise)

    def uniform_start(images, eps):
        table = torch.rand(TABLE_SIZE, *images.shape[1:], generator=torch.Generator().manual_seed(8))
        return (table[_current["labels"]].to(images.device) * 2 - 1) * eps

    def split_losses(real):
        def losses(self, model, imgs, labels):
            parts = []
            for chunk, chunk_labels in zip(imgs.chunk(split), labels.chunk(split)):
                _current["labels"] = chunk_labels.cpu()
                parts.append(real(self, model, chunk, chunk_labels))
            return {k: torch.stack([p[k] for p in parts]).mean() for k in parts[0]}

        return losses

    return [
        (PretrainMethod, "train_transform", lambda self: eval_transform(self.cfg.input_size)),
        (Mimir, "losses", split_losses(Mimir.losses)),
        (Mae, "losses", split_losses(Mae.losses)),
        (MaskedAutoencoderViT, "forward_encoder", forward_encoder),
        (pgd_mae_module, "uniform_start", uniform_start),
    ]


def recorders(draws: dict[str, list]) -> list[tuple[object, str, object]]:
    """Patches that leave every draw as it is but append the mask noise of each MAE forward to ``draws["masks"]``
    and each pretraining attack's random start to ``draws["starts"]``."""
    import importlib

    from mimir_fast.models_mae import MaskedAutoencoderViT

    pgd_mae_module = importlib.import_module("mimir_fast.attacks.pgd_mae")
    original_encoder, original_start = MaskedAutoencoderViT.forward_encoder, pgd_mae_module.uniform_start

    def forward_encoder(self, x, mask_ratio, noise=None):
        if noise is None:
            noise = torch.rand(x.shape[0], self.patch_embed.num_patches, device=x.device)  # MAE's own draw
            draws["masks"].append(noise.cpu())
        return original_encoder(self, x, mask_ratio, noise)

    def uniform_start(images, eps):
        start = original_start(images, eps)
        draws["starts"].append(start.cpu())
        return start

    return [(MaskedAutoencoderViT, "forward_encoder", forward_encoder),
            (pgd_mae_module, "uniform_start", uniform_start)]


def main(runs_file: str) -> int:
    import torch.distributed as dist

    from mimir_fast.cli import main as cli_main
    from mimir_fast.train import compile as compile_module

    dist.init_process_group("gloo")
    try:
        for run in json.loads(open(runs_file).read()):
            saved = [(compile_module, "BACKEND", compile_module.BACKEND)]
            compile_module.BACKEND = run.get("compile_backend", compile_module.BACKEND)
            draws: dict[str, list] = {"masks": [], "starts": []}
            for owner, name, value in recorders(draws) if "record" in run else patches(run.get("split", 1)):
                saved.append((owner, name, getattr(owner, name)))
                setattr(owner, name, value)
            code = cli_main(run["argv"])
            for owner, name, value in reversed(saved):
                setattr(owner, name, value)
            if "record" in run:
                torch.save(draws, f"{run['record']}/draws-rank{dist.get_rank()}.pt")
            if code:
                return code
    finally:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
