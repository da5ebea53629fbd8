"""`prunecli plan` writes nothing and agrees with `prune`; theoretical FLOPs match hand counts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from prunecli import build_config, prune
from prunecli.run.plan import make_plan
from prunecli.structure import flops


def _snapshot(folder):
    return sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))


@pytest.fixture
def workdir(mlp_files, tmp_path):
    shutil.copy(mlp_files["keras"], tmp_path / "mlp.keras")
    shutil.copy(mlp_files["data"], tmp_path / "data.npz")
    return tmp_path


def test_plan_writes_nothing_and_prints_json(cli, workdir):
    before = _snapshot(workdir)
    res = cli(
        "plan",
        workdir / "mlp.keras",
        "-g",
        "input",
        "--keep-features",
        "5",
        "--data",
        workdir / "data.npz",
        "--shrink",
        "--json",
    )
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert _snapshot(workdir) == before
    assert len(plan["kept_features"]["features"]) == 5
    assert plan["after"]["params"] < plan["before"]["params"]
    hidden = next(r for r in plan["layers"] if r["layer"] == "hidden1")
    assert (hidden["params_before"], hidden["params_after"]) == (20 * 32 + 32, 5 * 32 + 32)
    table = cli("plan", workdir / "mlp.keras", "-g", "layer", "--remove-layers", "1")
    assert table.exit_code != 0 and "no layer can be removed" in table.output  # a plain MLP has no candidate
    assert _snapshot(workdir) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "options",
    [
        {"granularity": "input", "keep_features": 6, "shrink": True, "feature_score": "gradient"},
        {"granularity": "input", "sparsity": 0.5},
        {"granularity": "neuron", "sparsity": 0.5, "method": "l1-norm"},
        {"granularity": "element", "sparsity": 0.7, "scope": "global"},
    ],
)
def test_plan_numbers_match_what_prune_does(workdir, options):
    settings = {"model_path": str(workdir / "mlp.keras"), "data": str(workdir / "data.npz"), **options}
    plan = make_plan(build_config(settings))
    result = prune(build_config({**settings, "output": str(workdir / "out.keras")}))
    report = result.report.to_dict()
    assert plan["after"]["params"] == report["totals"]["params"]
    assert plan["after"]["nonzeros"] == report["totals"]["nonzeros"]
    assert plan["after"]["flops"] == report["flops"]["after"]
    assert plan["after"]["flops_nonzero"] == report["flops"]["after_nonzero"]
    assert plan.get("kept_features") == report.get("kept_features")
    if options["granularity"] == "neuron":
        hidden = next(r for r in plan["layers"] if r["layer"] == "hidden1")
        assert (hidden["live_units_before"], hidden["live_units_after"]) == (32, 16)


@pytest.mark.slow  # a prune beside the plan (4 s): the full suite
def test_plan_counts_a_recurrent_layers_units_and_live_units(tmp_path):
    """A recurrent layer's row counts its output units (both directions of a concatenating Bidirectional),
    live while any gate column holds a weight: what --shrink keeps."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((10,), dtype="int32")
    x = keras.layers.Embedding(40, 8, name="emb")(inp)
    x = keras.layers.Bidirectional(keras.layers.GRU(12, return_sequences=True), name="bigru")(x)
    x = keras.layers.LSTM(16, name="lstm")(x)
    keras.Model(inp, keras.layers.Dense(3, name="out")(x)).save(tmp_path / "rnn.keras")
    settings = {"model_path": str(tmp_path / "rnn.keras"), "granularity": "neuron", "sparsity": 0.5, "shrink": True}
    plan = make_plan(build_config(settings))
    rows = {r["layer"]: r for r in plan["layers"]}
    assert rows["bigru"]["live_units_before"] == 24 and rows["lstm"]["live_units_before"] == 16
    result = prune(build_config({**settings, "output": str(tmp_path / "out.keras")}))
    shrunk = result.model
    assert rows["bigru"]["live_units_after"] == 2 * shrunk.get_layer("bigru").forward_layer.units < 24
    assert rows["lstm"]["live_units_after"] == shrunk.get_layer("lstm").units < 16


def test_plan_layer_pruning_matches_prune(tmp_path):
    import keras
    from test_removal_layers import build_residual

    model = build_residual()
    model.save(tmp_path / "res.keras")
    settings = {"model_path": str(tmp_path / "res.keras"), "granularity": "layer", "remove_layers": 2}
    plan = make_plan(build_config(settings))
    report = prune(build_config({**settings, "output": str(tmp_path / "o.keras")})).report.to_dict()
    assert plan["removed_layers"] == report["removed_layers"] and len(plan["removed_layers"]) >= 2
    assert (
        plan["after"]["params"]
        == report["totals"]["params"]
        == keras.saving.load_model(tmp_path / "o.keras").count_params()
    )
    assert plan["after"]["flops"] == report["flops"]["after"] < plan["before"]["flops"]
    gone = {r["layer"] for r in plan["layers"] if r["removed"]}
    assert gone == {name for name in plan["removed_layers"] if not name.startswith("add")}


