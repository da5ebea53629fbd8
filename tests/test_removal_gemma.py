"""KerasHub Gemma (GemmaCausalLM around GemmaBackbone): heads and GeGLU units deleted for real.

Gemma lays its query/key/value kernels out as (heads, hidden, head_dim), gives head_dim in its config,
scales the token embedding by sqrt(hidden_dim) and gates its feed-forward network with GeLU; its
RMSNormalization has no get_config of its own. Tiny configs built with keras_hub (no download): each
shrunk model is checked against the masked model it came from (1e-4 relative), after a save/load round
trip too, and generate() gives the masked model's tokens.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import (
    assert_close_rel,
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
pytestmark = pytest.mark.slow  # builds, shrinks and saves KerasHub models

from prunecli.removal import ffn, heads  # noqa: E402
from prunecli.structure import decoders, keras_graph, transformer  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402

D, HQ, HD, FF, VOCAB = 16, 4, 8, 32, 50  # Gemma's intermediate_dim FF is both gates: FF // 2 units
UNITS = FF // 2


# Gemma 2's options on the same classes: norms after attention and the feed-forward network, soft caps,
# sliding-window attention in every other block
GEMMA2 = dict(
    use_post_ffw_norm=True,
    use_post_attention_norm=True,
    attention_logit_soft_cap=50.0,
    final_logit_soft_cap=30.0,
    use_sliding_window_attention=True,
    sliding_window_size=4,
)


def gemma_lm(kv_heads: int = 2, layers: int = 2, seed: int = 0, **options):
    """A GemmaCausalLM from a config, its weights (norm scales included, zero at init) spread out."""
    keras.utils.set_random_seed(seed)
    backbone = kh.models.GemmaBackbone(
        vocabulary_size=VOCAB,
        num_layers=layers,
        num_query_heads=HQ,
        num_key_value_heads=kv_heads,
        hidden_dim=D,
        intermediate_dim=FF,
        head_dim=HD,
        **options,
    )
    spread_weights(backbone, seed)
    return kh.models.GemmaCausalLM(backbone=backbone, preprocessor=None)


def _attention_shapes(block):
    return [tuple(sub.kernel.shape) for sub, *_ in keras_graph.attention_projections(decoders.attention(block))]


@pytest.mark.parametrize(
    ("kv_heads", "units", "group"),
    [(2, 2, 2), (1, HQ, 1), (HQ, HQ, 1)],
    ids=["grouped-query: a key/value group", "multi-query: a query head", "multi-head: a head"],
)
def test_the_unit_of_a_gemma_attention_layer(kv_heads, units, group):
    """The unit scored and removed whole: a key/value head with its query heads; with one key/value
    head for all, a query head alone (the key/value head belongs to no unit and stays)."""
    hl = heads.find(gemma_lm(kv_heads, layers=1))[0]
    assert (hl.num_heads, hl.num_kv_heads, hl.units, hl.group, hl.shrink_blocker) == (HQ, kv_heads, units, group, None)
    assert [p.axis for p in hl.parts] == [0, 0, 0, 0]  # (heads, hidden, head_dim) in, (heads, head_dim, hidden) out
    assert [p.projection for p in hl.unit_parts] == (
        ["query", "output"] if kv_heads == 1 else ["query", "key", "value", "output"]
    )
    assert hl.kept_heads([1]) == ((hl.heads_of([1]), [0]) if kv_heads == 1 else (hl.heads_of([1]), [1]))
    seq = 5  # multiply-adds: q, k/v and output projections, then the two products
    assert transformer._attention_cost(hl, seq) == (
        seq * D * HQ * HD + seq * D * kv_heads * 2 * HD + seq * HQ * HD * D + seq * seq * HQ * 2 * HD
    )
    own_kv = 0 if kv_heads == 1 else seq * D * 2 * HD  # a unit's key/value head, unless it is shared
    assert transformer.unit_attention_cost(hl, seq) == (2 * seq * D * group * HD + own_kv + seq * seq * group * 2 * HD)


@pytest.mark.parametrize("options", [{}, GEMMA2], ids=["gemma", "gemma 2 options"])
def test_key_value_groups_and_their_query_heads_are_deleted(tmp_path, options):
    lm = gemma_lm(kv_heads=2, **options)
    small, masks, section, notes = heads.run_heads(
        lm, targets_mod.select(lm), step_config("head", sparsity=0.5, shrink=True)
    )
    assert not notes and type(small).__name__ == "PrunedGemmaCausalLM"
    for row in section["layers"]:
        g = row["removed_heads"][0] // 2  # one whole group of 2 query heads per block
        assert row["removed_heads"] == [2 * g, 2 * g + 1] and row["deleted"]
    for block in small.backbone.transformer_layers:
        assert type(block).__name__ == "PrunedGemmaDecoderBlock"
        assert (block.num_query_heads, block.num_key_value_heads, block.head_dim) == (2, 1, HD)
        assert _attention_shapes(block) == [(2, D, HD), (1, D, HD), (1, D, HD), (2, HD, D)]
    per_block = 2 * D * HD * 2 + 2 * D * HD  # two query heads (q and output slices), one key and value head
    assert lm.count_params() - small.count_params() == 2 * per_block
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedGemmaCausalLM")  # run_heads masked `lm` in place


def test_multi_query_heads_go_one_by_one_and_the_shared_head_stays(tmp_path):
    lm = gemma_lm(kv_heads=1)
    block = lm.backbone.transformer_layers[0]
    _q, key, value, _o = (sub.kernel for sub, *_ in keras_graph.attention_projections(decoders.attention(block)))
    key_before, value_before = np.asarray(key), np.asarray(value)
    small, _, section, notes = heads.run_heads(
        lm, targets_mod.select(lm), step_config("head", remove_heads=3, shrink=True)
    )
    assert not notes and section["heads_removed"] == 2 * 3
    np.testing.assert_array_equal(np.asarray(key), key_before)  # masking leaves the shared head whole
    np.testing.assert_array_equal(np.asarray(value), value_before)
    kept = [h for h in range(HQ) if h not in section["layers"][0]["removed_heads"]]
    new = small.backbone.transformer_layers[0]
    assert (new.num_query_heads, new.num_key_value_heads) == (1, 1)
    assert _attention_shapes(new) == [(1, D, HD), (1, D, HD), (1, D, HD), (1, HD, D)]
    q_new, k_new, _v, _o = (sub.kernel for sub, *_ in keras_graph.attention_projections(decoders.attention(new)))
    np.testing.assert_array_equal(np.asarray(k_new), key_before)
    q_old = keras_graph.attention_projections(decoders.attention(block))[0][0].kernel
    np.testing.assert_array_equal(np.asarray(q_new), np.asarray(q_old)[kept])
    assert lm.count_params() - small.count_params() == 2 * 3 * 2 * D * HD  # q and output slices only
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedGemmaCausalLM")


def test_geglu_units_go_from_both_gates_and_the_down_projection(tmp_path):
    lm = gemma_lm(kv_heads=1)
    tg, _notes = transformer.ffn_only(lm, targets_mod.select(lm))
    assert sorted({t.layer_name.split("/")[-1] for t in tg}) == ["ffw_gating", "ffw_gating_2", "ffw_linear"]
    small, masks, section, _ = ffn.run_ffn(lm, tg, step_config("neuron", sparsity=0.5, shrink=True))
    assert section["units_before"] == 2 * UNITS and section["units_removed"] == UNITS
    gone = section["layers"][0]["removed_units"]
    gate, up, down = keras_graph.hub_swiglu(lm.backbone.transformer_layers[0])  # masked in place
    assert gate.name == "ffw_gating"  # the one GeLU reads: gelu(0) = 0, so any zero slice silences a unit
    assert not np.asarray(gate.kernel)[:, gone].any() and not np.asarray(up.kernel)[:, gone].any()
    assert not np.asarray(down.kernel)[gone].any()
    for block in small.backbone.transformer_layers:
        assert block.intermediate_dim == FF // 2  # Gemma's config counts both gates: 2 * units
        assert [tuple(d.kernel.shape) for d in keras_graph.hub_swiglu(block)] == [(D, 8), (D, 8), (8, D)]
    assert lm.count_params() - small.count_params() == 2 * (UNITS // 2) * 3 * D
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedGemmaCausalLM")


def test_a_gemma_backbone_loses_heads_and_units_and_saves(tmp_path):
    """A GemmaBackbone alone (a functional model): its blocks rebuilt in its graph, its final
    RMSNormalization (no get_config when loaded) swapped for prunecli's, so the result saves."""
    lm = gemma_lm(kv_heads=2, layers=1)
    lm.backbone.save(tmp_path / "backbone.keras")
    transformer.register_for_file(tmp_path / "backbone.keras")
    backbone = keras.saving.load_model(tmp_path / "backbone.keras")
    small, _, _, notes = heads.run_heads(
        backbone, targets_mod.select(backbone), step_config("head", sparsity=0.5, shrink=True)
    )
    tg, _ = transformer.ffn_only(small, targets_mod.select(small))
    smaller, _, _, _ = ffn.run_ffn(small, tg, step_config("neuron", sparsity=0.5, shrink=True))
    assert not notes and type(smaller.get_layer("final_normalization")).__name__ == "PrunedRMSNormalization"
    x = token_inputs(VOCAB)
    want = np.asarray(small(x))  # heads deleted, units masked
    assert_close_rel(smaller(x), want)
    assert_close_rel(reloaded_hub(smaller, tmp_path / "small.keras")(x), want)


