"""Data for scoring, evaluation and fine-tuning, as batched tf.data pipelines.

Formats (`--data`):
  * `.npz`: arrays `x`/`y`, or `x_train`/`y_train` with `x_test`/`y_test` and/or `x_val`/`y_val`.
    Read with allow_pickle=False (a pickle inside an .npz could run code) and held in memory.
  * `.npy` pairs: the inputs file has an `x` in its name, the labels file is the same name with
    that `x` as `y`: `x.npy` + `y.npy`, `x_train.npy` + `y_train.npy`, `digits_x.npy` + `digits_y.npy`.
    With `train` in the name, `x_test.npy`/`y_test.npy` (and `x_val`/`y_val`) beside it are used too.
    Memory-mapped and streamed in batches, so they may be larger than memory.
  * an image folder: one sub-folder per class (`DIR/cat/*.png`), or `DIR/train/<class>/` with
    `DIR/test/<class>/` (or `val/`); images are resized to the model's input.
  * TFRecord: a `.tfrecord` file, a folder of them, or a glob, described by a spec file (below).
Image folders and TFRecords stream from disk. A spec is a small YAML/JSON file beside the data,
`NAME.spec.yaml` for `NAME.tfrecord`, or `spec.yaml` in the folder:

    x: {key: pixels, dtype: float32, shape: [8, 8, 1]}   # or {key: png, encoding: image},
                                                          # or {key: raw, encoding: raw, dtype: uint8, shape: [...]}
    y: {key: label, dtype: int64}
    scale: 0.00392156862745098     # optional: multiply the inputs (images too)
    compression: GZIP              # optional (TFRecord)
    eval: test.tfrecord            # optional (TFRecord): evaluation records, relative to the spec

Shapes and labels are checked against the model before anything runs, so a mismatch is one clear
line, not a stack trace from inside Keras. `--val-split` holds out a share of the training data:
for evaluation when only one set is given, for validation (early stopping) when a test set exists.
"""

from __future__ import annotations

import glob
import itertools
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunecli.errors import DataError, ResourceError

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")
IMAGE_SPLITS = ("test", "val", "validation")
FINITE_CHECK_ROWS = 4096  # rows per chunk when checking a memory-mapped file for NaN/Inf
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


def load(path: str, model, batch_size: int = 64, val_split: float = 0.0, seed: int = 0) -> Data:
    """Read the data and return train/eval pipelines checked against the model."""
    p = Path(path)
    if not p.exists() and not any(ch in str(path) for ch in "*?["):
        raise DataError(f"data file not found: {p}")
    if _is_multi(model) and not (p.suffix == ".npz" and p.is_file()):
        inputs, outputs = io_names(model)
        raise DataError(
            f"{p}: a model with inputs {inputs} and outputs {outputs} reads its data from one .npz "
            "(x_NAME per input, y_NAME per output; see README, Data)"
        )
    if any(ch in str(path) for ch in "*?["):
        return _load_tfrecord(str(path), model, batch_size, val_split, seed)
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    from prunecli.io.paths import check_readable

    check_readable(p, "data file", DataError)  # a FIFO would block, /dev/zero never ends
    if p.is_dir():
        if _tfrecord_files(p):
            return _load_tfrecord(str(p), model, batch_size, val_split, seed)
        return _load_images(p, model, batch_size, val_split, seed)
    if p.suffix == ".npz":
        return _load_npz(p, model, batch_size, val_split, seed)
    if p.suffix == ".npy":
        return _load_npy(p, model, batch_size, val_split, seed)
    if p.suffix in TFRECORD_SUFFIXES:
        return _load_tfrecord(str(p), model, batch_size, val_split, seed)
    raise DataError(f"{p}: unsupported data format (use .npz, x/y .npy files, an image folder or .tfrecord)")


# ---------------------------------------------------------------------------------------------
# checks


def _model_input_shape(model):
    shapes = [tuple(t.shape) for t in model.inputs] if getattr(model, "inputs", None) else []
    return shapes[0] if len(shapes) == 1 else None


def _output_classes(model) -> int | None:
    out = model.outputs[0].shape if getattr(model, "outputs", None) else None
    return None if out is None or out[-1] is None else int(out[-1])


