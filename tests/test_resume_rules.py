"""Resuming never silently continues a different run, never rewrites the record of a finished one, and takes a
folder for --resume; log.txt keeps one row per epoch."""

import json

import pytest

from mimir_fast.errors import ConfigError
from mimir_fast.methods import build_config, run_pretrain
from mimir_fast.train.checkpoint import load_checkpoint
from mimir_fast.train.runner import changed_settings
from tests.test_cli import assert_one_line_error, run

TINY = dict(data="synthetic", synthetic_size=16, batch_size=8, input_size=16, patch_size=4, print_freq=1,
            warmup_epochs=0.0)


def _cfg(out, **kw):
    return build_config("digits", output_dir=str(out), **{**TINY, **kw})


def test_auto_resume_refuses_a_run_with_other_settings(tmp_path, capsys):
    run_pretrain(_cfg(tmp_path, method="mae", epochs=1))
    record = (tmp_path / "config.json").read_text()
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(method 'mae' -> 'mimir'.*new "
                                          r"--output_dir.*--no-auto_resume.*--resume"):
        run_pretrain(_cfg(tmp_path, epochs=2))
    with pytest.raises(ConfigError, match=r"mask_ratio 0.75 -> 0.5"):
        run_pretrain(_cfg(tmp_path, method="mae", epochs=2, mask_ratio=0.5))
    assert (tmp_path / "config.json").read_text() == record  # the record of checkpoint-0 is untouched
    assert load_checkpoint(tmp_path / "checkpoint-0.pth")["args"]["method"] == "mae"
    argv = ["pretrain", "--data", "synthetic", "--synthetic_size", "16", "--batch_size", "8", "--input_size", "16",
            "--epochs", "2", "--output_dir", str(tmp_path)]
    code, _, err = run(argv, capsys)
    assert_one_line_error(code, err, "holds a run with other settings", "method 'mae' -> 'mimir'")


def test_settings_a_resume_may_change_are_listed_once(tmp_path):
    run_pretrain(_cfg(tmp_path, method="mae", epochs=1))
    summary = run_pretrain(_cfg(tmp_path, method="mae", epochs=2, print_freq=3, num_workers=0, save_freq=5))
    assert summary.epochs_trained == 1  # epochs, print_freq, save_freq may change: it went on
    saved = load_checkpoint(tmp_path / "checkpoint-1.pth")["args"]
    assert changed_settings(saved, {**saved, "epochs": 9, "compile": "on", "device": "cpu"}) == []
    assert changed_settings(saved, {**saved, "seed": 1, "blr": 1.0}) == [f"blr {saved['blr']!r} -> 1.0", "seed 0 -> 1"]


def test_explicit_resume_may_change_settings_and_records_them_beside(tmp_path, capsys):
    run_pretrain(_cfg(tmp_path, method="mae", epochs=1))
    record = (tmp_path / "config.json").read_text()
    summary = run_pretrain(_cfg(tmp_path, method="mae", epochs=2, seed=5, resume=str(tmp_path / "checkpoint-0.pth")))
    assert summary.epochs_trained == 1 and "with changed settings: seed 0 -> 5" in capsys.readouterr().out
    assert (tmp_path / "config.json").read_text() == record
    assert json.loads((tmp_path / "config-resumed-1.json").read_text())["seed"] == 5


def test_resume_takes_a_folder(tmp_path, capsys):
    run_pretrain(_cfg(tmp_path / "a", method="mae", epochs=2, save_freq=1))
    summary = run_pretrain(_cfg(tmp_path / "b", method="mae", epochs=3, resume=str(tmp_path / "a")))
    assert summary.epochs_trained == 1 and f"resumed from {tmp_path / 'a' / 'checkpoint-1.pth'}" in (
        capsys.readouterr().out)
    (tmp_path / "empty").mkdir()
    code, _, err = run(["pretrain", "--resume", str(tmp_path / "empty"), "--output_dir", str(tmp_path / "c")], capsys)
    assert_one_line_error(code, err, "is a folder with no checkpoint-*.pth in it")


def test_log_has_one_row_per_epoch_after_resuming_an_older_checkpoint(tmp_path):
    run_pretrain(_cfg(tmp_path, method="mae", epochs=3, save_freq=1))
    run_pretrain(_cfg(tmp_path, method="mae", epochs=3, resume=str(tmp_path / "checkpoint-0.pth")))
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "log.txt").read_text().splitlines()]
    assert epochs == [0, 1, 2]


def test_every_run_reports_the_path_each_op_took(tmp_path, capsys):
    run_pretrain(_cfg(tmp_path, method="mae", epochs=2))
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("kernels: "))
    assert "patch_embed_visible reference (no CUDA)" in line and "masked_mse_loss reference (no CUDA)" in line
    rows = [json.loads(ln) for ln in (tmp_path / "log.txt").read_text().splitlines()]
    assert rows[0]["kernels"]["ops"]["patch_embed_visible"][0]["path"] == "reference" and "kernels" not in rows[1]
    assert json.loads((tmp_path / "config.json").read_text())["kernels"] == rows[0]["kernels"]
