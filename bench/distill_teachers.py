"""Which teacher and loss make `--distill` pay on a shrunk KerasHub decoder (issue 28, item 3).

bench/decoder_width.py found `--distill 2` (the unpruned input as teacher, soft-loss weight 0.5) behind
plain fine-tuning in every row. Its teacher is the dense model as trained, which one more epoch of plain
training beats (the bench decoders are trained for minutes, not to convergence): half the loss then pulls
the student towards a model that is worse than what the data alone teaches. A converged teacher is what
users distil from; the nearest thing here is the dense model fine-tuned on the same epoch (the table's
dense row, `--teacher FILE`). So, on decoder_width's files (same dense model, one-shot shrunk inputs,
data, optimizer and epoch), each row is fine-tuned:

* plain: no teacher (decoder_width's cells);
* distill, dense teacher: `--distill 2` (decoder_width's cells);
* distill, fine-tuned teacher: `--distill 2 --teacher dense_ft.keras`, weight 0.5;
* KD only, fine-tuned teacher: `--distill 1 --distill-weight 1 --teacher dense_ft.keras` (no label loss,
  T = 1: Minitron's logit distillation).

    .venv/bin/python bench/distill_teachers.py --family gpt2 --seeds 3   # after decoder_width.py --family gpt2

The fine-tuned teacher of seed N is decoder_width's `dense_plain_sN.keras`; perplexity on the same 8,192
held-out tokens. Writes the section "## Distillation teachers (issue 28)" of bench/TRANSFORMER.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import decoder_oneshot as oneshot  # noqa: E402
from bench import decoder_width as width  # noqa: E402
from bench.bench_common import replace_section, scratch  # noqa: E402

HEADING = "## Distillation teachers (issue 28)"
ROWS = ("hidden0.75", "ffn0.75", "depth0.75")
VARIANTS = {  # label -> (--distill T, --distill-weight, fine-tuned teacher)
    "distill, fine-tuned teacher": (2.0, 0.5, True),
    "KD only (T 1, weight 1), fine-tuned teacher": (1.0, 1.0, True),
}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="gpt2", choices=("llama", "gpt2"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--cache", default=str(scratch("prunecli_width")))
    args = parser.parse_args(argv)
    width.FAMILY = args.family
    cache = Path(args.cache)
    out_dir = cache / ("out" if args.family == "llama" else "out_gpt2")
    prefix = "" if args.family == "llama" else "gpt2_"
    measured = json.loads((cache / f"{prefix}width_results.json").read_text())
    store = cache / f"{prefix}distill_teachers.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    data = oneshot.token_file(cache)
    start = time.perf_counter()
    seeds = list(range(args.seeds))
    meta_file = next(cache.glob(f"{args.family}_*.json"))
    dense = meta_file.with_suffix(".keras")
    rows = (width.gpt2_runs if args.family == "gpt2" else width.runs)(json.loads(meta_file.read_text())["params"])
    for key in ROWS:
        step = next(r for r in rows if r["key"] == key)["steps"][-1]  # single-step rows: pruned from the dense model
        for seed in seeds:
            teacher = out_dir / f"dense_plain_s{seed}.keras"  # decoder_width's dense row, fine-tuned one epoch
            for n, (label, (temperature, weight, fine_tuned)) in enumerate(VARIANTS.items()):
                tag = f"{key}|{label}|{seed}"
                if tag in results:
                    continue
                values = {**step, "distill": temperature, "distill_weight": weight}
                if fine_tuned:
                    values["teacher"] = str(teacher)
                out = out_dir / f"{key}_teacher{n}_s{seed}.keras"
                results[tag] = width.prune_step(dense, data, out, values, "plain", seed)
                store.write_text(json.dumps(results, indent=1))
                print(time.strftime("%H:%M:%S"), tag, json.dumps(results[tag]), flush=True)
    _write(args, measured, results, seeds, time.perf_counter() - start)


def _stat(values: list[float]) -> str:
    if not values:
        return "–"
    return f"{np.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f}"


def _write(args, measured: dict, results: dict, seeds: list[int], seconds: float) -> None:
    def width_cells(key: str, variant: str) -> list[float]:
        return [measured[f"{key}|{variant}|{s}"]["finetuned"] for s in seeds if f"{key}|{variant}|{s}" in measured]

    dense_ft = width_cells("dense", "plain")
    lines = [
        HEADING,
        "",
        f"`.venv/bin/python bench/distill_teachers.py --family {args.family} --seeds {len(seeds)}` "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {seconds / 60:.0f} min). Held-out perplexity "
        f"after one epoch, mean ± half-range over seeds {seeds}, of decoder_width.py's {args.family} rows at "
        "0.75x parameters; the first two columns are decoder_width's own cells (the same runs). Why and how: the "
        f"script's docstring. The dense model fine-tuned the same epoch (the teacher of the last two columns): "
        f"{_stat(dense_ft)}.",
        "",
        "| row | plain | distill, dense teacher | " + " | ".join(VARIANTS) + " |",
        "|---|---|---|" + "---|" * len(VARIANTS),
    ]
    for key in ROWS:
        cells = [_stat(width_cells(key, "plain")), _stat(width_cells(key, "distill"))]
        cells += [
            _stat([results[f"{key}|{v}|{s}"]["finetuned"] for s in seeds if f"{key}|{v}|{s}" in results])
            for v in VARIANTS
        ]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")

    def mean(values):
        return float(np.mean(values)) if values else float("nan")

    against, ahead = [], {label: 0 for label in VARIANTS}
    for key in ROWS:
        plain = mean(width_cells(key, "plain"))
        for label in VARIANTS:
            got = mean([results[f"{key}|{label}|{s}"]["finetuned"] for s in seeds if f"{key}|{label}|{s}" in results])
            against.append(f"{key} {label}: {100 * (got / plain - 1):+.1f}%")
            ahead[label] += got < plain
    lines += [
        "",
        "Against plain fine-tuning (mean perplexity; negative: distillation ahead): "
        + "; ".join(against)
        + ". Rows where distillation is ahead: "
        + ", ".join(f"{label} {n} of {len(ROWS)}" for label, n in ahead.items())
        + " (the dense teacher as trained: none, decoder_width's reading).",
    ]
    replace_section(width.OUT, HEADING, "\n".join(lines))
    print(f"wrote {width.OUT}")


if __name__ == "__main__":
    main()
