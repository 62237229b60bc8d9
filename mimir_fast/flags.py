"""Command-line flags from config dataclasses: one typed flag per field, with the field's docstring as its help,
and a parser that reports a usage error as one line (exit code 2)."""

from __future__ import annotations

import argparse
from dataclasses import fields

from .configs import field_docs

_TYPES = {"int": int, "float": float, "str": str, "int | None": int, "float | None": float, "str | None": str}


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def add_flag(group, flag: str, type_name: str, doc: str, default) -> None:
    """``--flag`` typed by ``type_name`` (a dataclass annotation); booleans get ``--no-flag`` too."""
    help_text = f"{doc} (default: {default})"
    if type_name == "bool":
        group.add_argument(f"--{flag}", action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                           help=help_text)
    else:
        group.add_argument(f"--{flag}", type=_TYPES[type_name], default=argparse.SUPPRESS, help=help_text,
                           metavar=flag.upper())


def add_config_flags(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """One flag per field of ``config_cls`` (a method's ``options`` field excepted); unset flags stay absent."""
    docs = field_docs(config_cls)
    for f in fields(config_cls):
        if f.name != "options":
            add_flag(parser, f.name, f.type, docs.get(f.name, ""), f.default)
