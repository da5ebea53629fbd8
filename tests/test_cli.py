"""The command line as a whole: version, help for every command, `python -m prunecli`, shell
completion, the report JSON schema, Markdown output and --auto."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import click
import pytest

from prunecli import __version__
from prunecli.cli import main


def run_python(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, env=full_env)


def test_version(cli):
    for flag in ("--version", "-V"):
        result = cli(flag)
        assert result.exit_code == 0 and f"prunecli, version {__version__}" in result.output


def test_python_dash_m_runs_the_cli():
    proc = run_python("-m", "prunecli", "--version")
    assert proc.returncode == 0 and __version__ in proc.stdout
    proc = run_python("-m", "prunecli", "no-such-command")
    assert proc.returncode == 2 and "No such command" in proc.stderr


@pytest.mark.parametrize("name", sorted(main.commands))
def test_every_command_and_option_has_help(cli, name):
    command = main.commands[name]
    assert command.help and len(command.help.strip()) > 20
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.help, f"{name} {param.opts} has no help text"
    result = cli(name, "--help")
    assert result.exit_code == 0 and f"Usage: main {name}" in result.output
    assert "Examples:" in result.output


def test_top_level_help_lists_the_commands(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for name in ("prune", "sweep", "inspect"):
        assert f"  {name} " in result.output


def test_help_of_every_command_stays_free_of_tensorflow():
    code = (
        "import sys\nfrom click.testing import CliRunner\nfrom prunecli.cli import main\n"
        "for name in main.commands:\n"
        "    assert CliRunner().invoke(main, [name, '--help']).exit_code == 0\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'matplotlib') if m in sys.modules))\n"
    )
    proc = run_python("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    "shell, marker", [("bash", "complete -o nosort -F _prunecli_completion prunecli"), ("zsh", "#compdef prunecli")]
)
def test_shell_completion_scripts(shell, marker):
    proc = run_python("-m", "prunecli", env={"_PRUNECLI_COMPLETE": f"{shell}_source"})
    assert proc.returncode == 0 and marker in proc.stdout


def test_completion_offers_commands_and_options():
    env = {"_PRUNECLI_COMPLETE": "bash_complete", "COMP_WORDS": "prunecli sw", "COMP_CWORD": "1"}
    proc = run_python("-m", "prunecli", env=env)
    assert "sweep" in proc.stdout
    env = {"_PRUNECLI_COMPLETE": "bash_complete", "COMP_WORDS": "prunecli prune --mark", "COMP_CWORD": "2"}
    assert "--markdown" in run_python("-m", "prunecli", env=env).stdout


# --- reports ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pruned_run(mlp_files, tmp_path_factory):
    """One prune of the tiny MLP with data, writing the JSON report and the Markdown summary."""
    from click.testing import CliRunner

    d = tmp_path_factory.mktemp("report")
    args = [
        "prune",
        str(mlp_files["keras"]),
        "-s",
        "0.6",
        "-d",
        str(mlp_files["data"]),
        "-o",
        str(d / "o.keras"),
        "--report",
        str(d / "r.json"),
        "--markdown",
        str(d / "r.md"),
        "--exclude",
        "out",
    ]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return {"output": result.output, "json": json.loads((d / "r.json").read_text()), "md": (d / "r.md").read_text()}


def test_report_json_schema(pruned_run):
    r = pruned_run["json"]
    assert r["schema_version"] == 1 and r["prunecli_version"] == __version__
    assert {"settings", "input", "output", "totals", "layers", "metrics", "timings_s", "notes"} <= set(r)
    assert r["settings"]["sparsity"] == 0.6 and r["settings"]["exclude"] == ["out"]
    assert set(r["input"]) >= {"path", "format", "flavour", "bytes", "gzip_bytes"}
    assert r["output"]["path"].endswith("o.keras") and r["output"]["format"] == "keras"
    assert set(r["totals"]) == {
        "params",
        "nonzeros",
        "sparsity",
        "prunable_params",
        "prunable_nonzeros",
        "prunable_sparsity",
    }
    assert [layer["layer"] for layer in r["layers"]] == ["hidden1", "hidden2"]
    for layer in r["layers"]:
        assert set(layer) == {"name", "layer", "class", "shape", "params", "nonzeros", "sparsity", "requested_sparsity"}
        assert layer["requested_sparsity"] == 0.6
    totals = r["totals"]  # the default scope for element pruning is global: exact over all pruned layers
    assert totals["prunable_params"] - totals["prunable_nonzeros"] == round(0.6 * totals["prunable_params"])
    assert totals["prunable_params"] == sum(layer["params"] for layer in r["layers"])
    assert set(r["metrics"]) >= {"before", "after_pruning"}
    assert set(r["metrics"]["before"]) == {"loss", "accuracy"}
    assert r["timings_s"]["total"] >= r["timings_s"]["evaluate"] > 0


def test_markdown_summary_has_metrics_and_the_layer_table(pruned_run):
    md, r = pruned_run["md"], pruned_run["json"]
    assert md.startswith("## prunecli: `mlp.keras` → `o.keras`")
    assert "### Metrics" in md and "| before |" in md and "| after pruning |" in md
    change = r["metrics"]["after_pruning"]["accuracy"] - r["metrics"]["before"]["accuracy"]
    assert f"{change:+.4f}" in md
    hidden1 = r["layers"][0]
    assert f"| hidden1/kernel | Dense | 20x32 | 640 | {hidden1['nonzeros']} | {hidden1['sparsity']:.1%} | 60.0% |" in md
    assert "**prunable total**" in md and "### Files" in md
    assert "out/kernel" not in md  # excluded layers are not in the table


def test_markdown_and_json_to_stdout(cli, mlp_files, tmp_path):
    result = cli("prune", mlp_files["keras"], "-o", tmp_path / "o.keras", "--markdown", "-", "--no-sizes")
    assert result.exit_code == 0 and result.stdout.startswith("## prunecli")
    assert "Pruned layers" not in result.stdout  # the rich table does not mix into piped Markdown
    result = cli("prune", mlp_files["keras"], "-o", tmp_path / "o.keras", "--report", "-", "--no-sizes")
    assert json.loads(result.stdout)["schema_version"] == 1


def test_markdown_into_a_missing_folder_is_an_output_error(cli, mlp_files, tmp_path):
    result = cli("prune", mlp_files["keras"], "-o", tmp_path / "o.keras", "--markdown", tmp_path / "no" / "r.md")
    assert result.exit_code == 5 and result.output.startswith("prunecli: error:") and "/no" in result.output


def test_terminal_table_is_printed_unless_quiet(pruned_run, cli, mlp_files, tmp_path):
    assert "Pruned layers" in pruned_run["output"] and "hidden1/kernel" in pruned_run["output"]
    result = cli("prune", mlp_files["keras"], "-o", tmp_path / "o.keras", "-q")
    assert result.exit_code == 0 and result.output == ""


# --- --auto ---------------------------------------------------------------------------------------


def test_auto_flag(cli, mlp_files, tmp_path, monkeypatch):
    from prunecli.run import auto

    monkeypatch.setattr(auto, "GRID", (0.4, 0.8))
    monkeypatch.setattr(auto, "PROBES", 3)
    report_path = tmp_path / "r.json"
    result = cli(
        "prune",
        mlp_files["keras"],
        "--auto",
        "-d",
        mlp_files["data"],
        "--max-accuracy-drop",
        "0.03",
        "-o",
        tmp_path / "o.keras",
        "-r",
        report_path,
        "--markdown",
        tmp_path / "r.md",
        "-q",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["settings"]["auto"] is True and report["auto"]["within_budget"] is True
    assert len(report["auto"]["probes"]) == 3 and set(report["auto"]["layer_sparsity"]) == {"hidden1", "hidden2", "out"}
    drop = report["metrics"]["before"]["accuracy"] - report["metrics"]["after_pruning"]["accuracy"]
    assert drop <= 0.03 + 1e-9
    assert "<summary>auto</summary>" in (tmp_path / "r.md").read_text()


def test_auto_needs_data(cli, mlp_files, tmp_path):
    result = cli("prune", mlp_files["keras"], "--auto", "-o", tmp_path / "o.keras")
    assert result.exit_code == 2 and "--auto needs --data" in result.output


def test_the_after_pruning_stage_of_a_fine_tuned_run_says_when_it_was_measured():
    """With fine-tuning, after_pruning is measured when the final sparsity is first reached (two thirds
    into a gradual schedule's training): the tables once called it "after pruning" all the same."""
    from prunecli.outputs.report import stage_label

    tuned = {"before": {}, "after_pruning": {}, "after_finetune": {}}
    assert stage_label("after_pruning", tuned) == "at the final sparsity (during fine-tuning)"
    assert stage_label("after_pruning", {"before": {}, "after_pruning": {}}) == "after pruning"
    assert stage_label("after_finetune", tuned) == "after finetune"
    # a one-shot run measures it before fine-tuning (apply, -g layer, --schedule oneshot): it was labelled
    # 'during fine-tuning' all the same
    assert stage_label("after_pruning", tuned, "oneshot") == "after pruning (before fine-tuning)"
    assert stage_label("after_pruning", tuned, "polynomial") == "at the final sparsity (during fine-tuning)"
    from prunecli.outputs.report import Report, render_markdown

    totals = {"params": 10, "nonzeros": 5, "sparsity": 0.5, "prunable_params": 8, "prunable_nonzeros": 3}
    metrics = {stage: {"loss": 0.5, "accuracy": 0.8} for stage in tuned}
    report = Report(settings={"schedule": "polynomial"}, input={"path": "m.keras", "format": "keras"},
                    totals={**totals, "prunable_sparsity": 0.625}, metrics=metrics,
                    extra={"finetune": {"schedule": "oneshot"}})  # fmt: skip
    assert "| after pruning (before fine-tuning) |" in render_markdown(report)
