"""Checks of a run's settings that need neither TensorFlow nor the method registry, so a bad value or
combination fails in one line before any work. The checks that need the registered scoring methods
live one floor up, in prunecli.scoring.checks.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from prunecli.config.fields import (
    BATCH_SCORED_METHODS,
    CALIBRATED_METHODS,
    ENGINES,
    EXPORT_FORMATS,
    FEATURE_SCORE_OF_METHOD,
    FEATURE_SCORES,
    GRADUAL,
    LOSS_FEATURE_SCORES,
    LR_SCHEDULES,
    MEASURED,
    NORMALIZE_CHOICES,
    PER_LAYER_BUDGETS,
    QAT_CHOICES,
    QAT_MODES,
    QUANTIZE_MODES,
    SCHEDULES,
    SCOPES,
    STRATEGIES,
    STRUCTURAL_KINDS,
    UNIT_METHODS,
    PruneConfig,
)
from prunecli.config.target import check_target
from prunecli.errors import ConfigError, OutputError

MAX_SEED = 2**32 - 1  # NumPy and TensorFlow seeds are unsigned 32-bit
# Upper bounds of integer options: values far beyond any real run, which would otherwise be found by
# TensorFlow (overflow, allocation) or run for ever (--repeats 10**9).
INT_LIMITS = {
    "batch_size": 2**20,
    "score_batches": 2**31 - 1,
    "calibration_samples": 2**20,
    "epochs": 100_000,
    "early_stopping": 100_000,
    "schedule_steps": 1_000,
    "repeats": 1_000,
    "keep_features": 2**31 - 1,
    "remove_layers": 100_000,
    "remove_heads": 100_000,
    "seq_len": 2**24,
    "worker_wait": 7 * 24 * 3600,
}


def _check_destination(path: str | None, what: str) -> None:
    """A report path that cannot be written fails before the run, not after minutes of pruning."""
    if not path or path == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {p} is a directory")
    if not p.parent.is_dir():  # as given: an absolute path may be longer than the system takes (PATH_MAX)
        raise OutputError(f"{what} directory does not exist: {p.parent}")


def _check_numbers(c: PruneConfig) -> None:
    """Every number option is finite and in range, here and not in TensorFlow: --lr inf or -t nan
    once wrote a NaN model or pruned nothing, silently; --repeats 10**9 ran for ever."""
    for f in fields(PruneConfig):
        value = getattr(c, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{f.name} must be a finite number, got {value}")
    if not 0 <= c.seed <= MAX_SEED:
        raise ConfigError(f"seed must be in [0, {MAX_SEED}], got {c.seed}")
    for name, limit in INT_LIMITS.items():
        value = getattr(c, name, None)
        if value is not None and value > limit:
            raise ConfigError(f"{name} must be at most {limit}, got {_short(value)}")
    for name in ("score_batches", "keep_features", "remove_layers", "remove_heads", "seq_len"):
        value = getattr(c, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    for name, kind in (("remove_heads", "head"), ("keep_features", "input"), ("remove_layers", "layer")):
        if getattr(c, name) is not None and c.granularity.kind != kind:  # else silently ignored
            raise ConfigError(f"--{name.replace('_', '-')} needs --granularity {kind}")
    if c.remove_heads is not None and (c.sparsity is not None or c.threshold is not None):
        raise ConfigError("give either --remove-heads or --sparsity/--threshold, not both")


def _check_hidden(c: PruneConfig) -> None:
    """-g hidden deletes residual channels at once: a masked model fine-tuned would grow them back
    through the token embedding and norm scales, which hold no mask (removal/hidden.py)."""
    if c.granularity.kind != "hidden":
        return
    if not c.shrink:
        raise ConfigError("-g hidden removes residual channels for real: add --shrink")
    if c.schedule != "oneshot":
        raise ConfigError("-g hidden removes residual channels at once: use --schedule oneshot")


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 24 else f"{text[:10]}...({len(text)} digits)"


OPTIMIZER_NUMBERS = (
    "learning_rate",
    "momentum",
    "weight_decay",
    "beta_1",
    "beta_2",
    "epsilon",
    "rho",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "ema_momentum",
    "initial_accumulator_value",
)
OPTIMIZER_FLAGS = ("nesterov", "amsgrad", "centered", "use_ema")


@functools.cache
def yaml_loader():
    """PyYAML's SafeLoader (no tags that build Python objects) reading `1e-4` as the float YAML 1.2 and
    JSON mean: PyYAML follows YAML 1.1, whose floats need a dot, and read it as text, so a layer rule
    `hidden: 5e-1`, a data spec's `scale: 1e-2` or a JSON spec's exponent was refused as not a number.
    Used for recipes and data specs."""
    import yaml

    class NumberLoader(yaml.SafeLoader):
        pass

    exponent = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    NumberLoader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789"))
    return NumberLoader


def parse_optimizer(text: str) -> tuple[str, dict]:
    """'sgd' or 'sgd:momentum=0.9,nesterov=true' -> ('sgd', {'momentum': 0.9, 'nesterov': True}).
    Config validation checks the options with it; fine-tuning builds the optimizer from it."""
    name, _, rest = str(text).partition(":")
    options = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--optimizer options are key=value pairs, got {item!r}")
        options[key.strip()] = _option_value(value.strip(), key.strip())
    return name.strip(), options


def _option_value(text: str, key: str):
    """A number as Python reads it (YAML 1.1 took `1e-4` for text, so `weight_decay=1e-4` was refused,
    and `1:30` for the base-60 number 90), else true/false or a name as YAML reads it."""
    import yaml

    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--optimizer {key}: {text!r} is not a value") from exc
    yaml_only_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return text if yaml_only_number else value  # .nan and .inf stay numbers: the range check names them


def _check_optimizer(text: str) -> None:
    """--optimizer NAME:key=value,...: numbers finite (learning_rate=.nan wrote a NaN model), flags
    true/false, no lists or mappings: the types Keras's optimizers take, checked before any work."""
    _name, options = parse_optimizer(text)
    for key, value in options.items():
        if key in OPTIMIZER_FLAGS:
            if not isinstance(value, bool):
                raise ConfigError(f"--optimizer {key} must be true or false, got {value!r}")
            continue
        if key in OPTIMIZER_NUMBERS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"--optimizer {key} must be a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"--optimizer {key} must be a finite number, got {value}")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in OPTIMIZER_NUMBERS:
            if value < 0 or (key == "learning_rate" and value == 0) or abs(value) > 1e6:
                raise ConfigError(f"--optimizer {key} is out of range, got {value}")
        if isinstance(value, (list, dict)) or value is None:
            raise ConfigError(f"--optimizer {key} must be a number, true/false or a name, got {value!r}")


