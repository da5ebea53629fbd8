"""--quantize int8|int4|float8: Keras 3's own quantized layers, with every pruned weight still exactly 0.

The saved file is read back here independently of prunecli/outputs/quantize.py: each quantized kernel
(Dense; for int8 and int4 also prunecli's quantized convolutions) is dequantized from its stored codes, scales and zero
points, and its pruned positions (the run's masks) must be exactly 0.0.
"""

from __future__ import annotations

import numpy as np
import pytest

from prunecli import build_config, prune
from prunecli.errors import ConfigError
from prunecli.structure.quantized_conv import one_collection

# largest |quantized - float pruned| output over 256 inputs, relative to the largest float output
TOLERANCE = {"int8": 0.05, "int4": 0.3, "float8": 0.15}


@pytest.fixture(scope="module")
def conv_dense(tmp_path_factory):
    """Conv2D -> Dense(288 -> 32) -> Dense(4): the first Dense spans three int4 groups of 128 rows."""
    import keras

    d = tmp_path_factory.mktemp("quant")
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 8, 8, 1)).astype("float32")
    y = (x[:, :4, :4, 0].mean(axis=(1, 2)) > 0).astype("int32") + 2 * (x[:, 4:, 4:, 0].mean(axis=(1, 2)) > 0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(32, activation="relu", name="dense1"),
            keras.layers.Dense(4, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=3, verbose=0)
    model.save(d / "model.keras")
    np.savez(d / "data.npz", x_train=x[:384], y_train=y[:384], x_test=x[384:], y_test=y[384:])
    return d


def _dequantized_kernel(layer) -> np.ndarray:
    """A quantized Dense kernel as the float values its call computes with, from the stored variables."""
    mode = layer.quantization_mode
    if mode == "float8":
        from keras import quantizers

        return np.asarray(
            quantizers.quantize_and_dequantize(layer.kernel, layer.kernel_scale, "float8_e4m3fn", "float32")
        )
    stored = layer.kernel_codes if hasattr(layer, "kernel_codes") else layer.kernel  # QuantizedConv: .kernel is float
    codes = np.asarray(stored).astype(np.int32)  # int4: Keras unpacks the nibbles, shape (in, out)
    scale = np.asarray(layer.kernel_scale, dtype=np.float64)
    if hasattr(layer, "kernel_zero"):  # grouped int4: (q - z[g]) * s[g]
        groups = np.asarray(layer.g_idx).astype(int)
        return (codes - np.asarray(layer.kernel_zero).astype(np.int32)[groups]) * scale[groups]
    return codes / scale  # symmetric: q / s per output channel (the last axis)


@pytest.mark.slow
@pytest.mark.parametrize(  # every mode on element zeros; 2:4's zeros (the same codes path) with int8 only
    ("mode", "amount"),
    [
        pytest.param("int8", {"sparsity": 0.5}, id="50%-int8"),
        pytest.param("int4", {"sparsity": 0.5}, id="50%-int4"),
        pytest.param("float8", {"sparsity": 0.5}, id="50%-float8"),
        pytest.param("int8", {"granularity": "n:m=2:4"}, id="2:4-int8"),
    ],
)
def test_pruned_weights_stay_exactly_zero_after_quantization(conv_dense, tmp_path, mode, amount):
    import keras

    out = tmp_path / f"q-{mode}.keras"
    settings = {"model_path": str(conv_dense / "model.keras"), "data": str(conv_dense / "data.npz")}
    result = prune(build_config({**settings, **amount, "quantize": mode, "output": str(out), "quiet": True}))
    section = result.report.extra["quantize"]

    quantized = ["conv", "dense1", "out"] if mode != "float8" else ["dense1", "out"]  # convolutions: int8, int4
    assert [e["layer"] for e in section["layers_quantized"]] == quantized
    if mode != "float8":
        assert section["left_float"] == []
        assert any("quantized convolution layers" in note for note in result.report.notes)
    else:
        assert section["left_float"] == [{"layer": "conv", "class": "Conv2D", "why": section["left_float"][0]["why"]}]
        assert "int8 and int4 only" in section["left_float"][0]["why"]
    zeros = section["zeros"]
    assert zeros["pruned_nonzero"] == 0
    assert zeros["kept_zero"] == zeros["pruned_weights"] > 0

    # the saved file, read back without prunecli: every pruned weight dequantizes to exactly 0.0
    saved = keras.saving.load_model(out)
    for name in quantized:
        layer = saved.get_layer(name)
        assert layer.quantization_mode == mode
        if mode != "float8":
            assert "int8" in {str(w.dtype) for w in layer.weights}  # codes stored as int8 (int4: two per byte)
        pruned = ~np.asarray(result.masks.masks[f"{name}/kernel"], dtype=bool)
        weights = _dequantized_kernel(layer)
        assert pruned.sum() > 0 or (name == "conv" and "granularity" in amount)  # 2:4 keeps a 1-channel conv
        assert np.count_nonzero(weights[pruned]) == 0, f"{name}: pruned weights moved away from zero"

    # outputs within the stated tolerance of the float pruned model, and the file computes the same
    diff = section["output_difference"]
    assert diff["sample_source"] == "data" and diff["samples"] == 128  # the whole test split
    assert diff["max_rel_diff"] <= TOLERANCE[mode]
    assert section["reload"] == {"loads": True, "max_abs_diff": 0.0}
    x = np.load(conv_dense / "data.npz")["x_test"]
    np.testing.assert_array_equal(saved.predict(x, verbose=0), result.model.predict(x, verbose=0))
    assert set(section["metrics"]) == {"float_pruned", "quantized"}
    if mode in ("int8", "int4"):  # Dense kernels stored in 8 or 4 bits: the file shrinks
        assert section["sizes"]["quantized"]["bytes"] < section["sizes"]["float_pruned"]["bytes"]
    assert result.report.output["bytes"] == section["sizes"]["quantized"]["bytes"]


@pytest.mark.slow
def test_a_zero_the_scheme_would_move_stops_the_run_and_nothing_is_saved(conv_dense, tmp_path, monkeypatch):
    from prunecli.outputs import quantize

    real = quantize._read_back

    def moved_one(layer, attr, mode, float_kernel):
        back, is_zero = real(layer, attr, mode, float_kernel)
        is_zero = is_zero.copy()
        is_zero.flat[np.flatnonzero(is_zero)[0]] = False  # pretend one pruned zero was read back non-zero
        return back, is_zero

    monkeypatch.setattr(quantize, "_read_back", moved_one)
    out = tmp_path / "never.keras"
    config = build_config({"model_path": str(conv_dense / "model.keras"), "quantize": "int8", "output": str(out)})
    with pytest.raises(quantize.QuantizeVerificationError, match=r"moved 1 pruned weight\(s\) of layer conv"):
        prune(config)
    assert not out.exists()


def test_a_model_no_mode_can_quantize_is_a_one_line_error(cli, tmp_path):
    import keras

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, name="only_conv")])
    model.save(tmp_path / "conv.keras")
    out = tmp_path / "out.keras"
    result = cli("prune", tmp_path / "conv.keras", "--quantize", "float8", "-o", out, "-q")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0
    assert "no layer of this model can be quantized" in result.stderr and "Conv2D" in result.stderr
    assert not out.exists()


