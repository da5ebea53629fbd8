"""The Data every format returns, and the tf.data pieces the formats share: in-memory batches, the
--val-split draw, and the first labels of a streamed set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunecli.errors import DataError, streamed_data_error, tensorflow_reason

SHUFFLE_BUFFER = 10_000


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
    val: Any = None  # a validation split for early stopping, when it differs from `eval`
    eval_held_out: bool = True  # False when `eval` is the training data itself
    # False for inputs without labels (an .npz with x only): batches then carry placeholder zeros as
    # y, which nothing reads; only steps that need no labels run (run/steps.check_labels)
    labelled: bool = True
    # True for a causal LM's token data (io/data/tokens.py): each label is the next token, NO_TOKEN (-1)
    # where there is none, and evaluation measures the next-token loss and perplexity
    next_token: bool = False
    # how many classes the evaluation labels hold, where the loader has them all at hand (arrays, an image
    # folder's listing; None for streamed records): one class makes accuracy a count of one prediction
    eval_classes: int | None = None
    # True when the inputs are 0..255 pixel values as read (uint8 arrays or raw records, images of a folder
    # or of records, without a spec `scale`): a model trained on [0, 1] inputs sees them 255 times too large
    pixel_values: bool = False


def label_classes(y) -> int:
    """How many classes labels `y` hold: class numbers (or 0/1 targets) as they are, one-hot or
    probability rows (a last axis wider than 1 on labels of rank 2 or more) by their largest entry."""
    import numpy as np

    y = np.asarray(y)
    if y.ndim >= 2 and y.shape[-1] > 1:
        y = np.argmax(y, axis=-1)
    return len(np.unique(y))


def split_indices(n: int, sets: dict, val_split: float, seed: int) -> dict:
    """With --val-split, new index sets for "train" and the held-out part ("eval" when no test set
    was given, else "val"); empty when nothing is split off."""
    import numpy as np

    if val_split <= 0 or sets["val"] is not None:
        return {}
    order = np.random.default_rng(seed).permutation(n)
    n_out = max(1, int(round(val_split * n)))
    if n_out >= n:
        raise DataError(f"--val-split {val_split:g} leaves no training examples out of {n}")
    held = "eval" if sets["eval"] is None else "val"
    return {held: np.sort(order[:n_out]), "train": np.sort(order[n_out:])}


def batched(x, y, batch_size: int, shuffle_seed: int | None = None):
    """In-memory arrays as batches, reshuffled every epoch when seeded (through a bounded buffer)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(min(row_count(x), SHUFFLE_BUFFER), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def take_rows(struct, idx):
    """Rows `idx` of every array in a structure: a multi-input x is a dict, a multi-output y a tuple."""
    import tensorflow as tf

    return tf.nest.map_structure(lambda a: a[idx], struct)


def row_count(struct) -> int:
    """Rows of a structure's first array; all of its arrays have as many (checked when read)."""
    import tensorflow as tf

    return len(tf.nest.flatten(struct)[0])


def first_labels(ds, limit: int = 256, path=None):
    """Up to `limit` labels from the start of a dataset; a record that does not parse is a DataError."""
    import numpy as np
    import tensorflow as tf

    labels, got, first_x = [], 0, None
    try:
        for x, y in ds:
            first_x = first_x if first_x is not None else x
            labels.append(np.asarray(y))
            got += len(labels[-1])
            if got >= limit:
                break
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as exc:
        checked = streamed_data_error(exc)
        if checked is not None:
            raise checked from exc
        raise DataError(f"{path}: cannot read the data ({tensorflow_reason(str(exc.message))})") from exc
    if first_x is None:
        raise DataError(f"{path}: the dataset is empty")
    return first_x, np.concatenate(labels)[:limit]
