"""One selection path in fact: heads, features and layers get their counts and floors from the policy,
and the channel graph is built once per model, not once per consumer or per mask update."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from prunecli.config import build_config


def _heads(path: str, scores) -> SimpleNamespace:
    n = len(scores)
    return SimpleNamespace(path=path, units=n, num_heads=n, group=1)


@pytest.mark.parametrize(("normalize", "want"), [("lamp", {"a": 2, "b": 2}), ("none", {"a": 1, "b": 3})])
def test_global_heads_rank_with_the_runs_normalisation(normalize, want):
    """Layer b's heads all score below layer a's. Raw ranking takes b down to its last head; LAMP (the
    default) compares each head with the rest of its own layer and takes two from each."""
    from prunecli.removal import heads

    scores = {"a": np.array([10.0, 11, 12, 13]), "b": np.array([1.0, 2, 3, 4])}
    layers = [_heads(p, s) for p, s in scores.items()]
    config = build_config(
        {"model_path": "m.keras", "granularity": "head", "sparsity": 0.5, "scope": "global", "normalize": normalize},
        environ={},
    )
    removed = heads.choose(layers, scores, config, notes=[])
    assert {p: len(units) for p, units in removed.items()} == want
    assert removed["b"][0] == 0  # the lowest-scored head goes first


def test_heads_and_weights_share_one_floor_rule():
    """--min-keep holds heads as it holds weights; a layer never loses its last head, even with --allow-empty."""
    from prunecli.removal import heads
    from prunecli.selection import policy

    scores = {"a": np.arange(1.0, 11.0)}
    layers = [_heads("a", scores["a"])]
    notes: list[str] = []
    config = build_config(
        {"model_path": "m.keras", "granularity": "head", "sparsity": 0.95, "min_keep": 0.3}, environ={}
    )
    assert len(heads.choose(layers, scores, config, notes)["a"]) == 10 - policy.floor(10, config) == 7
    assert any("kept 3 of 10" in n for n in notes)
    empty = config.replace(allow_empty=True, sparsity=1.0)
    assert len(heads.choose(layers, scores, empty, [])["a"]) == 9


def test_removal_count_is_the_policy_count():
    from prunecli.selection import policy

    assert policy.removal_count(10, 0.25, keep=0) == (2, False)  # round(2.5) as the policy rounds
    assert policy.removal_count(10, 0.95, keep=3) == (7, True)


def _residual_cnn(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input((8, 8, 1))
    a = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(x)
    b = keras.layers.Conv2D(8, 3, padding="same", name="c2")(a)
    h = keras.layers.Activation("relu")(keras.layers.Add()([a, b]))
    h = keras.layers.GlobalAveragePooling2D()(h)
    out = keras.layers.Dense(3, activation="softmax", name="head")(keras.layers.Dense(16, name="fc")(h))
    model = keras.Model(x, out)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture
def count_builds(monkeypatch):
    from prunecli.structure import channels

    calls: list[int] = []
    real = channels.build

    def counted(model):
        calls.append(id(model))
        return real(model)

    monkeypatch.setattr(channels, "build", counted)
    return calls


def test_one_graph_build_per_neuron_mask_step(count_builds):
    """Output units, tied sets, constant folding and followers all read the model's one graph."""
    from prunecli.outputs.report import Timings
    from prunecli.run import steps

    model = _residual_cnn()
    config = build_config({"model_path": "m.keras", "granularity": "neuron", "sparsity": 0.5}, environ={})
    found = steps.pick_targets(model, config).targets
    masks = steps.score_and_mask(model, found, None, None, config, steps.silent, Timings())
    assert masks.followers and len(masks.masks) == len(found)
    assert count_builds == [id(model)]
    steps.score_and_mask(model, found, None, None, config.replace(sparsity=0.7), steps.silent, Timings())
    assert count_builds == [id(model)]  # a later mask update (as a gradual schedule makes) builds none


@pytest.mark.slow
def test_a_gradual_neuron_run_builds_the_graph_once(tmp_path, count_builds):
    from prunecli import prune

    model = _residual_cnn()
    path = tmp_path / "m.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.normal(size=(64, 8, 8, 1)).astype("float32"), y=rng.integers(0, 3, 64))
    config = build_config(
        {
            "model_path": str(path),
            "granularity": "neuron",
            "sparsity": 0.5,
            "schedule": "iterative",
            "schedule_steps": 3,
            "epochs": 1,
            "batch_size": 16,
            "data": str(tmp_path / "d.npz"),
            "sizes": False,
        },
        environ={},
    )
    result = prune(config)
    assert len(result.report.to_dict()["finetune"]) > 0
    assert len(count_builds) == 1, "every mask update of the gradual run reuses the run's graph"
