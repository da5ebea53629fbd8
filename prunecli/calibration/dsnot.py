"""A DSnoT-style refinement of a calibrated layer's mask (Zhang, Zhao, Lin et al., ICLR 2024, "Dynamic
Sparse No Training: Training-Free Fine-tuning for Sparse LLMs"): once Wanda or SparseGPT has chosen the
mask, each output swaps, a cycle at a time, one pruned weight back in (grow) for one kept weight out
(prune) where the swap lowers the layer's expected reconstruction error for that output, with no
gradient and no new weight values: a grown weight gets its dense value back, a pruned one becomes 0.
Every output keeps its count of pruned weights, and under N:M both weights of a swap lie in one group,
so the mask stays N:M.

Written from the paper's description, not its code. The error of output o is e_o = x . d_o, with
d_o = w_o - q_o the difference between the dense weights w and the layer's current weights q (for Wanda
the pruned dense weights; for SparseGPT also its updates of the kept ones). Its mean square over the
calibration rows is d_o^T H d_o with H = E[x x^T]. The paper models that error by each input feature's
mean and variance over the calibration data (the mean of e_o, and a variance term per weight); here
that is the approximation H ~ mu mu^T + diag(var) (`MeanVariance`: the mean term exact, the features'
covariances left out), which costs d_in floats, as Wanda's own statistics do. Where the layer's full
Hessian is at hand (SparseGPT), the error is exact (`FullHessian`): its updated weights only look right
with the covariances they were computed from.

One cycle, for every output at once (vectorised over the whole (d_in, d_out) matrix view): with
c = H d, growing pruned input g changes the error by G_g = -2 w_g c_g + w_g^2 H_gg; after it, pruning
kept input p changes it by 2 q_p c_p + q_p^2 H_pp - 2 w_g q_p H_gp. Element sparsity takes each
output's best grow and then its best prune given that grow (the paper's order: grow, then prune);
N:M weighs every (grow, prune) pair inside each group and takes the best. An output makes its swap only
where the pair lowers its error; the cycles stop after `CYCLES` or when no output gains. The paper's own
criteria are sign rules and ratios that approximate the same change (grow by the expected error
reduction over the feature's variance, prune by Wanda's score among the weights whose removal does
not raise the expected error); here the change of the modelled error is computed instead (those
criteria, tried on the Llama decoder of bench/DECODERS.md at 70%, gave a worse perplexity than this).

Measured (bench/DECODERS.md, "DSnoT"): on the digits MLP it lifts Wanda (70%: 0.843 -> 0.890 test
accuracy) and never lowers SparseGPT; on the small Llama decoder it lowers the layers' calibration
error yet raises the perplexity of Wanda's runs (70%: 23.0 -> 29.7), so it is an option
(`--refine dsnot`), not a default.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

CYCLES = 50  # grow-and-prune cycles per layer at most (each output swaps at most once a cycle)
RELATIVE_GAIN = 1e-6  # a swap must lower an output's modelled error by more than this share of it


@dataclass
class FullHessian:
    """H = E[x x^T] as captured (the scaled units of capture.InputStats: every decision is invariant to
    the scale)."""

    hessian: Any

    def diag(self):
        import tensorflow as tf

        return tf.linalg.diag_part(self.hessian)

    def times(self, d):
        import tensorflow as tf

        return tf.matmul(self.hessian, d)

    def columns(self, index):
        """(d_in, d_out): column o is H[:, index[o]]."""
        import tensorflow as tf

        return tf.gather(self.hessian, index, axis=1)

    def entries(self, rows, cols):
        """H[rows[i], cols[i]] for each i."""
        import tensorflow as tf

        return tf.gather_nd(self.hessian, tf.stack([rows, cols], axis=1))


@dataclass
class MeanVariance:
    """H ~ mu mu^T + diag(var): each input feature's mean and variance over the calibration rows (the
    paper's statistics), d_in floats each; its diagonal is E[x_j^2], Wanda's squared input norm per row."""

    mean: Any
    variance: Any

    def diag(self):
        return self.mean * self.mean + self.variance

    def times(self, d):
        import tensorflow as tf

        return self.mean[:, None] * tf.matmul(self.mean[None, :], d) + self.variance[:, None] * d

    def columns(self, index):
        import tensorflow as tf

        picked = tf.one_hot(index, tf.shape(self.mean)[0], axis=0) * tf.gather(self.variance, index)[None, :]
        return self.mean[:, None] * tf.gather(self.mean, index)[None, :] + picked

    def entries(self, rows, cols):
        import tensorflow as tf

        same = tf.cast(tf.equal(rows, cols), tf.float32)
        return tf.gather(self.mean, rows) * tf.gather(self.mean, cols) + same * tf.gather(self.variance, rows)


def mean_variance(stats) -> MeanVariance:
    """The MeanVariance model of a capture's per-input sums (capture.InputStats, scaled units)."""
    import numpy as np
    import tensorflow as tf

    rows = max(int(stats.rows), 1)
    mean = np.asarray(stats.total, np.float64) / rows
    variance = np.maximum(np.asarray(stats.sumsq, np.float64) / rows - mean * mean, 0.0)
    return MeanVariance(tf.constant(mean, tf.float32), tf.constant(variance, tf.float32))


