"""The training clock and the per-epoch progress display of fine-tuning (training/finetune.py)."""

from __future__ import annotations

import sys
import time

from prunecli.config import PruneConfig


class Stopwatch:
    """Training time only: mask re-scoring and stage evaluations are timed by their own phases."""

    def __init__(self):
        self.elapsed = 0.0
        self._since: float | None = None

    def _stop(self) -> None:
        if self._since is not None:
            self.elapsed += time.perf_counter() - self._since
            self._since = None

    def running(self):
        return _Span(self, pause=False)

    def paused(self):
        return _Span(self, pause=True)


class _Span:
    def __init__(self, watch: Stopwatch, pause: bool):
        self.watch, self.pause = watch, pause

    def __enter__(self):
        if self.pause:
            self.watch._stop()
        else:
            self.watch._since = time.perf_counter()

    def __exit__(self, *exc):
        if self.pause:
            self.watch._since = time.perf_counter()
        else:
            self.watch._stop()


class EpochProgress:
    """A Keras-like progress bar on a terminal; one line per epoch (through `say`) otherwise; --quiet: nothing."""

    WIDTH = 30

    def __init__(self, config: PruneConfig, say, stream=None):
        self.stream = stream or sys.stderr
        self.epochs = config.epochs
        self.say = say
        self.mode = "off" if config.quiet else ("bar" if self.stream.isatty() else "line")
        self._drawn = 0.0

    def begin(self, epoch: int, steps: int) -> None:
        self.epoch, self.steps, self.done, self.start = epoch, steps, 0, time.perf_counter()
        self._width = 0
        if self.mode == "bar":
            self.stream.write(f"Epoch {epoch}/{self.epochs}\n")

    def step(self, sums) -> None:
        """`sums`: the epoch's running sums so far (finetune._Sums); only `logs()` is read."""
        self.done += 1
        now = time.perf_counter()
        if self.mode == "bar" and now - self._drawn > 0.1:
            self._drawn = now
            elapsed = now - self.start
            eta = elapsed / self.done * max(self.steps - self.done, 0)
            self._draw(f"ETA: {eta:.0f}s", sums.logs())

    def end(self, logs: dict) -> None:
        seconds = time.perf_counter() - self.start
        if self.mode == "bar":
            self._draw(f"{seconds:.0f}s {1000 * seconds / max(self.done, 1):.0f}ms/step", logs)
            self.stream.write("\n")
            self.stream.flush()
        elif self.mode == "line":
            self.say(f"epoch {self.epoch}/{self.epochs} - {seconds:.1f}s - {_format(logs)}")

    def _draw(self, timing: str, logs: dict) -> None:
        filled = self.WIDTH * self.done // max(self.steps, 1)
        bar = "=" * max(filled - 1, 0) + (">" if filled < self.WIDTH else "=") + "." * (self.WIDTH - filled)
        width = len(str(self.steps))
        line = f"{self.done:>{width}}/{self.steps} [{bar[: self.WIDTH]}] - {timing} - {_format(logs)}"
        self.stream.write(f"\r{line}{' ' * max(self._width - len(line), 0)}")  # blank what a longer line left
        self._width = len(line)
        self.stream.flush()


def _format(logs: dict) -> str:
    parts = []
    for key, value in logs.items():
        parts.append(f"{key}: {value:.1%}" if key == "sparsity" else f"{key}: {value:.4f}")
    return " - ".join(parts)
