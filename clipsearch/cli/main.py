"""The `clipsearch` command: the group, its global options, and :func:`run`.

The commands live in one module per family (indexing, searching, info, style, serve, train)
and are added to the group here. Exit codes: 0 success, 1 a runtime error (one line on
stderr), 2 a usage error.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from clipsearch.cli.config import config
from clipsearch.cli.duplicates import duplicates
from clipsearch.cli.indexing import index_cmd, reindex, repair
from clipsearch.cli.info import errors, info
from clipsearch.cli.output import DomainErrorGroup, quick_exit_allowed
from clipsearch.cli.searching import embed, search, similar
from clipsearch.cli.serve import serve
from clipsearch.cli.style import classify, style
from clipsearch.cli.train import train
from clipsearch.cli.watching import watch


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


@click.group(cls=DomainErrorGroup, context_settings={"help_option_names": ["-h", "--help"]})
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


for _command in (index_cmd, reindex, repair, search, similar, embed, info, errors):
    main.add_command(_command)
for _command in (watch, duplicates, style, classify, serve, train, config):
    main.add_command(_command)


if __name__ == "__main__":  # python -m clipsearch.cli.main; keep this block last
    main()
