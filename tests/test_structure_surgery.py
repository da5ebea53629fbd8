"""Structural pruning: the shrunk model is smaller, computes what the masked model computed, and reloads.

Models here are masked by hand (chosen units' kernels zeroed, biases and BatchNorm statistics made
non-trivial) so the tests control exactly which units are dead and which constants they emit.
"""

from __future__ import annotations

import numpy as np
import pytest

from prunecli.config import build_config
from prunecli.outputs.report import Timings
from prunecli.removal import channels as shrink_step
from prunecli.run.state import RunState
from prunecli.structure import channels as graph
from prunecli.structure import equivalence, flops, surgery, targets
from prunecli.structure.quantized_conv import one_collection


def _session(model, path="model.keras", data=None):
    config = build_config({"model_path": str(path), "granularity": "neuron", "sparsity": 0.5, "shrink": True})
    return RunState(config=config, model=model, source=None, data=data, targets=tuple(targets.select(model)))


def _shrink(s: RunState, measure_latency: bool = True) -> RunState:
    """The shrink step on a run state, as the pipeline calls it."""
    result = shrink_step.shrink(
        s.model, s.targets, s.masks, s.data, s.config.seed, lambda _m: None, Timings(), measure_latency
    )
    return s.after(result)


def _kill(layer, units) -> None:
    """Zero the kernel of the given output units, as a neuron mask does."""
    cls = type(layer).__name__
    name = "pointwise_kernel" if cls.startswith("SeparableConv") else "kernel"
    for v in layer.weights:
        if v.name == name:
            arr = np.asarray(v).copy()
            if cls.endswith("Transpose"):  # kernel (..., out, in)
                arr[..., list(units), :] = 0.0
            else:
                arr[..., list(units)] = 0.0
            v.assign(arr)


def _set(layer, **values) -> None:
    for v in layer.weights:
        if v.name in values:
            v.assign(np.asarray(values[v.name], dtype="float32").reshape(v.shape))


def _randomise_batchnorms(model, rng) -> None:
    """Trained-looking statistics, so a dead unit's BatchNorm output is a non-zero constant."""
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            n = layer.gamma.shape[0]
            _set(
                layer,
                gamma=rng.uniform(0.5, 1.5, n),
                beta=rng.normal(0, 0.5, n),
                moving_mean=rng.normal(0, 0.5, n),
                moving_variance=rng.uniform(0.5, 2.0, n),
            )


def _outputs(model, x):
    return np.asarray(model(x, training=False))


def _check_same_function(masked, s, x, tmp_path):
    """The shrunk model equals the masked one within 1e-4 relative, also after a save and reload."""
    import keras

    want = _outputs(masked, x)
    got = _outputs(s.model, x)
    scale = np.abs(want).max()
    assert np.abs(want - got).max() <= 1e-4 * scale
    assert s.sections["shrink"]["verification"]["max_rel_diff"] <= 1e-4
    path = tmp_path / "shrunk.keras"
    s.model.save(path)
    again = keras.saving.load_model(path)
    assert np.abs(_outputs(again, x) - want).max() <= 1e-4 * scale
    return again


def _predicted(model, kind: str = "params") -> int:
    """The shrunk model's parameters (or FLOPs) as the cost model of --target (structure/costs.py)
    predicts them from `model`'s masks."""
    from prunecli.structure import costs

    g = graph.graph_of(model)
    weights = {la.name: surgery.layer_weights(la) for la in g.layers() if g.calls_of(la)[0].kind != "input"}
    cuts = surgery.decide_cuts(g, weights)
    c = costs.ChannelCosts(model, kind)
    return c.total(np.array([int(r) not in cuts.removed for r in c.roots]))


def _width(model, name):
    layer = model.get_layer(name)
    return int((layer.kernel if hasattr(layer, "kernel") else layer.pointwise_kernel).shape[-1])


def test_mlp_removes_dead_neurons_and_folds_their_constant_into_the_next_bias(tmp_path):
    import keras
    from conftest import build_mlp

    model = build_mlp()
    rng = np.random.default_rng(0)
    for layer in model.layers[1:]:
        _set(layer, bias=rng.normal(0, 0.5, layer.bias.shape[0]))  # relu(b) > 0 for some dead units
    _kill(model.get_layer("hidden1"), range(0, 32, 2))
    _kill(model.get_layer("hidden2"), [1, 5, 9, 13])
    _kill(model.get_layer("out"), [0])
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    s = _session(model)
    s = _shrink(s)

    assert s.structure_changed
    assert (_width(s.model, "hidden1"), _width(s.model, "hidden2"), _width(s.model, "out")) == (16, 12, 3)
    assert s.model.get_layer("hidden2").kernel.shape == (16, 12)
    info = s.sections["shrink"]
    assert info["params_after"] == s.model.count_params() < info["params_before"] == masked.count_params()
    assert info["layers"]["hidden1"] == {"before": 32, "after": 16}
    assert {"batch_1", "batch_64"} <= set(info["latency_ms"]["shrunk"])
    assert any("out" in n and "output" in n or "softmax" in n for n in s.notes)  # output units never go
    assert [t.shape for t in s.targets if t.layer_name == "hidden2"] == [(16, 12)]
    x = np.random.default_rng(1).standard_normal((32, 20)).astype("float32")
    _check_same_function(masked, s, x, tmp_path)


