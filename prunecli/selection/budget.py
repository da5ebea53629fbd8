"""A budget instead of a sparsity: how many channels each layer keeps so the shrunk model fits a target.

`--target params=0.3` (or flops=F) asks for a shrunk model with 30% of the dense model's parameters.
One uniform sparsity cannot say that (a layer's cost depends on its neighbours' widths) and spends the
budget badly (a 3x3 conv with 256 inputs costs 2,304 parameters per channel, a Dense head 32). So the
channels of all layers are ranked together and removed one step at a time, cheapest importance per
unit of cost first, until the model fits:

- Units. A step removes channels of one score set (policy.score_sets): a layer on its own, or a tied
  set (residual Adds, depthwise blocks) whose channels go together and count once. Inside a set the
  channels go in exactly the order `policy.select_sets` removes them (policy.removal_order), so the
  counts found here give, through `policy.build_masks(..., counts=...)`, the very masks searched.
- Importance. Each channel's score is normalised within its set as `--normalize` says: lamp (LAMP,
  a share of the set's remaining squared score), mean (score over the set's mean) or none (raw).
- Cost. What a step saves is exact, from structure/costs.py: removing an output channel of layer A
  also removes the matching input slice of every layer that reads it, its BatchNorm parameters, and
  the multiply-adds of all of them, at the widths the other layers have *now*. A step's priority is
  its importance over what it saves; the lowest goes first, and the savings of the sets next to it
  are brought up to date.
- Landing. The walk stops at the first allocation at or under the goal. Near the goal, a step that
  would fall more than TOLERANCE (2%) below it is passed over for the best step that stays inside
  the band, so the result lands in [goal * (1 - TOLERANCE), goal] whenever single steps allow it.
- Floors. A set never loses more than policy allows (each layer's --min-keep floor, pinned channels,
  output units); --round-to R makes every set keep a multiple of R channels (a set narrower than R
  is not rounded; it never keeps none). A goal under what the floors allow is refused, naming the
  best achievable value.

Latency. `--target latency=F` is not additive per channel in a way the cost model could know, so it is
searched: `search_latency` moves one knob, the FLOPs goal of this very allocation, and times the shrunk
candidate each goal gives (the caller measures; this module only decides where to look). It brackets
the goal between the most the floors allow to remove and the dense model (when the floors' model is too
slow, between the widest of WIDTH_SCAN timed under the goal and the next wider model: a few channels can
run slower than a few dozen; when none is under the goal the target is refused), and narrows the bracket by the secant through its two ends (kept inside its middle
80%, halving when one end sticks), aiming at the middle of the latency band, until a candidate lands
in the band (the floors' own model does not count: a wider one may run as fast), the bracket is
narrower than RESOLUTION of the FLOPs, or MAX_TIMED candidates were timed.
It returns the largest FLOPs goal timed at or under the target: never a candidate measured slower.

A set whose channels surgery could not cut anyway (an unsupported layer, a channel pinned by the graph
or also made by a layer that is not pruned) is left whole: masking it would cost accuracy and save
nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from prunecli.config import PruneConfig
from prunecli.config.target import TOLERANCE
from prunecli.errors import ConfigError
from prunecli.selection import policy, tied
from prunecli.selection.lamp import lamp_scores
from prunecli.selection.policy import MaskSet
from prunecli.structure import channels, costs


@dataclass(eq=False)
class Track:
    """One score set as the walk sees it: its positions in removal order, the cost-model class of each
    (-1: its removal saves nothing), their normalised importance, and the removal counts it may stop at."""

    key: str
    label: str
    size: int
    classes: np.ndarray
    weight: np.ndarray
    stops: list[int]
    step: int = 0  # index into stops: the set has lost stops[step] channels
    why_whole: str = ""

    @property
    def removed(self) -> int:
        return self.stops[self.step]

    def next_block(self) -> np.ndarray | None:
        if self.step + 1 >= len(self.stops):
            return None
        return np.arange(self.stops[self.step], self.stops[self.step + 1])


@dataclass
class Allocation:
    """What the walk decided: per set the channels it loses (`counts`, select_sets' form), the cost
    the shrunk model will have (`cost`, exact), the dense cost and the goal, the least cost the floors
    allow (`lowest`), and notes."""

    counts: dict[str, tuple[int, bool]]
    cost: int
    dense: int
    goal: int
    lowest: int
    tracks: list[Track] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def stops(size: int, cap: int, round_to: int | None) -> list[int]:
    """The removal counts a set of `size` channels that may lose at most `cap` can stop at: every one,
    or with round_to R (and size >= R) those that leave a multiple of R, besides losing none."""
    if not round_to or round_to <= 1 or size < round_to:
        return list(range(cap + 1))
    least = size - cap
    kept = [k for k in range(round_to * (size // round_to), 0, -round_to) if least <= k < size]
    return [0] + [size - k for k in kept]


def _normalised(e, ranking: np.ndarray, config: PruneConfig) -> np.ndarray:
    """Each position's importance on the scale sets are compared on. The ranking select_sets uses is
    already that scale except for LAMP on a plain set of one, which it ranks by raw scores (the same
    order); non-finite scores count as 0 (they go first, as they would anyway)."""
    plain = not e.tied and e.pinned is None and e.index is None
    weight = lamp_scores(ranking) if config.normalize == "lamp" and plain else ranking
    return np.nan_to_num(np.asarray(weight, dtype=np.float64), nan=0.0, posinf=1e30, neginf=0.0).clip(min=0.0)


def _tracks(sets, config: PruneConfig, cost: costs.ChannelCosts, round_to: int | None) -> list[Track]:
    g = cost.graph
    pins = g.channels.pinned()
    calls = tied.graph_calls(g)  # a recurrent cell's units are made by the layer that runs it
    out = []
    for e in sets:
        order, ranking, own = policy.removal_order(e, config)
        key = e.members[0].target.name
        roots = tied.position_roots(g, e)
        why = ""
        if roots is None:
            call = calls.get(id(e.members[0].target.layer))
            other = channels.why_other(g, call) if call is not None else None
            why = (
                "it is inside a nested model or wrapper that is not opened (a frozen model, one of a class of its"
                " own, a TimeDistributed model or convolution)"
                if call is None
                else f"its units are not channels surgery can cut ({other})"
                if other
                else "its units are not channels surgery can cut"
            )
        elif e.reasons and not e.prunable:  # --shrink pinned every channel of the set (tied.select_tied)
            why = f"its channels are kept by the graph ({min(e.reasons)})"
        else:
            makers = {
                calls[id(m.target.layer)].name if id(m.target.layer) in calls else m.target.layer_name
                for m in e.members
            }
            chosen = roots[order]
            pinned = [pins[int(r)] for r in chosen if int(r) in pins]
            foreign = [r for r in chosen.tolist() if not set(g.group_members(int(r))) <= makers]
            if pinned:
                why = f"its channels are kept by the graph ({pinned[0]})"
            elif foreign:
                others = sorted(set(g.group_members(int(foreign[0]))) - makers)
                why = f"its channels are also made by {', '.join(others)}, which is not pruned"
        weight = _normalised(e, ranking, config)[order]
        classes = cost.index(roots[order]) if roots is not None else np.full(order.size, -1)
        if own is not None:
            allowed = [own]
        elif why:
            allowed = [0]
        else:
            allowed = stops(e.size, int(order.size), round_to)
        label = e.label if e.tied else key  # a set of one by its weight: a SeparableConv has two
        out.append(Track(key, label, e.size, classes, weight, allowed, why_whole="" if own is not None else why))
    return out


def _lowest(tracks: list[Track], cost: costs.ChannelCosts) -> int:
    """The cost with every set at its last stop: the least the floors allow."""
    return cost.total(_floors_keep(tracks, cost))


def _floors_keep(tracks: list[Track], cost: costs.ChannelCosts) -> np.ndarray:
    """The keep vector (over cost.roots) with every set at its last stop."""
    keep = np.ones(len(cost.roots), dtype=bool)
    for t in tracks:
        gone = t.classes[: t.stops[-1]]
        keep[gone[gone >= 0]] = False
    return keep


def _largest_left(tracks: list[Track], cost: costs.ChannelCosts) -> str:
    """Where most of the least cost the floors allow sits ("embedding, 1,724,400"): the layer whose cost at
    the floors is largest, or the layers with no channel to cut taken together, for the refusal's message
    (a model whose Embedding table is 99% of it cannot reach half its parameters: say which layer)."""
    widths = cost.widths(_floors_keep(tracks, cost))
    parts = [(t.at(int(widths[t.inp]), int(widths[t.out])), t.layer) for t in cost.terms]
    parts.append((cost.dense - sum(t.at(int(cost.full[t.inp]), int(cost.full[t.out])) for t in cost.terms), ""))
    most, where = max(parts)
    return f"{where or 'the layers with no channel to cut'}, {most:,}"


class _Walk:
    """The state of a walk: tensor widths, the cost now, and each set's next step (its drop, exact
    saving and priority), kept up to date for the sets next to every change."""

    def __init__(self, tracks: list[Track], cost: costs.ChannelCosts):
        self.tracks, self.cost = tracks, cost
        self.widths = cost.full.copy()
        self.total = cost.dense
        n = len(tracks)
        self.saves = np.zeros(n, dtype=np.int64)
        self.prio = np.full(n, np.inf)
        self.drops: list[dict[int, int]] = [{} for _ in tracks]
        self.touching: dict[int, set[int]] = {}
        for j, t in enumerate(tracks):
            for c in t.classes[: t.stops[-1]].tolist():
                for tensor, _count in cost.holds.get(c, ()):
                    self.touching.setdefault(tensor, set()).add(j)

    def refresh(self, j: int) -> None:
        t = self.tracks[j]
        block = t.next_block()
        if block is None:
            self.saves[j], self.prio[j], self.drops[j] = 0, np.inf, {}
            return
        self.drops[j] = self.cost.drop(t.classes[block])
        self.saves[j] = self.cost.saving(self.widths, self.drops[j])
        self.prio[j] = float(t.weight[block].sum()) / self.saves[j] if self.saves[j] > 0 else np.inf

    def _moved(self, drop: dict[int, int], sign: int) -> None:
        for tensor, lost in drop.items():
            self.widths[tensor] -= sign * lost
        for k in set().union(*(self.touching.get(tensor, ()) for tensor in self.cost.neighbours(drop))):
            self.refresh(k)

    def take(self, j: int) -> None:
        """Set j takes its next step."""
        drop, saved = self.drops[j], int(self.saves[j])
        self.tracks[j].step += 1
        self.total -= saved
        self._moved(drop, 1)
        self.refresh(j)

    def last_step(self, j: int) -> tuple[dict[int, int], int] | None:
        """(drop, what giving it back costs) of set j's last step, or None."""
        t = self.tracks[j]
        if t.step == 0:
            return None
        drop = self.cost.drop(t.classes[t.stops[t.step - 1] : t.stops[t.step]])
        grown = self.widths.copy()
        for tensor, lost in drop.items():
            grown[tensor] += lost
        return drop, self.cost.saving(grown, drop)

    def give_back(self, j: int) -> None:
        """Set j undoes its last step."""
        drop, cost = self.last_step(j)
        self.tracks[j].step -= 1
        self.total += cost
        self._moved(drop, -1)
        self.refresh(j)


