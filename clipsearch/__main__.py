"""`python -m clipsearch`: the same as the `clipsearch` command."""

from clipsearch.cli.main import run

run()
