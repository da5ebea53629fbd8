"""YAML recipes: every file in configs/ is documented, valid and runs on the bundled example;
and the precedence of settings is CLI flags > PRUNECLI_* environment > recipe > defaults."""

from __future__ import annotations

import importlib.util
import json
import os
import re
from pathlib import Path

import pytest

from prunecli import scoring
from prunecli.config import build_config, read_recipe
from prunecli.errors import ConfigError

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
RECIPES = sorted(CONFIGS.glob("*.yaml"))


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for key in list(os.environ):
        if key.startswith("PRUNECLI_"):
            monkeypatch.delenv(key)


def test_the_promised_recipes_ship():
    names = {p.stem for p in RECIPES}
    assert {"magnitude-50", "gradual-90", "structured-filters", "n-m-2-4", "auto-within-1pct"} <= names


def missing_feature(config) -> str | None:
    """Why a recipe cannot run in this tree yet, or None: only for a module or method truly absent."""
    needs = []
    if config.epochs > 0 or config.schedule != "oneshot":
        needs.append(("prunecli.training.finetune", "fine-tuning"))
    if config.shrink:
        needs.append(("prunecli.removal.channels", "--shrink"))
    if config.export:
        needs.append(("prunecli.outputs.export", "--export"))
    if config.auto:
        needs.append(("prunecli.run.auto", "--auto"))
    for module, feature in needs:
        if importlib.util.find_spec(module) is None:
            return f"{feature} needs {module}, which is not in this tree yet"
    return None


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_is_commented_and_valid(recipe, example_model, example_data):
    text = recipe.read_text()
    assert text.lstrip().startswith("#") and "prunecli prune" in text, "start with a comment showing its use"
    raw = read_recipe(recipe)
    if raw.get("method") and raw["method"] not in scoring.available():
        pytest.skip(f"method {raw['method']} is not registered in this tree yet")
    config = build_config({"model_path": str(example_model), "data": str(example_data)}, recipe=recipe, environ={})
    for key, value in raw.items():
        if key not in ("granularity", "exclude", "include", "overrides"):
            assert getattr(config, key) == (tuple(value) if isinstance(value, list) else value), key


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_runs_on_the_example(recipe, cli, example_model, example_data, tmp_path, monkeypatch):
    raw = read_recipe(recipe)
    if raw.get("method") and raw["method"] not in scoring.available():
        pytest.skip(f"method {raw['method']} is not registered in this tree yet")
    config = build_config({"model_path": str(example_model), "data": str(example_data)}, recipe=recipe, environ={})
    reason = missing_feature(config)
    if reason:
        pytest.skip(reason)
    fast = ["--epochs", "1"] if config.epochs > 1 else []
    if config.auto:
        from prunecli.run import auto

        monkeypatch.setattr(auto, "GRID", (0.5, 0.9))
        monkeypatch.setattr(auto, "PROBES", 2)
    out, report_path = tmp_path / "out.keras", tmp_path / "report.json"
    result = cli(
        "prune",
        example_model,
        "--config",
        recipe,
        "--data",
        example_data,
        "-o",
        out,
        "--report",
        report_path,
        "--no-sizes",
        "-q",
        *fast,
    )
    assert result.exit_code == 0, result.output
    assert out.is_file()
    report = json.loads(report_path.read_text())
    assert report["settings"]["method"] == config.method
    pruned = {layer["layer"]: layer for layer in report["layers"]}
    for pattern in config.exclude:
        assert pattern not in pruned
    if config.granularity.kind == "nm":
        assert_n_of_m(out, pruned, config.granularity.rows, config.granularity.cols)
    elif config.shrink:
        assert report["totals"]["params"] < 38346  # the example's parameter count: units were removed
    elif config.auto:
        assert report["auto"]["within_budget"] and report["totals"]["prunable_sparsity"] > 0.1
    else:
        assert report["totals"]["prunable_sparsity"] == pytest.approx(config.sparsity, abs=1e-3)
    if config.epochs:
        assert "after_finetune" in report["metrics"]


def assert_n_of_m(path, pruned_layers, n, m):
    """At most n non-zeros in every N:M group (m consecutive input channels of one tap) of each output,
    in every pruned kernel, as the verifier reads it."""
    from prunecli.io import models as model_io
    from prunecli.run.verify import nm_violations
    from prunecli.structure import targets

    model, _ = model_io.load(path)
    checked = 0
    for t in targets.walk(model):
        if t.layer_name not in pruned_layers:
            continue
        assert nm_violations(t, n, m) == (0, ""), t.name
        checked += 1
    assert checked == len(pruned_layers)


