"""Ctrl-C, SIGTERM and SIGHUP: one clean stop (exit 130, no partial output, the run's temporary folder
removed), however the signal arrives. SIGHUP is a closed terminal or a dropped ssh session, whose
default action kills the process where it stands; under `nohup` (SIGHUP ignored) it stays ignored.

Why a flag as well as an exception: a signal handler's KeyboardInterrupt can be raised where Python
swallows it (inside importlib's module-lock callback: "Exception ignored in: <function
_get_module_lock.<locals>.cb>"), and the run would go on and exit 0. The handler records the signal,
so the run stops at its next checkpoint (each progress line, each atomic rename) even then. A second
signal while the first is being handled is only recorded: raising again inside cleanup code is what
printed "Exception ignored".
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading

_stop = threading.Event()
_holding = threading.Event()  # inside held(): a stop is recorded, raised at the next checkpoint
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, name))


def requested() -> bool:
    return _stop.is_set()


def checkpoint() -> None:
    """Raise KeyboardInterrupt if a stop was requested (call between steps; cheap)."""
    if _stop.is_set():
        raise KeyboardInterrupt


def _handler(signum, _frame) -> None:
    if _stop.is_set():
        return  # already stopping: cleanup must not be interrupted again
    _stop.set()
    # Later signals are ignored by the kernel, not by a Python handler: Python puts its handlers back
    # to the default action while it shuts down, when a second SIGTERM would kill the process (-15).
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    if not _holding.is_set():
        raise KeyboardInterrupt


def install() -> None:
    """Each stop signal raises KeyboardInterrupt once and sets the stop flag (main thread only). SIGHUP
    already ignored (nohup) stays ignored; SIGINT and SIGTERM are taken even when ignored, as a shell
    ignores SIGINT for a command it runs in the background (`prunecli ... &`) and `kill -INT` must
    still stop it."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        if sig != getattr(signal, "SIGHUP", None) or signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _handler)
    if sys.unraisablehook is not _unraisable:
        _unraisable.previous = sys.unraisablehook
        sys.unraisablehook = _unraisable


def _unraisable(unraisable) -> None:
    """Python's hook for an exception it cannot raise (in a `__del__`, a weakref or gc callback), which
    it prints as "Exception ignored in: ..." and a traceback: a stop signal's KeyboardInterrupt that landed
    there (TensorFlow's `AtomicFunction.__del__` while a Ctrl-C'd run saved its model printed nine lines
    before the one) is the stop the handler recorded, and the run ends at its next checkpoint with its
    one line; anything else is printed as before."""
    if _stop.is_set() and issubclass(unraisable.exc_type, KeyboardInterrupt):
        return
    _unraisable.previous(unraisable)


_unraisable.previous = sys.__unraisablehook__


def reset() -> None:
    """For tests running several commands in one process."""
    _stop.clear()
    _completed.clear()


_completed: list = []  # outputs renamed into place while a stop was held (outputs_complete)


def outputs_complete(paths) -> None:
    """A stop that arrived while the outputs were being renamed lets the renames finish: the run still
    exits as interrupted, and its message names these outputs as complete, so that no one deletes
    (or distrusts) files that are whole and consistent with one another."""
    _completed[:] = [str(p) for p in paths]


def interrupted_message() -> str:
    """The one line a stopped command prints."""
    if not _completed:
        return "prunecli: interrupted"
    names = ", ".join(_completed[:4]) + (" ..." if len(_completed) > 4 else "")
    return f"prunecli: interrupted after its outputs were written; they are complete: {names}"


@contextlib.contextmanager
def handlers_kept():
    """Put prunecli's stop-signal handlers back after native code that replaces them:
    TensorFlow's coordination service (--strategy multiworker) installs its own SIGTERM handler for
    preemption notices, which only records the signal, so a later SIGTERM would never stop the run."""
    kept = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in kept.items():
                if handler is not None:
                    signal.signal(sig, handler)


@contextlib.contextmanager
def held():
    """A stop signal during the block is recorded, not raised: a few renames that must all happen or
    none (io/models/write.outputs_together). The run stops at its next checkpoint after the block, its
    outputs complete. (Blocking the signals would not do: TensorFlow's threads receive a signal the
    main thread blocks, and Python then runs the handler in the main thread anyway.)"""
    _holding.set()
    try:
        yield
    finally:
        _holding.clear()


def finished() -> None:
    """The command's work is done (its outputs committed, its report written): a stop signal from now
    on is ignored, so the run exits with its own status, not as interrupted."""
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            if signal.getsignal(sig) is _handler:
                signal.signal(sig, signal.SIG_IGN)
