"""How a layer's kernel and inputs are seen as one matrix product X @ W, the form calibration works in.

Matrix views (`LayerView`): a kernel becomes W of shape (d_in, d_out), rows = the reduction axis, so
the layer computes X @ W. For Dense and Conv this is `Target.to_matrix` (a conv kernel's rows are
kh*kw*c_in with the input channel fastest, the order of `tf.image.extract_patches`), so N:M groups
run along the same axis as everywhere else in prunecli. For EinsumDense the reduction axes are read
from the equation (an attention query kernel (d_model, heads, head_dim) is (d_model, heads*head_dim)).

Recurrent layers (LSTM, GRU, SimpleRNN, a keras.layers.RNN of one such cell, each inside Bidirectional
too): the cell's input `kernel` (d_in, gates*units) multiplies every timestep's input x_t, so X is the
RNN layer's input sequence (batch, T, d_in) as (batch*T, d_in) rows, less the timesteps a Keras mask
marks as padding (Embedding(mask_zero=True), Masking) when the layer receives one. The target's layer
is the cell, called once per step inside the RNN's loop (and not at all on cuDNN), so the view reads
the RNN layer's own call instead (`LayerView.layer`). The recurrent kernel (kind "recurrent") multiplies
the hidden state h_{t-1} before every step t: X is the state sequence, read by running the layer's own
loop (`inner_loop`) once more on the input it was called with (its initial state first, then the outputs
of the steps before; for a masked step, the state it carries), one row per unmasked step. LSTM,
SimpleRNN and GRU with reset_after=True (the default; without it the reset gate multiplies h_{t-1}
before the candidate's kernel, not a plain X @ W). Off by default (`CALIBRATE_RECURRENT_KERNEL`):
measured on the zoo's name LSTM (ethnicolr census2000), a one-step reconstruction of h_{t-1} @ W ignores
how an error compounds through the recurrence, and at 70% the model collapsed (top-1 agreement with
the dense model 0.14 with sparsegpt, 0.51 with wanda, against 0.89 with the recurrent kernel on
magnitude); at 50% it helped (0.953 against 0.945).

Embeddings: the layer's input is token ids, a one-hot row x_v per token, so X @ W looks each row up and
the input Hessian is diagonal: H_vv counts how often token v occurred. Wanda's score |w| ||x_v|| and
SparseGPT's saliency w^2 H_vv then rank the same way, and no update can compensate (no two rows share
an input), so both prune by |w| sqrt(count) with no update (`diagonal`). A token the calibration never
saw would score 0 and lose its whole row: every count gets the mean count added (`weighted_norms`).
Measured on the zoo's name LSTM (ethnicolr census2000, the embedding alone pruned, top-1 agreement with
the dense model on 128 held-out names): at 70% 0.24 by magnitude, 0.93 by raw counts, 0.95 with the mean
added; on its nc_name twin (magnitude already 1.0) raw counts fell to 0.84, the smoothed ones stayed 1.0.

Transposed convolutions (Conv1DTranspose/2D/3D, a U-Net's or an autoencoder's decoder): each is the
stride-1 convolution of its input spread out by its strides (s - 1 zeros between neighbours, then padded
so the output has the layer's size, `_transpose_geometry`) with its kernel mirrored along every spatial
axis, and dilated as the layer's is; a channels-first one's input is moved channels-last first, as a
Conv's is (both fell back to magnitude before; TensorFlow runs them on a GPU only). X is the spread
input's patches (taps x C_in, channel fastest, as for Conv) and W the mirrored kernel's (kh*kw*c_in,
c_out) view, so X @ W is the layer's output and every calibration method, error meter and the channel
refit read it as a Conv. They were on magnitude before, and `--target` left them
unrefit: ContinUNet's four Conv2DTranspose kept plain masks after their inputs' channels went (bench/ZOO.md).

Depthwise convolutions (DepthwiseConv1D/2D, a SeparableConv's depthwise kernel): channel c's kh*kw taps
see only channel c's patches. X is the layer input's im2col rows (taps*C columns, channel fastest, as
for Conv), and the kernel (kh, kw, C, dm) is seen as the block-diagonal matrix (taps*C, C*dm) whose
column (c, m) holds channel c's taps and zeros elsewhere: X @ W is then the layer's output, so the
error meters, relative errors and the refit read it unchanged. Only the Hessian's within-channel
entries matter (`within_channels`); pruning runs per channel (depthwise.py).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

# Layers calibrated through their inputs, and Embedding through its token counts. Everything else
# (custom prunable weights) falls back to magnitude.
TRANSPOSED = ("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
CALIBRATED = ("Dense", "Conv1D", "Conv2D", "Conv3D", *TRANSPOSED, "EinsumDense")
# Recurrent cells whose input `kernel` is calibrated on the RNN layer's input sequence.
RECURRENT_CELLS = ("LSTMCell", "GRUCell", "SimpleRNNCell")
CALIBRATE_RECURRENT_KERNEL = False  # see the module docstring: measured worse than magnitude at 70%
DEPTHWISE = ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D")
# Depthwise inputs (taps * channels) above which the capture's full (taps*C)^2 Hessian is not built
# (400 MiB): such a layer stays on magnitude rather than risk a memory refusal.
DEPTHWISE_MAX_INPUTS = 10240
CONVOLUTIONS = ("conv", "transpose", "depthwise")  # views whose X is patches of the layer input


@dataclass
class LayerView:
    """How one target's kernel and its layer's inputs map to the (d_in, d_out) matrix view."""

    target: Any
    kind: str  # dense | conv | transpose | einsum | rnn | recurrent | depthwise | embedding
    d_in: int
    d_out: int
    perm: list[int] = field(default_factory=list)  # einsum: kernel axes -> (reduction..., output...)
    input_spec: str = ""  # einsum: "abc->abc" reordering of the input, reduction axes last
    owner: Any = None  # rnn: the RNN layer whose cell holds the kernel (it is called with X)

    @property
    def layer(self):
        """The layer whose call receives X (the capture hooks it): the target's own layer, or for a
        recurrent cell the RNN layer that runs it."""
        return self.owner if self.owner is not None else self.target.layer

    @property
    def masked(self) -> bool:
        """Whether X is read with the hooked call's keyword arguments (a recurrent layer's Keras mask,
        whose padding timesteps are left out, and initial state)."""
        return self.kind in ("rnn", "recurrent")

    @property
    def diagonal(self) -> bool:
        """Whether the input Hessian is diagonal by construction (an embedding's one-hot token inputs):
        only its diagonal is captured, and no calibration update applies."""
        return self.kind == "embedding"

    def weighted_norms(self, norms):
        """The input norms Wanda weighs |w| by: ||x_j|| as captured, or for an embedding sqrt(count +
        mean count), so a token the calibration never saw is not emptied (module docstring)."""
        import numpy as np

        if self.kind != "embedding":
            return norms
        counts = np.square(np.asarray(norms, np.float64))
        return np.sqrt(counts + counts.mean())

    @property
    def off_block(self) -> int:
        """Entries of the matrix view that are structurally zero (depthwise: outside each channel's block)."""
        return self.d_in * self.d_out - self.target.size if self.kind == "depthwise" else 0

    def within_channels(self, hessian):
        """The Hessian a depthwise kernel's OBS maths reads: cross-channel entries zeroed (each channel's
        taps never meet another channel's inputs); unchanged for every other view."""
        import tensorflow as tf

        if self.kind != "depthwise" or hessian is None:
            return hessian
        channels = self.target.shape[-2]
        ch = tf.range(self.d_in) % channels
        return tf.where(ch[:, None] == ch[None, :], tf.cast(hessian, tf.float32), 0.0)

    def _depthwise_dims(self):
        shape = self.target.shape
        return math.prod(shape[:-2]), shape[-2], shape[-1]

    def to_matrix(self, kernel):
        import tensorflow as tf

        if self.kind == "depthwise":
            taps, channels, mult = self._depthwise_dims()
            is_bool = kernel.dtype == tf.bool
            k = tf.reshape(tf.cast(kernel, tf.float32), (taps, channels, mult))
            m = tf.reshape(tf.einsum("tcm,cd->tcdm", k, tf.eye(channels)), (self.d_in, self.d_out))
            return m > 0.5 if is_bool else m
        if self.kind == "transpose":
            return self.target.to_matrix(_mirrored(kernel))
        if self.kind != "einsum":
            return self.target.to_matrix(kernel)
        return tf.reshape(tf.transpose(kernel, self.perm), (self.d_in, self.d_out))

    def from_matrix(self, matrix):
        import tensorflow as tf

        if self.kind == "depthwise":
            taps, channels, mult = self._depthwise_dims()
            matrix = tf.convert_to_tensor(matrix)
            is_bool = matrix.dtype == tf.bool
            m = tf.reshape(tf.cast(matrix, tf.float32), (taps, channels, channels, mult))
            k = tf.transpose(tf.linalg.diag_part(tf.transpose(m, (0, 3, 1, 2))), (0, 2, 1))
            k = tf.reshape(k, self.target.shape)
            return k > 0.5 if is_bool else k
        if self.kind == "transpose":
            return _mirrored(self.target.from_matrix(matrix))
        if self.kind != "einsum":
            return self.target.from_matrix(matrix)
        shape = self.target.shape
        moved = [shape[a] for a in self.perm]
        inverse = [self.perm.index(a) for a in range(len(shape))]
        return tf.transpose(tf.reshape(matrix, moved), inverse)

    # --- convolution geometry: explicit padding, then VALID patches (so tiles can be cut) ---------

    def _conv_geometry(self, spatial: list[int]):
        """(pads [(before, after)] per spatial axis, kernel, strides, dilations, output sizes), with a
        1-D conv treated as 2-D of width 1 (its length on the height axis). A transposed convolution's are
        those of the stride-1 convolution it is (`_transpose_geometry`)."""
        if self.kind == "transpose":
            return self._transpose_geometry(spatial)
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

    def _transpose_geometry(self, spatial: list[int]):
        """`_conv_geometry` of a transposed convolution seen as the stride-1 convolution of its input spread
        out by its strides (`_spread`): pads of the spread input, the kernel, strides of 1, the layer's
        dilations, and the layer's output sizes. TensorFlow pads the forward convolution this one transposes
        by max((n - 1) s + e - out, 0) // 2 before ('same'; 0 for 'valid'), e = (k - 1) d + 1 the dilated
        kernel's extent; the stride-1 convolution is padded by e - 1 less that before, and after by what
        brings it to `out` positions."""
        layer = self.target.layer
        ks, st, dil = list(layer.kernel_size), list(layer.strides), list(layer.dilation_rate)
        spatial = [int(d) for d in spatial[: len(ks)]]
        channels = self.target.shape[-1]  # a transposed kernel is (*taps, out, in)
        shape = (None, channels, *spatial) if self.channels_first else (None, *spatial, channels)
        out_shape = layer.compute_output_shape(shape)
        outs = [int(d) for d in (out_shape[2:] if self.channels_first else out_shape[1:-1])]
        pads = []
        for n, k, s, d, out in zip(spatial, ks, st, dil, outs, strict=True):
            eff = (k - 1) * d + 1
            before = max((n - 1) * s + eff - out, 0) // 2 if str(layer.padding).lower() == "same" else 0
            lead = eff - 1 - before
            pads.append((lead, out + eff - 1 - ((n - 1) * s + 1) - lead))
        if len(ks) == 1:
            ks, pads, outs, dil = [ks[0], 1], [pads[0], (0, 0)], [outs[0], 1], [dil[0], 1]
        return pads, ks, [1] * len(ks), dil, outs

    def rows_per_example(self, in_shape) -> int:
        """Rows of X one example gives, from the layer's input shape (batch axis first)."""
        per = math.prod(int(d) for d in in_shape[1:])
        if self.kind == "embedding":
            return per  # one row per token id
        if self.kind not in CONVOLUTIONS:
            return max(per // self.d_in, 1)
        spatial = in_shape[2:] if self.channels_first else in_shape[1:-1]
        *_, outs = self._conv_geometry([int(d) for d in spatial])
        return math.prod(outs)

    @property
    def channels_first(self) -> bool:
        """Whether this is a convolution that reads its input channels-first (a Keras-2 file saved with
        `image_data_format` channels_first): its kernel is laid out as a channels-last one's, so only the
        input moves (`channels_last`) before X's rows are cut."""
        layer = self.target.layer
        return self.kind in CONVOLUTIONS and getattr(layer, "data_format", None) == "channels_first"

    def channels_last(self, x):
        """A convolution's input with its channels on the last axis, as X's columns read it."""
        if not self.channels_first:
            return x
        import tensorflow as tf

        return tf.transpose(x, [0, *range(2, len(x.shape)), 1])

    def blocks(self, x, max_rows: int, call=None, sample=None):
        """The layer's input batch as blocks of X (rows, d_in), float32, none above max_rows rows
        (a block is at least one row); their concatenation is X in row order. `call` (recurrent views:
        the keyword arguments the layer was called with) gives the Keras mask, (batch, T), whose padding
        timesteps are dropped, and the initial state. `sample` (a convolution's: rows in a block -> the
        sorted rows kept): each block holds only those rows, whose windows alone are cut (a full
        capture keeps a fifth of MiSiC's 2.1M rows: cutting every window first was 81% waste)."""
        import numpy as np
        import tensorflow as tf

        if self.kind == "embedding":  # one-hot rows of the token ids, max_rows at a time
            ids = tf.reshape(tf.cast(x, tf.int32), (-1,))
            for i in range(0, int(ids.shape[0]), max(int(max_rows), 1)):
                yield tf.one_hot(ids[i : i + max(int(max_rows), 1)], self.d_in, dtype=tf.float32)
            return
        mask = _first((call or {}).get("mask"))
        if self.kind == "recurrent":
            x = self._hidden_states(x, mask, (call or {}).get("initial_state"))
        x = tf.cast(x, tf.float32)
        max_rows = max(int(max_rows), 1)
        if self.kind not in CONVOLUTIONS:
            m = tf.einsum(self.input_spec, x) if self.kind == "einsum" else x
            if self.kind == "rnn" and mask is not None:
                m = tf.boolean_mask(m, tf.cast(mask, tf.bool))
            m = tf.reshape(m, (-1, self.d_in))
            n = int(m.shape[0])
            if n <= max_rows:
                yield m
                return
            for i in range(0, n, max_rows):
                yield m[i : i + max_rows]
            return
        x, ks, st, dil, outs = self._padded(x)
        if 0 in outs:
            return
        eff = [(k - 1) * d + 1 for k, d in zip(ks, dil, strict=True)]

        def patches(part):
            if sample is None:
                return tf.constant(np.reshape(_patches(part, ks, st, dil), (-1, self.d_in)))
            return tf.constant(_patch_rows(part, ks, st, dil, sample))

        batch, per_example = int(x.shape[0]), math.prod(outs)
        if per_example <= max_rows:  # whole examples per block
            step = max(1, max_rows // per_example)
            for i in range(0, batch, step):
                yield patches(x[i : i + step])
            return
        tile = _tile(outs, max_rows)
        for i in range(batch):
            for origin in itertools.product(*[range(0, o, t) for o, t in zip(outs, tile, strict=True)]):
                index = [slice(i, i + 1)]
                for o0, t, o, s, e in zip(origin, tile, outs, st, eff, strict=True):
                    index.append(slice(o0 * s, (min(o, o0 + t) - 1) * s + e))
                yield patches(x[tuple(index)])

    def _padded(self, x):
        """A conv layer's input as a NumPy array padded for VALID patches, a 1-D conv's with a width axis
        of 1, and (kernel, strides, dilations, output sizes): tiles and patches are NumPy views (an
        eager op per tile cost more than the copy)."""
        import numpy as np
        import tensorflow as tf

        x = tf.cast(self.channels_last(x), tf.float32)
        if len(self.target.layer.kernel_size) == 1:
            x = x[:, :, None, :]
        pads, ks, st, dil, outs = self._conv_geometry([int(d) for d in x.shape[1:-1]])
        if self.kind == "transpose":
            strides = list(self.target.layer.strides)
            x = _spread(np.asarray(x), strides + [1] * (len(ks) - len(strides)))  # a 1-D input's width axis: 1
        if any(p for pair in pads for p in pair):
            x = tf.pad(x, [[0, 0], *[list(p) for p in pads], [0, 0]])
        return np.asarray(x), ks, st, dil, outs

    @property
    def column_statistics(self) -> bool:
        """Whether `column_stats` gives this view's per-column statistics without building X: a 1-D, 2-D
        or 3-D convolution, whose column (tap, channel) runs over one strided window of the input."""
        return self.kind == "conv" and len(self.target.layer.kernel_size) <= 3

    def column_stats(self, x) -> dict:
        """Per column of X: the sum of squares and the sum (float64), min and max, and the rows, the largest |x|
        and whether every value is finite, from window reductions of the padded input instead of its
        patches (prod(kernel) times fewer values read; what a diagonal-only capture needs, in X's
        column order: tap (kd, kh, kw, lexicographic), then channel). For a Conv3D this is what makes
        Wanda usable: TensorFlow's extract_volume_patches on a 64^3 U-Net did not finish a layer in 5
        minutes (rbm3, bench/ZOO.md)."""
        import numpy as np

        x, ks, st, dil, outs = self._padded(x)
        squares = np.zeros(x.shape[1:], np.float64)  # (spatial..., C): the batch summed first, an example at a
        square = np.empty_like(squares)  # time so the float64 copy stays one example's size
        sums = np.zeros_like(squares)
        for example in x:
            squares += np.square(example, out=square, dtype=np.float64)
            sums += example
        low, high = x.min(axis=0), x.max(axis=0)
        geometry = list(zip(ks, dil, outs, st, strict=True))
        sumsq = np.concatenate(_tap_reductions(squares, geometry, np.sum))
        total = np.concatenate(_tap_reductions(sums, geometry, np.sum))
        lo = np.concatenate(_tap_reductions(low, geometry, np.min))
        hi = np.concatenate(_tap_reductions(high, geometry, np.max))
        return {
            "sumsq": sumsq,
            "total": total,
            "lo": lo,
            "hi": hi,
            "rows": int(x.shape[0]) * math.prod(outs),
            "largest": float(max(np.abs(lo).max(), np.abs(hi).max())),
            "finite": bool(np.isfinite(sumsq).all() and np.isfinite(lo).all() and np.isfinite(hi).all()),
        }

    def _hidden_states(self, x, mask, initial_state):
        """The recurrent kernel's X: h_(t-1) before each unmasked step t, (rows, units), from the RNN
        layer's own loop run on its input (outputs in processing order, reversed for go_backwards)."""
        import numpy as np
        import tensorflow as tf

        layer = self.owner
        if initial_state is None:
            initial_state = layer.get_initial_state(batch_size=tf.shape(x)[0])
        state = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        sequences = layer.return_sequences  # the loop keeps every step's output only when asked to
        layer.return_sequences = True
        try:
            _, outputs, _ = layer.inner_loop(sequences=x, initial_state=state, mask=mask, training=False)
        finally:
            layer.return_sequences = sequences
        out = np.asarray(outputs, np.float32)  # (batch, T, units)
        h0 = np.asarray(state[0], np.float32)[:, None]
        if mask is None:
            return np.concatenate([h0, out[:, :-1]], 1).reshape(-1, self.d_in)
        m = np.asarray(mask, bool)
        if getattr(layer, "go_backwards", False):
            m = m[:, ::-1]
        steps = m.shape[1]
        last = np.maximum.accumulate(np.where(m, np.arange(steps)[None], -1), axis=1)  # last unmasked <= t
        before = np.concatenate([np.full((m.shape[0], 1), -1), last[:, :-1]], 1)  # last unmasked < t
        states = np.concatenate([h0, out], 1)  # index j + 1: the output of step j; 0: the initial state
        prev = np.take_along_axis(states, (before + 1)[:, :, None], 1)
        return prev[m]

    def inputs(self, x, call=None):
        """The layer's whole input batch as X of shape (rows, d_in), float32 (tests and small inputs;
        calibration itself reads `blocks`)."""
        import tensorflow as tf

        parts = list(self.blocks(x, 2**62, call))  # one block: all rows fit
        return parts[0] if parts else tf.zeros((0, self.d_in), tf.float32)


def _mirrored(kernel):
    """A convolution kernel reversed along its spatial axes (all but the last two): a transposed
    convolution's kernel as the stride-1 convolution it is reads it (module docstring)."""
    import tensorflow as tf

    kernel = tf.convert_to_tensor(kernel)
    return tf.reverse(kernel, axis=list(range(len(kernel.shape) - 2)))


def _spread(x, strides):
    """A (batch, *spatial, C) array with s - 1 zeros between neighbours along each spatial axis (the strides,
    one per axis, a 1-D input's width axis of 1 included): the input a transposed convolution convolves."""
    import numpy as np

    spatial = [(n - 1) * s + 1 for n, s in zip(x.shape[1:-1], strides, strict=True)]
    out = np.zeros((x.shape[0], *spatial, x.shape[-1]), x.dtype)
    out[(slice(None), *[slice(None, None, s) for s in strides], slice(None))] = x
    return out


def _patches(x, ks, st, dil):
    """VALID patches of a (batch, *spatial, C) array (1, 2 or 3 spatial axes), (batch, *out, prod(ks) * C)
    with the last axis in (taps lexicographic, C) order, as tf.image.extract_patches gives them (and as a
    kernel flattens), cut in NumPy as one strided view per kernel offset and stacked: extract_patches took
    232 of 386 s of a Wanda run on SpliceAI's dilated Conv1D layers here (thousands of small tiles, each an
    eager op), and TensorFlow's extract_volume_patches, on a Conv3D, was slower still (one 64^3 layer of
    rbm3's U-Net did not finish in 5 minutes, bench/ZOO.md)."""
    import numpy as np

    x = np.asarray(x)
    spatial = x.shape[1:-1]
    outs = [(n - (k - 1) * d - 1) // s + 1 for n, k, s, d in zip(spatial, ks, st, dil, strict=True)]
    offsets = []
    for taps in itertools.product(*[range(k) for k in ks]):
        index = [slice(None)]
        for i, o, s, d in zip(taps, outs, st, dil, strict=True):
            index.append(slice(i * d, i * d + (o - 1) * s + 1, s))
        offsets.append(x[tuple(index)])
    return np.stack(offsets, axis=-2).reshape(x.shape[0], *outs, math.prod(ks) * x.shape[-1])


def _patch_rows(x, ks, st, dil, sample):
    """The rows `sample(rows)` picks (flat, in (batch, *out) order) of `_patches(x, ...)` as a (kept,
    prod(ks) * C) matrix, only their windows gathered from x."""
    import numpy as np

    x = np.asarray(x)
    outs = [(n - (k - 1) * d - 1) // s + 1 for n, k, s, d in zip(x.shape[1:-1], ks, st, dil, strict=True)]
    kept = np.asarray(sample(x.shape[0] * math.prod(outs)))
    where = np.unravel_index(kept, (x.shape[0], *outs))
    taps = np.array(list(itertools.product(*[range(k) for k in ks])))  # (prod(ks), axes), lexicographic
    index = [where[0][:, None]]
    for axis, (s, d) in enumerate(zip(st, dil, strict=True)):
        index.append(where[axis + 1][:, None] * s + taps[None, :, axis] * d)
    return x[tuple(index)].reshape(len(kept), -1)


def _tile(outs: list[int], max_rows: int) -> list[int]:
    """Output positions per tile along each spatial axis so a tile has at most max_rows (at least one
    position): whole trailing axes while they fit, then part of one axis, then 1 along the leading ones."""
    tile, room = [1] * len(outs), max_rows
    for axis in reversed(range(len(outs))):
        if outs[axis] > room:
            tile[axis] = max(1, room)
            break
        tile[axis], room = outs[axis], room // outs[axis]
    return tile


def _first(mask):
    """The mask of the sequence (an RNN takes the first of a nested mask, as its own loop does)."""
    while isinstance(mask, (list, tuple)):
        mask = mask[0]
    return mask


def rnn_owner(model, cell):
    """The layer of `model` whose `cell` is this cell (an LSTM, GRU, SimpleRNN or keras.layers.RNN; a
    Bidirectional's forward or backward layer), or None."""
    from prunecli.structure import keras_graph

    if model is None:
        return None
    for layer in keras_graph.all_layers(model):
        if layer is not cell and getattr(layer, "cell", None) is cell:
            return layer
    return None


def _rnn_view(target, model) -> LayerView | str:
    if target.attr not in ("kernel", "recurrent_kernel"):
        return f"{target.layer_class} weight {target.attr} is not calibrated"
    owner = rnn_owner(model, target.layer)
    if owner is None:
        return "the recurrent layer that runs this cell was not found"
    if getattr(owner, "time_major", False):
        return "time-major recurrent layers are not calibrated"
    d_in, d_out = target.shape
    if target.attr == "kernel":
        return LayerView(target, "rnn", int(d_in), int(d_out), owner=owner)
    if not CALIBRATE_RECURRENT_KERNEL:
        return (
            "a recurrent kernel stays on magnitude: calibrating it on one step's hidden states ignores how "
            "its error compounds through time (measured worse at 70%)"
        )
    if target.layer_class == "GRUCell" and not getattr(target.layer, "reset_after", True):
        return "a GRU with reset_after=False multiplies its recurrent kernel by the reset-gated state, not X @ W"
    if not hasattr(owner, "inner_loop"):
        return "the recurrent layer has no loop calibration can run for its hidden states"
    return LayerView(target, "recurrent", int(d_in), int(d_out), owner=owner)


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


def _depthwise_view(target) -> LayerView | str:
    if target.attr == "pointwise_kernel":
        return "a separable convolution's pointwise kernel reads the depthwise output inside the layer, which calibration does not read"
    if target.attr not in ("kernel", "depthwise_kernel") or len(target.shape) not in (3, 4):
        return f"{target.layer_class} weight {target.attr} is not calibrated"
    taps, channels, mult = math.prod(target.shape[:-2]), target.shape[-2], target.shape[-1]
    if taps * channels > DEPTHWISE_MAX_INPUTS:
        return (
            f"its {taps} taps x {channels} channels = {taps * channels} inputs exceed the "
            f"{DEPTHWISE_MAX_INPUTS} a depthwise capture holds"
        )
    return LayerView(target, "depthwise", taps * channels, channels * mult)


def view_of(target, model=None) -> LayerView | str:
    """The target's LayerView, or the reason it cannot be calibrated (it then falls back to magnitude).
    `model`: where a recurrent cell's RNN layer is looked up (without it, cells are not calibrated)."""
    layer, kind = target.layer, target.layer_class
    if kind in RECURRENT_CELLS and layer is not None:
        return _rnn_view(target, model)
    if kind in DEPTHWISE and layer is not None:
        return _depthwise_view(target)
    if kind == "Embedding" and target.attr == "embeddings" and layer is not None:
        return LayerView(target, "embedding", target.rows, target.units)
    if target.attr != "kernel" or kind not in CALIBRATED or layer is None:
        if kind in ("DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D"):
            why = "a depthwise kernel acts on each channel alone"
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
    return LayerView(target, "transpose" if kind in TRANSPOSED else "conv", target.rows, target.units)


def _tap_reductions(a, geometry: list, reduce) -> list:
    """`reduce` of a (spatial..., C) array over each tap's strided window, per channel: one (C,) array per
    tap, taps in lexicographic order (kd, kh, kw). One spatial axis at a time: the windows of a tap's
    first offset are reduced over the first axis once and shared by every tap with that offset, so a
    k x k kernel reads the input k times (plus k^2 reads of one row), not k^2 times (10 x 10 kernels on
    DeepVOG's 240 x 320 maps: the Wanda capture's largest cost). `geometry`: per spatial axis (kernel
    size, dilation, output size, stride)."""
    if not geometry:
        return [a]
    (k, d, o, s), rest = geometry[0], geometry[1:]
    found = []
    for i in range(k):
        found += _tap_reductions(reduce(a[i * d : i * d + (o - 1) * s + 1 : s], axis=0), rest, reduce)
    return found
