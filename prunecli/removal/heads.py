"""Attention-head pruning: score each head of every attention layer and remove whole heads.

A head of `keras.layers.MultiHeadAttention` owns one slice of four kernels: query, key and value
(shape (d_model, heads, head_dim), the head on axis 1), their biases ((heads, head_dim), axis 0) and
the output projection ((heads, head_dim, d_model), axis 0). The layer's output is the sum over heads
of each head's attention result times its output slice, plus the output bias, so a head whose output
slice is zero contributes exactly nothing: masking the head (all four slices, biases included) and
deleting it (MultiHeadAttention(num_heads=kept) with the slices cut out) compute the same function.
Michel et al. 2019 ("Are Sixteen Heads Really Better than One?") and Voita et al. 2019 showed that
most heads of a trained Transformer can go this way at little cost.

Grouped-query attention (KerasHub's Llama, Qwen, Mistral, Gemma... layers with `num_query_heads` and
`num_key_value_heads`) shares one key/value head between G = query/kv query heads. The unit removed
there is a whole group: its key/value head and its G query heads, so the ratio stays whole. Under
multi-query attention (one key/value head, as Gemma 2B has) the unit is a query head: removing its
query and output slices leaves the shared key/value head serving the others, and that head stays
(structure/transformer.HeadLayer).

Scores, one per unit (head or group), lower = removed first: `magnitude`, `neuron-mean`, `l1-norm`:
mean |w| over the unit's slices; `l2-norm`: their L2 norm; `random`: seeded; `taylor`: sum |w * dL/dw|
and `gradient`: sum |dL/dw| over the slices, accumulated over `--score-batches` batches of `--data`
(Molchanov et al. 2019, applied to heads as in Michel et al.'s head-importance score); `activation`: the
mean |output| of each head over --data (Minitron). With --data and no --method, `measured`: the heads
magnitude and activation each choose are masked in turn and the choice that moves the outputs least
is kept (`_measured`: neither score won on every decoder of bench/TRANSFORMER.md).

`--shrink` rebuilds keras.layers.MultiHeadAttention layers of a functional model with fewer heads,
KerasHub's TransformerEncoder blocks (BERT, RoBERTa, DistilBERT... backbones) as
HeadPrunedTransformerEncoder (structure/transformer.py), and KerasHub's Llama/Mistral/Qwen/Gemma
decoder blocks, GPT-2's and OPT's TransformerDecoder blocks and GPT-NeoX's, Falcon's and Bloom's blocks
as PrunedLlamaTransformerDecoder..., PrunedTransformerDecoder, PrunedGPTNeoXDecoder...
(structure/decoders.py) with their units' heads gone (GPT-NeoX's head h is entry h of its fused q/k/v
kernel's head axis, its q, k and v side by side): KerasHub computes the
head size as hidden_dim // num_heads when a block builds, which a config with fewer heads would
change, so the rebuilt blocks carry the original head size in their config; so do ViT's and DeiT's encoder
blocks, rebuilt inside a new encoder, and MiT's and Swin's blocks, rebuilt inside a new backbone with
an attention layer of prunecli's that keeps the head size (MiT's SegFormer attention: head h is columns
h*d..(h+1)*d of its q, k and v Dense layers and those rows of its output Dense, its spatial-reduction
convolution acting before k and v on every channel, no head's; Swin's window attention: entry h of each
of the q, k and v runs of its one qkv Dense, those rows of its output, and column h of its relative
position bias table) (structure/vision_encoders.py). Attention layers nested
anywhere else are masked (exactly zero, held while fine-tuning), not deleted, and the notes say so.
The shrunk model is a plain functional keras.Model (a KerasHub causal LM stays one, its generate()
working: structure/decoders.py).
"""

from __future__ import annotations

from typing import Any

