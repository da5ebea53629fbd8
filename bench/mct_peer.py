"""Sony MCT 2.6.1 against prunecli at the weights-memory budgets MCT can reach (bench/STRUCTURED.md).

MCT refuses 0.5x and 0.25x on the three nets of bench/structured_table.py: its pruning sections stop at
about 0.61x of the weights memory on the VGG-style net, 0.84x on the ResNet-style net and 0.97x on the
MobileNetV2-style net (its refusals there name the memory it can reach). So this script compares at
budgets it does reach: each net is trained as bench/structured_table.py trains it (same data, seed,
epochs), then for each fraction F in FRACTIONS:

- MCT: `mct.pruning.keras_pruning_experimental` at F of the float32 weights memory (bench/mct_prune.py,
  in its own venv with TensorFlow 2.15), then 2 epochs of plain Keras fine-tuning per seed (Adam 1e-3),
  as in bench/structured_table.py;
- prunecli's default command `prune MODEL --target params=P --data D --epochs 2` (which refits and
  distils by default), and the same with `--no-reconstruct --distill off` (plain fine-tuning, MCT's
  recipe), per seed; and its one-shot model (no fine-tuning, the refit on). MCT lands below the weights
  memory it is given; P is the parameter fraction it reached over (1 - TOLERANCE), so that prunecli, which
  lands in [P * (1 - TOLERANCE), P], keeps at least as many parameters as MCT (at most 2% more).

Accuracy on the 1,000 held-out images; fine-tuned cells are mean ± half the range over the seeds.

    .venv/bin/python bench/mct_peer.py [--seeds 0 1 2] [--models "VGG (BN, same)" "ResNet-style"]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))
import structured_table as st  # noqa: E402
from bench_common import load_average, machine, mnist_subset, replace_section  # noqa: E402

from prunecli.config.target import TOLERANCE  # noqa: E402

HEADING = "## Sony MCT at the budgets it reaches"
# the fractions of the weights memory MCT reaches on each net (above its floor, see the docstring)
FRACTIONS = {"VGG (BN, same)": (0.8,), "ResNet-style": (0.9,), "MobileNetV2-style": (0.98,)}


def measure(label: str, seeds, folder: Path, data: Path, splits) -> dict:
    """One net: dense accuracy, and per fraction MCT's and prunecli's runs."""
    from bench_common import accuracy

    (xt, yt), (xv, yv) = splits
    model = st.train(st.MODELS[label], xt, yt, 8)
    path = folder / f"{st.MODELS[label].__name__}.keras"
    model.save(path)
    h5 = st.keras2_copy(st.MODELS[label], model, folder / f"{st.MODELS[label].__name__}.h5")
    found = {"dense": accuracy(model, xv, yv), "params": model.count_params(), "fractions": {}}
    out = folder / "out.keras"
    for fraction in FRACTIONS[label]:
        mct = st.mct_rows(h5, data, folder, [fraction], seeds, xt, yt, xv, yv)
        mct = mct.get(fraction, mct)
        # MCT lands well below the weights memory it is given (0.58x parameters for 0.8). --target lands in
        # [goal * (1 - TOLERANCE), goal], so asking for MCT's fraction gave prunecli fewer parameters than
        # MCT kept (0.871 against 0.881 on the MobileNetV2-style net); the goal is raised so the band starts
        # at MCT's fraction: prunecli keeps at least MCT's parameters, at most 2% more
        reached = mct.get("params_fraction", fraction)
        target = {"target": f"params={min(fraction, reached / (1 - TOLERANCE)):.4f}"}
        row = {
            "mct": mct,
            "oneshot": st.run(path, data, out, seeds[0], 0, False, **target),
            "default": [st.run(path, data, out, s, st.EPOCHS, False, **target) for s in seeds],
            "plain": [
                st.run(path, data, out, s, st.EPOCHS, False, reconstruct=False, distill=False, **target) for s in seeds
            ],
        }
        found["fractions"][fraction] = row
        print(f"{label} {fraction}: {row}", flush=True)
    return found


def render(results: dict, seeds, elapsed: float) -> str:
    info = machine()
    lines = [
        HEADING,
        "",
        f"Written by `bench/mct_peer.py --seeds {' '.join(map(str, seeds))}` (method in its docstring), "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}; {info['cpu']}, {info['cores']} cores, load {load_average()}, "
        f"{elapsed / 60:.1f} min. MCT refuses 0.5x and 0.25x on these nets (the tables above); here each is",
        "pruned to a weights-memory fraction MCT reaches, then fine-tuned 2 epochs. *prunecli default*: "
        "`--target params=F --epochs 2` (refit and distillation on by default); *plain*: the same with "
        "`--no-reconstruct --distill off`, MCT's recipe after pruning.",
        "",
        "| net (dense) | MCT budget | MCT params | MCT one-shot | MCT + 2 epochs | prunecli params | prunecli one-shot"
        " | prunecli default | prunecli plain |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, found in results.items():
        for fraction, row in found["fractions"].items():
            mct = row["mct"]
            if "error" in mct:
                mct_cells = [f"refused: {mct['error'][:90]}", "–", "–"]
            else:
                mct_cells = [f"{mct['params_fraction']:.3f}", f"{mct['pruned']:.3f}", st._ms(mct["tuned"])]
            lines.append(
                f"| {label} ({found['dense']:.3f}) | {fraction:g} | "
                + " | ".join(mct_cells)
                + f" | {row['oneshot']['params']:.3f} | {row['oneshot']['pruned']:.3f} | "
                + f"{st._ms([r['tuned'] for r in row['default']])} | {st._ms([r['tuned'] for r in row['plain']])} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(FRACTIONS))
    parser.add_argument("--out", type=Path, default=st.ROOT / "bench" / "STRUCTURED.md")
    args = parser.parse_args()
    import numpy as np

    began = time.perf_counter()
    x, y = mnist_subset(0)
    x = x.reshape(-1, 28, 28, 1)
    splits = (x[:4000], y[:4000]), (x[4000:], y[4000:])
    folder = Path(tempfile.mkdtemp(prefix="mct-peer-"))
    data = folder / "mnist.npz"
    np.savez(data, x_train=splits[0][0], y_train=splits[0][1], x_test=splits[1][0], y_test=splits[1][1])
    results = {}
    for label in args.models:
        results[label] = measure(label, args.seeds, folder, data, splits)
        replace_section(args.out, HEADING, render(results, args.seeds, time.perf_counter() - began))
        print(f"wrote {args.out} ({len(results)} of {len(args.models)} nets)", flush=True)


if __name__ == "__main__":
    main()
