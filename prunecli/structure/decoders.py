"""KerasHub decoder blocks (Llama, Mistral, Qwen, Qwen3, Gemma, Gemma3, Phi-3, SmolLM3; GPT-2's and OPT's
TransformerDecoder; GPT-NeoX, Falcon, Bloom): their attention heads and feed-forward units, rebuilt smaller.

One block is `x + attn(norm(x))`, then `x + down(act(gate(norm(x))) * up(norm(x)))` (GPT-2, OPT, GPT-NeoX,
Falcon, Bloom: `x + down(act(up(norm(x))))`, no gate; GPT-NeoX adds both to the same x, a parallel
residual), all inside one Keras layer (LlamaTransformerDecoder, GemmaDecoderBlock, Phi3Decoder,
SmolLM3DecoderLayer, TransformerDecoder, GPTNeoXDecoder...), so the functional graph sees
one node per block and the channel graph cannot slice what is inside. This module reads the block
(through keras_graph, the one adapter for private attributes: it knows where each family keeps its
attention, projections and norms, SmolLM3's feed-forward network inside its SmolLM3MLP, and reads where a
projection kernel holds its heads from its einsum equation) and rebuilds it with fewer heads and fewer
feed-forward units. FAMILIES holds what else differs between families: the causal LMs around the
backbone, the blocks' call and head arguments, Gemma's and Gemma3's scaled embedding, SmolLM3's argument
names, Gemma3's cache (one (key, value) pair per block); a block's intermediate size per feed-forward
unit is read from its own config (Gemma's counts both gates, Gemma3's one). TransformerDecoder is
KerasHub's generic block:
only the class itself, without cross-attention (BART's), is a family; Whisper's and Moonshine's subclasses
are not.

- Heads. Grouped-query attention shares key/value head k between the query heads k*G ... k*G+G-1
  (KerasHub repeats each key/value head G times). Removing whole groups keeps that mapping, so the
  block is rebuilt with num_query_heads = G * kept groups and num_key_value_heads = kept groups, the
  kept slices of q/k/v (and Qwen's and SmolLM3's q/k/v biases) and of the output projection, in order.
  With one key/value head (multi-query attention, Gemma 2B) any query heads can go alone: the key/value
  head stays, and the block is rebuilt with the kept query heads around it (transformer.HeadLayer says
  which unit each layout scores). GPT-2's and OPT's multi-head attention is the case G = 1: every head
  its own unit, its q/k/v biases going with it; so are GPT-NeoX's, Falcon's and Bloom's. Llama's, Phi-3's,
  GPT-2's, Falcon's and Bloom's q/k/v kernels are (hidden, heads, head_dim), Gemma's (heads, hidden,
  head_dim), SmolLM3's Dense kernels (hidden, heads * head_dim) with head h in columns h*head_dim ...
  (h+1)*head_dim-1 (keras_graph's head width), GPT-NeoX's one fused kernel (hidden, heads, 3 * head_dim),
  which its attention splits along the head's own axis: head h's q, k and v are all in entry h of the
  head axis (and of its (heads, 3 * head_dim) bias), so removing the entry removes the three. The output
  projection is (heads, head_dim, hidden), or (heads * head_dim, hidden) with head h in rows h*head_dim ...
  (GPT-NeoX, Falcon, Bloom): the head size is read there.
- Head size. Llama's, Qwen's and Phi-3's attention compute head_dim = hidden_dim // num_query_heads when
  they build, SmolLM3's hidden_size // num_attention_heads when it is constructed, and TransformerDecoder
  key_dim = hidden_dim // num_heads, which a block with fewer heads would change. The rebuilt block is a
  registered subclass (PrunedLlamaTransformerDecoder, PrunedPhi3Decoder, PrunedTransformerDecoder...)
  whose config carries `head_dim`; its attention is the family's own class made at that size, so `call`,
  RoPE, masks and the decoding cache stay KerasHub's: built at the hidden size that derives head_dim
  (everything sized by the head is then right: the score scale, RoPE, Phi-3's su-scaled RoPE factors,
  which must hold head_dim / 2 entries each), then its projections rebuilt for the real hidden size
  (_FixedHeadDim; SmolLM3's, made in its block's constructor, by `_made_at_head_dim`; GPT-NeoX's, which
  derives it from the hidden_dim it is constructed with, constructed with heads * head_dim, so the rotary
  part of each head, rotary_percentage of its size, stays as it was; Falcon's and Bloom's output Dense
  rebuilt like an EinsumDense);
  CachedMultiHeadAttention takes it as key_dim and value_dim. Phi-3's block checks those factors against
  the derived head size when it builds its own attention, which is replaced: they are withheld from that
  build (Family.head_size_checks). Mistral's, Qwen3's, Gemma's and Gemma3's blocks take `head_dim`
  already (Qwen3's and Gemma3's query/key norms act over one head's dimensions, so they are kept whole;
  Gemma's and Gemma3's blocks always have their attention scale scores by 1/sqrt(head_dim), not by the
  hidden size per query head). What differs between a family's blocks is each block's own config, so it
  stays with the block, also when others are removed: SmolLM3's layers without RoPE
  (rope_layer_enabled_list, read by the block's layer_idx), Gemma3's sliding windows and RoPE
  wavelengths (five local blocks, then a global one). Bloom's block refuses, when it builds, a hidden
  size its heads do not divide (Family.heads_divide_hidden: it builds with one head, whose attention is
  replaced).
- ALiBi (Falcon, Bloom). Each head's slope comes from the number of heads alone (Falcon's block computes
  them on every call, Bloom's attention's AlibiBias layer from the scores' head axis), so a block with
  fewer heads would give the kept ones other slopes and compute another function. The rebuilt block
  carries the kept heads' original slopes in its config (`alibi_slopes`, read by keras_graph.alibi_slopes)
  and adds those: Falcon's block class mixes in keras_graph.KeptAlibiSlopes, Bloom's attention gets an
  AlibiBias that does (keras_graph.keep_alibi_slopes).
- Feed-forward units. Unit j is gate column j, up column j and down row j: its contribution to the
  output is act(x.gate_j) * (x.up_j) * down_j, with act SiLU (SwiGLU: Llama, Mistral, Qwen, Phi-3,
  SmolLM3, whose gate and up are two Dense layers, not one fused kernel) or tanh-approximated GeLU (GeGLU:
  Gemma's gating_ffw; gating_ffw_2 is its up projection), exactly zero when any of the three slices is
  zero (silu(0) = gelu(0) = 0), so masking a unit in any of them and deleting it compute the same
  function; SmolLM3's gate and up biases (mlp_bias) go with their unit. GPT-2's and OPT's network is the
  same with the gate left out (Ffn.gate None), and so are GPT-NeoX's, Falcon's (dense_h_to_4h ->
  dense_4h_to_h) and Bloom's (whose block applies the GeLU between its two Dense layers): unit j adds
  act(x.up_j + b_j) down_j (GeLU, ReLU), zero once its down row is, whatever its bias b_j, which is masked
  and deleted with it.
- Hidden channels. Channel c of the residual stream is the token embedding's column c and its slice of
  every norm, projection and the final norm (stream_slices); `narrower` rebuilds the whole model with
  fewer of them, each RMSNorm's scale and epsilon corrected for the channels it no longer averages over
  (Phi3LayerNorm and SmolLM3's Keras RMSNormalization are RMSNorms too; Gemma's multiply by 1 + scale,
  Gemma 2's options add norms after attention and the feed-forward network: the same correction on
  1 + scale), and Gemma's sqrt(hidden_dim) embedding factor kept at the dense model's. GPT-2's, OPT's,
  GPT-NeoX's, Falcon's and Bloom's LayerNormalization subtracts the mean over all channels, which no
  such correction undoes: each becomes a NarrowedLayerNormalization (structure/narrowed_norm) that keeps
  the dense width in its statistics, a block's own norms through its `norm_width`; GPT-2's and OPT's
  learned positions and Bloom's embedding norm narrow with the stream.

Every decoder block of a rebuilt model becomes a Pruned* block, changed or not: KerasHub 0.32's
LlamaTransformerDecoder.get_config reads an attribute it never sets (rope_scaling_factor), Qwen's
leaves out its sliding-window settings and SmolLM3's decoder layer has none of its own (its arguments
live in its sublayers), so a plain functional model holding them could not be saved; the Pruned*
classes write their config from their constructor's own arguments (`own_config`: the block's attributes
of those names, else the arguments Keras recorded when it constructed the block). Gemma's
RMSNormalization has no get_config, and Keras cannot make one for it once it was built with a dtype
policy object (as GemmaBackbone and loading do), so a rebuilt model's final norm becomes
PrunedRMSNormalization, configured the same way; the norms inside a block are the block's own.

A backbone comes back as a plain functional model. A causal LM (LlamaCausalLM, GemmaCausalLM... around
its backbone) comes back as one, so `generate()` keeps working: PrunedLlamaCausalLM... around a
PrunedDecoderBackbone, which takes its layers as they are (blocks may differ in heads and units, as
a global selection leaves them) and wires them as the family's backbone does (GPT-2's and OPT's learned
positions added to the token embedding, from the cache's index when decoding; SmolLM3's final norm is
its backbone's `norm`, Falcon's its `final_layernorm`, the PrunedDecoderBackbone's `layer_norm`; Bloom's
LayerNorm of the token embedding, embeddings_layer_norm, is the PrunedDecoderBackbone's `embedding_norm`). KerasHub's task sizes its key/value
cache from the backbone's num_key_value_heads and head size, one for all blocks; the Pruned* task sizes
it for the widest block at the kept head size and hands each block the heads it has (Gemma3's task, whose
cache is a pair per block, sizes each pair for its block). Gemma3 is rebuilt text-only: a backbone with a
vision encoder is refused.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

from prunecli.errors import InputError
from prunecli.structure import keras_graph, narrowed_norm
from prunecli.structure.layers import quantization_mode


@dataclass(frozen=True)
class Family:
    """What differs between KerasHub's decoder families around the block (keras_graph finds the block's
    own parts, and reads the head axis of each projection from its equation)."""

    module: str  # the module keras_hub defines the block class in
    causal_lms: tuple[str, ...]  # the task classes around its backbones
    # the block's call arguments: the padding mask, its key/value cache, the cache position it updates
    padding_mask: str = "decoder_padding_mask"
    cache: str = "self_attention_cache"
    cache_index: str = "self_attention_cache_update_index"
    scaled_embedding: bool = False  # the backbone multiplies the token embedding by sqrt(hidden_dim)
    intermediate: str = "intermediate_dim"  # the block's argument for its intermediate size
    hidden: str = "hidden_dim"  # the block's argument for the residual width, where it takes one
    query_heads: str = "num_query_heads"  # the block's argument for its query heads
    kv_heads: str | None = "num_key_value_heads"  # ... for its key/value heads; None: one per query head
    subclasses: bool = True  # whether KerasHub's subclasses of the block class belong to the family
    # the block's arguments that make the attention it builds check its sizes against the head size it
    # derives (Phi-3's su-scaled RoPE factors, one per pair of a head's dimensions): None while the block's
    # own build makes that attention, which a block with a head size of its own then replaces
    head_size_checks: tuple[str, ...] = ()
    # the block's build refuses a residual width its heads do not divide (Bloom's): it builds with one head
    # while its attention, then replaced, is made
    heads_divide_hidden: bool = False
    cache_per_block: bool = False  # the task's cache is one (key, value) pair per block (Gemma3's), not one tensor
    alibi_in_block: bool = False  # the block computes its heads' ALiBi slopes (Falcon's), not its attention (Bloom's)


# KerasHub decoder blocks by class name: grouped-query attention and a gated feed-forward network (Llama,
# Mistral, Qwen, Qwen3, Gemma, Gemma3, Phi-3, SmolLM3), or multi-head attention and an un-gated one (GPT-2's
# and OPT's TransformerDecoder)
FAMILIES = {
    "LlamaTransformerDecoder": Family("keras_hub.src.models.llama.llama_decoder", ("LlamaCausalLM",)),
    "MistralTransformerDecoder": Family(
        "keras_hub.src.models.mistral.mistral_transformer_decoder", ("MistralCausalLM",)
    ),
    "QwenTransformerDecoder": Family("keras_hub.src.models.qwen.qwen_decoder", ("QwenCausalLM",)),
    "Qwen3TransformerDecoder": Family("keras_hub.src.models.qwen3.qwen3_decoder", ("Qwen3CausalLM",)),
    "GemmaDecoderBlock": Family(
        "keras_hub.src.models.gemma.gemma_decoder_block",
        ("GemmaCausalLM",),
        padding_mask="padding_mask",
        cache="cache",
        cache_index="cache_update_index",
        scaled_embedding=True,
    ),
    "Gemma3DecoderBlock": Family(
        "keras_hub.src.models.gemma3.gemma3_decoder_block",
        ("Gemma3CausalLM",),
        padding_mask="padding_mask",
        cache="cache",
        cache_index="cache_update_index",
        scaled_embedding=True,
        cache_per_block=True,
    ),
    "Phi3Decoder": Family(
        "keras_hub.src.models.phi3.phi3_decoder",
        ("Phi3CausalLM",),
        cache="attention_cache",
        cache_index="attention_cache_update_index",
        head_size_checks=("rope_scaling_type",),
    ),
    "SmolLM3DecoderLayer": Family(
        "keras_hub.src.models.smollm3.smollm3_layers",
        ("SmolLM3CausalLM",),
        query_heads="num_attention_heads",
        intermediate="intermediate_size",
        hidden="hidden_size",
    ),
    "TransformerDecoder": Family(
        "keras_hub.src.layers.modeling.transformer_decoder",
        ("GPT2CausalLM", "OPTCausalLM"),
        query_heads="num_heads",
        kv_heads=None,
        # Whisper's and Moonshine's decoder blocks extend it with cross-attention and calls of their own
        subclasses=False,
    ),
    "GPTNeoXDecoder": Family(
        "keras_hub.src.models.gpt_neo_x.gpt_neo_x_decoder", ("GPTNeoXCausalLM",), query_heads="num_heads", kv_heads=None
    ),
    "FalconTransformerDecoder": Family(
        "keras_hub.src.models.falcon.falcon_transformer_decoder",
        ("FalconCausalLM",),
        cache="attention_cache",
        cache_index="attention_cache_update_index",
        query_heads="num_attention_heads",
        kv_heads=None,
        alibi_in_block=True,
    ),
    "BloomDecoder": Family(
        "keras_hub.src.models.bloom.bloom_decoder",
        ("BloomCausalLM",),
        cache="cache",
        cache_index="cache_update_index",
        query_heads="num_heads",
        kv_heads=None,
        heads_divide_hidden=True,
    ),
}
# KerasHub causal LMs around such a backbone: token_embedding (and GPT-2's and OPT's learned positions),
# transformer_layers, layer_norm (SmolLM3's `norm`), one cache (Gemma3's: a pair per block)
CAUSAL_LMS = tuple(lm for f in FAMILIES.values() for lm in f.causal_lms)
# KerasHub's norms without a get_config ("module.Class"; Gemma's, Gemma3's and Keras' own share a class
# name), and the names prunecli registers its subclasses with a config under
_NORMS = {
    "keras_hub.src.models.gemma.rms_normalization.RMSNormalization": "PrunedRMSNormalization",
    "keras_hub.src.models.gemma3.gemma3_layers.RMSNormalization": "PrunedGemma3RMSNormalization",
}
# how a saved model names prunecli's classes
CLASS_NAMES = (
    *(f"Pruned{name}" for name in (*FAMILIES, *CAUSAL_LMS)),
    *_NORMS.values(),
    "PrunedDecoderBackbone",
    "NarrowedLayerNormalization",
)

_CLASSES: dict[str, Any] = {}  # KerasHub class name ("module.Class" for a norm) -> prunecli's subclass; "backbone"
_ATTENTION: dict[type, type] = {}  # KerasHub attention class -> its subclass with a fixed head size


def family(layer) -> str | None:
    """The KerasHub decoder class this layer is (or subclasses, where the family takes subclasses), or
    None. A block holding cross-attention (an encoder-decoder's: BART's TransformerDecoder) is none:
    its call reads the encoder's output, which the rebuilt backbones do not carry."""
    hub = hub_class(layer)
    for cls in hub.__mro__:
        fam = FAMILIES.get(cls.__name__)
        if fam is None:
            continue
        if not fam.subclasses and (cls is not hub or cls.__module__ != fam.module):
            return None
        return None if keras_graph.hub_cross_attention(layer) is not None else cls.__name__
    return None


