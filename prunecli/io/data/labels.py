"""Labels in the form the model's compiled loss takes (class numbers or one-hot rows)."""

from __future__ import annotations

from prunecli.errors import DataError
from prunecli.io.data.checks import loss_name, output_classes, per_position_classes


def labels_for_model(model, y, path):
    """Both label forms Keras users use, fitted to the loss the model was compiled with: one-hot rows
    for a sparse loss become class numbers, class numbers for a categorical loss become one-hot rows.
    Soft labels (probabilities) for a sparse loss cannot be converted: one line says so."""

    loss = loss_name(model)
    if not loss and multi_label(model):
        loss = "binarycrossentropy"
    return fit_labels(output_classes(model), loss, y, path, per_position_classes(model, y))


def multi_label(model) -> bool:
    """A multi-unit output trained unit by unit (sigmoid, binary cross-entropy): several labels may be
    on at once, so class numbers become multi-hot rows, not one-hot ones for a softmax."""
    if (output_classes(model) or 0) < 2:
        return False
    if loss_name(model):
        return loss_name(model).startswith("binary")
    from prunecli.structure import keras_graph

    try:
        layer = model.get_layer(keras_graph.producer_name(model.outputs[0]))
    except (ValueError, AttributeError):
        return False
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", "") == "sigmoid"


def fit_labels(classes, loss: str, y, path, per_position: bool = False):
    import numpy as np

    if not classes or classes < 2 or len(y) == 0:
        return y
    if loss.startswith("binary") and (y.ndim == 1 or per_position) and y.dtype.kind in "iuf":
        arr = np.asarray(y).astype(np.int64)  # class numbers (checked in range) for a sigmoid output: multi-hot rows
        return np.eye(classes, dtype=np.float32)[arr]
    if per_position:
        if loss in ("categoricalcrossentropy", "categoricalfocalcrossentropy"):
            return np.eye(classes, dtype=np.float32)[np.asarray(y).astype(np.int64)]
        return np.asarray(y).astype(np.int32)
    if loss.startswith("sparsecategorical") and y.ndim == 2 and y.shape[-1] == classes:
        arr = np.asarray(y)
        if not (np.isin(arr, (0, 1)).all() and (arr.sum(axis=-1) == 1).all()):
            raise DataError(
                f"{path}: labels are {classes} columns of probabilities but the model's loss "
                f"(sparse categorical) takes class numbers; give y as integers 0..{classes - 1} or one-hot rows"
            )
        return arr.argmax(axis=-1).astype(np.int32)
    if loss in ("categoricalcrossentropy", "categoricalfocalcrossentropy") and y.ndim == 1:
        arr = np.asarray(y).astype(np.int64)
        return np.eye(classes, dtype=np.float32)[arr]
    if y.dtype.kind == "f" and y.ndim == 1 and not loss.startswith(("categorical", "binary", "mse", "mae", "mean")):
        return np.asarray(y).astype(np.int32)  # whole-number float class labels (checked by check_labels)
    return y
