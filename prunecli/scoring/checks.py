"""The checks of a run's settings that need the scoring registry, one floor above config.

config validates everything it can without knowing which methods exist; whether the method is
registered, and whether it needs --data, is asked here. Importing this never imports TensorFlow (the
registry and every strategy module load lazily), so the CLI still fails before the TF import.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prunecli import config
from prunecli.errors import ConfigError
from prunecli.scoring.registry import available, get


def check_method(method: str, has_data: bool) -> None:
    """A one-line ConfigError when `method` is not registered, or needs data the run was not given
    (--method measured is a choice among head scores, checked with the other settings)."""
    if method == config.MEASURED:
        return
    if method not in available():
        raise ConfigError(f"unknown method {method!r}; choose from: {', '.join(available())}")
    if get(method).needs_data and not has_data:
        raise ConfigError(f"method {method!r} needs --data")


def build_config(
    cli: Mapping[str, Any] | None = None,
    recipe: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> config.PruneConfig:
    """prunecli.config.build_config, then check_method: every check of a run's settings, before any work.
    The CLI and the Python API (`prunecli.build_config`) build their settings with it."""
    built = config.build_config(cli, recipe=recipe, environ=environ)
    check_method(built.method, bool(built.data))
    return built
