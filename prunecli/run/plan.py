"""`prunecli plan`: what a prune with the same options would remove, computed and shown, nothing written.

The plan runs the very steps `prune` runs (load, score, decide, and the in-memory rebuild for
--shrink, -g input and -g layer), then compares the model before and after: per layer the
parameters, live units (neurons/filters with a non-zero weight), theoretical multiply-adds, and
for structural runs the kept features or the removed layers. Evaluation, fine-tuning and saving
are left out, so its numbers are those `prune` reaches before fine-tuning.
"""

from __future__ import annotations

from typing import Any

from prunecli import removal
from prunecli.errors import ConfigError, streamed_errors_raised
from prunecli.outputs.report import Timings
from prunecli.removal import heads
from prunecli.results import StepResult
from prunecli.run import steps, target
from prunecli.runtime import keeps_global_state, quiet_tensorflow
from prunecli.structure import keras_graph


def _layer_rows(model, seq_len: int | None) -> dict[str, dict[str, Any]]:
    """Per layer call with weights: class, parameters, non-zeros, live units, multiply-adds (open sequence
    lengths at --seq-len)."""
    import numpy as np

    from prunecli.structure import flops, layers

    found = flops.calls(model, seq_len=seq_len) or []
    rows = {}
    for path, layer, ins, outs, times in found:
        weights = [np.asarray(w) for w in layer.weights]
        dense, nonzero = (None if c is None else c * times for c in flops.layer_cost(layer, ins, outs))
        row = {
            "class": type(layer).__name__,
            "params": int(sum(w.size for w in weights)),
            "nonzeros": int(sum(np.count_nonzero(w) for w in weights)),
            "units": None,
            "live_units": None,
            "macs": dense,
            "nonzero_macs": nonzero,
        }
        axis = layers.unit_axis(layer)
        kernels = [w for w in weights if w.ndim >= 2]
        if layers.spec(layer).role == "recurrent":
            row["units"], row["live_units"] = _recurrent_units(layer)
        elif axis is not None and kernels:
            kernel = np.moveaxis(kernels[-1], axis, -1).reshape(-1, kernels[-1].shape[axis])
            row["units"] = int(kernel.shape[1])
            row["live_units"] = int(np.count_nonzero(np.abs(kernel).sum(0)))
        rows[path] = row
    return rows


def _recurrent_units(layer) -> tuple[int, int]:
    """(units, live units) of a recurrent layer's output: a unit is live while any of its gate columns in
    the kernel or recurrent kernel holds a non-zero weight (both directions side by side when a
    Bidirectional concatenates them)."""
    import numpy as np

    from prunecli.structure import channels, layers

    live = []
    for part in channels.recurrent_parts(layer):
        gates, units = layers.spec(part).gates, int(part.units)
        columns = [np.asarray(w).reshape(-1, gates, units) for w in (part.cell.kernel, part.cell.recurrent_kernel)]
        live.append(np.logical_or.reduce([np.abs(c).sum(axis=(0, 1)) > 0 for c in columns]))
    joined = channels.join_parts(layer, live, both=False)
    return int(joined.size), int(np.count_nonzero(joined))


def _totals(model, seq_len: int | None) -> dict[str, Any]:
    import numpy as np

    from prunecli.structure import flops

    counted = flops.count(model, seq_len)
    return {
        "params": int(model.count_params()),
        "nonzeros": int(sum(np.count_nonzero(np.asarray(w)) for w in model.weights)),
        "flops": counted["total"],
        "flops_nonzero": counted["nonzero"],
        "flops_partial": counted["partial"],
    }


def _groups(model) -> list[list[str]] | None:
    """Layers whose units must go together (a residual stream, a shared layer), from prunecli.structure.channels."""
    try:
        from prunecli.structure import channels as graph
    except ImportError:
        return None
    try:
        g = graph.graph_of(model)
    except graph.GraphUnsupported:
        return None
    found = {tuple(g.group_members(root)) for root in g.producers}
    return [list(members) for members in sorted(found) if len(members) > 1]


def _not_run(config) -> tuple[str, ...]:
    """A note naming the options `prune` would act on that a plan, which writes no model, does not."""
    given = [
        flag
        for flag, on in (
            ("--epochs", config.epochs > 0),
            ("--max-accuracy-drop", config.max_accuracy_drop is not None),
            ("--export", bool(config.export)),
        )
        if on
    ]
    if not given:
        return ()
    return (f"plan writes no model and fine-tunes nothing: {', '.join(given)} not run (they act in `prunecli prune`)",)


