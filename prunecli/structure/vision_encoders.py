"""KerasHub vision Transformers (ViT, DeiT; MiT and Swin, see below): their encoder blocks' feed-forward
units and attention heads, and whole blocks, removed for real.

ViTBackbone's graph is images -> ViTPatchingAndEmbedding -> one ViTEncoder layer, which holds every block
(ViTEncoderBlock: x + mha(ln_1(x)), then x + mlp(ln_2(x))) and the final norm; DeiTBackbone's is the same
with DeiTEmbeddings, DeiTEncoder and DeiTEncoderBlock (the feed-forward network split between its `mlp`
and its `output_layer`, which adds the residual). The functional graph sees the encoder as one node, so
neither the channel graph nor layer removal reaches a block; this module reads the blocks (their parts
through keras_graph's HUB_BLOCK_PARTS_BY_CLASS, as decoder blocks') and rebuilds the encoder.

- Feed-forward units. The network is Dense(units, gelu) -> Dense(hidden), un-gated as GPT-2's: unit j is
  the first Dense's column j and bias j and the second's row j (decoders.Ffn with no gate), and adds
  gelu(x.up_j + b_j) down_j, zero once its down row is: masking and deleting it compute the same.
- Heads. The attention is keras.layers.MultiHeadAttention, each head its own unit (transformer.HeadLayer):
  head h is entry h of the q/k/v kernels' and biases' head axis and of the output kernel's first axis.
  The block derives key_dim = hidden_dim // num_heads in its constructor, which fewer heads would change:
  the rebuilt block carries `key_dim` in its config (so the score scale 1/sqrt(key_dim) stays).
- Blocks. Each block is x -> x + f(x): the encoder without it computes the same up to that block's
  contribution (-g layer, LayerDrop).

The rebuilt model is the user's task class (ViTImageClassifier, DeiTImageClassifier: KerasHub's own, its
head layers' weights copied) around PrunedViTBackbone / PrunedDeiTBackbone, subclasses of the family's
backbone whose graph is the same two layers: the embedding as prunecli's subclass whose config is its
constructor's arguments (KerasHub's ViTPatchingAndEmbedding.get_config writes num_patches and
num_positions, which its constructor refuses), and PrunedViTEncoder / PrunedDeiTEncoder, which builds
its own parts (dropout, final norm) as the family does and then its blocks from their configs: each
block its own heads, key size and units (a global selection leaves them different), the kept blocks
named as before. Every block of a rebuilt model is prunecli's (PrunedViTEncoderBlock...), so a model
rebuilt twice (heads, then units) rebuilds from the same classes.

MiT and Swin are hierarchical: stages at falling resolutions, each block x + attn(norm1(x)), then
x + ffn(norm2(x)), its units a fixed multiple of the stage's width, its heads the stage's count. The same
functions (blocks, ffns, rebuild, rebuild_blocker) serve them. Their attention is not MultiHeadAttention
(keras_graph's ATTENTION_PROJECTIONS_BY_CLASS reads its heads): both blocks derive the head size from the
width and the head count, and both attentions reshape their heads' output to the input's width, so a
block with fewer heads carries `head_dim` and holds prunecli's attention (_MiTAttention, _SwinAttention),
which computes the same at the heads it holds. Only the per-head weights go (`_head_cuts`): MiT's
spatial reduction (a strided convolution and a norm over all channels, before k and v) holds no head's;
Swin's relative position bias table holds one column per head, removed with it.
- MiT's blocks are nodes of MiTBackbone's own graph (patch embedding -> blocks -> norm -> reshape, per
  stage). Its MixFFN is fc1 -> depthwise 3x3 conv -> GeLU -> fc2: unit j is also the convolution's channel j
  (decoders.Ffn's `depthwise`). PrunedMiTBackbone wires the same graph from per-stage block configs,
  PrunedHierarchicalTransformerEncoder carrying `mlp_units` and `head_dim`; weights are copied part by
  part, layer by layer in order (MixFFN's and the attention's layers are named by Keras' counters).
- Swin's blocks sit in SwinTransformerStage layers (then patch merging). PrunedSwinTransformerStage builds
  its blocks from configs (PrunedSwinTransformerBlock: `mlp_units`, `head_dim`, its own shift, so a shifted
  block keeps its shift when the block before it goes) inside PrunedSwinTransformerBackbone; weights by path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunecli.errors import InputError
from prunecli.structure import decoders, keras_graph
from prunecli.structure.layers import quantization_mode


@dataclass(frozen=True)
class Family:
    """A KerasHub vision Transformer: the classes of its backbone's parts and its blocks' arguments."""

    module: str  # the module keras_hub defines the block, encoder and embedding classes in
    backbone_module: str
    backbone: str
    encoder: str
    embedding: str
    intermediate: str  # the block's and encoder's argument for the feed-forward units


# KerasHub vision Transformer blocks by class name
FAMILIES = {
    "ViTEncoderBlock": Family(
        "keras_hub.src.models.vit.vit_layers",
        "keras_hub.src.models.vit.vit_backbone",
        "ViTBackbone",
        "ViTEncoder",
        "ViTPatchingAndEmbedding",
        "mlp_dim",
    ),
    "DeiTEncoderBlock": Family(
        "keras_hub.src.models.deit.deit_layers",
        "keras_hub.src.models.deit.deit_backbone",
        "DeiTBackbone",
        "DeiTEncoder",
        "DeiTEmbeddings",
        "intermediate_dim",
    ),
}
# MiT (SegFormer's encoder): its blocks are nodes of the backbone's own graph, stage after stage
MIT_MODULE, MIT_BACKBONE_MODULE = "keras_hub.src.models.mit.mit_layers", "keras_hub.src.models.mit.mit_backbone"
MIT_BLOCK, MIT_BACKBONE, MIT_EMBEDDING, MIT_ATTENTION = (
    "HierarchicalTransformerEncoder",
    "MiTBackbone",
    "OverlappingPatchingAndEmbedding",
    "SegFormerMultiheadAttention",
)
MIT_BLOCK_PARTS = ("norm1", "attn", "norm2", "mlp")  # a MiT block's layers that hold weights
# Swin: its blocks inside stage layers of the backbone's graph
SWIN_MODULE = "keras_hub.src.models.swin_transformer.swin_transformer_layers"
SWIN_BACKBONE_MODULE = "keras_hub.src.models.swin_transformer.swin_transformer_backbone"
SWIN_BLOCK, SWIN_STAGE, SWIN_BACKBONE = "SwinTransformerBlock", "SwinTransformerStage", "SwinTransformerBackbone"
SWIN_ATTENTION = "WindowAttention"
# how a saved model names prunecli's classes
CLASS_NAMES = tuple(
    f"Pruned{name}" for block, fam in FAMILIES.items() for name in (block, fam.backbone, fam.encoder, fam.embedding)
) + tuple(f"Pruned{name}" for name in (MIT_BLOCK, MIT_BACKBONE, SWIN_BLOCK, SWIN_STAGE, SWIN_BACKBONE))

_CLASSES: dict[str, Any] = {}  # KerasHub class name -> prunecli's subclass


def _hub_name(layer) -> str:
    return decoders.hub_class(layer).__name__


def is_block(layer) -> bool:
    """Whether the layer is a KerasHub vision Transformer block (or prunecli's rebuild of one)."""
    return _hub_name(layer) in FAMILIES or _hub_name(layer) in (MIT_BLOCK, SWIN_BLOCK)


@dataclass(frozen=True)
class Parts:
    """A vision Transformer's backbone and the two layers of its graph."""

    backbone: Any
    embedding: Any
    encoder: Any
    family: Family

    @property
    def prefix(self) -> str:
        """How targets name the encoder's layers: "backbone/encoder" (also for a backbone alone)."""
        return f"{self.backbone.name}/{self.encoder.name}"


def parts(model) -> Parts | None:
    """The Parts of the model (a backbone) or of the backbone its task holds; None for any other model."""
    for backbone in (model, getattr(model, "backbone", None)):
        if backbone is None or not keras_graph.is_model(backbone):
            continue
        encoders = {_hub_name(layer): layer for layer in keras_graph.children(backbone)}
        for fam in FAMILIES.values():
            if fam.encoder in encoders and fam.embedding in encoders:
                return Parts(backbone, encoders[fam.embedding], encoders[fam.encoder], fam)
    return None


def blocks(model) -> list:
    """The encoder blocks of the model (or of its task's backbone), in order; [] for any other model."""
    return [block for _name, block in named_blocks(model)]


def sequence_length(model) -> int | None:
    """The tokens each encoder block sees (patches and class tokens, fixed by the image size), or None
    for a model without a vision Transformer encoder or with open image sizes."""
    found = parts(model)
    if found is None:
        return None
    length = tuple(found.encoder.input.shape)[1]
    return None if length is None else int(length)


def stage_lengths(model) -> bool:
    """Whether the model's encoder blocks see each their stage's own token count (MiT's and Swin's stages
    at falling resolutions, Swin's attention within windows): what one --seq-len would price wrong."""
    return mit_backbone(model) is not None or swin_backbone(model) is not None


def attention(block):
    return keras_graph.hub_self_attention(block)


def named_blocks(model) -> list[tuple[str, Any]]:
    """(name, block) of the model's encoder blocks, in order, named as targets name their layers
    ("vi_t_backbone/vit_encoder/transformer_block_1", MiT's "mi_t_backbone/hierarchical_encoder_0_1")."""
    mit = mit_backbone(model)
    if mit is not None:
        return [(f"{mit.name}/{b.name}", b) for stage in mit_stages(mit) for b in stage.blocks]
    swin = swin_backbone(model)
    if swin is not None:
        return [(f"{swin.name}/{s.name}/{b.name}", b) for s in swin_stages(swin) for b in s.blocks]
    found = parts(model)
    return [] if found is None else [(f"{found.prefix}/{b.name}", b) for b in found.encoder.encoder_layers]


def ffns(model) -> list[decoders.Ffn]:
    """The feed-forward networks of the model's encoder blocks, in order."""
    out = []
    for name, block in named_blocks(model):
        ffn = keras_graph.hub_ffn(block)
        if ffn is not None:
            out.append(decoders.Ffn(name, block, *ffn, depthwise=keras_graph.hub_ffn_depthwise(block)))
    return out


def ffn_kernel_ids(model) -> set[int]:
    """id() of every feed-forward kernel of the model's encoder blocks (the targets of -g neuron)."""
    return {id(var) for f in ffns(model) for var, _axis in f.slices()}


def rebuild_blocker(model) -> str | None:
    """Why prunecli cannot rebuild the model's backbone around its encoder, or None when it can."""
    import keras

    mit = mit_backbone(model)
    if mit is not None:
        return _mit_rebuild_blocker(mit)
    if swin_backbone(model) is not None:
        return _swin_rebuild_blocker(swin_backbone(model))
    found = parts(model)
    if found is None:
        return f"{model.name}: no KerasHub vision Transformer encoder ({', '.join(FAMILIES)})"
    if not register():
        return "keras-hub's vision Transformer classes could not be imported"
    known = (found.embedding, found.encoder)
    others = [
        layer
        for layer in keras_graph.children(found.backbone)
        if not any(layer is k for k in known) and not isinstance(layer, keras.layers.InputLayer)
    ]
    if others:
        return f"{found.backbone.name}: its graph holds {others[0].name!r} besides the patch embedding and the encoder"
    quantized = _quantized_layer(found.backbone)
    if quantized:
        return quantized
    for block in blocks(model):
        blocker = shrink_blocker(block)
        if blocker:
            return blocker
    return None


def _quantized_layer(backbone) -> str | None:
    """Why a backbone holding a layer quantized by Keras is not rebuilt (per-unit scales are not sliced), or None."""
    for layer in keras_graph.all_layers(backbone):
        if quantization_mode(layer) is not None:
            return f"{layer.name!r} is quantized by Keras (per-unit scales are not sliced)"
    return None


def shrink_blocker(block) -> str | None:
    """Why an encoder block cannot be rebuilt smaller, or None when it can."""
    import keras

    attn = attention(block)
    if _hub_name(block) in (MIT_BLOCK, SWIN_BLOCK):
        if keras_graph.hub_ffn(block) is None:
            return f"{type(block).__name__} {block.name!r} is not laid out as KerasHub's blocks of its family are"
        if quantization_mode(block) is not None:
            return f"{block.name!r} is quantized by Keras (per-unit scales are not sliced)"
        return None
    if keras_graph.hub_ffn(block) is None or not isinstance(attn, keras.layers.MultiHeadAttention):
        return f"{type(block).__name__} {block.name!r} is not laid out as KerasHub's ViT and DeiT blocks are"
    if keras_graph.gated_attention(attn):
        return "gated attention (use_gate=True) is not rebuilt"
    if quantization_mode(block) is not None:
        return f"{block.name!r} is quantized by Keras (per-unit scales are not sliced)"
    return None


# ---------------------------------------------------------------------------------------------------
# prunecli's classes


class _PrunedBlock(decoders.OwnConfig):
    """Mixed into a KerasHub vision Transformer block: `key_dim` in its config (the block derives
    hidden_dim // num_heads, wrong once heads were removed)."""

    def __init__(self, *args, key_dim=None, **kwargs):
        super().__init__(*args, **kwargs)
        if key_dim is not None:
            self.key_dim = int(key_dim)

    def get_config(self):
        return {**decoders.own_config(self), "key_dim": int(self.key_dim)}


class _PrunedEncoder(decoders.OwnConfig):
    """Mixed into a KerasHub vision Transformer encoder: its blocks made from `block_configs` (serialized
    layers, each with its own heads, key size and units) in place of num_layers identical ones."""

    def __init__(self, *args, block_configs=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.block_configs = [dict(config) for config in block_configs]
        self.num_layers = len(self.block_configs)

    def build(self, input_shape):
        import keras

        self.num_layers = 0  # the family's own parts (dropout, the final norm), no blocks
        try:
            super().build(input_shape)
        finally:
            self.num_layers = len(self.block_configs)
        for config in self.block_configs:
            block = keras.layers.deserialize(config)
            block.build((None, None, self.hidden_dim))
            self.encoder_layers.append(block)

    def get_config(self):
        return {**decoders.own_config(self), "block_configs": [dict(c) for c in self.block_configs]}


class _PrunedBackbone:
    """Mixed into a KerasHub vision Transformer backbone: images -> `embedding` -> `encoder` (layers or
    their configs), the graph the family's constructor wires, without its constructor's uniform encoder."""

    def __init__(self, image_shape, embedding, encoder, dtype=None, **kwargs):
        import keras
        from keras_hub.models import Backbone

        def layer(value):
            return keras.layers.deserialize(value) if isinstance(value, dict) else value

        self.embedding, self.encoder = layer(embedding), layer(encoder)
        inputs = keras.layers.Input(shape=tuple(image_shape), name="images")
        outputs = self.encoder(self.embedding(inputs))
        if isinstance(outputs, (tuple, list)):  # DeiT's encoder also returns hidden states and scores
            outputs = outputs[0]
        Backbone.__init__(self, inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.image_shape = tuple(image_shape)
        self.patch_size = self.embedding.patch_size
        self.hidden_dim = int(self.encoder.hidden_dim)
        self.num_layers = len(self.encoder.encoder_layers)
        self.num_heads = max((int(b.num_heads) for b in self.encoder.encoder_layers), default=0)
        self.data_format = self.embedding.data_format

    def get_config(self):
        import keras
        from keras_hub.models import Backbone

        return {
            **Backbone.get_config(self),
            "image_shape": list(self.image_shape),
            "embedding": keras.layers.serialize(self.embedding),
            "encoder": keras.layers.serialize(self.encoder),
        }


def register() -> dict[str, Any]:
    """Define and register (once) prunecli's classes for the families this keras-hub has, by the KerasHub
    class each extends; {} without keras-hub. Loading a model prunecli rebuilt needs them
    (transformer.register_for_file)."""
    if _CLASSES:
        return _CLASSES
    try:
        import keras
    except ImportError:
        return {}
    import importlib

    for block_name, fam in FAMILIES.items():
        try:
            layers = importlib.import_module(fam.module)
            backbones = importlib.import_module(fam.backbone_module)
        except ImportError:
            continue
        for module, name, mixins in (
            (layers, block_name, (_PrunedBlock,)),
            (layers, fam.encoder, (_PrunedEncoder,)),
            (layers, fam.embedding, (decoders.OwnConfig,)),
            (backbones, fam.backbone, (_PrunedBackbone,)),
        ):
            base = getattr(module, name, None)
            if base is None:
                continue
            ours = f"Pruned{name}"
            doc = f"keras_hub's {name} as prunecli rebuilds it (structure/vision_encoders.py)."
            cls = type(ours, (*mixins, base), {"__doc__": doc, "__module__": __name__})
            _CLASSES[name] = keras.saving.register_keras_serializable(package="prunecli", name=ours)(cls)
    try:
        mit_layers = importlib.import_module(MIT_MODULE)
        mit_backbones = importlib.import_module(MIT_BACKBONE_MODULE)
        swin_layers = importlib.import_module(SWIN_MODULE)
        swin_backbones = importlib.import_module(SWIN_BACKBONE_MODULE)
    except ImportError:
        return _CLASSES
    for base, mixin in (
        (getattr(mit_layers, MIT_BLOCK), _PrunedMiTBlock),
        (getattr(mit_backbones, MIT_BACKBONE), _PrunedMiTBackbone),
        (getattr(swin_layers, SWIN_BLOCK), _PrunedSwinBlock),
        (getattr(swin_layers, SWIN_STAGE), _PrunedSwinStage),
        (getattr(swin_backbones, SWIN_BACKBONE), _PrunedSwinBackbone),
    ):
        ours = f"Pruned{base.__name__}"
        doc = f"keras_hub's {base.__name__} as prunecli rebuilds it (structure/vision_encoders.py)."
        cls = type(ours, (mixin, base), {"__doc__": doc, "__module__": __name__})
        _CLASSES[base.__name__] = keras.saving.register_keras_serializable(package="prunecli", name=ours)(cls)
    for base, mixin in (
        (getattr(mit_layers, MIT_ATTENTION), _MiTAttention),
        (getattr(swin_layers, SWIN_ATTENTION), _SwinAttention),
    ):
        # made by prunecli's blocks from their own config, never saved on their own: not registered
        doc = f"keras_hub's {base.__name__} at a head size of its own (structure/vision_encoders.py)."
        _CLASSES[base.__name__] = type(
            f"Pruned{base.__name__}", (mixin, base), {"__doc__": doc, "__module__": __name__}
        )
    return _CLASSES


# ---------------------------------------------------------------------------------------------------
# Rebuilding


def _smaller(block, prefix: str, heads=None, units=None) -> tuple[dict, dict]:
    """(serialized prunecli block with only these heads and feed-forward units, in this order; its
    weights by their path inside the encoder, `prefix` the block's). None keeps them all."""
    import keras
    import numpy as np

    attn = attention(block)
    count = keras_graph.attention_head_count(attn)
    heads = list(range(count)) if heads is None else [int(h) for h in heads]
    _gate, up, down = keras_graph.hub_ffn(block)
    units = list(range(int(up.kernel.shape[-1]))) if units is None else [int(u) for u in units]
    if not heads or not units:
        raise ValueError(f"{block.name}: a block keeps at least one head and one unit")
    cut = _head_cuts(attn, heads)
    cut[id(up.kernel)] = (1, units)
    cut[id(down.kernel)] = (0, units)
    if getattr(up, "bias", None) is not None:  # over units; the down projection's is over channels
        cut[id(up.bias)] = (0, units)
    config = decoders.own_config(block)
    config.update(
        num_heads=len(heads),
        key_dim=keras_graph.attention_key_dim(attn),
        **{FAMILIES[_hub_name(block)].intermediate: len(units)},
    )
    new = register()[_hub_name(block)].from_config(config)
    values = {}
    for v in block.weights:
        arr = np.asarray(v)
        if id(v) in cut:
            axis, keep = cut[id(v)]
            arr = np.take(arr, keep, axis=axis)
        values[f"{prefix}/{decoders.inner_path(block, v)}"] = arr
    return keras.layers.serialize(new), values


def _head_cuts(attn, heads: list[int] | None) -> dict[int, tuple[int, list[int]]]:
    """id(variable) -> (axis, entries kept) of the attention layer's per-head weights keeping these heads
    (None: all): its projections' kernels and biases (keras_graph's layouts: heads on their own axis, or
    flattened, or in q/k/v runs) and its per-head tables (Swin's relative position bias)."""
    heads_count, kv_count = keras_graph.grouped_head_counts(attn)
    keep = list(range(heads_count)) if heads is None else list(heads)
    cut: dict[int, tuple[int, list[int]]] = {}
    projections = keras_graph.attention_projections(attn)
    for (sub, role, k_axis, b_axis, width), blocks in zip(
        projections, keras_graph.attention_projection_blocks(attn), strict=True
    ):
        count = heads_count if role == "q" else kv_count
        entries = keras_graph.head_entries(keep, count, width, blocks)
        cut[id(sub.kernel)] = (k_axis, entries)
        bias = getattr(sub, "bias", None)
        if bias is not None and b_axis is not None:
            cut[id(bias)] = (b_axis, entries)
    for table, axis in keras_graph.attention_head_tables(attn):
        cut[id(table)] = (axis, keep)
    return cut


def attention_head_dim(attn) -> int:
    """The channels of one head of a MiT's or Swin's attention layer (KerasHub's MiT attention derives them
    from its width and head count, prunecli's holds them)."""
    kernel = keras_graph.attention_projections(attn)[-1][0].kernel  # the output: (heads * head_dim, width)
    return int(kernel.shape[0]) // int(attn.num_heads)


def rebuild(model, heads: dict | None = None, units: dict | None = None, dropped=()):
    """A new model like `model` (a vision Transformer task or backbone) whose encoder blocks keep the
    heads `heads[id(block)]` and feed-forward units `units[id(block)]` (all where a block is named in
    neither), without the blocks whose id() is in `dropped`; weights copied. The task stays the user's
    class around prunecli's backbone (see the module docstring)."""
    import numpy as np

    blocker = rebuild_blocker(model)
    if blocker:
        raise InputError(f"{model.name} cannot be rebuilt: {blocker}")
    heads, units, dropped = heads or {}, units or {}, set(dropped)
    if mit_backbone(model) is not None:
        return _rebuilt_mit(model, heads, units, dropped)
    if swin_backbone(model) is not None:
        return _rebuilt_swin(model, heads, units, dropped)
    found, classes = parts(model), register()
    fam, encoder = found.family, found.encoder
    kept = [b for b in encoder.encoder_layers if id(b) not in dropped]
    if not kept:
        raise InputError(f"{model.name}: removing every encoder block leaves no model")
    configs, values = [], {}
    for block in kept:
        config, block_values = _smaller(block, block.name, heads.get(id(block)), units.get(id(block)))
        configs.append(config)
        values.update(block_values)
    own = {id(v) for block in encoder.encoder_layers for v in block.weights}
    values.update({decoders.inner_path(encoder, v): np.asarray(v) for v in encoder.weights if id(v) not in own})
    encoder_config = decoders.own_config(encoder)
    encoder_config[fam.intermediate] = max(int(c["config"][fam.intermediate]) for c in configs)
    encoder_config["num_heads"] = max(int(c["config"]["num_heads"]) for c in configs)
    new_encoder = classes[fam.encoder].from_config({**encoder_config, "block_configs": configs})
    old_embedding = found.embedding
    new_embedding = classes[fam.embedding].from_config(decoders.own_config(old_embedding))
    backbone = found.backbone
    new_backbone = classes[fam.backbone](
        image_shape=backbone.image_shape,
        embedding=new_embedding,
        encoder=new_encoder,
        dtype=backbone.dtype_policy,
        name=backbone.name,
    )
    embedding_values = {decoders.inner_path(old_embedding, v): np.asarray(v) for v in old_embedding.weights}
    decoders.assign_by_path([(new_encoder, values), (new_embedding, embedding_values)])
    return _task_around(model, backbone, new_backbone)


def _task_around(model, backbone, new_backbone):
    """`new_backbone` where `model` is the backbone; else the user's task class around it, the task's
    own layers (the head) given their weights."""
    if backbone is model:
        return new_backbone
    config = {**model.get_config(), "backbone": new_backbone, "preprocessor": getattr(model, "preprocessor", None)}
    task = type(model).from_config(config)
    head = [layer for layer in keras_graph.children(model) if layer is not backbone and layer.weights]
    by_name = {layer.name: layer for layer in keras_graph.children(task)}
    for layer in head:
        by_name[layer.name].set_weights(layer.get_weights())
    return task


# ---------------------------------------------------------------------------------------------------
# MiT: stages of blocks in the backbone's own graph


@dataclass
class MiTStage:
    """One stage of a MiT backbone's graph: overlapping patch embedding -> blocks -> norm -> reshape."""

    embedding: Any
    blocks: list
    norm: Any = None
    reshape: Any = None


def mit_backbone(model):
    """The MiTBackbone the model is or its task holds (prunecli's rebuild of one too), or None."""
    for backbone in (model, getattr(model, "backbone", None)):
        if backbone is not None and keras_graph.is_model(backbone) and _hub_name(backbone) == MIT_BACKBONE:
            return backbone
    return None


def mit_stages(backbone) -> list[MiTStage]:
    """The backbone's stages in graph order ([] where its graph is not stage after stage as MiTBackbone
    wires it: what _mit_rebuild_blocker says)."""
    import keras

    stages: list[MiTStage] = []
    for layer in keras_graph.children(backbone):
        name = _hub_name(layer)
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if name == MIT_EMBEDDING:
            stages.append(MiTStage(layer, []))
        elif not stages or stages[-1].reshape is not None:
            return []
        elif name == MIT_BLOCK and stages[-1].norm is None:
            stages[-1].blocks.append(layer)
        elif isinstance(layer, keras.layers.LayerNormalization) and stages[-1].norm is None:
            stages[-1].norm = layer
        elif isinstance(layer, keras.layers.Reshape) and stages[-1].norm is not None:
            stages[-1].reshape = layer
        else:
            return []
    return stages if all(s.reshape is not None for s in stages) else []


def _mit_rebuild_blocker(backbone) -> str | None:
    if MIT_BLOCK not in register():
        return "keras-hub's MiT classes could not be imported"
    if not mit_stages(backbone):
        return f"{backbone.name}: its graph is not MiT's stages (patch embedding, blocks, norm, reshape)"
    quantized = _quantized_layer(backbone)
    if quantized:
        return quantized
    for stage in mit_stages(backbone):
        for block in stage.blocks:
            blocker = shrink_blocker(block)
            if blocker:
                return blocker
    return None


class _PrunedMiTBlock(decoders.OwnConfig):
    """Mixed into MiT's HierarchicalTransformerEncoder: `mlp_units` feed-forward units (the block builds
    4 x project_dim; fewer once units were removed), `num_heads` heads of `head_dim` channels each (the
    block derives project_dim // num_heads; prunecli's attention, _MiTAttention, keeps the size once heads
    were removed), and a config its constructor takes (KerasHub's writes the built MixFFN and a misspelt
    drop_prop, which it refuses). Its parts are in MIT_BLOCK_PARTS."""

    def __init__(self, *args, mlp_units=None, head_dim=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.mlp_units = 4 * int(self.project_dim) if mlp_units is None else int(mlp_units)
        self.head_dim = int(self.project_dim) // int(self.num_heads) if head_dim is None else int(head_dim)
        old = self.attn
        keras_graph.untrack(self, old)
        del self.attn
        self.attn = register()[MIT_ATTENTION](self.project_dim, self.num_heads, old.sr_ratio, self.head_dim)
        mix_ffn = type(self.mlp)
        keras_graph.untrack(self, self.mlp)
        del self.mlp
        self.mlp = mix_ffn(channels=self.project_dim, mid_channels=self.mlp_units)

    def get_config(self):
        config = decoders.own_config(self)
        if "drop_prob" in config:  # MiTBackbone passes numpy floats
            config["drop_prob"] = float(config["drop_prob"])
        return {**config, "mlp_units": self.mlp_units, "head_dim": self.head_dim}


class _MiTAttention:
    """Mixed into MiT's SegFormerMultiheadAttention: `num_heads` heads of `head_dim` channels each.
    KerasHub's layer derives the head size from its width (project_dim // num_heads) and reshapes its
    heads' output to the input's width, both wrong once heads are gone; this one computes the same
    attention (queries from every token, keys and values from the tokens its `sr` convolution reduced,
    softmax(q k^T / sqrt(head_dim)) v, then the output projection) at the heads it holds."""

    def __init__(self, project_dim, num_heads, sr_ratio, head_dim):
        super().__init__(project_dim, num_heads, sr_ratio)
        self.head_dim = int(head_dim)
        self.scale = self.head_dim**-0.5
        for dense in (self.q, self.k, self.v):  # not built yet: they build at the heads' width
            dense.units = self.num_heads * self.head_dim

    def _split_heads(self, x):
        """(batch, tokens, heads * head_dim) -> (batch, heads, tokens, head_dim)."""
        from keras import ops

        return ops.transpose(ops.reshape(x, (-1, x.shape[1], self.num_heads, self.head_dim)), (0, 2, 1, 3))

    def call(self, x):
        import math

        from keras import ops

        tokens, channels = x.shape[1], x.shape[2]
        q = self._split_heads(self.q(x))
        if self.sr_ratio > 1:  # keys and values from the tokens of a coarser grid
            side = int(math.sqrt(tokens))
            x = self.sr(ops.reshape(x, (-1, side, side, channels)))
            x = self.norm(ops.reshape(x, (-1, x.shape[1] * x.shape[2], channels)))
        k, v = self._split_heads(self.k(x)), self._split_heads(self.v(x))
        scores = ops.softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))) * self.scale, axis=-1)
        heads = ops.matmul(self.dropout(scores), v)
        heads = ops.reshape(ops.transpose(heads, (0, 2, 1, 3)), (-1, tokens, self.num_heads * self.head_dim))
        return self.proj_drop(self.proj(heads))


