"""The steps of a run that prunecli's orchestrations (prune, plan, sweep, auto, the tfmot engine) share.

Each takes plain values and returns what it made: a RunState for `load`, a StepResult (report
section, notes, replacements) for the others, a MaskSet for `score_and_mask`. None of them imports the
pipeline, and none writes into another step's state.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

from prunecli import __version__, runtime, scoring
from prunecli.config import PruneConfig
from prunecli.config.fields import LOSS_FEATURE_SCORES, QUANTIZE_MODES, STRUCTURAL_KINDS, UNIT_METHODS
from prunecli.errors import ConfigError, DataError, InputError, PruneCliError
from prunecli.outputs.report import Report, Timings, layer_stats, totals
from prunecli.results import StepResult
from prunecli.run.state import RunState
from prunecli.structure import keras_graph, probes

Progress = Callable[[str], None]


def checked_progress(progress) -> None:
    """A library entry point's `progress` is None or a function of one message: prune(config, progress=5)
    failed in its first step with TypeError ('int' object is not callable), an error of no family."""
    if progress is not None and not callable(progress):
        raise ConfigError(f"progress takes a function of one message, or None: got {progress!r}")


def silent(_message: str) -> None:
    """A progress callback that shows nothing."""


def load(config: PruneConfig, progress: Progress, timings: Timings) -> tuple[RunState, Future | None]:
    """The model (safe mode unless --unsafe) and --data, the task inferred from them, and, with
    sizes on, a Future of the input's gzip size computed on another core while the run goes on."""
    from prunecli.io import data as data_mod
    from prunecli.io import models as model_io
    from prunecli.training.metrics import infer_task

    progress(f"loading {config.model_path}")
    input_sizes = None
    runtime.seed_run(config.seed)  # before the model's layers draw their default seeds
    probes.forget_cut_searches()  # the report names the stand-in searches this run cut short
    with timings.phase("load"):
        model, source, census = model_io.load_counted(config.model_path, config.unsafe, config.custom_objects)
        keras_graph.compile_loops()  # within a run (keras_graph.compiled_loops): recurrent loops compiled
        _check_output_format(config, model, source)
        check_layer_globs(config, model)
        if config.sizes:  # igzip releases the GIL, so this overlaps with scoring and masking
            input_sizes = model_io.sizes_in_background(source.path)
        compiled_optimizer = getattr(model, "optimizer", None)
        data = task = None
        if config.data:
            data = data_mod.load(config.data, model, config.batch_size, config.val_split, config.seed)
            check_labels(config, data)
            task = infer_task(model, data.y_example, data.next_token) if data.labelled else None
            check_gate_measurable(config, task)
    state = RunState(
        config=config,
        model=model,
        source=source,
        data=data,
        task=task,
        compiled_optimizer=compiled_optimizer,
        loaded_class=type(model).__name__,
        read=census,  # the finiteness check's one read: each weight's non-zeros, for the counts before pruning
        notes=(
            model_io.read_notes(source)
            + _custom_objects_note(config)
            + _one_class_note(config, data, task, model)
            + _pixel_values_note(config, data, model)
        ),
    )
    return state, input_sizes


# layers with which a model takes raw pixel values itself (scaling them to the range it was trained on)
PIXEL_SCALING_LAYERS = ("Rescaling", "Normalization")


def _pixel_values_note(config: PruneConfig, data, model) -> tuple[str, ...]:
    """Inputs of 0..255 pixel values (uint8 arrays, an image folder with no spec `scale`) given to a model
    with no layer that scales them: one trained on [0, 1] inputs then scores noise, and its accuracy
    before and after pruning means little (a [0, 1] CNN "kept" 0.68 on uint8 arrays of its own data,
    loss 8.8, with nothing said). Whether it was is not in the file, so the note says what to check."""
    if data is None or not data.pixel_values:
        return ()
    if any(type(layer).__name__ in PIXEL_SCALING_LAYERS for layer in keras_graph.all_layers(model)):
        return ()
    return (
        f"the inputs of {config.data} are 0..255 pixel values and the model has no Rescaling or Normalization "
        "layer: if it was trained on [0, 1] inputs, scale them (arrays divided by 255, or `scale: "
        "0.00392156862745098` in an image folder's spec.yaml), else its figures are for inputs 255 times too large",
    )


def _one_class_note(config: PruneConfig, data, task, model=None) -> tuple[str, ...]:
    """A classifier's evaluation labels of one class only make its accuracy the share of examples it
    predicts as that class: pruning that pushes predictions toward it "improved" accuracy (a 3-class
    model went from 0.50 to 0.65 on labels all 0, with nothing said). The figures are kept, and said
    to be such. Labels of fewer than half the model's classes (0/1 labels for a 10-class model) are
    said too: the accuracy covers those classes alone."""
    if task is None or not task.accuracy or not data.eval_classes:
        return ()
    if data.eval_classes == 1:
        return (
            f"the evaluation labels of {config.data} hold one class only: accuracy is how often the model "
            "predicts it, before and after pruning, not how well it tells classes apart",
        )
    outputs = getattr(model, "outputs", None) or ()
    classes = outputs[0].shape[-1] if len(outputs) == 1 and outputs[0].shape else None
    if classes is None or data.eval_classes >= classes / 2:
        return ()
    return (
        f"the evaluation labels of {config.data} hold {data.eval_classes} of the model's {classes} classes:"
        " accuracy is measured on those alone, before and after pruning (are these the model's labels?)",
    )


