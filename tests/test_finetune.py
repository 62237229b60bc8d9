"""Fine-tuning: the loss falls, the objectives, and the checkpoint rules (pretrain vs classifier)."""

import json
import shutil

import pytest
import torch

from mimir_fast.errors import CheckpointError, ConfigError, DataError
from mimir_fast.methods import build_config, build_finetune_config, run_finetune, run_pretrain
from mimir_fast.models_mae import create_model
from mimir_fast.models_vit import create_classifier
from mimir_fast.train.checkpoint import load_checkpoint, save_checkpoint
from mimir_fast.train.config import FinetuneConfig
from mimir_fast.train.presets import FINETUNE_PRESETS
from tests.helpers import finetune_losses


def _cfg(out, **kw):
    return build_finetune_config("digits", input_size=16, output_dir=str(out), **kw)


@pytest.mark.slow
def test_finetune_from_a_mimir_checkpoint_loss_falls_and_resumes_exactly(tmp_path):
    pre = run_pretrain(build_config("digits", input_size=16, epochs=1, output_dir=str(tmp_path / "pre")))
    full = run_finetune(_cfg(tmp_path / "ft", epochs=3, save_freq=1, finetune=str(pre.checkpoint)))
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.txt").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    assert all(0 <= r["test_acc1"] <= 100 for r in log) and "train_acc" in log[0] and "train_train_acc" not in log[0]
    assert full.line().startswith("done: final loss") and "val acc" in full.line()
    ckpt = load_checkpoint(full.checkpoint)
    assert ckpt["args"]["task"] == "finetune" and ckpt["args"]["finetune"] == str(pre.checkpoint)
    (tmp_path / "again").mkdir()
    shutil.copy(tmp_path / "ft" / "checkpoint-1.pth", tmp_path / "again")
    run_finetune(_cfg(tmp_path / "again", epochs=3, save_freq=1, finetune=str(pre.checkpoint)))
    resumed = load_checkpoint(tmp_path / "again" / "checkpoint-2.pth")
    for k, v in ckpt["model"].items():
        assert torch.equal(v, resumed["model"][k]), k


@pytest.mark.parametrize("method", ["pgd", "trades", "clean"])
def test_objectives(method):
    model = create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=10)
    imgs, labels = torch.rand(6, 3, 16, 16), torch.randint(0, 10, (6,))
    cfg = FinetuneConfig(input_size=16, method=method, steps=2)
    out = finetune_losses(model, imgs, labels, cfg)
    assert out["loss"].requires_grad and torch.isfinite(out["loss"]) and 0 <= out["acc"] <= 100
    out["loss"].backward()
    assert model.head.weight.grad is not None
    if method == "clean":
        expected = torch.nn.functional.cross_entropy(model(imgs), labels, label_smoothing=0.1)
        torch.testing.assert_close(out["loss"], expected)


def test_checkpoint_kinds_are_not_confused(tmp_path):
    mae = create_model("mae_vit_micro", img_size=16, patch_size=4)
    save_checkpoint({"model": mae.state_dict(), "epoch": 0, "args": {"model": "mae_vit_micro"}}, tmp_path / "pre.pth")
    clf = create_classifier("vit_micro", img_size=16, patch_size=4, num_classes=10)
    save_checkpoint({"model": clf.state_dict(), "epoch": 0, "args": {"model": "vit_micro"}}, tmp_path / "clf.pth")
    with pytest.raises(CheckpointError, match="pretraining checkpoint, not a classifier: pass it with --finetune"):
        run_finetune(_cfg(tmp_path / "a", resume=str(tmp_path / "pre.pth")))
    with pytest.raises(CheckpointError, match="is a classifier checkpoint, not a pretraining one"):
        run_finetune(_cfg(tmp_path / "b", finetune=str(tmp_path / "clf.pth")))
    with pytest.raises(CheckpointError, match="is a classifier checkpoint; pretraining resumes"):
        run_pretrain(build_config("digits", input_size=16, output_dir=str(tmp_path / "c"),
                                  resume=str(tmp_path / "clf.pth")))
    with pytest.raises(CheckpointError, match="classifies 10 classes, but --num_classes is 7"):
        run_finetune(_cfg(tmp_path / "d", resume=str(tmp_path / "clf.pth"), num_classes=7, data="synthetic"))
    with pytest.raises(CheckpointError, match="pretrained with 16 patches"):
        run_finetune(build_finetune_config("digits", input_size=32, output_dir=str(tmp_path / "e"),
                                           finetune=str(tmp_path / "pre.pth")))


def test_class_count_must_match_the_data(tmp_path):
    with pytest.raises(DataError, match="has 10 classes, but --num_classes is 5"):
        run_finetune(_cfg(tmp_path, num_classes=5))


def test_finetune_presets_follow_mimir():
    c10 = build_finetune_config("cifar10_vit_s")
    assert (c10.steps, c10.eps, c10.alpha, c10.epochs, c10.warmup_epochs, c10.blr) == (10, 8.0, 2.0, 50, 5, 0.05)
    assert (c10.layer_decay, c10.drop_path, c10.smoothing, c10.head_init_std) == (0.65, 0.1, 0.1, 2e-2)
    inet = build_finetune_config("imagenet_vit_b")
    assert (inet.steps, inet.eps, inet.alpha, inet.num_classes, inet.head_init_std) == (1, 4.0, 5.0, 1000, 2e-5)
    assert set(FINETUNE_PRESETS) >= {"digits", "cifar10_vit_s", "imagenet_vit_b"}
    with pytest.raises(ConfigError, match="unknown method 'madry'"):
        build_finetune_config("digits", method="madry")
    with pytest.raises(ConfigError, match="eps must be >= 0"):
        build_finetune_config("digits", eps=-1.0)


def test_demo_table_lists_each_row_with_its_checks():
    from mimir_fast.demo import DemoConfig, results_table

    rows = [{"start": "MIMIR pretraining", "accuracy": {"clean": 41.5, "pgd20": 20.0, "aa": 16.0}, "pretrain_s": 90.2,
             "finetune_s": 40.0, "eval_s": 70.0, "checks_passed": 7, "checks_total": 7, "checks_failed": []},
            {"start": "scratch", "accuracy": {"clean": 12.0, "pgd20": 9.0, "aa": 8.5}, "pretrain_s": 0.0,
             "finetune_s": 40.0, "eval_s": 20.0, "checks_passed": 6, "checks_total": 7,
             "checks_failed": ["monotone_in_eps"]}]
    text = results_table(rows, DemoConfig())
    lines = text.splitlines()
    assert lines[0] == ("| start | clean (%) | PGD-20 (%) | AutoAttack (%) | pretrain (s) | fine-tune (s) | eval (s) "
                        "| total (s) | checks |")
    assert lines[2] == "| MIMIR pretraining | 41.5 | 20.0 | 16.0 | 90 | 40 | 70 | 200 | 7/7 pass |"
    assert "6/7 pass (failed: monotone_in_eps)" in lines[3] and "first 200 images" in text
