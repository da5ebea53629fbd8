"""What a run leaves whole, and says so: a layer the user froze (trainable=False) unless --include names
it (its weights are not trained, so fine-tuning could not recover what pruning takes: DM3Loc's frozen
one-hot nucleotide table, bench/ZOO.md), and, under --shrink, channels surgery cannot remove."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _frozen_encoding_model(path, frozen_backbone: bool = False):
    """Tokens -> a frozen one-hot Embedding -> Conv1D -> pooled -> Dense head; optionally the convolution
    and hidden Dense inside a frozen nested model (a transfer-learning backbone)."""
    import keras

    rng = np.random.default_rng(0)
    inp = keras.Input((24,), dtype="int32")
    table = np.vstack([np.zeros((1, 4)), np.eye(4)]).astype("float32")  # UNK, A, C, G, T
    encoding = keras.layers.Embedding(5, 4, name="encoding", trainable=False)
    h = encoding(inp)
    encoding.set_weights([table])
    backbone = keras.Sequential(
        [
            keras.Input((24, 4)),
            keras.layers.Conv1D(16, 3, activation="relu", name="conv"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(12, activation="relu", name="hidden"),
        ],
        name="backbone",
    )
    backbone.trainable = not frozen_backbone
    out = keras.layers.Dense(3, activation="softmax", name="head")(backbone(h))
    model = keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.save(path)
    x = rng.integers(0, 5, (64, 24)).astype("int32")
    return model, x, table


@pytest.mark.slow
def test_a_frozen_embedding_is_left_whole_with_a_note(cli, tmp_path):
    """-g neuron and element pruning keep the frozen table as it is and say so; --include prunes it."""
    import keras

    path = tmp_path / "frozen.keras"
    _model, x, table = _frozen_encoding_model(path)
    np.savez(tmp_path / "x.npz", x=x)
    out, report = tmp_path / "out.keras", tmp_path / "r.json"
    for granularity in ("element", "neuron"):
        result = cli("prune", path, "-g", granularity, "-s", "0.5", "-o", out, "-r", report, "--force")
        assert result.exit_code == 0, result.output
        said = " ".join(result.output.split())
        assert "encoding not pruned: frozen (trainable=False)" in said and "to prune it too: --include '*'" in said
        names = {row["name"] for row in json.loads(report.read_text())["layers"]}
        assert "encoding/embeddings" not in names and "backbone/conv/kernel" in names
        np.testing.assert_array_equal(keras.saving.load_model(out).get_layer("encoding").get_weights()[0], table)
    result = cli(
        "prune", path, "-g", "neuron", "-s", "0.5", "--include", "encoding", "-o", out, "-r", report, "--force"
    )
    assert result.exit_code == 0, result.output
    pruned = keras.saving.load_model(out).get_layer("encoding").get_weights()[0]
    assert not np.array_equal(pruned, table) and (~pruned.any(axis=0)).sum() == 2  # 2 of 4 columns gone
    names = {row["name"] for row in json.loads(report.read_text())["layers"]}
    assert names == {"encoding/embeddings"}  # --include NAME alone prunes only NAME: what the note warns of
    # the note's way to prune the frozen layer too: `--include '*'` prunes it beside the rest
    result = cli("prune", path, "-s", "0.5", "--include", "*", "-o", out, "-r", report, "--force")
    assert result.exit_code == 0, result.output
    names = {row["name"] for row in json.loads(report.read_text())["layers"]}
    assert {"encoding/embeddings", "backbone/conv/kernel", "backbone/hidden/kernel", "head/kernel"} <= names


def test_a_frozen_backbone_is_named_and_its_layers_shown_in_inspect(cli, tmp_path):
    """A frozen nested model's layers are left whole (its variables are not trainable); inspect says why;
    a model with nothing else to prune is a one-line error that names the frozen layers."""
    path = tmp_path / "backbone.keras"
    _frozen_encoding_model(path, frozen_backbone=True)
    shown = cli("inspect", path)
    assert shown.exit_code == 0 and "frozen: --include" in shown.output
    report = tmp_path / "r.json"
    result = cli("prune", path, "-s", "0.5", "-o", tmp_path / "o.keras", "-r", report)
    assert result.exit_code == 0, result.output
    names = {row["name"] for row in json.loads(report.read_text())["layers"]}
    assert names == {"head/kernel"}
    refused = cli("prune", path, "-s", "0.5", "--exclude", "head", "-o", tmp_path / "n.keras")
    assert refused.exit_code != 0 and not (tmp_path / "n.keras").exists()
    assert "no prunable layers" in refused.output and "backbone/conv" in refused.output


def test_a_budget_a_frozen_backbone_blocks_names_it(cli, tmp_path):
    """--target params=0.5 on a model whose frozen backbone holds most parameters cannot be met: the
    one-line error names the frozen layers and the way to prune them."""
    import keras

    base = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(128, name="b1"), keras.layers.Dense(64, name="b2")], name="backbone"
    )
    base.trainable = False
    inp = keras.Input((32,))
    head = keras.layers.Dense(3, name="out")(keras.layers.Dense(16, name="h1")(base(inp)))
    path = tmp_path / "transfer.keras"
    keras.Model(inp, head).save(path)
    result = cli("prune", path, "--target", "params=0.5", "-o", tmp_path / "b.keras")
    assert result.exit_code != 0 and not (tmp_path / "b.keras").exists()
    assert (
        "frozen (trainable=False) and left whole: backbone/b1, backbone/b2 (to prune them too: --include '*')"
        in result.output
    )


def test_shrink_leaves_whole_the_channels_it_cannot_remove(tmp_path):
    """-g neuron --shrink on a convolution whose output reaches a Lambda (surgery cannot slice one):
    its channels are not masked (they would cost accuracy and stay in the file: FaceNet's Lambdas,
    bench/ZOO.md), a note says why, and the layer that can shrink still does; without --shrink the
    masks are the product, so the layer is masked as asked."""
    import keras

    from prunecli import build_config, prune

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 3))
    fed = keras.layers.Conv1D(8, 3, activation="relu", name="fed")(inp)
    scaled = keras.layers.Lambda(lambda t: t * 0.5, name="halve")(fed)
    free = keras.layers.Conv1D(8, 3, activation="relu", name="free")(scaled)
    out = keras.layers.Dense(2, name="out")(keras.layers.GlobalAveragePooling1D()(free))
    path = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(path)
    base = {"model_path": str(path), "granularity": "neuron", "sparsity": 0.5, "unsafe": True}
    shrunk = prune(build_config({**base, "shrink": True, "output": str(tmp_path / "s.keras")}, environ={}))
    rows = {row["name"]: row for row in shrunk.report.to_dict()["layers"]}
    assert rows["fed/kernel"]["sparsity"] == 0.0
    assert any("fed: 8 of 8 channels not pruned: --shrink cannot remove them" in n for n in shrunk.report.notes)
    small = keras.saving.load_model(tmp_path / "s.keras", safe_mode=False)
    assert small.get_layer("free").filters == 4 and small.get_layer("fed").filters == 8
    masked = prune(build_config({**base, "output": str(tmp_path / "m.keras")}, environ={}))
    assert {row["name"]: row for row in masked.report.to_dict()["layers"]}["fed/kernel"]["sparsity"] == 0.5


def test_a_model_saved_frozen_whole_is_pruned_and_fine_tuning_it_is_refused(cli, tmp_path):
    """model.trainable = False before saving (as for inference) is no choice of layers: every layer is
    pruned, with a note. Fine-tuning could train none of them, so --epochs is a one-line error before any
    work (it was an internal error in the optimizer, with nothing trainable)."""
    import keras

    inp = keras.Input((8,))
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(keras.layers.Dense(16, name="hidden")(inp)))
    model.trainable = False
    path = tmp_path / "inference.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(64, 8)).astype("float32"), y=rng.integers(0, 3, 64))
    report = tmp_path / "r.json"
    result = cli("prune", path, "-s", "0.5", "-o", tmp_path / "o.keras", "-r", report)
    assert result.exit_code == 0, result.output
    assert {row["name"] for row in json.loads(report.read_text())["layers"]} == {"hidden/kernel", "out/kernel"}
    assert "every layer is frozen (trainable=False" in " ".join(result.output.split())
    shown = cli("inspect", path)  # inspect shows the targets prune takes
    assert shown.exit_code == 0 and "frozen: --include" not in shown.output
    refused = cli("prune", path, "-s", "0.5", "--epochs", "2", "-d", tmp_path / "d.npz", "-o", tmp_path / "t.keras")
    assert refused.exit_code == 2 and not (tmp_path / "t.keras").exists()
    assert "fine-tuning would train none of them" in refused.output
