"""`prunecli inspect`: what is in a model and what prunecli would do with each weight.

Works on pruned and unpruned models alike: it only reads the file (safe mode) and counts. For each
weight it says whether it is a pruning target and how (its units, and whether --shrink can remove
them physically), or why not (a bias, a normalisation layer, a layer type with no kernel prunecli
knows, a 1-D weight, or --include/--exclude).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from prunecli.structure.layers import quantization_mode

SCHEMA_VERSION = 1


@dataclass
class WeightInfo:
    name: str  # the attribute, e.g. "kernel"
    shape: list[int]
    params: int
    nonzeros: int
    sparsity: float
    target: bool
    how: str  # for a target: its units and whether they can be removed; otherwise why it is not one
    zero_units: int | None = None  # targets only: units (neurons/filters) whose weights are all zero
    units: int | None = None
    unit_axis: int | None = None
    shrinkable: bool | None = None  # --shrink can remove its pruned units physically
    quantized: str | None = None  # targets only: the Keras quantization mode of a layer `prune` refuses


@dataclass
class LayerInfo:
    name: str  # path through nested models, e.g. "encoder/dense"
    cls: str
    weights: list[WeightInfo] = field(default_factory=list)


@dataclass
class Inspection:
    model: dict  # path, format, flavour, keras_version, bytes, name
    layers: list[LayerInfo]
    totals: dict
    heads: dict = field(default_factory=dict)  # attention layer -> heads, kv_heads, head_dim, live_heads

    def to_dict(self) -> dict[str, Any]:
        layers = []
        for layer in self.layers:
            d = asdict(layer)
            d["class"] = d.pop("cls")
            layers.append(d)
        return {
            "schema_version": SCHEMA_VERSION,
            "kind": "inspect",
            "model": self.model,
            "layers": layers,
            "totals": self.totals,
            "heads": self.heads,
        }


def _children(layer) -> list:
    from prunecli.structure.keras_graph import children

    return children(layer)


def _why_not(layer, variable) -> str:
    cls = type(layer).__name__
    name = variable.name.rsplit("/", 1)[-1]
    if "Normalization" in cls:
        return "normalisation"
    if "bias" in name:
        return "bias"
    if not getattr(variable, "trainable", True):
        return "layer state"
    if len(variable.shape) < 2:
        return "1-D weight"
    return f"no kernel known for {cls}"


def _how(target, graph_layers: set[int], pinned: dict[str, int] | None = None) -> str:
    """How a target is pruned: its units, and whether --shrink removes them. `pinned`: {reason: units} of
    its units the channel graph keeps whole (tied.pinned_units): an output layer's units were called
    'shrinkable' here while `prune -g neuron --shrink` kept every one ('network output')."""
    count = target.units // target.gates
    units = f"{count} units, "
    if not target.shrinkable:
        return units + "mask only"
    if id(target.layer) not in graph_layers:
        return units + "mask only (inside a layer of its own class, which --shrink cannot slice)"
    if pinned:
        why = "; ".join(f"{reason}: {n}" for reason, n in sorted(pinned.items()))
        if sum(pinned.values()) >= count:
            return units + f"mask only (--shrink keeps them all: {why})"
        return units + f"shrinkable, {sum(pinned.values())} kept by --shrink ({why})"
    return units + "shrinkable"


def inspect_model(path: str, include=(), exclude=(), custom_objects: tuple[str, ...] = ()) -> Inspection:
    """Load the model in safe mode (with the user's --custom-objects) and describe every layer and weight."""
    from prunecli.io import models as model_io
    from prunecli.runtime import quiet_tensorflow
    from prunecli.structure import targets

    quiet_tensorflow()
    model, info = model_io.load(path, custom_objects=custom_objects)
    every = {(id(t.layer), t.attr): t for t in targets.walk(model)}
    chosen = {t.name for t in targets.without_frozen(model, targets.select(model, include, exclude), include)[0]}
    from prunecli.selection.tied import pinned_units  # units the channel graph keeps whole under --shrink
    from prunecli.structure.rebuild import reachable_layers  # a kernel inside a layer class of its own is not

    pinned = pinned_units(model, list(every.values()))
    layers = _describe_layers(model, every, chosen, reachable_layers(model), pinned)
    meta = {
        "path": str(info.path),
        "name": model.name,
        "format": info.format,
        "flavour": info.flavour,
        "keras_version": info.keras_version,
        "bytes": info.size_bytes,
        "notes": list(model_io.read_notes(info)),  # how the file was read (CuDNN layers as plain ones)
    }
    from prunecli.removal import heads

    return Inspection(meta, layers, _totals(model, layers), heads.heads_per_layer(model))


def _describe_layers(model, every: dict, chosen: set, graph_layers: set[int], pinned: dict) -> list[LayerInfo]:
    """Every layer, depth first through nested models (named by its path), with the weights it owns:
    a sub-layer's weights are described under the sub-layer, a shared layer's only at its first place.
    `every`: the targets by (id of their layer, attribute); `chosen`: the names --include/--exclude keep."""
    layers: list[LayerInfo] = []
    seen: set[int] = set()

    def visit(layer, prefix: str) -> None:
        path_name = f"{prefix}/{layer.name}" if prefix else layer.name
        nested = {id(v) for child in _children(layer) for v in child.weights}
        entry = LayerInfo(path_name, type(layer).__name__)
        for v in layer.weights:
            if id(v) in nested or id(v) in seen:
                continue  # described under the sub-layer that owns it, or already under a shared layer
            seen.add(id(v))
            target = every.get((id(layer), v.name.rsplit("/", 1)[-1]))
            chosen_here = target is not None and target.name in chosen
            entry.weights.append(_weight_info(layer, v, target, chosen_here, graph_layers, pinned))
        layers.append(entry)
        for child in _children(layer):
            visit(child, path_name)

    for layer in _children(model):
        visit(layer, "")
    return layers


def _weight_info(layer, v, target, chosen: bool, graph_layers: set[int], pinned: dict) -> WeightInfo:
    """One weight's counts, and whether and how it is pruned (`target`: its Target, None if it is not
    one; `chosen`: --include/--exclude keep it); a target also gets its units and how many are all zero.
    A target is counted as the targets read it: a quantized layer's codes in the kernel's layout (int4
    unpacked, Keras' grouped int4 centred on its zero points), not the bytes stored."""
    import numpy as np

    arr = np.asarray(v if target is None else target.variable)
    nz = int(np.count_nonzero(arr))
    w = WeightInfo(
        v.name.rsplit("/", 1)[-1],
        [int(d) for d in arr.shape],
        int(arr.size),
        nz,
        1.0 - nz / arr.size if arr.size else 0.0,
        target is not None and chosen,
        "",
    )
    if target is None:
        w.how = _why_not(layer, v)
        return w
    w.quantized = quantization_mode(layer)  # counted as the targets read it; `prune` refuses it (refuse_quantized)
    if w.quantized is not None:
        w.how = f"quantized ({w.quantized}): prune the float model"
    else:
        w.how = _how(target, graph_layers, pinned.get(target.name)) if chosen else _why_left(target)
    gates = target.gates
    moved = np.moveaxis(arr, target.unit_axis, -1).reshape(-1, gates, target.units // gates)
    w.units, w.unit_axis = target.units // gates, target.unit_axis
    kept = sum((pinned.get(target.name) or {}).values())
    w.shrinkable = target.shrinkable and id(target.layer) in graph_layers and kept < w.units
    w.zero_units = int(np.sum(~moved.any(axis=(0, 1))))  # a recurrent unit: all its gate columns
    return w


def _why_left(target) -> str:
    """Why `prune` leaves a target whole: the user froze its layer (structure/targets.without_frozen),
    or --include/--exclude leave it out."""
    from prunecli.structure.targets import is_frozen

    if is_frozen(target):
        return "frozen: --include '*' prunes it too"
    return "excluded (--include/--exclude)"


def _totals(model, layers: list[LayerInfo]) -> dict:
    """Parameter and non-zero counts of the whole model (as the report and verify count them), and over
    the pruning targets."""
    from prunecli.outputs.report import whole_counts

    tgt = [w for layer in layers for w in layer.weights if w.target]
    params, nz = whole_counts(model)
    t_params, t_nz = sum(w.params for w in tgt), sum(w.nonzeros for w in tgt)
    return {
        "params": params,
        "nonzeros": nz,
        "sparsity": 1.0 - nz / params if params else 0.0,
        "target_weights": len(tgt),
        "prunable_params": t_params,
        "prunable_nonzeros": t_nz,
        "prunable_sparsity": 1.0 - t_nz / t_params if t_params else 0.0,
    }


def render(result: Inspection, console) -> None:
    """One row per weight (layers without weights get one row), then the totals; names and notes as
    outputs.terminal prints them (no markup, overlong words cropped)."""
    from rich.table import Table

    from prunecli.outputs.terminal import line, plain

    m = result.model
    table = Table(
        title=plain(f"{Path(m['path']).name}: {m['name']} ({m['flavour']} {m['format']}, Keras {m['keras_version']})"),
        title_justify="left",
        header_style="bold",
    )
    for col, just in (
        ("layer", "left"),
        ("class", "left"),
        ("weight", "left"),
        ("shape", "left"),
        ("params", "right"),
        ("non-zeros", "right"),
        ("sparsity", "right"),
        ("dead units", "right"),
        ("prunecli", "left"),
    ):
        table.add_column(col, justify=just)
    for layer in result.layers:
        if not layer.weights:
            table.add_row(
                plain(layer.name), plain(layer.cls), "-", "", "", "", "", "", "[dim]no kernel (no weights)[/]"
            )
        for i, w in enumerate(layer.weights):
            how = f"[dim]skip: {w.how}[/]" if not w.target or w.quantized else f"[green]prune[/] {w.how}"
            zero = "" if w.zero_units is None else f"{w.zero_units}/{w.units}"
            table.add_row(
                plain(layer.name if i == 0 else ""),
                plain(layer.cls if i == 0 else ""),
                plain(w.name),
                "x".join(map(str, w.shape)),
                f"{w.params:,}",
                f"{w.nonzeros:,}",
                f"{w.sparsity:.1%}",
                zero,
                how,
            )
    t = result.totals
    table.add_section()
    table.add_row(
        "[bold]targets[/]",
        "",
        str(t["target_weights"]),
        "",
        f"{t['prunable_params']:,}",
        f"{t['prunable_nonzeros']:,}",
        f"{t['prunable_sparsity']:.1%}",
        "",
        "",
    )
    table.add_row(
        "[bold]whole model[/]", "", "", "", f"{t['params']:,}", f"{t['nonzeros']:,}", f"{t['sparsity']:.1%}", "", ""
    )
    console.print(table)
    for note in m.get("notes", ()):
        console.print(line(note, "note:"))
    for name, h in result.heads.items():  # attention layers: what -g head would work on
        kv = f", {h['kv_heads']} key/value groups" if h.get("kv_heads") not in (None, h["heads"]) else ""
        console.print(
            line(f"attention {name}: {h['live_heads']} of {h['heads']} heads live (head size {h['head_dim']}{kv})")
        )
