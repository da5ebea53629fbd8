"""Keras-2 `CuDNNGRU` / `CuDNNLSTM` layers, read as the plain `GRU` / `LSTM` that compute the same.

Keras 3 has no CuDNN layer classes, and Keras-2 files of 2017-2019 are full of them. Each is the
fixed-activation special case of a plain layer: `CuDNNGRU` is `GRU(reset_after=True,
activation="tanh", recurrent_activation="sigmoid")` and `CuDNNLSTM` is `LSTM(activation="tanh",
recurrent_activation="sigmoid")`, with the weights stored in cuDNN's layout. Keras 2 converted them
when it loaded a CuDNN file into a plain layer (tf_keras keeps that logic in
`tf_keras/src/saving/legacy/hdf5_format.py`, `_convert_rnn_weights`); the transforms here are the
same ones, written for the stored arrays:

- input kernel, per gate: the (input_dim, units) block holds cuDNN's row-major (units, input_dim)
  matrix, so the plain kernel is `block.reshape(units, input_dim).T`;
- recurrent kernel, per gate: the transpose;
- GRU bias (6*units,) -> (2, 3*units) (input biases, then recurrent ones: `reset_after`'s layout);
- LSTM bias (8*units,) -> the sum of its two halves (4*units,); written back as two equal halves.

Gate orders need no change: the CuDNN layers store gates in Keras' order (GRU z, r, h; LSTM i, f, c,
o) and reorder them only when they call cuDNN.

The config is rewritten here and the weights of a temporary copy are converted before Keras 3 reads
it; `to_cudnn` turns pruned plain weights back into the file's layout, so an `.h5` written back keeps
the input's Keras-2 CuDNN layers. A CuDNN option with no Keras-3 equivalent is refused by name.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from prunecli.errors import ModelLoadError
from prunecli.io.models.metadata import config_nodes

CUDNN = {"CuDNNGRU": ("GRU", 3), "CuDNNLSTM": ("LSTM", 4)}  # class -> (plain class, gates)

# Arguments a Keras-2 CuDNN layer's config carries that the plain layer takes as they are.
_KEPT = {
    "name",
    "trainable",
    "dtype",
    "units",
    "return_sequences",
    "return_state",
    "go_backwards",
    "stateful",
    "kernel_initializer",
    "recurrent_initializer",
    "bias_initializer",
    "unit_forget_bias",
    "kernel_regularizer",
    "recurrent_regularizer",
    "bias_regularizer",
    "activity_regularizer",
    "kernel_constraint",
    "recurrent_constraint",
    "bias_constraint",
    "batch_input_shape",
    "input_dim",
    "input_length",
}
_WRAPPERS = ("Bidirectional", "TimeDistributed")


def cudnn_layers(config: dict | None) -> list[tuple[str, str]]:
    """(layer name, class) of every CuDNN layer in a model config, wrappers and nested models included."""
    return [
        (str((n.get("config") or {}).get("name", "?")), n["class_name"])
        for n in config_nodes(config or {})
        if n.get("class_name") in CUDNN and isinstance(n.get("config"), dict)
    ]


def read_notes(config: dict | None) -> tuple[str, ...]:
    """The one line a report or `inspect` shows when CuDNN layers were read as their plain equivalents."""
    found = cudnn_layers(config)
    if not found:
        return ()
    names = ", ".join(name for name, _ in found)
    classes = sorted({cls for _, cls in found})
    plain = " and ".join(f"{cls} as {_plain_text(cls)}" for cls in classes)
    return (f"{names}: read {plain} (the same network, on any device)",)


def _plain_text(cls: str) -> str:
    if cls == "CuDNNGRU":
        return 'GRU(reset_after=True, recurrent_activation="sigmoid")'
    return 'LSTM(recurrent_activation="sigmoid")'


def translate_config(config: dict, path) -> dict:
    """A copy of `config` with every CuDNN layer replaced by its plain equivalent; a CuDNN option
    that the plain layer cannot reproduce exactly is a ModelLoadError naming it."""
    patched = json.loads(json.dumps(config))
    for node in config_nodes(patched):
        cls = node.get("class_name")
        if cls not in CUDNN or not isinstance(node.get("config"), dict):
            continue
        old = node["config"]
        name = old.get("name", "?")
        if old.get("time_major"):
            raise ModelLoadError(f"{path}: {cls} layer {name} is time_major, which Keras 3 layers do not support")
        unknown = sorted(k for k in old if k not in _KEPT and k != "time_major")
        if unknown:
            raise ModelLoadError(f"{path}: {cls} layer {name} has option {unknown[0]}, which prunecli cannot translate")
        new = {k: v for k, v in old.items() if k in _KEPT}
        new.update(activation="tanh", recurrent_activation="sigmoid", use_bias=True)
        new.update(dropout=0.0, recurrent_dropout=0.0)
        if cls == "CuDNNGRU":
            new["reset_after"] = True
        else:
            new.setdefault("unit_forget_bias", True)
        node["class_name"] = CUDNN[cls][0]
        node["config"] = new
        node["module"] = "keras.layers"  # wrappers deserialise their layer by module (Keras 3 serialization)
    return patched


def _weight_plan(layer: dict, path) -> list[str | None] | None:
    """For one top-level layer's config, the CuDNN class of each weight triple it stores, in order
    (None: a triple of weights that is not CuDNN); None when the layer holds no CuDNN layer."""
    if not any(True for _ in cudnn_layers(layer)):
        return None
    cls = layer.get("class_name")
    cfg = layer.get("config") or {}
    if cls in CUDNN:
        return [cls]
    if cls == "TimeDistributed" and isinstance(cfg.get("layer"), dict):
        return _weight_plan(cfg["layer"], path)
    if cls == "Bidirectional" and isinstance(cfg.get("layer"), dict):
        forward = cfg["layer"]
        backward = cfg.get("backward_layer") if isinstance(cfg.get("backward_layer"), dict) else forward
        plan = []
        for inner in (forward, backward):
            if inner.get("class_name") not in CUDNN:
                break
            plan.append(inner["class_name"])
        else:
            return plan
    name = cfg.get("name", "?")
    raise ModelLoadError(
        f"{path}: a CuDNN layer inside {cls} {name} is not supported (only directly, or in Bidirectional/TimeDistributed)"
    )


def top_layers(config: dict) -> list[dict]:
    inner = config.get("config")
    layers = inner if isinstance(inner, list) else (inner or {}).get("layers") or []
    return [layer for layer in layers if isinstance(layer, dict)]


def cudnn_weights(config: dict, path) -> dict[str, list[tuple[int, str]]]:
    """Per top-level layer name (its group in the file): (index of the first weight, CuDNN class)
    for each CuDNN layer whose three weights it stores."""
    found: dict[str, list[tuple[int, str]]] = {}
    for layer in top_layers(config):
        plan = _weight_plan(layer, path)
        if plan:
            found[str((layer.get("config") or {}).get("name"))] = [(3 * i, cls) for i, cls in enumerate(plan)]
    return found


def from_cudnn(cls: str, kernel, recurrent, bias, path=None, name: str = "") -> list[np.ndarray]:
    """A CuDNN layer's stored (kernel, recurrent_kernel, bias) as the plain layer's weights."""
    gates = CUDNN[cls][1]
    kernel, recurrent, bias = np.asarray(kernel), np.asarray(recurrent), np.asarray(bias)
    units = recurrent.shape[0]
    if (
        recurrent.shape != (units, gates * units)
        or kernel.shape[1:] != (gates * units,)
        or bias.shape != (2 * gates * units,)
    ):
        raise ModelLoadError(
            f"{path}: {cls} layer {name} has weights of shapes {kernel.shape}, {recurrent.shape}, {bias.shape}, "
            f"not those of a {cls}"
        )
    in_dim = kernel.shape[0]
    kernel = np.hstack([k.reshape(units, in_dim).T for k in np.hsplit(kernel, gates)])
    recurrent = np.hstack([k.T for k in np.hsplit(recurrent, gates)])
    bias = bias.reshape(2, -1) if cls == "CuDNNGRU" else bias[: gates * units] + bias[gates * units :]
    return [np.ascontiguousarray(kernel), np.ascontiguousarray(recurrent), bias]


def to_cudnn(cls: str, kernel, recurrent, bias) -> list[np.ndarray]:
    """The inverse of `from_cudnn`: plain weights in the CuDNN layer's stored layout."""
    gates = CUDNN[cls][1]
    kernel, recurrent, bias = np.asarray(kernel), np.asarray(recurrent), np.asarray(bias)
    units = recurrent.shape[0]
    in_dim = kernel.shape[0]
    kernel = np.hstack([k.T.reshape(in_dim, units) for k in np.hsplit(kernel, gates)])
    recurrent = np.hstack([k.T for k in np.hsplit(recurrent, gates)])
    bias = bias.reshape(-1) if cls == "CuDNNGRU" else np.concatenate([0.5 * bias, 0.5 * bias])
    return [np.ascontiguousarray(kernel), np.ascontiguousarray(recurrent), bias]


