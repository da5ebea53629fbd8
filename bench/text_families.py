"""How prunecli's CLI behaves on KerasHub text classifiers, tiny random models, one table.

    .venv/bin/python bench/text_families.py all            # build, run the CLI, check outputs, write the table
    .venv/bin/python bench/text_families.py build          # tiny classifiers + token data under --dir
    .venv/bin/python bench/text_families.py run [-j 1]     # every command on every family (subprocesses)
    .venv/bin/python bench/text_families.py check          # load each exit-0 output, call it on the data
    .venv/bin/python bench/text_families.py table          # print the Markdown table (also written to bench/TEXT.md)
    ... --families Bert,FNet --commands magnitude,head     # a subset

Each family is a KerasHub <Family>Backbone built from its config (hidden 32, 2 layers, 4 heads,
vocabulary 128, FFN 64, max length 32; ALBERT's embedding 16, RoFormerV2's head size 8; random
weights, nothing downloaded) wrapped in <Family>TextClassifier(backbone, num_classes=3,
preprocessor=None), called once and saved as <dir>/<family>.keras: the object a user gets from
`<Family>TextClassifier.from_preset(...)`, less its preprocessor. Data: <dir>/<family>.npz with one
`x_<input>` array per input the classifier takes without its preprocessor (token_ids, padding_mask,
segment_ids where the family has them; 64 rows of 16 tokens, the last rows padded) and y (< 3), the
multi-input .npz format prunecli reads (`x_NAME` by input name).

Each command runs `python -m prunecli ...` in a subprocess (300 s limit; PYTHONPATH is this checkout);
the exit code, wall time and last stderr line are kept in <dir>/results.json. `check` loads every
exit-0 output (keras_hub imported, prunecli's hub layers registered), calls it on the data, compares
parameter counts for shrinking commands, counts new zeros for element pruning, runs a .tflite export
in the TFLite interpreter, and flags an exit-0 run that changed nothing or whose output does not load
or run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_common import (
    PYTHON,
    ROOT,
    family_bench_main,
    family_check,
    family_run,
    family_table,
    machine,
    replace_section,
    run_logged,
    scratch,
    zero_fraction,
)  # noqa: E402

DEFAULT_DIR = scratch("text_families")
TEXT_MD = ROOT / "bench" / "TEXT.md"
TITLE = """# KerasHub text classifiers

