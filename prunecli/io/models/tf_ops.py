"""tf_keras' TFOpLambda layers, read as the TensorFlow call each one records.

A tf_keras functional model that calls a TensorFlow function on a layer's output (`x / 255.0`,
`tf.nn.relu6(h)`, `h * 2.0`) stores the call as a TFOpLambda layer naming the function ("math.truediv",
"nn.relu6") and its other arguments, and slicing (`h[:, 0]`) as a SlicingOpLambda recording the slice;
Keras 3 has neither and refuses the file ("Unknown layer: 'TFOpLambda'"). The name is looked up, never
run as code, and only among TensorFlow's pure tensor functions (`tf.math`, `tf.nn`, `tf.image`,
`tf.linalg` and the array functions in ALLOWED), so safe mode keeps its meaning: a file cannot name
`tf.io.write_file` or `tf.py_function`. Registered as
"prunecli>TFOpLambda" when this module is imported: a `.keras` output keeps the calls and loads once it
is; an `.h5` output of an unchanged structure is the input file with new weights, which tf_keras reads.
"""

from __future__ import annotations

import json
import operator

import keras

from prunecli.io.models.metadata import config_nodes, is_tensor_reference

NAMESPACES = ("math", "nn", "image", "linalg")  # pure tensor functions, whole namespaces
ALLOWED = (  # and these top-level ones
    "reshape concat stack expand_dims squeeze transpose cast clip_by_value identity split tile pad "
    "gather where ones_like zeros_like maximum minimum"
).split()
OPERATORS = {  # Python operators applied to tensors, as tf_keras names them
    f"__operators__.{name}": getattr(operator, name)
    for name in ("add", "sub", "mul", "truediv", "floordiv", "pow", "neg", "matmul", "getitem")
}
GETITEM = "__operators__.getitem"  # slicing, `h[:, 0]`: tf_keras' SlicingOpLambda
CLASSES = ("TFOpLambda", "SlicingOpLambda")
REGISTERED = "prunecli>TFOpLambda"  # the name both are read as


def resolve(function: str):
    """The TensorFlow function a TFOpLambda names, or ValueError for one outside the allowed ones."""
    import tensorflow as tf

    if function in OPERATORS:
        return OPERATORS[function]
    parts = str(function).split(".")
    allowed = (len(parts) >= 2 and parts[0] in NAMESPACES) or (len(parts) == 1 and parts[0] in ALLOWED)
    found = tf
    for part in parts if allowed and all(p.isidentifier() and not p.startswith("_") for p in parts) else ():
        found = getattr(found, part, None)
    if not allowed or found is tf or not callable(found):
        raise ValueError(f"TFOpLambda calls tf.{function}, which prunecli does not read")
    return found


@keras.saving.register_keras_serializable(package="prunecli")
class TFOpLambda(keras.layers.Layer):
    """One recorded TensorFlow call (`function`, e.g. "math.multiply"), its other arguments as the
    model's graph passes them."""

    def __init__(self, function: str, **kwargs):
        super().__init__(**kwargs)
        self.function = function
        self._call = resolve(function)

    def call(self, *args, **kwargs):
        kwargs.pop("name", None)
        if self.function == GETITEM:
            return args[0][tuple(_index(part) for part in json.loads(kwargs["slice_spec_json"]))]
        if self.function in OPERATORS:  # operator.add(x, y): positional only
            return self._call(*args, *kwargs.values())
        return self._call(*args, **kwargs)

    def get_config(self):
        return {**super().get_config(), "function": self.function}


def uses_tf_ops(config) -> bool:
    """Whether a config holds a tf_keras TFOpLambda or SlicingOpLambda layer."""
    return any(node.get("class_name") in CLASSES for node in config_nodes(config or {}))


def unread_calls(config) -> list[str]:
    """The TensorFlow calls a tf_keras config records as layers that `resolve` refuses ("tf.roll"), each
    once, in graph order: what a refusal names."""

    def unread(function: str) -> bool:
        try:
            resolve(function)
        except ValueError:
            return True
        return False

    found = [
        str(node["config"].get("function"))
        for node in config_nodes(config or {})
        if node.get("class_name") in (*CLASSES, REGISTERED) and isinstance(node.get("config"), dict)
    ]
    return [f if f.startswith("__") else f"tf.{f}" for f in dict.fromkeys(found) if unread(f)]


def with_tf_ops(config: dict) -> dict:
    """The config with each TFOpLambda layer named as prunecli's; `config` itself when it has none."""
    if not uses_tf_ops(config):
        return config
    patched = json.loads(json.dumps(config))
    for node in config_nodes(patched):
        if node.get("class_name") in CLASSES:
            node["class_name"] = REGISTERED
            node.pop("module", None)
            node["inbound_nodes"] = [_as_keras3_call(call) for call in node.get("inbound_nodes") or []]
    return patched


def _tensor(reference: list) -> dict:
    """A reference in Keras 3's node form (its shape and dtype are the tensor's once the graph is built)."""
    return {
        "class_name": "__keras_tensor__",
        "config": {"shape": [], "dtype": "float32", "keras_history": reference[:3]},
    }


def _as_keras3_call(call) -> dict:
    """One TFOpLambda call as Keras 3 writes a node: tf_keras wrote its first argument as a reference
    (or, for a list argument such as tf.concat's, a list of them) whose kwargs are the call's other
    arguments, a tensor among them as a reference too ({"y": ["dense_1", 0, 0]} for h + g)."""
    references = [call] if is_tensor_reference(call) else [r for r in call if is_tensor_reference(r)]
    if not references:
        raise ValueError("TFOpLambda with a call prunecli does not read")
    given = references[0][3] if len(references[0]) > 3 and isinstance(references[0][3], dict) else {}
    kwargs = {k: _tensor(v) if is_tensor_reference(v) else v for k, v in given.items() if k != "name"}
    if "slice_spec" in kwargs:  # as text: Keras would read its {"start", "stop", "step"} dicts as objects
        kwargs["slice_spec_json"] = json.dumps(kwargs.pop("slice_spec"))
    first = _tensor(call) if is_tensor_reference(call) else [_tensor(r) for r in references]
    return {"args": [first], "kwargs": kwargs}


def _index(part):
    """One element of a recorded slice: {"start", "stop", "step"} a slice, {"class_name": "__ellipsis__"}
    the ellipsis, null a new axis, a number an index."""
    if isinstance(part, dict):
        if part.get("class_name") == "__ellipsis__":
            return Ellipsis
        return slice(part.get("start"), part.get("stop"), part.get("step"))
    if part is None or isinstance(part, int):
        return part
    raise ValueError(f"TFOpLambda slices with {part!r}, which prunecli does not read")
