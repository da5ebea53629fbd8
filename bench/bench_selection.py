"""Mask computation: prunecli's two selection paths vs tfmot's top_k kernel vs NumPy, layer-wise and global.

Weights follow ResNet50's 54 prunable tensors (He-initialised), scaled to the total size asked for.
Every approach starts from the weights and ends with boolean masks pruning 50% by magnitude:
- prunecli: tf.abs per tensor, then kernels.select on the NumPy path (sampled bracket + partition of
  the band, what a CPU run uses) or on the XLA path (radix select, one XLA call);
- prunecli policy: policy.build_masks on the same scores (element granularity, magnitude), the whole
  selection a one-shot CLI run pays, path chosen by kernels.choose_path;
- tfmot: tfmot's own `Pruning._update_mask` (abs, a full tf.math.top_k, threshold, mask) for every
  tensor in one tf.function, as its training step runs it; "global" applies it to all weights joined
  (tfmot itself only prunes layer by layer);
- NumPy: np.abs and np.argpartition per tensor (exactly k, ties in any order).
"""

from __future__ import annotations

import math
import tempfile

from bench_common import child_json, quiet_tf, ratio, resnet50_kernel_shapes, table, tfmot_modules, timed

SPARSITY = 0.5


def make_weights(shapes, total: int, seed: int = 0):
    """Flat float32 weights with ResNet50's relative tensor sizes and He-normal scales."""
    import numpy as np

    rng = np.random.default_rng(seed)
    full = sum(math.prod(s) for s in shapes)
    out = []
    for s in shapes:
        n = max(1, round(math.prod(s) * total / full))
        fan_in = math.prod(s[:-1]) or 1
        out.append(rng.standard_normal(n, dtype=np.float32) * np.float32(math.sqrt(2.0 / fan_in)))
    return out


def prunecli_fns(weights, path: str = "auto"):
    import tensorflow as tf

    from prunecli.selection import kernels

    tensors = [tf.constant(w) for w in weights]
    ks = [round(SPARSITY * int(t.shape[0])) for t in tensors]
    k_all = round(SPARSITY * sum(int(t.shape[0]) for t in tensors))

    def layer():
        return kernels.select([[tf.abs(t)] for t in tensors], ks, path)[0]

    def whole():
        return kernels.select([[tf.abs(t) for t in tensors]], [k_all], path)[0]

    return layer, whole


def policy_fns(weights):
    """policy.build_masks, element granularity, on magnitude scores of these weights."""
    import tensorflow as tf

    from prunecli.config import PruneConfig
    from prunecli.selection import policy
    from prunecli.structure.targets import Target

    targets = [Target(f"w{i}/kernel", f"w{i}", "Dense", "kernel", w.reshape(-1, 1), 0) for i, w in enumerate(weights)]
    tensors = [tf.constant(w.reshape(-1, 1)) for w in weights]

    def run(scope: str):
        scores = {t.name: tf.abs(x) for t, x in zip(targets, tensors, strict=True)}
        result = policy.build_masks(targets, scores, "element", PruneConfig(sparsity=SPARSITY, scope=scope))
        return list(result.masks.values())

    return (lambda: run("layer")), (lambda: run("global"))


def tfmot_fns(weights):
    import tensorflow as tf

    tfmot, _ = tfmot_modules()
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_impl

    pruning = pruning_impl.Pruning(
        training_step_fn=lambda: tf.constant(0, tf.int64),
        pruning_vars=[],
        pruning_schedule=tfmot.sparsity.keras.ConstantSparsity(SPARSITY, begin_step=0),
        block_size=(1, 1),
        block_pooling_type="AVG",
    )
    tensors = [tf.constant(w) for w in weights]
    joined = tf.concat(tensors, 0)

    @tf.function
    def layer():
        return [pruning._update_mask(t)[1] for t in tensors]

    @tf.function
    def whole():
        return pruning._update_mask(joined)[1]

    return layer, whole


def numpy_fns(weights):
    import numpy as np

    def lowest(a):
        k = round(SPARSITY * a.size)
        keep = np.ones(a.size, bool)
        keep[np.argpartition(np.abs(a), k)[:k]] = False
        return keep

    def layer():
        return [lowest(w) for w in weights]

    def whole():
        return lowest(np.concatenate(weights))

    return layer, whole


