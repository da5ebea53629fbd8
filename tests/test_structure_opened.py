"""Nested models opened into one graph (structure/rebuild.opened), so --shrink and --target reach a
backbone inside a transfer-learning model (bench/ZOO.md: sklesion's nested Xception was left whole)."""

from __future__ import annotations

import json

import numpy as np
import pytest


def _backbone(name: str = "backbone", inner_head: str = "fc"):
    """A small conv backbone with BatchNorm and a residual Add; its last layer is named `inner_head`."""
    import keras

    x = keras.Input((10, 10, 3))
    h = keras.layers.Conv2D(12, 3, padding="same", name="conv")(x)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU(name="relu")(h)
    h2 = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.Add(name="add")([h, h2])
    h = keras.layers.Conv2D(16, 1, activation="relu", name=inner_head)(h)
    model = keras.Model(x, h, name=name)
    bn = model.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 1.5, 12), rng.normal(size=12), rng.normal(size=12), rng.uniform(0.5, 2.0, 12)])
    return model


def _transfer_model(training=False):
    """Keras' transfer-learning idiom: a backbone called with training=False under a new head; the
    head's Dense is named like a backbone layer (names are unique per graph, not across nesting)."""
    import keras

    keras.utils.set_random_seed(1)
    base = _backbone()
    x = keras.Input((10, 10, 3))
    y = base(x, training=training) if training is not None else base(x)
    y = keras.layers.GlobalAveragePooling2D(name="pool")(y)
    y = keras.layers.Dense(8, activation="relu", name="fc")(y)
    return keras.Model(x, keras.layers.Dense(3, activation="softmax", name="out")(y), name="transfer")


def _holds_weights(model) -> bool:
    from prunecli.structure import keras_graph, layers

    return any(layers.prunable_weights(layer) for layer in keras_graph.all_layers(model))


def test_opened_model_computes_the_same_with_the_same_weights_and_keeps_inference_mode():
    from prunecli.structure import keras_graph, rebuild

    model = _transfer_model(training=False)
    flat, names, paths = rebuild.opened(model, _holds_weights)
    assert names == ["backbone"]
    assert paths["backbone_fc"] == "backbone/fc" and paths["conv"] == "backbone/conv" and "pool" not in paths
    assert not any(keras_graph.is_model(layer) for layer in flat.layers)
    layer_names = [layer.name for layer in flat.layers]
    assert "backbone_fc" in layer_names and "fc" in layer_names  # the clash renamed, the outer kept
    assert flat.get_layer("conv") is model.get_layer("backbone").get_layer("conv")  # shared, not copied
    x = np.random.default_rng(2).random((4, 10, 10, 3), dtype=np.float32)
    # training=True: the backbone's BatchNorm still runs on its moving statistics, as in the original
    for training in (False, True):
        np.testing.assert_allclose(flat(x, training=training), model(x, training=training), atol=1e-6)
    assert flat.count_params() == model.count_params()


def test_opened_sequential_and_nested_sequential_and_a_backbone_called_twice():
    import keras

    from prunecli.structure import rebuild

    base = _backbone()
    seq = keras.Sequential(
        [keras.Input((10, 10, 3)), base, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)]
    )
    flat, names, _ = rebuild.opened(seq, _holds_weights)
    x = np.random.default_rng(3).random((2, 10, 10, 3), dtype=np.float32)
    np.testing.assert_allclose(flat(x), seq(x), atol=1e-6)

    inner = keras.Sequential([keras.layers.Dense(5), keras.layers.Dense(6)], name="inner_seq")
    a = keras.Input((7,))
    model = keras.Model(a, keras.layers.Dense(3)(inner(keras.layers.Dense(7)(a))))
    flat, names, _ = rebuild.opened(model, _holds_weights)
    assert names == ["inner_seq"] and len(flat.layers) == 5
    v = np.random.default_rng(4).random((2, 7), dtype=np.float32)
    np.testing.assert_allclose(flat(v), model(v), atol=1e-6)

    i1, i2 = keras.Input((10, 10, 3)), keras.Input((10, 10, 3))
    pool = keras.layers.GlobalAveragePooling2D()
    joined = keras.layers.Concatenate()([pool(base(i1)), pool(base(i2))])
    siamese = keras.Model([i1, i2], keras.layers.Dense(2)(joined))
    flat, names, _ = rebuild.opened(siamese, _holds_weights)
    assert names == ["backbone", "backbone"] and flat.count_params() == siamese.count_params()
    np.testing.assert_allclose(flat([x, x[::-1]]), siamese([x, x[::-1]]), atol=1e-6)


