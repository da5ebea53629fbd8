"""Adaptive BatchNorm after neuron pruning: the moving statistics become those of the pruned model."""

from __future__ import annotations

import numpy as np


def _model():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 2))
    x = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, keras.layers.Dense(3, name="out")(x))


def test_recalibrated_statistics_are_the_pruned_models_batch_statistics():
    import tensorflow as tf

    from prunecli.training import batchnorm

    model = _model()
    x = np.random.default_rng(0).standard_normal((64, 8, 8, 2)).astype("float32")
    conv = model.get_layer("conv")
    conv.kernel.assign(conv.kernel * np.array([1, 1, 1, 0, 0, 0], "float32"))  # three filters pruned
    bn = model.get_layer("bn")
    bn.moving_mean.assign(np.full(6, 5.0, "float32"))  # the dense model's stale statistics
    train = tf.data.Dataset.from_tensor_slices((x, np.zeros(64))).batch(32)
    assert batchnorm.recalibrate(model, train, followers=[]) == 1
    features = np.asarray(conv(x))
    want_mean = np.mean([features[:32].mean(axis=(0, 1, 2)), features[32:].mean(axis=(0, 1, 2))], axis=0)
    np.testing.assert_allclose(np.asarray(bn.moving_mean), want_mean, atol=1e-5)
    assert np.all(np.asarray(bn.moving_mean)[3:] == 0)  # a pruned channel's statistics: exactly zero
    assert bn.momentum == 0.99  # the layer's own momentum is back


def test_neuron_pruning_with_data_reports_the_recalibration(cli, example_model, example_data, tmp_path):
    import json

    result = cli(
        "prune",
        example_model,
        "-g",
        "neuron",
        "-s",
        "0.5",
        "--data",
        example_data,
        "-o",
        tmp_path / "o.keras",
        "--report",
        "-",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["batchnorm_recalibrated"]["layers"] >= 1  # the bundled CNN's BatchNorm layers
    assert report["metrics"]["after_pruning"]["accuracy"] > 0.5