def hub_class(layer):
    """The KerasHub class a layer is: its own, or the one prunecli's subclass extends (past its mixins)."""
    return next(cls for cls in type(layer).__mro__ if cls.__module__.split(".")[0] != "prunecli")


def _class_path(cls) -> str:
    return f"{cls.__module__}.{cls.__name__}"


def _family_of(block) -> Family:
    return FAMILIES[family(block)]


def is_decoder(layer) -> bool:
    return family(layer) is not None


def _own_blocks(model) -> list:
    return [layer for layer in keras_graph.children(model) if is_decoder(layer)]


def host(model):
    """The functional model whose graph calls the decoder blocks: the model itself (a backbone), or the
    backbone a KerasHub task (LlamaCausalLM...) holds; None without decoder blocks."""
    if _own_blocks(model):
        return model
    inner = getattr(model, "backbone", None)
    return inner if inner is not None and _own_blocks(inner) else None


def blocks(model) -> list:
    """The decoder blocks of the model (or of the backbone its task holds), in the graph's order."""
    found = host(model)
    return [] if found is None else _own_blocks(found)


def attention(block):
    return keras_graph.hub_self_attention(block)


def head_counts(block) -> tuple[int, int]:
    """(query heads, key/value heads) of the block's attention (equal under multi-head attention)."""
    return keras_graph.grouped_head_counts(attention(block))