def _cnn():
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((10, 10, 3)),
            layers.Conv2D(8, 3, name="conv1"),  # valid padding: any constant folds
            layers.BatchNormalization(name="bn1"),
            layers.ReLU(name="relu1"),
            layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(2, name="pool"),
            layers.Conv2D(6, 1, padding="same", name="conv3"),  # 1x1: folds whatever the padding
            layers.BatchNormalization(name="bn3"),
            layers.Activation("relu", name="act3"),
            layers.Flatten(name="flatten"),
            layers.Dense(16, activation="relu", name="dense1"),
            layers.Dense(10, activation="softmax", name="predictions"),
        ]
    )


def test_cnn_with_batchnorm_and_flatten(tmp_path):
    import keras

    model = _cnn()
    rng = np.random.default_rng(0)
    _randomise_batchnorms(model, rng)
    for name in ("conv2", "dense1"):
        _set(model.get_layer(name), bias=rng.normal(0, 0.5, model.get_layer(name).bias.shape[0]))
    # conv1's dead units 0 and 1 emit relu(bn(bias)) > 0 into the 'same'-padded conv2: they must stay.
    # Units 2 and 3 emit exactly 0 (a negative BN output), so they go.
    bn1 = model.get_layer("bn1")
    _set(
        bn1,
        beta=[2.0, 2.0, -2.0, -2.0, 0, 0, 0, 0],
        moving_mean=np.zeros(8),
        gamma=np.ones(8),
        moving_variance=np.ones(8),
    )
    _set(model.get_layer("conv1"), bias=np.zeros(8))
    _kill(model.get_layer("conv1"), [0, 1, 2, 3])
    _kill(model.get_layer("conv2"), [0, 4, 7, 11])  # relu(bias) constants pass pool, then a 1x1 conv
    _kill(model.get_layer("conv3"), [1, 2])  # BN constant -> Flatten -> 25 Dense rows each
    _kill(model.get_layer("dense1"), range(8))
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    s = _session(model)
    s = _shrink(s, measure_latency=False)

    new = s.model
    assert [_width(new, n) for n in ("conv1", "conv2", "conv3", "dense1", "predictions")] == [6, 8, 4, 8, 10]
    assert new.get_layer("bn3").gamma.shape == (4,)
    assert new.get_layer("dense1").kernel.shape == (4 * 4 * 4, 8)  # Flatten rows follow the kept channels
    assert any("conv1" in n and "same-padded conv2" in n for n in s.notes)
    x = np.random.default_rng(1).standard_normal((16, 10, 10, 3)).astype("float32")
    _check_same_function(masked, s, x, tmp_path)


def test_verification_catches_a_wrong_rebuild(monkeypatch):
    """Folding a constant through 'same' padding ignores the borders: the check must refuse the result."""
    model = _cnn()
    _randomise_batchnorms(model, np.random.default_rng(0))
    _set(model.get_layer("bn1"), beta=np.full(8, 2.0), moving_mean=np.zeros(8))
    _kill(model.get_layer("conv1"), [0, 1])
    monkeypatch.setattr(surgery, "foldable", lambda layer, constant: True)
    s = _session(model)
    with pytest.raises(equivalence.ShrinkVerificationError, match="differs from the masked model"):
        s = _shrink(s)
    assert not s.structure_changed and s.model is model


@pytest.mark.slow  # 0.3-0.6 s: a probe of nine lengths
def test_a_model_the_stand_ins_cannot_run_is_refused_not_an_internal_error():
    """A model whose open length no stand-in size fits (its sequence twice over, beside a RepeatVector(20):
    10 steps, a size neither tried nor fixed by its graph) was an internal error (exit 1) inside
    Concatenate in shrink's check (big-phoney's seq2seq, before its 20 was tried). Now it is exit 3, asking
    for --data."""
    import keras

    from prunecli.errors import ExitCode

    seq, state = keras.Input((None, 3)), keras.Input((5,))
    repeated = keras.layers.RepeatVector(20)(keras.layers.Dense(4)(state))
    steps = keras.layers.Dense(4)(seq)
    twice = keras.layers.Concatenate(axis=1)([steps, steps])
    out = keras.layers.Dense(2)(keras.layers.Concatenate()([twice, repeated]))
    model = keras.Model([seq, state], out)
    inputs = equivalence.example_inputs(model, 4)
    with pytest.raises(equivalence.UncheckableInputs, match="give --data") as err:
        equivalence.check_equivalent(model, model, inputs, "shrink: the rebuilt model")
    assert err.value.exit_code == ExitCode.BAD_INPUT


