"""`-g transformer --target params=F|flops=F`: one budget spent across attention heads, feed-forward
units and whole blocks of a Transformer, the split between them chosen by measurement.

A head's score, a feed-forward unit's and a block's are not on one scale (a mean |w|, a product of
magnitudes, a loss increase), so they cannot be ranked against each other. As NVIDIA's Minitron chose
its architectures, the split is searched instead: the removal the target asks for (dense - goal, in
parameters or multiply-adds) is divided between the axes in shares of GRID_STEP, every combination
that sums to one (15 with three axes), and each split is realised through each axis' own selection:

- blocks (coarsest) first: the lowest-scored whole blocks (removal/layers.py's candidates and scores)
  whose cost stays within their share;
- then heads (removal/heads.py: scores, the one selection path, a layer keeps one unit) of the blocks
  left, the most whose cost stays within their share;
- then feed-forward units (KerasHub decoders' gated units, removal/ffn.py; a plain Keras Transformer's
  Dense pairs, as decoders.Ffn without a gate or block) the same way.

The finest axis given a share fills the rest: it removes at least what is left, so every split lands at
or under the goal (a split that cannot is listed as unreachable), and, where its score order would land
more than the tolerance under it, some of its units (or blocks) that land inside (units.fill_band).
Each split is masked on the model (blocks bypassed on a model that shares its layers,
removal/layers.bypassed), measured on up to --score-batches batches of --data, and the dense weights
put back: the model's loss (a causal LM's next-token cross-entropy, training/metrics.NextTokenLoss, with
its perplexity), or without labels the relative error of its outputs against the dense model's. The
lowest loss within the target's tolerance wins and is removed for real in one rebuild, checked equal to
the masked model it came from.

Without --data nothing can be measured: heads and feed-forward units share the removal in proportion to
what they cost, no block goes (Minitron's finding: prune width before depth), and a note says so.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from prunecli.config.target import TOLERANCE, parse_target
from prunecli.errors import ConfigError, InputError
from prunecli.removal import ffn, heads, layers, units
from prunecli.results import StepResult
from prunecli.structure import decoders, equivalence, keras_graph, transformer, vision_encoders

GRID_STEP = 0.25  # the share of the removal each axis may take moves in quarters, as the issue asked
FILL_ORDER = ("blocks", "heads", "ffn")  # coarse to fine: the finest axis with a share fills the rest
WHAT = "heads, feed-forward units and blocks"


@dataclass
class Axes:
    """What the search allocates: per group (an attention layer, a feed-forward network) its scores
    and the cost of one unit, the block each group lives in, and the whole-block candidates with
    their costs, lowest score first."""

    head_layers: list
    ffns: list
    scores: dict[str, dict[str, Any]]  # axis -> {group path: (units,) scores}
    unit_cost: dict[str, dict[str, int]]  # axis -> {group path: cost of one unit}
    block_of: dict[str, str]  # group path -> the block candidate holding it
    blocks: list  # layers.Candidate, lowest score first
    block_cost: dict[str, int]

    def present(self) -> tuple[str, ...]:
        found = {"blocks": bool(self.blocks), "heads": bool(self.head_layers), "ffn": bool(self.ffns)}
        return tuple(axis for axis in FILL_ORDER if found[axis])


@dataclass
class Choice:
    """One split realised: the shares asked, what each axis removes, and what that costs."""

    shares: dict[str, float]
    blocks: list = field(default_factory=list)
    removed: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # axis -> {group path: units}
    cost: dict[str, int] = field(default_factory=dict)  # axis -> removed cost
    reachable: bool = True

    def key(self) -> tuple:
        removed = tuple((axis, tuple(sorted((p, tuple(u)) for p, u in r.items()))) for axis, r in self.removed.items())
        return tuple(c.name for c in self.blocks), removed


def grid(axes: tuple[str, ...]) -> list[dict[str, float]]:
    """Every split of the removal over `axes` in steps of GRID_STEP that sums to one."""
    steps = round(1 / GRID_STEP)
    out = []
    for parts in itertools.product(range(steps + 1), repeat=len(axes)):
        if sum(parts) == steps:
            out.append({axis: part * GRID_STEP for axis, part in zip(axes, parts, strict=True)})
    return out


# ---------------------------------------------------------------------------------------------------
# What can go


def _dense_ffns(model) -> list[decoders.Ffn]:
    """A plain Keras Transformer's feed-forward pairs (transformer.ffn_pairs) as un-gated networks outside
    any decoder block: unit j is the first Dense's kernel column j and bias j and the second's row j."""
    by_name = {layer.name: layer for layer in keras_graph.all_layers(model)}
    return [
        decoders.Ffn(first, block=None, gate=None, up=by_name[first], down=by_name[second])
        for first, second in transformer.ffn_pairs(model)
    ]


def _owner(f: decoders.Ffn) -> str:
    """The layer of the model's graph that holds the feed-forward network (what a block lists)."""
    return f.up.name if f.block is None else f.block.name


