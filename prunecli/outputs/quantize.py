"""`--quantize int8|int4|float8`: the pruned model quantized by Keras 3's own `Model.quantize`, with every
pruned weight checked to be exactly zero afterwards.

Why the zeros survive (Keras 3.15, keras/src/quantizers/quantizers.py and layers/core/dense.py):
- int8: per-output-channel symmetric abs-max, `q = round(w * s)` with `s = 127 / (max|w| + eps)`,
  read back as `q / s`. `round(0 * s) = 0`, and `0 / s = 0` for the finite, positive `s`.
- int4: Keras' default `Int4QuantizationConfig` groups 128 rows of the input side and quantizes each
  group asymmetrically: `q = round(w / s) + z`, `z = round(-min / s) - 8`, read back as `(q - z) * s`.
  A group that holds a pruned zero has `min <= 0 <= max`, so `z` is inside [-8, 7] and not clipped:
  a zero becomes `q = z` and is read back as exactly 0. (Per-channel int4, block_size -1, is
  symmetric like int8.) Two codes share a byte.
- float8: the kernel stays float32 in the file and is cast to float8_e4m3fn with a scale at every call
  (delayed scaling, `kernel_scale` starts at 1); 0 is a float8 value, so it stays 0. No file is smaller.

Rather than trusting this, each quantized kernel is read back (its integer codes and zero points, or the
float8 round trip) and compared with the masks: a pruned weight that is not exactly zero stops the run
before anything is written. Keras 3.15 quantizes Dense and EinsumDense (and embeddings) only; for int8 and
int4, Conv1D/2D/3D, their transposes, DepthwiseConv1D/2D and SeparableConv1D/2D are quantized too, by
prunecli's own quantized convolutions (structure/quantized_conv.py, per output channel, weight-only), and
Keras' own Embedding layers by Keras (int8: codes with one abs-max scale per token row, read back as
codes / scale; int4: each token's row in groups of 128 columns with integer zero points, as the Dense
kernels, two codes per byte; a lookup, so no inputs are quantized; QAT does not fake-quantize them: they
are quantized after fine-tuning); every other layer stays float and the section says why.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

from prunecli.errors import ConfigError, ExitCode, PruneCliError, first_line
from prunecli.results import StepResult
from prunecli.structure import quantized_conv
from prunecli.structure.layers import zero_centred_codes
from prunecli.training.fake_quant import QUANTIZED_CLASSES, already_quantized, has_lora, quantized_kinds
from prunecli.training.metrics import gives_class_scores

SAMPLES = 256  # inputs the quantized model is compared on with the float pruned model
EMBEDDING_MODES = ("int8", "int4")  # the modes of Keras' own quantized Embedding
SCHEMES = {
    "int8": "int8 weights, per-output-channel symmetric abs-max; Dense/EinsumDense inputs quantized per row at "
    "run time; convolutions weight-only (prunecli's quantized convolution layers, float inputs); embeddings one "
    "scale per token row",
    "int4": "int4 weights (2 per byte); Dense/EinsumDense in groups of 128 input rows and embeddings in groups of "
    "128 columns, asymmetric with integer zero points; convolutions per output channel, symmetric (prunecli's "
    "quantized convolution layers); float inputs",
    "float8": "float8_e4m3fn weights and inputs with delayed scaling at run time; float32 kernels in the file",
}


class QuantizeVerificationError(PruneCliError):
    """The quantized model moved a pruned zero, or does not reload as it was saved: the model is not
    what was asked for, so nothing is saved (exit 4, like weights that became NaN)."""

    exit_code = ExitCode.GATE_FAILED


def run(model, targets, masks, data, task, config, float_metrics, progress, timings) -> StepResult:
    """Quantize `model` in place with Keras' `Model.quantize(config.quantize)`, verify the zeros, the
    outputs and a save/reload round trip, and return the report's `quantize` section."""

    mode = config.quantize
    chosen, left_float = _choose_layers(model, targets, mode)
    refuse_nothing_to_quantize(mode, chosen, left_float)
    pruned = _pruned_positions(chosen, targets, masks)
    inputs, source = _probe_inputs(model, data, config.seed)
    reference = _outputs(model, inputs)
    section: dict = {"mode": mode, "scheme": SCHEMES[mode], "after_qat": _after_qat(config)}
    with tempfile.TemporaryDirectory(prefix="prunecli-quantize-") as tmp:
        sizes: dict = {}
        if config.sizes:
            sizes["float_pruned"] = _saved_sizes(model, Path(tmp) / "float.keras")
        progress(f"quantizing ({mode})")
        with timings.phase("quantize"):
            _quantize(model, mode, chosen)
        layers = [_verify_layer(layer, attr, mode, pruned[(id(layer), attr)]) for layer, attr in _kernels(chosen)]
        quantized = _outputs(model, inputs)
        reload = _reload_check(model, Path(tmp) / "quantized.keras", inputs, quantized)
        if config.sizes:
            sizes["quantized"] = reload.pop("sizes")
        else:
            reload.pop("sizes")
    moved = [entry for entry in layers if entry["pruned_nonzero"]]
    if moved:
        first = moved[0]
        raise QuantizeVerificationError(
            f"--quantize {mode} moved {first['pruned_nonzero']} pruned weight(s) of layer {first['layer']} "
            "away from zero; nothing was saved"
        )
    section.update(layers_quantized=layers, left_float=left_float, zeros=_zeros(layers), reload=reload)
    section["output_difference"] = {"sample_source": source, **_differences(reference, quantized)}
    if not gives_class_scores(model, task):  # a regressor's vector output has no top class
        section["output_difference"].pop("top1_agreement", None)
    if sizes:
        section["sizes"] = sizes
    if data is not None and task is not None:
        from prunecli.training.metrics import evaluate

        progress("evaluating (quantized)")
        with timings.phase("evaluate"):
            section["metrics"] = {
                "float_pruned": dict(float_metrics or {}),
                "quantized": evaluate(model, data.eval, task),
            }
    notes = []
    lost = _metric_loss(section.get("metrics"))
    if lost:
        notes.append(f"--quantize {mode}: {lost} on the evaluation data: see quantize.metrics")
    if left_float:
        names = ", ".join(e["layer"] for e in left_float[:6]) + (", ..." if len(left_float) > 6 else "")
        notes.append(
            f"--quantize {mode}: {len(left_float)} prunable layer(s) left float ({names}): see quantize.left_float"
        )
    import keras

    embeddings = [layer.name for layer in chosen if isinstance(layer, keras.layers.Embedding)]
    if embeddings and section["after_qat"]:
        notes.append(
            f"--qat: embeddings {', '.join(embeddings)} were quantized after fine-tuning, without fake quantisation"
        )
    convs = [layer for layer in chosen if quantized_conv.is_quantized_conv(layer)]
    if convs:
        notes.append(
            f"--quantize {mode}: {len(convs)} convolution(s) saved as prunecli's quantized convolution layers: load "
            "the file with keras.saving.load_model after `import prunecli.structure.quantized_conv`"
        )
    if mode == "float8":
        notes.append("--quantize float8 keeps float32 kernels in the file (cast to float8 at run time): no size saving")
    return StepResult(sections={"quantize": section}, notes=tuple(notes), model=model)


