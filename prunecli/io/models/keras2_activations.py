"""Keras 2's `hard_sigmoid`, which Keras 3 redefined under the same name.

Keras 2 (and tf_keras) computes hard_sigmoid(x) = clip(0.2 x + 0.5, 0, 1); Keras 3 computes
relu6(x + 3) / 6 = clip(x / 6 + 0.5, 0, 1). It was the default `recurrent_activation` of LSTM and
GRU up to Keras 2.2, so a Keras-2 recurrent model read by Keras 3 as stored runs with other gates
than it was trained with, silently: ugc-sentiment's GRU gives 0.4446 / 0.4392 for its README's first
review where the package's README shows 0.4346 / 0.4408, and the Keras 2 function gives the README's
figures (bench/ZOO.md). A Keras-2 file's "hard_sigmoid" is therefore read as `keras2_hard_sigmoid`,
registered with Keras (as "prunecli>keras2_hard_sigmoid") when this module is imported, so a `.keras`
output written from such a file keeps the trained behaviour and loads once it is (prunecli imports
it lazily, when it reads a model: importing prunecli alone imports no Keras).
"""

from __future__ import annotations

import keras

from prunecli.io.models.metadata import config_nodes

KERAS2_NAME = "hard_sigmoid"
ACTIVATION_KEYS = ("activation", "recurrent_activation")


@keras.saving.register_keras_serializable(package="prunecli")
def keras2_hard_sigmoid(x):
    """Keras 2's hard sigmoid: clip(0.2 x + 0.5, 0, 1)."""
    return keras.ops.clip(0.2 * x + 0.5, 0.0, 1.0)


def uses_keras2_hard_sigmoid(config) -> bool:
    """Whether a Keras-2 config names "hard_sigmoid" anywhere as a layer's activation."""
    return any(True for _ in _sites(config or {}))


def with_keras2_hard_sigmoid(config: dict) -> dict:
    """The config with every "hard_sigmoid" activation (string or Keras-2 dict form) replaced by the
    serialised `keras2_hard_sigmoid`; `config` itself when there is none."""
    if not uses_keras2_hard_sigmoid(config):
        return config
    import json

    patched = json.loads(json.dumps(config))
    replacement = keras.saving.serialize_keras_object(keras2_hard_sigmoid)
    for node, key in _sites(patched):
        node[key] = dict(replacement)
    return patched


def _sites(config):
    """(dict, key) of each activation entry naming "hard_sigmoid" in a config tree."""
    for node in config_nodes(config):
        for key in ACTIVATION_KEYS:
            if _names_hard_sigmoid(node.get(key)):
                yield node, key


def _names_hard_sigmoid(value) -> bool:
    if isinstance(value, str):
        return value == KERAS2_NAME
    return isinstance(value, dict) and value.get("config") == KERAS2_NAME and value.get("class_name") == "function"
