"""MAEP (docs/purifiers.md): loss terms against a re-derivation, LoRA, the purifier, a short training run."""

import json

import pytest
import torch
from torch import nn

from mimir_fast.cli import main
from mimir_fast.errors import CheckpointError, ConfigError
from mimir_fast.methods import build_config, run_pretrain
from mimir_fast.methods.maep import maep_lora_finetune, make_pairs
from mimir_fast.methods.maep import masked_losses as maep_losses
from mimir_fast.models_mae import MaskedAutoencoderViT
from mimir_fast.purify.lora import LoRALinear, apply_lora, decoder_lora_targets, lora_layers, merge_lora
from mimir_fast.purify.maep import MAEPPurifier, check_transfer, load_maep_purifier, reconstruct
from tests.helpers import pretrain_losses
from tests.test_attack import spec_pgd


def tiny_purifier(seed=0):
    torch.manual_seed(seed)
    return MaskedAutoencoderViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16,
                                decoder_depth=1, decoder_num_heads=4, norm_pix_loss=False)


def maep_cfg(**kw):
    return build_config("digits", method="maep", input_size=16, patch_size=4, **kw)


# ---------------------------------------------------------------------- re-derivation of the loss, by hand
def my_patchify(x, p):
    n, c, h, w = x.shape
    g = h // p
    return x.reshape(n, c, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(n, g * g, p * p * c)


def my_unpatchify(t, p, c):
    n, length, _ = t.shape
    g = int(length**0.5)
    return t.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, g * p, g * p)


def spec_maep_loss(model, imgs, x_adv, mask_ratio, w_mae, w_l1):
    """MAEP stage 1, written out: mask x_adv (MAE's draw), predict every patch of the clean x; masked MSE over the
    removed patches (pixel targets) + L1 between the unpatchified prediction and x."""
    n, length = imgs.shape[0], 16
    noise = torch.rand(n, length)
    keep = int(length * (1 - mask_ratio))
    kept = torch.argsort(noise, dim=1)[:, :keep]
    mask = torch.ones(n, length).scatter_(1, kept, 0.0)  # 1 = removed
    latent, _, ids_restore = model.forward_encoder(x_adv, mask_ratio, noise=noise)
    pred = model.forward_decoder(latent, ids_restore)  # (N, L, p·p·C)
    per_patch = ((pred - my_patchify(imgs, 4)) ** 2).mean(-1)
    mse = (per_patch * mask).sum() / mask.sum()
    l1 = (my_unpatchify(pred, 4, 3) - imgs).abs().mean()
    return w_mae * mse + w_l1 * l1, mse, l1


@pytest.mark.parametrize("attack", ["none", "mae"])
@pytest.mark.parametrize("mask_ratio", [0.5, 0.75])
def test_maep_loss_matches_the_rederivation(attack, mask_ratio):
    model = tiny_purifier()
    imgs = torch.rand(6, 3, 16, 16)
    cfg = maep_cfg(maep_pair_attack=attack, maep_mask_ratio=mask_ratio, maep_mae_weight=0.3, maep_l1_weight=2.0,
                   steps=2)
    torch.manual_seed(5)
    ours = pretrain_losses(model, imgs, cfg)  # the registered method's losses

    torch.manual_seed(5)  # order: the pair attack's random start and masks, then the training mask
    x_adv = imgs if attack == "none" else spec_pgd(model, imgs, 8 / 255, 10 / 255, 2)
    loss, mse, l1 = spec_maep_loss(model, imgs, x_adv, mask_ratio, 0.3, 2.0)
    torch.testing.assert_close(ours["mae_loss"], mse.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours["pur_loss"], l1.detach(), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours["loss"], loss, rtol=1e-5, atol=1e-7)
    assert set(ours) == {"loss", "mae_loss", "pur_loss"} and ours["loss"].requires_grad  # its own keys only


def test_mask_ratio_zero_is_l1_only():
    model = tiny_purifier()
    imgs = torch.rand(4, 3, 16, 16)
    out = maep_losses(model, imgs, maep_cfg(maep_pair_attack="none", maep_mask_ratio=0.0, maep_l1_weight=1.0))
    assert out["mae_loss"].item() == 0.0 and out["loss"].requires_grad  # the L1 term carries the gradient
    torch.testing.assert_close(out["loss"], (reconstruct(model, imgs) - imgs).abs().mean())


