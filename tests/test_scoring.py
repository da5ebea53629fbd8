"""Scoring strategies: the contract every registered one keeps, and a case per strategy where the
obviously important weight or unit must come out on top."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunecli import scoring
from prunecli.config import UNIT_METHODS as CONFIG_UNIT_METHODS
from prunecli.config import PruneConfig, build_config
from prunecli.errors import ConfigError, DataError

UNIT_METHODS = {"neuron-mean", "l1-norm", "l2-norm", "activation", "apoz", "redundancy"}
DATA_METHODS = {"activation", "apoz", "gradient", "taylor", "wanda", "sparsegpt", "redundancy"}


def tiny_cnn(seed: int = 0):
    """conv -> batch norm -> ReLU -> dense -> softmax: every kind of target a strategy meets."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 6, 2), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU(name="relu")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(5, activation="relu", name="hidden")(x)
    out = keras.layers.Dense(3, activation="softmax", name="out")(x)
    return keras.Model(inp, out)


def batches(x, y, batch_size: int = 16):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


@pytest.fixture(scope="module")
def cnn_case():
    from prunecli.structure.targets import select

    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 6, 6, 2)).astype("float32")  # 3 batches of 16, 16 and 8
    y = rng.integers(0, 3, 40).astype("int32")
    model = tiny_cnn()
    return model, select(model), batches(x, y), x


def context(model, targets, data=None, **kw):
    kw.setdefault("loss_fn", "sparse_categorical_crossentropy")
    return scoring.ScoringContext(model=model, targets=targets, data=data, **kw)


def as_numpy(scores) -> dict:
    return {k: np.asarray(v) for k, v in scores.items()}


def test_registry_lists_every_strategy_with_a_one_line_summary():
    assert set(scoring.available()) >= {"magnitude", "random"} | UNIT_METHODS | DATA_METHODS
    for name, summary in scoring.describe():
        strategy = scoring.get(name)
        assert summary and "\n" not in summary and len(summary) <= 80
        assert strategy.level == ("unit" if name in UNIT_METHODS else "element")
        assert strategy.needs_data == (name in DATA_METHODS)
        settings = {"model_path": "m.keras", "method": name, "data": "d.npz" if strategy.needs_data else None}
        assert build_config(settings, environ={}).method == name
    assert set(CONFIG_UNIT_METHODS) == UNIT_METHODS  # run/steps.prunes_whole_units reads the config's


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="choose from: .*apoz.*taylor"):
        scoring.get("nope")


@pytest.mark.parametrize(
    "name",  # gradient, taylor (2-3 s) and redundancy (1.5-2 s) run in the full suite; the fast subset checks them below
    [
        pytest.param(n, marks=pytest.mark.slow) if n in ("gradient", "taylor", "redundancy") else n
        for n in scoring.available()
    ],
)
def test_contract_shape_finite_and_deterministic(cnn_case, name):
    """Every registered strategy: one score per target, of the weight's shape (element) or (units,)
    (unit), finite, and the same twice for the same seed."""
    model, targets, data, _ = cnn_case
    strategy = scoring.get(name)
    first = as_numpy(strategy.fn(targets, context(model, targets, data, seed=3)))
    second = as_numpy(strategy.fn(targets, context(model, targets, data, seed=3)))
    assert set(first) == {t.name for t in targets}
    for t in targets:
        want = (t.units,) if strategy.level == "unit" else t.shape
        assert first[t.name].shape == want
        assert np.isfinite(first[t.name]).all()
        np.testing.assert_array_equal(first[t.name], second[t.name])
    before = [t.variable.numpy().copy() for t in targets]
    strategy.fn(targets, context(model, targets, data))
    for t, w in zip(targets, before, strict=True):
        np.testing.assert_array_equal(t.variable.numpy(), w)  # scoring never changes the model


