"""The plan file (`prune --save-plan PLAN`): what one run decided, as a small portable file.

Format (version 1), documented in the README ("Plans: prune once, apply to every checkpoint"): a zip
archive, no pickle anywhere, written deterministically (entries in a fixed order, every timestamp
1980-01-01 00:00:00, fixed permissions, JSON with sorted keys), so the same run gives the same bytes.

    plan.json          the manifest (UTF-8 JSON)
    masks/0000.bits    target 0's keep mask: numpy.packbits of the mask flattened in C order
    masks/0001.bits    (1 = kept, most significant bit first, the last byte zero-padded)
    ...

The manifest holds `format` ("prunecli-plan"), `version` (1), `prunecli_version`, `settings` (the
run's options, as in the report), `granularity`, `architecture` ({"layers": [[name, class]...],
"weights": [[name, shape, dtype]...], "sha256": of those two, "settings": [[layer name, {config key:
canonical JSON}]...], what each layer computes with besides its weights: activation, strides...; absent
from plans written before it, which are then matched on the rest}), `weights_sha256` (of the weights
the masks were computed from: each weight's name, dtype, shape and bytes in model order), `targets`
(one per pruned tensor: name, layer, class, shape, unit_axis, size, kept, requested_sparsity, mask
entry and, for neuron pruning, `removed_units`), and `structure` (what a structural run removed:
kept features, removed layers, heads), present when the run removed structure, and `content_sha256` (the
seal: a sha256 of everything else in the manifest and of every mask, `content_sha256()`). A weight's name is
its layer's place in the layer tree and its path inside that layer (`weight_names`): the same whether
the model was loaded from .keras or .h5. What is read back is checked for the types prunecli writes
(`manifest_problem`), and the seal is recomputed (`_check_seal`): an edited plan is an InputError
naming the entry, or the seal when every entry still has its type (a target or a setting deleted by hand).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from prunecli.errors import ConfigError, DataError, InputError, OutputError, first_line
from prunecli.messages import shown

FORMAT = "prunecli-plan"
VERSION = 1
MANIFEST = "plan.json"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry: no clock in the bytes
MAX_MANIFEST_BYTES = 256 << 20  # a manifest larger than this is not one prunecli wrote
SEAL = "content_sha256"  # the manifest's entry that seals the rest of the plan (content_sha256)
STRUCTURE_SECTIONS = (
    "kept_features",
    "kept_feature_names",
    "removed_layers",
    "heads",
    "layer_candidates",
    "ffn",
    "hidden",
    "opened",
)


@dataclass(frozen=True)
class Plan:
    """A plan file read back: its manifest and its packed masks ({target name: bytes}); `shrunk`: the masks
    of the targets --shrink made smaller, in their shrunk shapes ({target name: bytes}; `shrunk_mask`)."""

    path: Path
    manifest: dict
    packed: dict
    sha256: str
    shrunk: dict = field(default_factory=dict)

    @property
    def granularity(self) -> str:
        return str(self.manifest.get("granularity", "element"))

    @property
    def targets(self) -> list[dict]:
        return list(self.manifest.get("targets", []))

    def mask(self, name: str):
        """Target `name`'s boolean keep mask, in its shape."""
        import numpy as np

        entry = next(t for t in self.targets if t["name"] == name)
        size = int(entry["size"])
        bits = np.unpackbits(np.frombuffer(self.packed[name], dtype=np.uint8), count=size)
        return bits.astype(bool).reshape(tuple(entry["shape"]))

    def shrunk_mask(self, name: str):
        """Target `name`'s keep mask as --shrink cut it (the kept units and input rows of its kernel), in the
        shrunk shape; None where the plan's run did not shrink it (or was written before plans kept these)."""
        import numpy as np

        entry = next(t for t in self.targets if t["name"] == name).get("shrunk")
        if entry is None or name not in self.shrunk:
            return None
        size = math.prod(int(d) for d in entry["shape"])
        bits = np.unpackbits(np.frombuffer(self.shrunk[name], dtype=np.uint8), count=size)
        return bits.astype(bool).reshape(tuple(entry["shape"]))


# ---------------------------------------------------------------------------------------------
# fingerprints


def architecture(model) -> dict:
    """Layer names and classes (Keras' own order, nested models included) and every weight's name
    (`weight_names`), shape and dtype, with a sha256 of both: what two checkpoints of one architecture share."""
    from prunecli.structure import keras_graph

    layers = [[str(layer.name), type(layer).__name__] for layer in keras_graph.all_layers(model) if layer is not model]
    names = weight_names(model)
    weights = [[_path(v, names, model), [int(d) for d in v.shape], _dtype(v)] for v in model.weights]
    body = {"layers": layers, "weights": weights}
    return {**body, "sha256": hashlib.sha256(_canonical(body)).hexdigest(), "settings": layer_settings(model)}


