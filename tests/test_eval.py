"""mimir-fast eval: the report, the integrity checks on a gradient-masked model, per-example PGD starts, subsets,
RobustBench preprocessing against torchvision, sharding, errors."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from torch import nn

from mimir_fast.evaluate.config import EvalConfig
from mimir_fast.evaluate.data import preprocessing
from mimir_fast.evaluate.run import ClassifierInfo, build_report
from mimir_fast.evaluate.suite import attack_shard
from mimir_fast.models_mae import create_model
from mimir_fast.models_vit import create_classifier
from mimir_fast.train.checkpoint import save_checkpoint
from tests.helpers import small_cnn
from tests.test_cli import assert_one_line_error, run


def _classifier_ckpt(path, size=16, classes=10, name="vit_micro"):
    torch.manual_seed(0)
    model = create_classifier(name, img_size=size, patch_size=4, num_classes=classes, head_init_std=0.5)
    save_checkpoint({"model": model.state_dict(), "epoch": 0,
                     "args": {"model": name, "task": "finetune", "input_size": size}}, path)
    return path


def _statuses(report):
    return {c["name"]: c["status"] for c in report["checks"]}


def test_eval_writes_the_report_curve_and_checks(tmp_path, capsys):
    pytest.importorskip("torchattacks")
    ckpt = _classifier_ckpt(tmp_path / "clf.pth")
    code, out, err = run(["eval", "--resume", str(ckpt), "--n_ex", "9", "--attacks", "clean,pgd20,pgd100,pgd-mi,aa",
                          "--eps_curve", "0,8,128", "--pgd_mi_steps", "5", "--output_dir", str(tmp_path / "ev")],
                         capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "eval_results.json").read_text())
    assert (tmp_path / "ev" / "robust_curve.png").stat().st_size > 1000
    assert set(report["accuracy"]) == {"clean", "pgd20", "pgd100", "pgd-mi", "aa"}
    assert [p["eps"] for p in report["curve"]] == [0.0, 8.0, 128.0]
    assert report["per_example"]["index"] == list(range(9)) and len(report["per_example"]["aa"]) == 9
    assert report["precision"] == "fp32" and report["n_examples"] == 9
    assert [a["attack"] for a in report["autoattack"]["aa"]] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    statuses = _statuses(report)
    assert statuses["eps0_equals_clean"] == "pass" and statuses["perturbation_within_eps"] == "pass"
    assert statuses["gradients_flow"] == "pass" and statuses["monotone_in_eps"] == "pass"
    for key, acc in report["accuracy"].items():  # the accuracies are the per-example outcomes' means
        assert acc == pytest.approx(100 * sum(report["per_example"][key]) / 9, abs=1e-9), key
    # AutoAttack's own count of robust points after its last attack agrees with re-scoring its examples
    assert report["autoattack"]["aa"][-1]["accuracy_after"] == pytest.approx(report["accuracy"]["aa"], abs=1e-9)
    assert "check eps0_equals_clean" in out


class Quantised(nn.Module):
    """Gradient masking by construction: inputs are rounded (zero gradient almost everywhere)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(torch.round(x * 4) / 4)


def test_checks_catch_a_gradient_masked_model():
    pytest.importorskip("torchattacks")
    inner = small_cnn()  # cheap, so that AutoAttack's 5,000 Square queries on unbroken points stay fast
    x = torch.rand(12, 3, 16, 16)
    cfg = EvalConfig(resume="in-memory", attacks="clean,pgd20,aa", eps=16, alpha=4, eps_curve="0,16,128")
    info = ClassifierInfo("small_cnn", 10, 16, 4)
    reports = {}
    for name, model in (("plain", inner), ("masked", Quantised(inner).eval())):
        with torch.no_grad():
            y = model(x).argmax(1)  # every example starts correctly classified
        reports[name] = build_report(cfg, info, [attack_shard(model, x, y, list(range(12)), cfg, 10)], list(range(12)))
    plain, masked = _statuses(reports["plain"]), _statuses(reports["masked"])
    assert plain["gradients_flow"] == "pass" and masked["gradients_flow"] == "fail"
    assert masked["square_adds_little"] == "fail"  # only the black-box attack gets through
    assert reports["masked"]["accuracy"]["pgd20"] > reports["plain"]["accuracy"]["pgd20"]


def test_pgd_starts_belong_to_the_example_not_to_its_place_in_the_batch(monkeypatch):
    """Examples 3, 4, 5 get the same random starts whether evaluated among 0..5 in batches of 4 or alone in a
    shard, in batches of 2 (the start of example i is seeded by (seed, i))."""
    from mimir_fast.evaluate import suite

    starts, real = [], suite.pgd

    def recording(*args, start, **kw):
        starts.append(start.clone())
        return real(*args, start=start, **kw)

    monkeypatch.setattr(suite, "pgd", recording)
    model = small_cnn()
    x, y = torch.rand(6, 3, 16, 16), torch.randint(0, 10, (6,))
    runs = []
    for indices, bs in (([0, 1, 2, 3, 4, 5], 4), ([3, 4, 5], 2)):
        starts.clear()
        cfg = EvalConfig(resume="in-memory", attacks="clean,pgd20", eps_curve="8", batch_size=bs)
        attack_shard(model, x[indices], y[indices], indices, cfg, 10)
        runs.append(torch.cat(starts))
    whole, shard = runs
    assert whole.shape == (6, 3, 16, 16) and shard.shape == (3, 3, 16, 16)
    assert torch.equal(shard, whole[3:])
    assert not torch.equal(whole[0], whole[3])  # and each example has its own
    assert 0.9 * 8 / 255 < whole.abs().max() <= 8 / 255  # uniform in the ε-ball


