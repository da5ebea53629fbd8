"""Values the model cannot read are refused when the data is read, in one line (exit 3): token ids
outside an Embedding's table (or not whole numbers), and a binary classifier's labels outside 0..1.

Before, ids past the table ended in "internal error: InvalidArgumentError: Graph execution error"
from the first evaluation, and a sigmoid classifier trained on labels 0..2 without a word.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner

from prunecli.cli import main
from prunecli.errors import DataError
from prunecli.io import data

RNG = np.random.default_rng(0)


def _rnn(input_dtype: str = "int32"):
    import keras

    model = keras.Sequential(
        [
            keras.Input((10,), dtype=input_dtype),
            keras.layers.Embedding(50, 8, name="emb"),
            keras.layers.LSTM(8, name="lstm"),
            keras.layers.Dense(2, activation="softmax", name="out"),
        ]
    )
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def _sigmoid(units: int = 1, loss: str | None = "binary_crossentropy"):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(units, activation="sigmoid", name="out")])
    if loss:
        model.compile("adam", loss)
    return model


def _refused(path, model, match: str):
    with pytest.raises(DataError, match=match) as info:
        data.load(str(path), model, batch_size=16)
    assert "\n" not in str(info.value)
    return str(info.value)


def _x(n: int = 32) -> np.ndarray:
    return RNG.standard_normal((n, 4)).astype("float32")


# --- token ids feeding an Embedding --------------------------------------------------------------------


@pytest.fixture(scope="module")
def rnn():
    return _rnn()


@pytest.mark.parametrize("low, high", [(0, 500), (-3, 10), (0, 51)])
def test_ids_outside_the_embedding_are_refused(rnn, tmp_path, low, high):
    ids = RNG.integers(low, high, (32, 10))
    ids[0, 0], ids[0, 1] = low, high - 1  # both ends present
    path = tmp_path / "d.npz"
    np.savez(path, x=ids, y=RNG.integers(0, 2, 32))
    message = _refused(path, rnn, rf"holds ids {low}\.\.{high - 1} but Embedding 'emb' reads ids 0\.\.49")
    assert f"input {rnn.inputs[0].name!r}" in message and "input_dim 50" in message


def test_ids_in_range_load(rnn, tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=RNG.integers(0, 50, (32, 10)), y=RNG.integers(0, 2, 32))
    assert data.load(str(path), rnn, batch_size=16).n_train == 32


def test_ids_without_labels_and_in_npy_pairs_are_checked(rnn, tmp_path):
    ids = RNG.integers(0, 60, (32, 10))
    np.savez(tmp_path / "x_only.npz", x=ids)
    _refused(tmp_path / "x_only.npz", rnn, r"holds ids 0\.\.\d+ but Embedding 'emb'")
    np.save(tmp_path / "x.npy", ids)
    np.save(tmp_path / "y.npy", RNG.integers(0, 2, 32))
    _refused(tmp_path / "x.npy", rnn, r"holds ids 0\.\.\d+ but Embedding 'emb'")


def test_float_ids_must_be_whole_numbers():
    """Keras casts a float id to int32 (2.7 reads row 2): not whole numbers are refused; whole-number
    floats in range are ids."""
    import tempfile
    from pathlib import Path

    model = _rnn("float32")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.npz"
        ids = RNG.integers(0, 50, (32, 10)).astype("float32")
        np.savez(path, x=ids, y=RNG.integers(0, 2, 32))
        assert data.load(str(path), model, batch_size=16).n_train == 32
        ids[3, 4] = 2.7
        np.savez(path, x=ids, y=RNG.integers(0, 2, 32))
        _refused(path, model, r"feeds Embedding 'emb', which reads whole-number token ids 0\.\.49, but holds 2\.7")


def test_each_input_of_a_multi_input_model_feeding_an_embedding(tmp_path):
    """Only the inputs an Embedding reads are ids: here one directly, one through a nested model; the
    float features beside them are not."""
    import keras

    inner = keras.Sequential(
        [keras.Input((5,), dtype="int32"), keras.layers.Embedding(20, 4, name="inner_emb"), keras.layers.Flatten()],
        name="inner",
    )
    ids, more, feat = (
        keras.Input((5,), dtype="int32", name="ids"),
        keras.Input((5,), dtype="int32", name="more"),
        keras.Input((3,), name="feat"),
    )
    pooled = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(30, 4, name="emb")(ids))
    h = keras.layers.Concatenate()([pooled, inner(more), feat])
    model = keras.Model([ids, more, feat], keras.layers.Dense(2, activation="softmax", name="out")(h))
    model.compile("adam", "sparse_categorical_crossentropy")

    good = {"x_ids": RNG.integers(0, 30, (32, 5)), "x_more": RNG.integers(0, 20, (32, 5)), "x_feat": 5 * _x(32)[:, :3]}
    good["y"] = RNG.integers(0, 2, 32)
    np.savez(tmp_path / "good.npz", **good)
    assert data.load(str(tmp_path / "good.npz"), model, batch_size=16).n_train == 32
    np.savez(tmp_path / "bad_ids.npz", **{**good, "x_ids": good["x_ids"] + 1})
    _refused(tmp_path / "bad_ids.npz", model, r"input 'ids' holds ids 1\.\.30 but Embedding 'emb' reads ids 0\.\.29")
    np.savez(tmp_path / "bad_more.npz", **{**good, "x_more": good["x_more"] - 1})
    _refused(tmp_path / "bad_more.npz", model, r"input 'more' holds ids -1\.\.18 but Embedding 'inner_emb'")


# --- binary labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize("labels", [[0, 1, 2], [-1, 0, 1], [0.0, 0.5, 1.5]])
def test_binary_labels_outside_0_1_are_refused(tmp_path, labels):
    path = tmp_path / "d.npz"
    np.savez(path, x=_x(30), y=np.array(labels * 10))
    _refused(path, _sigmoid(), r"labels range .* but the model's binary cross-entropy loss takes labels 0\.\.1")
    np.savez(path, x=_x(30), y=np.array(labels * 10).reshape(-1, 1))  # as a column too
    _refused(path, _sigmoid(), r"labels range")


def test_uncompiled_sigmoid_labels_outside_0_1_are_refused(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=_x(30), y=np.array([0, 1, 2] * 10))
    _refused(path, _sigmoid(loss=None), r"labels range 0\.\.2 but the model's sigmoid output takes labels 0\.\.1")


@pytest.mark.parametrize("labels", [[0, 1], [0.0, 1.0], [0.2, 0.9], [True, False]])
def test_binary_and_soft_labels_in_0_1_load(tmp_path, labels):
    path = tmp_path / "d.npz"
    np.savez(path, x=_x(32), y=np.array(labels * 16))
    assert data.load(str(path), _sigmoid(), batch_size=16).n_train == 32


def test_multi_label_rows_and_class_numbers_still_load(tmp_path):
    model = _sigmoid(3)
    np.savez(tmp_path / "rows.npz", x=_x(32), y=RNG.integers(0, 2, (32, 3)).astype("float32"))
    assert data.load(str(tmp_path / "rows.npz"), model, batch_size=16).n_train == 32
    np.savez(tmp_path / "numbers.npz", x=_x(32), y=RNG.integers(0, 3, 32))
    assert data.load(str(tmp_path / "numbers.npz"), model, batch_size=16).n_train == 32
    np.savez(tmp_path / "bad.npz", x=_x(32), y=np.where(np.arange(96).reshape(32, 3) == 5, 2, 1))
    _refused(tmp_path / "bad.npz", model, r"labels range 1\.\.2 but the model's binary cross-entropy loss")


def test_regression_labels_are_not_binary(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=_x(32), y=RNG.integers(0, 5, 32).astype("float32"))
    for model in (_sigmoid(loss="mse"), _linear()):
        assert data.load(str(path), model, batch_size=16).n_train == 32


def _linear():
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="out")])
    model.compile("adam", "mse")
    return model


def test_binary_output_of_a_multi_output_model(tmp_path):
    import keras

    inp = keras.Input((4,), name="features")
    yes = keras.layers.Dense(1, activation="sigmoid", name="yes")(inp)
    amount = keras.layers.Dense(1, name="amount")(inp)
    model = keras.Model(inp, [yes, amount])
    model.compile("adam", ["binary_crossentropy", "mse"])
    np.savez(tmp_path / "good.npz", x=_x(32), y_yes=RNG.integers(0, 2, 32), y_amount=RNG.integers(0, 9, 32))
    assert data.load(str(tmp_path / "good.npz"), model, batch_size=16).n_train == 32
    np.savez(tmp_path / "bad.npz", x=_x(32), y_yes=RNG.integers(0, 3, 32), y_amount=RNG.integers(0, 9, 32))
    _refused(tmp_path / "bad.npz", model, r"labels of output 'yes' range 0\.\.2 but the model's binary cross-entropy")


# --- end to end ---------------------------------------------------------------------------------------


def test_cli_refuses_before_any_work(tmp_path):
    """The audit's two repros: exit 3 with one line, before the first evaluation."""
    rnn = _rnn()
    rnn.save(tmp_path / "rnn.keras")
    np.savez(tmp_path / "ids.npz", x=RNG.integers(0, 500, (64, 10)), y=RNG.integers(0, 2, 64))
    _sigmoid().save(tmp_path / "bin.keras")
    np.savez(tmp_path / "bin.npz", x=_x(64), y=RNG.integers(0, 3, 64))
    for model, npz, said in (
        ("rnn", "ids", "but Embedding 'emb' reads ids 0..49"),
        ("bin", "bin", "labels range 0..2"),
    ):
        out = tmp_path / f"{model}_out.keras"
        result = CliRunner().invoke(
            main,
            [
                "prune",
                str(tmp_path / f"{model}.keras"),
                "-s",
                "0.5",
                "--data",
                str(tmp_path / f"{npz}.npz"),
                "-o",
                str(out),
                "-q",
            ],
        )
        assert result.exit_code == 3, result.output
        assert said in result.stderr and result.stderr.count("\n") == 1 and "internal error" not in result.output
        assert not out.exists()


