"""KerasHub's ALiBi decoders, Bloom and Falcon (BloomCausalLM / FalconCausalLM around their backbones):
heads, un-gated feed-forward units, whole blocks and residual channels deleted for real.

Both attentions are multi-head with ALiBi positions, each head's slope derived from the number of heads
(Bloom's in its own AlibiBias layer, Falcon's in the block on every call): a rebuilt attention keeps each
kept head's own slope. q, k and v are EinsumDense layers with biases (hidden, heads, head_dim), the output
one Dense (heads * head_dim, hidden). Bloom's block refuses a residual width its heads do not divide when
it builds (three heads of 8 in 32 channels are built all the same), and its backbone normalises the token
embedding before the first block, which the rebuilt backbone keeps. Their norms are LayerNormalization:
a narrowed stream keeps them normalising as over the full width. Tiny configs built with keras_hub (no download): each shrunk model is
checked against the masked model it came from (1e-4 relative), after a save/load round trip too, and
generate() gives the masked model's tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

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
)

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli.removal import ffn, heads  # noqa: E402
from prunecli.structure import decoders, keras_graph, transformer  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402

D, H, FF, VOCAB = 32, 4, 64, 50
HD = D // H
SLOPES = [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]  # ALiBi's slopes for 4 heads
PER_HEAD = 3 * (D * HD + HD) + HD * D  # a head's q/k/v kernel and bias slices and its output rows
PER_UNIT = D + 1 + D  # a feed-forward unit: intermediate column and bias, output row


@dataclass(frozen=True)
class Family:
    """What differs between the two ALiBi families, as the tests read it."""

    name: str  # Bloom | Falcon: the KerasHub class prefix
    block: str  # the block's class name
    heads_arg: str  # the backbone's (and block's) argument for the number of heads
    ffn: tuple[str, str]  # the feed-forward network's up and down Dense names
    embedding_norm: str  # the backbone's norm after the token embedding ("" when none)
    final_norm: str  # the backbone's final norm
    removed: tuple[int, ...]  # heads the slope test masks: the kept ones get another layer's slopes

    def lm(self, layers: int = 2, seed: int = 0):
        """A causal LM from a config, its weights (biases and LayerNorm offsets included) spread out."""
        keras.utils.set_random_seed(seed)
        backbone = getattr(kh.models, f"{self.name}Backbone")(
            vocabulary_size=VOCAB, num_layers=layers, hidden_dim=D, intermediate_dim=FF, **{self.heads_arg: H}
        )
        spread_weights(backbone, seed)
        return getattr(kh.models, f"{self.name}CausalLM")(backbone=backbone, preprocessor=None)

    @property
    def causal_lm(self) -> str:
        return f"Pruned{self.name}CausalLM"


BLOOM = Family(
    "Bloom",
    "BloomDecoder",
    "num_heads",
    ("mlp_intermediate_dense", "mlp_output_dense"),
    "embeddings_layer_norm",
    "layer_norm",
    (1,),
)
FALCON = Family(
    "Falcon",
    "FalconTransformerDecoder",
    "num_attention_heads",
    ("dense_h_to_4h", "dense_4h_to_h"),
    "",
    "final_layernorm",
    (2, 3),
)
FAMILIES = pytest.mark.parametrize("fam", [BLOOM, FALCON], ids=lambda f: f.name)


@FAMILIES
def test_a_block_is_read_as_multi_head_alibi_attention_and_an_ungated_network(fam):
    lm = fam.lm(layers=1)
    block = lm.backbone.transformer_layers[0]
    assert decoders.family(block) == fam.block and decoders.shrink_blocker(block) is None
    assert decoders.head_counts(block) == (H, H) and decoders.head_size(block) == HD
    assert keras_graph.alibi_slopes(block) == SLOPES
    hl = heads.find(lm)[0]
    assert (hl.units, hl.group, heads.unit_params(hl)) == (H, 1, PER_HEAD)
    assert [(p.projection, p.axis, p.width) for p in hl.parts if p.projection == "output"] == [("output", 0, HD)]
    gate, up, down = keras_graph.hub_ffn(block)
    assert gate is None and (up.name, down.name) == fam.ffn
    assert decoders.narrow_blocker(lm) is None  # its LayerNorms narrow as NarrowedLayerNormalization


@FAMILIES
def test_kept_heads_keep_their_head_size_and_their_own_alibi_slopes(fam):
    """Bloom keeps heads 0, 2 and 3 (32 channels are not three heads of 8 to its block), Falcon 0 and 1:
    kept heads would get the slopes of a layer with that many heads; the rebuilt block has its own
    heads' slopes and head size, and computes what the masked block computes, which one with the
    default slopes does not."""
    block = fam.lm(layers=1).backbone.transformer_layers[0]
    hl = heads.find_in_layer(block)[0]
    heads.apply(heads.head_masks([hl], {hl.path: list(fam.removed)}), [hl])
    x = np.random.default_rng(0).standard_normal((2, 6, D)).astype("float32")
    want = np.asarray(block(x))
    kept = [h for h in range(H) if h not in fam.removed]
    new, values = decoders.smaller(block, kept, kept)
    assert new.alibi_slopes == [SLOPES[h] for h in kept] and keras_graph.alibi_slopes(block) == SLOPES
    plain = type(new).from_config({k: v for k, v in new.get_config().items() if k != "alibi_slopes"})
    for layer in (new, plain):
        layer.build((None, None, D))
        for w in layer.weights:
            w.assign(values[str(w.path)])
    heads_now = getattr(new, fam.heads_arg)
    assert (heads_now, decoders.head_size(new), keras_graph.alibi_slopes(new)) == (len(kept), HD, new.alibi_slopes)
    assert_close_rel(new(x), want)
    assert np.abs(np.asarray(plain(x)) - want).max() > 1e-3  # the default slopes: another function


@pytest.mark.slow
@FAMILIES
def test_heads_go_with_their_biases_and_their_slopes_stay(fam, tmp_path):
    lm = fam.lm()
    small, masks, section, notes = heads.run_heads(
        lm, targets_mod.select(lm), step_config("head", sparsity=0.5, shrink=True)
    )
    assert not notes and type(small).__name__ == fam.causal_lm
    for row, block in zip(section["layers"], small.backbone.transformer_layers, strict=True):
        kept = [h for h in range(H) if h not in row["removed_heads"]]
        assert row["deleted"] and len(kept) == 2
        assert type(block).__name__ == f"Pruned{fam.block}"
        assert (getattr(block, fam.heads_arg), block.head_dim, decoders.head_size(block)) == (2, HD, HD)
        assert block.alibi_slopes == [SLOPES[h] for h in kept] == keras_graph.alibi_slopes(block)
        shapes = [tuple(sub.kernel.shape) for sub, *_ in keras_graph.attention_projections(decoders.attention(block))]
        assert shapes == [(D, 2, HD)] * 3 + [(2 * HD, D)]
    if fam.embedding_norm:
        assert type(small.backbone.embedding_norm).__name__ == "LayerNormalization"
    assert lm.count_params() - small.count_params() == 2 * 2 * PER_HEAD
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, fam.causal_lm)  # run_heads masked `lm` in place


@pytest.mark.slow
@FAMILIES
def test_ungated_units_go_from_both_dense_layers_and_the_bias(fam, tmp_path):
    lm = fam.lm()
    tg, _notes = transformer.ffn_only(lm, targets_mod.select(lm))
    assert sorted({t.layer_name.split("/")[-1] for t in tg}) == sorted(fam.ffn)
    small, masks, section, _ = ffn.run_ffn(lm, tg, step_config("neuron", sparsity=0.5, shrink=True))
    assert section["units_before"] == 2 * FF and section["units_removed"] == FF
    f = ffn.find(lm)[0]
    gone = section["layers"][0]["removed_units"]
    assert not np.asarray(f.up.kernel)[:, gone].any() and not np.asarray(f.up.bias)[gone].any()
    for block in small.backbone.transformer_layers:
        _gate, up, down = keras_graph.hub_ffn(block)
        assert block.intermediate_dim == FF // 2 and tuple(down.kernel.shape) == (FF // 2, D)
    assert lm.count_params() - small.count_params() == FF * PER_UNIT
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_shrunk_lm(lm, small, tmp_path, VOCAB, fam.causal_lm)


@pytest.mark.slow
@FAMILIES
def test_whole_blocks_leave_and_the_rest_compute_as_before(fam, tmp_path):
    def embed(backbone, token_ids):  # Bloom normalises the token embedding: kept by the rebuilt backbone
        h = backbone.token_embedding(token_ids)
        return getattr(backbone, fam.embedding_norm)(h) if fam.embedding_norm else h

    lm = fam.lm(layers=3)
    check_block_removed(
        lm, tmp_path, VOCAB, fam.causal_lm, drop=1, embed=embed, final_norm=fam.final_norm, decode="same"
    )


@pytest.mark.slow
@FAMILIES
def test_hidden_channels_leave_through_the_layer_norms(fam, tmp_path):
    """Bloom's embedding LayerNorm and Falcon's blocks narrow with the rest of the stream."""
    check_narrowed_lm(fam.lm(layers=2), tmp_path, VOCAB, fam.causal_lm, sparsity=0.25)


_DENSE_LMS: dict = {}  # fam.lm() of each family for the CLI runs below: each saves it and reads its parameter count


@pytest.mark.slow
@FAMILIES
@SHRINK_COMMANDS
def test_cli_shrinks_a_saved_causal_lm(fam, cli, tmp_path, command):
    lm = _DENSE_LMS.get(fam.name) or _DENSE_LMS.setdefault(fam.name, fam.lm())
    small = cli_shrinks(cli, lm, tmp_path, command, fam.causal_lm)
    if "head" in command:  # the written file generates (reloads after the other rebuilds do above)
        assert greedy_tokens(small, hub_prompt()).shape == (2, 9)
