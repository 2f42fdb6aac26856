"""Zero-shot style labels: prompt ensembles per label, and the labeller that scores stored
image vectors against them.

Until a head is trained, an image's style comes from CLIP zero-shot classification: each
label's prompt ensemble ("a photo of a pencil sketch.", "an illustration in the style of a
pencil sketch.", ...) is encoded, the normalized text vectors are averaged per label and
renormalized, and an image gets the softmax of its cosine similarities (times CLIP's logit
scale, 100). :class:`Labeller` is the interface that the trained head
(:class:`clipsearch.style.head.StyleHead`) shares.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import StyleError
from clipsearch.models.identity import MAX_LOGIT_SCALE

if TYPE_CHECKING:
    from clipsearch.models.encoder import Encoder
    from clipsearch.models.texttower import NumpyTextEncoder

LABELS_META_KEY = "style_labels"

DEFAULT_STYLE_LABELS: tuple[str, ...] = (
    "photo",
    "cartoon",
    "sketch",
    "painting",
    "3d render",
    "pixel art",
    "screenshot",
)
STYLE_PHRASES: Mapping[str, tuple[str, ...]] = {
    "photo": ("a photograph", "a realistic photo", "a snapshot taken with a camera"),
    "cartoon": ("a cartoon", "an anime drawing", "a comic book illustration"),
    "sketch": ("a pencil sketch", "a line drawing", "a black and white ink drawing"),
    "painting": ("a painting", "an oil painting", "a watercolor painting"),
    "3d render": ("a 3D render", "a computer generated 3D image", "a CGI rendering"),
    "pixel art": ("pixel art", "a pixelated 8-bit video game sprite", "a low resolution image"),
    "screenshot": ("a screenshot", "a scanned document", "a screenshot of text on a screen"),
}
"""What each default label means; any other label is described by its own name."""
STYLE_TEMPLATES: tuple[str, ...] = (
    "{}.",
    "a photo of {}.",
    "an illustration in the style of {}.",
    "an image that looks like {}.",
    "an example of {}.",
)
CLASSIFY_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of the {}.",
    "an illustration of a {}.",
)


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prediction:
    """One label and its probability."""

    label: str
    probability: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- labels and prompts ---------------------------------------------------------------------


def parse_labels(labels: str | Sequence[str], *, minimum: int = 2) -> tuple[str, ...]:
    """Clean a label list given as ``"a, b, c"`` or a sequence: stripped, in order, unique.

    Raises:
        StyleError: fewer than ``minimum`` labels, or a label given twice.
    """
    raw = labels.split(",") if isinstance(labels, str) else list(labels)
    out = tuple(" ".join(str(label).split()) for label in raw)
    out = tuple(label for label in out if label)
    dupes = sorted({label for label in out if out.count(label) > 1})
    if dupes:
        raise StyleError(f"label {dupes[0]!r} is given twice; give each label once")
    if len(out) < minimum:
        raise StyleError(
            f'give at least {minimum} comma-separated labels, e.g. "photo,sketch,cartoon" '
            f"(got {len(out)})"
        )
    return out


def style_prompts(label: str) -> list[str]:
    """The prompt ensemble of a style label; a label in another language than English is its
    own prompt (see :func:`templated`)."""
    if not templated(label):
        return [label]
    phrases = STYLE_PHRASES.get(label.lower(), (label,))
    return [t.format(p) for p in phrases for t in STYLE_TEMPLATES]


def classify_prompts(label: str) -> list[str]:
    """The prompt ensemble of an arbitrary label for :func:`classify_vector`; a label in
    another language than English is its own prompt (see :func:`templated`)."""
    if not templated(label):
        return [label]
    return [t.format(label) for t in CLASSIFY_TEMPLATES]


def templated(label: str) -> bool:
    """Whether a label goes into the English prompt templates: only a label written in ASCII.

    A label such as "연필 스케치" or "кошка" would otherwise become a sentence in two languages
    ("a photo of a 연필 스케치."), which a multilingual model reads worse than the label alone,
    and which a model taught one language per caption (the demo model) has never seen.
    """
    return label.isascii()


def label_embeddings(
    encoder: Encoder | NumpyTextEncoder, prompts: Sequence[Sequence[str]]
) -> np.ndarray:
    """One unit vector per label: the mean of its prompts' unit text vectors, renormalized."""
    flat = [p for group in prompts for p in group]
    encoded = encoder.encode_texts(flat).astype(np.float64)
    out = np.empty((len(prompts), encoded.shape[1]), dtype=np.float32)
    start = 0
    for i, group in enumerate(prompts):
        mean = encoded[start : start + len(group)].mean(axis=0)
        out[i] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        start += len(group)
    return out


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --- labellers ------------------------------------------------------------------------------


