"""Calibrated one-shot pruning stays bounded in memory and is never silently wrong: Wanda keeps only
the Hessian's diagonal, convolutions feed bounded blocks of im2col rows, the Hessian is sized before
it is allocated (exit 6), degenerate calibration inputs fall back to magnitude with a note, and no
calibrated layer ends with more zeros than asked."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import calibration_config, every_target

from prunecli.errors import ExitCode, ResourceError

EXAMPLE = "examples/digits_cnn.keras"
DATA = "examples/digits.npz"


def _dense_model(d_in=16, hidden=8, out=3, seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((d_in,))
    h = keras.layers.Dense(hidden, activation="relu", name="d1", bias_initializer="ones")(inp)
    return keras.Model(inp, keras.layers.Dense(out, name="d2")(h))


def _conv_model(seed=1):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((10, 3))
    h = keras.layers.Conv1D(6, 3, padding="valid", name="c1", activation="relu", bias_initializer="ones")(inp)
    h = keras.layers.Flatten()(h)
    return keras.Model(inp, keras.layers.Dense(4, name="fc")(h))


def _zero_fraction(t) -> float:
    return float(np.mean(np.asarray(t.variable) == 0))


# --- memory ---------------------------------------------------------------------------------------


def test_wanda_keeps_only_the_diagonal(monkeypatch):
    """Wanda never builds a d_in x d_in array, and its masks are those of |w| * ||x_j|| per output."""
    import tensorflow as tf

    from prunecli.calibration import capture, prune_calibrated

    d_in = 256
    model = _dense_model(d_in, 6, 2)
    x = (np.random.default_rng(0).normal(size=(96, d_in)) * np.linspace(0.1, 5, d_in)).astype("float32")
    w0 = np.asarray(model.get_layer("d1").kernel)
    shapes = []
    for name in ("zeros", "fill", "eye"):
        original = getattr(tf, name)

        def spy(*args, _original=original, **kw):
            out = _original(*args, **kw)
            shapes.append(tuple(out.shape))
            return out

        monkeypatch.setattr(tf, name, spy)
    capture.HessianCapture.peak_floats = 0
    capture.HessianCapture.peak_accumulator_floats = 0
    res = prune_calibrated(model, every_target(model), [x], calibration_config("wanda", sparsity=0.5))
    assert (d_in, d_in) not in shapes
    assert capture.HessianCapture.peak_floats == 0
    assert capture.HessianCapture.peak_accumulator_floats == d_in  # O(d_in), not d_in^2
    norms = np.sqrt((x.astype(np.float64) ** 2).sum(0))
    score = np.abs(w0) * norms[:, None]
    expected = np.argsort(np.argsort(score, axis=0, kind="stable"), axis=0, kind="stable") >= d_in // 2
    np.testing.assert_array_equal(np.asarray(res.masks["d1/kernel"]), expected)
    entry = res.section["layers"]["d1/kernel"]  # measured on the next pass, without a Hessian
    assert entry["error_after"] is not None and 0 < entry["error_after"] < 1


def test_conv_blocks_are_bounded_and_exact():
    """A conv layer's X^T X from blocks of at most 7 im2col rows equals the one from all rows at once
    (same, valid, causal, strided and dilated convolutions), and no block is larger."""
    import keras

    from prunecli.calibration import capture, views

    keras.utils.set_random_seed(2)
    inp = keras.Input((9, 9, 3))
    h = keras.layers.Conv2D(4, 3, strides=2, padding="same", name="a")(inp)
    h = keras.layers.Conv2D(4, 2, dilation_rate=2, padding="valid", name="b")(h)
    h = keras.layers.Reshape((-1, 4))(h)
    h = keras.layers.Conv1D(5, 3, padding="causal", dilation_rate=2, name="c")(h)
    model = keras.Model(inp, h)
    x = np.random.default_rng(0).normal(size=(5, 9, 9, 3)).astype("float32")
    batches = capture.chunks([x], 2)
    for t in every_target(model):
        view = views.view_of(t)
        whole = capture.HessianCapture(view, 1, full=True, max_rows=10**9).run(model, batches)
        capture.HessianCapture.peak_block_rows = 0
        small = capture.HessianCapture(view, 1, full=True, max_rows=7).run(model, batches)
        assert capture.HessianCapture.peak_block_rows <= 7, t.name
        assert small.rows == whole.rows > 7
        np.testing.assert_allclose(np.asarray(small.hessian), np.asarray(whole.hessian), rtol=1e-4, atol=1e-5)


def test_a_hessian_too_big_for_memory_leaves_its_layer_to_wanda(monkeypatch):
    """A layer whose input Hessian does not fit in free memory (a Dense after a wide Flatten) is pruned
    by Wanda instead of SparseGPT (its input norms need O(d_in)), with the reason in the report and a
    note; the run goes on. Only a layer whose input rows alone do not fit ends the run (exit 6, one
    line), before anything is captured or pruned."""
    from prunecli.calibration import oneshot, prune_calibrated, reconstruct

    model = _dense_model(1024, 4, 2)
    x = np.random.default_rng(0).normal(size=(8, 1024)).astype("float32")
    monkeypatch.setattr(oneshot, "_available_memory", lambda: 2 * 2**20)  # 2 MiB; H is 4 MiB
    res = prune_calibrated(model, every_target(model), [x], calibration_config("sparsegpt", sparsity=0.5))
    why = res.section["fallback"]["d1/kernel"]
    assert "1024 x 1024 input Hessian is 4.0 MiB" in why and "2.0 MiB of memory is free" in why
    assert any(n.startswith("d1: pruned by Wanda, not SparseGPT (its 1024 x 1024") for n in res.notes)
    assert _zero_fraction(every_target(model)[0]) == pytest.approx(0.5)
    assert "d2/kernel" not in res.section["fallback"]  # the layer that fits is still calibrated
    wanda = _dense_model(1024, 4, 2)
    prune_calibrated(wanda, every_target(wanda), [x], calibration_config("wanda", sparsity=0.5))
    np.testing.assert_array_equal(  # d1 as Wanda prunes it (d1 comes first: the same inputs)
        np.asarray(every_target(model)[0].variable), np.asarray(every_target(wanda)[0].variable)
    )
    masks = {t.name: np.ones(t.shape, bool) for t in every_target(model)}
    assert "d1/kernel" in reconstruct(model, every_target(model), masks, [x])["fallback"]
    # Wanda needs only O(d_in): the same budget is enough
    fresh = _dense_model(1024, 4, 2)
    res = prune_calibrated(fresh, every_target(fresh), [x], calibration_config("wanda", sparsity=0.5))
    assert _zero_fraction(every_target(fresh)[0]) == pytest.approx(0.5)
    assert not res.section["fallback"]
    monkeypatch.setattr(oneshot, "_available_memory", lambda: 1024)  # not even one block of input rows
    fresh = _dense_model(1024, 4, 2)
    with pytest.raises(ResourceError) as info:
        prune_calibrated(fresh, every_target(fresh), [x], calibration_config("sparsegpt", sparsity=0.5))
    assert info.value.exit_code == ExitCode.RESOURCE == 6
    assert "d1" in info.value.message and "\n" not in info.value.message


def test_memory_that_shrinks_after_the_plan_leaves_the_layer_to_wanda(monkeypatch):
    """Free memory is read again as each layer starts: a layer whose Hessian fitted when the run was
    planned but no longer does (the cached activations, another process) is pruned by Wanda instead of
    SparseGPT, with the plan's note and reason, and the run goes on (DeepVOG's 25,600-input layer was
    killed out of memory there); --reconstruct leaves it unrefit, plain scores give it |w|."""
    import tensorflow as tf

    from prunecli.calibration import oneshot, prune_calibrated, reconstruct

    x = np.random.default_rng(0).normal(size=(8, 1024)).astype("float32")
    free = {"bytes": 2**40}  # plenty while the plan is checked; 2 MiB once the layers run (H is 4 MiB)
    monkeypatch.setattr(oneshot, "_available_memory", lambda: free["bytes"])
    real_plan = oneshot.check_memory

    def check_then_shrink(*args):
        real_plan(*args)
        free["bytes"] = 2 * 2**20

    monkeypatch.setattr(oneshot, "check_memory", check_then_shrink)
    model = _dense_model(1024, 4, 2)
    res = prune_calibrated(model, every_target(model), [x], calibration_config("sparsegpt", sparsity=0.5))
    why = res.section["fallback"]["d1/kernel"]
    assert (
        why
        == "its 1024 x 1024 input Hessian is 4.0 MiB, 3 of them while SparseGPT factors it, and 2.0 MiB of memory is free"
    )
    assert f"d1: pruned by Wanda, not SparseGPT ({why})" in res.notes
    assert "d2/kernel" not in res.section["fallback"] and "d2/kernel" in res.section["layers"]
    free["bytes"] = 2**40
    wanda = _dense_model(1024, 4, 2)
    prune_calibrated(wanda, every_target(wanda), [x], calibration_config("wanda", sparsity=0.5))
    np.testing.assert_array_equal(
        np.asarray(every_target(model)[0].variable), np.asarray(every_target(wanda)[0].variable)
    )
    free["bytes"] = 2**40
    fresh = _dense_model(1024, 4, 2)
    masks = {t.name: np.ones(t.shape, bool) for t in every_target(fresh)}
    section = reconstruct(fresh, every_target(fresh), masks, [x])
    assert section["fallback"]["d1/kernel"].startswith(
        "its 1024 x 1024 input Hessian is 4.0 MiB, 3 of them while refitting"
    )
    free["bytes"] = 2**40
    plan = oneshot._plan(fresh, every_target(fresh), [x], [], {})
    free["bytes"] = 2 * 2**20
    notes, fallback = [], {}
    scores = oneshot.layer_scores("sparsegpt", plan, fresh, notes, fallback)
    np.testing.assert_array_equal(np.asarray(scores["d1/kernel"]), np.abs(np.asarray(every_target(fresh)[0].variable)))
    assert "SparseGPT scores it" in fallback["d1/kernel"] and "d2/kernel" not in fallback
    assert tf.reduce_all(tf.math.is_finite(scores["d2/kernel"]))


@pytest.mark.slow  # 2.2 s and the trained MLP fixture: the library test above keeps the fast subset's case
def test_the_command_goes_on_when_memory_shrinks_after_the_plan(monkeypatch, cli, mlp_files, tmp_path):
    """`prunecli prune --method sparsegpt` with no room left for any Hessian once the layers run: exit 0,
    every calibrated layer pruned by Wanda at the asked sparsity, each named with its reason in the
    report's notes and calibration fallback."""
    import json

    from prunecli.calibration import oneshot

    free = {"bytes": 2**40}
    monkeypatch.setattr(oneshot, "_available_memory", lambda: free["bytes"])
    real_plan = oneshot.check_memory

    def check_then_shrink(*args):
        real_plan(*args)
        free["bytes"] = 0

    monkeypatch.setattr(oneshot, "check_memory", check_then_shrink)
    out, report = tmp_path / "o.keras", tmp_path / "r.json"
    args = ("--method", "sparsegpt", "--data", mlp_files["data"], "-s", "0.5", "--scope", "layer")
    result = cli("prune", mlp_files["keras"], *args, "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    fallback = r["calibration"]["fallback"]
    assert fallback and all("of memory is free" in why for why in fallback.values())
    assert sum("pruned by Wanda, not SparseGPT (its" in n for n in r["notes"]) == len(fallback)
    assert all(layer["sparsity"] == pytest.approx(0.5, abs=0.02) for layer in r["layers"])


# --- degenerate inputs ------------------------------------------------------------------------------


def _degenerate(kind, shape):
    rng = np.random.default_rng(0)
    if kind == "zeros":
        return np.zeros(shape, "float32")
    if kind == "tiny":
        return (rng.normal(size=shape) * 1e-40).astype("float32")
    return np.full(shape, 0.7, "float32")  # every value the same: constant rows, conv patches too


@pytest.mark.parametrize("kind", ["zeros", "tiny", "constant"])
@pytest.mark.parametrize(
    "method",  # plain sparsegpt in the full suite: sparsegpt+reconstruct runs its calibration, then the refit
    [pytest.param("sparsegpt", marks=pytest.mark.slow), "wanda", "sparsegpt+reconstruct"],
)
@pytest.mark.parametrize("arch", ["dense", "conv"])
def test_degenerate_inputs_fall_back_with_the_requested_sparsity(kind, method, arch):
    from prunecli.calibration import prune_calibrated

    model = _dense_model() if arch == "dense" else _conv_model()
    x = _degenerate(kind, (48, 16) if arch == "dense" else (48, 10, 3))
    ts = every_target(model)
    name, reconstruct = method.split("+")[0], method.endswith("reconstruct")
    res = prune_calibrated(model, ts, [x], calibration_config(name, sparsity=0.5, reconstruct=reconstruct))
    first = ts[0]
    assert first.name in res.section["fallback"]
    assert any(n.startswith(f"{first.layer_name}: calibration fell back to magnitude (") for n in res.notes)
    for t in ts:
        kernel = np.asarray(t.variable)
        assert np.mean(kernel == 0) == pytest.approx(0.5, abs=1 / kernel.size), t.name  # not 1.0
        assert np.isfinite(kernel).all()


def test_reconstruct_on_zero_inputs_keeps_the_mask_and_notes_it():
    """Before: the refit on an all-zero Hessian zeroed every kept weight (82 of 83 weights 0)."""
    import tensorflow as tf

    from prunecli.calibration import reconstruct
    from prunecli.selection import policy

    model = _dense_model()
    ts = every_target(model)
    ms = policy.build_masks(ts, {t.name: tf.abs(t.variable) for t in ts}, "element", calibration_config(sparsity=0.5))
    dense = {t.name: np.asarray(t.variable).copy() for t in ts}
    section = reconstruct(model, ts, ms.masks, [np.zeros((32, 16), "float32")])
    for t in ts:
        keep = np.asarray(ms.masks[t.name])
        np.testing.assert_array_equal(np.asarray(t.variable), np.where(keep, dense[t.name], 0))
    assert "d1/kernel" in section["fallback"] and not section["layers"].get("d1/kernel")
    assert any(n.startswith("d1: not refit (") for n in section["notes"])


def test_tiny_but_normal_inputs_are_rescaled_not_zeroed():
    """Inputs of 2^-70 (squares below float32's range) calibrate like the same inputs at scale 1."""
    from prunecli.calibration import prune_calibrated

    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    masks, kernels = [], []
    for scale in (1.0, 2.0**-70):
        model = _dense_model()
        ts = every_target(model)
        res = prune_calibrated(model, ts[:1], [x * np.float32(scale)], calibration_config("sparsegpt", sparsity=0.5))
        assert not res.section["fallback"]
        masks.append(np.asarray(res.masks["d1/kernel"]))
        kernels.append(np.asarray(ts[0].variable))
    np.testing.assert_array_equal(masks[0], masks[1])
    np.testing.assert_allclose(kernels[0], kernels[1], rtol=1e-3, atol=1e-5)


def test_dead_inputs_never_add_zeros():
    """SparseGPT prunes inputs that are always zero first, but a layer with 75% dead inputs pruned to
    50% keeps the rest of them (before: every dead weight was zeroed, 75% sparsity)."""
    from prunecli.calibration import prune_calibrated

    model = _dense_model(16, 8, 3)
    x = np.random.default_rng(0).normal(size=(64, 16)).astype("float32")
    x[:, 4:] = 0
    ts = every_target(model)
    res = prune_calibrated(model, ts[:1], [x], calibration_config("sparsegpt", sparsity=0.5))
    assert "d1/kernel" in res.section["layers"] and not res.section["fallback"]
    kernel, keep = np.asarray(ts[0].variable), np.asarray(res.masks["d1/kernel"])
    assert np.sum(kernel == 0) == 64 == np.sum(~keep)
    assert (~keep[4:]).sum() == 64  # the pruned weights are all dead ones


def test_result_with_more_zeros_than_asked_falls_back(monkeypatch):
    """The per-layer check after calibration: an update that zeroes kept weights is not kept."""
    import tensorflow as tf

    from prunecli.calibration import prune_calibrated, sparsegpt

    real = sparsegpt.prune_matrix

    def zeroing(w, hessian, name, **kw):
        _, keep, used = real(w, hessian, name, **kw)
        return tf.zeros_like(w), keep, used

    monkeypatch.setattr(sparsegpt, "prune_matrix", zeroing)
    model = _dense_model()
    ts = every_target(model)
    x = np.random.default_rng(0).normal(size=(32, 16)).astype("float32")
    res = prune_calibrated(model, ts, [x], calibration_config("sparsegpt", sparsity=0.5))
    for t in ts:
        assert _zero_fraction(t) == pytest.approx(0.5, abs=1 / t.size)
        assert "zero where" in res.section["fallback"][t.name]


# --- models that could not be calibrated --------------------------------------------------------------


def test_stateful_rnn_falls_back_and_single_weight_works():
    import keras

    from prunecli.calibration import prune_calibrated, sparsegpt

    keras.utils.set_random_seed(0)
    inp = keras.Input((5, 4), batch_size=8)
    h = keras.layers.SimpleRNN(6, stateful=True, name="rnn")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="fc")(h))
    x = np.random.default_rng(0).normal(size=(20, 5, 4)).astype("float32")
    ts = every_target(model)
    res = prune_calibrated(model, ts, [x], calibration_config("sparsegpt", sparsity=0.5))
    assert "stateful" in res.section["fallback"]["fc/kernel"]
    assert _zero_fraction(next(t for t in ts if t.name == "fc/kernel")) == pytest.approx(0.5)

    # one input column: the block loop used to fail to trace (exit 1)
    w, keep, _ = sparsegpt.prune_matrix(
        np.array([[1.0, -2.0, 3.0]], "float32"), np.eye(1, dtype="float32"), "w", prune_count=1
    )
    assert np.sum(np.asarray(w) == 0) == 1 and np.sum(~np.asarray(keep)) == 1
    inp = keras.Input((1,))
    model = keras.Model(inp, keras.layers.Dense(1, use_bias=False, name="w")(inp))
    res = prune_calibrated(model, every_target(model), [x[:, 0, :1]], calibration_config("sparsegpt", sparsity=0.5))
    assert "w/kernel" in res.masks


