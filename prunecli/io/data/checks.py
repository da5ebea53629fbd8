"""What the model expects of its data, and the checks of arrays against it.

Every format runs these before anything trains or scores, so a mismatch is one clear line naming
the file, not a stack trace from inside Keras.
"""

from __future__ import annotations

from prunecli.errors import STREAMED_CHECK, DataError

FINITE_CHECK_ROWS = 4096  # rows per chunk when checking a memory-mapped file for NaN/Inf


def unique_feature_names(names: list[str], where: str) -> list[str]:
    """Feature names, each given once: with a name twice, `--exclude-features a` kept one of the two
    and removed the other, and the report's kept feature names said "a" for either (DataError)."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            from prunecli.messages import shown

            raise DataError(
                f"{where}: feature name {shown(name)!r} is given twice (features {seen[name]} and {i}):"
                " each feature needs its own name"
            )
        seen[name] = i
    return names


def model_input_shape(model):
    """The single input's shape (batch first); None with several inputs, which multi_io checks by name."""
    shapes = [tuple(t.shape) for t in model.inputs] if getattr(model, "inputs", None) else []
    return shapes[0] if len(shapes) == 1 else None


def output_classes(model, output: int = 0) -> int | None:
    """An output's width (a classifier's class count; the first output's unless told), or None when
    the model leaves it open."""
    out = model.outputs[output].shape if getattr(model, "outputs", None) else None
    return None if out is None or out[-1] is None else int(out[-1])


def distinct_names(names: list[str]) -> list[str]:
    """Names made distinct in order: a name met again gets _1, _2, ... (one not taken). Keras 3 names an
    output by its layer, so a layer called at several steps (a decoder unrolled over 21 steps) gives 21
    outputs of one name, and the labels of y_NAME were read for every one of them."""
    taken, seen, out = set(names), set(), []
    for name in names:
        new, k = name, 0
        while new in seen or (k and new in taken):  # NAME_k: not one given, nor one made before
            k += 1
            new = f"{name}_{k}"
        seen.add(new)
        out.append(new)
    return out


def io_names(model) -> tuple[list[str], list[str]]:
    """The model's input names (its Input layers) and output names, in order; outputs of one name (one
    layer called several times) as NAME, NAME_1, NAME_2 ..."""
    inputs = [str(t.name) for t in getattr(model, "inputs", None) or []]
    outputs = distinct_names([str(n) for n in getattr(model, "output_names", None) or []])
    return inputs, outputs


def loss_name(model, output: int | None = None) -> str:
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


def is_multi_io(model) -> bool:
    """Several inputs or outputs: their arrays can only come keyed by name, from one .npz."""
    inputs, outputs = io_names(model)
    return len(inputs) > 1 or len(outputs) > 1


def check_inputs(model, per_example: tuple, path) -> None:
    """The per-example input shape must match the model's input shape (None matches anything)."""
    expected = model_input_shape(model)
    if expected is None:
        return
    got, want = tuple(per_example), tuple(expected[1:])
    if not (len(got) == len(want) and all(w is None or w == g for w, g in zip(want, got, strict=True))):
        raise DataError(f"{path}: inputs have shape {got} per example but the model expects {want}")


def output_shape(model, output: int = 0) -> tuple | None:
    """An output's shape per example ((classes,), or (positions, classes) for a per-position output),
    None where the model leaves a dimension open."""
    out = model.outputs[output].shape if getattr(model, "outputs", None) else None
    return None if out is None else tuple(out[1:])


def per_position_classes(model, y, output: int = 0) -> bool:
    """Labels that give one class number per position of a per-position output: y (N, L) for an
    output (N, L, C), as sequence taggers and per-frame models are trained."""
    shape = output_shape(model, output)
    return (
        shape is not None
        and len(shape) >= 2
        and y.ndim == len(shape)
        and all(a is None or a == b for a, b in zip(shape[:-1], y.shape[1:], strict=True))
    )


