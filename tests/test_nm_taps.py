"""N:M groups of a convolution run along the input channels of one kernel tap and never cross into the
next tap; when a tap's channels are not a multiple of M its last group is short and keeps min(N, L), as
tfmot's `sparsity_m_by_n` and NVIDIA's ASP lay N:M out (structure.targets.NmGroups). Checked for the
magnitude policy, Wanda and SparseGPT, and for the verifier that reads the saved model.

The expected groups are written out here from the kernel's shape, not taken from prunecli's layout.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunecli.config import Granularity, PruneConfig


def _conv_model(channels: int, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, channels))
    h = keras.layers.Conv2D(6, 3, padding="same", name="conv", activation="relu")(inp)
    h = keras.layers.Flatten()(h)
    return keras.Model(inp, keras.layers.Dense(4, name="fc")(h))


def _kept_per_group(kernel_keep: np.ndarray, m: int) -> list[np.ndarray]:
    """For a (kh, kw, c_in, c_out) keep mask: the kept count of each group (kh, kw, c_out) per group of
    M consecutive input channels of one tap, the last group of a tap as long as the channels left."""
    c_in = kernel_keep.shape[2]
    return [kernel_keep[:, :, start : start + m, :].sum(axis=2) for start in range(0, c_in, m)]


def _assert_tap_groups(kernel_keep: np.ndarray, n: int, m: int) -> None:
    c_in = kernel_keep.shape[2]
    for start, kept in zip(range(0, c_in, m), _kept_per_group(kernel_keep, m), strict=True):
        length = min(m, c_in - start)
        assert (kept == min(n, length)).all(), f"channels {start}..{start + length - 1}: {np.unique(kept)}"


def _magnitude_masks(model, n: int, m: int):
    from prunecli.selection import policy
    from prunecli.structure import targets

    found = targets.walk(model)
    scores = {t.name: np.abs(np.asarray(t.variable)) for t in found}
    return found, policy.build_masks(found, scores, "element", PruneConfig(granularity=Granularity("nm", n, m)))


def test_a_one_channel_conv_keeps_every_weight_under_2_4():
    model = _conv_model(1)
    found, result = _magnitude_masks(model, 2, 4)
    keep = np.asarray(result.masks["conv/kernel"])
    assert keep.all()  # each tap's group is one weight: min(2, 1) = 1 kept
    assert result.requested["conv/kernel"] == 0.0
    assert any("conv/kernel: 1 input channel(s) per kernel tap" in note for note in result.notes)
    fc = np.asarray(result.masks["fc/kernel"])  # the Dense layer (384 inputs) is 2:4 as before
    assert (fc.reshape(-1, 4, 4).sum(axis=1) == 2).all() and result.requested["fc/kernel"] == 0.5


@pytest.mark.parametrize(
    "channels,n,m,share",
    [
        (3, 2, 4, 1 / 3),  # one short group of 3 per tap keeps 2
        (6, 2, 4, 1 / 3),  # per tap a full group keeps 2 of 4 and a short one of 2 keeps both
        (6, 1, 4, 4 / 6),  # ... and under 1:4 the short one keeps 1 of 2
        (8, 2, 4, 0.5),  # two full groups per tap: exactly 1 - N/M
    ],
)
def test_conv_groups_stay_inside_one_tap(channels, n, m, share):
    model = _conv_model(channels)
    _, result = _magnitude_masks(model, n, m)
    keep = np.asarray(result.masks["conv/kernel"])
    _assert_tap_groups(keep, n, m)
    assert 1 - keep.mean() == pytest.approx(share)
    assert result.requested["conv/kernel"] == pytest.approx(share)


def test_magnitude_keeps_the_largest_of_each_tap_group():
    """A group's kept weights are its largest |w|, chosen among its own tap's channels only."""
    model = _conv_model(3, seed=4)
    found, result = _magnitude_masks(model, 2, 4)
    kernel = np.abs(np.asarray(model.get_layer("conv").kernel))
    keep = np.asarray(result.masks["conv/kernel"])
    smallest = kernel.argmin(axis=2)  # of the 3 channels at each (tap, output): the one pruned
    np.testing.assert_array_equal(keep, np.arange(3)[None, None, :, None] != smallest[:, :, None, :])


@pytest.mark.slow  # imports tfmot; the tap layout itself is checked by the fast tests above
@pytest.mark.parametrize("channels", [1, 3, 6, 8])
def test_magnitude_masks_equal_tfmots_m_by_n(channels):
    """tfmot lays a Conv2D kernel out as (c_out*kh*kw, c_in), groups 4 consecutive input channels and
    zero-pads the last group: prunecli's 2:4 masks (conv and Dense) are the same masks on the same weights."""
    pytest.importorskip("tensorflow_model_optimization")
    import tensorflow as tf

    from prunecli.run.tfmot import import_tfmot

    import_tfmot()
    from tensorflow_model_optimization.python.core.sparsity.keras import pruning_utils as tfmot_utils

    model = _conv_model(channels, seed=5)
    found, result = _magnitude_masks(model, 2, 4)
    for t in found:
        w = tf.constant(np.abs(np.asarray(t.variable)))
        theirs = tfmot_utils.generate_m_by_n_mask(tfmot_utils.weights_rearrange(w), (2, 4))
        theirs = np.asarray(tfmot_utils.m_by_n_sparsity_mask_prepare(theirs, w.shape)) > 0
        np.testing.assert_array_equal(np.asarray(result.masks[t.name]), theirs, err_msg=t.name)


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize("channels", [1, pytest.param(3, marks=pytest.mark.slow), 6])
def test_calibrated_methods_keep_groups_inside_one_tap(method, channels):
    from conftest import calibration_config

    from prunecli.calibration import prune_calibrated
    from prunecli.structure import targets

    model = _conv_model(channels, seed=2)
    x = np.random.default_rng(3).normal(size=(32, 8, 8, channels)).astype("float32")
    found = targets.walk(model)
    dense = {t.name: np.asarray(t.variable).copy() for t in found}
    res = prune_calibrated(model, found, [x], calibration_config(method, granularity="2:4"))
    assert res.section["fallback"] == {}
    keep = np.asarray(res.masks["conv/kernel"])
    _assert_tap_groups(keep, 2, 4)
    kernel = np.asarray(model.get_layer("conv").kernel)
    assert (kernel[~keep] == 0).all() and np.isfinite(kernel).all()
    assert res.requested["conv/kernel"] == pytest.approx({1: 0.0, 3: 1 / 3, 6: 1 / 3}[channels])
    entry = res.section["layers"]["conv/kernel"]
    if channels == 1:  # nothing pruned, so nothing to compensate: the kernel is untouched
        np.testing.assert_array_equal(kernel, dense["conv/kernel"])
    elif method == "sparsegpt":  # the OBS update, padded per tap, still lowers the layer's output error
        assert entry["error_after"] < entry["error_before"]
    else:  # Wanda keeps the kept weights as they were
        np.testing.assert_array_equal(kernel[keep], dense["conv/kernel"][keep])


