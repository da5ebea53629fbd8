"""Run prunecli's command matrix on every zoo model (one command at a time) and write bench/ZOO.md.

    python bench/zoo/run.py [--quick] [--only ID ...] [--commands NAME ...] [--timeout 300] [--out bench/ZOO.md]

Run bench/zoo/fetch.py first (`make zoo` does both). Per model and command: exit code, wall time,
peak RSS of the command (os.wait4's ru_maxrss), the report's sparsity and parameters, and for every
model file a command wrote, whether Keras 3 loads it and runs it on the model's ORIGINAL inputs, and
its agreement with the dense model there (bench/zoo/check.py). Raw results: ZOO_CACHE/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
import models as zoo  # noqa: E402

PRUNECLI = str(ROOT / ".venv" / "bin" / "prunecli")
FINDINGS = "<!-- findings: hand-written, kept when run.py rewrites this file -->"
CAL = ["--calibration-samples", "32", "--batch-size", "32"]  # --score-batches: no command here reads it (refused)


def matrix(e, m, x, xy, out, reduced=False):
    """(name, argv, output model or None) for one model."""
    o = lambda name: str(out / f"{name}{e['suffix'] or '.keras'}")  # noqa: E731 - a SavedModel folder's: .keras
    r = lambda name: ["-r", str(out / f"{name}.json"), "-q"]  # noqa: E731
    if e["expect"] == "refused":
        return [("prune -s 0.5", ["prune", m, "-s", "0.5", "-o", o("p50"), *r("p50")], o("p50"))]
    if reduced:
        cmds = [
            ("prune -s 0.5", ["prune", m, "-s", "0.5", "-o", o("p50"), *r("p50")], o("p50")),
            (
                "prune -g neuron --shrink",
                ["prune", m, "-g", "neuron", "-s", "0.5", "--shrink", "-o", o("shrink"), *r("shrink")],
                o("shrink"),
            ),
        ]
        if xy:
            cmds.append(
                (
                    "wanda xy",
                    ["prune", m, "-m", "wanda", "--data", xy, *CAL, "-o", o("wanda_xy"), *r("wanda_xy")],
                    o("wanda_xy"),
                )
            )
        return cmds
    cmds = [
        ("inspect", ["inspect", m], None),
        ("prune -s 0.5", ["prune", m, "-s", "0.5", "-o", o("p50"), *r("p50")], o("p50")),
        ("prune -s 0.9", ["prune", m, "-s", "0.9", "-o", o("p90"), *r("p90")], o("p90")),
        (
            "prune --scope layer",
            ["prune", m, "-s", "0.5", "--scope", "layer", "-o", o("layer"), *r("layer")],
            o("layer"),
        ),
        (
            "prune -g neuron --shrink",
            ["prune", m, "-g", "neuron", "-s", "0.5", "--shrink", "-o", o("shrink"), *r("shrink")],
            o("shrink"),
        ),
        ("plan -g neuron", ["plan", m, "-g", "neuron", "-s", "0.5", "-q"], None),
        (
            "prune --target params=0.5",  # one-shot; with labelled data the refit is on by default
            [
                "prune",
                m,
                "--target",
                "params=0.5",
                *(["--data", xy, *CAL] if xy else []),
                "-o",
                o("target"),
                *r("target"),
            ],
            o("target"),
        ),
    ]
    if xy:
        cmds.append(
            (
                "sweep",
                [
                    "sweep",
                    m,
                    "--data",
                    xy,
                    "--sparsities",
                    "0.5,0.9",
                    "--no-per-layer",
                    "-o",
                    str(out / "sweep"),
                    "-q",
                    *CAL[2:],
                ],
                None,
            )
        )
    for meth in ("wanda", "sparsegpt"):
        cmds.append(
            (
                f"{meth} x",
                ["prune", m, "-m", meth, "--data", x, *CAL, "-o", o(f"{meth}_x"), *r(f"{meth}_x")],
                o(f"{meth}_x"),
            )
        )
        if xy:
            cmds.append(
                (
                    f"{meth} xy",
                    ["prune", m, "-m", meth, "--data", xy, *CAL, "-o", o(f"{meth}_xy"), *r(f"{meth}_xy")],
                    o(f"{meth}_xy"),
                )
            )
    cmds += [
        ("export tflite", ["prune", m, "--export", "tflite", "-o", o("tfl"), *r("tfl")], o("tfl")),
        (
            "export tflite-int8",
            ["prune", m, "--export", "tflite-int8", "--data", x, "--batch-size", "32", "-o", o("int8"), *r("int8")],
            o("int8"),
        ),
        ("export savedmodel", ["prune", m, "--export", "savedmodel", "-o", o("sm"), *r("sm")], o("sm")),
    ]
    if e.get("attention"):
        cmds.append(("prune -g head", ["prune", m, "-g", "head", "-s", "0.5", "-o", o("head"), *r("head")], o("head")))
    return cmds


def run_one(argv, timeout):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, start_new_session=True)
    # drain pipes in threads so a chatty command cannot block
    import threading

    bufs = {"out": b"", "err": b""}

    def drain(name, f):
        bufs[name] = f.read()

    th = [threading.Thread(target=drain, args=(n, f), daemon=True) for n, f in (("out", p.stdout), ("err", p.stderr))]
    for t in th:
        t.start()
    timed_out, status, rusage = False, None, None
    while True:
        pid, status, rusage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - t0 > timeout:
            timed_out = True
            os.killpg(p.pid, signal.SIGTERM)
            time.sleep(5)
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            pid, status, rusage = os.wait4(p.pid, 0)
            break
        time.sleep(0.1)
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in th:
        t.join(timeout=5)
    wall = time.monotonic() - t0
    err = bufs["err"].decode(errors="replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errline = next((ln for ln in reversed(lines) if ln.startswith("prunecli: error")), lines[-1] if lines else "")
    return {
        "rc": "timeout" if timed_out else p.returncode,
        "wall_s": round(wall, 1),
        "rss_mb": round(rusage.ru_maxrss / 1024) if rusage else None,
        # paths relative to the checkout, so ZOO.md names no machine's folders
        "error": errline.strip().replace(f"{ROOT}/", "")[:300] if (timed_out or p.returncode) else "",
    }


def report_facts(path):
    try:
        rep = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    t = rep.get("totals", {})
    f = {"params": t.get("params"), "sparsity": t.get("prunable_sparsity")}
    sh = rep.get("shrink") or {}
    if sh:
        f["params_before"], f["params_after"] = sh.get("params_before"), sh.get("params_after")
    return f


def fmt_check(c, kind):
    if not c:
        return ""
    if not c.get("loads"):
        return "**no load**"
    if not c.get("runs"):
        return "**rejects original x**"
    if not c.get("shape_ok", True):
        return f"**out shape {c.get('out_shape')}≠{c.get('dense_shape')}**"
    via = f" (via {c['loader']})" if c.get("loader") not in (None, "keras") else ""
    if "agreement" in c:
        what = "top-1" if kind != "binary" else "agree"
        return f"{100 * c['agreement']:.1f}% {what}{via}"
    if "rel_err" in c:
        return f"rel.err {c['rel_err']:.3g}{via}"
    return "loads+runs" + via


def write_md(results, entries, path, quick, started):
    L = ["# Zoo: real pretrained Keras files from the package index", ""]
    L += [
        "Generated by `make zoo` (`bench/zoo/fetch.py` + `bench/zoo/run.py`"
        + (" --quick" if quick else "")
        + f"), {time.strftime('%Y-%m-%d', time.localtime(started))}, on a shared 2-core machine, one command at a time, "
        "300 s per command. Models come from pinned packages (`bench/zoo/models.py`); nothing is committed.",
        "",
        "Agreement = the output model loaded with Keras 3 (else tf_keras, else prunecli's reader for a Keras-2 "
        "CuDNN .h5; `via` names it when not Keras 3) and run on the model's ORIGINAL inputs (first 64 "
        "examples of the .npz), compared with the dense model: top-1 agreement (per position for sequence "
        "outputs), decision agreement for the sigmoid model, relative output error for regressors. "
        "`sweep` runs `--no-per-layer` at 0.5,0.9; wanda/sparsegpt use `--calibration-samples 32 "
        "--batch-size 32` (rows before 2026-12-07 also gave `--score-batches 2`, which none of them read); `x` = inputs only, `xy` = inputs + labels; `prune --target params=0.5` "
        "is one-shot, with the labelled data and the same calibration settings where the model has some (so "
        "its channels are refit by default). No zoo file has "
        "attention layers, so `-g head` ran nowhere. Models with custom layers, a named custom activation or "
        "Lambda code run every command with `--custom-objects FILE` (the package's own layer module, or "
        "bench/zoo/custom/ID.py), the check loading their outputs with the same objects; files whose custom "
        "code cannot run under Keras 3 or that hold no model get `prune` only (a clean refusal is the "
        "expected result).",
        "",
        "## Models",
        "",
        "| id | package==version | file | architecture | Keras | params | inputs |",
        "|---|---|---|---|---|---:|---|",
    ]
    for e in entries:
        res = results.get(e["id"], {})
        params = e["params"] or res.get("params") or "?"
        member = e["member"] + (f"` → `{e['folder_in']}" if e.get("folder_in") else "")
        L.append(
            f"| {e['id']}{' (refusal)' if e['expect'] == 'refused' else ''} | {e['dist']}=={e['version']} | "
            f"`{member}` | {e['arch']} | {e['keras_version']} | {params:,} | {e['input_source']} |"
            if isinstance(params, int)
            else f"| {e['id']} (refusal) | {e['dist']}=={e['version']} | `{member}` | {e['arch']} | "
            f"{e['keras_version']} | {params} | {e['input_source']} |"
        )
    # summary of exit codes per command
    L += ["", "## Exit codes per command", ""]
    counts = {}
    for res in results.values():
        for name, r in res.get("commands", {}).items():
            counts.setdefault(name, {}).setdefault(str(r["rc"]), 0)
            counts[name][str(r["rc"])] += 1
    codes = sorted(
        {c for v in counts.values() for c in v}, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0)
    )
    L += ["| command | " + " | ".join(f"exit {c}" for c in codes) + " |", "|---|" + "---:|" * len(codes)]
    for name, v in counts.items():
        L.append(f"| {name} | " + " | ".join(str(v.get(c, "")) for c in codes) + " |")
    L += ["", "## Per model", ""]
    for e in entries:
        res = results.get(e["id"])
        if not res:
            continue
        L += [f"### {e['id']} ({e['dist']}=={e['version']}, Keras {e['keras_version']})", ""]
        if res.get("dense_loader") or res.get("dense_error"):
            L.append(
                f"Dense reference run with: {res.get('dense_loader') or 'nothing (' + res.get('dense_error', '') + ')'}."
            )
            L.append("")
        L += [
            "| command | exit | wall s | peak RSS MB | sparsity | params (before → after) | Keras 3 load + original x | error (one line) |",
            "|---|---|---:|---:|---:|---|---|---|",
        ]
        for name, r in res["commands"].items():
            sp = r.get("sparsity")
            sp = f"{sp:.3f}" if isinstance(sp, (int, float)) else ""
            if r.get("params_before") is not None:
                pa = f"{r['params_before']:,} → {r['params_after']:,}"
            elif r.get("params") is not None:
                pa = f"{r['params']:,}"
            else:
                pa = ""
            chk = fmt_check(r.get("check"), e["kind"])
            if r.get("check") and r["check"].get("error"):
                chk += f" ({r['check']['error'][:160]})"
            err = r["error"].replace("|", "\\|")
            L.append(
                f"| {name} | {r['rc']} | {r['wall_s']} | {r['rss_mb']} | {sp} | {pa} | {chk.replace('|', '/')} | {err} |"
            )
        L.append("")
    keep = ""
    if Path(path).exists():  # a hand-written findings section below the marker survives regeneration
        prev = Path(path).read_text()
        if FINDINGS in prev:
            keep = prev[prev.index(FINDINGS) :]
    Path(path).write_text("\n".join(L) + "\n" + (("\n" + keep) if keep else ""))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a subset: the models marked quick in models.py")
    ap.add_argument("--only", nargs="*")
    ap.add_argument(
        "--reduced-rest",
        action="store_true",
        help="full matrix only for the quick models; the others get prune -s 0.5, -g neuron --shrink and "
        "wanda on labelled data; refusals get prune only (what fits ~40 min on 2 shared cores)",
    )
    ap.add_argument(
        "--commands",
        nargs="*",
        help="run only these commands of the matrix (names as in ZOO.md), kept beside each model's earlier results",
    )
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench" / "ZOO.md"))
    ap.add_argument("--cache", default=os.environ.get("ZOO_CACHE", str(HERE / ".cache")))
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    entries = zoo.entries(quick=args.quick, only=args.only)
    shown = zoo.entries(quick=args.quick)
    results, started = {}, time.time()
    if (args.only or args.commands) and (cache / "results.json").exists():  # adds to the previous run's results
        results = json.loads((cache / "results.json").read_text())
    for e in entries:
        m = str(cache / "models" / f"{e['id']}{e['suffix']}")
        x = str(cache / "data" / f"{e['id']}.x.npz")
        xy = cache / "data" / f"{e['id']}.xy.npz"
        xy = str(xy) if xy.exists() else None
        out = cache / "out" / e["id"]
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        res = {"commands": {}}
        if args.commands:  # the other commands keep their earlier results
            res = {**results.get(e["id"], {}), "commands": dict(results.get(e["id"], {}).get("commands", {}))}
        outputs = {}
        custom = zoo.custom_objects(e, cache)
        custom_args = ["--custom-objects", custom] if custom else []
        chosen = matrix(e, m, x, xy, out, reduced=args.reduced_rest and not e["quick"])
        for name, argv_, o in [c for c in chosen if not args.commands or c[0] in args.commands]:
            r = run_one([PRUNECLI, *argv_, *custom_args], args.timeout)
            rep = next((argv_[i + 1] for i, a in enumerate(argv_) if a == "-r"), None)
            if rep:
                r.update(report_facts(rep))
            for prefix in (f"{cache}/", f"{os.path.relpath(cache)}/"):  # prunecli may show it relative to here
                r["error"] = r["error"].replace(prefix, "$ZOO_CACHE/")  # ZOO.md names no local folder
            res["commands"][name] = r
            if o and os.path.exists(o):
                outputs[o] = name
            print(
                f"{e['id']:24s} {name:26s} rc={r['rc']!s:7s} {r['wall_s']:6.1f}s {r['rss_mb']}MB {r['error'][:120]}",
                flush=True,
            )
        if outputs:
            c = run_one(
                [
                    sys.executable,
                    str(HERE / "check.py"),
                    *custom_args,
                    str(out / "check.json"),
                    m,
                    e["kind"],
                    x,
                    *outputs,
                ],
                args.timeout,
            )
            chk = _last_check(out)
            if c["rc"] != 0 and not chk:
                chk = {"dense_error": f"check.py exit {c['rc']}: {c['error']}"}
            for o, name in outputs.items():
                res["commands"][name]["check"] = chk.get("outputs", {}).get(o)
            res["dense_loader"] = chk.get("dense_loader")
            if chk.get("dense_error"):
                res["dense_error"] = chk["dense_error"]
        p50 = res["commands"].get("prune -s 0.5", {})
        res["params"] = p50.get("params", res.get("params"))
        results[e["id"]] = res
        (cache / "results.json").write_text(json.dumps(results, indent=1))
        write_md(results, shown, args.out, args.quick, started)
    print(f"wrote {args.out} ({(time.time() - started) / 60:.1f} min)")
    return 0


def _last_check(out: Path) -> dict:
    f = out / "check.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return {}


if __name__ == "__main__":
    raise SystemExit(main())
