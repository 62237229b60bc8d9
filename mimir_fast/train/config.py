"""Run configurations: typed dataclasses, a docstring per field, range checks on creation.

``RunConfig`` holds what every training run shares (optimisation, data, checkpoints, device);
``PretrainConfig`` adds MIMIR's objective and ``FinetuneConfig`` adversarial fine-tuning. Field names are
the MAE/MIMIR flag names, so ``--blr 1.5e-4`` sets ``blr``; ``eps`` and ``alpha`` are in /255 units, as MIMIR's
scripts pass them. The CLI builds its flags and their help from these classes.
"""

from __future__ import annotations

import ast
import inspect
from dataclasses import asdict, dataclass, fields, is_dataclass
from functools import cache

from ..errors import ConfigError

METHODS = ("mimir", "mae", "maep", "nim")
NIM_SIGMA_DISTS = ("gamma", "uniform", "fixed")
MAEP_PAIR_ATTACKS = ("mae", "purifier", "none")
FINETUNE_METHODS = ("pgd", "trades", "clean", "de3")
DATA_KINDS = ("auto", "digits", "digits-holdout", "folder", "synthetic")
DATA_BACKENDS = ("auto", "dali", "torch", "synthetic")
DALI_DEVICES = ("auto", "cpu", "gpu")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "bf16", "fp32")
COMPILE_MODES = ("auto", "on", "cudagraphs", "off")
OPTIMIZERS = ("adamw", "apex_fused_adam")


