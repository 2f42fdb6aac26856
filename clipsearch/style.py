"""Style labels: an MLP head on the CLIP image embedding, and zero-shot labels before one exists.

Every indexed image gets a style label (``photo``, ``cartoon``, ``sketch``, ...) and its
probability. Labels come from the stored, normalized CLIP image vectors, so labelling or
relabelling an index never decodes an image again:

* until a head is trained, from CLIP zero-shot classification: each label's prompt ensemble
  ("a photo of a pencil sketch.", "an illustration in the style of a pencil sketch.", ...) is
  encoded, the normalized text vectors are averaged per label and renormalized, and an image
  gets the softmax of its cosine similarities (times CLIP's logit scale, 100);
* once a head is trained on labelled folders (``DIR/<label>/*.jpg``), from
  :class:`StyleClassifier`, an MLP (dim -> 256 -> labels) on the same vectors.

A head lives next to its index (``<index>/style/head.safetensors`` and ``head.json``) and records
the backbone it was trained on (:attr:`clipsearch.encoder.ModelIdentity.key`); it is refused
against any other backbone. Training one lives in :mod:`clipsearch.styletrain`.

Example::

    with ImageIndex.open("indexes/photos") as index:
        report = index.styles.train("labelled/")   # DIR/<label>/*.jpg
        print(report.metrics.accuracy)
        index.search("a bridge", styles=["sketch"])
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import StyleError, StyleHeadError

if TYPE_CHECKING:
    import torch

    from .encoder import Encoder
    from .index import ImageIndex
    from .indexer import Progress
    from .styletrain import StyleTrainReport as StyleTrainReport
    from .styletrain import TrainingSet as TrainingSet
    from .styletrain import train_head as train_head

STYLE_DIR = "style"
HEAD_WEIGHTS = "head.safetensors"
HEAD_META = "head.json"
HEAD_FORMAT = 1
LABELS_META_KEY = "style_labels"
CLIP_LOGIT_SCALE = 100.0
"""The softmax temperature of zero-shot classification, as CLIP uses it."""

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


@dataclass(frozen=True)
class ClassMetrics:
    """Validation precision, recall and F1 of one label; ``support`` is its validation count."""

    label: str
    precision: float
    recall: float
    f1: float
    support: int


@dataclass(frozen=True)
class StyleMetrics:
    """How a trained head does on its held-out validation split.

    ``confusion[i][j]`` counts validation images of ``labels[i]`` predicted as ``labels[j]``.
    """

    labels: tuple[str, ...]
    accuracy: float
    per_class: tuple[ClassMetrics, ...]
    confusion: tuple[tuple[int, ...], ...]
    train_size: int
    val_size: int
    epochs: int
    best_epoch: int
    val_loss: float

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["labels"] = list(self.labels)
        d["per_class"] = [asdict(c) for c in self.per_class]
        d["confusion"] = [list(row) for row in self.confusion]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> StyleMetrics:
        return cls(
            labels=tuple(d["labels"]),
            accuracy=float(d["accuracy"]),
            per_class=tuple(ClassMetrics(**c) for c in d["per_class"]),
            confusion=tuple(tuple(int(x) for x in row) for row in d["confusion"]),
            train_size=int(d["train_size"]),
            val_size=int(d["val_size"]),
            epochs=int(d["epochs"]),
            best_epoch=int(d["best_epoch"]),
            val_loss=float(d["val_loss"]),
        )


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


@dataclass(frozen=True)
class TrainOptions:
    """How to train a style head.

    Args:
        val_fraction: share of each label's images held out for validation (stratified).
        hidden: width of the hidden layer.
        dropout: dropout after the hidden layer.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        batch_size: vectors per optimizer step.
        max_epochs: upper bound on training epochs.
        patience: stop after this many epochs without a lower validation loss.
        min_delta: how much lower the validation loss must get to count as lower.
        seed: seeds the split, the initial weights, dropout and the batch order.
    """

    val_fraction: float = 0.2
    hidden: int = 256
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    max_epochs: int = 300
    patience: int = 20
    min_delta: float = 1e-4
    seed: int = 0


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
    """The prompt ensemble of a style label."""
    phrases = STYLE_PHRASES.get(label.lower(), (label,))
    return [t.format(p) for p in phrases for t in STYLE_TEMPLATES]


def classify_prompts(label: str) -> list[str]:
    """The prompt ensemble of an arbitrary label for :func:`classify_vector`."""
    return [t.format(label) for t in CLASSIFY_TEMPLATES]


def label_embeddings(encoder: Encoder, prompts: Sequence[Sequence[str]]) -> np.ndarray:
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
        logit_scale: float = CLIP_LOGIT_SCALE,
    ):
        self.labels = tuple(labels)
        self.text_vectors = np.asarray(text_vectors, dtype=np.float32)
        self.logit_scale = logit_scale

    @classmethod
    def for_styles(cls, encoder: Encoder, labels: Sequence[str]) -> ZeroShotLabeller:
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


# --- the MLP head ---------------------------------------------------------------------------


@functools.cache
def _classifier_class() -> type:
    import torch
    from torch import nn

    class StyleClassifier(nn.Module):
        """MLP on a unit CLIP image vector: Linear(dim, hidden), GELU, dropout, Linear(hidden, n).

        The input is first centred and scaled with statistics of the training vectors (the
        ``center`` and ``scale`` buffers): CLIP vectors of one collection differ in small
        components around a shared mean, and a standardized input trains far faster.
        """

        def __init__(self, dim: int, n_classes: int, hidden: int = 256, dropout: float = 0.2):
            super().__init__()
            self.register_buffer("center", torch.zeros(dim))
            self.register_buffer("scale", torch.ones(()))
            self.net = nn.Sequential(
                nn.Linear(dim, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, n_classes),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net((x - self.center) * self.scale)

    StyleClassifier.__qualname__ = "StyleClassifier"
    StyleClassifier.__module__ = __name__
    return StyleClassifier


# Training lives in `styletrain`, which imports this module; these names of it stay importable
# from here, looked up on first use so that neither module imports the other at import time.
_TRAINING_EXPORTS = frozenset({"StyleTrainReport", "TrainingSet", "train_head"})


def __getattr__(name: str) -> Any:
    # `StyleClassifier` is a torch module; build the class on first use so that importing
    # clipsearch (and `clipsearch info`) does not pay for importing torch.
    if name == "StyleClassifier":
        return _classifier_class()
    if name in _TRAINING_EXPORTS:
        from . import styletrain

        return getattr(styletrain, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class StyleHead(Labeller):
    """A trained :class:`StyleClassifier` with its labels and the backbone it belongs to.

    Args:
        model: the classifier.
        labels: class names, in output order.
        backbone: :attr:`ModelIdentity.key` of the CLIP model whose vectors it was trained on.
        metrics: validation metrics from training.
        options: the options it was trained with.
    """

    source = "head"

    def __init__(
        self,
        model: Any,
        labels: Sequence[str],
        backbone: str,
        metrics: StyleMetrics | None = None,
        options: TrainOptions | None = None,
    ):
        self.model = model.eval()
        self.labels = tuple(labels)
        self.backbone = backbone
        self.metrics = metrics
        self.options = options or TrainOptions()

    @property
    def dim(self) -> int:
        return int(self.model.center.shape[0])

    def predict_proba(self, vectors: np.ndarray, batch: int = 8192) -> np.ndarray:
        import torch

        x = np.array(vectors, dtype=np.float32)  # a writable copy: stored vectors are read-only
        out = np.empty((len(x), len(self.labels)), dtype=np.float32)
        with torch.inference_mode():
            for s in range(0, len(x), batch):
                logits = self.model(torch.from_numpy(x[s : s + batch]))
                out[s : s + batch] = torch.softmax(logits, dim=1).numpy()
        return out

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``head.safetensors`` and ``head.json`` into a folder; returns the JSON's path.

        Each file is replaced atomically, weights first: ``head.json`` names the weights'
        checksum, so a crash between the two leaves a pair that :meth:`load` refuses, never a
        silent mix.
        """
        from safetensors.torch import save_file

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}
        tmp = out / f".{HEAD_WEIGHTS}.tmp"
        save_file(state, str(tmp))
        os.chmod(tmp, 0o644)  # safetensors makes it owner-only; head.json next to it is not
        digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
        os.replace(tmp, out / HEAD_WEIGHTS)
        meta = {
            "format": HEAD_FORMAT,
            "labels": list(self.labels),
            "backbone": self.backbone,
            "dim": self.dim,
            "hidden": int(self.model.net[0].out_features),
            "dropout": float(self.model.net[2].p),
            "weights_sha256": digest,
            "options": asdict(self.options),
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "trained_at": time.time(),
        }
        tmp_meta = out / f".{HEAD_META}.tmp"
        tmp_meta.write_text(json.dumps(meta, indent=2))
        os.replace(tmp_meta, out / HEAD_META)
        return out / HEAD_META

    @classmethod
    def load(cls, folder: str | os.PathLike[str], backbone: str | None = None) -> StyleHead:
        """Load a saved head, refusing one trained on another backbone.

        Args:
            folder: the folder :meth:`save` wrote.
            backbone: the :attr:`ModelIdentity.key` the head must belong to; None skips the
                check.

        Raises:
            StyleHeadError: no head there, its files are unreadable or do not belong together,
                or it was trained on another backbone.
        """
        from safetensors.torch import load_file

        folder = Path(folder)
        meta_path, weights_path = folder / HEAD_META, folder / HEAD_WEIGHTS
        meta = read_head_meta(folder, backbone)
        labels, key, dim = meta["labels"], meta["backbone"], meta["dim"]
        fix = f"delete {folder} and train the head again"
        try:
            data = weights_path.read_bytes()
            if (
                meta.get("weights_sha256")
                and hashlib.sha256(data).hexdigest() != meta["weights_sha256"]
            ):
                raise StyleHeadError(
                    f"style head {weights_path} does not match {meta_path} (an interrupted "
                    f"save?); {fix}"
                )
            state = load_file(str(weights_path))
            model = _classifier_class()(
                dim, len(labels), int(meta.get("hidden", 256)), float(meta.get("dropout", 0.0))
            )
            model.load_state_dict(state)
        except StyleHeadError:
            raise
        except Exception as e:  # safetensors and torch raise many types for a bad file
            raise StyleHeadError(f"style head {weights_path} is unreadable ({e}); {fix}") from e
        metrics = StyleMetrics.from_dict(meta["metrics"]) if meta.get("metrics") else None
        known = TrainOptions.__dataclass_fields__
        options = TrainOptions(**{k: v for k, v in meta.get("options", {}).items() if k in known})
        return cls(model, labels, key, metrics, options)


