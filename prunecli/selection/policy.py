"""The policy: the one place that turns scores into masks and decides how much is pruned.

A *group* is what one decision removes: an element, a unit (neuron/filter, along the target's unit
axis), an RxC block of the (reduction, units) matrix view (edge blocks may be smaller), or for N:M
one weight of a run of M along the reduction axis.

Guarantees:
- sparsity s, scope=layer: each layer loses exactly round(s * groups) groups.
- sparsity s, scope=global: all layers' groups are ranked together and exactly round(s * total
  groups) are removed. Scores are first divided by their layer's mean score (normalize="mean"), so a
  layer ranks by how a group compares with the rest of its own layer: a layer whose weights are
  all small, or whose scores have another scale (gradients of a deep layer), is not wiped out.
  normalize="none" ranks raw scores, which magnitude pruning papers call "global magnitude".
- threshold t: groups scoring below t (raw scores), or below their layer's mean score ('mean').
- N:M: in every run of M consecutive weights along the reduction axis at most N are kept (exactly N
  in full runs), the layout of tfmot, TFLite and sparse tensor cores. It needs element scores.
- Overrides (recipe `overrides:`/`layers:`, glob -> sparsity | skip | {sparsity, skip}, the last
  matching rule wins): a skipped layer is left whole; a layer with its own sparsity is pruned to it
  exactly, and with scope=global the other layers share the global budget among themselves.
- Neuron masks, given the model: layers whose output channels meet in a residual merge are one set
  that loses round(s * channels) channels, the same in every member (groups.py says how).
- No layer keeps fewer than max(1, ceil(min_keep * groups)) groups unless allow_empty. When the floor
  wins, the layer keeps its floor and, with scope=global, the rest of the budget goes to the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prunecli.config import Granularity, PruneConfig
from prunecli.errors import ConfigError
from prunecli.selection import kernels as masking
from prunecli.selection.targets import Target, matches


@dataclass
class MaskSet:
    """Boolean keep-masks (True = kept) of each target's shape, and what the policy decided."""

    masks: dict[str, object] = field(default_factory=dict)
    requested: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.masks)


@dataclass
class _Groups:
    """A target's scores at the chosen granularity: one score per prunable group."""

    target: Target
    scores: object  # tensor of group scores (any shape)
    floor: int  # groups that must stay

    @property
    def size(self) -> int:
        n = 1
        for d in self.scores.shape:
            n *= int(d)
        return n


def override_sparsity(target: Target, config: PruneConfig) -> float | None:
    """The sparsity the last matching override gives this target, or None."""
    chosen = None
    for rule in config.overrides:
        if rule.sparsity is not None and matches(target, rule.pattern):
            chosen = rule.sparsity
    return chosen


def skipped_by_override(target: Target, config: PruneConfig) -> bool:
    return any(rule.skip and matches(target, rule.pattern) for rule in config.overrides)


def _check_scores(targets: list[Target], scores: dict, level: str) -> None:
    """A strategy's result must hold one tensor per target, of the weight's shape or (units,)."""
    for t in targets:
        if t.name not in scores:
            raise ValueError(f"the scoring strategy returned no scores for {t.name}")
        want = (t.units,) if level == "unit" else t.shape
        got = tuple(int(d) for d in scores[t.name].shape)
        if got != want:
            raise ValueError(f"scores for {t.name} have shape {got}; a {level}-level score needs {want}")


