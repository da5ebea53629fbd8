"""The layer graph of a Keras model, built once, and the channel groups that structural surgery needs.

Every tensor in the graph gets one *channel id* per position on its last (channel) axis. Layers that
create channels (Dense, Conv, model inputs, layers we do not understand) allocate fresh ids;
channel-wise layers (BatchNormalization, activations, pooling, padding, DepthwiseConv...) pass their
input's ids through; Flatten repeats them in channels-last order; Concatenate joins them. Ids that
must be removed together are merged in a union-find (Torch-Pruning's "dependency graph", at the
granularity of single channels):

- merge layers (Add, Subtract, Multiply, Average, Maximum, Minimum) make position k of every input
  the same channel, so a residual stream shrinks as one group;
- a shared layer makes position k of each of its calls the same channel (one weight row or unit);
- Concatenate on the channel axis keeps each input's ids, so its slices follow their producers.

A channel class is *pinned* (never removed) when it reaches the network output, comes from a model
input, or touches a layer whose weights or semantics we cannot slice; the reason is kept for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TensorKey = tuple[int, int, int]  # (id(layer), node index, output index): one tensor of the graph

MIXERS = {
    "Dense",
    "Conv1D",
    "Conv2D",
    "Conv3D",
    "SeparableConv1D",
    "SeparableConv2D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
}
CHANNELWISE = {
    "BatchNormalization",
    "Activation",
    "ReLU",
    "LeakyReLU",
    "ELU",
    "PReLU",
    "Dropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
    "MaxPooling1D",
    "MaxPooling2D",
    "MaxPooling3D",
    "AveragePooling1D",
    "AveragePooling2D",
    "AveragePooling3D",
    "GlobalAveragePooling1D",
    "GlobalAveragePooling2D",
    "GlobalAveragePooling3D",
    "GlobalMaxPooling1D",
    "GlobalMaxPooling2D",
    "GlobalMaxPooling3D",
    "ZeroPadding1D",
    "ZeroPadding2D",
    "ZeroPadding3D",
    "Cropping1D",
    "Cropping2D",
    "Cropping3D",
    "UpSampling1D",
    "UpSampling2D",
    "UpSampling3D",
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "Reshape",
}
MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"}


class GraphUnsupported(Exception):
    """The model has no layer graph to walk (a subclassed model, or one never called on inputs)."""


@dataclass(eq=False)
class Call:
    """One application of a layer in the graph. `kind` says how channels flow through it:
    input | mixer | channelwise | merge | concat | flatten | other."""

    layer: Any
    kind: str
    inputs: list[TensorKey]
    outputs: list[TensorKey]

    @property
    def name(self) -> str:
        return self.layer.name


class ChannelSets:
    """Union-find over channel ids, with a reason for every pinned class."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self._pins: list[tuple[int, str]] = []

    def fresh(self, n: int):
        import numpy as np

        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self.parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def union(self, a, b) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[max(rx, ry)] = min(rx, ry)

    def roots(self, ids):
        import numpy as np

        return np.array([self.find(i) for i in ids.tolist()], dtype=np.int64)

    def pin(self, ids, reason: str, first: bool = False) -> None:
        """Mark ids as never removable; `first` puts this reason ahead of those already given."""
        pins = [(i, reason) for i in ids.tolist()]
        self._pins = pins + self._pins if first else self._pins + pins

    def pinned(self) -> dict[int, str]:
        """root -> the first reason its class may not be removed."""
        out: dict[int, str] = {}
        for i, reason in self._pins:
            out.setdefault(self.find(i), reason)
        return out


@dataclass
class LayerGraph:
    calls: list[Call]  # topological order
    shapes: dict[TensorKey, tuple]
    consumers: dict[TensorKey, list[Call]]
    inputs: list[TensorKey]
    outputs: list[TensorKey]
    ids: dict[TensorKey, Any] = field(default_factory=dict)  # channel ids along each tensor's last axis
    channels: ChannelSets = field(default_factory=ChannelSets)
    producers: dict[int, set] = field(default_factory=dict)  # root -> names of mixer layers making it

    def calls_of(self, layer) -> list[Call]:
        return [c for c in self.calls if c.layer is layer]

    def layers(self) -> list:
        """Each layer once, in the order of its first call."""
        seen: dict[int, Any] = {}
        for c in self.calls:
            seen.setdefault(id(c.layer), c.layer)
        return list(seen.values())

    def group_members(self, root: int) -> list[str]:
        return sorted(self.producers.get(root, ()))


