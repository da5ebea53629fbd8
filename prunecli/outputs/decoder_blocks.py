"""KerasHub decoders block by block, before and after pruning, and how many tokens per second they run.

For a model with Llama/Mistral/Qwen decoder blocks whose blocks a run rebuilds (`--shrink`, `-g layer`,
`-g hidden`), the report's `decoder` section lists each block's query heads, key/value groups, head
size, feed-forward units and residual width, its parameters and multiply-adds for one sequence of
--seq-len tokens (DEFAULT_SEQ_LEN when not given), before and after; and tokens per second measured on
this machine before and after:

- prefill: one traced forward pass over --seq-len tokens at batch 1 (structure/equivalence.latency_ms,
  the shrink step's timer);
- decode (causal LMs): DECODE_TOKENS greedy steps after a DECODE_PROMPT-token prompt, each step one
  traced call of the task's `call_with_cache` with its key/value cache (what generate() loops over;
  here a Python loop, so each token also pays one dispatch), the least of DECODE_ROUNDS rounds.

Multiply-adds count the four attention projections, the two attention products at full length (as
structure/transformer.py counts them for MultiHeadAttention) and the feed-forward kernels (three
SwiGLU ones, two in GPT-2's and OPT's un-gated network).
"""

from __future__ import annotations

import time
from typing import Any

from prunecli.structure import decoders, keras_graph

DEFAULT_SEQ_LEN = 128
DECODE_PROMPT = 16
DECODE_TOKENS = 32
DECODE_ROUNDS = 2


def block_shape(block) -> dict[str, int]:
    """Query heads, key/value groups, head size, feed-forward units and residual width of one block."""
    attention = decoders.attention(block)
    o = keras_graph.attention_projections(attention)[-1][0].kernel
    heads, groups = keras_graph.grouped_head_counts(attention)  # the kernels' head axis differs by family
    gate, up, _down = keras_graph.hub_ffn(block)
    return {
        "query_heads": heads,
        "kv_groups": groups,
        "head_dim": decoders.head_size(block),  # o: (heads, head_dim, hidden), or (heads * head_dim, hidden)
        "ffn_units": int(up.kernel.shape[-1]),
        "ffn_kernels": 2 if gate is None else 3,
        "hidden": int(o.shape[-1]),
        "params": int(block.count_params()),
    }


def block_macs(shape: dict[str, int], seq_len: int) -> int:
    """Multiply-adds of one block for one sequence of `seq_len` tokens (see the module docstring)."""
    d, hd, h, g, f = shape["hidden"], shape["head_dim"], shape["query_heads"], shape["kv_groups"], shape["ffn_units"]
    projections = seq_len * d * hd * (2 * h + 2 * g)  # q and o over query heads, k and v over groups
    products = 2 * seq_len * seq_len * h * hd  # q.k and attention.v
    return projections + products + shape["ffn_kernels"] * seq_len * d * f


def blocks_table(model, seq_len: int) -> dict[str, dict[str, int]]:
    """{block name: its shape, params and multiply-adds at seq_len}, in the graph's order."""
    table = {}
    for block in decoders.blocks(model):
        shape = block_shape(block)
        table[block.name] = {**shape, "macs": block_macs(shape, seq_len)}
    return table


def _vocabulary(model) -> int:
    embedding = getattr(decoders.host(model), "token_embedding", None)
    return int(embedding.input_dim) if embedding is not None else 2


def tokens_per_second(model, seq_len: int, seed: int) -> dict[str, float | None]:
    """{"prefill": tokens/s, "decode": tokens/s or None (a backbone has no cache loop)}."""
    import numpy as np

    from prunecli.structure import equivalence

    rng = np.random.default_rng(seed)
    seq_len = min(seq_len, decoders.max_length(model) or seq_len)  # GPT-2's and OPT's learned positions end
    ids = rng.integers(1, _vocabulary(model), size=(1, seq_len)).astype("int32")
    inputs = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    prefill = seq_len / (equivalence.latency_ms(model, inputs) / 1000.0)
    decode = None
    if hasattr(model, "call_with_cache"):
        try:
            decode = _decode_rate(model, rng)
        except Exception:  # a task whose cache loop differs: decode speed is an extra, it never fails the run
            decode = None
    return {"prefill": round(prefill, 1), "decode": None if decode is None else round(decode, 1)}


def _decode_rate(causal_lm, rng) -> float:
    import numpy as np
    import tensorflow as tf

    prompt, total = DECODE_PROMPT, DECODE_PROMPT + DECODE_TOKENS
    limit = decoders.max_length(causal_lm)
    if limit is not None and limit < total:  # learned positions (GPT-2, OPT) shorter than prompt and steps
        prompt, total = limit // 3, limit
    ids = rng.integers(1, _vocabulary(causal_lm), size=(1, total)).astype("int32")
    step = tf.function(lambda token, cache, index: causal_lm.call_with_cache(token, cache, index))
    best = float("inf")
    for _ in range(DECODE_ROUNDS):
        _hidden, cache = keras_graph.hub_empty_cache(causal_lm, tf.constant(ids))
        token = tf.constant(ids[:, prompt - 1 : prompt])
        logits, _h, cache = step(token, cache, tf.constant(prompt - 1))  # traced outside the clock
        start = time.perf_counter()
        for index in range(prompt, total):
            token = tf.cast(tf.argmax(logits[:, -1:, :], axis=-1), "int32")
            logits, _h, cache = step(token, cache, tf.constant(index))
        np.asarray(logits)
        best = min(best, time.perf_counter() - start)
    return (total - prompt) / best


def measure(model, seq_len: int, seed: int, speed: bool = True) -> dict[str, Any]:
    """The blocks and (unless `speed` is off: --no-speed) the speed of one model: half of the `decoder`
    section."""
    timed = tokens_per_second(model, seq_len, seed) if speed else {"prefill": None, "decode": None}
    return {"blocks": blocks_table(model, seq_len), "tokens_per_s": timed}


def section(before: dict[str, Any], after: dict[str, Any], seq_len: int) -> dict[str, Any]:
    """The report's `decoder` section: per block (in the dense model's order) its shape before and after
    (None after when the block was removed), the totals, and tokens/s before, after and their ratio."""
    rows = [
        {"block": name, "before": shape, "after": after["blocks"].get(name)} for name, shape in before["blocks"].items()
    ]
    speed = {}
    for kind in ("prefill", "decode"):
        was, now = before["tokens_per_s"][kind], after["tokens_per_s"][kind]
        if was is not None and now is not None:
            speed[kind] = {"before": was, "after": now, "ratio": round(now / was, 3)}
    return {
        "seq_len": seq_len,
        "blocks": rows,
        "params_before": sum(r["before"]["params"] for r in rows),
        "params_after": sum(r["after"]["params"] for r in rows if r["after"]),
        "macs_before": sum(r["before"]["macs"] for r in rows),
        "macs_after": sum(r["after"]["macs"] for r in rows if r["after"]),
        "tokens_per_s": speed,
        "measured": "on this machine, batch 1: prefill one traced forward pass; decode one traced cached step per"
        f" token, {DECODE_TOKENS} tokens after a {DECODE_PROMPT}-token prompt"
        if before["tokens_per_s"]["prefill"] is not None
        else "tokens per second not timed (--no-speed)",
    }
