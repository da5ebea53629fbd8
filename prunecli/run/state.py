"""RunState: what one run has so far. Frozen: the orchestration folds each step's StepResult into a
new state (`after`), so every change to the model, targets, masks or data is visible in run/."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prunecli.config import PruneConfig
from prunecli.results import UNCHANGED, StepResult


@dataclass(frozen=True)
class RunState:
    """model/source: the loaded (or rebuilt) Keras model and what the file was (io.models.Source);
    data/task: the loaded --data and the loss/metrics inferred for it (None without --data);
    targets/masks: the prunable weights and the MaskSet chosen for them; compiled_optimizer: the
    file's own optimizer, taken before evaluation recompiles the model (fine-tuning starts from it);
    read: the census (structure/census.py) of the weights taken by the last step that read them all
    (load's finiteness check, or save's), each variable's non-zeros as they were then. It describes
    the weights only until a step changes one: `after` drops it with any step that replaces the model
    or the masks, and the orchestration reads it only where no step has changed a weight since (the
    FLOPs and already-sparse counts of the dense model; the FLOPs and report of the model written)."""

    config: PruneConfig
    model: Any
    source: Any
    data: Any = None
    task: Any = None
    compiled_optimizer: Any = None
    targets: tuple = ()
    masks: Any = None
    structure_changed: bool = False
    loaded_class: str = ""  # the class of the model the file held: the written one is compared with it
    notes: tuple[str, ...] = ()
    metrics: Mapping[str, Any] = field(default_factory=dict)
    sections: Mapping[str, Any] = field(default_factory=dict)
    read: Any = None

    def after(self, result: StepResult) -> RunState:
        """This state with a step's result folded in: replacements taken, sections/notes/metrics added."""
        changes: dict[str, Any] = {
            "notes": self.notes + tuple(n for n in result.notes if n not in self.notes),
            "metrics": {**self.metrics, **result.metrics},
            "sections": {**self.sections, **result.sections},
        }
        for name in ("model", "targets", "masks", "data"):
            value = getattr(result, name)
            if value is not UNCHANGED:
                changes[name] = tuple(value) if name == "targets" else value
        if result.structure_changed:
            changes["structure_changed"] = True
        if result.model is not UNCHANGED or result.masks is not UNCHANGED:  # weights changed: counts stale
            changes["read"] = None
        return dataclasses.replace(self, **changes)

    def with_read(self, census) -> RunState:
        """This state with `census` of its weights as they are now (read by load's or save's check)."""
        return dataclasses.replace(self, read=census)

    def with_config(self, config: PruneConfig) -> RunState:
        return dataclasses.replace(self, config=config)


@dataclass
class PruneResult:
    """What a prune run gives back: the report, the pruned model and its masks, and where it was written."""

    report: Any
    model: Any
    masks: Any
    output_path: Any
