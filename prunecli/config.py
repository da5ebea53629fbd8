"""PruneConfig: every setting of one run, from CLI flags > PRUNECLI_* environment > YAML recipe > defaults.

Pure Python (no TensorFlow), so the CLI can validate a run before paying for the TF import.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prunecli.errors import ConfigError, OutputError

SCOPES = ("layer", "global")
NORMALIZATIONS = ("mean", "none")
SCHEDULES = ("oneshot", "iterative", "polynomial", "dynamic")
ENGINES = ("native", "tfmot")
FEATURE_SCORES = ("l1", "l2", "gradient", "taylor", "permutation", "random")  # -g input scores


@dataclass(frozen=True)
class Granularity:
    """What one pruning decision removes: an element, a unit (neuron/filter), an RxC block, or N of M."""

    kind: str = "element"  # element | neuron | block | nm | input | layer
    rows: int = 1  # block rows, or N for n:m
    cols: int = 1  # block cols, or M for n:m

    @classmethod
    def parse(cls, text: str) -> Granularity:
        t = str(text).strip().lower()
        if t in ("element", "neuron", "input", "layer"):
            return cls(t)
        if t in ("filter", "unit", "channel"):
            return cls("neuron")
        m = re.fullmatch(r"block[:=](\d+)x(\d+)", t)
        if m:
            r, c = int(m.group(1)), int(m.group(2))
            if r < 1 or c < 1:
                raise ConfigError(f"block size must be positive, got {text!r}")
            return cls("block", r, c)
        m = re.fullmatch(r"(?:n:m[:=])?(\d+):(\d+)", t)
        if m:
            n, mm = int(m.group(1)), int(m.group(2))
            if not 0 < n < mm:
                raise ConfigError(f"N:M needs 0 < N < M, got {text!r}")
            return cls("nm", n, mm)
        raise ConfigError(f"unknown granularity {text!r}; use element, neuron, block:RxC, n:m=N:M, input or layer")

    def __str__(self) -> str:
        if self.kind == "block":
            return f"block:{self.rows}x{self.cols}"
        if self.kind == "nm":
            return f"n:m={self.rows}:{self.cols}"
        return self.kind


@dataclass(frozen=True)
class LayerOverride:
    """A per-layer rule from a recipe: layers matching `pattern` get their own sparsity, or are skipped."""

    pattern: str
    sparsity: float | None = None
    skip: bool = False


@dataclass(frozen=True)
class PruneConfig:
    model_path: str = ""
    output: str | None = None
    force: bool = False
    # what is scored and how scores become masks
    method: str = "magnitude"
    sparsity: float | None = None
    threshold: float | str | None = None  # a number, or "mean"
    scope: str = "layer"
    granularity: Granularity = field(default_factory=Granularity)
    normalize: str = "mean"  # how scores are made comparable across layers for scope=global
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    overrides: tuple[LayerOverride, ...] = ()
    min_keep: float = 0.01  # fraction of each layer's elements/units always kept
    allow_empty: bool = False
    seed: int = 0
    # data, evaluation and fine-tuning
    data: str | None = None
    batch_size: int = 64
    score_batches: int | None = None  # cap on batches used by data-driven scoring
    val_split: float = 0.0
    epochs: int = 0
    learning_rate: float | None = None
    optimizer: str | None = None
    l1: float = 0.0
    l2: float = 0.0
    schedule: str = "oneshot"
    schedule_steps: int = 3
    initial_sparsity: float = 0.0
    regrow_fraction: float = 0.1
    early_stopping: int = 0  # patience in epochs; 0 = off
    max_accuracy_drop: float | None = None
    auto: bool = False  # choose per-layer sparsities from measured sensitivity (prunecli/run/auto.py)
    # structure and engines
    shrink: bool = False
    keep_features: int | None = None
    exclude_features: tuple[str, ...] = ()  # with -g input: features that always stay (index or name)
    feature_score: str | None = None  # with -g input: l1, l2, gradient, taylor, permutation, random
    remove_layers: int | None = None
    feature_names: str | None = None
    repeats: int = 3
    engine: str = "native"
    strategy: str = "default"
    export: tuple[str, ...] = ()
    # outputs and behaviour
    report: str | None = None
    markdown: str | None = None
    quiet: bool = False
    unsafe: bool = False
    sizes: bool = True  # compute gzip sizes of input/output

    @property
    def effective_sparsity(self) -> float | None:
        """The target sparsity; 0.5 when neither a sparsity nor a threshold was given."""
        if self.sparsity is None and self.threshold is None and self.granularity.kind != "nm":
            return 0.5
        return self.sparsity

    def replace(self, **changes: Any) -> PruneConfig:
        return dataclasses.replace(self, **changes)


FIELD_NAMES = tuple(f.name for f in fields(PruneConfig))
_RECIPE_ONLY_OK = set(FIELD_NAMES) - {"model_path"}
ENV_SWITCHES = ("PRUNECLI_DEBUG",)  # read by the CLI itself, not settings of a run


def _coerce(name: str, value: Any) -> Any:
    """Turn a recipe/env/CLI value into the type the field holds; one clear error otherwise."""
    if value is None:
        return None
    try:
        if name == "granularity":
            return value if isinstance(value, Granularity) else Granularity.parse(value)
        if name == "overrides":
            return _parse_overrides(value)
        if name in ("include", "exclude", "export", "exclude_features"):
            items = [value] if isinstance(value, str) else list(value)
            if name in ("export", "exclude_features"):  # "a,b" lists; layer globs are never split on ","
                items = [part for item in items for part in re.split(r"[,\s]+", str(item)) if part]
            elif isinstance(value, str):
                items = [v for v in re.split(r"[,\s]+", value) if v]
            return tuple(str(v) for v in items)
        if name == "threshold":
            if isinstance(value, str) and value.strip().lower() == "mean":
                return "mean"
            return float(value)
        ftype = {f.name: f.type for f in fields(PruneConfig)}[name]
        if "bool" in ftype:
            if isinstance(value, str):
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off", ""):
                    return False
                raise ValueError(value)
            return bool(value)
        if "int" in ftype and "float" not in ftype:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if "float" in ftype:
            return float(value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value for {name}: {value!r}") from exc


def _parse_overrides(value: Any) -> tuple[LayerOverride, ...]:
    if isinstance(value, tuple) and all(isinstance(v, LayerOverride) for v in value):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(value)
    out = []
    for pattern, rule in value.items():
        if rule == "skip" or rule is False:
            out.append(LayerOverride(str(pattern), skip=True))
        elif isinstance(rule, (int, float)) and not isinstance(rule, bool):
            out.append(LayerOverride(str(pattern), sparsity=float(rule)))
        elif isinstance(rule, Mapping):
            unknown = set(rule) - {"sparsity", "skip"}
            if unknown:
                raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in override for {pattern!r}")
            out.append(
                LayerOverride(
                    str(pattern),
                    sparsity=None if rule.get("sparsity") is None else float(rule["sparsity"]),
                    skip=bool(rule.get("skip", False)),
                )
            )
        else:
            raise ValueError(rule)
    return tuple(out)


def _normalise_key(key: str) -> str:
    return str(key).strip().replace("-", "_")


def _safe_yaml(text: str):
    """yaml.safe_load (no tags that build Python objects), except that a key given twice is an error:
    PyYAML would silently keep the last value, hiding a typo in a recipe."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _value in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if not isinstance(key, (str, int, float, bool)):
                    continue  # PyYAML reports unhashable keys itself
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
            return super().construct_mapping(node, deep)

    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: still no Python tags


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's errors span several lines; keep the problem and where it is."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else str(problem)
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML recipe safely (never executes tags); unknown and repeated keys are errors."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"recipe not found: {p}")
    try:
        raw = _safe_yaml(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid YAML in recipe {p}: {_yaml_problem(exc)}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"recipe {p} must be a mapping of option: value")
    out = {}
    for key, value in raw.items():
        name = _normalise_key(key)
        if name == "layers":
            name = "overrides"
        if name not in _RECIPE_ONLY_OK:
            raise ConfigError(f"unknown key {key!r} in recipe {p}")
        out[name] = value
    return out


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """PRUNECLI_<FIELD> variables, for example PRUNECLI_SPARSITY=0.8."""
    out = {}
    for key, value in environ.items():
        if not key.startswith("PRUNECLI_"):
            continue
        name = key[len("PRUNECLI_") :].lower()
        if key in ENV_SWITCHES:
            continue
        if name not in _RECIPE_ONLY_OK:
            raise ConfigError(f"unknown environment variable {key}")
        out[name] = value
    return out


