"""One pruning run, wired from the core modules. This is the Python API:

from prunecli import build_config, prune
result = prune(build_config({"model_path": "model.h5", "sparsity": 0.8, "scope": "global"}))
print(result.report.totals["prunable_sparsity"])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunecli.config import Granularity, PruneConfig
from prunecli.errors import InputError
from prunecli.outputs.report import Report, Timings, layer_stats, totals

Progress = Callable[[str], None]


@dataclass
class PruneResult:
    report: Report
    model: Any
    masks: Any
    output_path: Path | None


@dataclass
class Session:
    """State shared by the steps of one run; each step reads what it needs and adds its part."""

    config: PruneConfig
    progress: Progress
    timings: Timings
    model: Any = None
    source: Any = None
    targets: list | None = None
    data: Any = None
    task: Any = None
    masks: Any = None
    notes: list | None = None
    metrics: dict | None = None
    structure_changed: bool = False
    extras: dict | None = None  # report sections added by optional steps (fine-tuning, shrink, export)
    output_path: Path | None = None  # checked before any work, so a bad -o fails fast
    input_sizes: Any = None  # a Future: the input's gzip size, computed on another core while we prune
    compiled_optimizer: Any = None  # the file's own optimizer, before evaluation recompiles the model


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ and Python logging out of the user's terminal.

    TensorFlow prints start-up lines (oneDNN, CUDA stubs) straight to file descriptor 2 before its
    logging is configured, so the import runs with that descriptor pointed at /dev/null.
    Set PRUNECLI_DEBUG=1 to see them.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import logging
    import sys

    if "tensorflow" not in sys.modules and os.environ.get("PRUNECLI_DEBUG", "") in ("", "0"):
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            import keras  # noqa: F401
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass
    from prunecli.selection.kernels import enable_compile_cache

    enable_compile_cache()  # before any XLA compile (evaluation compiles first when --data is given)


def load_model_and_data(s: Session) -> None:
    from prunecli.io import data as data_mod
    from prunecli.io import models as model_io

    c = s.config
    s.progress(f"loading {c.model_path}")
    with s.timings.phase("load"):
        s.model, s.source = model_io.load(c.model_path, unsafe=c.unsafe)
        if c.sizes:  # zlib releases the GIL, so this overlaps with scoring and masking
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prunecli-sizes")
            s.input_sizes = pool.submit(model_io.file_sizes, s.source.path)
            pool.shutdown(wait=False)
        s.compiled_optimizer = getattr(s.model, "optimizer", None)
        if c.data:
            from prunecli.training.metrics import infer_task

            s.data = data_mod.load(c.data, s.model, c.batch_size, c.val_split, c.seed)
            s.task = infer_task(s.model, s.data.y_example)


def pick_targets(s: Session) -> None:
    from prunecli.selection import policy, targets

    c = s.config
    found = targets.select(s.model, c.include, c.exclude)
    found = [t for t in found if not policy.skipped_by_override(t, c)]
    if c.granularity.kind == "neuron":
        # An output layer's units are the model's outputs (its classes): removing one changes what the
        # model predicts, not how big it is. Kept unless the user names the layer with --include.
        outputs = targets.output_layer_names(s.model)
        kept = [t for t in found if t.layer_name in outputs and not targets.named_in(t, c.include)]
        if kept:
            s.notes.append(
                f"output layer(s) {', '.join(sorted({t.layer_name for t in kept}))} not pruned by neuron "
                "(their units are the model's outputs; --include them to prune anyway)"
            )
            found = [t for t in found if t not in kept]
    if not found:
        raise InputError(f"{c.model_path}: no prunable layers (after --include/--exclude)")
    s.targets = found


def evaluate_into(s: Session, stage: str) -> None:
    if s.data is None:
        return
    from prunecli.training.metrics import evaluate

    s.progress(f"evaluating ({stage.replace('_', ' ')})")
    with s.timings.phase("evaluate"):
        s.metrics[stage] = evaluate(s.model, s.data.eval, s.task)


def score_and_mask(s: Session, config: PruneConfig | None = None):
    """Score the targets with the chosen strategy and apply the policy's masks; returns the MaskSet."""
    from prunecli import scoring
    from prunecli.selection import kernels as masking
    from prunecli.selection import policy

    c = config or s.config
    strategy = scoring.get(c.method)
    if strategy.level == "unit" and c.granularity.kind == "element":
        c = c.replace(granularity=Granularity("neuron"))
        note = f"method {c.method} scores whole units; pruned with granularity neuron"
        if note not in s.notes:
            s.notes.append(note)
    s.progress(f"scoring with {c.method}")
    with s.timings.phase("score"):
        ctx = scoring.ScoringContext(
            model=s.model,
            targets=s.targets,
            data=None if s.data is None else s.data.train,
            loss_fn=None if s.task is None else s.task.loss,
            seed=c.seed,
            max_batches=c.score_batches,
            progress=scoring.registry.silent_progress if c.quiet else None,
        )
        scores = strategy.fn(s.targets, ctx)
    s.progress("building and applying masks")
    with s.timings.phase("mask"):
        masks = policy.build_masks(s.targets, scores, strategy.level, c, model=s.model)
        masking.apply_masks([t.variable for t in s.targets], [masks.masks[t.name] for t in s.targets])
    s.notes.extend(masks.notes)
    s.masks = masks
    return masks


