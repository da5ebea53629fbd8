"""End to end: `prunecli prune` one-shot on ResNet50 (25.6M parameters, ~100 MB .keras) against Keras
alone loading and saving the same file, each in a fresh process, with peak memory; and start-up time."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

from bench_common import PRUNECLI, PYTHON, child_json, make_resnet50, mib, run_child, table

KERAS_ALONE = """
import json, os, sys, time
t0 = time.perf_counter()
import keras, tensorflow
t1 = time.perf_counter()
model = keras.saving.load_model(sys.argv[1])
t2 = time.perf_counter()
model.save(sys.argv[2])
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "load": t2 - t1, "save": t3 - t2}))
"""

PHASES = ("load", "score", "mask", "save", "sizes", "total")


def keras_alone(model: Path, work: Path) -> dict:
    code = KERAS_ALONE.replace("sys.argv[1]", repr(str(model))).replace("sys.argv[2]", repr(str(work / "k.keras")))
    return child_json(code)


def prunecli_run(model: Path, work: Path, cache: str, *extra: str) -> dict:
    report = work / "report.json"
    args = [
        PRUNECLI,
        "prune",
        str(model),
        "-s",
        "0.5",
        "-o",
        str(work / "p.keras"),
        "--force",
        "--report",
        str(report),
        "-q",
        *extra,
    ]
    res = run_child(args, env={"XDG_CACHE_HOME": cache})
    if res["rc"] != 0:
        raise RuntimeError(f"prunecli failed: {res['stderr'][-1500:]}")
    timings = json.loads(report.read_text())["timings_s"]
    return {"wall": res["wall_s"], "rss": res["max_rss"], **timings}


def med(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if key in r]
    return statistics.median(values) if values else None


def run(repeats: int = 3) -> str:
    work = Path(tempfile.gettempdir()) / "prunecli-bench"
    work.mkdir(exist_ok=True)
    model = make_resnet50(work / "resnet50.keras")
    size = model.stat().st_size
    variants = [
        ("prunecli prune -s 0.5 (default: global LAMP)", ()),
        ("... --no-sizes", ("--no-sizes",)),
        ("... --scope layer --no-sizes", ("--scope", "layer", "--no-sizes")),
    ]
    keras_runs, results = [], {name: [] for name, _ in variants}
    with tempfile.TemporaryDirectory() as cache:  # XLA compile cache: empty for the very first run only
        for _ in range(repeats + 1):  # rounds: a busy moment on the machine hits Keras and prunecli alike
            keras_runs.append(keras_alone(model, work))
            for name, extra in variants:
                results[name].append(prunecli_run(model, work, cache, *extra))
    first = results[variants[0][0]][0]
    warm = {name: runs[1:] if len(runs) > 1 else runs for name, runs in results.items()}

    rows = [
        [name, *(med(runs, p) for p in PHASES), med(runs, "wall"), mib(med(runs, "rss"))] for name, runs in warm.items()
    ]
    rows.append(["first run, empty XLA cache", *(first.get(p) for p in PHASES), first["wall"], mib(first["rss"])])
    keras_work = statistics.median(r["load"] + r["save"] for r in keras_runs)
    keras_wall = statistics.median(r["_wall_s"] for r in keras_runs)
    keras_rss = statistics.median(r["_max_rss"] for r in keras_runs)
    rows.append(
        [
            "Keras alone: load_model + save",
            statistics.median(r["load"] for r in keras_runs),
            "-",
            "-",
            statistics.median(r["save"] for r in keras_runs),
            "-",
            keras_work,
            keras_wall,
            mib(statistics.median(r["_max_rss"] for r in keras_runs)),
        ]
    )
    out = [
        f"Model: keras.applications.ResNet50(weights=None), {mib(size)} .keras, 25.6M parameters "
        f"(25.5M prunable in 54 tensors). {repeats + 1} rounds, each running Keras alone and then every prunecli"
        f" variant in a fresh process; medians over the rounds (prunecli: rounds 2..{repeats + 1}; its very first"
        " run, with an empty XLA disk cache, is listed on its own).\n"
    ]
    out.append(table(["run", *(f"{p} (s)" for p in PHASES), "process wall (s)", "peak RSS"], rows))
    out.append(
        "\nPhases are the report's timings_s; `total` is the run's wall time (phases plus `other`; no Python/TensorFlow import);"
        " process wall includes the import.\n"
    )
    ratio_rows = []
    for name, runs in results.items():
        paired = [r["total"] / (k["load"] + k["save"]) for r, k in zip(runs[1:], keras_runs[1:], strict=True)]
        ratio_rows.append(
            [
                name,
                f"{med(warm[name], 'total') / keras_work:.2f}x",
                f"{statistics.median(paired):.2f}x" if paired else "-",
                f"{med(warm[name], 'wall') / keras_wall:.2f}x",
                f"{med(warm[name], 'rss') / keras_rss:.2f}x",
            ]
        )
    ratio_rows.append(
        [
            "first run, empty XLA cache",
            f"{first['total'] / keras_work:.2f}x",
            f"{first['total'] / (keras_runs[0]['load'] + keras_runs[0]['save']):.2f}x",
            f"{first['wall'] / keras_wall:.2f}x",
            f"{first['rss'] / keras_rss:.2f}x",
        ]
    )
    out.append(
        table(
            [
                "run",
                "work vs Keras load+save: medians (target <= 1.3x with sizes)",
                "same, paired by round",
                "process wall vs Keras process",
                "peak RSS vs Keras (target <= 1.15x)",
            ],
            ratio_rows,
        )
    )
    return "\n".join(out)


def startup(repeats: int = 5) -> str:
    cases = [
        ("prunecli --help", [PRUNECLI, "--help"]),
        ("prunecli prune --help", [PRUNECLI, "prune", "--help"]),
        ('python -c "import tensorflow"', [PYTHON, "-c", "import tensorflow"]),
        ('python -c "import keras"', [PYTHON, "-c", "import keras"]),
    ]
    rows = []
    for name, args in cases:
        walls = []
        for _ in range(repeats):
            res = run_child(args)
            if res["rc"] != 0:
                raise RuntimeError(f"{name} failed: {res['stderr'][-500:]}")
            walls.append(res["wall_s"])
        rows.append([name, statistics.median(walls), min(walls)])
    tf_import = rows[2][1]
    for row in rows:
        row.append(f"{row[1] / tf_import:.2f}x")
    return table(["command", "median (s)", "min (s)", "vs import tensorflow"], rows)


# ---- peak memory against Keras, on ResNet50 and on a ~100M-parameter Dense/Conv model ----------


def memory(repeats: int = 2, params: int = 100_000_000) -> str:
    """Peak resident memory of `prunecli prune -s 0.5` (default report, sizes on) against Keras alone
    loading and saving the same file, each in a fresh process, side by side in every round."""
    from bench_common import make_dense_conv

    work = Path(tempfile.gettempdir()) / "prunecli-bench"
    work.mkdir(exist_ok=True)
    models = [
        ("ResNet50 (25.6M)", make_resnet50(work / "resnet50.keras")),
        (
            f"Dense/Conv ({params / 1e6:.0f}M)",
            make_dense_conv(work / f"dense_conv_{params // 1_000_000}m.keras", params),
        ),
    ]
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        prunecli_run(models[0][1], work, cache, "--no-sizes")  # fills the XLA disk cache, as any earlier run has
        for name, path in models:
            keras_rss, prune_rss, keras_s, prune_s = [], [], [], []
            for _ in range(repeats):
                k = keras_alone(path, work)
                p = prunecli_run(path, work, cache)
                keras_rss.append(k["_max_rss"])
                prune_rss.append(p["rss"])
                keras_s.append(k["load"] + k["save"])
                prune_s.append(p["total"])
            k_rss, p_rss = statistics.median(keras_rss), statistics.median(prune_rss)
            rows.append(
                [
                    name,
                    mib(path.stat().st_size),
                    mib(k_rss),
                    mib(p_rss),
                    f"{p_rss / k_rss:.2f}x",
                    f"{statistics.median(prune_s) / statistics.median(keras_s):.2f}x",
                ]
            )
    return (
        f"Peak RSS of the whole process (max RSS), median of {repeats} rounds; each round runs Keras alone"
        " (load_model + save) and then `prunecli prune -s 0.5` with the default report (sizes on) on the same"
        " file. Target: peak RSS <= 1.15x Keras.\n\n"
        + table(["model", "file", "Keras load+save", "prunecli prune", "RSS vs Keras", "work vs Keras"], rows)
    )


# ---- models larger than usual: build, prune, delete ----------------------------------------------


def bigger(gigabytes: float = 2.0) -> str:
    """A ~`gigabytes` GB Dense/Conv model as .keras and as .h5: Keras alone vs prunecli, then deleted."""

    params = int(gigabytes * 1e9 / 4)
    rows = []
    with tempfile.TemporaryDirectory(prefix="prunecli-big-") as tmp:
        work = Path(tmp)
        for suffix in (".keras", ".h5"):
            path = child_json(
                "import json, sys\nsys.path.insert(0, " + repr(str(Path(__file__).parent)) + ")\n"
                "from pathlib import Path\nimport bench_common\n"
                f"p = bench_common.make_dense_conv(Path({str(work / ('big' + suffix))!r}), {params})\n"
                "print(json.dumps({'path': str(p)}))"
            )["path"]
            path = Path(path)
            k = child_json(
                KERAS_ALONE.replace("sys.argv[1]", repr(str(path))).replace(
                    "sys.argv[2]", repr(str(work / ("k" + suffix)))
                ),
                timeout=1800,
            )
            (work / ("k" + suffix)).unlink(missing_ok=True)
            report = work / "report.json"
            res = run_child(
                [
                    PRUNECLI,
                    "prune",
                    str(path),
                    "-s",
                    "0.5",
                    "-o",
                    str(work / ("p" + suffix)),
                    "--report",
                    str(report),
                    "-q",
                ],
                timeout=1800,
            )
            if res["rc"] != 0:
                raise RuntimeError(f"prunecli failed on {path.name}: {res['stderr'][-1500:]}")
            timings = json.loads(report.read_text())["timings_s"]
            rows.append(
                [
                    suffix,
                    mib(path.stat().st_size),
                    k["load"] + k["save"],
                    timings["total"],
                    mib(k["_max_rss"]),
                    mib(res["max_rss"]),
                    f"{res['max_rss'] / k['_max_rss']:.2f}x",
                ]
            )
            for f in (path, work / ("p" + suffix)):
                f.unlink(missing_ok=True)
    return (
        f"A {params / 1e6:.0f}M-parameter Dense/Conv model (bench_common.make_dense_conv), built, pruned (-s 0.5,"
        " default report) and deleted, on a machine with the RAM stated above.\n\n"
        + table(
            [
                "format",
                "file",
                "Keras load+save (s)",
                "prunecli work (s)",
                "Keras peak RSS",
                "prunecli peak RSS",
                "RSS ratio",
            ],
            rows,
        )
    )


# ---- data-driven scoring over two worker processes vs one device ----------------------------------

_WORKER = """
import json, os, sys
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
model_path, data_path = sys.argv[1:3]
from prunecli.runtime import quiet_tensorflow
quiet_tensorflow()
from prunecli.training import distribute
strategy = distribute.get_strategy("multiworker")
import numpy as np
from prunecli.io import data as data_mod
from prunecli.io.models import load
from prunecli.scoring import ScoringContext, get
from prunecli.structure import targets as targets_mod
from prunecli.training.metrics import infer_task
model, _ = load(model_path)
data = data_mod.load(data_path, model, 32, 0.0, 0)
loss = infer_task(model, data.y_example).loss
found = targets_mod.select(model)
out = {}
for method in ("gradient", "taylor", "activation", "apoz"):
    got = {}
    for where, extras in (("single", {}), ("workers", {"strategy": strategy})):
        data = data_mod.load(data_path, model, 32, 0.0, 0)  # a fresh pipeline: its first shuffle
        ctx = ScoringContext(model=model, targets=found, data=data.train, loss_fn=loss, extras=extras)
        got[where] = {k: np.asarray(v, np.float64) for k, v in get(method).fn(found, ctx).items()}
    diff = max(float(np.max(np.abs(got["workers"][k] - got["single"][k]) / np.max(np.abs(got["single"][k]))))
               for k in got["single"])
    out[method] = diff