# --- precedence ----------------------------------------------------------------------------------


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("# test recipe\nsparsity: 0.3\nscope: global\nmethod: random\nseed: 5\nmin-keep: 0.2\n")
    return path


def test_precedence_in_build_config(recipe_file):
    env = {"PRUNECLI_SPARSITY": "0.6", "PRUNECLI_SCOPE": "layer", "PRUNECLI_SEED": "9"}
    c = build_config({"model_path": "m.keras", "sparsity": 0.7, "seed": 1}, recipe=recipe_file, environ=env)
    assert (c.sparsity, c.seed) == (0.7, 1)  # CLI beats env and recipe
    assert c.scope == "layer"  # env beats recipe
    assert (c.method, c.min_keep) == ("random", 0.2)  # recipe beats defaults
    assert c.batch_size == 64  # default
    assert build_config({"model_path": "m"}, recipe=recipe_file, environ=env).sparsity == 0.6
    assert build_config({"model_path": "m"}, recipe=recipe_file, environ={}).sparsity == 0.3
    plain = build_config({"model_path": "m"}, environ={})
    assert plain.sparsity is None and plain.effective_sparsity == 0.5
    recipe_file.write_text("sparsity: 3e-1\nlayers: {hidden: 8e-1}\n")  # YAML 1.1 read 8e-1 as text: refused
    exponents = build_config({"model_path": "m"}, recipe=recipe_file, environ={})
    assert (exponents.sparsity, exponents.overrides[0].sparsity) == (0.3, 0.8)


def test_precedence_through_the_cli(cli, recipe_file, mlp_files, tmp_path, monkeypatch):
    def run(*flags):
        report = tmp_path / "r.json"
        result = cli(
            "prune",
            mlp_files["keras"],
            "--config",
            recipe_file,
            "-o",
            tmp_path / "o.keras",
            "--report",
            report,
            "--no-sizes",
            "-q",
            *flags,
        )
        assert result.exit_code == 0, result.output
        return json.loads(report.read_text())

    monkeypatch.setenv("PRUNECLI_SPARSITY", "0.6")
    report = run("--sparsity", "0.7")
    assert report["settings"]["sparsity"] == 0.7
    assert report["totals"]["prunable_sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert report["settings"]["method"] == "random" and report["settings"]["scope"] == "global"
    assert run()["settings"]["sparsity"] == 0.6
    monkeypatch.delenv("PRUNECLI_SPARSITY")
    report = run()
    assert report["settings"]["sparsity"] == 0.3
    assert report["totals"]["prunable_sparsity"] == pytest.approx(0.3, abs=1e-3)
    assert run("--scope", "layer")["settings"]["scope"] == "layer"


def test_recipe_layer_rules(cli, mlp_files, tmp_path):
    recipe = tmp_path / "layers.yaml"
    recipe.write_text("sparsity: 0.5\nlayers:\n  out: skip\n  hidden2: 0.8\n")
    report = tmp_path / "r.json"
    result = cli("prune", mlp_files["keras"], "-c", recipe, "-o", tmp_path / "o.keras", "-r", report, "-q")
    assert result.exit_code == 0, result.output
    layers = {layer["layer"]: layer for layer in json.loads(report.read_text())["layers"]}
    assert set(layers) == {"hidden1", "hidden2"}
    assert layers["hidden2"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert layers["hidden1"]["sparsity"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize(
    "text, message",
    [
        ("sparsity: [1, 2\n", "invalid YAML"),
        ("sparsty: 0.5\n", "unknown key 'sparsty'"),
        ("- 1\n- 2\n", "mapping"),
        ("sparsity: lots\n", "invalid value for sparsity"),
        ("model_path: x.keras\n", "unknown key"),
    ],
)
def test_bad_recipes_are_usage_errors(cli, mlp_files, tmp_path, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config({"model_path": "m"}, recipe=recipe, environ={})
    result = cli("prune", mlp_files["keras"], "--config", recipe, "-o", tmp_path / "o.keras")
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("setting", "value", "said"),
    [
        ("val_split", 0.2, "--val-split"),
        ("batch_size", 8, "--batch-size"),
        ("score_batches", 4, "--score-batches"),
        ("calibration_samples", 64, "--calibration-samples"),
    ],
)
def test_how_data_is_read_without_data_is_refused(setting, value, said):
    """Nothing reads these without --data: refused, as --lr without --epochs is; with --data, taken."""
    with pytest.raises(ConfigError, match=f"{said} .*give --data"):
        build_config({"model_path": "m.keras", setting: value}, environ={})
    read = {"score_batches": {"method": "gradient"}, "calibration_samples": {"method": "wanda"}}.get(setting, {})
    assert (
        getattr(build_config({"model_path": "m.keras", "data": "d.npz", setting: value, **read}, environ={}), setting)
        == value
    )


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"method": "magnitude"}, "--method magnitude reads none"),
        ({"method": "l1-norm"}, "--method l1-norm reads none"),
        ({"method": "random", "granularity": "layer"}, "--method random reads none"),
        ({"method": "wanda"}, "--method wanda reads --calibration-samples"),
        ({"method": "sparsegpt", "schedule": "polynomial", "epochs": 1}, "--method sparsegpt reads --calibration"),
        ({"method": "redundancy", "granularity": "neuron"}, "--method redundancy reads --calibration-samples"),
        ({"method": "measured", "granularity": "head"}, "--method measured compares head scores on a fixed set"),
        ({"method": "l2-norm", "granularity": "input"}, "-g input's l2 score reads none"),
        ({"method": "gradient"}, None),
        ({"method": "activation", "granularity": "neuron"}, None),
        ({"method": "taylor", "granularity": "head"}, None),
        ({"method": "magnitude", "granularity": "layer"}, None),  # each bypassed candidate's loss on the batches
        ({"method": "magnitude", "granularity": "transformer", "target": "params=0.5"}, None),
        ({"method": "magnitude", "granularity": "input", "feature_score": "permutation"}, None),
    ],
)
def test_score_batches_is_refused_where_no_score_reads_batches(settings, refused):
    """--score-batches with --data on a run whose scores read no batch (data-free methods, or those that
    read --calibration-samples examples) is refused in one line; it was silently unread (adv38)."""
    given = {"model_path": "m.keras", "data": "d.npz", "score_batches": 3, **settings}
    if refused is None:
        assert build_config(given, environ={}).score_batches == 3
        return
    with pytest.raises(ConfigError, match=re.escape(refused)):
        build_config(given, environ={})
    del given["score_batches"]
    build_config(given, environ={})  # the same run without it is taken


