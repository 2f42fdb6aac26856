"""The `clipsearch` command: the group, its global options, and :func:`run`.

The commands live in one module per family (indexing, searching, info, style, serve, train)
and are added to the group here. Exit codes: 0 success, 1 a runtime error (one line on
stderr), 2 a usage error.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import click

from clipsearch.cli.output import DomainErrorGroup, quick_exit_allowed

# Each command's module, imported only when the command runs (or --help lists them all): a
# search does not pay for what indexing, serving or training import.
COMMANDS = {
    "index": "indexing:index_cmd",
    "reindex": "indexing:reindex",
    "repair": "indexing:repair",
    "search": "searching:search",
    "similar": "searching:similar",
    "embed": "searching:embed",
    "info": "info:info",
    "errors": "info:errors",
    "watch": "watching:watch",
    "duplicates": "duplicates:duplicates",
    "style": "style:style",
    "classify": "style:classify",
    "serve": "serve:serve",
    "train": "train:train",
    "config": "config:config",
}


class LazyGroup(DomainErrorGroup):
    """The group whose commands are imported from :data:`COMMANDS` when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS and name not in self.commands:
            module, attr = COMMANDS[name].split(":")
            command = getattr(importlib.import_module(f"clipsearch.cli.{module}"), attr)
            self.add_command(command, name)
        return super().get_command(ctx, name)


def run() -> None:
    """The `clipsearch` console command: :func:`main`, then, after a search, an immediate
    exit. Tearing down torch and open_clip at interpreter exit is a large share of a cold
    search, and a search holds nothing that needs closing once its results are printed."""
    try:
        main()
    except SystemExit as e:
        if quick_exit_allowed() and e.code in (0, None):
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        raise


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--index",
    "index_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Index directory. Default: $CLIPSEARCH_INDEX, else ./indexes/default when it exists, "
    "else the config file's index, else indexes/default in the user data folder; "
    "`clipsearch config` shows which.",
)
@click.version_option(package_name="clipsearch")
@click.pass_context
def main(ctx: click.Context, index_dir: Path | None) -> None:
    """Semantic search for your own photos.

    Index a folder once, then search it by text, by example image, or both:

    \b
        clipsearch index ~/Pictures
        clipsearch search "a dog on the beach"
        clipsearch similar ~/Pictures/dog.jpg
    """
    ctx.ensure_object(dict)
    ctx.obj["index"] = index_dir


if __name__ == "__main__":  # python -m clipsearch.cli.main; keep this block last
    main()