def find_axes(model, targets, data, task, config, progress) -> tuple[Axes, int, int]:
    """The axes of this model, scored, with their costs in the target's unit, and (dense count, goal).
    A one-line refusal for a model with no attention heads prunecli can remove."""
    spec = parse_target(config.target)
    found = [
        hl for hl in heads.find(model, targets) if heads.allowed_by_rules(hl.path, config) and hl.shrink_blocker is None
    ]
    if not found:
        raise InputError(
            f"{config.model_path or 'model'}: -g transformer needs attention layers whose heads prunecli removes"
            " (keras.layers.MultiHeadAttention, KerasHub TransformerEncoder, a Llama/Mistral/Qwen/Gemma decoder,"
            " a ViT, DeiT, MiT or Swin encoder)"
        )
    for block in decoders.blocks(model):
        why = decoders.shrink_blocker(block)
        if why:
            raise InputError(f"-g transformer: {block.name} cannot be rebuilt smaller ({why})")
    vision = bool(vision_encoders.blocks(model))
    why = vision_encoders.rebuild_blocker(model) if vision else None
    if why:
        raise InputError(f"-g transformer: {why}")
    ffns = [
        f
        for f in (ffn.find(model) if decoders.blocks(model) or vision else _dense_ffns(model))
        if heads.allowed_by_rules(f.path, config)
    ]
    seq_len = None
    stages = spec.kind == "flops" and vision_encoders.stage_lengths(model)
    if stages:  # MiT, Swin: every head, unit and block at its own stage's token count
        dense = units.counted_as_built(model, config)
        per_head, tokens = vision_encoders.head_macs(model), vision_encoders.block_tokens(model)
        head_cost = {hl.path: per_head[id(hl.layer)] * hl.group for hl in found}
        ffn_cost = {f.path: tokens[id(f.block)] * units.unit_params(f.slices()) for f in ffns}
    elif spec.kind == "flops":
        seq_len, dense = units.counted_at_length(model, config, WHAT, heads.model_seq_len(model))
        head_cost = {hl.path: heads.unit_attention_cost(hl, seq_len) for hl in found}
        ffn_cost = {f.path: seq_len * units.unit_params(f.slices()) for f in ffns}
    else:
        dense = int(model.count_params())
        head_cost = {hl.path: heads.unit_params(hl) for hl in found}
        ffn_cost = {f.path: units.unit_params(f.all_slices()) for f in ffns}
    loss_fn = None
    if task is not None and config.method in heads.DATA_METHODS:
        from prunecli.training.metrics import loss_callable

        loss_fn = loss_callable(task.loss, "-g transformer scoring")
    train = None if data is None else data.train
    progress(f"-g transformer: scoring {len(found)} attention layer(s) and {len(ffns)} feed-forward network(s)")
    scores = {"heads": heads.score(model, found, config, train, loss_fn)}
    scores["ffn"] = ffn.score(model, ffns, config, train, loss_fn) if ffns else {}
    candidates = [c for c in layers.analyse(model, config.include, config.exclude)[0] if c.kind == "block"]
    if candidates:
        progress(f"-g transformer: scoring {len(candidates)} whole block(s)")
        layers.score(model, data, task, config, progress, candidates)
        candidates.sort(key=lambda c: (c.score, -c.params, c.name))
    block_cost = {c.name: c.params for c in candidates}
    if stages and candidates:
        per_block = vision_encoders.block_macs(model)
        block_cost = {c.name: sum(per_block[i] for i in c.skip) for c in candidates}
    elif spec.kind == "flops" and candidates:
        block_cost = _block_flops(model, candidates, seq_len)
    owners = {hl.path: hl.owner.name for hl in found}
    owners.update({f.path: _owner(f) for f in ffns})
    block_of = {path: c.name for c in candidates for path, owner in owners.items() if owner in c.layers}
    axes = Axes(found, ffns, scores, {"heads": head_cost, "ffn": ffn_cost}, block_of, candidates, block_cost)
    return axes, dense, int(spec.value * dense)


