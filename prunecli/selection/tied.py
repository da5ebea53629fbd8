"""Group-aware neuron selection: layers whose channels must shrink together are pruned as one.

Surgery removes a channel only when it is dead in every layer that makes it. `graph.py` finds those
channel classes and their producers: a residual Add/Multiply joins its inputs' channels, a shared layer
its calls', and a Concatenate keeps each slice with the layer that made it, so a concatenation that
meets a merge ties each slice to the layers on the other side. Masking these layers one at a time
rarely kills the same channels, so little shrinks.

Here the neuron targets that produce the same channel classes form a *tied set*, pruned like one
layer whose units are the set's channels, as DepGraph (Fang et al., CVPR 2023) prunes coupled layers:

- a channel's score is the mean, over the members that make it, of the member's unit score divided by
  that member's mean score (as scope=global compares layers), so one layer's scale does not decide;
- scope=layer: a set loses exactly round(s * channels) of its prunable channels; scope=global: sets
  and untied targets are ranked together, a set's channel counting once; a threshold compares the
  combined score (raw scores averaged over the members for a number, normalised ones for 'mean');
- an override sparsity on any member applies to its whole set (the highest, when members disagree);
- every member gets the same keep value for a channel, so the channel is dead in all of them;
- channels the graph pins (network outputs, model inputs, layers surgery cannot slice) are never
  selected and do not count; no member keeps fewer units than its min_keep floor: its best-scoring
  channels are reserved before the lowest are selected, which is the layer cap the policy applies.

Depthwise filters are not tied to the layer that makes their channel: where nothing else reads that
channel, surgery removes it when either the producer's unit or the filter is dead, so independent
masks remove more channels than one shared mask would (MobileNetV2's expansions). They keep the
per-layer selection, as do targets tied to no other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from prunecli.selection import kernels as masking
from prunecli.selection.policy import MaskSet, override_sparsity

MAX_NAMED_MEMBERS = 4  # longer sets are named by their first members and a count in notes


@dataclass(eq=False)
class Entry:
    """What one decision selects channels from: a tied set of targets, or one untied target.

    `members` are the policy's per-target unit scores (`target`, `scores` (units,), `floor`);
    `index[name]` gives the channel position of each of that member's units."""

    members: list
    index: dict[str, np.ndarray]
    channels: int
    pinned: np.ndarray  # bool per channel: the graph forbids removing it
    reasons: dict[str, int] = field(default_factory=dict)  # pin reason -> channels

    @property
    def tied(self) -> bool:
        return len(self.members) > 1

    @property
    def label(self) -> str:
        names = [m.target.layer_name for m in self.members]
        if len(names) > MAX_NAMED_MEMBERS:
            return "+".join(names[:MAX_NAMED_MEMBERS]) + f"+... ({len(names)} layers)"
        return "+".join(names)

    @property
    def prunable(self) -> int:
        return self.channels - int(np.count_nonzero(self.pinned))

    def combined(self, normalize: bool) -> np.ndarray:
        """One float32 score per channel: the mean over the members that make it (per member, the
        mean of its units there), each member's scores divided by its mean score when `normalize`."""
        total = np.zeros(self.channels)
        makers = np.zeros(self.channels)
        for m in self.members:
            s = np.asarray(m.scores, dtype=np.float64).reshape(-1)
            mean = s.mean() if s.size else 0.0
            if normalize and mean > 0:
                s = s / mean
            idx = self.index[m.target.name]
            hits = np.bincount(idx, minlength=self.channels)
            total += np.bincount(idx, weights=s, minlength=self.channels) / np.maximum(hits, 1)
            makers += hits > 0
        return (total / np.maximum(makers, 1)).astype(np.float32)

    def reserved(self, scores: np.ndarray) -> np.ndarray:
        """Bool per channel: kept so that every member keeps its floor (pinned units count as kept);
        each member's best channels, ties going to the later position as in masking's selection."""
        keep = np.zeros(self.channels, dtype=bool)
        order = np.lexsort((-np.arange(self.channels), -scores.astype(np.float64)))  # best first
        for m in self.members:
            idx = self.index[m.target.name]
            need = m.floor - int(np.count_nonzero(self.pinned[idx]))
            if need <= 0:
                continue
            units = np.bincount(idx, minlength=self.channels)
            mine = order[(units[order] > 0) & ~self.pinned[order]]
            upto = np.cumsum(units[mine])
            keep[mine[: int(np.searchsorted(upto, need)) + 1]] = True
        return keep


