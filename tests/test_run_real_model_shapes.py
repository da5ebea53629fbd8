"""Shapes real pretrained files have and our own test models did not (bench/ZOO.md found them):
a Keras-2 Sequential that declares its input on its first layer, a variable-length Conv1D model whose
Cropping1D needs a longer input than a fixed stand-in gives. Each is built here, small, so CI guards
the class of failure without the network."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunecli import build_config, prune


@pytest.fixture(scope="module")
def keras2_reshape_first(tmp_path_factory):
    """A speech-style CNN written as Keras <= 2.3 wrote Sequentials: no InputLayer in the config, the
    input declared by `batch_input_shape` on the first layer (a Reshape)."""
    import h5py
    import tf_keras as k2

    folder = tmp_path_factory.mktemp("keras2")
    k2.utils.set_random_seed(0)
    model = k2.Sequential(
        [
            k2.layers.Reshape((12, 8, 1), input_shape=(12, 8)),
            k2.layers.Conv2D(6, 3, activation="relu"),
            k2.layers.Flatten(),
            k2.layers.Dense(8, activation="relu"),
            k2.layers.Dense(3, activation="softmax"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    path = folder / "speech.h5"
    model.save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"] = config["config"]["layers"][1:]  # drop the InputLayer, as Keras 2.3 did
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.3.1"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(48, 12, 8)).astype("float32")
    np.savez(folder / "d.npz", x=x, y=rng.integers(0, 3, 48))
    return path, folder / "d.npz", x, np.asarray(model(x[:8]))


def test_a_keras2_sequential_is_read_with_the_input_its_writer_declared(keras2_reshape_first):
    from prunecli.io import models as model_io

    path, _data, x, expected = keras2_reshape_first
    model, _info = model_io.load(path)
    assert tuple(model.input_shape) == (None, 12, 8)
    np.testing.assert_allclose(np.asarray(model(x[:8])), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [{}, {"granularity": "neuron", "shrink": True}])
def test_pruned_keras2_sequential_takes_the_original_inputs(keras2_reshape_first, tmp_path, extra):
    import keras

    path, data, x, _expected = keras2_reshape_first
    out = tmp_path / "out.keras"
    config = build_config({"model_path": str(path), "data": str(data), "output": str(out), **extra}, environ={})
    result = prune(config)
    back = keras.saving.load_model(out)
    assert tuple(back.input_shape) == (None, 12, 8) and np.asarray(back(x[:4])).shape == (4, 3)
    assert result.report.metrics["before"]["accuracy"] is not None


@pytest.fixture(scope="module")
def cropped_sequence_model(tmp_path_factory):
    """SpliceAI-like: variable-length input, dilated Conv1D with residual adds, a crop longer than any
    small stand-in input (50 each side), a per-position softmax."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, 4))
    h = keras.layers.Conv1D(8, 1, name="stem")(inp)
    for i, rate in enumerate((1, 2, 4)):
        branch = keras.layers.Conv1D(8, 3, dilation_rate=rate, padding="same", activation="relu", name=f"c{i}")(h)
        h = keras.layers.Add()([h, branch])
    h = keras.layers.Cropping1D((50, 50))(h)
    out = keras.layers.Conv1D(3, 1, activation="softmax", name="per_position")(h)
    model = keras.Model(inp, out)
    folder = tmp_path_factory.mktemp("crop")
    path = folder / "splice.keras"
    model.save(path)
    return path, np.random.default_rng(1).normal(size=(2, 160, 4)).astype("float32")


@pytest.mark.slow  # 1.1-1.8 s: the full suite (fast subset at its 120 s limit)
def test_neuron_shrink_runs_past_a_long_crop_on_a_variable_length_model(cropped_sequence_model, tmp_path):
    import keras

    path, x = cropped_sequence_model
    out = tmp_path / "small.keras"
    config = build_config(
        {"model_path": str(path), "granularity": "neuron", "sparsity": 0.5, "shrink": True, "output": str(out)},
        environ={},
    )
    result = prune(config)
    shrink = result.report.to_dict()["shrink"]
    assert shrink["params_after"] < shrink["params_before"]
    back = keras.saving.load_model(out)
    assert np.asarray(back(x)).shape == (2, 60, 3)  # the original input still fits, any length


@pytest.mark.slow
def test_plan_on_a_variable_length_model(cropped_sequence_model):
    from prunecli.run.plan import make_plan

    path, _x = cropped_sequence_model
    settings = {"model_path": str(path), "granularity": "neuron", "sparsity": 0.5, "shrink": True}
    plan = make_plan(build_config(settings, environ={}))
    assert plan["after"]["params"] < plan["before"]["params"]


