"""Wanda and SparseGPT in the registry. A one-shot run prunes with them through
prunecli.calibration.prune_calibrated (layer by layer, each layer's inputs read from the already
pruned model, SparseGPT's weight updates); these functions give the plain element scores the generic
policy uses elsewhere (gradual schedules, plan, sweep): Wanda's |w| * ||x|| and the OBS saliency
w^2 / [H^-1]_jj that SparseGPT chooses its masks by, read from the model as it is.
"""

from prunecli.scoring.registry import register


@register(
    "wanda",
    "|w| x input norm, per output, layer by layer on --data (Sun et al. 2023)",
    needs_data=True,
    calibrated=True,
)
def wanda(targets, ctx):
    from prunecli.calibration import strategy_scores

    return strategy_scores("wanda", targets, ctx)


@register(
    "sparsegpt",
    "OBS pruning with weight updates, layer by layer (Frantar & Alistarh 2023)",
    needs_data=True,
    calibrated=True,
)
def sparsegpt(targets, ctx):
    from prunecli.calibration import strategy_scores

    return strategy_scores("sparsegpt", targets, ctx)
