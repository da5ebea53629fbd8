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


PRUNE_ONLY = ("prune",)
SETTINGS_COMMANDS = ("prune", "plan", "sweep")  # the commands that take a run's settings


def setting(
    default: Any = None,
    *,
    help: str,
    flags: tuple[str, ...] = (),
    commands=SETTINGS_COMMANDS,
    choices: tuple[str, ...] | str | None = None,
    kind: str = "value",
    cli_only: bool = False,
    recipe_only: bool = False,
    factory: Any = None,
) -> Any:
    """A PruneConfig field and, in its metadata, how the command line offers it: the one declaration
    of an option. cli.py builds its click options from these (config.py stays free of click).

    kind: "value" (takes an argument), "flag" (on/off switch), "multiple" (repeatable), "off" (a
    --no-... switch that sets False). choices: a tuple, or "methods" for the registered scoring
    methods. cli_only: a recipe or PRUNECLI_* variable may not set it (it unlocks something the user
    must ask for in this very command). recipe_only: no flag (structured values such as `layers:`)."""
    meta = {
        "help": help,
        "flags": flags,
        "commands": () if recipe_only else commands,
        "choices": choices,
        "kind": kind,
        "cli_only": cli_only,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class PruneConfig:
    """Every setting of one run. Each field's metadata declares its command-line option (see `setting`)."""

    model_path: str = setting("", help="The model to prune (.keras or .h5).", recipe_only=True)
    output: str | None = setting(
        help="Output model path (default MODEL.pruned.EXT).", flags=("-o", "--output"), commands=PRUNE_ONLY
    )
    force: bool = setting(
        False,
        help="Allow the output to overwrite the input.",
        flags=("-f", "--force"),
        kind="flag",
        commands=PRUNE_ONLY,
        cli_only=True,
    )
    # what is scored and how scores become masks
    method: str = setting(
        "magnitude", help="Scoring strategy (see Methods).", flags=("-m", "--method"), choices="methods"
    )
    sparsity: float | None = setting(help="Fraction to prune, in [0, 1) (default 0.5).", flags=("-s", "--sparsity"))
    threshold: float | str | None = setting(
        help="Prune scores below this value, or 'mean' (instead of --sparsity).", flags=("-t", "--threshold")
    )
    scope: str = setting("layer", help="Rank within each layer (default) or globally.", choices=SCOPES)
    granularity: Granularity = setting(
        help="element (default), neuron, block:RxC, n:m=N:M, input or layer.",
        flags=("-g", "--granularity"),
        factory=Granularity,
    )
    normalize: str = setting(
        "mean", help="Score normalisation for --scope global (default mean).", choices=NORMALIZATIONS
    )
    include: tuple[str, ...] = setting((), help="Only layers matching this name glob (repeatable).", kind="multiple")
    exclude: tuple[str, ...] = setting((), help="Skip layers matching this name glob (repeatable).", kind="multiple")
    overrides: tuple[LayerOverride, ...] = setting(
        (), help="Per-layer rules, recipe key `layers:` (glob -> sparsity | skip).", recipe_only=True
    )
    min_keep: float = setting(0.01, help="Fraction of each layer always kept (default 0.01).")
    allow_empty: bool = setting(False, help="Allow a layer to be pruned away entirely.", kind="flag")
    seed: int = setting(0, help="Seed for random scores, shuffling and splits (default 0).")
    # data, evaluation and fine-tuning
    data: str | None = setting(
        help="Data (.npz with x, y; see README) to evaluate, score and fine-tune.", flags=("-d", "--data")
    )
    batch_size: int = setting(64, help="Batch size for data (default 64).")
    score_batches: int | None = setting(help="Use at most this many batches for data-driven scores.")
    val_split: float = setting(0.0, help="Hold out this fraction of --data for evaluation.")
    epochs: int = setting(0, help="Fine-tune for this many epochs with the masks held (default 0).")
    learning_rate: float | None = setting(help="Fine-tuning learning rate.", flags=("--learning-rate", "--lr"))
    optimizer: str | None = setting(
        help="Fine-tuning optimizer, e.g. adamw:weight_decay=0.01 (default: the model's, else adam)."
    )
    l1: float = setting(0.0, help="L1 penalty on prunable weights while fine-tuning.")
    l2: float = setting(0.0, help="L2 penalty on prunable weights while fine-tuning.")
    schedule: str = setting("oneshot", help="oneshot (default), iterative, polynomial or dynamic.", choices=SCHEDULES)
    schedule_steps: int = setting(3, help="Pruning steps for --schedule iterative (default 3).", flags=("--steps",))
    initial_sparsity: float = setting(0.0, help="Starting sparsity of gradual schedules (default 0).")
    early_stopping: int = setting(0, help="Stop fine-tuning after this many epochs without improvement.")
    max_accuracy_drop: float | None = setting(help="Exit 4 when accuracy drops by more than this (absolute).")
    auto: bool = setting(
        False,
        kind="flag",
        commands=PRUNE_ONLY,
        help="Choose per-layer sparsities from measured sensitivity: reach --sparsity, or the most within "
        "--max-accuracy-drop (default 0.01). Needs --data.",
    )
    # structure and engines
    shrink: bool = setting(False, help="Physically remove pruned neurons/filters/features/layers.", kind="flag")
    keep_features: int | None = setting(help="With -g input: number of input features to keep.")
    exclude_features: tuple[str, ...] = setting(
        (),
        kind="multiple",
        help="With -g input: a feature that always stays (index, name or INPUT:feature; repeatable).",
    )
    feature_score: str | None = setting(
        help="With -g input: how features are scored (default: from --method).", choices=FEATURE_SCORES
    )
    remove_layers: int | None = setting(help="With -g layer: number of layers/blocks to remove.")
    feature_names: str | None = setting(help="Text file with one input feature name per line.")
    repeats: int = setting(3, help="Repeats of permutation importance (default 3).")
    engine: str = setting("native", help="native (default) or tfmot (Keras-2 .h5 models).", choices=ENGINES)
    strategy: str = setting("default", help="tf.distribute strategy: default, mirrored, multiworker or tpu.")
    export: tuple[str, ...] = setting(
        (), help="Also export: tflite, tflite-int8, savedmodel (repeatable).", kind="multiple"
    )
    # outputs and behaviour
    report: str | None = setting(
        help="Write the JSON report here ('-' for stdout).", flags=("-r", "--report"), commands=PRUNE_ONLY
    )
    markdown: str | None = setting(help="Write a Markdown summary here (for CI job summaries).", commands=PRUNE_ONLY)
    quiet: bool = setting(False, help="No progress or tables; errors only.", flags=("-q", "--quiet"), kind="flag")
    unsafe: bool = setting(False, help="Allow Lambda layers (runs code from the file).", kind="flag", cli_only=True)
    sizes: bool = setting(
        True, help="Skip the gzip size of input and output.", flags=("--no-sizes",), kind="off", commands=PRUNE_ONLY
    )

    @property
    def effective_sparsity(self) -> float | None:
        """The target sparsity; 0.5 when neither a sparsity nor a threshold was given."""
        if self.sparsity is None and self.threshold is None and self.granularity.kind != "nm":
            return 0.5
        return self.sparsity

    def replace(self, **changes: Any) -> PruneConfig:
        return dataclasses.replace(self, **changes)


def option_flags(f: dataclasses.Field) -> tuple[str, ...]:
    """The command-line spellings of a field's option ("--min-keep" unless its metadata names others)."""
    return f.metadata.get("flags") or (f"--{f.name.replace('_', '-')}",)


FIELD_NAMES = tuple(f.name for f in fields(PruneConfig))
CLI_ONLY = frozenset(f.name for f in fields(PruneConfig) if f.metadata.get("cli_only"))
FILE_SETTABLE = set(FIELD_NAMES) - {"model_path"} - CLI_ONLY  # what a recipe or PRUNECLI_* may set
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
        if name in CLI_ONLY:
            raise ConfigError(f"{key!r} in recipe {p}: --{name} can only be given on the command line")
        if name not in FILE_SETTABLE:
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
        if name in CLI_ONLY:
            raise ConfigError(f"{key}: --{name} can only be given on the command line")
        if name not in FILE_SETTABLE:
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
