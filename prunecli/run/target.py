"""The `--target` steps of a run: allocate channels so the shrunk model fits, then say what it reached.

`mask` replaces the one-shot mask step when --target is given: score (the run's method), turn the
target into a goal in the cost model's units, let selection/budget.py allocate channels across the
model against the exact costs of structure/costs.py, and apply the masks with everything that follows a
removed unit (bias, BatchNorm, depthwise filters), as the plain mask step does. Its report section
`target` says what was asked, the allocation per layer and the predicted cost; `achieved` adds what
the shrunk model (and, for size=, the written file) really has, once it exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunecli import scoring
from prunecli.config.target import FRACTION_KINDS, TOLERANCE, TargetSpec, parse_target
from prunecli.errors import ConfigError
from prunecli.results import StepResult
from prunecli.run import steps

SIZE_MARGIN = 0.005  # an HDF5 file's headers move by a few hundred bytes as widths change: size= aims this much under
KEPT_ATTRS = ("kernel", "pointwise_kernel")  # targets whose units are a layer's output channels


def _size_model(model, suffix: str) -> tuple[int, float]:
    """(bytes of the dense model saved as `suffix`, bytes per parameter): a Keras file stores each
    weight uncompressed (the .keras zip is ZIP_STORED), so its size moves with the parameter count by
    the weights' item size; the rest (config, HDF5 headers) stays put when channels go. Saved from a
    copy, in the run's own temporary folder, so the run's model and optimizer are untouched."""
    import tempfile

    import keras
    import numpy as np

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"dense{suffix}"
        copy.save(path)
        size = path.stat().st_size
    elements = sum(int(np.prod(w.shape)) for w in model.weights)
    nbytes = sum(int(np.prod(w.shape)) * np.dtype(w.dtype).itemsize for w in model.weights)
    return size, nbytes / max(elements, 1)


def _suffix(config) -> str:
    suffix = Path(str(config.output or config.model_path)).suffix.lower()
    return suffix if suffix in (".keras", ".h5", ".hdf5") else ".keras"


def goal_of(spec: TargetSpec, model, cost, config) -> tuple[int, int, dict[str, Any]]:
    """The target as a goal and the bottom of its band in the cost model's units, and what the section
    records about it. A file size becomes a parameter count through the dense file's size and the
    weights' item size."""
    if spec.kind in FRACTION_KINDS:
        goal = int(spec.value * cost.dense)
        return goal, goal - int(TOLERANCE * goal), {}
    size, per_param = _size_model(model, _suffix(config))

    def params_for(nbytes: float) -> int:
        return int((nbytes - size) / per_param) + cost.dense

    if spec.value >= size:
        raise ConfigError(f"--target size={int(spec.value)}B: the dense model's file is already {size:,} bytes")
    params = params_for(spec.value * (1 - SIZE_MARGIN))
    if params <= 0:
        raise ConfigError(
            f"--target size={int(spec.value)}B cannot be met: the dense file is {size:,} bytes, of which "
            f"{size - int(per_param * cost.dense):,} are not weights"
        )
    low = params_for(spec.value * (1 - TOLERANCE)) + 1
    return params, min(low, params), {"dense_bytes": size, "bytes_per_param": per_param}


