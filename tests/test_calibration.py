"""Calibrated one-shot pruning (prunecli.calibration): Wanda, SparseGPT, --reconstruct."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import calibration_config, every_target

from prunecli.config import build_config
from prunecli.errors import ConfigError, DataError

EXAMPLE = "examples/digits_cnn.keras"
DATA = "examples/digits.npz"


def _dense_model(d_in=32, d_out=16, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((d_in,))
    out = keras.layers.Dense(d_out, name="fc")(inp)
    return keras.Model(inp, out)


def _correlated(n, d, seed=0):
    """Inputs with very different scales and strong correlations, as real activations have."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, d // 2))
    mix = rng.normal(size=(d // 2, d))
    scale = np.exp(rng.normal(size=d))
    return ((base @ mix + 0.3 * rng.normal(size=(n, d))) * scale).astype("float32")


def _output_error(model, dense_out, x):
    y = np.asarray(model(x, training=False))
    return float(np.linalg.norm(y - dense_out) / np.linalg.norm(dense_out))


def test_registered_and_validated():
    from prunecli import scoring

    assert {"wanda", "sparsegpt"} <= set(scoring.available())
    assert scoring.get("sparsegpt").calibrated and scoring.get("sparsegpt").needs_data
    assert calibration_config(calibration_samples=64, reconstruct=True).calibration_samples == 64
    with pytest.raises(ConfigError, match="needs --data"):
        build_config({"model_path": EXAMPLE, "method": "wanda"}, environ={})
    default = build_config({"model_path": EXAMPLE, "method": "wanda", "data": DATA}, environ={})
    assert default.scope == "global" and calibration_config().scope == "layer"  # global is the measured default
    with pytest.raises(ConfigError, match="element or n:m"):
        calibration_config(granularity="neuron")
    with pytest.raises(ConfigError, match="calibration_samples"):
        calibration_config(calibration_samples=0)
    with pytest.raises(ConfigError, match="--reconstruct needs --data"):
        build_config({"model_path": EXAMPLE, "reconstruct": True}, environ={})
    assert calibration_config(refine="dsnot").refine == "dsnot"
    with pytest.raises(ConfigError, match="--refine dsnot refines the masks of a one-shot wanda or sparsegpt"):
        build_config({"model_path": EXAMPLE, "data": DATA, "method": "magnitude", "refine": "dsnot"}, environ={})


def test_wanda_keeps_small_weight_on_large_input():
    """Magnitude prunes the 0.1 weight; its input is 1000x larger, so Wanda keeps it (and is right)."""
    from prunecli.calibration import prune_calibrated

    model = _dense_model(2, 1)
    fc = model.get_layer("fc")
    fc.kernel.assign(np.array([[1.0], [0.1]], "float32"))
    fc.bias.assign(np.zeros(1, "float32"))
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 2)) * np.array([0.01, 10.0])).astype("float32")
    dense_out = np.asarray(model(x))
    res = prune_calibrated(model, every_target(model), [x], calibration_config("wanda", sparsity=0.5))
    keep = np.asarray(res.masks["fc/kernel"])[:, 0]
    assert keep.tolist() == [False, True]  # magnitude would keep [True, False]
    assert _output_error(model, dense_out, x) < 0.01
    assert float(np.asarray(fc.kernel)[0, 0]) == 0.0


def test_the_exponent_of_the_input_norm_decides_which_weight_goes():
    """|w| * ||x||^a by hand: weights 1, 0.4, 0.2 on inputs of norm 1, 4, 36 score 1, 1.6, 7.2 at a = 1
    (Wanda prunes input 0), 1, 0.8, 1.2 at a = 0.5 (the tempered score prunes input 1) and 1, 0.4, 0.2
    at a = 0 (magnitude prunes input 2)."""
    from prunecli.calibration import wanda

    w = np.array([[1.0], [0.4], [0.2]], "float32")
    sum_of_squares = np.array([1.0, 16.0, 1296.0]) * 64  # 64 rows: a common factor ranks nothing
    for exponent, expected, pruned in [(1.0, [1, 1.6, 7.2], 0), (0.5, [1, 0.8, 1.2], 1), (0.0, [1, 0.4, 0.2], 2)]:
        score = np.asarray(wanda.scores(w, sum_of_squares, exponent))[:, 0]
        np.testing.assert_allclose(score / score[0], expected, rtol=1e-6)
        keep = np.asarray(wanda.per_output_keep(wanda.scores(w, sum_of_squares, exponent), 1))[:, 0]
        assert keep.tolist() == [i != pruned for i in range(3)], exponent