def _records(path, x, y, x_dtype="int64"):
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for row, label in zip(x, y, strict=True):
            values = [int(v) for v in row] if x_dtype == "int64" else [float(v) for v in row]
            feature = tf.train.Int64List(value=values) if x_dtype == "int64" else tf.train.FloatList(value=values)
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "ids": tf.train.Feature(int64_list=feature)
                        if x_dtype == "int64"
                        else tf.train.Feature(float_list=feature),
                        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                    }
                )
            )
            writer.write(example.SerializeToString())


@pytest.mark.parametrize(
    "bad, said",
    [("id", "feeds Embedding 'emb', which reads whole-number token ids 0..49, but holds 77"), ("label", "got 5")],
)
@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
def test_a_tfrecord_stream_is_checked_on_every_batch_not_the_first_only(tmp_path, bad, said):
    """TFRecords stream, so only their first batch was checked before the work: an id past the
    Embedding's table in a later record ended the run as an internal error (on a GPU it reads as
    zeros, silently), a class number past the output as well. Every batch is checked now: exit 3 in one
    line, nothing written, and the Python API raises the same DataError."""
    import prunecli

    _rnn().save(tmp_path / "rnn.keras")
    x, y = RNG.integers(0, 50, (400, 10)), RNG.integers(0, 2, 400)
    if bad == "id":
        x[300, 3] = 77  # batch 10 of 32 rows (the labels of the first 256 are read before the work)
    else:
        y[300] = 5
    _records(tmp_path / "d.tfrecord", x, y)
    (tmp_path / "d.spec.yaml").write_text("x: {key: ids, dtype: int64, shape: [10]}\ny: {key: label, dtype: int64}\n")
    out = tmp_path / "out.keras"
    argv = ["prune", str(tmp_path / "rnn.keras"), "-s", "0.5", "--data", str(tmp_path / "d.tfrecord")]
    result = CliRunner().invoke(main, [*argv, "--batch-size", "32", "-o", str(out), "-q"])
    assert result.exit_code == 3, result.output
    assert said in result.stderr and result.stderr.count("\n") == 1 and "internal error" not in result.output
    assert not out.exists()
    config = prunecli.build_config(
        {
            "model_path": str(tmp_path / "rnn.keras"),
            "sparsity": 0.5,
            "data": str(tmp_path / "d.tfrecord"),
            "batch_size": 32,
            "output": str(out),
        }
    )
    with pytest.raises(DataError, match="token ids 0..49|got 5"):
        prunecli.prune(config)
    assert not out.exists()