def test_flops_of_the_example_cnn_by_hand(example_model):
    import keras

    counted = flops.count(keras.saving.load_model(example_model))
    per_layer = {row["layer"]: row["macs"] for row in counted["layers"]}
    assert per_layer == {
        "conv1": 8 * 8 * 3 * 3 * 1 * 16,
        "bn1": 0,
        "conv2": 8 * 8 * 3 * 3 * 16 * 32,
        "dense1": 512 * 64,
        "predictions": 64 * 10,
    }
    assert counted["total"] == sum(per_layer.values()) and counted["partial"] is False


def test_flops_formulas_for_other_layers():
    import keras
    from keras import layers

    img = keras.Input((8, 8, 4))
    seq = keras.Input((10,), dtype="int32")
    parts = {
        "dw": layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(img),
        "sep": layers.SeparableConv2D(6, 3, name="sep")(img),
        "tr": layers.Conv2DTranspose(5, 3, strides=2, name="tr")(img),
        "grp": layers.Conv2D(8, 1, groups=2, name="grp")(img),
    }
    emb = layers.Embedding(50, 8, name="emb")(seq)
    att = layers.MultiHeadAttention(2, 4, name="att")(emb, emb)
    rnn = layers.GRU(3, name="gru")(att)
    ein = layers.EinsumDense("abc,cd->abd", output_shape=(10, 7), name="ein")(emb)
    outputs = [layers.Flatten()(t) for t in parts.values()] + [rnn, layers.Flatten()(ein)]
    model = keras.Model([img, seq], outputs)
    model.get_layer("grp").kernel.assign(np.zeros((1, 1, 2, 8), "float32"))
    macs = {row["layer"]: (row["macs"], row["nonzero_macs"]) for row in flops.count(model)["layers"]}
    assert macs["dw"][0] == 64 * 3 * 3 * 4 * 2
    assert macs["sep"][0] == 36 * (3 * 3 * 4 + 4 * 6)
    assert macs["tr"][0] == 64 * 3 * 3 * 5 * 4  # every input position meets the whole kernel
    assert macs["grp"] == (64 * 2 * 8, 0)  # groups: each output reads in/groups channels; all zero here
    assert macs["emb"] == (0, 0)
    assert macs["att"][0] == 3 * 10 * 8 * 2 * 4 + 10 * (2 * 4) * 8 + 10 * 10 * 2 * (4 + 4)
    assert macs["gru"][0] == 10 * (8 * 9 + 3 * 9)
    assert macs["ein"][0] == 10 * 7 * 8


@pytest.mark.slow
def test_an_open_sequence_length_is_counted_at_seq_len_or_said_to_be_unknown(cli, tmp_path):
    """A KerasHub causal LM leaves its sequence length open: without --seq-len the plan says its
    multiply-adds are not counted (never "0 -> 0"); with it, every block and the tied LM head are
    counted at that length (block: q/k/v/o projections, both attention products, the SwiGLU FFN)."""
    keras_hub = pytest.importorskip("keras_hub")
    d, heads, groups, ffn, vocab, layers, seq = 16, 4, 2, 32, 50, 2, 12
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=vocab,
        num_layers=layers,
        num_query_heads=heads,
        num_key_value_heads=groups,
        hidden_dim=d,
        intermediate_dim=ffn,
    )
    lm = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    assert flops.count(lm)["total"] is None and flops.count(lm)["partial"]
    hd = d // heads
    block = seq * d * hd * (2 * heads + 2 * groups) + 2 * seq * seq * heads * hd + 3 * seq * d * ffn
    counted = flops.count(lm, seq)
    assert not counted["partial"] and counted["total"] == layers * block + seq * d * vocab
    path = tmp_path / "lm.keras"
    lm.save(path)
    out = cli("plan", path, "-s", "0.5").output
    assert "not counted (an open input length: give --seq-len)" in " ".join(out.split())
    out = cli("plan", path, "-s", "0.5", "--seq-len", str(seq)).output
    assert f"{layers * block + seq * d * vocab:,} ->" in " ".join(out.split())


def test_plan_names_the_prune_steps_it_does_not_run():
    """plan writes no model: --epochs, --max-accuracy-drop and --export given to it are said to be not run,
    where they once passed silently."""
    from prunecli.run.plan import _not_run

    base = {"model_path": "m.keras", "data": "d.npz"}
    assert _not_run(build_config(base)) == ()
    config = build_config({**base, "epochs": 2, "max_accuracy_drop": 0.01, "export": ("tflite",)})
    (note,) = _not_run(config)
    assert "--epochs, --max-accuracy-drop, --export not run" in note
