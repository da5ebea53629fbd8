"""The one selection path: NumPy and XLA give identical masks, LAMP and ERK have their closed forms,
floors hold under every normalisation, and the path that ran is recorded."""

from __future__ import annotations

import math

import numpy as np
import pytest

from prunecli.config import Granularity, PruneConfig
from prunecli.selection import kernels, layer_budgets, policy
from prunecli.structure.targets import Target


def _target(name: str, values: np.ndarray, cls: str = "Dense") -> Target:
    import tensorflow as tf

    return Target(f"{name}/kernel", name, cls, "kernel", tf.Variable(values), values.ndim - 1)


def _tied_values(rng, n: int) -> np.ndarray:
    """Few distinct values, both signs and both zeros: ties at every threshold."""
    x = rng.integers(-3, 4, n).astype(np.float32) / 2
    x[rng.random(n) < 0.1] = -0.0
    return x


@pytest.mark.parametrize("keep", [False, True])
def test_numpy_and_xla_paths_select_the_same_positions(keep):
    rng = np.random.default_rng(0)
    sizes = [1, 7, 1024, 3000, 70_000, 0, 131_073]
    arrays = [_tied_values(rng, n) for n in sizes]
    arrays[3] = np.round(rng.standard_normal(3000), 1).astype(np.float32)  # normal, rounded: ties too
    for _ in range(3):
        layer_ks = [int(rng.integers(0, a.size + 1)) for a in arrays]
        segments = [[a] for a in arrays] + [arrays]  # every array alone, then all of them ranked together
        ks = layer_ks + [int(rng.integers(0, sum(a.size for a in arrays) + 1))]
        by_numpy, ran_numpy = kernels.select(segments, ks, "numpy", keep=keep)
        by_xla, ran_xla = kernels.select(segments, ks, "xla", keep=keep)
        assert (ran_numpy, ran_xla) == ("numpy", "xla")
        for a, b in zip(by_numpy, by_xla, strict=True):
            np.testing.assert_array_equal(a, b)
        counts = [int(np.count_nonzero(m)) for m in by_numpy]
        chosen = counts[: len(arrays)]
        together = sum(counts[len(arrays) :])
        if keep:
            chosen = [a.size - c for a, c in zip(arrays, chosen, strict=True)]
            together = sum(a.size for a in arrays) - together
        assert chosen == layer_ks and together == ks[-1]  # exact counts despite the ties


def test_numpy_path_breaks_ties_by_position_across_a_segment():
    a, b = np.zeros(5, np.float32), np.full(4, -0.0, np.float32)
    got, _ = kernels.select([[a, b]], [7], "numpy")
    np.testing.assert_array_equal(np.concatenate(got), [True] * 7 + [False] * 2)


def _layers(seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        _target("big", rng.standard_normal((60, 40)).astype(np.float32)),
        _target("conv", rng.standard_normal((3, 3, 6, 8)).astype(np.float32), "Conv2D"),
        _target("small", (rng.standard_normal((7, 3)) * 0.01).astype(np.float32)),
    ]


@pytest.mark.parametrize(
    "settings",
    [
        {"sparsity": 0.7},
        {"sparsity": 0.7, "scope": "global"},
        {"sparsity": 0.9, "scope": "global", "normalize": "none"},
        {"sparsity": 0.9, "scope": "global", "normalize": "lamp"},
        {"sparsity": 0.9, "scope": "global", "normalize": "erk"},
        {"threshold": "mean"},
        {"sparsity": 0.5, "granularity": Granularity("neuron"), "scope": "global"},
        {"sparsity": 0.6, "granularity": Granularity("block", 2, 3)},
    ],
)
def test_build_masks_is_the_same_on_both_paths_and_says_which_ran(settings):
    targets = _layers()
    rounded = {t.name: np.round(np.abs(t.variable.numpy()), 1) for t in targets}  # ties
    by_numpy = policy.build_masks(targets, rounded, "element", PruneConfig(**settings), path="numpy")
    by_xla = policy.build_masks(targets, rounded, "element", PruneConfig(**settings), path="xla")
    assert by_numpy.selection_path == "numpy" and by_xla.selection_path == "xla"
    for t in targets:
        np.testing.assert_array_equal(np.asarray(by_numpy.masks[t.name]), np.asarray(by_xla.masks[t.name]))
    assert by_numpy.notes == by_xla.notes and by_numpy.requested == by_xla.requested


