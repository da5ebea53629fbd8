"""One pruning run, start to end: the flow of `prunecli prune`, and the Python API.

    from prunecli import build_config, prune
    result = prune(build_config({"model_path": "model.h5", "sparsity": 0.8, "scope": "global"}))
    print(result.report.totals["prunable_sparsity"])

Orchestration only: every step is a call that returns its result (run/steps.py, structure/,
training/, outputs/); the state of the run changes only here, by folding those results in.
"""

from __future__ import annotations

from prunecli import __version__, removal
from prunecli.config import PruneConfig
from prunecli.errors import ConfigError, GateFailed, InputError, first_line, streamed_errors_raised
from prunecli.io import models as model_io
from prunecli.io import plan_file
from prunecli.outputs.report import Report, Timings
from prunecli.results import StepResult
from prunecli.run import steps, target
from prunecli.run.state import PruneResult
from prunecli.runtime import keeps_global_state, owned_tempdir, quiet_tensorflow
from prunecli.structure import flops, keras_graph
from prunecli.training import distill


@keeps_global_state  # the caller's logging, environment and Keras defaults, as they were
@streamed_errors_raised  # a streamed dataset's failure mid-run: the CLI's DataError, not TensorFlow's
@owned_tempdir()  # the API's run too: Keras' and TensorFlow's temporary files in a folder it removes
@keras_graph.loops_compiled  # recurrent layers called eagerly run their loops compiled
def prune(config: PruneConfig, progress: steps.Progress | None = None) -> PruneResult:
    """What `prunecli prune` does, for the CLI and Python alike: with `auto`, the per-layer plan
    (run/auto.py) first; the run; then the report files the config names (`report`, `markdown`; "-",
    standard output, is the CLI's to print). Quality gates are checked by `check_gates(result.report,
    config)`, after the report is written."""
    if not isinstance(config, PruneConfig):  # a dict of settings, say: one line, not an AttributeError
        raise ConfigError("prune() takes a PruneConfig: prunecli.prune(prunecli.build_config({...}))")
    steps.checked_progress(progress)
    checked(config)
    from prunecli.outputs.report import write_report_files
    from prunecli.training import distribute

    # the report files committed with the model, plan and exports, as the CLI's block does: a report
    # that cannot be written (a full disk) left the API's new model beside no report, or an old one
    with model_io.outputs_together():
        if config.auto:
            from prunecli.run import auto

            planned = auto.planned(config, progress)
            result = run(planned.config, progress)
            planned.record(result.report)
        else:
            result = run(config, progress)
        if distribute.is_chief():  # a worker other than the chief writes nothing
            write_report_files(result.report, config.report, config.markdown)
    return result