def test_nothing_to_open_and_models_with_a_meaning_of_their_own_are_left():
    import keras

    from prunecli.structure import rebuild

    a = keras.Input((4,))
    plain = keras.Model(a, keras.layers.Dense(2)(a))
    assert rebuild.opened(plain, _holds_weights) is None
    assert rebuild.opened(_transfer_model(), lambda nested: False) is None

    class Head(keras.Model):  # a subclass of the functional class: its class is part of what it means
        pass

    x = keras.Input((10, 10, 3))
    wrapped = Head(x, keras.layers.GlobalAveragePooling2D()(_backbone()(x)))
    assert rebuild.opened(wrapped, _holds_weights) is None


def test_layer_globs_name_the_same_layers_once_their_nested_model_is_opened():
    """A glob written for the file's paths (as `inspect` shows them) keeps naming the same layers."""
    from prunecli.config import build_config
    from prunecli.config.fields import name_matches

    paths = {"conv": "backbone/conv", "conv2": "backbone/conv2", "backbone_fc": "backbone/fc"}
    config = build_config(
        {"model_path": "m.keras", "include": ("backbone/conv*", "fc"), "exclude": ("*/conv2",)}, environ={}
    ).with_paths(paths)
    included = {n for n in ("conv", "conv2", "backbone_fc", "fc", "out") if name_matches(n, config.include)}
    assert included == {"conv", "conv2", "backbone_fc", "fc"}
    assert {n for n in ("conv", "conv2", "backbone_fc") if name_matches(n, config.exclude)} == {"conv2"}


@pytest.fixture(scope="module")
def transfer_files(tmp_path_factory):
    """The transfer model trained a little on seeded data, and a frozen-backbone twin."""
    d = tmp_path_factory.mktemp("transfer")
    rng = np.random.default_rng(0)
    x = rng.random((192, 10, 10, 3), dtype=np.float32)
    y = np.argmax(x[..., :3].mean(axis=(1, 2)), axis=1)
    model = _transfer_model(training=False)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    model.save(d / "transfer.keras")
    model.get_layer("backbone").trainable = False
    model.save(d / "frozen.keras")
    np.savez(d / "data.npz", x=x, y=y)
    return d


@pytest.mark.slow
def test_shrink_and_target_remove_a_nested_backbones_channels_and_a_plan_replays_them(transfer_files, tmp_path, cli):
    import keras

    d = transfer_files
    report, plan, out = tmp_path / "r.json", tmp_path / "plan.zip", tmp_path / "out.keras"
    args = ["--data", d / "data.npz", "-q"]
    result = cli(
        "prune", d / "transfer.keras", "--target", "params=0.5", "-o", out, "-r", report, "--save-plan", plan, *args
    )
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    assert r["opened"] == ["backbone"] and any("opened into the outer graph" in n for n in r["notes"])
    assert r["shrink"]["verification"]["max_rel_diff"] < 1e-4
    small = keras.saving.load_model(out)
    dense = keras.saving.load_model(d / "transfer.keras")
    assert 0.48 <= small.count_params() / dense.count_params() <= 0.5
    assert small.get_layer("conv").filters < 12 and small.get_layer("conv2").filters == small.get_layer("conv").filters

    # the plan (recorded before --shrink, on the opened model) replays onto the nested input file
    replayed = tmp_path / "replayed.keras"
    result = cli("apply", plan, d / "transfer.keras", "-o", replayed, "--shrink", "-q")
    assert result.exit_code == 0, result.output
    again = keras.saving.load_model(replayed)
    assert [w.shape for w in again.weights] == [w.shape for w in small.weights]
    assert cli("verify", replayed, "--plan", plan).exit_code == 0


@pytest.mark.slow
def test_a_frozen_backbone_is_not_opened_and_an_exclude_by_path_still_excludes(transfer_files, tmp_path, cli):
    def shrunk(model: str, *extra: str) -> dict:
        report = tmp_path / f"{model}.json"
        args = ["-g", "neuron", "-s", "0.5", "--shrink", "-o", tmp_path / f"{model}.out.keras", "-r", report]
        result = cli(
            "prune", transfer_files / f"{model}.keras", *args, "--data", transfer_files / "data.npz", "-q", *extra
        )
        assert result.exit_code == 0, result.output
        return json.loads(report.read_text())

    r = shrunk("frozen")
    assert "opened" not in r and any("frozen" in n for n in r["notes"])
    # an --exclude written with the file's path (as inspect shows it) still excludes once the backbone is opened
    r = shrunk("transfer", "--exclude", "backbone/conv")
    layers = r["shrink"]["layers"]  # conv's channels meet conv2's in the residual Add: both stay whole
    assert r["opened"] == ["backbone"] and "conv" not in layers and "conv2" not in layers
    assert layers["backbone_fc"]["after"] < layers["backbone_fc"]["before"]


