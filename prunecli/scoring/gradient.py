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


def mean_abs_gradients(targets, ctx, method: str) -> dict:
    """{target.name: mean over batches of |dL/dw|}, float32, each of the weight's shape."""
    import tensorflow as tf

    _data.require_data(ctx, method)
    loss_fn = _data.loss_function(ctx, method)
    model = ctx.model
    weights = [getattr(t.variable, "value", t.variable) for t in targets]  # the tf.Variable under a Keras one
    sums = [tf.Variable(tf.zeros(t.shape, tf.float32), trainable=False) for t in targets]

    def step(x, y):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            for w in weights:
                tape.watch(w)
            loss = tf.reduce_mean(tf.cast(loss_fn(y, model(x, training=False)), tf.float32))
        grads = tape.gradient(loss, weights, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        for total, g in zip(sums, grads, strict=True):
            total.assign_add(tf.abs(tf.cast(g, tf.float32)))

    batches = _data.run_batches(ctx, method, _data.compile_step(step, ctx), needs_labels=True)
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
