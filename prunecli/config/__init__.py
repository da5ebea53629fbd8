"""PruneConfig: every setting of one run, from CLI flags > PRUNECLI_* environment > YAML recipe > defaults.

Pure Python (no TensorFlow), so the CLI can validate a run before paying for the TF import. One module
per job: `fields` declares the settings, `sources` reads and merges recipe, environment and flags,
`checks` validates the result. The checks that need the scoring registry sit one floor up
(prunecli.scoring.checks); `prunecli.build_config` runs both.
"""

from prunecli.config.checks import parse_optimizer, read_tf_config, validate
from prunecli.config.fields import (
    BATCH_SCORED_METHODS,
    CALIBRATED_METHODS,
    ENGINES,
    EXPORT_FORMATS,
    FEATURE_SCORE_OF_METHOD,
    FEATURE_SCORES,
    GRADUAL,
    LR_SCHEDULES,
    MEASURED,
    METHOD_CHOICES,
    NORMALIZATIONS,
    PER_LAYER_BUDGETS,
    REFINEMENTS,
    SCHEDULES,
    SCOPES,
    STRATEGIES,
    UNIT_METHODS,
    Granularity,
    LayerOverride,
    LayerRule,
    PruneConfig,
    name_matches,
    option_flags,
    setting,
)
from prunecli.config.sources import build_config, read_env, read_recipe

__all__ = [
    "BATCH_SCORED_METHODS",
    "CALIBRATED_METHODS",
    "ENGINES",
    "EXPORT_FORMATS",
    "FEATURE_SCORE_OF_METHOD",
    "FEATURE_SCORES",
    "GRADUAL",
    "LR_SCHEDULES",
    "MEASURED",
    "METHOD_CHOICES",
    "NORMALIZATIONS",
    "PER_LAYER_BUDGETS",
    "REFINEMENTS",
    "SCHEDULES",
    "SCOPES",
    "STRATEGIES",
    "UNIT_METHODS",
    "Granularity",
    "LayerOverride",
    "LayerRule",
    "PruneConfig",
    "build_config",
    "name_matches",
    "option_flags",
    "parse_optimizer",
    "read_env",
    "read_recipe",
    "read_tf_config",
    "setting",
    "validate",
]
