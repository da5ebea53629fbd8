"""Accuracy after fine-tuning on the bundled digits CNN: one-shot vs polynomial (Zhu & Gupta) pruning
with the same number of epochs, each with and without an L1 penalty, at 80/90/95% sparsity; and the
dynamic (DPF) schedule without L1 for comparison.

    .venv/bin/python bench/finetune_table.py            # writes bench/FINETUNE.md (a few minutes on 2 cores)

Every number in the table is measured by this script on the held-out test split of examples/digits.npz.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_common import quiet_tf  # noqa: E402

SPARSITIES = (0.8, 0.9, 0.95)
SCHEDULES = ("oneshot", "polynomial", "dynamic")


def measure(sparsity: float, schedule: str, epochs: int, l1: float, out_dir: Path) -> dict:
    from prunecli import build_config, prune

    config = build_config(
        {
            "model_path": str(ROOT / "examples" / "digits_cnn.keras"),
            "data": str(ROOT / "examples" / "digits.npz"),
            "sparsity": sparsity,
            "epochs": epochs,
            "schedule": schedule,
            "l1": l1,
            "quiet": True,
            "sizes": False,
            "output": str(out_dir / "pruned.keras"),
        }
    )
    start = time.perf_counter()
    result = prune(config)
    metrics, ft = result.report.metrics, result.report.extra["finetune"]
    return {
        "before": metrics["before"]["accuracy"],
        "after_pruning": metrics.get("after_pruning", {}).get("accuracy"),
        "after_finetune": metrics["after_finetune"]["accuracy"],
        "sparsity": result.report.totals["prunable_sparsity"],
        "near_zero": ft["near_zero_weights"]["count"],
        "surviving": ft["near_zero_weights"]["surviving"],
        "train_seconds": ft["train_seconds"],
        "seconds": time.perf_counter() - start,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--l1", type=float, default=1e-4)
    parser.add_argument("--out", default=str(ROOT / "bench" / "FINETUNE.md"))
    args = parser.parse_args(argv)

    import tempfile

    quiet_tf()
    import tensorflow as tf

    results = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in SPARSITIES:
            for schedule in SCHEDULES:
                for l1 in (0.0, args.l1) if schedule != "dynamic" else (0.0,):
                    r = measure(sparsity, schedule, args.epochs, l1, Path(tmp))
                    results[sparsity, schedule, l1] = r
                    print(
                        f"sparsity {sparsity:.0%} {schedule:<10} l1 {l1:g}: accuracy {r['after_finetune']:.4f} "
                        f"(train {r['train_seconds']:.1f}s, run {r['seconds']:.1f}s)",
                        flush=True,
                    )
    total = time.perf_counter() - started
    before = next(iter(results.values()))["before"]

    def acc(value):
        return "-" if value is None else f"{value:.3f}"

    lines = [
        "# Fine-tuning: one-shot vs polynomial, with and without L1",
        "",
        f"Bundled digits CNN (`examples/digits_cnn.keras`), magnitude pruning, scope layer, {args.epochs} epochs of",
        "fine-tuning with the model's own optimizer (Adam, lr 2e-3), batch 64; accuracy on the 360-image held-out",
        f"test split. Dense accuracy before pruning: **{before:.3f}**. Polynomial: Zhu & Gupta cubic ramp from 0 over",
        f"the first {max(1, (args.epochs * 2) // 3)} epochs, masks updated about every 1/16 of the ramp, then held.",
        "Dynamic: the same ramp, masks re-scored from dense shadow weights (DPF), frozen at the end of the ramp.",
        f"L1: `--l1 {args.l1:g}` on the prunable weights. 'near zero' = surviving weights with |w| < 1e-3 at the end.",
        "One run per cell (seed 0); one test image is 0.0028 of accuracy.",
        "",
        "| sparsity | one-shot, no fine-tuning | one-shot | polynomial | dynamic (DPF) | one-shot + L1 "
        "| polynomial + L1 | near zero (one-shot: no L1 / L1) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in SPARSITIES:
        one, poly = results[s, "oneshot", 0.0], results[s, "polynomial", 0.0]
        one_l1, poly_l1 = results[s, "oneshot", args.l1], results[s, "polynomial", args.l1]
        lines.append(
            f"| {s:.0%} | {acc(one['after_pruning'])} | {acc(one['after_finetune'])} | {acc(poly['after_finetune'])} "
            f"| {acc(results[s, 'dynamic', 0.0]['after_finetune'])} | {acc(one_l1['after_finetune'])} | {acc(poly_l1['after_finetune'])} "
            f"| {one['near_zero']} / {one_l1['near_zero']} of {one['surviving']} |"
        )
    exact = all(abs(r["sparsity"] - s) < 0.002 for (s, _sch, _l1), r in results.items())
    lines += [
        "",
        f"Measured prunable sparsity matched the target in every run: {'yes' if exact else 'NO'}.",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}; {len(results)} runs in {total:.0f} s.",
        "",
        f"Reproduce: `.venv/bin/python bench/finetune_table.py --epochs {args.epochs} --l1 {args.l1:g}`",
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out} ({total:.0f} s)")


if __name__ == "__main__":
    main()
