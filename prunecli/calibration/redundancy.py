"""Channel scores that see redundancy: what removing a channel costs once the layers reading it are refit.

A per-channel magnitude (mean |w| of a filter) cannot tell a channel the others reproduce from one they
cannot: a layer whose 128 channels are largely copies of one another (a 1x1 "head" before pooling and
the classifier) scores like any other. The optimal brain surgeon (Hassibi & Stork 1993) answers the
question the channel refit (channel_refit.py) then acts on. For a linear reader X @ W with input
Hessian H = X^T X / n on calibration data, removing the group g of X's columns that carry channel c
and refitting W on the rest raises the output error ||X W - X W'||^2 / n by

    sum over outputs j of  W[g, j]^T [(H^-1)_gg]^-1 W[g, j]

(g: one column for a Dense or 1x1 reader; a k x k conv's k*k taps of c; a Flatten's positions of c).
A channel the others predict well has a large [H^-1]_cc and costs little, whatever its magnitude
(ThiNet, Luo et al. 2017, chooses channels by the same reconstruction, greedily).

How it is applied here:
- Readers. From each channel the channel graph (structure/channels.py) follows BatchNorm, activations,
  pooling, depthwise convolutions, Adds and Flatten to the Dense and Conv layers that read it (its
  *readers*; a residual stream has several). Their actual inputs are captured on --data (capture.py),
  so whatever sits between maker and reader is in H.
- Greedy, not one at a time. Two copies of one channel each look free alone; removing one makes the
  other unique. Within each group of channels that share readers (a layer's channels, or a tied set's),
  the cheapest channel is removed, each reader's weights and H^-1 are updated as OBS does, and the next
  cheapest is found, until one is left: a channel's score is what its removal cost at its turn, its
  readers' errors each relative to that reader's dense output energy tr(W^T H W) and summed over them,
  made non-decreasing along the order (a running maximum) so the ranking removes channels in the greedy
  order. Pinned channels (outputs) are never candidates and score above the rest.
- Relative errors make layers comparable: each is the share of a reader's output a removal loses after
  its refit, the quantity BatchNorm-normalised layers pass on. A reader with a bias refits its bias too
  (a column of ones in H), as channel_refit.py does.
- Cost. Every reader's input Hessian is captured from the same forward passes, one per batch of --data
  (capture.capture_all; one pass up to each reader before made the capture quadratic in depth: 53
  passes on ResNet50), so every reader's float32 accumulator is alive at once (sum of d^2 floats:
  475 MiB on ResNet50), each released as its float64 inverse is built; the greedy removal
  of n channels then updates the inverse n times, in place, each over the columns still left (the
  removed ones are dropped once a quarter of them are gone): under d^3 / 2 multiply-adds for a reader
  of d inputs (4e10 for 512 channels read by a 3x3 conv, d = 4,608; d^3 before they were dropped).
  Each step prices every channel left in one array operation per reader: a one-column channel (a
  Dense's or 1x1 conv's) as sum_j W[c, j]^2 / [H^-1]_cc and removed by a rank-1 update, no solve; a
  k x k conv's as one batched solve of its k x k blocks. The update of H^-1 (memory-bound: d^2 floats
  read and written per step) is most of what is left. A reader wider than MAX_WIDTH inputs (a Dense
  after a large Flatten) is not read.
- Fallback. A target none of whose channels reach a Dense or Conv reader (only an Einsum, a recurrent
  layer, a transposed conv, a reader wider than MAX_WIDTH) keeps a magnitude score, mean |w| of each unit, scaled so
  its mean is the median of the readers' scores: the two then share one ranking (not measured on a net
  that needs it: bench/STRUCTURED.md's three nets have none). So does one whose readers' inputs on
  --data are degenerate (capture's `degenerate`: one example, all zero, constant). Both are notes the
  report carries (the strategy's ScoringContext.notes), naming the layer and the reader not measured.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from prunecli.calibration import capture, views
from prunecli.selection import tied
from prunecli.structure import channels
from prunecli.structure import targets as structure_targets

DAMPENING = 1e-2  # added to H's diagonal, relative to its mean: two exact copies make H singular
READER_KINDS = ("dense", "conv")  # views whose X @ W is the layer's whole output
COMPACT = 0.25  # share of a reader's rows removed before they are dropped from w and H^-1
MAX_WIDTH = 8192  # inputs of the widest reader read (its H^-1 in float64: 0.5 GiB); wider ones are not


class Reader:
    """One Dense/Conv call that reads scored channels: its weights W (d_in + bias, d_out), the inverse
    of its dampened input Hessian, the columns of each channel root, and its dense output energy."""

    def __init__(self, name: str, w: np.ndarray, hessian: np.ndarray, groups: dict[int, np.ndarray]):
        self.name = name
        self.w = w
        d = hessian.shape[0]
        damp = DAMPENING * max(float(np.mean(np.diag(hessian))), 1e-12)
        self.energy = max(float(np.sum(w * (hessian @ w))), 1e-30)
        self.hinv = np.linalg.inv(hessian + damp * np.eye(d))
        self.groups = groups  # root -> columns of X (rows of w and hinv; renumbered as removed ones are dropped)
        self.live = np.ones(d, bool)  # rows of w and hinv not yet removed

    def costs(self, roots: list[int]) -> np.ndarray:
        """The relative output error removing each root's columns adds, the others refit (0 for a root
        this reader does not read)."""
        out = np.zeros(len(roots))
        by_width: dict[int, list[int]] = {}  # a conv's channels have k*k columns each, a Flatten's one per position
        for i, r in enumerate(roots):
            if r in self.groups:
                by_width.setdefault(len(self.groups[r]), []).append(i)
        for width, mine in by_width.items():
            if width == 1:  # a Dense's or 1x1 conv's channel: sum_j w_cj^2 / [H^-1]_cc, one array operation
                c = np.array([self.groups[roots[i]][0] for i in mine])
                wc = self.w[c]  # (n, d_out)
                out[mine] = np.sum(wc * (wc / self.hinv[c, c][:, None]), axis=1) / self.energy
                continue
            g = np.stack([self.groups[roots[i]] for i in mine])  # (n, k)
            blocks = self.hinv[g[:, :, None], g[:, None, :]]  # (n, k, k)
            wg = self.w[g]  # (n, k, d_out)
            out[mine] = np.sum(wg * np.linalg.solve(blocks, wg), axis=(1, 2)) / self.energy
        return out

    def remove(self, root: int) -> None:
        """OBS update: the other columns' weights refit, H^-1 restricted to the columns left. Updated in
        place; once a quarter of the rows are removed they are dropped (COMPACT), so each update costs
        the square of the columns left, not of the reader's width."""
        g = self.groups.pop(root)
        if len(g) == 1:  # a rank-1 update, no solve
            col = self.hinv[:, g[0]].copy()
            pivot = col[g[0]]
            self.w -= np.outer(col, self.w[g[0]] / pivot)
            self.hinv -= np.outer(col, col / pivot)
        else:
            block = self.hinv[np.ix_(g, g)]
            cols = self.hinv[:, g]
            self.w -= cols @ np.linalg.solve(block, self.w[g])
            self.hinv -= cols @ np.linalg.solve(block, cols.T)
        self.w[g] = 0.0
        self.hinv[g, :] = 0.0
        self.hinv[:, g] = 0.0
        self.hinv[g, g] = 1.0  # inert: the removed columns stay out of every later block
        self.live[g] = False
        if np.count_nonzero(~self.live) >= COMPACT * len(self.live):
            keep = np.flatnonzero(self.live)
            position = np.full(len(self.live), -1)
            position[keep] = np.arange(len(keep))
            self.hinv = np.ascontiguousarray(self.hinv[np.ix_(keep, keep)])
            self.w = np.ascontiguousarray(self.w[keep])
            self.groups = {r: position[c] for r, c in self.groups.items()}
            self.live = np.ones(len(keep), bool)


