"""What a model file is, read from its bytes before Keras sees it.

The format and the Keras flavour come from the content, not the name; a config too large or too
deeply nested to read, and a layer that carries code (Lambda), are refused here, before Keras
deserialises anything.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunecli.errors import ModelLoadError, ResourceError, first_line
from prunecli.io.models.custom import NONE as NO_CUSTOM_OBJECTS
from prunecli.io.models.custom import CustomObjects

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
UNSAFE_CLASSES = ("Lambda",)
GRAPH_MODELS = ("Functional", "Sequential", "Model")  # tf.keras model classes whose config holds the layer graph
SAVED_MODEL = "saved_model.pb"
FORMAT_OF_SUFFIX = {".keras": "keras", ".h5": "h5", ".hdf5": "h5"}  # the names Keras picks its readers by
KERAS_METADATA = "keras_metadata.pb"  # beside saved_model.pb in a folder tf.keras 2.5+ saved: the Keras model
SAVED_MODEL_PARTS = frozenset(  # what a SavedModel folder holds: anything else there is someone's own file
    {SAVED_MODEL, "saved_model.pbtxt", KERAS_METADATA, "fingerprint.pb", "variables", "assets", "assets.extra"}
)
MAX_SAVED_MODEL_BYTES = 512 * 2**20  # traced graphs with the Keras metadata inside (tf.keras 2.0-2.4)


@dataclass(frozen=True)
class ModelFile:
    """What the file on disk is, read before loading."""

    path: Path
    format: str  # "keras" | "h5" | "savedmodel" (a tf.keras SavedModel folder, read through tf_keras)
    flavour: str  # "keras3" | "keras2"
    keras_version: str | None
    size_bytes: int
    config: dict | None
    identity: tuple | None = None  # file_identity() when it was read: an .h5 copied at the end must still be it


def file_identity(path: str | os.PathLike) -> tuple | None:
    """What is at `path` now (device, inode, size, modification time), or None when nothing is: two
    answers differ when the file was replaced or written in between."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


MAX_CONFIG_BYTES = 64 * 2**20  # a model's config.json / model_config; real ones are kilobytes
MAX_CONFIG_DEPTH = 100  # nesting of the config (Keras recurses on it: a deep one is a RecursionError)


def _check_depth(config, path) -> None:
    """Iteratively, so a hostile depth cannot overflow the stack here either."""
    stack = [(config, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise ModelLoadError(f"{path} has a config nested more than {MAX_CONFIG_DEPTH} levels deep")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _keras3_weights(f, path: Path) -> bool:
    """Whether an HDF5 file without a model config is Keras 3's save_weights: its name ends in
    `.weights.h5` (Keras 3 requires it), or it holds the `vars` groups Keras 3 writes per layer, at the
    top (a functional or Sequential model) or one level down (a subclassed model's attributes, such as
    a real edge detector's `block1/vars`, `block1/layers/conv2d/vars`)."""
    import h5py

    if path.name.endswith(".weights.h5") or "vars" in f:
        return True
    return any(isinstance(group, h5py.Group) and "vars" in group for group in f.values())


def _read_h5_meta(path: Path) -> tuple[str | None, dict | None]:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                if "layer_names" in f.attrs or _keras3_weights(f, path):  # save_weights: Keras 2, Keras 3
                    raise ModelLoadError(
                        f"{path} holds weights only (save_weights), not a saved model: build the model in code,"
                        " load these weights, save it with model.save('m.keras') and prune that"
                    )
                raise ModelLoadError(f"{path} is an HDF5 file but not a saved Keras model (no model_config)")
            raw = f.attrs["model_config"]
            version = f.attrs.get("keras_version")
    except ModelLoadError:
        raise
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError on damaged files
        raise ModelLoadError(f"{path} is not a readable HDF5 model ({first_line(exc)})") from exc
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if isinstance(version, bytes):
        version = version.decode("utf-8", "replace")
    if isinstance(raw, str) and len(raw) > MAX_CONFIG_BYTES:
        raise ResourceError(f"{path}: model_config is {len(raw) / 2**20:.0f} MiB (more than prunecli reads)")
    try:
        config = json.loads(raw)
    except RecursionError as exc:
        raise ModelLoadError(f"{path} has a config nested too deeply to read") from exc
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path} has a corrupt model_config ({first_line(exc)})") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} has a corrupt model_config (not an object)")
    _check_depth(config, path)
    return (str(version) if version is not None else None), config


