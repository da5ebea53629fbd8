"""The tfmot engine: TensorFlow Model Optimization's magnitude pruning, behind prunecli's config and report.

It exists so that users with Keras-2 models can get the reference implementation's result, and so the
native engine can be compared with it on the same file (bench/). The path is tfmot's documented one:
wrap the prunable layers with `prune_low_magnitude` (ConstantSparsity, or PolynomialDecay for
--schedule polynomial), fine-tune with `UpdatePruningStep` if --epochs, `strip_pruning`, save with
tf_keras. A one-shot run without fine-tuning computes tfmot's masks once, at step 0, and applies them.

tfmot 0.8.1 only works with tf_keras (Keras 2): importing it sets TF_USE_LEGACY_KERAS=1 and picks
tf_keras. Keras 3 and tf_keras live side by side in one process as long as `tf.keras` was resolved
before that import, so the engine resolves it first and puts the variable back afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunecli import runtime
from prunecli.config import PruneConfig, name_matches
from prunecli.errors import ConfigError, InputError, ModelLoadError, OutputError, first_line, write_error
from prunecli.outputs.report import Timings
from prunecli.run import steps
from prunecli.run.state import PruneResult, RunState


def import_tfmot():
    """tfmot and tf_keras, without leaving `tf.keras` or TF_USE_LEGACY_KERAS changed for the process."""
    import tensorflow as tf

    before = os.environ.get("TF_USE_LEGACY_KERAS")
    getattr(tf.keras, "version", None)  # resolve tf.keras now, under the user's own setting
    try:
        import tensorflow_model_optimization as tfmot
        import tf_keras
    finally:
        if before is None:
            os.environ.pop("TF_USE_LEGACY_KERAS", None)
        else:
            os.environ["TF_USE_LEGACY_KERAS"] = before
    return tfmot, tf_keras


def _load(config: PruneConfig, tf_keras):
    from prunecli.io import models as model_io

    info = model_io.inspect_file(config.model_path)
    if info.flavour != "keras2":
        raise ModelLoadError(f"{info.path} was written by Keras 3; tfmot needs a Keras-2 .h5 — use --engine native")
    if not config.unsafe:
        model_io.check_safe(info)
    model_io.check_memory(info)
    try:
        with model_io.quiet_keras():
            model = tf_keras.models.load_model(info.path, compile=True)
    except Exception as exc:  # tf_keras raises ValueError/TypeError/OSError for files it cannot read
        raise ModelLoadError(f"tf_keras cannot load {info.path}: {first_line(exc)}") from exc
    if not isinstance(model, tf_keras.Model):
        raise ModelLoadError(f"{info.path} did not load as a tf_keras model")
    model_io.check_finite(model, "load", info.path)
    return model, info


def _layer_sparsity(name: str, config: PruneConfig) -> float | None:
    """The sparsity for a top-level layer: the run's, a matching override's, or None when skipped."""
    rule = config.rule_for(name)
    if rule.skip:
        return None
    chosen = config.effective_sparsity if rule.sparsity is None else rule.sparsity
    if config.include and not name_matches(name, config.include):
        return None
    if config.exclude and name_matches(name, config.exclude):
        return None
    return chosen


def _plan_layers(model, config: PruneConfig, tfmot, notes: list) -> dict[str, float]:
    """{layer name: sparsity} for every layer tfmot will wrap; errors for layers it cannot prune."""
    from tensorflow_model_optimization.python.core.sparsity.keras.prune_registry import PruneRegistry

    from prunecli.structure import keras_graph, targets

    if not keras_graph.is_graph_network(model) and type(model).__name__ != "Sequential":
        raise ModelLoadError("tfmot prunes Sequential and functional models only; use --engine native")
    plan = {}
    for target in targets.walk(model):
        layer_name = target.layer_name.split("/")[0]
        layer = model.get_layer(layer_name)
        sparsity = _layer_sparsity(layer_name, config)
        if sparsity is None or layer_name in plan:
            continue
        if isinstance(layer, tfmot.sparsity.keras.PrunableLayer):
            pass
        elif hasattr(layer, "layers"):
            raise ModelLoadError(f"tfmot cannot prune inside the nested model {layer_name}; use --engine native")
        elif not PruneRegistry.supports(layer):
            raise ModelLoadError(
                f"tfmot cannot prune layer {layer_name} ({type(layer).__name__}); "
                f"use --engine native or --exclude {layer_name}"
            )
        if not config.allow_empty and sparsity > 1.0 - config.min_keep:
            notes.append(f"{layer_name}: sparsity held at {1.0 - config.min_keep:g} (min_keep)")
            sparsity = 1.0 - config.min_keep
        plan[layer_name] = sparsity
    if not plan:
        raise InputError(f"{config.model_path}: no layers tfmot can prune (after --include/--exclude)")
    return plan


def _schedule(tfmot, config: PruneConfig, sparsity: float, steps_per_epoch: int):
    """tfmot's schedule matching prunecli's: the same cubic ramp, length and update frequency."""
    from prunecli.selection import schedule as schedules

    sk = tfmot.sparsity.keras
    if config.schedule == "polynomial":
        plan = schedules.build("polynomial", config.epochs, steps_per_epoch, config.initial_sparsity)
        frequency = max(1, plan.update_steps[1] - plan.update_steps[0]) if len(plan.update_steps) > 1 else 1
        # tfmot updates only on multiples of the frequency: end the ramp on one, or the final sparsity is missed
        end = max(frequency, (plan.ramp_steps // frequency) * frequency)
        start = min(config.initial_sparsity, sparsity)
        return sk.PolynomialDecay(start, sparsity, begin_step=0, end_step=end, power=3, frequency=frequency)
    return sk.ConstantSparsity(sparsity, begin_step=0, end_step=0, frequency=1)  # masks fixed after step 0


def _wrap(model, plan: dict[str, float], config: PruneConfig, tfmot, tf_keras, steps_per_epoch: int):
    def clone(layer):
        if layer.name in plan:
            schedule = _schedule(tfmot, config, plan[layer.name], steps_per_epoch)
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer  # reused as is, weights included (as tfmot's own whole-model wrapping does)

    try:
        wrapped = tf_keras.models.clone_model(model, clone_function=clone)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ModelLoadError(f"tfmot cannot wrap this model: {str(exc).strip().splitlines()[0]}") from exc
    return wrapped


def _wrappers(model, tfmot):
    from tensorflow_model_optimization.python.core.sparsity.keras.pruning_wrapper import PruneLowMagnitude

    return [layer for layer in model.layers if isinstance(layer, PruneLowMagnitude)]


def _mask_once(model, tfmot) -> None:
    """tfmot's own mask computation (top_k on |w| per layer) at step 0, then the masks applied."""
    for wrapper in _wrappers(model, tfmot):
        wrapper.pruning_step.assign(0)
        wrapper.pruning_obj.conditional_mask_update()
        wrapper.pruning_obj.weight_mask_op()


