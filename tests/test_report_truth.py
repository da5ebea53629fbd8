"""What a run says about the model it wrote holds for that model, from the CLI and from Python alike.

An adversarial audit (twenty-third session) found a --quantize run's report counting the float kernels
while the file held the quantized ones (int4 rounding makes zeros of its own: `verify` failed the
run's own report), the quality gate judging the float model's accuracy while the quantized one was
written, and the Python API ignoring `report`/`markdown` and `auto`, and returning the path of a model
its failed gate had withheld.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import build_mlp, make_tabular


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A trained MLP and its data: input 7 is always 0 in the data but its kernel row is large, so
    int4 rounding of the rest of that layer (its groups' scales set by the large row) loses accuracy."""
    import keras

    folder = tmp_path_factory.mktemp("truth")
    x, y = make_tabular(600, inputs=8, classes=3, seed=1)
    x[:, 7] = 0.0
    model = build_mlp(inputs=8, classes=3, seed=1)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=25, batch_size=32, verbose=0)
    kernel = np.asarray(model.get_layer("hidden1").kernel)
    kernel[7, :] = 100.0
    model.get_layer("hidden1").kernel.assign(kernel)
    model.save(folder / "m.keras")
    np.savez(folder / "d.npz", x=x, y=y)
    return folder


@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_a_quantized_run_reports_the_zeros_its_file_holds(cli, tmp_path, trained, mode):
    out, report = tmp_path / "q.keras", tmp_path / "q.json"
    result = cli("prune", trained / "m.keras", "-s", "0.02", "--quantize", mode, "-o", out, "-r", report, "-q")
    assert result.exit_code == 0, result.output
    claims = json.loads(report.read_text())
    totals = claims["totals"]
    assert totals["prunable_nonzeros"] >= 0 and totals["nonzeros"] >= totals["prunable_nonzeros"]
    checked = cli("verify", out, "--report", report)
    assert checked.exit_code == 0, checked.output


@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
def test_the_quality_gate_judges_the_quantized_model_that_is_written(cli, tmp_path, trained):
    out = tmp_path / "q.keras"
    result = cli(
        "prune", trained / "m.keras", "-s", "0.3", "--quantize", "int4", "--data", trained / "d.npz",
        "--max-accuracy-drop", "0.05", "-o", out, "-r", tmp_path / "q.json", "-q",
        "--save-plan", tmp_path / "q.plan", "--export", "savedmodel",
    )  # fmt: skip
    claims = json.loads((tmp_path / "q.json").read_text())
    # the plan's and export's entries describe files that were not written: they say so
    assert claims["plan"]["written"] is False and claims["export"]["savedmodel"]["written"] is False
    assert not (tmp_path / "q.plan").exists() and not (tmp_path / "q_savedmodel").exists()
    quantized = claims["quantize"]["metrics"]["quantized"]["accuracy"]
    lost = claims["metrics"]["before"]["accuracy"] - quantized
    assert lost > 0.05, "the fixture's int4 model must lose more than the gate allows"
    assert result.exit_code == 4 and "accuracy dropped" in result.stderr
    assert not out.exists() and claims["output"]["written"] is False


def test_the_summary_and_markdown_show_the_accuracy_of_the_quantized_model_written():
    """A --quantize run writes the quantized model, which the gate and `verify` judge: the terminal summary
    and the CI page show its row too, not only the float pruned model's (they ended at 'after pruning
    0.8167, -0.1033' for a file at 0.8100). A structural run's removal is said beside its sparsity."""
    import io

    from rich.console import Console

    from prunecli.outputs.report import QUANTIZED_STAGE, Report, render, render_markdown

    metrics = {"before": {"loss": 0.35, "accuracy": 0.92}, "after_pruning": {"loss": 0.619, "accuracy": 0.8167}}
    quantize = {"metrics": {"float_pruned": metrics["after_pruning"], "quantized": {"loss": 0.6256, "accuracy": 0.81}}}
    totals = {"params": 10, "nonzeros": 4, "sparsity": 0.6, "prunable_params": 8, "prunable_nonzeros": 2}
    report = Report(
        settings={"method": "magnitude", "sparsity": 0.7},
        input={"path": "m.keras", "format": "keras"},
        totals={**totals, "prunable_sparsity": 0.75},
        metrics=metrics,
        extra={"quantize": quantize},
    )
    page = render_markdown(report)
    assert f"| {QUANTIZED_STAGE} | 0.6256 | 0.8100 | -0.1100 |" in page
    assert page.index("| after pruning |") < page.index(f"| {QUANTIZED_STAGE} |")
    console = Console(file=io.StringIO(), width=200)
    render(report, console)
    summary = console.file.getvalue()
    assert QUANTIZED_STAGE in summary and "loss 0.6256, accuracy 0.8100" in summary
    assert "removed" not in summary and "Removed" not in page  # nothing was taken out of the structure

    # the page's table of files lists the exports (they were only in the collapsed JSON block), and says
    # which were withheld by a failed gate
    report.input["bytes"] = 2048
    report.extra["export"] = {"tflite": {"path": "m.tflite", "bytes": 1024, "gzip_bytes": 512, "written": False}}
    files = render_markdown(report).split("### Files")[1]
    assert "| input | `m.keras` |" in files and "| export tflite (not written) | `m.tflite` |" in files

    # a --shrink run's file is dense: the page said '0.0% sparse' and nothing of the 63% it removed
    report.extra = {"shrink": {"params_before": 467, "params_after": 171}}
    said = "296 of 467 parameters (63.4%); 171 remain"
    assert f"Removed from the model: **{said}**." in render_markdown(report)
    console = Console(file=io.StringIO(), width=200)
    render(report, console)
    assert said in console.file.getvalue()


