"""A run never writes a model that cannot be used, nor leaves weights unpruned without saying so.

Found on KerasHub families no test had built (bench/DECODERS.md, twenty-fifth session): RWKV7's task
under `-g layer` was written, with exit 0, as a plain functional model whose blocks could not be built
at load, even when no block was removed; Mixtral, Qwen-MoE and GPT-OSS keep 47-77% of their parameters
in expert weight banks that no granularity prunes, and a run at 0.5 reported "prunable 50%" while the
model was 5% sparse, with nothing said.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunecli.config import build_config
from prunecli.errors import ExitCode


def _mixer_model(opt_in: bool):
    """A Dense, then a custom layer holding a matrix of its own that it uses in its own call."""
    import keras

    class Mixer(keras.layers.Layer):
        def build(self, input_shape):
            self.table = self.add_weight(shape=(input_shape[-1], 16), name="table")

        def call(self, x):
            return keras.ops.matmul(x, self.table)

        def get_prunable_weights(self):
            return [self.table]

    if not opt_in:
        Mixer.get_prunable_weights = None
    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    return keras.Model(inp, keras.layers.Dense(3)(Mixer(name="mixer")(keras.layers.Dense(16)(inp))))


@pytest.mark.parametrize("opt_in", [False, True])
def test_matrices_of_an_unknown_layer_are_counted_in_a_note_unless_it_opts_in(opt_in):
    from prunecli.structure import targets

    note = targets.unknown_kernels_note(_mixer_model(opt_in))
    if opt_in:
        assert note is None
    else:
        assert note.startswith("256 of the model's 451 parameters (57%) are matrices of layers prunecli does not know")
        assert "(Mixer 256)" in note


def test_a_small_unknown_matrix_is_not_noted():
    """An attention layer's own scoring vector (0.03% of textgenrnn's parameters) is nothing a reader of
    the totals misses: no note below 1% of the parameters."""
    import keras

    from prunecli.structure import targets

    model = _mixer_model(False)
    inp = keras.Input((8,))
    big = keras.Model(inp, model(keras.layers.Dense(8)(keras.layers.Dense(4096)(keras.layers.Dense(8)(inp)))))
    assert targets.unknown_kernels_note(big) is None


def test_a_layer_removal_that_removes_nothing_writes_the_model_as_it_came(tmp_path):
    """One candidate at -s 0.5 rounds to none removed: the output is the input model (its own class and
    layers), not a rebuilt copy of it, and a note says nothing was removed."""
    import keras

    from prunecli import prune

    keras.utils.set_random_seed(0)
    inp = keras.Input((8,), name="x")
    h = keras.layers.LayerNormalization(name="norm")(keras.layers.Dense(16, name="up")(inp))  # the one candidate
    keras.Model(inp, keras.layers.Dense(3, name="head")(h), name="tiny").save(tmp_path / "m.keras")
    out = tmp_path / "o.keras"
    config = build_config(
        {"model_path": str(tmp_path / "m.keras"), "granularity": "layer", "sparsity": 0.5, "output": str(out)},
        environ={},
    )
    result = prune(config)
    assert result.report.extra["removed_layers"] == []
    assert any("no layer or block was removed" in n for n in result.report.notes)
    written = keras.saving.load_model(out)
    assert [layer.name for layer in written.layers] == ["x", "up", "norm", "head"]


@pytest.mark.parametrize("written", ["not a model", "another model"])
def test_a_written_model_that_does_not_load_back_or_computes_otherwise_is_not_committed(tmp_path, written):
    import keras

    from prunecli.run import steps
    from prunecli.structure.equivalence import ShrinkVerificationError

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    path = tmp_path / ".o.123.tmp.keras"
    if written == "not a model":
        path.write_bytes(b"PK\x03\x04 not a zip")
        said = "o.keras is a damaged .keras file (File is not a zip file)); nothing was saved"
    else:
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)  # other weights
        said = "the rebuilt model, written and loaded back, differs from the masked model"
    config = build_config({"model_path": str(path), "output": str(tmp_path / "o.keras")}, environ={})
    with pytest.raises(ShrinkVerificationError, match="nothing was saved") as caught:
        steps.check_reloads(model, path, tmp_path / "o.keras", config)
    assert said in caught.value.message and str(path) not in caught.value.message
    assert caught.value.exit_code == ExitCode.INTERNAL


@pytest.mark.slow  # 0.5-1 s: a save and a load
def test_the_reload_check_runs_on_the_data_when_there_is_some(tmp_path):
    """A model whose open dimensions need different lengths (RepeatVector(20) beside an open-length
    sequence, as big-phoney's attention seq2seq) runs on no stand-ins: with --data the written model is
    compared on the data, as shrink's own check is (it was an internal error after shrink's check passed)."""
    import keras

    from prunecli.run import steps

    seq, state = keras.Input((None, 3)), keras.Input((5,))
    repeated = keras.layers.RepeatVector(20)(keras.layers.Dense(4)(state))
    model = keras.Model([seq, state], keras.layers.Concatenate()([keras.layers.Dense(4)(seq), repeated]))
    path = tmp_path / ".o.123.tmp.keras"
    model.save(path)
    rng = np.random.default_rng(0)
    x = [rng.normal(size=(6, 20, 3)).astype("float32"), rng.normal(size=(6, 5)).astype("float32")]

    class Data:
        eval = [(x, None)]

    config = build_config({"model_path": str(path), "output": str(tmp_path / "o.keras")}, environ={})
    steps.check_reloads(model, path, tmp_path / "o.keras", config, Data())


@pytest.mark.slow  # 3-5 s: the full suite
def test_a_shrunk_model_is_loaded_back_before_it_is_committed(tmp_path, cli):
    """The check runs on every rebuilt model (its phase is timed in the report) and passes on a sound one."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8,))
    keras.Model(inp, keras.layers.Dense(3)(keras.layers.Dense(16, activation="relu")(inp))).save(tmp_path / "m.keras")
    report = tmp_path / "r.json"
    result = cli(
        "prune", tmp_path / "m.keras", "-g", "neuron", "-s", "0.5", "--shrink", "-o", tmp_path / "o.keras", "-r", report
    )
    assert result.exit_code == 0, result.output
    timings = json.loads(report.read_text())["timings_s"]
    assert "reload" in timings and keras.saving.load_model(tmp_path / "o.keras").count_params() < 8 * 16 + 16 + 51
    assert np.isfinite(timings["reload"])


