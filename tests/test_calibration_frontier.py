"""Sequential calibration through the cached graph walk (calibration/frontier.py) gives the masks and
weights the prefix passes give, runs each layer about once per calibration pass whatever the depth,
and falls back to the prefix passes, saying so, where the walk does not fit or cannot be trusted."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_cached_equals_prefix, calibrated_at_budget, calibration_config, every_target

EXAMPLE = "examples/digits_cnn.keras"
DATA = "examples/digits.npz"


def _residual_conv():
    """SpliceAI in miniature: variable length, BN with real statistics, dilated convs with residual
    Adds, a 1x1 skip tap that the graph runs last, a Cropping1D and a softmax head."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, 4))
    a = keras.layers.Conv1D(8, 1, name="c0")(inp)
    h = keras.layers.BatchNormalization(name="bn0")(a)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Conv1D(8, 3, padding="same", dilation_rate=2, name="c1")(h)
    r = keras.layers.Add()([h, a])
    h = keras.layers.BatchNormalization(name="bn1")(r)
    h = keras.layers.Activation("relu")(h)
    h = keras.layers.Conv1D(8, 3, padding="same", name="c2")(h)
    r2 = keras.layers.Add()([h, r])
    skip = keras.layers.Conv1D(8, 1, name="skip")(a)
    s = keras.layers.Add()([skip, r2])
    s = keras.layers.Cropping1D(3)(s)
    model = keras.Model(inp, keras.layers.Conv1D(3, 1, activation="softmax", name="head")(s))
    rng = np.random.default_rng(1)
    for name in ("bn0", "bn1"):
        bn = model.get_layer(name)
        bn.moving_mean.assign(rng.normal(size=8).astype("float32"))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=8).astype("float32"))
    x = np.random.default_rng(0).normal(size=(20, 30, 4)).astype("float32")
    return model, [x[:12], x[12:]]


def _mlp():
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((24,))
    h = keras.layers.Dense(16, activation="relu", name="d1")(inp)
    h = keras.layers.Dropout(0.5)(h)
    h = keras.layers.Dense(12, activation="tanh", name="d2")(h)
    model = keras.Model(inp, keras.layers.Dense(5, name="d3")(h))
    x = np.random.default_rng(0).normal(size=(40, 24)).astype("float32")
    return model, [x[:32], x[32:]]


def _multi_input():
    import keras

    keras.utils.set_random_seed(2)
    a = keras.Input((10,), name="a")
    b = keras.Input((6,), name="b")
    ha = keras.layers.Dense(8, activation="relu", name="fa")(a)
    hb = keras.layers.Dense(8, activation="relu", name="fb")(b)
    h = keras.layers.Concatenate()([ha, hb])
    h = keras.layers.Dense(8, activation="relu", name="mix")(h)
    model = keras.Model({"a": a, "b": b}, keras.layers.Dense(2, name="out")(h))
    rng = np.random.default_rng(0)
    x = {"a": rng.normal(size=(36, 10)).astype("float32"), "b": rng.normal(size=(36, 6)).astype("float32")}
    return model, [{k: v[:20] for k, v in x.items()}, {k: v[20:] for k, v in x.items()}]


def _nested(container=None):
    """A calibrated layer inside a nested Sequential (its layers are steps of the cached walk), or
    inside `container`, a Sequential class of its own."""
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="c1")(inp)
    h = keras.layers.Flatten()(h)
    inner = (container or keras.Sequential)(
        [
            keras.Input((h.shape[-1],)),
            keras.layers.Dense(12, activation="relu", name="i1"),
            keras.layers.Dense(6, name="i2"),
        ],
        name="inner",
    )
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(inner(h)))
    x = np.random.default_rng(0).normal(size=(24, 8, 8, 3)).astype("float32")
    return model, [x]


MODELS = {"residual_conv": _residual_conv, "mlp": _mlp, "multi_input": _multi_input, "nested": _nested}
METHODS = {
    "wanda": {"method": "wanda"},
    "sparsegpt": {"method": "sparsegpt"},
    "sparsegpt+reconstruct": {"method": "sparsegpt", "reconstruct": True},
}


def _assert_same(cached, prefix):
    assert_cached_equals_prefix(cached, prefix)
    assert "budget" in prefix[0].section["passes_note"]


@pytest.mark.parametrize("method", [m if m == "wanda" else pytest.param(m, marks=pytest.mark.slow) for m in METHODS])
@pytest.mark.parametrize(
    "arch", [a if a == "residual_conv" else pytest.param(a, marks=pytest.mark.slow) for a in MODELS]
)
def test_cached_walk_equals_prefix_passes(arch, method, monkeypatch):
    build = MODELS[arch]
    cached = calibrated_at_budget(build, 2**30, monkeypatch, **METHODS[method])
    prefix = calibrated_at_budget(build, 0, monkeypatch, **METHODS[method])
    _assert_same(cached, prefix)
    if arch == "nested":  # a nested Sequential is walked node by node (Keras' own run), not as one node
        assert cached[0].section["passes_note"] is None


