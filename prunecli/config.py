"""PruneConfig: every setting of one run, from CLI flags > PRUNECLI_* environment > YAML recipe > defaults.

Pure Python (no TensorFlow), so the CLI can validate a run before paying for the TF import.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from prunecli.errors import ConfigError, OutputError
from prunecli.selection.schedule import GRADUAL

SCOPES = ("auto", "layer", "global")
GLOBAL_BY_DEFAULT = ("element", "block")  # granularities --scope auto ranks globally (bench/ACCURACY.md)
NORMALIZATIONS = ("mean", "none", "lamp", "erk")  # selection/policy.py says what each does
SCHEDULES = ("auto", "oneshot", "iterative", "polynomial", "dynamic")
CALIBRATED_METHODS = ("wanda", "sparsegpt")  # pruned layer by layer by prunecli.calibration
UNIT_METHODS = ("activation", "apoz", "l1-norm", "l2-norm", "neuron-mean")  # score whole units: pruned as neurons
LR_SCHEDULES = ("constant", "cosine")  # fine-tuning learning rate (training/finetune.py)
ENGINES = ("native", "tfmot")
STRATEGIES = ("default", "mirrored", "multiworker", "tpu")  # tf.distribute strategies (training/distribute.py)
EXPORT_FORMATS = ("tflite", "tflite-int8", "savedmodel")  # outputs/export.py
FEATURE_SCORES = ("l1", "l2", "gradient", "taylor", "permutation", "random")  # -g input scores
MAX_GROUP = 1024  # largest block side and N:M group size (-g n:m=1:99999999 once took 13.5 GB)
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
}
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few lines; 1 MiB leaves room and bounds the parser
MAX_RECIPE_NODES = 100_000  # YAML nodes after expanding aliases (an alias bomb expands to billions)
MAX_RECIPE_DEPTH = 50


@dataclass(frozen=True)
class Granularity:
    """What one pruning decision removes: an element, a unit (neuron/filter), an RxC block, or N of M."""

    kind: str = "element"  # element | neuron | block | nm | input | layer | head
    rows: int = 1  # block rows, or N for n:m
    cols: int = 1  # block cols, or M for n:m

    @classmethod
    def parse(cls, text: str) -> Granularity:
        t = str(text).strip().lower()
        if t in ("element", "neuron", "input", "layer", "head"):
            return cls(t)
        if t == "heads":
            return cls("head")
        if t in ("filter", "unit", "channel"):
            return cls("neuron")
        m = re.fullmatch(r"block[:=](\d+)x(\d+)", t)
        if m:
            r, c = int(m.group(1)), int(m.group(2))
            if r < 1 or c < 1:
                raise ConfigError(f"block size must be positive, got {text!r}")
            if max(r, c) > MAX_GROUP:
                raise ConfigError(f"block sides must be at most {MAX_GROUP}, got {text!r}")
            return cls("block", r, c)
        m = re.fullmatch(r"(?:n:m[:=])?(\d+):(\d+)", t)
        if m:
            n, mm = int(m.group(1)), int(m.group(2))
            if not 0 < n < mm:
                raise ConfigError(f"N:M needs 0 < N < M, got {text!r}")
            if mm > MAX_GROUP:  # a group is a row of M weights: M beyond any layer only costs memory
                raise ConfigError(f"N:M needs M <= {MAX_GROUP}, got {text!r}")
            return cls("nm", n, mm)
        raise ConfigError(
            f"unknown granularity {text!r}; use element, neuron, block:RxC, n:m=N:M, input, layer or head"
        )

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
    flag_value: Any = None,
) -> Any:
    """A PruneConfig field and, in its metadata, how the command line offers it: the one declaration
    of an option. cli.py builds its click options from these (config.py stays free of click).

    kind: "value" (takes an argument), "flag" (on/off switch), "multiple" (repeatable), "off" (a
    --no-... switch that sets False), "optional" (an optional argument: the bare flag means
    `flag_value`). choices: a tuple, or "methods" for the registered scoring
    methods. cli_only: a recipe or PRUNECLI_* variable may not set it (it unlocks something the user
    must ask for in this very command). recipe_only: no flag (structured values such as `layers:`)."""
    meta = {
        "help": help,
        "flags": flags,
        "commands": () if recipe_only else commands,
        "choices": choices,
        "kind": kind,
        "cli_only": cli_only,
        "flag_value": flag_value,
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
    scope: str = setting(
        "auto",
        help="Rank within each layer or globally; auto (default): global for element and block pruning on"
        " the native engine (it won at every sparsity in bench/ACCURACY.md), layer otherwise.",
        choices=SCOPES,
    )
    granularity: Granularity = setting(
        help="element (default), neuron, block:RxC, n:m=N:M, input, layer or head.",
        flags=("-g", "--granularity"),
        factory=Granularity,
    )
    normalize: str = setting(
        "lamp",
        help="How --scope global compares layers: lamp (LAMP scores, Lee et al. 2021; default, best in"
        " bench/ACCURACY.md), mean (scores over their layer's mean), none (raw scores) or erk"
        " (Erdos-Renyi-Kernel per-layer budget, Evci et al. 2020).",
        choices=NORMALIZATIONS,
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
    calibration_samples: int = setting(
        128, help="Examples of --data (seeded) that calibrate wanda/sparsegpt/--reconstruct (default 128)."
    )
    reconstruct: bool = setting(
        False,
        kind="flag",
        help="After masking, refit each layer's kept weights to its dense output on the calibration data.",
    )
    val_split: float = setting(0.0, help="Hold out this fraction of --data for evaluation.")
    epochs: int = setting(0, help="Fine-tune for this many epochs with the masks held (default 0).")
    learning_rate: float | None = setting(help="Fine-tuning learning rate.", flags=("--learning-rate", "--lr"))
    optimizer: str | None = setting(
        help="Fine-tuning optimizer, e.g. adamw:weight_decay=0.01 (default: the model's, else adam)."
    )
    l1: float = setting(0.0, help="L1 penalty on prunable weights while fine-tuning.")
    l2: float = setting(0.0, help="L2 penalty on prunable weights while fine-tuning.")
    schedule: str = setting(
        "auto",
        help="oneshot, iterative, polynomial or dynamic; auto (default): polynomial when element or block"
        " pruning fine-tunes on the native engine (best at 98% in bench/ACCURACY.md), oneshot otherwise.",
        choices=SCHEDULES,
    )
    schedule_steps: int = setting(3, help="Pruning steps for --schedule iterative (default 3).", flags=("--steps",))
    initial_sparsity: float = setting(0.0, help="Starting sparsity of gradual schedules (default 0).")
    early_stopping: int = setting(0, help="Stop fine-tuning after this many epochs without improvement.")
    lr_schedule: str = setting(
        "constant",
        help="Fine-tuning learning rate: constant (default) or cosine (decays to 0 over the run's steps).",
        choices=LR_SCHEDULES,
    )
    distill: float | None = setting(
        help="Fine-tune with the unpruned model as teacher: --distill [T], softmax temperature T (bare: 2).",
        kind="optional",
        flag_value=2.0,
    )
    distill_weight: float = setting(0.5, help="Weight of the teacher's soft loss with --distill (default 0.5).")
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
    remove_heads: int | None = setting(
        help="With -g head: attention heads to remove, per layer (--scope layer) or in all (--scope global)."
    )
    seq_len: int | None = setting(help="Sequence length for attention FLOPs when the model leaves it open.")
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

    def __post_init__(self) -> None:
        """--scope auto and --schedule auto become the measured best for this run: for element and block
        pruning on the native engine, global ranking, and the polynomial ramp when it fine-tunes; layer-wise
        and one-shot for the rest (units, N:M, tfmot, calibrated methods, --reconstruct, --auto)."""
        kind = self.granularity.kind if isinstance(self.granularity, Granularity) else "element"
        # what bench/ACCURACY.md measured; calibrated methods work layer by layer, as their papers do
        measured = (
            kind in GLOBAL_BY_DEFAULT
            and self.engine == "native"
            and self.method not in CALIBRATED_METHODS
            and self.method not in UNIT_METHODS  # run as neuron pruning (run/steps.py)
        )
        if self.scope == "auto":
            object.__setattr__(self, "scope", "global" if measured else "layer")
        if self.schedule == "auto":
            gradual = measured and self.epochs > 0 and self.threshold is None and not self.reconstruct and not self.auto
            object.__setattr__(self, "schedule", "polynomial" if gradual else "oneshot")

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


def _as_bool(value: Any) -> bool:
    """true/false, yes/no, on/off, 1/0 (YAML or text); anything else is an error, never truthiness:
    `skip: "false"` must not skip."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
    raise ValueError(value)


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
            return _as_bool(value)
        scalar = not any(word in ftype for word in ("tuple", "list", "dict", "Mapping"))
        if scalar and isinstance(value, (list, tuple, dict, Mapping)):  # `batch_size: [1, 2]` in a recipe
            raise TypeError(value)
        if "int" in ftype and "float" not in ftype:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            if isinstance(value, str) and len(value.strip()) > 40:
                raise ValueError(value)
            return int(value)
        if "float" in ftype:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        return str(value)
    except (TypeError, ValueError, OverflowError) as exc:
        if isinstance(value, str) and len(value) > 80:
            value = value[:80] + "..."
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
            out.append(LayerOverride(str(pattern), sparsity=_override_sparsity(rule)))
        elif isinstance(rule, Mapping):
            unknown = set(rule) - {"sparsity", "skip"}
            if unknown:
                raise ConfigError(f"unknown key {sorted(unknown)[0]!r} in override for {pattern!r}")
            out.append(
                LayerOverride(
                    str(pattern),
                    sparsity=None if rule.get("sparsity") is None else _override_sparsity(rule["sparsity"]),
                    skip=_as_bool(rule.get("skip", False)),
                )
            )
        else:
            raise ValueError(rule)
    return tuple(out)


