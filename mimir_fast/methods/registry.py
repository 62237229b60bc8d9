"""The registered training methods, by command (``pretrain``, ``finetune``) and ``--method`` name."""

from __future__ import annotations

from ..errors import ConfigError
from ..train.method import Method

_METHODS: dict[str, dict[str, type[Method]]] = {"pretrain": {}, "finetune": {}}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` available as ``--method cls.name`` of ``mimir-fast cls.task``."""
    table = _METHODS[cls.task]
    if cls.name in table:
        raise ValueError(f"method {cls.task}/{cls.name} is registered twice")
    table[cls.name] = cls
    return cls


def method_class(task: str, name: str) -> type[Method]:
    """The method ``name`` of ``task``; an unknown name is a ``ConfigError`` listing the choices."""
    table = _METHODS[task]
    if name not in table:
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(table)}")
    return table[name]


def method_classes(task: str) -> dict[str, type[Method]]:
    """Every method of ``task``, in registration order."""
    return dict(_METHODS[task])
