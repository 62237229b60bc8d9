"""MAEP: a masked-autoencoder adversarial purifier (Chen & Lu, arXiv 2501.16904), on ``MaskedAutoencoderViT``.

MAEP has no public code; ``nim-maep-spec.md`` §B lists what is known. What this module does, and which parts
are our choices (each exposed as a ``PretrainConfig`` flag):

- **Stage 1** (``mimir-fast pretrain --method maep --no-norm_pix_loss``): each step
  makes adversarial images ``x_adv`` from the clean batch ``x`` (the pair attack, ``maep_pair_attack``, our
  choice, see ``make_pairs``), then one forward encodes the *masked* ``x_adv`` (``maep_mask_ratio``, 0.5 as in
  the paper) and predicts every patch of the clean ``x``. The loss is
  ``maep_mae_weight · L_mae + maep_l1_weight · L_pur``: ``L_mae`` is MAE's MSE over the masked patches,
  ``L_pur = mean |P(x_adv) − x|`` the L1 between the full unpatchified prediction (visible and masked patches)
  and the clean image. The paper's exact weights are unknown; both default to 1.
- **Pixel predictions.** MAEP trains without norm-pix (``--no-norm_pix_loss``): the L1 term and the purifier
  then use the decoder's output as pixels, with no per-patch statistics to take from anywhere (norm-pix would
  need them from the clean image, which the purifier does not have at test time). ``PretrainConfig`` rejects
  ``--method maep`` with norm-pix on.
- **Stage 2** (``mimir-fast pretrain --method maep --no-norm_pix_loss --maep_stage lora --maep_init
  stage1/checkpoint-29.pth --output_dir stage2``): LoRA (``maep_lora_rank``, ``maep_lora_alpha``) on every
  linear of the decoder (``decoder_lora_targets``), at mask ratio 0 (inference's setting), with the L1
  purification loss ``mean |P(x_adv) − x|`` alone (``maep_lora_losses``; at ratio 0 no patch is masked, so
  ``L_mae`` is empty), pairs from the same ``maep_pair_attack``. Only the LoRA matrices train (AdamW with the
  run's ``weight_decay``); everything else stays at the stage-1 weights loaded from ``maep_init``, which must
  be a stage-1 ``--method maep`` checkpoint of the same model and size. It runs through the shared runner, so
  its checkpoints keep the LoRA layout (``<layer>.base.weight``, ``<layer>.lora_A``, ``<layer>.lora_B``) and
  record ``maep_stage``, ``maep_lora_rank`` and ``maep_lora_alpha`` in ``args``: resuming rebuilds the same
  wrapped model and continues exactly. ``load_maep_purifier`` merges the update into plain linears.
  ``maep_lora_finetune`` is the same step as a plain loop over given batches (merged afterwards by default).
- **Test time** (``MAEPPurifier``): one deterministic forward at mask ratio 0, unpatchified, clamped to [0, 1].
  Images of another size are refused unless a transfer is chosen: ``resize`` (bilinear in and out,
  anti-aliased when shrinking) or ``tile`` (cut into purifier-sized tiles, reflect-padding the border).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks import pgd_mae
from ..attacks.linf import attack_mode, linf_pgd, uniform_start
from ..errors import CheckpointError, ConfigError
from ..train.compile import attack_target
from ..train.config import MAEP_PAIR_ATTACKS as PAIR_ATTACKS  # noqa: F401  (re-exported)
from ..train.parallel import unwrap
from .lora import apply_lora, decoder_lora_targets, lora_state, merge_lora

TRANSFERS = ("none", "resize", "tile")
MAEP_LOSS_KEYS = ("loss", "mae_loss", "hsic", "pur_loss")
MAEP_LORA_LOSS_KEYS = ("loss", "pur_loss")



def reconstruct(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The full reconstruction ``P(x)``: encode all patches of ``x`` (N, C, H, W) at mask ratio 0 in patch order
    (no random draw), decode, unpatchify. Returns (N, C, H, W), not clamped. ``model`` is a
    ``MaskedAutoencoderViT`` (or DDP around one) trained without norm-pix."""
    model = unwrap(model)
    n, length = x.shape[0], model.patch_embed.num_patches
    order = torch.arange(length, device=x.device, dtype=torch.float32).expand(n, length)  # identity "shuffle"
    latent, _, ids_restore = model.forward_encoder(x, 0.0, noise=order)
    return model.unpatchify(model.forward_decoder(latent, ids_restore))