def mask(state, progress, timings) -> StepResult:
    """Score, allocate against the target, mask: the one-shot mask step of a --target run."""
    from prunecli.selection import budget, kernels
    from prunecli.structure import channels, costs, surgery

    config = state.config
    spec = parse_target(config.target)
    kind = "params" if spec.kind == "size" else spec.kind
    try:
        cost = costs.ChannelCosts(state.model, kind)
    except channels.GraphUnsupported as exc:
        raise ConfigError(f"--target needs a model whose channels can be cut ({exc})") from None
    if kind == "flops" and not cost.dense:
        raise ConfigError("--target flops= needs a model whose multiply-adds can be counted (none were)")
    goal, low, extra = goal_of(spec, state.model, cost, config)
    strategy = scoring.get(config.method)
    targets = list(state.targets)
    progress(f"scoring with {config.method}")
    with timings.phase("score"):
        ctx = steps._scoring_context(state.model, targets, state.data, state.task, config, progress)
        scores = strategy.fn(targets, ctx)
    progress(f"allocating channels for --target {config.target}")
    with timings.phase("mask"):
        masks, found = budget.select(
            targets, scores, strategy.level, config, state.model, cost, goal, config.target, low
        )
        kernels.apply_masks([t.variable for t in targets], [masks.masks[t.name] for t in targets])
        masks.notes += surgery.fold_dead_constants(state.model, targets, masks.masks)
        masks.followers = channels.follower_masks(state.model, targets, masks.masks)
        channels.apply_follower_masks(masks.followers)
    section = {
        "kind": spec.kind,
        "requested": spec.value,
        "unit": "bytes" if spec.kind == "size" else "fraction of the dense model",  # of requested, achieved
        "counted": "parameters" if kind == "params" else "multiply-adds per example",  # of dense, goal, predicted
        "tolerance": TOLERANCE,
        "normalize": config.normalize,
        "round_to": config.round_to,
        "dense": cost.dense,
        "goal": goal,
        "predicted": found.cost,
        "predicted_fraction": found.cost / cost.dense if cost.dense else None,
        "lowest_fraction": found.lowest / cost.dense if cost.dense else None,
        "layers": kept_per_layer(targets, masks),
        **extra,
    }
    if spec.kind == "size":
        section["predicted_bytes"] = int(extra["dense_bytes"] + extra["bytes_per_param"] * (found.cost - cost.dense))
    return StepResult(
        masks=masks,
        notes=tuple(masks.notes),
        sections={"selection": {"path": masks.selection_path}, "target": section},
    )


def kept_per_layer(targets, masks) -> dict[str, dict[str, int]]:
    """{layer: {"before": channels, "after": channels kept}} for the layers whose output channels are pruned."""
    from prunecli.selection.budget import kept_units

    return {
        t.layer_name: {"before": t.units, "after": kept_units(t, masks.masks[t.name])}
        for t in targets
        if t.attr in KEPT_ATTRS and t.name in masks.masks
    }


def achieved(state, written: Path | None = None) -> StepResult:
    """The `target` section completed with what the final model has (parameters, or multiply-adds as
    flops.py counts them; for size=, the bytes of the written file), whether that is within the
    tolerance under the request, and a one-line note saying so."""
    from prunecli.structure import flops

    section = dict(state.sections.get("target") or {})
    if not section:
        return StepResult()
    kind, dense = section["kind"], section["dense"]
    if kind == "params":
        value = int(state.model.count_params())
    elif kind == "flops":
        value = flops.count(state.model)["total"]
    else:
        value = written.stat().st_size if written is not None and Path(written).is_file() else None
    if value is None:
        note = f"--target {kind}: the achieved size is known once the model is written"
        return StepResult(sections={"target": section}, notes=(note,))
    requested = section["requested"]
    if kind == "size":
        fraction, reached = None, value / requested
        section.update(achieved=value, achieved_bytes=value)
    else:
        fraction = value / dense if dense else None
        reached = fraction / requested if fraction is not None else None
        section.update(achieved=fraction, achieved_value=value)
    within = reached is not None and 1.0 - TOLERANCE - 1e-12 <= reached <= 1.0 + 1e-12
    section["within_tolerance"] = within
    if kind == "size":
        what = f"{value:,} bytes for {int(requested):,} requested"
    else:
        what = f"{fraction:.4f} of the dense model's {_unit(kind)} ({value:,} of {dense:,}) for {requested:g} requested"
    verdict = "within" if within else "outside"
    note = f"--target {kind}: achieved {what}, {verdict} {TOLERANCE:.0%} under the request"
    return StepResult(sections={"target": section}, notes=(note,))


def _unit(kind: str) -> str:
    return "parameters" if kind == "params" else "multiply-adds"
