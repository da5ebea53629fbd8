"""Input-feature pruning (`--granularity input`): score each input feature, keep the best, cut the rest.

A feature is one position on an input's last axis: a column of a tabular input, a channel of an image.
Each feature is followed from the model input, through layers that keep channels apart (dropout,
activations, pooling, padding, BatchNormalization, DepthwiseConv, Flatten, Concatenate on the last
axis), to the *reading* layers whose weights mix it in (Dense, Conv, SeparableConv, ConvTranspose,
LSTM/GRU/SimpleRNN). Anything else on the way is refused with the layer's name.

Scores (higher = kept), from --feature-score, or else from --method:
  l1 / l2      norm of the feature's outgoing weights in the reading layers (magnitude, l1-norm... -> l1;
               l2-norm -> l2); data-free, blind to the feature's scale
  gradient     mean |dL/dx| over --data            taylor   mean |sum over positions of x * dL/dx|
  permutation  loss increase when the feature is shuffled across the examples of each batch, averaged
               over --repeats seeded shuffles (Breiman 2001; Fisher et al. 2019)
  random       seeded uniform scores, the baseline
Policy, per model input: --keep-features N, or --sparsity S (round(S * features) removed); features
in --exclude-features always stay; at least one feature of each input stays. Without --shrink the
removed features' outgoing weights are zeroed (and held at zero during fine-tuning); with --shrink the
model takes the smaller input, and the session's data are sliced to the kept features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from prunecli.config import FEATURE_SCORE_OF_METHOD, FEATURE_SCORES
from prunecli.errors import ConfigError, InputError
from prunecli.results import StepResult
from prunecli.structure import layers as layer_table
from prunecli.structure.channels import concat_axis

# What a layer does with the features comes from the layer table (structure/layers.py): `readers`
# are the weights that read the input's channels, side "in" indexing the layer's input channels and
# "mid" the depthwise outputs (input channel c -> c*multiplier + m); channel-wise layers with
# `followers` hold per-channel weights (sliced on --shrink); those without pass the features on.


def _reads(layer) -> tuple:
    return layer_table.spec(layer).readers


def _carries(layer) -> tuple:
    """Per-channel weights of a channel-wise layer (BatchNorm, DepthwiseConv, PReLU), else ()."""
    found = layer_table.spec(layer)
    return found.followers if found.role == "channelwise" else ()


def _passes(layer) -> bool:
    """A weightless layer that keeps every channel where it is (activations, dropout, pooling, padding)."""
    found = layer_table.spec(layer)
    return (
        found.role == "channelwise"
        and not found.followers
        and type(layer).__name__ != "Reshape"
        and not layer_table.is_operation(layer)
    )


@dataclass(eq=False)
class Reader:
    """A layer call on the features' way: which positions of its input's last axis each feature holds."""

    layer: object
    width: int  # length of the layer input's last axis
    positions: dict = field(default_factory=dict)  # input index -> [positions of feature f, for each f]
    reads: bool = True  # False for channel-wise layers that only carry the features on


@dataclass(eq=False)
class InputFeatures:
    index: int
    name: str
    count: int
    names: list[str] | None = None


@dataclass
class Trace:
    inputs: list[InputFeatures]
    readers: list[Reader]  # reading and channel-wise layers, each once
    path: list  # every layer between the inputs and the readers (rebuilt on --shrink)


def _multiplier(layer) -> int:
    return int(getattr(layer, "depth_multiplier", 1) or 1)


def _expand(positions: list[int], mult: int) -> list[int]:
    return [p * mult + m for p in positions for m in range(mult)]


def _check_layout(layer, input_name: str) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise InputError(
            f"input {input_name!r}: layer {layer.name} is channels_first; feature pruning needs channels_last"
        )
    if int(getattr(layer, "groups", 1) or 1) != 1:
        raise InputError(
            f"input {input_name!r}: layer {layer.name} is a grouped convolution; its features cannot be cut"
        )


def trace(model) -> Trace:
    """Follow every input's features to the layers that read them."""
    from prunecli.structure.rebuild import functional_graph, input_name, ordered_nodes

    graph = functional_graph(model)
    nodes = ordered_nodes(graph)
    readers_of: dict[int, list] = {}
    calls: dict[int, int] = {}
    for node in nodes:
        calls[id(node.operation)] = calls.get(id(node.operation), 0) + 1
        for t in node.input_tensors:
            readers_of.setdefault(id(t), []).append(node)
    outputs = {id(t) for t in graph.outputs}
    found: dict[int, Reader] = {}
    path: dict[int, object] = {}
    inputs = []
    for i, x in enumerate(graph.inputs):
        name = input_name(x)
        count = x.shape[-1]
        if count is None or len(x.shape) < 2:
            raise InputError(f"input {name!r} has no fixed feature axis (shape {tuple(x.shape)})")
        inputs.append(InputFeatures(i, name, int(count)))
        stack = [(x, [[f] for f in range(int(count))])]
        while stack:
            tensor, positions = stack.pop()
            if id(tensor) in outputs:
                raise InputError(f"input {name!r} reaches a model output without passing a layer with weights")
            for node in readers_of.get(id(tensor), []):
                stack.extend(_follow(node, tensor, positions, i, name, found, path, calls))
    return Trace(inputs, list(found.values()), list(path.values()))