class _PrunedMiTBackbone:
    """Mixed into MiTBackbone: the graph its constructor wires (per stage: patch embedding, blocks, norm,
    reshape to the image grid), its blocks made from `block_configs` (per stage, serialized blocks, each
    with its own units; a stage may keep none) in place of layerwise_depths identical ones; the stage
    norms keep their names (`stage_norm_names`)."""

    def __init__(
        self,
        block_configs,
        hidden_dims,
        layerwise_num_heads,
        layerwise_sr_ratios,
        layerwise_patch_sizes,
        layerwise_strides,
        image_shape=(None, None, 3),
        max_drop_path_rate=0.0,
        stage_norm_names=None,
        layerwise_depths=None,  # MiTBackbone's config: the stages' lengths, here those of block_configs
        num_layers=None,
        **kwargs,
    ):
        import importlib

        import keras
        from keras import ops

        embedding_class = getattr(importlib.import_module(MIT_MODULE), MIT_EMBEDDING)
        stages = [[keras.layers.deserialize(c) if isinstance(c, dict) else c for c in s] for s in block_configs]
        norm_names = list(stage_norm_names or [None] * len(stages))
        inputs = keras.layers.Input(shape=tuple(image_shape))
        x, pyramid = inputs, {}
        for i, stage in enumerate(stages):
            stride = layerwise_strides[i]
            height, width = int(ops.shape(x)[1] / stride), int(ops.shape(x)[2] / stride)  # as MiTBackbone
            x = embedding_class(
                project_dim=hidden_dims[i],
                patch_size=layerwise_patch_sizes[i],
                stride=stride,
                name=f"patch_and_embed_{i}",
            )(x)
            for block in stage:
                x = block(x)
            x = keras.layers.LayerNormalization(epsilon=1e-5, name=norm_names[i])(x)
            x = keras.layers.Reshape((height, width, -1), name=f"output_level_{i}")(x)
            pyramid[f"P{i + 1}"] = x
        super(decoders.hub_class(self), self).__init__(inputs=inputs, outputs=x, **kwargs)
        self.block_configs = [[keras.layers.serialize(b) for b in stage] for stage in stages]
        self.stage_norm_names = [s.norm.name for s in mit_stages(self)]
        self.layerwise_depths = [len(stage) for stage in stages]
        self.image_shape = tuple(image_shape)
        self.hidden_dims = list(hidden_dims)
        self.pyramid_outputs = pyramid
        self.num_layers = len(stages)
        self.layerwise_num_heads = [  # a stage's largest, as each block holds its own (the original for an empty one)
            max((int(b.num_heads) for b in stage), default=int(heads))
            for stage, heads in zip(stages, layerwise_num_heads, strict=True)
        ]
        self.layerwise_sr_ratios = list(layerwise_sr_ratios)
        self.max_drop_path_rate = max_drop_path_rate
        self.layerwise_patch_sizes = list(layerwise_patch_sizes)
        self.layerwise_strides = list(layerwise_strides)

    def get_config(self):
        config = decoders.hub_class(self).get_config(self)
        return {**config, "block_configs": self.block_configs, "stage_norm_names": self.stage_norm_names}


