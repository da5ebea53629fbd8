"""`-g neuron --shrink` removes whole LSTM, GRU and SimpleRNN units: every gate's columns of the cell's
kernel and recurrent kernel, the bias entries and the recurrent-kernel row.

Each model is pruned twice through the CLI, masked and shrunk, and the two saved models must compute
the same outputs: a removed unit of the masked model outputs exactly 0 at every step (its state-gate
columns and bias are zero), so cutting it out changes nothing. Biases are made non-zero so that a
unit left half-masked would show.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunecli.structure import channels, layers

STEPS, FEATURES, UNITS = 7, 5, 8


def _nonzero_biases(model, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if v.path.endswith("bias"):
            v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))


def _model(kind: str, return_sequences: bool = False, **options):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((STEPS, FEATURES), name="x")
    x = keras.layers.Dense(8, activation="relu", name="pre")(inp)
    rnn = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU, "SimpleRNN": keras.layers.SimpleRNN}
    if kind == "stacked":
        x = keras.layers.LSTM(UNITS, return_sequences=True, name="rnn")(x)
        x = keras.layers.LSTM(6, return_sequences=return_sequences, name="rnn2")(x)
    else:
        x = rnn[kind](UNITS, return_sequences=return_sequences, name="rnn", **options)(x)
    out = keras.layers.Dense(3, name="out")(x)
    model = keras.Model(inp, out)
    _nonzero_biases(model)
    return model


def _rnn_params(kind: str, inputs: int, units: int) -> int:
    gates = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}[kind]
    bias = 2 * gates * units if kind == "GRU" else gates * units  # GRU: reset_after=True, (2, 3 * units)
    return gates * units * (inputs + units) + bias


def _prune_both(cli, model, tmp_path, *extra):
    """(masked model, shrunk model, shrink report) from the CLI at -g neuron -s 0.5 --scope layer
    (exactly half the units of every pruned layer)."""
    import keras

    path = tmp_path / "model.keras"
    model.save(path)
    found = {}
    for tag, flags in (("masked", ()), ("shrunk", ("--shrink",))):
        out, report = tmp_path / f"{tag}.keras", tmp_path / f"{tag}.json"
        result = cli(
            "prune",
            path,
            "-g",
            "neuron",
            "-s",
            "0.5",
            "--scope",
            "layer",
            *flags,
            *extra,
            "-o",
            out,
            "--report",
            report,
            "-q",
        )
        assert result.exit_code == 0, result.output
        found[tag] = (keras.models.load_model(out), json.loads(report.read_text()))
    return found["masked"][0], found["shrunk"][0], found["shrunk"][1]


def _same_outputs(a, b, shape) -> None:
    x = np.random.default_rng(2).normal(size=(16, *shape)).astype("float32")
    np.testing.assert_allclose(np.asarray(a(x)), np.asarray(b(x)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kind", "return_sequences"),
    [
        pytest.param("LSTM", False, marks=pytest.mark.slow),
        pytest.param("LSTM", True, marks=pytest.mark.slow),
        pytest.param("GRU", False, marks=pytest.mark.slow),
        pytest.param("GRU", True, marks=pytest.mark.slow),
        pytest.param("SimpleRNN", False, marks=pytest.mark.slow),
        pytest.param("SimpleRNN", True, marks=pytest.mark.slow),
    ],
)
def test_recurrent_units_are_cut_and_the_function_kept(cli, tmp_path, kind, return_sequences):
    model = _model(kind, return_sequences)
    masked, shrunk, report = _prune_both(cli, model, tmp_path)
    rnn = shrunk.get_layer("rnn")
    assert rnn.units == UNITS // 2
    assert report["shrink"]["layers"]["rnn"] == {"before": UNITS, "after": UNITS // 2}
    assert report["shrink"]["verification"]["max_abs_diff"] <= 1e-5
    # pre loses 4 of 8 units (4 of the rnn's kernel rows go with them), the rnn 4 of its 8, out 4 rows
    expected = model.count_params() - (
        _rnn_params(kind, 8, UNITS) - _rnn_params(kind, 4, UNITS // 2) + 4 * FEATURES + 4 + 4 * 3
    )
    assert shrunk.count_params() == report["shrink"]["params_after"] == expected
    _same_outputs(masked, shrunk, (STEPS, FEATURES))


@pytest.mark.slow
def test_gru_with_the_reset_gate_before_the_product(cli, tmp_path):
    """GRU(reset_after=False): one bias row, the reset gate multiplies h before the candidate's matmul."""
    model = _model("GRU", True, reset_after=False)
    masked, shrunk, report = _prune_both(cli, model, tmp_path)
    assert shrunk.get_layer("rnn").units == UNITS // 2
    assert tuple(shrunk.get_layer("rnn").cell.bias.shape) == (3 * UNITS // 2,)
    _same_outputs(masked, shrunk, (STEPS, FEATURES))


@pytest.mark.slow
def test_stacked_lstms_both_shrink(cli, tmp_path):
    model = _model("stacked", return_sequences=True)
    masked, shrunk, report = _prune_both(cli, model, tmp_path)
    assert (shrunk.get_layer("rnn").units, shrunk.get_layer("rnn2").units) == (4, 3)
    # the second LSTM reads the first's kept units only
    assert tuple(shrunk.get_layer("rnn2").cell.kernel.shape) == (4, 4 * 3)
    assert tuple(shrunk.get_layer("rnn2").cell.recurrent_kernel.shape) == (3, 4 * 3)
    _same_outputs(masked, shrunk, (STEPS, FEATURES))


@pytest.mark.slow
def test_masked_unit_outputs_exactly_zero_at_every_step(cli, tmp_path):
    """The masked model itself: the units the mask removes are 0 at every step (GRU, non-zero biases)."""
    import keras

    model = _model("GRU", return_sequences=True)
    masked, shrunk, _ = _prune_both(cli, model, tmp_path)
    probe = keras.Model(masked.inputs, masked.get_layer("rnn").output)
    x = np.random.default_rng(3).normal(size=(8, STEPS, FEATURES)).astype("float32")
    h = np.asarray(probe(x))
    silent = ~np.asarray(masked.get_layer("rnn").cell.kernel).reshape(-1, 3, UNITS)[:, 2].any(axis=0)
    assert silent.sum() == UNITS // 2
    assert np.all(h[..., silent] == 0.0)
    assert np.all(np.abs(h[..., ~silent]).max(axis=(0, 1)) > 0)


def test_each_unit_is_one_score_over_all_its_gates():
    """The policy ranks one position per unit: kernel and recurrent kernel are one set, and a unit's
    columns of every gate are kept or masked together."""
    from prunecli.config import build_config
    from prunecli.scoring import registry as scoring
    from prunecli.selection import policy
    from prunecli.structure import targets

    model = _model("LSTM")
    found = [t for t in targets.select(model) if t.layer_name.startswith("rnn")]
    config = build_config({"model_path": "m.keras", "granularity": "neuron", "sparsity": 0.5, "scope": "layer"})
    strategy = scoring.get("magnitude")
    scores = strategy.fn(found, scoring.ScoringContext(model=model, targets=found))
    masks = policy.build_masks(found, scores, strategy.level, config, model=model)
    for t in found:
        cols = masks.masks[t.name].any(axis=0).reshape(4, UNITS)
        assert (cols == cols[0]).all()  # every gate keeps the same units
        assert cols[0].sum() == UNITS // 2
    kernel, recurrent = (masks.masks[t.name].any(axis=0) for t in found)
    assert (kernel == recurrent).all()


@pytest.mark.parametrize("case", ["initial_state", "stateful"])
def test_recurrent_layer_with_a_given_state_stays_masked(cli, tmp_path, case):
    import keras

    keras.utils.set_random_seed(0)
    if case == "stateful":
        inp = keras.Input((STEPS, FEATURES), batch_size=16, name="x")
        x = keras.layers.Dense(8, activation="relu", name="pre")(inp)
        x = keras.layers.LSTM(UNITS, stateful=True, name="rnn")(x)
        inputs = inp
    else:
        inp = keras.Input((STEPS, FEATURES), name="x")
        h0 = keras.Input((UNITS,), name="h0")
        x = keras.layers.Dense(8, activation="relu", name="pre")(inp)
        x = keras.layers.GRU(UNITS, name="rnn")(x, initial_state=h0)
        inputs = [inp, h0]
    model = keras.Model(inputs, keras.layers.Dense(3, name="out")(x))
    path = tmp_path / "model.keras"
    model.save(path)
    out, report = tmp_path / "o.keras", tmp_path / "r.json"
    result = cli("prune", path, "-g", "neuron", "-s", "0.5", "--shrink", "-o", out, "--report", report, "-q")
    assert result.exit_code == 0, result.output
    found = json.loads(report.read_text())
    assert "rnn" not in found["shrink"].get("layers", {})
    notes = " ".join(found["notes"])
    why = "takes an initial state" if case == "initial_state" else "is stateful"
    assert f"shrink keeps the units of rnn whole (rnn ({'GRU' if case == 'initial_state' else 'LSTM'}) {why}" in notes
    assert "shrink cannot slice" not in notes  # the note above says why, once
    assert keras.models.load_model(out).get_layer("rnn").units == UNITS


@pytest.mark.slow
def test_a_recurrent_layer_returning_its_state_keeps_its_units_but_not_its_inputs(cli, tmp_path):
    """A Bidirectional LSTM that returns its state (attention and seq2seq encoders do) keeps its units
    (the states hold them too), but it reads its input through kernel rows like any layer: the
    Embedding before it shrinks (it was kept whole, "returns its state"), and the rebuilt model
    computes what the masked one did."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((STEPS,), dtype="int32", name="ids")
    e = keras.layers.Embedding(50, 16, name="emb")(inp)
    rnn = keras.layers.LSTM(UNITS, return_sequences=True, return_state=True)
    seq, fh, _fc, bh, _bc = keras.layers.Bidirectional(rnn, name="bi")(e)
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Dense(20, activation="relu", name="proj")(seq))
    out = keras.layers.Dense(3, activation="softmax", name="out")(keras.layers.Concatenate()([pooled, fh, bh]))
    path = tmp_path / "model.keras"
    keras.Model(inp, out).save(path)
    o, report = tmp_path / "o.keras", tmp_path / "r.json"
    result = cli("prune", path, "-g", "neuron", "-s", "0.5", "--shrink", "-o", o, "--report", report, "-q")
    assert result.exit_code == 0, result.output
    shrink = json.loads(report.read_text())["shrink"]
    assert shrink["layers"]["emb"] == {"before": 16, "after": 8} and shrink["layers"]["bi"]["after"] == 2 * UNITS
    assert shrink["verification"]["max_rel_diff"] <= 1e-5
    assert keras.models.load_model(o).get_layer("bi").forward_layer.units == UNITS


def test_the_layer_table_describes_recurrent_units():
    assert layers.LAYERS["LSTM"].role == "recurrent" and layers.LAYERS["LSTM"].gates == 4
    assert (layers.LAYERS["GRU"].gates, layers.LAYERS["GRU"].state_gate) == (3, 2)
    assert layers.LAYERS["SimpleRNN"].gates == 1
    cols = layers.recurrent_columns(layers.LAYERS["LSTM"], [0, 2], 3)
    assert cols.tolist() == [0, 2, 3, 5, 6, 8, 9, 11]


def test_a_recurrent_unit_with_a_non_zero_rest_value_is_kept():
    """SimpleRNN(activation=sigmoid): a unit with zero slices outputs sigmoid(0) = 0.5, not 0, and its
    recurrent row feeds that to the others from the second step on: it is never counted dead."""
    import keras

    inp = keras.Input((STEPS, FEATURES))
    rnn = keras.layers.SimpleRNN(4, activation="sigmoid", name="rnn")
    model = keras.Model(inp, keras.layers.Dense(2)(rnn(inp)))
    assert not channels.recurrent_silent(rnn)
    from prunecli.structure import surgery

    w = {"kernel": np.zeros((FEATURES, 4)), "recurrent_kernel": np.zeros((4, 4)), "bias": np.zeros(4)}
    assert not surgery.dead_units(rnn, w).any()
    assert channels.graph_of(model).calls[1].kind == "recurrent"


@pytest.mark.parametrize(
    ("kind", "merge_mode"),
    [
        pytest.param("GRU", "concat", marks=pytest.mark.slow),
        pytest.param("LSTM", "concat", marks=pytest.mark.slow),
        pytest.param("GRU", "sum", marks=pytest.mark.slow),
        pytest.param("GRU", "mul", marks=pytest.mark.slow),
    ],
)
def test_bidirectional_directions_are_cut_together(cli, tmp_path, kind, merge_mode):
    """Forward unit j and backward unit j go together (Keras builds both directions one width): with
    "concat" the next layer loses both of their rows, with "sum"/"mul" they are one channel."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((STEPS, FEATURES))
    x = keras.layers.Dense(8, activation="relu", name="pre")(inp)
    rnn = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU}[kind](UNITS, return_sequences=True)
    x = keras.layers.Bidirectional(rnn, merge_mode=merge_mode, name="bi")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(x))
    _nonzero_biases(model)
    masked, shrunk, report = _prune_both(cli, model, tmp_path)
    bi = shrunk.get_layer("bi")
    assert bi.forward_layer.units == bi.backward_layer.units == UNITS // 2
    width = 2 * UNITS if merge_mode == "concat" else UNITS
    assert report["shrink"]["layers"]["bi"] == {"before": width, "after": width // 2}
    per_direction = _rnn_params(kind, 8, UNITS) - _rnn_params(kind, 4, UNITS // 2)
    assert shrunk.count_params() == model.count_params() - (2 * per_direction + 4 * FEATURES + 4 + width // 2 * 3)
    assert not any("meet in a merge" in n for n in report["notes"])
    _same_outputs(masked, shrunk, (STEPS, FEATURES))


@pytest.mark.slow
def test_keras2_conv_bigru_genomics_shape(cli, tmp_path):
    """The real shape: a Keras-2 .h5 of Conv1D -> MaxPooling1D -> Bidirectional(GRU) -> Dense (one-hot DNA)."""
    import keras
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Conv1D(16, 5, activation="relu", input_shape=(40, 4), name="conv"),
            tf_keras.layers.MaxPooling1D(2, name="pool"),
            tf_keras.layers.Bidirectional(tf_keras.layers.GRU(12), name="bigru"),
            tf_keras.layers.Dense(8, activation="relu", name="fc"),
            tf_keras.layers.Dense(1, activation="sigmoid", name="out"),
        ]
    )
    rng = np.random.default_rng(1)
    for v in model.weights:
        if "bias" in v.name:
            v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))
    path = tmp_path / "dna.h5"
    model.save(path)
    onehot = np.eye(4, dtype="float32")[rng.integers(0, 4, (16, 40))]
    found = {}
    for tag, flags in (("masked", ()), ("shrunk", ("--shrink",))):
        out, report = tmp_path / f"{tag}.keras", tmp_path / f"{tag}.json"
        result = cli(
            "prune", path, "-g", "neuron", "-s", "0.5", "--scope", "layer", *flags, "-o", out, "--report", report, "-q"
        )
        assert result.exit_code == 0, result.output
        found[tag] = (keras.models.load_model(out), json.loads(report.read_text()))
    (masked, _), (shrunk, report) = found["masked"], found["shrunk"]
    layers_after = report["shrink"]["layers"]
    assert layers_after["conv"]["after"] == 8 and layers_after["bigru"] == {"before": 24, "after": 12}
    assert report["shrink"]["params_after"] < report["shrink"]["params_before"] / 2.5
    np.testing.assert_allclose(np.asarray(masked(onehot)), np.asarray(shrunk(onehot)), atol=1e-5)


