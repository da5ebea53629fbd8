"""SparseGPT 2:4 on a ~1B-parameter KerasHub Llama-style decoder: wall time and peak memory of the
command a user runs, next to Keras' own load + save of the same file.

    .venv/bin/python bench/decoder_1b.py                       # hidden 2048, 16 layers, 32/8 heads, FFN 8192
    .venv/bin/python bench/decoder_1b.py --samples 8 --layers 2   # a quick check of the harness

The model is a keras_hub.models.LlamaCausalLM built from its config (random weights, nothing
downloaded), saved once under --work (default prunecli_1b in the system temporary folder, never in the repository). The tokens
are bytes of the Python standard library's own source (ids 0..255 of the 32,000-token vocabulary), cut
into --samples rows of --seq tokens, with held-out rows for perplexity. Then, each in its own process:

* keras: `keras.saving.load_model` + `model.save` of the same file (the floor any tool pays);
* prunecli: `prunecli prune MODEL --method sparsegpt -g n:m=2:4 --data TOKENS.npz
  --calibration-samples K -o OUT.keras --report R.json`.

Peak resident memory is the child's own (os.wait4's ru_maxrss); a 1 s sampler also records the
process tree's RSS against the progress line printed at that moment (which step held the peak), and
kills the run when the machine's available memory drops below --min-free GiB (no swapping to death).
Results go to bench/DECODERS.md, section "## 1B decoder: SparseGPT 2:4 cost".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_common import (  # noqa: E402
    PRUNECLI,
    PYTHON,
    load_average,
    machine,
    save_token_npz,
    scratch,
    stdlib_sources,
    write_decoders_section,
)

HEADING = "## 1B decoder: SparseGPT 2:4 cost"


def build(args, path: Path) -> dict:
    """Build and save the model in a child process (its memory is gone when it exits)."""
    code = f"""
import json, time, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, keras_hub
t = time.perf_counter()
keras.utils.set_random_seed(0)
backbone = keras_hub.models.LlamaBackbone(vocabulary_size={args.vocab}, num_layers={args.layers},
    num_query_heads={args.heads}, num_key_value_heads={args.kv_heads}, hidden_dim={args.hidden},
    intermediate_dim={args.ffn})
model = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
built = time.perf_counter() - t
n = model.count_params()
t = time.perf_counter()
model.save({str(path)!r})
print(json.dumps({{"params": int(n), "build_s": built, "save_s": time.perf_counter() - t}}))
"""
    return monitored([PYTHON, "-c", code], args, Path(args.work) / "build.log")


def tokens(args, path: Path) -> None:
    """Byte ids of the standard library's source: --samples calibration rows, --test held-out rows."""
    import numpy as np

    need = (args.samples + args.test) * args.seq
    chunks, have = [], 0
    for p in stdlib_sources():
        data = p.read_bytes()
        chunks.append(np.frombuffer(data, np.uint8))
        have += len(data)
        if have >= need:
            break
    stream = np.concatenate(chunks)[:need].astype(np.int32).reshape(-1, args.seq)
    save_token_npz(path, stream[: args.samples], stream[args.samples :])


def monitored(cmd: list[str], args, log: Path) -> dict:
    """Run `cmd`; wall time, exit code, the child's peak RSS (wait4), the sampled process-tree RSS peak
    and the progress line at that moment; killed when available memory falls below --min-free GiB."""
    import psutil

    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
        stdout = []
        reader = threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True)
        reader.start()
        peak = {"rss": 0, "at_s": 0.0, "step": "", "min_available": None}
        killed = None
        ps = psutil.Process(proc.pid)
        while True:
            try:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                break
            try:
                rss = sum(p.memory_info().rss for p in [ps, *ps.children(recursive=True)])
            except psutil.Error:
                rss = 0
            avail = psutil.virtual_memory().available
            if peak["min_available"] is None or avail < peak["min_available"]:
                peak["min_available"] = avail
            if rss > peak["rss"]:
                peak.update(rss=rss, at_s=time.perf_counter() - start, step=_last_line(log))
            if avail < args.min_free * 2**30:
                killed = f"available memory {avail / 2**30:.1f} GiB < {args.min_free} GiB at {_last_line(log)!r}"
                proc.kill()
            time.sleep(1.0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        reader.join(5)
    wall = time.perf_counter() - start
    out = {
        "rc": proc.returncode,
        "wall_s": wall,
        "max_rss": usage.ru_maxrss * 1024,
        "sampled_peak": peak,
        "killed": killed,
        "stderr_tail": log.read_text(errors="replace")[-3000:],
    }
    lines = "".join(stdout).strip().splitlines()
    if lines:
        try:
            out.update(json.loads(lines[-1]))
        except json.JSONDecodeError:
            out["stdout_tail"] = "".join(stdout)[-2000:]
    return out


def _last_line(log: Path) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1][:160] if lines else ""