def check_layer_globs(config: PruneConfig, model) -> None:
    """Every layer glob of --include, --exclude and the recipe's rules names a layer of the file as
    loaded (nested paths as `inspect` shows them): an --exclude typo excluded nothing and the run pruned
    what it was meant to keep, exit 0."""
    from prunecli.structure import targets

    for option, patterns in (
        ("--include", config.include),
        ("--exclude", config.exclude),
        ("the recipe's layer rule", [rule.pattern for rule in config.overrides]),
    ):
        unmatched = targets.unmatched_globs(model, patterns)
        if unmatched:
            raise ConfigError(
                f"{option} {', '.join(repr(p) for p in unmatched)} names no layer of {config.model_path}"
                " (`prunecli inspect` lists them)"
            )


def _check_output_format(config: PruneConfig, model, source) -> None:
    """Outputs that could not be right are refused before the work, not after it: an .h5 that Keras
    could not read back (an .h5 input whose structure the run keeps needs no check: it is written by
    copying it), a --quantize that no layer takes."""
    from prunecli.io.models.write import MODEL_SUFFIXES, check_h5_writable, default_output

    out = Path(config.output) if config.output else default_output(config.model_path)
    rebuilds = config.shrink or config.target or config.granularity.kind in STRUCTURAL_KINDS
    if out.suffix in MODEL_SUFFIXES[1:] and (source.format != "h5" or rebuilds):
        # an .h5 input whose structure the run keeps is written by copying it; a rebuilt one by Keras
        # (astrorapid's Masking loads as Keras ops, and its shrunk .h5 failed to save after the work)
        check_h5_writable(model, out)
    if config.quantize and not (config.shrink and config.granularity.kind == "neuron"):
        # (a shrink opens TimeDistributed wrappers, whose Dense layers then quantize: checked after it)
        from prunecli.outputs.quantize import check_quantizable

        # a KerasHub image model is opened first (open_nested), and its layers are quantized as opened
        opened = open_nested(model, config)[0]
        check_quantizable(opened.model if opened.structure_changed else model, config.quantize)


def _custom_objects_note(config: PruneConfig) -> tuple[str, ...]:
    """What reading the output takes when the model needed the user's code: the same objects. An .h5
    output whose structure the run keeps is the input file with new weights (io/models/write.save), so
    it holds what the input held, a Keras-2 Lambda's foreign bytecode included (DM3Loc, bench/ZOO.md):
    Keras' own loader reads the user's objects from a .keras output, which stores them by name."""
    if not config.custom_objects:
        return ()
    from prunecli.io.models.write import default_output

    sources = " ".join(f"--custom-objects {s}" for s in config.custom_objects)
    out = Path(config.output) if config.output else default_output(config.model_path)
    if out.suffix == ".keras":
        readers = f"keras.saving.load_model(..., custom_objects=...), or prunecli's {sources}"
    else:
        readers = (
            f"prunecli's {sources}; an .h5 output keeps the input's layout and stored code where the structure"
            " is unchanged, so for keras.saving.load_model(..., custom_objects=...) write a .keras"
        )
    return (
        f"read with the custom objects of {', '.join(config.custom_objects)}: the output needs them too ({readers})",
    )


def needs_labels(config: PruneConfig) -> str | None:
    """What in this run needs labelled --data (a loss or an accuracy), or None."""
    if config.epochs > 0 or config.schedule != "oneshot":
        return "fine-tuning"
    if config.method in ("gradient", "taylor"):
        return f"--method {config.method}"
    if config.max_accuracy_drop is not None or config.auto:
        return "--max-accuracy-drop" if not config.auto else "--auto"
    if config.distill_temperature is not None:
        return "--distill"
    if config.granularity.kind == "input" and (config.feature_score or "") in LOSS_FEATURE_SCORES:
        return f"--feature-score {config.feature_score}"
    return None


def check_labels(config: PruneConfig, data) -> None:
    """Inputs without labels serve the methods that read inputs only (wanda, sparsegpt, --reconstruct,
    activation, apoz, layer scores); anything that needs a loss or an accuracy is refused, by name."""
    wanted = None if data.labelled else needs_labels(config)
    if wanted:
        raise DataError(f"{config.data} has inputs but no labels (y): {wanted} needs them")


def check_gate_measurable(config: PruneConfig, task) -> None:
    """--max-accuracy-drop on a model whose task measures no accuracy (a regression: a loss only) is
    refused before the work: the gate could only fail the run at its end (exit 4, model withheld). A
    causal LM's next-token accuracy is an accuracy (Task.measures_accuracy): the report, the sweep's
    suggestion and --auto's budget all compare it, and the option was refused there as 'a regression'."""
    if config.max_accuracy_drop is None or task is None:
        return
    if not task.measures_accuracy:
        raise ConfigError(
            f"--max-accuracy-drop: {config.data} scores the model by its loss only (a regression, or outputs"
            " without classes), so no accuracy can be compared; leave the option out"
        )