def test_the_stand_in_search_stops_on_time_and_says_so(monkeypatch):
    """The search for a stand-in length was capped in passes only (each size twice, then 64 lengths one
    per input): a model whose pass takes seconds kept a user waiting for minutes. Now it stops after
    SEARCH_BUDGET_S, and the check that then cannot run says that it stopped, and after how long."""
    import time

    import keras

    from prunecli.structure import probes

    seq, other = keras.Input((None, 3)), keras.Input((None, 2))
    model = keras.Model([seq, other], keras.layers.Concatenate(axis=1)([seq, keras.layers.Dense(3)(other)]))
    passes = []

    def slow_failing_pass(model, inputs):
        passes.append(1)
        time.sleep(0.02)
        raise ValueError("does not fit")

    monkeypatch.setattr(probes, "_trial_pass", slow_failing_pass)
    monkeypatch.setattr(probes, "SEARCH_BUDGET_S", 0.1)
    inputs = equivalence.example_inputs(model, 2)
    # 0.1 s of 0.02 s passes, of the 20-odd the sizes would take; one at least (a loaded machine's sleep overruns)
    assert 1 <= len(passes) <= 8
    assert [x.shape for x in keras.tree.flatten(inputs)] == [(2, probes.OPEN_DIM, 3), (2, probes.OPEN_DIM, 2)]
    monkeypatch.setattr(probes, "_trial_pass", lambda model, inputs: model(inputs, training=False))
    bad = [np.zeros((2, 4, 3), "float32"), np.zeros((2, 4, 5), "float32")]  # what a failed search leaves
    with pytest.raises(equivalence.UncheckableInputs, match=r"after 0\.\d s \(\d trial passes; budget 0\.1 s\)"):
        equivalence.check_equivalent(model, model, bad, "shrink: the rebuilt model")


@pytest.mark.slow  # one --shrink run of a two-layer model
def test_a_run_whose_stand_in_search_ran_out_of_time_says_so_in_its_report(monkeypatch, tmp_path):
    """The budget's note reached only a shrink/verify error: a run that succeeded on stand-ins whose
    length the cut search never found to run said nothing of it (adv38). Its report's notes now do."""
    import time

    import keras

    import prunecli
    from prunecli.structure import probes

    inp = keras.Input((None, 3))
    keras.Model(inp, keras.layers.Dense(2)(keras.layers.Dense(8)(inp))).save(tmp_path / "m.keras")

    def slow_failing_pass(model, inputs):
        time.sleep(0.02)
        raise ValueError("does not fit")

    monkeypatch.setattr(probes, "_trial_pass", slow_failing_pass)
    monkeypatch.setattr(probes, "SEARCH_BUDGET_S", 0.05)
    settings = {"model_path": str(tmp_path / "m.keras"), "output": str(tmp_path / "o.keras"), "shrink": True}
    config = prunecli.build_config({**settings, "granularity": "neuron", "sparsity": 0.5, "sizes": False}, environ={})
    notes = prunecli.prune(config).report.notes
    cut = [n for n in notes if "stopped trying input lengths" in n]
    assert len(cut) == 1 and f"length {probes.OPEN_DIM}, the first tried" in cut[0], notes
    assert probes.cut_searches() == cut  # the run's record, started in this context by steps.load


@pytest.mark.slow  # the common sizes fail first: 18 trial passes of each model, as before
def test_stand_ins_take_the_lengths_the_graph_fixes_one_per_input():
    """Stand-ins gave every open dimension one length (32, 16 ... 1, 256 ...): a seq2seq whose encoder
    sequence is joined to a RepeatVector(20) (big-phoney's attention, bench/ZOO.md) ran at none, nor a
    model whose query sequence, joined to a RepeatVector(12), attends (Dot) to that one: the two open
    lengths must differ. Now the sizes the graph fixes are tried, common and then one per input."""
    import keras
    from keras import layers

    from prunecli.structure import probes

    seq, query, state = keras.Input((None, 3)), keras.Input((None, 2)), keras.Input((5,))
    code = layers.Dense(4)(state)
    joined = layers.Concatenate()([layers.Dense(4)(seq), layers.RepeatVector(20)(code)])  # seq: 20 steps
    asked = layers.Concatenate()([layers.Dense(4)(query), layers.RepeatVector(12)(code)])  # query: 12 steps
    scores = layers.Dot(axes=(2, 2))([asked, joined])  # (12, 20) attention scores
    attended = layers.Dot(axes=(2, 1))([scores, joined])  # (12, 8)
    pooled = layers.Concatenate()([layers.GlobalAveragePooling1D()(joined), layers.GlobalAveragePooling1D()(attended)])
    one = keras.Model([seq, state], layers.Dense(2)(layers.GlobalAveragePooling1D()(joined)))
    two = keras.Model([seq, query, state], layers.Dense(2)(pooled))
    assert [x.shape for x in probes.seeded_inputs(one, 3)] == [(3, 20, 3), (3, 5)]
    assert [x.shape for x in probes.seeded_inputs(two, 3)] == [(3, 20, 3), (3, 12, 2), (3, 5)]
    equivalence.check_equivalent(two, two, equivalence.example_inputs(two, 4), "shrink: the rebuilt model")
    plain = keras.Model(seq, layers.Dense(2)(seq))  # a common length that runs is kept
    assert probes.seeded_inputs(plain, 2)[0].shape == (2, probes.OPEN_DIM, 3)