def test_purifier_pair_attack_raises_the_l1_within_eps():
    model = tiny_purifier()
    imgs = torch.rand(4, 3, 16, 16)
    cfg = maep_cfg(maep_pair_attack="purifier", steps=5, eps=8.0, alpha=2.0)
    torch.manual_seed(0)
    x_adv = make_pairs(model, imgs, cfg)
    assert (x_adv - imgs).abs().max() <= 8 / 255 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        assert (reconstruct(model, x_adv) - imgs).abs().mean() > (reconstruct(model, imgs) - imgs).abs().mean()


def test_config_errors():
    assert build_config("digits", method="maep").norm_pix_loss is False  # the method's own default
    assert build_config("digits").norm_pix_loss is True  # mimir's is unchanged
    with pytest.raises(ConfigError, match="drop --norm_pix_loss"):
        build_config("digits", method="maep", norm_pix_loss=True)
    with pytest.raises(ConfigError, match="maep_pair_attack"):
        maep_cfg(maep_pair_attack="classifier")
    with pytest.raises(ConfigError, match="not both 0"):
        maep_cfg(maep_l1_weight=0.0, maep_mae_weight=0.0)
    with pytest.raises(ConfigError, match="maep_mask_ratio"):
        maep_cfg(maep_mask_ratio=1.0)


