"""Data formats: .npz, .npy pairs, image folders and TFRecord, splits, and one-line errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from prunecli.errors import DataError
from prunecli.io import data
from prunecli.io.data.npy import npy_partner
from prunecli.io.data.spec import read_spec


@pytest.fixture(scope="module")
def mlp(mlp_files):
    import keras

    arrays = np.load(mlp_files["data"])
    return keras.saving.load_model(mlp_files["keras"]), arrays["x"], arrays["y"]


@pytest.fixture(scope="module")
def digits(example_model, example_data):
    import keras

    arrays = dict(np.load(example_data))
    return keras.saving.load_model(example_model), arrays


def rows(dataset):
    xs, ys = zip(*((np.asarray(x), np.asarray(y)) for x, y in dataset), strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def same_rows(a, b):
    """The same examples, in any order."""
    key = lambda m: m[np.lexsort(m.reshape(len(m), -1).T[::-1])]  # noqa: E731
    return np.array_equal(key(a.reshape(len(a), -1)), key(b.reshape(len(b), -1)))


# --- .npz ---------------------------------------------------------------------------------------


def test_npz_test_and_val_sets_and_val_split(mlp, tmp_path):
    model, x, y = mlp
    path = tmp_path / "three.npz"
    np.savez(path, x_train=x[:300], y_train=y[:300], x_test=x[300:350], y_test=y[300:350], x_val=x[350:], y_val=y[350:])
    d = data.load(str(path), model, batch_size=32)
    assert (d.n_train, d.n_eval) == (300, 50) and d.eval_held_out
    assert same_rows(rows(d.val)[0], x[350:])
    # a test set plus --val-split: the validation share comes out of the training data
    two = tmp_path / "two.npz"
    np.savez(two, x_train=x[:300], y_train=y[:300], x_test=x[300:], y_test=y[300:])
    d = data.load(str(two), model, batch_size=32, val_split=0.2)
    assert d.n_train == 240 and d.n_eval == 100
    train_x, val_x = rows(d.train)[0], rows(d.val)[0]
    assert len(val_x) == 60 and same_rows(np.concatenate([train_x, val_x]), x[:300])
    # one set: --val-split holds out the evaluation set; without it, evaluation is the training data
    one = tmp_path / "one.npz"
    np.savez(one, x=x, y=y)
    split = data.load(str(one), model, val_split=0.25)
    assert (split.n_train, split.n_eval, split.eval_held_out, split.val) == (300, 100, True, None)
    whole = data.load(str(one), model)
    assert (whole.n_eval, whole.eval_held_out, whole.eval_classes) == (400, False, len(np.unique(y)))
    # labels of one class: accuracy only counts one prediction, which the run's notes say (exit 0 before,
    # a 3-class model's accuracy "rose" from 0.50 to 0.65 as pruning pushed predictions toward it); uint8
    # inputs to a model with no Rescaling layer are 0..255 pixels, maybe 255 times what it was trained on
    from prunecli.config import PruneConfig
    from prunecli.run.steps import _one_class_note, _pixel_values_note
    from prunecli.training.metrics import infer_task

    np.savez(tmp_path / "same.npz", x=np.round(np.abs(x) * 50).astype(np.uint8), y=np.zeros_like(y))
    same = data.load(str(tmp_path / "same.npz"), model)
    notes = [
        _one_class_note(PruneConfig(data=str(tmp_path / d)), loaded, infer_task(model, loaded.y_example))
        for d, loaded in (("same.npz", same), ("one.npz", whole))
    ]
    assert notes == [
        (
            f"the evaluation labels of {tmp_path / 'same.npz'} hold one class only: accuracy is how "
            "often the model predicts it, before and after pruning, not how well it tells classes apart",
        ),
        (),
    ]
    # 0/1 labels for a 10-class model: accuracy over two classes of ten, said as the one-class case is
    from types import SimpleNamespace

    ten = SimpleNamespace(outputs=[SimpleNamespace(shape=(None, 10))])  # the classifier's output, widened
    task = infer_task(model, whole.y_example)
    few = [
        _one_class_note(PruneConfig(data="d.npz"), dataclasses.replace(whole, eval_classes=n), task, ten)
        for n in (2, 5)
    ]
    assert [len(n) for n in few] == [1, 0] and "d.npz hold 2 of the model's 10 classes" in few[0][0]
    pixels = [_pixel_values_note(PruneConfig(data="d.npz"), loaded, model) for loaded in (same, whole)]
    assert [len(n) for n in pixels] == [1, 0] and "d.npz are 0..255 pixel values and the model has no" in pixels[0][0]
    # a problem in one split names its arrays: "three.npz: the dataset is empty" sent the user to x_train
    np.savez(path, x_train=x[:300], y_train=y[:300], x_test=x[:0], y_test=y[:0], x_val=x[350:], y_val=y[350:] + 9)
    with pytest.raises(DataError, match=r"three\.npz \(x_test/y_test\): the dataset is empty"):
        data.load(str(path), model)
    np.savez(path, x=x[:300], y=y[:300], x_val=x[350:], y_val=y[350:] + 9)
    with pytest.raises(DataError, match=r"three\.npz \(x_val/y_val\): labels range"):
        data.load(str(path), model)


def test_npz_arrays_it_would_not_read_are_refused_by_name(mlp, tmp_path):
    """A validation set under another name, or a stray array, is refused rather than ignored; x/y with
    x_test/y_test is a training set and a test set (the test set is not left out)."""
    model, x, y = mlp
    valid = tmp_path / "valid.npz"
    np.savez(valid, x_train=x[:300], y_train=y[:300], x_valid=x[300:], y_valid=y[300:])
    with pytest.raises(DataError, match=r"x_valid, y_valid not read .*rename or remove them"):
        data.load(str(valid), model)
    both = tmp_path / "both.npz"
    np.savez(both, x=x, y=y, x_train=x[:10], y_train=y[:10])
    with pytest.raises(DataError, match=r"x, y not read"):
        data.load(str(both), model)
    plain_test = tmp_path / "plain_test.npz"
    np.savez(
        plain_test,
        x=x[:300],
        y=y[:300],
        x_test=x[300:],
        y_test=y[300:],
        feature_names=np.array([f"f{i}" for i in range(x.shape[1])]),
    )
    d = data.load(str(plain_test), model)
    assert (d.n_train, d.n_eval, d.eval_held_out) == (300, 100, True)
    assert same_rows(rows(d.eval)[0], x[300:])
    # half a test or validation pair was dropped: the run evaluated on its training rows, said nowhere
    for name, arrays in (
        ("x_test", dict(x=x[:300], y=y[:300], x_test=x[300:])),
        ("y_val", dict(x_train=x[:300], y_train=y[:300], y_val=y[300:])),
    ):
        half = tmp_path / f"{name}.npz"
        np.savez(half, **arrays)
        with pytest.raises(DataError, match=f"{name} without"):
            data.load(str(half), model)
    unlabelled = tmp_path / "unlabelled.npz"  # inputs only: x_test alone is a held-out input set
    np.savez(unlabelled, x_train=x[:300], x_test=x[300:])
    assert data.load(str(unlabelled), model).n_eval == 100


# --- .npy pairs ---------------------------------------------------------------------------------


def test_npy_partner_names_and_the_files_a_run_plans_as_read(tmp_path):
    assert npy_partner(Path("d/x.npy"), "x", "y") == Path("d/y.npy")
    assert npy_partner(Path("x_train.npy"), "x", "y") == Path("y_train.npy")
    assert npy_partner(Path("digits-X.npy"), "x", "y") == Path("digits-Y.npy")
    assert npy_partner(Path("x_train.npy"), "train", "test") == Path("x_test.npy")
    assert npy_partner(Path("xray.npy"), "x", "y") is None
    for name in ("x_train", "y_train", "x_test", "y_test", "x_val", "y_val"):
        (tmp_path / f"{name}.npy").write_bytes(b"x")
    read = data.files_read(str(tmp_path / "x_train.npy"))["data"]  # `--report x_test.npy` replaced the test set
    assert sorted(p.name for p in read) == ["x_test.npy", "x_val.npy", "y_test.npy", "y_train.npy", "y_val.npy"]


def test_npy_pairs_stream_from_memory_maps(mlp, tmp_path):
    model, x, y = mlp
    for name, arr in (("x_train", x[:300]), ("y_train", y[:300]), ("x_test", x[300:]), ("y_test", y[300:])):
        np.save(tmp_path / f"{name}.npy", arr)
    assert isinstance(data.npy._open_npy(tmp_path / "x_train.npy"), np.memmap)  # read in batches, not at once
    d = data.load(str(tmp_path / "x_train.npy"), model, batch_size=64, seed=3)
    assert (d.n_train, d.n_eval, d.eval_held_out) == (300, 100, True)
    assert int(d.train.cardinality()) == 5  # known, so schedules can plan in steps
    epoch1, epoch2 = rows(d.train), rows(d.train)
    assert same_rows(epoch1[0], x[:300]) and same_rows(epoch2[0], x[:300])
    assert not np.array_equal(epoch1[0], epoch2[0])  # reshuffled every epoch
    pairs = {tuple(r): label for r, label in zip(epoch1[0], epoch1[1], strict=True)}
    assert all(pairs[tuple(r)] == label for r, label in zip(x[:300], y[:300], strict=True))  # rows keep their labels
    ex, ey = rows(d.eval)
    assert np.array_equal(ex, x[300:]) and np.array_equal(ey, y[300:])
    split = data.load(str(tmp_path / "x_test.npy"), model, val_split=0.5)
    assert (split.n_train, split.n_eval) == (50, 50)


def test_npy_errors_are_one_line(mlp, tmp_path):
    model, x, y = mlp
    np.save(tmp_path / "inputs.npy", x)
    with pytest.raises(DataError, match="name the inputs x.npy"):
        data.load(str(tmp_path / "inputs.npy"), model)
    np.save(tmp_path / "a_x.npy", x)
    with pytest.raises(DataError, match="labels file a_y.npy not found"):
        data.load(str(tmp_path / "a_x.npy"), model)
    np.save(tmp_path / "a_y.npy", y[:10])
    with pytest.raises(DataError, match="400 inputs but 10 labels"):
        data.load(str(tmp_path / "a_x.npy"), model)
    bad = x.copy()
    bad[399, 0] = np.nan
    np.save(tmp_path / "b_x.npy", bad)
    np.save(tmp_path / "b_y.npy", y)
    with pytest.raises(DataError, match="NaN or Inf"):
        data.load(str(tmp_path / "b_x.npy"), model)
    for split in ("train", "test"):  # a test set's mismatch is named as the test file's, not the training file's
        np.save(tmp_path / f"x_{split}.npy", x)
    np.save(tmp_path / "y_train.npy", y)
    np.save(tmp_path / "y_test.npy", y[:-1])
    with pytest.raises(DataError, match=r"x_test\.npy: 400 inputs but 399 labels"):
        data.load(str(tmp_path / "x_train.npy"), model)
    wrong = y.copy()  # a label's fault is named as the labels file's: the message sent the user to x_test.npy
    wrong[-1] = 99
    np.save(tmp_path / "y_test.npy", wrong)
    with pytest.raises(DataError, match=r"y_test\.npy: labels range 0\.\.99 but"):
        data.load(str(tmp_path / "x_train.npy"), model)
    np.save(tmp_path / "y_test.npy", wrong.astype("float32") + 0.5)
    with pytest.raises(DataError, match=r"y_test\.npy: class labels must be whole numbers"):
        data.load(str(tmp_path / "x_train.npy"), model)


# --- image folders ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digit_images(digits, tmp_path_factory):
    """The bundled digits as 8-bit PNGs in train/<class>/ and test/<class>/, with a scale spec."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    _model, arrays = digits
    for split, (xs, ys) in {
        "train": (arrays["x_train"][:300], arrays["y_train"][:300]),
        "test": (arrays["x_test"], arrays["y_test"]),
    }.items():
        for i, (img, label) in enumerate(zip(xs, ys, strict=True)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(img[..., 0] * 255).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    (root / "spec.yaml").write_text("scale: 0.00392156862745098\n")
    return root


def test_image_folder_with_train_and_test(digits, digit_images):
    model, arrays = digits
    d = data.load(str(digit_images), model, batch_size=50, seed=1)
    assert (d.n_train, d.n_eval, d.eval_held_out) == (300, 360, True)
    ex, ey = rows(d.eval)
    assert ex.shape == (360, 8, 8, 1) and 0.0 <= ex.min() and ex.max() <= 1.0  # scaled by the spec
    # the PNG round trip gives back the arrays (class folders sorted as strings: 0..9 here)
    assert same_rows(np.round(ex * 255), np.round(arrays["x_test"] * 255))
    accuracy = np.mean(np.argmax(model.predict(ex, verbose=0), axis=1) == ey)
    assert accuracy > 0.95  # labels follow their folders
    split = data.load(str(digit_images / "train"), model, val_split=0.2)
    assert (split.n_train, split.n_eval) == (240, 60)


def test_image_folder_errors(digits, mlp, digit_images, tmp_path):
    model, _arrays = digits
    import shutil

    shutil.copytree(digit_images / "train" / "1", tmp_path / "few" / "1")
    shutil.copytree(digit_images / "train" / "2", tmp_path / "few" / "2")
    with pytest.raises(DataError, match="2 class folders but the model outputs 10 classes"):
        data.load(str(tmp_path / "few"), model)
    with pytest.raises(DataError, match="needs a model with a fixed image input"):
        data.load(str(tmp_path / "few"), mlp[0])


def test_a_file_in_an_image_folder_that_is_no_image_is_refused_before_any_work(digits, digit_images, tmp_path):
    """A stray text file named .png, past the batches read first, ended fine-tuning in an internal error
    (exit 1) when its batch came; every file's header is read before the work now."""
    import shutil

    model, _arrays = digits
    shutil.copytree(digit_images, tmp_path / "d")
    (tmp_path / "d" / "test" / "9" / "999.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"999.png: not an image \(its first bytes are no PNG, JPEG, GIF or BMP"):
        data.load(str(tmp_path / "d"), model)


def test_a_damaged_image_decoded_mid_run_is_a_data_error():
    """A damaged image body (a truncated PNG) is found only when Keras' pipeline decodes it, mid-run:
    TensorFlow's decoder error is the data's, not an internal error."""
    import tensorflow as tf

    from prunecli.errors import streamed_data_error

    truncated = tf.io.encode_png(tf.zeros((4, 4, 1), tf.uint8)).numpy()[:40]
    with pytest.raises(tf.errors.InvalidArgumentError) as caught:
        tf.data.Dataset.from_tensors(truncated).map(
            lambda b: tf.io.decode_image(b, expand_animations=False)
        ).get_single_element()
    error = streamed_data_error(caught.value)
    assert isinstance(error, DataError) and error.message.startswith(
        "an image of the --data folder cannot be decoded ("
    )


@pytest.mark.slow
def test_fine_tune_from_an_image_folder(cli, example_model, digit_images, tmp_path):
    report = tmp_path / "r.json"
    result = cli(
        "prune",
        example_model,
        "-d",
        digit_images,
        "-s",
        "0.5",
        "--epochs",
        "1",
        "-r",
        report,
        "-o",
        tmp_path / "o.keras",
        "-q",
    )
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert written["metrics"]["before"]["accuracy"] > 0.95
    assert written["finetune"]["epochs_run"] == 1 and written["finetune"]["validation"] == "held-out"


# --- TFRecord -----------------------------------------------------------------------------------


def write_records(path, x, y, compression=None):
    import tensorflow as tf

    options = tf.io.TFRecordOptions(compression_type=compression) if compression else None
    with tf.io.TFRecordWriter(str(path), options) as writer:
        for features, label in zip(x, y, strict=True):
            example = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "features": tf.train.Feature(float_list=tf.train.FloatList(value=features.ravel())),
                        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                    }
                )
            )
            writer.write(example.SerializeToString())