@pytest.fixture(scope="module")
def label_shapes(tmp_path_factory):
    """A pitch-estimator-like sigmoid multi-label output, a per-position tagger, and their data in the
    forms users have: class numbers, multi-hot rows, one class per position, inputs without labels."""
    import keras

    folder = tmp_path_factory.mktemp("labels")
    keras.utils.set_random_seed(0)
    inp = keras.Input((10,))
    hidden = keras.layers.Dense(16, activation="relu")(inp)
    multi = keras.Model(inp, keras.layers.Dense(5, activation="sigmoid")(hidden))
    multi.save(folder / "multi.keras")  # uncompiled: the sigmoid output alone says multi-label
    seq_in = keras.Input((12, 3))
    tagger = keras.Model(seq_in, keras.layers.Conv1D(4, 3, padding="same", activation="softmax")(seq_in))
    tagger.compile("adam", "sparse_categorical_crossentropy")
    tagger.save(folder / "tagger.keras")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 10)).astype("float32")
    np.savez(folder / "multi_classes.npz", x=x, y=rng.integers(0, 5, 64))
    np.savez(folder / "multi_hot.npz", x=x, y=(rng.random((64, 5)) > 0.5).astype("float32"))
    np.savez(folder / "x_only.npz", x=x)
    seq_x = rng.normal(size=(64, 12, 3)).astype("float32")
    np.savez(folder / "per_position.npz", x=seq_x, y=rng.integers(0, 4, (64, 12)))
    np.savez(folder / "wrong_positions.npz", x=seq_x, y=rng.integers(0, 4, (64, 7)))
    return folder


