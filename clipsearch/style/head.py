"""The trained style head: an MLP on the stored CLIP image vectors, its options, metrics and
files.

Once a head is trained on labelled folders (``DIR/<label>/*.jpg``), it labels an index's images
instead of the zero-shot labeller (:mod:`clipsearch.style.labels`), from the same stored vectors,
so labelling or relabelling never decodes an image again. The network is
:class:`clipsearch.style.classifier.StyleClassifier` (dim -> ``TrainOptions.hidden`` -> labels).

A head lives next to its index (``<index>/style/head.safetensors`` and ``head.json``) and records
the backbone it was trained on (:attr:`clipsearch.models.identity.ModelIdentity.key`); it is refused
against any other backbone. Training one lives in :mod:`clipsearch.style.training`.

Example::

    with ImageIndex.open("indexes/photos") as index:
        report = index.styles.train("labelled/")   # DIR/<label>/*.jpg
        print(report.metrics.accuracy)
        index.search("a bridge", styles=["sketch"])
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsearch.errors import StyleHeadError
from clipsearch.models.npmath import gelu
from clipsearch.store.fileio import atomic_write
from clipsearch.style.labels import Labeller

STYLE_DIR = "style"
HEAD_WEIGHTS = "head.safetensors"
HEAD_META = "head.json"
# The tensors of a head, by their StyleClassifier state-dict names.
WEIGHT_NAMES = ("center", "scale", "net.0.weight", "net.0.bias", "net.3.weight", "net.3.bias")
HEAD_FORMAT = 1


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


# --- the MLP head ---------------------------------------------------------------------------


class StyleHead(Labeller):
    """A trained :class:`~clipsearch.style.classifier.StyleClassifier` with its labels and the
    backbone it belongs to. It labels in NumPy (a few thin products), so labelling the photos
    of an indexing run never imports torch; only training does.

    Args:
        weights: the classifier's tensors by state-dict name (:data:`WEIGHT_NAMES`), as
            float32 arrays; :meth:`from_module` takes them from a trained module.
        labels: class names, in output order.
        backbone: :attr:`ModelIdentity.key` of the CLIP model whose vectors it was trained on.
        metrics: validation metrics from training.
        options: the options it was trained with.

    Raises:
        ValueError: a tensor is missing or the shapes do not fit together and the labels.
    """

    source = "head"

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        labels: Sequence[str],
        backbone: str,
        metrics: StyleMetrics | None = None,
        options: TrainOptions | None = None,
    ):
        self.weights = {k: np.asarray(weights[k], dtype=np.float32) for k in WEIGHT_NAMES}
        if self.weights["scale"].size == 1:  # a scalar (safetensors' NumPy reader gives (1,))
            self.weights["scale"] = self.weights["scale"].reshape(())
        self.labels = tuple(labels)
        self.backbone = backbone
        self.metrics = metrics
        self.options = options or TrainOptions()
        w = self.weights
        dim, hidden = len(w["center"]), len(w["net.0.bias"])
        want = {
            "center": (dim,),
            "scale": (),
            "net.0.weight": (hidden, dim),
            "net.0.bias": (hidden,),
            "net.3.weight": (len(self.labels), hidden),
            "net.3.bias": (len(self.labels),),
        }
        for name, shape in want.items():
            if w[name].shape != shape:
                raise ValueError(f"style head tensor {name}: shape {w[name].shape}, not {shape}")

    @classmethod
    def from_module(cls, model: Any, *args: Any, **kwargs: Any) -> StyleHead:
        """The head of a trained :class:`~clipsearch.style.classifier.StyleClassifier`; the
        other arguments are the constructor's."""
        state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
        return cls(state, *args, **kwargs)

    @property
    def dim(self) -> int:
        return len(self.weights["center"])

    @property
    def hidden(self) -> int:
        return len(self.weights["net.0.bias"])

    def predict_proba(self, vectors: np.ndarray, batch: int = 8192) -> np.ndarray:
        w = self.weights
        x = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        out = np.empty((len(x), len(self.labels)), dtype=np.float32)
        for s in range(0, len(x), batch):
            h = ((x[s : s + batch] - w["center"]) * w["scale"]) @ w["net.0.weight"].T
            h = gelu(h + w["net.0.bias"])  # dropout is the identity when labelling
            logits = h @ w["net.3.weight"].T + w["net.3.bias"]
            logits -= logits.max(axis=1, keepdims=True)
            np.exp(logits, out=logits)
            out[s : s + batch] = logits / logits.sum(axis=1, keepdims=True)
        return out

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write ``head.safetensors`` and ``head.json`` into a folder; returns the JSON's path.

        Each file is replaced atomically, weights first: ``head.json`` names the weights'
        checksum, so a crash between the two leaves a pair that :meth:`load` refuses, never a
        silent mix. Both are readable by all, like the index files next to them.
        """
        from safetensors.numpy import save

        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        weights = save({k: np.ascontiguousarray(v) for k, v in self.weights.items()})
        digest = hashlib.sha256(weights).hexdigest()
        atomic_write(out / HEAD_WEIGHTS, weights)
        meta = {
            "format": HEAD_FORMAT,
            "labels": list(self.labels),
            "backbone": self.backbone,
            "dim": self.dim,
            "hidden": self.hidden,
            "dropout": float(self.options.dropout),
            "weights_sha256": digest,
            "options": asdict(self.options),
            "metrics": self.metrics.to_dict() if self.metrics else None,
            "trained_at": time.time(),
        }
        atomic_write(out / HEAD_META, json.dumps(meta, indent=2).encode())
        return out / HEAD_META

    @classmethod
    def load(cls, folder: str | os.PathLike[str], backbone: str | None = None) -> StyleHead:
        """Load a saved head, refusing one trained on another backbone. Torch-free.

        Args:
            folder: the folder :meth:`save` wrote.
            backbone: the :attr:`ModelIdentity.key` the head must belong to; None skips the
                check.

        Raises:
            StyleHeadError: no head there, its files are unreadable or do not belong together,
                or it was trained on another backbone.
        """
        from safetensors.numpy import load

        folder = Path(folder)
        meta_path, weights_path = folder / HEAD_META, folder / HEAD_WEIGHTS
        meta = read_head_meta(folder, backbone)
        fix = _retrain(folder)
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
            metrics = StyleMetrics.from_dict(meta["metrics"]) if meta.get("metrics") else None
            known = TrainOptions.__dataclass_fields__
            options = TrainOptions(
                **{k: v for k, v in meta.get("options", {}).items() if k in known}
            )
            head = cls(load(data), meta["labels"], meta["backbone"], metrics, options)
            if head.dim != meta["dim"]:
                raise ValueError(f"a head of {head.dim} dimensions, {meta_path} says {meta['dim']}")
        except StyleHeadError:
            raise
        except Exception as e:  # safetensors raises many types for a bad file
            raise StyleHeadError(f"style head {weights_path} is unreadable ({e}); {fix}") from e
        return head


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
    fix = _retrain(folder)
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


def _retrain(folder: Path) -> str:
    """The fix for a head that cannot be used."""
    return f"delete {folder} and train the head again"
