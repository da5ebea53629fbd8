"""Masks built and applied a chunk of layers at a time, so memory holds one chunk's scores, not the model's.

A one-shot prune that scores every tensor first holds a float32 copy of all prunable weights (the
scores) and, while selecting, the selection's own concatenated copy of them: on a 100M-parameter
model that is 0.8 GB above what Keras needs to load and save it. Whenever each layer's mask depends
only on that layer's scores and a count decided for it (scope=layer, or a threshold; element, block
or N:M granularity; no tied channel sets), the policy gives the same masks whether it sees all layers
at once or a few at a time, so this module feeds it consecutive chunks of targets (at most
CHUNK_ELEMENTS weights each, or one larger tensor alone), applies each chunk's masks and drops its
scores before scoring the next. A global LAMP or ERK ranking (the default) is such a count per layer:
policy.layer_counts decides it first, from the scores computed again chunk by chunk (LAMP reads them
twice: selection/lamp.py). Global ranking by raw or mean-normalised scores and tied neuron sets
compare positions across layers and keep the all-at-once path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, MutableMapping

from prunecli.config import PruneConfig
from prunecli.selection import policy

CHUNK_ELEMENTS = 8 << 20  # 8M scores: 32 MiB of float32 per chunk, a few selection calls per model

# Methods whose scores for a target depend on that target's weights only, so they can be computed a
# chunk at a time (`random` seeds each tensor by its position in the list, and data-driven methods read
# the data once for all targets: both are scored once, then masked chunk by chunk from those scores).
PER_LAYER_METHODS = ("magnitude", "l1-norm", "l2-norm", "neuron-mean")


class PackedMasks(MutableMapping):
    """{target name: bool keep-mask}, held as bits (np.packbits): 1/8 of the bytes of bool tensors.

    Masks outlive masking (fine-tuning holds them, the result returns them): as bool tensors they
    are a quarter of the float32 weights' size again, 0.5 GB on a 2 GB model. Reading an entry gives
    the same bool tensor of the target's shape back.
    """

    def __init__(self):
        self._bits: dict[str, tuple] = {}

    def __setitem__(self, name: str, mask) -> None:
        import numpy as np

        array = np.asarray(mask, dtype=bool)
        self._bits[name] = (np.packbits(array, axis=None), array.shape)

    def __getitem__(self, name: str):
        import numpy as np
        import tensorflow as tf

        bits, shape = self._bits[name]
        count = int(np.prod(shape, dtype=np.int64))
        return tf.constant(np.unpackbits(bits, count=count).astype(bool).reshape(shape))

    def __delitem__(self, name: str) -> None:
        del self._bits[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._bits)

    def __len__(self) -> int:
        return len(self._bits)


def chunks(targets: list, limit: int = CHUNK_ELEMENTS) -> list[list]:
    """Consecutive runs of targets holding at most `limit` weights each (a larger tensor goes alone)."""
    out: list[list] = []
    current: list = []
    held = 0
    for t in targets:
        size = int(t.size)
        if current and held + size > limit:
            out.append(current)
            current, held = [], 0
        current.append(t)
        held += size
    if current:
        out.append(current)
    return out


def layer_independent(config: PruneConfig, model=None) -> bool:
    """Whether every layer's mask depends on its own scores and a count decided beforehand only, so
    chunks give the all-at-once masks exactly.

    scope=layer and thresholds decide per layer; a global LAMP or ERK ranking is a count per layer
    (policy.allocated_per_layer); a global ranking of raw or mean-normalised scores is not. Neuron
    granularity with the model ties layers whose channels meet in residual merges into sets ranked
    together (selection/tied.py), so it is not chunked either.
    """
    kind = config.granularity.kind
    if kind not in ("element", "block", "nm", "neuron"):
        return False
    if kind == "neuron" and model is not None:
        return False
    return kind == "nm" or config.scope == "layer" or config.threshold is not None or policy.allocated_per_layer(config)


def mask_in_chunks(
    targets: list,
    score_chunk: Callable[[list], dict],
    level: str,
    config: PruneConfig,
    apply: Callable[[list, list], None],
    limit: int = CHUNK_ELEMENTS,
    done: Callable[[list], None] | None = None,
) -> policy.MaskSet:
    """Score, select and apply masks chunk by chunk; returns the same MaskSet as policy.build_masks
    on all targets (masks, requested sparsities and notes, in target order) when
    `layer_independent(config)` holds.

    score_chunk(chunk) -> {target.name: score} for those targets only: a per-layer strategy's own
    function on the chunk (magnitude, norms), or the chunk's part of scores computed once. A global
    LAMP or ERK count is decided first, which calls score_chunk on every chunk again (LAMP: twice),
    so it must give the same scores each time; done(chunk), called once a chunk's masks are applied,
    may drop that chunk's held scores. apply(variables, masks) zeroes the masked weights
    (kernels.apply_masks). The masks are kept as bits (PackedMasks), so what outlives masking is
    1/32 of the weights' size.
    """
    result = policy.MaskSet(masks=PackedMasks())
    counts = None
    if policy.allocated_per_layer(config):

        def scores_of():
            for chunk in chunks(targets, limit):
                scores = score_chunk(chunk)
                yield from ((t, scores[t.name]) for t in chunk)

        counts = policy.layer_counts(targets, scores_of, level, config)
    for chunk in chunks(targets, limit):
        scores = score_chunk(chunk)
        part = policy.build_masks(chunk, scores, level, config, counts=counts)
        del scores
        apply([t.variable for t in chunk], [part.masks[t.name] for t in chunk])
        if done is not None:
            done(chunk)
        result.masks.update(part.masks)
        result.requested.update(part.requested)
        result.notes.extend(part.notes)
        result.selection_path = result.selection_path or part.selection_path
    return result
