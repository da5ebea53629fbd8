"""Recurrent layers are calibrated (views.py): the input kernel (kind "rnn") on the RNN layer's input
sequence as (batch*T, d_in) rows, the recurrent kernel (kind "recurrent") on the hidden states h_(t-1)
before each step, both less the timesteps a Keras mask marks as padding. LSTM, GRU and SimpleRNN,
inside Bidirectional too, with return_sequences either way, through the cached graph walk and the
prefix passes alike."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import calibration_config, every_target, prune_one_target

T, D, UNITS = 9, 6, 5
CELLS = ("LSTM", "GRU", "SimpleRNN")


@pytest.fixture(params=[False, True], ids=["recurrent_on_magnitude", "recurrent_calibrated"])
def recurrent(request, monkeypatch):
    """Whether recurrent kernels are calibrated (views.CALIBRATE_RECURRENT_KERNEL, off by default)."""
    from prunecli.calibration import views

    monkeypatch.setattr(views, "CALIBRATE_RECURRENT_KERNEL", request.param)
    return request.param


# the walks' equalities with each method once: Wanda beside magnitude-pruned recurrent kernels (the
# default), SparseGPT's weight updates on every kernel calibrated (each pairing alone covers its paths)
METHOD_AND_RECURRENT = [("wanda", False), ("sparsegpt", True)]


@pytest.fixture
def recurrent_on(monkeypatch):
    from prunecli.calibration import views

    monkeypatch.setattr(views, "CALIBRATE_RECURRENT_KERNEL", True)


def _sequences(n=48, seed=0):
    """Correlated inputs (a random mixing of fewer latent features), so the Hessian is not diagonal."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, T, 3))
    return (z @ rng.normal(size=(3, D)) + 0.1 * rng.normal(size=(n, T, D))).astype("float32")


def _float_model(cell="LSTM", bidirectional=False, return_sequences=False):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((T, D))
    rnn = getattr(keras.layers, cell)(UNITS, return_sequences=return_sequences, name="rnn")
    h = keras.layers.Bidirectional(rnn, name="bi")(inp) if bidirectional else rnn(inp)
    if return_sequences:
        h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(h))