from prunecli.config import MEASURED, name_matches
from prunecli.config.target import parse_target
from prunecli.errors import ConfigError, InputError
from prunecli.removal import units
from prunecli.structure import decoders, equivalence, keras_graph, vision_encoders
from prunecli.structure.transformer import (  # noqa: F401 - find/HeadLayer/block_macs are this module's API too
    HeadLayer,
    Part,
    _attention_cost,
    block_macs,
    find,
    find_in_layer,
    unit_attention_cost,
    unread_attention,
)

DATA_METHODS = ("taylor", "gradient")
MEAN_METHODS = ("magnitude", "neuron-mean", "l1-norm")
METHODS = MEAN_METHODS + ("l2-norm", "random", "activation") + DATA_METHODS
MEASURED_SCORES = ("magnitude", "activation")  # what --method measured tries, the first kept on a tie


def allowed_by_rules(path: str, config) -> bool:
    """Whether --include/--exclude and the per-layer rules leave this layer's units to the step."""
    if config.include and not name_matches(path, config.include):
        return False
    if config.exclude and name_matches(path, config.exclude):
        return False
    return not config.rule_for(path).skip


# ---------------------------------------------------------------------------------------------------
# Scores


def _unit_sums(hl: HeadLayer, arrays: list, fn) -> Any:
    """Per unit: (sum of fn(slice), element count) over all parts."""
    import numpy as np

    totals = np.zeros(hl.units)
    counts = np.zeros(hl.units)
    for part, arr in zip(hl.unit_parts, arrays, strict=True):
        moved = np.moveaxis(np.asarray(arr, dtype=np.float64), part.axis, 0)
        heads = moved.shape[0] // (part.width * part.blocks)  # a flattened head is `width` consecutive entries
        per_head = fn(moved.reshape(part.blocks, heads, -1)).sum(axis=(0, 2))  # ... in each of `blocks` runs
        size = moved.size // heads
        if part.role == "q":
            per_head = per_head.reshape(hl.units, hl.group).sum(axis=1)
            size *= hl.group
        totals += per_head
        counts += size
    return totals, counts


def weight_scores(hl: HeadLayer, method: str):
    """(units,) scores from the weights alone."""
    import numpy as np

    arrays = [np.asarray(p.variable) for p in hl.unit_parts]
    if method == "l2-norm":
        sq, _ = _unit_sums(hl, arrays, np.square)
        return np.sqrt(sq)
    total, count = _unit_sums(hl, arrays, np.abs)
    return total / np.maximum(count, 1)


def data_scores(model, layers: list[HeadLayer], data, loss_fn, method: str, max_batches: int | None):
    """{path: (units,) scores}: Taylor |w*g| or gradient |g| summed over each unit's slices."""
    if data is None or loss_fn is None:
        raise ConfigError(f"-g head with --method {method} needs --data")
    slices = [(p.variable, p.axis) for hl in layers for p in hl.unit_parts]
    per_slice = units.gradient_scores(model, slices, data, loss_fn, method, max_batches)
    out, i = {}, 0
    for hl in layers:
        total = 0.0
        parts = hl.unit_parts
        for part, per_index in zip(parts, per_slice[i : i + len(parts)], strict=True):
            per_index = per_index.reshape(part.blocks, -1, part.width).sum(axis=(0, 2))  # per head
            total = total + (per_index.reshape(hl.units, hl.group).sum(axis=1) if part.role == "q" else per_index)
        out[hl.path] = total
        i += len(parts)
    return out


def activation_scores(model, layers: list[HeadLayer], data, max_batches: int | None) -> dict[str, Any]:
    """{path: (units,) scores}: the mean |output| of each query head (the output projection's input,
    per head), summed over a key/value group's query heads: Minitron's head importance."""
    if data is None:
        raise ConfigError("-g head with --method activation needs --data")
    out = {}
    # the output projection's input is (..., heads, head_dim), or (..., heads * head_dim) where its kernel
    # holds the heads flattened (GPT-NeoX): each head's mean is then over its `width` entries
    for flat in (False, True):
        chosen = [hl for hl in layers if (_output_part(hl).width > 1) == flat]
        if not chosen:
            continue
        outputs = [keras_graph.attention_projections(hl.layer)[-1][0] for hl in chosen]
        means = units.mean_abs_inputs(model, outputs, data, max_batches, unit_axis=-1 if flat else -2)
        for hl, m in zip(chosen, means, strict=True):
            per_head = m.reshape(hl.num_heads, -1).mean(axis=1)
            out[hl.path] = per_head.reshape(hl.units, hl.group).sum(axis=1)
    return out


