"""Quantized convolutions: Conv1D/2D/3D, their transposes, DepthwiseConv1D/2D and SeparableConv1D/2D whose
kernels are stored as int8 or int4 codes with one scale per output channel, so that `--quantize int8|int4`
shrinks a CNN's file and not only its Dense layers.

Why this exists: Keras 3.15's `Model.quantize` quantizes Dense, EinsumDense and embeddings only; a
convolution has no `quantize` method and stays float32. These classes add one, in Keras' own shape:
`quantize(mode)` replaces the float kernel by integer codes and a `kernel_scale` variable and sets the
`<mode>_from_<policy>` dtype policy, so Keras saves, loads and calls the layer through its quantization
hooks (`quantized_call` -> `_int8_call` / `_int4_call`) as it does its quantized Dense.

The grids are the ones Keras' Dense writes per output channel (CODE_RANGES): symmetric abs-max,
`q = round(w * s)` with `s = 127 / (max|w| + eps)` for int8 and `s = 7 / (max|w| + eps)` for int4 (Keras'
per-channel int4, `AbsMaxQuantizer(value_range=(-8, 7))`), over every axis but the output channels (the
kernel's `(*window, c_in / groups, filters)` layout puts them last for both data formats), read back as
`q / s`. A pruned 0 stays exactly 0 (`round(0 * s) = 0`). int4 codes are packed two per byte
(`keras.quantizers.pack_int4` over the flattened kernel). Unlike Keras' int8 Dense, the inputs are not
quantized: the kernel is dequantized at each call and the convolution runs in float (weight-only, as
Keras' int4 Dense is), because the backends' convolutions have no integer path Keras exposes. int4
convolutions are per output channel, not grouped like Keras' default int4 Dense (128 input rows per
group with a zero point): a 3x3 kernel's reduction is often shorter than one group.

A model's float convolutions become these classes in place (`make_quantizable`): the subclass adds
methods only, so the layer keeps its variables, its place in the graph and its name, and
`Model.quantize(filters=...)` then quantizes it with the Dense layers. The saved file names the class
`prunecli>QuantizedConv2D` (files written before int4 existed name `prunecli>Int8Conv2D`: both load):
loading it needs `import prunecli` (registration is in this module), as the KerasHub decoders prunecli
rebuilds do.
"""

from __future__ import annotations

import contextlib
import math

import keras
from keras import ops

CODE_RANGES = {"int8": (-127, 127), "int4": (-8, 7)}  # Keras' per-channel grids for Dense (int4: block_size None)
MODES = tuple(CODE_RANGES)