def _block_flops(model, candidates, seq_len: int) -> dict[str, int]:
    """Multiply-adds of each whole block at `seq_len` tokens: its layers' calls as structure/flops.py
    counts them (the last part of a call's path names its layer, nested models opened)."""
    from prunecli.structure import flops

    per_layer: dict[str, int] = {}
    for row in flops.count(model, seq_len)["layers"]:
        name = row["layer"].rsplit("/", 1)[-1]
        per_layer[name] = per_layer.get(name, 0) + int(row["macs"] or 0)
    return {c.name: sum(per_layer.get(name, 0) for name in c.layers) for c in candidates}


# ---------------------------------------------------------------------------------------------------
# One split, realised through each axis' own selection


def _select(axis_scores: dict, config, sparsity: float) -> dict[str, list[int]]:
    """{group path: removed units} at `sparsity`: the one selection path every unit step uses
    (selection/policy.select_units, the run's global ranking and floors; a group keeps one unit)."""
    from prunecli.selection import policy

    return policy.select_units(axis_scores, config, [], at_least=1, sparsity=sparsity)


def _blocks_for(axes: Axes, amount: int, reach: bool, slack: int) -> list:
    """The lowest-scored whole blocks whose cost is nearest `amount`: with `reach` the fewest that
    remove at least it (when they remove more than `amount + slack`, the earliest in score order that
    land in between, where some do: units.in_band), else the most that stay within it. One block
    always stays."""
    best: list = []
    for count in range(len(axes.blocks)):
        chosen = layers.lowest_first(axes.blocks, count)
        cost = sum(axes.block_cost[c.name] for c in chosen)
        if reach:
            best = chosen
            if cost >= amount:
                break
        elif cost <= amount:
            best = chosen
    if reach and sum(axes.block_cost[c.name] for c in best) > amount + slack:
        order = layers.lowest_first(axes.blocks, len(axes.blocks) - 1)
        picked = units.in_band([axes.block_cost[c.name] for c in order], amount, amount + slack)
        best = best if picked is None else [order[i] for i in picked]
    return best


def realise(axes: Axes, shares: dict[str, float], amount: int, config, slack: int) -> Choice:
    """The removal of `amount` (in the target's unit) split by `shares`, blocks first, then heads,
    then feed-forward units of the blocks left; the finest axis with a share removes what is left, at
    most `slack` more where some of its units can (the target's band; units.fill_band)."""
    choice = Choice(dict(shares))
    fill = [axis for axis in FILL_ORDER if shares.get(axis, 0.0) > 0][-1]
    left = amount
    gone_blocks: set[str] = set()
    for axis in FILL_ORDER:
        share, reach = shares.get(axis, 0.0), axis == fill
        want = left if reach else min(round(share * amount), left)
        choice.cost[axis] = 0
        if share <= 0 or want <= 0:
            continue
        if axis == "blocks":
            choice.blocks = _blocks_for(axes, want, reach, slack)
            gone_blocks = {c.name for c in choice.blocks}
            choice.cost[axis] = sum(axes.block_cost[name] for name in gone_blocks)
        else:
            groups = {p: s for p, s in axes.scores[axis].items() if axes.block_of.get(p) not in gone_blocks}
            unit_cost = axes.unit_cost[axis]

            def select(sparsity: float, groups=groups) -> dict[str, list[int]]:
                return _select(groups, config, sparsity)

            def removed_cost(sparsity: float, select=select, unit_cost=unit_cost) -> int:
                return units.cost_of(select(sparsity), unit_cost)

            sparsity = units.sparsity_for(removed_cost, want, reach)
            if reach:  # the axis that fills the rest: into the band where its units allow
                removed = units.fill_band(select, unit_cost, groups, sparsity, want, want + slack)[0]
            else:
                removed = select(sparsity)
            choice.removed[axis] = {p: u for p, u in removed.items() if u}
            choice.cost[axis] = units.cost_of(choice.removed[axis], unit_cost)
        left -= choice.cost[axis]
    choice.reachable = left <= 0
    return choice


