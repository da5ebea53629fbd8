"""Structural pruning: rebuild the model without the units (neurons, filters) that masking killed.

A unit whose kernel slice is all zero outputs a constant: act(bias) for a Dense/Conv unit, then
whatever the channel-wise layers after it (BatchNormalization, activations, pooling...) make of
that constant. `shrink` follows these constants through the graph (`graph.py` says which channels
must go together) and removes a channel class only when every layer that reads it sees a constant it
can absorb exactly into its bias: a Dense always can (bias += c * W[row]); a convolution can when
its kernel is 1x1 or its padding is 'valid' (the constant's contribution is then the same at every
position). Under 'same' padding, zero-padding or a transposed convolution the contribution differs
at the borders, so only units whose constant is exactly 0 are removed there; the others are kept
and a note says why. A channel that a reader ignores (its weight rows are all zero, or a depthwise
filter is all zero) needs no constant at all.

Groups (a residual Add, a shared layer) lose a channel only when it is dead in every member: the
rebuilt model then computes exactly what the masked model computed, which `shrink` checks on real
or random inputs before the model is handed on. Constants folded into a layer without a bias go into
the BatchNormalization that follows it (moving_mean -= delta), which keeps the architecture; when
there is none, the layer gets a bias.

A recurrent layer (LSTM, GRU, SimpleRNN) is sliced like a Dense whose unit axis holds one column per
gate for each unit (structure/layers.py, role "recurrent"): a unit whose state-gate columns and bias
are zero outputs exactly 0 at every step, so it goes with all of its gates' columns, its bias entries
and its recurrent_kernel row; a removed input channel's constant is added to the input bias (every
step adds the same x_c * kernel[c]). A live unit stays while its own recurrent row reads it. A
Bidirectional layer's two directions are sliced each on its own, forward unit j and backward unit j
together (structure/channels.py joins them); its weights are keyed "0/kernel", "1/kernel"...

A grouped convolution (groups > 1) loses whole groups (channels.py makes a group's input channels and
filters one class): its kernel (..., inputs / groups, filters) keeps the kept filters' columns, each
with its group's rows, and `groups` counts the kept groups.

An Embedding is a mixer whose inputs are token ids (`reads_channels` is False): a column of its table
that the mask zeroed outputs 0 for every token, so it goes with the kernel rows that read it, and
nothing upstream is sliced or folded into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prunecli.structure import keras_graph, layers

UNIFORM_TOLERANCE = 1e-6  # a channel counts as constant when all its values agree this closely
OPEN_DIMS = (8, 256, 16384)  # sizes tried, in turn, for dimensions the model leaves open (None): a crop or
# a valid convolution needs a long enough input, and short ones are cheap


@dataclass
class ChannelCuts:
    """What to remove and how the surviving weights change."""

    removed: set = field(default_factory=set)  # channel-class roots to remove
    blocked: dict = field(default_factory=dict)  # root -> why a class with a dead unit is kept
    dead: set = field(default_factory=set)  # roots that hold at least one dead unit
    bias_delta: dict = field(default_factory=dict)  # mixer layer name -> (units,) constant contribution
    bn_shift: dict = field(default_factory=dict)  # BatchNormalization name -> (units,) moving_mean shift
    add_bias: set = field(default_factory=set)  # mixer layers that need a bias they did not have


# ---------------------------------------------------------------------------------------------------
# Reading mixer weights (Dense, Conv, SeparableConv, ConvTranspose)


def weight_keys(layer) -> list:
    """(key, variable) of each weight of the layer: its name, or for a Bidirectional layer "i/name"
    with i the direction (0 forward, 1 backward), whose variables share names."""
    if type(layer).__name__ == "Bidirectional":
        from prunecli.structure.channels import recurrent_parts

        return [(f"{i}/{v.name}", v) for i, part in enumerate(recurrent_parts(layer)) for v in part.weights]
    return [(v.name, v) for v in getattr(layer, "weights", ())]  # a Keras operation has none


def layer_weights(layer) -> dict:
    import numpy as np

    return {key: np.asarray(v) for key, v in weight_keys(layer)}


def recurrent_parts(layer, w: dict) -> list:
    """[(LSTM/GRU/SimpleRNN layer, its weights by name)] of a recurrent layer: itself, or a
    Bidirectional's two directions."""
    from prunecli.structure.channels import recurrent_parts as parts

    found = parts(layer)
    if len(found) == 1:
        return [(layer, w)]
    return [
        (part, {k.split("/", 1)[1]: v for k, v in w.items() if k.startswith(f"{i}/")}) for i, part in enumerate(found)
    ]


