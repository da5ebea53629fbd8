"""Token data for language models (io/data/tokens.py): token-id .npz and text tokenised by the model's
own tokenizer, next-token labels, and perplexity in the report.

Tiny KerasHub configs built without download: a GPT-2 causal LM (learned positions, tied head), a
Llama causal LM and backbone with grouped-query attention (4 query heads, 2 key/value heads).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")
kh = pytest.importorskip("keras_hub")

from prunecli.errors import DataError  # noqa: E402
from prunecli.io import data  # noqa: E402
from prunecli.io.data.tokens import NO_TOKEN, next_tokens  # noqa: E402
from prunecli.training import metrics  # noqa: E402

VOCAB, SEQ = 48, 12


def gpt2_lm(preprocessor=None, seed: int = 0):
    keras.utils.set_random_seed(seed)
    backbone = kh.models.GPT2Backbone(
        vocabulary_size=VOCAB, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=16
    )
    return kh.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


def llama_backbone(seed: int = 0):
    keras.utils.set_random_seed(seed)
    return kh.models.LlamaBackbone(
        vocabulary_size=VOCAB,
        num_layers=2,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    )


def token_arrays(n: int = 10, seq: int = SEQ, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(n, seq)).astype("int64")
    mask = np.ones((n, seq), "int32")
    mask[::3, -4:] = 0  # right padding, as KerasHub's preprocessors pad
    return ids, mask


def _tiny_tokenizer():
    """A byte-level BPE of a few letters (GPT-2's format), built in memory."""
    vocab = {"<|endoftext|>": 0}
    for ch in "abcdefghijklmnopqrstuvwxyz.,ĠĊ":
        vocab[ch] = len(vocab)
    vocab["Ġt"], vocab["th"] = len(vocab), len(vocab) + 1
    return kh.models.GPT2Tokenizer(vocabulary=vocab, merges=["Ġ t", "t h"])


def _run(args):
    from click.testing import CliRunner

    from prunecli.cli import main

    return CliRunner().invoke(main, [*args, "--no-sizes", "-q"])


@pytest.fixture(scope="module")
def gpt2_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "gpt2.keras"
    gpt2_lm().save(path)
    return path


@pytest.mark.slow  # 1.4-2.3 s: the full suite (fast subset at its 120 s limit)
def test_token_npz_labels_are_the_next_tokens_and_perplexity_is_exact(tmp_path):
    model = gpt2_lm()
    ids, mask = token_arrays()
    path = tmp_path / "tokens.npz"
    np.savez(path, token_ids=ids, padding_mask=mask)
    d = data.load(str(path), model, batch_size=2)  # five batches: three eager, then traced (metrics.py)
    assert d.labelled and d.next_token and (d.n_train, d.n_eval) == (10, 10) and not d.eval_held_out
    xs, ys = zip(*((x, np.asarray(y)) for x, y in d.eval), strict=True)
    x = {k: np.concatenate([np.asarray(b[k]) for b in xs]) for k in xs[0]}
    y = np.concatenate(ys)
    assert x["token_ids"].dtype == np.int32 and np.array_equal(x["token_ids"], ids)
    assert np.array_equal(y, next_tokens(ids, mask))
    assert (y[:, -1] == NO_TOKEN).all() and (y[0, -5:] == NO_TOKEN).all() and (y[1, :-1] == ids[1, 1:]).all()

    task = metrics.infer_task(model, d.y_example, d.next_token)
    measured = metrics.evaluate(model, d.eval, task)
    logits = np.asarray(model({"token_ids": ids.astype("int32"), "padding_mask": mask}), np.float64)
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    real = y >= 0
    nll = -np.take_along_axis(logp, np.where(real, y, 0)[..., None], -1)[..., 0][real]
    assert measured["loss"] == pytest.approx(nll.mean(), rel=1e-5)  # over positions, not a mean of batch means
    assert measured["perplexity"] == pytest.approx(math.exp(nll.mean()), rel=1e-5)
    assert 0.0 <= measured["accuracy"] <= 1.0


def test_token_npz_splits_val_split_and_a_backbone_reads_inputs_only(tmp_path):
    model = gpt2_lm()
    ids, mask = token_arrays(n=20)
    path = tmp_path / "splits.npz"
    np.savez(path, token_ids_train=ids[:14], padding_mask_train=mask[:14], token_ids_test=ids[14:])
    d = data.load(str(path), model, batch_size=8, val_split=0.25)
    assert (d.n_train, d.n_eval) == (10, 6) and d.eval_held_out and d.val is not None
    assert all(np.asarray(b["padding_mask"]).all() for b, _ in d.eval)  # no mask given: every token is real

    backbone = llama_backbone()  # hidden states, not next-token scores: inputs without labels
    d = data.load(str(path), backbone, batch_size=8)
    assert not d.labelled and not d.next_token and d.n_train == 14


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"token_ids": np.zeros((4, 6), "float32")}, "integer token ids"),
        ({"token_ids": np.full((4, 6), VOCAB)}, "vocabulary is 0..47"),
        ({"token_ids": np.zeros((4, 6), "int32"), "padding_mask": np.ones((4, 5))}, "padding mask"),
        ({"token_ids": np.zeros((4, 6), "int32"), "padding_mask": np.full((4, 6), 2)}, "0 \\(padding\\) and 1"),
        ({"token_ids": np.zeros((4, 20), "int32")}, "at most 16"),  # GPT-2's learned position table
        ({"token_ids": np.zeros((4, 1), "int32")}, "no position"),
        ({"padding_mask_train": np.ones((4, 6)), "token_ids": np.zeros((4, 6), "int32")}, "padding_mask"),
    ],
)
def test_bad_token_arrays_are_one_line(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DataError, match=message) as err:
        data.load(str(path), gpt2_lm(), batch_size=4)
    assert "\n" not in str(err.value)


