"""A deterministic generator of captioned pictures of simple shapes.

The synthetic world is small on purpose: a few shapes in a few colours, drawn one to three at a
time in one of five styles, at one of five positions, on one of a few backgrounds. Every picture
comes with captions that state some of its attributes in varied wording ("a red circle",
"a sketch of two blue stars", "a red heart on the left on a white background"), in English or,
with ``lang="ko"``, in Korean ("빨간 원", "연필로 그린 파란 별 두 개"). The demo model (see
:mod:`clipsearch.demo.build`) is trained and evaluated on this world.

All randomness comes from a NumPy generator seeded per picture, so ``generate(n, seed)`` gives
the same pixels and captions on every run, and any picture can be made without the ones before.

Example::

    from clipsearch.demo import synth

    for sample in synth.generate(3, seed=0):
        print(sample.caption, sample.style)
    synth.write_folder("sample_images", n=150, seed=0)
"""

from __future__ import annotations

import io
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from clipsearch.errors import ClipsearchError
from clipsearch.store.fileio import atomic_write

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "heart")
COLORS: Mapping[str, tuple[int, int, int]] = {
    "red": (212, 30, 38),
    "orange": (247, 137, 22),
    "yellow": (246, 214, 28),
    "green": (36, 158, 62),
    "blue": (34, 82, 214),
    "purple": (128, 48, 170),
    "pink": (246, 128, 190),
    "brown": (122, 74, 36),
    "black": (24, 24, 24),
}
STYLES: tuple[str, ...] = ("photo", "cartoon", "sketch", "pixel art", "flat")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
SIZES: tuple[str, ...] = ("small", "medium", "large")
COUNTS: tuple[int, ...] = (1, 2, 3)
BACKGROUNDS: Mapping[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light gray": (214, 214, 214),
    "dark gray": (72, 72, 76),
    "beige": (236, 222, 194),
    "light blue": (198, 224, 246),
    "light green": (208, 238, 204),
}
PAPER = "paper"
"""The background of every sketch: off-white drawing paper."""

#: Attributes a caption may mention besides colour and shape, which every caption names.
OPTIONAL_MENTIONS: tuple[str, ...] = ("style", "count", "position", "background", "size")

T = TypeVar("T")
_PAPER_RGB = (242, 236, 220)
_COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
_SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
_RADIUS = {"small": (0.08, 0.11), "medium": (0.12, 0.17), "large": (0.20, 0.29)}
_POSITION_PHRASES = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "center": ("in the center", "in the middle"),
}
_STYLE_PREFIXES = {
    "photo": ("a photo of {}", "a photograph of {}", "a realistic photo of {}"),
    "cartoon": ("a cartoon of {}", "a cartoon drawing of {}", "{} in cartoon style"),
    "sketch": ("a sketch of {}", "a pencil sketch of {}", "a pencil drawing of {}"),
    "pixel art": ("pixel art of {}", "a pixel art image of {}", "{} in pixel art style"),
    "flat": ("a flat illustration of {}", "clip art of {}", "a simple flat drawing of {}"),
}
# "a pixel art green square": the style as an adjective right after the count word.
_STYLE_ADJECTIVES = {
    "photo": "realistic",
    "cartoon": "cartoon",
    "sketch": "sketched",
    "pixel art": "pixel art",
    "flat": "flat",
}
_STYLE_WEIGHTS = {"photo": 0.22, "cartoon": 0.2, "sketch": 0.2, "pixel art": 0.2, "flat": 0.18}
_COUNT_WEIGHTS = {1: 0.5, 2: 0.25, 3: 0.25}
_MIN_CONTRAST = 95.0  # RGB distance between object and background colours
# How often a random caption mentions each optional attribute.
_MENTION_RATES = {"style": 0.5, "count": 0.3, "position": 0.45, "background": 0.25, "size": 0.3}

LANGUAGES: tuple[str, ...] = ("en", "ko")
"""The languages captions can be written in: English and Korean."""

