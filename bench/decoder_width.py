"""A KerasHub Llama-style decoder shrunk for real, by width (key/value groups, SwiGLU units, residual
channels) and by depth (whole blocks), to 0.75x and 0.5x of its parameters, then fine-tuned for one epoch,
plainly or distilled from the dense model: held-out perplexity, parameters, file size, prefill tokens/s.

    .venv/bin/python bench/decoder_width.py                    # 3 seeds
    .venv/bin/python bench/decoder_width.py --seeds 2 --until 12:25
    .venv/bin/python bench/decoder_width.py --render-only      # the table again from the cached results
    .venv/bin/python bench/decoder_width.py --family gpt2 --seeds 1   # the GPT-2-style subsection

The dense model is built and trained once by bench/decoder_oneshot.py's own `build`/`train`/`token_file`
(keras_hub LlamaBackbone from its config, nothing downloaded: hidden 128, 4 layers, 8 query / 4
key-value heads of 16 (GQA), SwiGLU FFN 512, RMSNorm, rotary positions; byte vocabulary 256; AdamW 2e-3,
batches of 32 x 128 tokens of the Python standard library's source, for --steps or --train-seconds,
whichever ends first). The token .npz is decoder_oneshot's: 2,048 training rows of 128 tokens (one
fine-tuning epoch = 32 batches of 64) and 64 held-out rows (8,192 tokens), on which perplexity is
measured. The seeds are those of pruning and fine-tuning (`--seed`: shuffling, scoring batches), not of
the dense model, which is trained once.

Each run goes through prunecli's Python API exactly as `prunecli prune` runs it
(`prunecli.prune(build_config({...}))`; the equivalent command lines are printed in the table's text):

* heads: `-g head -s S --shrink` (whole key/value groups and their query heads; the most it can remove is
  3 of 4 groups, which does not reach 0.75x: attention is under a fifth of the parameters here);
* FFN: `-g neuron -s S --shrink` (SwiGLU units, gate/up/down together);
* hidden: `-g hidden -s S --shrink` (residual channels: embedding, norms, every projection);
* depth: `-g layer --remove-layers N --score-batches 4` (whole decoder blocks, by loss increase on 4
  batches when bypassed);
* Minitron-style: hidden, then heads, then FFN, each a little, chained (each run's output is the next
  run's input), the last run fine-tuned; with --distill its teacher is the dense model, passed as
  `--teacher model.keras` (without it prunecli's --distill teaches with the run's own input, here a model
  whose hidden width and heads were already pruned one-shot).

The sparsity that reaches each parameter target is computed from the architecture (every term of the
parameter count is linear in the removed units; `--sparsity` is applied as round(S x units) per layer)
and checked against the report's parameter count, which the table shows. Scores are the default
(magnitude), so one-shot perplexity is the same for every seed except depth (scored on seeded batches).
Fine-tuning: `--epochs 1 --optimizer adamw:weight_decay=0.01 --lr 0.001` (the training optimizer, given
explicitly: without --optimizer the report says Adam at 2e-5 "from model", KerasHub's default, since a
saved KerasHub causal LM does not restore its compile config), with `--distill` (T 2, weight 0.5) or
without. A dense row fine-tuned the same way (`-s 0`) is the fair baseline for the fine-tuned columns.

Speed: prefill, one traced (tf.function) forward pass of the causal LM over a fixed batch of 32 x 128
held-out tokens, the models interleaved over rounds, the minimum over all passes reported; decode, as
prunecli's report measures it (outputs/decoder_blocks.py: 32 cached greedy steps at batch 1, one traced
`call_with_cache` per token), the best of two. Speed depends on the shapes only, so it is measured on
the first seed's files.

Results are cached as they come (JSON under --cache), so a stopped run resumes; `--until HH:MM` (UTC)
starts no run after that time and writes the table of what was measured (cells with fewer seeds say n=).
`--rows dense,minitron` runs and prints only those rows (the section is not written from a partial table).
Results go to bench/TRANSFORMER.md, section "## KerasHub decoder shrunk for real: width and depth (issue 28)".

`--family gpt2` measures decoder_oneshot's GPT-2-style decoder instead (keras_hub GPT2Backbone: hidden 128,
4 layers, 4 heads of 32 with q/k/v/output biases, GELU FFN 512 with biases, LayerNorm, learned positions,
LM head tied to the token embedding) and writes only the subsection "### GPT-2-style decoder" at the end of
that section (a Llama run keeps that subsection as it is). Its rows: dense, FFN units, residual channels and
whole blocks at 0.75x and 0.5x, heads (3 of 4 per block, the most prunecli removes: 0.765x) and the
Minitron-style chain (residual channels go through LayerNorms as prunecli's NarrowedLayerNormalization,
which keeps the dense width in its statistics). The parameter
formulas count the biases (a head: 4 x 128 x 32 kernel entries + 3 x 32 q/k/v biases per block; an FFN unit:
2 x 128 + 1) and are checked against every report's parameter count in the subsection. Its cache files are
gpt2_width_results.json, gpt2_width_speed.json and out_gpt2/ beside the Llama ones.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import decoder_oneshot as oneshot  # noqa: E402
from bench.bench_common import ROOT, load_average, machine, replace_section, scratch, table  # noqa: E402

OUT = ROOT / "bench" / "TRANSFORMER.md"
HEADING = "## KerasHub decoder shrunk for real: width and depth (issue 28)"
ARCH = {"hidden": 128, "layers": 4, "heads": 8, "kv_heads": 4, "ffn": 512}
HEAD_DIM = ARCH["hidden"] // ARCH["heads"]
VOCAB = oneshot.VOCAB
FINETUNE = {"epochs": 1, "optimizer": "adamw:weight_decay=0.01", "learning_rate": 1e-3}
DISTILL_T = 2.0
SPEED_BATCH = 32  # rows of 128 tokens in the timed prefill batch
GOAL_PPL, GOAL_SPEED = 1.10, 1.25  # issue 28 at 0.75x parameters
FAMILY = "llama"  # the decoder this run measures (set by main: --family)
GPT2 = dict(oneshot.FAMILIES["gpt2"])  # decoder_oneshot's GPT-2-style widths: hidden 128, 4 layers, 4 heads, FFN 512
GPT2_HEAD_DIM = GPT2["hidden"] // GPT2["heads"]
GPT2_HEADING = "### GPT-2-style decoder"


# ---- what to run ---------------------------------------------------------------------------------------


def _attention_params(hidden: int, kv_groups: int) -> int:
    """q, k, v and output kernels of one block with `kv_groups` key/value groups (no biases in Llama)."""
    q = kv_groups * (ARCH["heads"] // ARCH["kv_heads"]) * HEAD_DIM  # each group: its query heads
    kv = kv_groups * HEAD_DIM
    return 2 * hidden * q + 2 * hidden * kv


def _block_params(hidden: int) -> int:
    if FAMILY == "gpt2":
        return _gpt2_block_params(GPT2["heads"], GPT2["ffn"])
    return _attention_params(hidden, ARCH["kv_heads"]) + 3 * hidden * ARCH["ffn"] + 2 * hidden


def macs_per_token(row: dict, params: int) -> float:
    """Theoretical multiply-adds per token of a prefill at 128 tokens: every projection, the LM head
    (untied) and the two attention products over all 128 positions (as Keras computes them, mask or not).
    The kept FFN width is solved from the parameter count; hidden, groups and blocks from the row."""
    if FAMILY == "gpt2":
        return gpt2_macs_per_token(row)
    h, n_layers, groups = ARCH["hidden"], ARCH["layers"], ARCH["kv_heads"]
    for step in row["steps"]:
        if step["granularity"] == "hidden":
            h -= round(step["sparsity"] * h)
        elif step["granularity"] == "head":
            groups -= round(step["sparsity"] * groups)
        elif step["granularity"] == "layer":
            n_layers -= step["remove_layers"]
    attn = _attention_params(h, groups)
    ffn = (params - 2 * VOCAB * h - h - n_layers * (attn + 2 * h)) / (3 * h * n_layers)
    q_heads = groups * ARCH["heads"] // ARCH["kv_heads"]
    return h * VOCAB + n_layers * (attn + 3 * h * ffn + 2 * oneshot.SEQ * q_heads * HEAD_DIM)


def runs(dense_params: int) -> list[dict]:
    """Each row: a label, the requested target, and the prune steps (the last one is fine-tuned)."""
    h, n_layers, ffn = ARCH["hidden"], ARCH["layers"], ARCH["ffn"]
    out = [{"key": "dense", "label": "dense, fine-tuned the same way (`-s 0`)", "target": 1.0, "steps": []}]

    def ffn_row(t):
        r = math.ceil((1 - t) * dense_params / (3 * h * n_layers))
        return {"granularity": "neuron", "sparsity": round(r / ffn, 6), "shrink": True}

    def depth_row(t):
        n = max(1, round((1 - t) * dense_params / _block_params(h)))
        return {"granularity": "layer", "remove_layers": n, "shrink": True, "score_batches": 4}

    # Minitron-style at 0.75x: hidden 128 -> 112, one key/value group of 4 per block, then FFN units to fit
    h2 = h - 16
    after = dense_params * h2 // h - n_layers * _attention_params(h2, 1)
    r = max(0, math.ceil((after - 0.75 * dense_params) / (3 * h2 * n_layers)))
    minitron = [
        {"granularity": "hidden", "sparsity": round(16 / h, 6), "shrink": True},
        {"granularity": "head", "sparsity": 0.25, "shrink": True},
        {"granularity": "neuron", "sparsity": round(r / ffn, 6), "shrink": True},
    ]
    for t in (0.75, 0.5):
        out += [
            {"key": f"ffn{t}", "label": "FFN units", "target": t, "steps": [ffn_row(t)]},
            {
                "key": f"hidden{t}",
                "label": "hidden channels",
                "target": t,
                "steps": [{"granularity": "hidden", "sparsity": round(1 - t, 6), "shrink": True}],
            },
            {"key": f"depth{t}", "label": "whole blocks", "target": t, "steps": [depth_row(t)]},
        ]
        if t == 0.75:
            out.append(
                {
                    "key": "heads",
                    "label": "key/value groups (3 of 4: the most)",
                    "target": 0.75,
                    "steps": [{"granularity": "head", "sparsity": 0.75, "shrink": True}],
                }
            )
            out.append(
                {"key": "minitron", "label": "Minitron-style: hidden+heads+FFN", "target": 0.75, "steps": minitron}
            )
    return out


# ---- GPT-2-style (--family gpt2) ---------------------------------------------------------------------


def _gpt2_attention_params(heads: int, h: int = GPT2["hidden"]) -> int:
    """q, k, v kernels and biases of `heads` heads of 32 (head size kept) over a residual width h, the
    output kernel's rows of them, and the output bias (h, kept whatever the heads)."""
    d = GPT2_HEAD_DIM
    return heads * (4 * h * d + 3 * d) + h


