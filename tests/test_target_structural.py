"""--target size= and latency= on the structural steps (-g head; -g neuron on KerasHub decoders; -g
hidden; -g transformer): translated by run/target.remove_structure into the parameter fraction
the step fits itself, the final model checked against the request as for channels.

latency= is tested with a fake timer (a constant plus one ms per thousand parameters), so the search
lands without timing noise; the real timer is exercised by test_run_target's slow test."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from prunecli.config.target import LATENCY_TOLERANCE, TOLERANCE  # noqa: E402

HEAD_PARAMS = 3 * (32 * 8 + 8) + 8 * 32  # one head of many_heads: its q/k/v slices and biases, output rows


def many_heads(heads: int = 16, blocks: int = 2, seq: int = 16, d: int = 32, seed: int = 0):
    """A classifier whose parameters sit mostly in its attention heads (16 heads of 8 dims per block),
    so a parameter or latency target is met by heads alone, in steps of one head."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((seq,), dtype="int32", name="ids")
    x = keras.layers.Embedding(20, d, name="tokens")(ids)
    for i in range(blocks):
        x = x + keras.layers.MultiHeadAttention(heads, 8, name=f"mha{i}")(x, x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(ids, keras.layers.Dense(3, name="cls")(x), name="many_heads")


@pytest.fixture(scope="module")
def heads_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("target_structural") / "heads.keras"
    many_heads().save(path)
    return path


@pytest.fixture
def params_timer(monkeypatch):
    """Keras latency = base_ms + one ms per thousand parameters: monotone in what the step removes."""
    from prunecli.structure import equivalence

    def use(base_ms: float = 1.0):
        monkeypatch.setattr(
            equivalence, "latency_ms", lambda model, inputs, *a, **k: base_ms + model.count_params() / 1e3
        )

    return use


def _heads_after(report: dict) -> list[int]:
    return [row["heads_after"] for row in report["heads"]["layers"]]


def test_head_size_target_is_the_written_file(cli, heads_file, tmp_path):
    out, report = tmp_path / "o.keras", tmp_path / "r.json"
    want = int(heads_file.stat().st_size * 0.6)
    result = cli("prune", heads_file, "-g", "head", "--target", f"size={want}B", "-o", out, "-r", report, "-q")
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    section = written["target"]
    assert section["kind"] == "size" and section["fitted_as"].startswith("params=")
    size = out.stat().st_size
    # under the request by less than one head (4 bytes x 1,048 parameters; a few hundred for the headers);
    # within 2% only where a head is smaller than 2% of the file, as the report says
    assert section["achieved_bytes"] == size and want - 4 * HEAD_PARAMS - 500 <= size <= want
    assert section["within_tolerance"] is (size >= want * (1 - TOLERANCE))
    assert abs(section["predicted_bytes"] - out.stat().st_size) < 0.01 * want  # the step's count, as written
    assert sum(_heads_after(written)) < 32  # heads went, the rest of the model stayed
    assert keras.saving.load_model(out).count_params() == section["predicted"]


@pytest.mark.slow
def test_head_latency_target_lands_in_its_band(cli, heads_file, tmp_path, params_timer):
    from prunecli.selection.budget import MAX_TIMED

    params_timer()
    out, report = tmp_path / "o.keras", tmp_path / "r.json"
    result = cli("prune", heads_file, "-g", "head", "--target", "latency=0.5", "-o", out, "-r", report)
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    section, lat = written["target"], written["target"]["latency"]
    assert 0.5 * (1 - LATENCY_TOLERANCE) <= section["achieved"] <= 0.5 and section["within_tolerance"] is True
    assert lat["final_ms"] == pytest.approx(lat["chosen_ms"]) and 2 <= lat["timed"] <= MAX_TIMED
    assert lat["candidates"][0] == {"params_fraction": 1.0, "latency_ms": round(lat["dense_ms"], 4)}
    # the floors' model (one head per layer) is timed first, then candidates between it and the dense one
    assert lat["candidates"][1]["params_fraction"] == min(c["params_fraction"] for c in lat["candidates"])
    assert 2 < sum(_heads_after(written)) < 32
    said = " ".join(result.output.split())
    assert "--target latency: achieved" in said and "timing candidate" in said


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("size=1KB", "--target size=1000B cannot be met: the dense file is"),
        ("size=60KB", "--target size=60000B cannot be met: with every unit the floors allow removed, the file"),
        pytest.param(
            "latency=0.01",
            "--target latency=0.01 cannot be met: with every unit the floors allow removed",
            marks=pytest.mark.slow,  # times every candidate: the fast subset keeps the two size cases
        ),
    ],
)
def test_unreachable_structural_targets_exit_2_in_one_line(cli, heads_file, tmp_path, params_timer, target, message):
    params_timer(50.0)  # 50 ms no head removes
    out = tmp_path / "o.keras"
    result = cli("prune", heads_file, "-g", "head", "--target", target, "-o", out, "-q")
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.slow
def test_plan_head_size_target_writes_nothing(cli, heads_file):
    before = sorted(p.name for p in heads_file.parent.iterdir())
    want = int(heads_file.stat().st_size * 0.7)
    result = cli("plan", heads_file, "-g", "head", "--target", f"size={want}B", "--json")
    assert result.exit_code == 0, result.output
    section = json.loads(result.stdout)["target"]
    assert section["kind"] == "size" and section["predicted_bytes"] <= want
    assert section["allocated"] == "the attention heads" and 0 < section["sparsity"] < 1
    table = cli("plan", heads_file, "-g", "head", "--target", f"size={want}B")
    assert table.exit_code == 0, table.output
    assert f"target size={want}: the attention heads removed at sparsity" in table.output
    assert "predicted file size" in table.output
    assert sorted(p.name for p in heads_file.parent.iterdir()) == before


