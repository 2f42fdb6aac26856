"""The style labels of one index: the trained head next to it, or zero-shot labels, applied to
the stored vectors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from clipsearch.errors import QueryError, StyleHeadError
from clipsearch.models.towercache import cache_root
from clipsearch.progress import Progress
from clipsearch.store.fileio import atomic_write
from clipsearch.style.head import (
    HEAD_META,
    HEAD_WEIGHTS,
    STYLE_DIR,
    StyleHead,
    TrainOptions,
    read_head_meta,
)
from clipsearch.style.labels import (
    DEFAULT_STYLE_LABELS,
    LABELS_META_KEY,
    Labeller,
    ZeroShotLabeller,
    parse_labels,
    style_prompts,
)
from clipsearch.style.training import StyleTrainReport, embed_training_folder, train_head

if TYPE_CHECKING:
    from clipsearch.models.encoder import Encoder
    from clipsearch.models.identity import ModelIdentity
    from clipsearch.models.texttower import NumpyTextEncoder
    from clipsearch.store.catalog import Catalog

# The zero-shot labeller's text vectors, with the model and prompts they were made for.
VECTORS_META_KEY = "style_label_vectors"


class StyleHost(Protocol):
    """What :class:`IndexStyles` needs of its index (an :class:`~clipsearch.ImageIndex`)."""

    @property
    def path(self) -> Path: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def identity(self) -> ModelIdentity: ...

    @property
    def encoder(self) -> Encoder: ...

    @property
    def text_encoder(self) -> Encoder | NumpyTextEncoder: ...

    def writing(self) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class StyleApplyReport:
    """What relabelling an index did: which labeller (``head`` or ``zero-shot``), how many."""

    source: str
    labels: tuple[str, ...]
    labelled: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "labels": list(self.labels),
            "labelled": self.labelled,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class StyleStats:
    """Images per style label, most frequent first; ``unlabelled`` counts images without one."""

    source: str
    labels: tuple[str, ...]
    counts: tuple[tuple[str, int], ...]
    unlabelled: int
    total: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "labels": list(self.labels),
            "counts": dict(self.counts),
            "unlabelled": self.unlabelled,
            "total": self.total,
        }


# --- an index's styles ----------------------------------------------------------------------


class IndexStyles:
    """The style labels of one index: train a head, relabel, count, label new vectors.

    Reach it as ``index.styles``. Writing methods take the index's write lock.
    """

    def __init__(self, index: StyleHost):
        self.index = index
        self._labeller: Labeller | None = None
        self._labeller_source: object = None  # what the cached labeller was made from

    def _source(self) -> object:
        """What the labeller would be made from now: the saved head's file (another process
        may train a new one while this one runs), else the zero-shot label set."""
        try:
            st = (self.head_dir / HEAD_META).stat()
        except OSError:
            return ("zero-shot", self.zero_shot_labels())
        return ("head", st.st_ino, st.st_size, st.st_mtime_ns)

    def _current_labeller(self) -> Labeller | None:
        """The cached labeller, unless the head or the label set changed since it was made."""
        if self._labeller is not None and self._labeller_source != self._source():
            self._labeller = None
        return self._labeller

    @property
    def head_dir(self) -> Path:
        """Where the trained head lives: ``<index>/style``."""
        return self.index.path / STYLE_DIR

    def has_head(self) -> bool:
        """Whether a trained head is saved for this index."""
        return (self.head_dir / HEAD_META).is_file()

    def head(self) -> StyleHead | None:
        """The trained head, or None before one is trained.

        Raises:
            StyleHeadError: the saved head is unreadable or was trained on another backbone.
        """
        if not self.has_head():
            return None
        return StyleHead.load(self.head_dir, backbone=self.index.identity.key)

    def zero_shot_labels(self) -> tuple[str, ...]:
        """The labels zero-shot labelling chooses from (the default set unless changed)."""
        stored = self.index.catalog.get_meta(LABELS_META_KEY)
        return tuple(stored) if stored else DEFAULT_STYLE_LABELS

    def labels(self) -> tuple[str, ...]:
        """The labels new images can get: the trained head's, else :meth:`zero_shot_labels`.

        Raises:
            StyleHeadError: the saved head is unreadable or was trained on another backbone.
        """
        labeller = self._current_labeller()
        if labeller is not None:
            return tuple(labeller.labels)
        if not self.has_head():
            return self.zero_shot_labels()
        # head.json alone: asked on every filtered web search, so no weights, no torch.
        return tuple(read_head_meta(self.head_dir, self.index.identity.key)["labels"])

    def labeller(self) -> Labeller:
        """The trained head when there is one, else zero-shot over :meth:`zero_shot_labels`."""
        if self._current_labeller() is None:
            source = self._source()
            head = self.head()
            self._labeller = head or self._zero_shot()
            self._labeller_source = source
        return self._labeller

    def _zero_shot(self, keep: bool = False) -> ZeroShotLabeller:
        """Zero-shot over :meth:`zero_shot_labels`, with the text vectors the catalog keeps for
        this model and these prompts; else those the user's cache keeps from another index of
        the model; else made with the text encoder (the NumPy text tower where it applies)
        and kept in the user's cache. Kept in the catalog if ``keep`` (the caller holds the
        write lock)."""
        labels = parse_labels(self.zero_shot_labels())
        made_for = {"model": self.index.identity.key, "prompts": [style_prompts(x) for x in labels]}
        shape = (len(labels), self.index.identity.dim)
        vectors = _kept_vectors(self.index.catalog.get_meta(VECTORS_META_KEY), made_for, shape)
        if vectors is not None:
            return ZeroShotLabeller(labels, vectors)
        # Another index of this model made them before: the user's cache has them (never for
        # random weights, which differ at every load).
        cached = None if self.index.spec.random_weights else _label_cache_path(made_for)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            vectors = _kept_vectors(json.loads(cached.read_text()), made_for, shape)
        if vectors is not None:
            labeller = ZeroShotLabeller(labels, vectors)
        else:
            labeller = ZeroShotLabeller.for_styles(self.index.text_encoder, labels)
        kept = {"for": made_for, "vectors": labeller.text_vectors.tolist()}
        if vectors is None and cached is not None:
            with contextlib.suppress(OSError):
                cached.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(cached, json.dumps(kept).encode(), durable=False)
        if keep:
            self.index.catalog.set_meta(**{VECTORS_META_KEY: kept})
        return labeller

    def prepare(self) -> None:
        """Make the labeller now, and keep a zero-shot labeller's text vectors in the catalog
        for later runs; for :meth:`ImageIndex.add`, which holds the write lock."""
        if self._current_labeller() is None:
            source = self._source()
            self._labeller = self.head() or self._zero_shot(keep=True)
            self._labeller_source = source

    def label(self, vectors: np.ndarray) -> list[tuple[str, float]]:
        """(style, probability) for each of some (N, dim) unit image vectors."""
        return self.labeller().predict(vectors)

    def train(
        self,
        folder: str | os.PathLike[str],
        *,
        options: TrainOptions | None = None,
        apply: bool = True,
        batch_size: int = 32,
        progress: Progress | None = None,
    ) -> StyleTrainReport:
        """Train a style head on a labelled folder tree and save it next to the index.

        Each sub-folder of ``folder`` is a label (``folder/sketch/a.jpg`` is a sketch).
        Images are embedded once with the index's model; unreadable ones are skipped and
        reported. The head replaces zero-shot labelling from then on.

        Args:
            folder: the labelled tree, ``DIR/<label>/*.jpg``.
            options: training options (split, seed, early stopping, ...).
            apply: relabel every indexed image with the new head.
            batch_size: images per model call while embedding.
            progress: receives start/advance/close events while embedding.

        Raises:
            StyleError: the folder is missing or has too few labelled images.
            IndexLockedError: another process is writing to this index.
        """

        started = time.monotonic()
        data = embed_training_folder(
            self.index.encoder, folder, batch_size=batch_size, progress=progress
        )
        head = train_head(data, self.index.identity.key, options)
        labelled = 0
        with self.index.writing():
            meta_path = head.save(self.head_dir)
            self._labeller, self._labeller_source = head, self._source()
            if apply:
                labelled = self._relabel(head)
        return StyleTrainReport(
            metrics=head.metrics,  # type: ignore[arg-type]
            images=len(data.targets),
            skipped=data.skipped,
            head_path=str(meta_path),
            labelled=labelled,
            seconds=time.monotonic() - started,
        )

    def apply(
        self, labels: str | Sequence[str] | None = None, *, progress: Progress | None = None
    ) -> StyleApplyReport:
        """Relabel every indexed image from its stored vector; no image is read again.

        Args:
            labels: a new zero-shot label set (``"photo,sketch,cartoon"`` or a sequence),
                stored in the index; None keeps the current one. Only without a trained head.
            progress: receives start/advance/close events.

        Raises:
            StyleHeadError: ``labels`` given while a trained head decides the labels, or the
                head belongs to another backbone.
            IndexLockedError: another process is writing to this index.
        """
        started = time.monotonic()
        with self.index.writing():
            if labels is not None:
                names = parse_labels(labels)
                if self.has_head():
                    raise StyleHeadError(
                        f"index {self.index.path} has a trained style head, which decides the "
                        "labels; run `clipsearch style reset` first to use zero-shot labels"
                    )
                self.index.catalog.set_meta(**{LABELS_META_KEY: list(names)})
                self._labeller = None
            labeller = self.labeller()
            labelled = self._relabel(labeller, progress)
        return StyleApplyReport(
            labeller.source, labeller.labels, labelled, time.monotonic() - started
        )

    def reset(self, *, apply: bool = True) -> StyleApplyReport | None:
        """Delete the trained head and go back to zero-shot labels.

        Args:
            apply: relabel every indexed image with zero-shot labels.

        Returns:
            The relabelling report, or None when not applied.
        """
        with self.index.writing():
            for name in (HEAD_META, HEAD_WEIGHTS):
                (self.head_dir / name).unlink(missing_ok=True)
            self._labeller = None
        return self.apply() if apply else None

    def stats(self) -> StyleStats:
        """How many indexed images carry each style label."""
        counts = self.index.catalog.style_counts()
        unlabelled = counts.pop(None, 0)
        ordered = tuple(sorted(((str(k), v) for k, v in counts.items()), key=lambda kv: -kv[1]))
        if self.has_head():
            meta_path = self.head_dir / HEAD_META
            try:
                labels = tuple(json.loads(meta_path.read_text())["labels"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise StyleHeadError(
                    f"style head {meta_path} is unreadable ({e}); delete {self.head_dir} and "
                    "train the head again"
                ) from e
            source = "head"
        else:
            source, labels = "zero-shot", self.zero_shot_labels()
        total = unlabelled + sum(v for _, v in ordered)
        return StyleStats(source, labels, ordered, unlabelled, total)

    def _relabel(self, labeller: Labeller, progress: Progress | None = None) -> int:
        progress = progress or Progress()
        catalog = self.index.catalog
        done = 0
        progress.start(catalog.count())
        try:
            for ids, vectors in catalog.iter_vectors():
                predicted = labeller.predict(vectors)
                catalog.set_styles(
                    [(int(i), lb, sc) for i, (lb, sc) in zip(ids, predicted, strict=True)]
                )
                done += len(ids)
                progress.advance(len(ids))
        finally:
            progress.close()
        return done

    def check(self, names: Sequence[str]) -> list[str]:
        """Style labels to filter a search by, each once, after checking that each is known:
        given to an image already, or one the labeller gives (a fair filter before any image
        has it; with a head that does not fit the model, the labels in use still are).

        Raises:
            QueryError: a label is unknown; the message lists the known ones.
        """
        known_set = {s for s in self.index.catalog.style_counts() if s is not None}
        with contextlib.suppress(StyleHeadError):
            known_set.update(self.labels())
        known = sorted(known_set)
        for name in names:
            if name not in known_set:
                has = f"known labels: {', '.join(known)}" if known else "no image has one yet"
                raise QueryError(f"unknown style {name!r}; {has}")
        return list(dict.fromkeys(names))


def _label_cache_path(made_for: dict[str, Any]) -> Path:
    """Where the user's cache keeps zero-shot label vectors of one model and prompt set
    (``$XDG_CACHE_HOME/clipsearch/label-vectors``): a new index of a model used before
    labels without encoding its prompts again (seconds of text encoding)."""
    digest = hashlib.sha256(json.dumps(made_for, sort_keys=True).encode()).hexdigest()[:32]
    return cache_root("label-vectors") / f"{digest}.json"


def _kept_vectors(
    stored: object, made_for: dict[str, Any], shape: tuple[int, int]
) -> np.ndarray | None:
    """Label vectors kept as ``{"for": made_for, "vectors": [...]}``, if they are these."""
    if not isinstance(stored, dict) or stored.get("for") != made_for:
        return None
    with contextlib.suppress(ValueError, TypeError, KeyError):
        vectors = np.asarray(stored["vectors"], dtype=np.float32)
        if vectors.shape == shape and np.isfinite(vectors).all():
            return vectors
    return None