def _family(layer) -> str:
    """How the layer table says this layer is sliced: dense | conv | separable | transpose | depthwise | rnn |
    embedding."""
    return layers.spec(layer).family or "conv"


def reads_channels(layer) -> bool:
    """Whether the layer's weights read its input's channels: an Embedding reads token ids, so nothing
    upstream of it is sliced or folded into it."""
    return _family(layer) != "embedding"


def is_depthwise(layer) -> bool:
    return layers.spec(layer).family == "depthwise"


def _unit_kernel(layer, w: dict):
    """The kernel with the layer's output units on its last axis."""
    import numpy as np

    family = _family(layer)
    if family == "separable":
        return w["pointwise_kernel"]
    if family == "transpose":
        return np.swapaxes(w["kernel"], -1, -2)
    if family == "embedding":
        return w["embeddings"]
    return w["kernel"]


def _all_zero_on(array, axis: int):
    import numpy as np

    moved = np.moveaxis(array, axis, 0)
    return ~moved.reshape(moved.shape[0], -1).any(axis=1)


def _gate_block(layer, array, gate: int):
    """A recurrent weight's columns of one gate (the last axis holds `gates` blocks of `units`)."""
    units = int(layer.units)
    return array[..., gate * units : (gate + 1) * units]


def dead_units(layer, w: dict):
    """Bool per output unit: its kernel slice is all zero, so it outputs act(bias), a constant. A
    recurrent unit is dead when its state-gate columns (kernel and recurrent kernel) and bias are zero
    and act(0) = 0: it then outputs exactly 0 at every step."""
    import numpy as np

    if _family(layer) == "rnn":
        from prunecli.structure.channels import join_parts, recurrent_silent

        found = []
        for part, pw in recurrent_parts(layer, w):
            gate = layers.spec(part).state_gate
            blocks = [_gate_block(part, pw[n], gate) for n in ("kernel", "recurrent_kernel", "bias") if n in pw]
            dead = np.logical_and.reduce([_all_zero_on(a.reshape(-1, a.shape[-1]), -1) for a in blocks])
            found.append(dead & recurrent_silent(part))
        return join_parts(layer, found, both=True)
    return _all_zero_on(_unit_kernel(layer, w), -1)


def recurrent_readers(layer, w: dict):
    """Bool per unit of a recurrent layer: its recurrent_kernel row reads it back (some weight non-zero)."""
    from prunecli.structure.channels import join_parts

    rows = [~_all_zero_on(pw["recurrent_kernel"], 0) for _, pw in recurrent_parts(layer, w)]
    return join_parts(layer, rows, both=False)


def groups_of(layer) -> int:
    """A convolution's `groups` (1 for any other layer)."""
    return int(getattr(layer, "groups", 1) or 1)


def grouped_rows(layer, rows):
    """A grouped convolution's (inputs / groups, filters) per-input-row array as (inputs, filters): input
    channel g * (inputs / groups) + r reads row r with the filters of group g, and nothing elsewhere."""
    import numpy as np

    groups = groups_of(layer)
    if groups == 1:
        return rows
    per_in, per_out = rows.shape[0], rows.shape[1] // groups
    out = np.zeros((groups * per_in, rows.shape[1]), dtype=rows.dtype)
    for g in range(groups):
        out[g * per_in : (g + 1) * per_in, g * per_out : (g + 1) * per_out] = rows[:, g * per_out : (g + 1) * per_out]
    return out


