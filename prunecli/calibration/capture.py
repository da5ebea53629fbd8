"""Reading one layer's inputs on calibration data, and the matrix views calibration works in.

Calibration needs, for the layer being pruned, statistics of what the layer sees, accumulated block
by block so that the dataset's activations are never held: X has one row per input vector (per
example for Dense, per output position for a convolution, per token for EinsumDense).
- Wanda reads only the per-input sum of squares sum_r x_rj^2 (the Hessian's diagonal): d_in floats;
  --refine dsnot also the per-input sum sum_r x_rj (each feature's mean, and with the squares its
  variance: dsnot.py), d_in floats more.
- SparseGPT and --reconstruct need the full H = X^T X / n: d_in x d_in floats, sized and checked
  against free memory before it is allocated (oneshot.check_memory).
Every capture also keeps, per input, the smallest and largest value, the largest |x|, whether all
values were finite and the row count: `InputStats.degenerate` reads from them whether the layer's
inputs carry information (not all zero, not denormal, not the same vector on every row, finite).

Scale: when a layer's inputs are far outside [2^-16, 2^16], they are multiplied by a power of two
(exact) chosen from the first block, so their squares neither underflow nor overflow float32. Every
use of the statistics is invariant to that scale (rankings within a layer, SparseGPT's updates, the
refit, relative errors); `InputStats.norms` undoes it where absolute values matter.

Blocks: a convolution's im2col rows are never materialised for more than `max_rows` rows at once
(PATCH_BYTES of patches): a forward pass's layer input is cut into groups of examples, and one
example's output positions into tiles of rows/columns whose receptive fields are extracted alone.

How the inputs are read: the layer's `call` is wrapped for the duration of the capture (the generic
hook Keras' own GPTQ uses for the same job: it works for Sequential, functional and subclassed models
and for layers inside nested models, without rebuilding any graph). The wrapper feeds the input to a
compiled accumulation step and, once the layer has been called as often as it is per forward pass,
stops the forward pass with an exception: nothing after the layer runs.
What a "forward pass" is here is the caller's: the model from its inputs (each layer then costs a
pass through every layer before it), or, from frontier.py, the one graph node that calls the layer,
run on activations cached from a single walk of the graph (each layer then runs once per pass).
Layers whose weights do not change while they are read can share the passes instead (`capture_all`:
every layer's hook on one forward pass per batch, all their accumulators alive at once).
Matrix views of a layer: views.py.
"""

from __future__ import annotations

import functools
import math
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from prunecli.calibration.views import CONVOLUTIONS, LayerView

CHUNK = 32  # examples per forward pass, at most: bounds one pass's activations
INPUT_BYTES = 256 * 2**20  # a pass's layer input, at most (fewer examples per pass when larger)
PATCH_BYTES = 16 * 2**20  # one block of im2col rows fed to the accumulation (64 MiB: 4.6 GB peak on a
# 13-layer dilated Conv1D at 32 x 10100 steps; 16 MiB: 3.3 GB, as fast)
FLOAT32_TINY = 1.1754944e-38  # smallest normal float32: below it, values are denormal (flushed to 0)
SCALE_RANGE = 2.0**16  # inputs whose largest |x| is outside [1/SCALE_RANGE, SCALE_RANGE] are rescaled
CONSTANT_TOLERANCE = 1e-6  # relative spread under which every row is the same vector
HESSIAN_ROWS = 2**18  # a convolution's full Hessian is estimated from this many rows of X at most
# (SparseGPT's own calibration: 128 sequences of 2,048 tokens), sampled evenly at random: see
# HessianCapture
HESSIAN_ROWS_PER_INPUT = 128  # ... and never from fewer than this many rows per input (d_in): on the
# MNIST CNN of bench/HESSIAN_ROWS.md at 80%, 128 or 256 per input came within 0.7-1.0 point of every row,
# 64 per input lost 2.0


class _Stop(Exception):
    """Raised by a wrapped layer once it has seen all its inputs of a forward pass."""


def take_examples(dataset, n: int) -> list:
    """The first n examples of a batched dataset ((x, y) or x batches) as a list of input batches.

    `s.data.train` is already shuffled with --seed, so this is a seeded selection; x may be an array
    or a list/tuple/dict of arrays (multi-input models), and is sliced alike. Labels are never read."""
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