def _mit_block_config(block, heads, units) -> tuple[dict, dict[int, tuple[int, list[int]]]]:
    """(serialized prunecli block keeping these heads and feed-forward units, in this order (None: all);
    the slices to take of the old block's weights: id(variable) -> (axis, entries kept))."""
    found = decoders.Ffn(block.name, block, *keras_graph.hub_ffn(block), keras_graph.hub_ffn_depthwise(block))
    config = decoders.own_config(block)
    if "drop_prob" in config:
        config["drop_prob"] = float(config["drop_prob"])
    return _pruned_block(block, found, config, MIT_BLOCK, heads, units)


def _pruned_block(block, found, config: dict, kind: str, heads, units) -> tuple[dict, dict]:
    """The serialized prunecli block of `kind` built from the old block's `config` with these heads and
    feed-forward units (`found`'s; None: all) at the old head size, and the cuts of the old weights."""
    import keras

    units = list(range(found.units)) if units is None else [int(u) for u in units]
    kept_heads = int(block.num_heads) if heads is None else len(heads)
    if not units or not kept_heads:
        raise ValueError(f"{block.name}: a block keeps at least one head and one unit")
    config = {**config, "mlp_units": len(units), "num_heads": kept_heads, "head_dim": attention_head_dim(block.attn)}
    new = register()[kind].from_config(config)
    cuts = _head_cuts(block.attn, heads)
    cuts.update({id(var): (axis, units) for var, axis in found.all_slices()})
    return keras.layers.serialize(new), cuts


