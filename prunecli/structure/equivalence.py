"""Does a rebuilt model compute what the masked model computed? Inputs, comparison and timing.

Every step that rebuilds a model (neuron/filter shrink, head removal) proves the rebuilt model
equals the masked one on the run's data, or on seeded stand-ins (probes.py), before anything is
saved; one comparison serves them all, whatever structure the model's inputs and outputs have.
"""

from __future__ import annotations

import time

from prunecli.errors import InputError, PruneCliError

MAX_RELATIVE_DIFF = 1e-4  # largest output difference, relative to the largest output, a rebuild may make
MAX_PROBE_ELEMENTS = 1 << 20  # input values one check or timing feeds at once: a 10,000-step sequence model
# (a crop of 5,000 per side) gets a few examples, not 64 (17 GB on a real one)


TRACE_FROM_BATCHES = 4  # forward passes over which a traced call repays its trace
EAGER_INPUT_ELEMENTS = 1 << 16  # input values of one batch up to which an eager call's intermediate
# tensors stay small (a check batch holds up to MAX_PROBE_ELEMENTS: SpliceAI's, 16 times this, is traced)


def worth_tracing(batches, calls: int = 1) -> bool:
    """Whether a model's call on these input batches (each run `calls` times) should be traced
    (tf.function) rather than run eagerly: when the passes are enough to repay the trace, or when one
    batch holds more than EAGER_INPUT_ELEMENTS input values. Memory as well as time: Keras' eager call
    of a functional model holds every intermediate tensor until the call returns (SpliceAI's 39
    dilated convolutions on 32 x 10,100 positions: 5.8 GB peak eagerly, 1.1 GB traced; 3.2 s against
    2.1 s a call), while tracing a small model costs more than its passes (a six-block KerasHub
    decoder's two-pass equivalence check: 10 s traced, under 1 s eagerly)."""
    import numpy as np
    import tensorflow as tf

    values = max((sum(int(np.prod(t.shape)) for t in tf.nest.flatten(x)) for x in batches), default=0)
    return len(batches) * calls >= TRACE_FROM_BATCHES or values > EAGER_INPUT_ELEMENTS


def forward(model, batches, calls: int = 1) -> Forward:
    """The model's inference call for these batches (`Forward`), traced where `worth_tracing` says so."""
    return Forward(model, worth_tracing(batches, calls))


class Forward:
    """model(x, training=False) as one callable, traced (one tf.function, shapes relaxed, so that the
    passes' sizes share a trace) when `traced`. A model whose call cannot be traced (Python logic on
    tensor values in a custom layer) is run eagerly from its first failed call on (`traced` turns
    False): the fallback changes the cost, not the outputs. A model changed in place between calls
    keeps its function: variables are read at each call."""

    def __init__(self, model, traced: bool):
        import tensorflow as tf

        self.model = model
        self.traced = traced
        self._graph = tf.function(self._eager, reduce_retracing=True) if traced else None

    def _eager(self, x):
        return self.model(x, training=False)

    def __call__(self, x):
        import tensorflow as tf

        if self.traced:
            try:
                return self._graph(x)
            except (
                TypeError,
                ValueError,
                NotImplementedError,
                AttributeError,
                tf.errors.OperatorNotAllowedInGraphError,
            ):
                self.traced = False  # a call Keras runs only eagerly
        return self._eager(x)


class ShrinkVerificationError(PruneCliError):
    """The rebuilt model does not compute what the masked model computed (a bug: exit 1)."""