@pytest.mark.slow
def test_decoder_ffn_latency_target_shrinks_a_causal_lm(tmp_path, params_timer):
    """-g neuron on a KerasHub Llama: its SwiGLU units removed for real until the fake timer says so."""
    kh = pytest.importorskip("keras_hub")
    from test_removal_decoders import backbone

    from prunecli import prune
    from prunecli.config import build_config

    params_timer(0.0)
    path, out = tmp_path / "lm.keras", tmp_path / "o.keras"
    kh.models.LlamaCausalLM(backbone=backbone(layers=2), preprocessor=None).save(path)
    config = build_config(
        {
            "model_path": str(path),
            "output": str(out),
            "granularity": "neuron",
            "target": "latency=0.85",
            "speed": False,
        },
        environ={},
    )  # speed off: the fake timer is the target's clock; tokens/s is test_removal_decoders'
    result = prune(config)
    section = result.report.extra["target"]
    assert section["within_tolerance"] is True and section["fitted_as"].startswith("params=")
    small = keras.saving.load_model(out)
    assert small.count_params() == section["predicted"] < section["dense"]
    ids = np.ones((1, 6), dtype="int32")
    logits = small.predict({"token_ids": ids, "padding_mask": np.ones_like(ids)}, verbose=0)
    assert np.isfinite(logits).all()


@pytest.mark.slow
def test_transformer_size_target_splits_to_the_file(cli, tmp_path):
    """-g transformer --target size=: the split (no --data: heads and FFN units in proportion to their
    cost) fitted to the parameter fraction whose file has that size."""
    from test_removal_heads import bert_like

    path, out, report = tmp_path / "bert.keras", tmp_path / "o.keras", tmp_path / "r.json"
    bert_like(blocks=3, d=32).save(path)
    want = int(path.stat().st_size * 0.8)
    result = cli("prune", path, "-g", "transformer", "--target", f"size={want}B", "-o", out, "-r", report, "-q")
    assert result.exit_code == 0, result.output
    section = json.loads(report.read_text())["target"]
    assert section["kind"] == "size" and section["fitted_as"].startswith("params=")
    assert sum(section["split"].values()) == pytest.approx(1.0)  # the split's own fields kept
    assert section["achieved_bytes"] == out.stat().st_size <= want
    assert keras.saving.load_model(out).count_params() == section["predicted"] < section["dense"]


@pytest.mark.slow
def test_transformer_latency_target_searches_a_split_per_candidate(cli, tmp_path, params_timer):
    """-g transformer --target latency=: each timed candidate is the step at a parameter fraction, its
    split searched on --data; the fastest candidate is found even where no split reaches the floors'
    own count exactly (each share of a smaller removal is smaller), and the run lands in its band."""
    from test_removal_heads import bert_like

    params_timer()
    path, data, out, report = tmp_path / "bert.keras", tmp_path / "d.npz", tmp_path / "o.keras", tmp_path / "r.json"
    model = bert_like(blocks=3, d=32)
    model.save(path)
    rng = np.random.default_rng(0)
    np.savez(data, x=rng.integers(0, 40, (64, 12)).astype("int32"), y=rng.integers(0, 3, 64))
    result = cli(
        "prune", path, "-g", "transformer", "--target", "latency=0.6", "--data", data, "-o", out, "-r", report, "-q"
    )
    assert result.exit_code == 0, result.output
    written = json.loads(report.read_text())
    section, lat = written["target"], written["target"]["latency"]
    assert section["kind"] == "latency" and section["fitted_as"].startswith("params=")
    assert 0.6 * (1 - LATENCY_TOLERANCE) <= section["achieved"] <= 0.6 and section["within_tolerance"] is True
    assert written["transformer_split"]["searched"] and sum(section["split"].values()) == pytest.approx(1.0)
    assert lat["candidates"][1]["params_fraction"] == min(c["params_fraction"] for c in lat["candidates"])
    assert keras.saving.load_model(out).count_params() == section["predicted"] < model.count_params()


# ---------------------------------------------------------------------------------------------------
# Units of very different costs: the score order completed by cost (units.fill_band)