def check_inputs(model, per_example: tuple, path) -> None:
    """The per-example input shape must match the model's input shape (None matches anything)."""
    expected = _model_input_shape(model)
    if expected is None:
        return
    got, want = tuple(per_example), tuple(expected[1:])
    if not (len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got, strict=True))):
        raise DataError(f"{path}: inputs have shape {got} per example but the model expects {want}")


def check_labels(model, y, path) -> None:
    """Labels must fit the model's output: as many columns, or integer classes in range."""
    classes = _output_classes(model)
    if classes is None or len(y) == 0:
        return
    if y.ndim >= 2 and y.shape[-1] not in (1, classes):
        raise DataError(f"{path}: labels have {y.shape[-1]} columns but the model outputs {classes}")
    if (y.ndim == 1 or (y.ndim == 2 and y.shape[-1] == 1 and classes > 1)) and classes > 1 and y.dtype.kind in "iuf":
        import numpy as np

        flat = np.asarray(y).reshape(-1)
        if y.dtype.kind == "f":
            if not np.isfinite(flat).all():
                raise DataError(f"{path}: labels contain NaN or Inf")
            if not (flat == np.round(flat)).all():
                raise DataError(
                    f"{path}: class labels must be whole numbers 0..{classes - 1}, got {flat[flat != np.round(flat)][0]:g}"
                )
        if flat.min() < 0 or flat.max() >= classes:
            raise DataError(f"{path}: labels range {flat.min():g}..{flat.max():g} but the model has {classes} classes")


def _loss_name(model, output: int | None = None) -> str:
    """The compiled loss's normalised name (of output number `output` for several outputs), or ""."""
    loss = getattr(model, "loss", None)
    if output is not None:
        _inputs, names = io_names(model)
        if isinstance(loss, dict):
            loss = loss.get(names[output])
        elif isinstance(loss, (list, tuple)):
            loss = loss[output] if output < len(loss) else None
    if isinstance(loss, (list, tuple, dict)) or loss is None:
        return ""
    name = (
        loss
        if isinstance(loss, str)
        else (getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__)
    )
    return str(name).lower().replace("_", "")


def labels_for_model(model, y, path):
    """Both label forms Keras users use, fitted to the loss the model was compiled with: one-hot rows
    for a sparse loss become class numbers, class numbers for a categorical loss become one-hot rows.
    Soft labels (probabilities) for a sparse loss cannot be converted: one line says so."""

    return _fit_labels(_output_classes(model), _loss_name(model), y, path)


def _fit_labels(classes, loss: str, y, path):
    import numpy as np

    if not classes or classes < 2 or len(y) == 0:
        return y
    if loss.startswith("sparsecategorical") and y.ndim == 2 and y.shape[-1] == classes:
        arr = np.asarray(y)
        if not (np.isin(arr, (0, 1)).all() and (arr.sum(axis=-1) == 1).all()):
            raise DataError(
                f"{path}: labels are {classes} columns of probabilities but the model's loss "
                "(sparse categorical) takes class numbers; give y as integers 0..{classes - 1} or one-hot rows"
            )
        return arr.argmax(axis=-1).astype(np.int32)
    if loss in ("categoricalcrossentropy", "categoricalfocalcrossentropy") and y.ndim == 1:
        arr = np.asarray(y).astype(np.int64)
        return np.eye(classes, dtype=np.float32)[arr]
    if y.dtype.kind == "f" and y.ndim == 1 and not loss.startswith(("categorical", "binary", "mse", "mae", "mean")):
        return np.asarray(y).astype(np.int32)  # whole-number float class labels (checked by check_labels)
    return y


def check_shapes(model, x, y, path) -> None:
    """Inputs must match the model's input shape; labels must match the output's batch size."""
    check_inputs(model, x.shape[1:], path)
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{path}: the dataset is empty")
    check_labels(model, y, path)


def _check_numeric(x, y, path) -> None:
    if x.dtype.kind not in "fiub" or y.dtype.kind not in "fiub":
        raise DataError(f"{path}: x and y must be numeric arrays")
    if x.ndim == 0 or y.ndim == 0:
        which = "x" if x.ndim == 0 else "y"
        raise DataError(f"{path}: {which} is a single number (0-d); it needs one row per example")