def validate(c: PruneConfig) -> None:
    """Check option values and combinations; every failure is a one-line ConfigError. The method's own
    checks (is it registered, does it need --data) are prunecli.scoring.checks.check_method's."""
    _check_destination(c.report, "report")
    _check_destination(c.markdown, "markdown summary")
    _check_amount(c)
    _check_choices(c)
    _check_ranges(c)
    _check_numbers(c)
    _check_hidden(c)
    if c.optimizer:
        _check_optimizer(c.optimizer)
    if c.feature_score is not None and c.feature_score not in FEATURE_SCORES:
        raise ConfigError(f"feature_score must be one of {', '.join(FEATURE_SCORES)}, got {c.feature_score!r}")
    _check_auto(c)
    _check_finetuning(c)
    _check_exports(c)
    _check_quantize(c)
    _check_strategy(c)
    check_target(c)  # before tfmot's: a target is refused there as a target
    if c.engine == "tfmot":
        _check_tfmot(c)
    _check_calibration(c)
    _check_unused_data_settings(c)  # after the values' own checks: a bad value is said as such first
    _check_score_batches(c)
    _check_calibration_samples(c)
    _check_measured(c)
    _check_measured_heads(c)
    _check_unit_scores(c)


def _check_amount(c: PruneConfig) -> None:
    """How much is pruned: a sparsity, a threshold or an N:M pattern, one of them."""
    if c.sparsity is not None and not 0.0 <= c.sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {c.sparsity!r}")
    if c.sparsity is not None and c.threshold is not None:
        raise ConfigError("give either --sparsity or --threshold, not both")
    if c.granularity.kind == "nm" and (c.sparsity is not None or c.threshold is not None):
        raise ConfigError("N:M granularity fixes the sparsity at 1 - N/M; drop --sparsity/--threshold")
    if c.threshold is not None and c.threshold != "mean" and c.threshold < 0:
        raise ConfigError(f"threshold must be >= 0, got {c.threshold:g}")


