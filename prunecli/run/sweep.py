"""Sensitivity sweeps: accuracy and loss after pruning at each of several sparsities.

Two kinds of curve answer two questions:
  * "all": every target pruned at the sparsity with the run's own settings (scope, granularity,
    method): how far can the whole model go? With --epochs each point is also fine-tuned briefly.
  * one curve per layer, pruning that layer alone (the classic per-layer sensitivity analysis of
    Han et al. 2015, "Learning both Weights and Connections"): which layers are fragile?

The model is loaded once; the original weights are kept in memory and written back before each
point, which is much faster than reloading the file.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunecli.config import PruneConfig
from prunecli.errors import ConfigError
from prunecli.outputs.report import Timings
from prunecli.run import steps
from prunecli.run.state import RunState
from prunecli.runtime import quiet_tensorflow

DEFAULT_SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.9, 0.95)
DEFAULT_BUDGET = 0.01
SCHEMA_VERSION = 1
ALL = "all"  # the curve name of "every target pruned together"
LIMIT_ROW = "max within budget"


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


@dataclass
class SweepPoint:
    curve: str  # ALL, or a layer name
    sparsity: float  # requested
    measured_sparsity: float  # zeros / size over the weights this curve prunes
    after_pruning: dict | None = None  # {"loss": .., "accuracy": ..}
    after_finetune: dict | None = None

    @property
    def final(self) -> dict:
        return self.after_finetune or self.after_pruning or {}


@dataclass
class SweepResult:
    model: str
    data: str
    method: str
    scope: str
    granularity: str
    epochs: int
    max_accuracy_drop: float
    n_eval: int
    baseline: dict
    layers: list[dict]  # {"name", "classes", "params"}, in model order
    points: list[SweepPoint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)
    prunecli_version: str = ""

    def drop(self, point: SweepPoint) -> float | None:
        """Accuracy lost against the unpruned model (positive = worse); None without an accuracy metric."""
        before, after = self.baseline.get("accuracy"), point.final.get("accuracy")
        return None if before is None or after is None else before - after

    def curve(self, name: str) -> list[SweepPoint]:
        return sorted((p for p in self.points if p.curve == name), key=lambda p: p.sparsity)

    def max_within_budget(self, name: str) -> float | None:
        """The largest swept sparsity such that it and every smaller one stay within the accuracy budget.

        0.0 when even the smallest point is over budget; None when there is no accuracy metric.
        """
        best = 0.0
        for point in self.curve(name):
            drop = self.drop(point)
            if drop is None:
                return None
            if drop > self.max_accuracy_drop + 1e-9:
                break
            best = point.sparsity
        return best

    @property
    def suggested_sparsity(self) -> float | None:
        return self.max_within_budget(ALL)

    def to_dict(self) -> dict[str, Any]:
        points = []
        for p in self.points:
            d = {
                "curve": p.curve,
                "sparsity": p.sparsity,
                "measured_sparsity": round(p.measured_sparsity, 6),
                "after_pruning": p.after_pruning,
                "accuracy_drop": _finite(self.drop(p)),
            }
            if p.after_finetune is not None:
                d["after_finetune"] = p.after_finetune
            points.append(d)
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "sweep",
            "prunecli_version": self.prunecli_version,
            "model": self.model,
            "data": self.data,
            "n_eval": self.n_eval,
            "method": self.method,
            "scope": self.scope,
            "granularity": self.granularity,
            "epochs": self.epochs,
            "max_accuracy_drop": self.max_accuracy_drop,
            "baseline": self.baseline,
            "layers": self.layers,
            "points": points,
            "suggested_sparsity": self.suggested_sparsity,
            "layer_max_sparsity": {layer["name"]: self.max_within_budget(layer["name"]) for layer in self.layers},
            "notes": self.notes,
            "timings_s": self.timings_s,
        }


def _finite(x):
    return None if x is None or not math.isfinite(x) else x


def _clean(metrics: dict | None) -> dict | None:
    """Metrics with non-finite values as None, so the JSON stays standard."""
    return None if metrics is None else {k: _finite(float(v)) for k, v in metrics.items()}


# ---------------------------------------------------------------------------------------------
# measuring


def open_session(config: PruneConfig, progress=None) -> RunState:
    """Load model and data once, pick the targets and measure the unpruned baseline ("before")."""
    quiet_tensorflow()
    say, timings = progress or steps.silent, Timings()
    state, _sizes = steps.load(config.replace(sizes=False), say, timings)
    if state.data is None:
        raise ConfigError("a sensitivity sweep needs --data")
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
    """The original weights, restored in place between points (no file reload, no new model)."""

    def __init__(self, model, targets, whole_model: bool):
        import numpy as np

        self.model = model
        self.whole = model.get_weights() if whole_model else None
        self.targets = {t.name: (t.variable, np.array(t.variable)) for t in targets}

    def restore(self) -> None:
        if self.whole is not None:
            self.model.set_weights(self.whole)
            return
        for variable, value in self.targets.values():
            variable.assign(value)


def prune_point(state: RunState, config: PruneConfig, targets, timings: Timings) -> tuple[dict, tuple[str, ...]]:
    """Prune `targets` of the in-memory model as `config` says (fine-tuning when it asks to), quietly:
    (the metrics of each stage, the notes). The same steps as the pipeline's one-shot / gradual branches."""
    state = dataclasses.replace(state.with_config(config), targets=tuple(targets), metrics={}, notes=())
    if config.schedule == "oneshot":
        state = state.after(steps.mask(state, steps.silent, timings))
        state = state.after(steps.evaluate(state, "after_pruning", steps.silent, timings))
    if config.epochs > 0 or config.schedule != "oneshot":
        state = state.after(steps.finetune(state, steps.silent, timings))
        state = state.after(steps.evaluate(state, "after_finetune", steps.silent, timings))
    return {stage: _clean(values) for stage, values in state.metrics.items()}, state.notes


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


