"""The mimir-fast command: flags, presets, and one-line errors with exit code 2 and no traceback."""

import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from PIL import Image

from mimir_fast.cli import build_parser, main
from mimir_fast.configs import field_docs
from mimir_fast.methods import build_config
from mimir_fast.methods.mimir import MimirOptions
from mimir_fast.models_mae import mae_vit_micro
from mimir_fast.train.checkpoint import save_checkpoint
from mimir_fast.train.presets import PRESETS


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as e:  # argparse usage errors
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code, err, *needles):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err and "error:" in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


def _images(folder, n, corrupt=0):
    folder.mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(folder / f"{i}.png")
    for i in range(corrupt):
        (folder / f"broken{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["--model", "vit_nope"], ["unknown model 'vit_nope'"]),
        (["--preset", "nope"], ["unknown preset 'nope'", "digits"]),
        (["--mask_ratio", "1.0"], ["mask_ratio must be in [0, 1)"]),
        (["--mask_ratio", "-0.1"], ["mask_ratio must be in [0, 1)"]),
        (["--eps", "-1"], ["eps must be >= 0"]),
        (["--batch_size", "1"], ["batch_size must be >= 2 when the HSIC penalty is on"]),
        (["--method", "pgd"], ["unknown method 'pgd'"]),
        (["--input_size", "30", "--patch_size", "4"], ["not a multiple of patch_size"]),
        (["--epochs", "abc"], ["invalid int value"]),
        (["--no_such_flag", "1"], ["unrecognized arguments"]),
    ],
)
def test_bad_values_are_one_line_errors(argv, needles, capsys, tmp_path):
    code, _, err = run(["pretrain", "--output_dir", str(tmp_path), *argv], capsys)
    assert_one_line_error(code, err, *needles)


def test_batch_of_one_is_fine_without_hsic(tmp_path):
    assert build_config("digits", batch_size=1, method="mae").batch_size == 1
    assert build_config("digits", batch_size=1, mi_xpl=0.0).batch_size == 1


def test_missing_and_empty_data_paths(capsys, tmp_path):
    code, _, err = run(["pretrain", "--data_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "does not exist")
    (tmp_path / "empty").mkdir()
    code, _, err = run(["pretrain", "--data_path", str(tmp_path / "empty"), "--output_dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "no images found")


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_fails_to_decode(capsys, tmp_path, workers):
    data = _images(tmp_path / "imgs", 5, corrupt=1)
    code, _, err = run(["pretrain", "--data_path", str(data), "--batch_size", "6", "--num_workers", str(workers),
                        "--input_size", "16", "--output_dir", str(tmp_path / "out")], capsys)
    assert_one_line_error(code, err, "cannot decode image", "broken0.png")


def test_corrupt_and_incompatible_checkpoints(capsys, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"garbage")
    code, _, err = run(["pretrain", "--resume", str(bad), "--output_dir", str(tmp_path / "a")], capsys)
    assert_one_line_error(code, err, "corrupt or not a torch checkpoint", "bad.pth")

    other = mae_vit_micro(img_size=32, patch_size=4)  # 64 patches: the 16 px default has 16
    save_checkpoint({"model": other.state_dict(), "epoch": 0}, tmp_path / "other.pth")
    code, _, err = run(["pretrain", "--resume", str(tmp_path / "other.pth"), "--output_dir", str(tmp_path / "b")],
                       capsys)
    assert_one_line_error(code, err, "does not fit the model", "wrong shape: pos_embed")

    save_checkpoint({"model": other.state_dict(), "epoch": 0, "args": {"model": "mae_vit_ti"}}, tmp_path / "ti.pth")
    code, _, err = run(["pretrain", "--resume", str(tmp_path / "ti.pth"), "--output_dir", str(tmp_path / "c")], capsys)
    assert_one_line_error(code, err, "trained with model 'mae_vit_ti'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cuda_requested_without_a_gpu(capsys, tmp_path):
    code, _, err = run(["pretrain", "--device", "cuda", "--output_dir", str(tmp_path)], capsys)
    assert_one_line_error(code, err, "no CUDA device is available")


@pytest.mark.parametrize("command,config_path", [
    ("pretrain", "mimir_fast.train.config:PretrainConfig"),
    ("finetune", "mimir_fast.train.config:FinetuneConfig"),
    ("eval", "mimir_fast.evaluate.config:EvalConfig"),
    ("export", "mimir_fast.export:ExportConfig"),
    ("demo", "mimir_fast.demo:DemoConfig"),
])
def test_every_config_field_is_a_documented_flag(command, config_path):
    import importlib

    module, name = config_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    docs = field_docs(cls)
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    flags = {a.dest for a in sub._actions if a.dest != "help"}
    for field in cls.__dataclass_fields__:
        if field != "options":  # a method's own flags: tests/test_methods.py
            assert field in flags and docs.get(field), (command, field)


def test_flag_types_parse():
    args = build_parser().parse_args(["pretrain", "--eps", "4", "--norm_pix_loss", "--no-auto_resume", "--lr", "1e-3"])
    assert (args.eps, args.norm_pix_loss, args.auto_resume, args.lr) == (4.0, True, False, 1e-3)
    args = build_parser().parse_args(["eval", "--resume", "x", "--n_ex", "5"])
    assert (args.resume, args.n_ex) == ("x", 5)


def test_no_arguments_means_the_digits_default():
    args = build_parser().parse_args(["pretrain"])
    assert {k: v for k, v in vars(args).items() if k != "command"} == {}
    cfg = build_config()
    assert cfg == replace(PRESETS["digits"](), options=MimirOptions()) and cfg.data_kind == "digits"
    assert cfg.method == "mimir"
    assert (cfg.eps, cfg.alpha, cfg.steps, cfg.options.mi_xpl, cfg.options.hsic_sigma) == (8.0, 10.0, 1, 1e-5, 5.0)


def test_presets_follow_the_mimir_recipes():
    for name in PRESETS:
        cfg = build_config(name)
        assert cfg.norm_pix_loss and cfg.method == "mimir" and cfg.mask_ratio == 0.75
    c10 = build_config("cifar10_vit_s")
    assert (c10.model, c10.input_size, c10.patch_size, c10.batch_size) == ("mae_vit_small", 32, 2, 128)
    assert (c10.epochs, c10.warmup_epochs, c10.blr, c10.save_freq) == (800, 40, 1.5e-4, 20)
    inet = build_config("imagenet_vit_b")
    assert (inet.model, inet.input_size, inet.patch_size, inet.batch_size) == ("mae_vit_base", 224, 16, 512)
    assert build_config("cifar10_vit_t", blr=1e-3).blr == 1e-3  # flags override the preset


def test_console_script_exit_code_and_stderr(tmp_path):
    """The installed entry point, in a fresh process: real exit code, one stderr line, no traceback."""
    data = _images(tmp_path / "imgs", 3, corrupt=1)
    proc = subprocess.run(
        [sys.executable, "-m", "mimir_fast", "pretrain", "--data_path", str(data), "--batch_size", "4",
         "--num_workers", "2", "--input_size", "16", "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("mimir-fast: error: cannot decode image") and "broken0.png" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "mimir_fast", "pretrain", "--preset", "x"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "mimir-fast: error: unknown preset 'x'; choose one of: " + ", ".join(PRESETS)
    )
