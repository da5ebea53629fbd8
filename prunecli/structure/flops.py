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

from prunecli.structure import keras_graph, layers, transformer  # noqa: F401  (transformer registers KerasHub block costs)

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


def nonzeros(var) -> int:
    """Non-zero entries of a variable (or array), read in place (runtime.weight_values)."""
    import numpy as np

    from prunecli.runtime import weight_values

    return int(np.count_nonzero(weight_values(var)))


def _size(var) -> int:
    return int(math.prod(var.shape))


def _times(positions: int | None, weights: list) -> tuple[int | None, int | None]:
    """Each position multiplies every weight once: (dense, non-zero) multiply-adds."""
    if positions is None:
        return None, None
    return positions * sum(_size(w) for w in weights), positions * sum(nonzeros(w) for w in weights)


def _einsum(layer, out_shape) -> tuple[int | None, int | None]:
    """Output elements times the length of the summed (kernel-only) axes."""
    elements = _prod(tuple(out_shape)[1:])
    kernel_spec, out_spec = layer.equation.split(",")[1].split("->")
    reduced = _prod(d for d, ch in zip(layer.kernel.shape, kernel_spec, strict=False) if ch not in out_spec)
    if elements is None or reduced is None:
        return None, None
    density = nonzeros(layer.kernel) / max(_size(layer.kernel), 1)
    return elements * reduced, round(elements * reduced * density)


def _attention(layer, in_shapes) -> tuple[int | None, int | None]:
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
    nonzero = sum(n * nonzeros(k) for n, k in parts) + scores
    return dense, nonzero


def _recurrent(layer, in_shape) -> tuple[int | None, int | None]:
    steps = tuple(in_shape)[1] if len(in_shape) > 2 else 1
    cell = layer.cell
    return _times(steps, [cell.kernel, cell.recurrent_kernel])


def _bidirectional(layer, in_shapes):
    parts = [_recurrent(sub, in_shapes[0]) for sub in (layer.forward_layer, layer.backward_layer)]
    if any(p[0] is None for p in parts):
        return None, None
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


# How each rule of the layer table (structure/layers.py, `macs`) counts one call.
_RULES = {
    "dense": lambda layer, ins, outs: _times(_positions(outs[0]), [layer.kernel]),
    "einsum": lambda layer, ins, outs: _einsum(layer, outs[0]),
    "conv": lambda layer, ins, outs: _times(_positions(outs[0]), [layer.kernel]),  # depthwise too
    "transpose": lambda layer, ins, outs: _times(_positions(ins[0]), [layer.kernel]),
    "separable": lambda layer, ins, outs: _times(_positions(outs[0]), [layer.depthwise_kernel, layer.pointwise_kernel]),
    "rnn": lambda layer, ins, outs: _recurrent(layer, ins[0]),
    "bidirectional": lambda layer, ins, outs: _bidirectional(layer, ins),
    "attention": lambda layer, ins, outs: _attention(layer, ins),
    "zero": lambda layer, ins, outs: (0, 0),
}


def layer_cost(layer, in_shapes: list, out_shapes: list) -> tuple[int | None, int | None]:
    """(multiply-adds, non-zero multiply-adds) of one call of `layer`, per example."""
    rule = layers.spec(layer).macs
    if callable(rule):
        return rule(layer, in_shapes, out_shapes)
    if rule is not None:
        return _RULES[rule](layer, in_shapes, out_shapes)
    if all(len(w.shape) <= 1 for w in getattr(layer, "weights", [])):
        return 0, 0  # element-wise (normalisation, PReLU...)
    return None, None


def calls(model, prefix: str = ""):
    """(path, layer, input shapes, output shapes) of every layer call, nested models opened."""
    if keras_graph.functional(model) is None:
        return None
    out = []
    for node in keras_graph.nodes(model):
        op = node.operation
        if not getattr(op, "weights", None):
            continue
        path = f"{prefix}{op.name}"
        inner = calls(op, f"{path}/") if keras_graph.functional(op) is not None else None
        if inner is not None:
            out.extend(inner)
            continue
        out.append((path, op, [t.shape for t in node.input_tensors], [t.shape for t in node.outputs]))
    return out


def count(model) -> dict[str, Any]:
    """Multiply-adds per example, per layer call and in total (None where unknown)."""
    found = calls(model)
    if found is None:  # a subclassed model: no graph to read shapes from
        return {"unit": UNIT, "total": None, "nonzero": None, "partial": True, "layers": []}
    layers = []
    for path, layer, ins, outs in found:
        dense, nonzero = layer_cost(layer, ins, outs)
        layers.append({"layer": path, "class": type(layer).__name__, "macs": dense, "nonzero_macs": nonzero})
    known = [row for row in layers if row["macs"] is not None]
    return {
        "unit": UNIT,
        "total": sum(row["macs"] for row in known),
        "nonzero": sum(row["nonzero_macs"] for row in known),
        "partial": len(known) < len(layers),
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
    return out