# Korean captions: the same facts in natural Korean word order, modifiers before the noun and
# the count after it ("왼쪽에 있는 파란 별 두 개"). The first phrasing of each slot is the plainest.
_KO_COLORS = {
    "red": ("빨간", "빨간색"),
    "orange": ("주황색", "주황"),
    "yellow": ("노란", "노란색"),
    "green": ("초록", "초록색"),
    "blue": ("파란", "파란색"),
    "purple": ("보라색", "보라"),
    "pink": ("분홍색", "분홍"),
    "brown": ("갈색", "밤색"),
    "black": ("검은", "검은색"),
}
_KO_SHAPES = {
    "circle": ("원", "동그라미"),
    "square": ("네모", "정사각형"),
    "triangle": ("삼각형", "세모"),
    "star": ("별", "별 모양"),
    "heart": ("하트", "하트 모양"),
}
# A count follows the noun ("별 두 개", "별 둘") or precedes it ("두 개의 별").
_KO_COUNTS = {
    1: (" 한 개", " 하나", "한 개의 "),
    2: (" 두 개", " 둘", "두 개의 "),
    3: (" 세 개", " 셋", "세 개의 "),
}
_KO_SIZE_WORDS = {"small": ("작은", "조그만"), "large": ("큰", "커다란")}
_KO_POSITION_PHRASES = {
    "left": ("왼쪽에 있는", "왼쪽의"),
    "right": ("오른쪽에 있는", "오른쪽의"),
    "top": ("위쪽에 있는", "위쪽의"),
    "bottom": ("아래쪽에 있는", "아래쪽의"),
    "center": ("가운데에 있는", "중앙에 있는"),
}
_KO_BACKGROUNDS = {
    "white": "흰색",
    "light gray": "밝은 회색",
    "dark gray": "어두운 회색",
    "beige": "베이지색",
    "light blue": "하늘색",
    "light green": "연두색",
}
_KO_PAPER = ("종이 위의", "도화지 위의")
_KO_BACKGROUND_FORMS = ("{} 배경의", "{} 바탕 위의")
# "{}" is the whole noun phrase; "{}을" takes the object particle that fits its last syllable.
_KO_STYLE_FORMS = {
    "photo": ("{}의 사진", "{} 사진", "{}을 찍은 사진"),
    "cartoon": ("만화 스타일의 {}", "만화로 그린 {}", "{} 만화 그림"),
    "sketch": ("연필로 그린 {}", "{} 스케치", "{} 연필 스케치"),
    "pixel art": ("픽셀 아트 {}", "픽셀 아트로 그린 {}", "{} 픽셀 아트"),
    "flat": ("{}의 플랫 일러스트", "{} 클립아트", "단순하게 그린 {}"),
}
_KO_STYLE_NAMES = {
    "photo": ("사진", "실사 사진", "사실적인 사진"),
    "cartoon": ("만화", "만화 그림", "만화 스타일 그림"),
    "sketch": ("연필 스케치", "스케치", "연필 그림"),
    "pixel art": ("픽셀 아트", "픽셀 그림", "도트 그림"),
    "flat": ("플랫 일러스트", "클립아트", "단순한 평면 그림"),
}


class SynthError(ClipsearchError):
    """A synthetic picture was asked for with an attribute value that does not exist."""


@dataclass(frozen=True)
class SynthSpec:
    """What one synthetic picture shows.

    Attributes:
        shape: one of :data:`SHAPES`.
        color: one of :data:`COLORS`.
        count: how many copies of the shape, 1 to 3.
        position: where the group sits, one of :data:`POSITIONS`.
        size: ``small``, ``medium`` or ``large``; how large each copy is.
        style: one of :data:`STYLES`.
        background: one of :data:`BACKGROUNDS`, or ``paper`` for sketches.
    """

    shape: str
    color: str
    count: int
    position: str
    size: str
    style: str
    background: str

    def facts(self) -> dict[str, str | int]:
        """The attributes as a plain dict, keyed by field name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True, eq=False)
class SynthSample:
    """One generated picture with its captions.

    Attributes:
        image: the picture, an RGB PIL image.
        caption: one caption drawn at random from the valid phrasings.
        captions: every valid phrasing, sorted; each names colour and shape.
        style: the rendering style (``photo``, ``cartoon``, ``sketch``, ``pixel art``, ``flat``).
        shape: the shape drawn.
        color: the colour of the shapes.
        count: how many shapes, 1 to 3.
        position: where the shapes sit.
        background: the background's name.
        size: ``small``, ``medium`` or ``large``.
        caption_ko: the same facts as ``caption`` in Korean; empty when the caption was given.
    """

    image: Image.Image
    caption: str
    captions: tuple[str, ...]
    style: str
    shape: str
    color: str
    count: int
    position: str
    background: str
    size: str
    caption_ko: str = ""

    @property
    def spec(self) -> SynthSpec:
        """The attributes of this sample without the picture and captions."""
        return SynthSpec(
            shape=self.shape,
            color=self.color,
            count=self.count,
            position=self.position,
            size=self.size,
            style=self.style,
            background=self.background,
        )


def sample_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator for picture ``index`` of the stream ``seed``.

    Args:
        seed: the stream's seed, a non-negative integer.
        index: the picture's position in the stream.
    """
    return np.random.default_rng([seed, index])


