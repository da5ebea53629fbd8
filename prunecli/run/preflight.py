"""Every path of a run planned before any work: one function for the CLI and the Python API.

It sits in run/ because it reads what the data loader will open (io.data) and where exports go
(io.paths) together; io.paths itself stays below io.data.
"""

from __future__ import annotations

import os
from pathlib import Path

from prunecli.errors import ConfigError
from prunecli.io import paths
from prunecli.io.paths import PathPlan


def plan_prune(config, recipe: str | os.PathLike | None = None) -> tuple[Path, PathPlan]:
    """The output model's path and the checked plan of every path of a prune run, before any work.

    The CLI and the Python API (run/pipeline.prune) both call it, so a run started from Python is
    refused exactly where the command line would refuse it."""
    from prunecli.io import models as model_io

    if not config.model_path:
        raise ConfigError("no model given: pass MODEL on the command line, or model_path in Python")
    output = model_io.resolve_output(config.model_path, config.output, config.force)
    extras: dict = {}
    if config.data:
        from prunecli.io.data import files_read

        extras["extra_reads"] = files_read(config.data)
    if config.export:
        extras["exports"] = paths.export_paths(output)
    return output, paths.plan(config, output_model=output, recipe=recipe, **extras)