def rebuild_blocker(model) -> str | None:
    """Why prunecli cannot rebuild the backbone around the model's decoder blocks, or None: one that also
    reads images (Gemma3's vision encoder), which the text-only PrunedDecoderBackbone does not carry, and
    whose inputs the run's token-only measurements could not feed."""
    inner = host(model)
    if inner is not None and getattr(inner, "vision_encoder", None) is not None:
        return f"{type(model).__name__}: its vision encoder is not rebuilt by prunecli; prune a text-only model"
    return None


def shrink_blocker(block) -> str | None:
    """Why a decoder block cannot be rebuilt smaller, or None when it can."""
    if not register():
        return "keras-hub's decoder classes could not be imported"
    if family(block) not in _CLASSES:
        return f"{family(block)} is not defined by this keras-hub"
    attn = attention(block)
    if keras_graph.hub_ffn(block) is None or attn is None or keras_graph.grouped_head_counts(attn) is None:
        return f"{type(block).__name__} {block.name!r} is not laid out as KerasHub's decoders are"
    if quantization_mode(block) is not None:
        return f"{block.name!r} is quantized by Keras (per-unit scales are not sliced)"
    return None


# ---------------------------------------------------------------------------------------------------
# Feed-forward units


@dataclass
class Ffn:
    """The feed-forward network of one decoder block: unit j is gate[:, j], up[:, j], down[j, :] (and the
    gate's and up's bias j where they have one). Un-gated (gate None: GPT-2, OPT), unit j adds
    act(x.up_j + b_j) down_j; a gated one act(x.gate_j) (x.up_j) down_j. A plain Keras Transformer's
    Dense pair is the un-gated network outside any block (block None: removal/split._dense_ffns).
    MiT's MixFFN filters each unit over the image between up and the activation (a depthwise convolution,
    `depthwise`): unit j is also that convolution's channel j, kernel and bias."""

    path: str  # the block's name (in a causal LM: "backbone name/block name", as targets name it)
    block: Any  # None for a plain Dense pair
    gate: Any  # Dense layers (EinsumDense in Gemma); None for an un-gated network
    up: Any
    down: Any
    depthwise: Any = None  # a DepthwiseConv2D over the units, kernel (kh, kw, units, 1)

    @property
    def units(self) -> int:
        return int(self.up.kernel.shape[-1])

    def slices(self) -> list[tuple[Any, int]]:
        """(kernel, unit axis) of the projections (two or three): what scores and multiply-adds read."""
        gate = [] if self.gate is None else [(self.gate.kernel, 1)]
        depthwise = [] if self.depthwise is None else [(self.depthwise.kernel, 2)]
        return gate + [(self.up.kernel, 1)] + depthwise + [(self.down.kernel, 0)]

    def all_slices(self) -> list[tuple[Any, int]]:
        """Everything a unit owns, the gate's and up's biases included: what is masked and counted as
        parameters (a bias over units follows its unit; the down projection's is over channels). A unit's
        depthwise bias would reach GeLU even with its up column zero (gelu(b) is not 0): its down row being
        zero is what makes masking and deleting it compute the same, and the bias is masked with it."""
        over_units = (self.gate, self.up, self.depthwise)
        biases = [(d.bias, 0) for d in over_units if d is not None and getattr(d, "bias", None) is not None]
        return self.slices() + biases


def ffns(model) -> list[Ffn]:
    """The feed-forward networks of the model's decoder blocks, in order."""
    inner = host(model)
    prefix = "" if inner is None or inner is model else f"{inner.name}/"
    found = []
    for block in blocks(model):
        parts = keras_graph.hub_ffn(block)
        if parts is not None:
            found.append(Ffn(prefix + block.name, block, *parts))
    return found


def ffn_kernel_ids(model) -> set[int]:
    """id() of every gate/up/down kernel of the model's decoder blocks (the targets of -g neuron)."""
    return {id(var) for f in ffns(model) for var, _axis in f.slices()}


# ---------------------------------------------------------------------------------------------------
# prunecli's block classes


class _FixedHeadDim:
    """Mixed into a KerasHub attention class that derives its head size as hidden_dim // num_query_heads
    when it builds: it builds as the family does at the hidden size that derives `head_dim` (so what is
    sized by the head, the score scale, RoPE and Phi-3's su factors, is right), then rebuilds the q/k/v
    projections for the real input and the output projection to the real hidden size."""

    def __init__(self, *args, head_dim, **kwargs):
        super().__init__(*args, **kwargs)
        self.fixed_head_dim = int(head_dim)

    def build(self, inputs_shape):
        hd, heads = self.fixed_head_dim, int(keras_graph.grouped_head_counts(self)[0])
        super().build((*tuple(inputs_shape)[:-1], heads * hd))
        *qkv, output = keras_graph.attention_projection_names(self)
        for name in qkv:
            setattr(self, name, _resized(self, getattr(self, name), inputs_shape, None))
        head_outputs = _head_outputs_shape(self, heads, hd)
        setattr(self, output, _resized(self, getattr(self, output), head_outputs, int(inputs_shape[-1])))


def _head_outputs_shape(attn, heads: int, head_dim: int) -> tuple:
    """The shape of what an attention's output projection reads: (batch, tokens, heads, head_dim), or the
    heads flattened where its kernel holds them one after another (GPT-NeoX's, Falcon's, Bloom's)."""
    width = keras_graph.attention_projections(attn)[-1][-1]
    return (None, None, heads * head_dim) if width > 1 else (None, None, heads, head_dim)


def _resized(owner, old, input_shape, last_axis):
    """An EinsumDense or Dense like `old` (same equation, name, bias axes), built for `input_shape`, with
    its last output axis `last_axis` (None: the output shape as it was), in place of `old` in `owner`'s
    weights."""
    config = old.get_config()
    if last_axis is not None and "units" in config:
        config["units"] = last_axis
    elif last_axis is not None:
        config["output_shape"] = (*tuple(config["output_shape"])[:-1], last_axis)
    new = type(old).from_config(config)
    new.build(input_shape)
    keras_graph.untrack(owner, old)
    return new


def _made_at_head_dim(block, old):
    """The block's attention like `old`, at the block's head_dim, for an attention class that derives its
    head size as hidden_size // heads in its constructor and makes its output projection and RoPE there
    (SmolLM3's): constructed at hidden_size = heads * head_dim, its output projection then remade to the
    real hidden size (its q/k/v Dense layers, heads * head_dim wide, build for whatever input they get)."""
    cls, fam = type(old), _family_of(block)
    arguments = _own_arguments(cls, block, skip=("dtype", "name", "head_dim"))
    hidden, heads, hd = int(arguments[fam.hidden]), int(arguments[fam.query_heads]), int(block.head_dim)
    new = cls(**{**arguments, fam.hidden: heads * hd}, dtype=old.dtype_policy, name=old.name)
    output = keras_graph.attention_projection_names(new)[-1]
    setattr(new, output, _resized(new, getattr(new, output), (None, None, heads, hd), hidden))
    setattr(new, fam.hidden, hidden)
    return new


def _with_head_dim(cls):
    if cls not in _ATTENTION:
        _ATTENTION[cls] = type(f"{cls.__name__}WithHeadDim", (_FixedHeadDim, cls), {"__doc__": _FixedHeadDim.__doc__})
    return _ATTENTION[cls]


def _own_arguments(cls, obj, skip=()) -> dict[str, Any]:
    """The constructor arguments of `cls` that `obj` holds as attributes of the same name, or else was
    constructed with (SmolLM3's decoder layer keeps most of its arguments in its sublayers only)."""
    recorded = keras_graph.recorded_arguments(obj)
    out = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(obj, name):
            out[name] = getattr(obj, name)
        elif name in recorded:
            out[name] = recorded[name]
    return out


