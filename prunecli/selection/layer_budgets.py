"""Per-layer budgets decided before any ranking: how many groups each layer loses under ERK or OWL.

Both give layer i a density d_i(t) (the share of its groups it keeps) that grows with one parameter t,
no lower than its floor allows and no higher than 1; t is chosen so that exactly `budget` groups go in
all, and the densities are rounded to whole groups, largest remainder first. Each layer is then pruned
layer-wise to its share.

- ERK (Evci et al., ICML 2020, RigL): d_i = t x (sum of the kernel's dims) / (product of its dims).
- OWL (Yin et al., ICML 2024, "Outlier Weighed Layerwise Sparsity"): a layer whose scores hold more
  outliers (scores above OUTLIER_MULTIPLE x the mean score of its block) keeps more. The blocks'
  outlier ratios are scaled to [0, 2 x OWL_SPREAD] and d_i = t + that bonus, so no block's density is
  more than 2 x OWL_SPREAD from another's. A block is the outermost layer holding the weight that is
  not a model (structure/targets.Target.block): a Transformer block's projections share one density,
  as in the paper, and a plain model's layers are blocks of their own. The paper's settings for
  LLaMA (M = 5, lambda = 0.08) are the constants; bench/ONESHOT.md and bench/DECODERS.md measure it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

OUTLIER_MULTIPLE = 5.0  # OWL's M
OWL_SPREAD = 0.08  # OWL's lambda: densities within +-lambda of the mean


def erk_counts(sizes: list[int], factors: list[float], caps: list[int], budget: int) -> tuple[list[int], list[bool]]:
    """How many groups each layer loses under ERK: layer i keeps a density min(1, eps * factor_i), no
    less than its floor allows (1 - caps_i / sizes_i), eps chosen so that exactly `budget` go in all
    (or as many as the caps allow). Returns the counts and which layers their floor held."""
    f = np.asarray(factors, dtype=np.float64)
    live = f > 0
    lo = _least_density(sizes, caps)
    knots = np.concatenate([[0.0], lo[live] / f[live], 1.0 / f[live]])
    return _fill(sizes, caps, budget, lambda eps: eps * f, knots)


def owl_counts(
    scores: Callable[[], Iterable[np.ndarray]], sizes: list[int], caps: list[int], budget: int, blocks: list[str]
) -> tuple[list[int], list[bool]]:
    """How many groups each layer loses under OWL (the module docstring). `scores()` gives each layer's
    scores in order and is called twice (the blocks' means, then their outliers); `blocks` names each
    layer's block. Returns the counts and which layers their floor held."""
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for block, s in zip(blocks, scores(), strict=True):
        flat = np.asarray(s, dtype=np.float64).reshape(-1)
        total[block] = total.get(block, 0.0) + float(flat.sum())
        count[block] = count.get(block, 0) + flat.size
    outliers = dict.fromkeys(total, 0)
    for block, s in zip(blocks, scores(), strict=True):
        limit = OUTLIER_MULTIPLE * total[block] / max(count[block], 1)
        outliers[block] += int(np.count_nonzero(np.asarray(s, dtype=np.float64) > limit))
    ratio = np.array([outliers[b] / max(count[b], 1) for b in blocks])
    span = float(ratio.max() - ratio.min()) if len(ratio) else 0.0
    bonus = (ratio - ratio.min()) / span * 2 * OWL_SPREAD if span > 0 else np.zeros_like(ratio)
    lo = _least_density(sizes, caps)
    knots = np.concatenate([lo - bonus, 1.0 - bonus])
    return _fill(sizes, caps, budget, lambda t: t + bonus, knots)


def _least_density(sizes: list[int], caps: list[int]) -> np.ndarray:
    n = np.asarray(sizes, dtype=np.float64)
    cap = np.asarray(caps, dtype=np.float64)
    return np.divide(n - cap, n, out=np.ones_like(n), where=n > 0)


def _fill(
    sizes: list[int], caps: list[int], budget: int, wanted: Callable[[float], np.ndarray], knots: np.ndarray
) -> tuple[list[int], list[bool]]:
    """Counts for densities clip(wanted(t), floor, 1), t such that exactly `budget` groups go (or as
    many as the caps allow). wanted is non-decreasing in t and linear between the `knots` (where a
    layer meets its floor or 1), so the total kept is too: find its piece, then interpolate."""
    n = np.asarray(sizes, dtype=np.float64)
    cap = np.asarray(caps, dtype=np.float64)
    lo = _least_density(sizes, caps)
    kept = n.sum() - min(budget, int(cap.sum()))

    def density(t: float) -> np.ndarray:
        return np.clip(wanted(t), lo, 1.0)

    knots = np.unique(knots)
    totals = np.array([float(n @ density(x)) for x in knots])
    j = int(np.searchsorted(totals, kept, side="left"))
    if j == 0:
        t = knots[0]
    elif j >= len(knots):
        t = knots[-1]
    else:
        a, b = knots[j - 1], knots[j]
        t = a + (b - a) * (kept - totals[j - 1]) / (totals[j] - totals[j - 1])
    real = n * density(t)
    keep = np.maximum(np.floor(real + 1e-9), n - cap).astype(np.int64)
    keep = np.minimum(keep, n.astype(np.int64))
    short = int(round(kept)) - int(keep.sum())  # whole groups left to hand out, largest remainder first
    order = np.lexsort((np.arange(len(n)), -(real - keep)))
    for i in order:
        if short <= 0:
            break
        if keep[i] < n[i]:
            keep[i] += 1
            short -= 1
    held = [bool(cap[i] < n[i] * (1 - w) - 1e-9) for i, w in enumerate(wanted(t))]
    return [int(x) for x in (n.astype(np.int64) - keep)], held
