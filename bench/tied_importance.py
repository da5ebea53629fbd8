"""A tied channel's importance summed over the layers that make it, as its cost is (bench/STRUCTURED.md).

`--target` allocates channels by importance over what a step saves (selection/budget.py). For a tied
set (a residual stream's Add, an expand conv and the depthwise conv it feeds) the saving counts every
member layer that loses the channel, but the importance is the *mean* over those members
(tied.ScoreSet.combined): a stream made by three layers looks three times cheaper per parameter than
a plain layer with the same scores. This script measures the consistent alternative, importance
summed over the members that make each channel (the mean times their number), against the default,
on the nets `bench/mct_peer.py` trained and saved (its folder: `*.keras` and `mnist.npz`), at the
parameter goals that bench gave prunecli, with the default command (`--target params=P --epochs 2`,
refit and distillation on) per seed. The alternative is patched into budget._normalised here; the
product is unchanged.

    .venv/bin/python bench/tied_importance.py FOLDER --goal mobilenet_v2=0.8987 --goal resnet=0.7418 \
        [--seeds 0 1 2] [--variant default summed]

Prints one JSON line per run: net, variant, seed, params, one-shot or fine-tuned accuracy, and the
channels each layer kept.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import structured_table as st  # noqa: E402

from prunecli.selection import budget  # noqa: E402

DEFAULT_NORMALISED = budget._normalised


def summed_normalised(e, ranking, config):
    """budget._normalised with a tied set's importance multiplied by the number of members that make
    each channel: summed over them, as the walk's saving is."""
    weight = DEFAULT_NORMALISED(e, ranking, config)
    if e.index is None:
        return weight
    makers = np.zeros(e.size)
    for m in e.members:
        makers += np.bincount(e.index[m.target.name], minlength=e.size) > 0
    return weight * np.maximum(makers, 1)


def run(model: Path, data: Path, out: Path, seed: int, epochs: int, goal: str) -> dict:
    """The default `--target` command on `model` (structured_table.run, no latency timing): the
    parameters kept, the accuracy after fine-tuning (one-shot when `epochs` is 0) and the channels cut."""
    found = st.run(model, data, out, seed, epochs, latency=False, target=goal)
    accuracy = found["pruned"] if found["tuned"] is None else found["tuned"]
    return {"params": found["params"], "accuracy": accuracy, "cut": found["cut"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--goal", action="append", required=True, help="NET=FRACTION (the .keras file's stem)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", nargs="+", default=["summed"], choices=["default", "summed"])
    parser.add_argument("--oneshot-only", action="store_true", help="seed 0 one-shot runs only (the allocation)")
    args = parser.parse_args()
    data, out = args.folder / "mnist.npz", args.folder / "tied.keras"
    for item in args.goal:
        net, fraction = item.split("=")
        model = args.folder / f"{net}.keras"
        for variant in args.variant:
            budget._normalised = summed_normalised if variant == "summed" else DEFAULT_NORMALISED
            runs = [("oneshot", args.seeds[0], 0)]
            if not args.oneshot_only:
                runs += [("tuned", s, st.EPOCHS) for s in args.seeds]
            for kind, seed, epochs in runs:
                found = run(model, data, out, seed, epochs, f"params={fraction}")
                print(json.dumps({"net": net, "variant": variant, "run": kind, "seed": seed, **found}), flush=True)
    budget._normalised = DEFAULT_NORMALISED


if __name__ == "__main__":
    main()