def test_random_depends_on_the_seed(cnn_case):
    model, targets, _, _ = cnn_case
    a = as_numpy(scoring.get("random").fn(targets, context(model, targets, seed=1)))
    b = as_numpy(scoring.get("random").fn(targets, context(model, targets, seed=2)))
    assert not np.array_equal(a["conv/kernel"], b["conv/kernel"])


@pytest.mark.parametrize("name", ["magnitude", "neuron-mean", "l1-norm", "l2-norm"])
def test_data_free_methods_rank_the_unit_with_large_weights_first(name):
    import keras

    from prunecli.structure.targets import select

    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6, name="d")])
    kernel = model.get_layer("d").kernel
    kernel.assign(kernel.numpy() * np.array([1, 1, 10, 1, 1, 1], "float32"))
    targets = select(model)
    scores = np.asarray(scoring.get(name).fn(targets, context(model, targets))["d/kernel"])
    per_unit = scores if scores.ndim == 1 else scores.mean(axis=0)
    assert int(np.argmax(per_unit)) == 2
    expected = {
        "neuron-mean": np.abs(kernel.numpy()).mean(axis=0),
        "l1-norm": np.abs(kernel.numpy()).sum(axis=0),
        "l2-norm": np.sqrt((kernel.numpy() ** 2).sum(axis=0)),
        "magnitude": np.abs(kernel.numpy()).mean(axis=0),
    }[name]
    np.testing.assert_allclose(per_unit, expected, rtol=1e-6)


def test_redundancy_ranks_a_copied_channel_below_a_unique_one_of_smaller_magnitude():
    """Channels 0 and 1 of `maker` are copies of large filters, channel 2 a unique small one: the
    reader refit without one copy loses nothing, so that copy scores lowest (magnitude ranks the
    unique channel lowest); the greedy removal then finds the other copy unique, and above channel 2."""
    import keras

    from prunecli.structure.targets import select

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, use_bias=False, name="maker"), keras.layers.Dense(2, name="reader")]
    )
    big, small = np.array([1.0, -1.0, 0.5, 0.0]), np.array([0.0, 0.1, 0.0, 0.2])
    model.get_layer("maker").kernel.assign(np.stack([big, big, small], axis=1).astype("float32"))
    model.get_layer("reader").kernel.assign(np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0]], "float32"))
    x = np.random.default_rng(0).standard_normal((64, 4)).astype("float32")
    targets = select(model)
    data = batches(x, np.zeros(64, "int32"), 32)
    scores = np.asarray(scoring.get("redundancy").fn(targets, context(model, targets, data))["maker/kernel"])
    magnitude = np.abs(model.get_layer("maker").kernel.numpy()).mean(axis=0)
    assert magnitude[2] < magnitude[0] == magnitude[1]
    assert min(scores[0], scores[1]) < 0.5 * scores[2] < scores[2] < max(scores[0], scores[1])


def test_redundancy_says_which_layers_it_could_not_measure_and_scored_by_magnitude():
    """One example gives the reader a rank-1 Hessian: it is not read, the maker falls back to magnitude,
    and the strategy's notes (the report's) say both: they were dropped, so the report said redundancy."""
    import keras

    from prunecli.structure.targets import select

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="maker"), keras.layers.Dense(2, name="reader")]
    )
    targets = [t for t in select(model) if t.layer_name == "maker"]
    x = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    # 8 rows of data, of which --calibration-samples (the run's extras) lets it read 1
    ctx = context(model, targets, batches(x, np.zeros(8, "int32")), extras={"calibration_samples": 1})
    scores = np.asarray(scoring.get("redundancy").fn(targets, ctx)["maker/kernel"])
    assert ctx.notes[0].startswith("redundancy: reader not measured on --data (it saw a single input row")
    assert ctx.notes[1].startswith("maker/kernel: no Dense or Conv layer reading its channels was measured")
    assert len(ctx.notes) == 2 and np.isfinite(scores).all()


