"""Deployment copies of the pruned model: TFLite (float or full-integer int8) and a TF SavedModel.

Every format is converted from one SavedModel written by Keras 3's `model.export` (the path
`TFLiteConverter.from_keras_model` itself takes for Keras 3 models, minus its printout on stdout).
Files land next to the output model: `<stem>.tflite`, `<stem>.int8.tflite`, `<stem>_savedmodel/`,
each written under a temporary name in the same directory and renamed into place.

Pruned weights are zeros, which a flat TFLite buffer still stores. The converter's
`Optimize.EXPERIMENTAL_SPARSITY` re-encodes sparse constant tensors (TFLite's sparsity format); it
pays off on raw bytes only at high sparsity and can make int8 files larger, so when the model holds
zeros both encodings are converted and the smaller file is kept. The report says which won.

Each TFLite file is checked by running it in the TFLite interpreter on sample inputs (the data's
evaluation batches, or seeded random inputs without --data) against the Keras model's outputs.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import time
import warnings
from pathlib import Path

from prunecli.errors import ExportError, OutputError, ResourceError, first_line, write_error
from prunecli.io.models.write import export_staging_prefix
from prunecli.results import StepResult

SAMPLE_COUNT = 256  # inputs used to compare the exported model with the Keras model
AGREEMENT_NOTED_BELOW = 0.99  # an exported classifier agreeing less with Keras is said in a note, not only in JSON
RELATIVE_ERROR_NOTED_ABOVE = 0.05  # ... and any other output further from Keras' than this (||d|| / ||y||)
MAX_UNROLLED_STEPS = (
    256  # a recurrent layer over more steps keeps its loop (select TF ops): its graph would grow too large
)
CALIBRATION_SAMPLES = 512  # training inputs that calibrate int8 ranges


def run(
    model, out_path: Path, data, config, progress, timings, baseline=None, unquantized=None, task=None
) -> StepResult:
    """Write every format in `config.export` beside the output model; the report's `export` section
    has each file's sizes, how closely its outputs match the Keras model's and, for TFLite, the
    interpreter's latency at batch 1. With `baseline` (the masked model before --shrink), its float
    TFLite conversion is timed too, so the speed-up of shrinking is measured where it is deployed.

    With `unquantized` (the float pruned model that --quantize int8 quantized into `model`), TFLite's
    converter, which cannot read Keras' int8 matmuls, converts the float model instead: `tflite` as
    int8 weights on the grid Keras uses (symmetric, per output channel) with activations quantized at
    run time, as Keras' int8 layers do; `tflite-int8` fully integer. Both are compared with the
    quantized Keras model's outputs; the SavedModel is the quantized model itself. `task` (None without
    labels) says whether agreement on the top class is reported (training.metrics.gives_class_scores)."""
    from prunecli.io.models import dir_sizes, file_sizes, replace_dir, staged
    from prunecli.training.metrics import gives_class_scores

    classes = gives_class_scores(model, task)

    formats = list(dict.fromkeys(config.export))
    from prunecli.io.paths import export_paths

    paths = export_paths(Path(out_path))
    results: dict[str, dict] = {}
    notes: list[str] = []
    with timings.phase("export"), _staging_dir(paths["savedmodel"].parent) as stage:
        saved = stage / "savedmodel"
        samples, sample_source = sample_inputs(model, data, config.seed, SAMPLE_COUNT)
        float_model = unquantized if unquantized is not None else model  # what TFLite converts
        progress("exporting SavedModel")
        fixed_sizes: dict = {}  # every entry says so when the export fixed the open input sizes
        try:
            write_savedmodel(model, saved)
        except ExportError as exc:  # a layer that cannot be traced on open sizes: export at the data's
            if data is None or not open_sizes(model):
                raise
            fixed = _fixed_at_data_sizes(model, samples)
            fixed_float = fixed if unquantized is None else _fixed_at_data_sizes(unquantized, samples)
            if fixed is None or fixed_float is None:
                raise ExportError(
                    f"cannot export the model as a SavedModel: {trace_reason(exc.__cause__)} (on its open input"
                    " sizes; it is not a functional graph whose sizes can be fixed at the data's)"
                ) from exc
            write_savedmodel(fixed, saved)
            model, float_model = fixed, fixed_float
            fixed_sizes = {"input_shapes": [[None, *x.shape[1:]] for x in samples]}
            notes.append(
                f"every export takes inputs of the data's sizes ({_sizes(samples)} per example): Keras could not"
                f" trace the model on its open sizes ({trace_reason(exc.__cause__)})"
            )
        source = saved
        if any(fmt != "savedmodel" for fmt in formats):
            converted = for_tflite(float_model)
            if _unrolled_count(converted) > _unrolled_count(float_model):
                notes.append(
                    f"TFLite: the recurrent layers were converted unrolled over their time steps (at most"
                    f" {MAX_UNROLLED_STEPS}), so the file runs on TFLite's builtin ops and int8 kernels"
                )
            if converted is not model:
                source = stage / "float_savedmodel"
                write_savedmodel(converted, source)
        int8_source = source
        fixed = fixed_length_twin(float_model, samples) if "tflite-int8" in formats and data is not None else None
        ids = float_id_inputs(float_model) if "tflite-int8" in formats else []
        if fixed is not None or ids:  # recurrent layers unrolled over a fixed number of steps; ids as int32
            int8_source = stage / "int8_savedmodel"
            write_savedmodel(for_tflite(fixed) if fixed is not None else converted, int8_source, ids)
        if ids:
            notes.append(
                f"{paths['tflite-int8'].name} takes {_names(ids)} as int32 token ids (the model declares"
                " float32): full-integer int8 would quantize the ids themselves, which then read the wrong rows"
                " (export.tflite-int8.int32_inputs)"
            )
        if fixed is not None:
            notes.append(
                f"{paths['tflite-int8'].name} takes inputs of the data's sizes ({_sizes(samples)}"
                " per example): the model's recurrent layers run over an open number of steps, which full-integer"
                " int8 cannot hold, so it was converted with the data's lengths, unrolled"
            )
        expected = _keras_outputs(model, samples)
        input_names = [str(getattr(t, "name", "")) for t in model.inputs]
        examples = (samples, input_names)  # the open sizes of the checks' one-example feeds
        try_sparse = zero_fraction(float_model) > 0
        for fmt in formats:
            if fmt == "savedmodel":
                continue
            progress(f"converting to {fmt}")
            calibration = calibration_batches(data.train, model, ids) if fmt == "tflite-int8" else None
            int8_weights = unquantized is not None and fmt == "tflite"
            content, encoding = convert_tflite(
                int8_source if fmt == "tflite-int8" else source, calibration, try_sparse, int8_weights, examples
            )
            with _writing(paths[fmt]), _atomic_file(paths[fmt]) as tmp:
                tmp.write_bytes(content)
            entry = {"path": str(paths[fmt]), **file_sizes(staged(paths[fmt]), sha256=True), **encoding}
            if fmt == "tflite-int8" and ids:
                entry["int32_inputs"] = ids
            if "sparse_refused" in encoding:
                notes.append(
                    f"{paths[fmt].name}: dense encoding kept; the sparse one ({encoding['sparse_encoding_bytes']:,} "
                    f"bytes) is not used: {encoding['sparse_refused']} (export.*.sparse_refused)"
                )
            if encoding["ops"] != BUILTIN_OPS:  # the interpreter here has no Flex delegate to run it
                notes.append(
                    f"{paths[fmt].name} uses select TensorFlow ops: it runs where the TFLite Flex delegate is "
                    "linked; its outputs and latency were not checked here"
                )
                results[fmt] = entry
                continue
            # the sparse encoding is kept only where the default interpreter ran it (convert_tflite)
            refused = None if encoding["encoding"] == "sparse" else _default_interpreter_refuses(content, examples)
            if refused:  # FCD's ChemNet, astrorapid's tagger (int8): XNNPack's "failed to prepare", exit 1
                entry["xnnpack_refused"] = refused
                notes.append(
                    f"{paths[fmt].name}: TFLite's default XNNPack delegate cannot run it ({refused}); it runs, and "
                    "was checked, with the delegate off (OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)"
                )
            delegate = refused is None
            entry.update(compare_tflite(content, samples, expected, input_names, delegate), sample_source=sample_source)
            if not classes:
                entry.pop("top1_agreement", None)
            agreement, relative = entry.get("top1_agreement"), entry.get("relative_error")
            if agreement is not None and agreement < AGREEMENT_NOTED_BELOW:
                notes.append(
                    f"{paths[fmt].name} agrees with the Keras model on the top class of {agreement:.1%} of"
                    f" {entry['samples']} {sample_source} examples (report export.{fmt})"
                )
            elif agreement is None and relative is not None and relative > RELATIVE_ERROR_NOTED_ABOVE:
                notes.append(
                    f"{paths[fmt].name} differs from the Keras model by a relative error of {relative:.3g} on"
                    f" {entry['samples']} {sample_source} examples (report export.{fmt})"
                )
            entry["latency_ms_batch_1"] = tflite_latency_ms(content, samples, input_names, delegate=delegate)
            if fmt == "tflite" and baseline is not None:
                progress("timing the unshrunk model in TFLite")
                reference = stage / "baseline_savedmodel"
                write_savedmodel(for_tflite(baseline), reference)
                baseline_content, _ = convert_tflite(reference, None, try_sparse=False)
                entry["baseline_latency_ms_batch_1"] = tflite_latency_ms(baseline_content, samples, input_names)
            results[fmt] = entry
        if "savedmodel" in formats:
            check = _compare_savedmodel(saved, samples, expected, input_names)
            if not classes:
                check.pop("top1_agreement", None)
            with _writing(paths["savedmodel"]):
                replace_dir(saved, paths["savedmodel"])
            results["savedmodel"] = {
                "path": str(paths["savedmodel"]),
                **dir_sizes(staged(paths["savedmodel"]), sha256=True),  # its sha256: what `prunecli verify` checks
                **check,
                "sample_source": sample_source,
            }
    return StepResult(
        sections={"export": {fmt: {**results[fmt], **fixed_sizes} for fmt in formats}}, notes=tuple(notes)
    )


def fixed_length_twin(model, samples):
    """`model` with its open input sizes fixed at the sample inputs' (from --data), when a recurrent layer
    runs over an open number of steps; None otherwise. Full-integer int8 TFLite cannot hold a recurrent
    loop, and only a fixed length unrolls (flavorfetcher's context LSTM: its int8 export was refused)."""
    from prunecli.structure import keras_graph, layers

    looped = any(
        layers.spec(node.operation).role == "recurrent"
        and node.input_tensors
        and node.input_tensors[0].shape[1] is None
        for node in keras_graph.nodes(model)
    )
    return _fixed_at_data_sizes(model, samples) if looped else None


def _fixed_at_data_sizes(model, samples):
    """A twin of `model` whose open input sizes are the sample inputs' (from --data); None when it has
    none open or is not a functional graph that can be rebuilt (structure/rebuild)."""
    from prunecli.structure import keras_graph, rebuild

    shapes = {
        i: (None, *sample.shape[1:])
        for i, (x, sample) in enumerate(zip(model.inputs, samples, strict=False))
        if None in tuple(x.shape)[1:]
    }
    if not shapes or keras_graph.functional(model) is None:
        return None
    return rebuild.rebuild(model, input_shapes=shapes)


def at_data_sizes(model, data, seed: int):
    """`model` with its open input sizes fixed at an example's of `data` (sharing its layers), for what is
    counted per example at real sizes (--target flops= on a fully convolutional detector, whose
    multiply-adds an open image size leaves uncounted); None without data or open sizes."""
    if data is None or not open_sizes(model):
        return None
    samples, _source = sample_inputs(model, data, seed, 1)
    return _fixed_at_data_sizes(model, samples)


def open_sizes(model) -> list[tuple]:
    """The model's input shapes with an open size past the batch."""
    return [tuple(x.shape) for x in getattr(model, "inputs", None) or [] if None in tuple(x.shape)[1:]]


def _names(names: list[str]) -> str:
    return f"input{'s' if len(names) > 1 else ''} {', '.join(repr(n) for n in names)}"


def _sizes(samples) -> str:
    return ", ".join(str(tuple(x.shape[1:])) for x in samples)


def for_tflite(model):
    """The model TFLite's converter is given: `model`, or its twin with the recurrent layers unrolled
    where their length is fixed and at most MAX_UNROLLED_STEPS (structure/rebuild.unrolled: builtin
    ops and int8 kernels instead of select-TF TensorList ops), and with the sizes Keras knows restored
    after each call whose TensorFlow trace loses them (structure/rebuild.static_shaped: a convolution
    after Keras' rot90 was left as select-TF tf.Conv2D, and int8 refused)."""
    from prunecli.structure import rebuild

    twin = rebuild.unrolled(model, MAX_UNROLLED_STEPS) or model
    return rebuild.static_shaped(twin) or twin


def _unrolled_count(model) -> int:
    """How many of the model's recurrent layers (Bidirectional's halves included) run unrolled."""
    import keras

    from prunecli.structure import keras_graph

    return sum(isinstance(lay, keras.layers.RNN) and lay.unroll for lay in keras_graph.all_layers(model))


# ---------------------------------------------------------------- writing


@contextlib.contextmanager
def _staging_dir(parent: Path):
    """A scratch directory beside the outputs, so a finished SavedModel can be renamed into place."""
    try:
        stage = Path(tempfile.mkdtemp(prefix=export_staging_prefix(), dir=parent))
    except OSError as exc:
        raise OutputError(f"cannot write exports in {parent}: {exc.strerror or exc}") from exc
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@contextlib.contextmanager
def _writing(target: Path):
    try:
        yield
    except OSError as exc:
        raise write_error(target, exc) from exc


@contextlib.contextmanager
def _atomic_file(target: Path):
    """model_io.atomic_path, with the permissions a plain new file would get (mkstemp makes it 0600)."""
    from prunecli.io.models import atomic_path

    if target.is_dir():
        raise OutputError(f"export target {target} is a directory")
    umask = os.umask(0)
    os.umask(umask)
    with atomic_path(target) as tmp:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)