def make_pairs(model: nn.Module, imgs: torch.Tensor, cfg) -> torch.Tensor:
    """Adversarial partners (N, C, H, W) of clean ``imgs`` in [0, 1], made online with the current purifier.

    ``cfg.maep_pair_attack`` (our choice; the paper's pairs most likely come from PGD-100 on a fixed ResNet-18,
    DISCO-style, which needs a classifier this step does not have):

    - ``mae``: MIMIR's attack, L∞ PGD on the purifier's own masked self-reconstruction loss (``pgd_mae``, with
      ``eps``, ``alpha``, ``steps``, ``attack_mask_ratio``);
    - ``purifier``: L∞ PGD that maximises ``mean |P(x_adv) − x|`` through the unmasked purifier (an adaptive
      attack on the purification itself);
    - ``none``: ``x_adv = x`` (an ablation: a plain masked autoencoder with the L1 term).
    """
    inner = attack_target(model)
    if cfg.maep_pair_attack == "none":
        return imgs
    eps, alpha = cfg.eps / 255, cfg.alpha / 255
    if cfg.maep_pair_attack == "mae":
        return pgd_mae(inner, imgs, eps=eps, alpha=alpha, steps=cfg.steps, mask_ratio=cfg.attack_mask_ratio)
    start = uniform_start(imgs, eps)
    with attack_mode(inner):
        return linf_pgd(lambda x: (reconstruct(inner, x) - imgs).abs().mean(), imgs, eps=eps, alpha=alpha,
                        steps=cfg.steps, start=start)


def maep_losses(model: nn.Module, imgs: torch.Tensor, cfg) -> dict[str, torch.Tensor]:
    """Stage 1's step losses for clean ``imgs`` (N, C, H, W) in [0, 1] (see the module docstring).

    Returns ``loss`` (to backpropagate) and the detached ``mae_loss`` (masked MSE), ``pur_loss`` (L1) and
    ``hsic`` (always 0; kept so the pretraining log has its usual columns). No host sync.
    """
    x_adv = make_pairs(model, imgs, cfg)
    mae_loss, pred, _, _ = model(imgs, cfg.maep_mask_ratio, adv_images=x_adv)  # masked x_adv -> clean x
    if cfg.maep_mask_ratio == 0:  # no patch is masked: the masked MSE is 0/0, and counts as 0
        mae_loss = torch.zeros((), device=imgs.device)
    pur_loss = (unwrap(model).unpatchify(pred) - imgs).abs().mean()
    loss = cfg.maep_mae_weight * mae_loss + cfg.maep_l1_weight * pur_loss
    return {"loss": loss, "mae_loss": mae_loss.detach(), "hsic": torch.zeros((), device=imgs.device),
            "pur_loss": pur_loss.detach()}


def maep_lora_losses(model: nn.Module, imgs: torch.Tensor, cfg) -> dict[str, torch.Tensor]:
    """Stage 2's step loss for clean ``imgs`` (N, C, H, W) in [0, 1]: ``mean |P(x_adv) − x|`` at mask ratio 0.

    ``x_adv`` comes from ``make_pairs`` (``cfg.maep_pair_attack``). The prediction goes through the model's own
    forward (so DDP synchronises the gradients): at ratio 0 every patch is kept, in a random order that the
    decoder undoes, which equals ``reconstruct`` up to float rounding. Returns ``loss`` (to backpropagate) and
    the detached ``pur_loss``. No host sync.
    """
    x_adv = make_pairs(model, imgs, cfg)
    _, pred, _, _ = model(imgs, 0.0, adv_images=x_adv)  # (N, L, p·p·C); its masked MSE (0/0) is not used
    pur_loss = (unwrap(model).unpatchify(pred) - imgs).abs().mean()
    return {"loss": pur_loss, "pur_loss": pur_loss.detach()}


def apply_maep_lora(model: nn.Module, rank: int, alpha: float) -> list[nn.Parameter]:
    """Wrap every decoder linear of the ``MaskedAutoencoderViT`` ``model`` with LoRA (rank, alpha), in place;
    returns the trainable ``A`` and ``B`` matrices (everything else is frozen)."""
    return apply_lora(model, decoder_lora_targets(unwrap(model)), rank, alpha)


def maep_stage(args: dict) -> str:
    """The MAEP stage a checkpoint's ``args`` record (``masked`` when absent: stage 1, before the flag)."""
    return args.get("maep_stage") or "masked"


