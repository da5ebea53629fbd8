"""The `--target` steps of a run: allocate channels so the shrunk model fits, then say what it reached.

`mask` replaces the one-shot mask step when --target is given: score (the run's method), turn the
target into a goal in the cost model's units, let selection/budget.py allocate channels across the
model against the exact costs of structure/costs.py, and apply the masks with everything that follows a
removed unit (bias, BatchNorm, depthwise filters), as the plain mask step does. Its report section
`target` says what was asked, the allocation per layer and the predicted cost; `achieved` adds what
the shrunk model (and, for size=, the written file) really has, once it exists.

`latency=F` is the same allocation as flops=, its FLOPs goal searched (selection/budget.search_latency)
by timing shrunk candidates: each one is masked on the run's model, shrunk by the run's own shrink step
and timed by the run's own timer (structure/equivalence.latency_ms, the one behind the report's
`shrink.latency_ms`) at --batch-size, then the dense weights are put back; with --export tflite each
candidate is converted to float TFLite and timed in TFLite's interpreter at batch 1 instead (Clock). `achieved` times the final
model the same way. Latency is measured on this machine, under whatever else it runs: each model is
timed TIMING_REPEATS times and the least of the medians kept, as timeit's `repeat` advises (a slower
repeat is other processes taking the cores, not the model).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunecli import scoring
from prunecli.config.target import FRACTION_KINDS, LATENCY_TOLERANCE, TOLERANCE, TargetSpec, parse_target
from prunecli.errors import ConfigError
from prunecli.outputs.report import Timings
from prunecli.results import StepResult
from prunecli.run import steps

FLOOR_PROBES = 8  # latency= on a structural step: tries at finding the fastest candidate the floors allow
FLOOR_STEP = 0.02  # ... each retry asking for this much more of the dense model's parameters
TIMING_REPEATS = 3  # latency=: each model is timed this many times and its least median kept (below)
SIZE_MARGIN = 0.005  # an HDF5 file's headers move by a few hundred bytes as widths change: size= aims this much under
TIMER_FLOOR_MS = 0.05  # latency=: a dense model faster than this is timed mostly as the call's own overhead
KEPT_ATTRS = ("kernel", "pointwise_kernel", "embeddings")  # targets whose units are a layer's output channels


def _size_model(model, suffix: str) -> tuple[int, float]:
    """(bytes of the dense model saved as `suffix`, bytes per parameter): a Keras file stores each
    weight uncompressed (the .keras zip is ZIP_STORED), so its size moves with the parameter count by
    the weights' item size; the rest (config, HDF5 headers) stays put when channels go. Saved from a
    copy, in the run's own temporary folder, so the run's model and optimizer are untouched."""
    import tempfile

    import numpy as np

    from prunecli.io import models as model_io
    from prunecli.training import distill

    copy = distill.teacher_copy(model, "--target size=")  # KerasHub tasks too: clone_model's copy lacks weights
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"dense{suffix}"
        # as the output is written: without the optimizer's slots (a compiled model's Adam moments are
        # twice its weights, and the target once counted them: 3.6 MB for a file written at 1.2 MB)
        model_io.save(copy, path, output=False)
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


def mask(state, progress, timings, latency_ms=None) -> StepResult:
    """Score, allocate against the target, mask: the one-shot mask step of a --target run.
    `latency_ms(model, inputs)` times a model for latency= (default: structure/equivalence.latency_ms)."""
    from prunecli.selection import budget, kernels
    from prunecli.structure import channels, costs, surgery

    config = state.config
    spec = parse_target(config.target)
    kind = {"size": "params", "latency": "flops"}.get(spec.kind, spec.kind)
    counted = _flops_model(state) if kind == "flops" else state.model
    try:
        cost = costs.ChannelCosts(counted, kind)
    except channels.GraphUnsupported as exc:
        raise ConfigError(f"--target needs a model whose channels can be cut ({exc})") from None
    if kind == "flops" and not cost.dense:
        from prunecli.outputs.export import open_sizes

        opened = ", ".join(map(str, open_sizes(state.model))) if state.data is None else ""
        why = f": its input sizes {opened} are open; with --data they are counted at the data's" if opened else ""
        raise ConfigError(f"--target {spec.kind}= needs a model whose multiply-adds can be counted (none were{why})")
    if spec.kind != "latency":
        goal, low, extra = goal_of(spec, state.model, cost, config)
    strategy = scoring.get(config.method)
    targets = list(state.targets)
    progress(f"scoring with {config.method}")
    with timings.phase("score"):
        ctx = steps._scoring_context(state.model, targets, state.data, state.task, config, progress)
        scores = strategy.fn(targets, ctx)
    if spec.kind == "latency":
        progress(f"timing shrunk candidates for --target {config.target}")
        with timings.phase("target_latency"):
            goal, low, extra = latency_goal(state, spec, cost, scores, strategy.level, progress, latency_ms)
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
        "unit": _requested_unit(spec),  # of requested, achieved
        "counted": "parameters" if kind == "params" else "multiply-adds per example",  # of dense, goal, predicted
        "tolerance": LATENCY_TOLERANCE if spec.kind == "latency" else TOLERANCE,
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
        notes=tuple(ctx.notes) + tuple(masks.notes),
        sections={"selection": {"path": masks.selection_path}, "target": section},
    )


@dataclass(frozen=True)
class _DenseCount:
    """goal_of's view of a cost model when a structural step counts its own: the dense parameters."""

    dense: int


