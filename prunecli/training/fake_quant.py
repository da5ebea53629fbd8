"""Quantisation-aware fine-tuning: the layers that `--quantize` will hand to `Model.quantize` (Keras'
Dense/EinsumDense, and the convolutions structure/quantized_conv.py quantizes) compute, inside the compiled masked step, with the weights (and inputs) Keras will
use after quantisation, so fine-tuning learns the quantisation error.

What Keras 3.15 offers, and what is used here: there is no int8/int4 QAT in Keras 3.15 (its quantized
Dense trains only the bias and LoRA; float8 trains with delayed scaling). `keras.quantizers` has
`abs_max_quantize` and `abs_max_quantize_grouped_with_zero_point`, the very functions
`Dense.quantize` / `EinsumDense.quantize` call, and `fake_quant_with_min_max_vars` (TF-style,
asymmetric with a nudged zero point: not the grid `Model.quantize` writes). So the fake quantisation
here calls Keras' own quantizers with the axes and ranges Keras' layers use, dequantizes, and passes
the gradient straight through (`w + stop_gradient(dequant(quant(w)) - w)`):

- int8 weights: per output channel, symmetric abs-max over the reduction axis (Dense: axis 0;
  EinsumDense: Keras' `_kernel_reduced_axes`), `q = round(w * 127 / (max|w| + eps))`, read as `q / s`.
- int8 inputs: as Keras' int8 layers do at run time, per row (Dense: the last axis; EinsumDense:
  Keras' `_input_reduced_axes`), symmetric abs-max, straight-through like Keras' own input gradient.
- convolutions (Conv, ConvTranspose, DepthwiseConv, SeparableConv: prunecli's own quantized layers,
  structure/quantized_conv.py): each kernel per output channel, symmetric abs-max on [-127, 127] (int8)
  or [-8, 7] (int4) (a depthwise kernel over its window only); inputs stay float (weight-only layers).
- int4 Dense: Keras' default `Int4QuantizationConfig`, groups of 128 input rows, asymmetric with an
  integer zero point; inputs stay float (Keras' int4 is weight-only). Not EinsumDense.

Pruned weights: `quant(0) = 0` on both grids (see outputs/quantize.py), the abs-max scales depend on the
kept weights only, and the masks are re-applied after every optimizer step as without QAT, so a pruned
weight is exactly 0 before and after `Model.quantize`. N:M layouts are untouched: nothing here moves
a mask.

The fake quantisation is installed only while the compiled step is traced (`active`): the float
model outside the step (scoring, evaluation, saving) is the plain Keras model.
"""

from __future__ import annotations

import contextlib

from prunecli.config.fields import QAT_MODES
from prunecli.errors import ConfigError

QUANTIZED_CLASSES = ("Dense", "EinsumDense")  # the Keras classes Model.quantize quantizes and prunecli reads back
INT4_BLOCK = 128  # Keras 3.15's Int4QuantizationConfig default block_size


def quantizable_layers(model, mode: str, owned: dict | None = None) -> list:
    """The layers `--quantize mode` quantizes and prunecli can read back: Keras' own Dense and
    EinsumDense (not subclasses) and, for int8 and int4, Keras' Conv, DepthwiseConv and SeparableConv
    layers (prunecli's quantized convolutions, structure/quantized_conv.py); built, not already quantized,
    without LoRA, and not kept float by their owner (`float_by_owner`, walked here unless given)."""
    import keras

    from prunecli.structure import keras_graph, quantized_conv

    classes = tuple(getattr(keras.layers, name) for name in QUANTIZED_CLASSES)
    owned = float_by_owner(model) if owned is None else owned
    return [
        layer
        for layer in keras_graph.all_layers(model)
        if id(layer) not in owned
        and (
            (type(layer) in classes and layer.built and not already_quantized(layer) and not has_lora(layer))
            or (mode in quantized_conv.MODES and quantized_conv.quantizable(layer))
        )
    ]