# keys of a layer's config that do not change what it computes from given weights: its names, dtype, how
# new weights would be drawn or penalised, whether it trains
# (a Lambda's `code`, its function marshalled, differs between Python versions for the same function)
_NOT_COMPUTATION = ("name", "dtype", "trainable", "seed", "build_config", "compile_config", "code")
_NOT_COMPUTATION_SUFFIXES = ("_initializer", "_regularizer", "_constraint")
_SHORT_SETTING = 120  # characters of canonical JSON kept as they are; a longer value is kept as its sha256


def layer_settings(model) -> list:
    """[[layer name, {config key: value}]...] for every layer that is not a model or an InputLayer: what
    the names, classes and weight shapes leave out (activation, strides, padding, a wrapped layer's own
    settings...). A plan made on a ReLU net applied and verified on the same net with tanh, its
    fingerprint naming the same layers and shapes. Values are canonical JSON (a long one as its sha256), so
    a mismatch can name the key and both values."""
    from prunecli.structure import keras_graph

    settings = []
    for layer in keras_graph.all_layers(model):
        if layer is model or keras_graph.is_model(layer) or type(layer).__name__ == "InputLayer":
            continue
        try:
            config = layer.get_config()
        except Exception:  # noqa: BLE001  # a layer whose config cannot be read (a custom one, KerasHub's decoder
            continue  # blocks built from a preset's arguments): nothing to compare, as in a plan without settings
        kept = {}
        for key, value in sorted(_computation(config).items()):
            text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
            kept[key] = text if len(text) <= _SHORT_SETTING else "sha256:" + hashlib.sha256(text.encode()).hexdigest()
        settings.append([str(layer.name), kept])
    return settings


def _computation(value):
    """A config (or part of one) without the keys in `_NOT_COMPUTATION`, at every depth (a wrapped layer's
    config holds its own names and initializers)."""
    if isinstance(value, dict):
        return {
            k: _computation(v)
            for k, v in value.items()
            if k not in _NOT_COMPUTATION and not str(k).endswith(_NOT_COMPUTATION_SUFFIXES)
        }
    if isinstance(value, list | tuple):
        return [_computation(v) for v in value]
    return value


def weights_sha256(model) -> str:
    """A hash of the model's weight values (name, dtype, shape and bytes of each, in model order)."""
    import numpy as np

    names = weight_names(model)
    h = hashlib.sha256()
    for v in model.weights:
        value = np.ascontiguousarray(np.asarray(v))
        h.update(f"{_path(v, names, model)}\0{value.dtype.str}\0{value.shape}\0".encode())
        h.update(value.tobytes())
    return h.hexdigest()


def fingerprint(model) -> dict:
    """Both fingerprints of a model as loaded: take it before anything changes the weights."""
    return {"architecture": architecture(model), "weights_sha256": weights_sha256(model)}


def weight_names(model) -> dict[int, str]:
    """{id(variable): name} for the model's weights: the place of the layer holding it in the layer tree
    (nested models' and layers' names, as structure.targets names them: "inner/i1") and its path inside
    that layer ("kernel", "query/kernel"). Keras' `variable.path` is not that: a model loaded from .h5
    builds its layers inside its models' name scopes, so one weight is "sequential/d1/kernel" there and
    "d1/kernel" from .keras, and a nested model's weights carry its name from .h5 only."""
    from prunecli.structure import keras_graph

    names: dict[int, str] = {}

    def visit(layer, prefix: str) -> None:
        place = f"{prefix}/{layer.name}" if prefix else str(layer.name)
        if keras_graph.is_model(layer):
            for child in keras_graph.children(layer):
                visit(child, place)
            return
        scope = str(getattr(layer, "path", None) or layer.name)
        for v in layer.weights:
            names.setdefault(id(v), f"{place}/{stable_path(_inside(v, scope, str(layer.name)))}")

    for child in keras_graph.children(model):
        visit(child, "")
    return names


def _inside(variable, scope: str, layer_name: str) -> str:
    """The variable's path inside the layer whose name scope is `scope` (its `path`); a variable created
    outside that scope: the part after the layer's name, or its whole path."""
    path = str(getattr(variable, "path", None) or getattr(variable, "name", ""))
    if path.startswith(scope + "/"):
        return path[len(scope) + 1 :]
    parts = path.split("/")
    last = max((i for i, part in enumerate(parts[:-1]) if part == layer_name), default=None)
    return path if last is None else "/".join(parts[last + 1 :])