def walk(tracks: list[Track], cost: costs.ChannelCosts, goal: int, low: int | None = None) -> int:
    """Remove steps until the cost is at most `goal`; returns the cost reached (exact). Each track's
    `step` says where it stopped. See the module docstring for the order and the landing rule; the
    band is [low, goal], low by default TOLERANCE under the goal."""
    w = _Walk(tracks, cost)
    low = goal - int(TOLERANCE * goal) if low is None else low
    for j, t in enumerate(tracks):  # fixed counts (an override's own sparsity) first
        if len(t.stops) == 1 and t.stops[0] > 0:
            t.stops = [0, t.stops[0]]
            w.refresh(j)
            w.take(j)
            t.stops, t.step = t.stops[1:], 0
    for j in range(len(tracks)):
        w.refresh(j)
    while w.total > goal:
        valid = w.saves > 0
        if not valid.any():
            break
        j = int(np.argmin(np.where(valid, w.prio, np.inf)))
        last = False
        if w.total - w.saves[j] < low:  # this step would overshoot the band: the best one that stays in it
            fits = valid & (w.total - w.saves >= low)
            if fits.any():
                j = int(np.argmin(np.where(fits, w.prio, np.inf)))
            else:  # every step overshoots: the smallest, and stop
                j = int(np.argmin(np.where(valid, w.saves, np.iinfo(np.int64).max)))
                last = True
        w.take(j)
        if last:
            break
    if w.total < low:  # coarse steps (--round-to, a tiny model) jumped over the band
        _swap_into_band(w, low, goal)
    return w.total