def remove_structure(state, progress, timings, latency_ms=None) -> StepResult:
    """A structural step (-g head, -g hidden, -g neuron on KerasHub decoders, -g transformer) to
    --target. params= and flops= the step fits itself (its own selection at the sparsity that meets
    them); size= becomes the parameter fraction whose file has that size (goal_of, as for channels);
    latency= the parameter fraction whose shrunk model runs in time, searched as for channels
    (budget.search_latency), each candidate the step run on a copy of the model, shrunk and timed.
    Removing heads, units or channels in score order, a parameter fraction fixes which go, whichever
    count the step ranks them by. The report's `target` section says what was asked and the fraction
    it was fitted as; `achieved` adds what the final model (or the written file) has."""
    from prunecli.removal import units

    config = state.config
    spec = parse_target(config.target)
    if spec.kind in FRACTION_KINDS:
        return steps.remove_structure(state, progress, timings)
    dense = int(state.model.count_params())
    if spec.kind == "size":
        goal, _low, extra = goal_of(spec, state.model, _DenseCount(dense), config)
        fraction = goal / dense
    else:
        progress(f"timing shrunk candidates for --target {config.target}")
        with timings.phase("target_latency"):
            fraction, extra = _structural_latency(state, spec, dense, progress, latency_ms)
    fitted = f"params={fraction!r}"
    try:
        result = steps.remove_structure(state.with_config(config.replace(target=fitted)), progress, timings)
    except units.TargetUnreachable as floors:  # size= only: latency= searched down from the floors' model
        least = int(extra["dense_bytes"] + extra["bytes_per_param"] * (floors.least - floors.dense))
        raise ConfigError(
            f"--target {spec} cannot be met: with every unit the floors allow removed, the file would still be"
            f" about {least:,} bytes"
        ) from None
    kept = int(result.model.count_params()) if result.structure_changed else dense
    section = {
        **result.sections.get("target", {}),  # what the step fitted: its units, sparsity or split, goal
        "kind": spec.kind,
        "requested": spec.value,
        "unit": _requested_unit(spec),
        "counted": "parameters",
        "tolerance": LATENCY_TOLERANCE if spec.kind == "latency" else TOLERANCE,
        "fitted_as": fitted,
        "dense": dense,
        "predicted": kept,
        "predicted_fraction": kept / dense,
        **extra,
    }
    if spec.kind == "size":
        section["predicted_bytes"] = int(extra["dense_bytes"] + extra["bytes_per_param"] * (kept - dense))
    return dataclasses.replace(result, sections={**result.sections, "target": section})


