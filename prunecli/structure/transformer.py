"""Transformer structure in a functional Keras graph: feed-forward pairs and whole blocks.

- FFN neurons (`-g neuron` on a Transformer): a block's feed-forward network is Dense(d_ff, act) ->
  Dense(d_model). Its d_ff intermediate units are independent neurons: removing one deletes a column of
  the first kernel and a row of the second, and surgery (structure/surgery.py) already slices that pair.
  Every other width of a Transformer is the residual stream (embedding size, attention output, the
  second FFN Dense, LayerNormalization): its channels meet in every residual Add and are read by every
  LayerNormalization, whose mean and variance mix them, so removing one changes every block. On a
  model with attention layers `-g neuron` therefore prunes the FFN intermediate units only, and keeps
  the residual stream whole (`ffn_only`).
- Depth (`-g layer`): a Transformer block, attention sub-block and FFN sub-block together, is one
  span of the graph from the block's input tensor to its output tensor of the same shape that nothing
  outside reads into. `block_candidates` offers each such span to layer removal: the block's output
  becomes its input (Fan et al. 2019 "LayerDrop"; Sajjad et al. 2023 drop top blocks of BERT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from prunecli.errors import InputError
from prunecli.structure import keras_graph, layers

CONV_FAMILIES = ("conv", "separable", "transpose", "depthwise")  # layer-table families of convolutions


@dataclass
class Part:
    """One weight that holds a slice per head."""

    name: str  # the target name ("block/mha/query/kernel") or the variable path for a bias
    variable: Any
    axis: int  # the head axis
    role: str  # "q" (query heads) or "kv" (key/value heads)
    projection: str  # "query", "key", "value" or "output"
    width: int = 1  # entries of the head axis per head: the head size where a Dense holds heads flattened
    blocks: int = 1  # runs of all heads one after another on the head axis (Swin's q, k, v: 3)


@dataclass
class HeadLayer:
    """One attention layer whose heads can be pruned.

    Its unit (what is scored and removed whole) is a head of multi-head attention; under grouped-query
    attention a key/value head with the G query heads it serves (a group), so every key/value head keeps
    G query heads; under multi-query attention (one key/value head for all query heads) a query head
    alone: the shared key/value head stays while any query head does, and belongs to no unit."""

    path: str  # "mha", or "encoder_0/self_attention_layer" inside a KerasHub layer
    layer: Any
    owner: Any  # the top-level layer of the model that holds it (itself for a plain MHA)
    num_heads: int  # query heads
    num_kv_heads: int  # key/value heads (== num_heads without grouped-query attention)
    parts: list[Part] = field(default_factory=list)
    shrink_blocker: str | None = None  # why --shrink cannot delete its heads (None: it can)

    @property
    def shared_kv(self) -> bool:
        """Multi-query attention: one key/value head serves several query heads, each its own unit."""
        return self.num_kv_heads == 1 and self.num_heads > 1

    @property
    def units(self) -> int:
        """Prunable units: heads, key/value groups under grouped-query attention, query heads under
        multi-query attention."""
        return self.num_heads if self.shared_kv else self.num_kv_heads

    @property
    def group(self) -> int:
        """Query heads per unit."""
        return self.num_heads // self.units

    @property
    def unit_parts(self) -> list[Part]:
        """The parts sliced by unit: all, but the shared key/value head's under multi-query attention."""
        return [p for p in self.parts if p.role == "q" or not self.shared_kv]

    @property
    def output_kernel(self):
        return next(p.variable for p in self.parts if p.projection == "output")

    def heads_of(self, units) -> list[int]:
        """The query heads of these units."""
        return [u * self.group + i for u in units for i in range(self.group)]

    def kv_heads_of(self, units) -> list[int]:
        """The key/value heads of these units (none under multi-query attention)."""
        return [] if self.shared_kv else list(units)

    def slice_index(self, part: Part, units) -> list[int]:
        """The entries of the part's head axis that these units hold (each head's `width` of them)."""
        heads = self.heads_of(units) if part.role == "q" else self.kv_heads_of(units)
        count = self.num_heads if part.role == "q" else self.num_kv_heads
        return keras_graph.head_entries(heads, count, part.width, part.blocks)

    def kept_heads(self, kept_units) -> tuple[list[int], list[int]]:
        """(query heads, key/value heads) left with these units: the shared key/value head stays."""
        kv = list(range(self.num_kv_heads)) if self.shared_kv else list(kept_units)
        return self.heads_of(kept_units), kv


# ---------------------------------------------------------------------------------------------------
# Finding attention layers


# what an attention layer's projections are called in a HeadLayer's parts, in keras_graph's order
PROJECTIONS = ("query", "key", "value", "output")
FUSED_PROJECTIONS = ("query_key_value", "output")  # GPT-NeoX's one q/k/v projection: head h's q, k and v


