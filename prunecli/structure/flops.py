"""Theoretical FLOPs: multiply-adds per example of the layers that hold weight matrices.

Counted from each layer call's input and output shapes in the model graph:
Dense and EinsumDense, Conv1D/2D/3D (groups included), their transposes, DepthwiseConv, SeparableConv,
LSTM/GRU/SimpleRNN (per time step), Bidirectional, MultiHeadAttention (projections and both attention
products). Embedding costs 0 (a lookup). Normalisation, activations, pooling and merges are element-wise
and usually folded or fused at inference, so they are not counted. `nonzero` counts only the
multiply-adds of non-zero weights: what a sparse kernel could skip down to. A layer whose cost cannot be
known (an unknown class with weight matrices, or an unknown spatial size) counts as None and makes the
total `partial`.
"""

from __future__ import annotations

import math
from typing import Any

from prunecli.structure import (  # noqa: F401  (transformer and vision_encoders register KerasHub block costs)
    folded_steps,
    keras_graph,
    layers,
    transformer,
    vision_encoders,
)
from prunecli.structure.census import Census
from prunecli.structure.census import nonzeros as census_nonzeros

UNIT = "multiply-adds per example"


def _prod(dims) -> int | None:
    out = 1
    for d in dims:
        if d is None:
            return None
        out *= int(d)
    return out


def _positions(shape) -> int | None:
    """Positions a kernel slides over: every axis but the batch and the channels."""
    return _prod(tuple(shape)[1:-1])


def nonzeros(var, census: Census | None = None) -> int:
    """Non-zero entries of a variable (or array): as `census` read them, else read in place now."""
    return census_nonzeros(var, census)


def _size(var) -> int:
    return int(math.prod(var.shape))


def _times(positions: int | None, weights: list, nz=nonzeros) -> tuple[int | None, int | None]:
    """Each position multiplies every weight once: (dense, non-zero) multiply-adds."""
    if positions is None:
        return None, None
    return positions * sum(_size(w) for w in weights), positions * sum(nz(w) for w in weights)


def _einsum(layer, out_shape, nz=nonzeros) -> tuple[int | None, int | None]:
    """Output elements times the length of the summed (kernel-only) axes."""
    elements = _prod(tuple(out_shape)[1:])
    kernel_spec, out_spec = layer.equation.split(",")[1].split("->")
    reduced = _prod(d for d, ch in zip(layer.kernel.shape, kernel_spec, strict=False) if ch not in out_spec)
    if elements is None or reduced is None:
        return None, None
    density = nz(layer.kernel) / max(_size(layer.kernel), 1)
    return elements * reduced, round(elements * reduced * density)


def _attention(layer, in_shapes, nz=nonzeros) -> tuple[int | None, int | None]:
    query = in_shapes[0]
    value = in_shapes[1] if len(in_shapes) > 1 else query
    key = in_shapes[2] if len(in_shapes) > 2 else value
    tq, tk, tv = _positions(query), _positions(key), _positions(value)
    if None in (tq, tk, tv):
        return None, None
    heads, kdim, vdim, (query_k, key_k, value_k, output_k) = keras_graph.attention_parts(layer)
    parts = [(tq, query_k), (tk, key_k), (tv, value_k), (tq, output_k)]
    scores = tq * tk * heads * (kdim + vdim)  # Q·K^T and softmax(.)·V: no weights, never sparse
    dense = sum(n * _size(k) for n, k in parts) + scores
    nonzero = sum(n * nz(k) for n, k in parts) + scores
    return dense, nonzero


def _recurrent(layer, in_shape, nz=nonzeros) -> tuple[int | None, int | None]:
    steps = tuple(in_shape)[1] if len(in_shape) > 2 else 1
    cell = layer.cell
    return _times(steps, [cell.kernel, cell.recurrent_kernel], nz)


def _bidirectional(layer, in_shapes, nz=nonzeros):
    parts = [_recurrent(sub, in_shapes[0], nz) for sub in (layer.forward_layer, layer.backward_layer)]
    if any(p[0] is None for p in parts):
        return None, None
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


# How each rule of the layer table (structure/layers.py, `macs`) counts one call; `nz` counts a
# variable's non-zeros (from the run's census of the weights where it has one).
_RULES = {
    "dense": lambda layer, ins, outs, nz: _times(_positions(outs[0]), [layer.kernel], nz),
    "einsum": lambda layer, ins, outs, nz: _einsum(layer, outs[0], nz),
    "conv": lambda layer, ins, outs, nz: _times(_positions(outs[0]), [layer.kernel], nz),  # depthwise too
    "transpose": lambda layer, ins, outs, nz: _times(_positions(ins[0]), [layer.kernel], nz),
    "separable": lambda layer, ins, outs, nz: _times(
        _positions(outs[0]), [layer.depthwise_kernel, layer.pointwise_kernel], nz
    ),
    "rnn": lambda layer, ins, outs, nz: _recurrent(layer, ins[0], nz),
    "bidirectional": lambda layer, ins, outs, nz: _bidirectional(layer, ins, nz),
    "attention": lambda layer, ins, outs, nz: _attention(layer, ins, nz),
    "zero": lambda layer, ins, outs, nz: (0, 0),
}


