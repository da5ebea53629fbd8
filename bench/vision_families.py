"""How prunecli's CLI behaves on KerasHub image classifiers, tiny random models, one table.

    .venv/bin/python bench/vision_families.py all            # build, run the CLI, check outputs, write the table
    .venv/bin/python bench/vision_families.py build          # tiny classifiers + image data under --dir
    .venv/bin/python bench/vision_families.py run [-j 1]     # every command on every family (subprocesses)
    .venv/bin/python bench/vision_families.py check          # load each exit-0 output, call it on images
    .venv/bin/python bench/vision_families.py table          # print the Markdown table (also written to bench/VISION.md)
    ... --families ResNet,ViT --commands magnitude,neuron     # a subset

Each family is a KerasHub <Family>Backbone built from its config (a few blocks, 8-32 channels or a
32-wide transformer; random weights, nothing downloaded) wrapped in
<Family>ImageClassifier(backbone, num_classes=4, preprocessor=None), called once on a 32x32x3 batch and
saved as <dir>/<family>.keras: the object a user gets from `<Family>ImageClassifier.from_preset(...)`,
less its preprocessor. Image data: <dir>/images.npz with x (64 x 32 x 32 x 3 float32 in 0..1, what the
preprocessor hands the model after rescaling) and y (int labels < 4).

Each command runs `python -m prunecli ...` in a subprocess (300 s limit; PYTHONPATH is this checkout);
the exit code, wall time and last stderr line are kept in <dir>/results.json. `check` loads every
exit-0 output (keras_hub and prunecli's quantized convolutions imported), calls it on images, compares parameter counts for shrinking
commands, counts new zeros for element pruning, and flags an exit-0 run that changed nothing or whose
output does not load or run.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_common import (
    PYTHON,
    ROOT,
    family_bench_main,
    family_check,
    family_run,
    family_table,
    machine,
    replace_section,
    run_logged,
    scratch,
    zero_fraction,
)  # noqa: E402

DEFAULT_DIR = scratch("vision_families")
VISION_MD = ROOT / "bench" / "VISION.md"
TITLE = """# KerasHub image classifiers

