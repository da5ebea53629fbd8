"""The user's own code for a model's custom objects (--custom-objects): custom layers, activations,
losses, and functions for Lambda layers.

A Keras file names a custom layer by its class; Keras builds it only from a registered class, so a
model with one ("Unknown layer: 'ConvDNA'") cannot be read without the code it was trained with.
The user has that code: `--custom-objects layers.py` (a file) or `--custom-objects pkg.layers` (an
importable module) imports it, once per process, and registers with Keras, by name, every public
class and function it defines (but no function named as one of Keras' own), plus the entries of its
`CUSTOM_OBJECTS` dict (for names Python cannot spell, such as the `"<lambda>"` activation Keras 2
wrote for an anonymous function, or to replace one of Keras' on purpose).

Its `LAMBDA_LAYERS` dict maps Lambda layer names (globs) to the functions those layers compute.
Those layers are built with the given function instead of the Python code the file stores: the
file's code never runs, so no --unsafe is needed for them, and a file whose Lambda code was compiled
by another Python version (FaceNet's Keras-2 facenet_keras.h5, Python 3.6: "EOF read where object
expected" on Python 3.11; a Keras 3 `.keras` saved by another Python: "bad marshal data") loads. Registration is process-wide, as Keras' own registry is: the
rebuilt and reloaded copies of the model a run makes need the same classes.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prunecli.errors import ConfigError, InputError, first_line

OBJECTS_ATTRIBUTE = "CUSTOM_OBJECTS"
LAMBDAS_ATTRIBUTE = "LAMBDA_LAYERS"


@dataclass(frozen=True)
class CustomObjects:
    """What loading needs of the --custom-objects sources once they are registered: the Lambda
    replacements as (layer-name glob, function, registered name) in the order the sources gave them."""

    lambda_layers: tuple[tuple[str, Callable, str], ...]

    def lambda_function(self, layer_name: str) -> str | None:
        """The registered name of the function that replaces Lambda layer `layer_name`'s stored code
        (the first glob that matches), or None when the layer keeps its own."""
        for pattern, _function, registered in self.lambda_layers:
            if fnmatch.fnmatchcase(layer_name, pattern):
                return registered
        return None


NONE = CustomObjects(())
_imported: dict[str, object] = {}  # a source imported once per process: its classes keep one identity


def register(sources: tuple[str, ...] | list[str]) -> CustomObjects:
    """Import each source (a `.py` path or a module name) and register what it defines with Keras;
    NONE when there are none. A source that cannot be imported, or defines nothing, is a one-line
    InputError naming it."""
    if not sources:
        return NONE
    import keras

    lambdas: list[tuple[str, Callable, str]] = []
    registry = keras.saving.get_custom_objects()
    for source in sources:
        module = _import(source)
        found = _defined(module)
        extra = getattr(module, OBJECTS_ATTRIBUTE, {})
        replacements = getattr(module, LAMBDAS_ATTRIBUTE, {})
        if not isinstance(extra, dict) or not isinstance(replacements, dict):
            raise InputError(f"--custom-objects {source}: {OBJECTS_ATTRIBUTE} and {LAMBDAS_ATTRIBUTE} must be dicts")
        found.update({str(k): v for k, v in extra.items()})
        for pattern, function in replacements.items():
            if not callable(function):
                raise InputError(f"--custom-objects {source}: {LAMBDAS_ATTRIBUTE}[{pattern!r}] is not a function")
            registered = f"{module.__name__}.{LAMBDAS_ATTRIBUTE}.{pattern}"
            found[registered] = function
            lambdas.append((str(pattern), function, registered))
        if not found:
            raise InputError(f"--custom-objects {source} defines no classes or functions to register")
        registry.update(found)
    return CustomObjects(tuple(lambdas))


def _import(source: str):
    """The module `source` names: a path to a `.py` file (imported under its file name, which the
    classes' __module__ then says), else an importable module name. Imported as `python` would from
    where the user stands: a file's own folder (for its sibling imports) or, for a module name, the
    current directory, is searched first while it imports."""
    if not source.strip():  # an empty value (an unset shell variable): Python's "Empty module name", exit 3
        raise ConfigError("--custom-objects needs a .py file or a module name, got an empty value")
    path = Path(source)
    if path.suffix == ".py" and not path.is_file():
        raise InputError(f"--custom-objects {source}: no such file")
    key = str(path.resolve()) if path.suffix == ".py" else source  # one file, however it is named
    if key in _imported:
        return _imported[key]
    search = str(path.resolve().parent) if path.suffix == ".py" else os.getcwd()
    sys.path.insert(0, search)
    try:
        if path.suffix == ".py":
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules.setdefault(path.stem, module)  # Keras records a class's module: it can be found again
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(source)
    except Exception as exc:  # noqa: BLE001 - the user's code can raise anything while it imports
        raise InputError(
            f"--custom-objects {source}: cannot import it ({type(exc).__name__}: {first_line(exc)})"
        ) from exc
    finally:
        sys.path.remove(search)
    _imported[key] = module
    return module


def _defined(module) -> dict[str, object]:
    """The public classes and functions `module` itself defines (not those it imports), except functions
    named as one of Keras' own (a helper `softmax` or `relu` in the user's file would otherwise replace
    Keras' wherever a config names it; CUSTOM_OBJECTS can still, on purpose). A class named as one of
    Keras' is registered: a layer the user wrote under a Keras name is the one their file means (TADA's
    `Attention`, bench/ZOO.md; a Monte-Carlo `Dropout` subclass), as Keras' own custom_objects= would."""
    return {
        name: value
        for name, value in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", None) == module.__name__
        and not (inspect.isfunction(value) and _keras_name(name))
    }