@keeps_global_state  # the caller's logging, environment and Keras defaults, as they were
@streamed_errors_raised  # a streamed dataset's failure mid-run: the CLI's DataError, not TensorFlow's
@keras_graph.loops_compiled  # recurrent layers called eagerly run their loops compiled
def make_plan(config, progress=None) -> dict[str, Any]:
    """Decide what `prune` would remove with `config`, in memory only, and describe it."""
    if config.engine != "native":
        raise ConfigError("plan covers the native engine; drop --engine tfmot")
    quiet_tensorflow()
    say, timings = progress or steps.silent, Timings()
    state, _sizes = steps.load(config.replace(sizes=False), say, timings)
    opened, config = steps.open_nested(state.model, config)
    state = state.after(opened).with_config(config.replace(sizes=False))
    before_rows = _layer_rows(state.model, config.seq_len)
    before = _totals(state.model, config.seq_len)
    groups = _groups(state.model) if config.granularity.kind == "neuron" else None
    state = state.after(StepResult(notes=_not_run(config)))
    state = state.after(steps.pick_targets(state.model, config))
    state = state.after(steps.already_sparse(state.targets, config, state.read))  # counted as loaded
    kind = config.granularity.kind
    if removal.structural(kind, state.model):
        heads_before = heads.heads_per_layer(state.model) if kind == "head" else None
        remove_step = target.remove_structure if config.target else steps.remove_structure
        state = state.after(remove_step(state, say, timings))
        if kind == "head":
            after = heads.heads_per_layer(state.model)
            state = state.after(StepResult(sections={"heads": heads.heads_table(heads_before, after)}))
    else:
        if config.schedule != "oneshot":
            state = state.after(
                StepResult(
                    notes=(
                        f"--schedule {config.schedule} prunes while training; shown: one shot at the final sparsity",
                    )
                )
            )
        mask_step = target.mask if config.target else steps.mask  # --target: channels allocated to fit
        state = state.after(mask_step(state, say, timings))
        if config.shrink:
            from prunecli.removal import channels as shrink_step

            state = state.after(
                shrink_step.shrink(state.model, state.targets, state.masks, state.data, config.seed, say, timings)
            )
    if config.target:  # the allocation and what the shrunk model has (size=: predicted, nothing is written)
        state = state.after(target.achieved(state))
    after_rows = _layer_rows(state.model, config.seq_len)
    layers = []
    for name in list(before_rows) + [n for n in after_rows if n not in before_rows]:
        b, a = before_rows.get(name), after_rows.get(name)
        row = {"layer": name, "class": (b or a)["class"], "removed": a is None}
        for key in ("params", "nonzeros", "units", "live_units", "macs", "nonzero_macs"):
            row[f"{key}_before"] = None if b is None else b[key]
            row[f"{key}_after"] = 0 if a is None else a[key]
        layers.append(row)
    plan = {
        "model": str(config.model_path),
        "granularity": str(config.granularity),
        "method": config.method,
        "before": before,
        "after": _totals(state.model, config.seq_len),
        "layers": layers,
        "notes": list(state.notes),
    }
    if groups is not None:
        plan["groups"] = groups
    for key in (
        "kept_features",
        "kept_feature_names",
        "feature_pruning",
        "removed_layers",
        "layer_pruning",
        "heads",
        "hidden",
        "transformer_split",
        "target",
        "allocation_measured",
    ):
        if key in state.sections:
            plan[key] = state.sections[key]
    return plan


def _num(value) -> str:
    return "-" if value is None else f"{value:,}"


def _macs_line(before: dict, after: dict) -> str:
    """The multiply-adds part of the totals line: counted, partly counted, or not counted at all (an
    open sequence length without --seq-len), never a count of 0 standing for "unknown"."""
    if before.get("flops_partial") and not before["flops"]:
        return "multiply-adds per example not counted (an open input length: give --seq-len)"
    partial = " (partial: layers of unknown cost left out)" if before.get("flops_partial") else ""
    return (
        f"multiply-adds per example {_num(before['flops'])} -> {_num(after['flops'])} "
        f"(non-zero {_num(after['flops_nonzero'])}){partial}"
    )