def _same_weight(planned, found) -> bool:
    """One weight entry ([name, shape, dtype]) of the plan and of the model. A plan written before weights
    were named by `weight_names` holds Keras' paths: with the model's name in front (a .h5 load), or
    without a nested model's (a .keras load); either is the same weight when the rest of its name, its
    shape and its dtype agree (the layers, compared first, must match exactly)."""
    if list(planned[1:]) != list(found[1:]):
        return False
    a, b = str(planned[0]), str(found[0])
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def first_mismatch(expected: dict, model, names_only: bool = False) -> str | None:
    """The first difference between a plan's architecture and the model's, in words, or None;
    `names_only`: compare the layers' names alone (a quantized model's classes and weights differ)."""
    found = architecture(model)
    if found["sha256"] == expected.get("sha256"):
        return None if names_only else _settings_mismatch(expected.get("settings"), found["settings"])
    if names_only:
        a, b = [entry[0] for entry in expected.get("layers", [])], [entry[0] for entry in found["layers"]]
        kinds = [entry[1] for entry in found["layers"]]
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            if x != y and kinds[i] != "InputLayer":
                return f"layer {i}: the plan has {shown(x)!r}, the model {shown(y)!r}"
        return None if len(a) == len(b) else f"the plan has {len(a)} layers, the model {len(b)}"
    for kind in ("layers", "weights"):
        a, b = expected.get(kind, []), found[kind]
        if kind == "weights":  # a plan written before the counts were dropped
            a = [[stable_path(str(entry[0])), *entry[1:]] for entry in a]
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            same = _both_inputs(x, y) if kind == "layers" else _same_weight(x, y)
            if list(x) != list(y) and not same:
                return f"{kind[:-1]} {i}: the plan has {_describe(kind, x)}, the model {_describe(kind, y)}"
        if len(a) != len(b):
            extra = _describe(kind, (b if len(b) > len(a) else a)[min(len(a), len(b))])
            return f"the plan has {len(a)} {kind}, the model {len(b)} (first unmatched: {extra})"
    # every entry equal: the hashes differed only by weights' auto-name counts or old names
    return _settings_mismatch(expected.get("settings"), found["settings"])


def _settings_mismatch(planned, found: list) -> str | None:
    """The first layer setting (`layer_settings`) the plan and the model disagree on, in words; None when
    they agree or the plan records none (written before settings were recorded). Only keys both record
    are compared: Keras adds config keys between versions. Layers are paired in
    order, as their names and classes were compared first (a name may repeat in nested models)."""
    if planned is None:
        return None
    for (name, values), (found_name, there) in zip(planned, found, strict=False):
        if name != found_name:  # the layer lists matched, so only a layer without a config shifts these
            return None
        for key in sorted(set(values) & set(there)):  # a key one side lacks is another Keras version's
            if values[key] != there[key]:
                return f"layer {shown(name)!r}: the plan has {key}={shown(values[key])}, the model {key}={shown(there[key])}"
    return None


def without_layers(expected: dict, removed, present) -> dict:
    """The architecture of a `-g layer` run's output, from its plan's (the input's) `expected`: without the
    `removed` layers, what they held (the layers listed right after a removed one that the output lacks,
    `present` being its layer names, and that own no weight of the plan: a removed nested model's layers
    and input), and their weights. The layers that stay keep their names, order and weights."""
    layers = [list(entry) for entry in expected.get("layers", [])]
    weights = [list(entry) for entry in expected.get("weights", [])]
    names = {str(entry[0]) for entry in layers}
    owners = {_owner(str(entry[0]), names) for entry in weights}
    gone, inside = set(map(str, removed)), False
    for name, kind in layers:
        if name in gone:
            inside = True
        elif inside and (name not in present or kind == "InputLayer") and name not in owners:
            gone.add(name)
        else:
            inside = False
    return {
        "layers": [entry for entry in layers if entry[0] not in gone],
        "weights": [entry for entry in weights if _owner(str(entry[0]), names) not in gone],
        **(
            {"settings": [entry for entry in expected["settings"] if entry[0] not in gone]}
            if "settings" in expected
            else {}
        ),
    }


def _owner(weight: str, layer_names: set) -> str:
    """The top-level layer a weight name starts with (a plan from before `weight_names`, of a .h5 load,
    starts with the model's name: skipped)."""
    parts = weight.split("/")
    if len(parts) > 2 and parts[0] not in layer_names:
        parts = parts[1:]
    return parts[0]


def _is_settings_entry(entry) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 2
        and is_text(entry[0])
        and is_object(entry[1])
        and all(is_text(value) for value in entry[1].values())
    )


