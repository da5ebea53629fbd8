"""Embeddings are calibrated by token counts: one-hot rows reproduce the lookup, frequent tokens keep
more of their row, a token the calibration never saw is ranked as one of mean count, and wanda, sparsegpt and
--reconstruct prune exactly the count asked with no fallback."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import calibration_config, every_target

VOCAB, DIM, SEQ = 40, 8, 12


def _model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((SEQ,), dtype="int32")
    h = keras.layers.Embedding(VOCAB, DIM, name="emb")(inp)
    h = keras.layers.GlobalAveragePooling1D()(h)
    out = keras.layers.Dense(3, name="head")(h)
    return keras.Model(inp, out)


def _tokens(n: int, seed: int = 0):
    """Token ids where 0..9 are frequent, 10..29 rare and 30..39 never occur."""
    rng = np.random.default_rng(seed)
    frequent = rng.integers(0, 10, (n, SEQ))
    rare = rng.integers(10, 30, (n, SEQ))
    return np.where(rng.random((n, SEQ)) < 0.8, frequent, rare).astype("int32")


def test_one_hot_rows_reproduce_the_lookup_and_count_the_tokens():
    import tensorflow as tf

    from prunecli.calibration import capture, views

    model = _model()
    x = _tokens(6)
    t = next(t for t in every_target(model) if t.layer_name == "emb")
    view = views.view_of(t)
    assert not isinstance(view, str) and view.diagonal and (view.d_in, view.d_out) == (VOCAB, DIM)
    rows = view.inputs(x)
    np.testing.assert_allclose(tf.matmul(rows, view.to_matrix(t.variable)), tf.reshape(t.layer(x), (-1, DIM)))
    assert view.rows_per_example(x.shape) == SEQ
    stats = capture.HessianCapture(view, 1, full=False, max_rows=5).run(model, capture.chunks([x], 4))
    np.testing.assert_allclose(np.square(stats.norms()), np.bincount(x.reshape(-1), minlength=VOCAB))


def _embedding_kept(scale_unseen: float) -> np.ndarray:
    from prunecli.calibration import prune_calibrated

    model = _model()
    t = next(t for t in every_target(model) if t.layer_name == "emb")
    w = np.ones((VOCAB, DIM), "float32") * np.linspace(1.0, 1.1, DIM)
    w[30:] *= scale_unseen
    t.variable.assign(w)
    res = prune_calibrated(model, [t], [_tokens(64)], calibration_config("wanda", sparsity=0.5))
    assert res.section["fallback"] == {}
    kept = np.asarray(res.masks[t.name]).sum(axis=1)
    assert int(kept.sum()) == VOCAB * DIM // 2
    return kept


def test_frequent_tokens_keep_more_of_their_row():
    kept = _embedding_kept(1.0)  # the same magnitudes everywhere: the counts decide
    assert kept[:10].min() == DIM and kept[:10].mean() > kept[10:30].mean() >= kept[30:].mean()


def test_a_token_the_calibration_never_saw_is_ranked_as_a_token_of_mean_count():
    """Unseen rows with large weights keep them: scored |w| sqrt(0 + mean count), not 0."""
    kept = _embedding_kept(10.0)
    assert kept[30:].min() == DIM


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.slow
def test_an_embedding_model_is_calibrated_end_to_end(method):
    from prunecli.calibration import prune_calibrated

    model = _model(1)
    ts = every_target(model)
    res = prune_calibrated(model, ts, [_tokens(48, 1)], calibration_config(method, sparsity=0.6, reconstruct=True))
    assert res.section["fallback"] == {}
    emb = next(t for t in ts if t.layer_name == "emb")
    entry = res.section["layers"][emb.name]
    assert entry["inputs"].startswith("token ids") and entry["error_after"] is not None
    assert int(np.sum(np.asarray(emb.variable) == 0)) == round(0.6 * VOCAB * DIM)
    assert not any("rank-deficient" in n for n in res.notes)  # a diagonal Hessian is never "short of rows"
