"""`-g neuron` on KerasHub decoders (Llama, Mistral, Qwen, Qwen3, Gemma, GPT-2, OPT): feed-forward units
scored, chosen and removed whole.

A decoder block's feed-forward network is down(act(gate(x)) * up(x)) (SwiGLU; Gemma's GeGLU); its unit j
is gate column j, up column j and down row j, all inside one Keras layer. GPT-2's and OPT's
TransformerDecoder has no gate: down(act(up(x) + b)) (GeLU, ReLU), unit j being up column j, bias j and
down row j; it is the same network with the gate left out (structure/decoders.Ffn), and a unit whose
down row is zero adds nothing whatever its bias. So is the feed-forward network of KerasHub's ViT and DeiT
encoder blocks, all inside one encoder layer of the backbone (structure/vision_encoders.py, which rebuilds
the encoder; the task stays ViTImageClassifier or DeiTImageClassifier), of MiT's and Swin's blocks (its
backbone rebuilt), MiT's unit also a channel of the depthwise convolution between its two Dense layers. The channel graph sees the block as one node and the
mask path would rank the kernels as unrelated layers, so on a model with such blocks `-g neuron` is a
structural step, like `-g head` (Torch-Pruning's coupled group, done by hand):

- one score per unit, read from all its kernels' slices;
- one selection (selection/policy.select_units: per block, or global with the run's normalisation,
  thresholds, overrides and floors; a block always keeps one unit);
- the unit masked in all its kernels and biases (the masked model is the model that ships; fine-tuning
  holds the kernels' masks), and with --shrink every block rebuilt with its kept units only
  (structure/decoders.py), checked against the masked model before anything is saved.

Scores, lower = removed first:
- `magnitude`, `neuron-mean`, `l1-norm`: the geometric mean over gate (where there is one), up and down
  of the slice's mean |w|; `l2-norm`: the geometric mean of their L2 norms. A unit adds act(x.g_j) (x.u_j) d_j, a
  product: scaling the up or down projection by c scales every unit alike, which leaves a product of
  per-projection magnitudes ranked as before, where a sum would let the largest projection decide.
- `random`: seeded.
- `taylor`: sum |w * dL/dw|, `gradient`: sum |dL/dw| over the kernels' slices, accumulated over
  `--score-batches` batches of `--data` (as `-g head` scores heads);
- `activation`: the mean |act(x.g_j) (x.u_j)| (un-gated: |act(x.u_j + b_j)|) over the tokens of
  `--score-batches` batches of `--data` (the down projection's input, padding left out): Minitron's
  neuron importance.
"""

from __future__ import annotations

from typing import Any

from prunecli.config.target import parse_target
from prunecli.errors import ConfigError, InputError
from prunecli.removal import units
from prunecli.structure import decoders, equivalence, experts, keras_graph, transformer, vision_encoders

DATA_METHODS = ("taylor", "gradient")
MEAN_METHODS = ("magnitude", "neuron-mean", "l1-norm")
METHODS = MEAN_METHODS + ("l2-norm", "random", "activation") + DATA_METHODS


def applies(model) -> bool:
    """Whether `-g neuron` on this model is this step: it holds KerasHub decoder blocks, vision
    Transformer (ViT, DeiT, MiT, Swin) encoder blocks or KerasHub mixture-of-experts blocks."""
    return bool(_all_ffns(model))


def _all_ffns(model) -> list:
    """The feed-forward networks of the model's KerasHub decoder blocks, else of its ViT/DeiT encoder's,
    else the expert banks of its mixture-of-experts blocks (structure/experts.ExpertFfn)."""
    return decoders.ffns(model) or vision_encoders.ffns(model) or experts.ffns(model) or transformer.encoder_ffns(model)


def _variable(var):
    """The variable a slice reads: itself, or the stacked bank variable an expert's FlatView reads."""
    return getattr(var, "variable", var)


def find(model, targets=None) -> list[decoders.Ffn]:
    """The blocks' feed-forward networks whose kernels are all among `targets` (all without)."""
    found = _all_ffns(model)
    if targets is None:
        return found
    chosen = {id(t.variable) for t in targets}
    return [f for f in found if all(id(_variable(var)) in chosen for var, _axis in f.slices())]


