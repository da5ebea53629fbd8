"""Rebuilding a functional model with some calls changed: skipped, bypassed or replaced.

Layer removal, input-feature removal and head removal all end by rebuilding the model's graph; the
graph walk itself is keras_graph's, this module only decides what each call becomes.
"""

from __future__ import annotations

import weakref

from prunecli.errors import InputError
from prunecli.structure import folded_steps, keras_graph, layers


def functional_graph(model):
    """The Functional object that holds the model's graph (a Sequential's inner one)."""
    graph = keras_graph.functional(model)
    if graph is None:
        raise InputError(f"model {model.name!r} is subclassed: its layer graph cannot be read or rebuilt")
    return graph


def ordered_nodes(graph) -> list:
    """The graph's calls in execution order (model inputs left out)."""
    return keras_graph.nodes(graph)


def input_name(tensor) -> str:
    return keras_graph.producer_name(tensor)


def rebuild(model, *, skip=(), bypass=None, replace=None, input_shapes=None, alias=None):
    """A functional model from `model`'s graph with some calls changed.

    skip: ids of nodes left out (their outputs must no longer be needed); bypass: {node id: input
    position} for calls whose output becomes that input; replace: {id(layer): substitute layer};
    input_shapes: {input position: new batch shape}; alias: {id(tensor): earlier tensor} for a skipped
    span whose output becomes its input (a whole Transformer block). Unchanged layers are shared with `model`
    (cheap, for scoring); `detach` gives the result its own layers.
    """
    graph = functional_graph(model)
    bypass, replace = bypass or {}, replace or {}
    new_inputs, tensors = _fresh_inputs(graph, input_shapes or {})
    alias = alias or {}
    for node in ordered_nodes(graph):
        for out_id, source in alias.items():
            if out_id not in tensors and id(source) in tensors:
                tensors[out_id] = tensors[id(source)]
        if id(node) in skip:
            continue
        if id(node) in bypass:
            tensors[id(node.outputs[0])] = tensors[id(node.input_tensors[bypass[id(node)]])]
            continue
        if any(id(t) not in tensors for t in node.input_tensors):
            continue
        layer = replace.get(id(node.operation), node.operation)
        for old, new in zip(node.outputs, keras_graph.call_node(node, tensors, layer), strict=True):
            tensors[id(old)] = new
    return _model_like(model, graph, new_inputs, tensors)


def _fresh_inputs(graph, input_shapes: dict) -> tuple[list, dict]:
    """New model inputs like the graph's ({position: batch shape} changed), and the tensor map a rebuild
    walk starts from (id(old input) -> new input)."""
    import keras

    new_inputs = [
        keras.Input(batch_shape=input_shapes.get(i, x.shape), dtype=x.dtype, name=input_name(x), sparse=x.sparse)
        for i, x in enumerate(graph.inputs)
    ]
    return new_inputs, {id(x): y for x, y in zip(graph.inputs, new_inputs, strict=True)}


def _model_like(model, graph, new_inputs: list, tensors: dict):
    """The rebuilt model: the new inputs and the graph's outputs as the walk mapped them, packed in the
    structures of `model`'s, under its name."""
    import keras

    outputs = keras_graph.pack_like(graph, "outputs", [tensors[id(x)] for x in graph.outputs])
    return keras.Model(keras_graph.pack_like(graph, "inputs", new_inputs), outputs, name=model.name)


def plain_model(model) -> bool:
    """A model of Keras' own functional or Sequential class, whose meaning is its graph alone (a
    subclass such as a KerasHub backbone or task adds its own, which a rebuild would lose)."""
    from keras.src.models.functional import Functional
    from keras.src.models.sequential import Sequential

    return type(model) in (Functional, Sequential)


def graph_only(model) -> bool:
    """A model whose computation is its graph alone, so opening it into an outer graph (`opened`) loses
    nothing it computes: a `plain_model`, or a KerasHub backbone or task (an image classifier and its
    ResNet, MobileNet, EfficientNet... backbone) whose class keeps Keras' Functional.call. What such a
    class adds is outside the call (a task's preprocessor runs in predict/fit, not in the graph; from_preset),
    so an opened task is written as a plain functional model of the same inputs and outputs. A text model
    is not one: a task that generates, or a backbone with a token embedding, is rebuilt by its own class
    around smaller blocks (structure/decoders.py), and opening it would lose generate()."""
    from keras.src.models.functional import Functional

    if plain_model(model):
        return True
    if not isinstance(model, Functional) or type(model).call is not Functional.call:
        return False
    if not type(model).__module__.startswith("keras_hub"):
        return False
    if hasattr(model, "generate") or (getattr(model, "token_embedding", None) is not None and _decoder_blocks(model)):
        return False
    inner = model.layers
    if not any(
        keras_graph.is_model(layer) or (keras_own(layer) and layer.weights) or traceable(layer) for layer in inner
    ):
        return False  # its weights all sit in layer classes it cannot open: opened, nothing is reached
    return all(_keeps_its_name(layer) or traceable(layer) for layer in inner)