@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
@pytest.mark.parametrize("arch", ["residual_conv", "multi_input"])
def test_reconstruct_and_global_wanda_equal_prefix(arch, monkeypatch):
    """--reconstruct of another method's masks, and Wanda ranked globally, read the same inputs."""
    import tensorflow as tf

    from prunecli.calibration import frontier, reconstruct
    from prunecli.selection import policy

    _assert_same(
        calibrated_at_budget(MODELS[arch], 2**30, monkeypatch, method="wanda", scope="global"),
        calibrated_at_budget(MODELS[arch], 0, monkeypatch, method="wanda", scope="global"),
    )
    out = {}
    for budget in (2**30, 0):
        monkeypatch.setattr(frontier, "FRONTIER_BYTES", budget)
        model, batches = MODELS[arch]()
        ts = every_target(model)
        ms = policy.build_masks(
            ts, {t.name: tf.abs(t.variable) for t in ts}, "element", calibration_config(sparsity=0.6)
        )
        section = reconstruct(model, ts, ms.masks, batches)
        out[budget] = section, [np.asarray(w) for w in model.weights]
    (cached, w_cached), (prefix, w_prefix) = out[2**30], out[0]
    assert cached["passes"] == "cached" and prefix["passes"] == "prefix"
    assert cached["layers"].keys() == prefix["layers"].keys() and cached["layers"]
    for a, b in zip(w_cached, w_prefix, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def _counted_chain(depth: int):
    """Dense layers, each followed by a layer that counts its calls."""
    import keras

    class Count(keras.layers.Layer):
        calls: dict = {}

        def call(self, x):
            Count.calls[self.name] = Count.calls.get(self.name, 0) + 1
            return x

    keras.utils.set_random_seed(4)
    inp = keras.Input((16,))
    h = inp
    for i in range(depth):
        h = keras.layers.Dense(16, activation="relu", name=f"d{i}")(h)
        h = Count(name=f"count{i}")(h)
    model = keras.Model(inp, h)
    Count.calls.clear()
    return model, Count.calls


@pytest.mark.parametrize("method", [pytest.param("wanda", marks=pytest.mark.slow), "sparsegpt"])
def test_layer_calls_are_linear_in_depth(method, monkeypatch):
    """Per calibration, every layer runs a fixed number of times (once per pass, plus the probes) on
    the cached walk, whatever the depth; the prefix passes run layer i once per later layer."""
    from prunecli.calibration import frontier, prune_calibrated

    x = np.random.default_rng(0).normal(size=(24, 16)).astype("float32")
    batches = [x[:12], x[12:]]  # two passes
    most = {}
    for budget, path in ((2**30, "cached"), (0, "prefix")):
        monkeypatch.setattr(frontier, "FRONTIER_BYTES", budget)
        for depth in (3, 6):
            model, calls = _counted_chain(depth)
            res = prune_calibrated(model, every_target(model), batches, calibration_config(method, sparsity=0.5))
            assert res.section["passes"] == path
            most[path, depth] = max(calls.values())
            if path == "cached":  # call order + walk check + model check probes, then once per pass
                assert all(n <= 3 + len(batches) for n in calls.values()), calls
    assert most["cached", 6] == most["cached", 3]
    assert most["prefix", 6] > most["prefix", 3] > most["cached", 3]


@pytest.mark.slow
def test_over_budget_falls_back_and_says_so(monkeypatch):
    """A frontier over the byte budget runs the prefix passes, with the estimate and the budget named;
    the budget is also capped by a quarter of free memory."""
    from prunecli.calibration import frontier, oneshot

    res, _ = calibrated_at_budget(_residual_conv, 1000, monkeypatch, method="sparsegpt")
    assert res.section["passes"] == "prefix" and res.section["frontier_bytes"] is None
    assert "over the budget of 1000 bytes" in res.section["passes_note"]
    assert set(res.section["layers"]) == {t.name for t in every_target(_residual_conv()[0])}
    res, _ = calibrated_at_budget(_residual_conv, 2**30, monkeypatch, method="sparsegpt")
    assert res.section["passes"] == "cached" and 0 < res.section["frontier_bytes"] <= 2**30
    monkeypatch.setattr(frontier, "FRONTIER_BYTES", 2**30)
    monkeypatch.setattr(oneshot, "_available_memory", lambda: 4000)
    assert oneshot.frontier_budget() == 1000


def test_shared_subclassed_and_unreproducible_models_use_prefix_passes(monkeypatch):
    import keras
    import tensorflow as tf

    from prunecli.calibration import frontier, prune_calibrated

    monkeypatch.setattr(frontier, "FRONTIER_BYTES", 2**30)
    x = np.random.default_rng(0).normal(size=(24, 8)).astype("float32")

    keras.utils.set_random_seed(5)
    shared = keras.layers.Dense(8, activation="tanh", name="shared")
    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(shared(shared(inp))))
    res = prune_calibrated(model, every_target(model), [x], calibration_config("sparsegpt", sparsity=0.5))
    assert res.section["passes"] == "prefix" and "shared" in res.section["passes_note"]
    assert set(res.section["layers"]) == {"shared/kernel", "out/kernel"}

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.a = keras.layers.Dense(8, activation="relu", name="a")
            self.b = keras.layers.Dense(2, name="b")

        def call(self, x):
            return self.b(self.a(x))

    model = Sub()
    model(x[:2])
    res = prune_calibrated(model, every_target(model), [x], calibration_config("sparsegpt", sparsity=0.5))
    assert res.section["passes"] == "prefix" and "subclassed" in res.section["passes_note"]
    assert len(res.section["layers"]) == 2

    class Noise(keras.layers.Layer):  # random at inference: a walk cannot reproduce the model
        def call(self, t):
            return t + tf.random.normal(tf.shape(t))

    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(Noise()(keras.layers.Dense(8, name="d")(inp))))
    res = prune_calibrated(model, every_target(model), [x], calibration_config("wanda", sparsity=0.5))
    assert res.section["passes"] == "prefix" and "reproduce" in res.section["passes_note"]