def keras_roundtrip(args, path: Path, again: Path) -> dict:
    code = f"""
import json, time, os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, keras_hub
t = time.perf_counter()
model = keras.saving.load_model({str(path)!r})
load = time.perf_counter() - t
t = time.perf_counter()
model.save({str(again)!r})
print(json.dumps({{"load_s": load, "save_s": time.perf_counter() - t}}))
"""
    return monitored([PYTHON, "-c", code], args, Path(args.work) / "keras.log")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", default=str(scratch("prunecli_1b")), help="where the model, tokens and outputs go")
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--samples", type=int, default=16, help="calibration sequences")
    ap.add_argument("--test", type=int, default=8, help="held-out sequences for perplexity")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--min-free", type=float, default=3.0, help="kill a run below this much available memory (GiB)")
    ap.add_argument("--skip-keras", action="store_true", help="do not time Keras' own load + save")
    ap.add_argument("--no-write", action="store_true", help="print, do not write bench/DECODERS.md")
    ap.add_argument("--render-only", action="store_true", help="rewrite the section from the last run's files")
    args = ap.parse_args(argv)

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    tag = f"h{args.hidden}_l{args.layers}_q{args.heads}_kv{args.kv_heads}_f{args.ffn}_v{args.vocab}"
    model_path = work / f"llama_{tag}.keras"
    info_path = work / f"llama_{tag}.json"
    report = work / "report_2of4.json"
    if args.render_only:
        results = json.loads((work / f"result_{tag}.json").read_text())
        if report.exists():
            results["report"] = _report_summary(report)
        text = render(results, args)
        print(text)
        if not args.no_write:
            write_decoders_section(heading(args), text)
        return 0
    results = {"load_average_start": load_average(), "machine": machine()}
    if not model_path.exists() or not info_path.exists():
        built = build(args, model_path)
        if built["rc"] != 0:
            print(json.dumps(built, indent=1))
            return 1
        info_path.write_text(json.dumps(built))
    results["build"] = json.loads(info_path.read_text())
    results["file_bytes"] = model_path.stat().st_size
    print("model:", json.dumps({k: results["build"].get(k) for k in ("params", "build_s", "save_s", "max_rss")}))

    data = work / f"tokens_{args.samples}x{args.seq}.npz"
    tokens(args, data)
    if not args.skip_keras:
        results["keras"] = keras_roundtrip(args, model_path, work / "resaved.keras")
        print(
            "keras load+save:",
            json.dumps({k: results["keras"].get(k) for k in ("rc", "wall_s", "load_s", "save_s", "max_rss")}),
        )
    out = work / "pruned_2of4.keras"
    for p in (out, report):
        p.unlink(missing_ok=True)
    cmd = [
        PRUNECLI, "prune", str(model_path), "--method", "sparsegpt", "-g", "n:m=2:4", "--data", str(data),
        "--calibration-samples", str(args.samples), "-o", str(out), "--report", str(report), "--no-sizes",
    ]  # fmt: skip
    results["command"] = " ".join(["prunecli", *cmd[1:]])
    results["load_average_before_prune"] = load_average()
    results["prune"] = run = monitored(cmd, args, work / "prune.log")
    results["load_average_end"] = load_average()
    if report.exists():
        results["report"] = _report_summary(report)
    (work / f"result_{tag}.json").write_text(json.dumps(results, indent=1, default=str))
    print("prune:", json.dumps({k: run.get(k) for k in ("rc", "wall_s", "max_rss", "sampled_peak", "killed")}))
    if not args.no_write:
        write_decoders_section(heading(args), render(results, args))
    return 0 if run["rc"] == 0 else 1


def _report_summary(path: Path) -> dict:
    r = json.loads(path.read_text())
    return {
        "metrics": r.get("metrics"),
        "timings": r.get("timings_s") or r.get("timings"),
        "calibration": {k: v for k, v in (r.get("calibration") or {}).items() if k not in ("layers",)},
        "prunable_sparsity": (r.get("totals") or {}).get("prunable_sparsity"),
        "notes": r.get("notes"),
    }