def _follow(node, tensor, positions, i: int, name: str, found: dict, path: dict, calls: dict) -> list:
    """Record what `node` does with the features; returns the tensors to follow further."""
    import numpy as np

    layer = node.operation
    cls = type(layer).__name__
    if calls[id(layer)] > 1:
        raise InputError(f"input {name!r}: layer {layer.name} is shared; its features cannot be cut")
    in_shape = tuple(tensor.shape)
    if _reads(layer) or _carries(layer):
        _check_layout(layer, name)
        reader = found.setdefault(id(layer), Reader(layer, int(in_shape[-1]), reads=bool(_reads(layer))))
        reader.positions.setdefault(i, [[] for _ in positions])
        for f, pos in enumerate(positions):
            reader.positions[i][f].extend(pos)
        path[id(layer)] = layer
        if _reads(layer):
            return []
        return [(node.outputs[0], [_expand(p, _multiplier(layer)) for p in positions])]
    path[id(layer)] = layer
    if _passes(layer) or (cls == "Rescaling" and np.ndim(layer.scale) == 0 and np.ndim(layer.offset) == 0):
        _check_layout(layer, name)
        return [(node.outputs[0], positions)]
    if cls == "Flatten":
        inner = math.prod(d for d in in_shape[1:-1])
        width = int(in_shape[-1])
        return [(node.outputs[0], [[k * width + p for k in range(inner) for p in pos] for pos in positions])]
    if layer_table.spec(layer).role == "concat" and concat_axis(layer, node) in (-1, len(in_shape) - 1):
        offset = 0
        for t in node.input_tensors:
            if t is tensor:
                break
            offset += int(t.shape[-1])
        return [(node.outputs[0], [[p + offset for p in pos] for pos in positions])]
    raise InputError(
        f"input {name!r}: cannot follow its features through layer {layer.name} ({cls}); "
        "feature pruning follows them through channel-wise layers, Flatten and Concatenate to Dense/Conv/RNN layers"
    )


# ---- names and exclusions ----


def attach_names(tr: Trace, data_names: list[str] | None, names_file: str | None) -> None:
    """Give the features names from --feature-names (one per line) or the data's feature_names."""
    names = data_names
    if names_file:
        from prunecli.io.data import read_feature_names  # UTF-8, regular file, one clear line otherwise

        names = read_feature_names(names_file)
    if not names:
        return
    total = sum(inp.count for inp in tr.inputs)
    if len(names) != total:
        counts = ", ".join(f"{inp.name}: {inp.count}" for inp in tr.inputs)
        source = names_file or "the data's feature_names"  # an input file that does not match the model: exit 3
        raise InputError(
            f"{source}: {len(names)} feature names but the model's inputs have {total} features ({counts})"
        )
    start = 0
    for inp in tr.inputs:
        inp.names = list(names[start : start + inp.count])
        start += inp.count