def _output_part(hl: HeadLayer) -> Part:
    return next(p for p in hl.parts if p.projection == "output")


def score(model, layers: list[HeadLayer], config, data=None, loss_fn=None) -> dict[str, Any]:
    """{layer path: (units,) scores} with the method the config names."""
    import numpy as np

    method = config.method
    if method not in METHODS:
        raise ConfigError(f"-g head scores with {', '.join(METHODS)}; got --method {method}")
    if method == "random":
        rng = np.random.default_rng(config.seed)
        return {hl.path: rng.random(hl.units) for hl in layers}
    if method == "activation":
        return activation_scores(model, layers, data, config.score_batches)
    if method in DATA_METHODS:
        return data_scores(model, layers, data, loss_fn, method, config.score_batches)
    return {hl.path: weight_scores(hl, method) for hl in layers}


# ---------------------------------------------------------------------------------------------------
# Choosing heads


def _target_costs(model, found: list[HeadLayer], config) -> tuple[int, dict[str, int]]:
    """(the dense model's count, {layer path: what one of its units costs}) for --target: parameters,
    or for flops= the multiply-adds per example at --seq-len (or the model's fixed length), counted as
    the report counts them (structure/flops.py); a unit's share is exact, every term of an attention
    layer's cost growing with its heads. MiT's and Swin's heads are priced at their own stage's token
    count (vision_encoders.head_macs), the model counted at its image size."""
    if parse_target(config.target).kind != "flops":
        return int(model.count_params()), {hl.path: unit_params(hl) for hl in found}
    if vision_encoders.stage_lengths(model):  # MiT, Swin: each head at its stage's token count (and windows)
        per_head = vision_encoders.head_macs(model)
        return units.counted_as_built(model, config), {hl.path: per_head[id(hl.layer)] * hl.group for hl in found}
    seq_len, dense = units.counted_at_length(model, config, "attention heads", model_seq_len(model))
    return dense, {hl.path: unit_attention_cost(hl, seq_len) for hl in found}


def unit_params(hl: HeadLayer) -> int:
    """Parameters one unit (a head, or a key/value group with its query heads) holds in its layer:
    its slices of the query, key, value and output kernels and biases."""
    _, counts = _unit_sums(hl, [p.variable for p in hl.unit_parts], lambda a: a)
    return int(counts[0]) if len(counts) else 0


def choose(
    layers: list[HeadLayer], scores: dict, config, notes: list, sparsity: float | None = None
) -> dict[str, list[int]]:
    """{layer path: sorted removed units}, from the one selection path (selection/policy.select_units):
    per layer (--scope layer) or ranked over all layers with the run's --normalize (LAMP by default),
    thresholds, overrides and floors as for weights. A layer always keeps one unit (a layer with no
    head left would be a constant; remove the whole block with -g layer instead).

    --remove-heads N is a count of heads: per layer, N // G units of a layer whose unit is a key/value
    group of G query heads; with --scope global, the share N / all heads of every layer's units (the
    same N when all layers share one group size, as the KerasHub decoders do). `sparsity` (--target's
    bisection) replaces the run's --sparsity."""
    from prunecli.selection import policy

    by_path = {hl.path: scores[hl.path] for hl in layers}
    if config.remove_heads is None or config.threshold is not None:
        return policy.select_units(by_path, config, notes, at_least=1, sparsity=sparsity)
    if config.scope == "global":
        share = min(1.0, config.remove_heads / max(1, sum(hl.num_heads for hl in layers)))
        return policy.select_units(by_path, config, notes, at_least=1, sparsity=share)
    removed: dict[str, list[int]] = {}
    for hl in layers:
        units = config.remove_heads // hl.group if hl.group > 1 else config.remove_heads
        share = min(1.0, units / max(1, hl.units))
        removed.update(policy.select_units({hl.path: by_path[hl.path]}, config, notes, at_least=1, sparsity=share))
    return removed


