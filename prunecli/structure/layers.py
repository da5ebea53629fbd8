"""The one table of what prunecli knows about each Keras layer class.

Every module that needs to know how a layer treats channels reads this table: which weights are pruned
and along which axis (selection/targets.py), how channels flow through it (structure/channels.py), which
per-channel parameters follow a removed channel and how the layer is sliced (structure/surgery.py,
structure/features.py), which layers data-driven scoring may read past (scoring/_data.py), and how its
multiply-adds are counted (structure/flops.py). A new layer type is one `register(...)` call.

Roles (how one call moves the channels of its input's last axis):
  input        a model input
  mixer        weights that mix channels into new ones (Dense, Conv, SeparableConv, ConvTranspose); an
               Embedding too, reading token ids instead of channels: each column of its table is a
               channel of its output (family "embedding", no readers)
  channelwise  keeps each channel apart, position for position (BatchNorm, activations, pooling,
               padding, dropout, DepthwiseConv); Reshape when its last axis is unchanged
  merge        joins same-shape tensors element by element (Add, Multiply, ...); a channel of the
               output is the same channel in every input
  concat       joins tensors along an axis (Concatenate)
  flatten      flattens spatial positions and channels into one axis (Flatten)
  recurrent    a recurrent layer (LSTM, GRU, SimpleRNN, Bidirectional of one) that makes new channels,
               its units, from its input and its own previous output; its cell holds the weights
               (the cell's record: role weights, family rnn). The unit axis of each
               weight holds `gates` blocks of `units` columns in Keras' gate order (LSTM i f c o, GRU
               z r h): unit j owns column g*units + j of every block of kernel, recurrent_kernel and
               bias (the last axis of GRU's (2, 3*units) bias), and recurrent_kernel row j. With the
               `state_gate` block's column and bias zero and act(0) = 0, the unit outputs exactly 0 at
               every step from a zero initial state, so it can be cut out
  attention    Keras' Attention and AdditiveAttention on [query, value(, key)]: the output's channels are the
               value's (a weighted mean of value rows over the steps); channel j of the query and of the
               key meet only in the scores' term of j (q_j * k_j, or scale_j * tanh(q_j + k_j)), which
               is exactly 0 when both are 0: they are one channel, removed with AdditiveAttention's
               `scale` entry (followers, side "in": the query's)
  weights      holds prunable weights the channel graph does not slice itself (EinsumDense,
               attention: pruned by masks, never shrunk; an RNN cell, sliced through its recurrent layer)
  other        anything else: channels through it are left alone

Keras operations that are graph nodes but not layers (`h + f(h)`, `keras.ops.relu(h)`) have their own
table, `OPS`, keyed by the operation's class name; element-wise unary operations are channelwise and
binary arithmetic is a merge (or channelwise when the other operand is a Python number).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

ROLES = ("input", "mixer", "channelwise", "merge", "concat", "flatten", "recurrent", "attention", "weights", "other")
MACS_RULES = ("dense", "einsum", "conv", "transpose", "separable", "rnn", "bidirectional", "attention", "zero")


@dataclass(frozen=True)
class LayerSpec:
    """What prunecli knows about one layer class.

    prunable   (weight attribute, unit axis): the weights pruned, the axis that indexes output units
    bias       the attribute holding one value per output unit of a mixer ("" when none)
    followers  per-channel parameters of a channelwise layer, (attribute, axis, side): side "in" is
               indexed by the input channel, "mid" by the output channel (depthwise: c * multiplier + m).
               A removed channel removes these slices; masks zero them so the channel is exactly f(0).
    readers    weights that read the input's channels, (attribute, axis, side); side "mid" indexes the
               depthwise outputs of a separable convolution (input c -> c * multiplier + m)
    family     how surgery slices it (dense | conv | separable | transpose | depthwise | rnn | embedding); None: not
               sliced (a recurrent cell is sliced through the layer that runs it)
    width_key  the config key of its output width (units, filters)
    macs       rule counting its multiply-adds (one of MACS_RULES), or a callable
               (layer, in_shapes, out_shapes) -> (dense, nonzero); None: 0 if it has no weight matrix
    pointwise  acts on each value alone without changing the shape (activations, BatchNorm, dropout):
               data-driven scoring may read a unit's output after it
    gates      recurrent: blocks of `units` columns on the unit axis (LSTM 4, GRU 3, SimpleRNN 1)
    state_gate recurrent: the block whose zero slices make a unit output exactly act(0) (LSTM's
               candidate c, GRU's candidate h)
    """

    role: str
    prunable: tuple[tuple[str, int], ...] = ()
    bias: str = ""
    followers: tuple[tuple[str, int, str], ...] = ()
    readers: tuple[tuple[str, int, str], ...] = ()
    family: str | None = None
    width_key: str | None = None
    macs: str | Callable | None = None
    pointwise: bool = False
    gates: int = 1
    state_gate: int = 0

    @property
    def shrinkable(self) -> bool:
        """Surgery can remove this layer's units physically (the others stay masked)."""
        return self.family is not None


OTHER = LayerSpec("other")

_BN = LayerSpec(
    "channelwise",
    followers=(("gamma", 0, "in"), ("beta", 0, "in"), ("moving_mean", 0, "in"), ("moving_variance", 0, "in")),
    pointwise=True,
)
_POINTWISE = LayerSpec("channelwise", pointwise=True)
_PLACE = LayerSpec("channelwise")  # keeps channels apart, changes positions (pooling, padding, cropping)


def _dense() -> LayerSpec:
    return LayerSpec(
        "mixer",
        prunable=(("kernel", -1),),
        bias="bias",
        readers=(("kernel", 0, "in"),),
        family="dense",
        width_key="units",
        macs="dense",
    )


def _conv() -> LayerSpec:
    return LayerSpec(
        "mixer",
        prunable=(("kernel", -1),),
        bias="bias",
        readers=(("kernel", -2, "in"),),
        family="conv",
        width_key="filters",
        macs="conv",
    )


def _transpose() -> LayerSpec:
    return LayerSpec(
        "mixer",
        prunable=(("kernel", -2),),
        bias="bias",
        readers=(("kernel", -1, "in"),),
        family="transpose",
        width_key="filters",
        macs="transpose",
    )


def _separable() -> LayerSpec:
    return LayerSpec(
        "mixer",
        prunable=(("depthwise_kernel", -2), ("pointwise_kernel", -1)),
        bias="bias",
        readers=(("depthwise_kernel", -2, "in"), ("pointwise_kernel", -2, "mid")),
        family="separable",
        width_key="filters",
        macs="separable",
    )


def _depthwise() -> LayerSpec:
    # Keras 3 names the depthwise weight "kernel"
    return LayerSpec(
        "channelwise",
        prunable=(("kernel", -2),),
        followers=(("kernel", -2, "in"), ("bias", 0, "mid")),
        family="depthwise",
        macs="conv",
    )


def _recurrent_cell(family: str | None = "rnn") -> LayerSpec:
    # the cell's units are sliced through the LSTM/GRU/SimpleRNN layer that runs it (family "rnn")
    return LayerSpec("weights", prunable=(("kernel", -1), ("recurrent_kernel", -1)), family=family)


def _recurrent(gates: int, state_gate: int) -> LayerSpec:
    return LayerSpec(
        "recurrent",
        bias="bias",
        readers=(("kernel", 0, "in"),),
        family="rnn",
        width_key="units",
        macs="rnn",
        gates=gates,
        state_gate=state_gate,
    )


LAYERS: dict[str, LayerSpec] = {
    "InputLayer": LayerSpec("input"),
    "Dense": _dense(),
    "EinsumDense": LayerSpec("weights", prunable=(("kernel", -1),), macs="einsum"),
    "Embedding": LayerSpec(
        "mixer", prunable=(("embeddings", -1),), family="embedding", width_key="output_dim", macs="zero"
    ),
    "LSTMCell": _recurrent_cell(),
    "GRUCell": _recurrent_cell(),
    "SimpleRNNCell": _recurrent_cell(),
    "ConvLSTMCell": _recurrent_cell(None),
    "LSTM": _recurrent(4, 2),  # gates i, f, c, o
    "GRU": _recurrent(3, 2),  # gates z, r, h
    "SimpleRNN": _recurrent(1, 0),
    "Bidirectional": LayerSpec("recurrent", family="rnn", macs="bidirectional"),  # its parts are LSTM/GRU/SimpleRNN
    "MultiHeadAttention": LayerSpec("other", macs="attention"),
    "Attention": LayerSpec("attention"),  # its scale and concat_score_weight are single numbers
    "AdditiveAttention": LayerSpec("attention", followers=(("scale", 0, "in"),)),
    "BatchNormalization": _BN,
    "PReLU": LayerSpec("channelwise", followers=(("alpha", -1, "in"),), pointwise=True),
    "Reshape": LayerSpec("channelwise"),  # only while its last axis is unchanged (channels.classify)
    "Flatten": LayerSpec("flatten"),
    "Concatenate": LayerSpec("concat"),
    "FoldSteps": LayerSpec("channelwise"),  # a TimeDistributed(Model)'s steps as one batch (folded_steps.py)
    "UnfoldSteps": LayerSpec("channelwise"),
    "Softmax": LayerSpec("other"),  # mixes the channels it normalises over
}
# KerasHub's mixture-of-experts weight banks: every expert's kernels stacked as (experts, inputs, outputs),
# called on all tokens at once in its own `call`. Pruned element-wise, as EinsumDense is (47-77% of a
# Mixtral's, Qwen-MoE's or GPT-OSS's parameters were out of reach), not calibrated; -g neuron removes the
# units inside each expert (structure/experts.py).
_EXPERT_BANKS = {
    "MixtralMoeExperts": ("gate", "intermediate", "output"),
    "QwenMoeExperts": ("gate", "output"),
    "Qwen3MoeExperts": ("gate", "output"),
}
for _name, _parts in _EXPERT_BANKS.items():
    LAYERS[_name] = LayerSpec("weights", prunable=tuple((f"_expert_feedforward_{p}_dense", -1) for p in _parts))
LAYERS["GptOssExperts"] = LayerSpec("weights", prunable=(("gate_up_proj", -1), ("down_proj", -1)))
for _d in ("1D", "2D", "3D"):
    LAYERS[f"Conv{_d}"] = _conv()
    LAYERS[f"Conv{_d}Transpose"] = _transpose()
    for _name in ("MaxPooling", "AveragePooling", "GlobalAveragePooling", "GlobalMaxPooling"):
        LAYERS[f"{_name}{_d}"] = _PLACE
    for _name in ("ZeroPadding", "Cropping", "UpSampling"):
        LAYERS[f"{_name}{_d}"] = _PLACE
    LAYERS[f"SpatialDropout{_d}"] = _POINTWISE
for _d in ("1D", "2D"):
    LAYERS[f"SeparableConv{_d}"] = _separable()
    LAYERS[f"DepthwiseConv{_d}"] = _depthwise()
for _name in (
    "Activation",  # only element-wise activations (channels.classify checks; softmax mixes)
    "ReLU",
    "LeakyReLU",
    "ELU",
    "Dropout",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
):
    LAYERS[_name] = _POINTWISE
for _name in ("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"):
    LAYERS[_name] = LayerSpec("merge")

# Keras operations (keras.ops.*) recorded as graph nodes; element-wise unary ones keep channels apart.
OPS: dict[str, LayerSpec] = {name: LayerSpec("merge") for name in ("Add", "Subtract", "Multiply", "Maximum", "Minimum")}
OPS["Concatenate"] = LayerSpec("concat")  # keras.ops.concatenate
for _name in (
    "Relu",
    "Relu6",
    "Sigmoid",
    "Softplus",
    "Softsign",
    "Silu",
    "LogSigmoid",
    "LeakyRelu",
    "HardSigmoid",
    "HardSilu",
    "Elu",
    "Selu",
    "Gelu",
    "Celu",
    "HardTanh",
    "Tanh",
    "Absolute",
    "Abs",
    "Negative",
    "Square",
):
    OPS[_name] = _POINTWISE
# keras.ops.mean/max over positions (a squeeze-and-excite block's pooling in MobileNet's blocks): each channel
# stays apart; one over the channel axis mixes them, which the channel graph refuses (channels.reduced_axes)
OPS_REDUCTIONS = ("Mean", "Max")
for _name in OPS_REDUCTIONS:
    OPS[_name] = LayerSpec("channelwise")

# tf_keras' TFOpLambda layers, as prunecli reads them (io/models/tf_ops.py: one layer class that runs the
# TensorFlow function a Keras-2 file names), keyed by that function's name: a concatenation joins, the
# element-wise functions keep channels apart, binary arithmetic is a merge (channelwise with a number).
TF_CALL = "prunecli>TFOpLambda"  # its registered name; `function` holds the call's name ("concat")
TF_CALLS: dict[str, LayerSpec] = {"concat": LayerSpec("concat")}
for _name in ("add", "sub", "mul"):
    TF_CALLS[f"__operators__.{_name}"] = LayerSpec("merge")
for _name in ("math.add", "math.subtract", "math.multiply", "math.maximum", "math.minimum", "maximum", "minimum"):
    TF_CALLS[_name] = LayerSpec("merge")
for _name in (
    "nn.relu",
    "nn.relu6",
    "nn.elu",
    "nn.selu",
    "nn.silu",
    "nn.swish",
    "nn.gelu",
    "nn.leaky_relu",
    "nn.softplus",
    "nn.softsign",
    "math.sigmoid",
    "math.tanh",
    "math.abs",
    "math.negative",
    "math.square",
    "identity",
):
    TF_CALLS[_name] = _POINTWISE
for _name in ("image.rot90", "image.flip_left_right", "image.flip_up_down", "image.transpose"):
    TF_CALLS[_name] = _PLACE  # moves positions, never channels
# `tf.reduce_max(h, axis=1)` (flucleave's global max pooling, bench/ZOO.md) and its kin over positions keep
# each channel apart, as the Global*Pooling layers do; over the channel axis they mix them (channels.reduced_axes)
REDUCTIONS = ("math.reduce_max", "math.reduce_min", "math.reduce_mean", "math.reduce_sum")
for _name in REDUCTIONS:
    TF_CALLS[_name] = LayerSpec("channelwise")

# Layers whose activation normalises over the channels: their output units are classes (softmax).
SOFTMAX_LIKE = {"Softmax"}


def _is_layer(op) -> bool:
    """A layer of Keras 3 or of tf_keras (the tfmot engine walks tf_keras models); a Keras 3
    operation that is not a layer (keras.ops.add in a functional graph) is not one."""
    import keras

    return isinstance(op, keras.layers.Layer) or not isinstance(op, keras.Operation)


def spec(layer) -> LayerSpec:
    """The record of this layer (or Keras operation); OTHER when it is unknown. A class the table
    does not name takes the record of its nearest known base class when it inherits that class's
    `call` (a custom ConvDNA(Conv1D) that only adds config computes what Conv1D computes, with
    Conv1D's weights); one with a `call` of its own stays unknown: its use of the weights is its own."""
    name = type(layer).__name__
    if not _is_layer(layer):
        return OPS.get(name, OTHER)
    if _is_tf_call(layer):
        return TF_CALLS.get(layer.function, OTHER)
    if name in LAYERS:
        return LAYERS[name]
    cls = type(layer)
    for base in cls.__mro__[1:]:
        if base.__name__ in LAYERS:
            return LAYERS[base.__name__] if getattr(cls, "call", None) is getattr(base, "call", None) else OTHER
    return OTHER


def _is_tf_call(layer) -> bool:
    import keras

    return keras.saving.get_registered_name(type(layer)) == TF_CALL and isinstance(
        getattr(layer, "function", None), str
    )


def is_operation(op) -> bool:
    """A recorded call without weights that is re-run with its node's arguments: a Keras operation that
    is not a layer (keras.ops.add in a functional graph), or a tf_keras TFOpLambda (`tf.concat(..., axis=1)`,
    `h * 2.0`), whose other arguments are in its node, not its config."""
    return not _is_layer(op) or _is_tf_call(op)


def register(layer_class, record: LayerSpec | None = None, *, like: str | None = None, **fields: Any) -> LayerSpec:
    """Teach prunecli a layer class, once: by a full LayerSpec, or `like` a known class with changes.

    `register(MyDense, like="Dense")` makes a layer with Dense's weights, slicing and cost known to
    targets, the channel graph, surgery, feature pruning, scoring and FLOPs. `layer_class` may be the
    class or its name.
    """
    name = layer_class if isinstance(layer_class, str) else layer_class.__name__
    if record is None:
        if like is None:
            record = LayerSpec(**fields)
        else:
            if like not in LAYERS:
                raise KeyError(f"register: unknown layer class {like!r} to copy")
            record = replace(LAYERS[like], **fields)
    elif fields or like:
        record = replace(record, **fields)
    if record.role not in ROLES:
        raise ValueError(f"register: role {record.role!r} is not one of {', '.join(ROLES)}")
    if isinstance(record.macs, str) and record.macs not in MACS_RULES:
        raise ValueError(f"register: macs rule {record.macs!r} is not one of {', '.join(MACS_RULES)}")
    LAYERS[name] = record
    return record


def unregister(layer_class) -> None:
    """Forget a registration (tests)."""
    LAYERS.pop(layer_class if isinstance(layer_class, str) else layer_class.__name__, None)


def prunable_weights(layer) -> list[tuple[str, Any, int]]:
    """(attribute, variable, unit axis) of each prunable weight; `get_prunable_weights()` opts a custom
    layer in (tfmot's convention; unit axis -1): it returns variables, or (name, array) pairs for weights
    read in another layout than stored (prunecli's quantized convolutions: int4 codes unpacked)."""
    custom = getattr(layer, "get_prunable_weights", None)
    if callable(custom):
        return [(*w, -1) if isinstance(w, tuple) else (w.name, w, -1) for w in custom()]
    out = []
    for attr, axis in spec(layer).prunable:
        var = getattr(layer, attr, None)
        if var is not None and len(var.shape) >= 2:
            out.append((attr, zero_centred_codes(layer, var, attr), axis))
    return out


def zero_centred_codes(layer, codes, attr: str = "kernel"):
    """A weight as its zeros are counted: Keras' grouped int4 layers store codes offset by one zero point
    per group (`<attr>_zero`; `g_idx` maps an index to its group: a kernel's input rows, an embedding's
    columns within each token's row), so `code - zero point` is 0 exactly where the weight is; any other
    weight is returned as it is."""
    import numpy as np

    zero_point = getattr(layer, f"{attr}_zero", None)
    if quantization_mode(layer) is None or zero_point is None:
        return codes
    groups = np.asarray(layer.g_idx).astype(np.int64)
    values = np.asarray(codes).astype(np.int32)
    zeros = np.asarray(zero_point).astype(np.int32)
    if attr == "embeddings":  # (tokens, dim) codes, (tokens, groups) zero points
        return values - zeros[:, groups]
    flat = values.reshape(len(groups), -1) - zeros[groups]
    return flat.reshape(values.shape)


def quantization_mode(layer) -> str | None:
    """The Keras quantization mode of a layer ("int8", "int4", "float8", ...; None for a float layer), as
    its dtype policy says: a quantized layer's weights are codes and scales, not the weights to score.
    Keras' own `Layer.quantization_mode` reads a KerasHub backbone's DTypePolicyMap (one policy per layer
    path: what a quantized KerasHub file loads with) at the layer's path; the map itself has no mode, so
    reading the policy alone took a loaded int8 Mixtral for a float one."""
    mode = getattr(type(layer), "quantization_mode", None)
    if isinstance(mode, property):
        return layer.quantization_mode
    return getattr(getattr(layer, "dtype_policy", None), "quantization_mode", None)


def recurrent_columns(record: LayerSpec, units, width: int):
    """The columns of a recurrent weight's unit axis (`gates` blocks of `width`) that `units` own, in
    gate order: what slicing a recurrent layer to these units keeps of kernel, recurrent_kernel, bias."""
    import numpy as np

    units = np.asarray(units, dtype=np.int64)
    return (np.arange(record.gates)[:, None] * width + units[None, :]).reshape(-1)


def unit_axis(layer) -> int | None:
    """The unit axis of the layer's last prunable weight (its output units), or None."""
    found = spec(layer).prunable
    return found[-1][1] if found else None
