"""Data for scoring, evaluation and fine-tuning, as batched tf.data pipelines.

Formats (`--data`), one module each: `npz`, `npy`, `images`, `tfrecord`. `checks` and `labels` hold
what every format runs against the model, `multi_io` the arrays of a model with several inputs or
outputs, `batches` the Data they all return. This package is the public API:
  * `.npz`: arrays `x`/`y`, or `x_train`/`y_train` with `x_test`/`y_test` and/or `x_val`/`y_val`.
    Read with allow_pickle=False (a pickle inside an .npz could run code) and held in memory.
  * `.npy` pairs: the inputs file has an `x` in its name, the labels file is the same name with
    that `x` as `y`: `x.npy` + `y.npy`, `x_train.npy` + `y_train.npy`, `digits_x.npy` + `digits_y.npy`.
    With `train` in the name, `x_test.npy`/`y_test.npy` (and `x_val`/`y_val`) beside it are used too.
    Memory-mapped and streamed in batches, so they may be larger than memory.
  * an image folder: one sub-folder per class (`DIR/cat/*.png`), or `DIR/train/<class>/` with
    `DIR/test/<class>/` (or `val/`); images are resized to the model's input.
  * TFRecord: a `.tfrecord` file, a folder of them, or a glob, described by a spec file (below).
  * language models (`tokens`): an `.npz` with `token_ids` (+ `padding_mask`), or a `.txt` file
    tokenised by the model's own tokenizer; a causal LM's labels are the next tokens.
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

from pathlib import Path

from prunecli.errors import DataError
from prunecli.io.data.batches import Data
from prunecli.io.data.checks import io_names, is_multi_io, unique_feature_names
from prunecli.io.data.images import image_files, load_images
from prunecli.io.data.npy import load_npy, npy_files
from prunecli.io.data.npz import load_npz
from prunecli.io.data.spec import find_spec
from prunecli.io.data.tfrecord import TFRECORD_SUFFIXES, eval_records, load_tfrecord, record_files, tfrecord_files
from prunecli.io.data.tokens import load_text


def load(path: str, model, batch_size: int = 64, val_split: float = 0.0, seed: int = 0) -> Data:
    """Read the data and return train/eval pipelines checked against the model."""
    from prunecli.structure import keras_graph

    fixed = keras_graph.fixed_batch(model)  # a stateful RNN's declared batch size; any other runs at any size
    if fixed and fixed != batch_size:
        from prunecli.errors import ConfigError

        raise ConfigError(f"the model's inputs have a fixed batch size of {fixed}; give --batch-size {fixed}")
    data = _read(path, model, batch_size, val_split, seed)
    return _whole_batches(data, batch_size) if fixed else data


def _whole_batches(data: Data, size: int) -> Data:
    """A model with a fixed batch size takes no shorter last batch: every pipeline keeps whole batches
    only, and the example counts say how many are used. A split smaller than one batch is refused."""
    import dataclasses

    counts = {"train": data.n_train, "eval": data.n_eval}
    for name, n in counts.items():
        if n < size:
            raise DataError(
                f"the {name} split has {n} examples, fewer than the model's fixed batch size {size}; "
                "give more data or a smaller --val-split"
            )

    def whole(ds):
        return None if ds is None else ds.unbatch().batch(size, drop_remainder=True)

    return dataclasses.replace(
        data,
        train=whole(data.train),
        eval=whole(data.eval),
        val=whole(data.val),
        n_train=data.n_train - data.n_train % size,
        n_eval=data.n_eval - data.n_eval % size,
    )


def _read(path: str, model, batch_size: int, val_split: float, seed: int) -> Data:
    """The data in the format `path` names (see the module docstring)."""
    p = Path(path)
    if not p.exists() and not any(ch in str(path) for ch in "*?["):
        raise DataError(f"data file not found: {p}")
    if p.suffix == ".txt" and p.is_file():  # a language model's text, tokenised by its own tokenizer
        return load_text(p, model, batch_size, val_split, seed)
    if is_multi_io(model) and not (p.suffix == ".npz" and p.is_file()):
        inputs, outputs = io_names(model)
        raise DataError(
            f"{p}: a model with inputs {inputs} and outputs {outputs} reads its data from one .npz "
            "(x_NAME per input, y_NAME per output; see README, Data)"
        )
    if any(ch in str(path) for ch in "*?["):
        return load_tfrecord(str(path), model, batch_size, val_split, seed)
    if not p.exists():
        raise DataError(f"data file not found: {p}")
    from prunecli.io.paths import check_readable

    check_readable(p, "data file", DataError)  # a FIFO would block, /dev/zero never ends
    if p.is_dir():
        if tfrecord_files(p):
            return load_tfrecord(str(p), model, batch_size, val_split, seed)
        return load_images(p, model, batch_size, val_split, seed)
    if p.suffix == ".npz":
        return load_npz(p, model, batch_size, val_split, seed)
    if p.suffix == ".npy":
        return load_npy(p, model, batch_size, val_split, seed)
    if p.suffix in TFRECORD_SUFFIXES:
        return load_tfrecord(str(p), model, batch_size, val_split, seed)
    raise DataError(
        f"{p}: unsupported data format (use .npz, x/y .npy files, an image folder, .tfrecord, or .txt for a language model)"
    )


def files_read(data: str) -> dict[str, list[Path]]:
    """Files `--data` reads besides itself, for io.paths.plan (an output must not overwrite them
    either): the labels .npy beside x.npy and a train file's test and val pairs; the TFRecord files a glob matches; a TFRecord's (or an image
    folder's) spec and the records its `eval:` names (`--report 'recs/part-0.tfrecord' -d 'recs/*.tfrecord'` replaced a shard)."""
    import glob

    p = Path(str(data))
    is_glob = any(ch in str(data) for ch in "*?[")
    out = [Path(f) for f in sorted(glob.glob(str(data)))] if is_glob else []
    if p.suffix == ".npy" and not is_glob:
        out += npy_files(p)
    if is_glob or p.is_dir() or (p.is_file() and p.suffix in TFRECORD_SUFFIXES):  # an image folder's too
        spec = find_spec(str(p))
        if spec is not None:
            out += [spec, *eval_records(spec)]
    return {"data": out} if out else {}


def files_loaded(data: str) -> list[tuple[str, Path]]:
    """Every file the loader reads for `data`, and nothing else, each with its path inside `data` when
    `data` is a folder ("" otherwise): the report's digest of the data (io.plan_file.data_digest) covers
    these, so that a copy with hidden files (`.DS_Store`, `._x`, `.ipynb_checkpoints`) or other files the
    loader skips (`._x.png`, a zip's `__MACOSX/`) is the same data. The records of a glob or a TFRecord folder are the loader's own listing
    (tfrecord.record_files), an image folder's the images its classes hold (images.image_files), with the
    companions files_read lists. A pattern or folder with nothing to read is a DataError."""
    from prunecli.io.paths import check_readable
    from prunecli.messages import shown

    p = Path(str(data))
    if any(ch in str(data) for ch in "*?[") or (p.is_dir() and tfrecord_files(p)):
        main = [Path(f) for f in record_files(str(data))]
    elif p.is_dir():
        main = [f for _name, f in image_files(p)]  # a DataError when there is none
    elif p.exists():
        check_readable(p, "data file", DataError)  # a FIFO would block, /dev/zero never ends
        main = [p]
    else:
        raise DataError(f"data file not found: {shown(p)}")
    inside, outside, seen = [], [], set()
    companions = [f for f in files_read(str(data)).get("data", []) if f.is_file()]
    for f in [*main, *companions]:
        if f.resolve() not in seen:
            seen.add(f.resolve())
            (inside if p.is_dir() and f.is_relative_to(p) else outside).append(f)
    return [(f.relative_to(p).as_posix(), f) for f in sorted(inside)] + [("", f) for f in outside]


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
    return unique_feature_names(
        [line.strip() for line in text.splitlines() if line.strip()], f"--feature-names {shown(p)}"
    )