Written by `bench/text_families.py`: every prunecli command on a tiny random model of each KerasHub
text-classifier family, as a user loads it (`<Family>TextClassifier`, preprocessor left off)."""
HEADING = "## KerasHub text classifiers: every command on a tiny model of each"

HIDDEN, LAYERS, HEADS, VOCAB, FFN, MAXLEN = 32, 2, 4, 128, 64, 32
CLASSES, N_ROWS, SEQ = 3, 64, 16


def _configs() -> dict[str, dict]:
    """Backbone keyword arguments per family (KerasHub 0.32 signatures), all tiny."""
    common = {"vocabulary_size": VOCAB, "num_layers": LAYERS, "hidden_dim": HIDDEN, "intermediate_dim": FFN}
    mha = {**common, "num_heads": HEADS, "max_sequence_length": MAXLEN}
    return {
        "Bert": {**mha},
        "DistilBert": {**mha},
        "Roberta": {**mha},
        "XLMRoberta": {**mha},
        "Albert": {**mha, "embedding_dim": 16},
        "DebertaV3": {**mha, "bucket_size": 16},
        "FNet": {**common, "max_sequence_length": MAXLEN},
        "RoformerV2": {**common, "num_heads": HEADS, "head_size": HIDDEN // HEADS},
    }


FAMILIES = list(_configs())

# name -> (argv after `prunecli`, with M/D/OUT/R placeholders; shrinks?; asks for pruning?)
COMMANDS = {
    "magnitude": (["prune", "M", "-s", "0.5", "-o", "OUT", "--report", "R"], False, True),
    "wanda": (
        ["prune", "M", "--method", "wanda", "-s", "0.5", "--data", "D", "-o", "OUT", "--report", "R"],
        False,
        True,
    ),
    "sparsegpt": (
        ["prune", "M", "--method", "sparsegpt", "-g", "n:m=2:4", "--data", "D", "-o", "OUT", "--report", "R"],
        False,
        True,
    ),
    "neuron": (
        ["prune", "M", "-g", "neuron", "-s", "0.5", "--shrink", "--data", "D", "-o", "OUT", "--report", "R"],
        True,
        True,
    ),
    "target": (["prune", "M", "--target", "params=0.7", "--data", "D", "-o", "OUT", "--report", "R"], True, True),
    "head": (
        ["prune", "M", "-g", "head", "-s", "0.5", "--shrink", "--data", "D", "-o", "OUT", "--report", "R"],
        True,
        True,
    ),
    "plan": (["plan", "M", "-g", "neuron", "-s", "0.5"], False, False),
    "inspect": (["inspect", "M"], False, False),
    "tflite": (
        ["prune", "M", "-s", "0.5", "--export", "tflite", "--data", "D", "-o", "OUT", "--report", "R"],
        False,
        True,
    ),
}


def _paths(d: Path, family: str, command: str) -> dict[str, Path]:
    out = d / "out" / family
    return {
        "M": d / f"{family}.keras",
        "D": d / f"{family}.npz",
        "OUT": out / f"{command}.keras",
        "R": out / f"{command}.json",
        "LOG": out / f"{command}.log",
    }


def _env() -> dict:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}


def _inputs(rng) -> dict:
    """Every input a KerasHub text classifier may take, 64 x 16 (the last 16 rows padded from token 10)."""
    import numpy as np

    ids = rng.integers(1, VOCAB, size=(N_ROWS, SEQ)).astype("int32")
    mask = np.ones_like(ids)
    mask[-16:, 10:] = 0
    ids[mask == 0] = 0
    segments = np.zeros_like(ids)
    segments[:, SEQ // 2 :] = 1
    return {"token_ids": ids, "padding_mask": mask, "segment_ids": segments * mask}


# ---------------------------------------------------------------------------------------------------
# build


def build(d: Path, families: list[str]) -> dict[str, str]:
    import keras
    import keras_hub
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    inputs = _inputs(rng)
    y = rng.integers(0, CLASSES, size=(N_ROWS,)).astype("int32")
    path = d / "build.json"
    status = json.loads(path.read_text()) if path.exists() else {}
    for fam in families:
        keras.utils.set_random_seed(0)
        try:
            backbone = getattr(keras_hub.models, f"{fam}Backbone")(**_configs()[fam])
            model = getattr(keras_hub.models, f"{fam}TextClassifier")(
                backbone=backbone, num_classes=CLASSES, preprocessor=None
            )
            names = [t.name for t in model.inputs] if isinstance(model.inputs, list) else list(model.input)
            names = list(backbone.input) if isinstance(backbone.input, dict) else names
            model({k: inputs[k][:2] for k in names})
            model.save(d / f"{fam}.keras")
            np.savez(d / f"{fam}.npz", y=y, **{f"x_{k}": inputs[k] for k in names})
            status[fam] = f"built, {model.count_params()} params, inputs {', '.join(names)}"
        except Exception as e:  # noqa: BLE001 - record and go on
            status[fam] = f"build failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(fam, status[fam], flush=True)
    path.write_text(json.dumps(status, indent=1))
    return status


# ---------------------------------------------------------------------------------------------------
# run


def run_one(d: Path, family: str, command: str, timeout: int = 300) -> dict:
    p = _paths(d, family, command)
    if not p["M"].exists():
        return {"family": family, "command": command, "rc": None, "seconds": 0.0, "message": "model not built"}
    p["OUT"].parent.mkdir(parents=True, exist_ok=True)
    for stale in p["OUT"].parent.glob(f"{command}.*"):
        if stale.suffix != ".log":
            stale.unlink()
    argv = [PYTHON, "-m", "prunecli"] + [str(p[a]) if a in p else a for a in COMMANDS[command][0]]
    return run_logged(argv, _env(), p["LOG"], family, command, timeout, 12)


def run(d: Path, families: list[str], commands: list[str], jobs: int) -> None:
    family_run(d, families, commands, jobs, run_one)


# ---------------------------------------------------------------------------------------------------
# check (one subprocess per family: `check-family`)


def _tflite_run(path: Path, x: dict) -> str:
    """Run the .tflite's signature on one row of every input."""
    import numpy as np

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    try:
        it = Interpreter(model_path=str(path))
        runner = it.get_signature_runner()
        wanted = runner.get_input_details()
        feed = {}
        for name, det in wanted.items():
            key = next((k for k in x if k in name), None)
            if key is None:
                return f"failed: no data for the .tflite input {name}"
            feed[name] = x[key][:1].astype(det["dtype"])
        out = runner(**feed)
        y = np.asarray(next(iter(out.values())))
        return f"ok {list(y.shape)}" if np.all(np.isfinite(y)) else "failed: non-finite outputs"
    except Exception as e:  # noqa: BLE001
        return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"