def write_savedmodel(model, path: Path, int32_inputs=()) -> None:
    """Keras 3's own SavedModel export: a `serving_default` signature over the model's inputs. A
    TimeDistributed over an open number of steps is traced with its steps folded into the batch
    (structure/rebuild.steps_as_batch: Keras' own maps it over the batch size). The inputs named in
    `int32_inputs` (float token ids, float_id_inputs) are int32 in the signature; Keras casts them to
    the declared float as the model is called."""
    from prunecli.structure import rebuild

    traced = rebuild.steps_as_batch(model) or model
    options = {"input_signature": _signature(traced, set(int32_inputs))} if int32_inputs else {}
    try:
        with _quiet():
            traced.export(str(path), format="tf_saved_model", verbose=False, **options)
    except OSError as exc:
        raise write_error(path, exc) from exc
    except Exception as exc:  # Keras/TF raise ValueError/TypeError for models that cannot be traced
        full = next((reason for reason in DISK_FULL_REASONS if reason in str(exc)), None)
        if full:  # TensorFlow's own file writer: a full disk or a file-size limit, not an export failure
            raise ResourceError(f"not enough disk space to export the model ({full})") from exc
        raise ExportError(f"cannot export the model as a SavedModel: {traced_failure(exc, model)}") from exc


def _signature(model, int32_inputs: set) -> list:
    """Keras' own export signature (the inputs' structure, shapes, dtypes and names), with the inputs
    named in `int32_inputs` as int32."""
    import tensorflow as tf
    from keras import tree

    from prunecli.structure import keras_graph

    def spec(t):
        name = str(t.name)
        return tf.TensorSpec(tuple(t.shape), "int32" if name in int32_inputs else str(t.dtype), name=name)

    return [tree.map_structure(spec, keras_graph.input_structure(keras_graph.functional(model)))]


