"""The classifier: timm export parity, encoder loading from MAE/MIMIR checkpoints, drop-path, layer decay."""

import pytest
import timm
import torch

from mimir_fast.errors import CheckpointError, ConfigError
from mimir_fast.export import ExportConfig, export
from mimir_fast.models_mae import create_model
from mimir_fast.models_vit import (
    CLASSIFIERS,
    PRETRAIN_TO_CLASSIFIER,
    create_classifier,
    encoder_state,
    load_pretrained_encoder,
)
from mimir_fast.train.checkpoint import save_checkpoint
from mimir_fast.train.optim import param_groups_layer_decay


def _timm_twin(model, num_classes):
    blk = model.blocks[0]
    return timm.models.vision_transformer.VisionTransformer(
        img_size=model.patch_embed.img_size[0], patch_size=model.patch_embed.patch_size[0], num_classes=num_classes,
        embed_dim=model.cls_token.shape[-1], depth=len(model.blocks), num_heads=blk.attn.num_heads, qkv_bias=True,
        global_pool="avg",
    ).eval()


@pytest.mark.parametrize("name,size,patch,classes", [("vit_micro", 32, 4, 10), ("vit_ti", 24, 4, 7),
                                                     ("vit_small", 20, 5, 3)])
def test_export_loads_strict_into_timm_with_identical_logits(tmp_path, name, size, patch, classes):
    model = create_classifier(name, img_size=size, patch_size=patch, num_classes=classes).eval()
    with torch.no_grad():  # non-trivial weights everywhere, including the head and fc_norm
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    save_checkpoint({"model": model.state_dict(), "epoch": 0, "args": {"model": name}}, tmp_path / "ck.pth")
    path = export(ExportConfig(resume=str(tmp_path / "ck.pth"), output=str(tmp_path / "timm.pth")))
    twin = _timm_twin(model, classes)
    twin.load_state_dict(torch.load(path, weights_only=True), strict=True)
    x = torch.rand(5, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), model(x), rtol=1e-5, atol=1e-5)


def test_encoder_only_export_and_pretrain_checkpoint_rules(tmp_path):
    mae = create_model("mae_vit_micro", img_size=32, patch_size=4)
    save_checkpoint({"model": mae.state_dict(), "epoch": 3}, tmp_path / "pre.pth")
    with pytest.raises(CheckpointError, match="timm export needs a classifier"):
        export(ExportConfig(resume=str(tmp_path / "pre.pth"), output=str(tmp_path / "x.pth")))
    path = export(ExportConfig(resume=str(tmp_path / "pre.pth"), output=str(tmp_path / "enc.pth"), encoder_only=True))
    enc = torch.load(path, weights_only=True)["model"]
    assert not any(k.startswith(("decoder", "mask_token", "norm.")) for k in enc)
    clf = create_classifier("vit_micro", img_size=32, patch_size=4, num_classes=10)
    missing, unexpected = clf.load_state_dict(enc, strict=False)
    assert sorted(missing) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"] and not unexpected


def test_pretrained_encoder_initialises_the_trunk_exactly():
    mae = create_model("mae_vit_micro", img_size=32, patch_size=4)
    clf = create_classifier("vit_micro", img_size=32, patch_size=4, num_classes=10)
    head_before = clf.head.weight.clone()
    load_pretrained_encoder(clf, mae.state_dict(), "pre.pth")
    own = clf.state_dict()
    for k, v in encoder_state(mae.state_dict()).items():
        assert torch.equal(own[k], v), k
    assert torch.equal(clf.head.weight, head_before)  # head and fc_norm stay fresh
    assert clf.pos_embed.requires_grad  # trainable in fine-tuning


