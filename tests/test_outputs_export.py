"""--export: TFLite (float and int8) and SavedModel copies beside the output, their sizes and output checks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from prunecli import build_config, prune
from prunecli.errors import ConfigError, OutputError
from prunecli.io import plan_file
from prunecli.outputs import export


@pytest.fixture(scope="module")
def exported(example_model, example_data, tmp_path_factory):
    """The bundled CNN pruned to 80% and exported in all three formats, calibrated on its data."""
    out = tmp_path_factory.mktemp("export") / "digits.pruned.keras"
    stale = out.with_name("digits.pruned_savedmodel")
    (stale / "assets.extra").mkdir(parents=True)  # a SavedModel's part this export does not write
    (stale / "assets.extra" / "stale.txt").write_text("from an older run")
    settings = {
        "model_path": str(example_model),
        "sparsity": 0.8,
        "data": str(example_data),
        "output": str(out),
        "export": ["tflite", "tflite-int8", "savedmodel"],
    }
    with pytest.raises(OutputError, match="digits.pruned_savedmodel already exists"):  # an export name replaces
        prune(build_config(settings))  # nothing unless forced, in Python as on the command line
    config = build_config({**settings, "force": True})
    return prune(config), out


@pytest.mark.slow
def test_files_land_beside_the_output(exported):
    result, out = exported
    paths = {fmt: Path(entry["path"]) for fmt, entry in result.report.extra["export"].items()}
    assert paths == {
        "tflite": out.with_name("digits.pruned.tflite"),
        "tflite-int8": out.with_name("digits.pruned.int8.tflite"),
        "savedmodel": out.with_name("digits.pruned_savedmodel"),
    }
    assert paths["tflite"].is_file() and paths["tflite-int8"].is_file()
    assert (paths["savedmodel"] / "saved_model.pb").is_file()
    assert not (paths["savedmodel"] / "assets.extra").exists(), "an older export was merged, not replaced"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging files left behind"
    assert oct(paths["tflite"].stat().st_mode & 0o777) != oct(0o600), "export kept mkstemp's private mode"


@pytest.mark.slow
def test_sizes_are_the_files_sizes(exported):
    result, _ = exported
    entries = result.report.extra["export"]
    for fmt in ("tflite", "tflite-int8"):
        path = Path(entries[fmt]["path"])
        assert entries[fmt]["bytes"] == path.stat().st_size
        assert 0 < entries[fmt]["gzip_bytes"] < entries[fmt]["bytes"]
    saved = Path(entries["savedmodel"]["path"])
    files = [p for p in saved.rglob("*") if p.is_file()]
    assert entries["savedmodel"]["bytes"] == sum(p.stat().st_size for p in files)
    assert entries["savedmodel"]["files"] == len(files)
    assert entries["savedmodel"]["sha256"] == plan_file.path_sha256(saved)  # what `prunecli verify` checks
    assert entries["tflite"]["sha256"] == plan_file.file_sha256(entries["tflite"]["path"])
    assert 0 < entries["savedmodel"]["gzip_bytes"] < entries["savedmodel"]["bytes"]


@pytest.mark.slow
def test_smaller_tflite_encoding_is_kept(exported):
    """At 80% sparsity both encodings are tried; the file on disk is the smaller of the two."""
    result, _ = exported
    for fmt in ("tflite", "tflite-int8"):
        entry = result.report.extra["export"][fmt]
        sizes = {"dense": entry["dense_encoding_bytes"], "sparse": entry["sparse_encoding_bytes"]}
        assert entry["bytes"] == min(sizes.values())
        assert entry["encoding"] == min(sizes, key=sizes.get)
    assert result.report.extra["export"]["tflite"]["encoding"] == "sparse"


@pytest.mark.slow
def test_float_tflite_and_savedmodel_compute_the_keras_function(exported):
    result, _ = exported
    entries = result.report.extra["export"]
    for fmt in ("tflite", "savedmodel"):
        assert entries[fmt]["sample_source"] == "data" and entries[fmt]["samples"] == 256
        assert entries[fmt]["max_abs_diff"] < 1e-5
        assert entries[fmt]["top1_agreement"] == 1.0


@pytest.mark.slow
def test_int8_is_fully_integer_and_close(exported, example_data):
    import tensorflow as tf

    result, _ = exported
    entry = result.report.extra["export"]["tflite-int8"]
    interpreter = tf.lite.Interpreter(model_path=entry["path"])
    assert interpreter.get_input_details()[0]["dtype"] == np.int8
    assert interpreter.get_output_details()[0]["dtype"] == np.int8
    float_ops = [d for d in interpreter.get_tensor_details() if d["dtype"] == np.float32]
    assert not float_ops, "full-integer quantisation left float tensors"
    assert 0 < entry["max_abs_diff"] < 0.1  # softmax probabilities, int8-quantised
    assert entry["top1_agreement"] > 0.95
    assert entry["bytes"] < result.report.extra["export"]["tflite"]["dense_encoding_bytes"] / 3
    noted = any(n.startswith("digits.pruned.int8.tflite agrees with the Keras model") for n in result.report.notes)
    assert noted == (entry["top1_agreement"] < export.AGREEMENT_NOTED_BELOW)  # said where it is below 99%


@pytest.mark.slow
def test_exported_tflite_keeps_the_pruned_zeros(exported):
    """The float file decodes (densified by the interpreter) to weights as sparse as the Keras model."""
    import tensorflow as tf

    result, _ = exported
    interpreter = tf.lite.Interpreter(model_path=result.report.extra["export"]["tflite"]["path"])
    interpreter.allocate_tensors()
    dense_kernel = result.model.get_layer("dense1").kernel.numpy()
    found = []
    for d in interpreter.get_tensor_details():
        if tuple(d["shape"]) == dense_kernel.T.shape:
            with_values = interpreter.get_tensor(d["index"])
            found.append(np.count_nonzero(with_values))
    assert np.count_nonzero(dense_kernel) in found


@pytest.mark.slow
def test_savedmodel_serves_without_keras(exported, example_data):
    import tensorflow as tf

    result, _ = exported
    loaded = tf.saved_model.load(result.report.extra["export"]["savedmodel"]["path"])
    x = np.load(example_data)["x_test"][:8]
    (got,) = loaded.signatures["serving_default"](tf.constant(x)).values()
    np.testing.assert_allclose(got.numpy(), result.model.predict(x, verbose=0), atol=1e-5)


def test_checks_before_work():
    with pytest.raises(ConfigError, match="tflite-int8 needs --data"):
        build_config({"model_path": "m.keras", "export": "tflite-int8"})
    with pytest.raises(ConfigError, match="unknown export format 'onnx'"):
        build_config({"model_path": "m.keras", "export": ["tflite", "onnx"]})


def _two_input_model(path: Path):
    import keras

    keras.utils.set_random_seed(0)
    a, b = keras.Input((6,), name="alpha"), keras.Input((4,), name="beta")
    x = keras.layers.Concatenate()([keras.layers.Dense(8, name="da")(a), keras.layers.Dense(8, name="db")(b)])
    model = keras.Model([a, b], keras.layers.Dense(3, name="out")(x))
    model.save(path)


@pytest.mark.slow
def test_without_data_random_inputs_check_a_two_input_model(cli, tmp_path):
    """No --data: seeded random inputs, matched to the signature by input name; the CLI's JSON stays clean."""
    src = tmp_path / "two.keras"
    _two_input_model(src)
    result = cli("prune", src, "-s", "0.5", "-o", tmp_path / "two.pruned.keras", "--export", "tflite", "--report", "-")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # converter chatter would break this
    entry = report["export"]["tflite"]
    assert entry["sample_source"] == "random" and entry["samples"] == export.SAMPLE_COUNT
    assert entry["max_abs_diff"] is not None and entry["max_abs_diff"] < 1e-5
    assert Path(entry["path"]) == tmp_path / "two.pruned.tflite"
    (tmp_path / "r.json").write_text(result.stdout)
    held = cli("verify", tmp_path / "two.pruned.keras", "-r", tmp_path / "r.json")  # the export's digest too
    assert held.exit_code == 0 and "not checked" not in held.output, held.output
    tflite = Path(entry["path"])
    tflite.write_bytes(tflite.read_bytes()[:-1] + b"\0")  # one byte changed after the run
    changed = cli("verify", tmp_path / "two.pruned.keras", "-r", tmp_path / "r.json")
    assert changed.exit_code == 4 and "export tflite sha256" in changed.stderr and "two.pruned.tflite" in changed.stderr
    tflite.write_bytes(tflite.read_bytes()[:-1] + b"\0")  # as the run wrote it, in an older prunecli's report
    del report["export"]["tflite"]["sha256"]
    (tmp_path / "r.json").write_text(json.dumps(report))
    from prunecli.run.verify import verify

    ran = verify(tmp_path / "two.pruned.keras", report=tmp_path / "r.json")  # run against the model instead
    assert [c for c in ran.checked if c.startswith("export tflite outputs: the model's within")], ran.checked
    other = verify(src, report=tmp_path / "r.json", raise_on_failure=False)  # the dense model: not its export
    assert [f for f in other.failures if "export tflite: " in f and "computes other outputs than" in f], other.failures


