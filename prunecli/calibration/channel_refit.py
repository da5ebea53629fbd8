"""One-shot channel removal that survives: after neuron masks, refit the later layers to the dense output.

Removing a channel takes an input away from every layer that reads it; with the plain mask those layers
keep weights fitted to inputs that no longer come, and the error compounds down the network (a BN CNN
at half its parameters lost 20 points before fine-tuning, bench/TARGET.md). ThiNet (Luo et al., ICCV
2017) and "Channel Pruning" (He et al., ICCV 2017) refit the reading layer instead: least squares on
its kept input channels so that, on calibration data, it reproduces what the dense layer computed.

For one layer in the (d_in, d_out) matrix view of views.py, with X_p its inputs in the pruned model (the
layers before it already refit) and X_d the dense model's inputs to the same layer on the same examples,
each output unit solves

    min || X_p[:, S] w_S + b - Y_d ||^2,   Y_d = X_d w_dense + b_dense   (+ a small ridge towards w_dense)

S the live input rows, b the bias (a column of ones appended to X, for layers that have one). The normal
equations need H_pp = X_p[:, S]^T X_p[:, S] / n and X_p[:, S]^T Y_d / n, and the output error
||Y_d||^2: all are blocks of the Hessian of the stacked rows [X_p[:, S] | Z_d], which capture.row_stats
accumulates with the same compiled step and input scaling as every other capture (one layer at a
time), and refit.refit solves them with X_p^T Y_d / n as its target. Z_d is the dense output Y_d itself
when the layer has fewer outputs than inputs, else the dense inputs X_d (Y_d is then Z_d w_dense): the
stacked Hessian is (|S| + min(d_out, d_in))^2 floats. It was (2 d_in)^2, the removed rows and the dense
inputs included: the Dense after a 11,136-wide Flatten of the zoo's audioanalytics CNN (two thirds of its
parameters) held 2 GB of Hessian and its copies and took 84 s; at half the channels it is now 5,394 + 128
wide. Inputs from the *pruned* model make it channel pruning's objective, not ThiNet's: an error a
layer's refit cannot remove reaches the next layer's refit, which compensates.

- The rows of a removed input channel are set to 0 and left out of the stacked rows: the channel is
  exactly 0 in the masked model (its bias and BatchNorm parameters follow the mask), so nothing
  changes, and --shrink deletes them. A removed channel that still carries a value on the first
  calibration batch (a bias-only unit through an activation with f(0) != 0) keeps its rows, fitted like
  the others.
- A unit the layer's own mask removes stays removed: its column (and bias) stays 0.
- Layers whose inputs pruning did not change are skipped (their refit is the identity), and so are
  layers called more than once per pass, depthwise layers and what views.py cannot see as X @ W: they
  keep the plain mask, with a note when pruning reached them.
- A grouped convolution (groups > 1) is block-diagonal: each group's filters read only that group's
  input channels, so it is one least-squares problem per group, on that group's slice of the input
  and its own columns, solved one after the other (a removed group's filters stay 0; a group whose
  refit is not better keeps its weights, named in the entry's `groups_not_refit`). Its entry's errors
  are pooled over the refit groups' outputs. A grouped convolution with a removed group changes its
  output, so the layers reading it are refit too.
- A refit that is not finite, or does not lower the layer's output error, is not assigned.
- Accumulating the stacked Hessian costs rows x (2 d_in)^2 multiply-adds, rows = calibration examples x
  output positions. A wide convolution on a large map went past minutes per layer (the zoo's tempo CNN:
  kernels of 256 taps x 36 channels at 1,024 positions per example, 31 layers: `--target` ran over 5
  min). Past REFIT_MACS a layer's rows are thinned to an even stride (every k-th position of every
  example); when that leaves fewer rows than inputs (the fit would be underdetermined) it keeps the
  plain mask, with a note. So does a layer whose HESSIAN_COPIES stacked Hessians do not fit in free
  memory (CREPE's Dense after a 65,536-wide Flatten: 64 GiB each; it ended in an out-of-memory exit).
- Each refit runs both models up to its layer on the calibration examples, so a deep model on long
  inputs pays refits x forward passes (SpliceAI: 38 refits, 7 x 10^9 multiply-adds per 10,100-base
  example, over 10 minutes at 32 examples). Past REFIT_CAPTURE_MACS in all, the refit uses the first examples
  only, as many as fit (their positions still give each layer many rows), with a note.
- Memory: the stacked Hessian is accumulated block by block (never the rows), so what a refit holds
  besides it is one forward pass: Keras keeps every tensor of a functional pass until the pass ends,
  so a pass up to a late layer holds the whole network's activations for its examples (the zoo's
  OpenFace: 8.5 MiB per example, 270 MiB for a pass of 32). Past REFIT_PASS_BYTES a layer's passes
  take fewer examples each (`examples_per_pass` in its entry): the same examples in all, the same fit.
  The stopped passes' frames are released as they stop (capture._release): they sat in reference
  cycles, so each refit's three passes stayed alive until Python's collector ran, and OpenFace's
  `--target params=0.5` grew to 2.1 GB peak RSS over its 35 refits.

BatchNorm statistics are NOT re-estimated afterwards (run/steps.prune_oneshot), as they are after a plain
channel mask: every layer whose inputs changed is refit to reproduce its dense output, so the dense
statistics of the BatchNorm after it describe what it now receives, and a layer the refit skips is
compensated by the next refit layer, which was fitted with those statistics in place. Re-estimating
them after the refit changed every later layer's inputs from what it was fitted on: one-shot accuracy at
half the parameters, refit then re-estimated against refit alone, 0.514 against 0.904 on a ResNet-style
net, 0.634 against 0.767 on a MobileNetV2-style one, 0.964 against 0.962 on a VGG-style one
(bench/STRUCTURED.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from prunecli.calibration import capture, refit, views
from prunecli.structure import channels, folded_steps, keras_graph
from prunecli.structure import targets as structure_targets

REFIT_CLASSES = ("Dense", "Conv1D", "Conv2D", "Conv3D", *views.TRANSPOSED)
DAMPENING = refit.DAMPENING  # the ridge, relative to the mean diagonal of H_pp, at least
UNDERDETERMINED = 0.25  # and this times inputs per calibration row: a Dense head read from a Flatten
# has more inputs than 128 examples give rows, and a weak ridge then fits them exactly (bench/STRUCTURED.md)
HESSIAN_COPIES = 4  # width^2 floats (_stacked_width): the stacked Hessian, the product added to it, its blocks
REFIT_MACS = 2e11  # multiply-adds one layer's Hessian may take (seconds on 2 cores): rows are thinned past it
REFIT_CAPTURE_MACS = 1e12  # multiply-adds the refits' forward passes may take in all: fewer examples past it
# activations one forward pass up to a refit layer may hold (Keras keeps every tensor of a functional pass
# until it ends): fewer examples per pass past it, the same examples in all. Measured on OpenFace's
# `--target params=0.5`, alone (bench/ZOO.md): 64 MiB 1,124 MB peak / refit 92 s, 128 MiB 1,241 MB / 62 s,
# 256 MiB 1,447 MB / 54 s: smaller passes run more ops eagerly, so the time grows fast below 128 MiB.
REFIT_PASS_BYTES = 128 * 2**20


def _say(progress, message: str) -> None:
    if progress is not None:
        progress(message)


def _paired_layers(model, dense_model) -> dict[int, object]:
    """{id(layer of model): the same layer of dense_model}, paired by position: a clone has the same
    layers in the same order (of the same classes and weight shapes; an unnamed layer may be renamed)."""

    def shape(layer):
        return type(layer), [tuple(w.shape) for w in layer.weights]

    mine, theirs = keras_graph.all_layers(model)[1:], keras_graph.all_layers(dense_model)[1:]  # [0]: the model
    if len(mine) != len(theirs) or any(shape(a) != shape(b) for a, b in zip(mine, theirs, strict=True)):
        raise ValueError("the dense model is not a copy of the pruned model (its layers differ)")
    return {id(a): b for a, b in zip(mine, theirs, strict=True)}


def _changed_inputs(g, dead) -> dict:
    """{tensor key: whether pruning changed it}: a mixer, recurrent or depthwise layer with a removed unit changes
    its output, and whatever reads a changed tensor changes too."""
    changed: dict = {}
    for call in g.calls:
        hit = any(changed.get(k, False) for k in call.inputs)
        if call.kind in (*channels.MIXERS, "recurrent"):  # an RNN's removed units are channels of its output too
            hit = hit or bool(dead[call.outputs[0]].any())
        elif call.kind == "channelwise":  # a depthwise filter removed by its own mask
            hit = hit or bool((dead[call.outputs[0]] & ~dead[call.inputs[0]]).any())
        for k in call.outputs:
            changed[k] = hit
    return changed


def _why_not(call, g, kernel_targets) -> str | None:
    """Why a layer that reads a changed tensor cannot be refit, or None."""
    layer = call.layer
    name = type(layer).__name__
    if name not in REFIT_CLASSES:
        return f"{name} layers are not refit"
    if len(g.calls_of(layer)) != 1:
        return "it is called more than once"
    t = kernel_targets.get(id(layer))
    if t is None:
        return "its kernel is not a weight prunecli reads"
    view = _view(t)
    return view if isinstance(view, str) else None


def _groups(layer) -> int:
    return int(getattr(layer, "groups", 1) or 1)


def _view(target):
    """views.view_of, or a grouped convolution's view of one group: its kernel as Keras holds it (kh x kw x
    c_in/groups inputs, every group's filters as columns), which _refit_one solves group by group, each on
    its own input channels and filters (the layer is block-diagonal: a least-squares problem per group)."""
    layer = target.layer
    if _groups(layer) > 1 and type(layer).__name__ in ("Conv1D", "Conv2D", "Conv3D") and target.attr == "kernel":
        return views.LayerView(target, "conv", target.rows, target.units)
    return views.view_of(target)


def _solved_rows(model, layer, view, live, batches):
    """Bool per row of the (d_in, d_out) view that the refit solves for, one row of them per group (one
    in all but a grouped convolution): its input channel is live, or removed but still carrying a value
    on the first calibration batch (the module docstring). A conv's rows are kh*kw*c_in with the channel
    fastest (c_in of one group for a grouped one)."""
    import numpy as np

    live = np.asarray(live, bool)
    if not live.all() and batches:
        x = capture.layer_input(model, layer, batches[0])
        if x is not None:
            x = np.abs(np.asarray(view.channels_last(x), np.float32))
            live = live | (x.max(axis=tuple(range(x.ndim - 1))) > 0)
    groups = _groups(layer)
    per_group = np.reshape(live, (groups, -1))
    return np.stack([np.tile(g, view.d_in // max(len(g), 1)) for g in per_group])


def _stacked_width(solved: int, d: int, d_out: int) -> int:
    """Columns of the stacked rows: the `solved` rows of X_p (its ones column included), then the dense
    side, Y_d (d_out columns) or X_d with its ones column (d), whichever is narrower."""
    return solved + min(d_out, d)


def _too_big(view, solved: int, width: int, examples: int, g, call, length: int | None) -> str | None:
    """Why the layer is not refit on this machine (memory, or time: `_row_stride`), or None."""
    from prunecli.io.models.memory import available_memory

    need, free = HESSIAN_COPIES * 4 * width**2, available_memory()
    if need > free:
        return f"{HESSIAN_COPIES} stacked {width} x {width} Hessians take {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB is free"
    if not _row_stride(g, call, solved, width, examples, length):
        return f"{view.d_in} inputs at {examples} examples: past {REFIT_MACS:.0e} multiply-adds, too few rows to fit"
    return None


def _within_capture_budget(model, batches, refits: int, notes: list) -> list:
    """The calibration batches, cut to the first examples when `refits` forward passes of both models
    over all of them would take more than REFIT_CAPTURE_MACS (module docstring)."""
    if not batches:
        return batches
    per_example = 2 * refits * capture.example_macs(model, batches)  # whole passes
    examples = capture.count_examples(batches)
    if not per_example or examples * per_example <= REFIT_CAPTURE_MACS:
        return batches
    keep = max(1, int(REFIT_CAPTURE_MACS // per_example))
    notes.append(
        f"--reconstruct: refit on the first {keep} of {examples} calibration examples: {refits} refits each run the "
        f"model up to their layer, {per_example // (2 * refits):.2g} multiply-adds per example"
    )
    return capture.chunks(capture.chunks(batches, size=keep, exact=True)[:1])


def _pass_bytes(g, length: int | None) -> dict[str, int]:
    """{call name: float32 bytes per example of every tensor a forward pass computes up to that call}:
    the model's inputs and each earlier call's outputs (calls in the graph's topological order), what a
    functional model's pass holds when it stops at the call. An open axis counts as `length`."""

    def nbytes(key) -> int:
        return 4 * math.prod(int(length or 1) if n is None else int(n) for n in g.shapes[key][1:])

    counted = set(g.inputs)  # an input call's output is the model's input: counted once
    held, out = sum(nbytes(k) for k in counted), {}
    for call in g.calls:
        out[call.name] = held
        held += sum(nbytes(k) for k in call.outputs if k not in counted)
        counted.update(call.outputs)
    return out


def _passes(batches, per_example: int, fixed: bool) -> list:
    """The calibration batches re-split so that one forward pass holds at most REFIT_PASS_BYTES of
    activations (`per_example` bytes each): the same examples, in passes of fewer of them. The Hessian
    blocks are accumulated row by row, so the fit does not change; a model with a fixed batch size keeps
    its passes."""
    size = max(1, min(capture.CHUNK, REFIT_PASS_BYTES // max(per_example, 1)))
    if fixed or not batches or all(capture.count_examples([x]) <= size for x in batches):
        return batches
    return capture.chunks(batches, size)


def _row_stride(g, call, solved: int, width: int, examples: int, length: int | None = None) -> int:
    """Every how many rows to keep so the layer's stacked Hessian (`width` columns) stays within
    REFIT_MACS; 0 when even then there would be fewer rows than `solved` inputs (module docstring). An
    open position axis counts as `length`."""
    shape = g.shapes[call.outputs[0]]
    positions = math.prod(int(length or 1) if n is None else int(n) for n in shape[1:-1]) or 1
    rows = positions * max(examples, 1)
    stride = max(1, math.ceil(rows * width**2 / REFIT_MACS))
    return stride if stride == 1 or rows // stride >= solved else 0


def _stacked_rows(
    model, dense_model, layer, dense_layer, view, batches, bias: bool, solved, projection, stride=1, channels_=None
):
    """Blocks of [X_p[:, solved] | Z_d] (module docstring): the layer's inputs in the pruned model, its
    `solved` columns only (indices into the view's rows and, with a bias, the ones column d_in), beside
    the dense model's inputs on the same examples (with a ones column), times `projection` (the dense
    weights, their bias row included) when given; every `stride`-th row. `channels_`: the input channels
    read (a slice: one group's of a grouped convolution), all when None."""
    import tensorflow as tf

    max_rows = max(1, capture.PATCH_BYTES // (4 * 2 * (view.d_in + 1)))
    for x in batches:
        x_p = capture.layer_input(model, layer, x)
        x_d = capture.layer_input(dense_model, dense_layer, x)
        if x_p is None or x_d is None:
            return
        if channels_ is not None:
            pick = (slice(None), channels_) if view.channels_first else (..., channels_)
            x_p, x_d = x_p[pick], x_d[pick]
        for bp, bd in zip(view.blocks(x_p, max_rows), view.blocks(x_d, max_rows), strict=True):
            if stride > 1:
                bp, bd = bp[::stride], bd[::stride]
            if bias:
                ones = tf.ones((int(bp.shape[0]), 1), tf.float32)
                bp, bd = tf.concat([bp, ones], axis=1), tf.concat([bd, ones], axis=1)
            bd = bd if projection is None else tf.matmul(bd, projection)
            yield tf.concat([tf.gather(bp, solved, axis=1), bd], axis=1)


def _refit_block(model, dense_model, layer, dense_layer, view, batches, w_now, w_dense, rows, units, stride, channels_):
    """Refit one least-squares problem: the layer's columns w_now (d x d_out, the bias row last when the
    layer has one) on its `rows` (_solved_rows) of the inputs `channels_` (all, or one group's); the new
    (d x d_out) weights and the report's figures, or why they are not better."""
    import numpy as np
    import tensorflow as tf

    has_bias = int(w_now.shape[0]) == view.d_in + 1
    d = int(w_now.shape[0])
    solved = np.flatnonzero(np.append(rows, True) if has_bias else rows)
    k, d_out = len(solved), int(w_dense.shape[1])
    projection = w_dense if d_out <= d else None  # stack Y_d itself, else X_d (module docstring)
    stats = capture.row_stats(
        _stacked_rows(
            model, dense_model, layer, dense_layer, view, batches, has_bias, solved, projection, stride, channels_
        ),
        _stacked_width(k, d, d_out),
        full=True,
    )
    why = stats.degenerate()
    if why is not None:
        return why
    h, stats.hessian = stats.hessian, None  # only its blocks stay alive
    h_pp, h_pz, h_zz = h[:k, :k], h[:k, k:], h[k:, k:]
    del h
    target = h_pz if projection is not None else tf.matmul(h_pz, w_dense)  # X_p^T Y_d / n
    keep = np.outer(np.ones(k, bool), np.asarray(units, bool))  # a unit the layer's own mask removed stays removed
    start = tf.where(keep, tf.gather(w_now, solved), 0.0)
    dampening = max(DAMPENING, UNDERDETERMINED * k / max(int(stats.rows), 1))
    w_new = refit.refit(start, tf.gather(w_dense, solved), keep, h_pp, dampening=dampening, target=target)
    kept = np.flatnonzero(units)  # the error of the units that remain (a removed unit's output is gone)
    if projection is not None:
        energy = tf.reduce_sum(tf.gather(tf.linalg.diag_part(h_zz), kept))
    else:
        w_kept = tf.gather(w_dense, kept, axis=1)
        energy = tf.reduce_sum(w_kept * tf.matmul(h_zz, w_kept))

    def error(w) -> float:
        return refit.output_error(tf.gather(w, kept, axis=1), h_pp, tf.gather(target, kept, axis=1), energy)

    before, after = error(tf.gather(w_now, solved)), error(w_new)
    if not bool(tf.reduce_all(tf.math.is_finite(w_new))) or not math.isfinite(after):
        return "its refit weights are not finite"
    if after >= before:
        return f"the refit did not lower its output error ({before:.4g} -> {after:.4g})"
    figures = {
        "rows": int(stats.rows),
        "dampening": round(dampening, 6),
        "hessian_width": int(stats.d_in),
        "error_before": round(before, 6),
        "error_after": round(after, 6),
        "energy": float(energy) / stats.scale**2,  # unscaled: groups are pooled
    }
    return tf.scatter_nd(solved[:, None], w_new, (d, d_out)), figures  # the rows left out are 0


def _refit_one(model, dense_model, call, dense_layer, view, batches, rows, units, stride: int = 1) -> dict | str:
    """Refit one layer in place on its `rows` (_solved_rows: one row per group); its report entry, or why
    it keeps its weights. A grouped convolution is refit group by group (each group's filters on its own
    input channels); a group whose refit is not better keeps its weights, and the layer is refit when one
    group was."""
    import numpy as np
    import tensorflow as tf

    layer = call.layer
    bias_var = getattr(layer, "bias", None) if getattr(layer, "use_bias", False) else None
    has_bias = bias_var is not None
    w_now = view.to_matrix(tf.cast(tf.convert_to_tensor(view.target.variable), tf.float32))
    w_dense = view.to_matrix(tf.cast(tf.convert_to_tensor(dense_layer.kernel), tf.float32))
    if has_bias:
        w_now = tf.concat([w_now, tf.cast(bias_var, tf.float32)[None, :]], axis=0)
        w_dense = tf.concat([w_dense, tf.cast(dense_layer.bias, tf.float32)[None, :]], axis=0)
    groups, units = len(rows), np.asarray(units, bool)
    width = int(w_now.shape[1]) // groups  # a group's filters
    c_in = int(view.target.shape[-2]) if groups > 1 else None  # its input channels: kernel (kh, kw, c_in/groups, c_out)
    columns, done, whys = [], [], []
    for g in range(groups):
        cols = slice(g * width, (g + 1) * width)
        if groups > 1 and not units[cols].any():  # a removed group: its filters stay 0
            columns.append(w_now[:, cols])
            continue
        channels_ = None if groups == 1 else slice(g * c_in, (g + 1) * c_in)
        got = _refit_block(
            model, dense_model, layer, dense_layer, view, batches, w_now[:, cols], w_dense[:, cols], rows[g],
            units[cols], stride, channels_,
        )  # fmt: skip
        if isinstance(got, str):
            whys.append(got if groups == 1 else f"group {g}: {got}")
            columns.append(w_now[:, cols])
        else:
            columns.append(got[0])
            done.append(got[1])
    if not done:
        return "; ".join(whys) or "every group of it was removed"
    w_new = tf.concat(columns, axis=1)
    view.target.variable.assign(tf.cast(view.from_matrix(w_new[: view.d_in]), view.target.variable.dtype))
    if has_bias:
        bias_var.assign(tf.cast(w_new[view.d_in], bias_var.dtype))
    energy = sum(f["energy"] for f in done) or 1.0

    def pooled(key: str) -> float:  # the relative error over the refit groups' outputs together
        return round(math.sqrt(sum(f[key] ** 2 * f["energy"] for f in done) / energy), 6)

    entry = {
        "d_in": view.d_in,
        "rows": done[0]["rows"],
        "row_stride": stride,
        "examples_per_pass": max(capture.count_examples([x]) for x in batches),
        "dampening": max(f["dampening"] for f in done),
        "inputs_removed": int(rows.size - np.sum(rows)),
        "hessian_width": max(f["hessian_width"] for f in done),
        "error_before": done[0]["error_before"] if groups == 1 else pooled("error_before"),
        "error_after": done[0]["error_after"] if groups == 1 else pooled("error_after"),
    }
    if groups > 1:
        entry.update(groups=groups, groups_refit=len(done), groups_not_refit=whys)
    return entry


def refit_channels(
    model,
    dense_model,
    run_targets: list,
    masks: dict,
    calibration_x: list,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Refit, in call order, every layer whose inputs neuron pruning changed, to the dense model's
    output of that layer on `calibration_x` (see the module docstring). `model` holds the masks (and
    their followers) already; `dense_model` is its unpruned copy (same layers, same names), taken
    before masking; `masks` are the run's keep-masks by target name. Weights change in place; the
    masks stay exact (removed units and removed input rows are 0).

    Returns the report section: per refit layer `error_before` (the mask alone, relative to the dense
    output, on the calibration inputs) and `error_after`; `skipped` {layer: why}; `notes`.
    """
    start = time.perf_counter()
    section: dict = {"method": "channel refit", "layers": {}, "skipped": {}, "notes": []}
    try:
        g = channels.graph_of(model)
    except channels.GraphUnsupported as exc:
        section["notes"].append(f"--reconstruct: channels not refit ({exc})")
        return section
    pairs = _paired_layers(model, dense_model)
    dead = channels.dead_channels(g, run_targets, masks)
    changed = _changed_inputs(g, dead)
    kernel_targets = {id(t.layer): t for t in structure_targets.walk(model) if t.attr == "kernel"}
    batches = capture.chunks(calibration_x)
    todo = []
    for call in g.calls:
        if call.kind not in channels.MIXERS or not call.inputs or not changed.get(call.inputs[0], False):
            continue
        why = _why_not(call, g, kernel_targets)
        if why is not None:
            section["skipped"][call.name] = why
            continue
        todo.append((call, _view(kernel_targets[id(call.layer)])))
    batches = _within_capture_budget(model, batches, len(todo), section["notes"])
    examples, length = capture.count_examples(batches), capture.data_length(batches)
    frames = folded_steps.rows_per_example(model)  # a layer run on every frame sees frames x examples rows
    held, fixed = _pass_bytes(g, length), keras_graph.fixed_batch(model) is not None
    for i, (call, view) in enumerate(todo):
        bias = int(bool(getattr(call.layer, "use_bias", False)))
        passes = _passes(batches, held.get(call.name, 0), fixed)
        rows = _solved_rows(model, call.layer, view, ~dead[call.inputs[0]], passes)
        solved = int(rows.sum(axis=1).max()) + bias  # a grouped convolution's largest group
        width = _stacked_width(solved, view.d_in + bias, view.d_out // len(rows))
        seen = examples * frames.get(id(call.node.outputs[0]), 1)
        why = _too_big(view, solved, width, seen, g, call, length)
        if why is not None:
            section["skipped"][call.name] = why
            continue
        stride = _row_stride(g, call, solved, width, seen, length)
        _say(progress, f"refitting {call.name} to the dense output ({i + 1}/{len(todo)})")
        units = ~dead[call.outputs[0]]
        entry = _refit_one(model, dense_model, call, pairs[id(call.layer)], view, passes, rows, units, stride)
        if isinstance(entry, str):
            section["skipped"][call.name] = entry
        else:
            section["layers"][call.name] = entry
    for name, why in section["skipped"].items():
        section["notes"].append(f"{name}: not refit to the dense output ({why}); it keeps the plain mask")
    section["samples"] = capture.count_examples(batches)
    section["refit_dampening"] = DAMPENING
    section["time_s"] = round(time.perf_counter() - start, 3)
    return section
