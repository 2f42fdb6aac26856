"""Training a style head: embed a labelled folder tree once, then fit the MLP on its vectors.

:func:`embed_training_folder` walks ``DIR/<label>/*.jpg`` and embeds every image once with the
index's model, skipping and listing unreadable files; :func:`train_head` holds out a stratified
validation split, trains a :class:`clipsearch.style.head.StyleHead` with a class-weighted loss and
early stopping, and measures it (per-label precision, recall, F1 and a confusion matrix).
:meth:`clipsearch.index.styles.IndexStyles.train` runs both and saves the head next to its index.

Example::

    data = embed_training_folder(index.encoder, "labelled/")   # DIR/<label>/*.jpg
    head = train_head(data, index.identity.key, TrainOptions(seed=1))
    print(head.metrics.accuracy)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import ClipsearchError, ImageReadError, StyleError
from clipsearch.media.files import decode_image, read_bytes, walk_images
from clipsearch.progress import Progress
from clipsearch.style.head import ClassMetrics, StyleHead, StyleMetrics, TrainOptions
from clipsearch.threads import TORCH, limit_threads

if TYPE_CHECKING:
    from clipsearch.models.encoder import Encoder


# --- results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSet:
    """Embeddings of a labelled folder tree: ``vectors[i]`` shows ``labels[targets[i]]``."""

    vectors: np.ndarray
    targets: np.ndarray
    labels: tuple[str, ...]
    paths: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())


@dataclass(frozen=True)
class StyleTrainReport:
    """What :meth:`clipsearch.index.styles.IndexStyles.train` did.

    Args:
        metrics: validation metrics of the saved head.
        images: training images embedded.
        skipped: (path, reason) of files in the training folder that could not be read.
        head_path: the saved head's metadata file.
        labelled: index images relabelled by the new head (0 when not applied).
        seconds: wall time of the whole run.
    """

    metrics: StyleMetrics
    images: int
    skipped: tuple[tuple[str, str], ...]
    head_path: str
    labelled: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics.to_dict(),
            "images": self.images,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
            "head_path": self.head_path,
            "labelled": self.labelled,
            "seconds": round(self.seconds, 3),
        }


# --- training -------------------------------------------------------------------------------


def find_training_images(
    folder: str | os.PathLike[str],
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The (path, label) pairs of a ``DIR/<label>/...`` tree, and (path, reason) of files that
    are not in a label folder or cannot be listed.

    Raises:
        StyleError: the folder does not exist.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise StyleError(f"training folder {folder}: no such folder; give DIR/<label>/*.jpg")
    root = root.resolve()
    found: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []

    def on_error(path: str, reason: str) -> None:
        skipped.append((path, reason))

    for f in walk_images(str(root), on_error=on_error):
        if "/" not in f.rel:
            skipped.append((f.path, "not inside a label folder (DIR/<label>/image)"))
            continue
        found.append((f.path, f.rel.split("/", 1)[0]))
    return found, skipped


def embed_training_folder(
    encoder: Encoder,
    folder: str | os.PathLike[str],
    *,
    batch_size: int = 32,
    workers: int = 4,
    progress: Progress | None = None,
) -> TrainingSet:
    """Embed every image of a ``DIR/<label>/...`` tree once, in batches.

    Files that cannot be read or decoded are skipped and listed in ``skipped``.

    Args:
        encoder: the index's model.
        folder: the root of the labelled tree; each sub-folder name is a label.
        batch_size: images per model call.
        workers: decoding threads.
        progress: receives start/advance/close events.

    Raises:
        StyleError: the folder does not exist or has fewer than two labels with images.
    """
    found, skipped = find_training_images(folder)
    progress = progress or Progress()
    vectors: list[np.ndarray] = []
    kept: list[tuple[str, str]] = []

    def prepare(item: tuple[str, str]) -> tuple[Any, str | None]:
        path = item[0]
        try:
            return encoder.preprocess(decode_image(read_bytes(path), path)), None
        except ImageReadError as e:
            return None, e.reason
        except ClipsearchError:
            raise
        except Exception as e:  # a preprocessing bug must not cost the whole training set
            return None, f"cannot preprocess image: {type(e).__name__}: {e}"

    import torch

    progress.start(len(found))
    try:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="style-decode") as pool:
            for start in range(0, len(found), batch_size):
                chunk = found[start : start + batch_size]
                pixels = []
                for item, (px, reason) in zip(chunk, pool.map(prepare, chunk), strict=True):
                    if px is None:
                        skipped.append((item[0], reason or "unreadable"))
                    else:
                        pixels.append(px)
                        kept.append(item)
                if pixels:
                    vectors.append(encoder.encode_pixels(torch.stack(pixels)))
                progress.advance(len(chunk))
    finally:
        progress.close()

    labels = tuple(sorted({label for _, label in kept}))
    if len(labels) < 2:
        raise StyleError(
            f"training folder {folder} has images for {len(labels)} label(s) "
            f"({', '.join(labels) or 'none'}); a head needs at least two label folders "
            "with images: DIR/<label>/*.jpg"
        )
    index_of = {label: i for i, label in enumerate(labels)}
    return TrainingSet(
        vectors=np.concatenate(vectors).astype(np.float32, copy=False),
        targets=np.asarray([index_of[label] for _, label in kept], dtype=np.int64),
        labels=labels,
        paths=tuple(p for p, _ in kept),
        skipped=tuple(skipped),
    )


def stratified_split(
    targets: np.ndarray, val_fraction: float, seed: int, labels: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation positions with each class split in the same proportion.

    Every class keeps at least one training and one validation example.

    Raises:
        StyleError: a class has fewer than two examples, or the fraction is out of range.
    """
    if not 0.0 < val_fraction < 1.0:
        raise StyleError(f"the validation fraction must be between 0 and 1 (got {val_fraction})")
    rng = np.random.default_rng(seed)
    train: list[np.ndarray] = []
    val: list[np.ndarray] = []
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        if len(members) < 2:
            name = labels[int(c)] if int(c) < len(labels) else str(int(c))
            raise StyleError(
                f"label {name!r} has {len(members)} image; each label needs at least 2 "
                "(one to train on, one to validate)"
            )
        members = rng.permutation(members)
        n_val = min(len(members) - 1, max(1, round(len(members) * val_fraction)))
        val.append(members[:n_val])
        train.append(members[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def class_weights(targets: np.ndarray, n_classes: int) -> np.ndarray:
    """Inverse-frequency weights, ``n / (n_classes * count)``: balanced classes weigh 1."""
    counts = np.bincount(targets, minlength=n_classes).astype(np.float64)
    return (len(targets) / (n_classes * np.maximum(counts, 1.0))).astype(np.float32)


def evaluate(
    labels: Sequence[str], truth: np.ndarray, predicted: np.ndarray
) -> tuple[float, tuple[ClassMetrics, ...], tuple[tuple[int, ...], ...]]:
    """(accuracy, per-class metrics, confusion matrix) of predictions against the truth."""
    n = len(labels)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class = []
    for i, label in enumerate(labels):
        tp = int(confusion[i, i])
        predicted_i, actual_i = int(confusion[:, i].sum()), int(confusion[i, :].sum())
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / actual_i if actual_i else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class.append(ClassMetrics(label, precision, recall, f1, actual_i))
    accuracy = float(np.trace(confusion) / max(1, confusion.sum()))
    return accuracy, tuple(per_class), tuple(tuple(int(x) for x in row) for row in confusion)


def train_head(data: TrainingSet, backbone: str, options: TrainOptions | None = None) -> StyleHead:
    """Train a :class:`~clipsearch.style.classifier.StyleClassifier` on embedded, labelled
    vectors.

    A stratified split holds out ``val_fraction`` of each label; the loss weighs classes by
    inverse frequency; training stops once the validation loss has not improved for
    ``patience`` epochs, and the weights of the best epoch are kept. The same data and options
    give the same head.

    Args:
        data: vectors and their labels, e.g. from :func:`embed_training_folder`.
        backbone: :attr:`ModelIdentity.key` of the model that made the vectors.
        options: training options.

    Returns:
        The trained head, with validation metrics in ``head.metrics``.
    """
    import torch
    from torch import nn

    from clipsearch.style.classifier import StyleClassifier

    opts = options or TrainOptions()
    x_all = np.array(data.vectors, dtype=np.float32)
    y_all = np.asarray(data.targets, dtype=np.int64)
    n_classes = len(data.labels)
    train_pos, val_pos = stratified_split(y_all, opts.val_fraction, opts.seed, data.labels)
    with _seeded(opts.seed):
        gen = torch.Generator().manual_seed(opts.seed)
        x_tr, y_tr = torch.from_numpy(x_all[train_pos]), torch.from_numpy(y_all[train_pos])
        x_va, y_va = torch.from_numpy(x_all[val_pos]), torch.from_numpy(y_all[val_pos])
        model = StyleClassifier(x_all.shape[1], n_classes, opts.hidden, opts.dropout)
        center = x_tr.mean(dim=0)
        rms = (x_tr - center).pow(2).sum(dim=1).mean().sqrt()
        model.center.copy_(center)
        model.scale.fill_(1.0 / max(float(rms), 1e-6))
        weights = torch.from_numpy(class_weights(y_all[train_pos], n_classes))
        loss_fn = nn.CrossEntropyLoss(weight=weights)
        optim = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
        best_loss, best_epoch, best_state = float("inf"), 0, None
        epoch = 0
        for epoch in range(1, opts.max_epochs + 1):
            model.train()
            order = torch.randperm(len(x_tr), generator=gen)
            for s in range(0, len(order), opts.batch_size):
                batch = order[s : s + opts.batch_size]
                optim.zero_grad()
                loss_fn(model(x_tr[batch]), y_tr[batch]).backward()
                optim.step()
            model.eval()
            with torch.no_grad():
                val_loss = float(loss_fn(model(x_va), y_va))
            if val_loss < best_loss - opts.min_delta:
                best_loss, best_epoch = val_loss, epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            elif epoch - best_epoch >= opts.patience:
                break
        if best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        with torch.no_grad():
            predicted = model(x_va).argmax(dim=1).numpy()
    accuracy, per_class, confusion = evaluate(data.labels, y_all[val_pos], predicted)
    metrics = StyleMetrics(
        labels=data.labels,
        accuracy=accuracy,
        per_class=per_class,
        confusion=confusion,
        train_size=len(train_pos),
        val_size=len(val_pos),
        epochs=epoch,
        best_epoch=best_epoch,
        val_loss=best_loss,
    )
    return StyleHead.from_module(model, data.labels, backbone, metrics, opts)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG (weight init, dropout) and run on one CPU thread, without
    changing either for the caller.

    The head's matrices are small: handing each step to several threads costs more than it
    saves, and far more on a loaded machine.
    """
    import torch

    with torch.random.fork_rng(devices=[]), limit_threads(1, TORCH):
        torch.manual_seed(seed)
        yield
