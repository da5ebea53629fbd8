"""The task (loss and accuracy) used to evaluate a model, and evaluation itself.

The loss the model was compiled with is kept when the file has one (it knows about logits);
otherwise it is inferred from the output and the labels.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from prunecli.errors import ConfigError


@dataclass
class Task:
    loss: Any
    accuracy: str | None  # a Keras metric name, or None for regression
    accuracies: list | None = None  # several outputs: each output's metric name (or None)

    @property
    def measures_accuracy(self) -> bool:
        """Whether `evaluate` reports an accuracy for this task: a classifier's metric, some output's of
        several, or a causal LM's next-token accuracy (NextTokenLoss: no Keras metric, measured beside its
        loss and perplexity). What --max-accuracy-drop can judge."""
        return self.accuracy is not None or any(self.accuracies or ()) or isinstance(self.loss, NextTokenLoss)


CLASS_ACTIVATIONS = ("softmax", "sigmoid", "log_softmax")  # an output activation that makes class scores


def gives_class_scores(model, task: Task | None) -> bool:
    """Whether the model's first output is class scores, so that a converted or quantized copy's
    agreement on the top class means something: the task says so when the data has labels (an accuracy
    metric; None for a regression), and without labels the output's own activation does (softmax or
    sigmoid, or a Softmax layer), or, for logits (no such activation), a crossentropy loss in the
    model's compile config with more than one output unit: the top class of logits is the top class of
    their softmax, so the agreement is the same figure (a one-unit logit's class is its sign, not the
    0.5 the agreement thresholds at). A vector regressor (16 offsets) got a "top class 91.4%" note
    before. A model without a graph to read keeps the check its output's shape allows."""
    import keras

    from prunecli.structure import keras_graph

    if task is not None:
        return (task.accuracies or [task.accuracy])[0] is not None
    outputs = getattr(model, "outputs", None)
    produced = keras_graph.history(outputs[0]) if outputs else None
    if produced is None:
        return True
    layer = produced.operation
    if isinstance(layer, keras.layers.Softmax):
        return True
    activation = getattr(layer, "activation", None)
    if getattr(activation, "__name__", str(activation)) in CLASS_ACTIVATIONS:
        return True
    units = outputs[0].shape[-1] if outputs[0].shape else None
    return units is not None and units > 1 and _compiled_for_classes(model)


def _compiled_for_classes(model) -> bool:
    """Whether the loss the model was compiled with for its first output is a crossentropy (categorical,
    sparse categorical, binary, focal): a loss for class scores, as a regressor's (mse, mae, huber) is not."""
    loss = getattr(model, "loss", None)
    if isinstance(loss, (list, tuple)):
        loss = loss[0] if loss else None
    elif isinstance(loss, dict):
        loss = loss.get(getattr(model, "output_names", [None])[0])
    if loss is None:
        return False
    names = (
        (loss,)
        if isinstance(loss, str)
        else (getattr(loss, "name", ""), getattr(loss, "__name__", ""), type(loss).__name__)
    )
    return any("crossentropy" in str(name).lower().replace("_", "") for name in names)


class MultiOutputLoss:
    """The loss of a model with several outputs: the sum of each output's mean loss (Keras's default
    weighting). Callable as (y_true tuple, y_pred list), so fine-tuning and scoring use it like one loss."""

    def __init__(self, losses: list, names: list[str]):
        self.losses, self.names = list(losses), list(names)
        self.name = "+".join(str(getattr(fn, "__name__", fn)) for fn in self.losses)

    def __call__(self, y_true, y_pred):
        import keras
        import tensorflow as tf

        total = 0.0
        for fn, t, p in zip(self.losses, tf.nest.flatten(y_true), tf.nest.flatten(y_pred), strict=True):
            f = keras.losses.get(fn) if isinstance(fn, str) else fn
            total += tf.reduce_mean(f(t, p))
        return total


