"""Depthwise kernels (DepthwiseConv1D/2D, a SeparableConv's depthwise kernel) are calibrated per channel
(views.py kind "depthwise", depthwise.py): the block-diagonal view reproduces the layer, Wanda's scores
are |w| times each (tap, channel)'s input norm, SparseGPT lowers the output error below magnitude's,
counts are exact, and what cannot be calibrated says why."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import calibration_config, every_target, prune_one_target


def _model():
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", name="c0")(inp)
    h = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2, name="dw")(h)
    h = keras.layers.SeparableConv2D(8, 3, strides=2, name="sep")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(h))


def _images(n=40):
    """Smooth (neighbouring pixels correlated), channels of different scales: a non-diagonal per-channel
    Hessian, where SparseGPT's updates have something to compensate with."""
    rng = np.random.default_rng(0)
    z = np.cumsum(np.cumsum(rng.normal(size=(n, 10, 10, 2)), axis=1), axis=2) / 4
    return (z @ rng.normal(size=(2, 3)) + 0.1 * rng.normal(size=(n, 10, 10, 3))).astype("float32")


LAYERS = [
    ("DepthwiseConv2D", {"kernel_size": 3, "padding": "same", "depth_multiplier": 2}, (7, 7, 4)),
    ("DepthwiseConv2D", {"kernel_size": (3, 2), "strides": 2, "padding": "valid"}, (9, 8, 3)),
    ("DepthwiseConv2D", {"kernel_size": 3, "dilation_rate": 2, "padding": "same"}, (9, 9, 3)),
    ("DepthwiseConv1D", {"kernel_size": 3, "padding": "same", "depth_multiplier": 3}, (11, 4)),
    ("SeparableConv2D", {"filters": 5, "kernel_size": 3, "padding": "same"}, (6, 6, 4)),
    ("SeparableConv1D", {"filters": 5, "kernel_size": 2, "strides": 2}, (9, 4)),
]


@pytest.mark.parametrize("cls,kwargs,shape", LAYERS)
def test_block_diagonal_view_reproduces_the_layer(cls, kwargs, shape):
    import keras
    import tensorflow as tf

    from prunecli.calibration import views

    layer = getattr(keras.layers, cls)(use_bias=False, **kwargs)
    x = np.random.default_rng(1).normal(size=(2, *shape)).astype("float32")
    layer(x)
    model = keras.Sequential([keras.Input(shape), layer])
    t = next(t for t in every_target(model) if t.attr != "pointwise_kernel")
    view = views.view_of(t, model)
    assert view.kind == "depthwise" and view.d_in == t.size // t.shape[-1] and view.off_block > 0
    got = tf.matmul(view.inputs(x), view.to_matrix(t.variable))
    if cls.startswith("Separable"):  # its depthwise stage: a depthwise layer with the same kernel
        config = {k: v for k, v in kwargs.items() if k != "filters"}
        stage = getattr(keras.layers, cls.replace("Separable", "Depthwise"))(use_bias=False, **config)
        stage(x)
        stage.kernel.assign(t.variable)
        ref = stage(x)
    else:
        ref = layer(x)
    np.testing.assert_allclose(got, tf.reshape(ref, (-1, view.d_out)), atol=1e-4)
    np.testing.assert_array_equal(view.from_matrix(view.to_matrix(t.variable)), t.variable)
    keep = np.random.default_rng(2).random(t.shape) > 0.5
    np.testing.assert_array_equal(view.from_matrix(view.to_matrix(tf.constant(keep))), keep)


