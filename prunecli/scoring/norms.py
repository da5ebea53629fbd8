"""Norm of each unit's weights (Li et al. 2017, "Pruning Filters for Efficient ConvNets"): a filter
or neuron whose incoming weights are small produces small outputs. Data-free, one score per unit.
"""

from __future__ import annotations

from prunecli.scoring.registry import register


@register("l1-norm", "L1 norm of each neuron's/filter's weights (Li et al. 2017)", level="unit")
def l1_norm(targets, ctx):
    import tensorflow as tf

    return {t.name: tf.reduce_sum(tf.abs(_matrix(t)), axis=0) for t in targets}


@register("l2-norm", "L2 norm of each neuron's/filter's weights", level="unit")
def l2_norm(targets, ctx):
    import tensorflow as tf

    return {t.name: tf.norm(_matrix(t), axis=0) for t in targets}


def _matrix(target):
    """The weight as (reduction, units), float32: each column holds one unit's weights."""
    import tensorflow as tf

    return target.to_matrix(tf.cast(tf.convert_to_tensor(target.variable), tf.float32))