QUANTIZE_NOTE_POINTS = 0.01  # an accuracy lost to quantisation beyond this is said in a note, not only reported


def _metric_loss(metrics: dict | None) -> str | None:
    """What quantisation cost on the evaluation data, in words, when the accuracy fell by more than
    QUANTIZE_NOTE_POINTS (a model Keras' int8 scheme damages: oskut's word segmenter, 86.5% -> 61.7%)."""
    if not metrics:
        return None
    before, after = metrics.get("float_pruned", {}).get("accuracy"), metrics.get("quantized", {}).get("accuracy")
    if before is None or after is None or not before - after > QUANTIZE_NOTE_POINTS:
        return None
    return f"accuracy {before:.4f} -> {after:.4f} ({100 * (before - after):.1f} points lost to quantisation)"


def _after_qat(config) -> bool:
    """Whether fine-tuning ran through this mode's fake quantisation (training/fake_quant.py)."""
    return bool(config.qat_active and (config.epochs > 0 or config.schedule != "oneshot"))


def _zeros(layers: list[dict]) -> dict:
    """The pruned weights of the quantized layers: all of them must still be zero (pruned_nonzero 0)."""
    return {
        "pruned_weights": int(sum(e["pruned_weights"] for e in layers)),
        "kept_zero": int(sum(e["pruned_weights"] - e["pruned_nonzero"] for e in layers)),
        "pruned_nonzero": int(sum(e["pruned_nonzero"] for e in layers)),
        "new_zeros_from_rounding": int(sum(e["new_zeros"] for e in layers)),
    }


# ------------------------------------------------------------------ which layers


