"""NVIDIA DALI training loader for image folders: GPU (hardware JPEG) or CPU decoding, sharded by rank.

DALI is imported only when a loader is built. The augmentation mirrors the run's torchvision training transform
(read from the dataset, so the backends cannot drift); pixels stay in [0, 1], CHW. Each epoch is a global
permutation from a seed every rank shares, cut into equal ``rank`` shards of full batches; ``DaliLoader.position``
and ``skip=`` resume inside an epoch bit-identically (the skipped batches are decoded and discarded).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from ..errors import ConfigError, DataError

HW_DECODER_LOAD = 0.65
"""Share of JPEGs sent to the hardware decoder on the mixed backend (DALI's default, tuned for A100)."""
SMALL_PAD = 4
"""Padding of the small-input RandomCrop (MIMIR's CIFAR-10 recipe)."""
INSTALL_HINT = "pip install nvidia-dali-cuda130==2.4.0"


def dali_available() -> bool:
    """Whether ``nvidia.dali`` can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("nvidia.dali") is not None
    except (ImportError, ValueError):
        return False


def check_dali() -> None:
    """Raise a one-line ``ConfigError`` saying how to install DALI when it cannot be imported."""
    if not dali_available():
        raise ConfigError(f"--data_backend dali needs NVIDIA DALI, which is not installed ({INSTALL_HINT}); "
                          "or use --data_backend torch")


def require_dali():
    """Import and return ``nvidia.dali`` (a ``ConfigError`` when it is not installed)."""
    check_dali()
    import nvidia.dali

    return nvidia.dali


@dataclass(frozen=True)
class DaliSpec:
    """What one DALI pipeline produces."""

    input_size: int
    """Output side S in pixels."""
    batch_size: int
    """Images per batch on this rank."""
    device: str = "cpu"
    """'gpu' (decode on the mixed backend, augment on the GPU) or 'cpu' (no GPU needed)."""
    min_crop_scale: float | None = 0.2
    """RandomResizedCrop's smallest area fraction; None: the small-input padded random crop."""
    augment: bool = True
    """False: resize the whole image to S × S with no crop or flip (for comparisons)."""
    out_dtype: torch.dtype = torch.float32
    """float32, float16 or bfloat16 (bf16 is made from DALI's fp16 output)."""
    num_threads: int = 4
    """DALI CPU worker threads."""
    hw_decoder_load: float = HW_DECODER_LOAD
    """Share of JPEGs for the hardware decoder (gpu device only)."""

    def __post_init__(self):
        if self.device not in ("cpu", "gpu"):
            raise ConfigError(f"unknown DALI device {self.device!r}; choose cpu or gpu")
        if self.out_dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise ConfigError(f"DALI output dtype must be float32, float16 or bfloat16, not {self.out_dtype}")


def recipe_from_transform(transform) -> float | None:
    """The min crop scale of the RandomResizedCrop in a torchvision ``Compose`` (None: padded RandomCrop)."""
    from torchvision.transforms import v2

    for t in getattr(transform, "transforms", ()):
        if isinstance(t, v2.RandomResizedCrop):
            return float(t.scale[0])
        if isinstance(t, v2.RandomCrop):
            return None
    raise ConfigError("the DALI backend mirrors RandomResizedCrop or RandomCrop training transforms only")


def epoch_order(n: int, seed: int, world_size: int) -> list[int]:
    """A permutation of ``range(n)`` from ``seed``, cut to a multiple of ``world_size`` (equal shards)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[: n - n % world_size].tolist()


def build_pipeline(files: Sequence[str], labels: Sequence[int], spec: DaliSpec, *, seed: int, shard_id: int = 0,
                   num_shards: int = 1):
    """A DALI pipeline yielding ``images`` (B, 3, S, S) in [0, 1] and ``labels`` (B, 1) int32, over this
    shard of ``files`` in list order. ``seed`` fixes the random crops and flips."""
    gpu = spec.device == "gpu"
    if gpu and not torch.cuda.is_available():
        raise ConfigError("the DALI GPU pipeline decodes on the 'mixed' device, but no CUDA device is available: "
                          "use --dali_device cpu")
    dali = require_dali()
    from nvidia.dali import fn, types

    size = spec.input_size
    out_type = types.FLOAT if spec.out_dtype == torch.float32 else types.FLOAT16
    pipe = dali.Pipeline(batch_size=spec.batch_size, num_threads=spec.num_threads,
                         device_id=torch.cuda.current_device() if gpu else None, seed=seed % 2**31,
                         prefetch_queue_depth=2)
    decoder_args = dict(device="mixed" if gpu else "cpu", output_type=types.RGB)
    if gpu:
        decoder_args["hw_decoder_load"] = spec.hw_decoder_load
    with pipe:
        # DALI's own shuffle only mixes a 1,024-sample buffer over a list it permutes once (every epoch would see
        # nearly the same order): the epoch's permutation comes with ``files`` instead
        jpegs, label = fn.readers.file(files=list(files), labels=list(labels), shard_id=shard_id,
                                       num_shards=num_shards, random_shuffle=False, pad_last_batch=False,
                                       name="Reader")
        resize = dict(size=(size, size), interp_type=types.INTERP_CUBIC, antialias=True)
        if spec.augment and spec.min_crop_scale is not None:
            images = fn.decoders.image_random_crop(jpegs, random_area=[spec.min_crop_scale, 1.0],
                                                   random_aspect_ratio=[3 / 4, 4 / 3], num_attempts=10,
                                                   **decoder_args)
            images = fn.resize(images, **resize)
        else:
            images = fn.resize(fn.decoders.image(jpegs, **decoder_args), **resize)
            if spec.augment:  # RandomCrop(size, padding=4): pad, then one of the 9 × 9 integer offsets
                span = size + 2 * SMALL_PAD
                images = fn.crop(images, crop=(span, span), out_of_bounds_policy="pad", fill_values=0)
                offsets = [i / (2 * SMALL_PAD) for i in range(2 * SMALL_PAD + 1)]
                images = fn.crop(images, crop=(size, size), crop_pos_x=fn.random.uniform(values=offsets),
                                 crop_pos_y=fn.random.uniform(values=offsets))
        mirror = fn.random.coin_flip(probability=0.5) if spec.augment else 0
        images = fn.crop_mirror_normalize(images, dtype=out_type, output_layout="CHW", mean=[0.0], std=[255.0],
                                          mirror=mirror)
        pipe.set_outputs(images, label.gpu() if gpu else label)
    return pipe


def _dali_cause(text: str) -> str:
    """The line of a DALI pipeline error that says what failed (the line after ``encountered:``)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    after = [ln for prev, ln in zip(lines, lines[1:]) if prev == "encountered:"]
    return (after or [ln for ln in lines if not ln.startswith("Critical error")] or ["unknown error"])[0]


class DaliLoader:
    """One epoch of ``(images (B, 3, S, S) spec.out_dtype in [0, 1], labels (B,) int64)`` batches of this
    rank's shard; on the GPU for the gpu device, else on the CPU.

    Args:
        files, labels: the whole dataset (every rank passes the same lists).
        spec: what to produce.
        seed: the epoch's seed, equal on every rank (order, crops and flips).
        rank, world_size: this process's shard.
        skip: batches to run and discard first (mid-epoch resume; see the module docstring for the cost).
    """

    def __init__(self, files: Sequence[str], labels: Sequence[int], spec: DaliSpec, *, seed: int, rank: int = 0,
                 world_size: int = 1, skip: int = 0):
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in [0, world_size {world_size})")
        order = epoch_order(len(files), seed, world_size)
        self.steps = len(order) // world_size // spec.batch_size
        if self.steps == 0:
            raise DataError(f"{len(files)} images give each of {world_size} processes fewer than one batch of "
                            f"{spec.batch_size}")
        if not 0 <= skip <= self.steps:
            raise ConfigError(f"cannot skip {skip} batches of an epoch of {self.steps}")
        self.spec, self.seed, self.skip = spec, seed, skip
        self.position = 0
        """Batches handed out (or skipped) so far this epoch."""
        self._pipe = build_pipeline([files[i] for i in order], [int(labels[i]) for i in order], spec, seed=seed,
                                    shard_id=rank, num_shards=world_size)

    def __len__(self) -> int:
        return self.steps - self.skip

    def _next(self) -> tuple[torch.Tensor, torch.Tensor]:
        from nvidia.dali.plugin.pytorch import feed_ndarray

        try:
            images, labels = self._pipe.run()
        except RuntimeError as e:
            raise DataError(f"DALI could not read or decode a batch ({_dali_cause(str(e))}); an image under the data "
                            "path may be corrupt: --data_backend torch names the file") from None
        device = torch.device("cuda", torch.cuda.current_device()) if self.spec.device == "gpu" else None
        raw_image = torch.float32 if self.spec.out_dtype == torch.float32 else torch.float16
        out = []
        for tl, dtype in ((images, raw_image), (labels, torch.int32)):
            dense = tl.as_tensor()
            buf = torch.empty(dense.shape(), dtype=dtype, device=device)
            if device is not None:
                feed_ndarray(dense, buf, cuda_stream=torch.cuda.current_stream(device))
            else:
                feed_ndarray(dense, buf)
            out.append(buf)
        return out[0].to(self.spec.out_dtype), out[1].view(-1).long()

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self._pipe.build()
        while self.position < self.skip:
            self._next()
            self.position += 1
        while self.position < self.steps:
            batch = self._next()
            self.position += 1
            yield batch

    def state_dict(self) -> dict:
        """What a mid-epoch checkpoint needs: ``{"seed", "position"}`` (rebuild with ``skip=position``)."""
        return {"seed": self.seed, "position": self.position}
