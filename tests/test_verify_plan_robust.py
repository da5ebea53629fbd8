"""`verify` and `apply` with plans across model formats, plans of layer-removal runs, and edited plans
and reports (one line and exit 3, never a traceback)."""

from __future__ import annotations

import json
import re
import zipfile

import numpy as np
import pytest


def _sequential(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu", name="d1"),
            keras.layers.Dense(16, activation="relu", name="d2"),
            keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )


def _nested():
    """A functional model holding a nested Sequential (its weights are named by the nested model's name
    in a .h5 load only)."""
    import keras

    keras.utils.set_random_seed(1)
    inner = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(8, name="i1"), keras.layers.Dense(8, name="i2")], name="inner"
    )
    x = keras.Input((8,), name="x")
    y = keras.layers.Dense(8, name="n1")(x)
    y = inner(y)
    y = keras.layers.Dense(8, name="n2")(y)
    return keras.Model(x, keras.layers.Dense(2, name="head")(y), name="outer")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The Sequential MLP and the nested model, each as .keras and .h5, and labelled data for the MLP."""
    d = tmp_path_factory.mktemp("robust")
    mlp, nested = _sequential(), _nested()
    for stem, model in (("mlp", mlp), ("nested", nested)):
        model.save(d / f"{stem}.keras")
        model.save(d / f"{stem}.h5")
    rng = np.random.default_rng(0)
    np.savez(d / "d.npz", x=rng.standard_normal((64, 8)).astype("float32"), y=rng.integers(0, 3, 64))
    return d


def _one_error_line(result, code: int) -> str:
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("prunecli: error:"), result.output
    return lines[0]


@pytest.mark.parametrize(
    ("stem", "source", "output"),
    [pytest.param("mlp", "keras", "h5", marks=pytest.mark.slow), ("mlp", "h5", "keras"), ("nested", "h5", "keras")],
)
def test_a_plan_fits_its_architecture_in_either_file_format(files, tmp_path, cli, stem, source, output):
    """Keras names a weight "sequential/d1/kernel" when the model is loaded from .h5 and "d1/kernel" from
    .keras (a nested model's name too); the plan names weights by their layers, the same for both."""
    from prunecli.run.apply import apply_plan

    out, report, plan = tmp_path / f"o.{output}", tmp_path / "r.json", tmp_path / "p.plan"
    args = ("prune", files / f"{stem}.{source}", "-s", "0.5", "-q", "-o", out, "-r", report, "--save-plan", plan)
    assert cli(*args).exit_code == 0
    res = cli("verify", out, "--report", report, "--plan", plan)
    assert res.exit_code == 0, res.output
    # apply: the plan made from one format fits the same checkpoint in the other, weights included
    other = files / f"{stem}.{output}"
    applied = apply_plan(plan, other, output=str(tmp_path / f"a.{source}"), quiet=True)
    assert applied.report.to_dict()["plan"]["same_weights"] is True
    # another architecture is still refused, naming the first difference
    stranger = files / ("nested.keras" if stem == "mlp" else "mlp.keras")
    line = _one_error_line(cli("apply", plan, stranger, "-o", tmp_path / "x.keras", "-q"), 3)
    assert "does not fit" in line


@pytest.mark.parametrize(("stem", "extra"), [("mlp", ()), ("nested", ("--exclude", "n*"))])
def test_verify_checks_a_layer_removal_plan_against_the_smaller_model(files, tmp_path, cli, stem, extra):
    """A -g layer run's output is its input without the removed layers (a removed nested model takes its
    own layers with it): verify checks that architecture, and still refuses the input model itself."""
    out, report, plan = tmp_path / "o.keras", tmp_path / "r.json", tmp_path / "p.plan"
    args = ("prune", files / f"{stem}.keras", "-g", "layer", "--remove-layers", "1", *extra, "-q")
    assert cli(*args, "-o", out, "-r", report, "--save-plan", plan).exit_code == 0
    with zipfile.ZipFile(plan) as z:
        removed = json.loads(z.read("plan.json"))["structure"]["removed_layers"]
    assert removed == (["d2"] if stem == "mlp" else ["inner"])
    res = cli("verify", out, "--report", report, "--plan", plan)
    assert res.exit_code == 0, res.output
    res = cli("verify", files / f"{stem}.keras", "--plan", plan)  # the input still holds the removed layer
    assert res.exit_code == 4 and "plan architecture" in res.output


def _set(path: list, value):
    def edit(doc: dict) -> None:
        for key in path[:-1]:
            doc = doc[key]
        doc[path[-1]] = value

    return edit


PLAN_EDITS = {
    "kept": (["targets", 0, "kept"], "x"),
    "targets": (["targets"], "oops"),
}
REPORT_EDITS = {
    "layers": (["layers"], "x"),
    "settings": (["settings"], "x"),
    "shape": (["layers", 0, "shape"], None),
    "granularity": (["settings", "granularity"], "n:m=x"),
    "accuracy": (["metrics", "after_pruning", "accuracy"], "high"),
    "val_split": (["settings", "val_split"], "x"),
    "nonzeros": (["layers", 0, "nonzeros"], "58"),
    "totals": (["totals"], None),
}


@pytest.fixture(scope="module")
def run(files, tmp_path_factory):
    """One pruning run of the MLP with its data: (output, report, plan)."""
    from click.testing import CliRunner

    from prunecli.cli import main

    d = tmp_path_factory.mktemp("run")
    out, report, plan = d / "o.keras", d / "r.json", d / "p.plan"
    args = ["prune", files / "mlp.keras", "-s", "0.5", "--data", files / "d.npz", "-q", "-o", out, "-r", report]
    res = CliRunner().invoke(main, [str(a) for a in [*args, "--save-plan", plan]], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, report, plan


@pytest.mark.parametrize(
    "edit", [f"plan-{k}-{c}" for k in PLAN_EDITS for c in ("apply", "verify")] + list(REPORT_EDITS)
)
def test_an_edited_plan_or_report_is_one_line_and_exit_3(files, run, tmp_path, cli, edit):
    """An entry of the wrong type (a string for a count or a list, null for the totals) is a bad input
    named in one line, not an internal error, nor a claim checked against a wrong value or skipped."""
    out, report, plan = run
    if edit.startswith("plan-"):
        _, key, command = edit.split("-")
        edited = tmp_path / "edited.plan"
        with zipfile.ZipFile(plan) as z, zipfile.ZipFile(edited, "w") as w:
            manifest = json.loads(z.read("plan.json"))
            _set(*PLAN_EDITS[key])(manifest)
            w.writestr("plan.json", json.dumps(manifest))
            for name in z.namelist()[1:]:
                w.writestr(name, z.read(name))
        if command == "apply":
            res = cli("apply", edited, files / "mlp.keras", "-o", tmp_path / "a.keras", "-q")
        else:
            res = cli("verify", out, "--plan", edited)
        line = _one_error_line(res, 3)
        assert "is not a prunecli plan file" in line and key in line
        return
    doc = json.loads(report.read_text())
    _set(*REPORT_EDITS[edit])(doc)
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(doc))
    data = ("--data", files / "d.npz") if edit in ("accuracy", "val_split") else ()
    line = _one_error_line(cli("verify", out, "--report", edited, *data), 3)
    assert "is not a prunecli report" in line and edit in line


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("requested_sparsity", 1.5, "requested sparsity 1.5, not in [0, 1]"),
        ("requested_sparsity", -3, "requested sparsity -3, not in [0, 1]"),
        ("removed_units", [99], "lists removed units [99], its mask removes []"),
        ("removed_units", [-1], "lists removed units [-1], its mask removes []"),
    ],
)
def test_a_plan_edited_to_claim_what_its_masks_do_not_hold_is_refused(run, tmp_path, key, value, message):
    """A hand-edited plan whose target asks for a sparsity of 150% (`apply` printed "target 150.0%"
    in its report) or lists units its mask keeps (`verify --plan` counts a shrunk layer's units from
    that list) is an InputError (exit 3) when it is read, for `apply` and `verify` alike."""
    from prunecli.errors import InputError
    from prunecli.io import plan_file

    _out, _report, plan = run
    edited = tmp_path / "edited.plan"
    with zipfile.ZipFile(plan) as z, zipfile.ZipFile(edited, "w") as w:
        manifest = json.loads(z.read("plan.json"))
        manifest["targets"][0][key] = value
        w.writestr("plan.json", json.dumps(manifest))
        for name in z.namelist()[1:]:
            w.writestr(name, z.read(name))
    with pytest.raises(InputError, match=re.escape(message)):
        plan_file.read(edited)
