"""Fine-tuning: masks held exactly under every optimizer, schedules ending exactly at the target,
L1 pushing weights to zero, early stopping, progress output and the CI accuracy gate."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from prunecli import build_config, prune
from prunecli.config import Granularity, LayerOverride, PruneConfig
from prunecli.errors import ConfigError
from prunecli.selection import schedule as schedules


@pytest.fixture(scope="module")
def mlps(tmp_path_factory):
    """One trained MLP saved compiled with SGD(momentum), Adam and AdamW(weight decay); its data."""
    import keras
    from conftest import build_mlp, make_tabular

    d = tmp_path_factory.mktemp("ft")
    x, y = make_tabular(n=480)
    model = build_mlp()
    model.fit(x, y, epochs=4, batch_size=32, verbose=0)
    optimizers = {
        "sgd": keras.optimizers.SGD(0.05, momentum=0.9),
        "adam": keras.optimizers.Adam(1e-3),
        "adamw": keras.optimizers.AdamW(1e-3, weight_decay=0.05),
    }
    paths = {}
    for name, opt in optimizers.items():
        model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        paths[name] = d / f"mlp_{name}.keras"
        model.save(paths[name])
    np.savez(d / "data.npz", x_train=x[:360], y_train=y[:360], x_test=x[360:], y_test=y[360:])
    return {**paths, "data": d / "data.npz", "dir": d}


def run(mlps, tmp_path, model="adam", **options):
    settings = {"model_path": mlps[model], "data": mlps["data"], "output": tmp_path / "out.keras", "quiet": True}
    settings.update(options)
    return prune(build_config(settings))


def assert_masked_exactly_zero(result, sparsity=None, scope="global"):
    """Pruned weights are exactly zero and survivors are real weights; with `sparsity`, the scope's
    guarantee: round(s * n) in each layer (layer), or round(s * total) over all layers (global, the
    default for element pruning; no floor binds at the sparsities used here)."""
    pruned = total = 0
    for target_name, mask in result.masks.masks.items():
        layer = target_name.split("/")[0]
        weights = result.model.get_layer(layer).kernel.numpy()
        keep = np.asarray(mask)
        assert np.all(weights[~keep] == 0.0), target_name
        assert np.count_nonzero(weights[keep]) == keep.sum(), target_name  # survivors are real weights
        if sparsity is not None and scope == "layer":
            assert keep.size - keep.sum() == round(sparsity * keep.size), target_name
        pruned, total = pruned + int(keep.size - keep.sum()), total + int(keep.size)
    if sparsity is not None and scope == "global":
        assert pruned == round(sparsity * total)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, optimizer, expected",
    [
        ("sgd", None, {"name": "SGD", "from": "model", "momentum": 0.9}),
        ("sgd", "adam", {"name": "Adam", "from": "options"}),
        ("adamw", None, {"name": "AdamW", "from": "model", "weight_decay": 0.05}),
        ("adam", "adamw:weight_decay=0.1", {"name": "AdamW", "from": "options", "weight_decay": 0.1}),
    ],
)
def test_pruned_weights_stay_exactly_zero_under_each_optimizer(mlps, tmp_path, model, optimizer, expected):
    import keras

    result = run(mlps, tmp_path, model=model, sparsity=0.7, epochs=2, optimizer=optimizer)
    info = result.report.extra["finetune"]["optimizer"]
    assert {k: info[k] for k in expected} == pytest.approx(expected)
    assert_masked_exactly_zero(result, sparsity=0.7)
    original = keras.saving.load_model(mlps[model]).get_layer("hidden1").kernel.numpy()
    trained = result.model.get_layer("hidden1").kernel.numpy()
    keep = np.asarray(result.masks.masks["hidden1/kernel"])
    assert not np.allclose(original[keep], trained[keep])  # the survivors were trained
    saved = keras.saving.load_model(result.output_path).get_layer("hidden1").kernel.numpy()
    assert np.all(saved[~keep] == 0.0)
    assert list(result.report.metrics) == ["before", "after_pruning", "after_finetune"]


@pytest.mark.slow
def test_masks_hold_inside_an_xla_compiled_step(mlps, tmp_path, monkeypatch):
    """The XLA path (used on GPUs/TPUs) compiles the same step, re-masking included."""
    from prunecli.training import finetune

    monkeypatch.setattr(finetune, "use_xla", lambda model: True)
    result = run(mlps, tmp_path, model="sgd", sparsity=0.6, epochs=1, schedule="dynamic", batch_size=90)
    assert result.report.extra["finetune"]["jit_compile"] is True
    assert_masked_exactly_zero(result, sparsity=0.6)


@pytest.mark.slow
@pytest.mark.parametrize("schedule", ["oneshot", "iterative", "polynomial", "dynamic"])
def test_each_schedule_ends_exactly_at_the_target(mlps, tmp_path, schedule):
    result = run(
        mlps, tmp_path, model="sgd", sparsity=0.8, epochs=3, schedule=schedule, schedule_steps=3, batch_size=16
    )
    assert_masked_exactly_zero(result, sparsity=0.8)
    ft = result.report.extra["finetune"]
    assert ft["final_sparsity"] == pytest.approx(result.report.totals["prunable_sparsity"])
    sparsities = [h["sparsity"] for h in ft["history"]]
    assert sparsities[-1] == pytest.approx(result.report.totals["prunable_sparsity"])
    assert "after_pruning" in result.report.metrics and "after_finetune" in result.report.metrics
    if schedule == "oneshot":
        assert ft["mask_updates"] == 0 and sparsities[0] == sparsities[-1]
    else:
        assert sparsities[0] < sparsities[-1]  # pruned gradually
        assert ft["mask_updates"] == 3 if schedule == "iterative" else ft["mask_updates"] > 3
    if schedule == "dynamic":  # DPF: dense shadows let some pruned weights back in
        assert ft["regrown_weights"] > 0
    if schedule == "iterative":  # each round removes the same share of the survivors
        density = [1 - s for s in sparsities]
        assert density[1] / density[0] == pytest.approx(density[2] / density[1], rel=0.05)


@pytest.mark.slow
def test_polynomial_global_scope_with_override_is_exact(mlps, tmp_path):
    result = run(mlps, tmp_path, sparsity=0.9, scope="global", epochs=3, schedule="polynomial", overrides={"out": 0.5})
    stats = {s.layer: s for s in result.report.layers}
    assert stats["out"].params - stats["out"].nonzeros == round(0.5 * stats["out"].params)
    assert_masked_exactly_zero(result)


@pytest.mark.slow
def test_l1_leaves_more_surviving_weights_near_zero(mlps, tmp_path):
    counts = {}
    for l1 in (0.0, 0.01):
        result = run(mlps, tmp_path, sparsity=0.1, epochs=10, batch_size=16, l1=l1)
        near = result.report.extra["finetune"]["near_zero_weights"]
        assert near["surviving"] == sum(int(np.asarray(m).sum()) for m in result.masks.masks.values())
        counts[l1] = near["count"]
        assert_masked_exactly_zero(result, sparsity=0.1)
    assert counts[0.01] > counts[0.0] + 50, counts


@pytest.mark.slow
def test_early_stopping_stops_when_validation_loss_stalls(mlps, tmp_path):
    options = {"sparsity": 0.5, "epochs": 6, "early_stopping": 2, "optimizer": "sgd", "learning_rate": 1e-12}
    result = run(mlps, tmp_path, schedule="oneshot", **options)
    ft = result.report.extra["finetune"]
    assert ft["epochs_run"] == 3 and ft["stopped_early"] and ft["best_epoch"] == 1
    assert ft["validation"] == "held-out"
    # the default schedule when fine-tuning is the polynomial ramp: epochs whose masks still moved never
    # count towards early stopping, so the run never stops short of its target sparsity
    ramped = run(mlps, tmp_path, **options)
    assert ramped.report.extra["finetune"]["epochs_run"] > 3
    assert_masked_exactly_zero(ramped, sparsity=0.5)


@pytest.mark.slow
def test_gate_fails_with_exit_4_after_writing_the_report(cli, mlps, tmp_path):
    """The report is written; the model that failed is not (it replaced the previous run's good model,
    plan and exports, exit 4)."""
    report, plan = tmp_path / "r.json", tmp_path / "plan.zip"
    (tmp_path / "o.keras").write_bytes(b"the previous run's model")
    plan.write_bytes(b"the previous run's plan")
    args = [
        mlps["adam"],
        "-d",
        mlps["data"],
        "-s",
        "0.97",
        "--epochs",
        "2",
        "--lr",
        "1e-7",
        "-r",
        report,
        "-o",
        tmp_path / "o.keras",
    ]
    failed = cli("prune", *args, "--max-accuracy-drop", "0", "--save-plan", plan, "-q")
    assert failed.exit_code == 4, failed.output
    assert "accuracy dropped by" in failed.stderr and "epoch" not in failed.output  # quiet: no progress
    assert (tmp_path / "o.keras").read_bytes() == b"the previous run's model"
    assert plan.read_bytes() == b"the previous run's plan"
    written = json.loads(report.read_text())
    assert any(n.startswith("the quality gate failed: ") and "o.keras" in n for n in written["notes"])
    assert written["metrics"]["after_finetune"]["accuracy"] < written["metrics"]["before"]["accuracy"]
    assert written["finetune"]["epochs_run"] == 2
    report.unlink()
    passed = cli("prune", *args, "--max-accuracy-drop", "1")
    assert passed.exit_code == 0, passed.output
    assert report.exists()
    # off a terminal: one progress line per epoch
    assert "epoch 1/2" in passed.stderr and "epoch 2/2" in passed.stderr and "val_loss" in passed.stderr


def test_progress_bar_on_a_terminal():
    from prunecli.training.finetune import EpochProgress, _Sums

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    said, screen = [], Terminal()
    bar = EpochProgress(PruneConfig(epochs=2), said.append, stream=screen)
    bar.begin(1, 4)
    for _ in range(4):
        bar._drawn = 0.0  # draw every step
        bar.step(_Sums(loss=0.5, accuracy=0.25, count=1.0))
    bar.end({"loss": 0.5, "accuracy": 0.25, "sparsity": 0.8})
    out = screen.getvalue()
    assert out.startswith("Epoch 1/2\n") and "\r4/4 [==============================]" in out
    assert "loss: 0.5000" in out and "sparsity: 80.0%" in out and out.endswith("\n")
    assert said == []  # the bar replaces the per-epoch line


@pytest.mark.parametrize(
    "config, fragment",
    [
        ({"schedule": "polynomial"}, "give --epochs >= 1"),
        ({"schedule": "dynamic", "epochs": 2, "threshold": 0.1}, "not --threshold"),
        ({"schedule": "polynomial", "epochs": 2, "granularity": Granularity("nm", 2, 4)}, "use --schedule oneshot"),
        ({"epochs": 2, "data": None}, "needs --data"),
    ],
)
def test_impossible_combinations_are_one_line_config_errors(config, fragment):
    from prunecli.config import validate

    with pytest.raises(ConfigError, match=fragment):
        validate(PruneConfig(**{"model_path": "m.keras", "data": "d.npz", **config}))
    validate(PruneConfig(model_path="m.keras"))  # no fine-tuning asked: nothing to check


def test_iterative_rounds_are_spread_over_steps_not_epochs():
    """Any --steps K works with any --epochs: 5 rounds in 2 epochs of 7 steps."""
    plan = schedules.build("iterative", epochs=2, steps_per_epoch=7, rounds=5)
    assert plan.update_steps == (0, 2, 5, 8, 11)
    assert plan.sparsity_at(plan.update_steps[-1], 0.9) == 0.9
    with pytest.raises(ConfigError, match="needs at least 20 training steps"):
        schedules.build("iterative", epochs=2, steps_per_epoch=7, rounds=20)


def test_optimizer_option_parsing_and_errors():
    from prunecli.config import parse_optimizer
    from prunecli.training.finetune import make_optimizer

    assert parse_optimizer("sgd:momentum=0.9, nesterov=true") == ("sgd", {"momentum": 0.9, "nesterov": True})
    assert parse_optimizer("adamw:weight_decay=1e-4,beta_1=1") == ("adamw", {"weight_decay": 1e-4, "beta_1": 1})
    with pytest.raises(ConfigError, match="momentum must be a number, got '1:30'"):  # not YAML's base-60 90
        build_config({"optimizer": "sgd:momentum=1:30", "epochs": 1, "data": "d.npz"}, environ={})
    opt, info = make_optimizer(PruneConfig(optimizer="sgd:momentum=0.8", learning_rate=0.2))
    assert type(opt).__name__ == "SGD" and info["learning_rate"] == pytest.approx(0.2) and info["momentum"] == 0.8
    _opt, info = make_optimizer(PruneConfig())
    assert info == {"name": "Adam", "learning_rate": pytest.approx(1e-3), "from": "options"}
    with pytest.raises(ConfigError, match="unknown optimizer 'nadamx'"):
        make_optimizer(PruneConfig(optimizer="nadamx"))
    with pytest.raises(ConfigError, match="--optimizer sgd:bogus=1"):
        make_optimizer(PruneConfig(optimizer="sgd:bogus=1"))


# --- the schedules' maths (no TensorFlow) -----------------------------------------------------


def test_polynomial_follows_zhu_and_gupta_and_ends_at_the_target():
    plan = schedules.build("polynomial", epochs=6, steps_per_epoch=10, initial_sparsity=0.1)
    assert plan.ramp_steps == 40 and plan.update_steps[0] == 0 and plan.update_steps[-1] == 40
    assert all(0 <= s < plan.total_steps for s in plan.update_steps)
    for t in (0, 10, 25, 40):
        assert plan.sparsity_at(t, 0.9) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - t / 40) ** 3)
    assert plan.sparsity_at(55, 0.9) == 0.9
    values = [plan.sparsity_at(t, 0.9) for t in plan.update_steps]
    assert values == sorted(values) and values[-1] == 0.9


def test_one_epoch_ramp_still_leaves_a_step_to_train():
    plan = schedules.build("dynamic", epochs=1, steps_per_epoch=5)
    assert plan.update_steps[-1] == plan.frozen_from == 4 < plan.total_steps


def test_iterative_rounds_remove_the_same_share_and_end_at_the_target():
    plan = schedules.build("iterative", epochs=6, steps_per_epoch=7, rounds=3)
    assert plan.update_steps == (0, 14, 28)
    densities = [1 - plan.sparsity_at(s, 0.875) for s in plan.update_steps]
    assert densities == pytest.approx([0.5, 0.25, 0.125])
    assert plan.sparsity_at(28, 0.875) == 0.875


def test_scheduled_config_moves_overrides_along_the_same_curve():
    from prunecli.training.finetune import scheduled_config

    plan = schedules.build("polynomial", epochs=3, steps_per_epoch=10)
    config = PruneConfig(sparsity=0.8, overrides=(LayerOverride("out", 0.4), LayerOverride("skip*", skip=True)))
    mid = scheduled_config(config, plan, 10)
    assert mid.sparsity == pytest.approx(0.8 * (1 - (1 - 10 / 20) ** 3))
    assert mid.overrides[0].sparsity == pytest.approx(0.4 * (1 - (1 - 10 / 20) ** 3))
    assert mid.overrides[1].skip
    end = scheduled_config(config, plan, 20)
    assert (end.sparsity, end.overrides[0].sparsity) == (0.8, 0.4)


# --- learning-rate schedule (--lr-schedule) ----------------------------------------------------


def test_cosine_learning_rate_decays_to_zero_over_the_run(mlps, tmp_path):
    """The rate starts at the model's own (Adam 1e-3 here: rewound, not reduced) and follows
    lr_0 * (1 + cos(pi * t / T)) / 2 over the run's T = epochs * steps_per_epoch steps."""
    import math
    from types import SimpleNamespace

    import keras
    import tensorflow as tf

    from prunecli.structure import targets
    from prunecli.training.finetune import Trainer

    model = keras.saving.load_model(mlps["adam"])
    found = targets.select(model)
    with np.load(mlps["data"]) as z:
        x, y = z["x_train"][:80].astype("float32"), z["y_train"][:80]
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)  # 5 steps per epoch
    masks = {t.name: np.abs(t.variable.numpy()) > np.median(np.abs(t.variable.numpy())) for t in found}
    for t in found:
        t.variable.assign(t.variable.numpy() * masks[t.name])
    job = SimpleNamespace(
        config=PruneConfig(model_path="m.keras", data="d.npz", epochs=2, lr_schedule="cosine"),
        model=model,
        targets=found,
        masks=SimpleNamespace(masks=masks),
        data=SimpleNamespace(train=train),
        task=SimpleNamespace(loss="sparse_categorical_crossentropy", accuracy="sparse_categorical_accuracy"),
    )
    optimizer = keras.optimizers.Adam(1e-3)
    trainer = Trainer(job, optimizer)
    assert trainer.lr_schedule == "cosine"
    seen = []
    for _epoch in range(2):
        for xb, yb in train:
            seen.append(float(optimizer.learning_rate))  # the rate the next step uses
            trainer.train(xb, yb)
    expected = [1e-3 * (1 + math.cos(math.pi * t / 10)) / 2 for t in range(10)]
    assert seen == pytest.approx(expected, rel=1e-5)
    assert float(optimizer.learning_rate) == pytest.approx(0.0, abs=1e-12)
    for t in found:
        assert np.all(t.variable.numpy()[~masks[t.name]] == 0.0)

    constant = keras.optimizers.Adam(1e-3)
    job.config = job.config.replace(lr_schedule="constant")
    assert Trainer(job, constant).lr_schedule == "constant"
    assert float(constant.learning_rate) == pytest.approx(1e-3)


