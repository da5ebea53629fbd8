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
        {"model_path": str(path), "output": str(out), "granularity": "neuron", "target": "latency=0.85"}, environ={}
    )
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
