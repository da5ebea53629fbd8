"""`prunecli verify MODEL [--report R] [--plan P] [--data D]`: is this file what the report or plan says?

    from prunecli.run.verify import verify
    result = verify("model.pruned.keras", report="report.json", plan="plan.zip")  # GateFailed if a claim fails

Every claim is recomputed from the model file, never taken from the report:
  report: the file's sha256 (`output.sha256`), each export's (`export.<format>.sha256`: the file or
          SavedModel folder of the report's name beside MODEL; for a report without it, the export's
          outputs against MODEL's, or, where it cannot run so, a line of `VerifyResult.unchecked`), each
          layer's shape, parameters, non-zeros and sparsity,
          the totals, when the run was N:M at most N non-zeros in every group (along the input
          channels of one convolution tap) and each layer's requested sparsity being what the
          pattern prunes of it (below 1 - N/M where a tap's channels are not a multiple of M), and,
          with --data, the final accuracy within `tolerance` (absolute; default 1e-3), its loss and a
          causal LM's perplexity within METRIC_RTOL (relative) on the data
          the run evaluated on (same batch size, --val-split and seed); --data other than the files the
          report's `reproducibility.data` digest records is refused (DataError, exit 3).
  plan:   the architecture fingerprint (unless the plan's run shrank the model; a -g layer run's without
          the layers it removed), every weight the plan prunes is exactly zero, and for a shrunk model,
          each layer keeps as many units as the plan.
A report or plan whose entries are not of the types prunecli writes (`report_problem`,
plan_file.manifest_problem) is an InputError (exit 3) naming the first such entry.
A claim that does not hold is a line of `VerifyResult.failures`, one that could not be checked a line of
`VerifyResult.unchecked`; any raises GateFailed (exit 4), whose message is the first and whose `failures`
attribute holds them all (the unchecked last): a green check must not stand on a claim nobody checked.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from prunecli.errors import ConfigError, DataError, GateFailed, InputError, first_line, streamed_errors_raised
from prunecli.io import plan_file
from prunecli.messages import shown
from prunecli.runtime import keeps_global_state

TOLERANCE = 1e-3  # accuracy, absolute
METRIC_RTOL = 1e-3  # loss and perplexity, relative: the same data, batches and weights give the same figures
SPARSITY_TOLERANCE = 1e-9  # a reported sparsity against the one its non-zeros give
EXPORT_SAMPLES = 32  # seeded inputs an export without a recorded sha256 is run on
EXPORT_RTOL = 1e-3  # ... and how far (relative error over all outputs) its outputs may be from MODEL's


@dataclass
class VerifyResult:
    """What was checked (`checked`: one line per claim that holds), what failed (`failures`), and what
    could not be checked (`unchecked`: a claim the report makes without what checks it, e.g. an int8
    export of an older prunecli's report, with no digest): not held, so not `ok`, as a failure."""

    model: str
    checked: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.unchecked

    def claim(self, holds: bool, ok_text: str, failure: str) -> None:
        (self.checked if holds else self.failures).append(ok_text if holds else failure)


@keeps_global_state  # the caller's logging, environment and Keras defaults, as they were
@streamed_errors_raised  # a streamed dataset's failure mid-run: the CLI's DataError, not TensorFlow's
def verify(
    model_path: str | os.PathLike,
    report: str | os.PathLike | None = None,
    plan: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    tolerance: float = TOLERANCE,
    unsafe: bool = False,
    raise_on_failure: bool = True,
    custom_objects: tuple[str, ...] = (),
) -> VerifyResult:
    """Check MODEL against the report and/or plan; raises GateFailed (exit 4) listing the claims that
    fail unless `raise_on_failure` is False. A report or plan that cannot be read is an InputError."""
    from prunecli.io import models as model_io
    from prunecli.io import paths
    from prunecli.runtime import quiet_tensorflow

    if report is None and plan is None:
        raise ConfigError("verify needs --report, --plan or both: the claims to check")
    if model_path is None:  # verify(None, report=...): a TypeError deep in the hash before
        raise ConfigError("verify needs the model to check: verify('model.keras', report=...)")
    for role, p in (("model", model_path), ("report", report), ("plan", plan), ("data", data)):
        if p is not None and not isinstance(p, (str, os.PathLike)):  # the Python API given a dict or a model
            raise ConfigError(f"verify: {role} takes the path of a file, not a {type(p).__name__}")
    for name, flag in (("unsafe", unsafe), ("raise_on_failure", raise_on_failure)):
        if not isinstance(flag, bool):  # verify(unsafe="false") ran the file's Lambda code: a string is truthy
            raise ConfigError(f"verify: {name} takes True or False, got {flag!r}")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)):
        raise ConfigError(f"--tolerance must be a number, got {tolerance!r}")
    if not (tolerance >= 0 and math.isfinite(tolerance)):
        raise ConfigError(f"--tolerance must be a finite number >= 0, got {tolerance}")
    for role, p, err in (
        ("model file", model_path, InputError),
        ("report", report, InputError),
        ("plan", plan, InputError),
        ("data file", data, DataError),  # a FIFO would block its digest
    ):
        if p is not None:
            paths.check_readable(p, role, err)
    model_io.inspect_file(model_path)  # a missing file or a folder is one line before the report's hash reads it
    claims = _read_report(report) if report is not None else None
    saved_plan = plan_file.read(plan) if plan is not None else None
    if data is not None and claims is None:
        raise ConfigError("--data checks the report's accuracy: give --report too")
    if data is not None:
        _check_same_data(claims, data)
    result = VerifyResult(model=str(model_path))
    if claims is not None:
        _check_hash(result, claims, model_path)
        by_outputs = _check_exports(result, claims, model_path)
    quiet_tensorflow()
    model, _source = model_io.load(model_path, unsafe=unsafe, custom_objects=custom_objects)
    model = _opened_as_the_run_opened(model, claims, saved_plan)
    from prunecli.structure import targets as targets_mod

    found = {t.name: t for t in targets_mod.walk(model)}
    if claims is not None:
        _check_layers(result, claims, found)
        _check_totals(result, claims, model, found)
        _check_nm(result, claims.get("settings", {}).get("granularity"), claims.get("layers", []), found)
        _check_export_outputs(result, by_outputs, model, claims)
        if data is not None:
            _check_accuracy(result, claims, model, data, tolerance)
    if saved_plan is not None:
        shrunk = bool((claims or {}).get("settings", {}).get("shrink"))
        _check_plan(result, saved_plan, model, found, shrunk)
    if not result.ok and raise_on_failure:
        failed = result.failures + result.unchecked
        error = GateFailed(failed[0])
        error.failures = failed
        error.result = result
        raise error
    return result


