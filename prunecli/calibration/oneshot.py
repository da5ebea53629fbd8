"""Calibrated one-shot pruning: Wanda and SparseGPT, layer by layer, on a few hundred examples.

Sequential calibration, as both papers do: the calibratable layers are visited in the order the
model calls them, and each layer's inputs are read from the model whose earlier layers are already
pruned (and updated), so a layer compensates for the error that reaches it instead of the error
compounding unseen. Only one layer's Hessian (d_in x d_in) exists at a time, accumulated batch by
batch; the cost is one (truncated) forward pass over the calibration examples per layer.

Layers that cannot be calibrated (depthwise, embedding, RNN cells, ...; see capture.view_of) are
pruned by magnitude first, with a note, so the calibrated layers see their pruned outputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from prunecli.calibration import capture, refit, sparsegpt, wanda
from prunecli.errors import ConfigError, DataError

CALIBRATED_METHODS = ("wanda", "sparsegpt")


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


def _plan(model, targets, batches, notes, fallback):
    """(calibrated [(view, calls per pass)] in call order, fallback targets)."""
    views, rest = [], []
    for t in targets:
        v = capture.view_of(t)
        if isinstance(v, str):
            fallback[t.name] = v
            rest.append(t)
        else:
            views.append(v)
    if views:
        import tensorflow as tf

        probe = tf.nest.map_structure(lambda a: a[:2], batches[0])
        order = capture.call_order(model, [v.target.layer for v in views], probe)
        called = []
        for v in views:
            if id(v.target.layer) in order:
                called.append(v)
            else:
                fallback[v.target.name] = "the model's forward pass never calls the layer"
                rest.append(v.target)
        views = sorted(called, key=lambda v: order[id(v.target.layer)][0])
        plan = [(v, order[id(v.target.layer)][1]) for v in views]
    else:
        plan = []
    for t in rest:
        notes.append(f"{t.layer_name}: not calibrated ({fallback[t.name]}); pruned by magnitude")
    return plan, rest


def _prune_count(target, config, requested, notes) -> int:
    from prunecli.selection.policy import override_sparsity

    own = override_sparsity(target, config)
    s = config.effective_sparsity if own is None else own
    requested[target.name] = s
    size = target.size
    floor = 0 if config.allow_empty else min(size, max(1, math.ceil(config.min_keep * size)))
    k = int(round(s * size))
    if k > size - floor:
        notes.append(f"{target.name}: kept {floor} of {size} groups (min_keep)")
        k = size - floor
    return k


def _magnitude(targets, config, result) -> None:
    import tensorflow as tf

    from prunecli.selection import kernels, policy

    if not targets:
        return
    scores = {t.name: tf.abs(tf.convert_to_tensor(t.variable)) for t in targets}
    ms = policy.build_masks(targets, scores, "element", config)
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


def prune_calibrated(
    model, targets: list, calibration_x: list, config, progress: Callable[[str], None] | None = None
) -> CalibrationResult:
    """Prune `targets` with config.method (wanda or sparsegpt) on the calibration inputs, in place.

    calibration_x: input batches (arrays, or lists/dicts of arrays for multi-input models), at most
    config.calibration_samples examples in all. Weights are updated in place (SparseGPT's updates,
    --reconstruct's refit) and pruned weights are exactly 0. Returns masks, requested sparsities,
    notes and the report section (per-layer relative output error on the calibration inputs:
    `error_before` with the mask applied to the original weights, `error_after` once updated and, with
    --reconstruct, refit; `error_before_refit` then holds the error before the refit).
    """
    import tensorflow as tf

    from prunecli.selection import kernels

    method = config.method
    if method not in CALIBRATED_METHODS:
        raise ConfigError(f"method {method!r} is not a calibrated method ({', '.join(CALIBRATED_METHODS)})")
    gran = config.granularity
    if gran.kind not in ("element", "nm"):
        raise ConfigError(f"--method {method} supports granularity element and n:m, not {gran}")
    start = time.perf_counter()
    batches = _check_batches(calibration_x)
    samples = capture.count_examples(batches)
    result = CalibrationResult()
    fallback: dict[str, str] = {}
    plan, rest = _plan(model, targets, batches, result.notes, fallback)
    _magnitude(rest, config, result)
    jit = use_xla()
    layers: dict[str, dict] = {}
    nm = (gran.rows, gran.cols) if gran.kind == "nm" else None

    if method == "wanda" and config.scope == "global":
        from prunecli.selection import policy

        calibrated = [v.target for v, _ in plan]
        _say(progress, f"calibrating wanda on {len(calibrated)} layers (global ranking)")
        scores = layer_scores("wanda", plan, model, batches)
        ms = policy.build_masks(calibrated, scores, "element", config)
        if config.reconstruct:  # refits (and masks) layer by layer from the dense weights
            layers.update(reconstruct(model, calibrated, ms.masks, calibration_x, progress)["layers"])
        else:
            kernels.apply_masks([t.variable for t in calibrated], [ms.masks[t.name] for t in calibrated])
        result.masks.update(ms.masks)
        result.requested.update(ms.requested)
        result.notes.extend(ms.notes)
        result.notes.append("wanda with --scope global ranks all layers at once, so it is not sequential")
    else:
        if config.scope != "layer":
            raise ConfigError(f"--method {method} supports --scope layer only")
        for i, (view, calls) in enumerate(plan):
            t = view.target
            _say(progress, f"calibrating {t.layer_name} ({i + 1}/{len(plan)}, {method})")
            hessian, rows = capture.HessianCapture(view, calls).run(model, batches)
            w_dense = view.to_matrix(tf.cast(tf.convert_to_tensor(t.variable), tf.float32))
            if nm:
                result.requested[t.name] = 1.0 - nm[0] / nm[1]
                k = 0
            else:
                k = _prune_count(t, config, result.requested, result.notes)
            if method == "wanda":
                score = wanda.scores(w_dense, tf.linalg.diag_part(hessian))
                keep = kernels.nm_keep_mask(score, *nm) if nm else wanda.per_output_keep(score, k)
                w_new = tf.where(keep, w_dense, tf.zeros_like(w_dense))
            else:
                w_new, keep = sparsegpt.prune_matrix(w_dense, hessian, t.name, prune_count=k, nm=nm, jit=jit)
            masked = tf.where(keep, w_dense, tf.zeros_like(w_dense))
            entry = {
                "d_in": view.d_in,
                "rows": int(rows),
                "error_before": round(refit.relative_error(masked, w_dense, hessian), 6),
                "error_after": round(refit.relative_error(w_new, w_dense, hessian), 6),
            }
            if config.reconstruct:
                entry["error_before_refit"] = entry["error_after"]
                w_new = refit.refit(w_new, w_dense, keep, hessian)
                entry["error_after"] = round(refit.relative_error(w_new, w_dense, hessian), 6)
            _assign(view, w_new)
            result.masks[t.name] = view.from_matrix(keep)
            layers[t.name] = entry
            del hessian
    result.section = {
        "method": method,
        "samples": samples,
        "sequential": not (method == "wanda" and config.scope == "global"),
        "dampening": sparsegpt.DAMPENING if method == "sparsegpt" else None,
        "refit_dampening": refit.DAMPENING if config.reconstruct else None,
        "block_size": sparsegpt.BLOCK if method == "sparsegpt" else None,
        "reconstruct": bool(config.reconstruct),
        "xla": jit,
        "time_s": round(time.perf_counter() - start, 3),
        "layers": layers,
        "fallback": fallback,
    }
    return result


def layer_scores(method: str, plan, model, batches) -> dict:
    """Element scores of the weight's shape per calibrated target, each layer read from the model as
    it is (no pruning between layers): Wanda's |w| * ||x||, or SparseGPT's OBS saliency w^2/[H^-1]_jj."""
    import tensorflow as tf

    out = {}
    for view, calls in plan:
        t = view.target
        hessian, _ = capture.HessianCapture(view, calls).run(model, batches)
        w = view.to_matrix(tf.cast(tf.convert_to_tensor(t.variable), tf.float32))
        if method == "wanda":
            score = wanda.scores(w, tf.linalg.diag_part(hessian))
        else:
            score = sparsegpt.obs_scores(w, hessian, t.name)
        out[t.name] = view.from_matrix(score)
        del hessian
    return out


def strategy_scores(method: str, targets, ctx) -> dict:
    """The registry's entry point (scoring.get("wanda").fn): plain element scores for the generic
    policy (global scope, gradual schedules, plan/sweep), with |w| for layers that cannot be
    calibrated. The pipeline's one-shot path calls prune_calibrated instead (sequential, updates)."""
    import tensorflow as tf

    if ctx.data is None:
        raise ConfigError(f"method {method!r} needs data (--data)")
    n = int(ctx.extras.get("calibration_samples", 128))
    batches = _check_batches(capture.take_examples(ctx.data, n))
    fallback: dict[str, str] = {}
    plan, rest = _plan(ctx.model, targets, batches, [], fallback)
    scores = layer_scores(method, plan, ctx.model, batches)
    for t in rest:
        scores[t.name] = tf.abs(tf.cast(tf.convert_to_tensor(t.variable), tf.float32))
    return scores


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
    calibrated are masked without a refit.
    """
    import numpy as np
    import tensorflow as tf

    from prunecli.selection import kernels

    start = time.perf_counter()
    batches = _check_batches(calibration_x)
    dense = dict(dense or {})
    for t in targets:
        if t.name not in dense:
            dense[t.name] = np.asarray(t.variable)
    fallback: dict[str, str] = {}
    notes: list[str] = []
    plan, rest = _plan(model, targets, batches, notes, fallback)
    kernels.apply_masks([t.variable for t in rest], [masks[t.name] for t in rest])
    layers = {}
    for i, (view, calls) in enumerate(plan):
        t = view.target
        _say(progress, f"reconstructing {t.layer_name} ({i + 1}/{len(plan)})")
        hessian, rows = capture.HessianCapture(view, calls).run(model, batches)
        w_dense = view.to_matrix(tf.cast(tf.convert_to_tensor(dense[t.name]), tf.float32))
        keep = view.to_matrix(tf.cast(masks[t.name], tf.bool))
        masked_w = tf.where(keep, w_dense, tf.zeros_like(w_dense))
        w_new = refit.refit(masked_w, w_dense, keep, hessian)
        layers[t.name] = {
            "d_in": view.d_in,
            "rows": int(rows),
            "error_before": round(refit.relative_error(masked_w, w_dense, hessian), 6),
            "error_after": round(refit.relative_error(w_new, w_dense, hessian), 6),
        }
        _assign(view, w_new)
        del hessian
    return {
        "method": "reconstruct",
        "samples": capture.count_examples(batches),
        "refit_dampening": refit.DAMPENING,
        "time_s": round(time.perf_counter() - start, 3),
        "layers": layers,
        "fallback": fallback,
        "notes": notes,
    }
