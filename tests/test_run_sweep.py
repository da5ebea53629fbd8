"""Sensitivity sweeps (prunecli.run.sweep) and --auto's allocation (prunecli.run.auto)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from prunecli import build_config, prune
from prunecli.errors import ConfigError
from prunecli.run import auto, sweep


def config_for(files, **extra):
    return build_config({"model_path": files["keras"], "data": files["data"], **extra}, environ={})


# --- pure logic -------------------------------------------------------------------------------


def test_parse_sparsities_sorts_dedups_and_rejects_bad_values():
    assert sweep.parse_sparsities("0.9, 0.5,0.5,0.1") == (0.1, 0.5, 0.9)
    assert sweep.parse_sparsities([0.3]) == (0.3,)
    for bad in ("", "0.5,abc", "1.0", "0", "-0.2"):
        with pytest.raises(ConfigError):
            sweep.parse_sparsities(bad)


@pytest.mark.parametrize(
    "extra, message",
    [({"data": None}, "needs --data"), ({"threshold": 0.1}, "threshold"), ({"granularity": "2:4"}, "N:M")],
)
def test_settings_without_a_sparsity_to_vary_are_refused(mlp_files, extra, message):
    config = config_for(mlp_files).replace(**{k: v for k, v in extra.items() if k != "granularity"})
    if "granularity" in extra:
        config = config_for(mlp_files, granularity=extra["granularity"])
    with pytest.raises(ConfigError, match=message):
        sweep.check_sweepable(config)


def test_fine_tuning_sweeps_say_clearly_when_fine_tuning_is_missing(mlp_files, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "prunecli.training.finetune" else real(name, *a)
    )
    with pytest.raises(ConfigError, match="fine-tuning is not available"):
        sweep.check_sweepable(config_for(mlp_files, epochs=1))
    sweep.check_sweepable(config_for(mlp_files))  # without --epochs the sweep still runs


def synthetic(accuracies: dict[str, list[float]], sparsities=(0.2, 0.5, 0.8), base=0.9, budget=0.01):
    result = sweep.SweepResult(
        model="m.keras",
        data="d.npz",
        method="magnitude",
        scope="layer",
        granularity="element",
        epochs=0,
        max_accuracy_drop=budget,
        n_eval=100,
        baseline={"loss": 0.3, "accuracy": base},
        layers=[{"name": n, "classes": ["Dense"], "params": 10} for n in accuracies if n != sweep.ALL],
    )
    for curve, values in accuracies.items():
        for s, acc in zip(sparsities, values, strict=True):
            result.points.append(sweep.SweepPoint(curve, s, s, {"loss": 1.0 - acc, "accuracy": acc}))
    return result


def test_suggestion_is_the_largest_sparsity_whose_drop_and_all_smaller_ones_stay_in_budget():
    result = synthetic({sweep.ALL: [0.9, 0.895, 0.5], "a": [0.9, 0.7, 0.899], "b": [0.85, 0.9, 0.9]})
    assert result.suggested_sparsity == 0.5
    assert result.max_within_budget("a") == 0.2  # 0.8 is within budget again, but 0.5 was not
    assert result.max_within_budget("b") == 0.0  # over budget from the first point
    assert result.drop(result.curve("a")[1]) == pytest.approx(0.2)
    assert sweep.summary_line(result).endswith("suggested sparsity 0.5 (largest with accuracy drop <= 0.01)")
    # a point within the budget past one over it: the line says so instead of 'no swept sparsity keeps
    # the accuracy drop within 0.01' (or 'largest with ...') beside a table row within it
    for curve, first in (([0.85, 0.9, 0.9], "no sparsity suggested"), ([0.9, 0.85, 0.9], "suggested sparsity 0.2")):
        line = sweep.summary_line(synthetic({sweep.ALL: curve}))
        assert first in line and "no swept sparsity" not in line
        assert line.endswith("within it too, past one over it") and ("0.8 within" in line)


def test_a_gradual_schedule_names_what_its_first_columns_measured():
    """Under a gradual schedule a point's after_pruning is measured two thirds into fine-tuning, at the final
    sparsity: the table, the JSON and the plot's legend called it "after pruning" of a model already trained."""
    result = synthetic({sweep.ALL: [0.9, 0.895, 0.5]})
    header, _, _ = sweep.table_rows(result)
    assert header[1:3] == ["all: accuracy", "all: loss"]
    result.schedule, result.epochs = "polynomial", 2
    header, _, _ = sweep.table_rows(result)
    assert header[1:3] == [f"all: accuracy ({result.pruned_label})", f"all: loss ({result.pruned_label})"]
    assert "during fine-tuning" in result.pruned_label and result.to_dict()["schedule"] == "polynomial"


