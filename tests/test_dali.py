"""The DALI loader (CPU pipeline), its agreement with the torchvision path, resume, sharding, backend choice and
its one-line errors. Tests that run a pipeline skip when ``nvidia.dali`` is not importable."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2

from mimir_fast.data import build_train_dataset, train_loader
from mimir_fast.data.backend import resolve_backend, resolve_dali_device
from mimir_fast.data.dali import DaliLoader, DaliSpec, build_pipeline, epoch_order
from mimir_fast.data.transforms import pretrain_transform
from mimir_fast.errors import ConfigError, DataError
from mimir_fast.train.config import PretrainConfig

N_IMAGES = 24


@pytest.fixture
def dali():
    return pytest.importorskip("nvidia.dali")


def _image(i: int, h: int, w: int) -> np.ndarray:
    """Smooth, left-right and channel asymmetric: a flip or a channel swap changes it a lot."""
    y, x = np.mgrid[0:h, 0:w]
    r = 40 + 180 * x / w
    g = 60 + 150 * y / h
    b = 50 + 100 * ((x + y + 7 * i) % 37) / 37
    return np.stack([r, g, b], -1).astype(np.uint8)


@pytest.fixture
def folder(tmp_path):
    """An ImageFolder of 24 JPEGs in 2 classes, 40–62 px on a side."""
    root = tmp_path / "train"
    files, labels = [], []
    for i in range(N_IMAGES):
        label = i % 2
        path = root / f"c{label}" / f"{i:02d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(i, 40 + i, 62 - i // 2)).save(path, quality=95)
        files.append(str(path))
        labels.append(label)
    return root, files, labels


def _epoch(loader):
    return [(x.clone(), y.clone()) for x, y in loader]


def test_cpu_pipeline_shapes_dtype_range(dali, folder):
    _, files, labels = folder
    for min_scale, dtype in ((0.2, torch.float32), (None, torch.bfloat16)):
        loader = DaliLoader(files, labels, DaliSpec(input_size=32, batch_size=5, min_crop_scale=min_scale,
                                                    out_dtype=dtype), seed=1)
        batches = _epoch(loader)
        assert len(loader) == len(batches) == N_IMAGES // 5
        for x, y in batches:
            assert x.shape == (5, 3, 32, 32) and x.dtype == dtype and x.device.type == "cpu"
            assert y.shape == (5,) and y.dtype == torch.int64 and set(y.tolist()) <= {0, 1}
            assert 0 <= x.min() and x.max() <= 1 and x.float().std() > 0.05  # [0, 1], not [0, 255] or blank
        assert loader.state_dict() == {"seed": 1, "position": N_IMAGES // 5}


def test_ranks_read_disjoint_equal_shards(dali, folder):
    _, files, _ = folder
    spec = DaliSpec(input_size=16, batch_size=4, augment=False)
    n = N_IMAGES - 1  # 23 files over 2 ranks: cut to 22, 11 each, 2 batches of 4 each
    seen = []
    for rank in range(2):
        loader = DaliLoader(files[:n], list(range(n)), spec, seed=5, rank=rank, world_size=2)
        seen.append([i for _, y in loader for i in y.tolist()])
        assert len(loader) == 2 and len(seen[-1]) == 8 and len(set(seen[-1])) == 8
    assert not set(seen[0]) & set(seen[1])
    order = epoch_order(n, 5, 2)  # each rank reads its contiguous half of the epoch's permutation, in order
    assert seen[0] == order[:8] and seen[1] == order[11:19]
    assert epoch_order(n, 6, 2) != order  # another epoch, another order


def test_dali_and_torchvision_agree_up_to_resampling(dali, folder):
    """The deterministic path (whole image, bicubic antialiased resize to S × S) against torchvision's.

    Measured (DALI 2.4.0 CPU decoder, PIL 11): mean |difference| at most 0.18/255 per image, from the JPEG
    decoders' rounding and the two antialiased bicubic filters. The bound, 0.4/255, fails for DALI's
    bilinear without antialiasing (0.58/255) or nearest neighbour (1.7/255), and a flip or channel swap is
    far above it (checked below)."""
    _, files, _ = folder
    size = 24
    loader = DaliLoader(files, list(range(N_IMAGES)), DaliSpec(input_size=size, batch_size=4, augment=False), seed=0)
    resize = v2.Compose([v2.ToImage(), v2.Resize((size, size), interpolation=InterpolationMode.BICUBIC,
                                                  antialias=True), v2.ToDtype(torch.float32, scale=True)])
    errors, flipped, swapped = [], [], []
    for x, idx in loader:
        for img, i in zip(x, idx.tolist()):
            ref = resize(Image.open(files[i]).convert("RGB")).clamp(0, 1)
            errors.append((img - ref).abs().mean().item())
            flipped.append((img.flip(-1) - ref).abs().mean().item())
            swapped.append((img.flip(0) - ref).abs().mean().item())
    assert len(errors) == N_IMAGES
    assert max(errors) < 0.4 / 255, max(errors)
    assert min(flipped) > 10 / 255 and min(swapped) > 10 / 255


def test_resume_skip_gives_the_uninterrupted_next_batch(dali, folder):
    _, files, labels = folder
    spec = DaliSpec(input_size=32, batch_size=4)
    full = _epoch(DaliLoader(files, labels, spec, seed=9))
    resumed = DaliLoader(files, labels, spec, seed=9, skip=2)
    assert len(resumed) == len(full) - 2
    rest = _epoch(resumed)
    assert len(rest) == len(full) - 2 and resumed.position == len(full)
    for (x, y), (x_ref, y_ref) in zip(rest, full[2:]):
        assert torch.equal(x, x_ref) and torch.equal(y, y_ref)
    other = _epoch(DaliLoader(files, labels, spec, seed=10))  # the seed matters: crops differ
    assert not torch.equal(other[0][0], full[0][0])


def test_small_inputs_get_a_padded_random_crop_and_flips(dali, folder):
    """RandomCrop(padding=4): a zero border shows in most images (offset ≠ 4); flips show as mirrored pixels."""
    _, files, labels = folder
    x = torch.cat([b for b, _ in DaliLoader(files, labels, DaliSpec(input_size=16, batch_size=8,
                                                                     min_crop_scale=None), seed=3)])
    border = torch.stack([x[:, :, 0].amax((1, 2)), x[:, :, -1].amax((1, 2)), x[:, :, :, 0].amax((1, 2)),
                          x[:, :, :, -1].amax((1, 2))], 1)
    assert (border == 0).any(1).float().mean() > 0.5
    red_rises = (x[:, 0, 8, 12] > x[:, 0, 8, 3]).float().mean()  # red rises left to right unless flipped
    assert 0.15 < red_rises < 0.85


def test_an_image_that_fails_to_decode_is_a_data_error(dali, folder):
    _, files, labels = folder
    bad = folder[0] / "c0" / "broken.jpg"
    bad.write_bytes(b"not a jpeg" * 20)
    loader = DaliLoader([*files[:7], str(bad)], [0] * 8, DaliSpec(input_size=16, batch_size=4, augment=False), seed=0)
    with pytest.raises(DataError, match=r"could not read or decode a batch \(nvImageCodec failure.*corrupt"):
        _epoch(loader)


def _cfg(tmp_path, **kw):
    return PretrainConfig(output_dir=str(tmp_path / "out"), **kw)


def test_train_loader_uses_dali_on_request(dali, folder, tmp_path):
    root, _, _ = folder
    cfg = _cfg(tmp_path, data_path=str(root), data_backend="dali", batch_size=8, input_size=16)
    dataset = build_train_dataset(cfg, pretrain_transform(cfg.input_size), world_size=1)
    loader = train_loader(cfg, dataset, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert isinstance(loader, DaliLoader) and loader.spec.min_crop_scale is None  # 16 px: the padded crop
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64


def test_backend_choice(tmp_path, monkeypatch, folder):
    root = str(folder[0])
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_backend(_cfg(tmp_path), cpu) == "torch"  # digits
    assert resolve_backend(_cfg(tmp_path, data="synthetic"), cpu) == "synthetic"
    assert resolve_backend(_cfg(tmp_path, data_path=root), cpu) == "torch"  # no CUDA: the DataLoader
    assert resolve_backend(_cfg(tmp_path, data_path=root, data_backend="synthetic"), cpu) == "synthetic"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("mimir_fast.data.backend.dali_available", lambda: True)
    assert resolve_backend(_cfg(tmp_path, data_path=root), cuda) == "dali"
    assert resolve_backend(_cfg(tmp_path), cuda) == "torch"  # digits are not a folder
    assert resolve_dali_device(_cfg(tmp_path, data_path=root), cuda) == "gpu"
    assert resolve_dali_device(_cfg(tmp_path, data_path=root, dali_device="cpu"), cuda) == "cpu"
    monkeypatch.setattr("mimir_fast.data.backend.dali_available", lambda: False)
    assert resolve_backend(_cfg(tmp_path, data_path=root), cuda) == "torch"


def test_errors(tmp_path, monkeypatch, folder):
    root = str(folder[0])
    with pytest.raises(ConfigError, match="reads image folders.*'digits'"):
        resolve_backend(_cfg(tmp_path, data_backend="dali"), torch.device("cpu"))
    with pytest.raises(ConfigError, match="unknown data_backend 'nvdali'"):
        _cfg(tmp_path, data_backend="nvdali")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="'mixed' device.*no CUDA"):
            resolve_backend(_cfg(tmp_path, data_path=root, data_backend="dali", dali_device="gpu"),
                            torch.device("cpu"))
        with pytest.raises(ConfigError, match="'mixed' device.*no CUDA"):
            build_pipeline(folder[1], folder[2], DaliSpec(input_size=16, batch_size=4, device="gpu"), seed=0)
    monkeypatch.setitem(sys.modules, "nvidia.dali", None)  # as if not installed
    with pytest.raises(ConfigError, match="needs NVIDIA DALI, which is not installed.*pip install"):
        resolve_backend(_cfg(tmp_path, data_path=root, data_backend="dali", dali_device="cpu"), torch.device("cpu"))


def test_cli_reports_dali_errors_on_one_line(capsys, tmp_path):
    from mimir_fast.cli import main

    code = main(["pretrain", "--data_backend", "dali", "--output_dir", str(tmp_path)])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err and "reads image folders" in lines[0], err


def test_pretraining_runs_on_the_dali_cpu_backend(dali, folder, tmp_path):
    from mimir_fast.methods import run_pretrain

    root, _, _ = folder
    cfg = _cfg(tmp_path, data_path=str(root), data_backend="dali", dali_device="cpu", batch_size=8, input_size=16,
               epochs=1, print_freq=1)
    summary = run_pretrain(cfg)
    assert summary.epochs_trained == 1 and summary.final_loss is not None and np.isfinite(summary.final_loss)


def test_loader_benchmark_writes_its_json(tmp_path):
    import json

    from bench.loader import main
    from mimir_fast.data.dali import dali_available

    backends = ["torch", "dali"] if dali_available() else ["torch"]
    main(["--generate", "24", "--image_px", "40", "30", "--input_size", "16", "--batch_size", "4", "--batches", "2",
          "--warmup", "1", "--num_workers", "0", "--step_img_per_sec", "100", "--backends", *backends,
          "--device", "cpu", "--out", str(tmp_path)])
    (path,) = tmp_path.glob("loader_*.json")
    records = json.loads(path.read_text())["results"]
    assert [r["backend"] for r in records] == backends
    for r in records:
        assert r["img_per_sec"] > 0 and r["batches_timed"] == 2 and r["headroom"] == r["img_per_sec"] / 100
        assert r["dtype"] == "float32" and r["batch_device"] == "cpu"
