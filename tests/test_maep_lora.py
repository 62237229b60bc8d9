"""MAEP stage 2 through the CLI and the shared runner (``--maep_stage lora``): only the decoder's LoRA matrices
train, the L1 purification loss falls, resume is exact, the purifier loads it merged, and bad input is one line."""

import json
import shutil

import pytest
import torch

import mimir_fast.data as data_module
from mimir_fast.cli import main
from mimir_fast.errors import ConfigError
from mimir_fast.methods import build_config
from mimir_fast.models_mae import create_model
from mimir_fast.purify.lora import LoRALinear, apply_lora, decoder_lora_targets, lora_layers, lora_state
from mimir_fast.purify.maep import load_maep_purifier, reconstruct
from mimir_fast.train.checkpoint import load_checkpoint, save_checkpoint
from tests.test_train import _assert_same_run_state

DECODER = ("decoder_embed.", "decoder_blocks.", "decoder_pred.")
COMMON = ["--method", "maep", "--no-norm_pix_loss", "--input_size", "16", "--patch_size", "4", "--batch_size", "32",
          "--maep_pair_attack", "mae", "--seed", "3"]


def _few_digits(real):
    def few(split, kind="digits"):  # 128 training images: 4 steps of 32 per epoch, to keep the runs short
        x, y = real(split, kind)
        n = 128 if split == "train" else 8
        return x[:n], y[:n]

    return few


@pytest.fixture(scope="module")
def digits():
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(data_module, "digits_split", _few_digits(data_module.digits_split))
        yield


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, digits):
    """A 1-epoch stage-1 MAEP checkpoint."""
    out = tmp_path_factory.mktemp("stage1")
    assert main(["pretrain", *COMMON, "--epochs", "1", "--output_dir", str(out)]) == 0
    return out / "checkpoint-0.pth"


def _stage2(stage1, out, *extra):
    return ["pretrain", *COMMON, "--maep_stage", "lora", "--maep_init", str(stage1), "--epochs", "2",
            "--save_freq", "1", "--lr", "3e-3", "--warmup_epochs", "0", "--maep_lora_rank", "2", "--output_dir",
            str(out), *extra]


def _log(folder):
    return [json.loads(line) for line in (folder / "log.txt").read_text().splitlines()]


def test_stage_lora_cli_run_trains_only_decoder_lora_resumes_exactly_and_loads(stage1, tmp_path, digits):
    full = tmp_path / "full"
    assert main(_stage2(stage1, full)) == 0

    # the L1 purification loss falls; the log has the stage's columns only
    log = _log(full)
    assert [r["epoch"] for r in log] == [0, 1]
    assert log[1]["train_pur_loss"] < log[0]["train_pur_loss"] and log[0]["train_loss"] == log[0]["train_pur_loss"]
    assert "train_mae_loss" not in log[0] and "train_hsic" not in log[0]
    assert (full / "reconstruction.png").is_file()

    # the checkpoint keeps the LoRA layout and records the stage; only the LoRA matrices moved
    ckpt = load_checkpoint(full / "checkpoint-1.pth")
    args = ckpt["args"]
    assert (args["maep_stage"], args["maep_lora_rank"], args["maep_lora_alpha"]) == ("lora", 2, 8.0)
    start = load_checkpoint(stage1)["model"]
    lora_keys = {k for k in ckpt["model"] if k.endswith((".lora_A", ".lora_B"))}
    assert len(lora_keys) == 2 * len(decoder_lora_targets(create_model("mae_vit_micro", img_size=16, patch_size=4)))
    assert all(k.startswith(DECODER) for k in lora_keys)
    assert any(k.endswith(".lora_B") and ckpt["model"][k].abs().sum() > 0 for k in lora_keys)  # B left 0
    wrapped = create_model("mae_vit_micro", img_size=16, patch_size=4, norm_pix_loss=False)
    apply_lora(wrapped, decoder_lora_targets(wrapped), rank=2)
    expected_base = lora_state(wrapped, start)
    for k, v in ckpt["model"].items():
        if k not in lora_keys:
            assert torch.equal(v, expected_base[k]), k  # every stage-1 weight, decoder bases included, unchanged

    # resuming from stage 2's epoch-0 checkpoint is bit-identical to the uninterrupted run
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(full / "checkpoint-0.pth", resumed)
    assert main(_stage2(stage1, resumed)) == 0  # auto-resume
    _assert_same_run_state(full / "checkpoint-1.pth", resumed / "checkpoint-1.pth")
    assert [r["epoch"] for r in _log(resumed)] == [1]

    # load_maep_purifier rebuilds, loads and merges: a plain model in which only decoder weights differ
    purifier = load_maep_purifier(full / "checkpoint-1.pth")
    merged = purifier.model.state_dict()
    assert not lora_layers(purifier.model) and list(merged) == list(start)
    changed = {k for k in merged if not torch.equal(merged[k], start[k])}
    assert changed and all(k.startswith(DECODER) and k.endswith(".weight") for k in changed)
    x = torch.rand(2, 3, 16, 16)
    assert purifier(x).shape == x.shape
    with torch.no_grad():  # the merged purifier gives what the wrapped model gives
        wrapped.load_state_dict(ckpt["model"])
        torch.testing.assert_close(purifier(x), reconstruct(wrapped, x).clamp(0, 1), rtol=1e-5, atol=1e-5)


