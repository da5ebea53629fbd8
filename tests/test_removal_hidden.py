"""`-g hidden`: residual-stream channels of KerasHub decoders (Llama, Qwen, Mistral) deleted for real.

Tiny configs built with keras_hub (no download): the narrower model is checked against the model with
the same channels zeroed in every slice (which -g hidden leaves behind in place), after a save/load
round trip too, and a causal LM's greedy tokens against the masked one's.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import assert_close_rel, greedy_tokens, reloaded_hub, token_inputs

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli.config import build_config  # noqa: E402
from prunecli.errors import ConfigError, InputError  # noqa: E402
from prunecli.removal import hidden, units  # noqa: E402
from prunecli.structure import decoders, keras_graph, transformer  # noqa: E402
from prunecli.structure import targets as targets_mod  # noqa: E402

D, HQ, HKV, FF, VOCAB = 32, 4, 2, 48, 64
HD = D // HQ  # the head size every narrowed block must keep
SIZES = dict(vocabulary_size=VOCAB, num_query_heads=HQ, num_key_value_heads=HKV, hidden_dim=D, intermediate_dim=FF)


def backbone(family: str = "llama", tied: bool = False, layers: int = 2, seed: int = 0):
    keras.utils.set_random_seed(seed)
    if family == "mistral":  # no tied embeddings; head_dim is its own argument
        model = kh.models.MistralBackbone(num_layers=layers, sliding_window=8, **SIZES)
    elif family == "qwen3":  # head_dim its own argument; query/key norms over one head
        model = kh.models.Qwen3Backbone(num_layers=layers, head_dim=D // HQ, tie_word_embeddings=tied, **SIZES)
    else:
        cls = {"llama": kh.models.LlamaBackbone, "qwen": kh.models.QwenBackbone}[family]
        model = cls(num_layers=layers, tie_word_embeddings=tied, **SIZES)
    rng = np.random.default_rng(seed + 1)
    for w in model.weights:  # distinct scales, norm scales away from 1, Qwen's q/k/v biases non-zero
        w.assign((np.asarray(w) * rng.uniform(0.5, 2.0) + (0.05 * rng.standard_normal(w.shape))).astype("float32"))
    return model


def inputs(n: int = 3, seq: int = 10, seed: int = 0):
    return token_inputs(VOCAB, n, seq, seed)


def _config(**kw):
    return build_config({"model_path": "m.keras", "granularity": "hidden", "shrink": True, **kw}, environ={})


def _narrowed(model, **kw):
    return hidden.run_hidden(model, targets_mod.select(model), _config(**kw))


@pytest.mark.parametrize(
    ("family", "tied"),
    [
        pytest.param("llama", False, marks=pytest.mark.slow),
        pytest.param("llama", True, marks=pytest.mark.slow),
        pytest.param("qwen", True, marks=pytest.mark.slow),
        pytest.param("mistral", False, marks=pytest.mark.slow),
        pytest.param("qwen3", True, marks=pytest.mark.slow),
    ],
)
def test_narrowed_model_equals_the_masked_one(family, tied, tmp_path):
    model = backbone(family, tied)
    x = inputs()
    small, masks, section, notes = _narrowed(model, sparsity=0.25)
    assert not notes and small is not model
    gone = section["removed_channels"]
    assert (section["hidden_before"], section["hidden_after"], len(gone)) == (D, D - 8, 8)
    masked = np.asarray(model(x))  # run_hidden zeroed the channels of `model` in place
    assert not masked[..., gone].any()  # the stream's channel is zero to the end
    kept = [c for c in range(D) if c not in gone]
    for i in range(2):
        block = small.get_layer(f"transformer_layer_{i}")
        assert type(block).__name__ == f"Pruned{family.capitalize()}TransformerDecoder"
        assert (block.num_query_heads, block.num_key_value_heads, block.head_dim, block.intermediate_dim) == (
            HQ,
            HKV,
            HD,
            FF,
        )
        q, k, v, o = (sub.kernel.shape for sub, *_ in keras_graph.attention_projections(decoders.attention(block)))
        assert (tuple(q), tuple(k), tuple(v), tuple(o)) == ((24, HQ, HD), (24, HKV, HD), (24, HKV, HD), (HQ, HD, 24))
        assert math.isclose(
            block.layer_norm_epsilon, model.get_layer(f"transformer_layer_{i}").layer_norm_epsilon * D / 24
        )
    embedding, final = decoders.stream_ends(small)
    assert embedding.output_dim == 24
    assert math.isclose(final.epsilon, decoders.stream_ends(model)[1].epsilon * D / 24)
    per_block = 2 + HQ * HD + 2 * HKV * HD + HQ * HD + 3 * FF  # norms, q, k, v, output, gate, up, down
    per_channel = VOCAB * (1 if tied else 2) + 2 * per_block + 1
    assert model.count_params() - small.count_params() == 8 * per_channel
    assert section["params_before"] - section["params_after"] == 8 * per_channel
    assert_close_rel(np.asarray(small(x)), masked[..., kept])
    assert section["verification"]["max_rel_diff"] <= 1e-4
    assert masks and all(m.all() for m in masks.values())
    assert_close_rel(np.asarray(reloaded_hub(small, tmp_path / "narrow.keras")(x)), masked[..., kept])


def test_a_channel_is_scored_by_all_its_slices():
    """A channel small in one slice only goes first: scores are geometric means over the slices."""
    model = backbone(layers=1)
    slices = decoders.stream_slices(model)
    for which in (0, 2, len(slices) // 2, len(slices) - 1):  # embedding, a norm scale, a kernel, the final norm
        var, axis = slices[which]
        arr = np.array(var)
        index = [slice(None)] * arr.ndim
        index[axis] = 5
        arr[tuple(index)] *= 1e-6
        var.assign(arr)
        scores = units.weight_scores(slices, "magnitude")
        assert int(np.argmin(scores)) == 5, which
        arr[tuple(index)] *= 1e6
        var.assign(arr)


@pytest.mark.slow
def test_every_method_scores_and_the_norms_are_unhooked():
    import tensorflow as tf

    x = inputs(8)
    for method in ("l2-norm", "random", "taylor", "gradient", "activation"):
        model = backbone(layers=1)
        if method == "activation":  # channel 3 carried loud by the embedding: kept; the stream read, not weights
            emb = decoders.stream_ends(model)[0].embeddings
            arr = np.array(emb)
            arr[:, 3] *= 100
            emb.assign(arr)
        y = np.zeros((8, 10, D), "float32")
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
        small, _, section, _ = hidden.run_hidden(
            model,
            targets_mod.select(model),
            _config(sparsity=0.25, method=method, data="d.npz"),
            data=data,
            loss_fn=keras.losses.MeanSquaredError(),
        )
        assert section["hidden_after"] == 24 and section["verification"]["max_rel_diff"] <= 1e-4, method
        if method == "activation":
            assert 3 not in section["removed_channels"]
            assert all("call" not in vars(n) for b in decoders.blocks(model) for n in decoders.residual_norms(b))


def test_at_least_eight_channels_stay_and_the_width_stays_a_multiple_of_eight():
    notes = []
    scores = np.arange(D, dtype=float)
    assert hidden.choose(scores, _config(sparsity=0.99), notes) == list(range(D - 8))
    assert hidden.choose(scores, _config(sparsity=0.3), notes) == list(range(8))  # 10 asked, 8 go
    assert any("multiple of 8" in n for n in notes)


@pytest.mark.parametrize(
    ("options", "needs"),
    [({"shrink": False}, "add --shrink"), ({"schedule": "polynomial", "epochs": 1, "data": "d.npz"}, "oneshot")],
)
def test_hidden_removes_for_real_only(options, needs):
    with pytest.raises(ConfigError, match=needs):
        _config(sparsity=0.25, **options)


@pytest.mark.slow
def test_causal_lm_keeps_generating_after_channels_go(tmp_path):
    """A LlamaCausalLM narrowed to 24 channels is a PrunedLlamaCausalLM whose generate() gives the masked
    model's greedy tokens (KerasHub's own cache on the masked one), after a save/load round trip too."""
    lm = kh.models.LlamaCausalLM(backbone=backbone(layers=2), preprocessor=None)
    small, _, section, _ = _narrowed(lm, sparsity=0.25)
    assert type(small).__name__ == "PrunedLlamaCausalLM" and small.backbone.hidden_dim == 24
    assert small.backbone.head_dim == HD
    x = inputs()
    assert_close_rel(small(x), lm(x))  # logits: the vocabulary is whole
    prompt = {"token_ids": np.zeros((2, 9), "int32"), "padding_mask": np.zeros((2, 9), bool)}
    prompt["token_ids"][:, :3] = [[3, 4, 5], [7, 8, 9]]
    prompt["padding_mask"][:, :3] = True
    want = greedy_tokens(lm, prompt)
    assert (want[:, 3:] != 0).any()
    back = reloaded_hub(small, tmp_path / "lm.keras")
    assert type(back).__name__ == "PrunedLlamaCausalLM"
    np.testing.assert_array_equal(greedy_tokens(back, prompt), want)


@pytest.mark.slow
def test_cli_writes_a_narrower_model_and_its_report(cli, tmp_path):
    model = backbone()
    path, out, report = tmp_path / "llama.keras", tmp_path / "out.keras", tmp_path / "r.json"
    model.save(path)
    res = cli("prune", path, "-g", "hidden", "-s", "0.25", "--shrink", "--no-speed", "-o", out, "-r", report, "-q")
    assert res.exit_code == 0, res.output
    section = json.loads(report.read_text())["hidden"]
    assert (section["hidden_before"], section["hidden_after"], section["score"]) == (D, 24, "magnitude")
    assert len(section["removed_channels"]) == 8 and section["verification"]["max_rel_diff"] <= 1e-4
    assert section["params_after"] < section["params_before"]
    transformer.register_for_file(out)
    small = keras.saving.load_model(out)
    assert small.get_layer("token_embedding").output_dim == 24
    assert small.count_params() == section["params_after"]

    res = cli("plan", path, "-g", "hidden", "-s", "0.25", "--shrink")
    assert res.exit_code == 0, res.output
    assert f"residual channels {D} -> 24" in res.output

    res = cli("prune", path, "-g", "hidden", "-s", "0.25", "-o", tmp_path / "no.keras", "-q")
    assert res.exit_code == 2 and "add --shrink" in res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "no.keras").exists()


def test_a_model_without_decoder_blocks_is_refused(cli, tmp_path):
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(3)])
    with pytest.raises(InputError, match="needs KerasHub decoder blocks"):
        hidden.run_hidden(plain, targets_mod.select(plain), _config(sparsity=0.25))
    path = tmp_path / "mlp.keras"
    plain.save(path)
    res = cli("prune", path, "-g", "hidden", "-s", "0.25", "--shrink", "--no-speed", "-o", tmp_path / "o.keras", "-q")
    assert res.exit_code == 3 and "needs KerasHub decoder blocks" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_fit_target_narrows_the_stream_to_fit():
    """-g hidden --target params=F: the fewest channels (in steps of ALIGN) whose removal leaves at most F."""
    model = backbone("llama")
    config = build_config({"model_path": "m.keras", "granularity": "hidden", "target": "params=0.85"}, environ={})
    new, _masks, section, _notes = hidden.run_hidden(model, targets_mod.select(model), config)
    target = section["target"]
    assert target["predicted"] == new.count_params() <= 0.85 * model.count_params()
    fewer = len(section["removed_channels"]) - hidden.ALIGN  # one step less would not fit
    per_channel = (model.count_params() - new.count_params()) // len(section["removed_channels"])
    assert model.count_params() - fewer * per_channel > 0.85 * model.count_params()
