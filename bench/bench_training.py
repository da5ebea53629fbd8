"""Training-side comparisons on the bundled digits CNN: the cost of a masked fine-tuning step (prunecli's
masks held in the step vs tfmot's wrappers, each against its own dense step), and accuracy after the
same gradual schedule (polynomial, same epochs, optimizer, learning rate and batch size)."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from bench_common import ROOT, digits_twin_h5, quiet_tf, table, tfmot_modules

EXAMPLE = ROOT / "examples" / "digits_cnn.keras"
DATA = ROOT / "examples" / "digits.npz"
BATCH = 64
STEPS = 60
LEARNING_RATE = 1e-3


def batches():
    import numpy as np
    import tensorflow as tf

    with np.load(DATA) as z:
        x, y = z["x_train"], z["y_train"]
    reps = -(-STEPS * BATCH // len(x))
    x, y = np.concatenate([x] * reps)[: STEPS * BATCH], np.concatenate([y] * reps)[: STEPS * BATCH]
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH).cache()


ROUNDS = 7


def fit_pass(model, data, callbacks=()):
    """A closure running one model.fit epoch over the batches, after one warm-up epoch (tracing)."""
    model.fit(data, epochs=1, verbose=0, callbacks=list(callbacks))
    return lambda: model.fit(data, epochs=1, verbose=0, callbacks=list(callbacks))


def loop_pass(step, data):
    """A closure calling a compiled train step on every batch from Python, after one warm-up pass."""

    def one_pass():
        out = None
        for x, y in data:
            out = step(x, y)
        float(out[0])

    one_pass()
    return one_pass


def keras3_dense_fit(data):
    import keras

    model = keras.saving.load_model(EXAMPLE)
    model.compile(
        optimizer=keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy", jit_compile=False
    )
    return fit_pass(model, data)


def keras3_dense_loop(data):
    """The dense step written like prunecli's (GradientTape, apply_gradients, tf.function), masks left out."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(EXAMPLE)
    optimizer = keras.optimizers.Adam(LEARNING_RATE)
    loss_fn = keras.losses.SparseCategoricalCrossentropy()

    @tf.function(autograph=False)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return (loss,)

    return loop_pass(step, data)


def prunecli_masked(data, sparsity: float):
    """prunecli's own fine-tuning step (finetune.Trainer: forward, backward, update, masks re-applied)."""
    import keras

    from prunecli import build_config
    from prunecli.outputs.report import Timings
    from prunecli.run import steps
    from prunecli.training import finetune

    config = build_config(
        {
            "model_path": str(EXAMPLE),
            "sparsity": sparsity,
            "data": str(DATA),
            "epochs": 1,
            "batch_size": BATCH,
            "quiet": True,
        },
        environ={},
    )
    timings = Timings()
    state, _sizes = steps.load(config, steps.silent, timings)
    state = state.after(steps.pick_targets(state.model, config))
    state = state.after(steps.mask(state, steps.silent, timings))
    job = finetune.FineTuneJob(
        config, state.model, list(state.targets), state.masks, state.data, state.task, None, steps.silent
    )
    trainer = finetune.Trainer(job, keras.optimizers.Adam(LEARNING_RATE))
    return loop_pass(trainer.train, data)