def test_redundancy_names_why_a_layer_read_by_a_channels_first_conv_is_scored_by_magnitude():
    """A channels-first Conv reads the maker's channels, but redundancy reads channels-last ones only:
    the note said no Dense or Conv layer read them."""
    import keras

    from prunecli.structure.targets import select

    keras.utils.set_random_seed(0)
    conv = {"kernel_size": 3, "data_format": "channels_first"}
    model = keras.Sequential(
        [
            keras.Input((3, 8)),
            keras.layers.Conv1D(4, name="maker", **conv),
            keras.layers.Conv1D(2, name="reader", **conv),
        ]
    )
    targets = [t for t in select(model) if t.layer_name == "maker"]
    x = np.random.default_rng(0).standard_normal((8, 3, 8)).astype("float32")
    ctx = context(model, targets, batches(x, np.zeros(8, "int32")))
    assert np.asarray(scoring.get("redundancy").fn(targets, ctx)["maker/kernel"]).shape == (4,)
    assert ctx.notes == [
        "maker/kernel: none of the layers reading its channels is a Dense or channels-last Conv of at most 8,192"
        " inputs; scored by magnitude, not redundancy"
    ]


def test_redundancy_gives_each_magnitude_fallback_its_own_reason():
    """One reader not measured (one example) made every fallback say its readers were not measured, a
    layer that no reader of redundancy reads (a recurrent layer's input) included."""
    import keras

    from prunecli.structure.targets import select

    keras.utils.set_random_seed(0)
    inp = keras.Input((3, 8))
    recurrent = keras.layers.GRU(2, name="gru")(keras.layers.Dense(4, name="seq_maker")(inp))
    dense = keras.layers.Dense(2, name="reader")(keras.layers.Dense(3, name="maker")(keras.layers.Flatten()(inp)))
    model = keras.Model(inp, [recurrent, dense])
    targets = [t for t in select(model) if t.layer_name in ("seq_maker", "maker")]
    x = np.random.default_rng(0).standard_normal((8, 3, 8)).astype("float32")
    ctx = context(model, targets, batches(x, np.zeros(8, "int32")), extras={"calibration_samples": 1})
    scoring.get("redundancy").fn(targets, ctx)
    why = {note.split(":")[0]: note for note in ctx.notes}
    assert "was measured (above)" in why["maker/kernel"]
    assert "channels-last Conv of at most 8,192 inputs" in why["seq_maker/kernel"]


@pytest.mark.slow  # one run each (~1 s)
@pytest.mark.parametrize("budget", [("-s", "0.5"), ("--target", "params=0.6")])
def test_a_redundancy_run_reports_the_layers_it_scored_by_magnitude(cli, mlp_files, budget):
    """--calibration-samples 1 (it read 128 whatever was given) leaves each reader one row: the run
    says which layers were not measured and scored by magnitude (the strategy's notes were dropped)."""
    args = ("--method", "redundancy", "--data", mlp_files["data"], "--calibration-samples", "1", *budget)
    result = cli("plan", mlp_files["keras"], *args, "--json")  # prune's steps, without its evaluations
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["notes"]
    assert (
        "redundancy: hidden2 not measured on --data (it saw a single input row, so its input Hessian has rank 1)"
        in notes
    )
    assert any(n.startswith("hidden1/kernel: no Dense or Conv layer reading its channels was measured") for n in notes)