def _both_inputs(planned, found) -> bool:
    """Two InputLayer entries: equal whatever their names. An InputLayer holds no weights and Keras
    names it per process (`input_layer`, `input_layer_1` once another model was built first), so a
    retraining script's checkpoint of the same architecture was refused over that name."""
    return planned[1] == found[1] == "InputLayer"


def _describe(kind: str, entry) -> str:
    if kind == "layers":
        return f"{shown(entry[0])!r} ({entry[1]})"
    return f"{shown(entry[0])!r} {tuple(entry[1])} {entry[2]}"


def _path(v, names: dict, model) -> str:
    """The weight's name (`weight_names`); a weight no layer holds (a model's own): its path without the
    model's name."""
    if id(v) in names:
        return names[id(v)]
    path = stable_path(str(getattr(v, "path", None) or getattr(v, "name", "")))
    return path.removeprefix(f"{model.name}/")


_AUTO_NAME = re.compile(r"(^|/)variable_\d+$")


def stable_path(path: str) -> str:
    """A weight's path as every load of the model gives it: a weight created without a name (a
    custom layer's `add_weight(shape=...)`) is "variable_N", N counted over the whole process, so
    the second load of one file in one Python session names it differently; the count is dropped
    (weights are compared in model order, so the position still tells them apart)."""
    return _AUTO_NAME.sub(r"\1variable", path)


def _dtype(v) -> str:
    dtype = getattr(v, "dtype", "")
    return str(getattr(dtype, "name", dtype))


def content_sha256(manifest: dict, masks) -> str:
    """The plan's seal: a sha256 of its manifest without the seal (canonical JSON: sorted keys, no spaces)
    and of each mask's bytes (length first) in the targets' order. `build` stores it and `read`
    recomputes it, so a plan edited by hand is refused even where every entry still has its type: a
    target deleted (fewer masks applied, a parameter budget missed), a setting or a removed unit changed."""
    h = hashlib.sha256(_canonical({k: v for k, v in manifest.items() if k != SEAL}))
    for blob in masks:
        h.update(len(blob).to_bytes(8, "big"))
        h.update(blob)
    return h.hexdigest()


def loads_unique(text: str):
    """JSON text whose objects name each key once: a file prunecli wrote never repeats one, and a
    repeated key means an edit that JSON readers resolve differently (Python keeps the last value,
    others the first): refused (ValueError) rather than read as one of the two."""

    def unique(pairs):
        keys = [k for k, _ in pairs]
        twice = next((k for k in keys if keys.count(k) > 1), None)
        if twice is not None:
            raise ValueError(f"key {twice!r} appears more than once in one object")
        return dict(pairs)

    return json.loads(text, object_pairs_hook=unique)


def _canonical(value) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


# ---------------------------------------------------------------------------------------------
# writing


def build(
    targets, masks, settings: dict, source_print: dict, *, version: str = "", sections=None, shrunk=None
) -> bytes:
    """The plan file's bytes: `targets` (structure.targets.Target) and `masks` (a MaskSet or None) of
    the run, its `settings` (the report's), the input's `fingerprint`, and the structural report
    `sections` the run produced; `shrunk`: {target name: keep mask} of the targets --shrink cut down, in
    their new shapes, so that `verify --plan` can check the shrunk kernels (an element plan names no unit
    it removed, and --shrink also drops filters nothing reads). Deterministic: the same inputs give the
    same bytes."""
    import numpy as np

    entries = []
    blobs = []
    masked = [t for t in targets if masks is not None and masks.masks.get(t.name) is not None]
    for i, t in enumerate(masked):  # a structural run (-g input/layer/head) has no masks: `structure` says it
        keep = np.asarray(masks.masks[t.name]).astype(bool).reshape(t.shape)
        entry = {
            "name": t.name,
            "layer": t.layer_name,
            "class": t.layer_class,
            "shape": list(t.shape),
            "unit_axis": int(t.unit_axis),
            "size": int(t.size),
            "kept": int(keep.sum()),
            "requested_sparsity": None if masks is None else _plain(masks.requested.get(t.name)),
            "mask": f"masks/{i:04d}.bits",
        }
        if settings.get("granularity") == "neuron" and keep.ndim:
            alive = np.moveaxis(keep, t.unit_axis, -1).reshape(-1, t.units).any(axis=0)
            entry["removed_units"] = [int(u) for u in np.flatnonzero(~alive)]
        entries.append(entry)
        blobs.append((entry["mask"], np.packbits(keep.reshape(-1)).tobytes()))
    for i, entry in enumerate(entries):  # after every target's own mask: a plan without them seals as before
        cut = (shrunk or {}).get(entry["name"])
        if cut is not None:
            cut = np.asarray(cut).astype(bool)
            entry["shrunk"] = {"shape": list(cut.shape), "kept": int(cut.sum()), "mask": f"masks/{i:04d}.shrunk.bits"}
            blobs.append((entry["shrunk"]["mask"], np.packbits(cut.reshape(-1)).tobytes()))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "prunecli_version": version,
        "settings": _plain(settings),
        "granularity": str(settings.get("granularity", "element")),
        "architecture": source_print["architecture"],
        "weights_sha256": source_print["weights_sha256"],
        "targets": entries,
    }
    structure = {k: _plain(v) for k, v in (sections or {}).items() if k in STRUCTURE_SECTIONS}
    if structure:
        manifest["structure"] = structure
    manifest[SEAL] = content_sha256(manifest, [blob for _name, blob in blobs])
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        text = json.dumps(manifest, sort_keys=True, indent=1, ensure_ascii=True, allow_nan=False) + "\n"
        z.writestr(_zip_info(MANIFEST), text.encode("ascii"), compresslevel=9)
        for name, blob in blobs:
            z.writestr(_zip_info(name), blob, compresslevel=9)
    return out.getvalue()