def _flatten(structure) -> list:
    if isinstance(structure, (list, tuple)):
        return [x for item in structure for x in _flatten(item)]
    if isinstance(structure, dict):
        return [x for item in structure.values() for x in _flatten(item)]
    return [structure]


def _key(tensor) -> TensorKey:
    op, node_index, tensor_index = tensor._keras_history
    return (id(op), node_index, tensor_index)


def _walk(model) -> tuple[list[tuple[Any, Any, int]], dict[TensorKey, tuple]]:
    """The nodes that feed the model's outputs, in topological order (iterative DFS, deep nets are fine)."""
    try:
        outputs = model.outputs
    except (AttributeError, ValueError):  # a Sequential model that was never built
        outputs = None
    if not outputs:
        raise GraphUnsupported(f"model {model.name} has no functional graph (subclassed or never built)")
    order: list[tuple[Any, Any, int]] = []
    shapes: dict[TensorKey, tuple] = {}
    done: set[tuple[int, int]] = set()
    stack: list[tuple[Any, int, bool]] = []
    for t in _flatten(outputs):
        if getattr(t, "_keras_history", None) is None:
            raise GraphUnsupported(f"model {model.name}: an output has no layer history")
        op, node_index, _ = t._keras_history
        stack.append((op, node_index, False))
    while stack:
        op, node_index, expanded = stack.pop()
        if (id(op), node_index) in done:
            continue
        node = op._inbound_nodes[node_index]
        if expanded:
            done.add((id(op), node_index))
            order.append((op, node, node_index))
            for i, t in enumerate(_flatten(node.output_tensors)):
                shapes[(id(op), node_index, i)] = tuple(t.shape)
            continue
        stack.append((op, node_index, True))
        for t in _flatten(node.input_tensors):
            parent, parent_index, _ = t._keras_history
            if (id(parent), parent_index) not in done:
                stack.append((parent, parent_index, False))
    return order, shapes


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def is_elementwise(fn) -> bool:
    """True when an activation acts on each value alone (relu, sigmoid...), False for softmax and kin."""
    import numpy as np

    x = np.array([[-1.5, -0.2, 0.3, 2.0]], dtype="float32")
    whole = np.asarray(fn(x))
    parts = np.concatenate([np.asarray(fn(x[:, :2])), np.asarray(fn(x[:, 2:]))], axis=1)
    return whole.shape == x.shape and np.allclose(whole, parts, atol=1e-6)


def classify(layer, in_shapes: list[tuple], out_shapes: list[tuple]) -> tuple[str, str | None]:
    """How channels flow through one call of `layer`, and why it is 'other' when it is."""
    cls = type(layer).__name__
    if cls == "InputLayer":
        return "input", None
    if not in_shapes or not out_shapes:
        return "other", f"{layer.name} ({cls}) has no tensor inputs or outputs"
    if any(len(s) < 2 or s[-1] is None for s in in_shapes + out_shapes):
        return "other", f"{layer.name} ({cls}) has a tensor without a known channel axis"
    one_to_one = len(in_shapes) == 1 and len(out_shapes) == 1
    channel_axes = (-1, len(out_shapes[0]) - 1)
    if cls in MIXERS and one_to_one:
        if not _channels_last(layer) or getattr(layer, "groups", 1) != 1:
            return "other", f"{layer.name} ({cls}) is channels_first or grouped"
        return "mixer", None
    if cls in CHANNELWISE and one_to_one:
        if not _channels_last(layer):
            return "other", f"{layer.name} ({cls}) is channels_first"
        if cls.startswith("DepthwiseConv") and getattr(layer, "depth_multiplier", 1) != 1:
            return "other", f"{layer.name} ({cls}) has depth_multiplier > 1"
        if cls == "BatchNormalization" and layer.axis not in channel_axes:
            return "other", f"{layer.name} (BatchNormalization) normalises a non-channel axis"
        if cls == "Reshape" and in_shapes[0][-1] != out_shapes[0][-1]:
            return "other", f"{layer.name} (Reshape) changes the channel axis"
        if cls == "Activation" and not is_elementwise(layer.activation):
            return "other", f"{layer.name} (Activation) mixes channels (softmax-like)"
        if in_shapes[0][-1] != out_shapes[0][-1]:
            return "other", f"{layer.name} ({cls}) changes the channel count"
        return "channelwise", None
    if cls in MERGES or cls == "Concatenate":
        if len(out_shapes) != 1 or len({len(s) for s in in_shapes + out_shapes}) != 1:
            return "other", f"{layer.name} ({cls}) joins tensors of different ranks"
        if cls == "Concatenate" and layer.axis in channel_axes:
            return "concat", None
        return "merge", None
    if cls == "Flatten" and one_to_one and _channels_last(layer) and all(d is not None for d in in_shapes[0][1:]):
        return "flatten", None
    return "other", f"{layer.name} ({cls}) is not a layer surgery can slice"


