""".npz data: arrays `x`/`y`, or `x_train`/`y_train` with `x_test`/`y_test` and/or `x_val`/`y_val`.

Read with allow_pickle=False (a pickle inside an .npz could run code) and held in memory, after
checking that it fits.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from prunecli.errors import DataError, ResourceError
from prunecli.io.data.batches import Data, batched, label_classes, row_count, split_indices, take_rows
from prunecli.io.data.checks import (
    as_float32,
    check_finite,
    check_inputs,
    check_label_values,
    check_numeric,
    check_shapes,
    check_token_ids,
    is_multi_io,
    refuse_unread,
    unique_feature_names,
)
from prunecli.io.data.labels import labels_for_model
from prunecli.io.data.multi_io import multi_io_sets
from prunecli.io.data.tokens import is_token_npz, load_token_npz


def load_npz(p: Path, model, batch_size: int, val_split: float, seed: int) -> Data:
    """Every array checked and its labels fitted to the model before the batches are built."""
    arrays = _read_npz(p)
    if is_token_npz(arrays):  # a language model's token ids (io/data/tokens.py)
        return load_token_npz(p, arrays, model, batch_size, val_split, seed)
    if is_multi_io(model):
        return _load_npz_multi(p, arrays, model, batch_size, val_split, seed)
    train, evaluation, val = _pick(arrays, p)
    names = _feature_names(arrays, p)
    sets = {"train": train, "eval": evaluation, "val": val}
    labelled = train[1] is not None
    arrays_of = _split_arrays(arrays, sets)
    for key, pair in sets.items():
        where = f"{p} ({arrays_of[key]})" if len(arrays_of) > 1 and key in arrays_of else p  # which split
        if pair is not None and not labelled:
            sets[key] = _unlabelled(model, pair[0], where)
        elif pair is not None:
            check_numeric(*pair, where)
            x, y = pair
            check_label_values(y, where)
            sets[key] = (as_float32(x, where), y)
            check_shapes(model, *sets[key], where)
            check_finite(sets[key][0], where)
            sets[key] = (sets[key][0], labels_for_model(model, sets[key][1], where))
    parts = split_indices(len(sets["train"][0]), sets, val_split, seed)
    train_x, train_y = sets["train"]
    take = {k: (train_x[idx], train_y[idx]) for k, idx in parts.items()}
    sets.update(take)
    ex, ey = sets["eval"] or sets["train"]
    return Data(
        train=batched(*sets["train"], batch_size, shuffle_seed=seed),
        eval=batched(ex, ey, batch_size),
        n_train=len(sets["train"][0]),
        n_eval=len(ex),
        y_example=ey[:256],
        source=str(p),
        feature_names=names,
        val=None if sets["val"] is None else batched(*sets["val"], batch_size),
        eval_held_out=sets["eval"] is not None,
        labelled=labelled,
        eval_classes=label_classes(ey) if labelled else None,
        pixel_values=train[0].dtype == "uint8",
    )


def _unlabelled(model, x, path: Path):
    """Inputs without labels, checked as labelled inputs are, with placeholder labels (zeros, one per
    example) so that every batch keeps the (x, y) shape; Data.labelled says they mean nothing."""
    import numpy as np

    if x.dtype.kind not in "fiub" or x.ndim == 0:
        raise DataError(f"{path}: x must be a numeric array with one row per example")
    x = as_float32(x, path)
    check_inputs(model, x.shape[1:], path)
    if len(x) == 0:
        raise DataError(f"{path}: the dataset is empty")
    check_finite(x, path)
    check_token_ids(model, x, path)
    return x, np.zeros(len(x), np.float32)


def _load_npz_multi(p: Path, arrays: dict, model, batch_size: int, val_split: float, seed: int) -> Data:
    """As load_npz, with x and y as structures keyed by the model's input and output names."""
    sets, labelled = multi_io_sets(arrays, model, p)
    parts = split_indices(row_count(sets["train"][0]), sets, val_split, seed)
    for key, idx in parts.items():
        sets[key] = (take_rows(sets["train"][0], idx), take_rows(sets["train"][1], idx))
    ex, ey = sets["eval"] or sets["train"]
    return Data(
        train=batched(*sets["train"], batch_size, shuffle_seed=seed),
        eval=batched(ex, ey, batch_size),
        n_train=row_count(sets["train"][0]),
        n_eval=row_count(ex),
        y_example=take_rows(ey, slice(0, 256)),
        source=str(p),
        feature_names=_feature_names(arrays, p),
        val=None if sets["val"] is None else batched(*sets["val"], batch_size),
        eval_held_out=sets["eval"] is not None,
        labelled=labelled,
    )


