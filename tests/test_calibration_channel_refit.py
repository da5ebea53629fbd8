"""--reconstruct after neuron masks (calibration/channel_refit.py): the layers that read removed channels
are refit to the dense model's output, measured here independently of the refit's own figures, through
Conv2D -> BN -> Conv2D, the same in 3-D, Conv2D -> BN -> Conv2DTranspose, Conv1D -> Flatten -> Dense, a
residual set and a grouped Conv2D (refit group by group); passes split for memory; the CLI's
--reconstruct -g neuron --shrink
writes a shrunk model equal to the masked one."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunecli.outputs.report import Timings


def _linear_model(kind: str):
    """Small models whose refit layers have no activation of their own, so a layer's output is the
    linear output the refit reproduces."""
    import keras
    from keras import layers as L

    keras.utils.set_random_seed(0)
    if kind == "flatten":  # a Dense reading a Flatten, wider than its input (b sees 80 of which 40 go)
        inp = keras.Input((12, 2))
        x = L.Conv1D(8, 3, name="a")(inp)
        x = L.ReLU()(x)
        x = L.Dense(96, name="b")(L.Flatten()(x))
        x = L.ReLU()(x)
        out = L.Dense(3, activation="softmax", name="out")(x)
        return keras.Model(inp, out)
    if kind == "transpose":  # a decoder's upsampling Conv2DTranspose reads the removed channels (the zoo's ContinUNet)
        inp = keras.Input((6, 6, 3))
        x = L.Conv2D(16, 3, padding="same", use_bias=False, name="a")(inp)
        x = L.BatchNormalization(name="bn_a")(x)
        x = L.ReLU()(x)
        x = L.Conv2DTranspose(12, 3, strides=2, padding="same", name="b")(x)
        x = L.GlobalAveragePooling2D()(L.ReLU()(x))
        return keras.Model(inp, L.Dense(3, activation="softmax", name="out")(x))
    if kind == "conv3d":  # as "conv", on volumes (the zoo's rbm3 U-Net: 24 Conv3D)
        inp = keras.Input((5, 6, 5, 3))
        x = L.Conv3D(16, 3, padding="same", use_bias=False, name="a")(inp)
        x = L.BatchNormalization(name="bn_a")(x)
        x = L.ReLU()(x)
        x = L.Conv3D(12, (3, 2, 3), padding="same", name="b")(x)
        x = L.GlobalAveragePooling3D()(L.ReLU()(x))
        return keras.Model(inp, L.Dense(3, activation="softmax", name="out")(x))
    inp = keras.Input((10, 10, 3))
    if kind == "grouped":  # b, grouped (4 groups), reads c1, whose inputs the stem's removed channels changed
        x = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inp)
        x = L.ReLU()(L.BatchNormalization(name="stem_bn")(x))
        x = L.Conv2D(16, 3, padding="same", use_bias=False, name="c1")(x)
        x = L.ReLU()(L.BatchNormalization(name="c1_bn")(x))
        x = L.Conv2D(12, 3, padding="same", groups=4, name="b")(x)
    elif kind == "conv":
        x = L.Conv2D(16, 3, padding="same", use_bias=False, name="a")(inp)
        x = L.BatchNormalization(name="bn_a")(x)
        x = L.ReLU()(x)
        x = L.Conv2D(12, 3, padding="same", name="b")(x)
    else:  # a residual set: stem and the branch's last conv share their channels through the Add
        s = L.Conv2D(16, 3, padding="same", use_bias=False, name="stem")(inp)
        s = L.BatchNormalization(name="stem_bn")(s)
        s = L.ReLU()(s)
        y = L.Conv2D(16, 3, padding="same", use_bias=False, name="c1")(s)
        y = L.BatchNormalization(name="c1_bn")(y)
        y = L.ReLU()(y)
        y = L.Conv2D(16, 1, use_bias=False, name="c2")(y)
        y = L.BatchNormalization(name="c2_bn")(y)
        x = L.Add()([s, y])
        x = L.ReLU()(x)
        x = L.Conv2D(12, 3, padding="same", name="b")(x)
    x = L.ReLU()(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(inp, L.Dense(3, activation="softmax", name="out")(x))


def _inputs(model, n: int = 96):
    """Inputs driven by a few latent factors (as real features are), so that the channels a layer
    makes are redundant and the kept ones can stand in for the removed ones."""
    rng = np.random.default_rng(1)
    *space, channels = model.input_shape[1:]
    z = rng.normal(size=(n, *space, 2))
    return (z @ rng.normal(size=(2, channels)) + 0.05 * rng.normal(size=(n, *space, channels))).astype("float32")


def _with_moving_statistics(model, x):
    """BatchNorm statistics of data rather than 0/1, as a trained model has."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    model(x, training=True)