def refuse_nothing_to_quantize(mode: str, chosen: list, left_float: list[dict]) -> None:
    """A one-line ConfigError when `mode` would quantize no layer, with the reasons the layers stay float
    (a Dense inside TimeDistributed or a user's layer class is one `mode` takes, kept float by its owner:
    the message once said the model's layers were Dense and that no layer could be quantized)."""
    if chosen:
        return
    reasons: dict[str, list[str]] = {}
    for entry in left_float:
        reasons.setdefault(entry["why"], []).append(f"{entry['layer']} ({entry['class']})")
    said = "; ".join(
        f"{', '.join(names[:3])}{' ...' if len(names) > 3 else ''}: {why}" for why, names in reasons.items()
    )
    raise ConfigError(
        f"--quantize {mode}: no layer of this model can be quantized ({mode} takes {quantized_kinds(mode)} "
        f"layers; {said or 'the model has no prunable layer'})"
    )


def check_quantizable(model, mode: str) -> None:
    """Before any work: refuse a --quantize that no layer of the loaded model could take. A model Keras
    already quantized is left to the targets' own refusal, which says to prune the float model."""
    from prunecli.structure import targets
    from prunecli.structure.layers import quantization_mode

    found = targets.walk(model)
    if any(t.layer is not None and quantization_mode(t.layer) for t in found):
        return
    chosen, left_float = _choose_layers(model, found, mode)
    refuse_nothing_to_quantize(mode, chosen, left_float)


def _choose_layers(model, targets, mode: str) -> tuple[list, list[dict]]:
    """The layers `mode` quantizes and prunecli can read back (Keras' own Dense and EinsumDense, for int8
    and int4 also Keras' convolutions; not subclasses, not already quantized, without LoRA: the layers QAT fine-tunes
    through), and, for every other layer holding a prunable weight, why it stays float."""
    import keras

    from prunecli.training.fake_quant import float_by_owner, quantizable_layers

    classes = tuple(getattr(keras.layers, name) for name in QUANTIZED_CLASSES)
    owned = float_by_owner(model)  # layers their owner keeps float: one walk for every choice below
    chosen = quantizable_layers(model, mode, owned) + _embeddings(model, mode, owned)
    seen = {id(layer) for layer in chosen}
    left, listed = [], set()
    for t in targets:
        layer = t.layer
        if layer is None or id(layer) in seen or id(layer) in listed:
            continue
        listed.add(id(layer))
        why = owned.get(id(layer)) or _why_float(layer, classes, mode)
        left.append({"layer": t.layer_name, "class": t.layer_class, "why": why})
    return chosen, left


def _embeddings(model, mode: str, owned: dict) -> list:
    """Keras' own Embedding layers (not subclasses: KerasHub's ReversibleEmbedding quantizes otherwise, or
    not at all) that int8 and int4 quantize and prunecli reads back: built, not already quantized, without LoRA."""
    import keras

    from prunecli.structure import keras_graph

    if mode not in EMBEDDING_MODES:
        return []
    return [
        layer
        for layer in keras_graph.all_layers(model)
        if id(layer) not in owned
        and type(layer) is keras.layers.Embedding
        and layer.built
        and not already_quantized(layer)
        and not has_lora(layer)
    ]


def _why_float(layer, classes, mode: str) -> str:
    import keras

    if type(layer) in quantized_conv.CONV_CLASSES and mode not in quantized_conv.MODES:
        return (
            f"prunecli quantizes convolutions to {' and '.join(quantized_conv.MODES)} only "
            f"(Keras {keras.__version__} has no quantized one)"
        )
    if isinstance(layer, classes):
        return f"a subclass of {type(layer).__mro__[1].__name__}: Keras quantizes only its own classes"
    if already_quantized(layer):
        return "already quantized"
    if has_lora(layer):
        return "has LoRA weights"
    if isinstance(layer, keras.layers.Embedding):
        if type(layer) is not keras.layers.Embedding:
            return f"{type(layer).__name__} is not Keras' own Embedding, whose int8 codes prunecli reads back"
        return f"prunecli quantizes embeddings to {' and '.join(EMBEDDING_MODES)} only (Keras has no {mode} embedding)"
    return (
        f"Keras {keras.__version__} has no quantized {type(layer).__name__} "
        "(prunecli's quantized convolutions cover Conv, ConvTranspose, DepthwiseConv and SeparableConv)"
    )


def _kernels(chosen: list) -> list[tuple[object, str]]:
    """(layer, attribute) of every kernel the chosen layers quantize: one per layer, two for a separable
    convolution (its depthwise and pointwise kernels)."""
    import keras

    return [
        (layer, attr)
        for layer in chosen
        for attr in (
            ("embeddings",) if isinstance(layer, keras.layers.Embedding) else quantized_conv.kernel_names(layer)
        )
    ]