def test_dir_sizes_is_a_deterministic_tar_gzip(tmp_path):
    from prunecli.io.models import dir_sizes

    d = tmp_path / "sm"
    (d / "variables").mkdir(parents=True)
    (d / "saved_model.pb").write_bytes(b"\0" * 50_000)
    (d / "variables" / "data").write_bytes(os.urandom(2_000))
    first = dir_sizes(d)
    os.utime(d / "saved_model.pb", (1, 1))
    assert dir_sizes(d) == first, "mtimes leaked into the tar"
    assert first["bytes"] == 52_000 and first["files"] == 2
    assert 2_000 < first["gzip_bytes"] < 5_000  # the zeros compress away; the random bytes do not
    (d / "variables-x").mkdir()  # sorted as paths, "variables/data" comes first; as text, "variables-x/a"
    (d / "variables-x" / "a").write_bytes(b"a")
    from prunecli.io.plan_file import path_sha256

    digest = path_sha256(d)  # verify's: the export's sha256 comes from the read that sizes it, not a second one
    assert dir_sizes(d, sha256=True)["sha256"] == digest == dir_sizes(d, gzip=False, sha256=True)["sha256"]


def test_directory_in_the_way_of_a_file_is_an_output_error(tmp_path):
    target = tmp_path / "m.tflite"
    target.mkdir()
    with pytest.raises(OutputError, match="is a directory"), export._atomic_file(target):
        pass


