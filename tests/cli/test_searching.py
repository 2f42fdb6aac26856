"""`clipsearch search`, `similar` and `embed` through click's CliRunner."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipsearch.style.labels import DEFAULT_STYLE_LABELS


def test_search_json_contract(run, indexed):
    result = run("search", "a red circle", "-k", "3", "--json")
    assert result.exit_code == 0
    hits = json.loads(result.output)
    assert len(hits) == 3
    for h in hits:
        assert {"path", "score", "id", "style", "style_score"} <= h.keys()
        assert h["path"].startswith("/")
        assert h["style"] in DEFAULT_STYLE_LABELS and 0 < h["style_score"] <= 1
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)


def test_search_text_output_and_options(run, indexed):
    result = run("search", "x", "--plus", "2:y", "--minus", "z", "-k", "2")
    assert result.exit_code == 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and all(line.split()[1].startswith("/") for line in lines)
    prefix = indexed / "shapes"
    hits = json.loads(run("search", "x", "-k", "50", "--prefix", prefix, "--json").output)
    assert len(hits) == 6
    assert run("search", "x", "--min-score", "2", "--json").output.strip() == "[]"


def test_similar_excludes_itself(run, indexed):
    img = indexed / "shapes" / "green_circle.png"
    hits = json.loads(run("similar", img, "-k", "50", "--json").output)
    assert len(hits) == 11 and str(img) not in {h["path"] for h in hits}


def test_embed_text_and_image(run, indexed, tiny_model):
    vec = json.loads(run("embed", "--text", "a red circle", "--json").output)
    assert len(vec) == 512 and abs(np.linalg.norm(vec) - 1) < 1e-5
    img = indexed / "shapes" / "green_circle.png"
    ivec = json.loads(run("embed", "--image", img, "--json").output)
    assert len(ivec) == 512 and abs(np.linalg.norm(ivec) - 1) < 1e-5
    # Without an index, with an explicit model.
    other = json.loads(
        run(
            "embed",
            "--text",
            "a red circle",
            "--model",
            tiny_model,
            "--json",
            index_dir="/nonexistent/idx",
        ).output
    )
    assert np.allclose(vec, other, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "x", "-k", "0"], "k must be at least 1"),
        (["search", ""], "empty"),
        (["similar", "/no/such.jpg"], "no such file"),
    ],
)
def test_bad_input_on_an_index(run, indexed, args, message):
    result = run(*args)
    assert result.exit_code == 1
    assert result.output.startswith("clipsearch: error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_embed_image_that_is_not_an_image(run, indexed, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    result = run("embed", "--image", bad)
    assert result.exit_code == 1 and "not an image" in result.output
