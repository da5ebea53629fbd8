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
    return made


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    out = build(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs_corpus")
    print(f"{len(out)} files written")