def _prune(model, sparsity: float, exclude=("b",)):
    """Neuron magnitude masks at `sparsity` with their followers applied, as a run applies them; returns
    (targets, masks, the dense copy taken before masking). `b`, whose output is measured, keeps its units."""
    from prunecli import build_config
    from prunecli.run import steps
    from prunecli.training.distill import teacher_copy

    settings = {"model_path": "m.keras", "granularity": "neuron", "sparsity": sparsity, "exclude": list(exclude)}
    config = build_config(settings)
    targets = steps.pick_targets(model, config).targets
    dense = teacher_copy(model)
    masks = steps.score_and_mask(model, targets, None, None, config, steps.silent, Timings())
    return targets, masks.masks, dense


def _output_error(model, dense, name: str, x) -> float:
    """||layer output in model - layer output in dense|| / ||layer output in dense||, on x."""
    import keras

    def out(m):
        return np.asarray(keras.Model(m.inputs, m.get_layer(name).output)(x, training=False))

    got, want = out(model), out(dense)
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize(
    ("kind", "sparsity"),
    [
        ("conv", 0.5),
        pytest.param("conv3d", 0.5, marks=pytest.mark.slow),
        pytest.param("transpose", 0.5, marks=pytest.mark.slow),
        ("flatten", 0.5),
        pytest.param("residual", 0.4, marks=pytest.mark.slow),
    ],
)
def test_refit_lowers_the_next_layers_output_error(kind, sparsity):
    from prunecli.calibration import channel_refit

    model = _linear_model(kind)
    x = _inputs(model)
    _with_moving_statistics(model, x)
    targets, masks, dense = _prune(model, sparsity)
    before = _output_error(model, dense, "b", x)
    section = channel_refit.refit_channels(model, dense, targets, masks, [x])
    after = _output_error(model, dense, "b", x)
    assert before > 0.05
    assert after < 0.7 * before, (before, after)
    entry = section["layers"]["b"]
    assert entry["error_after"] < entry["error_before"]
    assert entry["error_after"] == pytest.approx(after, rel=1e-3)
    if kind != "residual":  # there c1 and c2 are refit first, which changes b's inputs before its refit
        assert entry["error_before"] == pytest.approx(before, rel=1e-3)
    # the masks hold: removed units and the rows that read removed channels are exactly 0
    for t in targets:
        w = np.asarray(t.variable)
        assert not w[~np.asarray(masks[t.name])].any()
    dead_rows = ~np.asarray(masks[targets[0].name]).any(axis=tuple(range(len(targets[0].shape) - 1)))
    assert dead_rows.any()
    b = np.asarray(model.get_layer("b").kernel)
    if kind != "residual":  # `a` feeds `b` directly; b's rows are taps (positions) x channels, channel fastest
        rows = b.reshape(-1, b.shape[-1]) if kind != "transpose" else np.swapaxes(b, -1, -2).reshape(-1, b.shape[-2])
        assert not rows[np.tile(dead_rows, len(rows) // dead_rows.size)].any()
    # the stacked Hessian holds b's live rows and bias beside the narrower dense side (its output or its
    # inputs), not both models' whole inputs: (2 d_in)^2 floats held the Dense after the zoo's 11,136-wide
    # Flatten at 2 GB
    d = entry["d_in"] + 1
    units = b.shape[-2] if kind == "transpose" else b.shape[-1]  # a transposed kernel is (..., out, in)
    assert entry["hessian_width"] == d - entry["inputs_removed"] + min(units, d) < 2 * d


@pytest.mark.slow  # three refits of a CNN: the full suite
def test_a_costly_layer_is_refit_on_thinned_rows_and_one_too_big_keeps_its_mask(monkeypatch):
    """Past REFIT_MACS a conv's rows are thinned to a stride (still lowering its error); when the stride
    would leave fewer rows than inputs, or its Hessians do not fit in free memory, the layer keeps the
    plain mask and the section says why (the zoo's tempo CNN and CREPE, bench/ZOO.md)."""
    from prunecli.calibration import channel_refit
    from prunecli.io.models import memory

    model = _linear_model("conv")
    x = _inputs(model)
    _with_moving_statistics(model, x)
    targets, masks, dense = _prune(model, 0.5)
    solved = 3 * 3 * 8 + 1  # b: 3x3 taps of the 8 of a's 16 channels kept, and its bias
    width = solved + 12  # ... beside b's 12 dense outputs
    rows = 96 * 10 * 10
    monkeypatch.setattr(channel_refit, "REFIT_MACS", rows * width**2 / 4)
    section = channel_refit.refit_channels(model, dense, targets, masks, [x])
    entry = section["layers"]["b"]
    assert entry["row_stride"] == 4 and entry["rows"] == rows // 4
    assert entry["error_after"] < entry["error_before"]

    for macs, free, why in ((solved * width**2, 2**40, "too few rows"), (2e11, 2**16, "GiB is free")):
        model = _linear_model("conv")
        _with_moving_statistics(model, x)
        targets, masks, dense = _prune(model, 0.5)
        monkeypatch.setattr(channel_refit, "REFIT_MACS", macs)
        monkeypatch.setattr(memory, "available_memory", lambda free=free: free)
        kernel = np.asarray(model.get_layer("b").kernel).copy()
        section = channel_refit.refit_channels(model, dense, targets, masks, [x])
        assert "b" not in section["layers"] and why in section["skipped"]["b"]
        assert np.array_equal(np.asarray(model.get_layer("b").kernel), kernel)


@pytest.mark.slow  # three refits of a CNN: the full suite
def test_refits_past_the_capture_budget_use_the_first_examples(monkeypatch):
    """Each refit runs both models up to its layer: past REFIT_CAPTURE_MACS in all the refit reads only the
    first examples (a note says how many), and still lowers the error (the zoo's SpliceAI, bench/ZOO.md)."""
    from prunecli.calibration import channel_refit
    from prunecli.structure import flops

    model = _linear_model("conv")
    x = _inputs(model)
    _with_moving_statistics(model, x)
    targets, masks, dense = _prune(model, 0.5)
    per_pass = 2 * 2 * flops.count(model)["total"]  # two refits (b and out), both models, per example
    monkeypatch.setattr(channel_refit, "REFIT_CAPTURE_MACS", 10 * per_pass)
    section = channel_refit.refit_channels(model, dense, targets, masks, [x[:48], x[48:]])
    assert section["samples"] == 10
    assert any("first 10 of 96 calibration examples" in n for n in section["notes"])
    assert section["layers"]["b"]["rows"] == 10 * 10 * 10
    assert section["layers"]["b"]["error_after"] < section["layers"]["b"]["error_before"]


def test_residual_set_refits_every_reader_and_keeps_the_set_whole():
    """A channel of the residual stream goes from stem and c2 together; c1 and b both read the stream and
    are refit; a layer whose inputs pruning did not change (stem) is left alone."""
    from prunecli.calibration import channel_refit

    model = _linear_model("residual")
    x = _inputs(model)
    _with_moving_statistics(model, x)
    targets, masks, dense = _prune(model, 0.4)
    stem = np.asarray(model.get_layer("stem").kernel)
    section = channel_refit.refit_channels(model, dense, targets, masks, [x])
    assert {"c1", "c2", "b", "out"} <= set(section["layers"])
    assert "stem" not in section["layers"] and "stem" not in section["skipped"]
    np.testing.assert_array_equal(np.asarray(model.get_layer("stem").kernel), stem)
    gone_stem = ~np.asarray(model.get_layer("stem").kernel).any(axis=(0, 1, 2))
    gone_c2 = ~np.asarray(model.get_layer("c2").kernel).any(axis=(0, 1, 2))
    assert gone_stem.any() and (gone_stem == gone_c2).all()


def test_a_layer_whose_output_units_go_keeps_them_removed_and_its_bias_zero():
    from prunecli.calibration import channel_refit

    model = _linear_model("flatten")
    x = _inputs(model)
    targets, masks, dense = _prune(model, 0.5, exclude=())
    channel_refit.refit_channels(model, dense, targets, masks, [x])
    b = model.get_layer("b")
    gone = ~np.asarray(masks["b/kernel"]).any(axis=0)
    assert gone.any()
    assert not np.asarray(b.kernel)[:, gone].any() and not np.asarray(b.bias)[gone].any()
    assert np.asarray(b.kernel)[:, ~gone].any()


@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory):
    """A BN CNN trained a little on a separable task, and its data."""
    from conftest import write_bn_cnn

    return write_bn_cnn(tmp_path_factory.mktemp("channel_refit"))


@pytest.mark.slow
def test_cli_reconstruct_neuron_shrink_equals_the_masked_model(cli, cnn_files, tmp_path):
    out, report = tmp_path / "o.keras", tmp_path / "r.json"
    args = ["prune", cnn_files / "cnn.keras", "-d", cnn_files / "d.npz", "-g", "neuron", "-s", "0.5"]
    result = cli(*args, "--shrink", "--reconstruct", "-o", out, "-r", report, "-q", "--no-sizes")
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    section = data["calibration"]
    assert section["method"] == "channel refit" and section["samples"] == 128
    assert {"c1", "fc"} <= set(section["layers"])
    assert all(e["error_after"] < e["error_before"] for e in section["layers"].values())
    check = data["shrink"]["verification"]  # the shrunk model against the masked, refit one
    assert check["inputs"] == "data" and check["max_rel_diff"] <= 1e-4
    assert data["shrink"]["params_after"] < data["shrink"]["params_before"]
    assert "batchnorm_recalibrated" not in data  # the refit layers reproduce what the dense statistics describe
    import keras

    shrunk, dense = keras.saving.load_model(out), keras.saving.load_model(cnn_files / "cnn.keras")
    assert shrunk.get_layer("c0").kernel.shape[-1] < 16
    for stat in ("moving_mean", "moving_variance"):  # bn0's kept channels keep the dense statistics, exactly
        kept = np.asarray(getattr(shrunk.get_layer("bn0"), stat))  # (bn1's absorb what c0's removed units
        assert np.isin(kept, np.asarray(getattr(dense.get_layer("bn0"), stat))).all(), stat  # left constant)


@pytest.mark.slow
def test_target_takes_reconstruct(cnn_files, tmp_path):
    from prunecli import build_config, prune

    config = build_config(
        {
            "model_path": str(cnn_files / "cnn.keras"),
            "data": str(cnn_files / "d.npz"),
            "target": "params=0.5",
            "reconstruct": True,
            "output": str(tmp_path / "o.keras"),
            "quiet": True,
            "sizes": False,
        }
    )
    report = prune(config).report.to_dict()
    assert report["calibration"]["layers"] and report["target"]["within_tolerance"]
    assert report["shrink"]["verification"]["max_rel_diff"] <= 1e-4


@pytest.mark.slow
def test_target_refits_conv3d_layers_and_the_shrunk_model_equals_the_masked_one(tmp_path):
    """`--target params=0.5 --data` on a Conv3D model: the Conv3D layers that read removed channels are refit
    (the zoo's rbm3 U-Net kept 19 plain masks, "Conv3D layers are not refit"), each to a lower output error,
    and the shrunk model equals the masked, refit one on the data."""
    from prunecli import build_config, prune

    model = _linear_model("conv3d")
    x = _inputs(model, 64)
    _with_moving_statistics(model, x)
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "d.npz", x=x, y=np.argmax(np.asarray(model(x)), axis=1))
    settings = {"model_path": str(tmp_path / "m.keras"), "data": str(tmp_path / "d.npz"), "target": "params=0.5"}
    config = build_config({**settings, "output": str(tmp_path / "o.keras"), "quiet": True, "sizes": False})
    report = prune(config).report.to_dict()
    section = report["calibration"]
    assert section["method"] == "channel refit" and "b" in section["layers"], section["skipped"]
    assert not section["skipped"] and not any("not refit" in n for n in report["notes"])
    assert all(e["error_after"] < e["error_before"] for e in section["layers"].values())
    assert report["shrink"]["verification"]["max_rel_diff"] <= 1e-4
    assert report["shrink"]["params_after"] < report["shrink"]["params_before"]


