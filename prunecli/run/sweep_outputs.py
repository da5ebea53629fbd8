"""What a sensitivity sweep found, and its outputs: the result (points per curve, the accuracy budget
and the sparsity it suggests) and the table, Markdown, plot, JSON and CSV written from it.

Measuring lives in run/sweep.py; nothing here runs a model.
"""

from __future__ import annotations

import contextlib
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunecli.outputs.report import DURING_FINETUNE, loss_text

SCHEMA_VERSION = 1
ALL = "all"  # the curve name of "every target pruned together"
LIMIT_ROW = "max within budget"


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
    schedule: str = "oneshot"  # a gradual one measures the "all" points' after_pruning during fine-tuning
    distill: float | None = None  # --distill's temperature: each point fine-tuned against the dense model

    @property
    def pruned_label(self) -> str:
        """What the "all" curve's after_pruning is: right after pruning (one-shot), or, under a gradual
        schedule, the model at its final sparsity two thirds into fine-tuning (the table and the plot
        called that "after pruning", of a model fine-tuning had trained)."""
        return "after pruning" if self.schedule == "oneshot" else DURING_FINETUNE

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
            "schedule": self.schedule,
            "distill": self.distill,
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


def finite_metrics(metrics: dict | None) -> dict | None:
    """Metrics with non-finite values as None, so the JSON stays standard."""
    return None if metrics is None else {k: _finite(float(v)) for k, v in metrics.items()}


