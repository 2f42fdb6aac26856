"""The `serve` command: the web page and its JSON API over the index."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clipsearch.cli.options import device_options, open_index, settings
from clipsearch.cli.watching import batch_printer, settle_option

if TYPE_CHECKING:
    from clipsearch.index.watch import FolderWatcher


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The default lets only this machine in; any other address "
    "shows your photos to everyone who can reach it, without a login.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8765,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--watch",
    "watch_paths",
    multiple=True,
    metavar="PATH",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Also index this folder and keep indexing it as files appear, change, move and "
    "vanish (repeatable), in the background: a photo saved there shows up in searches once "
    "it is indexed. Needs the watch extra.",
)
@settle_option
@device_options
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    watch_paths: tuple[Path, ...],
    settle: float | None,
    device: str,
    precision: str,
) -> None:
    """Search the index in a web browser: a page with thumbnails, and a JSON API.

    Open the address it prints. The page searches by text, by an image dropped on it, or
    finds images similar to one you click. The API is described at /openapi.json and
    browsable at /docs. Needs the web extra: pip install 'clipsearch[web]'.
    """
    from clipsearch import web

    web.require()
    from clipsearch.web import server
    from clipsearch.web.app import create_app

    with open_index(ctx, device=device, precision=precision) as index, ExitStack() as stack:
        watcher = None
        if watch_paths:
            watcher = folder_watcher(ctx, index.path, watch_paths, settle, device, precision)
            stack.callback(watcher.index.close)
        app = create_app(index, allowed_hosts=server.allowed_hosts(host), watcher=watcher)
        sock = server.bind(host, port)
        click.echo(
            f"clipsearch: serving {index.path} ({index.count} images) at {server.url(sock)} "
            "- press Ctrl+C to stop"
        )
        if not server.is_loopback(host):
            click.echo(
                f"clipsearch: warning: listening on {host}: anyone who can reach this address "
                "can search and view your photos",
                err=True,
            )
        server.run(app, sock)


def folder_watcher(
    ctx: click.Context,
    index_path: Path,
    paths: tuple[Path, ...],
    settle: float | None,
    device: str,
    precision: str,
) -> FolderWatcher:
    """A watcher of ``paths`` with an ImageIndex of its own (the writer) on the served index."""
    from clipsearch.index import watch as watching
    from clipsearch.index.imageindex import ImageIndex

    watching.require()
    writer = ImageIndex.open(index_path, device=device, precision=precision)
    try:
        return watching.FolderWatcher(
            writer,
            paths,
            exclude=settings(ctx).exclude.value,
            settle=watching.DEFAULT_SETTLE if settle is None else settle,
            on_batch=batch_printer(),
        )
    except BaseException:
        writer.close()
        raise
