"""The shipped demo model meets its quality bar on pictures it has never seen.

The gallery is drawn with its own seed (``clipsearch.demo.recipe.EVAL_SEED``), apart from the
training and validation seeds, and goes through a JPEG round trip like files on disk.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipsearch.demo import recipe, synth
from clipsearch.demo.build import resize_input
from clipsearch.demo.gallery import QUERY_KINDS, GalleryReport, evaluate_gallery
from clipsearch.demo.stylehead import style_vectors
from clipsearch.errors import ClipsearchError
from clipsearch.models.encoder import Encoder
from clipsearch.models.identity import DEMO_DIR
from clipsearch.models.loading import load_encoder
from clipsearch.style.head import STYLE_DIR, StyleHead

# The weights ship with the package: a missing file is a failure, never a skip.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return load_encoder("demo", device="cpu")


@pytest.fixture(scope="module")
def report(encoder: Encoder) -> GalleryReport:
    assert recipe.EVAL_SEED not in (recipe.TRAIN_SEED, recipe.VAL_SEED)
    return evaluate_gallery(encoder, n=600, seed=recipe.EVAL_SEED)


def test_colour_and_shape_queries(report: GalleryReport):
    kind = report["color+shape"]
    assert kind.queries == len(synth.COLORS) * len(synth.SHAPES)
    assert kind.recall_at_1 >= 0.90, report.table()
    assert kind.recall_at_5 >= 0.98, report.table()


@pytest.mark.parametrize("kind", ["style", "count", "position", "style+count"])
def test_queries_with_style_count_or_position(report: GalleryReport, kind: str):
    assert report[kind].queries >= 50
    assert report[kind].recall_at_5 >= 0.80, report.table()


def _plain(shape: str, color: str, size: int = 160) -> Image.Image:
    """A solid shape on white, drawn the way anyone would with PIL."""
    img = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(img)
    lo, hi = size // 4, size * 3 // 4
    if shape == "circle":
        d.ellipse((lo, lo, hi, hi), fill=color)
    elif shape == "square":
        d.rectangle((lo, lo, hi, hi), fill=color)
    else:
        d.polygon([(size // 2, lo), (hi, hi), (lo, hi)], fill=color)
    return img


PLAIN = [
    ("circle", "red"),
    ("square", "green"),
    ("triangle", "blue"),
    ("square", "red"),
    ("circle", "green"),
    ("circle", "blue"),
    ("triangle", "yellow"),
    ("square", "purple"),
]


@pytest.fixture(scope="module")
def plain_images(encoder: Encoder) -> np.ndarray:
    return encoder.encode_images([_plain(s, c) for s, c in PLAIN])


@pytest.mark.parametrize(("shape", "color"), PLAIN)
def test_plain_pil_drawing_ranks_first(
    encoder: Encoder, plain_images: np.ndarray, shape: str, color: str
):
    images = plain_images
    text = encoder.encode_texts([f"a {color} {shape}"])
    ranking = np.argsort(-(text @ images.T)[0])
    assert PLAIN[int(ranking[0])] == (shape, color), [PLAIN[int(i)] for i in ranking[:3]]


def test_shipped_files(encoder: Encoder):
    files = {p.name for p in DEMO_DIR.iterdir() if p.is_file()}
    assert {"open_clip_config.json", "open_clip_model.safetensors", "metrics.json"} <= files
    total = sum(p.stat().st_size for p in DEMO_DIR.iterdir() if p.is_file())
    assert total < 20e6
    assert encoder.dim == 512 and encoder.image_size == recipe.IMAGE_SIZE
    metrics = json.loads((DEMO_DIR / "metrics.json").read_text())
    assert metrics["architecture"] == recipe.ARCHITECTURE
    assert metrics["gallery"]["seed"] == recipe.EVAL_SEED
    assert set(metrics["gallery"]["kinds"]) == set(QUERY_KINDS)


def test_shipped_style_head_labels_fresh_pictures(encoder: Encoder):
    """The shipped style head names the style of pictures drawn with a seed it never saw."""
    head = StyleHead.load(DEMO_DIR / STYLE_DIR, backbone=encoder.identity.key)
    assert head.labels == synth.STYLES
    seed = 11
    assert seed not in (recipe.TRAIN_SEED, recipe.VAL_SEED, recipe.STYLE_SEED, recipe.FINETUNE_SEED)
    vectors, targets = style_vectors(encoder, 1000, seed)
    predicted = head.predict_proba(vectors).argmax(axis=1)
    accuracy = float((predicted == targets).mean())
    confusion = np.zeros((len(synth.STYLES),) * 2, dtype=int)
    np.add.at(confusion, (targets, predicted), 1)
    assert accuracy >= 0.95, f"accuracy {accuracy:.3f}; confusion (rows true):\n{confusion}"


def test_model_files_stay_small():
    total = sum(p.stat().st_size for p in DEMO_DIR.rglob("*") if p.is_file())
    assert total < 25e6, f"{DEMO_DIR} holds {total / 1e6:.1f} MB"


def test_resize_input_interpolates_the_position_grid_and_keeps_the_rest(tmp_path):
    from safetensors.torch import load_file

    patch = json.loads((DEMO_DIR / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"][
        "patch_size"
    ]
    grid = recipe.IMAGE_SIZE // patch
    size = recipe.IMAGE_SIZE * 3 // 2
    out = resize_input(DEMO_DIR, tmp_path / "demo-larger", size)
    resized = load_encoder(f"local-dir:{out}", device="cpu")
    assert resized.image_size == size

    before = load_file(DEMO_DIR / "open_clip_model.safetensors")
    after = load_file(out / "open_clip_model.safetensors")
    assert set(before) == set(after)
    pos = "visual.positional_embedding"
    bigger = size // patch
    assert before[pos].shape == (1 + grid * grid, 128)
    assert after[pos].shape == (1 + bigger * bigger, 128)
    assert np.array_equal(after[pos][0].numpy(), before[pos][0].float().numpy())  # class token
    for name in set(before) - {pos}:
        assert np.array_equal(after[name].numpy(), before[name].float().numpy()), name

    # The resized model still runs end to end and its text side is untouched.
    rng = synth.sample_rng(1, 0)
    picture = synth.render(synth.random_spec(rng, style="flat"), rng, 128)
    assert resized.encode_images([picture]).shape == (1, 512)
    text = ["a red circle"]
    assert np.allclose(resized.encode_texts(text), load_encoder("demo").encode_texts(text))

    for bad in (size + 1, 0, -patch):
        with pytest.raises(ClipsearchError, match="not a positive multiple of the patch"):
            resize_input(DEMO_DIR, tmp_path / "bad", bad)
