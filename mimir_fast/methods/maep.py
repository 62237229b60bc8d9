"""``--method maep``: training the MAEP purifier (Chen & Lu, arXiv 2501.16904; test time: ``purify.maep``).

- Stage ``masked`` (``--maep_stage masked``, from scratch): each step makes adversarial partners ``x_adv`` of
  the clean batch ``x`` (``--maep_pair_attack``), encodes the *masked* ``x_adv`` (``--maep_mask_ratio``) and
  predicts every patch of the clean ``x``. Loss: ``maep_mae_weight · L_mae + maep_l1_weight · L_pur``, with
  ``L_mae`` MAE's MSE over the masked patches and ``L_pur = mean |P(x_adv) − x|`` over the whole prediction.
- Stage ``lora`` (``--maep_stage lora --maep_init STAGE1.pth``): LoRA on every decoder linear of the stage-1
  model, at mask ratio 0 (the purifier's setting), with ``L_pur`` alone; only the LoRA matrices train.

MAEP predicts pixels, so the method turns ``norm_pix_loss`` off. Our choices where the paper is silent (the
pair attack, the loss weights) are listed in docs/purifiers.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..attacks import pgd_mae
from ..attacks.linf import attack_mode, linf_pgd, uniform_start
from ..configs import Options, at_least, check, choice, in_unit_interval, positive
from ..errors import CheckpointError, ConfigError
from ..purify.lora import lora_layers, lora_state, merge_lora
from ..purify.maep import STAGES, apply_maep_lora, maep_args, maep_stage, reconstruct
from ..train.checkpoint import load_checkpoint, load_model_state
from ..train.compile import attack_target
from ..train.config import PretrainConfig, keeps_some
from ..train.parallel import unwrap
from ..train.pretrain import PretrainMethod
from .registry import register

PAIR_ATTACKS = ("mae", "purifier", "none")


@dataclass(kw_only=True)
class MaepOptions(Options):
    """MAEP's two training stages, its loss weights and how adversarial partners are made."""

    FLAG_PREFIX = "maep_"

    stage: str = "masked"
    """masked (stage 1: masked x_adv -> clean x, from scratch) or lora (stage 2: LoRA on the decoder's linears of
    the maep_init model at mask ratio 0, L1 purification loss only; only the LoRA matrices train)."""
    mask_ratio: float = 0.5
    """Mask ratio of stage masked's training forward, in [0, 1) (MAEP: 0.5; --mask_ratio is not used)."""
    l1_weight: float = 1.0
    """Weight of the L1 purification loss mean|P(x_adv) - x| (our choice; the paper's is unknown)."""
    mae_weight: float = 1.0
    """Weight of the masked-patch MSE (our choice; the paper's is unknown)."""
    pair_attack: str = "mae"
    """How x_adv is made each step (our choice): mae (PGD on the purifier's masked reconstruction loss, MIMIR's
    attack, with eps/alpha/steps/attack_mask_ratio), purifier (PGD maximising the L1 purification loss through the
    unmasked purifier) or none (x_adv = x)."""
    init: str | None = None
    """Stage lora: the stage-1 checkpoint to start from (required there; use a new output_dir)."""
    lora_rank: int = 4
    """Stage lora: rank r >= 1 of each decoder linear's update (alpha / r) · B A."""
    lora_alpha: float = 8.0
    """Stage lora: LoRA scale numerator alpha > 0; the update is scaled by alpha / rank."""

    def validate(self) -> None:
        choice("maep_stage", self.stage, STAGES)
        in_unit_interval("maep_mask_ratio", self.mask_ratio)
        check(min(self.l1_weight, self.mae_weight) >= 0 and self.l1_weight + self.mae_weight > 0,
              f"maep_l1_weight and maep_mae_weight must be >= 0 and not both 0, got {self.l1_weight} and "
              f"{self.mae_weight}")
        choice("maep_pair_attack", self.pair_attack, PAIR_ATTACKS)
        at_least("maep_lora_rank", self.lora_rank, 1)
        positive("maep_lora_alpha", self.lora_alpha)
        check(self.stage == "masked" or self.init,
              "maep_stage lora needs --maep_init, the stage-1 (--maep_stage masked) checkpoint to start from")
        check(self.init is None or self.stage == "lora",
              "maep_init is the starting point of --maep_stage lora; stage masked trains from scratch")