def check_family(d: Path, family: str, commands: list[str]) -> dict:
    import keras
    import keras_hub  # noqa: F401 - registers KerasHub classes
    import numpy as np

    from prunecli.structure.transformer import register_hub_layers

    register_hub_layers()  # a head-pruned encoder is prunecli's HeadPrunedTransformerEncoder

    data = np.load(d / f"{family}.npz")
    x = {k.removeprefix("x_"): data[k][-4:] for k in data.files if k.startswith("x_")}  # padded rows
    base = keras.saving.load_model(d / f"{family}.keras", compile=False)
    base_params = base.count_params()
    base_y = np.asarray(base(x))
    results = json.loads((d / "results.json").read_text())
    checks = {}
    for command in commands:
        row = results.get(family, {}).get(command)
        if not row or row["rc"] != 0 or not COMMANDS[command][2]:
            continue
        p = _paths(d, family, command)
        c = {"problems": []}
        report = json.loads(p["R"].read_text()) if p["R"].exists() else None
        if report is None:
            c["problems"].append("no report written")
        else:
            c["sparsity"] = (report.get("totals") or {}).get("prunable_sparsity")
        if command == "tflite":
            tfl = sorted(p["OUT"].parent.glob(f"{command}*.tflite"))
            c["tflite"] = _tflite_run(tfl[0], x) if tfl else "no .tflite written"
            if not c["tflite"].startswith("ok"):
                c["problems"].append("tflite " + c["tflite"])
        if not p["OUT"].exists():
            c["problems"].append("exit 0 but no output file")
            checks[command] = c
            continue
        try:
            model = keras.saving.load_model(p["OUT"], compile=False)
        except Exception as e:  # noqa: BLE001
            c["problems"].append(f"load failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            checks[command] = c
            continue
        c["class"] = type(model).__name__
        c["params"] = [base_params, model.count_params()]
        try:
            y = np.asarray(model(x))
            c["output_shape"] = list(y.shape)
            if y.shape != base_y.shape:
                c["problems"].append(f"output shape {list(y.shape)} != {list(base_y.shape)}")
            elif not np.all(np.isfinite(y)):
                c["problems"].append("non-finite outputs")
            else:
                c["max_abs_change"] = float(np.max(np.abs(y - base_y)))
        except Exception as e:  # noqa: BLE001
            c["problems"].append(f"call failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        if type(model).__name__ != type(base).__name__:
            noted = report is not None and any("plain Keras functional model" in n for n in report.get("notes", []))
            what = f"output is {type(model).__name__}, not {type(base).__name__}"
            (c.setdefault("remarks", []) if noted else c["problems"]).append(what + (" (noted)" if noted else ""))
        shrinks = COMMANDS[command][1]
        if shrinks and not model.count_params() < base_params:
            c["problems"].append(f"not smaller: {base_params} -> {model.count_params()} params")
        if not shrinks:
            gain = zero_fraction(model) - zero_fraction(base)
            c["zero_fraction_gain"] = round(gain, 3)
            if gain < 0.05:
                c["problems"].append(f"no new zeros in the weights (+{gain:.3f})")
        checks[command] = c
    return checks


def check(d: Path, families: list[str], commands: list[str]) -> None:
    family_check(__file__, d, families, commands, _env())


# ---------------------------------------------------------------------------------------------------
# table


def table(d: Path, families: list[str], commands: list[str]) -> str:
    shrinks = {cmd: COMMANDS[cmd][1] for cmd in commands}
    return family_table(
        d,
        families,
        commands,
        shrinks,
        f"Build (hidden {HIDDEN}, {LAYERS} layers, {HEADS} heads, vocab {VOCAB}, FFN {FFN}, {CLASSES} classes):",
    )


def section(text: str) -> str:
    m = machine()
    return "\n".join(
        [
            HEADING,
            "",
            f"`.venv/bin/python bench/text_families.py all` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())};"
            f" {m['cpu']}, {m['cores']} cores, shared with other jobs). One tiny random text classifier per KerasHub"
            " family (the module docstring says how it is built); each command is `prunecli prune|plan|inspect` in a"
            " subprocess; an exit-0 output is loaded with keras_hub imported and called on the data (a .tflite export"
            " is run by the TFLite interpreter). Bold: an exit code other than 0, or an exit 0 that did not do what was"
            " asked. Exit 2/3/7 with a one-line message is a refusal. `+z zeros`: the share of matrix/kernel weights"
            " that became zero.",
            "",
            text,
            "",
            "Reading it (what is left):",
            "- `(plain Functional)`: `-g neuron --shrink`, `--target` and `-g head --shrink` open the task and its"
            " backbone into one graph (rebuild.graph_only: a backbone of TransformerEncoder blocks and KerasHub"
            " embeddings) and rebuild each TransformerEncoder with its kept feed-forward units or heads"
            " (HeadPrunedTransformerEncoder); the output is a plain Keras functional model of the same inputs and"
            " outputs, as its note says, and loads once prunecli's classes are registered (`register_hub_layers()`,"
            " as these checks and prunecli's commands do). Without --shrink the units and heads are masked in the"
            " user's class.",
            "- RoformerV2 (RoformerV2Encoder, RoformerAttention): a layout prunecli does not read, so `-g neuron`,"
            " `--target`, `plan -g neuron` and `-g head` refuse in one line (exit 3). FNet has no attention: `-g head`"
            ' exit 3 ("no attention layer with prunable heads"). DebertaV3: heads masked, not deleted'
            " (its disentangled attention is not rebuilt with fewer heads), as the notes say: `NOT shrunk`; its"
            " feed-forward units are deleted (its relative-position table opened as prunecli's"
            " BuiltRelativeEmbedding).",
            "- `tflite failed` on DebertaV3, FNet, RoformerV2: the converter emitted Select TF ops (Flex),"
            " which the plain interpreter cannot run; prunecli's report says so (exit 0).",
        ]
    )


def _write_section(text: str) -> None:
    if not TEXT_MD.exists():
        replace_section(TEXT_MD, None, TITLE)
    replace_section(TEXT_MD, HEADING, section(text))


def main(argv=None) -> int:
    steps = {"build": build, "run": run, "check": check, "check_family": check_family, "table": table}
    return family_bench_main(argv, __doc__, "bench/TEXT.md", FAMILIES, COMMANDS, DEFAULT_DIR, steps, _write_section)


if __name__ == "__main__":
    sys.exit(main())