@dataclass(kw_only=True)
class RunConfig:
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

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Range checks shared by every run; subclasses extend this."""
        _choice("data", self.data, DATA_KINDS)
        _choice("data_backend", self.data_backend, DATA_BACKENDS)
        _choice("dali_device", self.dali_device, DALI_DEVICES)
        _choice("device", self.device, DEVICES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("compile", self.compile, COMPILE_MODES)
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _check(self.max_nonfinite_steps >= 1, f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")
        _check(self.input_size >= 1 and self.patch_size >= 1, "input_size and patch_size must be positive")
        _check(
            self.input_size % self.patch_size == 0,
            f"input_size {self.input_size} is not a multiple of patch_size {self.patch_size}",
        )
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.accum_iter >= 1, f"accum_iter must be >= 1, got {self.accum_iter}")
        _check(self.global_batch_size is None or self.global_batch_size >= 1,
               f"global_batch_size must be >= 1, got {self.global_batch_size}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        _check(self.blr > 0, f"blr must be > 0, got {self.blr}")
        _check(self.lr is None or self.lr > 0, f"lr must be > 0, got {self.lr}")
        _check(self.min_lr >= 0, f"min_lr must be >= 0, got {self.min_lr}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        _check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        _check(self.synthetic_size >= 1, f"synthetic_size must be >= 1, got {self.synthetic_size}")
        _check(self.save_freq >= 1, f"save_freq must be >= 1, got {self.save_freq}")
        _check(self.save_every_steps >= 0, f"save_every_steps must be >= 0, got {self.save_every_steps}")
        _check(self.print_freq >= 1, f"print_freq must be >= 1, got {self.print_freq}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")

    @property
    def num_patches(self) -> int:
        return (self.input_size // self.patch_size) ** 2

    @property
    def data_kind(self) -> str:
        """The data source after resolving ``auto``."""
        if self.data != "auto":
            return self.data
        return "folder" if self.data_path else "digits"

    def to_dict(self) -> dict:
        """A plain dict (what checkpoints store under ``args``)."""
        return asdict(self)


@dataclass(kw_only=True)
class PretrainConfig(RunConfig):
    """A MIMIR or MAE pretraining run."""

    preset: str = "digits"
    """Named recipe to start from: digits, cifar10_vit_t/_s/_b, tinyimagenet, imagenet_vit_s/_b (flags override it)."""
    model: str = "mae_vit_micro"
    """Model factory in ``mimir_fast.models_mae`` (e.g. mae_vit_small, mae_vit_base_patch16)."""
    epochs: int = 30
    """Epochs to train."""
    warmup_epochs: float = 2.0
    """Epochs of linear lr warmup from 0, then half-cosine decay to min_lr (past epochs: warmup never ends)."""
    norm_pix_loss: bool = True
    """Normalise each target patch by its mean and unbiased variance (on in every MIMIR script)."""
    mask_ratio: float = 0.75
    """Fraction of patches removed in the training forward, in [0, 1)."""
    method: str = "mimir"
    """mimir: MAE on PGD examples plus the HSIC penalty; mae: plain MAE (no attack, no HSIC); maep: the MAEP
    purifier (masked x_adv -> clean x, masked MSE plus L1; needs --no-norm_pix_loss); nim: NIM (no masking, Gaussian
    noise on every pixel, all patches reconstructed; the nim_* fields)."""
    steps: int = 1
    """PGD steps K of the pretraining attack (MIMIR: 1)."""
    eps: float = 8.0
    """L∞ attack radius in /255 units (MIMIR: 8)."""
    alpha: float = 10.0
    """Attack step size in /255 units (MIMIR: 10)."""
    attack_mask_ratio: float = 0.75
    """Mask ratio of each attack forward; MIMIR's attack uses the forward's default 0.75."""
    mi_xpl: float = 1e-5
    """λ, the weight of HSIC(latent, x_adv) in the loss (MIMIR: 1e-5); 0 turns the penalty off."""
    hsic_sigma: float = 5.0
    """HSIC Gaussian bandwidth factor σ (MIMIR: 5)."""
    hsic_ridge: float = 1e-5
    """HSIC ridge ε in (K̃ + ε m I) (MIMIR: 1e-5)."""
    maep_mask_ratio: float = 0.5
    """maep: mask ratio of the training forward, in [0, 1) (MAEP: 0.5; mask_ratio is not used by maep)."""
    maep_l1_weight: float = 1.0
    """maep: weight of the L1 purification loss mean|P(x_adv) - x| (our choice; the paper's is unknown)."""
    maep_mae_weight: float = 1.0
    """maep: weight of the masked-patch MSE (our choice; the paper's is unknown)."""
    maep_pair_attack: str = "mae"
    """maep: how x_adv is made each step (our choice; the paper's is unknown): mae (PGD on the purifier's masked
    reconstruction loss, MIMIR's attack, with eps/alpha/steps/attack_mask_ratio), purifier (PGD maximising the
    L1 purification loss through the unmasked purifier) or none (x_adv = x)."""
    maep_stage: str = "masked"
    """maep: masked (stage 1: masked x_adv -> clean x, from scratch) or lora (stage 2: LoRA on the decoder's linears
    of the maep_init model at mask ratio 0, L1 purification loss only; only the LoRA matrices train)."""
    maep_init: str | None = None
    """maep stage lora: the stage-1 (--maep_stage masked) checkpoint to start from (required there; a new
    output_dir, as resuming goes by checkpoints of the lora stage)."""
    maep_lora_rank: int = 4
    """maep stage lora: rank r >= 1 of each decoder linear's update (alpha / r) · B A."""
    maep_lora_alpha: float = 8.0
    """maep stage lora: LoRA scale numerator alpha > 0; the update is scaled by alpha / rank."""
    nim_sigma_dist: str = "gamma"
    """nim: distribution of the per-image noise std σ (/255 units): gamma (NIM), uniform or fixed."""
    nim_gamma_shape: float = 25.0
    """nim: shape k of σ ~ Gamma(k, scale θ) (NIM: 25; mean kθ = 75, std sqrt(k)·θ = 15)."""
    nim_gamma_scale: float = 3.0
    """nim: scale θ of σ ~ Gamma(k, scale θ) (NIM: 3, i.e. rate 1/3)."""
    nim_sigma_low: float = 0.0
    """nim: lower end of σ ~ U(low, high) with nim_sigma_dist uniform (/255 units)."""
    nim_sigma_high: float = 150.0
    """nim: upper end of σ ~ U(low, high) with nim_sigma_dist uniform (/255 units; NIM's default 150)."""
    nim_sigma: float = 75.0
    """nim: σ with nim_sigma_dist fixed (/255 units)."""
    output_dir: str = "output_dir"
    """Where checkpoints, log.txt, TensorBoard events and the reconstruction figure go."""

    def validate(self) -> None:
        RunConfig.validate(self)
        _choice("method", self.method, METHODS)
        for name in ("mask_ratio", "attack_mask_ratio", "maep_mask_ratio"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value}")
            _check(int(self.num_patches * (1 - value)) >= 1, f"{name} {value} keeps 0 of {self.num_patches} patches")
        _check(self.eps >= 0, f"eps must be >= 0 (in /255 units), got {self.eps}")
        _check(self.alpha >= 0, f"alpha must be >= 0 (in /255 units), got {self.alpha}")
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.mi_xpl >= 0, f"mi_xpl must be >= 0, got {self.mi_xpl}")
        _check(self.hsic_sigma > 0, f"hsic_sigma must be > 0, got {self.hsic_sigma}")
        _check(self.hsic_ridge > 0, f"hsic_ridge must be > 0, got {self.hsic_ridge}")
        _choice("maep_pair_attack", self.maep_pair_attack, MAEP_PAIR_ATTACKS)
        _choice("maep_stage", self.maep_stage, ("masked", "lora"))
        _check(self.maep_stage == "masked" or self.method == "maep",
               f"maep_stage lora fine-tunes a MAEP purifier: it needs --method maep, got method {self.method}")
        _check(self.maep_stage == "masked" or self.maep_init,
               "maep_stage lora needs --maep_init, the stage-1 (--maep_stage masked) checkpoint to start from")
        _check(self.maep_init is None or self.maep_stage == "lora",
               "maep_init is the starting point of --maep_stage lora; stage masked trains from scratch")
        _check(self.maep_lora_rank >= 1, f"maep_lora_rank must be >= 1, got {self.maep_lora_rank}")
        _check(self.maep_lora_alpha > 0, f"maep_lora_alpha must be > 0, got {self.maep_lora_alpha}")
        _choice("nim_sigma_dist", self.nim_sigma_dist, NIM_SIGMA_DISTS)
        _check(self.nim_gamma_shape > 0 and self.nim_gamma_scale > 0,
               f"nim_gamma_shape and nim_gamma_scale must be > 0, got {self.nim_gamma_shape} and "
               f"{self.nim_gamma_scale}")
        _check(0 <= self.nim_sigma_low <= self.nim_sigma_high,
               f"nim_sigma_low and nim_sigma_high need 0 <= low <= high, got {self.nim_sigma_low} and "
               f"{self.nim_sigma_high}")
        _check(self.nim_sigma >= 0, f"nim_sigma must be >= 0 (in /255 units), got {self.nim_sigma}")
        weights = (self.maep_l1_weight, self.maep_mae_weight)
        _check(min(weights) >= 0 and sum(weights) > 0,
               f"maep_l1_weight and maep_mae_weight must be >= 0 and not both 0, got {self.maep_l1_weight} and "
               f"{self.maep_mae_weight}")
        _check(self.method != "maep" or not self.norm_pix_loss,
               "method maep trains pixel predictions (its L1 loss compares them with the clean image): "
               "add --no-norm_pix_loss")
        _check(
            not self.uses_hsic or self.batch_size >= 2,
            f"batch_size must be >= 2 when the HSIC penalty is on (mi_xpl > 0), got {self.batch_size}",
        )

    @property
    def uses_hsic(self) -> bool:
        """Whether the HSIC penalty is part of the loss."""
        return self.method == "mimir" and self.mi_xpl > 0


