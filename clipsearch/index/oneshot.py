"""Embed or classify one thing with an index's model, or with any model where there is no index.

The rule the `embed` and `classify` commands follow, for scripts too: the index's model when an
index exists at ``index`` and no model is named; otherwise the named (or default) model, loaded
for this one call.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsearch.index.imageindex import ImageIndex
from clipsearch.index.query import Query, combine
from clipsearch.models.identity import ModelSpec
from clipsearch.models.loading import load_encoder, load_image_encoder, load_text_encoder
from clipsearch.store.catalog import CATALOG_FILE
from clipsearch.style.labels import classify_image, parse_labels

if TYPE_CHECKING:
    from clipsearch.style.labels import Prediction


def index_exists(index: str | os.PathLike[str] | None) -> bool:
    """Whether ``index`` is a folder that holds an index's catalog."""
    return index is not None and (Path(index).expanduser() / CATALOG_FILE).is_file()


def _use_index(
    index: str | os.PathLike[str] | None,
    model: str | None,
    pretrained: str | None,
    model_is_default: bool,
) -> bool:
    given = not model_is_default and (model is not None or pretrained is not None)
    return not given and index_exists(index)


def embed_query(
    query: Query,
    *,
    index: str | os.PathLike[str] | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    model_is_default: bool = False,
) -> np.ndarray:
    """The combined, normalized vector of a query, by the index's model or the given one.
    With ``model_is_default`` (a config file's model) the index's model wins where it exists.

    Text terms go through :func:`load_text_encoder` (the NumPy text tower where it applies),
    image terms through :func:`load_image_encoder` (the NumPy image tower where it applies),
    each loaded only when the query has such terms.

    Raises:
        IndexNotFoundError, ModelLoadError, QueryError, ImageReadError: as their names say.
    """
    if _use_index(index, model, pretrained, model_is_default):
        with ImageIndex.open(index, device=device, precision=precision) as opened:
            return opened.query_vector(query)
    vectors: list[np.ndarray] = [np.empty(0)] * len(query.terms)
    texts = [i for i, t in enumerate(query.terms) if t.kind == "text"]
    if texts:
        encoder = load_text_encoder(model, pretrained, device=device, precision=precision)
        encoded = encoder.encode_texts([query.terms[i].value for i in texts])
        for i, vector in zip(texts, encoded, strict=True):
            vectors[i] = vector
    if query.images:
        spec = ModelSpec.from_user(model, pretrained)
        image_encoder = load_image_encoder(
            spec, images=len(query.images), device=device, precision=precision
        )
        for i, term in enumerate(query.terms):
            if term.kind == "image":
                vectors[i] = image_encoder.encode_file(term.value)
    return combine(query.terms, np.stack(vectors))


def classify(
    image: str | os.PathLike[str],
    labels: str | Sequence[str],
    *,
    index: str | os.PathLike[str] | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    device: str = "auto",
    precision: str = "fp32",
    model_is_default: bool = False,
) -> list[Prediction]:
    """Zero-shot classify an image among any labels, by the index's model or the given one.
    With ``model_is_default`` (a config file's model) the index's model wins where it exists.

    Returns:
        Every label with its softmax probability, most probable first.

    Raises:
        StyleError: the labels are invalid (checked before any model is loaded).
        QueryError, ImageReadError, ModelLoadError: as their names say.
    """
    if _use_index(index, model, pretrained, model_is_default):
        with ImageIndex.open(index, device=device, precision=precision) as opened:
            return opened.classify(image, labels)
    names = parse_labels(labels)
    encoder = load_encoder(model, pretrained, device=device, precision=precision)
    return classify_image(encoder, image, names)
