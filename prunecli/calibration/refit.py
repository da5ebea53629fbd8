"""Layer-wise reconstruction: refit the weights that survive a mask so the layer's output on the
calibration inputs comes as close as possible to the dense layer's output on the same inputs.

For each output unit o with kept inputs S_o the least-squares problem min ||X w_S - X w_dense||^2 has
the normal equations H_SS w_S = (H w_dense)_S with H = X^T X / n, the Hessian the capture already
holds, so no activations are kept. All outputs are solved together by conjugate gradients (Jacobi-preconditioned, at most 100
iterations or a relative residual of 1e-5) restricted to each output's kept inputs (one (d_in x d_in) @ (d_in x d_out) product per iteration, compiled),
on H dampened by 0.1% of its mean diagonal towards the dense weights (a ridge term that keeps the
refit from over-fitting a few hundred examples; SparseGPT's 1% cost a fifth of the gain on
scale-varying inputs, see tests/test_calibration.py). This is the layer-wise objective of SparseGPT/OBC, solved
exactly for the mask instead of greedily; it is the cheap alternative to fine-tuning.

The relative output error of a layer is ||X (W - W_dense)||_F / ||X W_dense||_F on its calibration
inputs, computed from H as sqrt(tr(D^T H D) / tr(W^T H W)).
"""

from __future__ import annotations

import functools

DAMPENING = 1e-3
ITERATIONS = 100
TOLERANCE = 1e-5  # relative residual at which every output has converged


def relative_error(w, w_dense, hessian) -> float:
    import tensorflow as tf

    w, w_dense, h = (tf.cast(a, tf.float32) for a in (w, w_dense, hessian))
    diff = w - w_dense
    num = tf.reduce_sum(diff * tf.matmul(h, diff))
    den = tf.reduce_sum(w_dense * tf.matmul(h, w_dense))
    return float(tf.sqrt(tf.maximum(num, 0.0) / tf.maximum(den, 1e-30)))


@functools.cache
def _cg_fn():
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def solve(h, lam, b, keep, x0, iterations, tol):
        """Conjugate gradients on (h + lam I) with a Jacobi (diagonal) preconditioner, one system per
        output column, each restricted to that column's kept inputs. The ridge is added to each product,
        not to a damped copy of h: one d_in x d_in matrix less in memory."""
        keep = tf.cast(keep, tf.float32)
        inv_diag = 1.0 / (tf.linalg.diag_part(h) + lam)[:, None]
        x = x0 * keep
        r = (b - tf.matmul(h, x) - lam * x) * keep
        z = r * inv_diag
        p = z
        rz = tf.reduce_sum(r * z, axis=0)
        stop = tol * tol * tf.maximum(tf.reduce_sum(b * b * keep, axis=0), 1e-30)

        def cond(i, x, r, p, rz):
            return tf.logical_and(i < iterations, tf.reduce_any(tf.reduce_sum(r * r, axis=0) > stop))

        def body(i, x, r, p, rz):
            hp = (tf.matmul(h, p) + lam * p) * keep
            alpha = tf.math.divide_no_nan(rz, tf.reduce_sum(p * hp, axis=0))
            x = x + alpha[None, :] * p
            r = r - alpha[None, :] * hp
            z = r * inv_diag
            new = tf.reduce_sum(r * z, axis=0)
            p = z + tf.math.divide_no_nan(new, rz)[None, :] * p
            return i + 1, x, r, p, new

        _, x, *_ = tf.while_loop(cond, body, (tf.constant(0), x, r, p, rz))
        return x * keep

    return solve


def output_error(w, h_pp, target, dense_energy) -> float:
    """||X_p W - Y_d||_F / ||Y_d||_F from what the stacked rows' Hessian gives: H_pp = X_p^T X_p / n,
    `target` = X_p^T Y_d / n and `dense_energy` = ||Y_d||_F^2 / n; the error of a layer fed other
    inputs (X_p, the pruned model's) than the dense layer whose output Y_d it should reproduce."""
    import tensorflow as tf

    w, h_pp, target, dense = (tf.cast(a, tf.float32) for a in (w, h_pp, target, dense_energy))
    num = tf.reduce_sum(w * tf.matmul(h_pp, w)) - 2.0 * tf.reduce_sum(w * target) + dense
    return float(tf.sqrt(tf.maximum(num, 0.0) / tf.maximum(dense, 1e-30)))


def refit(w_start, w_dense, keep, hessian, dampening: float = DAMPENING, target=None):
    """The least-squares weights on each output's kept inputs, starting from w_start; pruned
    weights are exactly 0. All matrices in the (d_in, d_out) view.

    `target` = X_p^T Y_d / n when the dense output Y_d to reproduce comes from other inputs than the
    layer's own (channel_refit.py: the dense model's), `hessian` then X_p^T X_p / n; None for the
    same inputs (the dense output is X w_dense, the target H w_dense)."""
    import tensorflow as tf

    h = tf.cast(hessian, tf.float32)
    diag = tf.linalg.diag_part(h)
    # the same lambda on both sides (a Hessian of all zeros is refused before: oneshot falls back)
    lam = tf.maximum(dampening * tf.reduce_mean(diag), 1e-12)
    if target is None:
        target = tf.matmul(h, tf.cast(w_dense, tf.float32))
    target = tf.cast(target, tf.float32)
    # the ridge pulls towards w_dense, not 0: (H + lam I) w = H w_dense + lam w_dense on the kept inputs
    b = target + lam * tf.cast(w_dense, tf.float32)
    x = _cg_fn()(h, lam, b, tf.cast(keep, tf.bool), tf.cast(w_start, tf.float32), ITERATIONS, TOLERANCE)
    return tf.where(tf.cast(keep, tf.bool), x, tf.zeros_like(x))