@dataclass(kw_only=True)
class FinetuneConfig(RunConfig):
    """Adversarial fine-tuning of a classifier (MIMIR ``finetune.py``), from a pretraining checkpoint or scratch."""

    preset: str = "digits"
    """Named recipe to start from: digits, cifar10_vit_t/_s/_b, imagenet_vit_s/_b (flags override it)."""
    model: str = "vit_micro"
    """Classifier factory in ``mimir_fast.models_vit`` (e.g. vit_small, vit_base_patch16)."""
    num_classes: int = 10
    """Number of classes; must match the data."""
    finetune: str | None = None
    """Pretraining checkpoint (MAE/MIMIR) whose encoder initialises the classifier; none: train from scratch."""
    method: str = "pgd"
    """pgd: Madry PGD-AT on adversarial examples only; trades: TRADES; clean: no attack; de3: NIM/De^3 (no attack;
    train on the frozen --purifier's reconstructions of x + σε with σ ~ U(de3_sigma_low, de3_sigma_high) per image,
    validate through De^3 at val_gamma)."""
    steps: int = 2
    """PGD steps of the training attack (MIMIR: 10 for CIFAR-10, 1 for ImageNet)."""
    eps: float = 8.0
    """L∞ training-attack radius in /255 units."""
    alpha: float = 2.0
    """Training-attack step size in /255 units."""
    trades_beta: float = 6.0
    """TRADES weight of the KL term."""
    purifier: str | None = None
    """de3: the NIM pretraining checkpoint (mimir-fast pretrain --method nim) whose frozen model reconstructs the
    training inputs; required with --method de3 and used by no other method."""
    de3_sigma_low: float = 0.0
    """de3: lower end of the per-image training noise σ ~ U(low, high), in /255 units (NIM: 0)."""
    de3_sigma_high: float = 30.0
    """de3: upper end of the per-image training noise σ ~ U(low, high), in /255 units (NIM: 30)."""
    denorm_stats: str = "clean"
    """de3: where the reconstruction's per-patch mean and std come from: clean (the un-noised input, as released),
    noisy (the noisy input) or none (a NIM model trained without norm-pix); as eval's --denorm_stats."""
    val_gamma: float = 70.0
    """de3: the De^3 noise std γ (/255 units) of the per-epoch validation accuracy (NIM: 70; seeded noise)."""
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
        _choice("method", self.method, FINETUNE_METHODS)
        _check(self.num_classes >= 2, f"num_classes must be >= 2, got {self.num_classes}")
        _check(self.eps >= 0, f"eps must be >= 0 (in /255 units), got {self.eps}")
        _check(self.alpha >= 0, f"alpha must be >= 0 (in /255 units), got {self.alpha}")
        _check(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        _check(self.trades_beta >= 0, f"trades_beta must be >= 0, got {self.trades_beta}")
        _check(0 <= self.smoothing < 1, f"smoothing must be in [0, 1), got {self.smoothing}")
        _check(0 <= self.drop_path < 1, f"drop_path must be in [0, 1), got {self.drop_path}")
        _check(0 < self.layer_decay <= 1, f"layer_decay must be in (0, 1], got {self.layer_decay}")
        _check(self.head_init_std > 0, f"head_init_std must be > 0, got {self.head_init_std}")
        _check(self.method != "de3" or bool(self.purifier),
               "method de3 needs --purifier CHECKPOINT (from mimir-fast pretrain --method nim)")
        _check(self.method == "de3" or not self.purifier,
               f"--purifier is used only by --method de3 (method is {self.method})")
        _check(0 <= self.de3_sigma_low <= self.de3_sigma_high,
               f"de3_sigma_low and de3_sigma_high need 0 <= low <= high, got {self.de3_sigma_low} and "
               f"{self.de3_sigma_high}")
        _choice("denorm_stats", self.denorm_stats, ("clean", "noisy", "none"))
        _check(0 <= self.val_gamma < float("inf"), f"val_gamma must be >= 0 (in /255 units), got {self.val_gamma}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    _check(value in choices, f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of a dataclass (inherited ones too) to the docstring written under it; the most
    derived class's docstring wins."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass) or klass is object:
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return {f.name: docs.get(f.name, "") for f in fields(cls)}