def _swap_into_band(w: _Walk, low: int, goal: int) -> None:
    """Give one set back its last step and let another take its next step instead, when that lands in
    [low, goal]; the pair landing highest is tried first. The second step's saving is exact only once
    the first is undone (neighbours interact), so a pair that then misses is undone and set aside."""
    n = len(w.tracks)
    tried: set[tuple[int, int]] = set()
    for _ in range(4 * n):
        back = np.full(n, -1, dtype=np.int64)
        for a in range(n):
            found = w.last_step(a) if len(w.tracks[a].stops) > 1 else None
            if found is not None:
                back[a] = found[1]
        landing = w.total + back[:, None] - w.saves[None, :]
        ok = (back[:, None] >= 0) & (w.saves[None, :] > 0) & (landing >= low) & (landing <= goal)
        np.fill_diagonal(ok, False)
        for a, b in tried:
            ok[a, b] = False
        if not ok.any():
            return
        a, b = (int(i) for i in np.unravel_index(int(np.argmax(np.where(ok, landing, -1))), ok.shape))
        tried.add((a, b))
        w.give_back(a)
        if low <= w.total - w.saves[b] <= goal:
            w.take(b)
            return
        w.take(a)  # the pair interacts and misses: back to where it was


def allocate(
    sets,
    config: PruneConfig,
    cost: costs.ChannelCosts,
    goal: int,
    what: str,
    low: int | None = None,
    frozen: tuple[str, ...] = (),
) -> Allocation:
    """The channel counts per set that bring `cost` to at most `goal` (see the module docstring).
    `what` names the target in messages ("params=0.3"). Raises a one-line ConfigError when the floors
    keep the model above the goal, naming the least cost they allow, the frozen layers (`frozen`) left
    whole (the usual reason a transfer-learned model cannot reach it) and how many sets surgery cannot
    cut, with the first one's reason."""
    tracks = _tracks(sets, config, cost, config.round_to)
    lowest = _lowest(tracks, cost)
    if lowest > goal:
        held = (
            f"; frozen (trainable=False) and left whole: {', '.join(frozen)} (to prune them too: --include '*')"
            if frozen
            else ""
        )
        whole = [t for t in tracks if t.why_whole]
        if whole:  # why the rest cannot go: a nested model, channels a custom layer reads...
            held += f"; {len(whole)} layer(s) left whole, e.g. {whole[0].label}: {whole[0].why_whole}"
        raise ConfigError(
            f"--target {what} cannot be met: the layers never pruned and the --min-keep floors"
            f"{' (with --round-to)' if config.round_to else ''} keep at least {lowest / cost.dense:.4f} of the"
            f" dense model's {_unit(cost.kind)} ({lowest:,} of {cost.dense:,}; the most of it in"
            f" {_largest_left(tracks, cost)}){held}"
        )
    reached = walk(tracks, cost, goal, low)
    counts = {t.key: (t.removed, False) for t in tracks}
    notes = [f"--target: {t.label} not pruned: {t.why_whole}" for t in tracks if t.why_whole]
    return Allocation(counts, reached, cost.dense, goal, lowest, tracks, notes)