def test_activation_scores_equal_the_mean_after_batch_norm_and_relu(cnn_case):
    """The conv's output is read after its batch norm and ReLU; compare with a direct computation."""
    import keras

    model, targets, data, x = cnn_case
    act = as_numpy(scoring.get("activation").fn(targets, context(model, targets, data)))
    apoz = as_numpy(scoring.get("apoz").fn(targets, context(model, targets, data)))
    probe = keras.Model(model.inputs, [model.get_layer("relu").output, model.get_layer("hidden").output])
    relu_out, hidden_out = (np.asarray(o) for o in probe(x, training=False))
    np.testing.assert_allclose(act["conv/kernel"], np.abs(relu_out).mean(axis=(0, 1, 2)), rtol=1e-5)
    np.testing.assert_allclose(act["hidden/kernel"], np.abs(hidden_out).mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(apoz["conv/kernel"], (relu_out > 0).mean(axis=(0, 1, 2)), rtol=1e-6)


def test_activation_and_apoz_keep_the_always_active_unit_and_drop_the_dead_one():
    import keras

    from prunecli.config import Granularity, PruneConfig
    from prunecli.selection.policy import build_masks
    from prunecli.structure.targets import select

    keras.utils.set_random_seed(2)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(4, activation="relu", name="d"), keras.layers.Dense(2, name="head")]
    )
    layer = model.get_layer("d")
    layer.bias.assign(np.array([5.0, 0.0, 0.0, -100.0], "float32"))  # unit 0 always on, unit 3 never
    x = np.random.default_rng(0).standard_normal((64, 4)).astype("float32")
    targets = [t for t in select(model) if t.layer_name == "d"]
    data = batches(x, np.zeros(64, "int32"))
    act = np.asarray(scoring.get("activation").fn(targets, context(model, targets, data))["d/kernel"])
    apoz = np.asarray(scoring.get("apoz").fn(targets, context(model, targets, data))["d/kernel"])
    assert int(np.argmax(act)) == 0 and act[3] == 0.0
    assert apoz[0] == 1.0 and apoz[3] == 0.0
    masks = build_masks(
        targets, {"d/kernel": apoz}, "unit", PruneConfig(sparsity=0.25, granularity=Granularity("neuron"))
    )
    assert np.asarray(masks.masks["d/kernel"]).any(axis=0).tolist() == [True, True, True, False]


@pytest.mark.parametrize("name", ["gradient", "taylor"])
def test_gradient_methods_rank_the_informative_input_first(name):
    import keras

    from prunecli.structure.targets import select

    rng = np.random.default_rng(3)
    x = rng.standard_normal((256, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("float32")[:, None]  # only feature 0 carries the label
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1, activation="sigmoid", name="d")])
    model.get_layer("d").kernel.assign(np.full((6, 1), 0.05, "float32"))
    targets = select(model)
    ctx = context(model, targets, batches(x, y, 64), loss_fn="binary_crossentropy")
    scores = np.asarray(scoring.get(name).fn(targets, ctx)["d/kernel"])[:, 0]
    assert int(np.argmax(scores)) == 0
    assert scores[0] > 3 * np.delete(scores, 0).max()

    if name == "gradient":  # the check below is the same for both; once keeps the fast subset fast
        return
    # all-zero inputs: every gradient of the kernel is 0, the mask goes by position, and the report says so
    from types import SimpleNamespace

    from prunecli.outputs.report import Timings
    from prunecli.run import steps

    zeros = SimpleNamespace(train=batches(np.zeros_like(x[:64]), y[:64], 64))
    task = SimpleNamespace(loss="binary_crossentropy")
    masks = steps.score_and_mask(model, targets, zeros, task, PruneConfig(method=name), steps.silent, Timings())
    assert f"d/kernel: every {name} score is equal on this data" in " ".join(masks.notes)