def render(plan: dict, console) -> None:
    """The plan as tables: per layer before -> after, then totals and what is removed; names and notes
    as outputs.terminal prints them (no markup, overlong words cropped)."""
    from rich.table import Table

    from prunecli.outputs.terminal import line, plain

    table = Table(
        title=plain(f"Plan: {plan['model']} ({plan['granularity']}, {plan['method']})"),
        title_justify="left",
        header_style="bold",
    )
    for col in ("layer", "class", "params", "non-zeros", "units", "multiply-adds"):
        table.add_column(col, justify="left" if col in ("layer", "class") else "right")
    for r in plan["layers"]:
        if r["removed"]:
            table.add_row(
                plain(r["layer"]), plain(r["class"]), "[red]removed[/]", "", "", f"{_num(r['macs_before'])} -> 0"
            )
            continue
        units = "" if r["units_after"] is None else f"{_num(r['live_units_before'])} -> {_num(r['live_units_after'])}"
        table.add_row(
            plain(r["layer"]),
            plain(r["class"]),
            f"{_num(r['params_before'])} -> {_num(r['params_after'])}",
            f"{_num(r['nonzeros_before'])} -> {_num(r['nonzeros_after'])}",
            units,
            f"{_num(r['macs_before'])} -> {_num(r['macs_after'])}",
        )
    console.print(table)
    b, a = plan["before"], plan["after"]
    console.print(
        f"parameters {_num(b['params'])} -> {_num(a['params'])}, non-zeros {_num(b['nonzeros'])} -> "
        f"{_num(a['nonzeros'])}; {_macs_line(b, a)}"
    )
    for name, kept in plan.get("kept_features", {}).items():
        removed = plan["feature_pruning"]["inputs"][name]["removed"]
        console.print(line(f"input {name}: keeps {len(kept)} features {kept}, removes {removed}"))
    if "removed_layers" in plan:
        console.print(line(f"removes layers: {', '.join(plan['removed_layers']) or 'none'}"))
    if "hidden" in plan:
        h = plan["hidden"]
        console.print(f"residual channels {h['hidden_before']} -> {h['hidden_after']}, removes {h['removed_channels']}")
    if "target" in plan:
        _render_target(plan["target"], console)
    for members in plan.get("groups", []):
        console.print(line(f"shrink together: {', '.join(members)}"))
    for note in plan["notes"]:
        console.print(line(note, "note:", "yellow"))


def _render_target(section: dict, console) -> None:
    """--target in a plan: the channels each layer keeps, and the predicted cost against the request."""
    from prunecli.outputs.terminal import line

    if "layers" in section:
        kept = ", ".join(f"{name} {v['before']}->{v['after']}" for name, v in section["layers"].items())
        console.print(line(f"target {section['kind']}={section['requested']:g}: channels kept per layer: {kept}"))
    elif "split" in section:  # -g transformer: the split of the removal across the axes, searched or default
        shares = ", ".join(f"{axis} {share:g}" for axis, share in section["split"].items())
        console.print(f"target {section['kind']}={section['requested']:g}: {section['allocated']} removed ({shares})")
    else:  # a unit step (KerasHub decoders) met the target with one sparsity: its own section lists the units
        how = section.get("band") or section.get("band_missed")  # the score order overshot the 2% band
        console.print(
            f"target {section['kind']}={section['requested']:g}: {section['allocated']} removed at sparsity"
            f" {section['sparsity']:g}"
            + (f" ({how}; score order alone: {section['score_order_fraction']:.4f})" if how else "")
        )
    if "latency" in section:  # latency=: the timed search, then its FLOPs allocation below
        lat = section["latency"]
        console.print(
            f"latency at batch {lat['batch']} on this machine: dense {lat['dense_ms']:.3g} ms, goal"
            f" {lat['goal_ms']:.3g} ms, chosen {lat['chosen_ms']:.3g} ms ({lat['timed']} candidates timed)"
        )
    if section["kind"] == "size":
        console.print(f"predicted file size {section['predicted_bytes']:,} bytes (nothing is written)")
    else:
        console.print(
            f"predicted {section['predicted_fraction']:.4f} of the dense model's {section['counted']} "
            f"({section['predicted']:,} of {section['dense']:,})"
        )
