"""The policy: exact sparsity for every granularity and scope, overrides, thresholds and floors.

Targets here wrap plain tf.Variables, so most tests need no Keras model.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from prunecli.config import Granularity, PruneConfig, build_config
from prunecli.errors import ConfigError


def make_target(name: str, shape, seed: int = 0, scale: float = 1.0, unit_axis: int = -1, cls: str = "Dense"):
    import tensorflow as tf

    from prunecli.structure.targets import Target

    values = np.random.default_rng(seed).standard_normal(shape).astype("float32") * scale
    var = tf.Variable(values)
    return Target(f"{name}/kernel", name, cls, "kernel", var, unit_axis % len(shape))


def magnitude_scores(targets) -> dict:
    return {t.name: np.abs(t.variable.numpy()) for t in targets}


def build(targets, scores=None, level="element", **settings):
    from prunecli.selection.policy import build_masks

    config = PruneConfig(**settings)
    return build_masks(targets, scores or magnitude_scores(targets), level, config)


def pruned(mask) -> int:
    return int(np.size(mask) - np.count_nonzero(np.asarray(mask)))


@pytest.fixture(scope="module")
def layers():
    """A Dense-like kernel, a conv kernel and a small layer with an awkward size."""
    return [
        make_target("dense", (40, 12), seed=1),
        make_target("conv", (3, 3, 8, 6), seed=2, cls="Conv2D"),
        make_target("small", (7, 3), seed=3),
    ]


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.9])
def test_element_layer_scope_prunes_exactly_round_s_n_in_each_layer(layers, sparsity):
    result = build(layers, sparsity=sparsity, scope="layer")
    for t in layers:
        mask = np.asarray(result.masks[t.name])
        assert mask.shape == t.shape
        assert pruned(mask) == round(sparsity * t.size)
        kept, dropped = np.abs(t.variable.numpy())[mask], np.abs(t.variable.numpy())[~mask]
        if dropped.size and kept.size:
            assert dropped.max() <= kept.min()  # the lowest scores are the ones pruned


def test_ties_still_give_the_exact_count(layers):
    flat = {t.name: np.ones(t.shape, "float32") for t in layers}
    result = build(layers, flat, sparsity=0.6, scope="layer")
    for t in layers:
        assert pruned(result.masks[t.name]) == round(0.6 * t.size)
    overall = build(layers, flat, sparsity=0.6)  # the default, global: exact over all layers
    assert sum(pruned(overall.masks[t.name]) for t in layers) == round(0.6 * sum(t.size for t in layers))


@pytest.mark.parametrize("sparsity", [0.25, 0.5, 0.9])
def test_neuron_granularity_removes_exactly_round_s_units(layers, sparsity):
    result = build(layers, sparsity=sparsity, granularity=Granularity("neuron"))
    for t in layers:
        matrix = np.asarray(t.to_matrix(result.masks[t.name]))
        per_unit = matrix.all(axis=0) | ~matrix.any(axis=0)
        assert per_unit.all(), "a unit is either kept whole or removed whole"
        floor = max(1, math.ceil(0.01 * t.units))  # min_keep's default
        assert int((~matrix.any(axis=0)).sum()) == min(round(sparsity * t.units), t.units - floor)


def test_neuron_granularity_keeps_the_unit_with_the_largest_weights():
    t = make_target("d", (10, 8), seed=4)
    t.variable.assign(t.variable.numpy() * np.array([1, 1, 1, 50, 1, 1, 1, 1], "float32"))
    result = build([t], sparsity=0.875, granularity=Granularity("neuron"))
    kept_units = np.flatnonzero(np.asarray(result.masks[t.name]).any(axis=0))
    assert kept_units.tolist() == [3]


@pytest.mark.parametrize("rows,cols", [(2, 2), (4, 1), (3, 5)])
def test_block_granularity_removes_exactly_round_s_blocks(layers, rows, cols):
    result = build(layers, sparsity=0.5, scope="layer", granularity=Granularity("block", rows, cols))
    for t in layers:
        matrix = np.asarray(t.to_matrix(result.masks[t.name]))
        n_blocks = math.ceil(matrix.shape[0] / rows) * math.ceil(matrix.shape[1] / cols)
        removed = 0
        for i in range(0, matrix.shape[0], rows):
            for j in range(0, matrix.shape[1], cols):
                block = matrix[i : i + rows, j : j + cols]
                assert block.all() or not block.any(), "a block is kept or removed whole"
                removed += int(not block.any())
        assert removed == round(0.5 * n_blocks)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), pytest.param(3, 8, marks=pytest.mark.slow)])
def test_nm_keeps_at_most_n_of_every_m_along_the_reduction_axis(n, m):
    dense = make_target("dense", (18, 5), seed=5)  # 18 rows: 4 full runs of 4 and a short one
    conv = make_target("conv", (3, 3, 8, 4), seed=6, cls="Conv2D")
    targets = [dense, conv]
    result = build(targets, granularity=Granularity("nm", n, m))
    for t in targets:
        matrix = np.asarray(t.to_matrix(result.masks[t.name]))
        for start in range(0, matrix.shape[0], m):
            run = matrix[start : start + m]
            kept = run.sum(axis=0)
            assert (kept <= n).all()
            if run.shape[0] == m:
                assert (kept == n).all()
        whole, short = divmod(matrix.shape[0], m)  # the dense kernel's last group is short: it keeps min(n, 2)
        assert result.requested[t.name] == pytest.approx(1 - (whole * n + min(n, short)) / matrix.shape[0])
    # the conv kernel's runs are consecutive input channels at one spatial position and output filter
    kernel_mask = np.asarray(result.masks[conv.name])
    for start in range(0, 8, m):
        assert (kernel_mask[:, :, start : start + m, :].sum(axis=2) == n).all()


def test_nm_keeps_the_largest_weights_of_each_run():
    t = make_target("dense", (8, 2), seed=7)
    result = build([t], granularity=Granularity("nm", 2, 4))
    values, mask = np.abs(t.variable.numpy()), np.asarray(result.masks[t.name])
    for start in (0, 4):
        for col in range(2):
            run = values[start : start + 4, col]
            assert set(np.flatnonzero(mask[start : start + 4, col])) == set(np.argsort(-run)[:2])


def test_nm_refuses_unit_scores_and_override_sparsities():
    from prunecli.config import LayerOverride

    t = make_target("dense", (8, 4), seed=8)
    with pytest.raises(ConfigError, match="per weight"):
        build([t], {t.name: np.ones(4, "float32")}, level="unit", granularity=Granularity("nm", 2, 4))
    with pytest.raises(ConfigError, match="only skip"):
        build([t], granularity=Granularity("nm", 2, 4), overrides=(LayerOverride("dense", sparsity=0.3),))


@pytest.mark.parametrize("granularity", [Granularity(), Granularity("neuron"), Granularity("block", 2, 2)])
@pytest.mark.parametrize("sparsity", [0.5, 0.9])
def test_global_scope_prunes_exactly_round_s_of_all_groups(layers, granularity, sparsity):
    from prunecli.selection.policy import _group_scores

    result = build(layers, sparsity=sparsity, scope="global", granularity=granularity)
    groups = [_group_scores(t, np.abs(t.variable.numpy()), "element", granularity) for t in layers]
    total = sum(int(np.size(g)) for g in groups)
    removed = 0
    for t in layers:
        mask = np.asarray(result.masks[t.name])
        if granularity.kind == "neuron":
            removed += int((~mask.any(axis=tuple(range(mask.ndim - 1)))).sum())
        elif granularity.kind == "block":
            matrix = np.asarray(t.to_matrix(mask))
            removed += sum(
                not matrix[i : i + 2, j : j + 2].any()
                for i in range(0, matrix.shape[0], 2)
                for j in range(0, matrix.shape[1], 2)
            )
        else:
            removed += pruned(mask)
    capacity = total - sum(max(1, math.ceil(0.01 * int(np.size(g)))) for g in groups)  # min_keep floors
    assert removed == min(round(sparsity * total), capacity)


def test_global_magnitude_at_90_percent_does_not_wipe_out_a_small_layer():
    big = make_target("big", (200, 50), seed=9)
    small = make_target("small", (20, 10), seed=10, scale=0.01)  # 100x smaller weights
    targets = [big, small]
    normalised = build(targets, sparsity=0.9, scope="global", normalize="mean")
    small_sparsity = pruned(normalised.masks[small.name]) / small.size
    assert 0.5 < small_sparsity < 0.97, "ranked against its own layer's mean, the small layer is pruned like the rest"
    assert pruned(normalised.masks[big.name]) + pruned(normalised.masks[small.name]) == round(0.9 * 10_200)
    assert not normalised.notes

    lamp = build(targets, sparsity=0.9, scope="global")  # the default normalisation: LAMP is scale-free too
    assert pruned(lamp.masks[small.name]) / small.size < 0.97
    assert pruned(lamp.masks[big.name]) + pruned(lamp.masks[small.name]) == round(0.9 * 10_200)
    assert not lamp.notes

    raw = build(targets, sparsity=0.9, scope="global", normalize="none")
    assert int(np.count_nonzero(np.asarray(raw.masks[small.name]))) == 2  # only the 1% floor survives
    assert any("small/kernel: kept 2 of 200" in n for n in raw.notes)
    assert pruned(raw.masks[big.name]) + pruned(raw.masks[small.name]) == round(0.9 * 10_200)


def test_threshold_prunes_the_scores_below_it(layers):
    result = build(layers, threshold=0.5)
    mean_result = build(layers, threshold="mean", granularity=Granularity("neuron"))
    for t in layers:
        values = np.abs(t.variable.numpy())
        mask = np.asarray(result.masks[t.name])
        assert np.array_equal(mask, values >= 0.5)
        assert result.requested[t.name] is None
        unit_means = np.asarray(t.to_matrix(values)).mean(axis=0)
        kept_units = np.asarray(t.to_matrix(mean_result.masks[t.name])).any(axis=0)
        assert np.array_equal(kept_units, unit_means >= unit_means.mean())


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_min_keep_floor_and_allow_empty(scope):
    t = make_target("tiny", (5, 2), seed=11)  # 10 weights; 0.96 rounds to all 10
    floored = build([t], sparsity=0.96, scope=scope)
    assert int(np.count_nonzero(np.asarray(floored.masks[t.name]))) == 1
    assert floored.notes == ["tiny/kernel: kept 1 of 10 groups (min_keep)"]
    emptied = build([t], sparsity=0.96, allow_empty=True, scope=scope)
    assert int(np.count_nonzero(np.asarray(emptied.masks[t.name]))) == 0
    assert not emptied.notes
    wide_floor = build([t], sparsity=0.9, min_keep=0.35, scope=scope)
    assert int(np.count_nonzero(np.asarray(wide_floor.masks[t.name]))) == 4  # ceil(0.35 * 10)
    high_threshold = build([t], threshold=1e9, granularity=Granularity("neuron"))
    assert int(np.asarray(high_threshold.masks[t.name]).any(axis=0).sum()) == 1


def write_recipe(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_recipe_overrides_and_skip_in_layer_scope(tmp_path):
    from prunecli.selection.policy import build_masks

    dense1, dense2, head = (
        make_target("dense1", (30, 10), 12),
        make_target("dense2", (30, 10), 13),
        make_target("head", (10, 4), 14),
    )
    recipe = write_recipe(
        tmp_path, "sparsity: 0.5\nlayers:\n  'dense*': 0.8\n  dense2: {sparsity: 0.3}\n  head: skip\n"
    )
    config = build_config({"model_path": "m.keras"}, recipe=recipe, environ={})
    targets = [dense1, dense2, head]
    result = build_masks(targets, magnitude_scores(targets), "element", config)
    assert pruned(result.masks[dense1.name]) == 240  # 'dense*': 0.8
    assert pruned(result.masks[dense2.name]) == 90  # the later, more specific rule wins: 0.3
    assert pruned(result.masks[head.name]) == 0  # skipped
    assert result.requested == {dense1.name: 0.8, dense2.name: 0.3, head.name: 0.0}


def test_overrides_in_global_scope_and_with_a_threshold(tmp_path):
    from prunecli.selection.policy import build_masks

    a, b, c = make_target("a", (40, 10), 15), make_target("b", (40, 10), 16, scale=5.0), make_target("c", (20, 10), 17)
    targets = [a, b, c]
    recipe = write_recipe(tmp_path, "scope: global\nsparsity: 0.9\noverrides:\n  c: 0.2\n")
    config = build_config({"model_path": "m.keras"}, recipe=recipe, environ={})
    result = build_masks(targets, magnitude_scores(targets), "element", config)
    assert pruned(result.masks[c.name]) == 40  # its own sparsity, exactly
    assert pruned(result.masks[a.name]) + pruned(result.masks[b.name]) == 720  # 0.9 of the other 800

    with_threshold = build_masks(
        targets, magnitude_scores(targets), "element", config.replace(sparsity=None, threshold=0.4)
    )
    assert pruned(with_threshold.masks[c.name]) == 40
    assert np.array_equal(np.asarray(with_threshold.masks[a.name]), np.abs(a.variable.numpy()) >= 0.4)


def test_bad_override_recipe_is_a_config_error(tmp_path):
    recipe = write_recipe(tmp_path, "layers:\n  dense: {sparsity: 0.5, keep: true}\n")
    with pytest.raises(ConfigError, match="unknown key 'keep'"):
        build_config({"model_path": "m.keras"}, recipe=recipe, environ={})


def test_scores_of_the_wrong_shape_are_refused(layers):
    scores = magnitude_scores(layers)
    scores[layers[0].name] = scores[layers[0].name][:, :3]
    with pytest.raises(ValueError, match=r"dense/kernel have shape \(40, 3\)"):
        build(layers, scores, sparsity=0.5)


def test_cli_recipe_overrides_on_the_example(cli, example_model, tmp_path):
    recipe = write_recipe(tmp_path, "sparsity: 0.6\nlayers:\n  conv1: skip\n  dense1: {sparsity: 0.9}\n")
    out, report = tmp_path / "pruned.keras", tmp_path / "report.json"
    result = cli("prune", example_model, "-c", recipe, "-o", out, "--report", report, "--no-sizes", "-q")
    assert result.exit_code == 0, result.output
    layers = {row["layer"]: row for row in json.loads(report.read_text())["layers"]}
    assert "conv1" not in layers
    assert layers["dense1"]["sparsity"] == pytest.approx(round(0.9 * 32768) / 32768)
    # the default scope is global: the layers without an override share round(0.6 * their weights)
    rest = [layers["conv2"], layers["predictions"]]
    assert sum(row["params"] - row["nonzeros"] for row in rest) == round(0.6 * (4608 + 640))
    assert layers["conv2"]["sparsity"] != pytest.approx(round(0.6 * 4608) / 4608)  # not layer by layer


def test_cli_nm_on_the_example_holds_the_pattern(cli, example_model, tmp_path):
    import keras

    out = tmp_path / "nm.keras"
    result = cli("prune", example_model, "-g", "n:m=2:4", "--exclude", "conv1", "-o", out, "--no-sizes", "-q")
    assert result.exit_code == 0, result.output
    kernel = keras.saving.load_model(out).get_layer("dense1").kernel.numpy()  # (512, 64)
    nonzero_per_run = (kernel.reshape(128, 4, 64) != 0).sum(axis=1)
    assert nonzero_per_run.max() == 2