def test_gradient_is_the_mean_absolute_batch_gradient_and_taylor_multiplies_by_w(cnn_case):
    import keras
    import tensorflow as tf

    model, targets, data, _ = cnn_case
    loss = keras.losses.SparseCategoricalCrossentropy()
    expected = np.zeros(targets[-1].shape, "float32")
    kernel = model.get_layer("out").kernel
    for xb, yb in data:
        with tf.GradientTape() as tape:
            value = loss(yb, model(xb, training=False))
        expected += np.abs(tape.gradient(value, kernel.value).numpy()) / 3
    ctx = context(model, targets, data, loss_fn=loss)  # a Loss object works as well as a name
    grad = np.asarray(scoring.get("gradient").fn(targets, ctx)["out/kernel"])
    taylor = np.asarray(scoring.get("taylor").fn(targets, ctx)["out/kernel"])
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(taylor, np.abs(kernel.numpy()) * expected, rtol=1e-4, atol=1e-7)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["activation", "gradient"])
def test_xla_and_plain_graphs_agree(cnn_case, name):
    model, targets, data, _ = cnn_case
    plain = as_numpy(scoring.get(name).fn(targets, context(model, targets, data, extras={"jit_compile": False})))
    xla = as_numpy(scoring.get(name).fn(targets, context(model, targets, data, extras={"jit_compile": True})))
    for key in plain:
        np.testing.assert_allclose(xla[key], plain[key], rtol=1e-4, atol=1e-6)


def test_max_batches_and_progress_callback(cnn_case):
    model, targets, data, _ = cnn_case
    calls = []

    def progress(label, total):
        calls.append((label, total))
        return lambda n=1: calls.append(n)

    one = as_numpy(scoring.get("gradient").fn(targets, context(model, targets, data, max_batches=1, progress=progress)))
    assert calls == [("scoring (gradient)", 1), 1]
    every = as_numpy(scoring.get("gradient").fn(targets, context(model, targets, data)))
    assert not np.allclose(one["out/kernel"], every["out/kernel"])
    with pytest.raises(ConfigError, match="score_batches must be >= 1"):
        scoring.get("gradient").fn(targets, context(model, targets, data, max_batches=0))


def test_data_methods_explain_what_is_missing(cnn_case):
    model, targets, data, _ = cnn_case
    for name in sorted(DATA_METHODS):
        with pytest.raises(ConfigError, match="needs data"):
            scoring.get(name).fn(targets, context(model, targets))
    with pytest.raises(ConfigError, match="needs a loss"):
        scoring.get("taylor").fn(targets, context(model, targets, data, loss_fn=None))
    x_only = data.map(lambda x, y: x)
    with pytest.raises(DataError, match="needs labels"):
        scoring.get("gradient").fn(targets, context(model, targets, x_only))
    assert scoring.get("apoz").fn(targets, context(model, targets, x_only))  # activations need no labels


def test_non_finite_scores_are_a_data_error(cnn_case):
    model, targets, _, x = cnn_case
    bad = x.copy()
    bad[0, 0, 0, 0] = np.inf
    with pytest.raises(DataError, match="not finite"):
        scoring.get("taylor").fn(targets, context(model, targets, batches(bad, np.zeros(40, "int32"))))


def test_depthwise_outputs_are_averaged_per_input_channel_and_separable_halves_refused():
    import keras

    from prunecli.structure.targets import select

    keras.utils.set_random_seed(4)
    inp = keras.Input((5, 5, 3))
    depthwise = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(inp)  # 6 channels, 2 per input
    separable = keras.layers.SeparableConv2D(4, 3, name="sep")(depthwise)
    model = keras.Model(inp, keras.layers.GlobalAveragePooling2D()(separable))
    x = np.random.default_rng(4).standard_normal((8, 5, 5, 3)).astype("float32")
    data = batches(x, np.zeros(8, "int32"), 4)
    dw = [t for t in select(model) if t.layer_name == "dw"]
    scores = np.asarray(scoring.get("activation").fn(dw, context(model, dw, data))["dw/kernel"])
    outputs = np.abs(np.asarray(keras.Model(inp, depthwise)(x))).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(scores, outputs.reshape(3, 2).mean(axis=1), rtol=1e-5)
    with pytest.raises(ConfigError, match="depthwise half of a separable"):
        scoring.get("apoz").fn(select(model), context(model, select(model), data))


