"""XLA-compiled kernels: exact k-lowest selection, N:M masks, and applying masks to variables.

Selection does not sort. tfmot finds each layer's threshold with a full `tf.math.top_k`; here the
k-th smallest score is found by a two-pass radix select on the float's bit pattern: a 65,536-bin
histogram of the top 16 bits locates the bucket that holds the k-th value, a second histogram of
the low 16 bits inside that bucket gives its exact bits. Ties at the threshold are broken by
position, so exactly k elements are selected in every segment. Each pass is one read of the
scores, so the cost is a few passes over memory instead of an O(n log n) sort.
"""

from __future__ import annotations

import functools

_BINS = 65536


def _tf():
    import tensorflow as tf

    return tf


@functools.lru_cache(maxsize=None)
def _select_fn():
    tf = _tf()

    def order_keys(x):
        x = tf.where(tf.equal(x, 0.0), tf.zeros_like(x), x)  # -0.0 ties with +0.0
        bits = tf.bitcast(x, tf.int32)
        return tf.where(bits < 0, tf.bitwise.bitwise_xor(bits, tf.constant(0x7FFFFFFF)), bits)

    @tf.function(jit_compile=True)
    def select(x, seg, ks, starts):
        """x: (N,) float32 scores of S contiguous segments; seg: (N,) segment ids, or None when S=1;
        ks: (S,) int32, how many to select per segment; starts: (S,) int32 segment offsets.

        Returns (N,) bool, True where an element is among its segment's k lowest.
        The graph does not depend on how many tensors were joined, so one compile serves a model.
        """
        num = int(ks.shape[0])
        key = order_keys(x)
        hi = tf.bitwise.right_shift(key, 16) + 32768  # 0 .. 65535, in score order
        lo = tf.bitwise.bitwise_and(key, 0xFFFF)
        base = 0 if seg is None else seg * _BINS

        def per_segment(values):
            return values[0] if seg is None else tf.gather(values, seg)

        h1 = tf.reshape(tf.math.unsorted_segment_sum(tf.ones_like(hi), base + hi, num * _BINS), (num, _BINS))
        c1 = tf.cumsum(h1, axis=1)
        bucket = tf.minimum(tf.reduce_sum(tf.cast(c1 < ks[:, None], tf.int32), axis=1), _BINS - 1)
        below_bucket = tf.gather(c1 - h1, bucket, batch_dims=1)

        in_bucket = tf.cast(tf.equal(hi, per_segment(bucket)), tf.int32)
        h2 = tf.reshape(tf.math.unsorted_segment_sum(in_bucket, base + lo, num * _BINS), (num, _BINS))
        c2 = tf.cumsum(h2, axis=1)
        need = ks - below_bucket
        low = tf.minimum(tf.reduce_sum(tf.cast(c2 < need[:, None], tf.int32), axis=1), _BINS - 1)
        below_t = below_bucket + tf.gather(c2 - h2, low, batch_dims=1)
        at_t = tf.gather(h2, low, batch_dims=1)
        take_at_t = ks - below_t  # how many elements equal to the threshold are selected
        thresh = tf.bitwise.bitwise_or(tf.bitwise.left_shift(bucket - 32768, 16), low)
        active = ks > 0

        t_el, act_el = per_segment(thresh), per_segment(active)
        below = tf.logical_and(key < t_el, act_el)
        equal = tf.logical_and(tf.equal(key, t_el), act_el)

        def with_ties():
            before = tf.cumsum(tf.cast(equal, tf.int32), exclusive=True)
            rank = before - per_segment(tf.gather(before, starts))
            return tf.logical_or(below, tf.logical_and(equal, rank < per_segment(take_at_t)))

        ties = tf.reduce_any(tf.logical_and(at_t > take_at_t, active))
        return tf.cond(ties, with_ties, lambda: tf.logical_or(below, equal))

    return select


def _select_joined(flat, ks, per_tensor_segments: bool):
    tf = _tf()
    sizes = [int(f.shape[0]) for f in flat]
    x = tf.concat(flat, axis=0) if len(flat) > 1 else flat[0]
    if per_tensor_segments and len(flat) > 1:
        seg = tf.repeat(tf.range(len(flat), dtype=tf.int32), sizes)
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
    else:
        seg, starts = None, [0]
    chosen = _select_fn()(x, seg, tf.constant(ks, tf.int32), tf.constant(starts, tf.int32))
    return tf.split(chosen, sizes) if len(flat) > 1 else [chosen]


def select_lowest(scores, ks):
    """For each score tensor, a flat bool mask of its own k lowest scores (exactly k; ties by position).

    scores: list of tensors; ks: one int per tensor. NaN sorts above +inf (the loader rejects NaN weights).
    """
    tf = _tf()
    flat = [tf.reshape(tf.cast(s, tf.float32), [-1]) for s in scores]
    return _select_joined(flat, [int(k) for k in ks], per_tensor_segments=True)


def select_lowest_global(scores, k):
    """A flat bool mask per tensor selecting, across all of them together, the k lowest scores."""
    tf = _tf()
    flat = [tf.reshape(tf.cast(s, tf.float32), [-1]) for s in scores]
    return _select_joined(flat, [int(k)], per_tensor_segments=False)


@functools.lru_cache(maxsize=None)
def _nm_fn():
    tf = _tf()

    @tf.function(jit_compile=True)
    def keep_n_of_m(matrix, n, m):
        rows, cols = matrix.shape
        pad = (-rows) % m
        x = tf.pad(matrix, [[0, pad], [0, 0]], constant_values=float("-inf"))
        groups = tf.reshape(x, ((rows + pad) // m, m, cols))
        # rank within each group, highest score first, ties broken by position
        order = tf.argsort(-groups, axis=1, stable=True)
        rank = tf.argsort(order, axis=1, stable=True)
        keep = tf.reshape(rank < n, (rows + pad, cols))
        return keep[:rows]

    return keep_n_of_m


def nm_keep_mask(matrix, n: int, m: int):
    """Keep the N highest scores in every run of M consecutive rows of each column."""
    tf = _tf()
    return _nm_fn()(tf.cast(matrix, tf.float32), n, m)


@functools.lru_cache(maxsize=None)
def _apply_fn():
    tf = _tf()

    @tf.function(jit_compile=True)
    def apply(variables, masks):
        for v, m in zip(variables, masks):
            v.assign(tf.where(m, v, tf.zeros_like(v)))
        return tf.constant(True)

    return apply


def _tf_variable(v):
    return getattr(v, "value", v)


def apply_masks(variables, masks) -> None:
    """Zero every masked-out weight, all variables in one XLA-compiled call (keep where mask is True)."""
    if not variables:
        return
    _apply_fn()([_tf_variable(v) for v in variables], list(masks))
