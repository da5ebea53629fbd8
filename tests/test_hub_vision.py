"""KerasHub image classifiers as users load them (`<Family>ImageClassifier.from_preset`, here built tiny
from a backbone config): a task wrapping a backbone, both KerasHub subclasses of Keras' functional class
(bench/VISION.md, bench/vision_families.py).

- A task and backbone whose computation is their graph (ResNet, VGG, CSPNet, DenseNet...) are opened into
  one graph (structure/rebuild.graph_only): --shrink and --target cut the backbone's channels, -g layer
  takes its blocks out, and --quantize int8 quantizes its convolutions; each wrote nothing smaller or
  refused before (the backbone was one node of the graph; its int8 file did not reload, exit 4).
- One holding a KerasHub layer that does not rebuild from its own config (MobileNet's DepthwiseConvBlock
  renames itself, ViT's patch embedding writes arguments it refuses) is left whole: opened, it was an
  internal error or a file that did not load.
- Quantized layers that a KerasHub config would rebuild float (every convolution left inside a backbone or
  block, a task's own head) stay float, with the reason: the int8 file did not reload (exit 4)."""

from __future__ import annotations

import numpy as np
import pytest

kh = pytest.importorskip("keras_hub")
pytestmark = pytest.mark.slow  # builds and saves KerasHub models and runs the CLI on them

SIZE, CLASSES = 16, 3


def _save(folder, name, backbone):
    import keras

    model = getattr(kh.models, f"{name}ImageClassifier")(backbone=backbone, num_classes=CLASSES, preprocessor=None)
    x = np.random.default_rng(0).uniform(0, 1, (24, SIZE, SIZE, 3)).astype("float32")
    model(x[:2])
    model.save(folder / f"{name}.keras")
    keras.utils.set_random_seed(0)
    return model


@pytest.fixture(scope="module")
def hub_images(tmp_path_factory):
    import keras

    folder = tmp_path_factory.mktemp("hub_vision")
    keras.utils.set_random_seed(0)
    shape = (SIZE, SIZE, 3)
    _save(
        folder,
        "ResNet",
        kh.models.ResNetBackbone(
            input_conv_filters=[8],
            input_conv_kernel_sizes=[3],
            stackwise_num_filters=[64, 8],
            stackwise_num_blocks=[1, 1],
            stackwise_num_strides=[1, 2],
            block_type="bottleneck_block",
            image_shape=shape,
        ),
    )
    _save(
        folder,
        "MobileNet",
        kh.models.MobileNetBackbone(
            stackwise_expansion=[[16]],
            stackwise_num_blocks=[1],
            stackwise_num_filters=[[8]],
            stackwise_kernel_size=[[3]],
            stackwise_num_strides=[[1]],
            stackwise_se_ratio=[[None]],
            stackwise_activation=[["relu"]],
            stackwise_padding=[[1]],
            output_num_filters=16,
            depthwise_filters=8,
            depthwise_stride=1,
            depthwise_residual=False,
            last_layer_filter=16,
            input_num_filters=8,
            image_shape=shape,
        ),
    )
    _save(
        folder,
        "ViT",
        kh.models.ViTBackbone(image_shape=shape, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16),
    )
    _save(
        folder,
        "HGNetV2",
        kh.models.HGNetV2Backbone(
            depths=[1],
            embedding_size=8,
            hidden_sizes=[16],
            stem_channels=[3, 8, 8],
            hidden_act="relu",
            use_learnable_affine_block=False,
            stackwise_stage_filters=[(8, 8, 16, 1, 1, 3)],
            apply_downsample=[False],
            use_lightweight_conv_block=[False],
            image_shape=shape,
        ),
    )
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (24, SIZE, SIZE, 3)).astype("float32")
    np.savez(folder / "images.npz", x=x, y=rng.integers(0, CLASSES, 24))
    return folder


def _load(path):
    import keras

    import prunecli.structure.quantized_conv  # noqa: F401 - registers prunecli's quantized convolutions

    return keras.saving.load_model(path, compile=False)


def _runs_on_images(model, folder):
    x = np.load(folder / "images.npz")["x"][:2]
    y = np.asarray(model(x))
    assert y.shape == (2, CLASSES) and np.all(np.isfinite(y))


def test_graph_only_takes_a_keras_hub_image_model_and_not_one_whose_layers_do_not_rebuild(hub_images):
    import keras

    from prunecli.structure import rebuild

    resnet = keras.saving.load_model(hub_images / "ResNet.keras", compile=False)
    assert not rebuild.plain_model(resnet) and rebuild.graph_only(resnet) and rebuild.graph_only(resnet.backbone)
    # MobileNet's DepthwiseConvBlock renames itself, ViTPatchingAndEmbedding refuses its own config, and
    # HGNetV2's backbone holds its weights in its own layer classes only (opened, nothing was reached, and
    # the output lost its class for nothing)
    for name in ("MobileNet", "ViT", "HGNetV2"):
        model = keras.saving.load_model(hub_images / f"{name}.keras", compile=False)
        assert not rebuild.graph_only(model.backbone), name
        assert rebuild.opened(model, lambda nested: True) is None, name