def select_tied(model, groups: list, config, result: MaskSet) -> bool:
    """Write neuron keep-masks for every target of `groups` into `result`, tied targets as one set.

    Returns False, writing nothing, when no two targets share channels or the model has no layer
    graph; the policy then selects per target as before (with a note in the second case)."""
    from prunecli.structure import channels as graph

    try:
        g = graph.build(model)
    except graph.GraphUnsupported as exc:
        result.notes.append(
            f"neuron masks chosen layer by layer ({exc}): layers that must shrink together "
            "are not grouped, so --shrink may remove little"
        )
        return False
    entries = _entries(g, groups)
    tied = [e for e in entries if e.tied]
    if not tied:
        return False
    result.notes.append(
        f"neuron: {len(tied)} set(s) of layers whose channels meet in a merge (residual Add, Multiply, "
        "Concatenate slices) pruned as one, with the same units masked in every member"
    )
    for e in tied:
        if e.reasons:
            why = "; ".join(f"{reason}: {n}" for reason, n in sorted(e.reasons.items()))
            result.notes.append(
                f"{e.label}: {e.channels - e.prunable} of {e.channels} shared channels never pruned ({why})"
            )
    own = {id(e): _own_sparsity(e, config, result) for e in entries}
    if config.threshold is None and config.scope == "global":
        fixed = [e for e in entries if own[id(e)] is not None]
        ranked = [e for e in entries if own[id(e)] is None]
        _select_each(fixed, [own[id(e)] for e in fixed], config, result)
        _select_together(ranked, config, result)
    else:
        sparsities = [config.effective_sparsity if own[id(e)] is None else own[id(e)] for e in entries]
        _select_each(entries, sparsities, config, result)
    return True


def _entries(g, groups: list) -> list[Entry]:
    """Targets joined into sets wherever their units reach the same channel class."""
    first_call: dict[int, object] = {}
    for call in g.calls:
        first_call.setdefault(id(call.layer), call)
    ch = g.channels
    roots = {}
    for grp in groups:
        found = _unit_roots(g, first_call.get(id(grp.target.layer)), grp.target)
        if found is not None:
            roots[grp.target.name] = found
    parent = list(range(len(groups)))  # union-find over targets

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for i, grp in enumerate(groups):
        for root in set(roots.get(grp.target.name, np.empty(0, np.int64)).tolist()):
            j = owner.setdefault(root, i)
            parent[find(i)] = find(j)
    members: dict[int, list[int]] = {}
    for i in range(len(groups)):
        members.setdefault(find(i), []).append(i)
    pins = ch.pinned()
    entries = []
    for ids in members.values():
        chosen = [groups[i] for i in ids]
        if len(chosen) == 1:
            t = chosen[0].target
            entries.append(Entry(chosen, {t.name: np.arange(t.units)}, t.units, np.zeros(t.units, dtype=bool)))
            continue
        channel_roots = np.unique(np.concatenate([roots[m.target.name] for m in chosen]))
        index = {m.target.name: np.searchsorted(channel_roots, roots[m.target.name]) for m in chosen}
        why = [pins.get(int(r)) for r in channel_roots]
        reasons: dict[str, int] = {}
        for reason in why:
            if reason is not None:
                reasons[reason] = reasons.get(reason, 0) + 1
        pinned = np.array([reason is not None for reason in why], dtype=bool)
        entries.append(Entry(chosen, index, len(channel_roots), pinned, reasons))
    return entries