FLOAT32_MAX = 3.4028234663852886e38


def _as_float32(x, path):
    """Inputs as float32; values beyond float32's range are an error (not a NaN/Inf after the cast,
    and not NumPy's overflow warnings on the terminal)."""
    import numpy as np

    if x.dtype == np.float32:
        return x
    if x.dtype.kind == "f" and x.dtype.itemsize > 4 and len(x):
        with np.errstate(all="ignore"):
            finite = np.isfinite(x)
            if finite.all() and np.abs(x).max() > FLOAT32_MAX:
                raise DataError(f"{path}: inputs exceed the float32 range (largest |x| is {np.abs(x).max():.3g})")
    with np.errstate(all="ignore"):
        return x.astype(np.float32)


def _check_label_values(y, path) -> None:
    import numpy as np

    if y.dtype.kind == "f" and len(y):
        for start in range(0, len(y), FINITE_CHECK_ROWS):
            if not np.isfinite(y[start : start + FINITE_CHECK_ROWS]).all():
                raise DataError(f"{path}: labels contain NaN or Inf")


def read_feature_names(path) -> list[str]:
    """--feature-names: one name per line, UTF-8; a special file or undecodable text is one clear line."""
    import stat

    from prunecli.errors import ConfigError
    from prunecli.messages import shown

    p = Path(path)
    try:
        st = p.stat()
    except (OSError, ValueError):
        raise ConfigError(f"--feature-names file not found: {shown(p)}") from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"--feature-names {shown(p)} is not a regular file")
    if st.st_size > 64 * 2**20:
        raise ConfigError(f"--feature-names {shown(p)} is larger than 64 MiB")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"--feature-names {shown(p)} is not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise DataError(f"cannot read --feature-names {shown(p)}: {exc.strerror or exc}") from exc
    return [line.strip() for line in text.splitlines() if line.strip()]


def _feature_names(arrays: dict, path) -> list[str] | None:
    if "feature_names" not in arrays:
        return None
    names = arrays["feature_names"]
    if names.ndim != 1 or names.dtype.kind not in "USiu":
        raise DataError(f"{path}: feature_names must be a 1-d array of names, got shape {names.shape} ({names.dtype})")
    return [str(n) for n in names]


def _check_finite(x, path) -> None:
    """NaN/Inf check in chunks, so a memory-mapped file is never read into memory at once."""
    import numpy as np

    if x.dtype.kind != "f":
        return
    for start in range(0, len(x), FINITE_CHECK_ROWS):
        chunk = x[start : start + FINITE_CHECK_ROWS]
        if not np.isfinite(chunk).all():
            raise DataError(f"{path}: inputs contain NaN or Inf")
        if x.dtype.itemsize > 4 and len(chunk) and np.abs(chunk).max() > FLOAT32_MAX:
            raise DataError(f"{path}: inputs exceed the float32 range (largest |x| is {np.abs(chunk).max():.3g})")


# ---------------------------------------------------------------------------------------------
# arrays: .npz (in memory) and .npy (memory-mapped)


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
        if fh.read(4) != b"PK\x03\x04":  # otherwise numpy would try it as .npy or pickle
            raise DataError(f"{path} is not a readable .npz file (not a zip archive of .npy arrays)")
    try:
        with np.load(path, allow_pickle=False) as z:
            _check_fits_in_memory(path, sum(info.file_size for info in z.zip.infolist()))
            return {k: z[k] for k in z.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(f"{path} holds pickled objects; prunecli only reads plain numeric arrays") from exc
        raise DataError(f"{path} is not a readable .npz file ({exc})") from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path} is not a readable .npz file ({exc})") from exc


def _pick(arrays: dict, path: Path):
    """(train, evaluation, validation) pairs from the arrays' names; the last two may be None."""

    def pair(name):
        xk, yk = f"x_{name}", f"y_{name}"
        return (arrays[xk], arrays[yk]) if xk in arrays and yk in arrays else None

    if pair("train"):
        test, val = pair("test"), pair("val")
        return (pair("train"), test, val) if test else (pair("train"), val, None)
    if "x" in arrays and "y" in arrays:
        return (arrays["x"], arrays["y"]), None, None
    raise DataError(f"{path} needs arrays x and y (or x_train/y_train and x_test/y_test); found: {sorted(arrays)}")


