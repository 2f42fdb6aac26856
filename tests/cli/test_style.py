"""`clipsearch style ...` and `classify` through click's CliRunner; the labelling itself is
tested in tests/style."""

from __future__ import annotations

import json

from clipsearch.style.labels import DEFAULT_STYLE_LABELS


def test_classify_with_a_model_and_no_index_prints_one_line_per_label(run, tiny_model, photo_dir):
    image = photo_dir / "shapes" / "green_circle.png"
    args = ["classify", image, "--labels", "circle,square,triangle", "--model", tiny_model]
    result = run(*args, index_dir=photo_dir / "no-index")
    assert result.exit_code == 0, result.output
    rows = [line.split() for line in result.output.strip().splitlines()]
    assert sorted(label for _, label in rows) == ["circle", "square", "triangle"]
    probs = [float(p) for p, _ in rows]
    assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1) < 1e-3
    as_json = json.loads(run(*args, "--json", index_dir=photo_dir / "no-index").output)
    assert [p["label"] for p in as_json] == [label for _, label in rows]


def test_style_stats_counts_every_indexed_image(run, indexed):
    result = run("style", "stats")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("labels by ") and lines[-1].split() == ["total", "12"]
    counts = {line.rsplit(maxsplit=1)[0]: int(line.split()[-1]) for line in lines[1:-1]}
    assert sum(counts.values()) == 12 and set(counts) <= set(DEFAULT_STYLE_LABELS)


def test_style_apply_relabels_with_a_new_label_set(run, indexed):
    result = run("style", "apply", "--labels", "photo,sketch")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("labelled 12 images by ") and "(photo, sketch)" in result.output
    stats = json.loads(run("style", "stats", "--json").output)
    assert stats["labels"] == ["photo", "sketch"] and stats["total"] == 12
