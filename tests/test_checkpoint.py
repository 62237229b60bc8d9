"""Checkpoints: MAE layout, atomic writes, safe loads (official argparse files too), clear errors."""

import argparse
import datetime

import pytest
import torch

from mimir_fast.errors import CheckpointError
from mimir_fast.models_mae import mae_vit_micro
from mimir_fast.train import checkpoint as ckpt_mod
from mimir_fast.train.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    load_model_state,
    newest_checkpoint,
    save_checkpoint,
)


def _state(value=1.0):
    return {"model": {"w": torch.full((3,), value)}, "optimizer": {}, "epoch": 0, "scaler": {}, "args": {"model": "x"}}


def test_round_trip_in_mae_layout(tmp_path):
    path = save_checkpoint(_state(), checkpoint_path(tmp_path, 7))
    assert path.name == "checkpoint-7.pth"
    loaded = load_checkpoint(path)
    assert set(loaded) == {"model", "optimizer", "epoch", "scaler", "args"}
    assert torch.equal(loaded["model"]["w"], torch.ones(3)) and loaded["args"] == {"model": "x"}


def test_a_failed_write_never_replaces_a_good_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(_state(1.0), checkpoint_path(tmp_path, 0))
    good = path.read_bytes()

    def half_write(obj, f):
        f.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.torch, "save", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(_state(2.0), path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-0.pth"]  # no temp file left behind


def test_official_checkpoints_with_argparse_namespace_load(tmp_path):
    path = tmp_path / "checkpoint-799.pth"
    args = argparse.Namespace(model="mae_vit_small", blr=1.5e-4, mask_ratio=0.75)
    torch.save({"model": {"w": torch.zeros(2)}, "optimizer": {}, "epoch": 799, "scaler": {}, "args": args}, path)
    loaded = load_checkpoint(path)
    assert loaded["args"] == {"model": "mae_vit_small", "blr": 1.5e-4, "mask_ratio": 0.75}


def test_other_python_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": datetime.date(2024, 1, 1)}, path)
    with pytest.raises(CheckpointError, match="datetime.date"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", None], ids=["empty", "text", "truncated"])
def test_corrupt_files_are_checkpoint_errors(tmp_path, content):
    path = tmp_path / "checkpoint-3.pth"
    if content is None:
        save_checkpoint(_state(), path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupt or not a torch checkpoint"):
        load_checkpoint(path)


def test_missing_file_and_missing_model_key(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pth")
    torch.save({"state_dict": {}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="no 'model' state_dict"):
        load_checkpoint(tmp_path / "x.pth")


def test_a_state_dict_that_does_not_fit_names_the_keys():
    model = mae_vit_micro(img_size=32, patch_size=4)
    sd = model.state_dict()
    sd.pop("decoder_pred.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["cls_token"] = torch.zeros(1, 1, 7)
    expected = r"missing: decoder_pred.bias; unexpected: extra.weight; wrong shape: cls_token"
    with pytest.raises(CheckpointError, match=expected):
        load_model_state(model, sd, "ck.pth")


def test_ddp_module_prefix_is_stripped():
    model = mae_vit_micro(img_size=32, patch_size=4)
    sd = {f"module.{k}": v + 1 for k, v in model.state_dict().items()}
    load_model_state(model, sd, "ck.pth")
    assert torch.equal(model.cls_token, sd["module.cls_token"])


def test_newest_checkpoint_is_by_epoch_number(tmp_path):
    assert newest_checkpoint(tmp_path) is None
    for e in (2, 10, 9):
        save_checkpoint(_state(), checkpoint_path(tmp_path, e))
    (tmp_path / "checkpoint-99.pth.bak").write_bytes(b"")
    assert newest_checkpoint(tmp_path).name == "checkpoint-10.pth"
