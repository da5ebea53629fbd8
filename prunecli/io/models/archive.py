"""Loading a `.keras` archive with its weights read where they lie in the file.

Keras' `load_model` reads the whole `model.weights.h5` member into memory before h5py opens it: on
a 1.1B-parameter model (a 4.4 GB file) that copy took 32 of the 45 s Keras spent loading here, and
4.4 GB of peak memory on top of the weights. Keras writes that member uncompressed (ZIP_STORED), so
its bytes are one contiguous range of the archive; h5py reads them in place through `_MemberWindow`,
a read-only file object over that range, the way Keras' own directory format opens
`model.weights.h5` from disk. The model is built and its state loaded by Keras' own functions
(keras.src.saving.saving_lib: `_model_from_config`, `H5IOStore`, `_load_state`), so what is loaded is
what `load_model` would load, and a failure is Keras' own message. The member's CRC-32, which
`load_model` checks as it reads, is computed on another thread while the weights load: a damaged
file is still refused.

`load` returns None whenever that does not apply (a compressed or encrypted member, a Keras without
those functions), and the caller loads with `keras.saving.load_model` as before.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

WEIGHTS_MEMBER = "model.weights.h5"
# tf.keras 2.11-2.12's `.keras` archives (its first "keras_v3" format, also what those versions
# pickle a model as) name the same weights file `variables.h5`: the same groups (layers/NAME/vars/0)
OLD_WEIGHTS_MEMBER = "variables.h5"
CONFIG_MEMBER = "config.json"
ASSETS_FOLDER = "assets"
_LOCAL_HEADER = struct.Struct("<4s5H3L2H")  # a zip local file header (APPNOTE 4.3.7): 30 bytes
_CRC_BLOCK = 8 << 20


class _MemberWindow(io.BytesIO):
    """A read-only file object over bytes [start, start + size) of an open file.

    A BytesIO subclass because Keras' H5IOStore takes a path or a BytesIO; every method h5py's
    file-object driver calls is overridden, so the BytesIO's own buffer stays empty."""

    def __init__(self, fh, start: int, size: int):
        super().__init__()
        self._fd, self._start, self._size, self._pos = fh.fileno(), start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def writable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        wanted = min(len(view), self._size - self._pos)
        if wanted <= 0:
            return 0
        got = os.preadv(self._fd, [view[:wanted]], self._start + self._pos)
        self._pos += got
        return got

    def read(self, size: int | None = -1) -> bytes:
        left = max(self._size - self._pos, 0)
        buffer = bytearray(left if size is None or size < 0 else min(size, left))
        return bytes(buffer[: self.readinto(buffer)])

    def write(self, _data) -> int:
        raise io.UnsupportedOperation("read-only")

    def getvalue(self) -> bytes:
        raise io.UnsupportedOperation("a window onto a file has no buffer")

    def getbuffer(self):
        raise io.UnsupportedOperation("a window onto a file has no buffer")


def _keras_functions():
    """saving_lib's functions this module calls, or None when this Keras lacks one of them."""
    try:
        from keras.src.saving import saving_lib
    except ImportError:
        return None
    wanted = (
        "_safe_zip_read",
        "_model_from_config",
        "H5IOStore",
        "DiskIOStore",
        "_load_state",
        "_raise_loading_failure",
    )
    return saving_lib if all(hasattr(saving_lib, name) for name in wanted) else None


def _data_start(fh, info: zipfile.ZipInfo) -> int | None:
    """Where a member's bytes begin: after its local header, whose name and extra field lengths may
    differ from the central directory's; None when the header is not one."""
    fh.seek(info.header_offset)
    raw = fh.read(_LOCAL_HEADER.size)
    if len(raw) != _LOCAL_HEADER.size:
        return None
    fields = _LOCAL_HEADER.unpack(raw)
    if fields[0] != b"PK\x03\x04":
        return None
    name_length, extra_length = fields[-2], fields[-1]
    return info.header_offset + _LOCAL_HEADER.size + name_length + extra_length


def _crc_in_background(fd: int, start: int, size: int) -> Future:
    """A Future of the CRC-32 of bytes [start, start + size) of `fd`, read on another thread
    (zlib.crc32 and the reads release the GIL)."""

    def crc() -> int:
        value, done = 0, 0
        buffer = bytearray(_CRC_BLOCK)
        view = memoryview(buffer)
        while done < size:
            got = os.preadv(fd, [view[: min(_CRC_BLOCK, size - done)]], start + done)
            if got <= 0:
                break
            value = zlib.crc32(view[:got], value)
            done += got
        return value

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prunecli-crc")
    try:
        return pool.submit(crc)
    finally:
        pool.shutdown(wait=False)


def load(path: Path, compile: bool, safe_mode: bool, config_patch=None):
    """The model in the `.keras` archive at `path`, its weights read in place; None when the archive
    is not one this applies to (the caller then uses keras.saving.load_model). Raises what Keras'
    load_model raises for the same file (a bad config, weights that do not fit, a damaged member).
    `config_patch`: applied to the archive's config (a dict) before Keras builds the model from it."""
    saving_lib = _keras_functions()
    if saving_lib is None or not Path(path).is_file():  # a Keras model folder (zipped=False) is Keras' to read
        return None
    with open(path, "rb") as fh:
        try:
            archive = zipfile.ZipFile(fh)
        except zipfile.BadZipFile:
            return None  # not a Keras archive: load_model says what it is
        with archive:
            names = archive.namelist()
            member = next((name for name in (WEIGHTS_MEMBER, OLD_WEIGHTS_MEMBER) if name in names), None)
            if member is None:
                return None  # sharded or .npz weights: Keras' own path
            info = archive.getinfo(member)
            stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1
            start = _data_start(fh, info) if stored and info.compress_size == info.file_size else None
            if start is None:
                return None
            config_json = saving_lib._safe_zip_read(archive, CONFIG_MEMBER)  # Keras' bomb check
            if config_patch is not None:
                config_json = json.dumps(config_patch(json.loads(config_json)))
            # the CRC thread reads with pread, which leaves the position the archive reads from alone
            checksum = _crc_in_background(fh.fileno(), start, info.file_size)
            try:
                model = saving_lib._model_from_config(config_json, None, compile, safe_mode)
                has_assets = len(archive.namelist()) > 3  # Keras' own test: metadata, config, weights
                _load_weights(
                    saving_lib, model, _MemberWindow(fh, start, info.file_size), archive if has_assets else None
                )
            finally:
                crc = checksum.result()  # the thread reads `fh`: it must finish before the file closes
    if crc != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
    return model


def _load_weights(saving_lib, model, window: _MemberWindow, archive: zipfile.ZipFile | None) -> None:
    """Keras' _load_state from the weights in `window` (and the assets of `archive`, which Keras
    extracts to a temporary folder); Keras' own error when an object could not be loaded."""
    weights = saving_lib.H5IOStore(window, mode="r")
    assets = saving_lib.DiskIOStore(ASSETS_FOLDER, archive=archive, mode="r") if archive else None
    failed, errors = set(), {}
    try:
        saving_lib._load_state(
            model,
            weights_store=weights,
            assets_store=assets,
            inner_path="",
            visited_saveables=set(),
            failed_saveables=failed,
            error_msgs=errors,
        )
    finally:
        weights.close()
        if assets is not None:
            assets.close()
    if failed:
        saving_lib._raise_loading_failure(errors)
