"""Channels-first convolutions run on a CPU, as Keras 3 already runs channels-first pooling there.

TensorFlow's CPU kernels for Conv1D/Conv2D take channels-last tensors only ("The Conv2D op currently
only supports the NHWC tensor format on the CPU"). Keras 3's TensorFlow backend transposes around the
op for channels-first pooling, depthwise and separable convolutions on a CPU, and compiles 3-D ones
with XLA, but passes a plain 1-D or 2-D convolution through: a channels-first model (a Keras-2 file
saved with `image_data_format` channels_first, as Theano-era and GPU-trained files often are) loads
and then fails on its first batch. `run_on_cpu` wraps the backend's `conv` once per process so that,
on a machine with no GPU, such a convolution is computed on the transposed tensor with the same
kernel (its layout does not depend on the data format) and transposed back: the model, its files
and its inputs stay channels-first.
"""

from __future__ import annotations

import functools

_WRAPPED = "_prunecli_channels_first_on_cpu"


def _cpu_only() -> bool:
    """Whether TensorFlow sees no device but CPUs (then NCHW/NCW convolution kernels are missing)."""
    import tensorflow as tf

    return all(device.device_type == "CPU" for device in tf.config.list_logical_devices())


def run_on_cpu() -> None:
    """Wrap the TensorFlow backend's `conv` (idempotent): channels-first 1-D and 2-D convolutions are
    computed channels-last on a CPU-only machine, the result transposed back."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return
    from keras.src.backend.tensorflow import nn as tf_nn

    original = tf_nn.conv
    if getattr(original, _WRAPPED, False):
        return

    @functools.wraps(original)
    def conv(inputs, kernel, strides=1, padding="valid", data_format=None, dilation_rate=1):
        import tensorflow as tf

        rank = len(inputs.shape)
        data_format = data_format or keras.config.image_data_format()
        if data_format != "channels_first" or rank not in (3, 4) or not _cpu_only():
            return original(inputs, kernel, strides, padding, data_format, dilation_rate)
        to_last = (0, *range(2, rank), 1)
        to_first = (0, rank - 1, *range(1, rank - 1))
        out = original(tf.transpose(inputs, to_last), kernel, strides, padding, "channels_last", dilation_rate)
        return tf.transpose(out, to_first)

    setattr(conv, _WRAPPED, True)
    tf_nn.conv = conv