def _group_scores(target: Target, score, level: str, gran: Granularity):
    import tensorflow as tf

    score = tf.cast(score, tf.float32)
    if gran.kind == "neuron":
        if level == "unit":
            return score
        return tf.reduce_mean(target.to_matrix(score), axis=0)
    if level == "unit":
        score = target.expand_units(score)
    if gran.kind == "block":
        mat = target.to_matrix(score)
        r, c = gran.rows, gran.cols
        pr, pc = (-mat.shape[0]) % r, (-mat.shape[1]) % c
        padded = tf.pad(mat, [[0, pr], [0, pc]])
        ones = tf.pad(tf.ones_like(mat), [[0, pr], [0, pc]])
        shape = (padded.shape[0] // r, r, padded.shape[1] // c, c)
        return tf.reduce_sum(tf.reshape(padded, shape), (1, 3)) / tf.reduce_sum(tf.reshape(ones, shape), (1, 3))
    return score


def _expand(target: Target, keep, gran: Granularity):
    """A group-level keep mask back at the weight's full shape."""
    import tensorflow as tf

    if gran.kind == "neuron":
        return target.expand_units(keep)
    if gran.kind == "block":
        full = tf.repeat(tf.repeat(keep, gran.rows, axis=0), gran.cols, axis=1)
        return target.from_matrix(full[: target.rows, : target.units])
    return tf.reshape(keep, target.shape)


def _floor(n: int, config: PruneConfig) -> int:
    if config.allow_empty:
        return 0
    return min(n, max(1, math.ceil(config.min_keep * n)))


def build_masks(targets: list[Target], scores: dict, level: str, config: PruneConfig, model=None) -> MaskSet:
    """Turn scores ({target.name: tensor}, higher = more important) into keep-masks; see the module
    docstring for what is guaranteed. With `model`, neuron masks prune layers whose channels must
    shrink together (residual merges, concatenations, shared layers) as one set: see groups.py."""
    import tensorflow as tf

    _check_scores(targets, scores, level)
    gran = config.granularity
    result = MaskSet()
    active = []
    for t in targets:
        if skipped_by_override(t, config):
            result.masks[t.name] = tf.ones(t.shape, tf.bool)
            result.requested[t.name] = 0.0
        else:
            active.append(t)
    if gran.kind == "nm":
        _nm_masks(active, scores, level, config, result)
        return result
    if gran.kind not in ("element", "neuron", "block"):
        raise ConfigError(f"granularity {gran} is not a mask policy")

    groups = []
    for t in active:
        g = _group_scores(t, scores[t.name], level, gran)
        groups.append(_Groups(t, g, _floor(int(tf.size(g)), config)))
    if gran.kind == "neuron" and model is not None:
        from prunecli.selection.tied import select_tied

        if select_tied(model, groups, config, result):
            return result
    own = {g.target.name: override_sparsity(g.target, config) for g in groups}
    if config.scope == "layer" and config.threshold is None:
        ks = []
        for g in groups:
            sparsity = own[g.target.name]
            ks.append(_count(g, config.effective_sparsity if sparsity is None else sparsity, result))
        _select_per_layer(groups, ks, result, gran)
        return result
    fixed = [g for g in groups if own[g.target.name] is not None]
    ranked = [g for g in groups if own[g.target.name] is None]
    ks = [_count(g, own[g.target.name], result) for g in fixed]
    if config.threshold is not None:
        ks += [_threshold_count(g, config) for g in ranked]
        for g in ranked:
            result.requested[g.target.name] = None
        _select_per_layer(fixed + ranked, ks, result, gran)
    else:
        _select_per_layer(fixed, ks, result, gran)
        _select_global(ranked, config, result, gran)
    return result


def _count(g: _Groups, sparsity: float, result: MaskSet) -> int:
    """How many of a layer's groups to prune for this sparsity, held at the layer's floor."""
    k = int(round(sparsity * g.size))
    if k > g.size - g.floor:
        result.notes.append(f"{g.target.name}: kept {g.floor} of {g.size} groups (min_keep)")
        k = g.size - g.floor
    result.requested[g.target.name] = sparsity
    return k


def _nm_masks(targets: list[Target], scores: dict, level: str, config: PruneConfig, result: MaskSet) -> None:
    gran = config.granularity
    if level == "unit":
        raise ConfigError(
            "N:M needs a score per weight; this method gives one per unit (try magnitude, taylor or gradient)"
        )
    for t in targets:
        if override_sparsity(t, config) is not None:
            raise ConfigError(f"N:M fixes the sparsity at 1 - N/M; the override for {t.layer_name} can only skip it")
        keep = masking.nm_keep_mask(t.to_matrix(scores[t.name]), gran.rows, gran.cols)
        result.masks[t.name] = t.from_matrix(keep)
        result.requested[t.name] = 1.0 - gran.rows / gran.cols


def _threshold_count(g: _Groups, config: PruneConfig) -> int:
    """How many groups score below the threshold (an absolute value, or the layer's mean score)."""
    import tensorflow as tf

    if config.threshold == "mean":
        limit = tf.reduce_mean(g.scores)
    else:
        limit = tf.constant(config.threshold, tf.float32)
    k = int(tf.reduce_sum(tf.cast(g.scores < limit, tf.int32)))
    return min(k, g.size - g.floor)


def _select_per_layer(groups: list[_Groups], ks: list[int], result: MaskSet, gran: Granularity) -> None:
    import tensorflow as tf

    if not groups:
        return
    chosen = masking.select_lowest([g.scores for g in groups], ks)
    for g, sel in zip(groups, chosen, strict=True):
        keep = tf.logical_not(tf.reshape(sel, g.scores.shape))
        result.masks[g.target.name] = _expand(g.target, keep, gran)


def _select_global(groups: list[_Groups], config: PruneConfig, result: MaskSet, gran: Granularity) -> None:
    """Rank all layers' (normalised) scores together; layers that would fall below their floor keep
    their floor, and the rest of the budget is re-ranked among the other layers, so the total is exact."""
    import tensorflow as tf

    if not groups:
        return
    sparsity = config.effective_sparsity
    normed = []
    for g in groups:
        s = g.scores
        if config.normalize == "mean":
            mean = tf.reduce_mean(s)
            s = s / tf.where(mean > 0, mean, tf.ones_like(mean))
        normed.append(s)
    sizes = [g.size for g in groups]
    budget = int(round(sparsity * sum(sizes)))
    at_floor: dict[int, int] = {}  # group index -> k, for layers held at their floor
    while True:
        free = [i for i in range(len(groups)) if i not in at_floor]
        k_free = max(0, budget - sum(at_floor.values()))
        k_free = min(k_free, sum(sizes[i] - groups[i].floor for i in free))
        chosen = masking.select_lowest_global([normed[i] for i in free], k_free) if free else []
        counts = {i: int(tf.reduce_sum(tf.cast(c, tf.int32))) for i, c in zip(free, chosen, strict=True)}
        over = [i for i in free if counts[i] > sizes[i] - groups[i].floor]
        if not over:
            break
        for i in over:
            at_floor[i] = sizes[i] - groups[i].floor
            result.notes.append(f"{groups[i].target.name}: kept {groups[i].floor} of {sizes[i]} groups (min_keep)")
    selections = dict(zip(free, chosen, strict=True))
    if at_floor:
        ids = sorted(at_floor)
        for i, sel in zip(
            ids, masking.select_lowest([normed[i] for i in ids], [at_floor[i] for i in ids]), strict=True
        ):
            selections[i] = sel
    for i, g in enumerate(groups):
        keep = tf.logical_not(tf.reshape(selections[i], g.scores.shape))
        result.masks[g.target.name] = _expand(g.target, keep, gran)
        result.requested[g.target.name] = sparsity