def test_separable_transpose_depthwise_and_squeeze_excite(tmp_path):
    import keras
    from keras import layers

    keras.utils.set_random_seed(2)
    inp = keras.Input((9, 9, 3))
    x = layers.SeparableConv2D(8, 3, name="sep")(inp)
    x = layers.BatchNormalization(name="sep_bn")(x)  # initial statistics: a dead unit stays exactly 0
    x = layers.ReLU(name="sep_relu")(x)
    x = layers.Conv2DTranspose(8, 3, padding="same", name="tconv")(x)
    x = layers.PReLU(name="prelu")(x)
    x = layers.ZeroPadding2D(1, name="pad")(x)
    x = layers.DepthwiseConv2D(3, name="dw")(x)
    x = layers.Conv2D(8, 1, activation="relu", name="pre_se")(x)
    se = layers.GlobalAveragePooling2D(name="squeeze")(x)
    se = layers.Dense(4, activation="relu", name="se_down")(se)
    se = layers.Dense(8, activation="sigmoid", name="se_up")(se)
    x = layers.Multiply(name="excite")([x, layers.Reshape((1, 1, 8), name="se_shape")(se)])
    x = layers.Conv2D(6, 1, activation="relu", name="post")(x)
    x = layers.GlobalMaxPooling2D(name="gmp")(x)
    model = keras.Model(inp, layers.Dense(3, name="out")(x))
    rng = np.random.default_rng(0)
    for name in ("dw", "pre_se", "se_down", "se_up", "post"):
        _set(model.get_layer(name), bias=rng.normal(0, 0.5, model.get_layer(name).bias.shape[0]))
    _set(model.get_layer("prelu"), alpha=rng.uniform(0.1, 0.3, (7, 7, 8)))
    for name, units in (("sep", [0, 1]), ("tconv", [2]), ("pre_se", [0, 3]), ("se_up", [0]), ("post", [1])):
        _kill(model.get_layer(name), units)
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    s = _session(model)
    s = _shrink(s, measure_latency=False)

    new = s.model
    widths = [_width(new, n) for n in ("sep", "pre_se", "se_down", "se_up", "post", "out")]
    assert widths == [6, 7, 4, 7, 5, 3]  # pre_se unit 3 stays: se_up's unit 3 is alive and multiplies it
    assert new.get_layer("tconv").kernel.shape == (3, 3, 7, 6)  # transposed kernel: (h, w, out, in)
    assert new.get_layer("dw").kernel.shape == (3, 3, 7, 1) and new.get_layer("prelu").alpha.shape == (7, 7, 7)
    assert new.get_layer("se_shape").target_shape == (1, 1, 7)
    kept = {tuple(gr["layers"]): gr["channels"] for gr in s.sections["shrink"]["groups_kept_whole"]}
    assert kept[("pre_se", "se_up")] == 1
    x = np.random.default_rng(4).standard_normal((8, 9, 9, 3)).astype("float32")
    _check_same_function(masked, s, x, tmp_path)


def test_conv1d_constant_folds_through_valid_padding(tmp_path):
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    model = keras.Sequential(
        [
            keras.Input((12, 2)),
            layers.Conv1D(6, 3, activation="relu", name="c1"),
            layers.Conv1D(5, 3, name="c2"),
            layers.GlobalAveragePooling1D(),
            layers.Dense(3, name="out"),
        ]
    )
    _set(model.get_layer("c1"), bias=np.abs(np.random.default_rng(0).normal(0.5, 0.2, 6)))  # relu(b) > 0
    _kill(model.get_layer("c1"), [1, 4])
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    s = _session(model)
    s = _shrink(s, measure_latency=False)
    assert s.model.get_layer("c2").kernel.shape == (3, 4, 5)
    x = np.random.default_rng(5).standard_normal((8, 12, 2)).astype("float32")
    _check_same_function(masked, s, x, tmp_path)