def test_a_model_already_sparser_than_asked_is_said_to_stay_so():
    """-s 0.3 on a 50% sparse model wrote a 50% file, each layer's 'target 30%' beside its 43-80%, nothing
    said: the masks prune what is asked and the zeros already there stay. A note says so; none at or
    under the share asked, nor for a threshold."""
    import keras

    from prunecli.config import build_config
    from prunecli.run.steps import already_sparse
    from prunecli.structure import targets

    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(10, name="h"), keras.layers.Dense(3, name="o")])
    for layer in model.layers:
        kernel = np.asarray(layer.kernel).copy()
        kernel.flat[::2] = 0.0  # half of every kernel
        layer.kernel.assign(kernel)
    found = list(targets.walk(model))

    def notes(**settings):
        return already_sparse(found, build_config({"model_path": "m.keras", **settings}, environ={})).notes

    (note,) = notes(sparsity=0.3)
    assert "already 50.0% zero, more than the 0.3 asked" in note and "sparser than asked" in note
    assert notes(sparsity=0.5) == () and notes(sparsity=0.7) == () and notes(threshold=0.1) == ()
    assert notes() == ()  # no --sparsity: the default 0.5


def test_one_read_of_the_weights_counts_them_and_finds_a_nan():
    """structure/census.py: the finiteness check's one read of every weight also counts its non-zeros
    (what FLOPs, the already-sparse note and the report count from it); the first NaN/Inf is found; a
    variable it did not read is counted where it lies, not taken from another variable's entry."""
    import keras

    from prunecli.structure.census import Census, nonzeros

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"), keras.layers.Dense(2, name="b")])
    a, b = model.get_layer("a"), model.get_layer("b")
    a.kernel.assign(np.eye(4, 3, dtype="float32"))  # 3 non-zeros of 12
    census = Census(model.weights)
    assert len(census) == 4 and census.nonfinite is None
    assert census.nonzeros(a.kernel) == 3 and census.nonzeros(a.bias) == 0
    assert nonzeros(b.kernel, census) == np.count_nonzero(np.asarray(b.kernel))
    assert census.nonzeros(keras.Variable(np.ones(5, "float32"))) == 5  # not read: counted now
    b.bias.assign(np.array([np.nan, 0.0], "float32"))
    a.bias.assign(np.array([np.inf, 0.0, 0.0], "float32"))
    assert Census(model.weights).nonfinite is a.bias  # the first, in the order of the weights


def test_the_run_state_drops_its_census_once_a_step_changes_the_weights():
    """RunState.read (the counts of load's or save's read) is carried over steps that add notes or
    sections, and dropped by a step that replaces the masks or the model: its counts would be stale."""
    from prunecli.config import build_config
    from prunecli.results import StepResult
    from prunecli.run.state import RunState

    read = object()
    state = RunState(config=build_config({"model_path": "m.keras"}, environ={}), model=None, source=None, read=read)
    assert state.after(StepResult(notes=("n",), sections={"s": 1}, targets=())).read is read
    assert state.after(StepResult(masks=None)).read is None
    assert state.after(StepResult(model=object())).read is None
    assert state.after(StepResult()).with_read(None).read is None