def excluded(tr: Trace, items) -> dict[int, set[int]]:
    """--exclude-features items (index, name, or INPUT:index / INPUT:name) as {input index: {features}}."""
    out: dict[int, set[int]] = {inp.index: set() for inp in tr.inputs}
    for item in items:
        scope, _, what = str(item).rpartition(":")
        chosen = [inp for inp in tr.inputs if not scope or inp.name == scope]
        if not chosen:
            raise ConfigError(f"--exclude-features {item!r}: no model input is named {scope!r}")
        hit = False
        for inp in chosen:
            if what.isdigit() and int(what) < inp.count:
                out[inp.index].add(int(what))
                hit = True
            elif inp.names and what in inp.names:
                out[inp.index].add(inp.names.index(what))
                hit = True
        if not hit:
            raise ConfigError(f"--exclude-features {item!r} matches no feature index or name")
    return out


# ---- scores ----


def score_kind(config) -> str:
    kind = config.feature_score or FEATURE_SCORE_OF_METHOD.get(config.method, "l1")
    if kind not in FEATURE_SCORES:  # a PruneConfig built without validation
        raise ConfigError(f"feature score must be one of {', '.join(FEATURE_SCORES)}, got {kind!r}")
    return kind


def _weight(layer, name: str):
    for w in layer.weights:
        if w.name == name:
            return w
    raise InputError(f"layer {layer.name} has no weight {name!r}")


def _slices(reader: Reader, i: int, f: int):
    """(variable, axis, positions) for every reading weight of feature f of input i."""
    spec = _reads(reader.layer)
    pos = reader.positions[i][f]
    mult = _multiplier(reader.layer)
    for wname, axis, side in spec:
        yield _weight(reader.layer, wname), axis, pos if side == "in" else _expand(pos, mult)


def weight_norm_scores(tr: Trace, p: int) -> dict[int, list[float]]:
    import numpy as np

    out = {}
    for inp in tr.inputs:
        values = np.zeros(inp.count)
        for reader in tr.readers:
            if not reader.reads or inp.index not in reader.positions:
                continue
            for f in range(inp.count):
                for var, axis, pos in _slices(reader, inp.index, f):
                    part = np.take(np.asarray(var), pos, axis=axis)
                    values[f] += np.abs(part).sum() if p == 1 else np.square(part).sum()
        out[inp.index] = list(np.sqrt(values) if p == 2 else values)
    return out


def _split(x) -> list:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _call(model, xs, n_inputs: int):
    return model(xs if n_inputs > 1 else xs[0], training=False)


def gradient_scores(model, data: list, loss, taylor: bool, n_inputs: int) -> dict[int, list[float]]:
    """Mean |dL/dx| (or |sum over positions of x * dL/dx|) of each feature, per example."""
    import numpy as np
    import tensorflow as tf

    sums = [0.0] * n_inputs
    seen = 0
    for x, y in data:
        xs = [tf.convert_to_tensor(v, tf.float32) for v in _split(x)]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            value = loss(y, _call(model, xs, n_inputs))
        batch = int(y.shape[0])
        grads = [g * batch for g in tape.gradient(value, xs)]  # the per-example loss gradient
        for k, (v, g) in enumerate(zip(xs, grads, strict=True)):
            flat = tf.reshape(v * g if taylor else g, (batch, -1, v.shape[-1]))
            per_example = tf.abs(tf.reduce_sum(flat, 1)) if taylor else tf.reduce_mean(tf.abs(flat), 1)
            sums[k] = sums[k] + np.asarray(tf.reduce_sum(per_example, 0), np.float64)
        seen += batch
    return {k: list(np.asarray(v) / max(seen, 1)) for k, v in enumerate(sums)}


def permutation_scores(model, data: list, loss, repeats: int, seed: int, n_inputs: int, progress) -> dict:
    """Loss increase when one feature is shuffled across each batch, averaged over `repeats` seeds."""
    import numpy as np
    import tensorflow as tf

    batches = [([np.asarray(v) for v in _split(x)], y) for x, y in data]
    labels = [y for _, y in batches]
    count = sum(int(y.shape[0]) for y in labels)
    step = tf.function(lambda xs, y: loss(y, _call(model, xs, n_inputs)), reduce_retracing=True)

    def mean_loss(inputs: list) -> float:
        return sum(float(step(xs, y)) * int(y.shape[0]) for xs, y in zip(inputs, labels, strict=True)) / count

    base = mean_loss([xs for xs, _ in batches])
    out = {}
    for k in range(n_inputs):
        features = batches[0][0][k].shape[-1]
        values = np.zeros(features)
        for f in range(features):
            progress(f"permutation importance: input {k}, feature {f + 1}/{features}")
            for r in range(repeats):
                rng = np.random.default_rng([seed, k, f, r])
                shuffled = []
                for xs, _y in batches:
                    moved = xs[k].copy()
                    moved[..., f] = moved[rng.permutation(len(moved)), ..., f]
                    shuffled.append(xs[:k] + [moved] + xs[k + 1 :])
                values[f] += mean_loss(shuffled) - base
        out[k] = list(values / repeats)
    return out