def io_names(model) -> tuple[list[str], list[str]]:
    """The model's input names (its Input layers) and output names, in order."""
    inputs = [str(t.name) for t in getattr(model, "inputs", None) or []]
    outputs = [str(n) for n in getattr(model, "output_names", None) or []]
    return inputs, outputs


def _is_multi(model) -> bool:
    inputs, outputs = io_names(model)
    return len(inputs) > 1 or len(outputs) > 1


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
        if xs is None or ys is None or any(a is None for a in [*xs, *ys]):
            want = [f"x{split}_{n}" for n in inputs] if len(inputs) > 1 else [f"x{split}"]
            want += [f"y{split}_{n}" for n in outputs] if len(outputs) > 1 else [f"y{split}"]
            raise DataError(
                f"{path}: the model has inputs {inputs} and outputs {outputs}; the .npz needs arrays "
                f"{', '.join(want)} (or NAME/... keys); found: {sorted(arrays)}"
            )
        return xs, ys

    train = pair("_train") or pair("")
    if train is None:
        pair("")  # raises with the names it needs
        raise DataError(f"{path}: no x/y arrays for the model's inputs {inputs} and outputs {outputs}")
    test, val = pair("_test"), pair("_val")
    return (train, test, val) if test else (train, val, None)


def _check_multi(model, xs, ys, path):
    """Each input and each output checked like a single one; all with the same number of rows."""
    import numpy as np

    inputs, outputs = io_names(model)
    rows = {len(a) if a.ndim else -1 for a in [*xs, *ys]}
    for name, a in zip(inputs, xs, strict=True):
        _check_numeric(a, np.zeros(1), path)
        want = tuple(model.inputs[inputs.index(name)].shape[1:])
        got = tuple(a.shape[1:])
        if not (len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got, strict=True))):
            raise DataError(f"{path}: input {name!r} has shape {got} per example but the model expects {want}")
    if len(rows) != 1:
        raise DataError(f"{path}: the inputs and labels have different numbers of rows: {sorted(rows)}")
    if rows == {0}:
        raise DataError(f"{path}: the dataset is empty")
    xs = [_as_float32(a, path) for a in xs]
    for a in xs:
        _check_finite(a, path)
    fixed = []
    for i, y in enumerate(ys):
        _check_numeric(np.zeros(1), y, path)
        _check_label_values(y, path)
        classes = model.outputs[i].shape[-1]
        if classes is not None and y.ndim >= 2 and y.shape[-1] not in (1, classes):
            raise DataError(f"{path}: labels of output {outputs[i]!r} have {y.shape[-1]} columns but it has {classes}")
        if classes and classes > 1 and y.ndim == 1:
            flat = y.astype(np.float64)
            if (flat != np.round(flat)).any() or flat.min() < 0 or flat.max() >= classes:
                raise DataError(f"{path}: labels of output {outputs[i]!r} must be classes 0..{classes - 1}")
            y = y.astype(np.int32)
        fixed.append(_fit_labels(classes, _loss_name(model, i), y, path))
    return xs, fixed


def _structure(model, xs, ys):
    """x as {input name: array} (Keras matches them by name), y as one array or a tuple in output order."""
    inputs, _outputs = io_names(model)
    return dict(zip(inputs, xs, strict=True)), (ys[0] if len(ys) == 1 else tuple(ys))


def _take(struct, idx):
    import tensorflow as tf

    return tf.nest.map_structure(lambda a: a[idx], struct)


def _rows(struct) -> int:
    import tensorflow as tf

    return len(tf.nest.flatten(struct)[0])


