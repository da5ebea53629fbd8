"""The report: only what this run measured. JSON for machines, a rich table for people.

Schema (version 1) is documented in the README; `schema_version` changes when a field changes meaning.
"""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


class Timings(dict):
    """Wall time of each phase, in seconds, and when the run began (`wall()`: seconds since), so the
    report's total is the run's wall time, not only the phases'."""

    def __init__(self):
        super().__init__()
        self.started = time.perf_counter()

    def wall(self) -> float:
        return time.perf_counter() - self.started

    @contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start


@dataclass
class LayerStat:
    name: str
    layer: str
    cls: str
    shape: list[int]
    params: int
    nonzeros: int
    sparsity: float
    requested_sparsity: float | None = None


@dataclass
class Report:
    settings: dict
    input: dict
    output: dict | None = None
    totals: dict = field(default_factory=dict)
    layers: list[LayerStat] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    timings_s: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    prunecli_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(d.pop("extra"))
        for layer in d["layers"]:
            layer["class"] = layer.pop("cls")
        return d

    def to_json(self) -> str:
        """Always valid JSON (RFC 8259): a NaN or infinite number is written as null (Python's json
        would write bare NaN/Infinity, which jq and most parsers reject)."""
        return json.dumps(json_safe(self.to_dict()), indent=2, sort_keys=False, allow_nan=False)

    def write_json(self, path: str | Path) -> None:
        """Atomically to a file; in place to a FIFO or device; '-' is stdout (io.paths.write_text)."""
        from prunecli.io.paths import write_text

        write_text(path, self.to_json() + "\n")


def json_safe(value: Any) -> Any:
    """A structure json.dumps(allow_nan=False) accepts: non-finite floats become None, NumPy scalars
    and arrays plain numbers and lists, anything else unknown its str()."""
    import math

    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if hasattr(value, "tolist") and callable(value.tolist):  # NumPy scalar or array
        return json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    return str(value)


def layer_stats(targets, requested: dict, census=None) -> list[LayerStat]:
    """Each target's size and non-zeros (as `census`, structure/census.py, read them where given)."""
    from prunecli.structure.census import nonzeros

    stats = []
    for t in targets:
        size = int(t.size)
        nz = nonzeros(t.variable, census)
        stats.append(
            LayerStat(
                t.name,
                t.layer_name,
                t.layer_class,
                list(t.shape),
                size,
                nz,
                1.0 - nz / size if size else 0.0,
                requested.get(t.name),
            )
        )
    return stats


QUANTIZATION_STATE = re.compile(r"(_scale|_zero|g_idx|amax_history)$")  # a quantized layer's bookkeeping


def totals(model, stats: list[LayerStat], census=None) -> dict[str, Any]:
    """Whole-model and pruned-weight counts (non-zeros as `census` read them where given)."""
    params, nonzeros = whole_counts(model, census)
    prunable = sum(s.params for s in stats)
    prunable_nz = sum(s.nonzeros for s in stats)
    return {
        "params": int(params),
        "nonzeros": int(nonzeros),
        "sparsity": 1.0 - nonzeros / params if params else 0.0,
        "prunable_params": int(prunable),
        "prunable_nonzeros": int(prunable_nz),
        "prunable_sparsity": 1.0 - prunable_nz / prunable if prunable else 0.0,
    }