def heading(args) -> str:
    """The default config's section, or one of its own for another depth or width (a shorter check)."""
    default = (args.hidden, args.layers, args.heads, args.kv_heads, args.ffn, args.vocab) == (
        2048,
        16,
        32,
        8,
        8192,
        32000,
    )
    return (
        HEADING if default else f"## The same decoder at {args.layers} layers, hidden {args.hidden}: SparseGPT 2:4 cost"
    )


def render(res: dict, args) -> str:
    """The section for `res`; paths under --work are written as $WORK (the folder is this machine's)."""
    return _render(res, args).replace(str(Path(args.work).resolve()), "$WORK").replace(str(args.work), "$WORK")


def _render(res: dict, args) -> str:
    gib = lambda n: f"{n / 2**30:.1f} GiB" if n else "-"  # noqa: E731
    b, k, p = res["build"], res.get("keras") or {}, res["prune"]
    rep = res.get("report") or {}
    metrics = rep.get("metrics") or {}
    ppl = lambda stage: (metrics.get(stage) or {}).get("perplexity")  # noqa: E731
    cal = rep.get("calibration") or {}
    lines = [
        heading(args),
        "",
        f"`.venv/bin/python bench/decoder_1b.py{'' if heading(args) == HEADING else f' --layers {args.layers}'} --samples {args.samples} --seq {args.seq}`: a KerasHub "
        f"LlamaCausalLM from its config (hidden {args.hidden}, {args.layers} layers, {args.heads} query / "
        f"{args.kv_heads} key-value heads, SwiGLU FFN {args.ffn}, vocabulary {args.vocab}, random weights), "
        f"**{b['params'] / 1e9:.2f}B parameters** (`model.count_params()`), a {gib(res['file_bytes'])} .keras file "
        f"under --work. Calibration: {args.samples} sequences of {args.seq} tokens (bytes of the standard "
        f"library's source), {args.test} held-out sequences for perplexity. Machine: {res['machine']['cpu']}, "
        f"{res['machine']['cores']} cores, {res['machine']['memory']}, shared with other jobs: load average "
        f"(1/5/15 min) {res['load_average_before_prune']} before the prune, {res['load_average_end']} after.",
        "",
        f"    {res['command']}",
        "",
        "| step | wall | peak RSS (wait4) | sampled peak at |",
        "|---|---|---|---|",
        f"| build + save (Keras, child) | {b['build_s'] + b['save_s']:.0f} s (save {b['save_s']:.0f} s) | "
        f"{gib(b.get('max_rss'))} | |",
    ]
    if k:
        lines.append(
            f"| Keras load + save of the same file | {k['wall_s']:.0f} s (load {k.get('load_s', 0):.0f} s, "
            f"save {k.get('save_s', 0):.0f} s) | {gib(k['max_rss'])} | |"
        )
    sp = p["sampled_peak"]
    lines.append(
        f"| prunecli prune, sparsegpt 2:4 (rc {p['rc']}) | {p['wall_s']:.0f} s | {gib(p['max_rss'])} | "
        f"{sp['at_s']:.0f} s: `{sp['step']}` |"
    )
    lines.append("")
    if p.get("killed"):
        lines.append(f"Killed: {p['killed']}.")
    if res.get("stopped"):  # a run stopped by hand (a deadline): where it was, written into the result file
        lines.append(f"Stopped by hand: {res['stopped']}")
    timings = rep.get("timings") or {}
    if timings:
        lines.append("prunecli's own step timings (report `timings`, s): " + ", ".join(
            f"{name} {v:.0f}" if isinstance(v, (int, float)) else f"{name} {v}" for name, v in timings.items()
        ) + ".")  # fmt: skip
    if cal:
        lines.append(
            f"Calibration: {cal.get('samples')} samples, passes {cal.get('passes')}, "
            f"{cal.get('time_s', 0):.0f} s, fallback {len(cal.get('fallback') or {})} layers; "
            f"prunable sparsity {rep.get('prunable_sparsity')}."
        )
    if ppl("before"):
        lines.append(
            f"Held-out perplexity (random weights, so only a finiteness check): dense {ppl('before'):.1f}, "
            f"2:4 {ppl('after_pruning'):.1f}."
        )
    lines.append(f"Minimum available memory during the prune: {gib(sp['min_available'])}.")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
