"""The method registry: each method's options, flags and defaults; configs round-trip through checkpoint args."""

from dataclasses import fields

import pytest

from mimir_fast.configs import field_docs
from mimir_fast.errors import ConfigError
from mimir_fast.methods import build_config, config_from_args, create_method, method_classes
from mimir_fast.methods.build import shared_fields
from tests.test_cli import run

TASKS = ("pretrain", "finetune")


def test_every_method_is_registered_with_documented_options():
    assert list(sorted(method_classes("pretrain"))) == ["mae", "maep", "mimir", "nim"]
    assert list(sorted(method_classes("finetune"))) == ["clean", "de3", "pgd", "trades"]
    for task in TASKS:
        shared = set(shared_fields(task))
        seen: dict[str, str] = {}
        for name, cls in method_classes(task).items():
            assert cls.name == name and cls.task == task and cls.summary
            if cls.options_cls is None:
                continue
            docs = field_docs(cls.options_cls)
            assert all(docs[f.name] for f in fields(cls.options_cls)), name  # a docstring under every field
            for flag in cls.options_cls.flags():
                assert flag not in shared and flag not in seen, (flag, name, seen.get(flag))
                seen[flag] = name


def test_a_methods_defaults_come_before_the_flags():
    assert build_config("digits", method="maep").norm_pix_loss is False
    assert build_config("digits", method="nim").norm_pix_loss is True
    with pytest.raises(ConfigError, match="drop --norm_pix_loss"):
        build_config("digits", method="maep", norm_pix_loss=True)


def test_flags_of_another_method_are_refused_by_name():
    with pytest.raises(ConfigError, match="--nim_sigma is a flag of --method nim, not of --method mimir"):
        build_config("digits", nim_sigma=50.0)
    with pytest.raises(ConfigError, match="--trades_beta is a flag of --method trades, not of --method pgd"):
        build_config("digits", "finetune", trades_beta=1.0)
    with pytest.raises(ConfigError, match="unknown flag --sigma"):
        build_config("digits", sigma=1.0)


@pytest.mark.parametrize("task,method,flags", [
    ("pretrain", "mimir", {"mi_xpl": 0.5, "steps": 3}),
    ("pretrain", "nim", {"nim_sigma_dist": "fixed", "nim_sigma": 40.0}),
    ("pretrain", "maep", {"maep_stage": "lora", "maep_init": "s1.pth", "maep_lora_rank": 2}),
    ("finetune", "trades", {"trades_beta": 3.0}),
    ("finetune", "de3", {"purifier": "nim.pth", "de3_sigma_high": 20.0, "val_gamma": 35.0}),
])
def test_configs_round_trip_through_checkpoint_args(task, method, flags):
    cfg = build_config("digits", task, method=method, **flags)
    args = cfg.to_dict()
    assert all(args[k] == v for k, v in flags.items())  # stored flat, under the flag names
    assert config_from_args(task, args) == cfg
    other = {"trades_beta": 2.0} if task == "pretrain" else {"nim_sigma": 9.0}  # a flag of another command's method
    assert config_from_args(task, {**args, "some_old_flag": 1, **other}).to_dict() == args  # ignored


def test_args_written_before_methods_had_options_still_load():
    """A checkpoint's ``args`` as every earlier version wrote them: all methods' flags flat, side by side."""
    old = {"preset": "digits", "model": "mae_vit_micro", "method": "maep", "norm_pix_loss": False, "mi_xpl": 1e-5,
           "hsic_sigma": 5.0, "maep_stage": "lora", "maep_init": "s1.pth", "maep_lora_rank": 2, "maep_lora_alpha": 8.0,
           "nim_sigma_dist": "gamma", "task": "pretrain"}
    cfg = config_from_args("pretrain", old)
    assert (cfg.method, cfg.options.stage, cfg.options.lora_rank, cfg.norm_pix_loss) == ("maep", "lora", 2, False)
    assert create_method(cfg).loss_keys == ("loss", "pur_loss")


def test_help_groups_each_methods_flags_under_it(capsys):
    code, out, _ = run(["pretrain", "--help"], capsys)
    assert code == 0
    for method, flag in (("mimir", "--mi_xpl"), ("nim", "--nim_sigma_dist"), ("maep", "--maep_stage")):
        section = out.split(f"--method {method}")[1]
        assert flag in section.split("\n--method ")[0], method


@pytest.mark.slow
@pytest.mark.parametrize("method", ["nim", "maep"])
def test_purifier_methods_run_with_no_other_flags(method, tmp_path, capsys):
    code, out, err = run(["pretrain", "--method", method, "--epochs", "1", "--output_dir", str(tmp_path)], capsys)
    assert code == 0, err
    assert (tmp_path / "checkpoint-0.pth").is_file() and "done: final loss" in out
