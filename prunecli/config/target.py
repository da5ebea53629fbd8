"""`--target KIND=VALUE`: what the shrunk model must fit, parsed and checked without TensorFlow.

    params=0.3     at most 30% of the dense model's parameters (model.count_params())
    flops=0.5      at most half of its multiply-adds per example, as structure/flops.py counts them
    size=200KB     a saved file of at most 200 KB (KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024)
    latency=0.5    at most half of the dense model's measured forward time (Keras, at --batch-size, on
    latency=3ms    this machine), or at most 3 ms (also s, us); run/target.py searches for it

A target is a budget the run allocates channels to (selection/budget.py), never a sparsity: it implies
neuron granularity and --shrink, and ranks channels globally. The run reports what it reached.
`-g transformer` splits a target across a Transformer's heads, FFN units and whole blocks
(removal/split.py); it needs one. size= and latency= become a params= fraction (run/target.py), each
latency candidate with its own split searched.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from prunecli.config.fields import PER_LAYER_BUDGETS
from prunecli.errors import ConfigError

TARGET_KINDS = ("params", "flops", "size", "latency")
FRACTION_KINDS = ("params", "flops")
TOLERANCE = 0.02  # the run lands in [requested * (1 - TOLERANCE), requested] of the dense model
LATENCY_TOLERANCE = 0.05  # latency= aims for [requested * (1 - this), requested]: a timed median moves
# by a few percent between runs on a shared machine, more than TOLERANCE (bench/TARGET.md)
_TIME_UNITS = {"ms": 1.0, "s": 1000.0, "us": 1e-3}
MAX_ROUND_TO = 1024
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclass(frozen=True)
class TargetSpec:
    """A parsed --target: `kind` (params | flops | size | latency) and `value`, a fraction of the dense
    model for params and flops, a number of bytes for size; for latency a fraction of the dense model's
    measured time, or milliseconds when `absolute`."""

    kind: str
    value: float
    absolute: bool = False

    def __str__(self) -> str:
        if self.kind == "size":
            return f"size={int(self.value)}B"
        return f"{self.kind}={self.value:g}{'ms' if self.absolute else ''}"


def parse_target(text: str) -> TargetSpec:
    """'params=0.3' -> TargetSpec('params', 0.3); one-line ConfigError for anything else."""
    raw = str(text).strip()
    kind, sep, value = raw.partition("=")
    kind, value = kind.strip().lower(), value.strip()
    if not sep or kind not in TARGET_KINDS:
        raise ConfigError(f"--target takes KIND=VALUE with KIND one of {', '.join(TARGET_KINDS)}, got {raw!r}")
    if kind == "latency":
        return _parse_latency(value)
    if kind in FRACTION_KINDS:
        try:
            fraction = float(value)
        except ValueError:
            raise ConfigError(f"--target {kind}= needs a fraction of the dense model, got {value!r}") from None
        if not (math.isfinite(fraction) and 0.0 < fraction < 1.0):
            raise ConfigError(f"--target {kind}= must be a fraction in (0, 1), got {value!r}")
        return TargetSpec(kind, fraction)
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", value.lower())
    if not m or m.group(2) not in _UNITS:
        raise ConfigError(f"--target size= needs a file size such as 200KB, 1.5MB or 300000, got {value!r}")
    size = float(m.group(1)) * _UNITS[m.group(2)]
    if not (math.isfinite(size) and size >= 1):
        raise ConfigError(f"--target size= must be at least one byte, got {value!r}")
    return TargetSpec("size", float(math.floor(size)))


def _parse_latency(value: str) -> TargetSpec:
    """'0.5' (a fraction of the dense model's latency) or '3ms' / '0.003s' / '900us' (milliseconds)."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", value.lower())
    if not m or (m.group(2) and m.group(2) not in _TIME_UNITS):
        raise ConfigError(
            f"--target latency= needs a fraction of the dense model's latency (0.5) or a time (3ms), got {value!r}"
        )
    number = float(m.group(1))
    if not m.group(2):
        if not (math.isfinite(number) and 0.0 < number < 1.0):
            raise ConfigError(f"--target latency= must be a fraction in (0, 1) or a time such as 3ms, got {value!r}")
        return TargetSpec("latency", number)
    ms = number * _TIME_UNITS[m.group(2)]
    if not (math.isfinite(ms) and ms > 0):
        raise ConfigError(f"--target latency= must be a positive time, got {value!r}")
    return TargetSpec("latency", ms, absolute=True)


def check_target(c) -> None:
    """The combinations --target and --round-to make sense in, each refused in one line otherwise."""
    if c.round_to is not None:
        if c.target is None:
            raise ConfigError("--round-to rounds the channel counts --target allocates; give --target")
        if not 1 <= c.round_to <= MAX_ROUND_TO:
            raise ConfigError(f"round_to must be in [1, {MAX_ROUND_TO}], got {c.round_to}")
    if c.granularity.kind == "transformer" and c.target is None:
        raise ConfigError(
            "-g transformer spends a budget across heads, FFN units and blocks: give --target params=F, flops=F,"
            " size= or latency="
        )
    if c.target is None:
        return
    parse_target(c.target)  # a malformed target is refused here, before any work
    refused = [
        (c.sparsity is not None, "--sparsity (the target decides how much goes)"),
        (c.threshold is not None, "--threshold (the target decides how much goes)"),
        (
            c.granularity.kind not in ("neuron", "hidden", "head", "transformer"),
            f"granularity {c.granularity} (a target removes whole channels: neuron, head, transformer, or hidden"
            " on KerasHub decoders)",
        ),
        (c.remove_heads is not None, "--remove-heads (the target decides how many heads go)"),
        (c.engine != "native", f"--engine {c.engine} (it prunes elements to a sparsity)"),
        (not c.shrink, "shrink off (the target is the size of the shrunk model)"),
        (c.scope == "layer", "--scope layer (a target ranks channels across layers)"),
        (c.normalize in PER_LAYER_BUDGETS, f"--normalize {c.normalize} (a target ranks channels: lamp, mean or none)"),
        (c.schedule != "oneshot", f"--schedule {c.schedule} (the allocation is made once: oneshot)"),
        (c.auto, "--auto (it chooses per-layer sparsities itself)"),
        (
            bool(c.quantize) and parse_target(c.target).kind == "size",
            f"--quantize {c.quantize} for size= (the size is allocated on the float file's bytes per weight; "
            "give params= with the share the quantized file should hold, or drop --quantize)",
        ),
    ]
    for failed, what in refused:
        if failed:
            raise ConfigError(f"--target cannot be combined with {what}")