def whole_counts(model, census=None) -> tuple[int, int]:
    """(parameters, non-zeros) of the whole model, as the report and `verify` count them. A quantized
    layer counts as the float layer it stands for: its int4 kernel by its weights (two per stored
    byte, as the per-layer rows count it), and neither its scales and zero points nor float8's
    histories of maxima (all zeros: 3,072 of them made a conv net read 87% sparse). Non-zeros as
    `census` (structure/census.py) read them where it read the variable, else read here."""
    import math

    from prunecli.structure import census as weight_census
    from prunecli.structure import targets

    logical = {}  # id(stored variable) -> its target: an int4 kernel's variable holds packed codes
    for t in targets.walk(model):
        stored = [w for w in getattr(t.layer, "weights", ()) if w.name == t.attr] if t.layer is not None else []
        for w in stored or [t.variable]:
            logical[id(w)] = t
    params = nonzeros = 0
    for v in model.weights:
        if QUANTIZATION_STATE.search(v.path if hasattr(v, "path") else v.name):
            continue
        target = logical.get(id(v))
        params += int(target.size) if target is not None else math.prod(int(d) for d in v.shape)
        nonzeros += weight_census.nonzeros(target.variable if target is not None else v, census)
    return int(params), int(nonzeros)


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def render(report: Report, console) -> None:
    """Print the report as rich tables; names, paths and notes as outputs.terminal prints them."""
    from rich.table import Table

    from prunecli.outputs.terminal import line, plain

    layers = Table(title="Pruned layers", title_justify="left", header_style="bold")
    for col, just in (
        ("layer weight", "left"),
        ("class", "left"),
        ("shape", "left"),
        ("params", "right"),
        ("non-zeros", "right"),
        ("sparsity", "right"),
        ("target", "right"),
    ):
        layers.add_column(col, justify=just)
    for s in report.layers:
        target = "-" if s.requested_sparsity is None else f"{s.requested_sparsity:.1%}"
        layers.add_row(
            plain(s.name),
            plain(s.cls),
            "x".join(map(str, s.shape)),
            f"{s.params:,}",
            f"{s.nonzeros:,}",
            f"{s.sparsity:.1%}",
            target,
        )
    t = report.totals
    layers.add_row(
        "[bold]prunable total[/]",
        "",
        "",
        f"{t['prunable_params']:,}",
        f"{t['prunable_nonzeros']:,}",
        f"{t['prunable_sparsity']:.1%}",
        "",
        end_section=True,
    )
    layers.add_row("[bold]whole model[/]", "", "", f"{t['params']:,}", f"{t['nonzeros']:,}", f"{t['sparsity']:.1%}", "")
    console.print(layers)
    if "decoder" in report.extra:
        _render_decoder(report.extra["decoder"], console)

    summary = Table(title="Summary", title_justify="left", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right", overflow="fold")  # a long path folds, whole
    summary.add_row(
        "input", plain(f"{report.input['path']} ({report.input.get('flavour', '')} {report.input['format']})")
    )
    if "bytes" in report.input:
        summary.add_row(
            "input size (raw / gzip)", f"{_mib(report.input['bytes'])} / {_mib(report.input.get('gzip_bytes'))}"
        )
    if report.output:
        summary.add_row(_output_label(report.output), plain(report.output["path"]))
        summary.add_row(
            "output size (raw / gzip)", f"{_mib(report.output['bytes'])} / {_mib(report.output.get('gzip_bytes'))}"
        )
    removed = removed_line(report)
    if removed:
        summary.add_row("removed", removed)
    for label, values in shown_stages(report):
        parts = [f"loss {loss_text(values['loss'])}"] if values.get("loss") is not None else []
        if "perplexity" in values:
            parts.append(f"perplexity {values['perplexity']:.4g}")
        if values.get("accuracy") is not None:
            parts.append(f"accuracy {values['accuracy']:.4f}")
        summary.add_row(label, ", ".join(parts))
    allocation = (report.extra.get("calibration") or {}).get("allocation")
    if allocation:  # the calibrated methods' per-layer shares: the one measured, or the one asked for
        summary.add_row("allocation", allocation)
    timing = ", ".join(f"{k} {v:.2f}s" for k, v in report.timings_s.items())
    summary.add_row("time", timing)
    console.print(summary)
    for note in report.notes:
        console.print(line(note, "note:", "yellow"))


def _render_decoder(section: dict, console) -> None:
    """The `decoder` section (outputs/decoder_blocks.py): each block before -> after, and tokens/s."""
    from rich.table import Table

    from prunecli.outputs.terminal import plain

    table = Table(
        title=f"Decoder blocks (multiply-adds at {section['seq_len']} tokens)",
        title_justify="left",
        header_style="bold",
    )
    columns = {"query_heads": "q heads", "kv_groups": "kv", "ffn_units": "ffn", "hidden": "width"}
    columns.update(params="params", macs="MACs")
    table.add_column("block", overflow="fold")
    for label in columns.values():
        table.add_column(label, justify="right")
    for row in section["blocks"]:
        before, after = row["before"], row["after"]
        cells = [
            _short(before[k]) if after is None or after[k] == before[k] else f"{_short(before[k])}→{_short(after[k])}"
            for k in columns
        ]
        table.add_row(plain(row["block"] + (" (removed)" if after is None else "")), *cells)
    console.print(table)
    for kind, speed in section["tokens_per_s"].items():
        console.print(f"{kind}: {speed['before']:,.0f} -> {speed['after']:,.0f} tokens/s ({speed['ratio']:.2f}x)")


def _short(n: int) -> str:
    """A count in at most four significant characters: 9280 -> 9.28k, 851968 -> 852k."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


def _md(text: Any) -> str:
    """A Markdown table cell: pipes escaped, newlines flattened."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def md_code(text: Any, cell: bool = False) -> str:
    """`text` (a file name) as one inline code span on one line, in a table `cell` or not: a newline in
    the name split the summary's title in two, and a backtick in it closed the span, so that the rest of
    the name rendered as Markdown (`m`**99% sparse**`.keras` showed a bold claim the run never made)."""
    flat = _md(text) if cell else str(text).replace("\r", " ").replace("\n", " ")
    longest = max((len(run) for run in re.findall(r"`+", flat)), default=0)
    fence, pad = "`" * (longest + 1), " " if longest else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def _settings_line(settings: dict) -> str:
    parts = [f"method `{settings.get('method')}`"]
    if settings.get("auto"):
        total = settings.get("sparsity")
        parts.append(
            "per-layer sparsities chosen by `--auto`" + ("" if total is None else f" for a total of `{total:g}`")
        )
    elif settings.get("threshold") is not None:
        parts.append(f"threshold `{settings['threshold']}`")
    elif settings.get("sparsity") is not None:
        parts.append(f"sparsity `{settings['sparsity']:g}`")
    parts += [f"scope `{settings.get('scope')}`", f"granularity `{settings.get('granularity')}`"]
    if settings.get("epochs"):
        parts.append(f"{settings['epochs']} fine-tuning epoch(s), schedule `{settings.get('schedule')}`")
    return ", ".join(parts)


def _compact_json(value: Any) -> str:
    """Indented JSON with innermost lists kept on one line, so tables of numbers stay short."""
    import re

    text = json.dumps(value, indent=2, default=str)
    return re.sub(r"\[\n\s*([^\[\]{}]*?)\n\s*\]", lambda m: "[" + re.sub(r"\s*\n\s*", " ", m.group(1)) + "]", text)


def render_markdown(report: Report) -> str:
    """The report as Markdown for a CI job summary: settings, metrics, the per-layer table, sizes, notes.

    Sections other steps add (report.extra) follow as collapsed JSON blocks.
    """
    lines = _md_header(report)
    if report.metrics:
        lines += _md_metrics(report)
    lines += _md_layers(report)
    lines += _md_files(report)
    if report.timings_s:
        lines += ["Time: " + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings_s.items()) + ".", ""]
    if report.notes:
        lines += ["### Notes", ""] + [f"- {_md(n)}" for n in report.notes] + [""]
    for key, value in report.extra.items():
        body = _compact_json(value)
        lines += [f"<details><summary>{key}</summary>", "", "```json", body, "```", "", "</details>", ""]
    lines.append(f"<sub>prunecli {report.prunecli_version}, report schema {report.schema_version}</sub>")
    return "\n".join(lines) + "\n"


