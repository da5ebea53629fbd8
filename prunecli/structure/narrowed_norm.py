"""LayerNormalization over a narrowed residual stream that normalises as the full-width one did.

A LayerNormalization (GPT-2's, OPT's, Bloom's, Falcon's, GPT-NeoX's) over a stream of D channels of
which only D' are non-zero (the others pruned everywhere) computes, at a kept channel c,

    gamma_c (x_c - m) / sqrt(v + eps) + beta_c,   m = S / D,   v = (sum_kept (x - m)^2 + (D - D') m^2) / D

with S the sum over the kept channels: the zeros pull the mean towards 0 and each adds m^2 to the
variance. A plain LayerNormalization over D' channels would use S / D' instead, and no change of its
gamma, beta or epsilon undoes that (the difference is a per-token scalar times gamma). This layer keeps
the full width D in its config and computes exactly the expression above over its D' inputs, so the
narrower model equals the masked one; it costs what a LayerNormalization costs.
"""

from __future__ import annotations

from typing import Any

_CLASS: list[Any] = []  # the registered class, defined once keras is imported


def layer_class():
    """NarrowedLayerNormalization (defined and registered with Keras on the first call)."""
    if _CLASS:
        return _CLASS[0]
    import keras
    from keras import ops

    class NarrowedLayerNormalization(keras.layers.LayerNormalization):
        """keras.layers.LayerNormalization over the last axis of a stream narrowed from `full_width`
        channels: mean and variance taken as over the full width with the removed channels zero."""

        def __init__(self, full_width: int, **kwargs):
            super().__init__(**kwargs)
            self.full_width = int(full_width)

        def call(self, inputs):
            x = ops.cast(inputs, "float32")  # as Keras' own: at least float32 statistics
            kept = ops.cast(ops.shape(x)[-1], "float32")
            full = float(self.full_width)
            mean = ops.sum(x, axis=-1, keepdims=True) / full
            centred = x - mean
            variance = (ops.sum(ops.square(centred), axis=-1, keepdims=True) + (full - kept) * ops.square(mean)) / full
            out = centred * ops.rsqrt(variance + self.epsilon)
            if self.gamma is not None:
                out = out * ops.cast(self.gamma, "float32")
            if self.beta is not None:
                out = out + ops.cast(self.beta, "float32")
            return ops.cast(out, self.compute_dtype)

        def get_config(self):
            return {**super().get_config(), "full_width": self.full_width}

    NarrowedLayerNormalization.__module__ = __name__
    _CLASS.append(keras.saving.register_keras_serializable(package="prunecli")(NarrowedLayerNormalization))
    return _CLASS[0]


def centred(layer) -> bool:
    """Whether `layer` is a LayerNormalization that centres over the last axis alone (not Keras'
    rms_scaling mode), which `narrowed` can stand in for."""
    import keras

    if not isinstance(layer, keras.layers.LayerNormalization):
        return False
    config = layer.get_config()
    axis = config.get("axis")
    return not config.get("rms_scaling") and (axis == -1 or axis == [-1] or axis == (-1,))


def full_width(layer, width: int) -> int:
    """The width a norm over `width` channels normalises as: its own full width when it was narrowed
    already (zeros of a narrowed stream are zeros of the full one), else `width`."""
    return int(getattr(layer, "full_width", width))


def narrowed(layer, width: int):
    """A new, unbuilt NarrowedLayerNormalization like the centred norm `layer` over `width` channels (the
    dense stream's), its name and settings kept; its weights are assigned by the caller."""
    config = {k: v for k, v in layer.get_config().items() if k != "full_width"}
    return layer_class().from_config({**config, "full_width": full_width(layer, width)})
