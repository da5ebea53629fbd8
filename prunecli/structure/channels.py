"""The layer graph of a Keras model, built once, and the channel groups that structural surgery needs.

Every tensor in the graph gets one *channel id* per position on its channel axis: the last, or axis 1
for a channels-first tensor (made by a layer whose data_format is channels_first, or read by one: a
Keras-2 file saved with image_data_format channels_first; `LayerGraph.shapes` then moves that axis
last, so the rest of the graph reads every tensor channels last). Layers that
create channels (Dense, Conv, model inputs, layers we do not understand) allocate fresh ids;
channel-wise layers (BatchNormalization, activations, pooling, padding, DepthwiseConv...) pass their
input's ids through; Flatten repeats them in the order it flattens (channel by channel for a channels-first
tensor that it does not move channels last first); Concatenate joins them. Ids that
must be removed together are merged in a union-find (Torch-Pruning's "dependency graph", at the
granularity of single channels):

- merge layers (Add, Subtract, Multiply, Average, Maximum, Minimum) make position k of every input
  the same channel, so a residual stream shrinks as one group;
- a shared layer with weights makes position k of each of its calls the same channel (one weight row
  or unit);
- Concatenate on the channel axis keeps each input's ids, so its slices follow their producers;
- a grouped convolution (groups > 1) makes each group's input channels and output filters one class:
  a group goes whole (the producer's channels it reads with its filters), so every group keeps its size;
- Attention and AdditiveAttention make position j of the query and of the key (the value without one)
  the same channel (they meet only in the scores' term of j), and pass the value's ids to the output.

A recurrent layer (LSTM, GRU, SimpleRNN; layer table role "recurrent") makes fresh ids, one per unit,
like a mixer; its cell's kernel and recurrent kernel hold `gates` columns per unit (`unit_calls` finds
the call of the layer that runs a cell). One that takes an initial state or is stateful is 'other': its
units' state does not start at zero, so a dead unit is not proven to stay 0. One that returns its state
keeps its units (the state outputs hold them too, pinned) but is still a reader whose input channels
can go (the rows of its kernels).
A Bidirectional layer runs two (`recurrent_parts`): with merge_mode "concat" its output holds the
forward units then the backward ones, and forward unit j and backward unit j are joined (Keras builds
both directions with one width, so they go together); with "sum", "ave" or "mul" they are one channel.

A channel class is *pinned* (never removed) when it reaches the network output, comes from a model
input, or touches a layer whose weights or semantics we cannot slice; the reason is kept for the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prunecli.structure import keras_graph, layers
from prunecli.structure.keras_graph import GraphUnsupported, TensorKey

__all__ = [
    "GraphUnsupported",
    "TensorKey",
    "apply_follower_masks",
    "build",
    "channel_axis",
    "classify",
    "dead_channels",
    "follower_masks",
    "protected_output_units",
]


MIXERS = ("mixer", "grouped")  # kinds of call whose kernel makes its output channels (one per filter or unit)
MAKERS = (*MIXERS, "recurrent")  # kinds of call that make their output channels: a class starts there
SLICED = (*MAKERS, "channelwise", "attention")  # kinds of call whose layer surgery slices


@dataclass(eq=False)
class Call:
    """One application of a layer in the graph. `kind` says how channels flow through it:
    input | mixer | grouped | recurrent | channelwise | merge | concat | flatten | attention | other."""

    layer: Any
    kind: str
    inputs: list[TensorKey]
    outputs: list[TensorKey]
    node: Any = None  # the Keras node (keras_graph.call_node runs it again on other inputs)
    why: str | None = None  # why the call is 'other' (classify's reason), None for the others

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
    shapes: dict[TensorKey, tuple]  # channels last: a channels-first tensor's shape with axis 1 moved last
    consumers: dict[TensorKey, list[Call]]
    inputs: list[TensorKey]
    outputs: list[TensorKey]
    ids: dict[TensorKey, Any] = field(default_factory=dict)  # channel ids along each tensor's last axis
    channels: ChannelSets = field(default_factory=ChannelSets)
    producers: dict[int, set] = field(default_factory=dict)  # root -> names of mixer layers making it
    first: set = field(default_factory=set)  # the tensors whose channels are on axis 1 (channels_first)

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


def unit_calls(g: LayerGraph) -> dict[int, Call]:
    """id(layer) -> its first call, for every layer of the graph and for the cell of each recurrent
    call (the cell holds the weights a target names; the recurrent layer's call makes its units)."""
    found: dict[int, Call] = {}
    for call in g.calls:
        found.setdefault(id(call.layer), call)
        if call.kind == "recurrent":
            for part in recurrent_parts(call.layer):
                found.setdefault(id(part.cell), call)
    return found


def recurrent_parts(layer) -> list:
    """The LSTM/GRU/SimpleRNN layers a recurrent layer runs: itself, or a Bidirectional's forward and
    backward layers (in the order of their outputs)."""
    if type(layer).__name__ == "Bidirectional":
        return [layer.forward_layer, layer.backward_layer]
    return [layer]


def concatenates(layer) -> bool:
    """A Bidirectional layer whose output holds each direction's units side by side."""
    return type(layer).__name__ == "Bidirectional" and layer.merge_mode == "concat"


def part_positions(layer, index: int, width: int) -> slice:
    """The output positions of part `index` of a recurrent layer `width` wide."""
    if concatenates(layer):
        half = width // 2
        return slice(index * half, (index + 1) * half)
    return slice(None)


def join_parts(layer, arrays: list, both: bool):
    """Per-part bool arrays as one per output position: side by side for a concatenating Bidirectional;
    else a position is True when it is in both parts (`both`) or in either."""
    import numpy as np

    if len(arrays) == 1:
        return arrays[0]
    if concatenates(layer):
        return np.concatenate(arrays)
    return np.logical_and.reduce(arrays) if both else np.logical_or.reduce(arrays)


def recurrent_silent(layer) -> bool:
    """Whether a recurrent unit whose state-gate slices are zero outputs exactly 0: act(0) == 0."""
    import numpy as np

    return bool(np.all(np.asarray(layer.activation(np.zeros((1, 1), "float32"))) == 0))


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") in (None, "channels_last")


def is_elementwise(fn) -> bool:
    """True when an activation acts on each value alone (relu, sigmoid...), False for softmax and kin."""
    import numpy as np

    x = np.array([[-1.5, -0.2, 0.3, 2.0]], dtype="float32")
    whole = np.asarray(fn(x))
    parts = np.concatenate([np.asarray(fn(x[:, :2])), np.asarray(fn(x[:, 2:]))], axis=1)
    return whole.shape == x.shape and np.allclose(whole, parts, atol=1e-6)


def _scalar(value) -> bool:
    import numpy as np

    return value is None or isinstance(value, (bool, int, float, str)) or np.ndim(value) == 0


def why_other(g: LayerGraph, call: Call) -> str | None:
    """Why `call` is not a channel flow the graph can cut, as classify says it without the layer's
    label ("is grouped", ...) for notes that name the layer themselves; None when classify gives no
    reason."""
    why = call.why
    label = f"{call.layer.name} ({type(call.layer).__name__}) "
    return why[len(label) :] if why and why.startswith(label) else why


def classify(
    layer, in_shapes: list[tuple], out_shapes: list[tuple], node=None, first: bool = False
) -> tuple[str, str | None]:
    """How channels flow through one call of `layer` (a layer or a Keras operation), and why it is
    'other' when it is. The role comes from the layer table (structure/layers.py).

    Shapes are channels last (LayerGraph.shapes); `first` says the call's tensors hold their channels
    on axis 1 (a Keras-2 file saved with image_data_format channels_first): then only layers that read
    that axis as the channels are cut (channels-first convolutions, pooling and padding, BatchNorm on
    axis 1, element-wise layers, merges, Concatenate on axis 1, Flatten), the others are 'other'."""
    cls = type(layer).__name__
    record = layers.spec(layer)
    role = record.role
    label = f"{layer.name} ({cls})"
    if role == "input":
        return "input", None
    declared = declares_channels_first(layer)
    if layers.is_operation(layer):
        label = (
            f"{layer.name} (tf.{layer.function})" if hasattr(layer, "function") else f"{layer.name} (operation {cls})"
        )
        if role not in ("channelwise", "merge", "concat"):
            return "other", f"{label} is not an operation the channel graph understands"
        if node is not None and not all(_scalar(a) for a in keras_graph.constant_arguments(node)):
            return "other", f"{label} has a constant operand that is not a single number"
        if role == "merge" and len(in_shapes) == 1:
            role = "channelwise"  # arithmetic with a number: each channel stays apart
        axes = reduced_axes(layer, node, len(in_shapes[0])) if in_shapes else None
        if axes is not None and (1 if first else len(in_shapes[0]) - 1) in axes:
            return "other", f"{label} reduces over the channel axis"
    if not in_shapes or not out_shapes:
        return "other", f"{label} has no tensor inputs or outputs"
    if record.family == "embedding":
        return _embedding_kind(layer, label, in_shapes, out_shapes)
    if any(len(s) < 2 or s[-1] is None for s in in_shapes + out_shapes):
        return "other", f"{label} has a tensor without a known channel axis"
    one_to_one = len(in_shapes) == 1 and len(out_shapes) == 1
    rank = len(out_shapes[0])
    channel_axes = (1,) if first else (-1, rank - 1)
    if first and role in ("recurrent", "mixer", "channelwise") and declared is None and not _reads_first(layer):
        return "other", f"{label} reads a channels_first tensor's last axis as its channels"
    if role == "mixer" and one_to_one:
        if bool(declared) != first:
            return "other", f"{label} is channels_first on a channels_last tensor"
        if getattr(layer, "groups", 1) != 1:
            if record.family != "conv" or in_shapes[0][-1] % layer.groups or out_shapes[0][-1] % layer.groups:
                return "other", f"{label} is grouped"
            return "grouped", None
        return "mixer", None
    if role == "recurrent":
        parts = recurrent_parts(layer)
        if len(parts) > 1 and any(layers.spec(p).role != "recurrent" or len(recurrent_parts(p)) > 1 for p in parts):
            return "other", f"{label} wraps a layer surgery cannot slice"
        if len(parts) > 1 and layer.merge_mode not in ("concat", "sum", "ave", "mul"):
            return "other", f"{label} returns each direction apart (merge_mode {layer.merge_mode})"
        if len(in_shapes) != 1:
            return "other", f"{label} takes an initial state (its units do not start at zero)"
        if any(getattr(p, "stateful", False) for p in parts):
            return "other", f"{label} is stateful (its units' state carries over between batches)"
        if len(in_shapes[0]) != 3 or len(out_shapes[0]) not in (2, 3):
            return "other", f"{label} has an input that is not (batch, steps, features)"
        return "recurrent", None
    if role == "channelwise" and one_to_one:
        if declared is not None and declared != first:
            return "other", f"{label} is channels_first on a channels_last tensor" if declared else (
                f"{label} reads a channels_first tensor's last axis as its channels"
            )
        if record.family == "depthwise" and getattr(layer, "depth_multiplier", 1) != 1:
            return "other", f"{label} has depth_multiplier > 1"
        if cls == "BatchNormalization" and not any(layer.axis % rank == a % rank for a in channel_axes):
            return "other", f"{layer.name} (BatchNormalization) normalises a non-channel axis"
        if cls == "Reshape" and in_shapes[0][-1] != out_shapes[0][-1]:
            return "other", f"{layer.name} (Reshape) changes the channel axis"
        if cls == "Activation" and not is_elementwise(layer.activation):
            return "other", f"{layer.name} (Activation) mixes channels (softmax-like)"
        if in_shapes[0][-1] != out_shapes[0][-1]:
            return "other", f"{label} changes the channel count"
        return "channelwise", None
    if role in ("merge", "concat"):
        if len(out_shapes) != 1 or len({len(s) for s in in_shapes + out_shapes}) != 1:
            return "other", f"{label} joins tensors of different ranks"
        if role == "concat" and any(concat_axis(layer, node) % rank == a % rank for a in channel_axes):
            return "concat", None
        return "merge", None
    if role == "attention":
        return _attention_kind(layer, label, in_shapes, out_shapes, first)
    if role == "flatten" and one_to_one and all(d is not None for d in in_shapes[0][1:]):
        if first or not declared or len(in_shapes[0]) <= 2:
            return "flatten", None
    return "other", f"{label} is not a layer surgery can slice"


def _attention_kind(layer, label: str, in_shapes: list[tuple], out_shapes: list[tuple], first: bool):
    """An Attention or AdditiveAttention call on [query, value] or [query, value, key], each (batch, steps,
    features), returning its output alone: the query's and key's channels are one (their scores' terms),
    the output's are the value's."""
    if first:
        return "other", f"{label} reads a channels_first tensor's last axis as its channels"
    if len(out_shapes) != 1:
        return "other", f"{label} returns its attention scores"
    if len(in_shapes) not in (2, 3) or any(len(s) != 3 for s in in_shapes + out_shapes):
        return "other", f"{label} has inputs that are not [query, value(, key)] of (batch, steps, features)"
    if in_shapes[0][-1] != in_shapes[-1][-1] or out_shapes[0][-1] != in_shapes[1][-1]:
        return "other", f"{label} has a query and key of different widths"
    return "attention", None


def attention_scored(call: Call) -> list:
    """The tensors of an attention call whose channels meet in its scores: the query and the key (the
    value when no key is given)."""
    return [call.inputs[0], call.inputs[-1]]


def declares_channels_first(layer) -> bool | None:
    """Whether the layer's `data_format` is channels_first; None for a layer without one."""
    data_format = getattr(layer, "data_format", None)
    return None if data_format is None else data_format == "channels_first"


def channel_axis(layer, rank: int) -> int:
    """The axis of a rank-`rank` output of `layer` that holds its channels (units): axis 1 for a layer
    whose data_format is channels_first (Conv1D/2D/3D and their transposes, depthwise and separable
    convolutions, pooling) on a tensor with spatial axes, else the last. Data-driven scores that read a
    layer's output per unit take this axis: the last axis of a channels-first output is its width."""
    return 1 if rank >= 3 and declares_channels_first(layer) else rank - 1


def _reads_first(layer) -> bool:
    """A layer without a data_format that keeps a channels-first tensor's channels on axis 1: one acting on
    each value alone (activations, dropout, element-wise operations; not PReLU, whose alpha is laid out
    channels last) or a BatchNormalization (classify checks its axis)."""
    record = layers.spec(layer)
    if type(layer).__name__ == "BatchNormalization":
        return True
    if layers.is_operation(layer) and (
        getattr(layer, "function", None) in layers.REDUCTIONS or type(layer).__name__ in layers.OPS_REDUCTIONS
    ):
        return True  # classify checks the reduced axes
    return record.pointwise and not record.followers


def flattened(g: LayerGraph, call: Call, per_channel):
    """A Flatten call's per-output-position values from its input's per-channel ones: a channels-last
    input (or a channels-first one that Flatten(data_format="channels_first") moves last first) is
    flattened position by position (the channels repeat, `tile`); a channels-first one as it is,
    channel by channel (each channel's positions in a row, `repeat`)."""
    import numpy as np

    spatial = int(g.shapes[call.outputs[0]][-1]) // max(len(per_channel), 1)
    channel_major = call.inputs[0] in g.first and not declares_channels_first(call.layer)
    return np.repeat(per_channel, spatial) if channel_major else np.tile(per_channel, spatial)


def reduced_axes(layer, node, rank: int) -> set[int] | None:
    """The axes (0 .. rank - 1) that a reduction call (keras.ops.mean/max, tf.math.reduce_*) reduces over,
    every one for `axis=None`; None for a call that is not a reduction."""
    arguments = getattr(node, "arguments", None)
    args = list(getattr(arguments, "args", None) or [])
    if getattr(layer, "function", None) in layers.REDUCTIONS:  # tf_keras recorded `axis` by keyword or position
        axis = dict(getattr(arguments, "kwargs", None) or {}).get("axis", args[1] if len(args) > 1 else None)
    elif layers.is_operation(layer) and type(layer).__name__ in layers.OPS_REDUCTIONS:
        axis = layer.axis
    else:
        return None
    if axis is None:
        return set(range(rank))
    return {int(a) % rank for a in (axis if isinstance(axis, (list, tuple)) else [axis])}


def concat_axis(layer, node=None):
    """The axis a concatenation joins on: a Concatenate layer's or keras.ops.concatenate's own, or the
    `axis` argument its node recorded (a tf_keras `tf.concat` call; its default is 0, the batch)."""
    if hasattr(layer, "axis"):
        return layer.axis
    kwargs = dict(getattr(getattr(node, "arguments", None), "kwargs", None) or {})
    return kwargs.get("axis", 0)


def _embedding_kind(layer, label: str, in_shapes: list[tuple], out_shapes: list[tuple]) -> tuple[str, str | None]:
    """An Embedding makes its output's channels, one per column of its table, from token ids it reads
    as positions, not channels: a mixer without readers. Only a plain float table is sliced: a
    quantized one keeps its codes, scales and zero points per group, and a LoRA adapter its factors."""
    if len(in_shapes) != 1 or len(out_shapes) != 1 or len(out_shapes[0]) < 2 or out_shapes[0][-1] is None:
        return "other", f"{label} has a tensor without a known channel axis"
    if layers.quantization_mode(layer) or getattr(layer, "lora_enabled", False):
        return "other", f"{label} is quantized or has a LoRA adapter"
    return "mixer", None


_GRAPHS: dict[int, tuple[Any, Any]] = {}  # id(model) -> (weak reference to it, its LayerGraph or GraphUnsupported)


def graph_of(model) -> LayerGraph:
    """The model's channel graph, built once per model object and reused until the model is rebuilt.

    The graph holds structure only (calls, shapes, channel classes), never weights, and nothing
    mutates it after `build`, so every consumer in a run (output units, tied sets, followers, constant
    folding, shrink, plan) and every mask update of a gradual schedule shares one. A rebuilt model is a
    new object and gets its own graph. A model the graph cannot read raises GraphUnsupported each time,
    without walking it again."""
    import weakref

    key = id(model)
    entry = _GRAPHS.get(key)
    if entry is None or entry[0]() is not model:
        try:
            found = build(model)
        except GraphUnsupported as exc:
            found = exc
        entry = _GRAPHS[key] = (weakref.ref(model, lambda _ref: _GRAPHS.pop(key, None)), found)
    if isinstance(entry[1], GraphUnsupported):
        raise entry[1]
    return entry[1]


def build(model) -> LayerGraph:
    """Walk the model once: calls in order, tensor shapes, consumers, channel ids and their groups."""
    g = _walk_calls(model)
    first_call: dict[int, Call] = {}
    for call in g.calls:
        _assign_ids(g, call)
        _tie_shared_call(g, first_call.setdefault(id(call.layer), call), call)
    for k in g.outputs:
        g.channels.pin(g.ids[k], "network output", first=True)
    _record_producers(g)
    return g


def _walk_calls(model) -> LayerGraph:
    """The graph's calls in topological order, each classified, with every tensor's shape (channels
    last), layout and consumers; no channel ids yet."""
    key, flat = keras_graph.key, keras_graph.flatten
    real: dict[TensorKey, tuple] = {}
    walked = []
    readers: dict[TensorKey, list] = {}
    for node in keras_graph.nodes(model, include_inputs=True):
        masks = {key(t) for t in _padding_masks(node)}
        ins = [key(t) for t in flat(node.input_tensors) if key(t) not in masks]
        outs = [key(t) for t in flat(node.outputs)]
        for k, t in zip(outs, flat(node.outputs), strict=True):
            real[k] = tuple(t.shape)
        walked.append((node, ins, outs))
        for k in ins:
            readers.setdefault(k, []).append(node.operation)
    g = LayerGraph(
        [],
        {},
        {},
        inputs=[key(t) for t in flat(keras_graph.inputs(model))],
        outputs=[key(t) for t in flat(keras_graph.outputs(model))],
    )
    for node, ins, outs in walked:
        for k in outs:
            if _output_first(node.operation, real[k], [k in g.first for k in ins], readers.get(k, [])):
                g.first.add(k)
            g.shapes[k] = (real[k][0], *real[k][2:], real[k][1]) if k in g.first else real[k]
        layouts = {k in g.first for k in ins}
        in_shapes, out_shapes = [g.shapes[k] for k in ins], [g.shapes[k] for k in outs]
        if len(layouts) > 1:
            kind, why = (
                "other",
                f"{node.operation.name} ({type(node.operation).__name__}) joins channels_first and channels_last tensors",
            )
        else:
            kind, why = classify(node.operation, in_shapes, out_shapes, node, first=layouts == {True})
        call = Call(node.operation, kind, ins, outs, node, why)
        g.calls.append(call)
        for k in ins:
            g.consumers.setdefault(k, []).append(call)
    return g


def _output_first(layer, shape: tuple, inputs_first: list[bool], readers: list) -> bool:
    """Whether an output tensor of `layer` holds its channels on axis 1: a tensor of rank 3 or more made
    by a layer whose data_format says so; by a layer without one that keeps its input's layout (BatchNorm,
    activations, merges, concatenation) when its input is channels-first; else (a model input, a Lambda)
    when a layer reading it is declared channels-first (a Flatten is not asked: it reads either)."""
    if len(shape) < 3:
        return False
    declared = declares_channels_first(layer)
    if declared is not None:
        return declared
    role = layers.spec(layer).role
    if role in ("channelwise", "merge", "concat"):
        return bool(inputs_first) and inputs_first[0]
    if role in ("mixer", "recurrent", "flatten", "attention"):
        return False
    return any(declares_channels_first(r) for r in readers if layers.spec(r).role != "flatten")


def _padding_masks(node) -> list:
    """The tensors a call gets as `mask=` (Keras passes an Embedding(mask_zero=True)'s padding mask to
    the LSTM and pooling after it): they say which steps to skip and hold no channels, so they are not
    the call's inputs here. Counted as inputs, they made every such RNN look as if it took an initial
    state and every masked pooling layer unsliceable, and a text model's units could not shrink."""
    arguments = getattr(node, "arguments", None)
    mask = getattr(arguments, "kwargs", {}).get("mask") if arguments is not None else None
    return [t for t in keras_graph.flatten(mask) if t is not None] if mask is not None else []


def _assign_ids(g: LayerGraph, call: Call) -> None:
    """Give the call's outputs their channel ids by how channels flow through its kind: fresh ids from
    inputs, mixers and layers we cannot slice (the last two pinned with the reason), the input's ids
    through channel-wise layers, joined by Concatenate, repeated by Flatten, shared by merges."""
    import numpy as np

    shapes, ch = g.shapes, g.channels
    width = [int(shapes[k][-1]) if len(shapes[k]) >= 2 and shapes[k][-1] is not None else 0 for k in call.outputs]
    if call.kind in ("input", "other"):
        for k, w in zip(call.outputs, width, strict=True):
            g.ids[k] = ch.fresh(w)
        if call.kind == "input":
            ch.pin(g.ids[call.outputs[0]], "model input")
        else:
            for k in call.inputs + call.outputs:
                ch.pin(g.ids[k], call.why)
    elif call.kind == "recurrent":
        out = g.ids[call.outputs[0]] = ch.fresh(width[0])
        if concatenates(call.layer):  # forward unit j and backward unit j go together (one width)
            ch.union(out[: width[0] // 2], out[width[0] // 2 :])
        if len(call.outputs) > 1:  # its state too: its units are kept, its input channels still go
            reason = f"{call.name} returns its state"
            ch.pin(out, reason)
            for k, w in zip(call.outputs[1:], width[1:], strict=True):
                g.ids[k] = ch.fresh(w)
                ch.pin(g.ids[k], reason)
    elif call.kind in MIXERS:
        out = g.ids[call.outputs[0]] = ch.fresh(width[0])
        activation = getattr(call.layer, "activation", None)
        if activation is not None and not is_elementwise(activation):
            ch.pin(out, f"{call.name} has a softmax-like activation")
        if call.kind == "grouped":  # a group's input channels and its filters go together
            groups = int(call.layer.groups)
            for members in np.concatenate([g.ids[call.inputs[0]].reshape(groups, -1), out.reshape(groups, -1)], 1):
                ch.union(np.repeat(members[:1], len(members) - 1), members[1:])
    elif call.kind == "channelwise":
        g.ids[call.outputs[0]] = g.ids[call.inputs[0]]
    elif call.kind == "concat":
        g.ids[call.outputs[0]] = np.concatenate([g.ids[k] for k in call.inputs])
    elif call.kind == "flatten":
        g.ids[call.outputs[0]] = flattened(g, call, g.ids[call.inputs[0]])
    elif call.kind == "attention":  # query channel j and key channel j are one; the output holds the value's
        query, key = attention_scored(call)
        ch.union(g.ids[query], g.ids[key])
        g.ids[call.outputs[0]] = g.ids[call.inputs[1]]
    else:
        _merge_ids(g, call, width[0])


def _merge_ids(g: LayerGraph, call: Call, width: int) -> None:
    """A merge layer: inputs as wide as the output share their channels (one residual group); a
    broadcast (narrower) input is pinned, and an output made of broadcasts only gets fresh pinned ids."""
    ch = g.channels
    full = [k for k in call.inputs if g.shapes[k][-1] == width]
    for k in call.inputs:
        if k not in full:
            ch.pin(g.ids[k], f"{call.name} broadcasts a narrower tensor")
    out = g.ids[call.outputs[0]] = g.ids[full[0]] if full else ch.fresh(width)
    for k in full[1:]:
        ch.union(out, g.ids[k])
    if not full:
        ch.pin(out, f"{call.name} broadcasts all of its inputs")


def _tie_shared_call(g: LayerGraph, first: Call, call: Call) -> None:
    """A shared layer's weight rows and units are the same for every call: its later calls' channels
    join the first call's, position by position (pinned where the widths differ). A shared layer
    without weights (a pooling, activation or dropout layer reused across branches, as DM3Loc's one
    MaxPooling1D serves three convolutions) ties nothing: each call passes its own channels, and tying
    them made the branches' convolutions drop the same channels whatever their scores."""
    if first is call or not getattr(call.layer, "weights", None):
        return
    for a, b in zip(first.inputs + first.outputs, call.inputs + call.outputs, strict=False):
        if len(g.ids[a]) == len(g.ids[b]):
            g.channels.union(g.ids[a], g.ids[b])
        else:
            g.channels.pin(g.ids[a], f"{call.name} is shared between tensors of different widths")
            g.channels.pin(g.ids[b], f"{call.name} is shared between tensors of different widths")


def _record_producers(g: LayerGraph) -> None:
    """For each channel class, the names of the mixer and recurrent layers that make it (the group's members)."""
    for call in g.calls:
        if call.kind in MAKERS:
            for root in set(g.channels.roots(g.ids[call.outputs[0]]).tolist()):
                g.producers.setdefault(root, set()).add(call.name)


# ---------------------------------------------------------------------------------------------------
# Output units and whole channels


def _softmax_like(layer) -> bool:
    """A layer that normalises over the channels (softmax): its outputs are still the classes it reads."""
    cls = type(layer).__name__
    if layers.is_operation(layer):
        return cls in ("Softmax", "LogSoftmax")
    if cls in layers.SOFTMAX_LIKE:
        return True
    return cls == "Activation" and not is_elementwise(layer.activation)


def protected_output_units(model) -> dict[str, str]:
    """{layer name: why}: layers whose units *are* a model output, so neuron pruning never removes them.

    From each model output the graph is followed back through layers that keep channels apart
    (activations, softmax, pooling, global pooling, reshape/flatten, dropout, normalisation,
    cropping/padding, merges, channel concatenation) to the layers with prunable units that make those
    channels: `Conv2D(7) -> GlobalAveragePooling2D -> Activation('softmax')` protects the conv, as
    `Dense(10) -> Softmax()` protects the Dense. A depthwise convolution on the way is protected and
    followed further. Without a layer graph (a subclassed model), the layers that are the outputs.
    """
    try:
        g = graph_of(model)
    except GraphUnsupported:
        return {name: "it produces a model output" for name in keras_graph.output_layer_names(model)}
    made_by = {k: call for call in g.calls for k in call.outputs}
    found: dict[str, str] = {}
    for key in g.outputs:
        output_name = made_by[key].name if key in made_by else "?"
        stack: list[tuple[TensorKey, tuple[str, ...]]] = [(key, ())]
        seen: set[TensorKey] = set()
        while stack:
            k, via = stack.pop()
            call = made_by.get(k)
            if k in seen or call is None:
                continue
            seen.add(k)
            has_units = bool(layers.spec(call.layer).prunable) or callable(
                getattr(call.layer, "get_prunable_weights", None)
            )
            if has_units:
                route = f" through {' -> '.join(reversed(via))}" if via else ""
                found.setdefault(call.name, f"its units are the channels of model output {output_name!r}{route}")
                if call.kind != "channelwise":
                    continue  # a layer that makes its channels: the output's channels start here
            elif call.kind not in ("channelwise", "merge", "concat", "flatten", "attention") and not _softmax_like(
                call.layer
            ):
                continue  # channels are made here by a layer without units (nothing to protect above it)
            stack.extend((parent, (*via, call.name)) for parent in call.inputs)
    return found


def _unit_keep(target, mask):
    """Bool per output unit of a neuron-masked target: some weight of the unit is kept."""
    import numpy as np

    moved = np.moveaxis(np.asarray(mask, dtype=bool), target.unit_axis, -1)
    return moved.reshape(-1, moved.shape[-1]).any(axis=0)


def _unit_keeps(targets, masks: dict) -> dict[int, Any]:
    """id(layer) -> bool per output unit of each neuron-masked mixer and depthwise layer: the unit is kept."""
    by_layer: dict[int, Any] = {}
    for t in targets:
        if t.name not in masks:
            continue
        record = layers.spec(t.layer)
        if (record.role == "mixer" and t.attr == record.prunable[-1][0]) or record.family == "depthwise":
            keep = _unit_keep(t, masks[t.name])
            by_layer[id(t.layer)] = keep & by_layer.get(id(t.layer), True)
    return by_layer


def dead_channels(g: LayerGraph, targets, masks: dict) -> dict[TensorKey, Any]:
    """Bool per channel of every tensor: its value no longer depends on the input (a removed channel).

    A removed unit of a mixer makes its channel dead; channel-wise layers carry it on (a depthwise
    filter whose own mask removes it kills it too); a merge's channel is dead when it is dead in every
    full-width input; concatenation and Flatten move it; anything else makes live channels.
    """
    import numpy as np

    by_layer = _unit_keeps(targets, masks)
    by_layer.update(_recurrent_keep(g, targets, masks))
    dead: dict[TensorKey, Any] = {}
    for call in g.calls:
        outs = call.outputs
        width = [len(g.ids[k]) for k in outs]
        if call.kind == "recurrent":
            parts = recurrent_parts(call.layer)
            keeps = [by_layer.get(id(p.cell), np.ones(int(p.units), bool)) for p in parts]
            keep = join_parts(call.layer, keeps, both=False)
            dead[outs[0]] = ~keep if len(keep) == width[0] else np.zeros(width[0], bool)
            for k, w in zip(outs[1:], width[1:], strict=True):  # a returned state: its units are kept
                dead[k] = np.zeros(w, bool)
        elif call.kind in MIXERS:
            keep = by_layer.get(id(call.layer))
            dead[outs[0]] = ~keep if keep is not None and len(keep) == width[0] else np.zeros(width[0], bool)
        elif call.kind == "channelwise":
            d = dead[call.inputs[0]].copy()
            keep = by_layer.get(id(call.layer))
            if keep is not None and len(keep) == len(d):
                d |= ~keep
            dead[outs[0]] = d
        elif call.kind == "merge":
            full = [dead[k] for k in call.inputs if len(dead[k]) == width[0]]
            dead[outs[0]] = np.logical_and.reduce(full) if full else np.zeros(width[0], bool)
        elif call.kind == "concat":
            dead[outs[0]] = np.concatenate([dead[k] for k in call.inputs])
        elif call.kind == "flatten":
            dead[outs[0]] = flattened(g, call, dead[call.inputs[0]])
        elif call.kind == "attention":  # a weighted mean of the value's rows: a constant value channel stays one
            dead[outs[0]] = dead[call.inputs[1]].copy()
        else:
            for k, w in zip(outs, width, strict=True):
                dead[k] = np.zeros(w, bool)
    return dead


def _recurrent_keep(g: LayerGraph, targets, masks: dict) -> dict[int, Any]:
    """id(cell) -> bool per unit of each recurrent layer: the unit is live. A unit is dead when its
    state-gate column is masked in both the kernel and the recurrent kernel (and act(0) = 0): with its
    state-gate bias zeroed too (follower_masks) it outputs exactly 0 at every step."""
    import numpy as np

    owners = {id(p.cell): p for c in g.calls if c.kind == "recurrent" for p in recurrent_parts(c.layer)}
    seen: dict[int, dict[str, Any]] = {}
    for t in targets:
        if id(t.layer) in owners and t.name in masks and t.attr in ("kernel", "recurrent_kernel"):
            seen.setdefault(id(t.layer), {})[t.attr] = t
    out: dict[int, Any] = {}
    for cell_id, found in seen.items():
        layer = owners[cell_id]
        record, units = layers.spec(layer), int(layer.units)
        if len(found) < 2 or not recurrent_silent(layer):
            continue  # a weight left unmasked keeps every unit live
        keep = np.zeros(units, dtype=bool)
        for t in found.values():
            cols = _unit_keep(t, masks[t.name])
            if len(cols) != record.gates * units:
                keep[:] = True
                break
            keep |= cols.reshape(record.gates, units)[record.state_gate]
        out[cell_id] = keep
    return out


def follower_masks(model, targets, masks: dict) -> list[tuple[Any, Any]]:
    """[(variable, keep)]: the per-channel parameters that follow neuron-masked units, with boolean
    keep-masks of the variable's shape (False = zeroed), so a removed channel outputs exactly f(0).

    Covers each masked mixer's bias (a recurrent layer's: every gate's entry of a dead unit), and the
    followers (layer table) of every channel-wise layer the dead channel passes before the next mixing
    layer: BatchNorm gamma, beta and moving statistics (its output becomes 0 instead of beta's
    shift), PReLU alpha, depthwise filters and biases. A shared layer keeps a position live in any
    call. Every such variable of the model is listed, with an all-True mask where nothing is removed,
    so a trainer can allocate its masks once.
    `masks` maps target name -> keep mask (a MaskSet's `masks`); call it for neuron masks only.
    """
    import numpy as np

    try:
        g = graph_of(model)
    except GraphUnsupported:
        return []
    dead = dead_channels(g, targets, masks)
    unit_keeps = _unit_keeps(targets, masks)
    keep_of: dict[int, tuple[Any, Any]] = {}

    def hold(var, axis: int, gone) -> None:
        if var is None or len(var.shape) == 0 or var.shape[axis] != len(gone):
            return  # e.g. a PReLU alpha shared across channels
        shape = [1] * len(var.shape)
        shape[axis] = len(gone)
        keep = np.broadcast_to((~gone).reshape(shape), tuple(var.shape))
        _, before = keep_of.get(id(var), (var, None))
        keep_of[id(var)] = (var, keep if before is None else before | keep)  # shared: live in any call

    for call in g.calls:
        record = layers.spec(call.layer)
        if call.kind in MIXERS and record.bias:
            hold(getattr(call.layer, record.bias, None), -1, dead[call.outputs[0]])
        elif call.kind == "recurrent":
            out = dead[call.outputs[0]]
            for i, part in enumerate(recurrent_parts(call.layer)):
                gone = out[part_positions(call.layer, i, len(out))]
                hold(getattr(part.cell, "bias", None), -1, np.tile(gone, layers.spec(part).gates))
        elif call.kind == "channelwise" and record.followers:
            for attr, axis, side in record.followers:
                gone = dead[call.inputs[0]] if side == "in" else dead[call.outputs[0]]
                hold(getattr(call.layer, attr, None), axis, gone)
        elif record.role == "mixer" and not _channels_last(call.layer) and id(call.layer) in unit_keeps:
            _hold_channels_first(g, call, ~unit_keeps[id(call.layer)], hold)
    return [(var, np.array(keep)) for var, keep in keep_of.values()]


def _hold_channels_first(g: LayerGraph, call: Call, gone, hold) -> None:
    """The followers of the removed units of a channels-first convolution the graph leaves 'other' (one
    reading a tensor another layer reads channels last): it is never sliced, but its
    masked units are still removed whole: its bias, and the parameters of every channels-first
    BatchNorm (axis 1) its output reaches through layers that act on each value alone or keep the
    channel axis first (activations, dropout, channels-first pooling and padding). Without them a
    removed filter of OpenFace's nn4.small2 still put BatchNorm's shift into every later layer."""
    record = layers.spec(call.layer)
    hold(getattr(call.layer, record.bias, None) if record.bias else None, -1, gone)
    todo, seen = [call.outputs[0]], set()
    while todo:
        for reader in g.consumers.get(todo.pop(), []):
            layer, spec = reader.layer, layers.spec(reader.layer)
            if id(reader) in seen or spec.role != "channelwise" or len(reader.inputs) != 1:
                continue
            seen.add(id(reader))
            first = getattr(layer, "data_format", None) == "channels_first"
            activation = getattr(layer, "activation", None)
            if type(layer).__name__ == "BatchNormalization":
                if layer.axis % len(g.shapes[reader.inputs[0]]) != 1:
                    continue
                for attr, axis, _side in spec.followers:
                    hold(getattr(layer, attr, None), axis, gone)
            elif not (first or (spec.pointwise and (activation is None or is_elementwise(activation)))):
                continue
            todo.append(reader.outputs[0])


def apply_follower_masks(pairs) -> None:
    """Zero the masked entries of each (variable, keep) pair, in place."""
    import numpy as np

    for var, keep in pairs:
        var.assign(np.where(keep, np.asarray(var), 0).astype(np.asarray(var).dtype))
