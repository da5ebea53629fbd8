"""KerasHub image classifiers as users load them (`<Family>ImageClassifier.from_preset`, here built tiny
from a backbone config): a task wrapping a backbone, both KerasHub subclasses of Keras' functional class
(bench/VISION.md, bench/vision_families.py).

- A task and backbone whose computation is their graph (ResNet, VGG, CSPNet, DenseNet...) are opened into
  one graph (structure/rebuild.graph_only): --shrink and --target cut the backbone's channels, -g layer
  takes its blocks out, and --quantize int8 quantizes its convolutions; each wrote nothing smaller or
  refused before (the backbone was one node of the graph; its int8 file did not reload, exit 4).
- A KerasHub block whose call only calls its sub-layers and Keras ops (MobileNet's DepthwiseConvBlock,
  HGNetV2's encoder: structure/rebuild.traceable) is opened too, as the graph its call records: MobileNet's
  blocks rename themselves when rebuilt and HGNetV2 holds every weight in its own layer classes, so both
  were left whole (int8 refused, --shrink cut only the layers outside the blocks).
- One holding a KerasHub layer that neither rebuilds from its own config nor traces (ViT's patch embedding
  writes arguments it refuses) is left whole: opened, it was an internal error or a file that did not load.
- Quantized layers that a KerasHub config would rebuild float (every convolution left inside a backbone or
  block, a task's own head, a Dense a block builds without the backbone's dtype policy) stay float, with
  the reason: the int8 file did not reload (exit 4)."""

from __future__ import annotations

import numpy as np
import pytest

kh = pytest.importorskip("keras_hub")
pytestmark = pytest.mark.slow  # builds and saves KerasHub models and runs the CLI on them

SIZE, CLASSES = 16, 3


SAVED_PARAMS: dict = {}  # each classifier hub_images saved: its parameter count, read without loading it again


def _save(folder, name, backbone):
    import keras

    model = getattr(kh.models, f"{name}ImageClassifier")(backbone=backbone, num_classes=CLASSES, preprocessor=None)
    x = np.random.default_rng(0).uniform(0, 1, (24, SIZE, SIZE, 3)).astype("float32")
    model(x[:2])
    model.save(folder / f"{name}.keras")
    SAVED_PARAMS[name] = model.count_params()
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

    for name in ("ResNet", "MobileNet", "HGNetV2"):  # MobileNet's and HGNetV2's blocks are traced open
        model = keras.saving.load_model(hub_images / f"{name}.keras", compile=False)
        assert not rebuild.plain_model(model) and rebuild.graph_only(model) and rebuild.graph_only(model.backbone)
    # ViTPatchingAndEmbedding refuses its own config and holds weights of its own (its class token)
    vit = keras.saving.load_model(hub_images / "ViT.keras", compile=False)
    assert not rebuild.graph_only(vit.backbone)
    assert rebuild.opened(vit, lambda nested: True) is None