print(json.dumps({"chief": distribute.is_chief(), "diff": out}))
"""


def multiworker_scoring() -> str:
    """gradient/taylor/activation/apoz scores over two local worker processes (127.0.0.1) vs one device."""
    with tempfile.TemporaryDirectory(prefix="prunecli-mw-") as tmp:
        return _multiworker_scoring(Path(tmp))


def _multiworker_scoring(work: Path) -> str:
    import socket
    import subprocess

    import keras
    import numpy as np

    keras.utils.set_random_seed(0)
    inp = keras.Input((20,))
    x = keras.layers.Dense(64, activation="relu")(inp)
    x = keras.layers.Dense(32, activation="relu")(x)
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax")(x))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(work / "m.keras")
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((1000, 20)).astype("float32")
    np.savez(work / "d.npz", x=xs, y=np.argmax(xs[:, :3], axis=1).astype("int32"))

    def port():
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    workers = [f"127.0.0.1:{port()}", f"127.0.0.1:{port()}"]
    procs = [
        subprocess.Popen(
            [PYTHON, "-c", _WORKER, str(work / "m.keras"), str(work / "d.npz")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={
                **os.environ,
                "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}),
            },
        )
        for i in range(2)
    ]
    results = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=600)
            if proc.returncode != 0:
                raise RuntimeError(f"worker failed: {stderr[-1500:]}")
            results.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    rows = []
    for method in results[0]["diff"]:
        worst = max(r["diff"][method] for r in results)
        rows.append([method, f"{worst:.1e}", "yes" if worst <= 1e-6 else "NO"])
    return (
        "An MLP (20-64-32-3) scored on 1,000 examples (32 per batch, 32 batches) by two worker processes"
        " on 127.0.0.1 (MultiWorkerMirroredStrategy, one replica each, each worker reads half of every global"
        " batch) and by one device in the same processes. Largest |workers - single| / max|single| over every"
        f" tensor and both workers; chief flags: {[r['chief'] for r in results]}.\n\n"
        + table(["method", "max relative difference", "within 1e-6"], rows)
    )