def _unit_roots(g, call, target):
    """The channel class of each output unit of a Dense/Conv-like target, or None when its units are not
    channels the layer makes (a nested or unsupported layer, a depthwise kernel: see the module notes)."""
    if call is None or call.kind != "mixer" or target.attr not in ("kernel", "pointwise_kernel"):
        return None
    ids = g.ids[call.outputs[0]]
    if len(ids) != target.units:
        return None
    return g.channels.roots(ids)


def _own_sparsity(e: Entry, config, result: MaskSet) -> float | None:
    """The override sparsity of a set: its members' (the highest when they differ), or None."""
    given = {m.target.layer_name: override_sparsity(m.target, config) for m in e.members}
    values = {v for v in given.values() if v is not None}
    if not values:
        return None
    if e.tied and (len(values) > 1 or None in given.values()):
        result.notes.append(
            f"{e.label}: one set of shared channels, pruned at {max(values):g} (the highest "
            "override sparsity among its layers)"
        )
    return max(values)


def _ranking(e: Entry, config, together: bool) -> np.ndarray:
    """The scores a set is ranked by: raw for an untied target ranked alone or against a threshold
    number, normalised for a tied set (and for everyone ranked together when normalize='mean')."""
    if together:
        return e.combined(config.normalize == "mean")
    if config.threshold not in (None, "mean"):
        return e.combined(False)
    return e.combined(e.tied)


def _candidates(e: Entry, scores: np.ndarray) -> np.ndarray:
    return np.flatnonzero(~e.pinned & ~e.reserved(scores))


def _select_each(entries: list[Entry], sparsities: list, config, result: MaskSet) -> None:
    """Each set on its own: round(s * prunable channels), or those below the threshold (sparsity None)."""
    if not entries:
        return
    picks, ks, scored = [], [], []
    for e, sparsity in zip(entries, sparsities, strict=True):
        scores = _ranking(e, config, together=False)
        free = _candidates(e, scores)
        if sparsity is None:
            limit = scores.mean() if config.threshold == "mean" else np.float32(config.threshold)
            k = int(np.count_nonzero(scores[free] < limit))
        else:
            k = int(round(sparsity * e.prunable))
            if k > len(free):
                _note_floor(e, result)
                k = len(free)
        picks.append(free)
        ks.append(k)
        scored.append(scores[free])
    chosen = masking.select_lowest(scored, ks)
    for e, sparsity, free, sel in zip(entries, sparsities, picks, chosen, strict=True):
        _write(e, free[np.asarray(sel, dtype=bool)], sparsity, result)


def _select_together(entries: list[Entry], config, result: MaskSet) -> None:
    """All sets ranked together: exactly round(s * all prunable channels), floors held by reservation."""
    if not entries:
        return
    sparsity = config.effective_sparsity
    picks, scored = [], []
    for e in entries:
        scores = _ranking(e, config, together=True)
        free = _candidates(e, scores)
        picks.append(free)
        scored.append(scores[free])
    budget = int(round(sparsity * sum(e.prunable for e in entries)))
    chosen = masking.select_lowest_global(scored, min(budget, sum(len(f) for f in picks)))
    for e, free, sel in zip(entries, picks, chosen, strict=True):
        sel = np.asarray(sel, dtype=bool)
        if len(free) and sel.all() and len(free) < e.prunable:
            _note_floor(e, result)
        _write(e, free[sel], sparsity, result)


def _note_floor(e: Entry, result: MaskSet) -> None:
    if e.tied:
        result.notes.append(f"{e.label}: pruned less to keep every member's min_keep floor")
    else:
        m = e.members[0]
        result.notes.append(f"{m.target.name}: kept {m.floor} of {e.channels} groups (min_keep)")


def _write(e: Entry, removed: np.ndarray, sparsity, result: MaskSet) -> None:
    """Every member's mask: a unit is kept unless its channel was selected."""
    keep = np.ones(e.channels, dtype=bool)
    keep[removed] = False
    for m in e.members:
        result.masks[m.target.name] = m.target.expand_units(keep[e.index[m.target.name]])
        result.requested[m.target.name] = sparsity
