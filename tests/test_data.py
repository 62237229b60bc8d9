"""Data: the embedded digits, image folders, MIMIR's transforms, deterministic loaders."""

import pytest
import torch
from PIL import Image

from mimir_fast.data import build_train_dataset, digits_split, train_loader, visual_batch
from mimir_fast.data.folder import ImageFiles, scan_images, split_root
from mimir_fast.data.transforms import eval_transform, pretrain_transform
from mimir_fast.errors import DataError
from mimir_fast.methods import build_config


def test_digits_are_a_fixed_real_split():
    xtr, ytr = digits_split("train")
    xva, yva = digits_split("val")
    assert xtr.shape == (1500, 3, 32, 32) and xva.shape == (297, 3, 32, 32)
    assert xtr.dtype == torch.float32 and 0 <= xtr.min() and xtr.max() <= 1
    assert set(ytr.tolist()) == set(range(10)) and set(yva.tolist()) <= set(range(10))
    assert torch.equal(xtr[:, 0], xtr[:, 2])  # grey repeated to RGB
    # no val image appears in train
    flat_tr = {tuple(v.tolist()) for v in xtr[:, 0, ::4, ::4].reshape(1500, -1)}
    assert sum(tuple(v.tolist()) in flat_tr for v in xva[:, 0, ::4, ::4].reshape(297, -1)) < 10
    with pytest.raises(ValueError):
        digits_split("test")