@pytest.mark.parametrize("method", ["magnitude", "wanda"])
@pytest.mark.parametrize("data", ["multi_classes", "multi_hot"])
def test_sigmoid_multi_label_takes_class_numbers_and_multi_hot_rows(label_shapes, tmp_path, method, data):
    settings = {
        "model_path": str(label_shapes / "multi.keras"),
        "data": str(label_shapes / f"{data}.npz"),
        "method": method,
        "output": str(tmp_path / "o.keras"),
    }
    if method == "wanda":  # magnitude calibrates nothing: refused
        settings["calibration_samples"] = 32
    result = prune(build_config(settings, environ={}))
    assert 0.0 <= result.report.metrics["after_pruning"]["accuracy"] <= 1.0
    assert result.report.totals["prunable_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_per_position_class_labels_fit_a_per_position_output(label_shapes, tmp_path):
    settings = {"model_path": str(label_shapes / "tagger.keras"), "data": str(label_shapes / "per_position.npz")}
    result = prune(build_config({**settings, "output": str(tmp_path / "o.keras")}, environ={}))
    assert result.report.metrics["before"]["accuracy"] is not None


def test_labels_that_fit_no_output_are_refused_naming_both_shapes(label_shapes, tmp_path):
    from prunecli.errors import DataError

    settings = {"model_path": str(label_shapes / "tagger.keras"), "data": str(label_shapes / "wrong_positions.npz")}
    with pytest.raises(DataError, match=r"labels of shape \(7,\) per example do not fit the model's output \(12, 4\)"):
        prune(build_config({**settings, "output": str(tmp_path / "o.keras")}, environ={}))


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_calibrated_methods_need_inputs_only(label_shapes, tmp_path, method):
    settings = {
        "model_path": str(label_shapes / "multi.keras"),
        "data": str(label_shapes / "x_only.npz"),
        "method": method,
        "calibration_samples": 32,
        "output": str(tmp_path / "o.keras"),
    }
    result = prune(build_config(settings, environ={}))
    assert result.report.metrics == {}
    assert any("no labels" in note for note in result.report.notes)
    assert result.report.totals["prunable_sparsity"] == pytest.approx(0.5, abs=0.01)


def test_what_needs_labels_is_refused_by_name_without_them(label_shapes, tmp_path):
    from prunecli.errors import DataError

    settings = {"model_path": str(label_shapes / "multi.keras"), "data": str(label_shapes / "x_only.npz")}
    with pytest.raises(DataError, match="no labels .*fine-tuning needs them") as caught:
        prune(build_config({**settings, "epochs": 1, "output": str(tmp_path / "o.keras")}, environ={}))
    assert caught.value.exit_code == 3 and not (tmp_path / "o.keras").exists()


@pytest.mark.parametrize("extra", [pytest.param({"engine": "tfmot"}, marks=pytest.mark.slow), {"command": "sweep"}])
def test_inputs_without_labels_are_never_measured_against_placeholders(label_shapes, tmp_path, extra):
    """tfmot and the sweep evaluate accuracy: without labels they measure nothing, or refuse by name."""
    import tf_keras

    from prunecli.errors import DataError

    model = tf_keras.Sequential([tf_keras.layers.Dense(8, input_shape=(10,)), tf_keras.layers.Dense(5)])
    path = tmp_path / "k2.h5"
    model.save(path)
    data = str(label_shapes / "x_only.npz")
    if extra.get("command") == "sweep":
        from prunecli.run import sweep

        with pytest.raises(DataError, match="no labels"):
            sweep.open_session(build_config({"model_path": str(path), "data": data}, environ={}))
        return
    settings = {"model_path": str(path), "data": data, "output": str(tmp_path / "o.h5"), **extra}
    assert prune(build_config(settings, environ={})).report.metrics == {}


@pytest.mark.slow
def test_stand_in_inputs_fit_a_position_table_shorter_than_the_default(tmp_path):
    """A small GPT-2 learns 16 positions; seeded stand-ins for its open length were 32 long, so -g layer
    without --data (blocks scored on stand-ins) ended in an internal error. The stand-in length now
    halves until the model runs."""
    kh = pytest.importorskip("keras_hub")
    import keras

    from prunecli.structure import probes

    backbone = kh.models.GPT2Backbone(
        vocabulary_size=64, num_layers=3, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=16
    )
    lm = kh.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    ids = dict(zip(["token_ids", "padding_mask"], probes.seeded_inputs(lm, 2), strict=True))
    assert ids["token_ids"].shape == (2, 16)
    path, out = tmp_path / "gpt2.keras", tmp_path / "o.keras"
    lm.save(path)
    config = build_config(
        {"model_path": str(path), "granularity": "layer", "sparsity": 0.3, "output": str(out)}, environ={}
    )
    result = prune(config)
    assert len(result.report.to_dict()["removed_layers"]) == 1
    assert len(keras.saving.load_model(out).backbone.transformer_layers) == 2


def test_an_adapted_normalization_survives_every_copy(tmp_path):
    """An adapted Normalization (a real 21M-parameter skin-lesion model starts with one) computes with the
    mean and variance it derives in finalize_state(): copies given weights by set_weights alone computed
    with mean 0 and variance 1, so --shrink was refused (0.97 relative difference on real data) and the
    --distill teacher was silently another function. Each copy now computes what the model does."""
    import keras

    from prunecli.structure import rebuild
    from prunecli.training import distill

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(64, 6)) * 40 + 100).astype("float32")  # raw features far from mean 0, variance 1
    keras.utils.set_random_seed(0)
    norm = keras.layers.Normalization()
    norm.adapt(x)
    inp = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="relu", name="d1")(norm(inp))
    model = keras.Model(inp, keras.layers.Dense(3, name="d2")(hidden))
    want = np.asarray(model(x))
    np.testing.assert_allclose(np.asarray(distill.teacher_copy(model)(x)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(rebuild.detach(model)(x)), want, rtol=1e-5, atol=1e-5)

    path, data, out = tmp_path / "m.keras", tmp_path / "d.npz", tmp_path / "o.keras"
    model.save(path)
    np.savez(data, x=x, y=rng.integers(0, 3, 64))
    config = build_config(
        {
            "model_path": str(path),
            "granularity": "neuron",
            "sparsity": 0.5,
            "shrink": True,
            "data": str(data),
            "output": str(out),
            "include": ("d1",),
        },
        environ={},
    )
    shrink = prune(config).report.to_dict()["shrink"]
    assert shrink["params_after"] < shrink["params_before"]


@pytest.mark.slow
def test_a_keras_2_1_bidirectional_gru_file_loads_as_it_was_written(tmp_path):
    """Keras 2.0-2.1 wrote a wrapped layer without a module (Keras 3 then could not locate 'LSTM': a real
    Arabic diacritiser from the package index, bench/ZOO.md) and a GRU without `reset_after` (the
    reset-before GRU of those versions; Keras 3's default would not even fit its bias)."""
    import h5py
    import tf_keras as k2

    from prunecli.io import models as model_io

    k2.utils.set_random_seed(0)
    model = k2.Sequential(
        [
            k2.layers.Bidirectional(k2.layers.LSTM(6, return_sequences=True), input_shape=(7, 5)),
            k2.layers.Bidirectional(k2.layers.GRU(4, reset_after=False, return_sequences=True)),
            k2.layers.TimeDistributed(k2.layers.Dense(3, activation="softmax")),
        ]
    )
    path = tmp_path / "old.h5"
    model.save(path)
    x = np.random.default_rng(0).normal(size=(4, 7, 5)).astype("float32")
    expected = np.asarray(model(x))

    def as_keras_2_1(node):
        if isinstance(node, dict):
            if node.get("class_name") == "GRU":
                node["config"].pop("reset_after", None)
            wrapped = node.get("config", {}).get("layer") if isinstance(node.get("config"), dict) else None
            if isinstance(wrapped, dict):
                wrapped.pop("module", None)
            for value in node.values():
                as_keras_2_1(value)
        elif isinstance(node, list):
            for value in node:
                as_keras_2_1(value)

    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        as_keras_2_1(config)
        f.attrs["model_config"] = json.dumps(config)
        f.attrs["keras_version"] = "2.1.6"
    loaded, _info = model_io.load(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_stand_in_inputs_are_long_enough_for_a_pooling_stack(tmp_path):
    """A tempo CNN from the zoo (tempocnn's deeptemp_k8: open width, four 2x2 max-pools, then a global
    average) runs on a 32-wide stand-in with its width pooled to 0, and averages nothing into NaN: shrink's
    check compared NaN with NaN and refused a correct model (exit 1). Stand-ins now take the first length
    whose outputs are finite."""
    import keras
    import tensorflow as tf

    from prunecli.structure import probes

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, None, 1))
    x = inputs
    for i in range(6):  # width 32 -> 16 -> 8 -> 4 -> 2 -> 1 -> 0
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = keras.layers.MaxPooling2D((1, 2), name=f"pool{i}")(x)
    outputs = keras.layers.Dense(4, activation="softmax", name="out")(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, outputs)
    try:  # what 32 gave: NaN, or (oneDNN's pooling, on CPUs where TensorFlow uses it) an error
        assert np.isnan(np.asarray(model(np.ones((1, 8, 32, 1), "float32")))).all()
    except tf.errors.OpError:
        pass
    (stand_in,) = probes.seeded_inputs(model, 2)
    assert stand_in.shape[2] > 32 and np.isfinite(np.asarray(model(stand_in))).all()
    path, out = tmp_path / "tempo.keras", tmp_path / "o.keras"
    model.save(path)
    config = build_config(
        {"model_path": str(path), "granularity": "neuron", "sparsity": 0.5, "shrink": True, "output": str(out)},
        environ={},
    )
    report = prune(config).report.to_dict()
    assert report["shrink"]["params_after"] < report["shrink"]["params_before"] and out.exists()


