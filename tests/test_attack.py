"""pgd_mae: the spec's update rule, ε-ball and range, loss ascent, and input-gradient-only work."""

import pytest
import torch

from bench.harness import FlopCount
from mimir_fast.attacks import pgd_mae
from mimir_fast.attacks.linf import attack_mode, linf_pgd
from mimir_fast.models_mae import MaskedAutoencoderViT

EPS, ALPHA = 8 / 255, 10 / 255


def tiny_mae(norm_pix=True):
    return MaskedAutoencoderViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4,
                                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=4, norm_pix_loss=norm_pix)


def spec_pgd(model, images, eps, alpha, steps):
    """MIMIR's pretraining attack, written out: uniform start in the ε-ball, then K signed steps, fresh mask each."""
    x = (images + torch.empty_like(images).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        loss = model(x)[0]  # forward's default mask ratio (0.75), target = x itself
        g = torch.autograd.grad(loss, x)[0]
        x = x.detach() + alpha * g.sign()
        x = (images + (x - images).clamp(-eps, eps)).clamp(0, 1)
    return x.detach()


@pytest.mark.parametrize("steps", [1, 2, 5])
@pytest.mark.parametrize("batch", [3, 8])
def test_matches_the_spec_update_rule_bit_for_bit(steps, batch):
    model = tiny_mae()
    imgs = torch.rand(batch, 3, 16, 16)
    torch.manual_seed(4)
    ours = pgd_mae(model, imgs, eps=EPS, alpha=ALPHA, steps=steps)
    torch.manual_seed(4)
    expected = spec_pgd(model, imgs, EPS, ALPHA, steps)
    assert torch.equal(ours, expected)


@pytest.mark.parametrize("steps,alpha", [(1, ALPHA), (3, 2 / 255), (10, 2 / 255)])
def test_stays_in_the_eps_ball_and_in_range(steps, alpha):
    model = tiny_mae()
    imgs = torch.rand(5, 3, 16, 16)
    imgs[0] = 0.0  # pixels at the range limits
    imgs[1] = 1.0
    x_adv = pgd_mae(model, imgs, eps=EPS, alpha=alpha, steps=steps)
    assert (x_adv - imgs).abs().max() <= EPS + 1e-7
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    assert not x_adv.requires_grad


@pytest.mark.parametrize("steps", [1, 3])
def test_raises_the_attacked_loss(steps):
    torch.manual_seed(2)
    model = tiny_mae()
    imgs = torch.rand(16, 3, 16, 16)
    gains = []
    for seed in range(6):
        torch.manual_seed(seed)
        x_adv = pgd_mae(model, imgs, eps=EPS, alpha=2.5 * EPS / steps, steps=steps, random_start=False)
        with torch.no_grad():  # both under the mask the first attack step saw
            torch.manual_seed(seed)
            attacked = model(x_adv)[0]
            torch.manual_seed(seed)
            clean = model(imgs)[0]
        gains.append((attacked - clean).item())
    assert min(gains) > 0 if steps == 1 else sum(gains) > 0


def test_leaves_parameter_grads_untouched_and_restores_mode():
    model = tiny_mae()
    imgs = torch.rand(4, 3, 16, 16)
    pgd_mae(model, imgs, eps=EPS, alpha=ALPHA, steps=3)
    assert all(p.grad is None for p in model.parameters())
    assert model.training
    model.eval()
    pgd_mae(model, imgs, eps=EPS, alpha=ALPHA, steps=1)
    assert not model.training


def test_attack_mode_freezes_the_trainable_weights_and_restores_them():
    model = tiny_mae()
    model.cls_token.requires_grad_(False)  # a parameter frozen by the caller stays frozen
    trainable = [p.requires_grad for p in model.parameters()]
    seen = []

    def objective(x):
        seen.append([p.requires_grad for p in model.parameters()] + [model.training])
        return model(x)[0]

    with attack_mode(model):
        linf_pgd(objective, torch.rand(2, 3, 16, 16), eps=EPS, alpha=ALPHA, steps=2)
    assert seen and all(not any(flags) for flags in seen)  # frozen, in eval mode, on every step
    assert [p.requires_grad for p in model.parameters()] == trainable and model.training
    with pytest.raises(RuntimeError, match="boom"), attack_mode(model):  # restored when the attack fails too
        raise RuntimeError("boom")
    assert [p.requires_grad for p in model.parameters()] == trainable and model.training


@pytest.mark.parametrize("steps", [1, 4])
def test_does_no_weight_gradient_work(steps):
    """A step is a forward plus a backward to the input: ≈ 2F FLOPs, where a full backward would make it 3F."""
    model = MaskedAutoencoderViT(img_size=32, patch_size=4, embed_dim=64, depth=3, num_heads=4,
                                 decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=4, norm_pix_loss=True)
    imgs = torch.rand(8, 3, 32, 32)
    with FlopCount() as fwd, torch.no_grad():
        model(imgs)
    with FlopCount() as atk:
        pgd_mae(model, imgs, eps=EPS, alpha=ALPHA, steps=steps)
    with FlopCount() as full:
        model(imgs)[0].backward()
    assert 2.9 < full.flops / fwd.flops < 3.1  # the counter sees backward work
    assert 1.9 < atk.flops / (steps * fwd.flops) < 2.05


def test_zero_eps_returns_the_clean_images():
    imgs = torch.rand(3, 3, 16, 16)
    assert torch.equal(pgd_mae(tiny_mae(), imgs, eps=0.0, alpha=ALPHA, steps=2), imgs)
