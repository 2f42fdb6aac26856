"""The ``clipsearch`` command line: click commands that parse, call the library and format."""

from clipsearch.cli.main import main, run

__all__ = ["main", "run"]
