"""The task (loss and accuracy) used to evaluate a model, and evaluation itself.

The loss the model was compiled with is kept when the file has one (it knows about logits);
otherwise it is inferred from the output and the labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Task:
    loss: Any
    accuracy: str | None  # a Keras metric name, or None for regression


def infer_task(model, y_example) -> Task:
    import numpy as np

    y = np.asarray(y_example)
    classes = int(model.outputs[0].shape[-1] or 1)
    compiled_loss = getattr(model, "loss", None)
    if classes == 1:
        is_binary = y.size > 0 and np.isin(y, (0, 1)).all()
        loss = compiled_loss or ("binary_crossentropy" if is_binary else "mse")
        return Task(loss, "binary_accuracy" if is_binary else None)
    one_hot = y.ndim >= 2 and y.shape[-1] == classes and classes > 1
    if one_hot:
        return Task(compiled_loss or "categorical_crossentropy", "categorical_accuracy")
    return Task(compiled_loss or "sparse_categorical_crossentropy", "sparse_categorical_accuracy")


def compile_for(model, task: Task, optimizer=None) -> None:
    metrics = [task.accuracy] if task.accuracy else []
    model.compile(optimizer=optimizer or "adam", loss=task.loss, metrics=metrics, jit_compile="auto")


def evaluate(model, dataset, task: Task) -> dict[str, float]:
    """Loss and accuracy of the model over the whole dataset (streamed in batches).

    The model is compiled for the task once; later calls reuse it (sweeps evaluate dozens of times),
    unless something else recompiled the model in between (its optimizer object changed).
    """
    # ids, not objects: Keras tracks objects set as model attributes and would save them with the model
    stamp = (id(task), id(getattr(model, "optimizer", None)))
    if getattr(model, "_prunecli_eval_for", None) != stamp:
        compile_for(model, task, optimizer=getattr(model, "optimizer", None) or "adam")
        model._prunecli_eval_for = (id(task), id(model.optimizer))
    values = model.evaluate(dataset, verbose=0, return_dict=True)
    out = {"loss": float(values["loss"])}
    if task.accuracy:
        acc = [v for k, v in values.items() if k.endswith("accuracy")]
        if acc:
            out["accuracy"] = float(acc[0])
    return out