def _decoder_blocks(model) -> bool:
    """Whether a KerasHub text backbone holds blocks other than TransformerEncoders: decoder blocks
    (structure/decoders.py rebuilds the backbone by its own class) or a layout prunecli does not read. A text
    backbone is opened only when it is an encoder of TransformerEncoder blocks (BERT, RoBERTa, DistilBERT,
    XLM-RoBERTa, ALBERT; F-Net's and DeBERTaV3's blocks, whose relative-position table is opened as
    prunecli's BuiltRelativeEmbedding, `_built_class`), whose task is a classifier computing its graph alone."""
    return any(
        not keras_own(layer) and not keras_graph.is_model(layer) and type(layer).__name__ not in _TEXT_LAYERS
        for layer in model.layers
    )


# the KerasHub layers of the encoder backbones opened (their configs rebuild them under their names); the
# encoder blocks are structure/transformer.py's HUB_ENCODERS
_TEXT_LAYERS = (
    "ReversibleEmbedding",
    "PositionEmbedding",
    "TokenAndPositionEmbedding",
    "TransformerEncoder",
    "HeadPrunedTransformerEncoder",
    "FNetEncoder",
    "RelativeEmbedding",
    "DisentangledAttentionEncoder",
)


def _built_class(layer):
    """prunecli's subclass of a KerasHub layer whose class builds a sub-layer only when called (DeBERTaV3's
    RelativeEmbedding: the relative-position table every encoder block reads), with a `build` that builds
    it; None for any other layer. Opened into a plain functional model, the layer is copied as this class:
    Keras rebuilds a deserialised layer from its shape without calling it, so KerasHub's class came back
    without its normalization's weights (the rebuilt model lost them, and the saved one did not load)."""
    from prunecli.structure import hub_tables

    if not type(layer).__module__.startswith("keras_hub") or type(layer).__name__ != "RelativeEmbedding":
        return None
    return hub_tables.built_relative_embedding()


def keras_own(layer) -> bool:
    """A layer of Keras' own classes (not KerasHub's, not the user's, not prunecli's)."""
    return type(layer).__module__.startswith("keras.")


def traceable(layer) -> bool:
    """A KerasHub block whose `call` only calls its sub-layers and Keras operations, so that the graph its
    call records on symbolic inputs (`block_graph`) computes what the block computes, with the same layer
    objects: MobileNet's DepthwiseConvBlock, InvertedResidualBlock and SqueezeAndExcite2D, HGNetV2's
    embeddings, encoder, stages and conv layers. Opened, their convolutions are layers of the outer graph:
    --shrink slices them, -g layer sees their residual blocks, and --quantize int8 quantizes them (inside
    the block they stayed float, since the block's config rebuilds them as Keras' float classes).

    Not one: a class outside KerasHub (the user's own code may compute anything around its sub-layers),
    a layer holding weights of its own (HGNetV2's learnable affine scale: the graph would hold them as
    constants), one with a sub-layer that is neither Keras' own, traceable, nor rebuilt under its own
    name, and one whose call branches on `training` (MiT's DropPath drops paths in training only: its
    graph would keep one branch): the graphs it records with training=True and with training unset must
    be the same calls."""
    if keras_graph.is_model(layer) or keras_own(layer) or not type(layer).__module__.startswith("keras_hub"):
        return False
    if not layer.built:
        return False  # not cached: it may be called later
    if layer not in _TRACEABLE:
        _TRACEABLE[layer] = _traceable(layer)
    return _TRACEABLE[layer]


_TRACEABLE = weakref.WeakKeyDictionary()  # layer -> traceable(layer): each block traced once per process


def _traceable(layer) -> bool:
    if layer._trainable_variables or layer._non_trainable_variables:
        return False
    if any(keras_own(lay) and _holds_lambda(lay) for lay in keras_graph.all_layers(layer)[1:]):
        return False  # opened, its lambda would be written into the model's file (MobileNetV5's ConvNormAct)
    inside = [lay for lay in keras_graph.all_layers(layer)[1:] if not keras_own(lay)]
    if any(keras_graph.is_model(lay) or not (_traced_inside(lay) or _keeps_its_name(lay)) for lay in inside):
        return False
    node = next((n for n in keras_graph.calls_of(layer) if _one_tensor_call(n)), None)
    if node is None:
        return False
    try:
        unset, training = (_traced(layer, node, given) for given in (None, True))
        if _calls(unset) != _calls(training):
            return False
        return _computes_the_same(layer, unset, node.arguments.args[0])
    except Exception:  # noqa: BLE001 - a call that cannot run on symbolic inputs, or its graph on two images
        return False


def _calls(graph) -> list[str]:
    return [type(n.operation).__name__ for n in keras_graph.nodes(graph)]


