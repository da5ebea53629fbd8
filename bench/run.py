"""`make bench`: prunecli against tfmot, NumPy and plain Keras, in one run on one machine.

    python bench/run.py --output bench/RESULTS.md            # everything (about 10-20 minutes on 2 cores)
    python bench/run.py --only selection e2e --quick         # a quick look at two sections

Sections: selection (mask computation, first call beside NumPy: bench_selection.py), e2e (prune
ResNet50 vs Keras load+save, with and without sizes, peak memory), e2e_1b (the same on a 1.1B-parameter
KerasHub decoder: bench/cost_1b.py; not run unless named with --only), memory (peak RSS vs Keras on ResNet50
and a 100M-parameter model), multiworker (data-driven scores over two local workers vs one device),
startup, steps (masked vs dense training step), accuracy (prunecli vs tfmot after the same gradual
schedule), bigger (a 2 GB .keras and .h5; not run unless named with --only).
Each section's failure is reported in the results instead of stopping the others.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

SECTIONS = ("selection", "e2e", "e2e_1b", "memory", "multiworker", "startup", "steps", "accuracy", "bigger")
# bigger builds a 2 GB model twice; e2e_1b builds (once, kept in --work-1b) a 4.4 GB model and needs ~14 GiB:
# run them with --only
DEFAULT_SKIP = ("bigger", "e2e_1b")
HERE = Path(__file__).resolve().parent


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", "-o", type=Path, help="Markdown file to write (default: print only)")
    p.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections")
    p.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="leave these sections out")
    p.add_argument("--quick", action="store_true", help="fewer repeats and sizes (1M and 5M weights only)")
    p.add_argument(
        "--work-1b",
        type=Path,
        default=Path(tempfile.gettempdir()) / "prunecli_1b",
        help="where e2e_1b keeps its 4.4 GB model between runs (default: prunecli_1b in the temporary folder)",
    )
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    sys.path.insert(0, str(HERE))
    # This process starts with an empty XLA disk cache, so "first call" figures include the compile.
    cache = tempfile.mkdtemp(prefix="prunecli-bench-xla-")
    os.environ["TF_XLA_FLAGS"] = f"--tf_xla_persistent_cache_directory={cache}"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import bench_common

    chosen = [s for s in (args.only or [x for x in SECTIONS if x not in DEFAULT_SKIP]) if s not in args.skip]
    quick = args.quick
    started = time.perf_counter()
    load_before = bench_common.load_average()
    parts: list[tuple[str, str, float]] = []

    def section(name: str, title: str, fn):
        if name not in chosen:
            return
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            body = fn()
        except Exception as exc:  # keep the other sections' results
            body = f"Not measured: {type(exc).__name__}: {str(exc).strip()[:500]}\n\n```\n{traceback.format_exc()[-2000:]}\n```"
        elapsed = time.perf_counter() - t
        parts.append((title, body, elapsed))
        print(f"[bench] {name} done in {elapsed:.0f} s", file=sys.stderr, flush=True)

    def selection():
        import bench_selection

        sizes = (1_000_000, 5_000_000) if quick else (1_000_000, 5_000_000, 25_500_000)
        return bench_selection.run(sizes=sizes, repeats=3 if quick else 7)

    def e2e():
        import bench_e2e

        return bench_e2e.run(repeats=2 if quick else 3)

    def e2e_1b():
        import cost_1b

        rounds = 1 if quick else 2
        res = cost_1b.measure(args.work_1b, rounds)
        if res is None:
            raise RuntimeError(f"the 1.1B model could not be built in {args.work_1b}")
        return cost_1b.render(res, rounds, heading=False).replace(str(args.work_1b.resolve()), "$WORK")

    def memory():
        import bench_e2e

        return bench_e2e.memory(repeats=1 if quick else 2)

    def multiworker():
        import bench_e2e

        return bench_e2e.multiworker_scoring()

    def bigger():
        import bench_e2e

        return bench_e2e.bigger(gigabytes=2.0)

    def startup():
        import bench_e2e

        return bench_e2e.startup(repeats=3 if quick else 5)

    twin = {}

    def steps():
        import bench_training

        twin.setdefault("path", bench_training.make_twin())
        return bench_training.step_times(twin["path"])

    def accuracy_table():
        import bench_training

        twin.setdefault("path", bench_training.make_twin())
        sparsities = (0.5, 0.9) if quick else (0.5, 0.8, 0.9, 0.95)
        return bench_training.accuracy_table(twin["path"], sparsities=sparsities, epochs=3 if quick else 6)

    section("selection", "Mask computation: prunecli vs tfmot's top_k vs NumPy", selection)
    section("e2e", "prunecli prune on ResNet50 vs Keras alone (time and peak memory)", e2e)
    section("e2e_1b", "1B decoder: the default command vs Keras load + save", e2e_1b)
    section("memory", "Peak memory: prunecli prune vs Keras load+save (ResNet50, 100M parameters)", memory)
    section("multiworker", "Data-driven scoring over two workers vs one device", multiworker)
    section("bigger", "A 2 GB model (.keras and .h5)", bigger)
    section("startup", "Start-up time", startup)
    section("steps", "Fine-tuning step: masked vs dense, prunecli vs tfmot", steps)
    section("accuracy", "Accuracy after the same gradual schedule: prunecli vs tfmot", accuracy_table)

    import tensorflow as tf

    info = bench_common.machine()
    try:
        from importlib.metadata import version

        tfmot_version = version("tensorflow-model-optimization")
    except Exception:
        tfmot_version = "?"
    import keras

    lines = [
        "# prunecli benchmarks",
        "",
        f"Generated by `python bench/run.py{' --quick' if quick else ''}"
        f"{' --only ' + ' '.join(args.only) if args.only else ''}` on "
        f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, in {time.perf_counter() - started:.0f} s.",
        "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['memory']} RAM; Python {info['python']}, "
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, tfmot {tfmot_version}.",
        f"Load average (1/5/15 min) before: {load_before}; after: {bench_common.load_average()}. "
        "Other work on the machine makes every figure slower and noisier; ratios within one section are"
        " measured side by side and hold up better than absolute times.",
        "",
    ]
    for title, body, elapsed in parts:
        lines += [f"## {title}", "", body, "", f"_(section took {elapsed:.0f} s)_", ""]
    text = "\n".join(lines)
    if args.output:
        args.output.write_text(text, encoding="utf-8")
        print(f"[bench] wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
