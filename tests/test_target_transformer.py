"""-g transformer --target params=F|flops=F: one budget split across heads, FFN units and whole blocks.

The split is searched on a grid of quarters, each split masked and measured on --data; the lowest loss
within the target's tolerance is removed for real. Tiny models built from configs (no download): a
KerasHub Llama causal LM on random tokens and a plain Keras Transformer on random labels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import assert_close_rel, build_mlp, reloaded_hub, token_inputs
from test_calibration_causal_lm import token_file

keras = pytest.importorskip("keras")

from prunecli.config import build_config  # noqa: E402
from prunecli.config.target import TOLERANCE  # noqa: E402
from prunecli.outputs.report import Timings  # noqa: E402
from prunecli.removal import split  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402

VOCAB, SEQ = 50, 12  # test_removal_decoders' vocabulary; test_calibration_causal_lm's token rows


def _config(target: str = "params=0.6", **kw):
    return build_config({"model_path": "m.keras", "granularity": "transformer", "target": target, **kw}, environ={})


def _plain(blocks: int = 3):
    from test_removal_heads import bert_like

    return bert_like(blocks=blocks)


def _llama_lm(layers: int = 6):
    """A LlamaCausalLM around test_removal_decoders' tiny backbone (vocabulary VOCAB, 16 wide, 4 query and
    2 key/value heads, 32 FFN units per block)."""
    kh = pytest.importorskip("keras_hub")
    from test_removal_decoders import backbone

    return kh.models.LlamaCausalLM(backbone=backbone(layers=layers), preprocessor=None)


def _check_search(section: dict, target: dict, requested: float) -> dict:
    """The section lists every split of the grid, and the one chosen has the lowest loss of those
    within the tolerance (by the section's own numbers); the target is met within it."""
    rows = section["splits"]
    assert len(rows) == len(split.grid(tuple(section["axes"]))) and section["searched"]
    for row in rows:
        assert abs(sum(row["shares"].values()) - 1.0) < 1e-9
    within = [r for r in rows if r["within_tolerance"]]
    chosen = [r for r in rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0] in within
    assert chosen[0]["loss"] == min(r["loss"] for r in within)
    assert section["chosen"] == chosen[0]["shares"]
    assert target["within_tolerance"] and requested * (1 - TOLERANCE) <= target["achieved"] <= requested
    assert target["achieved_value"] == target["predicted"] == chosen[0]["achieved"]
    return chosen[0]


# ---------------------------------------------------------------------------------------------------
# Fast: the grid, the refusals, the default split


def test_grid_is_every_split_in_quarters_that_sums_to_one():
    three = split.grid(("blocks", "heads", "ffn"))
    assert len(three) == 15 and len({tuple(s.values()) for s in three}) == 15
    assert all(abs(sum(s.values()) - 1) < 1e-12 and set(s.values()) <= {0, 0.25, 0.5, 0.75, 1} for s in three)
    assert len(split.grid(("blocks", "heads"))) == 5 and split.grid(("heads",)) == [{"heads": 1.0}]


def test_every_structural_granularity_has_its_step():
    from prunecli import removal
    from prunecli.config.fields import STRUCTURAL_KINDS

    assert tuple(removal.STEPS) == STRUCTURAL_KINDS and removal.structural("transformer")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "-g transformer spends a budget across heads, FFN units and blocks: give --target"),
        (("--target", "params=0.5", "-s", "0.5"), "--target cannot be combined with --sparsity"),
    ],
)
def test_unsupported_targets_are_one_line_exit_2(cli, tmp_path, args, message):
    res = cli("prune", "m.keras", "-g", "transformer", *args, "-o", tmp_path / "o.keras")
    assert res.exit_code == 2 and message in res.stderr and res.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o.keras").exists()


def test_a_model_without_attention_is_one_line_exit_3(cli, tmp_path):
    path = tmp_path / "mlp.keras"
    build_mlp().save(path)
    res = cli("prune", path, "-g", "transformer", "--target", "params=0.5", "-o", tmp_path / "o.keras", "-q")
    assert res.exit_code == 3 and "-g transformer needs attention layers" in res.stderr
    assert res.stderr.strip().count("\n") == 0 and not (tmp_path / "o.keras").exists()