def _gpt2_block_params(heads: int, ffn: int, h: int = GPT2["hidden"]) -> int:
    """One TransformerDecoder block over a residual width h: attention, two LayerNorms (gamma, beta), the
    un-gated FFN (intermediate kernel and bias per unit, output kernel row per unit, output bias)."""
    return _gpt2_attention_params(heads, h) + 4 * h + 2 * h * ffn + ffn + h


def gpt2_shape(row: dict) -> tuple[int, int, int, int]:
    """(residual width, heads, FFN units, blocks) a row leaves: `--sparsity` removes round(S x units) per
    block, at most all but one head; residual channels in multiples of 8 (-g hidden keeps the width one)."""
    hidden, heads, ffn, n_layers = GPT2["hidden"], GPT2["heads"], GPT2["ffn"], GPT2["layers"]
    for step in row["steps"]:
        if step["granularity"] == "hidden":
            gone = round(step["sparsity"] * hidden)
            hidden -= gone - gone % 8
        elif step["granularity"] == "head":
            heads -= min(round(step["sparsity"] * heads), heads - 1)
        elif step["granularity"] == "neuron":
            ffn -= round(step["sparsity"] * ffn)
        elif step["granularity"] == "layer":
            n_layers -= step["remove_layers"]
    return hidden, heads, ffn, n_layers