@pytest.mark.slow
def test_shrunk_tflite_is_timed_beside_the_unshrunk_one(cli, example_model, tmp_path):
    """--shrink with --export tflite: the interpreter's batch-1 latency of the shrunk and the masked model."""
    out = tmp_path / "small.keras"
    result = cli(
        "prune",
        example_model,
        "-g",
        "neuron",
        "-s",
        "0.5",
        "--shrink",
        "--export",
        "tflite",
        "-o",
        out,
        "--report",
        "-",
    )
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["export"]["tflite"]
    assert entry["latency_ms_batch_1"] > 0 and entry["baseline_latency_ms_batch_1"] > 0


def _lstm_model(path: Path, steps: int | None = None) -> None:
    """An LSTM classifier; its length open by default (the loop stays: select TF ops)."""
    import keras

    inp = keras.Input((steps, 3))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.LSTM(4)(inp))
    keras.Model(inp, out).save(path)


def test_a_model_the_converter_refuses_leaves_no_output_and_names_the_ops(tmp_path, monkeypatch):
    """Outputs are committed together: an export that fails (exit 7, the ops named) leaves no pruned
    model either; the float conversion first retries with select TensorFlow ops."""
    from prunecli.errors import ExportError

    model = tmp_path / "m.keras"
    _lstm_model(model)
    tried = []

    def refuses(saved, calibration, sparse, select_tf_ops, int8_weights):
        tried.append(select_tf_ops)
        raise ExportError("cannot convert the model to TFLite: unsupported op(s) tf.TensorListReserve")

    monkeypatch.setattr(export, "_convert", refuses)
    out = tmp_path / "small.keras"
    config = build_config({"model_path": str(model), "output": str(out), "export": ["tflite"]}, environ={})
    with pytest.raises(ExportError, match="tf.TensorListReserve") as caught:
        prune(config)
    assert caught.value.exit_code == 7
    assert tried == [False, True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.keras"], "nothing of the failed run is left"


def test_int8_of_a_long_recurrent_loop_says_why_and_what_converts_it(tmp_path, monkeypatch):
    """Full-integer int8 has no select-op fallback: a recurrent layer too long to unroll (medaka's and
    sleepecg's GRUs over 1,000 steps) is refused in one line that says so and names the float export."""
    from prunecli.errors import ExportError

    def refuses(saved, calibration, sparse, select_tf_ops, int8_weights):
        raise ExportError("cannot convert the model to int8 TFLite: unsupported op(s) tf.TensorListReserve")

    monkeypatch.setattr(export, "_convert", refuses)
    with pytest.raises(
        ExportError,
        match=rf"an open number of steps, or more than {export.MAX_UNROLLED_STEPS}, keeps its loop.*--export tflite",
    ):
        export.to_tflite(tmp_path, calibration=lambda: iter(()), sparse=False)


def test_converter_messages_name_the_unsupported_ops():
    message = "error: 'tf.TensorListReserve' op is neither a custom op nor a flex op\n tf.TensorListSetItem ... tf.TensorListReserve"
    assert export._unsupported_ops(message) == ["tf.TensorListReserve", "tf.TensorListSetItem"]


@pytest.mark.slow
def test_an_lstm_exports_to_tflite_with_the_select_ops_fallback(tmp_path):
    model = tmp_path / "m.keras"
    _lstm_model(model)
    config = build_config(
        {"model_path": str(model), "output": str(tmp_path / "o.keras"), "export": ["tflite"]}, environ={}
    )
    result = prune(config)
    entry = result.report.extra["export"]["tflite"]
    assert Path(entry["path"]).is_file() and entry["ops"] == export.SELECT_OPS
    assert any("select TensorFlow ops" in n for n in result.report.notes)


def test_a_full_disk_is_exit_6_naming_the_users_path(tmp_path, monkeypatch):
    import errno

    from prunecli.errors import ResourceError
    from prunecli.io import models as model_io

    target = tmp_path / "out.keras"
    with pytest.raises(ResourceError, match=r"out\.keras \(No space left on device\)") as caught:
        with model_io.atomic_path(target):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert caught.value.exit_code == 6 and list(tmp_path.iterdir()) == []
    with pytest.raises(ResourceError, match="out.keras"):
        with model_io.atomic_path(target):
            raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))


@pytest.mark.slow
def test_keras_and_tensorflow_temporary_files_do_not_outlive_the_run(tmp_path, monkeypatch, example_model):
    """Autograph's generated modules and Keras' save staging go to a folder the run owns and removes."""
    import tempfile

    users_tmp = tmp_path / "tmp"
    users_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(users_tmp))
    monkeypatch.setenv("TMPDIR", str(users_tmp))
    out = tmp_path / "o.keras"
    config = build_config(
        {"model_path": str(example_model), "output": str(out), "export": ["tflite", "savedmodel"]}, environ={}
    )
    prune(config)
    assert out.is_file() and list(users_tmp.iterdir()) == []
    assert tempfile.tempdir == str(users_tmp)


