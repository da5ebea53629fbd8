"""Layer classes whose convolutions and Dense layers sit inside them (structure/rebuild.traceable): a
KerasHub block whose call only calls its sub-layers and Keras ops is opened as the graph its call records,
so its layers can be shrunk and quantized; the blocks whose graph would not compute what they do, and the
user's own classes, stay whole. And the note a user gets whenever the written model's class is not the
loaded one (run/steps.class_change)."""

from __future__ import annotations

import numpy as np
import pytest

kh = pytest.importorskip("keras_hub")


def _functional(block, shape):
    import keras

    x = keras.Input(shape)
    y = block(x)
    return keras.Model(x, keras.layers.GlobalAveragePooling2D()(y) if len(shape) == 3 else y)


def _tiny_mobilenet():
    return kh.models.MobileNetBackbone(
        stackwise_expansion=[[16]],
        stackwise_num_blocks=[1],
        stackwise_num_filters=[[8]],
        stackwise_kernel_size=[[3]],
        stackwise_num_strides=[[1]],
        stackwise_se_ratio=[[0.5]],
        stackwise_activation=[["relu"]],
        stackwise_padding=[[1]],
        output_num_filters=16,
        depthwise_filters=8,
        depthwise_stride=1,
        depthwise_residual=False,
        last_layer_filter=16,
        input_num_filters=8,
        image_shape=(8, 8, 3),
    )


def test_a_keras_hub_models_blocks_of_convolutions_are_opened_into_keras_layers_that_compute_the_same(tmp_path):
    """MobileNet's blocks (1x1, depthwise and 1x1 convolutions, a squeeze-and-excite block inside, its
    `keras.ops.mean` and product) rename themselves when rebuilt from their configs: opening the backbone
    opens them too, each of their layers one of the model's; the output is the same and the file
    reloads without KerasHub's classes in it."""
    import keras

    from prunecli.structure import keras_graph, rebuild

    keras.utils.set_random_seed(0)
    backbone = _tiny_mobilenet()
    blocks = [layer for layer in backbone.layers if not rebuild.keras_own(layer)]
    assert blocks and all(rebuild.traceable(block) for block in blocks)
    renamed = [block.name for block in blocks if type(block).__name__ == "DepthwiseConvBlock"]
    assert rebuild.opened(backbone, lambda nested: False)[1] == renamed  # renamed when rebuilt: opened anyway
    flat, opened, paths = rebuild.opened(backbone, lambda nested: True)
    assert opened == [block.name for block in blocks]
    inner = keras_graph.all_layers(flat)[1:]
    assert all(rebuild.keras_own(layer) for layer in inner)
    assert paths["block_1_0_conv1"] == "block_1_0/block_1_0_conv1"
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(flat(x)), np.asarray(backbone(x)), rtol=1e-5, atol=1e-6)
    flat.save(tmp_path / "flat.keras")
    assert b"keras_hub" not in (tmp_path / "flat.keras").read_bytes()
    again = keras.saving.load_model(tmp_path / "flat.keras")
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(backbone(x)), rtol=1e-5, atol=1e-6)


def test_a_keras_hub_block_the_user_called_in_a_plain_model_stays_one_call():
    """A KerasHub layer in the user's own functional model (a TransformerEncoder, here MobileNet's
    InvertedResidualBlock) is one call that -g layer takes out whole: only a KerasHub model's blocks open."""
    from keras_hub.src.models.mobilenet.mobilenet_backbone import InvertedResidualBlock

    from prunecli.structure import rebuild

    block = InvertedResidualBlock(
        expansion=2, infilters=4, filters=4, kernel_size=3, stride=1, squeeze_excite_ratio=0.5, activation="relu",
        padding=1, name="irb",
    )  # fmt: skip
    model = _functional(block, (8, 8, 4))
    assert rebuild.traceable(block)
    assert rebuild.opened(model, lambda nested: True) is None


