"""Where sequential calibration reads each layer's inputs: a cached walk of the graph, or prefix passes.

Sequential calibration visits the calibrated layers in call order, and each must see the inputs that
the model, pruned (and updated) up to that layer, gives it. Two sources give exactly that:

- `PrefixPasses` (the original path, capture.py): per layer, a forward pass from the model's inputs,
  stopped once the layer has been called. Works for any model, but the work is quadratic in depth:
  a 39-conv SpliceAI on 32 x 10100 positions ran ~20 convolutions per calibrated layer.
- `CachedPasses`: for a functional (or Sequential) model, the graph is walked once in execution
  order, keeping for every calibration example the *frontier*: the tensors computed so far that a
  later node still reads. At a calibrated layer's node the capture runs that one node on the cached
  inputs (the same capture hook stops it before the layer computes anything); the node's outputs
  are computed only at the next capture, after the layer's weights were updated. Each node then runs
  about once per calibration pass: linear in depth. Nodes no calibrated layer depends on never run.

`passes(model, plan, budget)` picks the source. The cached walk is used only when it is known to
reproduce the model: the graph is walked once on a probe of two examples and its outputs compared
with the model's own (a layer that behaves differently when called alone is caught there), every
calibrated layer belongs to exactly one top-level node (a shared layer, called by several nodes,
would need its inputs from all of them), and the frontier, sized from the probe's per-example bytes
times the calibration examples, fits the byte budget. Otherwise the prefix source runs, and the
report says which (`passes`) and why (`passes_note`).

A nested functional model whose call is Keras' own graph run (a KerasHub backbone inside its causal
LM, a functional block inside a model) is walked node by node in place of its node (`_steps`): an
entry step hands its inputs to the nested graph, an exit step its outputs back, so layers deep inside
it cost one pass each as well. A calibrated layer inside any other nested layer (a Transformer block,
a wrapper such as MultiHeadAttention, a subclassed model) is read by running that one node on its
cached inputs, stopped at the layer: the prefix path within that node only, with the walk still
linear outside it.

A TimeDistributed node over such a nested functional model (vvadlrs3: a MobileNet run on each of 38
video frames) is walked the same way with the time axis folded into the batch (`_FoldEnter`,
`_FoldExit`): the frames of a pass, (batch, T, ...) moved time-major to (T * batch, ...), go through
the nested graph once, as TimeDistributed's own loop would send them one frame at a time. Read
through its node instead, the wrapper calls each inner layer T times per pass and a capture can stop
only at the last frame's call, so every capture ran the whole nested model on T - 1 frames: each of
the 27 calibrated layers cost a full forward pass (over 600 s for one sweep of vvadlrs3's 31 layers;
bench/ZOO.md, 2026-12-06). Folded, an inner layer is called once per pass (`calls_of`), and the
cached tensors inside carry T examples' worth of rows per example (`_Step.out_fold`, for the budget).
The probe's comparison with the model's own outputs checks the fold as it checks every walk.

Everything about the graph goes through structure/keras_graph.py (the adapter to Keras' private
graph attributes); the capture itself is capture.HessianCapture, fed through `_NodeRun`.
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from dataclasses import dataclass, field

from prunecli.calibration import capture
from prunecli.structure import keras_graph

FRONTIER_BYTES = 2 * 2**30  # the cached activations, at most (oneshot also caps it by free memory)
PROBE_EXAMPLES = 2  # examples the graph walk is checked on against the model's own forward pass
PROBE_RTOL = 1e-4  # the walk's outputs must match the model's to this (relative to the largest |y|)


class _Node:
    """One step of the walk: a node of the graph. `operation` holds the layers the step runs,
    `input_tensors` and `outputs` are the symbolic tensors it reads and computes, and `run(values)`
    computes the outputs from one pass's cached values ({id(symbolic tensor): value}). `fold`: how
    many rows of the step's tensors one example of a pass is (T inside a folded TimeDistributed, else
    1), and `out_fold` the same for its outputs."""

    fold = 1

    @property
    def out_fold(self) -> int:
        return self.fold

    def __init__(self, node):
        self.node = node
        self.operation = node.operation
        self.input_tensors = list(node.input_tensors)
        self.outputs = list(node.outputs)

    def run(self, values, training=False):
        return keras_graph.call_node(self.node, values, training=training)


class _Enter(_Node):
    """The entry into an inlined nested model: its input tensors from the arguments of its node."""

    operation = None

    def __init__(self, node):
        self.node = node
        self.input_tensors = list(node.input_tensors)
        self.outputs = keras_graph.inputs(node.operation)

    def run(self, values, training=False):
        return keras_graph.nested_inputs(self.node, values)


class _Exit(_Node):
    """The exit from an inlined nested model: its node's outputs are the nested graph's outputs."""

    operation = None

    def __init__(self, node):
        self.input_tensors = keras_graph.outputs(node.operation)
        self.outputs = list(node.outputs)

    def run(self, values, training=False):
        return [values[id(t)] for t in self.input_tensors]


class _FoldEnter(_Node):
    """The entry into the nested model of a folded TimeDistributed node (`_foldable`): the node's input
    (batch, T, ...) made time-major and folded into the batch, (T * batch, ...), row t * batch + i being
    frame t of example i (the order in which TimeDistributed's own loop calls the model)."""

    operation = None

    def __init__(self, node, time: int):
        self.node = node
        self.time = time
        self.input_tensors = list(node.input_tensors)
        self.outputs = keras_graph.inputs(node.operation.layer)

    @property
    def out_fold(self) -> int:
        return self.fold * self.time

    def run(self, values, training=False):
        import tensorflow as tf

        args, _kwargs = self.node.arguments.fill_in(values)
        x = tf.convert_to_tensor(args[0])
        x = tf.transpose(x, [1, 0, *range(2, len(x.shape))])
        x = tf.reshape(x, [-1, *x.shape[2:]])
        return keras_graph.flat_inputs(self.node.operation.layer, x)


class _FoldExit(_Node):
    """The exit from a folded TimeDistributed node: the nested model's output (T * batch, ...) unfolded
    to the node's output (batch, T, ...)."""

    operation = None

    def __init__(self, node, time: int):
        self.time = time
        self.input_tensors = keras_graph.outputs(node.operation.layer)
        self.outputs = list(node.outputs)

    def run(self, values, training=False):
        import tensorflow as tf

        y = tf.convert_to_tensor(values[id(self.input_tensors[0])])
        y = tf.reshape(y, [self.time, -1, *y.shape[1:]])
        return [tf.transpose(y, [1, 0, *range(2, len(y.shape))])]


def _foldable(node) -> int | None:
    """T, when a node is a TimeDistributed over a nested plain model that can run its T frames as one
    batch (structure/folded_steps.foldable: one input with a static time axis, no mask; the model of
    one input and one output), so the nested graph can be walked on the frames folded into the batch
    (`_FoldEnter`). None otherwise (the node is run as one step)."""
    from prunecli.structure import folded_steps, rebuild

    op = node.operation
    if not folded_steps.foldable(node) or not rebuild.plain_model(op.layer):
        return None
    return int(node.input_tensors[0].shape[1])


def _steps(model, fold: int = 1) -> list:
    """The walk's steps in execution order: the model's nodes, each inlinable nested functional model
    replaced by its entry, its own steps (recursively) and its exit, each foldable TimeDistributed node
    by its folded entry, the nested model's steps and its exit (`fold`: the time steps folded into the
    batch so far)."""

    def at(step):
        step.fold = fold
        return step

    found = []
    for node in keras_graph.nodes(model):
        if keras_graph.inlinable(node) and len(keras_graph.outputs(node.operation)) == len(node.outputs):
            found += [at(_Enter(node)), *_steps(node.operation, fold), at(_Exit(node))]
        elif (time := _foldable(node)) is not None:
            inner = _steps(node.operation.layer, fold * time)
            found += [at(_FoldEnter(node, time)), *inner, at(_FoldExit(node, time))]
        else:
            found.append(at(_Node(node)))
    return found


class _NodeRun:
    """One step called like a model: `runner(values, training=False)` runs the step on one pass's
    cached values ({id(symbolic tensor): value}); capture's forward passes call it so."""

    def __init__(self, step):
        self.step = step

    def __call__(self, values, training=False):
        return self.step.run(values, training=training)


class PrefixPasses:
    """Each capture is a forward pass from the model's inputs, stopped after the layer (capture.py)."""

    kind = "prefix"

    def __init__(self, model, batches: list, note: str | None = None):
        self.model, self.batches, self.note = model, batches, note
        self.frontier_bytes = None

    def calls_of(self, view, calls: int) -> int:
        """How often a pass calls the view's layer: as the model calls it (`calls`, capture.call_order)."""
        return calls

    def capture(self, view, calls: int, full: bool, riders: tuple = ()):
        return capture.HessianCapture(view, calls, full=full).run(self.model, self.batches, riders)

    def measure(self, meter) -> None:
        capture.measure(self.model, self.batches, meter)

    def outputs(self, passes: int) -> None:
        """Nothing computed to reuse: the caller runs the model (see CachedPasses.outputs)."""
        return None


@dataclass
class _Schedule:
    """The top-level nodes calibration needs, in execution order, and when each cached tensor dies.

    steps: the nodes; owner: {id(calibrated layer): index of the step that calls it}; inputs: the
    model inputs' ids (flat, in model order); keep: ids of the tensors some step reads; freed: per
    step, the ids read for the last time there; nested: the names of the nested nodes (a sub-model,
    a wrapper) that hold calibrated layers; calls: {id(calibrated layer): calls per pass of the walk},
    the model's calls over its step's fold (once for a layer inside a folded TimeDistributed);
    outputs: the model outputs' ids (flat, in model order) when the walk continues to them (kept,
    never freed), else empty."""

    steps: list
    owner: dict
    inputs: list
    keep: set
    freed: list
    nested: list = field(default_factory=list)
    calls: dict = field(default_factory=dict)
    outputs: list = field(default_factory=list)


class CachedPasses:
    """The graph walked once, its frontier kept for every calibration pass (see the module docstring).

    `values[i]` holds pass i's frontier; `done` counts the steps computed. A capture first computes
    every step before the layer's own (with `riders`, the error meters of earlier layers, fed when
    their layer runs), then runs the layer's step on the cached inputs, stopped at the layer."""

    kind = "cached"

    def __init__(self, model, batches: list, schedule: _Schedule, frontier_bytes: int, note: str | None = None):
        self.model, self.batches, self.schedule = model, batches, schedule
        self.frontier_bytes = frontier_bytes
        self.note = note
        self.done = 0
        self.values = [dict(zip(schedule.inputs, keras_graph.flat_inputs(model, x), strict=True)) for x in batches]
        for values in self.values:  # inputs no step reads (an unused model input) are not kept
            for k in [k for k in values if k not in schedule.keep]:
                del values[k]

    def _step_of(self, layer) -> int:
        step = self.schedule.owner[id(layer)]
        if step < self.done:
            raise RuntimeError(f"calibration: layer {layer.name} is read after the graph walk passed it")
        return step

    def _advance(self, stop: int, riders: tuple) -> None:
        """Compute steps done..stop-1 on every pass (the model as it is now), dropping dead tensors."""
        if self.done >= stop:
            return
        with ExitStack() as hooks:
            for r in riders:
                hooks.enter_context(capture.wrap(r.view, r.hook))
            for s in range(self.done, stop):
                node, keep, freed = self.schedule.steps[s], self.schedule.keep, self.schedule.freed[s]
                for values in self.values:
                    outs = node.run(values, training=False)
                    for t, v in zip(node.outputs, outs, strict=True):
                        if id(t) in keep:
                            values[id(t)] = v
                    for k in freed:
                        values.pop(k, None)
                self.done = s + 1

    def calls_of(self, view, calls: int) -> int:
        """How often a pass of the walk calls the view's layer (`calls`: as the model calls it): once
        for a layer the model calls once per frame inside a folded TimeDistributed."""
        return self.schedule.calls.get(id(view.layer), calls)

    def capture(self, view, calls: int, full: bool, riders: tuple = ()):
        step = self._step_of(view.layer)
        self._advance(step, riders)
        runner = _NodeRun(self.schedule.steps[step])
        calls = self.calls_of(view, calls)
        return capture.HessianCapture(view, calls, full=full).run(runner, self.values, riders)

    def measure(self, meter) -> None:
        step = self._step_of(meter.view.layer)
        self._advance(step, ())
        capture.measure(_NodeRun(self.schedule.steps[step]), self.values, meter)

    def outputs(self, passes: int) -> list | None:
        """The model's flat outputs on the first `passes` passes, the walk continued from where it stands
        to the end (the model as it is now: every calibrated layer's weights assigned), the other passes
        dropped; None for a walk that stops at its last calibrated layer (`passes(outputs=False)`). What
        --normalize measured compares when it compares on calibration examples: the walk has already
        computed all but the last nodes, where a forward pass of the model would compute them all again.
        No capture can follow."""
        if not self.schedule.outputs:
            return None
        del self.values[passes:]
        self._advance(len(self.schedule.steps), ())
        return [[values[k] for k in self.schedule.outputs] for values in self.values]


def passes(model, plan, budget: int | None = None, memo: dict | None = None, outputs: bool = False):
    """The source of the plan's calibration inputs: CachedPasses when the graph walk is possible,
    reproduces the model and fits `budget` bytes (FRONTIER_BYTES by default), else PrefixPasses with
    a note saying why; None for a plan with no calibrated layer (nothing is read). With `outputs`, the
    walk also runs the nodes that lead to the model's outputs and keeps them (CachedPasses.outputs),
    where that still fits the budget (else it stops at the last calibrated layer, as without).

    `memo` (a dict the caller keeps with the plan): the schedules and the probe's verdict are kept in
    it, keyed by the calibrated layers and the passes, for the next source of the same plan. Both
    depend on the graph and the inputs' shapes only, not on the weights, and --normalize measured asks
    for a fresh source once per allocation it tries: each probe is a walk of the whole graph and a
    forward pass of the model (about 9 s per probe on DeepVOG's V-Net on a shared 2-core machine)."""
    if not plan.layers:
        return None
    budget = FRONTIER_BYTES if budget is None else int(budget)
    key = (tuple(id(view.layer) for view, _ in plan.layers), tuple(id(x) for x in plan.batches))
    known = memo.get(key) if memo is not None else None
    if known is None:
        known = {}
        if memo is not None:
            memo.clear()
            memo[key] = known
    if outputs not in known:
        known[outputs] = _schedule(model, plan.layers, outputs)
    schedule = known[outputs]
    if isinstance(schedule, str):
        return PrefixPasses(model, plan.batches, schedule)
    if "probe" not in known:
        known["probe"] = _probe(model, plan.batches)
    sizes = known["probe"]
    if isinstance(sizes, str):
        return PrefixPasses(model, plan.batches, sizes)
    if any(id(t) not in sizes for node in schedule.steps for t in node.outputs):
        why = "a node calibration needs cannot be computed from the model's inputs alone; each layer's inputs are read by a pass of its own"
        return PrefixPasses(model, plan.batches, why)
    peak = _peak_bytes(schedule, sizes, capture.count_examples(plan.batches), len(plan.batches))
    if peak > budget and outputs:
        return passes(model, plan, budget, memo)
    if peak > budget:
        why = (
            f"the cached activations would take about {_size(peak)}, over the budget of {_size(budget)}; "
            "each layer's inputs are read by a forward pass of their own"
        )
        return PrefixPasses(model, plan.batches, why)
    note = None
    if schedule.nested:
        names = ", ".join(schedule.nested[:3])
        note = f"layers inside {names} are read by passes through that node alone"
    return CachedPasses(model, plan.batches, schedule, peak, note)


def _contained(layer) -> set[int]:
    """ids of the layer and of every layer inside it (a nested model's layers, a wrapper's)."""
    found, todo = set(), [layer]
    while todo:
        item = todo.pop()
        if id(item) in found:
            continue
        found.add(id(item))
        todo.extend(keras_graph.children(item))
    return found


def _schedule(model, layers: list, outputs: bool = False) -> _Schedule | str:
    """The steps that compute every calibrated layer's inputs (and, with `outputs`, the model's
    outputs), or why the graph cannot be walked."""
    if keras_graph.functional(model) is None:
        return "the model has no layer graph to walk (subclassed); each layer's inputs are read by a pass of its own"
    nodes = _steps(model)
    holders: dict[int, list[int]] = {}
    for index, node in enumerate(nodes):
        for lid in _contained(node.operation) if node.operation is not None else ():
            holders.setdefault(lid, []).append(index)
    owner, nested, walk_calls = {}, [], {}
    for view, call in layers:
        layer = view.layer  # the layer whose call receives X (an RNN's, for its cell's kernel)
        found = holders.get(id(layer), [])
        if len(found) != 1:
            return (
                f"layer {layer.name} is called by {len(found)} nodes of the graph (a shared layer); "
                "each layer's inputs are read by a pass of its own"
            )
        op, fold = nodes[found[0]].operation, nodes[found[0]].fold
        calls = call.calls // fold if call.calls % fold == 0 else 0  # its frames folded into one call
        if op is layer and calls != 1:
            return f"layer {layer.name} is called {call.calls} times per pass; each layer's inputs are read by a pass of its own"
        if calls < 1:
            return (
                f"layer {layer.name} is called {call.calls} times per pass, not a multiple of the {fold} time "
                "steps of the TimeDistributed holding it; each layer's inputs are read by a pass of its own"
            )
        if op is not layer and op.name not in nested:
            nested.append(op.name)
        owner[id(layer)] = found[0]
        walk_calls[id(layer)] = calls
    order = [owner[id(view.layer)] for view, _ in layers]
    if order != sorted(order):  # calibrated in call order: the walk must meet them in that order
        return "the graph's node order differs from the call order; each layer's inputs are read by a pass of its own"
    producer = {id(t): index for index, node in enumerate(nodes) for t in node.outputs}
    ends = [id(t) for t in keras_graph.outputs(model)] if outputs else []
    needed, todo = set(), sorted(set(order) | {producer[k] for k in ends if k in producer})
    while todo:
        index = todo.pop()
        if index in needed:
            continue
        needed.add(index)
        todo.extend(producer[id(t)] for t in nodes[index].input_tensors if id(t) in producer)
    kept = sorted(needed)
    position = {index: s for s, index in enumerate(kept)}
    steps = [nodes[i] for i in kept]
    last: dict[int, int] = {}
    for s, node in enumerate(steps):
        for t in node.input_tensors:
            last[id(t)] = s
    freed: list[list[int]] = [[] for _ in steps]
    for k, s in last.items():
        if k not in ends:  # an output is kept to the end, whatever reads it
            freed[s].append(k)
    return _Schedule(
        steps=steps,
        owner={lid: position[index] for lid, index in owner.items()},
        inputs=[id(t) for t in keras_graph.inputs(model)],
        keep=set(last) | set(ends),
        freed=freed,
        nested=nested,
        calls=walk_calls,
        outputs=ends,
    )


def _nbytes(value) -> tuple[int, int | None]:
    """(bytes, leading dimension or None) of one computed value; 0 bytes for a non-tensor."""
    import tensorflow as tf

    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape is None or dtype is None:
        return 0, None
    dims = [int(d) for d in shape]
    try:
        item = tf.as_dtype(dtype).size or 8
    except TypeError:
        item = 8
    return math.prod(dims) * item, (dims[0] if dims else None)


def _probe(model, batches: list) -> dict | str:
    """Walk the whole graph on the first examples and compare with the model's own outputs.

    Returns {id(tensor): (bytes per example, bytes per pass)} for every tensor the walk computed (a
    schedule's steps whose outputs are missing cannot be computed from the inputs alone), or why the
    walk cannot stand in for the model (it fails, or its outputs differ)."""
    import numpy as np
    import tensorflow as tf
    from keras import tree

    fixed = keras_graph.fixed_batch(model)
    first = batches[0]
    probe = first if fixed else tf.nest.map_structure(lambda a: a[:PROBE_EXAMPLES], first)
    n = capture.count_examples([probe])
    steps = _steps(model)
    try:
        inputs = [id(t) for t in keras_graph.inputs(model)]
        values = dict(zip(inputs, keras_graph.flat_inputs(model, probe), strict=True))
        for node in steps:
            if any(id(t) not in values for t in node.input_tensors):
                continue  # not computable from the inputs, as the model's own call skips it
            outs = node.run(values, training=False)
            for t, v in zip(node.outputs, outs, strict=True):
                values[id(t)] = v
        walked = [np.asarray(values[id(t)]) for t in keras_graph.outputs(model)]
        reference = [np.asarray(y) for y in tree.flatten(model(probe, training=False))]
    except Exception as exc:  # noqa: BLE001 - any failure of the walk: the prefix path still works
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"walking the graph node by node failed ({first_line[:120]}); each layer's inputs are read by a pass of its own"
    if len(walked) != len(reference) or not all(_close(a, b) for a, b in zip(walked, reference, strict=False)):
        return "walking the graph node by node does not reproduce the model's outputs; each layer's inputs are read by a pass of its own"
    fold = {id(t): step.out_fold for step in steps for t in step.outputs}  # T rows per example, folded
    sizes = {}
    for k in values:
        nbytes, lead = _nbytes(values[k])
        sizes[k] = (nbytes / n, 0) if n and lead == n * fold.get(k, 1) else (0, nbytes)
    return sizes


def _close(a, b) -> bool:
    import numpy as np

    if a.shape != b.shape:
        return False
    if not np.issubdtype(a.dtype, np.number) or not np.issubdtype(b.dtype, np.number):
        return bool(np.array_equal(a, b))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    finite = np.isfinite(b64)
    if not np.array_equal(finite, np.isfinite(a64)) or not np.array_equal(a64[~finite], b64[~finite]):
        return False
    scale = float(np.max(np.abs(b64[finite]))) if finite.any() else 0.0
    return bool(np.all(np.abs(a64[finite] - b64[finite]) <= PROBE_RTOL * scale + 1e-30))


def _peak_bytes(schedule: _Schedule, sizes: dict, examples: int, passes_: int) -> int:
    """The most bytes the frontier holds at once over the walk: the model inputs, then per step its
    kept outputs added before the tensors it read last are dropped."""

    def size(k):
        per_example, per_pass = sizes.get(k, (0, 0))
        return per_example * examples + per_pass * passes_

    live = sum(size(k) for k in schedule.inputs if k in schedule.keep)
    peak = live
    for s, node in enumerate(schedule.steps):
        live += sum(size(id(t)) for t in node.outputs if id(t) in schedule.keep)
        peak = max(peak, live)
        live -= sum(size(k) for k in schedule.freed[s])
    return int(math.ceil(peak))


def _size(nbytes: float) -> str:
    if nbytes >= 2**30:
        return f"{nbytes / 2**30:.1f} GiB"
    if nbytes >= 2**20:
        return f"{nbytes / 2**20:.1f} MiB"
    return f"{int(nbytes)} bytes"
