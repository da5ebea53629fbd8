"""Data for scoring, evaluation and fine-tuning, as batched tf.data pipelines.

`.npz` files are read with allow_pickle=False (a pickle inside an .npz could run code). Keys: `x`/`y`,
or `x_train`/`y_train` with `x_test`/`y_test` (or `x_val`/`y_val`). Shapes are checked against the
model before anything runs, so a mismatch is one clear line, not a stack trace from inside Keras.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import DataError


@dataclass
class Data:
    """Batched (x, y) datasets. `train` feeds scoring and fine-tuning, `eval` feeds the report."""

    train: Any
    eval: Any
    n_train: int
    n_eval: int
    y_example: Any  # a few labels, to infer the task (classification or regression)
    source: str
    feature_names: list[str] | None = None


def _read_npz(path: Path) -> dict:
    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path} holds pickled objects; prunecli only reads plain numeric arrays") from exc
        raise DataError(f"{path} is not a readable .npz file ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from exc


def _pick(arrays: dict, path: Path):
    def both(a, b):
        return a in arrays and b in arrays

    if both("x_train", "y_train"):
        train = (arrays["x_train"], arrays["y_train"])
        for xk, yk in (("x_test", "y_test"), ("x_val", "y_val")):
            if both(xk, yk):
                return train, (arrays[xk], arrays[yk])
        return train, None
    if both("x", "y"):
        return (arrays["x"], arrays["y"]), None
    raise DataError(f"{path} needs arrays x and y (or x_train/y_train and x_test/y_test); found: {sorted(arrays)}")


def _model_input_shape(model):
    shapes = [tuple(t.shape) for t in model.inputs] if getattr(model, "inputs", None) else []
    return shapes[0] if len(shapes) == 1 else None


def check_shapes(model, x, y, path) -> None:
    """Inputs must match the model's input shape; labels must match the output's batch size."""
    expected = _model_input_shape(model)
    if expected is not None:
        got = tuple(x.shape[1:])
        want = tuple(expected[1:])
        ok = len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got))
        if not ok:
            raise DataError(f"{path}: inputs have shape {got} per example but the model expects {want}")
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{path}: the dataset is empty")
    out = model.outputs[0].shape if getattr(model, "outputs", None) else None
    if out is not None and out[-1] is not None:
        classes = int(out[-1])
        if y.ndim >= 2 and y.shape[-1] not in (1, classes):
            raise DataError(f"{path}: labels have {y.shape[-1]} columns but the model outputs {classes}")
        if y.ndim == 1 and classes > 1 and y.dtype.kind in "iu":
            if y.min() < 0 or y.max() >= classes:
                raise DataError(f"{path}: labels range {y.min()}..{y.max()} but the model has {classes} classes")


def _batched(x, y, batch_size: int, shuffle_seed: int | None = None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(min(len(x), 10_000), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def load(path: str, model, batch_size: int = 64, val_split: float = 0.0, seed: int = 0) -> Data:
    """Read a data file and return train/eval pipelines checked against the model."""
    import numpy as np

    p = Path(path)
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    if p.is_dir():
        raise DataError(f"{p} is a directory; give an .npz file")
    if p.suffix != ".npz":
        raise DataError(f"{p}: unsupported data format (use .npz with x and y arrays)")
    arrays = _read_npz(p)
    train, evaluation = _pick(arrays, p)
    names = [str(n) for n in arrays["feature_names"]] if "feature_names" in arrays else None
    x, y = train
    if x.dtype.kind not in "fiub" or y.dtype.kind not in "fiub":
        raise DataError(f"{p}: x and y must be numeric arrays")
    x = x.astype(np.float32) if x.dtype.kind != "f" or x.dtype != np.float32 else x
    check_shapes(model, x, y, p)
    if evaluation is None and val_split > 0:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(x))
        n_val = max(1, int(round(val_split * len(x))))
        evaluation = (x[order[:n_val]], y[order[:n_val]])
        x, y = x[order[n_val:]], y[order[n_val:]]
    if evaluation is None:
        evaluation = (x, y)
    ex, ey = evaluation
    ex = ex.astype(np.float32)
    check_shapes(model, ex, ey, p)
    if not (np.isfinite(x).all() and np.isfinite(ex).all()):
        raise DataError(f"{p}: inputs contain NaN or Inf")
    return Data(
        train=_batched(x, y, batch_size, shuffle_seed=seed),
        eval=_batched(ex, ey, batch_size),
        n_train=len(x),
        n_eval=len(ex),
        y_example=ey[:256],
        source=str(p),
        feature_names=names,
    )
