"""Seeded stand-in inputs for a model, when there is no --data to run it on.

Shrink verification, latency timing, head pruning's check, layer scoring without data and the export
check all need "some inputs the model accepts". One builder serves them, so an integer input (token
ids, segment ids, masks) gets valid values everywhere, not only in the step that first met it.
"""

from __future__ import annotations

import contextvars

OPEN_DIM = 32  # size given to dimensions the model leaves open (None): short enough for any position table


LONGER_OPEN_DIMS = (256, 2048, 16384)  # tried in turn when the model cannot run at the first size
# or shorter: a learned position table of fewer than OPEN_DIM positions (a small GPT-2 or OPT)

PROBE_ROWS = 8  # examples in a trial pass: a NaN from a negative stand-in shows on some rows, not all
PROBE_ELEMENTS = 1 << 16  # input values a trial pass feeds at most (fewer rows for long inputs, at least one)


def seeded_inputs(model, batch: int, seed: int = 0, open_dim: int = OPEN_DIM) -> list:
    """One array per model input, in `model.inputs` order: standard normal for float inputs (their absolute
    values where the model's outputs on those are not finite: a square root or logarithm of an input, such
    as a mass or a count, gives NaN on negative values); for integer (or bool) inputs, ones for a mask,
    ids in [0, 10) for token ids, [0, 2) otherwise (segment ids and the like); open dimensions become
    `open_dim`, or the first other size the model runs on (a crop of 5000 positions per side needs an
    input longer than 10000), or a size its graph fixes, one per input where they must differ (`_runnable`)."""
    size, positive = _runnable(model, open_dim)
    return _values(model, batch, seed, size, positive)


def _values(model, batch: int, seed: int, open_dim: int | tuple[int, ...], positive: bool = False) -> list:
    """The stand-ins; `open_dim` is one size for every open dimension, or one per input (`_runnable`)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    values = []
    sizes = open_dim if isinstance(open_dim, tuple) else (open_dim,) * len(model.inputs)
    for t, size in zip(model.inputs, sizes, strict=True):
        name = getattr(t, "name", "") or ""
        shape = (batch,) + tuple(size if d is None else int(d) for d in t.shape[1:])
        dtype = str(t.dtype)
        if "int" in dtype or "bool" in dtype:
            high = 10 if "token" in name or name == "ids" else 2
            v = np.ones(shape) if "mask" in name else rng.integers(0, high, size=shape)
            values.append(v.astype(dtype))
        else:
            v = rng.standard_normal(shape)
            values.append((np.abs(v) if positive else v).astype("float32" if dtype == "bfloat16" else dtype))
    return values


_RUNNABLE: dict[tuple[int, int], tuple] = {}  # (id(model), asked) -> (weak reference, size, positive, note)
# The searches a run's time budget cut short, for its report: a record per run (`forget_cut_searches` starts
# one in the run's context), so two runs in one process, or in two threads, never read each other's.
_CUT: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("prunecli_cut_searches", default=None)
MAX_PER_INPUT_TRIES = 64  # assignments of one open size per input tried when no common size runs
SEARCH_BUDGET_S = 30.0  # seconds of trial passes per model: a model whose pass takes seconds hung for minutes


class _OutOfTime(Exception):
    """The search's time budget ran out before a size ran."""


def _runnable(model, wanted: int) -> tuple[int | tuple[int, ...], bool]:
    """(size, positive): the open-dimension size and the sign of the float stand-ins on which a trial
    forward pass of the model gives finite, non-empty outputs, found once per model. Sizes: `wanted`,
    halvings of it (a position table shorter than it; a too-short input fails at once), then
    LONGER_OPEN_DIMS (a crop, a valid convolution or a pooling stack longer than it); at each, standard
    normal values, then their absolute values (an input the model takes the square root or logarithm
    of). Where no such common size runs, the sizes the model's own graph fixes (`_graph_sizes`: a
    RepeatVector(20) joined to an open-length sequence needs 20 steps of it), as one common size and then
    one size per input (a tuple, in `model.inputs` order: two sequences that must differ in length, each
    joined to its own fixed one), at most MAX_PER_INPUT_TRIES of those; a size whose pass raises is not
    tried again with the other sign. A pass feeds PROBE_ROWS examples,
    or fewer for long inputs. The search also stops once its passes have taken SEARCH_BUDGET_S (a pass
    that takes seconds made 100-odd of them minutes); `search_note` then says so. (`wanted`, False) when
    none runs (the caller's own call then reports why)."""
    import time
    import weakref

    key = (id(model), wanted)
    cached = _RUNNABLE.get(key)
    if cached is not None and cached[0]() is model:
        return cached[1], cached[2]
    started = time.monotonic()
    note = None
    try:
        found = _search(model, wanted, started + SEARCH_BUDGET_S)
    except _OutOfTime as out:
        found = None
        spent = time.monotonic() - started
        note = f"stopped trying input lengths after {spent:.1f} s ({out.args[0]} trial passes; budget {SEARCH_BUDGET_S:g} s)"
        record = _CUT.get()
        if record is not None:  # outside a run (a caller's own check) nothing reads the note's line
            record.append(
                f"the search for stand-in inputs of {model.name} {note}: the checks run on stand-ins gave every open"
                f" dimension length {wanted}, the first tried, not a length found to run; --data gives the real inputs"
            )
    found = found or (wanted, False)
    _RUNNABLE[key] = (weakref.ref(model, lambda _ref: _RUNNABLE.pop(key, None)), *found, note)
    return found


def forget_cut_searches() -> None:
    """Start a run's record of the stand-in searches cut short (`cut_searches`), in the calling context."""
    _CUT.set([])


