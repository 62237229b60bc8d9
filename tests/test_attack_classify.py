"""Classifier attacks: PGD and TRADES' attack against plain re-derivations, the ε-ball, loss ascent; PGD-MI."""

import pytest
import torch
import torch.nn.functional as F

from mimir_fast.attacks import pgd, pgd_mi, trades_attack
from mimir_fast.models_vit import create_classifier
from mimir_fast.ops import hsic_normalized_cca

EPS, ALPHA = 8 / 255, 2 / 255


def tiny_clf(drop_path=0.0):
    return create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=7, drop_path_rate=drop_path,
                             head_init_std=0.5)


def plain_pgd(model, x, y, eps, alpha, steps, extra=None):
    """Madry PGD as torchattacks.PGD writes it: uniform start, mean CE, sign step, project, clamp."""
    model.eval()
    adv = (x + torch.empty_like(x).uniform_(-eps, eps)).clamp(0, 1).detach()
    for _ in range(steps):
        adv.requires_grad = True
        logits = model(adv)
        cost = F.cross_entropy(logits, y) + (extra(adv) if extra else 0)
        grad = torch.autograd.grad(cost, adv)[0]
        adv = adv.detach() + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1).detach()
    return adv


def plain_trades(model, x, eps, alpha, steps):
    """TRADES' inner maximisation as Zhang et al.'s ``trades.py`` writes it: from x + 0.001·N(0, I), sign steps up
    Σ_i KL(f(x_i) ‖ f(x'_i)) = Σ_i Σ_k p_ik (log p_ik − log q_ik), p = softmax f(x) fixed, projected and clamped."""
    model.eval()
    with torch.no_grad():
        p = model(x).softmax(1)
    adv = (x + 0.001 * torch.randn_like(x)).clamp(0, 1)
    for _ in range(steps):
        adv = adv.detach().requires_grad_(True)
        kl = (p * (p.log() - model(adv).log_softmax(1))).sum()
        grad = torch.autograd.grad(kl, adv)[0]
        adv = adv.detach() + alpha * grad.sign()
        adv = (x + (adv - x).clamp(-eps, eps)).clamp(0, 1)
    return adv.detach()


@pytest.mark.parametrize("steps,batch", [(1, 3), (7, 5), (20, 2)])
def test_pgd_equals_the_plain_rederivation(steps, batch):
    model = tiny_clf()
    x, y = torch.rand(batch, 3, 16, 16), torch.randint(0, 7, (batch,))
    torch.manual_seed(9)
    ours = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=steps)
    torch.manual_seed(9)
    assert torch.equal(ours, plain_pgd(model, x, y, EPS, ALPHA, steps))


def test_pgd_stays_in_the_ball_raises_the_loss_and_touches_no_grad():
    model = tiny_clf(drop_path=0.3).train()  # the attack must run in eval mode (no drop-path) and restore train
    x, y = torch.rand(12, 3, 16, 16), torch.randint(0, 7, (12,))
    x[0], x[1] = 0.0, 1.0
    x_adv = pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=10)
    assert (x_adv - x).abs().max() <= EPS + 1e-7 and x_adv.min() >= 0 and x_adv.max() <= 1
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert F.cross_entropy(model(x_adv), y) > F.cross_entropy(model(x), y)
    start = torch.zeros_like(x)  # a given start makes the attack deterministic
    assert torch.equal(pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=3, start=start),
                       pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=3, start=start))


@pytest.mark.parametrize("steps,batch", [(1, 4), (5, 6)])
def test_trades_attack_equals_the_plain_rederivation_within_the_ball(steps, batch):
    model = tiny_clf(drop_path=0.3).train()  # attacked in eval mode, then restored
    x = torch.rand(batch, 3, 16, 16)
    x[0] = 1.0  # the start's clamp matters
    torch.manual_seed(5)
    x_adv = trades_attack(model, x, eps=EPS, alpha=ALPHA, steps=steps)
    assert model.training and all(p.grad is None for p in model.parameters())
    torch.manual_seed(5)
    assert torch.equal(x_adv, plain_trades(model, x, EPS, ALPHA, steps))
    assert (x_adv - x).abs().max() <= EPS + 1e-7 and 0 <= x_adv.min() and x_adv.max() <= 1


def test_pgd_mi_is_ce_plus_lambda_hsic_on_pooled_features():
    model = tiny_clf()
    x, y = torch.rand(6, 3, 16, 16), torch.randint(0, 7, (6,))
    lam = 0.5  # large, so the HSIC term changes the gradient signs
    torch.manual_seed(3)
    ours = pgd_mi(model, x, y, eps=EPS, alpha=ALPHA, steps=4, lam=lam)
    torch.manual_seed(3)
    expected = plain_pgd(model, x, y, EPS, ALPHA, 4,
                         extra=lambda a: lam * hsic_normalized_cca(model.forward_features(a), a, sigma=5.0))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
    torch.manual_seed(3)
    assert torch.equal(pgd_mi(model, x, y, eps=EPS, alpha=ALPHA, steps=4, lam=0.0),
                       (torch.manual_seed(3), pgd(model, x, y, eps=EPS, alpha=ALPHA, steps=4))[1])
