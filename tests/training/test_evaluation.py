"""Retrieval recall, computed on known scores."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from clipsearch.training.data import CaptionedImage
from clipsearch.training.evaluation import recall_at_k, retrieval_metrics


def test_recall_at_k():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    relevant = np.array([[False, False, True], [True, False, False]])
    assert recall_at_k(scores, relevant, (1, 2)) == {1: 0.0, 2: 1.0}
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_at_k(scores, np.zeros_like(relevant))


def test_retrieval_metrics_rank_distinct_captions():
    img = Image.new("RGB", (4, 4))
    items = [
        CaptionedImage(img, "a red circle"),
        CaptionedImage(img, "A red  circle"),  # the same caption: one query, two matches
        CaptionedImage(img, "a blue square"),
    ]
    image_emb = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    asked: list[list[str]] = []

    def encode_texts(texts: list[str]) -> np.ndarray:
        asked.append(texts)
        return np.array([[1.0, 0.0] if "red" in t else [0.0, 1.0] for t in texts])

    m = retrieval_metrics(image_emb, encode_texts, items)
    assert asked == [["a red circle", "a blue square"]]
    assert (m.images, m.texts) == (3, 2)
    assert m.text_to_image_r1 == m.image_to_text_r1 == 1.0
    flipped = retrieval_metrics(image_emb[::-1].copy(), encode_texts, items)
    assert flipped.text_to_image_r1 == 0.5  # "red" finds the red pictures, "blue" does not
