"""Score sets: what one selection decision ranks. Layers whose channels must shrink together form one set.

Every ranking the policy does goes through one kind of object, a `ScoreSet`: a vector of positions,
each with a score, shared by one or more member targets. An untied layer is a set of one (its
positions are its groups: elements, blocks or units); a *tied set* is one set whose positions are
channels made by several member targets. policy.select_sets ranks sets; this module builds them.

Surgery removes a channel only when it is dead in every layer that makes it. `structure/channels.py`
finds those channel classes and their producers: a residual Add/Multiply joins its inputs' channels,
a shared layer its calls', and a Concatenate keeps each slice with the layer that made it, so a
concatenation that meets a merge ties each slice to the layers on the other side. Masking these
layers one at a time rarely kills the same channels, so little shrinks.

Here the neuron targets that produce the same channel classes form one set, pruned like one layer
whose units are the set's channels, as DepGraph (Fang et al., CVPR 2023) prunes coupled layers:

- a channel's score is the mean, over the members that make it, of the member's unit score divided by
  that member's mean score (as scope=global compares layers), so one layer's scale does not decide;
- it loses round(s * channels) of its prunable channels (scope=layer), or is ranked with the other
  sets, a channel counting once (scope=global); a threshold compares the combined score (raw scores
  averaged over the members for a number, normalised ones for 'mean');
- an override sparsity on any member applies to its whole set (the highest, when members disagree);
- every member gets the same keep value for a channel, so the channel is dead in all of them;
- channels the graph pins (network outputs, model inputs, layers surgery cannot slice) are never
  selected and do not count; no member keeps fewer units than its min_keep floor: its best-scoring
  channels are reserved before the lowest are selected.

A depthwise convolution (multiplier 1) is tied to the layers that make the channels it reads
(MobileNet's expand -> depthwise -> project): its filter c and the producer's unit c are one channel,
scored together and removed together, so exactly round(s * channels) of the block's channels go rather
than the union of two independent selections. Targets tied to no other stay sets of one.

A recurrent layer's unit is one channel too: its cell's kernel and recurrent kernel hold one column per
gate for it (structure/layers.py, role "recurrent"), so both weights are members of one set whose
position j gathers unit j's columns of every gate (a member's unit score there is the mean over its
columns), and a removed unit loses all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_NAMED_MEMBERS = 4  # longer sets are named by their first members and a count in notes


@dataclass(eq=False)
class Member:
    """One target's part in a set: its group scores (flat float32) and the groups it must keep."""

    target: object  # structure.targets.Target
    scores: np.ndarray
    floor: int


@dataclass(eq=False)
class ScoreSet:
    """What one decision selects from: `size` positions shared by `members`.

    `index[name]` gives the position of each of that member's groups; None for a set of one, whose
    positions are its member's groups. `pinned` positions (bool per position, or None) are never
    selected and do not count towards the budget."""

    members: list[Member]
    size: int
    index: dict[str, np.ndarray] | None = None
    pinned: np.ndarray | None = None
    reasons: dict[str, int] = field(default_factory=dict)  # pin reason -> channels

    @classmethod
    def single(cls, member: Member) -> ScoreSet:
        return cls([member], int(member.scores.size))

    @property
    def tied(self) -> bool:
        return len(self.members) > 1

    @property
    def label(self) -> str:
        names = list(dict.fromkeys(m.target.layer_name for m in self.members))  # a recurrent cell's two kernels: once
        if len(names) > MAX_NAMED_MEMBERS:
            return "+".join(names[:MAX_NAMED_MEMBERS]) + f"+... ({len(names)} layers)"
        return "+".join(names)

    @property
    def prunable(self) -> int:
        return self.size - (0 if self.pinned is None else int(np.count_nonzero(self.pinned)))

    def combined(self, normalize: bool) -> np.ndarray:
        """One float32 score per position: for a set of one its scores (over their mean when
        `normalize`); for a tied set the mean over the members that make a channel (per member, the
        mean of its units there), each member's scores over its mean score when `normalize`."""
        if self.index is None:
            s = self.members[0].scores
            if normalize:
                mean = float(np.sum(s)) / s.size if s.size else 0.0  # float32 pairwise sum: one fast read
                if mean > 0:
                    return s / np.float32(mean)
            return s
        total = np.zeros(self.size)
        makers = np.zeros(self.size)
        for m in self.members:
            s = np.asarray(m.scores, dtype=np.float64).reshape(-1)
            mean = s.mean() if s.size else 0.0
            if normalize and mean > 0:
                s = s / mean
            idx = self.index[m.target.name]
            hits = np.bincount(idx, minlength=self.size)
            total += np.bincount(idx, weights=s, minlength=self.size) / np.maximum(hits, 1)
            makers += hits > 0
        return (total / np.maximum(makers, 1)).astype(np.float32)

    def reserved(self, scores: np.ndarray) -> np.ndarray:
        """Bool per position: kept so that every member keeps its floor (pinned units count as kept);
        each member's best positions, ties going to the later position, as the selection breaks them."""
        keep = np.zeros(self.size, dtype=bool)
        pinned = np.zeros(self.size, dtype=bool) if self.pinned is None else self.pinned
        order = np.lexsort((-np.arange(self.size), -scores.astype(np.float64)))  # best first
        for m in self.members:
            idx = self.index[m.target.name] if self.index is not None else np.arange(self.size)
            need = m.floor - int(np.count_nonzero(pinned[idx]))
            if need <= 0:
                continue
            units = np.bincount(idx, minlength=self.size)
            mine = order[(units[order] > 0) & ~pinned[order]]
            upto = np.cumsum(units[mine])
            keep[mine[: int(np.searchsorted(upto, need)) + 1]] = True
        return keep


