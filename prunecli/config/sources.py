"""Where a run's settings come from, and how they are merged: CLI flags > PRUNECLI_* environment > YAML
recipe > defaults, each value coerced to the type its field holds.

A recipe is read safely (no tags that build Python objects) and bounded (size, depth, aliases), and a
key that is unknown, given twice or reserved for the command line is an error, never ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from prunecli.config.checks import validate, yaml_loader
from prunecli.config.fields import DISTILL_TEMPERATURE, FIELD_NAMES, Granularity, LayerOverride, PruneConfig
from prunecli.errors import ConfigError

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few lines; 1 MiB leaves room and bounds the parser
MAX_RECIPE_NODES = 100_000  # YAML nodes after expanding aliases (an alias bomb expands to billions)
MAX_RECIPE_DEPTH = 50
CLI_ONLY = frozenset(f.name for f in fields(PruneConfig) if f.metadata.get("cli_only"))
REPEATABLE = frozenset(f.name for f in fields(PruneConfig) if f.metadata.get("kind") == "multiple")  # tuples of text
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


# settings that name a file: an empty value names none, and read as "not given" it lost the file: `-r ""`
# (an unset $REPORT in a script) wrote no report with exit 0, `-o ""` wrote the default name beside the input
FILE_FIELDS = ("output", "data", "teacher", "feature_names", "report", "markdown", "save_plan")


def _coerce(name: str, value: Any) -> Any:
    """Turn a recipe/env/CLI value into the type the field holds; one clear error otherwise."""
    if value is None:
        return None
    if name in FILE_FIELDS and isinstance(value, str) and not value.strip():
        raise ConfigError(f"{name} was given an empty value; name a file, or leave the option out")
    try:
        if name == "granularity":
            return value if isinstance(value, Granularity) else Granularity.parse(value)
        if name == "overrides":
            return _parse_overrides(value)
        if name in REPEATABLE:
            items = [value] if isinstance(value, str) else list(value)
            if name == "custom_objects":  # paths and module names: taken whole
                return tuple(str(v) for v in items)
            if name in ("export", "exclude_features"):  # "a,b" lists; layer globs are never split on ","
                if any(not str(item).strip(" ,\t\n") for item in items):  # `--export ""` asks for nothing
                    raise ConfigError(f"{name} was given an empty value; name what it should be")
                items = [part for item in items for part in re.split(r"[,\s]+", str(item)) if part]
            elif isinstance(value, str):
                items = [v for v in re.split(r"[,\s]+", value) if v]
            return tuple(str(v) for v in items)
        if name == "distill":  # a temperature, or off: `--distill off`, `distill: false` in a recipe
            if isinstance(value, bool) or (isinstance(value, str) and value.strip().lower() in ("off", "false", "no")):
                return DISTILL_TEMPERATURE if value is True else False
            return float(value)
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
        if not isinstance(value, (str, os.PathLike, int, float)):  # a model object, bytes (a recipe's `!!binary`)
            raise TypeError(value)
        return str(value)
    except (TypeError, ValueError, OverflowError) as exc:
        if callable(getattr(value, "count_params", None)):  # the Python API given a Keras model itself
            raise ConfigError(
                f"{name} takes the path of a saved model, not a model object: save it first (model.save('m.keras'))"
            ) from exc
        if isinstance(value, str) and len(value) > 80:
            value = value[:80] + "..."
        said = repr(value)
        if not isinstance(value, str) and ("\n" in said or len(said) > 80):  # arrays: their repr spans lines
            said = f"a {type(value).__name__}"
            if name == "data":
                said += " (a path is needed: save arrays with numpy.savez('d.npz', x=x, y=y))"
        raise ConfigError(f"invalid value for {name}: {said}") from exc


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

    class UniqueKeyLoader(yaml_loader()):
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

    _check_flow_depth(text)
    loader = UniqueKeyLoader(text)  # a SafeLoader subclass: still no Python tags
    try:
        root = loader.get_single_node()
        if root is None:
            return None
        _check_yaml_size(root)
        return loader.construct_document(root)
    finally:
        loader.dispose()


_QUOTED_OR_COMMENT = re.compile(r"'[^']*'|\"(?:[^\"\\\\]|\\\\.)*\"|(?:^|(?<=\s))#[^\n]*", re.MULTILINE)


def _check_flow_depth(text: str) -> None:
    """Refuse `[[[[...` nested past MAX_RECIPE_DEPTH before PyYAML scans it: its scanner keeps a
    possible key per open bracket and walks them all at every token, so a 40 KB file of brackets took
    seconds to refuse (quadratic in the depth) before the depth check on the composed nodes could run.
    Brackets inside quotes and comments do not count; a stray quote can only make this count lower,
    and the node check below still holds."""
    import yaml

    depth = 0
    for bracket in re.findall(r"[\[\]{}]", _QUOTED_OR_COMMENT.sub("", text)):
        depth = depth + 1 if bracket in "[{" else max(depth - 1, 0)
        if depth > MAX_RECIPE_DEPTH:
            raise yaml.YAMLError(f"the recipe is nested more than {MAX_RECIPE_DEPTH} levels deep")


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


STDOUT_NAMES = ("/dev/stdout", "/proc/self/fd/1", "/dev/fd/1")  # --report/--markdown there is "-"


def build_config(
    cli: Mapping[str, Any] | None = None,
    recipe: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> PruneConfig:
    """Merge the sources (CLI > env > recipe > defaults), coerce types and validate, without the checks
    that need the scoring registry: prunecli.build_config (the Python API) and the CLI add those
    (prunecli.scoring.checks)."""
    merged: dict[str, Any] = {}
    if recipe:
        merged.update(read_recipe(recipe))
    merged.update(read_env(os.environ if environ is None else environ))
    merged.update({k: v for k, v in (cli or {}).items()})
    unknown = set(merged) - set(FIELD_NAMES)
    if unknown:
        raise ConfigError(f"unknown option {sorted(unknown)[0]!r}")
    values = {k: _coerce(k, v) for k, v in merged.items()}
    for key in ("report", "markdown"):  # the terminal's own output is stdout: "-" keeps the tables off it
        if values.get(key) in STDOUT_NAMES:
            values[key] = "-"
    if values.get("target") is not None:  # what --target implies, refused when given otherwise
        if "granularity" in values and values["granularity"].kind == "element":
            raise ConfigError("--target removes whole channels: use granularity neuron (or leave -g out), not element")
        if values.get("shrink") is False:
            raise ConfigError("--target is the size of the shrunk model: it cannot be combined with shrink off")
    config = PruneConfig(**values)
    validate(config)
    return config