def _keras_name(name: str) -> bool:
    """Whether Keras itself resolves `name` in a config: a layer, activation, loss, metric,
    initializer, regularizer, constraint or optimizer of its own."""
    import keras

    kinds = ("layers", "activations", "losses", "metrics", "initializers", "regularizers", "constraints", "optimizers")
    return any(hasattr(getattr(keras, kind), name) for kind in kinds)


def replace_lambdas(config: dict, custom: CustomObjects) -> dict:
    """A model config whose Lambda layers named in LAMBDA_LAYERS compute the user's function (by its
    registered name, as Keras 3 writes a named function) instead of their stored code: a Keras-2 `.h5`
    config (code as a list, `function_type` "lambda") or a Keras 3 one (a `__lambda__` object). A
    stored output-shape function goes too (Keras then infers the shape from the user's function).
    Returns `config` itself when no layer matches."""
    if not custom.lambda_layers:
        return config
    found = False

    def patch(node):
        nonlocal found
        if isinstance(node, dict):
            inner = node.get("config")
            if node.get("class_name") == "Lambda" and isinstance(inner, dict):
                registered = custom.lambda_function(str(inner.get("name", "")))
                if registered is not None:
                    found = True
                    function = {
                        "class_name": "function",
                        "config": registered,
                        "registered_name": registered,
                        "module": None,
                    }
                    changed = {**inner, "function": function}
                    if "function_type" in inner:  # Keras 2's marker of how `function` is stored
                        changed["function_type"] = "function"
                    if _stored_code(inner.get("output_shape")) or inner.get("output_shape_type") == "lambda":
                        changed["output_shape"] = None
                        changed.pop("output_shape_type", None)
                    return {**node, "config": changed}
            return {k: patch(v) for k, v in node.items()}
        if isinstance(node, list):
            return [patch(v) for v in node]
        return node

    patched = patch(config)
    return patched if found else config


def _stored_code(value) -> bool:
    """Whether a Lambda config value is serialised Python code (Keras 3's `__lambda__` object)."""
    return isinstance(value, dict) and value.get("class_name") == "__lambda__"
