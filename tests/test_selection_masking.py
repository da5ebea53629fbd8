"""Both selection paths (XLA kernels, NumPy) against plain NumPy references: exact counts, ties by
position, -0.0 == +0.0."""

from __future__ import annotations

import numpy as np
import pytest

from prunecli.selection import kernels as masking


def select_lowest(scores, ks, path: str = "xla"):
    """Each tensor's own k lowest scores, through kernels.select (one segment per tensor)."""
    masks, _ = masking.select([[s] for s in scores], ks, path)
    return masks


def select_lowest_global(scores, k, path: str = "xla"):
    """The k lowest scores across all tensors together, through kernels.select (one segment)."""
    if not scores:
        if int(k) != 0:
            raise ValueError(f"cannot select {k} of 0 scores")
        return []
    masks, _ = masking.select([list(scores)], [k], path)
    return masks


def lowest_reference(values: np.ndarray, k: int) -> np.ndarray:
    """The k lowest by a stable sort: ties go to the earlier position; -0.0 is +0.0."""
    flat = np.where(values == 0, np.float32(0), values).astype(np.float32).ravel()
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(flat, kind="stable")[:k]] = True
    return keep


def as_numpy(masks) -> list[np.ndarray]:
    return [np.asarray(m) for m in masks]


def random_tensor(rng, n: int, kind: str) -> np.ndarray:
    if kind == "normal":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "few_values":  # heavy ties everywhere, negatives included
        return rng.integers(-3, 4, n).astype(np.float32)
    if kind == "rounded":
        return np.round(rng.standard_normal(n), 1).astype(np.float32)
    if kind == "abs":  # magnitude scores
        return np.abs(rng.standard_normal(n)).astype(np.float32) * 1e-3
    raise AssertionError(kind)


