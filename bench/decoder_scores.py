"""Which score to remove decoder width by: one-shot perplexity of `-g hidden`, `-g neuron` and `-g head`
(`--shrink`) on the two small KerasHub decoders of bench/decoder_oneshot.py, by `--method`.

    .venv/bin/python bench/decoder_scores.py [--seeds 2] [--families llama,gpt2] [--no-write]

Issue 28 asks for importance that fits (activation-based scores on calibration tokens, Minitron-style,
alongside the weight-based ones) and for defaults that follow the measurement. Each run is a user's
`prunecli prune model.keras -g G -s S --shrink --data tokens.npz --method M --seed N` through the Python
API, one-shot (no fine-tuning); perplexity on the held-out rows. `magnitude` and `l2-norm` are data-free
(run once); `activation` (mean |x| at the units' inputs over the calibration tokens) and `taylor`
(|w * dL/dw| summed over a unit's weights, on --score-batches of --data) run once per seed. The dense
models and tokens are decoder_oneshot.py's (trained here, cached in its --cache). Writes its section
of bench/TRANSFORMER.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decoder_oneshot as decoders  # noqa: E402
from bench_common import ROOT, load_average, machine, replace_section, scratch, table  # noqa: E402

HEADING = "## Which score removes decoder width best (one-shot, `--shrink`)"
GRANULARITIES = {"hidden": ("0.25", "0.5"), "neuron": ("0.25", "0.5"), "head": ("0.5",)}
METHODS = ("magnitude", "l2-norm", "activation", "taylor")
DATA_FREE = ("magnitude", "l2-norm")


def prune_once(model_path: Path, data: Path, work: Path, granularity: str, sparsity: str, method: str, seed: int):
    import prunecli

    values = {
        "model_path": str(model_path),
        "data": str(data),
        "method": method,
        "granularity": granularity,
        "sparsity": float(sparsity),
        "shrink": True,
        "seed": seed,
        "output": str(work / f"scores_{model_path.stem}.keras"),
        "force": True,
        "quiet": True,
        "sizes": False,
    }
    start = time.perf_counter()
    report = prunecli.prune(prunecli.build_config(values, environ={})).report
    return {
        "dense": report.metrics["before"]["perplexity"],
        "after": report.metrics["after_pruning"]["perplexity"],
        "params": report.totals["params"],
        "seconds": round(time.perf_counter() - start, 1),
    }


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    half = (max(values) - min(values)) / 2
    return f"{statistics.fmean(values):.3f} ± {half:.3f}"


def render(results: dict, meta: dict, seeds: int, elapsed: float) -> str:
    info = machine()
    lines = [
        HEADING,
        "",
        f"`.venv/bin/python bench/decoder_scores.py --seeds {seeds}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())};"
        f" {elapsed / 60:.0f} min; {info['cpu']}, {info['cores']} cores, shared; load average at the end"
        f" {load_average()}). The two decoders of bench/DECODERS.md's one-shot tables (bench/decoder_oneshot.py:"
        " Llama-style with GQA and SwiGLU, GPT-2-style; trained here on the standard library's bytes), each run"
        " `prunecli prune model.keras -g G -s S --shrink --data tokens.npz --method M --seed N` through the Python"
        " API, one-shot, no fine-tuning. Held-out perplexity (lower is better); data-free scores run once, the"
        f" data-aware ones over seeds 0..{seeds - 1} (mean ± half-range). `-g head` on the Llama decoder removes"
        " one of its 2 key/value groups with its 2 query heads; on GPT-2, 2 of 4 heads.",
        "",
    ]
    wins = []
    for family, rows in results.items():
        m = meta[family]
        dense = next(iter(next(iter(rows.values())).values()))[0]["dense"]
        lines += [
            f"### {family} ({m['params']:,} parameters, {m['steps']} training steps): dense perplexity {dense:.3f}",
            "",
        ]
        body = []
        for (granularity, sparsity), by_method in rows.items():
            means = {k: statistics.fmean(r["after"] for r in v) for k, v in by_method.items()}
            best = min(means, key=means.get)
            params = next(iter(by_method.values()))[0]["params"]
            body.append(
                [f"-g {granularity} -s {sparsity}", f"{params:,} ({params / m['params']:.2f}x)"]
                + [
                    (
                        f"**{cell([r['after'] for r in by_method[k]])}**"
                        if k == best
                        else cell([r["after"] for r in by_method[k]])
                    )
                    if k in by_method
                    else "-"
                    for k in METHODS
                ]
            )
            wins.append((family, granularity, sparsity, best, means))
        lines += [table(["run", "parameters after", *METHODS], body), ""]
    lines += ["Reading it (best score per row, and magnitude, the default, against it):", ""]
    for family, granularity, sparsity, best, means in wins:
        lines.append(
            f"- {family} -g {granularity} -s {sparsity}: {best} {means[best]:.3f}; magnitude {means['magnitude']:.3f}"
            f" ({100 * (means['magnitude'] / means[best] - 1):+.1f}%)"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=str(scratch("prunecli_decoders")), help="decoder_oneshot.py's cache")
    ap.add_argument("--steps", type=int, default=1500, help="the dense models' training steps (decoder_oneshot.py)")
    ap.add_argument("--train-seconds", type=float, default=300.0)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--families", default="llama,gpt2")
    ap.add_argument("--no-write", action="store_true", help="print, do not write bench/TRANSFORMER.md")
    args = ap.parse_args(argv)
    from prunecli.runtime import quiet_tensorflow

    quiet_tensorflow()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    data = decoders.token_file(cache)
    started = time.perf_counter()
    results, meta = {}, {}
    for family in args.families.split(","):
        model_path, meta[family] = decoders.train(family, cache, args.steps, args.train_seconds)
        rows = results.setdefault(family, {})
        for granularity, sparsities in GRANULARITIES.items():
            for sparsity in sparsities:
                for method in METHODS:
                    for seed in range(1 if method in DATA_FREE else args.seeds):
                        r = prune_once(model_path, data, cache, granularity, sparsity, method, seed)
                        rows.setdefault((granularity, sparsity), {}).setdefault(method, []).append(r)
                        print(
                            json.dumps(
                                {"family": family, "g": granularity, "s": sparsity, "m": method, "seed": seed, **r}
                            ),
                            flush=True,
                        )
    text = render(results, meta, args.seeds, time.perf_counter() - started)
    if not args.no_write:
        replace_section(ROOT / "bench" / "TRANSFORMER.md", HEADING, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