def split_examples(batches, n: int) -> tuple[list, list]:
    """Input batches cut after their first n examples: (those n, the rest), both lists of batches."""
    import tensorflow as tf

    first, rest, have = [], [], 0
    for x in batches:
        size = len(tf.nest.flatten(x)[0])
        take = max(0, min(size, n - have))
        if take:
            first.append(tf.nest.map_structure(lambda a, take=take: a[:take], x))
        if take < size:
            rest.append(tf.nest.map_structure(lambda a, take=take: a[take:], x))
        have += take
    return first, rest


def chunks(batches, size: int = CHUNK, exact: bool = False) -> list:
    """Re-split calibration batches into forward passes of at most `size` examples (exactly `size`
    with `exact`, for a model with a fixed batch size: a last, shorter pass is dropped)."""
    import numpy as np
    import tensorflow as tf

    if exact:  # passes may then straddle the given batches
        flat = [tf.nest.map_structure(np.asarray, x) for x in batches]
        if not flat:
            return []
        whole = tf.nest.map_structure(lambda *a: np.concatenate(a), *flat) if len(flat) > 1 else flat[0]
        n = len(tf.nest.flatten(whole)[0])
        return [tf.nest.map_structure(lambda a, i=i: a[i : i + size], whole) for i in range(0, n - size + 1, size)]
    out = []
    for x in batches:
        n = len(tf.nest.flatten(x)[0])
        for i in range(0, n, size):
            out.append(tf.nest.map_structure(lambda a, i=i: a[i : i + size], x))
    return out


def data_length(batches) -> int | None:
    """The calibration data's sequence length (its second axis), for a model that leaves it open."""
    import tensorflow as tf

    shapes = [tuple(a.shape) for a in tf.nest.flatten(batches[0])] if batches else []
    return max((int(s[1]) for s in shapes if len(s) > 2), default=None)


def example_macs(model, batches) -> int:
    """Multiply-adds of one calibration example through the whole model, at the data's length (0 where
    unknown: a subclassed model has no graph to count): what the passes' budgets are priced in."""
    from prunecli.structure import flops

    return int(flops.count(model, seq_len=data_length(batches))["total"] or 0)


def count_examples(batches) -> int:
    import tensorflow as tf

    return sum(len(tf.nest.flatten(x)[0]) for x in batches)


def _forward(model, x):
    try:
        model(x, training=False)
    except _Stop as stop:
        _release(stop)


def _release(stop: BaseException) -> None:
    """Clear the frames of a stopped pass. They sit in reference cycles (Keras' traceback filtering, the
    exception and its traceback), so without this each stopped pass's activations (the functional graph's
    tensors up to the layer) stay alive until Python's cycle collector runs: the zoo's OpenFace refit (3
    passes of 32 examples per layer, 35 layers) grew to 2.1 GB peak RSS, 1.37 GB with the frames cleared.
    Every capture's passes stop this way (Wanda, SparseGPT, the refit)."""
    import traceback

    seen = set()
    while stop is not None and id(stop) not in seen:
        seen.add(id(stop))
        traceback.clear_frames(stop.__traceback__)
        stop = stop.__context__


class _Wrapped:
    """Replace layer.call by hook(input) + the original call, for the duration of a `with` block; with
    `masked`, hook(input, kwargs): the call's keyword arguments too (a Keras mask, an initial state)."""

    def __init__(self, layer, hook, masked: bool = False):
        self.layer, self.hook, self.masked = layer, hook, masked

    def __enter__(self):
        original = self.layer.call
        self.replaced = vars(self.layer).get("call")  # a call already replaced (compiled_loops): restored after
        hook, masked = self.hook, self.masked

        def call(*args, **kwargs):
            x = args[0] if args else next(iter(kwargs.values()))
            if masked:
                hook(x, kwargs)
            else:
                hook(x)
            return original(*args, **kwargs)

        object.__setattr__(self.layer, "call", call)
        return self

    def __exit__(self, *exc):
        if self.replaced is not None:
            object.__setattr__(self.layer, "call", self.replaced)
        elif "call" in vars(self.layer):
            object.__delattr__(self.layer, "call")
        return False


@dataclass(frozen=True)
class Call:
    """How a forward pass calls a layer: position of its first call, calls per pass, input shape."""

    first: int
    calls: int
    input_shape: tuple


