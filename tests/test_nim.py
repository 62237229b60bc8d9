"""NIM pretraining and the De^3 defence (docs/purifiers.md): noise statistics, the loss against a re-derivation,
the purifier's range, randomness and de-normalisation, errors, and a short training run whose loss falls."""

import json

import pytest
import torch
from torch import nn

from mimir_fast.cli import main
from mimir_fast.errors import CheckpointError, ConfigError
from mimir_fast.methods import build_config, run_pretrain
from mimir_fast.models_mae import MaskedAutoencoderViT
from mimir_fast.purify.de3 import De3Purifier, load_de3_purifier, patch_stats
from mimir_fast.purify.defended import PurifiedClassifier
from mimir_fast.purify.noise import add_noise, sample_sigma
from tests.helpers import pretrain_losses


def tiny_nim(norm_pix=True, seed=0):
    torch.manual_seed(seed)
    return MaskedAutoencoderViT(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16,
                                decoder_depth=1, decoder_num_heads=4, norm_pix_loss=norm_pix)


def nim_cfg(**kw):
    return build_config("digits", method="nim", input_size=16, patch_size=4, **kw)


def nim_forward(model, x, noisy):
    """NIM-AdvDef's ``forward(imgs, noisy_imgs)`` through the model's ``noisy_images`` forward: the prediction
    unpatchified and, with norm-pix, de-normalised with the clean images' patch statistics; and the loss."""
    loss, pred = model(x, noisy_images=noisy)
    if model.norm_pix_loss:
        mean, std = patch_stats(model, x)
        pred = pred * std + mean
    return model.unpatchify(pred), loss


def my_patchify(x, p):  # (N, C, H, W) -> (N, L, p·p·C), (row, col, channel) inside a patch
    n, c, h, w = x.shape
    return x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(n, -1, p * p * c)


