"""Shared fixtures: tiny models and data, built once per session, and a CLI runner.

Models are small so the whole suite stays within minutes on two CPU cores.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_MODEL = ROOT / "examples" / "digits_cnn.keras"
EXAMPLE_DATA = ROOT / "examples" / "digits.npz"
MEASURED_SLOW = Path(__file__).resolve().parent / "measured_slow.txt"


def pytest_collection_modifyitems(config, items):
    """Tests a full run measured over the fast subset's per-test budget (measured_slow.txt) are marked
    slow here: the fast subset (`-m "not slow"`) must stay under two minutes on two cores."""
    lines = MEASURED_SLOW.read_text(encoding="utf-8").splitlines()
    measured = {line.split("  #")[0].strip() for line in lines if line.strip() and not line.startswith("#")}
    for item in items:
        if item.nodeid in measured:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def example_model() -> Path:
    return EXAMPLE_MODEL


@pytest.fixture(scope="session")
def example_data() -> Path:
    return EXAMPLE_DATA


def build_mlp(inputs: int = 20, classes: int = 3, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((inputs,), name="features")
    x = keras.layers.Dense(32, activation="relu", name="hidden1")(inp)
    x = keras.layers.Dense(16, activation="relu", name="hidden2")(x)
    out = keras.layers.Dense(classes, activation="softmax", name="out")(x)
    model = keras.Model(inp, out, name="mlp")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def make_tabular(n: int = 400, inputs: int = 20, classes: int = 3, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, inputs)).astype("float32")
    y = (np.argmax(x[:, :classes], axis=1)).astype("int32")
    return x, y


def calibration_config(method: str = "sparsegpt", **values):
    """The example CNN and digits data with `method`, layer scope unless a test asks otherwise: the
    calibration tests check each layer's own calibration against its own sparsity (the global
    allocation, the default, is tested by name)."""
    from prunecli.config import build_config

    settings = {"model_path": "examples/digits_cnn.keras", "method": method, "data": "examples/digits.npz"}
    return build_config({**settings, "scope": "layer", **values}, environ={})


def calibrated_at_budget(build, budget, monkeypatch, **config):
    """prune_calibrated on the model `build()` gives, with FRONTIER_BYTES set to `budget` (0: prefix
    passes, one forward per layer; large: the cached graph walk): (result, the weights after)."""
    import numpy as np

    from prunecli.calibration import frontier, prune_calibrated

    monkeypatch.setattr(frontier, "FRONTIER_BYTES", budget)
    model, batches = build()
    res = prune_calibrated(model, every_target(model), batches, calibration_config(sparsity=0.5, **config))
    return res, [np.asarray(w) for w in model.weights]


def assert_cached_equals_prefix(cached, prefix, weights_rtol: float = 1e-5, errors_rel: float = 1e-4):
    """The cached walk and the prefix passes (`calibrated_at_budget`) gave the same masks, weights,
    fallbacks and per-layer figures."""
    import numpy as np

    (res_c, weights_c), (res_p, weights_p) = cached, prefix
    assert res_c.section["passes"] == "cached", res_c.section["passes_note"]
    assert res_p.section["passes"] == "prefix"
    assert set(res_c.masks) == set(res_p.masks) and res_c.masks
    for name in res_c.masks:
        np.testing.assert_array_equal(np.asarray(res_c.masks[name]), np.asarray(res_p.masks[name]), err_msg=name)
    for a, b in zip(weights_c, weights_p, strict=True):
        np.testing.assert_allclose(a, b, rtol=weights_rtol, atol=weights_rtol / 10)
    assert res_c.section["fallback"] == res_p.section["fallback"]
    for name, entry in res_p.section["layers"].items():
        for key, value in entry.items():
            assert res_c.section["layers"][name][key] == pytest.approx(value, rel=errors_rel, abs=1e-6), (name, key)


def every_target(model, exclude=()):
    """Every prunable weight of `model` (nothing included by name), less `exclude`."""
    from prunecli.structure import targets

    return targets.select(model, (), exclude)


def prune_one_target(method: str, model, target, x, sparsity: float):
    """Prune one target to `sparsity`: by magnitude (its k smallest |w|), or by calibrated SparseGPT on
    inputs `x`, checked to have pruned exactly k weights to zero with no fallback. Returns SparseGPT's
    report entry for the layer (None for magnitude)."""
    import numpy as np

    from prunecli.calibration import prune_calibrated

    w_dense = np.asarray(target.variable).copy()
    k = int(round(sparsity * w_dense.size))
    if method == "magnitude":
        flat = w_dense.reshape(-1).copy()
        flat[np.argsort(np.abs(flat), kind="stable")[:k]] = 0
        target.variable.assign(flat.reshape(w_dense.shape))
        return None
    res = prune_calibrated(model, [target], [x], calibration_config("sparsegpt", sparsity=sparsity))
    keep = np.asarray(res.masks[target.name])
    assert res.section["fallback"] == {} and int((~keep).sum()) == k
    assert (np.asarray(target.variable)[~keep] == 0).all()
    return res.section["layers"][target.name]


def step_config(granularity: str, **values):
    """A run's configuration for `granularity` as the CLI would build it, without the environment."""
    from prunecli.config import build_config

    return build_config({"model_path": "m.keras", "granularity": granularity, **values}, environ={})