# ---------------------------------------------------------------------------------------------------
# Masks and surgery


def head_masks(layers: list[HeadLayer], removed: dict[str, list[int]]) -> dict[str, Any]:
    """{part name: boolean keep-mask of the weight's shape} for every q/k/v/o kernel and q/k/v bias."""
    import numpy as np

    out = {}
    for hl in layers:
        gone = removed.get(hl.path, [])
        for part in hl.parts:
            mask = np.ones(tuple(int(d) for d in part.variable.shape), dtype=bool)
            idx = hl.slice_index(part, gone)
            if idx:
                index = [slice(None)] * mask.ndim
                index[part.axis] = idx
                mask[tuple(index)] = False
            out[part.name] = mask
    return out


def apply(masks: dict[str, Any], layers: list[HeadLayer]) -> None:
    """Zero the masked slices in place."""
    import numpy as np

    for hl in layers:
        for part in hl.parts:
            m = masks.get(part.name)
            if m is not None:
                part.variable.assign(np.where(m, np.asarray(part.variable), 0).astype(part.variable.dtype))


def smaller_layer(hl: HeadLayer, removed_units: list[int]):
    """The replacement of hl.owner with only the kept heads, and its weights by variable path
    (assigned once the rebuilt graph has built it). A plain MultiHeadAttention is rebuilt from its
    config with num_heads = kept; a KerasHub TransformerEncoder becomes HeadPrunedTransformerEncoder, a
    KerasHub decoder block prunecli's decoder block (structure/decoders.py)."""
    import numpy as np

    from prunecli.structure import transformer

    owner = hl.owner
    kept_units = [u for u in range(hl.units) if u not in set(removed_units)]
    if decoders.is_decoder(owner):  # grouped-query attention: whole groups, the head size kept
        return decoders.smaller(owner, *hl.kept_heads(kept_units))
    config = owner.get_config()
    config["num_heads"] = len(hl.heads_of(kept_units))
    if owner is hl.layer:
        new = type(owner).from_config(config)
    else:
        config["key_dim"] = keras_graph.attention_key_dim(hl.layer)
        new = transformer.register_hub_layers()["TransformerEncoder"].from_config(config)
    by_id = {id(p.variable): p for p in hl.parts}
    values = {}
    for v in owner.weights:
        arr = np.asarray(v)
        part = by_id.get(id(v))
        if part is not None:
            arr = np.take(arr, hl.slice_index(part, kept_units), axis=part.axis)
        values[str(v.path)] = arr
    return new, values


def shrink(model, layers: list[HeadLayer], removed: dict[str, list[int]]):
    """A new functional model whose attention layers have only their kept heads.
    Layers with a shrink_blocker (and layers with nothing removed) are left as they are, except
    KerasHub decoder blocks: once one is rebuilt, all are (as prunecli's blocks, so the model saves); a
    ViT's or DeiT's encoder, a MiT's or Swin's backbone is rebuilt whole (structure/vision_encoders.py),
    the user's task around it."""
    if vision_encoders.blocks(model):
        rebuilt = [hl for hl in layers if hl.shrink_blocker is None and vision_encoders.is_block(hl.owner)]
        if not any(removed.get(hl.path) for hl in rebuilt):
            return model
        kept = {id(hl.owner): hl.heads_of([u for u in range(hl.units) if u not in removed[hl.path]]) for hl in rebuilt}
        return vision_encoders.rebuild(model, heads=kept)
    swaps = []
    for hl in layers:
        gone = removed.get(hl.path, [])
        if not gone or hl.shrink_blocker is not None:
            continue
        new, values = smaller_layer(hl, gone)
        swaps.append((hl.owner, new, values))
    if not swaps:
        return model
    changed = {id(old) for old, _new, _values in swaps}
    if any(decoders.is_decoder(old) for old, _new, _values in swaps):
        swaps += decoders.swaps_for(model, skip=changed)
    return decoders.rebuild_with(model, swaps)


