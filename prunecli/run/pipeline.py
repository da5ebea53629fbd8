"""One pruning run, start to end: the flow of `prunecli prune`, and the Python API.

    from prunecli import build_config, prune
    result = prune(build_config({"model_path": "model.h5", "sparsity": 0.8, "scope": "global"}))
    print(result.report.totals["prunable_sparsity"])

Orchestration only: every step is a call that returns its result (run/steps.py, structure/,
training/, outputs/); the state of the run changes only here, by folding those results in.
"""

from __future__ import annotations

from prunecli.config import PruneConfig
from prunecli.errors import GateFailed
from prunecli.outputs.report import Report, Timings
from prunecli.results import StepResult
from prunecli.run import steps
from prunecli.run.state import PruneResult
from prunecli.runtime import quiet_tensorflow
from prunecli.structure import flops


def prune(config: PruneConfig, progress: steps.Progress | None = None) -> PruneResult:
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
    from prunecli.io import models as model_io

    say = progress or steps.silent
    timings = Timings()
    out = model_io.resolve_output(config.model_path, config.output, config.force)  # a bad -o fails before any work
    state, input_sizes = steps.load(config, say, timings)
    flops_before = flops.count(state.model)  # theoretical multiply-adds per example, for the report
    state = state.after(steps.pick_targets(state.model, config))
    state = state.after(steps.evaluate(state, "before", say, timings))
    teacher = None
    if config.distill is not None:  # the dense model teaches the pruned one: copied before anything is pruned
        from prunecli.training import distill

        teacher = distill.teacher_copy(state.model)

    kind = config.granularity.kind
    removes_at_once = kind in steps.STRUCTURAL  # input features, layers, heads: scored, chosen, removed
    if removes_at_once:
        state = state.after(steps.remove_structure(state, say, timings))
    elif config.schedule == "oneshot":
        state = state.after(steps.mask(state, say, timings))
        if kind == "neuron":  # channels removed: BatchNorm's statistics re-estimated on the pruned model
            state = state.after(steps.recalibrate_batchnorm(state, say, timings))
    if config.schedule == "oneshot" or removes_at_once:
        state = state.after(steps.evaluate(state, "after_pruning", say, timings))
    if config.epochs > 0 or config.schedule != "oneshot":
        state = state.after(steps.finetune(state, say, timings, teacher))  # gradual schedules prune as they train
        state = state.after(steps.evaluate(state, "after_finetune", say, timings))
    masked_model = state.model  # before --shrink: the export step times it in TFLite beside the shrunk one
    if config.shrink and not removes_at_once:
        from prunecli.structure import surgery

        state = state.after(
            surgery.shrink(state.model, state.targets, state.masks, state.data, state.source, config, say, timings)
        )  # a smaller model that computes the same function (verified)

    from prunecli.training import distribute

    output_sizes = None
    if distribute.is_chief():
        output_sizes = steps.save(state, out, say, timings)
    else:  # a multi-worker run: only the chief writes the model, the report and the exports
        out = None
    if config.export and out is not None:
        from prunecli.outputs import export

        baseline = masked_model if state.model is not masked_model else None
        state = state.after(export.run(state.model, out, state.data, config, say, timings, baseline))
    state = state.after(StepResult(sections={"flops": flops.section(flops_before, flops.count(state.model))}))
    report = steps.build_report(state, out, timings, input_sizes, output_sizes)
    return PruneResult(report=report, model=state.model, masks=state.masks, output_path=out)


def check_gates(report: Report, config: PruneConfig) -> None:
    """Raise GateFailed when the pruned model is worse than the config allows."""
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
            f"accuracy dropped by {drop:.4f} ({before:.4f} -> {after:.4f}), more than --max-accuracy-drop "
            f"{config.max_accuracy_drop:g}"
        )