def open_nested(model, config: PruneConfig, names=None) -> tuple[StepResult, PruneConfig]:
    """With `--shrink` on neurons (and so `--target`): the model with its nested plain models opened
    into one graph (structure/rebuild.opened) when they hold weights this run prunes, so their channels
    can be removed and their residual groups are seen whole; `names` (a plan's) opens exactly these.
    With `-g layer` or `--quantize int8|int4`: a KerasHub image model (task and backbone, rebuild.graph_only)
    opened the same way, so its blocks can be taken out and its quantized convolutions reload. A KerasHub
    block that only calls its layers (rebuild.traceable: MobileNet's, HGNetV2's) is opened as the graph its
    call records, and, when shrinking, a convolution with one group per channel becomes the DepthwiseConv
    it is (rebuild.depthwise_twins), so the channels through it can be removed.
    Nothing changes otherwise, or for a nested model whose layers are all frozen. Also the config whose
    layer globs name the opened layers as they named them in the file (PruneConfig.with_paths)."""
    from prunecli.structure import keras_graph, quantized_conv, rebuild, targets, transformer

    shrinking = config.shrink and config.granularity.kind == "neuron"
    # -g layer and --quantize int8/int4 open a KerasHub backbone or task whose computation is its graph
    # (rebuild.graph_only): as one node, its blocks cannot be taken out, and its config rebuilds its
    # layers as Keras' float convolutions, so prunecli's quantized ones did not reload (exit 4)
    hub_only = config.granularity.kind == "layer" or config.quantize in quantized_conv.MODES
    # -g head --shrink on a KerasHub text classifier: its backbone's TransformerEncoder blocks are rebuilt with
    # fewer heads where they are layers of the model's own graph, so the backbone is opened into it
    encoder_heads = config.granularity.kind == "head" and config.shrink
    hub_only = hub_only or (
        encoder_heads
        and any(
            host is not model and any(type(lay).__name__ in transformer.HUB_ENCODERS for lay in host.layers)
            for host in transformer.encoder_hosts(model)
        )
    )
    if names is None and not (shrinking or hub_only):
        return StepResult(), config

    # the weights this run would prune, by their paths in the file ("backbone/conv"), picked once
    pruned = [] if names is not None else targets.select(model, config.include, config.exclude)
    pruned_paths = ["/" + t.layer_name for t in pruned if not targets.is_frozen(t)]

    def holds(nested) -> bool:
        if names is not None:
            return nested.name in names
        if not shrinking:
            return not rebuild.plain_model(nested) and (rebuild.graph_only(nested) or rebuild.traceable(nested))
        if rebuild.per_position_wrapper(nested) and not nested.weights:
            return True  # a wrapped Dropout between two opened Dense layers would block their channels
        if type(nested).__name__ == "TimeDistributed" and not keras_graph.is_model(nested.layer):
            return True  # a wrapped pooling or BatchNorm would block the channels of the convolutions around it
        return any(f"/{nested.name}/" in path for path in pruned_paths)

    result = rebuild.opened(model, holds)
    flat, opened, paths = result if result is not None else (model, [], {})
    # a convolution with one group per channel becomes the DepthwiseConv it is, so --shrink reads through it
    converts = (shrinking or names is not None) and rebuild.plain_model(flat)  # a subclass would lose its class
    twins = rebuild.depthwise_twins(flat, names) if converts else None
    flat, depthwise = twins if twins is not None else (flat, [])
    if result is None and not depthwise:
        return StepResult(), config
    opened = list(dict.fromkeys(opened))
    wrappers = {lay.name for lay in keras_graph.all_layers(model) if rebuild.per_position_wrapper(lay)}
    per_step = {lay.name for lay in keras_graph.all_layers(model) if type(lay).__name__ == "TimeDistributed"} - wrappers
    notes = []
    if [name for name in opened if name in per_step]:
        notes.append(
            f"TimeDistributed {', '.join(n for n in opened if n in per_step)}: the model it runs on each step was opened"
            " (its layers run on every step as one batch), so its channels can be removed; the output wraps it again"
        )
    if [name for name in opened if name not in wrappers | per_step]:
        notes.append(
            f"nested model(s)/block(s) {', '.join(n for n in opened if n not in wrappers | per_step)} opened into the outer graph, so "
            "their channels can be removed, their blocks taken out and their quantized layers saved as they are: the output holds their layers at the top level (a name another layer "
            "had gets the nested model's prefix)"
        )
    if depthwise:
        shown = ", ".join(depthwise[:4]) + (f" and {len(depthwise) - 4} more" if len(depthwise) > 4 else "")
        notes.append(
            f"{shown}: convolution(s) with one group per channel written as the DepthwiseConv layer(s) computing the"
            " same, so the channels through them can be removed"
        )
    if not rebuild.plain_model(model) and type(flat) is not type(model):
        notes.append(written_as_note(type(model).__name__, type(flat).__name__))
    if [name for name in opened if name in wrappers]:
        notes.append(
            f"TimeDistributed {', '.join(n for n in opened if n in wrappers)}: each wrapped layer is called on the "
            "whole sequence instead (it acts on each step alone, so it computes the same), so its units can be "
            "removed"
        )
    return StepResult(model=flat, notes=tuple(notes), sections={"opened": opened + depthwise}), config.with_paths(paths)


def written_as_note(loaded: str, written: str) -> str:
    """What a user is told when the saved model's class is not the one the file held."""
    if written == "Functional":
        return (
            f"{loaded} is written as a plain Keras functional model of the same inputs and outputs (its class adds"
            " nothing to what the graph computes; a task's preprocessor is not part of the saved model's call:"
            " attach it again to run on raw images or text)"
        )
    return f"{loaded} is written as a {written}, computing the same outputs: load it as one"


def class_change(state: RunState) -> StepResult:
    """The note `written_as_note` whenever the model about to be written is not of the class the file held,
    whichever step rebuilt it: surgery cloned a MobileNet image classifier into a plain functional model
    with exit 0 and no word of it."""
    written = type(state.model).__name__
    if not state.loaded_class or written == state.loaded_class:
        return StepResult()
    return StepResult(notes=(written_as_note(state.loaded_class, written),))


