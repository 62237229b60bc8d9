"""Evaluation examples: the validation set, RobustBench-style preprocessing and a fixed subset.

Preprocessing names follow RobustBench (``robustbench/data.py``): ``Res256Crop224`` (resize the short side to
256, bilinear, then center-crop 224), ``BicubicRes256Crop224`` (the same, bicubic), ``none`` (no resize), and
``auto``, our default (exact size up to 64 px, bicubic 256/224 resize and center crop above). The subset is the
first ``n_ex`` examples in the dataset's fixed order, or the examples an ``ids`` file lists (indices, or image
paths relative to ``data_path`` such as RobustBench's ImageNet list).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from ..data import describe
from ..data.digits import KINDS as DIGITS_KINDS
from ..data.digits import NUM_CLASSES as DIGITS_CLASSES
from ..data.digits import digits_split
from ..data.folder import ImageFiles, split_root
from ..data.tensors import TensorImages
from ..data.transforms import Clamp01, eval_transform
from ..errors import DataError
from .config import EvalConfig


def preprocessing(name: str, input_size: int):
    """The named transform to (3, S, S) float32 in [0, 1]."""
    to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), Clamp01()]
    if name == "auto":
        return eval_transform(input_size)
    if name == "none":
        return v2.Compose(to_float)
    mode = InterpolationMode.BICUBIC if name.startswith("Bicubic") else InterpolationMode.BILINEAR
    return v2.Compose([v2.Resize(256, interpolation=mode, antialias=True), v2.CenterCrop(224), *to_float])


def eval_dataset(cfg: EvalConfig, input_size: int, classes: list[str] | None = None) -> Dataset:
    """The un-augmented evaluation set: digits val, or ``data_path``'s ``val/`` folder (else the root), its class
    folders labelled by ``classes`` (the classifier's, in label order) when given. Prints what it found."""
    transform = preprocessing(cfg.preprocessing, input_size)
    if cfg.data_kind in DIGITS_KINDS:
        images, labels = digits_split("val", cfg.data_kind)
        dataset: Dataset = TensorImages(images, labels, transform, num_classes=DIGITS_CLASSES)
        source = "the embedded digits" + (", held-out re-split" if cfg.data_kind != "digits" else "")
    else:
        root = split_root(cfg.data_path, "val") or split_root(cfg.data_path, "train")
        dataset = ImageFiles(root, transform, classes)
        if not dataset.labelled:
            raise DataError(f"{root} holds images without class folders: eval needs labelled images (one sub-folder "
                            "per class, named as in the training data)")
        source = str(root)
        if classes is None:
            print(f"note: the checkpoint records no class names; labels follow the sorted folder names in {root}")
    print(describe("eval", dataset, source))
    return dataset


def subset_indices(cfg: EvalConfig, dataset: Dataset) -> list[int]:
    """The dataset indices to evaluate, in order."""
    if cfg.ids:
        path = Path(cfg.ids)
        if not path.is_file():
            raise DataError(f"ids file {path} does not exist")
        numbered = [(i + 1, ln.strip()) for i, ln in enumerate(path.read_text().splitlines()) if ln.strip()]
        lines = [ln for _, ln in numbered]
        if all(ln.isdigit() for ln in lines):
            indices = [int(ln) for ln in lines]
        elif any(ln.isdigit() for ln in lines):
            bad = next((no, ln) for no, ln in numbered if not ln.isdigit())
            raise DataError(f"ids file {path} mixes indices and paths: line {bad[0]} is {bad[1]!r}")
        else:
            by_path = {str(Path(p).resolve()): i for i, (p, _) in enumerate(getattr(dataset, "samples", []))}
            base = Path(cfg.data_path or ".")
            missing = [(no, ln) for no, ln in numbered if str((base / ln).resolve()) not in by_path]
            if missing:
                raise DataError(f"ids file {path}: {len(missing)} listed image(s) are not in the evaluation set, the "
                                f"first on line {missing[0][0]}: {missing[0][1]!r}")
            indices = [by_path[str((base / ln).resolve())] for ln in lines]
        bad = [(no, i) for (no, _), i in zip(numbered, indices) if not 0 <= i < len(dataset)]
        if bad:
            raise DataError(f"ids file {path} line {bad[0][0]} lists index {bad[0][1]}, outside the {len(dataset)} "
                            "evaluation examples")
    else:
        indices = list(range(len(dataset)))
    return indices[: cfg.n_ex] if cfg.n_ex else indices


def load_examples(dataset: Dataset, indices: list[int], input_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The listed examples in memory: images (N, 3, S, S) float32 and labels (N,) int64, as RobustBench does."""
    if not indices:
        return torch.empty(0, 3, input_size, input_size), torch.empty(0, dtype=torch.long)
    items = [dataset[i] for i in indices]
    x = torch.stack([img for img, _ in items]).float()
    if tuple(x.shape[-2:]) != (input_size, input_size):
        raise DataError(f"preprocessed images are {tuple(x.shape[-2:])} pixels, but the model expects {input_size}")
    return x, torch.tensor([int(label) for _, label in items], dtype=torch.long)
