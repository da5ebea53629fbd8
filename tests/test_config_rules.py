"""Per-layer rules (recipe `layers:`): PruneConfig.rule_for decides for a layer known by any of its
names, and prunecli.config.name_matches is the one glob matcher the rules use."""

from __future__ import annotations

import pytest

from prunecli.config import LayerOverride, LayerRule, PruneConfig, build_config, name_matches


def rules(*overrides: LayerOverride) -> PruneConfig:
    return PruneConfig(model_path="m.keras", overrides=overrides)


def test_no_matching_rule_decides_nothing():
    assert rules().rule_for("dense") == LayerRule(skip=False, sparsity=None)
    assert rules(LayerOverride("conv*", sparsity=0.3)).rule_for("dense", "model/dense") == LayerRule()


def test_the_last_matching_rule_with_a_sparsity_wins():
    config = rules(
        LayerOverride("dense*", sparsity=0.8),
        LayerOverride("dense_1", sparsity=0.3),
        LayerOverride("dense_1"),  # matches, but gives no sparsity: the 0.3 stands
    )
    assert config.rule_for("dense_1") == LayerRule(sparsity=0.3)
    assert config.rule_for("dense_2") == LayerRule(sparsity=0.8)


def test_a_skip_wins_wherever_it_stands():
    config = rules(LayerOverride("head", skip=True), LayerOverride("*", sparsity=0.9))
    assert config.rule_for("head") == LayerRule(skip=True, sparsity=None)
    assert config.rule_for("body") == LayerRule(sparsity=0.9)


def test_a_rule_matches_any_of_the_names_and_the_last_part_of_a_path():
    config = rules(LayerOverride("encoder/*", sparsity=0.5), LayerOverride("attn", skip=True))
    assert config.rule_for("ffn", "encoder/ffn") == LayerRule(sparsity=0.5)  # the outer/inner path
    assert config.rule_for("encoder/block/attn") == LayerRule(skip=True)  # the leaf of a path
    assert config.rule_for("ffn") == LayerRule()  # known only by its own name: no path to match


def test_rules_from_a_recipe_mapping():
    config = build_config(
        {"model_path": "m.keras", "overrides": {"dense*": 0.8, "dense_out": "skip", "conv1": {"sparsity": 0.3}}},
        environ={},
    )
    assert config.rule_for("dense_out").skip
    assert config.rule_for("dense_2").sparsity == 0.8
    assert config.rule_for("conv1") == LayerRule(sparsity=0.3)


@pytest.mark.parametrize(
    ("name", "patterns", "hit"),
    [
        ("dense_1", ["dense*"], True),
        ("outer/dense_1", ["dense_?"], True),  # the leaf
        ("outer/dense_1", ["outer/*"], True),  # the full path
        ("outer/dense_1", ["outer"], False),
        ("Dense", ["dense"], False),  # case-sensitive on every platform
        ("conv", [], False),
        ("conv", ("x", "c[o]nv"), True),
    ],
)
def test_name_matches(name, patterns, hit):
    assert name_matches(name, patterns) is hit


def test_the_api_given_objects_instead_of_settings_says_so():
    """A Keras model object as model_path, or a dict handed to prune(), is a ConfigError (exit 2) that
    says what to give: the model object was turned into the text of its repr, then "model file not
    found: <Sequential ...>"; the dict an AttributeError outside the error family."""
    import keras

    import prunecli
    from prunecli.errors import ConfigError

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ConfigError, match=r"model_path takes the path of a saved model, not a model object"):
        prunecli.build_config({"model_path": model, "sparsity": 0.5}, environ={})
    with pytest.raises(ConfigError, match=r"prune\(\) takes a PruneConfig"):
        prunecli.prune({"model_path": "m.keras", "sparsity": 0.5})
    with pytest.raises(ConfigError, match="invalid value for output"):
        prunecli.build_config({"model_path": "m.keras", "output": b"o.keras"}, environ={})


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"normalize": "erk", "scope": "layer"}, "with --scope layer each layer is pruned on its own"),
        ({"normalize": "owl", "scope": "global", "threshold": 0.01, "sparsity": None}, "with --threshold"),
        ({"initial_sparsity": 0.9, "epochs": 1}, "is above --sparsity 0.5"),
        # every row of a block column tied, so the blocks went by position (adv39)
        ({"method": "neuron-mean", "granularity": "block:4x4"}, "scores whole units; granularity block:4x4 needs"),
        ({"method": "redundancy", "granularity": "block:2x1", "data": "d.npz"}, "needs a score per weight"),
    ],
)
def test_an_option_the_run_would_not_read_is_refused(settings, says):
    """An audit found `--normalize erk --scope layer` ignored without a word, and a gradual schedule asked
    to fall from --initial-sparsity 0.9 to --sparsity 0.5 accepted."""
    from prunecli.errors import ConfigError

    with pytest.raises(ConfigError, match=says):
        build_config({"model_path": "m.keras", "sparsity": 0.5, **settings}, environ={})


def test_a_per_layer_budget_with_a_global_ranking_is_accepted():
    assert build_config({"model_path": "m.keras", "sparsity": 0.5, "normalize": "erk"}, environ={}).scope == "global"
