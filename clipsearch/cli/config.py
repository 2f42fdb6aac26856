"""The `config` command: the settings in force and where each comes from."""

from __future__ import annotations

import click

from clipsearch.cli.options import json_option, settings
from clipsearch.cli.output import echo_json, echo_path_line
from clipsearch.models.identity import DEFAULT_MODEL, DEFAULT_PRETRAINED


@click.command()
@json_option
@click.pass_context
def config(ctx: click.Context, as_json: bool) -> None:
    """Show the settings in force and where each value comes from.

    Each value comes from the first that gives it: the command-line option; the environment
    (CLIPSEARCH_INDEX); ./indexes/default when it exists (the index only); the config file;
    the built-in default. The config file is clipsearch.toml in the user config folder, or
    the file CLIPSEARCH_CONFIG names:

    \b
        index = "~/photo-index"        # relative paths: to the file's folder
        model = "ViT-B-32"             # with pretrained: for a new index only
        pretrained = "laion2b_s34b_b79k"
        exclude = ["*.tmp", "raw/*"]   # what `clipsearch index` skips without --exclude
    """
    s = settings(ctx)
    if as_json:
        echo_json(s.to_dict())
        return
    found = "" if s.config_found else " (not found)"
    echo_path_line(f"{'config file':12} {s.config_file}{found}")
    echo_path_line(f"{'index':12} {s.index.value} (from: {s.index.source})")
    model = s.model.value or f"{DEFAULT_MODEL} for a new index"
    pretrained = s.pretrained.value or (
        f"{DEFAULT_PRETRAINED} for a new index" if s.model.value is None else "the model's default"
    )
    echo_path_line(f"{'model':12} {model} (from: {s.model.source})")
    echo_path_line(f"{'pretrained':12} {pretrained} (from: {s.pretrained.source})")
    exclude = ", ".join(s.exclude.value) or "-"
    echo_path_line(f"{'exclude':12} {exclude} (from: {s.exclude.source})")
