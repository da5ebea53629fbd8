"""A model or layer run on every step of a sequence (`TimeDistributed(Model)`, `TimeDistributed(Conv2D)`),
opened with its steps folded into the batch.

Video and sensor models run a whole CNN on each frame (vvadlrs3: a MobileNet on each of 38 lip frames,
then an LSTM; the Keras idiom `TimeDistributed(base_model)`, or a chain of `TimeDistributed(Conv2D)`,
`TimeDistributed(MaxPooling2D)`...). The wrapper is one call to the channel graph, so `--shrink` and
`--target` could not reach the CNN, which holds most of the parameters. Opened
(rebuild.opened), the wrapped model's layers are called on the frames as one batch: `FoldSteps` turns
(batch, steps, ...) into (batch * steps, ...), `UnfoldSteps` turns the wrapped model's output back into
(batch, steps, ...). Each layer acts on each frame alone, so this computes what the wrapper computes;
both keep channels where they are (the layer table: channelwise), so channels are sliced through them.

Before writing, rebuild.renested puts the opened layers back into their wrappers under the wrapper's and
the wrapped model's or layer's names: the file has Keras' own classes only, as the input had, and loads
without prunecli. A multiply-add count reads each call inside a fold once per step (`rows_per_example`).
"""

from __future__ import annotations

from typing import Any

_CLASSES: list[Any] = []  # (FoldSteps, UnfoldSteps), defined and registered once keras is imported


def layer_classes() -> tuple[Any, Any]:
    """(FoldSteps, UnfoldSteps), defined and registered with Keras on the first call."""
    if _CLASSES:
        return _CLASSES[0], _CLASSES[1]
    import keras
    from keras import ops

    class FoldSteps(keras.layers.Layer):
        """(batch, steps, ...) -> (batch * steps, ...): the steps of `wrapper` (a TimeDistributed of the
        model or layer `nested`; `model` says which) as one batch for the wrapped layers."""

        def __init__(self, wrapper: str, nested: str, model: bool = True, **kwargs):
            super().__init__(**kwargs)
            self.wrapper, self.nested, self.model = wrapper, nested, bool(model)

        def call(self, x):
            return ops.reshape(x, (-1, *ops.shape(x)[2:]))

        def compute_output_shape(self, shape):
            return (None, *shape[2:])

        def get_config(self):
            return {**super().get_config(), "wrapper": self.wrapper, "nested": self.nested, "model": self.model}

    class UnfoldSteps(keras.layers.Layer):
        """(batch * steps, ...) -> (batch, steps, ...): the wrapped model's output, per step again."""

        def __init__(self, steps: int, wrapper: str, nested: str, **kwargs):
            super().__init__(**kwargs)
            self.steps, self.wrapper, self.nested = int(steps), wrapper, nested

        def call(self, x):
            return ops.reshape(x, (-1, self.steps, *ops.shape(x)[1:]))

        def compute_output_shape(self, shape):
            return (None, self.steps, *shape[1:])

        def get_config(self):
            return {**super().get_config(), "steps": self.steps, "wrapper": self.wrapper, "nested": self.nested}

    for cls in (FoldSteps, UnfoldSteps):
        cls.__module__ = __name__
        _CLASSES.append(keras.saving.register_keras_serializable(package="prunecli")(cls))
    return _CLASSES[0], _CLASSES[1]


def is_fold(layer) -> bool:
    return type(layer).__name__ == "FoldSteps" and hasattr(layer, "nested")


def is_unfold(layer) -> bool:
    return type(layer).__name__ == "UnfoldSteps" and hasattr(layer, "nested")


def foldable(node) -> bool:
    """Whether a node calls a TimeDistributed wrapper on one tensor with a known number of steps and no
    mask, wrapping a layer or a model that takes one input of the step's rank and gives one output:
    what FoldSteps/UnfoldSteps can stand in for. Any layer that acts on each example alone computes the
    same on the steps as one batch (a BatchNormalization in inference too; in training it then takes
    its statistics over every step of the batch at once, where the wrapper takes them step by step)."""
    from keras.layers import TimeDistributed

    from prunecli.structure import keras_graph

    op = node.operation
    if not isinstance(op, TimeDistributed) or type(op).call is not TimeDistributed.call:
        return False  # a subclass with a call of its own does its own thing per step
    given = keras_graph.flatten(node.input_tensors)
    if len(given) != 1 or len(given[0].shape) < 3 or given[0].shape[1] is None or len(node.outputs) != 1:
        return False
    if any(m is not None for m in keras_graph.flatten(node.arguments.kwargs.get("mask"))):
        return False
    if not keras_graph.is_model(op.layer):
        return True
    inner = keras_graph.functional(op.layer)
    if inner is None:
        return False
    ins, outs = keras_graph.flatten(inner.inputs), keras_graph.flatten(inner.outputs)
    return len(ins) == 1 and len(outs) == 1 and len(ins[0].shape) == len(given[0].shape) - 1


def rows_per_example(model) -> dict[int, int]:
    """{id(tensor): rows of it per example of the model} for the tensors inside a fold (steps rows: one
    per frame); tensors not named here have one. What a per-example multiply-add count multiplies a
    call inside the fold by."""
    from prunecli.structure import keras_graph

    rows: dict[int, int] = {}
    for node in keras_graph.nodes(model):
        op = node.operation
        given = max((rows.get(id(t), 1) for t in keras_graph.flatten(node.input_tensors)), default=1)
        if is_fold(op):
            given *= int(node.input_tensors[0].shape[1])
        elif is_unfold(op):
            given //= op.steps
        if given != 1:
            for t in keras_graph.flatten(node.outputs):
                rows[id(t)] = given
    return rows
