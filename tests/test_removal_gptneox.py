"""KerasHub GPT-NeoX (GPTNeoXCausalLM around GPTNeoXBackbone): heads, un-gated feed-forward units and whole
blocks and residual channels deleted for real.

GPT-NeoX's attention computes q, k and v with one fused projection (query_key_value, kernel (hidden, heads,
3 * head_dim): head h's q, k and v side by side in its entry h), rotates only the first rotary_percentage of
each head's dimensions, derives its head size as hidden_dim // num_heads in its constructor and holds its
output projection as one (heads * head_dim, hidden) kernel; its block adds attention and feed-forward
outputs to the same residual (parallel residual) and normalises with LayerNormalization. Tiny configs built
with keras_hub (no download), half of each head rotated: each shrunk model is checked against the masked
model it came from (1e-4 relative), after a save/load round trip too, and generate() gives the masked
model's tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    SHRINK_COMMANDS,
    assert_close_rel,
    check_block_removed,
    check_narrowed_lm,
    check_shrunk_lm,
    cli_shrinks,
    greedy_tokens,
    hub_prompt,
    spread_weights,
    step_config,
    token_inputs,
)

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli.removal import ffn, heads  # noqa: E402
from prunecli.structure import decoders, keras_graph, transformer  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402

D, H, FF, VOCAB = 32, 4, 64, 50
HD = D // H
PER_HEAD = D * 3 * HD + 3 * HD + HD * D  # a head's q/k/v kernel and bias entries and its output rows
PER_UNIT = D + 1 + D  # a feed-forward unit: intermediate column and bias, output row


def neox_lm(layers: int = 2, seed: int = 0):
    """A GPTNeoXCausalLM from a config, half of each head rotated, its weights (biases and LayerNorm
    offsets included) spread out, so a removed head's or unit's bias must follow it."""
    keras.utils.set_random_seed(seed)
    backbone = kh.models.GPTNeoXBackbone(
        vocabulary_size=VOCAB,
        num_layers=layers,
        num_heads=H,
        hidden_dim=D,
        intermediate_dim=FF,
        rotary_percentage=0.5,
        max_sequence_length=64,
    )
    spread_weights(backbone, seed)
    return kh.models.GPTNeoXCausalLM(backbone=backbone, preprocessor=None)


def test_a_head_is_its_own_q_k_and_v_in_the_fused_projection_and_its_output_rows():
    """Head h is entry h of the fused kernel's head axis (its q, k and v columns, as KerasHub splits the
    fused output along the head's own axis), entry h of the bias, and output rows h*HD ... h*HD+HD-1."""
    lm = neox_lm(layers=1)
    block = lm.backbone.transformer_layers[0]
    assert decoders.family(block) == "GPTNeoXDecoder" and decoders.shrink_blocker(block) is None
    assert decoders.head_counts(block) == (H, H) and decoders.head_size(block) == HD
    hl = heads.find(lm)[0]
    assert (hl.units, hl.group) == (H, 1)
    assert [(p.projection, p.axis, p.width, tuple(p.variable.shape)) for p in hl.parts] == [
        ("query_key_value", 1, 1, (D, H, 3 * HD)),
        ("query_key_value", 0, 1, (H, 3 * HD)),
        ("output", 0, HD, (D, D)),
    ]
    assert heads.unit_params(hl) == PER_HEAD
    masks = heads.head_masks([hl], {hl.path: [2]})
    kernel, bias, output = (masks[p.name] for p in hl.parts)
    assert not kernel[:, 2].any() and kernel[:, [0, 1, 3]].all()
    assert not bias[2].any() and bias[[0, 1, 3]].all()
    assert not output[2 * HD : 3 * HD].any() and output[: 2 * HD].all() and output[3 * HD :].all()
    gate, up, down = keras_graph.hub_ffn(block)
    assert gate is None and (up.name, down.name) == ("feedforward_intermediate_dense", "feedforward_output_dense")
    assert decoders.narrow_blocker(lm) is None  # its LayerNorms narrow as NarrowedLayerNormalization