@pytest.mark.slow  # 0.5-1 s each: two models shrunk, compared, saved and reloaded
@pytest.mark.parametrize("attention", ["AdditiveAttention", "Attention"])
def test_attention_query_and_key_channels_go_together_and_value_channels_pass(attention, tmp_path):
    """Channels feeding Keras' (Additive)Attention were kept whole ("not a layer surgery can slice"). Query
    channel j and key channel j meet only in the scores' term of j (q_j * k_j; scale_j * tanh(q_j + k_j)),
    0 when both are 0: they go together, with AdditiveAttention's scale entry; the output's channels are
    the value's, a weighted mean of its rows, so a dead value unit's constant is folded past it."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    q_in, v_in = keras.Input((5, 4)), keras.Input((7, 4))
    q = layers.Dense(8, activation="relu", name="q")(q_in)
    k = layers.Dense(8, activation="relu", name="k")(v_in)
    v = layers.Dense(6, activation="relu", name="v")(v_in)
    options = {"use_scale": True} if attention == "AdditiveAttention" else {"use_scale": True, "score_mode": "concat"}
    attended = getattr(layers, attention)(name="att", **options)([q, v, k])
    model = keras.Model([q_in, v_in], layers.Dense(3, name="out")(layers.GlobalAveragePooling1D()(attended)))
    if attention == "AdditiveAttention":
        _set(model.get_layer("att"), scale=np.linspace(0.5, 1.5, 8))
    g = graph.graph_of(model)
    assert g.group_members(int(g.channels.find(int(g.ids[g.calls_of(model.get_layer("q"))[0].outputs[0]][0])))) == [
        "k",
        "q",
    ]
    for name, units in (("q", [1, 2, 4, 6]), ("k", [1, 4, 6]), ("v", [0, 3])):
        _kill(model.get_layer(name), units)
    _set(model.get_layer("q"), bias=np.where(np.isin(np.arange(8), [1, 4, 6]), 0.0, 0.2))  # q 2: k 2 is live
    _set(model.get_layer("k"), bias=np.where(np.isin(np.arange(8), [1, 4, 6]), 0.0, 0.2))
    _set(model.get_layer("v"), bias=np.full(6, 0.7))  # a dead value unit outputs 0.7: folded into out
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    s = _shrink(_session(model), measure_latency=False)

    assert (_width(s.model, "q"), _width(s.model, "k"), _width(s.model, "v")) == (5, 5, 4)
    scale = [tuple(w.shape) for w in s.model.get_layer("att").weights if "scale" in w.path]
    assert scale == ([(5,)] if attention == "AdditiveAttention" else [()])
    assert _predicted(masked) == s.model.count_params()  # AdditiveAttention's scale counted per channel
    rng = np.random.default_rng(1)
    x = [rng.standard_normal((4, 5, 4)).astype("float32"), rng.standard_normal((4, 7, 4)).astype("float32")]
    _check_same_function(masked, s, x, tmp_path)


def test_an_attention_output_is_channels_last_whatever_reads_it():
    """An attention's output holds the value's channels on its last axis: a channels_first Conv1D reading it
    (steps as wide as the value) made it a channels-first tensor, its steps read as the value's channels."""
    import keras
    from keras import layers

    q_in, v_in = keras.Input((6, 4)), keras.Input((6, 4))
    attended = layers.Attention(name="att")([layers.Dense(6, name="q")(q_in), layers.Dense(6, name="v")(v_in)])
    conv = layers.Conv1D(3, 1, data_format="channels_first", name="conv")(attended)
    g = graph.graph_of(keras.Model([q_in, v_in], layers.Flatten()(conv)))
    kinds = {c.name: c.kind for c in g.calls}
    assert (kinds["att"], kinds["conv"]) == ("attention", "other")


def _residual_model():
    import keras
    from keras import layers

    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 3), name="image")
    stem = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inp)
    branch = layers.Conv2D(8, 3, padding="same", use_bias=False, name="branch")(stem)
    branch = layers.BatchNormalization(name="branch_bn")(branch)
    added = layers.Add(name="add")([stem, branch])
    side = layers.Conv2D(6, 1, activation="relu", name="side")(added)
    joined = layers.Concatenate(name="cat")([added, side])
    mixed = layers.Conv2D(10, 1, use_bias=False, name="mix")(joined)  # no bias: constants go into mix_bn
    mixed = layers.BatchNormalization(name="mix_bn")(mixed)
    pooled = layers.GlobalAveragePooling2D(name="gap")(mixed)
    shared = layers.Dense(10, activation="relu", name="shared")  # called twice: one set of units
    twice = layers.Concatenate(name="cat2")([shared(pooled), shared(layers.Dropout(0.2, name="drop")(pooled))])
    out = layers.Dense(4, name="out")(twice)
    return keras.Model(inp, out, name="residual")


def test_graph_groups_residual_concatenate_and_shared_layers():
    model = _residual_model()
    g = graph.build(model)
    ch = g.channels
    add_roots = set(ch.roots(g.ids[g.calls_of(model.get_layer("add"))[0].outputs[0]]).tolist())
    assert g.group_members(min(add_roots)) == ["branch", "stem"]  # residual: one group
    cat = g.ids[g.calls_of(model.get_layer("cat"))[0].outputs[0]]
    side = g.ids[g.calls_of(model.get_layer("side"))[0].outputs[0]]
    assert len(cat) == 14 and list(cat[8:]) == list(side)  # Concatenate keeps each slice's channels
    first, second = (g.ids[c.outputs[0]] for c in g.calls_of(model.get_layer("shared")))
    assert list(ch.roots(first)) == list(ch.roots(second))  # a shared layer's calls share units
    pinned = ch.pinned()
    out_ids = g.ids[g.calls_of(model.get_layer("out"))[0].outputs[0]]
    assert all(pinned.get(r) == "network output" for r in ch.roots(out_ids))


def test_functional_residual_add_concatenate_and_shared_layer(tmp_path):
    import keras

    model = _residual_model()
    rng = np.random.default_rng(0)
    _randomise_batchnorms(model, rng)
    _set(model.get_layer("stem"), bias=-np.abs(rng.normal(0, 0.5, 8)))  # relu(negative) = 0 into 'same' branch
    _set(model.get_layer("side"), bias=rng.normal(0, 0.5, 6))
    _set(model.get_layer("shared"), bias=rng.normal(0, 0.5, 10))
    _kill(model.get_layer("stem"), [0, 1, 2, 5])
    _kill(model.get_layer("branch"), [1, 2, 3, 5])  # dead in both members: 1, 2, 5
    _kill(model.get_layer("side"), [0, 4])
    _kill(model.get_layer("mix"), [3])
    _kill(model.get_layer("shared"), [2, 3, 7])
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    s = _session(model)
    s = _shrink(s, measure_latency=False)

    new = s.model
    assert [_width(new, n) for n in ("stem", "branch", "side", "mix", "shared", "out")] == [5, 5, 4, 9, 7, 4]
    assert new.get_layer("mix").kernel.shape == (1, 1, 9, 9)  # 5 residual + 4 side channels in, 9 out
    assert new.get_layer("out").kernel.shape == (14, 4)  # both calls of the shared layer lost the same units
    assert not new.get_layer("mix").use_bias  # the constants went into mix_bn's moving mean instead
    kept = {tuple(gr["layers"]): gr for gr in s.sections["shrink"]["groups_kept_whole"]}
    assert kept[("branch", "stem")]["channels"] == 2 and "every member" in kept[("branch", "stem")]["reason"]
    x = np.random.default_rng(2).standard_normal((16, 8, 8, 3)).astype("float32")
    _check_same_function(masked, s, x, tmp_path)