def float_id_inputs(model) -> list[str]:
    """The float inputs an Embedding reads (token ids, as Keras-2 text models declare them): full-integer
    int8 would quantize the ids themselves, which then read the wrong rows (oskut's segmenter: 78.5%
    agreement, once written with exit 0), so its file takes them as int32 (an int32 input is not
    quantized), the rest of the model int8. Empty for a model without a layer graph."""
    from prunecli.io.data.checks import embedding_inputs
    from prunecli.structure import keras_graph

    if keras_graph.functional(model) is None:
        return []
    dtypes = {str(t.name): str(t.dtype) for t in keras_graph.inputs(model)}
    return [name for name in embedding_inputs(model) if "float" in dtypes.get(name, "")]


def traced_failure(exc: BaseException, model) -> str:
    """Why Keras could not trace the model, in one line, and the model's open input sizes when it has
    some, the likely cause (a run with --data exports at the data's sizes instead: `run`)."""
    said = trace_reason(exc)
    opened = open_sizes(model)
    if opened:
        said += (
            f" (its input{'s' if len(opened) > 1 else ''} {', '.join(map(str, opened))} has open sizes:"
            " with --data it is exported at the data's sizes)"
        )
    return said


def trace_reason(exc: BaseException | None) -> str:
    """Keras' "Exception encountered when calling UpSampling2D.call()." with the reason from its next
    line, which the first line alone dropped (the zoo's HED: a bilinear UpSampling2D cannot be traced
    on open image sizes)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).splitlines()]
    lines = [line for line in lines if line]
    said = lines[0] if lines else type(exc).__name__
    if said.startswith("Exception encountered when calling") and len(lines) > 1:
        reason = lines[1].split(". ")[0].rstrip(".")  # its first sentence; Keras' advice follows
        said = f"{said.removeprefix('Exception encountered when calling ').rstrip('.')}: {reason}"
    return said[:300]


# what TensorFlow's file writer says (in its own error types, not OSError) when the disk, a quota or a
# file-size limit is full
DISK_FULL_REASONS = ("No space left on device", "File too large", "Disk quota exceeded")


@contextlib.contextmanager
def _quiet():
    """Keep converter chatter out of the CLI's output and JSON: Python warnings and prints, and the
    lines TFLite's C++ code writes straight to file descriptors 1 and 2. PRUNECLI_DEBUG=1 shows them."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _native_output_silenced():
        warnings.simplefilter("ignore")
        yield


