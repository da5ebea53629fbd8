"""Input-feature pruning: informative features survive, removal is exact, data and names follow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunecli import build_config, prune
from prunecli.errors import ConfigError, InputError

INFORMATIVE = (0, 3, 7)
N_FEATURES = 12


def make_noisy(n: int = 900, seed: int = 0):
    """Labels depend on features 0, 3 and 7 only; the other nine are pure noise."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, N_FEATURES)).astype("float32")
    y = np.argmax(x[:, list(INFORMATIVE)], axis=1).astype("int32")
    return x, y


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("noisy")
    x, y = make_noisy()
    keras.utils.set_random_seed(1)
    inp = keras.Input((N_FEATURES,), name="features")
    h = keras.layers.Dense(24, activation="relu", name="hidden")(inp)
    out = keras.layers.Dense(3, activation="softmax", name="out")(h)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x[:700], y[:700], epochs=40, batch_size=64, verbose=0)
    model.save(d / "tab.keras")
    names = np.array([f"f{i}" for i in range(N_FEATURES)])
    np.savez(d / "tab.npz", x_train=x[:700], y_train=y[:700], x_test=x[700:], y_test=y[700:], feature_names=names)
    return {"model": d / "tab.keras", "data": d / "tab.npz", "dir": d, "x": x[700:], "y": y[700:]}


def _run(noisy, **options):
    settings = {"model_path": str(noisy["model"]), "granularity": "input", "data": str(noisy["data"]), "force": True}
    settings.update(options)
    return prune(build_config(settings))


@pytest.mark.slow
def test_permutation_keeps_informative_features_and_shrunk_model_keeps_accuracy(noisy):
    """The brief's acceptance test: 50% of the features go, all informative ones stay, and the smaller
    model (fine-tuned 3 epochs by the pipeline's own fine-tuning) is within 1 point of the original."""
    import keras

    out = noisy["dir"] / "perm.keras"
    result = _run(noisy, feature_score="permutation", sparsity=0.5, shrink=True, epochs=3, output=str(out))
    report = result.report.to_dict()
    kept = report["kept_features"]["features"]
    assert len(kept) == N_FEATURES // 2 and kept == sorted(kept)
    assert set(INFORMATIVE) <= set(kept)
    assert report["kept_feature_names"]["features"] == [f"f{i}" for i in kept]
    before = report["metrics"]["before"]["accuracy"]
    assert report["metrics"]["after_finetune"]["accuracy"] >= before - 0.01
    reloaded = keras.saving.load_model(out)
    assert tuple(reloaded.inputs[0].shape) == (None, len(kept))
    assert reloaded.get_layer("hidden").kernel.shape == (len(kept), 24)
    # the saved model reads the kept columns of the user's (unchanged) data
    pred = np.argmax(reloaded.predict(noisy["x"][:, kept], verbose=0), axis=1)
    assert np.mean(pred == noisy["y"]) >= before - 0.01
    assert report["flops"]["after"] < report["flops"]["before"]


@pytest.mark.slow
@pytest.mark.parametrize("score", ["gradient", "taylor", "l1"])
def test_other_scores_rank_informative_features_first(noisy, score):
    result = _run(noisy, feature_score=score, keep_features=3, output=str(noisy["dir"] / f"{score}.keras"))
    assert result.report.to_dict()["kept_features"]["features"] == list(INFORMATIVE)


@pytest.mark.slow
def test_method_maps_to_a_feature_score_and_random_is_seeded(noisy):
    r1 = _run(noisy, method="random", seed=3, keep_features=4, output=str(noisy["dir"] / "r1.keras")).report.to_dict()
    r2 = _run(noisy, method="random", seed=3, keep_features=4, output=str(noisy["dir"] / "r2.keras")).report.to_dict()
    r3 = _run(noisy, method="random", seed=4, keep_features=4, output=str(noisy["dir"] / "r3.keras")).report.to_dict()
    assert r1["feature_pruning"]["score"] == "random"
    assert r1["kept_features"] == r2["kept_features"] != r3["kept_features"]
    g = _run(noisy, method="gradient", keep_features=3, output=str(noisy["dir"] / "g.keras")).report.to_dict()
    assert g["feature_pruning"]["score"] == "gradient"


@pytest.mark.slow
def test_zeroing_and_shrinking_compute_the_same_function(noisy):
    masked = _run(noisy, keep_features=5, output=str(noisy["dir"] / "masked.keras"))
    shrunk = _run(noisy, keep_features=5, shrink=True, output=str(noisy["dir"] / "shrunk.keras"))
    kept = masked.report.to_dict()["kept_features"]["features"]
    assert kept == shrunk.report.to_dict()["kept_features"]["features"]
    kernel = np.asarray(masked.model.get_layer("hidden").kernel)
    removed = [f for f in range(N_FEATURES) if f not in kept]
    assert not kernel[removed].any() and kernel[kept].all()
    x = noisy["x"]
    np.testing.assert_allclose(masked.model(x), shrunk.model(x[:, kept]), atol=1e-6)
    # the zeroed rows are reported as the pruned part of the reading layer
    layer = masked.report.to_dict()["layers"][0]
    assert layer["name"] == "hidden/kernel" and layer["sparsity"] == pytest.approx(len(removed) / N_FEATURES)


