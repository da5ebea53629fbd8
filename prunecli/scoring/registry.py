"""The registry of scoring strategies. Importing it never imports TensorFlow, so `--help` stays fast."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prunecli.errors import ConfigError


@dataclass
class ScoringContext:
    """What a strategy may look at. `data` yields (x, y) batches; it is None for data-free methods.

    `progress(label, total)` returns advance(n), called as batches are read; None shows a rich bar
    when stderr is a terminal. `extras["jit_compile"]` = True/False forces XLA on or off for the
    data-driven strategies (default: on GPUs and TPUs only). A strategy appends to `notes` what the
    report must say about its scores (a layer it scored another way, and why).
    """

    model: Any
    targets: list
    data: Any = None
    loss_fn: Any = None
    seed: int = 0
    max_batches: int | None = None
    progress: Callable[[str, int | None], Callable[[int], None]] | None = None
    extras: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def silent_progress(label: str, total: int | None) -> Callable[[int], None]:
    """A ScoringContext.progress that shows nothing (for --quiet runs)."""
    return lambda n=1: None


@dataclass(frozen=True)
class Strategy:
    """A scoring strategy: fn(targets, context) -> {target.name: score tensor}.

    level="element": each score has the weight's shape; level="unit": one score per unit (neuron or
    filter) along the target's unit axis. Higher score = more important. A strategy never decides
    what is pruned: the policy does.
    """

    name: str
    summary: str
    fn: Callable[[list, ScoringContext], dict]
    level: str = "element"
    needs_data: bool = False
    calibrated: bool = False  # one-shot runs prune with prunecli.calibration (layer by layer, with updates)


_REGISTRY: dict[str, Strategy] = {}


def register(name: str, summary: str, *, level: str = "element", needs_data: bool = False, calibrated: bool = False):
    """Decorator that adds a scoring function to the registry under `name`."""
    if level not in ("element", "unit"):
        raise ValueError(f"level must be 'element' or 'unit', got {level!r}")

    def deco(fn):
        if name in _REGISTRY:
            raise ValueError(f"scoring strategy {name!r} registered twice")
        _REGISTRY[name] = Strategy(name, summary, fn, level, needs_data, calibrated)
        return fn

    return deco


def _load_all() -> None:
    import importlib
    import pkgutil

    from . import __path__ as pkg_path

    for mod in sorted(pkgutil.iter_modules(pkg_path), key=lambda m: m.name):
        if mod.name not in ("registry", "checks") and not mod.name.startswith("_"):
            importlib.import_module(f"{__package__}.{mod.name}")


def available() -> list[str]:
    """Names of every registered strategy, sorted."""
    if not _REGISTRY:
        _load_all()
    return sorted(_REGISTRY)


def get(name: str) -> Strategy:
    if not _REGISTRY:
        _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown method {name!r}; choose from: {', '.join(available())}") from None


def describe() -> list[tuple[str, str]]:
    """(name, one-line summary) for each strategy, for --help and docs."""
    return [(n, get(n).summary) for n in available()]
