"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned
in One-Shot", Algorithm 1): prune a layer column by column and update the remaining weights so the
layer's output on the calibration data moves as little as possible.

Notation of the paper: W is (d_out, d_in) (one row per output unit), H = X^T X / n is (d_in, d_in).
- Dampening: H + lambda I with lambda = 1% of mean(diag H) (the paper's default), which makes H
  positive definite when some inputs are (nearly) collinear; inputs that are always zero ("dead")
  get H_ii = 1. Where float32 still cannot factor it, 10% and then 100% (the layer's report entry
  says which); past that, `DataError` says which layer.
- Dead inputs: their weights are pruned first (they change nothing on the calibration data, the
  paper's W[:, dead] = 0) but only as many as the layer's count allows: a dead weight that is kept
  keeps its value (H has no off-diagonal entry for it, so no update reaches it), and the layer never
  ends with more zeros than it was asked for.
- U = upper Cholesky factor of H^-1, computed as R^-1 for the upper triangular R with H = R R^T (one
  Cholesky of the reversed H), a block of rows at a time as the loop reaches them (InverseFactor:
  one d x d matrix held beside H). Pruning column j of a row with error e_j = (w_j - q_j) / U_jj is
  compensated by w_{j:} -= e_j U_{j, j:} (the OBS update restricted to the not-yet-pruned columns).
- Lazy batches: columns are processed in blocks of B = 128; inside a block the updates touch only the
  block, and the block's accumulated errors reach the later columns with one matrix product.
- Mask selection: element sparsity chooses each block's mask adaptively (Section 3.2) from
  w^2 / U_jj^2 over the block, pruning the block's share of the layer's total (so the layer loses
  exactly round(s * size) weights); N:M chooses, at every M-th column, the N largest of
  w^2 / U_jj^2 in the next M columns of each row, using the already updated weights. The columns are
  laid out in the groups every N:M mask uses (structure.targets.NmGroups): a group never spans two
  taps of a convolution, and a tap's short last group is filled with dummy inputs (zero weight, no
  correlation with any input, never live), which rank last and which no update reaches.
Everything runs in float32. The block step is a compiled tf.function (`jit_compile` is the caller's
choice; see bench/ONESHOT.md for the measured effect).
"""

from __future__ import annotations

import functools

from prunecli.errors import DataError
from prunecli.structure.targets import NmGroups, nm_groups

BLOCK = 128
DAMPENING = 0.01


class _NotFinite(Exception):
    """Rows of U that float32 could not represent: the factor is made again, more dampened."""


class InverseFactor:
    """U, the upper Cholesky factor of (H')^-1 with H' = H + lambda mean(diag H) I (lambda = `dampening`,
    or 10x and 100x that when float32 cannot factor the less dampened H: a Hessian is never indefinite
    in exact arithmetic, but a badly conditioned one can be in float32), held as one d x d matrix.

    With J the reversal, J H' J = M M^T (one Cholesky) gives H' = R R^T for the upper triangular
    R = J M J, so (H')^-1 = R^-T R^-1 and U = R^-1 = J M^-1 J. Only M is kept: `rows` solves for the
    rows of U one block at a time, when the update reaches them (d^2 flops per row, as solving R
    against the identity costs). At the peak, inside the Cholesky, three d x d buffers are alive:
    the caller's H, the reversed copy the Cholesky overwrites, and Eigen's working copy; two
    afterwards. The dampened copy of H, R, an identity and the whole of U were five, which ran
    DeepVOG's 25,600-input convolution (a 2.4 GiB Hessian) out of memory (bench/COST.md)."""

    def __init__(self, hessian, name: str, dampening: float = DAMPENING):
        import tensorflow as tf

        self.hessian, self.name = tf.cast(hessian, tf.float32), name
        self.size = int(self.hessian.shape[0])
        diag = tf.linalg.diag_part(self.hessian)
        dead = diag <= 0
        live = tf.boolean_mask(diag, tf.logical_not(dead))
        self.mean = tf.reduce_mean(live) if int(tf.size(live)) else tf.constant(1.0)
        self.diag = tf.where(dead, tf.ones_like(diag), diag)  # dead inputs get H_jj = 1 (plus lambda)
        self.first = dampening
        self.levels = iter((dampening, 10 * dampening, 100 * dampening))
        self.lower = None
        self.dampening = None
        self.raise_dampening()

    def raise_dampening(self) -> None:
        """Factor H at the next dampening level (the first on construction): DataError when none is
        left that float32 can factor."""
        self.lower = None  # the previous factor goes before the next is made
        for used in self.levels:
            lower, factored = _factor_fn()(self.hessian, self.diag + used * self.mean)
            if bool(factored):
                self.lower, self.dampening = lower, used
                return
            del lower
        raise DataError(
            f"sparsegpt: the input Hessian of {self.name} is not positive definite even after "
            f"{100 * self.first:.0%} dampening (are the calibration inputs finite and varied?)"
        )

    def rows(self, start: int, end: int):
        """Rows start..end of U, (end - start, d): row i of J M^-1 J is row d-1-i of M^-1 reversed, and
        row k of M^-1 is M^-T e_k, one triangular solve against the picked columns of the identity.
        _NotFinite where float32 overflowed."""
        import tensorflow as tf

        picks = tf.one_hot(self.size - 1 - tf.range(start, end), self.size, axis=0)  # (d, end - start)
        solved = tf.linalg.triangular_solve(self.lower, picks, lower=True, adjoint=True)
        rows = tf.reverse(tf.transpose(solved), [1])
        if not bool(tf.reduce_all(tf.math.is_finite(rows))):
            raise _NotFinite()
        return rows


def inverse_factor(hessian, name: str, dampening: float = DAMPENING) -> InverseFactor:
    """The InverseFactor of `hessian`; DataError if no dampening level makes it positive definite."""
    return InverseFactor(hessian, name, dampening)


@functools.cache
def _factor_fn():
    """M, the lower Cholesky factor of J H J with `diag` on H's diagonal, and whether it factored (a
    failed factorisation is NaN on its diagonal; a successful one of a finite H is finite). One graph,
    so the reversed copy is the only new d x d buffer: set_diag and the Cholesky write over their
    input, which no one else holds (TensorFlow forwards it)."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True, autograph=False)
    def factor(hessian, diag):
        reversed_h = tf.linalg.set_diag(tf.reverse(hessian, [0, 1]), tf.reverse(diag, [0]))
        lower = tf.linalg.cholesky(reversed_h)
        return lower, tf.reduce_all(tf.math.is_finite(tf.linalg.diag_part(lower)))

    return factor


@functools.cache
def _block_fn(n: int, m: int, jit: bool):
    """The compiled inner loop of one block. n, m > 0: N:M masks chosen inside the loop."""
    import tensorflow as tf

    def block(w1, u1, keep1, live1):
        cols = tf.shape(w1)[1]
        shape = w1.shape  # static where known: a block of one column must stay (rows, 1) in the loop
        diag = tf.linalg.diag_part(u1)
        err1 = tf.zeros_like(w1)

        def body(i, w1, err1, keep1):
            if m:

                def choose():
                    sub = tf.slice(w1, [0, i], [-1, m])
                    d = tf.slice(diag, [i], [m])
                    score = tf.square(sub) * tf.slice(live1, [i], [m])[None, :] / tf.square(d)[None, :]
                    order = tf.argsort(-score, axis=1, stable=True)
                    rank = tf.argsort(order, axis=1, stable=True)
                    # place the group's (rows, M) mask at columns i..i+M (a product with one-hot
                    # rows, which XLA compiles, unlike a concat of dynamic slices)
                    place = tf.one_hot(i + tf.range(m), cols)
                    chosen = tf.matmul(tf.cast(rank < n, tf.float32), place) > 0.5
                    span = tf.reduce_sum(place, axis=0) > 0.5
                    return tf.where(span[None, :], chosen, keep1)

                keep1 = tf.cond(tf.equal(i % m, 0), choose, lambda: keep1)
            w = w1[:, i]
            q = tf.where(keep1[:, i], w, tf.zeros_like(w))
            err = (w - q) / diag[i]
            # U is upper triangular: the update leaves columns < i alone, and sets column i to q
            w1 = tf.ensure_shape(w1 - err[:, None] * u1[i][None, :], shape)
            err1 = tf.ensure_shape(err1 + err[:, None] * tf.one_hot(i, cols)[None, :], shape)
            return i + 1, w1, err1, tf.ensure_shape(keep1, shape)

        _, w1, err1, keep1 = tf.while_loop(
            lambda i, *_: i < cols, body, (tf.constant(0), w1, err1, keep1), parallel_iterations=1
        )
        w1 = tf.where(keep1, w1, tf.zeros_like(w1))  # exact zeros, whatever the rounding
        return w1, err1, keep1

    return tf.function(block, jit_compile=jit, reduce_retracing=True)


def _block_masks(w1, diag, k: int, live1=None):
    """Element sparsity: prune the k lowest w^2 / U_jj^2 of the block (ties by position); dead
    inputs (live1 = 0) score 0, so they go first."""
    import tensorflow as tf

    if k <= 0:
        return tf.ones_like(w1, tf.bool)
    score = tf.square(w1) / tf.square(diag)[None, :]
    if live1 is not None:
        score = score * live1[None, :]
    score = tf.reshape(score, [-1])
    order = tf.argsort(score, stable=True)
    pruned = tf.scatter_nd(order[:k, None], tf.ones([k], tf.bool), tf.shape(score))
    return tf.reshape(tf.logical_not(pruned), tf.shape(w1))


def prune_matrix(
    w,
    hessian,
    name: str,
    *,
    prune_count: int = 0,
    nm: tuple[int, int] | None = None,
    channels_per_tap: int | None = None,
    jit=False,
):
    """SparseGPT on one layer. w: (d_in, d_out) matrix view (rows = inputs, as in prunecli), H: (d_in, d_in).

    Returns (new w, keep mask, the dampening used), w and the mask (d_in, d_out); pruned weights are
    exactly 0. prune_count is the number of weights to prune (element sparsity); nm = (N, M) keeps N
    of every group of M inputs per output, groups never spanning a run of `channels_per_tap` inputs
    (Target.channels_per_tap; None: one run)."""
    import tensorflow as tf

    n, m = nm or (0, 0)
    rows = int(w.shape[0])
    hessian, w = tf.cast(hessian, tf.float32), tf.cast(w, tf.float32)
    # an input that is zero on every calibration example contributes nothing: its weights go first
    # (the paper's W[:, dead] = 0), rather than looking important through the H_jj = 1 put there,
    # but a dead weight the count keeps keeps its value (no update reaches it: see the docstring)
    live = tf.cast(tf.linalg.diag_part(hessian) > 0, tf.float32)
    groups = nm_groups(rows, m, channels_per_tap) if m else None
    if groups is not None and not groups.in_row_order:
        hessian, w, live = _laid_out_in_groups(hessian, w, live, groups)
    factor = inverse_factor(hessian, name)
    while True:
        try:
            q, keep = _blocks(tf.transpose(w), factor, live, prune_count, n, m, bool(jit))
            break
        except _NotFinite:  # U overflowed float32 in some row: the whole layer again, more dampened
            factor.raise_dampening()
    if groups is not None and not groups.in_row_order:
        q, keep = tf.gather(q, groups.row_slots, axis=1), tf.gather(keep, groups.row_slots, axis=1)
    return tf.transpose(q), tf.transpose(keep), factor.dampening


def _blocks(wt, factor: InverseFactor, live, prune_count: int, n: int, m: int, jit: bool):
    """The lazy-batch loop over (d_out, d_in) weights `wt` (the paper's layout): each block's rows of U
    solved for (`InverseFactor.rows`), its columns pruned and updated, its errors carried to the later
    columns. Returns (q, keep), (d_out, d_in)."""
    import tensorflow as tf

    d_out, d_in = int(wt.shape[0]), int(wt.shape[1])
    size = d_in * d_out
    block = BLOCK if not m else max(m, (BLOCK // m) * m)
    step = _block_fn(n, m, jit)
    q_blocks, keep_blocks = [], []
    done = 0  # weights pruned so far (element sparsity): each block takes its share of prune_count
    for start in range(0, d_in, block):
        end = min(start + block, d_in)
        u = factor.rows(start, end)  # (block, d_in): zero left of the block
        w1 = wt[:, : end - start]  # wt holds only the columns not yet done: no copy of the finished ones
        u1 = u[:, start:end]
        if m:
            keep1 = tf.ones_like(w1, tf.bool)
        else:
            share = int(round(prune_count * (end * d_out) / size)) - done
            keep1 = _block_masks(w1, tf.linalg.diag_part(u1), share, live[start:end])
            done += share
        q1, err1, keep1 = step(w1, u1, keep1, live[start:end])
        q_blocks.append(q1)
        keep_blocks.append(keep1)
        if end < d_in:
            wt = wt[:, end - start :] - tf.matmul(err1, u[:, end:])
    return tf.concat(q_blocks, axis=1), tf.concat(keep_blocks, axis=1)


def _laid_out_in_groups(hessian, w, live, groups: NmGroups):
    """(H, w, live) with one input per slot of `groups`: the real inputs in order, a dummy input in each
    padding slot (zero weight, zero correlation with every input, H_jj = 1, not live)."""
    import numpy as np
    import tensorflow as tf

    slots = groups.slots.reshape(-1)
    dummy = slots < 0
    source = tf.constant(np.where(dummy, int(w.shape[0]), slots), tf.int32)  # a dummy reads the zero row
    h = tf.gather(tf.gather(tf.pad(hessian, [[0, 1], [0, 1]]), source, axis=0), source, axis=1)
    h = tf.linalg.set_diag(h, tf.where(tf.constant(dummy), 1.0, tf.linalg.diag_part(h)))
    return h, tf.gather(tf.pad(w, [[0, 1], [0, 0]]), source), tf.gather(tf.pad(live, [[0, 1]]), source)


def obs_scores(w, hessian, name: str):
    """The OBS saliency w^2 / [H^-1]_jj of each weight (the data-aware score SparseGPT's mask is chosen
    from), of the matrix view's shape; for runs that need plain scores (global scope, schedules)."""
    import tensorflow as tf

    live = tf.cast(tf.linalg.diag_part(tf.cast(hessian, tf.float32)) > 0, tf.float32)  # dead inputs: 0
    factor = inverse_factor(hessian, name)
    while True:
        try:  # H^-1 = U^T U, so (H^-1)_jj = sum_k U_kj^2, summed a block of U's rows at a time
            inv_diag = sum(
                tf.reduce_sum(tf.square(factor.rows(start, min(start + BLOCK, factor.size))), axis=0)
                for start in range(0, factor.size, BLOCK)
            )
            break
        except _NotFinite:
            factor.raise_dampening()
    return tf.square(tf.cast(w, tf.float32)) * live[:, None] / inv_diag[:, None]