def default_split(axes: Axes) -> dict[str, float]:
    """Without data: no block, heads and feed-forward units in proportion to what all of them cost."""
    head_total = sum(hl.units * axes.unit_cost["heads"][hl.path] for hl in axes.head_layers)
    ffn_total = sum(f.units * axes.unit_cost["ffn"][f.path] for f in axes.ffns)
    share = head_total / max(head_total + ffn_total, 1)
    return {"heads": share, "ffn": 1.0 - share} if axes.ffns else {"heads": 1.0}


# ---------------------------------------------------------------------------------------------------
# Masks and measurement


def mask(model, axes: Axes, choice: Choice) -> None:
    """Zero the split's heads and feed-forward units in place (blocks are bypassed, not masked)."""
    removed_heads = choice.removed.get("heads", {})
    heads.apply(heads.head_masks(axes.head_layers, removed_heads), axes.head_layers)
    for f in axes.ffns:
        gone = choice.removed.get("ffn", {}).get(f.path)
        if gone:
            units.zero_units(f.all_slices(), gone)


def masked_model(model, axes: Axes, choice: Choice):
    """The split on `model`: its units masked in place, its blocks bypassed (a model sharing the
    others' layers; a KerasHub decoder's rebuilt around them)."""
    mask(model, axes, choice)
    return layers.bypassed(model, choice.blocks) if choice.blocks else model


def loss_meter(model, data, task, config):
    """(what is measured, on how many batches, fn(model) -> float), on up to --score-batches batches of
    --data: the model's loss, or without labels the relative error of its outputs against this (dense)
    model's."""
    import numpy as np
    from keras import tree

    sample = layers.batches(data.train, config.score_batches)
    if task is not None:
        from prunecli.training.metrics import NextTokenLoss, loss_callable, loss_step, mean_loss

        loss = loss_callable(task.loss, "-g transformer's search")
        what = "next-token loss" if isinstance(task.loss, NextTokenLoss) else "loss"
        step = loss_step(model, loss, sample)  # a split without blocks is this model, masked in place
        return what, len(sample), lambda m: mean_loss(m, sample, loss, step if m is model else None)

    def outputs(m) -> list:
        return [np.asarray(o, np.float64) for x, _y in sample for o in tree.flatten(m(x, training=False))]

    dense = outputs(model)
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in dense)) or 1.0

    def error(m) -> float:
        return math.sqrt(sum(float(np.sum((o - d) ** 2)) for o, d in zip(outputs(m), dense, strict=True))) / norm

    return "relative output error against the dense model (no labels)", len(sample), error


# ---------------------------------------------------------------------------------------------------
# The search


def _row(choice: Choice, dense: int, goal: int, low: int, loss: float | None, next_token: bool) -> dict[str, Any]:
    achieved = dense - sum(choice.cost.values())
    row = {
        "shares": {axis: round(share, 4) for axis, share in choice.shares.items()},
        "removed": dict(choice.cost),
        "blocks_removed": [c.name for c in choice.blocks],
        "heads_removed": sum(len(u) for u in choice.removed.get("heads", {}).values()),
        "ffn_units_removed": sum(len(u) for u in choice.removed.get("ffn", {}).values()),
        "achieved": achieved,
        "achieved_fraction": achieved / dense,
        "reachable": choice.reachable,
        "within_tolerance": choice.reachable and low <= achieved <= goal,
        "loss": loss,
        "chosen": False,
    }
    if next_token and loss is not None:
        row["perplexity"] = math.exp(loss) if loss < 700 else float("inf")
    return row