def _sublayers(layer) -> list:
    return keras_graph.children(layer)  # none for Keras operations (keras.ops.*)


def _var_path(var) -> str:
    return str(getattr(var, "path", None) or var.name)


def _describe(layer, path: str, owner, target_names: dict) -> HeadLayer | None:
    """A HeadLayer for an attention layer, or None when `layer` is not one we understand."""
    import keras

    if isinstance(layer, keras.layers.MultiHeadAttention):
        heads = kv = keras_graph.attention_head_count(layer)
    elif keras_graph.grouped_head_counts(layer) is not None:
        heads, kv = keras_graph.grouped_head_counts(layer)
        if kv <= 0 or heads % kv:
            return None
    else:
        return None
    projections = keras_graph.attention_projections(layer)
    if projections is None:
        return None
    parts: list[Part] = []
    names = FUSED_PROJECTIONS if keras_graph.fused_qkv(layer) else PROJECTIONS
    blocks = keras_graph.attention_projection_blocks(layer)
    for (sub, role, k_axis, b_axis, width), projection, runs in zip(projections, names, blocks, strict=True):
        if getattr(sub, "kernel", None) is None:
            return None
        want = (heads if role == "q" else kv) * width * runs
        kernel = sub.kernel
        flat = width > 1  # heads one after another on one axis (SmolLM3's Dense q/k/v, GPT-NeoX's output)
        if len(kernel.shape) != (2 if flat else 3) or int(kernel.shape[k_axis]) != want:
            return None  # a layout we do not know
        name = target_names.get(id(kernel), _var_path(kernel))
        parts.append(Part(name, kernel, k_axis, role, projection, width, runs))
        bias = getattr(sub, "bias", None)
        rank = 1 if flat else 2
        if b_axis is not None and bias is not None and len(bias.shape) == rank and int(bias.shape[b_axis]) == want:
            parts.append(Part(target_names.get(id(bias), _var_path(bias)), bias, b_axis, role, projection, width, runs))
    for table, axis in keras_graph.attention_head_tables(layer):
        if int(table.shape[axis]) != heads:
            return None
        parts.append(Part(target_names.get(id(table), _var_path(table)), table, axis, "q", "head_table"))
    return HeadLayer(path, layer, owner, heads, kv, parts, _shrink_blocker(layer, owner))


def _shrink_blocker(layer, owner) -> str | None:
    """Why --shrink cannot delete this attention layer's heads (None: it can). A KerasHub decoder block
    (Llama, Mistral, Qwen, Qwen3, Gemma) is rebuilt whole by structure/decoders.py, a KerasHub
    TransformerEncoder as HeadPrunedTransformerEncoder, a plain MultiHeadAttention from its config."""
    from prunecli.structure import decoders, vision_encoders

    own_attention = keras_graph.hub_self_attention(owner) is layer
    if layer is not owner and own_attention and decoders.is_decoder(owner):
        return decoders.shrink_blocker(owner)
    if layer is not owner and own_attention and vision_encoders.is_block(owner):
        return vision_encoders.shrink_blocker(owner)
    if layer is not owner and not (type(owner).__name__ in HUB_ENCODERS and own_attention):
        return (
            f"inside {type(owner).__name__} {owner.name!r}, which prunecli cannot rebuild with fewer heads (it"
            " rebuilds KerasHub's Llama, Mistral, Qwen, Qwen3, Gemma, Gemma3, Phi-3, SmolLM3, GPT-2, OPT, GPT-NeoX, Falcon and Bloom"
            " decoder blocks, TransformerEncoder blocks, ViT, DeiT, MiT and Swin encoder blocks and"
            " functional models' MultiHeadAttention)"
        )
    if type(layer).__name__ not in ("MultiHeadAttention", "CachedMultiHeadAttention"):
        return f"{type(layer).__name__} is not keras.layers.MultiHeadAttention"
    if keras_graph.gated_attention(layer):
        return "gated attention (use_gate=True) is not rebuilt"
    return None


def find(model, targets=None) -> list[HeadLayer]:
    """Every attention layer of the model whose heads can be scored, nested layers opened, each once.

    `targets` (from structure.targets.select) names the kernels as the rest of prunecli does. A layer's
    owner is the model's own layer that holds it, or the KerasHub decoder block that does (inside the
    backbone of a causal LM: structure/decoders.py rebuilds both), or the ViT or DeiT encoder block
    (structure/vision_encoders.py)."""
    from prunecli.structure import decoders, vision_encoders

    names = {id(t.variable): t.name for t in (targets or [])}
    found: list[HeadLayer] = []
    seen: set[int] = set()

    def visit(layer, prefix: str, owner):
        path = f"{prefix}/{layer.name}" if prefix else layer.name
        if id(layer) in seen:
            return
        seen.add(id(layer))
        described = _describe(layer, path, owner, names)
        if described is not None:
            found.append(described)
            return
        for child in _sublayers(layer):
            block = decoders.is_decoder(layer) or vision_encoders.is_block(layer)
            visit(child, path, layer if block else owner)

    for top in _sublayers(model):
        visit(top, "", top)
    return found


