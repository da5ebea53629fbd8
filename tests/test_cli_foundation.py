"""The walking skeleton end to end: targets, exact sparsity, the report, and a fast --help."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from prunecli import build_config, prune
from prunecli.structure import targets


def nonzeros(model, layer):
    return int(np.count_nonzero(model.get_layer(layer).kernel.numpy()))


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_layerwise_sparsity_is_exact(mlp_files, tmp_path, sparsity):
    result = prune(
        build_config(
            {"model_path": mlp_files["keras"], "sparsity": sparsity, "scope": "layer", "output": tmp_path / "o.keras"}
        )
    )
    for stat in result.report.layers:
        expected_pruned = round(sparsity * stat.params)
        assert stat.params - stat.nonzeros == expected_pruned, stat


def test_global_sparsity_is_exact_and_fair(mlp_files, tmp_path):
    result = prune(
        build_config(
            {"model_path": mlp_files["keras"], "sparsity": 0.9, "scope": "global", "output": tmp_path / "o.keras"}
        )
    )
    t = result.report.totals
    assert t["prunable_params"] - t["prunable_nonzeros"] == round(0.9 * t["prunable_params"])
    # the small output layer (16x3) is not wiped out
    out_layer = next(s for s in result.report.layers if s.layer == "out")
    assert out_layer.nonzeros >= 1


def test_threshold_prunes_only_below(mlp_files, tmp_path):
    from prunecli.io import models as model_io

    original, _ = model_io.load(mlp_files["keras"])
    w = original.get_layer("hidden1").kernel.numpy()
    result = prune(build_config({"model_path": mlp_files["keras"], "threshold": 0.1, "output": tmp_path / "o.keras"}))
    pruned = result.model.get_layer("hidden1").kernel.numpy()
    assert np.count_nonzero(pruned) == np.count_nonzero(np.abs(w) >= 0.1)
    assert (pruned[np.abs(w) >= 0.1] == w[np.abs(w) >= 0.1]).all()


def test_include_and_exclude(mlp_files, tmp_path):
    result = prune(
        build_config(
            {"model_path": mlp_files["keras"], "sparsity": 0.5, "exclude": ["out"], "output": tmp_path / "o.keras"}
        )
    )
    assert [s.layer for s in result.report.layers] == ["hidden1", "hidden2"]
    assert nonzeros(result.model, "out") == 16 * 3
    result = prune(
        build_config(
            {"model_path": mlp_files["keras"], "sparsity": 0.5, "include": ["hidden*"], "output": tmp_path / "o.keras"}
        )
    )
    assert [s.layer for s in result.report.layers] == ["hidden1", "hidden2"]


def test_targets_cover_layer_zoo_and_nested_models():
    import keras
    from keras import layers

    inner = keras.Sequential([keras.Input((6,)), layers.Dense(4, name="inner_dense")], name="inner")
    img = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, name="conv")(img)
    x = layers.DepthwiseConv2D(3, name="dw")(x)
    x = layers.SeparableConv2D(4, 1, name="sep")(x)
    x = layers.Conv2DTranspose(2, 3, name="deconv")(x)
    x = layers.Conv1D(3, 2, name="conv1d")(layers.Reshape((-1, 2))(x))
    x = layers.LSTM(5, name="lstm")(x)
    seq = keras.Input((7,), dtype="int32")
    e = layers.Embedding(20, 6, name="emb")(seq)
    e = layers.MultiHeadAttention(2, 3, name="mha")(e, e)
    e = layers.GlobalAveragePooling1D()(e)
    y = layers.Concatenate()([x, e])
    y = inner(layers.Dense(6, name="dense")(y))
    model = keras.Model([img, seq], y)
    found = {t.name: t for t in targets.walk(model)}
    for name in [
        "conv/kernel",
        "dw/kernel",
        "sep/depthwise_kernel",
        "sep/pointwise_kernel",
        "deconv/kernel",
        "conv1d/kernel",
        "lstm/lstm_cell/kernel",
        "lstm/lstm_cell/recurrent_kernel",
        "emb/embeddings",
        "mha/query/kernel",
        "mha/attention_output/kernel",
        "dense/kernel",
        "inner/inner_dense/kernel",
    ]:
        assert name in found, sorted(found)
    assert not any("bias" in n or "gamma" in n for n in found)
    # unit axes: Dense/Conv last, Conv transpose second to last, depthwise the channel axis
    assert found["deconv/kernel"].unit_axis == 2 and found["dw/kernel"].unit_axis == 2
    assert found["conv/kernel"].units == 4 and found["deconv/kernel"].units == 2


def test_matrix_view_round_trips():
    import keras
    import tensorflow as tf

    conv = keras.layers.Conv2DTranspose(3, 2)
    conv.build((None, 5, 5, 4))
    t = targets.walk(keras.Sequential([keras.Input((5, 5, 4)), conv]))[0]
    w = tf.convert_to_tensor(t.variable)
    m = t.to_matrix(w)
    assert tuple(m.shape) == (2 * 2 * 4, 3)
    np.testing.assert_array_equal(t.from_matrix(m).numpy(), w.numpy())


def test_report_json_and_metrics(cli, example_model, example_data, tmp_path):
    report = tmp_path / "r.json"
    out = tmp_path / "o.keras"
    result = cli("prune", example_model, "-s", "0.5", "--data", example_data, "-o", out, "--report", report, "-q")
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["schema_version"] == 1
    assert set(data["metrics"]) == {"before", "after_pruning"}
    assert data["metrics"]["before"]["accuracy"] > 0.9
    assert data["input"]["gzip_bytes"] > 0 and data["output"]["gzip_bytes"] > 0
    assert data["output"]["gzip_bytes"] < data["input"]["gzip_bytes"]  # zeros compress
    for phase in ("load", "score", "mask", "save"):
        assert data["timings_s"][phase] >= 0
    assert abs(data["totals"]["prunable_sparsity"] - 0.5) < 1e-3


def test_table_output_lists_layers(cli, example_model, tmp_path):
    result = cli("prune", example_model, "-s", "0.5", "-o", tmp_path / "o.keras")
    assert result.exit_code == 0
    assert "conv1/kernel" in result.stdout and "prunable total" in result.stdout


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        (["prune", "missing.keras"], 3, "model file not found"),
        (["prune", "{model}", "-s", "1.5"], 2, "sparsity must be in [0, 1)"),
        (["prune", "{model}", "-s", "-0.1"], 2, "sparsity must be in [0, 1)"),
        (["prune", "{model}", "-s", "0.5", "-t", "0.1"], 2, "not both"),
        (["prune", "{model}", "-m", "nosuch"], 2, "nosuch"),
        (["prune", "{data}"], 3, "not a .keras model"),
    ],
)
def test_error_paths_are_one_line(cli, example_model, example_data, args, code, fragment):
    args = [a.format(model=example_model, data=example_data) for a in args]
    result = cli(*args)
    assert result.exit_code == code
    assert fragment in result.stderr
    assert "Traceback" not in result.output and "Traceback" not in result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["prune", "--help"]])
def test_help_does_not_import_tensorflow(argv):
    code = (
        "import sys\n"
        "from prunecli.cli import main\n"
        "try:\n"
        f"    main({argv!r}, prog_name='prunecli')\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
        "assert 'keras' not in sys.modules, 'keras imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Usage" in proc.stdout
