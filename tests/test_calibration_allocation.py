"""--normalize measured, the calibrated methods' default allocation: uniform, LAMP and OWL each tried,
compared on examples held out of the calibration (or the calibration's own when there are too few), the
one that changes the outputs least used (calibration/oneshot.py); Wanda also tries the default magnitude
command's masks and uniform and LAMP ranked by the tempered |w| * ||x||^0.5, and at N:M the exponent of
its input norm (1, 0.5 or 0)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import calibration_config, every_target

from prunecli.calibration.oneshot import TEMPERED_TRIALS
from prunecli.config import MEASURED, build_config
from prunecli.errors import ConfigError

EXPLICIT = {"uniform": {"scope": "layer"}, "lamp": {"scope": "global"}, "owl": {"scope": "global", "normalize": "owl"}}


def _conv_model():
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", name="c1", activation="relu")(inp)
    h = keras.layers.Conv2D(8, 3, padding="same", name="c2", activation="relu")(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dense(24, name="fc1", activation="relu")(h)
    return keras.Model(inp, keras.layers.Dense(10, name="fc2")(h))


def _inputs():
    return np.random.default_rng(0).normal(size=(48, 12, 12, 3)).astype("float32")


def _held_out(n=64):
    return np.random.default_rng(7).normal(size=(n, 12, 12, 3)).astype("float32")


def _run(method, sparsity=0.7, held_out=None, **settings):
    from prunecli.calibration import prune_calibrated

    model = _conv_model()
    targets = every_target(model)
    config = calibration_config(method, sparsity=sparsity, **settings)
    res = prune_calibrated(model, targets, [_inputs()], config, held_out_x=held_out)
    return res, {t.name: np.asarray(t.variable) for t in targets}


def _magnitude_masks(sparsity=0.7, uniform=False, granularity="element"):
    """The masks the default magnitude command chooses between on the same model: global LAMP on
    |w|, or (`uniform`) every layer at the sparsity; with an N:M `granularity`, its N:M masks."""
    from prunecli.config import build_config
    from prunecli.selection import policy

    model = _conv_model()
    targets = every_target(model)
    values = {"model_path": "m.keras", "method": "magnitude", "sparsity": sparsity, "granularity": granularity}
    config = build_config({**values, **({"scope": "layer"} if uniform else {})}, environ={})
    nm = config.granularity.kind == "nm"
    assert (config.scope, config.normalize) == (("layer", "lamp") if uniform or nm else ("global", "lamp"))
    return policy.build_masks(
        targets, {t.name: np.abs(np.asarray(t.variable)) for t in targets}, config.granularity.kind, config
    ).masks


def test_the_default_measures_only_where_calibration_chooses_an_allocation():
    def cfg(**values):
        return build_config({"model_path": "m.keras", "data": "d.npz", **values}, environ={})

    assert cfg(method="wanda").normalize == MEASURED and cfg(method="wanda").scope == "global"
    assert cfg(method="sparsegpt", sparsity=0.7).normalize == MEASURED
    assert cfg(method="wanda", scope="global").normalize == "lamp"  # a scope the user chose keeps its meaning
    assert cfg(method="wanda", scope="layer").normalize == "lamp"
    assert cfg(method="wanda", granularity="n:m=2:4").scope == "layer"  # N:M: no allocation to choose
    assert cfg(method="wanda", granularity="n:m=2:4").normalize == MEASURED  # ... but Wanda's exponent
    assert cfg(method="wanda", granularity="n:m=2:4", scope="layer").normalize == "lamp"  # Wanda's own score
    assert cfg(method="sparsegpt", granularity="n:m=2:4").normalize == "lamp"
    assert cfg(method="magnitude").normalize == MEASURED  # with --data: run/steps.measured_allocation
    assert cfg(method="magnitude", epochs=2).normalize == MEASURED
    assert cfg(method="magnitude", scope="global").normalize == "lamp"
    assert cfg(method="magnitude", threshold=0.1).normalize == "lamp"
    assert cfg(method="magnitude", granularity="block:2x2").normalize == "lamp"
    assert cfg(method="taylor").normalize == "lamp"  # scored from data: measured only when asked for
    assert build_config({"model_path": "m.keras"}, environ={}).normalize == "lamp"  # no --data: nothing to measure on
    assert cfg(method="wanda", scope="global", normalize="measured").normalize == MEASURED
    assert cfg(method="taylor", normalize="measured").normalize == MEASURED
    with pytest.raises(ConfigError, match="give --data"):
        build_config({"model_path": "m.keras", "normalize": "measured"}, environ={})
    with pytest.raises(ConfigError, match="not with --threshold"):
        cfg(normalize="measured", threshold=0.1)
    with pytest.raises(ConfigError, match="measures one-shot runs"):
        cfg(method="wanda", normalize="measured", schedule="polynomial", epochs=1)
    with pytest.raises(ConfigError, match="--scope global"):
        cfg(method="wanda", scope="layer", normalize="measured")


@pytest.mark.parametrize(
    "method", ["wanda", *(pytest.param(m, marks=pytest.mark.slow) for m in ("wanda 2:4", "sparsegpt"))]
)
def test_measured_uses_the_allocation_with_the_least_output_error(method):
    """The choice is the smallest of the errors it reports, and the run is the same, mask for mask and
    weight for weight, as one given that allocation explicitly: the weights are restored after each try.
    At N:M Wanda's exponent is what is measured: 0 gives the magnitude command's N:M masks."""
    if method == "wanda 2:4":
        from prunecli.calibration import oneshot

        res, weights = _run("wanda", scope="auto", sparsity=None, granularity="n:m=2:4")
        measured = res.section["allocation_measured"]
        errors = measured["output_error"]
        assert set(errors) == set(oneshot.EXPONENT_TRIALS) and measured["chosen"] == min(errors, key=errors.get)
        assert res.section["allocation"].startswith(f"layer; measured: {measured['chosen']}")
        wanda_own, _ = _run("wanda", sparsity=None, granularity="n:m=2:4")  # --scope layer: Wanda's own score
        magnitude = _magnitude_masks(sparsity=None, granularity="n:m=2:4")
        for name, mask in res.masks.items():
            expected = wanda_own.masks[name] if measured["chosen"] == "wanda" else magnitude[name]
            if measured["chosen"] != "wanda-tempered":
                np.testing.assert_array_equal(np.asarray(mask), np.asarray(expected), err_msg=name)
            assert not np.array_equal(np.asarray(wanda_own.masks[name]), np.asarray(magnitude[name])), name
        return
    res, weights = _run(method, scope="auto")
    measured = res.section["allocation_measured"]
    errors = measured["output_error"]
    own = {"sparsegpt"} if method == "sparsegpt" else {"uniform-tempered", "lamp-tempered"}  # the run / Wanda's
    assert set(errors) == {"uniform", "lamp", "owl", "magnitude", "magnitude-uniform"} | own
    assert measured["examples"] == 48
    if method == "wanda":
        assert measured["chosen"] == min(errors, key=errors.get)
    else:  # the best trial (a Wanda run or magnitude masks) is kept only where it beat the SparseGPT run
        trials = {k: v for k, v in errors.items() if k != "sparsegpt"}
        best = min(trials, key=trials.get)
        if measured.get("kept"):
            assert measured["chosen"] == best and errors[best] < errors["sparsegpt"]
            return
        assert measured["chosen"] == min(("uniform", "lamp", "owl"), key=errors.get)
        assert errors["sparsegpt"] <= errors[best]
    assert res.section["allocation"].startswith(f"measured: {measured['chosen']}")
    if measured["chosen"].startswith("magnitude"):
        for name, mask in _magnitude_masks(uniform=measured["chosen"] == "magnitude-uniform").items():
            np.testing.assert_array_equal(np.asarray(res.masks[name]), np.asarray(mask), err_msg=name)
        return
    tempered = TEMPERED_TRIALS.get(measured["chosen"])
    same, same_weights = _run(method, **EXPLICIT[tempered or measured["chosen"]])
    if tempered:  # the allocation's counts, ranked by another score than the explicit run's
        assert {n: int((~np.asarray(m)).sum()) for n, m in res.masks.items()} == {
            n: int((~np.asarray(m)).sum()) for n, m in same.masks.items()
        }
        return
    for name, mask in res.masks.items():
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(same.masks[name]), err_msg=name)
        np.testing.assert_array_equal(weights[name], same_weights[name], err_msg=name)


@pytest.mark.parametrize(
    "forced",
    [
        "lamp-tempered",
        *(
            pytest.param(f, marks=pytest.mark.slow)
            for f in ("lamp", "magnitude", "uniform", "owl", "magnitude-uniform", "uniform-tempered")
        ),
    ],
)
def test_each_allocation_when_it_measures_best(monkeypatch, forced):
    """Whichever allocation measures best is the one the masks follow: each layer's pruned count is that
    allocation's (uniform: every layer at the sparsity); the magnitude masks, when they measure best, are
    the run's, every calibrated layer listed as left to them and a note saying why; a tempered trial keeps
    its allocation's counts, ranked otherwise than Wanda's own run."""
    from prunecli.calibration import oneshot, outputs

    tried = []
    order = (*oneshot.MEASURED_ALLOCATIONS, *oneshot.TEMPERED_TRIALS, *oneshot.MAGNITUDE_TRIALS)

    def error(got, reference, compared_as):
        tried.append(len(tried))
        return 0.0 if order[len(tried) - 1] == forced else 1.0

    monkeypatch.setattr(outputs, "error", error)
    res, _ = _run("wanda", scope="auto")
    assert len(tried) == 7, "three different allocations at 70% on this model, two tempered, two magnitude masks"
    assert res.section["allocation_measured"]["chosen"] == forced
    monkeypatch.undo()
    if forced.startswith("magnitude"):
        for name, mask in _magnitude_masks(uniform=forced == "magnitude-uniform").items():
            np.testing.assert_array_equal(np.asarray(res.masks[name]), np.asarray(mask), err_msg=name)
        assert set(res.section["fallback"]) == set(res.masks) and not res.section["layers"]
        assert any("magnitude ranking" in note for note in res.notes)
        return
    allocation = TEMPERED_TRIALS.get(forced, forced)
    explicit, _ = _run("wanda", **EXPLICIT[allocation])
    counts = {n: int((~np.asarray(m)).sum()) for n, m in res.masks.items()}
    assert counts == {n: int((~np.asarray(m)).sum()) for n, m in explicit.masks.items()}
    shares = {round(counts[n] / np.asarray(m).size, 2) for n, m in res.masks.items()}
    assert (shares == {0.7}) == (allocation == "uniform")
    same = [np.array_equal(np.asarray(m), np.asarray(explicit.masks[n])) for n, m in res.masks.items()]
    assert all(same) == (forced not in TEMPERED_TRIALS)


@pytest.mark.parametrize(
    ("trial_errors", "run_error", "kept"),
    [
        # SparseGPT moved the outputs least: it stays (the full suite only: the fast subset is at its limit)
        pytest.param((0.5, 0.4, 0.45, 0.7, 0.9), 0.3, None, marks=pytest.mark.slow),
        pytest.param(
            (0.5, 0.4, 0.45, 0.7, 0.9), 0.6, "lamp", marks=pytest.mark.slow
        ),  # the LAMP allocation's Wanda run did
        pytest.param((0.5, 0.45, 0.48, 0.4, 0.9), 0.6, "magnitude", marks=pytest.mark.slow),  # the magnitude masks
    ],
)
def test_a_sparsegpt_run_is_measured_against_the_trials_and_the_best_is_kept(
    monkeypatch, trial_errors, run_error, kept
):
    """SparseGPT follows the best Wanda allocation, then is measured on the same examples against every
    trial (the Wanda runs and the default magnitude command's masks): the trial that moved the outputs
    least is the run's only where it moved them less than SparseGPT did."""
    from prunecli.calibration import outputs

    calls = []

    def error(got, reference, compared_as):
        calls.append(None)
        return trial_errors[len(calls) - 1] if len(calls) <= len(trial_errors) else run_error

    monkeypatch.setattr(outputs, "error", error)
    res, weights = _run("sparsegpt", scope="auto")
    monkeypatch.undo()
    measured = res.section["allocation_measured"]
    assert len(calls) == 6 and measured["output_error"]["sparsegpt"] == run_error
    if kept is None:  # the SparseGPT run stays, on the LAMP allocation it measured best
        assert measured["chosen"] == "lamp" and "kept" not in measured and res.section["layers"]
        explicit, explicit_weights = _run("sparsegpt", **EXPLICIT["lamp"])
        for name in res.masks:
            np.testing.assert_array_equal(weights[name], explicit_weights[name], err_msg=name)
        return
    assert measured["chosen"] == kept
    if kept == "lamp":  # the same masks and weights as an explicit Wanda run on that allocation
        assert measured["kept"] == "wanda" and res.section["allocation"].endswith("its Wanda run kept")
        explicit, explicit_weights = _run("wanda", **EXPLICIT["lamp"])
        for name in res.masks:
            np.testing.assert_array_equal(np.asarray(res.masks[name]), np.asarray(explicit.masks[name]), err_msg=name)
            np.testing.assert_array_equal(weights[name], explicit_weights[name], err_msg=name)
        assert res.section["layers"] and any("the Wanda run on the lamp allocation" in n for n in res.notes)
        return
    assert measured["kept"] == "magnitude" and res.section["allocation"].startswith("measured: magnitude")
    dense = {t.name: np.asarray(t.variable) for t in every_target(_conv_model())}
    for name, mask in _magnitude_masks().items():
        np.testing.assert_array_equal(np.asarray(res.masks[name]), np.asarray(mask), err_msg=name)
        np.testing.assert_array_equal(weights[name], np.where(np.asarray(mask), dense[name], 0.0), err_msg=name)
    assert set(res.section["fallback"]) == set(res.masks) and not res.section["layers"]
    assert any(n.startswith("sparsegpt: measured: the magnitude ranking") and "sparsegpt run" in n for n in res.notes)


@pytest.mark.parametrize("nm", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_without_room_for_a_copy_of_the_weights_lamp_is_used(monkeypatch, nm):
    """... and at N:M, Wanda's own score (no exponent trials)."""
    from prunecli.calibration import oneshot

    monkeypatch.setattr(oneshot, "check_memory", lambda *a: None)  # the layers' own buffers: not this test's
    monkeypatch.setattr(oneshot, "_available_memory", lambda: 1000)
    setting = {"sparsity": None, "granularity": "n:m=2:4"} if nm else {}
    res, _ = _run("wanda", scope="auto", **setting)
    assert res.section["allocation_measured"]["chosen"] == ("wanda" if nm else "lamp")
    assert "no room" in res.section["allocation_measured"]["why"]
    explicit, _ = _run("wanda", scope="layer" if nm else "global", **setting)
    for name, mask in res.masks.items():
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(explicit.masks[name]), err_msg=name)


@pytest.mark.slow
def test_a_sparsegpt_run_with_room_for_one_copy_measures_allocations_without_the_magnitude_masks(monkeypatch):
    from prunecli.calibration import oneshot

    weight_bytes = sum(4 * t.size for t in every_target(_conv_model()))
    monkeypatch.setattr(oneshot, "check_memory", lambda *a: None)  # the layers' own buffers: not this test's
    monkeypatch.setattr(oneshot, "_no_room_now", lambda *a: None)
    monkeypatch.setattr(oneshot, "_available_memory", lambda: 2 * weight_bytes + 1)  # half of it holds one copy
    res, _ = _run("sparsegpt", scope="auto")
    assert set(res.section["allocation_measured"]["output_error"]) == {"uniform", "lamp", "owl"}
    assert not any("pruned by Wanda" in n for n in res.notes)  # the layers themselves ran SparseGPT


@pytest.mark.slow
def test_layers_left_to_magnitude_follow_the_measured_allocation(monkeypatch):
    """Recurrent kernels are pruned by magnitude, all together, before calibration: under a measured
    uniform allocation each still loses exactly its own share, not its place in one raw ranking (the
    second kernel's weights are ten times the first's)."""
    import keras

    from prunecli.calibration import outputs, prune_calibrated

    monkeypatch.setattr(outputs, "error", lambda out, ref, kinds: 0.0)  # a tie: the first, uniform
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6, 4)),
            keras.layers.SimpleRNN(8, return_sequences=True, name="rnn1"),
            keras.layers.SimpleRNN(8, name="rnn2"),
            keras.layers.Dense(3, name="out"),
        ]
    )
    cell = model.get_layer("rnn2").cell
    cell.recurrent_kernel.assign(10.0 * cell.recurrent_kernel)
    targets = every_target(model)
    x = np.random.default_rng(0).normal(size=(32, 6, 4)).astype("float32")
    res = prune_calibrated(model, targets, [x], calibration_config("wanda", sparsity=0.6, scope="auto"))
    assert res.section["allocation_measured"]["chosen"] == "uniform"
    recurrent = [t for t in targets if "recurrent" in t.name]
    assert len(recurrent) == 2 and all(t.name in res.section["fallback"] for t in recurrent)
    for t in targets:
        assert int(np.sum(np.asarray(t.variable) == 0)) == round(0.6 * t.size), t.name


