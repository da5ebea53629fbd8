"""Calibrated one-shot pruning of small KerasHub decoders trained here: held-out perplexity by method,
scope and sparsity, against dense.

    .venv/bin/python bench/decoder_oneshot.py            # both decoders, 50/60/70/80% and 2:4, 3 seeds
    .venv/bin/python bench/decoder_oneshot.py --quick    # 50% and 70% and 2:4, 1 seed, shorter training

Two decoders are built from their configs (nothing downloaded) and trained on this machine (AdamW
2e-3, batches of 32 random windows, for --steps or --train-seconds, whichever ends first: the machine
is shared, so a time limit keeps the run bounded; the steps reached are reported):

* Llama-style (keras_hub LlamaBackbone): hidden 128, 4 layers, 4 query / 2 key-value heads (GQA),
  SwiGLU FFN 384, RMSNorm, rotary positions;
* GPT-2-style (keras_hub GPT2Backbone): hidden 128, 4 layers, 4 heads, GELU FFN 512, learned positions.

The text is the Python standard library's own source (the top-level `*.py` files of
`sysconfig.get_paths()["stdlib"]`), as bytes: vocabulary 256, rows of 128 tokens. Every tenth file is
held out; its rows are `token_ids_test`, on which perplexity is measured. Trained models and the token
.npz are cached under --cache (default prunecli_decoders in the system temporary folder); results are written as they come to
a JSON there (one per process: `--families llama` and `--families gpt2` can run side by side and
the table merges both), so a stopped run resumes; `--until HH:MM` (UTC) starts no run after that time
and writes the table of what was measured (cells with fewer seeds say n=).

Each pruned model goes through prunecli's Python API as a user's run would:
`prunecli.prune(build_config({"model_path", "data", "method", "sparsity" | "granularity", "scope", "seed",
...}))`, one-shot (no fine-tuning), 128 calibration sequences (the default), drawn by `--seed`.
Magnitude is data-free, so it runs once (seed-independent); wanda and sparsegpt run once per seed and
are reported as mean ± half-range. "default" is what a user gets without --scope: for magnitude the
global LAMP allocation; for wanda and sparsegpt (since 2026-12-04) `--normalize measured`, the allocation
among uniform, LAMP and OWL (on Wanda scores) whose masks change the outputs least on the calibration
examples, chosen per run (the table says which it chose).
Results go to bench/DECODERS.md, section "## Small decoders: one-shot perplexity".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_common import (  # noqa: E402
    load_average,
    machine,
    save_token_npz,
    scratch,
    stdlib_sources,
    table,
    write_decoders_section,
)

HEADING = "## Small decoders: one-shot perplexity"
SEQ = 128
VOCAB = 256
TEST_ROWS = 64  # held-out rows of SEQ tokens (8,192 tokens)
CALIBRATION_ROWS = 2048  # training rows in the .npz, from which --seed draws the calibration set
SETTINGS = ("0.5", "0.7", "2:4", "0.6", "0.8")  # in the order they run
QUICK_SETTINGS = ("0.5", "0.7", "2:4")
# (label, method, scope); scope None: the default (auto: for wanda/sparsegpt the allocation measured per
# run among uniform, LAMP and OWL); owl: --scope global --normalize owl
RUNS = (
    ("magnitude layer", "magnitude", "layer"),
    ("magnitude default", "magnitude", None),
    ("wanda layer (uniform)", "wanda", "layer"),
    ("wanda global (lamp)", "wanda", "global"),
    ("wanda owl", "wanda", "owl"),
    ("wanda default (measured)", "wanda", None),
    ("sparsegpt layer", "sparsegpt", "layer"),
    ("sparsegpt global (lamp)", "sparsegpt", "global"),
    ("sparsegpt owl", "sparsegpt", "owl"),
    ("sparsegpt default (measured)", "sparsegpt", None),
)
DEFAULT_ROWS = ("wanda default (measured)", "sparsegpt default (measured)")
FAMILIES = {
    "llama": {"hidden": 128, "layers": 4, "heads": 4, "kv_heads": 2, "ffn": 384},
    "gpt2": {"hidden": 128, "layers": 4, "heads": 4, "ffn": 512},
}


# ---- data ----------------------------------------------------------------------------------------------


def corpus():
    """(training stream, held-out stream) of byte ids: the stdlib's top-level .py files, every tenth held out."""
    import numpy as np

    train, test = [], []
    for i, p in enumerate(stdlib_sources()):
        (test if i % 10 == 5 else train).append(np.frombuffer(p.read_bytes(), np.uint8))
    return np.concatenate(train).astype(np.int32), np.concatenate(test).astype(np.int32)