def _weight_group(f):
    return f["model_weights"] if "model_weights" in f else f


def _names(group) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in group.attrs.get("weight_names", [])]


def convert_file_weights(h5file, config: dict, path) -> None:
    """Convert, in an open writable copy of a Keras-2 file, every CuDNN layer's weights to the plain
    layer's layout (datasets are replaced: a GRU bias changes shape)."""
    group = _weight_group(h5file)
    for layer_name, triples in cudnn_weights(config, path).items():
        if layer_name not in group:
            raise ModelLoadError(f"{path}: no weights stored for layer {layer_name}")
        g = group[layer_name]
        names = _names(g)
        for start, cls in triples:
            if start + 3 > len(names):
                raise ModelLoadError(f"{path}: {cls} layer {layer_name} stores {len(names)} weights, not 3")
            trio = names[start : start + 3]
            values = from_cudnn(cls, *(g[n][()] for n in trio), path=path, name=layer_name)
            for n, value in zip(trio, values, strict=True):
                dtype = g[n].dtype
                del g[n]
                g.create_dataset(n, data=value.astype(dtype, copy=False))


def write_back(values: dict[str, Any], config: dict, layer_name: str, names: list[str], path) -> dict[str, Any]:
    """`values` (weight name -> the plain model's array, for one top-level layer group) with each
    CuDNN layer's three arrays turned back into the file's CuDNN layout."""
    triples = cudnn_weights(config, path).get(layer_name, [])
    out = dict(values)
    for start, cls in triples:
        trio = names[start : start + 3]
        for n, value in zip(trio, to_cudnn(cls, *(values[n] for n in trio)), strict=True):
            out[n] = value
    return out