def test_outputs_are_compared_as_what_they_are():
    """Distributions by KL (dense || pruned), anything else by relative squared error: a softmax output
    that hedges is not mistaken for one that stays right."""
    from prunecli.calibration import outputs

    dense = [[np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05]]), np.array([[2.0], [-1.0]])]]
    assert outputs.kinds(_conv_model(), dense) == ["probabilities", "values"]
    hedged = [[np.full((2, 3), 1 / 3), np.array([[2.0], [-1.0]])]]
    close = [[np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1]]), np.array([[1.0], [-1.0]])]]
    p, q = dense[0][0], close[0][0]
    kl = float(np.sum(p * np.log(p / q))) / 2
    assert outputs.error(close, dense, ["probabilities", "values"]) == pytest.approx(kl + 1.0 / 5.0)
    assert outputs.error(hedged, dense, ["probabilities", "values"]) > outputs.error(
        close, dense, ["probabilities", "values"]
    )
    logits = [[np.log(p)]]
    assert outputs.error([[np.log(q) + 3.0]], logits, ["logits"]) == pytest.approx(kl)


def test_outputs_compared_as_values_are_one_relative_error():
    """Several value outputs are one relative squared error, so that a small one (a residual trained
    towards 0 beside the prediction, as acdc-nn's out_av beside its DDG) weighs by its size: zeroing it
    moves the outputs less than a quarter of the prediction's error does (each output on its own scale,
    the residual's relative error of 1 chose the run that is off on the prediction)."""
    from prunecli.calibration import outputs

    dense = [[np.array([[2.0], [-1.0]]), np.array([[0.02], [-0.01]])]]
    residual_zeroed = [[np.array([[2.0], [-1.0]]), np.zeros((2, 1))]]
    prediction_off = [[np.array([[1.5], [-1.0]]), np.array([[0.02], [-0.01]])]]
    kinds = ["values", "values"]
    assert outputs.error(residual_zeroed, dense, kinds) == pytest.approx(0.0005 / 5.0005)
    assert outputs.error(prediction_off, dense, kinds) == pytest.approx(0.25 / 5.0005)
    assert outputs.error(residual_zeroed, dense, kinds) < outputs.error(prediction_off, dense, kinds)