def test_sparsegpt_beats_magnitude_and_wanda_on_random_layer():
    import tensorflow as tf

    from prunecli.calibration import prune_calibrated
    from prunecli.selection import kernels, policy

    x = _correlated(512, 64)
    errors = {}
    for method in ("magnitude", "wanda", "sparsegpt"):
        model = _dense_model(64, 24)
        dense_out = np.asarray(model(x))
        ts = every_target(model)
        cfg = calibration_config("wanda" if method == "magnitude" else method, sparsity=0.6)
        if method == "magnitude":
            ms = policy.build_masks(ts, {t.name: tf.abs(t.variable) for t in ts}, "element", cfg)
            kernels.apply_masks([t.variable for t in ts], [ms.masks[t.name] for t in ts])
        else:
            res = prune_calibrated(model, ts, [x[:256], x[256:]], cfg)
            assert np.mean(~np.asarray(res.masks["fc/kernel"])) == pytest.approx(0.6, abs=1 / (64 * 24))
            entry = res.section["layers"]["fc/kernel"]
            assert entry["error_after"] <= entry["error_before"] + 1e-6
        kernel = np.asarray(ts[0].variable)
        assert np.mean(kernel == 0) == pytest.approx(0.6, abs=1 / (64 * 24))
        errors[method] = _output_error(model, dense_out, x)
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"]
    assert errors["sparsegpt"] < 0.7 * errors["magnitude"]


@pytest.mark.slow  # ~2 s: two calibrated runs and the refinement's tracing
def test_dsnot_keeps_each_outputs_count_and_lowers_wandas_error():
    """--refine dsnot after Wanda: every output prunes as many weights as plain Wanda's mask, and the
    layer's measured output error on the calibration inputs falls; on Wanda's 2:4 mask of the same
    layer every group still keeps 2 of 4 and the error falls too. The inputs have per-feature means
    (as activations after a norm or a GELU do), which Wanda's norms ignore and DSnoT's expected error
    reads."""
    import tensorflow as tf

    from prunecli.calibration import dsnot, prune_calibrated, wanda
    from prunecli.selection import kernels
    from prunecli.structure.targets import nm_groups

    rng = np.random.default_rng(2)
    x = (_correlated(384, 64) + 3.0 * rng.normal(size=64)).astype("float32")
    errors, pruned = {}, {}
    for refine in ("none", "dsnot"):
        model = _dense_model(64, 24)
        dense_out = np.asarray(model(x))
        config = calibration_config("wanda", refine=refine, sparsity=0.7)
        res = prune_calibrated(model, every_target(model), [x[:192], x[192:]], config)
        keep = np.asarray(res.masks["fc/kernel"])
        assert (np.asarray(model.get_layer("fc").kernel)[~keep] == 0).all()
        pruned[refine] = (~keep).sum(axis=0)
        errors[refine] = _output_error(model, dense_out, x)
    assert res.section["layers"]["fc/kernel"]["dsnot_swaps"] > 0 and res.section["refine"] == "dsnot"
    np.testing.assert_array_equal(pruned["dsnot"], pruned["none"])
    assert errors["dsnot"] < errors["none"], errors

    w = np.asarray(_dense_model(64, 24).get_layer("fc").kernel)
    stats = type("Stats", (), {"rows": len(x), "total": x.sum(axis=0), "sumsq": np.square(x).sum(axis=0)})
    groups = nm_groups(64, 4)
    keep = kernels.nm_keep_mask(wanda.scores(w, stats.sumsq / len(x)), 2, groups)
    masked = tf.where(keep, w, 0.0)
    refined, refined_keep, swaps = dsnot.refine(w, masked, keep, dsnot.mean_variance(stats), groups)
    assert swaps > 0 and (np.asarray(refined_keep).reshape(16, 4, 24).sum(axis=1) == 2).all()
    assert (np.asarray(refined)[~np.asarray(refined_keep)] == 0).all()
    assert np.linalg.norm(x @ (w - np.asarray(refined))) < np.linalg.norm(x @ (w - np.asarray(masked)))