def _channels_first_convolutions_run() -> bool:
    """TensorFlow's CPU Conv2D takes NCHW only through oneDNN, which TF turns off by default on CPUs
    without AVX-512: there, Keras' own channels_first Conv2D fails before any quantization."""
    import keras

    try:
        keras.layers.Conv2D(1, 1, data_format="channels_first")(np.zeros((1, 1, 2, 2), "float32"))
    except Exception:  # tensorflow's UnimplementedError
        return False
    return True


@pytest.mark.slow
def test_quantized_convolutions_store_int8_codes_and_reload_exactly(tmp_path):
    """Conv1D, Conv2D and Conv3D (Keras 3.15 quantizes none of them) become prunecli's QuantizedConv layers:
    the file holds int8 codes and is smaller, the reloaded model computes what the quantized one did, each
    kernel is within half a grid step of the float one, and a channel-first Conv2D keeps its layout (where
    this CPU's TensorFlow runs one)."""
    import keras

    from prunecli.structure import quantized_conv

    keras.utils.set_random_seed(1)
    inputs = keras.Input((12, 12, 12, 2))
    x = keras.layers.Conv3D(4, 3, name="c3")(inputs)  # (10, 10, 10, 4)
    x = keras.layers.Reshape((100, 40))(x)
    x = keras.layers.Conv1D(8, 3, activation="relu", name="c1")(x)  # (98, 8)
    x = keras.layers.Reshape((8, 98, 1))(x)
    layout = "channels_first" if _channels_first_convolutions_run() else "channels_last"
    x = keras.layers.Permute((3, 1, 2))(x) if layout == "channels_first" else x
    x = keras.layers.Conv2D(6, 3, data_format=layout, name="c2")(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D(data_format=layout)(x))
    floats = {name: np.asarray(model.get_layer(name).kernel) for name in ("c1", "c2", "c3")}
    model.save(tmp_path / "float.keras")
    data = np.random.default_rng(0).standard_normal((4, 12, 12, 12, 2)).astype("float32")
    reference = np.asarray(model(data))
    for name in floats:
        quantized_conv.make_quantizable(model.get_layer(name))
    np.testing.assert_array_equal(np.asarray(model(data)), reference)  # only methods were added
    with one_collection():  # Keras collects garbage per deleted kernel otherwise
        model.quantize("int8")
    quantized = np.asarray(model(data))
    assert 0 < np.abs(quantized - reference).max() <= 0.05 * np.abs(reference).max()
    model.save(tmp_path / "int8.keras")
    assert (tmp_path / "int8.keras").stat().st_size < (tmp_path / "float.keras").stat().st_size
    again = keras.saving.load_model(tmp_path / "int8.keras")
    np.testing.assert_array_equal(np.asarray(again(data)), quantized)
    for name, kernel in floats.items():
        layer = again.get_layer(name)
        assert type(layer).__name__ == f"QuantizedConv{name[1]}D" and layer.quantization_mode == "int8"
        assert layer.kernel_codes.dtype == "int8"
        step = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0) / 127
        assert np.all(np.abs(np.asarray(layer.kernel) - kernel) <= step / 2 + 1e-6)


