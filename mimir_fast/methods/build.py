"""Whole run configs from a preset and flags, and the method that runs them.

A config is built in this order: the preset's fields, then the method's defaults for shared fields (e.g. maep:
norm-pix off), then the flags given; the method's own flags become its options. A flag that belongs to another
method is a one-line error naming that method.
"""

from __future__ import annotations

from dataclasses import fields, replace

from ..errors import ConfigError
from ..train.config import FinetuneConfig, PretrainConfig, RunConfig
from ..train.method import Method
from ..train.presets import FINETUNE_PRESETS, PRESETS
from ..train.runner import RunSummary, run
from .registry import method_class, method_classes

TASKS = {"pretrain": (PretrainConfig, PRESETS), "finetune": (FinetuneConfig, FINETUNE_PRESETS)}


def shared_fields(task: str) -> list[str]:
    """The names of ``task``'s shared config fields (every method's flags but its options)."""
    return [f.name for f in fields(TASKS[task][0]) if f.name != "options"]


def build_config(preset: str = "digits", task: str = "pretrain", **flags) -> RunConfig:
    """``task``'s config from ``preset`` and ``flags`` (CLI names), validated (``ConfigError`` otherwise)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}")
    presets = TASKS[task][1]
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    base = presets[preset]()
    cls = method_class(task, flags.get("method", base.method))
    shared = set(shared_fields(task))
    own = cls.options_cls.flags() if cls.options_cls else {}
    for flag in flags:
        if flag not in shared and flag not in own:
            raise ConfigError(_not_a_flag(task, flag, cls.name))
    options = cls.options_cls.from_flags(flags) if cls.options_cls else None
    cfg = replace(base, **{**cls.defaults, **{k: v for k, v in flags.items() if k in shared}}, options=options)
    cls(cfg).check()
    return cfg


def build_finetune_config(preset: str = "digits", **flags) -> FinetuneConfig:
    """A fine-tuning config (``build_config`` with ``task="finetune"``)."""
    return build_config(preset, "finetune", **flags)


def config_from_args(task: str, args: dict) -> RunConfig:
    """The config a checkpoint's ``args`` (or a ``config.json``) records; keys it does not know are ignored, and
    fields it lacks keep their defaults (files written by older versions load)."""
    base_cls = TASKS[task][0]
    shared = {k: args[k] for k in shared_fields(task) if k in args}
    cls = method_class(task, shared.get("method", base_cls.method))
    options = cls.options_cls.from_flags(args) if cls.options_cls else None
    return base_cls(**shared, options=options)


def create_method(cfg: RunConfig) -> Method:
    """The registered method of ``cfg`` bound to it (``cfg.options`` filled with the method's defaults if
    unset), after its cross-field checks."""
    task = "pretrain" if isinstance(cfg, PretrainConfig) else "finetune"
    cls = method_class(task, cfg.method)
    if cfg.options is None and cls.options_cls is not None:
        cfg = replace(cfg, options=cls.options_cls())
    method = cls(cfg)
    method.check()
    return method


def run_pretrain(cfg: PretrainConfig) -> RunSummary:
    """Pretrain ``cfg`` (see ``mimir_fast.train.runner`` for checkpoints, resume and reproducibility)."""
    return run(create_method(cfg))


def run_finetune(cfg: FinetuneConfig) -> RunSummary:
    """Fine-tune ``cfg`` (see ``mimir_fast.train.runner``)."""
    return run(create_method(cfg))


def _not_a_flag(task: str, flag: str, method: str) -> str:
    owners = [name for name, cls in method_classes(task).items() if cls.options_cls and flag in cls.options_cls.flags()]
    if owners:
        return f"--{flag} is a flag of --method {' / '.join(owners)}, not of --method {method}"
    return f"unknown flag --{flag} for mimir-fast {task}"