def test_regression_results_have_no_suggestion_and_plot_the_loss(tmp_path):
    result = synthetic({sweep.ALL: [0.9, 0.8, 0.7]})
    result.baseline = {"loss": 0.3}
    for p in result.points:
        p.after_pruning = {"loss": p.after_pruning["loss"]}
    assert result.suggested_sparsity is None
    header, rows, _ = sweep.table_rows(result)
    assert header[1] == "all: loss" and len(rows) == 3
    assert header.count("all: loss") == 1 and all(len(row) == len(header) for row in rows)  # no second loss column
    assert sweep.plot(result, tmp_path / "loss.png").stat().st_size > 1024


# --- measuring on a real model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def mlp_sweep(mlp_files):
    said = []
    result = sweep.run(config_for(mlp_files), sparsities=(0.5, 0.9), progress=said.append)
    layers = len(result.layers)
    first = next(i for i, m in enumerate(said) if m.startswith("all layers at"))
    assert f"sweeping: {2 * (1 + layers)} pruned evaluations of {result.n_eval} examples" in said[first - 1]
    return result


def test_sweep_measures_every_curve_at_every_sparsity(mlp_sweep):
    curves = {p.curve for p in mlp_sweep.points}
    assert curves == {sweep.ALL, "hidden1", "hidden2", "out"}
    assert len(mlp_sweep.points) == 2 * 4
    for p in mlp_sweep.points:
        assert p.measured_sparsity == pytest.approx(p.sparsity, abs=0.01)
        assert set(p.after_pruning) == {"loss", "accuracy"}
    assert 0.4 < mlp_sweep.baseline["accuracy"] <= 1.0
    assert [layer["params"] for layer in mlp_sweep.layers] == [20 * 32, 32 * 16, 16 * 3]


@pytest.mark.slow
def test_each_point_starts_from_the_original_weights(mlp_files, mlp_sweep, tmp_path):
    """A point must equal a fresh prune of the file: proof that the weights were restored in between."""
    fresh = prune(config_for(mlp_files, sparsity=0.9, output=tmp_path / "a.keras", sizes=False))
    point = next(p for p in mlp_sweep.points if p.curve == sweep.ALL and p.sparsity == 0.9)
    assert point.after_pruning["accuracy"] == pytest.approx(fresh.report.metrics["after_pruning"]["accuracy"])
    assert point.after_pruning["loss"] == pytest.approx(fresh.report.metrics["after_pruning"]["loss"], rel=1e-5)
    alone = prune(config_for(mlp_files, sparsity=0.9, include=["hidden2"], output=tmp_path / "b.keras", sizes=False))
    point = next(p for p in mlp_sweep.points if p.curve == "hidden2" and p.sparsity == 0.9)
    assert point.after_pruning["loss"] == pytest.approx(alone.report.metrics["after_pruning"]["loss"], rel=1e-5)


@pytest.fixture(scope="module")
def bn_cnn_files(tmp_path_factory):
    """A BatchNorm CNN and 70 examples, 56 to train on: one batch of --batch-size 64, so BatchNorm's
    re-estimated statistics do not depend on the order a point's pass reads them in."""
    from conftest import write_bn_cnn

    folder = write_bn_cnn(tmp_path_factory.mktemp("sweep_bn"), n=70, side=8)
    return {"keras": str(folder / "cnn.keras"), "data": str(folder / "d.npz")}