@pytest.mark.slow  # two prune runs (~15 s); the fast subset keeps their fake-quant equivalence tests
def test_depthwise_separable_and_transposed_convolutions_keep_their_zeros_in_int8_codes(tmp_path):
    """`prune --quantize int8` on a model of DepthwiseConv2D, SeparableConv2D, Conv2DTranspose,
    SeparableConv1D and DepthwiseConv1D: each becomes prunecli's int8 layer, every kernel (both of a
    separable one) is stored as int8 codes with its pruned half exactly 0 and one scale per output channel
    (a depthwise kernel's: input channel x multiplier; a transposed one's: its filters, axis -2), the file
    is smaller than the float pruned one and reloads to the same outputs, each kernel within half a grid
    step of the float pruned one."""
    import keras

    from prunecli.structure import quantized_conv

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=4, activation="relu", name="dw2"),
            keras.layers.SeparableConv2D(16, 3, depth_multiplier=2, padding="same", activation="relu", name="sep2"),
            keras.layers.Conv2DTranspose(8, 3, padding="same", activation="relu", name="t2"),
            keras.layers.Reshape((100, 8)),
            keras.layers.SeparableConv1D(12, 3, activation="relu", name="sep1"),
            keras.layers.DepthwiseConv1D(3, depth_multiplier=2, name="dw1"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    model.save(tmp_path / "m.keras")
    cfg = {"model_path": str(tmp_path / "m.keras"), "sparsity": 0.5, "scope": "layer", "quantize": "int8"}
    prune(build_config({**cfg, "quantize": None, "output": str(tmp_path / "f.keras")}, environ={}))
    run = prune(build_config({**cfg, "output": str(tmp_path / "q.keras")}, environ={}))
    section = run.report.extra["quantize"]
    assert section["zeros"]["pruned_nonzero"] == 0 and not section["left_float"]
    float_model = keras.saving.load_model(tmp_path / "f.keras")
    again = keras.saving.load_model(tmp_path / "q.keras")
    scale_shapes = {  # (layer, kernel): the scale variable's shape = the kernel's output channels
        ("dw2", "kernel"): (3, 4),
        ("sep2", "depthwise_kernel"): (12, 2),
        ("sep2", "pointwise_kernel"): (16,),
        ("t2", "kernel"): (8,),
        ("sep1", "depthwise_kernel"): (8, 1),
        ("sep1", "pointwise_kernel"): (12,),
        ("dw1", "kernel"): (12, 2),
    }
    for (name, attr), shape in scale_shapes.items():
        layer = again.get_layer(name)
        assert type(layer).__name__.startswith("Quantized") and layer.quantization_mode == "int8", name
        codes = np.asarray(getattr(layer, attr))
        assert codes.dtype == np.int8 and tuple(getattr(layer, f"{attr}_scale").shape) == shape, (name, attr)
        kernel = np.asarray(getattr(float_model.get_layer(name), attr))
        assert np.all(codes[kernel == 0] == 0) and (codes == 0).sum() >= kernel.size // 2, (name, attr)
        scale = np.asarray(next(s for a, _c, s in quantized_conv.quantized_kernels(layer) if a == attr))
        step = np.broadcast_to(1 / scale, kernel.shape)
        assert np.all(np.abs(codes / scale - kernel) <= step / 2 + 1e-6), (name, attr)
    assert (tmp_path / "q.keras").stat().st_size < (tmp_path / "f.keras").stat().st_size
    x = np.random.default_rng(0).standard_normal((16, 12, 12, 3)).astype("float32")
    quantized = np.asarray(again(x))
    assert np.abs(quantized - np.asarray(float_model(x))).max() <= TOLERANCE["int8"]


@pytest.mark.slow  # three prune runs (~24 s); the fast subset keeps the int4 fake-quant, verify and inspect tests
def test_int4_convolutions_pack_two_codes_per_byte_and_keep_their_zeros(tmp_path):
    """`prune --quantize int4` on Conv1D, Conv2D, DepthwiseConv2D, SeparableConv2D and Conv2DTranspose: each
    kernel is stored as int4 codes packed two per byte (an int8 variable of ceil(n / 2) entries), read back
    in the kernel's layout with its pruned half exactly 0, within half a step of the float pruned kernel
    on the per-channel grid (max|w| / 7), the file is smaller than the same model's int8 file, and it
    reloads to the same outputs."""
    import keras

    from prunecli.structure import quantized_conv

    keras.utils.set_random_seed(5)
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            keras.layers.Conv2D(8, 3, activation="relu", name="c2"),
            keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dw"),
            keras.layers.SeparableConv2D(16, 3, padding="same", activation="relu", name="sep"),
            keras.layers.Conv2DTranspose(8, 3, padding="same", activation="relu", name="t2"),
            keras.layers.Reshape((64, 8)),
            keras.layers.Conv1D(12, 3, activation="relu", name="c1"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    model.save(tmp_path / "m.keras")
    cfg = {"model_path": str(tmp_path / "m.keras"), "sparsity": 0.5, "scope": "layer"}
    prune(build_config({**cfg, "output": str(tmp_path / "f.keras")}, environ={}))
    prune(build_config({**cfg, "quantize": "int8", "output": str(tmp_path / "q8.keras")}, environ={}))
    run = prune(build_config({**cfg, "quantize": "int4", "output": str(tmp_path / "q4.keras")}, environ={}))
    section = run.report.extra["quantize"]
    assert section["zeros"]["pruned_nonzero"] == 0 and not section["left_float"]
    float_model = keras.saving.load_model(tmp_path / "f.keras")
    again = keras.saving.load_model(tmp_path / "q4.keras")
    for name in ("c2", "dw", "sep", "t2", "c1"):
        layer = again.get_layer(name)
        assert quantized_conv.is_quantized_conv(layer) and layer.quantization_mode == "int4", name
        for attr, codes, scale in quantized_conv.quantized_kernels(layer):
            kernel = np.asarray(getattr(float_model.get_layer(name), attr))
            stored = getattr(layer, "_kernel" if attr == "kernel" and hasattr(layer, "kernel_codes") else attr)
            assert stored.dtype == "int8" and tuple(stored.shape) == ((kernel.size + 1) // 2,), (name, attr)
            codes, scale = np.asarray(codes).astype(np.int32), np.asarray(scale, dtype=np.float64)
            assert codes.shape == kernel.shape and -8 <= codes.min() and codes.max() <= 7, (name, attr)
            assert np.all(codes[kernel == 0] == 0) and (codes == 0).sum() >= kernel.size // 2, (name, attr)
            step = np.broadcast_to(1 / scale, kernel.shape)
            assert np.all(np.abs(codes / scale - kernel) <= step / 2 + 1e-6), (name, attr)
    assert (tmp_path / "q4.keras").stat().st_size < (tmp_path / "q8.keras").stat().st_size
    x = np.random.default_rng(0).standard_normal((16, 12, 12, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(again(x)), np.asarray(run.model(x)))
    assert np.abs(np.asarray(again(x)) - np.asarray(float_model(x))).max() <= TOLERANCE["int4"]


def test_files_that_name_the_earlier_int8_convolution_classes_still_load(tmp_path):
    """Files written before int4 convolutions existed name `prunecli>Int8Conv2D`: they load as the same
    layers and compute the same outputs."""
    import json
    import zipfile

    import keras

    from prunecli.structure import quantized_conv

    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, name="conv")])
    quantized_conv.make_quantizable(model.get_layer("conv"))
    with one_collection():  # Keras collects garbage per deleted kernel otherwise
        model.quantize("int8")
    model.save(tmp_path / "new.keras")
    with zipfile.ZipFile(tmp_path / "new.keras") as src, zipfile.ZipFile(tmp_path / "old.keras", "w") as dst:
        for item in src.infolist():
            content = src.read(item)
            if item.filename == "config.json":
                content = json.dumps(json.loads(content)).replace("QuantizedConv2D", "Int8Conv2D").encode()
                assert b"prunecli>Int8Conv2D" in content
            dst.writestr(item, content)
    old = keras.saving.load_model(tmp_path / "old.keras")
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 2)).astype("float32")
    assert type(old.get_layer("conv")) is quantized_conv.QuantizedConv2D
    np.testing.assert_array_equal(np.asarray(old(x)), np.asarray(model(x)))