def check_labels(model, y, path, output: int | None = None) -> None:
    """Labels must fit the model's output (number `output` of several, named in the messages): as many
    columns, class numbers in range (one per example, or one per position of a per-position output);
    anything else is refused naming both shapes."""
    index = output or 0
    classes = output_classes(model, index)
    if classes is None or len(y) == 0:
        return
    positions = per_position_classes(model, y, index)
    which = "" if output is None else f" of output {io_names(model)[1][output]!r}"
    if y.ndim >= 2 and y.shape[-1] not in (1, classes) and not positions:
        raise DataError(
            f"{path}: labels{which} of shape {tuple(y.shape[1:])} per example do not fit the model's output "
            f"{output_shape(model, index)}: give one class number per "
            f"{'example' if y.ndim == 2 else 'position ' + str(tuple(y.shape[1:-1]))} or rows of {classes}"
        )
    class_numbers = (positions or y.ndim == 1 or (y.ndim == 2 and y.shape[-1] == 1 and classes > 1)) and classes > 1
    if not class_numbers and y.dtype.kind in "iuf":
        binary = binary_targets(model, output)
        low, high = value_range(y) if binary else (0, 0)
        if low < 0 or high > 1:
            raise DataError(f"{path}: labels{which} range {low:g}..{high:g} but the model's {binary} takes labels 0..1")
    if class_numbers and y.dtype.kind in "iuf":
        import numpy as np

        flat = np.asarray(y).reshape(-1)
        if y.dtype.kind == "f":
            if not np.isfinite(flat).all():
                raise DataError(f"{path}: labels contain NaN or Inf")
            if not (flat == np.round(flat)).all():
                raise DataError(
                    f"{path}: class labels{which} must be whole numbers 0..{classes - 1},"
                    f" got {flat[flat != np.round(flat)][0]:g}"
                )
        if flat.min() < 0 or flat.max() >= classes:
            raise DataError(
                f"{path}: labels{which} range {flat.min():g}..{flat.max():g} but the model has {classes} classes"
            )


def value_range(a) -> tuple[float, float]:
    """(min, max) of a non-empty array, a chunk of rows at a time (a memory-mapped file is never read
    into memory at once); NaN is ignored (check_finite refuses it)."""
    import numpy as np

    low, high = np.inf, -np.inf
    for start in range(0, len(a), FINITE_CHECK_ROWS):
        chunk = np.asarray(a[start : start + FINITE_CHECK_ROWS])
        if chunk.size:
            with np.errstate(all="ignore"):
                low, high = min(low, float(np.nanmin(chunk))), max(high, float(np.nanmax(chunk)))
    return low, high


def embedding_inputs(model) -> dict[str, tuple[str, int]]:
    """{input name: (Embedding name, its input_dim)} for each model input that an Embedding reads
    directly (through its Input layer only, or as the first layer of a nested model); the smallest
    input_dim where several read one input. Empty for a model without a layer graph. Also what
    outputs/export.float_id_inputs keeps out of int8 (a float input read as token ids: int32 instead)."""
    import keras

    from prunecli.structure import keras_graph

    try:
        graph_inputs = keras_graph.inputs(model)
        nodes = keras_graph.nodes(model)
    except (keras_graph.GraphUnsupported, AttributeError, TypeError):  # subclassed, unbuilt, tf_keras
        return {}
    position = {id(t): i for i, t in enumerate(graph_inputs)}
    found: dict[int, tuple[str, int]] = {}

    def note(i: int, name: str, dim) -> None:
        if isinstance(dim, int) and dim > 0 and (i not in found or dim < found[i][1]):
            found[i] = (name, dim)

    for node in nodes:
        operation, fed = node.operation, list(node.input_tensors)
        if isinstance(operation, keras.layers.Embedding):
            for t in fed:
                if id(t) in position:
                    note(position[id(t)], operation.name, getattr(operation, "input_dim", None))
        elif keras_graph.is_model(operation) and any(id(t) in position for t in fed):
            inner = embedding_inputs(operation)
            inner_names = [str(t.name) for t in getattr(operation, "inputs", None) or []]
            if inner and len(inner_names) == len(fed):
                for t, inner_name in zip(fed, inner_names, strict=True):
                    if id(t) in position and inner_name in inner:
                        note(position[id(t)], *inner[inner_name])
    return {str(graph_inputs[i].name): found[i] for i in sorted(found)}


