"""Transposed convolutions (a U-Net's or an autoencoder's decoder) are calibrated and refit as the stride-1
convolutions they are: the spread input's patches times the mirrored kernel reproduce Conv1DTranspose,
Conv2DTranspose (valid, strided unevenly, output_padding) and Conv3DTranspose, and SparseGPT beats magnitude on one."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import every_target, prune_one_target


def test_transposed_convolutions_are_seen_as_x_at_w():
    import keras
    import tensorflow as tf

    from prunecli.calibration import views

    cases = [
        (keras.layers.Conv1DTranspose(4, 2, strides=2, padding="same"), (7, 3)),
        (keras.layers.Conv2DTranspose(5, (2, 3), strides=(3, 1), padding="valid", output_padding=(1, 0)), (5, 6, 3)),
        (keras.layers.Conv3DTranspose(2, 3, strides=(2, 1, 2), padding="same"), (3, 4, 3, 2)),
    ]
    rng = np.random.default_rng(0)
    for layer, shape in cases:
        model = keras.Sequential([keras.Input(shape), layer])
        t = every_target(model)[0]
        view = views.view_of(t)
        assert not isinstance(view, str), view
        x = rng.normal(size=(2, *shape)).astype("float32")
        got = tf.matmul(view.inputs(x), view.to_matrix(t.variable)) + layer.bias
        np.testing.assert_allclose(got, tf.reshape(model(x), (-1, t.units)), atol=1e-5, err_msg=layer.name)
        assert view.rows_per_example(x.shape) * 2 == int(got.shape[0])
        np.testing.assert_array_equal(view.from_matrix(view.to_matrix(t.variable)), t.variable)


@pytest.mark.slow
def test_sparsegpt_beats_magnitude_on_a_conv2dtranspose():
    import keras
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(size=(24, 6, 6, 4)), axis=1) * np.array([1.0, 3.0, 0.3, 1.0])
    x = x.astype("float32")
    errors = {}
    for method in ("magnitude", "sparsegpt"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((6, 6, 4)), keras.layers.Conv2DTranspose(8, 3, strides=2, padding="same")]
        )
        dense = np.asarray(model(x))
        entry = prune_one_target(method, model, every_target(model)[0], x, 0.5)
        if entry is not None:
            assert entry["error_after"] < entry["error_before"]
        errors[method] = float(tf.norm(np.asarray(model(x)) - dense) / tf.norm(dense))
    assert errors["sparsegpt"] < 0.9 * errors["magnitude"], errors
