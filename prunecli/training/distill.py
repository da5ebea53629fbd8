"""Knowledge distillation while fine-tuning a pruned model: the dense original is the teacher.

Hinton, Vinyals & Dean 2015 ("Distilling the Knowledge in a Neural Network"): the student is trained on

    loss = (1 - alpha) * task_loss + alpha * T**2 * KL(softmax(z_t / T) || softmax(z_s / T))

where z_t, z_s are the teacher's and student's logits and T the temperature. The T**2 keeps the soft
term's gradient on the same scale as the task loss whatever T is (the soft gradients shrink as 1/T**2).
Pruning papers use it to recover accuracy with the same data and epochs (e.g. Sanh et al. 2020,
"Movement Pruning"; Kurtic et al. 2022, "The Optimal BERT Surgeon"): the teacher's soft outputs say
which wrong classes are nearly right, which one-hot labels do not.

The loss is computed inside the Trainer's own compiled masked step (finetune.Trainer), not with Keras'
`Distiller` model: that one trains through `fit`, which would leave out the masks that the step
re-applies after every update. The teacher runs in inference mode (training=False: batch-norm
statistics and dropout of the dense model), and no gradient flows into it.

Models whose outputs are probabilities (the task loss has from_logits False, Keras' default) are
turned back into logits with log(p): softmax(log p / T) is exactly the tempered distribution. A single
sigmoid output is the two-class case [1 - p, p].
"""

from __future__ import annotations

from prunecli.errors import ConfigError, InputError, first_line
from prunecli.structure import keras_graph

EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1] before the log


def _same_layers(model, copy) -> bool:
    """Whether `copy` holds layers of the same classes and weight shapes as `model`, in the same order."""

    def shapes(m):
        return [(type(layer), [tuple(w.shape) for w in layer.weights]) for layer in keras_graph.all_layers(m)[1:]]

    return shapes(model) == shapes(copy)


def teacher_copy(model, needed_by: str = "--distill"):
    """A frozen copy of `model` (architecture and current weights), taken before pruning changes it.

    The copy has its own variables, so the masks and the optimizer never touch it. `needed_by` names
    what asked for it in the one-line error when no copy can be made."""
    import keras

    def cloned():
        return keras.models.clone_model(model)

    def from_config():  # subclassed models, and KerasHub tasks whose clone_model copy has other weights
        return keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(model))

    shapes = [tuple(w.shape) for w in model.weights]
    why = "no copy had the model's weights"
    for make in (cloned, from_config):
        try:
            with keras_graph.copying_in_memory():
                teacher = make()
        except Exception as exc:  # Keras raises many types here; the next way is tried
            why = first_line(exc)
            continue
        if [tuple(w.shape) for w in teacher.weights] == shapes and _same_layers(model, teacher):
            # a LlamaCausalLM's clone has 2 fewer weights; a KerasHub MobileNet task's clone_model copy has its
            # weights but not its layer tree (its blocks rename themselves when rebuilt from their configs), and
            # the channel refit pairs the two models layer by layer (--target was an internal error)
            keras_graph.copy_weights(model, teacher)
            teacher.trainable = False
            return teacher
    raise InputError(f"{needed_by} cannot copy this model ({why})")


def _gives_probabilities(model) -> list[bool | None]:
    """Per output, whether the layer producing it ends in a softmax or sigmoid (probabilities: True), in
    no activation (logits: False), or cannot be told (None: another activation, a layer without one)."""
    import keras

    found = []
    for tensor in getattr(model, "outputs", None) or []:
        try:
            layer = model.get_layer(keras_graph.producer_name(tensor))
        except (ValueError, AttributeError):
            found.append(None)
            continue
        activation = "softmax" if isinstance(layer, keras.layers.Softmax) else getattr(layer, "activation", None)
        name = activation if isinstance(activation, str) else getattr(activation, "__name__", "")
        found.append({"softmax": True, "sigmoid": True, "linear": False}.get(name))
    return found


