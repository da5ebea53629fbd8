"""--normalize measured for magnitude (the default with --data): every layer at the sparsity and LAMP
each applied to the dense model, the model run on examples of --data, and the allocation that moved the
outputs least used for the whole run, one-shot or ramped (run/steps.measured_allocation)."""

from __future__ import annotations

import numpy as np
import pytest

from prunecli.config import MEASURED, build_config

FIXED = {"uniform": {"scope": "layer"}, "lamp": {"scope": "global"}}  # in the order they are tried


def _prune(mlp_files, tmp_path, **values):
    from prunecli import prune

    settings = {
        "model_path": str(mlp_files["keras"]),
        "data": str(mlp_files["data"]),
        "sparsity": 0.8,
        "output": str(tmp_path / "o.keras"),
        "force": True,
        "quiet": True,
        "sizes": False,
        **values,
    }
    config = build_config(settings, environ={})
    return config, prune(config)


def _pruned_share(result) -> dict:
    return {name: float(1 - np.asarray(m).mean()) for name, m in result.masks.masks.items()}


def test_the_default_measures_and_uses_the_least_changed_allocation(mlp_files, tmp_path):
    config, result = _prune(mlp_files, tmp_path)
    assert config.normalize == MEASURED
    measured = result.report.extra["allocation_measured"]
    errors = measured["output_error"]
    assert set(errors) == set(FIXED) and measured["examples"] == 64
    assert measured["chosen"] == min(errors, key=errors.get)
    assert any(f"the {measured['chosen']} allocation moved the outputs least" in n for n in result.report.notes)
    _, explicit = _prune(mlp_files, tmp_path, **FIXED[measured["chosen"]])
    for name, mask in result.masks.masks.items():
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(explicit.masks.masks[name]), err_msg=name)


@pytest.mark.parametrize(
    "forced",
    [pytest.param(f, marks=pytest.mark.slow) if f == "uniform" else f for f in FIXED],  # 2 s each
)
def test_each_allocation_when_it_moves_the_outputs_least(monkeypatch, mlp_files, tmp_path, forced):
    """The run's masks are the forced allocation's (uniform: every layer at the sparsity), and the dense
    weights are restored between the trials: the kept weights equal the input model's."""
    import keras

    from prunecli.calibration import outputs

    order = iter(FIXED)
    monkeypatch.setattr(outputs, "error", lambda *a: 0.0 if next(order) == forced else 1.0)
    _, result = _prune(mlp_files, tmp_path)
    monkeypatch.undo()
    assert result.report.extra["allocation_measured"]["chosen"] == forced
    _, explicit = _prune(mlp_files, tmp_path, **FIXED[forced])
    assert _pruned_share(result) == pytest.approx(_pruned_share(explicit))
    at_the_sparsity = all(abs(share - 0.8) < 0.02 for share in _pruned_share(result).values())
    assert at_the_sparsity == (forced == "uniform")
    dense = {w.path: np.asarray(w) for w in keras.models.load_model(mlp_files["keras"]).weights}
    for t in result.masks.masks:
        kept = np.asarray(result.masks.masks[t])
        variable = next(w for w in result.model.weights if w.path == t)
        np.testing.assert_array_equal(np.asarray(variable)[kept], dense[t][kept], err_msg=t)


@pytest.mark.slow  # 1.1-1.8 s: the full suite (fast subset at its 120 s limit)
def test_a_gradual_schedule_ramps_in_the_measured_allocation(monkeypatch, mlp_files, tmp_path):
    """With --epochs the default schedule prunes while training; the allocation is measured once on the
    dense model and the ramp ends in it (forced uniform: every layer at the sparsity)."""
    from prunecli.calibration import outputs

    order = iter(FIXED)
    monkeypatch.setattr(outputs, "error", lambda *a: 0.0 if next(order) == "uniform" else 1.0)
    config, result = _prune(mlp_files, tmp_path, epochs=1)
    monkeypatch.undo()
    assert config.schedule == "polynomial"
    assert result.report.extra["allocation_measured"]["chosen"] == "uniform"
    assert all(abs(share - 0.8) < 0.02 for share in _pruned_share(result).values())


@pytest.mark.slow  # 1.1-1.8 s: the full suite (fast subset at its 120 s limit)
def test_without_room_for_a_copy_lamp_is_used(monkeypatch, mlp_files, tmp_path):
    from prunecli.calibration import oneshot

    monkeypatch.setattr(oneshot, "_available_memory", lambda: 1000)
    _, result = _prune(mlp_files, tmp_path)
    monkeypatch.undo()
    measured = result.report.extra["allocation_measured"]
    assert measured["chosen"] == "lamp" and "no room" in measured["why"]
    _, explicit = _prune(mlp_files, tmp_path, scope="global")
    assert _pruned_share(result) == pytest.approx(_pruned_share(explicit))


def test_plan_makes_the_same_choice(cli, mlp_files):
    """`plan` runs the same masking step, so it measures and shows the same allocation as prune."""
    import json

    result = cli("plan", mlp_files["keras"], "-s", "0.8", "--data", mlp_files["data"], "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["allocation_measured"]["chosen"] in FIXED


def _save(model, tmp_path, x, y):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=int(model.inputs[0].shape[0]), verbose=0)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=y)
    return {"keras": tmp_path / "m.keras", "data": tmp_path / "d.npz"}


@pytest.mark.slow  # 1.1-1.8 s: the full suite (fast subset at its 120 s limit)
def test_a_declared_batch_size_without_state_binds_no_pass(tmp_path):
    """A model declared with batch size 48 but holding no state runs on any pass (Keras leaves the batch
    axis of a functional model's input free): all 64 examples are compared, the last pass 16 long. Whole
    passes of 48 (48 of the 64) were the rule, and ao-compensation-model's gait GRU, declared with 128,
    had every --data command refused (bench/ZOO.md)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12,), batch_size=48)
    h = keras.layers.Dense(24, activation="relu", name="h")(inp)
    files = _save(keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="o")(h)), tmp_path,
                  np.random.default_rng(0).normal(size=(192, 12)).astype("float32"), np.arange(192) % 3)  # fmt: skip
    _, result = _prune(files, tmp_path, batch_size=48)
    assert result.report.extra["allocation_measured"]["examples"] == 64


@pytest.mark.slow
def test_a_stateful_model_is_not_run_to_compare(tmp_path):
    """A forward pass changes a stateful RNN's state, so the allocation is LAMP, and the account says why."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 4), batch_size=8)
    h = keras.layers.LSTM(8, stateful=True, name="rnn")(inp)
    files = _save(keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="o")(h)), tmp_path,
                  np.random.default_rng(0).normal(size=(64, 5, 4)).astype("float32"), np.arange(64) % 3)  # fmt: skip
    _, result = _prune(files, tmp_path, batch_size=8)
    measured = result.report.extra["allocation_measured"]
    assert measured["chosen"] == "lamp" and "rnn is stateful" in measured["why"]
