"""Seeded stand-in inputs for a model, when there is no --data to run it on.

Shrink verification, latency timing, head pruning's check, layer scoring without data and the export
check all need "some inputs the model accepts". One builder serves them, so an integer input (token
ids, segment ids, masks) gets valid values everywhere, not only in the step that first met it.
"""

from __future__ import annotations

OPEN_DIM = 32  # size given to dimensions the model leaves open (None): short enough for any position table


LONGER_OPEN_DIMS = (256, 2048, 16384)  # tried in turn when the model cannot run at the first size
# or shorter: a learned position table of fewer than OPEN_DIM positions (a small GPT-2 or OPT)


def seeded_inputs(model, batch: int, seed: int = 0, open_dim: int = OPEN_DIM) -> list:
    """One array per model input, in `model.inputs` order: standard normal for float inputs; for integer
    (or bool) inputs, ones for a mask, ids in [0, 10) for token ids, [0, 2) otherwise (segment ids and
    the like); open dimensions become `open_dim`, or the first longer size the model runs on (a crop of
    5000 positions per side needs an input longer than 10000)."""
    return _values(model, batch, seed, _runnable_open_dim(model, open_dim))


def _values(model, batch: int, seed: int, open_dim: int) -> list:
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
            values.append(rng.standard_normal(shape).astype("float32" if dtype == "bfloat16" else dtype))
    return values


_RUNNABLE: dict[tuple[int, int], tuple] = {}  # (id(model), asked) -> (weak reference, the size that runs)


def _runnable_open_dim(model, wanted: int) -> int:
    """`wanted`, or the first other size a one-example forward pass of the model accepts with finite,
    non-empty outputs, found once per model: halvings of `wanted` (a position table shorter than it; a
    too-short input fails at once), then LONGER_OPEN_DIMS (a crop, a valid convolution or a pooling stack
    longer than it); `wanted` when the model has no open dimension or none of the sizes runs (the
    caller's own call then reports why)."""
    import weakref

    if not any(d is None for t in model.inputs for d in t.shape[1:]):
        return wanted
    key = (id(model), wanted)
    cached = _RUNNABLE.get(key)
    if cached is not None and cached[0]() is model:
        return cached[1]
    found = wanted
    shorter = [wanted >> k for k in range(1, wanted.bit_length())]
    for size in (wanted, *shorter, *(d for d in LONGER_OPEN_DIMS if d > wanted)):
        try:
            outputs = model(packed(model, _values(model, 1, 0, size)), training=False)
        except Exception:  # noqa: BLE001 - too long for a position table, too short for a crop: try another
            continue
        if _usable(outputs):
            found = size
            break
    _RUNNABLE[key] = (weakref.ref(model, lambda _ref: _RUNNABLE.pop(key, None)), found)
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