def _structural_latency(state, spec: TargetSpec, dense: int, progress, latency_ms=None) -> tuple[float, dict]:
    """(parameter fraction, the section's `latency` entry) for latency= on a structural step: the dense
    model timed, then each candidate fraction the search asks for run through the step on a copy of the
    model (its masks, shrink and check as the real run), the copy's shrunk model timed. The fastest
    candidate is the floors' (the step says what they leave when asked for less)."""
    from prunecli.removal import units
    from prunecli.selection import budget
    from prunecli.training import distill

    config, model = state.config, state.model
    clock = clock_for(config, latency_ms)
    inputs, batch, source = timing_inputs(model, state)
    batch = clock.batch or batch
    dense_ms = _timed(clock.time, model, inputs)
    goal_ms = _goal_ms(spec, dense_ms, batch)
    timed: dict[int, tuple[int, float]] = {}

    def measure(fraction: float) -> tuple[int, float]:
        copy = distill.teacher_copy(model, f"--target {spec}")
        copy.trainable = True  # the step's rebuilt layers take the copy's trainability
        run_state = dataclasses.replace(state, model=copy).after(steps.pick_targets(copy, config))
        run_state = run_state.with_config(config.replace(target=f"params={fraction!r}"))
        result = steps.remove_structure(run_state, steps.silent, Timings())
        small = result.model if result.structure_changed else copy
        cost = int(small.count_params())
        if cost not in timed:
            progress(f"--target {spec}: timing candidate {len(timed) + 1} at {cost / dense:.3f} of the parameters")
            timed[cost] = (cost, _timed(clock.time, small, inputs))
        return timed[cost]

    lowest = 1.0 / dense  # one parameter: below any floor, so the step says what the floors leave
    for attempt in range(FLOOR_PROBES):
        try:
            measure(lowest)
            break
        except units.TargetUnreachable as floors:
            if attempt == FLOOR_PROBES - 1:
                raise ConfigError(
                    f"--target {spec} cannot be searched: the step built no model near what its floors leave"
                    f" ({floors.least:,} of {floors.dense:,} parameters) to time as the fastest candidate"
                ) from None
            # the floors' own count; -g transformer's splits may not reach it exactly (each share of a
            # smaller removal is smaller), so a repeated refusal moves up FLOOR_STEP of the dense model
            lowest = max((floors.least + 0.5) / floors.dense, lowest + FLOOR_STEP if attempt else 0.0)
    found = budget.search_latency(
        measure,
        budget.Timed(1.0, dense, dense_ms),
        lowest,
        goal_ms,
        goal_ms * (1.0 - LATENCY_TOLERANCE),
        str(spec),
        _where(batch, clock),
        units="unit",
    )
    entry = {
        "batch": batch,
        "inputs": source,
        "dense_ms": dense_ms,
        "dense_ms_after_search": _timed(clock.time, model, inputs),
        "goal_ms": goal_ms,
        "chosen_ms": found.chosen.ms,
        "chosen_params_fraction": found.chosen.cost / dense,
        "timed": len(timed),
        "candidates": [
            {"params_fraction": round(t.cost / dense, 6), "latency_ms": round(t.ms, 4)} for t in found.timed
        ],
        "measured": clock.measured,
    }
    return (found.chosen.cost + 0.5) / dense, {"latency": entry}


def _where(batch: int, clock: Clock) -> str:
    """Where a latency was measured, for messages; with the Keras clock on a TensorFlow whose oneDNN
    kernels are off, what turns them on (without them, removing channels hardly speeds a CNN up)."""
    from prunecli.runtime import onednn_enabled

    where = f"at batch {batch} on this machine"
    if clock.batch is None and onednn_enabled() is False:
        where += (
            " (TensorFlow's oneDNN kernels are off on this CPU, and without them a convolution's time hardly"
            " falls with its channels: TF_ENABLE_ONEDNN_OPTS=1 turns them on)"
        )
    return where


def _goal_ms(spec: TargetSpec, dense_ms: float, batch: int) -> float:
    """latency= as milliseconds: a fraction of the dense model's time, or the time asked for (refused
    in one line when the dense model already runs within it)."""
    if spec.absolute and spec.value >= dense_ms:
        raise ConfigError(
            f"--target {spec}: the dense model already takes {dense_ms:.3g} ms at batch {batch} on this machine"
        )
    return spec.value if spec.absolute else spec.value * dense_ms


def _requested_unit(spec: TargetSpec) -> str:
    if spec.kind == "size":
        return "bytes"
    if spec.kind == "latency":
        return "ms" if spec.absolute else "fraction of the dense model's latency"
    return "fraction of the dense model"