def test_a_masked_head_contributes_nothing():
    """Masking head h's slices (q, k and v in the fused kernel and bias, its output rows) computes what
    the attention computes with that head's output rows zero alone: nothing of the head is left."""
    lm = neox_lm(layers=1)
    hl = heads.find(lm)[0]
    x = token_inputs(VOCAB)
    output = next(p for p in hl.parts if p.projection == "output").variable
    rows = np.asarray(output).copy()
    rows[HD : 2 * HD] = 0
    output.assign(rows)
    want = np.asarray(lm(x))
    heads.apply(heads.head_masks([hl], {hl.path: [1]}), [hl])
    assert_close_rel(lm(x), want)


@pytest.mark.slow
def test_heads_go_with_their_fused_q_k_v_and_bias_and_the_partial_rotary_stays(tmp_path):
    lm = neox_lm()
    small, masks, section, notes = heads.run_heads(
        lm, targets_mod.select(lm), step_config("head", sparsity=0.5, shrink=True)
    )
    assert not notes and type(small).__name__ == "PrunedGPTNeoXCausalLM"
    assert all(row["deleted"] and len(row["removed_heads"]) == 2 for row in section["layers"])
    for block in small.backbone.transformer_layers:
        attn = decoders.attention(block)
        assert type(block).__name__ == "PrunedGPTNeoXDecoder"
        assert (block.num_heads, block.head_dim, decoders.head_size(block)) == (2, HD, HD)
        assert (attn.attn_head_size, attn.rotary_dim) == (HD, HD // 2)  # half of each head rotated, as before
        shapes = [tuple(sub.kernel.shape) for sub, *_ in keras_graph.attention_projections(attn)]
        assert shapes == [(D, 2, 3 * HD), (2 * HD, D)]
    assert lm.count_params() - small.count_params() == 2 * 2 * PER_HEAD
    assert section["params_before"] - section["params_after"] == 2 * 2 * PER_HEAD
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedGPTNeoXCausalLM")  # run_heads masked `lm` in place


@pytest.mark.slow
def test_ungated_units_go_from_both_dense_layers_and_the_bias(tmp_path):
    lm = neox_lm()
    tg, _notes = transformer.ffn_only(lm, targets_mod.select(lm))
    assert sorted({t.layer_name.split("/")[-1] for t in tg}) == [
        "feedforward_intermediate_dense",
        "feedforward_output_dense",
    ]
    small, masks, section, _ = ffn.run_ffn(lm, tg, step_config("neuron", sparsity=0.5, shrink=True))
    assert section["units_before"] == 2 * FF and section["units_removed"] == FF
    f = ffn.find(lm)[0]
    gone = section["layers"][0]["removed_units"]
    assert not np.asarray(f.up.kernel)[:, gone].any() and not np.asarray(f.up.bias)[gone].any()
    assert not np.asarray(f.down.kernel)[gone].any()
    for block in small.backbone.transformer_layers:
        _gate, up, down = keras_graph.hub_ffn(block)
        half = FF // 2
        assert block.intermediate_dim == half
        assert (tuple(up.kernel.shape), tuple(up.bias.shape), tuple(down.kernel.shape)) == (
            (D, half),
            (half,),
            (half, D),
        )
    assert lm.count_params() - small.count_params() == FF * PER_UNIT
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedGPTNeoXCausalLM")


@pytest.mark.slow
def test_whole_blocks_leave_and_the_rest_compute_as_before(tmp_path):
    check_block_removed(neox_lm(layers=3), tmp_path, VOCAB, "PrunedGPTNeoXCausalLM", drop=1, decode="same")


@pytest.mark.slow
def test_hidden_channels_leave_through_the_layer_norms_and_the_parallel_residual(tmp_path):
    check_narrowed_lm(neox_lm(), tmp_path, VOCAB, "PrunedGPTNeoXCausalLM", sparsity=0.25)


@pytest.mark.slow
@SHRINK_COMMANDS
def test_cli_shrinks_a_saved_gptneox_causal_lm(cli, tmp_path, command):
    small = cli_shrinks(cli, neox_lm(), tmp_path, command, "PrunedGPTNeoXCausalLM")
    if "head" in command:  # the written file generates (reloads after the other rebuilds do above)
        assert greedy_tokens(small, hub_prompt()).shape == (2, 9)