def _conv_model():
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="c1", activation="relu")(inp)
    h = keras.layers.Conv2D(8, 3, dilation_rate=2, padding="valid", name="c2", activation="relu")(h)
    h = keras.layers.Reshape((-1, 8))(h)
    h = keras.layers.Conv1D(12, 3, padding="causal", name="c3")(h)
    h = keras.layers.Flatten()(h)
    inner = keras.Sequential([keras.Input((h.shape[-1],)), keras.layers.Dense(10, name="inner_fc")], name="inner")
    return keras.Model(inp, inner(h))


def test_im2col_views_match_the_layers():
    """X @ W (+ bias) from the captured view reproduces every layer's output: the views are right."""
    import keras
    import tensorflow as tf

    from prunecli.calibration import capture, views

    model = _conv_model()
    x = np.random.default_rng(0).normal(size=(3, 12, 12, 3)).astype("float32")
    for t in every_target(model):
        view = views.view_of(t)
        assert not isinstance(view, str), view
        seen = []
        with capture._Wrapped(t.layer, seen.append):
            model(x)
        out = t.layer.call(seen[0])
        got = tf.matmul(view.inputs(seen[0]), view.to_matrix(t.variable)) + t.layer.bias
        if t.layer.activation is not keras.activations.linear:
            got = tf.nn.relu(got)
        np.testing.assert_allclose(got, tf.reshape(out, (-1, t.units)), atol=1e-4)

    # attention projections: EinsumDense kernels of MultiHeadAttention
    mha = keras.layers.MultiHeadAttention(num_heads=2, key_dim=4)
    seq = np.random.default_rng(1).normal(size=(2, 5, 6)).astype("float32")
    mha(seq, seq)
    for layer in (mha._query_dense, mha._output_dense):
        from prunecli.structure.targets import Target

        t = Target("q/kernel", "q", "EinsumDense", "kernel", layer.kernel, len(layer.kernel.shape) - 1, layer)
        view = views.view_of(t)
        xin = seq if layer is mha._query_dense else np.random.default_rng(2).normal(size=(2, 5, 2, 4)).astype("float32")
        ref = tf.reshape(layer(xin) - (layer.bias if layer.bias is not None else 0), (-1, view.d_out))
        got = tf.matmul(view.inputs(xin), view.to_matrix(layer.kernel))
        np.testing.assert_allclose(got, ref, atol=1e-4)
        np.testing.assert_array_equal(view.from_matrix(view.to_matrix(layer.kernel)), layer.kernel)


@pytest.mark.parametrize(
    ("shape", "ks", "st", "dil"),
    [
        ((17, 1, 3), (5, 1), (1, 1), (4, 1)),
        ((13, 11, 4), (3, 3), (2, 1), (1, 2)),
        ((9, 9, 2), (2, 3), (3, 2), (2, 1)),
        ((7, 6, 5, 3), (3, 2, 3), (2, 1, 2), (1, 1, 1)),
    ],
)
def test_strided_patches_equal_tensorflows(shape, ks, st, dil):
    """The im2col rows cut by strided slices are extract_patches' (a volume's: extract_volume_patches')
    rows, in the kernel's (taps, C) order."""
    import tensorflow as tf

    from prunecli.calibration.views import _patches

    x = tf.constant(np.random.default_rng(0).normal(size=(2, *shape)).astype("float32"))
    if len(ks) == 3:
        want = tf.extract_volume_patches(x, [1, *ks, 1], [1, *st, 1], "VALID")
    else:
        want = tf.image.extract_patches(x, [1, *ks, 1], [1, *st, 1], [1, *dil, 1], "VALID")
    np.testing.assert_array_equal(_patches(x, list(ks), list(st), list(dil)), want)


