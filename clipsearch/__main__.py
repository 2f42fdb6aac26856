"""`python -m clipsearch`: the same as the `clipsearch` command."""

from .cli import run

run()