def check_token_ids(model, x, path, name: str | None = None) -> None:
    """An input that feeds an Embedding holds token ids: whole numbers in 0..input_dim - 1. Keras would
    fail mid-run on an id past the table (a Graph execution error on CPU; zeros on GPU), and casts a
    float such as 2.7 to row 2 without a word, so both are refused here, naming the input, the ids
    found and the Embedding. `name` is the input's name (the only input's when None)."""
    import numpy as np

    feeding = embedding_inputs(model)
    if name is None:
        inputs = io_names(model)[0]
        name = inputs[0] if len(inputs) == 1 else None
    if name not in feeding or len(x) == 0 or x.dtype.kind not in "fiub":
        return
    layer, dim = feeding[name]
    if x.dtype.kind == "f":
        for start in range(0, len(x), FINITE_CHECK_ROWS):
            chunk = np.asarray(x[start : start + FINITE_CHECK_ROWS])
            odd = np.isfinite(chunk) & (chunk != np.round(chunk))
            if odd.any():
                raise DataError(
                    f"{path}: input {name!r} feeds Embedding {layer!r}, which reads whole-number token ids"
                    f" 0..{dim - 1}, but holds {chunk[odd][0]:g}"
                )
    low, high = value_range(x)
    if low < 0 or high >= dim:
        raise DataError(
            f"{path}: input {name!r} holds ids {low:g}..{high:g} but Embedding {layer!r} reads ids"
            f" 0..{dim - 1} (input_dim {dim})"
        )


def streamed_checks(model, path):
    """A map over a streamed dataset's batches, (x, y) -> (x, y), that checks every batch as the checks
    above check every row of data held in memory: finite inputs and labels, token ids fed to an
    Embedding (whole numbers in range), class numbers below the class count, yes/no labels in 0..1
    (NaN inputs in a TFRecord were read, and reported as a loss, unchecked). TFRecords were checked on their
    first batch only, so a bad id in a later record ended the run as an internal error on CPU, and read
    as zeros on a GPU (Keras' embedding lookup there returns zeros past the table), silently. A failed
    check raises (from inside TensorFlow) an error that `errors.streamed_data_error` turns into the
    DataError. None for a model with several inputs or outputs."""
    import tensorflow as tf

    inputs = io_names(model)[0]
    if len(inputs) != 1 or len(getattr(model, "outputs", None) or ()) != 1:
        return None
    feeding = embedding_inputs(model).get(inputs[0])
    classes, binary = output_classes(model), binary_targets(model)

    def failing(bad, message: str, values):
        return tf.debugging.Assert(
            tf.logical_not(tf.reduce_any(bad)),
            [f"{STREAMED_CHECK}{path}: {message}", tf.boolean_mask(values, bad)[:1]],
            summarize=1,
        )

    def check(x, y):
        asserts = []
        if x.dtype.is_floating:  # as check_finite and check_label_values refuse them in data held in memory
            asserts.append(failing(~tf.math.is_finite(x), "inputs contain NaN or Inf: ", x))
        if y.dtype.is_floating:
            asserts.append(failing(~tf.math.is_finite(y), "labels contain NaN or Inf: ", y))
        if feeding is not None and (x.dtype.is_floating or x.dtype.is_integer):
            layer, dim = feeding
            ids = tf.cast(x, tf.float64)
            bad = (ids < 0) | (ids >= dim) | (ids != tf.round(ids))
            said = f"input {inputs[0]!r} feeds Embedding {layer!r}, which reads whole-number token ids 0..{dim - 1}, but holds "
            asserts.append(failing(bad, said, ids))
        if y.dtype.is_floating or y.dtype.is_integer:
            labels = tf.cast(y, tf.float64)
            numbers = y.shape.rank == 1 or (y.shape.rank == 2 and y.shape[-1] == 1)
            if numbers and classes is not None and classes > 1:
                bad = (labels < 0) | (labels >= classes) | (labels != tf.round(labels))
                said = f"labels must be class numbers 0..{classes - 1} (the model has {classes} classes), got "
                asserts.append(failing(bad, said, labels))
            elif binary:
                asserts.append(
                    failing((labels < 0) | (labels > 1), f"the model's {binary} takes labels 0..1, got ", labels)
                )
        if not asserts:
            return x, y
        with tf.control_dependencies(asserts):
            return tf.identity(x), tf.identity(y)

    return check