def random_spec(
    rng: np.random.Generator,
    *,
    shape: str | None = None,
    color: str | None = None,
    count: int | None = None,
    position: str | None = None,
    size: str | None = None,
    style: str | None = None,
    background: str | None = None,
) -> SynthSpec:
    """Draw the attributes of one picture; any attribute given is kept as is.

    The background is redrawn until it contrasts with the object colour, sketches always sit
    on paper, and a size too large for the layout (``large`` with two objects) is replaced by
    one that fits.

    Args:
        rng: the random generator to draw from.
        shape: fix the shape.
        color: fix the colour.
        count: fix the number of objects.
        position: fix the position.
        size: fix the size; ignored when it does not fit the count and position.
        style: fix the style.
        background: fix the background; ignored for sketches, which are on paper.

    Raises:
        SynthError: a fixed attribute has a value that is not in this world.
    """
    _check("shape", shape, SHAPES)
    _check("color", color, tuple(COLORS))
    _check("count", count, COUNTS)
    _check("position", position, POSITIONS)
    _check("size", size, SIZES)
    _check("style", style, STYLES)
    _check("background", background, (*BACKGROUNDS, PAPER))
    shape = shape or _pick(rng, SHAPES)
    color = color or _pick(rng, tuple(COLORS))
    count = count or _pick_weighted(rng, _COUNT_WEIGHTS)
    position = position or _pick(rng, POSITIONS)
    style = style or _pick_weighted(rng, _STYLE_WEIGHTS)
    fitting = _fitting_sizes(count, position)
    if size not in fitting:
        size = _pick(rng, fitting)
    if style == "sketch":
        background = PAPER
    elif background is None or background == PAPER:
        choices = [b for b in BACKGROUNDS if _contrast(COLORS[color], BACKGROUNDS[b])]
        weights = {b: (4.0 if b == "white" else 1.0) for b in choices}
        background = _pick_weighted(rng, weights)
    return SynthSpec(shape, color, count, position, size, style, background)