@pytest.mark.slow
def test_a_two_input_model_exports_with_its_data(tmp_path):
    """--export with --data on a model of several inputs: the samples and int8 calibration batches come
    per input (the batches are dicts), compared by input name. It once ended in an internal error."""
    import keras
    import numpy as np

    from prunecli import build_config, prune

    a, b = keras.Input((6,), name="a"), keras.Input((4,), name="b")
    h = keras.layers.Dense(16, activation="relu", name="h")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], keras.layers.Dense(1, name="out")(h))
    model.save(tmp_path / "two.keras")
    rng = np.random.default_rng(0)
    x = {"a": rng.random((64, 6), dtype=np.float32), "b": rng.random((64, 4), dtype=np.float32)}
    y = rng.random((64, 1), dtype=np.float32)
    np.savez(tmp_path / "d.npz", x_a=x["a"], x_b=x["b"], y=y)
    out = tmp_path / "o.keras"
    settings = {"model_path": str(tmp_path / "two.keras"), "data": str(tmp_path / "d.npz"), "output": str(out)}
    result = prune(build_config({**settings, "export": ["tflite", "tflite-int8"], "quiet": True}))
    export = result.report.to_dict()["export"]
    for fmt in ("tflite", "tflite-int8"):
        assert export[fmt]["sample_source"] == "data" and export[fmt]["samples"] == 64
        assert export[fmt]["max_abs_diff"] is not None
    assert export["tflite"]["max_abs_diff"] <= 1e-4