def find_in_layer(layer) -> list[HeadLayer]:
    """The attention layers of one layer: itself, or those nested inside it (a KerasHub block)."""
    found = _describe(layer, layer.name, layer, {})
    if found is not None:
        return [found]
    return [hl for child in _sublayers(layer) for hl in find_in_layer(child)]


_PASS_THROUGH = ("Activation", "Dropout", "ReLU", "LeakyReLU", "ELU", "GaussianDropout", "GaussianNoise")


def _graph_nodes(model):
    graph = keras_graph.functional(model)
    if graph is None:
        return None, []
    return graph, keras_graph.nodes(graph)


def _is_attention(layer) -> bool:
    return bool(find_in_layer(layer))


def has_attention(model) -> bool:
    """Whether the model holds an attention layer (it is a Transformer, for -g neuron): one whose heads
    prunecli reads, or one whose layout it does not know (`unread_attention`)."""
    return bool(find(model)) or bool(unread_attention(model))


def unread_attention(model) -> list[str]:
    """Class names of the layers that call themselves attention and hold projection matrices (KerasHub's
    GemmaAttention, BloomAttention, FalconAttention...) but whose heads `find` cannot read: a
    Transformer all the same, whose residual stream -g neuron must not cut. (keras.layers.Attention and
    AdditiveAttention hold no matrix: a model using them is not a Transformer here; nor is one whose
    attention pools a sequence, as RNN classifiers' attention layers do (textgenrnn's
    AttentionWeightedAverage, DM3Loc's Attention_mask, bench/ZOO.md), or only scores its positions.)"""
    read = {id(hl.layer) for hl in find(model)}
    return sorted(
        {
            type(layer).__name__
            for layer in keras_graph.all_layers(model)
            if "Attention" in type(layer).__name__
            and id(layer) not in read
            and any(_projection(w) for w in layer.weights)
            and not _pools_sequence(layer)
        }
    )


def _projection(weight) -> bool:
    """A matrix that maps features to features (two axes wider than 1: a query, key, value or output
    projection), not a scoring vector (features x 1, as TADA's attention gate holds: it weighs the
    positions of a recurrent model's sequence and keeps no residual stream)."""
    return sum(int(d) > 1 for d in weight.shape) >= 2


def _pools_sequence(layer) -> bool:
    """Whether a layer called in a functional graph pools the sequence it reads: it returns fewer axes
    (one vector per example), or as many with another length (a fixed number of summary vectors, as
    structured self-attention does: DM3Loc's Attention_mask reads 1000 positions and returns 5, one per
    head). Self-attention returns its query's length, so a Transformer's never does. False where its
    call is not recorded (inside another layer's call)."""
    try:
        inputs, outputs = layer.input, layer.output
    except (AttributeError, ValueError):  # never called functionally: nothing recorded
        return False
    first_in = inputs[0] if isinstance(inputs, (list, tuple)) else inputs
    first_out = outputs[0] if isinstance(outputs, (list, tuple)) else outputs
    if len(first_out.shape) < len(first_in.shape):
        return True
    return len(first_in.shape) >= 3 and first_out.shape[1] != first_in.shape[1]


def ffn_pairs(model) -> list[tuple[str, str]]:
    """(first Dense, second Dense) names of each feed-forward pair: a Dense on a sequence (rank >= 3)
    whose output, through activations/dropout only, is read by one Dense that maps back to the first
    Dense's input width."""
    graph, nodes = _graph_nodes(model)
    if graph is None:
        return []
    readers: dict[int, list] = {}
    for node in nodes:
        for t in node.input_tensors:
            readers.setdefault(id(t), []).append(node)
    pairs = []
    for node in nodes:
        first = node.operation
        if type(first).__name__ != "Dense" or len(node.input_tensors) != 1:
            continue
        if len(node.input_tensors[0].shape) < 3:
            continue
        t = node.outputs[0]
        second = None
        while True:
            nxt = readers.get(id(t), [])
            if len(nxt) != 1:
                break
            op = nxt[0].operation
            if type(op).__name__ == "Dense":
                second = op
                break
            if type(op).__name__ not in _PASS_THROUGH or len(nxt[0].outputs) != 1:
                break
            t = nxt[0].outputs[0]
        if second is not None and int(second.units) == int(node.input_tensors[0].shape[-1]):
            pairs.append((first.name, second.name))
    return pairs


