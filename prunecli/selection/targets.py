"""Which weights can be pruned, and how each is laid out (its unit axis and reduction axes).

Like tfmot's prune_registry, a plain table maps a layer class to its prunable weight attributes.
A custom layer opts in with `get_prunable_weights()`, returning the variables to prune.
Biases and normalisation layers are never targets.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

# class name -> [(weight attribute, unit axis)]. The unit axis indexes the layer's output units
# (neurons, filters, channels): pruning "a neuron" removes one index along it.
PRUNABLE: dict[str, list[tuple[str, int]]] = {
    "Dense": [("kernel", -1)],
    "EinsumDense": [("kernel", -1)],
    "Conv1D": [("kernel", -1)],
    "Conv2D": [("kernel", -1)],
    "Conv3D": [("kernel", -1)],
    "Conv1DTranspose": [("kernel", -2)],
    "Conv2DTranspose": [("kernel", -2)],
    "Conv3DTranspose": [("kernel", -2)],
    "DepthwiseConv1D": [("kernel", -2)],  # Keras 3 names the depthwise weight "kernel"
    "DepthwiseConv2D": [("kernel", -2)],
    "SeparableConv1D": [("depthwise_kernel", -2), ("pointwise_kernel", -1)],
    "SeparableConv2D": [("depthwise_kernel", -2), ("pointwise_kernel", -1)],
    "Embedding": [("embeddings", -1)],
    "LSTMCell": [("kernel", -1), ("recurrent_kernel", -1)],
    "GRUCell": [("kernel", -1), ("recurrent_kernel", -1)],
    "SimpleRNNCell": [("kernel", -1), ("recurrent_kernel", -1)],
    "ConvLSTMCell": [("kernel", -1), ("recurrent_kernel", -1)],
}

# Layers whose units can be removed physically by surgery (the others are masked only).
SHRINKABLE = {
    "Dense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "SeparableConv1D",
    "SeparableConv2D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
}


@dataclass(frozen=True, eq=False)
class Target:
    """One prunable weight tensor.

    `name` is unique in the model ("block/conv1/kernel"). The matrix view moves the unit axis last
    and flattens the rest, so a kernel becomes (reduction, units): for Dense (in, out), for Conv
    (kh*kw*in, out) with the input channel varying fastest, the layout N:M groups run along.
    """

    name: str
    layer_name: str
    layer_class: str
    attr: str
    variable: Any
    unit_axis: int
    layer: Any = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.variable.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def units(self) -> int:
        return self.shape[self.unit_axis]

    @property
    def rows(self) -> int:
        """Length of the reduction side of the matrix view."""
        return self.size // max(self.units, 1)

    @property
    def perm(self) -> list[int]:
        axes = list(range(len(self.shape)))
        axes.append(axes.pop(self.unit_axis))
        return axes

    def to_matrix(self, tensor):
        import tensorflow as tf

        return tf.reshape(tf.transpose(tensor, self.perm), (self.rows, self.units))

    def from_matrix(self, matrix):
        import tensorflow as tf

        moved = [self.shape[a] for a in self.perm]
        inv = [0] * len(self.perm)
        for i, a in enumerate(self.perm):
            inv[a] = i
        return tf.transpose(tf.reshape(matrix, moved), inv)

    def expand_units(self, unit_values):
        """Broadcast a per-unit vector (units,) to the weight's full shape."""
        import tensorflow as tf

        shape = [1] * len(self.shape)
        shape[self.unit_axis] = self.units
        return tf.broadcast_to(tf.reshape(unit_values, shape), self.shape)

    @property
    def shrinkable(self) -> bool:
        return self.layer_class in SHRINKABLE


def _children(layer) -> list:
    return list(layer._flatten_layers(include_self=False, recursive=False))


def _layer_weights(layer) -> list[tuple[str, Any, int]]:
    custom = getattr(layer, "get_prunable_weights", None)
    if callable(custom):
        return [(v.name, v, -1) for v in custom()]
    out = []
    for attr, axis in PRUNABLE.get(type(layer).__name__, []):
        var = getattr(layer, attr, None)
        if var is not None and len(var.shape) >= 2:
            out.append((attr, var, axis))
    return out


def _matches(layer_name: str, patterns) -> bool:
    leaf = layer_name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(layer_name, p) or fnmatch.fnmatchcase(leaf, p) for p in patterns)


def walk(model) -> list[Target]:
    """Every prunable weight in the model, nested models and sub-layers included, each once."""
    found: list[Target] = []
    seen: set[int] = set()

    def visit(layer, prefix: str):
        path = f"{prefix}/{layer.name}" if prefix else layer.name
        for attr, var, axis in _layer_weights(layer):
            if id(var) in seen:
                continue  # a shared layer: prune its weight once
            seen.add(id(var))
            ndim = len(var.shape)
            found.append(Target(f"{path}/{attr}", path, type(layer).__name__, attr, var, axis % ndim, layer))
        for child in _children(layer):
            visit(child, path)

    for layer in _children(model):
        visit(layer, "")
    return found


def select(model, include=(), exclude=()) -> list[Target]:
    """The targets to prune: all prunable weights, narrowed by include/exclude layer-name globs."""
    targets = walk(model)
    if include:
        targets = [t for t in targets if _matches(t.layer_name, include)]
    if exclude:
        targets = [t for t in targets if not _matches(t.layer_name, exclude)]
    return targets


def output_layer_names(model) -> set[str]:
    """Names of the top-level layers that produce the model's outputs."""
    names = set()
    for tensor in getattr(model, "outputs", None) or []:
        history = getattr(tensor, "_keras_history", None)
        if history is not None:
            names.add(history.operation.name)
    return names


def named_in(target: Target, patterns) -> bool:
    """Whether the target's layer is matched by one of these globs (used for explicit opt-ins)."""
    return bool(patterns) and _matches(target.layer_name, patterns)


def matches(target: Target, pattern: str) -> bool:
    return _matches(target.layer_name, [pattern])