@pytest.mark.slow
def test_allocations_are_compared_on_examples_the_calibration_did_not_read():
    """With held-out examples, every allocation's outputs are compared on them: the magnitude masks'
    error (data-free masks, so reproducible by hand) is their error on the held-out examples, not on the
    calibration ones; the calibration itself still reads only its own examples."""
    from prunecli.calibration import outputs

    held = _held_out()
    res, _ = _run("wanda", scope="auto", held_out=[held[:40], held[40:]])
    measured = res.section["allocation_measured"]
    assert measured["held_out"] is True and measured["examples"] == 64
    assert res.section["samples"] == 48
    model = _conv_model()
    targets = every_target(model)
    dense, calibration_dense = outputs.of(model, [held]), outputs.of(model, [_inputs()])
    kinds = outputs.kinds(model, dense)
    for t in targets:
        t.variable.assign(np.where(np.asarray(_magnitude_masks()[t.name]), np.asarray(t.variable), 0.0))
    on_held = outputs.error(outputs.of(model, [held]), dense, kinds)
    on_calibration = outputs.error(outputs.of(model, [_inputs()]), calibration_dense, kinds)
    assert measured["output_error"]["magnitude"] == pytest.approx(on_held, abs=1e-6)
    assert abs(on_held - on_calibration) > 1e-4, "the two example sets must tell the comparisons apart"