def _ranked_select(order: list[tuple[str, int]]):
    """A stand-in for a step's selection: the first round(s * len(order)) units of `order` (the global
    ranking, floors already out), as {group: removed units}."""

    def select(s: float) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for group, unit in order[: int(round(s * len(order)))]:
            out.setdefault(group, []).append(unit)
        return {g: sorted(u) for g, u in out.items()}

    return select


def test_score_order_that_overshoots_the_band_is_completed_by_cost_or_the_miss_is_said():
    """Swin's case (bench/VISION.md) on a stand-in selection: a wide head costs 51 of 1,000, a narrow
    one 21; params=0.9 asks to remove 100 to 118. Score order takes four narrow heads (84), then a wide
    one (135: 0.865, outside the band): the completion keeps the four and adds the next narrow one
    (105). With the narrow heads all taken first, no set on top of them lands and two wide heads (102)
    and three narrow ones (114) do: the earliest in score order are kept. Where no set lands at all
    (60 and 70), the score order's removal stays and the section says why."""
    from conftest import step_config

    from prunecli.removal import units

    config = step_config("head", target="params=0.9")
    cost = {"wide": 51, "narrow": 21}
    scores = {"wide": np.array([1.0, 2.0, 9.0]), "narrow": np.arange(7.0)}  # each keeps its best (floors)
    order = [("narrow", 0), ("narrow", 1), ("narrow", 2), ("narrow", 3), ("wide", 0), ("narrow", 4), ("wide", 1)]
    _s, removed, section = units.fit_target(config, 1000, _ranked_select(order), cost, scores, "heads")
    assert removed == {"narrow": [0, 1, 2, 3, 4]} and section["predicted"] == 1000 - 105
    assert section["score_order_fraction"] == 0.865 and "on top of the score-ordered prefix" in section["band"]
    assert 0.9 * (1 - TOLERANCE) <= section["predicted_fraction"] <= 0.9

    narrow_first = order[:4] + [("wide", 0), ("wide", 1)]
    _s, removed, section = units.fit_target(config, 1000, _ranked_select(narrow_first), cost, scores, "heads")
    assert removed == {"narrow": [0, 1, 2], "wide": [0]} and section["predicted"] == 1000 - 114
    assert "no set on top of the score-ordered prefix" in section["band"]

    apart = {"wide": 70, "narrow": 60}
    _s, removed, section = units.fit_target(config, 1000, _ranked_select(order[4:]), apart, scores, "heads")
    assert removed == {"wide": [0], "narrow": [4]} and section["predicted"] == 1000 - 130  # the score order's
    assert "band" not in section and section["band_missed"] == (
        "heads: no set of the units the floors allow removes between 100 and 118, one costing 70 or 60 parameters"
    )


def two_widths(seed: int = 0):
    """Two attention layers whose heads differ six-fold in cost: 2 heads of 24 dims (3,144 parameters
    each, 28% of the model) and 8 of 4 dims (524 each, 4.6%)."""
    keras.utils.set_random_seed(seed)
    ids = keras.Input((8,), dtype="int32", name="ids")
    x = keras.layers.Embedding(20, 32, name="tokens")(ids)
    x = x + keras.layers.MultiHeadAttention(2, 24, name="wide")(x, x)
    x = x + keras.layers.MultiHeadAttention(8, 4, name="narrow")(x, x)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(ids, keras.layers.Dense(3, name="cls")(x), name="two_widths")


@pytest.mark.slow
def test_heads_of_two_costs_land_in_the_band_where_a_set_does():
    """-g head --target params=0.68 on two_widths: score order removed a wide head and six narrow ones
    (0.443 of the parameters, before this fix); seven narrow heads are 0.675, inside the band, and are
    what the step removes. params=0.65 has no set in its band (3,950 to 4,096 parameters: a wide head
    and one narrow is 3,668, and two narrow more 4,192): the section says so, the score order's
    removal kept (a run's note then adds it to the achieved value, run/target.achieved)."""
    from conftest import step_config

    from prunecli.removal import heads
    from prunecli.structure import targets as targets_mod

    model, dense = two_widths(), 11_283
    found = heads._allowed(model, targets_mod.select(model), step_config("head"))
    scores = heads.score(model, found, step_config("head"), None)
    removed, section = heads._removal(model, found, scores, step_config("head", target="params=0.68"), [])
    assert removed == {"wide": [], "narrow": [0, 1, 2, 3, 4, 6, 7]} and section["predicted"] == dense - 7 * 524
    assert section["score_order_fraction"] < 0.45 and 0.68 * (1 - TOLERANCE) <= section["predicted_fraction"] <= 0.68

    removed, section = heads._removal(model, found, scores, step_config("head", target="params=0.65"), [])
    assert section["predicted"] == dense - 3_144 - 6 * 524 and "band" not in section
    assert "between 3,950 and 4,096, one costing 3,144 or 524 parameters" in section["band_missed"]
