"""The duplicates command: groups of near-identical images (nothing is deleted)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import click

from clipsearch.cli.options import json_option, open_index
from clipsearch.cli.output import allow_quick_exit, echo_json, echo_path_line
from clipsearch.index.duplicates import DEFAULT_THRESHOLD

if TYPE_CHECKING:
    from clipsearch.index.duplicates import DuplicateGroup


@click.command()
@click.option(
    "--threshold",
    type=float,
    default=DEFAULT_THRESHOLD,
    show_default=True,
    help="Least cosine similarity of two near-identical images, in (0, 1].",
)
@click.option(
    "--prefix",
    "path_prefix",
    metavar="PATH",
    help="Only images whose absolute path starts with this (as for search --prefix).",
)
@json_option
@click.pass_context
def duplicates(
    ctx: click.Context, threshold: float, path_prefix: str | None, as_json: bool
) -> None:
    """Print groups of near-identical images, largest group first.

    Files with the same content are grouped, and so are images whose vectors reach the
    threshold: re-encodes, resizes, crops, small edits, bursts. The image to keep comes
    first in each group, marked "keep": the largest resolution, then the oldest photo (by
    date taken, else modification time). Nothing is deleted. Exact with a flat index;
    other index types find the pairs their search finds.

    \b
        clipsearch duplicates
        clipsearch duplicates --threshold 0.9 --prefix ~/Pictures/2023 --json
    """
    with open_index(ctx) as index:
        groups = index.duplicates(threshold, path_prefix=path_prefix)
    _print_groups(groups, as_json)


def _print_groups(groups: Sequence[DuplicateGroup], as_json: bool) -> None:
    """One block per group: a header line, then `keep` or the similarity to the kept image."""
    allow_quick_exit()
    if as_json:
        echo_json([g.to_dict() for g in groups])
        return
    if not groups:
        click.echo("no duplicates", err=True)
    for n, group in enumerate(groups):
        if n:
            click.echo()
        click.echo(
            f"group {n + 1}: {len(group.members)} images, {group.reason}, "
            f"similarity {group.min_similarity:.4f}-{group.max_similarity:.4f}"
        )
        for i, m in enumerate(group.members):
            mark = "keep  " if i == 0 else ("same  " if m.same_content else f"{m.similarity:.4f}")
            echo_path_line(f"  {mark}  {m.width}x{m.height}  {m.path}")
