"""--distill: the soft loss against a direct NumPy computation, the distilled masked step's update
against its closed-form gradient, masks exactly zero after distilled steps, and the option's errors."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from prunecli.config import PruneConfig, validate
from prunecli.errors import ConfigError
from prunecli.training.metrics import Task


def np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def np_soft_kl(teacher_logits, student_logits, t):
    """T**2 * mean over examples of sum_c p_t log(p_t / p_s), with p = softmax(z / T)."""
    pt, ps = np_softmax(teacher_logits / t), np_softmax(student_logits / t)
    return t * t * np.mean(np.sum(pt * (np.log(pt) - np.log(ps)), axis=-1))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_soft_loss_equals_numpy_for_logits_and_probabilities(temperature):
    from prunecli.training import distill

    rng = np.random.default_rng(0)
    zt, zs = rng.normal(size=(6, 5)) * 3, rng.normal(size=(6, 5)) * 3
    expected = np_soft_kl(zt, zs, temperature)
    from_logits = float(distill.soft_kl(zt.astype("float32"), zs.astype("float32"), temperature, True))
    # softmax outputs: log p recovers the logits up to a per-example constant, which softmax ignores
    probs = float(
        distill.soft_kl(np_softmax(zt).astype("float32"), np_softmax(zs).astype("float32"), temperature, False)
    )
    assert from_logits == pytest.approx(expected, rel=1e-4)
    assert probs == pytest.approx(expected, rel=1e-3)
    assert float(distill.soft_kl(zt.astype("float32"), zt.astype("float32"), temperature, True)) == pytest.approx(
        0.0, abs=1e-6
    )
    assert float(distill.combine(2.0, 4.0, 0.25)) == pytest.approx(0.75 * 2.0 + 0.25 * 4.0)


def test_single_sigmoid_output_is_the_two_class_case():
    from prunecli.training import distill

    pt, ps = np.array([[0.9], [0.2]], "float32"), np.array([[0.6], [0.5]], "float32")
    logit = lambda p: np.log(p) - np.log(1 - p)  # noqa: E731
    expected = np_soft_kl(np.hstack([0 * pt, logit(pt)]), np.hstack([0 * ps, logit(ps)]), 3.0)
    assert float(distill.soft_kl(pt, ps, 3.0, False)) == pytest.approx(expected, rel=1e-3)


def test_outputs_are_logits_follows_the_task_loss():
    import keras

    from prunecli.training import distill

    assert not distill.outputs_are_logits("sparse_categorical_crossentropy")
    assert distill.outputs_are_logits(keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert not distill.outputs_are_logits(keras.losses.SparseCategoricalCrossentropy())


def softmax_model(kernel, bias):
    import keras

    model = keras.Sequential(
        [keras.Input((kernel.shape[0],)), keras.layers.Dense(kernel.shape[1], activation="softmax")]
    )
    model.layers[0].set_weights([kernel, bias])
    return model


def job(model, mask, x, y, **config):
    """What finetune.Trainer reads from the run: config, model, targets, masks, task, data."""
    import tensorflow as tf

    from prunecli.structure import targets

    found = targets.select(model)
    return SimpleNamespace(
        config=PruneConfig(model_path="m.keras", data="d.npz", epochs=1, **config),
        model=model,
        targets=found,
        masks=SimpleNamespace(masks={found[0].name: mask}),
        task=Task("sparse_categorical_crossentropy", "sparse_categorical_accuracy"),
        data=SimpleNamespace(train=tf.data.Dataset.from_tensor_slices((x, y)).batch(len(x))),
    )


@pytest.mark.parametrize("temperature, weight", [(2.0, 0.5), (4.0, 0.9), (1.0, 1.0)])
def test_distilled_step_follows_the_closed_form_gradient_and_keeps_masks(temperature, weight):
    """Softmax regression z = xW + b: d/dz [(1-a) CE + a T^2 KL(p_t^T || p_s^T)] = (1-a)(p - onehot)
    + a T (p_s^T - p_t^T). One SGD step of the Trainer must equal W - lr x^T G / n, re-masked."""
    import keras

    from prunecli.training import distill
    from prunecli.training.finetune import Trainer

    rng = np.random.default_rng(1)
    n, d, k, lr = 16, 6, 4, 0.5
    x = rng.normal(size=(n, d)).astype("float32")
    y = rng.integers(0, k, size=n).astype("int32")
    mask = rng.random((d, k)) > 0.5
    w0 = (rng.normal(size=(d, k)) * mask).astype("float32")
    b0 = rng.normal(size=k).astype("float32") * 0.1
    teacher_w, teacher_b = rng.normal(size=(d, k)).astype("float32"), rng.normal(size=k).astype("float32")
    student = softmax_model(w0, b0)
    teacher = distill.teacher_copy(softmax_model(teacher_w, teacher_b))
    s = job(student, mask, x, y, distill=temperature, distill_weight=weight)
    trainer = Trainer(s, keras.optimizers.SGD(lr), teacher=teacher)
    for xb, yb in s.data.train:
        trainer.train(xb, yb)

    z, zt = x @ w0 + b0, x @ teacher_w + teacher_b
    onehot = np.eye(k)[y]
    grad_z = (1 - weight) * (np_softmax(z) - onehot) + weight * temperature * (
        np_softmax(z / temperature) - np_softmax(zt / temperature)
    )
    expected_w = (w0 - lr * x.T @ grad_z / n) * mask
    expected_b = b0 - lr * grad_z.mean(axis=0)
    kernel, bias = (v.numpy() for v in student.layers[0].weights)
    np.testing.assert_allclose(kernel, expected_w, atol=2e-5)
    np.testing.assert_allclose(bias, expected_b, atol=2e-5)
    assert np.all(kernel[~mask] == 0.0)
    np.testing.assert_array_equal(teacher.layers[0].kernel.numpy(), teacher_w)  # the teacher never trains


def test_masks_stay_exactly_zero_after_distilled_adam_steps():
    import keras

    from prunecli.training import distill
    from prunecli.training.finetune import Trainer

    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = rng.integers(0, 3, size=64).astype("int32")
    dense = softmax_model(rng.normal(size=(8, 3)).astype("float32"), np.zeros(3, "float32"))
    teacher = distill.teacher_copy(dense)
    mask = np.zeros((8, 3), bool)
    mask[::2] = True
    dense.layers[0].kernel.assign(dense.layers[0].kernel.numpy() * mask)
    s = job(dense, mask, x, y, distill=2.0)
    s.data = SimpleNamespace(train=s.data.train.unbatch().batch(8))
    trainer = Trainer(s, keras.optimizers.Adam(0.05), teacher=teacher)
    for _ in range(3):
        for xb, yb in s.data.train:
            trainer.train(xb, yb)
    kernel = dense.layers[0].kernel.numpy()
    assert np.all(kernel[~mask] == 0.0)
    assert np.count_nonzero(kernel[mask]) == mask.sum()
    assert trainer.distilled


def test_distill_errors_are_one_line_config_errors():
    import keras

    from prunecli.training.finetune import Trainer

    for config, fragment in (
        ({"distill": 0.0, "epochs": 1}, "distill temperature must be > 0"),
        ({"distill": 2.0, "distill_weight": 1.5, "epochs": 1}, "distill_weight must be in"),
        ({"distill": 2.0}, "give --epochs"),
    ):
        with pytest.raises(ConfigError, match=fragment):
            validate(PruneConfig(model_path="m.keras", data="d.npz", **config))
    model = softmax_model(np.ones((3, 2), "float32"), np.zeros(2, "float32"))
    x, y = np.ones((4, 3), "float32"), np.zeros(4, "int32")
    with pytest.raises(ConfigError, match="needs the unpruned model as teacher"):
        Trainer(job(model, np.ones((3, 2), bool), x, y, distill=2.0), keras.optimizers.SGD(0.1))
    regression = job(model, np.ones((3, 2), bool), x, y, distill=2.0)
    regression.task = Task("mse", None)
    with pytest.raises(ConfigError, match="needs a classifier"):
        Trainer(regression, keras.optimizers.SGD(0.1), teacher=model)


@pytest.mark.slow
def test_a_causal_lm_is_distilled_on_its_next_token_distributions(tmp_path):
    """A KerasHub LlamaCausalLM: the teacher is a full copy (Keras' clone_model of it has 2 weights
    fewer), the next-token task is accepted as a class distribution per position, and the distilled
    run trains: its loss goes down with the masks held."""
    import json

    keras = pytest.importorskip("keras")
    kh = pytest.importorskip("keras_hub")
    from click.testing import CliRunner

    from prunecli.cli import main
    from prunecli.training import distill

    keras.utils.set_random_seed(0)
    backbone = kh.models.LlamaBackbone(
        vocabulary_size=48, num_layers=2, num_query_heads=4, num_key_value_heads=2, hidden_dim=16, intermediate_dim=32
    )
    lm = kh.models.LlamaCausalLM(backbone=backbone, preprocessor=None)
    teacher = distill.teacher_copy(lm)
    assert [w.shape for w in teacher.weights] == [w.shape for w in lm.weights] and not teacher.trainable
    x = {"token_ids": np.arange(24, dtype="int32").reshape(2, 12) % 48, "padding_mask": np.ones((2, 12), "int32")}
    np.testing.assert_allclose(np.asarray(teacher(x)), np.asarray(lm(x)), rtol=1e-5, atol=1e-6)

    path, tokens, report = tmp_path / "lm.keras", tmp_path / "tokens.npz", tmp_path / "r.json"
    lm.save(path)
    rng = np.random.default_rng(0)
    np.savez(tokens, token_ids=rng.integers(0, 48, size=(32, 12)), padding_mask=np.ones((32, 12), "int32"))
    args = ["prune", str(path), "-s", "0.5", "--data", str(tokens), "--epochs", "2", "--lr", "1e-2", "--distill"]
    result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "out.keras"), "-r", str(report), "-q"])
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    assert r["finetune"]["distill"]
    assert r["metrics"]["after_finetune"]["loss"] < r["metrics"]["after_pruning"]["loss"]
    assert r["totals"]["prunable_sparsity"] == pytest.approx(0.5, abs=0.01)


@pytest.mark.slow
def test_a_chain_of_runs_distills_from_the_dense_model(cli, mlp_files, tmp_path):
    """--teacher: a run that prunes an earlier run's output distils from the dense model named, not from
    its own (already pruned) input. A teacher whose outputs differ, --teacher without --distill, and an
    output that would overwrite the teacher are each one line, with nothing written."""
    import json

    import keras
    from conftest import build_mlp

    dense, data = mlp_files["keras"], mlp_files["data"]
    step1, step2, report = tmp_path / "step1.keras", tmp_path / "step2.keras", tmp_path / "r.json"
    assert cli("prune", dense, "-s", "0.5", "-o", step1, "-q").exit_code == 0
    args = ("--distill", "--epochs", "1", "-d", data, "-s", "0.7", "-q")
    result = cli("prune", step1, *args, "--teacher", dense, "-o", step2, "-r", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["finetune"]["distill"]["teacher"] == str(dense)
    other = tmp_path / "other.keras"
    build_mlp(classes=5).save(other)
    for extra, code, fragment in (
        (("--teacher", other), 3, "are not the pruned model's"),
        (("--teacher", dense, "--distill", "0"), 2, "distill temperature must be > 0"),
    ):
        bad = cli("prune", step1, *args, *extra, "-o", tmp_path / "bad.keras")
        assert bad.exit_code == code and fragment in bad.stderr and bad.stderr.strip().count("\n") == 0, bad.output
        assert not (tmp_path / "bad.keras").exists()
    plain = cli("prune", step1, "-s", "0.7", "--teacher", dense, "-o", tmp_path / "bad.keras", "-q")
    assert plain.exit_code == 2 and "add --distill" in plain.stderr
    before = dense.read_bytes()
    clash = cli("prune", step1, *args, "--teacher", dense, "-o", dense, "--force")
    assert clash.exit_code != 0 and "would overwrite the teacher model file" in clash.stderr
    assert dense.read_bytes() == before
    assert keras.saving.load_model(step2).count_params() == keras.saving.load_model(dense).count_params()


def test_a_teacher_that_cannot_read_the_examples_is_refused_in_one_line(monkeypatch):
    """--teacher with other input shapes: one InputError naming them (it was a ValueError from inside
    the first training step, exit 1); a teacher whose input leaves a size open (None) reads the examples."""
    import keras

    from prunecli.errors import InputError
    from prunecli.io import models as model_io
    from prunecli.training import distill

    def classifier(shape, reads):
        inp = keras.Input(shape)
        return keras.Model(inp, keras.layers.Dense(3, activation="softmax")(reads(inp)))

    student = classifier((4, 4, 1), keras.layers.Flatten())
    files = {
        "flat.keras": classifier((16,), lambda x: x),
        "open.keras": classifier((None, None, 1), keras.layers.GlobalAveragePooling2D()),
    }
    monkeypatch.setattr(model_io, "load", lambda path, **_: (files[path], None))  # as read from the file
    with pytest.raises(
        InputError, match=r"its inputs \[\(16,\)\] cannot read the pruned model's examples \[\(4, 4, 1\)\]"
    ):
        distill.teacher_from_file("flat.keras", student)
    assert not distill.teacher_from_file("open.keras", student).trainable


def test_a_teacher_giving_logits_to_a_student_giving_probabilities_is_refused(monkeypatch):
    """Same shapes, but the teacher's last layer has no activation: its logits were read as the
    student's probabilities (negative ones clipped to 1e-7) and the run fine-tuned towards them, exit 0.
    A sigmoid teacher gives probabilities too; an output whose activation is another is not judged."""
    import keras

    from prunecli.errors import InputError
    from prunecli.io import models as model_io
    from prunecli.training import distill

    def classifier(activation):
        inp = keras.Input((4,))
        return keras.Model(inp, keras.layers.Dense(3, activation=activation)(inp))

    files = {name: classifier(name) for name in (None, "softmax", "sigmoid", "relu")}
    monkeypatch.setattr(model_io, "load", lambda path, **_: (files[path], None))
    with pytest.raises(InputError, match=r"its output gives logits \(no activation\), the pruned model's probab"):
        distill.teacher_from_file(None, files["softmax"])
    with pytest.raises(InputError, match=r"gives probabilities \(softmax or sigmoid\), the pruned model's logits"):
        distill.teacher_from_file("softmax", files[None])
    for teacher, student in (("sigmoid", "softmax"), (None, None), ("relu", "softmax")):
        assert not distill.teacher_from_file(teacher, files[student]).trainable
