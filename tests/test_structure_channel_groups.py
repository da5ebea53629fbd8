"""Group-aware neuron masks: layers whose channels meet in a merge get one mask and shrink together.

The residual model below has three tied sets and one untied layer:
- {stem, branch}: a residual Add (8 channels, every member makes every channel);
- {a, b, side}: Concatenate([a, b]) added to side, so a's 5 units tie to side's first 5, b's to the last 3;
- {head_a, head_b}: added into the network output, so all 4 channels are pinned;
- hidden: a plain Dense, selected as the policy always did.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from prunecli.config import build_config
from prunecli.outputs.report import Timings
from prunecli.removal import channels as shrink_step
from prunecli.run import steps
from prunecli.run.state import RunState
from prunecli.selection import policy
from prunecli.selection import tied as groups
from prunecli.structure import targets

WIDTHS = {"stem": 8, "a": 5, "b": 3, "hidden": 16}


def _residual(widths=None, seed: int = 0):
    import keras
    from keras import layers

    w = {**WIDTHS, **(widths or {})}
    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3), name="image")
    stem = layers.Conv2D(w["stem"], 3, padding="same", activation="relu", name="stem")(inp)
    branch = layers.Conv2D(w["stem"], 3, padding="same", use_bias=False, name="branch")(stem)
    added = layers.Add(name="add")([stem, layers.BatchNormalization(name="branch_bn")(branch)])
    cat = layers.Concatenate(name="cat")(
        [layers.Conv2D(w["a"], 1, activation="relu", name="a")(added), layers.Conv2D(w["b"], 1, name="b")(added)]
    )
    mixed = layers.Add(name="mix")([cat, layers.Conv2D(w["a"] + w["b"], 1, name="side")(added)])
    pooled = layers.GlobalAveragePooling2D(name="gap")(mixed)
    hidden = layers.Dense(w["hidden"], activation="relu", name="hidden")(pooled)
    out = layers.Add(name="logits")([layers.Dense(4, name="head_a")(hidden), layers.Dense(4, name="head_b")(pooled)])
    return keras.Model(inp, out, name="residual")


def _scores(found):
    return {t.name: np.abs(np.asarray(t.variable)) for t in found}


def _masks(model, model_for_graph="same", **settings):
    config = build_config({"model_path": "m.keras", "granularity": "neuron", **settings})
    found = targets.select(model)
    graph_model = model if model_for_graph == "same" else model_for_graph
    return found, policy.build_masks(found, _scores(found), "element", config, model=graph_model)


def _units(result, found, name):
    """Keep value per unit of the named layer's kernel (all other axes agree for a neuron mask)."""
    t = next(t for t in found if t.layer_name == name)
    mask = np.moveaxis(np.asarray(result.masks[t.name]), t.unit_axis, -1)
    return mask.reshape(-1, t.units)[0]


def test_tied_layers_share_one_mask_with_exact_counts_and_a_combined_score():
    model = _residual()
    found, result = _masks(model, sparsity=0.5)
    names = ("stem", "branch", "a", "b", "side", "hidden", "head_a", "head_b")
    u = {name: _units(result, found, name) for name in names}
    assert (u["stem"] == u["branch"]).all() and np.count_nonzero(~u["stem"]) == 4
    assert (u["side"] == np.concatenate([u["a"], u["b"]])).all() and np.count_nonzero(~u["side"]) == 4
    assert u["head_a"].all() and u["head_b"].all()  # pinned by the network output
    assert any("head_a+head_b: 4 of 4" in n and "network output" in n for n in result.notes)
    assert any("pruned as one" in n for n in result.notes)
    # the set's channels go by the mean of each member's unit score over its own mean score
    per_unit = {t.layer_name: _scores([t])[t.name].reshape(-1, t.units).mean(axis=0) for t in found}
    combined = (per_unit["stem"] / per_unit["stem"].mean() + per_unit["branch"] / per_unit["branch"].mean()) / 2
    assert set(np.flatnonzero(~u["stem"])) == set(np.argsort(combined)[:4])
    # an untied layer is selected exactly as without the graph
    _, alone = _masks(model, model_for_graph=None, sparsity=0.5)
    assert (u["hidden"] == _units(alone, found, "hidden")).all()
    side_alone = np.concatenate([_units(alone, found, "a"), _units(alone, found, "b")])
    assert not (_units(alone, found, "side") == side_alone).all()  # what grouping fixes


def test_global_scope_counts_a_tied_channel_once_and_threshold_masks_stay_tied():
    model = _residual()
    found, result = _masks(model, sparsity=0.4, scope="global")
    u = {name: _units(result, found, name) for name in ("stem", "branch", "side", "a", "b", "hidden")}
    assert (u["stem"] == u["branch"]).all() and (u["side"] == np.concatenate([u["a"], u["b"]])).all()
    removed = sum(np.count_nonzero(~u[n]) for n in ("stem", "side", "hidden"))
    assert removed == round(0.4 * (8 + 8 + 16))  # pinned head channels neither count nor go
    found, result = _masks(model, threshold="mean")
    assert (_units(result, found, "stem") == _units(result, found, "branch")).all()
    assert 0 < np.count_nonzero(~_units(result, found, "stem")) < 8


