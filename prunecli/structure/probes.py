"""Seeded stand-in inputs for a model, when there is no --data to run it on.

Shrink verification, latency timing, head pruning's check, layer scoring without data and the export
check all need "some inputs the model accepts". One builder serves them, so an integer input (token
ids, segment ids, masks) gets valid values everywhere, not only in the step that first met it.
"""

from __future__ import annotations

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
    `open_dim`, or the first longer size the model runs on (a crop of 5000 positions per side needs an
    input longer than 10000)."""
    size, positive = _runnable(model, open_dim)
    return _values(model, batch, seed, size, positive)


def _values(model, batch: int, seed: int, open_dim: int, positive: bool = False) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    values = []
    for t in model.inputs:
        name = getattr(t, "name", "") or ""
        shape = (batch,) + tuple(open_dim if d is None else int(d) for d in t.shape[1:])
        dtype = str(t.dtype)
        if "int" in dtype or "bool" in dtype:
            high = 10 if "token" in name or name == "ids" else 2
            v = np.ones(shape) if "mask" in name else rng.integers(0, high, size=shape)
            values.append(v.astype(dtype))
        else:
            v = rng.standard_normal(shape)
            values.append((np.abs(v) if positive else v).astype("float32" if dtype == "bfloat16" else dtype))
    return values


_RUNNABLE: dict[tuple[int, int], tuple] = {}  # (id(model), asked) -> (weak reference, size, positive)


def _runnable(model, wanted: int) -> tuple[int, bool]:
    """(size, positive): the open-dimension size and the sign of the float stand-ins on which a trial
    forward pass of the model gives finite, non-empty outputs, found once per model. Sizes: `wanted`,
    halvings of it (a position table shorter than it; a too-short input fails at once), then
    LONGER_OPEN_DIMS (a crop, a valid convolution or a pooling stack longer than it); at each, standard
    normal values, then their absolute values (an input the model takes the square root or logarithm
    of). A pass feeds PROBE_ROWS examples, or fewer for long inputs. (`wanted`, False) when none runs
    (the caller's own call then reports why)."""
    import weakref

    import numpy as np

    key = (id(model), wanted)
    cached = _RUNNABLE.get(key)
    if cached is not None and cached[0]() is model:
        return cached[1], cached[2]
    found = (wanted, False)
    if any(d is None for t in model.inputs for d in t.shape[1:]):
        shorter = [wanted >> k for k in range(1, wanted.bit_length())]
        sizes = (wanted, *shorter, *(d for d in LONGER_OPEN_DIMS if d > wanted))
    else:
        sizes = (wanted,)
    floats = any(not ("int" in str(t.dtype) or "bool" in str(t.dtype)) for t in model.inputs)
    tries = [(size, positive) for size in sizes for positive in ((False, True) if floats else (False,))]
    for size, positive in tries:
        if len(tries) == 1:  # one choice: the caller's own call reports whatever this pass would find
            break
        per_example = sum(int(np.prod(v.shape[1:], dtype=np.int64)) for v in _values(model, 1, 0, size))
        rows = max(1, min(PROBE_ROWS, PROBE_ELEMENTS // max(per_example, 1)))
        try:
            outputs = model(packed(model, _values(model, rows, 0, size, positive)), training=False)
        except Exception:  # noqa: BLE001 - too long for a position table, too short for a crop: try another
            continue
        if _usable(outputs):
            found = (size, positive)
            break
    _RUNNABLE[key] = (weakref.ref(model, lambda _ref: _RUNNABLE.pop(key, None)), *found)
    return found


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
