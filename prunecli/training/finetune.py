"""Fine-tuning with the masks held, L1/L2 penalties, and gradual or dynamic pruning schedules.

One compiled train step (tf.function, XLA where it compiles) computes the loss plus the penalties,
applies the optimizer and then re-applies the masks, so every pruned weight is exactly 0.0 after
every step whatever the optimizer does (momentum, Adam moments and decoupled weight decay all move
masked weights; the re-mask inside the same step undoes it before anything can read them).

The optimizer is a fresh copy of the one the model file was compiled with (its class and settings,
not its state), unless --optimizer names another; --lr overrides the learning rate. Without either,
Adam with lr 1e-3.

Schedule `dynamic` follows DPF (Lin et al. 2020, "Dynamic Model Pruning with Feedback"): dense
shadow copies of the prunable weights receive the gradients computed with the masked weights, and
the masks are re-scored from the shadows every few steps, so a pruned weight whose shadow grows
large comes back. At the end of the ramp the masks are frozen and training continues sparse.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prunecli.config import GRADUAL, LayerOverride, PruneConfig, parse_optimizer
from prunecli.errors import ConfigError
from prunecli.results import StepResult
from prunecli.selection import schedule as schedules
from prunecli.training import distribute
from prunecli.training.metrics import evaluate, loss_callable
from prunecli.training.progress import EpochProgress, Stopwatch

NEAR_ZERO = 1e-3  # |w| below this counts as "near zero" in the report
DEFAULT_OPTIMIZER = "adam"
DEFAULT_LEARNING_RATE = 1e-3


@dataclass
class FineTuneJob:
    """What fine-tuning works on. `remask(model, targets, config) -> MaskSet` re-scores and re-masks
    (gradual schedules call it with the scheduled sparsity); the run's orchestration passes it in, so
    training never imports the pipeline. Under a --strategy, `distribute.replicated` swaps `model` and
    `targets` for a mirrored copy for the duration of training only."""

    config: PruneConfig
    model: Any
    targets: list
    masks: Any
    data: Any
    task: Any
    remask: Callable
    progress: Callable[[str], None]
    compiled_optimizer: Any = None
    teacher: Any = None  # --distill: a frozen copy of the model taken before pruning (distill.teacher_copy)
    notes: list = field(default_factory=list)
    mask_notes: list = field(default_factory=list)  # the latest mask update's notes only


def run(job: FineTuneJob) -> StepResult:
    """Fine-tune job.model on job.data.train as job.config says, with the masks held.

    Returns the `finetune` report section, the final masks, and, for gradual schedules, the
    "after_pruning" metrics (measured when the final sparsity was first reached). Under a --strategy
    other than default, training runs on a mirrored copy whose weights are copied back at the end."""
    if job.data is None:
        raise ConfigError("fine-tuning (--epochs / --schedule) needs --data")
    strategy = distribute.get_strategy(job.config.strategy, job.config.worker_wait)
    with distribute.replicated(job, strategy):
        return _run(job, strategy)


def _run(s: FineTuneJob, strategy) -> StepResult:
    """The fine-tuning run on the strategy's device(s): build the trainer and the schedule, train the
    epochs, restore the best epoch's weights under early stopping, and report."""
    c = s.config
    trainer, optimizer_info = _make_trainer(s, strategy)
    steps_per_epoch = _steps_per_epoch(s.data.train)
    plan = schedules.build(c.schedule, c.epochs, steps_per_epoch, c.initial_sparsity, c.schedule_steps)
    validation, held_out = _validation_data(s)
    if c.early_stopping and not held_out:
        s.notes.append("early stopping watches the training loss (no held-out data; give --val-split)")
    if not getattr(s.data, "eval_held_out", True):  # the report's metrics are then on the rows it trained on
        s.notes.append(
            "the accuracy after fine-tuning is measured on the data it was fine-tuned on (no held-out data:"
            " add x_test/y_test to the file, or give --val-split), so it flatters the pruned model"
        )
    clock = Stopwatch()
    s.progress(f"fine-tuning: {c.epochs} epoch(s), schedule {c.schedule}, {optimizer_info['name']}")
    with clock.running():
        loop = _train_epochs(s, trainer, plan, strategy, validation, steps_per_epoch, clock)
    if loop.best.weights is not None and loop.best.epoch != loop.history[-1]["epoch"]:
        s.model.set_weights(loop.best.weights)
    section = _finetune_section(s, trainer, loop, optimizer_info, strategy, held_out, clock)
    return StepResult(
        sections={"finetune": section},
        notes=tuple(s.notes + s.mask_notes),
        metrics=loop.metrics,
        timings={"finetune": clock.elapsed},
        masks=s.masks,
    )


