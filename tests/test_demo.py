"""The demo: argument checks before any training, results.json's schema, the seed aggregation and the chart.

The pipelines are replaced by tiny fakes (``Runners``): pretraining and fine-tuning return a checkpoint path,
evaluation builds a real report (``evaluate.run.build_report``, so the real integrity checks) from made-up
per-example outcomes. Each test takes well under a second.
"""

import json
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mimir_fast.cli import main
from mimir_fast.demo import DemoConfig, plan, report, run_demo, schedule
from mimir_fast.demo import config as demo_config
from mimir_fast.demo import run as demo_run
from mimir_fast.demo.plan import flag_of
from mimir_fast.demo.report import results_table
from mimir_fast.demo.results import mean_std, merge_checks
from mimir_fast.demo.schedule import Runners
from mimir_fast.errors import ConfigError
from mimir_fast.evaluate.run import ClassifierInfo, build_report
from mimir_fast.evaluate.suite import ShardResult, curve_key

PNG = b"\x89PNG\r\n\x1a\n"


class FakePipeline:
    """Records every config; accuracy per example i: clean unless i % 10 == 0, PGD-20 for i % 10 in 1..6 (minus
    one point per seed), AutoAttack for i % 10 in 1..5, nothing at a large ε."""

    def __init__(self):
        self.pretrained, self.finetuned, self.evaluated = [], [], []
        self.finished: set[str] = set()  # output folders of the runs that have ended

    def _after(self, *checkpoints):
        """A run may start only once the runs whose checkpoints it takes have ended."""
        for ckpt in checkpoints:
            assert ckpt is None or str(Path(ckpt).parent) in self.finished, ckpt

    def runners(self) -> Runners:
        return Runners(self.pretrain, self.finetune, self.evaluate)

    def pretrain(self, cfg):
        self._after(flag_of(cfg, "maep_init"))
        self.pretrained.append(cfg)
        self.finished.add(cfg.output_dir)
        return SimpleNamespace(checkpoint=Path(cfg.output_dir) / "checkpoint-0.pth")

    def finetune(self, cfg):
        self._after(cfg.finetune, flag_of(cfg, "purifier"))
        self.finetuned.append(cfg)
        self.finished.add(cfg.output_dir)
        return SimpleNamespace(checkpoint=Path(cfg.output_dir) / "checkpoint-0.pth")

    def evaluate(self, cfg):
        self._after(cfg.resume, cfg.purifier)
        self.evaluated.append(cfg)
        if cfg.gamma_sweep:
            return {"gammas": cfg.gammas, "files": {"png": "gamma_curve.png"},
                    "accuracy": {k: [50.0] * len(cfg.gammas) for k in ("clean", "pgd20", "pgd20-gb")}}
        order = list(range(cfg.n_ex))
        robust = 6 - cfg.seed  # PGD-20 accuracy 60%, 50%, 40% for seeds 0, 1, 2 (on multiples of 10 images)
        outcome = {"clean": lambda i: i % 10 != 0, "pgd20": lambda i: 1 <= i % 10 <= robust,
                   "pgd20-gb": lambda i: 1 <= i % 10 <= 7, "aa": lambda i: 1 <= i % 10 <= robust - 1,
                   "aa-rand": lambda i: 1 <= i % 10 <= robust - 1}
        shard = ShardResult(indices=order)
        keys = ["clean"] + [curve_key(e) for e in cfg.curve] + [k for k in cfg.attack_list if k != "clean"]
        for key in keys:
            if key.startswith("curve:"):
                eps = float(key.split(":")[1])
                hit = outcome["clean"] if eps == 0 else (outcome["pgd20"] if eps <= 8 else (lambda i: False))
            else:
                hit = outcome[key]
            shard.correct[key] = [int(hit(i)) for i in order]
            shard.seconds[key] = 0.1
            if key != "clean":
                shard.max_perturbation[key] = cfg.eps / 255 if not key.startswith("curve:") else float(
                    key.split(":")[1]) / 255
        if "aa" in cfg.attack_list:
            left = sum(shard.correct["aa"])
            shard.aa_after["aa"] = [("apgd-ce", left), ("apgd-t", left), ("fab-t", left), ("square", left)]
        defense = {"name": cfg.defense, "randomized": cfg.defense == "de3", "ms_per_image": 0.5,
                   "summary": cfg.defense}
        report = build_report(cfg, ClassifierInfo("vit_micro", 10, 16, 4), [shard], order, defense=defense)
        report["files"] = {"json": str(Path(cfg.output_dir) / "eval_results.json")}
        return report


