"""The tfmot engine: tfmot's own pruning behind prunecli's config and report, and its clear refusals."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from prunecli import build_config
from prunecli.errors import ConfigError, ModelLoadError
from prunecli.run.pipeline import prune


def run(path, tmp_path, **options):
    settings = {"model_path": str(path), "output": str(tmp_path / "out.h5"), "engine": "tfmot", "quiet": True}
    settings.update(options)
    return prune(build_config(settings, environ={}))


def saved_kernels(path) -> dict[str, np.ndarray]:
    import tf_keras

    model = tf_keras.models.load_model(path, compile=False)
    return {f"{layer.name}/kernel": np.asarray(layer.kernel) for layer in model.layers if hasattr(layer, "kernel")}


@pytest.mark.slow
def test_oneshot_matches_tfmot_counts_and_the_native_masks(keras2_h5, tmp_path):
    from prunecli.io import models as model_io

    result = run(keras2_h5, tmp_path, sparsity=0.5)
    report = result.report
    assert report.extra["engine"]["name"] == "tfmot"
    assert model_io.inspect_file(result.output_path).flavour == "keras2"  # still a Keras-2 file
    kernels = saved_kernels(result.output_path)
    assert {s.name for s in report.layers} == set(kernels) == {"hidden1/kernel", "out/kernel"}
    for stat in report.layers:
        zeros = int((kernels[stat.name] == 0).sum())
        assert stat.params - stat.nonzeros == zeros == stat.params // 2  # tfmot keeps round(n * (1 - s))
        assert stat.requested_sparsity == 0.5
    assert report.totals["prunable_sparsity"] == pytest.approx(0.5)
    import tf_keras

    reloaded = tf_keras.models.load_model(result.output_path)  # keeps the input's loss and optimizer
    assert getattr(reloaded.loss, "__name__", reloaded.loss) == "sparse_categorical_crossentropy"
    assert type(reloaded.optimizer).__name__ == "Adam"

    native = prune(
        build_config(
            {
                "model_path": str(keras2_h5),
                "output": str(tmp_path / "native.h5"),
                "sparsity": 0.5,
                "scope": "layer",  # tfmot prunes layer by layer; the native default ranks globally
                "quiet": True,
            },
            environ={},
        )
    )
    native_kernels = saved_kernels(native.output_path)
    for name, kernel in kernels.items():  # same magnitude criterion, no ties: the same weights survive
        np.testing.assert_array_equal(kernel == 0, native_kernels[name] == 0)


@pytest.mark.slow
def test_polynomial_schedule_reaches_the_final_sparsity_while_training(keras2_h5, tmp_path):
    data = keras2_h5.parent / "data.npz"
    report = run(keras2_h5, tmp_path, sparsity=0.9, schedule="polynomial", epochs=3, data=str(data)).report
    assert set(report.metrics) == {"before", "after_finetune"}
    assert report.extra["finetune"]["epochs_run"] == 3
    hidden = next(s for s in report.layers if s.name == "hidden1/kernel")
    assert hidden.params - hidden.nonzeros == round(0.9 * hidden.params)
    assert report.timings_s["finetune"] > 0


@pytest.mark.slow
def test_include_exclude_and_skip_leave_layers_whole(keras2_h5, tmp_path):
    """Also: the input replaced while the run saves is reported at the size of the file it loaded (the
    report measured the path again at its end, so another file's size)."""
    import shutil

    shutil.copy(keras2_h5, tmp_path / "in.h5")

    def replace_input(message):
        if message.startswith("saving"):
            (tmp_path / "in.h5").write_bytes(b"another file")

    settings = {"model_path": str(tmp_path / "in.h5"), "output": str(tmp_path / "out.h5"), "engine": "tfmot"}
    config = build_config({**settings, "sparsity": 0.5, "exclude": ["out"]}, environ={})
    result = prune(config, progress=replace_input)
    assert result.report.input["bytes"] == os.path.getsize(keras2_h5) and result.report.input["gzip_bytes"] > 0
    assert [s.name for s in result.report.layers] == ["hidden1/kernel"]
    assert (saved_kernels(result.output_path)["out/kernel"] != 0).all()


@pytest.mark.slow
def test_keras3_files_are_refused_with_the_way_out(mlp_files, tmp_path):
    for path in (mlp_files["keras"], mlp_files["h5"]):
        with pytest.raises(ModelLoadError, match="written by Keras 3; tfmot needs a Keras-2 .h5 — use --engine native"):
            run(path, tmp_path, sparsity=0.5)


@pytest.mark.parametrize(
    "options, words",
    [
        ({"scope": "global"}, "--scope global"),
        ({"method": "random"}, "method 'random'"),
        ({"granularity": "neuron"}, "granularity neuron"),
        ({"threshold": 0.1, "sparsity": None}, "--threshold"),
        ({"schedule": "iterative", "epochs": 1}, "--schedule iterative"),
        ({"custom_objects": ["layers.py"]}, "--custom-objects"),
    ],
)
def test_options_tfmot_lacks_are_config_errors(keras2_h5, tmp_path, options, words):
    settings = {"sparsity": 0.5, "data": str(keras2_h5.parent / "data.npz"), **options}
    with pytest.raises(ConfigError, match=words):
        run(keras2_h5, tmp_path, **{k: v for k, v in settings.items() if v is not None})


@pytest.mark.slow
def test_a_layer_tfmot_cannot_prune_is_named(tmp_path):
    import tf_keras

    inp = tf_keras.Input((6,))
    x = tf_keras.layers.EinsumDense("ab,bc->ac", output_shape=4, name="einsum")(inp)
    out = tf_keras.layers.Dense(2, name="head")(x)
    path = tmp_path / "einsum.h5"
    tf_keras.Model(inp, out).save(path)
    with pytest.raises(ModelLoadError, match="tfmot cannot prune layer einsum"):
        run(path, tmp_path, sparsity=0.5)
    report = run(path, tmp_path, sparsity=0.5, exclude=["einsum"]).report
    assert [s.name for s in report.layers] == ["head/kernel"]


@pytest.mark.slow
def test_keras3_keeps_working_in_the_same_process(keras2_h5, tmp_path):
    import keras
    import tensorflow as tf

    before = os.environ.get("TF_USE_LEGACY_KERAS")
    run(keras2_h5, tmp_path, sparsity=0.5)
    assert os.environ.get("TF_USE_LEGACY_KERAS") == before
    assert tf.keras.version().startswith("3.")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    model.fit(np.ones((4, 3)), np.ones((4, 2)), verbose=0)
    assert isinstance(model, keras.Model)


@pytest.mark.slow
def test_cli_writes_a_normal_report(cli, keras2_h5, tmp_path):
    report_path = tmp_path / "r.json"
    res = cli(
        "prune", keras2_h5, "--engine", "tfmot", "-s", "0.5", "-o", tmp_path / "o.h5", "--report", report_path, "-q"
    )
    assert res.exit_code == 0, res.output
    report = json.loads(report_path.read_text())
    assert report["engine"]["name"] == "tfmot"
    assert report["totals"]["prunable_sparsity"] == pytest.approx(0.5)
    assert {"load", "mask", "save"} <= set(report["timings_s"])

    res = cli("prune", keras2_h5, "--engine", "tfmot", "-s", "0.5", "-o", tmp_path / "o.keras", "-q")
    assert res.exit_code == 5
    assert "writes Keras-2 .h5 files" in res.output


@pytest.mark.slow
def test_fine_tuning_with_dropout_repeats_with_the_seed_whatever_the_caller_seeded(tmp_path):
    """tf_keras' Dropout draws from TensorFlow's global seed, which a run leaves unset (the caller's is set
    aside): a fine-tuned tfmot model changed from one command to the next. The run seeds it from --seed
    for the fine-tuning, and puts the caller's seed back."""
    import tensorflow as tf
    import tf_keras
    from tensorflow.python.eager import context

    x = np.random.default_rng(0).normal(size=(64, 20)).astype("float32")
    np.savez(tmp_path / "d.npz", x=x, y=(x[:, 0] > 0).astype("int64"))
    tf_keras.utils.set_random_seed(0)
    layers = tf_keras.layers
    model = tf_keras.Sequential([layers.Dense(8, "relu", input_shape=(20,)), layers.Dropout(0.5), layers.Dense(2)])
    model.compile(optimizer="adam", loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.save(tmp_path / "dropout.h5")
    kernels = []
    for caller_seed in (1, 2):
        tf.random.set_seed(caller_seed)
        out = tmp_path / f"out{caller_seed}.h5"
        run(tmp_path / "dropout.h5", tmp_path, sparsity=0.5, epochs=1, data=str(tmp_path / "d.npz"), output=str(out))
        assert context.context()._seed == caller_seed  # noqa: SLF001  # the caller's seed put back
        kernels.append(saved_kernels(out))
    for name in kernels[0]:
        np.testing.assert_array_equal(kernels[0][name], kernels[1][name])