def ignored_inputs(layer, w: dict):
    """Bool per input channel: every weight that reads it is zero, so its value does not matter."""
    import numpy as np

    family = _family(layer)
    if family == "rnn":
        return np.logical_and.reduce([_all_zero_on(pw["kernel"], -2) for _, pw in recurrent_parts(layer, w)])
    if family == "separable":
        depth = w["depthwise_kernel"]
        multiplier = depth.shape[-1]
        rows = w["pointwise_kernel"].reshape(-1, w["pointwise_kernel"].shape[-1])
        rows_zero = ~rows.reshape(depth.shape[-2], multiplier, -1).any(axis=(1, 2))
        return _all_zero_on(depth, -2) | rows_zero
    if family == "transpose":
        return _all_zero_on(w["kernel"], -1)
    if groups_of(layer) > 1:
        kernel = w["kernel"]
        return ~grouped_rows(layer, (kernel.reshape(-1, *kernel.shape[-2:]) != 0).any(axis=0)).any(axis=1)
    return _all_zero_on(w["kernel"], -2)


def _spatial_ones(layer) -> bool:
    return all(int(k) == 1 for k in getattr(layer, "kernel_size", (1,)))


def foldable(layer, constant: float) -> bool:
    """Whether a constant input channel contributes the same value at every output position."""
    if constant == 0.0:
        return True
    family = _family(layer)
    if family in ("dense", "rnn"):
        return True
    if family == "transpose":
        return False
    return _spatial_ones(layer) or getattr(layer, "padding", "valid") == "valid"


def input_contributions(layer, w: dict):
    """(inputs, units): what a constant of 1.0 on each input channel adds to each unit's pre-activation."""
    import numpy as np

    family = _family(layer)
    if family == "rnn":  # (inputs, gates * units) of each direction in turn: added to the input bias at every step
        return np.concatenate([pw["kernel"] for _, pw in recurrent_parts(layer, w)], axis=1).astype(np.float64)
    if family == "dense":
        return w["kernel"].astype(np.float64)
    kernel_axes = tuple(range(len(layer.kernel_size)))
    if family == "separable":
        depth = w["depthwise_kernel"].astype(np.float64).sum(axis=kernel_axes)  # (inputs, multiplier)
        point = w["pointwise_kernel"].astype(np.float64).reshape(depth.shape[0], depth.shape[1], -1)
        return np.einsum("im,imu->iu", depth, point)
    summed = w["kernel"].astype(np.float64).sum(axis=kernel_axes)  # conv: (inputs / groups, units)
    return summed.T if family == "transpose" else grouped_rows(layer, summed)


def _bias_or_zeros(w: dict, units: int):
    import numpy as np

    return w["bias"] if "bias" in w else np.zeros(units, dtype=np.float32)


# ---------------------------------------------------------------------------------------------------
# Following constants through the graph


def _concrete(shape: tuple, open_dim: int) -> tuple:
    return (1,) + tuple(open_dim if d is None else int(d) for d in shape[1:])


def _constant_input(shape: tuple, consts, open_dim: int):
    import numpy as np

    values = np.nan_to_num(consts, nan=0.0).astype(np.float32)
    return np.broadcast_to(values, _concrete(shape, open_dim)).copy()


def _run_on_constants(call, g, consts):
    """The layer's output on inputs that hold each channel's constant everywhere, or None when the
    layer cannot run on any stand-in size (its channels then count as varying: they are kept)."""
    import numpy as np

    layer = call.layer
    for open_dim in OPEN_DIMS:
        xs = [_constant_input(g.shapes[k], consts[k], open_dim) for k in call.inputs]
        xs = [np.moveaxis(x, -1, 1) if k in g.first else x for k, x in zip(call.inputs, xs, strict=True)]
        try:
            if layers.is_operation(layer):  # `h + f(h)`, keras.ops.relu(h): run the recorded call on constants
                fed = {id(t): x for t, x in zip(keras_graph.flatten(call.node.input_tensors), xs, strict=True)}
                out = np.asarray(keras_graph.call_node(call.node, fed)[0])
            else:
                out = np.asarray(layer(xs if call.kind == "merge" else xs[0], training=False))
        except Exception:  # noqa: BLE001 - a crop longer than the stand-in, a fixed-size reshape: try a longer one
            continue
        return np.moveaxis(out, 1, -1) if call.outputs[0] in g.first else out
    return None


def _uniform_channels(out):
    """Per channel of an evaluated output: (is it the same everywhere, its mean)."""
    import numpy as np

    flat = np.asarray(out, dtype=np.float64).reshape(-1, out.shape[-1])
    mean = flat.mean(axis=0)
    spread = flat.max(axis=0) - flat.min(axis=0)
    return spread <= UNIFORM_TOLERANCE * np.maximum(1.0, np.abs(mean)), mean