def _check(name: str, value: object, allowed: Sequence[object]) -> None:
    if value is not None and value not in allowed:
        choices = ", ".join(str(a) for a in allowed)
        raise SynthError(f"unknown {name} {value!r}; choose one of {choices}")


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def _pick_weighted(rng: np.random.Generator, weights: Mapping[T, float]) -> T:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], dtype=np.float64)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _contrast(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    return math.dist(a, b) >= _MIN_CONTRAST


def _max_radius(count: int, position: str) -> float:
    if count == 1:
        return 0.29 if position == "center" else 0.19
    if count == 2:
        return 0.15 if position == "center" else 0.17
    return 0.14


def _fitting_sizes(count: int, position: str) -> tuple[str, ...]:
    top = _max_radius(count, position)
    return tuple(s for s in SIZES if _RADIUS[s][0] <= top)


# ---------------------------------------------------------------------------------------------
# Captions


def describe(
    spec: SynthSpec,
    mention: Iterable[str] = (),
    rng: np.random.Generator | None = None,
    lang: str = "en",
) -> str:
    """One caption for ``spec`` that names colour, shape and the attributes in ``mention``.

    A count of one is stated as "one" when ``count`` is mentioned and as "a" otherwise; counts
    above one are always stated, since the noun is plural. A medium size is never stated.
    Korean captions state the same facts ("빨간 원", "파란 별 두 개", "연필로 그린 노란 하트").

    Args:
        spec: the picture's attributes.
        mention: which of :data:`OPTIONAL_MENTIONS` to state.
        rng: picks among equivalent phrasings; None always takes the first, plainest one.
        lang: one of :data:`LANGUAGES`.

    Raises:
        SynthError: ``mention`` names an attribute that captions cannot state; an unknown
            language.
    """
    _check("language", lang, LANGUAGES)
    mention = set(mention)
    unknown = mention - set(OPTIONAL_MENTIONS)
    if unknown:
        raise SynthError(
            f"cannot mention {', '.join(sorted(unknown))} in a caption; choose from "
            f"{', '.join(OPTIONAL_MENTIONS)}"
        )
    options, assemble = _phrasing(spec, mention, lang)
    if rng is None:
        return assemble(spec, *(opts[0] for opts in options))
    return assemble(spec, *(opts[int(rng.integers(len(opts)))] for opts in options))


def describe_style(style: str, rng: np.random.Generator | None = None, lang: str = "en") -> str:
    """A caption that names only a style: "pixel art", "a pencil sketch", "clip art"; in
    Korean "픽셀 아트", "연필 스케치", "클립아트".

    Args:
        style: one of :data:`STYLES`.
        rng: picks among equivalent phrasings; None takes the first, plainest one.
        lang: one of :data:`LANGUAGES`.

    Raises:
        SynthError: an unknown style or language.
    """
    _check("style", style, STYLES)
    _check("language", lang, LANGUAGES)
    if lang == "ko":
        options = list(_KO_STYLE_NAMES[style])
    else:
        options = [p.replace(" of {}", "").replace("{} in ", "") for p in _STYLE_PREFIXES[style]]
    return options[0] if rng is None else _pick(rng, options)


def stated_facts(spec: SynthSpec, mention: Iterable[str]) -> dict[str, str | int]:
    """The attributes a caption made by :func:`describe` with ``mention`` asserts.

    A picture fits such a caption when it agrees on every one of these attributes; for example
    "a red circle" fits every picture of one or more red circles, in any style.

    Args:
        spec: the attributes the caption was made from.
        mention: the attributes passed to :func:`describe`.
    """
    mention = set(mention)
    if spec.count > 1:
        mention.add("count")
    if spec.size == "medium":
        mention.discard("size")
    keys = ["color", "shape", *[m for m in OPTIONAL_MENTIONS if m in mention]]
    facts = spec.facts()
    return {k: facts[k] for k in keys}


def caption_variants(sample: SynthSample | SynthSpec, lang: str = "en") -> tuple[str, ...]:
    """Every caption that is true of the picture, in all phrasings, sorted.

    Args:
        sample: a sample or its attributes.
        lang: one of :data:`LANGUAGES`.

    Raises:
        SynthError: an unknown language.
    """
    _check("language", lang, LANGUAGES)
    spec = sample.spec if isinstance(sample, SynthSample) else sample
    out: set[str] = set()
    for r in range(len(OPTIONAL_MENTIONS) + 1):
        for mention in itertools.combinations(OPTIONAL_MENTIONS, r):
            options, assemble = _phrasing(spec, set(mention), lang)
            for choice in itertools.product(*options):
                out.add(assemble(spec, *choice))
    return tuple(sorted(out))


def random_mentions(
    rng: np.random.Generator, rates: Mapping[str, float] | None = None
) -> frozenset[str]:
    """Draw which optional attributes a caption states, each at its own usual rate.

    Args:
        rng: the random generator to draw from.
        rates: rates that replace the usual ones for the attributes they name, e.g.
            ``{"style": 0.9}``; one number is drawn per attribute whatever the rates.
    """
    rates = {**_MENTION_RATES, **(rates or {})}
    return frozenset(m for m in OPTIONAL_MENTIONS if rng.random() < rates[m])


def _phrasing(
    spec: SynthSpec, mention: set[str], lang: str
) -> tuple[list[tuple[str, ...]], Callable[..., str]]:
    """The alternatives for each caption slot in ``lang`` and what assembles one choice."""
    if lang == "ko":
        return _phrase_options_ko(spec, mention), _assemble_ko
    return _phrase_options(spec, mention), _assemble


def _phrase_options(spec: SynthSpec, mention: set[str]) -> list[tuple[str, ...]]:
    """Alternatives for each caption slot: style form, count word, size word, place, ground."""
    if "style" in mention:
        style = tuple(f"prefix:{p}" for p in _STYLE_PREFIXES[spec.style])
        style += ("adjective",)
    else:
        style = ("",)
    if spec.count > 1 or "count" in mention:
        count: tuple[str, ...] = (_COUNT_WORDS[spec.count],)
    else:
        count = ("a",)
    size = _SIZE_WORDS.get(spec.size, ("",)) if "size" in mention else ("",)
    position = _POSITION_PHRASES[spec.position] if "position" in mention else ("",)
    if "background" not in mention:
        background: tuple[str, ...] = ("",)
    elif spec.background == PAPER:
        background = ("on paper", "on drawing paper")
    else:
        background = (
            f"on a {spec.background} background",
            f"against a {spec.background} background",
        )
    return [style, count, size, position, background]


def _assemble(spec: SynthSpec, style: str, count: str, size: str, position: str, bg: str) -> str:
    noun = spec.shape if spec.count == 1 else spec.shape + "s"
    adjective = _STYLE_ADJECTIVES[spec.style] if style == "adjective" else ""
    words = [w for w in (adjective, size, spec.color, noun) if w]
    if count == "a":
        count = "an" if words[0][0] in "aeiou" else "a"
    phrase = " ".join([count, *words, *(p for p in (position, bg) if p)])
    if style.startswith("prefix:"):
        phrase = style[len("prefix:") :].format(phrase)
    return phrase


def _phrase_options_ko(spec: SynthSpec, mention: set[str]) -> list[tuple[str, ...]]:
    """Korean alternatives for each slot: style form, colour word, shape word, count, size,
    place, ground."""
    style = _KO_STYLE_FORMS[spec.style] if "style" in mention else ("{}",)
    count = _KO_COUNTS[spec.count] if spec.count > 1 or "count" in mention else ("",)
    size = _KO_SIZE_WORDS.get(spec.size, ("",)) if "size" in mention else ("",)
    position = _KO_POSITION_PHRASES[spec.position] if "position" in mention else ("",)
    if "background" not in mention:
        background: tuple[str, ...] = ("",)
    elif spec.background == PAPER:
        background = _KO_PAPER
    else:
        background = tuple(f.format(_KO_BACKGROUNDS[spec.background]) for f in _KO_BACKGROUND_FORMS)
    colour, shape = _KO_COLORS[spec.color], _KO_SHAPES[spec.shape]
    return [style, colour, shape, count, size, position, background]


def _assemble_ko(
    spec: SynthSpec,
    style: str,
    colour: str,
    shape: str,
    count: str,
    size: str,
    position: str,
    bg: str,
) -> str:
    before, after = (count, "") if count.endswith(" ") else ("", count)
    words = [w for w in (position, bg, before.strip(), size, colour, shape) if w]
    phrase = " ".join(words) + after
    if "{}을" in style:
        return style.replace("{}을", phrase + _object_particle(phrase))
    return style.format(phrase)


def _object_particle(word: str) -> str:
    """Korean's object particle for ``word``: 을 after a final consonant, else 를."""
    last = ord(word[-1]) - 0xAC00
    return "을" if 0 <= last < 11172 and last % 28 else "를"


# ---------------------------------------------------------------------------------------------
# Drawing


def render(spec: SynthSpec, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """Draw the picture ``spec`` describes; the random details (exact placement, tints, noise,
    stroke wobble) come from ``rng``.

    Args:
        spec: what to draw.
        rng: the random generator for the details.
        size: the side of the square picture in pixels, at least 32.

    Raises:
        SynthError: ``size`` is too small to draw on.
    """
    if size < 32:
        raise SynthError(f"picture size {size} is too small; use at least 32 pixels")
    color = _tint(COLORS[spec.color], rng, 14)
    if spec.background == PAPER:
        background = _tint(_PAPER_RGB, rng, 5)
    else:
        background = _tint(BACKGROUNDS[spec.background], rng, 6)
    objects = _layout(spec, rng)
    if spec.style == "pixel art":
        return _draw_pixel_art(spec.shape, objects, color, background, rng, size)
    scale = 2 if spec.style in ("photo", "sketch", "cartoon") or rng.random() < 0.5 else 1
    canvas = size * scale
    polys = [
        _shape_points(spec.shape, x * canvas, y * canvas, r * canvas, a) for x, y, r, a in objects
    ]
    if spec.style == "photo":
        img = _draw_photo(polys, objects, color, background, rng, canvas)
    elif spec.style == "cartoon":
        img = _draw_cartoon(polys, objects, color, background, rng, canvas)
    elif spec.style == "sketch":
        img = _draw_sketch(polys, color, background, rng, canvas)
    else:
        img = _draw_flat(spec.shape, polys, objects, color, background, canvas)
    if scale != 1:
        img = img.resize((size, size), Image.Resampling.LANCZOS)
    return img


def _tint(rgb: tuple[int, int, int], rng: np.random.Generator, spread: int) -> tuple[int, int, int]:
    jitter = rng.integers(-spread, spread + 1, size=3)
    r, g, b = (int(v) for v in np.clip(np.array(rgb) + jitter, 0, 255))
    return r, g, b


Placed = tuple[float, float, float, float]  # centre x, centre y, radius (unit square), angle


def _layout(spec: SynthSpec, rng: np.random.Generator) -> list[Placed]:
    lo, hi = _RADIUS[spec.size]
    radius = float(rng.uniform(lo, min(hi, _max_radius(spec.count, spec.position))))
    n, pos = spec.count, spec.position
    if n == 1:
        centres = {
            "left": [(0.25, 0.5)],
            "right": [(0.75, 0.5)],
            "top": [(0.5, 0.25)],
            "bottom": [(0.5, 0.75)],
            "center": [(0.5, 0.5)],
        }[pos]
    else:
        spread = [0.28, 0.72] if n == 2 else [0.18, 0.5, 0.82]
        if pos == "left":
            centres = [(0.25, s) for s in spread]
        elif pos == "right":
            centres = [(0.75, s) for s in spread]
        elif pos == "top":
            centres = [(s, 0.25) for s in spread]
        elif pos == "bottom":
            centres = [(s, 0.75) for s in spread]
        elif n == 2:
            centres = [(0.33, 0.5), (0.67, 0.5)]
        else:
            centres = [(0.5, 0.32), (0.32, 0.67), (0.68, 0.67)]
    jitter = 0.025 if n == 1 else 0.015
    slack = 0.09 if (n == 1 and pos != "center") else 0.0
    placed = []
    for cx, cy in centres:
        x = cx + rng.uniform(-jitter, jitter)
        y = cy + rng.uniform(-jitter, jitter)
        if slack and pos in ("left", "right"):
            y += rng.uniform(-slack, slack)
        elif slack:
            x += rng.uniform(-slack, slack)
        angle = 0.0 if spec.shape == "circle" else float(rng.uniform(-12, 12))
        placed.append((x, y, radius, angle))
    return placed


def _shape_points(
    shape: str, cx: float, cy: float, r: float, angle_deg: float
) -> list[tuple[float, float]]:
    if shape == "circle":
        pts = [(math.cos(t), math.sin(t)) for t in np.linspace(0, 2 * math.pi, 64, endpoint=False)]
    elif shape == "square":
        h = 0.86
        pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
    elif shape == "triangle":
        pts = [(0.0, -1.0), (0.95, 0.7), (-0.95, 0.7)]
    elif shape == "star":
        pts = []
        for i in range(10):
            rad = 1.0 if i % 2 == 0 else 0.42
            t = -math.pi / 2 + i * math.pi / 5
            pts.append((rad * math.cos(t), rad * math.sin(t) + 0.08))
    else:  # heart
        pts = []
        for t in np.linspace(0, 2 * math.pi, 72, endpoint=False):
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((x / 16.5, -y / 16.5 - 0.1))
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    return [(cx + r * (x * ca - y * sa), cy + r * (x * sa + y * ca)) for x, y in pts]


def _mask(polys: list[list[tuple[float, float]]], canvas: int) -> Image.Image:
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    for poly in polys:
        draw.polygon(poly, fill=255)
    return mask


def _draw_flat(
    shape: str,
    polys: list[list[tuple[float, float]]],
    objects: list[Placed],
    color: tuple[int, int, int],
    background: tuple[int, int, int],
    canvas: int,
) -> Image.Image:
    img = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(img)
    for poly, (x, y, r, _) in zip(polys, objects, strict=True):
        if shape == "circle":  # the way anyone would draw it: a PIL ellipse
            x, y, r = x * canvas, y * canvas, r * canvas
            draw.ellipse((x - r, y - r, x + r, y + r), fill=color)
        else:
            draw.polygon(poly, fill=color)
    return img


def _draw_cartoon(
    polys: list[list[tuple[float, float]]],
    objects: list[Placed],
    color: tuple[int, int, int],
    background: tuple[int, int, int],
    rng: np.random.Generator,
    canvas: int,
) -> Image.Image:
    img = Image.new("RGB", (canvas, canvas), background)
    draw = ImageDraw.Draw(img)
    outline = (20, 20, 20) if sum(color) > 150 else (110, 110, 110)
    for poly, (_, _, r, _) in zip(polys, objects, strict=True):
        width = max(2, round(r * canvas * rng.uniform(0.12, 0.17)))
        draw.polygon(poly, fill=color)
        draw.line([*poly, poly[0], poly[1]], fill=outline, width=width, joint="curve")
    # A cartoon shine: a light blob at the upper left, kept inside each shape.
    shine = Image.new("L", (canvas, canvas), 0)
    sdraw = ImageDraw.Draw(shine)
    for x, y, r, _ in objects:
        x, y, r = x * canvas, y * canvas, r * canvas
        sdraw.ellipse((x - 0.55 * r, y - 0.55 * r, x - 0.25 * r, y - 0.3 * r), fill=170)
    shine = Image.fromarray(
        (np.asarray(shine, np.uint16) * np.asarray(_mask(polys, canvas), np.uint16) // 255).astype(
            np.uint8
        )
    )
    return Image.composite(Image.new("RGB", img.size, (255, 255, 255)), img, shine)


def _draw_sketch(
    polys: list[list[tuple[float, float]]],
    color: tuple[int, int, int],
    background: tuple[int, int, int],
    rng: np.random.Generator,
    canvas: int,
) -> Image.Image:
    pencil = tuple(int(c * 0.85) for c in color) if sum(color) > 100 else (70, 70, 70)
    # Paper grain: fine noise plus faint horizontal fibres.
    paper = np.empty((canvas, canvas, 3), np.float32)
    paper[:] = background
    paper += rng.normal(0, 3.0, (canvas, canvas, 1)).astype(np.float32)
    paper += rng.normal(0, 2.0, (canvas, 1, 1)).astype(np.float32)

    strokes = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(strokes)
    # Hatching, clipped to the shapes below.
    hatch = Image.new("L", (canvas, canvas), 0)
    hdraw = ImageDraw.Draw(hatch)
    spacing = max(3.0, canvas * rng.uniform(0.028, 0.045))
    line_w = max(1, round(canvas / 110))
    angles = [rng.uniform(30, 60)]
    if rng.random() < 0.4:
        angles.append(angles[0] + 90)
    for deg in angles:
        t = math.radians(deg)
        dx, dy = math.cos(t), math.sin(t)
        nx, ny = -dy, dx
        for k in np.arange(-canvas * 1.5, canvas * 1.5, spacing):
            ox = canvas / 2 + nx * k + rng.normal(0, spacing * 0.12)
            oy = canvas / 2 + ny * k + rng.normal(0, spacing * 0.12)
            hdraw.line(
                (ox - dx * canvas, oy - dy * canvas, ox + dx * canvas, oy + dy * canvas),
                fill=int(rng.uniform(150, 230)),
                width=line_w,
            )
    hatch_arr = np.asarray(hatch, np.float32) * (np.asarray(_mask(polys, canvas), np.float32) / 255)
    # Outline: two or three wobbly pencil passes.
    wobble = canvas * 0.006
    for poly in polys:
        for _ in range(int(rng.integers(2, 4))):
            pts = [(x + rng.normal(0, wobble), y + rng.normal(0, wobble)) for x, y in poly]
            draw.line([*pts, pts[0]], fill=int(rng.uniform(190, 255)), width=line_w + 1)
    alpha = np.maximum(hatch_arr, np.asarray(strokes, np.float32)) / 255.0
    alpha *= rng.uniform(0.8, 1.0)
    out = paper * (1 - alpha[..., None]) + np.array(pencil, np.float32) * alpha[..., None]
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def _draw_photo(
    polys: list[list[tuple[float, float]]],
    objects: list[Placed],
    color: tuple[int, int, int],
    background: tuple[int, int, int],
    rng: np.random.Generator,
    canvas: int,
) -> Image.Image:
    yy, xx = np.mgrid[0:canvas, 0:canvas].astype(np.float32) / canvas
    # Background: lit from above, darker corners, and a soft low-frequency texture.
    light = 1.0 + rng.uniform(0.03, 0.08) * (0.5 - yy)
    light -= rng.uniform(0.02, 0.1) * ((xx - 0.5) ** 2 + (yy - 0.5) ** 2) * 2
    texture = _smooth_noise(rng, canvas, cells=8, amplitude=3.0)
    img = np.array(background, np.float32) * light[..., None] + texture[..., None]
    # Soft shadow below and right of the objects.
    mask = _mask(polys, canvas)
    off = canvas * rng.uniform(0.02, 0.045)
    shadow = mask.transform(
        mask.size, Image.Transform.AFFINE, (1, 0, -off, 0, 1, -off * 1.2), fillcolor=0
    ).filter(ImageFilter.GaussianBlur(canvas * rng.uniform(0.02, 0.035)))
    img *= 1.0 - rng.uniform(0.3, 0.5) * (np.asarray(shadow, np.float32)[..., None] / 255)
    # Objects: shaded from a light at the upper left, with a matte surface texture.
    shade = np.ones((canvas, canvas), np.float32)
    for x, y, r, _ in objects:
        d = np.sqrt((xx - (x - 0.4 * r)) ** 2 + (yy - (y - 0.4 * r)) ** 2) / (1.7 * r)
        near = (np.abs(xx - x) < 1.3 * r) & (np.abs(yy - y) < 1.3 * r)
        shade = np.where(near, 1.15 - 0.33 * np.clip(d, 0, 1), shade)
    base = np.array(color, np.float32)
    obj = base * shade[..., None] + (28.0 * (1.0 - shade[..., None]) if sum(color) < 100 else 0)
    obj += _smooth_noise(rng, canvas, cells=16, amplitude=4.0)[..., None]
    m = np.asarray(mask, np.float32)[..., None] / 255
    img = img * (1 - m) + obj * m
    # Grain over everything, as from a small camera sensor.
    img += rng.normal(0, rng.uniform(2.0, 6.0), (canvas, canvas, 1)).astype(np.float32)
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")
    return out.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))


