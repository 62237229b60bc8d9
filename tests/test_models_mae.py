"""MaskedAutoencoderViT against a plain re-derivation of MAE's maths (tests/mae_reference.py)."""

from functools import partial

import pytest
import torch
from torch import nn

from mimir_fast import models_mae
from mimir_fast.errors import ConfigError
from mimir_fast.models_mae import MaskedAutoencoderViT, create_model
from tests.mae_reference import ReferenceMAE, mae_sincos

# Irregular tiny configurations: odd batch, odd widths per head, 3×3 and 6×6 grids, patch 2, 4 and 5.
TINY = [
    pytest.param(dict(img_size=12, patch_size=4, embed_dim=24, depth=2, num_heads=3, decoder_embed_dim=20,
                      decoder_depth=1, decoder_num_heads=5), 3, 0.6, id="g3-p4-D24-B3"),
    pytest.param(dict(img_size=12, patch_size=2, embed_dim=36, depth=1, num_heads=4, decoder_embed_dim=16,
                      decoder_depth=2, decoder_num_heads=2), 5, 0.75, id="g6-p2-D36-B5"),
    pytest.param(dict(img_size=20, patch_size=5, embed_dim=28, depth=2, num_heads=7, decoder_embed_dim=12,
                      decoder_depth=1, decoder_num_heads=3), 2, 0.5, id="g4-p5-D28-B2"),
]
LN = partial(nn.LayerNorm, eps=1e-6)


def _pair(kwargs, norm_pix, seed=0):
    torch.manual_seed(seed)
    ours = MaskedAutoencoderViT(**kwargs, norm_layer=LN, norm_pix_loss=norm_pix)
    torch.manual_seed(seed)
    ref = ReferenceMAE(**kwargs, norm_layer=LN, norm_pix_loss=norm_pix)
    return ours, ref


@pytest.mark.parametrize("kwargs,batch,ratio", TINY)
def test_fresh_weights_equal_mae_init(kwargs, batch, ratio):
    ours, ref = _pair(kwargs, True)
    ref_sd = ref.state_dict()
    for name, tensor in ours.state_dict().items():
        assert torch.equal(tensor, ref_sd[name]), name


