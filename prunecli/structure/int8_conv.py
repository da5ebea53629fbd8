"""int8 convolutions: Conv1D/2D/3D, their transposes, DepthwiseConv1D/2D and SeparableConv1D/2D whose kernels are stored as
int8 codes with one scale per output channel, so that `--quantize int8` shrinks a CNN's file and not only
its Dense layers.

Why this exists: Keras 3.15's `Model.quantize` quantizes Dense, EinsumDense and embeddings only; a
convolution has no `quantize` method and stays float32. These classes add one, in Keras' own shape:
`quantize("int8")` replaces the float kernel by int8 codes and a `kernel_scale` variable and sets the
`int8_from_<policy>` dtype policy, so Keras saves, loads and calls the layer through its quantization
hooks (`quantized_call` -> `_int8_call`) as it does its int8 Dense.

The grid is the one Keras' int8 Dense writes: symmetric abs-max per output channel,
`q = round(w * s)`, `s = 127 / (max|w| + eps)` over every axis but the last (the kernel's
`(*window, c_in / groups, filters)` layout puts output channels last for both data formats), read back
as `q / s`. A pruned 0 stays exactly 0 (`round(0 * s) = 0`). Unlike Keras' int8 Dense, the inputs are
not quantized: the kernel is dequantized at each call and the convolution runs in float (weight-only,
as Keras' int4 Dense is), because the backends' convolutions have no int8 x int8 path Keras exposes.

A model's float convolutions become these classes in place (`make_quantizable`): the subclass adds
methods only, so the layer keeps its variables, its place in the graph and its name, and
`Model.quantize(filters=...)` then quantizes it with the Dense layers. The saved file names the class
`prunecli>Int8Conv2D`: loading it needs `import prunecli` (registration is in this module), as the
KerasHub decoders prunecli rebuilds do.
"""

from __future__ import annotations

import keras
from keras import ops

INT8_SCHEME = "int8 weights per output channel, dequantized at each call (weight-only: inputs stay float)"


class _Int8Stored:
    """What every int8 convolution saves and how Keras calls it once quantized: the variables of
    `_int8_stored()` in file order (Keras' own saving would write the dequantized float kernels), and
    `call` itself, which computes with the dequantized kernels."""

    def save_own_variables(self, store):
        if self.quantization_mode != "int8":
            return super().save_own_variables(store)
        for i, variable in enumerate(self._int8_stored()):
            store[str(i)] = variable

    def load_own_variables(self, store):
        if self.quantization_mode != "int8":
            return super().load_own_variables(store)
        self._check_load_own_variables(store)
        for i, variable in enumerate(self._int8_stored()):
            variable.assign(store[str(i)])

    def _int8_call(self, inputs):
        return self.call(inputs)


class _Int8Kernel(_Int8Stored):
    """The int8 behaviour shared by the three convolution ranks (a mixin before the Keras class)."""

    def build(self, input_shape):
        super().build(input_shape)
        if self.quantization_mode == "int8":  # loading a saved int8 layer: its codes replace the float kernel
            shape = tuple(self._kernel.shape)
            del self._kernel
            self._int8_variables(shape)
            self._is_quantized = True

    def _int8_variables(self, kernel_shape) -> None:
        self._kernel = self.add_weight(
            name="kernel", shape=kernel_shape, initializer="zeros", dtype="int8", trainable=False
        )
        self.kernel_scale = self.add_weight(
            name="kernel_scale", shape=(self.filters,), initializer="ones", trainable=False
        )

    @property
    def kernel(self):
        """The float kernel the convolution computes with: the stored one, or int8 codes / scale."""
        if self.quantization_mode != "int8":
            return super().kernel
        return ops.divide(ops.cast(self._kernel, self.compute_dtype), self.kernel_scale)

    @property
    def kernel_codes(self):
        """The stored int8 codes (the kernel's layout)."""
        if self.quantization_mode != "int8":
            raise AttributeError(f"layer {self.name} is not quantized to int8")
        return self._kernel

    def get_prunable_weights(self) -> list:
        """The kernel variable as prunecli's targets read it (structure/layers.prunable_weights): the
        int8 codes once quantized (a code is 0 exactly where the weight is), so `verify` checks a
        quantized model's zeros and N:M groups under the same names ("conv/kernel") as the float one."""
        return [self._kernel]

    def _int8_stored(self) -> list:
        """The variables a saved int8 layer holds, in file order: codes, bias, scales."""
        return [self._kernel, *([self.bias] if self.use_bias else []), self.kernel_scale]

    def quantize(self, mode=None, type_check=True, config=None):
        """Keras' layer hook, called by `Model.quantize`: int8 only (no int4/float8 convolution here)."""
        del type_check  # the classes are ours: a subclass of them is as quantizable as they are
        if mode != "int8" or getattr(config, "weight_quantizer", None) is not None:
            raise NotImplementedError(f"{type(self).__name__} quantizes to int8 with the default grid only")
        self._check_quantize_args(mode, self.compute_dtype)
        from keras import dtype_policies, quantizers

        shape = tuple(self._kernel.shape)
        codes, scale = quantizers.abs_max_quantize(self._kernel, axis=tuple(range(len(shape) - 1)), to_numpy=True)
        del self._kernel
        self._int8_variables(shape)
        self._kernel.assign(codes)
        self.kernel_scale.assign(ops.reshape(scale, (self.filters,)))
        self._is_quantized = True  # before the policy: its setter would quantize again
        self.dtype_policy = dtype_policies.get(f"int8_from_{self.dtype_policy.name}")