def test_a_val_split_that_holds_out_only_padding_rows_is_refused(monkeypatch):
    """Each part is checked after --val-split: a held-out evaluation of padding rows only was measured on
    no position, and the report's metrics were empty ({}), nothing said. (The splitting alone, on a
    stand-in for a causal LM: building one costs 0.5 s.)"""
    from prunecli.io.data import tokens
    from prunecli.structure import language

    monkeypatch.setattr(language, "is_causal_lm", lambda model: True)
    monkeypatch.setattr(language, "input_names", lambda model: ["token_ids", "padding_mask"])
    ids, mask = token_arrays(n=20)
    mask[1:] = 0  # one row of real tokens; --val-split 0.5 holds out ten rows of padding
    sets = {"train": (ids.astype("int32"), mask), "eval": None, "val": None}
    with pytest.raises(DataError, match=r"eval rows \(the 10 rows --val-split 0.5 held out\) has a next token"):
        tokens._data(sets, None, 4, 0.5, 0, "padded.npz")
    mask[:] = 1
    d = tokens._data(sets, None, 4, 0.5, 0, "full.npz")  # real tokens everywhere: split as before
    assert (d.n_train, d.n_eval) == (10, 10) and d.eval_held_out


def test_token_data_for_a_model_that_reads_no_tokens_is_refused(tmp_path, mlp_files):
    path = tmp_path / "tokens.npz"
    np.savez(path, token_ids=np.zeros((4, 6), "int32"))
    model = keras.saving.load_model(mlp_files["keras"])
    with pytest.raises(DataError, match="token data feeds a language model"):
        data.load(str(path), model, batch_size=4)


def test_text_is_tokenised_by_the_models_own_tokenizer(tmp_path):
    tokenizer = _tiny_tokenizer()
    preprocessor = kh.models.GPT2CausalLMPreprocessor(tokenizer=tokenizer, sequence_length=8)
    vocab = tokenizer.vocabulary_size()
    keras.utils.set_random_seed(0)
    backbone = kh.models.GPT2Backbone(
        vocabulary_size=vocab, num_layers=1, num_heads=2, hidden_dim=8, intermediate_dim=16, max_sequence_length=16
    )
    path = tmp_path / "with_tokenizer.keras"
    kh.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor).save(path)
    from prunecli.io import models as model_io

    model, _source = model_io.load(path)  # the tokenizer comes back with the file
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat.\nthe hat, the mat.\n" * 3, encoding="utf-8")
    d = data.load(str(text), model, batch_size=4)
    x = np.concatenate([np.asarray(b["token_ids"]) for b, _ in d.train.unbatch().batch(100)])
    m = np.concatenate([np.asarray(b["padding_mask"]) for b, _ in d.train.unbatch().batch(100)])
    stream = np.concatenate([np.asarray(tokenizer(line)) for line in text.read_text().splitlines(keepends=True)])
    assert x.shape[1] == 8 and (x[:, 0] == 0).all()  # each row opens with the start token (<|endoftext|>)
    assert sorted(x[:, 1:][m[:, 1:] == 1].tolist()) == sorted(stream.tolist())  # every token once (shuffled rows)
    assert d.next_token and m.sum() == len(stream) + len(x)


def test_text_without_a_tokenizer_is_refused_in_one_line(tmp_path, gpt2_file):
    text = tmp_path / "corpus.txt"
    text.write_text("some text\n", encoding="utf-8")
    result = _run(["prune", str(gpt2_file), "--data", str(text), "-s", "0.5", "-o", str(tmp_path / "out.keras")])
    assert result.exit_code == 3, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "plain text needs the model's own tokenizer" in lines[0]
    assert not (tmp_path / "out.keras").exists()


def test_max_accuracy_drop_judges_a_causal_lms_next_token_accuracy():
    """The report, the sweep's suggestion and --auto's budget compare a causal LM's next-token accuracy:
    --max-accuracy-drop was refused on it as 'a regression, or outputs without classes'."""
    from prunecli.config import build_config
    from prunecli.errors import ConfigError
    from prunecli.run.steps import check_gate_measurable

    config = build_config({"model_path": "lm.keras", "data": "t.npz", "max_accuracy_drop": 0.01}, environ={})
    lm_task = metrics.Task(metrics.NextTokenLoss(from_logits=True), None)
    assert lm_task.measures_accuracy
    check_gate_measurable(config, lm_task)
    with pytest.raises(ConfigError, match="loss only"):  # a regression still measures none
        check_gate_measurable(config, metrics.Task("mean_squared_error", None))


@pytest.mark.slow
def test_cli_reports_perplexity_before_and_after(tmp_path, gpt2_file):
    ids, mask = token_arrays()
    tokens = tmp_path / "tokens.npz"
    np.savez(tokens, token_ids=ids, padding_mask=mask)
    report, md = tmp_path / "r.json", tmp_path / "r.md"
    args = ["prune", str(gpt2_file), "--data", str(tokens), "-s", "0.5", "-o", str(tmp_path / "out.keras")]
    result = _run([*args, "--report", str(report), "--markdown", str(md), "--max-accuracy-drop", "1"])
    assert result.exit_code == 0, result.output  # the gate judges the next-token accuracy the report gives
    got = json.loads(report.read_text())["metrics"]
    for stage in ("before", "after_pruning"):
        assert math.isfinite(got[stage]["perplexity"])
        assert got[stage]["perplexity"] == pytest.approx(math.exp(got[stage]["loss"]))
    assert "| stage | loss | perplexity | accuracy |" in md.read_text()
