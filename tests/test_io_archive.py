"""A .keras archive's weights read in place (prunecli/io/models/archive.py): the same model Keras'
load_model gives, a damaged member refused, and Keras' own path for archives it does not apply to."""

from __future__ import annotations

import zipfile

import keras
import numpy as np
import pytest

from prunecli.errors import ModelLoadError
from prunecli.io import models as model_io
from prunecli.io.models import archive


def _model():
    inputs = keras.Input((6,))
    x = keras.layers.Dense(16, activation="relu", name="hidden")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="out")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(32, 6)), rng.integers(0, 3, 32), epochs=1, verbose=0)  # moved BN statistics
    return model


def _same_model(a, b) -> None:
    assert a.to_json() == b.to_json()
    assert len(a.weights) == len(b.weights)
    for x, y in zip(a.weights, b.weights, strict=True):
        assert x.path == y.path
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow  # 1.4-2.3 s: the full suite (fast subset at its 120 s limit)
def test_in_place_load_equals_keras_load(tmp_path):
    path = tmp_path / "m.keras"
    _model().save(path)
    fast = archive.load(path, compile=True, safe_mode=True)
    assert fast is not None
    _same_model(fast, keras.saving.load_model(path))
    assert fast.compiled and fast.loss == "sparse_categorical_crossentropy"


@pytest.mark.slow  # an edge case of the format: the full suite's
def test_assets_are_loaded_too(tmp_path):
    """A StringLookup keeps its vocabulary in the archive's assets folder."""
    lookup = keras.layers.StringLookup(name="lookup")
    lookup.adapt(["red", "green", "green", "blue", "blue", "blue"])  # an adapted vocabulary is an asset
    inputs = keras.Input((1,), dtype="string")
    outputs = keras.layers.Dense(2, name="out")(keras.ops.cast(lookup(inputs), "float32"))
    path = tmp_path / "lookup.keras"
    keras.Model(inputs, outputs).save(path)
    with zipfile.ZipFile(path) as z:
        assert len(z.namelist()) > 3  # the case archive.py hands the assets to Keras for
    fast = archive.load(path, compile=False, safe_mode=True)
    assert fast.get_layer("lookup").get_vocabulary() == ["[UNK]", "blue", "green", "red"]
    _same_model(fast, keras.saving.load_model(path, compile=False))


@pytest.mark.slow
def test_a_damaged_weights_member_is_refused(tmp_path):
    path = tmp_path / "m.keras"
    _model().save(path)
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(archive.WEIGHTS_MEMBER)
    with open(path, "r+b") as fh:
        start = archive._data_start(fh, info)
        fh.seek(start + info.file_size - 8)  # inside the last dataset's bytes: h5py still opens it
        byte = fh.read(1)
        fh.seek(start + info.file_size - 8)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(zipfile.BadZipFile, match="CRC"):
        archive.load(path, compile=False, safe_mode=True)
    with pytest.raises(ModelLoadError, match="CRC"):
        model_io.load(path)  # the CLI's path: exit 3, one line


@pytest.mark.slow  # an edge case of the format: the full suite's
def test_a_compressed_member_goes_to_keras(tmp_path):
    """An archive rewritten with deflate (a user's zip tool) cannot be read in place: None, and
    prunecli's loader still loads it through Keras."""
    path, packed = tmp_path / "m.keras", tmp_path / "packed.keras"
    _model().save(path)
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
    assert archive.load(packed, compile=False, safe_mode=True) is None
    loaded, _info = model_io.load(packed)
    _same_model(loaded, keras.saving.load_model(path))


def test_window_reads_only_its_range(tmp_path):
    path = tmp_path / "bytes.bin"
    path.write_bytes(bytes(range(100)))
    with open(path, "rb") as fh:
        window = archive._MemberWindow(fh, 10, 20)
        assert window.read(5) == bytes(range(10, 15))
        window.seek(-3, 2)
        assert window.read() == bytes(range(27, 30))
        assert window.read() == b""
        window.seek(0)
        buffer = bytearray(50)
        assert window.readinto(buffer) == 20 and bytes(buffer[:20]) == bytes(range(10, 30))


@pytest.mark.slow  # an edge case of the format: the full suite's
def test_a_model_folder_is_left_to_keras(tmp_path):
    """A model folder (Keras' zipped=False format) renamed to .keras: not an archive to window."""
    folder, path = tmp_path / "folder", tmp_path / "folder.keras"
    _model().save(folder, zipped=False)
    folder.rename(path)
    assert archive.load(path, compile=False, safe_mode=True) is None