def test_sparsegpt_padding_inputs_change_nothing_when_taps_are_whole_groups():
    """c_in = 4 has no short group (no dummy inputs): the result is SparseGPT on the plain matrix,
    and with c_in = 3 the same weights padded per tap give a mask of exactly 2 per tap."""
    import tensorflow as tf

    from prunecli.calibration import sparsegpt
    from prunecli.structure.targets import nm_groups

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 27)).astype("float32")
    w = rng.normal(size=(27, 5)).astype("float32")
    hessian = tf.constant(x.T @ x / len(x))
    q, keep, _ = sparsegpt.prune_matrix(w, hessian, "t", nm=(2, 4), channels_per_tap=3)
    keep = np.asarray(keep)
    assert (keep.reshape(9, 3, 5).sum(axis=1) == 2).all()
    assert not nm_groups(27, 4, 3).in_row_order
    error = lambda v: float(np.linalg.norm(x @ (np.asarray(v) - w)))  # noqa: E731
    assert error(q) < error(np.where(keep, w, 0))  # the update compensates for what was pruned


def test_verify_accepts_tap_groups_and_rejects_a_group_keeping_more_than_n(tmp_path, cli):
    import keras

    model = _conv_model(3, seed=1)
    path, data = tmp_path / "m.keras", tmp_path / "d.npz"
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.save(path)
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.normal(size=(64, 8, 8, 3)).astype("float32"), y=rng.integers(0, 4, 64))
    out, report = tmp_path / "nm.keras", tmp_path / "nm.json"
    result = cli("prune", path, "-g", "n:m=2:4", "-o", out, "-r", report, "-q", "--no-sizes")
    assert result.exit_code == 0, result.output
    claims = json.loads(report.read_text())
    conv = next(layer for layer in claims["layers"] if layer["name"] == "conv/kernel")
    assert conv["requested_sparsity"] == pytest.approx(1 / 3) and conv["sparsity"] == pytest.approx(1 / 3)
    checked = cli("verify", out, "-r", report)
    assert checked.exit_code == 0, checked.output

    pruned = keras.saving.load_model(out, compile=False)
    kernel = pruned.get_layer("conv").kernel
    value = np.asarray(kernel).copy()
    channel = int(np.flatnonzero(value[1, 2, :, 5] == 0)[0])  # the one weight tap (1, 2) of filter 5 lost
    value[1, 2, channel, 5] = 0.5  # that tap's group of 3 now keeps 3 > 2
    kernel.assign(value)
    broken = tmp_path / "broken.keras"
    pruned.save(broken)
    failed = cli("verify", broken, "-r", report)
    assert failed.exit_code == 4
    tap = (1 * 3 + 2) * 3  # the group's first row in the (kh*kw*c_in, c_out) view
    assert f"conv/kernel: 2:4 broken in 1 group(s) (first: unit 5, rows {tap}..{tap + 2} hold 3 non-zeros)" in (
        failed.stderr
    )

    conv["requested_sparsity"] = 0.5  # a report claiming 1 - N/M for this layer is refused too
    lying = tmp_path / "lying.json"
    lying.write_text(json.dumps(claims))
    failed = cli("verify", out, "-r", lying)
    assert failed.exit_code == 4
    assert "conv/kernel: the report requests sparsity 0.5, 2:4 prunes 0.333333 of it" in failed.stderr