def read_head_meta(folder: str | os.PathLike[str], backbone: str | None = None) -> dict[str, Any]:
    """A saved head's ``head.json`` (labels, backbone, dims, metrics), without its weights.

    Args:
        folder: the folder :meth:`StyleHead.save` wrote.
        backbone: the :attr:`ModelIdentity.key` the head must belong to; None skips the check.

    Raises:
        StyleHeadError: no head there, its metadata is unreadable or from a newer clipsearch,
            or it was trained on another backbone.
    """
    folder = Path(folder)
    meta_path = folder / HEAD_META
    if not meta_path.is_file():
        raise StyleHeadError(
            f"no style head in {folder}; train one with `clipsearch style train DIR`"
        )
    fix = f"delete {folder} and train the head again"
    try:
        meta = json.loads(meta_path.read_text())
        key = meta["backbone"]
        meta["labels"], meta["dim"] = list(meta["labels"]), int(meta["dim"])
        if meta.get("format", 0) > HEAD_FORMAT:
            raise StyleHeadError(
                f"style head {meta_path} has format {meta['format']}, newer than this "
                f"clipsearch understands ({HEAD_FORMAT}); upgrade clipsearch"
            )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise StyleHeadError(f"style head {meta_path} is unreadable ({e}); {fix}") from e
    if backbone is not None and key != backbone:
        raise StyleHeadError(
            f"style head {folder} was trained on backbone {key}, not on this index's model "
            f"({backbone}); its predictions would be meaningless. Train a head for this "
            "model with `clipsearch style train DIR`, or `clipsearch style reset` to go "
            "back to zero-shot labels"
        )
    return meta


