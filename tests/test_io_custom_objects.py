"""--custom-objects: models with custom layers, named custom activations and Lambda layers whose
stored code cannot (or should not) run load with the user's own code, prune, shrink and reload.

The shapes are the zoo's real failures (bench/ZOO.md): mmsplice's ConvDNA (a Conv1D subclass) and
SplineWeight1D (a layer with its own call), DeepLC's `"<lambda>"` activation, FaceNet's Lambda
layers of Python-3.6 bytecode. Class names are unique to this file: Keras' registry is process-wide.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

LAYERS_MODULE = '''
import keras


class PcliSeqConv(keras.layers.Conv1D):
    """A Conv1D that records its sequence length: Conv1D's call, so Conv1D's layout."""

    def __init__(self, filters, kernel_size, seq_length=None, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        self.seq_length = seq_length

    def get_config(self):
        return {**super().get_config(), "seq_length": self.seq_length}


class PcliPositionScale(keras.layers.Layer):
    """A weight per position and channel, with a call of its own."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=tuple(input_shape[1:]), initializer="ones")

    def call(self, x):
        return x * self.w
'''


@pytest.fixture(scope="module")
def custom_model(tmp_path_factory):
    """A model saved with two custom layers, and the module that defines them (imported under a
    name of its own, as a user's training code would be): (path, source, inputs), built once for
    the tests that read it (each writes its outputs under its own tmp_path)."""
    import keras

    tmp_path = tmp_path_factory.mktemp("custom")
    source, training = _user_module(tmp_path, "pcli_layers", LAYERS_MODULE)
    rng = np.random.default_rng(0)
    inp = keras.Input((20, 4))
    h = training.PcliSeqConv(8, 5, seq_length=20, activation="relu", name="seqconv")(inp)
    h = keras.layers.Conv1D(8, 3, activation="relu", name="conv")(h)
    h = training.PcliPositionScale(name="posscale")(h)
    out = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.Flatten()(h))
    model = keras.Model(inp, out)
    for w in model.weights:
        w.assign(rng.normal(size=w.shape).astype("float32"))
    path = tmp_path / "custom.keras"
    model.save(path)
    return path, source, rng.normal(size=(64, 20, 4)).astype("float32")


def _user_module(tmp_path, name: str, text: str):
    """The user's layer file written as `name`.py, and the module their training script imported it as
    (a module of its own, so the file prunecli imports defines its classes afresh)."""
    import importlib.util

    source = tmp_path / f"{name}.py"
    source.write_text(text)
    spec = importlib.util.spec_from_file_location(f"{name}_training", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return source, module


def test_custom_layer_needs_its_code_and_says_so(cli, custom_model, tmp_path):
    path, _source, _x = custom_model
    result = cli("prune", path, "-s", "0.5", "-o", tmp_path / "out.keras", "-q")
    assert result.exit_code == 3
    assert "--custom-objects" in result.output and "PcliSeqConv" in result.output
    assert not (tmp_path / "out.keras").exists()


def test_custom_layers_load_prune_and_reload(cli, custom_model, tmp_path):
    """A subclass that inherits its base's call is pruned as the base; one with its own call is left
    alone (its use of the weights is unknown); the output reloads with the same objects."""
    import keras

    from prunecli.io import models as model_io

    path, source, x = custom_model
    out, report = tmp_path / "out.keras", tmp_path / "r.json"
    result = cli("prune", path, "-s", "0.5", "--custom-objects", source, "-o", out, "-r", report, "-q")
    assert result.exit_code == 0, result.output
    facts = json.loads(report.read_text())
    pruned = {row["name"] for row in facts["layers"]}
    assert "seqconv/kernel" in pruned and not any(n.startswith("posscale") for n in pruned)
    assert any("custom objects" in n and "--custom-objects" in n for n in facts["notes"])
    model, _info = model_io.load(out, custom_objects=(str(source),))
    kernel = np.asarray(model.get_layer("seqconv").kernel)
    assert 0.3 < float(np.mean(kernel == 0)) < 0.7
    assert type(model.get_layer("seqconv")).__name__ == "PcliSeqConv"
    assert np.isfinite(np.asarray(model(x))).all()
    assert isinstance(keras.saving.load_model(out), keras.Model)  # registered: Keras reads it too


@pytest.mark.slow
def test_custom_conv_subclass_shrinks(cli, custom_model, tmp_path):
    """-g neuron --shrink removes filters of the Conv1D subclass: rebuilt by its own class, with
    its own config, its consumer sliced to match (the unknown custom layer after `conv` keeps
    conv's channels whole: a note says so)."""
    from prunecli.io import models as model_io

    path, source, x = custom_model
    out = tmp_path / "small.keras"
    result = cli(
        "prune", path, "-g", "neuron", "-s", "0.5", "--shrink", "--include", "seqconv",
        "--custom-objects", source, "-o", out, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    model, _info = model_io.load(out, custom_objects=(str(source),))
    layer = model.get_layer("seqconv")
    assert type(layer).__name__ == "PcliSeqConv" and layer.seq_length == 20
    assert layer.filters < 8
    assert np.isfinite(np.asarray(model(x))).all()


def test_spec_follows_inherited_call_only():
    import keras

    from prunecli.structure import layers

    class PcliInheritsDense(keras.layers.Dense):
        pass

    class PcliOwnCallDense(keras.layers.Dense):
        def call(self, inputs):
            return super().call(inputs) * 2.0

    assert layers.spec(PcliInheritsDense(3)) == layers.spec(keras.layers.Dense(3))
    assert layers.spec(PcliOwnCallDense(3)) is layers.OTHER


def _keras2_h5(tmp_path, keras2_layer_config) -> tuple:
    """A .h5 whose config is rewritten as Keras 2 wrote it (`keras2_layer_config` edits the
    middle layer's config in place), and the inputs and outputs of the model it was saved from."""
    import h5py
    import keras

    rng = np.random.default_rng(1)
    inp = keras.Input((6,), name="x")
    h = keras.layers.Dense(8, name="dense_in")(inp)
    h = keras.layers.Dense(8, activation="relu", name="middle")(h)
    out = keras.layers.Dense(2, name="dense_out")(h)
    model = keras.Model(inp, out)
    path = tmp_path / "k2.h5"
    model.save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        middle = next(layer for layer in config["config"]["layers"] if layer["config"]["name"] == "middle")
        keras2_layer_config(middle, config)
        f.attrs["model_config"] = json.dumps(config)
    x = rng.normal(size=(16, 6)).astype("float32")
    return path, model, x


def _anonymous_activation(middle, _config):
    """The middle layer's activation as Keras 2 stored an anonymous function: "<lambda>"."""
    middle["config"]["activation"] = "<lambda>"


def _capped_relu_source(tmp_path):
    """A --custom-objects file naming "<lambda>": a ReLU capped at 0.5."""
    source = tmp_path / "acts.py"
    source.write_text(
        "import keras\n\ndef pcli_capped(x):\n    return keras.activations.relu(x, max_value=0.5)\n\n"
        'CUSTOM_OBJECTS = {"<lambda>": pcli_capped}\n'
    )
    return source


def test_named_lambda_activation_from_custom_objects(cli, tmp_path):
    """Keras 2 stored an anonymous activation as "<lambda>" (DeepLC's leaky ReLU capped at 20):
    CUSTOM_OBJECTS names it."""
    from prunecli.io import models as model_io

    path, dense, x = _keras2_h5(tmp_path, _anonymous_activation)
    source = _capped_relu_source(tmp_path)
    refused = cli("prune", path, "-o", tmp_path / "a.h5", "-q")
    assert refused.exit_code == 3 and "--custom-objects" in refused.output
    model, _info = model_io.load(path, custom_objects=(str(source),))
    middle, head = dense.get_layer("middle"), dense.get_layer("dense_out")
    pre = np.asarray(dense.get_layer("dense_in")(x)) @ middle.kernel.numpy() + middle.bias.numpy()
    want = np.clip(pre, 0, 0.5) @ head.kernel.numpy() + head.bias.numpy()  # the user's capped ReLU
    np.testing.assert_allclose(np.asarray(model(x)), want, rtol=1e-5, atol=1e-5)


def test_the_note_says_how_each_output_format_is_read(cli, tmp_path):
    """An .h5 output of an unchanged structure is the input file with new weights, holding what the
    input held: the note sends Keras' own loader to a .keras output, which stores the objects by name."""
    path, _dense, _x = _keras2_h5(tmp_path, _anonymous_activation)
    source = _capped_relu_source(tmp_path)
    for out, says in (
        ("o.h5", "for keras.saving.load_model(..., custom_objects=...) write a .keras"),
        ("o.keras", "(keras.saving.load_model(..., custom_objects=...), or prunecli's"),
    ):
        result = cli("prune", path, "-s", "0.5", "--custom-objects", source, "-o", tmp_path / out)
        assert result.exit_code == 0, result.output
        assert says in " ".join(result.output.split())


def _foreign_lambda(middle, _config):
    """The middle layer becomes a Keras-2 Lambda whose code this Python cannot read (marshal data
    cut short, as Python 3.6 bytecode reads on 3.11: "EOF read where object expected")."""
    middle["class_name"] = "Lambda"
    middle["config"] = {
        "name": "middle",
        "trainable": True,
        "function": [base64.b64encode(b"\xe3").decode() + "\n", None, None],
        "function_type": "lambda",
        "output_shape": None,
        "output_shape_type": "raw",
        "arguments": {"scale": 3.0},
    }


def test_lambda_of_another_python_replaced_by_lambda_layers(cli, tmp_path):
    """FaceNet's shape: without code the file is refused (safe mode), with --unsafe its bytecode does
    not load (one line naming LAMBDA_LAYERS), and with LAMBDA_LAYERS the layer computes the user's
    function, no --unsafe needed; the output keeps the input's format and reloads the same way."""
    import h5py

    from prunecli.io import models as model_io

    path, dense, x = _keras2_h5(tmp_path, _foreign_lambda)
    with h5py.File(path, "r+") as f:  # a Lambda has no weights: drop the Dense's, as Keras 2 wrote none
        group = f["model_weights"]
        names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["layer_names"]]
        group.attrs["layer_names"] = [n.encode() for n in names if n != "middle"]
        del group["middle"]
    refused = cli("prune", path, "-o", tmp_path / "a.h5", "-q")
    assert refused.exit_code == 3 and "LAMBDA_LAYERS" in refused.output
    unreadable = cli("prune", path, "--unsafe", "-o", tmp_path / "a.h5", "-q")
    assert unreadable.exit_code == 3 and "another Python version" in unreadable.output
    source = tmp_path / "pcli_lambdas.py"
    source.write_text("def pcli_scaled(x, scale):\n    return x * scale\n\nLAMBDA_LAYERS = {'mid*': pcli_scaled}\n")
    out = tmp_path / "out.h5"
    result = cli("prune", path, "-s", "0.5", "--custom-objects", source, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    loaded, _info = model_io.load(path, custom_objects=(str(source),))
    h = np.asarray(dense.get_layer("dense_in")(x)) * 3.0
    want = h @ dense.get_layer("dense_out").kernel.numpy() + dense.get_layer("dense_out").bias.numpy()
    np.testing.assert_allclose(np.asarray(loaded(x)), want, rtol=1e-5, atol=1e-5)
    pruned, _info = model_io.load(out, custom_objects=(str(source),))
    assert float(np.mean(pruned.get_layer("dense_in").kernel.numpy() == 0)) > 0.2


@pytest.mark.parametrize(
    "body, message",
    [
        (None, "no such file"),
        ("raise RuntimeError('broken on purpose')\n", "cannot import it (RuntimeError: broken on purpose)"),
        ("import keras\nVALUE = 3\n", "defines no classes or functions"),
        ("LAMBDA_LAYERS = {'x': 3}\n", "is not a function"),
    ],
)
def test_bad_custom_objects_are_one_line(cli, example_model, tmp_path, body, message):
    source = tmp_path / "objs.py"
    if body is not None:
        source.write_text(body)
    result = cli("prune", example_model, "--custom-objects", source, "-o", tmp_path / "o.keras", "-q")
    assert result.exit_code == 3
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.keras").exists()


def test_custom_objects_from_python_and_in_inspect(cli, custom_model, tmp_path):
    """The Python API and `inspect` take the same objects as `prune`."""
    import prunecli

    path, source, _x = custom_model
    config = prunecli.build_config(
        {"model_path": str(path), "output": str(tmp_path / "api.keras"), "custom_objects": [str(source)]}
    )
    result = prunecli.prune(config)
    assert (tmp_path / "api.keras").exists() and result.report.totals["sparsity"] > 0.2
    shown = cli("inspect", path, "--custom-objects", source)
    assert shown.exit_code == 0 and "PcliSeqConv" in shown.output


def test_plan_apply_verify_take_custom_objects(cli, custom_model, tmp_path):
    """A plan saved from a model with custom layers replays on it and verifies, each command given
    the same objects."""
    path, source, _x = custom_model
    plan, first, second = tmp_path / "p.zip", tmp_path / "o1.keras", tmp_path / "o2.keras"
    saved = cli("prune", path, "--custom-objects", source, "-s", "0.5", "--save-plan", plan, "-o", first, "-q")
    assert saved.exit_code == 0, saved.output
    applied = cli("apply", plan, path, "--custom-objects", source, "-o", second, "-q")
    assert applied.exit_code == 0, applied.output
    verified = cli("verify", second, "--plan", plan, "--custom-objects", source)
    assert verified.exit_code == 0 and "claims hold" in verified.output
    from prunecli.run.verify import verify

    # one file given as a string (or a Path) from Python is one file, as build_config takes it: verify
    # tried to import each of its characters ("--custom-objects /: cannot import it")
    assert verify(second, plan=plan, custom_objects=str(source)).ok


def test_custom_objects_import_like_python(cli, custom_model, tmp_path, monkeypatch):
    """A file imports its sibling modules, and a module name is found in the current directory,
    as `python` itself would find them."""
    path, _source, _x = custom_model
    code = tmp_path / "code"
    code.mkdir()
    (code / "pcli_base_layers.py").write_text(LAYERS_MODULE)
    (code / "pcli_entry.py").write_text(
        "from pcli_base_layers import PcliPositionScale, PcliSeqConv\n\nCUSTOM_OBJECTS = {'PcliSeqConv': PcliSeqConv, 'PcliPositionScale': PcliPositionScale}\n"
    )
    by_file = cli("prune", path, "--custom-objects", code / "pcli_entry.py", "-o", tmp_path / "a.keras", "-q")
    assert by_file.exit_code == 0, by_file.output
    monkeypatch.chdir(code)
    by_name = cli("prune", path, "--custom-objects", "pcli_base_layers", "-o", tmp_path / "b.keras", "-q")
    assert by_name.exit_code == 0, by_name.output


def test_keras3_lambda_of_another_python_replaced_by_lambda_layers(cli, tmp_path):
    """The `.keras` form of FaceNet's failure: Keras 3 stores a Lambda's code as bytecode of the
    Python that saved it, which another Python cannot read ("bad marshal data"); LAMBDA_LAYERS builds
    the layer from the user's function, in safe mode."""
    import zipfile

    import keras

    from prunecli.io import models as model_io

    rng = np.random.default_rng(3)
    inp = keras.Input((6,))
    h = keras.layers.Dense(8, name="dense_in")(inp)
    h = keras.layers.Lambda(lambda t: t * 3.0, name="tripled")(h)
    out = keras.layers.Dense(2, name="dense_out")(h)
    model = keras.Model(inp, out)
    saved = tmp_path / "saved.keras"
    model.save(saved)
    path = tmp_path / "lambda.keras"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                config = json.loads(data)
                layer = next(lay for lay in config["config"]["layers"] if lay["config"]["name"] == "tripled")
                layer["config"]["function"]["config"]["code"] = base64.b64encode(b"\xe3").decode()
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    refused = cli("prune", path, "-o", tmp_path / "a.keras", "-q")
    assert refused.exit_code == 3 and "LAMBDA_LAYERS" in refused.output
    source = tmp_path / "pcli_tripled.py"
    source.write_text("def pcli_tripled(x):\n    return x * 3.0\n\nLAMBDA_LAYERS = {'tripled': pcli_tripled}\n")
    loaded, _info = model_io.load(path, custom_objects=(str(source),))
    x = rng.normal(size=(8, 6)).astype("float32")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    result = cli("prune", path, "-s", "0.5", "--custom-objects", source, "-o", tmp_path / "out.keras", "-q")
    assert result.exit_code == 0, result.output


POOLING_MODULE = '''
import keras
from keras import ops