def _check_choices(c: PruneConfig) -> None:
    """Options that name one of a fixed set (a recipe or PRUNECLI_* value is not checked by click)."""
    if c.scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {c.scope!r}")
    if c.normalize not in NORMALIZE_CHOICES:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZE_CHOICES)}, got {c.normalize!r}")
    if c.schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {c.schedule!r}")
    if c.engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {c.engine!r}")
    if c.normalize in PER_LAYER_BUDGETS and (c.scope == "layer" or c.threshold is not None):
        # a choice the run would not read: each layer then loses its own share, ranked alone
        raise ConfigError(
            f"--normalize {c.normalize} shares one sparsity budget out among the layers, which only --scope global"
            f" without --threshold ranks together; with {'--threshold' if c.threshold is not None else '--scope layer'}"
            " each layer is pruned on its own"
        )


def _check_ranges(c: PruneConfig) -> None:
    """Fractions, counts, penalties and fine-tuning settings, each in the range where it means something."""
    if not 0.0 <= c.min_keep <= 1.0:
        raise ConfigError(f"min_keep must be in [0, 1], got {c.min_keep:g}")
    if not 0.0 <= c.initial_sparsity < 1.0:
        raise ConfigError(f"initial_sparsity must be in [0, 1), got {c.initial_sparsity!r}")
    if c.initial_sparsity > 0 and c.sparsity is not None and c.initial_sparsity > c.sparsity:
        raise ConfigError(
            f"--initial-sparsity {c.initial_sparsity:g} is above --sparsity {c.sparsity:g}: a gradual schedule"
            " rises from the first to the second"
        )
    if not 0.0 <= c.val_split < 1.0:
        raise ConfigError(f"val_split must be in [0, 1), got {c.val_split:g}")
    for o in c.overrides:
        if o.sparsity is not None and not 0.0 <= o.sparsity < 1.0:
            raise ConfigError(f"override sparsity for {o.pattern!r} must be in [0, 1), got {o.sparsity!r}")
    for name in ("batch_size", "schedule_steps", "repeats", "worker_wait"):
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(c, name)}")
    for name in ("epochs", "early_stopping"):
        if getattr(c, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(c, name)}")
    if not (c.l1 >= 0 and c.l2 >= 0):  # written so that NaN fails too
        raise ConfigError("l1 and l2 penalties must be >= 0")
    if c.learning_rate is not None and not c.learning_rate > 0:
        raise ConfigError(f"learning_rate must be > 0, got {c.learning_rate:g}")
    if c.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {c.lr_schedule!r}")
    if c.distill_temperature is not None and not c.distill_temperature > 0:
        raise ConfigError(f"distill temperature must be > 0, got {c.distill_temperature:g}")
    if not 0.0 <= c.distill_weight <= 1.0:  # written so that NaN fails too
        raise ConfigError(f"distill_weight must be in [0, 1], got {c.distill_weight:g}")
    if c.teacher is not None and c.distill_temperature is None:
        raise ConfigError("--teacher is the teacher of --distill; add --distill")
    if c.distill_temperature is not None and c.epochs < 1:
        raise ConfigError("--distill fine-tunes against the unpruned model; give --epochs and --data")
    _check_unused_training(c)
    if c.max_accuracy_drop is not None and not c.max_accuracy_drop >= 0:
        raise ConfigError("max_accuracy_drop must be >= 0")