def test_too_few_held_out_examples_compare_on_the_calibration_ones():
    """Fewer held-out examples than MEASURE_EXAMPLES would make a noisier comparison than the
    calibration's own: those are used, and the report says so."""
    from prunecli.calibration import oneshot

    res, _ = _run("wanda", scope="auto", held_out=[_held_out(oneshot.MEASURE_EXAMPLES - 1)])
    measured = res.section["allocation_measured"]
    assert measured["held_out"] is False and measured["examples"] == 48


def test_a_small_calibration_still_holds_out_enough_examples_to_compare_on():
    """--calibration-samples below MEASURE_EXAMPLES: the run holds out MEASURE_EXAMPLES, not as few as it
    calibrates on (which would always fall back to the calibration examples)."""
    from prunecli.calibration import held_out_count, oneshot

    def cfg(**values):
        return build_config({"model_path": "m.keras", "data": "d.npz", "method": "wanda", **values}, environ={})

    assert held_out_count(cfg(calibration_samples=8)) == oneshot.MEASURE_EXAMPLES
    assert held_out_count(cfg(calibration_samples=256)) == 256
    assert held_out_count(cfg(calibration_samples=256, scope="layer")) == 0


def test_split_examples_cuts_across_batches_and_input_structures():
    from prunecli.calibration import split_examples

    a, b = np.arange(5), np.arange(5, 12)
    first, rest = split_examples([a, b], 8)
    assert [x.tolist() for x in first] == [a.tolist(), [5, 6, 7]] and [x.tolist() for x in rest] == [list(range(8, 12))]
    first, rest = split_examples([{"ids": a, "mask": a * 2}], 2)
    assert first[0]["mask"].tolist() == [0, 2] and rest[0]["ids"].tolist() == [2, 3, 4]
    first, rest = split_examples([a], 9)
    assert [x.tolist() for x in first] == [a.tolist()] and rest == []
    first, rest = split_examples([a], 0)
    assert first == [] and [x.tolist() for x in rest] == [a.tolist()]


