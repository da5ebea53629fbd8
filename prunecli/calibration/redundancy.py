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
  475 MiB on ResNet50), each released as its float64 inverse is built. The greedy removal does not
  rewrite H^-1 per removed channel (d^2 floats read and written per step, most of the score's time on
  ResNet50 before greedy38): H^-1 is held as the inverse at the last compaction less Ut^T Ut, a factor
  that grows by the removed channel's k columns (the block Schur complement cols B^-1 cols^T, B the
  channel's k x k block, Cholesky-factored), so a removal reads the factor once for the channel's k
  current columns (a d x rank x k product) and refits W by them; the k x k diagonal blocks the costs
  read are kept apart and downdated by the same k columns. Once a quarter of the columns are removed
  (COMPACT) they are dropped and the factor is folded into H^-1 by one product. Each step prices every
  channel left in one array operation per reader: a one-column channel (a Dense's or 1x1 conv's) as
  sum_j W[c, j]^2 / [H^-1]_cc, a k x k conv's as tr(B^-1 W_g W_g^T) (one batched k x k solve of the
  channels' k x k Gram matrices). The greedy's products are small and many, so NumPy's BLAS runs them
  on one thread (threadpoolctl): split over two cores of a loaded machine each product waited for the
  other core (a 256-channel 3x3 cluster's greedy, before greedy38: 8.3 s CPU on two threads, 2.9 s on one). A reader wider than MAX_WIDTH inputs (a Dense after a large Flatten) is not read.
- Grouped convolutions (groups > 1) are scored a group at a time: the channel graph makes a group's
  input channels and its filters one channel class, so its unit is the group, and the layers reading
  the group's output channels price removing all of them at once (their columns in the reader's
  Hessian: the group's channels x taps). The grouped conv itself is never a reader (its input block
  goes with the group).
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
GREEDY_BLAS_THREADS = 1  # the greedy's many small products (module docstring); None leaves BLAS as it is
READER_KINDS = ("dense", "conv")  # views whose X @ W is the layer's whole output
COMPACT = 0.25  # share of a reader's rows removed before they are dropped from w and H^-1
MAX_WIDTH = 8192  # inputs of the widest reader read (its H^-1 in float64: 0.5 GiB); wider ones are not


class Reader:
    """One Dense/Conv call that reads scored channels: its weights W (d_in + bias, d_out), the inverse
    of its dampened input Hessian, the columns of each channel root, and its dense output energy.

    During the greedy removal (`start`, `costs`, `remove`) H^-1 is held as `hinv` - Ut^T Ut: the
    inverse as of the last compaction less one low-rank factor that grows by a channel's k columns per
    removal (its block Schur complement, Cholesky-factored), so a removal reads Ut once (a skinny GEMM
    for the channel's k current columns) instead of rewriting all of H^-1; the diagonal k x k blocks
    the costs read are kept apart and downdated by each removal's k columns. At a compaction (COMPACT)
    the removed columns are dropped and the factor is folded into `hinv` by one GEMM."""

    def __init__(self, name: str, w: np.ndarray, hessian: np.ndarray, groups: dict[int, np.ndarray]):
        self.name = name
        self.w = w
        d = hessian.shape[0]
        damp = DAMPENING * max(float(np.mean(np.diag(hessian))), 1e-12)
        self.energy = max(float(np.sum(w * (hessian @ w))), 1e-30)
        self.hinv = np.linalg.inv(hessian + damp * np.eye(d))
        self.groups = groups  # root -> columns of X (rows of w and hinv; renumbered as removed ones are dropped)
        self.live = np.ones(d, bool)  # rows of w and hinv not yet removed
        self.factor = np.empty((0, d))  # Ut: H^-1 now is hinv - Ut[:rank].T @ Ut[:rank]
        self.rank = 0
        self.buckets: list[_Bucket] = []

    def start(self, position: dict[int, int]) -> None:
        """Before the greedy: the channels this reader reads, bucketed by width, with their cluster
        positions and the diagonal blocks of H^-1 their costs read."""
        by_width: dict[int, list[int]] = {}  # a conv's channels have k*k columns each, a Flatten's one per position
        for r in self.groups:
            if r not in position:
                continue
            by_width.setdefault(len(self.groups[r]), []).append(r)
        self.buckets = [_Bucket(self, roots, position) for roots in by_width.values()]
        self.bucket_of = {r: (b, i) for b in self.buckets for i, r in enumerate(b.roots)}

    def costs(self, out: np.ndarray) -> None:
        """Adds to out (one entry per cluster position) the relative output error removing each channel
        left adds, the others refit."""
        for b in self.buckets:
            alive = np.flatnonzero(b.alive)
            if not len(alive):
                continue
            wg = self.w[b.cols[alive]]  # (n, k, d_out)
            if b.width == 1:  # a Dense's or 1x1 conv's channel: sum_j w_cj^2 / [H^-1]_cc, one array operation
                cost = np.einsum("ij,ij->i", wg[:, 0], wg[:, 0]) / b.blocks[alive, 0, 0]
            else:  # tr(B^-1 W_g W_g^T) for each channel's k x k block B: one batched k x k solve
                grams = np.matmul(wg, wg.transpose(0, 2, 1))
                cost = np.einsum("nii->n", np.linalg.solve(b.blocks[alive], grams))
            out[b.position[alive]] += cost / self.energy

    def remove(self, root: int) -> None:
        """OBS update: the other columns' weights refit, H^-1 restricted to the columns left (module docstring)."""
        bucket, i = self.bucket_of.pop(root)
        del self.groups[root]
        g = bucket.cols[i]
        cols = self.hinv[:, g]  # H^-1's k columns now: the compacted inverse less the factor's share
        if self.rank:
            cols -= self.factor[: self.rank].T @ self.factor[: self.rank, g]
        lower = _cholesky(cols[g])  # the k x k block B = L L^T
        u = np.linalg.solve(lower, cols.T).T  # cols B^-1 cols^T = u u^T
        _subtract_product(self.w, u, np.linalg.solve(lower, self.w[g]))  # w -= cols B^-1 w_g
        if self.rank + len(g) > len(self.factor):  # room for the removals until the next compaction
            grown = np.empty(
                (min(len(self.live), self.rank + int(np.ceil(COMPACT * len(self.live))) + len(g)), len(self.live))
            )
            grown[: self.rank] = self.factor[: self.rank]
            self.factor = grown
        self.factor[self.rank : self.rank + len(g)] = u.T
        self.rank += len(g)
        for b in self.buckets:
            ug = u[b.cols]  # (n, k, rank k)
            b.blocks -= np.matmul(ug, ug.transpose(0, 2, 1))
        bucket.alive[i] = False
        self.w[g] = 0.0
        self.live[g] = False
        if np.count_nonzero(~self.live) >= COMPACT * len(self.live):
            self._compact()

    def _compact(self) -> None:
        keep = np.flatnonzero(self.live)
        position = np.full(len(self.live), -1)
        position[keep] = np.arange(len(keep))
        hinv = self.hinv[np.ix_(keep, keep)]
        if self.rank:
            part = np.ascontiguousarray(self.factor[: self.rank, keep])
            _subtract_product(hinv, part.T, part)
        self.hinv, self.factor, self.rank = hinv, np.empty((0, len(keep))), 0
        self.w = np.ascontiguousarray(self.w[keep])
        self.groups = {r: position[c] for r, c in self.groups.items()}
        for b in self.buckets:
            b.cols = position[b.cols]  # a removed channel's columns become -1, never read again
        self.live = np.ones(len(keep), bool)