def _read_saved_model_meta(path: Path) -> tuple[str | None, dict | None]:
    """(Keras version, model config) of a tf.keras SavedModel folder, from its root object's Keras
    metadata: in keras_metadata.pb beside the graphs (TensorFlow 2.5+), or inside saved_model.pb's
    object graph (2.0-2.4 wrote it there). It holds the same model_config an `.h5` does, so the same
    checks read it before anything is loaded. A SavedModel with no Keras metadata (tf.saved_model.save,
    an export) is refused in one line."""
    from google.protobuf.message import DecodeError

    meta = path / KERAS_METADATA
    source = meta if meta.is_file() else path / SAVED_MODEL
    limit = MAX_CONFIG_BYTES if source is meta else MAX_SAVED_MODEL_BYTES
    if source.stat().st_size > limit:
        raise ResourceError(f"{source} is {source.stat().st_size / 2**20:.0f} MiB (more than prunecli reads)")
    try:
        raw = _root_keras_metadata(source.read_bytes(), source is meta)
        root = json.loads(raw) if raw else None
    except RecursionError as exc:
        raise ModelLoadError(f"{path} has a config nested too deeply to read") from exc
    except (DecodeError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} has a damaged {source.name} ({first_line(exc)})") from exc
    if root is None:
        raise ModelLoadError(
            f"{path} is a TensorFlow SavedModel without its Keras model (tf.saved_model.save or an export: "
            "graphs only); prunecli reads .keras and .h5 files and tf.keras SavedModel folders"
        )
    config = root.get("model_config") if isinstance(root, dict) else None
    graph = isinstance(config, dict) and config.get("class_name") in GRAPH_MODELS
    if not graph:  # a subclassed model: its config is empty, its layers' calls are only traced graphs
        raise ModelLoadError(
            f"{path} holds a subclassed tf.keras model (no layer graph in its config, only traced calls), which"
            " prunecli cannot read as layers: build it in code, load its weights, save it with model.save('m.keras')"
        )
    _check_depth(config, path)
    version = root.get("keras_version")
    return (str(version) if version is not None else None), config


def _root_keras_metadata(raw: bytes, keras_metadata: bool) -> str | None:
    """The root object's Keras metadata (JSON text) in a keras_metadata.pb's bytes, or in a
    saved_model.pb's object graph (`keras_metadata` False); None when the root is not a Keras object."""
    if keras_metadata:
        from tf_keras.protobuf import saved_metadata_pb2

        found = saved_metadata_pb2.SavedMetadata()
        found.ParseFromString(raw)
        return next((node.metadata for node in found.nodes if node.node_path == "root"), None)
    from tensorflow.core.protobuf import saved_model_pb2

    found = saved_model_pb2.SavedModel()
    found.ParseFromString(raw)
    graphs = [g.object_graph_def for g in found.meta_graphs if g.object_graph_def.nodes]
    root = graphs[0].nodes[0] if graphs else None
    if (
        root is None
        or root.WhichOneof("kind") != "user_object"
        or not root.user_object.identifier.startswith("_tf_keras")
    ):
        return None
    return root.user_object.metadata or None


def _saved_model_inside(folder: Path, depth: int = 2) -> Path | None:
    """The first SavedModel folder within `depth` levels under `folder` (packages ship one a level down)."""
    level = [folder]
    try:
        for _ in range(depth):
            level = sorted(d for parent in level for d in parent.iterdir() if d.is_dir() and not d.is_symlink())[:200]
            found = next((d for d in level if (d / SAVED_MODEL).is_file()), None)
            if found is not None:
                return found
    except OSError:  # an unreadable folder: the plain refusal says enough
        pass
    return None


def _tar_names(path: Path, members: int = 10_000) -> list[str]:
    """The names of the first `members` entries of a tar (.tar.gz, .tar.bz2...); none for any other file."""
    import itertools
    import tarfile

    try:
        with tarfile.open(path) as tar:
            return [member.name for member in itertools.islice(tar, members)]
    except (tarfile.TarError, OSError, EOFError, ValueError):
        return []


def _archived_saved_model(names: list[str]) -> str:
    """The refusal's hint for an archive (zip or tar: how packages ship models) whose entries `names`
    hold a SavedModel folder; empty when they hold none."""
    folder = next((n[: -len(SAVED_MODEL)] for n in names if n.endswith(f"/{SAVED_MODEL}")), None)
    return f"; it holds a SavedModel folder ({folder}): unpack it and give that folder" if folder else ""


