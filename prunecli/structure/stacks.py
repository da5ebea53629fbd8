"""KerasHub backbones made of `num_layers` blocks of one class that prunecli does not rebuild block by
block (RWKV7's, the mixture-of-experts decoders': Mixtral, Qwen-MoE, Qwen3-MoE, GPT-OSS): whole blocks
are removed by building the model again from its own config with fewer layers and giving the kept blocks
their weights, in order.

Why from the config: such a backbone builds its blocks in its constructor from `num_layers` and wires
them itself (RWKV7's blocks pass a second stream, `v_first`, from the first block to every other; a
decoder's blocks share the padding mask and the cache), so a functional copy with a block left out could
not be built again when the file is loaded (a real RWKV7 file written that way did not load). A backbone
of fewer layers is one KerasHub itself builds and saves: the file loads as the user's class.

Which blocks can go: the block at position p of the shorter model is built as the backbone builds
position p, so removing block i moves every later block one place up, and each must be configured as the
one whose place it takes (RWKV7's first block alone has `use_initial_norm`: it stays). After the rebuild,
every kept block's config is compared with the new block's at its place; any difference is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunecli.errors import InputError
from prunecli.structure import keras_graph

LAYER_COUNT = "num_layers"  # the backbone config's argument for its number of blocks


@dataclass(frozen=True)
class Stack:
    """The backbone whose blocks are the stack, and the blocks in the order it calls them."""

    backbone: Any
    blocks: tuple


def _hub_backbone(model):
    """The KerasHub backbone the model is, or holds as its task's `backbone`; None otherwise."""
    for candidate in (model, getattr(model, "backbone", None)):
        if candidate is None:
            continue
        if any(
            cls.__name__ == "Backbone" and cls.__module__.startswith("keras_hub") for cls in type(candidate).__mro__
        ):
            return candidate
    return None


def _config(layer) -> dict | None:
    """The layer's config without its name (what places the block in its stack), or None when it has none."""
    try:
        config = dict(layer.get_config())
    except Exception:  # noqa: BLE001 - KerasHub's get_config of some blocks is broken: such a stack is not rebuilt
        return None
    config.pop("name", None)
    return config


def find(model, known=lambda _layer: False) -> Stack | None:
    """The model's stack of blocks, or None: its backbone's config says `num_layers` = N >= 2, exactly one
    layer class has N instances among the backbone's layers, each with weights, a config, and called
    once, and no layer is quantized (`blocker`). `known(layer)`: blocks prunecli rebuilds on another path
    (decoders, Transformer encoders)."""
    stack = _any_stack(model, known)
    return None if stack is None or _quantized(stack) else stack


def blocker(model, known=lambda _layer: False) -> str | None:
    """Why the model's stack of blocks cannot be rebuilt shorter, or None (no stack, or one that can):
    a backbone quantized by Keras records each quantized layer's policy under its path, blocks named
    by place, so a shorter rebuild would give the kept blocks other layers' policies (a Mixtral quantized
    to int8 ended in an internal error)."""
    stack = _any_stack(model, known)
    if stack is None or not _quantized(stack):
        return None
    return f"{stack.backbone.name} is quantized by Keras ({_quantized(stack)}): its blocks are not rebuilt"


def _quantized(stack: Stack) -> str | None:
    from prunecli.structure.layers import quantization_mode

    for layer in keras_graph.all_layers(stack.backbone):
        mode = quantization_mode(layer)
        if mode is not None:
            return f"{layer.name}: {mode}"
    return None


def _any_stack(model, known) -> Stack | None:
    backbone = _hub_backbone(model)
    if backbone is None:
        return None
    count = backbone.get_config().get(LAYER_COUNT)
    if not isinstance(count, int) or count < 2:
        return None
    by_class: dict[type, int] = {}
    for layer in keras_graph.children(backbone):
        if layer.weights:
            by_class[type(layer)] = by_class.get(type(layer), 0) + 1
    classes = [cls for cls, n in by_class.items() if n == count]
    if len(classes) != 1:
        return None
    stack = _stack_of(backbone, classes[0])
    return None if stack is None or known(stack.blocks[0]) else stack


def holding(model, contains) -> Stack | None:
    """The stack of the model's KerasHub backbone made of the class of its first block for which
    `contains(block)` (a block holding an expert bank: structure/experts; one block is a stack too), or
    None."""
    backbone = _hub_backbone(model)
    if backbone is None:
        return None
    first = next((layer for layer in keras_graph.children(backbone) if contains(layer)), None)
    return None if first is None else _stack_of(backbone, type(first))


