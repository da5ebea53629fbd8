"""Loading and saving: formats and flavours, round trips, atomic writes, the input left untouched."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from prunecli.errors import InputError, ModelLoadError, OutputError
from prunecli.io import models as model_io


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_detects_format_and_flavour(mlp_files, keras2_h5):
    assert (model_io.inspect_file(mlp_files["keras"]).format, model_io.inspect_file(mlp_files["keras"]).flavour) == (
        "keras",
        "keras3",
    )
    k3h5 = model_io.inspect_file(mlp_files["h5"])
    assert (k3h5.format, k3h5.flavour) == ("h5", "keras3")
    k2 = model_io.inspect_file(keras2_h5)
    assert (k2.format, k2.flavour) == ("h5", "keras2")
    assert k2.keras_version.startswith("2.")


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_keras3_round_trip(cli, mlp_files, tmp_path, fmt):
    src = mlp_files[fmt]
    before = sha(src)
    out = tmp_path / f"pruned.{fmt}"
    result = cli("prune", src, "-s", "0.5", "--scope", "layer", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert sha(src) == before
    model, info = model_io.load(out)
    assert info.format == fmt and info.flavour == "keras3"
    kernel = model.get_layer("hidden1").kernel.numpy()
    assert np.count_nonzero(kernel) == kernel.size // 2
    assert not list(tmp_path.glob(".*tmp*")), "temporary file left behind"


def test_keras2_h5_stays_loadable_by_tf_keras(cli, keras2_h5, tmp_path):
    import tf_keras

    before = sha(keras2_h5)
    out = tmp_path / "k2.pruned.h5"
    result = cli("prune", keras2_h5, "-s", "0.75", "--scope", "layer", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert sha(keras2_h5) == before
    assert model_io.inspect_file(out).flavour == "keras2"
    reloaded = tf_keras.models.load_model(out)
    kernel = reloaded.get_layer("hidden1").get_weights()[0]
    assert np.count_nonzero(kernel) == kernel.size - round(0.75 * kernel.size)
    original = tf_keras.models.load_model(keras2_h5)
    # the kept weights are the original values, untouched
    orig_kernel = original.get_layer("hidden1").get_weights()[0]
    kept = kernel != 0
    np.testing.assert_array_equal(kernel[kept], orig_kernel[kept])


def test_default_output_name_is_next_to_input(cli, mlp_files, tmp_path):
    import shutil

    src = tmp_path / "model.keras"
    shutil.copy(mlp_files["keras"], src)
    result = cli("prune", src, "-q")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.pruned.keras").is_file()
    # the default name replaces nothing: a second run (another sparsity) kept the first run's model only with -o
    first = sha(tmp_path / "model.pruned.keras")
    result = cli("prune", src, "-s", "0.8", "-q")
    assert result.exit_code == 5 and "model.pruned.keras already exists and -o was not given" in result.stderr
    assert "pass -o" in result.stderr and "--force" in result.stderr and sha(tmp_path / "model.pruned.keras") == first
    assert cli("prune", src, "-s", "0.8", "-q", "--force").exit_code == 0
    assert sha(tmp_path / "model.pruned.keras") != first


def test_refuses_to_overwrite_input_unless_forced(cli, mlp_files, tmp_path):
    import shutil

    src = tmp_path / "model.keras"
    shutil.copy(mlp_files["keras"], src)
    before = sha(src)
    result = cli("prune", src, "-o", src, "-q")
    assert result.exit_code == 5
    assert "would overwrite the input" in result.stderr
    assert sha(src) == before
    result = cli("prune", src, "-o", src, "--force", "-q")
    assert result.exit_code == 0
    assert sha(src) != before


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "m.keras"
    with pytest.raises(RuntimeError):
        with model_io.atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_resolve_output_checks_directory(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        model_io.resolve_output(tmp_path / "in.keras", tmp_path / "nope" / "out.keras", force=False)
    with pytest.raises(OutputError, match="must end in"):
        model_io.resolve_output(tmp_path / "in.keras", tmp_path / "out.txt", force=False)
    with pytest.raises(OutputError, match=r"\.keras has no name before \.keras"):  # it said "must end in .keras"
        model_io.resolve_output(tmp_path / "in.keras", tmp_path / ".keras", force=False)
    # the default name, for the Python API too (output=None): any existing entry of that name, model or not
    (tmp_path / "in.pruned.keras").write_text("the user's notes")
    with pytest.raises(OutputError, match="in.pruned.keras already exists and -o was not given"):
        model_io.resolve_output(tmp_path / "in.keras", None, force=False)
    assert model_io.resolve_output(tmp_path / "in.keras", None, force=True) == tmp_path / "in.pruned.keras"
    assert model_io.resolve_output(tmp_path / "in.keras", tmp_path / "in.pruned.keras", force=False)  # named: replaced


def test_lambda_model_refused_without_unsafe(tmp_path):
    import keras

    inp = keras.Input((4,))
    out = keras.layers.Dense(2)(keras.layers.Lambda(lambda t: t * 2.0)(inp))
    path = tmp_path / "lambda.keras"
    keras.Model(inp, out).save(path)
    with pytest.raises(ModelLoadError, match="Lambda"):
        model_io.load(path)


def test_file_sizes_reports_gzip(tmp_path):
    p = tmp_path / "zeros.bin"
    p.write_bytes(b"\0" * 100_000)
    sizes = model_io.file_sizes(p)
    assert sizes["bytes"] == 100_000
    assert 0 < sizes["gzip_bytes"] < 1_000


def test_output_drops_stale_optimizer_slots(cli, example_model, tmp_path):
    """The example file carries Adam's moments (2x the weights); they no longer match pruned weights.
    No --data: the slots are dropped when the output is written, whatever the run measured."""
    import zipfile

    out = tmp_path / "o.keras"
    result = cli("prune", example_model, "-s", "0.5", "-o", out, "-q")
    assert result.exit_code == 0, result.output

    def weights_bytes(p):
        return zipfile.ZipFile(p).getinfo("model.weights.h5").file_size

    assert weights_bytes(out) < 0.5 * weights_bytes(example_model)
    model, _ = model_io.load(out)
    assert model.optimizer is not None and type(model.optimizer).__name__ == "Adam"


@pytest.mark.slow
def test_keras2_mobilenet_with_legacy_arguments(cli, tmp_path):
    """tf_keras MobileNet files store DepthwiseConv2D(groups=1), an argument Keras 3 rejects."""
    import tf_keras

    src = tmp_path / "mobilenet.h5"
    tf_keras.applications.MobileNet(weights=None, input_shape=(32, 32, 3), alpha=0.25, classes=4).save(src)
    before = sha(src)
    out = tmp_path / "mobilenet.pruned.h5"
    result = cli("prune", src, "-s", "0.6", "--scope", "layer", "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    assert sha(src) == before
    reloaded = tf_keras.models.load_model(out)
    kernel = reloaded.get_layer("conv_pw_1").get_weights()[0]
    assert np.count_nonzero(kernel) == kernel.size - round(0.6 * kernel.size)


def test_keras2_layer_names_with_slashes(cli, tmp_path):
    """tf_keras DenseNet names layers "conv1/conv"; Keras 3 refuses "/" in names."""
    import tf_keras

    inp = tf_keras.Input((6,))
    x = tf_keras.layers.Dense(8, activation="relu", name="block1/dense")(inp)
    out = tf_keras.layers.Dense(2, name="head/logits")(x)
    src = tmp_path / "slashes.h5"
    tf_keras.Model(inp, out).save(src)
    out_path = tmp_path / "slashes.pruned.h5"
    result = cli("prune", src, "-s", "0.5", "--scope", "layer", "-o", out_path, "-q")
    assert result.exit_code == 0, result.stderr
    reloaded = tf_keras.models.load_model(out_path)
    kernel = reloaded.get_layer("block1/dense").get_weights()[0]
    assert np.count_nonzero(kernel) == kernel.size // 2


def test_a_tf_keras_savedmodel_folder_reads_and_prunes_and_is_left_as_it_was(tmp_path, cli, caplog):
    """tf.keras 2.x wrote a SavedModel folder by default (`model.save("dir")`), which Keras 3 cannot read:
    its keras_metadata.pb holds the model's config, so it is read through tf_keras, computes what tf_keras
    computes, prunes to a .keras beside it, and the folder is left byte for byte as it was (no temporary
    file left behind). A damaged SavedModel is refused in one line."""
    import tf_keras

    from prunecli.errors import ModelLoadError
    from prunecli.io import models as model_io

    tf_keras.utils.set_random_seed(0)
    inp = tf_keras.Input((6,))
    h = tf_keras.layers.BatchNormalization(name="bn")(tf_keras.layers.Dense(8, activation="relu", name="d1")(inp))
    model = tf_keras.Model(inp, tf_keras.layers.Dense(3, activation="softmax", name="out")(h))
    folder = tmp_path / "sm"
    model.save(folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    x = np.random.default_rng(0).random((5, 6)).astype("float32")
    caplog.clear()  # tf_keras' own save above logs
    with caplog.at_level(logging.WARNING):
        loaded, info = model_io.load(folder)
    assert not [r for r in caplog.records if r.name in ("tensorflow", "absl")], "log lines a caller did not ask for"
    assert (info.format, info.flavour) == ("savedmodel", "keras2")
    np.testing.assert_allclose(np.asarray(loaded(x)), model(x).numpy(), rtol=1e-6, atol=1e-6)
    report = tmp_path / "r.json"
    result = cli("prune", folder, "-s", "0.5", "-r", report, "-q")
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert written["output"]["path"] == str(tmp_path / "sm.pruned.keras")
    assert written["input"]["bytes"] == sum(len(b) for b in before.values()) and written["input"]["gzip_bytes"] > 0
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "sm", "sm.pruned.keras"]

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "saved_model.pb").write_bytes(b"\0")
    with pytest.raises(ModelLoadError, match=r"bare has a damaged saved_model.pb \("):
        model_io.inspect_file(bare)


def test_a_tensorflow_2_4_savedmodel_folder_reads_and_archives_and_parents_point_to_it(tmp_path):
    """TensorFlow 2.0-2.4 kept the Keras metadata inside saved_model.pb's object graph, with no
    keras_metadata.pb (idaes-pse 2.4.0 ships such a folder): it reads from there. A folder holding a
    SavedModel one level down, and a zip or tar.gz holding one (sleepecg, medaka ship them so), are
    refused with the folder to give; a SavedModel with no Keras object at its root is refused."""
    import tarfile
    import zipfile

    import tensorflow as tf
    import tf_keras
    from tensorflow.core.protobuf import saved_model_pb2
    from tf_keras.protobuf import saved_metadata_pb2

    from prunecli.errors import ModelLoadError
    from prunecli.io import models as model_io

    tf_keras.utils.set_random_seed(1)
    model = tf_keras.Sequential(
        [tf_keras.Input((5,)), tf_keras.layers.Dense(4, activation="tanh"), tf_keras.layers.Dense(2)]
    )
    folder = tmp_path / "pkg" / "surrogate"
    model.save(folder)
    meta = saved_metadata_pb2.SavedMetadata()
    meta.ParseFromString((folder / "keras_metadata.pb").read_bytes())
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((folder / "saved_model.pb").read_bytes())
    nodes = saved.meta_graphs[0].object_graph_def.nodes
    for node in meta.nodes:  # where TensorFlow 2.4 wrote each object's metadata
        nodes[node.node_id].user_object.metadata = node.metadata
    (folder / "saved_model.pb").write_bytes(saved.SerializeToString())
    (folder / "keras_metadata.pb").unlink()
    x = np.random.default_rng(0).random((3, 5)).astype("float32")
    loaded, info = model_io.load(folder)
    assert info.format == "savedmodel" and info.config["class_name"] == "Sequential"
    np.testing.assert_allclose(np.asarray(loaded(x)), model(x).numpy(), rtol=1e-6, atol=1e-6)

    with pytest.raises(ModelLoadError, match=r"directory, not a model file; .*surrogate in it is a SavedModel folder"):
        model_io.inspect_file(tmp_path / "pkg")
    with zipfile.ZipFile(tmp_path / "m.zip", "w") as z:
        z.write(folder / "saved_model.pb", "classifier/saved_model.pb")
    with pytest.raises(ModelLoadError, match=r"holds a SavedModel folder \(classifier/\): unpack it"):
        model_io.inspect_file(tmp_path / "m.zip")
    with tarfile.open(tmp_path / "m.tar.gz", "w:gz") as tar:
        tar.add(folder, "model")
    with pytest.raises(ModelLoadError, match=r"holds a SavedModel folder \(model/\): unpack it"):
        model_io.inspect_file(tmp_path / "m.tar.gz")

    plain = tmp_path / "plain"
    tf.saved_model.save(tf.Module(), str(plain))  # graphs only, no Keras object
    with pytest.raises(ModelLoadError, match=r"SavedModel without its Keras model"):
        model_io.inspect_file(plain)


def test_an_h5_keras_cannot_read_back_is_refused(tmp_path):
    """Keras 3's .h5 writer stores a node that calls a Keras operation outside a layer (`h + f(h)`)
    in a form its reader rejects: such an .h5 output is refused (exit 5) and nothing is written; the
    same model saves as .keras and reloads, and a model of layers only still saves as .h5."""
    import keras

    inp = keras.Input((6,))
    h = keras.layers.Dense(6, name="d")(inp)
    model = keras.Model(inp, keras.layers.Dense(3, name="o")(inp + h))
    with pytest.raises(OutputError, match=r"operations outside layers \(Add\).*write a \.keras file"):
        model_io.save(model, tmp_path / "o.h5")
    assert list(tmp_path.iterdir()) == []
    model_io.save(model, tmp_path / "o.keras")
    x = np.ones((2, 6), "float32")
    np.testing.assert_allclose(
        np.asarray(keras.saving.load_model(tmp_path / "o.keras")(x)), np.asarray(model(x)), rtol=1e-6
    )
    plain = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    model_io.save(plain, tmp_path / "p.h5")
    assert keras.saving.load_model(tmp_path / "p.h5").count_params() == plain.count_params()


def test_an_h5_input_that_changed_during_the_run_is_not_copied_into_the_output(tmp_path):
    """An .h5 output whose structure the run keeps is the input file copied with the new weights: an
    input rewritten meanwhile (the same shapes, `relu` now `tanh`) gave a file of the new config around
    this run's weights, with exit 0 and a report measured on the old model. Refused (exit 3)."""
    import keras

    def mlp(activation):
        return keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, activation=activation, name="h")])

    src = tmp_path / "in.h5"
    mlp("relu").save(src)
    model, info = model_io.load(src)
    mlp("tanh").save(src)  # written while the run worked
    with pytest.raises(InputError, match=r"the model file .*in\.h5 changed while the run worked"):
        model_io.save(model, tmp_path / "o.h5", info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.h5"], "nothing saved, no temporary file"
    model, info = model_io.load(src)
    seen = {}  # what a reader of the output's bytes (the report's sizes and sha256) finds when told they are all there
    model_io.save(model, tmp_path / "o.h5", info, written=lambda tmp: seen.update(h5=sha(tmp)))  # copied: unchanged
    assert keras.saving.load_model(tmp_path / "o.h5").get_layer("h").activation.__name__ == "tanh"
    model_io.save(model, tmp_path / "o.keras", info, written=lambda tmp: seen.update(keras=sha(tmp)))
    assert seen == {"h5": sha(tmp_path / "o.h5"), "keras": sha(tmp_path / "o.keras")}, "told before the last byte"
    src.unlink()  # removed: was "cannot write o.h5: No such file or directory", an output error of the input
    with pytest.raises(InputError, match=r"in\.h5 changed while the run worked \(it was written, replaced or removed"):
        model_io.save(model, tmp_path / "o2.h5", info)


def test_an_h5_output_keras_cannot_read_back_is_refused_before_the_work(tmp_path, monkeypatch):
    """The same refusal, from a run: right after loading, before any scoring (which would take minutes
    on a real model) and with nothing written; the same run to a .keras output goes through."""
    import keras

    import prunecli
    from prunecli.run import steps

    inp = keras.Input((6,))
    h = keras.layers.Dense(6, name="d")(inp)
    keras.Model(inp, keras.layers.Dense(3, name="o")(inp + h)).save(tmp_path / "m.keras")
    values = {"model_path": str(tmp_path / "m.keras"), "sparsity": 0.5, "quiet": True, "sizes": False}
    monkeypatch.setattr(steps, "pick_targets", lambda *a, **k: pytest.fail("work started before the refusal"))
    with pytest.raises(OutputError, match=r"cannot write .*o\.h5: the model calls Keras operations outside layers"):
        prunecli.prune(prunecli.build_config({**values, "output": str(tmp_path / "o.h5")}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"]
    monkeypatch.undo()
    prunecli.prune(prunecli.build_config({**values, "output": str(tmp_path / "o.keras")}))
    assert (tmp_path / "o.keras").is_file()


def test_keras2_spatial_dropout_arguments_keras3_does_not_take(cli, tmp_path):
    """Keras 3's SpatialDropout1D takes no **kwargs, so a Keras-2 file's `trainable` and `noise_shape`
    (EQTransformer's) ended in a plain TypeError that no patch caught: exit 3 for a standard layer."""
    import tf_keras

    inp = tf_keras.Input((20, 3))
    x = tf_keras.layers.Conv1D(8, 3, activation="relu", name="conv")(inp)
    x = tf_keras.layers.SpatialDropout1D(0.1, name="drop")(x)
    out = tf_keras.layers.Dense(2, name="head")(tf_keras.layers.Flatten()(x))
    src = tmp_path / "spatial.h5"
    model = tf_keras.Model(inp, out)
    model.save(src)
    out_path = tmp_path / "spatial.pruned.keras"
    result = cli("prune", src, "-s", "0.5", "--scope", "layer", "-o", out_path, "-q")
    assert result.exit_code == 0, result.stderr
    import keras

    x = np.random.default_rng(0).normal(size=(4, 20, 3)).astype("float32")
    dense, _ = model_io.load(src)
    np.testing.assert_allclose(np.asarray(dense(x)), model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert keras.saving.load_model(out_path).get_layer("drop").rate == 0.1


@pytest.mark.parametrize("name", ["model.hd5", "MODEL.H5", "model.keras.bak"])
def test_a_model_file_under_a_name_keras_does_not_read_by_is_read_by_its_bytes(cli, tmp_path, name):
    """CheckM2 ships `specific_model_COMP.hd5`: an HDF5 model that Keras refused ("File format not
    supported") because it picks its reader by the name. Read through a link named as Keras wants; the
    file itself is left as it was, and nothing is left in the temporary folder."""
    import shutil

    import keras

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, name="fc"), keras.layers.Dense(3, name="out")])
    src = tmp_path / name
    model.save(tmp_path / ("a.keras" if name.endswith(".bak") else "a.h5"))
    shutil.copyfile(tmp_path / ("a.keras" if name.endswith(".bak") else "a.h5"), src)
    before = sha(src)
    out = tmp_path / "out.keras"
    result = cli("prune", src, "-s", "0.5", "--scope", "layer", "-o", out, "-q")
    assert result.exit_code == 0, result.stderr
    assert sha(src) == before
    assert np.count_nonzero(np.asarray(keras.saving.load_model(out).get_layer("fc").kernel)) == 24


def test_three_rounds_of_unknown_arguments_are_each_dropped(tmp_path):
    """Each patched attempt's own failure names the next argument (they were read through the chain
    back to the first failure, which named the first argument again and again)."""
    import h5py
    import tf_keras

    inp = tf_keras.Input((20, 3))
    x = tf_keras.layers.SpatialDropout1D(0.1, name="drop")(inp)
    out = tf_keras.layers.Dense(2, name="head")(x)
    src = tmp_path / "three.h5"
    tf_keras.Model(inp, out).save(src)
    with h5py.File(src, "r+") as f:  # a third argument Keras 3 does not take
        config = json.loads(f.attrs["model_config"])
        config["config"]["layers"][1]["config"]["legacy_option"] = 1
        f.attrs["model_config"] = json.dumps(config)
    model, _ = model_io.load(src)
    assert model.get_layer("drop").rate == 0.1


@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
@pytest.mark.parametrize("sequential", [False, True])
def test_a_masked_rnn_shrinks_into_an_h5_that_keeps_its_mask(cli, tmp_path, sequential):
    """Keras 3 records a Masking layer's mask as `not_equal`/`any` nodes its .h5 reader cannot read back
    ("Unknown layer: 'NotEqual'"), so `--shrink -o out.h5` was refused (astrorapid, bench/ZOO.md). The
    .h5 leaves those nodes out and reading it derives the same mask again: the file computes what the
    .keras output computes, masked steps included."""
    import keras
    import tf_keras

    if sequential:
        original = tf_keras.Sequential(
            [
                tf_keras.Input((8, 3)),
                tf_keras.layers.Masking(0.0),
                tf_keras.layers.LSTM(6, return_sequences=True, name="rnn"),
                tf_keras.layers.Dense(2, name="out"),
            ]
        )
    else:
        inp = tf_keras.Input((8, 3))
        h = tf_keras.layers.LSTM(6, return_sequences=True, name="rnn")(tf_keras.layers.Masking(0.0)(inp))
        original = tf_keras.Model(inp, tf_keras.layers.Dense(2, name="out")(h))
    src = tmp_path / "masked.h5"
    original.save(src)
    for out in ("o.h5", "o.keras"):
        result = cli("prune", src, "-g", "neuron", "-s", "0.5", "--shrink", "-o", tmp_path / out, "-q")
        assert result.exit_code == 0, result.output
    from_h5 = keras.saving.load_model(tmp_path / "o.h5", compile=False)
    from_keras = keras.saving.load_model(tmp_path / "o.keras", compile=False)
    assert from_h5.get_layer("rnn").units == 3
    x = np.random.default_rng(0).normal(size=(4, 8, 3)).astype("float32")
    x[:, 5:] = 0.0  # masked steps: an LSTM given the mask repeats its last output there
    np.testing.assert_allclose(np.asarray(from_h5(x)), np.asarray(from_keras(x)), rtol=1e-5, atol=1e-6)
    y = np.asarray(from_h5(x))
    np.testing.assert_allclose(y[:, 5:], np.repeat(y[:, 4:5], 3, axis=1), rtol=1e-5, atol=1e-6)


def test_an_h5_output_of_a_mask_the_model_computes_itself_is_refused_before_the_work(cli, tmp_path):
    """A mask passed explicitly from a Keras operation (not the one the input carries) is a graph node
    Keras' .h5 reader cannot read back: a rebuilding run to .h5 is refused right after loading."""
    import keras

    tokens = keras.Input((6,), dtype="int32")
    h = keras.layers.Embedding(10, 4, name="emb")(tokens)
    h = keras.layers.LSTM(6, name="rnn")(h, mask=keras.ops.not_equal(tokens, 0))
    src = tmp_path / "explicit.keras"
    keras.Model(tokens, keras.layers.Dense(2, name="out")(h)).save(src)
    result = cli("prune", src, "-g", "neuron", "-s", "0.5", "--shrink", "-o", tmp_path / "o.h5")
    assert result.exit_code == 5 and "write a .keras file instead" in result.stderr
    assert "shrinking" not in result.stderr  # refused right after loading
    assert not (tmp_path / "o.h5").exists()


@pytest.mark.slow
def test_an_embedding_mask_survives_a_shrink_into_an_h5(cli, tmp_path):
    """Embedding(mask_zero=True)'s mask is a `not_equal` node in Keras 3's graph, as in nakdimon's
    BiLSTM (bench/ZOO.md): the shrunk .h5 reads back and computes what the .keras output computes."""
    import keras

    tokens = keras.Input((7,), dtype="int32")
    h = keras.layers.Embedding(12, 4, mask_zero=True, name="emb")(tokens)
    h = keras.layers.GRU(8, return_sequences=True, name="rnn")(h)
    src = tmp_path / "emb.keras"
    keras.Model(tokens, keras.layers.Dense(3, name="out")(h)).save(src)
    for out in ("o.h5", "o.keras"):
        result = cli("prune", src, "-g", "neuron", "-s", "0.5", "--shrink", "-o", tmp_path / out, "-q")
        assert result.exit_code == 0, result.output
    from_h5 = keras.saving.load_model(tmp_path / "o.h5", compile=False)
    assert from_h5.get_layer("rnn").units == 4
    ids = np.array([[3, 5, 1, 0, 0, 0, 0], [2, 2, 9, 11, 4, 0, 0]])
    expected = np.asarray(keras.saving.load_model(tmp_path / "o.keras", compile=False)(ids))
    np.testing.assert_allclose(np.asarray(from_h5(ids)), expected, rtol=1e-5, atol=1e-6)


def test_the_bytes_an_h5_declares_are_read_from_its_headers(tmp_path):
    """memory._h5_declared_bytes: every dataset's shape x item size, nested ones and one never written
    included (a bomb declares what it never stores), a scalar as one element, an empty one and a named
    datatype as nothing; attributes are not weights."""
    import h5py

    from prunecli.io.models.memory import _h5_declared_bytes

    with h5py.File(tmp_path / "w.h5", "w") as f:
        f.create_dataset("layers/dense/vars/0", shape=(1000, 1000, 10), dtype="float32")  # declared only
        f.create_dataset("scalar", data=np.float64(3))
        f.create_dataset("empty", data=h5py.Empty("f4"))
        f.create_dataset("ints", data=np.arange(7, dtype="int16"))
        f["named"] = np.dtype("float32")
        f.attrs["big"] = np.ones(1000)
    with h5py.File(tmp_path / "w.h5", "r") as h5:
        assert _h5_declared_bytes(h5) == 1000 * 1000 * 10 * 4 + 8 + 7 * 2
