"""What the one-shot steps that remove units inside layers share (-g head, -g neuron on KerasHub
decoder blocks, -g hidden): per-unit scores read from every slice a unit owns, and the step's
StepResult.

A unit here is one index along an axis of several variables at once (a gated feed-forward unit: a gate
column, an up column, a down row; a residual channel: a slice of every projection, norm and the
embedding), given as `slices`, a list of (variable, axis).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prunecli.errors import ConfigError


def per_unit(arrays: list, axes: list[int], fn) -> list:
    """fn applied to each unit's slice of each array (fn gets a (units, rest) matrix): one (units,)
    vector per array."""
    import numpy as np

    out = []
    for arr, axis in zip(arrays, axes, strict=True):
        moved = np.moveaxis(np.asarray(arr, dtype=np.float64), axis, 0)
        out.append(fn(moved.reshape(moved.shape[0], -1)))
    return out


def weight_scores(slices: list[tuple[Any, int]], method: str):
    """(units,) scores from the weights alone: the geometric mean over the slices of each slice's mean
    |w| (`l2-norm`: its L2 norm). A unit's contribution is a product of its slices, so scaling one
    projection by c scales every unit alike and leaves a product's ranking as it was, where a sum would
    let the largest projection decide."""
    import numpy as np

    arrays, axes = [np.asarray(var) for var, _axis in slices], [axis for _var, axis in slices]
    if method == "l2-norm":
        parts = per_unit(arrays, axes, lambda m: np.sqrt(np.square(m).sum(axis=1)))
    else:
        parts = per_unit(arrays, axes, lambda m: np.abs(m).mean(axis=1))
    return np.exp(np.mean([np.log(np.maximum(p, 1e-30)) for p in parts], axis=0))


def gradient_scores(model, slices: list[tuple[Any, int]], data, loss_fn, method: str, max_batches: int | None):
    """One (units,) vector per slice: `taylor` sum |w * dL/dw|, `gradient` sum |dL/dw| over each unit's
    slice, accumulated over `max_batches` batches of `data`."""
    import numpy as np
    import tensorflow as tf

    from prunecli.removal.layers import batches

    variables = [var for var, _axis in slices]
    sums = [np.zeros(tuple(v.shape)) for v in variables]
    for x, y in batches(data, max_batches):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=False))
        grads = tape.gradient(loss, [v.value if hasattr(v, "value") else v for v in variables])
        for i, (v, g) in enumerate(zip(variables, grads, strict=True)):
            if g is not None:  # an embedding's gradient comes as IndexedSlices: made dense
                g = np.asarray(tf.convert_to_tensor(g), dtype=np.float64)
                sums[i] += np.abs(g * np.asarray(v)) if method == "taylor" else np.abs(g)
    return per_unit(sums, [axis for _var, axis in slices], lambda m: m.sum(axis=1))


def mean_abs_inputs(model, layers: list, data, max_batches: int | None, unit_axis: int = -1) -> list:
    """Per layer, (units,): the mean |x| of the input each layer's `call` receives, per unit along
    `unit_axis` (averaged over the axes between the tokens and it, such as a head's size), over the tokens
    of `max_batches` batches of `data` (a `padding_mask` input leaves padding out): Minitron's activation
    importance. Each `call` is wrapped while the batches run (eager, so inputs are values) and always
    put back; the layers' code, masks and caches are untouched."""
    import numpy as np

    from prunecli.removal.layers import batches

    totals: list = [None] * len(layers)
    state: dict[str, Any] = {"tokens": None}

    def recording(i, original):
        def call(x, *args, **kwargs):
            values = np.moveaxis(np.abs(np.asarray(x, dtype=np.float64)), unit_axis, -1)
            per_token = values.reshape(int(np.prod(values.shape[:2])), -1, values.shape[-1]).mean(axis=1)
            if state["tokens"] is not None:
                per_token = per_token * state["tokens"][:, None]
            totals[i] = per_token.sum(axis=0) + (0.0 if totals[i] is None else totals[i])
            return original(x, *args, **kwargs)

        return call

    count = 0.0
    for i, layer in enumerate(layers):
        object.__setattr__(layer, "call", recording(i, layer.call))
    try:
        for x, _y in batches(data, max_batches):
            mask = x.get("padding_mask") if isinstance(x, dict) else None
            state["tokens"] = None if mask is None else np.asarray(mask, dtype=np.float64).reshape(-1)
            model(x, training=False)
            count += float(state["tokens"].sum()) if mask is not None else _tokens(x)
    finally:
        for layer in layers:
            object.__delattr__(layer, "call")
    return [np.zeros(1) if t is None else t / max(count, 1.0) for t in totals]


def _tokens(x) -> float:
    """Tokens in a batch without a padding mask: the batch and sequence positions of its first input."""
    import numpy as np
    from keras import tree

    return float(np.prod(np.shape(tree.flatten(x)[0])[:2]))


def zero_units(slices: list[tuple[Any, int]], removed: list[int]) -> None:
    """Zero the removed units in every (variable, unit axis) slice, in place."""
    import numpy as np

    for var, axis in slices:
        arr = np.array(var)
        index: list[Any] = [slice(None)] * arr.ndim
        index[axis] = removed
        arr[tuple(index)] = 0
        var.assign(arr.astype(var.dtype))


def unit_params(slices: list[tuple[Any, int]]) -> int:
    """Parameters one unit holds: its slice of every variable (all slices index the same units)."""
    import math

    return sum(math.prod(int(d) for d in var.shape) // int(var.shape[axis]) for var, axis in slices)


def counted_at_length(model, config, what: str, fixed_len: int | None = None) -> tuple[int, int]:
    """(sequence length, the dense model's multiply-adds per example at it) for `--target flops=` on a
    sequence model: --seq-len, else the model's own fixed length; a one-line refusal without either,
    with a --seq-len the model's inputs cannot take (a ViT's token count is fixed by its image size: a
    budget priced at another length would be met on paper only), or when the model's cost cannot be
    counted (structure/flops.py)."""
    from prunecli.structure import flops

    if config.seq_len and fixed_len is not None and config.seq_len != fixed_len:
        raise ConfigError(
            f"--seq-len {config.seq_len}: {what} see {fixed_len} tokens, fixed by the model's inputs;"
            " leave --seq-len out"
        )
    seq_len = config.seq_len or fixed_len
    if seq_len is None:
        raise ConfigError(f"--target flops= on {what} needs --seq-len: the model's sequence length is open")
    dense = flops.count(model, seq_len)["total"]
    if not dense:
        raise ConfigError(f"--target {config.target}: the model's multiply-adds cannot be counted")
    return int(seq_len), int(dense)


def counted_as_built(model, config) -> int:
    """The dense model's multiply-adds per example at the sizes its graph fixes, for `--target flops=` on
    MiT and Swin (each stage at its own token count, fixed by the image size); a one-line refusal when
    any part of it cannot be counted (structure/flops.py), or when --seq-len is given (it prices
    nothing here: a budget met at another length would be met on paper only)."""
    from prunecli.structure import flops

    if config.seq_len:
        raise ConfigError(
            f"--seq-len {config.seq_len}: this model's token counts are fixed by its image size, stage by"
            " stage; leave --seq-len out"
        )
    found = flops.count(model)
    if not found["total"] or found["partial"]:
        raise ConfigError(f"--target {config.target}: the model's multiply-adds cannot be counted in full")
    return int(found["total"])


BISECTION_STEPS = 40  # halvings of [0, 1]: far finer than one unit of any layer


def sparsity_for(removed: Callable[[float], int], amount: int, reach: bool) -> float:
    """The sparsity whose removed count `removed(sparsity)` (a step's own selection, floors included,
    so it only grows with the sparsity) is the nearest to `amount`: with `reach`, the smallest that
    removes at least `amount` (1.0 when none does); without, the largest that removes at most it."""
    low, high = 0.0, 1.0
    for _ in range(BISECTION_STEPS):
        mid = (low + high) / 2
        if (removed(mid) >= amount) if reach else (removed(mid) > amount):
            high = mid
        else:
            low = mid
    return high if reach else low


class TargetUnreachable(ConfigError):
    """--target asks for less than the floors leave: `least` of the `dense` count stays with every
    unit the floors allow removed (run/target.py's latency search starts from that model)."""

    def __init__(self, message: str, least: int, dense: int) -> None:
        super().__init__(message)
        self.least, self.dense = least, dense


COMBINATIONS_TRIED = 20_000  # in_band: counts of the coarse unit costs tried at most (a few dozen in practice)

Removal = dict[str, list[int]]  # {group path: removed units}


def cost_of(removed: Removal, unit_cost: dict[str, int]) -> int:
    """What removing these units saves: each group's count times what one of its units costs."""
    return sum(unit_cost[group] * len(gone) for group, gone in removed.items())


def in_band(costs: list[int], least: int, most: int) -> list[int] | None:
    """Positions of `costs` (units in the order the scores would remove them) whose sum lies in
    [least, most], using the earliest units it can: the set whose latest position is the earliest, and
    so on down (the smallest in colexicographic order among those tried); None when no set does.

    Units cheaper than the band's width (`most - least`) cannot jump over it, so they only fill: the
    coarser ones are tried as counts per cost (the earliest of each cost first), at most
    COMBINATIONS_TRIED of them, and each combination under the band is filled with the earliest cheap
    units until it reaches `least`."""
    if least <= 0:
        return [] if most >= 0 else None
    width = most - least
    cheap = [i for i, c in enumerate(costs) if c <= width]
    coarse: dict[int, list[int]] = {}
    for i, c in enumerate(costs):
        if c > width:
            coarse.setdefault(c, []).append(i)
    prices = sorted(coarse, reverse=True)
    cheap_total = sum(costs[i] for i in cheap)
    best: tuple | None = None
    tried = 0

    def settle(counts: list[int], total: int) -> None:
        nonlocal best
        chosen = [i for price, n in zip(prices, counts, strict=True) for i in coarse[price][:n]]
        for i in cheap:
            if total >= least:
                break
            chosen.append(i)
            total += costs[i]
        key = tuple(sorted(chosen, reverse=True))
        if best is None or key < best:
            best = key

    def spend(level: int, counts: list[int], total: int) -> None:
        nonlocal tried
        if tried >= COMBINATIONS_TRIED:
            return
        if level == len(prices):
            tried += 1
            if total + cheap_total >= least:
                settle(counts, total)
            return
        price = prices[level]
        for n in range(len(coarse[price]) + 1):
            if total + n * price > most:
                break
            spend(level + 1, [*counts, n], total + n * price)

    spend(0, [], 0)
    return None if best is None else sorted(best)


def fill_band(
    select: Callable[[float], Removal],
    unit_cost: dict[str, int],
    scores: dict | None,
    sparsity: float,
    need: int,
    most: int,
) -> tuple[Removal, str | None]:
    """(the removal, how it was chosen or why the band was missed) for a target that asks to remove
    between `need` and `most` (in the unit costs' count): `select(sparsity)`, the units in score order
    that first remove `need` (sparsity from sparsity_for), when it removes at most `most`.

    When one more unit overshoots (a Swin stage-0 head is 5% of the model, the band 2%), the score
    order is completed by cost: the prefix just under `need` stays and the units the selection would
    take next, in its order (each group's by its `scores`), are added as `in_band` picks them; when no
    set on top of that prefix lands, any set of the units the floors allow (the units of
    `select(0.0)`, an override's own count, always go). Each group keeps its units in score order, at
    most as many as `select(1.0)` removes, so floors hold. With no such set the prefix stays, and the
    second value says why. `scores` None: the prefix as it is (a selection that is more than units in
    score order, such as expert banks losing as many units each, cannot be completed unit by unit)."""
    prefix = select(sparsity)
    if cost_of(prefix, unit_cost) <= most or scores is None:
        return prefix, None

    def removed_cost(s: float) -> int:
        return cost_of(select(s), unit_cost)

    def removed_count(s: float) -> int:
        return sum(len(gone) for gone in select(s).values())

    under = select(sparsity_for(removed_cost, need - 1, reach=False))
    fixed, every = select(0.0), select(1.0)

    def ordered(outer: Removal, inner: Removal) -> list[tuple[str, int]]:
        """The units of `outer` not in `inner`, group by group, lowest score first."""
        out = []
        for group, gone in outer.items():
            held = set(inner.get(group, ()))
            out += [(group, u) for u in sorted(set(gone) - held, key=lambda u: (float(scores[group][u]), u))]
        return out

    def landed(base: Removal, units_: list[tuple[str, int]]) -> Removal | None:
        spent = cost_of(base, unit_cost)
        picked = in_band([unit_cost[g] for g, _u in units_], need - spent, most - spent)
        if picked is None:
            return None
        out = {group: list(gone) for group, gone in base.items()}
        for g, u in (units_[i] for i in picked):
            out.setdefault(g, []).append(u)
        return {group: sorted(gone) for group, gone in out.items()}

    if landed(under, ordered(every, under)) is not None:  # some set on top of the prefix lands: the earliest
        walked: list[tuple[str, int]] = []
        reached = under
        while True:  # the selection's next units, one step of its order at a time
            step = select(sparsity_for(removed_count, sum(len(g) for g in reached.values()) + 1, reach=True))
            new = ordered(step, reached)
            if not new:  # the selection has nothing further (it always does: the set above was found)
                break
            walked += new
            found = landed(under, walked)
            if found is not None:
                return found, "completed by cost on top of the score-ordered prefix"
            reached = step
    found = landed(fixed, ordered(under, fixed) + ordered(every, under))
    if found is not None:
        return found, "completed by cost: no set on top of the score-ordered prefix lands"
    costs = " or ".join(f"{c:,}" for c in sorted({unit_cost[g] for g in every if every[g]}, reverse=True))
    return prefix, f"no set of the units the floors allow removes between {need:,} and {most:,}, one costing {costs}"


def fit_target(
    config,
    dense: int,
    select: Callable[[float], Removal],
    unit_cost: dict[str, int],
    scores: dict | None,
    what: str,
    kinds: tuple[str, ...] = ("params",),
) -> tuple[float, Removal, dict]:
    """(the sparsity of the score-ordered fit, the units to remove, the report's `target` section) for
    `--target params=F` (or flops=F where `kinds` allows it): the smallest sparsity whose removed
    units `select(sparsity)` (the step's own selection, floors included, so the cost only grows with
    it) leave at most F of the dense model's count, by bisection, completed by cost when that
    overshoots the 2% band (fill_band). `dense` is the model's count of the kind the `unit_cost`s are
    in; `scores` each group's unit scores. `what` names the units in a one-line refusal."""
    from prunecli.config.target import TOLERANCE, parse_target

    spec = parse_target(config.target)
    if spec.kind not in kinds:
        raise ConfigError(f"--target {spec}: {what} take {' or '.join(f'{k}=F' for k in kinds)} only")
    counted = "parameters" if spec.kind == "params" else "multiply-adds per example"
    goal = int(spec.value * dense)
    low = goal - int(TOLERANCE * goal)

    def removed_cost(s: float) -> int:
        return cost_of(select(s), unit_cost)

    least = dense - removed_cost(1.0)
    if least > goal:
        raise TargetUnreachable(
            f"--target {spec} cannot be met: with every one of {what} the floors allow removed, "
            f"{least / dense:.3f} of the {counted} stay",
            least,
            dense,
        )
    high = sparsity_for(removed_cost, dense - goal, reach=True)
    removed, how = fill_band(select, unit_cost, scores, high, dense - goal, dense - low)
    predicted = dense - cost_of(removed, unit_cost)
    section = {
        "kind": spec.kind,
        "requested": spec.value,
        "unit": "fraction of the dense model",
        "counted": counted,
        "tolerance": TOLERANCE,
        "dense": dense,
        "goal": goal,
        "predicted": predicted,
        "predicted_fraction": predicted / dense,
        "allocated": what,
        "sparsity": round(high, 6),
    }
    if how is not None:  # the score order alone overshot the band
        section["score_order_fraction"] = (dense - removed_cost(high)) / dense
        if low <= predicted:
            section["band"] = how
        else:
            section["band_missed"] = f"{what}: {how} {counted}"
    return high, removed, section


def step_result(run_step, section: str, what: str, data_methods: tuple[str, ...]):
    """The step `run_step` (model, targets, config, data=, loss_fn=, sample_x=, progress=) ->
    (model, masks, section, notes) in the run's form: run(model, run_targets, data, task, config,
    progress, timings, sample_x) -> StepResult with the report's `section`, a MaskSet over the (new)
    model's targets held while fine-tuning, and the new model when the step rebuilt it. `what` names the
    scoring in a loss that cannot be used."""

    def run(model, run_targets, data, task, config, progress, timings, sample_x=None):
        from prunecli.results import StepResult
        from prunecli.selection import policy
        from prunecli.structure import targets as targets_mod

        found_targets = list(run_targets)
        loss_fn = None
        if task is not None and config.method in data_methods:
            from prunecli.training.metrics import loss_callable

            loss_fn = loss_callable(task.loss, what)
        train = None if data is None else data.train
        with timings.phase("score"):
            new, masks, body, notes = run_step(
                model, found_targets, config, data=train, loss_fn=loss_fn, sample_x=sample_x, progress=progress
            )
        sections = {section: body}
        if "target" in body:  # --target params=F: the step chose its sparsity to fit (fit_target)
            sections["target"] = body.pop("target")
        new_targets = found_targets if new is model else targets_mod.carry_over(found_targets, new)
        requested = {
            t.name: None if masks.get(t.name) is None else round(1.0 - float(masks[t.name].mean()), 6)
            for t in new_targets
        }
        mask_set = policy.MaskSet(masks=masks, requested=requested, notes=list(notes))
        replaced = {"targets": new_targets, "masks": mask_set}
        if new is not model:
            replaced["model"] = new
        return StepResult(sections=sections, notes=tuple(notes), **replaced)

    return run