def _check_unused_training(c: PruneConfig) -> None:
    """Fine-tuning settings on a run that does not fine-tune are refused by name: a user who passes
    --lr without --epochs believes a learning rate was used, and nothing in the report would say not."""
    if c.epochs > 0:
        return
    defaults = {f.name: f.default for f in fields(PruneConfig)}
    unused = [
        flag
        for name, flag in (
            ("learning_rate", "--lr"),
            ("optimizer", "--optimizer"),
            ("l1", "--l1"),
            ("l2", "--l2"),
            ("early_stopping", "--early-stopping"),
            ("lr_schedule", "--lr-schedule"),
            ("distill_weight", "--distill-weight"),
        )
        if getattr(c, name) != defaults[name]
    ]
    if unused:
        raise ConfigError(f"{unused[0]} sets fine-tuning, which this run does not do; give --epochs N (N >= 1)")


def _check_unused_data_settings(c: PruneConfig) -> None:
    """How --data is read (--val-split, --batch-size, --score-batches, --calibration-samples), given without
    --data, is refused as --lr without --epochs is: nothing reads it. --batch-size is also the batch
    --target latency= times the model at."""
    if c.data:
        return
    defaults = {f.name: f.default for f in fields(PruneConfig)}
    if c.val_split != defaults["val_split"]:
        raise ConfigError("--val-split holds out part of --data, which this run does not read; give --data")
    latency = c.target is not None and str(c.target).strip().lower().startswith("latency")
    if c.batch_size != defaults["batch_size"] and not latency:
        raise ConfigError("--batch-size sets the batches of --data, which this run does not read; give --data")
    if c.score_batches != defaults["score_batches"]:
        raise ConfigError(
            "--score-batches caps the batches of --data a score reads, and this run reads none; give --data"
        )
    if c.calibration_samples != defaults["calibration_samples"]:
        raise ConfigError(
            "--calibration-samples sets the examples of --data a calibrated method or refit reads, and this run"
            " reads none; give --data"
        )


def scores_read_batches(c: PruneConfig) -> bool:
    """Whether this run's scoring reads batches of --data, so that --score-batches caps something: the
    batch-scored methods (activation, apoz, gradient, taylor) at every granularity that takes them, -g
    input's gradient, taylor and permutation feature scores, -g layer's loss of each bypassed candidate
    (any method but random), and -g transformer's search, which measures every split."""
    kind = c.granularity.kind
    if kind == "transformer":
        return True
    if kind == "layer":
        return c.method != "random"
    if kind == "input":
        score = c.feature_score or FEATURE_SCORE_OF_METHOD.get(c.method, "l1")
        return score in LOSS_FEATURE_SCORES
    return c.method in BATCH_SCORED_METHODS


def _check_score_batches(c: PruneConfig) -> None:
    """--score-batches on a run whose scores read no batch of --data is refused, as --lr without --epochs
    is: the data-free methods, and redundancy, wanda and sparsegpt, which read --calibration-samples
    examples, left it unread with nothing said."""
    if c.score_batches is None or not c.data or scores_read_batches(c):
        return
    if c.method in CALIBRATED_METHODS or c.method == "redundancy":
        raise ConfigError(
            f"--method {c.method} reads --calibration-samples examples of --data, not --score-batches batches;"
            " give --calibration-samples N instead"
        )
    if c.method == MEASURED:  # -g head (_check_measured_heads): the trials' examples are fixed, not batches
        raise ConfigError(
            f"--method {MEASURED} compares head scores on a fixed set of --data's first examples, not on"
            " --score-batches batches; drop --score-batches"
        )
    what = f"--method {c.method}"
    if c.granularity.kind == "input":
        what = f"-g input's {c.feature_score or FEATURE_SCORE_OF_METHOD.get(c.method, 'l1')} score"
    raise ConfigError(
        f"--score-batches caps the batches of --data a score reads, and {what} reads none"
        f" (the batch-scored methods are {', '.join(BATCH_SCORED_METHODS)}); drop --score-batches"
    )