def test_a_declared_batch_size_binds_only_a_stateful_model(tmp_path):
    """Input(batch_size=...) without a stateful layer binds nothing (Keras runs the model on any batch): its
    data is read at --batch-size and every calibration example is used. ao-compensation-model's gait GRU
    declares 128, and every --data command was refused ("give --batch-size 128"; bench/ZOO.md). A stateful
    RNN's declared size still binds."""
    import keras

    from prunecli.calibration import prune_calibrated
    from prunecli.errors import ConfigError
    from prunecli.io import data as pdata

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), batch_size=8)
    model = keras.Model(inp, keras.layers.UnitNormalization(name="unit")(keras.layers.Dense(4, name="fc")(inp)))
    x = np.random.default_rng(0).normal(size=(20, 16)).astype("float32")
    res = prune_calibrated(model, every_target(model), [x], calibration_config("sparsegpt", sparsity=0.5))
    assert res.section["layers"]["fc/kernel"]["rows"] == 20
    assert not any("left out" in n for n in res.notes)
    path = tmp_path / "d.npz"
    np.savez(path, x=x, y=x[:, :4])
    assert pdata.load(str(path), model, batch_size=16).n_train == 20
    seq = keras.Input((3, 16), batch_size=8)
    stateful = keras.Model(seq, keras.layers.SimpleRNN(4, stateful=True)(seq))
    np.savez(path, x=x[:, None].repeat(3, 1), y=x[:, :4])
    with pytest.raises(ConfigError, match="fixed batch size of 8"):
        pdata.load(str(path), stateful, batch_size=16)


