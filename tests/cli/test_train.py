"""`clipsearch train` through click's CliRunner, on the tiny model and generated pictures."""

from __future__ import annotations

import json

import numpy as np

from tests.helpers import draw_image


def _captioned(folder):
    pairs = [("red", "circle"), ("blue", "square"), ("green", "triangle"), ("yellow", "circle")]
    for i, (color, shape) in enumerate(pairs * 2):
        draw_image(folder / f"{i}.png", color, shape)
        (folder / f"{i}.txt").write_text(f"a {color} {shape}", encoding="utf-8")
    return folder


def test_lock_image_trains_the_text_tower_only(run, tiny_model, tmp_path):
    from clipsearch.models.loading import load_encoder

    data = _captioned(tmp_path / "captioned")
    out = tmp_path / "text-only"
    args = ["--model", tiny_model, "--steps", "3", "--batch-size", "4", "--warmup", "1"]
    result = run("train", data, "--out", out, "--lock-image", "--lr", "1e-2", *args)
    assert result.exit_code == 0, result.output
    before = load_encoder(tiny_model, device="cpu")
    after = load_encoder(f"local-dir:{out}", device="cpu")
    picture = draw_image(tmp_path / "probe.png", "red", "circle")
    np.testing.assert_array_equal(after.encode_file(picture), before.encode_file(picture))
    texts = ["a red circle", "a blue square"]
    assert np.abs(after.encode_texts(texts) - before.encode_texts(texts)).max() > 1e-3


def test_train_command_fine_tunes_a_model_that_loads(run, tiny_model, tmp_path):
    from clipsearch.models.loading import load_encoder

    data = _captioned(tmp_path / "captioned")
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
