"""The demo's settings (``DemoConfig``, range-checked) and its fixed training recipe: overrides of the ``digits``
presets, chosen on a split of the training images (docs/demo.md)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError

VAL_IMAGES = 297  # the digits validation set

DEMO_ATTACKS = ("clean", "pgd20", "pgd100", "pgd-mi", "aa")

SUBSET_ATTACKS = ("aa", "aa-rand")  # run on the AutoAttack subset; every other attack on the n_ex images

NAMES = {"clean": "clean", "pgd20": "PGD-20", "aa": "AutoAttack", "pgd100": "PGD-100", "pgd-mi": "PGD-MI",
         "aa-rand": "AA rand"}

CHECK_NAMES = ("eps0_equals_clean", "monotone_in_eps", "autoattack_le_pgd", "large_eps_breaks_model",
               "gradients_flow", "square_adds_little", "perturbation_within_eps")

PRETRAIN_RECIPE: dict = {"input_size": 32, "patch_size": 16}
"""Overrides of the ``digits`` pretraining preset for the MIMIR and MAE rows (docs/demo.md: how it was chosen)."""

FINETUNE_RECIPE: dict = {"epochs": 20, "input_size": 32, "patch_size": 16, "layer_decay": 0.85, "method": "trades",
                         "trades_beta": 6.0, "alpha": 4.0}
"""Overrides of the ``digits`` fine-tuning preset for the three rows: TRADES (β = 6) with 2 PGD steps of 4/255."""

SCRATCH_RECIPE: dict = {"layer_decay": 1.0}
"""The scratch row's exception, on top of ``FINETUNE_RECIPE``."""


@dataclass(kw_only=True)
class DemoConfig:
    """The demo's few knobs; the training recipe is fixed (``FINETUNE_RECIPE``, ``PRETRAIN_RECIPE``)."""

    output_dir: str = "output_dir/demo"
    """Where each run's folder, results.md, results.json and results.png go."""
    seeds: int = 1
    """Seeds per row: 1 runs seed 0; N runs seeds 0..N-1 and reports mean ± standard deviation per metric."""
    n_ex: int | None = None
    """Validation images for clean accuracy, PGD-20 and the curve (the first n_ex of the 297; default all)."""
    aa_n_ex: int = 100
    """AutoAttack's fixed subset: the first aa_n_ex validation images (at most n_ex)."""
    attacks: str = "clean,pgd20,aa"
    """Attacks of the evaluation, from clean, pgd20, pgd100, pgd-mi, aa (aa on the AutoAttack subset, the others
    on the n_ex images); purifier rows use aa-rand for De^3 and add pgd20-gb."""
    eps_curve: str = "0,8,64"
    """Radii (/255) of the PGD-20 curve; the integrity checks need 0 and a radius >= 64."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu or cuda."""
    workers: int = 0
    """Runs (trainings, evaluations) side by side, each in its own process, as their order allows; 0: two
    single-threaded ones on a CPU with two or more cores (the small models here gain little from a second
    thread, two processes nearly double the throughput), one on a GPU."""
    purifiers: bool = False
    """Also run the NIM/De^3 and MAEP rows (and the γ sweep)."""
    gamma: float = 70.0
    """De^3 noise level of the NIM/De^3 row (/255; NIM's default test-time 70)."""
    gamma_sweep: str = "0,70,140"
    """γ values of the De^3 sweep (clean and PGD-20 at ε = 8/255, on the n_ex images); empty: no sweep."""
    maep_lora_epochs: int = 5
    """Epochs of MAEP's stage 2 (LoRA on the decoder at mask ratio 0)."""

    def __post_init__(self) -> None:
        from ..evaluate.config import LARGE_EPS

        _check(self.seeds >= 1, f"seeds must be >= 1, got {self.seeds}")
        _check(self.n_ex is None or 1 <= self.n_ex <= VAL_IMAGES,
               f"n_ex must be in [1, {VAL_IMAGES}], got {self.n_ex}")
        _check(1 <= self.aa_n_ex <= self.n_images,
               f"aa_n_ex must be in [1, n_ex = {self.n_images}], got {self.aa_n_ex}")
        _check(bool(self.attack_list), "attacks lists no attack")
        for name in self.attack_list:
            _check(name in DEMO_ATTACKS, f"unknown demo attack {name!r}; choose from: {', '.join(DEMO_ATTACKS)}")
        curve = parse_numbers("eps_curve", self.eps_curve)
        _check(0.0 in curve and max(curve, default=0.0) >= LARGE_EPS,
               f"eps_curve needs 0 and a radius >= {LARGE_EPS:g} for the integrity checks, got {self.eps_curve!r}")
        _check(self.device in ("auto", "cpu", "cuda"), f"unknown device {self.device!r}; choose one of: auto, cpu, "
                                                        "cuda")
        _check(self.gamma >= 0, f"gamma must be >= 0 (De^3 noise std in /255 units), got {self.gamma}")
        parse_numbers("gamma_sweep", self.gamma_sweep)
        _check(self.maep_lora_epochs >= 1, f"maep_lora_epochs must be >= 1, got {self.maep_lora_epochs}")
        _check(self.workers >= 0, f"workers must be >= 0 (0: automatic), got {self.workers}")

    @property
    def n_images(self) -> int:
        """Validation images of the clean and PGD evaluation."""
        return self.n_ex or VAL_IMAGES

    @property
    def attack_list(self) -> list[str]:
        return list(dict.fromkeys(a.strip() for a in self.attacks.split(",") if a.strip()))


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def parse_numbers(name: str, text: str) -> list[float]:
    """Comma-separated numbers >= 0."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"{name} must be comma-separated numbers, got {text!r}") from None
    for v in values:
        _check(v >= 0, f"{name} values must be >= 0, got {v:g}")
    return values


def recipe() -> dict:
    """The demo's training recipe: overrides of the ``digits`` presets."""
    return {"pretrain": {"preset": "digits", **PRETRAIN_RECIPE}, "finetune": {"preset": "digits", **FINETUNE_RECIPE},
            "scratch_finetune": {"preset": "digits", **FINETUNE_RECIPE, **SCRATCH_RECIPE}}