@pytest.mark.parametrize("kwargs,batch,ratio", TINY)
@pytest.mark.parametrize("norm_pix", [True, False])
def test_forward_matches_reference(kwargs, batch, ratio, norm_pix):
    ours, ref = _pair(kwargs, norm_pix)
    ref.load_state_dict(ours.state_dict(), strict=True)
    imgs = torch.rand(batch, 3, kwargs["img_size"], kwargs["img_size"])
    torch.manual_seed(7)
    loss, pred, mask = ours(imgs, ratio)
    torch.manual_seed(7)
    ref_loss, ref_pred, ref_mask, _ = ref(imgs, ratio)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(pred, ref_pred, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs,batch,ratio", TINY)
def test_adversarial_forward_encodes_adv_and_reconstructs_clean(kwargs, batch, ratio):
    ours, ref = _pair(kwargs, True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    size = kwargs["img_size"]
    imgs, adv = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    torch.manual_seed(3)
    out = ours(imgs, ratio, adv_images=adv)
    torch.manual_seed(3)
    ref_out = ref(imgs, ratio, adv_images=adv)
    assert len(out) == 4
    loss, pred, mask, latent = out
    keep = int(ours.patch_embed.num_patches * (1 - ratio))
    assert latent.shape == (batch, 1 + keep, kwargs["embed_dim"])
    assert torch.equal(mask, ref_out[2])
    for a, b in zip((loss, pred, latent), (ref_out[0], ref_out[1], ref_out[3])):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the latent is the encoder output of x_adv after the final norm
    torch.manual_seed(3)
    enc, _, _ = ours.forward_encoder(adv, ratio)
    torch.testing.assert_close(latent, enc, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs,batch,ratio", TINY)
def test_gradients_match_reference(kwargs, batch, ratio):
    ours, ref = _pair(kwargs, True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    imgs = torch.rand(batch, 3, kwargs["img_size"], kwargs["img_size"])
    torch.manual_seed(1)
    ours(imgs, ratio)[0].backward()
    torch.manual_seed(1)
    ref(imgs, ratio)[0].backward()
    ref_params = dict(ref.named_parameters())
    for name, p in ours.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-4, atol=1e-6, msg=name)


def test_masking_rng_matches_mae():
    model = MaskedAutoencoderViT(img_size=16, patch_size=4, embed_dim=8, depth=1, num_heads=2,
                                 decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)
    ref = ReferenceMAE(img_size=16, patch_size=4, embed_dim=8, depth=1, num_heads=2,
                       decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)
    x = torch.randn(7, 16, 8)
    torch.manual_seed(11)
    kept, mask, restore = model.random_masking(x, 0.75)
    torch.manual_seed(11)
    ref_kept, ref_mask, ref_restore = ref.random_masking(x, 0.75)
    assert torch.equal(kept, ref_kept) and torch.equal(mask, ref_mask) and torch.equal(restore, ref_restore)
    assert mask.dtype == torch.float32 and (mask.sum(1) == 12).all()
    # the global RNG advanced exactly as MAE's single torch.rand(N, L) draw advances it
    torch.manual_seed(11)
    torch.rand(7, 16)
    expected_next = torch.rand(1)
    torch.manual_seed(11)
    model.random_masking(x, 0.75)
    assert torch.equal(torch.rand(1), expected_next)


def test_patchify_roundtrip_and_layout():
    model = MaskedAutoencoderViT(img_size=10, patch_size=5, embed_dim=8, depth=1, num_heads=2,
                                 decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)
    ref = ReferenceMAE(img_size=10, patch_size=5, embed_dim=8, depth=1, num_heads=2,
                       decoder_embed_dim=8, decoder_depth=1, decoder_num_heads=2)
    imgs = torch.rand(3, 3, 10, 10)
    patches = model.patchify(imgs)
    assert patches.shape == (3, 4, 75)
    assert torch.equal(patches, ref.patchify(imgs))
    assert torch.equal(model.unpatchify(patches), imgs)
    with pytest.raises(ValueError):
        model.patchify(torch.rand(1, 3, 10, 8))


def test_pos_embed_is_maes_table_bit_for_bit():
    for name in ("mae_vit_ti", "mae_vit_micro"):
        model = create_model(name, img_size=32, patch_size=4)
        assert torch.equal(model.pos_embed[0], torch.from_numpy(mae_sincos(model.pos_embed.shape[-1], 8)).float())
        assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


@pytest.mark.parametrize(
    "name,enc,dec,patch",
    [
        ("mae_vit_base_patch16", (768, 12, 12), (512, 8, 16), 16),
        ("mae_vit_large_patch16", (1024, 24, 16), (512, 8, 16), 16),
        ("mae_vit_huge_patch14", (1280, 32, 16), (512, 8, 16), 14),
        ("mae_vit_ti", (192, 12, 3), (128, 2, 16), 16),
        ("mae_vit_small", (384, 12, 6), (128, 2, 16), 16),
        ("mae_vit_base", (768, 12, 12), (128, 2, 16), 16),
        ("mae_vit_large", (1024, 24, 16), (128, 2, 16), 16),
    ],
)
def test_factories_and_state_dict_keys_match_mae(name, enc, dec, patch):
    """Built on the meta device (no memory); keys and shapes must equal the MAE re-derivation's."""
    factory = getattr(models_mae, name)
    with torch.device("meta"):
        model = factory(img_size=patch * 2, norm_pix_loss=True)
        ref = ReferenceMAE(img_size=patch * 2, patch_size=patch, embed_dim=enc[0], depth=enc[1], num_heads=enc[2],
                           decoder_embed_dim=dec[0], decoder_depth=dec[1], decoder_num_heads=dec[2])
    assert model.patch_embed.patch_size == (patch, patch) and model.norm_pix_loss
    assert len(model.blocks) == enc[1] and model.blocks[0].attn.num_heads == enc[2]
    assert len(model.decoder_blocks) == dec[1] and model.decoder_blocks[0].attn.num_heads == dec[2]
    assert model.norm.eps == 1e-6
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    assert ours == theirs


def test_factories_take_img_and_patch_size():
    model = models_mae.mae_vit_small(img_size=32, patch_size=2, norm_pix_loss=True)
    assert model.patch_embed.num_patches == 256 and model.decoder_pred.out_features == 12


def test_state_dict_round_trip_both_ways():
    kwargs = dict(img_size=32, patch_size=4)
    ours = models_mae.mae_vit_ti(**kwargs)
    ref = ReferenceMAE(**kwargs, embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128, decoder_depth=2,
                       decoder_num_heads=16)
    ref.load_state_dict(ours.state_dict(), strict=True)
    torch.manual_seed(5)
    other = ReferenceMAE(**kwargs, embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=128,
                         decoder_depth=2, decoder_num_heads=16)
    fresh = models_mae.mae_vit_ti(**kwargs)
    fresh.load_state_dict(other.state_dict(), strict=True)
    for k, v in other.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model 'vit_nope'"):
        create_model("vit_nope")


def test_wrong_input_size_is_rejected():
    model = models_mae.mae_vit_micro(img_size=32, patch_size=4)
    with pytest.raises(ValueError, match="expects"):
        model(torch.rand(2, 3, 16, 16))