def test_activation_scores_of_channels_first_layers_are_per_channel_not_per_width():
    """A channels_first layer's units are on axis 1 of its output: activation and APoZ read the last axis
    (the width) and, where the width equals the channel count, scored it silently (a Conv2D of 4 filters
    on a 4-wide map, a Conv1D of 3 on 3 steps, a depth_multiplier-2 depthwise of 8 channels on 4)."""
    import keras

    from prunecli.io.models import channels_first
    from prunecli.structure.targets import select

    channels_first.run_on_cpu()  # TensorFlow's CPU convolutions take channels-last tensors only
    keras.utils.set_random_seed(3)
    cf = {"data_format": "channels_first"}
    inp = keras.Input((2, 5, 4))
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv", **cf)(inp)  # (4, 5, 4)
    relu = keras.layers.ReLU()(keras.layers.BatchNormalization(axis=1)(conv))
    dw = keras.layers.DepthwiseConv2D(1, depth_multiplier=2, name="dw", **cf)(relu)  # (8, 5, 4)
    pooled = keras.layers.Reshape((8, 4))(keras.layers.MaxPooling2D((5, 1), **cf)(dw))
    conv1d = keras.layers.Conv1D(3, 2, name="conv1d", **cf)(pooled)  # (3, 3)
    out = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D(**cf)(conv1d))
    model = keras.Model(inp, out)
    x = np.random.default_rng(0).standard_normal((12, 2, 5, 4)).astype("float32")
    targets = [t for t in select(model) if t.layer_name in ("conv", "dw", "conv1d")]
    read = [np.asarray(o) for o in keras.Model(inp, [relu, dw, conv1d])(x, training=False)]
    scores = as_numpy(scoring.get("apoz").fn(targets, context(model, targets, batches(x, np.zeros(12), 12))))
    for t, a in zip(targets, read, strict=True):
        per_channel = (a > 0).mean(axis=(0, *range(2, a.ndim)))  # APoZ and activation share the reading
        expected = per_channel.reshape(4, 2).mean(axis=1) if t.layer_name == "dw" else per_channel  # unit-major
        np.testing.assert_allclose(scores[t.name], expected, rtol=1e-6)


def test_unreadable_outputs_are_a_config_error_naming_the_layer():
    import keras

    from prunecli.structure.targets import select

    inp = keras.Input((5, 3))
    seq = keras.layers.LSTM(4, name="lstm")(inp)
    rnn = keras.Model(inp, keras.layers.Dense(2, name="head")(seq))
    targets = select(rnn)
    data = batches(np.zeros((8, 5, 3), "float32"), np.zeros(8, "int32"))
    with pytest.raises(ConfigError, match=r"output of lstm/lstm_cell: .*--exclude 'lstm/lstm_cell'"):
        scoring.get("apoz").fn(targets, context(rnn, targets, data))

    shared = keras.layers.Dense(3, name="shared")
    a, b = keras.Input((3,)), keras.Input((3,))
    twice = keras.Model([a, b], keras.layers.Add()([shared(a), shared(b)]))
    with pytest.raises(ConfigError, match="called more than once"):
        scoring.get("activation").fn(select(twice), context(twice, select(twice), data))

    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = keras.layers.Dense(2)

        def call(self, x):
            return self.d(x)

    sub = Subclassed()
    sub(np.zeros((1, 3), "float32"))
    with pytest.raises(ConfigError, match="Sequential or functional"):
        scoring.get("activation").fn(select(sub), context(sub, select(sub), data))


def test_help_lists_every_method_with_its_summary(cli):
    result = cli("prune", "--help")
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for name, summary in scoring.describe():
        assert f"{name} {summary}" in text


