"""KerasHub decoders (Llama, Mistral, Qwen, Qwen3): key/value groups and SwiGLU units deleted for real.

Tiny configs built with keras_hub (no download): each shrunk model is checked against the masked model
it came from, after a save/load round trip too, and its parameter count against the slices removed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_close_rel, greedy_tokens, reloaded_hub, step_config, token_inputs

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli.config import build_config  # noqa: E402
from prunecli.removal import ffn, heads  # noqa: E402
from prunecli.structure import decoders, keras_graph, transformer  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402

D, HQ, HKV, FF, VOCAB = 16, 4, 2, 32, 50
HD = D // HQ  # the head size every rebuilt block must keep
SIZES = dict(vocabulary_size=VOCAB, num_query_heads=HQ, num_key_value_heads=HKV, hidden_dim=D, intermediate_dim=FF)
FAMILIES = {
    "llama": lambda layers: kh.models.LlamaBackbone(num_layers=layers, **SIZES),
    "mistral": lambda layers: kh.models.MistralBackbone(num_layers=layers, sliding_window=8, **SIZES),
    "qwen": lambda layers: kh.models.QwenBackbone(num_layers=layers, **SIZES),
    "qwen3": lambda layers: kh.models.Qwen3Backbone(num_layers=layers, head_dim=HD, **SIZES),
}


def backbone(family: str = "llama", layers: int = 2, seed: int = 0):
    keras.utils.set_random_seed(seed)
    model = FAMILIES[family](layers)
    rng = np.random.default_rng(seed + 1)
    for w in model.weights:  # distinct scales, and Qwen's q/k/v biases non-zero (they follow their head)
        w.assign((np.asarray(w) * rng.uniform(0.5, 2.0) + (0.05 * rng.standard_normal(w.shape))).astype("float32"))
    return model


def inputs(n: int = 3, seq: int = 10, seed: int = 0):
    return token_inputs(VOCAB, n, seq, seed)


def _attention_shapes(block):
    q, k, v, o = (sub.kernel.shape for sub, *_ in keras_graph.attention_projections(decoders.attention(block)))
    return tuple(q), tuple(k), tuple(v), tuple(o)


def test_gqa_groups_and_their_query_heads_are_deleted(tmp_path):
    model = backbone()
    x = inputs()
    small, masks, section, notes = heads.run_heads(
        model, targets_mod.select(model), step_config("head", sparsity=0.5, shrink=True)
    )
    assert not notes and small is not model
    masked = np.asarray(model(x))  # run_heads masked the input model in place
    for row in section["layers"]:
        g = row["removed_heads"][0] // 2  # one whole group of 2 query heads per block
        assert row["removed_heads"] == [2 * g, 2 * g + 1] and row["deleted"]
    for i in range(2):
        block = small.get_layer(f"transformer_layer_{i}")
        assert type(block).__name__ == "PrunedLlamaTransformerDecoder"
        assert (block.num_query_heads, block.num_key_value_heads, block.head_dim) == (2, 1, HD)
        assert _attention_shapes(block) == ((D, 2, HD), (D, 1, HD), (D, 1, HD), (2, HD, D))
    per_block = D * 2 * HD + 2 * D * HD + 2 * HD * D  # q, k, v and output slices of one group
    assert model.count_params() - small.count_params() == 2 * per_block
    assert section["params_before"] - section["params_after"] == 2 * per_block
    assert_close_rel(small(x), masked)
    assert section["verification"]["max_rel_diff"] <= 1e-4
    assert all(m.all() for m in masks.values())
    assert_close_rel(reloaded_hub(small, tmp_path / "small.keras")(x), masked)
    assert [v["heads"] for v in heads.heads_per_layer(small).values()] == [2, 2]


def test_swiglu_units_go_from_gate_up_and_down_together(tmp_path):
    model = backbone()
    x = inputs()
    tg, _notes = transformer.ffn_only(model, targets_mod.select(model))
    assert sorted({t.layer_name.split("/")[-1] for t in tg}) == [
        "feedforward_gate_dense",
        "feedforward_intermediate_dense",
        "feedforward_output_dense",
    ]
    same, masks, section, _ = ffn.run_ffn(model, tg, step_config("neuron", sparsity=0.5))
    assert same is model and section["units_removed"] == 2 * FF // 2
    gone = section["layers"][0]["removed_units"]
    block = model.get_layer("transformer_layer_0")
    gate, up, down = keras_graph.hub_swiglu(block)
    assert not np.asarray(gate.kernel)[:, gone].any() and not np.asarray(up.kernel)[:, gone].any()
    assert not np.asarray(down.kernel)[gone].any()
    assert not masks["transformer_layer_0/feedforward_output_dense/kernel"][gone].any()
    masked = np.asarray(model(x))

    model2 = backbone()
    tg2, _ = transformer.ffn_only(model2, targets_mod.select(model2))
    small, masks2, section2, _ = ffn.run_ffn(model2, tg2, step_config("neuron", sparsity=0.5, shrink=True))
    block = small.get_layer("transformer_layer_0")
    assert type(block).__name__ == "PrunedLlamaTransformerDecoder" and block.intermediate_dim == FF // 2
    assert [tuple(d.kernel.shape) for d in keras_graph.hub_swiglu(block)] == [(D, 16), (D, 16), (16, D)]
    assert model2.count_params() - small.count_params() == 2 * (FF // 2) * 3 * D
    assert_close_rel(small(x), masked)  # the same units went: scores are deterministic
    assert section2["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks2.values())
    assert {t.name for t in targets_mod.carry_over(tg2, small)} == set(masks2)
    assert_close_rel(reloaded_hub(small, tmp_path / "small.keras")(x), masked)


def test_a_unit_is_scored_by_all_three_projections():
    """A unit small in one projection only is removed first: it adds silu(x.g) (x.u) d, a product."""
    for which in range(3):
        model = backbone(layers=1)
        f = ffn.find(model)[0]
        var, axis = f.slices()[which]
        arr = np.asarray(var)
        index = [slice(None)] * 2
        index[axis] = 5
        arr[tuple(index)] *= 1e-3
        var.assign(arr)
        tg, _ = transformer.ffn_only(model, targets_mod.select(model))
        _, _, section, _ = ffn.run_ffn(model, tg, step_config("neuron", sparsity=1 / FF))
        assert section["layers"][0]["removed_units"] == [5], which


@pytest.mark.slow
@pytest.mark.parametrize("family", ["mistral", "qwen", "qwen3"])
def test_other_families_lose_groups_and_units_for_real(family, tmp_path):
    model = backbone(family, layers=1)
    x = inputs()
    assert [(hl.num_heads, hl.num_kv_heads, hl.shrink_blocker) for hl in heads.find(model)] == [(HQ, HKV, None)]
    small, _, section, notes = heads.run_heads(
        model, targets_mod.select(model), step_config("head", remove_heads=2, shrink=True)
    )
    assert not notes and section["heads_removed"] == 2
    tg, _ = transformer.ffn_only(small, targets_mod.select(small))
    smaller, _, _, _ = ffn.run_ffn(small, tg, step_config("neuron", sparsity=0.25, shrink=True))
    masked = np.asarray(small(x))  # heads and units masked in `model`/`small`, deleted in `smaller`
    block = smaller.get_layer("transformer_layer_0")
    assert (block.num_query_heads, block.num_key_value_heads, block.intermediate_dim) == (2, 1, 24)
    assert _attention_shapes(block)[0] == (D, 2, HD)
    assert_close_rel(smaller(x), masked)
    assert_close_rel(reloaded_hub(smaller, tmp_path / "small.keras")(x), masked)


@pytest.mark.slow  # 1.5-2.5 s: the full suite (fast subset over its 120 s limit)
def test_global_scope_gives_blocks_different_widths():
    model = backbone(layers=2)
    f1 = ffn.find(model)[1]
    for var, _axis in f1.slices():  # block 1's units all weaker than block 0's
        var.assign(np.asarray(var) * 1e-2)
    x = inputs()
    tg, _ = transformer.ffn_only(model, targets_mod.select(model))
    small, _, section, _ = ffn.run_ffn(
        model, tg, step_config("neuron", sparsity=0.5, scope="global", normalize="none", shrink=True)
    )
    widths = [small.get_layer(f"transformer_layer_{i}").intermediate_dim for i in range(2)]
    assert sum(widths) == FF and widths[1] < widths[0], widths
    assert_close_rel(small(x), model(x))


def test_neuron_on_decoders_is_a_structural_step():
    from prunecli import removal

    llama = backbone(layers=1)
    assert removal.structural("neuron", llama) and removal.step_for("neuron", llama) is ffn.run
    assert removal.structural("head", llama) and not removal.structural("element", llama)
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    assert not removal.structural("neuron", plain) and not removal.structural("neuron")
    tg, _ = transformer.ffn_only(llama, targets_mod.select(llama))
    config = step_config("neuron", sparsity=0.5, method="activation", data="d.npz")
    with pytest.raises(Exception, match="scores with"):
        ffn.run_ffn(llama, tg, config.replace(method="apoz"))  # a method the SwiGLU step does not know


def test_taylor_scores_read_the_data():
    import tensorflow as tf

    model = backbone(layers=1)
    x = inputs(8)
    y = np.asarray(model(x)) * 0  # regress towards zero: any non-trivial loss will do
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    tg, _ = transformer.ffn_only(model, targets_mod.select(model))
    _, _, section, _ = ffn.run_ffn(
        model,
        tg,
        step_config("neuron", sparsity=0.25, method="taylor", data="d.npz"),
        data=data,
        loss_fn=keras.losses.MeanSquaredError(),
    )
    assert section["units_removed"] == 8


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["head", "neuron"])
def test_cli_shrinks_a_saved_llama(cli, tmp_path, granularity):
    model = backbone()
    path = tmp_path / "llama.keras"
    model.save(path)
    out, report = tmp_path / "out.keras", tmp_path / "r.json"
    res = cli("prune", path, "-g", granularity, "-s", "0.5", "--shrink", "--no-speed", "-o", out, "-r", report, "-q")
    assert res.exit_code == 0, res.output
    transformer.register_for_file(out)
    small = keras.saving.load_model(out)
    written = json.loads(report.read_text())
    section = written["heads" if granularity == "head" else "ffn"]
    assert section["verification"]["max_rel_diff"] <= 1e-4
    block = small.get_layer("transformer_layer_1")
    if granularity == "head":
        assert (block.num_query_heads, block.num_key_value_heads) == (2, 1)
    else:
        assert block.intermediate_dim == FF // 2
    assert small.count_params() < model.count_params()
    assert np.isfinite(np.asarray(small(inputs()))).all()


def test_whole_decoder_blocks_are_layer_candidates(tmp_path):
    from prunecli.removal import layers as layer_removal

    model = backbone(layers=3)
    x = inputs()
    blocks = [c for c in layer_removal.analyse(model)[0] if c.kind == "block"]
    assert [c.name for c in blocks] == [f"block:transformer_layer_{i}" for i in range(3)]
    smaller = layer_removal.remove(model, [blocks[1]])
    assert [b.name for b in decoders.blocks(smaller)] == ["transformer_layer_0", "transformer_layer_2"]
    assert smaller.count_params() == model.count_params() - blocks[1].params
    # block 1 skipped by hand: block 2 reads block 0's output
    h = model.get_layer("token_embedding")(x["token_ids"])
    for i in (0, 2):
        h = model.get_layer(f"transformer_layer_{i}")(h, decoder_padding_mask=x["padding_mask"])
    want = model.get_layer("sequence_output_layernorm")(h)
    assert_close_rel(smaller(x), want)
    assert_close_rel(reloaded_hub(smaller, tmp_path / "small.keras")(x), want)


@pytest.mark.slow
def test_causal_lm_keeps_generating_after_groups_and_units_go(tmp_path):
    """LlamaCausalLM around a backbone built from a config: after a global head selection (blocks keep
    different key/value groups) and a unit shrink, it is still a LlamaCausalLM whose generate() gives
    the masked model's tokens, before and after a save/load round trip."""
    lm = kh.models.LlamaCausalLM(backbone=backbone(layers=2), preprocessor=None)
    attn = decoders.attention(lm.backbone.get_layer("transformer_layer_1"))
    for sub, *_ in keras_graph.attention_projections(attn):  # block 1's heads weaker: it loses a group
        sub.kernel.assign(np.asarray(sub.kernel) * 0.1)
    config = step_config("head", sparsity=0.25, scope="global", normalize="none", shrink=True)
    small, _, section, notes = heads.run_heads(lm, targets_mod.select(lm), config)
    assert not notes and isinstance(small, kh.models.LlamaCausalLM) and type(small).__name__ == "PrunedLlamaCausalLM"
    assert [int(b.num_key_value_heads) for b in small.backbone.transformer_layers] == [2, 1]
    prompt = {"token_ids": np.zeros((2, 9), "int32"), "padding_mask": np.zeros((2, 9), bool)}
    prompt["token_ids"][:, :3] = [[3, 4, 5], [7, 8, 9]]
    prompt["padding_mask"][:, :3] = True
    # KerasHub's own cache on the masked model, ours (one slice per block) on the smaller one
    np.testing.assert_array_equal(greedy_tokens(small, prompt), greedy_tokens(lm, prompt))
    # score() through the rebuilt backbone (blocks with different key/value groups), as KerasHub's on `lm`
    scored = {"token_ids": inputs()["token_ids"], "padding_mask": inputs()["padding_mask"]}
    assert_close_rel(small.score(**scored), lm.score(**scored))
    tg, _ = transformer.ffn_only(small, targets_mod.select(small))
    smaller, _, _, _ = ffn.run_ffn(small, tg, step_config("neuron", sparsity=0.5, shrink=True))
    assert [int(b.intermediate_dim) for b in smaller.backbone.transformer_layers] == [FF // 2] * 2
    x = inputs()
    assert_close_rel(smaller(x), small(x))  # `small` is masked where `smaller` lost its units
    want = greedy_tokens(small, prompt)
    assert (want[:, 3:] != 0).any()  # it generated something
    back = reloaded_hub(smaller, tmp_path / "lm.keras")
    assert type(back).__name__ == "PrunedLlamaCausalLM"
    np.testing.assert_array_equal(greedy_tokens(back, prompt), want)


@pytest.mark.slow
def test_whole_blocks_leave_a_causal_lm(cli, tmp_path):
    """-g layer on a LlamaCausalLM: its backbone's blocks are the candidates, the ones chosen leave the
    backbone's list, and the smaller causal LM computes what the kept blocks compute by hand and keeps
    generating after a save/load round trip. Anything else inside the backbone is refused."""
    from prunecli.errors import InputError
    from prunecli.removal import layers as layer_removal

    lm = kh.models.LlamaCausalLM(backbone=backbone(layers=3), preprocessor=None)
    candidates = layer_removal.analyse(lm)[0]
    blocks = [c for c in candidates if c.kind == "block"]
    assert [c.name for c in blocks] == [f"block:transformer_layer_{i}" for i in range(3)]
    smaller = layer_removal.remove(lm, [blocks[1]])
    assert type(smaller).__name__ == "PrunedLlamaCausalLM"
    assert [b.name for b in smaller.backbone.transformer_layers] == ["transformer_layer_0", "transformer_layer_2"]
    assert smaller.count_params() == lm.count_params() - blocks[1].params
    x = inputs()
    h = lm.backbone.get_layer("token_embedding")(x["token_ids"])
    for i in (0, 2):
        h = lm.backbone.get_layer(f"transformer_layer_{i}")(h, decoder_padding_mask=x["padding_mask"])
    h = lm.backbone.get_layer("sequence_output_layernorm")(h)
    want = lm.backbone.get_layer("token_embedding")(h, reverse=True)  # tied LM head
    assert_close_rel(smaller(x), want)
    others = [c for c in candidates if c.kind != "block"]
    if others:  # e.g. the final norm: not a block, not removed from a task's backbone
        with pytest.raises(InputError, match="only whole decoder blocks"):
            layer_removal.remove(lm, [others[0]])

    path, out, report = tmp_path / "lm.keras", tmp_path / "out.keras", tmp_path / "r.json"
    lm.save(path)
    res = cli("prune", path, "-g", "layer", "--remove-layers", "1", "--no-speed", "-o", out, "-r", report, "-q")
    assert res.exit_code == 0, res.output
    assert len(json.loads(report.read_text())["removed_layers"]) == 1
    transformer.register_for_file(out)
    back = keras.saving.load_model(out)
    assert len(back.backbone.transformer_layers) == 2
    prompt = {"token_ids": np.zeros((1, 8), "int32"), "padding_mask": np.zeros((1, 8), bool)}
    prompt["token_ids"][:, :2], prompt["padding_mask"][:, :2] = [3, 4], True
    assert greedy_tokens(back, prompt).shape == (1, 8)


def test_a_plan_of_decoder_units_is_refused_by_apply(cli, tmp_path):
    """-g neuron on decoder blocks removes SwiGLU units in one rebuild (a structural step): apply does
    not replay it, and says so in one line (exit 2) instead of a shape mismatch."""
    path, plan = tmp_path / "llama.keras", tmp_path / "plan.zip"
    backbone().save(path)
    res = cli("prune", path, "-g", "neuron", "-s", "0.5", "--save-plan", plan, "-o", tmp_path / "p.keras", "-q")
    assert res.exit_code == 0, res.output
    res = cli("apply", plan, path, "-o", tmp_path / "a.keras", "-q")
    assert res.exit_code == 2, res.output
    assert "removes structure (-g neuron on KerasHub decoder blocks)" in res.output
    assert not (tmp_path / "a.keras").exists()


@pytest.mark.slow
def test_report_shows_each_block_before_and_after_and_tokens_per_second(cli, tmp_path):
    """--shrink on a causal LM: the `decoder` section lists every block's heads, groups, units, width,
    parameters and multiply-adds before and after, and prefill/decode tokens/s measured on both."""
    from prunecli.outputs import decoder_blocks

    lm = kh.models.LlamaCausalLM(backbone=backbone(), preprocessor=None)
    path = tmp_path / "lm.keras"
    lm.save(path)
    out, report = tmp_path / "out.keras", tmp_path / "r.json"
    res = cli("prune", path, "-g", "head", "-s", "0.5", "--shrink", "--seq-len", "32", "-o", out, "-r", report)
    assert res.exit_code == 0, res.output
    assert "Decoder blocks (multiply-adds at 32 tokens)" in res.output and "tokens/s" in res.output
    section = json.loads(report.read_text())["decoder"]
    assert section["seq_len"] == 32 and len(section["blocks"]) == 2
    for row in section["blocks"]:
        before, after = row["before"], row["after"]
        assert (before["query_heads"], before["kv_groups"], after["query_heads"], after["kv_groups"]) == (4, 2, 2, 1)
        assert before["head_dim"] == after["head_dim"] == HD and before["ffn_units"] == after["ffn_units"] == FF
        assert after["params"] < before["params"]
        assert after["macs"] == decoder_blocks.block_macs(after, 32) < before["macs"]
    assert section["params_after"] == sum(r["after"]["params"] for r in section["blocks"]) < section["params_before"]
    for kind in ("prefill", "decode"):
        speed = section["tokens_per_s"][kind]
        assert speed["before"] > 0 and speed["after"] > 0
        assert speed["ratio"] == pytest.approx(speed["after"] / speed["before"], rel=1e-2)


def test_block_macs_count_projections_products_and_the_ffn():
    from prunecli.outputs import decoder_blocks

    shape = {"query_heads": 4, "kv_groups": 2, "head_dim": 8, "ffn_units": 64, "ffn_kernels": 3, "hidden": 32}
    seq = 10
    projections = seq * 32 * 8 * (4 + 2 + 2 + 4)  # q, k, v, o
    assert decoder_blocks.block_macs(shape, seq) == projections + 2 * seq * seq * 4 * 8 + 3 * seq * 32 * 64


@pytest.mark.slow
def test_fit_target_on_decoder_blocks_removes_units_to_fit(cli, tmp_path):
    """--target params=F on KerasHub decoder blocks: -g neuron's SwiGLU step picks the sparsity whose
    removed units fit (it once ran at the default sparsity, the target silently ignored); the report's
    target section says what was reached. Other target kinds are one line, exit 2, nothing written."""
    from prunecli.config.target import TOLERANCE

    path, out, report = tmp_path / "llama.keras", tmp_path / "out.keras", tmp_path / "r.json"
    dense = backbone(layers=3)
    dense.save(path)
    res = cli("prune", path, "--target", "params=0.8", "--no-speed", "-o", out, "-r", report, "-q")
    assert res.exit_code == 0, res.output
    section = json.loads(report.read_text())["target"]
    transformer.register_for_file(out)
    params = keras.saving.load_model(out).count_params()
    assert section["achieved_value"] == params == section["predicted"]
    assert 0.8 * (1 - TOLERANCE) <= params / dense.count_params() <= 0.8 and section["within_tolerance"]
    refused = cli("prune", path, "-g", "hidden", "--target", "flops=0.5", "-o", tmp_path / "no.keras", "-q")
    assert refused.exit_code == 2 and "take params=F only" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and not (tmp_path / "no.keras").exists()
    open_length = cli("prune", path, "--target", "flops=0.5", "-o", tmp_path / "no.keras", "-q")
    assert open_length.exit_code == 2 and "needs --seq-len" in open_length.stderr
    res = cli("prune", path, "--target", "flops=0.8", "--seq-len", "12", "--no-speed", "-o", out, "-r", report, "-q")
    assert res.exit_code == 0, res.output
    section = json.loads(report.read_text())["target"]  # SwiGLU units: exactly what the report counts
    assert section["predicted"] == section["achieved_value"] <= 0.8 * section["dense"] and section["within_tolerance"]


@pytest.mark.parametrize("granularity", ["neuron", "head"])
@pytest.mark.slow
def test_activation_scores_read_what_each_unit_outputs(granularity):
    """--method activation (Minitron): a unit whose output is silent on the data scores 0 and goes first,
    whatever its weights; a loud one stays. FFN unit: the down projection's input; key/value group: its
    query heads' outputs, the output projection's input. The wrapped calls are put back."""
    import tensorflow as tf

    model = backbone(layers=1)
    block = decoders.blocks(model)[0]
    x = inputs(8)
    data = tf.data.Dataset.from_tensor_slices((x, np.zeros((8, 10, D), "float32"))).batch(4)
    config = step_config(granularity, sparsity=0.25, method="activation", data="d.npz", scope="layer")
    if granularity == "neuron":
        gate, _up, down = keras_graph.hub_swiglu(block)
        kernel = np.array(gate.kernel)
        kernel[:, 5] = 0.0  # silu(0) = 0: unit 5 never fires
        gate.kernel.assign(kernel)
        found = ffn.find(model)
        scores = ffn.score(model, found, config, data)[found[0].path]
        watched = [down]
    else:
        _q, _k, value, output = (sub for sub, *_ in keras_graph.attention_projections(decoders.attention(block)))
        kernel = np.array(value.kernel)
        kernel[:, 1, :] = 0.0  # group 1's values are 0: its query heads output 0
        value.kernel.assign(kernel)
        found = heads.find(model)
        scores = heads.score(model, found, config, data)[found[0].path]
        watched = [output]
    assert scores.argmin() == (5 if granularity == "neuron" else 1) and scores.min() == 0.0 < np.sort(scores)[1]
    assert all("call" not in vars(layer) for layer in watched)


@pytest.mark.slow
def test_head_fit_target_removes_whole_groups_to_fit():
    """-g head --target params=F: the fewest key/value groups (with their query heads) whose removal
    leaves at most F of the parameters; one group fewer would not fit."""
    model = backbone("llama", layers=3)
    dense = model.count_params()
    config = build_config({"model_path": "m.keras", "granularity": "head", "target": "params=0.95"}, environ={})
    assert config.shrink and config.scope == "global"
    new, _masks, section, _notes = heads.run_heads(model, targets_mod.select(model), config)
    target = section["target"]
    assert target["predicted"] == new.count_params() <= 0.95 * dense
    per_group = heads.unit_params(heads.find(model, targets_mod.select(model))[0])
    assert per_group == 2 * D * HD + D * HD + D * HD + 2 * HD * D  # q of 2 heads, k, v, o rows of 2 heads
    removed = sum(len(row["removed_heads"]) for row in section["layers"]) // (HQ // HKV)
    assert dense - new.count_params() == removed * per_group
    assert dense - (removed - 1) * per_group > 0.95 * dense  # one group fewer would not fit


def test_head_target_refuses_remove_heads(cli, tmp_path):
    result = cli(
        "prune", "m.keras", "-g", "head", "--target", "params=0.9", "--remove-heads", "2", "-o", tmp_path / "o.keras"
    )
    assert result.exit_code == 2 and "--target cannot be combined with --remove-heads" in result.stderr


@pytest.mark.slow
def test_head_flops_target_counts_as_the_report_does():
    """-g head --target flops=F --seq-len N: what the bisection predicts is the shrunk model's count
    (structure/flops.py at N tokens), at most F of the dense one, and one group fewer would not fit."""
    from prunecli.structure import flops

    model = backbone("llama", layers=3)
    seq = 12
    dense = flops.count(model, seq)["total"]
    config = build_config(
        {"model_path": "m.keras", "granularity": "head", "target": "flops=0.9", "seq_len": seq}, environ={}
    )
    new, _masks, section, _notes = heads.run_heads(model, targets_mod.select(model), config)
    target = section["target"]
    assert target["kind"] == "flops" and target["dense"] == dense
    assert target["predicted"] == flops.count(new, seq)["total"] <= 0.9 * dense
    per_group = (dense - target["predicted"]) // (
        sum(len(r["removed_heads"]) for r in section["layers"]) // (HQ // HKV)
    )
    assert target["predicted"] + per_group > 0.9 * dense