TRUSTED_MODULES = ("keras.", "keras_hub.", "prunecli.")  # layer classes whose configs rebuild quantized parts


def float_by_owner(model) -> dict[int, str]:
    """{id(layer): why it stays float} for every layer whose owner keeps it from being quantized:
    - inside a layer class of the user's own (not a model, not Keras', KerasHub's or prunecli's): such
      a class's config rebuilds its sub-layers as float layers, so a quantized one is saved with
      weights the reloaded layer cannot take (oskut's attention, bench/ZOO.md: "dense_5 expected 2
      variables, but received 3");
    - inside TimeDistributed: Keras 3.15's wrapper calls its layer's `call` directly, not through
      Layer.__call__, which is where a quantized layer switches to its quantized call, so the int8
      codes are read as float weights (a Dense(5) inside it: outputs 751x the float ones; oskut's
      word segmenter 87.5% -> 65.4%)."""
    import keras

    from prunecli.structure import keras_graph

    owned: dict[int, str] = {}

    def walk(layer, why: str | None) -> None:
        for child in keras_graph.children(layer):
            if why is not None:
                owned[id(child)] = why
            elif isinstance(layer, keras.layers.TimeDistributed):
                owned[id(child)] = "inside TimeDistributed, which Keras calls without its quantized path"
            user = not keras_graph.is_model(child) and not type(child).__module__.startswith(TRUSTED_MODULES)
            inner = f"inside {type(child).__name__}, a layer class of your own: its config rebuilds it as a float layer"
            walk(child, why or owned.get(id(child)) or (inner if user else None))

    walk(model, None)
    _rebuilt_convolutions(model, owned)
    return owned


def _rebuilt_convolutions(model, owned: dict[int, str]) -> None:
    """Quantizable layers inside a model or layer whose config rebuilds them from its own arguments (a
    KerasHub backbone or task, or one of their blocks: anything but Keras' functional and Sequential
    classes and Keras' own layers) stay float where that config does not record them quantized:
    - a convolution, always: prunecli quantizes one by giving it its quantized class in place, which such
      a config does not record, so the reloaded layer is Keras' float one and cannot take the saved
      codes (a MobileNet image classifier's int8 file: "expected 1 variables, but received 0");
    - a Dense, EinsumDense or Embedding, unless a KerasHub backbone holds it (its config records each
      quantized layer's dtype policy by path) and builds it with that record (`_takes_recorded_policy`);
      an image classifier's own head is rebuilt float ("predictions expected 2 variables, but received
      0"), and so are MiT's attention and feed-forward Dense layers, built without the backbone's dtype
      ("A total of 12 objects could not be loaded").
    (`-g layer` and --quantize open a KerasHub image model whose graph is all it computes first,
    run/steps.open_nested: its layers are then quantized.)"""
    import keras

    from prunecli.structure import keras_graph, quantized_conv, rebuild

    kinds = tuple(getattr(keras.layers, name) for name in QUANTIZED_CLASSES) + (keras.layers.Embedding,)
    # Keras' own layers that make their projections from their arguments: MultiHeadAttention's query,
    # key, value and output EinsumDense reload float (a plain model's int8 file: "Layer 'key' expected 2
    # variables, but received 0", exit 4 after the whole run), unless a KerasHub backbone records them
    builders = (keras.layers.MultiHeadAttention, keras.layers.GroupQueryAttention)

    def walk(layer, owner, recorded) -> None:
        for child in keras_graph.children(layer):
            conv = type(child) in quantized_conv.CONV_CLASSES
            kept = recorded is not None and recorded(child)
            if owner is not None and id(child) not in owned and (conv or (isinstance(child, kinds) and not kept)):
                owned[id(child)] = (
                    f"inside {type(owner).__name__}, whose config rebuilds it as Keras' float {type(child).__name__}:"
                    " quantized there, it would not reload"
                )
                if recorded is not None and not conv:
                    owned[id(child)] = (
                        f"inside {type(layer).__name__}, which builds it without {type(recorded.backbone).__name__}'s"
                        " dtype policy: quantized there, it would reload float"
                    )
            rebuilt = not (_graph_config(child) if keras_graph.is_model(child) else rebuild.keras_own(child))
            rebuilt = rebuilt or isinstance(child, builders)
            walk(child, child if rebuilt else owner, recorded or _recorded_policies(child))

    walk(model, None if _graph_config(model) else model, _recorded_policies(model))