def _check_calibration_samples(c: PruneConfig) -> None:
    """--calibration-samples with --data on a run that calibrates nothing is refused, as --score-batches
    is: only wanda, sparsegpt, redundancy and --reconstruct (on by default for --target) read it; a
    magnitude run recorded it in its report's settings and read 64 examples (--normalize measured) or none."""
    default = next(f.default for f in fields(PruneConfig) if f.name == "calibration_samples")
    if c.calibration_samples == default or not c.data:  # refused without --data already
        return
    if c.method in CALIBRATED_METHODS or c.method == "redundancy" or c.reconstruct:
        return
    if c.reconstruct is None and c.target is not None:  # --target refits channels by default (recovery_defaults)
        return
    raise ConfigError(
        f"--calibration-samples sets the examples wanda, sparsegpt, redundancy and --reconstruct read, and"
        f" --method {c.method} without --reconstruct reads none; drop --calibration-samples"
    )


def _check_auto(c: PruneConfig) -> None:
    """What --auto and --max-accuracy-drop need: data to measure on, and masks whose sparsity can vary."""
    if c.auto and not c.data:
        raise ConfigError("--auto needs --data to measure each layer's sensitivity")
    if c.auto and (c.threshold is not None or c.granularity.kind not in ("element", "neuron", "block")):
        raise ConfigError(
            "--auto chooses per-layer sparsities: use it with --sparsity (or none), not --threshold, N:M, input or layer"
        )
    if c.auto and c.engine != "native":
        raise ConfigError("--auto runs on the native engine only")
    if c.max_accuracy_drop is not None and not c.data:
        raise ConfigError("--max-accuracy-drop needs --data to measure accuracy")


def _check_calibration(c: PruneConfig) -> None:
    """What the calibrated one-shot methods (and --reconstruct) can honour. They prune on calibration
    examples of --data, so config knows they need it without asking the method registry."""
    if c.method in CALIBRATED_METHODS and not c.data:
        raise ConfigError(f"method {c.method!r} needs --data")
    if c.calibration_samples < 1:
        raise ConfigError(f"calibration_samples must be >= 1, got {c.calibration_samples}")
    if c.reconstruct and not c.data:
        raise ConfigError("--reconstruct needs --data (the calibration examples)")
    if c.reconstruct and c.granularity.kind in STRUCTURAL_KINDS:
        raise ConfigError(f"--reconstruct refits weights under a mask; granularity {c.granularity} has none")
    if c.reconstruct and c.schedule != "oneshot":
        raise ConfigError("--reconstruct refits once after one-shot pruning; use --schedule oneshot")
    if c.refine != "none" and (c.method not in CALIBRATED_METHODS or c.schedule != "oneshot"):
        raise ConfigError(
            f"--refine {c.refine} refines the masks of a one-shot wanda or sparsegpt run"
            f" (--method wanda|sparsegpt, --schedule oneshot), not --method {c.method} --schedule {c.schedule}"
        )
    if c.method not in CALIBRATED_METHODS or c.schedule != "oneshot":
        return
    if c.granularity.kind not in ("element", "nm"):
        raise ConfigError(
            f"--method {c.method} prunes single weights: use granularity element or n:m, not {c.granularity}"
        )
    if c.threshold is not None:
        raise ConfigError(f"--method {c.method} needs a --sparsity (or N:M), not --threshold")


def _check_measured_heads(c: PruneConfig) -> None:
    """--method measured tries head scores on examples of --data and keeps the one whose heads move the
    outputs least (removal/heads.py): -g head only, and by count, since the scores are not comparable."""
    if c.method != MEASURED:
        return
    if c.granularity.kind != "head":
        raise ConfigError(f"--method {MEASURED} chooses among head scores: use it with -g head")
    if not c.data:
        raise ConfigError(f"--method {MEASURED} compares head scores on examples of --data: give --data")
    if c.threshold is not None:
        raise ConfigError(f"--method {MEASURED} compares head scores at a --sparsity, not a --threshold")