def _unit(kind: str) -> str:
    return "parameters" if kind == "params" else "multiply-adds per example"


def select(
    targets,
    scores: dict,
    level: str,
    config: PruneConfig,
    model,
    cost: costs.ChannelCosts,
    goal: int,
    what: str,
    low: int | None = None,
) -> tuple[MaskSet, Allocation]:
    """Masks for `targets` that meet the budget: the allocation, then `policy.build_masks` with its
    counts (the one selection path), each target's `requested` set to the share of units it loses."""
    active = [t for t in targets if not config.rule_for(t.layer_name).skip]
    sets = policy.score_sets(active, scores, level, config, model, [])
    found = allocate(sets, config, cost, goal, what, low, frozen_left_whole(model, targets))
    masks = policy.build_masks(targets, scores, level, config, model=model, counts=found.counts)
    masks.notes.extend(found.notes)
    for t in targets:
        kept = kept_units(t, masks.masks[t.name])
        masks.requested[t.name] = 1.0 - kept / t.units if t.units else 0.0
    return masks, found


def frozen_left_whole(model, chosen) -> tuple[str, ...]:
    """The frozen layers (structure/targets.without_frozen) among the model's prunable ones that the run
    leaves whole, named once each."""
    from prunecli.structure.targets import is_frozen, walk

    picked = {t.name for t in chosen}
    left = [t.layer_name for t in walk(model) if t.name not in picked and is_frozen(t)]
    return tuple(dict.fromkeys(left))


