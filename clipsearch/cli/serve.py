"""The `serve` command: the web page and its JSON API over the index."""

from __future__ import annotations

import socket
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import click

from clipsearch.cli.options import device_options, open_index, settings
from clipsearch.cli.watching import batch_printer, settle_option

if TYPE_CHECKING:
    from clipsearch.index.watch import FolderWatcher
    from clipsearch.web.access import Access


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The default lets only this machine in; another address "
    "(0.0.0.0: every network this machine is on) needs the token, and is read-only.",
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
@click.option(
    "--token",
    envvar="CLIPSEARCH_TOKEN",
    metavar="TOKEN",
    help="The token clients must show (the address printed with ?token=, or the header "
    "'Authorization: Bearer TOKEN'). Off this machine, one is made up when none is given; on "
    "127.0.0.1 there is none unless given. [env: CLIPSEARCH_TOKEN]",
)
@click.option(
    "--read-only/--no-read-only",
    default=None,
    help="Refuse every request that would change the index; the server then writes nothing "
    "but its thumbnail cache. [default: on, except on 127.0.0.1]",
)
@click.option(
    "--max-upload",
    type=click.FloatRange(min=0.01),
    metavar="MB",
    help="Largest image a search by upload takes, in MB. [default: 20]",
)
@click.option(
    "--max-k",
    type=click.IntRange(1, 10_000),
    metavar="N",
    help="Most results one request may ask for. [default: 200]",
)
@settle_option
@device_options
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    watch_paths: tuple[Path, ...],
    token: str | None,
    read_only: bool | None,
    max_upload: float | None,
    max_k: int | None,
    settle: float | None,
    device: str,
    precision: str,
) -> None:
    """Search the index in a web browser: a page with thumbnails, and a JSON API.

    Open the address it prints. The page searches by text, by an image dropped on it, or
    finds images similar to one you click. The API is described at /openapi.json and
    browsable at /docs. Needs the web extra: pip install 'clipsearch[web]'.

    To open it from a phone or another computer at home, listen on the network with
    --host 0.0.0.0 and open the address it prints there, token included. No TLS: put a
    reverse proxy with HTTPS in front before letting the internet in.
    """
    from clipsearch import web

    web.require()
    from clipsearch.web import server
    from clipsearch.web.access import Access
    from clipsearch.web.app import create_app

    access = Access.for_host(
        host,
        token=token,
        read_only=read_only,
        max_k=max_k,
        max_upload=None if max_upload is None else round(max_upload * 1024 * 1024),
    )
    if access.read_only and watch_paths:
        raise click.UsageError(
            f"--watch writes to the index, and a server on {host} is read-only: add "
            "--no-read-only (on a network you trust) or leave out --watch"
        )

    with open_index(ctx, device=device, precision=precision) as index, ExitStack() as stack:
        watcher = None
        if watch_paths:
            watcher = folder_watcher(ctx, index.path, watch_paths, settle, device, precision)
            stack.callback(watcher.index.close)
        app = create_app(
            index, allowed_hosts=server.allowed_hosts(host), watcher=watcher, access=access
        )
        sock = server.bind(host, port)
        announce(index.path, index.count, access, sock, host)
        server.run(app, sock)


def announce(index_path: Path, count: int, access: Access, sock: socket.socket, host: str) -> None:
    """Print where to open the page: the token goes in the address only when it was made up
    here (a token the user gave stays out of the terminal and its logs)."""
    from clipsearch.web import server

    def shown(url: str) -> str:
        return access.url(url) if access.token_generated else url

    click.echo(
        f"clipsearch: serving {index_path} ({count} images) at {shown(server.url(sock))} "
        "- press Ctrl+C to stop"
    )
    for url in server.network_urls(sock):
        click.echo(f"clipsearch: on other devices open {shown(url)}")
    if access.token is not None and not access.token_generated:
        click.echo("clipsearch: clients need the token given with --token or CLIPSEARCH_TOKEN")
    if not server.is_loopback(host):
        mode = "read-only" if access.read_only else "NOT read-only"
        click.echo(
            f"clipsearch: listening on {host} ({mode}): whoever has the token can search and "
            "view your photos; the connection is not encrypted (no TLS)",
            err=True,
        )


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