def _fmt_acc(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def _fmt_loss(value) -> str:
    return "-" if value is None else loss_text(value)


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
    with_loss = metric != "loss"  # the loss beside the accuracy; without an accuracy it is the metric
    fmt = _fmt_acc if with_loss else _fmt_loss
    during = "" if result.schedule == "oneshot" else f" ({result.pruned_label})"
    header = ["sparsity", f"all: {metric}{during}"] + ([f"all: loss{during}"] if with_loss else [])
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
        row = [f"{sparsity:g}", fmt(pruned.get(metric))] + ([_fmt_loss(pruned.get("loss"))] if with_loss else [])
        bad = [False, over(p) and not finetuned] + ([False] if with_loss else [])
        if finetuned:
            row.append(fmt((p.after_finetune or {}).get(metric) if p else None))
            bad.append(over(p))
        if metric == "accuracy":
            drop = None if p is None else result.drop(p)
            row.append("-" if drop is None else f"{drop:+.4f}")
            bad.append(over(p))
        for name in per_layer:
            q = lookup.get((name, sparsity))
            row.append(fmt(q.final.get(metric) if q else None))
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
    text = f"Unpruned: loss {_fmt_loss(base.get('loss'))}"
    if base.get("accuracy") is not None:
        text += f", accuracy {base['accuracy']:.4f}"
        s, budget = result.suggested_sparsity, result.max_accuracy_drop
        past = _within_past_the_suggestion(result)
        if s is None or s == 0.0:
            if past:
                text += f"; no sparsity suggested: the smallest swept one drops the accuracy by more than {budget:g}"
            else:
                text += f"; no swept sparsity keeps the accuracy drop within {budget:g}"
        else:
            text += f"; suggested sparsity {s:g} (largest with accuracy drop <= {budget:g}"
            text += ", it and every smaller one)" if past else ")"
        if past:
            text += f"; {', '.join(f'{v:g}' for v in past)} within it too, past one over it"
    return text


def _within_past_the_suggestion(result: SweepResult) -> list[float]:
    """The swept sparsities above the suggestion whose drop is within the budget: the suggestion stops at
    the first point over it, and the line said 'no swept sparsity keeps the accuracy drop within 0.01'
    (or 'largest with drop <= 0.01') beside a table whose larger point was within it (digits CNN,
    --epochs 1: 0.8 over, 0.9 at +0.0083)."""
    s = result.suggested_sparsity or 0.0
    past = []
    for point in result.curve(ALL):
        drop = result.drop(point)
        if point.sparsity > s and drop is not None and drop <= result.max_accuracy_drop + 1e-9:
            past.append(point.sparsity)
    return past


def render_table(result: SweepResult, console) -> None:
    """The sweep as a rich table; cells over the accuracy budget in red; names and notes as
    outputs.terminal prints them (no markup, overlong words cropped)."""
    from rich.table import Table

    from prunecli.outputs.terminal import line, plain

    header, rows, over = table_rows(result)
    table = Table(
        title=plain(f"Sensitivity sweep: {Path(result.model).name} ({result.method}, {result.n_eval} examples)"),
        title_justify="left",
        header_style="bold",
    )
    for i, name in enumerate(header):
        table.add_column(plain(name), justify="left" if i == 0 else "right")
    for row, flags in zip(rows, over, strict=True):
        cells = [f"[red]{c}[/]" if bad else c for c, bad in zip(row, flags, strict=True)]
        if row[0] == LIMIT_ROW:
            table.add_section()
        table.add_row(*cells)
    console.print(table)
    console.print(summary_line(result))
    for note in result.notes:
        console.print(line(note, "note:", "yellow"))


def render_markdown(result: SweepResult, plot_name: str | None = None) -> str:
    """Markdown for a CI job summary or the docs: the plot (linked by file name) and the table."""
    header, rows, over = table_rows(result)
    from prunecli.outputs.report import md_code

    lines = [f"## Sensitivity sweep: {md_code(Path(result.model).name)}", ""]
    lines.append(
        f"Method `{result.method}`, scope `{result.scope}`, granularity `{result.granularity}`"
        + (f", {result.epochs} fine-tuning epoch(s) per point" if result.epochs else "")
        + (f" distilled from the unpruned model (temperature {result.distill:g})" if result.distill else "")
        + f"; evaluated on {result.n_eval} examples of {md_code(result.data)}."
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
    from prunecli.runtime import process_tempdir

    with process_tempdir():  # matplotlib's folders live as long as the process, not in the run's
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

    metric = _metric(result)
    base = result.baseline.get(metric)
    per_layer = [layer for layer in result.layers if result.curve(layer["name"])]
    fig = Figure(figsize=(12, 4.6) if per_layer else (6.5, 4.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2 if per_layer else 1, squeeze=False)[0]
    _plot_all(axes[0], result, metric)
    if per_layer:
        _plot_layers(axes[1], result, metric, per_layer)
    if metric == "accuracy":
        drawn = [stage.get(metric) for p in result.points for stage in (p.after_pruning, p.after_finetune) if stage]
        low = min([v for v in drawn if v is not None] + [base])
        for a in axes:
            a.set_ylim(max(0.0, low - 0.03), min(1.0, base + 0.02) + 0.005)
    fig.suptitle(f"Sensitivity of {Path(result.model).name} on {result.n_eval} examples", fontsize=12)
    out = Path(path)
    fig.savefig(out, format="png")
    return out


def _plot_all(ax, result: SweepResult, metric: str) -> None:
    """The "all" curve after pruning, [after fine-tuning], and the suggested sparsity."""
    base = result.baseline.get(metric)
    curve = result.curve(ALL)
    xs = [0.0] + [p.sparsity for p in curve]
    ax.plot(
        xs,
        [base] + [(p.after_pruning or {}).get(metric) for p in curve],
        "o-",
        color="tab:blue",
        label=result.pruned_label,
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
    _finish(ax, result, metric, f"All layers ({result.method}, scope {result.scope})")
    ax.legend(fontsize=8, loc="lower left")


def _plot_layers(ax, result: SweepResult, metric: str, per_layer: list[dict]) -> None:
    """One curve per layer pruned alone."""
    base = result.baseline.get(metric)
    for layer in per_layer:
        pts = result.curve(layer["name"])
        ax.plot(
            [0.0] + [p.sparsity for p in pts],
            [base] + [p.final.get(metric) for p in pts],
            "o-",
            markersize=4,
            label=f"{layer['name']} ({layer['params']:,} weights)",
        )
    _finish(ax, result, metric, "Each layer pruned alone")
    ax.legend(fontsize=8, loc="lower left")


def _finish(ax, result: SweepResult, metric: str, title: str) -> None:
    """Title, axes and grid of a panel; with an accuracy, the budget line below the unpruned model."""
    ax.set_title(title, fontsize=11)
    ax.set_xlabel("sparsity (fraction of weights pruned)")
    ax.set_ylabel(metric)
    ax.set_xlim(-0.02, 1.0)
    ax.grid(True, alpha=0.3)
    if metric == "accuracy":
        ax.axhline(
            result.baseline.get(metric) - result.max_accuracy_drop,
            color="tab:red",
            linestyle="--",
            linewidth=1,
            label=f"budget: drop {result.max_accuracy_drop:g}",
        )


def write_outputs(result: SweepResult, out_dir: str | Path, name: str = "sweep") -> dict[str, Path]:
    """<name>.json, <name>.csv, <name>.png and <name>.md (which links the PNG) in out_dir. Called from
    Python, it checks the name and the files it would replace as the CLI's path plan does (io/paths)."""
    from prunecli.errors import OutputError
    from prunecli.io.paths import check_earlier_sweep, check_sweep_name

    folder = Path(out_dir)
    check_sweep_name(name)
    if folder.is_dir():
        check_earlier_sweep(folder, name)
    created = [f for f in (folder, *folder.parents) if not f.exists()]  # deepest first: -o a/b/c makes three
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {folder}: {exc.strerror}") from exc
    paths = {kind: folder / f"{name}.{kind}" for kind in ("json", "csv", "png", "md")}
    try:
        return _write_all(result, folder, paths)
    except BaseException:
        for made in created:  # an interrupted or failed sweep leaves no empty folder of its own behind
            with contextlib.suppress(OSError):
                made.rmdir()
        raise


def _write_all(result: SweepResult, folder: Path, paths: dict[str, Path]) -> dict[str, Path]:
    import json

    from prunecli.errors import OutputError
    from prunecli.io.models import atomic_path, outputs_together

    try:  # all four or none: an interrupt (Ctrl-C, SIGTERM) while writing leaves no half set behind
        with outputs_together():
            with atomic_path(paths["json"]) as tmp:
                tmp.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
            with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
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
            with atomic_path(paths["png"]) as tmp:
                plot(result, tmp)
            with atomic_path(paths["md"]) as tmp:
                tmp.write_text(render_markdown(result, paths["png"].name), encoding="utf-8")
    except OSError as exc:
        raise OutputError(f"cannot write sweep results to {folder}: {exc.strerror or exc}") from exc
    return paths