def lowest_cost(targets, scores: dict, level: str, config: PruneConfig, model, cost: costs.ChannelCosts) -> int:
    """The least cost the floors allow for these targets (every set at its last stop), as select sees them."""
    active = [t for t in targets if not config.rule_for(t.layer_name).skip]
    sets = policy.score_sets(active, scores, level, config, model, [])
    return _lowest(_tracks(sets, config, cost, config.round_to), cost)


def kept_units(target, mask, gates: int = 1) -> int:
    """Units (along the target's unit axis) with any weight kept; with `gates` blocks on that axis (a
    recurrent cell's), units with any weight kept in any block."""
    moved = np.moveaxis(np.asarray(mask, dtype=bool), target.unit_axis, -1)
    columns = moved.reshape(-1, moved.shape[-1]).any(axis=0)
    return int(np.count_nonzero(columns.reshape(gates, -1).any(axis=0)))


MAX_TIMED = 8  # candidates a latency search times, the two ends included
WIDTH_SCAN = (0.5, 0.25)  # FLOPs goals timed when the floors' model is too slow (latency need not fall with width)
RESOLUTION = 0.005  # a latency search stops when its FLOPs bracket is narrower than this fraction


@dataclass(frozen=True)
class Timed:
    """One latency candidate: the FLOPs goal asked (`fraction` of the dense model's), the exact cost
    the allocation reached for it, and its measured latency in ms."""

    fraction: float
    cost: int
    ms: float


@dataclass
class LatencySearch:
    """What a latency search found: the candidate chosen (the largest FLOPs goal measured at or under
    the goal), every candidate in the order timed (the dense model first), and the fastest allocation
    the floors allow."""

    chosen: Timed
    timed: list[Timed]
    lowest: Timed


