"""One exception family; each error carries the exit code the CLI returns for it.

The exit codes are part of the command-line interface and are documented in the README.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: please report it
    USAGE = 2  # bad options or recipe (click uses 2 for its own usage errors too)
    BAD_INPUT = 3  # the model, data file or its contents cannot be used
    GATE_FAILED = 4  # a quality gate such as --max-accuracy-drop failed (the report is still written)
    OUTPUT = 5  # the output cannot be written, or would overwrite the input
    RESOURCE = 6  # not enough memory or disk for the job
    INTERRUPTED = 130  # Ctrl-C / SIGINT


class PruneCliError(Exception):
    """Base of every error prunecli reports to the user as one line."""

    exit_code: ExitCode = ExitCode.INTERNAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class UsageError(PruneCliError):
    exit_code = ExitCode.USAGE


class ConfigError(UsageError):
    """A recipe, option combination or environment variable is invalid."""


class InputError(PruneCliError):
    exit_code = ExitCode.BAD_INPUT


class ModelLoadError(InputError):
    """The model file is missing, corrupt, unsupported or unsafe."""


class DataError(InputError):
    """The data file is missing, corrupt or does not fit the model."""


class GateFailed(PruneCliError):
    exit_code = ExitCode.GATE_FAILED


class OutputError(PruneCliError):
    exit_code = ExitCode.OUTPUT


class ResourceError(PruneCliError):
    exit_code = ExitCode.RESOURCE


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its class name), cut to `limit` characters: the
    part of a library's multi-line error that a one-line message can carry."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