def ffn_only(model, targets, include=()) -> tuple[list, list[str]]:
    """The targets `-g neuron` prunes on a Transformer: the first Dense of each FFN pair (and any
    layer the user names with --include). Returns (targets, notes); a model without attention layers
    gets its targets back unchanged."""
    from prunecli.structure import decoders, experts, vision_encoders
    from prunecli.structure import targets as targets_mod

    if not has_attention(model):
        return list(targets), []
    firsts = {first for first, _second in ffn_pairs(model)}
    # KerasHub decoders: gate, up and down, one unit across the three; ViT's and DeiT's encoder blocks: up and
    # down; mixture-of-experts blocks: their expert banks' stacked kernels
    swiglu = decoders.ffn_kernel_ids(model) | vision_encoders.ffn_kernel_ids(model) | experts.kernel_ids(model)
    swiglu |= encoder_ffn_kernel_ids(model)  # KerasHub TransformerEncoder blocks (BERT...): up and down
    kept = [
        t for t in targets if t.layer_name in firsts or id(t.variable) in swiglu or targets_mod.named_in(t, include)
    ]
    if targets and not kept:  # a Transformer whose feed-forward layers are not found: never its residual stream
        convolutions = [t for t in targets if layers.spec(t.layer).family in CONV_FAMILIES]
        if convolutions:  # a convolutional network with attention blocks (EQTransformer): its filters
            left = sorted({t.layer_name for t in targets} - {t.layer_name for t in convolutions})
            return convolutions, [
                "attention without feed-forward layers prunecli reads: -g neuron prunes the convolutions' "
                f"filters only ({', '.join(left[:6])}{' ...' if len(left) > 6 else ''} stay whole; --include "
                "forces a layer)"
            ]
        unread = unread_attention(model)
        hub = any(
            type(layer).__module__.startswith("keras_hub") and not keras_graph.is_model(layer)
            for layer in keras_graph.all_layers(model)
        )
        if not unread and not hub:
            raise InputError(
                f"-g neuron on a Transformer prunes feed-forward units only, and {model.name} has none (a Dense "
                "on a sequence read by one Dense back to its width); use -g element or -g head, or --include "
                "to force a layer"
            )
        layout = ", ".join([type(model).__name__, *unread[:3]])
        raise InputError(
            f"-g neuron on a Transformer prunes feed-forward units, and none were found in {model.name} "
            f"({layout}: a layout prunecli does not know; it knows functional Keras "
            "Transformers and KerasHub's Llama, Mistral, Qwen, Qwen3, Gemma, Gemma3, Phi-3, SmolLM3, GPT-2, OPT, GPT-NeoX, "
            "Falcon and Bloom decoders, Mixtral, Qwen-MoE, Qwen3-MoE and GPT-OSS experts, ViT and DeiT encoders, "
            "TransformerEncoder (BERT...), DeBERTaV3 and F-Net encoder blocks); use -g element, or "
            "--include to force a layer"
        )
    left = sorted({t.layer_name for t in targets} - {t.layer_name for t in kept})
    notes = []
    if left:
        notes.append(
            "Transformer: -g neuron prunes the feed-forward intermediate units only; the residual stream "
            f"and attention stay whole ({', '.join(left[:8])}{' ...' if len(left) > 8 else ''}; "
            "-g head prunes attention heads, --include forces a layer)"
        )
    return kept, notes


def block_candidates(model, allowed=lambda _name: True) -> list:
    """One dict per whole Transformer block of the functional graph, for removal.layers.analyse:
    {"name", "layers" (names in graph order), "nodes" (node ids), "input", "output" (tensors), "params"}.

    A block starts at the skip input of the residual Add that closes an attention sub-block and ends
    where the next block starts (the last block: at the Add closing its last residual sub-block, plus
    a LayerNormalization right after it in post-norm models). The span must keep the shape, must not
    produce a model output, and nothing outside it may read a tensor inside it.

    A KerasHub block (BERT's TransformerEncoder, Llama's decoder...) is one layer call whose residual
    Adds are inside it: it is a candidate of its own, its output becoming its sequence input (its
    other inputs, the padding mask, stay for the blocks that read them too)."""
    graph, nodes = _graph_nodes(model)
    if graph is None:
        return []
    g = _Wiring(graph, nodes)
    out = [_block([n], n.operation.name, *span) for n, span in _hub_block_spans(g) if allowed(n.operation.name)]
    residuals = _residual_adds(g)
    starts = [i for i, r in enumerate(residuals) if r[2]]
    for k, i in enumerate(starts):
        start_t = residuals[i][1]
        end_t = residuals[starts[k + 1]][1] if k + 1 < len(starts) else _last_block_end(g, residuals, i)
        span = g.ancestors(end_t, start_t)
        if not span or tuple(start_t.shape[1:]) != tuple(end_t.shape[1:]) or id(end_t) in g.model_outputs:
            continue
        if not _span_is_closed(g, span, end_t):
            continue
        inner = sorted((n for n in nodes if id(n) in span), key=lambda n: g.order[id(n)])
        attn_name = next(n.operation.name for n in inner if _is_attention(n.operation))
        if allowed(attn_name):
            out.append(_block(inner, attn_name, start_t, end_t))
    return out


