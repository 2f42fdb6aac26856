"""`clipsearch search`, `similar` and `embed` through click's CliRunner."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from clipsearch.style.labels import DEFAULT_STYLE_LABELS
from tests.helpers import draw_image, save_photo

SHAPES = ("circle", "square", "triangle")


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


@pytest.fixture
def dated(run, tiny_model, tmp_path):
    """Six JPEGs: 2022 and 2023, a Canon in Paris and a Fuji without GPS; a PNG of 2010."""
    root = tmp_path / "dated"
    for n, (color, shape) in enumerate([(c, s) for c in ("red", "blue") for s in SHAPES]):
        canon = n % 2 == 0
        save_photo(
            root / f"{color}_{shape}.jpg",
            color,
            shape,
            taken=f"{2022 + n // 3}:07:0{n + 1} 09:15:00",
            offset="+02:00",
            make="Canon" if canon else "FUJIFILM",
            model="EOS R6" if canon else "X-T5",
            gps=(48.8566, 2.3522) if canon else None,
        )
    plain = draw_image(root / "plain.png", "green")
    os.utime(plain, (1_262_304_000, 1_262_304_000))  # 2010: dated by its mtime
    result = run("index", root, "--model", tiny_model, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return root


def names(result) -> set[str]:
    assert result.exit_code == 0, result.output
    return {h["path"].rsplit("/", 1)[1] for h in json.loads(result.output)}


@pytest.mark.parametrize("command", ["search", "similar"])
def test_date_camera_and_place_filters(run, dated, command):
    head = ["search", "a photo"] if command == "search" else ["similar", dated / "plain.png"]
    assert names(run(*head, "--json", "--after", "2023")) == {
        "blue_circle.jpg",
        "blue_square.jpg",
        "blue_triangle.jpg",
    }
    assert names(run(*head, "--json", "--before", "2022-07-03", "--after", "2011")) == {
        "red_circle.jpg",
        "red_square.jpg",
    }
    assert names(run(*head, "--json", "--camera", "FUJI")) == {
        "red_square.jpg",
        "blue_circle.jpg",
        "blue_triangle.jpg",
    }
    assert names(run(*head, "--json", "--near", "48.86,2.35,2", "--after", "2023")) == {
        "blue_square.jpg"
    }
    assert len(names(run(*head, "--json", "--near", "48.86,2.35", "-k", "2"))) == 2
    assert names(run(*head, "--json", "--near", "40.4,-3.7")) == set()
    prefix = dated / "red_"
    assert names(run(*head, "--json", "--prefix", prefix, "--camera", "canon")) == {
        "red_circle.jpg",
        "red_triangle.jpg",
    }


def test_results_show_the_date_and_place(run, dated):
    hits = json.loads(run("search", "x", "-k", "10", "--json").output)
    by_name = {h["path"].rsplit("/", 1)[1]: h for h in hits}
    red = by_name["red_circle.jpg"]
    assert red["taken"] == "2022-07-01T09:15:00+02:00" and red["taken_source"] == "exif"
    assert (red["camera"], red["lat"], red["lon"]) == ("Canon EOS R6", 48.8566, 2.3522)
    assert by_name["plain.png"]["taken_source"] == "mtime"
    assert by_name["plain.png"]["camera"] is None
    lines = run("search", "x", "-k", "10", "--after", "2022").output.splitlines()
    red_line = next(line for line in lines if "red_circle.jpg" in line)
    assert "2022-07-01 09:15" in red_line and "Canon EOS R6" in red_line
    assert "48.85660,2.35220" in red_line
    plain = run("search", "x", "-k", "10").output
    assert "(mtime)" in next(line for line in plain.splitlines() if "plain.png" in line)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--after", "last june"], "after 'last june' is not a date"),
        (["--before", "2023-13-01"], "is not a date"),
        (["--after", "2024", "--before", "2023"], "no photo could match"),
        (["--near", "48.8"], "give LAT,LON or LAT,LON,KM"),
        (["--near", "100,0"], "latitude must be in -90..90"),
        (["--camera", " "], "camera filter is empty"),
    ],
)
def test_bad_filter_values_are_one_line(run, dated, args, message):
    result = run("search", "x", *args)
    assert result.exit_code == 1
    assert result.output.startswith("clipsearch: error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
