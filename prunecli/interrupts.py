"""Ctrl-C and SIGTERM: one clean stop (exit 130, no partial output), however the signal arrives.

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
import threading

_stop = threading.Event()


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
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def install() -> None:
    """SIGTERM and SIGINT both raise KeyboardInterrupt once and set the stop flag (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGTERM, _handler)
    signal.signal(signal.SIGINT, _handler)


def reset() -> None:
    """For tests running several commands in one process."""
    _stop.clear()


@contextlib.contextmanager
def handlers_kept():
    """Put prunecli's SIGTERM and SIGINT handlers back after native code that replaces them:
    TensorFlow's coordination service (--strategy multiworker) installs its own SIGTERM handler for
    preemption notices, which only records the signal, so a later SIGTERM would never stop the run."""
    kept = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        if threading.current_thread() is threading.main_thread():
            for sig, handler in kept.items():
                if handler is not None:
                    signal.signal(sig, handler)
