"""Whole structural steps: input features, layers and attention heads scored, chosen and removed.

Each step takes the run's model, its targets (picked once by run/steps.pick_targets), data, task,
settings, progress and timings, and returns a StepResult; the channels module is the `--shrink` of
neuron and filter pruning. Model knowledge (graphs, surgery, equivalence) lives in structure/; counts
and floors come from selection/policy, as for weights.
"""

from __future__ import annotations

# granularity -> the module whose `run` scores, selects and removes that structure at once
STEPS = {"input": "prunecli.removal.features", "layer": "prunecli.removal.layers", "head": "prunecli.removal.heads"}
STRUCTURAL = tuple(STEPS)


def step_for(granularity: str):
    """The step that removes this granularity's structures (imported on demand: each pulls in Keras)."""
    import importlib

    if granularity not in STEPS:
        raise ValueError(f"granularity {granularity} is not removed by a structural step")
    return importlib.import_module(STEPS[granularity]).run
