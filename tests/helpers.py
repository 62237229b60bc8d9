"""Small models and compiled-step checks shared by tests."""

import torch
from torch import nn


def small_cnn(n_cls: int = 10) -> nn.Module:
    """A 16 × 16-input CNN, cheap enough for AutoAttack's 5,000-query Square in a unit test."""
    torch.manual_seed(123)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, n_cls),
    ).eval()


def compiled_step_grads(mode: str, cfg, device: torch.device, img_size: int, batch: int, accum: int = 1) -> list:
    """Two MIMIR pretraining steps of ``accum`` micro-batches each through ``compile_model(model, mode)``
    (``mae_vit_micro``, patch 4, fp32, seeded): per step, its last losses and the weight gradients accumulated
    over its micro-batches, as ``(losses dict, [grad, ...])``."""
    from mimir_fast.models_mae import create_model
    from mimir_fast.train.compile import compile_model, mark_step_begin

    torch.manual_seed(0)
    model = create_model("mae_vit_micro", img_size=img_size, patch_size=4, norm_pix_loss=True).to(device)
    step_model = compile_model(model, mode)
    g = torch.Generator(device=device).manual_seed(1)
    steps = []
    for _ in range(2):  # the second step reuses the compiled graphs with fresh draws
        for _ in range(accum):
            mark_step_begin(step_model)
            imgs = torch.rand(batch, 3, img_size, img_size, device=device, generator=g)
            losses = pretrain_losses(step_model, imgs, cfg)
            losses["loss"].backward()
        steps.append(({k: v.detach().clone() for k, v in losses.items()},
                      [p.grad.clone() for p in model.parameters() if p.grad is not None]))
        model.zero_grad(set_to_none=True)
    return steps


def assert_same_losses_and_grads(compiled: list, eager: list, ulps: int = 64) -> None:
    """``compiled_step_grads`` results agree: losses to torch's default fp32 tolerance, each gradient within
    ``ulps`` fp32 ulps of that tensor's largest eager entry (what reassociating fp32 sums can change)."""
    ulp = torch.finfo(torch.float32).eps
    for (losses_c, grads_c), (losses_e, grads_e) in zip(compiled, eager, strict=True):
        for key in losses_e:
            torch.testing.assert_close(losses_c[key], losses_e[key])
        assert len(grads_c) == len(grads_e) > 0
        for gc, ge in zip(grads_c, grads_e):
            torch.testing.assert_close(gc, ge, rtol=0, atol=ulps * ulp * ge.abs().max().item())


def pretrain_losses(model: nn.Module, imgs: torch.Tensor, cfg) -> dict:
    """The step losses of ``cfg``'s pretraining method for clean ``imgs``."""
    from mimir_fast.methods import create_method

    return create_method(cfg).losses(model, imgs, None)


def finetune_losses(model: nn.Module, imgs: torch.Tensor, labels: torch.Tensor, cfg) -> dict:
    """The step losses of ``cfg``'s fine-tuning method."""
    from mimir_fast.methods import create_method

    return create_method(cfg).losses(model, imgs, labels)