def _copy_in_order(pairs: list[tuple], cuts: dict) -> None:
    """Give each new layer its old layer's weights in the order both hold them, each sliced as `cuts` says."""
    import numpy as np

    for old, new in pairs:
        values = []
        for var in old.weights:
            arr = np.asarray(var)
            if id(var) in cuts:
                axis, keep = cuts[id(var)]
                arr = np.take(arr, keep, axis=axis)
            values.append(arr)
        new.set_weights(values)


def _rebuilt_mit(model, heads: dict, units: dict, dropped: set):
    """rebuild() for a MiT model: its backbone wired again with prunecli's blocks (each its own heads and
    units), the dropped blocks left out of their stages; every weight copied (a block's sliced), part by
    part (MIT_BLOCK_PARTS) in the order each part holds them (their sub-layers are named by Keras'
    counters, not by place)."""
    backbone = mit_backbone(model)
    stages = mit_stages(backbone)
    if all(id(b) in dropped for s in stages for b in s.blocks):
        raise InputError(f"{model.name}: removing every encoder block leaves no model")
    configs, cuts = [], {}
    for stage in stages:
        configs.append([])
        for block in stage.blocks:
            if id(block) in dropped:
                continue
            config, cut = _mit_block_config(block, heads.get(id(block)), units.get(id(block)))
            configs[-1].append(config)
            cuts.update(cut)
    config = {k: v for k, v in backbone.get_config().items() if k not in ("block_configs", "stage_norm_names", "dtype")}
    new_backbone = register()[MIT_BACKBONE](
        block_configs=configs,
        stage_norm_names=[s.norm.name for s in stages],
        dtype=backbone.dtype_policy,
        **config,
    )
    pairs = []
    for old, new in zip(stages, mit_stages(new_backbone), strict=True):
        kept = [b for b in old.blocks if id(b) not in dropped]
        pairs += [(old.embedding, new.embedding), (old.norm, new.norm)]
        for old_block, new_block in zip(kept, new.blocks, strict=True):
            parts = [getattr(old_block, name) for name in MIT_BLOCK_PARTS]
            if sum(len(p.weights) for p in parts) != len(old_block.weights):
                raise InputError(f"{old_block.name}: holds weights outside {', '.join(MIT_BLOCK_PARTS)}")
            pairs += [(part, getattr(new_block, name)) for part, name in zip(parts, MIT_BLOCK_PARTS, strict=True)]
    _copy_in_order(pairs, cuts)
    return _task_around(model, backbone, new_backbone)