def _maep_args(ckpt: dict, path) -> dict:
    """The ``args`` of a ``--method maep`` pretraining checkpoint; a one-line ``CheckpointError`` otherwise."""
    from ..models_vit import is_classifier_state

    if is_classifier_state(ckpt["model"]):
        raise CheckpointError(f"checkpoint {path} is a classifier checkpoint, not a --method maep pretraining one")
    args = ckpt.get("args") or {}
    if args.get("method") != "maep":
        raise CheckpointError(f"checkpoint {path} was pretrained with method {args.get('method')!r}, not maep")
    if args.get("norm_pix_loss"):
        raise CheckpointError(f"checkpoint {path} was trained with norm-pix loss; MAEP purifiers predict pixels "
                              "(--no-norm_pix_loss)")
    return args


def load_maep_init(model: nn.Module, cfg) -> None:
    """Load the stage-1 checkpoint ``cfg.maep_init`` into ``model`` (already wrapped by ``apply_maep_lora``).

    The checkpoint must be a ``--method maep`` stage-1 one without norm-pix, of ``cfg.model`` at
    ``cfg.input_size`` / ``cfg.patch_size``; anything else is a one-line ``CheckpointError``. The LoRA matrices
    keep their initialisation (``B = 0``: the wrapped model starts as the stage-1 model)."""
    from ..train.checkpoint import load_checkpoint, load_model_state

    path = cfg.maep_init
    ckpt = load_checkpoint(path)
    args = _maep_args(ckpt, path)
    if maep_stage(args) != "masked":
        raise CheckpointError(f"maep_init {path} is a --maep_stage {maep_stage(args)} checkpoint; it takes a stage-1 "
                              "(masked) one (to go on with this run, --resume it)")
    for key in ("model", "input_size", "patch_size"):
        if key in args and args[key] != getattr(cfg, key):
            raise CheckpointError(f"maep_init {path} has {key} {args[key]!r}, but --{key} is {getattr(cfg, key)!r}")
    load_model_state(model, lora_state(model, ckpt["model"]), path)


def check_maep_resume(ckpt: dict, path, cfg) -> None:
    """Raise a one-line ``CheckpointError`` if ``ckpt`` is not of ``cfg``'s MAEP stage (and, for stage lora, of
    its LoRA rank and alpha): the wrapped and the plain model have different layouts."""
    args = ckpt.get("args") or {}
    stage = maep_stage(args) if args.get("method") == "maep" else "masked"
    if stage != cfg.maep_stage:
        how = ("stage lora starts from a stage-1 checkpoint with --maep_init, in its own --output_dir"
               if cfg.maep_stage == "lora" else "resume it with --maep_stage lora")
        raise CheckpointError(f"checkpoint {path} is of --maep_stage {stage}, not {cfg.maep_stage} ({how})")
    if stage == "lora":
        saved = (int(args.get("maep_lora_rank", 0)), float(args.get("maep_lora_alpha", 0.0)))
        if saved != (cfg.maep_lora_rank, float(cfg.maep_lora_alpha)):
            raise CheckpointError(f"checkpoint {path} has LoRA rank {saved[0]}, alpha {saved[1]}, but the flags give "
                                  f"--maep_lora_rank {cfg.maep_lora_rank} --maep_lora_alpha {cfg.maep_lora_alpha}")


def maep_lora_finetune(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    cfg,
    *,
    rank: int = 4,
    alpha: float = 8.0,
    lr: float = 1e-3,
    merge: bool = True,
) -> torch.Tensor:
    """Stage 2 as a plain loop (the CLI's ``--maep_stage lora`` runs the same step through the runner), in place.

    Args:
        model: a stage-1 ``MaskedAutoencoderViT`` (pixel predictions).
        batches: clean image batches (N, C, H, W) in [0, 1], on the model's device; one update each.
        cfg: supplies the pair attack (``maep_pair_attack``, ``eps``, ``alpha``, ``steps``, ``attack_mask_ratio``).
        rank, alpha: LoRA rank and scale numerator; lr: AdamW learning rate (no weight decay).
        merge: fold the update into the decoder afterwards (plain ``nn.Linear`` again, all parameters frozen).

    Only the LoRA matrices train; the loss is ``maep_lora_losses``. Returns the per-step losses (steps,),
    detached, on the device (read once at the end, not per step).
    """
    if unwrap(model).norm_pix_loss:
        raise ConfigError("MAEP's LoRA stage needs a purifier trained without norm-pix (--no-norm_pix_loss)")
    params = apply_maep_lora(model, rank, alpha)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for imgs in batches:
        loss = maep_lora_losses(model, imgs, cfg)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    if merge:
        merge_lora(model)
    return torch.stack(losses) if losses else torch.zeros(0)