def model_error(model, w_dense, w_new):
    """Each output's modelled mean square error d^T H d, (d_out,)."""
    import tensorflow as tf

    d = tf.cast(w_dense, tf.float32) - tf.cast(w_new, tf.float32)
    return tf.reduce_sum(d * model.times(d), axis=0)


def refine(w_dense, w_new, keep, model, groups=None, cycles: int = CYCLES):
    """Swap pruned and kept weights per output while that lowers the modelled error (module docstring).

    w_dense, w_new, keep: (d_in, d_out) matrix views (the dense weights, the layer's weights under its
    mask, the keep mask); model: FullHessian or MeanVariance; groups: the N:M layout
    (structure.targets.NmGroups) when the mask is N:M, else None. Returns (weights, keep, swaps made).
    The cycles run in one compiled loop (`_cycles_fn`)."""
    import tensorflow as tf

    w = tf.cast(w_dense, tf.float32)
    q = tf.cast(w_new, tf.float32)
    keep = tf.cast(keep, tf.bool)
    c = model.times(w - q)
    slots = tf.zeros((0, 1), tf.int64) if groups is None else tf.constant(groups.slots, tf.int64)
    run = _cycles_fn(type(model), 0 if groups is None else int(groups.slots.shape[1]))
    parts = tuple(getattr(model, f.name) for f in fields(model))
    q, keep, swaps = run(w, q, keep, c, slots, tf.constant(cycles), *parts)
    return q, keep, int(swaps)


