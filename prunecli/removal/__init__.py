"""Whole structural steps: input features, layers, attention heads and residual channels scored, chosen and removed;
a --target split across a Transformer's heads, feed-forward units and blocks (split.py).

Each step takes the run's model, its targets (picked once by run/steps.pick_targets), data, task,
settings, progress and timings, and returns a StepResult; the channels module is the `--shrink` of
neuron and filter pruning. Model knowledge (graphs, surgery, equivalence) lives in structure/; counts
and floors come from selection/policy, as for weights.
"""

from __future__ import annotations

from prunecli.config.fields import STRUCTURAL_KINDS

# granularity -> the module whose `run` scores, selects and removes that structure at once
STEPS = {
    "input": "prunecli.removal.features",
    "layer": "prunecli.removal.layers",
    "head": "prunecli.removal.heads",
    "hidden": "prunecli.removal.hidden",  # residual channels of KerasHub decoders; refused on other models
    "transformer": "prunecli.removal.split",  # a --target split across heads, FFN units and whole blocks
}
STRUCTURAL = STRUCTURAL_KINDS
# granularity -> the module whose `run` removes it at once on the models its `applies(model)` accepts:
# -g neuron on KerasHub decoder blocks, whose SwiGLU units span three kernels inside one layer
MODEL_STEPS = {"neuron": "prunecli.removal.ffn"}


def _model_step(granularity: str, model):
    import importlib

    if model is None or granularity not in MODEL_STEPS:
        return None
    module = importlib.import_module(MODEL_STEPS[granularity])
    return module if module.applies(model) else None


def structural(granularity: str, model=None) -> bool:
    """Whether a structural step removes this granularity on this model (input features, layers, heads
    and hidden channels always; neuron on a model with KerasHub decoder blocks)."""
    return granularity in STEPS or _model_step(granularity, model) is not None


def refusal(granularity: str, model, targets, config) -> str | None:
    """Why the structural step for this granularity cannot run on this model (its one-line error), found
    before any work (the run measures, evaluates and copies a teacher first), or None. Steps without such
    a check (no `refusal` in their module) find out in their run. A KerasHub decoder whose backbone prunecli
    cannot rebuild (decoders.rebuild_blocker) is refused for every structural step."""
    import importlib

    from prunecli.structure import decoders

    if not structural(granularity, model):
        return None
    blocker = decoders.rebuild_blocker(model) if model is not None and decoders.blocks(model) else None
    if blocker:
        return blocker
    if granularity not in STEPS:
        return None
    check = getattr(importlib.import_module(STEPS[granularity]), "refusal", None)
    return None if check is None else check(model, targets, config)


def step_for(granularity: str, model=None):
    """The step that removes this granularity's structures (imported on demand: each pulls in Keras)."""
    import importlib

    found = _model_step(granularity, model)
    if found is not None:
        return found.run
    if granularity not in STEPS:
        raise ValueError(f"granularity {granularity} is not removed by a structural step")
    return importlib.import_module(STEPS[granularity]).run