def cut_searches() -> list[str]:
    """A line per stand-in search that SEARCH_BUDGET_S cut short since `forget_cut_searches`, for the
    notes of a run that succeeded all the same: its checks on stand-ins ran at a length not known to fit
    (a failing one says so in its own message, `search_note`); the same line once."""
    return list(dict.fromkeys(_CUT.get() or ()))


def search_note(model) -> str | None:
    """Why the stand-in search for `model` ended before it found a size that runs ("stopped trying input
    lengths after 30 s ..."), for the message of a check that then fails on the stand-ins; None when
    it was not cut short."""
    for ref, _size, _positive, note in list(_RUNNABLE.values()):
        if note and ref() is model:
            return note
    return None


def _search(model, wanted: int, deadline: float) -> tuple | None:
    """`_runnable`'s search, trial passes only until `deadline` (time.monotonic; _OutOfTime after)."""
    import itertools

    passes = [0]  # trial passes made, for the note
    open_inputs = [i for i, t in enumerate(model.inputs) if any(d is None for d in t.shape[1:])]
    if open_inputs:
        shorter = [wanted >> k for k in range(1, wanted.bit_length())]
        sizes = (wanted, *shorter, *(d for d in LONGER_OPEN_DIMS if d > wanted))
    else:
        sizes = (wanted,)
    floats = any(not ("int" in str(t.dtype) or "bool" in str(t.dtype)) for t in model.inputs)
    signs = (False, True) if floats else (False,)
    found = None if len(sizes) * len(signs) > 1 else (wanted, False)  # one choice: the caller's call reports
    found = found or _first_running(model, sizes, signs, deadline, passes)
    if found is None and open_inputs:  # lengths the graph fixes: common, then one per input
        fixed = [size for size in _graph_sizes(model) if size not in sizes]
        found = _first_running(model, fixed, signs, deadline, passes, failing_size_ends=True)
        if found is None and len(open_inputs) > 1:
            picks = itertools.product((wanted, *fixed), repeat=len(open_inputs))
            each = (dict(zip(open_inputs, picked, strict=True)) for picked in picks if len(set(picked)) > 1)
            tries = [
                tuple(chosen.get(i, wanted) for i in range(len(model.inputs)))
                for chosen in itertools.islice(each, MAX_PER_INPUT_TRIES)  # (1 + sizes) ** inputs: never listed
            ]
            found = _first_running(model, tries, signs, deadline, passes, failing_size_ends=True)
    return found


def _trial_pass(model, inputs):
    """One trial forward pass (a function of its own so that a test can make it slow)."""
    return model(inputs, training=False)


def _first_running(model, sizes, signs, deadline: float, passes: list, failing_size_ends: bool = False) -> tuple | None:
    """The first (size, positive), sizes first, on which a trial pass gives usable outputs, or None. With
    `failing_size_ends`, a size whose pass raises is not tried with the other sign (the shapes, not the
    values, do not fit: one pass per size the graph fixes, not two). _OutOfTime when a pass would start
    after `deadline` (the first pass of a search always runs); `passes[0]` counts the passes made."""
    import time

    import numpy as np

    for size in sizes:
        per_example = sum(int(np.prod(v.shape[1:], dtype=np.int64)) for v in _values(model, 1, 0, size))
        rows = max(1, min(PROBE_ROWS, PROBE_ELEMENTS // max(per_example, 1)))
        for positive in signs:
            if passes[0] and time.monotonic() > deadline:
                raise _OutOfTime(passes[0])
            passes[0] += 1
            try:
                outputs = _trial_pass(model, packed(model, _values(model, rows, 0, size, positive)))
            except Exception:  # noqa: BLE001 - too long for a position table, too short for a crop: try another
                if failing_size_ends:
                    break
                continue
            if _usable(outputs):
                return size, positive
    return None


def _graph_sizes(model) -> list[int]:
    """The sizes, above 1 and at most the longest of LONGER_OPEN_DIMS, that the tensors of the model's
    functional graph hold fixed past the batch axis (RepeatVector's count, a Dense's units, a Reshape's
    length), ascending: the lengths an open dimension joined to one of them must take. Empty for a
    model without a functional graph."""
    from prunecli.structure import keras_graph

    try:
        graph_nodes = keras_graph.nodes(model)
    except keras_graph.GraphUnsupported:
        return []
    found = set()
    for node in graph_nodes:
        for tensor in node.output_tensors:
            found.update(d for d in tuple(getattr(tensor, "shape", ()) or ())[1:] if isinstance(d, int))
    return sorted(d for d in found if 1 < d <= LONGER_OPEN_DIMS[-1])


def _usable(outputs) -> bool:
    """Outputs a stand-in can be checked against: non-empty and finite. A stack of pooling layers can run
    on an input too short for it, its width reaching 0 and a global average over nothing giving NaN (a
    real tempo CNN at width 32: shrink's check then compared NaN with NaN and refused a correct model)."""
    import numpy as np
    from keras import tree

    arrays = [np.asarray(o) for o in tree.flatten(outputs)]
    return all(a.size > 0 and np.all(np.isfinite(a)) for a in arrays)


def packed(model, values: list):
    """`values` (one per input, as seeded_inputs gives them) in the structure the model is called with:
    a dict for named inputs (KerasHub backbones), the array itself for one input, else the list."""
    from prunecli.structure.keras_graph import input_structure

    struct = input_structure(model)
    if isinstance(struct, dict):
        by_name = {getattr(t, "name", ""): v for t, v in zip(model.inputs, values, strict=True)}
        return {
            key: by_name.get(getattr(t, "name", key), v) for (key, t), v in zip(struct.items(), values, strict=True)
        }
    return values if len(values) > 1 else values[0]