class _Wiring:
    """Who produces and who reads each tensor of a functional graph, the nodes' order, and the model's
    outputs: what finding Transformer blocks asks of the graph over and over."""

    def __init__(self, graph, nodes):
        self.nodes = nodes
        self.producer = {id(out): node for node in nodes for out in node.outputs}
        self.readers: dict[int, list] = {}
        for node in nodes:
            for t in node.input_tensors:
                self.readers.setdefault(id(t), []).append(node)
        self.order = {id(node): i for i, node in enumerate(nodes)}
        self.model_outputs = {id(t) for t in graph.outputs}

    def readers_of(self, tensor) -> list:
        return self.readers.get(id(tensor), [])

    def ancestors(self, tensor, stop) -> set | None:
        """Node ids between `stop` (exclusive) and `tensor`; None if a path misses `stop`."""
        seen, stack = set(), [tensor]
        while stack:
            t = stack.pop()
            if id(t) == id(stop):
                continue
            node = self.producer.get(id(t))
            if node is None:
                return None
            if id(node) in seen:
                continue
            seen.add(id(node))
            stack.extend(node.input_tensors)
        return seen


def _hub_block_spans(g: _Wiring) -> list[tuple]:
    """(node, (sequence input, output)) of every call of a KerasHub Transformer block layer that keeps
    its sequence input's shape and does not produce a model output."""
    from prunecli.structure import decoders

    found = []
    for node in g.nodes:
        layer = node.operation
        if type(layer).__name__ not in HUB_BLOCKS and not decoders.is_decoder(layer):
            continue
        if len(node.outputs) != 1 or not node.input_tensors:
            continue
        y = node.outputs[0]
        # the sequence: the block's input shaped as its output (Falcon's backbone passes it by keyword, after
        # the padding mask in the node's tensors)
        x = next((t for t in node.input_tensors if tuple(t.shape[1:]) == tuple(y.shape[1:])), None)
        if x is not None and id(y) not in g.model_outputs:
            found.append((node, (x, y)))
    return found


def _residual_adds(g: _Wiring) -> list[tuple]:
    """The residual Adds in graph order, as (add node, skip tensor, whether the branch holds attention):
    a two-input Add one of whose inputs (the branch) is computed from the other (the skip) alone."""
    residuals = []
    for node in g.nodes:
        if type(node.operation).__name__ != "Add" or len(node.input_tensors) != 2:
            continue
        for skip_pos in (0, 1):
            skip_t, branch_t = node.input_tensors[skip_pos], node.input_tensors[1 - skip_pos]
            inside = g.ancestors(branch_t, skip_t)
            if inside:
                attn = any(_is_attention(n.operation) for n in g.nodes if id(n) in inside)
                residuals.append((node, skip_t, attn))
                break
    return residuals


def _last_block_end(g: _Wiring, residuals: list[tuple], start: int):
    """Where the last block ends: the output of the last residual Add, or of the LayerNormalization
    read right after it when the model is post-norm (its first Add of the block feeds a LayerNormalization)."""
    end_t = residuals[-1][0].outputs[0]
    after = g.readers_of(end_t)
    post_norm = any(
        type(n.operation).__name__ == "LayerNormalization" for n in g.readers_of(residuals[start][0].outputs[0])
    )
    if post_norm and len(after) == 1 and type(after[0].operation).__name__ == "LayerNormalization":
        end_t = after[0].outputs[0]
    return end_t


def _span_is_closed(g: _Wiring, span: set, end_t) -> bool:
    """Whether the span's only way out is `end_t`: no tensor inside it (other than `end_t`) is a model
    output or is read by a node outside it, so bypassing the span leaves the rest of the graph intact."""
    for node in g.nodes:
        if id(node) not in span:
            continue
        for o in node.outputs:
            if id(o) == id(end_t):
                continue
            if id(o) in g.model_outputs or any(id(r) not in span for r in g.readers_of(o)):
                return False
    return True