def layer_cost(layer, in_shapes: list, out_shapes: list, census: Census | None = None) -> tuple[int | None, int | None]:
    """(multiply-adds, non-zero multiply-adds) of one call of `layer`, per example; the non-zeros as
    `census` read them where it read the weight (a registered callable rule counts its own)."""
    rule = layers.spec(layer).macs
    if getattr(layer, "data_format", None) == "channels_first":  # positions are the axes after the channels
        in_shapes, out_shapes = ([_channels_last(s) for s in shapes] for shapes in (in_shapes, out_shapes))
    if callable(rule):
        return rule(layer, in_shapes, out_shapes)
    if rule is not None:
        return _RULES[rule](layer, in_shapes, out_shapes, lambda var: nonzeros(var, census))
    if all(len(w.shape) <= 1 for w in getattr(layer, "weights", [])):
        return 0, 0  # element-wise (normalisation, PReLU...)
    return None, None


def _channels_last(shape):
    """A channels-first shape (batch, channels, positions...) as (batch, positions..., channels)."""
    shape = tuple(shape)
    return (shape[0], *shape[2:], shape[1]) if len(shape) >= 3 else shape


def _closed(shape, seq_len: int | None):
    """The shape with its open sequence axes (any open axis between the batch and the last) at seq_len."""
    dims = tuple(shape)
    if seq_len is None or len(dims) < 3:
        return dims
    return (dims[0], *(seq_len if d is None else d for d in dims[1:-1]), dims[-1])


def calls(model, prefix: str = "", seq_len: int | None = None):
    """(path, layer, input shapes, output shapes, calls per example) of every layer call, nested models
    opened; open sequence lengths read as `seq_len` when given (--seq-len). A call inside a folded
    TimeDistributed(Model) (folded_steps.py) runs once per step of each example."""
    if keras_graph.functional(model) is None:
        return None
    out = []
    rows = folded_steps.rows_per_example(model)
    for node in keras_graph.nodes(model):
        op = node.operation
        if not getattr(op, "weights", None):
            continue
        path = f"{prefix}{op.name}"
        inner = calls(op, f"{path}/", seq_len) if keras_graph.functional(op) is not None else None
        if inner is not None:
            out.extend(inner)
            continue
        ins = [_closed(t.shape, seq_len) for t in node.input_tensors]
        times = rows.get(id(keras_graph.flatten(node.outputs)[0]), 1)
        out.append((path, op, ins, [_closed(t.shape, seq_len) for t in node.outputs], times))
    return out


def count(model, seq_len: int | None = None, census: Census | None = None) -> dict[str, Any]:
    """Multiply-adds per example, per layer call and in total (None where unknown; an open sequence
    length counts as `seq_len` when given). Non-zero weights as `census` (census.py) read them, where
    the run has one of the weights as they are now; else read here."""
    found = calls(model, seq_len=seq_len)
    if found is None:  # a subclassed model: no graph to read shapes from
        return {"unit": UNIT, "total": None, "nonzero": None, "partial": True, "layers": []}
    layers = []
    for path, layer, ins, outs, times in found:
        dense, nonzero = (None if c is None else c * times for c in layer_cost(layer, ins, outs, census))
        layers.append({"layer": path, "class": type(layer).__name__, "macs": dense, "nonzero_macs": nonzero})
    known = [row for row in layers if row["macs"] is not None]
    partial = len(known) < len(layers)
    unknown = partial and not any(row["macs"] for row in known)  # nothing counted: no total, not a 0
    return {
        "unit": UNIT,
        "total": None if unknown else sum(row["macs"] for row in known),
        "nonzero": None if unknown else sum(row["nonzero_macs"] for row in known),
        "partial": partial,
        "layers": layers,
    }


def section(before: dict, after: dict) -> dict[str, Any]:
    """The report's `flops` section from two `count` results: totals before and after pruning."""
    out: dict[str, Any] = {"unit": UNIT}
    for stage, found in (("before", before), ("after", after)):
        out[stage] = found["total"]
        out[f"{stage}_nonzero"] = found["nonzero"]
        if found["partial"]:
            out["partial"] = True
        if found.get("at_data_sizes"):  # open input sizes, counted at an example's of --data
            out["at_data_sizes"] = True
    return out
