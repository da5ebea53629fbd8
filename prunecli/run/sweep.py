"""Sensitivity sweeps: accuracy and loss after pruning at each of several sparsities.

Two kinds of curve answer two questions:
  * "all": every target pruned at the sparsity with the run's own settings (scope, granularity,
    method): how far can the whole model go? With --epochs each point is also fine-tuned briefly.
  * one curve per layer, pruning that layer alone (the classic per-layer sensitivity analysis of
    Han et al. 2015, "Learning both Weights and Connections"): which layers are fragile?

The model is loaded once; the original weights are kept in memory and written back before each
point, which is much faster than reloading the file. This module measures; the result and what is
written from it (table, Markdown, plot, JSON, CSV) are run/sweep_outputs.py's, re-exported here.
"""

from __future__ import annotations

import dataclasses
import importlib.util

from prunecli.config import PruneConfig
from prunecli.errors import ConfigError, DataError, streamed_errors_raised
from prunecli.outputs.report import Timings
from prunecli.run import steps
from prunecli.run.state import RunState
from prunecli.run.sweep_outputs import (
    ALL,
    SweepPoint,
    SweepResult,
    finite_metrics,
    plot,
    render_markdown,
    render_table,
    summary_line,
    table_rows,
    write_outputs,
)
from prunecli.runtime import keeps_global_state, quiet_tensorflow
from prunecli.structure import keras_graph

DEFAULT_SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9, 0.95)
DEFAULT_BUDGET = 0.01  # accuracy drop a sweep (and --auto) allows when --max-accuracy-drop is not given

__all__ = [
    "ALL",
    "DEFAULT_BUDGET",
    "DEFAULT_SPARSITIES",
    "Snapshot",
    "SweepPoint",
    "SweepResult",
    "check_sweepable",
    "layer_sensitivity",
    "layers_of",
    "measured_sparsity",
    "open_session",
    "parse_sparsities",
    "plot",
    "prune_point",
    "render_markdown",
    "render_table",
    "run",
    "summary_line",
    "table_rows",
    "write_outputs",
]


def parse_sparsities(text: str | list | tuple) -> tuple[float, ...]:
    """'0.1,0.5,0.9' -> (0.1, 0.5, 0.9): sorted, unique, each in (0, 1)."""
    items = text.replace(";", ",").split(",") if isinstance(text, str) else list(text)
    values = set()
    for item in items:
        if isinstance(item, str) and not item.strip():
            continue
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"invalid sparsity {item!r} in --sparsities") from None
        if not 0.0 < value < 1.0:
            raise ConfigError(f"sparsities must be in (0, 1), got {value:g}")
        values.add(value)
    if not values:
        raise ConfigError("--sparsities needs at least one value, e.g. 0.5,0.9")
    return tuple(sorted(values))


def check_sweepable(config: PruneConfig) -> None:
    """Refuse settings that have no sparsity to vary, before TensorFlow is imported."""
    if not config.data:
        raise ConfigError("sweep needs --data to measure accuracy and loss")
    if config.threshold is not None:
        raise ConfigError("sweep varies --sparsity; drop --threshold")
    if config.granularity.kind == "nm":
        raise ConfigError("N:M granularity fixes the sparsity at 1 - N/M; there is nothing to sweep")
    if config.granularity.kind in ("input", "layer"):
        raise ConfigError(f"sweep works on weight masks; granularity {config.granularity.kind} is not supported")
    if config.engine != "native":
        raise ConfigError("sweep runs on the native engine only")
    if (config.epochs > 0 or config.schedule != "oneshot") and importlib.util.find_spec(
        "prunecli.training.finetune"
    ) is None:
        raise ConfigError(
            "fine-tuning is not available in this prunecli build (prunecli/training/finetune.py is missing); "
            "sweep without --epochs/--schedule"
        )


def open_session(config: PruneConfig, progress=None) -> RunState:
    """Load model and data once, pick the targets and measure the unpruned baseline ("before")."""
    quiet_tensorflow()
    say, timings = progress or steps.silent, Timings()
    state, _sizes = steps.load(config.replace(sizes=False), say, timings)
    opened, config = steps.open_nested(state.model, config)
    state = state.after(opened).with_config(config.replace(sizes=False))
    if state.data is None:
        raise ConfigError("a sensitivity sweep needs --data")
    if state.task is None:
        raise DataError(
            f"{config.data} has inputs but no labels (y): sweep and --auto measure accuracy, which needs them"
        )
    state = state.after(steps.pick_targets(state.model, config))
    return state.after(steps.evaluate(state, "before", say, timings))