def select_tied(model, members: list[Member], notes: list[str], shrink: bool = False) -> list[ScoreSet] | bool:
    """The score sets of these neuron targets, those that share channels joined into one set each.
    With `shrink`, a layer of its own (or one recurrent layer's kernels) also keeps the channels the
    graph pins whole: --shrink cannot remove them, so masking them would cost accuracy and save
    nothing (five zoo models, bench/ZOO.md: FaceNet's 27 convolutions that feed a Lambda each lost 448
    channels that stayed in the file).

    Returns False, adding nothing, when no two targets share channels and no pin applies, or (with a
    note) when the model has no layer graph: every target is then a set of one. The name is kept for
    the hooks that turn grouping off (tests and bench/shrink_table.py replace it with a function
    returning False)."""
    from prunecli.structure import channels as graph

    try:
        g = graph.graph_of(model)
    except graph.GraphUnsupported as exc:
        notes.append(
            f"neuron masks chosen layer by layer ({exc}): layers that must shrink together "
            "are not grouped, so --shrink may remove little"
        )
        return False
    sets = _sets(g, members, shrink)
    tied = [e for e in sets if e.tied]
    if not tied and not any(e.reasons for e in sets):
        return False
    makers = graph_calls(g)  # a recurrent layer's kernels (both directions of a Bidirectional) are one maker
    merged = [e for e in tied if len({id(makers.get(id(m.target.layer))) for m in e.members}) > 1]
    if merged:
        notes.append(
            f"neuron: {len(merged)} set(s) of layers whose channels meet in a merge (residual Add, Multiply, "
            "Concatenate slices, an attention's query and key, a grouped convolution's groups) pruned as one, with the "
            "same units masked in every member"
        )
    for e in sets:
        if e.reasons:
            why = "; ".join(f"{reason}: {n}" for reason, n in sorted(e.reasons.items()))
            shared = e in merged
            which = "shared channels never pruned" if shared else "channels not pruned: --shrink cannot remove them"
            notes.append(f"{e.label}: {e.size - e.prunable} of {e.size} {which} ({why})")
    return sets


def _sets(g, members: list[Member], shrink: bool = False) -> list[ScoreSet]:
    """Targets joined into sets wherever their units reach the same channel class; with `shrink`, a
    layer's own set keeps its pinned channels too (select_tied)."""
    first_call = graph_calls(g)
    ch = g.channels
    roots = {}
    for m in members:
        found = unit_roots(g, first_call.get(id(m.target.layer)), m.target)
        if found is not None:
            roots[m.target.name] = found
    parent = list(range(len(members)))  # union-find over targets

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for i, m in enumerate(members):
        for root in set(roots.get(m.target.name, np.empty(0, np.int64)).tolist()):
            j = owner.setdefault(root, i)
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(members)):
        groups.setdefault(find(i), []).append(i)
    pins = ch.pinned()
    sets = []
    for ids in groups.values():
        chosen = [members[i] for i in ids]
        if len(chosen) == 1:
            own = roots.get(chosen[0].target.name)
            pinned, reasons = _pins(pins, own) if shrink and own is not None else (None, {})
            sets.append(
                ScoreSet(chosen, int(chosen[0].scores.size), None, pinned, reasons)
                if reasons
                else ScoreSet.single(chosen[0])
            )
            continue
        channel_roots = np.unique(np.concatenate([roots[m.target.name] for m in chosen]))
        index = {m.target.name: np.searchsorted(channel_roots, roots[m.target.name]) for m in chosen}
        makers = {id(first_call.get(id(m.target.layer))) for m in chosen}
        if len(makers) == 1 and first_call[id(chosen[0].target.layer)].kind == "recurrent" and not shrink:
            # one recurrent layer's kernels: pruned like a layer of its own, pins or not (as a Dense
            # is without --shrink: the masks are then what the user asked for)
            sets.append(ScoreSet(chosen, len(channel_roots), index))
            continue
        pinned, reasons = _pins(pins, channel_roots)
        sets.append(ScoreSet(chosen, len(channel_roots), index, pinned, reasons))
    return sets


