"""Image folders: one sub-folder per class (`DIR/cat/*.png`), or `DIR/train/<class>/` with
`DIR/test/<class>/` (or `val/`); streamed from disk and resized to the model's input."""

from __future__ import annotations

from pathlib import Path

from prunecli.errors import DataError
from prunecli.io.data.batches import Data, first_labels
from prunecli.io.data.checks import model_input_shape, output_classes
from prunecli.io.data.spec import find_spec, read_spec, scaled

IMAGE_SPLITS = ("test", "val", "validation")
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png")  # what keras' image_dataset_from_directory reads


def load_images(p: Path, model, batch_size: int, val_split: float, seed: int) -> Data:
    import keras
    import numpy as np

    shape = model_input_shape(model)
    if shape is None or len(shape) != 4 or shape[1] is None or shape[2] is None:
        raise DataError(f"{p}: an image folder needs a model with a fixed image input (height, width, channels)")
    modes = {1: "grayscale", 3: "rgb", 4: "rgba"}
    if shape[3] not in modes:
        raise DataError(f"{p}: the model's input has {shape[3]} channels; image folders give 1, 3 or 4")
    classes = output_classes(model) or 1
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
    check_image_headers([*train.file_paths, *([] if evaluation is train else evaluation.file_paths)])
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


def image_files(p: Path) -> list[tuple[str, Path]]:
    """The images the loader reads from folder `p`, each with its path inside `p` (its class folder is its
    label), by the rules of keras' image_dataset_from_directory (which lists them itself): the class
    folders are the sub-folders not hidden, and in each, at any depth, the files named as images
    (IMAGE_SUFFIXES, in any case); anything else (`.DS_Store`, notes, `labels.csv`) is not read."""
    import os

    found = []
    for split in filter(None, _image_layout(p)):
        for label in _class_folders(split):
            for root, _dirs, files in sorted(os.walk(split / label), key=lambda walked: walked[0]):
                found += [Path(root) / name for name in sorted(files) if name.lower().endswith(IMAGE_SUFFIXES)]
    return [(f.relative_to(p).as_posix(), f) for f in found]


def _class_folders(p: Path) -> list[str]:
    """The sub-folders keras takes for classes: a hidden one (`.ipynb_checkpoints`) is none."""
    return sorted(d.name for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


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