def _read_keras_meta(path: Path) -> tuple[str | None, dict | None]:
    try:
        with zipfile.ZipFile(path) as z:
            names = set(z.namelist())
            if "config.json" not in names:
                inside = _archived_saved_model(sorted(names))
                raise ModelLoadError(f"{path} is a zip file but not a .keras model (no config.json){inside}")
            for member in ("config.json", "metadata.json"):
                if member in names and z.getinfo(member).file_size > MAX_CONFIG_BYTES:
                    raise ResourceError(
                        f"{path}: {member} expands to {z.getinfo(member).file_size / 2**20:.0f} MiB "
                        f"(more than the {MAX_CONFIG_BYTES / 2**20:.0f} MiB prunecli reads)"
                    )
            config = json.loads(z.read("config.json"))
            meta = json.loads(z.read("metadata.json")) if "metadata.json" in names else {}
    except (ModelLoadError, ResourceError):
        raise
    except RecursionError as exc:
        raise ModelLoadError(f"{path} has a config nested too deeply to read") from exc
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise ModelLoadError(f"{path} is a damaged .keras file ({first_line(exc)})") from exc
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path} has a corrupt config.json")
    _check_depth(config, path)
    if not isinstance(meta, dict) or not isinstance(meta.get("keras_version", ""), str):
        raise ModelLoadError(f"{path} has a corrupt metadata.json (expected an object with a string keras_version)")
    return meta.get("keras_version"), config


def inspect_file(path: str | os.PathLike) -> ModelFile:
    """Identify a model file by its content; every problem is a one-line ModelLoadError."""
    p = Path(path)
    if not p.exists():
        if p.is_symlink():
            raise ModelLoadError(f"{p} is a symbolic link that points nowhere (or loops)")
        raise ModelLoadError(f"model file not found: {p}")
    if p.is_dir():
        if (p / SAVED_MODEL).is_file():
            version, config = _read_saved_model_meta(p)
            size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            return ModelFile(p, "savedmodel", "keras2", version, size, config)
        inside = _saved_model_inside(p)
        where = f"; {inside} in it is a SavedModel folder" if inside else ""
        raise ModelLoadError(f"{p} is a directory, not a model file{where}")
    if not p.is_file():  # a FIFO or device would block or stream forever
        raise ModelLoadError(f"{p} is not a regular file")
    identity = file_identity(p)  # before the first byte is read
    size = p.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{p} is empty")
    try:
        with open(p, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ModelLoadError(f"cannot read {p} ({first_line(exc)})") from exc
    if head.startswith(HDF5_MAGIC):
        version, config = _read_h5_meta(p)
        fmt = "h5"
    elif head.startswith(ZIP_MAGIC):
        version, config = _read_keras_meta(p)
        fmt = "keras"
    else:
        inside = _archived_saved_model(_tar_names(p))
        raise ModelLoadError(f"{p} is not a Keras model (expected a .keras zip or an HDF5 .h5 file){inside}")
    named = FORMAT_OF_SUFFIX.get(p.suffix.lower())
    if named is not None and named != fmt:  # Keras picks its reader by the name, and then finds no file
        want = ".h5" if fmt == "h5" else ".keras"
        raise ModelLoadError(
            f"{p} is {'an HDF5' if fmt == 'h5' else 'a .keras (zip)'} model under a {p.suffix} name: rename it to {p.stem}{want}"
        )
    flavour = "keras2" if version and version.split(".")[0] == "2" else "keras3"
    return ModelFile(p, fmt, flavour, version, size, config, identity)


def config_nodes(node: Any):
    """Every dict in a config tree, depth first (a layer, its wrapped layer, a nested model's layers):
    the one walk the readers that check or patch a stored config share (its depth was checked on read)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from config_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from config_nodes(value)


def is_tensor_reference(value) -> bool:
    """A Keras-2 config's reference to a tensor: [layer name, node index, tensor index(, call kwargs)]."""
    return (
        isinstance(value, list)
        and len(value) in (3, 4)
        and isinstance(value[0], str)
        and all(isinstance(v, int) for v in value[1:3])
    )


def code_layers(config):
    """(class name, layer name) of every layer in a config that carries code (UNSAFE_CLASSES)."""
    for node in config_nodes(config):
        if node.get("class_name") in UNSAFE_CLASSES:
            inner = node.get("config")
            yield str(node["class_name"]), str(inner.get("name", "")) if isinstance(inner, dict) else ""


def check_safe(info: ModelFile, custom: CustomObjects = NO_CUSTOM_OBJECTS) -> None:
    """Refuse layers that carry code (Lambda) before deserialisation can run any of it; a Lambda whose
    function the user's --custom-objects gives (LAMBDA_LAYERS) runs that function instead, so it is
    not refused (where its config cannot be patched, Keras' own safe mode still refuses its code)."""
    found = sorted({c for c, name in code_layers(info.config) if custom.lambda_function(name) is None})
    if found:
        raise ModelLoadError(
            f"{info.path} contains a {found[0]} layer (serialised Python code); "
            "prune, plan and sweep take --unsafe: pass it only if you trust this file "
            "(or give its function in --custom-objects' LAMBDA_LAYERS)"
        )
