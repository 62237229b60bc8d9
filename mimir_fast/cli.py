"""The ``mimir-fast`` command.

- ``mimir-fast pretrain [--preset NAME] [--method NAME] [--flag value ...]``: pretraining (mimir, mae, nim, maep);
  with no arguments it trains the tiny embedded ``digits`` default.
- ``mimir-fast finetune [--finetune CKPT] [--method NAME] ...``: fine-tuning of a classifier (pgd, trades, clean,
  de3).
- ``mimir-fast eval --resume CKPT [--attacks ...]``: robustness evaluation with integrity checks.
- ``mimir-fast export --resume CKPT --output FILE [--encoder_only]``: weights for timm or other tools.
- ``mimir-fast demo``: the whole pipeline on the embedded digits, with a comparison table.
- ``mimir-fast doctor [--out DIR]``: what works on this machine and how fast (docs/doctor.md).

Flags are the fields of the command's config class (MAE's and MIMIR's flag names) and, for pretrain and finetune,
each method's options, grouped under the method in ``--help``. Bad input ends with one line on stderr and exit
code 2 (``errors.py``).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from dataclasses import fields

from .configs import field_docs
from .errors import MimirFastError, one_line
from .flags import Parser, add_config_flags, add_flag


def _add_method_flags(parser: argparse.ArgumentParser, task: str, default: str) -> None:
    """Each registered method of ``task`` with its own flags, in a help group of its own."""
    from .methods import method_classes

    classes = method_classes(task)
    for name in sorted(classes, key=lambda n: n != default):
        cls = classes[name]
        group = parser.add_argument_group(f"--method {name}{' (default)' if name == default else ''}", cls.summary)
        if cls.options_cls is None:
            continue
        docs = field_docs(cls.options_cls)
        by_name = {f.name: f for f in fields(cls.options_cls)}
        for flag, field_name in cls.options_cls.flags().items():
            f = by_name[field_name]
            add_flag(group, flag, f.type, docs.get(field_name, ""), f.default)


def build_parser() -> argparse.ArgumentParser:
    from .demo import DemoConfig
    from .doctor import DoctorConfig
    from .evaluate.config import EvalConfig
    from .export import ExportConfig
    from .train.config import FinetuneConfig, PretrainConfig

    parser = Parser(prog="mimir-fast", description="Fast MIMIR pretraining for robust Vision Transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    pretrain = sub.add_parser(
        "pretrain",
        help="pretraining of a masked autoencoder (no arguments: MIMIR on the embedded digits)",
        description="Pretrain a masked autoencoder with --method (each method's own flags are listed under it; "
        "the other flags are shared). Explicit flags override the preset and the method's defaults.",
    )
    add_config_flags(pretrain, PretrainConfig)
    _add_method_flags(pretrain, "pretrain", PretrainConfig.method)
    finetune = sub.add_parser(
        "finetune",
        help="adversarial fine-tuning of a classifier (--finetune CKPT: from a pretraining checkpoint)",
        description="Fine-tune a ViT classifier with --method, from a pretraining checkpoint's encoder (--finetune) "
        "or from scratch (each method's own flags are listed under it; the other flags are shared).",
    )
    add_config_flags(finetune, FinetuneConfig)
    _add_method_flags(finetune, "finetune", FinetuneConfig.method)
    evaluate = sub.add_parser(
        "eval",
        help="robustness evaluation of a classifier: clean, PGD-20/100, AutoAttack, PGD-MI, with integrity checks",
        description="Evaluate a classifier checkpoint (fp32, eval mode): clean accuracy, PGD-20 and PGD-100, "
        "AutoAttack "
        "(fra31 standard or rand), MIMIR's adaptive PGD-MI, a PGD-20 robust-accuracy curve, and integrity checks. "
        "Shards examples across ranks under torchrun.",
    )
    add_config_flags(evaluate, EvalConfig)
    exporter = sub.add_parser(
        "export",
        help="write a classifier's weights for timm (or an encoder-only file)",
        description="Export a classifier state_dict that loads strict into timm's "
        "VisionTransformer(global_pool='avg'), "
        "or with --encoder_only the transformer trunk in MAE's {'model': ...} layout.",
    )
    add_config_flags(exporter, ExportConfig)
    demo = sub.add_parser(
        "demo",
        help="the whole pipeline on the embedded digits: MIMIR vs MAE pretraining vs scratch, fine-tuned and attacked",
        description="Pretrain (MIMIR, MAE), adversarially fine-tune (also from scratch) and evaluate on the embedded "
        "digits, then print a comparison table.",
    )
    add_config_flags(demo, DemoConfig)
    doctor = sub.add_parser(
        "doctor",
        help="what works on this machine, and how fast: kernel checks, dispatch records, step benchmarks, targets",
        description="Validate every Triton kernel against a float64 reference and time it against the eager and "
        "compiled references, write the dispatch records, and on a GPU run the GPU tests and the step benchmarks "
        "and end with a pass/fail line per performance target (docs/doctor.md).",
    )
    add_config_flags(doctor, DoctorConfig)
    return parser


def _train(args: argparse.Namespace) -> None:
    from .distributed import dist_env, quiet_unless_main
    from .methods import build_config, create_method
    from .train.runner import run

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "preset")}
    cfg = build_config(getattr(args, "preset", "digits"), args.command, **flags)
    method = create_method(cfg)
    with quiet_unless_main(dist_env()):  # under torchrun only rank 0 prints
        print(f"preset {cfg.preset}: {cfg.model}, {cfg.input_size} px, patch {cfg.patch_size}, {cfg.epochs} epochs")
        print(run(method).line())


def _eval(args: argparse.Namespace) -> None:
    from .errors import ChecksFailed
    from .evaluate.config import EvalConfig
    from .evaluate.run import failed_checks, run_eval

    cfg = EvalConfig(**{k: v for k, v in vars(args).items() if k != "command"})
    failed = failed_checks(run_eval(cfg))
    if failed and not cfg.allow_failed_checks:
        raise ChecksFailed(f"integrity check(s) failed: {', '.join(failed)}; the numbers above are not to be trusted "
                           "(see the report; --allow_failed_checks exits 0)")


def _export(args: argparse.Namespace) -> None:
    from .export import ExportConfig, export

    print(f"wrote {export(ExportConfig(**{k: v for k, v in vars(args).items() if k != 'command'}))}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(**{k: v for k, v in vars(args).items() if k != "command"}))


class Terminated(KeyboardInterrupt):
    """SIGTERM (a cluster's scheduler stopping the job), raised where the process is, like Ctrl-C's interrupt."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import DoctorConfig, run_doctor

    return run_doctor(DoctorConfig(**{k: v for k, v in vars(args).items() if k != "command"}))["exit_code"]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mimir-fast``; returns the exit code."""
    args = build_parser().parse_args(argv)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if on_main_thread else None
    try:
        from .ops._dispatch import kernel_mode

        kernel_mode()  # a bad MIMIR_FAST_KERNELS fails here, before any work
        if args.command in ("pretrain", "finetune"):
            _train(args)
        elif args.command == "eval":
            _eval(args)
        elif args.command == "export":
            _export(args)
        elif args.command == "demo":
            _demo(args)
        elif args.command == "doctor":
            return _doctor(args)
    except MimirFastError as e:
        _end_progress_line()
        # one write, so that the lines of several ranks sharing a stderr pipe do not interleave
        sys.stderr.write(f"mimir-fast: error: {one_line(e)}\n")
        sys.stderr.flush()
        return e.exit_code
    except Terminated:
        _end_progress_line()
        sys.stderr.write("mimir-fast: terminated by SIGTERM (checkpoints already written are intact)\n")
        return 143
    except KeyboardInterrupt:
        _end_progress_line()
        sys.stderr.write("mimir-fast: interrupted (checkpoints already written are intact)\n")
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


def _end_progress_line() -> None:
    """Start the error message on a line of its own when a progress bar is being redrawn on a terminal."""
    from .train.logger import Progress

    Progress.end_line()