def propagate_constants(g, weights: dict):
    """For every tensor, each channel's constant value, or NaN where it varies with the input.

    Returns (consts, lost): `lost` maps a channel root to the layer where its constant stopped being
    uniform (zero padding, a 'same'-padded depthwise filter), for the notes.
    """
    import numpy as np

    from prunecli.structure.channels import MIXERS, flattened

    consts: dict = {}
    lost: dict = {}
    ch = g.channels
    for call in g.calls:
        layer = call.layer
        if call.kind in ("input", "other"):
            for k in call.outputs:
                consts[k] = np.full(len(g.ids[k]), np.nan)
        elif call.kind == "recurrent":
            value = np.full(len(g.ids[call.outputs[0]]), np.nan)
            value[dead_units(layer, weights[layer.name])] = 0.0
            consts[call.outputs[0]] = value
            for k in call.outputs[1:]:  # its returned state (units kept: channels.py)
                consts[k] = np.full(len(g.ids[k]), np.nan)
        elif call.kind in MIXERS:
            w = weights[layer.name]
            dead = dead_units(layer, w)
            value = np.full(dead.shape[0], np.nan)
            if dead.any():
                bias = _bias_or_zeros(w, dead.shape[0]).astype(np.float32)[None, :]
                activation = getattr(layer, "activation", None)  # an Embedding has none: its dead column is 0
                out = bias if activation is None else activation(bias)
                value[dead] = np.asarray(out, dtype=np.float64)[0][dead]
            consts[call.outputs[0]] = value
        elif call.kind == "concat":
            consts[call.outputs[0]] = np.concatenate([consts[k] for k in call.inputs])
        elif call.kind == "flatten":
            consts[call.outputs[0]] = flattened(g, call, consts[call.inputs[0]])
        elif call.kind == "attention":  # softmax weights sum to 1: a constant value channel comes out as it is
            consts[call.outputs[0]] = consts[call.inputs[1]]
        elif call.kind == "channelwise" and type(layer).__name__ in MOVES_VALUES_ONLY:
            consts[call.outputs[0]] = consts[call.inputs[0]]
        else:  # channelwise or merge: evaluate the layer on constant inputs
            consts[call.outputs[0]] = _evaluate(call, g, consts, lost, ch)
    return consts, lost


# Channel-wise layers that only rearrange values, so a channel's constant passes through unchanged (the
# steps of a folded TimeDistributed(Model) fit no stand-in batch: 38 frames a clip need a multiple of 38)
MOVES_VALUES_ONLY = ("Reshape", "FoldSteps", "UnfoldSteps")


def _evaluate(call, g, consts, lost, ch):
    import numpy as np

    layer = call.layer
    width = len(g.ids[call.outputs[0]])
    known = np.ones(width, dtype=bool)
    for k in call.inputs:
        c = consts[k]
        known &= np.isfinite(c) if len(c) == width else np.isfinite(c).all()
    if is_depthwise(layer):
        known |= _all_zero_on(np.asarray(layer.kernel), -2)  # a zero filter outputs its bias, whatever comes in
    if not known.any():
        return np.full(width, np.nan)
    out = _run_on_constants(call, g, consts)
    if out is None:
        for pos in np.flatnonzero(known):
            lost.setdefault(
                ch.find(int(g.ids[call.outputs[0]][pos])), f"{call.name} (it cannot run on stand-in inputs)"
            )
        return np.full(width, np.nan)
    uniform, mean = _uniform_channels(out)
    for pos in np.flatnonzero(known & ~uniform):
        lost.setdefault(ch.find(int(g.ids[call.outputs[0]][pos])), f"{call.name} (padding)")
    return np.where(known & uniform, mean, np.nan)


# ---------------------------------------------------------------------------------------------------
# Deciding what goes