# ------------------------------------------------------------------ EinsumDense: along the contracted axes


def _attention_model(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((6, 16))
    h = keras.layers.MultiHeadAttention(4, 8, name="mha")(inp, inp)
    return keras.Model(inp, keras.layers.Dense(3, name="fc")(keras.layers.GlobalAveragePooling1D()(h)))


def _kept_along_contracted(name: str, keep: np.ndarray, m: int) -> np.ndarray:
    """Kept count per group of M consecutive inputs of the product, written out per kernel: the q/k/v
    kernels (d_model=16, heads=4, head_dim=8) contract d_model; the output kernel (heads, head_dim,
    d_model) contracts heads x head_dim (flattened, head_dim fastest)."""
    if name.endswith("attention_output/kernel"):
        return keep.reshape(32 // m, m, 16).sum(axis=1)
    return keep.reshape(16 // m, m, 4, 8).sum(axis=1)


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_einsum_groups_run_along_the_contracted_axes_and_verify_agrees(method):
    """A query projection's (d_model, heads, head_dim) kernel has its units on head_dim, so its matrix
    view's consecutive rows are different heads (different outputs of the product): 2:4 there is not the
    pattern sparse tensor cores run, and the calibrated methods, which read the product's inputs, laid
    their groups out differently, so `verify` rejected their output. Every path now groups the inputs."""
    from conftest import calibration_config

    from prunecli.calibration import prune_calibrated
    from prunecli.run.verify import nm_violations
    from prunecli.structure import targets

    model = _attention_model(seed=4)
    found = [t for t in targets.walk(model) if t.name.startswith("mha/")]
    assert len(found) == 4
    if method == "magnitude":
        _found, result = _magnitude_masks(model, 2, 4)
        masks = result.masks
        for t in found:
            t.variable.assign(np.where(np.asarray(masks[t.name]), np.asarray(t.variable), 0))
    else:
        x = np.random.default_rng(1).normal(size=(32, 6, 16)).astype("float32")
        res = prune_calibrated(model, targets.walk(model), [x], calibration_config(method, granularity="2:4"))
        assert res.section["fallback"] == {}
        masks = res.masks
    for t in found:
        kept = _kept_along_contracted(t.name, np.asarray(masks[t.name], dtype=bool), 4)
        assert (kept == 2).all(), (t.name, np.unique(kept))
        assert nm_violations(t, 2, 4)[0] == 0, t.name
        assert t.nm_sparsity(2, 4) == 0.5
