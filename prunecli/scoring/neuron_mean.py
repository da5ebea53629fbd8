"""Mean |w| of each unit: the unit-level counterpart of magnitude. Within a layer it ranks units as
the L1 norm does; across layers (scope global, normalize none) it does not favour wide fan-ins.
"""

from __future__ import annotations

from prunecli.scoring.registry import register


@register("neuron-mean", "mean |w| of each neuron/filter (data-free)", level="unit")
def neuron_mean(targets, ctx):
    import tensorflow as tf

    return {
        t.name: tf.reduce_mean(tf.abs(t.to_matrix(tf.cast(tf.convert_to_tensor(t.variable), tf.float32))), axis=0)
        for t in targets
    }