def layers_of(targets) -> dict[str, list]:
    """Targets grouped by layer, in model order: the unit a per-layer curve (and --auto) prunes."""
    grouped: dict[str, list] = {}
    for t in targets:
        grouped.setdefault(t.layer_name, []).append(t)
    return grouped


def measured_sparsity(targets) -> float:
    import numpy as np

    size = sum(t.size for t in targets)
    nonzeros = sum(int(np.count_nonzero(np.asarray(t.variable))) for t in targets)
    return 1.0 - nonzeros / size if size else 0.0


class Snapshot:
    """The original weights, restored in place between points (no file reload, no new model): the
    targets' alone, or every weight when the points change more than the targets (`for_config`)."""

    def __init__(self, model, targets, whole_model: bool):
        import numpy as np

        self.model = model
        self.whole = model.get_weights() if whole_model else None
        self.targets = {t.name: (t.variable, np.array(t.variable)) for t in targets}

    @classmethod
    def for_config(cls, model, targets, config: PruneConfig) -> Snapshot:
        """Every weight when the points fine-tune, or mask channels: those also zero their followers
        (biases, BatchNorm entries), fold a removed unit's constant into the next layer and re-estimate
        BatchNorm's statistics, which restoring only the kernels left behind for the next point."""
        changes_more = config.epochs > 0 or config.schedule != "oneshot" or config.granularity.kind == "neuron"
        return cls(model, targets, whole_model=changes_more)

    def restore(self) -> None:
        if self.whole is not None:
            self.model.set_weights(self.whole)
            return
        for variable, value in self.targets.values():
            variable.assign(value)


def fresh_data(state: RunState) -> RunState:
    """`state` with its --data read again, as a prune run reads it: the training data reshuffles at each
    pass, so a point after the first fine-tuned (and took its measured allocation's or calibration's
    examples) on the orders the earlier points left, not a prune run's (digits CNN, --epochs 1: the 0.9
    point after a 0.8 one 0.9806, `prune -s 0.9 --epochs 1` 0.9472, and the suggestion named 0.9)."""
    from prunecli.io import data as data_mod

    c = state.config
    return dataclasses.replace(state, data=data_mod.load(c.data, state.model, c.batch_size, c.val_split, c.seed))


def prune_point(
    state: RunState, config: PruneConfig, targets, timings: Timings, teacher=None
) -> tuple[dict, tuple[str, ...]]:
    """Prune `targets` of the in-memory model as `config` says (fine-tuning when it asks to, with --distill
    against `teacher`, the dense model copied before the first point), quietly: (the metrics of each
    stage, the notes). The same steps as the pipeline's one-shot / gradual branches."""
    state = dataclasses.replace(state.with_config(config), targets=tuple(targets), metrics={}, notes=())
    if config.schedule == "oneshot":
        state = steps.prune_oneshot(state, steps.silent, timings, dense_model=teacher)
        state = state.after(steps.evaluate(state, "after_pruning", steps.silent, timings))
    if config.epochs > 0 or config.schedule != "oneshot":
        state = state.after(steps.finetune(state, steps.silent, timings, teacher))
        state = state.after(steps.evaluate(state, "after_finetune", steps.silent, timings))
    return {stage: finite_metrics(values) for stage, values in state.metrics.items()}, state.notes


def layer_sensitivity(
    state: RunState, targets, sparsities, base_config: PruneConfig, snapshot: Snapshot, timings: Timings, say=None
) -> list[SweepPoint]:
    """Prune each layer alone at each sparsity, without fine-tuning; the weights are restored after each."""
    solo = base_config.replace(scope="layer", overrides=(), epochs=0, schedule="oneshot", threshold=None)
    points = []
    for layer, group in layers_of(targets).items():
        if say:
            say(f"layer {layer} alone at sparsity {', '.join(f'{v:g}' for v in sparsities)}")
        for sparsity in sparsities:
            stages, _notes = prune_point(state, solo.replace(sparsity=sparsity), group, timings)
            points.append(SweepPoint(layer, sparsity, measured_sparsity(group), stages.get("after_pruning")))
            snapshot.restore()
    return points


