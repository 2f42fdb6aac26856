"""Commands that describe an index: info, errors."""

from __future__ import annotations

import json

import click

from clipsearch.cli.options import json_option, open_index, settings
from clipsearch.cli.output import echo_json, echo_path_line


@click.command()
@json_option
@click.pass_context
def info(ctx: click.Context, as_json: bool) -> None:
    """Show which index is in force and why, what it holds and which model made it."""
    with open_index(ctx) as index:
        data = index.info().to_dict()
    source = settings(ctx).index.source
    if as_json:
        echo_json({**data, "index_source": source})
        return
    echo_path_line(f"index: {data['path']} (from: {source})")
    for key, value in data.items():
        if key == "path":
            continue
        if key == "roots":
            value = ", ".join(value) or "-"
        echo_path_line(f"{key:15} {value}")


@click.command()
@json_option
@click.pass_context
def errors(ctx: click.Context, as_json: bool) -> None:
    """List the files that could not be indexed, and why."""
    with open_index(ctx) as index:
        records = index.errors()
    if as_json:
        click.echo(json.dumps([{"path": r.path, "reason": r.reason, "at": r.at} for r in records]))
        return
    if not records:
        click.echo("no errors", err=True)
    for r in records:
        echo_path_line(f"{r.path}: {r.reason}")