def own_config(layer) -> dict[str, Any]:
    """A KerasHub layer's config from its class's constructor arguments, as the layer holds them:
    KerasHub's own get_config of some decoder blocks is broken or incomplete, and Gemma's RMSNormalization
    has none (see the module docstring)."""
    import keras

    config = {
        "name": layer.name,
        "trainable": layer.trainable,
        "dtype": keras.dtype_policies.serialize(layer.dtype_policy),
    }
    for name, value in _own_arguments(hub_class(layer), layer).items():
        if isinstance(value, keras.initializers.Initializer):
            value = keras.initializers.serialize(value)
        elif callable(value):
            value = keras.activations.serialize(value)
        config[name] = value
    return config


class OwnConfig:
    """Mixed into a KerasHub layer class: its config is `own_config`."""

    def get_config(self):
        return own_config(self)


class _PrunedDecoder(OwnConfig):
    """Mixed into a KerasHub decoder class: the block with `head_dim` in its config. Families whose
    attention derives the head size (_native_head_dim False) get their attention rebuilt at it:
    keras.layers.MultiHeadAttention (TransformerDecoder's) from its own config with key_dim = value_dim
    = head_dim, one the block makes when it builds as _FixedHeadDim, one it makes in its constructor
    (SmolLM3's) by `_made_at_head_dim`."""

    _native_head_dim = False

    def __init__(self, *args, head_dim=None, alibi_slopes=None, norm_width=None, **kwargs):
        self.alibi_slopes = None if alibi_slopes is None else [float(v) for v in alibi_slopes]
        self.norm_width = None if norm_width is None else int(norm_width)
        if self._native_head_dim:
            super().__init__(*args, head_dim=head_dim, **kwargs)
            return
        super().__init__(*args, **kwargs)
        self.head_dim = None if head_dim is None else int(head_dim)
        made = attention(self)  # SmolLM3's block makes its attention here, at the derived head size
        if made is not None and self.head_dim is not None and _attention_head_size(made) != self.head_dim:
            keras_graph.replace_hub_self_attention(self, _made_at_head_dim(self, made))

    def build(self, decoder_sequence_shape):
        self._build_at_head_dim(decoder_sequence_shape)
        if self.alibi_slopes is not None:  # Bloom's attention derives them from its heads: the kept ones' stay
            keras_graph.keep_alibi_slopes(attention(self), self.alibi_slopes)
        if self.norm_width is not None:  # a narrowed stream: LayerNorms normalise as over the full width
            for norm in residual_norms(self):
                if narrowed_norm.centred(norm):
                    new = narrowed_norm.narrowed(norm, self.norm_width)
                    new.build(decoder_sequence_shape)
                    keras_graph.replace_hub_block_norm(self, norm, new)

    def _build_at_head_dim(self, decoder_sequence_shape):
        import keras

        fam = _family_of(self)
        hidden = int(decoder_sequence_shape[-1])
        heads = int(_own_arguments(hub_class(self), self)[fam.query_heads])
        made = attention(self) is not None  # in the constructor (SmolLM3's), at the head size already
        if self._native_head_dim or self.head_dim is None or made or hidden // heads == self.head_dim:
            super().build(decoder_sequence_shape)
            return
        withheld = {name: None for name in fam.head_size_checks}
        if fam.heads_divide_hidden:
            withheld[fam.query_heads] = 1
        checked = {name: getattr(self, name) for name in withheld}
        for name, value in withheld.items():
            setattr(self, name, value)
        try:
            super().build(decoder_sequence_shape)
        finally:
            for name, value in checked.items():
                setattr(self, name, value)
        old = attention(self)  # built at the derived head size: replaced
        cls = type(old)
        if isinstance(old, keras.layers.MultiHeadAttention):
            new = cls.from_config({**old.get_config(), "key_dim": self.head_dim, "value_dim": self.head_dim})
            new.build(query_shape=decoder_sequence_shape, value_shape=decoder_sequence_shape)
        else:
            skip = ("dtype", "name", "head_dim")
            # the block's arguments, else the attention's own (Falcon's block names its heads otherwise)
            arguments = {**_own_arguments(cls, old, skip=skip), **_own_arguments(cls, self, skip=skip)}
            if "hidden_dim" in arguments:  # GPT-NeoX's attention derives its head size from it when constructed
                arguments["hidden_dim"] = heads * self.head_dim
            new = _with_head_dim(cls)(head_dim=self.head_dim, dtype=self.dtype_policy, name=old.name, **arguments)
            new.build(decoder_sequence_shape)
        keras_graph.replace_hub_self_attention(self, new)

    def get_config(self):
        extra = {} if self.alibi_slopes is None else {"alibi_slopes": list(self.alibi_slopes)}
        if self.norm_width is not None:
            extra["norm_width"] = self.norm_width
        return {**own_config(self), "head_dim": self.head_dim, **extra}


class _ScoredThroughBackbone:
    """Mixed into a rebuilt causal LM whose KerasHub task has `score()`: KerasHub's reads the dense
    backbone's own attributes (GPT-2's `embeddings_add`, SmolLM3's `norm`, Gemma's sqrt(hidden_dim)
    embedding scale, which a narrowed residual stream changes), so the rebuilt model scores through the
    PrunedDecoderBackbone's own path instead: the same arguments, modes and errors as KerasHub's."""

    def score(self, token_ids, padding_mask=None, scoring_mode="logits", layer_intercept_fn=None, target_ids=None):
        """Logits, or the per-token loss against `target_ids`, of `token_ids`; `layer_intercept_fn(x, i)`
        sees (and may replace) the blocks' input (i = -1) and each block's output (i = 0, 1, ...)."""
        import keras
        from keras import ops

        if scoring_mode not in ("logits", "loss"):
            raise ValueError("Unsupported scoring_mode. Must be one of 'logits' or 'loss'.")
        if scoring_mode == "loss" and target_ids is None:
            raise ValueError("Cannot compute loss without targets: pass the target token ids as target_ids.")
        if padding_mask is None:
            padding_mask = ops.ones(ops.shape(token_ids)[:2], dtype="int32")
        intercept = layer_intercept_fn or (lambda x, _i: x)
        b = self.backbone
        calls = _family_of(b.transformer_layers[0])
        x = intercept(b.embed(token_ids), -1)
        for i, block in enumerate(b.transformer_layers):
            x = intercept(block(x, **{calls.padding_mask: padding_mask}), i)
        logits = b.token_embedding(b.layer_norm(x), reverse=True)
        if scoring_mode == "logits":
            return logits
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")(target_ids, logits)


class _PrunedCausalLM:
    """Mixed into a KerasHub causal LM: the key/value cache sized for the widest block (the backbone's
    num_key_value_heads) at the backbone's head_dim, each block handed its own heads' slice of it."""

    def _build_cache(self, token_ids):
        from keras import ops

        b = self.backbone
        shape = [ops.shape(token_ids)[0], b.num_layers, 2, ops.shape(token_ids)[1], b.num_key_value_heads, b.head_dim]
        cache = ops.zeros(shape, dtype=self.compute_dtype)
        # a tensor, as in every later step: SmolLM3's blocks take the cache and its index as **kwargs,
        # which Keras refuses to hold a tensor and a Python number together
        _, hidden_states, cache = self.call_with_cache(token_ids, cache, ops.convert_to_tensor(0, "int32"))
        return hidden_states, cache

    def call_with_cache(self, token_ids, cache, cache_update_index):
        from keras import ops

        b = self.backbone
        calls = _family_of(b.transformer_layers[0])
        x = b.embed(token_ids, start_index=cache_update_index)
        updated = []
        for i, block in enumerate(b.transformer_layers):
            kv = head_counts(block)[1]
            x, next_cache = block(x, **{calls.cache: cache[:, i, :, :, :kv, :], calls.cache_index: cache_update_index})
            if kv < b.num_key_value_heads:
                next_cache = ops.pad(next_cache, [[0, 0], [0, 0], [0, 0], [0, b.num_key_value_heads - kv], [0, 0]])
            updated.append(next_cache)
        cache = ops.stack(updated, axis=1)
        hidden_states = x = b.layer_norm(x)
        return b.token_embedding(x, reverse=True), hidden_states, cache


