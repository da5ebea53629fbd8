"""Dense vs shrunk KerasHub Llama-style decoder: parameters and forward latency, side by side in one run.

    .venv/bin/python bench/decoder_shrink.py                  # hidden 256, 4 layers, 8/2 heads, FFN 1024, seq 128
    .venv/bin/python bench/decoder_shrink.py --batch 8 --seq 128 --json out.json

A randomly initialised keras_hub.models.LlamaBackbone (grouped-query attention, SwiGLU FFN, RMSNorm;
nothing is downloaded) is pruned through the library steps the command line runs: `-g head -s 0.5
--shrink` (removal/heads.py: whole key/value groups and their query heads deleted) and `-g neuron
-s 0.5 --shrink` (removal/ffn.py: SwiGLU units deleted from gate, up and down), then both applied one
after the other. Each shrunk model is checked against its masked model by the step itself (1e-4
relative). Latency: one traced forward pass (tf.function) on the same token batch, timed --repeats
times per round, the rows interleaved over --rounds rounds so a noisy shared machine biases no row;
the minimum over all passes is reported (interference only ever adds time) next to the median.
`GMACs` is the multiply-adds of one forward pass from the block shapes (projections, the two attention
products at full length, the three FFN kernels), for checking the timings against.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _backbone(args):
    import keras
    import keras_hub

    keras.utils.set_random_seed(args.seed)
    return keras_hub.models.LlamaBackbone(
        vocabulary_size=args.vocab,
        num_layers=args.layers,
        num_query_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        hidden_dim=args.hidden,
        intermediate_dim=args.ffn,
    )


def _config(granularity: str, sparsity: float):
    from prunecli.config import build_config

    return build_config(
        {"model_path": "llama.keras", "granularity": granularity, "sparsity": sparsity, "shrink": True}, environ={}
    )


def _heads(model, sparsity):
    from prunecli.removal import heads
    from prunecli.structure import targets

    small, _masks, section, _notes = heads.run_heads(model, targets.select(model), _config("head", sparsity))
    return small, section["verification"]["max_rel_diff"]


def _neurons(model, sparsity):
    from prunecli.removal import ffn
    from prunecli.structure import targets, transformer

    found, _notes = transformer.ffn_only(model, targets.select(model))
    small, _masks, section, _notes = ffn.run_ffn(model, found, _config("neuron", sparsity))
    return small, section["verification"]["max_rel_diff"]


def _macs(model, batch: int, seq: int) -> int:
    """Multiply-adds of one forward pass of the decoder blocks (the embedding lookup and norms are not)."""
    from prunecli.structure import decoders, keras_graph

    total = 0
    for block in decoders.blocks(model):
        q, k, _v, _o = (sub.kernel.shape for sub, *_ in keras_graph.attention_projections(decoders.attention(block)))
        d, hq, hd = (int(n) for n in q)
        hkv = int(k[1])
        ff = int(keras_graph.hub_swiglu(block)[0].kernel.shape[-1])
        projections = seq * (d * hq * hd + 2 * d * hkv * hd + hq * hd * d)
        products = 2 * seq * seq * hq * hd
        total += batch * (projections + products + seq * 3 * d * ff)
    return total


def _passes(model, x, repeats: int) -> list[float]:
    """Wall times (ms) of `repeats` traced forward passes, after two warm-up calls."""
    import numpy as np
    import tensorflow as tf

    forward = tf.function(lambda xs: model(xs, training=False))
    arg = tf.nest.map_structure(tf.constant, x)
    for _ in range(2):
        np.asarray(forward(arg))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.asarray(forward(arg))
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--ffn", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=1000)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import numpy as np

    from prunecli.runtime import quiet_tensorflow

    quiet_tensorflow()
    from prunecli.structure import decoders

    rows = {"dense": (_backbone(args), None)}
    start = time.perf_counter()
    rows["-g head --shrink"] = _heads(_backbone(args), args.sparsity)
    rows["-g neuron --shrink"] = _neurons(_backbone(args), args.sparsity)
    both, diff_heads = _heads(_backbone(args), args.sparsity)
    both, diff_units = _neurons(both, args.sparsity)
    rows["head + neuron"] = (both, max(diff_heads, diff_units))
    prune_s = time.perf_counter() - start

    rng = np.random.default_rng(args.seed)
    x = {
        "token_ids": rng.integers(1, args.vocab, size=(args.batch, args.seq)).astype("int32"),
        "padding_mask": np.ones((args.batch, args.seq), "int32"),
    }
    times: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(args.rounds):
        for name, (model, _diff) in rows.items():
            times[name] += _passes(model, x, args.repeats)
    dense_params = rows["dense"][0].count_params()
    dense_ms = min(times["dense"])
    dense_macs = _macs(rows["dense"][0], args.batch, args.seq)
    out = []
    for name, (model, diff) in rows.items():
        block = decoders.blocks(model)[0]
        attention = decoders.attention(block)
        ms = min(times[name])
        macs = _macs(model, args.batch, args.seq)
        out.append(
            {
                "model": name,
                "params": int(model.count_params()),
                "params_vs_dense": round(model.count_params() / dense_params, 3),
                "query_heads": int(getattr(block, "num_query_heads", 0)),
                "kv_heads": int(getattr(block, "num_key_value_heads", 0)),
                "head_dim": decoders.head_size(block),
                "ffn_units": decoders.ffns(model)[0].units,
                "gmacs": round(macs / 1e9, 3),
                "macs_vs_dense": round(macs / dense_macs, 3),
                "latency_ms": round(ms, 2),
                "median_ms": round(float(np.median(times[name])), 2),
                "speedup": round(dense_ms / ms, 2),
                "max_rel_diff_vs_masked": None if diff is None else float(f"{diff:.2e}"),
                "attention_class": type(attention).__name__,
            }
        )
    header = (
        f"LlamaBackbone hidden {args.hidden}, {args.layers} layers, {args.heads} query / {args.kv_heads} kv heads, "
        f"FFN {args.ffn}, vocab {args.vocab}; forward batch {args.batch} x seq {args.seq}; latency min (median) of "
        f"{args.rounds} x {args.repeats} passes; {platform.machine()} {os.cpu_count()} cores, pruning took {prune_s:.1f} s"
    )
    print(header)
    print(
        f"{'model':<20} {'params':>10} {'x dense':>8} {'q/kv heads':>10} {'ffn':>5} {'GMACs':>7} {'x dense':>8} "
        f"{'ms min (median)':>17} {'speedup':>8} {'diff':>9}"
    )
    for r in out:
        diff = "" if r["max_rel_diff_vs_masked"] is None else f"{r['max_rel_diff_vs_masked']:.1e}"
        heads = f"{r['query_heads']}/{r['kv_heads']}"
        ms = f"{r['latency_ms']:.1f} ({r['median_ms']:.1f})"
        print(
            f"{r['model']:<20} {r['params']:>10,} {r['params_vs_dense']:>8} {heads:>10} {r['ffn_units']:>5} "
            f"{r['gmacs']:>7} {r['macs_vs_dense']:>8} {ms:>17} {r['speedup']:>8} {diff:>9}"
        )
    if args.json:
        args.json.write_text(json.dumps({"setup": header, "rows": out}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