def loss_callable(loss, purpose: str):
    """The task's loss as one callable (y_true, y_pred) -> mean over the batch, whatever form it came
    in (a name, a Keras Loss, a plain function, a MultiOutputLoss). Labels shaped (n,) for outputs
    (n, 1) are given their last axis. `purpose` ("fine-tuning", "method 'taylor'") names the step in
    the one-line error. Fine-tuning, data-driven scoring, feature, layer and head scoring share it."""
    import keras
    from keras import ops

    if loss is None:
        raise ConfigError(f"{purpose} needs a loss: give --data so the task (and its loss) is known")
    if isinstance(loss, (list, tuple, dict)):
        raise ConfigError(f"{purpose} supports models whose loss is one function (got {type(loss).__name__})")
    try:
        fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    except (ValueError, TypeError):
        raise ConfigError(f"{purpose}: unknown loss {loss!r} in the model's compile config") from None
    if not callable(fn):
        raise ConfigError(f"{purpose}: cannot use the loss {loss!r}")

    def mean(y, pred):
        if getattr(y, "shape", None) is not None and getattr(pred, "shape", None) is not None:
            if len(y.shape) == len(pred.shape) - 1 and pred.shape[-1] == 1:
                y = ops.expand_dims(y, -1)
        per = ops.convert_to_tensor(fn(y, pred), dtype="float32")
        return ops.sum(per) / ops.maximum(ops.cast(ops.size(per), "float32"), 1.0)  # an empty share: 0, not NaN

    mean.__name__ = str(getattr(fn, "__name__", getattr(fn, "name", "loss")))
    return mean


# Tracing a forward pass costs about what four eager calls do (a 4-block KerasHub decoder, 32 x 128
# tokens: 2.1 s against 0.59 s each); a traced call then runs 2.8x faster. Fewer batches run eagerly,
# unless a batch is large: eagerly, one batch of 64 254x254 images through a 21M-parameter Xception
# peaked at 12.8 GB, traced at about 2.5 GB.
def loss_step(model, loss, batches: list):
    """fn(x, y) -> the batch's mean loss on `model`, traced where structure.equivalence.worth_tracing
    says so (enough batches to repay the trace, or big ones: memory, not time). A model masked in
    place between measurements keeps its step: variables are read at each call."""
    import tensorflow as tf

    from prunecli.structure.equivalence import worth_tracing

    def step(x, y):
        return loss(y, model(x, training=False))

    return tf.function(step, reduce_retracing=True) if worth_tracing([x for x, _y in batches]) else step


def mean_loss(model, batches: list, loss, step=None) -> float:
    """The example-weighted mean of `loss` (a loss_callable) over fixed (x, y) batches: what layer,
    block and split candidates are scored by. `step`: the model's loss_step, when the caller keeps one."""
    import tensorflow as tf

    step = step or loss_step(model, loss, batches)
    total = count = 0
    for x, y in batches:
        n = int(tf.nest.flatten(y)[0].shape[0])
        total += float(step(x, y)) * n
        count += n
    return total / max(count, 1)


class NextTokenLoss:
    """A causal LM's loss: the mean cross-entropy of each position's prediction of the next token over
    the positions that have one (label >= 0; io/data/tokens.py labels the rest NO_TOKEN, -1). One
    scalar per batch, so `loss_callable`'s mean keeps it; fine-tuning and gradient scores use it as
    any loss. Perplexity is exp of the same mean taken over the whole dataset (`evaluate`)."""

    __name__ = "next_token_crossentropy"
    name = "next_token_crossentropy"

    def __init__(self, from_logits: bool = True):
        self.from_logits = bool(from_logits)

    def __call__(self, y_true, y_pred):
        import tensorflow as tf

        total, count, _correct = next_token_sums(y_true, y_pred, self.from_logits)
        return total / tf.maximum(count, 1.0)


def next_token_sums(y_true, y_pred, from_logits: bool = True):
    """(summed cross-entropy, labelled positions, correct top-1 predictions) of one batch of next-token
    labels (N, T) against scores (N, T, vocabulary); positions labelled below 0 count for nothing."""
    import tensorflow as tf

    y = tf.cast(y_true, tf.int32)
    valid = y >= 0
    scores = tf.cast(y_pred, tf.float32)
    logits = scores if from_logits else tf.math.log(tf.maximum(scores, 1e-12))  # softmax(log p) = p
    nll = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.where(valid, y, 0), logits=logits)
    weight = tf.cast(valid, tf.float32)
    hits = tf.cast(tf.equal(tf.argmax(logits, axis=-1, output_type=tf.int32), y), tf.float32)
    return tf.reduce_sum(nll * weight), tf.reduce_sum(weight), tf.reduce_sum(hits * weight)


