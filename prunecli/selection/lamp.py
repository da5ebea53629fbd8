"""LAMP (Lee et al., ICLR 2021): layer-adaptive scores, and a global LAMP budget turned into a count per layer.

With a layer's scores sorted ascending, LAMP(u) = s_u^2 / (sum of s_v^2 over v with s_v >= s_u): the
share of the layer's remaining squared score that u carries. Within a layer it never decreases as the
score grows, so taking the `budget` lowest LAMP values of the whole model is the same as taking, in
each layer, the elements under one global LAMP value v*: a count per layer. `lamp_counts` finds those
counts without sorting every layer:

1. Sample. Each large layer gives 1/64 of its squared scores (8K-64K) at random; their LAMP values, with the
   tails scaled up from the sample, estimate every layer's curve and so v*. Around each layer's
   estimated cut a band of squared scores wide enough for the sampling error is chosen.
2. Scan. One pass over a layer counts the elements under its band, sums the squares above it and
   gathers the band, whose exact LAMP values come from sorting the band alone (a few percent).
3. Check. v* is found exactly from the bands. It is right only if every element outside a band lies
   on the side the band says: every element under the band has LAMP < lo / (lo + the band's and
   above's sum) and every element above it LAMP > hi / (the sum above). A layer whose bound does
   not hold (a sample far off; it practically never happens) is scanned again with its band widened
   to the whole layer, which is the exact sort, and v* found again.

So the counts are exact, as if every element's LAMP value had been ranked, up to float64 rounding of the
tail sums. The layers come from a callable that gives them in order each time it is called, so a caller
that cannot hold all scores at once (selection/chunked.py) computes them again per pass instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

EXACT = 1 << 15  # layers up to this many scores are sorted whole at once
SAMPLE = (1 << 13, 1 << 16)  # a larger layer samples 1/64 of its scores, within these bounds
Z = 4.0  # band half-width: this many standard deviations of a sampled rank ...
SLACK = 0.002  # ... plus this share of the layer, for the error of the sampled tails and of v*
CHUNK = 1 << 18  # elements per step of a scan: its temporaries stay in cache


def _squares(scores) -> np.ndarray:
    return np.square(np.asarray(scores, dtype=np.float32).reshape(-1))


def _sorted_lamp(ordered: np.ndarray, above: float = 0.0) -> np.ndarray:
    """float64 LAMP values of ascending squares `ordered`, whose layer also holds elements above them
    summing to `above`; tied squares share the tail of their run's first element (0 where it is 0)."""
    n = ordered.size
    tail = np.cumsum(ordered[::-1], dtype=np.float64)[::-1] + above  # tail[i] = sum of ordered[i:] and above
    run_start = np.ones(n, dtype=bool)
    run_start[1:] = ordered[1:] != ordered[:-1]
    first = np.maximum.accumulate(np.where(run_start, np.arange(n), 0))  # the first index of each tie run
    denom = tail[first]
    return np.divide(ordered, denom, out=np.zeros(n, dtype=np.float64), where=denom > 0)


def lamp_scores(scores: np.ndarray) -> np.ndarray:
    """LAMP scores of one layer's scores, float32, in the layer's own order: one argsort of the squares,
    the LAMP values computed in sorted order and scattered back once."""
    sq = _squares(scores)
    order = np.argsort(sq, kind="stable")
    out = np.zeros(sq.size, dtype=np.float32)
    out[order] = _sorted_lamp(sq[order])
    return out


@dataclass
class _Band:
    """A layer's exact LAMP values for its squares in [lo, hi] (None: open), and what lies outside."""

    lo: float | None
    hi: float | None
    lamp: np.ndarray  # ascending, float64
    below: int  # elements with a square under lo
    above: int  # elements with a square over hi
    inside_sum: float
    above_sum: float

    def holds(self, v: float) -> bool:
        """Whether every element under the band has LAMP < v and every one above it LAMP > v, so that
        counting below + the band's values < v (or <= v) counts the layer exactly."""
        if self.below and not self.lo / (self.lo + self.inside_sum + self.above_sum) <= v:
            return False
        return not self.above or self.hi / self.above_sum >= v


def _scan(scores, lo: float | None, hi: float | None) -> _Band:
    """One read of a layer's scores, squared a cache-sized chunk at a time: the count of squares under
    lo, the band of squares in [lo, hi] and the sum of those above hi."""
    if lo is None and hi is None:
        ordered = np.sort(_squares(scores))
        return _Band(None, None, _sorted_lamp(ordered), 0, 0, float(np.sum(ordered, dtype=np.float64)), 0.0)
    below = above = 0
    above_sum = 0.0
    inside = []
    flat = np.asarray(scores, dtype=np.float32).reshape(-1)
    for i in range(0, flat.size, CHUNK):
        c = np.square(flat[i : i + CHUNK])
        keep = np.ones(c.size, dtype=bool) if lo is None else c >= lo
        below += c.size - int(np.count_nonzero(keep))
        if hi is not None:
            over = c > hi
            above += int(np.count_nonzero(over))
            above_sum += float(np.sum(c * over, dtype=np.float64))  # not c[over]: a dense gather is slow
            keep &= ~over
        inside.append(c[keep])
    ordered = np.sort(np.concatenate(inside))
    lamp = _sorted_lamp(ordered, above_sum)
    return _Band(lo, hi, lamp, below, above, float(np.sum(ordered, dtype=np.float64)), above_sum)