def _cost_line(sparsities: int, layers: int, examples: int) -> str:
    """What the sweep will run, said before it starts: per-layer curves multiply it by the layer count
    (a 24-layer U-Net's default sweep ran past 10 minutes where --no-per-layer took 34 s)."""
    runs = sparsities * (1 + layers)
    line = f"sweeping: {runs} pruned evaluations of {examples} examples ({sparsities} sparsities"
    if not layers:
        return line + ")"
    return line + f" x (all layers + {layers} layers alone); --no-per-layer runs the first {sparsities} only)"


@keeps_global_state  # the caller's logging, environment and Keras defaults, as they were
@streamed_errors_raised  # a streamed dataset's failure mid-run: the CLI's DataError, not TensorFlow's
@keras_graph.loops_compiled  # recurrent layers called eagerly run their loops compiled
def run(config: PruneConfig, sparsities=DEFAULT_SPARSITIES, per_layer: bool = True, progress=None) -> SweepResult:
    """Measure the "all" curve (and, with per_layer, one curve per layer) at each sparsity."""
    from prunecli import __version__

    check_sweepable(config)
    sparsities = parse_sparsities(sparsities)
    say = progress or (lambda _msg: None)
    # then one line per point, not one per step; a sweep writes no model and no export (its own files
    # are written by write_outputs), so the load's checks of those outputs do not apply
    state = open_session(config.replace(export=(), output=None), say)
    all_targets = list(state.targets)
    finetuning = config.epochs > 0 or config.schedule != "oneshot"
    teacher = None  # --distill: the dense model teaches each point's fine-tuning, as in prune
    if finetuning and config.distill_temperature is not None:
        from prunecli.training import distill

        distill.check_task(state.task)
        teacher = distill.teacher_copy(state.model)
    snapshot = Snapshot.for_config(state.model, all_targets, config)
    groups = layers_of(all_targets)
    result = SweepResult(
        model=str(config.model_path),
        data=str(config.data),
        method=config.method,
        scope=config.scope,
        granularity=str(config.granularity),
        epochs=config.epochs,
        schedule=config.schedule,
        distill=config.distill_temperature if teacher is not None else None,
        max_accuracy_drop=DEFAULT_BUDGET if config.max_accuracy_drop is None else config.max_accuracy_drop,
        n_eval=state.data.n_eval,
        baseline=finite_metrics(state.metrics["before"]),
        prunecli_version=__version__,
        layers=[
            {"name": name, "classes": sorted({t.layer_class for t in ts}), "params": sum(t.size for t in ts)}
            for name, ts in groups.items()
        ],
    )
    timings, notes = Timings(), []
    say(_cost_line(len(sparsities), len(groups) if per_layer else 0, state.data.n_eval))
    for i, sparsity in enumerate(sparsities):
        say(f"all layers at sparsity {sparsity:g}")
        point_state = state if i == 0 else fresh_data(state)
        point_config = config.replace(sparsity=sparsity)
        stages, point_notes = prune_point(point_state, point_config, all_targets, timings, teacher)
        notes += point_notes
        result.points.append(
            SweepPoint(
                ALL, sparsity, measured_sparsity(all_targets), stages.get("after_pruning"), stages.get("after_finetune")
            )
        )
        snapshot.restore()
    if per_layer:
        solo = config.replace(epochs=0, schedule="oneshot")  # per-layer points do not fine-tune
        snapshot = Snapshot.for_config(state.model, all_targets, solo)
        result.points += layer_sensitivity(state, all_targets, sparsities, config, snapshot, timings, say)
    if config.shrink or config.export:
        result.notes.append("a sweep measures masked models in memory; --shrink and --export are ignored")
    if finetuning and per_layer:
        result.notes.append("per-layer curves are measured right after pruning, without fine-tuning")
    result.notes += list(dict.fromkeys(list(state.notes) + notes))
    result.timings_s = {k: round(v, 3) for k, v in timings.items()}
    return result
