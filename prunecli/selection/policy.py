"""The policy: the one place that turns scores into masks and decides how much is pruned.

A *group* is what one decision removes: an element, a unit (neuron/filter, along the target's unit
axis), an RxC block of the (reduction, units) matrix view (edge blocks may be smaller), or for N:M
one weight of a run of M along the reduction axis.

Guarantees:
- sparsity s, scope=layer: each layer loses exactly round(s * groups) groups.
- sparsity s, scope=global: all layers' groups are ranked together and exactly round(s * total
  groups) are removed. How layers are compared is `normalize`:
  - "mean": scores are first divided by their layer's mean score, so a layer ranks by how a
    group compares with the rest of its own layer: a layer whose weights are all small, or whose
    scores have another scale (gradients of a deep layer), is not wiped out.
  - "none" ranks raw scores, which magnitude pruning papers call "global magnitude".
  - "lamp" (default; best in bench/ACCURACY.md): LAMP scores (Lee et al., ICLR 2021): with a
    layer's scores sorted ascending, score(u) = s_u^2 / sum over v >= u of s_v^2 (for magnitude, the
    paper's w^2), the share of the layer's remaining squared score that u carries; a layer's best
    group scores 1. Tied scores share the smallest denominator, so positions do not matter.
  - "erk": no common ranking; the budget is allocated first, by Erdos-Renyi-Kernel (Evci et al.,
    ICML 2020, RigL): layer l keeps a density proportional to (sum of its kernel's dims) / (product of
    its kernel's dims), scaled so that exactly round(s * total groups) go, capped at 1 (the excess is
    redistributed); then each layer is pruned layer-wise to its share.
  - "owl": no common ranking either; OWL's budget (Yin et al., ICML 2024): a block whose scores
    hold more outliers keeps more, all blocks' densities within 2 x 0.08 of each other
    (selection/layer_budgets.py); then each layer is pruned layer-wise to its share.
- threshold t: groups scoring below t (raw scores), or below their layer's mean score ('mean').
- N:M: in every group of M consecutive weights along the reduction axis exactly N are kept, the
  layout of tfmot, TFLite and sparse tensor cores. A group never spans two taps of a convolution
  kernel: it runs along the input channels of one tap, and when they are not a multiple of M each
  tap's last group is short (L < M) and keeps min(N, L), as if zero-padded (structure.targets.NmGroups).
  Such a layer loses less than 1 - N/M (a 1-channel convolution under 2:4: nothing); its requested
  sparsity is what the pattern gives, and a note says so. It needs element scores.
- Overrides (recipe `overrides:`/`layers:`, glob -> sparsity | skip | {sparsity, skip}, the last
  matching rule wins): a skipped layer is left whole; a layer with its own sparsity is pruned to it
  exactly, and with scope=global the other layers share the global budget among themselves.
- Neuron masks, given the model: layers whose output channels meet in a residual merge are one set
  that loses round(s * channels) channels, the same in every member (tied.py says how).
- No layer keeps fewer than max(1, ceil(min_keep * groups)) groups unless allow_empty. When the floor
  wins, the layer keeps its floor and, with scope=global, the rest of the budget goes to the others.

One selection path. Element, block and neuron pruning all become score sets (tied.ScoreSet: a layer
on its own is a set of one; a tied channel set is one set shared by its members) and `select_sets`
ranks them: layer-wise, global, threshold, overrides, pinned positions and floors. The exact k-lowest
selection under it is kernels.select, NumPy or XLA (the same masks; MaskSet.selection_path says which
ran). N:M is a per-run constraint, not a ranking: it keeps its own kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from prunecli.config import PER_LAYER_BUDGETS, Granularity, PruneConfig
from prunecli.errors import ConfigError
from prunecli.selection import kernels as masking
from prunecli.selection import tied
from prunecli.selection.lamp import lamp_counts, lamp_scores
from prunecli.selection.layer_budgets import erk_counts, owl_counts
from prunecli.selection.tied import Member, ScoreSet
from prunecli.structure.targets import Target


@dataclass
class MaskSet:
    """Boolean keep-masks (True = kept) of each target's shape, and what the policy decided.

    `selection_path` is the kernel that ranked the scores: "numpy" or "xla" (kernels.choose_path),
    "nm" for N:M's own kernel, "" when nothing was ranked."""

    masks: dict[str, object] = field(default_factory=dict)
    requested: dict[str, float | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    selection_path: str = ""
    # (variable, keep) pairs: per-channel parameters that follow neuron-masked units (biases, BatchNorm,
    # PReLU, depthwise filters; structure.channels.follower_masks), held at zero like the masks
    followers: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.masks)