@pytest.mark.parametrize("kwargs, message", [
    ({"seeds": 0}, "seeds must be >= 1"),
    ({"n_ex": 0}, "n_ex must be in [1, 297]"),
    ({"n_ex": 298}, "n_ex must be in [1, 297]"),
    ({"aa_n_ex": 0}, "aa_n_ex must be in [1, n_ex = 297]"),
    ({"n_ex": 50, "aa_n_ex": 100}, "aa_n_ex must be in [1, n_ex = 50]"),
    ({"attacks": "clean,pgd21"}, "unknown demo attack 'pgd21'"),
    ({"attacks": "clean,pgd20-gb"}, "unknown demo attack 'pgd20-gb'"),
    ({"attacks": " , "}, "attacks lists no attack"),
    ({"eps_curve": "0,8"}, "eps_curve needs 0 and a radius >= 64"),
    ({"eps_curve": "8,128"}, "eps_curve needs 0 and a radius >= 64"),
    ({"eps_curve": "0,x"}, "eps_curve must be comma-separated numbers"),
    ({"gamma_sweep": "0,seventy"}, "gamma_sweep must be comma-separated numbers"),
    ({"gamma_sweep": "0,-70"}, "gamma_sweep values must be >= 0"),
    ({"gamma": -1.0}, "gamma must be >= 0"),
    ({"device": "tpu"}, "unknown device 'tpu'"),
    ({"maep_lora_epochs": 0}, "maep_lora_epochs must be >= 1"),
    ({"workers": -1}, "workers must be >= 0"),
])
def test_demo_arguments_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        DemoConfig(**kwargs)


@pytest.mark.parametrize("argv, needle", [
    (["--attacks", "clean,pgd21"], "unknown demo attack 'pgd21'"),
    (["--gamma_sweep", "0,abc", "--purifiers"], "gamma_sweep must be comma-separated numbers"),
    (["--seeds", "0"], "seeds must be >= 1"),
])
def test_demo_cli_rejects_bad_arguments_in_one_line_before_training(argv, needle, monkeypatch, capsys, tmp_path):
    started = Runners(*(lambda cfg: pytest.fail("a run started"),) * 3)
    monkeypatch.setattr(schedule, "default_runners", lambda: started)
    monkeypatch.setattr(demo_run, "worker_count", lambda cfg: 1)
    try:
        code = main(["demo", "--output_dir", str(tmp_path), *argv])
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err


