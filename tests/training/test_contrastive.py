"""train_clip end to end, on a tiny CLIP and synthetic data (real open_clip, no mocks)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from clipsearch.demo import synth
from clipsearch.errors import ClipsearchError, TrainingError
from clipsearch.models.loading import load_encoder
from clipsearch.training.contrastive import (
    PairDataset,
    latest_checkpoint,
    load_pairs,
    match_matrix,
    train_clip,
)
from tests.training.helpers import (
    STYLE_LABELS,
    TINY_CFG,
    colour_shape_stream,
    pairs,
    train_config,
    two_style_stream,
    write_image,
)


@pytest.mark.slow
def test_training_lowers_the_loss_and_learns_retrieval(tmp_path: Path):
    val = pairs(180, seed=99)
    config = train_config(
        tmp_path, steps=240, batch_size=48, warmup_steps=20, checkpoint_every=120, eval_every=120
    )
    result = train_clip(config, colour_shape_stream, val_data=val, progress=False)

    assert result.steps == 240 and len(result.losses) == 240
    first, last = np.mean(result.losses[:20]), np.mean(result.losses[-20:])
    assert last < first - 1.0, (first, last)

    # Chance: a caption has about 180/45 = 4 matching pictures out of 180.
    relevant = match_matrix(val).T
    distinct = {p.caption: i for i, p in enumerate(val)}
    per_caption = relevant[list(distinct.values())].sum(axis=1)
    chance_r5 = float(np.mean(1 - (1 - per_caption / len(val)) ** 5))
    assert result.metrics is not None
    assert result.metrics.text_to_image_r5 > max(0.5, 3 * chance_r5), result.metrics
    assert result.metrics.image_to_text_r5 > 0.5, result.metrics
    assert [s for s, _ in result.history] == [120, 240]

    # The exported folder is an open_clip local-dir model that clipsearch loads.
    out = result.output_dir
    cfg = json.loads((out / "open_clip_config.json").read_text())
    assert cfg["model_cfg"] == TINY_CFG
    assert cfg["preprocess_cfg"]["size"] == [32, 32]
    encoder = load_encoder(f"local-dir:{out}", device="cpu")
    assert encoder.dim == 64 and encoder.image_size == 32
    assert 1.0 < encoder.logit_scale <= 100.0
    texts = encoder.encode_texts(["a red circle", "a blue square"])
    images = encoder.encode_images([val[0].image])
    assert texts.shape == (2, 64) and images.shape == (1, 64)
    assert result.checkpoint is not None and result.checkpoint.name == "step_0000240.pt"


def test_resume_continues_exactly_where_the_checkpoint_left_off(tmp_path: Path):
    data = PairDataset(tuple(pairs(64, seed=5)), "memory")
    settings = {"steps": 12, "checkpoint_every": 6, "keep_checkpoints": 3}
    full = train_clip(train_config(tmp_path, **settings), data, progress=False)
    checkpoints = tmp_path / "model" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_0000006.pt", "step_0000012.pt"]

    (checkpoints / "step_0000012.pt").unlink()  # as if the run had died after step 6
    resumed = train_clip(train_config(tmp_path, resume=True, **settings), data, progress=False)
    assert resumed.start_step == 6 and resumed.steps == 12
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_auxiliary_label_loss_shapes_the_image_embedding(tmp_path: Path):
    config = train_config(tmp_path, steps=120, batch_size=32, label_weight=1.0, **STYLE_LABELS)
    result = train_clip(config, two_style_stream, progress=False)
    assert result.label_accuracy["style"] >= 0.9

    # The classifier is not exported, but what it taught the embedding is: a nearest-centroid
    # rule on fresh pictures' embeddings from the exported model tells the styles apart.
    encoder = load_encoder(f"local-dir:{result.output_dir}", device="cpu")
    fresh = list(itertools.islice(two_style_stream(77), 80))
    vectors = encoder.encode_images([p.image for p in fresh])
    styles = np.array([p.image_facts["style"] == "flat" for p in fresh])
    fit, held = slice(0, 40), slice(40, 80)
    centroids = np.stack([vectors[fit][styles[fit] == c].mean(axis=0) for c in (False, True)])
    predicted = (vectors[held] @ centroids.T).argmax(axis=1).astype(bool)
    assert np.mean(predicted == styles[held]) >= 0.9

    plain = train_clip(train_config(tmp_path / "plain", steps=2), two_style_stream, progress=False)
    assert plain.label_accuracy == {}


def test_resume_restores_the_auxiliary_classifier(tmp_path: Path):
    settings = {"steps": 8, "checkpoint_every": 4, "keep_checkpoints": 3, "label_weight": 0.5}
    data = PairDataset(tuple(itertools.islice(two_style_stream(3), 64)), "memory")
    full = train_clip(train_config(tmp_path, **settings, **STYLE_LABELS), data, progress=False)
    (tmp_path / "model" / "checkpoints" / "step_0000008.pt").unlink()
    resumed = train_clip(
        train_config(tmp_path, resume=True, **settings, **STYLE_LABELS), data, progress=False
    )
    assert resumed.start_step == 4
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4, atol=1e-5)


def test_resume_needs_a_matching_checkpoint(tmp_path: Path):
    data = pairs(32, seed=1)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train_clip(train_config(tmp_path, resume=True), data, progress=False)
    train_clip(train_config(tmp_path, steps=2), data, progress=False)
    assert latest_checkpoint(train_config(tmp_path)) is not None
    with pytest.raises(TrainingError, match="belongs to another run.*seed"):
        train_clip(train_config(tmp_path, steps=4, seed=7, resume=True), data, progress=False)


def test_trains_on_a_folder_skipping_unreadable_pictures(tmp_path: Path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(6):
        caption = write_image(folder / f"img{i}.png", i)
        (folder / f"img{i}.txt").write_text(caption + "\n")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "broken.txt").write_text("a broken picture")
    assert len(load_pairs(folder)) == 7

    result = train_clip(train_config(tmp_path, steps=3, batch_size=4), folder, progress=False)
    assert result.skipped_images >= 1  # broken.jpg cannot be decoded: skipped, counted
    assert (result.output_dir / "open_clip_model.safetensors").is_file()


def test_trains_on_a_csv_listing(tmp_path: Path):
    paths = synth.write_folder(tmp_path / "imgs", n=6, seed=3, size=40)
    rows = ["image,text"] + [f"imgs/{p.name},picture {i}" for i, p in enumerate(paths)]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    result = train_clip(
        train_config(tmp_path, steps=2, batch_size=4), tmp_path / "pairs.csv", progress=False
    )
    assert result.steps == 2 and result.samples_seen == 8


def test_bad_data_raises_training_errors(tmp_path: Path):
    with pytest.raises(TrainingError, match="does not exist"):
        train_clip(train_config(tmp_path), tmp_path / "captions.jsonl", progress=False)
    with pytest.raises(TrainingError, match="empty"):
        train_clip(train_config(tmp_path), [], progress=False)
    with pytest.raises(TrainingError, match="has 1 usable pair"):
        train_clip(train_config(tmp_path), pairs(1, seed=0), progress=False)

    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for i in range(3):
        (unreadable / f"{i}.jpg").write_bytes(b"GIF89a garbage")
        (unreadable / f"{i}.txt").write_text("a picture")
    with pytest.raises(TrainingError, match="could not be read"):
        train_clip(train_config(tmp_path, batch_size=2), unreadable, progress=False)

    assert issubclass(TrainingError, ClipsearchError)


def test_lock_image_trains_the_text_tower_and_leaves_the_image_tower_as_it_was(tmp_path: Path):
    from safetensors.torch import load_file

    start = train_clip(train_config(tmp_path / "a", steps=2), colour_shape_stream, progress=False)
    locked = train_config(
        tmp_path / "b", model=f"local-dir:{start.output_dir}", steps=6, lock_image=True
    )
    result = train_clip(locked, colour_shape_stream, progress=False)

    before = load_file(start.output_dir / "open_clip_model.safetensors")
    after = load_file(result.output_dir / "open_clip_model.safetensors")
    assert set(before) == set(after)
    visual = [k for k in before if k.startswith("visual.")]
    changed = [k for k in before if not np.array_equal(before[k].numpy(), after[k].numpy())]
    assert visual and not set(visual) & set(changed)
    assert "token_embedding.weight" in changed and "text_projection" in changed
    assert "logit_scale" in changed

    # The image embeddings are exactly those of the starting weights.
    image = next(colour_shape_stream(3)).image
    a = load_encoder(f"local-dir:{start.output_dir}", device="cpu").encode_images([image])
    b = load_encoder(f"local-dir:{result.output_dir}", device="cpu").encode_images([image])
    assert np.array_equal(a, b)


def test_lock_image_needs_trained_weights_and_no_label_loss(tmp_path: Path):
    with pytest.raises(TrainingError, match="lock_image freezes"):
        train_config(tmp_path, lock_image=True, label_weight=1.0, **STYLE_LABELS)
    with pytest.raises(TrainingError, match="random weights"):
        train_clip(train_config(tmp_path, lock_image=True), colour_shape_stream, progress=False)