def pick_targets(model, config: PruneConfig) -> StepResult:
    """The prunable weights the options select; not a language model's token embedding and head, nor a
    frozen layer (unless --include names them, or the whole model was saved frozen); for neuron pruning,
    not the model's output units. Fine-tuning that could train none of them (all frozen) is refused
    before any work: it ended in an internal error when nothing at all was trainable."""
    from prunecli.structure import language, targets

    found = targets.select(model, config.include, config.exclude)
    found = [t for t in found if not config.rule_for(t.layer_name).skip]
    refuse_quantized(config, found)
    found, notes = language.without_lm_ends(model, found, config.include)
    found, frozen_notes = targets.without_frozen(model, found, config.include)
    unknown = targets.unknown_kernels_note(model)
    notes = [*notes, *frozen_notes, *([unknown] if unknown else [])]
    if config.epochs and found and all(targets.is_frozen(t) for t in found):
        raise ConfigError(
            f"--epochs {config.epochs}: the layers to prune are frozen (trainable=False), so fine-tuning would train"
            " none of them: drop --epochs, or set trainable = True on them and save the model again"
        )
    if config.method in UNIT_METHODS and config.granularity.kind == "neuron":  # implied: PruneConfig.__post_init__
        notes.append(f"method {config.method} scores whole units: pruned with granularity neuron")
    if config.granularity.kind == "neuron":
        # A unit whose channel reaches a model output through layers that do not mix channels is a
        # class (or an output value): removing it changes what the model predicts. Kept unless --include.
        found, output_notes = targets.without_output_units(model, found, config.include)
        notes.extend(output_notes)
        from prunecli.structure import transformer

        found, ffn_notes = transformer.ffn_only(model, found, config.include)  # Transformers: FFN units only
        notes.extend(ffn_notes)
    if not found:
        frozen = f"; {frozen_notes[0]}" if frozen_notes else ""
        raise InputError(f"{config.model_path}: no prunable layers (after --include/--exclude){frozen}")
    return StepResult(targets=found, notes=tuple(notes))


def already_sparse(found, config: PruneConfig, census=None) -> StepResult:
    """A note when the weights to prune are already more zero than --sparsity asks (an element run on an
    earlier run's output): the masks prune exactly what is asked, the zeros already there stay, so the
    file is sparser than asked (-s 0.3 on a 50% model wrote 50%, each layer's 'target 30%' beside its
    43-80%, nothing said). For prune and plan, which prune at one sparsity (a sweep varies it).
    `census`: the load's count of the weights as they are still (RunState.read), else they are read."""
    note = _already_sparse_note(found, config, census)
    return StepResult(notes=(note,) if note else ())


def _already_sparse_note(found, config: PruneConfig, census=None) -> str | None:
    from prunecli.structure.census import nonzeros

    asked = config.effective_sparsity
    overridden = any(rule.sparsity is not None for rule in config.overrides)  # a layer's own sparsity
    if config.granularity.kind != "element" or asked is None or config.auto or config.target or overridden:
        return None
    size = sum(int(t.size) for t in found)
    zeros = sum(int(t.size) - nonzeros(t.variable, census) for t in found)  # read in place: no copy of a 1B model
    share = zeros / size if size else 0.0
    if share <= asked + 1e-9:
        return None
    return (
        f"the weights to prune are already {share:.1%} zero, more than the {asked:g} asked: the"
        " masks prune that share and the zeros already there stay, so the output is sparser than asked"
    )


def refuse_quantized(config: PruneConfig, found) -> None:
    """A layer Keras (or `--quantize`) already quantized holds integer codes with per-channel scales, not
    its weights: ranking codes across channels and layers is not ranking weights, and int4 codes cannot
    be written back. The float model is what to prune; `--quantize` then keeps its zeros."""
    from prunecli.structure.layers import quantization_mode

    for t in found:
        mode = quantization_mode(t.layer) if t.layer is not None else None
        if mode is not None:
            again = f" and pass --quantize {mode}" if mode in QUANTIZE_MODES else ""
            raise InputError(
                f"{config.model_path}: layer {t.layer_name} is already quantized ({mode}): prune the float model"
                f"{again} (the pruned zeros are kept through quantisation), or --exclude it"
            )


def evaluate(state: RunState, stage: str, progress: Progress, timings: Timings) -> StepResult:
    """Loss and accuracy on the evaluation data at `stage` ("before", "after_pruning", ...); nothing without --data."""
    if state.data is None:
        return StepResult()
    if state.task is None:  # inputs without labels: nothing to measure against
        note = f"{state.config.data} has no labels (y): loss and accuracy were not measured"
        return StepResult(notes=(note,) if stage == "before" else ())
    from prunecli.training.metrics import evaluate as measure

    progress(f"evaluating ({stage.replace('_', ' ')})")
    with timings.phase("evaluate"):
        metrics = measure(state.model, state.data.eval, state.task)
    loss = dense_loss_suspect({stage: metrics}) if stage == "before" else None
    if loss is None:
        return StepResult(metrics={stage: metrics})
    note = (
        f"the dense model's loss on {state.config.data} is {loss:.3g} before any pruning: the data is the likely"
        " cause (inputs on a scale the model was not trained for, such as raw integers), and the losses after"
        " it compare little"
    )
    return StepResult(metrics={stage: metrics}, notes=(note,))


ABSURD_LOSS = 1e12  # a dense model's loss above this on --data (or NaN/Inf) points at the data, not the run


def dense_loss_suspect(metrics) -> float | None:
    """The dense model's loss on --data when it is NaN, Inf or above ABSURD_LOSS, else None."""
    loss = (metrics.get("before") or {}).get("loss")
    if loss is None or (math.isfinite(loss) and abs(loss) <= ABSURD_LOSS):
        return None
    return float(loss)


