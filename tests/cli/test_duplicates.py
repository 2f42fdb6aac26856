"""`clipsearch duplicates` through click's CliRunner: text and JSON, options, bad input."""

from __future__ import annotations

import hashlib
import json

import pytest

from tests.helpers import draw_image, draw_near_duplicates


@pytest.fixture
def dups(run, tmp_path):
    files = draw_near_duplicates(tmp_path / "photos")
    result = run("index", tmp_path / "photos", "--model", "demo", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return files


def test_text_output_lists_groups_keep_first(run, dups):
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in dups.values()}
    result = run("duplicates")
    assert result.exit_code == 0, result.output
    blocks = result.output.strip().split("\n\n")
    assert len(blocks) == 2
    head, *members = blocks[0].splitlines()
    assert head.startswith("group 1: 5 images, similar, similarity 0.9")
    assert members[0].split() == ["keep", "128x128", str(dups["base"].resolve())]
    assert members[2].split()[0] == "same"  # the byte-identical copy
    assert [m.split()[-1] for m in members] == [
        str(dups[n].resolve()) for n in ("base", "jpeg", "copy", "crop", "small")
    ]
    assert blocks[1].splitlines()[0].startswith("group 2: 2 images, same content")
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in dups.values()} == before


def test_json_output_and_options(run, dups):
    groups = json.loads(run("duplicates", "--json").output)
    assert [len(g["members"]) for g in groups] == [5, 2]
    keep = groups[0]["members"][0]
    assert keep["path"] == str(dups["base"].resolve()) and keep["similarity"] == 1.0
    assert {"id", "width", "height", "size", "mtime", "same_content"} <= keep.keys()
    strict = json.loads(run("duplicates", "--json", "--threshold", "0.99").output)
    assert str(dups["crop"].resolve()) not in {m["path"] for g in strict for m in g["members"]}
    under_b = json.loads(run("duplicates", "--json", "--prefix", dups["jpeg"].parent).output)
    assert [[m["path"] for m in g["members"]] for g in under_b] == [
        [str(dups["jpeg"].resolve()), str(dups["crop"].resolve())]
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--threshold", "0"], "threshold must be in (0, 1]"),
        (["--threshold", "1.5"], "threshold must be in (0, 1]"),
        (["--prefix", "/not/indexed/anywhere"], "outside the indexed folders"),
    ],
)
def test_bad_input_is_one_line(run, dups, args, message):
    result = run("duplicates", *args)
    assert result.exit_code == 1
    assert result.output.startswith("clipsearch: error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_no_duplicates_says_so(run, tmp_path):
    draw_image(tmp_path / "p" / "a.png", "red", "circle")
    draw_image(tmp_path / "p" / "b.png", "blue", "square")
    assert run("index", tmp_path / "p", "--model", "demo", "--device", "cpu").exit_code == 0
    result = run("duplicates")
    assert result.exit_code == 0 and "no duplicates" in result.output
    assert run("duplicates", "--json").output.strip() == "[]"