def _optimizer(config: PruneConfig, tf_keras):
    name = (config.optimizer or "adam").strip().lower()
    try:
        optimizer = tf_keras.optimizers.get(name)
    except ValueError as exc:
        raise ConfigError(f"unknown optimizer {config.optimizer!r} for tf_keras") from exc
    if config.learning_rate is not None:
        optimizer.learning_rate = config.learning_rate
    return optimizer


def _evaluate(model, dataset, task) -> dict[str, float]:
    metrics = [task.accuracy] if task.accuracy else []
    model.compile(optimizer="adam", loss=task.loss, metrics=metrics)
    values = model.evaluate(dataset, verbose=0, return_dict=True)
    out = {"loss": float(values["loss"])}
    acc = [v for k, v in values.items() if k.endswith("accuracy")]
    if acc:
        out["accuracy"] = float(acc[0])
    return out


def _pruned(wrapped, plan: dict[str, float], tfmot):
    """prunecli Targets for the weights tfmot pruned (the variables the stripped model keeps), and a
    MaskSet of tfmot's final keep-masks and the sparsity requested for each."""
    import numpy as np

    from prunecli.selection.policy import MaskSet
    from prunecli.structure.targets import Target

    found, masks = [], MaskSet()
    for wrapper in _wrappers(wrapped, tfmot):
        layer = wrapper.layer
        for weight, mask, _threshold in wrapper.pruning_vars:
            attr = weight.name.rsplit("/", 1)[-1].split(":")[0]
            target = Target(
                f"{layer.name}/{attr}", layer.name, type(layer).__name__, attr, weight, len(weight.shape) - 1, layer
            )
            found.append(target)
            masks.masks[target.name] = np.asarray(mask) != 0
            masks.requested[target.name] = plan[layer.name]
    return found, masks


def _save(model, out: Path, training_setup, tf_keras) -> None:
    """Write the stripped model as a Keras-2 .h5, atomically; the file keeps the input's loss and
    optimizer (`training_setup`) when the input was compiled."""
    from prunecli.io import models as model_io

    if training_setup is not None:
        model.compile(optimizer=tf_keras.optimizers.deserialize(training_setup[1]), loss=training_setup[0])
    try:
        with model_io.atomic_path(out) as tmp, model_io.quiet_keras():
            model.save(tmp, save_format="h5")
    except OSError as exc:  # the user's name and the reason, not the temporary name; a full disk is exit 6
        raise write_error(out, exc) from exc