def decide_cuts(g, weights: dict) -> ChannelCuts:
    """Which channel classes can be removed exactly, and the constants the readers must absorb."""
    import numpy as np

    from prunecli.structure.channels import MAKERS, attention_scored

    ch = g.channels
    consts, lost = propagate_constants(g, weights)
    cuts = ChannelCuts()
    blocked: dict[int, str] = dict(ch.pinned())
    mixer_calls: dict[int, list] = {}
    for call in g.calls:
        if call.kind in MAKERS:
            mixer_calls.setdefault(id(call.layer), []).append(call)
            dead = dead_units(call.layer, weights[call.name])
            cuts.dead.update(ch.roots(g.ids[call.outputs[0]][dead]).tolist())
            if call.kind == "recurrent":  # its recurrent row reads each unit back: a live one stays
                live = ~dead & recurrent_readers(call.layer, weights[call.name])
                for root in ch.roots(g.ids[call.outputs[0]][live]).tolist():
                    blocked.setdefault(int(root), "live")
        elif is_depthwise(call.layer) and call.kind == "channelwise":
            ignored = _all_zero_on(np.asarray(call.layer.kernel), -2)
            cuts.dead.update(ch.roots(g.ids[call.outputs[0]][ignored]).tolist())
        elif call.kind == "attention":  # a query/key channel's scores' term is 0 only when both are exactly 0
            for key in attention_scored(call):
                for pos, root in enumerate(ch.roots(g.ids[key]).tolist()):
                    value = consts[key][pos]
                    if np.isnan(value):
                        blocked.setdefault(int(root), "live")
                    elif value != 0.0:
                        blocked.setdefault(int(root), f"its non-zero constant reaches {call.name}'s attention scores")
    for calls in mixer_calls.values():
        layer = calls[0].layer
        if not reads_channels(layer):
            continue
        ignored = ignored_inputs(layer, weights[layer.name])
        seen = [consts[c.inputs[0]] for c in calls]
        roots = ch.roots(g.ids[calls[0].inputs[0]])
        for pos in np.flatnonzero(~ignored):
            root = int(roots[pos])
            if root in blocked:
                continue
            values = {float(v[pos]) for v in seen}
            value = values.pop()
            if values:
                blocked[root] = f"shared layer {layer.name} sees different values"
            elif np.isnan(value):
                blocked[root] = f"its non-zero constant is not uniform after {lost[root]}" if root in lost else "live"
            elif not foldable(layer, value):
                padding = getattr(layer, "padding", "")
                blocked[root] = f"its non-zero constant reaches {padding}-padded {layer.name} (border effects)"
    all_roots = {int(r) for ids in g.ids.values() for r in ch.roots(ids)}
    cuts.removed = all_roots - set(blocked)
    for ids in g.ids.values():  # never empty a tensor: keep one channel of it
        roots = ch.roots(ids)
        if len(roots) and all(int(r) in cuts.removed for r in roots):
            cuts.removed.discard(int(roots[0]))
            blocked[int(roots[0])] = "last channel of a tensor"
    cuts.blocked = {r: why for r, why in blocked.items() if r in cuts.dead}
    _decide_folds(g, weights, consts, mixer_calls, cuts)
    return cuts


def _decide_folds(g, weights, consts, mixer_calls, cuts: ChannelCuts) -> None:
    """Each mixer's bias change from removed constant inputs; into a following BatchNorm when it has no bias."""
    import numpy as np

    ch = g.channels
    for calls in mixer_calls.values():
        call, layer = calls[0], calls[0].layer
        if not reads_channels(layer):
            continue
        w = weights[layer.name]
        roots = ch.roots(g.ids[call.inputs[0]])
        gone = np.array([int(r) in cuts.removed for r in roots]) & ~ignored_inputs(layer, w)
        if not gone.any():
            continue
        delta = consts[call.inputs[0]][gone] @ input_contributions(layer, w)[gone]
        if not np.any(delta != 0):
            continue
        if call.kind == "recurrent":  # the whole input bias change, sliced with the weights (new_weights)
            cuts.bias_delta[layer.name] = delta
            if any("bias" not in pw for _, pw in recurrent_parts(layer, w)):
                cuts.add_bias.add(layer.name)
            continue
        out_roots = ch.roots(g.ids[call.outputs[0]])
        kept = np.array([int(r) not in cuts.removed for r in out_roots])
        delta = delta[kept]
        readers = g.consumers.get(call.outputs[0], [])
        linear = np.allclose(np.asarray(layer.activation(np.array([[-1.0, 2.0]], "float32"))), [[-1.0, 2.0]])
        bn = readers[0].layer if len(readers) == 1 else None
        if (
            "bias" not in w
            and linear
            and len(calls) == 1
            and bn is not None
            and type(bn).__name__ == "BatchNormalization"
            and readers[0].kind == "channelwise"
            and len(g.calls_of(bn)) == 1
            and "moving_mean" in weights[bn.name]
        ):
            cuts.bn_shift[bn.name] = delta
        else:
            cuts.bias_delta[layer.name] = delta
            if "bias" not in w:
                cuts.add_bias.add(layer.name)


