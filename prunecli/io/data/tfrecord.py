"""TFRecord data: a `.tfrecord` file, a folder of them, or a glob, described by a spec file; streamed
from disk, parsed in parallel."""

from __future__ import annotations

import glob
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prunecli.errors import DataError, record_scope
from prunecli.io.data.batches import SHUFFLE_BUFFER, Data, first_labels
from prunecli.io.data.checks import check_inputs, check_labels, check_token_ids, model_input_shape, streamed_checks
from prunecli.io.data.spec import find_spec, read_spec, scaled

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")


def load_tfrecord(path: str, model, batch_size: int, val_split: float, seed: int) -> Data:
    """Stream TFRecords: records are counted once (no parsing), split by a seeded per-record draw,
    shuffled through a bounded buffer and parsed in parallel."""
    import numpy as np

    files = record_files(path)
    spec_path, spec = _spec_of(path)
    parse = _record_parser(spec, model, spec_path)
    x_feature = _feature(spec, "x", spec_path)
    check = streamed_checks(model, path)  # every batch, as data held in memory is checked whole
    records = _Records(_compression(spec, spec_path), parse, spec.get("scale"), batch_size, seed, check)
    n_all = _count_readable(records, files, path)
    eval_files = record_files(str(spec["eval"]), spec_path.parent) if spec.get("eval") else None
    train_records, held, n_train, n_held = _hold_out(records, files, n_all, val_split, path)
    train = records.batches(train_records, n_train, path, shuffle=True)
    held_ds = None if held is None else records.batches(held, n_held, path, shuffle=False)
    evaluation, val, n_eval = _evaluation(records, files, n_all, eval_files, spec.get("eval"), held_ds, n_held, path)
    first_x, y_example = first_labels(evaluation, path=path)
    check_inputs(model, tuple(first_x.shape[1:]), path)
    check_token_ids(model, np.asarray(first_x), path)  # said before any work; later batches: `check`
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
        pixel_values=spec.get("scale") is None and (x_feature["encoding"] == "image" or x_feature["dtype"] == "uint8"),
    )


@dataclass(frozen=True)
class _Records:
    """How this data's records are read and batched: one place for the spec's compression, parser
    and scale, the run's batch size and seed, and the checks every batch passes, shared by the training, held-out and evaluation sets."""

    compression: str
    parse: Callable
    scale: float | None
    batch_size: int
    seed: int
    check: Callable | None  # checks.streamed_checks: each batch's ids and labels

    def read(self, files: list[str]):
        import tensorflow as tf

        return tf.data.TFRecordDataset(files, compression_type=self.compression)

    def batches(self, ds, n: int, source, shuffle: bool):
        """Parsed, batched, scaled and checked records, with their count known so schedules can plan in
        steps. Each record is parsed in `source`'s scope (errors.record_scope), so one that does not
        parse, in a batch read mid-run, is a DataError naming that file, as in the batches checked first.
        The checks see what the model sees: the inputs after the spec's scale."""
        import tensorflow as tf

        scope = record_scope(source)

        def parse(record):
            with tf.name_scope(scope):
                return self.parse(record)

        if shuffle:
            ds = ds.shuffle(min(max(n, 1), SHUFFLE_BUFFER), seed=self.seed, reshuffle_each_iteration=True)
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE).batch(self.batch_size)
        ds = scaled(ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n / self.batch_size))), self.scale)
        if self.check is not None:
            ds = ds.map(self.check)
        return ds.prefetch(tf.data.AUTOTUNE)


def _spec_of(path: str) -> tuple[Path, dict]:
    """The spec file and its contents; TFRecords cannot be read without one."""
    spec_path = find_spec(path)
    if spec_path is None:
        stem = Path(path).stem if Path(path).is_file() else "spec"
        raise DataError(f"{path}: TFRecord data needs a feature spec: write {stem}.spec.yaml beside it")
    return spec_path, read_spec(spec_path)


def _compression(spec: dict, spec_path: Path) -> str:
    compression = str(spec.get("compression") or "")
    if compression not in ("", "GZIP", "ZLIB"):
        raise DataError(f"data spec {spec_path}: compression must be GZIP or ZLIB, got {compression!r}")
    return compression


