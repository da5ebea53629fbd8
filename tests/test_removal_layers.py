"""Layer pruning: the right block goes first, bypassing is exact, the rebuilt model saves and trains."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunecli import build_config, prune
from prunecli.errors import InputError
from prunecli.removal import layers as layer_pruning

WIDTH = 16


def build_residual(seed: int = 0):
    """stem -> three expansion blocks x + f(x) -> a 16->16 'mix' layer -> classifier."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((20,), name="features")
    h = keras.layers.Dense(WIDTH, activation="relu", name="stem")(inp)
    for i in range(3):
        b = keras.layers.Dense(2 * WIDTH, activation="relu", name=f"b{i}_up")(h)
        b = keras.layers.Dense(WIDTH, name=f"b{i}_down")(b)
        h = keras.layers.Add(name=f"add{i}")([h, b])
    h = keras.layers.Dense(WIDTH, activation="relu", name="mix")(h)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inp, out, name="resmlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    """A trained residual MLP whose block 1 is then made near-identity (its branch scaled by 1e-3)."""
    from conftest import make_tabular

    d = tmp_path_factory.mktemp("res")
    x, y = make_tabular(n=600)
    model = build_residual()
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    down = model.get_layer("b1_down")
    down.kernel.assign(down.kernel * 1e-3)
    down.bias.assign(down.bias * 1e-3)
    model.save(d / "res.keras")
    np.savez(d / "data.npz", x=x, y=y)
    np.savez(d / "inputs.npz", x=x)  # no labels
    return {"model": d / "res.keras", "data": d / "data.npz", "inputs": d / "inputs.npz", "dir": d, "x": x, "y": y}


def _run(residual, **options):
    settings = {
        "model_path": str(residual["model"]),
        "granularity": "layer",
        "force": True,
        "output": str(residual["dir"] / "out.keras"),
    }
    settings.update(options)
    return prune(build_config(settings))


@pytest.mark.parametrize(
    "with_data",
    [pytest.param("data", marks=pytest.mark.slow), pytest.param("inputs", marks=pytest.mark.slow), None],
)
def test_near_identity_block_is_removed_first_and_outputs_barely_change(residual, with_data):
    """With labels, by the loss; with --data of inputs alone, by the change of the outputs on them (it
    was scored on stand-ins, the report saying "no --data"); with none, on stand-ins."""
    import keras

    original = keras.saving.load_model(residual["model"])
    options = {"remove_layers": 1}
    if with_data:
        options["data"] = str(residual[with_data])
    result = _run(residual, **options)
    report = result.report.to_dict()
    assert report["removed_layers"] == ["b1_up", "b1_down", "add1"]
    x = residual["x"][:200]
    assert np.abs(np.asarray(result.model(x)) - np.asarray(original(x))).max() < 1e-2
    expected = {"data": "loss increase", "inputs": "outputs on --data (it has no labels)", None: "probe"}[with_data]
    assert expected in report["layer_pruning"]["score"]
    assert report["totals"]["params"] == original.count_params() - (16 * 32 + 32 + 32 * 16 + 16)
    assert report["flops"]["after"] == report["flops"]["before"] - (16 * 32 + 32 * 16)


def test_probe_scores_fed_a_few_stand_ins_at_a_time_equal_one_pass(residual, monkeypatch):
    """Without labelled data the candidates are scored on 64 stand-ins fed in chunks that fit
    MAX_PROBE_ELEMENTS input values: chunks of one give the scores of one pass over all 64, to float32's
    precision (a matmul over 1 row and over 64 rows may sum in another order: 6e-8 apart on a CPU without
    oneDNN, identical on one with it)."""
    import keras

    from prunecli.structure import equivalence

    model = keras.saving.load_model(residual["model"])
    whole, _ = layer_pruning.analyse(model)
    layer_pruning._scores_by_probe(model, whole, seed=0)
    monkeypatch.setattr(equivalence, "MAX_PROBE_ELEMENTS", 1)  # one stand-in per call
    calls = []
    real_call = keras.Model.__call__
    monkeypatch.setattr(keras.Model, "__call__", lambda self, *a, **k: calls.append(1) or real_call(self, *a, **k))
    chunked, _ = layer_pruning.analyse(model)
    layer_pruning._scores_by_probe(model, chunked, seed=0)
    assert len(calls) >= layer_pruning.PROBE_EXAMPLES
    assert [c.name for c in chunked] == [c.name for c in whole]
    np.testing.assert_allclose([c.score for c in chunked], [c.score for c in whole], rtol=1e-6)


def test_report_says_why_each_layer_is_or_is_not_a_candidate(residual):
    report = _run(residual, remove_layers=1).report.to_dict()
    rows = {r["layer"]: r for r in report["layer_pruning"]["layers"]}
    assert rows["b0_up"]["candidate"] is False and "changes shape" in rows["b0_up"]["reason"]
    assert "inside residual branch add0" in rows["b0_up"]["reason"]
    assert rows["add0"]["candidate"] is True and "residual branch" in rows["add0"]["reason"]
    assert rows["mix"]["candidate"] is True and "identity" in rows["mix"]["reason"]
    assert rows["out"]["candidate"] is False  # changes shape (and is the output)
    assert rows["stem"]["candidate"] is False and "changes shape" in rows["stem"]["reason"]
    kinds = {c["name"]: c["kind"] for c in report["layer_pruning"]["candidates"]}
    assert kinds == {"add0": "branch", "add1": "branch", "add2": "branch", "mix": "layer"}


def test_identity_replacement_gives_exactly_the_rebuilt_models_outputs(residual):
    """Bypassing 'mix' equals a model built by hand without it, using the same weights, bit for bit."""
    import keras

    model = keras.saving.load_model(residual["model"])
    candidates, _ = layer_pruning.analyse(model)
    mix = next(c for c in candidates if c.name == "mix")
    rebuilt = layer_pruning.remove(model, [mix])
    assert "mix" not in [layer.name for layer in rebuilt.layers]
    inp = keras.Input((20,))
    h = model.get_layer("stem")(inp)
    for i in range(3):
        h = model.get_layer(f"add{i}")([h, model.get_layer(f"b{i}_down")(model.get_layer(f"b{i}_up")(h))])
    by_hand = keras.Model(inp, model.get_layer("out")(h))
    x = residual["x"][:64]
    assert np.array_equal(np.asarray(rebuilt(x)), np.asarray(by_hand(x)))


@pytest.mark.slow
def test_rebuilt_model_saves_reloads_and_fine_tunes(residual):
    import keras

    out = residual["dir"] / "two.keras"
    result = _run(residual, remove_layers=2, data=str(residual["data"]), epochs=1, output=str(out))
    report = result.report.to_dict()
    assert len([c for c in report["layer_pruning"]["candidates"] if c["removed"]]) == 2
    assert "after_finetune" in report["metrics"]
    reloaded = keras.saving.load_model(out)
    x = residual["x"][:32]
    np.testing.assert_allclose(reloaded(x), result.model(x), atol=1e-6)
    assert not set(report["removed_layers"]) & {layer.name for layer in reloaded.layers}
    history = reloaded.fit(x, residual["y"][:32], epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_sparsity_counts_candidates_and_overlaps_are_skipped(residual):
    import keras

    x = keras.Input((WIDTH,))
    inner = keras.layers.Dense(WIDTH, name="inner")(x)
    nested = keras.layers.Add(name="outer_add")([x, keras.layers.Dense(WIDTH, name="after")(inner)])
    small = keras.Model(x, keras.layers.Dense(2, name="head")(nested))
    candidates, _ = layer_pruning.analyse(small)
    names = {c.name for c in candidates}
    assert names == {"outer_add", "inner", "after"}
    for c in candidates:  # the branch scores lowest, so its inner layers can no longer be taken
        c.score = {"outer_add": 0.0, "inner": 0.1, "after": 0.2}[c.name]
    notes: list = []
    chosen = layer_pruning.choose(candidates, build_config({"remove_layers": 2, "granularity": "layer"}), notes)
    assert [c.name for c in chosen] == ["outer_add"] and notes
    half = _run(residual, sparsity=0.5).report.to_dict()  # 4 candidates -> 2 removed
    assert sum(c["removed"] for c in half["layer_pruning"]["candidates"]) == 2


def test_sequential_model_and_no_candidates(example_model, tmp_path):
    import keras

    result = prune(
        build_config(
            {
                "model_path": str(example_model),
                "granularity": "layer",
                "remove_layers": 1,
                "output": str(tmp_path / "cnn.keras"),
            }
        )
    )
    assert result.report.to_dict()["removed_layers"] == ["bn1"]  # the only shape-preserving layer with weights
    original = keras.saving.load_model(example_model).count_params()
    assert keras.saving.load_model(tmp_path / "cnn.keras").count_params() == original - 4 * 16
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="only")])
    plain.save(tmp_path / "plain.keras")
    with pytest.raises(InputError, match="no layer can be removed"):
        prune(build_config({"model_path": str(tmp_path / "plain.keras"), "granularity": "layer"}))


def test_cli_layer_pruning_report(cli, residual, tmp_path):
    report = tmp_path / "r.json"
    res = cli(
        "prune",
        residual["model"],
        "-g",
        "layer",
        "--remove-layers",
        "1",
        "-o",
        tmp_path / "o.keras",
        "-r",
        report,
        "--markdown",
        tmp_path / "r.md",
        "-q",
    )
    assert res.exit_code == 0, res.output
    claims = json.loads(report.read_text())
    assert claims["removed_layers"] == ["b1_up", "b1_down", "add1"]
    # the page says what went (it read '0.0% sparse', the removal only in a collapsed JSON block)
    section = claims["layer_pruning"]
    (gone,) = [c["params"] for c in section["candidates"] if c["removed"]]
    assert section["params_before"] - section["params_after"] == gone > 0
    said = f"Removed from the model: **{gone:,} of {section['params_before']:,} parameters"
    assert said in (tmp_path / "r.md").read_text()