# --- TFRecord records that do not parse, or hold NaN/Inf, past the batches read before the work -----------


def _float_records(path, rows, key="x"):
    """One Example per row, `{key: floats, label: int}`; a row given as (floats, name) is written
    under that feature name instead (a record without the spec's key)."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for i, row in enumerate(rows):
            name, values = (row[1], row[0]) if isinstance(row, tuple) else (key, row)
            feature = {
                name: tf.train.Feature(float_list=tf.train.FloatList(value=[float(v) for v in values])),
                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2])),
            }
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    path.with_name(path.stem + ".spec.yaml").write_text(
        f"x: {{key: {key}, dtype: float32, shape: [4]}}\ny: {{key: label, dtype: int64}}\n"
    )


def _bad_rows(bad: str, at: int, n: int = 400) -> list:
    rows = list(RNG.standard_normal((n, 4)))
    if bad == "short":  # a record with 3 of the spec's 4 values
        rows[at] = rows[at][:3]
    elif bad == "missing":  # a record without the spec's key
        rows[at] = (rows[at], "pixels")
    elif bad in ("nan", "inf"):
        rows[at] = rows[at] * (np.nan if bad == "nan" else np.inf)
    return rows


@pytest.mark.parametrize(
    "bad, said",
    [
        ("short", "a record cannot be read as its spec describes (Key: x."),
        ("missing", "a record cannot be read as its spec describes (Feature: x (data type: float) is required"),
        ("nan", "inputs contain NaN or Inf: nan"),
    ],
)
@pytest.mark.slow  # 2-4 s a case: a run
def test_a_tfrecord_record_that_does_not_parse_or_holds_nan_mid_run_is_a_data_error(tmp_path, bad, said):
    """Class: a record past the batches read before the work (the first 256 labels) that does not parse
    as the spec says (a missing key, a short feature) ended the run as "internal error:
    InvalidArgumentError" (exit 1) from the middle of the evaluation or training; NaN/Inf inputs were
    never checked in a TFRecord at all (the report gave a loss over them, or fine-tuning ended in
    "weights NaN ... a smaller --lr may help", exit 4). Now both are exit 3 in one line naming the file,
    nothing written, and the Python API raises the same DataError."""
    import keras

    import prunecli

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d1"), keras.layers.Dense(2, name="out")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "m.keras")
    _float_records(tmp_path / "d.tfrecord", _bad_rows(bad, at=300))
    out = tmp_path / "out.keras"
    argv = ["prune", str(tmp_path / "m.keras"), "-s", "0.5", "--data", str(tmp_path / "d.tfrecord")]
    result = CliRunner().invoke(main, [*argv, "--batch-size", "32", "--epochs", "1", "-o", str(out), "-q"])
    assert result.exit_code == 3, result.output
    assert said in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"prunecli: error: {tmp_path / 'd.tfrecord'}: ")
    assert not out.exists()
    config = {"model_path": str(tmp_path / "m.keras"), "data": str(tmp_path / "d.tfrecord"), "output": str(out)}
    with pytest.raises(DataError, match=said.split(" (")[0]):
        prunecli.prune(prunecli.build_config({**config, "batch_size": 32}))
    assert not out.exists()


@pytest.mark.parametrize(
    "bad", [pytest.param("nan", marks=pytest.mark.slow), "inf", pytest.param("short", marks=pytest.mark.slow)]
)
def test_a_tfrecord_bad_in_its_first_batch_is_refused_when_read(tmp_path, bad):
    """The same class, read before the work: NaN/Inf inputs are refused as in an .npz, and a record
    that does not parse says why without TensorFlow's function and node names."""
    _float_records(tmp_path / "d.tfrecord", _bad_rows(bad, at=3, n=40))
    said = _refused(tmp_path / "d.tfrecord", _sigmoid(units=2, loss=None), "NaN or Inf" if bad != "short" else "Key: x")
    assert "function_node" not in said and "{{" not in said


