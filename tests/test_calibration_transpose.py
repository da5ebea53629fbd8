"""Transposed convolutions (a U-Net's or an autoencoder's decoder) are calibrated and refit as the stride-1
convolutions they are: the spread input's patches times the mirrored kernel reproduce Conv1DTranspose,
Conv2DTranspose (valid, strided unevenly, output_padding, dilated, channels-first) and Conv3DTranspose, and
SparseGPT beats magnitude on one."""

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


def _transposed_by_definition(x, kernel, strides, dilations, padding, outs):
    """A channels-last transposed convolution by its definition, without TensorFlow: input position i adds
    kernel tap a's (out, in) matrix times x[i] at i * s + a * d of the full output, which 'same' crops by
    TensorFlow's max((n - 1) s + e - out, 0) // 2 before (e = (k - 1) d + 1)."""
    import itertools

    spatial, ks = x.shape[1:-1], kernel.shape[:-2]
    eff = [(k - 1) * d + 1 for k, d in zip(ks, dilations, strict=True)]
    before = [
        max((n - 1) * s + e - o, 0) // 2 if padding == "same" else 0
        for n, s, e, o in zip(spatial, strides, eff, outs, strict=True)
    ]
    full = np.zeros((x.shape[0], *[b + o + e for b, o, e in zip(before, outs, eff, strict=True)], kernel.shape[-2]))
    for i in itertools.product(*map(range, spatial)):
        for a in itertools.product(*map(range, ks)):
            at = tuple(p * s + t * d for p, s, t, d in zip(i, strides, a, dilations, strict=True))
            full[(slice(None), *at)] += x[(slice(None), *i)] @ kernel[a].T
    return full[(slice(None), *[slice(b, b + o) for b, o in zip(before, outs, strict=True)])]


def test_dilated_and_channels_first_transposed_convolutions_are_seen_as_x_at_w():
    """Dilated and channels-first transposed convolutions fell back to magnitude under wanda/sparsegpt
    (TensorFlow runs them on a GPU only, so the reference here is the definition, not the layer)."""
    import keras
    import tensorflow as tf

    from prunecli.calibration import views

    cases = [
        (keras.layers.Conv2DTranspose(3, 3, strides=(2, 3), padding="same"), (3, 4, 2)),  # the reference checked
        (keras.layers.Conv2DTranspose(3, (2, 3), dilation_rate=(2, 1), padding="valid"), (4, 5, 2)),
        (keras.layers.Conv2DTranspose(3, 3, dilation_rate=2, padding="same"), (5, 4, 2)),
        (
            keras.layers.Conv2DTranspose(3, (3, 2), strides=(2, 1), padding="same", data_format="channels_first"),
            (2, 4, 5),
        ),
        (keras.layers.Conv1DTranspose(2, 3, dilation_rate=2, padding="same", data_format="channels_first"), (3, 6)),
    ]
    rng = np.random.default_rng(0)
    for layer, shape in cases:
        model = keras.Sequential([keras.Input(shape), layer])
        t = every_target(model)[0]
        view = views.view_of(t)
        assert not isinstance(view, str), view
        x = rng.normal(size=(2, *shape)).astype("float32")
        first = layer.data_format == "channels_first"
        x_last = np.moveaxis(x, 1, -1) if first else x
        out_shape = layer.compute_output_shape((None, *shape))
        outs = out_shape[2:] if first else out_shape[1:-1]
        kernel = np.asarray(t.variable)
        want = _transposed_by_definition(x_last, kernel, layer.strides, layer.dilation_rate, layer.padding, outs)
        if not first and max(layer.dilation_rate) == 1:  # one TensorFlow runs on a CPU: the definition is its
            np.testing.assert_allclose(want, model(x) - layer.bias, atol=1e-5)
        got = tf.matmul(view.inputs(x), view.to_matrix(t.variable))
        np.testing.assert_allclose(got, want.reshape(-1, t.units), atol=1e-5, err_msg=layer.name)
        assert view.rows_per_example(x.shape) * 2 == int(got.shape[0])


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
