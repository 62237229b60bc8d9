"""Whole-model checks of the fused ops: ``accelerate`` on an MAE-structured model, and our own model, with
the Triton kernels forced (Triton's interpreter on the CPU) against the unfused model.

Tolerance (tests/ops/_testing.py): the fused model's error against the unfused model run in float64 must be
at most twice the unfused float32 model's own error, plus the float32 rounding floor.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mimir_fast import accelerate
from mimir_fast.models_mae import MaskedAutoencoderViT
from mimir_fast.ops import hsic_normalized_cca
from tests.mae_reference import ReferenceMAE
from tests.ops._testing import FLOOR, assert_close

SIZES = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=32,
             decoder_depth=1, decoder_num_heads=4, norm_pix_loss=True)


def _run(model: nn.Module, imgs: torch.Tensor, dtype: torch.dtype, seed: int = 1):
    """(loss, pred, input gradient, parameter gradients) of one MAE forward at mask ratio 0.75."""
    model = model.to(dtype)
    x = imgs.to(dtype).requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(seed)  # the same mask for every model
    loss, pred = model(x, 0.75)[:2]
    grads = torch.autograd.grad(loss, [x, *params])
    return [loss, pred, *grads]


def _compare(fast: nn.Module, plain: nn.Module, imgs: torch.Tensor):
    truth = _run(copy.deepcopy(plain), imgs, torch.float64)
    lowp = _run(plain, imgs, torch.float32)
    got = _run(fast, imgs, torch.float32)
    names = ["loss", "pred", "d_imgs"] + [n for n, p in fast.named_parameters() if p.requires_grad]
    for name, t, lo, g in zip(names, truth, lowp, got):
        assert_close(name, t, g, lo, torch.float32)


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_accelerated_mae_matches_the_original(monkeypatch, kernel_device, kernels):
    """An MAE-structured model (timm blocks, MAE's loops) gives the same loss and gradients once accelerated."""
    monkeypatch.setenv("MIMIR_FAST_KERNELS", kernels)
    theirs = ReferenceMAE(**SIZES).to(kernel_device)
    fast = accelerate(copy.deepcopy(theirs))
    assert fast.state_dict().keys() == theirs.state_dict().keys()
    _compare(fast, theirs, torch.rand(3, 3, 16, 16, device=kernel_device))


def test_accelerate_keeps_the_mask_rng(monkeypatch):
    """The fused encoder draws MAE's mask: same seed, same mask and the same ids as the original."""
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    theirs = ReferenceMAE(**SIZES)
    fast = accelerate(copy.deepcopy(theirs))
    imgs = torch.rand(5, 3, 16, 16)
    torch.manual_seed(3)
    _, _, mask_a, _ = theirs(imgs)
    torch.manual_seed(3)
    _, _, mask_b, _ = fast(imgs)
    assert torch.equal(mask_a, mask_b)


def test_our_model_with_kernels_matches_without(monkeypatch, kernel_device):
    """Our model calls the ops itself: forcing the kernels changes nothing beyond rounding."""
    plain = MaskedAutoencoderViT(**SIZES).to(kernel_device)
    fast = copy.deepcopy(plain)
    imgs = torch.rand(3, 3, 16, 16, device=kernel_device)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    truth = _run(copy.deepcopy(plain), imgs, torch.float64)
    lowp = _run(plain, imgs, torch.float32)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    got = _run(fast, imgs, torch.float32)
    names = ["loss", "pred", "d_imgs"] + [n for n, p in fast.named_parameters() if p.requires_grad]
    for name, t, lo, g in zip(names, truth, lowp, got):
        assert_close(name, t, g, lo, torch.float32)


def test_our_model_is_returned_as_is():
    model = MaskedAutoencoderViT(**SIZES)
    assert accelerate(model) is model


def test_compiled_model_with_kernels_has_no_graph_break(monkeypatch, kernel_device):
    """torch.compile(fullgraph=True) traces the forward and backward through the custom ops."""
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    model = MaskedAutoencoderViT(**SIZES).to(kernel_device)
    imgs = torch.rand(2, 3, 16, 16, device=kernel_device)
    eager = _run(model, imgs, torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got = _run(compiled, imgs, torch.float32)
    for e, g in zip(eager, got):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_accelerate_rejects_what_it_cannot_fuse():
    with pytest.raises(ValueError, match="not an MAE MaskedAutoencoderViT"):
        accelerate(nn.Linear(2, 2))
    theirs = ReferenceMAE(**SIZES)
    theirs.blocks[1].attn.attn_drop.p = 0.1
    with pytest.raises(ValueError, match=r"blocks\.1\.attn has attention dropout"):
        accelerate(theirs)


def test_floor_table_covers_float32():
    assert FLOOR[torch.float32] < 1e-5  # the bound above cannot be loose by construction


def _mimir_loss(model: nn.Module, imgs: torch.Tensor, x_adv: torch.Tensor, dtype: torch.dtype):
    """MIMIR's training loss (reconstruction of the clean images from x_adv + λ·HSIC) and its gradients."""
    model = model.to(dtype)
    x_adv = x_adv.to(dtype).requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    torch.manual_seed(2)
    mae_loss, _, _, latent = model(imgs.to(dtype), 0.75, adv_images=x_adv)
    hsic = hsic_normalized_cca(latent, x_adv)
    loss = mae_loss + 1e-2 * hsic  # a λ large enough for the HSIC gradients to show in the comparison
    return [loss, hsic, *torch.autograd.grad(loss, [x_adv, *params])]


def test_mimir_training_loss_with_kernels_matches_without(monkeypatch, kernel_device):
    """The MIMIR objective (fused encoder, decoder, loss, attention and HSIC Gram) against the unfused one."""
    plain = MaskedAutoencoderViT(**SIZES).to(kernel_device)
    fast = copy.deepcopy(plain)
    imgs = torch.rand(6, 3, 16, 16, device=kernel_device)
    x_adv = (imgs + torch.empty_like(imgs).uniform_(-8 / 255, 8 / 255)).clamp(0, 1)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "torch")
    truth = _mimir_loss(copy.deepcopy(plain), imgs, x_adv, torch.float64)
    lowp = _mimir_loss(plain, imgs, x_adv, torch.float32)
    monkeypatch.setenv("MIMIR_FAST_KERNELS", "triton")
    got = _mimir_loss(fast, imgs, x_adv, torch.float32)
    names = ["loss", "hsic", "d_x_adv"] + [n for n, p in fast.named_parameters() if p.requires_grad]
    for name, t, lo, g in zip(names, truth, lowp, got):
        assert_close(name, t, g, lo, torch.float32)