def test_a_record_parser_error_names_its_file_whatever_the_path():
    """errors.record_scope carries the path through TensorFlow's node names (hex: any byte a path can
    hold), also when TensorFlow made the scope unique with a suffix."""
    from prunecli.errors import record_scope, streamed_data_error

    path = "/data/ünï code/a b;c.tfrecord"
    for suffix in ("", "_1", "_12"):
        text = (
            "Graph execution error:\n\nDetected at node "
            f"{record_scope(path)}{suffix}/ParseSingleExample/ParseExample/ParseExampleV2 defined at:\n"
            "<stack traces unavailable>\nKey: x.  Can't parse serialized Example.\n"
            f"\t [[{{{{node {record_scope(path)}{suffix}/ParseSingleExample}}}}]]\n\t [[IteratorGetNext]]"
        )
        error = streamed_data_error(Exception(text))
        assert error is not None and error.exit_code == 3
        reason = "Key: x.  Can't parse serialized Example."
        assert error.message == f"{path}: a record cannot be read as its spec describes ({reason})"
    assert streamed_data_error(Exception("Detected at node model/dense/MatMul\nIncompatible shapes")) is None


@pytest.mark.slow  # 3-5 s: a prune, an apply and a verify
def test_every_library_entry_point_raises_the_data_error_of_a_bad_record_mid_run(tmp_path):
    """Class: only prune() turned a streamed dataset's failure mid-run into the DataError the CLI
    reports; apply_plan() and verify() (the README's Python API for plans), a sweep and a plan raised
    TensorFlow's InvalidArgumentError for the same file. Each entry point now raises the DataError."""
    import keras

    import prunecli
    from prunecli.run.apply import apply_plan
    from prunecli.run.verify import verify

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="d1"), keras.layers.Dense(2, name="out")])
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "m.keras")
    rows = _bad_rows("short", at=300)
    _float_records(tmp_path / "d.tfrecord", rows)
    _float_records(tmp_path / "good.tfrecord", _bad_rows("none", at=0))
    plan, report, out = tmp_path / "plan.zip", tmp_path / "r.json", tmp_path / "out.keras"
    settings = {"model_path": str(tmp_path / "m.keras"), "output": str(out), "save_plan": str(plan)}
    prunecli.prune(prunecli.build_config({**settings, "report": str(report), "data": str(tmp_path / "good.tfrecord")}))
    said = "d.tfrecord: a record cannot be read as its spec describes"
    with pytest.raises(DataError, match=said):
        apply_plan(plan, tmp_path / "m.keras", output=str(tmp_path / "a.keras"), data=str(tmp_path / "d.tfrecord"))
    assert not (tmp_path / "a.keras").exists()
    import json

    written = json.loads(report.read_text())
    del written["reproducibility"]["data"]  # as an older report: no digest refuses d.tfrecord before it is read
    report.write_text(json.dumps(written))
    with pytest.raises(DataError, match=said):
        verify(out, report=report, data=tmp_path / "d.tfrecord")