# ---------------------------------------------------------------------------------------------------
# Swin: stages (each one layer of the backbone's graph holding its blocks and patch merging)


def swin_backbone(model):
    """The SwinTransformerBackbone the model is or its task holds (prunecli's rebuild of one too), or None."""
    for backbone in (model, getattr(model, "backbone", None)):
        if backbone is not None and keras_graph.is_model(backbone) and _hub_name(backbone) == SWIN_BACKBONE:
            return backbone
    return None


def swin_stages(backbone) -> list:
    """The backbone's SwinTransformerStage layers, in graph order."""
    return [layer for layer in keras_graph.children(backbone) if _hub_name(layer) == SWIN_STAGE]


def _swin_rebuild_blocker(backbone) -> str | None:
    import keras

    if SWIN_BLOCK not in register():
        return "keras-hub's Swin Transformer classes could not be imported"
    known = {"PatchEmbedding", SWIN_STAGE}
    for layer in keras_graph.children(backbone):
        plain = isinstance(layer, (keras.layers.InputLayer, keras.layers.Dropout, keras.layers.LayerNormalization))
        if not plain and _hub_name(layer) not in known:
            return f"{backbone.name}: its graph holds {layer.name!r} besides Swin's patch embedding, stages and norm"
    quantized = _quantized_layer(backbone)
    if quantized:
        return quantized
    for stage in swin_stages(backbone):
        for block in stage.blocks:
            if keras_graph.hub_ffn(block) is None:
                return f"{type(block).__name__} {block.name!r} is not laid out as KerasHub's Swin blocks are"
    return None