def test_cli_maep_with_norm_pix_is_one_line(capsys):
    assert main(["pretrain", "--method", "maep", "--norm_pix_loss", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "drop --norm_pix_loss" in err


# ---------------------------------------------------------------------- LoRA
def test_lora_starts_at_the_base_layer_and_merges_exactly():
    torch.manual_seed(0)
    base = nn.Linear(12, 7)
    x = torch.randn(5, 3, 12)
    ref = base(x).detach()
    layer = LoRALinear(base, rank=3, alpha=6.0)
    assert torch.equal(layer(x), ref)  # B = 0
    with torch.no_grad():
        layer.lora_B.normal_()
    adapted = layer(x).detach()
    assert not torch.allclose(adapted, ref)
    torch.testing.assert_close(adapted, ref + (x @ layer.lora_A.t() @ layer.lora_B.t()) * 2.0)
    layer.merge()
    torch.testing.assert_close(layer(x), adapted, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(base.weight @ torch.eye(12), base.weight)
    torch.testing.assert_close(layer(x), adapted, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="rank"):
        LoRALinear(nn.Linear(4, 2), rank=3)


def test_lora_on_the_decoder_trains_only_lora_and_merges_to_the_same_model():
    model = tiny_purifier()
    keys = list(model.state_dict())
    x = torch.rand(3, 3, 16, 16)
    before = reconstruct(model, x).detach()
    targets = decoder_lora_targets(model)
    assert targets == ["decoder_embed", "decoder_blocks.0.attn.qkv", "decoder_blocks.0.attn.proj",
                       "decoder_blocks.0.mlp.fc1", "decoder_blocks.0.mlp.fc2", "decoder_pred"]
    params = apply_lora(model, targets, rank=2, alpha=4.0)
    assert len(params) == 12 and len(lora_layers(model)) == 6
    assert torch.equal(reconstruct(model, x), before)  # zero-initialised B: the same output
    (reconstruct(model, x) - x).abs().mean().backward()
    lora_ids = {id(p) for p in params}
    for name, p in model.named_parameters():
        if id(p) in lora_ids:
            assert p.requires_grad and p.grad is not None, name
        else:
            assert p.grad is None, name
    assert all(p.grad.abs().sum() > 0 for p in params[1::2])  # B gets a gradient (A's is 0 while B = 0)
    with torch.no_grad():
        for p in params[1::2]:
            p.normal_(std=0.1)
    adapted = reconstruct(model, x).detach()
    assert not torch.allclose(adapted, before)
    merge_lora(model)
    assert not lora_layers(model) and list(model.state_dict()) == keys
    torch.testing.assert_close(reconstruct(model, x), adapted, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------- the purifier
def test_purifier_range_shape_and_determinism():
    model = tiny_purifier()
    with torch.no_grad():
        model.decoder_pred.bias.fill_(0.4)  # push part of the output past 1 so the clamp matters
    purifier = MAEPPurifier(model)
    x = torch.rand(5, 3, 16, 16)
    out = purifier(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    raw = reconstruct(model, x)
    assert (raw > 1).any() or (raw < 0).any()
    torch.testing.assert_close(out, raw.clamp(0, 1))
    torch.manual_seed(1)
    a = purifier(x)
    torch.manual_seed(2)
    assert torch.equal(a, purifier(x))  # no random draw at mask ratio 0
    x.requires_grad_(True)
    purifier(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # differentiable end to end


def test_purifier_transfer_across_sizes():
    model = tiny_purifier()
    x32 = torch.rand(2, 3, 32, 32)
    with pytest.raises(ConfigError, match="16 px"):
        MAEPPurifier(model)(x32)
    resized = MAEPPurifier(model, "resize")(x32)
    assert resized.shape == x32.shape and 0 <= resized.min() and resized.max() <= 1
    tiled = MAEPPurifier(model, "tile")
    out = tiled(x32)
    quadrant = MAEPPurifier(model)(x32[:, :, 16:, :16])
    torch.testing.assert_close(out[:, :, 16:, :16], quadrant)  # each 16 px tile purified on its own
    odd = torch.rand(2, 3, 24, 40)
    assert tiled(odd).shape == odd.shape and MAEPPurifier(model, "resize")(odd).shape == odd.shape
    small = torch.rand(2, 3, 8, 8)
    assert MAEPPurifier(model, "resize")(small).shape == small.shape
    with pytest.raises(ConfigError, match="transfer"):
        MAEPPurifier(model, "pos_embed")
    with pytest.raises(ConfigError, match="norm-pix"):
        MAEPPurifier(MaskedAutoencoderViT(img_size=16, patch_size=4, embed_dim=32, depth=1, num_heads=4,
                                          decoder_embed_dim=16, decoder_depth=1, norm_pix_loss=True))
    with pytest.raises(ConfigError, match="classifier takes 32 px"):
        check_transfer(16, 32, "none")
    check_transfer(16, 32, "tile")


# ---------------------------------------------------------------------- short runs on the embedded digits
def test_short_maep_run_loss_falls_then_lora_and_purifier(tmp_path):
    cfg = maep_cfg(epochs=3, warmup_epochs=0.5, output_dir=str(tmp_path), save_freq=1)
    summary = run_pretrain(cfg)
    log = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert log[-1]["train_pur_loss"] < log[0]["train_pur_loss"]
    assert log[-1]["train_mae_loss"] < log[0]["train_mae_loss"]

    ckpt = summary.checkpoint
    with pytest.raises(ConfigError, match="trained on 16 px"):
        load_maep_purifier(ckpt, image_size=32)
    purifier = load_maep_purifier(ckpt, image_size=32, transfer="resize")
    assert purifier(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)

    # stage 2: LoRA on the decoder at mask ratio 0; the loss falls on a fixed batch
    from mimir_fast.data.digits import digits_split

    imgs = torch.nn.functional.interpolate(digits_split("train")[0][:64], size=16, mode="bilinear")
    model = load_maep_purifier(ckpt).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(0)
    losses = maep_lora_finetune(model, [imgs] * 30, cfg, rank=4, alpha=8.0, lr=3e-3)
    assert losses[-5:].mean() < losses[:5].mean()
    after = model.state_dict()
    assert list(after) == list(before)
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith(("decoder_embed.", "decoder_blocks.", "decoder_pred.")) for k in changed)


def test_method_mismatch_checkpoint_is_refused(tmp_path):
    model = tiny_purifier()
    path = tmp_path / "c.pth"
    torch.save({"model": model.state_dict(), "args": {"method": "mimir", "model": "x", "input_size": 16,
                                                      "patch_size": 4}}, path)
    with pytest.raises(CheckpointError, match="not maep"):
        load_maep_purifier(path)