def _opened_as_the_run_opened(model, claims: dict | None, saved_plan) -> object:
    """The model with the wrappers and nested models the run opened (its report's and plan's `opened`)
    opened again: the run named their layers as it saw them, opened, and a written model wraps a
    TimeDistributed's layers again (rebuild.renested), so "td_conv/kernel" was "td_conv/conv/kernel" in
    the file and every claim on it read "not in the model"."""
    opened = set((claims or {}).get("opened") or [])
    if saved_plan is not None:
        opened |= set(saved_plan.manifest.get("structure", {}).get("opened") or [])
    if not opened:
        return model
    from prunecli.structure import rebuild

    found = rebuild.opened(model, lambda nested: nested.name in opened)
    return model if found is None else found[0]


def _read_report(path) -> dict:
    try:
        value = plan_file.loads_unique(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read report {shown(path)}: {first_line(exc)}") from exc
    if not isinstance(value, dict) or "layers" not in value:
        raise InputError(f"{shown(path)} is not a prunecli report (no 'layers')")
    problem = report_problem(value)
    if problem:
        raise InputError(f"{shown(path)} is not a prunecli report ({problem})")
    return value


TOTALS = {
    "params": plan_file.is_int,
    "nonzeros": plan_file.is_int,
    "sparsity": plan_file.is_number,
    "prunable_params": plan_file.is_int,
    "prunable_nonzeros": plan_file.is_int,
    "prunable_sparsity": plan_file.is_number,
}


def report_problem(report: dict) -> str | None:
    """The first entry verify reads from a report that is not of the type prunecli writes (an edited
    report: a string where a count or a list belongs, a missing `totals`), or None."""
    from prunecli.io.plan_file import first_problem, is_int, is_ints, is_number, is_object, is_text, optional

    r = report
    problem = first_problem(
        [
            ("layers", r.get("layers"), lambda v: isinstance(v, list) and all(map(is_object, v)), "a list of objects"),
            ("settings", r.get("settings", {}), is_object, "an object"),
            ("totals", r.get("totals"), is_object, "an object"),
            ("output", r.get("output"), optional(is_object), "an object"),
            ("metrics", r.get("metrics"), optional(is_object), "an object"),
            ("quantize", r.get("quantize"), optional(is_object), "an object"),
            ("reproducibility", r.get("reproducibility"), optional(is_object), "an object"),
            ("export", r.get("export"), optional(is_object), "an object"),
        ]
    )
    problem = problem or plan_file.settings_problem(r.get("settings", {}))
    if problem:
        return problem
    fields = []
    for i, layer in enumerate(r["layers"]):
        fields += [
            (f"layer {i} name", layer.get("name"), is_text, "text"),
            (
                f"layer {i} shape",
                layer.get("shape"),
                lambda v: is_ints(v) and min(v, default=0) >= 0,
                "a list of sizes",
            ),
            (f"layer {i} params", layer.get("params"), is_int, "an integer"),
            (f"layer {i} nonzeros", layer.get("nonzeros"), is_int, "an integer"),
            (f"layer {i} sparsity", layer.get("sparsity"), is_number, "a number"),
            (f"layer {i} requested_sparsity", layer.get("requested_sparsity"), optional(is_number), "a number"),
        ]
    totals = r["totals"]
    fields += [(f"totals.{key}", totals.get(key), ok, "a number") for key, ok in TOTALS.items()]
    output = r.get("output") or {}
    recorded_data = (r.get("reproducibility") or {}).get("data")
    fields.append(("reproducibility.data", recorded_data, optional(is_object), "an object"))
    if is_object(recorded_data):
        fields.append(("reproducibility.data.sha256", recorded_data.get("sha256"), optional(is_text), "text"))
    fields += [
        ("output.sha256", output.get("sha256"), optional(is_text), "text"),
        ("output.bytes", output.get("bytes"), optional(is_int), "an integer"),
    ]
    for fmt, entry in (r.get("export") or {}).items():
        fields.append((f"export.{fmt}", entry, is_object, "an object"))
        if is_object(entry):
            fields += [
                (f"export.{fmt}.path", entry.get("path"), is_text, "text"),
                (f"export.{fmt}.sha256", entry.get("sha256"), optional(is_text), "text"),
            ]
    stages = dict(r.get("metrics") or {})
    quantized = r.get("quantize") or {}
    fields.append(("quantize.metrics", quantized.get("metrics"), optional(is_object), "an object"))
    if is_object(quantized.get("metrics")):
        stages["quantize.metrics.quantized"] = quantized["metrics"].get("quantized")
    for stage, values in stages.items():
        where = stage if stage.startswith("quantize.") else f"metrics.{stage}"
        fields.append((where, values, optional(is_object), "an object"))
        if is_object(values):
            fields += [
                (f"{where}.{k}", values.get(k), optional(is_number), "a number")
                for k in ("accuracy", "loss", "perplexity")
            ]
    return first_problem(fields)


def _check_same_data(claims: dict, data) -> None:
    """--data must be the data the report's run evaluated (its `reproducibility.data` digest): the accuracy
    the report records is for that data, and re-measured on other data it could pass the check by chance
    or fail it with nothing wrong. A DataError (exit 3), not a failed claim: nothing was checked. A report
    of a prunecli that recorded no digest is checked on the data given, as before."""
    recorded = ((claims.get("reproducibility") or {}).get("data") or {}).get("sha256")
    if recorded is None:
        return
    given = plan_file.data_digest(str(data))["sha256"]
    if given != str(recorded).strip().lower():
        run_data = claims.get("settings", {}).get("data")
        raise DataError(
            f"--data {shown(data)} is not the data the report's run evaluated ({shown(run_data)}, sha256"
            f" {str(recorded)[:12]}...; this is {given[:12]}...): its accuracy is for that data"
        )


def _check_hash(result: VerifyResult, claims: dict, model_path) -> None:
    said = (claims.get("output") or {}).get("sha256")
    if said is None:
        result.failures.append("output sha256: the report records none (written by an older prunecli?)")
        return
    said = str(said).strip().lower()  # a digest is hex: one copied in capitals is the same digest
    actual = plan_file.file_sha256(model_path)
    result.claim(
        actual == said,
        f"output sha256 {actual[:12]}",
        f"output sha256: the report says {said[:12]}..., {shown(model_path)} is {actual[:12]}... (another file, or "
        "changed since the run)",
    )
    bytes_said = (claims.get("output") or {}).get("bytes")
    if isinstance(bytes_said, int):
        size = Path(model_path).stat().st_size
        result.claim(
            size == bytes_said,
            f"output size {size:,} bytes",
            f"output size: the report says {bytes_said:,} bytes, {shown(model_path)} has {size:,}",
        )


def _check_exports(result: VerifyResult, claims: dict, model_path) -> list[tuple[str, Path, dict]]:
    """Each export the report records (`export.<format>`: a .tflite file or a SavedModel folder) is there
    and is the run's: its sha256 (plan_file.path_sha256) is the report's. It is looked for beside MODEL under
    the report's file name, as the run wrote it beside its output: a folder of model and exports moved
    or copied elsewhere is checked where it now is. An export the run did not write (its quality gate
    failed) holds if nothing is there. Returns the exports whose report records no digest (an older
    prunecli's) that are there: `_check_export_outputs` runs them once the model is loaded."""
    by_outputs = []
    for fmt, entry in (claims.get("export") or {}).items():
        where = Path(model_path).parent / Path(entry["path"]).name
        said = entry.get("sha256")
        if entry.get("written") is False:
            result.claim(
                not (where.exists() or where.is_symlink()),
                f"export {fmt}: not written by the run, and not there",
                f"export {fmt}: {shown(where)} is there, but the report's run did not write it (its quality gate "
                "failed): not the run's export",
            )
            continue
        if not (where.is_file() or where.is_dir()):  # a FIFO or device in its place would block the read
            what = "is missing" if not where.exists() else "is not a file or folder"
            result.failures.append(f"export {fmt}: {shown(where)} {what} (the report's run wrote it beside the model)")
            continue
        if said is None:
            by_outputs.append((fmt, where, entry))
            continue
        said = str(said).strip().lower()
        try:
            actual = plan_file.path_sha256(where)
        except OSError as exc:
            result.failures.append(
                f"export {fmt}: cannot read {shown(exc.filename or where)}: {exc.strerror or first_line(exc)}"
            )
            continue
        result.claim(
            actual == said,
            f"export {fmt} sha256 {actual[:12]}",
            f"export {fmt} sha256: the report says {said[:12]}..., {shown(where)} is {actual[:12]}... (another file, or "
            "changed since the run)",
        )
    return by_outputs


def _check_export_outputs(result: VerifyResult, exports: list[tuple[str, Path, dict]], model, claims: dict) -> None:
    """An export whose report records no sha256 (an older prunecli's) is checked by what it computes: run
    (TFLite interpreter, or TensorFlow for a SavedModel folder) on EXPORT_SAMPLES seeded inputs, its outputs
    are MODEL's within EXPORT_RTOL (relative error over all outputs; a float export of the same weights is
    within 1e-6, another model's is not). One that cannot be checked so (an int8 file, whose outputs are
    the model's only up to its quantization; a file this interpreter cannot run) is in `unchecked`, which
    fails verify as a failed claim does: a green check must not stand on an export nobody checked."""
    from prunecli.outputs import export

    seed = (claims.get("settings") or {}).get("seed")
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
    quantized = bool((claims.get("settings") or {}).get("quantize"))
    for fmt, where, entry in exports:
        head = f"export {fmt} {shown(where)}: not checked (the report records no sha256: written by an older prunecli"
        if fmt == "tflite-int8" or (quantized and fmt != "savedmodel"):
            result.unchecked.append(f"{head}, and an int8 file's outputs are not the model's to compare)")
            continue
        try:
            measured = export.outputs_against(model, where, seed, EXPORT_SAMPLES, "xnnpack_refused" not in entry)
        except Exception as exc:  # noqa: BLE001 - whatever stops it from running: it is not checked, and said so
            result.unchecked.append(f"{head}, and it does not run here: {first_line(exc)})")
            continue
        error = measured.get("relative_error")
        if measured.get("max_abs_diff") is None or error is None:
            result.unchecked.append(f"{head}, and its inputs do not match the model's by name)")
            continue
        result.claim(
            error <= EXPORT_RTOL,
            f"export {fmt} outputs: the model's within {error:.2g} (relative) on {measured['samples']} seeded inputs",
            f"export {fmt}: {shown(where)} computes other outputs than {shown(result.model)} (relative error {error:.3g} "
            f"on {measured['samples']} seeded inputs, above {EXPORT_RTOL:g}): another model's export, or changed since "
            "the run",
        )


def _nonzeros(variable) -> int:
    import numpy as np

    return int(np.count_nonzero(np.asarray(variable)))


def _check_layers(result: VerifyResult, claims: dict, found: dict) -> None:
    for layer in claims.get("layers", []):
        name = layer.get("name")
        t = found.get(name)
        if t is None:
            result.failures.append(f"layer {shown(name)}: not in the model")
            continue
        shape = list(t.shape)
        if shape != list(layer.get("shape", [])):
            result.failures.append(
                f"layer {shown(name)}: shape {tuple(shape)}, the report says {tuple(layer.get('shape', []))}"
            )
            continue
        nz, size = _nonzeros(t.variable), t.size
        sparsity = 1.0 - nz / size if size else 0.0
        result.claim(
            layer.get("params") == size and layer.get("nonzeros") == nz,
            f"layer {name}: {nz} non-zeros of {size}",
            f"layer {shown(name)}: {nz} non-zeros of {size}, the report says {layer.get('nonzeros')} of {layer.get('params')}",
        )
        said = layer.get("sparsity")
        result.claim(
            isinstance(said, (int, float)) and abs(said - sparsity) <= SPARSITY_TOLERANCE,
            f"layer {name}: sparsity {sparsity:.6f}",
            f"layer {shown(name)}: sparsity {sparsity:.6f}, the report says {said}",
        )


def _check_totals(result: VerifyResult, claims: dict, model, found: dict) -> None:
    from prunecli.outputs.report import whole_counts

    totals = claims.get("totals") or {}
    params, nonzeros = whole_counts(model)
    names = [layer.get("name") for layer in claims.get("layers", []) if layer.get("name") in found]
    p_params = sum(found[n].size for n in names)
    p_nz = sum(_nonzeros(found[n].variable) for n in names)
    actual = {
        "params": params,
        "nonzeros": nonzeros,
        "prunable_params": p_params,
        "prunable_nonzeros": p_nz,
        "sparsity": 1.0 - nonzeros / params if params else 0.0,
        "prunable_sparsity": 1.0 - p_nz / p_params if p_params else 0.0,
    }
    for key, value in actual.items():
        if key not in totals:
            continue
        said = totals[key]
        holds = (
            said == value
            if isinstance(value, int)
            else isinstance(said, (int, float)) and abs(said - value) <= SPARSITY_TOLERANCE
        )
        shown_value = value if isinstance(value, int) else f"{value:.6f}"
        result.claim(holds, f"totals {key}: {shown_value}", f"totals {key}: {shown_value}, the report says {said}")


def _nm_of(granularity) -> tuple[int, int] | None:
    """(N, M) of an N:M granularity as the report writes it (checked by `report_problem`), else None."""
    from prunecli.config.fields import Granularity

    g = Granularity.parse(granularity) if granularity else None
    return (g.rows, g.cols) if g is not None and g.kind == "nm" else None


def nm_violations(target, n: int, m: int, kept=None) -> tuple[int, str]:
    """Groups of the target's N:M layout (structure.targets.NmGroups: along the input channels of one
    convolution tap, never across taps) holding more than N non-zeros in some unit: (count, where the
    first one is, as rows of the (reduction, units) matrix view). `kept`: a keep mask to count instead
    of the weight's non-zeros (a plan's, before it is applied)."""
    import numpy as np

    a = np.moveaxis(np.asarray(target.variable if kept is None else kept), target.unit_axis, -1)
    matrix = a.reshape(-1, a.shape[-1]) != 0  # (reduction, units), as structure.targets lays it out
    slots = target.nm_groups(m).slots
    padded = np.concatenate([matrix, np.zeros((1, matrix.shape[1]), bool)])  # a padding slot reads a zero
    counts = padded[np.where(slots < 0, matrix.shape[0], slots)].sum(axis=1)  # (groups, units)
    bad = np.argwhere(counts > n)
    if not len(bad):
        return 0, ""
    g, u = (int(x) for x in bad[0])
    rows = slots[g][slots[g] >= 0]
    return len(bad), f"unit {u}, rows {rows[0]}..{rows[-1]} hold {int(counts[g, u])} non-zeros"


def block_violations(target, rows: int, cols: int, kept) -> tuple[int, str]:
    """Blocks of the target's RxC layout (rows of the (reduction, units) matrix view by units; edge blocks
    smaller, as selection.policy cuts them) that a keep mask keeps in part: (count, where the first is)."""
    import numpy as np

    a = np.moveaxis(np.asarray(kept, bool), target.unit_axis, -1)
    matrix = a.reshape(-1, a.shape[-1])
    pr, pc = (-matrix.shape[0]) % rows, (-matrix.shape[1]) % cols
    kept_count = np.pad(matrix, [(0, pr), (0, pc)]).astype(np.int64)
    kept_count = kept_count.reshape(kept_count.shape[0] // rows, rows, -1, cols).sum(axis=(1, 3))
    sizes = np.outer(
        np.minimum(rows, matrix.shape[0] - np.arange(0, matrix.shape[0], rows)),
        np.minimum(cols, matrix.shape[1] - np.arange(0, matrix.shape[1], cols)),
    )
    bad = np.argwhere((kept_count > 0) & (kept_count < sizes))
    if not len(bad):
        return 0, ""
    r, c = (int(x) for x in bad[0])
    return len(bad), f"the block at rows {r * rows}, units {c * cols} is partly kept"


def pattern_problem(target, keep, granularity) -> str:
    """How a plan's keep mask for `target` breaks its granularity (whole units for neuron, whole blocks for
    block:RxC, at most N of every M for N:M), or "": an edited plan's masks labelled with a pattern they do
    not hold would be applied and verified as that pattern."""
    import numpy as np

    keep = np.asarray(keep, bool)
    if granularity.kind == "neuron" and keep.ndim:
        per_unit = np.moveaxis(keep, target.unit_axis, -1).reshape(-1, keep.shape[target.unit_axis])
        mixed = np.flatnonzero(per_unit.any(axis=0) & ~per_unit.all(axis=0))
        return f"unit {mixed[0]} is partly kept" if len(mixed) else ""
    if granularity.kind == "block" and keep.ndim:
        return block_violations(target, granularity.rows, granularity.cols, keep)[1]
    if granularity.kind == "nm":
        return nm_violations(target, granularity.rows, granularity.cols, kept=keep)[1]
    return ""


def _check_nm(result: VerifyResult, granularity, layers: list, found: dict) -> None:
    """Every group keeps at most N (more zeros are allowed: a weight zero in the input stays zero), and a
    layer's requested sparsity, where the report gives one other than 0 (a skipped layer), is what the
    pattern prunes of it: less than 1 - N/M when a convolution's channels per tap are not a multiple of M."""
    nm = _nm_of(granularity)
    if nm is None:
        return
    n, m = nm
    for layer in layers:
        t = found.get(layer.get("name"))
        if t is None or list(t.shape) != list(layer.get("shape", [])):
            continue  # reported above
        count, first = nm_violations(t, n, m)
        share = t.nm_sparsity(n, m)
        result.claim(
            count == 0,
            f"layer {t.name}: {n}:{m} in every group (the pattern prunes {share:.6f} of it)",
            f"layer {shown(t.name)}: {n}:{m} broken in {count} group(s) (first: {first})",
        )
        said = layer.get("requested_sparsity")
        if said:
            result.claim(
                isinstance(said, (int, float)) and abs(said - share) <= SPARSITY_TOLERANCE,
                f"layer {t.name}: requested sparsity {share:.6f}, what {n}:{m} prunes of it",
                f"layer {shown(t.name)}: the report requests sparsity {said}, {n}:{m} prunes {share:.6f} of it",
            )


def _reading_all_features(model, claims: dict):
    """After `-g input --shrink`, `model` behind a gather of the kept features (the report's
    kept_features) from inputs as wide as --data's, as the run measured it on --data cut to them: verify
    --data refused the run's own data (exit 3, 'inputs have shape (20,) per example but the model
    expects (10,)'). Any other model, or a report that does not name each input's features, as it is."""
    import keras

    section, kept = claims.get("feature_pruning") or {}, claims.get("kept_features") or {}
    widths = {name: (section.get("inputs") or {}).get(name, {}).get("features") for name in kept}
    names = [getattr(t, "name", None) for t in model.inputs]
    if not section.get("shrunk") or sorted(names, key=str) != sorted(kept) or not all(widths.values()):
        return model
    wide, cut = [], []
    for tensor, name in zip(model.inputs, names, strict=True):
        x = keras.Input(tuple(tensor.shape[1:-1]) + (int(widths[name]),), dtype=tensor.dtype, name=name)
        wide.append(x)
        cut.append(keras.ops.take(x, kept[name], axis=-1))
    outputs = model(cut[0] if len(cut) == 1 else cut)
    return keras.Model(wide[0] if len(wide) == 1 else wide, outputs)


def _check_accuracy(result: VerifyResult, claims: dict, model, data, tolerance: float) -> None:
    """The final stage's metrics (outputs.report.final_metrics) measured again on --data: the accuracy
    within `tolerance` (absolute), the loss and a causal LM's perplexity within METRIC_RTOL (relative).
    Only the accuracy was checked: a report edited to say perplexity 3.0 (33.07 measured) or any loss
    verified, and a regression's report (a loss, no accuracy) could not be checked at all."""
    from prunecli.io import data as data_mod
    from prunecli.outputs.report import final_metrics
    from prunecli.training.metrics import evaluate, infer_task

    stage, values = final_metrics(claims)
    said = values.get("accuracy")
    losses = {key: values[key] for key in ("loss", "perplexity") if values.get(key) is not None}
    if said is None and not losses:
        result.failures.append("accuracy: the report records none to check (run without labelled --data?)")
        return
    s = claims.get("settings", {})
    model = _reading_all_features(model, claims)
    loaded = data_mod.load(
        str(data), model, int(s.get("batch_size") or 64), float(s.get("val_split") or 0.0), int(s.get("seed") or 0)
    )
    if not loaded.labelled:
        raise InputError(f"{shown(data)} has no labels (y): verify cannot measure accuracy on it")
    found = evaluate(model, loaded.eval, infer_task(model, loaded.y_example, loaded.next_token))
    if said is not None:
        measured = found.get("accuracy")
        holds = measured is not None and abs(measured - said) <= tolerance
        result.claim(
            holds,
            f"accuracy {measured:.4f} (report {said:.4f}, {stage})" if measured is not None else "",
            f"accuracy: {measured} on {shown(data)}, the report says {said} ({stage}; tolerance {tolerance:g})",
        )
    for key, value in losses.items():
        measured = found.get(key)
        holds = measured is not None and math.isclose(measured, value, rel_tol=METRIC_RTOL)
        result.claim(
            holds,
            f"{key} {measured:.6g} (report {value:.6g}, {stage})" if measured is not None else "",
            f"{key}: {measured} on {shown(data)}, the report says {value} ({stage}; relative tolerance {METRIC_RTOL:g})",
        )


def _check_plan(result: VerifyResult, plan: plan_file.Plan, model, found: dict, shrunk: bool = False) -> None:
    """The plan's claims; `shrunk`: the report says the run removed units (--shrink), so shapes
    differ from the plan's and each layer's unit count is checked instead."""
    import numpy as np

    from prunecli.config.fields import Granularity

    settings = plan.manifest.get("settings", {})
    shrunk = shrunk or bool(settings.get("shrink"))
    granularity = Granularity.parse(plan.granularity)  # checked when the plan was read
    if not shrunk:
        _check_architecture(result, plan, model, bool(settings.get("quantize")))
    for entry in plan.targets:
        name = entry["name"]
        t = found.get(name)
        if t is None:
            result.failures.append(f"plan target {shown(name)}: not in the model")
            continue
        if list(t.shape) == list(entry["shape"]):
            problem = pattern_problem(t, plan.mask(name), granularity)
            if problem:
                result.failures.append(f"plan target {shown(name)}: its mask is not {granularity} ({problem})")
            pruned = ~plan.mask(name)
            alive = int(np.count_nonzero(np.asarray(t.variable)[pruned]))
            result.claim(
                alive == 0,
                f"plan target {name}: {int(pruned.sum())} pruned weights are zero",
                f"plan target {shown(name)}: {alive} weight(s) the plan prunes are non-zero",
            )
        elif shrunk and "removed_units" in entry:
            want = int(entry["shape"][entry["unit_axis"]]) - len(entry["removed_units"])
            result.claim(
                t.units == want,
                f"plan target {name}: {want} units kept",
                f"plan target {shown(name)}: {t.units} units, the plan keeps {want}",
            )
        elif shrunk and plan.shrunk_mask(name) is not None and list(t.shape) == entry["shrunk"]["shape"]:
            pruned = ~plan.shrunk_mask(name)  # the plan's mask as its run's --shrink cut it
            alive = int(np.count_nonzero(np.asarray(t.variable)[pruned]))
            result.claim(
                alive == 0,
                f"plan target {name}: {int(pruned.sum())} pruned weights are zero (shrunk to {tuple(t.shape)})",
                f"plan target {shown(name)}: {alive} weight(s) the plan prunes are non-zero (shrunk to {tuple(t.shape)})",
            )
        elif shrunk and _within(t.shape, entry["shape"]):
            # an element, block or N:M plan applied with --shrink: the units and input rows the shrink found
            # dead (a filter no reader reads included) are recorded nowhere, so its masks cannot be laid on the
            # smaller kernel; said as such, not as a model of another shape (what a failed claim said)
            planned = int(entry["shape"][entry["unit_axis"]])
            result.unchecked.append(
                f"plan target {shown(name)}: not checked (--shrink left {t.units} of the plan's {planned} units and"
                f" shape {tuple(t.shape)} of {tuple(entry['shape'])}; the {granularity} plan records no removed units"
                " to lay its masks on the smaller kernel)"
            )
        else:
            result.failures.append(
                f"plan target {shown(name)}: shape {tuple(t.shape)}, the plan {tuple(entry['shape'])}"
            )


def _within(shape, planned) -> bool:
    """A shape of the planned shape's rank, no side larger: what --shrink can make of the planned kernel."""
    return len(shape) == len(planned) and all(a <= b for a, b in zip(shape, planned, strict=True))


def _check_architecture(result: VerifyResult, plan: plan_file.Plan, model, quantized: bool) -> None:
    """The model's architecture is the one the plan's run wrote: the plan's (its input's), without the layers
    a `-g layer` run removed (the structure section lists them). A --quantize run's output holds int8 codes
    and scales (and prunecli's QuantizedConv classes) where the plan's float model held float kernels: by
    design, so only the layers' names must match."""
    from prunecli.structure import keras_graph

    expected = plan.manifest.get("architecture", {})
    said = "plan architecture (layer names: a quantized model)" if quantized else "plan architecture"
    if plan.granularity == "layer":
        removed = (plan.manifest.get("structure") or {}).get("removed_layers")
        if removed is None:  # the output lost layers the plan does not name: nothing to compare it with
            result.unchecked.append("plan architecture: not checked (the -g layer plan records no removed layers)")
            return
        present = {str(layer.name) for layer in keras_graph.all_layers(model)}
        expected = plan_file.without_layers(expected, removed, present)
        said += f" without its {len(removed)} removed layer(s)"
    mismatch = plan_file.first_mismatch(expected, model, names_only=quantized)
    result.claim(mismatch is None, said, f"plan architecture: {mismatch}")
