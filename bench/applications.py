"""Structured pruning of Keras' own architectures (keras.applications), as a user with one of them runs it.

    .venv/bin/python bench/applications.py all                 # build, run, check, write the table
    .venv/bin/python bench/applications.py build|run|table     # one step
    ... --models MobileNet,DenseNet121 --commands neuron        # a subset

Each model is `keras.applications.<Name>(weights=None, input_shape=(S, S, 3), classes=4)` at the smallest
square size S of 32, 75 (the architecture refuses smaller inputs) with random weights (nothing is
downloaded), saved as <dir>/<Name>.keras, with <dir>/images<S>.npz (64 random images in 0..255, labels
< 4). Commands (`python -m prunecli prune ...` in a subprocess, 900 s limit):

- neuron: `-g neuron -s 0.5 --shrink --data D`: half the channels of every prunable layer removed;
- target: `--target params=0.5 --data D`: the channels spread across the model to meet the budget.

`table` reads each report, loads the written model, calls it on the images and compares its parameter
count with the report's: the row says what the run did to the architecture (parameters, the largest
relative difference from the masked model that --shrink verifies, Keras batch-1 latency) and why any
channels were left. Random weights: accuracy is not measured here (see bench/STRUCTURED.md for trained
models); this table is about whether each architecture's graph is understood and shrunk for real.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_common import PYTHON, ROOT, last_error_line, load_average, machine, replace_section, scratch  # noqa: E402

MODELS = [
    "MobileNetV3Small",
    "EfficientNetB0",
    "EfficientNetV2B0",
    "ConvNeXtTiny",
    "NASNetMobile",
    "DenseNet121",
    "MobileNet",
    "MobileNetV2",
    "InceptionV3",
    "Xception",
    "ResNet50",
    "ResNet50V2",
    "InceptionResNetV2",
    "VGG16",
]
COMMANDS = {
    "neuron": ["-g", "neuron", "-s", "0.5", "--shrink"],
    "target": ["--target", "params=0.5"],
}
SIZES = (32, 75)
VISION_MD = ROOT / "bench" / "VISION.md"
HEADING = "## keras.applications: channels removed for real from Keras' own architectures"


def build(d: Path, models: list[str]) -> dict:
    import keras
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    path = d / "built.json"
    built = json.loads(path.read_text()) if path.exists() else {}
    for name in models:
        for size in SIZES:
            try:
                keras.utils.set_random_seed(0)
                model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=4)
            except ValueError:  # "Input size must be at least 75x75" and the like
                continue
            model.save(d / f"{name}.keras")
            built[name] = [size, model.count_params()]
            break
        print(name, built.get(name, "not built"), flush=True)
    rng = np.random.default_rng(0)
    for size in sorted({v[0] for v in built.values()}):
        x = rng.uniform(0, 255, (64, size, size, 3)).astype("float32")
        np.savez(d / f"images{size}.npz", x=x, y=rng.integers(0, 4, 64))
    path.write_text(json.dumps(built, indent=1))
    return built


def run(d: Path, models: list[str], commands: list[str]) -> None:
    built = json.loads((d / "built.json").read_text())
    (d / "out").mkdir(exist_ok=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    for command in commands:
        for name in models:
            if name not in built:
                continue
            out = d / "out" / f"{name}.{command}"
            argv = [PYTHON, "-m", "prunecli", "prune", str(d / f"{name}.keras"), *COMMANDS[command]]
            argv += ["--data", str(d / f"images{built[name][0]}.npz"), "-o", f"{out}.keras", "--report", f"{out}.json"]
            argv += ["-q"]
            start = time.monotonic()
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env, cwd=ROOT)
                rc, err = proc.returncode, proc.stderr
            except subprocess.TimeoutExpired:
                rc, err = "timeout", ""
            Path(f"{out}.log").write_text(err)
            line = f"{name} {command} rc={rc} {time.monotonic() - start:.0f}s {last_error_line(err) if rc else ''}"
            with (d / "results.txt").open("a") as results:
                results.write(line + "\n")
            print(line, flush=True)


def _check(d: Path, name: str, command: str, size: int) -> dict:
    """What the written model is: loads, runs on the images, the parameters the report says."""
    import keras
    import numpy as np

    report = json.loads((d / "out" / f"{name}.{command}.json").read_text())
    model = keras.saving.load_model(d / "out" / f"{name}.{command}.keras")
    x = np.load(d / f"images{size}.npz")["x"][:4]
    finite = bool(np.isfinite(np.asarray(model(x))).all())
    shrink = report.get("shrink", {})
    kept = [n for n in report.get("notes", []) if "not pruned: --shrink cannot remove them" in n]
    return {
        "params": int(model.count_params()),
        "report_params": shrink.get("params_after"),
        "finite": finite,
        "max_rel_diff": shrink.get("verification", {}).get("max_rel_diff"),
        "latency": shrink.get("latency_ms", {}),
        "target": report.get("target", {}),
        "kept_reason": kept[0].split("(", 1)[-1].rstrip(")") if kept else "",
    }


def table(d: Path) -> str:
    built = json.loads((d / "built.json").read_text())
    runs = {}
    for line in (d / "results.txt").read_text().splitlines():
        name, command, rc, seconds, *message = line.split(" ")
        runs[name, command] = (rc.removeprefix("rc="), seconds, " ".join(message))
    rows = []
    for name, (size, params) in built.items():
        cells = [name, str(size), f"{params:,}"]
        for command in COMMANDS:
            rc, seconds, message = runs.get((name, command), ("-", "", ""))
            if rc != "0":
                cells.append(f"**{rc}** {message}".strip() if rc != "-" else "not run")
                continue
            c = _check(d, name, command, size)
            ok = c["finite"] and c["params"] == (c["report_params"] or c["params"])
            cell = f"{c['params'] / params:.2f}x params, {seconds}"
            if c["max_rel_diff"] is not None:
                cell += f", diff {c['max_rel_diff']:.0e}"
            latency = c["latency"]
            if latency.get("original", {}).get("batch_1") and latency.get("shrunk", {}).get("batch_1"):
                cell += f", b1 {latency['shrunk']['batch_1'] / latency['original']['batch_1']:.2f}x"
            if command == "target" and c["target"]:
                cell += ", within 2%" if c["target"].get("within_tolerance") else ", **outside 2%**"
            cells.append(cell if ok else f"**{cell}; output does not match its report**")
        rows.append("| " + " | ".join(cells) + " |")
    m = machine()
    head = [
        HEADING,
        "",
        f"`.venv/bin/python bench/applications.py all` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())};"
        f" {m.get('cpu', '')}, {m.get('cores', 2)} cores, shared with other jobs, load average {load_average()}).",
        "Each of Keras' own architectures as `keras.applications.<Name>(weights=None, classes=4)` at the smallest"
        " square input it takes (32 or 75), random weights; `neuron`: `prune -g neuron -s 0.5 --shrink --data D`,"
        " `target`: `prune --target params=0.5 --data D` (module docstring). A cell: the written model's parameters"
        " over the dense model's (loaded from the written file and called on images), the run's wall time, the"
        " largest relative difference from the masked model that --shrink verifies, and Keras batch-1 latency"
        " shrunk/dense from the report (noisy on this shared machine). Bold: a non-zero exit or an output that"
        " does not load, run or match its report.",
        "",
        "| model | input | parameters | neuron (-s 0.5 --shrink) | target (params=0.5) |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + rows) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["all", "build", "run", "table"])
    ap.add_argument("--dir", type=Path, default=scratch("applications"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--commands", default=",".join(COMMANDS))
    ap.add_argument("--no-write", action="store_true", help="print the table, do not write bench/VISION.md")
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if args.step in ("all", "build"):
        build(args.dir, models)
    if args.step in ("all", "run"):
        run(args.dir, models, [c for c in args.commands.split(",") if c])
    if args.step in ("all", "table"):
        text = table(args.dir)
        print(text)
        if not args.no_write:
            replace_section(VISION_MD, HEADING, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