# ---------------------------------------------------------------------------------------------------
# Whole channels: folding a removed channel's constant into its readers


def fold_dead_constants(model, targets, masks: dict) -> list[str]:
    """Add what each removed channel still contributes as a constant to the bias of the layers that read
    it, before `channels.follower_masks` zeroes the channel (call it after the kernels are masked).

    With the kernel masked, a removed channel outputs a constant (act(bias), then BatchNorm's shift);
    zeroing its followers changes the readers' input by that constant. Folding it into the reader's
    bias (or, without one, into the BatchNorm after it) keeps the one-shot function: exactly for Dense,
    1x1 and 'valid' convolutions, away from the borders for 'same' padding. Returns notes. Whether to
    fold is decided by bench/SHRINK.md ("Zeroing or folding a removed channel").
    """
    import numpy as np

    from prunecli.structure import channels as graph

    try:
        g = graph.graph_of(model)
    except graph.GraphUnsupported:
        return []
    weights = {layer.name: layer_weights(layer) for layer in g.layers() if g.calls_of(layer)[0].kind != "input"}
    consts, _ = propagate_constants(g, weights)
    dead = graph.dead_channels(g, targets, masks)
    skipped: list[str] = []
    for layer in g.layers():
        calls = g.calls_of(layer)
        if calls[0].kind not in graph.MAKERS or len(calls) != 1 or not reads_channels(layer):
            continue
        call, w = calls[0], weights[layer.name]
        value = consts[call.inputs[0]]
        gone = dead[call.inputs[0]] & np.isfinite(value) & ~ignored_inputs(layer, w)
        if not gone.any():
            continue
        delta = value[gone] @ input_contributions(layer, w)[gone]
        if not np.any(delta != 0):
            continue
        if call.kind == "recurrent":
            start = 0
            for part, pw in recurrent_parts(layer, w):
                width = pw["kernel"].shape[-1]
                if "bias" in pw:
                    part.cell.bias.assign(add_input_bias(pw["bias"], delta[start : start + width]))
                elif np.any(delta[start : start + width] != 0):
                    skipped.append(part.name)
                start += width
            continue
        readers = g.consumers.get(call.outputs[0], [])
        bn = readers[0].layer if len(readers) == 1 else None
        linear = np.allclose(np.asarray(layer.activation(np.array([[-1.0, 2.0]], "float32"))), [[-1.0, 2.0]])
        if "bias" in w:
            layer.bias.assign((w["bias"] + delta).astype(w["bias"].dtype))
        elif linear and bn is not None and type(bn).__name__ == "BatchNormalization" and bn.moving_mean is not None:
            bn.moving_mean.assign((np.asarray(bn.moving_mean) - delta).astype("float32"))
        else:
            skipped.append(layer.name)
    if skipped:
        return [f"removed channels' constants not folded into {', '.join(skipped)} (no bias to absorb them)"]
    return []


def add_input_bias(bias, delta):
    """A recurrent bias plus a constant input's contribution: GRU's (2, 3*units) bias (reset_after)
    takes it in its input row, the first; the others are one row."""
    import numpy as np

    out = np.array(bias, dtype=np.float64)
    if out.ndim == 2:
        out[0] += delta
    else:
        out += delta
    return out.astype(np.asarray(bias).dtype)


# ---------------------------------------------------------------------------------------------------
# Rebuilding


def _kept_positions(g, key, removed):
    import numpy as np

    roots = g.channels.roots(g.ids[key])
    return np.array([i for i, r in enumerate(roots.tolist()) if r not in removed], dtype=np.int64)