def build_config(
    cli: Mapping[str, Any] | None = None,
    recipe: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> PruneConfig:
    """Merge the sources (CLI > env > recipe > defaults), coerce types and validate."""
    merged: dict[str, Any] = {}
    if recipe:
        merged.update(read_recipe(recipe))
    merged.update(read_env(os.environ if environ is None else environ))
    merged.update({k: v for k, v in (cli or {}).items()})
    unknown = set(merged) - set(FIELD_NAMES)
    if unknown:
        raise ConfigError(f"unknown option {sorted(unknown)[0]!r}")
    values = {k: _coerce(k, v) for k, v in merged.items()}
    config = PruneConfig(**values)
    validate(config)
    return config


def _check_destination(path: str | None, what: str) -> None:
    """A report path that cannot be written fails before the run, not after minutes of pruning."""
    if not path or path == "-":
        return
    p = Path(path)
    if p.is_dir():
        raise OutputError(f"{what} {p} is a directory")
    if not p.absolute().parent.is_dir():
        raise OutputError(f"{what} directory does not exist: {p.absolute().parent}")


def validate(c: PruneConfig) -> None:
    """Check option values and combinations; every failure is a one-line ConfigError."""
    from prunecli import scoring

    _check_destination(c.report, "report")
    _check_destination(c.markdown, "markdown summary")
    if c.sparsity is not None and not 0.0 <= c.sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {c.sparsity:g}")
    if c.sparsity is not None and c.threshold is not None:
        raise ConfigError("give either --sparsity or --threshold, not both")
    if c.granularity.kind == "nm" and (c.sparsity is not None or c.threshold is not None):
        raise ConfigError("N:M granularity fixes the sparsity at 1 - N/M; drop --sparsity/--threshold")
    if c.threshold is not None and c.threshold != "mean" and c.threshold < 0:
        raise ConfigError(f"threshold must be >= 0, got {c.threshold:g}")
    if c.method not in scoring.available():
        raise ConfigError(f"unknown method {c.method!r}; choose from: {', '.join(scoring.available())}")
    if c.scope not in SCOPES:
        raise ConfigError(f"scope must be one of {', '.join(SCOPES)}, got {c.scope!r}")
    if c.normalize not in NORMALIZATIONS:
        raise ConfigError(f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {c.normalize!r}")
    if c.schedule not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {c.schedule!r}")
    if c.engine not in ENGINES:
        raise ConfigError(f"engine must be one of {', '.join(ENGINES)}, got {c.engine!r}")
    if not 0.0 <= c.min_keep <= 1.0:
        raise ConfigError(f"min_keep must be in [0, 1], got {c.min_keep:g}")
    if not 0.0 <= c.initial_sparsity < 1.0:
        raise ConfigError(f"initial_sparsity must be in [0, 1), got {c.initial_sparsity:g}")
    if not 0.0 <= c.val_split < 1.0:
        raise ConfigError(f"val_split must be in [0, 1), got {c.val_split:g}")
    for o in c.overrides:
        if o.sparsity is not None and not 0.0 <= o.sparsity < 1.0:
            raise ConfigError(f"override sparsity for {o.pattern!r} must be in [0, 1), got {o.sparsity:g}")
    for name in ("batch_size", "schedule_steps", "repeats"):
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(c, name)}")
    for name in ("epochs", "early_stopping"):
        if getattr(c, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(c, name)}")
    if not (c.l1 >= 0 and c.l2 >= 0):  # written so that NaN fails too
        raise ConfigError("l1 and l2 penalties must be >= 0")
    if c.learning_rate is not None and not c.learning_rate > 0:
        raise ConfigError(f"learning_rate must be > 0, got {c.learning_rate:g}")
    if c.max_accuracy_drop is not None and not c.max_accuracy_drop >= 0:
        raise ConfigError("max_accuracy_drop must be >= 0")
    if c.feature_score is not None and c.feature_score not in FEATURE_SCORES:
        raise ConfigError(f"feature_score must be one of {', '.join(FEATURE_SCORES)}, got {c.feature_score!r}")
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
    # pure Python checks of the optional steps, so a bad option fails before any model is loaded
    from prunecli.outputs.export import check_formats
    from prunecli.training.distribute import check_strategy
    from prunecli.training.finetune import check_config as check_finetune

    check_finetune(c)
    check_formats(c)
    check_strategy(c)
    if c.export and c.engine == "tfmot":
        raise ConfigError("--export is not available with --engine tfmot; export the pruned .h5 with the native engine")
    strategy = scoring.get(c.method)
    if strategy.needs_data and not c.data:
        raise ConfigError(f"method {c.method!r} needs --data")
