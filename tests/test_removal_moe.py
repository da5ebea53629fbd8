"""`-g neuron` and `--target params=F` on KerasHub's mixture-of-experts decoders (Mixtral, Qwen-MoE,
Qwen3-MoE, GPT-OSS): feed-forward units inside each expert masked, and with --shrink removed, the model
built again from its config with a smaller expert size (structure/experts.py). They were refused (exit 3:
"a layout prunecli does not know")."""

from __future__ import annotations

import numpy as np
import pytest

from prunecli.config import build_config
from prunecli.errors import ConfigError

kh = pytest.importorskip("keras_hub")

VOCAB, HIDDEN, EXPERTS, EXPERT_FFN = 64, 16, 4, 32
# what each family's backbone needs beyond the shared arguments (the Qwens size their experts apart)
EXTRA = {
    "Mixtral": {},
    "QwenMoe": {"moe_intermediate_dim": EXPERT_FFN, "shared_expert_intermediate_dim": HIDDEN},
    "Qwen3Moe": {"moe_intermediate_dim": EXPERT_FFN, "head_dim": 8},
    "GptOss": {"head_dim": 8},
}


def _causal_lm(family: str, layers: int = 1):
    import keras

    keras.utils.set_random_seed(0)
    backbone = getattr(kh.models, f"{family}Backbone")(
        vocabulary_size=VOCAB,
        num_layers=layers,
        num_query_heads=4,
        num_key_value_heads=2,
        hidden_dim=HIDDEN,
        intermediate_dim=EXPERT_FFN,
        num_experts=EXPERTS,
        top_k=2,
        **EXTRA[family],
    )
    return getattr(kh.models, f"{family}CausalLM")(backbone=backbone, preprocessor=None)


def _tokens():
    ids = np.random.default_rng(0).integers(1, VOCAB, size=(2, 8)).astype("int32")
    return {"token_ids": ids, "padding_mask": np.ones_like(ids)}


def _unit_params(family: str) -> int:
    """Parameters one unit of one expert holds: its gate and up columns and down row (GPT-OSS: and the
    gate's and up's bias entries)."""
    return 3 * HIDDEN + (2 if family == "GptOss" else 0)