def test_blocks_whose_recorded_graph_would_not_compute_what_they_do_are_not_traced():
    """MiT's DropPath drops paths in training only (its graph would keep one branch); MiT's attention reads
    its input's batch size into a reshape (the graph holds None there and fails on real inputs); a user's
    own layer class may compute anything around its sub-layers. None is opened."""
    import keras
    from keras_hub.src.models.mit.mit_layers import DropPath, SegFormerMultiheadAttention

    from prunecli.structure import rebuild

    class UserBlock(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(4, 3, padding="same")

        def call(self, x):
            return self.conv(x)

    drop, attention, user = DropPath(0.5), SegFormerMultiheadAttention(8, 1, 1), UserBlock()
    _functional(drop, (8, 8, 4))
    _functional(attention, (16, 8))
    _functional(user, (8, 8, 4))
    assert not rebuild.traceable(drop)
    assert not rebuild.traceable(attention)
    assert not rebuild.traceable(user)
    assert rebuild.traceable(DropPath(0.0)) is False  # never called: no call to trace


def test_int8_leaves_the_convolutions_of_a_users_layer_class_float_with_the_reason():
    """The user's class's config rebuilds its convolutions as float ones, so they stay float (its file
    would not reload), and the reason says whose class it is."""
    import keras

    from prunecli.training.fake_quant import float_by_owner

    class UserBlock(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(4, 3, padding="same")

        def call(self, x):
            return self.conv(x)

    block = UserBlock()
    model = _functional(block, (8, 8, 4))
    assert "UserBlock, a layer class of your own" in float_by_owner(model)[id(block.conv)]


def test_the_written_model_of_another_class_than_the_loaded_one_is_said():
    """Whichever step rebuilt it (surgery cloned a MobileNet task into a plain functional model with exit 0
    and no word of it), a written model of another class than the file's gets the note."""
    import keras

    from prunecli.config import PruneConfig
    from prunecli.run.state import RunState
    from prunecli.run.steps import class_change

    x = keras.Input((3,))
    plain = keras.Model(x, keras.layers.Dense(2)(x))
    config = PruneConfig(model_path="m.keras")
    same = RunState(config=config, model=plain, source=None, loaded_class="Functional")
    assert class_change(same).notes == ()
    other = RunState(config=config, model=plain, source=None, loaded_class="MobileNetImageClassifier")
    (note,) = class_change(other).notes
    assert note.startswith("MobileNetImageClassifier is written as a plain Keras functional model")


def test_a_convolution_with_one_group_per_channel_becomes_the_depthwise_one_it_is():
    """MobileNet's blocks build their depthwise convolutions as Conv2D(groups=channels), which the channel
    graph reads as a mixer it cannot slice: the expansion before it and the projection after it were left
    whole. Replaced by the DepthwiseConv2D computing the same, under the same name."""
    import keras

    from prunecli.structure import rebuild

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 4))
    h = keras.layers.Conv2D(6, 1, name="expand")(x)
    h = keras.layers.Conv2D(6, 3, groups=6, padding="same", name="depthwise")(h)
    h = keras.layers.Conv2D(6, 3, groups=3, padding="same", name="grouped")(h)  # two channels a group: kept
    model = keras.Model(x, keras.layers.Conv2D(4, 1, name="project")(h))
    new, names = rebuild.depthwise_twins(model)
    assert names == ["depthwise"]
    twin = new.get_layer("depthwise")
    assert type(twin).__name__ == "DepthwiseConv2D" and tuple(twin.kernel.shape) == (3, 3, 6, 1)
    assert type(new.get_layer("grouped")).__name__ == "Conv2D"
    inputs = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype("float32")
    np.testing.assert_allclose(np.asarray(new(inputs)), np.asarray(model(inputs)), rtol=1e-5, atol=1e-5)
    assert rebuild.depthwise_twins(model, wanted={"expand"}) is None


@pytest.mark.slow
def test_shrinking_cuts_the_channels_through_a_convolution_with_one_group_per_channel(cli, tmp_path):
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(8, 1, activation="relu", name="expand")(x)
    h = keras.layers.Conv2D(8, 3, groups=8, padding="same", name="depthwise")(h)
    h = keras.layers.Conv2D(8, 1, name="project")(h)
    model = keras.Model(x, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))
    model.save(tmp_path / "m.keras")
    out = tmp_path / "o.keras"
    result = cli("prune", tmp_path / "m.keras", "-g", "neuron", "-s", "0.5", "--shrink", "-o", out)
    assert result.exit_code == 0, result.output
    assert "one group per channel written as the DepthwiseConv" in " ".join(result.output.split())
    small = keras.saving.load_model(out)
    assert small.get_layer("expand").filters == 4 and small.get_layer("depthwise").kernel.shape[-2] == 4