# ---------------------------------------------------------------------------------------------------
# Summaries for plan, inspect and the report


def heads_per_layer(model) -> dict[str, dict]:
    """{attention layer path: {"heads", "kv_heads", "head_dim", "live_heads"}}. A head is live while
    its output slice holds a non-zero weight (a masked head is not)."""
    import numpy as np

    out = {}
    for hl in find(model):
        o = _output_part(hl)
        arr = np.asarray(o.variable).reshape(hl.num_heads, -1)  # (heads, head_dim, hidden), or flattened heads
        out[hl.path] = {
            "class": type(hl.layer).__name__,
            "heads": hl.num_heads,
            "kv_heads": hl.num_kv_heads,
            "head_dim": o.width if o.width > 1 else int(o.variable.shape[1]),
            "live_heads": int(np.count_nonzero(np.any(arr != 0, axis=1))),
        }
    return out


def heads_table(before: dict, after: dict) -> list[dict]:
    """Rows for the report/inspect: heads per attention layer before and after."""
    rows = []
    for path, b in before.items():
        a = after.get(path, {})
        rows.append(
            {
                "layer": path,
                "heads_before": b["heads"],
                "heads_after": a.get("heads", b["heads"]),
                "live_heads_after": a.get("live_heads", b["live_heads"]),
            }
        )
    return rows


def macs_at(model, seq_len: int) -> dict[str, int]:
    """{attention layer path: multiply-adds per example at `seq_len` tokens} for every attention
    layer, whatever sequence length the model was built for (use for `--seq-len` in plan/FLOPs)."""
    return {hl.path: _attention_cost(hl, seq_len) for hl in find(model)}


# ---------------------------------------------------------------------------------------------------
# The step


def _attention_macs(model, seq_len: int | None) -> int:
    """The multiply-adds of the model's attention heads per example: at `seq_len` tokens, or, without one,
    MiT's and Swin's blocks each at its stage's tokens."""
    per_layer = macs_at(model, seq_len) if seq_len else vision_encoders.attention_macs(model)
    return sum(per_layer.values())


def _allowed(model, targets, config) -> list:
    return [hl for hl in find(model, targets) if allowed_by_rules(hl.path, config)]


def refusal(model, targets, config) -> str | None:
    """Why -g head cannot run on this model (the one-line error), or None: checked before any work."""
    if _allowed(model, targets, config):
        return None
    unread = unread_attention(model)
    why = f" ({', '.join(unread[:3])}: a layout whose heads prunecli does not read)" if unread else ""
    return f"{config.model_path or 'model'}: no attention layer with prunable heads{why}"