def _make_trainer(s: FineTuneJob, strategy) -> tuple[Trainer, dict]:
    """The optimizer and the compiled trainer, made under the strategy's scope: the optimizer binds to
    the strategy it is made under, and masks and slots live per replica. A mirrored copy has its own
    bias/BN variables, so the followers' masks are first pointed at them."""
    c = s.config
    if not distribute.is_default(strategy) and getattr(s.masks, "followers", None):
        from prunecli.structure import channels

        s.masks = dataclasses.replace(s.masks, followers=channels.follower_masks(s.model, s.targets, s.masks.masks))
    with strategy.scope():
        optimizer, optimizer_info = make_optimizer(c, s.compiled_optimizer)
        trainer = Trainer(s, optimizer, dense_shadow=c.schedule == "dynamic", strategy=strategy)
    return trainer, optimizer_info


@dataclass
class _Loop:
    """What the epoch loop leaves behind: one log per epoch run, the best epoch for early stopping,
    the steps taken, the mask updates made, and the metrics measured when the final sparsity was first
    reached (gradual schedules)."""

    history: list[dict] = field(default_factory=list)
    best: _Best = field(default_factory=lambda: _Best())
    step: int = 0
    updates: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)


def _train_epochs(s: FineTuneJob, trainer: Trainer, plan, strategy, validation, steps_per_epoch: int, clock) -> _Loop:
    """Train epoch by epoch, logging each (with the held-out loss when there is validation data),
    until the last epoch or until early stopping sees no improvement for --early-stopping epochs."""
    c = s.config
    show = EpochProgress(c, s.progress)
    loop = _Loop()
    for epoch in range(1, c.epochs + 1):
        show.begin(epoch, steps_per_epoch)
        epoch_start = loop.step
        sums = _train_one_epoch(s, trainer, plan, strategy, clock, loop, show)
        logs = _epoch_logs(trainer, sums, validation)
        loop.history.append({"epoch": epoch, **logs})
        show.end(logs)
        if c.early_stopping and epoch_start >= plan.frozen_from:  # the masks were final all epoch
            if not loop.best.improved(logs.get("val_loss", logs["loss"]), epoch, s.model):
                if epoch - loop.best.epoch >= c.early_stopping:
                    break
    return loop


def _train_one_epoch(s: FineTuneJob, trainer: Trainer, plan, strategy, clock, loop: _Loop, show) -> _Sums:
    """One pass over the training data, updating the masks at the steps the schedule names (off the
    training clock). Gradual schedules measure the model once when the final sparsity is reached."""
    sums = trainer.new_sums()
    for x, y in distribute.distribute_batches(strategy, s.data.train):
        if loop.step in plan.update_steps:
            with clock.paused():
                _update_masks(s, trainer, plan, loop.step)
                loop.updates += 1
                if loop.step == plan.frozen_from and s.config.schedule in GRADUAL:
                    with distribute.loaded_model(s):  # Keras evaluate: on one device
                        loop.metrics["after_pruning"] = evaluate(s.model, s.data.eval, s.task)
        sums.add(*trainer.train(x, y))
        loop.step += 1
        show.step(sums)
    return sums


