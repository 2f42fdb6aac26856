"""`search` and `similar` for pipes and file managers: --paths, -0 and --link-to."""

from __future__ import annotations

import json
import os

import pytest

from clipsearch.index.links import RECORD_NAME


def ranked_paths(run, *args):
    return [h["path"] for h in json.loads(run(*args, "--json").output)]


@pytest.mark.parametrize(
    "args",
    [("search", "a red circle", "-k", "4"), ("similar", "{img}", "-k", "4")],
)
def test_paths_and_nul_separated_paths(run, indexed, args):
    args = [a.format(img=indexed / "shapes" / "green_circle.png") for a in args]
    expected = ranked_paths(run, *args)
    assert len(expected) == 4
    lines = run(*args, "--paths")
    assert lines.exit_code == 0 and lines.stdout.splitlines() == expected
    for flag in ("-0", "--null"):
        nul = run(*args, flag)  # implies --paths
        assert nul.exit_code == 0
        assert nul.stdout_bytes == b"".join(os.fsencode(p) + b"\0" for p in expected)
        assert b"\n" not in nul.stdout_bytes
    assert run(*args, "-0", "--paths").stdout_bytes == nul.stdout_bytes


def test_paths_without_results_print_nothing(run, indexed):
    result = run("search", "x", "--min-score", "2", "--paths")
    assert result.exit_code == 0 and result.stdout == ""
    assert run("search", "x", "--min-score", "2", "-0").stdout_bytes == b""


@pytest.mark.parametrize("flags", [["--paths", "--json"], ["-0", "--json"], ["--json", "--null"]])
def test_conflicting_output_flags(run, indexed, flags):
    result = run("search", "x", *flags)
    assert result.exit_code == 2
    assert "cannot be combined" in result.output and "--json" in result.output


def test_link_to_fills_refreshes_and_refuses(run, indexed, tmp_path):
    target = tmp_path / "viewer" / "results"
    first = run("search", "a red circle", "-k", "3", "--link-to", target, "--paths")
    assert first.exit_code == 0
    paths = first.stdout.splitlines()
    links = sorted(n for n in os.listdir(target) if n != RECORD_NAME)
    assert [n[:4] for n in links] == ["001-", "002-", "003-"]
    assert [os.readlink(target / n) for n in links] == paths
    assert [n[4:] for n in links] == [os.path.basename(p) for p in paths]
    assert "3 links in" in first.stderr

    image = indexed / "shapes" / "green_circle.png"
    again = run("similar", image, "-k", "2", "--link-to", target)
    assert again.exit_code == 0
    assert len([n for n in os.listdir(target) if n != RECORD_NAME]) == 2

    (target / "notes.txt").write_text("mine")
    refused = run("search", "a blue square", "--link-to", target)
    assert refused.exit_code == 1
    assert refused.output.startswith("clipsearch: error: ") and "notes.txt" in refused.output
    assert len(refused.output.strip().splitlines()) == 1
    assert (target / "notes.txt").read_text() == "mine"
    assert len(os.listdir(target)) == 4  # two links, the record, the user's file
    # Refused before the index is even opened: no search is wasted.
    early = run("search", "x", "--link-to", target, index_dir=tmp_path / "no-index")
    assert early.exit_code == 1 and "notes.txt" in early.output


def test_link_to_a_file_is_refused(run, indexed, tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("keep")
    result = run("search", "x", "--link-to", a_file)
    assert result.exit_code == 2  # click.Path(file_okay=False)
    assert a_file.read_text() == "keep"