def _count_readable(records: _Records, files: list[str], path: str) -> int:
    """The number of records, counting which also proves the files readable with the spec's compression."""
    import tensorflow as tf

    try:
        n_all = _count(records.read(files))
    except tf.errors.DataLossError as exc:
        raise DataError(f"{path}: not a readable TFRecord file ({records.compression or 'uncompressed'})") from exc
    if n_all == 0:
        raise DataError(f"{path}: the dataset is empty")
    return n_all


def _hold_out(records: _Records, files: list[str], n_all: int, val_split: float, path: str):
    """(training records, held-out records or None, their counts). With --val-split, each record is
    held out by a draw seeded with its number, so both sides are the same on every pass."""
    import tensorflow as tf

    if val_split <= 0:
        return records.read(files), None, n_all, 0

    def held_out(i, _record):
        return tf.random.stateless_uniform([], seed=tf.stack([tf.cast(records.seed, tf.int64), i])) < val_split

    numbered = records.read(files).enumerate()
    held = numbered.filter(held_out).map(lambda _i, r: r)
    train_records = numbered.filter(lambda i, r: tf.logical_not(held_out(i, r))).map(lambda _i, r: r)
    n_held = _count(held)
    n_train = n_all - n_held
    if n_held == 0 or n_train == 0:
        raise DataError(f"{path}: --val-split {val_split:g} of {n_all} records leaves one side empty")
    return train_records, held, n_train, n_held


def _evaluation(
    records: _Records, files: list[str], n_all: int, eval_files, eval_name, held_ds, n_held: int, path: str
):
    """(evaluation batches, validation batches or None, evaluation count): the spec's `eval` records
    when given (a held-out part then validates), else the held-out part, else the training records."""
    import tensorflow as tf

    if eval_files:
        try:
            n_eval = _count(records.read(eval_files))
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as exc:
            raise DataError(
                f"{eval_name}: not a readable TFRecord file ({records.compression or 'uncompressed'})"
            ) from exc
        if n_eval == 0:
            raise DataError(f"{eval_name}: the evaluation records are empty")
        eval_source = eval_files[0] if len(eval_files) == 1 else eval_name
        return records.batches(records.read(eval_files), n_eval, eval_source, shuffle=False), held_ds, n_eval
    if held_ds is not None:
        return held_ds, None, n_held
    return records.batches(records.read(files), n_all, path, shuffle=False), None, n_all


def tfrecord_files(folder: Path) -> list[str]:
    """The TFRecord files directly in a folder, sorted so that every run reads them in one order. A
    hidden file is none (`._part-0.tfrecord` is the metadata a macOS copy leaves beside a shard, not
    records), as a glob's `*` matches none."""
    return sorted(
        str(f) for f in folder.iterdir() if f.is_file() and f.suffix in TFRECORD_SUFFIXES and not f.name.startswith(".")
    )


def eval_records(spec_path: Path) -> list[Path]:
    """What a spec's `eval:` names (record files, a glob's matches or their folder), for the path plan;
    none when the spec cannot be read (the loader says why when it reads it)."""
    try:
        spec = read_spec(spec_path)
    except DataError:
        return []
    if not spec.get("eval"):
        return []
    p = Path(str(spec["eval"]))
    p = p if p.is_absolute() else spec_path.parent / p
    return [Path(f) for f in sorted(glob.glob(str(p)))] if any(ch in str(p) for ch in "*?[") else [p]


def record_files(path: str, base: Path | None = None) -> list[str]:
    """The record files a TFRecord `path` (a file, a folder or a glob; relative to `base`) reads: the one
    listing the loader and the report's data digest (io.data.files_loaded) share."""
    p = Path(path)
    if base is not None and not p.is_absolute():
        p = base / p
    if any(ch in str(p) for ch in "*?["):
        files = sorted(glob.glob(str(p)))
    elif p.is_dir():
        files = tfrecord_files(p)
    else:
        files = [str(p)] if p.is_file() else []
    if not files:
        nothing = "the pattern matches no file" if any(ch in str(p) for ch in "*?[") else "nothing to read there"
        raise DataError(f"no TFRecord files found at {p}: {nothing}")
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
    shape = model_input_shape(model)
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