def rows(stream, n=None):
    k = len(stream) // SEQ if n is None else min(n, len(stream) // SEQ)
    return stream[: k * SEQ].reshape(k, SEQ)


def token_file(cache: Path) -> Path:
    """The .npz a user would give --data: training rows (the calibration pool) and held-out test rows."""
    import numpy as np

    path = cache / "stdlib_bytes.npz"
    if not path.exists():
        train, test = corpus()
        rng = np.random.default_rng(0)
        pool = rows(train)
        pool = pool[rng.choice(len(pool), CALIBRATION_ROWS, replace=False)]
        save_token_npz(path, pool, rows(test, TEST_ROWS))
    return path


# ---- models --------------------------------------------------------------------------------------------


def build(family: str, seed: int = 0):
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    c = FAMILIES[family]
    if family == "llama":
        backbone = keras_hub.models.LlamaBackbone(
            vocabulary_size=VOCAB,
            num_layers=c["layers"],
            num_query_heads=c["heads"],
            num_key_value_heads=c["kv_heads"],
            hidden_dim=c["hidden"],
            intermediate_dim=c["ffn"],
        )
        return keras_hub.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=VOCAB,
        num_layers=c["layers"],
        num_heads=c["heads"],
        hidden_dim=c["hidden"],
        intermediate_dim=c["ffn"],
        max_sequence_length=SEQ,
        dropout=0.0,
    )
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def train(family: str, cache: Path, steps: int, seconds: float, batch: int = 32) -> tuple[Path, dict]:
    """Train one decoder on next-token prediction over the stdlib stream (random windows) for `steps`
    steps or `seconds`, whichever ends first (the machine is shared); cached."""
    path = cache / f"{family}_{steps}.keras"
    info = cache / f"{family}_{steps}.json"
    if path.exists() and info.exists():
        return path, json.loads(info.read_text())
    import keras
    import numpy as np

    stream, _ = corpus()
    rng = np.random.default_rng(1)
    starts = rng.integers(0, len(stream) - SEQ - 1, size=steps * batch)
    x = np.stack([stream[s : s + SEQ + 1] for s in starts])
    ids, y = x[:, :-1], x[:, 1:]
    model = build(family)
    model.compile(
        optimizer=keras.optimizers.AdamW(2e-3, weight_decay=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
    )
    start = time.perf_counter()
    done = {"steps": 0}

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, step, logs=None):
            done["steps"] = step + 1
            if time.perf_counter() - start > seconds:
                self.model.stop_training = True

    hist = model.fit(
        {"token_ids": ids, "padding_mask": np.ones_like(ids)},
        y,
        batch_size=batch,
        epochs=1,
        verbose=0,
        callbacks=[Clock()],
    )
    seconds = time.perf_counter() - start
    model.save(path)
    meta = {
        "family": family,
        "params": int(model.count_params()),
        "steps": done["steps"],
        "batch": batch,
        "train_s": round(seconds, 1),
        "final_train_loss": float(hist.history["loss"][-1]),
        "load_average": load_average(),
    }
    info.write_text(json.dumps(meta))
    return path, meta


# ---- pruning -------------------------------------------------------------------------------------------


def prune_values(model_path: Path, data: Path, work: Path, method: str, scope, setting: str, seed: int) -> dict:
    """The settings of one one-shot run at `setting` (a sparsity, or "2:4"), as `prunecli.build_config`
    takes them; scope "owl" is --scope global --normalize owl (bench/dsnot_table.py shares them)."""
    values = {
        "model_path": str(model_path),
        "data": str(data),
        "method": method,
        "seed": seed,
        "output": str(work / f"pruned_{model_path.stem}.keras"),
        "force": True,
        "quiet": True,
        "sizes": False,
    }
    if scope == "owl":
        values.update(scope="global", normalize="owl")
    elif scope:
        values["scope"] = scope
    if setting == "2:4":
        values["granularity"] = "n:m=2:4"
    else:
        values["sparsity"] = float(setting)
    return values


