"""Options are declared once (PruneConfig's field metadata) and every command and option is documented.

Like sqlite-utils' test_docs.py: a flag added without a README line, or a setting nothing reads, fails here.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import click
import pytest

from prunecli.cli import main
from prunecli.config import PruneConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
FIELDS = dataclasses.fields(PruneConfig)


def _options():
    for name, command in main.commands.items():
        for param in command.params:
            if isinstance(param, click.Option):
                for flag in param.opts:
                    if flag.startswith("--"):
                        yield name, flag


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_is_in_the_readme(command):
    assert f"prunecli {command}" in README


@pytest.mark.parametrize(("command", "flag"), sorted(set(_options())))
def test_every_option_is_in_the_readme(command, flag):
    if flag == "--help":
        return
    assert re.search(rf"{re.escape(flag)}(?![\w-])", README), f"{command} {flag} is not documented in README.md"


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_every_setting_is_a_flag_or_recipe_only(f):
    meta = f.metadata
    assert meta.get("help"), f"{f.name} has no help text"
    if f.name == "model_path":
        return  # the MODEL argument of every command
    settings_commands = ("prune", "plan", "sweep")
    offered = [n for n in settings_commands if any(p.name == f.name for p in main.commands[n].params)]
    assert sorted(offered) == sorted(meta["commands"]), f"{f.name}: commands {offered} vs declared {meta['commands']}"


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_every_setting_is_read_somewhere(f):
    """No option that nothing reads: the field's name is used outside the config package."""
    sources = [p for p in (ROOT / "prunecli").rglob("*.py") if p.relative_to(ROOT / "prunecli").parts[0] != "config"]
    pattern = re.compile(rf"\.{f.name}\b|[\"']{f.name}[\"']")
    assert any(pattern.search(p.read_text(encoding="utf-8")) for p in sources), f"nothing reads {f.name}"


def test_readme_option_table_is_current():
    from prunecli.cli import options_markdown

    table = README.split("<!-- options:start -->\n", 1)[1].split("<!-- options:end -->", 1)[0]
    assert table.strip() == options_markdown().strip(), "README option table is stale: run `make docs`"