def timing_inputs(model, state) -> tuple[Any, int, str]:
    """What latency= times a model on: --batch-size rows (fewer for huge inputs, as the shrink step's
    timing) of the run's data, else seeded stand-ins; the batch and where the rows came from."""
    from prunecli.removal.channels import data_sample
    from prunecli.structure import equivalence

    data_x = data_sample(state.data)
    batch = equivalence.fitting_batch(model, state.config.batch_size, data_x)
    inputs = equivalence.example_inputs(model, batch, data_x, state.config.seed)
    return inputs, batch, "data" if data_x is not None else "random"


def _timed(timer, model, inputs) -> float:
    """The least of TIMING_REPEATS calls of the timer (each a median of timed passes), in ms."""
    return min(float(timer(model, inputs)) for _ in range(TIMING_REPEATS))


@dataclass(frozen=True)
class Clock:
    """How latency= times a model: `time(model, inputs)` in ms, at `batch` rows (None: the run's
    timing batch, --batch-size), and the report's words for it."""

    time: Callable[[Any, Any], float]
    batch: int | None
    measured: str


def clock_for(config, latency_ms=None) -> Clock:
    """The Keras forward pass at --batch-size; with --export tflite, the TFLite interpreter at batch 1,
    where the exported file will run; `latency_ms` (a test's timer) replaces the Keras one."""
    from prunecli.structure import equivalence

    if latency_ms is None and "tflite" in config.export:
        return Clock(
            TfliteTimer(),
            1,
            f"the float TFLite conversion in TFLite's interpreter, batch 1, one thread, on this machine: the least"
            f" of {TIMING_REPEATS} medians of timed calls after warm-up",
        )
    return Clock(
        latency_ms or equivalence.latency_ms,
        None,
        f"Keras forward pass on this machine: the least of {TIMING_REPEATS} medians of timed traced passes after"
        " warm-up",
    )


class TfliteTimer:
    """Times a model as --export tflite deploys it: converted to float TFLite (once per model: the
    flatbuffer is kept while the model lives) and run at batch 1 in TFLite's interpreter."""

    def __init__(self) -> None:
        import weakref

        self._converted: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def __call__(self, model, inputs) -> float:
        from prunecli.outputs import export

        content = self._converted.get(model)
        if content is None:
            content = self._convert(model)
            self._converted[model] = content
        names = [str(getattr(t, "name", "")) for t in model.inputs]
        if isinstance(inputs, dict):
            samples = [inputs[name] for name in names] if set(names) <= set(inputs) else list(inputs.values())
        else:
            samples = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        ms = export.tflite_latency_ms(content, samples, names)
        if ms is None:
            raise ConfigError("--target latency with --export tflite: TFLite's interpreter could not run the model")
        return ms

    @staticmethod
    def _convert(model) -> bytes:
        import tempfile

        from prunecli.outputs import export

        with tempfile.TemporaryDirectory(prefix="prunecli-latency-") as folder:
            saved = Path(folder) / "savedmodel"
            export.write_savedmodel(export.for_tflite(model), saved)  # recurrent layers timed as exported
            content, encoding = export.convert_tflite(saved, None, try_sparse=False)
        if encoding["ops"] != export.BUILTIN_OPS:
            raise ConfigError(
                "--target latency with --export tflite: the model needs select TensorFlow ops, which the"
                " interpreter here cannot run to time it"
            )
        return content