SQRT_FIT_MODULE = '''
import keras
from keras import ops


class PcliSqrtFit(keras.layers.Layer):
    """slope * sqrt(mass) per charge state: NaN for a negative mass, as in ionmob's CCS model."""

    def call(self, inputs):
        mass, charge = inputs
        return ops.sum((3.0 * ops.sqrt(mass) + 1.0) * charge, axis=1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)
'''


@pytest.mark.slow
def test_stand_in_inputs_keep_an_input_a_model_takes_the_square_root_of_positive(tmp_path):
    """ionmob's CCS predictor (bench/ZOO.md) adds sqrt(m/z) per charge to a GRU's output, as its second
    output: on standard-normal stand-ins half its rows were NaN, and shrink's check (no --data) compared
    NaN with NaN and refused a correct model (exit 1, "differs ... by nan"). Stand-ins whose outputs are
    not finite are now taken as absolute values, checked on several rows."""
    import importlib.util

    import keras

    from prunecli.structure import probes

    source = tmp_path / "pcli_sqrt.py"
    source.write_text(SQRT_FIT_MODULE)
    spec = importlib.util.spec_from_file_location("pcli_sqrt_training", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    keras.utils.set_random_seed(0)
    mass, charge, feats = keras.Input((1,), name="mz"), keras.Input((4,), name="charge"), keras.Input((6,))
    h = keras.layers.Dense(16, activation="relu", name="d1")(keras.layers.Concatenate()([charge, feats]))
    deep = keras.layers.Dense(1, name="deep")(keras.layers.Dense(8, activation="relu", name="d2")(h))
    ccs = keras.layers.Add(name="ccs")([module.PcliSqrtFit(name="fit")([mass, charge]), deep])
    model = keras.Model([mass, charge, feats], [ccs, deep])
    normal = probes._values(model, 8, 0, probes.OPEN_DIM)
    assert np.isnan(np.asarray(model(normal)[0])).any()  # what the stand-ins were
    stand_in = probes.seeded_inputs(model, 64)
    assert all(np.isfinite(np.asarray(o)).all() for o in model(stand_in))
    path, out = tmp_path / "ccs.keras", tmp_path / "o.keras"
    model.save(path)
    config = build_config(
        {
            "model_path": str(path),
            "granularity": "neuron",
            "sparsity": 0.5,
            "shrink": True,
            "output": str(out),
            "custom_objects": [str(source)],
        },
        environ={},
    )
    report = prune(config).report.to_dict()
    assert report["shrink"]["params_after"] < report["shrink"]["params_before"] and out.exists()
