"""KerasHub decoder families whose layout prunecli does not know (Bloom here; Falcon and GPT-NeoX are
alike: bench/decoder_families.py runs them all): element pruning works, and the structural
granularities refuse in one line instead of cutting the wrong slices or ending in an internal error.
(Gemma, Phi-3 and SmolLM3 were among them: tests/test_removal_gemma.py, test_removal_phi3.py and
test_removal_smollm3.py shrink them now.)"""

from __future__ import annotations

import numpy as np
import pytest

kh = pytest.importorskip("keras_hub")
pytestmark = pytest.mark.slow  # builds and saves KerasHub models: the full suite runs it

VOCAB = 64


@pytest.fixture(scope="module")
def bloom(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    backbone = kh.models.BloomBackbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32
    )
    folder = tmp_path_factory.mktemp("bloom")
    kh.models.BloomCausalLM(backbone=backbone, preprocessor=None).save(folder / "lm.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "tokens.npz", token_ids=rng.integers(0, VOCAB, (8, 12)), padding_mask=np.ones((8, 12), "int32"))
    return folder


def test_element_pruning_works_on_bloom(cli, bloom, tmp_path):
    result = cli(
        "prune", bloom / "lm.keras", "-s", "0.5", "--data", bloom / "tokens.npz", "-o", tmp_path / "o.keras", "-q"
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o.keras").exists()


@pytest.mark.parametrize("extra", [["-s", "0.5", "--shrink"], ["--target", "params=0.8"]])
def test_neuron_pruning_of_an_unknown_layout_is_refused_not_cut(cli, bloom, tmp_path, extra):
    """Bloom's attention is not one prunecli reads, so it used to count as no Transformer: -g neuron then
    masked the residual stream and head dimensions and exited 0. Now: exit 3, nothing written."""
    result = cli("prune", bloom / "lm.keras", "-g", "neuron", *extra, "-o", tmp_path / "o.keras")
    assert result.exit_code == 3, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("prunecli: error:")]
    assert len(errors) == 1 and "none were found" in errors[0] and "BloomCausalLM" in errors[0]
    assert not (tmp_path / "o.keras").exists()


def test_a_layer_without_get_config_is_a_refusal_when_rebuilding():
    """A rebuilt model holding a layer that cannot describe itself (made with an argument Keras cannot
    serialise, as KerasHub's Gemma RMSNormalization is when loaded) is refused naming the layer: it
    could not be saved (it was an internal error, exit 1)."""
    import keras

    from prunecli.errors import InputError
    from prunecli.structure import rebuild

    class Scaled(keras.layers.Layer):
        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor.value

    x = keras.Input((4,))
    model = keras.Model(x, Scaled(keras.Variable(2.0), name="scaled")(keras.layers.Dense(4)(x)))
    with pytest.raises(InputError, match="'scaled' \\(Scaled\\) has no get_config"):
        rebuild.detach(model)


def test_whole_blocks_of_an_unknown_family_are_refused_naming_why(cli, bloom, tmp_path):
    result = cli("prune", bloom / "lm.keras", "-g", "layer", "-s", "0.5", "--shrink", "-o", tmp_path / "o.keras")
    assert result.exit_code == 3, result.output
    assert (
        "BloomBackbone is one node" in result.stderr
        and "Llama, Mistral, Qwen, Qwen3, Gemma, GPT-2 and OPT" in result.stderr
    )


def test_heads_of_an_unknown_layout_are_refused_naming_the_attention_class(cli, bloom, tmp_path):
    result = cli("prune", bloom / "lm.keras", "-g", "head", "-s", "0.5", "-o", tmp_path / "o.keras")
    assert result.exit_code == 3, result.output
    assert "no attention layer with prunable heads" in result.stderr and "BloomAttention" in result.stderr
