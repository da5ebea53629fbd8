"""Which score to remove decoder width by: one-shot perplexity of `-g hidden`, `-g neuron` and `-g head`
(`--shrink`) on the two small KerasHub decoders of bench/decoder_oneshot.py, by `--method`.

    .venv/bin/python bench/decoder_scores.py [--families llama,gpt2] [--no-write]

Issue 28 asks for importance that fits (activation-based scores on calibration tokens, Minitron-style,
alongside the weight-based ones) and for defaults that follow the measurement. Each run is a user's
`prunecli prune model.keras -g G -s S --shrink --data tokens.npz --method M` through the Python
API, one-shot (no fine-tuning); perplexity on the held-out rows. `magnitude` and `l2-norm` are data-free
(run once); `activation` (mean |x| at the units' inputs over the calibration tokens) and `taylor`
(|w * dL/dw| summed over a unit's weights, on --score-batches of --data) read the same batches whatever
`--seed` is (seeds 0 and 1 gave identical perplexities), so every method runs once. The dense
models and tokens are decoder_oneshot.py's (trained here, cached in its --cache). Writes its section
of bench/TRANSFORMER.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import decoder_oneshot as decoders  # noqa: E402
from bench_common import ROOT, load_average, machine, replace_section, scratch, table  # noqa: E402

HEADING = "## Which score removes decoder width best (one-shot, `--shrink`)"
GRANULARITIES = {"hidden": ("0.25", "0.5"), "neuron": ("0.25", "0.5"), "head": ("0.5",)}
METHODS = ("magnitude", "l2-norm", "activation", "taylor")
DEFAULT = "default"  # no --method: magnitude, or `measured` for -g head with --data (config/fields.py)
COLUMNS = (*METHODS, DEFAULT)


def settings(model_path: Path, data: Path, work: Path, granularity: str, sparsity: str, method: str):
    """The run's settings as a user's command gives them (no --method for DEFAULT)."""
    import prunecli

    values = {
        "model_path": str(model_path),
        "data": str(data),
        "granularity": granularity,
        "sparsity": float(sparsity),
        "shrink": True,
        "output": str(work / f"scores_{model_path.stem}.keras"),
        "force": True,
        "quiet": True,
        "sizes": False,
    }
    if method != DEFAULT:
        values["method"] = method
    return prunecli.build_config(values, environ={})


def prune_once(config) -> dict:
    import prunecli

    start = time.perf_counter()
    report = prunecli.prune(config).report
    measured = report.extra.get("heads", {}).get("score_measured")
    return {
        "dense": report.metrics["before"]["perplexity"],
        "after": report.metrics["after_pruning"]["perplexity"],
        "params": report.totals["params"],
        "seconds": round(time.perf_counter() - start, 1),
        **({"measured": measured["chosen"]} if measured else {}),
    }


def render(results: dict, meta: dict, elapsed: float) -> str:
    info = machine()
    lines = [
        HEADING,
        "",
        f"`.venv/bin/python bench/decoder_scores.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())};"
        f" {elapsed / 60:.0f} min; {info['cpu']}, {info['cores']} cores, shared; load average at the end"
        f" {load_average()}). The two decoders of bench/DECODERS.md's one-shot tables (bench/decoder_oneshot.py:"
        " Llama-style with GQA and SwiGLU, GPT-2-style; trained here on the standard library's bytes), each run"
        " `prunecli prune model.keras -g G -s S --shrink --data tokens.npz --method M` through the Python API,"
        " one-shot, no fine-tuning, once (the data-aware scores read the same batches whatever `--seed` is)."
        " Held-out perplexity, lower is better; the best of each row in bold. `-g head -s 0.5` on the Llama"
        " decoder removes one of its 2 key/value groups with its 2 query heads; on GPT-2, 2 of its 4 heads.",
        "",
    ]
    wins = []
    for family, rows in results.items():
        m = meta[family]
        dense = next(iter(next(iter(rows.values())).values()))["dense"]
        lines += [
            f"### {family} ({m['params']:,} parameters, {m['steps']} training steps): dense perplexity {dense:.3f}",
            "",
        ]
        body = []
        for (granularity, sparsity), by_method in rows.items():
            after = {k: r["after"] for k, r in by_method.items() if k != DEFAULT}
            best = min(after, key=after.get)
            params = next(iter(by_method.values()))["params"]
            body.append(
                [f"-g {granularity} -s {sparsity}", f"{params:,} ({params / m['params']:.2f}x)"]
                + [(f"**{after[k]:.3f}**" if k == best else f"{after[k]:.3f}") if k in after else "-" for k in METHODS]
                + [_default_cell(by_method, after, best)]
            )
            wins.append((family, granularity, sparsity, best, after))
        lines += [table(["run", "parameters after", *METHODS, "default (no --method)"], body), ""]
    lines += [
        "The default (no `--method`: magnitude; for `-g head` with `--data`, `measured`, the magnitude and"
        " activation choices each masked and the one whose next-token distribution on 64 rows of `--data`"
        " moved least kept) against each row's best:",
        "",
    ]
    for family, granularity, sparsity, best, after in wins:
        default = results[family][(granularity, sparsity)][DEFAULT]
        chose = f" (measured: {default['measured']})" if "measured" in default else ""
        lines.append(
            f"- {family} -g {granularity} -s {sparsity}: best {best} {after[best]:.3f}, default{chose}"
            f" {default['after']:.3f} ({100 * (default['after'] / after[best] - 1):+.1f}%)"
        )
    return "\n".join(lines) + "\n"


def _default_cell(by_method: dict, after: dict, best: str) -> str:
    default = by_method[DEFAULT]
    text = f"{default['after']:.3f}"
    if default["after"] <= after[best]:
        text = f"**{text}**"
    return f"{text} ({default['measured']})" if "measured" in default else text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", default=str(scratch("prunecli_decoders")), help="decoder_oneshot.py's cache")
    ap.add_argument("--steps", type=int, default=1500, help="the dense models' training steps (decoder_oneshot.py)")
    ap.add_argument("--train-seconds", type=float, default=300.0)
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
                for method in COLUMNS:
                    config = settings(model_path, data, cache, granularity, sparsity, method)
                    done = rows.setdefault((granularity, sparsity), {})
                    same = method == DEFAULT and config.method in done  # the default is a column already run
                    r = done[config.method] if same else prune_once(config)
                    done[method] = r
                    print(json.dumps({"family": family, "g": granularity, "s": sparsity, "m": method, **r}), flush=True)
    text = render(results, meta, time.perf_counter() - started)
    if not args.no_write:
        replace_section(ROOT / "bench" / "TRANSFORMER.md", HEADING, text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
