"""Quantisation-aware fine-tuning with the masks held (`--quantize int8|int4 --qat on`).

The fake quantisation must compute what Keras' quantized layers compute after `Model.quantize`; pruned
weights must be exactly 0 after QAT and after quantisation, N:M groups included; on a model where
rounding to nearest is provably bad, QAT must find a better quantized model than post-training
quantisation; a mode the model cannot take is a one-line error.
"""

from __future__ import annotations

import numpy as np
import pytest

from prunecli import build_config, prune
from prunecli.config.fields import QAT_BY_DEFAULT
from prunecli.errors import ConfigError
from prunecli.structure.quantized_conv import one_collection


def _dequantized(layer) -> np.ndarray:
    """A quantized Dense kernel read back from its stored codes, scales and zero points."""
    codes = np.asarray(layer.kernel).astype(np.int32)
    scale = np.asarray(layer.kernel_scale, dtype=np.float64)
    if hasattr(layer, "kernel_zero"):  # grouped int4: (q - z[g]) * s[g]
        groups = np.asarray(layer.g_idx).astype(int)
        return (codes - np.asarray(layer.kernel_zero).astype(np.int32)[groups]) * scale[groups]
    return codes / scale


# ------------------------------------------------------------------ the fake quantisation itself


def test_int8_fake_quantisation_computes_what_keras_quantized_layers_compute():
    import keras

    from prunecli.training import fake_quant

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((40,)),
            keras.layers.Dense(24, activation="relu", name="dense"),
            keras.layers.EinsumDense("ab,bc->ac", output_shape=6, bias_axes="c", name="einsum"),
        ]
    )
    kernel = np.asarray(model.get_layer("dense").kernel)
    kernel[np.abs(kernel) < 0.1] = 0.0  # pruned
    model.get_layer("dense").kernel.assign(kernel)
    x = np.random.default_rng(0).standard_normal((32, 40)).astype("float32")
    fake = fake_quant.FakeQuant(fake_quant.quantizable_layers(model, "int8"), "int8")
    assert [layer.name for layer in fake.layers] == ["dense", "einsum"]
    with fake.active():
        faked = np.asarray(model(x))
    assert "call" not in vars(model.get_layer("dense"))  # the layer's own call is back
    floating = np.asarray(model(x))
    with one_collection():  # Keras collects garbage per deleted kernel otherwise
        model.quantize("int8")
    quantized = np.asarray(model(x))
    assert np.abs(floating - quantized).max() > 1e-3  # quantisation does change the outputs...
    np.testing.assert_allclose(faked, quantized, atol=1e-5)  # ...exactly as the fake quantisation did


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_fake_quantised_convolutions_compute_what_the_quantized_convolutions_compute(mode):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            keras.layers.Conv2D(5, 3, activation="relu", name="conv2d"),
            keras.layers.Reshape((64, 5)),
            keras.layers.Conv1D(4, 2, padding="causal", dilation_rate=2, name="conv1d"),
        ]
    )
    _fake_equals_quantized(model, ["conv2d", "conv1d"], mode)


def _fake_equals_quantized(model, names, mode):
    """The model's quantizable layers (`names`, in order) under QAT's fake quantisation for `mode`
    compute what the quantized layers they become compute, and that differs from the float model."""
    from prunecli.structure import quantized_conv
    from prunecli.training import fake_quant

    x = np.random.default_rng(0).standard_normal((8, *model.inputs[0].shape[1:])).astype("float32")
    fake = fake_quant.FakeQuant(fake_quant.quantizable_layers(model, mode), mode)
    assert [layer.name for layer in fake.layers] == names
    with fake.active():
        faked = np.asarray(model(x))
    floating = np.asarray(model(x))
    for layer in fake.layers:
        quantized_conv.make_quantizable(layer)
    with one_collection():  # Keras collects garbage per deleted kernel otherwise
        model.quantize(mode)
    quantized = np.asarray(model(x))
    assert np.abs(floating - quantized).max() > 1e-4
    np.testing.assert_allclose(faked, quantized, atol=1e-5)


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_fake_quantised_depthwise_separable_and_transposed_convolutions_compute_what_the_quantized_layers_compute(
    mode,
):
    """DepthwiseConv1D/2D, SeparableConv1D/2D and Conv1DTranspose: each kernel on its grid (a depthwise
    kernel per output channel over its window, a transposed one per filter on axis -2), the same outputs
    as the int8 or int4 layers they become."""
    import keras

    keras.utils.set_random_seed(4)
    model = keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dw2"),
            keras.layers.SeparableConv2D(5, 3, depth_multiplier=2, padding="same", name="sep2"),
            keras.layers.Reshape((64, 5)),
            keras.layers.SeparableConv1D(4, 3, dilation_rate=2, name="sep1"),
            keras.layers.DepthwiseConv1D(2, strides=2, use_bias=False, name="dw1"),
            keras.layers.Conv1DTranspose(3, 3, strides=2, activation="relu", name="t1"),
        ]
    )
    _fake_equals_quantized(model, ["dw2", "sep2", "sep1", "dw1", "t1"], mode)