def prune_once(model_path: Path, data: Path, work: Path, method: str, scope, setting: str, seed: int) -> dict:
    """One run through the Python API (what `prunecli prune` does); its perplexity before and after."""
    import prunecli

    values = prune_values(model_path, data, work, method, scope, setting, seed)
    start = time.perf_counter()
    report = prunecli.prune(prunecli.build_config(values, environ={})).report
    cal = report.extra.get("calibration")
    return {
        "before": report.metrics["before"]["perplexity"],
        "after": report.metrics["after_pruning"]["perplexity"],
        "sparsity": report.totals["prunable_sparsity"],
        "fallback": len((cal or {}).get("fallback") or {}),
        "chosen": ((cal or {}).get("allocation_measured") or {}).get("chosen"),
        "seconds": round(time.perf_counter() - start, 2),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="50%%, 70%% and 2:4, one seed, shorter training")
    ap.add_argument("--cache", default=str(scratch("prunecli_decoders")), help="trained models, tokens and results")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default 1500, --quick 300)")
    ap.add_argument("--seeds", type=int, default=None, help="calibration seeds (default 3, --quick 1)")
    ap.add_argument("--families", default="llama,gpt2")
    ap.add_argument("--settings", default=None, help="comma-separated subset of 0.5,0.6,0.7,0.8,2:4")
    ap.add_argument(
        "--train-seconds", type=float, default=None, help="stop each training after this long (default 300, --quick 90)"
    )
    ap.add_argument("--until", default=None, help="HH:MM UTC: start no new pruning run after it, then write the table")
    ap.add_argument("--no-write", action="store_true", help="print, do not write bench/DECODERS.md")
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from prunecli.runtime import quiet_tensorflow

    quiet_tensorflow()

    steps = args.steps or (300 if args.quick else 1500)
    args.train_seconds = args.train_seconds or (90.0 if args.quick else 300.0)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    settings = QUICK_SETTINGS if args.quick else SETTINGS
    if args.settings:
        settings = tuple(x for x in settings if x in args.settings.split(","))
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    data = token_file(cache)
    families = args.families.split(",")
    store = cache / f"results_{steps}_{'_'.join(families)}.json"  # one per process: families can run in parallel
    results = json.loads(store.read_text()) if store.exists() else {}
    meta = {}
    for family in families:
        model_path, meta[family] = train(family, cache, steps, args.train_seconds)
        print(f"{family}: {json.dumps(meta[family])}", flush=True)
    # every setting at the first seed before any second seed: a run stopped by --until still has a full table
    for seed in seeds:
        for setting in settings:
            for family in families:
                model_path = cache / f"{family}_{steps}.keras"
                for label, method, scope in RUNS:
                    if setting == "2:4" and scope in (None, "owl"):
                        continue  # N:M is the same in every layer: one row per method
                    if method == "magnitude" and seed != seeds[0]:
                        continue  # data-free: the seed changes nothing
                    key = f"{family}|{setting}|{label}|{seed}"
                    if key in results:
                        continue
                    if args.until and time.strftime("%H:%M", time.gmtime()) >= args.until:
                        print(f"--until {args.until}: stopping before {key}", flush=True)
                        break
                    results[key] = prune_once(model_path, data, cache, method, scope, setting, seed)
                    store.write_text(json.dumps(results, indent=0))
                    print(key, json.dumps(results[key]), flush=True)
    for other in sorted(cache.glob(f"results_{steps}_*.json")):  # the other processes' families too
        for key, value in json.loads(other.read_text()).items():
            results.setdefault(key, value)
        for family in FAMILIES:
            info = cache / f"{family}_{steps}.json"
            if family not in meta and info.exists() and any(k.startswith(f"{family}|") for k in results):
                meta[family] = json.loads(info.read_text())
    text = render(results, meta, settings, seeds, args)
    print(text)
    if not args.no_write:
        write_decoders_section(HEADING, text)
    return 0


# ---- the table -----------------------------------------------------------------------------------------


def _stats(results, family, setting, label):
    vals = [v["after"] for k, v in results.items() if k.startswith(f"{family}|{setting}|{label}|")]
    if not vals:
        return None
    return sum(vals) / len(vals), (max(vals) - min(vals)) / 2, len(vals)


def _cell(s, seeds: int) -> str:
    if s is None:
        return "-"
    mean, half, n = s
    text = f"{mean:.3f}" if n == 1 else f"{mean:.3f} ± {half:.3f}"
    return text if n in (1, seeds) else f"{text} (n={n})"


LAYER_ROW = {"wanda default (measured)": "wanda layer (uniform)", "sparsegpt default (measured)": "sparsegpt layer"}


