"""Wanda and SparseGPT on a depthwise kernel (DepthwiseConv1D/2D, a SeparableConv's depthwise kernel).

Channel c's taps act on channel c's patches only, so the input Hessian that matters is per channel
(taps x taps): the within-channel entries of the im2col Hessian the capture builds (rows taps*C,
channel fastest). With so few weights per output (9 for a 3x3 kernel), Wanda's per-output comparison
group forces every output to lose the same taps' share, which measured worse than plain magnitude over
the layer; both methods therefore rank the whole layer:
- Wanda: |w[tap, c, m]| * ||x[tap, c]||, the k lowest of the layer pruned.
- SparseGPT: OBS saliency w^2 / [H_c^-1]_jj of every weight with its channel's Hessian, ranked over
  the layer, decides how many weights each channel loses; then one SparseGPT pass per channel on
  (taps, dm) with that channel's Hessian and count (the layer prunes exactly k).
Both return matrix views (the block-diagonal view of views.py, zero and not kept outside the blocks).
"""

from __future__ import annotations


def _lowest(score, k: int):
    """Keep mask of score's shape: the k lowest scores over the whole tensor pruned (ties by position)."""
    import numpy as np

    flat = np.asarray(score, np.float64).reshape(-1)
    keep = np.ones(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:k]] = False
    return keep.reshape(np.shape(score))


def prune(view, w_dense, stats, method: str, k: int | None, nm, jit: bool, exponent: float):
    """(new weights, keep) as block-diagonal matrix views, or why the layer stays on magnitude.
    `exponent`: of the input norm in Wanda's score (wanda.scores)."""
    import numpy as np
    import tensorflow as tf

    from prunecli.calibration import sparsegpt, wanda
    from prunecli.errors import DataError

    if nm:
        return "a depthwise kernel reads one channel per tap, so N:M groups along the channels keep it whole"
    k = int(k or 0)
    taps, channels, mult = view._depthwise_dims()
    w = np.asarray(tf.reshape(view.from_matrix(w_dense), (taps, channels, mult)), np.float32)
    if method == "wanda":
        norms = wanda.input_norms(stats.diag, exponent).reshape(taps, channels)
        keep_w = _lowest(np.abs(w) * norms[:, :, None], k)
        new_w = np.where(keep_w, w, 0.0).astype(np.float32)
    else:
        hessian = np.asarray(stats.hessian, np.float32).reshape(taps, channels, taps, channels)
        blocks = [hessian[:, c, :, c] for c in range(channels)]
        name = view.target.name
        try:
            saliency = np.stack(
                [np.asarray(sparsegpt.obs_scores(w[:, c, :], blocks[c], f"{name}[{c}]")) for c in range(channels)], 1
            )
            counts = (~_lowest(saliency, k)).sum(axis=(0, 2))
            new_w, keep_w = np.zeros_like(w), np.ones(w.shape, bool)
            for c in range(channels):
                if counts[c] == 0:
                    new_w[:, c, :] = w[:, c, :]
                    continue
                q, kp, _dampening = sparsegpt.prune_matrix(
                    w[:, c, :], blocks[c], f"{name}[{c}]", prune_count=int(counts[c]), jit=jit
                )
                new_w[:, c, :], keep_w[:, c, :] = np.asarray(q), np.asarray(kp)
        except DataError:
            return "a channel's input Hessian is not positive definite after dampening"
    shape = view.target.shape
    return view.to_matrix(tf.constant(new_w.reshape(shape))), view.to_matrix(tf.constant(keep_w.reshape(shape)))