def test_int4_fake_weights_are_keras_int4_weights_inside_a_compiled_function():
    import keras
    import tensorflow as tf

    from prunecli.training import fake_quant

    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((300, 10)).astype("float32")  # 3 groups of 128 rows, the last padded
    kernel[np.abs(kernel) < 0.5] = 0.0
    kernel[128:256, 4] = 0.0  # a fully pruned group
    layer = keras.layers.Dense(10)
    layer.build((None, 300))
    layer.kernel.assign(kernel)
    faked = np.asarray(tf.function(fake_quant.int4_weights)(layer.kernel))
    with one_collection():  # Keras collects garbage per deleted kernel otherwise
        layer.quantize("int4")
    np.testing.assert_allclose(faked, _dequantized(layer), atol=1e-6)
    assert np.count_nonzero(faked[kernel == 0]) == 0


def test_straight_through_gradient_is_the_identity():
    import tensorflow as tf

    from prunecli.training import fake_quant

    w = tf.Variable(np.linspace(-1, 1, 12, dtype="float32").reshape(4, 3))
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(3.0 * fake_quant.straight_through(w, fake_quant.channel_weights(w, (0,))))
    np.testing.assert_array_equal(tape.gradient(out, w), np.full((4, 3), 3.0, "float32"))


# ------------------------------------------------------------------ through prune(): masks and zeros


@pytest.mark.parametrize("mode", ["int8", pytest.param("int4", marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "amount", [{"sparsity": 0.7}, pytest.param({"granularity": "n:m=2:4"}, marks=pytest.mark.slow)], ids=["70%", "2:4"]
)
def test_qat_holds_the_masks_through_training_and_quantisation(mlp_files, tmp_path, monkeypatch, mode, amount):
    """QAT on: the float weights handed to Model.quantize are exactly 0 where the masks prune (the
    compiled step re-masks after every update), the quantized codes still read back as 0, and 2:4
    groups along the input axis keep at least 2 zeros in the saved quantized layers."""
    import keras

    from prunecli.outputs import quantize

    before_quantize = {}
    real = quantize._quantize

    def recording(model, mode_, chosen):
        before_quantize.update({layer.name: np.asarray(layer.kernel).copy() for layer in chosen})
        return real(model, mode_, chosen)

    monkeypatch.setattr(quantize, "_quantize", recording)
    out = tmp_path / "qat.keras"
    settings = {
        "model_path": str(mlp_files["keras"]),
        "data": str(mlp_files["data"]),
        "epochs": 2,
        "quantize": mode,
        "qat": "on",
        "output": str(out),
        "quiet": True,
        **amount,
    }
    result = prune(build_config(settings))
    report = result.report.extra
    assert report["finetune"]["qat"]["mode"] == mode
    assert report["finetune"]["qat"]["layers"] == ["hidden1", "hidden2", "out"]
    assert report["quantize"]["after_qat"] is True
    assert report["quantize"]["zeros"]["pruned_nonzero"] == 0

    saved = keras.saving.load_model(out)
    for name in ("hidden1", "hidden2", "out"):
        pruned = ~np.asarray(result.masks.masks[f"{name}/kernel"], dtype=bool)
        assert pruned.sum() > 0
        assert np.count_nonzero(before_quantize[name][pruned]) == 0, f"{name}: QAT moved a pruned weight"
        weights = _dequantized(saved.get_layer(name))
        assert np.count_nonzero(weights[pruned]) == 0, f"{name}: a pruned weight is non-zero after quantize"
        if "granularity" in amount:  # 2:4 along the input (reduction) axis: >= 2 zeros in every group of 4
            rows = weights.shape[0] - weights.shape[0] % 4
            groups = weights[:rows].reshape(rows // 4, 4, -1)
            assert ((groups == 0).sum(axis=1) >= 2).all(), f"{name}: a 2:4 group lost a zero"


def test_qat_default_follows_the_measurement(mlp_files, tmp_path):
    """--quantize int8 --epochs N without --qat: QAT only where bench/QUANT.md found it ahead."""
    config = build_config(
        {
            "model_path": str(mlp_files["keras"]),
            "data": str(mlp_files["data"]),
            "epochs": 1,
            "quantize": "int8",
            "output": str(tmp_path / "o.keras"),
            "quiet": True,
        }
    )
    assert config.qat == "auto" and config.qat_active is QAT_BY_DEFAULT["int8"]
    result = prune(config)
    assert result.report.extra["quantize"]["after_qat"] is QAT_BY_DEFAULT["int8"]
    assert (result.report.extra["finetune"]["qat"] is not None) is QAT_BY_DEFAULT["int8"]


def test_qat_beats_post_training_quantisation_where_rounding_to_nearest_is_bad(tmp_path):
    """Sixteen inputs carry the same signal and every weight on it rounds down on the int8 grid (step
    1.0, set by a dead input's weight of 127): rounding to nearest adds their errors up (PTQ), while
    QAT sees the quantized model's error and rounds some of them up instead."""
    import keras

    rng = np.random.default_rng(0)
    n, copies = 1024, 16
    z = rng.standard_normal((n, 1))
    x = np.concatenate([np.zeros((n, 1)), np.repeat(z, copies, axis=1), rng.standard_normal((n, 3))], axis=1)
    x = x.astype("float32")
    w = np.zeros((x.shape[1], 1), "float32")
    w[0] = 127.0
    w[1 : 1 + copies, 0] = rng.integers(1, 3, copies) + np.linspace(0.03, 0.47, copies)
    y = x @ w
    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1, use_bias=False, name="lin")])
    model.get_layer("lin").kernel.assign(w)
    model.compile(keras.optimizers.Adam(0.02), "mse")
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x_train=x[:768], y_train=y[:768], x_test=x[768:], y_test=y[768:])
    losses = {}
    for qat in ("off", "on"):
        settings = {
            "model_path": str(tmp_path / "m.keras"),
            "data": str(tmp_path / "d.npz"),
            "sparsity": 0.15,  # the three noise inputs (weight 0): the same masks for both
            "schedule": "oneshot",
            "epochs": 3,
            "quantize": "int8",
            "qat": qat,
            "output": str(tmp_path / f"{qat}.keras"),
            "quiet": True,
        }
        section = prune(build_config(settings)).report.extra["quantize"]
        assert section["zeros"]["pruned_nonzero"] == 0
        losses[qat] = section["metrics"]["quantized"]["loss"]
    assert losses["off"] > 5.0  # sum of 16 round-downs: ~4 grid steps of error
    assert losses["on"] < 0.1 * losses["off"], losses