KINDS = ("normal", "few_values", "rounded", "abs")
# 200,003 is sampled on the NumPy path; it runs in the full suite
SIZES = (1, 2, 7, 1023, 1024, 1025, 4096, 30_001, pytest.param(200_003, marks=pytest.mark.slow))
PATHS = ("xla", "numpy")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_layerwise_matches_stable_sort(n, kind, path):
    rng = np.random.default_rng(n)
    x = random_tensor(rng, n, kind)
    for k in sorted({0, 1, n // 3, n // 2, n - 1, n} - {-1}):
        (got,) = as_numpy(select_lowest([x], [k], path))
        assert got.sum() == k
        np.testing.assert_array_equal(got, lowest_reference(x, k))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_several_segments_at_once(kind, path):
    rng = np.random.default_rng(7)
    sizes = [5, 1024, 3000, 1, 777, 2048, 0, 12]
    xs = [random_tensor(rng, n, kind).reshape(-1, 1) if n else np.zeros((0,), np.float32) for n in sizes]
    ks = [int(rng.integers(0, n + 1)) for n in sizes]
    got = as_numpy(select_lowest(xs, ks, path))
    for x, k, g in zip(xs, ks, got, strict=True):
        assert g.shape == (x.size,)
        np.testing.assert_array_equal(g, lowest_reference(x, k))


@pytest.mark.parametrize("path", PATHS)
def test_more_segments_than_one_kernel_call_holds(path):
    rng = np.random.default_rng(3)
    count = masking._MAX_SEGMENTS + 6  # two kernel calls (150 segments compiled a third shape: 1-2 s more)
    xs = [random_tensor(rng, int(n), "rounded") for n in rng.integers(1, 300, count)]
    ks = [int(rng.integers(0, x.size + 1)) for x in xs]
    for x, k, g in zip(xs, ks, as_numpy(select_lowest(xs, ks, path)), strict=True):
        np.testing.assert_array_equal(g, lowest_reference(x, k))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", KINDS)
def test_global_ranks_all_tensors_together(kind, path):
    rng = np.random.default_rng(11)
    xs = [random_tensor(rng, n, kind) for n in (100, 5000, 1024, 3)]
    joined = np.concatenate(xs)
    for k in (0, 1, 2500, joined.size - 1, joined.size):
        got = np.concatenate(as_numpy(select_lowest_global(xs, k, path)))
        assert got.sum() == k
        np.testing.assert_array_equal(got, lowest_reference(joined, k))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value", [0.0, 1.5, -2.0])
def test_constant_tensor_selects_the_first_k(value, path):
    x = np.full(5000, value, np.float32)
    for k in (0, 1, 2999, 5000):
        (got,) = as_numpy(select_lowest([x], [k], path))
        np.testing.assert_array_equal(got, np.arange(5000) < k)


@pytest.mark.parametrize("path", PATHS)
def test_negative_zero_ties_with_positive_zero(path):
    x = np.array([0.0, -0.0, 0.0, -0.0, -1.0, 1.0], np.float32)
    (got,) = as_numpy(select_lowest([x], [3], path))
    np.testing.assert_array_equal(got, [True, True, False, False, True, False])


@pytest.mark.parametrize("path", PATHS)
def test_order_across_signs_and_extremes(path):
    x = np.array([3.0, -np.inf, -1e-30, np.inf, -3.0, 1e-30, 0.0, np.float32(3.4e38)], np.float32)
    order = []
    for k in range(1, x.size + 1):
        (got,) = as_numpy(select_lowest([x], [k], path))
        order.append(int(np.flatnonzero(got & ~np.isin(np.arange(x.size), order))[0]))
    assert order == [1, 4, 2, 6, 5, 0, 7, 3]


@pytest.mark.parametrize("path", PATHS)
def test_zero_sized_and_bad_counts(path):
    assert select_lowest_global([], 0, path) == []
    with pytest.raises(ValueError):
        select_lowest([np.ones(4, np.float32)], [5], path)
    with pytest.raises(ValueError):
        select_lowest_global([np.ones(4, np.float32)], -1, path)


def test_compiled_kernel_is_shared_across_sizes():
    """Sizes that round to the same padded layout reuse one trace (one XLA compilation)."""
    fn = masking._kernels()[0]
    select_lowest([np.arange(40_000, dtype=np.float32)], [5])
    traces = fn.experimental_get_tracing_count()
    select_lowest([np.arange(39_000, dtype=np.float32)], [7])
    assert fn.experimental_get_tracing_count() == traces


@pytest.mark.parametrize("channels_per_tap", [None, 5])
def test_nm_keep_mask_keeps_n_highest_per_group(channels_per_tap):
    """None: one run of 10 rows (groups 0..3, 4..7, 8..9); 5: two taps of 5 channels (0..3, 4 | 5..8, 9),
    a group never crossing from one tap into the next."""
    from prunecli.structure.targets import nm_groups

    rng = np.random.default_rng(5)
    m = np.round(rng.standard_normal((10, 6)), 1).astype(np.float32)
    keep = np.asarray(masking.nm_keep_mask(m, 2, nm_groups(10, 4, channels_per_tap)))
    run = channels_per_tap or 10
    spans = [(tap + s, min(tap + s + 4, tap + run)) for tap in range(0, 10, run) for s in range(0, run, 4)]
    for col in range(6):
        for start, end in spans:
            block = m[start:end, col]
            order = np.argsort(-block, kind="stable")[:2]
            want = np.zeros(block.size, bool)
            want[order] = True
            np.testing.assert_array_equal(keep[start:end, col], want)


def test_apply_masks_zeroes_exactly_the_masked_weights():
    import keras

    v = keras.Variable(np.arange(1, 13, dtype=np.float32).reshape(3, 4))
    mask = np.arange(12).reshape(3, 4) % 3 == 0
    masking.apply_masks([v], [mask])
    np.testing.assert_array_equal(np.asarray(v), np.where(mask, np.arange(1, 13).reshape(3, 4), 0))


def test_masks_broken_names_a_pruned_weight_a_step_wrote_into_and_an_emptied_target():
    import keras

    from prunecli.structure import targets as targets_mod

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d")])
    (t,) = [x for x in targets_mod.select(model) if x.layer_name == "d"]
    keep = np.ones(t.shape, bool)
    keep[0, :] = False
    masking.apply_masks([t.variable], [keep])
    assert masking.masks_broken([t], {t.name: keep}, allow_empty=False) is None
    values = np.asarray(t.variable)
    values[0, 1] = 0.5  # a step that wrote into a pruned position
    t.variable.assign(values)
    assert masking.masks_broken([t], {t.name: keep}, allow_empty=False) == f"1 pruned weights of {t.name} are not zero"
    nothing = np.zeros(t.shape, bool)
    masking.apply_masks([t.variable], [nothing])
    assert "prunes all of it" in masking.masks_broken([t], {t.name: nothing}, allow_empty=False)
    assert masking.masks_broken([t], {t.name: nothing}, allow_empty=True) is None
