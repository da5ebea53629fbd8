"""KerasHub SmolLM3 (SmolLM3CausalLM around SmolLM3Backbone): heads, SwiGLU units, whole blocks and
hidden channels deleted for real.

SmolLM3's decoder layer keeps most of its arguments in its sublayers (Keras records them for its config),
its attention derives the head size as hidden_size // num_attention_heads in its constructor, holds its
query/key/value heads flattened in Dense kernels (hidden, heads * head_dim), and skips RoPE in the layers
its rope_layer_enabled_list turns off (NoPE). Tiny configs built with keras_hub (no download), with
biases and a NoPE middle layer: each shrunk model is checked against the masked model it came from (1e-4
relative), after a save/load round trip too, and generate() gives the masked model's tokens.
"""

from __future__ import annotations

import pytest
from conftest import (
    SHRINK_COMMANDS,
    check_block_removed,
    check_shrunk_lm,
    cli_shrinks,
    greedy_tokens,
    hub_prompt,
    spread_weights,
    step_config,
)

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli.removal import ffn, heads, hidden  # noqa: E402
from prunecli.structure import decoders, keras_graph, transformer  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402

D, HQ, FF, VOCAB, LAYERS = 32, 4, 16, 50, 3
HD = D // HQ
ROPE = [True, False, True]  # the middle layer has no rotary positions (NoPE)


def smollm3_lm(kv_heads: int = 2, seed: int = 0):
    """A SmolLM3CausalLM from a config (attention and MLP biases on), its weights spread out."""
    keras.utils.set_random_seed(seed)
    backbone = kh.models.SmolLM3Backbone(
        vocabulary_size=VOCAB,
        hidden_dim=D,
        intermediate_dim=FF,
        num_layers=LAYERS,
        num_attention_heads=HQ,
        num_key_value_heads=kv_heads,
        attention_bias=True,
        attention_dropout=0.0,
        rope_layer_enabled_list=ROPE,
        layer_types=["full_attention"] * LAYERS,
        mlp_bias=True,
        layer_norm_epsilon=1e-6,
        max_position_embeddings=64,
        rope_theta=10000.0,
        partial_rotary_factor=1.0,
    )
    spread_weights(backbone, seed)
    return kh.models.SmolLM3CausalLM(backbone=backbone, preprocessor=None)


def _attention_shapes(block):
    projections = keras_graph.attention_projections(decoders.attention(block))
    return [tuple(sub.kernel.shape) for sub, *_ in projections], [tuple(sub.bias.shape) for sub, *_ in projections[:3]]


def _rope_flags(lm) -> list[bool]:
    return [bool(decoders.attention(b).use_rope) for b in lm.backbone.transformer_layers]


def test_smollm3_heads_are_read_from_flattened_dense_kernels():
    """A head is head_dim consecutive columns of the q/k/v Dense kernels (and entries of their biases):
    a key/value group is 2 query heads' 16 columns of q and 8 of k and v."""
    lm = smollm3_lm()
    block = lm.backbone.transformer_layers[0]
    assert decoders.family(block) == "SmolLM3DecoderLayer" and decoders.shrink_blocker(block) is None
    assert decoders.head_counts(block) == (HQ, 2) and decoders.head_size(block) == HD
    hl = heads.find(lm)[0]
    assert (hl.units, hl.group) == (2, 2)
    assert [(p.projection, p.axis, p.width) for p in hl.parts if p.variable.path.endswith("kernel")] == [
        ("query", 1, HD),
        ("key", 1, HD),
        ("value", 1, HD),
        ("output", 0, 1),
    ]
    query = hl.parts[0]
    assert hl.slice_index(query, [1]) == list(range(2 * HD, 4 * HD))  # query heads 2 and 3
    per_group = (D + 1) * (2 * HD + HD + HD) + 2 * HD * D  # q/k/v columns with their biases, 2 output slices
    assert heads.unit_params(hl) == per_group
    seq = 5  # multiply-adds: q, k/v and output projections, then the two products
    assert transformer._attention_cost(hl, seq) == (
        seq * D * HQ * HD + seq * D * 2 * 2 * HD + seq * HQ * HD * D + seq * seq * HQ * 2 * HD
    )
    gate, up, down = keras_graph.hub_ffn(block)  # inside its SmolLM3MLP
    assert (gate.name, up.name, down.name) == ("gate_proj", "up_proj", "down_proj")
    assert decoders.narrow_blocker(lm) is None  # Keras' RMSNormalization: channels can go