def test_an_output_dir_that_is_a_file_stops_the_demo_in_one_line_before_any_run(monkeypatch, capsys, tmp_path):
    started = Runners(*(lambda cfg: pytest.fail("a run started"),) * 3)
    monkeypatch.setattr(schedule, "default_runners", lambda: started)
    monkeypatch.setattr(demo_run, "worker_count", lambda cfg: 1)
    target = tmp_path / "taken"
    target.write_text("")
    code = main(["demo", "--output_dir", str(target)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is a file, not a folder" in err and "Traceback" not in err


def test_every_run_config_is_built_before_the_first_run(monkeypatch, tmp_path):
    fake = FakePipeline()
    monkeypatch.setattr(demo_config, "FINETUNE_RECIPE", {**demo_config.FINETUNE_RECIPE, "epochs": 0})
    with pytest.raises(ConfigError, match="epochs must be >= 1"):
        run_demo(DemoConfig(output_dir=str(tmp_path)), fake.runners())
    assert fake.pretrained == [] and not (tmp_path / "results.json").exists()


def test_results_json_has_accuracy_n_times_and_checks_per_row(tmp_path):
    fake = FakePipeline()
    rows = run_demo(DemoConfig(output_dir=str(tmp_path)), fake.runners())
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["start"] for r in results["rows"]] == [label for label, _ in plan.ROWS] == [r["start"] for r in rows]
    for row in results["rows"]:
        assert row["accuracy"] == {"clean": 100 * 267 / 297, "pgd20": 100 * 180 / 297, "aa": 50.0}
        assert row["n"] == {"clean": 297, "pgd20": 297, "aa": 100}
        assert row["aa_subset"] == "the first 100 validation images (indices 0–99)"
        assert row["accuracy_aa_subset"] == {"clean": 90.0, "pgd20": 60.0, "aa": 50.0}
        assert set(row["times"]) == set(row["cpu_times"]) == {"pretrain_s", "finetune_s", "eval_s", "total_s"}
        checks = row["checks"]
        assert (checks["passed"], checks["total"], checks["failed"]) == (7, 7, [])
        assert [c["name"] for c in checks["details"]] == list(demo_config.CHECK_NAMES) or \
            {c["name"] for c in checks["details"]} == set(demo_config.CHECK_NAMES)
        assert "mean" not in row and "std" not in row
    assert results["recipe"]["finetune"]["preset"] == "digits" and results["seeds"] == [0]
    assert (tmp_path / "results.md").read_text() == results_table(rows, DemoConfig(), results["total_s"]) + "\n"
    assert (tmp_path / "results.png").read_bytes().startswith(PNG)
    # the recipe: one fine-tuning recipe for the three rows, scratch's layer decay the one exception
    mimir, mae, scratch = fake.finetuned
    assert mimir.finetune.endswith("pretrain_mimir/checkpoint-0.pth") and scratch.finetune is None
    assert scratch.layer_decay == 1.0 and mimir.layer_decay == mae.layer_decay
    assert {f.name: getattr(mimir, f.name) for f in fields(mimir) if f.name not in ("finetune", "output_dir")} \
        == {f.name: getattr(mae, f.name) for f in fields(mae) if f.name not in ("finetune", "output_dir")}
    assert [c.method for c in fake.pretrained] == ["mimir", "mae"]
    # clean and PGD on all 297, AutoAttack alone on the first 100, checks fed by ε = 0 and 64
    full, subset = fake.evaluated[:2]
    assert (full.n_ex, full.attack_list, full.curve) == (297, ["clean", "pgd20"], [0.0, 8.0, 64.0])
    assert (subset.n_ex, subset.attack_list, subset.curve) == (100, ["clean", "aa"], [])


def test_a_failed_check_and_the_subset_comparison_are_reported():
    full = [{"name": "autoattack_le_pgd", "status": "skipped", "detail": "needs aa"},
            {"name": "gradients_flow", "status": "pass", "detail": "0 of 297"},
            {"name": "square_adds_little", "status": "skipped", "detail": "needs aa"}]
    subset = [{"name": "autoattack_le_pgd", "status": "skipped", "detail": "needs pgd20"},
              {"name": "gradients_flow", "status": "fail", "detail": "30 of 100"},
              {"name": "square_adds_little", "status": "skipped", "detail": "needs aa"}]
    compared = [{"name": "autoattack_le_pgd", "status": "pass", "detail": "AutoAttack 50% vs PGD 60%"}]
    merged = merge_checks([full, subset, compared])
    assert (merged["passed"], merged["total"], merged["failed"]) == (1, 2, ["gradients_flow"])
    status = {c["name"]: c["status"] for c in merged["details"]}
    assert status == {"autoattack_le_pgd": "pass", "gradients_flow": "fail", "square_adds_little": "skipped"}


def test_mean_and_sample_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert mean_std([5.0]) == (5.0, 0.0)


def test_seeds_give_mean_std_per_row_and_a_chart_with_error_bars(tmp_path):
    fake = FakePipeline()
    run_demo(DemoConfig(output_dir=str(tmp_path), seeds=3, n_ex=100, aa_n_ex=100), fake.runners())
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["seeds"] == [0, 1, 2] and len(results["rows"]) == 3
    for row in results["rows"]:
        assert row["seeds"] == [0, 1, 2] and len(row["runs"]) == 3
        assert row["mean"] == row["accuracy"]
        assert row["mean"]["pgd20"] == pytest.approx(50.0) and row["std"]["pgd20"] == pytest.approx(10.0)
        assert row["mean"]["aa"] == pytest.approx(40.0) and row["std"]["aa"] == pytest.approx(10.0)
        assert row["mean"]["clean"] == 90.0 and row["std"]["clean"] == 0.0
        assert row["n"] == {"clean": 100, "pgd20": 100, "aa": 100}
        assert (row["checks"]["passed"], row["checks"]["total"]) == (21, 21)
        assert [r["seed"] for r in row["runs"]] == [0, 1, 2]
    table = (tmp_path / "results.md").read_text()
    assert "| MIMIR pretraining | 90.0 ± 0.0 | 50.0 ± 10.0 | 40.0 ± 10.0 |" in table
    assert "seeds 0–2" in table
    assert (tmp_path / "results.png").read_bytes().startswith(PNG)
    # each seed trains and evaluates with its own seed, in its own folder
    assert [c.seed for c in fake.finetuned] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert fake.finetuned[3].output_dir == str(tmp_path / "seed_1" / "finetune_mimir")
    assert {c.seed for c in fake.evaluated} == {0, 1, 2}


def test_chart_draws_error_bars_only_with_several_seeds(tmp_path, monkeypatch):
    import matplotlib.axes

    calls = []
    real_bar = matplotlib.axes.Axes.bar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar",
                        lambda self, *a, **kw: calls.append(kw.get("yerr")) or real_bar(self, *a, **kw))
    rows = [{"start": "MIMIR pretraining", "accuracy": {"clean": 90.0, "pgd20": 60.0, "aa": 55.0},
             "std": {"clean": 1.0, "pgd20": 2.0, "aa": 3.0}}]
    report.plot_results(rows, DemoConfig(seeds=3), tmp_path / "a.png")
    assert calls == [[1.0], [2.0], [3.0]]
    calls.clear()
    report.plot_results([{k: v for k, v in rows[0].items() if k != "std"}], DemoConfig(), tmp_path / "b.png")
    assert calls == [None, None, None] and (tmp_path / "b.png").read_bytes().startswith(PNG)


