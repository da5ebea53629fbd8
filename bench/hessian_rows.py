"""How many rows of X a convolution's SparseGPT Hessian needs: accuracy and time of one-shot SparseGPT
on the MNIST CNN of bench/ONESHOT.md with each convolution's Hessian estimated from at most r rows per
input (r x d_in rows sampled at random from all of them: calibration/capture.HessianCapture), against
all the rows. Writes bench/HESSIAN_ROWS.md.

Why: a convolution gives one row per output position, so a full-resolution image model gives millions
(MiSiC's 256x256 U-Net: 2.1M rows of 3,136 inputs per layer on 32 images), and accumulating X^T X is
then nearly all of SparseGPT's time on a CPU. On the CNN here conv2 sees 128 x 14 x 14 = 25,088 rows of
288 inputs (87 per input), so capping it at r per input measures how the result degrades with r.

Usage: .venv/bin/python bench/hessian_rows.py [--seeds 0,1,2] [--output bench/HESSIAN_ROWS.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, load_average, machine, table  # noqa: E402
from oneshot_table import _calibration, cnn_model, prune_once  # noqa: E402

PER_INPUT = (4, 8, 16, 32, 64, 128, 256, None)  # None: every row
SETTINGS = ("0.7", "0.8", "2:4")


def main(argv=None) -> None:
    import numpy as np

    from prunecli.calibration import capture
    from prunecli.structure import targets as targets_mod

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--samples", type=int, default=128, help="calibration images per seed")
    parser.add_argument("--output", default=str(ROOT / "bench" / "HESSIAN_ROWS.md"))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    started = time.time()

    spec = cnn_model()
    model, (_, metric) = spec["model"], spec["metric"]
    dense_weights = model.get_weights()
    dense = metric(model)
    rows = []
    results: dict = {}
    for setting in SETTINGS:
        for r in PER_INPUT:
            accs, secs = [], []
            for seed in seeds:
                model.set_weights(dense_weights)
                capture.HESSIAN_ROWS = 0 if r else 10**12
                capture.HESSIAN_ROWS_PER_INPUT = r or 1
                found = targets_mod.select(model, (), ())
                secs.append(
                    prune_once(
                        model,
                        found,
                        _calibration(spec["train_x"], seed, args.samples),
                        "sparsegpt",
                        setting,
                        False,
                        seed,
                    )
                )
                accs.append(metric(model))
            results[(setting, r)] = (accs, secs)
            print(f"{setting} r={r}: {np.mean(accs):.4f} {np.mean(secs):.2f}s", flush=True)
    model.set_weights(dense_weights)

    def cell(values, digits=1, scale=100.0):
        v = np.asarray(values) * scale
        return f"{v.mean():.{digits}f} ±{(v.max() - v.min()) / 2:.{digits}f}"

    conv1_rows, conv2_rows = args.samples * 28 * 28, args.samples * 14 * 14
    for r in PER_INPUT:
        if r is None:
            label = "all rows"
        else:  # conv1 (9 inputs) is sampled too, to r x 9 rows: said, since it is what moves those rows
            conv1 = f"{min(r * 9, conv1_rows):,}"
            conv2 = f"{r * 288:,}" if r * 288 < conv2_rows else "all its"
            label = f"{r} per input (conv1: {conv1} rows, conv2: {conv2} rows)"
        row = [label]
        for setting in SETTINGS:
            accs, secs = results[(setting, r)]
            row.append(cell(accs))
        row.append(cell(results[(SETTINGS[0], r)][1], 2, 1.0))
        rows.append(row)
    info = machine()
    section = [
        f"## {args.samples} calibration images",
        "",
        f"`.venv/bin/python bench/hessian_rows.py --seeds {args.seeds} --samples {args.samples}` "
        f"({(time.time() - started) / 60:.1f} min; {info['cpu']}, {info['cores']} cores, shared with other work; "
        f"load average at the end {load_average()}). Dense test accuracy {100 * dense:.1f}%; conv1: 9 inputs, "
        f"{args.samples * 784:,} rows; conv2: 288 inputs, {conv2_rows:,} rows ({conv2_rows / 288:.0f} per input).",
        "",
        table(["Hessian rows", *[f"{s} accuracy" for s in SETTINGS], f"seconds at {SETTINGS[0]}"], rows),
        "",
    ]
    header = [
        "# Rows of X for a convolution's SparseGPT Hessian",
        "",
        f"Model: {spec['name']} ({spec['trained']}). One-shot SparseGPT, every layer at the sparsity (scope layer), "
        "no fine-tuning. Each convolution's Hessian from at most r rows per input, sampled evenly at random from "
        "all its rows, or from every row: both convolutions, with the 2^18-row floor off (HESSIAN_ROWS = 0; the "
        "default's floor leaves both of this model's convolutions whole at these sizes). The Dense layers' rows "
        "(examples) are never sampled. Test accuracy %, "
        "mean ±half-range over seeds " + ", ".join(map(str, seeds)) + f"; seconds: the whole one-shot prune at "
        f"{SETTINGS[0]}. One section per --samples (a run replaces its own section).",
        "",
    ]
    out = Path(args.output)
    sections = {}
    if out.exists():  # keep the other --samples sections
        for part in out.read_text().split("\n## ")[1:]:
            sections[part.split(" ", 1)[0]] = "## " + part.rstrip("\n") + "\n"
    sections[str(args.samples)] = "\n".join(section)
    body = "".join(sections[k] + "\n" for k in sorted(sections, key=int))
    out.write_text("\n".join(header) + "\n" + body.rstrip("\n") + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
