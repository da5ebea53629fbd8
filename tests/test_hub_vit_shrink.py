"""KerasHub ViT and DeiT image classifiers: feed-forward units, attention heads and whole encoder blocks
removed for real (structure/vision_encoders.py), the task staying the user's class.

Their blocks sit inside one encoder layer of the backbone's graph; each shrunk model is checked against
the masked model it came from, after a save/load round trip too, and its parameter count against the
slices removed. Tiny configs built with keras_hub (no download), every weight spread out so a removed
unit's or head's bias must follow it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_close_rel, reloaded_hub, spread_weights, step_config

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli.removal import ffn, heads  # noqa: E402
from prunecli.removal import layers as layer_removal  # noqa: E402
from prunecli.structure import keras_graph, transformer, vision_encoders  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402

D, H, FF, SIDE = 8, 2, 16, 16
HD = D // H
PER_UNIT = D + 1 + D  # a feed-forward unit: first Dense column and bias, second Dense row
PER_HEAD = 3 * (D * HD + HD) + HD * D  # a head's q/k/v kernel and bias slices and its output rows
FAMILIES = {"ViT": "mlp_dim", "DeiT": "intermediate_dim"}
# ViT in the fast subset, DeiT (the same machinery, its feed-forward network split in two sublayers) in the full suite
FAST_VIT = ["ViT", pytest.param("DeiT", marks=pytest.mark.slow)]


def classifier(family: str, layers: int = 2, seed: int = 0, units: int = FF):
    keras.utils.set_random_seed(seed)
    backbone = getattr(kh.models, f"{family}Backbone")(
        image_shape=(SIDE, SIDE, 3),
        patch_size=8,
        num_layers=layers,
        num_heads=H,
        hidden_dim=D,
        **{FAMILIES[family]: units},
    )
    spread_weights(backbone, seed)
    return getattr(kh.models, f"{family}ImageClassifier")(backbone=backbone, num_classes=3, preprocessor=None)


def images(n: int = 4):
    return np.random.default_rng(0).uniform(size=(n, SIDE, SIDE, 3)).astype("float32")


def check_rebuilt(model, small, tmp_path, family: str):
    """`small` is the user's task class around prunecli's backbone, computes what the masked `model`
    computes, and does so after a save and load."""
    assert type(small) is type(model) and type(small.backbone).__name__ == f"Pruned{family}Backbone"
    x = images()
    want = np.asarray(model(x))
    assert_close_rel(small(x), want)
    back = reloaded_hub(small, tmp_path / "small.keras")
    assert type(back) is type(model)
    assert_close_rel(back(x), want)


@pytest.mark.slow  # ~3 s each (ViT's fast representatives: block removal and the multiply-add count)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_feed_forward_units_leave_each_block_as_a_global_selection_chose_them(family, tmp_path):
    model = classifier(family)
    weak = vision_encoders.ffns(model)[1]  # block 2's units weaker: a global selection takes more of them
    weak.up.kernel.assign(np.asarray(weak.up.kernel) * 0.1)
    tg, _notes = transformer.ffn_only(model, targets_mod.select(model))
    assert {id(t.variable) for t in tg} == vision_encoders.ffn_kernel_ids(model)
    before = model.count_params()
    config = step_config("neuron", sparsity=0.5, scope="global", normalize="none", shrink=True)
    small, masks, section, _ = ffn.run_ffn(model, tg, config)
    kept = [FF - len(row["removed_units"]) for row in section["layers"]]
    assert kept[0] > kept[1] and sum(kept) == FF and all(row["deleted"] for row in section["layers"])
    f = vision_encoders.ffns(model)[0]  # masked in place, the first Dense's bias with its unit
    assert not np.asarray(f.up.bias)[section["layers"][0]["removed_units"]].any()
    blocks = small.backbone.encoder.encoder_layers
    assert [getattr(b, FAMILIES[family]) for b in blocks] == kept
    assert [int(keras_graph.hub_ffn(b)[1].kernel.shape[-1]) for b in blocks] == kept
    assert before - small.count_params() == FF * PER_UNIT == section["params_before"] - section["params_after"]
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_rebuilt(model, small, tmp_path, family)


@pytest.mark.slow  # 3.3 s for ViT
@pytest.mark.parametrize("family", list(FAMILIES))
def test_heads_leave_with_their_biases_and_the_key_size_kept(family, tmp_path):
    model = classifier(family)
    before = model.count_params()
    small, _, section, notes = heads.run_heads(
        model, targets_mod.select(model), step_config("head", sparsity=0.5, shrink=True)
    )
    assert not notes and all(row["deleted"] and len(row["removed_heads"]) == 1 for row in section["layers"])
    for block in small.backbone.encoder.encoder_layers:
        attention = vision_encoders.attention(block)
        assert (block.num_heads, block.key_dim, keras_graph.attention_key_dim(attention)) == (1, HD, HD)
        assert tuple(attention.query_dense.kernel.shape) == (D, 1, HD)
    assert before - small.count_params() == 2 * PER_HEAD
    assert section["verification"]["max_rel_diff"] <= 1e-4
    check_rebuilt(model, small, tmp_path, family)


def test_a_whole_encoder_block_leaves_and_the_next_reads_the_embedding(tmp_path):
    """-g layer: the candidates are the encoder's blocks (the graph sees one encoder node); without block 1
    the model is embedding -> block 2 -> final norm -> the task's head, block 2 keeping its name."""
    model = classifier("ViT")
    candidates, rows = layer_removal.analyse(model)
    named = vision_encoders.named_blocks(model)
    assert [c.name for c in candidates] == [name for name, _block in named]
    assert [c.layers for c in candidates] == [[row["layer"]] for row in rows] == [[b.name] for _name, b in named]
    small = layer_removal.remove(model, [candidates[0]])
    encoder = model.backbone.get_layer("vit_encoder")
    x = images()
    tokens = encoder.layer_norm(encoder.encoder_layers[1](model.backbone.get_layer("vit_patching_and_embedding")(x)))
    want = np.asarray(model.get_layer("predictions")(tokens[:, 0]))
    assert [b.name for b in small.backbone.encoder.encoder_layers] == ["transformer_block_2"]
    assert model.count_params() - small.count_params() == layer_removal._params(encoder.encoder_layers[0])
    assert_close_rel(small(x), want)
    assert_close_rel(reloaded_hub(small, tmp_path / "small.keras")(x), want)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ViT"])  # DeiT's rebuild is the same code, its parts tested above