@pytest.mark.parametrize("mode", ["int8", pytest.param("int4", marks=pytest.mark.slow)])
def test_pruning_an_already_quantized_model_is_a_one_line_error(cli, tmp_path, mode):
    """Keras' quantized layers hold codes and per-channel scales: ranking codes is not ranking weights and
    int4 codes cannot be written back (this ended in an internal AttributeError). Refused before scoring,
    pointing at the float model and --quantize."""
    import keras

    model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32, name="hidden"), keras.layers.Dense(4)])
    with one_collection():  # Keras collects garbage per deleted kernel otherwise
        model.quantize(mode)
    model.save(tmp_path / "q.keras")
    out = tmp_path / "out.keras"
    result = cli("prune", tmp_path / "q.keras", "-s", "0.5", "-o", out, "-q")
    assert result.exit_code == 3, result.output
    assert result.stderr.strip().count("\n") == 0
    assert f"layer hidden is already quantized ({mode})" in result.stderr and f"--quantize {mode}" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--engine", "tfmot"], "--quantize is not available with --engine tfmot"),
        (["-o", "pruned.h5"], "an .h5 file cannot hold"),
        (["--quantize", "int4", "--export", "tflite"], "TFLite has no int4 weights"),
        (["--quantize", "float8", "--export", "tflite-int8", "--data", "d.npz"], "TFLite has no float8 weights"),
    ],
)
def test_bad_combinations_fail_in_one_line_before_any_work(cli, tmp_path, args, message):
    """The model does not exist: exit 2 (not 3) shows the combination was refused before loading it."""
    result = cli("prune", tmp_path / "missing.keras", "--quantize", "int8", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_config_checks_without_the_cli():
    with pytest.raises(ConfigError, match="an .h5 file cannot hold"):
        build_config({"model_path": "model.h5", "quantize": "int4"})  # default output: model.pruned.h5
    with pytest.raises(ConfigError, match="quantize must be one of int8, int4, float8"):
        build_config({"model_path": "model.keras", "quantize": "int2"})
    assert build_config({"model_path": "model.h5", "quantize": "int8", "output": "o.keras"}).quantize == "int8"


@pytest.mark.slow
def test_int8_model_exports_to_tflite_with_its_zeros(conv_dense, tmp_path):
    """--quantize int8 --export: the TFLite files come from the float pruned model (TFLite cannot read
    Keras' int8 layers): `tflite` with int8 weights on the same symmetric grid, `tflite-int8` fully
    integer. Both are checked against the quantized Keras model, and their int8 weights keep every zero."""
    from pathlib import Path

    out = tmp_path / "q.keras"
    settings = {"model_path": str(conv_dense / "model.keras"), "data": str(conv_dense / "data.npz")}
    config = {**settings, "sparsity": 0.7, "quantize": "int8", "output": str(out), "quiet": True}
    result = prune(build_config({**config, "export": ["tflite", "tflite-int8", "savedmodel"]}))
    export = result.report.to_dict()["export"]

    masks = result.masks.masks
    pruned = {name: int((~np.asarray(masks[f"{name}/kernel"], dtype=bool)).sum()) for name in ("conv", "dense1", "out")}
    for fmt in ("tflite", "tflite-int8"):
        entry = export[fmt]
        assert Path(entry["path"]).exists()
        counts = entry["int8_weights"]
        assert counts["nonzero_zero_points"] == 0
        assert entry["max_abs_diff"] <= 0.05, (fmt, entry)  # softmax outputs against the Keras int8 model
    # dynamic range quantizes the kernels of 1,024 values or more (dense1); full integer quantizes all
    assert export["tflite"]["int8_weights"]["zeros"] >= pruned["dense1"] > 0
    assert export["tflite-int8"]["int8_weights"]["zeros"] >= sum(pruned.values())
    assert export["tflite"]["int8_weights"]["values"] < export["tflite-int8"]["int8_weights"]["values"]
    assert export["savedmodel"]["max_abs_diff"] <= 1e-5  # the quantized Keras model itself


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_inspect_counts_a_quantized_model_as_its_report_does(conv_dense, tmp_path, mode):
    """`inspect` on a --quantize output reads each kernel as the targets do (codes in the kernel's
    layout): the same targets, shapes and sparsity as the run's report. It used to count the stored
    bytes as "layer state": 0 targets, and an int4 kernel 90% pruned shown as 1.4% sparse in its packed
    shape."""
    from prunecli.outputs.inspect import inspect_model

    out = tmp_path / "q.keras"
    cfg = {"model_path": str(conv_dense / "model.keras"), "sparsity": 0.7, "quantize": mode, "output": str(out)}
    report = prune(build_config(cfg, environ={})).report.to_dict()
    seen = inspect_model(str(out))
    targets = {f"{layer.name}/{w.name}": w for layer in seen.layers for w in layer.weights if w.target}
    assert set(targets) == {"conv/kernel", "dense1/kernel", "out/kernel"}
    assert all(w.quantized == mode and "prune the float model" in w.how for w in targets.values())
    for entry in report["layers"]:
        weight = targets[entry["name"]]
        assert weight.shape == list(entry["shape"]) and weight.nonzeros == entry["nonzeros"], entry["name"]
    assert seen.totals["prunable_sparsity"] == pytest.approx(report["totals"]["prunable_sparsity"], abs=1e-12)


@pytest.mark.slow  # two full runs and a verify each (3 s): the full suite
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_verify_checks_a_quantized_model_against_its_report_and_plan(conv_dense, tmp_path, cli, mode):
    """The quantized file holds integer codes (and prunecli's QuantizedConv2D) where the plan's float model
    held float kernels: verify still finds every reported layer under its name, reads its zeros from the
    codes (Keras' grouped int4 Dense: a code equal to its group's zero point is a zero weight; before,
    verify counted those as non-zeros and failed every int4 claim), matches the plan by layer names, and
    measures the accuracy of the quantized model the run wrote (the report's quantize.metrics); a model
    with another layer is still refused."""
    import keras

    out, report, plan = tmp_path / "q.keras", tmp_path / "r.json", tmp_path / "plan.zip"
    data = conv_dense / "data.npz"
    args = ["prune", conv_dense / "model.keras", "-s", "0.7", "--quantize", mode, "-d", data, "-o", out, "-q"]
    assert cli(*args, "-r", report, "--save-plan", plan).exit_code == 0
    result = cli("verify", out, "-r", report, "--plan", plan, "-d", data, "--tolerance", "0")
    assert result.exit_code == 0, result.stderr
    assert "claims hold" in result.stdout

    other = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(8, 3, name="renamed")])
    other.save(tmp_path / "other.keras")
    refused = cli("verify", tmp_path / "other.keras", "--plan", plan)
    assert refused.exit_code == 4
    assert "the plan has 'conv', the model 'renamed'" in refused.stderr  # the input layers' names aside
    assert "plan target conv/kernel: not in the model" in refused.stderr


