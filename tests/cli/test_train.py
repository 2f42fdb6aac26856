"""`clipsearch train` through click's CliRunner, on the tiny model and generated pictures."""

from __future__ import annotations

import json

from tests.helpers import draw_image


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