def _check_fits_in_memory(path: Path, nbytes: int) -> None:
    """An .npz is unpacked into memory (compressed ones can be far larger than the file): fail early."""
    import psutil

    available = psutil.virtual_memory().available
    if 2 * nbytes > available:
        raise ResourceError(
            f"{path} unpacks to {nbytes / 2**20:.0f} MiB but only {available / 2**20:.0f} MiB of memory is free; "
            "save x and y as .npy files, which are streamed"
        )


def _read_npz(path: Path) -> dict:
    import numpy as np

    with open(path, "rb") as fh:
        head = fh.read(4)
    if head == b"PK\x05\x06":  # a zip with no member: np.savez() given no arrays
        raise DataError(f"{path} holds no arrays; give x (and y) as np.savez(path, x=x, y=y) writes them")
    if head != b"PK\x03\x04":  # otherwise numpy would try it as .npy or pickle
        raise DataError(f"{path} is not a readable .npz file (not a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as z:
            _check_fits_in_memory(path, sum(info.file_size for info in z.zip.infolist()))
            arrays = {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path} holds pickled objects; prunecli only reads plain numeric arrays") from exc
        raise DataError(f"{path} is not a readable .npz file ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from exc
    raw = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if raw:  # NumPy hands back the bytes of a member that is not in .npy format (a pickle stream...)
        raise DataError(f"{path}: member {raw[0]!r} is not a .npy array; prunecli only reads plain numeric arrays")
    return arrays


def _split_arrays(arrays: dict, sets: dict) -> dict[str, str]:
    """The arrays each present split was read from ("x_test/y_test"), for messages: a file with several
    splits said "xtrain.npz: the dataset is empty" of its empty x_test, and the user looked at x_train."""
    train = "train" if "x_train" in arrays else ""
    evaluation = "test" if "x_test" in arrays else "val"
    names = {"train": train, "eval": evaluation, "val": "val"}
    return {
        key: "/".join(f"{kind}_{names[key]}" if names[key] else kind for kind in "xy")
        for key, pair in sets.items()
        if pair is not None
    }


def _pick(arrays: dict, path: Path):
    """(train, evaluation, validation) pairs from the arrays' names; the last two may be None. Inputs
    without any labels (x, or x_train with x_test) give pairs whose y is None: enough for the methods
    that read inputs only (wanda, sparsegpt, --reconstruct, activation, apoz). `x`/`y` with
    `x_test`/`y_test` is a training set and a test set, as `x_train`/`y_train` with them is."""
    has_labels = any(k == "y" or k.startswith("y_") for k in arrays)

    def pair(name):
        xk, yk = (f"x_{name}", f"y_{name}") if name else ("x", "y")
        if xk not in arrays:
            return None
        if not has_labels:
            return arrays[xk], None
        return (arrays[xk], arrays[yk]) if yk in arrays else None

    train_name = "train" if pair("train") else ""
    if pair(train_name) is None:
        raise DataError(
            f"{path} needs an array x (with labels y), or x_train/y_train and x_test/y_test; found: {sorted(arrays)}"
        )
    for name in ("test", "val"):  # half a pair would be dropped while the report reads as if it were used
        xk, yk = f"x_{name}", f"y_{name}"
        if yk in arrays and xk not in arrays or (has_labels and xk in arrays and yk not in arrays):
            have, missing = (yk, xk) if xk not in arrays else (xk, yk)
            raise DataError(f"{path}: {have} without {missing}: give both, or remove {have}")
    read = {f"{kind}_{name}" if name else kind for kind in "xy" for name in (train_name, "test", "val")}
    refuse_unread(arrays, read | {"feature_names"}, path, "x/y, or x_train/y_train, with x_test/y_test and x_val/y_val")
    test, val = pair("test"), pair("val")
    return (pair(train_name), test, val) if test else (pair(train_name), val, None)


def _feature_names(arrays: dict, path) -> list[str] | None:
    if "feature_names" not in arrays:
        return None
    names = arrays["feature_names"]
    if names.ndim != 1 or names.dtype.kind not in "USiu":
        raise DataError(f"{path}: feature_names must be a 1-d array of names, got shape {names.shape} ({names.dtype})")
    return unique_feature_names([str(n) for n in names], f"{path} (feature_names)")