def test_without_data_the_default_split_is_width_only_and_noted():
    """No --data: heads and FFN units share the removal in proportion to their parameters, no block
    goes, the note says so; the shrunk model is the masked one and meets the target."""
    model = _plain(blocks=2)
    dense = model.count_params()
    x = np.random.default_rng(0).integers(0, 40, size=(4, 12)).astype("int32")
    result = split.run(model, targets_mod.select(model), None, None, _config("params=0.8"), print, Timings())
    section, target = result.sections["transformer_split"], result.sections["target"]
    (row,) = section["splits"]
    assert not section["searched"] and row["chosen"] and row["loss"] is None
    assert row["removed"]["blocks"] == 0 and row["removed"]["heads"] > 0 and row["removed"]["ffn"] > 0
    attention = sum(layer.count_params() for layer in model.layers if "mha" in layer.name)
    ffn = sum(layer.count_params() - layer.units for layer in model.layers if layer.name.endswith("_ff1"))
    ffn += sum(layer.kernel.shape[0] * layer.kernel.shape[1] for layer in model.layers if layer.name.endswith("_ff2"))
    assert row["shares"]["heads"] == pytest.approx(attention / (attention + ffn), abs=0.05)
    assert any("without --data: the default split" in note and "Minitron" in note for note in result.notes)
    assert 0.8 * (1 - TOLERANCE) * dense <= result.model.count_params() == target["predicted"] <= 0.8 * dense
    assert_close_rel(result.model(x), model(x))  # `model` was masked in place
    assert section["verification"]["max_rel_diff"] <= 1e-4


def test_a_target_no_split_reaches_is_refused_and_the_model_is_untouched():
    from prunecli.errors import ConfigError

    model = _plain(blocks=2)
    before = [np.array(w) for w in model.get_weights()]
    with pytest.raises(ConfigError, match=r"cannot be met by -g transformer"):
        split.run(model, targets_mod.select(model), None, None, _config("params=0.05"), print, Timings())
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights(), strict=True))


def test_whole_blocks_that_fill_the_removal_land_in_the_band_where_some_do():
    """Blocks as the axis that fills the rest: the lowest-scored block (50) and the next (30) remove 80,
    past the band of 55 to 65; the next two in score order (30 + 30) land in it and are taken. Asked
    for 85 to 87, nothing of 50, 30, 30 (one block stays) lands: the fewest in score order stay."""
    from prunecli.removal.layers import Candidate

    costs = {"b0": 50, "b1": 30, "b2": 30, "b3": 20}
    blocks = [Candidate(name, "block", [name], skip={i}, score=float(i)) for i, name in enumerate(costs)]
    axes = split.Axes([], [], {}, {}, {}, blocks, costs)
    assert [c.name for c in split._blocks_for(axes, 55, True, 10)] == ["b1", "b2"]
    assert [c.name for c in split._blocks_for(axes, 55, False, 10)] == ["b0"]
    assert [c.name for c in split._blocks_for(axes, 85, True, 2)] == ["b0", "b1", "b2"]


# ---------------------------------------------------------------------------------------------------
# Slow: searches and rebuilds


@pytest.mark.slow
def test_a_mixed_split_shrinks_every_axis_and_equals_its_masked_model(tmp_path):
    """A split with a share on every axis removes a block, key/value groups and FFN units; the one
    rebuild equals the masked model (blocks bypassed) it came from and reloads; it holds exactly the
    dense count less what the split says it removed."""
    from prunecli.structure import decoders

    lm = _llama_lm()
    config = _config("params=0.6")
    axes, dense, goal = split.find_axes(lm, targets_mod.select(lm), None, None, config, print)
    assert axes.present() == ("blocks", "heads", "ffn")
    slack = int(TOLERANCE * goal)
    choice = split.realise(axes, {"blocks": 0.5, "heads": 0.25, "ffn": 0.25}, dense - goal, config, slack)
    assert choice.reachable and len(choice.blocks) == 1 and choice.removed["heads"] and choice.removed["ffn"]
    masked = split.masked_model(lm, axes, choice)
    smaller = split.shrink(lm, axes, choice)
    x = token_inputs(VOCAB, seq=SEQ)
    assert_close_rel(smaller(x), masked(x))
    assert smaller.count_params() == dense - sum(choice.cost.values()) <= goal
    blocks = decoders.blocks(smaller)
    assert len(blocks) == 5
    assert min(int(b.num_key_value_heads) for b in blocks) < 2 and min(int(b.intermediate_dim) for b in blocks) < 32
    assert_close_rel(reloaded_hub(smaller, tmp_path / "small.keras")(x), masked(x))