def _one_line_error(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("mimir-fast: error:")
    return err


def _fake_checkpoint(path, **args):
    model = create_model("mae_vit_micro", img_size=16, patch_size=4, norm_pix_loss=False)
    base = {"model": "mae_vit_micro", "input_size": 16, "patch_size": 4, "norm_pix_loss": False}
    save_checkpoint({"model": model.state_dict(), "args": {**base, **args}}, path)
    return path


def test_stage_lora_cli_errors_are_one_line(stage1, tmp_path, capsys, digits):
    out = str(tmp_path / "out")
    base = ["pretrain", "--no-norm_pix_loss", "--maep_stage", "lora", "--output_dir", out]
    assert "needs --maep_init" in _one_line_error([*base, "--method", "maep"], capsys)
    assert "is a flag of --method maep, not of --method mimir" in _one_line_error(
        [*base, "--method", "mimir", "--maep_init", str(stage1)], capsys)
    nim = _fake_checkpoint(tmp_path / "nim.pth", method="nim")
    assert "method 'nim', not maep" in _one_line_error([*base, "--method", "maep", "--maep_init", str(nim)], capsys)
    mimir = _fake_checkpoint(tmp_path / "mimir.pth", method="mimir", norm_pix_loss=True)
    assert "not maep" in _one_line_error([*base, "--method", "maep", "--maep_init", str(mimir)], capsys)
    norm_pix = _fake_checkpoint(tmp_path / "np.pth", method="maep", norm_pix_loss=True)
    assert "norm-pix" in _one_line_error([*base, "--method", "maep", "--maep_init", str(norm_pix)], capsys)
    assert "input_size 16, but --input_size is 32" in _one_line_error(
        [*base, "--method", "maep", "--maep_init", str(stage1), "--input_size", "32"], capsys)
    assert "model 'mae_vit_micro', but --model is" in _one_line_error(
        [*base, "--method", "maep", "--maep_init", str(stage1), "--model", "mae_vit_ti_dec128d2b"], capsys)
    assert "does not exist" in _one_line_error(
        [*base, "--method", "maep", "--maep_init", str(tmp_path / "missing.pth")], capsys)
    # resuming across stages, or with another LoRA shape, is refused by name
    lora_ckpt = _fake_checkpoint(tmp_path / "lora.pth", method="maep", maep_stage="lora", maep_lora_rank=4,
                                 maep_lora_alpha=8.0)
    assert "not lora" in _one_line_error(
        [*base, "--method", "maep", "--maep_init", str(stage1), "--resume", str(stage1)], capsys)
    assert "not masked" in _one_line_error(
        ["pretrain", *COMMON, "--output_dir", out, "--resume", str(lora_ckpt)], capsys)
    assert "LoRA rank 4, alpha 8.0" in _one_line_error(
        [*base, "--method", "maep", "--maep_init", str(stage1), "--resume", str(lora_ckpt), "--maep_lora_rank", "2"],
        capsys)
    assert "stage-1" in _one_line_error([*base, "--method", "maep", "--maep_init", str(lora_ckpt)], capsys)


def test_config_checks():
    opts = build_config("digits", method="maep").options
    assert (opts.stage, opts.init, opts.lora_rank, opts.lora_alpha) == ("masked", None, 4, 8.0)
    lora = dict(method="maep", maep_stage="lora", maep_init="x.pth")
    for bad, match in [
        (dict(maep_stage="lora2"), "unknown maep_stage"),
        (dict(maep_lora_rank=0), "maep_lora_rank must be >= 1"),
        (dict(maep_lora_alpha=0.0), "maep_lora_alpha must be > 0"),
    ]:
        with pytest.raises(ConfigError, match=match):
            build_config("digits", **{**lora, **bad})
    with pytest.raises(ConfigError, match="stage masked trains from scratch"):
        build_config("digits", method="maep", maep_init="x.pth")


def test_lora_state_maps_a_plain_state_onto_the_wrapped_layout():
    model = create_model("mae_vit_micro", img_size=16, patch_size=4, norm_pix_loss=False)
    plain = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, decoder_lora_targets(model), rank=2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # anything but the plain state
    mapped = lora_state(model, plain)
    assert set(mapped) == set(model.state_dict())
    model.load_state_dict(mapped)
    assert torch.equal(model.decoder_embed.base.weight, plain["decoder_embed.weight"])
    assert isinstance(model.decoder_pred, LoRALinear) and torch.equal(model.blocks[0].attn.qkv.weight,
                                                                       plain["blocks.0.attn.qkv.weight"])