def check_transfer(purifier_size: int, image_size: int, transfer: str) -> None:
    """Raise a one-line ``ConfigError`` if a purifier trained at ``purifier_size`` px cannot purify
    ``image_size`` px images under ``transfer`` (an unknown transfer, or a size mismatch with ``none``)."""
    if transfer not in TRANSFERS:
        raise ConfigError(f"unknown purifier transfer {transfer!r}; choose one of: {', '.join(TRANSFERS)}")
    if purifier_size != image_size and transfer == "none":
        raise ConfigError(
            f"the purifier was trained on {purifier_size} px images but the classifier takes {image_size} px; "
            "choose a transfer (resize or tile) to apply it across sizes"
        )


class MAEPPurifier(nn.Module):
    """MAEP at test time: ``x (N, C, H, W) in [0, 1] -> clamp(P(x), 0, 1)`` of the same shape.

    Deterministic (mask ratio 0, no random draw) and differentiable end to end, so white-box attacks can take
    exact gradients through it. ``transfer`` applies a purifier trained at S px to H × W images:
    ``none`` (sizes must match), ``resize`` (bilinear to S × S and back; anti-aliased when shrinking) or
    ``tile`` (reflect-pad H and W up to multiples of S, purify each S × S tile, crop).
    """

    def __init__(self, model: nn.Module, transfer: str = "none"):
        super().__init__()
        if transfer not in TRANSFERS:
            raise ConfigError(f"unknown purifier transfer {transfer!r}; choose one of: {', '.join(TRANSFERS)}")
        if model.norm_pix_loss:
            raise ConfigError("this purifier was trained with norm-pix loss; MAEP purifiers predict pixels "
                              "(train with --method maep --no-norm_pix_loss)")
        self.model = model
        self.transfer = transfer
        self.size = model.patch_embed.img_size[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.model.in_chans:
            raise ConfigError(f"the purifier takes (N, {self.model.in_chans}, H, W) images, got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        s = self.size
        if (h, w) == (s, s):
            return reconstruct(self.model, x).clamp(0, 1)
        if self.transfer == "none":
            raise ConfigError(f"the purifier was trained on {s} px images but got {h}x{w}; choose a transfer "
                              "(resize or tile) to apply it across sizes")
        if self.transfer == "resize":
            small = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=h > s or w > s)
            out = reconstruct(self.model, small)
            out = F.interpolate(out, size=(h, w), mode="bilinear", align_corners=False, antialias=h < s or w < s)
            return out.clamp(0, 1)
        # tile
        ph, pw = -h % s, -w % s
        padded = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
        n, c, hh, ww = padded.shape
        gh, gw = hh // s, ww // s
        tiles = padded.reshape(n, c, gh, s, gw, s).permute(0, 2, 4, 1, 3, 5).reshape(n * gh * gw, c, s, s)
        out = reconstruct(self.model, tiles).reshape(n, gh, gw, c, s, s).permute(0, 3, 1, 4, 2, 5)
        return out.reshape(n, c, hh, ww)[..., :h, :w].clamp(0, 1)


def load_maep_purifier(path: str | Path, *, image_size: int | None = None, transfer: str = "none") -> MAEPPurifier:
    """Build a ``MAEPPurifier`` (eval mode, frozen, CPU) from a ``--method maep`` pretraining checkpoint of
    either stage: a ``--maep_stage lora`` one is rebuilt with its recorded LoRA rank and alpha, loaded, and
    merged, so the purifier holds a plain ``MaskedAutoencoderViT``.

    With ``image_size`` (the classifier's input side) a size mismatch without a transfer is a one-line
    ``ConfigError`` here, before any work; a checkpoint of another method is a ``CheckpointError``.
    """
    from ..models_mae import create_model
    from ..train.checkpoint import load_checkpoint, load_model_state

    ckpt = load_checkpoint(path)
    args = _maep_args(ckpt, path)
    size = int(args["input_size"])
    if image_size is not None:
        check_transfer(size, image_size, transfer)
    model = create_model(args["model"], img_size=size, patch_size=int(args["patch_size"]), norm_pix_loss=False)
    if maep_stage(args) == "lora":
        apply_maep_lora(model, int(args["maep_lora_rank"]), float(args["maep_lora_alpha"]))
    load_model_state(model, ckpt["model"], path)
    merge_lora(model)
    model.requires_grad_(False)
    return MAEPPurifier(model.eval(), transfer)
