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

    .venv/bin/python bench/shrink_table.py [--rounds 5] [--per-layer]
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

from prunecli.runtime import quiet_tensorflow  # noqa: E402

WHOLE_CHANNELS = "## Zeroing or folding a removed channel"  # written by bench/whole_channels.py


def mobilenet_file(directory: Path, trained_bn: bool) -> Path:
    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(96, 96, 3), alpha=1.0, classes=10)
    if trained_bn:
        rng = np.random.default_rng(0)
        for layer in model.layers:
            if type(layer).__name__ == "BatchNormalization":
                n = layer.gamma.shape[0]
                layer.beta.assign(rng.normal(0.0, 0.3, n).astype("float32"))
                layer.moving_mean.assign(rng.normal(0.0, 0.3, n).astype("float32"))
                layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
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
    from prunecli.selection import targets

    return sum(t.units for t in targets.select(model) if t.shrinkable and t.attr != "depthwise_kernel")


def timed(original, shrunk, rounds: int) -> dict:
    """Latency (ms) of each model at batch 1 and 64: rounds in alternation, the best round's median."""
    from prunecli.structure import surgery

    samples: dict = {(label, n): [] for label in ("original", "shrunk") for n in (1, 64)}
    for _ in range(rounds):
        for label, model in (("original", original), ("shrunk", shrunk)):
            for n in (1, 64):
                xs = surgery.example_inputs(model, n)
                samples[(label, n)].append(surgery.latency_ms(model, xs, budget_s=3.0, max_repeats=50))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-layer", action="store_true", help="masks layer by layer; print, do not write")
    args = parser.parse_args()
    quiet_tensorflow()
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
    if not args.per_layer:
        out = ROOT / "bench" / "SHRINK.md"
        kept = out.read_text(encoding="utf-8").split(WHOLE_CHANNELS, 1) if out.exists() else [""]
        tail = WHOLE_CHANNELS + kept[1] if len(kept) > 1 else ""  # bench/whole_channels.py's section stays
        out.write_text(text.rstrip() + "\n\n" + tail if tail else text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
