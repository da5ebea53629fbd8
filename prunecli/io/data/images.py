"""Image folders: one sub-folder per class (`DIR/cat/*.png`), or `DIR/train/<class>/` with
`DIR/test/<class>/` (or `val/`); streamed from disk and resized to the model's input."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prunecli.errors import DataError
from prunecli.io.data.batches import Data, first_labels
from prunecli.io.data.checks import model_input_shape, output_classes
from prunecli.io.data.spec import find_spec, read_spec, scaled

IMAGE_SPLITS = ("test", "val", "validation")
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # what keras' image_dataset_from_directory reads


def load_images(p: Path, model, batch_size: int, val_split: float, seed: int) -> Data:
    """The images of `image_listing(p)` (the one listing the report's data digest covers too), read as
    keras' image_dataset_from_directory reads a folder: the files shuffled once by `seed`, the last
    `val_split` of them held out, each decoded and resized (bilinear) to the model's input."""
    import numpy as np

    shape = model_input_shape(model)
    if shape is None or len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise DataError(f"{p}: an image folder needs a model with a fixed image input (height, width, channels)")
    if shape[3] not in (1, 3, 4):
        raise DataError(f"{p}: the model's input has {shape[3]} channels; image folders give 1, 3 or 4")
    classes = output_classes(model) or 1
    label_mode = "binary" if classes == 1 else ("categorical" if _wants_one_hot(model) else "int")
    spec = read_spec(find_spec(str(p)))
    listing = image_listing(p)
    want = 2 if classes == 1 else classes
    if len(listing.class_names) != want:
        raise DataError(f"{p}: {len(listing.class_names)} class folders but the model outputs {want} classes")
    train_files = _shuffled(listing.train, seed)
    held_files = None
    if val_split > 0:
        n_held = int(val_split * len(train_files))  # keras' image_dataset_from_directory's split
        if n_held == 0 or n_held == len(train_files):
            raise DataError(f"{p}: --val-split {val_split:g} of {len(train_files)} images leaves none on one side")
        train_files, held_files = train_files[:-n_held], train_files[-n_held:]

    def dataset(files, shuffle):
        return _image_dataset(files, label_mode, want, shape, batch_size, seed if shuffle else None)

    train = dataset(train_files, shuffle=True)
    held = None if held_files is None else dataset(held_files, shuffle=False)
    if listing.evaluation is not None:
        eval_files, val = listing.evaluation, held
        evaluation = dataset(eval_files, shuffle=False)
    else:
        eval_files, evaluation, val = held_files, held, None
    held_out = evaluation is not None
    evaluation = evaluation if held_out else train
    n_train, n_eval = len(train_files), len(eval_files if held_out else train_files)
    check_image_headers([f for f, _label in (listing.train + (listing.evaluation or []))])
    scale = spec.get("scale")
    train, evaluation = scaled(train, scale), scaled(evaluation, scale)
    _x, y_example = first_labels(evaluation, path=p)
    return Data(
        train=train,
        eval=evaluation,
        n_train=n_train,
        n_eval=n_eval,
        y_example=np.asarray(y_example),
        source=str(p),
        val=None if val is None else scaled(val, scale),
        eval_held_out=held_out,
        eval_classes=len({label for _f, label in (eval_files if held_out else train_files)}),
        pixel_values=scale is None,
    )


# how a file of each format Keras' image folders read begins (PNG, JPEG, GIF, BMP)
IMAGE_HEADERS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


def check_image_headers(paths) -> None:
    """Every image file must begin as an image of some format Keras decodes: a file that does not (a
    stray text file named .png) stopped a run mid-training with an internal error once its batch came,
    past the batches read before the work. Reads 8 bytes of each; a damaged image body is found only
    when decoded (errors.streamed_data_error then names the decoder's reason)."""
    for path in paths:
        try:
            with open(path, "rb") as fh:
                start = fh.read(8)
        except OSError as exc:
            raise DataError(f"{path}: cannot read the image ({exc.strerror})") from exc
        if not start.startswith(IMAGE_HEADERS):
            raise DataError(f"{path}: not an image (its first bytes are no PNG, JPEG, GIF or BMP header)")


# What a copy leaves beside the data and no loader reads: macOS' AppleDouble `__MACOSX/` folder at the
# root of an extracted zip. Hidden names (`.DS_Store`, `._x.png`, `.ipynb_checkpoints`) are skipped too,
# and Windows' `Thumbs.db` and `desktop.ini` are not named as images.
SKIPPED_FOLDERS = ("__MACOSX",)


@dataclass
class ImageListing:
    """The images an image folder holds: (path, class index) in keras' listing order (class by class,
    folders by path, files by name), for the training folder and the evaluation folder (test/ or val/
    beside train/; None when there is none)."""

    class_names: list[str]
    train: list[tuple[Path, int]]
    evaluation: list[tuple[Path, int]] | None


def image_listing(p: Path) -> ImageListing:
    """The images the loader reads from folder `p`, and the files the data digest covers (image_files):
    one listing, so that what is read and what the report's digest names cannot differ. A class folder
    is a sub-folder not skipped; in each, at any depth outside skipped folders, the files named as images
    (IMAGE_SUFFIXES, in any case) that are not hidden: a macOS copy's `._x.png` beside `x.png` is
    metadata, not an image, and an evaluation folder is read for the training folder's classes."""
    from prunecli.messages import shown

    train_dir, eval_dir = _image_layout(p)
    names = _class_folders(train_dir)
    train = _class_images(train_dir, names)
    if not train:
        raise DataError(f"{shown(train_dir)}: no images to read (class folders holding .png, .jpg, .gif or .bmp files)")
    evaluation = None
    if eval_dir is not None:
        missing = sorted(set(names) - set(_class_folders(eval_dir)))
        if missing:
            raise DataError(f"{shown(eval_dir)}: no class folder {shown(missing[0])!r}, which {train_dir.name}/ has")
        evaluation = _class_images(eval_dir, names)
        if not evaluation:
            raise DataError(f"{shown(eval_dir)}: no images to read in its class folders")
    return ImageListing(names, train, evaluation)


def image_files(p: Path) -> list[tuple[str, Path]]:
    """The images the loader reads from folder `p` (image_listing), each with its path inside `p`."""
    listing = image_listing(p)
    return [(f.relative_to(p).as_posix(), f) for f, _label in listing.train + (listing.evaluation or [])]


def _skipped(name: str) -> bool:
    return name.startswith(".") or name in SKIPPED_FOLDERS


def _class_images(split: Path, names: list[str]) -> list[tuple[Path, int]]:
    import os

    def walk(folder):
        for root, dirs, files in os.walk(folder):
            dirs[:] = [d for d in dirs if not _skipped(d)]
            yield root, files

    found = []
    for label, name in enumerate(names):
        for root, files in sorted(walk(split / name), key=lambda walked: walked[0]):
            found += [
                (Path(root) / f, label) for f in sorted(files) if f.lower().endswith(IMAGE_SUFFIXES) and not _skipped(f)
            ]
    return found


def _shuffled(files: list[tuple[Path, int]], seed: int) -> list[tuple[Path, int]]:
    """`files` in keras' shuffled order for `seed` (one RandomState permutation), so that a folder is
    split and read as image_dataset_from_directory read it."""
    import numpy as np

    order = list(range(len(files)))
    np.random.RandomState(seed).shuffle(order)
    return [files[i] for i in order]


def _image_dataset(files, label_mode: str, num_classes: int, shape, batch_size: int, shuffle_seed: int | None):
    """Batches of (image, label) for `files`, each image decoded with the model's channel count and
    resized to its input (bilinear), as keras' image folders read them; shuffled through a buffer of
    8 batches when seeded. Labels: float (n, 1) for "binary", one-hot for "categorical", else int32."""
    import tensorflow as tf

    height, width, channels = int(shape[1]), int(shape[2]), int(shape[3])
    paths = tf.data.Dataset.from_tensor_slices([str(f) for f, _label in files])
    labels = tf.data.Dataset.from_tensor_slices(tf.constant([label for _f, label in files], tf.int32))
    if label_mode == "binary":
        labels = labels.map(lambda y: tf.expand_dims(tf.cast(y, tf.float32), -1))
    elif label_mode == "categorical":
        labels = labels.map(lambda y: tf.one_hot(y, num_classes))
    ds = tf.data.Dataset.zip((paths, labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(buffer_size=batch_size * 8, seed=shuffle_seed)

    def load(path, y):
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        image = tf.image.resize(image, (height, width), method="bilinear")
        image.set_shape((height, width, channels))
        return image, y

    return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _class_folders(p: Path) -> list[str]:
    """The sub-folders that are classes: a hidden one (`.ipynb_checkpoints`) or a zip's `__MACOSX` is none."""
    return sorted(d.name for d in p.iterdir() if d.is_dir() and not _skipped(d.name))


def _image_layout(p: Path):
    """(train folder, evaluation folder or None) for DIR/<class>/ or DIR/train/<class>/ + DIR/test/<class>/.
    A hidden folder beside train/ and test/ (`.ipynb_checkpoints`) made DIR read as two classes named
    train and test."""
    subdirs = set(_class_folders(p))
    if "train" in subdirs and subdirs <= {"train", *IMAGE_SPLITS}:
        held = next((p / name for name in IMAGE_SPLITS if name in subdirs), None)
        return p / "train", held
    return p, None


def _wants_one_hot(model) -> bool:
    loss = getattr(model, "loss", None)
    name = loss if isinstance(loss, str) else type(loss).__name__
    return str(name).lower().replace("_", "") in ("categoricalcrossentropy", "categoricalfocalcrossentropy")
