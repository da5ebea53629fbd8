"""A channel score that sees redundancy (`--method redundancy`) against the default `--target` ranking (bench/STRUCTURED.md).

`--target` ranks every channel of the model together (selection/budget.py) by a per-channel score over
what removing it saves. The default score is magnitude (a filter's mean |w|), which cannot see that a
channel is a near copy of others: on the MobileNetV2-style net of `bench/mct_peer.py` it leaves `head`
(1x1, 32 -> 128, before pooling and the classifier) whole where Sony MCT cuts it 128 -> 32 and wins.
`--method redundancy` scores a channel by the relative output error its readers keep after the optimal
refit without it (OBS, greedy; calibration/redundancy.py). This script reruns the default command
`--target params=P --epochs 2` (refit and distillation on) per seed on the nets `bench/mct_peer.py`
trained and saved (a folder with `*.keras` and `mnist.npz`), with the score and `--normalize` of each
variant:

- default: `--method magnitude`, LAMP, refit (what `--target` uses by default);
- redundancy: `--method redundancy`, LAMP;
- redundancy-none: `--method redundancy --normalize none` (the relative errors compared as they are);
- redundancy-norefit / default-norefit: the same as redundancy / default with `--no-reconstruct`.

    .venv/bin/python bench/redundancy_score.py FOLDER --goal mobilenet_v2=0.8987 [--goal resnet=0.7418] \
        [--seeds 0 1 2 3 4] [--variant default redundancy redundancy-none] [--oneshot-only]

Prints one JSON line per run: net, variant, seed, params, one-shot or fine-tuned accuracy, the channels
each layer kept and the run's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import structured_table as st  # noqa: E402

# every variant names its method, so each means the same whatever `--target` picks by default (adopt39
# ran a code where the default moved: its "default" rows became the redundancy pair)
VARIANTS = {
    "default": {"method": "magnitude"},  # the refit stays on: on by default for --target with data
    "redundancy": {"method": "redundancy"},
    "redundancy-none": {"method": "redundancy", "normalize": "none"},
    "redundancy-norefit": {"method": "redundancy", "reconstruct": False},
    "default-norefit": {"method": "magnitude", "reconstruct": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--goal", action="append", required=True, help="NET=FRACTION (the .keras file's stem)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", nargs="+", default=["redundancy-none"], choices=list(VARIANTS))
    parser.add_argument("--oneshot-only", action="store_true", help="one-shot runs only (the allocation)")
    args = parser.parse_args()
    data, out = args.folder / "mnist.npz", args.folder / "redundancy.keras"
    for item in args.goal:
        net, fraction = item.split("=")
        model = args.folder / f"{net}.keras"
        for variant in args.variant:
            runs = [("oneshot", args.seeds[0], 0)]
            if not args.oneshot_only:
                runs += [("tuned", s, st.EPOCHS) for s in args.seeds]
            for kind, seed, epochs in runs:
                found = st.run(model, data, out, seed, epochs, False, target=f"params={fraction}", **VARIANTS[variant])
                accuracy = found["pruned"] if found["tuned"] is None else found["tuned"]
                row = {"net": net, "variant": variant, "run": kind, "seed": seed, "params": found["params"]}
                row.update(accuracy=accuracy, cut=found["cut"], seconds=round(found["seconds"], 1))
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