def _load_npz_multi(p: Path, arrays: dict, model, batch_size: int, val_split: float, seed: int) -> Data:
    inputs, outputs = io_names(model)
    train, evaluation, val = _multi_pick(arrays, inputs, outputs, p)
    sets = {}
    for key, pair in (("train", train), ("eval", evaluation), ("val", val)):
        sets[key] = None if pair is None else _structure(model, *_check_multi(model, *pair, p))
    parts = _split_indices(_rows(sets["train"][0]), sets, val_split, seed)
    for key, idx in parts.items():
        sets[key] = (_take(sets["train"][0], idx), _take(sets["train"][1], idx))
    ex, ey = sets["eval"] or sets["train"]
    return Data(
        train=_batched(*sets["train"], batch_size, shuffle_seed=seed),
        eval=_batched(ex, ey, batch_size),
        n_train=_rows(sets["train"][0]),
        n_eval=_rows(ex),
        y_example=_take(ey, slice(0, 256)),
        source=str(p),
        feature_names=_feature_names(arrays, p),
        val=None if sets["val"] is None else _batched(*sets["val"], batch_size),
        eval_held_out=sets["eval"] is not None,
    )


def files_read(data: str) -> dict[str, list[Path]]:
    """Files `--data` reads besides itself, for io.paths.plan: the labels .npy beside x.npy and a
    TFRecord's spec (an output must not overwrite them either)."""
    p = Path(str(data))
    if any(ch in str(data) for ch in "*?["):
        return {}
    out = []
    if p.suffix == ".npy":
        partner = npy_partner(p, "x", "y")
        if partner is not None:
            out.append(partner)
    if p.is_file() and p.suffix in TFRECORD_SUFFIXES:
        spec = find_spec(str(p))
        if spec is not None:
            out.append(spec)
    return {"data": out} if out else {}


def _load_npz(p: Path, model, batch_size: int, val_split: float, seed: int) -> Data:
    arrays = _read_npz(p)
    if _is_multi(model):
        return _load_npz_multi(p, arrays, model, batch_size, val_split, seed)
    train, evaluation, val = _pick(arrays, p)
    names = _feature_names(arrays, p)
    sets = {"train": train, "eval": evaluation, "val": val}
    for key, pair in sets.items():
        if pair is not None:
            _check_numeric(*pair, p)
            x, y = pair
            _check_label_values(y, p)
            sets[key] = (_as_float32(x, p), y)
            check_shapes(model, *sets[key], p)
            _check_finite(sets[key][0], p)
            sets[key] = (sets[key][0], labels_for_model(model, sets[key][1], p))
    parts = _split_indices(len(sets["train"][0]), sets, val_split, seed)
    train_x, train_y = sets["train"]
    take = {k: (train_x[idx], train_y[idx]) for k, idx in parts.items()}
    sets.update(take)
    ex, ey = sets["eval"] or sets["train"]
    return Data(
        train=_batched(*sets["train"], batch_size, shuffle_seed=seed),
        eval=_batched(ex, ey, batch_size),
        n_train=len(sets["train"][0]),
        n_eval=len(ex),
        y_example=ey[:256],
        source=str(p),
        feature_names=names,
        val=None if sets["val"] is None else _batched(*sets["val"], batch_size),
        eval_held_out=sets["eval"] is not None,
    )


def _split_indices(n: int, sets: dict, val_split: float, seed: int) -> dict:
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


def _batched(x, y, batch_size: int, shuffle_seed: int | None = None):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        ds = ds.shuffle(min(_rows(x), SHUFFLE_BUFFER), seed=shuffle_seed, reshuffle_each_iteration=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


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
    _check_numeric(x, y, x_path)
    _check_label_values(y, x_path)
    return x, y


def _load_npy(p: Path, model, batch_size: int, val_split: float, seed: int) -> Data:
    import numpy as np

    sets = {"train": _npy_set(p), "eval": None, "val": None}
    for key, name in (("eval", "test"), ("val", "val")):
        sibling = npy_partner(p, "train", name)
        if sibling is not None and sibling.is_file():
            sets[key] = _npy_set(sibling)
    if sets["eval"] is None:
        sets["eval"], sets["val"] = sets["val"], None
    for pair in filter(None, sets.values()):
        check_shapes(model, *pair, p)
        _check_finite(pair[0], p)
    index = {k: None if v is None else np.arange(len(v[0])) for k, v in sets.items()}
    parts = _split_indices(len(sets["train"][0]), sets, val_split, seed)
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
    )


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


