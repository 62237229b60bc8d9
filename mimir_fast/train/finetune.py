"""Adversarial fine-tuning of a ViT classifier (MIMIR ``finetune.py``): the ``Task`` and ``run_finetune``.

- ``pgd`` (default): Madry adversarial training. The attack is generated in eval mode (no drop-path) with
  input gradients only; the loss is label-smoothed cross-entropy on the adversarial examples alone.
- ``trades``: TRADES, CE(f(x), y) + β·KL(f(x') ‖ f(x)) per example; its CE is label-smoothed too.
- ``clean``: no attack, for ablations.
- ``de3``: NIM/De^3's fine-tuning (``nim-maep-spec.md`` §A.3; ``mimir_fast.purify.de3_finetune``): no attack;
  each batch is noised with σ ~ U(de3_sigma_low, de3_sigma_high) per image (/255 units; 0 and 30 by default),
  reconstructed by the frozen NIM model of ``--purifier`` (no gradient; de-normalised by ``--denorm_stats``),
  clamped to [0, 1], and the classifier trains on the reconstruction with the label-smoothed CE. The purifier
  is loaded once per run (on the training device, eval mode, frozen) and is not part of the classifier or its
  checkpoints. A.3's Mixup/CutMix, RandAugment and random erasing are left out, as for every method here
  (the training transform is the shared ``finetune_transform``); ``steps``, ``eps``, ``alpha`` and
  ``trades_beta`` are not used. On the digits defaults::

      mimir-fast pretrain --method nim --output_dir output_dir/nim
      mimir-fast finetune --method de3 --finetune output_dir/nim/checkpoint-29.pth \
          --purifier output_dir/nim/checkpoint-29.pth

  (the NIM checkpoint initialises the encoder too, as in NIM).

The classifier starts from the encoder of ``--finetune`` (a MAE/MIMIR/NIM pretraining checkpoint) or from
scratch; ``--resume`` continues a fine-tuning run. Each epoch logs the validation accuracy (``test_acc1`` in
``log.txt``, as MAE's fine-tuning does): on clean images, or with ``de3`` on De^3 purifications at γ =
``val_gamma`` (NIM: 70) with noise seeded by ``seed``, the same in every epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import pgd, trades_attack
from ..data import build_val_dataset, num_classes
from ..data.transforms import finetune_transform
from ..errors import CheckpointError, ConfigError, DataError
from ..models_vit import create_classifier, is_classifier_state, load_pretrained_encoder
from ..purify.de3 import De3Purifier
from ..purify.de3_finetune import load_finetune_purifier, seeded_de3, training_inputs
from .checkpoint import load_checkpoint
from .compile import attack_target
from .config import FinetuneConfig
from .optim import param_groups_layer_decay
from .runner import RunSummary, Task, run

LOSS_KEYS = ("loss", "train_acc")


def finetune_losses(model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor, cfg: FinetuneConfig,
                    purifier: De3Purifier | None = None) -> dict:
    """The step's loss for images (N, C, H, W) and labels (N,); ``train_acc`` is the accuracy (in %) on the
    examples the loss was computed on (adversarial ones for pgd, reconstructions for de3). With DDP, pass the
    wrapped model: the attack runs on the module inside (``attack_target``). ``purifier`` (on ``imgs``' device) is
    de3's NIM model."""
    eps, alpha = cfg.eps / 255, cfg.alpha / 255
    attacked = attack_target(model)  # under DDP the attack runs on the module, without gradient sync
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
    elif cfg.method == "de3":
        if purifier is None:
            raise ConfigError("method de3 needs the NIM purifier (--purifier CHECKPOINT)")
        logits = model(training_inputs(purifier, imgs, cfg.de3_sigma_low, cfg.de3_sigma_high))
        loss = F.cross_entropy(logits, labels, label_smoothing=cfg.smoothing)
    else:
        logits = model(imgs)
        loss = F.cross_entropy(logits, labels, label_smoothing=cfg.smoothing)
    acc = (logits.detach().argmax(dim=1) == labels).float().mean() * 100
    return {"loss": loss, "train_acc": acc}


@torch.no_grad()
def accuracy(model: nn.Module, dataset, device: torch.device, batch_size: int = 256,
             inputs: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Top-1 accuracy in % of ``model`` (eval mode, fp32) on ``dataset``, classifying ``inputs(imgs)`` (a
    function of a device batch (N, C, H, W), e.g. a purifier) when it is given."""
    was_training = model.training
    model.eval()
    hits, total = [], 0
    for imgs, labels in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
        imgs = imgs.to(device)
        if inputs is not None:
            imgs = inputs(imgs)
        hits.append((model(imgs).argmax(dim=1) == labels.to(device)).sum())  # summed on the device
        total += len(labels)
    model.train(was_training)
    return 100.0 * int(torch.stack(hits).sum()) / total if total else 0.0


class FinetuneTask(Task):
    kind = "finetune"
    loss_keys = LOSS_KEYS
    betas = (0.9, 0.999)

    def __init__(self):
        self._val = None
        self._purifier: De3Purifier | None = None  # de3's NIM model: held here, not in the classifier
        self._purifier_device: torch.device | None = None

    def train_transform(self, cfg: FinetuneConfig):
        return finetune_transform(cfg.input_size)

    def build_model(self, cfg: FinetuneConfig, dataset) -> nn.Module:
        found = num_classes(dataset)
        if found is not None and found != cfg.num_classes:
            raise DataError(f"the training data has {found} classes, but --num_classes is {cfg.num_classes}")
        if cfg.method == "de3" and self._purifier is None:  # once per run, checked before any training
            self._purifier = load_finetune_purifier(cfg.purifier, cfg.denorm_stats, cfg.input_size)
        return create_classifier(cfg.model, img_size=cfg.input_size, patch_size=cfg.patch_size,
                                 num_classes=cfg.num_classes, drop_path_rate=cfg.drop_path,
                                 head_init_std=cfg.head_init_std)

    def param_groups(self, model: nn.Module, cfg: FinetuneConfig) -> list[dict]:
        return param_groups_layer_decay(model, cfg.weight_decay, cfg.layer_decay)

    def purifier_on(self, device: torch.device) -> De3Purifier | None:
        """de3's purifier, moved to ``device`` on first use (None for the other methods)."""
        if self._purifier is not None and self._purifier_device != device:
            self._purifier.to(device)
            self._purifier_device = device
        return self._purifier

    def losses(self, model, imgs, labels, cfg: FinetuneConfig) -> dict:
        return finetune_losses(model, imgs, labels, cfg, self.purifier_on(imgs.device))

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
        if not len(self._val):
            return {}
        purifier = self.purifier_on(device)
        inputs = None if purifier is None else seeded_de3(purifier, cfg.val_gamma, cfg.seed)
        return {"acc1": accuracy(model, self._val, device, inputs=inputs)}


def run_finetune(cfg: FinetuneConfig) -> RunSummary:
    """Fine-tune ``cfg``; see ``mimir_fast.train.runner`` for checkpoints, resume and reproducibility."""
    return run(FinetuneTask(), cfg)