def score_and_mask(model, targets, data, task, config: PruneConfig, progress: Progress, timings: Timings):
    """Score the targets with the configured method and apply the policy's masks; returns the MaskSet."""
    from prunecli.selection import chunked

    strategy = scoring.get(config.method)
    notes = []
    progress(f"scoring with {config.method}")
    targets = list(targets)
    strategy = _noting_flat_scores(strategy, notes)
    ctx = _scoring_context(model, targets, data, task, config, progress)
    per_chunk = chunked.layer_independent(config, model)  # each layer's mask depends on its scores only
    if per_chunk and config.method in chunked.PER_LAYER_METHODS:
        masks = _score_and_mask_by_chunk(targets, strategy, ctx, config, timings)
    else:
        masks = _score_then_mask(model, targets, strategy, ctx, config, per_chunk, progress, timings)
    with timings.phase("mask"):
        if config.granularity.kind == "neuron":  # a pruned unit goes whole: bias, BN, PReLU, depthwise
            from prunecli.structure import channels, surgery

            masks.notes += surgery.fold_dead_constants(model, list(targets), masks.masks)
            masks.followers = channels.follower_masks(model, list(targets), masks.masks)
            channels.apply_follower_masks(masks.followers)
    masks.notes[:0] = notes + ctx.notes
    return masks


def _noting_flat_scores(strategy, notes: list):
    """`strategy`, for a data-driven method, with its scores checked as they come: a target whose scores
    are all equal on this data (zero gradients or outputs: an all-zero --data, a dead layer) is pruned
    by position, not by the method, and a note says so instead of the report implying a ranking."""
    if not strategy.needs_data or strategy.calibrated:  # calibration notes its own fallbacks
        return strategy

    def scored(targets, ctx):
        scores = strategy.fn(targets, ctx)
        for t in targets:
            if t.name in scores and _all_equal(scores[t.name]):
                notes.append(
                    f"{t.name}: every {strategy.name} score is equal on this data, so its mask goes by"
                    f" position, not by {strategy.name}"
                )
        return scores

    return dataclasses.replace(strategy, fn=scored)


def _all_equal(score) -> bool:
    """Whether a score tensor of two or more entries (NumPy or TensorFlow, read where it lies) holds one value."""
    import numpy as np

    if isinstance(score, np.ndarray):
        return score.size > 1 and score.min() == score.max()
    import tensorflow as tf

    return int(tf.size(score)) > 1 and bool(tf.reduce_min(score) == tf.reduce_max(score))


def _scoring_context(model, targets: list, data, task, config: PruneConfig, progress: Progress):
    """What a scoring method reads: the model, its targets, the training data and loss, the batch
    budget and --calibration-samples (the examples a method that calibrates on --data reads: redundancy);
    under a --strategy the distribution strategy, so data-driven statistics are summed over every replica
    and worker."""
    extras = {"calibration_samples": config.calibration_samples}
    if config.strategy != "default":
        from prunecli.training import distribute

        extras["strategy"] = distribute.get_strategy(config.strategy, config.worker_wait)
    return scoring.ScoringContext(
        model=model,
        targets=targets,
        data=None if data is None else data.train,
        loss_fn=None if task is None else task.loss,
        seed=config.seed,
        max_batches=config.score_batches,
        progress=scoring.registry.silent_progress if config.quiet or progress is silent else None,
        extras=extras,
    )


def _score_and_mask_by_chunk(targets: list, strategy, ctx, config: PruneConfig, timings: Timings):
    """A per-layer method on layer-independent masks: each chunk of layers is scored, selected and
    applied, and its scores dropped, before the next, so only one chunk's scores are held at a time.
    The time spent scoring is reported as "score", the rest as "mask", as on the other path."""
    from prunecli.selection import chunked, kernels

    def score_chunk(chunk):
        with timings.phase("score"):
            return strategy.fn(chunk, ctx)

    scored_before, start = timings.get("score", 0.0), time.perf_counter()
    masks = chunked.mask_in_chunks(targets, score_chunk, strategy.level, config, kernels.apply_masks)
    spent = time.perf_counter() - start - (timings.get("score", 0.0) - scored_before)
    timings["mask"] = timings.get("mask", 0.0) + spent
    return masks


def _score_then_mask(model, targets: list, strategy, ctx, config: PruneConfig, per_chunk: bool, progress, timings):
    """Score every target at once, then build and apply the masks: chunk by chunk when the masks are
    layer-independent (each chunk's scores freed once applied), else through the policy in one go."""
    from prunecli.selection import chunked, kernels, policy

    with timings.phase("score"):
        scores = strategy.fn(targets, ctx)
    progress("building and applying masks")
    with timings.phase("mask"):
        if per_chunk:
            return chunked.mask_in_chunks(
                targets,
                lambda ts: {t.name: scores[t.name] for t in ts},
                strategy.level,
                config,
                kernels.apply_masks,
                done=lambda ts: [scores.pop(t.name) for t in ts],
            )
        masks = policy.build_masks(targets, scores, strategy.level, config, model=model)
        kernels.apply_masks([t.variable for t in targets], [masks.masks[t.name] for t in targets])
        return masks


def remove_structure(state: RunState, progress: Progress, timings: Timings) -> StepResult:
    """-g input, -g layer and -g head: input features, whole layers or attention heads scored, chosen
    and removed (zeroed, or cut out with --shrink) by their own step."""
    from prunecli import removal

    step = removal.step_for(state.config.granularity.kind, state.model)
    return step(state.model, state.targets, state.data, state.task, state.config, progress, timings)