def _plain(value):
    """JSON-ready: tuples as lists, NumPy scalars as numbers, non-finite floats as None, else str()."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    return str(value)


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    info.create_system = 3  # Unix, whatever system writes it
    return info


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, read 1 MiB at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files_sha256(named: list[tuple[str, Path]]) -> str:
    """One sha256 over files, in the order given: for each, its name (its path inside the folder, or "")
    and the sha256 of its content, as `name\\0hexdigest\\n` lines. What the report's data digest
    (data_digest) and a SavedModel export's (path_sha256) are; an unreadable file is its OSError."""
    from prunecli.io.models.sizes import named_sha256

    return named_sha256([(name, file_sha256(f)) for name, f in named])


def path_sha256(path: str | os.PathLike) -> str:
    """A file's sha256, or a folder's (a SavedModel export): files_sha256 over every file in it, sorted by
    its path inside the folder (POSIX separators), so that a copy elsewhere or under another name, or
    with other time stamps, is the same folder, and a file added, removed, renamed or changed is not."""
    p = Path(path)
    if not p.is_dir():
        return file_sha256(p)
    return files_sha256(sorted((f.relative_to(p).as_posix(), f) for f in p.rglob("*") if f.is_file()))


@contextlib.contextmanager
def committed_with(path: str | os.PathLike | None, data: bytes | None):
    """Write the plan to a temporary file now and rename it onto `path` only when the block (the
    model's save) succeeds: a failed save leaves the old plan file, or none, never a new plan beside
    an old model. Nothing happens when `path` or `data` is None."""
    if not path or data is None:
        yield
        return
    from prunecli.io.models import atomic_path

    with atomic_path(Path(path)) as tmp:
        try:
            tmp.write_bytes(data)
        except OSError as exc:
            from prunecli.errors import write_error

            raise write_error(path, exc) from exc
        yield


# ---------------------------------------------------------------------------------------------
# reading


def read(path: str | os.PathLike) -> Plan:
    """A plan file, checked: a zip with a version-1 manifest and one mask of the right length per
    target. Anything else is an InputError (exit 3) that says what is wrong."""
    if not isinstance(path, (str, os.PathLike)):  # the Python API's apply_plan(None, ...): a TypeError before
        raise InputError(f"a plan file path is needed, got {type(path).__name__}")
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read plan {shown(p)}: {exc.strerror or first_line(exc)}") from exc
    digest = hashlib.sha256(raw).hexdigest()
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            info = z.getinfo(MANIFEST)
            if info.file_size > MAX_MANIFEST_BYTES:
                raise InputError(f"plan {shown(p)}: its manifest declares {info.file_size} bytes")
            manifest = loads_unique(z.read(MANIFEST).decode("utf-8"))
            _check_manifest(p, manifest)
            packed, shrunk = {}, {}
            for t in manifest["targets"]:
                packed[t["name"]] = _blob(z, p, t["name"], t["mask"], int(t["size"]))
                if "shrunk" in t:
                    cut = t["shrunk"]
                    size = math.prod(int(d) for d in cut["shape"])
                    shrunk[t["name"]] = _blob(z, p, t["name"], cut["mask"], size, "shrunk mask")
    except InputError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise InputError(f"{shown(p)} is not a prunecli plan file ({first_line(exc)})") from exc
    plan = Plan(path=p, manifest=manifest, packed=packed, sha256=digest, shrunk=shrunk)
    _check_kept(plan)
    _check_seal(plan)
    return plan