def _stack_of(backbone, cls) -> Stack | None:
    """The backbone's layers of class `cls` in the order its graph calls them, or None when one is called
    more than once or has no config."""
    blocks = [layer for layer in keras_graph.children(backbone) if type(layer) is cls]
    calls = [id(node.operation) for node in keras_graph.nodes(backbone)]
    if any(calls.count(id(b)) != 1 or _config(b) is None for b in blocks):
        return None
    return Stack(backbone, tuple(sorted(blocks, key=lambda b: calls.index(id(b)))))


def fixed_reason(stack: Stack, block) -> str | None:
    """Why the block cannot be removed (a later block configured unlike the one whose place it would
    take), or None when it can."""
    configs = [_config(b) for b in stack.blocks]
    i = stack.blocks.index(block)
    for j in range(i + 1, len(configs)):
        if configs[j] != configs[j - 1]:
            differs = sorted(
                k for k in configs[j].keys() | configs[j - 1].keys() if configs[j].get(k) != configs[j - 1].get(k)
            )
            return (
                f"{stack.blocks[j].name} cannot take {stack.blocks[j - 1].name}'s place "
                f"(configured unlike it: {', '.join(differs)})"
            )
    return None


def without(model, removed: set[str]) -> tuple[Any, dict[str, str]]:
    """The model built again from its config with the blocks named in `removed` left out, the kept
    blocks given their weights in order and every other layer its own (the user's classes, task and
    backbone, with layers of their own), and the kept blocks' new names by old name (the backbone names
    its blocks by place). InputError when a kept block would be configured unlike its new place."""
    stack = find(model)
    if stack is None:
        raise InputError(f"{model.name}: its blocks are not one KerasHub stack prunecli can rebuild")
    kept = [b for b in stack.blocks if b.name not in removed]
    if not kept:
        raise InputError(f"{model.name}: removing every one of its {len(stack.blocks)} blocks would leave no model")
    smaller, new_stack = rebuilt(model, stack, {LAYER_COUNT: len(kept)})
    if len(new_stack.blocks) != len(kept):
        raise InputError(f"{model.name}: rebuilt with {len(kept)} blocks, its stack is not {len(kept)} blocks long")
    for old, new in zip(kept, new_stack.blocks, strict=True):
        if _config(old) != _config(new):
            raise InputError(f"{old.name} is configured unlike the block at its new place ({new.name}): not removed")
        keras_graph.copy_weights(old, new)
    copy_the_rest(stack, new_stack, model, smaller)
    return smaller, {
        old.name: new.name for old, new in zip(kept, new_stack.blocks, strict=True) if old.name != new.name
    }


def rebuilt(model, stack: Stack, changes: dict) -> tuple[Any, Stack]:
    """The model (the user's task and backbone classes) built again from its config with these changes
    to its backbone's config, not given weights yet, and its stack. `copy_the_rest` gives every layer
    outside the stack its weights; the blocks' are the caller's (fewer of them here, smaller experts in
    structure/experts)."""
    backbone = type(stack.backbone).from_config({**stack.backbone.get_config(), **changes})
    if model is stack.backbone:
        smaller = backbone
    else:
        task_config = {**model.get_config(), "backbone": backbone, "preprocessor": getattr(model, "preprocessor", None)}
        smaller = type(model).from_config(task_config)
    new_stack = _stack_of(_hub_backbone(smaller), type(stack.blocks[0]))
    if new_stack is None:
        raise InputError(f"{model.name}: rebuilt from its config, its blocks are not one stack")
    return smaller, new_stack


def copy_the_rest(stack: Stack, new_stack: Stack, model, smaller) -> None:
    """Every layer with weights outside the stack (embeddings, norms, heads: the backbone's and the task's
    own) given its weights by name."""
    old_blocks, new_blocks = {id(b) for b in stack.blocks}, {id(b) for b in new_stack.blocks}
    old = {
        layer.name: layer
        for owner in (model, stack.backbone)
        for layer in keras_graph.children(owner)
        if layer.weights and id(layer) not in old_blocks and layer is not stack.backbone
    }
    for owner in (smaller, new_stack.backbone):
        for layer in keras_graph.children(owner):
            if not layer.weights or id(layer) in new_blocks or layer is new_stack.backbone:
                continue
            source = old.get(layer.name)
            if source is None or type(source) is not type(layer):
                raise InputError(
                    f"{model.name}: {layer.name} of the rebuilt model has no counterpart to take weights from"
                )
            keras_graph.copy_weights(source, layer)