def _md_header(report: Report) -> list[str]:
    """The title (input → output), the settings line and the sparsity summary."""
    src = Path(report.input["path"]).name
    title = f"## prunecli: {md_code(src)}" + (
        f" → {md_code(Path(report.output['path']).name)}" if report.output else ""
    )
    if report.output and _output_label(report.output) != "output":
        title += " (not written)"
    t = report.totals
    removed = removed_line(report)
    return [
        title,
        "",
        _settings_line(report.settings) + ".",
        "",
        *([f"Removed from the model: **{removed}**.", ""] if removed else []),
        f"Prunable weights: **{t['prunable_sparsity']:.1%} sparse** ({t['prunable_nonzeros']:,} of "
        f"{t['prunable_params']:,} non-zero); whole model {t['sparsity']:.1%} sparse "
        f"({t['nonzeros']:,} of {t['params']:,}).",
        "",
    ]


# steps whose section counts params_before/after (feature_pruning when shrunk, layer_pruning when it removed any)
STRUCTURAL_SECTIONS = ("heads", "ffn", "hidden", "shrink", "feature_pruning", "layer_pruning")


def removed_line(report: Report) -> str | None:
    """What the run's structural steps removed, in parameters ('296 of 467 parameters (63.4%); 171
    remain'), from their sections' params_before/params_after (the first step's before, the last
    one's after), or None when none removed any. The summary and the Markdown page say it beside the
    sparsity: a --shrink or --target run's file is dense, and the page read '0.0% sparse', each layer at
    '0.0%' beside its target of 50%, with the removal only in a collapsed JSON block."""
    counts = [
        report.extra[key]
        for key in report.extra
        if key in STRUCTURAL_SECTIONS
        and isinstance(report.extra[key], dict)
        and isinstance(report.extra[key].get("params_before"), int)
        and isinstance(report.extra[key].get("params_after"), int)
    ]
    if not counts:
        return None
    before, after = counts[0]["params_before"], counts[-1]["params_after"]
    if after >= before or before <= 0:
        return None
    return f"{before - after:,} of {before:,} parameters ({(before - after) / before:.1%}); {after:,} remain"


