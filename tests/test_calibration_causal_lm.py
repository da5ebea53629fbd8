"""Wanda and SparseGPT on KerasHub causal LMs calibrated on token sequences.

Tiny configs built without download: GPT-2 (multi-head attention, GELU MLP) and Llama with grouped-query
attention (4 query heads, 2 key/value heads) and a SwiGLU MLP. Every decoder projection (q, k, v, output,
the MLP's Dense layers) is calibrated, the embeddings and the LM head are left alone, the nested backbone
is walked node by node (one pass per layer, as for a flat graph), and the saved model reloads with its
perplexity reported and finite.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli.config import build_config  # noqa: E402

VOCAB, SEQ = 48, 12


def causal_lm(family: str, seed: int = 0):
    keras.utils.set_random_seed(seed)
    if family == "gpt2":
        backbone = kh.models.GPT2Backbone(
            vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=16
        )
        return kh.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    backbone = kh.models.LlamaBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    )
    return kh.models.LlamaCausalLM(backbone=backbone, preprocessor=None)


def token_file(path, n: int = 24, seed: int = 0):
    rng = np.random.default_rng(seed)
    mask = np.ones((n, SEQ), "int32")
    mask[::4, -3:] = 0
    np.savez(path, token_ids=rng.integers(0, VOCAB, size=(n, SEQ)), padding_mask=mask)
    return path


PROJECTIONS = {
    "gpt2": ["query", "key", "value", "attention_output", "feedforward_intermediate_dense", "feedforward_output_dense"],
    "llama": [
        "query",
        "key",
        "value",
        "attention_output",
        "feedforward_gate_dense",
        "feedforward_intermediate_dense",
        "feedforward_output_dense",
    ],
}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("clm")
    out = {"tokens": token_file(d / "tokens.npz"), "dir": d}
    for family in PROJECTIONS:
        out[family] = d / f"{family}.keras"
        causal_lm(family).save(out[family])
    return out


def _run(args):
    from click.testing import CliRunner

    from prunecli.cli import main

    return CliRunner().invoke(main, [*args, "--no-sizes", "-q"])


@pytest.mark.parametrize(("family", "method"), [("gpt2", "wanda"), ("llama", "sparsegpt")])
def test_decoder_projections_are_calibrated_and_the_model_reloads(files, family, method, tmp_path):
    out, report = tmp_path / "pruned.keras", tmp_path / "r.json"
    args = ["prune", str(files[family]), "--method", method, "--data", str(files["tokens"]), "-s", "0.5"]
    result = _run([*args, "--scope", "layer", "-o", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    section = r["calibration"]
    # the backbone is named "<family>_backbone", with a counter when other models were built first in the process
    names = sorted(re.sub(r"^(\w+?_backbone)(_\d+)?/", r"\1/", name) for name in section["layers"])
    expected = sorted(
        f"{family}_backbone/transformer_layer_{i}/{'self_attention/' if p in PROJECTIONS[family][:4] else ''}{p}/kernel"
        for i in range(2)
        for p in PROJECTIONS[family]
    )
    assert names == expected and not section["fallback"]  # every projection, nothing else
    assert section["passes"] == "cached" and "backbone" not in (section["passes_note"] or "")
    assert all(abs(layer["sparsity"] - 0.5) < 0.01 for layer in r["layers"])
    for stage in ("before", "after_pruning"):
        assert math.isfinite(r["metrics"][stage]["perplexity"])

    from prunecli.io import data
    from prunecli.io import models as model_io
    from prunecli.training import metrics

    model, _ = model_io.load(out)
    d = data.load(str(files["tokens"]), model, batch_size=64)
    again = metrics.evaluate(model, d.eval, metrics.infer_task(model, d.y_example, d.next_token))
    assert again["perplexity"] == pytest.approx(r["metrics"]["after_pruning"]["perplexity"], rel=1e-4)


def test_sparsegpt_two_four_on_gqa_projections(files, tmp_path):
    out, report = tmp_path / "nm.keras", tmp_path / "r.json"
    args = ["prune", str(files["llama"]), "--method", "sparsegpt", "--data", str(files["tokens"]), "-g", "n:m=2:4"]
    result = _run([*args, "-o", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    from prunecli.calibration.views import view_of
    from prunecli.io import models as model_io
    from prunecli.structure import targets

    model, _ = model_io.load(out)
    found = targets.select(model)
    assert len(found) == 14
    for t in found:  # 2 of every 4 inputs kept per output, along the reduction axis of the matrix view
        w = np.asarray(view_of(t).to_matrix(np.asarray(t.variable)))
        groups = (w != 0).reshape(-1, 4, w.shape[1]).sum(axis=1)
        assert groups.max() <= 2, t.name
    assert math.isfinite(json.loads(report.read_text())["metrics"]["after_pruning"]["perplexity"])


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_the_inlined_backbone_walk_matches_prefix_passes(family, monkeypatch):
    """The causal LM calls its backbone as one nested node; walking the backbone's own nodes in its place
    gives the weights that one forward pass per layer gives."""
    from prunecli import calibration
    from prunecli.calibration import oneshot
    from prunecli.structure import targets

    rng = np.random.default_rng(1)
    x = [
        {
            "token_ids": rng.integers(0, VOCAB, size=(16, SEQ)).astype("int32"),
            "padding_mask": np.ones((16, SEQ), "int32"),
        }
    ]
    config = build_config(
        {"model_path": "m.keras", "data": "d.npz", "method": "sparsegpt", "sparsity": 0.5, "scope": "layer"}, environ={}
    )
    results = {}
    for budget in (None, 0):
        model = causal_lm(family)
        if budget is not None:
            monkeypatch.setattr(oneshot, "frontier_budget", lambda budget=budget: budget)
        res = calibration.prune_calibrated(model, targets.select(model), x, config)
        results[res.section["passes"]] = [np.asarray(t.variable) for t in targets.select(model)]
    assert set(results) == {"cached", "prefix"}
    for a, b in zip(results["cached"], results["prefix"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_a_plain_keras_lm_keeps_its_embedding_and_head(tmp_path):
    """Embedding -> Dense -> Dense(vocab): the ends are left out (with a note) unless --include names them."""
    keras.utils.set_random_seed(0)
    inp = keras.Input((SEQ,), dtype="int32", name="tokens")
    h = keras.layers.Embedding(VOCAB, 16, name="embed")(inp)
    h = keras.layers.Dense(32, activation="relu", name="mlp")(h)
    model = keras.Model(inp, keras.layers.Dense(VOCAB, name="lm_head")(h))
    path, tokens = tmp_path / "plain.keras", tmp_path / "tokens.npz"
    model.save(path)
    rng = np.random.default_rng(0)
    np.savez(tokens, token_ids=rng.integers(0, VOCAB, size=(24, SEQ)))
    report = tmp_path / "r.json"
    args = [
        "prune",
        str(path),
        "--method",
        "wanda",
        "--data",
        str(tokens),
        "-s",
        "0.5",
        "-o",
        str(tmp_path / "o.keras"),
    ]
    result = _run([*args, "--report", str(report)])
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    assert [layer["name"] for layer in r["layers"]] == ["mlp/kernel"]
    assert any("embed not pruned: the token embedding" in n for n in r["notes"])
    assert any("lm_head not pruned: the LM head" in n for n in r["notes"])
    assert math.isfinite(r["metrics"]["after_pruning"]["perplexity"])
    result = _run([*args, "--include", "lm_head", "--include", "mlp", "--report", str(report)])
    assert result.exit_code == 0, result.output
    assert sorted(layer["name"] for layer in json.loads(report.read_text())["layers"]) == [
        "lm_head/kernel",
        "mlp/kernel",
    ]


@pytest.mark.slow
def test_fine_tuning_on_next_token_loss_holds_the_masks(files, tmp_path):
    out, report = tmp_path / "ft.keras", tmp_path / "r.json"
    args = ["prune", str(files["llama"]), "--method", "wanda", "--data", str(files["tokens"]), "-s", "0.5"]
    result = _run([*args, "--epochs", "2", "--lr", "1e-2", "-o", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    after, tuned = r["metrics"]["after_pruning"], r["metrics"]["after_finetune"]
    assert math.isfinite(tuned["perplexity"]) and tuned["loss"] < after["loss"]  # it trains on the next tokens
    # wanda allocates globally: the layers' shares differ, the prunable total is what was asked, after training
    assert r["totals"]["prunable_sparsity"] == pytest.approx(0.5, abs=0.005)
    assert all(layer["sparsity"] > 0.2 for layer in r["layers"])


def test_sparsegpt_inverse_factor_is_the_upper_cholesky_factor_of_the_inverse():
    """U (one Cholesky of the reversed Hessian, one triangular inverse) is upper triangular with a positive
    diagonal and U^T U = (H + lambda I)^-1, as the factor-solve-factor route gave; on a wide, rank-deficient
    Hessian (fewer calibration rows than inputs), as a decoder's FFN projection gets."""
    from prunecli.calibration import sparsegpt

    rng = np.random.default_rng(0)
    x = rng.standard_normal((48, 96)).astype("float32") * rng.uniform(0.1, 3.0, 96).astype("float32")
    x[:, 5] = 0.0  # a dead input
    h = x.T @ x / len(x)
    factor = sparsegpt.inverse_factor(h, "ffn/kernel")
    u = np.asarray(factor.rows(0, 96), "float64")
    diag = np.diag(h).astype("float64")
    # H + lambda mean(live diag) I, a dead input's H_jj set to 1 first
    hd = h.astype("float64") + np.diag(np.where(diag > 0, 0.0, 1.0) + factor.dampening * diag[diag > 0].mean())
    assert np.allclose(u, np.triu(u)) and (np.diag(u) > 0).all()
    np.testing.assert_allclose(u.T @ u, np.linalg.inv(hd), rtol=1e-3, atol=1e-3 * np.abs(np.linalg.inv(hd)).max())
    reference = np.linalg.cholesky(np.linalg.inv(hd)).T  # the upper factor of H^-1, computed directly
    np.testing.assert_allclose(u, reference, rtol=1e-3, atol=1e-4 * np.abs(reference).max())


pytestmark = pytest.mark.slow  # whole module in the full suite only: the fast subset stays under 2 minutes