def write_bn_cnn(folder, n: int = 600, side: int = 10):
    """A BatchNorm CNN (c0 -> bn0 -> c1 -> bn1 -> pooling -> fc -> out) trained a little on `n` examples
    of a separable task (class = the channel with an offset), saved as folder/cnn.keras with its data as
    folder/d.npz; returns `folder`."""
    import keras
    import numpy as np
    from keras import layers as L

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, n).astype("int32")
    x = rng.normal(size=(n, side, side, 3)).astype("float32") * 0.5
    x[np.arange(n), :, :, y] += 1.0
    keras.utils.set_random_seed(0)
    inp = keras.Input((side, side, 3))
    h = L.ReLU()(L.BatchNormalization(name="bn0")(L.Conv2D(16, 3, padding="same", use_bias=False, name="c0")(inp)))
    h = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(16, 3, padding="same", use_bias=False, name="c1")(h)))
    h = L.Dense(16, activation="relu", name="fc")(L.GlobalAveragePooling2D()(h))
    model = keras.Model(inp, L.Dense(3, activation="softmax", name="out")(h))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=2, batch_size=64, verbose=0)
    model.save(folder / "cnn.keras")
    np.savez(folder / "d.npz", x=x, y=y)
    return folder


def token_inputs(vocab: int, n: int = 3, seq: int = 10, seed: int = 0) -> dict:
    """A KerasHub decoder's inputs: seeded token ids in [1, vocab) and a padding mask whose first row ends
    in three padding positions, masked as KerasHub masks them."""
    import numpy as np

    rng = np.random.default_rng(seed)
    mask = np.ones((n, seq), "int32")
    mask[0, -3:] = 0
    return {"token_ids": rng.integers(1, vocab, size=(n, seq)).astype("int32"), "padding_mask": mask}


def reloaded_hub(model, path):
    """`model` saved to `path` and loaded back with prunecli's KerasHub classes registered."""
    import keras

    from prunecli.structure import transformer

    model.save(path)
    assert transformer.register_for_file(path)
    return keras.saving.load_model(path)


def assert_close_rel(a, b, rel: float = 1e-4) -> None:
    """|a - b| at most `rel` of b's largest magnitude, everywhere."""
    import numpy as np

    a, b = np.asarray(a), np.asarray(b)
    assert np.abs(a - b).max() <= rel * np.abs(b).max(), np.abs(a - b).max()


def greedy_tokens(lm, prompt):
    """A KerasHub causal LM's greedy continuation of `prompt` (token ids and padding mask)."""
    import numpy as np

    lm.compile(sampler="greedy")
    return np.asarray(lm.generate(prompt, stop_token_ids=None)["token_ids"])