def _token_model():
    """Embedding(mask_zero) -> Bidirectional(LSTM, sequences) -> GRU -> Dense: every RNN gets a mask."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((T,), dtype="int32")
    h = keras.layers.Embedding(30, D, mask_zero=True, name="emb")(inp)
    h = keras.layers.Bidirectional(keras.layers.LSTM(UNITS, return_sequences=True, name="lstm"), name="bi")(h)
    h = keras.layers.GRU(4, name="gru")(h)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(h))


def _tokens(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 30, size=(n, T)).astype("int32")
    lengths = rng.integers(2, T + 1, size=n)
    for i, n_keep in enumerate(lengths):
        x[i, n_keep:] = 0  # padding at the end
    return x


def _target(model, suffix):
    found = [t for t in every_target(model) if t.name.endswith(suffix)]
    assert len(found) == 1, [t.name for t in every_target(model)]
    return found[0]


def test_recurrent_kernel_stays_on_magnitude_by_default():
    from prunecli.calibration import views

    model = _float_model("LSTM")
    why = views.view_of(_target(model, "recurrent_kernel"), model)
    assert isinstance(why, str) and "compounds" in why
    assert views.view_of(_target(model, "lstm_cell/kernel"), model).kind == "rnn"


def test_views_of_recurrent_kernels(recurrent_on):
    from prunecli.calibration import views

    model = _float_model("LSTM", bidirectional=True)
    for t in every_target(model):
        v = views.view_of(t, model)
        assert not isinstance(v, str), (t.name, v)
        expected = (
            {"kernel": "rnn", "recurrent_kernel": "recurrent"}[t.attr] if t.layer_class == "LSTMCell" else "dense"
        )
        assert v.kind == expected, t.name
    fwd = views.view_of(_target(model, "forward_rnn/lstm_cell/kernel"), model)
    bwd = views.view_of(_target(model, "backward_rnn/lstm_cell/kernel"), model)
    bi = model.get_layer("bi")
    assert (fwd.kind, fwd.d_in, fwd.d_out) == ("rnn", D, 4 * UNITS)
    assert fwd.layer is bi.forward_layer and bwd.layer is bi.backward_layer
    # without the model, the RNN layer is unknown: a reason, not a wrong view
    assert isinstance(views.view_of(_target(model, "forward_rnn/lstm_cell/kernel")), str)
    # a GRU whose reset gate multiplies h_(t-1) before the recurrent kernel is not X @ W
    import keras

    gru = keras.Sequential([keras.Input((T, D)), keras.layers.GRU(UNITS, reset_after=False)])
    why = views.view_of(_target(gru, "recurrent_kernel"), gru)
    assert isinstance(why, str) and "reset_after" in why
    assert not isinstance(views.view_of(_target(gru, "gru_cell/kernel"), gru), str)


def test_wanda_scores_are_weight_times_input_sequence_norms():
    """Wanda's mask on an LSTM's input kernel is the per-output lowest |W_ij| * ||x_j||, the norm over
    every timestep of every example, computed here by hand in NumPy."""
    from prunecli.calibration import prune_calibrated, wanda

    model = _float_model("LSTM")
    x = _sequences()
    t = _target(model, "rnn/lstm_cell/kernel")
    w = np.asarray(t.variable).copy()
    res = prune_calibrated(model, every_target(model), [x[:20], x[20:]], calibration_config("wanda", sparsity=0.5))
    assert t.name not in res.section["fallback"]
    assert res.section["layers"][t.name]["rows"] == x.shape[0] * T
    norms = np.sqrt((x.reshape(-1, D).astype(np.float64) ** 2).sum(0))
    score = np.abs(w) * norms[:, None]
    k = w.size // 2
    expected = np.asarray(wanda.per_output_keep(score, k))
    np.testing.assert_array_equal(np.asarray(res.masks[t.name]), expected)
    assert int((~np.asarray(res.masks[t.name])).sum()) == k
    np.testing.assert_array_equal(np.asarray(t.variable), np.where(expected, w, 0))


def test_captured_hessian_skips_masked_timesteps():
    """With Embedding(mask_zero=True), X holds only the real tokens' embeddings: the captured sums and
    Hessian equal those of the unpadded rows, by hand."""
    from prunecli.calibration import capture, frontier, views

    model = _token_model()
    x = _tokens()
    emb = np.asarray(model.get_layer("emb").embeddings)
    rows = emb[x[x != 0]].astype(np.float64)
    for suffix in ("forward_lstm/lstm_cell/kernel", "backward_lstm/lstm_cell/kernel"):
        view = views.view_of(_target(model, suffix), model)
        stats = frontier.PrefixPasses(model, [x[:16], x[16:]]).capture(view, 1, True)
        assert stats.rows == len(rows) < x.size
        np.testing.assert_allclose(stats.sumsq / stats.scale**2, (rows**2).sum(0), rtol=1e-4)
        np.testing.assert_allclose(
            np.asarray(stats.hessian) / stats.scale**2, rows.T @ rows / len(rows), rtol=1e-4, atol=1e-6
        )
    # the GRU reads the Bidirectional's output sequence, masked the same way
    gru = views.view_of(_target(model, "gru/gru_cell/kernel"), model)
    seq = capture.layer_input(model, model.get_layer("gru"), x)
    stats = frontier.PrefixPasses(model, [x]).capture(gru, 1, True)
    kept = np.asarray(seq, np.float64)[x != 0]
    assert stats.rows == len(kept)
    np.testing.assert_allclose(
        np.asarray(stats.hessian) / stats.scale**2, kept.T @ kept / len(kept), rtol=1e-4, atol=1e-6
    )


def test_recurrent_kernel_rows_are_the_previous_hidden_states(recurrent_on):
    """No mask: X of the recurrent kernel is [h_0 = 0, h_1, ..., h_(T-1)] per example, the outputs of the
    same layer returning sequences (return_sequences=False on the model's layer)."""
    import keras

    from prunecli.calibration import frontier, views

    model = _float_model("LSTM")
    x = _sequences(20)
    lstm = model.get_layer("rnn")
    twin = keras.layers.LSTM(UNITS, return_sequences=True)
    twin(x[:1])
    twin.set_weights(lstm.get_weights())
    out = np.asarray(twin(x), np.float64)
    rows = np.concatenate([np.zeros((len(x), 1, UNITS)), out[:, :-1]], 1).reshape(-1, UNITS)
    view = views.view_of(_target(model, "recurrent_kernel"), model)
    stats = frontier.PrefixPasses(model, [x[:8], x[8:]]).capture(view, 1, True)
    assert stats.rows == len(rows) and lstm.return_sequences is False
    np.testing.assert_allclose(
        np.asarray(stats.hessian) / stats.scale**2, rows.T @ rows / len(rows), rtol=1e-4, atol=1e-6
    )


def test_recurrent_kernel_rows_skip_padding_backwards(recurrent_on):
    """Embedding(mask_zero) -> Bidirectional: the backward LSTM's X is, per example, the states before
    each real token when run backwards on the unpadded sequence (the padding's carried state never
    counts), computed here one example at a time."""
    import keras

    from prunecli.calibration import frontier, views

    model = _token_model()
    x = _tokens(24)
    backward = model.get_layer("bi").backward_layer
    emb = np.asarray(model.get_layer("emb").embeddings)
    twin = keras.layers.LSTM(UNITS, return_sequences=True, go_backwards=True)
    twin(emb[x[:1]])
    twin.set_weights(backward.get_weights())
    rows = []
    for seq in x:
        real = emb[seq[seq != 0]][None]
        out = np.asarray(twin(real), np.float64)[0]
        rows.append(np.concatenate([np.zeros((1, UNITS)), out[:-1]], 0))
    rows = np.concatenate(rows, 0)
    view = views.view_of(_target(model, "backward_lstm/lstm_cell/recurrent_kernel"), model)
    stats = frontier.PrefixPasses(model, [x]).capture(view, 1, True)
    assert stats.rows == len(rows) == int((x != 0).sum())
    np.testing.assert_allclose(
        np.asarray(stats.hessian) / stats.scale**2, rows.T @ rows / len(rows), rtol=1e-4, atol=1e-6
    )


def _pre_activation_error(x_rows, w, w_dense):
    return np.linalg.norm(x_rows @ (w - w_dense)) / np.linalg.norm(x_rows @ w_dense)


def _output_error(model, x, dense_out):
    out = np.asarray(model(x, training=False))
    return np.linalg.norm(out - dense_out) / np.linalg.norm(dense_out)


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_sparsegpt_beats_magnitude_on_an_lstm_input_kernel(sparsity):
    """Only the LSTM's input kernel pruned: SparseGPT's X (W - W_dense) on the calibration sequence is
    below magnitude's, and so is the LSTM's own output error."""
    import keras

    from prunecli.calibration import prune_calibrated

    x = _sequences(64)
    errors = {}
    for method in ("magnitude", "sparsegpt"):
        model = _float_model("LSTM", return_sequences=True)
        t = _target(model, "rnn/lstm_cell/kernel")
        w_dense = np.asarray(t.variable).copy()
        lstm = keras.Model(model.inputs, model.get_layer("rnn").output)
        dense_out = np.asarray(lstm(x, training=False))
        if method == "magnitude":
            k = int(round(sparsity * w_dense.size))
            order = np.argsort(np.abs(w_dense), axis=None, kind="stable")
            w = w_dense.reshape(-1).copy()
            w[order[:k]] = 0
            t.variable.assign(w.reshape(w_dense.shape))
        else:
            res = prune_calibrated(model, [t], [x], calibration_config("sparsegpt", sparsity=sparsity))
            assert res.section["fallback"] == {}
            keep = np.asarray(res.masks[t.name])
            assert int((~keep).sum()) == int(round(sparsity * w_dense.size))
            assert (np.asarray(t.variable)[~keep] == 0).all()
        w = np.asarray(t.variable)
        errors[method] = (_pre_activation_error(x.reshape(-1, D), w, w_dense), _output_error(lstm, x, dense_out))
    assert errors["sparsegpt"][0] < 0.9 * errors["magnitude"][0], errors
    assert errors["sparsegpt"][1] < errors["magnitude"][1], errors


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("return_sequences", [False, True])
def test_every_cell_is_calibrated_with_exact_sparsity(cell, bidirectional, return_sequences, recurrent):
    from prunecli.calibration import prune_calibrated

    model = _float_model(cell, bidirectional, return_sequences)
    x = _sequences(32)
    targets = every_target(model)
    res = prune_calibrated(model, targets, [x], calibration_config("sparsegpt", sparsity=0.6))
    kernels = [t for t in targets if t.attr == "kernel" and t.layer_class.endswith("Cell")]
    assert len(kernels) == (2 if bidirectional else 1)
    for t in kernels:
        assert t.name not in res.section["fallback"], res.section["fallback"]
        assert res.section["layers"][t.name]["rows"] == 32 * T
        assert res.section["layers"][t.name]["error_after"] <= res.section["layers"][t.name]["error_before"]
    recurrent_kernels = [t for t in targets if t.attr == "recurrent_kernel"]
    if recurrent:
        assert res.section["fallback"] == {}
        for t in recurrent_kernels:
            entry = res.section["layers"][t.name]
            assert entry["rows"] == 32 * T and entry["error_after"] <= entry["error_before"]
    else:
        assert set(res.section["fallback"]) == {t.name for t in recurrent_kernels}
        assert all("compounds" in why for why in res.section["fallback"].values())
    for t in targets:
        keep = np.asarray(res.masks[t.name])
        assert int((~keep).sum()) == int(round(0.6 * t.size)), t.name
        assert (np.asarray(t.variable)[~keep] == 0).all(), t.name
    assert not any("lstm_cell/kernel" in n or "gru_cell/kernel" in n for n in res.section["fallback"])


def _token_run(method):
    """_token_model calibrated by `method` at 50% on _tokens in two batches: the run's result, the weights
    after it, and the targets."""
    from prunecli.calibration import prune_calibrated

    model = _token_model()
    x = _tokens()
    targets = every_target(model)
    res = prune_calibrated(model, targets, [x[:24], x[24:]], calibration_config(method, sparsity=0.5))
    return res, [np.asarray(w) for w in model.weights], targets


_EAGER_CACHED_RUNS: dict = {}


def _eager_cached_run(method, recurrent):
    """_token_run through the cached walk and the eager loops, once per (method, recurrent) in a process:
    the run both the prefix passes and the compiled loops below are compared with."""
    from prunecli.calibration import frontier

    if (method, recurrent) not in _EAGER_CACHED_RUNS:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(frontier, "FRONTIER_BYTES", 2**30)
            _EAGER_CACHED_RUNS[method, recurrent] = _token_run(method)
    return _EAGER_CACHED_RUNS[method, recurrent]


@pytest.mark.parametrize(("method", "recurrent"), METHOD_AND_RECURRENT, indirect=["recurrent"])
def test_cached_walk_equals_prefix_passes_on_masked_rnns(method, recurrent, monkeypatch):
    from prunecli.calibration import frontier

    cached, wc, targets = _eager_cached_run(method, recurrent)
    monkeypatch.setattr(frontier, "FRONTIER_BYTES", 0)
    prefix, wp, _targets = _token_run(method)
    assert cached.section["passes"] == "cached" and prefix.section["passes"] == "prefix"
    calibrated = {t.name for t in targets if t.layer_class.endswith("Cell") and (recurrent or t.attr == "kernel")}
    assert len(calibrated) == (6 if recurrent else 3)  # input (and recurrent) kernels: forward, backward LSTM, GRU
    assert calibrated <= set(cached.section["layers"]), cached.section["fallback"]
    assert cached.section["fallback"] == prefix.section["fallback"]
    for name in cached.masks:
        np.testing.assert_array_equal(np.asarray(cached.masks[name]), np.asarray(prefix.masks[name]), err_msg=name)
    for a, b in zip(wc, wp, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for name in calibrated:
        err = cached.section["layers"][name]["error_after"]
        assert err is not None and err == pytest.approx(prefix.section["layers"][name]["error_after"], rel=1e-4)


def test_global_wanda_and_reconstruct_on_rnn():
    """The global allocation ranks the RNN input kernels by Wanda scores, and --reconstruct refits them."""
    from prunecli.calibration import prune_calibrated, reconstruct

    model = _token_model()
    x = _tokens()
    targets = every_target(model)
    res = prune_calibrated(model, targets, [x], calibration_config("wanda", sparsity=0.6, scope="global"))
    assert res.section["allocation"].startswith("global")
    total = sum(t.size for t in targets)
    pruned = sum(int((~np.asarray(res.masks[t.name])).sum()) for t in targets)
    assert abs(pruned - round(0.6 * total)) <= len(targets)
    assert "gru/gru_cell/kernel" in res.section["layers"]

    model = _token_model()
    targets = every_target(model)
    masks = {t.name: np.abs(np.asarray(t.variable)) > np.median(np.abs(np.asarray(t.variable))) for t in targets}
    section = reconstruct(model, targets, masks, [x])
    entry = section["layers"][_target(model, "gru_cell/kernel").name]
    assert entry["error_after"] < entry["error_before"]
    for t in targets:
        assert (np.asarray(t.variable)[~masks[t.name]] == 0).all()


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_sparsegpt_beats_magnitude_on_an_lstm_recurrent_kernel(sparsity, recurrent_on):
    """Only the recurrent kernel pruned: SparseGPT on the captured h_(t-1) lowers its own reconstruction
    error and the LSTM's output error below magnitude's."""
    import keras

    x = _sequences(64)
    errors = {}
    for method in ("magnitude", "sparsegpt"):
        model = _float_model("LSTM", return_sequences=True)
        t = _target(model, "rnn/lstm_cell/recurrent_kernel")
        lstm = keras.Model(model.inputs, model.get_layer("rnn").output)
        dense_out = np.asarray(lstm(x, training=False))
        entry = prune_one_target(method, model, t, x, sparsity)
        if entry is not None:
            assert entry["rows"] == 64 * T and entry["error_after"] < entry["error_before"]
        errors[method] = _output_error(lstm, x, dense_out)
    assert errors["sparsegpt"] < errors["magnitude"], errors


pytestmark = pytest.mark.slow  # whole module in the full suite only: the fast subset stays under 2 minutes


@pytest.mark.parametrize(("method", "recurrent"), METHOD_AND_RECURRENT, indirect=["recurrent"])
def test_compiled_loops_give_the_eager_masks_and_weights(method, recurrent):
    """A run's recurrent loops compiled (keras_graph.compiled_loops, entered by every run) calibrate
    exactly as the eager loops do: the same masks, the same updated weights, the same errors; inside
    the block the layers were called through their compiled call, and after it RNN.call is Keras' own."""
    import keras

    from prunecli.calibration import prune_calibrated
    from prunecli.structure import keras_graph

    own_call = keras.layers.RNN.call
    eager, we, _targets = _eager_cached_run(method, recurrent)  # the eager loops, outside any block
    assert keras.layers.RNN.call is own_call
    model = _token_model()
    x = _tokens()
    with keras_graph.compiled_loops():
        keras_graph.compile_loops()
        graph = prune_calibrated(model, every_target(model), [x[:24], x[24:]], calibration_config(method, sparsity=0.5))
    rnns = [layer for layer in keras_graph.all_layers(model) if isinstance(layer, keras.layers.RNN)]
    assert len(rnns) == 3 and all(keras_graph.COMPILED_CALL in vars(layer) for layer in rnns)
    wg = [np.asarray(w) for w in model.weights]
    assert keras.layers.RNN.call is own_call
    assert eager.section["fallback"] == graph.section["fallback"]
    for name in eager.masks:
        np.testing.assert_array_equal(np.asarray(eager.masks[name]), np.asarray(graph.masks[name]), err_msg=name)
    for a, b in zip(we, wg, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for name, entry in eager.section["layers"].items():
        assert graph.section["layers"][name]["error_after"] == pytest.approx(entry["error_after"], rel=1e-4)


def test_compiled_loops_nest_and_leave_hooks_eager():
    """Nested blocks patch once and restore once; a hook on an RNN layer still receives eager values
    (the capture reads them as arrays), and a hook on its cell makes the layer run its eager loop (the
    hook sees every step, eager values too)."""
    import keras

    from prunecli.calibration import capture
    from prunecli.structure import keras_graph

    model = _float_model("GRU")
    x = _sequences(8)
    expected = np.asarray(model(x))
    own_call = keras.layers.RNN.call
    rnn = model.get_layer("rnn")
    seen, steps = [], []
    keras_graph.compile_loops()  # outside a block: nothing patched
    assert keras.layers.RNN.call is own_call
    with keras_graph.compiled_loops():
        assert keras.layers.RNN.call is own_call  # entering imports and patches nothing
        keras_graph.compile_loops()
        patched = keras.layers.RNN.call
        assert patched is not own_call
        with keras_graph.compiled_loops():
            keras_graph.compile_loops()
            assert keras.layers.RNN.call is patched
        assert keras.layers.RNN.call is patched  # the inner block left the outer one's patch
        with capture._Wrapped(rnn, lambda value: seen.append(np.asarray(value))):
            np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-6)
        with capture._Wrapped(rnn.cell, lambda value: steps.append(np.asarray(value))):
            np.testing.assert_allclose(np.asarray(model(x)), expected, rtol=1e-5, atol=1e-6)
    assert keras.layers.RNN.call is own_call
    assert "call" not in vars(rnn) and "call" not in vars(rnn.cell)
    assert len(seen) == 1 and seen[0].shape == (8, T, D)
    assert len(steps) >= T and all(step.shape == (8, D) for step in steps)  # Keras' eager loop: once per step