SPEC = "x: {key: features, dtype: float32, shape: [20]}\ny: {key: label, dtype: int64}\n"


@pytest.mark.slow  # 1.4-2.3 s: the full suite (fast subset at its 120 s limit)
def test_tfrecord_with_spec_eval_records_and_split(mlp, tmp_path):
    model, x, y = mlp
    write_records(tmp_path / "train.tfrecord", x[:300], y[:300], compression="GZIP")
    write_records(tmp_path / "test.tfrecord", x[300:], y[300:], compression="GZIP")
    (tmp_path / "train.spec.yaml").write_text(SPEC + "compression: GZIP\neval: test.tfrecord\n")
    d = data.load(str(tmp_path / "train.tfrecord"), model, batch_size=64)
    assert (d.n_train, d.n_eval, d.eval_held_out) == (300, 100, True)
    assert int(d.train.cardinality()) == 5
    tx, ty = rows(d.train)
    assert same_rows(np.column_stack([tx, ty]), np.column_stack([x[:300], y[:300]]))
    ex, ey = rows(d.eval)
    assert np.array_equal(ex, x[300:]) and np.array_equal(ey, y[300:])
    split = data.load(str(tmp_path / "train.tfrecord"), model, val_split=0.3, seed=5)
    val_x = rows(split.val)[0]
    assert split.n_train + len(val_x) == 300 and 60 <= len(val_x) <= 120
    assert same_rows(np.concatenate([rows(split.train)[0], val_x]), x[:300])
    assert np.array_equal(rows(split.val)[0], val_x)  # the split is the same every time