Written by `bench/vision_families.py`: every prunecli command on a tiny random model of each KerasHub
image-classifier family, as a user loads it (`<Family>ImageClassifier`, preprocessor left off)."""
HEADING = "## KerasHub image classifiers: every command on a tiny model of each"

SIZE, CLASSES, N_ROWS = 32, 4, 64


def _configs() -> dict[str, dict]:
    """Backbone keyword arguments per family (KerasHub 0.32 signatures), all tiny."""
    shape = (SIZE, SIZE, 3)
    return {
        "ResNet": {
            "input_conv_filters": [16],
            "input_conv_kernel_sizes": [3],
            "stackwise_num_filters": [64, 16],
            "stackwise_num_blocks": [1, 1],
            "stackwise_num_strides": [1, 2],
            "block_type": "bottleneck_block",
            "image_shape": shape,
        },
        "EfficientNet": {
            "stackwise_kernel_sizes": [3, 3, 3],
            "stackwise_num_repeats": [1, 1, 1],
            "stackwise_input_filters": [8, 8, 16],
            "stackwise_output_filters": [8, 16, 16],
            "stackwise_expansion_ratios": [1, 2, 2],
            "stackwise_squeeze_and_excite_ratios": [0.0, 0.0, 0.25],
            "stackwise_strides": [1, 2, 1],
            "stackwise_block_types": ["fused", "fused", "unfused"],
            "width_coefficient": 1.0,
            "depth_coefficient": 1.0,
            # num_features stays 1280: KerasHub 0.32's get_config leaves it out, so a model built with
            # another one does not load back in Keras itself ("top_conv expected 1 variables, received 0")
            "input_shape": shape,
        },
        "MobileNet": {
            "stackwise_expansion": [[16, 24], [32]],
            "stackwise_num_blocks": [2, 1],
            "stackwise_num_filters": [[8, 8], [16]],
            "stackwise_kernel_size": [[3, 3], [3]],
            "stackwise_num_strides": [[2, 1], [2]],
            "stackwise_se_ratio": [[None, None], [0.25]],
            "stackwise_activation": [["relu", "relu"], ["hard_swish"]],
            "stackwise_padding": [[1, 1], [1]],
            "output_num_filters": 32,
            "depthwise_filters": 8,
            "depthwise_stride": 2,
            "depthwise_residual": False,
            "last_layer_filter": 32,
            "squeeze_and_excite": 0.5,
            "input_num_filters": 8,
            "image_shape": shape,
        },
        "ViT": {
            "image_shape": shape,
            "patch_size": 8,
            "num_layers": 2,
            "num_heads": 4,
            "hidden_dim": 32,
            "mlp_dim": 64,
        },
        "DeiT": {
            "image_shape": shape,
            "patch_size": 8,
            "num_layers": 2,
            "num_heads": 4,
            "hidden_dim": 32,
            "intermediate_dim": 64,
        },
        "DenseNet": {"stackwise_num_repeats": [2, 2], "growth_rate": 8, "image_shape": shape},
        "Xception": {
            "stackwise_conv_filters": [[8, 16], [16, 32], [32, 32]],
            "stackwise_pooling": [True, True, False],
            "image_shape": shape,
        },
        "VGG": {"stackwise_num_repeats": [1, 2], "stackwise_num_filters": [8, 16], "image_shape": shape},
        "CSPNet": {
            "stem_filters": 8,
            "stem_kernel_size": 3,
            "stem_strides": 1,
            "stackwise_depth": [1, 1],
            "stackwise_strides": 2,
            "stackwise_num_filters": [16, 32],
            "block_type": "dark_block",
            "stage_type": "csp",
            "expand_ratio": [2.0, 1.0],
            "bottle_ratio": [0.5, 1.0],
            "block_ratio": [1.0, 0.5],
            "down_growth": True,
            "image_shape": shape,
        },
        "SwinTransformer": {
            "image_shape": shape,
            "embed_dim": 16,
            "depths": (2, 2),
            "num_heads": (2, 4),
            "window_size": 4,
            "patch_size": 4,
        },
        "MiT": {
            "layerwise_depths": [1, 1],
            "num_layers": 2,
            "layerwise_num_heads": [1, 2],
            "layerwise_sr_ratios": [2, 1],
            "max_drop_path_rate": 0.0,
            "layerwise_patch_sizes": [7, 3],
            "layerwise_strides": [4, 2],
            "hidden_dims": [16, 32],
            "image_shape": shape,
        },
        "HGNetV2": {
            "depths": [1, 1],
            "embedding_size": 16,
            "hidden_sizes": [32, 64],
            "stem_channels": [3, 8, 16],
            "hidden_act": "relu",
            "use_learnable_affine_block": False,
            "stackwise_stage_filters": [(16, 8, 32, 1, 1, 3), (32, 16, 64, 1, 1, 3)],
            "apply_downsample": [False, True],
            "use_lightweight_conv_block": [False, True],
            "image_shape": shape,
        },
        "MobileNetV5": {  # KerasHub's docstring example, narrowed: an edge-residual stage, two universal IRs
            "stackwise_block_types": [["er"], ["uir", "uir"]],
            "stackwise_num_blocks": [1, 2],
            "stackwise_num_filters": [[8], [16, 16]],
            "stackwise_strides": [[2], [2, 1]],
            "stackwise_act_layers": [["relu"], ["relu", "relu"]],
            "stackwise_exp_ratios": [[4.0], [4.0, 4.0]],
            "stackwise_se_ratios": [[0.0], [0.0, 0.0]],
            "stackwise_dw_kernel_sizes": [[0], [3, 3]],
            "stackwise_dw_start_kernel_sizes": [[0], [0, 0]],
            "stackwise_dw_end_kernel_sizes": [[0], [0, 0]],
            "stackwise_exp_kernel_sizes": [[3], [0, 0]],
            "stackwise_pw_kernel_sizes": [[1], [0, 0]],
            "stackwise_num_heads": [[0], [0, 0]],
            "stackwise_key_dims": [[0], [0, 0]],
            "stackwise_value_dims": [[0], [0, 0]],
            "stackwise_kv_strides": [[0], [0, 0]],
            "stackwise_use_cpe": [[False], [False, False]],
            "stem_size": 8,
            "num_features": 32,
            "use_msfa": False,
            "image_shape": shape,
        },
    }


FAMILIES = list(_configs())
# <Family>ImageClassifier keyword arguments beyond backbone/num_classes/preprocessor
CLASSIFIER_KWARGS = {"VGG": {"pooling_hidden_dim": 32}, "MobileNetV5": {"head_hidden_size": 32}}

# name -> (argv after `prunecli`, with M/D/OUT/R/E placeholders; shrinks?; asks for pruning?)
COMMANDS = {
    "magnitude": (["prune", "M", "-s", "0.5", "-o", "OUT", "--report", "R"], False, True),
    "wanda": (
        ["prune", "M", "--method", "wanda", "-s", "0.5", "--data", "D", "-o", "OUT", "--report", "R"],
        False,
        True,
    ),
    "sparsegpt": (
        ["prune", "M", "--method", "sparsegpt", "-g", "n:m=2:4", "--data", "D", "-o", "OUT", "--report", "R"],
        False,
        True,
    ),
    "neuron": (
        ["prune", "M", "-g", "neuron", "-s", "0.5", "--shrink", "--data", "D", "-o", "OUT", "--report", "R"],
        True,
        True,
    ),
    "target": (["prune", "M", "--target", "params=0.7", "--data", "D", "-o", "OUT", "--report", "R"], True, True),
    "layer": (["prune", "M", "-g", "layer", "-s", "0.3", "--data", "D", "-o", "OUT", "--report", "R"], True, True),
    "head": (
        ["prune", "M", "-g", "head", "-s", "0.5", "--shrink", "--data", "D", "-o", "OUT", "--report", "R"],
        True,
        True,
    ),
    "plan": (["plan", "M", "-g", "neuron", "-s", "0.5"], False, False),
    "inspect": (["inspect", "M"], False, False),
    "tflite": (
        ["prune", "M", "-s", "0.5", "--export", "tflite", "--data", "D", "-o", "OUT", "--report", "R"],
        False,
        True,
    ),
    "int8": (
        ["prune", "M", "-s", "0.5", "--quantize", "int8", "--data", "D", "-o", "OUT", "--report", "R"],
        False,
        True,
    ),
}


def _paths(d: Path, family: str, command: str) -> dict[str, Path]:
    out = d / "out" / family
    return {
        "M": d / f"{family}.keras",
        "D": d / "images.npz",
        "OUT": out / f"{command}.keras",
        "R": out / f"{command}.json",
        "LOG": out / f"{command}.log",
    }


def _env() -> dict:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}


# ---------------------------------------------------------------------------------------------------
# build


def build(d: Path, families: list[str]) -> dict[str, str]:
    import keras
    import keras_hub
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(N_ROWS, SIZE, SIZE, 3)).astype("float32")
    y = rng.integers(0, CLASSES, size=(N_ROWS,)).astype("int32")
    np.savez(d / "images.npz", x=x, y=y)
    path = d / "build.json"
    status = json.loads(path.read_text()) if path.exists() else {}
    for fam in families:
        keras.utils.set_random_seed(0)
        try:
            backbone = getattr(keras_hub.models, f"{fam}Backbone")(**_configs()[fam])
            model = getattr(keras_hub.models, f"{fam}ImageClassifier")(
                backbone=backbone, num_classes=CLASSES, preprocessor=None, **CLASSIFIER_KWARGS.get(fam, {})
            )
            model(x[:2])
            model.save(d / f"{fam}.keras")
            status[fam] = f"built, {model.count_params()} params"
        except Exception as e:  # noqa: BLE001 - record and go on
            status[fam] = f"build failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(fam, status[fam], flush=True)
    path.write_text(json.dumps(status, indent=1))
    return status


# ---------------------------------------------------------------------------------------------------
# run


def run_one(d: Path, family: str, command: str, timeout: int = 300) -> dict:
    p = _paths(d, family, command)
    if not p["M"].exists():
        return {"family": family, "command": command, "rc": None, "seconds": 0.0, "message": "model not built"}
    p["OUT"].parent.mkdir(parents=True, exist_ok=True)
    for k in ("OUT", "R"):
        p[k].unlink(missing_ok=True)
    for stale in p["OUT"].parent.glob(f"{command}.*"):
        if stale.suffix not in (".log",):
            stale.unlink()
    argv = [PYTHON, "-m", "prunecli"] + [str(p[a]) if a in p else a for a in COMMANDS[command][0]]
    return run_logged(argv, _env(), p["LOG"], family, command, timeout, 16)


def run(d: Path, families: list[str], commands: list[str], jobs: int) -> None:
    family_run(d, families, commands, jobs, run_one)


# ---------------------------------------------------------------------------------------------------
# check (one subprocess per family: `check-family`)


def _tflite_run(path: Path, x) -> str:
    import numpy as np

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    try:
        it = Interpreter(model_path=str(path))
        inp = it.get_input_details()[0]
        it.resize_tensor_input(inp["index"], [1, *x.shape[1:]])
        it.allocate_tensors()
        inp = it.get_input_details()[0]
        xi = x[:1]
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            xi = np.clip(np.round(xi / scale + zero), -128, 127).astype(inp["dtype"])
        it.set_tensor(inp["index"], xi)
        it.invoke()
        y = it.get_tensor(it.get_output_details()[0]["index"])
        return f"ok {list(y.shape)}"
    except Exception as e:  # noqa: BLE001
        return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"


def check_family(d: Path, family: str, commands: list[str]) -> dict:
    import keras
    import keras_hub  # noqa: F401 - registers KerasHub classes
    import numpy as np

    import prunecli.structure.quantized_conv  # noqa: F401 - --quantize's convolutions, as its note says
    from prunecli.structure.transformer import register_hub_layers

    register_hub_layers()  # a shrunk ViT/DeiT holds prunecli's backbone, encoder and blocks (as decoders do)

    x = np.load(d / "images.npz")["x"][:4]
    base = keras.saving.load_model(d / f"{family}.keras", compile=False)
    base_params = base.count_params()
    base_y = np.asarray(base(x))
    results = json.loads((d / "results.json").read_text())
    checks = {}
    for command in commands:
        row = results.get(family, {}).get(command)
        if not row or row["rc"] != 0 or not COMMANDS[command][2]:
            continue
        p = _paths(d, family, command)
        c = {"problems": []}
        report = json.loads(p["R"].read_text()) if p["R"].exists() else None
        if report is None:
            c["problems"].append("no report written")
        else:
            c["sparsity"] = (report.get("totals") or {}).get("prunable_sparsity")
        if command == "tflite":
            tfl = sorted(p["OUT"].parent.glob(f"{command}*.tflite"))
            c["tflite"] = _tflite_run(tfl[0], x) if tfl else "no .tflite written"
            if not c["tflite"].startswith("ok"):
                c["problems"].append("tflite " + c["tflite"])
        if not p["OUT"].exists():
            c["problems"].append("exit 0 but no output file")
            checks[command] = c
            continue
        try:
            model = keras.saving.load_model(p["OUT"], compile=False)
        except Exception as e:  # noqa: BLE001
            c["problems"].append(f"load failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            checks[command] = c
            continue
        c["class"] = type(model).__name__
        c["params"] = [base_params, model.count_params()]
        try:
            y = np.asarray(model(x))
            c["output_shape"] = list(y.shape)
            if y.shape != base_y.shape:
                c["problems"].append(f"output shape {list(y.shape)} != {list(base_y.shape)}")
            elif not np.all(np.isfinite(y)):
                c["problems"].append("non-finite outputs")
            else:
                c["max_abs_change"] = float(np.max(np.abs(y - base_y)))
        except Exception as e:  # noqa: BLE001
            c["problems"].append(f"call failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        if type(model).__name__ != type(base).__name__:
            noted = report is not None and any("plain Keras functional model" in n for n in report.get("notes", []))
            what = f"output is {type(model).__name__}, not {type(base).__name__}"
            (c.setdefault("remarks", []) if noted else c["problems"]).append(what + (" (noted)" if noted else ""))
        shrinks = COMMANDS[command][1]
        if shrinks and not model.count_params() < base_params:
            c["problems"].append(f"not smaller: {base_params} -> {model.count_params()} params")
        if not shrinks and command != "int8":
            gain = zero_fraction(model) - zero_fraction(base)
            c["zero_fraction_gain"] = round(gain, 3)
            if gain < 0.05:
                c["problems"].append(f"no new zeros in the weights (+{gain:.3f})")
        checks[command] = c
    return checks


def check(d: Path, families: list[str], commands: list[str]) -> None:
    family_check(__file__, d, families, commands, _env())


# ---------------------------------------------------------------------------------------------------
# table


def table(d: Path, families: list[str], commands: list[str]) -> str:
    shrinks = {cmd: COMMANDS[cmd][1] for cmd in commands}
    return family_table(d, families, commands, shrinks, "Build (32x32x3 inputs, 4 classes):")


def section(text: str) -> str:
    m = machine()
    return "\n".join(
        [
            HEADING,
            "",
            f"`.venv/bin/python bench/vision_families.py all` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())};"
            f" {m['cpu']}, {m['cores']} cores, shared with other jobs). One tiny random image classifier per KerasHub"
            " family (the module docstring says how it is built); each command is `prunecli prune|plan|inspect` in a"
            " subprocess; an exit-0 output is loaded with keras_hub imported and called on images (a .tflite export is"
            " run by the TFLite interpreter). Bold: an exit code other than 0, or an exit 0 that did not do what was"
            " asked. Exit 2/3/7 with a one-line message is a refusal. `+z zeros`: the share of matrix/kernel weights"
            " that became zero.",
            "",
            text,
            "",
            "Reading it (what is left):",
            "- `(plain Functional)`: the task and backbone were opened into one graph (rebuild.graph_only) and the output"
            " is a plain Keras functional model of the same inputs and outputs, as its note says.",
            "- MobileNet, HGNetV2 (and EfficientNet's MBConv blocks): their KerasHub blocks only call their layers, so"
            " they are opened as the graph their call records (structure/rebuild.traceable): `neuron`, `target`,"
            " `layer` and `int8` reach the convolutions inside them. A depthwise convolution built as"
            " Conv2D(groups=channels) is written as the DepthwiseConv2D it is, so `--shrink` cuts through it (a note"
            " says so); the shrunk model equals the masked one.",
            "- ViT, DeiT: `neuron`, `target` and `layer` rebuild the encoder (structure/vision_encoders.py): feed-forward"
            " units removed per block, or whole blocks, the output the user's ViTImageClassifier/DeiTImageClassifier"
            " around prunecli's PrunedViTBackbone/PrunedDeiTBackbone (it loads once prunecli's classes are registered,"
            " `register_hub_layers()`, as these checks and prunecli's commands do); `-g head --shrink` (no column)"
            " deletes heads the same way.",
            "- MiT, Swin: `neuron`, `target` and `layer` rebuild the backbone (structure/vision_encoders.py) with"
            " prunecli's blocks, each its own feed-forward units (MiT's MixFFN unit: fc1 column and bias, its"
            " depthwise 3x3 channel and bias, fc2 row; Swin's Mlp: fc1 column and bias, fc2 row), or without whole"
            " blocks (a MiT stage may lose all of its blocks); the output is the user's MiTImageClassifier/"
            "SwinTransformerImageClassifier around PrunedMiTBackbone/PrunedSwinTransformerBackbone, equal to the"
            " masked model. `--target flops=F` prices each unit, head and block at its own stage's token count (the"
            " model's multiply-adds counted in full at its image size: MiT's reduced keys and values and depthwise"
            " convolution, Swin's windows and patch merging).",
            "- MiT `int8`: a one-line refusal (exit 2): KerasHub's SegFormerMultiheadAttention and MixFFN build their"
            " Dense layers with no dtype, so those do not read the DTypePolicyMap the backbone's config records"
            " quantized layers in and reload float; its convolutions sit in blocks whose configs rebuild them float,"
            " and the head is the task's. MiT's blocks are not opened: its attention reshapes to the symbolic batch"
            " size, a graph that fails on real inputs.",
            "- Swin `tflite`: the converter emitted Select TF ops (Flex), which the plain interpreter cannot run.",
            "- VGG `layer`: one candidate block, and 0.3 of one rounds to none (a note says so).",
        ]
    )


def _write_section(text: str) -> None:
    if not VISION_MD.exists():
        replace_section(VISION_MD, None, TITLE)
    replace_section(VISION_MD, HEADING, section(text))


def main(argv=None) -> int:
    steps = {"build": build, "run": run, "check": check, "check_family": check_family, "table": table}
    return family_bench_main(argv, __doc__, "bench/VISION.md", FAMILIES, COMMANDS, DEFAULT_DIR, steps, _write_section)


if __name__ == "__main__":
    sys.exit(main())
