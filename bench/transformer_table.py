"""Transformer pruning on real text: attention heads and FFN neurons removed for real (-> TRANSFORMER.md).

Task: which Python standard-library module does a line of source come from? Lines (>= 20 characters)
of 8 modules of this very interpreter's standard library, as 48 bytes each (byte-level tokens, no
tokenizer, nothing downloaded). The model: byte embedding, a width-3 Conv1D for local order, 2 post-norm
Transformer blocks (4 heads of 16, d_model 64, d_ff 128), mean pooling, softmax. Trained here.

Rows: dense; 25% / 50% of the heads removed (-g head, mean |w| of each head's q/k/v/o slices,
per layer); 25% / 50% of the FFN intermediate units removed (mean |w| of each unit's two kernel
slices, per layer); each pruned model shrunk for real (checked equal to the masked model), evaluated
before and after 2 epochs of fine-tuning. Latency: fastest of 30 runs of a traced forward pass (batch 1 and 64),
Keras on CPU, and the TFLite interpreter (float32) when conversion works.

    timeout 900 .venv/bin/python bench/transformer_table.py [--output bench/TRANSFORMER.md] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import accuracy  # noqa: E402

MODULES = ("argparse", "typing", "inspect", "tarfile", "pydoc", "turtle", "datetime", "_pydecimal")
SEQ = 48


def load_lines(per_module: int, test_per_module: int, seed: int = 0):
    import numpy as np

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rng = np.random.default_rng(seed)
    xs_tr, ys_tr, xs_te, ys_te = [], [], [], []
    for label, name in enumerate(MODULES):
        lines = [ln.strip() for ln in (stdlib / f"{name}.py").read_text(encoding="utf-8").splitlines()]
        lines = sorted({ln for ln in lines if len(ln) >= 20})  # unique: no line in both train and test
        rng.shuffle(lines)
        enc = np.zeros((len(lines), SEQ), "int32")
        for i, ln in enumerate(lines):
            b = ln.encode("utf-8")[:SEQ]
            enc[i, : len(b)] = np.frombuffer(b, np.uint8)
        te, tr = enc[:test_per_module], enc[test_per_module : test_per_module + per_module]
        xs_tr.append(tr)
        ys_tr.append(np.full(len(tr), label))
        xs_te.append(te)
        ys_te.append(np.full(len(te), label))
    x_tr, y_tr = np.concatenate(xs_tr), np.concatenate(ys_tr)
    order = rng.permutation(len(x_tr))
    return x_tr[order], y_tr[order], np.concatenate(xs_te), np.concatenate(ys_te)


def build(d=64, heads=4, key_dim=16, d_ff=128, blocks=2):
    import keras

    keras.utils.set_random_seed(0)
    ids = keras.Input((SEQ,), dtype="int32", name="bytes")
    x = keras.layers.Embedding(256, d, name="embed")(ids)
    x = keras.layers.Conv1D(d, 3, padding="same", name="local")(x)
    for i in range(blocks):
        a = keras.layers.MultiHeadAttention(heads, key_dim, dropout=0.1, name=f"b{i}_mha")(x, x)
        x = keras.layers.LayerNormalization(name=f"b{i}_ln1")(keras.layers.Add(name=f"b{i}_add1")([x, a]))
        h = keras.layers.Dense(d_ff, activation="gelu", name=f"b{i}_ff1")(x)
        h = keras.layers.Dense(d, name=f"b{i}_ff2")(keras.layers.Dropout(0.1, name=f"b{i}_drop")(h))
        x = keras.layers.LayerNormalization(name=f"b{i}_ln2")(keras.layers.Add(name=f"b{i}_add2")([x, h]))
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    out = keras.layers.Dense(len(MODULES), activation="softmax", name="cls")(x)
    return keras.Model(ids, out, name="stdlib_lines")


def compile_(model, lr=1e-3):
    import keras

    model.compile(keras.optimizers.Adam(lr), "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def latency_ms(model, batch: int, repeats: int = 30) -> float:
    import numpy as np
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(0).integers(0, 256, (batch, SEQ)).astype("int32"))
    fn = tf.function(lambda t: model(t, training=False))
    for _ in range(3):
        np.asarray(fn(x))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.asarray(fn(x))
        times.append(time.perf_counter() - t0)
    return min(times) * 1000  # the least disturbed run: the machine is shared


def tflite_latency_ms(model, repeats: int = 50) -> float | None:
    """Batch-1 latency of the float32 TFLite conversion, or None when conversion fails."""
    import numpy as np
    import tensorflow as tf

    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        blob = converter.convert()
        interp = tf.lite.Interpreter(model_content=blob, num_threads=1)
        interp.allocate_tensors()
        inp = interp.get_input_details()[0]
        interp.set_tensor(inp["index"], np.zeros((1, SEQ), "int32"))
        interp.invoke()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            interp.invoke()
            times.append(time.perf_counter() - t0)
        return min(times) * 1000
    except Exception as exc:  # noqa: BLE001 - a benchmark reports and goes on
        print(f"tflite conversion failed: {type(exc).__name__}: {str(exc)[:200]}", file=sys.stderr)
        return None


def prune_heads(model, fraction: float):
    from prunecli.config import build_config
    from prunecli.removal import heads
    from prunecli.structure import targets as targets_mod

    cfg = build_config(
        {"model_path": "m.keras", "granularity": "head", "sparsity": fraction, "shrink": True, "seq_len": SEQ},
        environ={},
    )
    small, _masks, section, _notes = heads.run_heads(model, targets_mod.select(model), cfg)
    return small, section["verification"]["max_rel_diff"]


def prune_ffn(path, fraction: float):
    """The default neuron command on the saved dense model: FFN units only (the residual stream is
    pinned), `--scope layer` so each block loses the same share, shrunk and verified by prunecli."""
    from prunecli import build_config, prune

    out = path.with_name(f"transformer_ffn_{int(fraction * 100)}.keras")
    cfg = build_config(
        {
            "model_path": str(path),
            "granularity": "neuron",
            "sparsity": fraction,
            "scope": "layer",
            "shrink": True,
            "output": str(out),
            "force": True,
            "sizes": False,
        },
        environ={},
    )
    result = prune(cfg)
    shrink = result.report.to_dict()["shrink"]
    return result.model, shrink["verification"]["max_rel_diff"]


def main() -> None:
    import keras

    from prunecli.structure import flops

    ap = argparse.ArgumentParser()
    ap.add_argument("--output", default=str(ROOT / "bench" / "TRANSFORMER.md"))
    ap.add_argument("--quick", action="store_true", help="fewer lines and epochs (a smoke run)")
    args = ap.parse_args()
    per, test, epochs = (300, 100, 1) if args.quick else (1200, 250, 5)
    t_start = time.perf_counter()
    x_tr, y_tr, x_te, y_te = load_lines(per, test)
    print(f"{len(x_tr)} training lines, {len(x_te)} test lines, {len(MODULES)} modules", flush=True)
    dense = compile_(build())
    dense.fit(x_tr, y_tr, batch_size=64, epochs=epochs, verbose=0)
    path = ROOT / "out" / "transformer_dense.keras"
    path.parent.mkdir(exist_ok=True)
    dense.save(path)

    def fresh():
        return compile_(keras.saving.load_model(path))

    rows = []

    def measure(label, model, check, ft_epochs):
        acc = accuracy(model, x_te, y_te)
        row = {
            "variant": label,
            "acc": acc,
            "params": model.count_params(),
            "macs": flops.count(model)["total"],
            "keras_b1": latency_ms(model, 1),
            "keras_b64": latency_ms(model, 64),
            "tflite_b1": tflite_latency_ms(model),
            "check": check,
        }
        if ft_epochs:
            compile_(model, 5e-4).fit(x_tr, y_tr, batch_size=64, epochs=ft_epochs, verbose=0)
            row["acc_ft"] = accuracy(model, x_te, y_te)
        rows.append(row)
        print(row, flush=True)

    ft = 1 if args.quick else 2
    measure("dense", fresh(), None, ft)  # its fine-tuned column: the same 2 extra epochs, unpruned
    for frac in (0.25, 0.5):
        small, diff = prune_heads(fresh(), frac)
        measure(f"heads -{int(frac * 100)}%", small, diff, ft)
    for frac in (0.25, 0.5):
        small, diff = prune_ffn(path, frac)
        measure(f"FFN units -{int(frac * 100)}%", compile_(small), diff, ft)
    wall = time.perf_counter() - t_start
    write(args.output, rows, len(x_tr), len(x_te), epochs, ft, wall)


def write(out, rows, n_train, n_test, epochs, ft, wall) -> None:
    base = rows[0]
    lines = [
        "# Transformer pruning: attention heads and FFN neurons removed for real",
        "",
        "Generated by `bench/transformer_table.py` (do not edit by hand). Task: which of "
        f"{len(MODULES)} standard-library modules ({', '.join(MODULES)}) a line of Python source comes "
        f"from, read as {SEQ} bytes; {n_train} training and {n_test} test lines (unique, disjoint), "
        "from this interpreter's own library. Model: byte Embedding(256, 64), Conv1D(64, 3), 2 post-norm "
        "Transformer blocks (MultiHeadAttention 4 heads x 16, FFN 64->128->64 gelu), mean pooling, softmax; "
        f"trained {epochs} epochs (Adam 1e-3, batch 64) in the script. Chance = {1 / len(MODULES):.3f}.",
        "",
        "Heads: `-g head --sparsity S --shrink` (mean |w| of each head's q/k/v/o slices, per layer), "
        "MultiHeadAttention rebuilt with num_heads = kept. FFN: the intermediate units of each block's "
        "Dense(128)->Dense(64) pair with the lowest mean |w| over their two kernel slices "
        "(`prune -g neuron --shrink`, FFN units only), both kernels sliced; the residual stream (64) stays whole. "
        f"Fine-tuning: {ft} epochs, Adam 5e-4, of the shrunk model (the dense row: of the dense model, the "
        "fair baseline for the fine-tuned column). `check`: largest relative "
        "difference between the shrunk and the masked model's outputs (limit 1e-4). Latency: fastest of 30 "
        "traced forward passes on this shared 2-core CPU (noisy: compare within a column); TFLite: float32 "
        "interpreter, 1 thread, batch 1.",
        "",
        "| variant | accuracy | after 2 ep. fine-tune | params | FLOPs (MACs/example) | Keras b1 ms | Keras b64 ms | TFLite b1 ms | check |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(v, b):
        return "n/a" if v is None or not b else f"{v / b:.2f}"

    for r in rows:
        check = "-" if r["check"] is None else f"{r['check']:.1e}"
        ft_acc = f"{r['acc_ft']:.3f}" if "acc_ft" in r else "-"
        tfl = "n/a" if r["tflite_b1"] is None else f"{r['tflite_b1']:.3f} ({ratio(r['tflite_b1'], base['tflite_b1'])}x)"
        lines.append(
            f"| {r['variant']} | {r['acc']:.3f} | {ft_acc} | {r['params']:,} ({ratio(r['params'], base['params'])}x) "
            f"| {r['macs']:,} ({ratio(r['macs'], base['macs'])}x) | {r['keras_b1']:.2f} ({ratio(r['keras_b1'], base['keras_b1'])}x) "
            f"| {r['keras_b64']:.2f} ({ratio(r['keras_b64'], base['keras_b64'])}x) | {tfl} "
            f"| {check} |"
        )
    lines += ["", f"Whole script: {wall:.0f} s wall on the shared machine.", ""]
    Path(out).write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