@pytest.mark.slow
def test_int8_export_of_a_token_model_is_calibrated_with_integer_ids(cli, tmp_path):
    """The .npz loader reads every x as float32; the int8 converter's calibration must feed a token
    model's int32 input as int32 (it ended in exit 7: 'Got value of type FLOAT32 but expected INT32')."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12,), dtype="int32")
    h = keras.layers.Embedding(50, 8)(inp)
    h = keras.layers.Conv1D(8, 3, activation="relu")(h)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h))
    model = keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(tmp_path / "tokens.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 50, (64, 12)).astype("int32"), y=rng.integers(0, 3, 64))
    result = cli(
        "prune",
        tmp_path / "tokens.keras",
        "-d",
        tmp_path / "d.npz",
        "--export",
        "tflite-int8",
        "-o",
        tmp_path / "o.keras",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o.int8.tflite").is_file()


def test_exported_models_are_checked_a_few_rows_at_a_time(monkeypatch):
    """The interpreter holds one call's activations at once (256 stand-ins of a 16,384-step sequence
    model in one call took more than 20 GB): the check feeds at most MAX_PROBE_ELEMENTS input values
    per call, and its outputs are the one-call outputs, in order."""
    import keras

    from prunecli.structure import equivalence

    keras.utils.set_random_seed(0)
    inp = keras.Input((6, 4))
    model = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Conv1D(5, 3, padding="same")(inp)))
    samples = [np.random.default_rng(0).normal(size=(23, 6, 4)).astype("float32")]
    expected = [np.asarray(model(samples[0]))]
    calls = []

    def run(chunk):
        calls.append(len(chunk["x"]))
        return [np.asarray(model(chunk["x"]))]

    monkeypatch.setattr(equivalence, "MAX_PROBE_ELEMENTS", 5 * 24)  # five examples of 6 x 4 values
    got = export._in_chunks(run, {"x": samples[0]})
    assert calls == [5, 5, 5, 5, 3]
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_recurrent_layers_of_a_fixed_length_export_to_builtin_and_int8_tflite(tmp_path, monkeypatch):
    """Keras 3's looped LSTM/GRU become TensorList ops in TFLite (select TF ops; int8 refused, exit 7, on
    three real name classifiers in bench/ZOO.md): with a fixed length they are converted unrolled, so
    both files run on builtins, the float one computing the Keras function."""
    import keras

    from prunecli.structure import keras_graph, rebuild

    keras.utils.set_random_seed(0)
    steps = 4  # what is checked holds for any fixed length; each step unrolled is more graph to convert
    ids = keras.Input((steps,), dtype="int32")
    x = keras.layers.Embedding(30, 8)(ids)
    x = keras.layers.Bidirectional(keras.layers.GRU(6, return_sequences=True, dropout=0.1, recurrent_dropout=0.1))(x)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.LSTM(5, dropout=0.2)(x))
    model = keras.Model(ids, out)
    tokens = np.random.default_rng(0).integers(0, 30, size=(40, steps)).astype("int32")
    twin = rebuild.unrolled(model, export.MAX_UNROLLED_STEPS)
    rnns = [lay for lay in keras_graph.all_layers(twin) if isinstance(lay, keras.layers.RNN)]
    assert len(rnns) == 3 and all(lay.unroll for lay in rnns)
    # inference only: no dropout masks, whose random ops EQTransformer's TFLite file could not run
    assert all(lay.cell.dropout == lay.cell.recurrent_dropout == 0 for lay in rnns)
    np.testing.assert_allclose(np.asarray(twin(tokens)), np.asarray(model(tokens)), rtol=1e-5, atol=1e-6)
    assert rebuild.unrolled(model, steps - 1) is None  # longer than the limit: the loop stays

    path, data = tmp_path / "m.keras", tmp_path / "d.npz"
    model.save(path)
    np.savez(data, x=tokens, y=np.random.default_rng(1).integers(0, 3, 40))
    config = build_config(
        {
            "model_path": str(path),
            "output": str(tmp_path / "o.keras"),
            "data": str(data),
            "export": ["tflite", "tflite-int8"],
        },
        environ={},
    )
    monkeypatch.setattr(export, "AGREEMENT_NOTED_BELOW", 1.01)  # every agreement is then said in a note
    result = prune(config)
    entries = result.report.extra["export"]
    assert entries["tflite"]["ops"] == entries["tflite-int8"]["ops"] == export.BUILTIN_OPS
    agreement = entries["tflite-int8"]["top1_agreement"]
    assert f"o.int8.tflite agrees with the Keras model on the top class of {agreement:.1%} of 40" in " ".join(
        result.report.notes
    )
    assert entries["tflite"]["max_abs_diff"] < 1e-5 and entries["tflite-int8"]["samples"] > 0
    assert any("converted unrolled" in n for n in result.report.notes)


@pytest.mark.slow  # 1-2 s: a trace and an int8 conversion
def test_a_convolution_after_a_rot90_converts_to_builtin_int8(tmp_path):
    """Keras 3's rot90 on TensorFlow reshapes to sizes sliced from tf.shape: Python's trace knows them,
    TFLite's converter does not, so the convolution after it saw an open channel count and stayed
    tf.Conv2D, and int8 was refused (exit 7, DELIGHT's Rot90 layers in bench/ZOO.md). The export twin
    reshapes such a call's output (a rot90 node or one inside a Lambda; not a flip, which reads no
    sizes) to what Keras knows: builtin int8, checked against Keras."""
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((8, 8, 1))
    conv = keras.layers.Conv2D(4, 3)  # shared, as DELIGHT's trunk
    turned = keras.ops.rot90(image, k=1, axes=(1, 2))
    turned_back = keras.layers.Lambda(lambda t: keras.ops.rot90(t, k=3, axes=(1, 2)))(image)
    mirrored = keras.ops.flip(image, axis=2)
    joined = keras.layers.Concatenate()([conv(turned), conv(turned_back), conv(mirrored)])
    model = keras.Model(image, keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(joined)))
    x = np.random.default_rng(0).random((32, 8, 8, 1)).astype("float32")
    twin = export.for_tflite(model)
    assert sum(isinstance(lay, keras.layers.Reshape) for lay in twin.layers) == 2
    np.testing.assert_allclose(np.asarray(twin(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    export.write_savedmodel(twin, tmp_path / "saved")
    content, encoding = export.convert_tflite(tmp_path / "saved", lambda: iter([[x]]), try_sparse=False)
    assert encoding["ops"] == export.BUILTIN_OPS
    check = export.compare_tflite(content, [x], [np.asarray(model(x))], [model.inputs[0].name])
    assert check["samples"] == 32 and check["top1_agreement"] >= 0.9


@pytest.mark.slow  # 1-2 s: a trace and a conversion
def test_a_fully_convolutional_model_over_open_image_sizes_is_checked_at_the_examples_sizes(tmp_path):
    """MTCNN's PNet (bench/ZOO.md) takes images of any size and its valid convolutions need 12 x 12 pixels.
    The checks that run one example (the int8 weight count, the default-delegate and the sparse-encoding
    checks) took an open size as 1: int8 ended in an internal error ("BytesRequired number of elements
    overflowed") and float TFLite killed the process (signal 11). They take the check inputs' sizes."""
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(32, 3)(keras.layers.MaxPooling2D(2)(keras.layers.Conv2D(32, 3)(image)))
    model = keras.Model(image, [keras.layers.Conv2D(4, 1)(x), keras.layers.Conv2D(2, 1, activation="softmax")(x)])
    rng = np.random.default_rng(0)
    for layer in model.layers[1:]:
        kernel, bias = layer.get_weights() if layer.weights else (None, None)
        if kernel is not None:
            layer.set_weights([np.where(rng.random(kernel.shape) < 0.9, 0.0, kernel), bias])
    x = rng.random((8, 16, 16, 3)).astype("float32")
    export.write_savedmodel(model, tmp_path / "saved")
    examples = ([x], [model.inputs[0].name])
    content, _encoding = export.convert_tflite(tmp_path / "saved", try_sparse=False)
    assert export._default_interpreter_refuses(content, examples) is None
    assert export._encodings_disagree(content, content, examples) is None  # (the sparse check's feeds)
    assert export.int8_weight_counts(content, examples) == {"values": 0, "zeros": 0, "nonzero_zero_points": 0}
    check = export.compare_tflite(content, [x], [np.asarray(o) for o in model(x)], [model.inputs[0].name])
    assert check["samples"] == 8 and check["max_abs_diff"] < 1e-4


def test_an_integer_input_without_a_scale_is_fed_as_it_is():
    """Quantised means a scale, not an integer dtype: a model's own int8 token ids (DM3Loc, bench/ZOO.md)
    were divided by their 0 scale and fed as 127 each ('gather index out of bounds', exit 1)."""
    tokens = np.array([[0, 3, 5]], dtype=np.float32)
    own = {"dtype": np.int8, "quantization": (0.0, 0)}
    np.testing.assert_array_equal(export.quantize(tokens, own), [[0, 3, 5]])
    assert export.quantize(tokens, own).dtype == np.int8
    quantised = {"dtype": np.int8, "quantization": (0.5, -3)}
    np.testing.assert_array_equal(export.quantize(tokens, quantised), [[-3, 3, 7]])
    np.testing.assert_allclose(export.dequantize(np.array([-3, 3, 7], np.int8), quantised), [0, 3, 5])
    np.testing.assert_array_equal(export.dequantize(np.array([4], np.int8), own), [4.0])
    wide = {"dtype": np.uint8, "quantization": (1 / 255, 0)}
    np.testing.assert_array_equal(export.quantize(np.array([0.0, 2.0]), wide), [0, 255])  # clipped to uint8


@pytest.mark.slow
def test_a_model_with_an_int8_token_input_exports_and_is_checked(cli, tmp_path):
    """A token model whose Input is int8 exports to float TFLite and its outputs are compared on the ids."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((16,), dtype="int8")
    h = keras.layers.Embedding(6, 4)(inp)
    h = keras.layers.Conv1D(8, 3, activation="relu")(h)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h)))
    model.save(tmp_path / "int8_ids.keras")
    report = tmp_path / "r.json"
    result = cli("prune", tmp_path / "int8_ids.keras", "--export", "tflite", "-o", tmp_path / "o.keras", "-r", report)
    assert result.exit_code == 0, result.output
    checked = json.loads(report.read_text())["export"]["tflite"]
    assert checked["samples"] > 0 and checked["max_abs_diff"] < 1e-4


def test_a_full_disk_during_the_savedmodel_export_is_a_resource_error(tmp_path, monkeypatch):
    """TensorFlow's writer reports a full disk or a file-size limit in its own error types, not as an
    OSError: exit 6 (not 7, 'cannot export'), and no staging path in the message."""
    import keras

    from prunecli.errors import ResourceError
    from prunecli.outputs import export

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])

    def full(*_args, **_kwargs):
        raise RuntimeError(f"{tmp_path}/.prunecli-export.x/savedmodel/saved_model.pb.tmp; File too large")

    monkeypatch.setattr(model, "export", full)
    with pytest.raises(ResourceError, match=r"^not enough disk space to export the model \(File too large\)$"):
        export.write_savedmodel(model, tmp_path / "sm")


@pytest.mark.slow
def test_time_distributed_over_open_steps_exports_and_an_export_that_fails_its_inputs_is_an_error(
    tmp_path, cli, monkeypatch
):
    """Keras 3's TimeDistributed, traced over an open time axis, maps its layer over the batch size (it
    reads `ops.shape(inputs)[0]` before swapping the axes): the exported signature returned (batch, batch,
    3) and failed on the model's own inputs ("slice index 32 of dimension 0 out of bounds": crema's and
    rnnmorph's taggers, bench/ZOO.md). Each such wrapper (a Dense, a BatchNormalization, a nested model) is
    traced with the steps folded into the batch, and the SavedModel computes the Keras model's function.
    Traced as Keras traces it, the check's failure is an export error (exit 7, one line), not an internal
    error, and nothing is written."""
    import keras
    import numpy as np

    from prunecli.structure import rebuild

    keras.utils.set_random_seed(6)
    inp = keras.Input((None, 6))
    h = keras.layers.GRU(4, return_sequences=True)(inp)
    h = keras.layers.TimeDistributed(keras.layers.BatchNormalization(), name="steps_bn")(h)
    step_in = keras.Input((4,))
    per_step = keras.Model(step_in, keras.layers.Dense(5, activation="relu")(step_in), name="per_step")
    h = keras.layers.TimeDistributed(per_step, name="steps_model")(h)
    out = keras.layers.TimeDistributed(keras.layers.Dense(3, activation="softmax"))(h)
    keras.Model(inp, out).save(tmp_path / "td.keras")
    np.savez(tmp_path / "td.npz", x=np.random.default_rng(0).random((40, 20, 6)).astype("float32"))
    args = ["prune", tmp_path / "td.keras", "-s", "0.5", "-d", tmp_path / "td.npz", "--export", "savedmodel"]
    result = cli(*args, "-o", tmp_path / "o.keras", "--report", "-", "-q")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["export"]["savedmodel"]
    assert entry["samples"] > 0 and entry["max_abs_diff"] < 1e-5

    monkeypatch.setattr(rebuild, "steps_as_batch", lambda model: None)  # traced as Keras traces it
    out = tmp_path / "out" / "o.keras"
    out.parent.mkdir()
    result = cli(*args, "-o", out, "-q")
    assert result.exit_code == 7, result.output
    assert result.stderr.strip().startswith(
        "prunecli: error: the exported SavedModel does not run on the model's inputs"
    )
    assert list(out.parent.iterdir()) == []


@pytest.mark.slow
def test_a_file_xnnpack_cannot_prepare_is_checked_with_the_delegate_off(tmp_path, monkeypatch):
    """FCD's ChemNet and astrorapid's tagger (int8, bench/ZOO.md): TFLite's default XNNPack delegate
    "failed to prepare" the file, and the export check's RuntimeError ended the run (exit 1). The file
    runs with the delegate off: it is checked so, and a note says why."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)])
    path, data = tmp_path / "m.keras", tmp_path / "d.npz"
    model.save(path)
    np.savez(data, x=np.random.default_rng(0).normal(size=(32, 6)).astype("float32"))
    said = "Node number 7 (TfLiteXNNPackDelegate) failed to prepare."
    real_interpreter = export._interpreter
    delegated = []

    def interpreter(content, delegate=True, **options):
        delegated.append(delegate)
        return real_interpreter(content, delegate, **options)

    monkeypatch.setattr(export, "_default_interpreter_refuses", lambda content, examples=None: said)
    monkeypatch.setattr(export, "_interpreter", interpreter)
    config = build_config(
        {"model_path": str(path), "output": str(tmp_path / "o.keras"), "data": str(data), "export": ["tflite"]},
        environ={},
    )
    result = prune(config)
    entry = result.report.extra["export"]["tflite"]
    assert entry["xnnpack_refused"] == said and entry["samples"] > 0 and entry["max_abs_diff"] < 1e-4
    assert delegated and not any(delegated)  # compared and timed with the delegate off
    assert any("default XNNPack delegate cannot run it" in n for n in result.report.notes)


