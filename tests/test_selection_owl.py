"""OWL (--normalize owl): per-block sparsities from outlier ratios, the exact budget, blocks of KerasHub
decoders sharing one density, and the option through the CLI's calibrated path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from prunecli.selection.layer_budgets import OUTLIER_MULTIPLE, OWL_SPREAD, owl_counts


def _scores(rng, n: int, outliers: int) -> np.ndarray:
    s = rng.uniform(0.5, 1.5, n)
    s[:outliers] = 100.0  # far above OUTLIER_MULTIPLE x the mean even with them in it
    return s


def test_owl_keeps_more_where_the_outliers_are_and_removes_the_exact_budget():
    rng = np.random.default_rng(0)
    sizes = [4000, 4000, 2000]
    layers = [_scores(rng, 4000, 0), _scores(rng, 4000, 20), _scores(rng, 2000, 5)]
    budget = round(0.7 * sum(sizes))
    ks, held = owl_counts(lambda: iter(layers), sizes, [n - 1 for n in sizes], budget, ["a", "b", "c"])
    assert sum(ks) == budget and held == [False, False, False]
    sparsity = [k / n for k, n in zip(ks, sizes, strict=True)]
    # outlier ratios 0, 0.005, 0.0025: the most outliers keep the most, the spread is exactly 2 x lambda
    assert sparsity[1] < sparsity[2] < sparsity[0]
    assert sparsity[0] - sparsity[1] == pytest.approx(2 * OWL_SPREAD, abs=1e-3)
    assert OUTLIER_MULTIPLE * 1.5 < 100.0  # the planted outliers are outliers


def test_owl_gives_one_block_one_density_and_equal_ratios_a_uniform_sparsity():
    rng = np.random.default_rng(1)
    sizes = [1000, 3000, 2000]
    layers = [_scores(rng, 1000, 10), _scores(rng, 3000, 0), _scores(rng, 2000, 0)]
    ks, _ = owl_counts(lambda: iter(layers), sizes, [n - 1 for n in sizes], 3000, ["blk0", "blk0", "blk1"])
    assert ks[0] / 1000 == pytest.approx(ks[1] / 3000, abs=1e-3)  # one block, one density
    assert ks[2] / 2000 > ks[0] / 1000  # the block without outliers loses more
    same = [rng.uniform(0.5, 1.5, n) for n in sizes]
    ks, _ = owl_counts(lambda: iter(same), sizes, [n - 1 for n in sizes], 3000, ["a", "b", "c"])
    assert ks == [500, 1500, 1000]


def test_owl_floor_holds_and_the_rest_goes_elsewhere():
    rng = np.random.default_rng(2)
    layers = [_scores(rng, 100, 0), _scores(rng, 1000, 30)]
    ks, held = owl_counts(lambda: iter(layers), [100, 1000], [50, 999], 900, ["a", "b"])
    assert ks[0] == 50 and held[0] and sum(ks) == 900


def test_a_keras_hub_block_is_one_owl_block_and_a_plain_layer_its_own():
    import keras_hub as kh
    from conftest import build_mlp

    from prunecli.structure import targets

    backbone = kh.models.LlamaBackbone(
        vocabulary_size=40, num_layers=2, num_query_heads=2, num_key_value_heads=1, hidden_dim=8, intermediate_dim=16
    )
    found = targets.walk(kh.models.LlamaCausalLM(backbone=backbone, preprocessor=None))
    blocks = {t.block for t in found if "transformer_layer" in t.name}
    first = f"{backbone.name}/transformer_layer_0"  # Keras numbers a backbone's name when others were built
    assert blocks == {first, f"{backbone.name}/transformer_layer_1"}
    assert sum(t.block == first for t in found) == 7  # q, k, v, o, gate, up, down
    assert [t.block for t in targets.walk(build_mlp())] == ["hidden1", "hidden2", "out"]


@pytest.mark.parametrize("method", ["magnitude", pytest.param("wanda", marks=pytest.mark.slow)])
def test_normalize_owl_through_the_cli(cli, mlp_files, tmp_path, method):
    """--normalize owl on a run: the budget exact over all layers, each layer within OWL's spread of the
    target, and the calibrated report names the allocation."""
    report = tmp_path / "r.json"
    args = ["prune", str(mlp_files["keras"]), "-s", "0.6", "--normalize", "owl", "--method", method]
    result = cli(*args, "--data", str(mlp_files["data"]), "-o", str(tmp_path / "m.keras"), "--report", str(report))
    assert result.exit_code == 0, result.output
    r = json.loads(report.read_text())
    sizes = {e["name"]: (e["sparsity"], e["params"]) for e in r["layers"]}
    total = sum(p for _, p in sizes.values())
    assert sum(s * p for s, p in sizes.values()) == pytest.approx(0.6 * total, abs=1)
    assert all(abs(s - 0.6) <= 2 * OWL_SPREAD + 1e-6 for s, _ in sizes.values())
    if method == "wanda":
        assert r["calibration"]["allocation"] == "global (owl, on Wanda scores)"


def test_a_target_refuses_owl(cli, mlp_files, tmp_path):
    result = cli(
        "prune",
        str(mlp_files["keras"]),
        "--target",
        "params=0.5",
        "--normalize",
        "owl",
        "-o",
        str(tmp_path / "m.keras"),
    )
    assert result.exit_code == 2 and "--normalize owl" in result.output