def test_purifier_rows_are_wired_to_their_checkpoints(tmp_path):
    fake = FakePipeline()
    rows = run_demo(DemoConfig(output_dir=str(tmp_path), purifiers=True, n_ex=20, aa_n_ex=10), fake.runners())
    assert [r["purifier"] for r in rows[3:]] == ["de3", "maep"]
    nim, maep1, maep2, encoder = fake.pretrained[2:]
    assert (nim.method, maep1.method, flag_of(maep2, "maep_stage")) == ("nim", "maep", "lora")
    assert flag_of(maep2, "maep_init") == str(Path(maep1.output_dir) / "checkpoint-0.pth")
    de3_ft, clean_ft = fake.finetuned[3:]
    assert de3_ft.finetune == flag_of(de3_ft, "purifier") == str(Path(nim.output_dir) / "checkpoint-0.pth")
    assert (encoder.method, encoder.input_size, encoder.patch_size) == ("mae", 16, 4)  # the purifier's geometry
    assert clean_ft.finetune == str(Path(encoder.output_dir) / "checkpoint-0.pth")
    assert (clean_ft.input_size, clean_ft.patch_size) == (16, 4)
    de3_evals = [c for c in fake.evaluated if c.defense == "de3"]
    assert [c.attack_list for c in de3_evals] == [["clean", "pgd20", "pgd20-gb"], ["clean", "aa-rand"],
                                                   ["clean", "pgd20", "pgd20-gb"]]
    assert de3_evals[2].gammas == [0.0, 70.0, 140.0]
    assert rows[3]["n"] == {"clean": 20, "pgd20": 20, "pgd20-gb": 20, "aa-rand": 10}
    assert "gamma_sweep" in rows[3] and rows[4]["purifier_ms_per_image"] == 0.5
    table = (tmp_path / "results.md").read_text()
    assert "De^3 γ sweep" in table and "| NIM pretraining + De^3 (γ = 70) |" in table


def test_demo_table_lists_each_row_with_its_checks():
    rows = [{"start": "MIMIR pretraining", "accuracy": {"clean": 41.5, "pgd20": 20.0, "aa": 16.0},
             "times": {"pretrain_s": 90.2, "finetune_s": 40.0, "eval_s": 70.0, "total_s": 200.2},
             "checks": {"passed": 7, "total": 7, "failed": []}},
            {"start": "scratch", "accuracy": {"clean": 12.0, "pgd20": 9.0, "aa": 8.5},
             "times": {"pretrain_s": 0.0, "finetune_s": 40.0, "eval_s": 20.0, "total_s": 60.0},
             "checks": {"passed": 6, "total": 7, "failed": ["monotone_in_eps"]}}]
    text = results_table(rows, DemoConfig(), 260.2)
    lines = text.splitlines()
    assert lines[0] == ("| start | clean (%) | PGD-20 (%) | AutoAttack (%) | pretrain (s) | fine-tune (s) | eval (s) "
                        "| total (s) | checks |")
    assert lines[2] == "| MIMIR pretraining | 41.5 | 20.0 | 16.0 | 90 | 40 | 70 | 200 | 7/7 pass |"
    assert "6/7 pass (failed: monotone_in_eps)" in lines[3]
    assert "clean, PGD-20 on all 297 images; AutoAttack on the first 100 validation images" in text
    assert "the whole demo took 260 s (4.3 min)" in text