def _epoch_logs(trainer: Trainer, sums: _Sums, validation) -> dict:
    """The epoch's training loss (and accuracy), the validation ones prefixed `val_`, and the sparsity."""
    logs = sums.logs()
    if validation is not None:
        logs.update({f"val_{k}": v for k, v in trainer.evaluate(validation).logs().items()})
    logs["sparsity"] = trainer.mask_sparsity()
    return logs


def _finetune_section(s: FineTuneJob, trainer: Trainer, loop: _Loop, optimizer_info, strategy, held_out, clock) -> dict:
    """The report's `finetune` section: the settings in effect and what the run measured."""
    c = s.config
    return {
        "schedule": c.schedule,
        "epochs_requested": c.epochs,
        "epochs_run": len(loop.history),
        "stopped_early": len(loop.history) < c.epochs,
        "best_epoch": loop.best.epoch,
        "steps": loop.step,
        "optimizer": optimizer_info,
        "loss": _name_of(s.task.loss),
        "l1": c.l1,
        "l2": c.l2,
        "jit_compile": trainer.jit_compile,
        "lr_schedule": trainer.lr_schedule,
        "distill": {
            "temperature": c.distill_temperature,
            "weight": c.distill_weight,
            "teacher": c.teacher or "the input model",
        }
        if trainer.distilled
        else None,
        "qat": trainer.fake_quant.describe() if trainer.fake_quant else None,
        "distribute": distribute.describe(strategy),
        "validation": "held-out" if held_out else "training data",
        "mask_updates": loop.updates,
        **({"regrown_weights": trainer.regrown} if c.schedule == "dynamic" else {}),
        "final_sparsity": trainer.mask_sparsity(),
        "near_zero_weights": trainer.near_zero(),
        "train_seconds": round(clock.elapsed, 3),
        "history": loop.history,
    }


def scheduled_config(config: PruneConfig, plan: schedules.Schedule, step: int) -> PruneConfig:
    """The run's config with the sparsity (and each override's) the schedule wants at `step`."""
    overrides = tuple(
        LayerOverride(o.pattern, None if o.sparsity is None else plan.sparsity_at(step, o.sparsity), o.skip)
        for o in config.overrides
    )
    return config.replace(sparsity=plan.sparsity_at(step, config.effective_sparsity), overrides=overrides)


def _update_masks(s: FineTuneJob, trainer: Trainer, plan: schedules.Schedule, step: int) -> None:
    """Re-score and re-mask at the scheduled sparsity through the run's selection path; the notes of
    the latest update replace the previous update's."""
    trainer.before_rescoring()
    with distribute.loaded_model(s):  # scoring and masking: on one device, as in the rest of the run
        masks = s.remask(s.model, s.targets, scheduled_config(s.config, plan, step))
    s.masks = masks
    s.mask_notes[:] = list(dict.fromkeys(masks.notes))
    trainer.set_masks(masks)


# ---------------------------------------------------------------------------------------------
# optimizer and loss


def make_optimizer(config: PruneConfig, compiled=None):
    """A fresh optimizer: --optimizer if given, else a copy of the model's compiled one, else Adam."""
    import keras

    if config.optimizer is None and compiled is not None:
        settings = compiled.get_config()
        if config.learning_rate is not None:
            settings["learning_rate"] = config.learning_rate
        optimizer, source = type(compiled).from_config(settings), "model"
    else:
        name, options = parse_optimizer(config.optimizer or DEFAULT_OPTIMIZER)
        try:
            cls = type(keras.optimizers.get(name))
        except ValueError:
            raise ConfigError(f"unknown optimizer {name!r} (try adam, adamw, sgd, rmsprop)") from None
        options.setdefault(
            "learning_rate", DEFAULT_LEARNING_RATE if config.learning_rate is None else config.learning_rate
        )
        try:
            optimizer = cls(**options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"--optimizer {config.optimizer}: {str(exc).splitlines()[0]}") from exc
        source = "options"
    info = {"name": type(optimizer).__name__, "learning_rate": _learning_rate(optimizer), "from": source}
    for key in ("momentum", "weight_decay"):
        value = getattr(optimizer, key, None)
        if isinstance(value, (int, float)) and value:
            info[key] = float(value)
    return optimizer, info


