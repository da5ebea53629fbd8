"""What the data-driven strategies share: reading batches with a progress bar, one compiled
accumulation step, the model that exposes the targets' outputs, and the loss.

Scores are running sums held in variables and updated one batch at a time, so memory stays at one
batch's activations and gradients whatever the size of the dataset.
"""

from __future__ import annotations

import contextlib
import itertools
import sys

from prunecli.errors import ConfigError, DataError
from prunecli.structure import keras_graph, layers

# A unit's output is read after the point-wise layers that directly follow it (conv -> batch norm ->
# ReLU; `pointwise` in the layer table), because that is what the next layer sees and where APoZ
# counts its zeros.


def require_data(ctx, method: str) -> None:
    if ctx.data is None:
        raise ConfigError(f"method {method!r} needs data (--data)")


def _batch_count(ctx) -> int | None:
    """How many batches scoring will read, when the data knows its length (for the progress bar)."""
    try:
        n = len(ctx.data)
    except TypeError:  # a generator, or a tf.data pipeline of unknown or infinite length
        return ctx.max_batches
    return n if ctx.max_batches is None else min(n, ctx.max_batches)


@contextlib.contextmanager
def progress(ctx, label: str, total: int | None):
    """Yield advance(n): the context's progress callback, else a rich bar on a terminal, else nothing."""
    if ctx.progress is not None:
        yield ctx.progress(label, total)
        return
    if not sys.stderr.isatty():
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n=1: bar.advance(task, n)