def _smooth_noise(
    rng: np.random.Generator, canvas: int, cells: int, amplitude: float
) -> np.ndarray:
    coarse = rng.normal(0, 1, (cells, cells)).astype(np.float32)
    img = Image.fromarray(coarse, "F").resize((canvas, canvas), Image.Resampling.BICUBIC)
    return np.asarray(img, np.float32) * amplitude


def _snap(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    r, g, b = (min(255, round(c / 32) * 32) for c in rgb)
    return r, g, b


def _draw_pixel_art(
    shape: str,
    objects: list[Placed],
    color: tuple[int, int, int],
    background: tuple[int, int, int],
    rng: np.random.Generator,
    size: int,
) -> Image.Image:
    # Coarse pixels, but never so coarse that a small shape turns into an unreadable blob.
    radius = objects[0][2]
    grid = max(int(rng.choice([16, 20, 24, 32])), math.ceil(3.6 / radius))
    # Few colours, as on old hardware: snap to a coarse palette.
    color, background = _snap(color), _snap(background)
    img = Image.new("RGB", (grid, grid), background)
    draw = ImageDraw.Draw(img)
    outlined = rng.random() < 0.6
    edge = tuple(int(c * 0.45) for c in color) if sum(color) > 150 else (96, 96, 96)
    for x, y, r, a in objects:
        poly = _shape_points(shape, x * grid - 0.5, y * grid - 0.5, r * grid, a)
        draw.polygon(poly, fill=color, outline=edge if outlined else None)
        hx, hy = round(x * grid - 0.45 * r * grid), round(y * grid - 0.45 * r * grid)
        if r * grid >= 3 and img.getpixel((hx, hy)) == color:
            draw.point((hx, hy), fill=tuple(min(255, c + 70) for c in color))
    return img.resize((size, size), Image.Resampling.NEAREST)


def jpeg_round_trip(image: Image.Image, quality: int) -> Image.Image:
    """``image`` saved as a JPEG of ``quality`` and read back, as a picture on disk would be."""
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


# ---------------------------------------------------------------------------------------------
# Streams and folders


def make_sample(
    spec: SynthSpec, rng: np.random.Generator, size: int = 128, caption: str | None = None
) -> SynthSample:
    """Draw ``spec`` and caption it.

    Args:
        spec: what to draw.
        rng: the random generator for drawing details and the caption's wording.
        size: the side of the square picture in pixels.
        caption: the caption to use; None draws a random one.
    """
    image = render(spec, rng, size)
    caption_ko = ""
    if caption is None:
        mention = random_mentions(rng)
        caption = describe(spec, mention, rng)
        caption_ko = describe(spec, mention, rng, "ko")  # drawn last: the rest stays as it was
    return SynthSample(
        image=image,
        caption=caption,
        captions=caption_variants(spec),
        style=spec.style,
        shape=spec.shape,
        color=spec.color,
        count=spec.count,
        position=spec.position,
        background=spec.background,
        size=spec.size,
        caption_ko=caption_ko,
    )


def generate(
    n: int,
    seed: int,
    size: int = 128,
    *,
    balanced: bool = False,
    styles: Sequence[str] | None = None,
) -> Iterator[SynthSample]:
    """Yield ``n`` captioned pictures; the same arguments always give the same pictures.

    Args:
        n: how many pictures.
        seed: the stream's seed; picture ``i`` depends only on ``seed`` and ``i``.
        size: the side of each square picture in pixels.
        balanced: cycle through every colour x shape x style combination in a shuffled order
            instead of drawing each independently, so that a small set covers them all.
        styles: only these styles; default all of :data:`STYLES`.

    Raises:
        SynthError: ``n`` is negative or a style is unknown.
    """
    if n < 0:
        raise SynthError(f"cannot generate {n} pictures; pass n >= 0")
    styles = tuple(styles) if styles else STYLES
    for s in styles:
        _check("style", s, STYLES)
    combos = list(itertools.product(COLORS, SHAPES, styles))
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(combos))
    for i in range(n):
        rng = sample_rng(seed, i)
        if balanced:
            color, shape, style = combos[int(order[i % len(combos)])]
            spec = random_spec(rng, color=color, shape=shape, style=style)
        elif len(styles) < len(STYLES):
            spec = random_spec(rng, style=_pick(rng, styles))
        else:
            spec = random_spec(rng)
        yield make_sample(spec, rng, size)


