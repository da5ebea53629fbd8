"""KerasHub decoder families whose layout prunecli does not know (Gemma here; Bloom, Falcon, GPT-NeoX,
SmolLM3 are alike: bench/decoder_families.py runs them all): element pruning works, and the structural
granularities refuse in one line instead of cutting the wrong slices or ending in an internal error."""

from __future__ import annotations

import numpy as np
import pytest

kh = pytest.importorskip("keras_hub")
pytestmark = pytest.mark.slow  # builds and saves KerasHub models: the full suite runs it

VOCAB = 64


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    backbone = kh.models.GemmaBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_query_heads=2,
        num_key_value_heads=1,
        hidden_dim=16,
        intermediate_dim=32,
        head_dim=8,
    )
    folder = tmp_path_factory.mktemp("gemma")
    kh.models.GemmaCausalLM(backbone=backbone, preprocessor=None).save(folder / "lm.keras")
    backbone.save(folder / "backbone.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "tokens.npz", token_ids=rng.integers(0, VOCAB, (8, 12)), padding_mask=np.ones((8, 12), "int32"))
    return folder


def test_element_pruning_works_on_gemma(cli, gemma, tmp_path):
    result = cli(
        "prune", gemma / "lm.keras", "-s", "0.5", "--data", gemma / "tokens.npz", "-o", tmp_path / "o.keras", "-q"
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o.keras").exists()


@pytest.mark.parametrize("extra", [["-s", "0.5", "--shrink"], ["--target", "params=0.8"]])
def test_neuron_pruning_of_an_unknown_layout_is_refused_not_cut(cli, gemma, tmp_path, extra):
    """Gemma's attention is not one prunecli reads, so it used to count as no Transformer: -g neuron then
    masked the residual stream and head dimensions and exited 0. Now: exit 3, nothing written."""
    result = cli("prune", gemma / "lm.keras", "-g", "neuron", *extra, "-o", tmp_path / "o.keras")
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("prunecli: error:")]
    assert len(errors) == 1 and "none were found" in errors[0] and "GemmaCausalLM" in errors[0]
    assert not (tmp_path / "o.keras").exists()


def test_a_layer_without_get_config_is_a_refusal_when_rebuilding(cli, gemma, tmp_path):
    """Removing Gemma blocks rebuilds the backbone, whose RMSNormalization has no get_config: exit 3
    naming the layer (it was an internal error, exit 1)."""
    result = cli("prune", gemma / "backbone.keras", "-g", "layer", "-s", "0.5", "--shrink", "-o", tmp_path / "o.keras")
    assert result.exit_code == 3, result.output
    assert "has no get_config" in result.stderr and "RMSNormalization" in result.stderr
    assert not (tmp_path / "o.keras").exists()


def test_whole_blocks_of_an_unknown_family_are_refused_naming_why(cli, gemma, tmp_path):
    result = cli("prune", gemma / "lm.keras", "-g", "layer", "-s", "0.5", "--shrink", "-o", tmp_path / "o.keras")
    assert result.exit_code == 3, result.output
    assert "GemmaBackbone is one node" in result.stderr and "Llama, Mistral, Qwen and Qwen3" in result.stderr


def test_heads_of_an_unknown_layout_are_refused_naming_the_attention_class(cli, gemma, tmp_path):
    result = cli("prune", gemma / "lm.keras", "-g", "head", "-s", "0.5", "-o", tmp_path / "o.keras")
    assert result.exit_code == 3, result.output
    assert "no attention layer with prunable heads" in result.stderr and "GemmaAttention" in result.stderr