class _PrunedSwinBlock:
    """Mixed into Swin's SwinTransformerBlock: `mlp_units` feed-forward units (the block builds
    int(dim * mlp_ratio)), `num_heads` heads of `head_dim` channels each (the block derives dim //
    num_heads; prunecli's attention, _SwinAttention, keeps the size once heads were removed), and a config
    with every argument the stage passed it (KerasHub's leaves out qkv_bias, the dropout rates and
    drop_path)."""

    def __init__(self, *args, mlp_units=None, head_dim=None, **kwargs):
        super().__init__(*args, **kwargs)
        old = self.attn
        keras_graph.untrack(self, old)
        del self.attn
        self.attn = register()[SWIN_ATTENTION](
            dim=old.dim,
            num_heads=self.num_heads,
            head_dim=old.head_dim if head_dim is None else int(head_dim),
            window_size=old.window_size,
            qkv_bias=old.qkv_bias,
            attention_dropout=old.attn_drop_rate,
            proj_drop=old.proj_drop_rate,
            dtype=self.dtype_policy,
            name="attn",
        )
        self.mlp_units = int(self.mlp.hidden_features) if mlp_units is None else int(mlp_units)
        old = self.mlp
        keras_graph.untrack(self, old)
        del self.mlp
        self.mlp = type(old)(
            in_features=self.dim,
            hidden_features=self.mlp_units,
            act_layer=self.act_layer,
            dropout_rate=old.dropout_rate,
            dtype=self.dtype_policy,
            name="mlp",
        )

    def get_config(self):
        drop_path = float(getattr(self.drop_path, "drop_prob", 0.0))
        return {
            **decoders.hub_class(self).get_config(self),  # KerasHub's block or prunecli's
            "qkv_bias": bool(self.attn.qkv_bias),
            "dropout_rate": float(self.mlp.dropout_rate),
            "attention_dropout": float(self.attn.attn_drop_rate),
            "drop_path": drop_path,
            "mlp_units": int(self.mlp.hidden_features),
            "head_dim": int(self.attn.head_dim),
        }


class _SwinAttention:
    """Mixed into Swin's WindowAttention (which holds `head_dim`): its heads' output is num_heads * head_dim
    wide. KerasHub's reshapes it to the input's width, which fewer heads no longer fill; this one computes
    the same window attention (softmax(q k^T * scale + relative position bias + the shifted windows' mask)
    v, then the output projection) at the heads it holds."""

    def call(self, x, mask=None):
        from keras import ops

        tokens = x.shape[1]
        qkv = ops.reshape(self.qkv(x), (-1, tokens, 3, self.num_heads, self.head_dim))
        q, k, v = ops.unstack(ops.transpose(qkv, (2, 0, 3, 1, 4)), axis=0)
        scores = ops.matmul(q * ops.cast(self.scale, q.dtype), ops.transpose(k, (0, 1, 3, 2)))
        scores = scores + self._get_rel_pos_bias()
        if mask is not None:  # (windows, tokens, tokens), the same for every image
            windows = ops.shape(mask)[0]
            scores = ops.reshape(scores, (-1, windows, self.num_heads, tokens, tokens)) + mask[None, :, None]
            scores = ops.reshape(scores, (-1, self.num_heads, tokens, tokens))
        weights = self.attention_dropout_layer(ops.softmax(scores, axis=-1))
        heads = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (-1, tokens, self.attn_dim))
        return self.proj_drop(self.proj(heads))