class _PrunedPerBlockCacheLM:
    """Mixed into a KerasHub causal LM whose cache is one (key, value) pair per block (Gemma3CausalLM):
    each pair sized for its block's own key/value heads, the embedding as the PrunedDecoderBackbone makes
    it. Text only: the PrunedDecoderBackbone has no vision encoder (`_rebuilt_task` refuses one)."""

    def _build_cache(self, token_ids, img_embeddings=None, vision_mask=None, padding_mask=None, vision_indices=None):
        from keras import ops

        b = self.backbone
        batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
        cache = tuple(
            tuple(ops.zeros([batch, length, head_counts(block)[1], b.head_dim], dtype=self.compute_dtype) for _ in "kv")
            for block in b.transformer_layers
        )
        _, hidden_states, cache = self.call_with_cache(token_ids, cache, 0, padding_mask=padding_mask)
        return hidden_states, cache

    def call_with_cache(
        self, token_ids, cache, cache_update_index, padding_mask=None, cache_update_mask=None, **_vision
    ):
        b = self.backbone
        calls = _family_of(b.transformer_layers[0])
        x = b.embed(token_ids, start_index=cache_update_index)
        updated = []
        for block, block_cache in zip(b.transformer_layers, cache, strict=True):
            x, block_cache = block(
                x,
                padding_mask=padding_mask,
                cache_update_mask=cache_update_mask,
                **{calls.cache: block_cache, calls.cache_index: cache_update_index},
            )
            updated.append(block_cache)
        hidden_states = x = b.layer_norm(x)
        return b.token_embedding(x, reverse=True), hidden_states, tuple(updated)


def _backbone_class():
    """PrunedDecoderBackbone: a KerasHub Backbone made of the layers it is given (see the module docstring)."""
    import keras
    from keras_hub.models import Backbone

    class PrunedDecoderBackbone(Backbone):
        """token_embedding -> transformer_layers (each with the padding mask) -> layer_norm, as
        LlamaBackbone, MistralBackbone, QwenBackbone and GemmaBackbone wire them (Gemma's scales the
        embedding; GPT-2's and OPT's add a learned `position_embedding`, GPT-2's then drops out
        `embedding_dropout` of it while training), from layers (or their configs): blocks may differ in
        heads and feed-forward units. Its attributes are what KerasHub's causal LMs read."""

        def __init__(
            self,
            token_embedding,
            transformer_layers,
            layer_norm,
            embedding_scale=None,
            position_embedding=None,
            embedding_dropout=0.0,
            embedding_norm=None,
            dtype=None,
            **kwargs,
        ):
            def layer(value):
                return keras.layers.deserialize(value) if isinstance(value, dict) else value

            self.token_embedding = layer(token_embedding)
            self.transformer_layers = [layer(v) for v in transformer_layers]
            self.layer_norm = layer(layer_norm)
            self.embedding_scale = embedding_scale
            self.position_embedding = None if position_embedding is None else layer(position_embedding)
            self.embedding_norm = None if embedding_norm is None else layer(embedding_norm)
            self.embedding_dropout = float(embedding_dropout)
            self.embeddings_dropout = (
                keras.layers.Dropout(self.embedding_dropout, dtype=dtype, name="embeddings_dropout")
                if self.embedding_dropout
                else None
            )
            token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
            padding_mask = keras.Input(shape=(None,), dtype="int32", name="padding_mask")
            x = self.embed(token_ids)
            calls = _family_of(self.transformer_layers[0])
            for block in self.transformer_layers:
                x = block(x, **{calls.padding_mask: padding_mask})
            outputs = self.layer_norm(x)
            super().__init__(
                inputs={"token_ids": token_ids, "padding_mask": padding_mask}, outputs=outputs, dtype=dtype, **kwargs
            )
            self.vocabulary_size = int(self.token_embedding.input_dim)
            self.hidden_dim = int(self.token_embedding.output_dim)
            self.num_layers = len(self.transformer_layers)
            self.num_query_heads = max(head_counts(b)[0] for b in self.transformer_layers)
            self.num_key_value_heads = max(head_counts(b)[1] for b in self.transformer_layers)
            sizes = {head_size(b) for b in self.transformer_layers}
            if len(sizes) != 1:
                raise ValueError(f"decoder blocks with different head sizes {sorted(sizes)}")
            self.head_dim = sizes.pop()
            self.text_only_model = True  # no vision encoder: what Gemma3's task asks before generating

        def embed(self, token_ids, start_index=0):
            """The blocks' input: the token embedding, times `embedding_scale` where the family scales it
            (Gemma: sqrt of the dense model's hidden size, which a narrowed residual stream keeps), plus
            the learned positions from `start_index` on where it has them (GPT-2, OPT; decoding with a
            cache starts at the cache's index), then the embedding dropout."""
            from keras import ops

            x = self.token_embedding(token_ids)
            if self.embedding_scale is not None:
                x = x * ops.cast(self.embedding_scale, x.dtype)
            if self.position_embedding is not None:
                x = x + self.position_embedding(x, start_index=start_index)
            if self.embedding_norm is not None:
                x = self.embedding_norm(x)
            if self.embeddings_dropout is not None:
                x = self.embeddings_dropout(x)
            return x

        def get_config(self):
            position, norm = self.position_embedding, self.embedding_norm
            return {
                **super().get_config(),
                "token_embedding": keras.layers.serialize(self.token_embedding),
                "transformer_layers": [keras.layers.serialize(b) for b in self.transformer_layers],
                "layer_norm": keras.layers.serialize(self.layer_norm),
                "embedding_scale": self.embedding_scale,
                "position_embedding": None if position is None else keras.layers.serialize(position),
                "embedding_dropout": self.embedding_dropout,
                "embedding_norm": None if norm is None else keras.layers.serialize(norm),
            }

    PrunedDecoderBackbone.__module__ = __name__
    return keras.saving.register_keras_serializable(package="prunecli")(PrunedDecoderBackbone)


def register() -> dict[str, Any]:
    """Define and register (once) prunecli's decoder classes for the families this keras-hub has, by the
    KerasHub class each extends: blocks, causal LMs and norms without a get_config; "backbone" the
    PrunedDecoderBackbone; {} without keras-hub. Loading a model prunecli shrank needs them
    (transformer.register_for_file)."""
    if _CLASSES:
        return _CLASSES
    try:
        import keras_hub
    except ImportError:
        return {}
    import importlib

    def hub_class(module: str, name: str):
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            return None

    def subclass(base, mixins, doc: str, key: str | None = None, name: str | None = None, **attributes) -> None:
        name = name or f"Pruned{base.__name__}"
        cls = type(name, (*mixins, base), {"__doc__": doc, "__module__": __name__, **attributes})
        _CLASSES[key or base.__name__] = keras.saving.register_keras_serializable(package="prunecli", name=name)(cls)

    import keras

    _CLASSES["backbone"] = _backbone_class()
    narrowed_norm.layer_class()
    for path, ours in _NORMS.items():
        norm = hub_class(*path.rsplit(".", 1))
        if norm is not None:
            doc = f"{path} with a config, so a model holding it saves."
            subclass(norm, (OwnConfig,), doc, key=path, name=ours)
    for name, fam in FAMILIES.items():
        mixin = _PrunedPerBlockCacheLM if fam.cache_per_block else _PrunedCausalLM
        for task in (getattr(keras_hub.models, lm, None) for lm in fam.causal_lms):
            if task is not None:
                mixins = (_ScoredThroughBackbone, mixin) if hasattr(task, "score") else (mixin,)
                subclass(task, mixins, f"keras_hub's {task.__name__} around a PrunedDecoderBackbone.")
        block = hub_class(fam.module, name)
        if block is not None:
            subclass(
                block,
                # Falcon's block computes its ALiBi slopes from its number of heads: the kept heads' stay
                (keras_graph.KeptAlibiSlopes, _PrunedDecoder) if fam.alibi_in_block else (_PrunedDecoder,),
                f"keras_hub's {name} with `head_dim` in its config, rebuilt by prunecli with fewer heads or "
                "feed-forward units.",
                _native_head_dim="head_dim" in inspect.signature(block.__init__).parameters,
            )
    return _CLASSES


# ---------------------------------------------------------------------------------------------------
# Rebuilding


def head_size(block) -> int:
    """The block's attention head size."""
    return _attention_head_size(attention(block))


def _attention_head_size(attn) -> int:
    """An attention layer's head size: its output kernel's middle axis ((heads, head_dim, hidden)), or the
    entries one head holds where that kernel is (heads * head_dim, hidden) (GPT-NeoX, Falcon, Bloom)."""
    output, _role, _axis, _bias_axis, width = keras_graph.attention_projections(attn)[-1]
    return width if len(output.kernel.shape) == 2 else int(output.kernel.shape[1])