def run(config: PruneConfig, sparsities=DEFAULT_SPARSITIES, per_layer: bool = True, progress=None) -> SweepResult:
    """Measure the "all" curve (and, with per_layer, one curve per layer) at each sparsity."""
    from prunecli import __version__

    check_sweepable(config)
    sparsities = parse_sparsities(sparsities)
    say = progress or (lambda _msg: None)
    state = open_session(config, say)  # then one line per point, not one per step
    all_targets = list(state.targets)
    finetuning = config.epochs > 0 or config.schedule != "oneshot"
    snapshot = Snapshot(state.model, all_targets, whole_model=finetuning)
    groups = layers_of(all_targets)
    result = SweepResult(
        model=str(config.model_path),
        data=str(config.data),
        method=config.method,
        scope=config.scope,
        granularity=str(config.granularity),
        epochs=config.epochs,
        max_accuracy_drop=DEFAULT_BUDGET if config.max_accuracy_drop is None else config.max_accuracy_drop,
        n_eval=state.data.n_eval,
        baseline=_clean(state.metrics["before"]),
        prunecli_version=__version__,
        layers=[
            {"name": name, "classes": sorted({t.layer_class for t in ts}), "params": sum(t.size for t in ts)}
            for name, ts in groups.items()
        ],
    )
    timings, notes = Timings(), []
    for sparsity in sparsities:
        say(f"all layers at sparsity {sparsity:g}")
        stages, point_notes = prune_point(state, config.replace(sparsity=sparsity), all_targets, timings)
        notes += point_notes
        result.points.append(
            SweepPoint(
                ALL, sparsity, measured_sparsity(all_targets), stages.get("after_pruning"), stages.get("after_finetune")
            )
        )
        snapshot.restore()
    if per_layer:
        snapshot = Snapshot(state.model, all_targets, whole_model=False)
        result.points += layer_sensitivity(state, all_targets, sparsities, config, snapshot, timings, say)
    if config.shrink or config.export:
        result.notes.append("a sweep measures masked models in memory; --shrink and --export are ignored")
    if finetuning and per_layer:
        result.notes.append("per-layer curves are measured right after pruning, without fine-tuning")
    result.notes += list(dict.fromkeys(list(state.notes) + notes))
    result.timings_s = {k: round(v, 3) for k, v in timings.items()}
    return result


# ---------------------------------------------------------------------------------------------
# rendering


