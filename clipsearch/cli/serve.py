"""The `serve` command: the web page and its JSON API over the index."""

from __future__ import annotations

import click

from clipsearch.cli.options import device_options, open_index


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
@device_options
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, device: str, precision: str) -> None:
    """Search the index in a web browser: a page with thumbnails, and a JSON API.

    Open the address it prints. The page searches by text, by an image dropped on it, or
    finds images similar to one you click. The API is described at /openapi.json and
    browsable at /docs. Needs the web extra: pip install 'clipsearch[web]'.
    """
    from clipsearch import web

    web.require()
    from clipsearch.web import server
    from clipsearch.web.app import create_app

    with open_index(ctx, device=device, precision=precision) as index:
        app = create_app(index, allowed_hosts=server.allowed_hosts(host))
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