def _blob(z, p: Path, name: str, member: str, size: int, what: str = "mask") -> bytes:
    """A packed mask of `size` bits from the plan's zip, refused when its length is not that."""
    want = math.ceil(size / 8)
    info = z.getinfo(member)
    if info.file_size != want:
        raise InputError(f"plan {shown(p)}: {what} of {shown(name)} holds {info.file_size} bytes, not {want}")
    return z.read(member)


def _check_seal(plan: Plan) -> None:
    """The manifest and masks are those prunecli wrote (`content_sha256`); checked after the entries'
    own checks, so that an entry of the wrong type is still named. A plan without a seal was written by
    a prunecli from before plans were sealed: its entries' checks are all there is to check."""
    said = plan.manifest.get(SEAL)
    if said is None:
        return
    try:
        blobs = [plan.packed[t["name"]] for t in plan.targets]
        found = content_sha256(plan.manifest, blobs + [plan.shrunk[t["name"]] for t in plan.targets if "shrunk" in t])
    except ValueError as exc:  # NaN or Infinity in the manifest: never in a plan prunecli wrote
        raise InputError(f"{shown(plan.path)} is not a prunecli plan file ({first_line(exc)})") from exc
    if found != said:
        raise InputError(
            f"plan {shown(plan.path)} was edited after prunecli wrote it (its {SEAL} no longer matches its"
            " manifest and masks): save the plan again with `prunecli prune --save-plan`"
        )


def _check_manifest(p: Path, manifest) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{shown(p)} is not a prunecli plan file (no '{FORMAT}' manifest)")
    if manifest.get("version") != VERSION:
        raise InputError(f"plan {shown(p)} has version {manifest.get('version')!r}; this prunecli reads {VERSION}")
    problem = manifest_problem(manifest)
    if problem:
        raise InputError(f"{shown(p)} is not a prunecli plan file ({problem})")
    said = manifest.get("settings", {}).get("granularity")
    if said is not None and str(said) != str(manifest.get("granularity", "element")):  # one of the two edited
        raise InputError(
            f"plan {shown(p)}: its granularity {manifest.get('granularity')!r} is not its run's ({said!r})"
        )
    names = [t.get("name") for t in manifest.get("targets", [])]
    twice = next((n for n in names if names.count(n) > 1), None)
    if twice is not None:  # a hand-edited plan: the report would count the tensor twice, another not at all
        raise InputError(f"plan {shown(p)}: target {shown(twice)} is listed more than once")
    for t in manifest.get("targets", []):
        shape = [int(d) for d in t["shape"]]
        if math.prod(shape) != int(t["size"]) or not isinstance(t["mask"], str):
            raise InputError(f"plan {shown(p)}: target {shown(t.get('name'))} has an inconsistent shape or mask")
        if "unit_axis" in t and not -len(shape) <= int(t["unit_axis"]) < len(shape):
            raise InputError(f"plan {shown(p)}: target {shown(t.get('name'))} has unit axis {t['unit_axis']}")
        requested = t.get("requested_sparsity")
        if requested is not None and not 0.0 <= requested <= 1.0:  # the report would print "target 150%"
            raise InputError(
                f"plan {shown(p)}: target {shown(t.get('name'))} has requested sparsity {requested}, not in [0, 1]"
            )


# What a file prunecli wrote holds, checked where it is read (an edited plan or report is an InputError
# that names the entry, not a TypeError deep in a check): (where, value, predicate, what it should be).


def is_int(value) -> bool:
    """A JSON integer (not a bool, which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
    """A finite JSON number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_ints(value) -> bool:
    return isinstance(value, list) and all(is_int(v) for v in value)