def _reader_of(call, kernel_targets):
    """The LayerView of a Dense/Conv call that can be read as X @ W, or None."""
    if call.kind != "mixer" or len(call.inputs) != 1:
        return None
    t = kernel_targets.get(id(call.layer))
    if t is None:
        return None
    view = views.view_of(t)
    if isinstance(view, str) or view.kind not in READER_KINDS or view.channels_first or view.d_in > MAX_WIDTH:
        return None
    return view


def _columns_of(call, view, wanted: set[int], g) -> tuple[np.ndarray, list[int]] | None:
    """The channel root of each of the call's input columns and the wanted roots among them, or None
    when it reads none."""
    ids = g.ids[call.inputs[0]]
    if view.d_in % max(len(ids), 1):
        return None
    roots = np.tile(g.channels.roots(ids), view.d_in // len(ids))  # a conv's rows: taps x channels, channel fastest
    mine = sorted(set(roots.tolist()) & wanted)
    return (roots, mine) if mine else None


def _reader_from(call, view, stats, roots: np.ndarray, mine: list[int], skipped: list[str]) -> Reader | None:
    """The call's Reader of the wanted roots it reads from its captured input statistics, or None: a
    reader whose inputs on --data say nothing (capture's `degenerate`: one row, all zero, constant) is
    added to `skipped` with the reason."""
    import tensorflow as tf

    why = stats.degenerate()
    if why is not None:
        skipped.append(f"redundancy: {call.name} not measured on --data ({why})")
        return None
    h = np.asarray(stats.hessian, dtype=np.float64)
    w = np.asarray(view.to_matrix(tf.cast(tf.convert_to_tensor(view.target.variable), tf.float32)), np.float64)
    layer = call.layer
    if getattr(layer, "use_bias", False) and getattr(layer, "bias", None) is not None:
        s = stats.scale  # the ones column in the Hessian's scaled units
        mean = np.asarray(stats.total, np.float64) / max(stats.rows, 1)
        h = np.block([[h, s * mean[:, None]], [s * mean[None, :], np.array([[s * s]])]])
        w = np.vstack([w, np.asarray(layer.bias, np.float64)[None, :]])  # [s X, s] @ [W; b] = s (X W + b)
    groups = {r: np.flatnonzero(roots == r) for r in mine}
    return Reader(call.name, w, h, groups)


def _greedy(roots: list[int], readers: list[Reader]) -> dict[int, float]:
    """Each root's cost at its turn in the greedy removal (module docstring), non-decreasing in order."""
    left = list(roots)
    out: dict[int, float] = {}
    top = 0.0
    while left:
        costs = sum(r.costs(left) for r in readers)
        i = int(np.argmin(costs))
        root = left.pop(i)
        top = max(top, costs[i]) if np.isfinite(costs[i]) else top
        out[root] = top
        if left:
            for r in readers:
                if root in r.groups:
                    r.remove(root)
    return out


def channel_scores(
    model, targets: list, batches: list, progress: Callable[[str], None] | None = None
) -> tuple[dict[str, np.ndarray], list[str]]:
    """{target name: one score per unit} and notes; see the module docstring. `batches` are input
    batches of --data (capture.take_examples). Raises channels.GraphUnsupported for a model whose
    channel graph cannot be read."""
    g = channels.graph_of(model)
    calls = tied.graph_calls(g)
    unit_roots = {t.name: tied.unit_roots(g, calls.get(id(t.layer)), t) for t in targets}
    pinned = set(g.channels.pinned())
    wanted = {int(r) for found in unit_roots.values() if found is not None for r in found.tolist()} - pinned
    kernel_targets = {id(t.layer): t for t in structure_targets.walk(model) if t.attr == "kernel"}
    planned = []  # (call, view, column roots, wanted roots read) of each reader, in call order
    seen: set[int] = set()
    for call in g.calls:
        view = _reader_of(call, kernel_targets)
        if view is None or id(call.layer) in seen:
            continue
        seen.add(id(call.layer))
        columns = _columns_of(call, view, wanted, g)
        if columns is not None:
            planned.append((call, view, *columns))
    if progress is not None:
        progress(f"redundancy: reading {len(planned)} layers' inputs, one forward pass per batch")
    captures = [capture.HessianCapture(view, len(g.calls_of(call.layer))) for call, view, _r, _m in planned]
    readers: list[Reader] = []
    skipped: list[str] = []
    unmeasured: set[int] = set()  # roots read by a reader whose inputs on --data said nothing
    for (call, view, roots, mine), stats in zip(
        planned, capture.capture_all(captures, model, capture.chunks(batches)), strict=True
    ):
        reader = _reader_from(call, view, stats, roots, mine, skipped)
        del stats  # its float32 Hessian: only the Reader's float64 inverse is kept
        if reader is not None:
            readers.append(reader)
        else:
            unmeasured.update(mine)
    # groups of roots joined by a reader they share are removed greedily together
    parent = {r: r for r in wanted}

    def find(r):
        while parent[r] != r:
            parent[r] = parent[parent[r]]
            r = parent[r]
        return r

    for reader in readers:
        keys = list(reader.groups)
        for k in keys[1:]:
            a, b = find(keys[0]), find(k)
            if a != b:
                parent[max(a, b)] = min(a, b)
    read = {r for reader in readers for r in reader.groups}
    clusters: dict[int, list[int]] = {}
    for r in sorted(read):
        clusters.setdefault(find(r), []).append(r)
    root_score: dict[int, float] = {}
    for members in clusters.values():
        involved = [r for r in readers if any(m in r.groups for m in members)]
        root_score.update(_greedy(members, involved))
    values = np.array(list(root_score.values())) if root_score else np.zeros(1)
    high = float(values.max()) * 2.0 + 1.0
    median = float(np.median(values)) if root_score else 1.0
    scores: dict[str, np.ndarray] = {}
    notes = list(skipped)
    for t in targets:
        found = unit_roots[t.name]
        if found is not None and all(int(r) in pinned for r in found.tolist()):  # an output layer: never cut
            scores[t.name] = np.full(len(found), high, np.float32)
            continue
        if found is not None and any(int(r) in root_score for r in found.tolist()):
            scores[t.name] = np.array(
                [root_score.get(int(r), high if int(r) in pinned else median) for r in found.tolist()], np.float32
            )
            continue
        magnitude = np.abs(np.asarray(t.to_matrix(np.asarray(t.variable, np.float32)))).mean(axis=0)
        mean = float(magnitude.mean())
        scores[t.name] = (magnitude * (median / mean if mean > 0 else 1.0)).astype(np.float32)
        why = (
            "no Dense or Conv layer reading its channels was measured (above)"
            if found is not None and unmeasured.intersection(found.tolist())
            else f"none of the layers reading its channels is a Dense or channels-last Conv of at most {MAX_WIDTH:,} inputs"
        )
        notes.append(f"{t.name}: {why}; scored by magnitude, not redundancy")
    return scores, notes