def test_encoder_loading_errors():
    clf = create_classifier("vit_micro", img_size=32, patch_size=4, num_classes=10)
    with pytest.raises(CheckpointError, match="is a classifier checkpoint"):
        load_pretrained_encoder(clf, clf.state_dict(), "clf.pth")
    small = create_model("mae_vit_micro", img_size=16, patch_size=4)
    with pytest.raises(CheckpointError, match="pretrained with 16 patches of width 128, but the classifier has 64"):
        load_pretrained_encoder(clf, small.state_dict(), "pre16.pth")
    wide = create_model("mae_vit_ti", img_size=32, patch_size=4)
    with pytest.raises(CheckpointError, match="width 192"):
        load_pretrained_encoder(clf, wide.state_dict(), "ti.pth")


def test_every_pretrain_factory_has_a_matching_classifier():
    for mae_name, clf_name in PRETRAIN_TO_CLASSIFIER.items():
        with torch.device("meta"):
            mae = create_model(mae_name, img_size=28 if "14" in mae_name else 32)
            clf = create_classifier(clf_name, img_size=28 if "14" in mae_name else 32, num_classes=5)
        mae_trunk = {k: v.shape for k, v in encoder_state(mae.state_dict()).items()}
        assert mae_trunk == {k: v.shape for k, v in encoder_state(clf.state_dict()).items()}, mae_name
    assert set(PRETRAIN_TO_CLASSIFIER.values()) == set(CLASSIFIERS)
    with pytest.raises(ConfigError, match="unknown classifier"):
        create_classifier("resnet50")


def test_drop_path_rises_with_depth_and_is_off_in_eval():
    clf = create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=3, drop_path_rate=0.5)
    rates = [getattr(b.drop_path, "p", 0.0) for b in clf.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5) and rates == sorted(rates)
    x = torch.rand(4, 3, 16, 16)
    clf.eval()
    assert torch.equal(clf(x), clf(x))
    clf.train()
    torch.manual_seed(0)
    a = clf(x)
    torch.manual_seed(1)
    assert not torch.equal(a, clf(x))


def test_layer_decay_groups_follow_mae():
    clf = create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=3)  # depth 6: 7 layers above 0
    groups = param_groups_layer_decay(clf, 0.05, 0.65)
    names = {id(p): n for n, p in clf.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g["params"]}
    assert by_name["cls_token"]["lr_scale"] == pytest.approx(0.65**7) and by_name["cls_token"]["weight_decay"] == 0
    assert by_name["pos_embed"]["weight_decay"] == 0 and by_name["patch_embed.proj.weight"]["weight_decay"] == 0.05
    assert by_name["blocks.0.attn.qkv.weight"]["lr_scale"] == pytest.approx(0.65**6)
    assert by_name["blocks.5.mlp.fc2.weight"]["lr_scale"] == pytest.approx(0.65)
    assert by_name["head.weight"]["lr_scale"] == 1.0 and by_name["head.bias"]["weight_decay"] == 0
    assert by_name["fc_norm.weight"]["weight_decay"] == 0
    assert len(by_name) == sum(1 for _ in clf.parameters())


@pytest.mark.parametrize("size,patch,chans,dim,n", [(32, 16, 3, 128, 29), (20, 5, 3, 40, 3), (21, 7, 1, 33, 2)])
def test_patch_embedding_equals_its_strided_convolution_with_gradients(size, patch, chans, dim, n):
    """The classifier's patch embedding, a matrix product over patches, against the convolution it stands for."""
    from mimir_fast.vit_layers import PatchEmbed

    torch.manual_seed(size)
    embed = PatchEmbed(size, patch, chans, dim, matmul=True).double()
    x = torch.rand(n, chans, size, size, dtype=torch.float64, requires_grad=True)
    out = embed(x)
    want = embed.proj(x).flatten(2).transpose(1, 2)  # the convolution, (N, D, h, w) -> (N, L, D)
    assert out.shape == (n, (size // patch) ** 2, dim)
    assert create_classifier("vit_micro", img_size=32, patch_size=16, num_classes=10).patch_embed.matmul
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, embed.proj.weight, embed.proj.bias], g)
    ref = torch.autograd.grad(want, [x, embed.proj.weight, embed.proj.bias], g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