# ---------------------------------------------------------------------------------------------------
# Scores


def data_scores(model, found: list[decoders.Ffn], data, loss_fn, method: str, max_batches: int | None):
    """{block: (units,) scores}: Taylor |w*g| or gradient |g| summed over each unit's kernel slices (three
    of a gated network, two of an un-gated one or of a plain Dense pair: removal/split._dense_ffns)."""
    import numpy as np

    if data is None or loss_fn is None:
        raise ConfigError(f"-g neuron on decoder blocks with --method {method} needs --data")
    slices = [sl for f in found for sl in f.slices()]
    per_slice = units.gradient_scores(model, slices, data, loss_fn, method, max_batches)
    out, start = {}, 0
    for f in found:
        count = len(f.slices())
        out[f.path] = np.sum(per_slice[start : start + count], axis=0)
        start += count
    return out


def score(model, found: list[decoders.Ffn], config, data=None, loss_fn=None) -> dict[str, Any]:
    """{block: (units,) scores} with the method the config names."""
    import numpy as np

    method = config.method
    if method not in METHODS:
        raise ConfigError(
            f"-g neuron on KerasHub decoder blocks scores with {', '.join(METHODS)}; got --method {method}"
        )
    banks = [f for f in found if isinstance(f, experts.ExpertFfn)]
    if banks and method not in MEAN_METHODS + ("l2-norm", "random"):
        raise ConfigError(
            f"-g neuron on {type(banks[0].bank).__name__} expert banks scores units by their weights "
            f"({', '.join(MEAN_METHODS)}, l2-norm, random); got --method {method}"
        )
    if method == "random":
        rng = np.random.default_rng(config.seed)
        return {f.path: rng.random(f.units) for f in found}
    if method == "activation":  # Minitron: each unit's mean |act(gate x) * up x| (|act(up x)|), the down input
        if data is None:
            raise ConfigError("-g neuron on decoder blocks with --method activation needs --data")
        means = units.mean_abs_inputs(model, [f.down for f in found], data, config.score_batches)
        return {f.path: mean for f, mean in zip(found, means, strict=True)}
    if method in DATA_METHODS:
        return data_scores(model, found, data, loss_fn, method, config.score_batches)
    return {f.path: units.weight_scores(f.slices(), method) for f in found}


# ---------------------------------------------------------------------------------------------------
# Masks


def unit_masks(found: list[decoders.Ffn], removed: dict[str, list[int]], names: dict[int, str]) -> dict[str, Any]:
    """{target name: boolean keep-mask of the kernel's shape}: a removed unit's gate and up columns and
    its down row are False (an expert bank's: its entries of each stacked kernel, structure/experts).
    `names` maps id(kernel) to its target name."""
    import numpy as np

    out = {}
    for f in found:
        gone = removed.get(f.path, [])
        for var, axis in f.slices():
            name = names.get(id(_variable(var)), str(var.path))
            if isinstance(var, experts.FlatView):  # a fused kernel holds two views: the gate's and the up's
                out[name] = out.get(name, True) & var.keep_mask(gone)
                continue
            mask = np.ones(tuple(int(d) for d in var.shape), dtype=bool)
            if gone:
                index: list[Any] = [slice(None)] * mask.ndim
                index[axis] = gone
                mask[tuple(index)] = False
            out[name] = mask
    return out


def apply(found: list[decoders.Ffn], removed: dict[str, list[int]]) -> None:
    """Zero the removed units' slices in place: gate and up columns, down rows, and their entries of the
    gate's and up's biases (a unit is pruned whole)."""
    for f in found:
        if removed.get(f.path):
            units.zero_units(f.all_slices(), removed[f.path])


# ---------------------------------------------------------------------------------------------------
# The step