def _sequence_tagger():
    """A Keras-2-style sequence tagger: token ids with padding (mask_zero), TimeDistributed Dense and
    Dropout around an LSTM, a TimeDistributed softmax per step; and a TimeDistributed BatchNorm, which
    normalises each step's batch in training and so stays wrapped."""
    import keras

    keras.utils.set_random_seed(3)
    ids = keras.Input((12,), name="ids")
    h = keras.layers.Embedding(30, 8, mask_zero=True, name="emb")(ids)
    h = keras.layers.TimeDistributed(keras.layers.Dense(16, activation="relu", name="proj"), name="td_proj")(h)
    h = keras.layers.TimeDistributed(keras.layers.Dropout(0.2), name="td_drop")(h)
    h = keras.layers.LSTM(10, return_sequences=True, name="lstm")(h)
    h = keras.layers.TimeDistributed(keras.layers.BatchNormalization(name="bn"), name="td_bn")(h)
    h = keras.layers.TimeDistributed(keras.layers.Dense(12, activation="relu", name="hidden"), name="td_hidden")(h)
    out = keras.layers.TimeDistributed(keras.layers.Dense(4, activation="softmax", name="tag"), name="td_tag")(h)
    return keras.Model(ids, out, name="tagger")


def test_a_time_distributed_dense_is_called_on_the_whole_sequence_and_computes_the_same():
    from prunecli.structure import rebuild

    model = _sequence_tagger()
    flat, names, paths = rebuild.opened(model, lambda wrapper: True)
    assert names == ["td_proj", "td_drop", "td_hidden", "td_tag"]  # td_bn keeps its wrapper
    assert paths["td_proj"] == "td_proj/proj" and paths["td_tag"] == "td_tag/tag"
    kinds = {layer.name: type(layer).__name__ for layer in flat.layers}  # the wrappers' names, so the output's too
    assert kinds["td_proj"] == "Dense" and kinds["td_bn"] == "TimeDistributed" and flat.output_names == ["td_tag"]
    ids = np.random.default_rng(0).integers(1, 30, size=(6, 12))
    ids[:, 8:] = 0  # padding: the mask reaches the LSTM through the unwrapped Dense as it did through the wrapper
    np.testing.assert_allclose(np.asarray(flat(ids)), np.asarray(model(ids)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_shrink_removes_units_of_time_distributed_dense_layers_and_a_plan_replays_them(tmp_path, cli):
    import keras

    model = _sequence_tagger()
    model.compile("adam", "sparse_categorical_crossentropy")
    path, out, report, plan = (tmp_path / n for n in ("tagger.keras", "out.keras", "r.json", "plan.zip"))
    model.save(path)
    result = cli("prune", path, "-g", "neuron", "-s", "0.5", "--shrink", "-o", out, "-r", report, "--save-plan", plan)
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    assert r["opened"] == ["td_proj", "td_drop", "td_hidden", "td_tag"]
    assert any(n.startswith("TimeDistributed td_proj") for n in r["notes"])
    assert r["shrink"]["verification"]["max_rel_diff"] < 1e-4
    small = keras.saving.load_model(out)
    assert small.get_layer("td_proj").units < 16 and small.get_layer("td_hidden").units < 12
    assert small.get_layer("lstm").units == 10  # read by the wrapped BatchNorm, which stays whole
    assert small.count_params() < 0.7 * model.count_params()
    replayed = tmp_path / "replayed.keras"
    result = cli("apply", plan, path, "-o", replayed, "--shrink", "-q")
    assert result.exit_code == 0, result.output
    assert [w.shape for w in keras.saving.load_model(replayed).weights] == [w.shape for w in small.weights]


def _frame_model():
    """Keras' video idiom, as vvadlrs3 (bench/ZOO.md) has it: a small CNN with BatchNorm and a residual
    Add run on each of 5 frames by TimeDistributed(Model), then an LSTM."""
    import keras

    keras.utils.set_random_seed(4)
    frame = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(12, 3, padding="same", name="conv")(frame)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Add()([h, keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="conv2")(h)])
    h = keras.layers.Flatten()(keras.layers.Conv2D(10, 3, strides=2, activation="relu", name="conv3")(h))
    cnn = keras.Model(frame, h, name="cnn")
    bn = cnn.get_layer("bn")
    rng = np.random.default_rng(0)
    bn.set_weights([rng.uniform(0.5, 1.5, 12), rng.normal(size=12), rng.normal(size=12), rng.uniform(0.5, 2.0, 12)])
    clips = keras.Input((5, 8, 8, 3))
    h = keras.layers.TimeDistributed(cnn, name="frames")(clips)
    h = keras.layers.LSTM(6, name="lstm")(h)
    return keras.Model(clips, keras.layers.Dense(2, activation="softmax", name="out")(h))


def test_a_model_run_on_every_frame_is_opened_with_its_frames_as_one_batch_and_wrapped_again():
    from prunecli.structure import flops, rebuild

    model = _frame_model()
    flat, names, paths = rebuild.opened(model, lambda wrapper: True)
    assert names == ["frames"] and paths["conv2"] == "frames/cnn/conv2"
    assert "conv" in {layer.name for layer in flat.layers}  # the CNN's layers are the outer graph's
    x = np.random.default_rng(1).standard_normal((3, 5, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(flat(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    # a multiply-add count reads each frame's convolutions once per frame, as the wrapper runs them
    assert flops.count(flat)["total"] == flops.count(model.get_layer("frames").layer)["total"] * 5 + sum(
        row["macs"] for row in flops.count(model)["layers"] if not row["layer"].startswith("frames")
    )
    again = rebuild.renested(flat)
    assert type(again.get_layer("frames")).__name__ == "TimeDistributed"
    assert again.get_layer("frames").layer.name == "cnn"
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_shrink_and_target_reach_the_layers_of_a_model_run_on_every_frame(suffix, tmp_path, cli):
    """vvadlrs3's MobileNet inside TimeDistributed held 89% of the parameters and was never reached:
    --target params=0.5 was refused and --shrink removed LSTM units only. Now the CNN's filters go, the
    output wraps the narrower CNN again (Keras' own classes: it loads without prunecli) and computes
    what the masked model computes."""
    import keras

    model = _frame_model()
    path = tmp_path / f"clips{suffix}"
    model.save(path)
    out, report = tmp_path / f"small{suffix}", tmp_path / "r.json"
    result = cli("prune", path, "-g", "neuron", "-s", "0.5", "--shrink", "-o", out, "-r", report, "-q")
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    assert r["opened"] == ["frames"] and r["shrink"]["verification"]["max_rel_diff"] < 1e-4  # = the masked model
    small = keras.saving.load_model(out)
    inner = small.get_layer("frames").layer
    assert type(small.get_layer("frames")).__name__ == "TimeDistributed"
    assert (
        inner.get_layer("conv").filters == inner.get_layer("conv2").filters == 6
        and inner.get_layer("conv3").filters == 5
    )
    assert small.count_params() == r["shrink"]["params_after"] < model.count_params()
    if suffix == ".h5":  # read and written above as the target run would; the search is the .keras case's
        return
    target = tmp_path / f"target{suffix}"
    result = cli("prune", path, "--target", "params=0.5", "-o", target, "-q")
    assert result.exit_code == 0, result.output
    assert keras.saving.load_model(target).count_params() <= 0.51 * model.count_params()


def _wrapped_layers_model():
    """The CNN-LSTM idiom with each layer wrapped: TimeDistributed(Conv2D), (BatchNormalization),
    (MaxPooling2D), (Conv2D), (Flatten), then an LSTM."""
    import keras

    keras.utils.set_random_seed(5)
    clips = keras.Input((4, 8, 8, 2))
    wrap = keras.layers.TimeDistributed
    h = wrap(keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1"), name="td_c1")(clips)
    h = wrap(keras.layers.BatchNormalization(name="bn"), name="td_bn")(h)
    h = wrap(keras.layers.MaxPooling2D(name="pool"), name="td_pool")(h)
    h = wrap(keras.layers.Conv2D(6, 3, activation="relu", name="c2"), name="td_c2")(h)
    h = wrap(keras.layers.Flatten(name="flat"), name="td_flat")(h)
    h = keras.layers.LSTM(5, name="lstm")(h)
    model = keras.Model(clips, keras.layers.Dense(3, activation="softmax", name="out")(h))
    bn = model.get_layer("td_bn").layer
    rng = np.random.default_rng(1)
    bn.set_weights([rng.uniform(0.5, 1.5, 8), rng.normal(size=8), rng.normal(size=8), rng.uniform(0.5, 2.0, 8)])
    return model


@pytest.mark.slow  # 2-6 s: the full suite (fast subset at its 120 s limit)
def test_wrapped_convolutions_pooling_and_batchnorm_shrink_and_keep_their_wrappers(tmp_path, cli):
    """A TimeDistributed(Conv2D) stayed wrapped, one call the channel graph could not slice: its filters
    and those of the layers around it stayed. Opened with the steps folded, they shrink; the output has
    the same wrappers around the same layer names, and computes the masked model's function."""
    import keras

    from prunecli.structure import rebuild

    model = _wrapped_layers_model()
    flat, names, _paths = rebuild.opened(model, lambda wrapper: True)
    assert names == ["td_c1", "td_bn", "td_pool", "td_c2", "td_flat"]
    x = np.random.default_rng(2).standard_normal((3, 4, 8, 8, 2)).astype("float32")
    np.testing.assert_allclose(np.asarray(flat(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    again = rebuild.renested(flat)
    assert [(layer.name, getattr(layer, "layer", layer).name) for layer in again.layers] == [
        (layer.name, getattr(layer, "layer", layer).name) for layer in model.layers
    ]
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)

    path, out, report = tmp_path / "clips.keras", tmp_path / "small.keras", tmp_path / "r.json"
    plan, replayed = tmp_path / "p.zip", tmp_path / "replayed.keras"
    model.save(path)
    result = cli("prune", path, "-g", "neuron", "-s", "0.5", "--shrink", "-o", out, "-r", report, "--save-plan", plan)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["shrink"]["verification"]["max_rel_diff"] < 1e-4
    small = keras.saving.load_model(out)
    assert small.get_layer("td_c1").layer.filters == 4 and small.get_layer("td_c2").layer.filters == 3
    assert small.get_layer("td_bn").layer.gamma.shape == (4,) and small.get_layer("td_c1").layer.name == "c1"
    # the report and plan name the layers as the run saw them, opened: verify opens the file as the run did
    result = cli("verify", out, "--plan", plan, "--report", report)
    assert result.exit_code == 0, result.output
    assert cli("apply", plan, path, "-o", replayed, "--shrink", "-q").exit_code == 0
    assert cli("verify", replayed, "--plan", plan).exit_code == 0


def test_one_layer_in_two_wrappers_stays_one_layer_when_wrapped_again():
    """Two TimeDistributed wrappers of one Conv2D (two camera streams through the same filters): opened
    they call one copy, and written again both wrappers hold one layer, not two with the same weights."""
    import keras

    from prunecli.structure import rebuild

    keras.utils.set_random_seed(0)
    a, b = keras.Input((3, 6, 6, 2)), keras.Input((3, 6, 6, 2))
    conv = keras.layers.Conv2D(4, 3, name="c")
    h = keras.layers.Add()(
        [keras.layers.TimeDistributed(conv, name="tda")(a), keras.layers.TimeDistributed(conv, name="tdb")(b)]
    )
    h = keras.layers.TimeDistributed(keras.layers.Flatten(), name="tf")(h)
    model = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.LSTM(3)(h)))
    flat, names, _ = rebuild.opened(model, lambda wrapper: True)
    again = rebuild.renested(flat)
    assert names == ["tda", "tdb", "tf"] and again.get_layer("tda").layer is again.get_layer("tdb").layer
    assert again.count_params() == model.count_params()
    x = [np.random.default_rng(1).random((2, 3, 6, 6, 2)).astype("float32")] * 2
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


def test_a_layer_inside_a_fold_counts_its_frames_as_rows():
    """What the channel refit's row thinning and a FLOPs count read: a conv inside an opened
    TimeDistributed(Model) sees 5 rows (frames) per example, the LSTM after it one."""
    from prunecli.structure import channels, folded_steps, rebuild

    flat, _names, _paths = rebuild.opened(_frame_model(), lambda wrapper: True)
    rows = folded_steps.rows_per_example(flat)
    calls = {call.name: call for call in channels.graph_of(flat).calls}
    assert rows[id(calls["conv2"].node.outputs[0])] == 5 and id(calls["lstm"].node.outputs[0]) not in rows
