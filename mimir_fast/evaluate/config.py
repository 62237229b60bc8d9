"""The evaluation configuration (``mimir-fast eval``): one typed dataclass, a docstring per field, range checks."""

from __future__ import annotations

from dataclasses import dataclass

from ..configs import Config, DataSource, at_least, check, choice, positive
from ..data.digits import KINDS as DIGITS_KINDS
from ..device import DEVICES
from ..errors import ConfigError
from ..purify.de3 import DENORM_STATS
from ..purify.maep import TRANSFERS
from .defenses import DEFENSES

ATTACKS = ("clean", "pgd20", "pgd100", "aa", "aa-rand", "pgd-mi", "pgd20-gb", "aa-gb")
GRAYBOX_ATTACKS = ("pgd20-gb", "aa-gb")
PREPROCESSING = ("auto", "none", "Res256Crop224", "BicubicRes256Crop224")
DATA_KINDS = ("auto", *DIGITS_KINDS, "folder")
GRADIENTS = ("exact", "bpda")
RANDOMIZED_EOT = 20  # EOT draws per gradient for a randomised defence (AutoAttack rand's eot_iter)
RANDOMIZED_DRAWS = 10  # stochastic forward passes per example when scoring a randomised defence
LARGE_EPS = 64.0  # /255: at or above this, a sound attack should bring accuracy to about 0