@pytest.mark.parametrize(
    "layer_args",
    [
        ("Conv1D", dict(filters=4, kernel_size=5, dilation_rate=3, padding="same")),
        ("Conv1D", dict(filters=4, kernel_size=3, strides=2, padding="causal")),
        ("Conv2D", dict(filters=4, kernel_size=(3, 2), dilation_rate=(2, 2), padding="same")),
        ("Conv2D", dict(filters=4, kernel_size=3, strides=(2, 3), padding="valid")),
        ("Conv3D", dict(filters=4, kernel_size=(3, 2, 3), padding="same")),
        ("Conv3D", dict(filters=4, kernel_size=2, strides=(2, 1, 2), padding="valid")),
    ],
)
def test_diagonal_from_window_sums_equals_the_one_from_patches(layer_args):
    """A diagonal-only capture of a conv layer reads per-column statistics from window reductions of
    its input; they equal those accumulated from X's rows (Wanda's norms, the spread checks)."""
    import keras

    from prunecli.calibration import capture, views
    from prunecli.structure.targets import Target

    cls, kwargs = layer_args
    shape = {"Conv1D": (2, 30, 3), "Conv2D": (2, 9, 8, 3), "Conv3D": (2, 7, 6, 5, 3)}[cls]
    x = np.random.default_rng(4).normal(size=shape).astype("float32")
    if kwargs.get("padding") == "valid":
        x *= 1e6  # past SCALE_RANGE: both paths fix the same power-of-two scale
    layer = getattr(keras.layers, cls)(**kwargs)
    model = keras.Sequential([keras.Input(shape[1:]), layer])
    view = views.view_of(Target("c/kernel", "c", cls, "kernel", layer.kernel, len(layer.kernel.shape) - 1, layer))
    assert view.column_statistics

    def stats(by_columns: bool):
        cap = capture.HessianCapture(view, calls_per_pass=1, full=False)
        if not by_columns:  # the rows of X, as every other view is read
            view_type = type(view)
            original = view_type.column_statistics
            view_type.column_statistics = property(lambda self: False)
            try:
                return cap.run(model, [x, x[:1]])
            finally:
                view_type.column_statistics = original
        return cap.run(model, [x, x[:1]])

    rows, cols = stats(False), stats(True)
    assert cols.rows == rows.rows and cols.scale == rows.scale and cols.finite
    np.testing.assert_allclose(cols.sumsq, rows.sumsq, rtol=1e-5)
    np.testing.assert_allclose(cols.norms(), rows.norms(), rtol=1e-5)
    assert cols.spread == pytest.approx(rows.spread) and cols.largest == pytest.approx(rows.largest)


@pytest.mark.parametrize("padding", ["same", "causal", "valid"])
def test_dilated_strided_conv1d_views_match_the_layer(padding):
    """X @ W reproduces a dilated Conv1D (SpliceAI's shape of layer) and a strided one."""
    import keras
    import tensorflow as tf

    from prunecli.calibration import views
    from prunecli.structure.targets import Target

    x = np.random.default_rng(3).normal(size=(2, 40, 3)).astype("float32")
    for strides, dilation in ((1, 4), (3, 1)):
        layer = keras.layers.Conv1D(5, 4, strides=strides, dilation_rate=dilation, padding=padding, use_bias=False)
        out = layer(x)
        view = views.view_of(Target("c/kernel", "c", "Conv1D", "kernel", layer.kernel, 2, layer))
        got = tf.matmul(view.inputs(x), view.to_matrix(layer.kernel))
        np.testing.assert_allclose(got, tf.reshape(out, (-1, 5)), atol=1e-5)


@pytest.mark.parametrize(
    "method, refine",
    [
        # 1.2-1.8 s: Wanda's own N:M conv masks are checked fast in
        # test_nm_taps.test_calibrated_methods_keep_groups_inside_one_tap[*-wanda]
        pytest.param("wanda", "none", marks=pytest.mark.slow),
        ("sparsegpt", "dsnot"),  # the fast subset's only check of DSnoT's swaps (2-4 s)
    ],
)
def test_nm_masks_are_valid(method, refine):
    """N:M masks of convolutions (a tap's channels in groups, c1's short ones) stay N:M through
    --refine dsnot's swaps too."""
    from prunecli.calibration import prune_calibrated

    model = _conv_model()
    x = np.random.default_rng(0).normal(size=(16, 12, 12, 3)).astype("float32")
    ts = every_target(model)
    res = prune_calibrated(model, ts, [x], calibration_config(method, granularity="2:4", refine=refine))
    assert res.section["refine"] == refine
    for t in ts:  # groups along the channels of one tap (c1: 3 channels, one short group per tap)
        keep = np.moveaxis(np.asarray(res.masks[t.name]), -1, 0)  # (units, *taps, channels)
        channels = keep.shape[-1]
        for start in range(0, channels, 4):
            assert (keep[..., start : start + 4].sum(axis=-1) == min(2, channels - start)).all(), t.name
        kernel = np.asarray(t.variable)
        assert (kernel[~np.asarray(res.masks[t.name])] == 0).all()  # masked weights are exactly 0
        assert res.requested[t.name] == pytest.approx(1 / 3 if t.name == "c1/kernel" else 0.5)