@pytest.mark.slow
@pytest.mark.parametrize("kv_heads", [2, 1], ids=["grouped-query", "multi-query"])
def test_heads_go_with_their_bias_entries_and_each_layer_keeps_its_rope_setting(tmp_path, kv_heads):
    lm = smollm3_lm(kv_heads)
    small, masks, section, notes = heads.run_heads(
        lm, targets_mod.select(lm), step_config("head", sparsity=0.5, shrink=True)
    )
    assert not notes and type(small).__name__ == "PrunedSmolLM3CausalLM"
    kept_kv = 1  # half of 2 groups, or the shared key/value head with half of the 4 query heads
    for block in small.backbone.transformer_layers:
        assert type(block).__name__ == "PrunedSmolLM3DecoderLayer"
        assert decoders.head_counts(block) == (2, kept_kv) and decoders.head_size(block) == HD
        kernels, biases = _attention_shapes(block)
        assert kernels == [(D, 2 * HD), (D, HD), (D, HD), (2, HD, D)]
        assert biases == [(2 * HD,), (HD,), (HD,)]
    assert _rope_flags(small) == ROPE
    gone = (D + 1) * 2 * HD + 2 * HD * D + (0 if kv_heads == 1 else 2 * (D + 1) * HD)
    assert lm.count_params() - small.count_params() == LAYERS * gone
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedSmolLM3CausalLM")  # run_heads masked `lm` in place


@pytest.mark.slow
def test_swiglu_units_go_from_the_mlp_with_their_biases(tmp_path):
    lm = smollm3_lm()
    tg, _notes = transformer.ffn_only(lm, targets_mod.select(lm))
    assert sorted({t.layer_name.split("/")[-1] for t in tg}) == ["down_proj", "gate_proj", "up_proj"]
    small, masks, section, _ = ffn.run_ffn(lm, tg, step_config("neuron", sparsity=0.5, shrink=True))
    assert section["units_before"] == LAYERS * FF and section["units_removed"] == LAYERS * FF // 2
    for block in small.backbone.transformer_layers:
        gate, up, down = keras_graph.hub_ffn(block)
        assert [tuple(d.kernel.shape) for d in (gate, up, down)] == [(D, 8), (D, 8), (8, D)]
        assert [tuple(d.bias.shape) for d in (gate, up, down)] == [(8,), (8,), (D,)]
    assert lm.count_params() - small.count_params() == LAYERS * FF // 2 * (3 * D + 2)
    assert _rope_flags(small) == ROPE
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedSmolLM3CausalLM")


@pytest.mark.slow
def test_whole_blocks_leave_and_the_rest_keep_their_rope_setting(tmp_path):
    """Removing the first block leaves the NoPE block without rotary positions and the last with them (each
    block reads its own entry of rope_layer_enabled_list); the smaller causal LM computes what the kept
    blocks did, and decodes with its cache as its full forward pass says."""
    smaller, back = check_block_removed(
        smollm3_lm(), tmp_path, VOCAB, "PrunedSmolLM3CausalLM", drop=0, final_norm="norm"
    )
    assert _rope_flags(smaller) == _rope_flags(back) == ROPE[1:]


@pytest.mark.slow
def test_hidden_channels_go_through_keras_rms_normalization_and_the_head_size_stays(tmp_path):
    lm = smollm3_lm()
    small, _masks, section, notes = hidden.run_hidden(
        lm, targets_mod.select(lm), step_config("hidden", sparsity=0.25, shrink=True)
    )
    assert not notes and (section["hidden_before"], section["hidden_after"]) == (D, D - 8)
    assert section["verification"]["max_rel_diff"] <= 1e-4
    for block in small.backbone.transformer_layers:
        assert decoders.head_size(block) == HD and block.input_layernorm.epsilon == pytest.approx(1e-6 * D / (D - 8))
        assert _attention_shapes(block)[0] == [(D - 8, HQ * HD), (D - 8, 2 * HD), (D - 8, 2 * HD), (HQ, HD, D - 8)]
    assert _rope_flags(small) == ROPE
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedSmolLM3CausalLM")  # `lm` was masked in place


@pytest.fixture(scope="module")
def dense_lm():
    """smollm3_lm() for the CLI runs below, built once: each saves it and reads its parameter count only."""
    return smollm3_lm()


@pytest.mark.slow
@SHRINK_COMMANDS
def test_cli_shrinks_a_saved_smollm3_causal_lm(cli, tmp_path, command, dense_lm):
    small = cli_shrinks(cli, dense_lm, tmp_path, command, "PrunedSmolLM3CausalLM")
    if "head" in command:  # the written file generates (reloads after the other rebuilds do above)
        assert greedy_tokens(small, hub_prompt()).shape == (2, 9)