@pytest.mark.slow
@pytest.mark.parametrize("method", ["apoz", "taylor"])
def test_data_methods_run_end_to_end_on_the_example(cli, example_model, example_data, tmp_path, method):
    report = tmp_path / "report.json"
    result = cli(
        "prune",
        example_model,
        "-m",
        method,
        "-s",
        "0.5",
        "-d",
        example_data,
        "--score-batches",
        "4",
        "-o",
        tmp_path / "out.keras",
        "--report",
        report,
        "--no-sizes",
        "-q",
    )
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["totals"]["prunable_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert data["metrics"]["after_pruning"]["accuracy"] > 0.1


def test_data_method_without_data_is_a_usage_error(cli, example_model, tmp_path):
    result = cli("prune", example_model, "-m", "gradient", "-o", tmp_path / "out.keras", "-q")
    assert result.exit_code == 2
    assert "needs --data" in result.output


def test_unit_methods_resolve_auto_like_neuron_pruning():
    """Methods that score whole units are run as neuron pruning: --scope/--schedule auto treat them so."""
    from prunecli.config import UNIT_METHODS, PruneConfig

    assert set(UNIT_METHODS) == {n for n in scoring.available() if scoring.get(n).level == "unit"}
    c = PruneConfig(method="apoz", data="d.npz", epochs=2)
    assert (c.scope, c.schedule) == ("layer", "oneshot")


def test_redundancy_greedy_scores_the_same_when_removed_columns_are_dropped(monkeypatch):
    """The greedy removal drops the removed columns of w and H^-1 once a quarter are gone (COMPACT),
    renumbering each channel's columns: the scores equal those of the run that keeps every column."""
    from prunecli.calibration import redundancy

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 10))
    x[:, 1] = x[:, 0] + 0.01 * rng.standard_normal(300)  # a near copy
    x = np.repeat(x, 3, axis=1) + 0.3 * rng.standard_normal((300, 30))  # 3 columns (taps) per channel
    h, w = x.T @ x / 300, rng.standard_normal((30, 4))

    def scores(compact):
        monkeypatch.setattr(redundancy, "COMPACT", compact)
        groups = {r: np.arange(3 * r, 3 * r + 3) for r in range(10)}
        readers = [
            redundancy.Reader("a", w.copy(), h.copy(), dict(groups)),
            redundancy.Reader("b", w[:, :2].copy(), h.copy(), dict(groups)),
        ]
        return redundancy._greedy(list(range(10)), readers)

    kept, dropped = scores(2.0), scores(0.25)  # 2.0: never dropped
    assert list(kept) == list(dropped)  # the same order
    np.testing.assert_allclose([dropped[r] for r in kept], list(kept.values()), rtol=1e-9)


@pytest.mark.slow  # 0.5 s
def test_redundancy_reads_every_reader_in_one_pass_per_batch_with_the_scores_of_one_pass_each(monkeypatch):
    """channel_scores captures all the readers' Hessians from one forward pass per batch
    (capture.capture_all): the scores equal those of one pass per reader (HessianCapture.run), on a
    residual CNN whose readers include 3x3 convs, a 1x1 conv with a bias and a Dense, over passes of
    unequal size; and the model ran once per batch, not once per reader. A grouped conv (cg) is scored a
    group at a time, by the Dense reading its groups' channels: no magnitude fallback."""
    import keras

    from prunecli.calibration import capture, redundancy
    from prunecli.structure.targets import select

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 6, 2))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inp)
    b = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="c2")(a)
    x = keras.layers.Add()([a, b])
    x = keras.layers.Conv2D(6, 1, activation="relu", name="c3")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", groups=3, name="cg")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(x))
    x = np.random.default_rng(0).standard_normal((40, 6, 6, 2)).astype("float32")
    data = [x[i : i + 16] for i in range(0, 40, 16)]
    targets = select(model)
    calls = [0]
    forward = capture._forward

    def counted(m, batch):
        calls[0] += 1
        forward(m, batch)

    monkeypatch.setattr(capture, "_forward", counted)
    one_pass, notes = redundancy.channel_scores(model, targets, data)
    assert calls[0] == len(data)
    monkeypatch.setattr(capture, "capture_all", lambda caps, m, b: (c.run(m, b) for c in caps))
    per_reader, _ = redundancy.channel_scores(model, targets, data)
    assert calls[0] > 3 * len(data)  # c2, c3 and out read the scored channels (cg, grouped, is no reader): a pass each
    assert set(one_pass) == set(per_reader) == {"c1/kernel", "c2/kernel", "c3/kernel", "cg/kernel", "out/kernel"}
    assert notes == []
    groups = one_pass["cg/kernel"].reshape(3, 2)  # a group's 2 filters (and c3's 2 channels it reads): one unit
    np.testing.assert_array_equal(groups[:, 0], groups[:, 1])
    np.testing.assert_array_equal(one_pass["c3/kernel"], one_pass["cg/kernel"])
    assert len(set(groups[:, 0].tolist())) == 3
    for name in one_pass:
        np.testing.assert_array_equal(one_pass[name], per_reader[name], err_msg=name)


