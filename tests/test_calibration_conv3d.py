"""Conv3D is calibrated like Conv1D/2D: its volume patches reproduce the layer, tiles of them the same
Hessian, and SparseGPT beats magnitude on its output; a dilated one is read as well."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import every_target, prune_one_target


def _volumes(n: int, seed: int = 0):
    """Smooth volumes (neighbouring voxels correlated) with channels of different scales: inputs whose
    Hessian is far from the identity, where calibration has something to find."""
    x = np.random.default_rng(seed).normal(size=(n, 6, 7, 5, 3))
    x = np.cumsum(np.cumsum(x, axis=1), axis=2) * np.array([1.0, 4.0, 0.3])
    return x.astype("float32")


def _model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((6, 7, 5, 3)),
            keras.layers.Conv3D(4, 3, strides=(2, 1, 2), padding="same", name="a", activation="relu"),
            keras.layers.Conv3D(5, (2, 3, 1), padding="valid", name="b"),
        ]
    )


def test_volume_patches_reproduce_each_conv3d_and_tiles_give_the_same_hessian():
    import keras
    import tensorflow as tf

    from prunecli.calibration import capture, views

    model = _model()
    x = _volumes(3)
    for t in every_target(model):
        view = views.view_of(t)
        assert not isinstance(view, str), view
        seen = []
        with capture._Wrapped(t.layer, seen.append):
            model(x)
        got = tf.matmul(view.inputs(seen[0]), view.to_matrix(t.variable)) + t.layer.bias
        if t.layer.activation is not keras.activations.linear:
            got = tf.nn.relu(got)
        np.testing.assert_allclose(got, tf.reshape(t.layer(seen[0]), (-1, t.units)), atol=1e-4)
        assert view.rows_per_example(seen[0].shape) * 3 == int(view.inputs(seen[0]).shape[0])
        batches = capture.chunks([x], 2)
        whole = capture.HessianCapture(view, 1, full=True, max_rows=10**9).run(model, batches)
        capture.HessianCapture.peak_block_rows = 0
        small = capture.HessianCapture(view, 1, full=True, max_rows=4).run(model, batches)
        assert capture.HessianCapture.peak_block_rows <= 4, t.name
        assert small.rows == whole.rows > 4
        np.testing.assert_allclose(np.asarray(small.hessian), np.asarray(whole.hessian), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sparsity", [0.5, pytest.param(0.7, marks=pytest.mark.slow)])
def test_sparsegpt_beats_magnitude_on_a_conv3d(sparsity):
    import keras
    import tensorflow as tf

    x = _volumes(24, seed=1)
    errors = {}
    for method in ("magnitude", "sparsegpt"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((6, 7, 5, 3)), keras.layers.Conv3D(8, 3, use_bias=False)])
        t = every_target(model)[0]
        dense = np.asarray(model(x))
        entry = prune_one_target(method, model, t, x, sparsity)
        if entry is not None:
            assert entry["error_after"] < entry["error_before"]
        errors[method] = float(tf.norm(np.asarray(model(x)) - dense) / tf.norm(dense))
    assert errors["sparsegpt"] < 0.9 * errors["magnitude"], errors


def test_a_dilated_conv3d_is_calibrated_on_its_patches():
    """The patches are strided views of the input (views._patches), dilation included: X @ W is the layer."""
    import keras
    import tensorflow as tf

    from prunecli.calibration import capture, views

    model = keras.Sequential([keras.Input((9, 8, 9, 2)), keras.layers.Conv3D(3, 3, dilation_rate=(2, 1, 2))])
    t = every_target(model)[0]
    view = views.view_of(t)
    assert not isinstance(view, str), view
    x = np.random.default_rng(3).normal(size=(2, 9, 8, 9, 2)).astype("float32")
    seen = []
    with capture._Wrapped(t.layer, seen.append):
        model(x)
    got = tf.matmul(view.inputs(seen[0]), view.to_matrix(t.variable)) + t.layer.bias
    np.testing.assert_allclose(got, tf.reshape(model(x), (-1, t.units)), atol=1e-4)