def _disagreeing_groups(model):
    """A one-block decoder whose two key/value groups the two measured scores rank oppositely: group 0
    has loud values and quiet query/key/output weights (activation keeps it, magnitude removes it),
    group 1 the reverse."""
    block = decoders.blocks(model)[0]
    projections = [sub for sub, *_ in keras_graph.attention_projections(decoders.attention(block))]
    group = HQ // HKV
    for role, sub in zip("qkvo", projections, strict=True):
        kernel = np.array(sub.kernel)
        loud = 4.0 if role == "v" else 0.05
        quiet = 0.05 if role == "v" else 4.0
        if role == "o":  # (heads, head_dim, hidden): query heads of group g are g*group ... (g+1)*group-1
            kernel[:group] *= loud
            kernel[group:] *= quiet
        else:  # (hidden, heads, head_dim); q has HQ heads, k and v HKV
            heads_of = group if role == "q" else 1
            kernel[:, :heads_of] *= loud
            kernel[:, heads_of:] *= quiet
        sub.kernel.assign(kernel)
    return model


def test_measured_head_scores_keep_the_choice_that_moves_the_outputs_least():
    """-g head with --data and no --method: magnitude and activation each choose their key/value group,
    each choice is masked and measured on the data, and the one whose outputs moved least is the run's:
    its heads are the ones removed, and every other weight is back as it was."""
    import tensorflow as tf

    from prunecli.calibration import outputs

    model = _disagreeing_groups(backbone(layers=1))
    dense = {w.path: np.array(w) for w in model.weights}
    x = inputs(8)
    data = tf.data.Dataset.from_tensor_slices((x, np.zeros((8, 10, D), "float32"))).batch(4)
    config = step_config("head", sparsity=0.5, data="d.npz", scope="layer")
    assert config.method == "measured"
    tg = targets_mod.select(model)
    found = heads.find(model, tg)
    chosen = {}
    for method in heads.MEASURED_SCORES:
        scores = heads.score(model, found, config.replace(method=method), data)
        chosen[method] = heads.choose(found, scores, config.replace(method=method), [])
    assert chosen["magnitude"] != chosen["activation"]  # the model above makes them disagree
    errors = {}
    reference = outputs.of(model, [x])
    for method, removed in chosen.items():
        heads.apply(heads.head_masks(found, removed), found)
        errors[method] = outputs.error(outputs.of(model, [x]), reference, ["values"])
        for w in model.weights:
            w.assign(dense[w.path])
    best = min(errors, key=errors.get)

    _model, _masks, section, notes = heads.run_heads(model, tg, config, data=data)
    account = section["score_measured"]
    assert section["score"] == account["chosen"] == best
    assert set(account["output_error"]) == set(heads.MEASURED_SCORES)
    assert [row["removed_heads"] for row in section["layers"]] == [found[0].heads_of(chosen[best][found[0].path])]
    assert any("measured" in n for n in notes)
    keep = {p.variable.path: m for p in found[0].parts for m in [heads.head_masks(found, chosen[best])[p.name]]}
    for w in model.weights:  # the chosen heads zeroed, nothing else changed by the trials
        want = np.where(keep[w.path], dense[w.path], 0) if w.path in keep else dense[w.path]
        np.testing.assert_array_equal(np.asarray(w), want)


def test_method_defaults_and_measured_refusals(cli, tmp_path):
    """--method auto is magnitude, except -g head with --data; --method measured is -g head's and needs
    --data."""
    from prunecli.errors import ConfigError
    from prunecli.scoring.checks import build_config as checked

    assert step_config("head").method == "magnitude"
    assert step_config("head", data="d.npz", method="magnitude").method == "magnitude"
    assert step_config("neuron", data="d.npz").method == "magnitude"
    assert step_config("head", data="d.npz", threshold=0.1).method == "magnitude"
    assert checked({"model_path": "m.keras", "granularity": "head", "data": "d.npz"}, environ={}).method == "measured"
    for values, says in (
        ({"granularity": "neuron", "data": "d.npz"}, "-g head"),
        ({"granularity": "head"}, "--data"),
        ({"granularity": "head", "data": "d.npz", "threshold": 0.1}, "--threshold"),
    ):
        with pytest.raises(ConfigError, match=says):
            step_config(method="measured", **values)
