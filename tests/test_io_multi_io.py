"""Models with several inputs or outputs prune, evaluate and fine-tune from one .npz (issue 18).

The .npz names an array per input (`x_NAME` or `x/NAME`) and per output (`y_NAME`); see the README's
Data section. Run end to end through the CLI, as a user would.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from prunecli.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("multi_io")
    keras.utils.set_random_seed(0)
    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    h = keras.layers.Dense(16, activation="relu", name="hidden")(keras.layers.Concatenate()([a, b]))
    two_in = keras.Model([a, b], keras.layers.Dense(3, activation="softmax", name="out")(h))
    two_in.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    two_in.save(d / "two_in.keras")

    inp = keras.Input((6,), name="features")
    h = keras.layers.Dense(16, activation="relu", name="hidden")(inp)
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(h)
    reg = keras.layers.Dense(1, name="reg")(h)
    two_out = keras.Model(inp, [cls, reg])
    two_out.compile(optimizer="adam", loss=["sparse_categorical_crossentropy", "mse"])
    two_out.save(d / "two_out.keras")

    rng = np.random.default_rng(0)
    xa, xb = rng.standard_normal((64, 6)).astype("float32"), rng.standard_normal((64, 4)).astype("float32")
    y = rng.integers(0, 3, 64).astype("int32")
    np.savez(d / "two_in.npz", x_a=xa, x_b=xb, y=y)
    np.savez(d / "two_in_slash.npz", **{"x/a": xa, "x/b": xb, "y": y})
    np.savez(d / "two_out.npz", x=xa, y_cls=np.eye(3, dtype="float32")[y], y_reg=xa[:, :1] * 2.0)
    np.savez(d / "two_in_missing.npz", x_a=xa, y=y)
    return d


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, data",
    [("two_in.keras", "two_in.npz"), ("two_in.keras", "two_in_slash.npz"), ("two_out.keras", "two_out.npz")],
)
def test_prune_evaluate_and_finetune_from_one_npz(files, tmp_path, model, data):
    out, report = tmp_path / "out.keras", tmp_path / "r.json"
    result = _run("prune", files / model, "-d", files / data, "--epochs", "1", "-o", out, "-r", report, "-q")

    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    for stage in ("before", "after_pruning", "after_finetune"):
        assert np.isfinite(r["metrics"][stage]["loss"]), stage
    assert "accuracy" in r["metrics"]["before"]  # the classification output's accuracy
    import keras

    pruned_model = keras.saving.load_model(out)
    rows = r["layers"]
    assert "hidden" in {row["layer"] for row in rows}
    kernels = [getattr(pruned_model.get_layer(row["layer"]), row["name"].split("/")[-1]).numpy() for row in rows]
    # the masks survived fine-tuning: the default (global) scope's exact budget over all pruned layers
    assert sum(int((k == 0).sum()) for k in kernels) == round(0.5 * sum(row["params"] for row in rows))


def test_missing_input_array_is_one_line(files):
    result = _run("prune", files / "two_in.keras", "-d", files / "two_in_missing.npz", "-q")
    assert result.exit_code == 3
    assert "x_b" in result.stderr and result.stderr.count("\n") == 1


def test_array_for_no_input_or_output_is_refused_by_name(files, tmp_path):
    """`x_c` names no input of the model: refused (exit 3) rather than ignored."""
    arrays = dict(np.load(files / "two_in.npz"))
    extra = tmp_path / "extra.npz"
    np.savez(extra, **arrays, x_c=arrays["x_a"])
    result = _run("prune", files / "two_in.keras", "-d", extra, "-q", "-o", tmp_path / "o.keras")
    assert result.exit_code == 3
    assert "x_c not read" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "o.keras").exists()


def test_test_inputs_without_their_labels_are_refused(files, tmp_path):
    """x_test_a/x_test_b beside labelled training arrays, with no y_test: the test set was dropped and
    the run evaluated on the training rows without a word."""
    arrays = dict(np.load(files / "two_in.npz"))
    half = tmp_path / "half.npz"
    np.savez(half, **arrays, x_test_a=arrays["x_a"][:8], x_test_b=arrays["x_b"][:8])
    result = _run("prune", files / "two_in.keras", "-d", half, "-q", "-o", tmp_path / "o.keras")
    assert result.exit_code == 3
    assert "x_test arrays without y_test" in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.slow  # 1-2 s alone: the full suite (fast subset at its 120 s limit)
def test_per_position_labels_of_one_output_among_several(tmp_path):
    """A tagger head (N, L, C) beside a classifier head: labels (N, L) are one class per position, as
    for a single output (they were refused as "12 columns"); the report's accuracy is the mean of the
    two outputs' accuracies; a class out of range is refused naming the output."""
    import keras

    inp = keras.Input((12, 5), name="seq")
    h = keras.layers.GRU(8, return_sequences=True, name="gru")(inp)
    tag = keras.layers.Dense(4, activation="softmax", name="tag")(h)
    cls = keras.layers.Dense(3, activation="softmax", name="cls")(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model(inp, [tag, cls])
    model.compile("adam", ["sparse_categorical_crossentropy", "sparse_categorical_crossentropy"])
    model.save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    x, y_tag, y_cls = (
        rng.standard_normal((64, 12, 5)).astype("float32"),
        rng.integers(0, 4, (64, 12)),
        rng.integers(0, 3, 64),
    )
    np.savez(tmp_path / "d.npz", x=x, y_tag=y_tag, y_cls=y_cls)
    report = tmp_path / "r.json"
    result = _run(
        "prune",
        tmp_path / "m.keras",
        "-d",
        tmp_path / "d.npz",
        "-s",
        "0.5",
        "-o",
        tmp_path / "o.keras",
        "-r",
        report,
        "-q",
    )
    assert result.exit_code == 0, result.output
    tags, classes = model.predict(x, verbose=0)
    expected = ((tags.argmax(-1) == y_tag).mean() + (classes.argmax(-1) == y_cls).mean()) / 2
    assert json.loads(report.read_text())["metrics"]["before"]["accuracy"] == pytest.approx(expected, abs=1e-6)
    np.savez(tmp_path / "bad.npz", x=x, y_tag=np.where(y_tag == 0, 4, y_tag), y_cls=y_cls)
    result = _run(
        "prune", tmp_path / "m.keras", "-d", tmp_path / "bad.npz", "-s", "0.5", "-o", tmp_path / "b.keras", "-q"
    )
    assert result.exit_code == 3 and "labels of output 'tag' range 1..4 but the model has 4 classes" in result.stderr


@pytest.mark.slow
def test_a_multi_input_shrink_is_checked_on_the_runs_data(files, tmp_path):
    """The rebuilt model was compared with the masked one on random stand-ins even with --data."""
    report = tmp_path / "r.json"
    args = ["-g", "neuron", "-s", "0.5", "--shrink", "-d", files / "two_in.npz", "-o", tmp_path / "o.keras"]
    result = _run("prune", files / "two_in.keras", *args, "-r", report, "-q")
    assert result.exit_code == 0, result.output
    verification = json.loads(report.read_text())["shrink"]["verification"]
    assert verification["inputs"] == "data" and verification["max_rel_diff"] < 1e-4