@dataclass
class LayerChange:
    """How one layer changes: new config values, and the kept input/output positions."""

    config: dict
    kind: str
    in_keep: Any
    out_keep: Any
    in_width: int
    out_width: int


def layer_changes(g, cuts: ChannelCuts) -> dict[str, LayerChange]:
    from prunecli.structure.channels import MIXERS, SLICED

    changes = {}
    for layer in g.layers():
        call = g.calls_of(layer)[0]
        if call.kind not in SLICED or layers.is_operation(layer):
            continue  # a Keras operation has no weights or config: the clone re-runs it as recorded
        in_keep = _kept_positions(g, call.inputs[0], cuts.removed)
        out_keep = _kept_positions(g, call.outputs[0], cuts.removed)
        in_width, out_width = len(g.ids[call.inputs[0]]), len(g.ids[call.outputs[0]])
        if len(in_keep) == in_width and len(out_keep) == out_width and layer.name not in cuts.add_bias:
            if layer.name not in cuts.bias_delta and layer.name not in cuts.bn_shift:
                continue
        config = {}
        cls = type(layer).__name__
        if call.kind == "recurrent":
            config = _recurrent_config(layer, len(out_keep), layer.name in cuts.add_bias)
        elif call.kind in MIXERS:
            config[layers.spec(layer).width_key or "filters"] = int(len(out_keep))
            if layer.name in cuts.add_bias:
                config["use_bias"] = True
            if call.kind == "grouped":  # whole groups go (channels.py): the others keep their size
                config["groups"] = groups_of(layer) * len(out_keep) // out_width
        elif cls == "Reshape":
            config["target_shape"] = tuple(layer.target_shape[:-1]) + (int(len(out_keep)),)
        changes[layer.name] = LayerChange(config, call.kind, in_keep, out_keep, in_width, out_width)
    return changes


def _recurrent_config(layer, kept: int, add_bias: bool) -> dict:
    """The config changes of a recurrent layer keeping `kept` output positions (a Bidirectional's
    directions keep half each when they are concatenated)."""
    import copy

    from prunecli.structure.channels import concatenates

    if type(layer).__name__ != "Bidirectional":
        return {"units": int(kept), **({"use_bias": True} if add_bias else {})}
    units = kept // 2 if concatenates(layer) else kept
    config = copy.deepcopy(layer.get_config())
    out = {}
    for key in ("layer", "backward_layer"):
        if key in config:
            config[key]["config"]["units"] = int(units)
            config[key].pop("build_config", None)  # built again on the narrower input
            if add_bias:
                config[key]["config"]["use_bias"] = True
            out[key] = config[key]
    return out


def part_units(layer, change: LayerChange, index: int):
    """The kept units of direction `index` of a recurrent layer (0 for a plain LSTM/GRU/SimpleRNN)."""
    from prunecli.structure.channels import part_positions

    window = part_positions(layer, index, change.out_width)
    if window.start is None:
        return change.out_keep
    inside = (change.out_keep >= window.start) & (change.out_keep < window.stop)
    return change.out_keep[inside] - window.start


def slice_recurrent(layer, change: LayerChange, index: int, name: str, array):
    """A weight (or mask) of direction `index` of a recurrent layer cut to the kept inputs and units:
    kernel (in, gates*units), recurrent_kernel (units, gates*units), bias (..., gates*units)."""
    import numpy as np

    from prunecli.structure.channels import recurrent_parts as parts

    part = parts(layer)[index]
    units = part_units(layer, change, index)
    cols = layers.recurrent_columns(layers.spec(part), units, int(part.units))
    rows = {"kernel": change.in_keep, "recurrent_kernel": units}.get(name)
    out = np.take(array, cols, axis=-1)
    return out if rows is None else np.take(out, rows, axis=0)