def smaller(block, q_heads=None, kv_heads=None, units=None):
    """(prunecli's block with only these query heads, key/value heads and feed-forward units, in this
    order; its weights by variable path, assigned once the rebuilt graph has built it). None keeps them all.

    `q_heads` must be the query heads of `kv_heads`, group by group: key/value head k serves the G
    query heads k*G ... k*G+G-1, and the rebuilt block repeats its new head i for its new heads
    i*G ... i*G+G-1. A block with one key/value head (multi-query attention) keeps it and any of its
    query heads."""
    import numpy as np

    classes = register()
    blocker = shrink_blocker(block)
    if blocker:
        raise InputError(f"decoder block {block.name!r} cannot be rebuilt: {blocker}")
    attn = attention(block)
    heads, kv = head_counts(block)
    group = heads // kv
    kv_heads = list(range(kv)) if kv_heads is None else [int(k) for k in kv_heads]
    groups = [k * group + g for k in kv_heads for g in range(group)]
    q_heads = groups if q_heads is None else [int(h) for h in q_heads]
    shared = kv == 1 and kv_heads == [0] and q_heads == sorted(set(q_heads)) and set(q_heads) <= set(groups)
    if not q_heads or (q_heads != groups and not shared):
        raise ValueError(f"{block.name}: query heads {q_heads} are not the groups of key/value heads {kv_heads}")
    gate, up, down = keras_graph.hub_ffn(block)
    units = list(range(int(up.kernel.shape[-1]))) if units is None else [int(u) for u in units]
    cut: dict[int, tuple[int, list[int]]] = {}
    for sub, role, k_axis, b_axis, width in keras_graph.attention_projections(attn):
        keep = [h * width + i for h in (q_heads if role == "q" else kv_heads) for i in range(width)]
        cut[id(sub.kernel)] = (k_axis, keep)
        bias = getattr(sub, "bias", None)
        if bias is not None and b_axis is not None:
            cut[id(bias)] = (b_axis, keep)
    for dense, axis in ((gate, 1), (up, 1), (down, 0)):
        if dense is not None:
            cut[id(dense.kernel)] = (axis, units)
    for dense in (gate, up):  # biases over units (GPT-2's and OPT's intermediate Dense) follow the unit
        if getattr(dense, "bias", None) is not None:
            cut[id(dense.bias)] = (0, units)
    fam = _family_of(block)
    config = own_config(block)
    config[fam.query_heads] = len(q_heads)
    if fam.kv_heads is not None:
        config[fam.kv_heads] = len(kv_heads)
    per_unit = int(config[fam.intermediate]) // int(up.kernel.shape[-1])  # Gemma's counts both gates: 2
    config.update({"head_dim": head_size(block), fam.intermediate: len(units) * per_unit})
    if getattr(block, "norm_width", None) is not None:  # its stream was narrowed before: its norms still are
        config["norm_width"] = block.norm_width
    slopes = keras_graph.alibi_slopes(block)  # ALiBi (Falcon, Bloom): each kept head keeps its own slope
    if slopes is not None:
        config["alibi_slopes"] = [slopes[h] for h in q_heads]
    new = classes[family(block)].from_config(config)
    values = {}
    for v in block.weights:
        arr = np.asarray(v)
        if id(v) in cut:
            axis, keep = cut[id(v)]
            arr = np.take(arr, keep, axis=axis)
        values[str(v.path)] = arr
    return new, values


def swaps_for(model, heads: dict | None = None, units: dict | None = None, skip=()) -> list[tuple]:
    """[(block, smaller block, its weights)] for every decoder block of the model but those whose id()
    is in `skip`: the kept query and key/value heads `heads[id(block)] = (q_heads, kv_heads)` and feed-forward
    units `units[id(block)]`; a block named in neither is rebuilt whole (so the model saves, see the
    module docstring)."""
    heads, units = heads or {}, units or {}
    out = []
    for block in blocks(model):
        if id(block) in skip:
            continue
        q, kv = heads.get(id(block), (None, None))
        new, values = smaller(block, q, kv, units.get(id(block)))
        out.append((block, new, values))
    return out


def rebuild_with(model, swaps: list[tuple], **changes):
    """A new functional model with each (old layer, new layer, weights by path) swapped in, its weights
    assigned, detached from `model` (layers of its own, so it saves and trains like a fresh one).
    `changes`: rebuild.rebuild's skip/bypass/alias (a swapped layer whose call is skipped is left out)."""
    from prunecli.structure import rebuild as graph_rebuild

    inner = host(model)
    if inner is not None and inner is not model:
        return _rebuilt_task(model, inner, swaps, _dropped_blocks(model, inner, changes))
    swaps = swaps + _norm_swaps(model, {id(old) for old, _new, _values in swaps})
    rebuilt = graph_rebuild.rebuild(model, replace={id(old): new for old, new, _values in swaps}, **changes)
    present = {id(layer) for layer in keras_graph.children(rebuilt)}
    assign_by_path([(new, values) for _old, new, values in swaps if id(new) in present])
    return graph_rebuild.detach(rebuilt)


def _norm_swaps(model, swapped: set[int]) -> list[tuple]:
    """(norm, prunecli's copy, its weights) for each of the model's own layers that is a KerasHub norm
    without get_config (Gemma's final RMSNormalization) and not swapped already: without the copy, the
    rebuilt model could not be saved."""
    import numpy as np

    return [
        (layer, _fresh_copy(layer), {str(w.path): np.asarray(w) for w in layer.weights})
        for layer in keras_graph.children(model)
        if id(layer) not in swapped and type(layer).__module__ != __name__ and _class_path(hub_class(layer)) in _NORMS
    ]


def _dropped_blocks(model, backbone, changes: dict) -> set[int]:
    """id() of the decoder blocks whose calls `changes` skips (-g layer on a causal LM: whole blocks
    leave the backbone's list). Anything else inside the backbone (a norm, a residual branch inside a
    block) is not removed from a task's backbone: refused."""
    from prunecli.structure import rebuild as graph_rebuild

    skip, bypass = set(changes.get("skip") or ()), changes.get("bypass") or {}
    layers = {
        id(node): node.operation for node in graph_rebuild.ordered_nodes(graph_rebuild.functional_graph(backbone))
    }
    dropped = [layers.get(node_id) for node_id in skip]
    if bypass or any(layer is None or not is_decoder(layer) for layer in dropped):
        raise InputError(
            f"{type(model).__name__}: only whole decoder blocks can be removed inside its backbone; prune the backbone"
        )
    return {id(layer) for layer in dropped}


def assign_by_path(built: list[tuple]) -> None:
    """Assign each built layer its weights by variable path, the full one or the one inside the layer
    (`inner_path`: a layer rebuilt outside the layer that held it, OPT's token embedding)."""
    for new, values in built:
        paths = [str(w.path) if str(w.path) in values else inner_path(new, w) for w in new.weights]
        if sorted(paths) != sorted(values):
            raise InputError(f"rebuilt layer {new.name!r} has an unexpected set of weights")
        new.set_weights([values[p] for p in paths])


def inner_path(layer, variable) -> str:
    """A variable's path inside its layer ("embeddings" for "embeddings/token_embedding/embeddings")."""
    return str(variable.path).removeprefix(f"{layer.path}/")


def _task_class(model):
    """prunecli's class for this KerasHub causal LM (itself when it is one already), or None."""
    classes = register()
    for cls in type(model).__mro__:
        if cls.__name__ in CAUSAL_LMS:
            return classes.get(cls.__name__)
    return None


def _fresh_copy(layer, **changes):
    """A new layer like `layer` (with these config `changes`), unbuilt: prunecli's subclass of its KerasHub
    class where there is one (Gemma's and Gemma3's RMSNormalization, which have no get_config), so the
    rebuilt model saves."""
    ours = register().get(_class_path(hub_class(layer)))
    if ours is None:
        return type(layer).from_config({**layer.get_config(), **changes})
    return ours.from_config({**own_config(layer), **changes})