@keras.saving.register_keras_serializable(package="prunecli")
class Int8Conv1D(_Int8Kernel, keras.layers.Conv1D):
    """Conv1D with an int8 kernel after `quantize("int8")`."""


@keras.saving.register_keras_serializable(package="prunecli")
class Int8Conv2D(_Int8Kernel, keras.layers.Conv2D):
    """Conv2D with an int8 kernel after `quantize("int8")`."""


@keras.saving.register_keras_serializable(package="prunecli")
class Int8Conv3D(_Int8Kernel, keras.layers.Conv3D):
    """Conv3D with an int8 kernel after `quantize("int8")`."""


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


class _Int8Attributes(_Int8Stored):
    """The int8 behaviour of depthwise, separable and transposed convolutions, whose `call` reads their
    kernels as plain attributes (`kernel`; `depthwise_kernel` and `pointwise_kernel`): once quantized each
    of those attributes holds int8 codes and `<attribute>_scale` its scales, and `call` computes with the
    dequantized kernels. One scale per output channel, as for Conv (`scaled_axes`).

    Each family's `convolve(layer, inputs, kernel_of)` is the layer's computation with the kernels
    `kernel_of(attribute)` gives: the dequantized ones here, fake-quantized float ones in QAT
    (training/fake_quant.py), so both compute the same thing by construction."""

    INT8_KERNELS: tuple[str, ...] = ()
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
        kernel, scale = getattr(self, attr), getattr(self, f"{attr}_scale")
        axes = self._scaled_axes(attr, len(kernel.shape))
        return ops.reshape(scale, [1 if axis in axes else size for axis, size in enumerate(kernel.shape)])

    def call(self, inputs):
        if self.quantization_mode != "int8":
            return super().call(inputs)
        return type(self).convolve(self, inputs, self.dequantized)

    def build(self, input_shape):
        super().build(input_shape)
        if self.quantization_mode == "int8":  # loading a saved int8 layer: its codes replace the float kernels
            shapes = {attr: tuple(getattr(self, attr).shape) for attr in self.INT8_KERNELS}
            for attr in self.INT8_KERNELS:
                delattr(self, attr)
            self._int8_variables(shapes)
            self._is_quantized = True

    def _int8_variables(self, shapes: dict) -> None:
        for attr, shape in shapes.items():
            axes = self._scaled_axes(attr, len(shape))
            scale_shape = tuple(size for axis, size in enumerate(shape) if axis not in axes)
            setattr(
                self, attr, self.add_weight(name=attr, shape=shape, initializer="zeros", dtype="int8", trainable=False)
            )
            setattr(
                self,
                f"{attr}_scale",
                self.add_weight(name=f"{attr}_scale", shape=scale_shape, initializer="ones", trainable=False),
            )

    def dequantized(self, attr: str):
        """A kernel as the layer computes with it: the float one, or int8 codes / scale."""
        if self.quantization_mode != "int8":
            return getattr(self, attr)
        return ops.divide(ops.cast(getattr(self, attr), self.compute_dtype), self._broadcast_scale(attr))

    def get_prunable_weights(self) -> list:
        """The kernels prunecli's targets read, under their float names: the int8 codes once quantized."""
        return [getattr(self, attr) for attr in self.INT8_KERNELS]

    def _int8_stored(self) -> list:
        scales = [getattr(self, f"{attr}_scale") for attr in self.INT8_KERNELS]
        return [*self.get_prunable_weights(), *([self.bias] if self.use_bias else []), *scales]

    def quantize(self, mode=None, type_check=True, config=None):
        """Keras' layer hook, called by `Model.quantize`: int8 with the default grid only."""
        del type_check
        if mode != "int8" or getattr(config, "weight_quantizer", None) is not None:
            raise NotImplementedError(f"{type(self).__name__} quantizes to int8 with the default grid only")
        self._check_quantize_args(mode, self.compute_dtype)
        from keras import dtype_policies, quantizers

        quantized = {}
        for attr in self.INT8_KERNELS:
            kernel = getattr(self, attr)
            axes = self._scaled_axes(attr, len(kernel.shape))
            codes, scale = quantizers.abs_max_quantize(kernel, axis=axes, to_numpy=True)
            quantized[attr] = (tuple(kernel.shape), codes, scale)
            delattr(self, attr)
        self._int8_variables({attr: shape for attr, (shape, _, _) in quantized.items()})
        for attr, (_shape, codes, scale) in quantized.items():
            getattr(self, attr).assign(codes)
            target = getattr(self, f"{attr}_scale")
            target.assign(ops.reshape(scale, target.shape))
        self._is_quantized = True
        self.dtype_policy = dtype_policies.get(f"int8_from_{self.dtype_policy.name}")