@pytest.mark.slow  # three refits, one of them in four groups: the full suite
def test_a_grouped_convolution_is_refit_group_by_group():
    """A grouped convolution (groups > 1) whose inputs changed is refit as one least-squares problem per
    group, on that group's input channels only (the layer is block-diagonal): its output error falls,
    and the entry's error, pooled over the groups, is the one measured on the whole output."""
    from prunecli.calibration import channel_refit

    model = _linear_model("grouped")
    x = _inputs(model, 48)
    _with_moving_statistics(model, x)
    targets, masks, dense = _prune(model, 0.5)
    before = _output_error(model, dense, "b", x)
    section = channel_refit.refit_channels(model, dense, targets, masks, [x])
    after = _output_error(model, dense, "b", x)
    entry = section["layers"]["b"]
    assert (entry["groups"], entry["groups_refit"]) == (4, 4), section
    assert after < 0.8 * before, (before, after)  # c1's refit, then b's (0.83 -> 0.69 on its own)
    assert entry["error_after"] < 0.9 * entry["error_before"]
    assert entry["error_after"] == pytest.approx(after, rel=1e-3)


@pytest.mark.slow  # two refits of a CNN, twice: the full suite
def test_refit_passes_split_for_memory_give_the_same_fit(monkeypatch):
    """Past REFIT_PASS_BYTES of activations (Keras holds every tensor of a pass until it ends) a refit's
    passes take fewer examples each: the same examples in all, so the same weights, and the entry says
    how many per pass (the zoo's OpenFace: 2.1 GB peak RSS). A stopped pass leaves no reference cycle
    holding its activations until Python's collector runs (capture._release)."""
    import gc

    from prunecli.calibration import channel_refit

    x = _inputs(_linear_model("flatten"), 48)
    kernels, entries = [], []
    for budget in (channel_refit.REFIT_PASS_BYTES, 4 * (12 * 2 + 3 * 10 * 8) * 10):  # b: 10 examples a pass
        monkeypatch.setattr(channel_refit, "REFIT_PASS_BYTES", budget)
        model = _linear_model("flatten")
        _with_moving_statistics(model, x)
        targets, masks, dense = _prune(model, 0.5)
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)
        try:
            section = channel_refit.refit_channels(model, dense, targets, masks, [x])
            gc.collect()
            held = [o for o in gc.garbage if type(o).__name__ == "frame" and o.f_code.co_name == "_run_through_graph"]
            assert not held  # the stopped passes' frames (their tensors) were released, not left for the collector
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
        entries.append(section["layers"]["b"])
        kernels.append(np.asarray(model.get_layer("b").kernel))
    assert entries[0]["examples_per_pass"] == 32 and entries[1]["examples_per_pass"] == 10
    assert entries[1]["rows"] == entries[0]["rows"] == 48
    assert entries[1]["error_after"] == pytest.approx(entries[0]["error_after"], rel=1e-4)
    np.testing.assert_allclose(kernels[1], kernels[0], rtol=1e-3, atol=1e-5)