@pytest.mark.slow
@pytest.mark.parametrize("setting", [["-s", "0.7"], ["-g", "n:m=2:4"]])
def test_the_cli_reports_what_it_measured(tmp_path, setting):
    """A default `--method wanda` run: the summary names the allocation (at N:M the exponent), the JSON
    report gives every candidate's output error (softmax outputs: compared as probabilities), the
    tempered score's among them, and the choice is the least."""
    import json

    from click.testing import CliRunner

    from prunecli.calibration.oneshot import EXPONENT_TRIALS
    from prunecli.cli import main

    report = tmp_path / "r.json"
    args = ["prune", "examples/digits_cnn.keras", "-m", "wanda", "-d", "examples/digits.npz", *setting]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "m.keras"), "-r", str(report)])
    assert result.exit_code == 0, result.output
    section = json.loads(report.read_text())["calibration"]
    measured = section["allocation_measured"]
    assert measured["compared_as"] == ["probabilities"]
    assert section["samples"] == 128 and measured["held_out"] is True and measured["examples"] == 128
    errors = measured["output_error"]
    assert set(errors) >= (set(EXPONENT_TRIALS) if "-g" in setting else {"uniform-tempered", "lamp-tempered"})
    assert measured["chosen"] == min(errors, key=errors.get)
    assert f"measured: {measured['chosen']}" in result.output