class _PrunedSwinStage:
    """Mixed into Swin's SwinTransformerStage: its blocks made from `block_configs` (serialized blocks,
    each with its own units and shift) in place of `depth` identical ones (it may keep none), and a
    config that serializes (KerasHub's passes the PatchMerging class to serialize_keras_object, which
    fails: `patch_merging` says whether it merges)."""

    def __init__(self, *args, block_configs=(), patch_merging=False, **kwargs):
        import importlib

        import keras

        merging = importlib.import_module(SWIN_MODULE).PatchMerging
        kwargs.update(depth=0, downsample=merging if patch_merging else None)
        super().__init__(*args, **kwargs)
        self.block_configs = [dict(config) for config in block_configs]
        for config in self.block_configs:
            self.blocks.append(keras.layers.deserialize(config))
        self.depth = len(self.blocks)

    def build(self, input_shape):
        """Its blocks and patch merging built by tracing its call: the stage declares its output shape, so
        Keras, loading it built, never calls it symbolically (KerasHub's stage is always built by a call)."""
        import keras

        self.call(keras.KerasTensor(tuple(input_shape)))
        super().build(input_shape)

    def get_config(self):
        return _swin_stage_config(self)

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _swin_stage_config(stage, block_configs: list | None = None) -> dict:
    """prunecli's config of a Swin stage (KerasHub's or prunecli's) holding these serialized blocks (None:
    its own; [] none, a stage whose every block was removed)."""
    import keras

    blocks = [keras.layers.serialize(b) for b in stage.blocks] if block_configs is None else block_configs
    return {
        "name": stage.name,
        "trainable": stage.trainable,
        "dtype": keras.dtype_policies.serialize(stage.dtype_policy),
        "dim": int(stage.dim),
        "depth": len(blocks),
        "num_heads": max((int(b["config"]["num_heads"]) for b in blocks), default=int(stage.num_heads)),  # its largest
        "window_size": int(stage.window_size),
        "mlp_ratio": float(stage.mlp_ratio),
        "qkv_bias": bool(stage._qkv_bias),
        "dropout_rate": float(stage._dropout_rate),
        "attention_dropout": float(stage._attention_dropout),
        "drop_path": 0.0,  # each block carries its own
        "patch_merging": stage.downsample is not None,
        "input_resolution": list(stage.input_resolution),
        "block_configs": blocks,
    }


class _PrunedSwinBackbone:
    """Mixed into SwinTransformerBackbone: the graph its constructor wires (patch embedding, dropout, the
    stages, the final norm), its stages made from `stage_configs` (serialized prunecli stages)."""

    def __init__(self, stage_configs, image_shape, patch_size=4, embed_dim=96, patch_norm=True, **kwargs):
        import importlib

        import keras

        config = {k: kwargs.pop(k) for k in list(kwargs) if k in _SWIN_SETTINGS}
        dtype, data_format = kwargs.pop("dtype", None), config.get("data_format") or "channels_last"
        embedding_class = importlib.import_module(SWIN_MODULE).PatchEmbedding
        stages = [keras.layers.deserialize(c) if isinstance(c, dict) else c for c in stage_configs]
        inputs = keras.Input(shape=tuple(image_shape))
        embedding = embedding_class(
            patch_size=patch_size,
            embed_dim=embed_dim,
            norm_layer=keras.layers.LayerNormalization if patch_norm else None,
            data_format=data_format,
            dtype=dtype,
            name="patch_embedding",
        )
        x = keras.layers.Dropout(config.get("dropout_rate", 0.0), dtype=dtype, name="pos_drop")(embedding(inputs))
        for stage in stages:
            x = stage(x)
        norm = keras.layers.LayerNormalization(epsilon=1e-5, dtype=dtype, name="norm")
        super(decoders.hub_class(self), self).__init__(inputs=inputs, outputs=norm(x), dtype=dtype, **kwargs)
        self.patch_embedding, self.stages, self.norm = embedding, stages, norm
        self.image_shape, self.patch_size, self.embed_dim, self.patch_norm = (
            image_shape,
            patch_size,
            embed_dim,
            patch_norm,
        )
        for name in _SWIN_SETTINGS:
            setattr(self, name, config.get(name))
        self.data_format = data_format
        self.depths = [len(stage.blocks) for stage in stages]
        self.num_heads = [int(stage.num_heads) for stage in stages]

    def get_config(self):
        import keras

        config = decoders.hub_class(self).get_config(self)
        return {**config, "stage_configs": [keras.layers.serialize(s) for s in self.stages]}


# SwinTransformerBackbone's other arguments, kept in its config (the stages carry what they change)
_SWIN_SETTINGS = (
    "depths",
    "num_heads",
    "window_size",
    "mlp_ratio",
    "qkv_bias",
    "dropout_rate",
    "attention_dropout",
    "drop_path",
    "data_format",
)


def _swin_block_config(block, heads, units) -> tuple[dict, dict[int, tuple[int, list[int]]]]:
    """(serialized prunecli block keeping these heads and feed-forward units (None: all); the slices to
    take of the old block's weights: id(variable) -> (axis, entries kept))."""
    found = decoders.Ffn(block.name, block, *keras_graph.hub_ffn(block))
    return _pruned_block(block, found, _PrunedSwinBlock.get_config(block), SWIN_BLOCK, heads, units)


def _rebuilt_swin(model, heads: dict, units: dict, dropped: set):
    """rebuild() for a Swin model: each stage rebuilt as prunecli's with its kept blocks (each its own
    heads and units), the backbone wired again around them; weights copied by their path inside each stage (a
    block's sliced), the patch embedding's and final norm's as they are."""
    import keras
    import numpy as np

    backbone = swin_backbone(model)
    stages = swin_stages(backbone)
    if all(id(b) in dropped for s in stages for b in s.blocks):
        raise InputError(f"{model.name}: removing every encoder block leaves no model")
    classes, stage_configs, built = register(), [], []
    for stage in stages:
        blocks, cuts = [], {}
        for block in stage.blocks:
            if id(block) not in dropped:
                config, cut = _swin_block_config(block, heads.get(id(block)), units.get(id(block)))
                blocks.append(config)
                cuts.update(cut)
        new = classes[SWIN_STAGE].from_config(_swin_stage_config(stage, blocks))
        stage_configs.append(keras.layers.serialize(new))
        values = {}
        for var in stage.weights:
            owner = next((b for b in stage.blocks if str(var.path).startswith(f"{b.path}/")), None)
            if owner is not None and id(owner) in dropped:
                continue
            arr = np.asarray(var)
            if id(var) in cuts:
                axis, keep = cuts[id(var)]
                arr = np.take(arr, keep, axis=axis)
            values[decoders.inner_path(stage, var)] = arr
        built.append(values)
    config = {k: v for k, v in backbone.get_config().items() if k not in ("stage_configs", "dtype")}
    new_backbone = classes[SWIN_BACKBONE](stage_configs=stage_configs, dtype=backbone.dtype_policy, **config)
    decoders.assign_by_path(list(zip(swin_stages(new_backbone), built, strict=True)))
    for old, new in ((backbone.patch_embedding, new_backbone.patch_embedding), (backbone.norm, new_backbone.norm)):
        new.set_weights(old.get_weights())
    return _task_around(model, backbone, new_backbone)


# ---------------------------------------------------------------------------------------------------
# Multiply-adds of MiT's and Swin's parts, each at its own stage's token count (structure/flops.py's
# layer table; removal prices a unit or a head with the same terms)


def _kernel_macs(terms, nonzero: bool) -> int:
    """Sum of positions x the kernel's entries (or only its non-zero ones) over (positions, kernel) terms."""
    import numpy as np

    count = (lambda k: int(np.count_nonzero(np.asarray(k)))) if nonzero else (lambda k: int(np.prod(k.shape)))
    return sum(int(positions) * count(kernel) for positions, kernel in terms)


def _dense_and_nonzero(terms, products: int) -> tuple[int, int]:
    """(multiply-adds, those of non-zero weights): the kernels' terms plus the attention products, which
    hold no weight and are never sparse."""
    return _kernel_macs(terms, False) + products, _kernel_macs(terms, True) + products