def _learning_rate(optimizer) -> float | None:
    try:
        return float(optimizer.learning_rate)
    except (TypeError, ValueError):
        return None


def _name_of(thing) -> str:
    return thing if isinstance(thing, str) else getattr(thing, "name", None) or type(thing).__name__


# ---------------------------------------------------------------------------------------------
# the compiled steps


class Trainer:
    """The compiled train and evaluation steps of one run, with the masks held in variables.

    Masks live in boolean tf.Variables that schedules overwrite in place, so a mask update never
    retraces or recompiles the step. With `dense_shadow` (schedule dynamic) the optimizer updates
    dense shadow copies of the prunable weights and the model's weights are shadow * mask.

    With --distill T, `teacher` (a frozen copy of the model taken before pruning, distill.teacher_copy;
    by default `s.teacher` when the job has one) runs in inference mode inside the same step, and the
    loss becomes (1 - w) * task + w * T**2 * KL(teacher || student) (training/distill.py).
    With --lr-schedule cosine the learning rate decays from its start value to 0 over the run's steps.
    With --quantize int8|int4 and QAT (config.qat_active), the student's forward pass in both steps
    computes with Keras' quantisation grid, straight-through gradients (training/fake_quant.py); the
    masks are held exactly as without it.
    """

    def __init__(self, s, optimizer, dense_shadow: bool = False, strategy=None, teacher=None):
        import tensorflow as tf

        c = s.config
        teacher = teacher if teacher is not None else getattr(s, "teacher", None)
        temperature = c.distill_temperature
        if temperature is not None and teacher is None:
            raise ConfigError("--distill needs the unpruned model as teacher; none was passed to fine-tuning")
        self.distilled = temperature is not None
        self.optimizer = optimizer
        self.lr_schedule = _set_lr_schedule(optimizer, c, s.data)
        self.model = s.model
        self.strategy = strategy or tf.distribute.get_strategy()
        self.fake_quant = None
        if getattr(c, "qat_active", False):
            from prunecli.training import fake_quant

            self.fake_quant = fake_quant.for_run(s.model, c.quantize)
            if self.fake_quant.skipped:
                s.notes.append(
                    f"--qat {c.quantize}: {len(self.fake_quant.skipped)} layer(s) fine-tuned without fake "
                    "quantisation (int4 QAT covers Dense only): see finetune.qat"
                )
        trainable = list(s.model.trainable_variables)
        self._hold_masks(s, trainable)
        updated = self._make_shadows(trainable, dense_shadow)
        optimizer.build(updated)
        self._train_py, self._eval_py = self._make_steps(s, teacher, temperature, trainable, updated)
        self.regrown = 0
        self.jit_compile = use_xla(s.model) and distribute.is_default(self.strategy)  # XLA: one device
        self._compile()

    def _hold_masks(self, s, trainable: list) -> None:
        """The masks as boolean variables (all-ones for a target without one), one per trainable target,
        and the keep-masks of the per-channel parameters that follow a pruned unit (bias, BN, PReLU,
        depthwise), which are held at 0 too. Variables, so a mask update never retraces the step."""
        import tensorflow as tf

        ids = {id(v) for v in trainable}
        known = getattr(s.masks, "masks", None) or {}
        self.targets = [t for t in s.targets if id(t.variable) in ids]
        self.masks = [
            tf.Variable(
                tf.cast(known[t.name], tf.bool) if t.name in known else tf.ones(t.shape, tf.bool),
                trainable=False,
                name=f"mask_{i}",
            )
            for i, t in enumerate(self.targets)
        ]
        followers = list(getattr(s.masks, "followers", None) or [])
        self.followers = [v for v, _ in followers]
        self.follower_keep = [
            tf.Variable(tf.constant(keep, tf.bool), trainable=False, name=f"follower_mask_{i}")
            for i, (_, keep) in enumerate(followers)
        ]

    def _make_shadows(self, trainable: list, dense_shadow: bool) -> list:
        """With `dense_shadow` (schedule dynamic), dense copies of the held weights that the optimizer
        updates instead of them; returns the variables the optimizer updates, in `trainable`'s order."""
        import keras
        import tensorflow as tf

        shadow_of = {}  # dense copies (not views: keras.Variable(v.value) would share v's storage)
        if dense_shadow:
            held = [t.variable for t in self.targets]
            shadow_of = {id(v): keras.Variable(tf.identity(v.value), name=f"dense_{i}") for i, v in enumerate(held)}
        self.shadows = list(shadow_of.values())
        return [shadow_of.get(id(v), v) for v in trainable]

    def _make_steps(self, s, teacher, temperature, trainable: list, updated: list):
        """The Python train and eval steps that `_compile` turns into tf.functions. The train step runs
        the gradient step on every replica, then writes source * mask into each held weight (the source
        is its dense shadow under schedule dynamic) and zeroes the pruned followers, all in one step."""
        import tensorflow as tf

        loss_fn = loss_callable(s.task.loss, "fine-tuning")
        teacher_targets, objective = self._objective(s.config, s.task, teacher, temperature)
        data_loss, sums = self._task_measures(s.task, loss_fn)
        held = [t.variable for t in self.targets]
        sources = self.shadows or held
        optimizer = self.optimizer
        quantized = self.fake_quant.active if self.fake_quant else contextlib.nullcontext  # QAT: while traced

        def replica_step(x, y):
            soft_targets = teacher_targets(x)
            with tf.GradientTape() as tape:
                with quantized():
                    pred = self.model(x, training=True)
                loss = data_loss(y, pred)
                total = objective(loss, soft_targets, pred)
                # this replica's share of the global batch (1.0 on one device): the optimizer sums the
                # replicas' gradients, which then are the gradient of the mean loss over the global batch
                total *= distribute.global_share(tf.shape(tf.nest.flatten(pred)[0])[0])
            grads = tape.gradient(total, trainable)
            optimizer.apply_gradients([(g, v) for g, v in zip(grads, updated, strict=True) if g is not None])
            return sums(y, pred, loss)

        def train_step(x, y):
            out = self.strategy.run(replica_step, args=(x, y))
            for v, source, mask in zip(held, sources, self.masks, strict=True):  # on every replica
                v.assign(tf.where(mask, source, tf.zeros_like(v)))
            for v, keep in zip(self.followers, self.follower_keep, strict=True):
                v.assign(tf.where(keep, v, tf.zeros_like(v)))
            return distribute.reduce_sum(self.strategy, out)

        def eval_step(x, y):
            with quantized():
                pred = self.model(x, training=False)
            return sums(y, pred, data_loss(y, pred))

        return train_step, eval_step

    def _objective(self, c, task, teacher, temperature):
        """(teacher_targets(x), objective(loss, soft_targets, pred)): what the gradient follows. The task
        loss, blended with the teacher's soft targets under --distill, plus the L1/L2 penalties on the
        held weights. The teacher runs in inference mode outside the tape: no gradient reaches it."""
        import tensorflow as tf

        if self.distilled:
            from prunecli.training import distill

            distill.check_task(task)
            from_logits = distill.outputs_are_logits(task.loss)
            weight = float(c.distill_weight)
        l1, l2 = float(c.l1), float(c.l2)
        held = [t.variable for t in self.targets]

        def teacher_targets(x):
            return tf.stop_gradient(teacher(x, training=False)) if self.distilled else None

        def objective(loss, soft_targets, pred):
            total = loss
            if self.distilled:
                total = distill.combine(loss, distill.soft_kl(soft_targets, pred, temperature, from_logits), weight)
            if l1:
                total += l1 * tf.add_n([tf.reduce_sum(tf.abs(v)) for v in held])
            if l2:
                total += l2 * tf.add_n([tf.reduce_sum(tf.square(v)) for v in held])
            return total

        return teacher_targets, objective

    def _task_measures(self, task, loss_fn):
        """(data_loss(y, pred), sums(y, pred, loss)): the task loss with the model's own losses added,
        and the batch's loss, accuracy (when the task has one) and size, weighted by the batch size."""
        import keras
        import tensorflow as tf

        accuracy_fn = getattr(keras.metrics, task.accuracy) if task.accuracy else None
        self.has_accuracy = accuracy_fn is not None

        def data_loss(y, pred):
            loss = tf.reduce_mean(loss_fn(y, pred))
            return loss + tf.add_n(self.model.losses) if self.model.losses else loss

        def sums(y, pred, loss):
            n = tf.cast(tf.shape(tf.nest.flatten(pred)[0])[0], tf.float32)
            acc = tf.reduce_mean(tf.cast(accuracy_fn(y, pred), tf.float32)) if accuracy_fn else tf.constant(0.0)
            return loss * n, acc * n, n

        return data_loss, sums

    def _compile(self) -> None:
        import tensorflow as tf

        self._train = tf.function(self._train_py, jit_compile=self.jit_compile, autograph=False)
        self._eval = tf.function(self._eval_py, jit_compile=self.jit_compile, autograph=False)

    def train(self, x, y):
        if not self.jit_compile:
            return self._train(x, y)
        import tensorflow as tf

        try:
            return self._train(x, y)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError, tf.errors.InternalError):
            self.jit_compile = False  # an op XLA cannot compile: the same step, graph mode only
            self._compile()
            return self._train(x, y)

    def new_sums(self) -> _Sums:
        return _Sums(has_accuracy=self.has_accuracy)

    def evaluate(self, dataset) -> _Sums:
        out = self.new_sums()
        for x, y in dataset:
            out.add(*self._eval(x, y))
        return out

    def before_rescoring(self) -> None:
        """Dynamic schedule: let the scores see the dense shadows, so pruned weights can come back."""
        if not self.shadows:
            return
        for t, shadow in zip(self.targets, self.shadows, strict=True):
            t.variable.assign(shadow)

    def set_masks(self, mask_set) -> None:
        """Install new masks; counts the weights that came back (pruned before, kept now)."""
        import tensorflow as tf

        for t, mask in zip(self.targets, self.masks, strict=True):
            new = tf.cast(mask_set.masks[t.name], tf.bool)
            self.regrown += int(tf.math.count_nonzero(tf.logical_and(new, tf.logical_not(mask))))
            mask.assign(new)
        kept = {id(v): keep for v, keep in getattr(mask_set, "followers", None) or []}
        for v, keep in zip(self.followers, self.follower_keep, strict=True):
            keep.assign(tf.cast(kept[id(v)], tf.bool) if id(v) in kept else tf.ones(v.shape, tf.bool))

    def mask_sparsity(self) -> float:
        import tensorflow as tf

        size = sum(t.size for t in self.targets)
        kept = sum(int(tf.math.count_nonzero(m)) for m in self.masks)
        return 1.0 - kept / size if size else 0.0

    def near_zero(self) -> dict:
        """How many surviving (unmasked) weights ended with |w| < NEAR_ZERO: what L1 pushes towards 0."""
        import numpy as np

        count = surviving = 0
        for t, mask in zip(self.targets, self.masks, strict=True):
            keep = np.asarray(mask)
            count += int(np.count_nonzero(np.abs(np.asarray(t.variable))[keep] < NEAR_ZERO))
            surviving += int(np.count_nonzero(keep))
        return {
            "threshold": NEAR_ZERO,
            "count": count,
            "surviving": surviving,
            "fraction": count / surviving if surviving else 0.0,
        }