def search(model, axes: Axes, dense: int, goal: int, data, task, config, progress) -> tuple[Choice, dict, list]:
    """(the split that wins, the report's `transformer_split` section, notes): every split of the grid
    masked and measured, the lowest loss within the tolerance kept; without --data the default split."""
    from prunecli.training.metrics import NextTokenLoss

    amount, low = dense - goal, goal - int(TOLERANCE * goal)
    present = axes.present()
    next_token = task is not None and isinstance(task.loss, NextTokenLoss)
    notes: list[str] = []
    if data is None:
        choice = realise(axes, default_split(axes), amount, config, goal - low)
        rows, choices = [_row(choice, dense, goal, low, None, False)], [choice]
        measured = "nothing (no --data)"
        shares = ", ".join(f"{axis} {share:.2f}" for axis, share in choice.shares.items())
        notes.append(
            f"-g transformer without --data: the default split ({shares}; heads and feed-forward units in"
            " proportion to their cost, no whole block: width before depth, as Minitron found), not searched"
        )
    else:
        what, batches, meter = loss_meter(model, data, task, config)
        measured = f"{what} on {batches} batch(es) of --data"
        dense_weights = model.get_weights()
        splits = grid(present)
        rows, choices, seen = [], [], {}
        for i, shares in enumerate(splits):
            choice = realise(axes, shares, amount, config, goal - low)
            loss = None
            if choice.reachable:
                key = choice.key()
                if key not in seen:
                    try:
                        seen[key] = float(meter(masked_model(model, axes, choice)))
                    finally:
                        model.set_weights(dense_weights)
                loss = seen[key]
            label = ", ".join(f"{axis} {share:.2f}" for axis, share in shares.items())
            said = "unreachable" if loss is None else f"loss {loss:.4g}"
            progress(f"-g transformer: split {i + 1}/{len(splits)} ({label}): {said}")
            rows.append(_row(choice, dense, goal, low, loss, next_token))
            choices.append(choice)
    measured_rows = [i for i, row in enumerate(rows) if row["reachable"]]
    if not measured_rows:  # the least any split leaves: where run/target.py's latency search starts
        raise units.TargetUnreachable(
            f"--target {config.target} cannot be met by -g transformer: every split leaves more than"
            f" {goal:,} of {dense:,} (a layer keeps one head and one unit, the model one block)",
            min(row["achieved"] for row in rows),
            dense,
        )
    within = [i for i in measured_rows if rows[i]["within_tolerance"]] or measured_rows
    best = min(within, key=lambda i: (rows[i]["loss"] or 0.0, i))  # without --data: the one default split
    rows[best]["chosen"] = True
    if data is not None:
        label = ", ".join(f"{axis} {share:g}" for axis, share in rows[best]["shares"].items())
        notes.append(
            f"-g transformer: kept the split {label}, the lowest {what} ({rows[best]['loss']:.4g})"
            f" of {len(within)} measured splits that land within {TOLERANCE:.0%} under the target"
        )
    section = {
        "axes": list(present),
        "grid_step": GRID_STEP,
        "measured": measured,
        "searched": data is not None,
        "splits": rows,
        "chosen": rows[best]["shares"],
    }
    return choices[best], section, notes


# ---------------------------------------------------------------------------------------------------
# Removal for real


def _smaller_ffn(f: decoders.Ffn, kept: list[int]) -> list[tuple]:
    """(old, new, weights) swaps of a plain feed-forward pair with only its kept units: the first Dense
    rebuilt with `units` = kept, the second from its own config (it reads the narrower input)."""
    import numpy as np

    config = f.up.get_config()
    config["units"] = len(kept)
    first = type(f.up).from_config(config)
    down = type(f.down).from_config(f.down.get_config())
    cut = {id(var): axis for var, axis in f.all_slices()}
    swaps = []
    for old, new in ((f.up, first), (f.down, down)):
        values = {}
        for v in old.weights:
            arr = np.asarray(v)
            values[str(v.path)] = np.take(arr, kept, axis=cut[id(v)]) if id(v) in cut else arr
        swaps.append((old, new, values))
    return swaps


