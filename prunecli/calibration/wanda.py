"""Wanda (Sun, Liu, Bair & Kolter 2023, "A Simple and Effective Pruning Approach for Large Language
Models"): score each weight by |w_ij| * ||x_j||_2, the weight's magnitude times the norm of its input
feature over the calibration data, and compare within each output (per output row, Section 3 of the
paper: "comparison group" per output), with no weight update.

||x_j||^2 is n * H_jj, so the score needs only the diagonal of the input Hessian: the capture keeps
the per-input sum of squares (d_in floats, streamed over blocks of rows), never the d_in x d_in matrix
(scaling by n does not change any ranking). N:M keeps the N best of every group of M inputs of each
output, in the groups every N:M mask of prunecli uses (structure.targets.NmGroups: along the input
channels of one convolution tap, never across taps).
"""

from __future__ import annotations


def scores(w, hessian_diag):
    """|w| * ||x_j|| on the (d_in, d_out) matrix view, from the Hessian's diagonal (or anything
    proportional to it, such as the per-input sum of squares)."""
    import numpy as np

    return norm_scores(w, np.sqrt(np.maximum(np.asarray(hessian_diag, np.float64), 0.0)))


def norm_scores(w, norms):
    """|w| * norms[j] on the (d_in, d_out) matrix view."""
    import tensorflow as tf

    return tf.abs(tf.cast(w, tf.float32)) * tf.cast(norms, tf.float32)[:, None]


def row_counts(d_in: int, d_out: int, prune_count: int) -> list[int]:
    """How many inputs each output loses so that the layer loses exactly prune_count weights: the
    first (prune_count mod d_out) outputs lose one more than the others."""
    base, extra = divmod(prune_count, d_out)
    return [min(d_in, base + (1 if o < extra else 0)) for o in range(d_out)]


def per_output_keep(score, prune_count: int):
    """Keep mask (d_in, d_out): in each output column, the lowest-scoring inputs are pruned (ties by
    position), exactly prune_count in all."""
    import tensorflow as tf

    d_in, d_out = int(score.shape[0]), int(score.shape[1])
    k = tf.constant(row_counts(d_in, d_out, prune_count), tf.int32)
    order = tf.argsort(score, axis=0, stable=True)
    rank = tf.argsort(order, axis=0, stable=True)  # 0 = lowest score of its output
    return rank >= k[None, :]