def test_reconstruction_panel_greys_out_the_visible_patches():
    from mimir_fast.models_mae import create_model
    from mimir_fast.train.visualize import VISIBLE_GREY, reconstruction_panels

    torch.manual_seed(0)
    model = create_model("mae_vit_micro", img_size=16, patch_size=4, norm_pix_loss=True)
    images = torch.rand(2, 3, 16, 16)
    original, masked, predicted, pasted = reconstruction_panels(model, images, 0.75).unbind(1)
    visible = masked.ne(0).any(dim=1, keepdim=True).expand_as(images)  # random images: no all-zero visible pixel
    assert torch.equal(original, images) and visible.float().mean().item() == pytest.approx(0.25)
    assert torch.all(predicted[visible] == VISIBLE_GREY)  # the untrained visible predictions are not shown
    assert torch.equal(predicted[~visible], pasted[~visible])  # the masked patches: the model's predictions
    assert torch.equal(pasted[visible], images[visible])


def test_runs_side_by_side_give_the_same_rows_in_dependency_order(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    def strip(rows):  # all but the times
        return [{k: strip(v) if k == "runs" else v for k, v in r.items()
                 if k not in ("times", "cpu_times", "gamma_sweep")} for r in rows]

    cfg = DemoConfig(output_dir=str(tmp_path), purifiers=True, seeds=2, n_ex=20, aa_n_ex=10)
    one = run_demo(cfg, FakePipeline().runners())
    fake = FakePipeline()  # its runs assert that what they take from earlier runs has been written
    two = run_demo(cfg, fake.runners(), executor=ThreadPoolExecutor(2))
    assert strip(one) == strip(two) and len(fake.evaluated) == 2 * (3 * 2 + 2 * 2 + 1)
    assert json.loads((tmp_path / "results.json").read_text())["workers"] == 2
    assert "2 runs at a time, so rows overlap" in (tmp_path / "results.md").read_text()


def test_plan_tasks_trains_before_it_evaluates():
    plans = plan.plan_rows(DemoConfig(purifiers=True))
    tasks = {t.key: t for t in plan.plan_tasks(plans)}
    assert tasks["seed0/mimir/finetune"].needs == {"finetune": "seed0/mimir/pretrain0"}
    assert tasks["seed0/scratch/finetune"].needs == {}
    assert tasks["seed0/maep/pretrain1"].needs == {"maep_init": "seed0/maep/pretrain0"}
    assert tasks["seed0/maep/finetune"].needs == {"finetune": "seed0/maep/encoder"}
    assert tasks["seed0/de3/finetune"].needs == {"finetune": "seed0/de3/pretrain0", "purifier": "seed0/de3/pretrain0"}
    assert tasks["seed0/maep/eval_aa"].needs == {"resume": "seed0/maep/finetune", "purifier": "seed0/maep/pretrain1"}
    assert tasks["seed0/de3/eval_sweep"].phase == "sweep" and tasks["seed0/mae/eval_aa"].phase == "eval"


def test_a_free_worker_evaluates_while_another_trains():
    tasks = {t.key: t for t in plan.plan_tasks(plan.plan_rows(DemoConfig()))}
    scratch_ft, mimir_ft, mae_eval = (tasks[k] for k in ("seed0/scratch/finetune", "seed0/mimir/finetune",
                                                         "seed0/mae/eval_aa"))
    assert schedule.next_task([scratch_ft, mae_eval], running=[mimir_ft]) is mae_eval
    assert schedule.next_task([scratch_ft, mae_eval], running=[]) is scratch_ft  # nobody trains: train
    assert schedule.next_task([scratch_ft, mae_eval], running=[tasks["seed0/mimir/eval_aa"]]) is scratch_ft
    assert schedule.next_task([mae_eval], running=[]) is mae_eval


@pytest.mark.parametrize("kwargs, cores, cuda, expected", [
    ({}, 2, False, 2), ({}, 1, False, 1), ({}, 16, True, 1), ({"device": "cpu"}, 16, True, 2),
    ({"workers": 3}, 2, False, 3), ({"device": "cuda"}, 16, False, 1),
])
def test_worker_count(kwargs, cores, cuda, expected, monkeypatch):
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert schedule.worker_count(DemoConfig(**kwargs)) == expected