def shrink(model, axes: Axes, choice: Choice):
    """The smaller model in one rebuild: fewer heads and units per block, the removed blocks gone.
    KerasHub decoders get prunecli's blocks (structure/decoders.py); a plain Transformer's attention
    layers and TransformerEncoders are rebuilt as -g head rebuilds them, its FFN pairs narrower."""
    removed_heads, removed_units = choice.removed.get("heads", {}), choice.removed.get("ffn", {})
    gone_blocks = {c.name for c in choice.blocks}

    def kept(path: str, count: int, removed: dict) -> list[int]:
        return [u for u in range(count) if u not in set(removed.get(path, ()))]

    live_heads = [
        hl for hl in axes.head_layers if removed_heads.get(hl.path) and axes.block_of.get(hl.path) not in gone_blocks
    ]
    live_ffns = [f for f in axes.ffns if removed_units.get(f.path) and axes.block_of.get(f.path) not in gone_blocks]
    changes = layers.graph_changes(choice.blocks)
    if vision_encoders.blocks(model):  # the encoder rebuilt whole, the removed blocks left out of it
        kept_heads = {id(hl.owner): hl.heads_of(kept(hl.path, hl.units, removed_heads)) for hl in live_heads}
        kept_units = {id(f.block): kept(f.path, f.units, removed_units) for f in live_ffns}
        return vision_encoders.rebuild(model, heads=kept_heads, units=kept_units, dropped=changes["skip"])
    if decoders.blocks(model):
        kept_heads = {id(hl.owner): hl.kept_heads(kept(hl.path, hl.units, removed_heads)) for hl in live_heads}
        kept_units = {id(f.block): kept(f.path, f.units, removed_units) for f in live_ffns}
        return decoders.rebuild_with(model, decoders.swaps_for(model, heads=kept_heads, units=kept_units), **changes)
    swaps = [(hl.owner, *heads.smaller_layer(hl, removed_heads[hl.path])) for hl in live_heads]
    for f in live_ffns:
        swaps += _smaller_ffn(f, kept(f.path, f.units, removed_units))
    return decoders.rebuild_with(model, swaps, **changes)


def _target_section(config, dense: int, goal: int, predicted: int, split: dict[str, float]) -> dict[str, Any]:
    spec = parse_target(config.target)
    return {
        "kind": spec.kind,
        "requested": spec.value,
        "unit": "fraction of the dense model",
        "counted": "parameters" if spec.kind == "params" else "multiply-adds per example",
        "tolerance": TOLERANCE,
        "dense": dense,
        "goal": goal,
        "predicted": predicted,
        "predicted_fraction": predicted / dense,
        "allocated": WHAT,
        "split": split,
    }


def run(model, run_targets, data, task, config, progress, timings) -> StepResult:
    """Score every axis, search the split (or take the default without --data), mask the winner on
    the run's model and remove it for real, checked equal to the masked model."""
    import numpy as np

    from prunecli.selection import policy
    from prunecli.structure import targets as targets_mod

    if config.method not in heads.METHODS:
        raise ConfigError(f"-g transformer scores with {', '.join(heads.METHODS)}; got --method {config.method}")
    with timings.phase("score"):
        axes, dense, goal = find_axes(model, list(run_targets), data, task, config, progress)
    with timings.phase("target_search"):
        choice, section, notes = search(model, axes, dense, goal, data, task, config, progress)
    progress("-g transformer: removing the chosen heads, feed-forward units and blocks")
    with timings.phase("rebuild"):
        masked = masked_model(model, axes, choice)
        smaller = shrink(model, axes, choice)
    inputs = equivalence.example_inputs(model, 16, None, config.seed, open_dim=8)
    section["verification"] = equivalence.check_equivalent(
        masked, smaller, inputs, "the model with heads, feed-forward units and blocks removed"
    )
    predicted = dense - sum(choice.cost.values())
    new_targets = targets_mod.carry_over(list(run_targets), smaller)
    masks = {t.name: np.ones(t.shape, dtype=bool) for t in new_targets}
    mask_set = policy.MaskSet(masks=masks, requested={t.name: 0.0 for t in new_targets}, notes=list(notes))
    return StepResult(
        sections={
            "transformer_split": section,
            "target": _target_section(config, dense, goal, predicted, section["chosen"]),
            "removed_layers": [name for c in choice.blocks for name in c.layers],
        },
        notes=tuple(notes),
        model=smaller,
        targets=new_targets,
        masks=mask_set,
    )
