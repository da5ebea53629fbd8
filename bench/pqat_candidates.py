"""What raises prunecli's 90% + int8 result on the text Transformer within the same fine-tuning budget (issue 27,
where bench/pqat_table.py leaves prunecli behind tfmot's PQAT on that model only). Writes its own section of
bench/QUANT.md.

    .venv/bin/python bench/pqat_candidates.py [--seeds 3] [--epochs 2] [--models text] [--candidates a,b]

Each candidate is the default `prunecli prune MODEL --sparsity 0.9 --data D --epochs 2 --quantize int8` (as
bench/pqat_table.py runs it, through bench/quant_table.run_point) with options prunecli already has on top:
the teacher (`--distill`), the layer refit (`--reconstruct`), the schedule, the allocation, `--qat on`.
Every run keeps the sparsity and the 2 epochs; what changes is how they are spent.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import json_lines, load_average, machine, quiet_tf, replace_section, table  # noqa: E402
from pqat_table import mean, spread  # noqa: E402
from quant_table import model_files, run_point  # noqa: E402

HEADING = "## Raising prunecli's own 90% + int8 within 2 epochs: candidates (`bench/pqat_candidates.py`)"
# name -> (quant_table variant, options on top of the default command, what it is on the command line)
CANDIDATES = {
    "default": ("int8", {}, "(the default: magnitude, measured allocation, polynomial schedule, --qat off)"),
    "qat": ("int8-qat", {}, "--qat on"),
    "distill": ("int8", {"distill": 2.0}, "--distill 2 (teacher: the dense model, soft-loss weight 0.5)"),
    "reconstruct": ("int8", {"reconstruct": True}, "--reconstruct (its schedule then one-shot)"),
    "oneshot": ("int8", {"schedule": "oneshot"}, "--schedule oneshot (prune once, then fine-tune 2 epochs)"),
    "lamp": ("int8", {"normalize": "lamp"}, "--normalize lamp (global LAMP)"),
    "owl": ("int8", {"normalize": "owl"}, "--normalize owl"),
    "distill-w0.9": ("int8", {"distill": 2.0, "distill_weight": 0.9}, "--distill 2 --distill-weight 0.9"),
    "oneshot+distill": ("int8", {"schedule": "oneshot", "distill": 2.0}, "--schedule oneshot --distill 2"),
    "owl+distill": ("int8", {"normalize": "owl", "distill": 2.0}, "--normalize owl --distill 2"),
    "owl+qat": ("int8-qat", {"normalize": "owl"}, "--normalize owl --qat on"),
    "distill+qat": ("int8-qat", {"distill": 2.0}, "--distill 2 --qat on"),
    "cosine": ("int8", {"lr_schedule": "cosine"}, "--lr-schedule cosine"),
}


def render(args, rows: list[dict], elapsed: float, info: dict) -> str:
    headers = [
        "candidate",
        "options",
        "model",
        "seeds",
        "sparsity",
        "float pruned",
        "int8",
        "int8 - default (per seed)",
        "seconds",
    ]
    body = []
    for name in args.models:
        base = {r["seed"]: r["quant_acc"] for r in rows if r["model"] == name and r["candidate"] == "default"}
        for candidate in args.candidates:
            cell = [r for r in rows if r["model"] == name and r["candidate"] == candidate]
            if not cell:
                continue
            gaps = [100 * (r["quant_acc"] - base[r["seed"]]) for r in cell if r["seed"] in base]
            body.append(
                [
                    candidate,
                    CANDIDATES[candidate][2],
                    name,
                    len(cell),
                    spread([r["sparsity"] for r in cell]),
                    spread([r["float_acc"] for r in cell]),
                    spread([r["quant_acc"] for r in cell]),
                    f"{mean(gaps):+.1f} ({', '.join(f'{g:+.1f}' for g in gaps)})"
                    if gaps and candidate != "default"
                    else "-",
                    spread([r["seconds"] for r in cell], 1, 0),
                ]
            )
    return "\n".join(
        [
            HEADING,
            "",
            (
                f"Rows of several `nice -n 5 .venv/bin/python bench/pqat_candidates.py --json ROWS` runs (other seeds and"
                f" candidates per run), rendered together with `--render ROWS` ({sum(r['seconds'] for r in rows) / 60:.0f}"
                " min of prune runs"
                if args.render
                else f"`nice -n 5 .venv/bin/python bench/pqat_candidates.py --seeds {args.seeds} --epochs {args.epochs}"
                f" --models {','.join(args.models)} --point {args.point} --candidates {','.join(args.candidates)}`"
                f" ({elapsed / 60:.1f} min"
            )
            + f" on this machine: {info['cpu']}, {info['cores']} cores shared with other jobs, load average at the end"
            f" {load_average()}). Each row: the default `prunecli prune MODEL --sparsity {args.point} --data D --epochs"
            f" {args.epochs} --quantize int8` with the options shown, per seed (seed = pruning/fine-tuning seed and data"
            " order; the text model and the digits CNN are the same model every seed, the MNIST models are retrained"
            " per seed as in bench/quant_table.py). Accuracy % on the test split, mean ±half-range over seeds; the"
            " difference from the default is per seed (same seed, same data order).",
            "",
            table(headers, body),
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--point", default="0.9")
    parser.add_argument("--models", default="text")
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--json", type=Path, default=None, help="also append the raw rows here (JSON lines)")
    parser.add_argument("--render", type=Path, default=None, help="only rewrite the section from this --json file")
    parser.add_argument("--no-write", action="store_true", help="print the section, do not write QUANT.md")
    args = parser.parse_args()
    args.models = args.models.split(",")
    args.candidates = args.candidates.split(",")
    quiet_tf()
    info = machine()
    if args.render:
        rows = json_lines(args.render)
        text = render(args, rows, max(r["elapsed_s"] for r in rows), info)
    else:
        started, rows = time.time(), []
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for name in args.models:
                    model_path, data_path = model_files(name, seed, work)
                    for candidate in args.candidates:
                        variant, options, _ = CANDIDATES[candidate]
                        t = time.perf_counter()
                        out = run_point(model_path, data_path, args.point, variant, seed, args.epochs, work, options)
                        row = {"model": name, "seed": seed, "candidate": candidate, "seconds": time.perf_counter() - t}
                        row.update({k: out[k] for k in ("float_acc", "quant_acc", "sparsity", "pruned_nonzero")})
                        row["elapsed_s"] = time.time() - started
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        if args.json:
                            with open(args.json, "a", encoding="utf-8") as f:
                                f.write(json.dumps(row) + "\n")
        text = render(args, rows, time.time() - started, info)
    if not args.no_write:
        replace_section(ROOT / "bench" / "QUANT.md", HEADING, text)
    print(text)


if __name__ == "__main__":
    main()
