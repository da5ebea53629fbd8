"""Where `--method redundancy`'s time goes on a large model (bench/STRUCTURED.md, adopt37).

Saves keras.applications.ResNet50(weights=None) at SIZE x SIZE x 3 with 10 classes and N random images
(FOLDER/resnet50_SIZE.keras, FOLDER/rand_SIZE.npz with x/y), then scores it as `--method redundancy`
does (calibration/redundancy.channel_scores on 128 examples) and prints, as they finish, each reader's
capture (its input Hessian, one forward pass up to it, and the inverse) and each greedy cluster's
removal, then the totals, the magnitude fallbacks and the peak RSS:

    nice -n 10 .venv/bin/python bench/redundancy_cost.py FOLDER [--size 64] [--examples 256]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--examples", type=int, default=256)
    args = parser.parse_args()
    import keras
    import numpy as np

    from prunecli.calibration import capture
    from prunecli.calibration import redundancy as r
    from prunecli.structure.targets import select

    path, data_path = args.folder / f"resnet50_{args.size}.keras", args.folder / f"rand_{args.size}.npz"
    if not path.exists():
        keras.utils.set_random_seed(0)
        model = keras.applications.ResNet50(weights=None, input_shape=(args.size, args.size, 3), classes=10)
        model.save(path)
        rng = np.random.default_rng(0)
        x = rng.random((args.examples, args.size, args.size, 3), dtype=np.float32)
        np.savez(data_path, x=x, y=rng.integers(0, 10, args.examples))
    model = keras.saving.load_model(path, compile=False)
    x = np.load(data_path)["x"]
    spent = {"capture": 0.0, "greedy": 0.0}
    capture_reader, greedy = r._capture_reader, r._greedy

    def timed_capture(model, call, view, batches, wanted, g):
        start = time.perf_counter()
        reader = capture_reader(model, call, view, batches, wanted, g)
        spent["capture"] += time.perf_counter() - start
        width = None if reader is None else reader.hinv.shape[0]
        print(f"capture {call.name}: {time.perf_counter() - start:.1f} s, {width} inputs", flush=True)
        return reader

    def timed_greedy(roots, readers):
        start = time.perf_counter()
        names = [reader.name for reader in readers]
        out = greedy(roots, readers)
        spent["greedy"] += time.perf_counter() - start
        print(f"greedy {len(roots)} channels: {time.perf_counter() - start:.1f} s, readers {names}", flush=True)
        return out

    r._capture_reader, r._greedy = timed_capture, timed_greedy
    batches = capture.take_examples([(x[i : i + 32], None) for i in range(0, len(x), 32)], 128)
    start = time.perf_counter()
    _scores, notes = r.channel_scores(model, select(model), batches)
    print(
        f"total {time.perf_counter() - start:.1f} s: capture {spent['capture']:.1f} s, greedy {spent['greedy']:.1f} s"
    )
    print(f"magnitude fallbacks: {len(notes)}", *notes[:5], sep="\n  ")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MiB")


if __name__ == "__main__":
    main()
