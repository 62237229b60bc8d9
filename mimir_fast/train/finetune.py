"""Adversarial fine-tuning of a ViT classifier (MIMIR ``finetune.py``): the ``Task`` and ``run_finetune``.

- ``pgd`` (default): Madry adversarial training. The attack is generated in eval mode (no drop-path) with
  input gradients only; the loss is label-smoothed cross-entropy on the adversarial examples alone.
- ``trades``: TRADES, CE(f(x), y) + β·KL(f(x') ‖ f(x)) per example; its CE is label-smoothed too.
- ``clean``: no attack, for ablations.

The classifier starts from the encoder of ``--finetune`` (a MAE/MIMIR pretraining checkpoint) or from
scratch; ``--resume`` continues a fine-tuning run. Each epoch logs the clean validation accuracy
(``test_acc1`` in ``log.txt``, as MAE's fine-tuning does).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import pgd, trades_attack
from ..data import build_val_dataset, num_classes
from ..data.transforms import finetune_transform
from ..errors import CheckpointError, DataError
from ..models_vit import create_classifier, is_classifier_state, load_pretrained_encoder
from .checkpoint import load_checkpoint
from .config import FinetuneConfig
from .optim import param_groups_layer_decay
from .runner import RunSummary, Task, run

LOSS_KEYS = ("loss", "train_acc")


def finetune_losses(model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor, cfg: FinetuneConfig) -> dict:
    """The step's loss for images (N, C, H, W) and labels (N,); ``train_acc`` is the accuracy (in %) on the
    examples the loss was computed on (adversarial ones for pgd). With DDP, pass the wrapped model: the attack
    runs on ``model.module``."""
    eps, alpha = cfg.eps / 255, cfg.alpha / 255
    attacked = getattr(model, "module", model)  # under DDP the attack runs on the module, without gradient sync
    if cfg.method == "pgd":
        x_adv = pgd(attacked, imgs, labels, eps=eps, alpha=alpha, steps=cfg.steps)
        logits = model(x_adv)
        loss = F.cross_entropy(logits, labels, label_smoothing=cfg.smoothing)
    elif cfg.method == "trades":
        x_adv = trades_attack(attacked, imgs, eps=eps, alpha=alpha, steps=cfg.steps)
        clean_logits = model(imgs)
        logits = model(x_adv)
        kl = F.kl_div(F.log_softmax(logits, dim=1), F.softmax(clean_logits, dim=1), reduction="batchmean")
        loss = F.cross_entropy(clean_logits, labels, label_smoothing=cfg.smoothing) + cfg.trades_beta * kl
    else:
        logits = model(imgs)
        loss = F.cross_entropy(logits, labels, label_smoothing=cfg.smoothing)
    acc = (logits.detach().argmax(dim=1) == labels).float().mean() * 100
    return {"loss": loss, "train_acc": acc}


@torch.no_grad()
def accuracy(model: nn.Module, dataset, device: torch.device, batch_size: int = 256) -> float:
    """Top-1 accuracy in % of ``model`` (eval mode, fp32) on ``dataset``."""
    was_training = model.training
    model.eval()
    hits, total = [], 0
    for imgs, labels in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        hits.append((model(imgs.to(device)).argmax(dim=1) == labels.to(device)).sum())  # summed on the device
        total += len(labels)
    model.train(was_training)
    return 100.0 * int(torch.stack(hits).sum()) / total if total else 0.0


class FinetuneTask(Task):
    kind = "finetune"
    loss_keys = LOSS_KEYS
    betas = (0.9, 0.999)

    def __init__(self):
        self._val = None

    def train_transform(self, cfg: FinetuneConfig):
        return finetune_transform(cfg.input_size)

    def build_model(self, cfg: FinetuneConfig, dataset) -> nn.Module:
        found = num_classes(dataset)
        if found is not None and found != cfg.num_classes:
            raise DataError(f"the training data has {found} classes, but --num_classes is {cfg.num_classes}")
        return create_classifier(cfg.model, img_size=cfg.input_size, patch_size=cfg.patch_size,
                                 num_classes=cfg.num_classes, drop_path_rate=cfg.drop_path,
                                 head_init_std=cfg.head_init_std)

    def param_groups(self, model: nn.Module, cfg: FinetuneConfig) -> list[dict]:
        return param_groups_layer_decay(model, cfg.weight_decay, cfg.layer_decay)

    def losses(self, model, imgs, labels, cfg: FinetuneConfig) -> dict:
        return finetune_losses(model, imgs, labels, cfg)

    def check_resume(self, ckpt: dict, path: Path, cfg: FinetuneConfig) -> None:
        if not is_classifier_state(ckpt["model"]):
            raise CheckpointError(f"{path} is a pretraining checkpoint, not a classifier: pass it with --finetune")
        head = ckpt["model"]["head.weight"]
        if head.shape[0] != cfg.num_classes:
            raise CheckpointError(f"{path} classifies {head.shape[0]} classes, but --num_classes is {cfg.num_classes}")

    def initialise(self, model: nn.Module, cfg: FinetuneConfig) -> None:
        if cfg.finetune:
            load_pretrained_encoder(model, load_checkpoint(cfg.finetune)["model"], cfg.finetune)
            print(f"initialised the encoder from {cfg.finetune}")
        else:
            print("training from scratch (no --finetune checkpoint)")

    def after_epoch(self, model: nn.Module, cfg: FinetuneConfig, device: torch.device) -> dict:
        if self._val is None:
            self._val = build_val_dataset(cfg) or []
        return {"acc1": accuracy(model, self._val, device)} if len(self._val) else {}


def run_finetune(cfg: FinetuneConfig) -> RunSummary:
    """Fine-tune ``cfg``; see ``mimir_fast.train.runner`` for checkpoints, resume and reproducibility."""
    return run(FinetuneTask(), cfg)