@pytest.mark.slow
def test_units_read_by_an_unsliceable_layer_are_left_whole_under_shrink(cli, tmp_path):
    """LSTM -> LayerNormalization, which surgery cannot slice (a wrapped BatchNormalization it can:
    test_structure_opened.py): without --shrink the LSTM loses half
    its units to the masks (the masks are the product); with --shrink it keeps them all and says why
    (masking them would cost accuracy and remove nothing)."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((STEPS, FEATURES))
    x = keras.layers.LSTM(UNITS, return_sequences=True, name="rnn")(inp)
    x = keras.layers.LayerNormalization(name="ln")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(keras.layers.Flatten()(x)))
    masked, shrunk, report = _prune_both(cli, model, tmp_path)

    def dead_units(m):
        kernel = np.asarray(m.get_layer("rnn").cell.kernel).reshape(FEATURES, 4, UNITS)
        return int((~kernel.any(axis=(0, 1))).sum())

    assert dead_units(masked) == UNITS // 2  # half the units masked, every gate
    assert shrunk.get_layer("rnn").units == UNITS and dead_units(shrunk) == 0
    assert any(
        "not pruned: --shrink cannot remove them" in n and "ln (LayerNormalization)" in n for n in report["notes"]
    )


@pytest.mark.slow
def test_embedding_lstm_at_the_default_scope(cli, tmp_path):
    """Embedding -> LSTM(64) -> Dense(3) at the defaults (global LAMP): the LSTM loses units for real,
    and the Embedding its pruned columns with the LSTM's kernel rows that read them."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12,), dtype="int32")
    x = keras.layers.LSTM(64, name="lstm")(keras.layers.Embedding(50, 16, name="emb")(inp))
    model = keras.Model(inp, keras.layers.Dense(3, activation="softmax", name="out")(x))
    path, out, report = tmp_path / "m.keras", tmp_path / "o.keras", tmp_path / "r.json"
    model.save(path)
    result = cli("prune", path, "-g", "neuron", "-s", "0.5", "--shrink", "-o", out, "--report", report, "-q")
    assert result.exit_code == 0, result.output
    shrink = json.loads(report.read_text())["shrink"]
    shrunk = keras.models.load_model(out)
    units, width = shrunk.get_layer("lstm").units, shrunk.get_layer("emb").output_dim
    assert units < 64 and shrink["layers"]["lstm"] == {"before": 64, "after": units}
    assert width < 16 and shrink["layers"]["emb"] == {"before": 16, "after": width}
    assert shrink["params_after"] == 50 * width + 4 * units * (width + units + 1) + units * 3 + 3
    assert shrink["params_before"] == 50 * 16 + 4 * 64 * (16 + 64 + 1) + 64 * 3 + 3
    assert shrink["verification"]["max_abs_diff"] <= 1e-5