def score(model, data, task, config, progress, tr: Trace, kind: str) -> dict[int, list[float]]:
    import numpy as np

    if kind in ("l1", "l2"):
        return weight_norm_scores(tr, 1 if kind == "l1" else 2)
    if kind == "random":
        return {inp.index: list(np.random.default_rng([config.seed, inp.index]).random(inp.count)) for inp in tr.inputs}
    if data is None:
        raise ConfigError(f"feature score {kind!r} needs --data")
    from prunecli.removal.layers import batches
    from prunecli.training.metrics import loss_callable

    sample = batches(data.train, config.score_batches)
    loss = loss_callable(task.loss, f"feature score {kind!r}")
    if kind == "permutation":
        return permutation_scores(model, sample, loss, config.repeats, config.seed, len(tr.inputs), progress)
    return gradient_scores(model, sample, loss, kind == "taylor", len(tr.inputs))


# ---- policy ----


def choose(tr: Trace, scores: dict, config, keep_always: dict, notes: list) -> dict[int, list[int]]:
    """The kept features of each input, ascending: the best-scored, plus every excluded feature."""
    import numpy as np

    from prunecli.selection import policy

    kept = {}
    for inp in tr.inputs:
        n = inp.count
        if config.keep_features is not None:
            removals = n - min(max(config.keep_features, 1), n)
            if config.keep_features >= n:
                notes.append(
                    f"input {inp.name}: --keep-features {config.keep_features}, but it has {n} features; all kept"
                )
        else:  # an input keeps at least one feature (and its --min-keep share), as a layer keeps its floor
            removals, _held = policy.removal_count(n, config.effective_sparsity, policy.floor(n, config, at_least=1))
        must = keep_always[inp.index]
        order = [f for f in np.argsort(np.asarray(scores[inp.index]), kind="stable") if f not in must]
        if removals > len(order):
            notes.append(f"input {inp.name}: {len(must)} excluded features stay, so only {len(order)} are removed")
        drop = set(int(f) for f in order[:removals])
        if len(drop) == n:  # every feature excluded from keeping: keep the best one
            drop.discard(int(order[-1]))
        kept[inp.index] = [f for f in range(n) if f not in drop]
    return kept


# ---- applying the decision ----


def _removed_positions(reader: Reader, kept: dict) -> set[int]:
    gone = set()
    for i, per_feature in reader.positions.items():
        for f, pos in enumerate(per_feature):
            if f not in kept[i]:
                gone.update(pos)
    return gone


def zero_out(model, tr: Trace, kept: dict):
    """Mask the removed features' outgoing weights; returns the MaskSet (held during fine-tuning)."""
    import numpy as np

    from prunecli.selection import kernels as masking
    from prunecli.selection.policy import MaskSet
    from prunecli.structure import targets

    by_variable = {id(t.variable): t for t in targets.walk(model)}
    masks = MaskSet()
    chosen = []
    for reader in tr.readers:
        if not reader.reads:
            continue
        gone = sorted(_removed_positions(reader, kept))
        mult = _multiplier(reader.layer)
        for wname, axis, side in _reads(reader.layer):
            var = _weight(reader.layer, wname)
            target = by_variable[id(var)]
            keep = np.ones(target.shape, bool)
            index = [slice(None)] * keep.ndim
            index[axis] = gone if side == "in" else _expand(gone, mult)
            keep[tuple(index)] = False
            masks.masks[target.name] = keep
            masks.requested[target.name] = None
            chosen.append(target)
    masking.apply_masks([t.variable for t in chosen], [masks.masks[t.name] for t in chosen])
    return chosen, masks