@pytest.mark.parametrize("granularity", ["head", "neuron"])
def test_cli_shrinks_a_saved_gemma_causal_lm(cli, tmp_path, granularity):
    lm = gemma_lm(kv_heads=2)
    path, out, report = tmp_path / "gemma.keras", tmp_path / "out.keras", tmp_path / "r.json"
    lm.save(path)
    res = cli("prune", path, "-g", granularity, "-s", "0.5", "--shrink", "--no-speed", "-o", out, "-r", report, "-q")
    assert res.exit_code == 0, res.output
    written = json.loads(report.read_text())
    section = written["heads" if granularity == "head" else "ffn"]
    assert section["verification"]["max_rel_diff"] <= 1e-4
    for row in written["decoder"]["blocks"]:  # the report reads Gemma's (heads, hidden, head_dim) kernels right
        assert (row["before"]["query_heads"], row["before"]["kv_groups"], row["before"]["head_dim"]) == (HQ, 2, HD)
        assert row["before"]["hidden"] == row["after"]["hidden"] == D
    assert written["decoder"]["macs_after"] < written["decoder"]["macs_before"]
    transformer.register_for_file(out)
    small = keras.saving.load_model(out)
    assert type(small).__name__ == "PrunedGemmaCausalLM" and small.count_params() < lm.count_params()
    assert greedy_tokens(small, hub_prompt()).shape == (2, 9)