def _check_unit_scores(c: PruneConfig) -> None:
    """A method that scores whole units gives every weight of a unit one score: blocks and N:M groups cut
    across units, so their selection would fall to position (the block rows of a column all tie)."""
    if c.method in UNIT_METHODS and c.granularity.kind in ("block", "nm"):
        raise ConfigError(
            f"--method {c.method} scores whole units; granularity {c.granularity} needs a score per weight"
            " (use -g neuron with it, or --method magnitude, taylor or gradient)"
        )


def _check_measured(c: PruneConfig) -> None:
    """--normalize measured compares allocations on examples of --data: the calibrated methods one-shot
    (their own trials), the others scored once per allocation at a --sparsity; only an element-wise
    global ranking has an allocation to choose."""
    if c.normalize != MEASURED:
        return
    if c.method in CALIBRATED_METHODS and c.schedule != "oneshot":
        raise ConfigError(
            f"--normalize {MEASURED} with --method {c.method} measures one-shot runs: use --schedule oneshot"
        )
    if not c.data:
        raise ConfigError(f"--normalize {MEASURED} compares allocations on examples of --data: give --data")
    if c.threshold is not None or c.auto or c.engine != "native" or c.method in UNIT_METHODS:
        raise ConfigError(
            f"--normalize {MEASURED} compares allocations at one --sparsity of single weights on the native"
            " engine: not with --threshold, --auto, --engine tfmot or a method that scores whole units"
        )
    if c.method == "wanda" and c.granularity.kind == "nm" and c.scope == "layer" and not c.reconstruct:
        return  # no allocation to choose: the exponent of Wanda's input norm is measured (calibration/oneshot.py)
    if c.scope != "global" or c.granularity.kind != "element":
        raise ConfigError(
            f"--normalize {MEASURED} chooses a global allocation: use --scope global with element pruning"
            " (or --method wanda with N:M, where it chooses the exponent of Wanda's input norm)"
        )


def _check_finetuning(c: PruneConfig) -> None:
    """Option combinations fine-tuning cannot honour."""
    if c.epochs == 0 and c.schedule == "oneshot":
        return
    if not c.data:
        raise ConfigError("fine-tuning (--epochs / --schedule) needs --data")
    if c.epochs < 1:
        raise ConfigError(f"--schedule {c.schedule} prunes while it trains; give --epochs >= 1")
    if c.schedule not in GRADUAL:
        return
    if c.threshold is not None:
        raise ConfigError(f"--schedule {c.schedule} needs a target --sparsity, not --threshold")
    if c.granularity.kind == "nm" or c.granularity.kind in STRUCTURAL_KINDS:
        raise ConfigError(f"granularity {c.granularity} is pruned at once; use --schedule oneshot")