def call_order(model, layers: list, x) -> dict[int, Call]:
    """{id(layer): Call} from one forward pass on x.

    Execution order is graph order for any model (nested and subclassed ones too); a layer never
    called (an RNN cell inside a loop is called per step, so it is simply counted often) is absent."""
    seen: dict[int, list] = {}
    counter = [0]

    def hook_for(layer):
        def hook(x):
            shape = tuple(getattr(x, "shape", ()) or ())
            entry = seen.setdefault(id(layer), [counter[0], 0, shape])
            entry[1] += 1
            counter[0] += 1

        return hook

    unique = list({id(layer): layer for layer in layers}.values())
    with ExitStack() as hooks:
        for layer in unique:
            hooks.enter_context(_Wrapped(layer, hook_for(layer)))
        model(x, training=False)
    return {k: Call(v[0], v[1], tuple(None if d is None else int(d) for d in v[2])) for k, v in seen.items()}


@dataclass
class InputStats:
    """What a capture read of one layer's inputs; see the module docstring. Accumulators are in the
    scaled units (inputs multiplied by `scale`); `hessian` (full captures only) is H / rows."""

    d_in: int
    rows: int
    sumsq: Any  # numpy (d_in,): sum over rows of (scale * x_j)^2
    total: Any  # numpy (d_in,): sum over rows of scale * x_j
    spread: float  # largest (max - min) of one input over the rows, scaled
    largest: float  # largest |x|, unscaled (meaningful when finite)
    finite: bool
    scale: float
    hessian: Any = None
    row_fraction: float = 1.0  # the share of the rows seen that were accumulated (HessianCapture)

    @property
    def diag(self):
        """The Hessian's diagonal, scaled (what Wanda ranks by)."""
        import numpy as np

        return np.asarray(self.sumsq, np.float64) / max(self.rows, 1)

    def norms(self):
        """||x_j||_2 over the calibration rows, unscaled (float64); estimated over all the rows seen
        when only a share of them was accumulated."""
        import numpy as np

        return np.sqrt(np.maximum(np.asarray(self.sumsq, np.float64), 0.0) / self.row_fraction) / self.scale

    def degenerate(self) -> str | None:
        """Why the inputs carry no usable information for calibration, or None.

        All zero, denormal (TensorFlow flushes those to zero), non-finite, a Hessian that overflows,
        or the same input vector on every row (a rank-1 Hessian: any weights that reproduce one
        output vector fit it, so neither SparseGPT's updates nor a refit mean anything)."""
        import numpy as np

        if self.rows == 0:
            return "the forward pass gave it no input rows"
        if not self.finite:
            return "its calibration inputs contain NaN or Inf"
        if self.largest == 0:
            return "its calibration inputs are all zero (or denormal, which TensorFlow flushes to zero)"
        if self.largest < FLOAT32_TINY:
            return (
                f"its calibration inputs are denormal (largest |x| is {self.largest:.3g}, below float32's "
                f"smallest normal {FLOAT32_TINY:.3g}), so their statistics underflow"
            )
        sumsq = np.asarray(self.sumsq, np.float64)
        if not np.isfinite(sumsq).all() or (self.hessian is not None and not _all_finite(self.hessian)):
            return f"its input statistics overflow float32 (inputs up to {self.largest:.3g})"
        if not (sumsq > 0).any():
            return "its calibration inputs are all zero after float32 rounding"
        if self.rows < 2:
            return "it saw a single input row, so its input Hessian has rank 1"
        if self.spread <= CONSTANT_TOLERANCE * self.largest * self.scale:
            return f"its input is the same vector on all {self.rows} rows (constant), so its input Hessian has rank 1"
        return None


def _all_finite(t) -> bool:
    import tensorflow as tf

    return bool(tf.reduce_all(tf.math.is_finite(t)))


