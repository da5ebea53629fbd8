"""A layer called at several steps gives several outputs of one name (found on big-phoney's seq2seq, its
Dense output layer called at 21 unrolled decoder steps: Keras 3 names all 21 outputs `dense_4`).

Each output needs its own labels: the .npz keys them y_NAME, y_NAME_1, y_NAME_2 ... in output order.
Before, y_NAME was read for every output of that name (the second step trained on the first's labels),
and y_NAME_1 was refused as an array nothing reads."""

from __future__ import annotations

import numpy as np
import pytest

from prunecli.errors import DataError
from prunecli.io import data as data_io


@pytest.fixture(scope="module")
def unrolled():
    import keras

    inp = keras.Input((3,), name="x")
    head = keras.layers.Dense(2, activation="softmax", name="head")  # one layer, two steps
    step1 = keras.layers.Dense(4, name="step1")(inp)
    step2 = keras.layers.Dense(4, name="step2")(step1)
    return keras.Model(inp, [head(step1), head(step2)])


def test_outputs_of_one_layer_read_their_own_labels(unrolled, tmp_path):
    assert data_io.io_names(unrolled)[1] == ["head", "head_1"]
    x = np.zeros((8, 3), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y_head=np.zeros((8, 1), np.int64), y_head_1=np.ones((8, 1), np.int64))
    data = data_io.load(str(tmp_path / "d.npz"), unrolled, batch_size=8)
    _x, (y1, y2) = next(iter(data.train))
    assert float(np.max(y1)) == 0.0 and float(np.min(y2)) == 1.0  # the second output's labels, not the first's
    np.savez(tmp_path / "one.npz", x=x, y_head=np.zeros((8, 1), np.int64))  # one array for two outputs
    with pytest.raises(DataError, match="y_head_1"):
        data_io.load(str(tmp_path / "one.npz"), unrolled, batch_size=8)


@pytest.mark.slow
def test_the_accuracy_of_outputs_of_one_name_is_their_mean(unrolled, tmp_path):
    """Keras reports them as head_sparse_categorical_accuracy and head_sparse_categorical_accuracy_1; the
    report's accuracy read only names ending in `accuracy`: the first output's, called the mean."""
    from prunecli.training import metrics

    x = np.random.default_rng(0).standard_normal((16, 3)).astype(np.float32)
    first, second = (np.asarray(o).argmax(-1) for o in unrolled(x))
    np.savez(tmp_path / "d.npz", x=x, y_head=first[:, None], y_head_1=1 - second[:, None])  # all right, all wrong
    data = data_io.load(str(tmp_path / "d.npz"), unrolled, batch_size=16)
    got = metrics.evaluate(unrolled, data.eval, metrics.infer_task(unrolled, data.y_example))
    assert got["accuracy"] == pytest.approx(0.5)
