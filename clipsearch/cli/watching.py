"""The `watch` command: keep an index current while its folders change."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clipsearch.cli.options import (
    F,
    device_options,
    model_options,
    open_or_create_index,
    settings,
    video_options,
    walk_options,
)
from clipsearch.media.video import VideoOptions

if TYPE_CHECKING:
    from clipsearch.index.pipeline import IndexReport


def settle_option(f: F) -> F:
    return click.option(
        "--settle",
        type=click.FloatRange(min=0),
        default=None,
        metavar="SECONDS",
        help="How long a changed file must stay unchanged (size and modification time) before "
        "it is read, so that a file still being written is not read half done (default: 1).",
    )(f)


def batch_printer() -> Callable[[IndexReport], None]:
    """Prints the first report (the catch-up pass) in full, then one line per batch that
    changed something: the time and what changed."""
    first = True

    def echo_batch(report: IndexReport) -> None:
        nonlocal first
        changes = report.changes()
        if first:
            changes = f"{changes}, unchanged {report.unchanged}".removeprefix("no change, ")
        elif changes == "no change":
            return
        first = False
        click.echo(f"{time.strftime('%H:%M:%S')} {changes}")
        if report.failed:
            click.echo("see `clipsearch errors` for the files that could not be indexed", err=True)

    return echo_batch


@click.command()
@click.argument(
    "paths",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
)
@model_options
@device_options
@walk_options
@settle_option
@video_options
@click.pass_context
def watch(
    ctx: click.Context,
    paths: tuple[Path, ...],
    model: str | None,
    pretrained: str | None,
    device: str,
    precision: str,
    exclude: tuple[str, ...],
    hidden: bool,
    settle: float | None,
    video_interval: float,
    video_max_frames: int,
) -> None:
    """Index folders, then keep the index current as files appear, change, move and vanish.

    First an incremental `clipsearch index` of PATHS, then one line per batch of changes until
    Ctrl+C. The model stays loaded. A file is read once it has stopped changing; one that
    cannot be decoded is listed by `clipsearch errors` and tried again when it changes. Needs
    the watch extra: pip install 'clipsearch[watch]'.
    """
    from clipsearch.index import watch as watching

    watching.require()
    s = settings(ctx, model, pretrained, exclude)
    with open_or_create_index(ctx, s, device=device, precision=precision) as index:
        watcher = watching.FolderWatcher(
            index,
            paths,
            exclude=s.exclude.value,
            include_hidden=hidden,
            video=VideoOptions(video_interval, video_max_frames),
            settle=watching.DEFAULT_SETTLE if settle is None else settle,
            on_batch=batch_printer(),
        )
        click.echo(f"clipsearch: watching {len(watcher.roots)} folder(s) - press Ctrl+C to stop")
        try:
            watcher.run()
        except KeyboardInterrupt:
            click.echo("clipsearch: stopped watching; what was committed is kept", err=True)
