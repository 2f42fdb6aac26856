"""Commands that query an index or a model: search, similar, embed."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clipsearch.cli.options import (
    device_options,
    filter_options,
    json_option,
    k_option,
    model_options,
    open_index,
    results_output_options,
    settings,
)
from clipsearch.cli.output import allow_quick_exit, echo_json, echo_path_line, echo_paths
from clipsearch.media.video import format_time, parse_time

if TYPE_CHECKING:
    from clipsearch.index.imageindex import SearchResult


@click.command()
@click.argument("query", required=False)
@click.option(
    "--plus", multiple=True, metavar="TERM", help="Add a term: text, WEIGHT:text or @image."
)
@click.option("--minus", multiple=True, metavar="TERM", help="Subtract a term (repeatable).")
@k_option
@filter_options
@results_output_options
@device_options
@click.pass_context
def search(
    ctx: click.Context,
    query: str | None,
    plus: tuple[str, ...],
    minus: tuple[str, ...],
    k: int,
    min_score: float | None,
    path_prefix: str | None,
    styles: tuple[str, ...],
    after: str | None,
    before: str | None,
    camera: str | None,
    near: str | None,
    as_json: bool,
    paths_only: bool,
    null: bool,
    link_to: Path | None,
    device: str,
    precision: str,
) -> None:
    """Search by text, by image, or a weighted mix.

    A TERM is text ("a red circle"), an image file prefixed with @ ("@photos/cat.jpg"), and
    may start with a weight ("2:sunset"). --plus terms pull results towards them, --minus
    terms push them away; all are combined into one vector.

    \b
        clipsearch search "beach" --plus "2:sunset" --minus "people"
        clipsearch search @photos/cat.jpg --minus "indoors"
        clipsearch search "receipts" -k 50 -0 | xargs -0 cp -t ~/receipts/
        clipsearch search "sunset" -k 50 --link-to ~/sunsets
        clipsearch search "beach" --after 2023-06 --before 2023-09 --near 43.7,7.26,20
    """
    if query is None and not plus:
        raise click.UsageError("give a QUERY or at least one --plus term")
    _check_output_flags(as_json, paths_only, null, link_to)
    with open_index(ctx, device=device, precision=precision) as index:
        hits = index.search(
            query,
            k=k,
            plus=plus,
            minus=minus,
            min_score=min_score,
            path_prefix=path_prefix,
            styles=styles or None,
            after=after,
            before=before,
            camera=camera,
            near=near,
        )
    _hand_over(hits, as_json, paths_only or null, null, link_to)


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.option(
    "--at",
    "at",
    metavar="TIME",
    help="For a video: start from its frame at TIME, in seconds or as M:SS or H:MM:SS "
    "(default: its first frame).",
)
@k_option
@filter_options
@results_output_options
@device_options
@click.pass_context
def similar(
    ctx: click.Context,
    image: Path,
    at: str | None,
    k: int,
    min_score: float | None,
    path_prefix: str | None,
    styles: tuple[str, ...],
    after: str | None,
    before: str | None,
    camera: str | None,
    near: str | None,
    as_json: bool,
    paths_only: bool,
    null: bool,
    link_to: Path | None,
    device: str,
    precision: str,
) -> None:
    """Find images and videos that look like IMAGE (never IMAGE itself).

    IMAGE may be a video, with --at for the moment to start from:

    \b
        clipsearch similar holiday.mp4 --at 1:23
    """
    _check_output_flags(as_json, paths_only, null, link_to)
    with open_index(ctx, device=device, precision=precision) as index:
        hits = index.similar(
            image,
            at=None if at is None else parse_time(at),
            k=k,
            min_score=min_score,
            path_prefix=path_prefix,
            styles=styles or None,
            after=after,
            before=before,
            camera=camera,
            near=near,
        )
    _hand_over(hits, as_json, paths_only or null, null, link_to)


def _check_output_flags(as_json: bool, paths_only: bool, null: bool, link_to: Path | None) -> None:
    """Refuse conflicting flags, and a --link-to folder that would be refused after the search."""
    if as_json and (paths_only or null):
        flag = "-0" if null else "--paths"
        raise click.UsageError(f"{flag} and --json cannot be combined: pick one output")
    if link_to is not None:
        from clipsearch.index.links import check_link_folder

        check_link_folder(link_to)


def _hand_over(
    hits: Sequence[SearchResult], as_json: bool, paths_only: bool, null: bool, link_to: Path | None
) -> None:
    """Link the results into --link-to's folder, if given, then print them."""
    if link_to is not None:
        from clipsearch.index.links import link_results

        report = link_results([h.path for h in hits], link_to)
        echo_path_line(f"{len(report.links)} links in {report.folder}", err=True)
    allow_quick_exit()
    if as_json:
        echo_json([h.to_dict() for h in hits])
    elif paths_only:
        echo_paths([h.path for h in hits], null=null)
    else:
        _print_hits(hits)


def _print_hits(hits: Sequence[SearchResult]) -> None:
    """Print search results, best first: one `score  path[ @ time]  [style]  date  place`
    line each; a date from the file's modification time ends in `(mtime)`."""
    if not hits:
        click.echo("no results", err=True)
    for h in hits:
        style = f"  [{h.style}]" if h.style else ""
        at = f" @ {format_time(h.frame_time)}" if h.frame_time is not None else ""
        echo_path_line(f"{h.score:.4f}  {h.path}{at}{style}{_when_where(h)}")


def _when_where(h: SearchResult) -> str:
    out = ""
    if h.taken:
        out += f"  {h.taken[:16].replace('T', ' ')}"
        out += " (mtime)" if h.taken_source == "mtime" else ""
    if h.camera:
        out += f"  {h.camera}"
    if h.lat is not None and h.lon is not None:
        out += f"  {h.lat:.5f},{h.lon:.5f}"
    return out


@click.command()
@click.option("--text", metavar="TEXT", help="Text to embed.")
@click.option("--image", type=click.Path(path_type=Path), help="Image file to embed.")
@model_options
@device_options
@json_option
@click.pass_context
def embed(
    ctx: click.Context,
    text: str | None,
    image: Path | None,
    model: str | None,
    pretrained: str | None,
    device: str,
    precision: str,
    as_json: bool,
) -> None:
    """Print the normalized embedding of a text or an image.

    Uses the index's model when the index exists and no --model is given; otherwise the given
    (or default) model.
    """
    if (text is None) == (image is None):
        raise click.UsageError("give exactly one of --text or --image")
    from clipsearch.index.oneshot import embed_query
    from clipsearch.index.query import Query

    query = Query.text(text) if text is not None else Query.image(str(image))
    s = settings(ctx, model, pretrained)
    vector = embed_query(
        query,
        index=s.index.value,
        model=s.model.value,
        pretrained=s.pretrained.value,
        device=device,
        precision=precision,
        model_is_default=s.model_is_default,
    )
    if as_json:
        click.echo(json.dumps([float(x) for x in vector]))
    else:
        click.echo(" ".join(f"{x:.6f}" for x in vector))