def run_heads(model, targets, config, *, data=None, loss_fn=None, sample_x=None, progress=None):
    """Score, choose and mask (or, with config.shrink, delete) attention heads.

    Returns (model, masks, section, notes):
    - model: the same model with the heads masked, or a new, smaller functional model (--shrink);
    - masks: {target name: boolean keep-mask} for every target (all True outside attention): hold them
      while fine-tuning; after --shrink they are those of the new model's targets (heads gone, all True);
    - section: the report's `heads` section (per layer: heads before/after, removed heads, scores);
    - notes: one line each, for the report's notes.
    data: a dataset of (x, y) batches, loss_fn(y, pred) -> scalar (only for taylor/gradient);
    sample_x: inputs for the shrink check (random inputs when None).
    """
    import numpy as np

    from prunecli.structure import targets as targets_mod

    say = progress or (lambda _m: None)
    notes: list[str] = []
    found = _allowed(model, targets, config)
    if not found:
        raise InputError(refusal(model, targets, config))
    if config.method == MEASURED:
        method, scores, removed, target, measured = _measured(model, found, config, data, notes, say)
    else:
        say(f"scoring the heads of {len(found)} attention layer(s) with {config.method}")
        method, scores, measured = config.method, score(model, found, config, data, loss_fn), None
        removed, target = _removal(model, found, scores, config, notes)
    masks = head_masks(found, removed)
    apply(masks, found)
    section = _section(found, scores, removed, method)
    if measured is not None:
        section["score_measured"] = measured
    if target is not None:
        section["target"] = target
    kernel_masks = {t.name: masks.get(t.name, np.ones(t.shape, dtype=bool)) for t in targets or []}
    staged = vision_encoders.stage_lengths(model)  # MiT's and Swin's blocks: each stage its own length
    seq_len = None if staged else config.seq_len or model_seq_len(model)
    if seq_len:
        section["seq_len"] = seq_len
    if seq_len or staged:
        section["attention_macs_before"] = _attention_macs(model, seq_len)
    if not config.shrink:
        return model, kernel_masks, section, notes
    blocked = sorted({hl.path for hl in found if hl.shrink_blocker and removed[hl.path]})
    for hl in found:
        if hl.path in blocked:
            notes.append(f"heads of {hl.path} masked, not deleted: {hl.shrink_blocker}")
    say("rebuilding attention layers with fewer heads")
    new = shrink(model, found, removed)
    if new is model:
        return model, kernel_masks, section, notes
    inputs = equivalence.example_inputs(model, 16, sample_x, config.seed, open_dim=8)
    section["verification"] = equivalence.check_equivalent(model, new, inputs, "the model with heads removed")
    for row in section["layers"]:
        row["deleted"] = row["layer"] not in blocked and bool(row["removed_heads"])
    new_targets = targets_mod.carry_over(list(targets or []), new)
    new_found = {hl.path: hl for hl in find(new, new_targets)}
    new_masks = head_masks([h for p, h in new_found.items() if p in blocked], removed)
    kernel_masks = {t.name: new_masks.get(t.name, np.ones(t.shape, dtype=bool)) for t in new_targets}
    section["params_before"] = int(model.count_params())
    section["params_after"] = int(new.count_params())
    if seq_len or staged:
        section["attention_macs_after"] = _attention_macs(new, seq_len)
    return new, kernel_masks, section, notes


def _removal(model, found: list[HeadLayer], scores: dict, config, notes: list) -> tuple[dict, dict | None]:
    """(removed units per layer, the report's `target` section or None): `choose` at the run's amount,
    or the heads (or key/value groups) that meet --target params=F or flops=F (units.fit_target: in
    score order, completed by cost where one more head would overshoot the 2% band)."""
    if not config.target:
        return choose(found, scores, config, notes), None
    dense, cost = _target_costs(model, found, config)
    sparsity, removed, target = units.fit_target(
        config,
        dense,
        lambda s: choose(found, scores, config, [], sparsity=s),
        cost,
        {hl.path: scores[hl.path] for hl in found},
        "the attention heads",
        kinds=("params", "flops"),
    )
    choose(found, scores, config, notes, sparsity=sparsity)  # the floors' notes of the score-ordered fit
    return removed, target