def test_deterministic_and_seeded():
    from prunecli.calibration import prune_calibrated, take_examples
    from prunecli.io import data as data_mod

    runs = []
    for _ in range(2):
        import keras

        model = keras.models.load_model(EXAMPLE)
        data = data_mod.load(DATA, model, 64, 0.0, 7)
        cal = take_examples(data.train, 100)
        assert sum(len(b) for b in cal) == 100
        res = prune_calibrated(
            model, every_target(model), cal, calibration_config(sparsity=0.5, calibration_samples=100)
        )
        runs.append(([np.asarray(v) for v in model.weights], {k: np.asarray(m) for k, m in res.masks.items()}))
    for a, b in zip(runs[0][0], runs[1][0], strict=True):
        np.testing.assert_array_equal(a, b)
    for name in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][name], runs[1][1][name])


def test_sequential_and_one_hessian_at_a_time():
    """Layers are calibrated in call order, each from the model pruned so far, with one Hessian alive."""
    from prunecli.calibration import capture, prune_calibrated

    model = _conv_model()
    ts = every_target(model)
    x = np.random.default_rng(0).normal(size=(40, 12, 12, 3)).astype("float32")
    order, zeros_before = [], []

    def progress(message):
        name = message.split()[1]
        order.append(name)
        zeros_before.append([float(np.mean(np.asarray(t.variable) == 0)) for t in ts])

    capture.HessianCapture.max_live = 0
    capture.HessianCapture.peak_floats = 0
    res = prune_calibrated(model, ts, [x], calibration_config(sparsity=0.5, scope="layer"), progress)
    assert order == ["c1", "c2", "c3", "inner/inner_fc"]
    for i, fractions in enumerate(zeros_before):  # earlier layers already pruned, later ones not yet
        assert all(f == pytest.approx(0.5, abs=0.01) for f in fractions[:i])
        assert all(f == 0 for f in fractions[i:])
    assert capture.HessianCapture.max_live == 1
    assert capture.HessianCapture.peak_floats == max(t.rows for t in ts) ** 2
    assert all(entry["rows"] > 0 for entry in res.section["layers"].values())
    assert res.section["samples"] == 40 and res.section["sequential"]


def test_uncalibratable_layers_fall_back_to_magnitude():
    import keras

    from prunecli.calibration import prune_calibrated

    keras.utils.set_random_seed(0)
    inp = keras.Input((10,), dtype="int32")
    h = keras.layers.Embedding(50, 8, name="emb")(inp)
    h = keras.layers.Reshape((10, 8, 1))(h)
    h = keras.layers.Conv2D(4, 3, name="conv")(h)
    h = keras.layers.DepthwiseConv2D(3, name="dw")(h)
    h = keras.layers.Conv2DTranspose(2, 2, name="up")(h)
    h = keras.layers.ConvLSTM1D(2, 2, name="rec")(h)
    out = keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).integers(0, 50, size=(24, 10)).astype("int32")
    ts = every_target(model)
    res = prune_calibrated(model, ts, [x], calibration_config(sparsity=0.5))
    fallback = {t.name for t in ts if t.layer_class == "ConvLSTMCell"}  # the convolutional LSTM's kernels
    assert fallback and set(res.section["fallback"]) == fallback
    # depthwise per channel, the embedding by token counts, the transposed conv as the stride-1 conv it is
    assert set(res.section["layers"]) == {"emb/embeddings", "conv/kernel", "dw/kernel", "up/kernel", "fc/kernel"}
    assert any("rec/conv_lstm_cell: not calibrated" in n and "magnitude" in n for n in res.notes), res.notes
    for t in ts:
        assert np.mean(np.asarray(t.variable) == 0) == pytest.approx(0.5, abs=0.02), t.name