def _set_lr_schedule(optimizer, config: PruneConfig, data) -> str:
    """--lr-schedule cosine: the optimizer's rate becomes a cosine decay from its current value to 0 over
    the run's epochs * steps (Loshchilov & Hutter 2017, SGDR without restarts). Pruning-then-retraining
    studies find a decaying rate recovers more than a constant one with the same budget (Renda et al.
    2020, "Comparing Rewinding and Fine-tuning"). The start value is the model's own rate (or --lr):
    rewinding to the original rate, not a reduced fine-tuning rate. A rate the model's file already
    schedules is left alone. Returns the schedule in use ("constant", "cosine" or "model")."""
    import keras

    from prunecli.structure import keras_graph

    wanted = getattr(config, "lr_schedule", "constant")
    start = _learning_rate(optimizer)
    if start is None or keras_graph.scheduled_learning_rate(optimizer):  # a schedule from the model's file
        return "model"
    if wanted != "cosine":
        return "constant"
    steps = max(1, config.epochs * _steps_per_epoch(data.train))
    optimizer.learning_rate = keras.optimizers.schedules.CosineDecay(start, decay_steps=steps, alpha=0.0)
    return "cosine"


def use_xla(model) -> bool:
    """XLA on a GPU/TPU, when every layer supports it and op determinism is off (as Keras decides).

    On CPU the step runs as a plain tf.function: XLA's compile (once per batch shape) took longer than
    it saved on short fine-tuning runs (bundled digits CNN, 6 epochs: 22 s with XLA, 5 s without).
    """
    import tensorflow as tf
    from tensorflow.python.framework.config import is_op_determinism_enabled

    accelerated = bool(tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("TPU"))
    from prunecli.structure.keras_graph import all_layers

    layers = all_layers(model)
    return accelerated and not is_op_determinism_enabled() and all(getattr(x, "supports_jit", True) for x in layers)


