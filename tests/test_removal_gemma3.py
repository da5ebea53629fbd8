"""KerasHub Gemma3 (Gemma3CausalLM around a text-only Gemma3Backbone): heads, GeGLU units, whole blocks and
hidden channels deleted for real.

Gemma3's blocks are Gemma's (head_dim in their config, (heads, hidden, head_dim) kernels, GeGLU, norms that
multiply by 1 + scale, now its own RMSNormalization without a get_config) with query/key norms over one
head's dimensions, sliding-window attention in five blocks of six (the sixth global, with its own RoPE
wavelength), and a task whose cache is one (key, value) pair per block. Tiny text-only configs built with
keras_hub (no download): each shrunk model is checked against the masked model it came from (1e-4
relative), after a save/load round trip too, and greedy decoding gives the masked model's tokens.
KerasHub's own Gemma3CausalLM.generate() fails without a preprocessor (unpruned too: it concatenates the
outputs' None entries), so the tokens come from its generate_step.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    SHRINK_COMMANDS,
    assert_close_rel,
    cli_shrinks,
    hub_prompt,
    reloaded_hub,
    spread_weights,
    step_config,
    token_inputs,
)

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli.removal import ffn, heads, hidden  # noqa: E402
from prunecli.removal import layers as layer_removal  # noqa: E402
from prunecli.structure import decoders, keras_graph, transformer  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402

D, HQ, KV, HD, FF, VOCAB, LAYERS = 16, 4, 2, 8, 32, 50, 6  # FF units in each gate (gate_dim_reduction 1)
SLIDING = [True] * 5 + [False]  # Gemma3Backbone: five sliding-window blocks, then a global one
WAVELENGTHS = [10_000.0] * 5 + [1_000_000.0]


def gemma3_lm(layers: int = LAYERS, seed: int = 0, vision_encoder=None):
    """A text-only Gemma3CausalLM from a config (query/key norms, a sliding window of 4 tokens, shorter
    than token_inputs' rows), its weights (norm scales included, zero at init) spread out; with a
    `vision_encoder`, one that reads images too."""
    keras.utils.set_random_seed(seed)
    backbone = kh.models.Gemma3Backbone(
        vocabulary_size=VOCAB,
        image_size=16,
        num_layers=layers,
        num_query_heads=HQ,
        num_key_value_heads=KV,
        hidden_dim=D,
        intermediate_dim=FF,
        head_dim=HD,
        vision_encoder=vision_encoder,
        use_query_key_norm=True,
        use_post_attention_norm=True,
        use_post_ffw_norm=True,
        use_sliding_window_attention=True,
        sliding_window_size=4,
    )
    spread_weights(backbone, seed)
    return kh.models.Gemma3CausalLM(backbone=backbone, preprocessor=None)


def _greedy(lm) -> np.ndarray:
    """hub_prompt's greedy continuation through the task's generate_step (its cached decoding loop)."""
    import tensorflow as tf

    lm.compile(sampler="greedy")
    prompt = {name: tf.constant(value) for name, value in hub_prompt().items()}
    return np.asarray(lm.generate_step(prompt, stop_token_ids=None)["token_ids"])


def _windows(lm) -> list:
    return [(b.use_sliding_window_attention, b.rope_wavelength) for b in lm.backbone.transformer_layers]


def _check_shrunk(masked_lm, small, tmp_path) -> None:
    """`small` computes what `masked_lm` does, before and after a save/load round trip, and the reloaded
    model (`small`'s class and weights) decodes its tokens, each block keeping its sliding window and
    RoPE wavelength."""
    x = token_inputs(VOCAB)
    want = np.asarray(masked_lm(x))
    assert_close_rel(small(x), want)
    tokens = _greedy(masked_lm)
    assert (tokens[:, 3:] != 0).any()
    back = reloaded_hub(small, tmp_path / "small.keras")
    assert type(back).__name__ == "PrunedGemma3CausalLM" and _windows(back) == _windows(masked_lm)
    assert_close_rel(back(x), want)
    np.testing.assert_array_equal(_greedy(back), tokens)


def test_a_gemma3_block_is_read_as_gemma_s_with_query_key_norms_kept_whole():
    lm = gemma3_lm(layers=1)
    block = lm.backbone.transformer_layers[0]
    assert decoders.family(block) == "Gemma3DecoderBlock" and decoders.shrink_blocker(block) is None
    assert decoders.head_counts(block) == (HQ, KV) and decoders.head_size(block) == HD
    gate, up, down = keras_graph.hub_ffn(block)
    assert (gate.name, up.name, down.name) == ("ffw_gating", "ffw_gating_2", "ffw_linear")
    hl = heads.find(lm)[0]
    assert (hl.units, hl.group, [p.axis for p in hl.parts]) == (KV, HQ // KV, [0, 0, 0, 0])
    assert tuple(decoders.attention(block).query_norm.scale.shape) == (HD,)  # over a head: not sliced
    assert decoders.narrow_blocker(lm) is None  # its RMSNormalization divides by the RMS only


@pytest.mark.slow
def test_key_value_groups_go_and_each_block_keeps_its_window(tmp_path):
    lm = gemma3_lm()
    assert _windows(lm) == list(zip(SLIDING, WAVELENGTHS, strict=True))
    small, masks, section, notes = heads.run_heads(
        lm, targets_mod.select(lm), step_config("head", sparsity=0.5, shrink=True)
    )
    assert not notes and type(small).__name__ == "PrunedGemma3CausalLM"
    for block in small.backbone.transformer_layers:
        assert type(block).__name__ == "PrunedGemma3DecoderBlock"
        assert (block.num_query_heads, block.num_key_value_heads, decoders.head_size(block)) == (2, 1, HD)
    per_group = 2 * D * HD * 2 + 2 * D * HD  # two query heads (q and output slices), one key and value head
    assert lm.count_params() - small.count_params() == LAYERS * per_group
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    _check_shrunk(lm, small, tmp_path)  # run_heads masked `lm` in place


@pytest.mark.slow
def test_geglu_units_go_from_both_gates_and_the_down_projection(tmp_path):
    lm = gemma3_lm()
    tg, _notes = transformer.ffn_only(lm, targets_mod.select(lm))
    small, masks, section, _ = ffn.run_ffn(lm, tg, step_config("neuron", sparsity=0.5, shrink=True))
    assert section["units_before"] == LAYERS * FF and section["units_removed"] == LAYERS * FF // 2
    for block in small.backbone.transformer_layers:
        assert block.intermediate_dim == FF // 2  # Gemma3's config counts one gate's units
        assert [tuple(d.kernel.shape) for d in keras_graph.hub_ffn(block)] == [(D, 16), (D, 16), (16, D)]
    assert lm.count_params() - small.count_params() == LAYERS * FF // 2 * 3 * D
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    _check_shrunk(lm, small, tmp_path)


@pytest.mark.slow
def test_hidden_channels_go_through_one_plus_scale_norms_and_the_scaled_embedding(tmp_path):
    lm = gemma3_lm()
    small, _masks, section, notes = hidden.run_hidden(
        lm, targets_mod.select(lm), step_config("hidden", sparsity=0.5, shrink=True)
    )
    assert not notes and (section["hidden_before"], section["hidden_after"]) == (D, D - 8)
    assert section["verification"]["max_rel_diff"] <= 1e-4
    assert small.backbone.embedding_scale == pytest.approx(np.sqrt(D))  # the dense model's factor
    assert type(small.backbone.layer_norm).__name__ == "PrunedGemma3RMSNormalization"
    _check_shrunk(lm, small, tmp_path)  # `lm` was masked in place


@pytest.mark.slow
def test_a_removed_block_takes_nothing_from_the_others_windows(tmp_path):
    """Removing a sliding-window block leaves the global one global: each block's window and wavelength
    are its own config, and the smaller model computes what the kept blocks did."""
    lm = gemma3_lm()
    candidates, _rows = layer_removal.analyse(lm)
    assert [c.name for c in candidates] == [f"block:decoder_block_{i}" for i in range(LAYERS)]
    smaller = layer_removal.remove(lm, [candidates[0]])
    assert _windows(smaller) == list(zip(SLIDING, WAVELENGTHS, strict=True))[1:]
    x = token_inputs(VOCAB)
    b = lm.backbone
    h = b.token_embedding(x["token_ids"]) * np.sqrt(D).astype("float32")
    for block in b.transformer_layers[1:]:
        h = block(h, padding_mask=x["padding_mask"])
    want = b.token_embedding(b.layer_norm(h), reverse=True)
    assert_close_rel(smaller(x), want)
    assert_close_rel(reloaded_hub(smaller, tmp_path / "small.keras")(x), want)


@pytest.fixture(scope="module")
def dense_lm():
    """gemma3_lm() for the CLI runs below, built once: each saves it and reads its parameter count only."""
    return gemma3_lm()


@pytest.mark.slow
@SHRINK_COMMANDS
def test_cli_shrinks_a_saved_gemma3_causal_lm(cli, tmp_path, command, dense_lm):
    small = cli_shrinks(cli, dense_lm, tmp_path, command, "PrunedGemma3CausalLM")
    if "head" in command:  # the written file generates (reloads after the other rebuilds do above)
        assert _greedy(small).shape == (2, 9)


@pytest.fixture(scope="module")
def vision_lm_file(tmp_path_factory):
    """A two-block Gemma3 that reads images too, built and saved once for every granularity below (each
    run reads it and writes beside it in its own folder)."""
    encoder = kh.models.Gemma3VisionEncoder(
        image_size=16,
        patch_size=4,
        num_heads=2,
        hidden_dim=8,
        num_layers=1,
        intermediate_dim=16,
        output_dim=D,
        pool_size=2,
    )
    path = tmp_path_factory.mktemp("gemma3_vision") / "vision.keras"
    gemma3_lm(layers=2, vision_encoder=encoder).save(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["head", "neuron", "hidden", "layer", "element"])
def test_a_gemma3_with_a_vision_encoder_is_refused_in_one_line(cli, tmp_path, vision_lm_file, granularity):
    """The rebuilt backbone is text-only: a Gemma3 that reads images is refused (exit 3, one line) for
    every granularity that rebuilds its blocks, before anything is measured, and nothing is written;
    element pruning, which rebuilds nothing, still runs (--shrink with it too: no tokens/s measured)."""
    path, out = vision_lm_file, tmp_path / "out.keras"
    how = ["--remove-layers", "1"] if granularity == "layer" else ["-s", "0.5", "--shrink"]
    res = cli("prune", path, "-g", granularity, *how, "-o", out, "-q")
    if granularity == "element":
        assert res.exit_code == 0, res.output
        assert out.exists()
        return
    assert res.exit_code == 3, res.output
    assert "vision encoder is not rebuilt" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in path.parent.iterdir()) == ["vision.keras"]