def gpt2_params(row: dict) -> int:
    """The parameters a row should leave: token embedding (tied with the LM head), learned positions
    (128 x hidden), the final LayerNorm, and the blocks; checked against prunecli's report."""
    h, heads, ffn, n_layers = gpt2_shape(row)
    return VOCAB * h + oneshot.SEQ * h + 2 * h + n_layers * _gpt2_block_params(heads, ffn, h)


def gpt2_macs_per_token(row: dict) -> float:
    """Multiply-adds per token of a prefill at 128 tokens: q/k/v/output projections, the FFN, the tied LM
    head and the two attention products over all 128 positions (biases and norms not counted)."""
    h, heads, ffn, n_layers = gpt2_shape(row)
    width = heads * GPT2_HEAD_DIM
    return h * VOCAB + n_layers * (4 * h * width + 2 * h * ffn + 2 * oneshot.SEQ * width)


def gpt2_runs(dense_params: int) -> list[dict]:
    """The GPT-2 rows: FFN units, residual channels, heads (3 of 4, the most), whole blocks, and the
    Minitron-style chain (hidden 128 -> 112, one head of 4 per block, then FFN units to fit 0.75x)."""
    h, n_layers, ffn = GPT2["hidden"], GPT2["layers"], GPT2["ffn"]
    out = [{"key": "dense", "label": "dense, fine-tuned the same way (`-s 0`)", "target": 1.0, "steps": []}]

    def ffn_row(t):
        r = math.ceil((1 - t) * dense_params / ((2 * h + 1) * n_layers))  # kernel column, bias, kernel row
        return {"granularity": "neuron", "sparsity": round(r / ffn, 6), "shrink": True}

    def depth_row(t):
        n = max(1, round((1 - t) * dense_params / _gpt2_block_params(GPT2["heads"], ffn)))
        return {"granularity": "layer", "remove_layers": n, "shrink": True, "score_batches": 4}

    h2, heads2 = h - 16, GPT2["heads"] - 1
    after = VOCAB * h2 + oneshot.SEQ * h2 + 2 * h2 + n_layers * _gpt2_block_params(heads2, ffn, h2)
    r = max(0, math.ceil((after - 0.75 * dense_params) / ((2 * h2 + 1) * n_layers)))
    minitron = [
        {"granularity": "hidden", "sparsity": round(16 / h, 6), "shrink": True},
        {"granularity": "head", "sparsity": 0.25, "shrink": True},
        {"granularity": "neuron", "sparsity": round(r / ffn, 6), "shrink": True},
    ]
    for t in (0.75, 0.5):
        out.append({"key": f"ffn{t}", "label": "FFN units", "target": t, "steps": [ffn_row(t)]})
        out.append(
            {
                "key": f"hidden{t}",
                "label": "hidden channels",
                "target": t,
                "steps": [{"granularity": "hidden", "sparsity": round(1 - t, 6), "shrink": True}],
            }
        )
        if t == 0.75:
            out.append(
                {
                    "key": "heads",
                    "label": "heads (3 of 4: the most)",
                    "target": 0.75,
                    "steps": [{"granularity": "head", "sparsity": 0.75, "shrink": True}],
                }
            )
        out.append({"key": f"depth{t}", "label": "whole blocks", "target": t, "steps": [depth_row(t)]})
        if t == 0.75:
            out.append(
                {"key": "minitron", "label": "Minitron-style: hidden+heads+FFN", "target": 0.75, "steps": minitron}
            )
    return out


def command(step: dict, model: str, variant: str | None, seed, teacher: str | None = None) -> str:
    flags = {
        "granularity": "-g",
        "sparsity": "-s",
        "remove_layers": "--remove-layers",
        "score_batches": "--score-batches",
    }
    parts = ["prunecli prune", model]
    for key, flag in flags.items():
        if key in step:
            parts.append(f"{flag} {step[key]:g}" if isinstance(step[key], float) else f"{flag} {step[key]}")
    if step.get("shrink"):
        parts.append("--shrink")
    parts.append(f"--data tokens.npz --seed {seed}")
    if variant:
        parts.append(f"--epochs 1 --optimizer {FINETUNE['optimizer']} --lr {FINETUNE['learning_rate']:g}")
        if variant == "distill":
            parts.append(f"--distill {DISTILL_T:g}" + (f" --teacher {teacher}" if teacher else ""))
    return " ".join(parts)


# ---- running -------------------------------------------------------------------------------------------


def prune_step(
    model_path: Path, data: Path, out: Path, step: dict, variant: str | None, seed: int, teacher: Path | None = None
) -> dict:
    """One `prunecli prune` run through the Python API; what the table needs from its report. `teacher`:
    the --distill teacher's file when it is not `model_path` (a chain's last run distils from the dense
    model, not from the one-shot pruned model it is given)."""
    import prunecli

    values = {
        "model_path": str(model_path),
        "data": str(data),
        "seed": seed,
        "output": str(out),
        "force": True,
        "quiet": True,
        "sizes": False,
        **step,
    }
    if variant:
        values.update(FINETUNE)
        if variant == "distill":
            values["distill"] = DISTILL_T
            if teacher is not None:
                values["teacher"] = str(teacher)
    start = time.perf_counter()
    report = prunecli.prune(prunecli.build_config(values, environ={})).report.to_dict()
    m = report["metrics"]
    return {
        "before": m["before"]["perplexity"],
        "after": m["after_pruning"]["perplexity"] if "after_pruning" in m else m["before"]["perplexity"],
        "finetuned": m.get("after_finetune", {}).get("perplexity"),
        "params": report["totals"]["params"],
        "bytes": os.path.getsize(out),
        "steps": (report.get("finetune") or {}).get("steps"),
        "teacher": ((report.get("finetune") or {}).get("distill") or {}).get("teacher"),
        "removed_layers": report.get("removed_layers"),
        "seconds": round(time.perf_counter() - start, 1),
    }


