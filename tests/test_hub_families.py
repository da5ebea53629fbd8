"""KerasHub decoder families whose blocks prunecli does not know (Mixtral here: a mixture-of-experts
feed-forward network): element pruning works, and the structural granularities refuse in one line (or,
for heads prunecli reads but cannot rebuild, mask them with a note) instead of cutting the wrong slices
or ending in an internal error. (Bloom, Falcon, GPT-NeoX, Gemma, Phi-3 and SmolLM3 were among them: their
tests/test_removal_*.py files shrink them now.)"""

from __future__ import annotations

import numpy as np
import pytest

kh = pytest.importorskip("keras_hub")
pytestmark = pytest.mark.slow  # builds and saves KerasHub models: the full suite runs it

VOCAB = 64


@pytest.fixture(scope="module")
def mixtral(tmp_path_factory):
    import keras

    keras.utils.set_random_seed(0)
    backbone = kh.models.MixtralBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_query_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        num_key_value_heads=1,
        num_experts=2,
        top_k=1,
    )
    folder = tmp_path_factory.mktemp("mixtral")
    kh.models.MixtralCausalLM(backbone=backbone, preprocessor=None).save(folder / "lm.keras")
    rng = np.random.default_rng(0)
    np.savez(folder / "tokens.npz", token_ids=rng.integers(0, VOCAB, (8, 12)), padding_mask=np.ones((8, 12), "int32"))
    return folder


def test_element_pruning_works_on_mixtral(cli, mixtral, tmp_path):
    result = cli(
        "prune",
        mixtral / "lm.keras",
        "-s",
        "0.5",
        "--data",
        mixtral / "tokens.npz",
        "--no-speed",
        "-o",
        tmp_path / "o.keras",
        "-q",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o.keras").exists()


@pytest.mark.parametrize("extra", [["-s", "0.5", "--shrink"], ["--target", "params=0.8"]])
def test_neuron_pruning_of_mixtral_shrinks_its_experts(cli, mixtral, tmp_path, extra):
    """Mixtral's feed-forward network was a layout prunecli did not read (exit 3, "none were found"): its
    experts' units are pruned and removed now (tests/test_removal_moe.py), the file written smaller."""
    result = cli("prune", mixtral / "lm.keras", "-g", "neuron", *extra, "--no-speed", "-o", tmp_path / "o.keras", "-q")
    assert result.exit_code == 0, result.output
    assert keras_count(tmp_path / "o.keras") < keras_count(mixtral / "lm.keras")


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


def test_whole_blocks_of_a_family_built_from_num_layers_go_by_a_rebuild_from_its_config(cli, mixtral, tmp_path):
    """Mixtral's blocks were refused ("MixtralBackbone is one node"): its backbone builds num_layers blocks of
    one class, so the model is built again from its config with one fewer (structure/stacks)."""
    import keras

    out = tmp_path / "o.keras"
    result = cli("prune", mixtral / "lm.keras", "-g", "layer", "--remove-layers", "1", "--no-speed", "-o", out, "-q")
    assert result.exit_code == 0, result.output
    written = keras.saving.load_model(out)
    assert type(written).__name__ == "MixtralCausalLM" and written.backbone.get_config()["num_layers"] == 1
    assert keras_count(out) < keras_count(mixtral / "lm.keras")


def test_a_keras_hub_model_whose_blocks_cannot_be_taken_out_is_refused_naming_why():
    """A KerasHub backbone that is one node of the user's graph, neither a decoder family prunecli rebuilds
    nor a stack of num_layers blocks of one class (a ViT's blocks sit inside its one encoder layer), is
    refused in one line naming what prunecli does take blocks out of."""
    import keras

    from prunecli.removal import layers

    backbone = kh.models.ViTBackbone(
        image_shape=(16, 16, 3), patch_size=8, num_layers=2, num_heads=2, hidden_dim=8, mlp_dim=16
    )
    images = keras.Input((16, 16, 3))
    model = keras.Model(images, keras.layers.Dense(3)(backbone(images)[:, 0]))
    message = layers._why_none(model)
    assert "ViTBackbone is one node" in message and "LlamaCausalLM" in message and "num_layers" in message


def test_heads_of_an_unknown_block_are_masked_with_a_note(cli, mixtral, tmp_path):
    """Mixtral's attention is read (grouped-query heads) but its block is not one prunecli rebuilds:
    the heads are masked, nothing is deleted, and a note says so."""
    import json

    out, report = tmp_path / "o.keras", tmp_path / "r.json"
    result = cli(
        "prune",
        mixtral / "lm.keras",
        "-g",
        "head",
        "-s",
        "0.5",
        "--shrink",
        "--no-speed",
        "-o",
        out,
        "-r",
        report,
        "-q",
    )
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    assert any("masked, not deleted" in n for n in written["notes"])
    rows = written["heads"]["layers"]
    assert rows and all(row["removed_heads"] and not row["deleted"] for row in rows)
    assert keras_count(out) == keras_count(mixtral / "lm.keras")  # masked: as large as the dense model


def keras_count(path) -> int:
    from prunecli.io.models import load

    return int(load(path)[0].count_params())
