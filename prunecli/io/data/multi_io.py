"""A model with several inputs or outputs: its arrays, keyed by name in one .npz, checked and
arranged the way Keras matches them (x by input name, y in output order)."""

from __future__ import annotations

from prunecli.errors import DataError
from prunecli.io.data.checks import (
    as_float32,
    check_finite,
    check_label_values,
    check_labels,
    check_numeric,
    check_token_ids,
    io_names,
    loss_name,
    output_classes,
    per_position_classes,
    refuse_unread,
)
from prunecli.io.data.labels import fit_labels


def multi_io_sets(arrays: dict, model, path) -> tuple[dict, bool]:
    """({"train", "eval", "val"}: (x by input name, y in output order), checked; the last two may be
    None), and whether the arrays hold labels. Without any y array (inputs only, as calibration and
    label-free scoring need), y is a placeholder of zeros, one per example, which nothing reads."""
    inputs, outputs = io_names(model)
    train, evaluation, val = _multi_pick(arrays, inputs, outputs, path)
    present = [pair for pair in (train, evaluation, val) if pair is not None]
    labelled = train[1] is not None
    if any((pair[1] is not None) != labelled for pair in present):
        raise DataError(f"{path}: some splits have labels (y arrays) and others do not; give labels for all or none")
    sets = {}
    for key, pair in (("train", train), ("eval", evaluation), ("val", val)):
        sets[key] = None if pair is None else _structure(model, *_check_multi(model, *pair, path))
    return sets, labelled


def _keyed(arrays: dict, base: str, names: list[str]):
    """`base` (one name) or `base_NAME` / `base/NAME` for each name; None when the base is absent."""
    if len(names) <= 1 and base in arrays:
        return [arrays[base]]
    found = []
    for name in names:
        key = next((k for k in (f"{base}_{name}", f"{base}/{name}") if k in arrays), None)
        if key is None:
            return None if not found else found + [None]
        found.append(arrays[key])
    return found


def _multi_pick(arrays: dict, inputs: list[str], outputs: list[str], path):
    """(train, eval, val) as (list of x arrays, list of y arrays) for a multi-input/-output model."""

    def pair(split):
        xs, ys = _keyed(arrays, f"x{split}", inputs), _keyed(arrays, f"y{split}", outputs)
        if xs is None and ys is None:
            return None
        if xs is not None and ys is None and all(a is not None for a in xs):  # inputs only: no labels
            return xs, None
        if xs is None or ys is None or any(a is None for a in [*xs, *ys]):
            want = [f"x{split}_{n}" for n in inputs] if len(inputs) > 1 else [f"x{split}"]
            want += [f"y{split}_{n}" for n in outputs] if len(outputs) > 1 else [f"y{split}"]
            raise DataError(
                f"{path}: the model has inputs {inputs} and outputs {outputs}; the .npz needs arrays "
                f"{', '.join(want)} (or NAME/... keys); found: {sorted(arrays)}"
            )
        return xs, ys

    train_split = "_train" if pair("_train") else ""
    train = pair(train_split)
    if train is None:
        raise DataError(f"{path}: no x/y arrays for the model's inputs {inputs} and outputs {outputs}")
    read = {"feature_names"}
    for split in (train_split, "_test", "_val"):
        for base, names in ((f"x{split}", inputs), (f"y{split}", outputs)):
            read |= {base} | {f"{base}{sep}{n}" for n in names for sep in "_/"}
    refuse_unread(arrays, read, path, "x/y per input and output (x_NAME, y_NAME), with _train/_test/_val splits")
    test, val = pair("_test"), pair("_val")
    for split, found in (("_test", test), ("_val", val)):  # half a labelled pair would be dropped unsaid
        if train[1] is not None and found is not None and found[1] is None:
            raise DataError(f"{path}: x{split} arrays without y{split} ones, while the training arrays have labels")
    return (train, test, val) if test else (train, val, None)


def _check_multi(model, xs, ys, path):
    """Each input and each output checked like a single one; all with the same number of rows."""
    import numpy as np

    inputs, outputs = io_names(model)
    rows = {len(a) if a.ndim else -1 for a in [*xs, *(ys or [])]}
    for name, a in zip(inputs, xs, strict=True):
        check_numeric(a, np.zeros(1), path)
        want = tuple(model.inputs[inputs.index(name)].shape[1:])
        got = tuple(a.shape[1:])
        if not (len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got, strict=True))):
            raise DataError(f"{path}: input {name!r} has shape {got} per example but the model expects {want}")
    if len(rows) != 1:
        raise DataError(f"{path}: the inputs and labels have different numbers of rows: {sorted(rows)}")
    if rows == {0}:
        raise DataError(f"{path}: the dataset is empty")
    xs = [as_float32(a, path) for a in xs]
    for name, a in zip(inputs, xs, strict=True):
        check_finite(a, path)
        check_token_ids(model, a, path, name)
    if ys is None:
        return xs, None
    fixed = []
    for i, y in enumerate(ys):
        check_numeric(np.zeros(1), y, path)
        check_label_values(y, path)
        check_labels(model, y, path, output=i)  # as a single output's: per-position labels (N, L) included
        classes = output_classes(model, i)
        if classes and classes > 1 and y.ndim == 1:
            y = y.astype(np.int32)
        fixed.append(fit_labels(classes, loss_name(model, i), y, path, per_position_classes(model, y, i)))
    return xs, fixed


def _structure(model, xs, ys):
    """x as {input name: array} (Keras matches them by name), y as one array or a tuple in output order."""
    import numpy as np

    inputs, _outputs = io_names(model)
    x = dict(zip(inputs, xs, strict=True))
    if ys is None:
        return x, np.zeros(len(xs[0]), np.float32)
    return x, (ys[0] if len(ys) == 1 else tuple(ys))