def test_a_shared_layer_without_weights_does_not_tie_its_branches(tmp_path):
    """One MaxPooling1D called on two convolutions' outputs (DM3Loc's code, bench/ZOO.md): each branch
    keeps its own channels (they were forced to drop the same positions), and the branches shrink to
    different widths through the one shared layer, computing what the masked model does."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(3)
    inp = keras.Input((24, 3))
    pool = layers.MaxPooling1D(2, name="shared_pool")
    a = pool(layers.Conv1D(8, 3, activation="relu", name="conv_a")(inp))
    b = pool(layers.Conv1D(6, 5, activation="relu", name="conv_b")(inp))
    a, b = layers.GlobalAveragePooling1D()(a), layers.GlobalAveragePooling1D()(b)
    model = keras.Model(inp, layers.Dense(2, name="out")(layers.Concatenate()([a, b])))
    g = graph.build(model)
    conv_a, conv_b = (g.ids[g.calls_of(model.get_layer(n))[0].outputs[0]] for n in ("conv_a", "conv_b"))
    assert not set(g.channels.roots(conv_a).tolist()) & set(g.channels.roots(conv_b).tolist())
    _kill(model.get_layer("conv_a"), [0, 1, 2])
    _kill(model.get_layer("conv_b"), [4, 5])
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    s = _shrink(_session(model), measure_latency=False)
    assert [_width(s.model, n) for n in ("conv_a", "conv_b")] == [5, 4]
    assert s.model.get_layer("out").kernel.shape == (9, 2)
    x = np.random.default_rng(4).standard_normal((8, 24, 3)).astype("float32")
    _check_same_function(masked, s, x, tmp_path)


def _kill_columns(embedding, columns) -> None:
    """Zero the given columns of an Embedding's table, as a neuron mask on its output units does."""
    table = np.asarray(embedding.embeddings).copy()
    table[:, list(columns)] = 0.0
    embedding.embeddings.assign(table)