def write_folder(
    dest: str | Path,
    n: int,
    seed: int,
    fmt: str = "jpg",
    *,
    size: int = 128,
    quality: int = 85,
    balanced: bool = True,
) -> list[Path]:
    """Write ``n`` pictures into ``dest`` plus a ``captions.jsonl`` that describes them.

    Each line of ``captions.jsonl`` holds the picture's path relative to ``dest``, its caption
    (and the same in Korean, ``caption_ko``), its style and its other attributes; the file is what
    :func:`clipsearch.training.data.load_pairs`
    reads. Existing pictures with the same names are overwritten.

    Args:
        dest: the folder; created when missing.
        n: how many pictures.
        seed: the stream's seed.
        fmt: ``jpg`` or ``png``.
        size: the side of each square picture in pixels.
        quality: JPEG quality, 1 to 95.
        balanced: cover all colour x shape x style combinations evenly (see :func:`generate`).

    Returns:
        The paths of the pictures written, in order.

    Raises:
        SynthError: an unknown format, or the folder cannot be written.
    """
    fmt = fmt.lower().lstrip(".")
    if fmt not in ("jpg", "jpeg", "png"):
        raise SynthError(f"unknown picture format {fmt!r}; use jpg or png")
    folder = Path(dest)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SynthError(f"cannot create folder {folder}: {e.strerror or e}") from e
    paths: list[Path] = []
    lines: list[str] = []
    width = max(3, len(str(n - 1)))
    for i, s in enumerate(generate(n, seed, size, balanced=balanced)):
        name = f"{i:0{width}d}-{s.color}-{s.shape}-{s.style.replace(' ', '-')}.{fmt}"
        paths.append(_write(folder / name, _encode(s.image, fmt, quality)))
        record = {
            "path": name,
            "caption": s.caption,
            "caption_ko": s.caption_ko,
            "style": s.style,
            **s.spec.facts(),
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    _write(folder / "captions.jsonl", ("\n".join(lines) + "\n").encode("utf-8"))
    return paths


def _encode(image: Image.Image, fmt: str, quality: int) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", optimize=True)
    else:
        image.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    # Pictures made again from their seed need no fsync; the rename alone keeps them whole.
    try:
        atomic_write(path, data, durable=False)
    except OSError as e:
        raise SynthError(f"cannot write {path}: {e.strerror or e}") from e
    return path
