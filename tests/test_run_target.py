"""--target on the command line: the report's `target` section, `plan --target` (nothing written), the
size= target against the written file, and the combinations refused in one line with exit 2."""

from __future__ import annotations

import json
import os

import pytest
from test_selection_budget import bn_cnn, mlp

from prunecli.config.target import TOLERANCE


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("target_cli")
    mlp().save(folder / "mlp.keras")
    bn_cnn(width=2).save(folder / "cnn.keras")
    return folder


def _snapshot(folder):
    return sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*"))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-s", "0.5"], "--target cannot be combined with --sparsity"),
        (["-g", "element"], "--target removes whole channels: use granularity neuron"),
        (["-g", "block:2x2"], "--target cannot be combined with granularity block:2x2"),
        (["--engine", "tfmot"], "--target cannot be combined with --engine tfmot"),
        (["--scope", "layer"], "--target cannot be combined with --scope layer"),
        (["--normalize", "erk"], "--target cannot be combined with --normalize erk"),
        (["-t", "0.1"], "--target cannot be combined with --threshold"),
    ],
)
def test_bad_combinations_exit_2_in_one_line(cli, files, tmp_path, extra, message):
    result = cli("prune", files / "mlp.keras", "--target", "params=0.5", *extra, "-o", tmp_path / "o.keras")
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.keras").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "params=1.5"], "must be a fraction in (0, 1)"),
        (["--target", "speed=0.5"], "--target takes KIND=VALUE"),
        (["--target", "size=lots"], "needs a file size"),
        (["--round-to", "8"], "--round-to rounds the channel counts --target allocates"),
        (["--target", "params=0.5", "--round-to", "0"], "round_to must be in [1, 1024]"),
    ],
)
def test_bad_values_exit_2_in_one_line(cli, files, tmp_path, args, message):
    result = cli("prune", files / "mlp.keras", *args, "-o", tmp_path / "o.keras")
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_target_exits_2_naming_the_best(cli, files, tmp_path):
    result = cli("prune", files / "mlp.keras", "--target", "params=0.001", "-o", tmp_path / "o.keras", "-q")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "cannot be met" in line and "keep at least 0." in line
    assert not (tmp_path / "o.keras").exists()


def test_report_states_the_target(cli, files, tmp_path):
    out, report = tmp_path / "o.keras", tmp_path / "r.json"
    result = cli("prune", files / "cnn.keras", "--target", "flops=0.4", "--round-to", "8", "-o", out, "-r", report)
    assert result.exit_code == 0, result.output
    section = json.loads(report.read_text())["target"]
    assert section["kind"] == "flops" and section["requested"] == 0.4 and section["round_to"] == 8
    assert 0.4 * (1 - TOLERANCE) <= section["achieved"] <= 0.4
    assert section["achieved"] == section["predicted_fraction"]
    assert all(v["after"] % 8 == 0 for v in section["layers"].values())
    assert "--target flops: achieved 0." in result.output


def test_plan_target_writes_nothing_and_shows_the_allocation(cli, files):
    before = _snapshot(files)
    result = cli("plan", files / "cnn.keras", "--target", "params=0.3", "--json")
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    section = plan["target"]
    assert set(section["layers"]) == {"c0", "c1", "c2", "fc"}
    assert plan["after"]["params"] == section["predicted"] == section["achieved_value"]
    assert 0.3 * (1 - TOLERANCE) <= plan["after"]["params"] / plan["before"]["params"] <= 0.3
    rows = {r["layer"]: r for r in plan["layers"]}
    assert all(rows[name]["units_after"] == v["after"] for name, v in section["layers"].items())
    table = cli("plan", files / "cnn.keras", "--target", "params=0.3")
    assert table.exit_code == 0 and "channels kept per layer: c0 48->" in table.output
    assert "predicted 0.2" in table.output
    assert _snapshot(files) == before


def test_size_target_is_the_written_file(cli, files, tmp_path):
    out, report = tmp_path / "o.keras", tmp_path / "r.json"
    dense = os.path.getsize(files / "cnn.keras")
    want = dense // 3
    result = cli("prune", files / "cnn.keras", "--target", f"size={want}B", "-o", out, "-r", report, "-q")
    assert result.exit_code == 0, result.output
    section = json.loads(report.read_text())["target"]
    assert section["achieved_bytes"] == out.stat().st_size
    assert want * (1 - TOLERANCE) <= out.stat().st_size <= want
    assert section["within_tolerance"] is True
