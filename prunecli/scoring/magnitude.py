"""Magnitude: |w|. The classic data-free criterion (Han et al. 2015) and tfmot's only one."""

from prunecli.scoring.registry import register


@register("magnitude", "|w| of each weight (data-free; the tfmot criterion)")
def magnitude(targets, ctx):
    import tensorflow as tf

    return {t.name: tf.abs(tf.convert_to_tensor(t.variable)) for t in targets}
