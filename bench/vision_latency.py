"""Dense against pruned forward-pass cost of KerasHub image classifiers, pairs of .keras files.

    .venv/bin/python bench/vision_latency.py IMAGES.npz DENSE.keras PRUNED.keras [DENSE2.keras PRUNED2.keras ...]

Each model is loaded with prunecli's KerasHub classes registered and called as one traced function on the
first 64 images of IMAGES.npz (its `x`). Reported per call: the process's CPU time (all threads) and the
wall time, each the least over 5 rounds of 20 calls, dense and pruned alternating round by round. On a
machine shared with other jobs the CPU time is the steadier of the two: wall time also counts the waits
for a core.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

ROUNDS, CALLS, BATCH = 5, 20, 64


def traced(path: str):
    import keras
    import tensorflow as tf

    from prunecli.structure import transformer

    transformer.register_for_file(path)
    model = keras.saving.load_model(path, compile=False)
    return tf.function(lambda xs: model(xs, training=False))


def main(argv: list[str]) -> int:
    import numpy as np
    import tensorflow as tf

    images, files = argv[0], argv[1:]
    x = tf.constant(np.load(images)["x"][:BATCH])
    for dense_path, pruned_path in zip(files[0::2], files[1::2], strict=True):
        calls = [traced(dense_path), traced(pruned_path)]
        for call in calls:
            np.asarray(call(x))  # traced once before timing
        cpu, wall = [[], []], [[], []]
        for _ in range(ROUNDS):
            for i, call in enumerate(calls):
                c0, w0 = time.process_time(), time.perf_counter()
                for _ in range(CALLS):
                    np.asarray(call(x))
                cpu[i].append((time.process_time() - c0) / CALLS * 1000)
                wall[i].append((time.perf_counter() - w0) / CALLS * 1000)
        (cd, cp), (wd, wp) = (min(c) for c in cpu), (min(w) for w in wall)
        print(
            f"{pruned_path}: CPU {cd:.2f} -> {cp:.2f} ms (ratio {cp / cd:.3f}),"
            f" wall {wd:.2f} -> {wp:.2f} ms (ratio {wp / wd:.3f}), batch {BATCH}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
