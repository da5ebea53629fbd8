"""Gradient-based element scores, from the loss on the data.

`gradient`: |dL/dw| averaged over batches: how strongly the loss reacts to each weight.
`taylor`: |w * dL/dw|, the first-order Taylor estimate of the change in loss when the weight is set
to zero (Molchanov et al. 2017, 2019). Both are per element; with --granularity neuron the policy
averages them over each unit. Regularisation losses are left out: they measure the weights, not
the task.
"""

from __future__ import annotations

from prunecli.scoring import _data
from prunecli.scoring.registry import register
from prunecli.training import distribute
from prunecli.training.metrics import loss_callable


def mean_abs_gradients(targets, ctx, method: str) -> dict:
    """{target.name: mean over batches of |dL/dw|}, float32, each of the weight's shape."""
    import tensorflow as tf

    _data.require_data(ctx, method)
    loss_fn = loss_callable(ctx.loss_fn, f"method {method!r}")
    model = ctx.model
    weights = [getattr(t.variable, "value", t.variable) for t in targets]  # the tf.Variable under a Keras one

    def batch_gradients(x, y):
        """This replica's part of the gradient of the global batch's mean loss (all of it on one device)."""
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for w in weights:
                tape.watch(w)
            losses = loss_fn(y, model(x, training=False))
            loss = distribute.global_mean_part(losses, tf.shape(tf.nest.flatten(x)[0])[0])
        grads = tape.gradient(loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return [tf.cast(g, tf.float32) for g in grads]

    # |.| is taken of each global batch's gradient, after the replicas' parts are summed
    sums, batches = _data.accumulate(
        ctx, method, batch_gradients, needs_labels=True, then=lambda gs: [tf.abs(g) for g in gs]
    )
    return {t.name: total / batches for t, total in zip(targets, sums, strict=True)}


@register("gradient", "|dL/dw| averaged over --data batches", needs_data=True)
def gradient(targets, ctx):
    return _data.check_finite(mean_abs_gradients(targets, ctx, "gradient"), "gradient")


@register("taylor", "|w * dL/dw|, first-order Taylor (Molchanov et al.)", needs_data=True)
def taylor(targets, ctx):
    import tensorflow as tf

    grads = mean_abs_gradients(targets, ctx, "taylor")
    scores = {t.name: tf.abs(tf.cast(tf.convert_to_tensor(t.variable), tf.float32)) * grads[t.name] for t in targets}
    return _data.check_finite(scores, "taylor")
