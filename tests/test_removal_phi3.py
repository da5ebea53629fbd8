"""KerasHub Phi-3 (Phi3CausalLM around Phi3Backbone): heads, SwiGLU units, whole blocks and hidden
channels deleted for real.

Phi-3's attention derives its head size as hidden_dim // num_query_heads when it builds, and its
su-scaled RoPE checks that its two factor lists hold head_size / 2 entries each: a block with fewer heads
keeps the head size (prunecli's PrunedPhi3Decoder) and both factor lists. Its norms are RMSNorms
(Phi3LayerNorm: no mean subtracted), so hidden channels can go. Tiny configs built with keras_hub (no
download), with su scaling and a pretraining length shorter than the test sequences, so both factor
lists are used: each shrunk model is checked against the masked model it came from (1e-4 relative),
after a save/load round trip too, and generate() gives the masked model's tokens.
"""

from __future__ import annotations

import numpy as np
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

D, HQ, KV, FF, VOCAB = 32, 4, 2, 16, 50
HD = D // HQ
SHORT = [1.0 + 0.25 * i for i in range(HD // 2)]  # su-scaled RoPE: one factor per pair of a head's dimensions
LONG = [2.0 + 0.5 * i for i in range(HD // 2)]
PER_GROUP = 2 * D * HD + 2 * D * HD + 2 * HD * D  # a key/value group: 2 query heads, its k and v, 2 output slices
PER_UNIT = 3 * D  # a SwiGLU unit: a gate column, an up column, a down row


def phi3_lm(layers: int = 2, seed: int = 0, su: bool = True):
    """A Phi3CausalLM from a config, its weights (norm scales included) spread out; `su`: su-scaled RoPE
    whose long factors apply past 8 tokens (token_inputs' rows are 10 long, generation reaches 9)."""
    keras.utils.set_random_seed(seed)
    rope = (
        dict(
            rope_scaling_type="su",
            rope_scaling_short_factor=SHORT,
            rope_scaling_long_factor=LONG,
            max_sequence_length=64,
            pretraining_sequence_length=8,
        )
        if su
        else {}
    )
    backbone = kh.models.Phi3Backbone(
        vocabulary_size=VOCAB,
        num_layers=layers,
        hidden_dim=D,
        intermediate_dim=FF,
        num_query_heads=HQ,
        num_key_value_heads=KV,
        **rope,
    )
    spread_weights(backbone, seed)
    return kh.models.Phi3CausalLM(backbone=backbone, preprocessor=None)


def _attention_shapes(block):
    return [tuple(sub.kernel.shape) for sub, *_ in keras_graph.attention_projections(decoders.attention(block))]


def test_a_phi3_block_is_read_as_a_grouped_query_swiglu_rms_norm_decoder():
    lm = phi3_lm(layers=1, su=False)
    block = lm.backbone.transformer_layers[0]
    assert decoders.family(block) == "Phi3Decoder" and decoders.shrink_blocker(block) is None
    assert decoders.head_counts(block) == (HQ, KV) and decoders.head_size(block) == HD
    gate, up, down = keras_graph.hub_ffn(block)  # two Dense layers, not one fused gate-and-up kernel
    assert (gate.name, up.name, down.name) == (
        "feedforward_gate_dense",
        "feedforward_intermediate_dense",
        "feedforward_output_dense",
    )
    hl = heads.find(lm)[0]
    assert (hl.units, hl.group, [p.axis for p in hl.parts]) == (KV, HQ // KV, [1, 1, 1, 0])  # "bqm,muh->bquh"
    assert decoders.narrow_blocker(lm) is None  # Phi3LayerNorm divides by the RMS only: channels can go


@pytest.mark.slow
def test_key_value_groups_go_and_the_su_scaled_rope_stays(tmp_path):
    lm = phi3_lm()
    small, masks, section, notes = heads.run_heads(
        lm, targets_mod.select(lm), step_config("head", sparsity=0.5, shrink=True)
    )
    assert not notes and type(small).__name__ == "PrunedPhi3CausalLM"
    for row in section["layers"]:
        g = row["removed_heads"][0] // 2
        assert row["removed_heads"] == [2 * g, 2 * g + 1] and row["deleted"]
    for block in small.backbone.transformer_layers:
        assert type(block).__name__ == "PrunedPhi3Decoder"
        assert (block.num_query_heads, block.num_key_value_heads, block.head_dim) == (2, 1, HD)
        assert _attention_shapes(block) == [(D, 2, HD), (D, 1, HD), (D, 1, HD), (2, HD, D)]
        rope = decoders.attention(block).rotary_embedding_layer  # built at the kept head size, factors whole
        assert type(rope).__name__ == "Phi3SuScaledRotaryEmbedding"
        assert (rope.inverese_freq_short_factor, rope.inverese_freq_long_factor) == (SHORT, LONG)
    assert lm.count_params() - small.count_params() == 2 * PER_GROUP
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedPhi3CausalLM")  # run_heads masked `lm` in place


@pytest.mark.slow
def test_swiglu_units_go_from_gate_up_and_down(tmp_path):
    lm = phi3_lm()
    tg, _notes = transformer.ffn_only(lm, targets_mod.select(lm))
    assert sorted({t.layer_name.split("/")[-1] for t in tg}) == [
        "feedforward_gate_dense",
        "feedforward_intermediate_dense",
        "feedforward_output_dense",
    ]
    small, masks, section, _ = ffn.run_ffn(lm, tg, step_config("neuron", sparsity=0.5, shrink=True))
    assert section["units_before"] == 2 * FF and section["units_removed"] == FF
    gone = section["layers"][0]["removed_units"]
    gate, up, down = keras_graph.hub_ffn(lm.backbone.transformer_layers[0])  # masked in place
    assert not np.asarray(gate.kernel)[:, gone].any() and not np.asarray(up.kernel)[:, gone].any()
    assert not np.asarray(down.kernel)[gone].any()
    for block in small.backbone.transformer_layers:
        assert block.intermediate_dim == FF // 2
        assert [tuple(d.kernel.shape) for d in keras_graph.hub_ffn(block)] == [(D, 8), (D, 8), (8, D)]
    assert lm.count_params() - small.count_params() == FF * PER_UNIT
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedPhi3CausalLM")


@pytest.mark.slow
def test_whole_blocks_leave_and_the_rest_compute_as_before(tmp_path):
    """The kept blocks compute as they did, and the smaller causal LM decodes with its cache as its full
    forward pass says (without su scaling: su picks its factors by the length of what it is given, 9
    tokens at once but 1 at a time when decoding, so the two differ in KerasHub's Phi-3 itself)."""
    check_block_removed(phi3_lm(layers=3, su=False), tmp_path, VOCAB, "PrunedPhi3CausalLM", drop=1)


@pytest.mark.slow
def test_hidden_channels_go_through_phi3_layer_norm_and_the_head_size_stays(tmp_path):
    """Narrowing the residual stream changes hidden_dim // num_query_heads: the blocks keep the head size
    (and the su factors sized by it), each Phi3LayerNorm its scale and epsilon corrected."""
    lm = phi3_lm()
    small, _masks, section, notes = hidden.run_hidden(
        lm, targets_mod.select(lm), step_config("hidden", sparsity=0.25, shrink=True)
    )
    assert not notes and (section["hidden_before"], section["hidden_after"]) == (D, D - 8)
    assert section["verification"]["max_rel_diff"] <= 1e-4
    for block in small.backbone.transformer_layers:
        assert (block.hidden_dim, decoders.head_size(block)) == (D - 8, HD)
        assert block.layer_norm_epsilon == pytest.approx(lm.backbone.layer_norm_epsilon * D / (D - 8))
        assert _attention_shapes(block) == [(D - 8, HQ, HD), (D - 8, KV, HD), (D - 8, KV, HD), (HQ, HD, D - 8)]
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedPhi3CausalLM")  # `lm` was masked in place


@pytest.mark.slow
@SHRINK_COMMANDS
def test_cli_shrinks_a_saved_phi3_causal_lm(cli, tmp_path, command):
    small = cli_shrinks(cli, phi3_lm(), tmp_path, command, "PrunedPhi3CausalLM")
    if "head" in command:  # the written file generates (reloads after the other rebuilds do above)
        assert greedy_tokens(small, hub_prompt()).shape == (2, 9)
