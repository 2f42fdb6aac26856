"""`python -m clipsearch`: the same as the `clipsearch` command."""

from .cli import main

main()