def test_a_layer_keras_cannot_trace_is_named_with_its_reason_and_the_open_sizes(tmp_path, cli):
    """The zoo's HED (a bilinear UpSampling2D on open image sizes) ended every export with "Exception
    encountered when calling UpSampling2D.call()." and nothing more: the reason was on the next line."""
    import keras

    inp = keras.Input((None, None, 3))
    up = keras.layers.UpSampling2D(2, interpolation="bilinear")(keras.layers.Conv2D(4, 3, padding="same")(inp))
    keras.Model(inp, up).save(tmp_path / "up.keras")
    result = cli(
        "prune", tmp_path / "up.keras", "-s", "0.5", "-o", tmp_path / "o.keras", "--export", "savedmodel", "-q"
    )
    assert result.exit_code == 7 and result.stderr.count("\n") == 1
    assert "UpSampling2D.call(): Using a symbolic `tf.Tensor` as a Python `bool` is not allowed" in result.stderr
    assert "(None, None, None, 3) has open sizes: with --data it is exported at the data's sizes" in result.stderr
    assert not (tmp_path / "o.keras").exists()


@pytest.mark.slow  # 3-5 s: the full suite (fast subset at its 120 s limit)
def test_a_model_keras_cannot_trace_on_open_sizes_exports_at_the_datas_sizes(tmp_path, cli):
    """The zoo's HED exported nothing (exit 7); with --data every format is written at the data's image
    size, each file checked against Keras there, and the note and report say which sizes it takes."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, None, 3))
    up = keras.layers.UpSampling2D(2, interpolation="bilinear")(keras.layers.Conv2D(4, 3, padding="same")(inp))
    keras.Model(inp, keras.layers.Conv2D(1, 1)(up)).save(tmp_path / "up.keras")
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).random((8, 12, 10, 3)).astype("float32"))
    report = tmp_path / "r.json"
    result = cli(
        "prune",
        tmp_path / "up.keras",
        "-s",
        "0.5",
        "--data",
        tmp_path / "d.npz",
        "-o",
        tmp_path / "o.keras",
        "--export",
        "savedmodel,tflite",
        "-r",
        report,
    )
    assert result.exit_code == 0, result.output
    exported = json.loads(report.read_text())["export"]
    for fmt in ("savedmodel", "tflite"):
        assert exported[fmt]["input_shapes"] == [[None, 12, 10, 3]] and exported[fmt]["samples"] == 8
        assert exported[fmt]["max_abs_diff"] < 1e-4
    assert "every export takes inputs of the data's sizes ((12, 10, 3) per example)" in " ".join(result.output.split())
    import tensorflow as tf

    serving = tf.saved_model.load(exported["savedmodel"]["path"]).signatures["serving_default"]
    assert [spec.shape.as_list() for spec in serving.structured_input_signature[1].values()] == [[None, 12, 10, 3]]


def test_a_fixed_length_rnn_unrolls_beside_one_over_an_open_length():
    """flavorfetcher (bench/ZOO.md) reads a 1-step phrase and open-length context with an LSTM each:
    the open one kept the whole model from unrolling, so int8 TFLite was refused for both."""
    import keras

    from prunecli.structure import rebuild

    keras.utils.set_random_seed(0)
    phrase, context = keras.Input((1, 4)), keras.Input((None, 4))
    joined = keras.layers.Concatenate()(
        [keras.layers.LSTM(3, name="fixed")(phrase), keras.layers.LSTM(3, name="open")(context)]
    )
    model = keras.Model([phrase, context], keras.layers.Dense(2)(joined))
    twin = rebuild.unrolled(model, export.MAX_UNROLLED_STEPS)
    assert twin.get_layer("fixed").unroll and not twin.get_layer("open").unroll
    x = [
        np.random.default_rng(1).random((2, 1, 4)).astype("float32"),
        np.random.default_rng(2).random((2, 5, 4)).astype("float32"),
    ]
    np.testing.assert_allclose(np.asarray(twin(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
def test_int8_of_an_open_length_rnn_is_converted_at_the_datas_length(tmp_path, cli):
    """A recurrent layer over an open number of steps keeps its loop, which full-integer int8 cannot
    hold (flavorfetcher's context LSTM: refused). With --data, the int8 file is converted at the data's
    length, unrolled: builtin ops, checked against Keras on that data, and a note says what it takes."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((None, 4))
    keras.Model(inp, keras.layers.Dense(3, activation="softmax")(keras.layers.LSTM(6)(inp))).save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((64, 5, 4)).astype("float32"), y=rng.integers(0, 3, 64))
    report = tmp_path / "r.json"
    result = cli(
        "prune",
        tmp_path / "m.keras",
        "-s",
        "0.3",
        "--data",
        tmp_path / "d.npz",
        "--export",
        "tflite-int8",
        "-o",
        tmp_path / "o.keras",
        "-r",
        report,
    )
    assert result.exit_code == 0, result.output
    entry = json.loads(report.read_text())["export"]["tflite-int8"]
    assert entry["ops"] == "builtins" and entry["samples"] == 64 and entry["top1_agreement"] >= 0.9
    # its LSTM bias is an int8 constant on an asymmetric grid (zero point -127), added, not a weight
    assert entry["int8_weights"]["nonzero_zero_points"] == 0 and entry["int8_weights"]["values"] > 0
    assert "o.int8.tflite takes inputs of the data's sizes ((5, 4) per example)" in " ".join(result.output.split())


