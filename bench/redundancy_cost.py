"""Where `--method redundancy`'s time goes on a large model (bench/STRUCTURED.md, adopt37, redcost37).

Saves keras.applications.ResNet50(weights=None) (or, with --model mobilenetv2, MobileNetV2 alpha 0.35)
at SIZE x SIZE x 3 with 10 classes and N random images (FOLDER/MODEL_SIZE.keras, FOLDER/rand_SIZE.npz
with x/y), then scores it as `--method redundancy` does (calibration/redundancy.channel_scores on 128
examples) and prints the capture of every reader's input Hessian (one forward pass per batch, or with
--per-reader one pass up to each reader, as before redcost37: the same scores), the inverses, each
greedy cluster's removal as it finishes, then the totals, the magnitude fallbacks, the float32
accumulators alive at once and the peak RSS:

    nice -n 10 .venv/bin/python bench/redundancy_cost.py FOLDER [--model resnet50] [--size 64] [--examples 256] [--per-reader] [--blas-threads] [--save S.npz]

The whole runs it was set beside are the CLI's (`/usr/bin/time -v`):

    prunecli prune FOLDER/resnet50_64.keras --target params=0.5 --data FOLDER/rand_64.npz --epochs 0 -o o.keras -r r.json
    ... the same with --method redundancy --no-reconstruct
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _chain(first, rest):
    yield first
    yield from rest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--model", choices=("resnet50", "mobilenetv2"), default="resnet50")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument(
        "--per-reader", action="store_true", help="one forward pass up to each reader (the old capture)"
    )
    parser.add_argument("--no-greedy", action="store_true", help="stop after the captures and inverses")
    parser.add_argument(
        "--blas-threads", action="store_true", help="leave NumPy's BLAS threads on in the greedy (as before greedy38)"
    )
    parser.add_argument("--save", type=Path, help="write the scores there (npz, one array per target) to compare runs")
    args = parser.parse_args()
    import keras
    import numpy as np

    from prunecli.calibration import capture
    from prunecli.calibration import redundancy as r
    from prunecli.structure.targets import select

    path, data_path = args.folder / f"{args.model}_{args.size}.keras", args.folder / f"rand_{args.size}.npz"
    if not path.exists():
        keras.utils.set_random_seed(0)
        shape = (args.size, args.size, 3)
        if args.model == "resnet50":
            model = keras.applications.ResNet50(weights=None, input_shape=shape, classes=10)
        else:
            model = keras.applications.MobileNetV2(weights=None, input_shape=shape, alpha=0.35, classes=10)
        model.save(path)
    if not data_path.exists():
        rng = np.random.default_rng(0)
        x = rng.random((args.examples, args.size, args.size, 3), dtype=np.float32)
        np.savez(data_path, x=x, y=rng.integers(0, 10, args.examples))
    model = keras.saving.load_model(path, compile=False)
    x = np.load(data_path)["x"]
    spent = {"passes": 0.0, "inverses": 0.0, "greedy": 0.0, "greedy CPU": 0.0}
    capture_all, reader_from, greedy = capture.capture_all, r._reader_from, r._greedy
    floats = [0]

    def timed_capture_all(captures, model, batches):
        floats[0] = sum(c.view.d_in**2 for c in captures)
        start = time.perf_counter()
        if args.per_reader:
            stats = [c.run(model, batches) for c in captures]
        else:
            stats = capture_all(captures, model, batches)
            first = next(stats, None)  # all the passes run before the first is yielded
            stats = [] if first is None else _chain(first, stats)
        spent["passes"] += time.perf_counter() - start
        print(f"passes for {len(captures)} readers: {spent['passes']:.1f} s", flush=True)
        yield from stats

    def timed_reader_from(*a):
        start = time.perf_counter()
        reader = reader_from(*a)
        spent["inverses"] += time.perf_counter() - start
        return reader

    def timed_greedy(roots, readers):
        if args.no_greedy:
            return dict.fromkeys(roots, 1.0)
        start, cpu = time.perf_counter(), time.process_time()
        names = [reader.name for reader in readers]
        out = greedy(roots, readers)
        spent["greedy"] += time.perf_counter() - start
        spent["greedy CPU"] += time.process_time() - cpu
        print(f"greedy {len(roots)} channels: {time.perf_counter() - start:.1f} s, readers {names}", flush=True)
        return out

    capture.capture_all, r._reader_from, r._greedy = timed_capture_all, timed_reader_from, timed_greedy
    if args.blas_threads:
        r.GREEDY_BLAS_THREADS = None
    batches = capture.take_examples([(x[i : i + 32], None) for i in range(0, len(x), 32)], 128)
    start, cpu = time.perf_counter(), time.process_time()
    scores, notes = r.channel_scores(model, select(model), batches)
    print(
        f"total {time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU: passes"
        f" {spent['passes']:.1f} s, inverses {spent['inverses']:.1f} s, greedy {spent['greedy']:.1f} s ({spent['greedy CPU']:.1f} s CPU)"
    )
    print(f"magnitude fallbacks: {len(notes)}", *notes[:5], sep="\n  ")
    print(f"readers' float32 accumulators {floats[0] * 4 / 2**20:.0f} MiB (alive at once unless --per-reader)")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")
    if args.save is not None:
        np.savez(args.save, **scores)


if __name__ == "__main__":
    main()