def save_output(s: Session) -> Path:
    from prunecli.io import models as model_io

    out = s.output_path
    s.progress(f"saving {out}")
    with s.timings.phase("save"):
        model_io.save(s.model, out, s.source, structure_changed=s.structure_changed)
    return out


def build_report(s: Session, out: Path | None) -> Report:
    from prunecli import __version__
    from prunecli.io import models as model_io

    c = s.config
    settings = {k: (str(v) if k == "granularity" else v) for k, v in c.__dict__.items()}
    settings["overrides"] = [o.__dict__ for o in c.overrides]
    inp = {"path": str(s.source.path), "format": s.source.format, "flavour": s.source.flavour}
    outp = {"path": str(out), "format": out.suffix.lstrip(".")} if out else None
    with s.timings.phase("sizes"):
        if c.sizes:
            inp.update(s.input_sizes.result() if s.input_sizes else model_io.file_sizes(s.source.path))
            if out:
                outp.update(model_io.file_sizes(out))
        elif out:
            outp["bytes"] = out.stat().st_size
            inp["bytes"] = s.source.size_bytes
    stats = layer_stats(s.targets, s.masks.requested if s.masks else {})
    timings = dict(s.timings)
    timings["total"] = sum(timings.values())
    return Report(
        settings=settings,
        input=inp,
        output=outp,
        totals=totals(s.model, stats),
        layers=stats,
        metrics=s.metrics,
        timings_s={k: round(v, 4) for k, v in timings.items()},
        notes=s.notes,
        extra=dict(s.extras or {}),
        prunecli_version=__version__,
    )


def prune(config: PruneConfig, progress: Progress | None = None) -> PruneResult:
    """Load, score, mask, [fine-tune], [shrink], evaluate, save and report, as the config says.

    Quality gates are checked by `check_gates(result.report, config)`, after the report is written.
    """
    quiet_tensorflow()
    if config.strategy != "default":
        from prunecli.training import distribute

        distribute.get_strategy(config.strategy)  # MultiWorker must exist before TensorFlow runs anything
    if config.engine == "tfmot":
        from prunecli.run import tfmot

        return tfmot.prune(config, progress)
    s = Session(
        config=config, progress=progress or (lambda _msg: None), timings=Timings(), notes=[], metrics={}, extras={}
    )
    from prunecli.io import models as model_io

    s.output_path = model_io.resolve_output(config.model_path, config.output, config.force)
    load_model_and_data(s)
    from prunecli.structure import flops

    flops.record(s, "before")  # theoretical multiply-adds per example, for the report
    pick_targets(s)
    evaluate_into(s, "before")
    kind = config.granularity.kind
    if kind == "input":
        from prunecli.structure import features as feature_pruning

        feature_pruning.run(s)  # scores, masks or removes input features
    elif kind == "layer":
        from prunecli.structure import layer_removal as layer_pruning

        layer_pruning.run(s)  # scores and removes whole layers / residual branches
    elif config.schedule == "oneshot":
        score_and_mask(s)
    if config.schedule == "oneshot" or kind in ("input", "layer"):
        evaluate_into(s, "after_pruning")
    if config.epochs > 0 or config.schedule != "oneshot":
        from prunecli.training import finetune

        finetune.run(s)  # gradual schedules prune while they train
        evaluate_into(s, "after_finetune")
    if config.shrink and kind not in ("input", "layer"):
        from prunecli.structure import surgery

        surgery.shrink(s)  # replaces s.model with a smaller one that computes the same function
    out = save_output(s)
    if config.export:
        from prunecli.outputs import export

        export.run(s, out)  # TFLite / SavedModel copies, their sizes and output check go into s.extras
    flops.record(s, "after")
    report = build_report(s, out)
    return PruneResult(report=report, model=s.model, masks=s.masks, output_path=out)


def check_gates(report: Report, config: PruneConfig) -> None:
    """Raise GateFailed when the pruned model is worse than the config allows."""
    from prunecli.errors import GateFailed

    if config.max_accuracy_drop is None:
        return
    before = report.metrics.get("before", {}).get("accuracy")
    final_stage = "after_finetune" if "after_finetune" in report.metrics else "after_pruning"
    after = report.metrics.get(final_stage, {}).get("accuracy")
    if before is None or after is None:
        raise GateFailed("--max-accuracy-drop: no accuracy was measured (is the task a regression?)")
    drop = before - after
    if drop > config.max_accuracy_drop:
        raise GateFailed(
            f"accuracy dropped by {drop:.4f} ({before:.4f} -> {after:.4f}), more than --max-accuracy-drop {config.max_accuracy_drop:g}"
        )