# a Dense's channel (one column: no solve), a conv's (k x k taps), both in one reader (a Flatten's
# channels of unequal positions, or a grouped conv's groups beside single channels)
@pytest.mark.parametrize("widths", [[1] * 8, [3] * 8, [1, 3, 2, 3, 1, 1, 3, 2]])
def test_redundancy_greedy_matches_obs_recomputed_from_scratch_at_every_step(widths):
    """The greedy removal's updates (H^-1 kept as the compacted inverse less a growing Cholesky-factored
    low rank part, its diagonal blocks downdated apart, the one-column shortcut) give, at every step,
    the cost OBS gives from the original W and H^-1: removing the set S costs
    tr(W_S^T [(H^-1)_SS]^-1 W_S), so channel c's cost after S is that of S + c less that of S. Same
    order, same scores."""
    from prunecli.calibration import redundancy

    rng = np.random.default_rng(1)
    x = rng.standard_normal((200, 8))
    x[:, 1] = x[:, 0] + 0.05 * rng.standard_normal(200)  # a near copy
    x = np.repeat(x, widths, axis=1) + 0.3 * rng.standard_normal((200, sum(widths)))
    h, w = x.T @ x / 200, rng.standard_normal((sum(widths), 3))
    ends = np.cumsum(widths)
    groups = {r: np.arange(ends[r] - widths[r], ends[r]) for r in range(8)}
    readers = [
        redundancy.Reader("a", w.copy(), h.copy(), dict(groups)),
        redundancy.Reader("b", -w[:, :2], h, dict(groups)),
    ]
    start = [(r.w.copy(), r.hinv.copy(), r.energy) for r in readers]

    def removed_cost(s):
        idx = np.concatenate([groups[r] for r in s])
        return sum(np.sum(w0[idx] * np.linalg.solve(hinv[np.ix_(idx, idx)], w0[idx])) / e for w0, hinv, e in start)

    got = redundancy._greedy(list(range(8)), readers)
    removed, top, expected = [], 0.0, {}
    for _ in range(8):
        left = [r for r in range(8) if r not in removed]
        base = removed_cost(removed) if removed else 0.0
        costs = [removed_cost([*removed, r]) - base for r in left]
        i = int(np.argmin(costs))
        top = max(top, costs[i])
        expected[left[i]] = top
        removed.append(left[i])
    assert list(got) == list(expected)
    np.testing.assert_allclose(list(got.values()), list(expected.values()), rtol=1e-7)


def test_redundancy_factors_a_block_that_rounding_left_indefinite():
    """A removed channel's k x k block of H^-1 is positive definite, but rounding can leave it a hair
    below (two near copies): its factor L (L L^T = B, L lower) then comes from the clipped eigenvalues
    instead of a failed Cholesky."""
    from prunecli.calibration import redundancy

    block = np.array([[1.0, 1.0], [1.0, 1.0 - 1e-12]])  # eigenvalues 2 and -5e-13
    with pytest.raises(np.linalg.LinAlgError):
        np.linalg.cholesky(block)
    lower = redundancy._cholesky(block)
    np.testing.assert_array_equal(lower, np.tril(lower))
    np.testing.assert_allclose(lower @ lower.T, block, atol=1e-9)