class _RecordedPolicies:
    """Which layers of a KerasHub backbone reload with the dtype policy its config records for them (a
    DTypePolicyMap looked up by each layer's path): those it builds with its own dtype, which then hold
    the very policy object the backbone holds. A layer a block builds with no dtype (MiT's
    SegFormerMultiheadAttention and MixFFN make their Dense layers so) holds Keras' global default
    instead, and reloads float whatever the map says: its saved int8 codes were refused. A backbone built
    in this process with no dtype holds the global default itself, so nothing tells them apart there:
    every layer counts as recorded, and the reload check is what stops a file that does not load."""

    def __init__(self, backbone):
        import keras

        self.backbone = backbone
        self.policy = backbone._dtype_policy
        self.told_apart = self.policy is not keras.config.dtype_policy()

    def __call__(self, layer) -> bool:
        return not self.told_apart or layer._dtype_policy is self.policy


def _recorded_policies(model) -> _RecordedPolicies | None:
    """For a KerasHub backbone, whose config records its quantized layers' dtype policies (DTypePolicyMap),
    which of its layers reload with them; None for any other model or layer."""
    if any(c.__name__ == "Backbone" and c.__module__.startswith("keras_hub") for c in type(model).__mro__):
        return _RecordedPolicies(model)
    return None


def _graph_config(model) -> bool:
    """Whether the model's config is its graph, every layer's own config in it (Keras' functional and
    Sequential classes, and a functional subclass that keeps their get_config), not its constructor's
    arguments (a KerasHub backbone or task, a subclassed model)."""
    from prunecli.structure import rebuild

    if rebuild.plain_model(model):
        return True
    try:
        return "layers" in model.get_config()
    except Exception:  # noqa: BLE001 - a model that cannot describe itself rebuilds nothing from a config
        return False


def quantized_kinds(mode: str) -> str:
    """The layer classes `--quantize mode` takes, for messages."""
    from prunecli.structure import quantized_conv

    kinds = list(QUANTIZED_CLASSES) + (
        ["Conv1D/2D/3D", "Conv1D/2D/3DTranspose", "DepthwiseConv1D/2D", "SeparableConv1D/2D"]
        if mode in quantized_conv.MODES
        else []
    )
    return ", ".join(kinds[:-1]) + " and " + kinds[-1]


def already_quantized(layer) -> bool:
    from prunecli.structure.layers import quantization_mode

    return quantization_mode(layer) is not None


def has_lora(layer) -> bool:
    return bool(getattr(layer, "lora_enabled", False))


def for_run(model, mode: str) -> FakeQuant:
    """The fake quantisation of `model` for `--quantize mode`; a model with no layer it applies to is a
    one-line ConfigError before any training."""
    fake = FakeQuant(quantizable_layers(model, mode), mode)
    if not fake.layers:
        skipped = "; int4 QAT leaves EinsumDense float" if mode == "int4" else ""
        raise ConfigError(
            f"--qat with --quantize {mode}: no layer of this model takes it ({quantized_kinds(mode)} layers "
            f"quantize to {mode}{skipped}; this model has none); use --qat off"
        )
    return fake


