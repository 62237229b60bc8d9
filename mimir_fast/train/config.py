"""Run configurations: typed dataclasses, a docstring per field, range checks on creation.

``RunConfig`` holds what every training run shares (optimisation, data, checkpoints, device);
``PretrainConfig`` adds what every pretraining method shares (the autoencoder, its masking and the pretraining
attack) and ``FinetuneConfig`` what every fine-tuning method shares (the classifier and its training attack).
A method's own settings are its ``options`` (``mimir_fast.methods``). Field names are the MAE/MIMIR flag names,
so ``--blr 1.5e-4`` sets ``blr``; ``eps`` and ``alpha`` are in /255 units, as MIMIR's scripts pass them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ..configs import Config, DataSource, Options, at_least, check, choice, in_unit_interval, positive
from ..device import DEVICES, PRECISIONS

DATA_KINDS = ("auto", "digits", "digits-holdout", "folder", "synthetic")
DATA_BACKENDS = ("auto", "dali", "torch", "synthetic")
DALI_DEVICES = ("auto", "cpu", "gpu")
COMPILE_MODES = ("auto", "on", "cudagraphs", "off")
OPTIMIZERS = ("adamw", "apex_fused_adam")
RESUMABLE_CHANGES = frozenset({
    "preset", "epochs", "output_dir", "log_dir", "resume", "auto_resume", "save_freq", "save_every_steps",
    "print_freq", "num_workers", "data_backend", "dali_device", "device", "precision", "compile", "optimizer",
    "max_nonfinite_steps",
})
"""The settings a resumed run may change (how long, where, how fast, how often it reports); every other setting
defines the run, and auto-resume refuses a checkpoint that records another value."""


@dataclass(kw_only=True)
class RunConfig(Config, DataSource):
    """What every training run needs. Create it with keywords; invalid values raise ``ConfigError``.

    The defaults of each config class are its ``digits`` recipe (the CPU demo)."""

    preset: str = "digits"
    """Named recipe to start from (flags override it); see the command's --help for the list."""
    model: str = ""
    """Model factory name."""
    input_size: int = 16
    """Square image side in pixels; a multiple of patch_size."""
    patch_size: int = 4
    """Square patch side in pixels (MIMIR: 2 for CIFAR-10, 16 for ImageNet)."""

    # --- optimisation
    batch_size: int = 64
    """Images per step on each process."""
    accum_iter: int = 1
    """Gradient accumulation steps; effective batch = batch_size × accum_iter × world size."""
    global_batch_size: int | None = None
    """Effective batch over all processes; when given, batch_size becomes global_batch_size / (world size × accum_iter),
    which must divide it (keeps a recipe's batch and lr when the GPU count changes)."""
    epochs: int = 12
    """Epochs to train."""
    warmup_epochs: float = 1.0
    """Epochs of linear lr warmup from 0, then half-cosine decay to min_lr (past epochs: warmup never ends)."""
    blr: float = 1.5e-3
    """Base learning rate: lr = blr × effective batch / 256, unless lr is given."""
    lr: float | None = None
    """Absolute learning rate; overrides blr."""
    min_lr: float = 0.0
    """Final learning rate of the cosine schedule."""
    weight_decay: float = 0.05
    """AdamW weight decay; 1-D parameters and biases are not decayed."""

    # --- data
    data: str = "auto"
    """auto (folder if data_path is set, else digits), digits, digits-holdout (1,200 of the training digits train,
    the other 300 validate: for choosing a recipe without the validation set), folder, or synthetic."""
    data_path: str | None = None
    """ImageFolder root (with train/ and val/, or class folders) or a flat folder of images."""
    num_workers: int = 0
    """DataLoader worker processes for folder data (DALI: CPU threads, at least 2, or 4 with --dali_device gpu)."""
    synthetic_size: int = 1024
    """Images per epoch with --data synthetic."""
    data_backend: str = "auto"
    """Training loader: dali (NVIDIA DALI, image folders), torch (DataLoader), synthetic (one device batch,
    repeated: no loading cost), or auto (dali if it is installed, CUDA is available and the data is a folder)."""
    dali_device: str = "auto"
    """Where DALI decodes and augments: gpu (hardware JPEG decoder), cpu, or auto (gpu when training on CUDA)."""

    # --- run
    output_dir: str = "output_dir"
    """Where checkpoints, log.txt and TensorBoard events go."""
    log_dir: str | None = None
    """TensorBoard directory; defaults to output_dir."""
    resume: str | None = None
    """Checkpoint to resume from; without it the newest checkpoint in output_dir is resumed."""
    auto_resume: bool = True
    """Resume from the newest checkpoint-*.pth in output_dir when resume is not given."""
    save_freq: int = 20
    """Save checkpoint-{epoch}.pth every save_freq epochs and after the last epoch."""
    save_every_steps: int = 0
    """Also write checkpoint-mid.pth every this many updates within an epoch, for exact mid-epoch resume (0: off;
    see mimir_fast/train/midepoch.py)."""
    print_freq: int = 20
    """Steps between progress updates; the loss is read back from the device only at these points."""
    seed: int = 0
    """Random seed; each epoch reseeds from (seed, rank, epoch), so resumed runs continue exactly."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu or cuda."""
    precision: str = "auto"
    """auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32."""
    fsdp: bool = False
    """Under torchrun, shard parameters, gradients and optimizer state with FSDP2 (per block, then the root) instead of
    DDP; checkpoints still hold full state dicts in MAE's layout."""
    compile: str = "auto"
    """auto (compiled on CUDA, eager on CPU), on (torch.compile of the forward), cudagraphs (also CUDA graphs;
    CUDA only) or off (eager)."""
    optimizer: str = "adamw"
    """adamw (torch's fused AdamW) or apex_fused_adam (NVIDIA apex's FusedAdam; needs apex, not on PyPI)."""
    max_nonfinite_steps: int = 5
    """Updates with a NaN/inf loss or gradient are skipped; this many in a row within an epoch stop the run."""

    method: str = ""
    """The training method (see the command's --help for the list)."""
    options: Options | None = None
    """The method's own settings; None: its defaults (filled in when the method is created)."""

    def validate(self) -> None:
        """Range checks shared by every run; subclasses extend this."""
        choice("data", self.data, DATA_KINDS)
        choice("data_backend", self.data_backend, DATA_BACKENDS)
        choice("dali_device", self.dali_device, DALI_DEVICES)
        choice("device", self.device, DEVICES)
        choice("precision", self.precision, PRECISIONS)
        choice("compile", self.compile, COMPILE_MODES)
        choice("optimizer", self.optimizer, OPTIMIZERS)
        at_least("max_nonfinite_steps", self.max_nonfinite_steps, 1)
        check(self.input_size >= 1 and self.patch_size >= 1, "input_size and patch_size must be positive")
        check(self.input_size % self.patch_size == 0,
              f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}")
        for name in ("batch_size", "accum_iter", "global_batch_size", "epochs", "save_freq", "print_freq"):
            at_least(name, getattr(self, name), 1)
        for name in ("warmup_epochs", "min_lr", "weight_decay", "num_workers", "save_every_steps", "seed"):
            at_least(name, getattr(self, name), 0)
        at_least("synthetic_size", self.synthetic_size, 1)
        positive("blr", self.blr)
        positive("lr", self.lr)

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        """The flat dict checkpoints store under ``args`` and ``config.json`` holds: every shared field, then the
        method's options under their flag names."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "options"}
        return {**flat, **(self.options.to_flags() if self.options is not None else {})}


@dataclass(kw_only=True)
class PretrainConfig(RunConfig):
    """What every pretraining method shares: the autoencoder, its masking and the pretraining attack."""

    preset: str = "digits"
    """Named recipe to start from: digits, cifar10_vit_t/_s/_b, tinyimagenet, imagenet_vit_s/_b (flags override it)."""
    model: str = "mae_vit_micro"
    """Model factory in ``mimir_fast.models_mae`` (e.g. mae_vit_small, mae_vit_base_patch16)."""
    epochs: int = 30
    """Epochs to train."""
    warmup_epochs: float = 2.0
    """Epochs of linear lr warmup from 0, then half-cosine decay to min_lr (past epochs: warmup never ends)."""
    method: str = "mimir"
    """The pretraining method: mimir, mae, nim or maep (their own flags are listed under each)."""
    norm_pix_loss: bool = True
    """Normalise each target patch by its mean and unbiased variance (on in every MIMIR script; maep turns it off)."""
    mask_ratio: float = 0.75
    """Fraction of patches removed in the training forward, in [0, 1)."""
    steps: int = 1
    """PGD steps K of the pretraining attack (mimir; maep's pair attack) (MIMIR: 1)."""
    eps: float = 8.0
    """L∞ radius of the pretraining attack in /255 units (MIMIR: 8)."""
    alpha: float = 10.0
    """Step size of the pretraining attack in /255 units (MIMIR: 10)."""
    attack_mask_ratio: float = 0.75
    """Mask ratio of each attack forward; MIMIR's attack uses the forward's default 0.75."""
    output_dir: str = "output_dir"
    """Where checkpoints, log.txt, TensorBoard events and the reconstruction figure go."""

    def validate(self) -> None:
        RunConfig.validate(self)
        for name in ("mask_ratio", "attack_mask_ratio"):
            in_unit_interval(name, getattr(self, name))
            keeps_some(name, getattr(self, name), self.num_patches)
        at_least("eps", self.eps, 0, " (in /255 units)")
        at_least("alpha", self.alpha, 0, " (in /255 units)")
        at_least("steps", self.steps, 1)


@dataclass(kw_only=True)
class FinetuneConfig(RunConfig):
    """What every fine-tuning method shares: the classifier, its start and its training attack."""

    preset: str = "digits"
    """Named recipe to start from: digits, cifar10_vit_t/_s/_b, imagenet_vit_s/_b (flags override it)."""
    model: str = "vit_micro"
    """Classifier factory in ``mimir_fast.models_vit`` (e.g. vit_small, vit_base_patch16)."""
    num_classes: int = 10
    """Number of classes; must match the data."""
    finetune: str | None = None
    """Pretraining checkpoint (MAE/MIMIR/NIM) whose encoder initialises the classifier; none: train from scratch."""
    method: str = "pgd"
    """The fine-tuning method: pgd, trades, clean or de3 (their own flags are listed under each)."""
    steps: int = 2
    """PGD steps of the training attack (pgd, trades) (MIMIR: 10 for CIFAR-10, 1 for ImageNet)."""
    eps: float = 8.0
    """L∞ training-attack radius in /255 units."""
    alpha: float = 2.0
    """Training-attack step size in /255 units."""
    smoothing: float = 0.1
    """Label smoothing of the cross-entropy."""
    drop_path: float = 0.1
    """Drop-path rate of the last block, rising linearly from 0 over depth."""
    layer_decay: float = 0.65
    """Layer-wise lr decay: block k gets decay^(depth + 1 − (k + 1)) of the lr (MIMIR: 0.65)."""
    head_init_std: float = 2e-2
    """Std of the head's trunc-normal init (MIMIR: 2e-2 for CIFAR-10, 2e-5 for ImageNet)."""
    epochs: int = 10
    """Epochs to train."""
    blr: float = 1e-2
    """Base learning rate: lr = blr × effective batch / 256, unless lr is given."""
    min_lr: float = 1e-6
    """Final learning rate of the cosine schedule."""
    output_dir: str = "output_dir/finetune"
    """Where checkpoints, log.txt and TensorBoard events go."""

    def validate(self) -> None:
        RunConfig.validate(self)
        at_least("num_classes", self.num_classes, 2)
        at_least("eps", self.eps, 0, " (in /255 units)")
        at_least("alpha", self.alpha, 0, " (in /255 units)")
        at_least("steps", self.steps, 1)
        in_unit_interval("smoothing", self.smoothing)
        in_unit_interval("drop_path", self.drop_path)
        check(0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1], got {self.layer_decay}")
        positive("head_init_std", self.head_init_std)


def keeps_some(name: str, ratio: float, num_patches: int) -> None:
    """A mask ratio must keep at least one of ``num_patches`` patches."""
    check(int(num_patches * (1 - ratio)) >= 1, f"{name} {ratio} keeps 0 of {num_patches} patches")