def tf_keras_dense(twin: Path, data):
    _, tf_keras = tfmot_modules()
    model = tf_keras.models.load_model(twin)
    model.compile(optimizer=tf_keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy")
    return fit_pass(model, data)


def tfmot_masked(twin: Path, data, sparsity: float):
    tfmot, tf_keras = tfmot_modules()
    sk = tfmot.sparsity.keras
    model = tf_keras.models.load_model(twin)
    wrapped = sk.prune_low_magnitude(model, pruning_schedule=sk.ConstantSparsity(sparsity, begin_step=0))
    wrapped.compile(optimizer=tf_keras.optimizers.Adam(LEARNING_RATE), loss="sparse_categorical_crossentropy")
    return fit_pass(wrapped, data, callbacks=[sk.UpdatePruningStep()])


def step_times(twin: Path, sparsity: float = 0.8) -> str:
    import statistics

    data = batches()
    notes, passes = [], {}
    variants = (
        ("Keras 3 dense (model.fit)", lambda: keras3_dense_fit(data)),
        ("Keras 3 dense (tf.function step, prunecli's loop)", lambda: keras3_dense_loop(data)),
        ("prunecli masked (finetune.Trainer)", lambda: prunecli_masked(data, sparsity)),
        ("tf_keras dense (model.fit)", lambda: tf_keras_dense(twin, data)),
        ("tfmot masked (prune_low_magnitude + fit)", lambda: tfmot_masked(twin, data, sparsity)),
    )
    for name, make in variants:
        try:
            passes[name] = make()
        except Exception as exc:  # another helper's module may be missing or changed: say so, go on
            notes.append(f"- {name}: not measured ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})")
    times = {name: [] for name in passes}
    for _ in range(ROUNDS):  # interleaved, so a busy moment hits every variant alike
        for name, one_pass in passes.items():
            start = time.perf_counter()
            one_pass()
            times[name].append((time.perf_counter() - start) / STEPS)
    measured = {name: statistics.median(values) for name, values in times.items()}
    dense = {
        "prunecli masked (finetune.Trainer)": "Keras 3 dense (tf.function step, prunecli's loop)",
        "tfmot masked (prune_low_magnitude + fit)": "tf_keras dense (model.fit)",
    }
    rows = []
    for name, seconds in measured.items():
        base = measured.get(dense.get(name, ""))
        fastest = min(times[name])
        base_fastest = min(times[dense[name]]) if base else None
        rows.append(
            [
                name,
                seconds * 1000,
                fastest * 1000,
                f"{seconds / base:.2f}x" if base else "-",
                f"{fastest / base_fastest:.2f}x" if base else "-",
            ]
        )
    import keras

    params = keras.saving.load_model(EXAMPLE).count_params()
    out = [
        f"Digits CNN ({params:,} parameters), batch {BATCH}, {sparsity:.0%} sparsity, Adam; median (and min) over"
        f" {ROUNDS} interleaved passes of {STEPS} steps each, after a warm-up pass;"
        " no XLA on CPU for any (prunecli's default on CPU, tf_keras's default). tfmot uses its default"
        " ConstantSparsity frequency (masks recomputed every 100 steps).\n"
    ]
    out.append(table(["step", "ms/step (median)", "ms/step (min)", "vs dense (medians)", "vs dense (mins)"], rows))
    out.extend(notes)
    return "\n".join(out)


def accuracy_table(twin: Path, sparsities=(0.5, 0.8, 0.9, 0.95), epochs: int = 6) -> str:
    """The Markdown of run.py's accuracy section: prunecli's native and tfmot engines, same gradual schedule."""
    from prunecli import build_config, prune

    rows, notes = [], []
    with tempfile.TemporaryDirectory() as work:
        for sparsity in sparsities:
            row = [f"{sparsity:.0%}"]
            for engine, model in (("native", EXAMPLE), ("tfmot", twin)):
                settings = {
                    "model_path": str(model),
                    "output": str(Path(work) / f"out{model.suffix}"),
                    "force": True,
                    "sparsity": sparsity,
                    "schedule": "polynomial",
                    "epochs": epochs,
                    "data": str(DATA),
                    "optimizer": "adam",
                    "learning_rate": LEARNING_RATE,
                    "batch_size": BATCH,
                    "engine": engine,
                    "quiet": True,
                }
                try:
                    start = time.perf_counter()
                    report = prune(build_config(settings, environ={})).report
                    wall = time.perf_counter() - start
                    final = report.metrics.get("after_finetune", {})
                    row += [
                        report.metrics["before"]["accuracy"],
                        final.get("accuracy"),
                        report.totals["prunable_sparsity"],
                        wall,
                    ]
                except Exception as exc:
                    notes.append(f"- {engine} at {sparsity:.0%}: not measured ({type(exc).__name__}: {str(exc)[:200]})")
                    row += ["-", "-", "-", "-"]
            rows.append(row)
    out = [
        f"Bundled digits CNN and data (test split), --schedule polynomial --epochs {epochs}, Adam lr {LEARNING_RATE},"
        f" batch {BATCH}; tfmot runs on a tf_keras twin of the model with the same weights"
        " (checked to give the same outputs).\n"
    ]
    out.append(
        table(
            [
                "sparsity",
                "prunecli before",
                "prunecli after",
                "prunecli sparsity",
                "prunecli run (s)",
                "tfmot before",
                "tfmot after",
                "tfmot sparsity",
                "tfmot run (s)",
            ],
            rows,
        )
    )
    out.extend(notes)
    return "\n".join(out)


def make_twin() -> Path:
    quiet_tf()
    work = Path(tempfile.gettempdir()) / "prunecli-bench"
    work.mkdir(exist_ok=True)
    return digits_twin_h5(EXAMPLE, work / "digits_cnn_keras2.h5")
