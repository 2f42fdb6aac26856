"""The group: global options, exit codes, one-line errors, help, and `python -m clipsearch`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from clipsearch.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["search", "x"], 1, "no index at"),
        (["info"], 1, "no index at"),
        (["search"], 2, "give a QUERY"),
        (["embed"], 2, "exactly one of --text or --image"),
        (["index"], 2, "Missing argument"),
        (["index", "/no/such/folder"], 2, "does not exist"),
        (["index", ".", "--model", "no-such-model", "--pretrained", "x"], 1, "unknown model"),
        (["search", "x", "--device", "tpu"], 2, "Invalid value"),
    ],
)
def test_usage_and_runtime_errors(run, args, code, message):
    result = run(*args)
    assert result.exit_code == code
    assert message in result.output
    assert "Traceback" not in result.output


def test_help_for_every_command(run):
    for command in main.list_commands(click.Context(main)):
        result = run(command, "--help", index_dir=None)
        assert result.exit_code == 0 and len(result.output) > 100, command


@pytest.mark.parametrize(
    "args",
    [["style", "stats"], ["style", "apply", "--labels", "a,b"], ["classify", "x", "--labels", "a"]],
)
def test_a_library_error_in_any_command_is_one_line(run, args):
    result = run(*args)
    assert result.exit_code == 1
    assert result.output.startswith("clipsearch: error: ")
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def python_m(*args, module="clipsearch"):
    env_path = {"PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env_path},
    )


def test_python_m_clipsearch_prints_everything_before_its_quick_exit(indexed, tmp_path):
    done = python_m("--index", tmp_path / "idx", "search", "a red circle", "-k", "3", "--json")
    assert done.returncode == 0, done.stderr
    hits = json.loads(done.stdout)
    assert len(hits) == 3 and all(h["path"].startswith(str(indexed)) for h in hits)


@pytest.mark.parametrize("module", ["clipsearch", "clipsearch.cli.main"])
def test_python_m_exit_codes(tmp_path, module):
    missing = python_m("--index", tmp_path / "none", "info", module=module)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().splitlines()[-1].startswith("clipsearch: error: no index at")
    usage = python_m("--index", tmp_path / "none", "search", module=module)
    assert usage.returncode == 2 and "give a QUERY" in usage.stderr