class FakeQuant:
    """The fake-quantized forward pass of `layers` for `mode`, installed by `active()`.

    Args:
        layers: the layers to fake-quantize (`quantizable_layers`); for int4, not EinsumDense (its
            grouped int4 grid is not written here: listed in `skipped`).
        mode: "int8" or "int4".
    """

    def __init__(self, layers: list, mode: str):
        import keras

        if mode not in QAT_MODES:
            raise ValueError(f"no fake quantisation for {mode!r}")
        self.mode = mode
        self.layers, self.skipped = [], []
        for layer in layers:
            if mode == "int4" and type(layer) is keras.layers.EinsumDense:
                self.skipped.append(layer)
            else:
                self.layers.append(layer)

    @contextlib.contextmanager
    def active(self):
        """Within this block (the compiled step's forward pass, while it is traced), each layer calls
        its fake-quantized version; the layers' own `call` is back afterwards."""
        installed = []
        try:
            for layer in self.layers:
                layer.call = _fake_call(layer, self.mode)
                installed.append(layer)
            yield
        finally:
            for layer in installed:
                del layer.call

    def describe(self) -> dict:
        return {
            "mode": self.mode,
            "layers": [layer.name for layer in self.layers],
            "weights": WEIGHT_SCHEMES[self.mode],
            "inputs": INPUT_SCHEMES[self.mode],
            "gradient": "straight-through (identity) for weights and inputs",
            **({"not_fake_quantized": [layer.name for layer in self.skipped]} if self.skipped else {}),
        }


WEIGHT_SCHEMES = {
    "int8": "keras.quantizers.abs_max_quantize per output channel (the grid Model.quantize('int8') writes)",
    "int4": "keras.quantizers.abs_max_quantize_grouped_with_zero_point, 128-row groups (Model.quantize('int4'));"
    " convolutions per output channel, abs-max over [-8, 7]",
}
INPUT_SCHEMES = {
    "int8": "abs-max per row at run time, as Keras' int8 layers quantize their inputs (convolutions: float)",
    "int4": "float (Keras' int4 is weight-only)",
}


def _fake_call(layer, mode: str):
    """A replacement for `layer.call` computing with fake-quantized kernel and inputs; bias and activation
    as in Keras' Dense/EinsumDense.call."""
    import keras
    from keras import ops

    from prunecli.structure import quantized_conv

    if type(layer) in quantized_conv.CONV_CLASSES:
        plain = not hasattr(quantized_conv.CONV_CLASSES[type(layer)], "convolve")  # Conv1D/2D/3D
        return _fake_conv_call(layer, mode) if plain else _fake_attrs_call(layer, mode)
    if type(layer) is keras.layers.EinsumDense:
        layer._set_quantization_info()  # Keras' own reduction axes for this equation (what quantize() uses)
        kernel_axes = tuple(layer._kernel_reduced_axes)
        input_axes = tuple(layer._input_reduced_axes)

        def product(inputs, kernel):
            return ops.einsum(layer.equation, inputs, kernel)
    else:
        kernel_axes, input_axes = (0,), (-1,)

        def product(inputs, kernel):
            return ops.matmul(inputs, kernel)

    def call(inputs, training=None):
        kernel = layer.kernel
        if mode == "int8":
            kernel = straight_through(kernel, channel_weights(kernel, kernel_axes))
            inputs = straight_through(inputs, int8_inputs(inputs, input_axes))
        else:
            kernel = straight_through(kernel, int4_weights(kernel))
        x = product(inputs, kernel)
        if layer.bias is not None:
            x = ops.add(x, layer.bias)
        if layer.activation is not None:
            x = layer.activation(x)
        return x

    return call


def _fake_conv_call(layer, mode: str):
    """A Conv1D/2D/3D's `call` with its kernel on `mode`'s grid of structure/quantized_conv.py (per output
    channel, over every other axis); inputs stay float, as that layer's are (weight-only)."""
    from keras import ops

    from prunecli.structure import quantized_conv

    axes = tuple(range(len(layer.kernel.shape) - 1))
    channels_last = layer.data_format == "channels_last"

    causal = layer.padding == "causal"  # Conv1D pads its input on the left itself (Conv1D.call), then VALID
    left = layer.dilation_rate[0] * (layer.kernel_size[0] - 1)
    pads = [[0, 0], [left, 0], [0, 0]] if channels_last else [[0, 0], [0, 0], [left, 0]]
    padding = "valid" if causal else layer.padding

    def call(inputs):
        kernel = straight_through(layer.kernel, channel_weights(layer.kernel, axes, mode))
        if causal:
            inputs = ops.pad(inputs, pads)
        x = ops.conv(
            inputs,
            kernel,
            strides=list(layer.strides),
            padding=padding,
            dilation_rate=layer.dilation_rate,
            data_format=layer.data_format,
        )
        return quantized_conv.bias_and_activation(layer, x, layer.filters)

    return call


