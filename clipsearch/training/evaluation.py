"""Retrieval recall of a model on captioned pairs, in both directions."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from clipsearch.errors import ImageReadError, TrainingError
from clipsearch.training.data import CaptionedImage, caption_key, match_matrix

if TYPE_CHECKING:
    from clipsearch.models.encoder import Encoder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetrievalMetrics:
    """Recall at 1 and 5 in both directions over a set of pairs.

    Text to image: for each distinct caption, is a matching picture among the k nearest
    pictures. Image to text: for each picture, is a matching caption among the k nearest
    distinct captions. "Matching" is as in :class:`CaptionedImage`.
    """

    text_to_image_r1: float
    text_to_image_r5: float
    image_to_text_r1: float
    image_to_text_r5: float
    images: int
    texts: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"text->image R@1 {self.text_to_image_r1:.3f} R@5 {self.text_to_image_r5:.3f}, "
            f"image->text R@1 {self.image_to_text_r1:.3f} R@5 {self.image_to_text_r5:.3f} "
            f"({self.images} images, {self.texts} captions)"
        )


def recall_at_k(
    scores: np.ndarray, relevant: np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Fraction of queries with a relevant item among their top ``k`` scores.

    Args:
        scores: (queries, items) similarities, higher is nearer.
        relevant: (queries, items) bool.
        ks: the cut-offs.

    Raises:
        ValueError: the shapes differ or a query has no relevant item.
    """
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} differ in shape")
    if not relevant.any(axis=1).all():
        raise ValueError("every query needs at least one relevant item")
    order = np.argsort(-scores, axis=1, kind="stable")
    ranked = np.take_along_axis(relevant, order, axis=1)
    return {k: float(ranked[:, :k].any(axis=1).mean()) for k in ks}


def evaluate_pairs(
    encoder: Encoder,
    items: Sequence[CaptionedImage],
    *,
    batch_size: int = 128,
) -> RetrievalMetrics:
    """Recall@1/@5 of ``encoder`` on ``items`` in both directions.

    Args:
        encoder: a loaded model (see :func:`clipsearch.models.loading.load_encoder`).
        items: validation pairs; unreadable pictures are left out.
        batch_size: pictures per forward pass.

    Raises:
        TrainingError: none of the pictures could be read.
    """
    images: list[Image.Image] = []
    kept: list[CaptionedImage] = []
    for it in items:
        try:
            images.append(it.open_image())
            kept.append(it)
        except ImageReadError as e:
            log.warning("skipping unreadable validation image %s", e)
    if not kept:
        raise TrainingError("no validation picture could be read; check the validation files")
    return retrieval_metrics(encoder.encode_images(images, batch_size), encoder.encode_texts, kept)


def retrieval_metrics(
    image_emb: np.ndarray,
    encode_texts: Callable[[list[str]], np.ndarray],
    items: Sequence[CaptionedImage],
) -> RetrievalMetrics:
    """Recall of pictures already embedded (``image_emb``, one row per item) against the
    items' distinct captions, embedded with ``encode_texts``."""
    match = match_matrix(items)  # [image i, caption j]
    captions: dict[str, int] = {}
    for j, it in enumerate(items):
        captions.setdefault(caption_key(it.caption), j)
    reps = list(captions.values())
    text_emb = encode_texts([items[j].caption for j in reps])
    relevant = match[:, reps]  # images x distinct captions
    scores = image_emb @ text_emb.T
    t2i = recall_at_k(scores.T, relevant.T)
    i2t = recall_at_k(scores, relevant)
    return RetrievalMetrics(t2i[1], t2i[5], i2t[1], i2t[5], len(items), len(reps))
