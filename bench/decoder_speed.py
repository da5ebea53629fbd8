"""Prefill tokens/s of a KerasHub Llama-style decoder shrunk to 0.75x parameters by width and by depth
(issue 28's speed goal: >= 1.25x), at a size given on the command line, graph and XLA, side by side.

    .venv/bin/python bench/decoder_speed.py --hidden 512 --ffn 1536 [--model trained.keras] [--rounds 12]

A randomly initialised keras_hub LlamaCausalLM (byte vocabulary, 4 blocks, 8 query / 4 key-value heads,
nothing downloaded), or `--model` a trained one, is shrunk by the command line as a user would: FFN units
(`-g neuron -s F --shrink`, F chosen so the model keeps 0.75x of its parameters), residual width (`-g
hidden -s 0.25 --shrink`) and one whole block (`-g layer --remove-layers 1 --shrink`, scored on the
token data); plus an identity rebuild (prunecli's classes, nothing removed) to show what the rebuild
itself costs. Each model's forward pass over one batch of token rows is traced once as a plain graph
and once with XLA; the passes of all models are interleaved over --rounds rounds and the median per
model is reported as a ratio to the dense model's (weights do not change the time, so random ones
serve). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRUNECLI = str(HERE.parent / ".venv" / "bin" / "prunecli")
sys.path.insert(0, str(HERE))
from bench_common import load_average  # noqa: E402


def build(path: Path, hidden: int, ffn: int, layers: int) -> int:
    import keras
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.LlamaBackbone(
        vocabulary_size=256,
        num_layers=layers,
        num_query_heads=8,
        num_key_value_heads=4,
        hidden_dim=hidden,
        intermediate_dim=ffn,
        max_sequence_length=256,
    )
    model = keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    model.save(path)
    return int(model.count_params())


def ffn_sparsity(model_path: Path) -> float:
    """The FFN unit fraction whose removal leaves 0.75x of the parameters (gate, up and down: 3 x hidden
    per unit)."""
    from prunecli.io.models import load
    from prunecli.structure import decoders, keras_graph

    model = load(model_path)
    model = model[0] if isinstance(model, tuple) else model
    blocks = decoders.blocks(model)
    units = sum(int(keras_graph.hub_ffn(b)[1].kernel.shape[-1]) for b in blocks)
    hidden = int(keras_graph.hub_ffn(blocks[0])[1].kernel.shape[0])
    return round(0.25 * model.count_params() / (3 * hidden * units), 6)


def identity(model_path: Path, out: Path) -> None:
    from prunecli.io.models import load
    from prunecli.structure import decoders

    model = load(model_path)
    model = model[0] if isinstance(model, tuple) else model
    decoders.rebuild_with(model, decoders.swaps_for(model)).save(out)


def prune(args: list[str]) -> None:
    subprocess.run(
        [PRUNECLI, "prune", *args, "--force", "-q"], check=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )


def timings(paths: dict[str, Path], batch: int, seq: int, rounds: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from prunecli.io.models import load

    rng = np.random.default_rng(0)
    x = {
        "token_ids": tf.constant(rng.integers(0, 256, (batch, seq)), tf.int32),
        "padding_mask": tf.ones((batch, seq), tf.int32),
    }
    fns, params = {}, {}
    for name, path in paths.items():
        model = load(path)
        model = model[0] if isinstance(model, tuple) else model
        params[name] = int(model.count_params())
        for jit in (False, True):
            fn = tf.function(lambda xs, m=model: m(xs, training=False), jit_compile=jit)
            for _ in range(2):
                np.asarray(fn(x))
            fns[(name, jit)] = fn
    times = {key: [] for key in fns}
    for _ in range(rounds):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            np.asarray(fn(x))
            times[key].append(time.perf_counter() - t0)
    return {"params": params, "median": {key: statistics.median(t) for key, t in times.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--ffn", type=int, default=1536)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--model", help="a trained LlamaCausalLM .keras instead of a random one")
    ap.add_argument("--data", required=True, help="token .npz (token_ids_train...) for -g layer's scores")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=12)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    work = Path(tempfile.mkdtemp(prefix="decoder_speed_"))
    dense = Path(args.model) if args.model else work / "dense.keras"
    if not args.model:
        build(dense, args.hidden, args.ffn, args.layers)
    paths = {"dense": dense, "identity rebuild": work / "identity.keras"}
    identity(dense, paths["identity rebuild"])
    runs = {
        "FFN units": ["-g", "neuron", "-s", str(ffn_sparsity(dense)), "--shrink"],
        "hidden channels": ["-g", "hidden", "-s", "0.25", "--shrink"],
        "one block": ["-g", "layer", "--remove-layers", "1", "--score-batches", "2", "--shrink", "--data", args.data],
    }
    for name, extra in runs.items():
        paths[name] = work / f"{name.replace(' ', '_')}.keras"
        prune([str(dense), *extra, "-o", str(paths[name])])
    found = timings(paths, args.batch, args.seq, args.rounds)
    p, med = found["params"], found["median"]
    print(
        f"Load average after: {load_average()}; {args.batch} x {args.seq} tokens per pass, median of {args.rounds}.\n"
    )
    print("| model | params (x dense) | graph ms | graph tokens/s (x dense) | XLA ms | XLA tokens/s (x dense) |")
    print("|---|---|---|---|---|---|")
    tokens = args.batch * args.seq
    for name in paths:
        g, x = med[(name, False)], med[(name, True)]
        print(
            f"| {name} | {p[name]:,} ({p[name] / p['dense']:.3f}x) | {g * 1000:.1f} | {tokens / g:,.0f} "
            f"({med[('dense', False)] / g:.2f}x) | {x * 1000:.1f} | {tokens / x:,.0f} ({med[('dense', True)] / x:.2f}x) |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