# ---------------------------------------------------------------------------------------------
# small helpers: data, sums, early stopping


def _steps_per_epoch(dataset) -> int:
    import tensorflow as tf

    n = int(dataset.cardinality())
    if n >= 0:
        return n
    if n == int(tf.data.INFINITE_CARDINALITY):
        raise ConfigError("the training data is infinite; fine-tuning needs a finite dataset")
    return sum(1 for _ in dataset)


def _validation_data(s):
    """(dataset, held_out): the validation split, else the evaluation set, else the training data."""
    data = s.data
    if getattr(data, "val", None) is not None:
        return data.val, True
    held_out = getattr(data, "eval_held_out", True)
    if held_out:
        return data.eval, True
    return (data.eval if s.config.early_stopping else None), False


@dataclass
class _Sums:
    """Running sums of loss, accuracy and examples, kept as tensors until someone reads them."""

    loss: Any = 0.0
    accuracy: Any = 0.0
    count: Any = 0.0
    has_accuracy: bool = True

    def add(self, loss, accuracy, count) -> None:
        self.loss, self.accuracy, self.count = self.loss + loss, self.accuracy + accuracy, self.count + count

    def logs(self) -> dict:
        n = float(self.count) or 1.0
        logs = {"loss": float(self.loss) / n}
        if self.has_accuracy:
            logs["accuracy"] = float(self.accuracy) / n
        return logs


@dataclass
class _Best:
    """Early stopping: the best monitored loss so far, its epoch and a copy of the model's weights."""

    value: float = math.inf
    epoch: int | None = None
    weights: list | None = field(default=None, repr=False)

    def improved(self, value: float, epoch: int, model) -> bool:
        if value < self.value:
            self.value, self.epoch, self.weights = value, epoch, model.get_weights()
            return True
        return False