def run_row(row: dict, dense: Path, data: Path, out_dir: Path, variant: str, seed: int, results: dict) -> dict:
    """Run a row's steps (the earlier ones one-shot, cached across seeds and variants: magnitude scores are
    seed-free), the last fine-tuned as `variant`, distilled (if so) from the dense model."""
    steps = row["steps"] or [{"granularity": "element", "sparsity": 0.0}]
    src = dense
    for i, step in enumerate(steps[:-1]):
        out = out_dir / f"{row['key']}_step{i}.keras"
        key = f"{row['key']}|step{i}"
        if key not in results or not out.exists():
            results[key] = prune_step(src, data, out, step, None, 0)
        src = out
    out = out_dir / f"{row['key']}_{variant}_s{seed}.keras"
    res = prune_step(src, data, out, steps[-1], variant, seed, teacher=dense if src != dense else None)
    if len(steps) > 1:
        res["before"] = results[f"{row['key']}|step0"]["before"]  # the dense model's, not the step's input
    return res


SPEED_ROUNDS, SPEED_REPEATS = 10, 4


def prefill_speed(paths: dict[str, Path], rows, rounds: int = SPEED_ROUNDS, repeats: int = SPEED_REPEATS) -> dict:
    """Tokens/s of one traced forward pass over `rows` (int32 [B, T]) per model: the models interleaved
    over `rounds`, `repeats` passes each per round, the minimum over all passes (interference only adds)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from prunecli.structure.transformer import register_hub_layers

    register_hub_layers()
    x = {"token_ids": tf.constant(rows, tf.int32), "padding_mask": tf.constant(np.ones_like(rows), tf.int32)}
    fns = {}
    for name, path in paths.items():
        model = keras.saving.load_model(path, compile=False)
        fn = tf.function(lambda xs, m=model: m(xs, training=False))
        for _ in range(2):
            np.asarray(fn(x))
        fns[name] = (model, fn)
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, (_model, fn) in fns.items():
            for _ in range(repeats):
                t0 = time.perf_counter()
                np.asarray(fn(x))
                times[name].append(time.perf_counter() - t0)
    tokens = rows.size
    out = {
        name: {"tokens_per_s": tokens / min(t), "median_s": sorted(t)[len(t) // 2], "min_s": min(t)}
        for name, t in times.items()
    }
    from prunecli.outputs import decoder_blocks

    for _ in range(2):  # decode as prunecli's report measures it (cached steps at batch 1), the best of two
        for name, (model, _fn) in fns.items():
            rate = decoder_blocks.tokens_per_second(model, 128, 0)["decode"]
            out[name]["decode_tokens_per_s"] = max(rate or 0.0, out[name].get("decode_tokens_per_s", 0.0))
    return out


# ---- the table -----------------------------------------------------------------------------------------


SEEDS: list[int] = []  # the seeds the table shows (set by main)


def _vals(results, key, variant, field):
    return [
        v[field]
        for k, v in results.items()
        if k.startswith(f"{key}|{variant}|") and v.get(field) is not None and int(k.rsplit("|", 1)[1]) in SEEDS
    ]


def _stat(vals):
    if not vals:
        return None
    return sum(vals) / len(vals), (max(vals) - min(vals)) / 2, len(vals)


def _cell(vals, seeds: int, fmt: str = "{:.3f}") -> str:
    s = _stat(vals)
    if s is None:
        return "-"
    mean, half, n = s
    text = fmt.format(mean) if n == 1 or half == 0 else f"{fmt.format(mean)} ± {fmt.format(half)}"
    return text if n == seeds else f"{text} (n={n})"


def _llama_intro(meta, seeds, cmd, run_s, n_results, dense_params) -> list[str]:
    return [
        HEADING,
        "",
        f"{cmd} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (f"; its {n_results} prune runs took {run_s / 60:.0f} min in all" if run_s else "")
        + "). A KerasHub Llama-style causal LM built from its config (keras_hub LlamaBackbone: hidden 128, "
        "4 layers, 8 query / 4 key-value heads of 16 (GQA), SwiGLU FFN 512, RMSNorm, rotary positions; "
        f"byte vocabulary 256; {dense_params:,} parameters), trained here once by "
        f"`bench/decoder_oneshot.py`'s `train` ({meta['steps']} steps of {meta['batch']} x 128 tokens of the "
        f"Python standard library's source, {meta['train_s']:.0f} s, AdamW 2e-3), then shrunk by "
        "`prunecli prune ... --shrink` through the Python API, default (magnitude) scores, and fine-tuned "
        "for one epoch (2,048 rows of 128 tokens = 32 batches of 64; `--optimizer adamw:weight_decay=0.01 "
        f"--lr 0.001`), plainly or with `--distill {DISTILL_T:g}` (the dense model as teacher, weight 0.5). "
        f"Seeds {seeds} are the pruning/fine-tuning seeds (shuffling; depth's scoring batches); the dense "
        "model is trained once. Cells: mean ± half-range over the seeds. Perplexity: held-out rows (every "
        "tenth stdlib file; 64 x 128 = 8,192 tokens), lower is better.",
        "",
        "Commands (model = the trained dense .keras; the Minitron-style row chains its three runs, each "
        "reading the previous output, only the last fine-tuned):",
        "",
    ]


def _gpt2_intro(meta, seeds, cmd, run_s, n_results, dense_params) -> list[str]:
    g = GPT2
    return [
        GPT2_HEADING,
        "",
        f"{cmd} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (f"; its {n_results} prune runs took {run_s / 60:.0f} min in all" if run_s else "")
        + f"). The same measurement for a KerasHub GPT-2-style causal LM built from its config (keras_hub "
        'GPT2Backbone, `bench/decoder_oneshot.py`\'s "gpt2" family: '
        f"hidden {g['hidden']}, {g['layers']} layers, "
        f"{g['heads']} heads of {GPT2_HEAD_DIM} with q/k/v/output biases, GELU FFN {g['ffn']} with biases, "
        "LayerNorm, learned positions (128), LM head tied to the token embedding; byte vocabulary 256; "
        f"{dense_params:,} parameters), trained here once by `bench/decoder_oneshot.py`'s `train` "
        f"({meta['steps']} steps of {meta['batch']} x 128 tokens, {meta['train_s']:.0f} s, AdamW 2e-3), then "
        "shrunk and fine-tuned exactly as the Llama table above (same data, optimizer, epoch, `--distill "
        f"{DISTILL_T:g}`). "
        + (
            f"Seeds {seeds} (fine-tuning's shuffling): cells are mean ± half-range. "
            if len(seeds) > 1
            else f"One seed only ({seeds}; the Llama table has three), so the cells carry no spread. "
        )
        + "Residual channels go through the LayerNorms as NarrowedLayerNormalization (the dense width kept "
        "in its statistics, so the narrowed model equals the masked one; the width removed in multiples of 8). "
        "Heads "
        "are removed with their q/k/v bias slices and the output kernel's rows, the head size kept; FFN units "
        "with their intermediate column and bias and the output row. The sparsity for each target is "
        "computed from the architecture with the biases counted (a head is 4 x 128 x 32 + 3 x 32 = 16,480 "
        "parameters per block, an FFN unit 2 x 128 + 1 = 257), and the resulting count is checked against "
        "prunecli's report below the table.",
        "",
        "Commands (model = the trained dense .keras):",
        "",
    ]


def _commands(lines: list[str], rows, m, meta) -> None:
    shown = set()
    lines.append(
        "- dense, fine-tuned the same way: `prunecli prune model.keras -s 0 --data tokens.npz --seed N --epochs 1 "
        f"--optimizer {FINETUNE['optimizer']} --lr {FINETUNE['learning_rate']:g}`"
    )
    for row in rows:
        for i, step in enumerate(row["steps"]):
            last = i == len(row["steps"]) - 1
            chained = last and i > 0  # a chain's last run distils from the dense model, not from its input
            c = command(
                step,
                "model.keras" if i == 0 else f"step{i}.keras",
                "distill" if last else None,
                "N",
                teacher="model.keras" if chained else None,
            )
            if c not in shown:
                shown.add(c)
                lines.append(f"- {row['label']} ({row['target']:g}x){'' if last else f', step {i + 1}'}: `{c}`")
    lines += [
        "- plain fine-tuning: the same without `--distill 2` (and `--teacher`); one-shot: the perplexity right after pruning, "
        "before fine-tuning (the same run's report).",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, shared with other jobs; load average at "
        f"the end {load_average()} (training: {meta['load_average']}).",
        "",
    ]


def render(results: dict, meta: dict, speed: dict, rows: list[dict], seeds: list[int], args):
    first = next((v for k, v in results.items() if "|plain|" in k or "|distill|" in k), None)
    dense_ppl = first["before"] if first else float("nan")
    dense_params = meta["params"]
    dense_bytes = _vals(results, "dense", "plain", "bytes")
    dense_bytes = dense_bytes[0] if dense_bytes else None
    dense_tps = speed.get("dense", {}).get("tokens_per_s")
    dense_decode = speed.get("dense", {}).get("decode_tokens_per_s")
    cmd = "`.venv/bin/python bench/decoder_width.py" + "".join(
        f" {flag} {value}"
        for flag, value in (
            ("--family", "gpt2" if FAMILY == "gpt2" else None),
            ("--seeds", args.seeds),
            ("--until", args.until),
        )
        if value
    )
    cmd += "`"
    run_s = sum(v.get("seconds", 0) for v in results.values())
    dense_macs = macs_per_token(rows[0], dense_params)
    m = machine()
    if FAMILY == "gpt2":
        lines = _gpt2_intro(meta, seeds, cmd, run_s, len(results), dense_params)
    else:
        lines = _llama_intro(meta, seeds, cmd, run_s, len(results), dense_params)
    _commands(lines, rows, m, meta)
    headers = [
        "run",
        "target",
        "params (x dense)",
        "file MB",
        "one-shot ppl",
        "+1 epoch ppl",
        "+1 epoch distill ppl",
        "distill / dense",
        "MACs/token (x dense)",
        "prefill tokens/s (x dense)",
        "decode tokens/s (x dense)",
    ]
    body = [
        [
            "dense",
            "1.00x",
            f"{dense_params:,} (1.00x)",
            f"{dense_bytes / 1e6:.2f}" if dense_bytes else "-",
            f"{dense_ppl:.3f}",
            _cell(_vals(results, "dense", "plain", "finetuned"), len(seeds)),
            "-",
            "1.00",
            f"{dense_macs / 1e6:.3f}M (1.00x)",
            f"{dense_tps:,.0f} (1.00x)" if dense_tps else "-",
            f"{dense_decode:,.0f} (1.00x)" if dense_decode else "-",
        ]
    ]
    for row in rows:
        if row["key"] == "dense":
            continue
        params = _vals(results, row["key"], "distill", "params") or _vals(results, row["key"], "plain", "params")
        if not params:
            body.append([row["label"], f"{row['target']:.2f}x"] + ["not run"] + ["-"] * 8)
            continue
        nbytes = _vals(results, row["key"], "distill", "bytes") or _vals(results, row["key"], "plain", "bytes")
        oneshot_ppl = _vals(results, row["key"], "plain", "after") or _vals(results, row["key"], "distill", "after")
        distilled = _stat(_vals(results, row["key"], "distill", "finetuned"))
        tps = speed.get(row["key"], {}).get("tokens_per_s")
        dec = speed.get(row["key"], {}).get("decode_tokens_per_s")
        body.append(
            [
                row["label"],
                f"{row['target']:.2f}x",
                f"{params[0]:,} ({params[0] / dense_params:.2f}x)",
                f"{nbytes[0] / 1e6:.2f}",
                _cell(oneshot_ppl, len(seeds)),
                _cell(_vals(results, row["key"], "plain", "finetuned"), len(seeds)),
                _cell(_vals(results, row["key"], "distill", "finetuned"), len(seeds)),
                f"{distilled[0] / dense_ppl:.2f}" if distilled else "-",
                f"{macs_per_token(row, params[0]) / 1e6:.3f}M ({macs_per_token(row, params[0]) / dense_macs:.2f}x)",
                f"{tps:,.0f} ({tps / dense_tps:.2f}x)" if tps and dense_tps else "-",
                f"{dec:,.0f} ({dec / dense_decode:.2f}x)" if dec and dense_decode else "-",
            ]
        )
    lines.append(table(headers, body))
    lines.append("")
    if speed and FAMILY == "gpt2":
        lines.append(
            f"Prefill: {speed.get('_batch', SPEED_BATCH)} x 128 tokens per pass, fastest of "
            f"{speed.get('_passes', '?')} traced passes per model, models interleaved; the distilled files. "
            "Decode: 32 cached greedy steps at batch 1 after a 16-token prompt, one traced `call_with_cache` "
            "per token (prunecli's `decoder` report), best of two; at this size a step is mostly per-step "
            "overhead, so the decode ratios are within noise (see the Llama table's note)." + _previous_timings(speed)
        )
        lines.append("")
        lines += gpt2_param_check(results, rows, meta["params"])
    elif speed:
        lines.append(
            f"Prefill: {speed.get('_batch', SPEED_BATCH)} x 128 tokens per pass, fastest of {speed.get('_passes', '?')} traced passes "
            "per model, models interleaved; the first seed's distilled files. Decode: 32 cached greedy steps at "
            "batch 1 after a 16-token prompt, one traced `call_with_cache` per token (prunecli's `decoder` "
            "report), best of two; at this model size a step is ~5 ms of per-step overhead, and the dense model "
            "and its identity rebuild (every block prunecli's, nothing removed) timed 159-253 and 165-214 "
            "tokens/s over three rounds, so the decode ratios here are within noise." + _previous_timings(speed)
        )
        lines.append("")
    lines += reading(results, rows, dense_ppl, dense_params, speed, len(seeds))
    return "\n".join(lines)


def _previous_timings(speed: dict) -> str:
    """The earlier timing of the same files (a rerun re-times them), as a check on the noise."""
    old = speed.get("_previous") or {}
    if "dense" not in old:
        return ""
    keys = [k for k in old if k != "dense" and not k.startswith("_") and k in speed]
    ratio = lambda d, k: d[k]["tokens_per_s"] / d["dense"]["tokens_per_s"]  # noqa: E731
    moved = max((abs(ratio(speed, k) - ratio(old, k)) for k in keys), default=0.0)
    rows = old.get("_batch", "?")
    return (
        f" The timing before this one ({rows} x 128 tokens, {old.get('_passes', '?')} passes each; dense "
        f"{old['dense']['tokens_per_s']:,.0f} tokens/s) gave: "
        + ", ".join(f"{k} {ratio(old, k):.2f}x" for k in keys)
        + f"; the ratios moved by up to {moved:.2f} between timings on this shared machine, so a ratio within "
        "that of 1.25 is not a clear verdict either way."
    )


def reading(results, rows, dense_ppl, dense_params, speed, n_seeds) -> list[str]:
    """Issue 28's goals at 0.75x parameters, row by row: met / NOT met, with the figures."""
    out = ["**Reading it.**", ""]
    dense_tps = speed.get("dense", {}).get("tokens_per_s")
    tuned = _stat(_vals(results, "dense", "plain", "finetuned"))
    if tuned:
        out.append(
            f"The dense model was trained briefly and is not converged: the same epoch of fine-tuning alone "
            f"takes it from {dense_ppl:.3f} to {tuned[0]:.3f}, so part of every pruned row's recovery is just "
            "more training. The goal below is checked against the dense model as trained (the issue's "
            "wording); against the dense model given the same epoch the gaps are larger, and each line "
            "gives both."
        )
        out.append("")
    out.append(
        f"Issue 28's goals at 0.75x parameters: perplexity after distillation within {GOAL_PPL - 1:.0%} of dense "
        f"(at most {GOAL_PPL * dense_ppl:.3f}) and prefill tokens/s at least {GOAL_SPEED:.2f}x dense:"
    )
    out.append("")
    verdicts = []
    for row in rows:
        if row["target"] != 0.75 or row["key"] == "dense":
            continue
        params = _vals(results, row["key"], "distill", "params")
        d = _stat(_vals(results, row["key"], "distill", "finetuned"))
        tps = speed.get(row["key"], {}).get("tokens_per_s")
        if not params or d is None:
            out.append(f"- {row['label']}: not measured.")
            continue
        ratio = params[0] / dense_params
        ppl_ok = d[0] <= GOAL_PPL * dense_ppl
        speed_txt = "speed not measured"
        if tps and dense_tps:
            r = tps / dense_tps
            shown = f"{r:.3f}" if abs(r - GOAL_SPEED) < 0.01 else f"{r:.2f}"  # no "1.25x, NOT met" by rounding
            speed_txt = f"{shown}x tokens/s in the last timing ({'met' if r >= GOAL_SPEED else 'NOT met'})"
            old = speed.get("_previous") or {}
            if row["key"] in old and "dense" in old:
                speed_txt += (
                    f", {old[row['key']]['tokens_per_s'] / old['dense']['tokens_per_s']:.2f}x in the one before"
                )
        macs = macs_per_token(row, params[0]) / macs_per_token(rows[0], dense_params)
        speed_txt += f"; MACs/token {macs:.2f}x ({1 / macs:.2f}x if time followed MACs)"
        old = speed.get("_previous") or {}
        fast = [t for t in (speed, old) if row["key"] in t and "dense" in t]
        fast_ok = bool(fast) and all(
            t[row["key"]]["tokens_per_s"] >= GOAL_SPEED * t["dense"]["tokens_per_s"] for t in fast
        )
        verdicts.append((row["label"], ratio, ppl_ok, fast_ok, d[0] / tuned[0] - 1 if tuned else None))
        out.append(
            f"- {row['label']} ({ratio:.2f}x params{'' if abs(ratio - 0.75) < 0.03 else ', not the 0.75x asked'}): "
            f"perplexity {d[0]:.3f} ({d[0] / dense_ppl - 1:+.1%} vs dense; {'met' if ppl_ok else 'NOT met'}"
            + (f"; {d[0] / tuned[0] - 1:+.1%} vs dense fine-tuned the same epoch" if tuned else "")
            + "); "
            f"{speed_txt}."
        )
    if verdicts:
        both = [f"{label} ({r:.2f}x params)" for label, r, p, f, _t in verdicts if p and f]
        ppl_only = [label for label, _r, p, f, _t in verdicts if p and not f]
        strict = [f"{label} ({t:+.1%})" for label, _r, _p, _f, t in verdicts if t is not None and t <= GOAL_PPL - 1]
        out.append("")
        out.append(
            "In short: both goals held, the speed one in every timing, for "
            + (", ".join(both) if both else "no row")
            + "; the perplexity goal alone for "
            + (", ".join(ppl_only) if ppl_only else "no other row")
            + ". Against the dense model given the same epoch of training, within 10%: "
            + (", ".join(strict) if strict else "no row")
            + ". The speed figures, from one shared 2-core machine, are the weakest part of this table (see "
            "the two timings above)."
        )
    out.append("")
    out += observations(results, rows, dense_ppl)
    return out


