"""Activation-based unit scores, read from each target layer's output over the data.

`activation`: mean |a| of each unit's output: a unit whose output stays near zero contributes
little to the next layer. `apoz`: 1 - APoZ, the Average Percentage of Zeros after ReLU (Hu et al.
2016, "Network Trimming"); a unit that is almost always zero is almost never used. Outputs are read
after the batch-norm and activation layers that directly follow the layer; values <= 0 count as
zeros (what a ReLU would make of them) whether or not the layer ends with one.
"""

from __future__ import annotations

from prunecli.scoring import _data
from prunecli.scoring.registry import register


def _unit_statistic(targets, ctx, method: str, per_value) -> dict:
    """Mean of per_value(output) over the data, per unit: batch, time and space axes are averaged."""
    import tensorflow as tf

    _data.require_data(ctx, method)
    reader, plan, axes = _data.unit_outputs(ctx.model, targets, method)
    n_outputs = len(reader.outputs)

    def batch_sums(x, _y):
        """Per output: the sum of per_value over this batch's positions, per channel, and their count."""
        outs = reader(x, training=False)
        outs = [outs] if n_outputs == 1 and not isinstance(outs, (list, tuple)) else outs
        totals, counts = [], []
        for out, axis in zip(outs, axes, strict=True):
            if axis != len(out.shape) - 1:  # a channels_first output: its channels moved last
                out = tf.transpose(out, [a for a in range(len(out.shape)) if a != axis] + [axis])
            values = tf.reshape(per_value(tf.cast(out, tf.float32)), [-1, int(out.shape[-1])])
            totals.append(tf.reduce_sum(values, axis=0))
            counts.append(tf.cast(tf.shape(values)[0], tf.float32))
        return totals, counts

    (sums, positions), _ = _data.accumulate(ctx, method, batch_sums)
    scores = {}
    for t, (index, multiplier) in zip(targets, plan, strict=True):
        per_channel = sums[index] / positions[index]
        # depthwise outputs hold `multiplier` channels per input channel, unit-major
        scores[t.name] = tf.reduce_mean(tf.reshape(per_channel, [t.units, multiplier]), axis=1)
    return _data.check_finite(scores, method)


@register("activation", "mean |activation| of each unit over --data", level="unit", needs_data=True)
def mean_activation(targets, ctx):
    import tensorflow as tf

    return _unit_statistic(targets, ctx, "activation", tf.abs)


@register("apoz", "1 - APoZ: share of non-zero ReLU outputs per unit (Hu et al. 2016)", level="unit", needs_data=True)
def apoz(targets, ctx):
    import tensorflow as tf

    return _unit_statistic(targets, ctx, "apoz", lambda a: tf.cast(a > 0, tf.float32))