@pytest.mark.slow  # 3-5 s: a run with two exports
def test_an_integer_input_fed_from_data_is_exported_and_checked_in_its_own_dtype(tmp_path):
    """Class: --data is read as float32, which Keras casts back to an integer input itself; the export
    checks fed those float arrays to the SavedModel and TFLite files, which take only the input's own
    dtype, so token ids beside float features made every --export with --data exit 7, nothing saved
    (without --data the seeded inputs had the right dtype and the same model exported)."""
    import keras

    tok, num = keras.Input((7,), dtype="int32", name="tok"), keras.Input((4,), name="num")
    h = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(20, 8, name="emb")(tok))
    h = keras.layers.Dense(16, activation="relu", name="d1")(keras.layers.Concatenate()([h, num]))
    model = keras.Model([tok, num], keras.layers.Dense(3, activation="softmax", name="cls")(h))
    model.compile("adam", "sparse_categorical_crossentropy")
    model.save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    x_tok, x_num = rng.integers(0, 20, (40, 7)).astype("int32"), rng.standard_normal((40, 4)).astype("float32")
    np.savez(tmp_path / "d.npz", x_tok=x_tok, x_num=x_num, y=rng.integers(0, 3, 40))
    out = tmp_path / "out.keras"
    settings = {"model_path": str(tmp_path / "m.keras"), "data": str(tmp_path / "d.npz"), "output": str(out)}
    result = prune(build_config({**settings, "export": ("savedmodel", "tflite")}))
    section = result.report.to_dict()["export"]
    for fmt in ("savedmodel", "tflite"):
        assert section[fmt]["sample_source"] == "data" and section[fmt]["samples"] == 40
        assert section[fmt]["max_abs_diff"] < 1e-5
    assert (tmp_path / "out_savedmodel").is_dir() and (tmp_path / "out.tflite").is_file()


