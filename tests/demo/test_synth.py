"""The synthetic shapes generator: determinism, coverage and captions that tell the truth."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.demo import synth
from clipsearch.errors import ClipsearchError

REPO = Path(__file__).resolve().parents[2]


def _pixels(img: Image.Image) -> bytes:
    return img.tobytes()


def test_same_seed_gives_identical_pixels_and_captions():
    a = list(synth.generate(12, seed=11))
    b = list(synth.generate(12, seed=11))
    for x, y in zip(a, b, strict=True):
        assert _pixels(x.image) == _pixels(y.image)
        assert x.caption == y.caption
        assert x.captions == y.captions
        assert x.spec == y.spec


def test_picture_depends_only_on_seed_and_index():
    short = list(synth.generate(4, seed=5))
    long = list(synth.generate(9, seed=5))
    assert _pixels(short[3].image) == _pixels(long[3].image)
    assert short[3].caption == long[3].caption


def test_other_seed_gives_other_pictures():
    a = [_pixels(s.image) for s in synth.generate(6, seed=1)]
    b = [_pixels(s.image) for s in synth.generate(6, seed=2)]
    assert a != b


def test_generator_uses_no_global_random_state():
    import random

    random.seed(123)
    np.random.seed(123)
    list(synth.generate(3, seed=3))
    assert random.random() == random.Random(123).random()
    assert np.random.random() == np.random.RandomState(123).random_sample()


def test_random_draws_cover_every_shape_colour_and_style():
    samples = list(synth.generate(300, seed=0, size=48))
    assert {s.shape for s in samples} == set(synth.SHAPES)
    assert {s.color for s in samples} == set(synth.COLORS)
    assert {s.style for s in samples} == set(synth.STYLES)
    assert {s.count for s in samples} == {1, 2, 3}
    assert {s.position for s in samples} == set(synth.POSITIONS)
    assert "white" in {s.background for s in samples}


def test_balanced_generation_covers_each_combination_once():
    n = len(synth.COLORS) * len(synth.SHAPES) * len(synth.STYLES)
    combos = Counter(
        (s.color, s.shape, s.style) for s in synth.generate(n, seed=4, size=32, balanced=True)
    )
    assert len(combos) == n
    assert set(combos.values()) == {1}


def test_required_vocabulary():
    assert {"circle", "square", "triangle", "star", "heart"} <= set(synth.SHAPES)
    assert len(synth.COLORS) >= 8
    assert {"photo", "cartoon", "sketch", "pixel art"} <= set(synth.STYLES)
    assert "white" in synth.BACKGROUNDS


def _noun_pattern(sample: synth.SynthSample) -> re.Pattern[str]:
    return re.compile(rf"\b{sample.color}\b.*\b{sample.shape}s?\b")


def test_every_caption_names_colour_and_shape():
    for s in synth.generate(60, seed=8, size=32):
        pattern = _noun_pattern(s)
        assert pattern.search(s.caption), s.caption
        assert s.caption in s.captions
        for c in s.captions:
            assert pattern.search(c), c
        plural = s.count > 1
        assert all((f"{s.shape}s" in c) == plural for c in s.captions)


def _spec(**kw: object) -> synth.SynthSpec:
    base = {
        "shape": "circle",
        "color": "red",
        "count": 1,
        "position": "center",
        "size": "medium",
        "style": "flat",
        "background": "white",
    }
    base.update(kw)
    return synth.SynthSpec(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "caption"),
    [
        (_spec(), "a red circle"),
        (_spec(), "one red circle on a white background"),
        (_spec(style="sketch", background="paper"), "a sketch of a red circle"),
        (_spec(shape="star", color="blue", count=2), "two blue stars"),
        (_spec(shape="heart", position="left", size="small"), "a red heart on the left"),
        (_spec(shape="square", color="green", style="pixel art"), "a pixel art green square"),
        (
            _spec(shape="star", color="blue", count=2, style="sketch", background="paper"),
            "a sketch of two blue stars",
        ),
        (_spec(color="orange"), "an orange circle"),
        (_spec(style="photo", size="large"), "a photo of a large red circle"),
        (_spec(count=3, position="top"), "three red circles at the top"),
    ],
)
def test_caption_variants_include_the_usual_phrasings(spec: synth.SynthSpec, caption: str):
    assert caption in synth.caption_variants(spec)


def test_captions_never_state_something_false():
    spec = _spec(shape="star", color="blue", count=2, position="left", style="cartoon")
    variants = synth.caption_variants(spec)
    for wrong in ("red", "circle", "three", "one", "right", "sketch", "pixel", "photo"):
        assert not any(re.search(rf"\b{wrong}\b", v) for v in variants), wrong
    assert all(" a blue star" not in f" {v}" for v in variants)  # plural only


def test_describe_and_stated_facts_agree():
    spec = _spec(shape="heart", count=2, position="left", style="sketch", background="paper")
    assert synth.describe(spec) == "two red hearts"
    assert synth.describe(spec, ["style", "position"]) == "a sketch of two red hearts on the left"
    assert synth.stated_facts(spec, ["style"]) == {
        "color": "red",
        "shape": "heart",
        "style": "sketch",
        "count": 2,
    }
    single = _spec(shape="heart")
    assert synth.stated_facts(single, []) == {"color": "red", "shape": "heart"}
    assert synth.stated_facts(single, ["count", "size"]) == {
        "color": "red",
        "shape": "heart",
        "count": 1,
    }
    with pytest.raises(synth.SynthError, match="cannot mention"):
        synth.describe(spec, ["mood"])


def test_random_specs_are_consistent():
    rng = np.random.default_rng(0)
    for _ in range(400):
        spec = synth.random_spec(rng)
        if spec.style == "sketch":
            assert spec.background == synth.PAPER
        else:
            assert spec.background in synth.BACKGROUNDS
            dist = float(
                np.linalg.norm(
                    np.subtract(synth.COLORS[spec.color], synth.BACKGROUNDS[spec.background])
                )
            )
            assert dist >= 90
        assert spec.size != "large" or (spec.count == 1 and spec.position == "center")


def test_fixed_attributes_are_kept_and_checked():
    rng = np.random.default_rng(1)
    spec = synth.random_spec(rng, shape="star", color="pink", count=3, style="photo")
    assert (spec.shape, spec.color, spec.count, spec.style) == ("star", "pink", 3, "photo")
    with pytest.raises(ClipsearchError, match="unknown shape 'hexagon'"):
        synth.random_spec(rng, shape="hexagon")
    with pytest.raises(synth.SynthError, match="too small"):
        synth.render(spec, rng, size=8)
    with pytest.raises(synth.SynthError):
        list(synth.generate(-1, seed=0))


def test_pictures_are_rgb_of_the_requested_size_and_not_blank():
    for size in (48, 128, 200):
        for s in synth.generate(10, seed=size, size=size):
            assert s.image.mode == "RGB"
            assert s.image.size == (size, size)
            arr = np.asarray(s.image, dtype=np.float32)
            assert arr.std() > 5, (s.style, s.caption)


def test_object_colour_is_really_on_the_picture():
    # The flat style fills shapes with the exact (tinted) colour: the nearest named colour of
    # the most common non-background pixel must be the one in the caption.
    names = list(synth.COLORS)
    palette = np.array([synth.COLORS[n] for n in names], dtype=np.float32)
    for s in synth.generate(40, seed=21, size=64, styles=["flat"]):
        arr = np.asarray(s.image).reshape(-1, 3).astype(np.float32)
        bg = np.array(synth.BACKGROUNDS[s.background], dtype=np.float32)
        fg = arr[np.linalg.norm(arr - bg, axis=1) > 60]
        assert len(fg) > 20
        nearest = np.linalg.norm(fg[:, None, :] - palette[None], axis=2).argmin(axis=1)
        assert names[Counter(nearest.tolist()).most_common(1)[0][0]] == s.color


def test_position_is_where_the_caption_says():
    for s in synth.generate(60, seed=30, size=64, styles=["flat"]):
        arr = np.asarray(s.image).astype(np.float32)
        bg = np.array(synth.BACKGROUNDS[s.background], dtype=np.float32)
        ys, xs = np.nonzero(np.linalg.norm(arr - bg, axis=2) > 60)
        cx, cy = xs.mean() / 64, ys.mean() / 64
        expected = {
            "left": cx < 0.4,
            "right": cx > 0.6,
            "top": cy < 0.4,
            "bottom": cy > 0.6,
            "center": abs(cx - 0.5) < 0.12 and abs(cy - 0.5) < 0.12,
        }[s.position]
        assert expected, (s.position, cx, cy)


def test_write_folder(tmp_path: Path):
    paths = synth.write_folder(tmp_path / "imgs", n=12, seed=2)
    assert len(paths) == 12
    assert all(p.suffix == ".jpg" and p.stat().st_size < 20_000 for p in paths)
    lines = (tmp_path / "imgs" / "captions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["path"] for r in records] == [p.name for p in paths]
    first = next(synth.generate(1, seed=2, balanced=True))
    assert records[0]["caption"] == first.caption
    assert records[0]["style"] == first.style
    with Image.open(paths[0]) as img:
        assert img.size == (128, 128)
    png = synth.write_folder(tmp_path / "png", n=2, seed=2, fmt="png")
    assert [p.suffix for p in png] == [".png", ".png"]
    with pytest.raises(synth.SynthError, match="unknown picture format"):
        synth.write_folder(tmp_path / "x", n=1, seed=0, fmt="gif")


def test_shipped_sample_images_cover_the_world():
    folder = REPO / "sample_images"
    listing = folder / "captions.jsonl"
    records = [json.loads(line) for line in listing.read_text().splitlines() if line]
    assert 100 <= len(records) <= 200
    assert {r["shape"] for r in records} == set(synth.SHAPES)
    assert {r["color"] for r in records} == set(synth.COLORS)
    assert {r["style"] for r in records} == set(synth.STYLES)
    for r in itertools.islice(records, 0, None, 10):
        path = folder / r["path"]
        assert path.is_file() and path.stat().st_size < 20_000


# --- Korean captions ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "mention", "caption"),
    [
        (_spec(), (), "빨간 원"),
        (_spec(shape="star", color="blue", count=2), (), "파란 별 두 개"),
        (
            _spec(shape="heart", color="yellow", style="sketch", background="paper"),
            ("style",),
            "연필로 그린 노란 하트",
        ),
        (
            _spec(shape="square", color="green", position="left"),
            ("position",),
            "왼쪽에 있는 초록 네모",
        ),
        (_spec(count=3, position="top"), ("position",), "위쪽에 있는 빨간 원 세 개"),
        (_spec(), ("count",), "빨간 원 한 개"),
        (_spec(style="photo"), ("style",), "빨간 원의 사진"),
        (_spec(style="cartoon"), ("style",), "만화 스타일의 빨간 원"),
        (_spec(style="pixel art"), ("style",), "픽셀 아트 빨간 원"),
        (_spec(style="flat"), ("style",), "빨간 원의 플랫 일러스트"),
        (_spec(size="small", position="right"), ("size", "position"), "오른쪽에 있는 작은 빨간 원"),
        (_spec(size="large"), ("size", "background"), "흰색 배경의 큰 빨간 원"),
        (
            _spec(shape="star", color="blue", count=2, style="sketch", background="paper"),
            ("style", "count"),
            "연필로 그린 파란 별 두 개",
        ),
    ],
)
def test_korean_captions_in_natural_word_order(
    spec: synth.SynthSpec, mention: tuple[str, ...], caption: str
):
    assert synth.describe(spec, mention, lang="ko") == caption
    assert caption in synth.caption_variants(spec, "ko")


@pytest.mark.parametrize(
    ("spec", "caption"),
    [
        (_spec(shape="star", color="blue", count=2), "두 개의 파란 별"),
        (_spec(shape="star", color="blue", count=2), "파란색 별 둘"),
        (_spec(style="sketch", background="paper"), "빨간 동그라미 스케치"),
        (_spec(style="photo"), "빨간 원을 찍은 사진"),
        (_spec(shape="heart", style="photo"), "빨간 하트를 찍은 사진"),
        (_spec(style="pixel art", position="center"), "가운데에 있는 빨간 원 픽셀 아트"),
        (_spec(color="black", shape="triangle", style="flat"), "검은 세모 클립아트"),
        (_spec(style="cartoon", background="light blue"), "하늘색 바탕 위의 빨간 원 만화 그림"),
    ],
)
def test_korean_variants_include_other_natural_phrasings(spec: synth.SynthSpec, caption: str):
    assert caption in synth.caption_variants(spec, "ko")


def test_korean_captions_never_state_something_false():
    spec = _spec(shape="star", color="blue", count=2, position="left", style="cartoon")
    variants = synth.caption_variants(spec, "ko")
    assert len(variants) > 100
    for wrong in ("빨간", "원", "세 개", "하나", "오른쪽", "연필", "픽셀", "사진", "작은", "큰"):
        assert not any(wrong in v for v in variants), wrong
    assert all(("파란" in v) and ("별" in v) for v in variants)
    assert all(("두 개" in v) or v.endswith("둘") or "둘 " in v for v in variants)


def test_korean_style_names_and_unknown_languages():
    assert [synth.describe_style(s, lang="ko") for s in synth.STYLES] == [
        "사진",
        "만화",
        "연필 스케치",
        "픽셀 아트",
        "플랫 일러스트",
    ]
    for call in (
        lambda: synth.describe(_spec(), lang="fr"),
        lambda: synth.describe_style("photo", lang="fr"),
        lambda: synth.caption_variants(_spec(), "fr"),
    ):
        with pytest.raises(synth.SynthError, match="unknown language 'fr'"):
            call()


def test_english_captions_are_byte_identical_to_before_korean():
    """The English phrasings, their random draws and the captions of generated pictures are what
    they were before Korean captions existed (the shipped samples and models depend on them):
    this digest was taken from the code before the change."""
    digest = hashlib.sha256()
    for i in range(40):
        rng = synth.sample_rng(21, i)
        spec = synth.random_spec(rng)
        for c in synth.caption_variants(spec):
            digest.update(c.encode() + b"\n")
        digest.update(synth.describe(spec, synth.random_mentions(rng), rng).encode() + b"\n")
        digest.update(synth.describe_style(spec.style, rng).encode() + b"\n")
    for s in synth.generate(20, seed=22, size=32):
        digest.update(s.caption.encode() + b"\n")
    assert digest.hexdigest() == "9e04976041c3c1eca9a0a36b05563466a4e265640d29f8f137a4e788d0ad4264"


def test_generated_pictures_carry_a_korean_caption_with_the_same_facts():
    words = {1: ("한 개", "하나"), 2: ("두 개", "둘"), 3: ("세 개", "셋")}
    places = {"left": "왼쪽", "right": "오른쪽", "top": "위쪽", "bottom": "아래쪽"}
    for s in synth.generate(40, seed=9, size=32):
        assert s.caption_ko and not re.search("[a-z]", s.caption_ko), s.caption_ko
        stated_count = re.search(r"\b(one|two|three)\b", s.caption)
        assert bool(stated_count) == any(w in s.caption_ko for w in words[s.count]), s
        if s.position in places:
            stated_place = re.search(r"(on the (left|right)|(at|near) the (top|bottom))", s.caption)
            assert bool(stated_place) == (places[s.position] in s.caption_ko), s
