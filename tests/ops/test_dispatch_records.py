"""The dispatch-record cache file: round trip, merge, atomic replacement, a corrupt file."""

import json
import os
from types import SimpleNamespace

import pytest
import torch

from mimir_fast.ops import _dispatch, records

from .test_dispatch import FAKE_GPU, _ask, fake_record


def test_default_path_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv(records.PATH_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert records.cache_path() == tmp_path / "xdg" / "mimir_fast" / "dispatch.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert records.cache_path() == tmp_path / "home" / ".cache" / "mimir_fast" / "dispatch.json"
    monkeypatch.setenv(records.PATH_ENV, str(tmp_path / "mine.json"))
    assert records.cache_path() == tmp_path / "mine.json"


def test_round_trip_and_merge(tmp_path):
    path = records.cache_path()
    assert records.load() == {}  # no file yet
    a = fake_record()
    b = fake_record(dtype="float16", kernel_ms=5.0)
    assert records.save({a["key"]: a}) == path
    records.save({b["key"]: b})  # a second write keeps the first one's key
    assert records.load() == {a["key"]: a, b["key"]: b}
    doc = json.loads(path.read_text())
    assert doc["schema"] == records.SCHEMA
    assert [p.name for p in path.parent.iterdir()] == ["dispatch.json"]  # no temporary file left behind
    assert a["key"].startswith(f"{FAKE_GPU}|triton ") and a["key"].endswith("|n4-c3-px16-p4-d40-keep4|float32")


def test_decisions_are_loaded_once_per_process(monkeypatch):
    rec = fake_record()
    records.save({rec["key"]: rec})
    _dispatch.ensure_loaded()
    key = (FAKE_GPU, "patch_embed_visible", "n4-c3-px16-p4-d40-keep4", "float32")
    assert _dispatch._DECISIONS[key] == ("triton", "validated, 2.00x")
    monkeypatch.setattr(records, "load", lambda: pytest.fail("read the file again"))
    _dispatch.ensure_loaded()
    _dispatch.ensure_loaded(compiled=False)


@pytest.mark.parametrize("text", ["{not json", '{"schema": "other/1", "records": {}}', "[]"])
def test_a_corrupt_cache_is_ignored_with_a_warning_and_kept_aside(monkeypatch, text):
    path = records.cache_path()
    path.write_text(text)
    with pytest.warns(RuntimeWarning, match="dispatch cache .* ignored"):
        assert records.load() == {}
    monkeypatch.setitem(_dispatch._IDENTITY, 0, FAKE_GPU)
    with pytest.warns(RuntimeWarning, match="ignored"):  # the run goes on, on the references
        assert not _ask([SimpleNamespace(device=torch.device("cuda", 0))])
    assert path.read_text() == text  # reading never rewrites it
    rec = fake_record()
    with pytest.warns(RuntimeWarning, match="moved to .*dispatch.json.corrupt"):
        records.save({rec["key"]: rec})
    assert path.with_name("dispatch.json.corrupt").read_text() == text  # nothing the user had is lost
    assert records.load() == {rec["key"]: rec}


def test_a_failed_write_leaves_the_old_file(monkeypatch):
    a = fake_record()
    records.save({a["key"]: a})
    before = records.cache_path().read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    b = fake_record(dtype="float16")
    with pytest.raises(OSError, match="disk full"):
        records.save({b["key"]: b})
    assert records.cache_path().read_text() == before
    assert [p.name for p in records.cache_path().parent.iterdir()] == ["dispatch.json"]


def test_a_malformed_record_is_skipped(monkeypatch):
    monkeypatch.setitem(_dispatch._IDENTITY, 0, FAKE_GPU)
    good, bad = fake_record(), fake_record(dtype="float16")
    bad["candidates"]["triton"]["ms"] = "fast"  # edited by hand
    records.save({good["key"]: good, bad["key"]: bad})
    _dispatch.ensure_loaded()
    assert _ask([SimpleNamespace(device=torch.device("cuda", 0))])
    assert (FAKE_GPU, "patch_embed_visible", "n4-c3-px16-p4-d40-keep4", "float16") not in _dispatch._DECISIONS