@functools.cache
def _cycles_fn(kind, m: int):
    """The grow-and-prune cycles for every output, compiled once per error model and group size M (0:
    element sparsity): (w, q, keep, c = H (w - q), N:M slots, cycles at most, the model's tensors) ->
    (q, keep, swaps made); the loop ends early at a cycle where no output gains."""
    import tensorflow as tf

    def cycle(w, q, keep, c, slots, model, h):
        d = w - q
        error = tf.reduce_sum(d * c, axis=0)
        if m:
            grow, prune, change = _best_group_swap(w, q, keep, c, h, model, slots, m)
        else:
            grow, prune, change = _best_element_swap(w, q, keep, c, h, model)
        take = change < -RELATIVE_GAIN * tf.maximum(error, 0.0)
        outputs = tf.range(tf.shape(w, out_type=tf.int64)[1])
        at_grow = tf.stack([grow, outputs], axis=1)
        at_prune = tf.stack([prune, outputs], axis=1)
        w_grow = tf.where(take, tf.gather_nd(w, at_grow), 0.0)
        q_prune = tf.where(take, tf.gather_nd(q, at_prune), 0.0)
        # d_grow: w_g -> 0; d_prune: w_p - q_p -> w_p; c = H d follows by two columns of H per output
        c = c - w_grow[None, :] * model.columns(grow) + q_prune[None, :] * model.columns(prune)
        shape = tf.shape(w, out_type=tf.int64)
        grown = tf.scatter_nd(at_grow, take, shape)
        pruned = tf.scatter_nd(at_prune, take, shape)
        keep = tf.logical_and(tf.logical_or(keep, grown), tf.logical_not(pruned))
        q = tf.where(grown, w, tf.where(pruned, 0.0, q))
        return q, keep, c, tf.reduce_sum(tf.cast(take, tf.int32))

    def cycles(w, q, keep, c, slots, limit, *parts):
        model = kind(*parts)
        h = model.diag()

        def body(i, q, keep, c, swaps, _):
            q, keep, c, count = cycle(w, q, keep, c, slots, model, h)
            return i + 1, q, keep, c, swaps + count, count

        start = (tf.constant(0), q, keep, c, tf.constant(0), tf.constant(1))
        _, q, keep, _, swaps, _ = tf.while_loop(
            lambda i, *rest: tf.logical_and(i < limit, rest[-1] > 0), body, start, parallel_iterations=1
        )
        return q, keep, swaps

    return tf.function(cycles, reduce_retracing=True, autograph=False)


def _best_element_swap(w, q, keep, c, h, model):
    """Per output: the pruned (nonzero) weight whose growth lowers the error most, then the kept weight
    whose pruning, after that growth, changes it least; (grow, prune, the pair's change)."""
    import tensorflow as tf

    inf = tf.constant(float("inf"))
    gain = -2.0 * w * c + w * w * h[:, None]
    growable = tf.logical_and(tf.logical_not(keep), tf.not_equal(w, 0.0))
    gain = tf.where(growable, gain, inf)
    grow = tf.argmin(gain, axis=0)
    outputs = tf.range(tf.shape(w, out_type=tf.int64)[1])
    w_grow = tf.gather_nd(w, tf.stack([grow, outputs], axis=1))
    cost = 2.0 * q * c + q * q * h[:, None] - 2.0 * w_grow[None, :] * q * model.columns(grow)
    cost = tf.where(keep, cost, inf)
    prune = tf.argmin(cost, axis=0)
    return grow, prune, tf.reduce_min(gain, axis=0) + tf.reduce_min(cost, axis=0)


def _best_group_swap(w, q, keep, c, h, model, slots, m: int):
    """Per output: the best (grow, prune) pair inside any one N:M group, each group's pairs weighed with
    their cross term, the M (M - 1) pairs of slots unrolled; (grow, prune, the pair's change). Padding
    slots (-1) take part in no pair."""
    import tensorflow as tf

    inf = tf.constant(float("inf"))
    real = slots >= 0
    safe = tf.where(real, slots, 0)
    gain = -2.0 * w * c + w * w * h[:, None]
    growable = tf.logical_and(tf.logical_not(keep), tf.not_equal(w, 0.0))
    cost = 2.0 * q * c + q * q * h[:, None]
    changes, grows, prunes = [], [], []
    for a in range(m):
        for b in range(m):
            if a == b:
                continue
            ga, pb = safe[:, a], safe[:, b]
            valid = tf.logical_and(real[:, a], real[:, b])[:, None]
            ok = tf.logical_and(valid, tf.logical_and(tf.gather(growable, ga), tf.gather(keep, pb)))
            cross = -2.0 * tf.gather(w, ga) * tf.gather(q, pb) * model.entries(ga, pb)[:, None]
            total = tf.gather(gain, ga) + tf.gather(cost, pb) + cross
            changes.append(tf.where(ok, total, inf))
            grows.append(ga)
            prunes.append(pb)
    change = tf.concat(changes, axis=0)  # (pairs * groups, d_out)
    best = tf.argmin(change, axis=0)
    return tf.gather(tf.concat(grows, 0), best), tf.gather(tf.concat(prunes, 0), best), tf.reduce_min(change, axis=0)