def make_pairs(model: nn.Module, imgs: torch.Tensor, cfg: PretrainConfig) -> torch.Tensor:
    """Adversarial partners (N, C, H, W) of clean ``imgs`` in [0, 1], made online with the current purifier by
    ``cfg.options.pair_attack`` and the shared attack fields (``eps``, ``alpha``, ``steps``, ``attack_mask_ratio``).
    With DDP, pass the wrapped model: the attack runs on the module inside."""
    how = cfg.options.pair_attack
    if how == "none":
        return imgs
    inner = attack_target(model)
    eps, alpha = cfg.eps / 255, cfg.alpha / 255
    if how == "mae":  # MIMIR's attack on the purifier's own masked self-reconstruction loss
        return pgd_mae(inner, imgs, eps=eps, alpha=alpha, steps=cfg.steps, mask_ratio=cfg.attack_mask_ratio)
    start = uniform_start(imgs, eps)  # "purifier": an adaptive attack on the purification itself
    with attack_mode(inner):
        plain = unwrap(inner)
        return linf_pgd(lambda x: (reconstruct(plain, x) - imgs).abs().mean(), imgs, eps=eps, alpha=alpha,
                        steps=cfg.steps, start=start)


def masked_losses(model: nn.Module, imgs: torch.Tensor, cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """Stage masked's losses for clean ``imgs`` (N, C, H, W): ``loss`` and the detached ``mae_loss``, ``pur_loss``."""
    opts = cfg.options
    x_adv = make_pairs(model, imgs, cfg)
    mae_loss, pred, _, _ = model(imgs, opts.mask_ratio, adv_images=x_adv)  # masked x_adv -> clean x
    if opts.mask_ratio == 0:  # no patch is masked: the masked MSE is 0/0, and counts as 0
        mae_loss = torch.zeros((), device=imgs.device)
    pur_loss = (unwrap(model).unpatchify(pred) - imgs).abs().mean()
    loss = opts.mae_weight * mae_loss + opts.l1_weight * pur_loss
    return {"loss": loss, "mae_loss": mae_loss.detach(), "pur_loss": pur_loss.detach()}


def lora_losses(model: nn.Module, imgs: torch.Tensor, cfg: PretrainConfig) -> dict[str, torch.Tensor]:
    """Stage lora's loss for clean ``imgs``: ``mean |P(x_adv) − x|``, the whole prediction from the unmasked
    ``x_adv`` (through the model's own forward, so DDP synchronises the gradients)."""
    x_adv = make_pairs(model, imgs, cfg)
    _, pred = model(imgs, noisy_images=x_adv)  # (N, L, p·p·C) in patch order; its MSE is not used
    pur_loss = (unwrap(model).unpatchify(pred) - imgs).abs().mean()
    return {"loss": pur_loss, "pur_loss": pur_loss.detach()}


@register
class Maep(PretrainMethod):
    name = "maep"
    summary = "MAEP purifier: masked x_adv -> clean x with an L1 purification loss; stage 2 LoRA on the decoder"
    options_cls = MaepOptions
    defaults = {"norm_pix_loss": False}  # the purifier's output is used as pixels

    @property
    def lora(self) -> bool:
        return self.options.stage == "lora"

    @property
    def loss_keys(self) -> tuple[str, ...]:
        return ("loss", "pur_loss") if self.lora else ("loss", "mae_loss", "pur_loss")

    @property
    def figure_mask_ratio(self) -> float:
        return 0.0 if self.lora else self.options.mask_ratio  # stage lora trains (and MAEP purifies) unmasked

    def check(self) -> None:
        check(not self.cfg.norm_pix_loss, "method maep trains pixel predictions (its L1 loss compares them with the "
              "clean image): drop --norm_pix_loss")
        keeps_some("maep_mask_ratio", self.options.mask_ratio, self.cfg.num_patches)

    def losses(self, model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return (lora_losses if self.lora else masked_losses)(model, imgs, self.cfg)

    def build_model(self, dataset) -> nn.Module:
        model = super().build_model(dataset)
        if self.lora:  # LoRA on the decoder's linears, everything else frozen
            apply_maep_lora(model, self.options.lora_rank, self.options.lora_alpha)
        return model

    def param_groups(self, model: nn.Module) -> list[dict]:
        if self.lora:  # the LoRA matrices alone (all 2-D), decayed like any weight matrix
            return [{"params": [p for p in model.parameters() if p.requires_grad],
                     "weight_decay": self.cfg.weight_decay}]
        return super().param_groups(model)

    def check_resume(self, ckpt: dict, path: Path) -> None:
        super().check_resume(ckpt, path)
        args = ckpt.get("args") or {}
        stage = maep_stage(args) if args.get("method") == "maep" else "masked"
        opts = self.options
        if stage != opts.stage:
            how = ("stage lora starts from a stage-1 checkpoint with --maep_init, in its own --output_dir"
                   if self.lora else "resume it with --maep_stage lora")
            raise CheckpointError(f"checkpoint {path} is of --maep_stage {stage}, not {opts.stage} ({how})")
        if stage == "lora":
            saved = (int(args.get("maep_lora_rank", 0)), float(args.get("maep_lora_alpha", 0.0)))
            if saved != (opts.lora_rank, float(opts.lora_alpha)):
                raise CheckpointError(f"checkpoint {path} has LoRA rank {saved[0]}, alpha {saved[1]}, but the flags "
                                      f"give --maep_lora_rank {opts.lora_rank} --maep_lora_alpha {opts.lora_alpha}")

    def initialise(self, model: nn.Module) -> None:
        if not self.lora:
            return
        load_stage1(model, self.cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        opts = self.options
        print(f"maep stage lora: initialised from {opts.init}; LoRA rank {opts.lora_rank}, alpha {opts.lora_alpha} on "
              f"{len(lora_layers(model))} decoder linears ({trainable} trainable parameters)")


def load_stage1(model: nn.Module, cfg: PretrainConfig) -> None:
    """Load the stage-1 checkpoint ``--maep_init`` into ``model`` (already wrapped by ``apply_maep_lora``): a
    ``--method maep`` stage-1 checkpoint without norm-pix, of ``cfg``'s model and sizes, or a one-line
    ``CheckpointError``. The LoRA matrices keep their initialisation (B = 0: the stage-1 model exactly)."""
    path = cfg.options.init
    ckpt = load_checkpoint(path)
    args = maep_args(ckpt, path)
    if maep_stage(args) != "masked":
        raise CheckpointError(f"maep_init {path} is a --maep_stage {maep_stage(args)} checkpoint; it takes a stage-1 "
                              "(masked) one (to go on with this run, --resume it)")
    for key in ("model", "input_size", "patch_size"):
        if key in args and args[key] != getattr(cfg, key):
            raise CheckpointError(f"maep_init {path} has {key} {args[key]!r}, but --{key} is {getattr(cfg, key)!r}")
    load_model_state(model, lora_state(model, ckpt["model"]), path)


def maep_lora_finetune(model: nn.Module, batches: Iterable[torch.Tensor], cfg: PretrainConfig, *, rank: int = 4,
                       alpha: float = 8.0, lr: float = 1e-3, merge: bool = True) -> torch.Tensor:
    """Stage lora as a plain loop over given batches (the CLI runs the same step through the runner), in place.

    Args:
        model: a stage-1 ``MaskedAutoencoderViT`` (pixel predictions).
        batches: clean image batches (N, C, H, W) in [0, 1] on the model's device; one update each.
        cfg: supplies the pair attack (its options' ``pair_attack`` and the shared attack fields).
        rank, alpha: LoRA rank and scale numerator; lr: AdamW learning rate (no weight decay).
        merge: fold the update into the decoder afterwards (plain ``nn.Linear`` again, all parameters frozen).

    Returns the per-step losses (steps,), detached, on the device (read once at the end, not per step).
    """
    if unwrap(model).norm_pix_loss:
        raise ConfigError("MAEP's LoRA stage needs a purifier trained without norm-pix (--no-norm_pix_loss)")
    params = apply_maep_lora(unwrap(model), rank, alpha)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for imgs in batches:
        loss = lora_losses(model, imgs, cfg)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    if merge:
        merge_lora(model)
    return torch.stack(losses) if losses else torch.zeros(0)
