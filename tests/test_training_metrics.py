"""training/metrics.mean_loss: the loss layer, block and split candidates are scored by."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from prunecli.structure import equivalence  # noqa: E402
from prunecli.training import metrics  # noqa: E402


def _model_and_batches(sizes):
    keras.utils.set_random_seed(0)
    inp = keras.Input((5,))
    model = keras.Model(inp, keras.layers.Dense(3)(inp))
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((n, 5)).astype("float32"), rng.integers(0, 3, n).astype("int32")) for n in sizes]
    return model, batches


def _by_hand(model, batches) -> float:
    """Every example's cross-entropy, averaged over all examples (not a mean of batch means)."""
    losses = []
    for x, y in batches:
        logits = np.asarray(model(x), np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        losses.extend(-log_p[np.arange(len(y)), y])
    return float(np.mean(losses))


@pytest.mark.parametrize("sizes", [(7, 2), (8, 8, 8, 3, 1)], ids=["eager", "traced"])
def test_mean_loss_weights_each_example_once_traced_or_not(sizes):
    model, batches = _model_and_batches(sizes)
    loss = metrics.loss_callable(keras.losses.SparseCategoricalCrossentropy(from_logits=True), "test")
    step = metrics.loss_step(model, loss, batches)
    assert hasattr(step, "get_concrete_function") == (len(batches) >= equivalence.TRACE_FROM_BATCHES)
    assert metrics.mean_loss(model, batches, loss) == pytest.approx(_by_hand(model, batches), rel=1e-5)


def test_a_single_large_batch_is_traced(monkeypatch):
    """Few batches run eagerly (tracing would not pay) unless a batch holds more input values than
    EAGER_INPUT_ELEMENTS: then memory decides, and the step is traced; the loss is the same. A rebuild's
    one-batch equivalence check follows the same rule."""
    model, batches = _model_and_batches((7,))
    loss = metrics.loss_callable(keras.losses.SparseCategoricalCrossentropy(from_logits=True), "test")
    assert not hasattr(metrics.loss_step(model, loss, batches), "get_concrete_function")
    assert not equivalence.forward(model, [batches[0][0]]).traced
    monkeypatch.setattr(equivalence, "EAGER_INPUT_ELEMENTS", 7 * 5 - 1)  # one value fewer than the batch holds
    assert equivalence.forward(model, [batches[0][0]]).traced
    step = metrics.loss_step(model, loss, batches)
    assert hasattr(step, "get_concrete_function")
    assert metrics.mean_loss(model, batches, loss, step) == pytest.approx(_by_hand(model, batches), rel=1e-5)


def test_a_kept_step_reads_the_weights_as_they_are_now():
    """A model masked in place between measurements (-g transformer's splits) keeps one traced step."""
    model, batches = _model_and_batches((8, 8, 8, 8))
    loss = metrics.loss_callable(keras.losses.SparseCategoricalCrossentropy(from_logits=True), "test")
    step = metrics.loss_step(model, loss, batches)
    before = metrics.mean_loss(model, batches, loss, step)
    kernel = model.layers[-1].kernel
    kernel.assign(np.zeros(kernel.shape, "float32"))
    after = metrics.mean_loss(model, batches, loss, step)
    assert after != pytest.approx(before) and after == pytest.approx(_by_hand(model, batches), rel=1e-5)


def _dense_model(activation=None, compiled_loss=None, units=3):
    import keras

    inp = keras.Input((5,))
    model = keras.Model(inp, keras.layers.Dense(units, activation=activation, name="out")(keras.layers.Dense(8)(inp)))
    if compiled_loss:
        model.compile(loss=compiled_loss)
    return model


def test_the_task_follows_the_labels_and_the_output():
    """What the report measures a model by: real-valued targets are a regression (no accuracy, even
    with as many columns as classes, even when compiled with mse); class rows and class ids a
    classification; an uncompiled model whose output is no softmax is scored on logits."""
    import keras
    import numpy as np

    from prunecli.training.metrics import infer_task

    rng = np.random.default_rng(0)
    real = rng.normal(size=(16, 3)).astype("float32")
    ids = rng.integers(0, 3, 16)
    one_hot = np.eye(3, dtype="float32")[ids]
    for model in (_dense_model(), _dense_model(compiled_loss="mse"), _dense_model("softmax")):
        task = infer_task(model, real)
        assert task.accuracy is None and (task.loss == "mse" or getattr(model, "loss", None) == "mse")
    assert infer_task(_dense_model("softmax"), ids).accuracy == "sparse_categorical_accuracy"
    assert infer_task(_dense_model("softmax"), ids).loss == "sparse_categorical_crossentropy"
    assert infer_task(_dense_model("softmax"), one_hot).loss == "categorical_crossentropy"
    logits = infer_task(_dense_model(), ids)
    assert isinstance(logits.loss, keras.losses.SparseCategoricalCrossentropy) and logits.loss.from_logits
    assert infer_task(_dense_model(), one_hot).loss.from_logits
    compiled = infer_task(_dense_model(compiled_loss="sparse_categorical_crossentropy"), ids)
    assert compiled.loss == "sparse_categorical_crossentropy"  # a compiled loss is the model's own word


def test_forward_traces_repeated_calls_and_runs_an_untraceable_model_eagerly():
    """structure.equivalence.forward: a call repeated over enough passes is traced (one trace for
    passes of two sizes) and gives the eager outputs; a model whose call only runs eagerly (a custom
    layer reading .numpy()) falls back to its eager call with the same outputs."""
    model, batches = _model_and_batches((8, 8, 3))
    xs = [x for x, _y in batches]
    run = equivalence.forward(model, xs, calls=2)
    for x in xs:
        np.testing.assert_allclose(np.asarray(run(x)), np.asarray(model(x)), rtol=1e-6)
    assert run.traced and not equivalence.forward(model, xs[:1]).traced  # one small pass: eager

    class Eager(keras.layers.Layer):
        def call(self, x):
            return x * float(np.asarray(x.numpy()).mean() > -1e9)

        def compute_output_shape(self, shape):
            return shape

    inp = keras.Input((5,))
    eager_only = keras.Model(inp, Eager()(keras.layers.Dense(3)(inp)))
    run = equivalence.forward(eager_only, xs, calls=2)
    for x in xs:
        np.testing.assert_allclose(np.asarray(run(x)), np.asarray(eager_only(x)), rtol=1e-6)
    assert not run.traced
