"""The policy: the one place that turns scores into masks and decides how much is pruned.

Guarantees: with a target sparsity, each layer (scope=layer) or the whole model (scope=global)
loses exactly round(sparsity * groups) groups, where a group is an element, a unit, a block or
(for N:M) fixed by N and M; no layer is emptied below `min_keep` unless `allow_empty`. Global
ranking first divides each layer's scores by that layer's mean score (normalize="mean"), so layers
with larger weights or more elements do not dominate; normalize="none" ranks raw scores.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import masking
from .config import Granularity, PruneConfig
from .errors import ConfigError
from .targets import Target, matches


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


def _layer_sparsity(target: Target, config: PruneConfig) -> float | None:
    chosen = config.effective_sparsity
    for rule in config.overrides:
        if matches(target, rule.pattern) and rule.sparsity is not None:
            chosen = rule.sparsity
    return chosen


def skipped_by_override(target: Target, config: PruneConfig) -> bool:
    return any(rule.skip and matches(target, rule.pattern) for rule in config.overrides)


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


def build_masks(targets: list[Target], scores: dict, level: str, config: PruneConfig) -> MaskSet:
    """Turn scores ({target.name: tensor}) into keep-masks following the config's policy."""
    import tensorflow as tf

    gran = config.granularity
    result = MaskSet()
    if gran.kind == "nm":
        for t in targets:
            s = scores[t.name]
            if level == "unit":
                s = t.expand_units(s)
            keep = masking.nm_keep_mask(t.to_matrix(s), gran.rows, gran.cols)
            result.masks[t.name] = t.from_matrix(keep)
            result.requested[t.name] = 1.0 - gran.rows / gran.cols
        return result
    if gran.kind not in ("element", "neuron", "block"):
        raise ConfigError(f"granularity {gran} is not a mask policy")

    groups = []
    for t in targets:
        g = _group_scores(t, scores[t.name], level, gran)
        groups.append(_Groups(t, g, _floor(int(tf.size(g)), config)))

    if config.threshold is not None:
        ks = [_threshold_count(g, config) for g in groups]
        _select_per_layer(groups, ks, result, gran)
        for g in groups:
            result.requested[g.target.name] = None
    elif config.scope == "global":
        _select_global(groups, config, result, gran)
    else:
        ks = []
        for g in groups:
            s = _layer_sparsity(g.target, config)
            n = int(tf.size(g.scores))
            k = int(round(s * n))
            if k > n - g.floor:
                result.notes.append(f"{g.target.name}: kept {g.floor} of {n} groups (min_keep)")
                k = n - g.floor
            ks.append(k)
            result.requested[g.target.name] = s
        _select_per_layer(groups, ks, result, gran)
    return result


def _threshold_count(g: _Groups, config: PruneConfig) -> int:
    """How many groups score below the threshold (an absolute value, or the layer's mean score)."""
    import tensorflow as tf

    if config.threshold == "mean":
        limit = tf.reduce_mean(g.scores)
    else:
        limit = tf.constant(config.threshold, tf.float32)
    n = int(tf.size(g.scores))
    k = int(tf.reduce_sum(tf.cast(g.scores < limit, tf.int32)))
    return min(k, n - g.floor)


def _select_per_layer(groups, ks, result: MaskSet, gran: Granularity) -> None:
    import tensorflow as tf

    chosen = masking.select_lowest([g.scores for g in groups], ks)
    for g, sel in zip(groups, chosen):
        keep = tf.logical_not(tf.reshape(sel, g.scores.shape))
        result.masks[g.target.name] = _expand(g.target, keep, gran)


def _select_global(groups, config: PruneConfig, result: MaskSet, gran: Granularity) -> None:
    """Rank all layers' (normalised) scores together; layers that would fall below their floor keep
    their floor, and the rest of the budget is re-ranked among the other layers, so the total is exact."""
    import tensorflow as tf

    sparsity = config.effective_sparsity
    normed = []
    for g in groups:
        s = g.scores
        if config.normalize == "mean":
            mean = tf.reduce_mean(s)
            s = s / tf.where(mean > 0, mean, tf.ones_like(mean))
        normed.append(s)
    sizes = [int(tf.size(s)) for s in normed]
    budget = int(round(sparsity * sum(sizes)))
    fixed: dict[int, int] = {}  # group index -> k, for layers held at their floor
    while True:
        free = [i for i in range(len(groups)) if i not in fixed]
        k_free = max(0, budget - sum(fixed.values()))
        k_free = min(k_free, sum(sizes[i] - groups[i].floor for i in free))
        chosen = masking.select_lowest_global([normed[i] for i in free], k_free) if free else []
        counts = {i: int(tf.reduce_sum(tf.cast(c, tf.int32))) for i, c in zip(free, chosen)}
        over = [i for i in free if counts[i] > sizes[i] - groups[i].floor]
        if not over:
            break
        for i in over:
            fixed[i] = sizes[i] - groups[i].floor
            result.notes.append(f"{groups[i].target.name}: kept {groups[i].floor} of {sizes[i]} groups (min_keep)")
    selections = dict(zip(free, chosen))
    if fixed:
        ids = sorted(fixed)
        for i, sel in zip(ids, masking.select_lowest([normed[i] for i in ids], [fixed[i] for i in ids])):
            selections[i] = sel
    for i, g in enumerate(groups):
        keep = tf.logical_not(tf.reshape(selections[i], g.scores.shape))
        result.masks[g.target.name] = _expand(g.target, keep, gran)
        result.requested[g.target.name] = sparsity