DURING_FINETUNE = "at the final sparsity (during fine-tuning)"  # a gradual schedule's after_pruning


def stage_label(stage: str, metrics: dict, schedule: str | None = None) -> str:
    """A metrics stage as the tables name it. With fine-tuning under a gradual schedule, "after_pruning" is
    measured when the final sparsity is first reached, two thirds into training: the label says so (it
    read as the pruned model before any training). A one-shot run (`schedule` "oneshot": apply, -g
    layer/input/head, --target, --schedule oneshot) measures it before fine-tuning, and is labelled so
    (its tables said 'during fine-tuning' of a model no step had trained)."""
    if stage == "after_pruning" and "after_finetune" in metrics:
        if schedule == "oneshot":
            return "after pruning (before fine-tuning)"
        return DURING_FINETUNE
    return stage.replace("_", " ")


def run_schedule(report: Report) -> str | None:
    """The schedule the run fine-tuned with (its finetune section's, else the settings'), or None."""
    finetune = report.extra.get("finetune")
    schedule = finetune.get("schedule") if isinstance(finetune, dict) else None
    return schedule or report.settings.get("schedule")


QUANTIZED_STAGE = "quantized (the output model)"


def shown_stages(report: Report) -> list[tuple[str, dict]]:
    """(label, loss/accuracy) of every measured stage the summary and the Markdown page show, in order:
    the run's stages, then, after --quantize, the quantized model's, which is the model written and the
    one the quality gate and `verify` judge (final_accuracy): the tables ended at the float pruned
    model's accuracy (digits MLP at 70% + int4: 'after pruning 0.8167, -0.1033' beside a gate that
    measured the written file at 0.8100, -0.1100)."""
    schedule = run_schedule(report)
    stages = [(stage_label(stage, report.metrics, schedule), values) for stage, values in report.metrics.items()]
    quantized = quantized_metrics(report.extra)
    if quantized:
        stages.append((QUANTIZED_STAGE, quantized))
    return stages


def loss_text(value: float) -> str:
    """A loss as the summary, the Markdown report and the sweep print it: 4 decimals, but 4 significant
    digits below 0.01, where 4 decimals show a regressor's small loss (a price's MSE: 5e-06 before
    pruning, 6e-05 after) as 0.0000 twice."""
    return f"{value:.4f}" if value == 0 or abs(value) >= 0.01 or value != value else f"{value:.4g}"


def _md_metrics(report: Report) -> list[str]:
    """One row per measured stage (shown_stages), with the change in accuracy from `before`; a
    perplexity column when a causal LM's was measured."""
    stages = shown_stages(report)
    before = report.metrics.get("before", {}).get("accuracy")
    perplexity = any("perplexity" in values for _label, values in stages)
    head = "| stage | loss |" + (" perplexity |" if perplexity else "") + " accuracy | change in accuracy |"
    lines = ["### Metrics", "", head, "|:---|---:|" + ("---:|" if perplexity else "") + "---:|---:|"]
    for label, values in stages:
        acc = values.get("accuracy")
        change = "" if acc is None or before is None or label == "before" else f"{acc - before:+.4f}"
        loss = values.get("loss")
        ppl = values.get("perplexity")
        ppl_cell = (" - |" if ppl is None else f" {ppl:.4g} |") if perplexity else ""
        lines.append(
            f"| {label} | {'-' if loss is None else loss_text(loss)} |{ppl_cell} "
            f"{'-' if acc is None else f'{acc:.4f}'} | {change} |"
        )
    lines.append("")
    return lines


