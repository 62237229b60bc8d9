"""The pretraining methods' step losses against the MIMIR algorithm, written out independently."""

import pytest
import torch

from bench.harness import FlopCount
from mimir_fast.methods import build_config
from mimir_fast.train.engine import train_step
from mimir_fast.train.optim import build_optimizer, param_groups_weight_decay
from tests.helpers import pretrain_losses
from tests.ops.test_hsic import hsic_fp64
from tests.test_attack import spec_pgd, tiny_mae


def cfg_for(**kw):
    return build_config("digits", input_size=16, patch_size=4, **kw)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("mask_ratio", [0.75, 0.5])
def test_mimir_step_matches_the_spec(steps, mask_ratio):
    model = tiny_mae()
    imgs = torch.rand(9, 3, 16, 16)
    cfg = cfg_for(steps=steps, mask_ratio=mask_ratio, mi_xpl=1e-5)
    torch.manual_seed(21)
    ours = pretrain_losses(model, imgs, cfg)

    torch.manual_seed(21)  # spec order: random start, one mask per attack step, then the training mask
    x_adv = spec_pgd(model, imgs, 8 / 255, 10 / 255, steps)
    mae_loss, _, _, latent = model(imgs, mask_ratio, adv_images=x_adv)  # encode x_adv, reconstruct clean
    hsic = hsic_fp64(latent.reshape(9, -1), x_adv.reshape(9, -1))  # latent: CLS + kept tokens, flattened

    assert torch.equal(ours["mae_loss"], mae_loss.detach())
    torch.testing.assert_close(ours["hsic"].double(), hsic.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["loss"].double(), (mae_loss + 1e-5 * hsic).double(), rtol=1e-6, atol=1e-7)


def test_attack_uses_its_own_mask_ratio(monkeypatch):
    model = tiny_mae()
    ratios = []
    original = type(model).forward_encoder
    monkeypatch.setattr(type(model), "forward_encoder", lambda self, x, r, noise=None: (ratios.append(r),
                                                                                        original(self, x, r, noise))[1])
    pretrain_losses(model, torch.rand(4, 3, 16, 16), cfg_for(steps=2, mask_ratio=0.5))
    assert ratios == [0.75, 0.75, 0.5]  # two attack steps at MIMIR's 0.75, then the training mask


def test_plain_mae_is_the_mae_loss():
    model = tiny_mae()
    imgs = torch.rand(5, 3, 16, 16)
    torch.manual_seed(3)
    ours = pretrain_losses(model, imgs, cfg_for(method="mae"))
    torch.manual_seed(3)
    assert torch.equal(ours["loss"], model(imgs, 0.75)[0])
    assert set(ours) == {"loss"}  # MAE logs its loss only


def test_hsic_trains_the_encoder_only():
    """X_adv is detached: the penalty's gradient reaches encoder parameters, never the decoder."""
    model = tiny_mae()
    imgs = torch.rand(6, 3, 16, 16)
    grads = {}
    for lam in (0.0, 1.0):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(8)
        pretrain_losses(model, imgs, cfg_for(mi_xpl=lam))["loss"].backward()
        grads[lam] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    changed = {n for n in grads[0.0] if not torch.equal(grads[0.0][n], grads[1.0][n])}
    assert changed and all(not n.startswith(("decoder", "mask_token")) for n in changed)
    assert any(n.startswith("blocks.") for n in changed)


@pytest.mark.parametrize("steps", [1, 3])
def test_step_cost_is_the_mae_step_plus_2f_per_attack_step(steps):
    """The cost model (bench/README.md): each attack step is a forward plus an input-only backward (2F) on top of the
    training step. (The (2K + 3)/3 ratio is this, up to the patch-embedding input gradient, which the training
    backward skips.) The HSIC penalty is left out: its Gram matrices are visible only for toy models."""
    model = tiny_mae()
    opt = build_optimizer(param_groups_weight_decay(model, 0.05), 1e-4, (0.9, 0.95), torch.device("cpu"))
    imgs, labels = torch.rand(16, 3, 16, 16), torch.zeros(16, dtype=torch.long)
    with FlopCount() as fwd, torch.no_grad():
        model(imgs)
    flops = {}
    for method in ("mae", "mimir"):
        with FlopCount() as counter:
            cfg = cfg_for(method=method, steps=steps, **({"mi_xpl": 0.0} if method == "mimir" else {}))
            train_step(model, imgs, labels, opt, lambda m, x, y: pretrain_losses(m, x, cfg), None)
        flops[method] = counter.flops
    assert (flops["mimir"] - flops["mae"]) / (2 * steps * fwd.flops) == pytest.approx(1.0, rel=0.005)