@pytest.mark.parametrize(
    "mode", ["int8", pytest.param("int4", marks=pytest.mark.slow), pytest.param("float8", marks=pytest.mark.slow)]
)
def test_embeddings_keep_their_pruned_zeros_and_float8_leaves_them_float(tmp_path, mode):
    """`prune --quantize int8|int4` quantizes a Keras Embedding too: the saved file holds int8 codes and one
    scale per token row (int4: two codes per byte, a scale and an integer zero point per group of 128
    columns of a row), every pruned entry reads back as exactly 0 and every kept one within half a grid
    step of its float value; float8 leaves the embedding float and says why."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(30, 16, name="emb")(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    model.save(tmp_path / "m.keras")
    out = tmp_path / "q.keras"
    settings = {"model_path": str(tmp_path / "m.keras"), "sparsity": 0.7, "quantize": mode, "output": str(out)}
    result = prune(build_config(settings, environ={}))
    floats = np.asarray(result.masks.masks[next(n for n in result.masks.masks if "emb" in n)])
    section = result.report.extra["quantize"]
    layer = keras.saving.load_model(out).get_layer("emb")
    if mode == "float8":
        assert [e["layer"] for e in section["left_float"]] == ["emb"]
        assert "int8 and int4 only" in section["left_float"][0]["why"] and layer.embeddings.dtype == "float32"
        return
    dense = np.asarray(keras.saving.load_model(tmp_path / "m.keras").get_layer("emb").embeddings)
    codes, scale = np.asarray(layer.embeddings).astype(np.int32), np.asarray(layer.embeddings_scale)
    if mode == "int8":
        assert layer._embeddings.dtype == "int8" and tuple(layer.embeddings_scale.shape) == (30,)
        back = codes / scale[:, None]
        step = np.abs(dense * floats).max(axis=1, keepdims=True) / 127
    else:  # one group of 16 columns per row: (q - z) * s
        assert layer._embeddings.dtype == "int8" and tuple(layer._embeddings.shape) == (30, 8)  # packed
        zero = np.asarray(layer.embeddings_zero).astype(np.int32)
        assert tuple(scale.shape) == tuple(zero.shape) == (30, 1)
        back = (codes - zero) * scale
        step = scale
    assert not back[~floats].any() and floats.sum() < floats.size  # every pruned entry exactly 0
    assert np.all(np.abs(back - dense * floats) <= step / 2 + 1e-6)
    from prunecli.outputs.inspect import inspect_model  # counts the codes' zeros as the report does

    emb = next(w for info in inspect_model(str(out)).layers if info.name == "emb" for w in info.weights if w.target)
    assert emb.shape == [30, 16] and emb.nonzeros == int(np.count_nonzero(back))
    entry = next(e for e in section["layers_quantized"] if e["layer"].endswith("emb/embeddings"))
    assert entry["pruned_nonzero"] == 0 and entry["pruned_weights"] == int((~floats).sum())


class _Scorer(__import__("keras").layers.Layer):
    """A layer class of the user's own that builds a Dense inside itself (as attention layers do)."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        import keras

        self.units = units
        self.inner = keras.layers.Dense(units, name="inner")

    def call(self, x):
        return self.inner(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@pytest.mark.slow
def test_layers_whose_owner_keeps_them_float_are_left_float_and_the_file_reloads(tmp_path):
    """A Dense inside TimeDistributed (Keras' wrapper calls its `call` directly, past the quantized
    path: its int8 codes would be read as float weights) and a Dense inside a layer class of the
    user's own (whose config rebuilds it float: the file would not reload) stay float, each with its
    reason; the rest is quantized, and the quantized outputs stay close to the float pruned ones."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((7, 12))
    h = keras.layers.TimeDistributed(keras.layers.Dense(16, activation="relu", name="per_step"), name="td")(inp)
    h = keras.layers.Flatten()(_Scorer(8, name="scorer")(h))
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(keras.layers.Dense(32, name="mid")(h)))
    model.save(tmp_path / "m.keras")
    x = np.random.default_rng(0).standard_normal((64, 7, 12)).astype("float32")
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "q.keras"
    settings = {"model_path": str(tmp_path / "m.keras"), "sparsity": 0.5, "quantize": "int8", "output": str(out)}
    settings.update(data=str(tmp_path / "x.npz"), custom_objects=())
    keras.saving.get_custom_objects()["_Scorer"] = _Scorer
    try:
        result = prune(build_config(settings, environ={}))
        reloaded = keras.saving.load_model(out)
    finally:
        keras.saving.get_custom_objects().pop("_Scorer", None)
    section = result.report.extra["quantize"]
    why = {e["layer"]: e["why"] for e in section["left_float"]}
    assert "inside TimeDistributed" in why["td/per_step"] and "a layer class of your own" in why["scorer/inner"]
    assert {e["layer"] for e in section["layers_quantized"]} == {"mid", "out"}
    assert section["output_difference"]["max_rel_diff"] < 0.05 and section["reload"]["loads"]
    assert (
        reloaded.get_layer("td").layer.kernel.dtype == "float32"
        and reloaded.get_layer("mid").quantization_mode == "int8"
    )


@pytest.mark.slow
def test_tflite_int8_of_a_float_input_feeding_an_embedding_takes_the_ids_as_int32(tmp_path):
    """Full-integer int8 quantizes every float input, token ids too (they then read the wrong rows, and
    the run was refused): the file takes a float input an Embedding reads as int32 (not quantized), the
    rest int8, and on the real ids it matches Keras within int8 tolerance; the report says so."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,), dtype="float32", name="ids")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(300, 8, name="emb")(inp))
    keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x)).save(tmp_path / "f.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 300, (48, 6)).astype("float32"), y=rng.integers(0, 2, 48))
    settings = {"model_path": str(tmp_path / "f.keras"), "data": str(tmp_path / "d.npz"), "sparsity": 0.5}
    result = prune(build_config({**settings, "export": "tflite-int8", "output": str(tmp_path / "o.keras")}))
    entry = result.report.extra["export"]["tflite-int8"]
    assert entry["int32_inputs"] == ["ids"] and entry["max_abs_diff"] < 0.02
    assert any("o.int8.tflite takes input 'ids' as int32 token ids" in n for n in result.report.notes)
    runner = tf.lite.Interpreter(model_content=(tmp_path / "o.int8.tflite").read_bytes()).get_signature_runner()
    (name, detail), (out_name, out) = *runner.get_input_details().items(), *runner.get_output_details().items()
    assert detail["dtype"] == np.int32 and out["dtype"] == np.int8
    ids = rng.integers(0, 300, (8, 6))
    scale, zero = out["quantization"]
    got = (runner(**{name: ids.astype("int32")})[out_name].astype("float32") - zero) * scale
    want = np.asarray(result.model(ids.astype("float32")))
    np.testing.assert_allclose(got, want, atol=2 * scale)


def test_accuracy_lost_to_quantization_and_a_sigmoid_file_disagreeing_are_said():
    """A quantized model that loses more than a point of accuracy gets a note (not only report
    figures); an exported single-sigmoid classifier's agreement is the side of 0.5 each output is on."""
    from prunecli.outputs import export, quantize

    lost = quantize._metric_loss({"float_pruned": {"accuracy": 0.865}, "quantized": {"accuracy": 0.617}})
    assert lost == "accuracy 0.8650 -> 0.6170 (24.8 points lost to quantisation)"
    assert quantize._metric_loss({"float_pruned": {"accuracy": 0.865}, "quantized": {"accuracy": 0.86}}) is None
    assert quantize._metric_loss({"float_pruned": {"loss": 1.0}, "quantized": {"loss": 2.0}}) is None
    expected = np.array([[0.1], [0.7], [0.4], [0.9]], np.float32)
    got = np.array([[0.2], [0.3], [0.45], [0.8]], np.float32)
    assert export._differences([got], [expected], 4)["top1_agreement"] == 0.75
    assert "top1_agreement" not in export._differences([got * 5], [expected * 5], 4)  # not probabilities
    relative = export._differences([got * 5], [expected * 5], 4)["relative_error"]  # what any other output gets
    assert relative == pytest.approx(np.linalg.norm(got - expected) / np.linalg.norm(expected), rel=1e-6)


def test_a_model_whose_layers_their_owner_keeps_float_is_refused_with_the_reason_before_the_work(cli, tmp_path):
    """A Dense inside TimeDistributed is a layer int8 takes, kept float by its wrapper: the refusal said
    the model's layers were Dense and that none could be quantized, after pruning had run."""
    import keras

    model = keras.Sequential(
        [
            keras.Input((6, 4)),
            keras.layers.LSTM(5, return_sequences=True),
            keras.layers.TimeDistributed(keras.layers.Dense(3)),
        ]
    )
    model.save(tmp_path / "tagger.keras")
    result = cli("prune", tmp_path / "tagger.keras", "--quantize", "int8", "-o", tmp_path / "o.keras")
    assert result.exit_code == 2 and "inside TimeDistributed" in result.stderr
    assert "pruning" not in result.stdout.lower()  # refused right after loading


@pytest.mark.parametrize("mode", [pytest.param("int4", marks=pytest.mark.slow), "float8"])
def test_whole_model_totals_count_the_float_layers_a_quantized_model_stands_for(conv_dense, tmp_path, cli, mode):
    """The report counted an int4 kernel by its stored bytes (two weights each) and float8's all-zero
    histories of maxima as weights (a conv net read 87% sparse); inspect counted scales too, so the two
    disagreed on the same file. Both now count the float model's parameters, and verify agrees."""
    import json

    import keras

    out, report = tmp_path / "q.keras", tmp_path / "r.json"
    result = cli("prune", conv_dense / "model.keras", "-s", "0.6", "--quantize", mode, "-o", out, "-r", report, "-q")
    assert result.exit_code == 0, result.output
    totals = json.loads(report.read_text())["totals"]
    assert totals["params"] == keras.saving.load_model(conv_dense / "model.keras").count_params()
    assert totals["prunable_nonzeros"] < totals["nonzeros"] < totals["params"]
    inspected = cli("inspect", out, "--json")
    assert inspected.exit_code == 0, inspected.output
    shown = json.loads(inspected.stdout)["totals"]
    assert (shown["params"], shown["nonzeros"]) == (totals["params"], totals["nonzeros"])
    assert cli("verify", out, "-r", report).exit_code == 0


@pytest.mark.slow
def test_a_params_target_with_quantize_counts_the_float_parameters(conv_dense, tmp_path, cli):
    """The achieved parameter count read the quantized model's scales as parameters: 681 counted for 659
    kept (goal 665), the target reported missed on a model that met it."""
    import json

    report = tmp_path / "r.json"
    args = ["--target", "params=0.5", "--quantize", "int8", "-d", conv_dense / "data.npz", "-r", report, "-q"]
    result = cli("prune", conv_dense / "model.keras", *args, "-o", tmp_path / "q.keras")
    assert result.exit_code == 0, result.output
    section = json.loads(report.read_text())["target"]
    assert section["within_tolerance"] is True and section["achieved_value"] <= section["goal"]


def test_quantizing_collects_garbage_once_and_gives_gc_back():
    """Model.quantize deletes each float kernel through Keras' Layer.__delattr__, which ran a full
    gc.collect() per kernel (0.25 s each here); inside one_collection none of those run, one runs at the
    end, and gc.collect is the interpreter's own again afterwards, after an error too."""
    import gc

    import keras

    own = gc.collect
    calls = []
    gc.collect = lambda generation=2: calls.append(generation) or 0  # stands for the interpreter's
    try:
        model = keras.Sequential([keras.Input((4,))] + [keras.layers.Dense(4) for _ in range(3)])
        with one_collection():
            model.quantize("int8")
        assert len(calls) == 1 and all(layer.quantization_mode == "int8" for layer in model.layers)
        with pytest.raises(RuntimeError), one_collection():
            raise RuntimeError
        assert len(calls) == 2
    finally:
        gc.collect = own
