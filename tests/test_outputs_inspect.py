"""`prunecli inspect` and prunecli.outputs.inspect: what is in a model and what prunecli would do with it."""

from __future__ import annotations

import json

import pytest

from prunecli import build_config, prune
from prunecli.outputs.inspect import inspect_model


def by_name(result):
    return {layer.name: layer for layer in result.layers}


def test_example_model_targets_and_reasons(example_model):
    result = inspect_model(str(example_model))
    layers = by_name(result)
    kernels = {name for name, layer in layers.items() for w in layer.weights if w.target}
    assert kernels == {"conv1", "conv2", "dense1", "predictions"}
    conv1 = {w.name: w for w in layers["conv1"].weights}
    assert conv1["kernel"].shape == [3, 3, 1, 16] and conv1["kernel"].units == 16
    assert conv1["kernel"].how == "16 units, shrinkable" and conv1["kernel"].unit_axis == 3
    assert conv1["bias"].how == "bias" and not conv1["bias"].target
    # the output layer's units are the classes: --shrink keeps every one, as prune's note says of them
    head = next(w for w in layers["predictions"].weights if w.name == "kernel")
    assert head.how == "10 units, mask only (--shrink keeps them all: network output: 10)" and not head.shrinkable
    assert conv1["kernel"].shrinkable
    assert {w.how for w in layers["bn1"].weights} == {"normalisation"}
    assert layers["flatten"].weights == [] and layers["pool"].weights == []
    t = result.totals
    assert t["target_weights"] == 4 and t["prunable_params"] == 144 + 4608 + 32768 + 640
    assert t["params"] == sum(w.params for layer in result.layers for w in layer.weights)
    assert result.model["format"] == "keras" and result.model["flavour"] == "keras3"


def test_exclude_is_reported_as_the_reason(example_model):
    layers = by_name(inspect_model(str(example_model), exclude=["predictions"]))
    kernel = next(w for w in layers["predictions"].weights if w.name == "kernel")
    assert not kernel.target and "excluded" in kernel.how


def test_pruned_model_shows_sparsity_and_dead_units(mlp_files, tmp_path):
    out = tmp_path / "neurons.keras"
    prune(
        build_config(
            {
                "model_path": mlp_files["keras"],
                "sparsity": 0.5,
                "granularity": "neuron",
                "output": out,
                "exclude": ["out"],
                "sizes": False,
            },
            environ={},
        )
    )
    layers = by_name(inspect_model(str(out)))
    hidden1 = next(w for w in layers["hidden1"].weights if w.name == "kernel")
    assert hidden1.zero_units == 16 and hidden1.units == 32
    assert hidden1.sparsity == pytest.approx(0.5) and hidden1.nonzeros == 20 * 16
    out_kernel = next(w for w in layers["out"].weights if w.name == "kernel")
    assert out_kernel.zero_units == 0 and out_kernel.sparsity == 0.0


def test_nested_models_and_unknown_layers(tmp_path):
    import keras

    @keras.saving.register_keras_serializable(package="prunecli_test")
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1], 2), name="w")

        def call(self, x):
            return x @ self.w

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="inner_dense")], name="inner")
    inp = keras.Input((4,))
    model = keras.Model(inp, Scale(name="scale")(inner(inp)))
    path = tmp_path / "nested.keras"
    model.save(path)
    layers = by_name(inspect_model(str(path)))
    inner_kernel = next(w for w in layers["inner/inner_dense"].weights if w.name == "kernel")
    assert inner_kernel.target and inner_kernel.shrinkable  # the nested plain model is opened by --shrink
    (w,) = layers["scale"].weights
    assert not w.target and w.how == "no kernel known for Scale"


def test_a_kernel_inside_a_layer_class_of_its_own_is_mask_only(tmp_path):
    """keras-tcn's residual blocks hold Conv1D layers the channel graph never sees: inspect called them
    shrinkable, and `prune --shrink` then kept the model whole (astrorapid, bench/ZOO.md)."""
    import keras

    @keras.saving.register_keras_serializable(package="prunecli_test")
    class Block(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv1D(6, 3, padding="same", name="conv")

        def build(self, shape):
            self.conv.build(shape)

        def call(self, x):
            return x + self.conv(x)[..., : x.shape[-1]]

    inp = keras.Input((10, 4))
    h = keras.layers.Conv1D(4, 3, padding="same", name="stem")(inp)
    h = keras.layers.LSTM(5, return_sequences=True, name="rnn")(Block(name="block")(h))
    path = tmp_path / "block.keras"
    keras.Model(inp, keras.layers.Dense(2, name="out")(h)).save(path)
    layers = by_name(inspect_model(str(path)))
    inner = next(w for w in layers["block/conv"].weights if w.name == "kernel")
    assert inner.target and not inner.shrinkable and "mask only (inside a layer of its own class" in inner.how
    stem = next(w for w in layers["stem"].weights if w.name == "kernel")
    cell = next(w for w in layers["rnn/lstm_cell"].weights if w.name == "kernel")
    assert cell.shrinkable and cell.how.endswith("shrinkable")
    # the stem's channels are what the block reads, which surgery cannot slice: prune --shrink keeps all 4
    # ('stem: 4 of 4 channels not pruned: --shrink cannot remove them'), and inspect says so too
    assert not stem.shrinkable and "--shrink keeps them all: block (Block) is not a layer surgery can slice" in stem.how


def test_cli_table_and_json(cli, example_model):
    result = cli("inspect", example_model)
    assert result.exit_code == 0, result.output
    assert "conv1" in result.output and "normalisation" in result.output and "whole model" in result.output
    result = cli("inspect", example_model, "--json", "--exclude", "conv*")
    assert result.exit_code == 0
    data = json.loads(result.output)
    assert data["schema_version"] == 1 and data["kind"] == "inspect"
    assert data["totals"]["target_weights"] == 2
    conv = next(layer for layer in data["layers"] if layer["name"] == "conv2")
    assert conv["class"] == "Conv2D" and conv["weights"][0]["how"].startswith("excluded")


def test_cli_errors_are_one_line_with_exit_code(cli, tmp_path):
    result = cli("inspect", tmp_path / "missing.keras")
    assert result.exit_code == 3 and "not found" in result.output
    (tmp_path / "junk.keras").write_bytes(b"not a model at all")
    result = cli("inspect", tmp_path / "junk.keras")
    assert result.exit_code == 3 and "Traceback" not in result.output


def test_lambda_models_are_refused_in_safe_mode(cli, tmp_path):
    import keras

    inp = keras.Input((3,))
    model = keras.Model(inp, keras.layers.Lambda(lambda x: x * 2.0, name="double")(keras.layers.Dense(2)(inp)))
    path = tmp_path / "lambda.keras"
    model.save(path)
    result = cli("inspect", path)
    assert result.exit_code == 3 and "Lambda" in result.output and "--unsafe" in result.output
