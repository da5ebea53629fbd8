"""KerasHub Falcon (FalconCausalLM around FalconBackbone): heads, un-gated feed-forward units and whole
blocks deleted for real; residual channels refused.

KerasHub's Falcon is multi-head attention with ALiBi positions (no rotary embedding): q, k and v are
EinsumDense layers with biases, kernels (hidden, heads, head_dim), the output projection one Dense whose
(heads * head_dim, hidden) kernel holds the heads one after another; the head size is hidden_dim //
num_heads when the attention builds, and each head's ALiBi slope comes from the number of heads, which the
block computes on every call. A rebuilt block keeps the head size and each kept head's own slope. Its
feed-forward network is dense_h_to_4h (GeLU, bias) -> dense_4h_to_h, its norms LayerNormalization. Tiny
configs built with keras_hub (no download): each shrunk model is checked against the masked model it came
from (1e-4 relative), after a save/load round trip too, and generate() gives the masked model's tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    SHRINK_COMMANDS,
    assert_close_rel,
    check_shrunk_lm,
    cli_shrinks,
    greedy_tokens,
    hub_prompt,
    reloaded_hub,
    spread_weights,
    token_inputs,
)

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli.config import build_config  # noqa: E402
from prunecli.errors import InputError  # noqa: E402
from prunecli.removal import ffn, heads, hidden  # noqa: E402
from prunecli.removal import layers as layer_removal  # noqa: E402
from prunecli.structure import decoders, keras_graph, transformer  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402

D, H, FF, VOCAB = 32, 4, 64, 50
HD = D // H
SLOPES = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]  # ALiBi's slopes for 4 heads
PER_HEAD = 3 * (D * HD + HD) + HD * D  # a head's q/k/v kernel and bias slices and its output rows
PER_UNIT = D + 1 + D  # a feed-forward unit: intermediate column and bias, output row


def falcon_lm(layers: int = 2, seed: int = 0):
    """A FalconCausalLM from a config, its weights (biases and LayerNorm offsets included) spread out."""
    keras.utils.set_random_seed(seed)
    backbone = kh.models.FalconBackbone(
        vocabulary_size=VOCAB, num_layers=layers, num_attention_heads=H, hidden_dim=D, intermediate_dim=FF
    )
    spread_weights(backbone, seed)
    return kh.models.FalconCausalLM(backbone=backbone, preprocessor=None)


def _config(granularity: str, **kw):
    return build_config({"model_path": "m.keras", "granularity": granularity, **kw}, environ={})


def test_a_falcon_block_is_read_as_multi_head_alibi_attention_and_an_ungated_network():
    lm = falcon_lm(layers=1)
    block = lm.backbone.transformer_layers[0]
    assert decoders.family(block) == "FalconTransformerDecoder" and decoders.shrink_blocker(block) is None
    assert decoders.head_counts(block) == (H, H) and decoders.head_size(block) == HD
    assert keras_graph.alibi_slopes(block) == SLOPES
    hl = heads.find(lm)[0]
    assert (hl.units, hl.group, heads.unit_params(hl)) == (H, 1, PER_HEAD)
    assert [(p.projection, p.axis, p.width) for p in hl.parts if p.projection == "output"] == [("output", 0, HD)]
    gate, up, down = keras_graph.hub_ffn(block)
    assert gate is None and (up.name, down.name) == ("dense_h_to_4h", "dense_4h_to_h")
    assert "subtracts the mean" in decoders.narrow_blocker(lm)


def test_kept_heads_keep_their_own_alibi_slopes():
    """Heads 0 and 1 kept: two heads would get the slopes 2^-4, 2^-8 of a 2-head block; the rebuilt
    block adds 2^-2, 2^-4, theirs, and computes what the masked block computes, which a block with the
    2-head slopes does not."""
    block = falcon_lm(layers=1).backbone.transformer_layers[0]
    hl = heads.find_in_layer(block)[0]
    heads.apply(heads.head_masks([hl], {hl.path: [2, 3]}), [hl])
    x = np.random.default_rng(0).standard_normal((2, 6, D)).astype("float32")
    want = np.asarray(block(x))
    new, values = decoders.smaller(block, [0, 1], [0, 1])
    assert new.alibi_slopes == SLOPES[:2] and keras_graph.alibi_slopes(block) == SLOPES
    plain = type(new).from_config({k: v for k, v in new.get_config().items() if k != "alibi_slopes"})
    for layer in (new, plain):
        layer.build((None, None, D))
        for w in layer.weights:
            w.assign(values[str(w.path)])
    assert_close_rel(new(x), want)
    assert np.abs(np.asarray(plain(x)) - want).max() > 1e-3  # the 2-head slopes: another function


@pytest.mark.slow
def test_heads_go_with_their_biases_and_their_slopes_stay(tmp_path):
    lm = falcon_lm()
    small, masks, section, notes = heads.run_heads(
        lm, targets_mod.select(lm), _config("head", sparsity=0.5, shrink=True)
    )
    assert not notes and type(small).__name__ == "PrunedFalconCausalLM"
    for row, block in zip(section["layers"], small.backbone.transformer_layers, strict=True):
        kept = [h for h in range(H) if h not in row["removed_heads"]]
        assert row["deleted"] and len(kept) == 2
        assert type(block).__name__ == "PrunedFalconTransformerDecoder"
        assert (block.num_attention_heads, block.head_dim, decoders.head_size(block)) == (2, HD, HD)
        assert block.alibi_slopes == [SLOPES[h] for h in kept] == keras_graph.alibi_slopes(block)
        shapes = [tuple(sub.kernel.shape) for sub, *_ in keras_graph.attention_projections(decoders.attention(block))]
        assert shapes == [(D, 2, HD)] * 3 + [(2 * HD, D)]
    assert lm.count_params() - small.count_params() == 2 * 2 * PER_HEAD
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedFalconCausalLM")  # run_heads masked `lm` in place


@pytest.mark.slow
def test_ungated_units_go_from_both_dense_layers_and_the_bias(tmp_path):
    lm = falcon_lm()
    tg, _notes = transformer.ffn_only(lm, targets_mod.select(lm))
    assert sorted({t.layer_name.split("/")[-1] for t in tg}) == ["dense_4h_to_h", "dense_h_to_4h"]
    small, masks, section, _ = ffn.run_ffn(lm, tg, _config("neuron", sparsity=0.5, shrink=True))
    assert section["units_before"] == 2 * FF and section["units_removed"] == FF
    f = ffn.find(lm)[0]
    gone = section["layers"][0]["removed_units"]
    assert not np.asarray(f.up.kernel)[:, gone].any() and not np.asarray(f.up.bias)[gone].any()
    for block in small.backbone.transformer_layers:
        _gate, up, down = keras_graph.hub_ffn(block)
        assert block.intermediate_dim == FF // 2 and tuple(down.kernel.shape) == (FF // 2, D)
    assert lm.count_params() - small.count_params() == FF * PER_UNIT
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedFalconCausalLM")


@pytest.mark.slow
def test_whole_blocks_leave_and_the_rest_compute_as_before(tmp_path):
    lm = falcon_lm(layers=3)
    candidates, _rows = layer_removal.analyse(lm)
    assert [(c.kind, c.name) for c in candidates] == [("block", f"block:transformer_layer_{i}") for i in range(3)]
    smaller = layer_removal.remove(lm, [candidates[1]])
    assert type(smaller).__name__ == "PrunedFalconCausalLM"
    assert smaller.count_params() == lm.count_params() - candidates[1].params
    x = token_inputs(VOCAB)
    b = lm.backbone
    h = b.token_embedding(x["token_ids"])
    for i in (0, 2):
        h = b.transformer_layers[i](h, decoder_padding_mask=x["padding_mask"])
    want = b.token_embedding(b.final_layernorm(h), reverse=True)
    assert_close_rel(smaller(x), want)
    back = reloaded_hub(smaller, tmp_path / "small.keras")
    assert_close_rel(back(x), want)
    np.testing.assert_array_equal(greedy_tokens(back, hub_prompt()), greedy_tokens(smaller, hub_prompt()))


@pytest.mark.slow
def test_hidden_channels_are_refused_because_layer_norm_centres():
    lm = falcon_lm(layers=1)
    with pytest.raises(InputError, match="normalises with LayerNormalization"):
        hidden.run_hidden(lm, targets_mod.select(lm), _config("hidden", sparsity=0.5, shrink=True))


@pytest.mark.slow
@SHRINK_COMMANDS
def test_cli_shrinks_a_saved_falcon_causal_lm(cli, tmp_path, command):
    small = cli_shrinks(cli, falcon_lm(), tmp_path, command, "PrunedFalconCausalLM")
    assert greedy_tokens(small, hub_prompt()).shape == (2, 9)
