"""`prunecli apply PLAN MODEL`: the pruning a plan file recorded, applied exactly to another checkpoint.

    from prunecli.run.apply import apply_plan
    result = apply_plan("plan.zip", "retrained.keras", output="retrained.pruned.keras", epochs=1, data="d.npz")

Nothing is scored: the plan's keep masks are checked against the model's architecture (layer names
and classes, weight paths, shapes and dtypes; the first difference is an InputError, exit 3) and
applied as saved. Then the ordinary steps of a run: neuron plans fold and zero the dead channels'
followers as `prune` does, BatchNorm statistics are re-estimated, fine-tuning (--epochs, masks held),
--shrink, --export, the model and the report. Plans of structural runs (-g input, layer, head) are
refused (exit 2), and so are neuron plans of KerasHub decoder blocks (their units leave gate, up and
down projections in one rebuild): a model rebuild that this command does not replay yet.
"""

from __future__ import annotations

import os

from prunecli import removal
from prunecli.config.fields import APPLY_OPTIONS
from prunecli.errors import ConfigError, InputError, streamed_errors_raised
from prunecli.io import models as model_io
from prunecli.io import plan_file
from prunecli.messages import shown
from prunecli.results import StepResult
from prunecli.run import steps
from prunecli.run.state import PruneResult
from prunecli.runtime import keeps_global_state, owned_tempdir, quiet_tensorflow
from prunecli.structure import flops, keras_graph

# what the plan decides; the command line sets the rest (data, fine-tuning, outputs)
FROM_PLAN = ("granularity", "seed", "batch_size", "min_keep", "allow_empty")


def apply_config(plan: plan_file.Plan, model_path, **options):
    """The PruneConfig of an apply run: the plan's granularity (and seed, batch size), nothing scored
    (one-shot, masks held while fine-tuning), and the options given (PruneConfig field names).
    PRUNECLI_* variables and recipes are not read: a plan replays what it holds."""
    from prunecli.scoring.checks import build_config

    kind = plan.granularity.split("=")[0].split(":")[0]
    if kind not in removal.STRUCTURAL and "ffn" in plan.manifest.get("structure", {}):
        kind = "neuron on KerasHub decoder blocks"  # SwiGLU units deleted from gate, up and down at once
    if kind in removal.STRUCTURAL or kind.startswith("neuron on"):
        raise ConfigError(
            f"plan {shown(plan.path)} removes structure (-g {kind}); apply replays element, block, N:M "
            "and neuron plans only: run `prunecli prune` with the plan's options on this model instead"
        )
    unknown = sorted(set(options) - set(APPLY_OPTIONS))
    if unknown:  # it would run without them and report them as settings (--quantize, a gate, a sparsity)
        raise ConfigError(
            f"apply takes no option {unknown[0]!r}: it replays the plan's masks, then does only"
            f" {', '.join(APPLY_OPTIONS)} (run `prunecli prune` for the rest)"
        )
    settings = plan.manifest.get("settings", {})
    given = {k: settings[k] for k in FROM_PLAN if settings.get(k) is not None}
    build_config({"model_path": model_path}, environ={})  # the model given: its error is not the plan's
    try:  # the plan's own settings first, so that an edited one is named as the plan's (its run had data)
        plans = {**given, "model_path": model_path, "method": "magnitude", "schedule": "oneshot", "data": "plan's"}
        build_config(plans, environ={})
    except ConfigError as exc:
        raise ConfigError(f"plan {shown(plan.path)}: its settings: {exc.message}") from exc
    if not options.get("data"):  # the plan's batch size batches --data only: without it nothing reads it
        given.pop("batch_size", None)
    given.update({k: v for k, v in options.items() if v is not None and v != ()})
    given.update(model_path=model_path, method="magnitude", schedule="oneshot")
    config = build_config(given, environ={})
    return config.replace(save_plan=None, auto=False, sparsity=None, threshold=None)


def plan_paths(config, plan_path, recipe=None):
    """The output path and the checked path plan of an apply run: the plan file is a read, so no
    output may overwrite it."""
    from prunecli.io import paths

    if not config.model_path:
        raise ConfigError("no model given")
    paths.check_readable(plan_path, "plan file", InputError)
    output = model_io.resolve_output(config.model_path, config.output, config.force)
    reads = {"plan": [plan_path]}
    if config.data:
        from prunecli.io.data import files_read

        reads.update(files_read(config.data))
    exports = paths.export_paths(output) if config.export else None
    return output, paths.plan(config, output_model=output, recipe=recipe, extra_reads=reads, exports=exports)