def _computes_the_same(layer, graph, given) -> bool:
    """Whether the traced graph computes what the block does on a random batch of two: a call that reads
    its input's shape records the symbolic batch size (None) as a constant (MiT's attention reshapes to
    (batch, heads, ...)), and such a graph fails or differs on real inputs."""
    import keras
    import numpy as np

    shape = (2, *given.shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(given.dtype)
    want = [np.asarray(v) for v in keras.tree.flatten(layer(x))]
    got = [np.asarray(v) for v in keras.tree.flatten(graph(x))]
    return len(want) == len(got) and all(
        a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(want, got, strict=True)
    )


def _traced_inside(layer) -> bool:
    """A sub-layer of a traceable block that is traced with it (a KerasHub layer without weights of its own)."""
    return type(layer).__module__.startswith("keras_hub") and not (
        layer._trainable_variables or layer._non_trainable_variables
    )


def _one_tensor_call(node) -> bool:
    """A call with one tensor argument and no other than `training` (how KerasHub's backbones call their blocks)."""
    kwargs = {k: v for k, v in node.arguments.kwargs.items() if k != "training"}
    return len(node.arguments.args) == 1 and not kwargs and len(keras_graph.flatten(node.arguments.args)) == 1


def _traced(layer, node, training):
    """A plain functional model of `layer`'s call as `node` calls it, on fresh inputs of the node's input
    shape: its KerasHub sub-layers' calls are traced through too (`_calling_through`), Keras' own
    layers and operations are its nodes."""
    import inspect

    import keras

    given = node.arguments.args[0]
    start = keras.Input(batch_shape=given.shape, dtype=given.dtype)
    kwargs = {"training": training} if "training" in inspect.signature(type(layer).call).parameters else {}
    with _calling_through(layer):
        outputs = type(layer).call(layer, start, **kwargs)
    return keras.Model(start, outputs, name=layer.name)


def block_graph(node):
    """`node`'s traceable block (`traceable`) as a plain functional model under the block's name, of the
    same layer objects, for `opened` to open as it opens a nested model."""
    return _traced(node.operation, node, None)


class _CallThrough:
    """Mixin of a traced block's KerasHub sub-layers while it is traced: calling one runs its `call`
    on the symbolic tensors, so its own sub-layers' calls are recorded in the traced graph."""

    def __call__(self, *args, **kwargs):
        import inspect

        own = type(self).__mro__[2]
        if "training" not in inspect.signature(own.call).parameters:
            kwargs.pop("training", None)
        return own.call(self, *args, **kwargs)


def _calling_through(layer):
    """While tracing `layer`: each KerasHub layer inside it given a class whose `__call__` runs its `call`
    directly (the classes swap back afterwards, as quantized_conv swaps a convolution's class in place)."""
    import contextlib

    @contextlib.contextmanager
    def swapped():
        changed = []
        for inner in keras_graph.all_layers(layer)[1:]:
            if not keras_own(inner) and _traced_inside(inner):
                cls = type(inner)
                inner.__class__ = type(cls.__name__, (_CallThrough, cls), {})
                changed.append((inner, cls))
        try:
            yield
        finally:
            for inner, cls in changed:
                inner.__class__ = cls

    return swapped()


def _keeps_its_name(layer) -> bool:
    """Whether the layer rebuilds from its own config, under its own name: what an opened model's file
    needs, since a functional model's config rebuilds each layer from its config and its weights are
    found by layer name. A KerasHub backbone is rebuilt from its constructor's arguments instead, so
    its layers never had to: MobileNet's DepthwiseConvBlock appends "_0" to the name it is given
    (block_0 -> block_0_0 -> block_0_0_0), and ViT's ViTPatchingAndEmbedding writes arguments its
    constructor refuses (num_patches); opened, either was an internal error (--shrink) or a written
    model that did not load. Keras' own layers do, unless their config holds a Python lambda (MobileNetV5's
    Activation(lambda x: gelu(x, approximate=False))), which a saved file loads only with safe_mode=False:
    opened, its --shrink, -g layer and --quantize outputs did not load back (exit 1 and 4). A nested model
    is checked when it is opened."""
    if keras_graph.is_model(layer):
        return True
    if keras_own(layer):
        return not _holds_lambda(layer)
    try:
        with keras_graph.copying_in_memory():
            return type(layer).from_config(layer.get_config()).name == layer.name
    except Exception:  # noqa: BLE001 - a layer that cannot be rebuilt from its config is not opened either
        return False


def _holds_lambda(layer) -> bool:
    """Whether the layer holds a Python lambda (an Activation's function, a Lambda layer's), which Keras
    writes as bytecode that load_model refuses in safe mode."""
    return any(getattr(value, "__name__", None) == "<lambda>" for value in vars(layer).values())


def per_position_wrapper(layer) -> bool:
    """A TimeDistributed wrapper whose layer already acts on each position of its input's last axis
    alone, whatever the leading axes: a Dense (or a class with Dense's call), or a weightless
    element-wise layer (activation, dropout). Called on the whole (batch, time, ...) tensor, that layer
    computes what the wrapper computes step by step. A layer with statistics over the batch
    (BatchNormalization trains on each step's batch in the wrapper) or a convolution (which needs its
    own rank) stays wrapped."""
    if type(layer).__name__ != "TimeDistributed":
        return False
    record = layers.spec(layer.layer)
    return record.family == "dense" or (record.pointwise and not layer.layer.weights)


def reachable_layers(model) -> set[int]:
    """Ids of the layers --shrink can slice from the model's graph: its calls, those of the nested plain
    models and TimeDistributed wrappers `opened` opens, and recurrent layers' parts and cells. A
    Conv1D inside a user's layer class (keras-tcn's residual blocks) is not one: inspect called it
    shrinkable, and the run then kept the model whole."""
    from prunecli.structure.channels import recurrent_parts

    found: set[int] = set()

    def visit(graph_model) -> None:
        if keras_graph.functional(graph_model) is None:
            return
        hub = not plain_model(graph_model)
        for node in ordered_nodes(graph_model):
            op = node.operation
            if graph_only(op):
                visit(op)
            elif hub and traceable(op) and _one_tensor_call(node):
                visit(block_graph(node))  # opened as the graph its call records
            elif type(op).__name__ == "TimeDistributed" and plain_model(op.layer):
                visit(op.layer)  # opened with its steps folded into the batch (folded_steps)
            elif type(op).__name__ == "TimeDistributed" and not keras_graph.is_model(op.layer):
                found.add(id(op.layer))  # called on the whole sequence, or on its steps folded
            for part in recurrent_parts(op):  # the layer itself, or a Bidirectional's two directions
                found.update((id(op), id(part), id(getattr(part, "cell", part))))

    visit(model)
    return found


def openable(node, holds, in_hub_model: bool = False) -> bool:
    """Whether the node calls a nested plain model (`plain_model`) that keras_graph can walk in its place,
    or a `per_position_wrapper` whose layer can be called in its place, and for which `holds(model or
    wrapper)` is true; its graph's outputs are the node's, one for one. In the graph of a KerasHub model
    (`in_hub_model`), also a `traceable` block: one its model renames when rebuilding always, since the
    opened model is written from its layers' own configs. A KerasHub layer the user called in a plain model
    (a TransformerEncoder) stays one call: -g layer takes it out whole."""
    op = node.operation
    if per_position_wrapper(op):
        return holds(op)
    if folded_steps.foldable(node) and (plain_model(op.layer) or not keras_graph.is_model(op.layer)):
        return holds(op)
    if in_hub_model and traceable(op) and _one_tensor_call(node):
        return holds(op) or not _keeps_its_name(op)  # a block renamed when rebuilt is opened with its model
    if not (graph_only(op) and keras_graph.inlinable(node)):
        return False
    return len(keras_graph.outputs(op)) == len(keras_graph.flatten(node.outputs)) and holds(op)


def opened(model, holds):
    """`model` with every nested plain model that `holds(nested)` accepts opened: its layers called in
    the outer graph where the nested model was called, recursively; None when there is none to open
    or `model` is not `graph_only` itself.

    Why: the channel graph (structure/channels.py) and every rebuild see one graph; a nested model is
    one call to them, whose channels they cannot slice, so `--shrink` and `--target` left a backbone
    inside a transfer-learning model (a Keras application in a Functional or Sequential head) whole.
    A TimeDistributed(Dense) (Keras-2 sequence taggers) is opened the same way, its Dense called on the
    whole sequence under the wrapper's name (`per_position_wrapper`): the wrapper is one opaque call to
    the graph, so its units stayed masked and blocked the layer before it.
    Opened, the model computes the same function with the same layer objects and weights. A nested
    model called with `training=False` (Keras' transfer-learning idiom, which keeps its BatchNorm
    layers in inference mode while the head trains) passes it on to each of its layers' calls. An
    inner layer whose name another layer of the result already has is a copy under a new name
    (`{nested}_{name}`): names are unique in a functional model. Returns (the new model, the names of
    the nested models opened, {name in the new model: the layer's path in `model`} for every layer that
    was inside one, e.g. "backbone/conv" for "conv")."""
    graph = keras_graph.functional(model)
    if graph is None or not graph_only(model):
        return None
    decided: dict[int, bool] = {}

    def opens(node, in_hub_model: bool) -> bool:  # each node decided once (`holds` may walk a whole backbone)
        if id(node) not in decided:
            decided[id(node)] = openable(node, holds, in_hub_model)
        return decided[id(node)]

    top = ordered_nodes(graph)
    hub = not plain_model(model)
    if not any(opens(node, hub) for node in top):
        return None
    taken = {node.operation.name: id(node.operation) for node in top if not opens(node, hub)}
    taken.update({input_name(x): id(x) for x in graph.inputs})
    copies: dict[int, tuple] = {}  # id(layer) -> (layer, its copy under a new name)
    names: list[str] = []
    paths: dict[str, str] = {}

    def unique(name: str, owner: int = -1) -> str:
        """`name`, or `name_1`, `name_2`... when the graph has it already; taken from now on."""
        found, n = name, 1
        while found in taken:
            found, n = f"{name}_{n}", n + 1
        taken[found] = owner
        return found

    def named(layer, owner: str):
        if id(layer) in copies:
            return copies[id(layer)][1]
        built = _built_class(layer)
        if taken.setdefault(layer.name, id(layer)) == id(layer) and built is None:
            return layer
        name = layer.name if taken[layer.name] == id(layer) else unique(f"{owner}_{layer.name}", id(layer))
        with keras_graph.copying_in_memory():
            copy = (built or type(layer)).from_config({**layer.get_config(), "name": name})
        if built is not None:
            copy.build(None)
        copies[id(layer)] = (layer, copy)
        return copy

    def unwrapped(wrapper):
        """The wrapped layer under the wrapper's name (a copy): the names a user sees in the graph, and
        the model's output names, stay the same."""
        if id(wrapper.layer) not in copies:
            taken[wrapper.name] = id(wrapper.layer)
            with keras_graph.copying_in_memory():
                config = {**wrapper.layer.get_config(), "name": wrapper.name}
                copies[id(wrapper.layer)] = (wrapper.layer, type(wrapper.layer).from_config(config))
        return copies[id(wrapper.layer)][1]

    def walk(nodes, tensors: dict, path: str, training, hub: bool) -> None:
        for node in nodes:
            if any(id(t) not in tensors for t in node.input_tensors):
                continue
            op = node.operation
            if opens(node, hub) and per_position_wrapper(op):  # a Dense on the whole sequence, as it is
                layer = unwrapped(op)
                paths[layer.name] = f"{path}{op.name}/{op.layer.name}"
                outputs = keras_graph.call_node(node, tensors, layer, training=training)
                names.append(op.name)
            elif opens(node, hub) and folded_steps.foldable(node):
                # TimeDistributed(Model or layer): steps as one batch
                fold, unfold = folded_steps.layer_classes()
                outer, model_inside = tensors[id(node.input_tensors[0])], keras_graph.is_model(op.layer)
                given = node.arguments.kwargs.get("training", training)
                start = fold(
                    wrapper=op.name, nested=op.layer.name, model=model_inside, name=unique(f"{op.name}_steps_in")
                )
                start = start(outer)
                if model_inside:
                    inner = keras_graph.require(op.layer)
                    values = {id(keras_graph.flatten(inner.inputs)[0]): start}
                    walk(ordered_nodes(inner), values, f"{path}{op.name}/{op.layer.name}/", given, False)
                    end = values[id(keras_graph.flatten(inner.outputs)[0])]
                else:  # the wrapped layer, under the wrapper's name (as a TimeDistributed(Dense) is opened)
                    layer = unwrapped(op)
                    paths[layer.name] = f"{path}{op.name}/{op.layer.name}"
                    end = keras_graph.call_node(node, {id(node.input_tensors[0]): start}, layer, training=given)[0]
                steps = unfold(
                    steps=outer.shape[1], wrapper=op.name, nested=op.layer.name, name=unique(f"{op.name}_steps_out")
                )
                outputs = [steps(end)]
                names.append(op.name)
            elif opens(node, hub):
                block = not keras_graph.is_model(op)
                inner = block_graph(node) if block else keras_graph.require(op)
                given = node.arguments.kwargs.get("training", training)
                args = node.arguments.fill_in(tensors)[0] if block else None
                sent = keras_graph.flatten(args) if block else keras_graph.nested_inputs(node, tensors)
                values = dict(zip(map(id, inner.inputs), sent, strict=True))
                walk(ordered_nodes(inner), values, f"{path}{op.name}/", given, not block and not plain_model(op))
                outputs = [values[id(t)] for t in keras_graph.flatten(inner.outputs)]
                names.append(op.name)
            elif path and type(op).__name__ == "Identity" and keras_own(op):
                # a no-op of an opened block, left out: HGNetV2 builds them with a dtype policy object
                # their generated config cannot write, so the opened model did not save
                outputs = keras_graph.flatten(node.arguments.fill_in(tensors)[0])
            else:
                layer = named(op, path.rstrip("/").rsplit("/", 1)[-1]) if path else op
                if path:
                    paths[layer.name] = f"{path}{op.name}"
                outputs = keras_graph.call_node(node, tensors, layer, training=training)
            for old, new in zip(keras_graph.flatten(node.outputs), outputs, strict=True):
                tensors[id(old)] = new

    new_inputs, tensors = _fresh_inputs(graph, {})
    walk(top, tensors, "", None, hub)
    flat = _model_like(model, graph, new_inputs, tensors)
    for original, copy in copies.values():
        keras_graph.copy_weights(original, copy)
    return flat, names, paths


def renested(model):
    """`model` with each FoldSteps ... UnfoldSteps span (`opened`, folded_steps.py) back in a
    TimeDistributed of a model, or of its one layer, under the names they had, calling the same
    (possibly narrowed) layers; `model` itself when it has no fold. None when the spans do not pair up
    (a layer reading tensors of two spans, or one outside a span reading a tensor inside one)."""
    import keras

    graph = keras_graph.functional(model)
    nodes = ordered_nodes(graph) if graph is not None else []
    if not any(folded_steps.is_fold(node.operation) for node in nodes):
        return model
    new_inputs, tensors = _fresh_inputs(graph, {})
    spans: dict[tuple[str, str], tuple] = {}  # (wrapper, nested) -> (outer input, inner Input, model?, calls)
    inside: dict[int, tuple[str, str]] = {}  # id(tensor computed inside a span) -> its span
    rewrapped: dict[int, object] = {}  # id(opened layer) -> the layer its wrapper holds again
    for node in nodes:
        op = node.operation
        given = keras_graph.flatten(node.input_tensors)
        if any(id(t) not in tensors for t in given):
            return None
        within = {inside[id(t)] for t in given if id(t) in inside}
        if len(within) > 1:
            return None
        if folded_steps.is_fold(op):
            outer = tensors[id(node.input_tensors[0])]
            start = keras.Input(batch_shape=(None, *outer.shape[2:]), dtype=outer.dtype)
            spans[(op.wrapper, op.nested)] = (outer, start, op.model, [])
            tensors[id(node.outputs[0])] = start
            inside[id(node.outputs[0])] = (op.wrapper, op.nested)
            continue
        if folded_steps.is_unfold(op):
            span = spans.pop((op.wrapper, op.nested), None)
            if span is None or within != {(op.wrapper, op.nested)}:
                return None
            outer, start, model_inside, calls = span
            if model_inside:
                wrapped = keras.Model(start, tensors[id(node.input_tensors[0])], name=op.nested)
            elif len(calls) == 1 and id(calls[0]) in rewrapped:  # one layer in two wrappers stays one
                wrapped = rewrapped[id(calls[0])]
            elif len(calls) == 1:  # a wrapped layer, under its own name again
                with keras_graph.copying_in_memory():
                    wrapped = type(calls[0]).from_config({**calls[0].get_config(), "name": op.nested})
                wrapped(start)
                keras_graph.copy_weights(calls[0], wrapped)
                rewrapped[id(calls[0])] = wrapped
            else:
                return None
            tensors[id(node.outputs[0])] = keras.layers.TimeDistributed(wrapped, name=op.wrapper)(outer)
            continue
        if within and next(iter(within)) not in spans:
            return None  # reads a tensor of a span already closed
        for old, new in zip(keras_graph.flatten(node.outputs), keras_graph.call_node(node, tensors), strict=True):
            tensors[id(old)] = new
            if within:
                inside[id(old)] = next(iter(within))
        if within:
            spans[next(iter(within))][3].append(op)
    if spans or any(id(t) in inside for t in keras_graph.flatten(graph.outputs)):
        return None
    return _model_like(model, graph, new_inputs, tensors)


def steps_as_batch(model):
    """A model computing what `model` does in inference, with each TimeDistributed of its top-level graph
    that runs over an open number of steps (and no mask) calling its layer once on the steps folded into
    the batch, the same layer object (its weights); None when there is none or the graph cannot be read.

    Why: traced with an open number of steps (a SavedModel's signature, and every TFLite file converted
    from one), Keras 3's TimeDistributed maps its layer over `ops.shape(inputs)[0]` read before it swaps
    the batch and step axes: over the batch size, not the steps. The exported model returned (batch,
    batch, ...) and failed on the model's own inputs ("slice index 32 of dimension 0 out of bounds":
    crema's and rnnmorph's per-frame and per-word taggers, bench/ZOO.md). A layer that acts on each
    example alone computes the same on the steps as one batch (a BatchNormalization in inference too)."""
    import keras
    from keras import ops

    class StepsAsBatch(keras.layers.TimeDistributed):
        """TimeDistributed whose layer is called once, on the (batch x steps) examples."""

        def call(self, inputs, training=None, mask=None):
            shape = ops.shape(inputs)
            given = {"training": training} if self.layer._call_has_training_arg else {}
            folded = self.layer.call(ops.reshape(inputs, (-1, *inputs.shape[2:])), **given)
            return ops.reshape(folded, (shape[0], shape[1], *folded.shape[1:]))

    graph = keras_graph.functional(model)
    if graph is None:
        return None
    twins = {}
    for node in ordered_nodes(graph):
        layer = node.operation
        if (
            not isinstance(layer, keras.layers.TimeDistributed)
            or type(layer).call is not keras.layers.TimeDistributed.call
        ):
            continue
        calls = _calls_of(graph, layer)
        if any(
            len(keras_graph.flatten(n.input_tensors)) != 1
            or n.input_tensors[0].shape[1] is not None
            or None in tuple(n.input_tensors[0].shape)[2:]
            or None in tuple(keras_graph.flatten(n.outputs)[0].shape)[2:]  # each step's shape: a reshape's
            or any(m is not None for m in keras_graph.flatten(n.arguments.kwargs.get("mask")))
            for n in calls
        ):
            continue
        twins[id(layer)] = StepsAsBatch(layer.layer, name=layer.name)
    return rebuild(model, replace=twins) if twins else None


def unrolled(model, max_steps: int):
    """A model computing what `model` does with its recurrent layers (LSTM, GRU, SimpleRNN, and
    Bidirectional ones) unrolled over their time steps, sharing every other layer and holding the
    recurrent layers' weights; None when it has no recurrent call in its top-level graph that runs over
    a known number of steps, at most `max_steps`, or the graph cannot be read. A layer over an open or a
    longer length keeps its loop while the others unroll (flavorfetcher's 1-step LSTM beside one over
    open-length text: the whole model had kept its loops).

    Why: TensorFlow's converter turns Keras 3's looped RNN into TensorList ops, which TFLite runs only
    with the select-TF-ops (Flex) delegate and int8 quantization refuses; unrolled, the same layer is
    fully connected ops, logistic/tanh and element-wise products, all TFLite builtins with int8 kernels.
    The twin is for inference only, so its dropout rates are 0: a Keras-2 EQTransformer's unrolled
    BiLSTMs (dropout 0.1) kept their dropout masks' random ops in the traced graph, 124 select-TF ops
    that TFLite's interpreter could not run."""
    graph = keras_graph.functional(model)
    if graph is None:
        return None
    twins: dict[int, tuple] = {}
    for node in ordered_nodes(graph):
        layer = node.operation
        if layers.spec(layer).role != "recurrent" or id(layer) in twins:  # the layer table's LSTM, GRU...
            continue
        steps = node.input_tensors[0].shape[1] if node.input_tensors else None
        if (
            steps is None
            or steps > max_steps
            or any(n.input_tensors[0].shape[1] != steps for n in _calls_of(graph, layer))
        ):
            continue
        config = layer.get_config()
        inference = {"unroll": True, "dropout": 0.0, "recurrent_dropout": 0.0}  # see below
        if "layer" in config:  # Bidirectional: its forward (and backward) layer
            for part in ("layer", "backward_layer"):
                if config.get(part):
                    config[part]["config"].update(inference)
        else:
            config.update(inference)
        twins[id(layer)] = (layer, layer.__class__.from_config(config))
    if not twins:
        return None
    new = rebuild(model, replace={key: twin for key, (_layer, twin) in twins.items()})
    for layer, twin in twins.values():
        twin.set_weights(layer.get_weights())
    return new


def static_shaped(model):
    """A model computing what `model` does, with a Reshape to the sizes Keras knows after each call of its
    top-level graph whose sizes TensorFlow Lite's converter may not know (`_run_time_shaped_outputs`);
    None when there is none or the graph cannot be read or traced.

    Why: TFLite's converter legalises a convolution to its builtin (and int8) kernels only with a known
    number of input channels. Keras 3's `ops.rot90` on TensorFlow reshapes its input to a shape sliced
    from `tf.shape`: Python's trace still infers (batch, 30, 30, 1), the converter's own shape inference
    (batch, 30, 30, ?), so the convolution after it stayed tf.Conv2D, int8 TFLite was refused (exit 7) and
    the float file needed select TF ops (DELIGHT's Rot90 layers, bench/ZOO.md). The Reshape is the
    identity on the values and constant sizes for the converter (one RESHAPE op in the TFLite file)."""
    import keras

    graph = keras_graph.functional(model)
    if graph is None:
        return None
    run_time_shaped = _run_time_shaped_outputs(graph)
    if not run_time_shaped:
        return None
    new_inputs, tensors = _fresh_inputs(graph, {})
    for node in ordered_nodes(graph):
        if any(id(t) not in tensors for t in node.input_tensors):
            continue
        for old, new in zip(node.outputs, keras_graph.call_node(node, tensors), strict=True):
            tensors[id(old)] = keras.layers.Reshape(tuple(old.shape[1:]))(new) if id(old) in run_time_shaped else new
    return _model_like(model, graph, new_inputs, tensors)


def _shapes_kept(operation) -> bool:
    """One of Keras' own layers, whose traced sizes the TFLite converter infers (a Lambda runs the user's code)."""
    import keras

    return (
        isinstance(operation, keras.layers.Layer)
        and keras_own(operation)
        and not isinstance(operation, keras.layers.Lambda)
    )


SHAPE_READING_OPS = frozenset({"Shape", "ShapeN", "Size", "Rank"})  # TF ops that read a tensor's sizes at run time


def _run_time_shaped_outputs(graph) -> set[int]:
    """ids of the graph's call outputs whose sizes past the batch Keras knows in full, and that a
    TensorFlow trace of the graph (inference, open batch, as a SavedModel signature traces it) either
    leaves open or computes from sizes read at run time (a Shape op) in a call that is not one of Keras'
    own layers (a Keras operation such as rot90 called as a node, a custom or Lambda layer): Python's
    trace infers such sizes from partly known shapes, the TFLite converter does not. Keras' own layers
    read the batch size that way (Flatten, Reshape) and convert with their sizes known (`_shapes_kept`).
    Empty without tracing when every call is one of Keras' own layers, and when the graph cannot be
    traced so (the export then says why itself)."""
    import tensorflow as tf

    if all(_shapes_kept(node.operation) for node in ordered_nodes(graph)):
        return set()
    found: set[int] = set()

    def trace(*inputs):
        func_graph = tf.compat.v1.get_default_graph()
        values = {id(x): v for x, v in zip(graph.inputs, inputs, strict=True)}
        for node in ordered_nodes(graph):
            if any(id(t) not in values for t in node.input_tensors):
                continue
            before = len(func_graph.get_operations())
            outputs = keras_graph.call_node(node, values, training=False)
            reads_sizes = not _shapes_kept(node.operation) and any(
                op.type in SHAPE_READING_OPS for op in func_graph.get_operations()[before:]
            )
            for old, new in zip(node.outputs, outputs, strict=True):
                known = tuple(old.shape)[1:]
                traced = getattr(new, "shape", None)
                if None not in known and isinstance(traced, tf.TensorShape):
                    if reads_sizes or traced.rank is None or None in traced.as_list()[1:]:
                        found.add(id(old))
                        new = tf.ensure_shape(new, (None, *known))  # the calls after it traced on these sizes
                values[id(old)] = new

    specs = [tf.TensorSpec(tuple(x.shape), x.dtype) for x in graph.inputs]
    try:
        tf.function(trace).get_concrete_function(*specs)
    except Exception:  # Keras/TF raise many types for a graph that cannot be traced on open sizes
        return set()
    return found


DEPTHWISE_TWINS = {"Conv1D": "DepthwiseConv1D", "Conv2D": "DepthwiseConv2D"}  # a grouped conv's twin class


def one_group_per_channel(layer) -> bool:
    """A Keras Conv1D/Conv2D with one group per input channel and one filter per group: a depthwise
    convolution (MobileNet's blocks build theirs so) that the channel graph reads as a mixer it cannot slice."""
    if not (keras_own(layer) and type(layer).__name__ in DEPTHWISE_TWINS and layer.built):
        return False
    channels = layer.kernel.shape[-2] * layer.groups
    return layer.groups > 1 and layer.groups == layer.filters == channels and layer.data_format == "channels_last"


def depthwise_twins(model, wanted=None):
    """(`model` with each `one_group_per_channel` convolution (named in `wanted`, when given) replaced by
    the DepthwiseConv1D/2D that computes the same under the same name, its kernel (window, 1, C) laid out
    as (window, C, 1); the names replaced), or None when there is none. As a depthwise convolution its
    channels follow its input's, so --shrink cuts the expansion convolution before it and the projection
    after it (MobileNet's inverted residual blocks were left whole)."""
    import keras
    import numpy as np

    graph = keras_graph.functional(model)
    if graph is None:
        return None
    twins: dict[int, tuple] = {}
    for node in ordered_nodes(graph):
        op = node.operation
        if id(op) in twins or not one_group_per_channel(op) or (wanted is not None and op.name not in wanted):
            continue
        config = op.get_config()
        twin = getattr(keras.layers, DEPTHWISE_TWINS[type(op).__name__])(
            kernel_size=config["kernel_size"],
            strides=config["strides"],
            padding=config["padding"],
            depth_multiplier=1,
            data_format=config["data_format"],
            dilation_rate=config["dilation_rate"],
            activation=config["activation"],
            use_bias=config["use_bias"],
            depthwise_initializer=config["kernel_initializer"],
            bias_initializer=config["bias_initializer"],
            depthwise_regularizer=config["kernel_regularizer"],
            bias_regularizer=config["bias_regularizer"],
            activity_regularizer=config["activity_regularizer"],
            depthwise_constraint=config["kernel_constraint"],
            bias_constraint=config["bias_constraint"],
            name=op.name,
            dtype=op.dtype_policy,
            trainable=op.trainable,
        )
        twins[id(op)] = (op, twin)
    if not twins:
        return None
    new = rebuild(model, replace={key: twin for key, (_op, twin) in twins.items()})
    for op, twin in twins.values():
        kernel = np.asarray(op.kernel)
        weights = [np.swapaxes(kernel, -1, -2)] + ([np.asarray(op.bias)] if op.use_bias else [])
        twin.set_weights(weights)
    return new, [op.name for op, _twin in twins.values()]


def _calls_of(graph, layer) -> list:
    return [node for node in ordered_nodes(graph) if node.operation is layer and node.input_tensors]


def detach(model):
    """A copy of a rebuilt model with layers of its own, so it saves and trains like a fresh one.
    InputError naming the layer when one cannot describe itself (a layer without get_config, such as
    KerasHub's Gemma RMSNormalization once loaded, which structure/decoders.py swaps for its own where it
    rebuilds Gemma): such a model could not be saved either."""
    import keras

    try:
        config = model.get_config()
    except NotImplementedError as exc:
        inner = [lay for lay in keras_graph.all_layers(model) if not keras_graph.is_model(lay)]
        layer = next((lay for lay in inner if _unconfigurable(lay)), None)
        what = f"layer {layer.name!r} ({type(layer).__name__})" if layer is not None else "a layer"
        raise InputError(
            f"{model.name}: {what} has no get_config, so the rebuilt model could not be saved; "
            "this granularity cannot remove structure from it (-g element prunes it in place)"
        ) from exc
    with keras_graph.copying_in_memory():
        copy = keras.Model.from_config(config)
    keras_graph.copy_weights(model, copy)
    return copy


def _unconfigurable(layer) -> bool:
    try:
        layer.get_config()
    except NotImplementedError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is not this one
        return False
    return False
