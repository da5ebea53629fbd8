"""KerasHub text classifiers (BertTextClassifier...: a task around a backbone of TransformerEncoder blocks,
bench/text_families.py): `-g neuron` found no feed-forward units in them (exit 3), `-g head --shrink` only
masked their heads, and `--export tflite` ended in an internal error on their dict of inputs."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

SEQ = 8


@pytest.fixture(scope="module")
def classifier():
    keras.utils.set_random_seed(0)
    backbone = kh.models.BertBackbone(
        vocabulary_size=32, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=8, max_sequence_length=SEQ
    )
    model = kh.models.BertTextClassifier(backbone=backbone, num_classes=3, preprocessor=None)
    rng = np.random.default_rng(0)
    x = {
        "token_ids": rng.integers(1, 32, (4, SEQ)).astype("int32"),
        "segment_ids": np.zeros((4, SEQ), "int32"),
        "padding_mask": np.ones((4, SEQ), "int32"),
    }
    model(x)
    return model, x


@pytest.mark.slow  # builds a KerasHub BERT classifier and rebuilds it
def test_bert_classifier_opens_and_its_encoder_units_are_deleted(classifier):
    from prunecli.removal import ffn
    from prunecli.structure import decoders, rebuild, transformer

    model, x = classifier
    assert [f.path for f in ffn.find(model)] == ["bert_backbone/transformer_layer_0"]  # found inside the task
    flat, opened, _paths = rebuild.opened(model, lambda _nested: True)
    assert opened == ["bert_backbone"]
    np.testing.assert_allclose(np.asarray(flat(x)), np.asarray(model(x)), atol=1e-6)
    found = ffn.find(flat)
    assert [(f.path, f.units) for f in found] == [("transformer_layer_0", 8)]
    gone = [0, 2, 5]
    ffn.apply(found, {found[0].path: gone})
    masked = np.asarray(flat(x))
    kept = [u for u in range(8) if u not in gone]
    small = decoders.rebuild_with(flat, [(found[0].block, *transformer.smaller_encoder(found[0].block, kept))])
    assert flat.count_params() - small.count_params() == 3 * (8 + 1) + 3 * 8  # up column + bias, down row
    np.testing.assert_allclose(np.asarray(small(x)), masked, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def deberta():
    keras.utils.set_random_seed(0)
    backbone = kh.models.DebertaV3Backbone(
        vocabulary_size=32,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=8,
        max_sequence_length=SEQ,
        bucket_size=4,
    )
    model = kh.models.DebertaV3TextClassifier(backbone=backbone, num_classes=3, preprocessor=None)
    rng = np.random.default_rng(0)
    x = {"token_ids": rng.integers(1, 32, (4, SEQ)).astype("int32"), "padding_mask": np.ones((4, SEQ), "int32")}
    model(x)
    return model, x


@pytest.mark.slow  # 1.3 s: builds a KerasHub DeBERTaV3 classifier, opens, rebuilds and reloads it
def test_deberta_opens_with_its_relative_position_table_and_its_units_are_deleted(deberta, tmp_path):
    """Opened into the task's graph, DeBERTaV3's RelativeEmbedding (the table every block reads) was rebuilt
    from its shape without being called, so its LayerNormalization had no weights: the rebuild failed
    ("set_weights ... expecting 24 weights") and units were only masked. It is opened as prunecli's
    BuiltRelativeEmbedding, and the shrunk model saves and reloads."""
    from prunecli.removal import ffn
    from prunecli.structure import decoders, rebuild, transformer

    model, x = deberta
    flat, opened, _paths = rebuild.opened(model, lambda _nested: True)
    assert opened == ["deberta_v3_backbone"]
    assert type(flat.get_layer("rel_embedding")).__name__ == "BuiltRelativeEmbedding"
    found = ffn.find(flat)
    assert [(f.path, f.units) for f in found] == [("disentangled_attention_encoder_layer_0", 8)]
    assert ffn._closed_encoder(flat, found) is None  # a layer of the model's own graph: deleted, not refused
    ffn.apply(found, {found[0].path: [0, 2, 5]})
    masked = np.asarray(flat(x))
    small = decoders.rebuild_with(
        flat, [(found[0].block, *transformer.smaller_encoder(found[0].block, [1, 3, 4, 6, 7]))]
    )
    assert flat.count_params() - small.count_params() == 3 * (8 + 1) + 3 * 8
    np.testing.assert_allclose(np.asarray(small(x)), masked, rtol=1e-5, atol=1e-6)
    small.save(tmp_path / "small.keras")
    back = keras.saving.load_model(tmp_path / "small.keras", compile=False)
    np.testing.assert_allclose(np.asarray(back(x)), masked, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # 0.8 s: Keras' predict
def test_export_feeds_a_dict_input_model_its_dict():
    from prunecli.outputs import export

    inputs = {"a": keras.Input((3,), name="a"), "b": keras.Input((3,), name="b")}
    model = keras.Model(inputs, keras.layers.Add()([inputs["a"], inputs["b"]]))
    samples = [np.ones((2, 3), "float32"), 2 * np.ones((2, 3), "float32")]
    fed = export._as_inputs(model, samples)
    assert isinstance(fed, dict) and sorted(fed) == ["a", "b"]
    assert np.allclose(export._keras_outputs(model, samples)[0], 3.0)


@pytest.mark.slow  # the module's BERT classifier
def test_a_target_on_units_that_can_only_be_masked_is_refused(classifier, tmp_path):
    """Encoder blocks inside a backbone not opened into the task's graph can be masked, not deleted
    (DeBERTaV3's, before its relative-position table was opened: `--target params=0.7` exited 0 having
    reached 1.0 of the parameters). A target on such blocks is refused before any scoring (here the BERT
    task, not opened, stands for it)."""
    import prunecli
    from prunecli.errors import InputError
    from prunecli.removal import ffn
    from prunecli.structure import targets

    model, _x = classifier
    settings = {"model_path": str(tmp_path / "m.keras"), "granularity": "neuron", "target": "params=0.7"}
    config = prunecli.build_config(settings, environ={})
    with pytest.raises(InputError, match=r"--target params=0\.7: the feed-forward units of bert_backbone/"):
        ffn.run_ffn(model, targets.select(model), config)


@pytest.mark.slow  # builds two KerasHub MobileNetV5 ConvNormAct blocks and traces them
def test_a_hub_block_holding_a_lambda_is_not_traced_open():
    """MobileNetV5's ConvNormAct with GELU holds Activation(lambda x: gelu(x, approximate=False)); traced
    open, the lambda was written into the output file, which Keras loads only with safe_mode=False
    (`-g neuron --shrink` exit 1, `-g layer` internal error, `--quantize int8` exit 4). With ReLU it is
    traced as before."""
    from keras_hub.src.models.mobilenetv5.mobilenetv5_layers import ConvNormAct

    from prunecli.structure import rebuild

    x = keras.Input((8, 8, 3))
    axes = {"norm_layer": "rms_norm", "data_format": "channels_last", "channel_axis": -1}
    gelu, relu = ConvNormAct(4, 3, act_layer="gelu", **axes), ConvNormAct(4, 3, act_layer="relu", **axes)
    keras.Model(x, [gelu(x), relu(x)])
    assert not rebuild.traceable(gelu)
    assert rebuild.traceable(relu)