def _rebuilt_task(model, backbone, swaps: list[tuple], dropped: set[int] = frozenset()):
    """The causal LM `model` around a PrunedDecoderBackbone of the swapped blocks but the `dropped`
    ones, with fresh copies of the backbone's embeddings (token and, GPT-2's and OPT's, position) and
    final norm (weights copied), its embedding dropout, and the task's preprocessor."""
    task_cls = _task_class(model)
    final_norm = _final_norm(backbone)
    if task_cls is None or getattr(backbone, "token_embedding", None) is None or final_norm is None:
        raise InputError(
            f"{type(model).__name__} around {type(backbone).__name__} is not rebuilt by prunecli "
            f"(causal LMs: {', '.join(CAUSAL_LMS)}); prune its backbone"
        )
    blocker = rebuild_blocker(model)
    if blocker:
        raise InputError(blocker)
    by_old = {id(old): (new, values) for old, new, values in swaps}
    order = [b for b in blocks(model) if id(b) not in dropped]
    if not order:
        raise InputError(f"{type(model).__name__}: removing every decoder block leaves no model")
    if any(id(b) not in by_old for b in order):
        raise InputError(f"{type(model).__name__}: every decoder block must be rebuilt at once")
    ends = (backbone.token_embedding, final_norm)  # swapped when the residual stream narrows
    positions, embedding_norm = _position_embedding(backbone), _embedding_norm(backbone)
    ends += tuple(lay for lay in (positions, embedding_norm) if lay is not None)
    copies = [by_old[id(lay)][0] if id(lay) in by_old else _fresh_copy(lay) for lay in ends]
    by_end = dict(zip(map(id, ends), copies, strict=True))
    new_backbone = register()["backbone"](
        token_embedding=copies[0],
        transformer_layers=[by_old[id(b)][0] for b in order],
        layer_norm=copies[1],
        embedding_scale=_embedding_scale(backbone),
        position_embedding=None if positions is None else by_end[id(positions)],
        embedding_dropout=getattr(getattr(backbone, "embeddings_dropout", None), "rate", 0.0),
        embedding_norm=None if embedding_norm is None else by_end[id(embedding_norm)],
        dtype=backbone.dtype_policy,
        name=backbone.name,
    )
    for copy, old in zip(copies, ends, strict=True):
        if id(old) not in by_old:
            copy.set_weights(old.get_weights())
    assign_by_path([by_old[id(b)] for b in order] + [by_old[id(lay)] for lay in ends if id(lay) in by_old])
    return task_cls(backbone=new_backbone, preprocessor=getattr(model, "preprocessor", None), name=model.name)


def _final_norm(backbone):
    """The norm a backbone applies after its last block: KerasHub's usual `layer_norm` (a
    PrunedDecoderBackbone's too), SmolLM3's `norm`, Falcon's `final_layernorm`; None without one."""
    names = ("layer_norm", "norm", "final_layernorm")
    return next((n for n in (getattr(backbone, a, None) for a in names) if n is not None), None)


def _embedding_norm(backbone):
    """The norm the backbone applies to its token embedding before the first block (Bloom's
    embeddings_layer_norm, a PrunedDecoderBackbone's embedding_norm), or None."""
    found = getattr(backbone, "embedding_norm", None)
    return found if found is not None else getattr(backbone, "embeddings_layer_norm", None)


def _position_embedding(backbone):
    """The learned position embedding the backbone adds to its token embedding, or None: GPT-2's (and a
    PrunedDecoderBackbone's) own, OPT's inside its TokenAndPositionEmbedding (whose call is exactly
    token_embedding(ids) + position_embedding(...), what PrunedDecoderBackbone.embed computes)."""
    found = getattr(backbone, "position_embedding", None)
    return found if found is not None else getattr(getattr(backbone, "embeddings", None), "position_embedding", None)


def max_length(model) -> int | None:
    """The most tokens the model (or its task's backbone) reads at once: its learned position embedding's
    length (GPT-2, OPT), or None (rotary positions set no length of their own)."""
    inner = host(model)
    positions = None if inner is None else _position_embedding(inner)
    return None if positions is None else int(positions.sequence_length)


def _embedding_scale(backbone) -> float | None:
    """What the backbone multiplies its token embedding by, or None: Gemma's sqrt(hidden_dim) of the
    dense model (a PrunedDecoderBackbone holds it, narrowed or not)."""
    if getattr(backbone, "embedding_scale", None) is not None:
        return float(backbone.embedding_scale)
    own = _own_blocks(backbone)
    return math.sqrt(int(backbone.hidden_dim)) if own and _family_of(own[0]).scaled_embedding else None


# ---------------------------------------------------------------------------------------------------
# The residual stream (hidden channels)

# KerasHub's RMSNorms over the residual stream, x * rsqrt(mean(x^2) + epsilon) * (offset + scale), by
# class name: offset 0 (Llama, Mistral, Qwen, Qwen3, Phi-3) ...
RMS_NORMS = {
    "LlamaLayerNorm": 0.0,
    "MistralLayerNormalization": 0.0,
    "QwenLayerNorm": 0.0,
    "Qwen3LayerNorm": 0.0,
    "Phi3LayerNorm": 0.0,
}
# ... and by "module.Class" where classes share a name: Gemma's and Gemma3's RMSNormalization, offset 1
# (their scale starts at zero), and Keras' own, offset 0 (SmolLM3's)
OFFSET_RMS_NORMS = {
    "keras_hub.src.models.gemma.rms_normalization.RMSNormalization": 1.0,
    "keras_hub.src.models.gemma3.gemma3_layers.RMSNormalization": 1.0,
    "keras.src.layers.normalization.rms_normalization.RMSNormalization": 0.0,
}


def _norm_offset(layer) -> float | None:
    """The offset a residual-stream RMSNorm adds to its scale (0 or 1), or None for any other layer."""
    for cls in type(layer).__mro__:
        if cls.__name__ in RMS_NORMS:
            return RMS_NORMS[cls.__name__]
        if _class_path(cls) in OFFSET_RMS_NORMS:
            return OFFSET_RMS_NORMS[_class_path(cls)]
    return None


def _norm_names() -> str:
    return ", ".join([*RMS_NORMS, *OFFSET_RMS_NORMS, "LayerNormalization"])


def _stream_norm(layer) -> bool:
    """Whether a norm over the residual stream is one `narrower` rebuilds: a known RMSNorm (its scale
    and epsilon corrected) or a LayerNormalization over the last axis (narrowed_norm)."""
    return _norm_offset(layer) is not None or narrowed_norm.centred(layer)


def _norm_slices(norm) -> list[tuple[Any, int]]:
    """(variable, channel axis) of a stream norm: an RMSNorm's scale; a LayerNormalization's gamma and
    beta (those it has)."""
    if _norm_offset(norm) is not None:
        return [(norm.scale, 0)]
    return [(w, 0) for w in (getattr(norm, "gamma", None), getattr(norm, "beta", None)) if w is not None]


def residual_norms(block) -> list:
    """The block's norms over the residual stream: before attention and before the feed-forward
    network, and Gemma 2's after each where the block has them."""
    return keras_graph.hub_block_norms(block) + keras_graph.hub_block_post_norms(block)


def residual_slices(block) -> list[tuple[Any, int]]:
    """(variable, channel axis) of everything in a decoder block indexed by residual channel c: the norms'
    scales (and LayerNorm offsets), the q/k/v kernels' model axis (Llama's first, Gemma's second), the
    attention output kernel's last axis (and a bias over it), the gate (where there is one) and up
    kernels' input rows and the down kernel's columns (and a bias over them). q/k/v biases run over
    heads, not channels: they are not listed."""
    out = [pair for norm in residual_norms(block) for pair in _norm_slices(norm)]
    *qkv, (output, *_rest) = keras_graph.attention_projections(attention(block))
    out += [(sub.kernel, keras_graph.einsum_model_axis(sub, False, 0)) for sub, *_ in qkv]
    last = len(output.kernel.shape) - 1
    out.append((output.kernel, keras_graph.einsum_model_axis(output, True, last)))
    gate, up, down = keras_graph.hub_ffn(block)
    out += [(dense.kernel, 0) for dense in (gate, up) if dense is not None] + [(down.kernel, 1)]
    for dense in (output, down):
        if getattr(dense, "bias", None) is not None:
            out.append((dense.bias, len(dense.bias.shape) - 1))
    return out


@dataclass(frozen=True)
class Stream:
    """The layers around the decoder blocks that the residual stream runs through: the token embedding,
    the final norm, and, where the backbone has them, the learned position embedding (GPT-2, OPT) and
    the norm of the embedding (Bloom), each of whose weights is indexed by channel on its last axis."""

    embedding: Any
    final: Any
    positions: Any = None
    embedding_norm: Any = None

    def extras(self) -> list:
        return [layer for layer in (self.positions, self.embedding_norm) if layer is not None]