def test_cli_meets_parameter_targets_and_drops_a_block_of_a_saved_classifier(cli, family, tmp_path):
    from prunecli.io.models import load

    model = classifier(family, layers=3, units=4 * FF)  # the feed-forward units hold most parameters, as in ViT-B
    path = tmp_path / "m.keras"
    model.save(path)
    out, report = tmp_path / "out.keras", tmp_path / "r.json"
    res = cli("prune", path, "-g", "neuron", "--target", "params=0.7", "--shrink", "-o", out, "-r", report, "-q")
    assert res.exit_code == 0, res.output
    small, _info = load(out)
    assert type(small).__name__ == f"{family}ImageClassifier"
    assert abs(small.count_params() / model.count_params() - 0.7) <= 0.02
    assert json.loads(report.read_text())["ffn"]["verification"]["max_rel_diff"] <= 1e-4
    res = cli("prune", path, "-g", "layer", "--remove-layers", "1", "-o", tmp_path / "layer.keras", "-q")
    assert res.exit_code == 0, res.output
    small, _info = load(tmp_path / "layer.keras")
    assert type(small).__name__ == f"{family}ImageClassifier" and len(small.backbone.encoder.encoder_layers) == 2
    res = cli("prune", path, "-g", "transformer", "--target", "params=0.7", "-o", tmp_path / "split.keras", "-q")
    assert res.exit_code == 0, res.output  # heads, units and blocks split in one rebuild of the encoder
    small, _info = load(tmp_path / "split.keras")
    assert type(small).__name__ == f"{family}ImageClassifier"
    assert abs(small.count_params() / model.count_params() - 0.7) <= 0.02


@pytest.mark.slow
@pytest.mark.parametrize("family", FAST_VIT)
def test_a_vision_transformers_multiply_adds_are_counted_through_its_encoder(family):
    """Its encoder (every block in one layer) and patch embedding had no cost: the total was partial and
    --target flops= refused. The count is now each block's attention and feed-forward cost at the patch
    sequence, plus the patch convolution once per patch, and it follows a block's removal."""
    from prunecli.structure import flops

    model = classifier(family, layers=3)
    counted = flops.count(model)
    assert not counted["partial"]
    by_class = {row["class"]: row["macs"] for row in counted["layers"]}
    patches = (SIDE // 8) ** 2
    embedding = "ViTPatchingAndEmbedding" if family == "ViT" else "DeiTEmbeddings"
    assert by_class[embedding] == patches * 8 * 8 * 3 * D  # an 8x8x3 patch to D channels, once per patch
    encoder = vision_encoders.parts(model).encoder
    blocks = encoder.encoder_layers
    tokens = patches + (1 if family == "ViT" else 2)  # the class token (DeiT's distillation token too)
    assert heads.model_seq_len(model) == tokens  # what --target flops= prices a unit or a head at
    from prunecli.errors import ConfigError
    from prunecli.removal import units

    config = step_config("neuron", target="flops=0.8", seq_len=tokens + 1)
    with pytest.raises(ConfigError, match=f"see {tokens} tokens, fixed by the model's inputs"):
        units.counted_at_length(model, config, "the ViT's blocks", tokens)
    one_block = transformer.block_macs(blocks[0], [(None, tokens, D)], [])[0]
    assert by_class[type(encoder).__name__] == 3 * one_block
    candidates, _rows = layer_removal.analyse(model)
    smaller = layer_removal.remove(model, candidates[:1])
    assert flops.count(smaller)["total"] == counted["total"] - one_block