class PcliAttentionPooling(keras.layers.Layer):
    """Attention that pools a sequence into one vector (as RNN classifiers use it): not a Transformer's."""

    def build(self, input_shape):
        self.score = self.add_weight(shape=(input_shape[-1], 1), initializer="glorot_uniform")

    def call(self, x):
        weights = ops.softmax(ops.squeeze(ops.matmul(x, self.score), -1), axis=-1)
        return ops.sum(x * ops.expand_dims(weights, -1), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])
'''


def test_attention_that_pools_a_sequence_is_not_a_transformer(cli, tmp_path):
    """-g neuron on an LSTM classifier with an attention-pooling layer (textgenrnn's shape) prunes its
    units: the layer's name says attention, but it pools the sequence, holding no residual stream."""
    import keras

    source, training = _user_module(tmp_path, "pcli_pooling", POOLING_MODULE)
    inp = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(50, 16, name="embedding")(inp)
    h = keras.layers.LSTM(24, return_sequences=True, name="rnn")(h)
    h = training.PcliAttentionPooling(name="attention")(h)
    out = keras.layers.Dense(5, activation="softmax", name="head")(keras.layers.Dense(20, name="hidden")(h))
    path = tmp_path / "pooled.keras"
    keras.Model(inp, out).save(path)
    report = tmp_path / "r.json"
    result = cli(
        "prune", path, "-g", "neuron", "--custom-objects", source, "-o", tmp_path / "o.keras", "-r", report, "-q"
    )
    assert result.exit_code == 0, result.output
    pruned = {row["name"]: row for row in json.loads(report.read_text())["layers"]}
    assert pruned["hidden/kernel"]["sparsity"] > 0.3 and pruned["rnn/lstm_cell/kernel"]["sparsity"] > 0.3


SUMMARY_ATTENTION = '''
import keras
from keras import ops