def test_a_cpu_run_selects_with_numpy_and_an_accelerator_switches_to_xla_when_a_layout_repeats(monkeypatch):
    targets = _layers(1)
    scores = {t.name: np.abs(t.variable.numpy()) for t in targets}
    assert policy.build_masks(targets, scores, "element", PruneConfig(sparsity=0.5)).selection_path == "numpy"
    monkeypatch.setattr(kernels, "_accelerator", lambda: True)
    monkeypatch.setattr(kernels, "_SEEN", {})
    layout = [[1000, 2000]]
    assert kernels.choose_path(layout) == "numpy"  # a one-off selection does not pay the compile
    assert kernels.choose_path(layout) == "xla"  # the same layout again: a schedule's mask update
    assert kernels.choose_path([[1000, 2001]]) == "numpy"
    nm = policy.build_masks(targets[:1], scores, "element", PruneConfig(granularity=Granularity("nm", 2, 4)))
    assert nm.selection_path == "nm"


def test_lamp_scores_of_a_known_vector():
    # sorted ascending |w| = 1, 2, 3, 4: w^2 = 1, 4, 9, 16, tails 30, 29, 25, 16
    got = policy.lamp_scores(np.array([3.0, -1.0, 4.0, 2.0], np.float32))
    np.testing.assert_allclose(got, [9 / 25, 1 / 30, 1.0, 4 / 29], rtol=1e-6)
    tied = policy.lamp_scores(np.array([2.0, 1.0, 2.0], np.float32))  # equal scores, equal LAMP
    np.testing.assert_allclose(tied, [4 / 8, 1 / 9, 4 / 8], rtol=1e-6)
    np.testing.assert_array_equal(policy.lamp_scores(np.zeros(3, np.float32)), np.zeros(3))


def test_lamp_global_ranking_matches_its_definition():
    targets = _layers(2)
    scores = {t.name: np.abs(t.variable.numpy()) for t in targets}
    result = policy.build_masks(targets, scores, "element", PruneConfig(sparsity=0.8, scope="global", normalize="lamp"))
    lamp = np.concatenate([policy.lamp_scores(scores[t.name]) for t in targets])
    keep = np.concatenate([np.asarray(result.masks[t.name]).reshape(-1) for t in targets])
    assert int((~keep).sum()) == round(0.8 * lamp.size)
    assert lamp[~keep].max() <= lamp[keep].min()  # the lowest LAMP scores go, whatever layer they are in
    for t in targets:  # a layer's best weight scores 1: LAMP never empties a layer
        assert np.asarray(result.masks[t.name]).any()


def test_erk_densities_of_two_known_shapes():
    # A: Dense 100x100 (factor 200/10000 = 0.02), B: Dense 20x50 (factor 70/1000 = 0.07), 90% of 11,000
    # go: 10000 * 0.02 e + 1000 * 0.07 e = 1100 kept, e = 1100 / 270; A keeps 814.8, B 285.2
    ks, held = layer_budgets.erk_counts([10_000, 1000], [0.02, 0.07], [9999, 999], 9900)
    assert ks == [10_000 - 815, 1000 - 285] and held == [False, False]
    assert sum(ks) == 9900
    # a tiny layer whose ERK density would pass 1 stays dense; its share goes to the other
    ks, _ = layer_budgets.erk_counts([10_000, 6], [0.02, 5 / 6], [9999, 5], round(0.5 * 10_006))
    assert ks[1] == 0 and ks[0] == round(0.5 * 10_006)
    # a floor above the ERK share holds, and the rest of the budget goes elsewhere
    # (A's ERK density, 0.002 * 25 = 0.05, is below the 0.5 its floor needs: B keeps 0.02 * 25 = 0.5)
    ks, held = layer_budgets.erk_counts([1000, 1000], [0.002, 0.02], [500, 999], 1000)
    assert ks == [500, 500] and held == [True, False]


def test_erk_through_the_policy_on_hand_made_layers():
    rng = np.random.default_rng(3)
    a = _target("a", rng.standard_normal((100, 100)).astype(np.float32))
    b = _target("b", rng.standard_normal((20, 50)).astype(np.float32))
    scores = {t.name: np.abs(t.variable.numpy()) for t in (a, b)}
    result = policy.build_masks([a, b], scores, "element", PruneConfig(sparsity=0.9, scope="global", normalize="erk"))
    kept = {t.layer_name: int(np.count_nonzero(np.asarray(result.masks[t.name]))) for t in (a, b)}
    assert kept == {"a": 815, "b": 285}
    for t in (a, b):  # within a layer, layer-wise: the lowest scores go
        mask, s = np.asarray(result.masks[t.name]), scores[t.name]
        assert s[~mask].max() <= s[mask].min()
    assert result.requested[a.name] == result.requested[b.name] == 0.9