# --- a dense loss already absurd on --data ---------------------------------------------------------------


@pytest.mark.slow  # two evaluations and a save refused (0.7 s at load 5)
def test_an_absurd_dense_loss_is_blamed_on_the_data_not_the_learning_rate(tmp_path):
    """Inputs of 2**40 into a model trained on unit-scale ones: the dense loss was reported with nothing said,
    and NaN weights after fine-tuning were blamed on --lr. The 'before' evaluation now names the data, and so
    does the NaN message when the dense loss was already absurd (or not finite)."""
    from prunecli.config import PruneConfig
    from prunecli.errors import GateFailed
    from prunecli.outputs.report import Timings
    from prunecli.run import steps
    from prunecli.run.state import RunState
    from prunecli.training.metrics import infer_task

    model = _linear()
    np.savez(tmp_path / "big.npz", x=np.full((8, 4), 2**40, dtype=np.int64), y=np.zeros(8, "float32"))
    d = data.load(str(tmp_path / "big.npz"), model, batch_size=8)
    config = PruneConfig(model_path=str(tmp_path / "m.keras"), data=str(tmp_path / "big.npz"))
    state = RunState(config=config, model=model, source=None, data=d, task=infer_task(model, d.y_example))
    state = state.after(steps.evaluate(state, "before", steps.silent, Timings()))
    assert state.metrics["before"]["loss"] > 1e20
    assert any("big.npz is" in n and "the data is the likely cause" in n for n in state.notes)
    assert not steps.evaluate(state, "after_pruning", steps.silent, Timings()).notes  # said once, before
    model.layers[-1].bias.assign([float("nan")])
    for metrics, said in (({"before": {"loss": 0.5}}, "a smaller --lr"), (state.metrics, "check the data's scale")):
        with pytest.raises(GateFailed, match=said):
            steps.save(dataclasses.replace(state, metrics=metrics), tmp_path / "o.keras", steps.silent, Timings())
    assert not (tmp_path / "o.keras").exists()