def _fixed_scale(acc, top, all_finite):
    """Fold one block's largest |x| (`top`) and finiteness into the running statistics, fix the scale
    on the first block holding a normal value (1 inside [1/SCALE_RANGE, SCALE_RANGE]), and return the
    factor the block's values are multiplied by (tf ops, traced into the accumulation steps)."""
    import tensorflow as tf

    finite, largest, scale = acc[4], acc[5], acc[6]
    finite.assign(tf.logical_and(finite, all_finite))
    largest.assign(tf.maximum(largest, top))
    exponent = tf.clip_by_value(tf.floor(tf.math.log(tf.maximum(top, FLOAT32_TINY)) / math.log(2.0)), -126.0, 126.0)
    inside = tf.logical_and(top >= 1.0 / SCALE_RANGE, top <= SCALE_RANGE)
    wanted = tf.where(inside, 1.0, tf.pow(2.0, -exponent))
    fixed = tf.where(scale > 0, scale, tf.where(top >= FLOAT32_TINY, wanted, 0.0))
    scale.assign(fixed)
    return tf.where(fixed > 0, fixed, 1.0)


@functools.cache
def _accumulate_fn(full: bool):
    """The compiled accumulation step (one per mode, shared by all layers: the variables are arguments)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def accumulate(acc, m):
        sumsq, lo, hi, rows = acc[:4]
        a = tf.abs(m)
        # one reduction each: the sum of |x| is finite iff every value is (short of ~1e38 overflow)
        top = tf.maximum(tf.reduce_max(a), 0.0)  # NaN/Inf only where `finite` turns False
        ms = m * _fixed_scale(acc, top, tf.math.is_finite(tf.reduce_sum(a)))
        sumsq.assign_add(tf.reduce_sum(tf.square(ms), axis=0))
        acc[7].assign_add(tf.reduce_sum(ms, axis=0))
        lo.assign(tf.minimum(lo, tf.reduce_min(ms, axis=0)))
        hi.assign(tf.maximum(hi, tf.reduce_max(ms, axis=0)))
        rows.assign_add(tf.shape(m, out_type=tf.int64)[0])
        if full:
            acc[8].assign_add(tf.matmul(ms, ms, transpose_a=True))

    return accumulate


@functools.cache
def _accumulate_columns_fn():
    """The diagonal-only accumulation step fed a call's per-column statistics (LayerView.column_stats)
    instead of blocks of X: the same running statistics, scaled the same way."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def accumulate(acc, sumsq_part, total_part, lo_part, hi_part, rows_part, top, all_finite):
        sumsq, lo, hi, rows = acc[:4]
        factor = _fixed_scale(acc, top, all_finite)
        sumsq.assign_add(sumsq_part * factor * factor)
        acc[7].assign_add(total_part * factor)
        lo.assign(tf.minimum(lo, lo_part * factor))
        hi.assign(tf.maximum(hi, hi_part * factor))
        rows.assign_add(rows_part)

    return accumulate


def _accumulate_columns(acc, stats: dict) -> None:
    import numpy as np

    _accumulate_columns_fn()(
        acc,
        np.asarray(stats["sumsq"], np.float32),
        np.asarray(stats["total"], np.float32),
        np.asarray(stats["lo"], np.float32),
        np.asarray(stats["hi"], np.float32),
        np.int64(stats["rows"]),
        np.float32(stats["largest"]),
        np.bool_(stats["finite"]),
    )