class _Bucket:
    """A reader's channels of one width: their columns (n, k), cluster positions, whether each is
    still in, and the k x k diagonal blocks of H^-1 now."""

    def __init__(self, reader: Reader, roots: list[int], position: dict[int, int]):
        self.roots = roots
        self.cols = np.stack([reader.groups[r] for r in roots])
        self.width = self.cols.shape[1]
        self.position = np.array([position[r] for r in roots])
        self.alive = np.ones(len(roots), bool)
        self.blocks = reader.hinv[self.cols[:, :, None], self.cols[:, None, :]]


def _cholesky(block: np.ndarray) -> np.ndarray:
    """L with L L^T = block, a diagonal block of a dampened H^-1 (positive definite unless rounding
    says otherwise: then its eigenvalues are clipped at a tiny positive floor)."""
    try:
        return np.linalg.cholesky(block)
    except np.linalg.LinAlgError:
        values, vectors = np.linalg.eigh((block + block.T) / 2)
        floor = max(float(values.max()), 1e-300) * 1e-12
        _, r = np.linalg.qr((vectors * np.sqrt(np.maximum(values, floor))).T)
        return r.T  # (R^T)(R^T)^T = X X^T: L up to the signs of its columns, which no product here sees


def _subtract_product(a: np.ndarray, b: np.ndarray, c: np.ndarray, rows: int = 256) -> None:
    """a -= b @ c in place, a block of rows at a time: no temporary the size of a."""
    for start in range(0, len(a), rows):
        a[start : start + rows] -= b[start : start + rows] @ c


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
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=GREEDY_BLAS_THREADS, user_api="blas"):
        return _greedy_steps(roots, readers)


def _greedy_steps(roots: list[int], readers: list[Reader]) -> dict[int, float]:
    position = {r: i for i, r in enumerate(roots)}
    for reader in readers:
        reader.start(position)
    left = np.ones(len(roots), bool)
    out: dict[int, float] = {}
    top = 0.0
    for step in range(len(roots)):
        costs = np.zeros(len(roots))
        for reader in readers:
            reader.costs(costs)
        ids = np.flatnonzero(left)
        i = int(ids[np.argmin(costs[ids])])
        left[i] = False
        top = max(top, costs[i]) if np.isfinite(costs[i]) else top
        out[roots[i]] = top
        if step < len(roots) - 1:
            for reader in readers:
                if roots[i] in reader.groups:
                    reader.remove(roots[i])
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
