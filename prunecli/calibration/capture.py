"""Reading one layer's inputs on calibration data, and the matrix views calibration works in.

Calibration needs, for the layer being pruned, the statistics of what the layer sees: the Hessian
H = X^T X / n of its inputs (X has one row per input vector: per example for Dense, per output
position for a convolution, per token for EinsumDense). It is accumulated batch by batch, so memory
is one (d_in x d_in) matrix plus one batch, never the dataset's activations.

How the inputs are read: the layer's `call` is wrapped for the duration of the capture (the generic
hook Keras' own GPTQ uses for the same job: it works for Sequential, functional and subclassed models
and for layers inside nested models, without rebuilding any graph). The wrapper feeds the input to a
compiled accumulation step and, once the layer has been called as often as it is per forward pass,
stops the forward pass with an exception: nothing after the layer runs.

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
CHUNK = 32  # examples per forward pass: bounds one batch's activations and im2col patches


class _Stop(Exception):
    """Raised by a wrapped layer once it has seen all its inputs of a forward pass."""


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

    def inputs(self, x):
        """The layer's input batch as X of shape (rows, d_in), float32."""
        import tensorflow as tf

        x = tf.cast(x, tf.float32)
        layer = self.target.layer
        if self.kind == "dense":
            return tf.reshape(x, (-1, self.d_in))
        if self.kind == "einsum":
            return tf.reshape(tf.einsum(self.input_spec, x), (-1, self.d_in))
        rank = len(layer.kernel_size)
        ks, st, dil = list(layer.kernel_size), list(layer.strides), list(layer.dilation_rate)
        padding = layer.padding.upper()
        if rank == 1:  # a 1-D conv is a 2-D conv of height 1
            if padding == "CAUSAL":
                x = tf.pad(x, [[0, 0], [dil[0] * (ks[0] - 1), 0], [0, 0]])
                padding = "VALID"
            x = x[:, None]
            ks, st, dil = [1, *ks], [1, *st], [1, *dil]
        patches = tf.image.extract_patches(x, [1, *ks, 1], [1, *st, 1], [1, *dil, 1], padding)
        return tf.reshape(patches, (-1, self.d_in))


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


def take_examples(dataset, n: int) -> list:
    """The first n examples of a batched dataset ((x, y) or x batches) as a list of input batches.

    `s.data.train` is already shuffled with --seed, so this is a seeded selection; x may be an array
    or a list/tuple/dict of arrays (multi-input models), and is sliced alike."""
    import numpy as np
    import tensorflow as tf

    out, have = [], 0
    for batch in dataset:
        x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) in (1, 2) else batch
        x = tf.nest.map_structure(np.asarray, x)
        size = len(tf.nest.flatten(x)[0])
        take = min(size, n - have)
        out.append(tf.nest.map_structure(lambda a, take=take: a[:take], x))
        have += take
        if have >= n:
            break
    return out


def chunks(batches, size: int = CHUNK) -> list:
    """Re-split calibration batches into forward passes of at most `size` examples."""
    import tensorflow as tf

    out = []
    for x in batches:
        n = len(tf.nest.flatten(x)[0])
        for i in range(0, n, size):
            out.append(tf.nest.map_structure(lambda a, i=i: a[i : i + size], x))
    return out


def count_examples(batches) -> int:
    import tensorflow as tf

    return sum(len(tf.nest.flatten(x)[0]) for x in batches)


def _forward(model, x):
    try:
        model(x, training=False)
    except _Stop:
        pass


class _Wrapped:
    """Replace layer.call by hook(args) + the original call, for the duration of a `with` block."""

    def __init__(self, layer, hook):
        self.layer, self.hook = layer, hook

    def __enter__(self):
        original = self.layer.call
        hook = self.hook

        def call(*args, **kwargs):
            hook(args[0] if args else next(iter(kwargs.values())))
            return original(*args, **kwargs)

        object.__setattr__(self.layer, "call", call)
        return self

    def __exit__(self, *exc):
        try:
            object.__delattr__(self.layer, "call")
        except AttributeError:
            pass
        return False


def call_order(model, layers: list, x) -> dict[int, tuple[int, int]]:
    """{id(layer): (position of its first call, calls per forward pass)} from one forward pass on x.

    Execution order is graph order for any model (nested and subclassed ones too); a layer never
    called (an RNN cell inside a loop is called per step, so it is simply counted often) is absent."""
    seen: dict[int, list[int]] = {}
    counter = [0]

    def hook_for(layer):
        def hook(_x):
            entry = seen.setdefault(id(layer), [counter[0], 0])
            entry[1] += 1
            counter[0] += 1

        return hook

    unique = list({id(layer): layer for layer in layers}.values())
    wrappers = [_Wrapped(layer, hook_for(layer)) for layer in unique]
    for w in wrappers:
        w.__enter__()
    try:
        model(x, training=False)
    finally:
        for w in wrappers:
            w.__exit__(None, None, None)
    return {k: (v[0], v[1]) for k, v in seen.items()}


class HessianCapture:
    """H = X^T X / n of one layer's inputs over the calibration batches, the only big buffer alive.

    `live` counts captures holding a Hessian (at most one at a time, which the tests assert);
    `peak_floats` is the largest Hessian held (d_in^2 floats)."""

    live = 0
    max_live = 0
    peak_floats = 0

    def __init__(self, view: LayerView, calls_per_pass: int):
        self.view = view
        self.calls = calls_per_pass

    def run(self, model, batches):
        import tensorflow as tf

        view = self.view
        d = view.d_in
        cls = HessianCapture
        cls.live += 1
        cls.max_live = max(cls.max_live, cls.live)
        cls.peak_floats = max(cls.peak_floats, d * d)
        try:
            hessian = tf.Variable(tf.zeros((d, d), tf.float32), trainable=False)
            rows = tf.Variable(0.0, trainable=False)

            @tf.function(reduce_retracing=True)
            def accumulate(x):
                m = view.inputs(x)
                hessian.assign_add(tf.matmul(m, m, transpose_a=True))
                rows.assign_add(tf.cast(tf.shape(m)[0], tf.float32))

            state = {"calls": 0}

            def hook(x):
                accumulate(x)
                state["calls"] += 1
                if state["calls"] % self.calls == 0:
                    raise _Stop()

            with _Wrapped(view.target.layer, hook):
                for x in batches:
                    _forward(model, x)
            n = float(rows.numpy())
            return hessian.read_value() / max(n, 1.0), n
        finally:
            cls.live -= 1