class HessianCapture:
    """The statistics of one layer's inputs over the calibration batches (`InputStats`): with
    `full`, H = X^T X / n (d_in^2 floats, the only big buffer alive); without, only its diagonal.

    `live` counts captures holding a Hessian (at most one at a time, which the tests assert);
    `peak_floats` is the largest Hessian held (d_in^2 floats); `peak_accumulator_floats` the largest
    accumulator of any capture (d_in for a diagonal-only one); `peak_block_rows` the most rows of X
    fed at once.

    Sampled rows: a convolution gives one row of X per output position, so a full-resolution image
    model gives millions (MiSiC's U-Net, 32 images of 256x256: 2.1M rows of 3,136 inputs per 7x7
    layer, 2e13 multiply-adds for one Hessian, and SparseGPT ran past 10 minutes). Neighbouring
    positions see overlapping windows, so those rows are highly redundant: a full capture of a
    convolution accumulates an even random share of each block's rows, enough for HESSIAN_ROWS rows in
    all (and HESSIAN_ROWS_PER_INPUT per input), seeded, so a run repeats exactly. H is a mean over the
    rows, so it estimates the same matrix; `InputStats.norms` scales back to all the rows. Examples and
    tokens (Dense, EinsumDense, recurrent inputs) are never sampled."""

    live = 0
    max_live = 0
    peak_floats = 0
    peak_accumulator_floats = 0
    peak_block_rows = 0

    def __init__(self, view: LayerView, calls_per_pass: int, full: bool = True, max_rows: int | None = None):
        self.view = view
        self.calls = calls_per_pass
        self.full = full
        self.max_rows = max_rows or max(1, PATCH_BYTES // (4 * view.d_in))

    def _row_fraction(self, x, passes: int | None) -> float:
        """The share of rows a full convolution capture accumulates, from the first call's input (every
        pass is taken to be as large): 1.0 for anything else, or when the total is under the cap."""
        if not self.full or self.view.kind not in CONVOLUTIONS or passes is None:
            return 1.0
        seen = self.view.rows_per_example(tuple(x.shape)) * int(x.shape[0]) * passes * self.calls
        wanted = max(HESSIAN_ROWS, HESSIAN_ROWS_PER_INPUT * self.view.d_in)
        return min(1.0, wanted / seen) if seen else 1.0

    def _start(self, passes: int | None, stop: bool):
        """The accumulators and the hook that feeds them (with `stop`, the hook ends the forward pass
        once the layer was called as often as it is per pass), and the function that reads them back."""
        import numpy as np

        view = self.view
        d = view.d_in
        cls = HessianCapture
        cls.peak_accumulator_floats = max(cls.peak_accumulator_floats, d * d if self.full else d)
        if self.full:
            cls.peak_floats = max(cls.peak_floats, d * d)
        acc = _accumulators(d, self.full)
        accumulate = _accumulate_fn(self.full)
        state = {"calls": 0, "fraction": None}
        rng = np.random.default_rng(0)

        def hook(x, call=None):
            if not self.full and view.column_statistics:  # the diagonal from window sums, X never built
                _accumulate_columns(acc, view.column_stats(x))
            else:
                if state["fraction"] is None:
                    state["fraction"] = self._row_fraction(x, passes)
                fraction = state["fraction"]
                sample = None if fraction >= 1.0 else (lambda n: _sampled_rows(n, fraction, rng))
                for block in view.blocks(x, self.max_rows, call, sample):
                    cls.peak_block_rows = max(cls.peak_block_rows, int(block.shape[0]))
                    accumulate(acc, block)
            state["calls"] += 1
            if stop and state["calls"] % self.calls == 0:
                raise _Stop()

        def finish() -> InputStats:
            return _input_stats(acc, d, self.full, row_fraction=state["fraction"] or 1.0)

        return hook, finish, state

    def run(self, model, batches, riders: tuple = ()) -> InputStats:
        """Accumulate over the batches; `riders` (ErrorMeters of layers called earlier in the pass)
        are fed by the same forward passes. `model` is anything called as model(x, training=False)
        once per batch: the model itself on input batches, or frontier's one-node runner on one
        pass's cached activations."""
        cls = HessianCapture
        cls.live += 1
        cls.max_live = max(cls.max_live, cls.live)
        try:
            hook, finish, _state = self._start(len(batches) if hasattr(batches, "__len__") else None, stop=True)
            # the layer's own hook innermost: a rider on the same layer (a recurrent layer's input kernel,
            # measured while its recurrent kernel is captured) is fed before the pass stops there
            with ExitStack() as hooks:  # left in reverse order: two hooks on one layer unwind as a stack
                for w in (wrap(self.view, hook), *(wrap(r.view, r.hook) for r in riders)):
                    hooks.enter_context(w)
                for x in batches:
                    _forward(model, x)
            return finish()
        finally:
            cls.live -= 1


def capture_all(captures: list[HessianCapture], model, batches: list):
    """Several layers' input statistics from ONE forward pass of `model` per batch (each capture's
    hook on its own layer), where `HessianCapture.run` costs a pass up to each layer: for statistics
    of layers that do not change while they are read (calibration/redundancy.py). Each capture reads
    exactly what its own `run` would (the same blocks, the same sampled rows), so the statistics are
    equal; the pass stops once every layer was called as often as it is per pass. Every capture's
    accumulators are alive at once (sum of d_in^2 float32 for full ones), and are counted in `live`.
    Layers must be distinct (one hook per layer). Yields each capture's InputStats in order, after all
    the passes; a capture's accumulators are released as its statistics are yielded (keep only what
    you need of each, and the peak stays the sum above plus what you keep)."""
    if not captures:
        return
    cls = HessianCapture
    cls.live += len(captures)
    cls.max_live = max(cls.max_live, cls.live)
    try:
        passes = len(batches)
        started = [c._start(passes, stop=False) for c in captures]
        done = [0]  # captures that finished the current pass

        def stopping(hook, capture, state):
            def wrapped(x, call=None):
                hook(x, call)
                if state["calls"] % capture.calls == 0:
                    done[0] += 1
                    if done[0] == len(captures):
                        raise _Stop()

            return wrapped

        with ExitStack() as hooks:
            for c, (hook, _finish, state) in zip(captures, started, strict=True):
                hooks.enter_context(wrap(c.view, stopping(hook, c, state)))
            for x in batches:
                done[0] = 0
                _forward(model, x)
        for i in range(len(started)):
            finish = started[i][1]
            started[i] = None
            yield finish()
            del finish
    finally:
        cls.live -= len(captures)


def _sampled_rows(n: int, fraction: float, rng):
    """An even random share of a block's n rows (at least one): their indices, in order."""
    import numpy as np

    return np.sort(rng.choice(n, size=max(1, round(n * fraction)), replace=False))


def wrap(view: LayerView, hook) -> _Wrapped:
    """The capture hook on the layer whose call receives the view's X (view.layer), called as
    hook(input, kwargs) for a view that reads the call's keyword arguments (a recurrent layer's mask
    and initial state)."""
    return _Wrapped(view.layer, hook, masked=view.masked)


def row_stats(blocks, d_in: int, full: bool = True) -> InputStats:
    """InputStats of rows the caller builds (blocks of X, each (rows, d_in), float32), accumulated by
    the same compiled step as a HessianCapture: for statistics of something other than one layer's own
    input (channel_refit.py stacks the pruned and the dense model's inputs side by side)."""
    acc = _accumulators(d_in, full)
    accumulate = _accumulate_fn(full)
    for block in blocks:
        accumulate(acc, block)
    return _input_stats(acc, d_in, full)


def layer_input(model, layer, x):
    """What `layer` receives on its first call when `model` runs on x (the pass stops there), or None
    when the pass never calls it."""
    seen = []

    def hook(value):
        seen.append(value)
        raise _Stop()

    with _Wrapped(layer, hook):
        _forward(model, x)
    return seen[0] if seen else None


def _accumulators(d: int, full: bool) -> list:
    """The running statistics of one layer's inputs, in the order _accumulate_fn updates them: sum of
    squares, per-input min and max, rows, all finite, largest |x|, the fixed scale (0 until set), the
    per-input sum, and with `full` the d x d sum of outer products."""
    import numpy as np
    import tensorflow as tf

    acc = [
        tf.Variable(tf.zeros((d,), tf.float32), trainable=False),
        tf.Variable(tf.fill((d,), np.float32(np.inf)), trainable=False),
        tf.Variable(tf.fill((d,), np.float32(-np.inf)), trainable=False),
        tf.Variable(tf.constant(0, tf.int64), trainable=False),
        tf.Variable(True, trainable=False),
        tf.Variable(0.0, trainable=False),
        tf.Variable(0.0, trainable=False),
        tf.Variable(tf.zeros((d,), tf.float32), trainable=False),
    ]
    if full:
        acc.append(tf.Variable(tf.zeros((d, d), tf.float32), trainable=False))
    return acc


def _input_stats(acc: list, d: int, full: bool, row_fraction: float = 1.0) -> InputStats:
    """The accumulated statistics as InputStats; the Hessian is averaged in place (no second d x d)."""
    import numpy as np

    rows = int(acc[3].numpy())
    lo, hi = acc[1].numpy(), acc[2].numpy()
    spread = float(np.max(hi - lo)) if rows else 0.0
    hessian = None
    if full:
        acc[8].assign(acc[8] * (1.0 / max(rows, 1)))
        hessian = acc[8].read_value()
    return InputStats(
        d_in=d,
        rows=rows,
        sumsq=acc[0].numpy(),
        total=acc[7].numpy(),
        spread=spread if np.isfinite(spread) else float("inf"),
        largest=float(acc[5].numpy()),
        finite=bool(acc[4].numpy()),
        scale=float(acc[6].numpy()) or 1.0,
        hessian=hessian,
        row_fraction=row_fraction,
    )


@functools.cache
def _meter_fn():
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def sums(m, diff, w):
        return tf.reduce_sum(tf.square(tf.matmul(m, diff))), tf.reduce_sum(tf.square(tf.matmul(m, w)))

    return sums


def _conv_kernels(view: LayerView, diff, w):
    """(diff, W) as convolution kernels for ErrorMeter.conv_sums (a 1-D conv's as 2-D of width 1), or None
    (not a conv, or a strided and dilated one, which TensorFlow's convolution does not take: its blocks of
    rows are read)."""
    import tensorflow as tf

    if view.kind != "conv":
        return None
    layer = view.target.layer
    if max(layer.strides) > 1 and max(layer.dilation_rate) > 1:
        return None

    def kernel(m):
        k = tf.cast(view.from_matrix(m), tf.float32)
        return k[:, None] if len(layer.kernel_size) == 1 else k

    return kernel(diff), kernel(w)


@functools.cache
def _conv_meter_fn():
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def sums(x, k_diff, k_w, strides, dilations):
        num = tf.nn.convolution(x, k_diff, strides, "VALID", dilations=dilations)
        den = tf.nn.convolution(x, k_w, strides, "VALID", dilations=dilations)
        return tf.reduce_sum(tf.square(num)), tf.reduce_sum(tf.square(den))

    return sums


class ErrorMeter:
    """A layer's relative output error ||X (W - W_dense)||_F / ||X W_dense||_F on its calibration
    inputs, read block by block while another capture's forward pass goes through the layer (or in a
    pass of its own, `measure`): for methods that keep no Hessian (Wanda), with O(d_in x d_out) memory."""

    def __init__(self, view: LayerView, w_new, w_dense, calls_per_pass: int):
        import tensorflow as tf

        self.view, self.calls = view, calls_per_pass
        self.w = tf.cast(w_dense, tf.float32)
        self.diff = tf.cast(w_new, tf.float32) - self.w
        self.num = self.den = 0.0
        self.seen = 0
        self.max_rows = max(1, PATCH_BYTES // (4 * view.d_in))
        self.kernels = _conv_kernels(view, self.diff, self.w)

    def hook(self, x, call=None):
        num, den = self.conv_sums(x) if self.kernels is not None else self.block_sums(x, call)
        self.num += num
        self.den += den
        self.seen += 1

    def block_sums(self, x, call=None) -> tuple[float, float]:
        """(||X diff||^2, ||X W||^2) over one layer input, from blocks of X (im2col rows for a conv)."""
        fn = _meter_fn()
        num = den = 0.0
        for block in self.view.blocks(x, self.max_rows, call):
            n, d = fn(block, self.diff, self.w)
            num += float(n)
            den += float(d)
        return num, den

    def conv_sums(self, x) -> tuple[float, float]:
        """The same sums for a convolution, without its im2col rows: X @ M over every row is the input,
        padded as the view pads it, convolved (VALID) with M as a kernel. Two convolutions of the size
        of the layer's own, instead of materialising kernel-size times its input (a Conv3D's volume
        patches: 11 of 85 s of a Wanda run on a 3-layer 32^3 stand-in for the zoo's rbm3 U-Net)."""
        x, _, strides, dilations, outs = self.view._padded(x)
        if 0 in outs:
            return 0.0, 0.0
        num, den = _conv_meter_fn()(x, *self.kernels, strides, dilations)
        return float(num), float(den)

    def error(self, passes: int) -> float | None:
        """The relative error, or None when the layer was not seen on every call of every pass."""
        if self.seen != self.calls * passes or not math.isfinite(self.num + self.den):
            return None
        return math.sqrt(self.num / self.den) if self.den > 0 else 0.0


def measure(model, batches, meter: ErrorMeter) -> None:
    """One (truncated) forward pass over the batches that only feeds `meter` (`model` as in
    HessianCapture.run)."""
    state = {"calls": 0}

    def hook(x, call=None):
        meter.hook(x, call)
        state["calls"] += 1
        if state["calls"] % meter.calls == 0:
            raise _Stop()

    with wrap(meter.view, hook):
        for x in batches:
            _forward(model, x)