@pytest.mark.parametrize("options", [{}, GEMMA2], ids=["gemma", "gemma2-options"])
def test_hidden_channels_go_through_one_plus_scale_norms_and_the_scaled_embedding(tmp_path, options):
    """Gemma's norms multiply by (1 + scale) and its embedding by sqrt(hidden_dim): the narrowed causal
    LM (its tied embedding, every norm, Gemma 2's post norms too) computes and generates what the masked
    one does, and keeps the dense model's sqrt(hidden_dim)."""
    from prunecli.removal import hidden

    lm = gemma_lm(kv_heads=2, **options)
    small, _masks, section, notes = hidden.run_hidden(
        lm, targets_mod.select(lm), step_config("hidden", sparsity=0.5, shrink=True)
    )
    assert not notes and (section["hidden_before"], section["hidden_after"]) == (D, D - 8)
    assert section["verification"]["max_rel_diff"] <= 1e-4
    assert small.backbone.hidden_dim == D - 8 and small.backbone.embedding_scale == pytest.approx(np.sqrt(D))
    for block in small.backbone.transformer_layers:
        assert block.hidden_dim == D - 8 and _attention_shapes(block)[0] == (HQ, D - 8, HD)
    check_shrunk_lm(lm, small, tmp_path, VOCAB, "PrunedGemmaCausalLM")  # `lm` was masked in place by run_hidden
