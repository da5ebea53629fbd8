"""Channels-first convolutions run on a CPU, as Keras 3 already runs channels-first pooling there.

TensorFlow's CPU kernels for Conv1D/Conv2D and their transposes take channels-last tensors only ("The
Conv2D op currently only supports the NHWC tensor format on the CPU", "Conv2DCustomBackpropInputOp only
supports NHWC"). Keras 3's TensorFlow backend transposes around the op for channels-first pooling,
depthwise and separable convolutions on a CPU, and compiles 3-D ones with XLA, but passes a plain 1-D or
2-D convolution or transposed convolution through: a channels-first model (a Keras-2 file saved with
`image_data_format` channels_first, as Theano-era and GPU-trained files often are) loads and then fails
on its first batch. `run_on_cpu` wraps the backend's `conv` and `conv_transpose` once per process so
that, on a machine with no GPU, such a convolution is computed on the transposed tensor with the same
kernel (its layout does not depend on the data format) and transposed back: the model, its files and
its inputs stay channels-first.

It also mends the backend's `add` for channels-first biases: Keras 3's TensorFlow `add` turns a sum
with a bias-like operand into `tf.nn.bias_add` and picks NHWC whenever the last axis is as wide as the
bias, so a channels-first convolution whose last spatial size equals its filter count (a Conv2D of 8
filters on an 8-wide map; a shrunk layer whose width came down to it) added its bias (1, C, 1, 1) along
the width instead of the channels (Keras 3.15.1). `add` then keeps such a sum a plain broadcast add.
"""

from __future__ import annotations

import functools
import inspect

_WRAPPED = "_prunecli_channels_first_on_cpu"
CONVOLUTIONS = ("conv", "conv_transpose")  # the TensorFlow backend's functions that take NCHW/NCW only on GPUs


def _cpu_only() -> bool:
    """Whether TensorFlow sees no device but CPUs (then NCHW/NCW convolution kernels are missing)."""
    import tensorflow as tf

    return all(device.device_type == "CPU" for device in tf.config.list_logical_devices())


def run_on_cpu() -> None:
    """Wrap the TensorFlow backend's `conv` and `conv_transpose` (idempotent): channels-first 1-D and
    2-D ones are computed channels-last on a CPU-only machine, the result transposed back."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    from keras.src.backend.tensorflow import nn as tf_nn

    for name in CONVOLUTIONS:
        original = getattr(tf_nn, name)
        if not getattr(original, _WRAPPED, False):
            setattr(tf_nn, name, _channels_last_on_cpu(original))
    from keras.src.backend.tensorflow import numpy as tf_numpy

    if not getattr(tf_numpy.add, _WRAPPED, False):
        tf_numpy.add = _broadcast_channels_first_bias(tf_numpy.add)


def _broadcast_channels_first_bias(original):
    """The backend's `add`, computing x1 + x2 as a plain broadcast when x2 is a channels-first bias
    (rank 3 or more, every axis 1 but axis 1) and x1's last axis is as wide as it (then `original`
    would add it along the last axis)."""

    @functools.wraps(original)
    def add(x1, x2):
        import tensorflow as tf

        shape = getattr(x2, "shape", None)
        x1_shape = getattr(x1, "shape", None)
        if (
            shape is not None
            and x1_shape is not None
            and len(shape) == len(x1_shape) >= 3
            and all(d == 1 for i, d in enumerate(shape) if i != 1)
            and shape[1] not in (None, 1)
            and shape[1] == x1_shape[-1]
        ):
            x1, x2 = tf.convert_to_tensor(x1), tf.convert_to_tensor(x2)
            return tf.add(x1, tf.cast(x2, x1.dtype))
        return original(x1, x2)

    setattr(add, _WRAPPED, True)
    return add


def _channels_last_on_cpu(original):
    """`original` (a backend convolution taking `inputs` and `data_format`), computing a channels-first
    1-D or 2-D call on a CPU-only machine channels-last between two transposes; any other call as it is."""
    import keras

    signature = inspect.signature(original)

    @functools.wraps(original)
    def convolution(*args, **kwargs):
        import tensorflow as tf

        bound = signature.bind(*args, **kwargs)
        inputs = bound.arguments["inputs"]
        rank = len(inputs.shape)
        data_format = bound.arguments.get("data_format") or keras.config.image_data_format()
        if data_format != "channels_first" or rank not in (3, 4) or not _cpu_only():
            return original(*args, **kwargs)
        bound.arguments["inputs"] = tf.transpose(inputs, (0, *range(2, rank), 1))
        bound.arguments["data_format"] = "channels_last"
        return tf.transpose(original(*bound.args, **bound.kwargs), (0, rank - 1, *range(1, rank - 1)))

    setattr(convolution, _WRAPPED, True)
    return convolution