# --- labels are never needed --------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_inputs_only_data(method):
    """Calibration reads x alone: a dataset of inputs without labels works for both the one-shot path
    and the registry's scores."""
    import tensorflow as tf

    from prunecli import scoring
    from prunecli.calibration import prune_calibrated, take_examples
    from prunecli.scoring.registry import ScoringContext

    x = np.random.default_rng(0).normal(size=(40, 16)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices(x).batch(16)  # no y anywhere
    examples = take_examples(dataset, 40)
    assert sum(len(b) for b in examples) == 40
    model = _dense_model()
    ts = every_target(model)
    res = prune_calibrated(model, ts, examples, calibration_config(method, sparsity=0.5))
    assert set(res.section["layers"]) == {t.name for t in ts}
    assert all(_zero_fraction(t) == pytest.approx(0.5, abs=1 / t.size) for t in ts)
    model = _dense_model()
    ts = every_target(model)
    scores = scoring.get(method).fn(ts, ScoringContext(model=model, targets=ts, data=dataset))
    assert {k: tuple(v.shape) for k, v in scores.items()} == {t.name: tuple(t.shape) for t in ts}


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_degenerate_inputs_under_the_global_allocation_keep_the_whole_budget(method):
    """With --scope global, layers whose inputs are all zero are ranked by |w| and fall
    back to magnitude inside their share: the run still prunes exactly the budget, empties no layer."""
    from prunecli.calibration import prune_calibrated

    model = _conv_model()
    ts = every_target(model)
    x = _degenerate("zeros", (16, *model.inputs[0].shape[1:]))
    res = prune_calibrated(model, ts, [x], calibration_config(method, sparsity=0.6, scope="global"))
    pruned = sum(int(np.sum(np.asarray(t.variable) == 0)) for t in ts)
    assert pruned == round(0.6 * sum(t.size for t in ts))
    assert all(_zero_fraction(t) < 1.0 for t in ts)
    assert res.section["fallback"] and res.section["allocation"].startswith("global")