def prune(config: PruneConfig, progress=None) -> PruneResult:
    """The tfmot run: same config, same report schema as the native engine."""
    from prunecli.io import models as model_io

    say = progress or steps.silent
    timings = Timings()
    notes: list[str] = []
    metrics: dict = {}
    sections: dict = {}
    out = model_io.resolve_output(config.model_path, config.output, config.force)
    if out.suffix not in (".h5", ".hdf5"):
        raise OutputError(f"--engine tfmot writes Keras-2 .h5 files; give an .h5 output instead of {out}")
    tfmot, tf_keras = import_tfmot()
    loaded = _load_all(config, tf_keras, say, timings)
    model, data, task = loaded.model, loaded.data, loaded.task
    plan = _plan_layers(model, config, tfmot, notes)
    if task is not None:
        say("evaluating (before)")
        with timings.phase("evaluate"):
            metrics["before"] = _evaluate(model, data.eval, task)
    steps_per_epoch = int(data.train.cardinality()) if data is not None else 1
    say(f"wrapping {len(plan)} layer(s) with tfmot prune_low_magnitude")
    with timings.phase("mask"):
        wrapped = _wrap(model, plan, config, tfmot, tf_keras, steps_per_epoch)
        if config.schedule == "oneshot":
            _mask_once(wrapped, tfmot)
    if config.schedule == "oneshot" and task is not None:
        with timings.phase("evaluate"):
            metrics["after_pruning"] = _evaluate(wrapped, data.eval, task)
    if config.epochs > 0:
        with runtime.tensorflow_seeded(config.seed):  # its Dropout draws from TensorFlow's global seed
            sections["finetune"] = _finetune(wrapped, config, loaded, tfmot, tf_keras, say, timings)
    stripped = tfmot.sparsity.keras.strip_pruning(wrapped)
    if config.epochs > 0:
        with timings.phase("evaluate"):
            metrics["after_finetune"] = _evaluate(stripped, data.eval, task)
    targets, masks = _pruned(wrapped, plan, tfmot)
    model_io.check_finite(stripped, "fine-tuning")  # a NaN model is an error, never a saved file
    say(f"saving {out}")
    with timings.phase("save"):
        _save(stripped, out, loaded.training_setup, tf_keras)
    sections["engine"] = {
        "name": "tfmot",
        "tfmot_version": tfmot.__version__,
        "keras": f"tf_keras {tf_keras.__version__}",
    }
    state = RunState(
        config=config,
        model=stripped,
        source=loaded.source,
        data=data,
        task=task,
        targets=tuple(targets),
        masks=masks,
        notes=tuple(notes),
        metrics=metrics,
        sections=sections,
    )
    output_sizes = steps.measure_output(model_io.staged(out), config)
    report = steps.build_report(state, out, timings, loaded.input_sizes, output_sizes)
    return PruneResult(report=report, model=stripped, masks=masks, output_path=out)


@dataclass
class _Loaded:
    """The input model as tf_keras loaded it, its file, its training setup (loss, serialised optimizer)
    when it was compiled, and the data with the task inferred from it (None without --data)."""

    model: Any
    source: Any
    training_setup: tuple | None
    data: Any = None
    task: Any = None
    input_sizes: Any = None  # a Future of the input file's sizes (with sizes on)


def _load_all(config: PruneConfig, tf_keras, say, timings) -> _Loaded:
    """The load phase: the model with tf_keras, the training setup the saved file keeps, and the data."""
    from prunecli.io import data as data_mod
    from prunecli.io import models as model_io
    from prunecli.training.metrics import infer_task

    say(f"loading {config.model_path} with tf_keras")
    with timings.phase("load"):
        model, source = _load(config, tf_keras)
        compiled = getattr(model, "loss", None) is not None and getattr(model, "optimizer", None) is not None
        training_setup = (model.loss, tf_keras.optimizers.serialize(model.optimizer)) if compiled else None
        loaded = _Loaded(model, source, training_setup)
        if config.sizes:  # the file opened now: its sizes are this file's, even if the path is replaced
            loaded.input_sizes = model_io.sizes_in_background(source.path)
        if config.data:
            loaded.data = data_mod.load(config.data, model, config.batch_size, config.val_split, config.seed)
            steps.check_labels(config, loaded.data)  # inputs alone: nothing is measured against placeholders
            loaded.task = infer_task(model, loaded.data.y_example) if loaded.data.labelled else None
    return loaded


def _finetune(wrapped, config: PruneConfig, loaded: _Loaded, tfmot, tf_keras, say, timings) -> dict:
    """Fine-tune the wrapped model with Keras fit and tfmot's UpdatePruningStep; the `finetune` section."""
    task = loaded.task
    say(f"fine-tuning with tfmot: {config.epochs} epoch(s), schedule {config.schedule}")
    wrapped.compile(
        optimizer=_optimizer(config, tf_keras), loss=task.loss, metrics=[task.accuracy] if task.accuracy else []
    )
    with timings.phase("finetune"):
        history = wrapped.fit(
            loaded.data.train, epochs=config.epochs, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()]
        )
    return {
        "schedule": config.schedule,
        "epochs_run": len(history.history.get("loss", [])),
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