# ------------------------------------------------------------------ what cannot be done: one line, an exit code


@pytest.mark.parametrize(
    "args, message",
    [
        (["--qat", "on", "--epochs", "1"], "--qat on fine-tunes through quantisation: give --quantize"),
        (["--qat", "on", "--quantize", "float8", "--epochs", "1"], "no quantisation-aware fine-tuning for"),
        (["--qat", "on", "--quantize", "int8"], "--qat on needs fine-tuning: give --epochs N"),
        (["--qat", "sometimes", "--quantize", "int8"], "sometimes"),
    ],
)
def test_qat_combinations_fail_in_one_line_before_any_work(cli, tmp_path, args, message):
    """The model does not exist: exit 2 (not 3) shows the combination was refused before loading it."""
    result = cli("prune", tmp_path / "missing.keras", "--data", tmp_path / "d.npz", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_a_model_qat_cannot_take_is_a_one_line_error_and_nothing_is_saved(cli, tmp_path):
    """int4 QAT covers Dense only: a model whose only quantizable layer is an EinsumDense is refused
    before any training, in one line, exit 2."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((12,)), keras.layers.EinsumDense("ab,bc->ac", output_shape=3, bias_axes="c", name="einsum")]
    )
    model.compile("adam", "mse")
    model.save(tmp_path / "einsum.keras")
    x = np.random.default_rng(0).standard_normal((64, 12)).astype("float32")
    np.savez(tmp_path / "d.npz", x=x, y=x[:, :3])
    out = tmp_path / "out.keras"
    args = ("prune", tmp_path / "einsum.keras", "-d", tmp_path / "d.npz", "--epochs", "1", "-o", out, "-q")
    result = cli(*args, "--quantize", "int4", "--qat", "on")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().count("\n") == 0
    assert "--qat with --quantize int4: no layer of this model takes it" in result.stderr
    assert not out.exists()
    assert cli(*args, "--quantize", "int8", "--qat", "on").exit_code == 0  # int8 QAT takes EinsumDense
    assert out.exists()


def test_config_qat_without_the_cli():
    base = {"model_path": "m.keras", "data": "d.npz", "epochs": 1}
    assert build_config({**base, "quantize": "int8", "qat": "on"}).qat_active is True
    assert build_config({**base, "quantize": "int4", "qat": "off"}).qat_active is False
    assert build_config({**base, "quantize": "float8"}).qat_active is False  # auto: no float8 QAT
    with pytest.raises(ConfigError, match="qat must be one of auto, on, off"):
        build_config({**base, "quantize": "int8", "qat": "yes"})


pytestmark = pytest.mark.slow  # whole module in the full suite only: the fast subset stays under 2 minutes
