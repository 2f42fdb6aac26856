"""The README documents every command and option the CLI has, and every command explains
itself in --help."""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from clipsearch.cli.main import main

README = (Path(__file__).parent.parent / "README.md").read_text()


def commands(group: click.Group = main, prefix: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        path = (*prefix, name)
        yield path, cmd
        if isinstance(cmd, click.Group):
            yield from commands(cmd, path)


ALL = list(commands())


@pytest.mark.parametrize(("path", "cmd"), ALL, ids=[" ".join(p) for p, _ in ALL])
def test_command_is_documented(path, cmd):
    assert cmd.help and len(cmd.help) > 20, f"{' '.join(path)} has no help text"
    assert f"clipsearch {' '.join(path)}" in README, f"README lacks `clipsearch {' '.join(path)}`"
    for param in cmd.params:
        if isinstance(param, click.Option):
            longest = max(param.opts, key=len)
            assert longest in README, f"README lacks {longest} of `{' '.join(path)}`"
            assert param.help, f"{longest} of `{' '.join(path)}` has no help"


def test_global_options_are_documented():
    for param in main.params:
        if isinstance(param, click.Option):
            assert max(param.opts, key=len) in README
    assert "CLIPSEARCH_INDEX" in README