def test_sequential_model_is_walked(monkeypatch):
    import keras

    def build():
        keras.utils.set_random_seed(6)
        model = keras.Sequential(
            [keras.Input((12,)), keras.layers.Dense(10, activation="relu", name="s1"), keras.layers.Dense(4, name="s2")]
        )
        return model, [np.random.default_rng(0).normal(size=(30, 12)).astype("float32")]

    _assert_same(calibrated_at_budget(build, 2**30, monkeypatch), calibrated_at_budget(build, 0, monkeypatch))


def test_conv_error_meter_equals_its_im2col_rows():
    """Wanda's error meter reads a convolution's ||X diff|| and ||X W|| by two convolutions; they equal
    the sums over the im2col rows (same, valid, causal, dilated and strided convolutions, 1-D to 3-D)."""
    import keras

    from prunecli.calibration import capture, views

    keras.utils.set_random_seed(7)
    inp = keras.Input((9, 9, 3))
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="a")(inp)
    h = keras.layers.Conv2D(4, 2, dilation_rate=2, padding="valid", name="b")(h)
    h = keras.layers.Reshape((-1, 4))(h)
    h = keras.layers.Conv1D(5, 3, padding="causal", dilation_rate=2, name="c")(h)
    h = keras.layers.Conv1D(5, 3, padding="same", strides=2, name="d")(h)
    h = keras.layers.Reshape((5, 5, 1, 1))(h)
    h = keras.layers.Conv3D(3, 2, strides=(1, 2, 1), padding="same", name="e")(h)
    model = keras.Model(inp, h)
    x = np.random.default_rng(0).normal(size=(5, 9, 9, 3)).astype("float32")
    rng = np.random.default_rng(1)
    for t in every_target(model):
        view = views.view_of(t)
        seen = []
        with capture._Wrapped(t.layer, seen.append):
            model(x)
        w = view.to_matrix(np.asarray(t.variable))
        meter = capture.ErrorMeter(view, w * (rng.random(w.shape) > 0.5), w, 1)
        assert meter.kernels is not None, t.name
        meter.max_rows = 7  # several blocks
        by_conv, by_rows = meter.conv_sums(seen[0]), meter.block_sums(seen[0])
        np.testing.assert_allclose(by_conv, by_rows, rtol=1e-4, err_msg=t.name)


def test_a_nested_model_with_a_call_of_its_own_is_read_by_passes_through_its_node(monkeypatch):
    """Its call may do more than run its graph, so its layers are read through the node, not walked."""
    import keras

    class OwnCall(keras.Sequential):
        def call(self, inputs, training=None, mask=None):
            return super().call(inputs, training=training, mask=mask)

    build = lambda: _nested(OwnCall)  # noqa: E731
    cached = calibrated_at_budget(build, 2**30, monkeypatch, method="wanda")
    _assert_same(cached, calibrated_at_budget(build, 0, monkeypatch, method="wanda"))
    assert "inner" in cached[0].section["passes_note"]