def _pruned_positions(chosen: list, targets, masks) -> dict[tuple[int, str], object]:
    """Per kernel of the chosen layers ((id(layer), attribute)), its pruned positions as a boolean array
    and the float kernel: the mask's pruned entries when the run has a mask of the kernel's shape, else
    the kernel's exact zeros (after --shrink, or a layer the run did not prune)."""
    import numpy as np

    by_kernel = {(id(t.layer), t.attr): t for t in targets if t.layer is not None}
    out = {}
    for layer, attr in _kernels(chosen):
        kernel = np.asarray(getattr(layer, attr))
        zeros = kernel == 0
        t = by_kernel.get((id(layer), attr))
        keep = masks.masks.get(t.name) if (masks is not None and t is not None) else None
        if keep is not None and tuple(np.shape(keep)) == kernel.shape:
            zeros = ~np.asarray(keep, dtype=bool)
        out[(id(layer), attr)] = (zeros, kernel)
    return out


# ------------------------------------------------------------------ quantize and read back


def _quantize(model, mode: str, chosen: list) -> None:
    wanted = {id(layer) for layer in chosen}
    for layer in chosen:
        if quantized_conv.quantizable(layer):  # Keras' float convolution gains the `quantize` Model.quantize calls
            quantized_conv.make_quantizable(layer)
    try:
        with warnings.catch_warnings(), quantized_conv.one_collection():
            warnings.simplefilter("ignore")  # "Layer X does not have a quantize method", numpy copy= notices
            model.quantize(mode, filters=lambda layer: id(layer) in wanted)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise ConfigError(f"--quantize {mode}: Keras cannot quantize this model: {first_line(exc)}") from exc


def _verify_layer(layer, attr: str, mode: str, pruned_and_float) -> dict:
    """Read a quantized kernel back: which of its pruned weights are exactly zero, how many kept
    weights rounded to zero, and the largest |dequantized - float| where the layout is known."""
    import numpy as np

    pruned, float_kernel = pruned_and_float
    dequantized, is_zero = _read_back(layer, attr, mode, float_kernel)
    name = layer.path if hasattr(layer, "path") else layer.name
    entry = {
        "layer": name if attr == "kernel" else f"{name}/{attr}",
        "class": type(layer).__name__,
        "policy": layer.dtype_policy.name,
        "kernel_shape": list(float_kernel.shape),
        "pruned_weights": int(pruned.sum()),
        "pruned_nonzero": int((pruned & ~is_zero).sum()),
        "new_zeros": int((~pruned & (float_kernel != 0) & is_zero).sum()),
        "max_abs_dequant_error": None,
    }
    if dequantized is not None:
        entry["max_abs_dequant_error"] = float(np.max(np.abs(dequantized - float_kernel))) if float_kernel.size else 0.0
    return entry


def _read_back(layer, attr: str, mode: str, float_kernel):
    """(dequantized kernel or None, boolean array: entry is exactly zero), in the float kernel's layout.

    int8/int4: `layer.kernel` is the integer codes in the original layout (Keras unpacks int4 itself);
    a code is zero when it equals its zero point (0 when symmetric), the scales being finite and > 0.
    int4 groups run along the flattened input rows (`g_idx`), the layout Keras quantized them in."""
    import numpy as np

    if mode == "float8":
        from keras import quantizers

        kernel = np.asarray(layer.kernel, dtype=np.float32)
        scale = np.asarray(layer.kernel_scale, dtype=np.float32)
        back = np.asarray(quantizers.quantize_and_dequantize(kernel, scale, "float8_e4m3fn", "float32"))
        return back, back == 0
    import keras

    conv = quantized_conv.is_quantized_conv(layer)
    embedding = isinstance(layer, keras.layers.Embedding)
    if conv:
        codes, scale = next((c, s) for a, c, s in quantized_conv.quantized_kernels(layer) if a == attr)
    elif embedding:  # codes (tokens, dim; int4 unpacked by Keras), a scale per token row (int4: per group of it)
        codes, scale = layer.embeddings, layer.embeddings_scale
    else:
        codes, scale = layer.kernel, layer.kernel_scale
    codes = np.asarray(codes).astype(np.int32)
    scale = np.asarray(scale, dtype=np.float32)
    if not np.all(np.isfinite(scale)) or not np.all(scale != 0):
        raise QuantizeVerificationError(f"layer {layer.name}: Keras wrote a zero or non-finite quantization scale")
    if getattr(layer, f"{attr}_zero", None) is not None:  # grouped asymmetric int4: (q - z[g]) * s[g]
        centred = zero_centred_codes(layer, codes, attr)
        groups = np.asarray(layer.g_idx).astype(np.int64)
        if embedding:  # groups of each token's row
            return centred * scale[:, groups], centred == 0
        back = (centred.reshape(len(groups), -1) * scale[groups]).reshape(codes.shape)
        return back, centred == 0
    is_zero = codes == 0
    if embedding:
        return codes / scale.reshape(-1, 1), is_zero
    if conv:  # quantized_kernels shapes each scale to divide its kernel's codes (output channels not always last)
        return codes / scale, is_zero
    columns = scale.size
    if isinstance(layer, keras.layers.Dense) or mode == "int4":  # codes / s per output column (last axis)
        if codes.size % columns == 0:
            return (codes.reshape(-1, columns) / scale.reshape(columns)).reshape(codes.shape), is_zero
    return None, is_zero  # EinsumDense int8: scales are laid out for the output; zeros read from the codes


