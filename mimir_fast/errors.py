"""Errors that the CLI reports as one line, without a traceback.

``UserError`` (exit code 2) is bad input: a flag out of range, a missing data path, an image that does
not decode, a checkpoint that is corrupt or does not fit, an output folder that cannot be written.
``TrainingError`` (exit code 1) is a run that cannot go on, such as a diverged loss. ``ChecksFailed`` (exit
code 3) is an evaluation whose integrity checks failed. Any other exception is a bug and keeps its traceback.

Every class takes a single message string, so that a DataLoader worker can re-raise it in the main
process (it rebuilds the exception as ``cls(message_with_worker_traceback)``); ``one_line`` recovers
the original message from that text.
"""

from __future__ import annotations


class MimirFastError(Exception):
    """Base class of the errors the CLI reports as one line."""

    exit_code = 1


class UserError(MimirFastError):
    """Bad input from the user: reported as one line, exit code 2."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration value is unknown or out of range."""


class DataError(UserError):
    """A data path is missing or empty, or an image does not decode."""


class CheckpointError(UserError):
    """A checkpoint is corrupt, not a checkpoint, or does not fit the model."""


class TrainingError(MimirFastError):
    """The run cannot continue (for example the loss became non-finite)."""

    exit_code = 1


class ChecksFailed(MimirFastError):
    """An evaluation finished, but an integrity check failed: its numbers are not to be trusted (exit code 3)."""

    exit_code = 3


_WORKER_MARKER = "Original Traceback"


def one_line(exc: BaseException) -> str:
    """The exception's message as a single line.

    When a DataLoader worker raised the error, its text holds the worker's traceback; the original
    message is then the last line, ``module.Class: message``, and only ``message`` is kept.
    """
    text = str(exc)
    if _WORKER_MARKER in text:
        last = [ln for ln in text.splitlines() if ln.strip()][-1]
        head, sep, tail = last.partition(": ")
        text = tail if sep and head.rsplit(".", 1)[-1] == type(exc).__name__ else last
    return " ".join(text.split())
