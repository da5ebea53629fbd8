"""Redundancy: what removing a channel costs once the layers reading it are refit (OBS on --data).

One score per channel: the relative output error its readers (the Dense and Conv layers its value
reaches) keep after the optimal refit without it, found greedily so that of two copies only one looks
free (calibration/redundancy.py). Meant for channel pruning (`--target`, `-g neuron`): a channel the
others reproduce scores low whatever its magnitude.
"""

from __future__ import annotations

from prunecli.scoring.registry import register


@register(
    "redundancy",
    "channel's cost with its readers refit (OBS, greedy; for --target / -g neuron)",
    level="unit",
    needs_data=True,
)
def redundancy(targets, ctx):
    from prunecli.calibration import capture
    from prunecli.calibration.redundancy import channel_scores
    from prunecli.errors import ConfigError
    from prunecli.structure import channels

    if ctx.data is None:
        raise ConfigError("method 'redundancy' needs data (--data)")
    batches = capture.take_examples(ctx.data, int(ctx.extras.get("calibration_samples", 128)))
    try:
        scores, notes = channel_scores(ctx.model, targets, batches)
    except channels.GraphUnsupported as exc:
        raise ConfigError(f"method 'redundancy' needs a model whose channels can be followed ({exc})") from None
    ctx.notes.extend(notes)  # a layer scored by magnitude instead is said in the report, not hidden
    return scores