def latency_goal(state, spec: TargetSpec, cost, scores, level: str, progress, latency_ms=None):
    """(FLOPs goal, bottom of its band, the section's `latency` entry) for latency=: time the dense
    model, then let budget.search_latency pick the FLOPs goal whose shrunk candidate runs at or under
    the target. A candidate is the run's model masked for that goal, shrunk by the shrink step and timed;
    the dense weights are restored after each, and an allocation already timed is not timed again."""
    from prunecli.removal import channels as shrink_step
    from prunecli.selection import budget, kernels
    from prunecli.structure import channels, surgery

    config, model, targets = state.config, state.model, list(state.targets)
    clock = clock_for(config, latency_ms)
    timer = clock.time
    inputs, batch, source = timing_inputs(model, state)
    batch = clock.batch or batch
    dense_ms = _timed(timer, model, inputs)
    goal_ms = _goal_ms(spec, dense_ms, batch)
    low_ms = goal_ms * (1.0 - LATENCY_TOLERANCE)
    dense_weights = model.get_weights()
    timed: dict[tuple, tuple[int, float]] = {}

    def measure(fraction: float) -> tuple[int, float]:
        goal = _flops_goal(fraction, cost.dense)
        masks, found = budget.select(targets, scores, level, config, model, cost, goal, str(spec))
        key = tuple(sorted((k, v[0]) for k, v in found.counts.items()))
        if key in timed:
            return timed[key]
        progress(f"--target {spec}: timing candidate {len(timed) + 1} at {found.cost / cost.dense:.3f} of the FLOPs")
        try:
            kernels.apply_masks([t.variable for t in targets], [masks.masks[t.name] for t in targets])
            surgery.fold_dead_constants(model, targets, masks.masks)
            channels.apply_follower_masks(channels.follower_masks(model, targets, masks.masks))
            result = shrink_step.shrink(
                model, targets, None, state.data, config.seed, steps.silent, Timings(), measure_latency=False
            )
            if result.model is None:
                why = result.notes[0] if result.notes else "shrink removed nothing"
                raise ConfigError(f"--target {spec} needs a model --shrink can make smaller ({why})")
            ms = _timed(timer, result.model, inputs)
        finally:
            model.set_weights(dense_weights)
        timed[key] = (found.cost, ms)
        return timed[key]

    lowest = budget.lowest_cost(targets, scores, level, config, model, cost)
    where = _where(batch, clock)
    dense = budget.Timed(1.0, cost.dense, dense_ms)
    found = budget.search_latency(measure, dense, lowest / cost.dense, goal_ms, low_ms, str(spec), where)
    dense_after = _timed(timer, model, inputs)  # the dense model again: how far the machine's load moved
    entry = {
        "batch": batch,
        "inputs": source,
        "dense_ms": dense_ms,
        "dense_ms_after_search": dense_after,
        "goal_ms": goal_ms,
        "chosen_ms": found.chosen.ms,
        "chosen_flops_fraction": found.chosen.cost / cost.dense,
        "timed": len(timed),  # candidates masked, shrunk and timed (the dense model is timed too, not counted)
        "candidates": [
            {"flops_fraction": round(t.cost / cost.dense, 6), "latency_ms": round(t.ms, 4)} for t in found.timed
        ],
        "measured": clock.measured,
    }
    goal = _flops_goal(found.chosen.fraction, cost.dense)
    return goal, goal - int(TOLERANCE * goal), {"latency": entry}


def drift_note(entry: dict) -> str | None:
    """A note when the dense model's time moved more than the tolerance during the search: the load
    of this machine changed under the timings, and the latency reached is approximate."""
    before, after = entry["dense_ms"], entry["dense_ms_after_search"]
    if abs(after / before - 1.0) <= LATENCY_TOLERANCE:
        return None
    return (
        f"--target latency: the dense model timed {before:.3g} ms before the search and {after:.3g} ms after it;"
        f" this machine's load moved the timings by more than {LATENCY_TOLERANCE:.0%}, so the latency reached is"
        " approximate"
    )


def _flops_goal(fraction: float, dense: int) -> int:
    """A FLOPs fraction as a goal in multiply-adds (rounded, so the floors' own fraction gives them back)."""
    return max(round(fraction * dense), 1)