def _save_images(folder, n, size=(20, 18)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", size, (i * 20 % 255, 100, 200)).save(folder / f"img{i}.png")


def test_image_folder_layouts(tmp_path):
    _save_images(tmp_path / "root" / "train" / "b", 3)
    _save_images(tmp_path / "root" / "train" / "a", 2)
    _save_images(tmp_path / "root" / "val" / "a", 1)
    train = split_root(str(tmp_path / "root"), "train")
    assert train == tmp_path / "root" / "train"
    samples, classes = scan_images(train)
    assert [name for _, name in samples] == ["a", "a", "b", "b", "b"] and classes == ["a", "b"]  # sorted classes
    assert [label for _, label in ImageFiles(train, eval_transform(16)).samples] == [0, 0, 1, 1, 1]
    assert split_root(str(tmp_path / "root"), "val") == tmp_path / "root" / "val"

    _save_images(tmp_path / "flat", 4)
    assert split_root(str(tmp_path / "flat"), "train") == tmp_path / "flat"
    assert split_root(str(tmp_path / "flat"), "val") is None
    ds = ImageFiles(tmp_path / "flat", eval_transform(16))
    img, label = ds[0]
    assert img.shape == (3, 16, 16) and label == 0 and len(ds) == 4 and not ds.labelled


def test_missing_empty_and_undecodable_data_are_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        split_root(str(tmp_path / "nope"), "train")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="is not a directory"):
        split_root(str(tmp_path / "file.txt"), "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        ImageFiles(tmp_path / "empty", eval_transform(16))
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*x.jpg"):
        ImageFiles(tmp_path / "bad", eval_transform(16))[0]


@pytest.mark.parametrize("size", [32, 64, 96])
def test_transforms_keep_pixels_in_unit_range(size):
    img = Image.new("RGB", (80, 70), (255, 0, 128))
    for t in (pretrain_transform(size), eval_transform(size)):
        out = t(img)
        assert out.shape == (3, size, size) and out.dtype == torch.float32
        assert 0 <= out.min() and out.max() <= 1  # no mean/std normalisation
    names = [type(op).__name__ for op in pretrain_transform(size).transforms]
    expected = "RandomCrop" if size <= 64 else "RandomResizedCrop"
    assert expected in names and "RandomHorizontalFlip" in names and "Normalize" not in names


def test_resized_float_images_stay_in_unit_range():
    img = torch.zeros(3, 32, 32)
    img[:, 8:24, 8:24] = 1.0  # hard edges make bicubic resampling overshoot
    for t in (eval_transform(16), pretrain_transform(16), eval_transform(96)):
        out = t(img)
        assert out.min() >= 0 and out.max() <= 1


def test_small_input_crop_pads_by_four():
    torch.manual_seed(0)
    img = torch.ones(3, 32, 32)
    outs = torch.stack([pretrain_transform(32)(img) for _ in range(200)])
    zero_cols = (outs[:, 0] == 0).all(dim=1).sum(dim=1)  # padded columns are zero
    assert zero_cols.max() == 4 and zero_cols.min() == 0


def test_loader_order_is_a_function_of_its_seed():
    cfg = build_config("digits", batch_size=100)
    ds = build_train_dataset(cfg, pretrain_transform(32))
    first = [b[1] for b in train_loader(cfg, ds, torch.Generator().manual_seed(5), torch.device("cpu"))]
    again = [b[1] for b in train_loader(cfg, ds, torch.Generator().manual_seed(5), torch.device("cpu"))]
    other = [b[1] for b in train_loader(cfg, ds, torch.Generator().manual_seed(6), torch.device("cpu"))]
    assert len(first) == 15 and all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_dataset_smaller_than_a_batch_is_a_data_error(tmp_path):
    _save_images(tmp_path / "few", 3)
    with pytest.raises(DataError, match="3 images, fewer than batch_size 8"):
        build_train_dataset(build_config("digits", data_path=str(tmp_path / "few"), batch_size=8), None)


def test_folder_presets_need_a_data_path():
    with pytest.raises(DataError, match="preset 'cifar10_vit_s' reads image folders: give --data_path"):
        build_train_dataset(build_config("cifar10_vit_s"), None)


def test_visual_batch_uses_val_images(tmp_path):
    assert visual_batch(build_config("digits")).shape == (8, 3, 16, 16)
    _save_images(tmp_path / "d" / "train" / "a", 10)
    _save_images(tmp_path / "d" / "val" / "a", 2, size=(40, 40))
    batch = visual_batch(build_config("digits", data_path=str(tmp_path / "d"), input_size=16))
    assert batch.shape == (2, 3, 16, 16)


def test_digits_holdout_resplits_the_training_images_only():
    train, val = digits_split("train")[0], digits_split("val")[0]
    hold_train, hold_val = digits_split("train", "digits-holdout")[0], digits_split("val", "digits-holdout")[0]
    assert (len(hold_train), len(hold_val)) == (1200, 300)
    assert torch.equal(torch.cat([hold_train, hold_val]), train)  # exactly the 1,500 training images
    flat = {tuple(x.flatten().tolist()) for x in val}
    assert not any(tuple(x.flatten().tolist()) in flat for x in hold_val)  # no validation image leaks in
    cfg = build_config("digits", data="digits-holdout")
    assert len(build_train_dataset(cfg, None)) == 1200


def test_class_folders_of_another_split_are_mapped_by_name(tmp_path):
    for name, n in (("ant", 2), ("bee", 3), ("cat", 2), ("dog", 1)):
        _save_images(tmp_path / "train" / name, n)
    for name, n in (("ant", 1), ("cat", 2), ("dog", 1)):  # val lacks "bee": later classes must not shift
        _save_images(tmp_path / "val" / name, n)
    train = ImageFiles(tmp_path / "train", eval_transform(16))
    val = ImageFiles(tmp_path / "val", eval_transform(16), classes=train.classes)
    assert train.classes == ["ant", "bee", "cat", "dog"]
    assert [label for _, label in val.samples] == [0, 2, 2, 3] and val.missing == ["bee"]
    own = ImageFiles(tmp_path / "val", eval_transform(16))  # its own numbering would give cat 1, dog 2
    assert [label for _, label in own.samples] == [0, 1, 1, 2]
    _save_images(tmp_path / "val" / "emu", 1)
    with pytest.raises(DataError, match="class folder.* emu .*training data does not have"):
        ImageFiles(tmp_path / "val", eval_transform(16), classes=train.classes)


def test_mixed_layouts_and_empty_class_folders_are_named(tmp_path):
    _save_images(tmp_path / "mixed", 3)
    _save_images(tmp_path / "mixed" / "sub", 2)
    with pytest.raises(DataError, match=r"mixed holds 3 images and 1 folder\(s\) \(sub\)"):
        ImageFiles(tmp_path / "mixed", eval_transform(16))
    _save_images(tmp_path / "classes" / "a", 2)
    (tmp_path / "classes" / "b").mkdir()
    with pytest.raises(DataError, match=r"class folder .*classes/b holds no images"):
        ImageFiles(tmp_path / "classes", eval_transform(16))


def test_non_square_small_images_are_squeezed_to_the_input_size():
    """Up to 64 px the whole image is resized to size × size (bicubic), so nothing is cropped away."""
    img = Image.new("RGB", (40, 20), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 20, 20))  # the left half white
    out = eval_transform(16)(img)
    assert out.shape == (3, 16, 16)
    assert out[:, :, :7].min() > 0.9 and out[:, :, 9:].max() < 0.1  # left half white, right half black