def is_texts(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def is_object(value) -> bool:
    return isinstance(value, dict)


def is_text(value) -> bool:
    return isinstance(value, str)


def optional(predicate):
    """The predicate, or null."""
    return lambda value: value is None or predicate(value)


def first_problem(fields) -> str | None:
    """ "<where> is <value>, not <what>" for the first (where, value, predicate, what) whose value fails its
    predicate, or None."""
    for where, value, predicate, what in fields:
        if not predicate(value):
            return f"{where} is {_short(value)}, not {what}"
    return None


def _short(value) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def _listed(values: list) -> str:
    text = json.dumps(values)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_layer_entry(entry) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and is_texts(entry)


def _is_weight_entry(entry) -> bool:
    return isinstance(entry, list) and len(entry) == 3 and is_text(entry[0]) and is_ints(entry[1]) and is_text(entry[2])


def is_bool(value) -> bool:
    return isinstance(value, bool)


# the run's options that `apply` and `verify` read back from a plan's or report's `settings`
SETTINGS_READ = {
    "granularity": (is_text, "text"),
    "seed": (is_int, "an integer"),
    "batch_size": (is_int, "an integer"),
    "val_split": (is_number, "a number"),
    "min_keep": (is_number, "a number"),
    "allow_empty": (is_bool, "true or false"),
    "shrink": (is_bool, "true or false"),
    "quantize": (is_text, "text"),
}


def settings_problem(settings: dict) -> str | None:
    """The first of the options read back (SETTINGS_READ) that is neither null nor of its type, or a
    granularity prunecli does not write; None when all are."""
    from prunecli.config.fields import Granularity

    fields = [(f"settings.{k}", settings.get(k), optional(p), what) for k, (p, what) in SETTINGS_READ.items()]
    problem = first_problem(fields)
    if problem is None and settings.get("granularity") is not None:
        try:
            Granularity.parse(settings["granularity"])
        except ConfigError:
            return f"settings.granularity {_short(settings['granularity'])} is not one prunecli writes"
    return problem


def manifest_problem(manifest: dict) -> str | None:
    """The first entry of a plan's manifest that is not of the type prunecli writes (an edited plan), or
    None: checked when the plan is read, so nothing later meets a string where it counts on a list."""
    from prunecli.config.fields import Granularity

    m = manifest
    problem = first_problem(
        [
            ("settings", m.get("settings", {}), is_object, "an object"),
            ("granularity", m.get("granularity", "element"), is_text, "text"),
            ("architecture", m.get("architecture"), is_object, "an object"),
            ("weights_sha256", m.get("weights_sha256", ""), is_text, "text"),
            (
                "targets",
                m.get("targets"),
                lambda v: isinstance(v, list) and all(map(is_object, v)),
                "a list of objects",
            ),
            ("structure", m.get("structure", {}), is_object, "an object"),
            (SEAL, m.get(SEAL, ""), is_text, "text"),
        ]
    )
    problem = problem or settings_problem(m.get("settings", {}))
    if problem:
        return problem
    try:
        Granularity.parse(m.get("granularity", "element"))
    except ConfigError:
        return f"granularity {_short(m.get('granularity'))} is not one prunecli writes"
    arch, structure = m["architecture"], m.get("structure", {})
    fields = [
        (
            "architecture.layers",
            arch.get("layers"),
            lambda v: isinstance(v, list) and all(map(_is_layer_entry, v)),
            "a list of [name, class]",
        ),
        (
            "architecture.weights",
            arch.get("weights"),
            lambda v: isinstance(v, list) and all(map(_is_weight_entry, v)),
            "a list of [name, shape, dtype]",
        ),
        ("architecture.sha256", arch.get("sha256", ""), is_text, "text"),
        (
            "architecture.settings",
            arch.get("settings", []),
            lambda v: isinstance(v, list) and all(map(_is_settings_entry, v)),
            "a list of [layer name, {key: text}]",
        ),
        ("structure.removed_layers", structure.get("removed_layers", []), is_texts, "a list of layer names"),
        ("structure.opened", structure.get("opened", []), is_texts, "a list of layer names"),
    ]
    for i, t in enumerate(m["targets"]):
        fields += [
            (f"target {i} name", t.get("name"), is_text, "text"),
            (f"target {i} shape", t.get("shape"), lambda v: is_ints(v) and min(v, default=0) >= 0, "a list of sizes"),
            (f"target {i} size", t.get("size"), is_int, "an integer"),
            (f"target {i} mask", t.get("mask"), is_text, "text"),
            (f"target {i} kept", t.get("kept", 0), is_int, "an integer"),
            (f"target {i} unit_axis", t.get("unit_axis", 0), is_int, "an integer"),
            (f"target {i} requested_sparsity", t.get("requested_sparsity"), optional(is_number), "a number"),
            (f"target {i} removed_units", t.get("removed_units", []), is_ints, "a list of integers"),
            (f"target {i} shrunk", t.get("shrunk", {}), is_object, "an object"),
        ]
        if is_object(t.get("shrunk")):
            cut = t["shrunk"]
            fields += [
                (
                    f"target {i} shrunk.shape",
                    cut.get("shape"),
                    lambda v: is_ints(v) and min(v, default=0) >= 0,
                    "a list of sizes",
                ),
                (f"target {i} shrunk.kept", cut.get("kept"), is_int, "an integer"),
                (f"target {i} shrunk.mask", cut.get("mask"), is_text, "text"),
            ]
    return first_problem(fields)


def _check_kept(plan: Plan) -> None:
    """Each target's `kept` is the count of its mask's kept weights, and a neuron plan's
    `removed_units` the units its mask empties: a plan edited by hand (a count changed, a mask
    swapped, a unit 99 of 8 or -1 listed) is refused rather than applied and reported with figures it
    does not hold (`verify --plan` counts a shrunk layer's units from `removed_units`)."""
    import numpy as np

    for t in plan.targets:
        mask = plan.mask(t["name"])
        kept = int(mask.sum())
        if "kept" in t and kept != int(t["kept"]):
            raise InputError(
                f"plan {shown(plan.path)}: target {shown(t['name'])} says {t['kept']} weights kept, its mask keeps {kept}"
            )
        cut = plan.shrunk_mask(t["name"])
        if cut is not None and int(cut.sum()) != int(t["shrunk"]["kept"]):
            raise InputError(
                f"plan {shown(plan.path)}: target {shown(t['name'])} says {t['shrunk']['kept']} weights kept after"
                f" --shrink, its shrunk mask keeps {int(cut.sum())}"
            )
        if "removed_units" in t and mask.ndim:
            axis = int(t.get("unit_axis", 0))
            alive = np.moveaxis(mask, axis, -1).reshape(-1, mask.shape[axis]).any(axis=0)
            emptied = [int(u) for u in np.flatnonzero(~alive)]
            if sorted(int(u) for u in t["removed_units"]) != emptied:
                raise InputError(
                    f"plan {shown(plan.path)}: target {shown(t['name'])} lists removed units"
                    f" {_listed(t['removed_units'])}, its mask removes {_listed(emptied)}"
                )


def write(path: str | os.PathLike, data: bytes) -> None:
    """Write plan bytes atomically (for tools; a run writes its plan with `committed_with`)."""
    from prunecli.io.models import atomic_path

    try:
        with atomic_path(Path(path)) as tmp:
            tmp.write_bytes(data)
    except OSError as exc:
        raise OutputError(f"cannot write plan {shown(path)}: {exc.strerror or first_line(exc)}") from exc


def data_digest(data: str) -> dict:
    """What `--data` names, as the report records it (`reproducibility.data`) and `verify --data` compares
    it: a sha256 over every file the loader reads (io.data.files_loaded: the records or images, and their
    spec, labels and evaluation files; no file the loader skips), each by its content, so that a copy
    elsewhere or under another name is the same data; inside a folder given as --data (image classes,
    TFRecord shards) by its path in that folder too, as a class folder's name is its examples' label.
    `files`: how many files it covers."""
    from prunecli.io.data import files_loaded

    named = files_loaded(str(data))
    try:
        digest = files_sha256(named)
    except OSError as exc:
        raise DataError(
            f"cannot read data file {shown(exc.filename or data)}: {exc.strerror or first_line(exc)}"
        ) from exc
    return {"files": len(named), "sha256": digest}


def settings_of(config) -> dict:
    """The run's options as the plan (and the report) record them: the granularity as text, the
    per-layer rules as dicts."""
    settings = {k: (str(v) if k == "granularity" else v) for k, v in config.__dict__.items()}
    settings["overrides"] = [dict(o.__dict__) for o in config.overrides]
    return _plain(settings)


def reproducibility(config) -> dict:
    """What a rerun of the same command, seed and data reproduces bit for bit (the report's
    `reproducibility` section), and with --data which data that is (`data`: data_digest), so
    that `verify --data` re-measures the report's accuracy only on it."""
    from prunecli.config import MEASURED

    data_free = config.method in ("magnitude", "random", "l1-norm", "l2-norm", "neuron-mean")
    measured = config.normalize == MEASURED  # the default magnitude command with --data: candidates compared on it
    refit = bool(config.reconstruct)
    batchnorm = config.granularity.kind == "neuron" and config.data is not None and not refit
    trains = config.epochs > 0 or config.schedule != "oneshot"
    gradual = config.schedule != "oneshot"
    masks = "bitwise" if data_free and not measured and not gradual else "expected, not guaranteed"
    why = []
    if not data_free:
        why.append("data-driven scores are sums computed by multi-threaded TensorFlow kernels")
    if measured:
        why.append("the allocation is chosen by output errors on --data, sums computed by multi-threaded kernels")
    if refit or batchnorm:
        what = "--reconstruct refits kept weights" if refit else "BatchNorm statistics are re-estimated"
        why.append(f"{what} from sums over --data computed by multi-threaded kernels")
    if gradual:
        why.append("a gradual schedule re-scores weights while they are being fine-tuned")
    if trains:
        why.append(
            "fine-tuning runs multi-threaded: the order of floating-point sums, hence the last bits "
            "of the weights, can differ between runs"
        )
    section = {
        "masks": masks,
        "plan_file": masks,
        "weights": "not bitwise" if trains else "expected, not guaranteed" if refit or batchnorm else masks,
        "why": why,
    }
    if config.data:
        section["data"] = data_digest(config.data)
    return section


def plan_section(path, data: bytes) -> dict:
    """The report's `plan` section of a run that saved its plan."""
    return {"path": str(path), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