def _split(batch):
    if isinstance(batch, (tuple, list)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


def _use_xla(ctx) -> bool:
    forced = ctx.extras.get("jit_compile")
    if forced is not None:
        return bool(forced)
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def compile_step(fn, ctx):
    """fn(x, y) as a graph function, compiled by XLA where that pays.

    XLA is used on GPUs and TPUs, where fusing each batch's reductions (and the backward pass) pays
    for the compile. On CPU a compile costs seconds and saves little over the tens of batches scoring
    reads, so a plain graph is used; ctx.extras["jit_compile"] = True/False forces the choice. Under
    XLA, a batch shaped unlike the first (the short last batch) runs as a plain graph instead of
    compiling again, and a model XLA cannot compile falls back to a plain graph.
    """
    import tensorflow as tf

    plain = tf.function(fn, reduce_retracing=True)
    if not _use_xla(ctx):
        return plain
    xla = tf.function(fn, jit_compile=True)
    compiled_for: list = []  # the batch shape XLA compiled for, once it has
    failed: list = []

    def step(x, y):
        shape = [tuple(a.shape) for a in tf.nest.flatten(x)]
        if failed or (compiled_for and compiled_for[0] != shape):
            return plain(x, y)
        try:
            out = xla(x, y)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            if compiled_for:
                raise  # XLA ran before, so this is an error in the data, not in compiling
            failed.append(True)
            return plain(x, y)  # an error in the data fails here too, and propagates
        compiled_for[:] = [shape]
        return out

    return step


def _is_infinite(data) -> bool:
    import tensorflow as tf

    return isinstance(data, tf.data.Dataset) and int(data.cardinality()) == int(tf.data.INFINITE_CARDINALITY)


def accumulate(ctx, method: str, batch_fn, needs_labels: bool = False, then=None):
    """Sum a statistic over the data: (total, batches), where total is the sum over batches of
    then(batch_fn(x, y) summed over the batch's replicas).

    batch_fn(x, y) returns a nest of tensors that are sums over the examples it is given (sum of
    |activation|, count of positive outputs, positions read), or, for a statistic that is not linear
    in the examples, the linear part: the gradient of the loss weighted by `distribute.global_share`
    (the replica's mean loss times its share of the global batch), whose replica sum is the gradient
    of the global batch's mean loss; `then` (abs, for |dL/dw|) is applied to that sum, per batch.

    With ctx.extras["strategy"] a tf.distribute strategy other than the default one (MirroredStrategy,
    MultiWorkerMirroredStrategy), each global batch is split over the replicas and workers and their
    sums are all-reduced, so every worker gets the statistic of the whole data, equal to the
    single-device one up to float summation order. Otherwise batch_fn runs as one compiled step
    (`compile_step`), on one device. Memory: one batch's activations and gradients plus the totals.
    """
    import tensorflow as tf

    require_data(ctx, method)
    if ctx.max_batches is not None and ctx.max_batches < 1:
        raise ConfigError(f"score_batches must be >= 1, got {ctx.max_batches}")
    total_batches = _batch_count(ctx)
    if total_batches is None and _is_infinite(ctx.data):
        raise ConfigError(f"method {method!r}: the data never ends; cap it with --score-batches")
    strategy = ctx.extras.get("strategy")
    from prunecli.training import distribute

    if strategy is None or distribute.is_default(strategy):
        data = ctx.data
        step = compile_step(lambda x, y: batch_fn(x, y) if then is None else then(batch_fn(x, y)), ctx)
    else:
        if not isinstance(ctx.data, tf.data.Dataset):
            raise ConfigError(f"method {method!r}: scoring across replicas needs a tf.data dataset")
        data = distribute.distribute_batches(strategy, ctx.data)
        step = distribute.summed_step(strategy, batch_fn, then)

    total, count = None, 0
    with progress(ctx, f"scoring ({method})", total_batches) as advance:
        for batch in itertools.islice(data, ctx.max_batches):
            x, y = _split(batch)
            if needs_labels and y is None:
                raise DataError(f"method {method!r} needs labels: the data must yield (x, y) batches")
            part = step(x, y)
            total = part if total is None else tf.nest.map_structure(tf.add, total, part)
            count += 1
            advance(1)
    if count == 0:
        raise DataError(f"method {method!r}: the data yielded no batches")
    return total, count


def check_finite(scores: dict, method: str) -> dict:
    import tensorflow as tf

    for name, score in scores.items():
        if not bool(tf.reduce_all(tf.math.is_finite(score))):
            raise DataError(f"method {method!r}: scores of {name} are not finite (NaN or Inf on this data)")
    return scores


# ---- reading the targets' outputs -----------------------------------------------------------------


def _graph_nodes(model, method: str) -> list:
    """The call nodes of the model's own graph (a Sequential keeps its graph in a functional twin)."""
    try:
        if not getattr(model, "inputs", None):
            raise keras_graph.GraphUnsupported(model.name)
        return keras_graph.nodes(model)
    except keras_graph.GraphUnsupported:
        raise ConfigError(
            f"method {method!r} reads layer outputs, which needs a Sequential or functional model; "
            "use a data-free method (magnitude, l1-norm, ...) for subclassed models"
        ) from None


def _follow_channelwise(tensor, axis: int, consumers: dict):
    """The tensor after the per-channel layers (batch norm, activations) that directly follow it, whose
    channels are on `axis`."""
    while True:
        users = consumers.get(id(tensor), [])
        if len(users) != 1:
            return tensor
        node = users[0]
        op = node.operation
        activation = getattr(getattr(op, "activation", None), "__name__", "")
        if not layers.spec(op).pointwise or "softmax" in activation:
            return tensor
        if len(node.input_tensors) != 1 or len(node.output_tensors) != 1:
            return tensor
        nxt = node.output_tensors[0]
        if len(nxt.shape) != len(tensor.shape) or nxt.shape[axis] != tensor.shape[axis]:
            return tensor
        tensor = nxt


def unit_outputs(model, targets, method: str):
    """A keras.Model from the model's inputs to one output per target layer; for each target the index
    of its output and its channel multiplier (output channels per unit; >1 only for depthwise
    convolutions with depth_multiplier > 1); and for each output the axis that holds its channels
    (structure.channels.channel_axis: the last, or axis 1 for a channels_first layer).
    """
    import keras

    from prunecli.structure.channels import channel_axis

    nodes = _graph_nodes(model, method)
    nodes_of: dict[int, list] = {}
    consumers: dict[int, list] = {}
    for node in nodes:
        nodes_of.setdefault(id(node.operation), []).append(node)
        for tensor in node.input_tensors:
            consumers.setdefault(id(tensor), []).append(node)

    outputs, axes, index_of_layer, plan = [], [], {}, []
    for t in targets:
        reason = None
        own = nodes_of.get(id(t.layer), [])
        if not own:
            reason = "it is nested inside another layer or model (e.g. an RNN cell)"
        elif len(own) > 1:
            reason = "the layer is called more than once"
        elif len(own[0].output_tensors) != 1:
            reason = "the layer has several outputs"
        elif t.attr == "depthwise_kernel" and t.layer_class.startswith("Separable"):
            reason = "the depthwise half of a separable convolution has no output of its own"
        else:
            shape = own[0].output_tensors[0].shape
            axis = channel_axis(t.layer, len(shape))
            channels = shape[axis]
            depthwise = t.layer_class.startswith("DepthwiseConv")
            if channels is None or not (channels == t.units or (depthwise and channels % t.units == 0)):
                reason = f"its output's channel axis {axis} ({channels}) does not match its {t.units} units"
        if reason:
            raise ConfigError(
                f"method {method!r} cannot read the output of {t.layer_name}: {reason}; "
                f"leave it out with --exclude '{t.layer_name}' or use a data-free method"
            )
        if id(t.layer) not in index_of_layer:
            index_of_layer[id(t.layer)] = len(outputs)
            outputs.append(_follow_channelwise(own[0].output_tensors[0], axis, consumers))
            axes.append(axis)
        index = index_of_layer[id(t.layer)]
        plan.append((index, int(outputs[index].shape[axes[index]]) // t.units))
    return keras.Model(model.inputs, outputs), plan, axes