@keeps_global_state  # the caller's logging, environment and Keras defaults, as they were
@streamed_errors_raised  # a streamed dataset's failure mid-run: the CLI's DataError, not TensorFlow's
@owned_tempdir()  # Keras' and TensorFlow's temporary files in a folder the run removes
@keras_graph.loops_compiled  # recurrent layers called eagerly run their loops compiled
def apply_plan(plan_path: str | os.PathLike, model_path: str | os.PathLike, progress=None, **options) -> PruneResult:
    """Apply the plan file at `plan_path` to the model at `model_path`; `options` are PruneConfig
    field names (output, force, data, epochs, learning_rate, shrink, export, report, ...).

    Returns a PruneResult whose report has a `plan` section (the plan's path and sha256, whether the
    model's weights are the ones the plan was computed from). Raises InputError (exit 3) for a plan
    that does not fit the model, ConfigError (exit 2) for a structural plan."""
    from prunecli.run.pipeline import write_outputs

    steps.checked_progress(progress)
    plan = plan_file.read(plan_path)
    config = apply_config(plan, model_path, **options)
    out, _ = plan_paths(config, plan_path)
    quiet_tensorflow()
    say = progress or steps.silent
    from prunecli.outputs.report import Timings, write_report_files

    timings = Timings()
    state, input_sizes = steps.load(config, say, timings)
    state = state.after(_check_fit(plan, state.model, config))  # the input's architecture, as the plan's run read it
    opened = plan.manifest.get("structure", {}).get("opened")
    if opened:  # the plan's masks name the layers of the nested models its run opened
        state = state.after(steps.open_nested(state.model, config, names=set(opened))[0])
    flops_before = flops.count(state.model, state.config.seq_len, state.read)  # non-zeros as loaded
    state = state.after(_targets(plan, state.model))
    state = state.after(steps.evaluate(state, "before", say, timings))
    say(f"applying the plan's masks ({len(plan.targets)} tensors)")
    with timings.phase("mask"):
        state = state.after(_apply_masks(plan, state.model, state.targets, config))
    if config.granularity.kind == "neuron":
        state = state.after(steps.recalibrate_batchnorm(state, say, timings))
    state = state.after(steps.evaluate(state, "after_pruning", say, timings))
    if config.epochs > 0:
        state = state.after(steps.finetune(state, say, timings))  # schedule oneshot: the masks stay the plan's
        state = state.after(steps.evaluate(state, "after_finetune", say, timings))
    masked_model = state.model
    if config.shrink:
        from prunecli.removal import channels as shrink_step

        state = state.after(
            shrink_step.shrink(state.model, state.targets, state.masks, state.data, config.seed, say, timings)
        )
    with model_io.outputs_together():  # the model, exports and report files renamed together
        state, out, output_sizes = write_outputs(state, config, out, masked_model, say, timings)
        after = flops.count(state.model, state.config.seq_len, state.read)  # as the save read them
        sections = {"flops": flops.section(flops_before, after)}
        sections["reproducibility"] = plan_file.reproducibility(config)
        state = state.after(StepResult(sections=sections))
        report = steps.build_report(state, out, timings, input_sizes, output_sizes)
        write_report_files(report, config.report, config.markdown)
    return PruneResult(report=report, model=state.model, masks=state.masks, output_path=out)


def _check_fit(plan: plan_file.Plan, model, config) -> StepResult:
    """Refuse a model of another architecture (exit 3, the first mismatch named); the report's `plan`
    section says whether the weights are the ones the plan was computed from."""
    mismatch = plan_file.first_mismatch(plan.manifest.get("architecture", {}), model)
    if mismatch:
        raise InputError(f"plan {shown(plan.path)} does not fit {shown(config.model_path)}: {mismatch}")
    same_weights = plan_file.weights_sha256(model) == plan.manifest.get("weights_sha256")
    section = {
        "path": str(plan.path),
        "sha256": plan.sha256,
        "granularity": plan.granularity,
        "same_weights": same_weights,
        "method": plan.manifest.get("settings", {}).get("method"),
    }
    notes = (
        ()
        if same_weights
        else ("the model's weights differ from those the plan was computed from; its masks were applied as saved",)
    )
    return StepResult(sections={"plan": section}, notes=notes)


def _targets(plan: plan_file.Plan, model) -> StepResult:
    """The model's tensors the plan names, in the plan's order; one the model lacks is an InputError."""
    from prunecli.structure import targets

    found = {t.name: t for t in targets.walk(model)}
    picked = []
    for entry in plan.targets:
        t = found.get(entry["name"])
        if t is None or list(t.shape) != list(entry["shape"]):
            what = (
                "has no such weight" if t is None else f"has shape {tuple(t.shape)}, the plan {tuple(entry['shape'])}"
            )
            raise InputError(f"plan {shown(plan.path)}: the model {what} for {shown(entry['name'])}")
        picked.append(t)
    if not picked:
        raise InputError(f"plan {shown(plan.path)} holds no masks")
    return StepResult(targets=picked)


def _apply_masks(plan: plan_file.Plan, model, targets, config) -> StepResult:
    """The plan's keep masks zeroed into the weights (selection.kernels.apply_masks); for neuron plans,
    the dead channels' constants folded and their followers zeroed, as `prune` does."""
    from prunecli.selection import kernels
    from prunecli.selection.policy import MaskSet

    masks = MaskSet(
        masks={t.name: plan.mask(t.name) for t in targets},
        requested={e["name"]: e.get("requested_sparsity") for e in plan.targets},
        selection_path="plan",
    )
    _check_pattern(plan, targets, masks.masks, config.granularity)
    kernels.apply_masks([t.variable for t in targets], [masks.masks[t.name] for t in targets])
    if config.granularity.kind == "neuron":
        from prunecli.structure import channels, surgery

        masks.notes += surgery.fold_dead_constants(model, list(targets), masks.masks)
        masks.followers = channels.follower_masks(model, list(targets), masks.masks)
        channels.apply_follower_masks(masks.followers)
    return StepResult(masks=masks, notes=tuple(masks.notes), sections={"selection": {"path": "plan"}})


def _check_pattern(plan: plan_file.Plan, targets, masks: dict, granularity) -> None:
    """Masks that do not have the plan's granularity (whole units for neuron, whole blocks for block:RxC,
    at most N of every M for N:M) are refused: a plan whose granularity was edited would be applied with
    the wrong treatment (no bias folding for units it kills, an N:M export of a pattern it does not hold)
    and reported, and verified, under a layout it does not have."""
    from prunecli.run.verify import pattern_problem

    for t in targets:
        problem = pattern_problem(t, masks[t.name], granularity)
        if problem:
            raise InputError(f"plan {shown(plan.path)}: the mask of {shown(t.name)} is not {granularity} ({problem})")