def test_lr_schedule_is_validated():
    from prunecli.config import validate

    with pytest.raises(ConfigError, match="lr_schedule must be one of constant, cosine"):
        validate(PruneConfig(model_path="m.keras", lr_schedule="step"))
    config = build_config({"model_path": "m.keras", "data": "d.npz", "epochs": 1, "lr_schedule": "cosine"})
    assert config.lr_schedule == "cosine"


def test_the_python_api_withholds_a_failed_models_outputs_as_the_cli_does(tmp_path, monkeypatch):
    """prune() wrote the model and plan of a run whose gate failed (the CLI did not): both withhold them
    now, with a note, and check_gates raises after."""
    import keras

    from prunecli import build_config, prune
    from prunecli.errors import GateFailed
    from prunecli.run import pipeline

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, name="fc"), keras.layers.Dense(2, name="out")])
    path, out, plan = tmp_path / "m.keras", tmp_path / "o.keras", tmp_path / "p.zip"
    model.save(path)
    out.write_bytes(b"the previous model")
    monkeypatch.setattr(pipeline, "gate_failure", lambda report, config: "accuracy dropped by 0.5")
    config = build_config(
        {"model_path": str(path), "sparsity": 0.5, "output": str(out), "save_plan": str(plan)}, environ={}
    )
    result = prune(config)
    assert out.read_bytes() == b"the previous model" and not plan.exists()
    assert any(n.startswith("the quality gate failed: ") for n in result.report.notes)
    with pytest.raises(GateFailed, match="accuracy dropped by 0.5"):
        pipeline.check_gates(result.report, config)
