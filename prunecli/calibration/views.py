"""How a layer's kernel and inputs are seen as one matrix product X @ W, the form calibration works in.

Matrix views (`LayerView`): a kernel becomes W of shape (d_in, d_out), rows = the reduction axis, so
the layer computes X @ W. For Dense and Conv this is `Target.to_matrix` (a conv kernel's rows are
kh*kw*c_in with the input channel fastest, the order of `tf.image.extract_patches`), so N:M groups
run along the same axis as everywhere else in prunecli. For EinsumDense the reduction axes are read
from the equation (an attention query kernel (d_model, heads, head_dim) is (d_model, heads*head_dim)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

# Layers calibrated through their inputs. Everything else (depthwise and separable convs, transposed
# convs, Conv3D, Embedding, RNN cells, custom prunable weights) falls back to magnitude.
CALIBRATED = ("Dense", "Conv1D", "Conv2D", "EinsumDense")


@dataclass
class LayerView:
    """How one target's kernel and its layer's inputs map to the (d_in, d_out) matrix view."""

    target: Any
    kind: str  # dense | conv | einsum
    d_in: int
    d_out: int
    perm: list[int] = field(default_factory=list)  # einsum: kernel axes -> (reduction..., output...)
    input_spec: str = ""  # einsum: "abc->abc" reordering of the input, reduction axes last

    def to_matrix(self, kernel):
        import tensorflow as tf

        if self.kind != "einsum":
            return self.target.to_matrix(kernel)
        return tf.reshape(tf.transpose(kernel, self.perm), (self.d_in, self.d_out))

    def from_matrix(self, matrix):
        import tensorflow as tf

        if self.kind != "einsum":
            return self.target.from_matrix(matrix)
        shape = self.target.shape
        moved = [shape[a] for a in self.perm]
        inverse = [self.perm.index(a) for a in range(len(shape))]
        return tf.transpose(tf.reshape(matrix, moved), inverse)

    # --- convolution geometry: explicit padding, then VALID patches (so tiles can be cut) ---------

    def _conv_geometry(self, spatial: list[int]):
        """(pads [(before, after)] per spatial axis, kernel, strides, dilations, output sizes), with a
        1-D conv treated as 2-D of width 1 (its length on the height axis)."""
        layer = self.target.layer
        ks, st, dil = list(layer.kernel_size), list(layer.strides), list(layer.dilation_rate)
        padding = str(layer.padding).lower()
        if len(ks) == 1:
            ks, st, dil, spatial = [ks[0], 1], [st[0], 1], [dil[0], 1], [spatial[0], 1]
        pads, outs = [], []
        for size, k, s, d in zip(spatial, ks, st, dil, strict=True):
            eff = (k - 1) * d + 1
            if padding == "causal":
                pads.append((eff - 1, 0))
            elif padding == "same":
                out = -(-size // s)
                total = max((out - 1) * s + eff - size, 0)
                pads.append((total // 2, total - total // 2))
            else:
                pads.append((0, 0))
            padded = size + sum(pads[-1])
            outs.append(max((padded - eff) // s + 1, 0) if padded >= eff else 0)
        return pads, ks, st, dil, outs

    def rows_per_example(self, in_shape) -> int:
        """Rows of X one example gives, from the layer's input shape (batch axis first)."""
        per = math.prod(int(d) for d in in_shape[1:])
        if self.kind != "conv":
            return max(per // self.d_in, 1)
        *_, outs = self._conv_geometry([int(d) for d in in_shape[1:-1]])
        return math.prod(outs)

    def blocks(self, x, max_rows: int):
        """The layer's input batch as blocks of X (rows, d_in), float32, none above max_rows rows
        (a block is at least one row); their concatenation is X in row order."""
        import tensorflow as tf

        x = tf.cast(x, tf.float32)
        max_rows = max(int(max_rows), 1)
        if self.kind != "conv":
            m = tf.einsum(self.input_spec, x) if self.kind == "einsum" else x
            m = tf.reshape(m, (-1, self.d_in))
            n = int(m.shape[0])
            if n <= max_rows:
                yield m
                return
            for i in range(0, n, max_rows):
                yield m[i : i + max_rows]
            return
        if len(self.target.layer.kernel_size) == 1:
            x = x[:, :, None, :]
        pads, ks, st, dil, (oh, ow) = self._conv_geometry([int(x.shape[1]), int(x.shape[2])])
        if oh == 0 or ow == 0:
            return
        if any(p for pair in pads for p in pair):
            x = tf.pad(x, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]])
        eff = [(k - 1) * d + 1 for k, d in zip(ks, dil, strict=True)]

        def patches(part):
            p = tf.image.extract_patches(part, [1, *ks, 1], [1, *st, 1], [1, *dil, 1], "VALID")
            return tf.reshape(p, (-1, self.d_in))

        batch = int(x.shape[0])
        if oh * ow <= max_rows:  # whole examples per block
            step = max(1, max_rows // (oh * ow))
            for i in range(0, batch, step):
                yield patches(x[i : i + step])
            return
        th = max(1, max_rows // ow)  # tiles of th output rows x tw output columns of one example
        tw = ow if th > 1 or ow <= max_rows else max_rows
        for i in range(batch):
            for r0 in range(0, oh, th):
                r1 = min(oh, r0 + th)
                for c0 in range(0, ow, tw):
                    c1 = min(ow, c0 + tw)
                    part = x[i : i + 1, r0 * st[0] : (r1 - 1) * st[0] + eff[0], c0 * st[1] : (c1 - 1) * st[1] + eff[1]]
                    yield patches(part)

    def inputs(self, x):
        """The layer's whole input batch as X of shape (rows, d_in), float32 (tests and small inputs;
        calibration itself reads `blocks`)."""
        import tensorflow as tf

        parts = list(self.blocks(x, 2**62))  # one block: all rows fit
        return parts[0] if parts else tf.zeros((0, self.d_in), tf.float32)


def _einsum_view(target) -> LayerView | str:
    layer = target.layer
    equation = str(getattr(layer, "equation", "")).replace(" ", "")
    if "->" not in equation or equation.count(",") != 1:
        return f"equation {equation!r} is not of the form input,kernel->output"
    lhs, out = equation.split("->")
    inp, ker = lhs.split(",")
    ell = "..." in inp
    inp_c, ker_c, out_c = inp.replace("...", ""), ker.replace("...", ""), out.replace("...", "")
    if "..." in ker or len(ker_c) != len(target.shape):
        return f"kernel of equation {equation!r} does not match its shape"
    red = [c for c in ker_c if c in inp_c and c not in out_c]
    outk = [c for c in ker_c if c in out_c and c not in inp_c]
    if not red or len(red) + len(outk) != len(ker_c):
        return f"equation {equation!r} shares kernel axes between its input and output"
    perm = [ker_c.index(c) for c in red + outk]
    others = "".join(c for c in inp_c if c not in red)
    spec = f"{inp}->{'...' if ell else ''}{others}{''.join(red)}"
    d_in = math.prod(target.shape[ker_c.index(c)] for c in red)
    return LayerView(target, "einsum", d_in, target.size // d_in, perm, spec)


def view_of(target) -> LayerView | str:
    """The target's LayerView, or the reason it cannot be calibrated (it then falls back to magnitude)."""
    layer, kind = target.layer, target.layer_class
    if target.attr != "kernel" or kind not in CALIBRATED or layer is None:
        if kind in ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D"):
            why = "a depthwise kernel acts on each channel alone"
        elif kind == "Embedding":
            why = "an embedding is a lookup, not a product with its inputs"
        elif kind.endswith("Cell"):
            why = "recurrent cells are not calibrated"
        else:
            why = f"{kind} layers are not calibrated"
        return why
    if kind == "EinsumDense":
        return _einsum_view(target)
    if kind == "Dense":
        return LayerView(target, "dense", target.rows, target.units)
    if getattr(layer, "groups", 1) != 1:
        return "grouped convolutions are not calibrated"
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return "channels_first convolutions are not calibrated"
    return LayerView(target, "conv", target.rows, target.units)
