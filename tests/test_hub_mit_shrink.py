"""KerasHub MiT image classifiers: MixFFN units, attention heads and whole blocks removed for real
(structure/vision_encoders.py), the task staying the user's MiTImageClassifier.

MiT's blocks are nodes of its backbone's own graph, stage after stage (overlapping patch embedding ->
blocks -> norm -> reshape to the image grid); a MixFFN unit is fc1's column and bias, the depthwise
convolution's channel (kernel and bias) and fc2's row; a head is its columns of the q, k and v Dense layers
(and their biases) and its rows of the output Dense, the spatial-reduction convolution staying whole. Each shrunk model is checked against the masked
model it came from, after a save/load round trip too, and its parameter count against the slices
removed. Tiny configs built with keras_hub (no download), every weight spread out so a removed unit's
biases must follow it.
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
from prunecli.structure import targets as targets_mod  # noqa: E402
from prunecli.structure import transformer, vision_encoders  # noqa: E402

DIMS, SIDE = (8, 16), 32
# a unit of a stage of width d: fc1 column (d) and bias (1), a 3x3 depthwise channel and its bias (10), fc2 row (d)
PER_UNIT = [2 * d + 1 + 10 for d in DIMS]
HD = 4  # the head size of classifier(heads=(2, 4))
# a head of a stage of width d: its q, k and v columns and biases, its output rows
PER_HEAD = [3 * (d * HD + HD) + HD * d for d in DIMS]


def classifier(depths=(2, 1), seed: int = 0, heads=(1, 2)):
    keras.utils.set_random_seed(seed)
    backbone = kh.models.MiTBackbone(
        layerwise_depths=list(depths),
        num_layers=2,
        layerwise_num_heads=list(heads),
        layerwise_sr_ratios=[2, 1],
        max_drop_path_rate=0.0,
        layerwise_patch_sizes=[7, 3],
        layerwise_strides=[4, 2],
        hidden_dims=list(DIMS),
        image_shape=(SIDE, SIDE, 3),
    )
    spread_weights(backbone, seed)
    return kh.models.MiTImageClassifier(backbone=backbone, num_classes=3, preprocessor=None)


@pytest.fixture(scope="module")
def saved_with_heads(tmp_path_factory):
    """classifier(heads=(2, 4)) saved once for the three CLI runs that read it, with its dense parameter and
    multiply-add counts (each run writes in its own folder), and the model itself, which one test masks in
    place after (a MiT build is seconds: each test built its own)."""
    from prunecli.structure import flops

    model = classifier(heads=(2, 4))
    path = tmp_path_factory.mktemp("mit") / "m.keras"
    model.save(path)
    return {"path": path, "params": model.count_params(), "flops": flops.count(model)["total"], "model": model}


def images(n: int = 4):
    return np.random.default_rng(0).uniform(size=(n, SIDE, SIDE, 3)).astype("float32")


def check_rebuilt(model, small, tmp_path, want=None):
    """`small` is MiTImageClassifier around prunecli's backbone, computes what the masked `model` (or
    `want`) computes, and does so after a save and load."""
    assert type(small) is type(model) and type(small.backbone).__name__ == "PrunedMiTBackbone"
    x = images()
    want = np.asarray(model(x)) if want is None else want
    assert_close_rel(small(x), want)
    back = reloaded_hub(small, tmp_path / "small.keras")
    assert type(back) is type(model) and type(back.backbone).__name__ == "PrunedMiTBackbone"
    assert_close_rel(back(x), want)


@pytest.mark.slow  # ~7 s
def test_mixffn_units_leave_with_their_depthwise_channel_and_biases(tmp_path):
    model = classifier()
    dense = np.asarray(model(images()))
    tg, _notes = transformer.ffn_only(model, targets_mod.select(model))
    found = ffn.find(model, tg)
    assert [f.units for f in found] == [4 * DIMS[0], 4 * DIMS[0], 4 * DIMS[1]]
    before = model.count_params()
    config = step_config("neuron", sparsity=0.5, shrink=True)
    small, masks, section, _ = ffn.run_ffn(model, tg, config)
    removed = [row["removed_units"] for row in section["layers"]]
    assert [len(r) for r in removed] == [f.units // 2 for f in found] and all(r["deleted"] for r in section["layers"])
    first = found[0]  # masked in place: fc1's bias and the depthwise channel's kernel and bias with their unit
    assert not np.asarray(first.up.bias)[removed[0]].any()
    assert not np.asarray(first.depthwise.bias)[removed[0]].any()
    assert not np.asarray(first.depthwise.kernel)[:, :, removed[0]].any()
    assert np.abs(np.asarray(model(images())) - dense).max() > 1e-3  # the mask changed the function
    blocks = vision_encoders.blocks(small)
    assert [b.mlp_units for b in blocks] == [f.units // 2 for f in found]
    assert [tuple(b.mlp.dwconv.kernel.shape) for b in blocks] == [(3, 3, f.units // 2, 1) for f in found]
    gone = sum(len(r) * per for r, per in zip(removed, [PER_UNIT[0], PER_UNIT[0], PER_UNIT[1]], strict=True))
    assert before - small.count_params() == gone == section["params_before"] - section["params_after"]
    assert section["verification"]["max_rel_diff"] <= 1e-4 and all(m.all() for m in masks.values())
    check_rebuilt(model, small, tmp_path)


@pytest.mark.slow  # ~4 s
def test_a_whole_block_leaves_its_stage_and_the_next_block_reads_the_embedding(tmp_path):
    """-g layer: the candidates are the blocks (each x + attn, x + ffn); without block 0_0 stage 0 is
    patch embedding -> block 0_1 -> norm, computed here layer by layer; a stage may lose all its blocks."""
    model = classifier()
    candidates, rows = layer_removal.analyse(model)
    named = vision_encoders.named_blocks(model)
    assert [c.name for c in candidates] == [name for name, _block in named]
    assert [c.layers for c in candidates] == [[row["layer"]] for row in rows] == [[b.name] for _name, b in named]
    small = layer_removal.remove(model, [candidates[0], candidates[2]])
    stages = vision_encoders.mit_stages(model.backbone)
    x = images()
    hidden = stages[0].reshape(stages[0].norm(stages[0].blocks[1](stages[0].embedding(x))))
    hidden = stages[1].reshape(stages[1].norm(stages[1].embedding(hidden)))  # stage 1 without its only block
    want = np.asarray(model.get_layer("predictions")(model.get_layer("pooler")(hidden)))
    assert [b.name for b in vision_encoders.blocks(small)] == ["hierarchical_encoder_0_1"]
    assert small.backbone.layerwise_depths == [1, 0]
    gone = layer_removal._params(stages[0].blocks[0]) + layer_removal._params(stages[1].blocks[0])
    assert model.count_params() - small.count_params() == gone
    check_rebuilt(model, small, tmp_path, want)


@pytest.mark.slow
def test_cli_meets_a_parameter_target_on_a_saved_mit_classifier(cli, tmp_path, saved_with_heads):
    from prunecli.io.models import load

    path, out, report = saved_with_heads["path"], tmp_path / "out.keras", tmp_path / "r.json"
    res = cli("prune", path, "-g", "neuron", "--target", "params=0.7", "--shrink", "-o", out, "-r", report, "-q")
    assert res.exit_code == 0, res.output
    small, _info = load(out)
    assert type(small).__name__ == "MiTImageClassifier"
    assert abs(small.count_params() / saved_with_heads["params"] - 0.7) <= 0.02
    assert json.loads(report.read_text())["ffn"]["verification"]["max_rel_diff"] <= 1e-4


@pytest.mark.slow
def test_mit_multiply_adds_are_counted_stage_by_stage():
    """The count at the model's image size, by hand: stage 0 sees 8x8 = 64 tokens of width 8 (its sr
    convolution of ratio 2 leaves 4x4 = 16 for keys and values), stage 1 4x4 = 16 tokens of width 16."""
    from prunecli.structure import flops

    model = classifier()
    found = flops.count(model)
    assert found["partial"] is False
    embed0 = 64 * (7 * 7 * 3 * 8)  # 7x7 stride-4 convolution, padded: one per token
    attn0 = (
        64 * 8 * 8 + 2 * 16 * 8 * 8 + 64 * 8 * 8 + 16 * (2 * 2 * 8 * 8) + 2 * 64 * 16 * 8
    )  # q, k v, out, sr, products
    ffn0 = 64 * (8 * 32 + 3 * 3 * 32 + 32 * 8)  # fc1, depthwise 3x3, fc2
    embed1 = 16 * (3 * 3 * 8 * 16)
    attn1 = 16 * 16 * 16 * 4 + 2 * 16 * 16 * 16  # no reduction at ratio 1
    ffn1 = 16 * (16 * 64 + 3 * 3 * 64 + 64 * 16)
    macs = {row["layer"].rsplit("/", 1)[-1]: row["macs"] for row in found["layers"] if row["macs"]}
    assert macs == {
        "patch_and_embed_0": embed0,
        "hierarchical_encoder_0_0": attn0 + ffn0,
        "hierarchical_encoder_0_1": attn0 + ffn0,
        "patch_and_embed_1": embed1,
        "hierarchical_encoder_1_0": attn1 + ffn1,
        "predictions": 16 * 3,
    }
    assert found["total"] == sum(macs.values())
    from prunecli.errors import ConfigError
    from prunecli.removal import units

    assert units.counted_as_built(model, step_config("neuron", target="flops=0.8")) == found["total"]
    with pytest.raises(ConfigError, match="fixed by its image size"):  # a length it cannot take prices nothing
        units.counted_as_built(model, step_config("neuron", target="flops=0.8", seq_len=64))


@pytest.mark.slow  # ~25 s
def test_a_flops_target_prices_mit_units_heads_and_blocks_at_their_own_stage(cli, tmp_path, saved_with_heads):
    """--target flops=F on MiT, each unit, head and block priced at its own stage's token count: -g neuron's
    masked model keeps exactly the predicted non-zero multiply-adds, -g head's and -g transformer's rebuilt
    models count exactly the predicted ones; each lands within the band of the goal."""
    from prunecli.config.target import TOLERANCE
    from prunecli.structure import flops

    model = saved_with_heads["model"]  # masked in place below, after the file the CLI run reads was written
    dense = flops.count(model)["total"]
    assert dense == saved_with_heads["flops"]  # the file the CLI run below reads is this model
    tg, _notes = transformer.ffn_only(model, targets_mod.select(model))
    _same, _masks, section, _ = ffn.run_ffn(model, tg, step_config("neuron", target="flops=0.8"))
    assert section["target"]["dense"] == dense
    assert flops.count(model)["nonzero"] == section["target"]["predicted"]
    assert abs(section["target"]["predicted_fraction"] - 0.8) <= TOLERANCE
    model = classifier(heads=(4, 8))  # heads of 2 channels: fine enough steps for the band
    config = step_config("head", target="flops=0.9", shrink=True)
    small, _masks, section, _ = heads.run_heads(model, targets_mod.select(model), config)
    assert flops.count(small)["total"] == section["target"]["predicted"]
    assert abs(section["target"]["predicted_fraction"] - 0.9) <= TOLERANCE
    path, out, report = saved_with_heads["path"], tmp_path / "out.keras", tmp_path / "r.json"
    args = ("-g", "transformer", "--target", "flops=0.8", "--shrink", "-o", out, "-r", report, "-q")
    res = cli("prune", path, *args)
    assert res.exit_code == 0, res.output
    written = json.loads(report.read_text())
    assert written["flops"]["before"] == dense and not written["flops"].get("partial")
    assert abs(written["flops"]["after"] / dense - 0.8) <= TOLERANCE


@pytest.mark.slow  # ~10 s
def test_heads_leave_mit_blocks_with_their_biases_and_the_head_size_kept(tmp_path):
    """-g head --shrink: each block keeps half its heads (the report's rows per block, stage by stage), each
    of HD channels still (KerasHub's block would derive width // heads), its spatial-reduction convolution
    whole; the model equals the masked one, reloads, and rebuilds again (its feed-forward units next)."""
    model = classifier(heads=(2, 4))
    found = heads.find(model)
    before = model.count_params()
    small, _masks, section, notes = heads.run_heads(
        model, targets_mod.select(model), step_config("head", sparsity=0.5, shrink=True)
    )
    rows = section["layers"]
    stage_of = {hl.path: hl.owner.name.split("_")[-2] for hl in found}  # hierarchical_encoder_<stage>_<block>
    assert [(stage_of[r["layer"]], r["heads_before"], r["heads_after"]) for r in rows] == [
        ("0", 2, 1),
        ("0", 2, 1),
        ("1", 4, 2),
    ]
    assert not notes and all(r["deleted"] for r in rows)
    gone = rows[0]["removed_heads"][0]  # masked in place: the head's query bias with its columns
    assert not np.asarray(found[0].layer.q.bias)[gone * HD : (gone + 1) * HD].any()
    blocks = vision_encoders.blocks(small)
    assert [(b.num_heads, b.head_dim, b.attn.num_heads) for b in blocks] == [(1, HD, 1), (1, HD, 1), (2, HD, 2)]
    assert [tuple(b.attn.q.kernel.shape) for b in blocks] == [(8, HD), (8, HD), (16, 2 * HD)]
    assert tuple(blocks[0].attn.sr.kernel.shape) == (2, 2, 8, 8)  # reduces every channel: no head's
    assert small.backbone.layerwise_num_heads == [1, 2]  # each stage's largest, in the saved config too
    assert section["attention_macs_after"] * 2 == section["attention_macs_before"]  # each stage at its tokens
    removed = 2 * PER_HEAD[0] + 2 * PER_HEAD[1]
    assert before - small.count_params() == removed == section["params_before"] - section["params_after"]
    assert section["verification"]["max_rel_diff"] <= 1e-4
    check_rebuilt(model, small, tmp_path)
    tg, _notes = transformer.ffn_only(small, targets_mod.select(small))
    smaller, _m, units_section, _n = ffn.run_ffn(small, tg, step_config("neuron", sparsity=0.5, shrink=True))
    assert [(b.num_heads, b.head_dim) for b in vision_encoders.blocks(smaller)] == [(1, HD), (1, HD), (2, HD)]
    assert units_section["verification"]["max_rel_diff"] <= 1e-4
    check_rebuilt(small, smaller, tmp_path)


@pytest.mark.slow
def test_cli_meets_a_parameter_target_with_mit_heads(cli, tmp_path, saved_with_heads):
    """-g head --target params=F prices each head at its stage's slices (PER_HEAD): the model written is
    the dense one less exactly the removed heads' slices, at most F of it, as the target section predicted."""
    from prunecli.io.models import load

    path, out, report = saved_with_heads["path"], tmp_path / "out.keras", tmp_path / "r.json"
    dense = saved_with_heads["params"]
    goal = dense - PER_HEAD[1] - 1  # more than one head of stage 1
    res = cli("prune", path, "-g", "head", "--target", f"params={goal / dense}", "--shrink", "-o", out, "-r", report)
    assert res.exit_code == 0, res.output
    small, _info = load(out)
    assert type(small).__name__ == "MiTImageClassifier"
    written = json.loads(report.read_text())
    section = written["heads"]
    stage = [int(row["layer"].split("/")[1].split("_")[-2]) for row in section["layers"]]
    priced = sum(PER_HEAD[s] * len(row["removed_heads"]) for s, row in zip(stage, section["layers"], strict=True))
    assert dense - small.count_params() == priced and small.count_params() == written["target"]["predicted"] <= goal
    assert section["verification"]["max_rel_diff"] <= 1e-4