def pinned_units(model, targets) -> dict[str, dict[str, int]]:
    """{target name: {reason: units}}: the output units of each neuron target that the channel graph pins
    whole (a network output, a model input, a layer surgery cannot slice), which --shrink never removes
    and a -g neuron --shrink run never masks (select_tied); a target none of whose units is pinned, or
    whose units are not channels, is left out. {} for a model without a layer graph. What `inspect`
    says of a layer's units, so that it does not call units shrinkable that `prune --shrink` keeps."""
    from prunecli.structure import channels as graph

    try:
        g = graph.graph_of(model)
    except graph.GraphUnsupported:
        return {}
    makers, pins = graph_calls(g), g.channels.pinned()
    found: dict[str, dict[str, int]] = {}
    for target in targets:
        roots = unit_roots(g, makers.get(id(target.layer)), target)
        if roots is None:
            continue
        gates = max(int(getattr(target, "gates", 1) or 1), 1)
        why = [pins.get(int(r)) for r in roots.reshape(gates, -1)[0]]  # a recurrent unit: one per gate column
        reasons: dict[str, int] = {}
        for reason in why:
            if reason is not None:
                reasons[reason] = reasons.get(reason, 0) + 1
        if reasons:
            found[target.name] = reasons
    return found


def _pins(pins: dict, channel_roots) -> tuple[np.ndarray, dict[str, int]]:
    """Whether each of these channels is pinned by the graph, and how many per reason."""
    why = [pins.get(int(r)) for r in channel_roots]
    reasons: dict[str, int] = {}
    for reason in why:
        if reason is not None:
            reasons[reason] = reasons.get(reason, 0) + 1
    return np.array([reason is not None for reason in why], dtype=bool), reasons


def graph_calls(g) -> dict[int, object]:
    """id(layer) -> the call that makes its units (a recurrent cell's: the layer that runs it)."""
    from prunecli.structure import channels

    return channels.unit_calls(g)


def unit_roots(g, call, target):
    """The channel class of each output unit of a Dense/Conv-like target (for a depthwise kernel, of the
    channel each filter reads; for a recurrent cell's kernels, of the unit each gate column belongs to),
    or None when its units are not channels (a nested or unsupported layer)."""
    from prunecli.structure import channels, layers

    if call is None:
        return None
    if call.kind == "recurrent" and target.attr in ("kernel", "recurrent_kernel"):
        parts = channels.recurrent_parts(call.layer)
        index = [id(p.cell) for p in parts].index(id(target.layer))
        out = g.ids[call.outputs[0]]
        ids = np.tile(out[channels.part_positions(call.layer, index, len(out))], layers.spec(parts[index]).gates)
    elif call.kind == "channelwise" and layers.spec(call.layer).family == "depthwise" and target.attr == "kernel":
        ids = g.ids[call.inputs[0]]
    elif call.kind not in channels.MIXERS or target.attr != layers.spec(call.layer).prunable[-1][0]:  # its units
        return None
    else:
        ids = g.ids[call.outputs[0]]
    if len(ids) != target.units:
        return None
    return g.channels.roots(ids)


def position_roots(g, e: ScoreSet) -> np.ndarray | None:
    """The channel class (root) of each position of a set, as `_sets` matched them, or None when its
    positions are not channels the graph knows (a nested or unsupported layer): what a budget search
    (selection/budget.py) hands the cost model for each channel the set may lose (a recurrent layer's
    units too: the cost model prices their square recurrent kernel)."""
    calls = graph_calls(g)
    out = np.full(e.size, -1, dtype=np.int64)
    for m in e.members:
        found = unit_roots(g, calls.get(id(m.target.layer)), m.target)
        if found is None:
            return None
        out[np.arange(e.size) if e.index is None else e.index[m.target.name]] = found
    return out