# ---------------------------------------------------------------------------------------------
# spec files (image folders, TFRecord)


def find_spec(path: str) -> Path | None:
    """`NAME.spec.yaml|yml|json` beside a file, else `spec.yaml|yml|json` in its (or the glob's) folder."""
    p = Path(path)
    candidates = []
    if p.is_dir():
        folder = p
    else:
        folder = p.parent
        if not any(ch in p.name for ch in "*?["):
            candidates += [p.with_name(f"{p.stem}.spec{ext}") for ext in (".yaml", ".yml", ".json")]
    candidates += [folder / f"spec{ext}" for ext in (".yaml", ".yml", ".json")]
    return next((c for c in candidates if c.is_file()), None)


def read_spec(path: Path | None) -> dict:
    import yaml

    if path is None:
        return {}
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise DataError(f"cannot read data spec {path}: {first}") from exc
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise DataError(f"data spec {path} must be a mapping")
    unknown = set(spec) - {"x", "y", "scale", "compression", "eval"}
    if unknown:
        raise DataError(f"data spec {path}: unknown key {sorted(unknown)[0]!r} (use x, y, scale, compression, eval)")
    scale = spec.get("scale")
    if "scale" in spec and (
        isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale == 0
    ):
        raise DataError(f"data spec {path}: scale must be a finite non-zero number, got {scale!r}")
    return spec