def _block(inner: list, attn_name: str, start_t, end_t) -> dict:
    """The block_candidates entry of one span: its nodes in graph order, named after its attention layer."""
    params = sum(int(math.prod(w.shape)) for n in inner for w in (getattr(n.operation, "weights", None) or []))
    return {
        "name": f"block:{attn_name}",
        "layers": [n.operation.name for n in inner],
        "nodes": {id(n) for n in inner},
        "input": start_t,
        "output": end_t,
        "params": params,
    }


# ---------------------------------------------------------------------------------------------------
# The layer table: KerasHub Transformer blocks have a cost flops.py can count

HUB_BLOCKS = (
    "TransformerEncoder",
    "TransformerDecoder",
    "LlamaTransformerDecoder",
    "MistralTransformerDecoder",
    "QwenTransformerDecoder",
    "PrunedLlamaTransformerDecoder",
    "PrunedMistralTransformerDecoder",
    "PrunedQwenTransformerDecoder",
    "PrunedGemmaDecoderBlock",
    "PrunedTransformerDecoder",
    "GPTNeoXDecoder",
    "PrunedGPTNeoXDecoder",
    "HeadPrunedTransformerEncoder",
    "GemmaDecoderBlock",
    "ViTEncoderBlock",
)


def block_macs(layer, in_shapes, out_shapes) -> tuple[int | None, int | None]:
    """(multiply-adds, non-zero multiply-adds) per example of one call of a Transformer block layer
    (a KerasHub TransformerEncoder...): its attention layers at the input's sequence length, and every
    other 2-D kernel (the FFN) once per position. None when the sequence length is open."""
    import numpy as np

    shape = tuple(in_shapes[0]) if in_shapes else ()
    if len(shape) != 3 or shape[1] is None:
        return None, None
    seq = int(shape[1])
    dense = nonzero = 0
    inside: set[int] = set()
    for hl in find_in_layer(layer):
        cost = _attention_cost(hl, seq)
        kernels = [p.variable for p in hl.parts if len(p.variable.shape) == 3]
        density = sum(int(np.count_nonzero(np.asarray(k))) for k in kernels) / max(
            sum(int(np.prod(k.shape)) for k in kernels), 1
        )
        dense += cost
        nonzero += round(cost * density)
        inside |= {id(w) for w in hl.layer.weights}
    for w in layer.weights:
        if id(w) in inside or len(w.shape) != 2 or "embedding" in str(getattr(w, "path", w.name)):
            continue
        size = int(np.prod(w.shape))
        dense += seq * size
        nonzero += seq * int(np.count_nonzero(np.asarray(w)))
    return dense, nonzero


def _attention_cost(hl: HeadLayer, seq_len: int, heads: int | None = None, kv_heads: int | None = None) -> int:
    """Multiply-adds of one attention layer over `seq_len` tokens, with all its heads or `heads` query and
    `kv_heads` key/value heads: the four projections and the two products."""
    heads = hl.num_heads if heads is None else heads
    kv_heads = hl.num_kv_heads if kv_heads is None else kv_heads
    q = hl.parts[0]
    d_model, *own_axis = (int(d) for i, d in enumerate(q.variable.shape) if i != q.axis)
    head_dim = own_axis[0] if own_axis else q.width  # no axis of its own where the heads are flattened
    if q.projection == "query_key_value" and own_axis:  # one head's q, k and v side by side (GPT-NeoX's)
        head_dim //= 3
    output = next(p for p in hl.parts if p.projection == "output")
    o = output.variable
    flat = len(o.shape) == 2  # (heads * head_dim, hidden): the heads one after another
    value_dim = output.width if flat else int(o.shape[1])
    proj_q = seq_len * d_model * heads * head_dim
    proj_kv = seq_len * d_model * kv_heads * (head_dim + value_dim)
    proj_o = seq_len * heads * value_dim * int(o.shape[-1])
    products = seq_len * seq_len * heads * (head_dim + value_dim)
    return proj_q + proj_kv + proj_o + products


def unit_attention_cost(hl: HeadLayer, seq_len: int) -> int:
    """What one unit of the layer costs over `seq_len` tokens (every term is linear in the heads)."""
    kv_left = hl.num_kv_heads - len(hl.kv_heads_of([0]))  # a unit owns one key/value head, or none when shared
    return _attention_cost(hl, seq_len) - _attention_cost(hl, seq_len, hl.num_heads - hl.group, kv_left)


# KerasHub vision Transformers' encoders (every block and the final norm in one layer) and patch embeddings
# (a Conv2D with the patch size as its stride, then positions added): structure/vision_encoders.py
HUB_ENCODER_STACKS = ("ViTEncoder", "DeiTEncoder")
HUB_PATCH_EMBEDDINGS = ("ViTPatchingAndEmbedding", "DeiTEmbeddings")