def _taken(bands: list[_Band], caps: list[int], v: float, side: str) -> list[int]:
    """Per layer, how many elements have LAMP < v ("left") or <= v ("right"), at most the layer's cap."""
    return [min(b.below + int(np.searchsorted(b.lamp, v, side=side)), c) for b, c in zip(bands, caps, strict=True)]


def _threshold(count: Callable[[float], int], budget: int) -> float:
    """The smallest v >= 0 with count(v) >= budget (count non-decreasing), searched over the bit patterns
    of non-negative float64s, which order like their values; +inf if none reaches it."""
    lo, hi = 0, int(np.float64(np.inf).view(np.int64))
    while lo < hi:
        mid = (lo + hi) // 2
        if count(float(np.int64(mid).view(np.float64))) >= budget:
            hi = mid
        else:
            lo = mid + 1
    return float(np.int64(lo).view(np.float64))


def _estimate_bands(samples: dict, sizes: list[int], caps: list[int], budget: int, exact: dict) -> dict:
    """(lo, hi) squares bracketing each sampled layer's cut at the v* its sample estimates."""
    curves = {}
    for i, s in samples.items():
        tail = np.cumsum(s[::-1], dtype=np.float64)[::-1] * (sizes[i] / s.size)  # the layer's tails, estimated
        curves[i] = np.divide(s, tail, out=np.zeros(s.size), where=tail > 0)

    def estimated(v: float) -> int:
        total = 0
        for i, cap in enumerate(caps):
            if i in exact:
                total += min(int(np.searchsorted(exact[i].lamp, v, side="right")), cap)
            else:
                total += min(round(int(np.searchsorted(curves[i], v, side="right")) * sizes[i] / curves[i].size), cap)
        return total

    v = _threshold(estimated, budget)
    bands = {}
    for i, s in samples.items():
        m = s.size
        j = int(np.searchsorted(curves[i], v, side="right"))
        p = min(max(j / m, 1.0 / m), 1.0 - 1.0 / m)
        d = math.ceil(Z * math.sqrt(m * p * (1 - p)) + SLACK * m) + 1
        bands[i] = (float(s[j - d]) if j - d >= 0 else None, float(s[j + d]) if j + d < m else None)
    return bands


def lamp_counts(layers: Callable[[], Iterable[np.ndarray]], caps: list[int], budget: int, seed: int = 0) -> list[int]:
    """How many elements each layer loses when the `budget` lowest LAMP values over all layers go
    together, no layer more than its cap, ties at the threshold taken in layer order.

    `layers()` gives each layer's scores in order (any shape); it is called once per pass (two, or more
    in the rare case a band has to be widened), so scores may be recomputed instead of held.
    """
    budget = min(budget, sum(caps))
    if budget <= 0:
        return [0] * len(caps)
    if budget == sum(caps):
        return list(caps)
    rng = np.random.default_rng(seed)
    sizes, samples, exact = [], {}, {}
    for i, scores in enumerate(layers()):  # pass 1: small layers exactly, large ones sampled
        flat = np.asarray(scores, dtype=np.float32).reshape(-1)
        sizes.append(flat.size)
        if flat.size <= EXACT:
            exact[i] = _scan(flat, None, None)
        else:
            m = min(max(flat.size // 64, SAMPLE[0]), SAMPLE[1])  # more samples: a narrower band to sort
            samples[i] = np.sort(_squares(flat[rng.integers(0, flat.size, m)]))
    if len(sizes) != len(caps):
        raise ValueError(f"{len(sizes)} layers of scores for {len(caps)} caps")
    wanted = _estimate_bands(samples, sizes, caps, budget, exact) if samples else {}
    bands: list = [exact.get(i) for i in range(len(caps))]
    while True:  # pass 2, and a rescan of any layer whose band missed, widened to the whole layer
        if wanted:
            for i, scores in enumerate(layers()):
                if i in wanted:
                    bands[i] = _scan(scores, *wanted[i])
        v = _threshold(lambda x: sum(_taken(bands, caps, x, "right")), budget)
        wanted = {i: (None, None) for i, b in enumerate(bands) if not b.holds(v)}
        if not wanted:
            break
    counts = _taken(bands, caps, v, "left")
    left = budget - sum(counts)
    for i, upto in enumerate(_taken(bands, caps, v, "right")):  # ties at v: in layer order
        extra = min(upto - counts[i], left)
        counts[i] += extra
        left -= extra
    return counts
