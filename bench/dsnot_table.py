"""--refine dsnot against plain Wanda and SparseGPT, one-shot, no fine-tuning: the small KerasHub decoders
of bench/decoder_oneshot.py (held-out perplexity) and the digits MLP of bench/oneshot_table.py (test
accuracy).

    .venv/bin/python bench/dsnot_table.py --cache DIR [--models llama,gpt2,mlp] [--settings 0.6,0.7]
        [--seeds 2] [--until HH:MM]

Every run goes through the Python API as a user's would (`prunecli.prune(build_config({...}))`):
`--method wanda|sparsegpt --scope layer` (every layer at the sparsity: the papers' setting and the
issue's "uniform Wanda"), each with and without `--refine dsnot`, and the default magnitude command
(`--method magnitude` with --data and no --scope: its measured allocation). The decoders are the ones
decoder_oneshot.py trains and caches under --cache (`{family}_1500.keras`, trained there when absent);
the MLP is trained as oneshot_table.py trains it and saved under --cache with its digits split. Results
go to a JSON under --cache as they come (a stopped run resumes); the table is printed, to be pasted into
bench/DECODERS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_common import mean_spread  # noqa: E402

RUNS = (  # label, method, scope, refine
    ("magnitude default", "magnitude", None, "none"),
    ("wanda", "wanda", "layer", "none"),
    ("wanda + dsnot", "wanda", "layer", "dsnot"),
    ("sparsegpt", "sparsegpt", "layer", "none"),
    ("sparsegpt + dsnot", "sparsegpt", "layer", "dsnot"),
)
STEPS = 1500  # decoder_oneshot.py's default training length (its time limit ends it sooner)


def mlp_files(cache: Path) -> tuple[Path, Path]:
    """The digits MLP of oneshot_table.py, trained once and saved with its train/test split."""
    import numpy as np

    model_path, data_path = cache / "mlp_digits.keras", cache / "mlp_digits.npz"
    if not model_path.exists():
        import oneshot_table
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        spec = oneshot_table.mlp_model()
        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype("float32")
        xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.3, random_state=oneshot_table.SEED, stratify=y)
        np.savez(data_path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
        spec["model"].save(model_path)
    return model_path, data_path


def files(model: str, cache: Path, train_seconds: float) -> tuple[Path, Path]:
    if model == "mlp":
        return mlp_files(cache)
    import decoder_oneshot

    path, _ = decoder_oneshot.train(model, cache, STEPS, train_seconds)
    return path, decoder_oneshot.token_file(cache)


def prune_once(model_path: Path, data: Path, work: Path, method, scope, refine, setting: str, seed: int) -> dict:
    import decoder_oneshot

    import prunecli

    values = {**decoder_oneshot.prune_values(model_path, data, work, method, scope, setting, seed), "refine": refine}
    start = time.perf_counter()
    report = prunecli.prune(prunecli.build_config(values, environ={})).report
    metric = "perplexity" if "perplexity" in report.metrics["before"] else "accuracy"
    layers = ((report.extra.get("calibration") or {}).get("layers")) or {}
    return {
        "metric": metric,
        "before": report.metrics["before"][metric],
        "after": report.metrics["after_pruning"][metric],
        "sparsity": report.totals["prunable_sparsity"],
        "swaps": sum(e.get("dsnot_swaps") or 0 for e in layers.values()),
        "seconds": round(time.perf_counter() - start, 2),
    }


def render(results: dict, models, settings) -> str:
    lines = []
    for model in models:
        rows = {k: v for k, v in results.items() if k.startswith(f"{model}|")}
        if not rows:
            continue
        first = next(iter(rows.values()))
        metric = first["metric"]
        digits = 3 if metric == "perplexity" else 4
        lines += [f"### {model}: dense {metric} {first['before']:.{digits}f}", ""]
        lines.append("| run | " + " | ".join(settings) + " |")
        lines.append("|---|" + "---|" * len(settings))
        for label, *_ in RUNS:
            cells = []
            for setting in settings:
                got = [v for k, v in rows.items() if k.split("|")[1] == setting and k.split("|")[2] == label]
                cell = mean_spread([v["after"] for v in got], digits)
                if got and len(got) > 1:
                    cell += f" (n={len(got)})"
                cells.append(cell)
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        swaps = {
            (label, s): [v["swaps"] for k, v in rows.items() if k.split("|")[1:3] == [s, label]]
            for label, _, _, refine in RUNS
            if refine != "none"
            for s in settings
        }
        seconds = {label: [v["seconds"] for k, v in rows.items() if k.split("|")[2] == label] for label, *_ in RUNS}
        lines.append("")
        lines.append(
            "Swaps made by dsnot (all layers of a run, one figure per seed): "
            + "; ".join(f"{label} {s}: {', '.join(map(str, v))}" for (label, s), v in swaps.items() if v)
            + ". Mean seconds per run: "
            + ", ".join(f"{label} {sum(v) / len(v):.1f}" for label, v in seconds.items() if v)
            + "."
        )
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", required=True, help="trained models, tokens and results")
    ap.add_argument("--models", default="llama,gpt2,mlp")
    ap.add_argument("--settings", default="0.6,0.7")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--train-seconds", type=float, default=300.0)
    ap.add_argument("--until", default=None, help="HH:MM UTC: start no run after it")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from prunecli.runtime import quiet_tensorflow

    quiet_tensorflow()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    models, settings = args.models.split(","), args.settings.split(",")
    store = cache / "dsnot_results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    paths = {m: files(m, cache, args.train_seconds) for m in models}
    for seed in range(args.seeds):
        for setting in settings:
            for model in models:
                for label, method, scope, refine in RUNS:
                    if method == "magnitude" and seed:
                        continue  # data-free ranking; its measured allocation reads the first rows only
                    key = f"{model}|{setting}|{label}|{seed}"
                    if key in results:
                        continue
                    if args.until and time.strftime("%H:%M", time.gmtime()) >= args.until:
                        print(f"--until {args.until}: stopping before {key}", flush=True)
                        print(render(results, models, settings))
                        return 0
                    model_path, data = paths[model]
                    results[key] = prune_once(model_path, data, cache, method, scope, refine, setting, seed)
                    store.write_text(json.dumps(results, indent=0))
                    print(key, json.dumps(results[key]), flush=True)
    print(render(results, models, settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