def mask(state: RunState, progress: Progress, timings: Timings) -> StepResult:
    """The one-shot pruning step: score, select and apply, at the configured sparsity (with --normalize
    measured, in the allocation `measured_allocation` chooses)."""
    neuron = state.config.granularity.kind == "neuron"  # --reconstruct refits channels after the mask (refit_channels)
    if scoring.get(state.config.method).calibrated or (state.config.reconstruct and not neuron):
        return calibrated_mask(state, progress, timings)
    config, measured = measured_allocation(state, progress, timings)
    masks = score_and_mask(state.model, state.targets, state.data, state.task, config, progress, timings)
    sections = {"selection": {"path": masks.selection_path}, **measured.sections}
    return StepResult(masks=masks, notes=measured.notes + tuple(masks.notes), sections=sections)


def measured_allocation(state: RunState, progress: Progress, timings: Timings) -> tuple[PruneConfig, StepResult]:
    """--normalize measured for a method scored once (magnitude, the default with --data): every layer
    at the run's final sparsity (uniform) and LAMP each applied to the dense model, the model run on
    MEASURE_EXAMPLES (64) examples of --data, and the one whose outputs moved least (KL for probabilities) is
    the run's: the returned config says it as --scope/--normalize, so a gradual schedule ramps in it too;
    the report's `allocation_measured` gives each error. Measured in bench/DEFAULT_ALLOCATION.md: on a
    byte-level Transformer classifier LAMP prunes the embedding and the convolution after it to 95% at
    90%, moves the outputs almost twice as much as uniform, and ends behind it after 2 epochs; on the
    image models LAMP moves them least and stays. OWL, the calibrated methods' third candidate
    (calibration/oneshot.py), is not one here: on that Transformer at 90% it moved the outputs least of
    all, but fine-tuning from it collapsed in 2 of 3 data orders (16% against 40% accuracy). 64
    examples chose as 128 did in all 36 runs of that bench; each comparison is a forward pass of the
    dense model and of each allocation (on ResNet50 on a 2-core CPU: 25-34 s with 64, 41 s with 128).
    Reading the examples advances the training data's reshuffling, so the same --seed trains on another
    order than `--scope global` or `--scope layer` given explicitly. Costs one masking and one forward
    pass per allocation and a copy of the prunable weights; without room for the copy, or on a stateful
    model (a forward pass changes its state), LAMP, and the account says why. Any other config is
    returned as it is."""
    from prunecli.calibration import MEASURE_EXAMPLES, capture, copies_fit, measures_allocation, outputs, take_examples

    config = state.config
    if not measures_allocation(config) or scoring.get(config.method).calibrated:
        return config, StepResult()
    lamp = config.replace(normalize="lamp")
    candidates = {"uniform": lamp.replace(scope="layer"), "lamp": lamp}
    copy_bytes = sum(4 * t.size for t in state.targets)
    stateful = keras_graph.stateful_layers(state.model)
    if stateful or not copies_fit(copy_bytes):
        why = (
            f"{stateful[0]} is stateful: a forward pass to compare on would change its state"
            if stateful
            else f"no room for {copy_bytes / 2**20:.0f} MiB of weight copies to compare in"
        )
        return lamp, StepResult(sections={"allocation_measured": {"chosen": "lamp", "why": why}})
    progress(f"measuring the allocations ({', '.join(candidates)}) on examples of --data")
    fixed = keras_graph.fixed_batch(state.model)  # a declared batch size: passes of exactly that many
    probe = capture.chunks(take_examples(state.data.train, MEASURE_EXAMPLES), fixed or capture.CHUNK, exact=bool(fixed))

    def trial(candidate):
        return lambda: score_and_mask(state.model, state.targets, state.data, state.task, candidate, silent, timings)

    with timings.phase("allocation"):
        chosen, account = outputs.least_changed(
            state.model, list(state.targets), probe, {name: trial(c) for name, c in candidates.items()}, progress
        )
    chosen = chosen or "lamp"
    note = f"--normalize measured: the {chosen} allocation moved the outputs least (report: allocation_measured)"
    return candidates[chosen], StepResult(notes=(note,), sections={"allocation_measured": account})


def prune_oneshot(state: RunState, progress: Progress, timings: Timings, mask_step=None, dense_model=None) -> RunState:
    """The one-shot branch of every run (prune, each sweep and --auto point), so that what a sweep
    measures is what prune writes: `mask_step` (default `mask`), then after channel masks either the
    refit of --reconstruct against the unpruned model (`dense_model` where the run already holds one,
    the --distill teacher; else copied here before masking), or BatchNorm's moving statistics
    re-estimated on the pruned model. Not both: the refit layers reproduce the dense outputs that the
    dense statistics describe, and re-estimating them undid the refit (bench/STRUCTURED.md)."""
    channels = state.config.granularity.kind == "neuron"
    refit = channels and state.config.reconstruct
    if refit and dense_model is None:
        from prunecli.training import distill

        dense_model = distill.teacher_copy(state.model)
    state = state.after((mask_step or mask)(state, progress, timings))
    if refit:
        return state.after(refit_channels(state, dense_model, progress, timings))
    if channels:
        return state.after(recalibrate_batchnorm(state, progress, timings))
    return state