def observations(results, rows, dense_ppl) -> list[str]:
    """What else the table says, computed from it: distillation against plain fine-tuning, the blocks
    removed, the Minitron teacher, the heads' ceiling."""
    out = []
    worse, better = [], []
    for row in rows:
        plain = _stat(_vals(results, row["key"], "plain", "finetuned"))
        dist = _stat(_vals(results, row["key"], "distill", "finetuned"))
        if plain and dist and row["key"] != "dense":
            (worse if dist[0] > plain[0] else better).append(
                f"{row['label']} {row['target']:g}x: {dist[0]:.3f} vs {plain[0]:.3f}"
            )
    if worse or better:
        out.append(
            f"- `--distill 2` against plain fine-tuning (same epoch, same optimizer): worse in {len(worse)} of "
            f"{len(worse) + len(better)} rows ({'; '.join(worse) or 'none'})"
            + (f", better in {'; '.join(better)}" if better else "")
            + ". Likely because the teacher is the dense model as trained, which one more epoch of plain "
            "training beats: half the loss pulls the student toward a worse model. With one epoch, "
            "distillation did not pay here."
        )
    for row in rows:
        removed = {
            tuple(v["removed_layers"])
            for k, v in results.items()
            if k.startswith(f"{row['key']}|") and v.get("removed_layers") and int(k.rsplit("|", 1)[1]) in SEEDS
        }
        if removed:
            out.append(
                f"- {row['label']} {row['target']:g}x removed "
                + " / ".join(", ".join(r) for r in sorted(removed))
                + f" (by loss increase on 4 batches; a block is {_block_params(ARCH['hidden']):,} parameters)."
            )
    step = results.get("minitron|step1")
    taught = {  # results from before `--teacher` say none: their teacher was the run's input
        v.get("teacher") or "the input model" for k, v in results.items() if k.startswith("minitron|distill|")
    }
    if step and taught:
        dense_taught = "the input model" not in taught
        out.append(
            "- Minitron-style: the last run's `--distill` teacher is "
            + (
                f"the dense model (`--teacher model.keras`, perplexity {dense_ppl:.3f}), not the model that run "
                f"is given (hidden and heads already pruned one-shot, perplexity {step['after']:.3f})."
                if dense_taught
                else f"the model it was given, hidden and heads already pruned one-shot (perplexity "
                f"{step['after']:.3f}), not the dense model ({dense_ppl:.3f}): these runs predate `--teacher`."
            )
        )
    heads = _stat(_vals(results, "heads", "plain", "after"))
    if heads and FAMILY == "gpt2":
        attn = GPT2["layers"] * _gpt2_attention_params(GPT2["heads"])
        total = gpt2_params({"steps": []})
        left = gpt2_params(next(r for r in rows if r["key"] == "heads")) / total
        out.append(
            f"- Heads alone cannot quite reach 0.75x here: attention (q, k, v, output, with biases) is "
            f"{attn:,} of {total:,} parameters ({attn / total:.0%}), and prunecli keeps at least one head per "
            f"block, so removing 3 of the 4 heads per block (the most) leaves {left:.3f}x, at a one-shot "
            f"perplexity of {heads[0]:.3f}."
        )
    elif heads:
        out.append(
            f"- Heads alone cannot reach 0.75x here: attention (q, k, v, o) is 196,608 of 1,049,728 parameters "
            f"(19%), so removing 3 of the 4 key/value groups per block (and 6 of 8 query heads) leaves 0.86x, at "
            f"a one-shot perplexity of {heads[0]:.3f}."
        )
    return out


