"""CPU seconds per phase of one run, for a machine too busy for wall times: Keras' own load + save of a
model, or `prunecli prune MODEL -s 0.5` (extra options after the model), in this fresh process.

    .venv/bin/python bench/cost_phases.py keras MODEL
    .venv/bin/python bench/cost_phases.py prune MODEL [OPTIONS ...]

Prints one JSON line: per phase [wall, CPU of every thread (time.process_time), CPU of the main thread
(time.thread_time)], in seconds. prunecli's phases are its report's (load, score, save, sizes, ...; the
mask's share is "score+mask" less "score"), "total" runs from the CLI's entry (its start-up checks too,
which the report's total leaves out), and "other" is what the listed phases leave of it. The machine's
1-minute load average is printed beside them. bench/COST.md's session-37 section alternates runs of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _now() -> tuple[float, float, float]:
    return time.perf_counter(), time.process_time(), time.thread_time()


def _spent(start, end) -> list[float]:
    return [round(b - a, 3) for a, b in zip(start, end, strict=True)]


def main(argv: list[str]) -> int:
    mode, model, extra = argv[0], argv[1], argv[2:]
    work = Path(tempfile.mkdtemp(prefix="cost_phases_"))
    out: dict[str, list[float]] = {}
    if mode == "keras":
        import keras

        start = _now()
        loaded = keras.saving.load_model(model)
        loaded_at = _now()
        loaded.save(work / "k.keras")
        out.update(load=_spent(start, loaded_at), save=_spent(loaded_at, _now()), total=_spent(start, _now()))
    else:
        import keras  # noqa: F401 - imported before the clock starts, as Keras' side is
        import tensorflow  # noqa: F401

        import prunecli.cli as cli
        from prunecli.outputs import report
        from prunecli.run import steps

        @contextlib.contextmanager
        def phase(timings, name):
            start = _now()
            try:
                yield
            finally:
                end = _now()
                timings[name] = timings.get(name, 0.0) + end[0] - start[0]
                out[name] = [round(a + b, 3) for a, b in zip(out.get(name, [0.0] * 3), _spent(start, end), strict=True)]

        report.Timings.phase = phase
        oneshot = steps.prune_oneshot

        def prune_oneshot(*args, **kwargs):
            with phase({}, "score+mask"):
                return oneshot(*args, **kwargs)

        steps.prune_oneshot = prune_oneshot
        sys.argv = ["prunecli", "prune", model, "-s", "0.5", "-o", str(work / "p.keras"), "-q"]
        sys.argv += ["--report", str(work / "r.json"), *extra]
        start = _now()
        try:
            cli.main()
        except SystemExit as exc:
            if exc.code:
                raise
        out["total"] = _spent(start, _now())
        listed = [v for k, v in out.items() if k not in ("total", "score")]
        out["other"] = [round(t - sum(v[i] for v in listed), 3) for i, t in enumerate(out["total"])]
    shutil.rmtree(work, ignore_errors=True)
    out = {k: v for k, v in out.items() if any(v)}  # "mask": the chunked path times it without a phase
    print(json.dumps({"mode": mode, "load_average_1min": round(os.getloadavg()[0], 2), **out}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
