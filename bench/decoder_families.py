"""How prunecli's CLI behaves on KerasHub decoder families, tiny random models, one table.

    .venv/bin/python bench/decoder_families.py all            # build, run the CLI, check outputs, write the table
    .venv/bin/python bench/decoder_families.py build          # tiny models + token data under --dir
    .venv/bin/python bench/decoder_families.py run [-j 2]     # every command on every family (subprocesses)
    .venv/bin/python bench/decoder_families.py check          # load each exit-0 output, feed tokens, generate()
    .venv/bin/python bench/decoder_families.py table          # print the Markdown table (also written to RESULTS.md)
    ... --families Gemma,Qwen3 --commands head,neuron         # a subset

Each family is a KerasHub <Family>Backbone built from its config (hidden 32, 2 layers, vocabulary 128,
4 query heads / 2 key-value heads where the family has grouped-query attention, FFN 64; random weights,
nothing downloaded) wrapped in <Family>CausalLM(preprocessor=None) and saved as <dir>/<family>.keras.
Token data: <dir>/tokens_<vocab>.npz with token_ids (32 x 16 int32) and padding_mask (ones).

Each command runs `prunecli ...` in a subprocess (300 s limit); the exit code, wall time and last stderr
line are kept in <dir>/results.json. `check` loads every exit-0 output (keras_hub imported, prunecli's
hub layers registered), calls it on {"token_ids", "padding_mask"}, compares parameter counts for
shrinking commands, calls generate() through the causal LM, and reads the report's sparsity/shrink/
verification fields, flagging a run that exits 0 but changed nothing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_common import (
    PRUNECLI,
    family_bench_main,
    family_check,
    family_run,
    machine,
    run_logged,
    scratch,
    short_error,
    write_decoders_section,
    zero_fraction,
)  # noqa: E402

DEFAULT_DIR = scratch("decoder_families")
HEADING = "## KerasHub decoder families: every command on a tiny model of each"

HIDDEN, LAYERS, VOCAB, FFN, HEADS, KV, HEAD_DIM = 32, 2, 128, 64, 4, 2, 8
N_ROWS, SEQ = 32, 16


def _configs() -> dict[str, dict]:
    """Backbone keyword arguments per family (KerasHub 0.32 signatures)."""
    common = {"vocabulary_size": VOCAB, "num_layers": LAYERS, "hidden_dim": HIDDEN, "intermediate_dim": FFN}
    gqa = {**common, "num_query_heads": HEADS, "num_key_value_heads": KV}
    mha = {**common, "num_heads": HEADS}
    return {
        "Llama": {**gqa},
        "Mistral": {**gqa, "sliding_window": 16},
        "Qwen": {**gqa},
        "Qwen3": {**gqa, "head_dim": HEAD_DIM},
        "Gemma": {**gqa, "head_dim": HEAD_DIM},
        "Gemma3": {**gqa, "head_dim": HEAD_DIM, "image_size": 16, "vision_encoder": None},
        "Phi3": {**gqa},
        "GPT2": {**mha, "max_sequence_length": 64},
        "OPT": {**mha, "max_sequence_length": 64},
        "Bloom": {**mha},
        "GPTNeoX": {**mha, "max_sequence_length": 64},
        "Falcon": {**common, "num_attention_heads": HEADS},
        "SmolLM3": {
            **common,
            "num_attention_heads": HEADS,
            "num_key_value_heads": KV,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "rope_layer_enabled_list": [True] * LAYERS,
            "layer_types": ["full_attention"] * LAYERS,
            "mlp_bias": False,
            "layer_norm_epsilon": 1e-6,
            "max_position_embeddings": 64,
            "rope_theta": 10000.0,
            "partial_rotary_factor": 1.0,
        },
        "Llama3": {**gqa},
        "Qwen2": {**gqa},
        "Mixtral": {**gqa, "num_experts": 4, "top_k": 2},
        "QwenMoe": {
            **gqa,
            "moe_intermediate_dim": FFN // 2,
            "shared_expert_intermediate_dim": FFN,
            "num_experts": 4,
            "top_k": 2,
        },
        "Qwen3Moe": {**gqa, "moe_intermediate_dim": FFN // 2, "num_experts": 4, "top_k": 2, "head_dim": HEAD_DIM},
        "GptOss": {**gqa, "num_experts": 4, "top_k": 2, "head_dim": HEAD_DIM},
        "RWKV7": {
            "hidden_size": HIDDEN,
            "head_size": HEAD_DIM,
            "num_layers": LAYERS,
            "vocabulary_size": VOCAB,
            "intermediate_dim": FFN,
            "gate_lora": 8,
            "mv_lora": 8,
            "aaa_lora": 8,
            "decay_lora": 8,
        },
    }


FAMILIES = list(_configs())

# name -> (argv after `prunecli`, with M/T/OUT/R placeholders; shrinks?; asks for pruning?)
COMMANDS = {
    "magnitude": (["prune", "M", "-s", "0.5", "-o", "OUT", "--data", "T", "--report", "R"], False, True),
    "wanda": (
        ["prune", "M", "--method", "wanda", "-s", "0.5", "--data", "T", "-o", "OUT", "--report", "R"],
        False,
        True,
    ),
    "sparsegpt": (
        ["prune", "M", "--method", "sparsegpt", "-g", "n:m=2:4", "--data", "T", "-o", "OUT", "--report", "R"],
        False,
        True,
    ),
    "head": (
        ["prune", "M", "-g", "head", "-s", "0.5", "--shrink", "--data", "T", "-o", "OUT", "--report", "R"],
        True,
        True,
    ),
    "neuron": (
        ["prune", "M", "-g", "neuron", "-s", "0.5", "--shrink", "--data", "T", "-o", "OUT", "--report", "R"],
        True,
        True,
    ),
    "hidden": (
        ["prune", "M", "-g", "hidden", "-s", "0.25", "--shrink", "--data", "T", "-o", "OUT", "--report", "R"],
        True,
        True,
    ),
    "layer": (
        ["prune", "M", "-g", "layer", "-s", "0.5", "--shrink", "--data", "T", "-o", "OUT", "--report", "R"],
        True,
        True,
    ),
    "target": (
        ["prune", "M", "-g", "neuron", "--target", "params=0.8", "--data", "T", "-o", "OUT", "--report", "R"],
        True,
        True,
    ),
    "plan": (["plan", "M", "-g", "head", "-s", "0.5"], False, False),
    "inspect": (["inspect", "M"], False, False),
}


def _paths(d: Path, family: str, command: str) -> dict[str, Path]:
    out = d / "out" / family
    return {
        "M": d / f"{family}.keras",
        "T": d / f"tokens_{VOCAB}.npz",
        "OUT": out / f"{command}.keras",
        "R": out / f"{command}.json",
        "LOG": out / f"{command}.log",
    }


# ---------------------------------------------------------------------------------------------------
# build


def build(d: Path, families: list[str]) -> dict[str, str]:
    import keras
    import keras_hub
    import numpy as np

    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, VOCAB, size=(N_ROWS, SEQ)).astype("int32")
    np.savez(d / f"tokens_{VOCAB}.npz", token_ids=ids, padding_mask=np.ones_like(ids))
    status = {}
    for fam in families:
        keras.utils.set_random_seed(0)
        try:
            backbone = getattr(keras_hub.models, f"{fam}Backbone")(**_configs()[fam])
            lm = getattr(keras_hub.models, f"{fam}CausalLM")(backbone=backbone, preprocessor=None)
            lm({"token_ids": ids[:2], "padding_mask": np.ones_like(ids[:2])})
            lm.save(d / f"{fam}.keras")
            status[fam] = f"built, {lm.count_params()} params"
        except Exception as e:  # noqa: BLE001 - record and go on
            status[fam] = f"build failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        print(fam, status[fam], flush=True)
    (d / "build.json").write_text(json.dumps(status, indent=1))
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
    argv = [PRUNECLI] + [str(p[a]) if a in p else a for a in COMMANDS[command][0]]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    return run_logged(argv, env, p["LOG"], family, command, timeout, 8)


def run(d: Path, families: list[str], commands: list[str], jobs: int) -> None:
    family_run(d, families, commands, jobs, run_one)


# ---------------------------------------------------------------------------------------------------
# check (one subprocess per family: `check-family`)


def _find(obj, keys, path=""):
    """[(path, value)] of every entry in a nested dict/list whose key contains one of `keys`."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            sub = f"{path}.{k}" if path else k
            if any(key in k.lower() for key in keys):
                found.append((sub, v if not isinstance(v, (dict, list)) else json.dumps(v)[:160]))
            found += _find(v, keys, sub)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:50]):
            found += _find(v, keys, f"{path}[{i}]")
    return found