def kept_per_layer(targets, masks) -> dict[str, dict[str, int]]:
    """{layer: {"before": channels, "after": channels kept}} for the layers whose output channels are
    pruned; a recurrent cell's channels are its units (a unit is kept while any of its gate columns is)."""
    from prunecli.selection.budget import kept_units

    return {
        t.layer_name: {"before": t.units // t.gates, "after": kept_units(t, masks.masks[t.name], t.gates)}
        for t in targets
        if t.attr in KEPT_ATTRS and t.name in masks.masks
    }


def counted_flops(state) -> dict:
    """The report's multiply-adds per example (flops.count) of the state's model: its own count, or,
    where open input sizes leave nothing counted and --data gives sizes, the count at an example's sizes
    as --target flops= takes it (`_flops_model`; `at_data_sizes` True), so the report's `flops` section
    and its `target` section count the same model (PNet's said "unknown" beside a target it met).
    Non-zeros from the state's census of its weights (`state.read`), where it has one."""
    from prunecli.errors import PruneCliError
    from prunecli.structure import flops

    found = flops.count(state.model, state.config.seq_len, state.read)
    if found["total"] is not None or state.data is None:
        return found
    try:
        fixed = _flops_model(state)
    except (PruneCliError, ValueError, TypeError):  # no twin at fixed sizes: the count stays unknown
        return found
    if fixed is state.model:
        return found
    return {**flops.count(fixed, state.config.seq_len, state.read), "at_data_sizes": True}


def _flops_model(state):
    """The model whose multiply-adds --target flops= counts: the model itself, or, where its input sizes
    are open and --data gives some, its twin at the data's sizes (MTCNN's PNet, bench/ZOO.md: an open image
    size left every convolution uncounted, and the target was refused with the data at hand)."""
    from prunecli.outputs.export import at_data_sizes

    return at_data_sizes(state.model, state.data, state.config.seed) or state.model


def achieved(state, written: Path | None = None, latency_ms=None) -> StepResult:
    """The `target` section completed with what the final model has (parameters, or multiply-adds as
    flops.py counts them; for size=, the bytes of the written file; for latency=, its time measured now,
    as the search timed its candidates), whether that is within the tolerance under the request, and a
    one-line note saying so."""
    from prunecli.structure import flops

    section = dict(state.sections.get("target") or {})
    if not section:
        return StepResult()
    kind, dense = section["kind"], section["dense"]
    if kind == "latency":
        return _achieved_latency(state, section, latency_ms)
    if kind == "params":
        from prunecli.outputs.report import whole_counts

        value = whole_counts(state.model)[0]  # a quantized model's scales are not parameters of the float model
    elif kind == "flops":
        value = flops.count(_flops_model(state), state.config.seq_len)["total"]
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
    if not within and section.get("band_missed"):  # a structural step found no set of its units in the band
        note += f" ({section['band_missed']})"
    return StepResult(sections={"target": section}, notes=(note,))


def _achieved_latency(state, section: dict, latency_ms=None) -> StepResult:
    """latency=: the final model timed as the candidates were (same inputs, batch and timer)."""
    clock = clock_for(state.config, latency_ms)
    entry = dict(section["latency"])
    inputs, batch, _source = timing_inputs(state.model, state)
    batch = clock.batch or batch
    ms = _timed(clock.time, state.model, inputs)
    fraction = ms / entry["dense_ms"]
    absolute = section["unit"] == "ms"
    within = 1.0 - LATENCY_TOLERANCE - 1e-12 <= ms / entry["goal_ms"] <= 1.0 + 1e-12
    entry["final_ms"] = ms
    section.update(latency=entry, achieved=ms if absolute else fraction, achieved_ms=ms, within_tolerance=within)
    requested = f"{section['requested']:g} ms" if absolute else f"{section['requested']:g}"
    note = (
        f"--target latency: achieved {ms:.3g} ms, {fraction:.3f} of the dense model's {entry['dense_ms']:.3g} ms,"
        f" for {requested} requested, {'within' if within else 'outside'} {LATENCY_TOLERANCE:.0%} under it"
        f" ({'TFLite' if clock.batch else 'Keras'} at batch {batch}, measured on this machine;"
        f" {entry['timed']} candidates timed)"
    )
    notes = [note, drift_note(entry)]
    if entry["dense_ms"] < TIMER_FLOOR_MS:  # an audit's 6 us model: 0.68 here, 1.03 in plan, slower in TFLite
        notes.append(
            f"--target latency: the dense model runs in {entry['dense_ms'] * 1000:.3g} us, where a call's own"
            " overhead and the timer's noise outweigh the model's work: the ratio reached is approximate (time a"
            " larger batch with --batch-size, or aim params= or flops= at a model this small)"
        )
    return StepResult(sections={"target": section}, notes=tuple(n for n in notes if n))


def _unit(kind: str) -> str:
    return "parameters" if kind == "params" else "multiply-adds"
