"""What every fine-tuning method shares: a ViT classifier (from a pretrained encoder or scratch), MAE's
layer-decayed optimizer groups, label-smoothed cross-entropy, and the validation accuracy after each epoch
(``test_acc1`` in ``log.txt``, as MAE's fine-tuning logs it). A method adds its loss (``mimir_fast.methods``)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..data import build_val_dataset, num_classes
from ..data.folder import plural
from ..data.transforms import finetune_transform
from ..errors import CheckpointError, DataError
from ..models_vit import create_classifier, is_classifier_state, load_pretrained_encoder
from .checkpoint import load_checkpoint
from .config import FinetuneConfig
from .method import Method
from .optim import param_groups_layer_decay


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


class FinetuneMethod(Method):
    """Classifier fine-tuning: the model, data and optimizer of every method run by ``mimir-fast finetune``."""

    task = "finetune"
    betas = (0.9, 0.999)
    cfg: FinetuneConfig

    def __init__(self, cfg: FinetuneConfig):
        super().__init__(cfg)
        self._val = None
        self.classes: list[str] | None = None
        """The training data's class names, in label order (stored in every checkpoint as ``classes``)."""

    @property
    def loss_keys(self) -> tuple[str, ...]:
        return ("loss", "acc")  # acc: accuracy (%) on the examples the loss was computed on

    def cross_entropy(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The label-smoothed cross-entropy every method here trains with."""
        return F.cross_entropy(logits, labels, label_smoothing=self.cfg.smoothing)

    @staticmethod
    def result(loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """``losses``' return value: the loss and the accuracy (%) of ``logits``, a device tensor."""
        return {"loss": loss, "acc": (logits.detach().argmax(dim=1) == labels).float().mean() * 100}

    def train_transform(self):
        return finetune_transform(self.cfg.input_size)

    def build_model(self, dataset) -> nn.Module:
        cfg = self.cfg
        if dataset is not None and not getattr(dataset, "labelled", True):
            raise DataError(f"the training images in {getattr(dataset, 'root', cfg.data_path)} have no class folders: "
                            "fine-tuning needs labelled images (one sub-folder per class)")
        found = num_classes(dataset)
        if found is not None and found != cfg.num_classes:
            raise DataError(f"the training data has {plural(found, 'class', 'classes')}, but --num_classes is "
                            f"{cfg.num_classes}")
        self.classes = list(dataset.classes) if getattr(dataset, "classes", None) else None
        return create_classifier(cfg.model, img_size=cfg.input_size, patch_size=cfg.patch_size,
                                 num_classes=cfg.num_classes, drop_path_rate=cfg.drop_path,
                                 head_init_std=cfg.head_init_std)

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups_layer_decay(model, self.cfg.weight_decay, self.cfg.layer_decay)

    def check_resume(self, ckpt: dict, path: Path) -> None:
        if not is_classifier_state(ckpt["model"]):
            raise CheckpointError(f"{path} is a pretraining checkpoint, not a classifier: pass it with --finetune")
        head = ckpt["model"]["head.weight"]
        if head.shape[0] != self.cfg.num_classes:
            raise CheckpointError(f"{path} classifies {head.shape[0]} classes, but --num_classes is "
                                  f"{self.cfg.num_classes}")
        saved = ckpt.get("classes")
        if saved is not None and self.classes is not None and list(saved) != self.classes:
            raise CheckpointError(f"{path} was trained on other classes ({', '.join(saved[:5])}, ...) than the "
                                  f"training data has now ({', '.join(self.classes[:5])}, ...): resume with the same "
                                  "data")

    def checkpoint_extras(self) -> dict:
        return {"classes": self.classes} if self.classes is not None else {}

    def initialise(self, model: nn.Module) -> None:
        path = self.cfg.finetune
        if path:
            load_pretrained_encoder(model, load_checkpoint(path)["model"], path)
            print(f"initialised the encoder from {path}")
        else:
            print("training from scratch (no --finetune checkpoint)")

    def val_inputs(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What the validation accuracy classifies, as a function of a device batch; None: the images."""
        return None

    def after_epoch(self, model: nn.Module, device: torch.device) -> dict:
        if self._val is None:
            self._val = build_val_dataset(self.cfg, classes=self.classes) or []
        if not len(self._val):
            return {}
        return {"acc1": accuracy(model, self._val, device, inputs=self.val_inputs(device))}
