"""Measuring a model on a gallery of freshly drawn synthetic pictures: text-to-image recall per
kind of query (:func:`evaluate_gallery`), the figures ``metrics.json`` records and the demo
model's tests hold to their bars."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.demo import synth
from clipsearch.demo.recipe import EVAL_SEED
from clipsearch.errors import ClipsearchError
from clipsearch.training.evaluation import recall_at_k

if TYPE_CHECKING:
    from clipsearch.models.encoder import Encoder

QUERY_KINDS: tuple[str, ...] = ("color+shape", "style", "count", "position", "style+count")
# Which attributes each kind of query states besides colour and shape.
_KIND_MENTIONS: dict[str, tuple[str, ...]] = {
    "color+shape": (),
    "style": ("style",),
    "count": ("count",),
    "position": ("position",),
    "style+count": ("style", "count"),
}

Query = tuple[str, dict[str, str | int]]


@dataclass(frozen=True)
class KindRecall:
    """Text-to-image recall for one kind of query.

    Attributes:
        kind: one of :data:`QUERY_KINDS`.
        queries: how many distinct queries of this kind had a matching picture.
        recall_at_1: share of queries whose best picture matches.
        recall_at_5: share of queries with a match among the best five.
        example: one of the queries, for reports.
    """

    kind: str
    queries: int
    recall_at_1: float
    recall_at_5: float
    example: str


@dataclass(frozen=True)
class GalleryReport:
    """How well a model finds synthetic pictures by their description.

    Attributes:
        images: pictures in the gallery.
        seed: the seed the gallery was drawn with.
        kinds: recall per kind of query, in :data:`QUERY_KINDS` order.
        by_style: colour+shape recall@1 restricted to pictures of each style.
        lang: the language of the queries, one of :data:`synth.LANGUAGES`.
    """

    images: int
    seed: int
    kinds: tuple[KindRecall, ...]
    by_style: tuple[tuple[str, float], ...] = ()
    lang: str = "en"

    def __getitem__(self, kind: str) -> KindRecall:
        for k in self.kinds:
            if k.kind == kind:
                return k
        raise KeyError(kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "seed": self.seed,
            "lang": self.lang,
            "kinds": {k.kind: asdict(k) for k in self.kinds},
            "color_shape_r1_by_style": dict(self.by_style),
        }

    def table(self) -> str:
        """A small text table of the recalls."""
        language = {"en": "English", "ko": "Korean"}.get(self.lang, self.lang)
        lines = [f"gallery of {self.images} pictures (seed {self.seed}), {language} queries"]
        lines.append(f"{'kind':<12} {'queries':>7} {'R@1':>6} {'R@5':>6}  example")
        for k in self.kinds:
            lines.append(
                f"{k.kind:<12} {k.queries:>7} {k.recall_at_1:>6.3f} {k.recall_at_5:>6.3f}  "
                f"{k.example!r}"
            )
        if self.by_style:
            lines.append(
                "color+shape R@1 by style: " + ", ".join(f"{s} {v:.3f}" for s, v in self.by_style)
            )
        return "\n".join(lines)


def gallery_queries(specs: Sequence[synth.SynthSpec], kind: str, lang: str = "en") -> list[Query]:
    """The distinct queries of one kind that some picture in ``specs`` answers.

    Each query is the plainest phrasing (``"a sketch of two blue stars"``, in Korean
    ``"연필로 그린 파란 별 두 개"``) with the facts a picture must have to count as a match.

    Args:
        specs: the gallery's pictures.
        kind: one of :data:`QUERY_KINDS`.
        lang: the queries' language, one of :data:`synth.LANGUAGES`.

    Raises:
        ClipsearchError: an unknown kind.
    """
    if kind not in _KIND_MENTIONS:
        raise ClipsearchError(
            f"unknown query kind {kind!r}; choose one of {', '.join(QUERY_KINDS)}"
        )
    mention = _KIND_MENTIONS[kind]
    seen: dict[str, dict[str, str | int]] = {}
    for spec in specs:
        plain = spec if "count" in mention else replace(spec, count=1)
        text = synth.describe(plain, mention, lang=lang)
        seen.setdefault(text, synth.stated_facts(plain, mention))
    return sorted(seen.items())


def gallery(
    n: int = 600, seed: int = EVAL_SEED, size: int = 128, jpeg_quality: int | None = 85
) -> list[synth.SynthSample]:
    """Draw the evaluation gallery; pictures go through a JPEG round trip like files do.

    Args:
        n: pictures.
        seed: the seed; keep it apart from the training seeds.
        size: the side of each picture in pixels.
        jpeg_quality: JPEG quality of the round trip; None keeps the pictures lossless.
    """
    out = []
    for s in synth.generate(n, seed, size):
        if jpeg_quality is not None:
            s = replace(s, image=synth.jpeg_round_trip(s.image, jpeg_quality))
        out.append(s)
    return out


def evaluate_gallery(
    encoder: Encoder,
    samples: Sequence[synth.SynthSample] | None = None,
    *,
    n: int = 600,
    seed: int = EVAL_SEED,
    kinds: Sequence[str] = QUERY_KINDS,
    lang: str = "en",
) -> GalleryReport:
    """Text-to-image recall@1/@5 of ``encoder`` on a gallery of synthetic pictures.

    A picture matches a query when it has every attribute the query states: any picture of
    red circles matches "a red circle"; only sketches of exactly two blue stars match "a sketch
    of two blue stars".

    Args:
        encoder: the model (see :func:`clipsearch.models.loading.load_encoder`).
        samples: the gallery; default :func:`gallery` with ``n`` and ``seed``.
        n: gallery size when ``samples`` is None.
        seed: gallery seed when ``samples`` is None.
        kinds: which kinds of query to measure.
        lang: the queries' language, one of :data:`synth.LANGUAGES`; the gallery is the same
            in every language.
    """
    if samples is None:
        samples = gallery(n, seed)
    specs = [s.spec for s in samples]
    facts = [s.facts() for s in specs]
    image_emb = encoder.encode_images([s.image for s in samples])
    reports = []
    for kind in kinds:
        queries = gallery_queries(specs, kind, lang)
        text_emb = encoder.encode_texts([q for q, _ in queries])
        recall = recall_at_k(text_emb @ image_emb.T, _relevance(queries, facts))
        reports.append(KindRecall(kind, len(queries), recall[1], recall[5], queries[0][0]))
    by_style: list[tuple[str, float]] = []
    if "color+shape" in kinds:
        by_style = _recall_by_style(encoder, specs, image_emb, lang)
    return GalleryReport(len(samples), seed, tuple(reports), tuple(by_style), lang)


def _relevance(queries: Sequence[Query], facts: Sequence[dict[str, Any]]) -> np.ndarray:
    """(queries, pictures): whether each picture has every fact its query states."""
    return np.array(
        [[all(f.get(k) == v for k, v in want.items()) for f in facts] for _, want in queries]
    )


def _recall_by_style(
    encoder: Encoder, specs: Sequence[synth.SynthSpec], image_emb: np.ndarray, lang: str
) -> list[tuple[str, float]]:
    """Colour+shape recall@1 among the pictures of each style, for the styles present."""
    queries = gallery_queries(specs, "color+shape", lang)
    text_emb = encoder.encode_texts([q for q, _ in queries])
    out = []
    for style in synth.STYLES:
        idx = [i for i, s in enumerate(specs) if s.style == style]
        if not idx:
            continue
        relevant = _relevance(queries, [specs[i].facts() for i in idx])
        keep = relevant.any(axis=1)
        scores = text_emb[keep] @ image_emb[idx].T
        out.append((style, recall_at_k(scores, relevant[keep], (1,))[1]))
    return out
