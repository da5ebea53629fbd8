"""Structured pruning on two small examples, measured end to end through `prunecli.prune`:

1. tabular: scikit-learn's breast-cancer data (30 real features) plus 30 columns of pure noise, an MLP;
   input-feature pruning at 50 % with --shrink and a 3-epoch fine-tune, for each feature score;
2. residual: scikit-learn's digits (64 pixels) through a residual MLP of four blocks; layer pruning
   of 1 and 2 blocks, scored on data, by the data-free probe, and at random, with a 3-epoch fine-tune.

Writes bench/STRUCTURE.md. Run: .venv/bin/python bench/structure_examples.py  (a few minutes on 2 cores)
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_common import quiet_tf  # noqa: E402

EPOCHS = 3


def tabular(folder: Path):
    import keras
    import numpy as np
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    rng = np.random.default_rng(0)
    x = (data.data - data.data.mean(0)) / data.data.std(0)
    x = np.concatenate([x, rng.standard_normal(x.shape)], axis=1).astype("float32")
    y = data.target.astype("int32")
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    names = np.array(list(data.feature_names) + [f"noise{i}" for i in range(30)])
    np.savez(
        folder / "cancer.npz", x_train=x[:400], y_train=y[:400], x_test=x[400:], y_test=y[400:], feature_names=names
    )
    keras.utils.set_random_seed(0)
    inp = keras.Input((60,), name="features")
    h = keras.layers.Dense(64, activation="relu", name="hidden1")(inp)
    h = keras.layers.Dense(32, activation="relu", name="hidden2")(h)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="out")(h), name="cancer_mlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:400], y[:400], epochs=30, batch_size=32, verbose=0)
    model.save(folder / "cancer.keras")
    return folder / "cancer.keras", folder / "cancer.npz"


def residual(folder: Path):
    import keras
    import numpy as np
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    np.savez(folder / "digits.npz", x_train=x[360:], y_train=y[360:], x_test=x[:360], y_test=y[:360])
    keras.utils.set_random_seed(0)
    inp = keras.Input((64,), name="pixels")
    h = keras.layers.Dense(64, activation="relu", name="stem")(inp)
    for i in range(4):
        b = keras.layers.Dense(128, activation="relu", name=f"block{i}_up")(h)
        b = keras.layers.Dense(64, name=f"block{i}_down")(b)
        h = keras.layers.Add(name=f"block{i}_add")([h, b])
    model = keras.Model(inp, keras.layers.Dense(10, activation="softmax", name="out")(h), name="digits_resmlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[360:], y[360:], epochs=15, batch_size=32, verbose=0)
    model.save(folder / "digits_res.keras")
    return folder / "digits_res.keras", folder / "digits.npz"


def run(model: Path, data: Path, out: Path, **options) -> dict:
    from prunecli import build_config, prune

    settings = {"model_path": str(model), "data": str(data), "output": str(out), "epochs": EPOCHS, "seed": 0}
    settings.update(options)
    start = time.perf_counter()
    report = prune(build_config(settings)).report.to_dict()
    report["wall_s"] = time.perf_counter() - start
    return report


def _pct(v: float) -> str:
    return f"{100 * v:.1f}"


def _row(label: str, removed: str, r: dict, params_before: int) -> str:
    m = r["metrics"]
    return (
        f"| {label} | {removed} | {params_before:,} → {r['totals']['params']:,} | {r['flops']['before']:,} → "
        f"{r['flops']['after']:,} | {_pct(m['before']['accuracy'])} | {_pct(m['after_pruning']['accuracy'])} | "
        f"{_pct(m['after_finetune']['accuracy'])} | {r['wall_s']:.1f} |"
    )


HEADER = (
    "| run | removed | parameters | multiply-adds / example | acc. before | acc. after pruning | "
    f"acc. after {EPOCHS}-epoch fine-tune | wall s |\n|---|---|---:|---:|---:|---:|---:|---:|"
)


def main() -> None:
    import keras

    quiet_tf()
    lines = [
        "# Structured pruning: input features and layers",
        "",
        f"Produced by `bench/structure_examples.py` (TensorFlow CPU, 2 cores). Accuracy is on the held-out test "
        f"split, in %; fine-tuning is {EPOCHS} epochs through `prunecli`'s own fine-tuning. Multiply-adds are "
        "theoretical (`prunecli/structure/flops.py`).",
        "",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model, data = tabular(folder)
        params = keras.saving.load_model(model).count_params()
        lines += [
            "## Tabular: breast cancer (30 real features) + 30 noise features, MLP 60-64-32-2",
            "",
            "`-g input --sparsity 0.5 --shrink` (30 of 60 features removed), per feature score.",
            "",
            HEADER,
        ]
        for score in ("permutation", "gradient", "taylor", "l1", "random"):
            r = run(
                model,
                data,
                folder / f"t_{score}.keras",
                granularity="input",
                sparsity=0.5,
                shrink=True,
                feature_score=score,
                repeats=3,
            )
            kept = r["kept_feature_names"]["features"]
            noise_kept = sum(name.startswith("noise") for name in kept)
            lines.append(_row(f"`{score}`", f"30 features ({noise_kept} noise kept)", r, params))
            print(lines[-1], flush=True)
        model, data = residual(folder)
        params = keras.saving.load_model(model).count_params()
        lines += [
            "",
            "## Residual: digits (64 pixels), MLP with four 64-128-64 residual blocks",
            "",
            "`-g layer --remove-layers N` over 4 residual-branch candidates.",
            "",
            HEADER,
        ]
        for n in (1, 2):
            for label in ("loss on data", "probe, no data", "random"):
                out = folder / f"r_{n}_{label[:4]}.keras"
                if label == "probe, no data":
                    r = run_probe(model, data, out, n)
                else:
                    method = {"method": "random"} if label == "random" else {}
                    r = run(model, data, out, granularity="layer", remove_layers=n, **method)
                removed = ", ".join(c["name"] for c in r["layer_pruning"]["candidates"] if c["removed"])
                lines.append(_row(f"{n} block(s), {label}", removed, r, params))
                print(lines[-1], flush=True)
    lines += ["", "Removed blocks are named by their Add layer; each takes its two Dense layers with it.", ""]
    (HERE / "STRUCTURE.md").write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {HERE / 'STRUCTURE.md'}")


def run_probe(model: Path, data: Path, out: Path, n: int) -> dict:
    """Score without data (the probe proxy), then evaluate and fine-tune on the data like the others:
    the decision comes from a data-free plan, the measurement from a normal run with that decision."""
    from prunecli import build_config
    from prunecli.run.plan import make_plan

    decided = make_plan(build_config({"model_path": str(model), "granularity": "layer", "remove_layers": n}))
    not_chosen = tuple(c["name"] for c in decided["layer_pruning"]["candidates"] if not c["removed"])
    return run(model, data, out, granularity="layer", remove_layers=n, exclude=not_chosen)


if __name__ == "__main__":
    sys.exit(main())
