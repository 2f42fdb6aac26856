"""Where the index lives without --index, the config file, and `clipsearch config`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipsearch.cli.main import main


@pytest.fixture
def config_file() -> Path:
    """The config file the autouse fixture points CLIPSEARCH_CONFIG at."""
    path = Path(os.environ["CLIPSEARCH_CONFIG"])
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def plain(monkeypatch, tmp_path):
    """`clipsearch` as a user runs it: no --index, no CLIPSEARCH_INDEX, from a folder without
    ./indexes/default."""
    monkeypatch.delenv("CLIPSEARCH_INDEX")
    here = tmp_path / "somewhere"
    here.mkdir()
    monkeypatch.chdir(here)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, list(map(str, args)), catch_exceptions=False)

    return invoke


def data_dir_index() -> Path:
    return Path(os.environ["XDG_DATA_HOME"]) / "clipsearch" / "indexes" / "default"


def test_index_in_user_data_dir_found_from_another_folder(
    plain, tiny_model, photo_dir, tmp_path, monkeypatch
):
    first = plain("index", photo_dir, "--model", tiny_model, "--device", "cpu")
    assert first.exit_code == 0, first.output
    assert first.stderr.count("created a new index") == 1
    assert f"created a new index at {data_dir_index()} (from: user data dir)" in first.stderr
    assert "created" not in first.stdout  # stdout stays the report, for scripts
    again = plain("index", photo_dir)
    assert again.exit_code == 0 and "created" not in again.output
    assert "unchanged 12" in again.stdout
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    found = plain("search", "a red circle", "-k", "3", "--json")
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)
    assert len(hits) == 3 and all(h["path"].startswith(str(photo_dir)) for h in hits)
    info = plain("info")
    assert info.stdout.splitlines()[0] == f"index: {data_dir_index()} (from: user data dir)"


def test_local_indexes_default_wins_over_config_and_data_dir(
    plain, tiny_model, photo_dir, config_file
):
    config_file.write_text('index = "configured"\n')
    Path("indexes/default").mkdir(parents=True)
    result = plain("index", photo_dir, "--model", tiny_model, "--device", "cpu")
    assert result.exit_code == 0, result.output
    local = Path.cwd() / "indexes" / "default"
    assert f"created a new index at {local} (from: ./indexes/default exists)" in result.stderr
    assert json.loads(plain("info", "--json").stdout)["index_source"] == (
        "./indexes/default exists"
    )
    assert not (config_file.parent / "configured").exists()


def test_config_file_sets_index_model_and_excludes(plain, tiny_model, photo_dir, config_file):
    config_file.write_text(
        f'index = "my-index"\nmodel = "{tiny_model}"\nexclude = ["shapes", "*.tmp"]\n'
    )
    result = plain("index", photo_dir, "--device", "cpu")
    assert result.exit_code == 0, result.output
    where = config_file.parent / "my-index"
    assert f"created a new index at {where} (from: config file {config_file})" in result.stderr
    info = json.loads(plain("info", "--json").stdout)
    assert info["model"] == tiny_model and info["count"] == 6  # shapes/ skipped
    assert info["index_source"] == f"config file {config_file}"
    # an explicit --exclude replaces the config file's list
    result = plain("index", photo_dir, "--exclude", "*.tmp")
    assert result.exit_code == 0 and "added 6" in result.stdout


def test_config_model_is_for_new_indexes_only(run, indexed, tiny_model, config_file):
    """A config file's model never clashes with an index built before it was set; an explicit
    --model still must match."""
    config_file.write_text('model = "demo"\n')
    result = run("index", indexed)
    assert result.exit_code == 0 and "unchanged 12" in result.stdout
    assert json.loads(run("info", "--json").stdout)["model"] == tiny_model
    clash = run("index", indexed, "--model", "demo")
    assert clash.exit_code == 1 and "was built with model" in clash.stderr
    vector = json.loads(run("embed", "--text", "a red circle", "--json").stdout)
    assert len(vector) == 512  # the index's own model, not the config file's


@pytest.mark.parametrize("command", [["config"], ["info"], ["search", "x"], ["index", "."]])
def test_bad_config_file_is_one_line_and_exit_1(run, config_file, command):
    config_file.write_text('model = "ViT-B-32"\nexlude = ["*.tmp"]\n')
    result = run(*command)
    assert result.exit_code == 1
    assert result.stderr == (
        f"clipsearch: error: config file {config_file}: unknown key 'exlude'; "
        "the keys are index, model, pretrained, exclude\n"
    )
    assert result.stdout == ""


def test_config_command_shows_values_and_sources(plain, config_file):
    config_file.write_text('model = "ViT-B-32"\nexclude = ["*.tmp", "raw/*"]\n')
    from_config = f"(from: config file {config_file})"
    lines = plain("config").stdout.splitlines()
    assert lines == [
        f"config file  {config_file}",
        f"index        {data_dir_index()} (from: user data dir)",
        f"model        ViT-B-32 {from_config}",
        f"pretrained   the model's default {from_config}",
        f"exclude      *.tmp, raw/* {from_config}",
    ]
    data = json.loads(plain("--index", "given", "config", "--json").stdout)
    assert data == {
        "config_file": {"path": str(config_file), "found": True},
        "index": {"value": "given", "source": "--index"},
        "model": {"value": "ViT-B-32", "source": f"config file {config_file}"},
        "pretrained": {"value": None, "source": f"config file {config_file}"},
        "exclude": {"value": ["*.tmp", "raw/*"], "source": f"config file {config_file}"},
    }


def test_config_command_without_a_config_file(plain, monkeypatch, config_file):
    monkeypatch.setenv("CLIPSEARCH_INDEX", "from-env")
    lines = plain("config").stdout.splitlines()
    assert lines[0] == f"config file  {config_file} (not found)"
    assert lines[1] == "index        from-env (from: CLIPSEARCH_INDEX)"
    assert lines[2] == "model        ViT-B-16-quickgelu for a new index (from: built-in default)"
    assert lines[4] == "exclude      - (from: built-in default)"


def test_missing_index_error_says_where_the_folder_came_from(plain):
    result = plain("search", "a dog")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"clipsearch: error: no index at {data_dir_index()}")
    assert result.stderr.endswith("(index from: user data dir)\n")


def test_config_model_is_used_where_there_is_no_index(run, tiny_model, config_file):
    config_file.write_text(f'model = "{tiny_model}"\n')
    given = run("embed", "--text", "a red circle", "--json", "--model", tiny_model)
    from_config = run("embed", "--text", "a red circle", "--json")
    assert from_config.exit_code == 0, from_config.output
    # the same model (the NumPy text tower may answer one of the two: equal up to rounding)
    pairs = zip(json.loads(from_config.stdout), json.loads(given.stdout), strict=True)
    cosine = sum(a * b for a, b in pairs)
    assert cosine > 0.999
    config_file.write_text('model = "no-such-model-xyz"\n')
    result = run("embed", "--text", "a red circle")
    assert result.exit_code == 1 and "no-such-model-xyz" in result.stderr
