"""The default one-shot command on a ~1B-parameter KerasHub decoder against Keras' own load + save of the
same file: wall time and peak memory, side by side, in alternating rounds.

    .venv/bin/python bench/cost_1b.py --rounds 2        # the 1.1B Llama-style model of bench/decoder_1b.py

The model is decoder_1b.py's (built from its config, random weights, saved once under --work and reused).
Each round runs, each in a fresh process: Keras `load_model` + `save`, then `prunecli prune MODEL -s 0.5
-o OUT --report R` (the command a user types: magnitude, global LAMP, sizes on). Peak memory is the
child's own maximum RSS (wait4). Issue 30's goal: the command within 1.3x of Keras' load + save in time
and 1.15x in peak memory. Results go to bench/DECODERS.md, section "## 1B decoder: the default command
vs Keras load + save".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_common import PRUNECLI, load_average, machine, write_decoders_section  # noqa: E402
from bench.decoder_1b import build, keras_roundtrip, monitored  # noqa: E402

HEADING = "## 1B decoder: the default command vs Keras load + save"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="decoder_1b.py's --work folder (the model is built there if absent)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--min-free", type=float, default=3.0, help="kill a run below this much available memory (GiB)")
    ap.add_argument("--no-write", action="store_true", help="print, do not write bench/DECODERS.md")
    args = ap.parse_args(argv)
    res = measure(Path(args.work), args.rounds, args.min_free)
    if res is None:
        return 1
    text = render(res, args.rounds).replace(str(Path(args.work).resolve()), "$WORK").replace(str(args.work), "$WORK")
    print(text)
    if not args.no_write:
        write_decoders_section(HEADING, text)
    return 0 if all(r["prune"]["rc"] == 0 for r in res["rounds"]) else 1


def measure(work: Path, rounds: int, min_free: float = 3.0) -> dict | None:
    """Alternating rounds of Keras load + save and the default command, each in a fresh process (the
    model built under `work` first if absent); None when the model could not be built. Also called by
    bench/run.py's `e2e_1b` section (bench/COST.md)."""
    # decoder_1b's model shape (its defaults): build() and monitored() read these from args
    args = argparse.Namespace(
        work=str(work), min_free=min_free, vocab=32000, hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192
    )
    work.mkdir(parents=True, exist_ok=True)
    model = work / "llama_h2048_l16_q32_kv8_f8192_v32000.keras"
    if not model.exists():
        built = build(args, model)
        if built["rc"] != 0:
            print(json.dumps(built, indent=1))
            return None
    out, report = work / "default_pruned.keras", work / "default_report.json"
    cmd = [PRUNECLI, "prune", str(model), "-s", "0.5", "-o", str(out), "--report", str(report)]
    res = {"machine": machine(), "load_before": load_average(), "file_bytes": model.stat().st_size, "rounds": []}
    for i in range(rounds):
        keras = keras_roundtrip(args, model, work / "resaved.keras")
        out.unlink(missing_ok=True)
        prune = monitored(cmd, args, work / "default_prune.log")
        timings = json.loads(report.read_text()).get("timings_s") if report.exists() else None
        res["rounds"].append({"keras": _keep(keras), "prune": _keep(prune), "timings": timings})
        print(f"round {i + 1}:", json.dumps(res["rounds"][-1], default=str), flush=True)
        (work / "cost_1b.json").write_text(json.dumps(res, indent=1, default=str))
    for leftover in (out, work / "resaved.keras"):  # 4 GiB each
        leftover.unlink(missing_ok=True)
    res["load_end"] = load_average()
    (work / "cost_1b.json").write_text(json.dumps(res, indent=1, default=str))
    return res


def _keep(run: dict) -> dict:
    return {k: run.get(k) for k in ("rc", "wall_s", "max_rss", "load_s", "save_s", "killed")}


def render(res: dict, rounds: int, heading: bool = True) -> str:
    gib = lambda n: f"{n / 2**30:.2f} GiB"  # noqa: E731
    rows = res["rounds"]
    ok = [r for r in rows if r["prune"]["rc"] == 0 and r["keras"]["rc"] == 0]
    lines = [HEADING, ""] if heading else []
    lines += [
        f"bench/cost_1b.py, {rounds} round(s) (`.venv/bin/python bench/cost_1b.py --work $WORK --rounds {rounds}`, or "
        "bench/run.py's e2e_1b section): decoder_1b.py's KerasHub "
        f"LlamaCausalLM (1.10B parameters, random weights, a {res['file_bytes'] / 2**30:.1f} GiB .keras file). "
        "Each round, each in a fresh process: Keras `load_model` + `save`, then the default command "
        "(magnitude, global LAMP, sizes on):",
        "",
        "    prunecli prune $WORK/llama_h2048_l16_q32_kv8_f8192_v32000.keras -s 0.5 -o $WORK/default_pruned.keras --report R.json",
        "",
        f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, {res['machine']['memory']}, shared; "
        f"load average {res['load_before']} before, {res.get('load_end')} after.",
        "",
        "| round | Keras load + save | prunecli prune (rc) | time ratio | Keras peak RSS | prunecli peak RSS | memory ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(rows, 1):
        k, p = r["keras"], r["prune"]
        lines.append(
            f"| {i} | {k['wall_s']:.0f} s | {p['wall_s']:.0f} s ({p['rc']}) | {p['wall_s'] / k['wall_s']:.2f}x | "
            f"{gib(k['max_rss'])} | {gib(p['max_rss'])} | {p['max_rss'] / k['max_rss']:.2f}x |"
        )
    if ok:
        t = statistics.median(r["prune"]["wall_s"] / r["keras"]["wall_s"] for r in ok)
        m = statistics.median(r["prune"]["max_rss"] / r["keras"]["max_rss"] for r in ok)
        lines += [
            "",
            f"Median over {len(ok)} round(s): time {t:.2f}x (goal <= 1.3x: {'met' if t <= 1.3 else 'NOT met'}), "
            f"peak memory {m:.2f}x (goal <= 1.15x: {'met' if m <= 1.15 else 'NOT met'}).",
        ]
    timings = rows[-1].get("timings") if rows else None
    if timings:
        lines += ["", "prunecli's step timings in the last round (report `timings_s`, s): " + ", ".join(
            f"{name} {v:.1f}" for name, v in timings.items() if isinstance(v, (int, float))
        ) + "."]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
