"""The ``mimir-fast`` command.

``mimir-fast pretrain [--preset NAME] [--flag value ...]``: MAE/MIMIR pretraining. Flags are the fields of
``PretrainConfig`` (MAE's and MIMIR's flag names); explicit flags override the preset. With no arguments
it trains the tiny embedded ``digits`` default.

Bad input (an unknown flag, model or preset, an out-of-range value, a missing data path, an image that
does not decode, a corrupt or incompatible checkpoint) ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from .errors import MimirFastError, one_line

_TYPES = {"int": int, "float": float, "str": str, "float | None": float, "str | None": str}


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    from .train.config import PretrainConfig, field_docs

    docs = field_docs(PretrainConfig)
    for f in fields(PretrainConfig):
        help_text = f"{docs.get(f.name, '')} (digits default: {f.default})"
        if f.type == "bool":
            parser.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=help_text)
        else:
            parser.add_argument(f"--{f.name}", type=_TYPES[f.type], default=argparse.SUPPRESS, help=help_text,
                                metavar=f.name.upper())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mimir-fast", description="Fast MIMIR pretraining for robust Vision Transformers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    pretrain = sub.add_parser(
        "pretrain",
        help="MAE/MIMIR pretraining (no arguments: the embedded digits demo)",
        description="MIMIR pretraining: MAE on PGD examples plus an HSIC penalty, or plain MAE (--method mae).",
    )
    _add_config_flags(pretrain)
    return parser


def _pretrain(args: argparse.Namespace) -> None:
    from .train.presets import build_config
    from .train.pretrain import run_pretrain

    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "preset")}
    cfg = build_config(getattr(args, "preset", "digits"), **overrides)
    print(f"preset {cfg.preset}: {cfg.model}, {cfg.input_size} px, patch {cfg.patch_size}, {cfg.epochs} epochs")
    summary = run_pretrain(cfg)
    print(summary.line())


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``mimir-fast``; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "pretrain":
            _pretrain(args)
    except MimirFastError as e:
        print(f"mimir-fast: error: {one_line(e)}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("mimir-fast: interrupted", file=sys.stderr)
        return 130
    return 0
