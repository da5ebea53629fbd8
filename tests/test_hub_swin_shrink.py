"""KerasHub Swin Transformer image classifiers: Mlp units, attention heads and whole blocks removed for real
(structure/vision_encoders.py), the task staying the user's SwinTransformerImageClassifier.

Swin's blocks sit inside its stages (one layer of the backbone's graph each, the blocks then patch
merging); a unit is fc1's column and bias and fc2's row; a head its entries of the q, k and v runs of the
one qkv Dense (and its bias), its rows of the output Dense and its column of the relative position bias
table. Each shrunk model is checked against the masked
model it came from (or a forward computed layer by layer), after a save/load round trip too, and its
parameter count against the slices removed. Tiny configs built with keras_hub (no download). Swin's
blocks trace slowly (shifted-window masks): these run in the full suite.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_close_rel, reloaded_hub, spread_weights, step_config

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli.removal import ffn, heads  # noqa: E402
from prunecli.removal import layers as layer_removal  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402
from prunecli.structure import transformer, vision_encoders  # noqa: E402

DIM, SIDE = 8, 32
PER_UNIT = [2 * d + 1 for d in (DIM, 2 * DIM)]  # fc1 column and bias, fc2 row, per stage width
HD, TABLE = 4, 7 * 7  # heads of 4 channels (num_heads (2, 4)); a 4x4 window's table: (2 * 4 - 1) ** 2 offsets
PER_HEAD = [
    3 * (d * HD + HD) + HD * d + TABLE for d in (DIM, 2 * DIM)
]  # q/k/v columns and bias, output rows, table column

pytestmark = pytest.mark.slow  # ~10 s each


def classifier(seed: int = 0):
    keras.utils.set_random_seed(seed)
    backbone = kh.models.SwinTransformerBackbone(
        image_shape=(SIDE, SIDE, 3), embed_dim=DIM, depths=(2, 2), num_heads=(2, 4), window_size=4, patch_size=4
    )
    spread_weights(backbone, seed)
    return kh.models.SwinTransformerImageClassifier(backbone=backbone, num_classes=3, preprocessor=None)


def images(n: int = 4):
    return np.random.default_rng(0).uniform(size=(n, SIDE, SIDE, 3)).astype("float32")


def check_rebuilt(model, small, tmp_path, want=None):
    assert type(small) is type(model) and type(small.backbone).__name__ == "PrunedSwinTransformerBackbone"
    x = images()
    want = np.asarray(model(x)) if want is None else want
    assert_close_rel(small(x), want)
    back = reloaded_hub(small, tmp_path / "small.keras")
    assert type(back) is type(model) and type(back.backbone).__name__ == "PrunedSwinTransformerBackbone"
    assert_close_rel(back(x), want)


def test_mlp_units_leave_each_swin_block(tmp_path):
    model = classifier()
    tg, _notes = transformer.ffn_only(model, targets_mod.select(model))
    found = ffn.find(model, tg)
    assert [f.units for f in found] == [4 * DIM] * 2 + [8 * DIM] * 2
    before = model.count_params()
    small, _masks, section, _ = ffn.run_ffn(model, tg, step_config("neuron", sparsity=0.5, shrink=True))
    removed = [len(row["removed_units"]) for row in section["layers"]]
    assert removed == [f.units // 2 for f in found]
    assert not np.asarray(found[0].up.bias)[section["layers"][0]["removed_units"]].any()
    assert [b.mlp_units for b in vision_encoders.blocks(small)] == [f.units // 2 for f in found]
    gone = sum(r * per for r, per in zip(removed, [PER_UNIT[0]] * 2 + [PER_UNIT[1]] * 2, strict=True))
    assert before - small.count_params() == gone
    assert section["verification"]["max_rel_diff"] <= 1e-4
    check_rebuilt(model, small, tmp_path)


def test_a_whole_swin_block_leaves_and_the_shifted_one_keeps_its_shift(tmp_path):
    """-g layer: without stage 0's first block, its shifted-window block reads the embedding directly; without
    both of stage 1's, the final norm reads stage 0's output (a stage left empty)."""
    model = classifier()
    candidates, _rows = layer_removal.analyse(model)
    assert [c.name for c in candidates] == [name for name, _b in vision_encoders.named_blocks(model)]
    small = layer_removal.remove(model, [candidates[0]])
    backbone = model.backbone
    stage0, stage1 = vision_encoders.swin_stages(backbone)
    x = images()
    hidden = stage0.blocks[1](backbone.get_layer("pos_drop")(backbone.patch_embedding(x)))
    hidden = stage0.downsample(hidden, H=stage0.input_resolution[0], W=stage0.input_resolution[1])
    hidden = backbone.norm(stage1.blocks[1](stage1.blocks[0](hidden)))
    want = np.asarray(model.get_layer("predictions")(np.mean(np.asarray(hidden), axis=1)))
    blocks = vision_encoders.blocks(small)
    assert [b.name for b in blocks] == ["blocks_1", "blocks_0", "blocks_1"] and blocks[0].shift_size == 2
    assert model.count_params() - small.count_params() == layer_removal._params(stage0.blocks[0])
    check_rebuilt(model, small, tmp_path, want)
    emptied = layer_removal.remove(model, candidates[2:])  # stage 1 keeps none of its blocks (was refused)
    hidden = backbone.norm(stage0(backbone.get_layer("pos_drop")(backbone.patch_embedding(x))))
    want = np.asarray(model.get_layer("predictions")(np.mean(np.asarray(hidden), axis=1)))
    assert [len(stage.blocks) for stage in vision_encoders.swin_stages(emptied.backbone)] == [2, 0]
    check_rebuilt(model, emptied, tmp_path, want)


def test_heads_leave_swin_blocks_with_their_bias_table_columns(tmp_path):
    """-g head --shrink: each block keeps half its heads (the report's rows per block, stage by stage), each
    of HD channels still (KerasHub's block would derive dim // heads), and its relative position bias table
    the kept heads' columns; the model equals the masked one, its parameters fall by the heads' slices,
    and it reloads."""
    model = classifier()
    found = heads.find(model)
    tables = [np.asarray(hl.layer.relative_position_bias_table) for hl in found]
    before = model.count_params()
    small, _masks, section, notes = heads.run_heads(
        model, targets_mod.select(model), step_config("head", sparsity=0.5, shrink=True)
    )
    rows = section["layers"]
    assert [(r["layer"].split("/")[1], r["heads_before"], r["heads_after"]) for r in rows] == [
        ("stage_0", 2, 1),
        ("stage_0", 2, 1),
        ("stage_1", 4, 2),
        ("stage_1", 4, 2),
    ]
    assert not notes and all(r["deleted"] for r in rows)
    gone = rows[0]["removed_heads"]  # masked in place: its table column with its head
    assert not np.asarray(found[0].layer.relative_position_bias_table)[:, gone].any()
    blocks = vision_encoders.blocks(small)
    assert [(b.num_heads, b.attn.head_dim) for b in blocks] == [(1, HD), (1, HD), (2, HD), (2, HD)]
    assert [tuple(b.attn.qkv.kernel.shape) for b in blocks] == [(DIM, 3 * HD)] * 2 + [(2 * DIM, 6 * HD)] * 2
    for block, row, table in zip(blocks, rows, tables, strict=True):
        kept = [h for h in range(row["heads_before"]) if h not in row["removed_heads"]]
        assert np.array_equal(np.asarray(block.attn.relative_position_bias_table), table[:, kept])
    assert blocks[1].shift_size == 2  # the shifted-window block keeps its shift
    assert section["attention_macs_after"] * 2 == section["attention_macs_before"]  # each stage at its tokens
    stages = vision_encoders.swin_stages(small.backbone)
    assert small.backbone.num_heads == [s.num_heads for s in stages] == [1, 2]  # each stage's largest
    removed = 2 * PER_HEAD[0] + 4 * PER_HEAD[1]
    assert before - small.count_params() == removed == section["params_before"] - section["params_after"]
    assert section["verification"]["max_rel_diff"] <= 1e-4
    check_rebuilt(model, small, tmp_path)


def test_swin_multiply_adds_are_counted_window_by_window_and_a_flops_target_prices_each_stage():
    """The count at the model's image size, by hand: 8x8 = 64 tokens of width 8 in stage 0, 4x4 = 16 of
    width 16 in stage 1, 4x4 windows of 16 tokens (q k^T and the weights times v per window), patch merging
    at stage 0's end over the 16 tokens of the halved grid. Then --target flops=F prices each unit and head
    at its own stage: -g neuron's masked model keeps exactly the predicted non-zero multiply-adds, -g head's
    rebuilt one counts exactly the predicted ones, each within the band of the goal (-g head's flops=0.9
    only once the heads taken in score order, 0.853, were completed by cost)."""
    from prunecli.config.target import TOLERANCE
    from prunecli.structure import flops

    model = classifier()
    found = flops.count(model)
    assert found["partial"] is False

    def block(tokens, width, heads):
        qkv_out = tokens * (width * 3 * heads * HD + heads * HD * width)
        return qkv_out + 2 * tokens * 16 * heads * HD + tokens * 2 * width * 4 * width  # products, fc1 + fc2

    macs = {row["layer"].rsplit("/", 1)[-1]: row["macs"] for row in found["layers"] if row["macs"]}
    assert macs == {
        "patch_embedding": 64 * (4 * 4 * 3 * DIM),
        "stage_0": 2 * block(64, DIM, 2) + 16 * (4 * DIM * 2 * DIM),  # then patch merging: 4C -> 2C
        "stage_1": 2 * block(16, 2 * DIM, 4),
        "predictions": 2 * DIM * 3,
    }
    assert found["total"] == sum(macs.values())
    tg, _notes = transformer.ffn_only(model, targets_mod.select(model))
    _same, _masks, section, _ = ffn.run_ffn(model, tg, step_config("neuron", target="flops=0.8"))
    assert section["target"]["dense"] == found["total"]
    assert flops.count(model)["nonzero"] == section["target"]["predicted"]
    assert abs(section["target"]["predicted_fraction"] - 0.8) <= TOLERANCE
    model = classifier()
    config = step_config("head", target="flops=0.9", shrink=True)  # a head is 2 to 6% here
    small, _masks, section, _ = heads.run_heads(model, targets_mod.select(model), config)
    assert flops.count(small)["total"] == section["target"]["predicted"]
    assert 0.9 * (1 - TOLERANCE) <= section["target"]["predicted_fraction"] <= 0.9
    assert section["target"]["score_order_fraction"] < 0.9 * (1 - TOLERANCE)  # heads in score order overshot it
