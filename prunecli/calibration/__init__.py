"""Calibrated one-shot pruning without retraining: Wanda, SparseGPT and layer-wise reconstruction.

`prune_calibrated(model, targets, calibration_x, config, progress)` prunes layer by layer on a few
hundred unlabelled examples (see oneshot.py); `reconstruct(...)` refits any method's survivors;
`take_examples(dataset, n)` picks the calibration inputs from a batched dataset, `split_examples` cuts
them from the examples held out for --normalize measured (`held_out_count`).
"""

from prunecli.calibration.capture import count_examples, split_examples, take_examples
from prunecli.calibration.oneshot import (
    CALIBRATED_METHODS,
    MEASURE_EXAMPLES,
    CalibrationResult,
    copies_fit,
    held_out_count,
    measures_allocation,
    measures_exponent,
    prune_calibrated,
    reconstruct,
    strategy_scores,
)

__all__ = [
    "CALIBRATED_METHODS",
    "MEASURE_EXAMPLES",
    "CalibrationResult",
    "copies_fit",
    "count_examples",
    "held_out_count",
    "measures_allocation",
    "measures_exponent",
    "prune_calibrated",
    "reconstruct",
    "split_examples",
    "strategy_scores",
    "take_examples",
]