def _check_exports(c: PruneConfig) -> None:
    unknown = [f for f in c.export if f not in EXPORT_FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format {unknown[0]!r}; choose from: {', '.join(EXPORT_FORMATS)}")
    if "tflite-int8" in c.export and not c.data:
        raise ConfigError("--export tflite-int8 needs --data (training batches calibrate the int8 ranges)")
    if c.export and c.engine == "tfmot":
        raise ConfigError("--export is not available with --engine tfmot; export the pruned .h5 with the native engine")


def _check_quantize(c: PruneConfig) -> None:
    """--quantize writes Keras 3 quantized layers: a .keras output, the native engine. Its TFLite
    exports are converted from the float pruned model (TFLite's converter cannot read Keras' int8
    matmuls), which is the same model only for int8: TFLite has no int4 or float8 weight grid to match.
    --qat on needs an int8/int4 --quantize and fine-tuning to run through."""
    _check_qat(c)
    if c.quantize is None:
        return
    if c.quantize not in QUANTIZE_MODES:
        raise ConfigError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, got {c.quantize!r}")
    if c.engine == "tfmot":
        raise ConfigError(
            "--quantize is not available with --engine tfmot (tf_keras has no Model.quantize); use --engine native"
        )
    written = c.output or c.model_path
    if Path(str(written)).suffix.lower() in (".h5", ".hdf5"):
        raise ConfigError(
            f"--quantize {c.quantize} writes Keras 3 quantized layers, which an .h5 file cannot hold; give -o NAME.keras"
        )
    tflite = [fmt for fmt in c.export if fmt != "savedmodel"]
    if tflite and c.quantize != "int8":
        raise ConfigError(
            f"--export {tflite[0]} with --quantize {c.quantize}: TFLite has no {c.quantize} weights to match "
            "Keras' layers; use --quantize int8, or --export savedmodel"
        )


def _check_qat(c: PruneConfig) -> None:
    if c.qat not in QAT_CHOICES:
        raise ConfigError(f"qat must be one of {', '.join(QAT_CHOICES)}, got {c.qat!r}")
    if c.qat != "on":
        return
    if c.quantize is None:
        raise ConfigError("--qat on fine-tunes through quantisation: give --quantize int8 or --quantize int4")
    if c.quantize not in QAT_MODES:
        raise ConfigError(
            f"--qat on: no quantisation-aware fine-tuning for --quantize {c.quantize} "
            f"(only {' and '.join(QAT_MODES)}); use --qat off"
        )
    if c.epochs <= 0:
        raise ConfigError("--qat on needs fine-tuning: give --epochs N (and --data)")


def _check_strategy(c: PruneConfig) -> None:
    if c.strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {c.strategy!r}; choose from: {', '.join(STRATEGIES)}")
    if c.strategy == "multiworker":
        read_tf_config()


def read_tf_config() -> dict:
    """TF_CONFIG, checked: --strategy multiworker fails before any work when it is missing or malformed."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        raise ConfigError("--strategy multiworker needs TF_CONFIG (the cluster's workers and this task's index)")
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {exc}") from exc
    if (
        not isinstance(spec, dict)
        or not isinstance(spec.get("cluster"), dict)
        or not isinstance(spec.get("task"), dict)
    ):
        raise ConfigError('TF_CONFIG needs "cluster" and "task" entries')
    for job, tasks in spec["cluster"].items():  # else TensorFlow's TypeError or KeyError: exit 1
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, str) and t for t in tasks):
            raise ConfigError(f'TF_CONFIG cluster "{job}" must be a non-empty list of "host:port" strings')
    kind, index = spec["task"].get("type"), spec["task"].get("index")
    if kind not in ("chief", "worker"):
        raise ConfigError(
            f'TF_CONFIG task type must be "chief" or "worker" (prunecli trains on every task), got {kind!r}'
        )
    if kind not in spec["cluster"]:
        raise ConfigError(f'TF_CONFIG task type "{kind}" has no entry in its cluster')
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(spec["cluster"][kind]):
        raise ConfigError(
            f'TF_CONFIG task index must be an integer in [0, {len(spec["cluster"][kind])}) for "{kind}", got {index!r}'
        )
    return spec


def _check_tfmot(c: PruneConfig) -> None:
    """Refuse, in one line each, the options tfmot's prune_low_magnitude has no equivalent for."""
    unsupported = [
        (c.method != "magnitude", f"method {c.method!r} (tfmot prunes by magnitude only)"),
        (c.scope != "layer", "--scope global (tfmot ranks each layer separately)"),
        (c.granularity.kind != "element", f"granularity {c.granularity} (use element)"),
        (c.threshold is not None, "--threshold (tfmot prunes to a sparsity)"),
        (c.schedule not in ("oneshot", "polynomial"), f"--schedule {c.schedule} (use oneshot or polynomial)"),
        (c.l1 > 0 or c.l2 > 0, "--l1/--l2 penalties"),
        (c.early_stopping > 0, "--early-stopping"),
        (c.shrink, "--shrink"),
        (bool(c.export), "--export"),
        (c.strategy != "default", f"--strategy {c.strategy}"),
        (c.distill_temperature is not None, "--distill"),
        (c.lr_schedule != "constant", f"--lr-schedule {c.lr_schedule}"),
        (c.reconstruct, "--reconstruct"),
        (bool(c.custom_objects), "--custom-objects (tf_keras reads the file)"),
    ]
    for failed, what in unsupported:
        if failed:
            raise ConfigError(f"--engine tfmot does not support {what}; use --engine native")