def encoder_stack_macs(layer, in_shapes, out_shapes) -> tuple[int | None, int | None]:
    """A vision Transformer encoder: the sum of its blocks' (block_macs, each at the encoder's sequence)."""
    dense = nonzero = 0
    for block in layer.encoder_layers:
        block_dense, block_nonzero = block_macs(block, in_shapes, in_shapes)
        if block_dense is None:
            return None, None
        dense, nonzero = dense + block_dense, nonzero + block_nonzero
    return dense, nonzero


def patch_embedding_macs(layer, in_shapes, out_shapes) -> tuple[int | None, int | None]:
    """A vision Transformer's patch embedding: its Conv2D once per patch (the position embedding is a lookup)."""
    import numpy as np

    conv = layer.patch_embedding
    if not in_shapes or any(d is None for d in tuple(in_shapes[0])[1:]):
        return None, None
    out = tuple(conv.compute_output_shape(tuple(in_shapes[0])))
    patches = int(np.prod(out[1:-1] if conv.data_format == "channels_last" else out[2:]))
    kernel = conv.kernel
    return patches * int(np.prod(kernel.shape)), patches * int(np.count_nonzero(np.asarray(kernel)))


def reversible_embedding_macs(layer, in_shapes, out_shapes) -> tuple[int | None, int | None]:
    """KerasHub's ReversibleEmbedding: a lookup (0) when it embeds token ids, the tied LM head when it
    is called in reverse on hidden states (every position times the (vocabulary, width) matrix)."""
    import numpy as np

    shape = tuple(in_shapes[0]) if in_shapes else ()
    if len(shape) < 3:  # token ids (batch, sequence): a lookup
        return 0, 0
    positions = 1
    for d in shape[1:-1]:
        if d is None:
            return None, None
        positions *= int(d)
    table = layer.embeddings
    return positions * int(np.prod(table.shape)), positions * int(np.count_nonzero(np.asarray(table)))


def register_layers() -> None:
    """Teach the layer table (structure/layers.py) the cost of KerasHub's Transformer blocks and tied
    embeddings (the ends stay out of pruning: role other), and that KerasHub's CachedMultiHeadAttention
    is a MultiHeadAttention."""
    from prunecli.structure import layers

    layers.register("CachedMultiHeadAttention", like="MultiHeadAttention")
    layers.register("ReversibleEmbedding", layers.LayerSpec("other", macs=reversible_embedding_macs))
    for name in HUB_BLOCKS:
        layers.register(name, layers.LayerSpec("other", macs=block_macs))
    for name in HUB_ENCODER_STACKS:
        layers.register(name, layers.LayerSpec("other", macs=encoder_stack_macs))
    for name in HUB_PATCH_EMBEDDINGS:
        layers.register(name, layers.LayerSpec("other", macs=patch_embedding_macs))


register_layers()


# ---------------------------------------------------------------------------------------------------
# KerasHub encoders with fewer heads

# KerasHub encoder blocks whose self-attention `--shrink` can rebuild with fewer heads: their config
# sets num_heads and they compute key_dim = hidden_dim // num_heads, so the rebuilt block is
# HeadPrunedTransformerEncoder, which takes the original key_dim from its own config.
HUB_ENCODERS = ("TransformerEncoder", "HeadPrunedTransformerEncoder")
# KerasHub encoder blocks whose feed-forward units -g neuron removes (encoder_ffns): TransformerEncoder's, and
# DeBERTaV3's and F-Net's, whose configs set intermediate_dim alike
FFN_ENCODERS = HUB_ENCODERS + ("DisentangledAttentionEncoder", "FNetEncoder")
_HUB_CLASSES: dict[str, Any] = {}


def encoder_hosts(model) -> list:
    """The models whose graphs call KerasHub TransformerEncoder blocks: the model itself (a backbone, or a
    task opened into one graph) and the backbone a task holds."""
    found = []
    for host in (model, getattr(model, "backbone", None)):
        if host is not None and keras_graph.is_model(host):
            if any(type(layer).__name__ in FFN_ENCODERS for layer in keras_graph.children(host)):
                found.append(host)
    return found


def encoder_ffns(model) -> list:
    """The feed-forward networks of the KerasHub TransformerEncoder blocks of the model or of its task's
    backbone (BERT, RoBERTa, DistilBERT, XLM-RoBERTa, ALBERT; DeBERTaV3's and F-Net's blocks), as decoders.Ffn without a gate: unit j is the
    intermediate Dense's column j and bias j (its activation, ReLU or GeLU, is 0 at 0) and the output Dense's
    row j, so masking it and deleting it compute the same. Named as targets name their layers
    ("bert_backbone/transformer_layer_0" inside a task, "transformer_layer_0" once opened)."""
    from prunecli.structure import decoders

    out = []
    for host in encoder_hosts(model):
        prefix = "" if host is model else f"{host.name}/"
        for block in keras_graph.children(host):
            parts = keras_graph.hub_ffn(block) if type(block).__name__ in FFN_ENCODERS else None
            if parts is not None:
                out.append(decoders.Ffn(prefix + block.name, block, *parts))
    return out