def run_ffn(model, targets, config, *, data=None, loss_fn=None, sample_x=None, progress=None):
    """Score, choose and mask (or, with config.shrink, delete) feed-forward units of the decoder blocks.

    Returns (model, masks, section, notes) as removal.heads.run_heads does: the same model masked, or a
    new, smaller functional model (--shrink); {target name: keep-mask} for every target; the report's
    `ffn` section; notes."""
    import numpy as np

    if config.schedule != "oneshot":  # a gradual schedule re-masks through the per-kernel mask path
        raise ConfigError("-g neuron on KerasHub decoder blocks removes units at once: use --schedule oneshot")
    say = progress or (lambda _m: None)
    notes: list[str] = []
    targets = list(targets or [])
    found = find(model, targets or None)
    if not found:
        raise InputError(f"{config.model_path or 'model'}: no decoder feed-forward network to prune")
    closed = _closed_encoder(model, found)
    if config.target and closed:  # masked units leave every parameter in place: the target cannot be met
        raise InputError(
            f"--target {config.target}: the feed-forward units of {closed} can be masked, not deleted (it sits inside"
            " a backbone prunecli does not open into the model's graph), so no parameter would go"
        )
    say(f"scoring the feed-forward units of {len(found)} KerasHub block(s) with {config.method}")
    scores = score(model, found, config, data, loss_fn)
    sparsity, fitted, target = None, None, None
    if config.target:  # the units that meet params=F or flops=F (in score order, completed by cost)
        what = "the feed-forward units of KerasHub Transformer blocks"
        flops = parse_target(config.target).kind == "flops"  # every position multiplies each kernel weight once
        if flops and vision_encoders.stage_lengths(model):  # MiT, Swin: each block at its stage's token count
            dense = units.counted_as_built(model, config)
            tokens = vision_encoders.block_tokens(model)
            cost = {f.path: tokens[id(f.block)] * units.unit_params(f.slices()) for f in found}
        elif flops:
            per_weight, dense = units.counted_at_length(model, config, what, vision_encoders.sequence_length(model))
            cost = {f.path: per_weight * units.unit_params(f.slices()) for f in found}
        else:  # parameters: the unit's biases too
            dense = int(model.count_params())
            cost = {f.path: units.unit_params(f.all_slices()) for f in found}

        banks = isinstance(found[0], experts.ExpertFfn)  # every expert loses as many: not completed unit by unit
        sparsity, fitted, target = units.fit_target(
            config,
            dense,
            lambda s: _selected(found, scores, config, [], s),
            cost,
            None if banks else scores,
            what,
            ("params", "flops"),
        )
    chosen = _selected(found, scores, config, notes, sparsity)  # with the floors' notes
    removed = chosen if fitted is None else fitted
    apply(found, removed)
    names = {id(t.variable): t.name for t in targets}
    masks = unit_masks(found, removed, names)
    ours = set(masks)
    others = sorted({t.layer_name for t in targets if t.name not in ours})
    if others:
        notes.append(
            "-g neuron on KerasHub Transformer blocks prunes their feed-forward units only; "
            f"{', '.join(others[:8])}{' ...' if len(others) > 8 else ''} left whole"
        )
    kernel_masks = {t.name: masks.get(t.name, np.ones(t.shape, dtype=bool)) for t in targets}
    section = _section(found, scores, removed, config.method)
    if target is not None:
        section["target"] = target
    if not config.shrink:
        return model, kernel_masks, section, notes
    if isinstance(found[0], experts.ExpertFfn):
        say("rebuilding the model with fewer units in every expert")
        kept = {f.path: [u for u in range(f.units) if u not in set(removed[f.path])] for f in found}
        return _shrunk(model, experts.rebuild(model, kept), targets, section, sample_x, config.seed, notes)
    vision = bool(vision_encoders.blocks(model))
    if not vision and not decoders.blocks(model):  # KerasHub TransformerEncoder blocks (BERT...)
        return _shrunk_encoders(
            model, found, removed, (targets, kernel_masks), section, sample_x, config.seed, notes, say
        )
    blocker = vision_encoders.rebuild_blocker(model) if vision else None
    blocked = [f for f in found if decoders.shrink_blocker(f.block)] if not vision else []
    if blocked or blocker:  # every block is rebuilt, or none is
        why = blocker or f"{blocked[0].path}: {decoders.shrink_blocker(blocked[0].block)}"
        notes.append(f"feed-forward units masked, not deleted: {why}")
        return model, kernel_masks, section, notes
    say("rebuilding the blocks with fewer feed-forward units")
    kept = {id(f.block): [u for u in range(f.units) if u not in set(removed[f.path])] for f in found}
    if vision:
        new = vision_encoders.rebuild(model, units=kept)
    else:
        new = decoders.rebuild_with(model, decoders.swaps_for(model, units=kept))
    return _shrunk(model, new, targets, section, sample_x, config.seed, notes)