def _mit_reduced_tokens(attn, tokens: int) -> int:
    """Keys and values of MiT's efficient attention come from the tokens its `sr` convolution (kernel and
    stride sr_ratio, no padding) leaves of the side x side grid: (side // r)^2; all tokens when r is 1."""
    import math

    ratio = int(attn.sr_ratio)
    return tokens if ratio <= 1 else (math.isqrt(tokens) // ratio) ** 2


def _mit_attention_terms(attn, tokens: int) -> tuple[list, int]:
    """(kernel terms, product multiply-adds) of MiT's attention heads over `tokens` tokens: q and the
    output projection over every token, k and v over the reduced tokens, then q k^T and the weights
    times v (tokens x reduced per channel of the heads). The sr convolution that reduces them is apart:
    it holds no head's weights."""
    reduced = _mit_reduced_tokens(attn, tokens)
    width = int(attn.q.kernel.shape[-1])  # heads x head size
    terms = [(tokens, attn.q.kernel), (reduced, attn.k.kernel), (reduced, attn.v.kernel), (tokens, attn.proj.kernel)]
    return terms, 2 * tokens * reduced * width


def mit_block_macs(layer, in_shapes, out_shapes) -> tuple[int | None, int | None]:
    """A MiT block over its input's (batch, tokens, channels): its attention (_mit_attention_terms, and the
    sr convolution at each reduced token) and MixFFN, fc1, the 3x3 depthwise convolution ('same',
    stride 1) and fc2 at every token."""
    shape = tuple(in_shapes[0]) if in_shapes else ()
    if len(shape) != 3 or shape[1] is None:
        return None, None
    tokens = int(shape[1])
    terms, products = _mit_attention_terms(layer.attn, tokens)
    if int(layer.attn.sr_ratio) > 1:
        terms.append((_mit_reduced_tokens(layer.attn, tokens), layer.attn.sr.kernel))
    mlp = layer.mlp
    terms += [(tokens, mlp.fc1.kernel), (tokens, mlp.dwconv.kernel), (tokens, mlp.fc2.kernel)]
    return _dense_and_nonzero(terms, products)


def _swin_window_terms(block) -> tuple[list, int]:
    """(kernel terms, product multiply-adds) of a Swin block's window attention: the grid padded to whole
    windows of window_size^2 tokens, qkv and the output projection at each padded token, and in each
    window q k^T and the weights times v (window_size^2 x window_size^2 per channel of the heads)."""
    height, width = (int(d) for d in block.input_resolution)
    window = int(block.window_size)
    padded = -(-height // window) * window * (-(-width // window) * window)
    attn = block.attn
    channels = int(attn.qkv.kernel.shape[-1]) // 3  # heads x head size
    return [(padded, attn.qkv.kernel), (padded, attn.proj.kernel)], 2 * padded * window * window * channels


def _swin_block_terms(block) -> tuple[list, int]:
    """(kernel terms, product multiply-adds) of a Swin block: its window attention and its Mlp at every token."""
    tokens = int(block.input_resolution[0]) * int(block.input_resolution[1])
    terms, products = _swin_window_terms(block)
    return terms + [(tokens, block.mlp.fc1.kernel), (tokens, block.mlp.fc2.kernel)], products


def swin_stage_macs(layer, in_shapes, out_shapes) -> tuple[int | None, int | None]:
    """A Swin stage at its fixed input resolution: each block's window attention (_swin_window_terms) and
    Mlp at every token, then patch merging's reduction at each token of the half-resolution grid."""
    height, width = (int(d) for d in layer.input_resolution)
    terms, products = [], 0
    for block in layer.blocks:
        block_terms, block_products = _swin_block_terms(block)
        terms += block_terms
        products += block_products
    if layer.downsample is not None:
        terms.append((((height + 1) // 2) * ((width + 1) // 2), layer.downsample.reduction.kernel))
    return _dense_and_nonzero(terms, products)


def conv_patch_embedding_macs(layer, in_shapes, out_shapes) -> tuple[int | None, int | None]:
    """MiT's overlapping and Swin's patch embeddings: their `proj` convolution once per output token (None
    for another library's layer of the same name without one)."""
    shape = tuple(out_shapes[0]) if out_shapes else ()
    if getattr(layer, "proj", None) is None or len(shape) < 3 or any(d is None for d in shape[1:-1]):
        return None, None
    tokens = 1
    for d in shape[1:-1]:
        tokens *= int(d)
    return _dense_and_nonzero([(tokens, layer.proj.kernel)], 0)


def block_tokens(model) -> dict[int, int]:
    """{id(block): the tokens it sees} for MiT's blocks (their input's length in the backbone's graph) and
    Swin's (their stage's resolution): what one of their units or heads is multiplied by."""
    mit = mit_backbone(model)
    if mit is not None:
        return {id(b): int(tuple(b.input.shape)[1]) for stage in mit_stages(mit) for b in stage.blocks}
    swin = swin_backbone(model)
    if swin is None:
        return {}
    return {id(b): int(b.input_resolution[0]) * int(b.input_resolution[1]) for s in swin_stages(swin) for b in s.blocks}


def block_macs(model) -> dict[int, int]:
    """{id(block): its multiply-adds per example} for MiT's and Swin's blocks at their stage's token count
    (what -g transformer saves by taking a whole block out)."""
    tokens = block_tokens(model)
    out = {}
    for block in blocks(model):
        if _hub_name(block) == SWIN_BLOCK:
            terms, products = _swin_block_terms(block)
            out[id(block)] = _kernel_macs(terms, False) + products
        else:
            shape = (None, tokens[id(block)], int(block.project_dim))
            out[id(block)] = mit_block_macs(block, [shape], [shape])[0]
    return out


def attention_macs(model) -> dict[int, int]:
    """{id(attention layer): the multiply-adds of its heads per example} for MiT's and Swin's blocks, each at
    its own stage's tokens (Swin's within its windows): every term grows with the heads (head size x the
    tokens it is multiplied by); MiT's spatial-reduction convolution, which reads every channel, is not one."""
    tokens = block_tokens(model)
    out = {}
    for block in blocks(model):
        if _hub_name(block) == SWIN_BLOCK:
            terms, products = _swin_window_terms(block)
        else:
            terms, products = _mit_attention_terms(block.attn, tokens[id(block)])
        out[id(block.attn)] = _kernel_macs(terms, False) + products
    return out


def head_macs(model) -> dict[int, int]:
    """{id(attention layer): the multiply-adds one of its heads costs} for MiT's and Swin's blocks."""
    heads = {id(block.attn): int(block.attn.num_heads) for block in blocks(model)}
    return {key: total // heads[key] for key, total in attention_macs(model).items()}


def register_layers() -> None:
    """Teach the layer table (structure/layers.py) the cost of MiT's blocks, Swin's stages and both
    families' patch embeddings, KerasHub's and prunecli's rebuilds alike."""
    from prunecli.structure import layers

    for name in (MIT_BLOCK, f"Pruned{MIT_BLOCK}"):
        layers.register(name, layers.LayerSpec("other", macs=mit_block_macs))
    for name in (SWIN_STAGE, f"Pruned{SWIN_STAGE}"):
        layers.register(name, layers.LayerSpec("other", macs=swin_stage_macs))
    for name in (MIT_EMBEDDING, "PatchEmbedding"):
        layers.register(name, layers.LayerSpec("other", macs=conv_patch_embedding_macs))


register_layers()