def _next_token_metrics(model, dataset, from_logits: bool) -> dict[str, float]:
    """Loss (mean next-token cross-entropy over every labelled position of the dataset, not a mean of
    batch means), perplexity exp(loss) and next-token accuracy. The model is called directly, not
    through Keras' evaluate: a KerasHub task would run its text preprocessor on the token batches. The
    first batches run eagerly and the call is traced from TRACE_FROM_BATCHES on (or at once for a batch
    worth_tracing finds large): the stream's length is not known ahead, and a small evaluation set's
    one or two batches never repay the trace (3.5 s of a tiny decoder's 4 s evaluation)."""
    import math

    import tensorflow as tf

    from prunecli.structure.equivalence import TRACE_FROM_BATCHES, worth_tracing

    def sums(x, y):
        return next_token_sums(y, model(x, training=False), from_logits)

    traced = tf.function(sums, reduce_retracing=True)
    total = count = correct = 0.0
    for i, (x, y) in enumerate(dataset):
        step = traced if i + 1 >= TRACE_FROM_BATCHES or worth_tracing([x]) else sums
        t, c, k = step(x, y)
        total, count, correct = total + float(t), count + float(c), correct + float(k)
    if count == 0:
        return {}
    loss = total / count
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else float("inf"),
        "accuracy": correct / count,
    }


def _per_output_losses(compiled, names: list[str]) -> list | None:
    if isinstance(compiled, dict) and set(compiled) >= set(names):
        return [compiled[n] for n in names]
    if isinstance(compiled, (list, tuple)) and len(compiled) == len(names):
        return list(compiled)
    return None


def infer_task(model, y_example, next_token: bool = False) -> Task:
    """The loss and accuracy to measure the model by. `next_token`: the data's labels are a causal
    LM's next tokens (Data.next_token), measured by NextTokenLoss and perplexity."""
    import numpy as np

    if next_token:
        from prunecli.structure import language

        return Task(NextTokenLoss(language.outputs_are_logits(model)), None)

    names = [str(n) for n in getattr(model, "output_names", None) or []]
    if len(names) > 1:  # one task per output, from its own labels (io.data gives y as a tuple)
        ys = list(y_example) if isinstance(y_example, (list, tuple)) else [y_example]
        compiled = _per_output_losses(getattr(model, "loss", None), names)
        tasks = [
            _single_task(int(out.shape[-1] or 1), np.asarray(y), None if compiled is None else compiled[i])
            for i, (out, y) in enumerate(zip(model.outputs, ys, strict=True))
        ]
        return Task(MultiOutputLoss([t.loss for t in tasks], names), None, [t.accuracy for t in tasks])
    from prunecli.io.data.labels import multi_label

    classes, loss = int(model.outputs[0].shape[-1] or 1), getattr(model, "loss", None)
    task = _single_task(classes, np.asarray(y_example), loss, multi_label(model))
    if loss is None and task.accuracy in CLASS_ACCURACIES and _scores_are_logits(model):
        import keras  # an uncompiled classifier with no softmax at the end: its scores are logits

        losses = {"sparse_categorical_accuracy": keras.losses.SparseCategoricalCrossentropy}
        losses["categorical_accuracy"] = keras.losses.CategoricalCrossentropy
        return Task(losses[task.accuracy](from_logits=True), task.accuracy)
    return task


CLASS_ACCURACIES = ("sparse_categorical_accuracy", "categorical_accuracy")


def _scores_are_logits(model) -> bool:
    """Whether a Keras 3 model's single output is not a softmax's (structure/language.ends_in_softmax):
    an uncompiled model's loss then reads logits; Keras' default, from_logits=False, read them as
    probabilities (a loss of 6.9 where the true one was 1.3). A tf_keras model (the tfmot engine) keeps
    its own losses, as compiled."""
    import keras

    from prunecli.structure import language

    return isinstance(model, keras.Model) and language.ends_in_softmax(model) is False


def _single_task(classes: int, y, compiled_loss, multi_label: bool = False) -> Task:
    import numpy as np

    if isinstance(compiled_loss, (list, tuple)) and len(compiled_loss) == 1:
        compiled_loss = compiled_loss[0]
    if multi_label:  # sigmoid units: each is its own yes/no, measured unit by unit
        return Task(compiled_loss or "binary_crossentropy", "binary_accuracy")
    if classes == 1:
        is_binary = y.size > 0 and np.isin(y, (0, 1)).all()
        loss = compiled_loss or ("binary_crossentropy" if is_binary else "mse")
        return Task(loss, "binary_accuracy" if is_binary else None)
    rows = y.ndim >= 2 and y.shape[-1] == classes
    if rows and _distributions(y):  # one-hot (or soft) class rows
        return Task(compiled_loss or "categorical_crossentropy", "categorical_accuracy")
    if y.size and not np.array_equal(y, np.round(y)):  # real-valued targets, not class ids: a regression
        return Task(compiled_loss or "mse", None)
    return Task(compiled_loss or "sparse_categorical_crossentropy", "sparse_categorical_accuracy")