def binary_targets(model, output: int | None = None) -> str | None:
    """What makes an output's labels yes/no values in 0..1, in words ("binary cross-entropy loss", or
    "sigmoid output" for an uncompiled model): a binary classifier's one unit, or a multi-label
    output's units (rows of 0/1); None for any other output (a softmax's class numbers, a regression)."""
    from prunecli.structure import keras_graph

    loss = loss_name(model, output)
    if loss:
        return "binary cross-entropy loss" if loss.startswith("binary") else None
    try:
        layer = model.get_layer(keras_graph.producer_name(model.outputs[output or 0]))
    except (ValueError, AttributeError, IndexError):
        return None
    return "sigmoid output" if getattr(getattr(layer, "activation", None), "__name__", "") == "sigmoid" else None


def check_shapes(model, x, y, path, labels_path=None) -> None:
    """Inputs must match the model's input shape (and an Embedding's ids, check_token_ids); labels must
    match the output's batch size and values (check_labels, naming `labels_path` where the labels are a
    file of their own: an .npy pair's y_train.npy, not its x_train.npy)."""
    check_inputs(model, x.shape[1:], path)
    if len(x) != len(y):
        raise DataError(f"{path}: {len(x)} inputs but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{path}: the dataset is empty")
    check_token_ids(model, x, path)
    check_labels(model, y, labels_path or path)


def check_numeric(x, y, path) -> None:
    if x.dtype.kind not in "fiub" or y.dtype.kind not in "fiub":
        raise DataError(f"{path}: x and y must be numeric arrays")
    if x.ndim == 0 or y.ndim == 0:
        which = "x" if x.ndim == 0 else "y"
        raise DataError(f"{path}: {which} is a single number (0-d); it needs one row per example")


FLOAT32_MAX = 3.4028234663852886e38


def as_float32(x, path):
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


def check_label_values(y, path) -> None:
    import numpy as np

    if y.dtype.kind == "f" and len(y):
        for start in range(0, len(y), FINITE_CHECK_ROWS):
            if not np.isfinite(y[start : start + FINITE_CHECK_ROWS]).all():
                raise DataError(f"{path}: labels contain NaN or Inf")


def check_finite(x, path) -> None:
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


def refuse_unread(arrays: dict, read: set[str], path, names: str) -> None:
    """An array the run would not read is refused, by name, as token data's are (io/data/tokens.py): an
    `x_valid` meant as a validation set, or a test set beside `x_train` under another name, would
    otherwise be ignored while the report reads as if it were used."""
    unread = sorted(set(arrays) - read)
    if unread:
        shown = ", ".join(unread[:4]) + (" ..." if len(unread) > 4 else "")
        raise DataError(
            f"{path}: {shown} not read (prunecli reads {names}, and feature_names); rename or remove"
            f" {'it' if len(unread) == 1 else 'them'}"
        )