def encoder_ffn_kernel_ids(model) -> set[int]:
    return {id(var) for f in encoder_ffns(model) for var, _axis in f.slices()}


def smaller_encoder(block, kept_units: list[int]):
    """(the block rebuilt with the kept feed-forward units, its weights by path): the block's config with
    intermediate_dim = len(kept_units); a TransformerEncoder as HeadPrunedTransformerEncoder, its attention's
    key size kept."""
    import numpy as np

    _gate, up, down = keras_graph.hub_ffn(block)
    config = {**block.get_config(), "intermediate_dim": len(kept_units)}
    if type(block).__name__ in HUB_ENCODERS:
        config.setdefault("key_dim", keras_graph.attention_key_dim(keras_graph.hub_self_attention(block)))
        new = register_hub_layers()["TransformerEncoder"].from_config(config)
    else:  # DeBERTaV3's, F-Net's: their own class, its attention (if any) sized by its unchanged config
        new = type(block).from_config(config)
    cuts = {id(up.kernel): 1, id(up.bias): 0, id(down.kernel): 0}
    values = {}
    for v in block.weights:
        arr = np.asarray(v)
        if id(v) in cuts:
            arr = np.take(arr, kept_units, axis=cuts[id(v)])
        values[str(v.path)] = arr
    return new, values


def register_hub_layers() -> dict[str, Any]:
    """Define and register (once) prunecli's KerasHub block subclasses; {} without keras-hub.

    Call it before loading a model prunecli shrank from a KerasHub backbone (its file names
    `prunecli>HeadPrunedTransformerEncoder`, `prunecli>PrunedLlamaTransformerDecoder`...)."""
    if _HUB_CLASSES:
        return _HUB_CLASSES
    try:
        import keras_hub
    except ImportError:
        return {}
    import keras

    from prunecli.structure import decoders, hub_tables, vision_encoders

    decoders.register()  # Llama/Mistral/Qwen/Gemma blocks with fewer heads or feed-forward units
    vision_encoders.register()  # ViT's and DeiT's backbones, encoders and blocks

    @keras.saving.register_keras_serializable(package="prunecli")
    class HeadPrunedTransformerEncoder(keras_hub.layers.TransformerEncoder):
        """keras_hub.layers.TransformerEncoder with `num_heads` heads of `key_dim` each: the encoder
        derives key_dim = hidden_dim // num_heads, which is wrong once heads were removed."""

        def __init__(self, key_dim, **kwargs):
            super().__init__(**kwargs)
            self.key_dim = int(key_dim)

        def build(self, inputs_shape):
            super().build(inputs_shape)
            old = self._self_attention_layer  # built with the derived key_dim: forget it
            self._tracker.untrack(old)
            del self._self_attention_layer
            attention = keras.layers.MultiHeadAttention(
                num_heads=self.num_heads,
                key_dim=self.key_dim,
                dropout=self.dropout,
                kernel_initializer=keras.initializers.get(self.kernel_initializer),
                bias_initializer=keras.initializers.get(self.bias_initializer),
                dtype=self.dtype_policy,
                name="self_attention_layer",
            )
            attention.build(query_shape=inputs_shape, value_shape=inputs_shape)
            self._self_attention_layer = attention

        def get_config(self):
            return {**super().get_config(), "key_dim": self.key_dim}

    _HUB_CLASSES["TransformerEncoder"] = HeadPrunedTransformerEncoder
    hub_tables.built_relative_embedding()  # DeBERTaV3's relative-position table, opened
    return _HUB_CLASSES


def register_for_file(path) -> bool:
    """Before loading a .keras file: when its config names KerasHub classes or prunecli's
    HeadPrunedTransformerEncoder, import keras-hub and register our subclasses (Keras finds a
    class only once its package was imported). Returns whether the file needs keras-hub."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read("config.json").decode("utf-8", "replace")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False
    from prunecli.structure import decoders, vision_encoders

    ours = (
        ("HeadPrunedTransformerEncoder", "BuiltRelativeEmbedding") + decoders.CLASS_NAMES + vision_encoders.CLASS_NAMES
    )
    if "keras_hub" not in text and not any(name in text for name in ours):
        return False
    if not register_hub_layers():
        from prunecli.errors import InputError

        raise InputError(f"{path} holds KerasHub layers: pip install 'prunecli[hub]'")
    return True