@pytest.mark.slow
def test_excluded_features_stay_by_index_and_name(noisy, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"col{i}" for i in range(N_FEATURES)) + "\n")
    report = _run(
        noisy,
        keep_features=4,
        exclude_features=("5", "col9"),
        feature_names=str(names),
        output=str(noisy["dir"] / "ex.keras"),
    ).report.to_dict()
    kept = report["kept_features"]["features"]
    assert {5, 9} <= set(kept) and len(kept) == 4
    assert report["kept_feature_names"]["features"] == [f"col{i}" for i in kept]
    with pytest.raises(ConfigError, match="matches no feature"):
        _run(noisy, keep_features=4, exclude_features=("nope",), output=str(noisy["dir"] / "ex2.keras"))
    with pytest.raises(ConfigError, match="needs --data"):
        prune(
            build_config(
                {
                    "model_path": str(noisy["model"]),
                    "granularity": "input",
                    "feature_score": "taylor",
                    "output": str(noisy["dir"] / "ex3.keras"),
                }
            )
        )


def _image_model(seed: int = 0):
    """Two inputs: an image whose channels pass BatchNorm and pooling into a conv, and a vector
    concatenated with the flattened conv output: every tracing rule on the way to a reader."""
    import keras

    keras.utils.set_random_seed(seed)
    img = keras.Input((6, 6, 5), name="image")
    vec = keras.Input((4,), name="vector")
    h = keras.layers.BatchNormalization(name="bn")(img)
    h = keras.layers.MaxPooling2D(name="pool")(h)
    h = keras.layers.Conv2D(3, 2, name="conv")(h)
    h = keras.layers.Flatten(name="flat")(h)
    both = keras.layers.Concatenate(name="cat")([vec, h])
    out = keras.layers.Dense(2, name="out")(both)
    model = keras.Model([img, vec], out)
    bn = model.get_layer("bn")  # non-trivial statistics, so slicing them wrongly would show
    rng = np.random.default_rng(seed)
    for var in (bn.gamma, bn.beta, bn.moving_mean):
        var.assign(rng.standard_normal(5).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2, 5).astype("float32"))
    return model


def test_multi_input_channels_are_scored_per_input_and_shrunk_exactly(tmp_path):
    model = _image_model()
    path = tmp_path / "img.keras"
    model.save(path)
    result = prune(
        build_config(
            {
                "model_path": str(path),
                "granularity": "input",
                "sparsity": 0.4,
                "shrink": True,
                "output": str(tmp_path / "img.pruned.keras"),
            }
        )
    )
    kept = result.report.to_dict()["kept_features"]
    assert len(kept["image"]) == 3 and len(kept["vector"]) == 2  # round(0.4 * 5), round(0.4 * 4) removed
    rng = np.random.default_rng(1)
    img, vec = rng.standard_normal((8, 6, 6, 5)).astype("float32"), rng.standard_normal((8, 4)).astype("float32")
    got = result.model([img[..., kept["image"]], vec[:, kept["vector"]]])
    # the original model with the removed features' rows zeroed in the readers computes the same
    reference = _image_model()
    conv, dense = reference.get_layer("conv"), reference.get_layer("out")
    drop_img = [c for c in range(5) if c not in kept["image"]]
    drop_vec = [c for c in range(4) if c not in kept["vector"]]
    k = np.asarray(conv.kernel)
    k[:, :, drop_img, :] = 0
    conv.kernel.assign(k)
    w = np.asarray(dense.kernel)
    w[drop_vec] = 0
    dense.kernel.assign(w)
    np.testing.assert_allclose(got, reference([img, vec]), atol=1e-5)
    assert result.model.get_layer("bn").gamma.shape == (3,)


def test_untraceable_layer_is_refused_with_its_name(tmp_path):
    import keras

    inp = keras.Input((6,), name="x")
    h = keras.layers.LayerNormalization(name="norm")(inp)
    model = keras.Model(inp, keras.layers.Dense(2, name="out")(h))
    model.save(tmp_path / "ln.keras")
    with pytest.raises(InputError, match="norm"):
        prune(build_config({"model_path": str(tmp_path / "ln.keras"), "granularity": "input"}))


@pytest.mark.slow
def test_cli_reports_kept_features_and_flops(cli, noisy, tmp_path):
    report = tmp_path / "r.json"
    res = cli(
        "prune",
        noisy["model"],
        "-g",
        "input",
        "--keep-features",
        "6",
        "--data",
        noisy["data"],
        "--shrink",
        "--feature-score",
        "gradient",
        "-o",
        tmp_path / "o.keras",
        "-r",
        report,
        "--markdown",
        tmp_path / "r.md",
        "-q",
    )
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert set(INFORMATIVE) <= set(data["kept_features"]["features"])
    # the page says the 6 features' weights went (it read '0.0% sparse' and nothing of them)
    assert "Removed from the model: **144 of 387 parameters (37.2%); 243 remain**." in (tmp_path / "r.md").read_text()
    # verify measures the shrunk file on the run's own data, cut to the kept features as the run cut it
    checked = cli("verify", tmp_path / "o.keras", "--report", report, "--data", noisy["data"])
    assert checked.exit_code == 0 and "claims hold" in checked.output, checked.output
    assert data["flops"]["after"] == 6 * 24 + 24 * 3 and data["flops"]["before"] == 12 * 24 + 24 * 3
    bad = cli("prune", noisy["model"], "-g", "input", "--feature-score", "bogus")
    assert bad.exit_code == 2
