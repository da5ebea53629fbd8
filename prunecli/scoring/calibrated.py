"""Wanda and SparseGPT in the registry. A one-shot run prunes with them through
prunecli.calibration.prune_calibrated (layer by layer, each layer's inputs read from the already
pruned model, SparseGPT's weight updates); these functions give the plain element scores the generic
policy uses elsewhere (gradual schedules, plan, sweep): Wanda's |w| * ||x|| and the OBS saliency
w^2 / [H^-1]_jj that SparseGPT chooses its masks by, read from the model as it is.
"""

from prunecli.scoring.registry import register

SUMMARIES = {
    "wanda": "|w| x input norm per output, layer by layer, on --data (Sun et al. 2023)",
    "sparsegpt": "OBS pruning with weight updates, layer by layer (Frantar & Alistarh 2023)",
}


def _scores_of(method: str):
    """The registry's function for a calibrated method: its plain element scores on the model as it is."""

    def scores(targets, ctx):
        from prunecli.calibration import strategy_scores

        return strategy_scores(method, targets, ctx)

    scores.__name__ = method
    return scores


for _method, _summary in SUMMARIES.items():
    register(_method, _summary, needs_data=True, calibrated=True)(_scores_of(_method))