def test_wanda_scores_are_weight_times_tap_norms():
    """DepthwiseConv1D, valid: X's row for output i, tap j of channel c is x[n, i + j, c]; the mask prunes
    the layer's lowest |w| * ||x_(j, c)|| (ranked over the layer: depthwise.py), computed here by hand."""
    import keras

    from prunecli.calibration import prune_calibrated

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((12, 5)), keras.layers.DepthwiseConv1D(3, depth_multiplier=2, name="dw")])
    x = np.random.default_rng(0).normal(size=(16, 12, 5)).astype("float32") * np.arange(1, 6, dtype="float32")
    t = every_target(model)[0]
    w = np.asarray(t.variable).copy()  # (3, 5, 2)
    res = prune_calibrated(model, [t], [x], calibration_config("wanda", sparsity=0.5))
    assert res.section["fallback"] == {} and res.section["layers"][t.name]["rows"] == 16 * 10
    norms = np.stack([np.sqrt((x[:, j : j + 10, :].astype(np.float64) ** 2).sum((0, 1))) for j in range(3)])  # (3, 5)
    score = (np.abs(w) * norms[:, :, None]).reshape(-1)
    expected = np.ones(w.size, bool)
    expected[np.argsort(score, kind="stable")[: w.size // 2]] = False
    expected = expected.reshape(w.shape)
    np.testing.assert_array_equal(np.asarray(res.masks[t.name]), expected)
    np.testing.assert_array_equal(np.asarray(t.variable), np.where(expected, w, 0))


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_sparsegpt_beats_magnitude_on_depthwise_output(sparsity):
    import keras
    import tensorflow as tf

    x = _images(48)
    errors = {}
    for method in ("magnitude", "sparsegpt"):
        keras.utils.set_random_seed(0)
        model = keras.Sequential(
            [keras.Input((10, 10, 3)), keras.layers.DepthwiseConv2D(3, depth_multiplier=4, use_bias=False)]
        )
        t = every_target(model)[0]
        dense_out = np.asarray(model(x))
        entry = prune_one_target(method, model, t, x, sparsity)
        if entry is not None:
            assert entry["error_after"] < entry["error_before"]
        out = np.asarray(model(x))
        errors[method] = float(tf.norm(out - dense_out) / tf.norm(dense_out))
    assert errors["sparsegpt"] < 0.9 * errors["magnitude"], errors


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_depthwise_and_separable_are_calibrated_with_exact_counts(method, monkeypatch):
    from prunecli.calibration import frontier, prune_calibrated

    outcomes = []
    for budget in (2**30, 0):  # the cached walk and the prefix passes agree
        monkeypatch.setattr(frontier, "FRONTIER_BYTES", budget)
        model = _model()
        targets = every_target(model)
        res = prune_calibrated(model, targets, [_images()], calibration_config(method, sparsity=0.6))
        outcomes.append((res, [np.asarray(w) for w in model.weights]))
        assert set(res.section["fallback"]) == {"sep/pointwise_kernel"}
        assert "pointwise" in res.section["fallback"]["sep/pointwise_kernel"]
        assert {"dw/kernel", "sep/depthwise_kernel"} <= set(res.section["layers"])
        for t in targets:
            keep = np.asarray(res.masks[t.name])
            assert keep.shape == t.shape
            assert int((~keep).sum()) == int(round(0.6 * t.size)), t.name
            assert (np.asarray(t.variable)[~keep] == 0).all(), t.name
    (cached, wc), (prefix, wp) = outcomes
    assert cached.section["passes"] == "cached" and prefix.section["passes"] == "prefix"
    for name in cached.masks:
        np.testing.assert_array_equal(np.asarray(cached.masks[name]), np.asarray(prefix.masks[name]), err_msg=name)
    for a, b in zip(wc, wp, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_global_scores_nm_fallback_and_reconstruct():
    from prunecli.calibration import prune_calibrated, reconstruct

    model = _model()
    targets = every_target(model)
    res = prune_calibrated(model, targets, [_images()], calibration_config("sparsegpt", granularity="2:4"))
    assert "N:M" in res.section["fallback"]["dw/kernel"]
    model = _model()
    res = prune_calibrated(
        model, every_target(model), [_images()], calibration_config("wanda", sparsity=0.6, scope="global")
    )
    assert "dw/kernel" in res.section["layers"]

    model = _model()
    targets = every_target(model)
    masks = {t.name: np.abs(np.asarray(t.variable)) > np.median(np.abs(np.asarray(t.variable))) for t in targets}
    section = reconstruct(model, targets, masks, [_images()])
    for name in ("dw/kernel", "sep/depthwise_kernel"):
        entry = section["layers"][name]
        assert entry["error_after"] < entry["error_before"], (name, entry)
    for t in targets:
        assert (np.asarray(t.variable)[~masks[t.name]] == 0).all()


pytestmark = pytest.mark.slow  # whole module in the full suite only: the fast subset stays under 2 minutes


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_channels_first_convolutions_calibrate_as_their_channels_last_twins(method):
    """A channels-first file's Conv2D, DepthwiseConv2D and Conv1D fell back to magnitude ("channels_first
    convolutions are not calibrated"). Their kernels are laid out as channels-last ones', so only the
    input moves: twins with the same weights, fed the same images in each layout, get the same masks and
    the same updated weights."""
    import keras

    from prunecli.calibration import prune_calibrated
    from prunecli.io.models import channels_first

    channels_first.run_on_cpu()  # TensorFlow's CPU convolutions take channels-last tensors only

    def twin(fmt):
        first = fmt == "channels_first"
        inp = keras.Input((3, 10, 10) if first else (10, 10, 3))
        h = keras.layers.Conv2D(6, 3, padding="same", data_format=fmt, name="c0")(inp)
        h = keras.layers.DepthwiseConv2D(3, strides=2, data_format=fmt, name="dw")(h)
        h = keras.layers.Reshape((6, 16) if first else (16, 6))(h)  # a 1-D map of 16 positions, 6 channels
        h = keras.layers.Conv1D(5, 3, data_format=fmt, name="c1")(h)
        h = keras.layers.GlobalAveragePooling1D(data_format=fmt)(h)
        return keras.Model(inp, keras.layers.Dense(3, name="head")(h))

    x = _images()
    last, first = twin("channels_last"), twin("channels_first")
    first.set_weights(last.get_weights())
    x_first = np.transpose(x, (0, 3, 1, 2))
    np.testing.assert_allclose(np.asarray(first(x_first)), np.asarray(last(x)), rtol=1e-5, atol=1e-6)
    results = {}
    for model, batch in ((last, x), (first, x_first)):
        res = prune_calibrated(model, every_target(model), [batch], calibration_config(method, sparsity=0.5))
        results[model] = (res, {w.path: np.asarray(w) for w in model.weights})
    (res_last, w_last), (res_first, w_first) = results[last], results[first]
    assert res_first.section["fallback"] == res_last.section["fallback"] == {}
    assert {"c0/kernel", "dw/kernel", "c1/kernel"} <= set(res_first.section["layers"])
    for name, keep in res_last.masks.items():
        np.testing.assert_array_equal(np.asarray(res_first.masks[name]), np.asarray(keep), err_msg=name)
    for path, value in w_last.items():
        np.testing.assert_allclose(w_first[path], value, rtol=1e-4, atol=1e-6, err_msg=path)
