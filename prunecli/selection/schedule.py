"""Pruning schedules: when the masks change during fine-tuning, and to which sparsity.

Pure Python (no TensorFlow), so the maths is easy to test. A schedule works on the global training
step t in [0, total_steps) and maps any final sparsity s_f (the run's, or a per-layer override's) to
the sparsity wanted at an update, so every layer follows the same curve and all end exactly at s_f:

* oneshot: the pipeline pruned before training; masks never change.
* iterative (--steps K): K pruning rounds spread evenly over the training steps (any K with any
  number of epochs, as long as there are K steps), each removing the same fraction of
  the weights still alive (density d_k = d_i * (d_f / d_i) ** (k / K), as in iterative magnitude
  pruning, Han et al. 2015 / Frankle & Carbin 2019), with fine-tuning between rounds.
* polynomial: Zhu & Gupta 2017, s_t = s_f + (s_i - s_f) * (1 - t / R) ** 3, masks updated every
  `frequency` steps over a ramp of R steps (the first two thirds of the epochs), then held.
* dynamic: the same ramp, but masks are re-scored from dense shadow weights (DPF, Lin et al. 2020),
  so pruned weights can grow back; the masks are frozen at the end of the ramp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from prunecli.errors import ConfigError

RAMP_SHARE = 2 / 3  # share of the epochs over which polynomial/dynamic schedules raise the sparsity
UPDATES_PER_RAMP = 16  # about how many mask updates a polynomial/dynamic ramp makes


@dataclass(frozen=True)
class Schedule:
    kind: str
    initial_sparsity: float
    total_steps: int
    update_steps: tuple[int, ...]  # steps (before which) the masks are recomputed, ascending
    ramp_steps: int  # the step at which the final sparsity is reached; masks are fixed from then on
    rounds: int = 1  # iterative only

    @property
    def frozen_from(self) -> int:
        """The first step at which the masks are final (early stopping may act from then on)."""
        return self.update_steps[-1] if self.update_steps else 0

    def sparsity_at(self, step: int, final: float) -> float:
        """The sparsity the masks should have at `step` for a layer whose final sparsity is `final`."""
        start = min(self.initial_sparsity, final)
        if self.kind == "oneshot" or step >= self.ramp_steps:
            return final
        if self.kind == "iterative":
            done = sum(1 for s in self.update_steps if s <= step)
            density = (1.0 - start) * ((1.0 - final) / (1.0 - start)) ** (done / self.rounds)
            return 1.0 - density if done < self.rounds else final
        progress = max(step, 0) / self.ramp_steps
        return final + (start - final) * (1.0 - progress) ** 3


def build(kind: str, epochs: int, steps_per_epoch: int, initial_sparsity: float = 0.0, rounds: int = 3) -> Schedule:
    """The schedule for a run of `epochs` epochs of `steps_per_epoch` steps.

    The final sparsity is always reached at an update step inside the run, so training ends there.
    """
    total = epochs * steps_per_epoch
    if kind == "oneshot":
        return Schedule(kind, initial_sparsity, total, (), 0)
    if kind == "iterative":
        if rounds > total:
            raise ConfigError(
                f"--schedule iterative --steps {rounds} needs at least {rounds} training steps; this run has {total}"
            )
        starts = tuple((k * total) // rounds for k in range(rounds))
        return Schedule(kind, initial_sparsity, total, starts, starts[-1], rounds)
    if kind in ("polynomial", "dynamic"):
        ramp_epochs = max(1, math.floor(epochs * RAMP_SHARE))
        ramp = ramp_epochs * steps_per_epoch
        if ramp >= total:  # one epoch: the last update must still leave a step of training after it
            ramp = max(total - 1, 0)
        frequency = max(1, math.ceil(ramp / UPDATES_PER_RAMP))
        updates = tuple(range(0, ramp, frequency)) + (ramp,)
        return Schedule(kind, initial_sparsity, total, updates, ramp)
    raise ValueError(f"unknown schedule {kind!r}")