@pytest.mark.parametrize("normalize", ["mean", "none", "lamp", "erk", "owl"])
@pytest.mark.parametrize("granularity", [Granularity(), Granularity("neuron")])
def test_every_normalisation_removes_the_exact_budget_and_keeps_the_floors(normalize, granularity):
    targets = _layers(4)
    scores = {t.name: np.abs(t.variable.numpy()) for t in targets}
    config = PruneConfig(sparsity=0.98, scope="global", normalize=normalize, granularity=granularity, min_keep=0.05)
    result = policy.build_masks(targets, scores, "element", config)
    removed = total = capacity = 0
    for t in targets:
        mask = np.asarray(result.masks[t.name])
        keep = mask.reshape(-1) if granularity.kind == "element" else mask.reshape(-1, t.units).any(axis=0)
        floor = max(1, math.ceil(0.05 * keep.size))
        assert int(keep.sum()) >= floor, f"{normalize}: {t.name} kept {int(keep.sum())} of {keep.size}"
        removed += int((~keep).sum())
        total += keep.size
        capacity += keep.size - floor
    assert removed == min(round(0.98 * total), capacity)


def test_overrides_and_erk_share_the_rest_of_the_budget():
    from prunecli.config import LayerOverride

    targets = _layers(5)
    scores = {t.name: np.abs(t.variable.numpy()) for t in targets}
    config = PruneConfig(
        sparsity=0.8, scope="global", normalize="erk", overrides=(LayerOverride("conv", sparsity=0.25),)
    )
    result = policy.build_masks(targets, scores, "element", config)
    pruned = {
        t.layer_name: int(np.size(result.masks[t.name]) - np.count_nonzero(result.masks[t.name])) for t in targets
    }
    assert pruned["conv"] == round(0.25 * 432)
    assert pruned["big"] + pruned["small"] == round(0.8 * (2400 + 21))


def _lamp_reference(layers, caps, budget):
    """Per layer, the range of counts that ranking every element's LAMP score allows: the threshold is
    the smallest LAMP value v at which the layers, each held at its cap, reach the budget; ties at v
    may go either way."""
    from prunecli.selection import lamp

    budget = min(budget, sum(caps))
    values = [np.sort(lamp.lamp_scores(x)) for x in layers]
    candidates = np.unique(np.concatenate(values))
    reached = np.zeros(candidates.size, dtype=np.int64)
    for v, cap in zip(values, caps, strict=True):
        reached += np.minimum(np.searchsorted(v, candidates, side="right"), cap)
    threshold = candidates[np.searchsorted(reached, budget)] if budget else -1.0
    return [
        (
            min(int(np.searchsorted(v, threshold, side="left")), cap),
            min(int(np.searchsorted(v, threshold, side="right")), cap),
        )
        for v, cap in zip(values, caps, strict=True)
    ]


@pytest.mark.parametrize("sizes", [(50, 400, 7, 1000), (50, 40_000, 70_000, 7, 200_000)], ids=["small", "sampled"])
def test_lamp_counts_equal_ranking_every_lamp_score(sizes):
    """The per-layer counts from a global LAMP threshold are those of ranking every element's LAMP score,
    for small layers (sorted whole) and large ones (sampled, then a band around the cut sorted)."""
    from prunecli.selection import lamp

    rng = np.random.default_rng(3)
    layers = [np.round(rng.standard_normal(n) * (i + 1), 1).astype("float32") for i, n in enumerate(sizes)]  # ties
    caps = [n - 1 - n // 100 for n in sizes]
    for budget in (0, 1, 100, 700, sum(caps) // 3, sum(caps) - 1, sum(caps) + 10):
        counts = lamp.lamp_counts(lambda: iter(layers), caps, budget)
        assert sum(counts) == min(budget, sum(caps)) and all(c <= cap for c, cap in zip(counts, caps, strict=True))
        for c, (low, high) in zip(counts, _lamp_reference(layers, caps, budget), strict=True):
            assert low <= c <= high


def test_lamp_counts_widen_a_band_that_missed(monkeypatch):
    """With no margin around the sampled cut, bands miss; the layers whose bounds fail are scanned
    again whole, and the counts are still exact."""
    from prunecli.selection import lamp

    monkeypatch.setattr(lamp, "Z", 0.0)
    monkeypatch.setattr(lamp, "SLACK", 0.0)
    whole = []
    scan = lamp._scan

    def counting(scores, lo, hi):
        if lo is None and hi is None and scores.size > lamp.EXACT:
            whole.append(scores.size)
        return scan(scores, lo, hi)

    monkeypatch.setattr(lamp, "_scan", counting)
    rng = np.random.default_rng(7)
    layers = [
        np.abs(rng.laplace(size=n) * s).astype("float32") for n, s in ((60_000, 1.0), (90_000, 0.1), (50_000, 3.0))
    ]
    caps = [n - 1 for n in (60_000, 90_000, 50_000)]
    missed = 0
    for budget in (20_000, 100_000, 150_000, 190_000):
        whole.clear()
        counts = lamp.lamp_counts(lambda: iter(layers), caps, budget)
        missed += len(whole)
        assert sum(counts) == budget
        for c, (low, high) in zip(counts, _lamp_reference(layers, caps, budget), strict=True):
            assert low <= c <= high
    assert missed, "with no margin some band should have missed"
