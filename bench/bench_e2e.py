"""End to end: `prunecli prune` one-shot on ResNet50 (25.6M parameters, ~100 MB .keras) against Keras
alone loading and saving the same file, each in a fresh process, with peak memory; and start-up time."""

from __future__ import annotations

import json
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
        ("prunecli prune -s 0.5 (layer)", ()),
        ("... --no-sizes", ("--no-sizes",)),
        ("... --scope global --no-sizes", ("--scope", "global", "--no-sizes")),
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
        "\nPhases are the report's timings_s; `total` is their sum (no Python/TensorFlow import);"
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
            ]
        )
    ratio_rows.append(
        [
            "first run, empty XLA cache",
            f"{first['total'] / keras_work:.2f}x",
            f"{first['total'] / (keras_runs[0]['load'] + keras_runs[0]['save']):.2f}x",
            f"{first['wall'] / keras_wall:.2f}x",
        ]
    )
    out.append(
        table(
            [
                "run",
                "work vs Keras load+save: medians (target <= 1.5x)",
                "same, paired by round",
                "process wall vs Keras process",
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
