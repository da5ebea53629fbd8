"""The Python API leaves the caller's process as it found it, and computes as the command does
whatever Keras defaults the caller set (run/ entry points, runtime.keeps_global_state)."""

from __future__ import annotations

import logging
import os
import random

import pytest

from prunecli.errors import DataError


def _state():
    import absl.logging
    import keras

    return {
        "env": {name: os.environ.get(name) for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_XLA_FLAGS")},
        "tensorflow logger": logging.getLogger("tensorflow").level,
        "absl logger": logging.getLogger("absl").level,
        "absl verbosity": absl.logging.get_verbosity(),
        "policy": keras.config.dtype_policy().name,
        "floatx": keras.config.floatx(),
        "cwd": os.getcwd(),
        "python random": random.getstate(),
        "tensorflow seed": _tensorflow_seed(),
        "keras seed generator": _keras_seed_generator(),
        "custom objects by plain name": {k: v for k, v in keras.saving.get_custom_objects().items() if ">" not in k},
    }


def _keras_seed_generator():
    """The generator an unseeded `keras.random` call draws from (the caller's, if they made one)."""
    from keras.src.backend.common import global_state

    return global_state.get_global_attribute("global_seed_generator")


def _tensorflow_seed():
    """TensorFlow's eager global seed and where its sequence of operation seeds stands."""
    from tensorflow.python.eager import context

    eager = context.context()
    rng = getattr(eager, "_rng", None)  # absent until a seed was first set
    return eager._seed, None if rng is None else rng.getstate()


@pytest.fixture
def callers_defaults(monkeypatch):
    """A caller who set Keras' global mixed-precision policy, TensorFlow's global seed and their own
    logging, and no TF_* variables."""
    import keras
    import tensorflow as tf
    from tensorflow.python.eager import context

    for name in ("TF_CPP_MIN_LOG_LEVEL", "TF_XLA_FLAGS"):
        monkeypatch.delenv(name, raising=False)
    saved = {name: logging.getLogger(name).level for name in ("tensorflow", "absl")}
    logging.getLogger("tensorflow").setLevel(logging.INFO)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    eager = context.context()
    seed = eager._seed, getattr(eager, "_rng", None)
    tf.random.set_seed(7)
    tf.random.uniform((1,))  # the caller's sequence of operation seeds is under way
    registry = keras.saving.get_custom_objects()
    registry["callers_activation"] = keras.activations.relu  # registered by hand, by plain name
    try:
        yield
    finally:
        registry.pop("callers_activation", None)
        eager._set_global_seed(seed[0])
        eager._rng = seed[1]
        keras.config.set_dtype_policy(policy)
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


@pytest.mark.slow  # 2-3 s: two runs
def test_an_api_run_under_a_callers_mixed_policy_quantizes_and_leaves_the_process_as_it_was(callers_defaults, tmp_path):
    """Class: an entry point changed the caller's process and depended on it. prune() left
    TF_CPP_MIN_LOG_LEVEL and TF_XLA_FLAGS in the environment (inherited by the caller's subprocesses)
    and TensorFlow's and absl's loggers at ERROR, after a success or a failure; and under the caller's
    global `mixed_float16` policy the loaded model took a float16 input layer, so `--quantize int8`
    failed with "Keras cannot quantize this model ... compute_dtype='float16'" (exit 2) on a float32
    file the command quantizes."""
    import keras

    import prunecli

    keras.config.set_dtype_policy("float32")  # a float32 file, built as the caller's code did before
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="d1"), keras.layers.Dense(2, name="out")])
    model.save(tmp_path / "m.keras")
    keras.config.set_dtype_policy("mixed_float16")
    before = _state()
    assert before["policy"] == "mixed_float16"
    settings = {"model_path": str(tmp_path / "m.keras"), "output": str(tmp_path / "q.keras"), "quantize": "int8"}
    result = prunecli.prune(prunecli.build_config(settings))
    assert result.output_path is not None and (tmp_path / "q.keras").exists()
    assert _state() == before
    with pytest.raises(DataError):
        prunecli.prune(prunecli.build_config({**settings, "data": str(tmp_path / "missing.npz")}))
    assert _state() == before


def test_an_entry_point_that_fails_puts_back_what_its_run_set(callers_defaults, tmp_path):
    """The same class, fast: whatever a run set (quiet_tensorflow's variables and loggers, Keras'
    defaults, its --custom-objects registered by plain name) is put back when it raises, and the run
    itself saw Keras' float32 defaults. Left registered, a user's Monte-Carlo `Dropout` (a class under a
    Keras name) replaced Keras' own in the caller's later calls: a second prune() of a Keras-2 `.h5`
    with a Dropout reported accuracy 0.555 where the command reports 0.617."""
    import keras

    from prunecli.io.models import custom
    from prunecli.runtime import keeps_global_state, quiet_tensorflow

    source = tmp_path / "mc_dropout.py"
    source.write_text(
        "import keras\n\nclass Dropout(keras.layers.Dropout):\n"
        "    def call(self, inputs, training=None):\n        return super().call(inputs, training=True)\n"
    )

    seen = {}

    @keeps_global_state
    def failing_run():
        import keras
        import tensorflow as tf

        seen["policy"] = keras.config.dtype_policy().name
        seen["tensorflow seed"] = _tensorflow_seed()[0]  # none, as in the command: tf.data's --seed draw is its own
        tf.random.uniform((1,))  # an unseeded op of the run draws from the run's sequence, not the caller's
        random.random()  # as Keras does when it draws a default seed
        keras.random.uniform((1,))  # an unseeded Keras draw makes the run's own global generator
        quiet_tensorflow()
        custom.register((str(source),))
        seen["Dropout"] = keras.saving.get_custom_objects()["Dropout"].__module__
        raise DataError("bad data")

    before = _state()
    with pytest.raises(DataError, match="bad data"):
        failing_run()
    assert seen == {"policy": "float32", "tensorflow seed": None, "Dropout": "mc_dropout"}
    assert _state() == before
    assert "Dropout" not in keras.saving.get_custom_objects()


def test_the_runs_seed_pins_the_default_seeds_keras_draws_whatever_the_callers_random_state(tmp_path):
    """Class: a draw of the run that did not go through --seed. Keras gives each layer it builds without
    a seed (a loaded model's Dropout) a default seed drawn from Python's `random`, so fine-tuning's
    dropout masks, and the weights after them (a gradual schedule's masks too), followed the caller's
    `random.seed`/`keras.utils.set_random_seed` (an API run with --seed 4 under random.seed(1) and (2):
    other weights), and changed from one command to the next; runtime.seed_run seeds it with --seed as
    the run loads its model."""
    import keras
    import numpy as np

    from prunecli import build_config
    from prunecli.outputs.report import Timings
    from prunecli.run import steps

    inputs = keras.Input((6,))
    hidden = keras.layers.Dropout(0.5)(keras.layers.Dense(4)(inputs))
    keras.Model(inputs, keras.layers.Dense(3)(hidden)).save(tmp_path / "m.keras")
    config = build_config({"model_path": str(tmp_path / "m.keras"), "seed": 4, "sizes": False}, environ={})

    def dropout_seeds(caller_seed: int):
        random.seed(caller_seed)
        model = steps.load(config, steps.silent, Timings())[0].model
        return [np.asarray(v) for v in model.variables if "seed_generator" in v.path]

    callers = random.getstate()
    try:
        first, second = dropout_seeds(1), dropout_seeds(2)
    finally:
        random.setstate(callers)
    assert first and all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
