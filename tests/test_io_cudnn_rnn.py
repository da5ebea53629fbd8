"""Keras-2 CuDNNGRU / CuDNNLSTM files read as the plain GRU / LSTM that compute the same network.

The conversion is checked three ways: against the cuDNN equations written out in NumPy on the
stored (cuDNN-layout) weights, against tf_keras' own conversion (`preprocess_weights_for_loading`),
and end to end on a small .h5 written with the CuDNN class names, as Keras 2.2.4-tf wrote them
(medaka's basecaller: Bidirectional(CuDNNGRU) -> per-position softmax).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from prunecli.errors import ModelLoadError
from prunecli.io import models as model_io
from prunecli.io.models import cudnn

IN_DIM, UNITS, STEPS = 7, 5, 6  # in_dim != units, so a wrong kernel transform cannot pass by symmetry


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _cudnn_weights(cls: str, rng):
    gates = cudnn.CUDNN[cls][1]
    return [
        rng.normal(0, 0.5, (IN_DIM, gates * UNITS)).astype(np.float32),
        rng.normal(0, 0.5, (UNITS, gates * UNITS)).astype(np.float32),
        rng.normal(0, 0.5, (2 * gates * UNITS,)).astype(np.float32),
    ]


def _gate_matrices(kernel, recurrent, gates):
    """cuDNN reads each gate's block of the stored arrays as its own row-major matrices:
    W (units, in_dim) for the input and R (units, units) for the state, computing W @ x and R @ h."""
    ws = [np.ascontiguousarray(k).reshape(UNITS, IN_DIM) for k in np.hsplit(kernel, gates)]
    rs = [np.ascontiguousarray(k).reshape(UNITS, UNITS) for k in np.hsplit(recurrent, gates)]
    return ws, rs


def cudnn_gru_reference(x, kernel, recurrent, bias):
    """cuDNN's GRU (the CUDNN_GRU mode that CuDNNGRU ran), gates stored z, r, h; per time step:
    r = s(Wr x + bWr + Rr h + bRr); z = s(Wz x + bWz + Rz h + bRz);
    n = tanh(Wh x + bWh + r * (Rh h + bRh)); h' = (1 - z) * n + z * h."""
    (wz, wr, wh), (rz, rr, rh) = _gate_matrices(kernel, recurrent, 3)
    bwz, bwr, bwh, brz, brr, brh = np.split(bias, 6)
    h = np.zeros((x.shape[0], UNITS))
    out = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        r = _sigmoid(xt @ wr.T + bwr + h @ rr.T + brr)
        z = _sigmoid(xt @ wz.T + bwz + h @ rz.T + brz)
        n = np.tanh(xt @ wh.T + bwh + r * (h @ rh.T + brh))
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out, axis=1)


def cudnn_lstm_reference(x, kernel, recurrent, bias):
    """cuDNN's LSTM, gates stored i, f, c, o, each with an input and a recurrent bias."""
    (wi, wf, wc, wo), (ri, rf, rc, ro) = _gate_matrices(kernel, recurrent, 4)
    bw, br = np.split(bias, 2)
    bwi, bwf, bwc, bwo = np.split(bw, 4)
    bri, brf, brc, bro = np.split(br, 4)
    h = np.zeros((x.shape[0], UNITS))
    c = np.zeros((x.shape[0], UNITS))
    out = []
    for t in range(x.shape[1]):
        xt = x[:, t]
        i = _sigmoid(xt @ wi.T + bwi + h @ ri.T + bri)
        f = _sigmoid(xt @ wf.T + bwf + h @ rf.T + brf)
        g = np.tanh(xt @ wc.T + bwc + h @ rc.T + brc)
        o = _sigmoid(xt @ wo.T + bwo + h @ ro.T + bro)
        c = f * c + i * g
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


def _plain_layer(cls: str):
    import keras

    if cls == "CuDNNGRU":
        return keras.layers.GRU(UNITS, reset_after=True, recurrent_activation="sigmoid", return_sequences=True)
    return keras.layers.LSTM(UNITS, recurrent_activation="sigmoid", return_sequences=True)


@pytest.mark.parametrize("cls", ["CuDNNGRU", "CuDNNLSTM"])
def test_converted_weights_compute_the_cudnn_equations(cls):
    rng = np.random.default_rng(0)
    stored = _cudnn_weights(cls, rng)
    x = rng.normal(size=(3, STEPS, IN_DIM)).astype(np.float32)
    layer = _plain_layer(cls)
    layer.build((None, STEPS, IN_DIM))
    layer.set_weights(cudnn.from_cudnn(cls, *stored))
    got = np.asarray(layer(x))
    reference = (cudnn_gru_reference if cls == "CuDNNGRU" else cudnn_lstm_reference)(x.astype(np.float64), *stored)
    np.testing.assert_allclose(got, reference, atol=1e-5)


