"""The settings of one run, each declared once: PruneConfig's fields, the option each one is on the
command line (`setting`), and the values they may take.

Pure Python (no TensorFlow, no click): the CLI builds its options from these declarations, and lower
floors read a PruneConfig without importing anything above config.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from dataclasses import dataclass, field, fields
from typing import Any

from prunecli.errors import ConfigError

SCOPES = ("auto", "layer", "global")
# granularities removed at once by a structural step (prunecli/removal: STEPS has one module each)
STRUCTURAL_KINDS = ("input", "layer", "head", "hidden", "transformer")
GLOBAL_BY_DEFAULT = ("element", "block")  # granularities --scope auto ranks globally (bench/ACCURACY.md)
NORMALIZATIONS = ("mean", "none", "lamp", "erk", "owl")  # selection/policy.py says what each does
# the calibrated methods' own choice among allocations, made per run on the calibration examples
# (calibration/oneshot.py); "auto" becomes it or lamp (PruneConfig.__post_init__)
MEASURED = "measured"
NORMALIZE_CHOICES = ("auto", *NORMALIZATIONS, MEASURED)
# --method words that name a choice, not a registered strategy (PruneConfig.__post_init__ resolves "auto";
# "measured" is -g head's: the head scores tried and the one that moves the outputs least kept, removal/heads.py)
METHOD_CHOICES = ("auto", MEASURED)
PER_LAYER_BUDGETS = ("erk", "owl")  # normalizations that share the budget out per layer, with no common ranking
SCHEDULES = ("auto", "oneshot", "iterative", "polynomial", "dynamic")
GRADUAL = ("iterative", "polynomial", "dynamic")  # schedules that prune while fine-tuning (selection/schedule.py)
CALIBRATED_METHODS = ("wanda", "sparsegpt")  # pruned layer by layer by prunecli.calibration
# what a calibrated method's masks go through after each layer is pruned (calibration/dsnot.py)
REFINEMENTS = ("none", "dsnot")
# score whole units: pruned as neurons
UNIT_METHODS = ("activation", "apoz", "l1-norm", "l2-norm", "neuron-mean", "redundancy")
LR_SCHEDULES = ("constant", "cosine")  # fine-tuning learning rate (training/finetune.py)
ENGINES = ("native", "tfmot")
STRATEGIES = ("default", "mirrored", "multiworker", "tpu")  # tf.distribute strategies (training/distribute.py)
EXPORT_FORMATS = ("tflite", "tflite-int8", "savedmodel")  # outputs/export.py
QUANTIZE_MODES = ("int8", "int4", "float8")  # Keras 3 Model.quantize modes (outputs/quantize.py)
QAT_CHOICES = ("auto", "on", "off")  # quantisation-aware fine-tuning with --quantize (training/fake_quant.py)
QAT_MODES = ("int8", "int4")  # the --quantize modes with a fake quantisation to fine-tune through
# The options an apply run takes (`prunecli apply`'s, run/apply.py): what it does after replaying a plan's
# masks. Any other (a sparsity, a method, --quantize, a gate) it would not honour, so the API refuses it.
APPLY_OPTIONS = (
    "output",
    "force",
    "data",
    "batch_size",
    "val_split",
    "epochs",
    "learning_rate",
    "optimizer",
    "shrink",
    "export",
    "report",
    "markdown",
    "quiet",
    "unsafe",
    "custom_objects",
    "sizes",
)
QAT_BY_DEFAULT = {"int8": False, "int4": False}  # --qat auto: what bench/QUANT.md measured (PTQ vs QAT)
FEATURE_SCORES = ("l1", "l2", "gradient", "taylor", "permutation", "random")  # -g input scores
# -g input's feature score when --feature-score is not given: the method's own, else l1
FEATURE_SCORE_OF_METHOD = {
    "gradient": "gradient",
    "taylor": "taylor",
    "random": "random",
    "l2-norm": "l2",
}
LOSS_FEATURE_SCORES = ("gradient", "taylor", "permutation")  # -g input scores taken from a loss on --data batches
# the methods whose scores are read from batches of --data, --score-batches of them (scoring/_data.py and
# the removal steps' units.gradient_scores / mean_abs_inputs); redundancy, wanda and sparsegpt read
# --calibration-samples examples instead
BATCH_SCORED_METHODS = ("activation", "apoz", "gradient", "taylor")
DISTILL_TEMPERATURE = 2.0  # bare --distill, and the --target default (recovery_defaults)
MAX_GROUP = 1024  # largest block side and N:M group size (-g n:m=1:99999999 once took 13.5 GB)


@dataclass(frozen=True)
class Granularity:
    """What one pruning decision removes: an element, a unit (neuron/filter), an RxC block, or N of M."""

    kind: str = "element"  # element | neuron | block | nm | input | layer | head | hidden | transformer
    rows: int = 1  # block rows, or N for n:m
    cols: int = 1  # block cols, or M for n:m

    @classmethod
    def parse(cls, text: str) -> Granularity:
        t = str(text).strip().lower()
        if t in ("element", "neuron", "input", "layer", "head", "hidden", "transformer"):
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
            f"unknown granularity {text!r}; use element, neuron, block:RxC, n:m=N:M, input, layer, head, hidden"
            " or transformer"
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


@dataclass(frozen=True)
class LayerRule:
    """What the per-layer rules decide for one layer (`PruneConfig.rule_for`): left whole, pruned to its
    own sparsity, or (neither) pruned like the rest of the run."""

    skip: bool = False
    sparsity: float | None = None


def name_matches(layer_name: str, patterns) -> bool:
    """Whether a layer glob matches `layer_name`: its full path (outer/inner) or its own name, the last
    part of the path, so `dense*` also finds a layer inside a nested model. Case-sensitive on every
    platform (fnmatchcase), as Keras layer names are."""
    leaf = layer_name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(layer_name, p) or fnmatch.fnmatchcase(leaf, p) for p in patterns)


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
    of an option. cli.py builds its click options from these (config stays free of click).

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
        help="Allow the output to overwrite the input, and a default name (MODEL.pruned.EXT without -o, an"
        " --export file, sweep/sweep.* without -o or --name) to replace an existing file.",
        flags=("-f", "--force"),
        kind="flag",
        commands=("prune", "sweep"),
        cli_only=True,
    )
    # what is scored and how scores become masks
    method: str = setting(
        "auto",
        help="Scoring strategy (see Methods). auto (default): magnitude, except -g head with --data: measured "
        "(magnitude and activation head scores tried, the one that moves the outputs least kept).",
        flags=("-m", "--method"),
        choices="methods",
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
        help="element (default), neuron, block:RxC, n:m=N:M, input, layer, head, hidden (the residual"
        " channels of KerasHub decoders; needs --shrink) or transformer (named for the model it takes: a"
        " Transformer's heads, FFN units and whole blocks at once, the split of --target params=F,"
        " flops=F or size= between them measured on --data).",
        flags=("-g", "--granularity"),
        factory=Granularity,
    )
    normalize: str = setting(
        "auto",
        help="How --scope global compares layers: lamp (LAMP scores, Lee et al. 2021; best in"
        " bench/ACCURACY.md), mean (scores over their layer's mean), none (raw scores), erk"
        " (Erdos-Renyi-Kernel per-layer budget, Evci et al. 2020), owl (more kept where a block's"
        " scores hold more outliers, Yin et al. 2024) or measured (needs --data: of uniform and lamp, the"
        " one whose masks change the model's outputs least on examples of --data; wanda/sparsegpt also try"
        " owl, each as a whole Wanda run compared on examples the calibration did not read, and the"
        " default magnitude command's masks; wanda also tries uniform and lamp ranked by the tempered"
        " |w| x ||x||^0.5; the trial that changes the outputs least is kept where it changes them less"
        " than the run). With --method wanda and N:M there is no allocation: measured tries the exponent"
        " a of |w| x ||x||^a (1: Wanda's own, 0.5, 0: the magnitude N:M masks) the same way."
        " auto (default): measured for wanda/sparsegpt with the default --scope (wanda at N:M too), and"
        " for magnitude with --data and a --sparsity (no allocation or score won on every model:"
        " bench/DECODERS.md, bench/DEFAULT_ALLOCATION.md), lamp otherwise.",
        choices=NORMALIZE_CHOICES,
    )
    include: tuple[str, ...] = setting(
        (),
        help="Only layers matching this name glob (repeatable); a frozen or output layer it names is pruned too.",
        kind="multiple",
    )
    exclude: tuple[str, ...] = setting(
        (),
        help="Skip layers matching this name glob (repeatable); a glob that names no layer is refused.",
        kind="multiple",
    )
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
    score_batches: int | None = setting(
        help="At most this many batches of --data for the scores read from batches (activation, apoz, gradient,"
        " taylor; -g layer/transformer; -g input's loss scores); refused where no score reads batches."
    )
    calibration_samples: int = setting(
        128,
        help="Examples of --data (seeded) that calibrate wanda/sparsegpt/redundancy/--reconstruct (default 128);"
        " refused where nothing calibrates.",
    )
    refine: str = setting(
        "none",
        help="After wanda/sparsegpt prunes a layer, refine its mask: dsnot (Zhang et al. 2024, DSnoT: per"
        " output, swap a pruned weight back in for a kept one while the swap lowers the layer's expected"
        " reconstruction error on the calibration data; same sparsity and N:M groups, no retraining)."
        " none (default).",
        choices=REFINEMENTS,
    )
    reconstruct: bool | None = setting(
        None,
        kind="flag",
        flags=("--reconstruct/--no-reconstruct",),
        help="After masking, refit each layer's kept weights to its dense output on the calibration data"
        " (default: on for --target with --data, off otherwise).",
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
    distill: float | bool | None = setting(
        help="Fine-tune with the unpruned model as teacher: --distill [T], softmax temperature T (bare: 2);"
        " --distill off: never (default: T = 2 for a classifier's --target run with --epochs, off otherwise).",
        kind="optional",
        flag_value=DISTILL_TEMPERATURE,
    )
    distill_weight: float = setting(0.5, help="Weight of the teacher's soft loss with --distill (default 0.5).")
    teacher: str | None = setting(
        help="With --distill: the teacher's model file (default: the model being pruned, as loaded), e.g. the"
        " dense model when this run prunes the output of an earlier one.",
        commands=PRUNE_ONLY,
    )
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
    target: str | None = setting(
        help="Make the shrunk model fit: params=F or flops=F (a fraction of the dense model's parameters or"
        " multiply-adds) or size=200KB (the saved file); channels are allocated across layers to land within"
        " 2% under it. latency=F or latency=3ms: the forward time at --batch-size (with --export tflite:"
        " TFLite's interpreter at batch 1), measured on this machine (searched, within 5% under). Implies -g"
        " neuron (or give -g head: the heads; -g hidden: the residual width, not flops=; -g transformer: split"
        " across heads, FFN units and blocks) and --shrink.",
        commands=("prune", "plan"),
    )
    round_to: int | None = setting(
        help="With --target: every layer keeps a multiple of this many channels (a layer narrower than that"
        " is not rounded; never zero).",
        commands=("prune", "plan"),
    )
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
    worker_wait: int = setting(
        600,
        help="--strategy multiworker: seconds to wait for every task of TF_CONFIG's cluster to start (default 600).",
    )
    export: tuple[str, ...] = setting(
        (), help="Also export: tflite, tflite-int8, savedmodel (repeatable).", kind="multiple"
    )
    quantize: str | None = setting(
        help="After pruning, quantize with Keras' own Model.quantize: int8, int4 or float8 (.keras output;"
        " pruned weights checked to stay exactly 0). int8 and int4 also quantize Conv, ConvTranspose, DepthwiseConv and"
        " SeparableConv kernels (prunecli's quantized convolution layers: load the file after"
        " `import prunecli.structure.quantized_conv`).",
        choices=QUANTIZE_MODES,
        commands=PRUNE_ONLY,
    )
    qat: str = setting(
        "auto",
        help="With --quantize int8 or int4 and fine-tuning: fine-tune through Keras' quantisation grid (weights; int8 inputs too;"
        " masks held). auto (default: off, as bench/QUANT.md measured), on or off.",
        choices=QAT_CHOICES,
        commands=PRUNE_ONLY,
    )
    # outputs and behaviour
    report: str | None = setting(
        help="Write the JSON report here ('-' for stdout).", flags=("-r", "--report"), commands=PRUNE_ONLY
    )
    markdown: str | None = setting(help="Write a Markdown summary here (for CI job summaries).", commands=PRUNE_ONLY)
    save_plan: str | None = setting(
        help="Also write what the run decided (masks, options, fingerprints) to this plan file, for "
        "`prunecli apply` and `prunecli verify`.",
        commands=PRUNE_ONLY,
    )
    quiet: bool = setting(False, help="No progress or tables; errors only.", flags=("-q", "--quiet"), kind="flag")
    unsafe: bool = setting(False, help="Allow Lambda layers (runs code from the file).", kind="flag", cli_only=True)
    custom_objects: tuple[str, ...] = setting(
        (),
        help="A .py file or module defining the model's custom layers and functions, registered by name;"
        " its LAMBDA_LAYERS dict gives Lambda layers' functions (repeatable; see README).",
        kind="multiple",
        cli_only=True,
    )
    sizes: bool = setting(
        True, help="Skip the gzip size of input and output.", flags=("--no-sizes",), kind="off", commands=PRUNE_ONLY
    )
    speed: bool = setting(
        True,
        help="Skip timing a KerasHub decoder's tokens per second before and after it is rebuilt (--shrink,"
        " -g layer, -g hidden; seconds to minutes on a large model); the per-block table stays.",
        flags=("--no-speed",),
        kind="off",
        commands=PRUNE_ONLY,
    )

    def __post_init__(self) -> None:
        """--scope auto and --schedule auto become the measured best for this run: for element and block
        pruning on the native engine, global ranking, and the polynomial ramp when it fine-tunes; layer-wise
        and one-shot for the rest (units, N:M, tfmot, calibrated methods, --reconstruct, --auto).
        --target allocates whole channels across layers: it implies neuron granularity, --shrink and a
        global ranking (config/target.py). --method auto is magnitude, except for -g head with --data,
        where the head score is measured per run (removal/heads.py): bench/TRANSFORMER.md found magnitude
        removing the wrong key/value group of a GQA decoder (perplexity 73.8 against activation's 31.5)
        and best on GPT-2's heads (activation 6% worse), so neither score is the default alone.
        A method that scores whole units (UNIT_METHODS) prunes them whole: element granularity becomes
        neuron here, so the targets, the masks and the report's settings all say what the run does."""
        if (
            self.method in UNIT_METHODS
            and isinstance(self.granularity, Granularity)
            and self.granularity.kind == "element"
        ):
            object.__setattr__(self, "granularity", Granularity("neuron"))
        if self.target is not None:
            if isinstance(self.granularity, Granularity) and self.granularity.kind == "element":
                object.__setattr__(self, "granularity", Granularity("neuron"))
            object.__setattr__(self, "shrink", True)
            if self.scope == "auto":
                object.__setattr__(self, "scope", "global")
        kind = self.granularity.kind if isinstance(self.granularity, Granularity) else "element"
        if self.method == "auto":
            heads = kind == "head" and self.data is not None and self.threshold is None
            object.__setattr__(self, "method", MEASURED if heads else "magnitude")
        # what bench/ACCURACY.md measured for magnitude-like scores, and bench/ONESHOT.md for the
        # calibrated methods: a global allocation, each calibrated layer then pruned to its share
        ranked_globally = (
            kind in GLOBAL_BY_DEFAULT
            and self.engine == "native"
            and self.method not in UNIT_METHODS  # run as neuron pruning (run/steps.py)
        )
        scope_chosen = self.scope != "auto"
        if self.scope == "auto":
            object.__setattr__(self, "scope", "global" if ranked_globally else "layer")
        if self.schedule == "auto":
            measured = ranked_globally and self.method not in CALIBRATED_METHODS  # calibrated: one shot
            gradual = measured and self.epochs > 0 and self.threshold is None and not self.reconstruct and not self.auto
            object.__setattr__(self, "schedule", "polynomial" if gradual else "oneshot")
        if self.normalize == "auto":
            # the calibrated one-shot path measures its allocation on held-out examples of --data
            # (bench/DECODERS.md: uniform won on the Llama decoder, LAMP on GPT-2 and the classifiers), and
            # magnitude does too when it has --data (bench/DEFAULT_ALLOCATION.md: the measured choice beat
            # LAMP on a byte-level Transformer by 3.0 / 5.1 points at 80 / 90%; run/steps.measured_allocation)
            calibrated = self.method in CALIBRATED_METHODS and self.schedule == "oneshot"
            magnitude = self.method == "magnitude" and self.data is not None and self.threshold is None
            measured = ranked_globally and not scope_chosen and kind == "element" and not self.auto
            # an N:M Wanda run measures the exponent of its input norm instead (calibration/oneshot.py,
            # EXPONENT_TRIALS: bench/DECODERS.md, "A tempered Wanda score")
            exponent = self.method == "wanda" and calibrated and kind == "nm" and not scope_chosen
            exponent = exponent and not self.reconstruct and not self.auto
            measured = measured and (calibrated or magnitude)
            object.__setattr__(self, "normalize", MEASURED if measured or exponent else "lamp")

    @property
    def effective_sparsity(self) -> float | None:
        """The target sparsity; 0.5 when neither a sparsity nor a threshold was given."""
        if self.sparsity is None and self.threshold is None and self.granularity.kind != "nm":
            return 0.5
        return self.sparsity

    @property
    def distill_temperature(self) -> float | None:
        """The softmax temperature fine-tuning distils at; None when it does not distil (--distill
        off, or not asked for; the default is decided by `recovery_defaults`)."""
        if self.distill is None or isinstance(self.distill, bool):
            return None
        return float(self.distill)

    def recovery_defaults(self, removes_structure: bool, can_teach: bool) -> tuple[PruneConfig, tuple[str, ...]]:
        """--reconstruct and --distill where the user left them unset: on for a --target run that masks
        channels (not one a structural step removes at once: KerasHub decoder blocks, heads, layers),
        reconstruction when it has --data, distillation when it also fine-tunes a model the dense one can
        teach (a classifier or a causal LM: `can_teach`). Measured in bench/STRUCTURED.md on three CNNs
        at params=0.5, params=0.25 and flops=0.5, 3 seeds, 2 epochs: the two together beat plain
        fine-tuning in 8 of 9 cells (VGG at 0.25x parameters 0.963 against 0.948, dense 0.968;
        MobileNetV2-style at 0.25x 0.897 against 0.879), and reconstruction alone lifts the one-shot
        model from 0.875 to 0.961 (VGG, 0.5x). Returns the config with both decided (False / off where
        they do not apply) and a note for each default that was switched on."""
        channels = (
            self.target is not None
            and self.granularity.kind == "neuron"
            and not removes_structure
            and self.data is not None
            and self.engine == "native"
        )
        changes, notes = {}, []
        if self.reconstruct is None:
            on = channels and self.schedule == "oneshot" and self.method not in CALIBRATED_METHODS
            changes["reconstruct"] = on
            if on:
                notes.append("--target: the layers after removed channels refit by default (--no-reconstruct: off)")
        if self.distill is None:
            on = channels and self.epochs > 0 and can_teach
            changes["distill"] = DISTILL_TEMPERATURE if on else False
            if on:
                notes.append(
                    f"--target: fine-tuned with the dense model as teacher by default, --distill {DISTILL_TEMPERATURE:g}"
                    " (--distill off: plain fine-tuning)"
                )
        return self.replace(**changes), tuple(notes)

    @property
    def qat_active(self) -> bool:
        """Fine-tuning runs through fake quantisation: --qat on, or --qat auto where bench/QUANT.md found
        QAT ahead of post-training quantisation for the --quantize mode."""
        if self.quantize not in QAT_MODES or self.qat == "off":
            return False
        return self.qat == "on" or QAT_BY_DEFAULT.get(self.quantize, False)

    def replace(self, **changes: Any) -> PruneConfig:
        return dataclasses.replace(self, **changes)

    def with_paths(self, paths: dict[str, str]) -> PruneConfig:
        """This config for a model whose nested models were opened (structure/rebuild.opened): `paths`
        maps a layer's new name to its path in the file ("conv" -> "backbone/conv"). Each layer glob of
        --include, --exclude and the recipe's rules also names, literally, every opened layer whose path
        it matched, so the globs keep naming the layers they named in the file ("backbone/conv*", or
        "dense" for a layer renamed "backbone_dense" to keep names unique)."""

        def widened(patterns) -> tuple[str, ...]:
            found = [name for p in patterns for name, path in paths.items() if name_matches(path, (p,))]
            literal = [re.sub(r"([*?\[])", r"[\1]", name) for name in found]
            return tuple(dict.fromkeys([*patterns, *literal]))

        rules = tuple(dataclasses.replace(rule, pattern=p) for rule in self.overrides for p in widened((rule.pattern,)))
        return self.replace(include=widened(self.include), exclude=widened(self.exclude), overrides=rules)

    def rule_for(self, *names: str) -> LayerRule:
        """The recipe's per-layer rules for a layer known by any of `names` (its name, its outer/inner
        path): skipped when any matching rule says skip, since a skip is the user's explicit word that the
        layer stays whole; otherwise the sparsity of the last matching rule that gives one (later rules
        refine earlier ones); otherwise no sparsity of its own."""
        matching = [r for r in self.overrides if any(name_matches(n, (r.pattern,)) for n in names)]
        if any(r.skip for r in matching):
            return LayerRule(skip=True)
        sparsities = [r.sparsity for r in matching if r.sparsity is not None]
        return LayerRule(sparsity=sparsities[-1] if sparsities else None)


def option_flags(f: dataclasses.Field) -> tuple[str, ...]:
    """The command-line spellings of a field's option ("--min-keep" unless its metadata names others)."""
    return f.metadata.get("flags") or (f"--{f.name.replace('_', '-')}",)


FIELD_NAMES = tuple(f.name for f in fields(PruneConfig))