def _md_layers(report: Report) -> list[str]:
    """One row per pruned weight, then the prunable and whole-model totals."""
    t = report.totals
    lines = [
        "### Layers",
        "",
        "| layer weight | class | shape | params | non-zeros | sparsity | target |",
        "|:---|:---|:---|---:|---:|---:|---:|",
    ]
    for s in report.layers:
        target = "-" if s.requested_sparsity is None else f"{s.requested_sparsity:.1%}"
        lines.append(
            f"| {_md(s.name)} | {s.cls} | {'x'.join(map(str, s.shape))} | {s.params:,} | {s.nonzeros:,} | "
            f"{s.sparsity:.1%} | {target} |"
        )
    lines.append(
        f"| **prunable total** | | | {t['prunable_params']:,} | {t['prunable_nonzeros']:,} | "
        f"{t['prunable_sparsity']:.1%} | |"
    )
    lines += [f"| **whole model** | | | {t['params']:,} | {t['nonzeros']:,} | {t['sparsity']:.1%} | |", ""]
    return lines


def _md_files(report: Report) -> list[str]:
    """The input, output and --export files' sizes, when they were measured; nothing otherwise. The exports
    were listed only in the page's collapsed JSON block, so the page's table of files left out the files a
    CI job ships (a .tflite), each labelled "(not written)" when the quality gate withheld it."""
    parts = [("input", report.input), ("output", report.output)]
    parts += [(f"export {fmt}", entry) for fmt, entry in (report.extra.get("export") or {}).items()]
    sized = [(name, part) for name, part in parts if isinstance(part, dict) and "bytes" in part]
    if not sized:
        return []
    lines = ["### Files", "", "| | path | size | gzip size |", "|:---|:---|---:|---:|"]
    for name, part in sized:
        name = name if name == "input" else _output_label(part, name)
        lines.append(
            f"| {name} | {md_code(part['path'], cell=True)} | {_mib(part['bytes'])} | {_mib(part.get('gzip_bytes'))} |"
        )
    lines.append("")
    return lines


def _output_label(output: dict, name: str = "output") -> str:
    """How the tables name an output file: "output (not written)" when its quality gate failed, as its
    path and sizes then describe the model that failed, which no file holds (the summary and the CI
    page listed it as the output beside the sizes, with only a note at the end saying otherwise)."""
    return name if output.get("written", True) else f"{name} (not written)"


def quantized_metrics(sections: dict) -> dict | None:
    """The --quantize section's metrics of the quantized model (the model written), from a report's
    sections (its extra, or the report read back as a dict), or None."""
    return ((sections.get("quantize") or {}).get("metrics") or {}).get("quantized")


def final_metrics(claims: dict) -> tuple[str, dict]:
    """(stage, its loss/accuracy/perplexity) of the model a run wrote, from its report as a dict: a
    --quantize run wrote the quantized model, whose metrics are the quantize section's, not the float
    pruned model's; else the last stage measured. The quality gate and `verify` both judge this one."""
    quantized = quantized_metrics(claims)
    if quantized:
        return "quantized", quantized
    metrics = claims.get("metrics") or {}
    stage = "after_finetune" if "after_finetune" in metrics else "after_pruning"
    return stage, metrics.get(stage) or {}


def final_accuracy(claims: dict):
    """(stage, accuracy) of the model a run wrote (final_metrics)."""
    stage, values = final_metrics(claims)
    return stage, values.get("accuracy")


def write_report_files(report: Report, json_path: str | None, markdown_path: str | None) -> None:
    """The report as JSON and as Markdown to the files named (None: not asked; "-": standard output,
    which the CLI prints itself). The CLI and the Python API both write them this way."""
    if json_path and json_path != "-":
        report.write_json(json_path)
    if markdown_path and markdown_path != "-":
        write_markdown(report, markdown_path)


def write_markdown(report: Report, path: str | Path) -> None:
    """Write render_markdown(report): atomically, or in place to a FIFO/device (io.paths.write_text)."""
    from prunecli.errors import OutputError
    from prunecli.io.paths import write_text
    from prunecli.messages import shown

    try:
        write_text(path, render_markdown(report))
    except OSError as exc:
        raise OutputError(f"cannot write {shown(path)}: {exc.strerror or exc}") from exc