def gpt2_param_check(results, rows, dense_params) -> list[str]:
    """The parameter formulas (biases counted) against the counts prunecli's reports gave."""
    checks, bad = [], []
    for row in rows:
        got = _vals(results, row["key"], "distill", "params") + _vals(results, row["key"], "plain", "params")
        if row["key"] == "dense":
            got = got or [dense_params]
        if not got:
            continue
        want = gpt2_params(row)
        checks.append(row["key"])
        if any(g != want for g in got):
            bad.append(f"{row['label']} {row['target']:g}x: formula {want:,}, report {sorted(set(got))}")
    if not checks:
        return []
    if bad:
        return ["Parameter check: the formulas and prunecli's reports DIFFER: " + "; ".join(bad) + ".", ""]
    return [
        f"Parameter check: for all {len(checks)} rows the count in prunecli's report equals the formula "
        "(token embedding + 128 learned positions + final LayerNorm + per block: heads x (4 x 128 x 32 + "
        "3 x 32) + output bias + 2 LayerNorms + units x (2 x 128 + 1) + output bias).",
        "",
    ]


# ---- main ----------------------------------------------------------------------------------------------


def write(text: str) -> None:
    """Llama: the section up to the GPT-2 subsection (kept as it is); gpt2: that subsection only (the
    Llama text above it kept byte for byte). The section runs to the next `## ` heading."""
    lines = OUT.read_text(encoding="utf-8").splitlines() if OUT.exists() else []
    if HEADING not in lines:
        section = []
    else:
        begin = lines.index(HEADING)
        end = next((i for i in range(begin + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        section = lines[begin:end]
    cut = section.index(GPT2_HEADING) if GPT2_HEADING in section else len(section)
    llama, gpt2 = "\n".join(section[:cut]).strip("\n"), "\n".join(section[cut:]).strip("\n")
    if FAMILY == "gpt2":
        gpt2 = text.strip("\n")
    else:
        llama = text.strip("\n")
    replace_section(OUT, HEADING, llama + ("\n\n" + gpt2 if gpt2 else ""))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--cache", default=str(scratch("prunecli_width")), help="trained model, tokens, pruned files, results"
    )
    ap.add_argument("--steps", type=int, default=3000, help="training steps of the dense model (at most)")
    ap.add_argument("--train-seconds", type=float, default=540.0, help="stop training after this long")
    ap.add_argument("--seeds", type=int, default=3, help="pruning/fine-tuning seeds")
    ap.add_argument("--until", default=None, help="HH:MM UTC: start no new run after it, then time and write")
    ap.add_argument("--render-only", action="store_true", help="rewrite the section from the cached results")
    ap.add_argument(
        "--table-seeds", type=int, default=None, help="show only the first N seeds (where --until cut the last short)"
    )
    ap.add_argument("--no-write", action="store_true", help="print, do not write bench/TRANSFORMER.md")
    ap.add_argument(
        "--rows", default=None, help="comma-separated row keys (e.g. dense,minitron): run and print only these"
    )
    ap.add_argument(
        "--family",
        choices=("llama", "gpt2"),
        default="llama",
        help="llama: the section's main table; gpt2: its subsection " + repr(GPT2_HEADING),
    )
    args = ap.parse_args(argv)
    global FAMILY
    FAMILY = args.family
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from prunecli.runtime import quiet_tensorflow

    quiet_tensorflow()
    oneshot.FAMILIES["llama"] = dict(ARCH)  # decoder_oneshot's builder, this bench's widths
    cache = Path(args.cache)
    out_dir = cache / "out" if FAMILY == "llama" else cache / "out_gpt2"
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = "" if FAMILY == "llama" else "gpt2_"
    store, speed_file = cache / f"{prefix}width_results.json", cache / f"{prefix}width_speed.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    seeds = list(range(args.seeds))
    SEEDS[:] = seeds[: args.table_seeds] if args.table_seeds else seeds
    data = oneshot.token_file(cache)
    dense, meta = oneshot.train(FAMILY, cache, args.steps, args.train_seconds)
    print("dense:", json.dumps(meta), flush=True)
    rows = runs(meta["params"]) if FAMILY == "llama" else gpt2_runs(meta["params"])
    keys = set(args.rows.split(",")) if args.rows else {r["key"] for r in rows}
    if args.rows:
        unknown = keys - {r["key"] for r in rows}
        if unknown:
            ap.error(f"--rows: unknown {sorted(unknown)}; the rows are {[r['key'] for r in rows]}")
        rows = [r for r in rows if r["key"] in keys or r["key"] == "dense"]  # dense: the ratios' base, run if named
        args.no_write = True  # a partial table never replaces the section
    if not args.render_only:
        stop = False
        for seed in seeds:  # every row at the first seed before any second seed
            for row in rows:
                for variant in ("plain", "distill"):
                    if row["key"] not in keys or (row["key"] == "dense" and variant == "distill"):
                        continue
                    key = f"{row['key']}|{variant}|{seed}"
                    before_teacher = (  # a chain distilled from its own input (cached before --teacher): run again
                        variant == "distill" and len(row["steps"]) > 1 and not results.get(key, {}).get("teacher")
                    )
                    if key in results and not before_teacher:
                        continue
                    if args.until and time.strftime("%H:%M", time.gmtime()) >= args.until:
                        print(f"--until {args.until}: stopping before {key}", flush=True)
                        stop = True
                        break
                    try:
                        results[key] = run_row(row, dense, data, out_dir, variant, seed, results)
                    except Exception as exc:  # a prunecli failure is a finding: keep it and go on
                        results[key] = {"error": f"{type(exc).__name__}: {str(exc)[:500]}"}
                    store.write_text(json.dumps(results, indent=0))
                    print(time.strftime("%H:%M:%S"), key, json.dumps(results[key]), flush=True)
                if stop:
                    break
            if stop:
                break
        paths = {"dense": dense}
        for row in rows:
            path = out_dir / f"{row['key']}_distill_s{seeds[0]}.keras"
            if row["key"] != "dense" and path.exists():
                paths[row["key"]] = path
        import numpy as np

        rows_tok = np.load(data)["token_ids_test"][:SPEED_BATCH].astype("int32")
        previous = json.loads(speed_file.read_text()) if speed_file.exists() else None
        speed = prefill_speed(paths, rows_tok)
        if previous:
            previous.pop("_previous", None)
            speed["_previous"] = previous
        speed["_passes"], speed["_batch"] = SPEED_ROUNDS * SPEED_REPEATS, SPEED_BATCH
        speed_file.write_text(json.dumps(speed, indent=0))
        print(json.dumps(speed), flush=True)
    speed = json.loads(speed_file.read_text()) if speed_file.exists() else {}
    errors = {k: v["error"] for k, v in results.items() if "error" in v}
    results = {k: v for k, v in results.items() if "error" not in v}
    text = render(results, meta, speed, rows, SEEDS, args)
    if len(SEEDS) < len(seeds):
        cut = sorted({k for k in results if "|step" not in k and int(k.rsplit("|", 1)[1]) not in SEEDS})
        text += (
            f"\n\nThe table shows seeds {SEEDS} only: `--until` stopped seed {len(SEEDS)} after "
            f"{len(cut)} of {len(rows) * 2 - 1} runs, which are left out so every cell has the same seeds."
        )
    if errors:
        text += "\n\nRuns that failed (prunecli errors):\n\n" + "\n".join(f"- `{k}`: {v}" for k, v in errors.items())
    print(text)
    if not args.no_write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
