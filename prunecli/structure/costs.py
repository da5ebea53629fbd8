"""Exact parameters and multiply-adds of a model after `--shrink`, as a function of the channels it keeps.

`--target params=0.3` searches for an allocation of channels whose *shrunk* model has 30% of the
dense model's parameters. Rebuilding the model for every candidate would cost seconds each; this
module answers the same question with integer arithmetic on the channel graph (channels.py), so a
search can try thousands of allocations.

Why it is exact. Surgery (surgery.py) removes channel classes (union-find roots) and nothing else:
after a cut, every tensor of the graph is as wide as the number of its positions whose class is kept
(a Flatten output repeats each class once per spatial position). Every weight of a layer surgery
slices has its size scale with the kept widths of the layer's input (i) and output (o), the way
`surgery.slice_weight` cuts it:

    Dense/Conv kernel, SeparableConv pointwise, ConvTranspose   size * (i * o) / (I * O)
    bias, an Embedding's (tokens, columns) table, a grouped     size * o / O   (whole groups go: each
      convolution's kernel                                                      keeps its input rows)
    SeparableConv depthwise kernel                              size * i / I
    channel-wise layers (BatchNorm's four vectors, PReLU,       size * i / I   (the weights with one
      DepthwiseConv kernel and bias, AdditiveAttention's scale)                 entry per channel)

and every multiply-add count of flops.py is (positions) x (kernel size), which scales the same way
(positions do not change when channels go). A recurrent layer's units are its output channels and
its recurrent kernel reads them back, so it adds a term in o * o: per direction, gates x (i*u + u*u +
bias rows*u) parameters and steps x gates x (i*u + u*u) multiply-adds, with u = o (u = o / 2 per
direction of a Bidirectional that concatenates them). So the cost of a layer is b*i + c*o + d*i*o +
e*o*o / e_div plus a constant, with integers b, c, d, e, e_div, and the total is the dense total (model.count_params(), or
flops.count's total) plus the sum of each layer's change. Layers surgery leaves alone (their
channels are pinned: outputs, inputs, layers it cannot slice) keep their cost: it is in the constant.

Which channels surgery removes is decided by masks and constants (surgery.decide_cuts); the caller
says which classes go (`keep`), and this module does not second-guess it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from prunecli.structure import channels, flops, folded_steps, layers

KINDS = ("params", "flops")


@dataclass(frozen=True)
class Term:
    """One layer's (params) or one call's (flops) cost as b*i + c*o + d*i*o + e*o*o / e_div, i and o
    the kept widths of tensor `inp` and tensor `out` (indices into ChannelCosts' tensors); the o*o term
    is a recurrent kernel's (e_div 4 for the two halves of a concatenating Bidirectional: o is even)."""

    layer: str
    inp: int
    out: int
    b: int
    c: int
    d: int
    e: int = 0
    e_div: int = 1

    def at(self, i: int, o: int) -> int:
        return self.b * i + self.c * o + self.d * i * o + self.e * o * o // self.e_div


def _exact(size: int, by: int) -> int | None:
    """size / by when it divides (a weight really indexed by those channels), else None."""
    return size // by if by > 0 and size % by == 0 else None


def _param_coefficients(layer, kind: str, in_width: int, out_width: int) -> tuple[int, int, int] | None:
    """(b, c, d) of one layer's parameters, or None when a weight does not scale as surgery slices it
    (the layer then counts as a constant, and stays exact only while its channels are pinned)."""
    b = c = d = 0
    depthwise = layers.spec(layer).family == "depthwise"
    for v in layer.weights:
        name, shape = v.name, tuple(int(s) for s in v.shape)
        size = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if kind in ("channelwise", "attention"):  # attention: AdditiveAttention's scale, per query channel
            axis = -2 if depthwise and name == "kernel" else -1
            if not shape or len(shape) < -axis or shape[axis] != in_width:
                continue  # not per channel (a shared PReLU alpha): constant
            part = _exact(size, in_width)
            if part is None:
                return None
            b += part
            continue
        if name in ("bias", "embeddings") or kind == "grouped":  # per unit: an Embedding's table too, and a
            part, slot = _exact(size, out_width), "c"  # grouped kernel (each kept group keeps its input rows)
        elif name == "depthwise_kernel":
            part, slot = _exact(size, in_width), "b"
        else:  # kernel, pointwise_kernel, a transposed kernel: inputs x units
            part, slot = _exact(size, in_width * out_width), "d"
        if part is None:
            return None
        if slot == "b":
            b += part
        elif slot == "c":
            c += part
        else:
            d += part
    return b, c, d


def _recurrent_coefficients(layer, kind: str, in_shape, in_width: int, out_width: int) -> tuple | None:
    """(b, c, d, e, e_div) of a recurrent layer's parameters or multiply-adds (the module docstring), or
    None when its weights are not the sizes that formula says (the layer then counts as a constant)."""
    parts = channels.recurrent_parts(layer)
    split = 2 if channels.concatenates(layer) else 1  # o = split * u
    units = out_width // split
    gates = layers.spec(parts[0]).gates
    sizes = 0
    bias_rows = 0
    for part in parts:
        bias = getattr(part.cell, "bias", None)
        rows = 0 if bias is None else (int(bias.shape[0]) if len(bias.shape) == 2 else 1)  # GRU: 2 rows
        bias_rows = rows if part is parts[0] else bias_rows
        if rows != bias_rows or int(part.units) != units or layers.spec(part).gates != gates:
            return None
        sizes += sum(int(np.prod(v.shape, dtype=np.int64)) for v in part.weights)
    n = len(parts)
    if sizes != n * gates * (in_width * units + units * units + bias_rows * units):
        return None
    if kind == "params":
        return 0, n * gates * bias_rows // split, n * gates // split, n * gates, split * split
    steps = tuple(in_shape)[1] if len(in_shape) > 2 else 1
    if steps is None:
        return None
    return 0, 0, steps * n * gates // split, steps * n * gates, split * split


def _positions(shape) -> int | None:
    dims = tuple(shape)[1:-1]
    if any(x is None for x in dims):
        return None
    return int(np.prod(dims, dtype=np.int64)) if dims else 1


def _size(var) -> int:
    return int(np.prod(tuple(int(s) for s in var.shape), dtype=np.int64))


def _flop_coefficients(layer, kind: str, in_shape, out_shape, in_width: int, out_width: int):
    """(b, c, d) of one call's multiply-adds as flops.py counts them, or None (unknown or unscalable)."""
    rule = layers.spec(layer).macs
    if kind == "channelwise":  # a depthwise convolution: positions x kernel, one filter per channel
        positions = _positions(out_shape)
        if rule != "conv" or positions is None:
            return None
        part = _exact(positions * _size(layer.kernel), in_width)
        return None if part is None else (part, 0, 0)
    if kind == "grouped":  # whole groups go: each kept filter keeps its positions x kernel
        positions = _positions(out_shape)
        part = None if positions is None else _exact(positions * _size(layer.kernel), out_width)
        return None if part is None else (0, part, 0)
    if rule in ("dense", "conv"):
        positions, weights = _positions(out_shape), [(layer.kernel, "d")]
    elif rule == "transpose":
        positions, weights = _positions(in_shape), [(layer.kernel, "d")]
    elif rule == "separable":
        positions, weights = _positions(out_shape), [(layer.depthwise_kernel, "b"), (layer.pointwise_kernel, "d")]
    else:
        return None
    if positions is None:
        return None
    b = d = 0
    for var, slot in weights:
        part = _exact(positions * _size(var), in_width if slot == "b" else in_width * out_width)
        if part is None:
            return None
        if slot == "b":
            b += part
        else:
            d += part
    return b, 0, d


class ChannelCosts:
    """Parameters or multiply-adds of `model` after cutting any set of channel classes, exactly.

    `roots` are the channel classes of the graph (sorted); a keep vector is one bool per root. The
    cost of a keep vector is `total(keep)`; a search that removes channels a few at a time keeps the
    tensor widths (`widths`) and asks `saving(widths, drop)` what removing some more would save.
    `dense` is the model's own count (model.count_params(), or flops.count's total)."""

    def __init__(self, model, kind: str = "params"):
        if kind not in KINDS:
            raise ValueError(f"unknown cost kind {kind!r}; one of {', '.join(KINDS)}")
        g = channels.graph_of(model)  # GraphUnsupported: the caller says why nothing can be cut
        self.kind = kind
        self.graph = g
        if kind == "params":
            self.dense = int(model.count_params())
        else:
            counted = flops.count(model)
            self.dense = int(counted["total"] or 0)
            self.partial = bool(counted["partial"])
        keys: dict = {}
        terms: list[Term] = []
        rows = folded_steps.rows_per_example(model) if kind == "flops" else {}  # a call per frame counts per frame

        def tensor(k) -> int:
            return keys.setdefault(k, len(keys))

        done: set[int] = set()
        for call in g.calls:
            layer = call.layer
            if call.kind not in channels.SLICED or layers.is_operation(layer) or not layer.weights:
                continue
            if call.kind == "attention" and kind == "flops":
                continue  # no multiply-adds counted for it (flops.py)
            if call.kind == "channelwise" and kind == "flops" and layers.spec(layer).family != "depthwise":
                continue  # element-wise layers cost no multiply-adds (flops.py)
            if kind == "params" and id(layer) in done:
                continue  # a shared layer's weights count once (its later calls have the same widths)
            done.add(id(layer))
            k_in, k_out = call.inputs[0], call.outputs[0]
            in_width, out_width = len(g.ids[k_in]), len(g.ids[k_out])
            if call.kind == "recurrent":
                found = _recurrent_coefficients(layer, kind, g.shapes[k_in], in_width, out_width)
            elif kind == "params":
                found = _param_coefficients(layer, call.kind, in_width, out_width)
            else:
                found = _flop_coefficients(layer, call.kind, g.shapes[k_in], g.shapes[k_out], in_width, out_width)
            if found is None or not any(found):
                continue
            times = rows.get(id(call.node.outputs[0]), 1)
            if times != 1:  # coefficients b, c, d, e (not e's divisor)
                found = (*(v * times for v in found[:4]), *found[4:])
            terms.append(Term(call.name, tensor(k_in), tensor(k_out), *found))
        self.terms = terms
        all_roots = [g.channels.roots(g.ids[k]) for k in keys]
        self.roots = np.unique(np.concatenate(all_roots)) if all_roots else np.zeros(0, np.int64)
        # per tensor, its classes (indices into roots) and how many positions each holds
        self.members: list[tuple[np.ndarray, np.ndarray]] = []
        for found in all_roots:
            uniq, counts = np.unique(found, return_counts=True)
            self.members.append((np.searchsorted(self.roots, uniq), counts.astype(np.int64)))
        self.full = np.array([int(c.sum()) for _, c in self.members], dtype=np.int64)
        self._base = sum(t.at(int(self.full[t.inp]), int(self.full[t.out])) for t in terms)
        self.terms_of: list[list[int]] = [[] for _ in keys]
        for j, t in enumerate(terms):
            self.terms_of[t.inp].append(j)
            if t.out != t.inp:
                self.terms_of[t.out].append(j)
        # per class, the tensors that hold it and how often: what removing it takes from each
        holds: dict[int, list[tuple[int, int]]] = {}
        for t_index, (idx, counts) in enumerate(self.members):
            for r, n in zip(idx.tolist(), counts.tolist(), strict=True):
                holds.setdefault(r, []).append((t_index, n))
        self.holds = holds

    def index(self, roots) -> np.ndarray:
        """Positions in `roots` of these channel classes; -1 for a class no costed layer touches."""
        roots = np.asarray(roots, dtype=np.int64)
        pos = np.searchsorted(self.roots, roots)
        pos = np.minimum(pos, max(len(self.roots) - 1, 0))
        found = (self.roots[pos] == roots) if len(self.roots) else np.zeros(roots.shape, bool)
        return np.where(found, pos, -1)

    def widths(self, keep: np.ndarray) -> np.ndarray:
        """The kept width of every costed tensor for a keep vector over `roots`."""
        k = np.asarray(keep, dtype=np.int64)
        return np.array([int(counts @ k[idx]) for idx, counts in self.members], dtype=np.int64)

    def total_at(self, widths: np.ndarray) -> int:
        """The model's cost with these tensor widths."""
        now = sum(t.at(int(widths[t.inp]), int(widths[t.out])) for t in self.terms)
        return self.dense + now - self._base

    def total(self, keep: np.ndarray) -> int:
        """The model's cost after cutting the classes where `keep` is False."""
        return self.total_at(self.widths(keep))

    def drop(self, classes) -> dict[int, int]:
        """{tensor: positions lost} when these classes (indices into roots; -1 ignored) are cut."""
        out: dict[int, int] = {}
        for r in classes:
            for t, n in self.holds.get(int(r), ()):
                out[t] = out.get(t, 0) + n
        return out

    def saving(self, widths: np.ndarray, drop: dict[int, int]) -> int:
        """How much the cost falls from `widths` when tensors lose `drop` positions (exact)."""
        seen: set[int] = set()
        saved = 0
        for t in drop:
            for j in self.terms_of[t]:
                if j in seen:
                    continue
                seen.add(j)
                term = self.terms[j]
                i, o = int(widths[term.inp]), int(widths[term.out])
                saved += term.at(i, o) - term.at(i - drop.get(term.inp, 0), o - drop.get(term.out, 0))
        return saved

    def neighbours(self, drop: dict[int, int]) -> set[int]:
        """The tensors whose costed layers also read or write one of these tensors: the widths a
        removal from `drop` changes the savings of."""
        out: set[int] = set()
        for t in drop:
            for j in self.terms_of[t]:
                out.add(self.terms[j].inp)
                out.add(self.terms[j].out)
        return out
