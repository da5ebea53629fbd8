"""prunecli: prune Keras models from the command line or from Python.

Importing this package does not import TensorFlow; the heavy modules load when a run starts.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("prune", "PruneResult"):
        from prunecli.run import pipeline

        return getattr(pipeline, name)
    if name == "build_config":  # with the checks that need the method registry (config alone cannot ask it)
        from prunecli.scoring.checks import build_config

        return build_config
    if name in ("PruneConfig", "Granularity"):
        from prunecli import config

        return getattr(config, name)
    raise AttributeError(name)


__all__ = ["__version__", "prune", "PruneResult", "build_config", "PruneConfig", "Granularity"]
