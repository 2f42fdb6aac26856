"""Batches for the training loop: pictures decoded, augmented and preprocessed, captions
tokenized, with the match matrix and the class labels of each picture."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from clipsearch.errors import ImageReadError, TrainingError
from clipsearch.training.data import CaptionedImage, PairDataset, PairStream, match_matrix

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

IGNORED_LABEL = -100
"""The class index of a picture without a label; cross-entropy leaves it out."""


def augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Photometric jitter only: geometry stays, so "on the left" stays true, and hue stays, so
    "red" stays red."""
    if rng.random() < 0.8:
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.85, 1.15))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.85, 1.15))
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.9, 1.1))
    if rng.random() < 0.15:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.7)))
    return img


class Batch(NamedTuple):
    """One training batch.

    Attributes:
        pixels: (B, 3, H, W) preprocessed pictures.
        tokens: (B, context) caption tokens.
        matches: (B, B) bool, ``matches[i, j]`` when caption ``j`` fits picture ``i``.
        labels: (B, keys) class index of each picture per labelled fact
            (:data:`IGNORED_LABEL` where it has none), or None without labels.
    """

    pixels: torch.Tensor
    tokens: torch.Tensor
    matches: torch.Tensor
    labels: torch.Tensor | None


class Batcher:
    """Turns a dataset or stream into :class:`Batch` es, skipping pictures that cannot be read
    (each is reported once and remembered in ``bad``). ``cursor`` counts items consumed, so a
    resumed run continues where the checkpoint left off."""

    def __init__(
        self,
        data: PairDataset | PairStream,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        batch_size: int,
        seed: int,
        augment: bool,
        cursor: int = 0,
        labels: Mapping[str, Sequence[Any]] | None = None,
        bad: Sequence[str] = (),
    ):
        self.data = data
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.seed = seed
        self.augment = augment
        self.cursor = cursor
        self._label_index = {
            key: {c: i for i, c in enumerate(classes)} for key, classes in (labels or {}).items()
        }
        self.bad: set[str] = set(bad)
        self._stream: Iterator[CaptionedImage] | None = None
        self._order: np.ndarray | None = None
        self._epoch = -1

    def _next_item(self) -> CaptionedImage:
        if isinstance(self.data, PairDataset):
            n = len(self.data.items)
            epoch, pos = divmod(self.cursor, n)
            if epoch != self._epoch:
                self._order = np.random.default_rng([self.seed, 2, epoch]).permutation(n)
                self._epoch = epoch
            self.cursor += 1
            assert self._order is not None
            return self.data.items[int(self._order[pos])]
        if self._stream is None:
            # A resumed stream restarts with a seed derived from where it left off.
            self._stream = iter(self.data(self.seed * 1_000_003 + self.cursor))
        self.cursor += 1
        try:
            return next(self._stream)
        except StopIteration:
            raise TrainingError(
                "the training stream ended; a stream must yield pairs without end (pass a "
                "list or PairDataset for finite data)"
            ) from None

    def _next_readable(self) -> tuple[CaptionedImage, Image.Image]:
        """The next pair whose picture can be read, and that picture."""
        failures = 0
        while True:
            item = self._next_item()
            try:
                if str(item.image) in self.bad:
                    raise ImageReadError(str(item.image), "unreadable (seen before)")
                return item, item.open_image()
            except ImageReadError as e:
                if str(item.image) not in self.bad:
                    self.bad.add(str(item.image))
                    log.warning("skipping unreadable training image %s", e)
                failures += 1
                if failures > max(100, 4 * self.batch_size):
                    raise TrainingError(
                        f"{failures} training images in a row could not be read (last: {e}); "
                        "check the dataset's files"
                    ) from e

    def next_batch(self, step: int) -> Batch:
        """The batch of ``step``; its augmentation depends on the seed and the step only."""
        import torch

        rng = np.random.default_rng([self.seed, 1, step])
        pixels: list[torch.Tensor] = []
        kept: list[CaptionedImage] = []
        while len(kept) < self.batch_size:
            item, img = self._next_readable()
            if self.augment:
                img = augment(img, rng)
            pixels.append(self.preprocess(img))
            kept.append(item)
        tokens = self.tokenizer([it.caption for it in kept])
        matches = torch.from_numpy(match_matrix(kept))
        return Batch(torch.stack(pixels), tokens, matches, self._labels(kept))

    def _labels(self, items: Sequence[CaptionedImage]) -> torch.Tensor | None:
        if not self._label_index:
            return None
        import torch

        return torch.tensor(
            [
                [
                    index.get((it.image_facts or {}).get(key), IGNORED_LABEL)
                    for key, index in self._label_index.items()
                ]
                for it in items
            ],
            dtype=torch.long,
        )