# --- an index's styles ----------------------------------------------------------------------


class IndexStyles:
    """The style labels of one index: train a head, relabel, count, label new vectors.

    Reach it as ``index.styles``. Writing methods take the index's write lock.
    """

    def __init__(self, index: ImageIndex):
        self.index = index
        self._labeller: Labeller | None = None

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
        if self._labeller is not None:
            return tuple(self._labeller.labels)
        if not self.has_head():
            return self.zero_shot_labels()
        # head.json alone: asked on every filtered web search, so no weights, no torch.
        return tuple(read_head_meta(self.head_dir, self.index.identity.key)["labels"])

    def labeller(self) -> Labeller:
        """The trained head when there is one, else zero-shot over :meth:`zero_shot_labels`."""
        if self._labeller is None:
            head = self.head()
            self._labeller = head or ZeroShotLabeller.for_styles(
                self.index.encoder, self.zero_shot_labels()
            )
        return self._labeller

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
        from .styletrain import StyleTrainReport, embed_training_folder, train_head

        started = time.monotonic()
        data = embed_training_folder(
            self.index.encoder, folder, batch_size=batch_size, progress=progress
        )
        head = train_head(data, self.index.identity.key, options)
        labelled = 0
        with self.index.writing():
            meta_path = head.save(self.head_dir)
            self._labeller = head
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
        from .indexer import Progress as _Progress

        progress = progress or _Progress()
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
