"""One read of a model's weights: each variable's non-zero count, and the first that is NaN or Inf.

A run reads every weight whole where a check needs it anyway: finiteness when the model is loaded and
again when it is saved (io/models). The counts taken in that same read are what the FLOPs section
(flops.count), the already-sparse note, the per-layer statistics and the whole-model totals count;
they read them from the census instead of reading the weights again (on ResNet50, 25.6M parameters,
each extra read cost 50-110 ms of a 5 s run, and a run made five of them).

A census describes the weights as they were when it was taken: the run hands it on as a value (the
run state's `read`, dropped by the first step that changes a weight) to what reads the same weights
before they change. It holds the variables it read, so a variable's identity (its id) is its own for
as long as the census lives; a variable it did not read is counted where it lies (`nonzeros`).
"""

from __future__ import annotations

from typing import Any


def count_nonzeros(variable) -> int:
    """Non-zero entries of a variable (or array), read in place (runtime.weight_values)."""
    import numpy as np

    from prunecli.runtime import weight_values

    return int(np.count_nonzero(weight_values(variable)))


class Census:
    """Take it with `Census(model.weights)`: every variable read once; `nonzeros(v)` its count (any other
    variable is counted now), `nonfinite` the first floating-point variable holding NaN or Inf (or None)."""

    def __init__(self, variables):
        import numpy as np

        from prunecli.runtime import weight_values

        self._read: dict[int, tuple[Any, int]] = {}  # id(variable) -> (the variable, its non-zeros)
        self.nonfinite = None
        for variable in variables:
            if id(variable) in self._read:
                continue
            values = weight_values(variable)
            self._read[id(variable)] = (variable, int(np.count_nonzero(values)))
            if self.nonfinite is None and values.dtype.kind == "f" and not np.isfinite(values).all():
                self.nonfinite = variable

    def __len__(self) -> int:
        return len(self._read)

    def nonzeros(self, variable) -> int:
        """The variable's non-zero count as read, or counted now if this census did not read it."""
        entry = self._read.get(id(variable))
        if entry is not None and entry[0] is variable:
            return entry[1]
        return count_nonzeros(variable)


def nonzeros(variable, census: Census | None = None) -> int:
    """Non-zero entries of `variable`: from `census` when it read it, else read now."""
    return census.nonzeros(variable) if census is not None else count_nonzeros(variable)