@pytest.mark.slow
@pytest.mark.parametrize("reconstruct", [False, True], ids=["batchnorm", "reconstruct"])
def test_a_channel_sweep_point_is_what_prune_writes(bn_cnn_files, tmp_path, reconstruct):
    """-g neuron: each point re-estimates BatchNorm (or refits with --reconstruct) as prune does, and
    starts from every original weight: the 0.3 point's zeroed followers and re-estimated statistics are
    gone when the 0.5 point is measured, which then equals a fresh prune at 0.5."""
    settings = {"granularity": "neuron", "reconstruct": reconstruct, "val_split": 0.2, "batch_size": 64}
    result = sweep.run(config_for(bn_cnn_files, **settings), sparsities=(0.3, 0.5), per_layer=False)
    fresh = prune(config_for(bn_cnn_files, sparsity=0.5, output=tmp_path / "p.keras", sizes=False, **settings))
    report = fresh.report.to_dict()
    assert ("batchnorm_recalibrated" in report) is not reconstruct and ("calibration" in report) is reconstruct
    point = next(p for p in result.points if p.sparsity == 0.5)
    assert point.after_pruning["loss"] == pytest.approx(report["metrics"]["after_pruning"]["loss"], rel=1e-5)


def test_outputs_json_csv_markdown_and_a_valid_png(mlp_sweep, tmp_path):
    from matplotlib import image

    paths = sweep.write_outputs(mlp_sweep, tmp_path / "out", "mlp")
    data = json.loads(paths["json"].read_text())
    assert data["schema_version"] == 1 and data["kind"] == "sweep"
    assert len(data["points"]) == len(mlp_sweep.points)
    assert data["suggested_sparsity"] == mlp_sweep.suggested_sparsity
    assert set(data["layer_max_sparsity"]) == {"hidden1", "hidden2", "out"}
    with open(paths["csv"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(mlp_sweep.points)
    assert {r["curve"] for r in rows} == {"all", "hidden1", "hidden2", "out"}
    png = paths["png"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1024
    pixels = image.imread(paths["png"])
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels.std() > 0.01  # something was drawn
    md = paths["md"].read_text()
    assert "![" in md and "(mlp.png)" in md
    assert "| sparsity |" in md and "hidden1: accuracy" in md


@pytest.mark.slow
def test_sweep_with_finetuning_adds_a_finetuned_stage(mlp_files):
    """Fine-tuned points, here with --distill: each distils from the dense model copied before the
    first point, as prune does (a sweep with --distill failed after its baseline: 'none was passed'),
    and the outputs say so."""
    pytest.importorskip("prunecli.training.finetune")
    result = sweep.run(config_for(mlp_files, epochs=1, distill=2.0), sparsities=(0.9,), per_layer=False)
    (point,) = result.points
    assert point.after_finetune is not None and point.after_pruning is not None
    assert point.final is point.after_finetune
    assert point.measured_sparsity == pytest.approx(0.9, abs=0.01)  # masks held while training
    assert result.to_dict()["distill"] == 2.0 and "distilled from the unpruned model" in sweep.render_markdown(result)


@pytest.mark.slow
def test_every_point_reads_the_training_data_in_the_order_a_prune_run_does(mlp_files, monkeypatch):
    """The training data reshuffles at each pass: a point after the first fine-tuned (and drew its
    allocation's examples) on the orders the earlier points left, not a prune run's (digits CNN,
    --epochs 1: the 0.9 point after a 0.8 one 0.9806, `prune -s 0.9 --epochs 1` 0.9472)."""
    firsts = []

    def first_batch(state, config, targets, timings, teacher=None):
        for _epoch in range(2):  # as fine-tuning does: one pass per epoch
            labels = [np.asarray(y) for _x, y in state.data.train]
        firsts.append(np.concatenate(labels))
        return {"after_pruning": {"loss": 0.1, "accuracy": 0.9}}, ()

    monkeypatch.setattr(sweep, "prune_point", first_batch)
    sweep.run(config_for(mlp_files, batch_size=256), sparsities=(0.3, 0.6, 0.9), per_layer=False)
    assert len(firsts) == 3
    for later in firsts[1:]:
        np.testing.assert_array_equal(later, firsts[0])


# --- --auto ------------------------------------------------------------------------------------


def test_cost_curve_is_monotone_and_convex():
    hull = auto.cost_curve([(0.2, 0.0), (0.4, 0.5), (0.6, 0.2), (0.8, 2.0)])
    xs, ys = zip(*hull, strict=True)
    assert xs[0] == 0.0 and xs[-1] == 0.8
    assert all(b >= a for a, b in zip(ys, ys[1:], strict=False))
    slopes = [(y1 - y0) / (x1 - x0) for (x0, y0), (x1, y1) in zip(hull, hull[1:], strict=False)]
    assert all(b > a for a, b in zip(slopes, slopes[1:], strict=False))
    assert all(y <= c + 1e-12 for (x, y) in hull for (px, c) in [(0.8, 2.0)] if x == px)


def test_allocation_hits_the_target_and_prefers_cheap_weights():
    curves = {
        "big_robust": auto.cost_curve([(0.5, 0.01), (0.9, 0.1)]),
        "small_fragile": auto.cost_curve([(0.5, 1.0), (0.9, 3.0)]),
    }
    sizes = {"big_robust": 900, "small_fragile": 100}
    alloc = auto.allocation_for(curves, sizes, {}, 0.6)
    assert auto.total_sparsity(alloc, sizes, {}) == pytest.approx(0.6)
    assert alloc["big_robust"] > 0.6 > alloc["small_fragile"]
    fixed = {"pinned": 0.5}
    sizes_fixed = {**sizes, "pinned": 1000}
    alloc = auto.allocation_for(curves, sizes_fixed, fixed, 0.5)
    assert auto.total_sparsity(alloc, sizes_fixed, fixed) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match="above"):
        auto.allocation_for(curves, sizes, {}, 0.95)


def test_glob_escape_matches_only_the_name():
    import fnmatch

    pattern = auto.glob_escape("block[1]/conv*")
    assert fnmatch.fnmatchcase("block[1]/conv*", pattern)
    assert not fnmatch.fnmatchcase("block1/conv2", pattern)


def _auto(config, grid, probes=None):
    """pipeline.prune's --auto run with a smaller grid: the plan, the run with it, the plan recorded."""
    from prunecli.run import pipeline

    planned = auto.planned(config, None, grid, probes)
    result = pipeline.run(planned.config)
    planned.record(result.report)
    return result


def test_auto_without_target_stays_within_budget_and_prunes(mlp_files, tmp_path):
    config = config_for(mlp_files, auto=True, max_accuracy_drop=0.02, output=tmp_path / "auto.keras", sizes=False)
    report = _auto(config, grid=(0.3, 0.6, 0.9), probes=4).report
    plan = report.extra["auto"]
    assert plan["within_budget"] is True and plan["total_sparsity"] > 0.2
    assert set(plan["layer_sparsity"]) == {"hidden1", "hidden2", "out"}
    assert len(plan["probes"]) == 4 and len(plan["solo"]["hidden1"]) == 3
    assert report.totals["prunable_sparsity"] == pytest.approx(plan["total_sparsity"], abs=0.01)
    drop = report.metrics["before"]["accuracy"] - report.metrics["after_pruning"]["accuracy"]
    assert drop <= 0.02 + 1e-9
    requested = {s.layer: s.requested_sparsity for s in report.layers}
    assert requested == pytest.approx(report.extra["auto"]["layer_sparsity"], abs=1e-6)


def test_auto_with_target_reaches_the_total_and_respects_fixed_layers(mlp_files, tmp_path):
    config = config_for(
        mlp_files, auto=True, sparsity=0.6, overrides={"out": 0.1}, output=tmp_path / "a.keras", sizes=False
    )
    result = _auto(config, grid=(0.4, 0.8, 0.95))
    layers = {s.layer: s for s in result.report.layers}
    assert layers["out"].sparsity == pytest.approx(0.1, abs=0.02)
    t = result.report.totals
    assert t["prunable_sparsity"] == pytest.approx(0.6, abs=3 / t["prunable_params"] + 1e-6)
    assert result.report.extra["auto"]["fixed_by_override"] == {"out": 0.1}
    np.testing.assert_allclose(result.report.extra["auto"]["total_sparsity"], 0.6, atol=1e-6)


def test_auto_refuses_what_it_cannot_budget(mlp_files):
    with pytest.raises(ConfigError, match="--auto needs --data"):
        build_config({"model_path": mlp_files["keras"], "auto": True}, environ={})
    with pytest.raises(ConfigError, match="N:M"):
        build_config(
            {"model_path": mlp_files["keras"], "data": mlp_files["data"], "auto": True, "granularity": "2:4"},
            environ={},
        )


# --- the command ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_sweep_command_writes_everything_and_prints_the_table(cli, mlp_files, tmp_path):
    out = tmp_path / "sw"
    result = cli(
        "sweep",
        mlp_files["keras"],
        "-d",
        mlp_files["data"],
        "--sparsities",
        "0.5,0.9",
        "-o",
        out,
        "--name",
        "mlp",
        "--max-accuracy-drop",
        "0.05",
    )
    assert result.exit_code == 0, result.output
    assert {p.name for p in out.iterdir()} == {"mlp.json", "mlp.csv", "mlp.png", "mlp.md"}
    assert "Sensitivity sweep" in result.output and "max within budget" in result.output
    assert "hidden1: accuracy" in result.output and "Unpruned: loss" in result.output
    data = json.loads((out / "mlp.json").read_text())
    assert data["max_accuracy_drop"] == 0.05 and len(data["points"]) == 8


@pytest.mark.slow
def test_sweep_command_options(cli, mlp_files, tmp_path):
    result = cli(
        "sweep",
        mlp_files["keras"],
        "-d",
        mlp_files["data"],
        "--sparsities",
        "0.7",
        "--no-per-layer",
        "--scope",
        "global",
        "-o",
        tmp_path,
        "-q",
    )
    assert result.exit_code == 0 and result.output == ""
    data = json.loads((tmp_path / "sweep.json").read_text())
    assert [p["curve"] for p in data["points"]] == ["all"] and data["scope"] == "global"
    assert data["points"][0]["measured_sparsity"] == pytest.approx(0.7, abs=1e-3)


@pytest.mark.parametrize(
    "args, message",
    [(["-s", "0.5"], "--sparsities"), (["--sparsities", "0.5,2"], "(0, 1)"), (["--threshold", "0.1"], "threshold")],
)
def test_sweep_command_usage_errors(cli, mlp_files, tmp_path, args, message):
    result = cli("sweep", mlp_files["keras"], "-d", mlp_files["data"], "-o", tmp_path, *args)
    assert result.exit_code == 2 and message in result.output
    result = cli("sweep", mlp_files["keras"], "-o", tmp_path)
    assert result.exit_code == 2 and "needs --data" in result.output


def test_a_sweep_ignores_exports_rather_than_checking_them(tmp_path):
    """A sweep writes no model and no export: --export tflite-int8 on a model whose float input feeds an
    Embedding (refused before a prune's work) is only noted as ignored."""
    import keras

    inp = keras.Input((6,), name="ids")
    x = keras.layers.GlobalAveragePooling1D()(keras.layers.Embedding(40, 8, name="emb")(inp))
    keras.Model(inp, keras.layers.Dense(2, activation="softmax")(x)).save(tmp_path / "m.keras")
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 40, (48, 6)).astype("float32"), y=rng.integers(0, 2, 48))
    files = {"keras": str(tmp_path / "m.keras"), "data": str(tmp_path / "d.npz")}
    result = sweep.run(config_for(files, export=("tflite-int8",)), sparsities=(0.5,), per_layer=False)
    assert any("--export are ignored" in note for note in result.notes)


def test_an_interrupted_write_leaves_no_folder_the_sweep_created(mlp_sweep, tmp_path, monkeypatch):
    """Ctrl-C while the four files were written left the empty -o folder the sweep had made (and, for
    `-o new/deeper`, its new parent); a folder the user gave that already existed stays."""
    from prunecli.run import sweep_outputs

    def interrupted(*_args):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_outputs, "plot", interrupted)
    for existing in (False, True):
        out = tmp_path / f"out_{existing}"
        if existing:
            out.mkdir()
        with pytest.raises(KeyboardInterrupt):
            sweep.write_outputs(mlp_sweep, out, "mlp")
        assert out.exists() is existing and not (existing and list(out.iterdir()))
    with pytest.raises(KeyboardInterrupt):
        sweep.write_outputs(mlp_sweep, tmp_path / "new" / "deeper", "mlp")
    assert not (tmp_path / "new").exists()