def _goals(results, family: str, dense: float, settings) -> list[str]:
    """One line per goal of issue 30, met / NOT met / not measured, with the numbers."""
    get = lambda s, label: (_stats(results, family, s, label) or (None,))[0]  # noqa: E731
    calibrated = DEFAULT_ROWS
    out, parts = [], []
    for label in calibrated:
        v = get("0.5", label)
        parts.append(
            f"{label} not measured"
            if v is None
            else f"{label} {v:.3f} ({v / dense - 1:+.1%}) {'met' if v <= 1.15 * dense else 'NOT met'}"
        )
    out.append(f"- {family}, 50% within 15% of dense ({dense:.3f}, limit {1.15 * dense:.3f}): " + "; ".join(parts))
    uni, parts = get("0.7", "wanda layer (uniform)"), []
    for label in (*calibrated, "wanda global (lamp)", "sparsegpt global (lamp)", "wanda owl", "sparsegpt owl"):
        v = get("0.7", label)
        if v is None or uni is None:
            parts.append(f"{label} not measured")
        else:
            parts.append(
                f"{label} {v:.3f} ({abs(1 - v / uni):.0%} {'lower' if v <= uni else 'higher'}) {'met' if v <= 0.8 * uni else 'NOT met'}"
            )
    shown = "not measured" if uni is None else f"{uni:.3f}"
    out.append(f"- {family}, 70%: an allocation at least 20% lower than uniform Wanda ({shown}): " + "; ".join(parts))
    for label in calibrated:
        worse, missing = [], []
        for s in settings:
            mag = get(s, "magnitude default" if s != "2:4" else "magnitude layer")
            v = get(s, label if s != "2:4" else LAYER_ROW[label])
            if v is None or mag is None:
                missing.append(s)
            elif v > mag:
                worse.append(f"{s}: {v:.3f} vs {mag:.3f}")
        verdict = "met" if not worse else "NOT met (" + "; ".join(worse) + ")"
        out.append(
            f"- {family}, `--method {label.split()[0]}` (default scope) at least as good as the default magnitude "
            f"command at every setting: {verdict}" + (f"; not measured at {', '.join(missing)}" if missing else "")
        )
    return out


def render(results, meta, settings, seeds, args) -> str:
    settings = sorted(settings, key=lambda s: (s == "2:4", s))  # columns by sparsity, 2:4 last
    lines = [
        HEADING,
        "",
        f"`.venv/bin/python bench/decoder_oneshot.py{' --quick' if args.quick else ''}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}). "
        "Two KerasHub decoders built from their configs and trained here on the bytes of the Python "
        "standard library's own source (vocabulary 256, rows of 128 tokens; every tenth file held out, "
        f"{TEST_ROWS} held-out rows = {TEST_ROWS * SEQ} tokens): Llama-style (hidden 128, 4 layers, 4 query / 2 "
        "key-value heads, SwiGLU 384) and GPT-2-style (hidden 128, 4 layers, 4 heads, GELU 512). Pruned "
        "one-shot (no fine-tuning) through `prunecli.prune(build_config(...))`, 128 calibration "
        f"sequences drawn by --seed; wanda/sparsegpt over seeds {seeds} (mean ± half-range), magnitude once "
        "(data-free). Held-out perplexity; lower is better. The token embedding and LM head are not "
        "pruned (structure/language.py); the sparsity is of the decoder projections.",
        "",
    ]
    m = machine()
    lines.append(
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, shared; load average at the end {load_average()}."
    )
    lines.append("")
    goals = []
    for family, info in meta.items():
        dense = next((v["before"] for k, v in results.items() if k.startswith(f"{family}|")), None)
        lines.append(
            f"### {family} ({info['params']:,} parameters; {info['steps']} steps of {info['batch']} x {SEQ} tokens, "
            f"{info['train_s']:.0f} s, load average {info['load_average']}): dense perplexity {dense:.3f}"
        )
        lines.append("")
        headers = ["run"] + [s if s == "2:4" else f"{float(s):.0%}" for s in settings]
        body = []
        for label, _method, _scope in RUNS:
            row = [label]
            for s in settings:
                row.append(_cell(_stats(results, family, s, label), len(seeds)))
            body.append(row)
        lines.append(table(headers, body))
        lines.append("")
        chosen = [
            f"{label.split()[0]} {s}: " + ", ".join(v["chosen"] for k, v in sorted(results.items())
                                                   if k.startswith(f"{family}|{s}|{label}|") and v.get("chosen"))
            for label in DEFAULT_ROWS for s in settings if s != "2:4"
        ]  # fmt: skip
        lines.append("Allocation the default chose, per seed: " + "; ".join(chosen) + ".")
        lines.append("")
        lines.append("Perplexity / dense: " + "; ".join(
            f"{label} " + ", ".join(
                f"{s}: {st[0] / dense:.2f}" for s in settings if (st := _stats(results, family, s, label))
            ) for label, _, _ in RUNS
        ) + ".")  # fmt: skip
        lines.append("")
        goals.append((family, dense))

    lines.append("### The issue's goals")
    lines.append("")
    for family, dense in goals:
        lines.extend(_goals(results, family, dense, settings))
    lines.append("")
    lines.append(
        "At 2:4 the scope does not apply (every layer keeps 2 of 4): the `layer` rows are the commands without --scope."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