def _distributions(y) -> bool:
    """Whether label rows are class distributions (non-negative, summing to 1): one-hot or soft labels,
    not a regression's targets (an accuracy of those measured nothing: 'accuracy 0.44' on real values)."""
    import numpy as np

    y = np.asarray(y, np.float64)
    return bool(y.size == 0 or (y.min() >= 0 and np.allclose(y.sum(-1), 1.0, atol=1e-3)))


def compile_for(model, task: Task, optimizer=None) -> None:
    if isinstance(task.loss, MultiOutputLoss):  # Keras evaluates each output with its own loss and metric
        metrics = [[acc] if acc else [] for acc in getattr(task, "accuracies", None) or []]
        model.compile(optimizer=optimizer or "adam", loss=task.loss.losses, metrics=metrics, jit_compile="auto")
        return
    metrics = [task.accuracy] if task.accuracy else []
    model.compile(optimizer=optimizer or "adam", loss=task.loss, metrics=metrics, jit_compile="auto")


@contextlib.contextmanager
def without_penalties(model):
    """The model with its weight and activity regularisers off, as the report measures it: Keras adds
    their penalties to the loss it evaluates, so a model whose Conv1D kernels carry L2(2e-4) had a
    "loss" of 0.034 on its own outputs, and pruning, which zeroes weights, lowered it (0.031) while the
    outputs moved. They are training penalties, not the model's error on the data; fine-tuning keeps them."""
    from prunecli.structure import keras_graph

    off = []
    for layer in keras_graph.all_layers(model):
        if getattr(layer, "activity_regularizer", None) is not None:
            off.append((layer, "activity_regularizer", layer.activity_regularizer))
    for variable in model.weights:
        if getattr(variable, "regularizer", None) is not None:
            off.append((variable, "regularizer", variable.regularizer))
    for owner, name, _value in off:
        setattr(owner, name, None)
    try:
        yield model
    finally:
        for owner, name, value in off:
            setattr(owner, name, value)


def accuracy_values(values: dict) -> list:
    """The accuracies of Keras' evaluate(return_dict=True), in its order: NAME_accuracy, and NAME_accuracy_1,
    NAME_accuracy_2 ... where several outputs share a name (one layer called at several steps, as an unrolled
    decoder's output layer is); those were missed, and the mean of 21 outputs' accuracies was the first's."""
    import re

    return [v for k, v in values.items() if re.search(r"accuracy(_[0-9]+)?$", k)]


def evaluate(model, dataset, task: Task) -> dict[str, float]:
    """Loss and accuracy of the model over the whole dataset (streamed in batches); for a causal LM's
    next-token data, its perplexity too (`_next_token_metrics`).

    The model is compiled for the task once; later calls reuse it (sweeps evaluate dozens of times),
    unless something else recompiled the model in between (its optimizer object changed).
    """
    if isinstance(task.loss, NextTokenLoss):
        return _next_token_metrics(model, dataset, task.loss.from_logits)
    # ids, not objects: Keras tracks objects set as model attributes and would save them with the model
    stamp = (id(task), id(getattr(model, "optimizer", None)))
    if getattr(model, "_prunecli_eval_for", None) != stamp:
        compile_for(model, task, optimizer=getattr(model, "optimizer", None) or "adam")
        model._prunecli_eval_for = (id(task), id(model.optimizer))
    with without_penalties(model):  # traced without them, the later calls reuse that trace
        values = model.evaluate(dataset, verbose=0, return_dict=True)
    out = {"loss": float(values["loss"])}
    if task.accuracy:
        acc = accuracy_values(values)
        if acc:
            out["accuracy"] = float(acc[0])
    elif any(getattr(task, "accuracies", None) or []):  # several outputs: the mean of their accuracies
        acc = [float(v) for v in accuracy_values(values)]
        if acc:
            out["accuracy"] = sum(acc) / len(acc)
    return out