def search_latency(
    measure: Callable[[float], tuple[int, float]],
    dense: Timed,
    lowest_fraction: float,
    goal_ms: float,
    low_ms: float,
    what: str,
    where: str = "",
    max_timed: int = MAX_TIMED,
    resolution: float = RESOLUTION,
    units: str = "channel",
) -> LatencySearch:
    """Search the FLOPs goal whose shrunk model runs in [low_ms, goal_ms] (see the module docstring).
    `measure(fraction)` allocates channels for that FLOPs fraction and returns (exact cost, measured
    ms); a caller that caches by allocation makes repeated goals free. `dense` is the unpruned model,
    fraction 1. Raises a one-line ConfigError when even `lowest_fraction` (every channel the floors
    allow removed) is slower than `goal_ms`; `what`, `where` and `units` name the target, the
    measurement and what the floors keep (channels; heads or units for a structural step)."""
    cost, ms = measure(lowest_fraction)
    lowest = lo = Timed(lowest_fraction, cost, ms)
    timed, hi = [dense, lowest], dense
    seen = {dense.cost, lowest.cost}
    if lowest.ms > goal_ms:
        lo, hi = _scan_widths(measure, dense, lowest, goal_ms, timed, seen, f"--target {what}", where, units)
    aim, stuck = (low_ms + goal_ms) / 2.0, 0
    for _ in range(4 * max_timed):
        landed = lo.ms >= low_ms and lo is not lowest  # the floors' model in the band: look for a wider one
        if landed or hi.fraction - lo.fraction <= resolution or len(seen) >= max_timed:
            break
        t = (aim - lo.ms) / (hi.ms - lo.ms) if hi.ms > lo.ms else 0.5
        t = 0.5 if abs(stuck) >= 2 else min(max(t, 0.1), 0.9)
        fraction = lo.fraction + t * (hi.fraction - lo.fraction)
        cost, ms = measure(fraction)
        probe = Timed(fraction, cost, ms)
        if cost not in seen:
            seen.add(cost)
            timed.append(probe)
        if ms <= goal_ms:
            lo, stuck = probe, (max(stuck, 0) + 1)
        else:
            hi, stuck = probe, (min(stuck, 0) - 1)
    return LatencySearch(lo, timed, lowest)


def _scan_widths(measure, dense: Timed, lowest: Timed, goal_ms: float, timed: list, seen: set, what, where, units):
    """The floors' model is slower than the goal, yet a wider one may not be: TensorFlow's CPU
    convolutions can run a few channels slower than a few dozen (bench/TARGET.md: a CNN at its floors took
    0.77 of the dense model's time at batch 64, and every latency= goal under that was refused). Time WIDTH_SCAN and return the
    widest of them under the goal with the narrowest wider one timed over it, the bracket the search
    narrows; refuse in one line, naming the fastest model timed, when none is under the goal."""
    scanned = []
    for fraction in WIDTH_SCAN:
        if lowest.fraction < fraction < dense.fraction:
            probe = Timed(fraction, *measure(fraction))
            scanned.append(probe)
            if probe.cost not in seen:
                seen.add(probe.cost)
                timed.append(probe)
    under = [t for t in scanned if t.ms <= goal_ms]
    if not under:
        fastest = min([lowest, *scanned], key=lambda t: t.ms)
        at = (
            f"with every {units} the floors allow removed the shrunk model"
            if fastest is lowest
            else f"the fastest shrunk model timed (at {fastest.fraction:.2f} of the dense cost; narrower ones run slower)"
        )
        raise ConfigError(
            f"{what} cannot be met: {at} still takes {fastest.ms:.3g} ms, {fastest.ms / dense.ms:.2f} of the dense"
            f" model's {dense.ms:.3g} ms{' ' + where if where else ''}"
        )
    lo = max(under, key=lambda t: t.fraction)
    hi = min((t for t in [dense, *scanned] if t.fraction > lo.fraction), key=lambda t: t.fraction)
    return lo, hi
