"""What a step of a run returns: its report sections and notes, and what it replaced.

Steps (scoring and masking, fine-tuning, shrinking, feature and layer removal, export) take plain
values and return a StepResult; only the run's orchestration (prunecli/run/) folds results into its
state. So no step writes into shared fields, and the flow of a run reads top to bottom in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class _Unchanged:
    """The value of a StepResult field the step did not replace (None is a real value: masks dropped)."""

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Any = _Unchanged()


@dataclass(frozen=True)
class StepResult:
    """sections: report sections this step adds ({"shrink": {...}}); notes: lines for the report;
    metrics: stage -> metrics measured inside the step (fine-tuning's "after_pruning");
    timings: phase -> seconds; model/targets/masks/data: replacements, or UNCHANGED."""

    sections: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)
    timings: Mapping[str, float] = field(default_factory=dict)
    model: Any = UNCHANGED
    targets: Any = UNCHANGED
    masks: Any = UNCHANGED
    data: Any = UNCHANGED

    @property
    def structure_changed(self) -> bool:
        """A step that returns a new model has changed the architecture (shrink, feature/layer removal)."""
        return self.model is not UNCHANGED
