"""Whether a model fits in memory, judged by what its file declares before Keras builds it.

A small file can declare huge weights (a 2.5 KB .keras declaring 6 GB), or thousands of layers;
both are read from dataset headers, archive members and layer configs, never by loading.
"""

from __future__ import annotations

import contextlib
import io
import zipfile
from pathlib import Path

from prunecli.errors import ResourceError
from prunecli.io.models.metadata import ModelFile

LAYER_OVERHEAD_BYTES = 2**20  # Keras/TF objects per built layer (500 Dense layers: ~300 MiB, measured)
ORDINARY_LAYERS = 1000  # layer counts of real models (ResNet-152: ~520); beyond, each layer is counted


def available_memory() -> int:
    """Free memory, lowered by an address-space or data limit (ulimit -v, a container's cap set with
    setrlimit), which psutil's figure does not see."""
    import resource

    import psutil

    available = psutil.virtual_memory().available
    used = psutil.Process().memory_info().vms
    for limit in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
        soft, _hard = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY:
            available = min(available, max(soft - used, 0))
    return available


def _h5_declared_bytes(h5) -> int:
    """Bytes the datasets of an open HDF5 file declare (shape x item size), read from their headers:
    a dataset of 6 GB costs nothing to declare, and Keras would allocate it before reading. Walked with
    h5py's low-level calls, which visit the same objects as `visititems` without building a Python
    object for each (ResNet50's 320 weights in a .keras: 139 -> 71 ms of every load)."""
    import h5py

    total = 0
    simple, null = h5py.h5s.SIMPLE, h5py.h5s.NULL

    def visit(name, info):
        nonlocal total
        if info.type != h5py.h5o.TYPE_DATASET:
            return
        dataset = h5py.h5d.open(h5.id, name)
        space = dataset.get_space()
        kind = space.get_simple_extent_type()
        if kind == null:  # no elements (h5py's shape None)
            return
        count = 1
        if kind == simple:  # else a scalar: one element
            for dim in space.get_simple_extent_dims():
                count *= int(dim)
        total += count * max(dataset.get_type().get_size(), 1)

    h5py.h5o.visit(h5.id, visit, info=True)
    return total


_KERNEL_CLASSES = {"Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose"}


def _config_declared(config) -> tuple[int, int]:
    """(parameter count the layer configs declare, number of layers), without building anything.

    Keras 3 stores each layer's input shape (`build_config`); from it and `units`/`filters`/
    `kernel_size` the kernel sizes follow. Layers of other classes count 0 parameters here: the
    HDF5 dataset shapes cover what they store. An upper bound is not needed, only the bombs."""
    params, layers = 0, 0
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(v for v in node.values() if isinstance(v, (dict, list)))
        cfg = node.get("config")
        if "class_name" not in node or not isinstance(cfg, dict):
            continue
        layers += 1
        cls = str(node["class_name"])
        build = node.get("build_config") or {}
        shape = build.get("input_shape") if isinstance(build, dict) else None
        last = shape[-1] if isinstance(shape, list) and shape and isinstance(shape[-1], int) else 1
        try:
            if cls == "Embedding":
                params += int(cfg.get("input_dim", 0)) * int(cfg.get("output_dim", 0))
            elif cls in _KERNEL_CLASSES or cls.endswith(("LSTM", "GRU", "SimpleRNN")):
                width = int(cfg.get("units") or cfg.get("filters") or 0)
                kernel = cfg.get("kernel_size") or [1]
                area = 1
                for k in kernel if isinstance(kernel, list) else [kernel]:
                    area *= int(k)
                gates = 4 if "LSTM" in cls else (3 if "GRU" in cls else 1)
                params += gates * (area * max(int(last), 1) * width + width)
            elif isinstance(cfg.get("units"), int):
                params += int(cfg["units"]) * max(int(last), 1)
        except (TypeError, ValueError, OverflowError):
            continue
    return params, layers


class _StoredMember(io.RawIOBase):
    """A stored (uncompressed) zip member read in place, by offset, without zipfile's CRC pass: h5py
    reads a few KB of dataset headers, where `ZipFile.open` would re-read and checksum the whole member
    on every backward seek (2 s of a ResNet50 load)."""

    def __init__(self, raw, start: int, size: int):
        self._raw, self._start, self._size, self._pos = raw, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def readinto(self, buffer) -> int:
        want = max(0, min(len(buffer), self._size - self._pos))
        self._raw.seek(self._start + self._pos)
        got = self._raw.readinto(memoryview(buffer)[:want])
        self._pos += got
        return got


@contextlib.contextmanager
def _member_headers(path: Path, item: zipfile.ZipInfo):
    """The member as a seekable file when it is stored uncompressed (Keras stores its weights so),
    else None (its expanded size still counts)."""
    if item.compress_type != zipfile.ZIP_STORED:
        yield None
        return
    with open(path, "rb") as raw:
        raw.seek(item.header_offset)
        header = raw.read(30)  # the local file header: its name and extra lengths give the data offset
        start = (
            item.header_offset + 30 + int.from_bytes(header[26:28], "little") + int.from_bytes(header[28:30], "little")
        )
        yield _StoredMember(raw, start, item.file_size)


def declared_bytes(info: ModelFile) -> tuple[int, int]:
    """(weight bytes, layer count) the file declares: dataset shapes, expanded archive members and
    layer configs, read without building the model."""
    import h5py

    weights = 0
    try:
        if info.format == "keras":
            with zipfile.ZipFile(info.path) as z:
                expanded = sum(item.file_size for item in z.infolist())
                if "model.weights.h5" in z.namelist():
                    with _member_headers(info.path, z.getinfo("model.weights.h5")) as fh:
                        if fh is not None:
                            with h5py.File(fh, "r") as h5:
                                weights = _h5_declared_bytes(h5)
                weights = max(weights, expanded)
        elif info.format == "savedmodel":  # the checkpoint beside the graphs holds the weights
            weights = sum(f.stat().st_size for f in (info.path / "variables").rglob("*") if f.is_file())
        else:
            with h5py.File(info.path, "r") as h5:
                weights = _h5_declared_bytes(h5)
    except Exception:  # noqa: BLE001 - a damaged archive is reported by the loader, with its reason
        pass
    params, layers = _config_declared(info.config)
    return max(weights, params * 4), layers


def check_memory(info: ModelFile, factor: float = 3.0) -> None:
    """Fail early, with one line, when the model cannot fit in memory: judged by what the file
    declares (a 2.5 KB .keras can declare 6 GB of weights), not only by its size on disk."""
    available = available_memory()
    weights, layers = declared_bytes(info)
    many = max(layers - ORDINARY_LAYERS, 0)
    need = max(info.size_bytes, weights) * factor + many * LAYER_OVERHEAD_BYTES
    if need > available:
        declared = f" and declares {weights / 2**20:.0f} MiB of weights" if weights > info.size_bytes else ""
        declared += f" in {layers} layers" if many else ""
        raise ResourceError(
            f"{info.path} is {info.size_bytes / 2**20:.0f} MiB{declared}; pruning needs about "
            f"{need / 2**20:.0f} MiB but only {available / 2**20:.0f} MiB is free"
        )