def check_family(d: Path, family: str, commands: list[str]) -> dict:
    import keras
    import keras_hub  # noqa: F401 - registers KerasHub classes
    import numpy as np

    try:
        from prunecli.structure.transformer import register_hub_layers

        register_hub_layers()
    except Exception:  # noqa: BLE001
        pass
    try:
        from prunecli.structure import decoders

        decoders.register()
    except Exception:  # noqa: BLE001
        pass

    data = np.load(d / f"tokens_{VOCAB}.npz")
    ids, mask = data["token_ids"][:2], data["padding_mask"][:2]
    base = keras.saving.load_model(d / f"{family}.keras", compile=False)
    base_params = base.count_params()
    results = json.loads((d / "results.json").read_text())
    checks = {"_base_generate": _generate(base, ids)}
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
            totals = report.get("totals", {})
            c["sparsity"] = totals.get("prunable_sparsity")
            shrink = report.get("shrink") or {}
            c["verification"] = [f"{k}={v}" for k, v in _find(report, ("verif", "equival", "max_diff", "difference"))][
                :6
            ]
            if shrink:
                c["report_params"] = [shrink.get("params_before"), shrink.get("params_after")]
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
            y = model({"token_ids": ids, "padding_mask": mask})
            y = np.asarray(y)
            c["output_shape"] = list(y.shape)
            if not np.all(np.isfinite(y)):
                c["problems"].append("non-finite logits")
        except Exception as e:  # noqa: BLE001
            c["problems"].append(f"call failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        shrinks = COMMANDS[command][1]
        if shrinks and not model.count_params() < base_params:
            c["problems"].append(f"not smaller: {base_params} -> {model.count_params()} params")
        if not shrinks:
            weights_changed = zero_fraction(model) - zero_fraction(base)
            c["zero_fraction_gain"] = round(weights_changed, 3)
            if weights_changed < 0.05:
                c["problems"].append(f"no new zeros in the weights (+{weights_changed:.3f})")
        if hasattr(model, "generate"):
            c["generate"] = _generate(model, ids)
            if c["generate"].startswith("failed"):
                same = c["generate"] == checks["_base_generate"]
                c["problems"].append(
                    "generate " + c["generate"] + (" (the unpruned model fails alike)" if same else "")
                )
        else:
            c["generate"] = "no generate (not a CausalLM)"
            c["problems"].append(f"output is {type(model).__name__}, not a CausalLM: no generate()")
        checks[command] = c
    return checks


def _generate(model, ids) -> str:
    """generate() through the causal LM (no preprocessor): 8 prompt tokens, 8 to fill."""
    import numpy as np

    try:
        gen_ids = np.array(ids)
        gen_mask = np.zeros_like(gen_ids)
        gen_mask[:, :8] = 1
        gen_ids[:, 8:] = 0
        out = model.generate({"token_ids": gen_ids, "padding_mask": gen_mask}, stop_token_ids=None)
        got = np.asarray(out["token_ids"] if isinstance(out, dict) else out)
        return f"ok {list(got.shape)}"
    except Exception as e:  # noqa: BLE001
        return f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"


def check(d: Path, families: list[str], commands: list[str]) -> None:
    family_check(
        __file__, d, families, commands, {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    )


# ---------------------------------------------------------------------------------------------------
# table


def _problem(text: str) -> str:
    if text.startswith("not smaller"):
        return "NOT shrunk"
    if text.startswith("generate failed"):
        return "generate() fails" + (" (unpruned too)" if "unpruned" in text else "")
    return text


def table(d: Path, families: list[str], commands: list[str]) -> str:
    results = json.loads((d / "results.json").read_text()) if (d / "results.json").exists() else {}
    checks = json.loads((d / "checks.json").read_text()) if (d / "checks.json").exists() else {}
    build_status = json.loads((d / "build.json").read_text()) if (d / "build.json").exists() else {}
    lines = ["| family | " + " | ".join(commands) + " |", "|---|" + "---|" * len(commands)]
    for fam in families:
        cells = []
        for cmd in commands:
            row = results.get(fam, {}).get(cmd)
            if row is None:
                cells.append("-")
                continue
            if row["rc"] != 0:
                cells.append(f"**{row['rc']}**, {row['seconds']:.0f}s: {short_error(row['message'])}".replace("|", "/"))
                continue
            c = checks.get(fam, {}).get(cmd, {})
            text = "ok"
            if c.get("params") and COMMANDS[cmd][1]:
                a, b = c["params"]
                text = f"ok, shrunk {a} -> {b} params" if b < a else f"ok but NOT shrunk ({a} params)"
            problems = [_problem(p) for p in c.get("problems", []) if not p.startswith("not smaller")]
            if problems:
                text += " **" + "; ".join(problems) + "**"
            cells.append(f"0, {row['seconds']:.0f}s: {text}".replace("|", "/"))
        lines.append(f"| {fam} | " + " | ".join(cells) + " |")
    notes = [f"- {f}: {s}" for f, s in build_status.items() if f in families]
    text = (
        "\n".join(lines)
        + ("\n\nBuild (hidden 32, 2 layers, vocab 128, FFN 64):\n" + "\n".join(notes) if notes else "")
        + "\n"
    )
    return text


def section(text: str) -> str:
    m = machine()
    return "\n".join(
        [
            HEADING,
            "",
            f"`.venv/bin/python bench/decoder_families.py all` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())};"
            f" {m['cpu']}, {m['cores']} cores, shared). One tiny random causal LM per KerasHub family (the module"
            " docstring says how it is built); each command is `prunecli prune|plan|inspect` in a subprocess; an"
            " exit-0 output is loaded, fed tokens and asked to generate(). Bold: an exit code other than 0, or an"
            " exit 0 that did not do what was asked. Exit 2/3 with a one-line message is a refusal.",
            "",
            text,
        ]
    )


def main(argv=None) -> int:
    steps = {"build": build, "run": run, "check": check, "check_family": check_family, "table": table}
    return family_bench_main(
        argv,
        __doc__,
        "bench/DECODERS.md",
        FAMILIES,
        COMMANDS,
        DEFAULT_DIR,
        steps,
        lambda text: write_decoders_section(HEADING, section(text)),
    )


if __name__ == "__main__":
    sys.exit(main())