def _measured(model, found: list[HeadLayer], config, data, notes: list, say):
    """--method measured (the default of -g head with --data): each of MEASURED_SCORES chooses its heads
    at the run's amount, each choice is masked on the model in turn, and the one whose outputs on
    MEASURE_EXAMPLES examples of --data moved least from the dense outputs (KL of a causal LM's
    next-token distribution, of a classifier's probabilities; relative error else) is the run's.
    Returns (the score kept, its scores, its removed units, its target section, the report's account).
    Measured in bench/TRANSFORMER.md: on a Llama-style decoder with two key/value groups per layer,
    magnitude removed the group that mattered (perplexity 73.8, activation's choice 31.5); on GPT-2's
    heads magnitude's choice was best (activation's 6% worse). Scores that choose the same heads are
    measured once; costs a forward pass of the probe per distinct choice and one more of the dense model."""
    from prunecli.calibration import MEASURE_EXAMPLES, capture, outputs

    options, chosen_by = {}, {}
    for method in MEASURED_SCORES:
        say(f"scoring the heads of {len(found)} attention layer(s) with {method}")
        trial = config.replace(method=method)
        scores = score(model, found, trial, data)
        trial_notes: list[str] = []
        removed, target = _removal(model, found, scores, trial, trial_notes)
        options[method] = (scores, removed, target, trial_notes)
        key = tuple(sorted((path, tuple(gone)) for path, gone in removed.items()))
        chosen_by.setdefault(key, []).append(method)
    if len(chosen_by) == 1:
        method = MEASURED_SCORES[0]
        account = {"chosen": method, "same_heads": list(MEASURED_SCORES)}
    else:
        fixed = keras_graph.fixed_batch(model)
        probe = capture.chunks(capture.take_examples(data, MEASURE_EXAMPLES), fixed or capture.CHUNK, exact=bool(fixed))
        parts = [part for hl in found for part in hl.parts]
        trials = {
            methods[0]: lambda removed=options[methods[0]][1]: apply(head_masks(found, removed), found)
            for methods in chosen_by.values()
        }
        say(f"measuring the heads each score removes ({', '.join(trials)}) on examples of --data")
        method, account = outputs.least_changed(model, parts, probe, trials, say)
        method = method or MEASURED_SCORES[0]
        account["chosen"] = method
        account["same_heads"] = next(m for m in chosen_by.values() if method in m)
    scores, removed, target, trial_notes = options[method]
    notes.extend(trial_notes)
    if len(chosen_by) > 1:
        notes.append(
            f"-g head: measured: the {method} scores' heads moved the outputs least (report: heads.score_measured)"
        )
    return method, scores, removed, target, account


def _section(found: list[HeadLayer], scores: dict, removed: dict, method: str) -> dict[str, Any]:
    """The report's `heads` section before any rebuild: heads before/after and removed, per layer."""
    import numpy as np

    layers = []
    for hl in found:
        gone = hl.heads_of(removed[hl.path])
        layers.append(
            {
                "layer": hl.path,
                "class": type(hl.layer).__name__,
                "heads_before": hl.num_heads,
                "kv_heads_before": hl.num_kv_heads,
                "removed_heads": gone,
                "heads_after": hl.num_heads - len(gone),
                "scores": [round(float(v), 6) for v in np.asarray(scores[hl.path])],
                "deleted": False,
            }
        )
    return {
        "score": method,
        "heads_before": sum(hl.num_heads for hl in found),
        "heads_removed": sum(len(hl.heads_of(removed[hl.path])) for hl in found),
        "layers": layers,
    }


def model_seq_len(model) -> int | None:
    """The sequence length the model's first input fixes (token ids (batch, seq)), or a vision
    Transformer's image size (its patches and class tokens), or None."""
    from prunecli.structure import vision_encoders

    tokens = vision_encoders.sequence_length(model)
    if tokens is not None:
        return tokens
    try:
        shape = tuple(model.inputs[0].shape)
    except (AttributeError, IndexError, TypeError):
        return None
    return int(shape[1]) if len(shape) == 2 and shape[1] is not None else None


# The `-g head` step in the run's StepResult form (like removal.layers.run and removal.features.run):
# data is the run's Data (its .train batches score taylor/gradient) or None; task a metrics.Task or
# None; the masks a MaskSet over the (new) model's targets, held while fine-tuning.
run = units.step_result(run_heads, "heads", "head scoring", DATA_METHODS)