@pytest.mark.slow  # three runs on a tiny MLP (~2 s)
def test_the_counts_of_one_read_keep_every_check(cli, tmp_path, mlp_files, monkeypatch):
    """The run reads the weights whole once at load and once at save, and counts from those reads:
    the report's non-zeros are the written file's, the FLOPs' non-zeros drop with the pruning, a model
    already sparser than asked still gets its note, and a NaN a step writes still stops the save."""
    import keras

    from prunecli.run import steps

    out, report = tmp_path / "a.keras", tmp_path / "a.json"
    assert cli("prune", mlp_files["keras"], "-s", "0.5", "-o", out, "-r", report, "-q").exit_code == 0
    written, claims = keras.saving.load_model(out), json.loads(report.read_text())
    assert claims["totals"]["nonzeros"] == sum(int(np.count_nonzero(np.asarray(w))) for w in written.weights)
    for row in claims["layers"]:
        kernel = np.asarray(written.get_layer(row["layer"]).kernel)
        assert row["nonzeros"] == np.count_nonzero(kernel)
    assert claims["totals"]["prunable_sparsity"] == pytest.approx(0.5, abs=0.01)
    assert claims["flops"]["after_nonzero"] < claims["flops"]["before_nonzero"] == claims["flops"]["before"]

    again = cli("prune", out, "-s", "0.3", "-o", tmp_path / "b.keras", "-r", tmp_path / "b.json", "-q")
    assert again.exit_code == 0, again.output
    notes = json.loads((tmp_path / "b.json").read_text())["notes"]
    assert any("already 50.0% zero, more than the 0.3 asked" in n for n in notes), notes

    masked = steps.mask

    def mask_then_nan(state, *args):
        result = masked(state, *args)
        state.model.get_layer("hidden2").bias.assign(np.full(16, np.nan, "float32"))  # after the load's read
        return result

    monkeypatch.setattr(steps, "mask", mask_then_nan)
    failed = cli("prune", mlp_files["keras"], "-s", "0.5", "-o", tmp_path / "c.keras", "-q")
    assert failed.exit_code == 4 and "hidden2/bias is NaN or Inf after the run" in failed.stderr, failed.output
    assert not (tmp_path / "c.keras").exists()


@pytest.mark.slow
def test_the_python_api_writes_the_report_files_and_withholds_a_failed_model(tmp_path, trained):
    from prunecli import build_config, prune
    from prunecli.errors import GateFailed
    from prunecli.run.pipeline import check_gates

    settings = {"model_path": str(trained / "m.keras"), "output": str(tmp_path / "a.keras")}
    files = {"report": str(tmp_path / "a.json"), "markdown": str(tmp_path / "a.md")}
    result = prune(build_config({**settings, **files, "sparsity": 0.5}))
    assert result.output_path is not None and (tmp_path / "a.keras").exists()
    assert json.loads((tmp_path / "a.json").read_text())["totals"] == result.report.totals
    assert "prunecli" in (tmp_path / "a.md").read_text()
    before = (tmp_path / "a.keras").read_bytes()
    failing = build_config(
        {**settings, **files, "sparsity": 0.95, "data": str(trained / "d.npz"), "max_accuracy_drop": 0.01}
    )
    result = prune(failing)
    assert result.output_path is None and result.report.output["written"] is False
    assert (tmp_path / "a.keras").read_bytes() == before  # the earlier model, as it was
    assert json.loads((tmp_path / "a.json").read_text())["output"]["written"] is False
    summary = (tmp_path / "a.md").read_text()  # the CI page names no file as the output that it did not write
    assert "→ `a.keras` (not written)" in summary and f"| output (not written) | `{tmp_path / 'a.keras'}` |" in summary
    with pytest.raises(GateFailed):
        check_gates(result.report, failing)


@pytest.mark.slow
def test_the_python_api_runs_auto_as_the_cli_does(tmp_path, trained):
    from prunecli import build_config, prune

    config = build_config(
        {
            "model_path": str(trained / "m.keras"),
            "output": str(tmp_path / "auto.keras"),
            "data": str(trained / "d.npz"),
            "sparsity": 0.5,
            "auto": True,
        }
    )
    report = prune(config).report.to_dict()
    assert "auto" in report and "auto" in report["timings_s"]