@pytest.mark.slow  # 1.5-2.5 s: the full suite (fast subset over its 120 s limit)
def test_tfrecord_folder_of_png_records(digits, tmp_path):
    import tensorflow as tf

    model, arrays = digits
    images = np.round(arrays["x_test"][:40] * 255).astype(np.uint8)
    folder = tmp_path / "shards"
    folder.mkdir()
    for shard in range(2):
        with tf.io.TFRecordWriter(str(folder / f"part-{shard}.tfrecord")) as writer:
            for img, label in zip(images[shard::2], arrays["y_test"][:40][shard::2], strict=True):
                png = tf.io.encode_png(img).numpy()
                writer.write(
                    tf.train.Example(
                        features=tf.train.Features(
                            feature={
                                "png": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
                                "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                            }
                        )
                    ).SerializeToString()
                )
    (folder / "spec.yaml").write_text("x: {key: png, encoding: image}\ny: {key: label}\nscale: 0.00392156862745098\n")
    d = data.load(str(folder), model, batch_size=16)
    ex, ey = rows(d.eval)
    assert d.n_train == 40 and ex.shape == (40, 8, 8, 1)
    assert same_rows(np.round(ex * 255), images.astype(np.float32))
    (folder / "spec.yaml").write_text("x: {key: png, encoding: image}\ny: {key: label}\n")  # no scale: 0..255
    glob_data = data.load(str(folder / "part-*.tfrecord"), model)
    assert glob_data.n_train == 40 and (d.pixel_values, glob_data.pixel_values) == (False, True)


@pytest.mark.slow
def test_tfrecord_errors_are_one_line(mlp, tmp_path):
    model, x, y = mlp
    write_records(tmp_path / "d.tfrecord", x, y)
    with pytest.raises(DataError, match="needs a feature spec: write d.spec.yaml"):
        data.load(str(tmp_path / "d.tfrecord"), model)
    (tmp_path / "d.spec.yaml").write_text(SPEC.replace("[20]", "[10]"))
    with pytest.raises(DataError, match="a record cannot be read as its spec describes"):
        data.load(str(tmp_path / "d.tfrecord"), model)
    (tmp_path / "d.spec.yaml").write_text(
        SPEC.replace("features, dtype: float32, shape: [20]", "features, dtype: text")
    )
    with pytest.raises(DataError, match="x.dtype must be one of float32, int64"):
        data.load(str(tmp_path / "d.tfrecord"), model)
    (tmp_path / "d.spec.yaml").write_text(SPEC + "shuffle: true\n")
    with pytest.raises(DataError, match="unknown key 'shuffle'"):
        data.load(str(tmp_path / "d.tfrecord"), model)
    (tmp_path / "j.spec.json").write_text('{"x": {"key": "x"}, "scale": 1e-2}')  # JSON's exponent: YAML 1.1 read text
    assert read_spec(tmp_path / "j.spec.json")["scale"] == 0.01
    with pytest.raises(DataError, match="no TFRecord files found"):
        data.load(str(tmp_path / "none-*.tfrecord"), model)
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    write_records(wrong / "w.tfrecord", np.zeros((5, 20), np.float32), np.full(5, 7))
    (wrong / "spec.yaml").write_text(SPEC)
    with pytest.raises(DataError, match=r"labels must be class numbers 0..2 \(the model has 3 classes\), got 7"):
        data.load(str(wrong), model)


@pytest.mark.slow
def test_fine_tune_streams_tfrecords(cli, mlp_files, mlp, tmp_path):
    _model, x, y = mlp
    write_records(tmp_path / "train.tfrecord", x, y)
    (tmp_path / "train.spec.yaml").write_text(SPEC)
    report = tmp_path / "r.json"
    result = cli(
        "prune",
        mlp_files["keras"],
        "-d",
        tmp_path / "train.tfrecord",
        "--val-split",
        "0.25",
        "-s",
        "0.6",
        "--epochs",
        "2",
        "--schedule",
        "polynomial",
        "-r",
        report,
        "-o",
        tmp_path / "o.keras",
        "-q",
    )
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert written["totals"]["prunable_sparsity"] == pytest.approx(0.6, abs=0.002)
    assert written["finetune"]["validation"] == "held-out" and written["finetune"]["epochs_run"] == 2


def test_unsupported_and_missing_paths(mlp, tmp_path):
    model, _x, _y = mlp
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported data format"):
        data.load(str(tmp_path / "data.csv"), model)
    with pytest.raises(DataError, match="data file not found"):
        data.load(str(tmp_path / "nope.npz"), model)