def test_units_inside_each_expert_are_removed_and_the_smaller_model_computes_what_the_masked_one_does():
    """Mixtral: half of every expert's units zeroed through the bank's views, the model rebuilt with 16
    units per expert (each expert its own), outputs equal and exactly the removed slices gone."""
    from prunecli.removal import ffn, units
    from prunecli.structure import experts

    lm = _causal_lm("Mixtral")
    lm(_tokens())
    (found,) = experts.ffns(lm)
    assert found.units == EXPERTS * EXPERT_FFN
    scores = {found.path: units.weight_scores(found.slices(), "magnitude")}
    chosen = {found.path: list(range(0, found.units, 2))}  # any 64 units: `even` makes them 16 per expert
    removed = experts.even([found], chosen, scores)
    per_expert = [[u % EXPERT_FFN for u in removed[found.path] if u // EXPERT_FFN == e] for e in range(EXPERTS)]
    assert [len(p) for p in per_expert] == [EXPERT_FFN // 2] * EXPERTS
    assert len({tuple(p) for p in per_expert}) > 1  # each expert its own lowest-scored units
    ffn.apply([found], removed)
    down = np.asarray(found.bank._expert_feedforward_output_dense)
    for e in range(EXPERTS):  # a removed unit's down row is zero, a kept one's is not
        kept_units = sorted(set(range(EXPERT_FFN)) - set(per_expert[e]))
        assert not down[e, per_expert[e]].any() and down[e, kept_units].any(axis=1).all()
    kept = {found.path: [u for u in range(found.units) if u not in set(removed[found.path])]}
    small = experts.rebuild(lm, kept)
    assert type(small) is type(lm) and small.backbone.intermediate_dim == EXPERT_FFN // 2
    assert lm.count_params() - small.count_params() == EXPERTS * (EXPERT_FFN // 2) * _unit_params("Mixtral")
    np.testing.assert_allclose(np.asarray(small(_tokens())), np.asarray(lm(_tokens())), rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # 5-11 s each: a KerasHub model saved, pruned, written and loaded back
@pytest.mark.parametrize("family", list(EXTRA))
def test_neuron_shrinks_the_experts_of_every_family_and_the_written_model_loads_and_generates(tmp_path, family):
    import keras

    from prunecli import prune

    lm = _causal_lm(family, layers=2)
    lm(_tokens())
    lm.save(tmp_path / "lm.keras")
    out = tmp_path / "o.keras"
    config = build_config(
        {
            "model_path": str(tmp_path / "lm.keras"),
            "granularity": "neuron",
            "sparsity": 0.5,
            "shrink": True,
            "speed": False,  # tokens/s are timed in test_removal_decoders
            "output": str(out),
        },
        environ={},
    )
    section = prune(config).report.to_dict()["ffn"]
    assert section["verification"]["max_rel_diff"] <= 1e-4
    removed = 2 * EXPERTS * (EXPERT_FFN // 2) * _unit_params(family)  # two blocks, half of every expert
    assert section["params_before"] - section["params_after"] == removed
    written = keras.saving.load_model(out)
    assert type(written).__name__ == f"{family}CausalLM" and written.count_params() == section["params_after"]
    ids = np.zeros((1, 12), "int32")
    ids[0, :4] = [5, 9, 2, 7]
    mask = np.zeros_like(ids)
    mask[0, :4] = 1
    generated = written.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
    assert np.asarray(generated["padding_mask"]).sum() == 12


@pytest.mark.slow  # 7 s: the target's sparsity searched, then the model rebuilt
def test_a_parameter_target_is_met_by_units_inside_the_experts(tmp_path):
    from prunecli import prune

    lm = _causal_lm("Mixtral", layers=2)
    lm(_tokens())
    lm.save(tmp_path / "lm.keras")
    config = build_config(
        {"model_path": str(tmp_path / "lm.keras"), "granularity": "neuron", "target": "params=0.8"}, environ={}
    )
    section = prune(config).report.to_dict()["ffn"]
    assert abs(section["params_after"] / section["params_before"] - 0.8) <= 0.02


def test_scores_that_read_gradients_or_activations_are_refused_on_expert_banks():
    """The experts' units are views of stacked variables, which the gradient and activation scorers do
    not take: refused in one line, before any work."""
    from prunecli.removal import ffn
    from prunecli.structure import experts

    lm = _causal_lm("Mixtral")
    found = experts.ffns(lm)
    config = build_config({"model_path": "m.keras", "granularity": "neuron", "method": "taylor"}, environ={})
    with pytest.raises(ConfigError, match="MixtralMoeExperts expert banks scores units by their weights"):
        ffn.score(lm, found, config)


def test_the_keep_mask_of_a_fused_gate_and_up_kernel_covers_both_halves_of_a_removed_unit():
    """Qwen-MoE's gate and up share one kernel (E, hidden, 2I): its one keep-mask (held while fine-tuning)
    is False at a removed unit's gate column j and up column I + j of that expert only."""
    from prunecli.removal import ffn
    from prunecli.structure import experts

    lm = _causal_lm("QwenMoe")
    (found,) = experts.ffns(lm)
    removed = {found.path: [3, EXPERT_FFN + 5]}  # unit 3 of expert 0, unit 5 of expert 1
    masks = ffn.unit_masks([found], removed, {})
    fused = masks[str(found.bank._expert_feedforward_gate_dense.path)]
    assert fused.shape == (EXPERTS, HIDDEN, 2 * EXPERT_FFN)
    gone = {(e, c) for e in range(EXPERTS) for c in range(2 * EXPERT_FFN) if not fused[e, :, c].any()}
    assert gone == {(0, 3), (0, EXPERT_FFN + 3), (1, 5), (1, EXPERT_FFN + 5)} and fused.sum() == fused.size - 4 * HIDDEN
    down = masks[str(found.bank._expert_feedforward_output_dense.path)]
    assert not down[0, 3].any() and not down[1, 5].any() and down.sum() == down.size - 2 * HIDDEN
