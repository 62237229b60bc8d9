"""The ``mimir-fast`` command.

- ``mimir-fast pretrain [--preset NAME] [--flag value ...]``: MAE/MIMIR pretraining; with no arguments it
  trains the tiny embedded ``digits`` default.
- ``mimir-fast finetune [--finetune CKPT] ...``: adversarial fine-tuning of a classifier.
- ``mimir-fast eval --resume CKPT [--attacks ...]``: robustness evaluation with integrity checks.
- ``mimir-fast export --resume CKPT --output FILE [--encoder_only]``: weights for timm or other tools.
- ``mimir-fast demo``: the whole pipeline on the embedded digits, with a comparison table.

Flags are the fields of the command's config class (MAE's and MIMIR's flag names); explicit flags override
the preset.

Bad input (an unknown flag, model or preset, an out-of-range value, a missing data path, an image that
does not decode, a corrupt or incompatible checkpoint) ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .errors import MimirFastError, one_line

_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per config field, typed from its annotation, with the field's docstring as help."""
    from .train.config import field_docs

    docs = field_docs(config_cls)
    for f in fields(config_cls):
        help_text = f"{docs.get(f.name, '')} (default: {f.default})"
        if f.type == "bool":
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=_TYPES[f.type], default=argparse.SUPPRESS, help=help_text,
                                metavar=f.name.upper())


def build_parser() -> argparse.ArgumentParser:
    from .demo import DemoConfig
    from .evaluate.config import EvalConfig
    from .export import ExportConfig
    from .train.config import FinetuneConfig, PretrainConfig

    parser = _Parser(prog="mimir-fast", description="Fast MIMIR pretraining for robust Vision Transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    pretrain = sub.add_parser(
        "pretrain",
        help="MAE/MIMIR/NIM/MAEP pretraining (no arguments: the embedded digits demo)",
        description="MIMIR pretraining: MAE on PGD examples plus an HSIC penalty; or plain MAE (--method mae), the NIM "
        "denoising autoencoder (--method nim) or the MAEP purifier (--method maep, stage 2 with --maep_stage lora).",
    )
    _add_config_flags(pretrain, PretrainConfig)
    finetune = sub.add_parser(
        "finetune",
        help="adversarial fine-tuning of a classifier (--finetune CKPT: from a pretraining checkpoint)",
        description="Adversarial fine-tuning (PGD-AT or TRADES; --method clean: none; --method de3: on De^3 "
        "reconstructions of a NIM --purifier) of a ViT classifier, from a MAE/MIMIR/NIM pretraining checkpoint "
        "(--finetune) or from scratch.",
    )
    _add_config_flags(finetune, FinetuneConfig)
    evaluate = sub.add_parser(
        "eval",
        help="robustness evaluation of a classifier: clean, PGD-20/100, AutoAttack, PGD-MI, with integrity checks",
        description="Evaluate a classifier checkpoint (fp32, eval mode): clean accuracy, PGD-20 and PGD-100, "
        "AutoAttack "
        "(fra31 standard or rand), MIMIR's adaptive PGD-MI, a PGD-20 robust-accuracy curve, and integrity checks. "
        "Shards examples across ranks under torchrun.",
    )
    _add_config_flags(evaluate, EvalConfig)
    exporter = sub.add_parser(
        "export",
        help="write a classifier's weights for timm (or an encoder-only file)",
        description="Export a classifier state_dict that loads strict into timm's "
        "VisionTransformer(global_pool='avg'), "
        "or with --encoder_only the transformer trunk in MAE's {'model': ...} layout.",
    )
    _add_config_flags(exporter, ExportConfig)
    demo = sub.add_parser(
        "demo",
        help="the whole pipeline on the embedded digits: MIMIR vs MAE pretraining vs scratch, fine-tuned and attacked",
        description="Pretrain (MIMIR, MAE), adversarially fine-tune (also from scratch) and evaluate on the embedded "
        "digits, then print a comparison table.",
    )
    _add_config_flags(demo, DemoConfig)
    return parser


def _train(args: argparse.Namespace) -> None:
    from .distributed import dist_env, quiet_unless_main
    from .train.finetune import run_finetune
    from .train.presets import FINETUNE_PRESETS, PRESETS, build_config
    from .train.pretrain import run_pretrain

    registry, runner = (PRESETS, run_pretrain) if args.command == "pretrain" else (FINETUNE_PRESETS, run_finetune)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "preset")}
    cfg = build_config(getattr(args, "preset", "digits"), registry, **overrides)
    with quiet_unless_main(dist_env()):  # under torchrun only rank 0 prints
        print(f"preset {cfg.preset}: {cfg.model}, {cfg.input_size} px, patch {cfg.patch_size}, {cfg.epochs} epochs")
        print(runner(cfg).line())


def _eval(args: argparse.Namespace) -> None:
    from .evaluate.config import EvalConfig
    from .evaluate.run import run_eval

    run_eval(EvalConfig(**{k: v for k, v in vars(args).items() if k != "command"}))


def _export(args: argparse.Namespace) -> None:
    from .export import ExportConfig, export

    print(f"wrote {export(ExportConfig(**{k: v for k, v in vars(args).items() if k != 'command'}))}")


def _demo(args: argparse.Namespace) -> None:
    from .demo import DemoConfig, run_demo

    run_demo(DemoConfig(**{k: v for k, v in vars(args).items() if k != "command"}))


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mimir-fast``; returns the exit code."""
    args = build_parser().parse_args(argv)
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
    except MimirFastError as e:
        # one write, so that the lines of several ranks sharing a stderr pipe do not interleave
        sys.stderr.write(f"mimir-fast: error: {one_line(e)}\n")
        sys.stderr.flush()
        return e.exit_code
    except KeyboardInterrupt:
        print("mimir-fast: interrupted", file=sys.stderr)
        return 130
    return 0