def build(model) -> LayerGraph:
    """Walk the model once: calls in order, tensor shapes, consumers, channel ids and their groups."""
    import numpy as np

    order, shapes = _walk(model)
    calls: list[Call] = []
    consumers: dict[TensorKey, list[Call]] = {}
    for op, node, node_index in order:
        ins = [_key(t) for t in _flatten(node.input_tensors)]
        outs = [(id(op), node_index, i) for i in range(len(_flatten(node.output_tensors)))]
        kind, _ = classify(op, [shapes[k] for k in ins], [shapes[k] for k in outs])
        call = Call(op, kind, ins, outs)
        calls.append(call)
        for k in ins:
            consumers.setdefault(k, []).append(call)
    g = LayerGraph(
        calls,
        shapes,
        consumers,
        inputs=[_key(t) for t in _flatten(model.inputs)],
        outputs=[_key(t) for t in _flatten(model.outputs)],
    )
    first_call: dict[int, Call] = {}
    ch = g.channels
    for call in calls:
        in_shapes = [shapes[k] for k in call.inputs]
        width = [int(shapes[k][-1]) if len(shapes[k]) >= 2 and shapes[k][-1] is not None else 0 for k in call.outputs]
        if call.kind in ("input", "other"):
            for k, w in zip(call.outputs, width, strict=True):
                g.ids[k] = ch.fresh(w)
            if call.kind == "input":
                ch.pin(g.ids[call.outputs[0]], "model input")
            else:
                reason = classify(call.layer, in_shapes, [shapes[k] for k in call.outputs])[1]
                for k in call.inputs + call.outputs:
                    ch.pin(g.ids[k], reason)
        elif call.kind == "mixer":
            out = g.ids[call.outputs[0]] = ch.fresh(width[0])
            activation = getattr(call.layer, "activation", None)
            if activation is not None and not is_elementwise(activation):
                ch.pin(out, f"{call.name} has a softmax-like activation")
        elif call.kind == "channelwise":
            g.ids[call.outputs[0]] = g.ids[call.inputs[0]]
        elif call.kind == "concat":
            g.ids[call.outputs[0]] = np.concatenate([g.ids[k] for k in call.inputs])
        elif call.kind == "flatten":
            spatial = int(np.prod(in_shapes[0][1:-1], dtype=np.int64))
            g.ids[call.outputs[0]] = np.tile(g.ids[call.inputs[0]], spatial)
        else:  # merge: inputs as wide as the output share channels; a broadcast (width 1) input is pinned
            full = [k for k in call.inputs if shapes[k][-1] == width[0]]
            for k in call.inputs:
                if k not in full:
                    ch.pin(g.ids[k], f"{call.name} broadcasts a narrower tensor")
            out = g.ids[call.outputs[0]] = g.ids[full[0]] if full else ch.fresh(width[0])
            for k in full[1:]:
                ch.union(out, g.ids[k])
            if not full:
                ch.pin(out, f"{call.name} broadcasts all of its inputs")
        shared = first_call.setdefault(id(call.layer), call)
        if shared is not call:  # a shared layer: its weight rows and units are the same for every call
            for a, b in zip(shared.inputs + shared.outputs, call.inputs + call.outputs, strict=False):
                if len(g.ids[a]) == len(g.ids[b]):
                    ch.union(g.ids[a], g.ids[b])
                else:
                    ch.pin(g.ids[a], f"{call.name} is shared between tensors of different widths")
                    ch.pin(g.ids[b], f"{call.name} is shared between tensors of different widths")
    for k in g.outputs:
        ch.pin(g.ids[k], "network output", first=True)
    for call in calls:
        if call.kind == "mixer":
            for root in set(ch.roots(g.ids[call.outputs[0]]).tolist()):
                g.producers.setdefault(root, set()).add(call.name)
    return g