@pytest.mark.parametrize("name", ["MobileNet", "HGNetV2"])
def test_a_keras_hub_model_with_its_blocks_traced_open_computes_the_same_and_reloads(hub_images, tmp_path, name):
    import keras

    from prunecli.structure import keras_graph, rebuild

    model = keras.saving.load_model(hub_images / f"{name}.keras", compile=False)
    flat, _opened, _paths = rebuild.opened(model, lambda nested: True)
    assert all(rebuild.keras_own(layer) for layer in keras_graph.all_layers(flat)[1:])  # every block opened
    x = np.load(hub_images / "images.npz")["x"][:4]
    np.testing.assert_allclose(np.asarray(flat(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)
    flat.save(tmp_path / "flat.keras")
    again = keras.saving.load_model(tmp_path / "flat.keras", compile=False)
    np.testing.assert_allclose(np.asarray(again(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "extra", [["-g", "neuron", "-s", "0.5", "--shrink"], ["--target", "params=0.7"], ["-g", "layer", "-s", "0.5"]]
)
def test_structural_pruning_reaches_a_keras_hub_image_classifiers_backbone(cli, hub_images, tmp_path, extra):
    """Was: --shrink exit 0 with nothing removed, --target exit 2 (the backbone 'left whole'), -g layer exit 3."""
    out = tmp_path / "o.keras"
    result = cli("prune", hub_images / "ResNet.keras", *extra, "--data", hub_images / "images.npz", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    small = _load(out)
    assert small.count_params() < SAVED_PARAMS["ResNet"]
    _runs_on_images(small, hub_images)


# ResNet opened as a graph-only model, MobileNet through its traced blocks (HGNetV2 takes the same path)
@pytest.mark.parametrize("name", ["ResNet", "MobileNet"])
def test_int8_quantizes_an_opened_keras_hub_image_classifier_and_it_reloads(cli, hub_images, tmp_path, name):
    """Was exit 4 (ResNet: the backbone's config rebuilt its convolutions as float Conv2D, which refused the
    codes), and exit 2 for MobileNet and HGNetV2 ("no layer of this model can be quantized": every
    convolution sat in a KerasHub block)."""
    out = tmp_path / "o.keras"
    result = cli("prune", hub_images / f"{name}.keras", "-s", "0.5", "--quantize", "int8", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    model = _load(out)
    assert sum(getattr(layer, "quantization_mode", None) == "int8" for layer in model.layers) >= 4
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


def test_dense_layers_a_keras_hub_block_builds_without_the_backbones_dtype_stay_float(cli, tmp_path):
    """MiT's attention builds its Dense layers with no dtype, so they do not read the DTypePolicyMap the
    backbone's config records quantized layers in: quantized, they reloaded float and the file was refused
    ("A total of 12 objects could not be loaded", exit 4). They stay float, with that reason; a Dense the
    backbone builds with its dtype is quantized and the file reloads."""
    import json

    import keras
    from keras_hub.src.models.mit.mit_layers import SegFormerMultiheadAttention

    @keras.saving.register_keras_serializable(package="prunecli_tests")
    class TinyAttentionBackbone(kh.models.Backbone):
        def __init__(self, dtype=None, **kwargs):
            tokens = keras.Input((16, 8))
            x = SegFormerMultiheadAttention(8, 1, 1)(tokens)  # KerasHub's: its q/k/v/proj Dense take no dtype
            x = keras.layers.Dense(4, dtype=dtype, name="kept")(x)
            super().__init__(inputs=tokens, outputs=x, dtype=dtype, **kwargs)

    keras.utils.set_random_seed(0)
    model = TinyAttentionBackbone()
    model(np.zeros((1, 16, 8), "float32"))
    model.save(tmp_path / "m.keras")
    out, report = tmp_path / "o.keras", tmp_path / "r.json"
    result = cli("prune", tmp_path / "m.keras", "-s", "0.5", "--quantize", "int8", "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    section = json.loads(report.read_text())["quantize"]
    assert [e["layer"].rsplit("/", 1)[-1] for e in section["layers_quantized"]] == ["kept"]
    float_dense = [e for e in section["left_float"] if "seg_former_multihead_attention" in e["layer"]]
    assert len(float_dense) == 4 and all(
        "without TinyAttentionBackbone's dtype policy" in e["why"] for e in float_dense
    )
    assert section["reload"]["loads"]


def test_shrinking_a_mobilenet_cuts_the_convolutions_inside_its_blocks_and_says_its_class_changed(
    cli, hub_images, tmp_path
):
    """Was: only the layers outside MobileNet's blocks shrank, and the output was a plain functional model
    with no note saying so."""
    out = tmp_path / "o.keras"
    result = cli(
        "prune", hub_images / "MobileNet.keras", "-g", "neuron", "-s", "0.5", "--shrink",
        "--data", hub_images / "images.npz", "-o", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "MobileNetImageClassifier is written as a plain Keras functional model" in " ".join(result.output.split())
    small = _load(out)
    assert small.get_layer("block_0_0_conv2").filters < 8  # a convolution inside a DepthwiseConvBlock
    _runs_on_images(small, hub_images)


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
