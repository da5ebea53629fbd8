"""Which weights can be pruned, and how each is laid out (its unit axis and reduction axes).

Like tfmot's prune_registry, the layer table (structure/layers.py) maps a layer class to its prunable
weight attributes; `layers.register` teaches it a new class. A custom layer may instead opt in with
`get_prunable_weights()`, returning the variables to prune. Biases and normalisation layers are never
targets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from prunecli.config import name_matches
from prunecli.structure import keras_graph, layers


@dataclass(frozen=True, eq=False)
class Target:
    """One prunable weight tensor.

    `name` is unique in the model ("block/conv1/kernel"). The matrix view moves the unit axis last
    and flattens the rest, so a kernel becomes (reduction, units): for Dense (in, out), for Conv
    (kh*kw*in, out) with the input channel varying fastest, the layout N:M groups run along.
    """

    name: str
    layer_name: str
    layer_class: str
    attr: str
    variable: Any
    unit_axis: int
    layer: Any = None
    block_name: str = ""  # set by walk(); see `block`

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.variable.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def block(self) -> str:
        """The outermost layer holding this weight that is not a model: a Transformer block for its
        projections, the layer itself in a plain model (OWL gives a block one density)."""
        return self.block_name or self.layer_name

    @property
    def units(self) -> int:
        return self.shape[self.unit_axis]

    @property
    def rows(self) -> int:
        """Length of the reduction side of the matrix view."""
        return self.size // max(self.units, 1)

    @property
    def perm(self) -> list[int]:
        axes = list(range(len(self.shape)))
        axes.append(axes.pop(self.unit_axis))
        return axes

    def to_matrix(self, tensor):
        import tensorflow as tf

        return tf.reshape(tf.transpose(tensor, self.perm), (self.rows, self.units))

    def from_matrix(self, matrix):
        import tensorflow as tf

        moved = [self.shape[a] for a in self.perm]
        inv = [0] * len(self.perm)
        for i, a in enumerate(self.perm):
            inv[a] = i
        return tf.transpose(tf.reshape(matrix, moved), inv)

    @property
    def _record(self) -> layers.LayerSpec:
        return layers.spec(self.layer) if self.layer is not None else layers.LAYERS.get(self.layer_class, layers.OTHER)

    @property
    def shrinkable(self) -> bool:
        return self._record.shrinkable

    @property
    def gates(self) -> int:
        """Gate blocks on a recurrent cell's unit axis (LSTMCell 4, GRUCell 3: a unit owns one column of
        each, structure/layers.py); 1 for every other weight."""
        return layers.LAYERS.get(self.layer_class.removesuffix("Cell"), layers.OTHER).gates

    @property
    def channels_per_tap(self) -> int | None:
        """The input channels one output reads at one tap (one kernel position) of a convolution: the
        matrix view's rows are taps x this, channel fastest. c_in (c_in / groups when grouped) for Conv,
        ConvTranspose, ConvLSTM and a separable conv's pointwise kernel; 1 for a depthwise kernel, whose
        outputs read one channel per tap. None for a weight without taps (Dense, EinsumDense, Embedding,
        recurrent kernels): its whole reduction axis is one run."""
        if len(self.shape) < 3:
            return None
        family = self._record.family
        if family == "depthwise" or self.attr == "depthwise_kernel":
            return 1
        if family in CONVOLUTION_FAMILIES or getattr(self.layer, "kernel_size", None) is not None:
            return self.shape[self.perm[-2]]
        return None

    @property
    def _contracted_axes(self) -> tuple[int, ...] | None:
        """An EinsumDense kernel's axes contracted with its input, when they are not the unit axis: the
        axes its N:M groups run along. A query projection's (d_model, heads, head_dim) kernel has units
        on head_dim and contracts d_model only, so its matrix view's rows, (d_model, heads) with heads
        fastest, are not one run: consecutive rows there are different heads (different outputs)."""
        if self.attr != "kernel" or self.layer_class != "EinsumDense":
            return None
        axes = keras_graph.einsum_reduction_axes(self.layer)
        if axes is None or self.unit_axis in axes or len(self.shape) < 3:
            return None
        return axes

    @property
    def nm_run(self) -> int:
        """How many rows one N:M run holds: a convolution tap's input channels, an EinsumDense kernel's
        contracted axes, else every row (the whole input)."""
        contracted = self._contracted_axes
        if contracted is not None:
            return math.prod(self.shape[a] for a in contracted)
        return self.channels_per_tap or self.rows

    def nm_groups(self, m: int) -> NmGroups:
        """Where this weight's N:M groups of M lie in its matrix view (`nm_groups`): along the inputs a
        unit reads, as sparse tensor cores need them (the reduction of the product)."""
        contracted = self._contracted_axes
        if contracted is None:
            return nm_groups(self.rows, m, self.channels_per_tap)
        import numpy as np

        rows_axes = [a for a in range(len(self.shape)) if a != self.unit_axis]  # the matrix view's row order
        index = np.arange(self.rows).reshape([self.shape[a] for a in rows_axes])
        order = [i for i, a in enumerate(rows_axes) if a not in contracted] + [
            i for i, a in enumerate(rows_axes) if a in contracted
        ]
        return runs_to_groups(index.transpose(order).reshape(-1, self.nm_run), m)

    def nm_sparsity(self, n: int, m: int) -> float:
        """The fraction of this weight an N:M mask prunes: 1 - N/M, less when a run (a tap's channels,
        the contracted inputs) is not a multiple of M (`nm_sparsity`)."""
        return nm_sparsity(n, m, self.nm_run)


CONVOLUTION_FAMILIES = ("conv", "transpose", "separable")  # structure/layers.py families with taps


@dataclass(frozen=True, eq=False)
class NmGroups:
    """The N:M groups of a (rows, units) matrix view, the one layout that selection, Wanda, SparseGPT and
    verification share. `slots` (groups, M) holds the row in each slot of each group, -1 where a run's
    last, short group is padded: a group never spans two runs (two taps of a convolution), the way
    sparse tensor cores (NVIDIA's ASP permutes a conv kernel so groups run along C at each tap) and
    tfmot's `sparsity_m_by_n` lay N:M out. A short group of L < M weights keeps min(N, L) of them, as if
    zero-padded to M."""

    slots: Any

    @property
    def in_row_order(self) -> bool:
        """Whether the slots are just the rows in order (no short group, no rows taken out of order),
        so that a matrix needs no re-layout to be read group by group."""
        import numpy as np

        flat = self.slots.reshape(-1)
        return bool(np.array_equal(flat, np.arange(len(flat))))

    @property
    def row_slots(self):
        """The slot of each row in `slots.reshape(-1)`, in row order."""
        import numpy as np

        flat = self.slots.reshape(-1)
        filled = np.flatnonzero(flat >= 0)
        out = np.empty(len(filled), dtype=np.int64)
        out[flat[filled]] = filled
        return out


def nm_groups(rows: int, m: int, channels_per_tap: int | None = None) -> NmGroups:
    """The groups of M consecutive rows inside each run of `channels_per_tap` rows (None: one run of all
    rows), each run's last group padded when the run is not a multiple of M."""
    import numpy as np

    run = channels_per_tap or rows
    if rows % run:
        raise ValueError(f"{rows} rows are not whole runs of {run} channels")
    return runs_to_groups(np.arange(rows).reshape(-1, run), m)


def runs_to_groups(runs, m: int) -> NmGroups:
    """Groups of M along each run: `runs` (count, length) lists the rows of each run in group order;
    a run's last group is padded (-1) when its length is not a multiple of M."""
    import numpy as np

    count, run = runs.shape
    per_run = -(-run // m) * m
    slots = np.full((count, per_run), -1, dtype=np.int64)
    slots[:, :run] = runs
    return NmGroups(slots.reshape(-1, m))


def nm_sparsity(n: int, m: int, run: int) -> float:
    """The fraction an N:M mask prunes of runs of `run` rows: full groups keep N of M, the last, short
    group of L = run % M rows keeps min(N, L). 1 - N/M when M divides the run; a run of at most N rows
    (a 1-channel convolution under 2:4, a depthwise kernel) loses nothing."""
    kept = (run // m) * n + min(n, run % m)
    return (run - kept) / run


def walk(model) -> list[Target]:
    """Every prunable weight in the model, nested models and sub-layers included, each once."""
    found: list[Target] = []
    seen: set[int] = set()

    def visit(layer, prefix: str, block: str):
        path = f"{prefix}/{layer.name}" if prefix else layer.name
        block = block or ("" if keras_graph.is_model(layer) else path)
        for attr, var, axis in layers.prunable_weights(layer):
            if id(var) in seen:
                continue  # a shared layer: prune its weight once
            seen.add(id(var))
            ndim = len(var.shape)
            found.append(Target(f"{path}/{attr}", path, type(layer).__name__, attr, var, axis % ndim, layer, block))
        for child in keras_graph.children(layer):
            visit(child, path, block)

    for layer in keras_graph.children(model):
        visit(layer, "", "")
    return found


def layer_paths(model) -> list[str]:
    """Every layer's path in the model ("outer/inner" inside nested models and layers), prunable or not."""
    found: list[str] = []

    def visit(layer, prefix: str):
        path = f"{prefix}/{layer.name}" if prefix else layer.name
        found.append(path)
        for child in keras_graph.children(layer):
            visit(child, path)

    for layer in keras_graph.children(model):
        visit(layer, "")
    return found


def unmatched_globs(model, patterns) -> list[str]:
    """The layer globs that name no layer of the model at all (a typo): an --exclude that names nothing
    excluded nothing, and the run pruned the layer it was meant to keep without a word."""
    paths = layer_paths(model)
    return [p for p in patterns if not any(name_matches(path, (p,)) for path in paths)]


def select(model, include=(), exclude=()) -> list[Target]:
    """The targets to prune: all prunable weights, narrowed by include/exclude layer-name globs."""
    targets = walk(model)
    if include:
        targets = [t for t in targets if name_matches(t.layer_name, include)]
    if exclude:
        targets = [t for t in targets if not name_matches(t.layer_name, exclude)]
    return targets


# How a note tells the user to opt a layer in: `--include` names the ONLY layers a run prunes, so
# `--include LAYER` alone (the hint's old wording) pruned that layer and nothing else (bench/ZOO.md,
# sentiment-bitcoin's frozen Embedding: the LSTM and Dense layers were left dense).
OPT_IN = "(to prune it too: --include '*'; --include NAME alone prunes only NAME)"


def without_output_units(model, found: list[Target], include=()) -> tuple[list[Target], list[str]]:
    """For neuron pruning: the targets minus the layers whose units are a model output (its classes),
    found from the channel graph (`channels.protected_output_units`), and a note per protected layer.

    Removing a class changes what the model predicts, not how big it is; a layer named by --include
    is pruned anyway."""
    from prunecli.structure import channels

    protected = channels.protected_output_units(model)
    kept = [t for t in found if t.layer_name in protected and not named_in(t, include)]
    names = sorted({t.layer_name for t in kept})
    # --include '*' masks an output's units (a class taken out of the prediction), but --shrink never removes
    # them: a network output keeps its width, so the hint says so rather than promise a smaller model
    hint = "(to mask its units too: --include '*'; --shrink keeps a network output's width)"
    notes = [f"{name} not pruned by neuron: {protected[name]} {hint}" for name in names]
    return [t for t in found if t not in kept], notes


def without_frozen(model, found: list[Target], include=()) -> tuple[list[Target], list[str]]:
    """The targets minus the weights of layers the user froze (`trainable=False`, the layer's or a
    containing model's), and a note naming them; a layer named by --include is pruned anyway.

    A frozen layer holds weights its owner chose not to change, often a fixed encoding (DM3Loc's
    one-hot nucleotide table, bench/ZOO.md: pruning two of its four columns put the model below
    predicting nothing) or a backbone kept as trained; fine-tuning cannot recover what pruning takes
    from it, since its weights are not trained. A `model` frozen as a whole (saved so, as for
    inference) made no such choice of layers: its targets all stay, with a note."""
    if all(is_frozen(t) for t in walk(model)):
        return found, [FROZEN_WHOLE_NOTE] if found else []
    frozen = [t for t in found if is_frozen(t) and not named_in(t, include)]
    if not frozen:
        return found, []
    names = sorted({t.layer_name for t in frozen})
    shown = ", ".join(names[:FROZEN_NAMED]) + (
        f" and {len(names) - FROZEN_NAMED} more" if len(names) > FROZEN_NAMED else ""
    )
    note = f"{shown} not pruned: frozen (trainable=False), so fine-tuning could not recover what pruning takes {OPT_IN}"
    return [t for t in found if t not in frozen], [note]


def unknown_kernels_note(model) -> str | None:
    """A note when layers the layer table does not know hold matrices (weights of two or more axes) of
    their own: no granularity prunes them, which a report's "prunable" totals alone did not say
    (KerasHub's Mixtral keeps 77% of its parameters in its experts' weight banks; a sparsity of 0.5 left
    the model 5% sparse, before the table knew them). None below UNKNOWN_NOTED_FROM of the parameters. Sizes count each variable once; a custom layer opts
    in with `get_prunable_weights()` (layers.prunable_weights)."""
    held: dict[str, int] = {}
    seen: set[int] = set()
    for layer in keras_graph.all_layers(model)[1:]:
        below = {id(v) for child in keras_graph.children(layer) for v in child.weights}
        if layers.spec(layer) is not layers.OTHER or layers.prunable_weights(layer):
            seen |= {id(v) for v in layer.weights if id(v) not in below}
            continue
        own = [v for v in layer.weights if id(v) not in below and id(v) not in seen and len(v.shape) >= 2]
        seen |= {id(v) for v in own}
        if own:
            name = type(layer).__name__
            held[name] = held.get(name, 0) + sum(math.prod(v.shape) for v in own)
    total = sum(math.prod(v.shape) for v in model.weights)
    count = sum(held.values())
    if count < UNKNOWN_NOTED_FROM * total:  # an attention layer's 134-weight scorer: nothing a reader misses
        return None
    classes = ", ".join(f"{name} {n:,}" for name, n in sorted(held.items(), key=lambda kv: -kv[1])[:FROZEN_NAMED])
    return (
        f"{count:,} of the model's {total:,} parameters ({count / max(total, 1):.0%}) are matrices of layers prunecli"
        f" does not know ({classes}): no granularity prunes them (a custom layer opts in with get_prunable_weights())"
    )


UNKNOWN_NOTED_FROM = 0.01  # share of the parameters in unknown layers' matrices from which a note counts them
FROZEN_NAMED = 5  # frozen layers named in the note; a frozen backbone's others are counted
FROZEN_WHOLE_NOTE = (
    "every layer is frozen (trainable=False: the model was saved frozen as a whole, as for inference):"
    " pruned all the same"
)


def is_frozen(target: Target) -> bool:
    """Whether the user froze the target's layer (`trainable=False`, set on it or on a model holding it).
    The layer's flag, not the variable's: a quantized layer's integer codes are never trainable
    variables, yet the layer is not frozen."""
    owner = target.layer if target.layer is not None else target.variable
    return not getattr(owner, "trainable", True)


def named_in(target: Target, patterns) -> bool:
    """Whether the target's layer is matched by one of these globs (used for explicit opt-ins)."""
    return bool(patterns) and name_matches(target.layer_name, patterns)


def carry_over(run_targets: list[Target], model, renamed: dict[str, str] | None = None) -> list[Target]:
    """The run's targets on a rebuilt `model` (shrunk, heads or layers removed): the same names, in the
    same order, read again from the new model's variables. Targets whose layer is gone are dropped.
    `renamed`: layers the rebuild named anew (old name -> new: a KerasHub backbone names its blocks by
    place, structure/stacks), so a target follows its own weights, not the name.

    Targets are picked once per run; a rebuilt model never re-selects them, so a layer the run kept out
    (an output unit, a non-FFN Transformer layer, a skip rule) stays out."""
    renamed = renamed or {}

    def new_name(name: str) -> str:
        return "/".join(renamed.get(part, part) for part in name.split("/"))

    wanted = {new_name(t.name) for t in run_targets}
    by_name = {t.name: t for t in walk(model) if t.name in wanted}
    return [by_name[new_name(t.name)] for t in run_targets if new_name(t.name) in by_name]