def test_reconstruct_refits_any_mask():
    import tensorflow as tf

    from prunecli.calibration import reconstruct
    from prunecli.selection import policy

    x = _correlated(256, 32, seed=3)
    model = _dense_model(32, 8)
    dense_out = np.asarray(model(x))
    ts = every_target(model)
    ms = policy.build_masks(ts, {t.name: tf.abs(t.variable) for t in ts}, "element", calibration_config(sparsity=0.7))
    masked = np.asarray(ts[0].variable) * np.asarray(ms.masks["fc/kernel"])
    section = reconstruct(model, ts, ms.masks, [x])
    entry = section["layers"]["fc/kernel"]
    assert entry["error_after"] < 0.8 * entry["error_before"]
    kernel = np.asarray(ts[0].variable)
    assert (kernel[~np.asarray(ms.masks["fc/kernel"])] == 0).all()
    assert not np.allclose(kernel, masked)  # survivors moved
    y = x @ kernel + np.asarray(model.get_layer("fc").bias)
    assert np.linalg.norm(y - dense_out) / np.linalg.norm(dense_out) == pytest.approx(entry["error_after"], rel=0.05)


def test_not_positive_definite_is_one_line_error():
    from prunecli.calibration import sparsegpt

    bad = np.full((4, 4), np.nan, "float32")
    with pytest.raises(DataError, match="not positive definite"):
        sparsegpt.inverse_factor(bad, "fc/kernel")
    indefinite = np.array([[1.0, 3.0], [3.0, 1.0]], "float32")  # eigenvalues 4 and -2: even 100% cannot fix it
    with pytest.raises(DataError, match="fc/kernel"):
        sparsegpt.inverse_factor(indefinite, "fc/kernel")


@pytest.mark.slow
def test_example_model_sparsegpt_keeps_accuracy():
    """On the bundled example, one-shot SparseGPT at 2:4 loses at most a third of magnitude's loss."""
    import keras
    import tensorflow as tf

    from prunecli.calibration import prune_calibrated, take_examples
    from prunecli.io import data as data_mod
    from prunecli.selection import kernels, policy

    arrays = np.load(DATA)
    xt, yt = arrays["x_test"], arrays["y_test"]

    def accuracy(model):
        return float(np.mean(np.argmax(np.asarray(model(xt)), -1) == yt))

    model = keras.models.load_model(EXAMPLE)
    dense = accuracy(model)
    cfg = calibration_config(granularity="2:4")
    ts = every_target(model, exclude=("predictions",))
    ms = policy.build_masks(ts, {t.name: tf.abs(t.variable) for t in ts}, "element", cfg)
    kernels.apply_masks([t.variable for t in ts], [ms.masks[t.name] for t in ts])
    magnitude_loss = dense - accuracy(model)
    model = keras.models.load_model(EXAMPLE)
    cal = take_examples(data_mod.load(DATA, model, 64, 0.0, 0).train, 128)
    prune_calibrated(model, every_target(model, exclude=("predictions",)), cal, cfg)
    assert dense - accuracy(model) <= max(magnitude_loss / 3, 0.003)


def _pipeline_wired() -> bool:
    from pathlib import Path

    run = Path(__file__).resolve().parent.parent / "prunecli" / "run"
    return any("prune_calibrated" in p.read_text(encoding="utf-8") for p in run.glob("*.py"))


