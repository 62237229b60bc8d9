"""What every config dataclass shares: range checks that raise ``ConfigError``, the docstring under each field
(the CLI's help), ``to_dict``, and the data source a config names (``data`` and ``data_path``)."""

from __future__ import annotations

import ast
import inspect
from dataclasses import asdict, fields, is_dataclass
from functools import cache
from typing import ClassVar

from .errors import ConfigError


def check(ok: bool, message: str) -> None:
    """Raise ``ConfigError(message)`` unless ``ok``."""
    if not ok:
        raise ConfigError(message)


def choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise a ``ConfigError`` naming the choices unless ``value`` is one of them."""
    check(value in choices, f"unknown {name} {value!r}; choose one of: {', '.join(choices)}")


def in_unit_interval(name: str, value: float) -> None:
    """``value`` in [0, 1)."""
    check(0.0 <= value < 1.0, f"{name} must be in [0, 1), got {value}")


def at_least(name: str, value: float | None, low: float, unit: str = "") -> None:
    """``value`` >= ``low`` (None passes: an optional field left unset)."""
    check(value is None or value >= low, f"{name} must be >= {low:g}{unit}, got {value}")


def positive(name: str, value: float | None) -> None:
    """``value`` > 0 (None passes)."""
    check(value is None or value > 0, f"{name} must be > 0, got {value}")


class Config:
    """Base of the config dataclasses: ``validate`` runs on creation; ``to_dict`` is what is saved."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Range checks; raise ``ConfigError``. Subclasses extend this."""

    def to_dict(self) -> dict:
        """A plain dict of the fields."""
        return asdict(self)


class DataSource:
    """A config with ``data`` (auto, digits, ..., folder) and ``data_path`` fields."""

    data: str
    data_path: str | None

    @property
    def data_kind(self) -> str:
        """The data source after resolving ``auto``: folder when ``data_path`` is set, else digits."""
        if self.data != "auto":
            return self.data
        return "folder" if self.data_path else "digits"


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Map each field of a dataclass (inherited ones too) to the docstring written under it; the most
    derived class's docstring wins."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not is_dataclass(klass) or klass is object:
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for stmt, nxt in zip(body, body[1:]):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(nxt.value.value.split())
    return {f.name: docs.get(f.name, "") for f in fields(cls)}


class Options(Config):
    """A method's own settings, one dataclass per method. Each field is the CLI flag ``FLAG_PREFIX + name``
    unless ``FLAG_NAMES`` names it otherwise; checkpoints and ``config.json`` store the flags flat, beside
    the shared fields."""

    FLAG_PREFIX: ClassVar[str] = ""
    FLAG_NAMES: ClassVar[dict[str, str]] = {}

    @classmethod
    def flags(cls) -> dict[str, str]:
        """Flag name -> field name, in field order."""
        return {cls.FLAG_NAMES.get(f.name, cls.FLAG_PREFIX + f.name): f.name for f in fields(cls)}

    def to_flags(self) -> dict:
        """The settings keyed by flag name."""
        return {flag: getattr(self, name) for flag, name in self.flags().items()}

    @classmethod
    def from_flags(cls, values: dict) -> Options:
        """The options set by the flags in ``values`` (other keys are ignored; missing flags keep defaults)."""
        return cls(**{name: values[flag] for flag, name in cls.flags().items() if flag in values})
