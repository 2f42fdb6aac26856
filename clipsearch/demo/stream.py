"""The demo model's training data: synthetic pictures drawn the way files look, captioned, and
arranged into batches with hard negatives (:class:`SynthStream`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from clipsearch.demo import synth
from clipsearch.demo.recipe import IMAGE_SIZE, VAL_SEED
from clipsearch.training.data import CaptionedImage

# Caption mention rates inside a group of same colour-and-shape pictures: the captions there
# must say what tells the pictures apart.
_GROUP_MENTION_RATES = {"style": 0.6, "count": 0.6, "position": 0.6, "background": 0.2, "size": 0.3}
_STYLE_RATES = {"style": 1.0}

Rates = dict[str, float] | None
Drawn = tuple[synth.SynthSpec, Image.Image]
Scene = tuple[str, str, int, str]


def synth_pair(
    spec: synth.SynthSpec,
    image: Image.Image,
    rng: np.random.Generator,
    mention_rates: dict[str, float] | None = None,
    lang: str = "en",
) -> CaptionedImage:
    """Caption a synthetic picture for training, with the facts its caption states.

    Args:
        spec: what the picture shows.
        image: the picture.
        rng: draws which attributes the caption states and its wording.
        mention_rates: how often the optional attributes it names are stated, in place of the
            usual rates (see :func:`synth.random_mentions`).
        lang: the caption's language, one of :data:`synth.LANGUAGES`.
    """
    mention = synth.random_mentions(rng, mention_rates)
    return CaptionedImage(
        image=image,
        caption=synth.describe(spec, mention, rng, lang),
        image_facts=spec.facts(),
        caption_facts=synth.stated_facts(spec, mention),
    )


def render_for_training(
    spec: synth.SynthSpec,
    rng: np.random.Generator,
    image_size: int = IMAGE_SIZE,
    *,
    file_like: bool = False,
) -> Image.Image:
    """Draw ``spec`` the way the model will see real files: at 64 to 128 pixels, sometimes
    saved as JPEG, then resized to the model's input size with bicubic filtering.

    Args:
        spec: what to draw.
        rng: the random generator for drawing details and the file round trip.
        image_size: the model's input size.
        file_like: always draw at twice the input size and save as JPEG, as the gallery's
            and the style head's pictures are.
    """
    sizes = [image_size, image_size, image_size * 3 // 2, image_size * 2]
    if file_like:
        sizes = [image_size * 2]
    size = int(rng.choice(sizes))
    img = synth.render(spec, rng, size)
    if rng.random() < (1.0 if file_like else 0.35):
        img = synth.jpeg_round_trip(img, int(rng.integers(60, 96)))
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return img


@dataclass(frozen=True)
class SynthStream:
    """An endless, seeded stream of synthetic pairs arranged into batches with hard negatives.

    A pool of pictures is drawn once and then slowly renewed, so that training pays for
    drawing only a fraction of what it consumes. Each batch of ``batch_size`` consecutive items
    holds groups of ``group_size`` pictures with the same colour and shape (which only style,
    count, position or background tell apart) and the rest drawn at random. A share
    ``style_groups`` of the groups are style groups instead: pictures of the same colour, shape,
    count and position in different styles, captioned with their style, so that the style is
    what tells them apart.

    Attributes:
        batch_size: items per batch; must equal the trainer's batch size.
        pool_size: pictures kept in the pool.
        refresh: new pictures drawn into the pool after each batch.
        group_size: pictures in a group of the same colour and shape.
        grouped_fraction: share of each batch taken by such groups.
        image_size: the side of the pictures, the model's input size.
        style_rate: how often captions outside style groups state the style; None keeps the
            usual rates (a half at random, 0.6 in colour-and-shape groups).
        style_groups: share of the groups that are style groups.
        style_only: share of the pictures outside groups captioned with their style alone
            ("pixel art", "a pencil sketch"), which every picture of that style fits.
        file_like: share of the pictures drawn at twice the input size and saved as JPEG
            before being resized (see :func:`render_for_training`).
        korean: share of the captions written in Korean rather than English.
    """

    batch_size: int = 64
    pool_size: int = 12000
    refresh: int = 16
    group_size: int = 4
    grouped_fraction: float = 0.5
    image_size: int = IMAGE_SIZE
    style_rate: float | None = None
    style_groups: float = 0.0
    style_only: float = 0.0
    file_like: float = 0.0
    korean: float = 0.0

    def __call__(self, seed: int) -> Iterator[CaptionedImage]:
        rng = np.random.default_rng([seed, 7])
        pool = _Pool(self._drawer(seed), self.pool_size)
        n_groups = int(self.batch_size * self.grouped_fraction) // self.group_size
        n_style = round(n_groups * self.style_groups)
        group_rates: dict[str, float] = dict(_GROUP_MENTION_RATES)
        other_rates: Rates = None
        if self.style_rate is not None:
            group_rates["style"] = self.style_rate
            other_rates = {"style": self.style_rate}
        while True:
            chosen: list[tuple[int, Rates]] = []
            for _ in range(n_style):
                chosen += [(i, _STYLE_RATES) for i in pool.style_group(rng, self.group_size)]
            for _ in range(n_groups - n_style):
                chosen += [(i, group_rates) for i in pool.colour_group(rng, self.group_size)]
            while len(chosen) < self.batch_size:
                chosen.append((int(rng.integers(len(pool.items))), other_rates))
            for i, rates in chosen:
                yield self._caption(pool.items[i], rng, rates, rates is other_rates)
            pool.renew(rng.choice(len(pool.items), size=self.refresh, replace=False), n_style > 0)

    def _drawer(self, seed: int) -> Callable[[], Drawn]:
        """Draws the stream's next new picture: the ``i``-th drawn comes from its own seeded
        generator, so the pool does not depend on what the batches consumed."""
        made = itertools.count()

        def draw() -> Drawn:
            r = synth.sample_rng(seed, next(made))
            spec = synth.random_spec(r)
            file_like = bool(self.file_like) and r.random() < self.file_like
            return spec, render_for_training(spec, r, self.image_size, file_like=file_like)

        return draw

    def _caption(
        self, drawn: Drawn, rng: np.random.Generator, rates: Rates, other: bool
    ) -> CaptionedImage:
        """Caption a picture of the pool; a picture outside the groups may get its style alone."""
        spec, image = drawn
        lang = draw_language(rng, self.korean)
        if other and self.style_only and rng.random() < self.style_only:
            return CaptionedImage(
                image=image,
                caption=synth.describe_style(spec.style, rng, lang),
                image_facts=spec.facts(),
                caption_facts={"style": spec.style},
            )
        return synth_pair(spec, image, rng, rates, lang)


def draw_language(rng: np.random.Generator, korean: float) -> str:
    """``ko`` with probability ``korean``, else ``en``; draws nothing when ``korean`` is 0, so
    an English-only stream is the same as before there were Korean captions."""
    return "ko" if korean and rng.random() < korean else "en"


class _Pool:
    """A stream's pictures, indexed by colour and shape and by scene, slowly renewed."""

    def __init__(self, draw: Callable[[], Drawn], size: int) -> None:
        self.draw = draw
        self.items = [draw() for _ in range(size)]
        self.by_key: dict[tuple[str, str], list[int]] = {}
        self.by_scene: dict[Scene, list[int]] = {}
        for i, (spec, _) in enumerate(self.items):
            self._file(i, spec)
        self.keys = sorted(self.by_key)
        self.scenes = sorted(self.by_scene)

    def _file(self, i: int, spec: synth.SynthSpec) -> None:
        self.by_key.setdefault((spec.color, spec.shape), []).append(i)
        self.by_scene.setdefault(_scene(spec), []).append(i)

    def colour_group(self, rng: np.random.Generator, size: int) -> list[int]:
        """Up to ``size`` pictures of one colour and shape, which only style, count, position
        or background tell apart."""
        members = self.by_key[self.keys[int(rng.integers(len(self.keys)))]]
        picked = rng.choice(members, size=min(size, len(members)), replace=False)
        return [int(i) for i in picked]

    def style_group(self, rng: np.random.Generator, size: int) -> list[int]:
        """A scene (colour, shape, count, position) the pool shows in several styles; one
        picture of each of up to ``size`` of those styles."""
        for _ in range(20):
            members = self.by_scene[self.scenes[int(rng.integers(len(self.scenes)))]]
            by_style: dict[str, list[int]] = {}
            for i in members:
                by_style.setdefault(self.items[i][0].style, []).append(i)
            if len(by_style) > 1:
                break
        styles = sorted(by_style)
        picked = rng.choice(len(styles), size=min(size, len(styles)), replace=False)
        return [int(rng.choice(by_style[styles[int(s)]])) for s in picked]

    def renew(self, picks: Iterable[int], scenes: bool) -> None:
        """Draw new pictures in place of ``picks``; ``scenes``: keep the scene list current."""
        for i in map(int, picks):
            old = self.items[i][0]
            self.by_key[(old.color, old.shape)].remove(i)
            self.by_scene[_scene(old)].remove(i)
            self.items[i] = self.draw()
            self._file(i, self.items[i][0])
        self.keys = sorted(k for k, v in self.by_key.items() if v)
        if scenes:
            self.scenes = sorted(k for k, v in self.by_scene.items() if v)


def _scene(spec: synth.SynthSpec) -> Scene:
    return spec.color, spec.shape, spec.count, spec.position


def validation_pairs(n: int, seed: int = VAL_SEED, lang: str = "en") -> list[CaptionedImage]:
    """``n`` synthetic validation pairs, drawn like training pairs but from another seed.

    Args:
        n: how many.
        seed: the stream's seed.
        lang: the captions' language; the pictures and the facts stated are the same in
            every language.
    """
    out = []
    for i in range(n):
        rng = synth.sample_rng(seed, i)
        spec = synth.random_spec(rng)
        out.append(synth_pair(spec, render_for_training(spec, rng), rng, lang=lang))
    return out
