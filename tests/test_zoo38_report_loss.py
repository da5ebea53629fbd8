"""The report's loss is the model's error on the data, without its regularisers' penalties (found on
envisionhgdetector's gesture CNN, whose Conv1D and Dense kernels carry L2(2e-4): its loss on its own
outputs read 0.034, and 0.031 after pruning zeroed half its weights, while its outputs moved by 6%)."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
def test_the_loss_leaves_out_weight_and_activity_penalties():
    import keras
    import tensorflow as tf

    from prunecli.training import metrics

    inp = keras.Input((4,))
    hidden = keras.layers.Dense(8, kernel_regularizer=keras.regularizers.L2(1.0), activity_regularizer="l1")(inp)
    model = keras.Model(inp, keras.layers.Dense(2)(hidden))
    x = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    y = np.asarray(model(x))  # its own outputs: an error of 0
    task = metrics.infer_task(model, y)
    loss = metrics.evaluate(model, tf.data.Dataset.from_tensor_slices((x, y)).batch(16), task)["loss"]
    assert loss == pytest.approx(0.0, abs=1e-6)
    assert model.layers[1].kernel.regularizer is not None and model.layers[1].activity_regularizer is not None
