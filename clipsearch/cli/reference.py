"""The command reference, docs/cli.md, rendered from the commands' own --help.

Regenerate it after changing a command or its help text::

    python -m clipsearch.cli.reference > docs/cli.md

tests/test_docs.py fails while docs/cli.md differs from what this module renders.
"""

from __future__ import annotations

from collections.abc import Iterator

import click

from clipsearch.cli.main import main
from clipsearch.demo.cli import cli as demo_cli

PROG = "clipsearch"
DEMO_PROG = "python -m clipsearch.demo"
# A fixed width, so that the text does not depend on the terminal that renders it.
WIDTH = 100
REGENERATE = "python -m clipsearch.cli.reference > docs/cli.md"


def walk(
    command: click.Command = main, name: str = PROG, parent: click.Context | None = None
) -> Iterator[click.Context]:
    """Yield a context for `command` and for every command below it, depth first, by name.

    Args:
        command: The command or group to start from.
        name: The name it is invoked by.
        parent: The context of the group it belongs to (None for the top).
    """
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    ctx = click.Context(command, info_name=name, parent=parent, **settings)
    yield ctx
    if isinstance(command, click.Group):
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, sub_name, ctx)


def render(command: click.Command = main) -> str:
    """The Markdown reference of `command` and all its subcommands, as in docs/cli.md; for
    the clipsearch command, followed by the demo model's build commands."""
    parts = [
        "# Command reference",
        "",
        f"Generated from each command's `--help` by `{REGENERATE}`; do not edit it by hand.",
        *_sections(command, PROG),
    ]
    if command is main:
        parts += [
            "",
            "# Rebuilding the demo model",
            "",
            f"`{DEMO_PROG}` builds, fine-tunes and measures the shipped demo model "
            "(see docs/demo-model.md).",
            *_sections(demo_cli, DEMO_PROG),
        ]
    return "\n".join(parts) + "\n"


def _sections(command: click.Command, name: str) -> Iterator[str]:
    for ctx in walk(command, name):
        yield from ("", f"## {ctx.command_path}", "", "```text", ctx.get_help(), "```")


if __name__ == "__main__":  # python -m clipsearch.cli.reference > docs/cli.md
    click.echo(render(), nl=False)