@pytest.mark.slow  # 4-8 s: a KerasHub model built from its config
@pytest.mark.parametrize("family", ["Mixtral", "GptOss"])
def test_the_expert_banks_of_a_mixture_of_experts_decoder_are_pruned(tmp_path, family):
    """KerasHub's expert banks (every expert's kernels stacked) were out of every granularity's reach:
    -s 0.5 left a Mixtral 5% sparse. They are pruned element-wise now, each stacked kernel at the run's
    sparsity, and the written model loads and runs."""
    import keras
    import keras_hub

    from prunecli import prune

    keras.utils.set_random_seed(0)
    extra = {"head_dim": 8} if family == "GptOss" else {}
    backbone = getattr(keras_hub.models, f"{family}Backbone")(
        vocabulary_size=64,
        num_layers=1,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        num_experts=4,
        top_k=2,
        **extra,
    )
    lm = getattr(keras_hub.models, f"{family}CausalLM")(backbone=backbone, preprocessor=None)
    ids = np.random.default_rng(0).integers(1, 64, size=(2, 8)).astype("int32")
    tokens = {"token_ids": ids, "padding_mask": np.ones_like(ids)}
    lm(tokens)
    lm.save(tmp_path / "lm.keras")
    out = tmp_path / "o.keras"
    config = build_config(
        {"model_path": str(tmp_path / "lm.keras"), "sparsity": 0.5, "scope": "layer", "output": str(out)}, environ={}
    )
    result = prune(config)
    assert not any("does not know" in n for n in result.report.notes)
    written = keras.saving.load_model(out)
    banks = [layer for layer in written._flatten_layers() if type(layer).__name__.endswith("Experts")]
    kernels = [w for bank in banks for w in bank.weights if len(w.shape) == 3]
    assert kernels and all(abs(float(np.mean(np.asarray(w) == 0)) - 0.5) < 0.01 for w in kernels)
    assert np.isfinite(np.asarray(written(tokens))).all()