def test_top_class_agreement_is_for_class_scores_only():
    """A regressor's vector output has no top class (DELIGHT's 16 offsets were reported "agrees with the
    Keras model on the top class of 91.4%"): the labels' task decides, and without labels the output's
    activation (softmax, sigmoid, a Softmax layer) or, for logits, a crossentropy compile loss over
    several units (a logits classifier had no figure without --data; a one-unit logit's class is its sign)."""
    import keras

    from prunecli.training.metrics import Task, gives_class_scores

    inp = keras.Input((3,))
    regressor = keras.Model(inp, keras.layers.Dense(4)(inp))
    assert not gives_class_scores(regressor, None)
    regressor.compile(loss="mse")
    assert not gives_class_scores(regressor, None)
    logits = keras.Model(inp, keras.layers.Dense(4)(inp))
    for loss in (keras.losses.SparseCategoricalCrossentropy(from_logits=True), "categorical_crossentropy"):
        logits.compile(loss=loss)
        assert gives_class_scores(logits, None)
    one_logit = keras.Model(inp, keras.layers.Dense(1)(inp))
    one_logit.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True))
    assert not gives_class_scores(one_logit, None)
    assert gives_class_scores(keras.Model(inp, keras.layers.Dense(4, activation="softmax")(inp)), None)
    assert gives_class_scores(keras.Model(inp, keras.layers.Softmax()(keras.layers.Dense(4)(inp))), None)
    assert gives_class_scores(regressor, Task("sparse_categorical_crossentropy", "accuracy"))  # logits, labelled
    assert not gives_class_scores(regressor, Task("mse", None))


@pytest.mark.slow  # 2-4 s: one float TFLite export
def test_a_vector_regressor_export_reports_its_relative_error_not_a_top_class(tmp_path, cli):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((6,))
    keras.Model(inp, keras.layers.Dense(16)(keras.layers.Dense(32, activation="relu")(inp))).save(tmp_path / "m.keras")
    report = tmp_path / "r.json"
    args = ("-s", "0.5", "--export", "tflite", "--quantize", "int8", "-o", tmp_path / "o.keras", "-r", report)
    result = cli("prune", tmp_path / "m.keras", *args)
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    entry = written["export"]["tflite"]
    assert "top1_agreement" not in entry and entry["relative_error"] < 0.05  # int8 rounding; its sparse encoding: 0.60
    assert "top1_agreement" not in written["quantize"]["output_difference"]
    assert "top class" not in result.output
    assert entry["encoding"] == "dense" and "sparse_refused" in entry  # smaller, but not the same function
