"""Every command explains itself in --help, docs/cli.md is that help as of today, and the README
names every command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from clipsearch.cli.main import main
from clipsearch.cli.reference import REGENERATE, render, walk

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
CLI_MD = ROOT / "docs" / "cli.md"

COMMANDS = [ctx for ctx in walk() if ctx.parent is not None]


@pytest.mark.parametrize("ctx", COMMANDS, ids=[ctx.command_path for ctx in COMMANDS])
def test_command_has_help(ctx: click.Context):
    cmd = ctx.command
    assert cmd.help and len(cmd.help) > 20, f"`{ctx.command_path}` has no help text"
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert param.help, f"{max(param.opts, key=len)} of `{ctx.command_path}` has no help"


@pytest.mark.parametrize("ctx", COMMANDS, ids=[ctx.command_path for ctx in COMMANDS])
def test_readme_names_command(ctx: click.Context):
    assert f"`{ctx.command_path}" in README, f"README.md lacks `{ctx.command_path}`"


def test_readme_names_global_options():
    for param in main.params:
        if isinstance(param, click.Option):
            assert max(param.opts, key=len) in README
    assert "CLIPSEARCH_INDEX" in README


def test_walk_reaches_every_command():
    paths = {ctx.command_path for ctx in COMMANDS}
    assert {"clipsearch index", "clipsearch search", "clipsearch style train"} <= paths
    for ctx in COMMANDS:
        assert ctx.command_path.startswith("clipsearch ")


def test_reference_holds_every_option():
    text = render()
    for ctx in COMMANDS:
        assert f"## {ctx.command_path}\n" in text
        for param in ctx.command.params:
            if isinstance(param, click.Option):
                assert max(param.opts, key=len) in text


def test_cli_md_is_current():
    assert CLI_MD.exists(), f"docs/cli.md is missing; generate it: {REGENERATE}"
    stale = f"docs/cli.md is out of date; regenerate it: {REGENERATE}"
    assert CLI_MD.read_text() == render(), stale


def test_generator_runs_as_a_module(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "clipsearch.cli.reference"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "40"},
    )
    assert out.stdout == render()