@pytest.mark.slow
def test_causal_lm_search_keeps_the_lowest_next_token_loss(cli, tmp_path):
    """The CLI on a Llama causal LM with token data: 15 splits measured by next-token loss (and
    perplexity), the lowest within tolerance kept, the target met, the file reloads and generates."""
    path, data, out, report = tmp_path / "lm.keras", tmp_path / "t.npz", tmp_path / "o.keras", tmp_path / "r.json"
    _llama_lm().save(path)
    token_file(data)
    res = cli(
        "prune", path, "-g", "transformer", "--target", "params=0.6", "-d", data, "--no-speed", "-o", out, "-r", report
    )
    assert res.exit_code == 0, res.output
    assert "-g transformer: split 15/15" in res.output
    written = json.loads(report.read_text())
    section = written["transformer_split"]
    chosen = _check_search(section, written["target"], 0.6)
    assert "next-token loss" in section["measured"] and chosen["perplexity"] == pytest.approx(np.exp(chosen["loss"]))
    assert section["verification"]["max_rel_diff"] <= 1e-4
    assert any(sum(1 for cost in r["removed"].values() if cost) > 1 for r in section["splits"])
    assert any(r["blocks_removed"] for r in section["splits"])
    from prunecli.structure import transformer

    transformer.register_for_file(out)
    back = keras.saving.load_model(out)
    assert back.count_params() == written["target"]["achieved_value"]
    assert np.isfinite(np.asarray(back(token_inputs(VOCAB, seq=SEQ)))).all()


@pytest.mark.slow
def test_plain_transformer_search_through_the_python_api(tmp_path):
    """prunecli.prune(build_config(...)) takes the CLI's path: labelled data, the model's own loss."""
    import prunecli

    path, data, out = tmp_path / "t.keras", tmp_path / "d.npz", tmp_path / "o.keras"
    _plain(blocks=4).save(path)
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 40, size=(64, 12)).astype("int32"), y=rng.integers(0, 3, size=64))
    values = {"model_path": str(path), "data": str(data), "output": str(out), "quiet": True, "sizes": False}
    result = prunecli.prune(prunecli.build_config({**values, "granularity": "transformer", "target": "params=0.6"}))
    section = result.report.extra["transformer_split"]
    chosen = _check_search(section, result.report.extra["target"], 0.6)
    assert section["measured"].startswith("loss on") and section["verification"]["max_rel_diff"] <= 1e-4
    assert any(r["blocks_removed"] for r in section["splits"])
    back = keras.saving.load_model(out)
    assert back.count_params() == chosen["achieved"]
    x = rng.integers(0, 40, size=(4, 12)).astype("int32")
    assert_close_rel(back(x), result.model(x))


@pytest.mark.slow
def test_flops_target_counts_as_the_report_does(cli, tmp_path):
    """flops=F at --seq-len: what a split predicts is the shrunk model's multiply-add count."""
    path, data, out, report = tmp_path / "lm.keras", tmp_path / "t.npz", tmp_path / "o.keras", tmp_path / "r.json"
    _llama_lm(layers=4).save(path)
    token_file(data)
    args = ("-g", "transformer", "--target", "flops=0.7", "--seq-len", SEQ, "-d", data, "--no-speed", "-o", out)
    args += ("-r", report)  # --no-speed: tokens/s is test_removal_decoders' (a third of this run)
    res = cli("prune", path, *args)
    assert res.exit_code == 0, res.output
    written = json.loads(report.read_text())
    _check_search(written["transformer_split"], written["target"], 0.7)
    assert written["target"]["counted"] == "multiply-adds per example"
    assert written["flops"]["after"] == written["target"]["achieved_value"]