def checked(config: PruneConfig) -> None:
    """The checks build_config makes, made again on the config prune() is given: a PruneConfig built
    directly or changed with `.replace(sparsity=5.0)` skipped them, and ran (sparsity 5 pruned a model;
    NaN ended in a ValueError). A value of the wrong type is the same one-line ConfigError."""
    from prunecli.config import validate
    from prunecli.scoring.checks import check_method

    try:
        validate(config)
        check_method(config.method, bool(config.data))
    except (TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(
            f"invalid PruneConfig ({first_line(exc)}): build it with prunecli.build_config({{...}})"
        ) from exc


def run(config: PruneConfig, progress: steps.Progress | None = None) -> PruneResult:
    """Load, score, mask, [fine-tune], [shrink], evaluate, save and report, as the config says.

    It stays one long function on purpose: it is the whole flow of a run, read top to bottom, and each
    line is one step whose result is folded into the run state.
    """
    out = _start(
        config, progress or steps.silent
    )  # every path planned and the options checked, as the CLI does, before any work
    if config.engine == "tfmot":
        from prunecli.run import tfmot

        return tfmot.prune(config, progress)

    say = progress or steps.silent
    timings = Timings()
    state, input_sizes = steps.load(config, say, timings)
    source_print = plan_file.fingerprint(state.model) if config.save_plan else None  # before any weight changes
    flops_before = target.counted_flops(state)  # multiply-adds per example, non-zeros as the load read them
    opened, config = steps.open_nested(state.model, config)  # --shrink: a backbone's channels too
    state = state.after(opened).with_config(config)
    state = state.after(steps.pick_targets(state.model, config))
    state = state.after(steps.already_sparse(state.targets, config, state.read))  # counted as loaded
    refused = removal.refusal(config.granularity.kind, state.model, state.targets, config)
    if refused:  # a structural step this model cannot take: said before any measuring
        raise InputError(refused)
    decoder_before = _decoder_view(state.model, config, say, timings)  # KerasHub decoders: blocks and tokens/s
    state = state.after(steps.evaluate(state, "before", say, timings))
    kind = config.granularity.kind
    # input features, layers, heads (and neuron on KerasHub decoder blocks): scored, chosen, removed
    removes_at_once = removal.structural(kind, state.model)
    config, defaults_chosen = config.recovery_defaults(removes_at_once, distill.can_teach(state.task))
    state = state.with_config(config).after(StepResult(notes=defaults_chosen))
    teacher = None
    # the dense model teaches the pruned one: copied before anything is pruned
    if config.distill_temperature is not None:
        if config.teacher:  # a chain of runs: the dense model the first one started from
            teacher = distill.teacher_from_file(config.teacher, state.model, config.unsafe, config.custom_objects)
        else:
            teacher = distill.teacher_copy(state.model)

    if removes_at_once:  # --target: size= and latency= become the fraction the step fits
        remove_step = target.remove_structure if config.target else steps.remove_structure
        state = state.after(remove_step(state, say, timings))
    elif config.schedule == "oneshot":
        mask_step = target.mask if config.target else steps.mask  # --target: channels allocated to fit
        state = steps.prune_oneshot(state, say, timings, mask_step, dense_model=teacher)
    if config.schedule == "oneshot" or removes_at_once:
        state = state.after(steps.evaluate(state, "after_pruning", say, timings))
    if config.epochs > 0 or config.schedule != "oneshot":
        state = state.after(steps.finetune(state, say, timings, teacher))  # gradual schedules prune as they train
        state = state.after(steps.evaluate(state, "after_finetune", say, timings))
    masked_model = state.model  # before --shrink: the export step times it in TFLite beside the shrunk one
    masked = state  # the targets and masks the plan file records (--shrink replaces them)
    if config.shrink and not removes_at_once:
        from prunecli.removal import channels as shrink_step

        state = state.after(
            shrink_step.shrink(state.model, state.targets, state.masks, state.data, config.seed, say, timings)
        )  # a smaller model that computes the same function (verified)

    plan_bytes = _plan_bytes(masked, state, config, source_print)  # --save-plan: the masks before --shrink
    if plan_bytes is not None:
        state = state.after(StepResult(sections={"plan": plan_file.plan_section(config.save_plan, plan_bytes)}))
    unquantized = None  # --quantize quantizes in place; TFLite converts a float copy (it cannot read Keras' int8)
    if config.quantize and any(fmt != "savedmodel" for fmt in config.export):
        unquantized = distill.teacher_copy(state.model)
    if config.quantize:  # Keras' own int8/int4/float8 layers, every pruned zero checked (outputs/quantize.py)
        from prunecli.outputs import quantize

        final = state.metrics.get("after_finetune") or state.metrics.get("after_pruning")
        state = state.after(
            quantize.run(state.model, state.targets, state.masks, state.data, state.task, config, final, say, timings)
        )
    # the model, its plan and exports (and the CLI's report) renamed into place together: an interrupt
    # or failure before the end of this block changes no file (io/models/write.outputs_together)
    with model_io.outputs_together():
        with plan_file.committed_with(config.save_plan, plan_bytes):
            state, out, output_sizes = write_outputs(state, config, out, masked_model, say, timings, unquantized)
        if config.target:  # what the shrunk model (and the written file) really reached
            state = state.after(target.achieved(state, out and model_io.staged(out)))
        state = state.after(StepResult(sections={"reproducibility": plan_file.reproducibility(config)}))
        state = state.after(StepResult(sections={"flops": flops.section(flops_before, target.counted_flops(state))}))
        if decoder_before is not None:
            from prunecli.outputs import decoder_blocks

            after = _decoder_view(state.model, config, say, timings)
            seq_len = config.seq_len or decoder_blocks.DEFAULT_SEQ_LEN
            state = state.after(
                StepResult(sections={"decoder": decoder_blocks.section(decoder_before, after, seq_len)})
            )
        report = steps.build_report(state, out, timings, input_sizes, output_sizes)
        if _withhold_failed_outputs(report, config):
            out = None
    return PruneResult(report=report, model=state.model, masks=state.masks, output_path=out)


def _withhold_failed_outputs(report: Report, config: PruneConfig) -> bool:
    """A model that fails its quality gate replaces no earlier output: the model, its plan and exports
    staged so far are dropped (the report, written after, still is), the report's `output`, `plan` and
    `export` entries say `written: false`, and a note says so; whether it did. The gate itself is raised by `check_gates`,
    after the report (the CLI's exit 4)."""
    from prunecli.messages import shown

    if not gate_failure(report, config):
        return False
    dropped = ", ".join(shown(p) for p in model_io.discard_staged())
    if report.output:
        report.output["written"] = False
    for entry in (report.extra.get("plan"), *(report.extra.get("export") or {}).values()):
        if isinstance(entry, dict) and "path" in entry:  # its path, size and digest describe a file not written
            entry["written"] = False
    report.notes.append(
        f"the quality gate failed: {dropped or 'no file'} not written (any earlier file of that name is as it "
        "was); this report describes the model that failed"
    )
    return True


def _decoder_view(model, config: PruneConfig, say, timings) -> dict | None:
    """A KerasHub decoder's blocks and tokens/s (outputs/decoder_blocks.py) when this run rebuilds its
    blocks (--shrink, -g layer, -g hidden); None otherwise, or when the model has no such blocks or
    reads more than tokens (decoders.rebuild_blocker)."""
    from prunecli.structure import decoders

    if not (config.shrink or config.granularity.kind in ("layer", "hidden")) or not decoders.blocks(model):
        return None
    if decoders.rebuild_blocker(model):
        return None
    from prunecli.outputs import decoder_blocks

    seq_len = config.seq_len or decoder_blocks.DEFAULT_SEQ_LEN
    if not config.speed:  # --no-speed: the blocks table only
        return decoder_blocks.measure(model, seq_len, config.seed, speed=False)
    say("measuring the decoder's tokens per second")
    with timings.phase("decoder_speed"):
        return decoder_blocks.measure(model, seq_len, config.seed)


def _start(config: PruneConfig, progress: steps.Progress):
    """Checks and plans that come before any work; returns the output model's path. The method is
    checked again for a config built without prunecli.build_config; a multi-worker strategy must exist
    before TensorFlow runs anything."""
    from prunecli.run.preflight import plan_prune
    from prunecli.scoring.checks import check_method

    check_method(config.method, bool(config.data))
    out, _plan = plan_prune(config)
    if config.engine == "tfmot" and config.save_plan:
        raise ConfigError("--save-plan needs the native engine (the tfmot engine keeps no masks)")
    quiet_tensorflow()
    if config.strategy != "default":
        from prunecli.training import distribute

        distribute.get_strategy(config.strategy, config.worker_wait, progress)
    return out


def _plan_bytes(masked, state, config: PruneConfig, source_print) -> bytes | None:
    """The --save-plan file's bytes: the masks and targets as masking left them (`masked`, before
    --shrink), the run's structural sections, and the input's fingerprint; None without --save-plan,
    or on a worker that is not the chief (only the chief writes)."""
    from prunecli.training import distribute

    if source_print is None or not distribute.is_chief():
        return None
    settings = plan_file.settings_of(config)
    shapes = {t.name: tuple(t.shape) for t in masked.targets}
    shrunk = {  # --shrink's cut of each mask it made smaller (the shrink step's sliced masks)
        t.name: state.masks.masks[t.name]
        for t in (state.targets or [])
        if state.masks is not None
        and t.name in state.masks.masks
        and shapes.get(t.name, tuple(t.shape)) != tuple(t.shape)
    }
    return plan_file.build(
        masked.targets,
        masked.masks,
        settings,
        source_print,
        version=__version__,
        sections=state.sections,
        shrunk=shrunk,
    )


def write_outputs(state, config: PruneConfig, out, masked_model, say, timings, unquantized=None):
    """Export (--export) and save the model; returns (state, output path, output sizes). `unquantized`
    is a float copy of the model --quantize started from, for TFLite (None without --quantize).

    Exports go first, so a model that cannot be exported leaves no pruned model behind; the files are
    renamed into place together when the caller's outputs_together block ends. In a multi-worker run
    only the chief writes: the others get (state, None, None), which the report reads as "nothing
    written"."""
    from prunecli.training import distribute

    if not distribute.is_chief():
        return state, None, None
    state = state.after(steps.class_change(state))  # said whichever step changed it
    if config.export:
        from prunecli.outputs import export

        baseline = masked_model if state.model is not masked_model else None  # timed in TFLite beside the shrunk one
        state = state.after(
            export.run(state.model, out, state.data, config, say, timings, baseline, unquantized, state.task)
        )
    sizes, census = steps.save(state, out, say, timings)
    # the save's finiteness check read every weight written: its counts serve the FLOPs and the report
    return state.with_read(census), out, sizes


def check_gates(report: Report, config: PruneConfig) -> None:
    """Raise GateFailed when the pruned model is worse than the config allows."""
    failure = gate_failure(report, config)
    if failure:
        raise GateFailed(failure)


def gate_failure(report: Report, config: PruneConfig) -> str | None:
    """Why the pruned model is worse than the config allows, or None."""
    if config.max_accuracy_drop is None:
        return None
    from prunecli.outputs.report import final_accuracy

    before = report.metrics.get("before", {}).get("accuracy")
    _stage, after = final_accuracy(report.to_dict())  # a --quantize run's is the quantized model's
    if before is None or after is None:
        return "--max-accuracy-drop: no accuracy was measured (is the task a regression?)"
    drop = before - after
    if drop > config.max_accuracy_drop:
        return (
            f"accuracy dropped by {drop:.4f} ({before:.4f} -> {after:.4f}), more than --max-accuracy-drop "
            f"{config.max_accuracy_drop:g}"
        )
    return None