def test_embedding_columns_go_with_the_rows_that_read_them(tmp_path):
    """A text model's Embedding loses its pruned columns, and the Conv1D, the shared Dense reached through
    Flatten and the residual Add that read them lose the matching kernel rows; a column killed in only one
    member of the Add stays (its other member still writes it)."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(5)
    inp = keras.Input((10,), dtype="int32")
    emb = layers.Embedding(30, 8, name="emb")(inp)
    conv = layers.Conv1D(6, 3, activation="relu", name="conv")(emb)
    mixed = layers.Add()([emb, layers.Dense(8, name="side")(emb)])
    flat = layers.Flatten()(layers.Concatenate()([layers.GlobalMaxPooling1D()(conv), layers.Flatten()(mixed)]))
    model = keras.Model(inp, layers.Dense(3, name="out")(flat))
    _set(model.get_layer("side"), bias=np.random.default_rng(0).normal(0, 0.5, 8))
    _kill_columns(model.get_layer("emb"), [1, 4, 6])
    _kill(model.get_layer("side"), [1, 4, 5])  # dead in both members of the Add: 1 and 4
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    s = _shrink(_session(model), measure_latency=False)
    new = s.model
    assert new.get_layer("emb").output_dim == 6 and new.get_layer("emb").embeddings.shape == (30, 6)
    assert new.get_layer("conv").kernel.shape == (3, 6, 6) and new.get_layer("side").kernel.shape == (6, 6)
    assert new.get_layer("out").kernel.shape == (6 + 10 * 6, 3)
    assert s.sections["shrink"]["layers"]["emb"] == {"before": 8, "after": 6}
    x = np.random.default_rng(6).integers(0, 30, (16, 10)).astype("int32")
    _check_same_function(masked, s, x, tmp_path)


@pytest.mark.slow
def test_a_quantized_or_lora_embedding_is_left_whole():
    """Surgery slices a float table only: int8 codes carry a scale per token row, LoRA its own factors."""
    import keras
    from keras import layers

    inp = keras.Input((5,), dtype="int32")
    model = keras.Model(inp, layers.Dense(2, name="out")(layers.Embedding(20, 4, name="emb")(inp)))
    model.get_layer("emb").enable_lora(2)
    call = graph.build(model).calls_of(model.get_layer("emb"))[0]
    assert call.kind == "other"
    model = keras.Model(inp, layers.Dense(2, name="out")(layers.Embedding(20, 4, name="emb")(inp)))
    with one_collection():  # Keras collects garbage per deleted kernel otherwise
        model.quantize("int8")
    emb = model.get_layer("emb")
    kind, why = graph.classify(emb, [(None, 5)], [(None, 5, 4)])
    assert kind == "other" and "quantized" in why


@pytest.mark.slow
def test_mobilenetv2_shrinks_and_reloads(tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=10)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if type(layer).__name__ == "Conv2D":
            n = layer.kernel.shape[-1]
            _kill(layer, rng.choice(n, n // 2, replace=False))
        if type(layer).__name__ == "BatchNormalization":  # a quarter get trained-looking stats
            if rng.random() < 0.25:
                n = layer.gamma.shape[0]
                _set(layer, beta=rng.normal(0, 0.3, n), moving_mean=rng.normal(0, 0.3, n))
    masked = keras.models.clone_model(model)
    masked.set_weights(model.get_weights())
    s = _session(model)
    s = _shrink(s, measure_latency=False)

    info = s.sections["shrink"]
    assert info["params_after"] < 0.8 * info["params_before"] and "latency_ms" not in info
    assert _width(s.model, "predictions") == 10
    assert info["groups_kept_whole"]  # residual streams keep channels dead in only some blocks
    x = np.random.default_rng(3).standard_normal((8, 32, 32, 3)).astype("float32")
    _check_same_function(masked, s, x, tmp_path)


def test_nested_model_is_left_whole_and_subclassed_model_is_skipped():
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inner = keras.Sequential([keras.Input((6,)), layers.Dense(5, activation="relu", name="inner_dense")], name="inner")
    inp = keras.Input((4,))
    h = layers.Dense(8, activation="relu", name="first")(inp)
    h = layers.Dense(6, activation="relu", name="before")(h)
    out = layers.Dense(2, name="after")(inner(h))
    model = keras.Model(inp, out)
    for name in ("first", "before"):
        _kill(model.get_layer(name), [0, 1])
    _kill(inner.get_layer("inner_dense"), [0])
    s = _session(model)
    s = _shrink(s, measure_latency=False)
    assert [_width(s.model, n) for n in ("first", "before", "after")] == [6, 6, 2]  # 'before' feeds the nested model
    assert s.model.get_layer("inner").get_layer("inner_dense").kernel.shape == (6, 5)
    assert any("inner" in n and "stay masked" in n for n in s.notes)

    class Sub(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(3)

        def call(self, x):
            return self.dense(x)

    sub = Sub()
    sub(np.zeros((1, 4), "float32"))
    s = _session(sub)
    s = _shrink(s, measure_latency=False)
    assert s.model is sub and not s.structure_changed
    assert any(n.startswith("shrink skipped") for n in s.notes)


@pytest.mark.slow
def test_cli_shrinks_the_example_and_the_report_shows_new_shapes(cli, example_model, example_data, tmp_path):
    import json

    import keras

    out, report = tmp_path / "small.keras", tmp_path / "report.json"
    result = cli(
        "prune",
        example_model,
        "--granularity",
        "neuron",
        "--sparsity",
        "0.5",
        "--shrink",
        "--data",
        example_data,
        "-o",
        out,
        "--report",
        report,
        "-q",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    shrink = data["shrink"]
    assert shrink["params_after"] < shrink["params_before"]
    assert shrink["verification"]["inputs"] == "data" and shrink["verification"]["max_rel_diff"] <= 1e-4
    small = keras.saving.load_model(out)
    assert small.count_params() == shrink["params_after"]
    shapes = {layer["name"]: layer["shape"] for layer in data["layers"]}
    assert shapes["dense1/kernel"] == list(small.get_layer("dense1").kernel.shape)
    assert shapes["dense1/kernel"][1] == shrink["layers"]["dense1"]["after"] < 64


def test_keras2_h5_is_shrunk_and_written_by_keras3(keras2_h5, tmp_path):
    import keras

    from prunecli import prune

    out = tmp_path / "small.h5"
    result = prune(
        build_config(
            {"model_path": str(keras2_h5), "granularity": "neuron", "sparsity": 0.5, "shrink": True, "output": str(out)}
        )
    )
    assert any("small.h5 is written by Keras 3" in n and "tf_keras cannot read it" in n for n in result.report.notes)
    small = keras.saving.load_model(out)
    assert small.get_layer("hidden1").kernel.shape[1] < 32
    assert small.count_params() == result.report.to_dict()["shrink"]["params_after"]


def _channels_first_models():
    """A Conv2D-BN-ReLU-grouped Conv2D-Conv2D-pool-Flatten-Dense model and a residual one (ZeroPadding2D, Add,
    Concatenate on axis 1, AveragePooling2D), channels-first throughout as Keras-2 files saved with
    image_data_format channels_first are; a conv's width equals a map's last axis (8 filters on 8x8)."""
    import keras
    from keras import layers

    cf = {"data_format": "channels_first"}
    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 10, 10))
    x = layers.Conv2D(8, 3, name="conv1", **cf)(inp)  # valid padding: any constant folds
    x = layers.Activation("relu", name="relu1")(layers.BatchNormalization(axis=1, name="bn1")(x))
    x = layers.Conv2D(8, 3, groups=4, name="grp", **cf)(x)  # two channels a group
    x = layers.MaxPooling2D(2, name="pool", **cf)(layers.Conv2D(6, 1, padding="same", name="conv2", **cf)(x))
    x = layers.Dense(16, activation="relu", name="dense1")(layers.Flatten(name="flat")(x))  # channel-major rows
    plain = keras.Model(inp, layers.Dense(4, name="out")(x))
    inp = keras.Input((3, 8, 8))
    stem = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem", **cf)(inp)
    branch = layers.Conv2D(8, 3, use_bias=False, name="branch", **cf)(layers.ZeroPadding2D(1, name="pad", **cf)(stem))
    added = layers.Add(name="add")([stem, layers.BatchNormalization(axis=1, name="branch_bn")(branch)])
    side = layers.Conv2D(6, 1, activation="relu", name="side", **cf)(added)
    joined = layers.AveragePooling2D(2, name="avg", **cf)(layers.Concatenate(axis=1, name="cat")([added, side]))
    residual = keras.Model(inp, layers.Dense(4, name="out")(layers.Flatten(name="flat")(joined)))
    return plain, residual


@pytest.mark.slow  # ~2.5 s: two models masked, shrunk, compared, saved and reloaded
def test_channels_first_convolutions_shrink_and_compute_the_masked_function(tmp_path):
    """Channels-first convolutions (OpenFace's nn4.small2, bench/ZOO.md) were 'other' to the channel graph
    ("is channels_first or grouped"): --shrink kept every filter and --target params= could not be met.
    Their channels now run on axis 1 through BatchNorm(axis=1), pooling, padding, Add, Concatenate(axis=1)
    and Flatten (channel-major into the Dense), and the shrunk model computes the masked one. A grouped
    one (groups > 1; "is grouped": kept whole in either layout) loses whole groups: a group's filters with
    the channels they read."""
    import keras

    from prunecli.io.models import channels_first

    channels_first.run_on_cpu()  # TensorFlow's CPU convolutions take channels-last tensors only
    plain, residual = _channels_first_models()
    rng = np.random.default_rng(0)
    cases = [
        (
            plain,
            {"conv1": [0, 1, 2], "grp": [0, 1, 2], "conv2": [1, 4], "dense1": [0, 3]},  # group 0 dead, 1 is not
            {"conv1": 6, "grp": 6, "conv2": 4, "dense1": 14},
        ),
        (residual, {"stem": [0, 1, 2, 5], "branch": [1, 2, 3, 5], "side": [0, 4]}, {"stem": 5, "side": 4}),
    ]
    for model, kills, widths in cases:
        _randomise_batchnorms(model, rng)
        for layer in model.layers:
            if getattr(layer, "use_bias", False) and layer.name != "stem":  # stem: relu(<0) = 0 into 'same'
                _set(layer, bias=rng.normal(0, 0.5, layer.bias.shape[0]))
        _set(model.get_layer("stem" if model is residual else "conv1"), bias=-np.abs(rng.normal(0, 0.5, 8)))
        for name, units in kills.items():
            _kill(model.get_layer(name), units)
        masked = keras.models.clone_model(model)
        masked.set_weights(model.get_weights())
        s = _shrink(_session(model), measure_latency=False)
        assert {name: _width(s.model, name) for name in widths} == widths
        x = rng.standard_normal((16, *model.input_shape[1:])).astype("float32")
        _check_same_function(masked, s, x, tmp_path)
        if model is plain:  # its grouped kernel keeps 2 rows a group; --target's cost model counts it so
            assert s.model.get_layer("grp").groups == 3 and s.model.get_layer("grp").kernel.shape == (3, 3, 2, 6)
            want = (s.model.count_params(), flops.count(s.model)["total"])  # flops: positions after the channels
            assert (_predicted(masked), _predicted(masked, "flops")) == want
    assert s.model.get_layer("branch").kernel.shape == (3, 3, 5, 5)  # dead in both Add members: 1, 2, 5
    assert s.model.get_layer("out").kernel.shape == (9 * 4 * 4, 4)  # 5 + 4 channels, channel-major rows


def test_the_record_of_cut_searches_is_the_calling_runs_own(monkeypatch):
    """The record was one module-level list that each run cleared as it loaded: a second run started in
    another thread (two API calls side by side) wiped the first's notes, and a run read the lines of
    any search made since. Each run's record now lives in its own context."""
    import threading
    import time

    import keras

    from prunecli.structure import probes

    def slow_failing_pass(model, inputs):
        time.sleep(0.02)
        raise ValueError("does not fit")

    monkeypatch.setattr(probes, "_trial_pass", slow_failing_pass)
    monkeypatch.setattr(probes, "SEARCH_BUDGET_S", 0.01)
    inp = keras.Input((None, 3))
    model = keras.Model(inp, keras.layers.Dense(2)(inp), name="mine")
    probes.forget_cut_searches()
    probes.seeded_inputs(model, 2)
    other = threading.Thread(target=probes.forget_cut_searches)  # another run starting beside this one
    other.start()
    other.join()
    assert [n for n in probes.cut_searches() if "of mine stopped trying" in n], probes.cut_searches()