@pytest.mark.parametrize("cls", ["CuDNNGRU", "CuDNNLSTM"])
def test_conversion_matches_tf_keras_and_inverts(cls):
    import tf_keras
    from tf_keras.src.saving.legacy import hdf5_format

    rng = np.random.default_rng(1)
    stored = _cudnn_weights(cls, rng)
    if cls == "CuDNNGRU":
        target = tf_keras.layers.GRU(UNITS, reset_after=True, recurrent_activation="sigmoid")
    else:
        target = tf_keras.layers.LSTM(UNITS, recurrent_activation="sigmoid")
    expected = hdf5_format.preprocess_weights_for_loading(target, [w.copy() for w in stored])
    ours = cudnn.from_cudnn(cls, *stored)
    for a, b in zip(ours, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    back = cudnn.to_cudnn(cls, *ours)
    np.testing.assert_array_equal(back[0], stored[0])
    np.testing.assert_array_equal(back[1], stored[1])
    if cls == "CuDNNGRU":
        np.testing.assert_array_equal(back[2], stored[2])
    else:  # the two LSTM biases come back as equal halves of their sum: the same network
        np.testing.assert_allclose(cudnn.from_cudnn(cls, *back)[2], ours[2], rtol=1e-6)


# ---------------------------------------------------------------- a CuDNN file, end to end

_PLAIN_ONLY = ("activation", "recurrent_activation", "use_bias", "dropout", "recurrent_dropout", "reset_after")
_PLAIN_ONLY += ("implementation", "unroll", "seed")


def _as_cudnn(node) -> None:
    """Rename GRU/LSTM configs to the CuDNN classes, with the arguments Keras 2.2.4-tf wrote for them
    (no activations, `dtype` in initializer configs)."""
    if isinstance(node, dict):
        if node.get("class_name") in ("GRU", "LSTM"):
            node["class_name"] = "Cu" + "DNN" + node["class_name"]
            cfg = node["config"]
            for key in _PLAIN_ONLY:
                cfg.pop(key, None)
            cfg["time_major"] = False
            for key, value in cfg.items():
                if key.endswith("_initializer") and isinstance(value, dict):
                    value.setdefault("config", {})["dtype"] = "float32"
        for value in node.values():
            _as_cudnn(value)
    elif isinstance(node, list):
        for value in node:
            _as_cudnn(value)


def _cudnn_target(cls_name: str):
    from tf_keras.src.layers.rnn.cudnn_gru import CuDNNGRU
    from tf_keras.src.layers.rnn.cudnn_lstm import CuDNNLSTM

    return (CuDNNGRU if cls_name == "GRU" else CuDNNLSTM)(UNITS)


def write_cudnn_h5(path: Path, time_major: bool = False):
    """A Keras-2 file of medaka's shape, written by tf_keras with plain layers and then rewritten as
    the CuDNN layers wrote it: CuDNN class names in the config, weights in the CuDNN layout (tf_keras'
    own conversion, so the file does not depend on prunecli's). Returns (x, the plain model's output)."""
    import h5py
    import tf_keras
    from tf_keras.src.saving.legacy import hdf5_format

    tf_keras.utils.set_random_seed(3)
    L = tf_keras.layers
    model = tf_keras.Sequential(
        [
            L.Bidirectional(
                L.GRU(UNITS, reset_after=True, recurrent_activation="sigmoid", return_sequences=True, name="gru1"),
                input_shape=(STEPS, IN_DIM),
                name="bidirectional",
            ),
            L.LSTM(UNITS, recurrent_activation="sigmoid", return_sequences=True, name="lstm1"),
            L.Dense(4, activation="softmax", name="classify"),
        ]
    )
    for layer in model.layers:  # non-zero biases, so a mishandled bias shows
        layer.set_weights(
            [w + np.float32(0.3) * np.random.default_rng(7).normal(size=w.shape) for w in layer.get_weights()]
        )
    x = np.random.default_rng(4).normal(size=(8, STEPS, IN_DIM)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    model.save(path)
    with h5py.File(path, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        _as_cudnn(config)
        if time_major:
            (lstm,) = [n for n in config["config"]["layers"] if n["class_name"] == "CuDNNLSTM"]
            lstm["config"]["time_major"] = True
        f.attrs["model_config"] = json.dumps(config)
        group = f["model_weights"]
        for layer_name, cls_name, count in (("bidirectional", "GRU", 2), ("lstm1", "LSTM", 1)):
            g = group[layer_name]
            names = [n.decode() if isinstance(n, bytes) else n for n in g.attrs["weight_names"]]
            for k in range(count):
                trio = names[3 * k : 3 * k + 3]
                values = hdf5_format.preprocess_weights_for_loading(_cudnn_target(cls_name), [g[n][()] for n in trio])
                for n, v in zip(trio, values, strict=True):
                    del g[n]
                    g.create_dataset(n, data=v)
    return x, expected


@pytest.fixture(scope="module")
def cudnn_h5(tmp_path_factory):
    path = tmp_path_factory.mktemp("cudnn") / "basecaller.h5"
    x, expected = write_cudnn_h5(path)
    np.savez(path.with_suffix(".npz"), x=x, y=expected.argmax(-1))
    return path, x, expected


@pytest.mark.slow
def test_cudnn_file_loads_as_the_same_network(cudnn_h5):
    path, x, expected = cudnn_h5
    info = model_io.inspect_file(path)
    assert [cls for _, cls in cudnn.cudnn_layers(info.config)] == ["CuDNNGRU", "CuDNNLSTM"]
    model, info = model_io.load(path)
    assert [type(layer).__name__ for layer in model.layers] == ["Bidirectional", "LSTM", "Dense"]
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-5)
    (note,) = model_io.read_notes(info)
    assert "gru1" in note and "CuDNNGRU as GRU(reset_after=True" in note and "CuDNNLSTM as LSTM" in note


@pytest.mark.slow
def test_inspect_says_how_cudnn_layers_were_read(cli, cudnn_h5):
    path, _, _ = cudnn_h5
    result = cli("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    notes = json.loads(result.stdout)["model"]["notes"]
    assert len(notes) == 1 and "CuDNNGRU" in notes[0]
    table = cli("inspect", path)
    assert "read CuDNNGRU as GRU" in " ".join(table.stdout.split())


@pytest.mark.slow
def test_cudnn_file_prunes_and_runs_on_cpu(cli, cudnn_h5, tmp_path):
    import keras

    path, x, expected = cudnn_h5
    out, report = tmp_path / "out.keras", tmp_path / "report.json"
    result = cli("prune", path, "-s", "0.5", "-o", out, "--report", report, "-q")
    assert result.exit_code == 0, result.output
    assert any("CuDNNGRU" in n for n in json.loads(report.read_text())["notes"])
    pruned = keras.saving.load_model(out)
    got = pruned.predict(x, verbose=0)
    assert got.shape == expected.shape and np.isfinite(got).all()
    kernel = pruned.layers[0].forward_layer.cell.kernel.numpy()
    assert 0.3 < 1 - np.count_nonzero(kernel) / kernel.size < 0.7


@pytest.mark.slow
def test_pruned_h5_keeps_the_cudnn_layout(cli, cudnn_h5, tmp_path):
    """.h5 -> .h5 writes the pruned weights back in the file's CuDNN layout: the file still names
    CuDNN layers (as the input did), and reading it again gives the pruned network exactly."""
    import h5py

    path, x, _ = cudnn_h5
    as_keras, as_h5 = tmp_path / "p.keras", tmp_path / "p.h5"
    for out in (as_keras, as_h5):
        result = cli("prune", path, "-s", "0.5", "--scope", "layer", "-o", out, "-q")
        assert result.exit_code == 0, result.output
    with h5py.File(as_h5, "r") as f:
        assert "CuDNNGRU" in f.attrs["model_config"]
        assert f["model_weights/bidirectional"][f["model_weights/bidirectional"].attrs["weight_names"][2]].shape == (
            6 * UNITS,
        )
    reference, _ = model_io.load(as_keras)
    reread, _ = model_io.load(as_h5)
    np.testing.assert_allclose(reread.predict(x, verbose=0), reference.predict(x, verbose=0), atol=1e-6)


@pytest.mark.slow
def test_calibrated_methods_on_a_cudnn_file(cli, cudnn_h5, tmp_path):
    path, _, _ = cudnn_h5
    data = path.with_suffix(".npz")
    for method in ("wanda", "sparsegpt"):
        result = cli("prune", path, "-s", "0.5", "--method", method, "--data", data, "-o", tmp_path / f"{method}.keras")
        assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_time_major_cudnn_layer_is_refused_by_name(cli, tmp_path):
    path = tmp_path / "tm.h5"
    write_cudnn_h5(path, time_major=True)
    with pytest.raises(ModelLoadError, match="time_major"):
        model_io.load(path)
    result = cli("prune", path, "-s", "0.5", "-o", tmp_path / "o.keras", "-q")
    assert result.exit_code == 3
    (line,) = result.stderr.strip().splitlines()
    assert "CuDNNLSTM layer lstm1 is time_major" in line


def test_unknown_cudnn_option_is_refused(tmp_path):
    config = {"class_name": "Sequential", "config": {"layers": [{"class_name": "CuDNNGRU", "config": {"units": 4}}]}}
    config["config"]["layers"][0]["config"]["frobnicate"] = 1
    with pytest.raises(ModelLoadError, match="frobnicate"):
        cudnn.translate_config(config, "m.h5")
    nested = {
        "class_name": "Functional",
        "config": {"layers": [{"class_name": "Functional", "config": config["config"]}]},
    }
    with pytest.raises(ModelLoadError, match="nested|inside"):
        cudnn.cudnn_weights(nested, "m.h5")