def _check_scores(targets: list[Target], scores: dict, level: str) -> None:
    """A strategy's result must hold one tensor per target, of the weight's shape or (units,)."""
    for t in targets:
        if t.name not in scores:
            raise ValueError(f"the scoring strategy returned no scores for {t.name}")
        want = (t.units,) if level == "unit" else t.shape
        got = tuple(int(d) for d in scores[t.name].shape)
        if got != want:
            raise ValueError(f"scores for {t.name} have shape {got}; a {level}-level score needs {want}")


def _matrix(target: Target, array: np.ndarray) -> np.ndarray:
    """The (reduction, units) view of a weight-shaped array (targets.Target.to_matrix, in NumPy)."""
    return np.moveaxis(array, target.unit_axis, -1).reshape(target.rows, target.units)


def _from_matrix(target: Target, matrix: np.ndarray) -> np.ndarray:
    moved = [target.shape[a] for a in target.perm]
    return np.ascontiguousarray(np.moveaxis(matrix.reshape(moved), -1, target.unit_axis))


def _expand_units(target: Target, values: np.ndarray) -> np.ndarray:
    shape = [1] * len(target.shape)
    shape[target.unit_axis] = target.units
    return np.broadcast_to(values.reshape(shape), target.shape).copy()


def _group_scores(target: Target, score, level: str, gran: Granularity) -> np.ndarray:
    """A target's scores at the chosen granularity: one float32 score per group (any shape)."""
    score = np.asarray(score, dtype=np.float32)
    if gran.kind == "neuron":
        return score if level == "unit" else _matrix(target, score).mean(axis=0)
    if level == "unit":
        score = _expand_units(target, score)
    if gran.kind == "block":
        mat = _matrix(target, score)
        r, c = gran.rows, gran.cols
        pr, pc = (-mat.shape[0]) % r, (-mat.shape[1]) % c
        padded = np.pad(mat, [(0, pr), (0, pc)])
        sums = padded.reshape(padded.shape[0] // r, r, padded.shape[1] // c, c).sum(axis=(1, 3))
        rows = np.minimum(r, mat.shape[0] - np.arange(0, mat.shape[0], r))  # real elements per block
        cols = np.minimum(c, mat.shape[1] - np.arange(0, mat.shape[1], c))
        return (sums / np.outer(rows, cols)).astype(np.float32)
    return score


def _expand(target: Target, keep: np.ndarray, gran: Granularity) -> np.ndarray:
    """A flat group-level keep mask back at the weight's full shape."""
    if gran.kind == "neuron":
        return _expand_units(target, keep)
    if gran.kind == "block":
        blocks = keep.reshape(-(-target.rows // gran.rows), -(-target.units // gran.cols))
        full = np.repeat(np.repeat(blocks, gran.rows, axis=0), gran.cols, axis=1)
        return _from_matrix(target, full[: target.rows, : target.units])
    return keep.reshape(target.shape)


def _group_count(target: Target, gran: Granularity) -> int:
    """How many groups _group_scores gives a target, without its scores."""
    if gran.kind == "neuron":
        return int(target.units)
    if gran.kind == "block":
        return -(-target.rows // gran.rows) * -(-target.units // gran.cols)
    return int(target.size)


def floor(n: int, config: PruneConfig, at_least: int = 0) -> int:
    """Groups of n a layer always keeps: max(1, ceil(min_keep * n)), none with allow_empty, and never
    fewer than `at_least` (a step whose unit cannot all go, such as the last head of a layer)."""
    kept = 0 if config.allow_empty else max(1, math.ceil(config.min_keep * n))
    return min(n, max(kept, at_least))


def removal_count(n: int, sparsity: float, keep: int) -> tuple[int, bool]:
    """(groups of n removed at `sparsity`, whether holding `keep` of them cut that count): round(s * n)."""
    wanted = int(round(sparsity * n))
    return min(wanted, n - keep), wanted > n - keep


@dataclass(frozen=True)
class UnitLayer:
    """A layer as the policy sees it when its units are not weights: attention heads, key/value groups.
    It stands where a Target stands in a ScoreSet (its name, layer name for overrides and notes, and
    shape for ERK's factor)."""

    name: str
    units: int

    @property
    def layer_name(self) -> str:
        return self.name

    @property
    def block(self) -> str:
        return self.name

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.units,)


def select_units(
    scores: dict[str, np.ndarray], config: PruneConfig, notes: list, at_least: int = 0, sparsity: float | None = None
) -> dict[str, list[int]]:
    """{layer: removed units, ascending} for per-unit scores that are not a weight's (heads, groups),
    through the same selection as every weight: layer-wise or global with the run's normalisation,
    threshold, overrides and floors. `sparsity` replaces the run's (a count asked as --remove-heads)."""
    if sparsity is not None:
        config = config.replace(sparsity=sparsity, threshold=None)
    result = MaskSet()
    sets = [
        ScoreSet.single(Member(UnitLayer(name, len(s)), np.asarray(s, np.float32), floor(len(s), config, at_least)))
        for name, s in scores.items()
    ]
    keeps = select_sets(sets, config, result)
    notes.extend(result.notes)
    return {name: [int(u) for u in np.flatnonzero(~keep)] for name, keep in zip(scores, keeps, strict=True)}


def build_masks(
    targets: list[Target],
    scores: dict,
    level: str,
    config: PruneConfig,
    model=None,
    path: str = "auto",
    counts: dict[str, tuple[int, bool]] | None = None,
) -> MaskSet:
    """Turn scores ({target.name: tensor}, higher = more important) into keep-masks; see the module
    docstring for what is guaranteed. With `model`, neuron masks prune layers whose channels must
    shrink together (residual merges, concatenations, shared layers) as one set: see tied.py.
    `path` picks the selection kernel ("auto", "numpy" or "xla"; the masks are the same); `counts`
    (from `layer_counts` over more targets) fixes what a global LAMP/ERK ranking takes from each."""
    _check_scores(targets, scores, level)
    gran = config.granularity
    result = MaskSet()
    active = []
    for t in targets:
        if config.rule_for(t.layer_name).skip:
            result.masks[t.name] = np.ones(t.shape, bool)
            result.requested[t.name] = 0.0
        else:
            active.append(t)
    if gran.kind == "nm":
        _nm_masks(active, scores, level, config, result)
        return result
    if gran.kind not in ("element", "neuron", "block"):
        raise ConfigError(f"granularity {gran} is not a mask policy")

    sets = score_sets(active, scores, level, config, model, result.notes)
    keeps = select_sets(sets, config, result, path, counts)
    for e, keep in zip(sets, keeps, strict=True):
        for m in e.members:
            mine = keep if e.index is None else keep[e.index[m.target.name]]
            result.masks[m.target.name] = _expand(m.target, mine, gran)
    return result


def score_sets(
    targets: list[Target], scores: dict, level: str, config: PruneConfig, model, notes: list
) -> list[ScoreSet]:
    """The score sets `build_masks` ranks for these (not skipped) targets: one per target, or, for
    neuron masks given the model, one per group of targets whose channels are tied (tied.py).
    Exposed so that a budget search (selection/budget.py) sees the very sets the masks come from."""
    gran = config.granularity
    members = []
    for t in targets:
        g = _group_scores(t, scores[t.name], level, gran).reshape(-1)
        members.append(Member(t, g, floor(g.size, config)))
    neuron = gran.kind == "neuron" and model is not None
    sets = tied.select_tied(model, members, notes, config.shrink) if neuron else False
    return sets or [ScoreSet.single(m) for m in members]


def removal_order(e: ScoreSet, config: PruneConfig) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(positions, ranking, own count) of a set under a global selection with `counts`: the positions
    `select_sets` may remove, in the order it removes them (lowest ranking score first, ties by
    position), the scores it ranks every position by, and the count its own override sparsity fixes
    (None: the caller chooses). The first k of `positions` are what `counts` = k removes."""
    ranking = _ranking(e, config, True)
    p = _selection_of(e, ranking)
    if p.free is None:
        order = np.argsort(ranking, kind="stable")[: p.cap]
    else:
        order = p.free[np.argsort(ranking[p.free], kind="stable")]
    own = _own_sparsity(e, config, MaskSet())
    return order, ranking, None if own is None else _count(p, own, MaskSet())


def _nm_masks(targets: list[Target], scores: dict, level: str, config: PruneConfig, result: MaskSet) -> None:
    gran = config.granularity
    if level == "unit":
        raise ConfigError(
            "N:M needs a score per weight; this method gives one per unit (try magnitude, taylor or gradient)"
        )
    for t in targets:
        if config.rule_for(t.layer_name).sparsity is not None:
            raise ConfigError(f"N:M fixes the sparsity at 1 - N/M; the override for {t.layer_name} can only skip it")
        keep = masking.nm_keep_mask(t.to_matrix(scores[t.name]), gran.rows, t.nm_groups(gran.cols))
        result.masks[t.name] = t.from_matrix(keep)
        result.requested[t.name] = nm_requested(t, gran.rows, gran.cols, result.notes)
    result.selection_path = "nm" if targets else ""


def nm_requested(target: Target, n: int, m: int, notes: list) -> float:
    """The sparsity an N:M mask gives this target (Target.nm_sparsity), with a note when its runs (a
    convolution's channels per tap, else its inputs) are not a multiple of M, so that it loses less
    than 1 - N/M."""
    share = target.nm_sparsity(n, m)
    c = target.channels_per_tap
    if target.nm_run % m:  # a short group keeps a larger share than N of M
        short = (
            f"{target.nm_run} inputs, not a multiple of {m}, so the last group is short"
            if c is None
            else f"{c} input channel(s) per kernel tap and groups do not cross taps, so each tap's last group is short"
        )
        notes.append(
            f"{target.name}: {short} (keeps at most {n}): {n}:{m} prunes {share:.1%} of it, not {1 - n / m:.1%}"
        )
    return share


# --- the one selection ------------------------------------------------------------------------------


@dataclass(eq=False)
class _SetSelection:
    """One set as the selection sees it: the scores it is ranked by, the positions that may go (None:
    all of them), how many of those may go at most (the floor), and how many go (None: ranked globally)."""

    set: ScoreSet
    scores: np.ndarray
    free: np.ndarray | None
    cap: int
    k: int | None = None

    def candidates(self) -> np.ndarray:
        return self.scores if self.free is None else self.scores[self.free]


def _erk_factor(shapes: list) -> float:
    """Erdos-Renyi-Kernel's density factor: (sum of a kernel's dims) / (product of its dims), averaged
    over the kernels given."""
    return float(np.mean([sum(shape) / max(1, math.prod(shape)) for shape in shapes]))


def erk_factor(e: ScoreSet) -> float:
    """ERK's density factor of a set: its members' factors averaged."""
    return _erk_factor([m.target.shape for m in e.members])


def _own_sparsity(e: ScoreSet, config: PruneConfig, result: MaskSet) -> float | None:
    """The override sparsity of a set: its members' (the highest when they differ), or None."""
    given = {m.target.layer_name: config.rule_for(m.target.layer_name).sparsity for m in e.members}
    values = {v for v in given.values() if v is not None}
    if not values:
        return None
    if e.tied and (len(values) > 1 or None in given.values()):
        result.notes.append(
            f"{e.label}: one set of shared channels, pruned at {max(values):g} (the highest "
            "override sparsity among its layers)"
        )
    return max(values)


def _selection_of(e: ScoreSet, scores: np.ndarray) -> _SetSelection:
    """Positions that may go: all but the floor for a set of one (its best, as the selection leaves
    them), all but pinned and reserved positions for a tied set."""
    if e.index is None and e.pinned is None:
        return _SetSelection(e, scores, None, e.size - e.members[0].floor)
    blocked = e.reserved(scores)
    if e.pinned is not None:
        blocked |= e.pinned
    free = np.flatnonzero(~blocked)
    return _SetSelection(e, scores, free, int(free.size))


def _note_floor(e: ScoreSet, result: MaskSet) -> None:
    if e.tied:
        result.notes.append(f"{e.label}: pruned less to keep every member's min_keep floor")
    else:
        m = e.members[0]
        result.notes.append(f"{m.target.name}: kept {m.floor} of {e.size} groups (min_keep)")


def _count(p: _SetSelection, sparsity: float, result: MaskSet) -> int:
    """How many of a set's prunable positions go at this sparsity, held at its floor."""
    k, held = removal_count(p.set.prunable, sparsity, p.set.prunable - p.cap)
    if held:
        _note_floor(p.set, result)
    return k


def _ranking(e: ScoreSet, config: PruneConfig, together: bool) -> np.ndarray:
    """The scores a set is ranked by: raw for a set of one ranked alone or against a threshold number,
    normalised for a tied set; ranked together, as `normalize` says."""
    if together:
        if config.normalize == "lamp":  # a set of one ranks by its own scores: lamp_counts maps the threshold
            return (
                e.combined(False)
                if not e.tied and e.pinned is None and e.index is None
                else lamp_scores(e.combined(e.tied))
            )
        return e.combined(config.normalize == "mean")
    if config.threshold not in (None, "mean"):
        return e.combined(False)
    return e.combined(e.tied)


def allocated_per_layer(config: PruneConfig) -> bool:
    """Whether a global ranking is decided as a count per layer before any mask is built (LAMP and
    ERK over sets of one), so that the masks can then be built a few layers at a time with `counts`."""
    return (
        config.threshold is None
        and config.scope == "global"
        and config.normalize in ("lamp", *PER_LAYER_BUDGETS)
        and config.granularity.kind in ("element", "block", "neuron")
    )


def _allocate(
    keys, caps, prunables, factors, scores, config: PruneConfig, budget: int, blocks: list[str]
) -> dict[str, tuple[int, bool]]:
    """{key: (how many positions that set loses, whether its floor held it)} for the sets ranked
    together, when the ranking is a count per set: LAMP (`scores()` gives each set's scores in order,
    again per pass), ERK (`factors`, no scores) or OWL (scores and the sets' `blocks`). Empty for the
    others (ranked in one selection)."""
    if config.normalize == "lamp" and scores is not None:
        ks = lamp_counts(scores, caps, budget)
        held = [k == cap and cap < n and budget > 0 for k, cap, n in zip(ks, caps, prunables, strict=True)]
    elif config.normalize == "erk":
        ks, held = erk_counts(prunables, factors, caps, budget)
    elif config.normalize == "owl" and scores is not None:
        ks, held = owl_counts(scores, prunables, caps, budget, blocks)
    else:
        return {}
    return dict(zip(keys, zip(ks, held, strict=True), strict=True))


def layer_counts(targets: list[Target], scores_of, level: str, config: PruneConfig) -> dict[str, tuple[int, bool]]:
    """select_sets' global allocation for untied targets, computed before any mask: `scores_of()` yields
    (target, scores) for `targets` in order and is called once per pass, so scores may be computed
    again instead of held. Building each target's masks with these `counts` (build_masks) then gives
    the masks of all targets selected at once, a few targets at a time (selection/chunked.py)."""
    gran = config.granularity
    ranked = [
        t for t in targets if not config.rule_for(t.layer_name).skip and config.rule_for(t.layer_name).sparsity is None
    ]
    names = {t.name for t in ranked}
    groups = [_group_count(t, gran) for t in ranked]
    caps = [n - floor(n, config) for n in groups]
    budget = int(round(config.effective_sparsity * sum(groups)))

    def scores():
        for t, score in scores_of():
            if t.name in names:
                yield _group_scores(t, score, level, gran)

    factors = [_erk_factor([t.shape]) for t in ranked]
    blocks = [t.block for t in ranked]
    return _allocate([t.name for t in ranked], caps, groups, factors, scores, config, budget, blocks)


def _allocation_scores(ranked: list[_SetSelection], config: PruneConfig):
    """What `_allocate` ranks by, given again per pass: LAMP needs whole sets (None when a set has
    pinned positions: they are then ranked in one selection); OWL counts outliers in what may go."""
    if config.normalize == "owl":
        return lambda: (p.candidates() for p in ranked)
    return (lambda: (p.scores for p in ranked)) if all(p.free is None for p in ranked) else None


def select_sets(
    sets: list[ScoreSet],
    config: PruneConfig,
    result: MaskSet,
    path: str = "auto",
    counts: dict[str, tuple[int, bool]] | None = None,
) -> list[np.ndarray]:
    """The one selection: a flat keep mask (True = kept) over each set's positions.

    Layer-wise (scope=layer, overrides, ERK's shares, thresholds) each set loses its own count; with
    scope=global the other sets are ranked together and lose exactly round(s * their prunable
    positions). Pinned positions never go and do not count; floors hold (a set of one keeps its best
    `floor` groups, a tied set reserves each member's). Writes `requested`, floor notes and
    `selection_path` into `result`. `counts` ({first member's name: (count, held by its floor)},
    from `layer_counts`) gives the sets ranked together their share of a global LAMP/ERK budget
    decided beforehand over more targets than these."""
    own = [_own_sparsity(e, config, result) for e in sets]
    ranked_together = config.threshold is None and config.scope == "global"
    selections = [
        _selection_of(
            e, _ranking(e, config, ranked_together and sparsity is None and config.normalize not in PER_LAYER_BUDGETS)
        )
        for e, sparsity in zip(sets, own, strict=True)
    ]
    ranked = [p for p, sparsity in zip(selections, own, strict=True) if ranked_together and sparsity is None]
    budget = int(round(config.effective_sparsity * sum(p.set.prunable for p in ranked))) if ranked else 0
    if counts is None and ranked:
        counts = _allocate(
            [p.set.members[0].target.name for p in ranked],
            [p.cap for p in ranked],
            [p.set.prunable for p in ranked],
            [erk_factor(p.set) for p in ranked],
            _allocation_scores(ranked, config),
            config,
            budget,
            [p.set.members[0].target.block for p in ranked],
        )
    for p, sparsity in zip(selections, own, strict=True):
        name = p.set.members[0].target.name
        if sparsity is not None:
            p.k, requested = _count(p, sparsity, result), sparsity
        elif config.threshold is not None:
            limit = p.scores.mean() if config.threshold == "mean" else np.float32(config.threshold)
            below = int(np.count_nonzero(p.candidates() < limit))
            p.k, requested = min(below, p.cap), None
            if below > p.cap:  # the floor binds: the report says so, as for a sparsity
                _note_floor(p.set, result)
        elif config.scope == "layer":
            p.k, requested = _count(p, config.effective_sparsity, result), config.effective_sparsity
        else:
            requested = config.effective_sparsity
            if counts and name in counts:
                p.k, held = counts[name]
                if held:
                    _note_floor(p.set, result)
        for m in p.set.members:
            result.requested[m.target.name] = requested
    return _run(selections, [p for p in ranked if p.k is None], budget, result, path)


def _run(
    selections: list[_SetSelection], ranked: list[_SetSelection], budget: int, result: MaskSet, path: str
) -> list[np.ndarray]:
    """Select: each plan with a count on its own, the `ranked` ones together with `budget`; a ranked set
    that would lose more than its cap is held at its cap and the rest of the budget is ranked again."""
    at_cap: set[int] = set()
    while True:
        alone = [p for p in selections if p.k is not None or id(p) in at_cap]
        free = [p for p in ranked if id(p) not in at_cap]
        segments = [[p.candidates()] for p in alone]
        ks = [p.k if p.k is not None else p.cap for p in alone]
        if free:
            held = sum(p.cap for p in ranked if id(p) in at_cap)
            segments.append([p.candidates() for p in free])
            ks.append(min(max(0, budget - held), sum(p.cap for p in free)))
        if path == "auto":
            path = masking.choose_path([[int(a.size) for a in seg] for seg in segments])
        keeps, path = masking.select(segments, ks, path, keep=True) if segments else ([], path)
        chosen = dict(zip([id(p) for p in alone + free], keeps, strict=True))
        over = [p for p in free if int(chosen[id(p)].size - np.count_nonzero(chosen[id(p)])) > p.cap]
        if not over:
            break
        for p in over:
            at_cap.add(id(p))
            _note_floor(p.set, result)
    if free and budget - sum(p.cap for p in ranked if id(p) in at_cap) > sum(p.cap for p in free):
        # the budget outran every remaining set's capacity: each is held at its floor (tied sets are noted below)
        for p in free:
            if p.free is None and p.cap < p.set.size:
                _note_floor(p.set, result)
    result.selection_path = path if segments else ""
    out = []
    for p in selections:
        keep = chosen[id(p)]
        if p.free is not None:
            if p in free and p.free.size and not keep.any() and p.free.size < p.set.prunable:
                _note_floor(p.set, result)  # a tied set ranked globally lost every position it could
            full = np.ones(p.set.size, dtype=bool)
            full[p.free[~keep]] = False
            keep = full
        out.append(keep)
    return out