def stream(model) -> Stream:
    """The Stream of the model (or of its task's backbone). InputError when the backbone holds anything
    else with weights or a norm prunecli does not rebuild: the residual stream would reach a layer that
    is not narrowed with it. Layers that add or drop out (GPT-2's embeddings_add, embeddings_dropout)
    pass any channel through as it is."""
    import keras

    inner = host(model)
    if inner is None:
        raise InputError(f"{model.name}: no KerasHub decoder blocks (those of {', '.join(CAUSAL_LMS)}) to narrow")
    blocker = rebuild_blocker(model)
    if blocker:
        raise InputError(blocker)
    found = _stream_parts(inner)
    known = {id(layer) for layer in (found.embedding, found.final, *found.extras())}
    composite = getattr(inner, "embeddings", None)  # OPT's TokenAndPositionEmbedding, rebuilt from its parts
    if composite is not None:
        if inner is model:
            raise InputError(
                f"{inner.name}: its {type(composite).__name__} {composite.name!r} is rebuilt only inside a causal LM: "
                "narrow the causal LM, not its backbone alone"
            )
        known.add(id(composite))
    others = [
        layer
        for layer in keras_graph.children(inner)
        if not is_decoder(layer)
        and id(layer) not in known
        and not isinstance(layer, (keras.layers.InputLayer, keras.layers.Add, keras.layers.Dropout))
    ]
    norms = [n for n in (found.final, found.embedding_norm) if n is not None]
    if (
        found.final is None
        or others
        or not isinstance(found.embedding, keras.layers.Embedding)
        or not all(map(_stream_norm, norms))
    ):
        names = ", ".join(f"{type(layer).__name__} {layer.name!r}" for layer in others or norms)
        raise InputError(
            f"{inner.name}: the residual stream is not token embedding (and positions) -> decoder blocks -> a norm "
            f"prunecli rebuilds ({_norm_names()}): {names}"
        )
    return found


def _stream_parts(inner) -> Stream:
    """The Stream's layers by the backbone's attributes (KerasHub's and PrunedDecoderBackbone's names), or
    by kind among its layers where it has none (a plain functional model prunecli rebuilt): the one
    Embedding, a PositionEmbedding, the stream norms in graph order (the last one final, one before it
    the embedding's norm)."""
    import keras

    layers = [layer for layer in keras_graph.children(inner) if not is_decoder(layer)]
    embeddings = [layer for layer in layers if isinstance(layer, keras.layers.Embedding)]
    norms = [layer for layer in layers if _stream_norm(layer)]
    positions = [layer for layer in layers if type(layer).__name__ == "PositionEmbedding"]

    def attribute(found, fallback):
        return found if found is not None else fallback

    return Stream(
        attribute(getattr(inner, "token_embedding", None), embeddings[0] if len(embeddings) == 1 else None),
        attribute(_final_norm(inner), norms[-1] if norms else None),
        attribute(_position_embedding(inner), positions[0] if len(positions) == 1 else None),
        attribute(_embedding_norm(inner), norms[0] if len(norms) == 2 else None),
    )


def stream_ends(model) -> tuple[Any, Any]:
    """(token embedding, final norm) around the decoder blocks of the model (see `stream`)."""
    found = stream(model)
    return found.embedding, found.final


def stream_slices(model) -> list[tuple[Any, int]]:
    """(variable, channel axis) of every slice of the model's residual stream: the token embedding's
    columns (and, untied, the reverse embedding's rows), the position embedding's columns and the
    embedding norm's entries, every block's residual_slices, the final norm's."""
    found = stream(model)
    embedding = found.embedding
    out = [(embedding.embeddings, 1)]
    if getattr(embedding, "reverse_embeddings", None) is not None:
        out.append((embedding.reverse_embeddings, 0))
    out += [(w, len(w.shape) - 1) for layer in found.extras() for w in layer.weights]
    for block in blocks(model):
        out += residual_slices(block)
    out += _norm_slices(found.final)
    return out


def offset_slices(model) -> set[int]:
    """id() of the stream's LayerNorm offsets (beta): one number per channel each, which can be near
    zero in a channel that carries much, so they say nothing about a channel's weight magnitude."""
    return {id(norm.beta) for norm in _stream_norms(model, stream(model)) if getattr(norm, "beta", None) is not None}


def _stream_norms(model, found: Stream) -> list:
    """Every norm over the residual stream: each block's, the final one, the embedding's where there is one."""
    norms = [norm for block in blocks(model) for norm in residual_norms(block)] + [found.final]
    return norms + ([found.embedding_norm] if found.embedding_norm is not None else [])


def narrow_blocker(model) -> str | None:
    """Why the model's residual stream cannot be narrowed, or None when it can."""
    try:
        embedding, _final = stream_ends(model)
    except InputError as error:
        return str(error)
    if quantization_mode(embedding) is not None:
        return f"{embedding.name!r} is quantized by Keras"
    for block in blocks(model):
        blocker = shrink_blocker(block)
        if blocker:
            return blocker
        if not all(_stream_norm(norm) for norm in residual_norms(block)):
            return f"{block.name!r} does not normalise with one of {_norm_names()}"
    return None


def narrower(model, channels: list[int]):
    """A new model whose residual stream has only these channels (ascending), computing what `model`
    computes once every other channel is zero in all its slices (stream_slices).

    Such a channel is zero all along the stream: the embedding (and the positions) write 0 into it, and
    so does every attention and feed-forward output. Every norm then reads D channels of which only the
    D' kept are non-zero.

    An RMSNorm: with m' = mean of x^2 over the kept ones, its mean over all D is (D'/D) m', and

        x_c / sqrt((D'/D) m' + eps) * scale_c = x_c / sqrt(m' + eps D/D') * (scale_c sqrt(D/D')).

    So each RMSNorm of the narrower model (which averages over D' channels) gets scale' = scale sqrt(D/D')
    and epsilon' = epsilon D/D', and computes exactly the same; keeping epsilon would be off by the
    relative eps (D/D' - 1) / (m' + eps), i.e. equal up to epsilon. Gemma's norms multiply by (1 + scale),
    so there (1 + scale') = (1 + scale) sqrt(D/D').

    A LayerNormalization also subtracts the mean over all D channels, which no such correction undoes:
    it becomes a NarrowedLayerNormalization that keeps D and computes the full-width statistics from the
    D' channels (structure/narrowed_norm); a block's own norms are made so when it builds (its
    `norm_width`).

    The blocks keep their heads, head size and feed-forward units (head_dim is in prunecli's block
    config; RoPE and the cache read head_dim), and Gemma's token embedding keeps its sqrt(D) factor
    (PrunedDecoderBackbone's embedding_scale)."""
    import numpy as np

    found = stream(model)
    blocker = narrow_blocker(model)
    if blocker:
        raise InputError(f"the residual stream of {host(model).name!r} cannot be narrowed: {blocker}")
    channels = [int(c) for c in channels]
    width = int(found.embedding.output_dim)
    factor = width / len(channels)

    rms_scales = {id(n.scale): _norm_offset(n) for n in _stream_norms(model, found) if _norm_offset(n) is not None}

    def narrowed_values(pairs, layer=None):
        """The variables' kept channels (an RMSNorm's scale corrected), by path (inside `layer`, when one
        is given: see `assign_by_path`)."""
        name = (lambda var: str(var.path)) if layer is None else (lambda var: inner_path(layer, var))
        out = {}
        for var, axis in pairs:
            kept = np.take(np.asarray(var), channels, axis=axis)
            out[name(var)] = _corrected_scale(kept, rms_scales[id(var)], factor) if id(var) in rms_scales else kept
        return out

    swaps = []
    for block in blocks(model):
        new, values = smaller(block)
        config = new.get_config()
        own = residual_norms(block)
        if all(_norm_offset(norm) is not None for norm in own):
            config["layer_norm_epsilon"] = float(config["layer_norm_epsilon"]) * factor
        else:
            config["norm_width"] = narrowed_norm.full_width(own[0], width)
        hidden = _family_of(block).hidden
        if hidden in config:  # Gemma's, Phi-3's and SmolLM3's blocks size their output projections from it
            config[hidden] = len(channels)
        new = type(new).from_config(config)
        values.update(narrowed_values(residual_slices(block)))
        swaps.append((block, new, values))
    embedding = found.embedding
    config = embedding.get_config()
    config["output_dim"] = len(channels)
    pairs = [(embedding.embeddings, 1)]
    if getattr(embedding, "reverse_embeddings", None) is not None:
        pairs.append((embedding.reverse_embeddings, 0))
    swaps.append((embedding, type(embedding).from_config(config), narrowed_values(pairs, embedding)))
    for norm in [found.final] + ([found.embedding_norm] if found.embedding_norm is not None else []):
        if _norm_offset(norm) is not None:
            new = _fresh_copy(norm, epsilon=float(norm.epsilon) * factor)
        else:
            new = narrowed_norm.narrowed(norm, width)
        swaps.append((norm, new, narrowed_values(_norm_slices(norm), norm)))
    if found.positions is not None:
        pairs = [(w, len(w.shape) - 1) for w in found.positions.weights]
        swaps.append((found.positions, _fresh_copy(found.positions), narrowed_values(pairs, found.positions)))
    return rebuild_with(model, swaps)


def _corrected_scale(scale, offset: float, factor: float):
    """A narrowed RMSNorm's scale: (offset + scale) sqrt(D/D') - offset (see `narrower`)."""
    return (offset + scale) * math.sqrt(factor) - offset