FIRST_CALL_CHILD = """
import json, math, sys, time
sys.path.insert(0, {bench!r})
from bench_common import quiet_tf
quiet_tf()
import numpy as np, tensorflow as tf
from bench_selection import SPARSITY, make_weights
from prunecli.config import PruneConfig
from prunecli.selection import kernels, policy
from prunecli.structure.targets import Target
weights = make_weights({shapes!r}, {total})
scores = [tf.abs(tf.constant(w)) for w in weights]  # as scoring leaves them; TF has run ops already
[np.asarray(s) for s in scores]
t = time.perf_counter()
if {what!r} == "policy":
    targets = [Target(f"w{{i}}/kernel", f"w{{i}}", "Dense", "kernel", w, 0) for i, w in enumerate(weights)]
    result = policy.build_masks(
        targets, dict(zip([t.name for t in targets], scores)), "element", PruneConfig(sparsity=SPARSITY, scope={scope!r})
    )
    masks, path = list(result.masks.values()), result.selection_path
elif {scope!r} == "layer":
    masks, path = kernels.select([[s] for s in scores], [round(SPARSITY * w.size) for w in weights], {what!r})
else:
    masks, path = kernels.select([scores], [round(SPARSITY * sum(w.size for w in weights))], {what!r})
[np.asarray(m) for m in masks]
first = time.perf_counter() - t
print(json.dumps({{"first": first, "path": path}}))
"""


def first_call_in_new_process(shapes, total: int, scope: str, cache_dir: str, what: str = "xla") -> float:
    """Seconds of the first selection in a fresh process whose XLA disk cache is `cache_dir`; `what` is
    a selection path ("xla", "numpy") or "policy" (build_masks, path chosen automatically)."""
    from pathlib import Path

    code = FIRST_CALL_CHILD.format(bench=str(Path(__file__).parent), shapes=shapes, total=total, scope=scope, what=what)
    env = {"TF_XLA_FLAGS": f"--tf_xla_persistent_cache_directory={cache_dir}"}
    return child_json(code, env=env)["first"]


def fresh_process_table(shapes, total: int) -> str:
    """The first selection in new processes: XLA with an empty and a warm disk cache, NumPy, build_masks."""
    fresh = []
    for scope in ("global", "layer"):
        with tempfile.TemporaryDirectory() as cache:
            cold = first_call_in_new_process(shapes, total, scope, cache, "xla")
            warm = first_call_in_new_process(shapes, total, scope, cache, "xla")
            numpy_path = first_call_in_new_process(shapes, total, scope, cache, "numpy")
            whole_policy = first_call_in_new_process(shapes, total, scope, cache, "policy")
        fresh.append([scope, cold, warm, numpy_path, whole_policy])
    heading = (
        f"\nFirst selection in a new process ({total / 1e6:.1f}M weights; the scores are computed before the"
        " clock starts, as scoring leaves them in a CLI run): the XLA path with an empty and with a warm XLA"
        " disk cache, the NumPy path, and policy.build_masks as a one-shot run calls it (magnitude scores,"
        " element granularity, path chosen automatically: NumPy on a CPU):\n"
    )
    headers = ["scope", "XLA, empty cache (s)", "XLA, warm disk cache (s)", "NumPy path (s)", "build_masks, auto (s)"]
    return heading + "\n" + table(headers, fresh)


def run(sizes=(1_000_000, 5_000_000, 25_500_000), repeats: int = 7, slow_repeats: int = 2) -> str:
    quiet_tf()
    shapes = resnet50_kernel_shapes()
    rows = []
    for total in sizes:
        weights = make_weights(shapes, total)
        n = sum(w.size for w in weights)
        np_layer, np_whole = prunecli_fns(weights, "numpy")
        x_layer, x_whole = prunecli_fns(weights, "xla")
        t_layer, t_whole = tfmot_fns(weights)
        n_layer, n_whole = numpy_fns(weights)
        for scope, p, x, t, npf in (
            ("layer", np_layer, x_layer, t_layer, n_layer),
            ("global", np_whole, x_whole, t_whole, n_whole),
        ):
            p_first, p_warm, _ = timed(p, repeats)
            x_first, x_warm, _ = timed(x, repeats)
            t_first, t_warm, _ = timed(t, slow_repeats if n > 6_000_000 else 3)
            _, n_warm, _ = timed(npf, 3)
            rows.append(
                [
                    f"{n / 1e6:.1f}M",
                    scope,
                    p_first,
                    p_warm,
                    x_first,
                    x_warm,
                    t_warm,
                    n_warm,
                    ratio(x_warm, p_warm),
                    ratio(n_warm, p_warm),
                ]
            )
        del weights
    out = [
        table(
            [
                "weights",
                "scope",
                "NumPy path first call (s)",
                "NumPy path warm (s)",
                "XLA path first call (s)",
                "XLA path warm (s)",
                "tfmot top_k (s)",
                "NumPy argpartition (s)",
                "XLA / NumPy path",
                "argpartition / NumPy path",
            ],
            rows,
        )
    ]
    out.append(
        "\nWarm = median of the calls after the first. The XLA path's first call in this process includes"
        " tracing and the XLA compile (this process starts with an empty compile cache). On a CPU,"
        " kernels.choose_path runs the NumPy path (see kernels.py for the rule)."
    )
    out.append(fresh_process_table(shapes, max(sizes)))
    return "\n".join(out)
