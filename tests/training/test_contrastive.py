"""The contrastive trainer, on a tiny CLIP and synthetic data (real open_clip, no mocks)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from clipsearch.demo import synth
from clipsearch.errors import ClipsearchError, TrainingError
from clipsearch.models.loading import load_encoder
from clipsearch.training.contrastive import (
    CaptionedImage,
    PairDataset,
    TrainConfig,
    contrastive_loss,
    latest_checkpoint,
    load_pairs,
    match_matrix,
    recall_at_k,
    train_clip,
)

TINY = "clipsearch-test-tiny"
TINY_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module", autouse=True)
def tiny_arch(tmp_path_factory: pytest.TempPathFactory) -> str:
    if open_clip.get_model_config(TINY) is None:
        path = tmp_path_factory.mktemp("arch") / f"{TINY}.json"
        path.write_text(json.dumps(TINY_CFG))
        open_clip.add_model_config(path)
    return TINY


def _config(tmp_path: Path, **kw: object) -> TrainConfig:
    settings: dict[str, object] = {
        "output_dir": tmp_path / "model",
        "model": TINY,
        "steps": 20,
        "batch_size": 16,
        "lr": 2e-3,
        "warmup_steps": 5,
        "checkpoint_every": 0,
        "val_size": 0,
        "num_threads": 1,
    }
    settings.update(kw)
    return TrainConfig(**settings)  # type: ignore[arg-type]


def _pair(spec: synth.SynthSpec, rng: np.random.Generator, size: int = 32) -> CaptionedImage:
    return CaptionedImage(
        synth.render(spec, rng, size),
        synth.describe(spec),
        spec.facts(),
        synth.stated_facts(spec, ()),
    )


def colour_shape_stream(seed: int) -> Iterator[CaptionedImage]:
    """Single flat or cartoon shapes captioned "a red circle": 45 captions to learn."""
    for i in itertools.count():
        rng = synth.sample_rng(seed, i)
        style = ("flat", "cartoon")[i % 2]
        yield _pair(synth.random_spec(rng, count=1, style=style, position="center"), rng)


def _pairs(n: int, seed: int) -> list[CaptionedImage]:
    return list(itertools.islice(colour_shape_stream(seed), n))


@pytest.mark.slow
def test_training_lowers_the_loss_and_learns_retrieval(tmp_path: Path):
    val = _pairs(180, seed=99)
    config = _config(
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
    data = PairDataset(tuple(_pairs(64, seed=5)), "memory")
    full = train_clip(
        _config(tmp_path, steps=12, checkpoint_every=6, keep_checkpoints=3), data, progress=False
    )
    checkpoints = tmp_path / "model" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step_0000006.pt", "step_0000012.pt"]

    (checkpoints / "step_0000012.pt").unlink()  # as if the run had died after step 6
    resumed = train_clip(
        _config(tmp_path, steps=12, checkpoint_every=6, keep_checkpoints=3, resume=True),
        data,
        progress=False,
    )
    assert resumed.start_step == 6 and resumed.steps == 12
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4, atol=1e-5)


def two_style_stream(seed: int) -> Iterator[CaptionedImage]:
    """Flat and sketched shapes whose captions never state the style."""
    for i in itertools.count():
        rng = synth.sample_rng(seed, i)
        style = ("flat", "sketch")[i % 2]
        yield _pair(synth.random_spec(rng, count=1, style=style, position="center"), rng)


STYLE_LABELS = {"labels": {"style": ("flat", "sketch")}}


@pytest.mark.slow
def test_auxiliary_label_loss_shapes_the_image_embedding(tmp_path: Path):
    config = _config(tmp_path, steps=120, batch_size=32, label_weight=1.0, **STYLE_LABELS)
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

    plain = train_clip(_config(tmp_path / "plain", steps=2), two_style_stream, progress=False)
    assert plain.label_accuracy == {}


def test_resume_restores_the_auxiliary_classifier(tmp_path: Path):
    settings = {"steps": 8, "checkpoint_every": 4, "keep_checkpoints": 3, "label_weight": 0.5}
    data = PairDataset(tuple(itertools.islice(two_style_stream(3), 64)), "memory")
    full = train_clip(_config(tmp_path, **settings, **STYLE_LABELS), data, progress=False)
    (tmp_path / "model" / "checkpoints" / "step_0000008.pt").unlink()
    resumed = train_clip(
        _config(tmp_path, resume=True, **settings, **STYLE_LABELS), data, progress=False
    )
    assert resumed.start_step == 4
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4, atol=1e-5)


def test_resume_needs_a_matching_checkpoint(tmp_path: Path):
    data = _pairs(32, seed=1)
    with pytest.raises(TrainingError, match="nothing to resume"):
        train_clip(_config(tmp_path, resume=True), data, progress=False)
    train_clip(_config(tmp_path, steps=2), data, progress=False)
    assert latest_checkpoint(_config(tmp_path)) is not None
    with pytest.raises(TrainingError, match="belongs to another run.*seed"):
        train_clip(_config(tmp_path, steps=4, seed=7, resume=True), data, progress=False)


def _write_image(path: Path, seed: int) -> str:
    sample = next(synth.generate(1, seed=seed, size=40))
    sample.image.save(path)
    return sample.caption


def test_folder_with_sidecar_captions(tmp_path: Path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    captions = {}
    for i in range(6):
        path = folder / ("sub" if i % 2 else ".") / f"img{i}.png"
        captions[path.resolve()] = _write_image(path, i)
        path.with_suffix(".txt").write_text(captions[path.resolve()] + "\n")
    _write_image(folder / "no_caption.png", 10)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "broken.txt").write_text("a broken picture")

    dataset = load_pairs(folder)
    assert dataset.skipped == 1  # no_caption.png
    assert len(dataset) == 7
    got = {Path(p.image).resolve(): p.caption for p in dataset.items}
    assert {k: v for k, v in got.items() if k.name != "broken.jpg"} == captions

    result = train_clip(_config(tmp_path, steps=3, batch_size=4), folder, progress=False)
    assert result.skipped_images >= 1  # broken.jpg cannot be decoded: skipped, counted
    assert (result.output_dir / "open_clip_model.safetensors").is_file()


def test_jsonl_and_csv_listings(tmp_path: Path):
    paths = synth.write_folder(tmp_path / "imgs", n=6, seed=3, size=40)
    records = [
        json.loads(x) for x in (tmp_path / "imgs" / "captions.jsonl").read_text().split("\n") if x
    ]

    from_jsonl = load_pairs(tmp_path / "imgs" / "captions.jsonl")
    assert [Path(p.image) for p in from_jsonl.items] == paths
    assert [p.caption for p in from_jsonl.items] == [r["caption"] for r in records]

    # A folder without sidecars falls back to its captions.jsonl.
    assert [p.caption for p in load_pairs(tmp_path / "imgs").items] == [
        r["caption"] for r in records
    ]

    csv_path = tmp_path / "pairs.csv"
    rows = ["image,text"] + [f'imgs/{r["path"]},"{r["caption"]}, really"' for r in records]
    rows.append("imgs/missing.jpg,a missing picture")
    csv_path.write_text("\n".join(rows) + "\n")
    from_csv = load_pairs(csv_path)
    assert from_csv.skipped == 1
    assert [p.caption for p in from_csv.items] == [r["caption"] + ", really" for r in records]

    result = train_clip(_config(tmp_path, steps=2, batch_size=4), from_csv, progress=False)
    assert result.steps == 2


def test_bad_datasets_raise_training_errors(tmp_path: Path):
    with pytest.raises(TrainingError, match="does not exist"):
        load_pairs(tmp_path / "nowhere")
    with pytest.raises(TrainingError, match="does not exist"):
        train_clip(_config(tmp_path), tmp_path / "captions.jsonl", progress=False)

    no_captions = tmp_path / "no_captions"
    no_captions.mkdir()
    _write_image(no_captions / "a.png", 0)
    with pytest.raises(TrainingError, match=r"no captions.*a\.txt"):
        load_pairs(no_captions)

    empty_dir = tmp_path / "empty_dir"
    empty_dir.mkdir()
    with pytest.raises(TrainingError, match="no images"):
        load_pairs(empty_dir)

    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(TrainingError, match="no usable pairs"):
        load_pairs(empty)

    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"path": "a.png", "caption": "x"}\n{oops\n')
    with pytest.raises(TrainingError, match=r"bad\.jsonl:2: not valid JSON"):
        load_pairs(bad_json)

    wrong_keys = tmp_path / "keys.jsonl"
    wrong_keys.write_text('{"file_name": "a.png", "label": "x"}\n')
    with pytest.raises(TrainingError, match="needs a path"):
        load_pairs(wrong_keys)

    with pytest.raises(TrainingError, match="unknown format"):
        load_pairs(bad_json.rename(tmp_path / "bad.txt"))

    with pytest.raises(TrainingError, match="empty"):
        train_clip(_config(tmp_path), [], progress=False)

    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for i in range(3):
        (unreadable / f"{i}.jpg").write_bytes(b"GIF89a garbage")
        (unreadable / f"{i}.txt").write_text("a picture")
    with pytest.raises(TrainingError, match="could not be read"):
        train_clip(_config(tmp_path, batch_size=2), unreadable, progress=False)

    assert issubclass(TrainingError, ClipsearchError)


def test_invalid_settings():
    with pytest.raises(TrainingError, match="batch_size must be at least 2"):
        TrainConfig(output_dir="x", batch_size=1)
    with pytest.raises(TrainingError, match="precision must be one of"):
        TrainConfig(output_dir="x", precision="fp8")
    with pytest.raises(TrainingError, match="auxiliary label loss needs labels"):
        TrainConfig(output_dir="x", label_weight=1.0)
    with pytest.raises(TrainingError, match="needs at least two distinct classes"):
        TrainConfig(output_dir="x", label_weight=1.0, labels={"style": ("a", "a")})
    with pytest.raises(TrainingError, match="label_weight must be >= 0"):
        TrainConfig(output_dir="x", label_weight=-1.0)


def test_loss_equals_open_clip_cliploss_without_duplicates():
    gen = torch.Generator().manual_seed(0)
    img = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(8, 16, generator=gen), dim=-1)
    scale = torch.tensor(20.0)
    expected = open_clip.ClipLoss()(img, txt, scale)
    assert torch.allclose(contrastive_loss(img, txt, scale), expected, atol=1e-6)
    eye = torch.eye(8, dtype=torch.bool)
    assert torch.allclose(contrastive_loss(img, txt, scale, eye), expected, atol=1e-6)
    # A second positive per row changes the target, so the loss differs.
    two = eye | torch.roll(eye, 1, dims=1)
    assert not torch.allclose(contrastive_loss(img, txt, scale, two), expected)


def test_match_matrix_uses_facts_or_identical_captions():
    red = Image.new("RGB", (8, 8))
    plain = CaptionedImage(red, "a red circle", {"color": "red", "shape": "circle"}, {})
    items = [
        CaptionedImage(
            red,
            "a red circle",
            {"color": "red", "shape": "circle", "count": 2},
            {"color": "red", "shape": "circle"},
        ),
        CaptionedImage(
            red,
            "two red circles",
            {"color": "red", "shape": "circle", "count": 2},
            {"color": "red", "shape": "circle", "count": 2},
        ),
        CaptionedImage(
            red,
            "one red circle",
            {"color": "red", "shape": "circle", "count": 1},
            {"color": "red", "shape": "circle", "count": 1},
        ),
    ]
    m = match_matrix(items)  # m[image, caption]
    assert m.tolist() == [[True, True, False], [True, True, False], [True, False, True]]
    by_text = match_matrix([plain, CaptionedImage(red, "A red  circle"), CaptionedImage(red, "x")])
    assert by_text.tolist() == [[True, True, False], [True, True, False], [False, False, True]]


def test_recall_at_k():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    relevant = np.array([[False, False, True], [True, False, False]])
    assert recall_at_k(scores, relevant, (1, 2)) == {1: 0.0, 2: 1.0}
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_at_k(scores, np.zeros_like(relevant))
