"""Every CLI command through click's CliRunner: exit codes, output and the JSON contract."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch.cli.main import main
from clipsearch.style.labels import DEFAULT_STYLE_LABELS
from tests.helpers import draw_image


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


def test_index_prints_a_summary(run, tiny_model, photo_dir):
    result = run("index", photo_dir, "--model", tiny_model)
    assert result.exit_code == 0
    assert "added 12, updated 0, moved 0, removed 0, unchanged 0, failed 0" in result.output
    result = run("index", photo_dir, "--json")
    assert json.loads(result.output)["unchanged"] == 12


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


def test_info_and_errors_json(run, indexed, tiny_model):
    (indexed / "bad.jpg").write_text("<html><body>not an image</body></html>")
    run("index", indexed)
    info = json.loads(run("info", "--json").output)
    assert info["count"] == 12 and info["dim"] == 512 and info["index_type"] == "flat"
    assert info["model"] == tiny_model and "pretrained" in info
    errors = json.loads(run("errors", "--json").output)
    assert errors == [
        {
            "path": str(indexed / "bad.jpg"),
            "reason": "not an image (an HTML page)",
            "at": errors[0]["at"],
        }
    ]
    assert "bad.jpg: not an image" in run("errors").output
    assert "count" in run("info").output


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


def test_index_env_var(tmp_path, tiny_model, photo_dir, monkeypatch):
    monkeypatch.setenv("CLIPSEARCH_INDEX", str(tmp_path / "from-env"))
    runner = CliRunner()
    assert runner.invoke(main, ["index", str(photo_dir), "--model", tiny_model]).exit_code == 0
    assert (tmp_path / "from-env" / "catalog.sqlite").is_file()


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


def test_model_mismatch_via_cli(run, indexed, tmp_path):
    from tests.helpers import save_tiny_model

    other = save_tiny_model(tmp_path / "other", seed=9)
    result = run("index", indexed, "--model", f"local-dir:{other}")
    assert result.exit_code == 1 and "was built with model" in result.output


def test_embed_image_that_is_not_an_image(run, indexed, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    result = run("embed", "--image", bad)
    assert result.exit_code == 1 and "not an image" in result.output


def test_help_for_every_command(run):
    for command in main.commands:
        result = run(command, "--help", index_dir=None)
        assert result.exit_code == 0 and len(result.output) > 100, command


def test_new_image_found_in_search_after_reindex(run, indexed):
    draw_image(indexed / "late.png", "orange", "circle")
    run("index", indexed)
    paths = {h["path"] for h in json.loads(run("search", "x", "-k", "50", "--json").output)}
    assert str(indexed / "late.png") in paths


def test_train_command_fine_tunes_a_model_that_loads(run, tiny_model, tmp_path):
    from clipsearch.models.loading import load_encoder

    data = tmp_path / "captioned"
    for i, (color, shape) in enumerate(
        [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle")] * 2
    ):
        draw_image(data / f"{i}.png", color, shape)
        (data / f"{i}.txt").write_text(f"a {color} {shape}")
    out = tmp_path / "trained"
    result = run(
        "train",
        data,
        "--out",
        out,
        "--model",
        tiny_model,
        "--steps",
        "3",
        "--batch-size",
        "4",
        "--warmup",
        "1",
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["steps"] == 3 and summary["final_loss"] > 0
    enc = load_encoder(f"local-dir:{out}", device="cpu")
    assert enc.encode_texts(["a red circle"]).shape == (1, 512)


def test_train_command_bad_data(run, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("train", tmp_path / "empty", "--out", tmp_path / "o")
    assert result.exit_code == 1
    assert result.output.startswith("clipsearch: error: ") and "Traceback" not in result.output