class PcliSummaryAttention(keras.layers.Layer):
    """Structured self-attention: r heads each pool the sequence into one vector (r summary vectors)."""

    def __init__(self, heads=3, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads

    def build(self, input_shape):
        self.w1 = self.add_weight(shape=(input_shape[-1], 8), initializer="glorot_uniform")
        self.w2 = self.add_weight(shape=(8, self.heads), initializer="glorot_uniform")

    def call(self, x):
        energy = ops.transpose(ops.matmul(ops.tanh(ops.matmul(x, self.w1)), self.w2), (0, 2, 1))
        return ops.matmul(ops.softmax(energy, axis=-1), x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.heads, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "heads": self.heads}
'''


def test_attention_that_pools_into_summary_vectors_is_not_a_transformer(cli, tmp_path):
    """-g neuron --shrink on a CNN whose attention returns a few summary vectors of a long sequence
    (same rank, other length) prunes its channels: no residual stream to keep."""
    import keras

    source, module = _user_module(tmp_path, "pcli_summary", SUMMARY_ATTENTION)
    inp = keras.Input((40, 4))
    h = keras.layers.Conv1D(16, 5, activation="relu", name="conv")(inp)
    h = keras.layers.Conv1D(12, 3, activation="relu", name="conv2")(h)
    h = module.PcliSummaryAttention(name="attention")(h)
    h = keras.layers.Dense(10, activation="relu", name="hidden")(keras.layers.Flatten()(h))
    path = tmp_path / "summary.keras"
    keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="out")(h)).save(path)
    result = cli("prune", path, "-g", "neuron", "--shrink", "--custom-objects", source, "-o", tmp_path / "o.keras")
    assert result.exit_code == 0, result.output
    shrunk = keras.saving.load_model(
        tmp_path / "o.keras", custom_objects={"PcliSummaryAttention": module.PcliSummaryAttention}
    )
    assert shrunk.get_layer("conv").filters < 16 and shrunk.get_layer("hidden").units < 10
    assert shrunk.get_layer("conv2").filters == 12  # read by the custom layer, which is left whole


GATE_ATTENTION = """
import keras
from keras import ops


class PcliGateAttention(keras.layers.Layer):
    \"\"\"TADA's attention: a score per position (features x 1) softmaxed over time scales the sequence.\"\"\"

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 1), initializer="glorot_uniform")
        self.b = self.add_weight(shape=(input_shape[1], 1), initializer="zeros")

    def call(self, x):
        return x * ops.softmax(ops.tanh(ops.matmul(x, self.w) + self.b), axis=1)
"""


def test_attention_that_only_scores_positions_is_not_a_transformer(cli, tmp_path):
    """TADA's shape: Conv1D -> a gate attention (a scoring vector, the sequence kept) -> BiLSTM -> Dense.
    -g neuron prunes the convolutions and the LSTM: the layer holds no projection, so no residual stream."""
    import keras

    source, module = _user_module(tmp_path, "pcli_gate", GATE_ATTENTION)
    inp = keras.Input((20, 6))
    h = keras.layers.Conv1D(16, 2, activation="gelu", name="conv")(inp)
    h = module.PcliGateAttention(name="attention")(h)
    h = keras.layers.Bidirectional(keras.layers.LSTM(8), name="bilstm")(h)
    path = tmp_path / "gate.keras"
    keras.Model(inp, keras.layers.Dense(2, activation="softmax", name="out")(h)).save(path)
    report = tmp_path / "r.json"
    result = cli("prune", path, "-g", "neuron", "--custom-objects", source, "-o", tmp_path / "o.keras", "-r", report)
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(report.read_text())["layers"]}
    assert rows["conv/kernel"]["sparsity"] > 0.3


def test_a_helper_named_like_keras_own_does_not_replace_it(tmp_path):
    """A `relu` helper in the user's file is not registered: an `.h5` config's "relu" stays Keras'
    (Keras' legacy reader looks a config's names up among registered objects first); CUSTOM_OBJECTS
    can still replace a Keras name on purpose."""
    from prunecli.io import models as model_io

    path, dense, x = _keras2_h5(tmp_path, lambda middle, config: None)
    helper = tmp_path / "pcli_helper.py"
    helper.write_text(LAYERS_MODULE + "\n\ndef relu(x):\n    return x * 0.0\n")
    model, _info = model_io.load(path, custom_objects=(str(helper),))
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(dense(x)), rtol=1e-5, atol=1e-6)
    on_purpose = tmp_path / "pcli_on_purpose.py"
    on_purpose.write_text("def pcli_zero(x):\n    return x * 0.0\n\nCUSTOM_OBJECTS = {'relu': pcli_zero}\n")
    try:
        replaced, _info = model_io.load(path, custom_objects=(str(on_purpose),))
        head = dense.get_layer("dense_out")
        np.testing.assert_allclose(np.asarray(replaced(x)), np.tile(head.bias.numpy(), (len(x), 1)), atol=1e-6)
    finally:
        import keras

        keras.saving.get_custom_objects().pop("relu", None)  # the registry is process-wide
