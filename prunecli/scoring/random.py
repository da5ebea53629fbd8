"""Random scores: the baseline every pruning paper compares against. Seeded, so runs repeat exactly."""

from prunecli.scoring.registry import register


@register("random", "uniform random scores from --seed (the baseline)")
def random_scores(targets, ctx):
    import tensorflow as tf

    out = {}
    for i, t in enumerate(targets):
        seed = tf.constant([ctx.seed, i], dtype=tf.int64)
        out[t.name] = tf.random.stateless_uniform(t.shape, seed=seed, dtype=tf.float32)
    return out