# ------------------------------------------------------------------ outputs, reload, sizes


def _probe_inputs(model, data, seed: int):
    """Up to SAMPLES evaluation inputs from --data, else seeded probe inputs; and which it was."""
    import keras
    import numpy as np

    if data is not None:
        batches, count = [], 0
        for x, _y in data.eval:
            batches.append(keras.tree.map_structure(np.asarray, x))
            count += len(keras.tree.flatten(batches[-1])[0])
            if count >= SAMPLES:
                break
        if batches:
            joined = keras.tree.map_structure(lambda *parts: np.concatenate(parts)[:SAMPLES], *batches)
            return joined, "data"
    from prunecli.structure.equivalence import example_inputs

    return example_inputs(model, SAMPLES, seed=seed), "random"


def _outputs(model, inputs) -> list:
    import keras
    import numpy as np

    out = model.predict(inputs, verbose=0, batch_size=64)
    return [np.asarray(o, dtype=np.float64) for o in keras.tree.flatten(out)]


def _differences(reference: list, got: list) -> dict:
    import numpy as np

    max_abs = max(float(np.max(np.abs(a - b))) for a, b in zip(reference, got, strict=True))
    mean_abs = float(np.mean([np.mean(np.abs(a - b)) for a, b in zip(reference, got, strict=True)]))
    scale = max(float(np.max(np.abs(a))) for a in reference)
    out = {
        "samples": int(len(reference[0])),
        "max_abs_diff": max_abs,
        "mean_abs_diff": mean_abs,
        "max_rel_diff": max_abs / scale if scale > 0 else max_abs,
    }
    first, second = reference[0], got[0]
    if first.ndim == 2 and first.shape[1] > 1:  # class scores: how often the top class is the same
        out["top1_agreement"] = float(np.mean(first.argmax(-1) == second.argmax(-1)))
    return out


def _saved_sizes(model, path: Path) -> dict:
    from prunecli.io import models as model_io

    model_io.save(model, path, output=False)  # a scratch copy, read back at once
    return model_io.file_sizes(path)


def _reload_reason(exc: Exception) -> str:
    """Keras' load error in one line: its first line alone can be a header ("A total of 3 objects could
    not be loaded. Example error message for object <Dense ...>:") whose reason is on the next."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        return f"{lines[0]} {lines[1]}"
    return first_line(exc)


def _reload_check(model, path: Path, inputs, expected: list) -> dict:
    """Save the quantized model as the run will, load it back with keras.saving.load_model and compare
    its outputs with the quantized model's; a file that does not reload (or computes something else)
    stops the run before the real output is written."""
    import keras
    import numpy as np

    from prunecli.io import models as model_io

    model_io.save(model, path, output=False)  # a scratch copy, read back at once
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = keras.saving.load_model(path)
    except Exception as exc:  # Keras raises many kinds on a file it cannot rebuild
        raise QuantizeVerificationError(
            f"the quantized model does not reload ({_reload_reason(exc)}); nothing was saved"
        ) from exc
    got = _outputs(again, inputs)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(expected, got, strict=True))
    if not diff <= 1e-6 * max(1.0, max(float(np.max(np.abs(a))) for a in expected)):
        raise QuantizeVerificationError(
            f"the reloaded quantized model differs from it by {diff:.3g}; nothing was saved"
        )
    return {"loads": True, "max_abs_diff": diff, "sizes": model_io.file_sizes(path)}