def my_unpatchify(t, p, c=3):
    n, length, _ = t.shape
    g = int(length**0.5)
    return t.reshape(n, g, g, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(n, c, g * p, g * p)


def my_stats(x, p):
    t = my_patchify(x, p)
    return t.mean(-1, keepdim=True), (t.var(-1, keepdim=True) + 1e-6).sqrt()


# ---------------------------------------------------------------------- the noise
def test_gamma_sigma_is_shape_25_scale_3():
    torch.manual_seed(0)
    n = 200_000
    s = sample_sigma(n, "gamma", shape=25.0, scale=3.0)
    # Gamma(k=25, θ=3): mean kθ = 75, variance kθ² = 225 (rate 3 would give mean 8.3). Standard errors:
    # mean 15/sqrt(n) ≈ 0.034, variance ≈ 225·sqrt((2 + 6/k)/n) ≈ 0.75.
    assert s.shape == (n,) and (s > 0).all()
    assert abs(s.mean().item() - 75.0) < 0.2
    assert abs(s.var().item() - 225.0) < 4.0
    assert abs((s / 255).mean().item() - 75 / 255) < 1e-3  # σ/255 ≈ 0.29 ± 0.06 in pixel units
    assert abs((s / 255).std().item() - 15 / 255) < 1e-3


def test_fixed_and_uniform_sigma():
    torch.manual_seed(0)
    assert torch.equal(sample_sigma(7, "fixed", sigma=42.0), torch.full((7,), 42.0))
    n = 200_000
    u = sample_sigma(n, "uniform", low=10.0, high=150.0)
    assert u.min() >= 10 and u.max() <= 150
    assert abs(u.mean().item() - 80.0) < 0.5  # se 140/sqrt(12 n) ≈ 0.09
    assert abs(u.var().item() - 140.0**2 / 12) < 25  # 1633.3, se ≈ 3.3
    with pytest.raises(ConfigError, match="nim_sigma_dist"):
        sample_sigma(3, "laplace")


def test_noise_is_per_image_sigma_over_255_and_not_clamped():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    sigma = torch.tensor([0.0, 30.0, 75.0, 150.0])
    noisy = add_noise(x, sigma)
    eps = noisy - x
    assert torch.equal(eps[0], torch.zeros_like(eps[0]))
    for i in (1, 2, 3):
        assert abs(eps[i].std().item() / (sigma[i].item() / 255) - 1) < 0.05  # 3072 pixels: se ≈ 1.3%
        assert abs(eps[i].mean().item()) < 4 * sigma[i].item() / 255 / 3072**0.5
    assert noisy.max() > 1 and noisy.min() < 0  # not clamped, as released
    fixed = torch.randn_like(x)
    assert torch.equal(add_noise(x, 51.0, fixed), x + fixed * (51.0 / 255))


# ---------------------------------------------------------------------- the loss and the forward
@pytest.mark.parametrize("norm_pix", [True, False])
def test_nim_forward_matches_the_released_forward(norm_pix):
    model = tiny_nim(norm_pix)
    p = 4
    x = torch.rand(3, 3, 16, 16)
    noisy = add_noise(x, 60.0)
    pred_img, loss = nim_forward(model, x, noisy)
    # the released NIM_MAE_ViT.forward: encoder on all noisy patches, decoder without mask tokens, loss.mean()
    with torch.no_grad():
        tok = model.patch_embed.proj(noisy).flatten(2).transpose(1, 2) + model.pos_embed[:, 1:]
        tok = torch.cat([(model.cls_token + model.pos_embed[:, :1]).expand(3, -1, -1), tok], 1)
        for blk in model.blocks:
            tok = blk(tok)
        dec = model.decoder_embed(model.norm(tok)) + model.decoder_pos_embed
        for blk in model.decoder_blocks:
            dec = blk(dec)
        pred = model.decoder_pred(model.decoder_norm(dec))[:, 1:]
        target = my_patchify(x, p)
        if norm_pix:
            mean, std = my_stats(x, p)
            target = (target - mean) / std
        ref_loss = ((pred - target) ** 2).mean()
        ref_img = my_unpatchify(pred * std + mean if norm_pix else pred, p)
    torch.testing.assert_close(loss.detach(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pred_img.detach(), ref_img, rtol=1e-4, atol=1e-5)
    assert torch.isfinite(loss)  # the masked loss at ratio 0 would be 0/0


def test_nim_losses_use_the_configured_sigma_and_backpropagate():
    model = tiny_nim()
    x = torch.rand(4, 3, 16, 16)
    cfg = nim_cfg(nim_sigma_dist="fixed", nim_sigma=0.0)
    out = pretrain_losses(model, x, cfg)  # the registered method's losses
    assert set(out) == {"loss"}  # NIM logs its own loss only
    torch.testing.assert_close(out["loss"].detach(), nim_forward(model, x, x)[1].detach())  # σ = 0: no noise
    torch.manual_seed(3)
    noisy = pretrain_losses(model, x, nim_cfg(nim_sigma_dist="fixed", nim_sigma=100.0))["loss"]
    torch.manual_seed(3)
    ref = nim_forward(model, x, add_noise(x, 100.0))[1]
    torch.testing.assert_close(noisy.detach(), ref.detach())
    noisy.backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0


def test_config_errors_and_cli_flags(capsys):
    with pytest.raises(ConfigError, match="nim_sigma_dist"):
        nim_cfg(nim_sigma_dist="beta")
    with pytest.raises(ConfigError, match="nim_gamma_shape"):
        nim_cfg(nim_gamma_shape=0.0)
    with pytest.raises(ConfigError, match="nim_gamma_scale"):
        nim_cfg(nim_gamma_scale=-1.0)
    with pytest.raises(ConfigError, match="nim_sigma_low"):
        nim_cfg(nim_sigma_low=100.0, nim_sigma_high=50.0)
    with pytest.raises(ConfigError, match="nim_sigma must"):
        nim_cfg(nim_sigma=-1.0)
    assert main(["pretrain", "--method", "nim", "--nim_sigma_dist", "cauchy", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nim_sigma_dist" in err


# ---------------------------------------------------------------------- De^3
def test_de3_range_shape_and_seeded_randomness():
    model = tiny_nim()
    with torch.no_grad():
        model.decoder_pred.bias.fill_(3.0)  # predictions far past the patch range, so the clamp matters
    purifier = De3Purifier(model, gamma=70)
    x = torch.rand(5, 3, 16, 16)
    torch.manual_seed(1)
    a = purifier(x)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1 and (a == 1).any()
    torch.manual_seed(1)
    assert torch.equal(a, purifier(x))  # same seed, same noise, same output
    torch.manual_seed(2)
    assert not torch.equal(a, purifier(x))  # a fresh ε on every call
    eps = torch.randn_like(x)
    assert torch.equal(purifier(x, eps), purifier(x, eps))  # randomness held fixed
    assert not torch.is_grad_enabled() or all(not p.requires_grad for p in purifier.parameters())
    purifier.train()
    assert not purifier.nim.training  # NIM stays in eval mode


def test_de3_matches_the_pipeline_by_hand_for_each_denorm_stats():
    p, gamma = 4, 50.0
    x = torch.rand(3, 3, 16, 16)
    eps = torch.randn_like(x)
    noisy = x + eps * gamma / 255
    outs = {}
    for stats, norm_pix in (("clean", True), ("noisy", True), ("none", False)):
        model = tiny_nim(norm_pix)
        purifier = De3Purifier(model, gamma, stats)
        with torch.no_grad():
            pred = nim_forward(model, x, noisy)[0]  # norm-pix: de-normalised with the clean statistics
            if stats == "noisy":  # undo the clean statistics, apply the noisy ones
                mc, sc = my_stats(x, p)
                mn, sn = my_stats(noisy, p)
                pred = my_unpatchify((my_patchify(pred, p) - mc) / sc * sn + mn, p)
            outs[stats] = purifier(x, eps)
        torch.testing.assert_close(outs[stats], pred.clamp(0, 1), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(outs["clean"], outs["noisy"], atol=1e-3)


def test_clean_statistics_are_a_noise_free_path():
    """With the network's output zeroed, clean statistics still return every patch's mean of x — whatever the
    noise — while noisy statistics return the noisy patch means: the leak the released behaviour has."""
    model = tiny_nim()
    with torch.no_grad():
        model.decoder_pred.weight.zero_()
        model.decoder_pred.bias.zero_()
    x = torch.rand(2, 3, 16, 16)
    patch_means = my_unpatchify(my_stats(x, 4)[0].expand(-1, -1, 48), 4)
    clean = De3Purifier(model, 140.0, "clean")
    noisy = De3Purifier(model, 140.0, "noisy")
    for seed in (0, 1):
        torch.manual_seed(seed)
        torch.testing.assert_close(clean(x), patch_means)
    torch.manual_seed(0)
    a = noisy(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, noisy(x)) and not torch.allclose(a, patch_means, atol=1e-2)
    xg = x.clone().requires_grad_(True)
    clean(xg).sum().backward()
    assert xg.grad.abs().sum() > 0  # the gradient reaches x through the statistics alone


def test_de3_errors():
    with pytest.raises(ConfigError, match="gamma must be >= 0"):
        De3Purifier(tiny_nim(), gamma=-5)
    with pytest.raises(ConfigError, match="gamma must be >= 0"):
        De3Purifier(tiny_nim(), gamma=float("nan"))
    with pytest.raises(ConfigError, match="denorm_stats"):
        De3Purifier(tiny_nim(), 70, "mean")
    with pytest.raises(ConfigError, match="without norm-pix"):
        De3Purifier(tiny_nim(norm_pix=True), 70, "none")
    with pytest.raises(ConfigError, match="use none"):
        De3Purifier(tiny_nim(norm_pix=False), 70, "clean")
    De3Purifier(tiny_nim(), 0)  # γ = 0 is allowed: reconstruction without noise


def test_purified_classifier_gives_a_full_gradient():
    torch.manual_seed(0)
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10))
    defended = PurifiedClassifier(De3Purifier(tiny_nim(), 70, "noisy"), classifier).eval()
    x = torch.rand(4, 3, 16, 16, requires_grad=True)
    logits = defended(x)
    assert logits.shape == (4, 10)
    nn.functional.cross_entropy(logits, torch.zeros(4, dtype=torch.long)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


# ---------------------------------------------------------------------- a short run on the embedded digits
def test_short_nim_run_loss_falls_and_loads_as_de3(tmp_path):
    cfg = nim_cfg(epochs=3, warmup_epochs=0.5, output_dir=str(tmp_path), save_freq=1)
    summary = run_pretrain(cfg)
    log = [json.loads(line) for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [0, 1, 2]
    assert log[-1]["train_loss"] < 0.9 * log[0]["train_loss"]
    assert summary.figure == tmp_path / "reconstruction.png" and summary.figure.is_file()  # NIM's own panels

    purifier = load_de3_purifier(summary.checkpoint, 70, "clean", image_size=16)
    x = torch.rand(2, 3, 16, 16)
    out = purifier(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ConfigError, match="trained on 16 px"):
        load_de3_purifier(summary.checkpoint, 70, image_size=32)
    with pytest.raises(ConfigError, match="gamma"):
        load_de3_purifier(summary.checkpoint, -1)


def test_checkpoint_of_another_method_is_refused(tmp_path):
    path = tmp_path / "c.pth"
    torch.save({"model": tiny_nim().state_dict(), "args": {"method": "mae", "model": "x", "input_size": 16,
                                                          "patch_size": 4}}, path)
    with pytest.raises(CheckpointError, match="not nim"):
        load_de3_purifier(path, 70)


# ---------------------------------------------------------------------- mimir-fast eval --defense de3
def _pretrain_ckpt(path, method, norm_pix, size=16):
    """A freshly initialised mae_vit_micro saved as a ``--method {method}`` pretraining checkpoint."""
    from mimir_fast.models_mae import create_model
    from mimir_fast.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = create_model("mae_vit_micro", img_size=size, patch_size=4, norm_pix_loss=norm_pix)
    save_checkpoint({"model": model.state_dict(), "epoch": 0,
                     "args": {"method": method, "model": "mae_vit_micro", "input_size": size, "patch_size": 4,
                              "norm_pix_loss": norm_pix}}, path)
    return path


def _nim_ckpt(path, size=16):
    return _pretrain_ckpt(path, "nim", True, size)


def test_eval_defense_de3_runs_through_the_purifier(tmp_path, capsys):
    from tests.test_cli import assert_one_line_error, run
    from tests.test_eval import _classifier_ckpt

    clf = _classifier_ckpt(tmp_path / "clf.pth")
    nim = _nim_ckpt(tmp_path / "nim.pth")
    out = ["--output_dir", str(tmp_path / "ev")]
    code, _, err = run(["eval", "--resume", str(clf), "--defense", "de3", "--gamma", "70", "--purifier", str(nim),
                        "--n_ex", "6", "--attacks", "clean,pgd20", "--eps_curve", "0,8", "--eot_iter", "2",
                        "--eval_draws", "2", *out], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "eval_results.json").read_text())
    assert report["config"]["defense"] == "de3" and report["config"]["gamma"] == 70
    assert set(report["accuracy"]) == {"clean", "pgd20"}

    nim32 = _nim_ckpt(tmp_path / "nim32.pth", size=32)
    cases = [
        (["--defense", "de3", "--gamma", "-5", "--purifier", str(nim)], ["gamma must be >= 0"]),
        (["--defense", "de3"], ["needs --purifier"]),
        (["--defense", "de3", "--purifier", str(nim32)], ["trained on 32 px images but the classifier takes 16"]),
        (["--defense", "de3", "--purifier", str(clf)], ["not nim"]),
        (["--defense", "de3", "--purifier", str(nim), "--denorm_stats", "none"], ["without norm-pix"]),
        (["--defense", "diffpure", "--purifier", str(nim)], ["unknown defense 'diffpure'"]),
    ]
    for argv, needles in cases:
        code, _, err = run(["eval", "--resume", str(clf), "--n_ex", "2", "--attacks", "clean", *argv, *out], capsys)
        assert_one_line_error(code, err, *needles)