def _fmt_acc(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt_sparsity(value) -> str:
    return "-" if value is None else f"{value:g}"


def _metric(result: SweepResult) -> str:
    return "accuracy" if result.baseline.get("accuracy") is not None else "loss"


def table_rows(result: SweepResult) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """Header, cells and an over-budget flag per cell: one row per sparsity, the "all" curve first
    (after pruning, [after fine-tuning], the drop of the last stage), then one column per layer.
    Shared by the terminal table and the Markdown."""
    metric = _metric(result)
    finetuned = any(p.after_finetune for p in result.points)
    per_layer = [layer["name"] for layer in result.layers if result.curve(layer["name"])]
    header = ["sparsity", f"all: {metric}", "all: loss"]
    if finetuned:
        header.append(f"all: {metric} fine-tuned")
    if metric == "accuracy":
        header.append("all: drop")
    header += [f"{name}: {metric}" for name in per_layer]
    lookup = {(p.curve, p.sparsity): p for p in result.points}

    def over(point) -> bool:
        return point is not None and (result.drop(point) or 0.0) > result.max_accuracy_drop + 1e-9

    rows, flags = [], []
    for sparsity in sorted({p.sparsity for p in result.points}):
        p = lookup.get((ALL, sparsity))
        pruned = (p.after_pruning or {}) if p else {}
        row = [f"{sparsity:g}", _fmt_acc(pruned.get(metric)), _fmt_acc(pruned.get("loss"))]
        bad = [False, over(p) and not finetuned, False]
        if finetuned:
            row.append(_fmt_acc((p.after_finetune or {}).get(metric) if p else None))
            bad.append(over(p))
        if metric == "accuracy":
            drop = None if p is None else result.drop(p)
            row.append("-" if drop is None else f"{drop:+.4f}")
            bad.append(over(p))
        for name in per_layer:
            q = lookup.get((name, sparsity))
            row.append(_fmt_acc(q.final.get(metric) if q else None))
            bad.append(over(q))
        rows.append(row)
        flags.append(bad)
    if metric == "accuracy":
        limit = [LIMIT_ROW, _fmt_sparsity(result.suggested_sparsity)] + [""] * (len(header) - 2 - len(per_layer))
        limit += [_fmt_sparsity(result.max_within_budget(name)) for name in per_layer]
        rows.append(limit)
        flags.append([False] * len(limit))
    return header, rows, flags


def summary_line(result: SweepResult) -> str:
    base = result.baseline
    text = f"Unpruned: loss {_fmt_acc(base.get('loss'))}"
    if base.get("accuracy") is not None:
        text += f", accuracy {base['accuracy']:.4f}"
        s = result.suggested_sparsity
        if s is None or s == 0.0:
            text += f"; no swept sparsity keeps the accuracy drop within {result.max_accuracy_drop:g}"
        else:
            text += f"; suggested sparsity {s:g} (largest with accuracy drop <= {result.max_accuracy_drop:g})"
    return text


def render_table(result: SweepResult, console) -> None:
    """The sweep as a rich table; cells over the accuracy budget in red."""
    from rich.table import Table

    header, rows, over = table_rows(result)
    table = Table(
        title=f"Sensitivity sweep: {Path(result.model).name} ({result.method}, {result.n_eval} examples)",
        title_justify="left",
        header_style="bold",
    )
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for row, flags in zip(rows, over, strict=True):
        cells = [f"[red]{c}[/]" if bad else c for c, bad in zip(row, flags, strict=True)]
        if row[0] == LIMIT_ROW:
            table.add_section()
        table.add_row(*cells)
    console.print(table)
    console.print(summary_line(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")


def render_markdown(result: SweepResult, plot_name: str | None = None) -> str:
    """Markdown for a CI job summary or the docs: the plot (linked by file name) and the table."""
    header, rows, over = table_rows(result)
    lines = [f"## Sensitivity sweep: `{Path(result.model).name}`", ""]
    lines.append(
        f"Method `{result.method}`, scope `{result.scope}`, granularity `{result.granularity}`"
        + (f", {result.epochs} fine-tuning epoch(s) per point" if result.epochs else "")
        + f"; evaluated on {result.n_eval} examples of `{result.data}`."
    )
    lines += ["", summary_line(result).replace("<=", "≤") + ".", ""]
    if plot_name:
        lines += [f"![accuracy after pruning against sparsity]({plot_name})", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    for row, flags in zip(rows, over, strict=True):
        cells = [f"**{c}**" if bad else c for c, bad in zip(row, flags, strict=True)]
        if row[0] == LIMIT_ROW:
            cells[0] = f"*max within {result.max_accuracy_drop:g} drop*"
        lines.append("| " + " | ".join(cells) + " |")
    finetuned = any(p.after_finetune for p in result.points)
    legend = "**Bold**: accuracy drop over the budget" + (" after fine-tuning." if finetuned else ".")
    if len(result.layers) and any(p.curve != ALL for p in result.points):
        legend += " Per-layer columns prune that layer alone."
    lines += ["", legend]
    for note in result.notes:
        lines.append(f"- note: {note}")
    return "\n".join(lines) + "\n"


def plot(result: SweepResult, path: str | Path) -> Path:
    """Draw the "all" curve and the per-layer curves side by side and save them as a PNG (headless)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metric = _metric(result)
    base = result.baseline.get(metric)
    per_layer = [layer for layer in result.layers if result.curve(layer["name"])]
    fig = Figure(figsize=(12, 4.6) if per_layer else (6.5, 4.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if per_layer else 1, squeeze=False)[0]

    def finish(ax, title):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("sparsity (fraction of weights pruned)")
        ax.set_ylabel(metric)
        ax.set_xlim(-0.02, 1.0)
        ax.grid(True, alpha=0.3)
        if metric == "accuracy":
            ax.axhline(
                base - result.max_accuracy_drop,
                color="tab:red",
                linestyle="--",
                linewidth=1,
                label=f"budget: drop {result.max_accuracy_drop:g}",
            )

    ax = axes[0]
    curve = result.curve(ALL)
    xs = [0.0] + [p.sparsity for p in curve]
    ax.plot(
        xs, [base] + [(p.after_pruning or {}).get(metric) for p in curve], "o-", color="tab:blue", label="after pruning"
    )
    if any(p.after_finetune for p in curve):
        ax.plot(
            xs,
            [base] + [(p.after_finetune or {}).get(metric) for p in curve],
            "s-",
            color="tab:green",
            label=f"after {result.epochs} epoch(s) fine-tuning",
        )
    suggested = result.suggested_sparsity
    if suggested:
        ax.axvline(suggested, color="tab:gray", linestyle=":", label=f"suggested {suggested:g}")
    finish(ax, f"All layers ({result.method}, scope {result.scope})")
    ax.legend(fontsize=8, loc="lower left")
    if per_layer:
        ax = axes[1]
        for layer in per_layer:
            pts = result.curve(layer["name"])
            ax.plot(
                [0.0] + [p.sparsity for p in pts],
                [base] + [p.final.get(metric) for p in pts],
                "o-",
                markersize=4,
                label=f"{layer['name']} ({layer['params']:,} weights)",
            )
        finish(ax, "Each layer pruned alone")
        ax.legend(fontsize=8, loc="lower left")
    if metric == "accuracy":
        drawn = [stage.get(metric) for p in result.points for stage in (p.after_pruning, p.after_finetune) if stage]
        low = min([v for v in drawn if v is not None] + [base])
        for a in axes:
            a.set_ylim(max(0.0, low - 0.03), min(1.0, base + 0.02) + 0.005)
    fig.suptitle(f"Sensitivity of {Path(result.model).name} on {result.n_eval} examples", fontsize=12)
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def write_outputs(result: SweepResult, out_dir: str | Path, name: str = "sweep") -> dict[str, Path]:
    """<name>.json, <name>.csv, <name>.png and <name>.md (which links the PNG) in out_dir."""
    import json

    from prunecli.errors import OutputError
    from prunecli.io.paths import all_or_nothing

    folder = Path(out_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {folder}: {exc.strerror}") from exc
    paths = {kind: folder / f"{name}.{kind}" for kind in ("json", "csv", "png", "md")}
    try:  # all four or none: an interrupt (Ctrl-C, SIGTERM) while writing leaves no half set behind
        with all_or_nothing(paths.values()) as temps:
            temps[paths["json"]].write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
            with open(temps[paths["csv"]], "w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(
                    ["curve", "sparsity", "measured_sparsity", "stage", "loss", "accuracy", "accuracy_drop"]
                )
                base_acc = result.baseline.get("accuracy")
                for p in result.points:
                    for stage in ("after_pruning", "after_finetune"):
                        values = getattr(p, stage)
                        if values is None:
                            continue
                        acc = values.get("accuracy")
                        drop = None if acc is None or base_acc is None else base_acc - acc
                        writer.writerow(
                            [
                                p.curve,
                                p.sparsity,
                                f"{p.measured_sparsity:.6f}",
                                stage,
                                values.get("loss"),
                                acc,
                                "" if drop is None else f"{drop:.6f}",
                            ]
                        )
            plot(result, temps[paths["png"]])
            temps[paths["md"]].write_text(render_markdown(result, paths["png"].name), encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write sweep results to {folder}: {exc.strerror or exc}") from exc
    return paths