def calibrated_mask(state: RunState, progress: Progress, timings: Timings) -> StepResult:
    """--method wanda/sparsegpt (layer by layer on calibration examples, with SparseGPT's updates) and
    --reconstruct for any method (masks from the policy, then each layer's survivors refit)."""
    import numpy as np

    from prunecli import calibration

    config = state.config
    n, held = config.calibration_samples, calibration.held_out_count(config)
    examples, held_out = calibration.split_examples(calibration.take_examples(state.data.train, n + held), n)
    if scoring.get(config.method).calibrated:
        what = "exponents" if calibration.measures_exponent(config) else "allocations"
        more = f" ({calibration.count_examples(held_out)} more held out to compare {what} on)" if held_out else ""
        progress(f"calibrating {config.method} on {calibration.count_examples(examples)} examples{more}")
        with timings.phase("calibrate"):
            result = calibration.prune_calibrated(
                state.model, list(state.targets), examples, config, progress, held_out_x=held_out
            )
        masks = result.mask_set()
        return StepResult(masks=masks, notes=tuple(masks.notes), sections={"calibration": result.section})
    dense = {t.name: np.array(t.variable) for t in state.targets}  # score_and_mask zeroes the pruned weights
    masks = score_and_mask(state.model, state.targets, state.data, state.task, config, progress, timings)
    progress("reconstructing each layer's surviving weights")
    with timings.phase("reconstruct"):
        section = calibration.reconstruct(
            state.model, list(state.targets), masks.masks, examples, progress, dense=dense
        )
    notes = tuple(masks.notes) + tuple(section.pop("notes", ()))
    return StepResult(masks=masks, notes=notes, sections={"calibration": section})


def refit_channels(state: RunState, dense_model, progress: Progress, timings: Timings) -> StepResult:
    """--reconstruct after neuron masks: every layer the removed channels reach is refit, on calibration
    examples of --data, to the output the dense model (`dense_model`, copied before masking) gives it."""
    from prunecli.calibration import channel_refit, take_examples

    examples = take_examples(state.data.train, state.config.calibration_samples)
    progress(f"refitting the layers after removed channels on {state.config.calibration_samples} examples")
    with timings.phase("reconstruct"):
        section = channel_refit.refit_channels(
            state.model, dense_model, list(state.targets), state.masks.masks, examples, progress
        )
    return StepResult(notes=tuple(section.pop("notes")), sections={"calibration": section})


def recalibrate_batchnorm(state: RunState, progress: Progress, timings: Timings) -> StepResult:
    """After neuron pruning with --data: BatchNorm's moving statistics re-estimated on the pruned
    model (training/batchnorm.py), the masks and followers held."""
    from prunecli.training import batchnorm

    if state.data is None or not batchnorm.batchnorm_layers(state.model):
        return StepResult()
    progress("re-estimating BatchNorm statistics of the pruned model")
    with timings.phase("recalibrate"):
        count = batchnorm.recalibrate(state.model, state.data.train, getattr(state.masks, "followers", None))
    return StepResult(sections={"batchnorm_recalibrated": {"layers": count, "samples": batchnorm.SAMPLES}})


def finetune(state: RunState, progress: Progress, timings: Timings, teacher=None) -> StepResult:
    """Fine-tune with the masks held; gradual schedules re-mask through `score_and_mask` as they go, in
    the allocation `measured_allocation` chooses on the dense model first under --normalize measured.
    `teacher` (--distill): the unpruned model, copied by the orchestration before anything was pruned."""
    from prunecli.training import finetune as training

    def remask(model, targets, config):
        return score_and_mask(model, targets, state.data, state.task, config, silent, timings)

    measured = StepResult()
    if state.config.schedule != "oneshot":  # a gradual schedule ramps in the allocation measured on the dense model
        config, measured = measured_allocation(state, progress, timings)
        state = state.with_config(config)
    job = training.FineTuneJob(
        config=state.config,
        model=state.model,
        targets=list(state.targets),
        masks=state.masks,
        data=state.data,
        task=state.task,
        remask=remask,
        progress=progress,
        compiled_optimizer=state.compiled_optimizer,
        teacher=teacher,
    )
    result = training.run(job)
    for phase, seconds in result.timings.items():
        timings[phase] = timings.get(phase, 0.0) + seconds
    return dataclasses.replace(
        result, notes=measured.notes + tuple(result.notes), sections={**measured.sections, **result.sections}
    )


def save(state: RunState, out: Path, progress: Progress, timings: Timings):
    """Write the output; returns a Future of its sha256 and bytes (and gzip size with sizes on),
    computed on another core while the run finishes (exports, FLOPs, the report), and the census of the
    weights written (structure/census.py), taken by the save's finiteness check in its one read of them."""
    from prunecli.errors import GateFailed
    from prunecli.io import models as model_io
    from prunecli.selection import kernels

    if state.masks is not None:
        broken = kernels.masks_broken(state.targets, state.masks.masks, state.config.allow_empty)
        if broken:
            raise GateFailed(f"{broken} after the run; nothing was saved")
    progress(f"saving {out}")
    with timings.phase("save"):
        loss = dense_loss_suspect(state.metrics)  # NaN weights from a dense loss already absurd: the data first
        advice = (
            model_io.NONFINITE_ADVICE
            if loss is None
            else f"the dense model's loss on {state.config.data} was already {loss:.3g} before pruning: check the"
            " data's scale first, then --lr"
        )
        sizes = []  # measured from the moment the file holds its bytes: while it is synced and renamed
        census = model_io.save(
            state.model,
            out,
            state.source,
            structure_changed=state.structure_changed,
            nonfinite_advice=advice,
            written=lambda tmp: sizes.append(measure_output(tmp, state.config)),
        )
    if state.structure_changed and "quantize" not in state.sections:  # --quantize checked its own reload
        progress("loading the written model back")
        with timings.phase("reload"):
            check_reloads(state.model, model_io.staged(out), out, state.config, state.data)
    return sizes[0], census


