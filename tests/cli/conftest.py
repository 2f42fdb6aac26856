"""Fixtures of the CLI tests: a CliRunner bound to a temporary index, and an indexed folder."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from clipsearch.cli.main import main


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()
    index = str(tmp_path / "idx")

    def invoke(*args, index_dir=index):
        prefix = ["--index", index_dir] if index_dir else []
        return runner.invoke(main, [*prefix, *map(str, args)], catch_exceptions=False)

    return invoke


@pytest.fixture
def indexed(run, tiny_model, photo_dir):
    result = run("index", photo_dir, "--model", tiny_model, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return photo_dir