def spread_weights(backbone, seed: int) -> None:
    """Every weight of a KerasHub backbone (biases and norm offsets included) scaled and jittered, so a
    removed head's or unit's bias, left at its zero initialiser, could not pass for deleted."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    for w in backbone.weights:
        w.assign((np.asarray(w) * rng.uniform(0.5, 2.0) + 0.05 * rng.standard_normal(w.shape)).astype("float32"))


def hub_prompt():
    """Two 3-token prompts padded to 9: what greedy_tokens continues."""
    import numpy as np

    prompt = {"token_ids": np.zeros((2, 9), "int32"), "padding_mask": np.zeros((2, 9), bool)}
    prompt["token_ids"][:, :3] = [[3, 4, 5], [7, 8, 9]]
    prompt["padding_mask"][:, :3] = True
    return prompt


def check_narrowed_lm(lm, tmp_path, vocab: int, class_name: str, sparsity: float = 0.5):
    """-g hidden on a causal LM with LayerNorms: the channels leave every slice, each norm becomes a
    NarrowedLayerNormalization that keeps the dense width, and the narrower model computes, generates and
    reloads as the masked one (check_shrunk_lm). Returns (narrower model, its `hidden` section)."""
    from prunecli.removal import hidden
    from prunecli.structure import decoders
    from prunecli.structure import targets as targets_mod

    width = int(lm.backbone.token_embedding.output_dim)
    small, _masks, section, _notes = hidden.run_hidden(
        lm, targets_mod.select(lm), step_config("hidden", sparsity=sparsity, shrink=True)
    )
    kept = section["hidden_after"]
    assert kept < width == section["hidden_before"]
    assert int(small.backbone.token_embedding.output_dim) == kept
    norms = [n for b in decoders.blocks(small) for n in decoders.residual_norms(b)]
    norms.append(decoders.stream_ends(small)[1])
    assert all(type(n).__name__ == "NarrowedLayerNormalization" and n.full_width == width for n in norms)
    assert section["verification"]["max_rel_diff"] <= 1e-4
    assert section["params_before"] - section["params_after"] == lm.count_params() - small.count_params() > 0
    check_shrunk_lm(lm, small, tmp_path, vocab, class_name)  # `lm` holds the zeroed channels: the masked model
    return small, section


def check_shrunk_lm(masked_lm, small, tmp_path, vocab: int, class_name: str) -> None:
    """`small` computes what `masked_lm` does, and after a save/load round trip as `class_name` it still
    does and generates the masked model's tokens (KerasHub's own cache loop on the masked one, prunecli's
    on the reloaded one: the same class and weights as `small`, so one decoding run covers both)."""
    import numpy as np

    x = token_inputs(vocab)
    want = np.asarray(masked_lm(x))
    assert_close_rel(small(x), want)
    tokens = greedy_tokens(masked_lm, hub_prompt())
    assert (tokens[:, 3:] != 0).any()  # it generated something
    back = reloaded_hub(small, tmp_path / "small.keras")
    assert type(back).__name__ == class_name
    assert_close_rel(back(x), want)
    np.testing.assert_array_equal(greedy_tokens(back, hub_prompt()), tokens)
    if hasattr(masked_lm, "score"):  # KerasHub's score() on the masked model, prunecli's on the rebuilt one
        scored = {"token_ids": x["token_ids"], "padding_mask": x["padding_mask"]}
        assert_close_rel(back.score(**scored), masked_lm.score(**scored))
        loss = masked_lm.score(**scored, scoring_mode="loss", target_ids=x["token_ids"])
        assert_close_rel(back.score(**scored, scoring_mode="loss", target_ids=x["token_ids"]), loss)


def check_block_removed(
    lm, tmp_path, vocab: int, class_name: str, drop: int, *, embed=None, final_norm="layer_norm", decode="forward"
):
    """-g layer on a KerasHub causal LM: its blocks are its only candidates, and removing block `drop`
    leaves a `class_name` with the other blocks, as many parameters fewer as the candidate said, that
    computes embedding -> kept blocks -> final norm -> tied head, before and after a save/load round trip.
    `embed(backbone, token_ids)` when the embedding is more than the token embedding. `decode`: "forward"
    checks that cached decoding picks what the full forward pass picks; "same" only that the reloaded
    model decodes as the smaller one (for families whose KerasHub cache path differs from the forward
    pass in the last bits). The smaller model and the reloaded one."""
    import numpy as np

    from prunecli.removal import layers as layer_removal

    blocks = len(lm.backbone.transformer_layers)
    candidates, rows = layer_removal.analyse(lm)
    assert [(c.kind, c.name) for c in candidates] == [("block", f"block:transformer_layer_{i}") for i in range(blocks)]
    assert not any(r["candidate"] for r in rows if not r["layer"].startswith("transformer_layer"))
    smaller = layer_removal.remove(lm, [candidates[drop]])
    kept = [i for i in range(blocks) if i != drop]
    assert type(smaller).__name__ == class_name
    assert [b.name for b in smaller.backbone.transformer_layers] == [f"transformer_layer_{i}" for i in kept]
    assert smaller.count_params() == lm.count_params() - candidates[drop].params
    x = token_inputs(vocab)
    b = lm.backbone
    h = embed(b, x["token_ids"]) if embed else b.token_embedding(x["token_ids"])
    for i in kept:
        h = b.transformer_layers[i](h, decoder_padding_mask=x["padding_mask"])
    want = b.token_embedding(getattr(b, final_norm)(h), reverse=True)  # the tied LM head
    assert_close_rel(smaller(x), want)
    back = reloaded_hub(smaller, tmp_path / "small.keras")
    assert_close_rel(back(x), want)
    tokens = greedy_tokens(back, hub_prompt())
    if decode == "forward":  # token i at cache index i: the full pass over the tokens picks the same ones
        full = np.asarray(back({"token_ids": tokens, "padding_mask": np.ones_like(tokens)}))
        np.testing.assert_array_equal(full[:, 2:-1].argmax(axis=-1), tokens[:, 3:])
    else:
        np.testing.assert_array_equal(tokens, greedy_tokens(smaller, hub_prompt()))
    return smaller, back


# the prune commands every decoder family's CLI test runs on a saved causal LM (cli_shrinks)
SHRINK_COMMANDS = pytest.mark.parametrize(
    "command",
    [
        ["-g", "head", "-s", "0.5", "--shrink"],
        ["-g", "layer", "-s", "0.5"],
        ["-g", "neuron", "--target", "params=0.8"],  # FFN units removed through the CLI (and the search)
    ],
    ids=["head", "layer", "target"],
)


def cli_shrinks(cli, lm, tmp_path, command: list, class_name: str):
    """`prunecli prune` on `lm` saved: exit 0, the output loads as `class_name`, the parameters it lost
    are the report's `decoder` section's, and a --target params=0.8 is met; --no-speed leaves the
    tokens/s untimed (a third of the run on these tiny decoders). The loaded model."""
    import json

    from prunecli.io.models import load

    path, out, report = tmp_path / "lm.keras", tmp_path / "out.keras", tmp_path / "r.json"
    lm.save(path)
    res = cli("prune", path, *command, "-o", out, "-r", report, "-q", "--no-speed")  # timed in test_removal_decoders
    assert res.exit_code == 0, res.output
    decoder = json.loads(report.read_text())["decoder"]
    assert decoder["tokens_per_s"] == {} and "not timed (--no-speed)" in decoder["measured"]
    small, _info = load(out)
    assert type(small).__name__ == class_name
    assert lm.count_params() - small.count_params() == decoder["params_before"] - decoder["params_after"] > 0
    if "--target" in command:
        assert small.count_params() <= 0.8 * lm.count_params()
    return small


@pytest.fixture(scope="session")
def mlp_files(tmp_path_factory):
    """A trained tiny MLP saved as .keras and Keras-3 .h5, and its data as .npz."""
    import numpy as np

    d = tmp_path_factory.mktemp("mlp")
    x, y = make_tabular()
    model = build_mlp()
    model.fit(x, y, epochs=5, batch_size=32, verbose=0)
    model.save(d / "mlp.keras")
    model.save(d / "mlp.h5")
    np.savez(d / "data.npz", x=x, y=y)
    return {"keras": d / "mlp.keras", "h5": d / "mlp.h5", "data": d / "data.npz", "dir": d}


@pytest.fixture(scope="session")
def keras2_h5(tmp_path_factory):
    """A model written by tf_keras (Keras 2) as .h5, the legacy format many users still have."""
    import numpy as np
    import tf_keras

    d = tmp_path_factory.mktemp("k2")
    tf_keras.utils.set_random_seed(0)
    model = tf_keras.Sequential(
        [
            tf_keras.layers.Dense(32, activation="relu", input_shape=(20,), name="hidden1"),
            tf_keras.layers.Dense(3, activation="softmax", name="out"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = make_tabular()
    model.fit(x, y, epochs=2, verbose=0)
    path = d / "k2.h5"
    model.save(path)
    np.savez(d / "data.npz", x=x, y=y)
    return path


@pytest.fixture
def cli():
    """Invoke the CLI in-process; returns click's Result (exit_code, stdout, stderr)."""
    from click.testing import CliRunner

    from prunecli.cli import main

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)

    return invoke