@pytest.mark.slow  # 1-2 s alone: the full suite (fast subset at its 120 s limit)
def test_an_rnn_behind_a_padding_mask_shrinks(cli, tmp_path):
    """Embedding(mask_zero=True) -> LSTM -> masked average pooling, the common Keras text model: Keras
    passes the padding mask as `mask=`, which the channel graph read as a second input ("takes an
    initial state"), so the LSTM could not lose a unit. It shrinks now, computing what the masked model
    does on padded token rows."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((STEPS,), dtype="int32")
    x = keras.layers.Embedding(20, FEATURES, mask_zero=True, name="emb")(inp)
    x = keras.layers.LSTM(UNITS, return_sequences=True, name="rnn")(x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    model = keras.Model(inp, keras.layers.Dense(3, name="out")(keras.layers.Dense(6, name="hidden")(x)))
    masked, shrunk, report = _prune_both(cli, model, tmp_path, "--exclude", "emb")
    assert shrunk.get_layer("rnn").units == UNITS // 2
    assert not any("takes an initial state" in n for n in report["notes"])
    tokens = np.random.default_rng(3).integers(1, 20, (16, STEPS)).astype("int32")
    tokens[:, 4:] = 0  # padding the mask hides
    np.testing.assert_allclose(np.asarray(masked(tokens)), np.asarray(shrunk(tokens)), atol=1e-5, rtol=1e-5)
