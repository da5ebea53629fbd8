"""A `.keras` archive written by tf.keras 2.11-2.12 (its first "keras_v3" format, also what those versions
pickle a model as): the weights member is `variables.h5`, not `model.weights.h5`, and the config is
Keras 2's (an LSTM's `time_major`). Found on basic-lstm-model 1.0.0, whose scikit-learn Pipeline pickles
its LSTM(50) -> Dense(1) so: the loader fell through to keras.saving.load_model, which refused the config.
Also: a regressor's small loss was printed as 0.0000 before and after pruning (its MSE on prices: 5e-06,
then 3e-05)."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest


def _as_keras211(path, out) -> None:
    """`path`'s archive as tf.keras 2.11 wrote it: variables.h5, keras_version 2.11.0, time_major."""
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        config = json.loads(src.read("config.json"))
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "LSTM":
                layer["config"]["time_major"] = False
        dst.writestr("variables.h5", src.read("model.weights.h5"))
        dst.writestr("metadata.json", json.dumps({"keras_version": "2.11.0", "date_saved": "2023-05-23@18:06:40"}))
        dst.writestr("config.json", json.dumps(config))


@pytest.mark.slow  # ~1.5 s: builds and saves a small LSTM
def test_a_keras211_archive_loads_with_its_weights(tmp_path):
    import keras

    from prunecli.io import models as model_io

    model = keras.Sequential([keras.Input((12, 1)), keras.layers.LSTM(5, name="lstm"), keras.layers.Dense(1)])
    for w in model.weights:
        w.assign(np.random.default_rng(1).normal(size=w.shape).astype("float32"))
    model.save(tmp_path / "k3.keras")
    _as_keras211(tmp_path / "k3.keras", tmp_path / "old.keras")
    loaded = model_io.load(tmp_path / "old.keras")[0]
    x = np.random.default_rng(2).normal(size=(4, 12, 1)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


def test_a_small_loss_keeps_its_digits():
    from prunecli.outputs.report import loss_text
    from prunecli.run import sweep_outputs

    assert loss_text(5.261e-06) == "5.261e-06" and loss_text(3.042e-05) != loss_text(5.261e-06)
    assert loss_text(0.69314) == "0.6931" and loss_text(0.0) == "0.0000"
    result = sweep_outputs.SweepResult("m", "d", "magnitude", "global", "weight", 0, 0.01, 8, {"loss": 5.261e-06}, [])
    result.points.append(sweep_outputs.SweepPoint(sweep_outputs.ALL, 0.5, 0.5, {"loss": 3.042e-05}))
    assert sweep_outputs.summary_line(result) == "Unpruned: loss 5.261e-06"
    assert sweep_outputs.table_rows(result)[1] == [["0.5", "3.042e-05"]]  # a regressor's sweep: loss is the metric