def example_inputs(model, batch: int, data_x=None, seed: int = 0, open_dim: int | None = None):
    """Inputs in the structure the model is called with: `batch` rows of the run's data (an array is
    repeated to fill them; a dict or list of arrays is taken as it is), else seeded stand-ins."""
    from prunecli.structure import probes

    if data_x is not None:
        if isinstance(data_x, (dict, list, tuple)):
            return data_x
        import numpy as np

        reps = -(-batch // len(data_x))
        return np.concatenate([data_x] * reps)[:batch]
    dims = {} if open_dim is None else {"open_dim": open_dim}
    return probes.packed(model, probes.seeded_inputs(model, batch, seed, **dims))


def fitting_batch(model, wanted: int, data_x=None) -> int:
    """`wanted`, or fewer examples when that many would feed more than MAX_PROBE_ELEMENTS input values
    (long open dimensions: probes.py sizes them so every layer applies); at least one."""
    import numpy as np

    from prunecli.structure import probes

    if data_x is not None and not isinstance(data_x, (dict, list, tuple)):
        per_example = int(np.prod(np.shape(data_x)[1:], dtype=np.int64))
    else:
        per_example = sum(int(np.prod(v.shape[1:], dtype=np.int64)) for v in probes.seeded_inputs(model, 1))
    return max(1, min(wanted, MAX_PROBE_ELEMENTS // max(per_example, 1)))


def _outputs(model, inputs) -> list:
    """The model's outputs on one batch (a check's, sized by `fitting_batch`), traced only where
    `worth_tracing` says so: one pass never repays a trace's time, so only a batch large enough for the
    eager call's intermediate tensors to matter is traced."""
    import numpy as np
    from keras import tree

    return [np.asarray(a, dtype=np.float64) for a in tree.flatten(forward(model, [inputs])(inputs))]


class UncheckableInputs(InputError):
    """The model being rebuilt does not run on the check's inputs, so the rebuild cannot be proved (exit 3)."""


def compare(reference, candidate, inputs) -> dict:
    """Largest absolute and relative (to the largest reference output) difference of two models.
    UncheckableInputs when the reference itself does not run on `inputs`: seeded stand-ins give every
    open dimension one length (probes.py), and some models need different ones (big-phoney's attention
    seq2seq: 20 characters beside one phone per decoder input; an internal error before)."""
    import numpy as np
    from keras import tree

    from prunecli.structure import probes

    try:
        ref = _outputs(reference, inputs)
    except Exception as exc:  # noqa: BLE001 - any failure of the unchanged model is the inputs', not the rebuild's
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        note = probes.search_note(reference)
        raise UncheckableInputs(
            f"the model does not run on the check's inputs ({type(exc).__name__}: {first}); with no --data they "
            "are stand-ins whose open dimensions all take one length"
            + (f" ({note})" if note else "")
            + ": give --data (the model's real inputs)"
        ) from exc
    got = _outputs(candidate, inputs)
    max_abs = max(float(np.max(np.abs(a - b))) for a, b in zip(ref, got, strict=True))
    scale = max(float(np.max(np.abs(a))) for a in ref)
    return {
        "samples": int(len(tree.flatten(inputs)[0])),
        "max_abs_diff": max_abs,
        "max_rel_diff": max_abs / scale if scale > 0 else max_abs,
    }


def check_equivalent(reference, candidate, inputs, what: str) -> dict:
    """`compare`, raising ShrinkVerificationError when `what` (the rebuilt model) is off by more than
    MAX_RELATIVE_DIFF: nothing is saved then."""
    result = compare(reference, candidate, inputs)
    if not result["max_rel_diff"] <= MAX_RELATIVE_DIFF:
        raise ShrinkVerificationError(
            f"{what} differs from the masked model by {result['max_rel_diff']:.2e} "
            f"(relative, limit {MAX_RELATIVE_DIFF:g}); nothing was saved"
        )
    return result


def latency_ms(model, inputs, budget_s: float = 2.0, max_repeats: int = 30) -> float:
    """Median wall time of one traced forward pass, in milliseconds."""
    import numpy as np
    import tensorflow as tf

    forward = tf.function(lambda xs: model(xs, training=False))
    arg = tf.nest.map_structure(tf.constant, inputs)
    for _ in range(2):
        tf.nest.map_structure(np.asarray, forward(arg))
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_repeats and (len(times) < 3 or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        tf.nest.map_structure(np.asarray, forward(arg))
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000.0)