def _shrunk_encoders(model, found: list, removed: dict, masked, section: dict, sample_x, seed, notes: list, say):
    """run_ffn's result with the KerasHub TransformerEncoder blocks rebuilt with their kept units, where they
    are layers of the model's own graph (a task is opened into one graph first, run/steps.open_nested);
    else the units stay masked, as a note says. `masked`: (the run's targets, their keep-masks)."""
    targets, kernel_masks = masked
    closed = _closed_encoder(model, found)
    if closed:
        notes.append(
            f"feed-forward units masked, not deleted: {closed} sits inside a backbone that was not opened"
            " into the model's graph"
        )
        return model, kernel_masks, section, notes
    say("rebuilding the encoder blocks with fewer feed-forward units")
    swaps = []
    for f in found:
        kept = [u for u in range(f.units) if u not in set(removed[f.path])]
        swaps.append((f.block, *transformer.smaller_encoder(f.block, kept)))
    return _shrunk(model, decoders.rebuild_with(model, swaps), targets, section, sample_x, seed, notes)


def _closed_encoder(model, found: list) -> str | None:
    """The path of the first KerasHub TransformerEncoder block among `found` that is not a layer of the model's
    own graph (a backbone run/steps.open_nested did not open: one holding layers rebuild.graph_only does not
    know, or a run whose --include/--exclude leave the backbone's weights out), whose units can be masked only;
    None for decoder and vision blocks, which are rebuilt. DeBERTaV3's blocks are opened since its
    relative-position table is (rebuild._built_class)."""
    if not found or isinstance(found[0], experts.ExpertFfn) or decoders.blocks(model) or vision_encoders.blocks(model):
        return None  # expert banks, decoder and vision blocks: rebuilt by their own paths
    own = {id(layer) for layer in keras_graph.children(model)}
    return next((f.path for f in found if id(f.block) not in own), None)


def _selected(found: list, scores: dict, config, notes: list, sparsity: float | None) -> dict[str, list[int]]:
    """The run's selection of units to remove (policy.select_units), as many in every expert where the
    networks are expert banks (experts.even)."""
    from prunecli.selection import policy

    removed = policy.select_units(scores, config, notes, at_least=1, sparsity=sparsity)
    return experts.even(found, removed, scores) if isinstance(found[0], experts.ExpertFfn) else removed


def _shrunk(model, new, targets, section: dict, sample_x, seed, notes: list):
    """run_ffn's result for `new`, the model rebuilt without the removed units: checked to compute what the
    masked `model` computes (before anything is saved), its section rows marked deleted, every new target
    kept whole (the units are gone, nothing is left to mask)."""
    import numpy as np

    from prunecli.structure import targets as targets_mod

    inputs = equivalence.example_inputs(model, 16, sample_x, seed, open_dim=8)
    section["verification"] = equivalence.check_equivalent(
        model, new, inputs, "the model with feed-forward units removed"
    )
    for row in section["layers"]:
        row["deleted"] = True
    new_targets = targets_mod.carry_over(targets, new)
    kernel_masks = {t.name: np.ones(t.shape, dtype=bool) for t in new_targets}
    section["params_before"] = int(model.count_params())
    section["params_after"] = int(new.count_params())
    return new, kernel_masks, section, notes


def _section(found: list[decoders.Ffn], scores: dict, removed: dict, method: str) -> dict[str, Any]:
    layers = [
        {
            "layer": f.path,
            "class": type(f.block).__name__,
            "units_before": f.units,
            "units_after": f.units - len(removed[f.path]),
            "removed_units": list(removed[f.path]),
            "deleted": False,
        }
        for f in found
    ]
    return {
        "score": method,
        "units_before": sum(f.units for f in found),
        "units_removed": sum(len(removed[f.path]) for f in found),
        "layers": layers,
    }


# the step in the run's StepResult form (like removal.heads.run): the `ffn` section, a MaskSet over the
# (new) model's targets held while fine-tuning, and the new model after --shrink
run = units.step_result(run_ffn, "ffn", "feed-forward unit scoring", DATA_METHODS)