def _fake_attrs_call(layer, mode: str):
    """A DepthwiseConv, SeparableConv or ConvTranspose `call`: the computation of the quantized layer it
    becomes (structure/quantized_conv.py's `convolve`), with each float kernel fake-quantized on that
    layer's grid instead of dequantized from codes. Inputs stay float."""
    from prunecli.structure import quantized_conv

    quantized_class = quantized_conv.CONV_CLASSES[type(layer)]

    def fake(attr):
        kernel = getattr(layer, attr)
        axes = quantized_class.scaled_axes(attr, layer.rank, len(kernel.shape))
        return straight_through(kernel, channel_weights(kernel, axes, mode))

    def call(inputs):
        return quantized_class.convolve(layer, inputs, fake)

    return call


def straight_through(x, quantized):
    """`quantized` forward, identity backward."""
    from keras import ops

    return ops.add(x, ops.stop_gradient(ops.subtract(quantized, x)))


def channel_weights(kernel, axes, mode: str = "int8"):
    """The kernel as a per-channel quantized layer computes with it (Keras' int8 layers; prunecli's int8
    and int4 convolutions): `abs_max_quantize` codes over `axes` (the reduction axes: one scale per
    output channel) on `mode`'s code range, divided by their scale."""
    from keras import ops, quantizers

    from prunecli.structure.quantized_conv import CODE_RANGES

    codes, scale = quantizers.abs_max_quantize(kernel, axis=axes, value_range=CODE_RANGES[mode], dtype=kernel.dtype)
    return ops.divide(codes, scale)


def int8_inputs(inputs, axes):
    """The inputs as Keras' int8 layer quantizes them at run time (AbsMaxQuantizer over `axes`)."""
    from keras import ops, quantizers

    codes, scale = quantizers.abs_max_quantize(inputs, axis=axes, dtype=inputs.dtype)
    return ops.divide(codes, scale)


def int4_weights(kernel, block_size: int = INT4_BLOCK):
    """A Dense kernel (in, out) as Keras' default int4 layer computes with it: groups of `block_size`
    input rows (the last one padded with zeros), asymmetric over the group's min and max, 16 levels,
    an integer zero point in [-8, 7]; read back as `(q - z) * s`. The arithmetic of the NumPy path of
    Keras 3.15's `abs_max_quantize_grouped_with_zero_point` (the one `Dense.quantize` takes), written
    with static shapes: Keras' tensor path tests a symbolic size in Python and cannot be traced in a
    tf.function. A fully pruned group reads back as 0 (`s = eps / 15`, `q = z = -8`)."""
    from keras import backend, ops

    rows, columns = int(kernel.shape[0]), int(kernel.shape[1])
    groups = -(-rows // block_size)
    padded = ops.pad(kernel, [[0, groups * block_size - rows], [0, 0]])
    grouped = ops.reshape(padded, (groups, block_size, columns))
    low, high = ops.min(grouped, axis=1, keepdims=True), ops.max(grouped, axis=1, keepdims=True)
    scale = ops.divide(ops.subtract(high, low) + backend.epsilon(), 15.0)
    zero = ops.clip(ops.round(ops.divide(ops.negative(low), scale)) - 8.0, -8.0, 7.0)
    codes = ops.clip(ops.round(ops.divide(grouped, scale)) + zero, -8.0, 7.0)
    back = ops.multiply(ops.subtract(codes, zero), scale)
    return ops.reshape(back, (groups * block_size, columns))[:rows]