def slice_weight(layer, change: LayerChange, name: str, array):
    """One weight (or mask) array of `layer` cut down to the kept inputs and units."""
    import numpy as np

    if change.kind == "attention":  # AdditiveAttention's scale, one entry per query channel
        sliced = {attr for attr, _axis, _side in layers.spec(layer).followers}
        if name not in sliced or array.ndim == 0 or array.shape[-1] != change.in_width:
            return array
        return np.take(array, change.in_keep, axis=-1)
    if change.kind == "channelwise":
        axis = -2 if is_depthwise(layer) and name == "kernel" else -1
        if array.ndim == 0 or array.shape[axis] != change.in_width:
            return array  # e.g. a PReLU alpha shared across channels
        return np.take(array, change.in_keep, axis=axis)
    family = _family(layer)
    if family == "rnn":  # a Bidirectional's weights are named "i/name" (weight_keys)
        index, _, name = name.rpartition("/")
        return slice_recurrent(layer, change, int(index or 0), name, array)
    if name == "bias":
        return array[change.out_keep]
    if change.kind == "grouped":  # (..., inputs / groups, filters): each kept group keeps its rows
        return np.take(array, change.out_keep, axis=-1)
    if family == "embedding":  # (tokens, columns): its inputs are token ids, never cut
        return np.take(array, change.out_keep, axis=-1)
    if family == "transpose":
        return np.take(np.take(array, change.out_keep, axis=-2), change.in_keep, axis=-1)
    if name == "depthwise_kernel":
        return np.take(array, change.in_keep, axis=-2)
    if name == "pointwise_kernel":
        multiplier = array.shape[-2] // change.in_width
        rows = (change.in_keep[:, None] * multiplier + np.arange(multiplier)[None, :]).reshape(-1)
        return np.take(np.take(array, rows, axis=-2), change.out_keep, axis=-1)
    return np.take(np.take(array, change.in_keep, axis=-2), change.out_keep, axis=-1)


def new_weights(layer, change: LayerChange, cuts: ChannelCuts, weights: dict) -> dict:
    import numpy as np

    out = {name: slice_weight(layer, change, name, arr) for name, arr in weights.items()}
    if layer.name in cuts.bias_delta and _family(layer) == "rnn":
        delta, start, bidirectional = cuts.bias_delta[layer.name], 0, type(layer).__name__ == "Bidirectional"
        for i, (part, pw) in enumerate(recurrent_parts(layer, weights)):
            width = pw["kernel"].shape[-1]
            key = f"{i}/bias" if bidirectional else "bias"
            mine = slice_recurrent(layer, change, i, "bias", delta[start : start + width])
            shape = (2, len(mine)) if getattr(part, "reset_after", False) else (len(mine),)  # GRU: input row first
            out[key] = add_input_bias(out.get(key, np.zeros(shape, np.float32)), mine)
            start += width
    elif layer.name in cuts.bias_delta:
        bias = out.get("bias", np.zeros(len(change.out_keep), np.float32))
        out["bias"] = (bias.astype(np.float64) + cuts.bias_delta[layer.name]).astype(np.float32)
    if layer.name in cuts.bn_shift:
        out["moving_mean"] = (out["moving_mean"].astype(np.float64) - cuts.bn_shift[layer.name]).astype(np.float32)
    return out


def rebuild(model, changes: dict[str, LayerChange], cuts: ChannelCuts, weights: dict):
    """A new model with the changed layer configs, and every layer's weights copied or sliced."""
    import keras

    clones: dict[int, Any] = {}

    def clone(layer):
        if id(layer) not in clones:  # a shared layer is cloned once and stays shared
            config = layer.get_config()
            if layer.name in changes:
                config.update(changes[layer.name].config)
            clones[id(layer)] = layer.__class__.from_config(config)
        return clones[id(layer)]

    carried = set() if isinstance(model, keras.Sequential) else keras_graph.called_with_their_carried_mask(model)

    def call(layer, *args, **kwargs):  # Keras passes the mask a layer's input carries again by itself
        if layer.name in carried:
            kwargs.pop("mask", None)
        return layer(*args, **kwargs)

    with keras_graph.copying_in_memory():
        new = keras.models.clone_model(model, clone_function=clone, call_function=call if carried else None)
    for old in model.layers:
        if not old.weights:
            continue  # nothing to copy (a cloned InputLayer may also have been renamed)
        target = new.get_layer(old.name)
        if old.name in changes:
            values = new_weights(old, changes[old.name], cuts, weights[old.name])
            for key, v in weight_keys(target):
                v.assign(values[key])
        elif old.weights:
            keras_graph.copy_weights(old, target)
    return new
