"""What every command shares on the way out: the one translation of the library's errors into a
one-line message, lines that hold file paths, JSON, and the progress bar."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable
from typing import Any

import click

from clipsearch.errors import ClipsearchError

_QUICK_EXIT = {"allowed": False}


def allow_quick_exit() -> None:
    """Let :func:`clipsearch.cli.main.run` end the process at once after a successful command:
    for read-only commands whose output is complete once printed."""
    _QUICK_EXIT["allowed"] = True


def quick_exit_allowed() -> bool:
    return _QUICK_EXIT["allowed"]


class Fail(click.ClickException):
    """A one-line runtime error: exit code 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"clipsearch: error: {self.format_message()}", err=True)


class DomainErrorGroup(click.Group):
    """A click group that turns the library's errors (:class:`ClipsearchError`), raised by any
    command below it, into a one-line message and exit code 1: the one place that does."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ClipsearchError as e:
            raise Fail(str(e)) from None


def echo_path_line(line: str, err: bool = False) -> None:
    """Echo a line that holds file paths: a name that is not valid UTF-8 goes out as the raw
    bytes it has on disk (as `ls` and `find` print it to a pipe) instead of failing."""
    click.echo(os.fsencode(line), err=err)


def echo_paths(paths: Iterable[str], null: bool = False) -> None:
    """Echo bare paths, one a line, or each ended by a NUL byte (``null``) for ``xargs -0``;
    as :func:`echo_path_line`, names go out as their bytes on disk."""
    end = b"\0" if null else b"\n"
    for path in paths:
        click.echo(os.fsencode(path) + end, nl=False)


def echo_json(data: Any, indent: int | None = 2) -> None:
    click.echo(json.dumps(data, indent=indent))


class TqdmProgress:
    """Draws a long job's progress with items/s, on a terminal only."""

    def __init__(self, disable: bool = False, desc: str = "indexing"):
        self.disable = disable or not sys.stderr.isatty()
        self.desc = desc
        self.bar: Any = None

    def start(self, total: int) -> None:
        if not self.disable and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="img", desc=self.desc, dynamic_ncols=True)

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