def test_subsets_by_index_file(tmp_path, capsys):
    ckpt = _classifier_ckpt(tmp_path / "clf.pth")
    (tmp_path / "ids.txt").write_text("5\n2\n9\n")
    code, _, err = run(["eval", "--resume", str(ckpt), "--ids", str(tmp_path / "ids.txt"), "--attacks", "clean",
                        "--eps_curve", "0", "--output_dir", str(tmp_path / "ev")], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "ev" / "eval_results.json").read_text())
    assert report["per_example"]["index"] == [5, 2, 9] and report["subset"].endswith("ids.txt")
    (tmp_path / "bad.txt").write_text("3\n999\n")
    code, _, err = run(["eval", "--resume", str(ckpt), "--ids", str(tmp_path / "bad.txt"), "--attacks", "clean",
                        "--output_dir", str(tmp_path / "ev2")], capsys)
    assert_one_line_error(code, err, "lists index 999, outside the 297 evaluation examples")


def test_robustbench_preprocessing_is_torchvisions():
    """RobustBench's ``PREPROCESSINGS`` (``robustbench/data.py``), written with torchvision's classic transforms:
    the same 8-bit pixels on a non-square image with detail to resample, scaled to [0, 1] within one rounding
    (``ToTensor`` divides by 255, ``v2.ToDtype`` multiplies by 1/255: at most 2^-24 apart)."""
    from PIL import Image
    from torchvision import transforms as T

    g = torch.Generator().manual_seed(3)
    pixels = (torch.rand(260, 301, 3, generator=g) * 255).to(torch.uint8).numpy()
    img = Image.fromarray(pixels)
    robustbench = {
        "Res256Crop224": T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor()]),
        "BicubicRes256Crop224": T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC),
                                           T.CenterCrop(224), T.ToTensor()]),
        "none": T.Compose([T.ToTensor()]),
    }
    for name, reference in robustbench.items():
        ours, expected = preprocessing(name, 224)(img), reference(img)
        assert ours.dtype == torch.float32 and ours.shape == expected.shape, name
        assert torch.equal((ours * 255).round(), (expected * 255).round()), name
        assert (ours - expected).abs().max() <= 2**-24, name
    assert preprocessing("none", 32)(img).shape == (3, 260, 301)
    bilinear, bicubic = (preprocessing(n, 224)(img) for n in ("Res256Crop224", "BicubicRes256Crop224"))
    assert not torch.equal(bilinear, bicubic)  # the detail makes the interpolation matter


def test_eval_bad_inputs(tmp_path, capsys):
    ckpt = _classifier_ckpt(tmp_path / "clf.pth")
    mae = create_model("mae_vit_micro", img_size=16, patch_size=4)
    save_checkpoint({"model": mae.state_dict(), "epoch": 0}, tmp_path / "pre.pth")
    out = ["--output_dir", str(tmp_path / "o")]
    cases = [
        (["--resume", str(ckpt), "--attacks", "clean,cw"], ["unknown attack 'cw'"]),
        (["--resume", str(ckpt), "--eps", "-2"], ["eps must be >= 0"]),
        (["--resume", str(tmp_path / "pre.pth")], ["is a pretraining checkpoint; eval needs a classifier"]),
        (["--resume", str(ckpt), "--num_classes", "100"], ["has num_classes 10, but --num_classes is 100"]),
        (["--resume", str(ckpt), "--input_size", "32"], ["has input_size 16, but --input_size is 32"]),
        ([], ["eval needs --resume"]),
        (["--resume", str(ckpt), "--eps_curve", "0,x"], ["eps_curve must be comma-separated numbers"]),
    ]
    for argv, needles in cases:
        code, _, err = run(["eval", *argv, *out], capsys)
        assert_one_line_error(code, err, *needles)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_sharded_eval_under_torchrun_matches_one_process(tmp_path, capsys):
    ckpt = _classifier_ckpt(tmp_path / "clf.pth")
    common = ["eval", "--resume", str(ckpt), "--n_ex", "11", "--attacks", "clean,pgd20,pgd100",
              "--eps_curve", "0,4,64", "--batch_size", "4"]
    code, _, err = run([*common, "--output_dir", str(tmp_path / "one")], capsys)
    assert code == 0, err
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
         "-m", "mimir_fast", *common, "--output_dir", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    one = json.loads((tmp_path / "one" / "eval_results.json").read_text())
    two = json.loads((tmp_path / "two" / "eval_results.json").read_text())
    assert two["world_size"] == 2 and one["world_size"] == 1
    assert one["per_example"] == two["per_example"]  # per-example random starts: sharding changes nothing
    assert one["accuracy"] == two["accuracy"]
