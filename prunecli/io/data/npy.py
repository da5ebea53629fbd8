""".npy pairs: the inputs file has an `x` in its name, the labels file is the same name with that
`x` as `y` (`x.npy` + `y.npy`, `x_train.npy` + `y_train.npy`, `digits_x.npy` + `digits_y.npy`). With
`train` in the name, `x_test.npy`/`y_test.npy` (and `x_val`/`y_val`) beside it are used too.
Memory-mapped and streamed in batches, so they may be larger than memory.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from prunecli.errors import DataError
from prunecli.io.data.batches import Data, label_classes, split_indices
from prunecli.io.data.checks import check_finite, check_label_values, check_numeric, check_shapes


def load_npy(p: Path, model, batch_size: int, val_split: float, seed: int) -> Data:
    import numpy as np

    sets = {"train": _npy_set(p), "eval": None, "val": None}
    files = {"train": p}  # each set's inputs file: the one a check names
    for key, name in (("eval", "test"), ("val", "val")):
        sibling = npy_partner(p, "train", name)
        if sibling is not None and sibling.is_file():
            sets[key], files[key] = _npy_set(sibling), sibling
    if sets["eval"] is None:
        sets["eval"], sets["val"] = sets["val"], None
        files["eval"] = files.pop("val", None)
    for key, pair in sets.items():
        if pair is not None:
            check_shapes(model, *pair, files[key], npy_partner(files[key], "x", "y"))
            check_finite(pair[0], files[key])
    index = {k: None if v is None else np.arange(len(v[0])) for k, v in sets.items()}
    parts = split_indices(len(sets["train"][0]), sets, val_split, seed)
    for key, idx in parts.items():
        sets[key], index[key] = sets["train"], idx
    ev = "eval" if sets["eval"] is not None else "train"
    ey = sets[ev][1]
    return Data(
        train=_streamed(*sets["train"], index["train"], batch_size, shuffle_seed=seed),
        eval=_streamed(*sets[ev], index[ev], batch_size),
        n_train=len(index["train"]),
        n_eval=len(index[ev]),
        y_example=np.asarray(ey[index[ev][:256]]),
        source=str(p),
        val=None if sets["val"] is None else _streamed(*sets["val"], index["val"], batch_size),
        eval_held_out=ev == "eval",
        eval_classes=label_classes(ey[index[ev]]),
        pixel_values=sets["train"][0].dtype == np.uint8,
    )


def npy_partner(path: Path, old: str, new: str) -> Path | None:
    """`path` with its name part `old` (split at _ - .) replaced by `new`; None without such a part."""
    import re

    parts = re.split(r"([_.\-])", path.stem)
    hits = [i for i, part in enumerate(parts) if part.lower() == old]
    if not hits:
        return None
    i = hits[0]
    parts[i] = new.upper() if parts[i].isupper() else new
    return path.with_name("".join(parts) + path.suffix)


def npy_files(path: Path) -> list[Path]:
    """The files an .npy dataset named `path` reads besides it, for the path plan: its labels file and,
    for a `train` name, the test and val pairs beside it (`--report x_test.npy` replaced them)."""
    found = [partner for partner in [npy_partner(path, "x", "y")] if partner is not None]
    for name in ("test", "val"):
        sibling = npy_partner(path, "train", name)
        if sibling is not None and sibling.is_file():
            found += [sibling, *[partner for partner in [npy_partner(sibling, "x", "y")] if partner is not None]]
    return found


NPY_MAGIC = b"\x93NUMPY"


def _open_npy(path: Path):
    import stat

    import numpy as np

    from prunecli.messages import shown

    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            raise DataError(f"{shown(path)} is not a regular file")
        with open(path, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise DataError(f"{shown(path)} is not a readable .npy file ({exc.strerror or exc})") from exc
    if head.startswith(b"PK\x03\x04"):
        raise DataError(f"{shown(path)} is an .npz archive, not an .npy array; rename it to .npz")
    if head != NPY_MAGIC:
        raise DataError(f"{shown(path)} is not an .npy file (no NumPy header)")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path} holds pickled objects; prunecli only reads plain numeric arrays") from exc
        raise DataError(f"{path} is not a readable .npy file ({exc})") from exc
    except OSError as exc:
        raise DataError(f"{path} is not a readable .npy file ({exc})") from exc


def _npy_set(x_path: Path):
    """The (x, y) memory maps of an inputs file and its labels file, checked for type."""
    y_path = npy_partner(x_path, "x", "y")
    if y_path is None:
        raise DataError(f"{x_path}: name the inputs x.npy, x_train.npy or NAME_x.npy, with the labels as y")
    if not y_path.is_file():
        raise DataError(f"{x_path}: labels file {y_path.name} not found beside it")
    x, y = _open_npy(x_path), _open_npy(y_path)
    check_numeric(x, y, x_path)
    check_label_values(y, y_path)
    return x, y


def _label_dtype(y):
    import numpy as np

    return np.float32 if y.dtype.kind in "fb" else (np.int64 if y.dtype.kind in "iu" else y.dtype)


def _streamed(x, y, rows, batch_size: int, shuffle_seed: int | None = None):
    """Batches gathered from (memory-mapped) arrays; only one batch is in memory at a time.

    A new epoch draws a new order from (seed, epoch number), so shuffling is reproducible.
    """
    import numpy as np
    import tensorflow as tf

    label_dtype = _label_dtype(y)
    epochs = itertools.count()

    def batches():
        order = rows if shuffle_seed is None else np.random.default_rng([shuffle_seed, next(epochs)]).permutation(rows)
        for start in range(0, len(order), batch_size):
            chosen = np.sort(order[start : start + batch_size])  # ascending reads from the file
            yield np.asarray(x[chosen], dtype=np.float32), np.asarray(y[chosen], dtype=label_dtype)

    signature = (
        tf.TensorSpec((None, *x.shape[1:]), tf.float32),
        tf.TensorSpec((None, *y.shape[1:]), tf.as_dtype(label_dtype)),
    )
    ds = tf.data.Dataset.from_generator(batches, output_signature=signature)
    ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(len(rows) / batch_size)))
    return ds.prefetch(tf.data.AUTOTUNE)