class Labeller:
    """Turns stored unit image vectors into (label, probability) pairs."""

    source: str = ""
    labels: tuple[str, ...] = ()

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """(N, len(labels)) probabilities for (N, dim) unit vectors; rows sum to 1."""
        raise NotImplementedError

    def predict(self, vectors: np.ndarray) -> list[tuple[str, float]]:
        """The most probable label of each vector, with its probability."""
        if len(vectors) == 0:
            return []
        probs = self.predict_proba(vectors)
        best = probs.argmax(axis=1)
        return [(self.labels[j], float(probs[i, j])) for i, j in enumerate(best)]


class ZeroShotLabeller(Labeller):
    """CLIP zero-shot classification against one text vector per label.

    Args:
        labels: the label names.
        text_vectors: (len(labels), dim) unit vectors, e.g. from :func:`label_embeddings`.
        logit_scale: softmax temperature; CLIP's 100 by default.
    """

    source = "zero-shot"

    def __init__(
        self,
        labels: Sequence[str],
        text_vectors: np.ndarray,
        logit_scale: float = MAX_LOGIT_SCALE,
    ):
        self.labels = tuple(labels)
        self.text_vectors = np.asarray(text_vectors, dtype=np.float32)
        self.logit_scale = logit_scale

    @classmethod
    def for_styles(
        cls, encoder: Encoder | NumpyTextEncoder, labels: Sequence[str]
    ) -> ZeroShotLabeller:
        """A labeller for style labels, with the style prompt ensembles."""
        labels = parse_labels(labels)
        return cls(labels, label_embeddings(encoder, [style_prompts(lb) for lb in labels]))

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        sims = np.asarray(vectors, dtype=np.float32) @ self.text_vectors.T
        return _softmax(self.logit_scale * sims.astype(np.float64)).astype(np.float32)


def classify_vector(
    encoder: Encoder, vector: np.ndarray, labels: str | Sequence[str]
) -> list[Prediction]:
    """Zero-shot classify one unit image vector among any labels.

    Args:
        encoder: the model that made ``vector``.
        vector: a (dim,) unit image vector.
        labels: two or more labels, as a sequence or ``"cat,dog,car"``.

    Returns:
        Every label with its softmax probability (they sum to 1), most probable first.
    """
    names = parse_labels(labels)
    text = label_embeddings(encoder, [classify_prompts(lb) for lb in names])
    probs = ZeroShotLabeller(names, text).predict_proba(np.asarray(vector)[None, :])[0]
    out = [Prediction(lb, float(p)) for lb, p in zip(names, probs, strict=True)]
    return sorted(out, key=lambda p: -p.probability)


def classify_image(
    encoder: Encoder, image: str | os.PathLike[str], labels: str | Sequence[str]
) -> list[Prediction]:
    """Zero-shot classify an image file among any labels (see :func:`classify_vector`).

    Raises:
        StyleError: the labels are invalid.
        ImageReadError: the image cannot be read.
    """
    names = parse_labels(labels)
    vector = encoder.encode_file(image)
    return classify_vector(encoder, vector, names)