@contextlib.contextmanager
def _native_output_silenced():
    import sys

    if os.environ.get("PRUNECLI_DEBUG", "") not in ("", "0"):
        yield
        return
    for stream in (sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


# ---------------------------------------------------------------- conversion


def convert_tflite(
    saved: Path, calibration=None, try_sparse: bool = True, int8_weights: bool = False, examples=None
) -> tuple[bytes, dict]:
    """TFLite flatbuffer from a SavedModel: float; full-integer int8 when `calibration` is given; int8
    weights with float activations (TFLite's dynamic-range quantization) with `int8_weights`.

    With `try_sparse`, the sparse encoding is converted too and the smaller flatbuffer is returned, if
    the interpreter with its default delegate (XNNPack) runs it: TFLite 2.21's XNNPack refuses a sparse
    int8-weight FULLY_CONNECTED, and a file that only runs with the delegate off is no deployment.
    An int8 file's weight tensors are counted (`int8_weights`): values, zeros, and how many channels
    have a zero point other than 0 (none, for TFLite's symmetric weight grid: a pruned 0 stays 0).
    `examples` (input arrays, the model's input names): where the checks' one-example feeds take their
    open sizes (_example_feed).
    """
    dense, ops = to_tflite(saved, calibration, sparse=False, int8_weights=int8_weights)
    encoding = {"encoding": "dense", "dense_encoding_bytes": len(dense), "sparse_encoding_bytes": None, "ops": ops}
    if calibration is not None or int8_weights:
        encoding["int8_weights"] = int8_weight_counts(dense, examples)
    if not try_sparse:
        return dense, encoding
    sparse, _ops = to_tflite(saved, calibration, sparse=True, int8_weights=int8_weights)
    encoding["sparse_encoding_bytes"] = len(sparse)
    if len(sparse) < len(dense):
        refused = _default_interpreter_refuses(sparse, examples) if ops == BUILTIN_OPS else None
        if refused is not None:
            refused = f"it does not run in TFLite's default XNNPack delegate ({refused})"
        elif ops == BUILTIN_OPS:
            refused = _encodings_disagree(dense, sparse, examples)
        if refused is None:
            encoding["encoding"] = "sparse"
            return sparse, encoding
        encoding["sparse_refused"] = refused
    return dense, encoding


SPARSE_AGREES_WITHIN = 1e-4  # relative error of the sparse encoding's outputs against the dense one's
EXAMPLES_COMPARED = 4  # seeded examples both encodings run, one call each


def _encodings_disagree(dense: bytes, sparse: bytes, examples=None) -> str | None:
    """Why the sparse encoding cannot stand in for the dense one: it computes other outputs on the same
    seeded examples (TFLite 2.21 with its default XNNPack delegate: a 6-32-16 MLP at 50% sparsity gave a
    relative error of 0.60, the dense file 1e-7); None when they agree. Integer outputs may differ by one
    step of their grid (the kernels round differently)."""
    import numpy as np

    rng = np.random.default_rng(0)
    try:
        with _quiet():
            runners = [_interpreter(content).get_signature_runner() for content in (dense, sparse)]
            feeds = [_example_feed(runners[0], rng, examples) for _ in range(EXAMPLES_COMPARED)]
            outputs = [
                {key: np.stack([runner(**feed)[key] for feed in feeds]) for key in runner.get_output_details()}
                for runner in runners
            ]
    except (RuntimeError, ValueError) as exc:
        return f"the sparse encoding could not be checked against the dense one ({first_line(exc)})"
    for key, want in outputs[0].items():
        want, got = np.asarray(want, np.float64), np.asarray(outputs[1][key], np.float64)
        if np.issubdtype(outputs[0][key].dtype, np.integer):
            if np.max(np.abs(want - got), initial=0.0) > 1:
                return "the sparse encoding computes other outputs than the dense one (integer outputs differ)"
            continue
        norm = float(np.linalg.norm(want))
        error = float(np.linalg.norm(want - got)) / (norm if norm > 0 else 1.0)
        if not error <= SPARSE_AGREES_WITHIN:
            return f"the sparse encoding computes other outputs than the dense one (relative error {error:.3g})"
    return None


def _example_feed(runner, rng=None, examples=None) -> dict:
    """One example for each input of a TFLite signature: zeros, or with `rng` seeded normal values in the
    float inputs (integer ones, token ids or int8 codes, stay 0). An open size past the batch is the
    examples' (`examples`: the check's input arrays and the model's input names), else 1: MTCNN's fully
    convolutional PNet (bench/ZOO.md) fed 1 x 1 images left its valid convolutions no pixels, and the
    interpreter killed the process (signal 11) or refused to allocate (an internal error)."""
    import numpy as np

    details = runner.get_input_details()
    matched = _matched_inputs(list(details), examples[1], examples[0]) if examples is not None else None
    feed = {}
    for name, detail in details.items():
        known = (None, *matched[name].shape[1:]) if matched else (None,) * len(detail["shape_signature"])
        shape = [d if d > 0 else (known[i] or 1) for i, d in enumerate(detail["shape_signature"])]
        floating = rng is not None and np.issubdtype(detail["dtype"], np.floating)
        feed[name] = rng.normal(size=shape).astype(detail["dtype"]) if floating else np.zeros(shape, detail["dtype"])
    return feed


def _default_interpreter_refuses(content: bytes, examples=None) -> str | None:
    """Why TFLite's interpreter, as a runtime builds it by default (XNNPack on), cannot run this
    flatbuffer on one all-zero example (of the `examples`' sizes, _example_feed); None when it can. (The
    delegate prepares its nodes at the first call after a resize, so only a call tells.)"""

    try:
        with _quiet():
            runner = _interpreter(content).get_signature_runner()
            runner(**_example_feed(runner, examples=examples))
    except (RuntimeError, ValueError) as exc:  # TFLite runs its messages together: "node #2failed to ..."
        said = re.sub(r"(#\d+)(?=[A-Z]|failed)", r"\1; ", first_line(exc))
        return re.sub(r"(failed to create XNNPACK runtime)+(?=\S)", r"\1; ", said)  # said twice, run together
    return None


# where each TFLite op that multiplies by weights takes them (its input positions)
WEIGHT_INPUTS = {
    "FULLY_CONNECTED": (1,),
    "CONV_2D": (1,),
    "CONV_3D": (1,),
    "DEPTHWISE_CONV_2D": (1,),
    "TRANSPOSE_CONV": (1,),
    "CONV_3D_TRANSPOSE": (1,),
    "BATCH_MATMUL": (0, 1),
    "GATHER": (0,),
    "EMBEDDING_LOOKUP": (1,),
}


def int8_weight_counts(content: bytes, examples=None) -> dict[str, int]:
    """Constant int8 tensors of a flatbuffer that ops multiply by (the quantized weights): how many values,
    how many are 0, and how many per-channel zero points are not 0 (a non-zero one would move a pruned
    weight). Other int8 constants are not weights: a full-integer file stores an LSTM's bias, added by
    an ADD, on an asymmetric grid (a zero point of -127 that moved no weight was counted). The tensors
    are allocated for an example of the `examples`' sizes (_example_feed): at the flatbuffer's default
    sizes an open image size is 1, too small for a valid convolution."""
    import numpy as np

    with _quiet():
        interpreter = _interpreter(content, delegate=False)
        runner = interpreter.get_signature_runner()
        sizes = {
            runner.get_input_details()[name]["index"]: a.shape
            for name, a in _example_feed(runner, None, examples).items()
        }
        del runner  # it holds the interpreter's tensors, which a resize may not move
        for index, shape in sizes.items():
            interpreter.resize_tensor_input(index, shape)
        interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()  # TFLite's Python API names no constant tensors: derive them
    produced = {i for op in ops for i in op["outputs"]} | {d["index"] for d in interpreter.get_input_details()}
    weights = {
        op["inputs"][at]
        for op in ops
        for at in WEIGHT_INPUTS.get(op["op_name"], ())
        if at < len(op["inputs"]) and op["inputs"][at] >= 0
    } - produced
    values = zeros = moved = 0
    for detail in interpreter.get_tensor_details():
        if detail["index"] not in weights or detail["dtype"] != np.int8:
            continue
        tensor = interpreter.get_tensor(detail["index"])
        values += int(tensor.size)
        zeros += int(np.count_nonzero(tensor == 0))
        moved += int(np.count_nonzero(detail["quantization_parameters"]["zero_points"]))
    return {"values": values, "zeros": zeros, "nonzero_zero_points": moved}


def _unsupported_ops(message: str) -> list[str]:
    """The TensorFlow ops a converter error names (tf.TensorListReserve, ...), each once."""
    return list(dict.fromkeys(re.findall(r"\btf\.[A-Z][A-Za-z0-9_]+", message)))


def _failed_lowering(message: str) -> str | None:
    """'op BatchMatMulV3 (int8_1/hidden_1/MatMul) cannot become tfl.fully_connected: operand #0 must be ...'
    from an MLIR error whose first line is a location dump (Keras' int8 layers), or None."""
    lowered = re.search(r"'(tfl\.\w+)' op ([^\n]+)", message)
    where = re.search(r'fused\["(\w+):", "([^"@]+)', message)
    if not lowered or not where:
        return None
    return f"op {where.group(1)} ({where.group(2)}) cannot become {lowered.group(1)}: {lowered.group(2)}"


BUILTIN_OPS = "builtins"  # the report's `ops` of a TFLite file any interpreter runs
SELECT_OPS = "builtins+select-tf"  # ... of one that needs the Flex delegate


def to_tflite(saved: Path, calibration, sparse: bool, int8_weights: bool = False) -> tuple[bytes, str]:
    """One conversion; `sparse` adds the converter's EXPERIMENTAL_SPARSITY encoding of constant tensors.

    A float model with ops TFLite's builtins lack (an LSTM's TensorList ops, ...) is converted again
    with select TensorFlow ops, which a TFLite runtime runs through its Flex delegate (TensorFlow 2.21's
    own interpreter does not link it: such a file is written, not checked); int8 has no such fallback. What still fails is an
    ExportError (exit 7) naming the ops. Returns the flatbuffer and which ops it uses."""
    try:
        return _convert(saved, calibration, sparse, False, int8_weights), BUILTIN_OPS
    except ExportError as exc:
        if calibration is not None:
            if "tf.TensorList" in str(exc):  # a recurrent loop kept: an open length, or past MAX_UNROLLED_STEPS
                raise ExportError(
                    f"{exc} (a recurrent layer over an open number of steps, or more than {MAX_UNROLLED_STEPS},"
                    " keeps its loop, which full-integer int8 cannot hold: save the model with a fixed sequence"
                    " length to unroll it, or --export tflite writes it with select TensorFlow ops)"
                ) from exc
            raise
        return _convert(saved, calibration, sparse, True, int8_weights), SELECT_OPS


def _convert(saved: Path, calibration, sparse: bool, select_tf_ops: bool, int8_weights: bool = False) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if select_tf_ops:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
        converter._experimental_lower_tensor_list_ops = False  # keep TensorList ops whole, for the Flex delegate
    optimizations = []
    if calibration is not None:
        # full-integer post-training quantisation: int8 weights, activations, inputs and outputs
        optimizations.append(tf.lite.Optimize.DEFAULT)
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    elif int8_weights:  # dynamic range: int8 weights (symmetric, per output channel), float activations
        optimizations.append(tf.lite.Optimize.DEFAULT)
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    converter.optimizations = optimizations
    kind = "int8 TFLite" if calibration is not None else "int8-weight TFLite" if int8_weights else "TFLite"
    try:
        with _quiet():
            return converter.convert()
    except Exception as exc:  # the converter raises ConverterError/ValueError with long MLIR dumps
        ops = _unsupported_ops(str(exc))
        what = f"unsupported op(s) {', '.join(ops[:6])}" if ops else _failed_lowering(str(exc)) or first_line(exc)
        tried = " (also with select TensorFlow ops)" if select_tf_ops else ""
        raise ExportError(f"cannot convert the model to {kind}{tried}: {what}") from exc


def calibration_batches(dataset, model, int32_inputs=()):
    """A representative-dataset callable over the first (x, y) batches of `dataset` (inputs only): one
    input as a list, several as a dict keyed by input name (the SavedModel signature's names); each in
    its model input's kind: integer inputs (token ids) as that integer type, even though the data
    loader reads every `x` as float32, float inputs as float32, those named in `int32_inputs` (float
    token ids the signature takes as int32, float_id_inputs) as int32."""
    import numpy as np

    names = [str(getattr(t, "name", "")) for t in model.inputs]
    kinds = [
        np.dtype("int32" if name in int32_inputs else str(getattr(t, "dtype", "float32")))
        for name, t in zip(names, model.inputs, strict=True)
    ]

    def as_input(a, kind):
        return a.astype(kind) if kind.kind in "iu" else a.astype(np.float32)

    def batches():
        seen = 0
        for x, _y in dataset:
            if seen >= CALIBRATION_SAMPLES:
                return
            arrays = [as_input(a, k) for a, k in zip(_input_arrays(model, x), kinds, strict=True)]
            yield arrays if len(arrays) == 1 else dict(zip(names, arrays, strict=True))
            seen += len(arrays[0])

    return batches


# ---------------------------------------------------------------- checking


def zero_fraction(model) -> float:
    """Fraction of exact zeros among the model's float weight matrices and kernels (rank >= 2)."""
    import numpy as np

    zeros = total = 0
    for v in model.weights:
        if len(v.shape) < 2:
            continue
        arr = np.asarray(v)
        if arr.dtype.kind == "f":
            zeros += int(arr.size - np.count_nonzero(arr))
            total += int(arr.size)
    return zeros / total if total else 0.0


def sample_inputs(model, data, seed: int, count: int):
    """(list of input arrays, source): evaluation inputs from --data, else seeded random inputs."""
    import numpy as np

    if data is not None:
        chunks, seen = [], 0
        for x, _y in data.eval:
            chunks.append(_input_arrays(model, x))
            seen += len(chunks[-1][0])
            if seen >= count:
                break
        arrays = [np.concatenate(parts)[:count] for parts in zip(*chunks, strict=True)]
        return [_as_input_dtype(a, t) for a, t in zip(arrays, model.inputs, strict=True)], "data"
    from prunecli.structure import probes

    return probes.seeded_inputs(model, count, seed), "random"


def _as_input_dtype(array, tensor):
    """A data array in the dtype of the model input it feeds. The data is read as float32, which Keras
    casts back to an integer input itself; an exported SavedModel or TFLite file takes only the input's
    own dtype (token ids beside float features: every export refused, exit 7)."""
    import numpy as np

    dtype = np.dtype(str(getattr(tensor, "dtype", "float32")))
    if dtype.kind in "iub" and array.dtype != dtype:
        return array.astype(dtype)  # as Keras casts a float input to an integer one (ids are whole numbers)
    return array


def _input_arrays(model, x) -> list:
    """One batch's inputs as arrays in the order of model.inputs: a multi-input model's batch comes as a
    dict keyed by input name (or a list), a single input's as one array."""
    import numpy as np

    if isinstance(x, dict):
        names = [str(getattr(t, "name", "")) for t in model.inputs]
        return [np.asarray(x[name]) for name in names] if set(names) <= set(x) else [np.asarray(v) for v in x.values()]
    if isinstance(x, (list, tuple)):
        return [np.asarray(v) for v in x]
    return [np.asarray(x)]


def _as_inputs(model, samples):
    """The sample arrays (in the order of model.inputs) as the model takes them: one array, or the
    structure its inputs were declared in (a KerasHub model's dict of token_ids, padding_mask...)."""
    from prunecli.structure import keras_graph

    if len(samples) == 1:
        return samples[0]
    if isinstance(keras_graph.input_structure(model), dict):
        return keras_graph.pack_like(model, "inputs", list(samples))
    return samples


def _keras_outputs(model, samples) -> list:
    import keras
    import numpy as np

    from prunecli.structure.equivalence import fitting_batch

    batch = fitting_batch(model, 64, samples[0] if len(samples) == 1 else None)
    out = model.predict(_as_inputs(model, samples), verbose=0, batch_size=batch)
    return [np.asarray(o, dtype=np.float32) for o in keras.tree.flatten(out)]


def _natural_key(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _matched_inputs(signature_inputs: list[str], model_inputs: list[str], samples) -> dict | None:
    """Signature input name -> sample array; None when the names cannot be matched to the model's inputs."""
    if len(signature_inputs) != len(samples):
        return None
    if len(samples) == 1:
        return {signature_inputs[0]: samples[0]}
    if sorted(signature_inputs) != sorted(model_inputs):
        return None
    return dict(zip(model_inputs, samples, strict=True))


def compare_tflite(content: bytes, samples, expected, input_names: list[str], delegate: bool = True) -> dict:
    """Run the flatbuffer in the TFLite interpreter (without its default XNNPack delegate unless
    `delegate`); max |TFLite - Keras| over all outputs and samples.

    int8 inputs are quantised and int8 outputs dequantised with the tensors' own scale and zero point.
    """
    with _quiet():
        interpreter = _interpreter(content, delegate)
    runner = interpreter.get_signature_runner()
    in_details = runner.get_input_details()
    feed = _matched_inputs(list(in_details), input_names, samples)
    if feed is None:
        return {"max_abs_diff": None, "samples": 0}
    out_details = runner.get_output_details()

    def run(chunk: dict) -> list:
        with _quiet():
            result = runner(**{name: quantize(arr, in_details[name]) for name, arr in chunk.items()})
        return [dequantize(result[k], out_details[k]) for k in sorted(result, key=_natural_key)]

    return _differences(_in_chunks(run, feed), expected, len(samples[0]))


def _in_chunks(run, feed: dict) -> list:
    """run(chunk) over the samples a few rows at a time, its outputs joined: at most MAX_PROBE_ELEMENTS
    input values per call. The interpreter (and TensorFlow) hold a whole call's activations at once: 256
    examples of a 16,384-step convolutional sequence model in one call took more than 20 GB."""
    import numpy as np

    from prunecli.structure.equivalence import MAX_PROBE_ELEMENTS

    arrays = list(feed.values())
    per_example = sum(int(np.prod(a.shape[1:], dtype=np.int64)) for a in arrays)
    rows = max(1, MAX_PROBE_ELEMENTS // max(per_example, 1))
    parts = [run({k: a[start : start + rows] for k, a in feed.items()}) for start in range(0, len(arrays[0]), rows)]
    return [np.concatenate(outputs) for outputs in zip(*parts, strict=True)]


def _interpreter(content: bytes, delegate: bool = True, **options):
    """A TFLite interpreter as a runtime builds it by default, or without its default delegates."""
    import tensorflow as tf

    if not delegate:
        options["experimental_op_resolver_type"] = tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return tf.lite.Interpreter(model_content=content, **options)


def tflite_latency_ms(
    content: bytes, samples, input_names: list[str], budget_s: float = 1.0, delegate: bool = True
) -> float | None:
    """Median wall time of one interpreter call on one example (batch 1), in milliseconds, one thread;
    None when the flatbuffer's inputs cannot be fed from the samples or the interpreter refuses them
    (latency is an extra measurement: it never fails the export)."""
    import numpy as np

    try:
        with _quiet():
            interpreter = _interpreter(content, delegate, num_threads=1)
        runner = interpreter.get_signature_runner()
        details = runner.get_input_details()
        feed = _matched_inputs(list(details), input_names, [arr[:1] for arr in samples])
        if feed is None:
            return None
        feed = {name: quantize(arr, details[name]) for name, arr in feed.items()}
        with _quiet():
            runner(**feed)  # warm-up (and the resize to batch 1)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 50 and (len(times) < 5 or time.perf_counter() - start < budget_s):
            t0 = time.perf_counter()
            runner(**feed)
            times.append(time.perf_counter() - t0)
    except Exception:  # the interpreter's own errors (XNNPack, resize) come as RuntimeError/ValueError
        return None
    return round(float(np.median(times)) * 1000.0, 4)


def quantize(arr, detail):
    """An input array as the TFLite tensor wants it: a quantised tensor's values with its scale and zero
    point, any other cast. Quantised means a scale, not an integer dtype: a model's own int8 input (DM3Loc's
    token ids, bench/ZOO.md) has none, and dividing by its 0 scale fed every token as 127."""
    import numpy as np

    scale, zero = detail["quantization"]
    if not scale:
        return arr.astype(detail["dtype"])
    limits = np.iinfo(detail["dtype"])
    return np.clip(np.round(arr / scale + zero), limits.min, limits.max).astype(detail["dtype"])


def dequantize(arr, detail):
    """A TFLite output as float32 (a quantised one mapped back with its scale and zero point)."""
    import numpy as np

    scale, zero = detail["quantization"]
    if not scale:
        return np.asarray(arr, dtype=np.float32)
    return (arr.astype(np.float32) - zero) * scale


def _differences(got: list, expected: list, count: int) -> dict:
    import numpy as np

    if len(got) != len(expected):
        return {"max_abs_diff": None, "samples": 0}
    diff = max(float(np.max(np.abs(g - e))) if g.size else 0.0 for g, e in zip(got, expected, strict=True))
    norm = float(np.sqrt(sum(float(np.sum(np.square(e, dtype=np.float64))) for e in expected)))
    gap = float(
        np.sqrt(sum(float(np.sum(np.square(g - e, dtype=np.float64))) for g, e in zip(got, expected, strict=True)))
    )
    out = {"max_abs_diff": diff, "relative_error": gap / norm if norm > 0 else gap, "samples": count}
    if len(expected) == 1 and expected[0].ndim == 2 and expected[0].shape[-1] > 1:
        out["top1_agreement"] = float(np.mean(np.argmax(got[0], -1) == np.argmax(expected[0], -1)))
    elif len(expected) == 1 and expected[0].ndim == 2 and expected[0].shape[-1] == 1 and expected[0].size:
        e = expected[0]
        if e.min() >= 0 and e.max() <= 1:  # one sigmoid unit: the class is the side of 0.5
            out["top1_agreement"] = float(np.mean((got[0] > 0.5) == (e > 0.5)))
    return out


def outputs_against(model, path: Path, seed: int, count: int, delegate: bool = True) -> dict:
    """How closely an export written earlier (a .tflite file or a SavedModel folder at `path`) gives
    `model`'s outputs on `count` seeded inputs (structure/probes), as the run's own check measures it
    (`_differences`: max_abs_diff None when its inputs cannot be matched): what `prunecli verify` checks of
    an export whose report records no sha256. A file that cannot be loaded or run raises what TensorFlow
    or the interpreter raises, before the model runs."""
    from prunecli.structure import probes

    names = [str(getattr(t, "name", "")) for t in model.inputs]
    if path.is_dir():
        import tensorflow as tf

        with _quiet():
            tf.saved_model.load(str(path)).signatures["serving_default"]  # noqa: B018 - refused before the model runs
        samples = probes.seeded_inputs(model, count, seed)
        return _compare_savedmodel(path, samples, _keras_outputs(model, samples), names)
    content = path.read_bytes()
    with _quiet():
        _interpreter(content, delegate).allocate_tensors()  # an unreadable file or unknown op: refused first
    samples = probes.seeded_inputs(model, count, seed)
    return compare_tflite(content, samples, _keras_outputs(model, samples), names, delegate)


def _compare_savedmodel(saved: Path, samples, expected, input_names: list[str]) -> dict:
    """Reload the SavedModel with TensorFlow alone and run its serving signature on the samples."""
    import tensorflow as tf

    with _quiet():
        loaded = tf.saved_model.load(str(saved))
    serve = loaded.signatures["serving_default"]
    feed = _matched_inputs(list(serve.structured_input_signature[1]), input_names, samples)
    if feed is None:
        return {"max_abs_diff": None, "samples": 0}

    def run(chunk: dict) -> list:
        result = serve(**{name: tf.constant(arr) for name, arr in chunk.items()})
        return [result[k].numpy() for k in sorted(result, key=_natural_key)]

    try:
        outputs = _in_chunks(run, feed)
    except tf.errors.OpError as exc:  # the export ran at trace time but not on the model's own inputs
        reason = next((line for line in str(exc).splitlines() if "out of bounds" in line or "Incompatible" in line), "")
        raise ExportError(
            f"the exported SavedModel does not run on the model's inputs ({reason or first_line(exc)})"
        ) from exc
    return _differences(outputs, expected, len(samples[0]))
