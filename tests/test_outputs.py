"""Output locations are checked before any work; eval never loses computed results; labels follow class names;
SIGTERM, interrupted progress bars and failed integrity checks each end with one clear line."""

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from mimir_fast.evaluate import run as eval_run
from mimir_fast.evaluate.config import EvalConfig
from mimir_fast.evaluate.data import eval_dataset, load_examples
from mimir_fast.models_vit import create_classifier
from mimir_fast.train.checkpoint import load_checkpoint, save_checkpoint
from mimir_fast.train.logger import Progress
from tests.test_cli import assert_one_line_error, run

REPO = Path(__file__).resolve().parents[1]
TINY = ["--data", "synthetic", "--synthetic_size", "16", "--batch_size", "8", "--input_size", "16", "--epochs", "1",
        "--method", "mae"]


def _classifier(path, classes=None, num_classes=10):
    torch.manual_seed(0)
    model = create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=num_classes)
    extra = {"classes": classes} if classes is not None else {}
    save_checkpoint({"model": model.state_dict(), "epoch": 0, "args": {"model": "vit_micro"}, **extra}, path)
    return path


def _images(folder, n, size=(16, 16)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (i * 30 % 255, 0, 0)).save(folder / f"{folder.name}{i}.png")


def test_unwritable_outputs_are_one_line_errors_before_any_work(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    cases = [
        (["pretrain", *TINY, "--output_dir", str(tmp_path / "file")], "--output_dir", "is a file, not a folder"),
        (["pretrain", *TINY, "--output_dir", str(tmp_path / "file" / "sub")], "--output_dir", "is not writable"),
        (["pretrain", *TINY, "--output_dir", str(tmp_path / "o"), "--log_dir", str(tmp_path / "file")],
         "--log_dir", "is a file"),
        (["eval", "--resume", str(_classifier(tmp_path / "c.pth")), "--output_dir", str(tmp_path / "file")],
         "--output_dir", "is a file"),
        (["export", "--resume", str(tmp_path / "c.pth"), "--output", str(tmp_path)], "--output", "is a folder"),
        (["export", "--resume", str(tmp_path / "c.pth"), "--output", str(tmp_path / "file" / "x.pth")],
         "the folder of --output", "is a file"),
    ]
    for argv, *needles in cases:
        code, out, err = run(argv, capsys)
        assert_one_line_error(code, err, *needles)
        assert "Epoch" not in out and "eps " not in out  # nothing was trained or attacked first
    assert not (tmp_path / "o" / "checkpoint-0.pth").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_a_one_line_error(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        code, _, err = run(["pretrain", *TINY, "--output_dir", str(locked / "run")], capsys)
    finally:
        locked.chmod(0o755)
    assert_one_line_error(code, err, "--output_dir", "not writable")


def test_eval_prints_its_table_and_keeps_the_results_when_writing_fails(tmp_path, capsys, monkeypatch):
    ckpt = _classifier(tmp_path / "c.pth")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(eval_run, "write_json", broken)
    code, out, err = run(["eval", "--resume", str(ckpt), "--n_ex", "5", "--attacks", "clean", "--eps_curve", "0",
                          "--output_dir", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    assert "clean" in out and "No space left on device" in err
    fallback = Path(err.split("the results are in ")[1].split()[0])
    assert json.loads(fallback.read_text())["n_examples"] == 5
    fallback.unlink()


def test_a_failed_integrity_check_exits_3_unless_allowed(tmp_path, capsys, monkeypatch):
    ckpt = _classifier(tmp_path / "c.pth")
    real = eval_run.run_checks
    monkeypatch.setattr(eval_run, "run_checks", lambda *a, **k: [*real(*a, **k), {
        "name": "monotone_in_eps", "status": "fail", "detail": "forced"}])
    argv = ["eval", "--resume", str(ckpt), "--n_ex", "4", "--attacks", "clean", "--eps_curve", "0",
            "--output_dir", str(tmp_path / "ev")]
    code, out, err = run(argv, capsys)
    assert code == 3 and err.count("\n") == 1 and "integrity check(s) failed: monotone_in_eps" in err
    assert (tmp_path / "ev" / "eval_results.json").is_file() and "clean" in out  # reported, then refused
    code, _, err = run([*argv, "--allow_failed_checks"], capsys)
    assert code == 0, err


def test_eval_labels_folders_by_the_checkpoints_class_names(tmp_path, capsys):
    for name in ("ant", "cat", "dog"):  # no "bee": the classifier's classes are ant, bee, cat, dog
        _images(tmp_path / "data" / "val" / name, 2)
    cfg = EvalConfig(resume="x.pth", data_path=str(tmp_path / "data"))
    dataset = eval_dataset(cfg, 16, ["ant", "bee", "cat", "dog"])
    _, labels = load_examples(dataset, list(range(len(dataset))), 16)
    assert labels.tolist() == [0, 0, 2, 2, 3, 3]
    assert "no images of 1 class the training data has: bee" in capsys.readouterr().out
    ckpt = _classifier(tmp_path / "c.pth", classes=["ant", "bee", "cat", "dog"], num_classes=4)
    code, out, err = run(["eval", "--resume", str(ckpt), "--data_path", str(tmp_path / "data"), "--attacks", "clean",
                          "--eps_curve", "0", "--output_dir", str(tmp_path / "ev"), "--allow_failed_checks"], capsys)
    assert code == 0, err
    assert "eval: 6 images, 4 classes" in out


def test_eval_refuses_unlabelled_images(tmp_path, capsys):
    _images(tmp_path / "flat", 3)
    code, _, err = run(["eval", "--resume", str(_classifier(tmp_path / "c.pth")), "--data_path", str(tmp_path / "flat"),
                        "--output_dir", str(tmp_path / "ev")], capsys)
    assert_one_line_error(code, err, "without class folders: eval needs labelled images")


@pytest.mark.slow
def test_finetune_stores_the_class_names_and_validates_by_name(tmp_path, capsys):
    for name in ("ant", "bee", "cat"):
        _images(tmp_path / "data" / "train" / name, 6)
    for name in ("ant", "cat"):
        _images(tmp_path / "data" / "val" / name, 2)
    code, out, err = run(["finetune", "--data_path", str(tmp_path / "data"), "--num_classes", "3", "--batch_size", "6",
                          "--epochs", "1", "--steps", "1", "--output_dir", str(tmp_path / "ft")], capsys)
    assert code == 0, err
    assert "train: 18 images, 3 classes" in out and "val: 4 images, 3 classes" in out and "bee" in out
    assert load_checkpoint(tmp_path / "ft" / "checkpoint-0.pth")["classes"] == ["ant", "bee", "cat"]
    _images(tmp_path / "one" / "train" / "ant", 6)
    code, _, err = run(["finetune", "--data_path", str(tmp_path / "one"), "--batch_size", "6", "--epochs", "1",
                        "--output_dir", str(tmp_path / "ft1")], capsys)
    assert_one_line_error(code, err, "the training data has 1 class, but --num_classes is 10")


def test_sigterm_ends_a_run_with_one_line(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "mimir_fast", "pretrain", "--data", "synthetic", "--synthetic_size", "4096",
            "--batch_size", "8", "--input_size", "16", "--print_freq", "1", "--method", "mae", "--no-auto_resume",
            "--output_dir", str(tmp_path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    for line in proc.stdout:  # wait until it trains
        if line.startswith("Epoch"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143
    assert err.strip().splitlines()[-1] == ("mimir-fast: terminated by SIGTERM (checkpoints already written are "
                                            "intact)")
    assert "Traceback" not in err


def test_an_error_starts_on_a_new_line_after_a_progress_bar():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    progress = Progress(0, 1, 10, 8, stream=stream)
    progress.update(3, {"loss": 1.0}, 1e-3)
    assert stream.getvalue().startswith("\rEpoch [1/1]") and not stream.getvalue().endswith("\n")
    Progress.end_line()
    assert stream.getvalue().endswith("\n")
    Progress.end_line()  # nothing open: nothing written
    assert stream.getvalue().count("\n") == 1