def shrink(model, tr: Trace, kept: dict):
    """The model rebuilt with the smaller inputs: the readers' and channel-wise layers' weights sliced."""
    import numpy as np

    from prunecli.structure.rebuild import detach, functional_graph, rebuild

    fresh = {id(layer): type(layer).from_config(layer.get_config()) for layer in tr.path}
    shapes = {}
    for i, x in enumerate(functional_graph(model).inputs):
        if len(kept[i]) != x.shape[-1]:
            shapes[i] = tuple(x.shape[:-1]) + (len(kept[i]),)
    rebuilt = rebuild(model, replace=fresh, input_shapes=shapes)
    for reader in tr.readers:
        gone = _removed_positions(reader, kept)
        stay = [p for p in range(reader.width) if p not in gone]
        mult = _multiplier(reader.layer)
        spec = {w: (axis, side) for w, axis, side in _reads(reader.layer) + _carries(reader.layer)}
        new_layer = fresh[id(reader.layer)]
        for old, new in zip(reader.layer.weights, new_layer.weights, strict=True):
            value = np.asarray(old)
            if old.name in spec:
                axis, side = spec[old.name]
                value = np.take(value, stay if side == "in" else _expand(stay, mult), axis=axis)
            new.assign(value)
    return detach(rebuilt)


def slice_data(data, kept: dict, n_inputs: int):
    """The session's data with each input cut to its kept features (the user's file is untouched)."""
    import dataclasses

    import tensorflow as tf

    index = [tf.constant(kept[k], tf.int32) for k in range(n_inputs)]

    def cut(x, y):
        if n_inputs == 1:
            return tf.gather(x, index[0], axis=-1), y
        return tuple(tf.gather(v, index[k], axis=-1) for k, v in enumerate(x)), y

    return dataclasses.replace(data, train=data.train.map(cut), eval=data.eval.map(cut))


def run(model, run_targets, data, task, config, progress, timings) -> StepResult:
    """Score the input features, keep the best, and zero (or, with --shrink, remove) the others.

    A removed feature goes from every layer that reads it, so this step's targets are those readers'
    weights, whatever `run_targets` (the run's choice of layers) says; a reader the run left out is
    named in the notes."""
    from prunecli.structure import targets

    c = config
    if c.schedule != "oneshot":
        raise ConfigError("--granularity input prunes once: use --schedule oneshot (and --epochs to fine-tune)")
    tr = trace(model)
    attach_names(tr, None if data is None else data.feature_names, c.feature_names)
    kind = score_kind(c)
    notes: list[str] = []
    progress(f"scoring input features ({kind})")
    with timings.phase("score"):
        scores = score(model, data, task, c, progress, tr, kind)
    kept = choose(tr, scores, c, excluded(tr, c.exclude_features), notes)
    with timings.phase("mask"):
        readers, masks = zero_out(model, tr, kept)
    chosen = {t.name for t in run_targets}
    outside = sorted({t.layer_name for t in readers if t.name not in chosen})
    if outside:
        notes.append(
            f"{', '.join(outside)}: read(s) the pruned input features, so cut with them (not among the run's targets)"
        )
    replaced = {"targets": readers, "masks": masks}
    counts = {}
    if c.shrink:
        progress("rebuilding the model with the kept features")
        counts["params_before"] = int(model.count_params())
        with timings.phase("shrink"):
            model = shrink(model, tr, kept)
        counts["params_after"] = int(model.count_params())
        replaced = {
            "model": model,
            "masks": None,
            "targets": targets.carry_over(readers, model),
        }
        if data is not None:
            replaced["data"] = slice_data(data, kept, len(tr.inputs))
    sections: dict = {"kept_features": {inp.name: kept[inp.index] for inp in tr.inputs}}
    if all(inp.names for inp in tr.inputs):
        sections["kept_feature_names"] = {inp.name: [inp.names[f] for f in kept[inp.index]] for inp in tr.inputs}
    sections["feature_pruning"] = {
        "score": kind,
        "shrunk": bool(c.shrink),
        "inputs": {
            inp.name: {
                "features": inp.count,
                "kept": len(kept[inp.index]),
                "removed": [f for f in range(inp.count) if f not in kept[inp.index]],
                "scores": [round(float(v), 6) for v in scores[inp.index]],
            }
            for inp in tr.inputs
        },
        **counts,  # the summary's and page's 'removed' line (outputs.report.removed_line)
    }
    return StepResult(sections=sections, notes=tuple(notes), **replaced)