class _QuantizedStored:
    """What every quantized convolution saves and how Keras calls it once quantized: the variables of
    `_stored_variables()` in file order (Keras' own saving would write the dequantized float kernels),
    `call` itself, which computes with the dequantized kernels, and the codes' storage (int8 as they
    are, int4 packed two per byte along the flattened kernel)."""

    def save_own_variables(self, store):
        if self.quantization_mode not in MODES:
            return super().save_own_variables(store)
        for i, variable in enumerate(self._stored_variables()):
            store[str(i)] = variable

    def load_own_variables(self, store):
        if self.quantization_mode not in MODES:
            return super().load_own_variables(store)
        self._check_load_own_variables(store)
        for i, variable in enumerate(self._stored_variables()):
            variable.assign(store[str(i)])

    def _int8_call(self, inputs):
        return self.call(inputs)

    _int4_call = _int8_call

    def _codes_variable(self, attr: str, kernel_shape, mode: str) -> object:
        """A non-trainable int8 variable holding `attr`'s codes: the kernel's shape for int8, the
        flattened kernel packed two codes per byte for int4."""
        shape = tuple(kernel_shape)
        if mode == "int4":
            shape = ((math.prod(shape) + 1) // 2,)
        return self.add_weight(name=attr, shape=shape, initializer="zeros", dtype="int8", trainable=False)

    @staticmethod
    def _stored_codes(codes, mode: str):
        """Integer codes in the kernel's layout as `_codes_variable` stores them."""
        from keras import quantizers

        if mode != "int4":
            return codes
        packed, _shape, _rows = quantizers.pack_int4(ops.reshape(ops.convert_to_tensor(codes, "int8"), (-1,)), axis=0)
        return packed

    def _unpacked(self, stored, kernel_shape):
        """The stored codes in the kernel's layout (int8 values in [-127, 127] or [-8, 7])."""
        from keras import quantizers

        if self.quantization_mode != "int4":
            return stored
        size = math.prod(tuple(kernel_shape))
        return ops.reshape(quantizers.unpack_int4(stored, size, axis=0), tuple(kernel_shape))

    @staticmethod
    def _quantized_codes(kernel, axes, mode: str):
        """(codes, scale) of a float kernel on `mode`'s grid, one scale per output channel (over `axes`)."""
        from keras import quantizers

        return quantizers.abs_max_quantize(kernel, axis=axes, value_range=CODE_RANGES[mode], to_numpy=True)

    def _check_mode(self, mode, config) -> None:
        if mode not in MODES or getattr(config, "weight_quantizer", None) is not None:
            raise NotImplementedError(
                f"{type(self).__name__} quantizes to {' or '.join(MODES)} with the default per-channel grid only"
            )
        self._check_quantize_args(mode, self.compute_dtype)

    def _drop_float(self, attr: str) -> None:
        """Delete a float kernel variable as Keras' Layer.__delattr__ does (untracked, then removed),
        without the full gc.collect() it runs after every deleted variable: 0.4 s apiece in a process
        holding TensorFlow, 7 of the 13 s an int8 run on an 18-convolution KerasHub ResNet took."""
        self._untrack_variable(getattr(self, attr))
        super(keras.layers.Layer, self).__delattr__(attr)

    def _mark_quantized(self, mode: str) -> None:
        from keras import dtype_policies

        self._is_quantized = True  # before the policy: its setter would quantize again
        self.dtype_policy = dtype_policies.get(f"{mode}_from_{self.dtype_policy.name}")


class _QuantizedKernel(_QuantizedStored):
    """The quantized behaviour shared by the three convolution ranks (a mixin before the Keras class)."""

    def build(self, input_shape):
        super().build(input_shape)
        if self.quantization_mode in MODES:  # loading a saved layer: its codes replace the float kernel
            shape = tuple(self._kernel.shape)
            self._drop_float("_kernel")
            self._code_variables(shape, self.quantization_mode)
            self._is_quantized = True

    def _code_variables(self, kernel_shape, mode: str) -> None:
        self._kernel_shape = [int(size) for size in kernel_shape]
        self._kernel = self._codes_variable("kernel", kernel_shape, mode)
        self.kernel_scale = self.add_weight(
            name="kernel_scale", shape=(self.filters,), initializer="ones", trainable=False
        )

    @property
    def kernel(self):
        """The float kernel the convolution computes with: the stored one, or codes / scale."""
        if self.quantization_mode not in MODES:
            return super().kernel
        return ops.divide(ops.cast(self.kernel_codes, self.compute_dtype), self.kernel_scale)

    @property
    def kernel_codes(self):
        """The integer codes in the kernel's layout (int4 unpacked)."""
        if self.quantization_mode not in MODES:
            raise AttributeError(f"layer {self.name} is not quantized")
        return self._unpacked(self._kernel, self._kernel_shape)

    def get_prunable_weights(self) -> list:
        """The kernel as prunecli's targets read it (structure/layers.prunable_weights): once quantized,
        its codes under the float kernel's name (a code is 0 exactly where the weight is), so `verify`
        checks a quantized model's zeros and N:M groups under the same names ("conv/kernel")."""
        return [("kernel", self.kernel_codes)]

    def _stored_variables(self) -> list:
        """The variables a saved quantized layer holds, in file order: codes, bias, scales."""
        return [self._kernel, *([self.bias] if self.use_bias else []), self.kernel_scale]

    def quantize(self, mode=None, type_check=True, config=None):
        """Keras' layer hook, called by `Model.quantize`: int8 or int4 on the per-channel grid."""
        del type_check  # the classes are ours: a subclass of them is as quantizable as they are
        self._check_mode(mode, config)
        shape = tuple(self._kernel.shape)
        codes, scale = self._quantized_codes(self._kernel, tuple(range(len(shape) - 1)), mode)
        self._drop_float("_kernel")
        self._code_variables(shape, mode)
        self._kernel.assign(self._stored_codes(codes, mode))
        self.kernel_scale.assign(ops.reshape(scale, (self.filters,)))
        self._mark_quantized(mode)


@keras.saving.register_keras_serializable(package="prunecli")
class QuantizedConv1D(_QuantizedKernel, keras.layers.Conv1D):
    """Conv1D with an int8 or int4 kernel after `quantize(mode)`."""


@keras.saving.register_keras_serializable(package="prunecli")
class QuantizedConv2D(_QuantizedKernel, keras.layers.Conv2D):
    """Conv2D with an int8 or int4 kernel after `quantize(mode)`."""


@keras.saving.register_keras_serializable(package="prunecli")
class QuantizedConv3D(_QuantizedKernel, keras.layers.Conv3D):
    """Conv3D with an int8 or int4 kernel after `quantize(mode)`."""


def bias_and_activation(layer, outputs, channels: int):
    """What Keras' convolutions add after the convolution itself: the bias (per output channel, on the
    data format's channel axis) and the activation."""
    if layer.use_bias:
        if layer.data_format == "channels_last":
            bias_shape = (1,) * (layer.rank + 1) + (channels,)
        else:
            bias_shape = (1, channels) + (1,) * layer.rank
        outputs = ops.add(outputs, ops.reshape(layer.bias, bias_shape))
    return layer.activation(outputs) if layer.activation is not None else outputs


class _QuantizedAttributes(_QuantizedStored):
    """The quantized behaviour of depthwise, separable and transposed convolutions, whose `call` reads their
    kernels as plain attributes (`kernel`; `depthwise_kernel` and `pointwise_kernel`): once quantized each
    of those attributes holds the stored codes and `<attribute>_scale` its scales, and `call` computes
    with the dequantized kernels. One scale per output channel, as for Conv (`scaled_axes`).

    Each family's `convolve(layer, inputs, kernel_of)` is the layer's computation with the kernels
    `kernel_of(attribute)` gives: the dequantized ones here, fake-quantized float ones in QAT
    (training/fake_quant.py), so both compute the same thing by construction."""

    KERNELS: tuple[str, ...] = ()
    OUTPUT_AXES = 1  # how many trailing kernel axes are output channels (a depthwise kernel: 2)

    @classmethod
    def scaled_axes(cls, attr: str, rank: int, ndim: int) -> tuple[int, ...]:
        """The axes a kernel's scale runs over (all but its output channels)."""
        if attr == "depthwise_kernel":
            return tuple(range(rank))
        return tuple(range(ndim - cls.OUTPUT_AXES))

    def _scaled_axes(self, attr: str, ndim: int) -> tuple[int, ...]:
        return type(self).scaled_axes(attr, self.rank, ndim)

    def _broadcast_scale(self, attr: str):
        """`<attr>_scale` shaped to divide the kernel: 1 on the axes it runs over."""
        shape, scale = self._kernel_shapes[attr], getattr(self, f"{attr}_scale")
        axes = self._scaled_axes(attr, len(shape))
        return ops.reshape(scale, [1 if axis in axes else size for axis, size in enumerate(shape)])

    def call(self, inputs):
        if self.quantization_mode not in MODES:
            return super().call(inputs)
        return type(self).convolve(self, inputs, self.dequantized)

    def build(self, input_shape):
        super().build(input_shape)
        if self.quantization_mode in MODES:  # loading a saved layer: its codes replace the float kernels
            shapes = {attr: tuple(getattr(self, attr).shape) for attr in self.KERNELS}
            for attr in self.KERNELS:
                self._drop_float(attr)
            self._code_variables(shapes, self.quantization_mode)
            self._is_quantized = True

    def _code_variables(self, shapes: dict, mode: str) -> None:
        self._kernel_shapes = {attr: [int(size) for size in shape] for attr, shape in shapes.items()}
        for attr, shape in shapes.items():
            axes = self._scaled_axes(attr, len(shape))
            scale_shape = tuple(size for axis, size in enumerate(shape) if axis not in axes)
            setattr(self, attr, self._codes_variable(attr, shape, mode))
            setattr(
                self,
                f"{attr}_scale",
                self.add_weight(name=f"{attr}_scale", shape=scale_shape, initializer="ones", trainable=False),
            )

    def codes(self, attr: str):
        """A kernel's integer codes in its layout (int4 unpacked)."""
        if self.quantization_mode not in MODES:
            raise AttributeError(f"layer {self.name} is not quantized")
        return self._unpacked(getattr(self, attr), self._kernel_shapes[attr])

    def dequantized(self, attr: str):
        """A kernel as the layer computes with it: the float one, or codes / scale."""
        if self.quantization_mode not in MODES:
            return getattr(self, attr)
        return ops.divide(ops.cast(self.codes(attr), self.compute_dtype), self._broadcast_scale(attr))

    def get_prunable_weights(self) -> list:
        """The kernels prunecli's targets read, under their float names: their codes once quantized."""
        return [(attr, self.codes(attr)) for attr in self.KERNELS]

    def _stored_variables(self) -> list:
        codes = [getattr(self, attr) for attr in self.KERNELS]
        scales = [getattr(self, f"{attr}_scale") for attr in self.KERNELS]
        return [*codes, *([self.bias] if self.use_bias else []), *scales]

    def quantize(self, mode=None, type_check=True, config=None):
        """Keras' layer hook, called by `Model.quantize`: int8 or int4 on the per-channel grid."""
        del type_check
        self._check_mode(mode, config)
        quantized = {}
        for attr in self.KERNELS:
            kernel = getattr(self, attr)
            axes = self._scaled_axes(attr, len(kernel.shape))
            codes, scale = self._quantized_codes(kernel, axes, mode)
            quantized[attr] = (tuple(kernel.shape), codes, scale)
            self._drop_float(attr)
        self._code_variables({attr: shape for attr, (shape, _, _) in quantized.items()}, mode)
        for attr, (_shape, codes, scale) in quantized.items():
            getattr(self, attr).assign(self._stored_codes(codes, mode))
            target = getattr(self, f"{attr}_scale")
            target.assign(ops.reshape(scale, target.shape))
        self._mark_quantized(mode)


class _QuantizedDepthwise(_QuantizedAttributes):
    KERNELS = ("kernel",)
    OUTPUT_AXES = 2  # (*window, input channel, multiplier): each (channel, multiplier) is an output

    @staticmethod
    def convolve(layer, inputs, kernel_of):
        kernel = kernel_of("kernel")
        outputs = ops.depthwise_conv(
            inputs,
            kernel,
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
        return bias_and_activation(layer, outputs, int(kernel.shape[-2]) * int(kernel.shape[-1]))


class _QuantizedSeparable(_QuantizedAttributes):
    KERNELS = ("depthwise_kernel", "pointwise_kernel")

    @staticmethod
    def convolve(layer, inputs, kernel_of):
        outputs = ops.separable_conv(
            inputs,
            kernel_of("depthwise_kernel"),
            kernel_of("pointwise_kernel"),
            strides=layer.strides,
            padding=layer.padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
        return bias_and_activation(layer, outputs, layer.filters)


class _QuantizedTranspose(_QuantizedAttributes):
    """A transposed convolution's kernel is (*window, filters, input channels): its scale is per filter,
    over every other axis."""

    KERNELS = ("kernel",)

    @classmethod
    def scaled_axes(cls, attr: str, rank: int, ndim: int) -> tuple[int, ...]:
        return tuple(axis for axis in range(ndim) if axis != ndim - 2)

    @staticmethod
    def convolve(layer, inputs, kernel_of):
        outputs = ops.conv_transpose(
            inputs,
            kernel_of("kernel"),
            strides=list(layer.strides),
            padding=layer.padding,
            output_padding=layer.output_padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
        return bias_and_activation(layer, outputs, layer.filters)


@keras.saving.register_keras_serializable(package="prunecli")
class QuantizedConv1DTranspose(_QuantizedTranspose, keras.layers.Conv1DTranspose):
    """Conv1DTranspose with an int8 or int4 kernel after `quantize(mode)`."""


@keras.saving.register_keras_serializable(package="prunecli")
class QuantizedConv2DTranspose(_QuantizedTranspose, keras.layers.Conv2DTranspose):
    """Conv2DTranspose with an int8 or int4 kernel after `quantize(mode)`."""


@keras.saving.register_keras_serializable(package="prunecli")
class QuantizedConv3DTranspose(_QuantizedTranspose, keras.layers.Conv3DTranspose):
    """Conv3DTranspose with an int8 or int4 kernel after `quantize(mode)`."""


@keras.saving.register_keras_serializable(package="prunecli")
class QuantizedDepthwiseConv1D(_QuantizedDepthwise, keras.layers.DepthwiseConv1D):
    """DepthwiseConv1D with an int8 or int4 kernel after `quantize(mode)`."""


@keras.saving.register_keras_serializable(package="prunecli")
class QuantizedDepthwiseConv2D(_QuantizedDepthwise, keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D with an int8 or int4 kernel after `quantize(mode)`."""


@keras.saving.register_keras_serializable(package="prunecli")
class QuantizedSeparableConv1D(_QuantizedSeparable, keras.layers.SeparableConv1D):
    """SeparableConv1D with int8 or int4 depthwise and pointwise kernels after `quantize(mode)`."""


@keras.saving.register_keras_serializable(package="prunecli")
class QuantizedSeparableConv2D(_QuantizedSeparable, keras.layers.SeparableConv2D):
    """SeparableConv2D with int8 or int4 depthwise and pointwise kernels after `quantize(mode)`."""


CONV_CLASSES = {
    keras.layers.Conv1D: QuantizedConv1D,
    keras.layers.Conv2D: QuantizedConv2D,
    keras.layers.Conv3D: QuantizedConv3D,
    keras.layers.DepthwiseConv1D: QuantizedDepthwiseConv1D,
    keras.layers.DepthwiseConv2D: QuantizedDepthwiseConv2D,
    keras.layers.SeparableConv1D: QuantizedSeparableConv1D,
    keras.layers.SeparableConv2D: QuantizedSeparableConv2D,
    keras.layers.Conv1DTranspose: QuantizedConv1DTranspose,
    keras.layers.Conv2DTranspose: QuantizedConv2DTranspose,
    keras.layers.Conv3DTranspose: QuantizedConv3DTranspose,
}


@contextlib.contextmanager
def one_collection():
    """Keras' Layer.__delattr__ runs a full gc.collect() after every variable it deletes, and
    Model.quantize deletes each quantized layer's float kernel: 9.8 s for 40 Dense layers in a process
    holding TensorFlow, minutes for a decoder of hundreds. Within this block those collections are
    skipped (the kernels are freed by reference counting as they are deleted) and one runs at the end,
    so memory held by reference cycles is freed as Keras' own calls would free it."""
    import gc

    collect = gc.collect
    gc.collect = lambda generation=2: 0
    try:
        yield
    finally:
        gc.collect = collect
        collect()


def quantizable(layer) -> bool:
    """A built Keras Conv, DepthwiseConv or SeparableConv (the exact class: CONV_CLASSES), float, without
    LoRA: what `make_quantizable` takes."""
    return (
        type(layer) in CONV_CLASSES
        and layer.built
        and layer.quantization_mode is None
        and not getattr(layer, "lora_enabled", False)
    )


def make_quantizable(layer) -> None:
    """Give a float Keras convolution its `quantize` method (int8, int4), in place (the same variables, name and
    graph position; only methods are added), so `Model.quantize` can take it."""
    if not quantizable(layer):
        raise ValueError(
            f"layer {layer.name} ({type(layer).__name__}) is not a float Keras convolution prunecli quantizes"
        )
    layer.__class__ = CONV_CLASSES[type(layer)]
    # Keras' Layer.__new__ bound the float class's `quantize` to the instance inside a wrapper that unlocks
    # the variable tracker around it (quantizing adds variables to a built layer): bind ours the same way.
    ours = type(layer).quantize.__get__(layer)

    def quantize(mode=None, config=None, **kwargs):
        layer._tracker.unlock()
        try:
            ours(mode=mode, config=config, **kwargs)
        finally:
            layer._tracker.lock()

    layer.quantize = quantize


def is_quantized_conv(layer) -> bool:
    return isinstance(layer, (_QuantizedKernel, _QuantizedAttributes)) and layer.quantization_mode in MODES


def kernel_names(layer) -> tuple[str, ...]:
    """The attributes of the kernels a quantized convolution (or its float Keras class) quantizes."""
    cls = CONV_CLASSES.get(type(layer), type(layer))
    return getattr(cls, "KERNELS", ("kernel",))


def quantized_kernels(layer) -> list[tuple[str, object, object]]:
    """(attribute, integer codes in the kernel's layout, scales shaped to divide the codes) of each kernel
    of a quantized convolution."""
    if isinstance(layer, _QuantizedKernel):
        return [("kernel", layer.kernel_codes, layer.kernel_scale)]
    return [(attr, layer.codes(attr), layer._broadcast_scale(attr)) for attr in layer.KERNELS]


# Files written before int4 existed name these classes prunecli>Int8Conv2D etc.: they load as the same classes.
keras.saving.get_custom_objects().update(
    {f"prunecli>{cls.__name__.replace('Quantized', 'Int8', 1)}": cls for cls in CONV_CLASSES.values()}
)