@pytest.mark.parametrize(
    ("settings", "taken"),
    [
        ({"method": "magnitude"}, False),
        ({"method": "gradient", "reconstruct": False}, False),
        ({"method": "magnitude", "target": "params=0.5", "reconstruct": False}, False),
        ({"method": "wanda"}, True),
        ({"method": "redundancy", "granularity": "neuron"}, True),
        ({"method": "magnitude", "reconstruct": True}, True),
        ({"method": "magnitude", "target": "params=0.5"}, True),  # --target refits channels by default
    ],
)
def test_calibration_samples_is_refused_where_nothing_calibrates(settings, taken):
    """--calibration-samples with --data on a run that calibrates nothing (no wanda, sparsegpt, redundancy
    or --reconstruct) is refused; a magnitude run recorded it in its settings and read none (adv38)."""
    given = {"model_path": "m.keras", "data": "d.npz", "calibration_samples": 16, **settings}
    if taken:
        assert build_config(given, environ={}).calibration_samples == 16
    else:
        with pytest.raises(ConfigError, match="--calibration-samples sets the examples .* reads none"):
            build_config(given, environ={})


def test_the_batch_scored_methods_are_the_registry_s_data_methods():
    """config/fields.BATCH_SCORED_METHODS (which --score-batches is refused without) is written below the
    scoring registry's floor: it must name the registered methods that need data and are not calibrated on
    --calibration-samples examples (redundancy is registered as needing data but reads those examples)."""
    from prunecli.config import BATCH_SCORED_METHODS
    from prunecli.scoring import registry

    data_scored = {name for name in registry.available() if registry.get(name).needs_data}
    batch_scored = {name for name in data_scored if not registry.get(name).calibrated} - {"redundancy"}
    assert set(BATCH_SCORED_METHODS) == batch_scored