class _Int8Depthwise(_Int8Attributes):
    INT8_KERNELS = ("kernel",)
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


class _Int8Separable(_Int8Attributes):
    INT8_KERNELS = ("depthwise_kernel", "pointwise_kernel")

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


class _Int8Transpose(_Int8Attributes):
    """A transposed convolution's kernel is (*window, filters, input channels): its scale is per filter,
    over every other axis."""

    INT8_KERNELS = ("kernel",)

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
class Int8Conv1DTranspose(_Int8Transpose, keras.layers.Conv1DTranspose):
    """Conv1DTranspose with an int8 kernel after `quantize("int8")`."""


@keras.saving.register_keras_serializable(package="prunecli")
class Int8Conv2DTranspose(_Int8Transpose, keras.layers.Conv2DTranspose):
    """Conv2DTranspose with an int8 kernel after `quantize("int8")`."""


@keras.saving.register_keras_serializable(package="prunecli")
class Int8Conv3DTranspose(_Int8Transpose, keras.layers.Conv3DTranspose):
    """Conv3DTranspose with an int8 kernel after `quantize("int8")`."""


@keras.saving.register_keras_serializable(package="prunecli")
class Int8DepthwiseConv1D(_Int8Depthwise, keras.layers.DepthwiseConv1D):
    """DepthwiseConv1D with an int8 kernel after `quantize("int8")`."""


@keras.saving.register_keras_serializable(package="prunecli")
class Int8DepthwiseConv2D(_Int8Depthwise, keras.layers.DepthwiseConv2D):
    """DepthwiseConv2D with an int8 kernel after `quantize("int8")`."""


@keras.saving.register_keras_serializable(package="prunecli")
class Int8SeparableConv1D(_Int8Separable, keras.layers.SeparableConv1D):
    """SeparableConv1D with int8 depthwise and pointwise kernels after `quantize("int8")`."""


@keras.saving.register_keras_serializable(package="prunecli")
class Int8SeparableConv2D(_Int8Separable, keras.layers.SeparableConv2D):
    """SeparableConv2D with int8 depthwise and pointwise kernels after `quantize("int8")`."""


INT8_CLASSES = {
    keras.layers.Conv1D: Int8Conv1D,
    keras.layers.Conv2D: Int8Conv2D,
    keras.layers.Conv3D: Int8Conv3D,
    keras.layers.DepthwiseConv1D: Int8DepthwiseConv1D,
    keras.layers.DepthwiseConv2D: Int8DepthwiseConv2D,
    keras.layers.SeparableConv1D: Int8SeparableConv1D,
    keras.layers.SeparableConv2D: Int8SeparableConv2D,
    keras.layers.Conv1DTranspose: Int8Conv1DTranspose,
    keras.layers.Conv2DTranspose: Int8Conv2DTranspose,
    keras.layers.Conv3DTranspose: Int8Conv3DTranspose,
}


def quantizable(layer) -> bool:
    """A built Keras Conv, DepthwiseConv or SeparableConv (the exact class: INT8_CLASSES), float, without
    LoRA: what `make_quantizable` takes."""
    return (
        type(layer) in INT8_CLASSES
        and layer.built
        and layer.quantization_mode is None
        and not getattr(layer, "lora_enabled", False)
    )


def make_quantizable(layer) -> None:
    """Give a float Keras convolution its int8 `quantize` method, in place (the same variables, name and
    graph position; only methods are added), so `Model.quantize` can take it."""
    if not quantizable(layer):
        raise ValueError(
            f"layer {layer.name} ({type(layer).__name__}) is not a float Keras convolution prunecli quantizes"
        )
    layer.__class__ = INT8_CLASSES[type(layer)]
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


def is_int8_conv(layer) -> bool:
    return isinstance(layer, (_Int8Kernel, _Int8Attributes)) and layer.quantization_mode == "int8"


def kernel_names(layer) -> tuple[str, ...]:
    """The attributes of the kernels an int8 convolution (or its float Keras class) quantizes."""
    cls = INT8_CLASSES.get(type(layer), type(layer))
    return getattr(cls, "INT8_KERNELS", ("kernel",))


def int8_kernels(layer) -> list[tuple[str, object, object]]:
    """(attribute, int8 codes, scales shaped to divide the codes) of each kernel of a quantized int8
    convolution."""
    if isinstance(layer, _Int8Kernel):
        return [("kernel", layer.kernel_codes, layer.kernel_scale)]
    return [(attr, getattr(layer, attr), layer._broadcast_scale(attr)) for attr in layer.INT8_KERNELS]