def _scaled(ds, scale):
    if scale is None:
        return ds
    import tensorflow as tf

    return ds.map(lambda x, y: (x * tf.constant(float(scale), tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)


def _first_labels(ds, limit: int = 256, path=None):
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
        first = (str(exc.message).strip().splitlines() or ["unreadable record"])[0][:200]
        raise DataError(f"{path}: cannot read the data ({first})") from exc
    if first_x is None:
        raise DataError(f"{path}: the dataset is empty")
    return first_x, np.concatenate(labels)[:limit]


# ---------------------------------------------------------------------------------------------
# image folders


def _image_layout(p: Path):
    """(train folder, evaluation folder or None) for DIR/<class>/ or DIR/train/<class>/ + DIR/test/<class>/."""
    subdirs = {d.name for d in p.iterdir() if d.is_dir()}
    if "train" in subdirs and subdirs <= {"train", *IMAGE_SPLITS}:
        held = next((p / name for name in IMAGE_SPLITS if name in subdirs), None)
        return p / "train", held
    return p, None


def _wants_one_hot(model) -> bool:
    loss = getattr(model, "loss", None)
    name = loss if isinstance(loss, str) else type(loss).__name__
    return str(name).lower().replace("_", "") in ("categoricalcrossentropy", "categoricalfocalcrossentropy")


def _load_images(p: Path, model, batch_size: int, val_split: float, seed: int) -> Data:
    import keras
    import numpy as np

    shape = _model_input_shape(model)
    if shape is None or len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise DataError(f"{p}: an image folder needs a model with a fixed image input (height, width, channels)")
    modes = {1: "grayscale", 3: "rgb", 4: "rgba"}
    if shape[3] not in modes:
        raise DataError(f"{p}: the model's input has {shape[3]} channels; image folders give 1, 3 or 4")
    classes = _output_classes(model) or 1
    label_mode = "binary" if classes == 1 else ("categorical" if _wants_one_hot(model) else "int")
    spec = read_spec(find_spec(str(p)))
    train_dir, eval_dir = _image_layout(p)
    options = dict(
        label_mode=label_mode,
        color_mode=modes[shape[3]],
        batch_size=batch_size,
        image_size=(shape[1], shape[2]),
        seed=seed,
        verbose=False,
    )

    def folder(directory, **extra):
        try:
            return keras.utils.image_dataset_from_directory(str(directory), **options, **extra)
        except ValueError as exc:
            raise DataError(f"{directory}: {str(exc).splitlines()[0]}") from exc

    if val_split > 0:
        train, held = folder(train_dir, shuffle=True, validation_split=val_split, subset="both")
    else:
        train, held = folder(train_dir, shuffle=True), None
    names = list(train.class_names)
    want = 2 if classes == 1 else classes
    if len(names) != want:
        raise DataError(f"{p}: {len(names)} class folders but the model outputs {want} classes")
    if eval_dir is not None:
        evaluation, val = folder(eval_dir, shuffle=False, class_names=names), held
    else:
        evaluation, val = held, None
    held_out = evaluation is not None
    evaluation = evaluation if held_out else train
    n_train, n_eval = len(train.file_paths), len(evaluation.file_paths)
    scale = spec.get("scale")
    train, evaluation = _scaled(train, scale), _scaled(evaluation, scale)
    _x, y_example = _first_labels(evaluation, path=p)
    return Data(
        train=train,
        eval=evaluation,
        n_train=n_train,
        n_eval=n_eval,
        y_example=np.asarray(y_example),
        source=str(p),
        val=None if val is None else _scaled(val, scale),
        eval_held_out=held_out,
    )


# ---------------------------------------------------------------------------------------------
# TFRecord


def _tfrecord_files(folder: Path) -> list[str]:
    return sorted(str(f) for f in folder.iterdir() if f.is_file() and f.suffix in TFRECORD_SUFFIXES)


def _resolve_records(path: str, base: Path | None = None) -> list[str]:
    p = Path(path)
    if base is not None and not p.is_absolute():
        p = base / p
    if any(ch in str(p) for ch in "*?["):
        files = sorted(glob.glob(str(p)))
    elif p.is_dir():
        files = _tfrecord_files(p)
    else:
        files = [str(p)] if p.is_file() else []
    if not files:
        raise DataError(f"no TFRecord files found at {p}")
    return files


_DTYPES = ("float32", "int64", "uint8", "int32", "float16", "float64", "int16")


def _feature(spec: dict, name: str, where: Path) -> dict:
    item = spec.get(name)
    if not isinstance(item, dict) or "key" not in item:
        raise DataError(f"data spec {where}: {name} needs at least a key, e.g. {name}: {{key: {name}, dtype: float32}}")
    unknown = set(item) - {"key", "dtype", "shape", "encoding"}
    if unknown:
        raise DataError(f"data spec {where}: unknown field {sorted(unknown)[0]!r} in {name}")
    encoding = item.get("encoding", "feature")
    if encoding not in ("feature", "image", "raw"):
        raise DataError(f"data spec {where}: {name}.encoding must be image or raw, got {encoding!r}")
    dtype = item.get("dtype", "float32" if name == "x" else "int64")
    allowed = _DTYPES if encoding == "raw" else ("float32", "int64")
    if encoding != "image" and dtype not in allowed:
        raise DataError(f"data spec {where}: {name}.dtype must be one of {', '.join(allowed)}, got {dtype!r}")
    shape = item.get("shape", [])
    if not isinstance(shape, list) or not all(isinstance(d, int) and d > 0 for d in shape):
        raise DataError(f"data spec {where}: {name}.shape must be a list of positive integers, got {shape!r}")
    if encoding == "raw" and not shape:
        raise DataError(f"data spec {where}: {name} with encoding raw needs a shape")
    return {"key": str(item["key"]), "dtype": dtype, "shape": shape, "encoding": encoding}


def _record_parser(spec: dict, model, where: Path):
    """A function serialized record -> (x float32, y) following the spec."""
    import tensorflow as tf

    fx, fy = _feature(spec, "x", where), _feature(spec, "y", where)
    if fy["encoding"] != "feature":
        raise DataError(f"data spec {where}: y must be a plain feature (dtype int64 or float32)")
    shape = _model_input_shape(model)
    if fx["encoding"] == "image" and (shape is None or len(shape) != 4 or None in shape[1:]):
        raise DataError(f"data spec {where}: encoding image needs a model with a fixed image input")

    def description(f):
        if f["encoding"] == "feature":
            return tf.io.FixedLenFeature(f["shape"], tf.as_dtype(f["dtype"]))
        return tf.io.FixedLenFeature([], tf.string)

    features = {fx["key"]: description(fx), fy["key"]: description(fy)}

    def decode_x(value):
        if fx["encoding"] == "image":
            image = tf.io.decode_image(value, channels=shape[3], expand_animations=False)
            return tf.image.resize(tf.cast(image, tf.float32), shape[1:3])
        if fx["encoding"] == "raw":
            return tf.reshape(tf.cast(tf.io.decode_raw(value, tf.as_dtype(fx["dtype"])), tf.float32), fx["shape"])
        return tf.cast(value, tf.float32)

    def parse(record):
        example = tf.io.parse_single_example(record, features)
        return decode_x(example[fx["key"]]), example[fy["key"]]

    return parse


def _count(ds) -> int:
    import numpy as np

    return int(ds.reduce(np.int64(0), lambda n, _: n + 1))


def _load_tfrecord(path: str, model, batch_size: int, val_split: float, seed: int) -> Data:
    """Stream TFRecords: records are counted once (no parsing), split by a seeded per-record draw,
    shuffled through a bounded buffer and parsed in parallel."""
    import numpy as np
    import tensorflow as tf

    files = _resolve_records(path)
    spec_path = find_spec(path)
    if spec_path is None:
        stem = Path(path).stem if Path(path).is_file() else "spec"
        raise DataError(f"{path}: TFRecord data needs a feature spec: write {stem}.spec.yaml beside it")
    spec = read_spec(spec_path)
    parse = _record_parser(spec, model, spec_path)
    compression = str(spec.get("compression") or "")
    if compression not in ("", "GZIP", "ZLIB"):
        raise DataError(f"data spec {spec_path}: compression must be GZIP or ZLIB, got {compression!r}")

    def records(names):
        return tf.data.TFRecordDataset(names, compression_type=compression)

    def pipeline(ds, n, shuffle: bool):
        if shuffle:
            ds = ds.shuffle(min(max(n, 1), SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
        ds = ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size)))
        return _scaled(ds, spec.get("scale")).prefetch(tf.data.AUTOTUNE)

    try:
        n_all = _count(records(files))
    except tf.errors.DataLossError as exc:
        raise DataError(f"{path}: not a readable TFRecord file ({compression or 'uncompressed'})") from exc
    if n_all == 0:
        raise DataError(f"{path}: the dataset is empty")
    eval_files = _resolve_records(str(spec["eval"]), spec_path.parent) if spec.get("eval") else None
    train_records, held, n_train, n_held = records(files), None, n_all, 0
    if val_split > 0:

        def held_out(i, _record):
            return tf.random.stateless_uniform([], seed=tf.stack([tf.cast(seed, tf.int64), i])) < val_split

        numbered = records(files).enumerate()
        held = numbered.filter(held_out).map(lambda _i, r: r)
        train_records = numbered.filter(lambda i, r: tf.logical_not(held_out(i, r))).map(lambda _i, r: r)
        n_held = _count(held)
        n_train = n_all - n_held
        if n_held == 0 or n_train == 0:
            raise DataError(f"{path}: --val-split {val_split:g} of {n_all} records leaves one side empty")
    train = pipeline(train_records, n_train, shuffle=True)
    held_ds = None if held is None else pipeline(held, n_held, shuffle=False)
    if eval_files:
        try:
            n_eval = _count(records(eval_files))
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
            raise DataError(f"{spec['eval']}: not a readable TFRecord file ({compression or 'uncompressed'})") from exc
        if n_eval == 0:
            raise DataError(f"{spec['eval']}: the evaluation records are empty")
        evaluation, val = pipeline(records(eval_files), n_eval, shuffle=False), held_ds
    elif held_ds is not None:
        evaluation, val, n_eval = held_ds, None, n_held
    else:
        evaluation, val, n_eval = pipeline(records(files), n_all, shuffle=False), None, n_all
    first_x, y_example = _first_labels(evaluation, path=path)
    check_inputs(model, tuple(first_x.shape[1:]), path)
    check_labels(model, y_example, path)
    return Data(
        train=train,
        eval=evaluation,
        n_train=n_train,
        n_eval=n_eval,
        y_example=np.asarray(y_example),
        source=str(path),
        val=val,
        eval_held_out=bool(eval_files) or held_ds is not None,
    )
