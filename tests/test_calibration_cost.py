"""What bounds the cost of calibrated one-shot pruning on models with many frames or large maps
(bench/ZOO.md, 2026-12-06: vvadlrs3's TimeDistributed MobileNet and DeepVOG's V-Net):

- a TimeDistributed model's nested graph is walked once per pass with its frames folded into the
  batch, so its layers run a fixed number of times whatever the number of calibrated layers inside,
  and the masks are the ones the prefix passes (one forward per layer) give;
- the graph walk's probe runs once per plan, not once per allocation --normalize measured tries;
- a pass's examples are sized from every call a pass makes of a layer (each frame's);
- --normalize measured reads its comparisons on calibration examples from the walks it already made
  and meters the layers of the one trial it keeps.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_cached_equals_prefix, calibrated_at_budget

FRAMES = 5


def _time_distributed(counter: dict | None = None, frames: int = FRAMES):
    """A small vvadlrs3: a functional CNN run on each frame by TimeDistributed, then LSTM and Dense. A
    layer at the end of the nested model counts its calls in `counter`."""
    import keras

    class Count(keras.layers.Layer):
        def call(self, x):
            if counter is not None:
                counter["calls"] = counter.get("calls", 0) + 1
            return x

    keras.utils.set_random_seed(11)
    frame = keras.Input((8, 10, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="f1")(frame)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="f2")(h)
    h = keras.layers.DepthwiseConv2D(3, padding="same", name="dw")(h)
    h = keras.layers.Conv2D(8, 1, activation="relu", name="f3")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    inner = keras.Model(frame, Count(name="count")(h), name="per_frame")
    clip = keras.Input((frames, 8, 10, 3))
    s = keras.layers.TimeDistributed(inner, name="td")(clip)
    s = keras.layers.LSTM(6, name="lstm")(s)
    model = keras.Model(clip, keras.layers.Dense(2, activation="softmax", name="head")(s))
    rng = np.random.default_rng(3)
    bn = model.get_layer("td").layer.get_layer("bn")
    bn.moving_mean.assign(rng.normal(size=6).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=6).astype("float32"))
    x = rng.normal(size=(12, frames, 8, 10, 3)).astype("float32")
    if counter is not None:
        counter.clear()
    return model, [x[:7], x[7:]]


@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_time_distributed_model_is_folded_and_equals_prefix_passes(method, monkeypatch):
    """The folded walk gives the masks, weights and per-layer errors of one forward pass per layer."""
    cached = calibrated_at_budget(_time_distributed, 2**30, monkeypatch, method=method)
    prefix = calibrated_at_budget(_time_distributed, 0, monkeypatch, method=method)
    assert_cached_equals_prefix(cached, prefix, weights_rtol=1e-4, errors_rel=1e-3)  # rows and errors too
    res_c = cached[0]
    assert res_c.section["passes_note"] is None  # walked node by node, not read through the wrapper
    assert {f"td/per_frame/{n}/kernel" for n in ("f1", "f2", "dw", "f3")} <= set(res_c.masks)
    for name, entry in res_c.section["layers"].items():  # a Wanda layer's error meter counts the folded calls
        assert entry["error_before"] is not None and entry["error_after"] is not None, name


@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
def test_folded_model_runs_a_fixed_number_of_times(monkeypatch):
    """The nested model's last layer runs per frame in the call-order pass and the probe's model call,
    once per pass in the probe walk and the sweep: not once per frame per calibrated layer."""
    counter: dict = {}
    res, _ = calibrated_at_budget(lambda: _time_distributed(counter), 2**30, monkeypatch, method="wanda")
    assert res.section["passes"] == "cached"
    passes = 2
    assert counter["calls"] <= 2 * FRAMES + 1 + passes, counter
    counter.clear()
    res, _ = calibrated_at_budget(lambda: _time_distributed(counter), 0, monkeypatch, method="wanda")
    assert counter["calls"] > 2 * FRAMES + 1 + passes  # the prefix passes: every frame, every layer


@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
def test_walk_source_is_memoised_per_plan(monkeypatch):
    """--normalize measured asks for a source once per allocation it tries; the graph is probed once."""
    from prunecli.calibration import frontier

    probes = []
    real = frontier._probe

    def counting(*args, **kwargs):
        probes.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(frontier, "_probe", counting)
    res, _ = calibrated_at_budget(
        _time_distributed, 2**30, monkeypatch, method="wanda", scope="global", normalize="measured"
    )
    assert res.section["allocation_measured"]["output_error"].keys() >= {"uniform", "lamp", "owl"}
    assert len(probes) == 1


@pytest.mark.slow
def test_examples_per_pass_count_every_frame(monkeypatch):
    """A calibrated layer called once per frame sees FRAMES inputs per example in a pass."""
    from prunecli.calibration import capture

    per_frame = 4 * 8 * 10 * 6  # f2's input, the largest of a frame
    monkeypatch.setattr(capture, "INPUT_BYTES", 3 * FRAMES * per_frame)
    res, _ = calibrated_at_budget(_time_distributed, 2**30, monkeypatch, method="wanda")
    assert res.section["examples_per_pass"] == 3


@pytest.mark.slow  # 4-8 s: the full suite (fast subset at its 120 s limit)
def test_measured_trials_reuse_their_walks_and_meter_only_the_kept_run(monkeypatch):
    """--normalize measured on the calibration's own examples: the dense outputs and each Wanda trial's
    come from the walk that ranked or calibrated the layers (the model runs only for the two magnitude
    masks), and the Wanda layers' error meters run once, for the trial kept, not in every trial. The
    kept run's masks, weights and per-layer errors are those of the same allocation run on its own, and
    running the model for each comparison instead chooses the same allocation and masks."""
    from prunecli.calibration import capture, oneshot, outputs

    calls = {"of": 0, "meters": 0}
    real_of, real_init = outputs.of, capture.ErrorMeter.__init__

    def of(*args, **kwargs):
        calls["of"] += 1
        return real_of(*args, **kwargs)

    def init(self, *args, **kwargs):
        calls["meters"] += 1
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(outputs, "of", of)
    monkeypatch.setattr(capture.ErrorMeter, "__init__", init)
    measured = dict(method="wanda", scope="global", normalize="measured")
    res, weights = calibrated_at_budget(_time_distributed, 2**30, monkeypatch, **measured)
    account = res.section["allocation_measured"]
    assert account["chosen"] == "uniform" and not account["held_out"]  # a Wanda trial kept: its layers metered
    layers = res.section["layers"]
    assert calls == {"of": 2, "meters": len(layers)}, calls  # before: 6 model runs, 3 x len(layers) meters
    assert all(e["error_before"] is not None and e["error_after"] is not None for e in layers.values())

    alone, weights_alone = calibrated_at_budget(_time_distributed, 2**30, monkeypatch, method="wanda", scope="layer")
    assert alone.section["layers"] == layers  # every layer at the sparsity: the uniform trial, metered in its run
    for name, mask in alone.masks.items():
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(res.masks[name]), err_msg=name)
    for a, b in zip(weights, weights_alone, strict=True):
        np.testing.assert_array_equal(a, b)

    monkeypatch.setattr(oneshot, "_walked", lambda *args: None)  # the model run for every comparison
    calls.update(of=0, meters=0)
    ran, weights_ran = calibrated_at_budget(_time_distributed, 2**30, monkeypatch, **measured)
    trials = oneshot.MEASURED_ALLOCATIONS + tuple(oneshot.TEMPERED_TRIALS) + oneshot.MAGNITUDE_TRIALS
    assert calls["of"] == 1 + len(trials) == 8  # the dense outputs, then each trial's
    assert ran.section["allocation_measured"]["chosen"] == "uniform" and ran.section["layers"] == layers
    for name, error in ran.section["allocation_measured"]["output_error"].items():
        assert account["output_error"][name] == pytest.approx(error, rel=1e-4, abs=1e-6), name
    for a, b in zip(weights, weights_ran, strict=True):
        np.testing.assert_array_equal(a, b)