@pytest.mark.slow
@pytest.mark.skipif(not _pipeline_wired(), reason="prunecli/run does not call prune_calibrated yet")
def test_cli_sparsegpt_end_to_end(tmp_path):
    import json

    from click.testing import CliRunner

    from prunecli.cli import main

    report = tmp_path / "r.json"
    args = ["prune", EXAMPLE, "--method", "sparsegpt", "--data", DATA, "-s", "0.5", "-o", str(tmp_path / "m.keras")]
    result = CliRunner().invoke(main, [*args, "--report", str(report), "--reconstruct", "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    section = data["calibration"]
    assert section["method"] == "sparsegpt" and section["samples"] == 128
    assert all(e["error_after"] <= e["error_before"] + 1e-6 for e in section["layers"].values())
    assert data["metrics"]["after_pruning"]["accuracy"] > 0.9


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_global_scope_gives_each_layer_its_share_of_one_budget(method):
    """--scope global: the run's LAMP ranking of Wanda scores decides each layer's count on the dense
    model; the layers then lose different shares, exactly the budget in all, and each layer is still
    calibrated in call order within its share."""
    from prunecli.calibration import oneshot, prune_calibrated
    from prunecli.selection import policy

    model = _conv_model()
    ts = every_target(model)
    x = np.random.default_rng(0).normal(size=(40, 12, 12, 3)).astype("float32")
    config = calibration_config(method, sparsity=0.7, scope="global")
    assert config.normalize == "lamp"
    plan = oneshot._plan(model, ts, [x], [], {})
    scores = oneshot.layer_scores("wanda", plan, model)
    want = policy.layer_counts(ts, lambda: ((t, scores[t.name]) for t in ts), "element", config)
    order = []
    res = prune_calibrated(model, ts, [x], config, lambda m: order.append(m.split()[1]))
    assert order[-4:] == ["c1", "c2", "c3", "inner/inner_fc"]
    pruned = {t.name: int(np.sum(np.asarray(t.variable) == 0)) for t in ts}
    assert pruned == {name: k for name, (k, _held) in want.items()}
    assert sum(pruned.values()) == round(0.7 * sum(t.size for t in ts))
    assert len(set(round(pruned[t.name] / t.size, 2) for t in ts)) > 1  # not one sparsity for all
    assert res.section["allocation"].startswith("global (lamp")


def _sparsegpt_reference(w, h, prune_count, block):
    """SparseGPT (Algorithm 1 of the paper) straight from the maths, in float64: U the upper Cholesky
    factor of (H + 1% mean(diag H) I)^-1 from numpy, each block's mask the lowest w^2 / U_jj^2 of its
    share of the count (ties by position), then column by column q_j = w_j where kept, else 0, and
    w_{j:} -= (w_j - q_j) / U_jj U_{j, j:} on every later column at once."""
    d_in, d_out = w.shape
    hd = h.astype(np.float64) + 0.01 * np.mean(np.diag(h)) * np.eye(d_in)
    u = np.linalg.cholesky(np.linalg.inv(hd)).T
    wt, keep, done = w.T.astype(np.float64), np.ones((d_out, d_in), bool), 0
    for start in range(0, d_in, block):
        end = min(start + block, d_in)
        share = round(prune_count * end * d_out / (d_in * d_out)) - done
        score = (wt[:, start:end] ** 2 / np.diag(u)[start:end] ** 2).reshape(-1)
        pruned = np.zeros(score.size, bool)
        pruned[np.argsort(score, kind="stable")[:share]] = True
        keep[:, start:end] = ~pruned.reshape(d_out, end - start)
        done += share
        for j in range(start, end):
            err = (wt[:, j] - np.where(keep[:, j], wt[:, j], 0.0)) / u[j, j]
            wt[:, j:] -= err[:, None] * u[j, j:][None, :]
    return np.where(keep, wt, 0.0).T, keep.T


def test_sparsegpt_is_the_papers_maths():
    """prune_matrix (float32, U solved for a block of rows at a time, lazy batches) gives the masks of
    the float64 algorithm written out in full, and its weights to float32 rounding, over two blocks."""
    from prunecli.calibration import sparsegpt

    rng = np.random.default_rng(4)
    d_in, d_out = sparsegpt.BLOCK + 40, 6
    x = (rng.normal(size=(4 * d_in, d_in)) * rng.uniform(0.5, 2.0, d_in)).astype("float32")
    h = x.T @ x / len(x)
    w = rng.normal(size=(d_in, d_out)).astype("float32")
    k = int(0.6 * w.size)
    q, keep, used = sparsegpt.prune_matrix(w, h, "fc/kernel", prune_count=k)
    want_q, want_keep = _sparsegpt_reference(w, h, k, sparsegpt.BLOCK)
    assert used == sparsegpt.DAMPENING and int((~np.asarray(keep)).sum()) == k
    np.testing.assert_array_equal(np.asarray(keep), want_keep)
    np.testing.assert_allclose(np.asarray(q), want_q, rtol=1e-4, atol=1e-5 * np.abs(want_q).max())


def test_dampening_rises_where_float32_cannot_factor_the_hessian():
    """A Hessian that 1% dampening leaves indefinite in float32 is factored at 10% (or 100%), and the
    dampening used is returned; a NaN Hessian is still refused."""
    from prunecli.calibration import sparsegpt

    nearly = np.array([[1.0, 1.05], [1.05, 1.0]], "float32")  # eigenvalues 2.05 and -0.05: 1% is too little
    factor = sparsegpt.inverse_factor(nearly, "fc/kernel")
    assert factor.dampening == pytest.approx(10 * sparsegpt.DAMPENING)
    upper, damped = np.asarray(factor.rows(0, 2)), nearly + factor.dampening * np.eye(2, dtype="float32")
    np.testing.assert_allclose(upper.T @ upper @ damped, np.eye(2), atol=1e-4)
    w, keep, used = sparsegpt.prune_matrix(np.ones((2, 3), "float32"), nearly, "fc/kernel", prune_count=3)
    assert used == pytest.approx(0.1) and int((~np.asarray(keep)).sum()) == 3


def test_a_convolutions_hessian_from_sampled_rows_estimates_the_full_one(monkeypatch):
    """A full capture of a convolution with more rows than the cap accumulates an even random share of
    them: the Hessian (a mean) and the input norms (scaled back) estimate the full capture's, the share
    is recorded, a second run samples the same rows, and only the sampled rows' windows are cut; a
    Dense layer's rows are never sampled."""
    import keras

    from prunecli.calibration import capture, views
    from prunecli.structure.targets import Target

    keras.utils.set_random_seed(0)
    x = np.random.default_rng(5).normal(size=(6, 40, 40, 3)).astype("float32")
    x += np.linspace(0, 2, 3, dtype="float32")  # inputs with different means: H is not a multiple of I
    conv = keras.layers.Conv2D(4, 3, padding="same")
    model = keras.Sequential([keras.Input(x.shape[1:]), conv])
    view = views.view_of(Target("c/kernel", "c", "Conv2D", "kernel", conv.kernel, 3, conv))

    def capture_with(cap_rows: int):
        monkeypatch.setattr(capture, "HESSIAN_ROWS", cap_rows)
        monkeypatch.setattr(capture, "HESSIAN_ROWS_PER_INPUT", 1)
        return capture.HessianCapture(view, calls_per_pass=1).run(model, [x[:3], x[3:]])

    full, sampled, again = capture_with(10**9), capture_with(2000), capture_with(2000)
    assert full.row_fraction == 1.0 and full.rows == 6 * 40 * 40
    assert sampled.row_fraction == pytest.approx(2000 / 9600) and abs(sampled.rows - 2000) <= 4
    error = np.linalg.norm(sampled.hessian - full.hessian) / np.linalg.norm(full.hessian)
    assert error < 0.05
    np.testing.assert_allclose(sampled.norms(), full.norms(), rtol=0.05)
    np.testing.assert_array_equal(sampled.hessian, again.hessian)
    # only the sampled rows' windows are cut (views._patch_rows), the same rows as cutting all of them
    part, ks, st, dil = x[:2, :9, :11], (3, 2), (2, 1), (1, 2)
    every = views._patches(part, ks, st, dil).reshape(-1, 3 * 2 * 3)
    kept = np.sort(np.random.default_rng(8).choice(len(every), size=len(every) // 3, replace=False))
    np.testing.assert_array_equal(views._patch_rows(part, ks, st, dil, lambda n: kept), every[kept])

    dense = keras.layers.Dense(4)
    flat = keras.Sequential([keras.Input((27,)), dense])
    dense_view = views.view_of(Target("d/kernel", "d", "Dense", "kernel", dense.kernel, 1, dense))
    monkeypatch.setattr(capture, "HESSIAN_ROWS", 10)
    rows = np.random.default_rng(6).normal(size=(500, 27)).astype("float32")
    stats = capture.HessianCapture(dense_view, calls_per_pass=1).run(flat, [rows])
    assert stats.row_fraction == 1.0 and stats.rows == 500