@pytest.mark.parametrize(
    "extra", [["-g", "neuron", "-s", "0.5", "--shrink"], ["--target", "params=0.7"], ["-g", "layer", "-s", "0.5"]]
)
def test_structural_pruning_reaches_a_keras_hub_image_classifiers_backbone(cli, hub_images, tmp_path, extra):
    """Was: --shrink exit 0 with nothing removed, --target exit 2 (the backbone 'left whole'), -g layer exit 3."""
    import keras

    base = keras.saving.load_model(hub_images / "ResNet.keras", compile=False)
    out = tmp_path / "o.keras"
    result = cli("prune", hub_images / "ResNet.keras", *extra, "--data", hub_images / "images.npz", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    small = _load(out)
    assert small.count_params() < base.count_params()
    _runs_on_images(small, hub_images)


def test_int8_quantizes_an_opened_keras_hub_image_classifier_and_it_reloads(cli, hub_images, tmp_path):
    """Was exit 4: the backbone's config rebuilt its convolutions as float Conv2D, which refused the codes."""
    out = tmp_path / "o.keras"
    result = cli("prune", hub_images / "ResNet.keras", "-s", "0.5", "--quantize", "int8", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    model = _load(out)
    assert any(getattr(layer, "quantization_mode", None) == "int8" for layer in model.layers if "conv" in layer.name)
    _runs_on_images(model, hub_images)


def test_layers_a_keras_hub_config_rebuilds_float_stay_float_and_the_file_reloads(cli, hub_images, tmp_path):
    """ViT (not opened): its patch convolution and the task's head stay float, its attention and MLP Dense
    layers are quantized (the backbone records them), the file reloads (was exit 4)."""
    out = tmp_path / "o.keras"
    report = tmp_path / "r.json"
    result = cli("prune", hub_images / "ViT.keras", "-s", "0.5", "--quantize", "int8", "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    import json

    left = {e["layer"]: e["why"] for e in json.loads(report.read_text())["quantize"]["left_float"]}
    assert "predictions" in left and "would not reload" in left["predictions"]
    assert any("patch_embedding" in name for name in left)
    _runs_on_images(_load(out), hub_images)


def test_a_keras_hub_model_with_nothing_quantizable_that_reloads_is_refused_in_one_line(cli, hub_images, tmp_path):
    """MobileNet: every convolution sits in a KerasHub block or backbone that rebuilds it float, and the
    head is the task's: a one-line refusal before any work (was exit 4 after the whole run)."""
    result = cli("prune", hub_images / "MobileNet.keras", "-s", "0.5", "--quantize", "int8", "-o", tmp_path / "o.keras")
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("prunecli: error:")]
    assert len(errors) == 1 and "would not reload" in errors[0]
    assert not (tmp_path / "o.keras").exists()


def test_shrinking_a_mobilenet_is_not_an_internal_error(cli, hub_images, tmp_path):
    out = tmp_path / "o.keras"
    result = cli(
        "prune", hub_images / "MobileNet.keras", "-g", "neuron", "-s", "0.5", "--shrink",
        "--data", hub_images / "images.npz", "-o", out, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _runs_on_images(_load(out), hub_images)


def test_a_head_count_per_stage_is_not_an_attention_layer():
    """KerasHub's Swin and MiT backbones and Swin's stages hold `num_heads` as one count per stage (a
    list): reading it as one attention layer's heads made inspect, plan and -g neuron internal errors."""
    import keras

    from prunecli.structure import keras_graph

    class Stage(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.num_heads = [2, 4]

    class Attention(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.num_heads = np.int64(2)

    assert keras_graph.grouped_head_counts(Stage()) is None
    assert keras_graph.grouped_head_counts(Attention()) == (2, 2)


def test_the_dense_copy_of_a_keras_hub_mobilenet_pairs_with_it_layer_by_layer(hub_images):
    """clone_model copied a MobileNet task's weights but not its layer tree (its blocks rename themselves
    when rebuilt from their configs): --target's channel refit, which pairs the dense copy with the pruned
    model layer by layer, was an internal error. The copy is now made from the task's config."""
    import keras

    from prunecli.calibration.channel_refit import _paired_layers
    from prunecli.training.distill import teacher_copy

    model = keras.saving.load_model(hub_images / "MobileNet.keras", compile=False)
    copy = teacher_copy(model)
    assert _paired_layers(model, copy)  # raised "not a copy of the pruned model"
    x = np.load(hub_images / "images.npz")["x"][:2]
    np.testing.assert_allclose(np.asarray(copy(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