def teacher_from_file(path, student, unsafe: bool = False, custom_objects: tuple[str, ...] = ()):
    """The --teacher model, frozen, read as any input model is (with the run's --unsafe and
    --custom-objects); InputError (one line) when its outputs are not shaped as the student's (the
    soft loss compares them position by position), or its inputs cannot take the student's examples
    (a size left open, None, takes any: a teacher reading (4,) where the data is (8, 8, 1) was a
    ValueError from inside the first training step, exit 1), or one gives logits where the other gives
    probabilities (the soft loss reads both as the student's loss does: a logits teacher's negative
    scores were clipped to probability 1e-7, and the run fine-tuned towards that, exit 0)."""
    from keras import tree

    from prunecli.io import models as model_io

    teacher, _info = model_io.load(path, unsafe=unsafe, custom_objects=custom_objects)

    def shapes(tensors):
        return [tuple(t.shape[1:]) for t in tree.flatten(tensors)]

    def takes(given, read):  # the teacher's input shapes `given` read the student's examples `read`
        return len(given) == len(read) and all(
            len(a) == len(b) and all(x is None or y is None or x == y for x, y in zip(a, b, strict=True))
            for a, b in zip(given, read, strict=True)
        )

    if shapes(teacher.outputs) != shapes(student.outputs):
        raise InputError(
            f"--teacher {path}: its outputs {shapes(teacher.outputs)} are not the pruned model's "
            f"{shapes(student.outputs)}"
        )
    given = zip(_gives_probabilities(teacher), _gives_probabilities(student), strict=False)
    for i, (mine, theirs) in enumerate(given):
        if None not in (mine, theirs) and mine != theirs:
            kind = {True: "probabilities (softmax or sigmoid)", False: "logits (no activation)"}
            which = f"output {i}" if len(student.outputs) > 1 else "its output"
            raise InputError(
                f"--teacher {path}: {which} gives {kind[mine]}, the pruned model's {kind[theirs]}: distillation"
                " would read one as the other"
            )
    if not takes(shapes(teacher.inputs), shapes(student.inputs)):
        raise InputError(
            f"--teacher {path}: its inputs {shapes(teacher.inputs)} cannot read the pruned model's "
            f"examples {shapes(student.inputs)}"
        )
    teacher.trainable = False
    return teacher


def outputs_are_logits(loss) -> bool:
    """Whether the task loss reads the model's outputs as logits (from_logits=True) or probabilities."""
    if isinstance(loss, str):
        return False  # a loss named by string uses Keras' default, from_logits=False
    config = {}
    try:
        config = loss.get_config()
    except Exception:  # plain functions have no config
        pass
    return bool(config.get("from_logits", getattr(loss, "from_logits", False)))


def can_teach(task) -> bool:
    """Distillation matches class distributions: a classifier's, or a causal LM's next-token
    distribution at every position (KerasHub decoders); a regression model has none to match."""
    from prunecli.training.metrics import NextTokenLoss

    return task is not None and (isinstance(task.loss, NextTokenLoss) or bool(task.accuracy))


def check_task(task) -> None:
    """--distill given on a model the dense one cannot teach (`can_teach`): a one-line error."""
    if not can_teach(task):
        raise ConfigError("--distill needs a classifier (softmax or sigmoid outputs); this model's task is regression")


def as_logits(pred, from_logits: bool):
    """Class logits (last axis) from a model's outputs; one sigmoid unit becomes two classes [0, z]."""
    import tensorflow as tf

    pred = tf.cast(pred, tf.float32)
    if pred.shape[-1] == 1:
        if from_logits:
            z = pred
        else:
            p = tf.clip_by_value(pred, EPSILON, 1.0 - EPSILON)
            z = tf.math.log(p) - tf.math.log(1.0 - p)
        return tf.concat([tf.zeros_like(z), z], axis=-1)
    if from_logits:
        return pred
    return tf.math.log(tf.clip_by_value(pred, EPSILON, 1.0))


def soft_kl(teacher_pred, student_pred, temperature: float, from_logits: bool):
    """T**2 * KL(softmax(z_t / T) || softmax(z_s / T)), summed over classes, averaged over the batch."""
    import tensorflow as tf

    t = tf.nn.log_softmax(as_logits(teacher_pred, from_logits) / temperature, axis=-1)
    s = tf.nn.log_softmax(as_logits(student_pred, from_logits) / temperature, axis=-1)
    per_example = tf.reduce_sum(tf.exp(t) * (t - s), axis=-1)
    per_example = tf.reshape(per_example, [tf.shape(per_example)[0], -1])  # sequence outputs: mean over steps
    return temperature * temperature * tf.reduce_mean(per_example)


def combine(task_loss, kl, weight: float):
    """(1 - weight) * task loss + weight * the (already T**2-scaled) soft term."""
    return (1.0 - weight) * task_loss + weight * kl
