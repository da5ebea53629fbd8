"""Wanda (Sun, Liu, Bair & Kolter 2023, "A Simple and Effective Pruning Approach for Large Language
Models"): score each weight by |w_ij| * ||x_j||_2, the weight's magnitude times the norm of its input
feature over the calibration data, and compare within each output (per output row, Section 3 of the
paper: "comparison group" per output), with no weight update.

||x_j||^2 is n * H_jj, so the score needs only the diagonal of the input Hessian: the capture keeps
the per-input sum of squares (d_in floats, streamed over blocks of rows), never the d_in x d_in matrix
(scaling by n does not change any ranking). N:M keeps the N best of every group of M inputs of each
output, in the groups every N:M mask of prunecli uses (structure.targets.NmGroups: along the input
channels of one convolution tap, never across taps).

A tempered score |w_ij| * ||x_j||^a with a < 1 (TEMPERED_EXPONENT) weighs the activations less: on the
small decoders and the digits MLP of bench/DECODERS.md, whose inputs lack the outlier features Wanda's
activation term is there for, |w| * ||x||^0.5 kept better weights than the paper's a = 1 at every
sparsity and at 2:4 (bench/DECODERS.md, "A tempered Wanda score"; an exponent between magnitude's 0
and Wanda's 1, as RIA's a = 0.5, Zhang et al. 2024). prunecli uses it only in the trials of
--normalize measured (calibration/oneshot.py), beside Wanda's own score, never in place of it.
"""

from __future__ import annotations

EXPONENT = 1.0  # Wanda's own: |w| * ||x||
TEMPERED_EXPONENT = 0.5  # the tempered trial's: |w| * ||x||^0.5


def input_norms(hessian_diag, exponent: float = EXPONENT):
    """||x_j||^exponent per input, from the Hessian's diagonal (or anything proportional to it, such as
    the per-input sum of squares: a common factor changes no ranking within an output)."""
    import numpy as np

    return np.sqrt(np.maximum(np.asarray(hessian_diag, np.float64), 0.0)) ** exponent


def scores(w, hessian_diag, exponent: float = EXPONENT):
    """|w| * ||x_j||^exponent on the (d_in, d_out) matrix view (Wanda's score at the default exponent)."""
    return norm_scores(w, input_norms(hessian_diag, exponent))


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