@pytest.mark.slow
def test_trials_past_the_multiply_add_budget_run_on_fewer_examples(monkeypatch):
    """Each trial runs the model over the calibration examples: where the trials would take more than
    MEASURE_MACS in all (the zoo's rbm3 3-D U-Net: 3.3e12, past 600 s on 2 cores) they run on as many as
    fit (compared on as many as leave one to calibrate on, then calibrated on the rest: held-out ones
    compared where there are, else the calibration examples after those), the account says how many,
    and the chosen allocation (at N:M, the chosen exponent of Wanda's score) is run on every
    calibration example; where not one example of each fits,
    the run takes LAMP without trying, says why, and its masks are an explicit LAMP run's."""
    from prunecli.calibration import oneshot
    from prunecli.structure import flops

    wandas = len(oneshot.MEASURED_ALLOCATIONS) + len(TEMPERED_TRIALS)
    trials = wandas + len(oneshot.MAGNITUDE_TRIALS)
    macs = flops.count(_conv_model())["total"]
    monkeypatch.setattr(oneshot, "MEASURE_MACS", macs * (wandas * 2 + (trials + 1) * 4))  # 4 compared on, then 2
    for held_out, where in ((None, "calibration examples no trial read"), ([_held_out()], "held-out examples")):
        res, _ = _run("wanda", scope="auto", held_out=held_out)
        measured = res.section["allocation_measured"]
        assert measured["trial_examples"] == 2 and measured["examples"] == 4, measured
        assert f"calibrated on the first 2, and every trial was compared on 4 {where}" in measured["trials_cut"]
        assert measured["chosen"] == min(measured["output_error"], key=measured["output_error"].get)
        assert res.section["samples"] == 48 and res.masks
    # at N:M every exponent trial is a Wanda walk, |w|'s included; the two with a reference run here
    monkeypatch.setattr(oneshot, "EXPONENT_TRIALS", {"wanda": 1.0, "magnitude": 0.0})
    monkeypatch.setattr(oneshot, "MEASURE_MACS", macs * (2 * 2 + 3 * 4))
    res, _ = _run("wanda", scope="auto", sparsity=None, granularity="n:m=2:4")
    measured = res.section["allocation_measured"]
    assert measured["trial_examples"] == 2 and measured["examples"] == 4, measured
    assert measured["chosen"] == min(measured["output_error"], key=measured["output_error"].get)
    own = _run("wanda", sparsity=None, granularity="n:m=2:4")[0].masks  # Wanda's own exponent, all 48 examples
    expected = own if measured["chosen"] == "wanda" else _magnitude_masks(sparsity=None, granularity="n:m=2:4")
    for name, mask in res.masks.items():  # the chosen exponent rerun on every example, not the trial on 2
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(expected[name]), err_msg=name)
    assert res.section["samples"] == 48
    monkeypatch.setattr(oneshot, "MEASURE_MACS", macs * (wandas + trials + 1) - 1)  # not one example of each
    res, weights = _run("wanda", scope="auto")
    measured = res.section["allocation_measured"]
    assert measured["chosen"] == "lamp" and f"its {trials} trials" in measured["why"], measured
    assert "output_error" not in measured
    lamp, _ = _run("wanda", **EXPLICIT["lamp"])
    for name, mask in lamp.masks.items():
        np.testing.assert_array_equal(np.asarray(res.masks[name]), np.asarray(mask), err_msg=name)