def test_override_on_one_member_applies_to_its_set_and_floors_hold_per_member():
    import keras

    model = _residual()
    found, result = _masks(model, sparsity=0.5, overrides={"branch": 0.25})
    stem, branch = _units(result, found, "stem"), _units(result, found, "branch")
    assert (stem == branch).all() and np.count_nonzero(~stem) == 2
    assert result.requested[next(t.name for t in found if t.layer_name == "stem")] == 0.25
    found, result = _masks(model, sparsity=0.5, min_keep=0.6)
    kept = {n: int(np.count_nonzero(_units(result, found, n))) for n in ("a", "b", "side")}
    assert kept["a"] >= 3 and kept["b"] >= 2 and kept["side"] >= math.ceil(0.6 * 8)
    assert any("min_keep" in n for n in result.notes)

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.first, self.second = keras.layers.Dense(6), keras.layers.Dense(2)

        def call(self, x):
            return self.second(self.first(x))

    sub = Subclassed()
    sub(np.zeros((1, 4), "float32"))
    found, result = _masks(sub, sparsity=0.5)
    assert any("layer by layer" in n for n in result.notes)
    _, alone = _masks(sub, model_for_graph=None, sparsity=0.5)
    assert all((np.asarray(result.masks[k]) == np.asarray(alone.masks[k])).all() for k in alone.masks)


def _session(model, **settings):
    config = build_config(
        {"model_path": "m.keras", "granularity": "neuron", "sparsity": 0.5, "shrink": True, **settings}
    )
    s = RunState(config=config, model=model, source=None)
    return s.after(steps.pick_targets(model, config))


def _mask_and_shrink(model, monkeypatch=None):
    """Masks from the pipeline (per layer when `monkeypatch` turns grouping off), then surgery."""
    import keras

    if monkeypatch is not None:
        monkeypatch.setattr(groups, "select_tied", lambda *_args, **_kw: False)
    s = _session(model)
    s = s.after(steps.mask(s, steps.silent, Timings()))
    masks = s.masks
    kept = {t.layer_name: int(np.count_nonzero(_units(masks, s.targets, t.layer_name))) for t in s.targets}
    masked = keras.models.clone_model(s.model)
    masked.set_weights(s.model.get_weights())
    s = s.after(  # raises ShrinkVerificationError if outputs differ
        shrink_step.shrink(s.model, s.targets, s.masks, None, s.config.seed, steps.silent, Timings(), False)
    )
    if monkeypatch is not None:
        monkeypatch.undo()
    return s, masked, kept


def test_shrink_removes_every_tied_channel_and_computes_the_masked_function():
    model = _residual()
    s, masked, kept = _mask_and_shrink(model)
    assert kept["stem"] == kept["branch"] == 4 and kept["a"] + kept["b"] == kept["side"] == 4
    expected = _residual({"stem": 4, "a": kept["a"], "b": kept["b"], "hidden": 8}).count_params()
    info = s.sections["shrink"]
    assert info["params_after"] == s.model.count_params() == expected < info["params_before"]
    assert info["groups_kept_whole"] == []  # no masked channel left behind
    x = np.random.default_rng(1).standard_normal((8, 8, 8, 3)).astype("float32")
    want, got = np.asarray(masked(x)), np.asarray(s.model(x))
    assert np.abs(want - got).max() <= 1e-4 * np.abs(want).max()


@pytest.mark.slow
def test_mobilenetv2_shrinks_well_below_per_layer_masks(monkeypatch):
    import keras

    def mobilenet():
        keras.utils.set_random_seed(0)
        return keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10)

    per_layer, _, _ = _mask_and_shrink(mobilenet(), monkeypatch)
    grouped, masked, _ = _mask_and_shrink(mobilenet())
    before = per_layer.sections["shrink"]["params_after"]
    after = grouped.sections["shrink"]["params_after"]
    # per-layer masks remove the union of the expansion's and its depthwise filters' own halves; grouped,
    # the depthwise filters are tied to the channels they read, so exactly half of those channels go
    assert after < 1.3 * before and after < 0.35 * grouped.sections["shrink"]["params_before"]
    stream = masked.get_layer("block_1_project").filters  # block_1 and block_2 add their outputs
    widths = {t.layer_name: t.units for t in grouped.targets}
    assert widths["block_1_project"] == widths["block_2_project"] == stream - round(0.5 * stream)
    expand = masked.get_layer("block_3_expand").filters
    assert widths["block_3_expand"] == widths["block_3_depthwise"] == expand - round(0.5 * expand)
    assert sum(g["channels"] for g in grouped.sections["shrink"]["groups_kept_whole"]) < sum(
        g["channels"] for g in per_layer.sections["shrink"]["groups_kept_whole"]
    )


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_untied_sequential_model_keeps_the_policy_selection(scope):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(10, activation="relu", name="d1"),
            keras.layers.Dense(8, activation="relu", name="d2"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    found, result = _masks(model, sparsity=0.5, scope=scope)
    _, alone = _masks(model, model_for_graph=None, sparsity=0.5, scope=scope)
    assert all((np.asarray(result.masks[k]) == np.asarray(alone.masks[k])).all() for k in alone.masks)
    assert not any("pruned as one" in n for n in result.notes)


def test_a_keras_ops_concatenate_joins_channels_as_the_concatenate_layer_does():
    """`keras.ops.concatenate` in a functional graph is recorded as an operation, not a layer: its
    inputs' filters shrink through it as through a Concatenate layer (they were kept whole)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="a")(inp)
    b = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="b")(inp)
    joined = keras.ops.concatenate([a, keras.ops.relu(b) * 2.0], axis=-1)
    out = keras.layers.Dense(3, name="head")(keras.layers.GlobalAveragePooling2D()(joined))
    s, masked, kept = _mask_and_shrink(keras.Model(inp, out))
    assert s.model.get_layer("a").filters == kept["a"] < 8 and s.model.get_layer("b").filters == kept["b"] < 6
    assert s.sections["shrink"]["groups_kept_whole"] == []
    x = np.random.default_rng(1).standard_normal((4, 8, 8, 3)).astype("float32")
    want, got = np.asarray(masked(x)), np.asarray(s.model(x))
    assert np.abs(want - got).max() <= 1e-4 * np.abs(want).max()
