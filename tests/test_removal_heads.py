"""Attention heads: scored, masked and deleted whole (-g head), FFN neurons and Transformer blocks."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from prunecli.config import build_config  # noqa: E402
from prunecli.removal import heads  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402


def _block(x, name: str, heads_n: int = 4, key_dim: int = 4, d_ff: int = 32, pre_norm: bool = False):
    d = int(x.shape[-1])
    h = keras.layers.LayerNormalization(name=f"{name}_ln1")(x) if pre_norm else x
    a = keras.layers.MultiHeadAttention(heads_n, key_dim, name=f"{name}_mha")(h, h)
    x = keras.layers.Add(name=f"{name}_add1")([x, a])
    if not pre_norm:
        x = keras.layers.LayerNormalization(name=f"{name}_ln1")(x)
    h = keras.layers.LayerNormalization(name=f"{name}_ln2")(x) if pre_norm else x
    h = keras.layers.Dense(d_ff, activation="gelu", name=f"{name}_ff1")(h)
    h = keras.layers.Dense(d, name=f"{name}_ff2")(h)
    x = keras.layers.Add(name=f"{name}_add2")([x, h])
    if not pre_norm:
        x = keras.layers.LayerNormalization(name=f"{name}_ln2")(x)
    return x


def bert_like(blocks: int = 2, seq: int = 12, vocab: int = 40, d: int = 16, seed: int = 0):
    keras.utils.set_random_seed(seed)
    ids = keras.Input((seq,), dtype="int32", name="ids")
    x = keras.layers.Embedding(vocab, d, name="tokens")(ids)
    for i in range(blocks):
        x = _block(x, f"b{i}")
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(ids, keras.layers.Dense(3, name="cls")(x), name="bert_like")


def vit_like(blocks: int = 2, seed: int = 1):
    keras.utils.set_random_seed(seed)
    img = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Conv2D(16, 4, strides=4, name="patches")(img)
    x = keras.layers.Reshape((16, 16), name="tokens")(x)
    for i in range(blocks):
        x = _block(x, f"b{i}", heads_n=4, key_dim=8, pre_norm=True)
    x = keras.layers.LayerNormalization(name="final_ln")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(img, keras.layers.Dense(5, name="cls")(x), name="vit_like")


def _config(**kw):
    base = {"model_path": "m.keras", "granularity": "head"}
    base.update(kw)
    return build_config(base, environ={})


def _inputs(model, n=8, seed=3):
    rng = np.random.default_rng(seed)
    x = model.inputs[0]
    if "int" in str(x.dtype):
        return rng.integers(0, 40, size=(n, *x.shape[1:])).astype("int32")
    return rng.standard_normal((n, *x.shape[1:])).astype("float32")


def test_find_sees_every_head_and_its_slices():
    model = bert_like()
    found = heads.find(model, targets_mod.select(model))
    assert [hl.path for hl in found] == ["b0_mha", "b1_mha"]
    hl = found[0]
    assert (hl.num_heads, hl.num_kv_heads, hl.units) == (4, 4, 4)
    # q/k/v kernels + biases, output kernel: 7 parts, kernels named like selection.targets names them
    assert len(hl.parts) == 7
    assert "b0_mha/query/kernel" in {p.name for p in hl.parts}


@pytest.mark.parametrize("builder", [bert_like, pytest.param(vit_like, marks=pytest.mark.slow)])
def test_masked_heads_are_zero_and_shrunk_model_matches(builder, tmp_path):
    model = builder()
    x = _inputs(model)
    tg = targets_mod.select(model)
    masked, masks, section, _notes = heads.run_heads(model, tg, _config(sparsity=0.5))
    assert masked is model
    assert section["heads_removed"] == 4  # 2 of 4 heads in each of 2 layers
    q = model.get_layer("b0_mha")._query_dense.kernel
    gone = section["layers"][0]["removed_heads"]
    assert len(gone) == 2
    assert np.all(np.asarray(q)[:, gone, :] == 0)
    assert not masks["b0_mha/query/kernel"][:, gone, :].any()
    assert masks["b0_mha/query/kernel"][:, [h for h in range(4) if h not in gone], :].all()
    reference = np.asarray(model(x))

    model2 = builder()
    small, masks2, section2, _ = heads.run_heads(model2, targets_mod.select(model2), _config(sparsity=0.5, shrink=True))
    assert small is not model2
    assert small.get_layer("b0_mha")._num_heads == 2
    assert small.get_layer("b1_mha").get_config()["num_heads"] == 2
    np.testing.assert_allclose(np.asarray(small(x)), reference, rtol=1e-4, atol=1e-5)
    assert section2["verification"]["max_rel_diff"] <= 1e-4
    assert section2["params_after"] < section2["params_before"]
    # every head parameter gone: 2 layers * 2 heads * (3 * (d*kd + kd) + kd*d)
    d, kd = (16, 4) if builder is bert_like else (16, 8)
    assert section2["params_before"] - section2["params_after"] == 2 * 2 * (3 * (d * kd + kd) + kd * d)
    assert all(m.all() for m in masks2.values())
    path = tmp_path / "small.keras"
    small.save(path)
    back = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(back(x)), reference, rtol=1e-4, atol=1e-5)


def test_remove_heads_per_layer_and_global():
    model = bert_like(blocks=3)
    tg = targets_mod.select(model)
    _, _, section, _ = heads.run_heads(model, tg, _config(remove_heads=1))
    assert [len(r["removed_heads"]) for r in section["layers"]] == [1, 1, 1]
    model = bert_like(blocks=3)
    _, _, section, _ = heads.run_heads(model, targets_mod.select(model), _config(remove_heads=5, scope="global"))
    assert section["heads_removed"] == 5
    assert all(r["heads_after"] >= 1 for r in section["layers"])


def test_lowest_magnitude_head_goes_first():
    model = bert_like(blocks=1)
    layer = model.get_layer("b0_mha")
    for sub in (layer._query_dense, layer._key_dense, layer._value_dense):
        k = np.asarray(sub.kernel)
        k[:, 2, :] *= 1e-3
        sub.kernel.assign(k)
    o = np.asarray(layer._output_dense.kernel)
    o[2] *= 1e-3
    layer._output_dense.kernel.assign(o)
    _, _, section, _ = heads.run_heads(model, targets_mod.select(model), _config(remove_heads=1))
    assert section["layers"][0]["removed_heads"] == [2]


def test_taylor_scores_need_data_and_use_it():
    model = bert_like(blocks=1)
    tg = targets_mod.select(model)
    with pytest.raises(Exception, match="needs --data"):
        heads.run_heads(model, tg, _config(method="taylor", data="d.npz", remove_heads=1))
    x = _inputs(model, 16)
    y = np.arange(16) % 3
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    _, _, section, _ = heads.run_heads(
        model, tg, _config(method="taylor", data="d.npz", remove_heads=1), data=data, loss_fn=loss
    )
    assert len(section["layers"][0]["removed_heads"]) == 1
    assert any(s > 0 for s in section["layers"][0]["scores"])


@pytest.mark.slow  # 1.1-1.8 s: the full suite (fast subset at its 120 s limit)
def test_heads_summary_and_flops_drop():
    from prunecli.structure import flops

    model = bert_like()
    before = heads.heads_per_layer(model)
    assert before["b0_mha"]["heads"] == 4 and before["b0_mha"]["live_heads"] == 4
    macs_before = flops.count(model)["total"]
    seq_before = heads.macs_at(model, 128)
    small, *_ = heads.run_heads(model, targets_mod.select(model), _config(sparsity=0.5, shrink=True))
    after = heads.heads_per_layer(small)
    assert after["b0_mha"]["heads"] == 2
    rows = heads.heads_table(before, after)
    assert rows[0]["heads_before"] == 4 and rows[0]["heads_after"] == 2
    assert flops.count(small)["total"] < macs_before
    seq_after = heads.macs_at(small, 128)
    assert seq_after["b0_mha"] * 2 == seq_before["b0_mha"]  # every term of attention is linear in heads


def test_config_knows_head_granularity():
    c = _config(remove_heads=2)
    assert c.granularity.kind == "head" and c.remove_heads == 2
    with pytest.raises(Exception, match="--granularity head"):
        build_config({"model_path": "m.keras", "remove_heads": 2}, environ={})


def test_neuron_on_transformer_prunes_ffn_only_and_shrinks():
    from prunecli.structure import transformer

    model = bert_like()
    assert transformer.ffn_pairs(model) == [("b0_ff1", "b0_ff2"), ("b1_ff1", "b1_ff2")]
    tg = targets_mod.select(model)
    kept, notes = transformer.ffn_only(model, tg)
    assert sorted(t.layer_name for t in kept) == ["b0_ff1", "b1_ff1"]
    assert notes and "residual stream" in notes[0]
    # a plain MLP is left alone
    inp = keras.Input((4,))
    mlp = keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(8)(inp)))
    assert len(transformer.ffn_only(mlp, targets_mod.select(mlp))[0]) == 2


@pytest.mark.slow
def test_ffn_units_removed_for_real_and_the_report_keeps_the_runs_targets(tmp_path):
    """-g neuron --shrink on a Transformer: FFN units go for real (both kernels sliced), the saved model
    computes what the masked one did, and the report lists the run's targets: FFN-only before the
    rebuild and after it (the attention and residual-stream layers are not re-selected)."""
    import keras

    from prunecli import prune

    model = bert_like()
    path = tmp_path / "bert.keras"
    model.save(path)
    config = build_config(
        {"model_path": str(path), "granularity": "neuron", "sparsity": 0.5, "scope": "layer", "shrink": True},
        environ={},
    )
    result = prune(config)
    small = result.model
    assert small.get_layer("b0_ff1").units == 16 and small.get_layer("b0_ff2").kernel.shape == (16, 16)
    assert model.count_params() - small.count_params() == 2 * 16 * (16 + 1 + 16)
    assert sorted(row.layer for row in result.report.layers) == ["b0_ff1", "b1_ff1"]
    assert result.report.to_dict()["shrink"]["verification"]["max_rel_diff"] <= 1e-4
    back = keras.saving.load_model(result.output_path)
    x = _inputs(small)
    np.testing.assert_allclose(np.asarray(back(x)), np.asarray(small(x)), rtol=1e-5, atol=1e-6)


def test_run_step_returns_mask_set_and_new_model():
    from prunecli.outputs.report import Timings

    model = bert_like()
    result = heads.run(
        model, targets_mod.select(model), None, None, _config(sparsity=0.5, shrink=True), lambda _m: None, Timings()
    )
    assert result.model is not model and result.model.get_layer("b0_mha")._num_heads == 2
    assert result.sections["heads"]["heads_removed"] == 4
    assert {t.name for t in result.targets} == set(result.masks.masks)
    plain = bert_like()
    masked = heads.run(plain, targets_mod.select(plain), None, None, _config(sparsity=0.5), lambda _m: None, Timings())
    assert not masked.structure_changed
    assert masked.masks.requested["b0_mha/query/kernel"] == 0.5


def test_whole_blocks_are_layer_candidates():
    from prunecli.removal import layers as layer_removal

    for builder in (bert_like, vit_like):
        model = builder(blocks=3)
        candidates, _rows = layer_removal.analyse(model)
        blocks = [c for c in candidates if c.kind == "block"]
        assert [c.name for c in blocks] == ["block:b0_mha", "block:b1_mha", "block:b2_mha"]
        smaller = layer_removal.remove(model, [blocks[1]])
        names = {layer.name for layer in smaller.layers}
        assert "b1_mha" not in names and "b1_ff1" not in names and "b0_mha" in names and "b2_mha" in names
        x = _inputs(model)
        # the removed block is the identity: the model equals the original with block 1 skipped
        assert np.asarray(smaller(x)).shape == np.asarray(model(x)).shape
        expected = keras.Model(model.inputs, model.outputs)  # same function when block 1's output = its input
        assert smaller.count_params() == expected.count_params() - blocks[1].params


def test_block_removal_matches_manual_skip():
    from prunecli.removal import layers as layer_removal

    model = bert_like(blocks=2)
    blocks = [c for c in layer_removal.analyse(model)[0] if c.kind == "block"]
    smaller = layer_removal.remove(model, [blocks[0]])
    # manual: run block 1 (post-norm) and the head on the embedding output
    x = _inputs(model)
    h = model.get_layer("tokens")(x)
    a = model.get_layer("b1_mha")(h, h)
    h = model.get_layer("b1_ln1")(h + a)
    f = model.get_layer("b1_ff2")(model.get_layer("b1_ff1")(h))
    h = model.get_layer("b1_ln2")(h + f)
    want = model.get_layer("cls")(model.get_layer("pool")(h))
    np.testing.assert_allclose(np.asarray(smaller(x)), np.asarray(want), rtol=1e-5, atol=1e-5)


def _hub():
    try:
        import keras_hub as kh
    except ImportError:
        pytest.skip("keras-hub is not installed (pip install prunecli[hub])")
    return kh


def _hub_inputs(n=4, seq=12, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(1, vocab, size=(n, seq)).astype("int32"),
        "padding_mask": np.ones((n, seq), "int32"),
    }


@pytest.mark.slow
def test_keras_hub_bert_heads_deleted_and_model_reloads(tmp_path):
    kh = _hub()
    from prunecli.structure import transformer

    keras.utils.set_random_seed(0)
    model = kh.models.BertBackbone(
        vocabulary_size=50, num_layers=2, num_heads=4, hidden_dim=16, intermediate_dim=32, max_sequence_length=12
    )
    xs = dict(_hub_inputs(), segment_ids=np.zeros((4, 12), "int32"))
    dense_out = np.asarray(model(xs)["sequence_output"])
    small, masks, section, notes = heads.run_heads(
        model, targets_mod.select(model), _config(remove_heads=2, shrink=True)
    )
    assert section["heads_removed"] == 4 and not notes
    masked_out = np.asarray(model(xs)["sequence_output"])  # the input model keeps its heads, masked
    assert not np.allclose(masked_out, dense_out)
    assert [v["live_heads"] for v in heads.heads_per_layer(model).values()] == [2, 2]
    block = small.get_layer("transformer_layer_0")
    assert type(block).__name__ == "HeadPrunedTransformerEncoder" and block.num_heads == 2
    assert block._self_attention_layer._key_dim == 4  # the original head size, not 16 // 2
    assert model.count_params() - small.count_params() == 2 * 2 * (3 * (16 * 4 + 4) + 4 * 16)
    np.testing.assert_allclose(np.asarray(small(xs)["sequence_output"]), masked_out, rtol=1e-4, atol=1e-5)
    assert section["verification"]["max_rel_diff"] <= 1e-4
    assert all(m.all() for m in masks.values())
    path = tmp_path / "bert.keras"
    small.save(path)
    assert transformer.register_for_file(path)  # what loading must call first (imports keras-hub)
    plain = tmp_path / "plain.keras"
    bert_like().save(plain)
    assert not transformer.register_for_file(plain)
    back = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(back(xs)["sequence_output"]), masked_out, rtol=1e-4, atol=1e-5)


def test_keras_hub_grouped_query_attention_removes_whole_groups():
    kh = _hub()
    keras.utils.set_random_seed(0)
    model = kh.models.LlamaBackbone(
        vocabulary_size=50, num_layers=1, num_query_heads=4, num_key_value_heads=2, hidden_dim=16, intermediate_dim=32
    )
    (hl,) = heads.find(model)
    assert (hl.num_heads, hl.num_kv_heads, hl.group) == (4, 2, 2)
    _, masks, section, _ = heads.run_heads(model, targets_mod.select(model), _config(remove_heads=2))
    row = section["layers"][0]
    assert row["heads_after"] == 2 and len(row["removed_heads"]) == 2
    group = row["removed_heads"][0] // 2
    assert row["removed_heads"] == [2 * group, 2 * group + 1]
    key = np.asarray(hl.layer._key_dense.kernel)
    assert np.all(key[:, group, :] == 0) and np.any(key[:, 1 - group, :] != 0)
    query = np.asarray(hl.layer._query_dense.kernel)
    assert np.all(query[:, row["removed_heads"], :] == 0)
    model(_hub_inputs())  # still runs
    small, _, _, notes = heads.run_heads(model, targets_mod.select(model), _config(remove_heads=2, shrink=True))
    block = small.get_layer("transformer_layer_0")  # deleted: tests/test_removal_decoders.py checks the rest
    assert not notes and (block.num_query_heads, block.num_key_value_heads, block.head_dim) == (2, 1, 4)


def test_keras_hub_block_cost_counts_heads_and_drops_when_masked():
    kh = _hub()
    keras.utils.set_random_seed(0)
    model = kh.models.BertBackbone(
        vocabulary_size=50, num_layers=1, num_heads=4, hidden_dim=16, intermediate_dim=32, max_sequence_length=12
    )
    block = model.get_layer("transformer_layer_0")
    dense, nonzero = heads.block_macs(block, [(None, 12, 16)], [(None, 12, 16)])
    # 4 projections 12*16*16 each + 2 products 12*12*4*(4+4)/... + FFN 12*(16*32 + 32*16)
    want = 4 * 12 * 16 * 16 + 12 * 12 * 4 * (4 + 4) + 12 * (16 * 32 + 32 * 16)
    assert dense == want and nonzero == want
    assert heads.block_macs(block, [(None, None, 16)], [(None, None, 16)]) == (None, None)
    heads.run_heads(model, targets_mod.select(model), _config(remove_heads=2))
    _, after = heads.block_macs(block, [(None, 12, 16)], [(None, 12, 16)])
    assert after == want - 4 * 12 * 16 * 16 // 2 - 12 * 12 * 4 * (4 + 4) // 2


def test_plan_shows_heads_before_and_after(tmp_path):
    """`prunecli plan -g head` runs head selection in memory and lists heads per layer, writing nothing."""
    from prunecli import build_config
    from prunecli.run.plan import make_plan

    path = tmp_path / "vit.keras"
    vit_like().save(path)
    plan = make_plan(build_config({"model_path": str(path), "granularity": "head", "sparsity": 0.5}))
    assert plan["heads"] and all(row["live_heads_after"] < row["heads_before"] for row in plan["heads"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vit.keras"]


def test_inspect_lists_attention_heads(tmp_path):
    from prunecli.outputs.inspect import inspect_model

    path = tmp_path / "vit.keras"
    vit_like().save(path)
    found = inspect_model(str(path)).to_dict()["heads"]
    assert found and all(h["heads"] == h["live_heads"] == 4 for h in found.values())


def test_activation_scores_find_a_silent_head_of_a_keras_mha():
    """--method activation on keras.layers.MultiHeadAttention: a head whose values are zero outputs 0
    on every token and scores 0 (the output projection's input, per head)."""
    import tensorflow as tf

    model = bert_like(blocks=1)
    layer = model.get_layer("b0_mha")
    v = np.asarray(layer._value_dense.kernel).copy()
    v[:, 3, :] = 0.0
    layer._value_dense.kernel.assign(v)
    x = _inputs(model, 16)
    data = tf.data.Dataset.from_tensor_slices((x, np.arange(16) % 3)).batch(8)
    config = _config(method="activation", data="d.npz", remove_heads=1)
    _, _, section, _ = heads.run_heads(model, targets_mod.select(model), config, data=data)
    scores = section["layers"][0]["scores"]
    assert section["layers"][0]["removed_heads"] == [3] and scores[3] == 0.0 < min(scores[:3])
    assert "call" not in vars(layer._output_dense)


def test_a_convolutional_network_with_attention_blocks_prunes_its_filters_under_neuron(cli, tmp_path):
    """EQTransformer (bench/ZOO.md) runs Conv1D blocks and self-attention layers of its own class with
    projection matrices, and feed-forward layers prunecli does not read: -g neuron refused the whole model
    as a Transformer without FFN units. Its convolutions' filters are pruned, the attention left whole."""
    import json

    import keras

    @keras.saving.register_keras_serializable(package="test_conv_attention")
    class SeqSelfAttention(keras.layers.Layer):
        def build(self, shape):
            self.wq = self.add_weight(shape=(shape[-1], shape[-1]), name="wq")

        def call(self, x):
            scores = keras.ops.softmax(
                keras.ops.matmul(keras.ops.matmul(x, self.wq), keras.ops.transpose(x, (0, 2, 1)))
            )
            return keras.ops.matmul(scores, x)

    keras.utils.set_random_seed(0)
    inp = keras.Input((32, 3))
    h = keras.layers.Conv1D(8, 5, padding="same", activation="relu", name="conv_a")(inp)
    h = keras.layers.Conv1D(8, 5, padding="same", activation="relu", name="conv_b")(h)
    h = keras.layers.Add()([h, SeqSelfAttention(name="attention")(h)])
    out = keras.layers.Conv1D(1, 1, activation="sigmoid", name="picker")(h)
    path, report = tmp_path / "eqt_like.keras", tmp_path / "r.json"
    keras.Model(inp, out).save(path)
    result = cli("prune", path, "-g", "neuron", "-s", "0.5", "-o", tmp_path / "o.keras", "-r", report, "-q")
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    assert sorted(layer["name"] for layer in r["layers"] if layer["sparsity"] > 0) == ["conv_a/kernel", "conv_b/kernel"]
    assert any("prunes the convolutions' filters only" in n and "attention" in n for n in r["notes"])
