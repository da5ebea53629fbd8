"""Properties of the policy that must hold for any weights: exact sparsity, monotonicity, N:M
validity, and no layer emptied unless allow_empty (hypothesis; few examples, small tensors).

Shapes come from a short list so the XLA selection kernel is compiled only a few times.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from prunecli.config import Granularity, PruneConfig
from prunecli.selection import policy
from prunecli.structure.targets import Target

SHAPES = [(6, 4), (5, 3), (16, 8), (3, 3, 2, 4)]  # Dense kernels (in, out) and a Conv2D kernel
FAST = settings(max_examples=20, deadline=None, derandomize=True, database=None)


def _target(name: str, values: np.ndarray) -> Target:
    return Target(name, name, "Dense" if values.ndim == 2 else "Conv2D", "kernel", tf.Variable(values), values.ndim - 1)


def _weights(shape, seed: int, distinct: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if distinct:  # |w| all different: a permutation of 1..n with random signs
        n = math.prod(shape)
        return (rng.permutation(np.arange(1, n + 1)) * rng.choice([-1, 1], n)).reshape(shape).astype("float32")
    return rng.standard_normal(shape).astype("float32")


def _masks(targets, config: PruneConfig, level: str = "element") -> dict[str, np.ndarray]:
    scores = {t.name: tf.abs(tf.convert_to_tensor(t.variable)) for t in targets}
    result = policy.build_masks(targets, scores, level, config)
    return {name: np.asarray(mask) for name, mask in result.masks.items()}


layers = st.lists(st.tuples(st.sampled_from(SHAPES), st.integers(0, 2**16)), min_size=1, max_size=3)


@FAST
@given(layers=layers, sparsity=st.floats(0.0, 0.99))
def test_each_layer_loses_exactly_its_share(layers, sparsity):
    targets = [_target(f"l{i}", _weights(shape, seed)) for i, (shape, seed) in enumerate(layers)]

    masks = _masks(targets, PruneConfig(sparsity=sparsity, scope="layer", allow_empty=True))

    for t in targets:
        assert masks[t.name].shape == t.shape
        assert int((~masks[t.name]).sum()) == round(sparsity * t.size)


@FAST
@given(layers=layers, sparsity=st.floats(0.0, 0.99), normalize=st.sampled_from(["lamp", "mean", "none", "erk"]))
def test_global_scope_removes_exactly_the_budget(layers, sparsity, normalize):
    targets = [_target(f"l{i}", _weights(shape, seed)) for i, (shape, seed) in enumerate(layers)]

    masks = _masks(targets, PruneConfig(sparsity=sparsity, scope="global", normalize=normalize, allow_empty=True))

    total = sum(t.size for t in targets)
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)


@FAST
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**16), a=st.floats(0.0, 0.99), b=st.floats(0.0, 0.99))
def test_higher_sparsity_prunes_a_superset(shape, seed, a, b):
    """Magnitude with distinct values: what 30% removes, 60% removes too, and it is the smallest |w|."""
    low, high = sorted((a, b))
    target = _target("w", _weights(shape, seed, distinct=True))

    pruned_low = ~_masks([target], PruneConfig(sparsity=low, allow_empty=True))["w"]
    pruned_high = ~_masks([target], PruneConfig(sparsity=high, allow_empty=True))["w"]

    assert not (pruned_low & ~pruned_high).any()
    magnitude = np.abs(np.asarray(target.variable))
    if pruned_high.any() and (~pruned_high).any():
        assert magnitude[pruned_high].max() < magnitude[~pruned_high].min()


@pytest.mark.slow  # 1.4-2.3 s: the full suite (fast subset at its 120 s limit)
@FAST
@given(shape=st.sampled_from(SHAPES), seed=st.integers(0, 2**16), nm=st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 8)]))
def test_nm_keeps_n_of_every_m_along_the_reduction_axis(shape, seed, nm):
    n, m = nm
    target = _target("w", _weights(shape, seed))

    keep = _masks([target], PruneConfig(granularity=Granularity("nm", n, m)))["w"]

    kept, scores = np.asarray(target.to_matrix(keep)), np.abs(np.asarray(target.to_matrix(target.variable)))
    rows = kept.shape[0]
    channels = shape[-2] if len(shape) == 4 else rows  # a conv's groups stay inside one tap's channels
    spans = [
        (tap + s, min(tap + s + m, tap + channels)) for tap in range(0, rows, channels) for s in range(0, channels, m)
    ]
    for start, end in spans:
        run, run_scores = kept[start:end], scores[start:end]
        assert (run.sum(axis=0) == min(n, len(run))).all()  # exactly N in a full group of M
        for col in range(run.shape[1]):  # the kept ones are the run's highest scores
            kept_col, dropped_col = run_scores[run[:, col], col], run_scores[~run[:, col], col]
            if dropped_col.size:
                assert kept_col.min() >= dropped_col.max()


@FAST
@given(
    layers=layers,
    sparsity=st.floats(0.9, 0.999),
    min_keep=st.floats(0.0, 0.5),
    granularity=st.sampled_from(["element", "neuron"]),
    scope=st.sampled_from(["layer", "global"]),
)
def test_no_layer_is_emptied_unless_allowed(layers, sparsity, min_keep, granularity, scope):
    targets = [_target(f"l{i}", _weights(shape, seed)) for i, (shape, seed) in enumerate(layers)]
    gran = Granularity(granularity)

    masks = _masks(targets, PruneConfig(sparsity=sparsity, min_keep=min_keep, granularity=gran, scope=scope))

    for t in targets:
        keep = masks[t.name] if granularity == "element" else masks[t.name].reshape(-1, t.units).any(axis=0)
        groups, kept = keep.size, int(keep.sum())
        assert kept >= max(1, math.ceil(min_keep * groups)), f"{t.name} kept {kept} of {groups}"


def test_allow_empty_does_empty_a_layer():
    """The floor above is the policy's doing: with allow_empty a high enough sparsity removes everything."""
    target = _target("w", _weights((5, 3), 0))

    kept_default = _masks([target], PruneConfig(sparsity=0.99))["w"].sum()
    kept_allowed = _masks([target], PruneConfig(sparsity=0.99, allow_empty=True))["w"].sum()

    assert kept_default == 1 and kept_allowed == 0