def test_an_accuracy_gate_on_a_regression_is_refused_before_the_work(cli, tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, name="h"), keras.layers.Dense(1, name="out")])
    model.compile(optimizer="adam", loss="mse")
    model.save(tmp_path / "reg.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "reg.npz", x=rng.normal(size=(64, 4)), y=rng.normal(size=(64, 1)))
    result = cli(
        "prune", tmp_path / "reg.keras", "--data", tmp_path / "reg.npz", "--max-accuracy-drop", "0.1",
        "-o", tmp_path / "o.keras",
    )  # fmt: skip
    assert result.exit_code == 2 and "no accuracy can be compared" in result.stderr
    assert "scoring" not in result.stderr and not (tmp_path / "o.keras").exists()


@pytest.mark.slow
def test_a_threshold_held_at_the_floor_says_so(cli, tmp_path, trained):
    report = tmp_path / "t.json"
    result = cli("prune", trained / "m.keras", "-t", "1e9", "-o", tmp_path / "t.keras", "-r", report, "-q")
    assert result.exit_code == 0, result.output
    notes = json.loads(report.read_text())["notes"]
    assert any("hidden1/kernel: kept" in n and "(min_keep)" in n for n in notes), notes


@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
def test_accuracy_measured_on_the_rows_fine_tuned_on_is_said(cli, tmp_path, trained):
    """A data file with x and y only: the report's accuracy after fine-tuning is on the rows the model
    just trained on, which only `finetune.validation` hinted; a note says it, and not with a test set."""
    arrays = dict(np.load(trained / "d.npz"))
    np.savez(tmp_path / "test.npz", **arrays, x_test=arrays["x"][:100], y_test=arrays["y"][:100])
    said = {}
    for name in ("d.npz", "test.npz"):
        data = trained / name if name == "d.npz" else tmp_path / name
        report = tmp_path / f"{name}.json"
        run = ["-s", "0.5", "--data", data, "--epochs", "1", "-o", tmp_path / "o.keras", "--force"]
        result = cli("prune", trained / "m.keras", *run, "-r", report, "-q")
        assert result.exit_code == 0, result.output
        said[name] = any(
            "measured on the data it was fine-tuned on" in n for n in json.loads(report.read_text())["notes"]
        )
    assert said == {"d.npz": True, "test.npz": False}


@pytest.mark.slow  # 2-6 s: one run makes most kinds of file the report describes
def test_the_report_and_summary_state_what_the_written_files_hold(cli, tmp_path, trained):
    """Session 29's audit reloaded every kind of output (pruned .keras and .h5, --shrink, --quantize int8
    and int4, --export tflite, tflite-int8 and savedmodel) and found the report's figures to be the
    files': this guards the hardest run of them, read back independently of the report's own counting
    (int8 codes are zero exactly where the weights are, so no dequantization is needed)."""
    import hashlib
    import re

    import keras
    import tensorflow as tf

    out, report, summary = tmp_path / "q.keras", tmp_path / "q.json", tmp_path / "q.md"
    result = cli(
        "prune", trained / "m.keras", "-g", "neuron", "-s", "0.5", "--shrink", "--quantize", "int8",
        "--data", trained / "d.npz", "--export", "tflite-int8", "-o", out, "-r", report, "--markdown", summary, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    claims = json.loads(report.read_text())
    assert claims["output"]["bytes"] == out.stat().st_size
    assert claims["output"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    model = keras.saving.load_model(out, compile=False)
    weights = [np.asarray(w) for w in model.weights if not re.search(r"(_scale|_zero)$", w.path)]
    params, nonzeros = sum(w.size for w in weights), sum(int(np.count_nonzero(w)) for w in weights)
    assert (claims["totals"]["params"], claims["totals"]["nonzeros"]) == (params, nonzeros)
    assert params < (8 + 1) * 32 + (32 + 1) * 16 + (16 + 1) * 3, "the written model is the shrunk one"
    text = summary.read_text()
    assert f"whole model {1 - nonzeros / params:.1%} sparse ({nonzeros:,} of {params:,})" in text
    assert f"| output | `{out}` | {out.stat().st_size / 1024:.1f} KiB |" in text
    exported = claims["export"]["tflite-int8"]
    tflite = tmp_path / Path(exported["path"]).name
    assert exported["bytes"] == tflite.stat().st_size
    interpreter = tf.lite.Interpreter(model_path=str(tflite))
    codes = []
    for d in interpreter.get_tensor_details():
        if d["dtype"] == np.int8 and len(d["shape"]) == 2:
            with contextlib.suppress(ValueError):  # not allocated: an activation, not a constant kernel
                codes.append(interpreter.get_tensor(d["index"]))
    counted = {"values": sum(c.size for c in codes), "zeros": sum(int((c == 0).sum()) for c in codes)}
    assert {k: exported["int8_weights"][k] for k in counted} == counted