def check_reloads(model, written: Path, out: Path, config: PruneConfig, data=None) -> None:
    """A rebuilt model, written, must load back as prunecli loads a model (the run's --custom-objects and
    --unsafe) and compute what the run's model computes; else the run stops before the output is
    committed (ShrinkVerificationError, exit 1). KerasHub's RWKV7 task, rebuilt as a plain functional
    model, was written with exit 0 and could not be loaded: its blocks cannot build from their config.
    Compared on the run's --data where there is some, as shrink's own check is (stand-ins give every open
    dimension one length: big-phoney's seq2seq runs at none, and this check failed after shrink's passed).
    Skipped, with nothing said, where free memory cannot hold a second copy (the load refuses: exit 6)."""
    from prunecli.errors import ResourceError
    from prunecli.io import models as model_io
    from prunecli.removal.channels import data_sample
    from prunecli.structure import equivalence

    try:
        again, _info = model_io.load(written, config.unsafe, config.custom_objects)
    except ResourceError:
        return
    except PruneCliError as exc:
        raise equivalence.ShrinkVerificationError(
            f"the rebuilt model, written, does not load back ({exc.message.replace(str(written), str(out))});"
            " nothing was saved"
        ) from exc
    inputs = equivalence.example_inputs(model, 4, data_sample(data, structured=True), config.seed)
    equivalence.check_equivalent(model, again, inputs, "the rebuilt model, written and loaded back,")


def measure_output(out: Path, config: PruneConfig) -> Future:
    """A Future of the written output's bytes and sha256 (and gzip size with sizes on), from one read of
    the file on other cores: nothing is left but its fsync and rename and the report, so every core
    compresses."""
    from prunecli.io import models as model_io

    return model_io.sizes_in_background(out, threads=min(8, os.cpu_count() or 1), gzip=config.sizes, sha256=True)


def _as_written(state: RunState) -> list:
    """The run's targets as the written model holds them: after --quantize, each quantized layer's
    kernel as its codes read back (int4 rounding makes zeros of its own: 13,553 in a 301k-parameter MLP
    whose report counted the float kernels, so `verify` failed the run's own report); the targets
    themselves otherwise."""
    from prunecli.structure import targets

    if "quantize" not in state.sections:  # no quantized model was made (none asked, or --export's own)
        return state.targets
    written = {t.name: t for t in targets.walk(state.model)}
    return [written.get(t.name, t) for t in state.targets]


def build_report(
    state: RunState,
    out: Path | None,
    timings: Timings,
    input_sizes: Future | None = None,
    output_sizes: Future | None = None,
) -> Report:
    """The report of a finished run: settings, input/output files and sizes (the Futures of `load`, when
    given, and of `save`, which a run with `out` has), per-layer sparsity, metrics, timings, notes and every section the steps returned.
    Non-zeros as the save's census read the weights written (`state.read`), where the state has it."""

    c = state.config
    settings = {k: (str(v) if k == "granularity" else v) for k, v in c.__dict__.items()}
    settings["overrides"] = [o.__dict__ for o in c.overrides]
    inp = {"path": str(state.source.path), "format": state.source.format, "flavour": state.source.flavour}
    outp = {"path": str(out), "format": out.suffix.lstrip(".")} if out else None
    stats = layer_stats(_as_written(state), state.masks.requested if state.masks else {}, state.read)
    with timings.phase("sizes"):  # last, so that the sizes computed in the background had the most time
        if c.sizes and input_sizes is not None:  # measured from the file opened at load
            inp.update(input_sizes.result())
        else:  # its size at load: the path may hold another file by now
            inp["bytes"] = state.source.size_bytes
        if out:  # bytes, gzip size with sizes on, and sha256: which file this report describes (`prunecli verify`)
            outp.update(output_sizes.result())
    spent = dict(timings)
    # the rest of the run's wall time: targets, FLOPs, per-layer statistics, the report itself
    spent["other"] = max(0.0, timings.wall() - sum(spent.values()))
    spent["total"] = sum(spent.values())
    return Report(
        settings=settings,
        input=inp,
        output=outp,
        totals=totals(state.model, stats, state.read),
        layers=stats,
        metrics=dict(state.metrics),
        timings_s={k: round(v, 4) for k, v in spent.items()},
        notes=list(state.notes)
        + _flavour_note(state, out)
        + [n for n in probes.cut_searches() if n not in state.notes],
        extra=dict(state.sections),
        prunecli_version=__version__,
    )


def _flavour_note(state: RunState, out: Path | None) -> list[str]:
    """A Keras-2 `.h5` written back as a Keras-2 `.h5` keeps its flavour: what read the input reads it,
    prunecli always, tf_keras where it read the input (not a Keras 2.0 GRU without `reset_after`, which
    only prunecli's reader reads); Keras 3 may not (an LSTM's `time_major`, a Reshape-first Sequential).
    A run that changed the structure (--shrink, -g layer, -g head) writes it with Keras 3: said too, since
    a user who gave a Keras-2 file and asked for an .h5 may load it with tf_keras."""
    if out is None or out.suffix not in (".h5", ".hdf5") or state.source.flavour != "keras2":
        return []
    if state.structure_changed:
        return [
            f"{out.name} is written by Keras 3: the run changed the model's structure, so the input's Keras-2"
            " file could not be kept (load it with Keras 3 or prunecli; tf_keras cannot read it)"
        ]
    return [
        f"{out.name} keeps the input's Keras-2 format: it loads where the input loads (prunecli; tf_keras where it"
        " read the input); -o NAME.keras for Keras 3"
    ]
