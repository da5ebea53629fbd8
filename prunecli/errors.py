"""One exception family; each error carries the exit code the CLI returns for it.

The exit codes are part of the command-line interface and are documented in the README.
"""

from __future__ import annotations

import enum
import errno
import functools
import os
import re


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1  # a bug: please report it
    USAGE = 2  # bad options or recipe (click uses 2 for its own usage errors too)
    BAD_INPUT = 3  # the model, data file or its contents cannot be used
    GATE_FAILED = 4  # a quality gate such as --max-accuracy-drop failed (the report is still written)
    OUTPUT = 5  # the output cannot be written, or would overwrite the input
    RESOURCE = 6  # not enough memory or disk for the job
    EXPORT = 7  # the model cannot be converted to an --export format (nothing is saved)
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


STREAMED_CHECK = "prunecli data check: "  # heads the message of a check a streamed dataset runs on each batch
# what TensorFlow's image decoders say of a damaged file (an image folder's; Keras decodes them mid-run)
IMAGE_DECODER_FAILURES = ("Invalid PNG", "Invalid JPEG", "Unknown image file format", "Invalid GIF", "Invalid BMP")
RECORD_SCOPE = "prunecli_record_"  # a streamed format's record parser's graph scope; the file's path follows in hex


def record_scope(path) -> str:
    """The name scope a streamed format parses the records of `path` in. TensorFlow names the node
    that failed in its error, so a record that cannot be parsed in the middle of training or evaluation
    (past the batches checked before the work) can still be told from a bug, and name its file."""
    return RECORD_SCOPE + os.fsencode(str(path)).hex()


def streamed_data_error(exc: BaseException) -> DataError | None:
    """The DataError that a failure inside a streamed dataset stands for, or None. TensorFlow raises
    such a failure from the middle of training or evaluation as an InvalidArgumentError whose message
    holds, among its own lines, either a check's parts in brackets ("assertion failed: [prunecli data
    check: f: ... holds ] [5003]") or the node of a record parser (`record_scope`) that failed."""
    text = str(exc)
    at = text.find(STREAMED_CHECK)
    if at >= 0:
        parts = text[at + len(STREAMED_CHECK) :].splitlines()[0].replace("\\'", "'").split("] [")
        return DataError("".join(part.strip("[]") for part in parts).strip())
    parsed = re.search(RECORD_SCOPE + r"([0-9a-f]*)(?:_[0-9]+)?/", text)  # "_1": a scope TF made unique
    if parsed is None:
        decoder = next((said for said in IMAGE_DECODER_FAILURES if said in text), None)
        if decoder is not None:  # an image folder's file, decoded by Keras' own pipeline: its path is not known
            return DataError(f"an image of the --data folder cannot be decoded ({tensorflow_reason(text)})")
        return None
    path = os.fsdecode(bytes.fromhex(parsed.group(1)))
    return DataError(f"{path}: a record cannot be read as its spec describes ({tensorflow_reason(text)})")


def streamed_errors_raised(function):
    """`function` (a library entry point: prune, apply_plan, verify, a sweep, a plan) raising the
    DataError that a streamed dataset's failure mid-run stands for (`streamed_data_error`), as the CLI
    reports it, instead of TensorFlow's InvalidArgumentError."""

    @functools.wraps(function)
    def raising(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except PruneCliError:
            raise
        except Exception as exc:
            checked = streamed_data_error(exc)
            if checked is None:
                raise
            raise checked from exc

    return raising


def tensorflow_reason(text: str, limit: int = 200) -> str:
    """The line of a TensorFlow error message that says what went wrong, without the function and
    node names and the "Graph execution error" frame around it."""
    for line in text.splitlines():
        line = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", line.strip())
        if line and not line.startswith(("Graph execution error", "Detected at node", "<stack traces", "[[")):
            return line[:limit]
    return "unreadable record"


class GateFailed(PruneCliError):
    exit_code = ExitCode.GATE_FAILED


class OutputError(PruneCliError):
    exit_code = ExitCode.OUTPUT


class ResourceError(PruneCliError):
    exit_code = ExitCode.RESOURCE


class ExportError(PruneCliError):
    """A converter refused the model (an op the format lacks); the message names the ops."""

    exit_code = ExitCode.EXPORT


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (or its class name), cut to `limit` characters: the
    part of a library's multi-line error that a one-line message can carry."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no room on the disk, over a quota or a file-size limit


def write_error(target, exc: OSError) -> PruneCliError:
    """The error for a failed write of the user's `target` (never the temporary name it was written
    under): exit 6 when the disk, a quota or a file-size limit is full, else exit 5."""
    reason = exc.strerror or first_line(exc)
    if exc.errno in DISK_FULL:
        return ResourceError(f"not enough disk space to write {target} ({reason})")
    return OutputError(f"cannot write {target}: {reason}")