@dataclass(kw_only=True)
class EvalConfig(Config, DataSource):
    """What to evaluate and how. Attacks run in fp32 with the model in eval mode."""

    resume: str = ""
    """The classifier checkpoint to evaluate (from mimir-fast finetune)."""
    attacks: str | None = None
    """Comma-separated: clean, pgd20, pgd100, aa (AutoAttack standard), aa-rand (AutoAttack rand), pgd-mi, and with
    a defence pgd20-gb, aa-gb (gray-box). Default: clean,pgd20,pgd100,aa; with --defense de3
    clean,pgd20,aa-rand,pgd20-gb; with --defense maep clean,pgd20,aa,pgd20-gb."""
    eps: float = 8.0
    """L∞ radius in /255 units (RobustBench: 8 for CIFAR-10, 4 for ImageNet)."""
    alpha: float = 2.0
    """PGD step size in /255 units at eps (MIMIR: 2 for CIFAR-10, 1 for ImageNet); scaled with eps on the curve."""
    eps_curve: str = "0,1,2,4,8,16,32,64,128"
    """Radii (/255) of the PGD-20 robust-accuracy curve; 0 and a large radius feed the integrity checks."""
    pgd_mi_lambda: float = 1e-5
    """λ of the PGD-MI adaptive attack (CE + λ·HSIC(features, x'))."""
    pgd_mi_steps: int = 100
    """Steps of the PGD-MI adaptive attack (MIMIR: 100)."""
    n_ex: int | None = None
    """Evaluate the first n_ex examples of the evaluation set (RobustBench style); all by default."""
    ids: str | None = None
    """File listing the examples to evaluate, one per line: indices, or image paths relative to data_path."""
    data: str = "auto"
    """auto (folder if data_path is set, else digits), digits, digits-holdout (the 300 held-out training digits)
    or folder."""
    data_path: str | None = None
    """Evaluation images: the val/ folder of this root, or the root itself."""
    preprocessing: str = "auto"
    """auto (bicubic resize 256/224 and center crop above 64 px), none, Res256Crop224, BicubicRes256Crop224."""
    model: str | None = None
    """Classifier name; taken from the checkpoint, and an error if it differs."""
    num_classes: int | None = None
    """Number of classes; taken from the checkpoint, and an error if it differs."""
    input_size: int | None = None
    """Image size; taken from the checkpoint, and an error if it differs."""
    batch_size: int = 250
    """Evaluation batch (fra31's AutoAttack default: 250)."""
    num_workers: int = 0
    """DataLoader workers for folder data."""
    seed: int = 0
    """Seed of the random starts (PGD: drawn per example, so results do not depend on batching or sharding)."""
    output_dir: str = "output_dir/eval"
    """Where eval_results.json and robust_curve.png go."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu or cuda."""
    defense: str = "none"
    """none; de3: classify De^3 purifications (noise of std gamma, NIM reconstruction from --purifier); maep:
    classify MAEP purifications (--purifier from pretrain --method maep). Attacks then run through purifier and
    classifier with exact gradients (full-gradient, adaptive), except the -gb ones (gray-box: the attack sees the
    classifier alone, and the purifier is applied afterwards; non-adaptive, so weaker)."""
    purifier: str | None = None
    """The purifier checkpoint: de3, a NIM pretraining (pretrain --method nim); maep, a MAEP pretraining."""
    gamma: float = 70.0
    """de3: test-time noise std in /255 units, >= 0 (NIM: 70 or 140; larger: more robust, less accurate)."""
    denorm_stats: str = "clean"
    """de3: patch statistics that de-normalise the reconstruction: clean (released; copies each patch's mean and
    std from the un-noised input, a noise-free gradient path for the attacker), noisy, or none (no norm-pix)."""
    gamma_sweep: str | None = None
    """de3: comma-separated γ values (/255, e.g. 0,35,70,105,140); runs the attacks at each γ and writes
    gamma_curve.json and gamma_curve.png (clean and robust accuracy against γ); --gamma is then unused."""
    transfer: str = "none"
    """maep: how a purifier trained at another image size is applied: none (sizes must match), resize or tile."""
    eot_iter: int | None = None
    """Gradients averaged per PGD step (EOT) against a randomised defence (de3 with gamma > 0; default 20); a
    deterministic model always takes 1."""
    eval_draws: int | None = None
    """Stochastic forward passes per example when scoring a randomised defence (each example's noise is seeded
    by (seed, example, draw), so the scores are reproducible); accuracy is their mean, accuracy_worst the
    fraction right on every draw. Default 10; a deterministic model is scored once."""
    allow_failed_checks: bool = False
    """Exit 0 even when an integrity check fails (by default a failed check ends the command with exit code 3)."""
    gradient: str = "exact"
    """How full-gradient attacks differentiate the purifier: exact (backpropagation through it; every part here
    is differentiable) or bpda (identity backward pass, Athalye et al. 2018; for comparison only)."""

    def validate(self) -> None:
        check(bool(self.resume), "eval needs --resume CHECKPOINT (a classifier from mimir-fast finetune)")
        for name in self.attack_list:
            choice("attack", name, ATTACKS)
        at_least("eps", self.eps, 0, " (in /255 units)")
        positive("alpha", self.alpha)
        for e in self.curve:
            at_least("eps_curve values", e, 0)
        choice("preprocessing", self.preprocessing, PREPROCESSING)
        choice("data", self.data, DATA_KINDS)
        choice("device", self.device, DEVICES)
        for name in ("n_ex", "batch_size", "pgd_mi_steps", "eot_iter", "eval_draws"):
            at_least(name, getattr(self, name), 1)
        at_least("num_workers", self.num_workers, 0)
        at_least("seed", self.seed, 0)
        at_least("pgd_mi_lambda", self.pgd_mi_lambda, 0)
        choice("defense", self.defense, tuple(DEFENSES))
        choice("denorm_stats", self.denorm_stats, DENORM_STATS)
        choice("transfer", self.transfer, TRANSFERS)
        choice("gradient", self.gradient, GRADIENTS)
        defense = DEFENSES[self.defense]
        check(defense.load is None or bool(self.purifier),
              f"--defense {self.defense} needs --purifier CHECKPOINT (from mimir-fast pretrain --method "
              f"{defense.purifier_method})")
        check(self.gamma >= 0, f"gamma must be >= 0 (De^3 noise std in /255 units), got {self.gamma}")
        for g in self.gammas if self.gamma_sweep else []:
            check(g >= 0, f"gamma_sweep values must be >= 0 (De^3 noise std in /255 units), got {g:g}")
        check(not self.gamma_sweep or self.defense == "de3", "--gamma_sweep needs --defense de3")
        graybox = [a for a in self.attack_list if a in GRAYBOX_ATTACKS]
        check(not graybox or defense.load is not None,
              f"gray-box attacks ({', '.join(graybox)}) need a defence (--defense "
              f"{' or '.join(n for n, d in DEFENSES.items() if d.load is not None)})")

    @property
    def attack_list(self) -> list[str]:
        attacks = self.attacks if self.attacks is not None else DEFENSES[self.defense].default_attacks
        return [a.strip() for a in attacks.split(",") if a.strip()]

    @property
    def gammas(self) -> list[float]:
        """The γ values of ``gamma_sweep`` in the given order (duplicates dropped); ``[gamma]`` without a sweep."""
        if not self.gamma_sweep:
            return [self.gamma]
        try:
            values = [float(g) for g in self.gamma_sweep.split(",") if g.strip()]
        except ValueError:
            raise ConfigError(f"gamma_sweep must be comma-separated numbers, got {self.gamma_sweep!r}") from None
        if not values:
            raise ConfigError("gamma_sweep lists no value")
        return list(dict.fromkeys(values))

    @property
    def curve(self) -> list[float]:
        try:
            return sorted({float(e) for e in self.eps_curve.split(",") if e.strip()})
        except ValueError:
            raise ConfigError(f"eps_curve must be comma-separated numbers, got {self.eps_curve!r}") from None
