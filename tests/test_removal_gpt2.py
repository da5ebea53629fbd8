"""KerasHub GPT-2 and OPT (GPT2CausalLM, OPTCausalLM around the generic TransformerDecoder block): heads,
un-gated feed-forward units, whole blocks and residual channels deleted for real.

Both backbones add a learned position embedding to the token embedding (OPT inside its
TokenAndPositionEmbedding), normalise with LayerNormalization and run multi-head attention with q/k/v
biases and an intermediate Dense with a bias. Tiny configs built with keras_hub (no download): each
shrunk model is checked against the masked model it came from, after a save/load round trip too, its
parameter count against the slices removed, and generate() against the masked model's tokens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import (
    assert_close_rel,
    check_block_removed,
    check_narrowed_lm,
    check_shrunk_lm,
    greedy_tokens,
    hub_prompt,
    reloaded_hub,
    spread_weights,
    step_config,
    token_inputs,
)

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli import prune  # noqa: E402
from prunecli.config import build_config  # noqa: E402
from prunecli.errors import InputError  # noqa: E402
from prunecli.removal import ffn, heads  # noqa: E402
from prunecli.structure import decoders, keras_graph, transformer  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402

D, H, FF, VOCAB = 16, 4, 32, 50
MAX_LEN = 32  # learned positions: probes.OPEN_DIM (layer scoring without data) runs 32 tokens
HD = D // H  # the head size every rebuilt block must keep
PER_HEAD = 3 * (D * HD + HD) + HD * D  # a head's q/k/v kernel and bias slices and its output rows
PER_UNIT = D + 1 + D  # a feed-forward unit: intermediate column and bias, output row
FAMILIES = {
    "gpt2": ("GPT2Backbone", "GPT2CausalLM"),
    "opt": ("OPTBackbone", "OPTCausalLM"),
}


def causal_lm(family: str = "gpt2", layers: int = 2, seed: int = 0):
    """A causal LM from a config, its weights (biases and LayerNorm offsets included) spread out, so
    that a removed head's or unit's bias must follow it."""
    backbone_cls, lm_cls = (getattr(kh.models, name) for name in FAMILIES[family])
    keras.utils.set_random_seed(seed)
    backbone = backbone_cls(
        vocabulary_size=VOCAB,
        num_layers=layers,
        num_heads=H,
        hidden_dim=D,
        intermediate_dim=FF,
        max_sequence_length=MAX_LEN,
    )
    spread_weights(backbone, seed)
    return lm_cls(backbone=backbone, preprocessor=None)


def _attention_shapes(block):
    projections = keras_graph.attention_projections(decoders.attention(block))
    kernels = [tuple(sub.kernel.shape) for sub, *_ in projections]
    biases = [tuple(sub.bias.shape) for sub, *_ in projections]
    return kernels, biases


def test_a_decoder_only_transformer_decoder_is_a_family_and_others_are_not():
    """keras_hub.layers.TransformerDecoder is GPT-2's and OPT's block: un-gated, multi-head. Called with
    an encoder sequence (BART) it holds cross-attention, and Whisper's and Moonshine's subclasses call
    it their own way: neither is rebuilt."""
    plain = kh.layers.TransformerDecoder(intermediate_dim=6, num_heads=2)
    plain.build((1, 3, 8))
    assert decoders.family(plain) == "TransformerDecoder" and decoders.head_counts(plain) == (2, 2)
    gate, up, down = keras_graph.hub_ffn(plain)
    assert gate is None and (up.name, down.name) == ("feedforward_intermediate_dense", "feedforward_output_dense")
    assert keras_graph.hub_swiglu(plain) is None  # no gate: not a gated network
    cross = kh.layers.TransformerDecoder(intermediate_dim=6, num_heads=2)
    cross.build((1, 3, 8), (1, 5, 8))
    assert keras_graph.hub_cross_attention(cross) is not None and not decoders.is_decoder(cross)

    class OwnDecoder(kh.layers.TransformerDecoder):
        pass

    own = OwnDecoder(intermediate_dim=6, num_heads=2)
    own.build((1, 3, 8))
    assert not decoders.is_decoder(own)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_heads_are_deleted_with_their_biases_and_the_head_size_kept(family, tmp_path):
    lm = causal_lm(family)
    small, masks, section, notes = heads.run_heads(
        lm, targets_mod.select(lm), step_config("head", sparsity=0.5, shrink=True)
    )
    assert not notes and type(small).__name__ == f"Pruned{FAMILIES[family][1]}"
    assert all(row["deleted"] and len(row["removed_heads"]) == 2 for row in section["layers"])
    for block in small.backbone.transformer_layers:
        assert type(block).__name__ == "PrunedTransformerDecoder"
        assert (block.num_heads, block.head_dim, decoders.head_size(block)) == (2, HD, HD)
        assert _attention_shapes(block) == ([(D, 2, HD)] * 3 + [(2, HD, D)], [(2, HD)] * 3 + [(D,)])
    assert lm.count_params() - small.count_params() == 2 * 2 * PER_HEAD
    assert section["params_before"] - section["params_after"] == 2 * 2 * PER_HEAD
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    block = lm.backbone.transformer_layers[0]  # masked in place: the removed heads' biases too
    gone = section["layers"][0]["removed_heads"]
    for sub, *_ in keras_graph.attention_projections(decoders.attention(block))[:3]:
        assert not np.asarray(sub.bias)[gone].any()
    check_shrunk_lm(lm, small, tmp_path, VOCAB, f"Pruned{FAMILIES[family][1]}")


@pytest.mark.slow
def test_blocks_left_with_different_heads_share_one_cache():
    """A global selection leaves the blocks with different head counts: the task's cache is sized for the
    widest, each block handed its own heads' slice, and generate() still gives the masked model's tokens."""
    lm = causal_lm("gpt2")
    attn = decoders.attention(lm.backbone.transformer_layers[1])
    for sub, *_ in keras_graph.attention_projections(attn):  # block 1's heads weaker: they go first
        sub.kernel.assign(np.asarray(sub.kernel) * 0.1)
    config = step_config("head", sparsity=0.25, scope="global", normalize="none", shrink=True)
    small, _, _, notes = heads.run_heads(lm, targets_mod.select(lm), config)
    assert not notes and [b.num_heads for b in small.backbone.transformer_layers] == [H, H - 2]
    assert small.backbone.num_key_value_heads == H and small.backbone.head_dim == HD
    np.testing.assert_array_equal(greedy_tokens(small, hub_prompt()), greedy_tokens(lm, hub_prompt()))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_ungated_units_go_from_both_dense_layers_and_the_bias(family, tmp_path):
    lm = causal_lm(family)
    tg, _notes = transformer.ffn_only(lm, targets_mod.select(lm))
    assert sorted({t.layer_name.split("/")[-1] for t in tg}) == [
        "feedforward_intermediate_dense",
        "feedforward_output_dense",
    ]
    f = ffn.find(lm)[0]
    assert f.gate is None and f.units == FF and len(f.slices()) == 2 and len(f.all_slices()) == 3
    small, masks, section, _ = ffn.run_ffn(lm, tg, step_config("neuron", sparsity=0.5, shrink=True))
    assert section["units_before"] == 2 * FF and section["units_removed"] == FF
    gone = section["layers"][0]["removed_units"]
    assert not np.asarray(f.up.kernel)[:, gone].any() and not np.asarray(f.up.bias)[gone].any()
    assert not np.asarray(f.down.kernel)[gone].any() and np.asarray(f.down.bias).all()  # over channels: kept
    for block in small.backbone.transformer_layers:
        _gate, up, down = keras_graph.hub_ffn(block)
        assert block.intermediate_dim == FF // 2
        assert (tuple(up.kernel.shape), tuple(up.bias.shape), tuple(down.kernel.shape)) == ((D, 16), (16,), (16, D))
    assert lm.count_params() - small.count_params() == FF * PER_UNIT
    assert section["params_before"] - section["params_after"] == FF * PER_UNIT
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    assert {t.name for t in targets_mod.carry_over(tg, small)} == set(masks)
    check_shrunk_lm(lm, small, tmp_path, VOCAB, f"Pruned{FAMILIES[family][1]}")


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_whole_blocks_leave_and_the_positions_stay(family, tmp_path):
    """-g layer: the blocks are the only candidates (GPT-2's position embedding and its Add are shaped like
    an identity layer and a residual branch, and are neither); the kept blocks read the same embeddings,
    positions included, and the smaller causal LM decodes with its cache as its full forward pass says."""

    def embed(backbone, token_ids):
        if family == "gpt2":
            tokens = backbone.token_embedding(token_ids)
            return tokens + backbone.position_embedding(tokens)
        return backbone.embeddings(token_ids)

    lm = causal_lm(family, layers=3)
    check_block_removed(lm, tmp_path, VOCAB, f"Pruned{FAMILIES[family][1]}", drop=1, embed=embed)


@pytest.mark.slow
def test_a_gpt2_backbone_alone_loses_heads_and_units_and_saves(tmp_path):
    """A GPT2Backbone alone (a functional model): its blocks rebuilt in its own graph, which keeps its
    position embedding, Add and dropout."""
    backbone = causal_lm("gpt2", layers=1).backbone
    small, _, _, notes = heads.run_heads(
        backbone, targets_mod.select(backbone), step_config("head", sparsity=0.5, shrink=True)
    )
    tg, _ = transformer.ffn_only(small, targets_mod.select(small))
    smaller, _, _, _ = ffn.run_ffn(small, tg, step_config("neuron", sparsity=0.5, shrink=True))
    assert not notes and backbone.count_params() - smaller.count_params() == 2 * PER_HEAD + FF // 2 * PER_UNIT
    x = token_inputs(VOCAB)
    want = np.asarray(small(x))  # heads deleted, units masked
    assert_close_rel(smaller(x), want)
    assert_close_rel(reloaded_hub(smaller, tmp_path / "small.keras")(x), want)


def test_a_narrowed_layer_norm_normalises_as_the_full_width_one_over_a_zeroed_stream():
    """LayerNormalization over D channels of which some are zero (gamma and beta zero there too) equals,
    at the kept channels, NarrowedLayerNormalization(full_width=D) over the kept ones alone, and a second
    narrowing keeps D; a plain LayerNormalization over the kept ones does not."""
    from prunecli.structure import narrowed_norm

    rng = np.random.default_rng(0)
    width, gone = 16, [1, 4, 5, 11]
    kept = [c for c in range(width) if c not in gone]
    x = rng.standard_normal((3, 5, width)).astype("float32") + 0.7  # a mean well away from zero
    x[..., gone] = 0
    dense = keras.layers.LayerNormalization(epsilon=1e-5)
    dense.build((None, None, width))
    gamma, beta = rng.uniform(0.5, 2.0, width).astype("float32"), rng.standard_normal(width).astype("float32")
    gamma[gone], beta[gone] = 0, 0
    dense.set_weights([gamma, beta])
    want = np.asarray(dense(x))[..., kept]
    narrow = narrowed_norm.narrowed(dense, width)
    narrow.build((None, None, len(kept)))
    narrow.set_weights([gamma[kept], beta[kept]])
    assert narrow.full_width == width and narrow.epsilon == dense.epsilon
    assert_close_rel(narrow(x[..., kept]), want, 1e-5)
    plain = keras.layers.LayerNormalization(epsilon=1e-5)
    plain.build((None, None, len(kept)))
    plain.set_weights([gamma[kept], beta[kept]])
    assert np.abs(np.asarray(plain(x[..., kept])) - want).max() > 0.1
    again = narrowed_norm.narrowed(narrow, len(kept))  # its zeros are zeros of the first stream
    assert again.full_width == width
    assert narrowed_norm.layer_class().from_config(narrow.get_config()).full_width == width


@pytest.mark.slow
@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_hidden_channels_leave_through_the_layer_norms_and_the_positions(family, tmp_path):
    """Residual channels of GPT-2 and OPT go from the token and position embeddings, every LayerNorm's
    gamma and beta, the q/k/v input rows, the attention output's and the FFN output's columns and biases;
    heads then removed from the narrowed model keep its norms narrowed."""
    lm = causal_lm(family)
    small, section = check_narrowed_lm(lm, tmp_path, VOCAB, f"Pruned{FAMILIES[family][1]}")
    kept = section["hidden_after"]
    # two norms' gamma and beta; q/k/v input rows and the output's columns; the two output biases; FFN row and column
    per_block = 2 * 2 + 4 * D + 2 + 2 * FF
    per_channel = VOCAB + MAX_LEN + 2 * per_block + 2  # tied embedding, positions, two blocks, the final norm
    assert lm.count_params() - small.count_params() == (D - kept) * per_channel
    x = token_inputs(VOCAB)
    want = np.asarray(small(x))
    hl = heads.find(small)
    heads.apply(heads.head_masks(hl, {h.path: [1] for h in hl}), hl)
    fewer, *_ = heads.run_heads(small, targets_mod.select(small), step_config("head", sparsity=0.25, shrink=True))
    assert all(
        type(n).__name__ == "NarrowedLayerNormalization"
        for b in decoders.blocks(fewer)
        for n in decoders.residual_norms(b)
    )
    assert_close_rel(fewer(x), small(x))
    assert np.abs(np.asarray(small(x)) - want).max() > 0  # the heads did change the narrowed model


@pytest.mark.slow
def test_an_opt_backbone_alone_is_refused_in_one_line(cli, tmp_path):
    """OPT's backbone embeds through one TokenAndPositionEmbedding, which prunecli rebuilds from its parts
    inside a causal LM only: -g hidden on the backbone alone says so (exit 3) and writes nothing."""
    backbone = causal_lm("opt", layers=1).backbone
    assert "narrow the causal LM" in decoders.narrow_blocker(backbone)
    path, out = tmp_path / "opt.keras", tmp_path / "out.keras"
    backbone.save(path)
    res = cli("prune", path, "-g", "hidden", "-s", "0.5", "--shrink", "-o", out, "-q")
    assert res.exit_code == 3 and "TokenAndPositionEmbedding" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not out.exists()
    said: list[str] = []  # refused before the run times tokens/s or evaluates anything
    settings = {"model_path": str(path), "granularity": "hidden", "sparsity": 0.5, "shrink": True, "output": str(out)}
    with pytest.raises(InputError, match="TokenAndPositionEmbedding"):
        prune(build_config(settings, environ={}), progress=said.append)
    assert said and not any("tokens per second" in line for line in said)


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["head", "neuron", "layer"])
@pytest.mark.parametrize("family", ["gpt2", "opt"])
def test_cli_prunes_a_saved_causal_lm_for_real(cli, tmp_path, family, granularity):
    from prunecli.io.models import load
    from prunecli.outputs import decoder_blocks

    lm = causal_lm(family)
    path, out, report = tmp_path / "lm.keras", tmp_path / "out.keras", tmp_path / "r.json"
    lm.save(path)
    shrink = ["--shrink"] if granularity != "layer" else []
    res = cli("prune", path, "-g", granularity, "-s", "0.5", *shrink, "--no-speed", "-o", out, "-r", report, "-q")
    assert res.exit_code == 0, res.output
    written = json.loads(report.read_text())
    small, _info = load(out)
    assert type(small).__name__ == f"Pruned{FAMILIES[family][1]}"
    block_params = lm.backbone.transformer_layers[0].count_params()  # one whole block: -g layer at 0.5 of 2
    gone = {"head": 2 * 2 * PER_HEAD, "neuron": FF * PER_UNIT, "layer": block_params}[granularity]
    if granularity == "layer":
        assert len(written["removed_layers"]) == 1
    else:
        section = written["heads" if granularity == "head" else "ffn"]
        assert section["verification"]["max_rel_diff"] <= 1e-4
    decoder = written["decoder"]
    assert lm.count_params() - small.count_params() == gone == decoder["params_before"] - decoder["params_after"]
    seq = written["decoder"]["seq_len"]
    for row in written["decoder"]["blocks"]:
        if row["after"] is not None:  # two feed-forward kernels, not three, in the multiply-adds
            assert row["after"]["ffn_kernels"] == 2
            assert row["after"]["macs"] == decoder_blocks.block_macs(row["after"], seq)
    assert greedy_tokens(small, hub_prompt()).shape == (2, 9)