def _override_sparsity(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(value)
    return float(value)


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

    loader = UniqueKeyLoader(text)  # a SafeLoader subclass: still no Python tags
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_yaml_size(root)
        return loader.construct_document(root)
    finally:
        loader.dispose()


def _check_yaml_size(root) -> None:
    """Count the nodes the document expands to, aliases included, before anything is constructed:
    an alias bomb is a few lines that expand to billions of values (and hang whatever walks them)."""
    import yaml

    expanded: dict[int, int] = {}  # node id -> nodes below it, aliases expanded (memoised: linear time)
    order, stack = [], [(root, 1)]
    seen = set()
    while stack:
        node, depth = stack.pop()
        if depth > MAX_RECIPE_DEPTH:
            raise yaml.YAMLError(f"the recipe is nested more than {MAX_RECIPE_DEPTH} levels deep")
        if id(node) in seen:
            continue
        seen.add(id(node))
        order.append(node)
        for child in _yaml_children(node):
            stack.append((child, depth + 1))
    for node in reversed(order):  # children before parents (a DAG: aliases only point backwards)
        total = 1 + sum(expanded.get(id(c), 1) for c in _yaml_children(node))
        expanded[id(node)] = min(total, MAX_RECIPE_NODES + 1)
    if expanded[id(root)] > MAX_RECIPE_NODES:
        raise yaml.YAMLError(f"the recipe expands to more than {MAX_RECIPE_NODES} values (aliases)")


def _yaml_children(node):
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _yaml_problem(exc: Exception) -> str:
    """PyYAML's errors span several lines; keep the problem and where it is."""
    problem, mark = getattr(exc, "problem", None), getattr(exc, "problem_mark", None)
    if problem:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else str(problem)
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def read_recipe(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML recipe safely (never executes tags); unknown and repeated keys are errors."""
    import stat

    import yaml

    from prunecli.messages import shown

    p = Path(path)
    try:
        st = p.stat()
    except (OSError, ValueError):
        raise ConfigError(f"recipe not found: {shown(p)}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"recipe {shown(p)} is a directory")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block, /dev/zero never ends
        raise ConfigError(f"recipe {shown(p)} is not a regular file")
    if st.st_size > MAX_RECIPE_BYTES:
        raise ConfigError(f"recipe {shown(p)} is {st.st_size} bytes; a recipe is at most {MAX_RECIPE_BYTES}")
    try:
        raw = _safe_yaml(p.read_text(encoding="utf-8"))
    except RecursionError as exc:
        raise ConfigError(f"invalid YAML in recipe {shown(p)}: nested too deeply") from exc
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        raise ConfigError(f"invalid YAML in recipe {shown(p)}: {_yaml_problem(exc)}") from exc
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"recipe {p} must be a mapping of option: value")
    out = {}
    for key, value in raw.items():
        name = _normalise_key(key)
        if name == "layers":
            name = "overrides"
        out[_file_settable(name, f"{key!r} in recipe {p}", f"unknown key {key!r} in recipe {p}")] = value
    return out


def _file_settable(name: str, where: str, unknown: str) -> str:
    """`name` if a recipe or PRUNECLI_* variable may set it; a one-line error saying why not otherwise."""
    if name in CLI_ONLY:
        raise ConfigError(f"{where}: --{name} can only be given on the command line")
    if name not in FILE_SETTABLE:
        raise ConfigError(unknown)
    return name


def read_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """PRUNECLI_<FIELD> variables, for example PRUNECLI_SPARSITY=0.8."""
    out = {}
    for key, value in environ.items():
        if not key.startswith("PRUNECLI_"):
            continue
        name = key[len("PRUNECLI_") :].lower()
        if key in ENV_SWITCHES:
            continue
        out[_file_settable(name, key, f"unknown environment variable {key}")] = value
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


def _check_numbers(c: PruneConfig) -> None:
    """Every number option is finite and in range, here and not in TensorFlow: --lr inf or -t nan
    once wrote a NaN model or pruned nothing, silently; --repeats 10**9 ran for ever."""
    import math

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
    if c.remove_heads is not None and c.granularity.kind != "head":
        raise ConfigError("--remove-heads needs --granularity head")
    if c.remove_heads is not None and (c.sparsity is not None or c.threshold is not None):
        raise ConfigError("give either --remove-heads or --sparsity/--threshold, not both")


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


def parse_optimizer(text: str) -> tuple[str, dict]:
    """'sgd' or 'sgd:momentum=0.9,nesterov=true' -> ('sgd', {'momentum': 0.9, 'nesterov': True}).
    Config validation checks the options with it; fine-tuning builds the optimizer from it."""
    import yaml

    name, _, rest = str(text).partition(":")
    options = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--optimizer options are key=value pairs, got {item!r}")
        try:
            options[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--optimizer {key.strip()}: {value!r} is not a value") from exc
    return name.strip(), options


def _check_optimizer(text: str) -> None:
    """--optimizer NAME:key=value,...: numbers finite (learning_rate=.nan wrote a NaN model), flags
    true/false, no lists or mappings: the types Keras's optimizers take, checked before any work."""
    import math

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
    if c.lr_schedule not in LR_SCHEDULES:
        raise ConfigError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {c.lr_schedule!r}")
    if c.distill is not None and not c.distill > 0:
        raise ConfigError(f"distill temperature must be > 0, got {c.distill:g}")
    if not 0.0 <= c.distill_weight <= 1.0:  # written so that NaN fails too
        raise ConfigError(f"distill_weight must be in [0, 1], got {c.distill_weight:g}")
    if c.distill is not None and c.epochs < 1:
        raise ConfigError("--distill fine-tunes against the unpruned model; give --epochs and --data")
    if c.max_accuracy_drop is not None and not c.max_accuracy_drop >= 0:
        raise ConfigError("max_accuracy_drop must be >= 0")
    _check_numbers(c)
    if c.optimizer:
        _check_optimizer(c.optimizer)
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
    _check_finetuning(c)
    _check_exports(c)
    _check_strategy(c)
    if c.engine == "tfmot":
        _check_tfmot(c)
    strategy = scoring.get(c.method)
    if strategy.needs_data and not c.data:
        raise ConfigError(f"method {c.method!r} needs --data")
    _check_calibration(c)


def _check_calibration(c: PruneConfig) -> None:
    """What the calibrated one-shot methods (and --reconstruct) can honour."""
    if c.calibration_samples < 1:
        raise ConfigError(f"calibration_samples must be >= 1, got {c.calibration_samples}")
    if c.reconstruct and not c.data:
        raise ConfigError("--reconstruct needs --data (the calibration examples)")
    if c.reconstruct and c.granularity.kind in ("input", "layer", "head"):
        raise ConfigError(f"--reconstruct refits weights under a mask; granularity {c.granularity} has none")
    if c.reconstruct and c.schedule != "oneshot":
        raise ConfigError("--reconstruct refits once after one-shot pruning; use --schedule oneshot")
    if c.method not in CALIBRATED_METHODS or c.schedule != "oneshot":
        return
    if c.granularity.kind not in ("element", "nm"):
        raise ConfigError(
            f"--method {c.method} prunes single weights: use granularity element or n:m, not {c.granularity}"
        )
    if c.threshold is not None:
        raise ConfigError(f"--method {c.method} needs a --sparsity (or N:M), not --threshold")
    if c.method == "sparsegpt" and c.scope != "layer":
        raise ConfigError("--method sparsegpt updates each layer in turn: use --scope layer")


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
    if c.granularity.kind in ("nm", "input", "layer", "head"):
        raise ConfigError(f"granularity {c.granularity} is pruned at once; use --schedule oneshot")


def _check_exports(c: PruneConfig) -> None:
    unknown = [f for f in c.export if f not in EXPORT_FORMATS]
    if unknown:
        raise ConfigError(f"unknown export format {unknown[0]!r}; choose from: {', '.join(EXPORT_FORMATS)}")
    if "tflite-int8" in c.export and not c.data:
        raise ConfigError("--export tflite-int8 needs --data (training batches calibrate the int8 ranges)")
    if c.export and c.engine == "tfmot":
        raise ConfigError("--export is not available with --engine tfmot; export the pruned .h5 with the native engine")


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
        (c.distill is not None, "--distill"),
        (c.lr_schedule != "constant", f"--lr-schedule {c.lr_schedule}"),
        (c.reconstruct, "--reconstruct"),
    ]
    for failed, what in unsupported:
        if failed:
            raise ConfigError(f"--engine tfmot does not support {what}; use --engine native")
