"""Contrastive training of open_clip models on (image, caption) pairs.

Training data comes from one of:

* a folder of images with sidecar captions: ``a.jpg`` is described by ``a.txt`` next to it
  (a folder with no sidecars but a ``captions.jsonl`` or ``captions.csv`` uses that file);
* a JSONL file with one ``{"path": ..., "caption": ...}`` object a line, or a CSV file with
  ``path`` and ``caption`` columns; relative paths are relative to the file's folder;
* pairs in memory (:class:`CaptionedImage` with a PIL image or a path);
* a stream: a callable that takes a seed and yields pairs without end, for generated data such
  as :mod:`clipsearch.demo.synth`. Consecutive items form a batch, so a stream decides what each
  batch holds (for example pictures that differ only in a detail, as hard negatives).

The loss is CLIP's symmetric InfoNCE: cross-entropy over the batch similarity matrix, image to
text and text to image, with a learnable temperature clamped at 100 as open_clip clamps it.
Where a batch holds several pairs whose captions fit each other's images (two pictures both
captioned "a red circle"), each such pair counts as a positive instead of a negative; with no
such pairs the loss equals ``open_clip.ClipLoss``.

The result is a folder that open_clip and :func:`clipsearch.models.loading.load_encoder` open as
``local-dir:/that/folder``: ``open_clip_config.json`` and ``open_clip_model.safetensors``.

Example::

    from clipsearch.training.contrastive import TrainConfig, train_clip

    result = train_clip(TrainConfig(output_dir="models/mine", steps=2000), "photos/")
    print(result.metrics)
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from clipsearch.errors import ImageReadError, TrainingError
from clipsearch.models.loading import register_model_configs
from clipsearch.models.openclip_private import hf_hub_model_config

if TYPE_CHECKING:
    import torch

    from clipsearch.models.encoder import Encoder

log = logging.getLogger(__name__)

CONFIG_NAME = "open_clip_config.json"
WEIGHTS_NAME = "open_clip_model.safetensors"
CHECKPOINT_GLOB = "step_*.pt"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_PATH_KEYS = ("path", "image", "file", "filepath", "filename")
_CAPTION_KEYS = ("caption", "text", "title")
_LOGIT_SCALE_MAX = math.log(100)


@dataclass(frozen=True)
class CaptionedImage:
    """One training or validation pair.

    Attributes:
        image: the picture, or the path of its file (read when needed).
        caption: what the picture shows, in words.
        image_facts: optional structured labels of the picture, such as
            ``{"color": "red", "shape": "circle", "count": 2}``.
        caption_facts: optional labels the caption asserts. When every pair in a batch has
            both, caption ``j`` counts as a match for picture ``i`` whenever
            ``caption_facts[j]`` is a subset of ``image_facts[i]``; otherwise pairs match when
            their captions are the same text.
    """

    image: Path | Image.Image
    caption: str
    image_facts: Mapping[str, Any] | None = None
    caption_facts: Mapping[str, Any] | None = None


PairStream = Callable[[int], Iterator[CaptionedImage]]
"""A source of endless pairs: called with a seed, it returns an iterator over pairs."""


@dataclass(frozen=True)
class PairDataset:
    """A finite list of pairs read from a folder, JSONL or CSV file.

    Attributes:
        items: the pairs, in file order.
        source: where they came from, for messages.
        skipped: entries left out while reading (image missing, caption missing or empty).
    """

    items: tuple[CaptionedImage, ...]
    source: str
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.items)


TrainData: TypeAlias = (
    "str | os.PathLike[str] | PairDataset | Sequence[CaptionedImage] | PairStream"
)
"""Anything :func:`train_clip` trains on: a path, a dataset, pairs in memory or a stream."""


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run.

    Attributes:
        output_dir: where the trained model is written (``open_clip_config.json`` and
            ``open_clip_model.safetensors``).
        model: an open_clip architecture name (``clipsearch-demo``, ``ViT-B-32``), or
            ``local-dir:/path`` / ``hf-hub:org/repo`` to start from those weights.
        pretrained: weights for a built-in architecture: a tag, a checkpoint file, or None to
            start from random weights.
        steps: optimizer steps in all, counting those done before a resume.
        batch_size: pairs per step; contrastive learning likes large batches.
        lr: peak learning rate, reached after ``warmup_steps``.
        weight_decay: AdamW weight decay (not applied to gains, biases and the temperature).
        warmup_steps: steps of linear warmup from zero.
        final_lr_fraction: the cosine schedule ends at ``lr * final_lr_fraction``.
        betas: AdamW betas.
        eps: AdamW epsilon.
        grad_clip_norm: clip the gradient to this global norm; None leaves it.
        precision: ``auto`` (bf16 or fp16 autocast on CUDA, fp32 elsewhere), ``fp32``,
            ``bf16`` (autocast; on CPU only where it pays) or ``fp16`` (CUDA only).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``.
        seed: seeds weight init, data order, augmentation and stream data.
        checkpoint_every: save a resumable checkpoint every this many steps; 0 only at the end.
        keep_checkpoints: how many of the newest checkpoints to keep.
        checkpoint_dir: where checkpoints go; default ``output_dir/checkpoints``.
        resume: continue from the newest checkpoint in ``checkpoint_dir``.
        eval_every: measure validation recall every this many steps; 0 only at the end.
        val_size: validation pairs: taken from a stream with another seed, or held out of a
            dataset (at most a tenth of it; datasets under 50 pairs are not split and are
            evaluated on the training pairs).
        augment: mild photometric augmentation (brightness, contrast, saturation, blur). No
            flips or crops, which would make captions such as "on the left" false.
        save_dtype: ``fp32`` or ``fp16`` for the exported weights (fp16 halves the file).
        time_limit_minutes: a wall-clock budget for the training loop (resumed runs count the
            time before the checkpoint). The cosine schedule then follows whichever of steps and
            time is further along, so a run cut short by the clock still ends with a fully
            decayed learning rate; it stops at the limit with a checkpoint and an exported
            model. None runs all ``steps`` on a schedule of steps alone, which repeats exactly.
        num_threads: torch intra-op threads during this run only; None leaves torch's setting.
        labels: ``image_facts`` keys whose values are class labels of each picture, each with
            its classes in a fixed order, such as ``{"style": ("photo", "sketch")}``. With
            ``label_weight`` above zero, a linear classifier per key on the image embedding is
            trained alongside the model and their cross-entropies, times ``label_weight``, are
            added to the contrastive loss, so that the embedding keeps those attributes linearly
            separable even where captions rarely state them. The classifiers are a training aid
            and are not exported. Pictures without a key (or with a value outside its classes)
            do not count towards that key's loss.
        label_weight: the weight of each auxiliary loss; 0 turns them off.
    """

    output_dir: Path | str
    model: str = "clipsearch-demo"
    pretrained: str | None = None
    steps: int = 1000
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    warmup_steps: int = 100
    final_lr_fraction: float = 0.0
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip_norm: float | None = 1.0
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    checkpoint_dir: Path | str | None = None
    resume: bool = False
    eval_every: int = 0
    val_size: int = 500
    augment: bool = True
    save_dtype: str = "fp32"
    time_limit_minutes: float | None = None
    num_threads: int | None = None
    labels: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    label_weight: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 1:
            problems.append(f"steps must be at least 1, not {self.steps}")
        if self.batch_size < 2:
            problems.append(
                f"batch_size must be at least 2 for a contrastive loss, not {self.batch_size}"
            )
        if self.lr <= 0:
            problems.append(f"lr must be positive, not {self.lr}")
        if self.warmup_steps < 0 or self.checkpoint_every < 0 or self.eval_every < 0:
            problems.append("warmup_steps, checkpoint_every and eval_every must be >= 0")
        if self.keep_checkpoints < 1:
            problems.append(f"keep_checkpoints must be at least 1, not {self.keep_checkpoints}")
        if self.precision not in PRECISIONS:
            problems.append(
                f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}"
            )
        if self.save_dtype not in ("fp32", "fp16"):
            problems.append(f"save_dtype must be fp32 or fp16, not {self.save_dtype!r}")
        if self.val_size < 0:
            problems.append(f"val_size must be >= 0, not {self.val_size}")
        if self.label_weight < 0:
            problems.append(f"label_weight must be >= 0, not {self.label_weight}")
        if self.label_weight > 0 and not self.labels:
            problems.append("an auxiliary label loss needs labels (fact key -> classes)")
        for key, classes in self.labels.items():
            if len(set(classes)) < 2:
                problems.append(f"labels[{key!r}] needs at least two distinct classes")
        if problems:
            raise TrainingError("invalid training settings: " + "; ".join(problems))

    @property
    def checkpoints(self) -> Path:
        """The folder that holds the resumable checkpoints."""
        return Path(self.checkpoint_dir or Path(self.output_dir) / "checkpoints")

    def to_dict(self) -> dict[str, Any]:
        """The settings as JSON-ready values."""
        out = asdict(self)
        for key in ("output_dir", "checkpoint_dir"):
            out[key] = None if out[key] is None else str(out[key])
        out["betas"] = list(self.betas)
        out["labels"] = {k: list(v) for k, v in self.labels.items()}
        return out


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

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def __str__(self) -> str:
        return (
            f"text->image R@1 {self.text_to_image_r1:.3f} R@5 {self.text_to_image_r5:.3f}, "
            f"image->text R@1 {self.image_to_text_r1:.3f} R@5 {self.image_to_text_r5:.3f} "
            f"({self.images} images, {self.texts} captions)"
        )


@dataclass(frozen=True)
class TrainResult:
    """What a training run did.

    Attributes:
        output_dir: the folder with the exported model; load it as ``local-dir:<output_dir>``.
        steps: optimizer steps done in all, including any before a resume.
        start_step: the step this run started from (0, or the checkpoint's step).
        losses: the training loss of every step, including those before a resume.
        metrics: validation recall at the end; None when there was nothing to validate on.
        history: (step, metrics) for each periodic validation, the final one included.
        seconds: wall-clock time of this run.
        samples_seen: pairs trained on in all.
        skipped_images: distinct training pictures that could not be read and were left out.
        checkpoint: the newest checkpoint written.
        stopped_early: the time limit ended the run before ``steps``.
        train_seconds: time spent in the training loop, including any before a resume.
        val_source: what the validation pairs were.
        label_accuracy: per labelled fact, the auxiliary classifier's accuracy on the training
            batches of this run's last 50 steps (see ``TrainConfig.labels``); empty without.
    """

    output_dir: Path
    steps: int
    start_step: int
    losses: tuple[float, ...]
    metrics: RetrievalMetrics | None
    history: tuple[tuple[int, RetrievalMetrics], ...]
    seconds: float
    samples_seen: int
    skipped_images: int
    checkpoint: Path | None
    stopped_early: bool
    val_source: str
    train_seconds: float = 0.0
    label_accuracy: Mapping[str, float] = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Mean loss over the last 20 steps (or fewer)."""
        tail = self.losses[-20:]
        return float(sum(tail) / len(tail)) if tail else float("nan")


# ---------------------------------------------------------------------------------------------
# Reading datasets


def load_pairs(source: str | os.PathLike[str]) -> PairDataset:
    """Read pairs from a folder with sidecar ``.txt`` captions, a ``.jsonl`` or a ``.csv`` file.

    Only the listing is read; pictures are decoded during training, and unreadable ones are
    skipped and counted there.

    Args:
        source: the folder or file.

    Raises:
        TrainingError: the source does not exist, has an unknown format, a malformed line or
            column header, or yields no usable pair.
    """
    path = Path(source).expanduser()
    if not path.exists():
        raise TrainingError(
            f"training data {path} does not exist; pass a folder of images with .txt captions, "
            "or a .jsonl/.csv file of path,caption"
        )
    if path.is_dir():
        dataset = _load_folder(path)
    elif path.suffix.lower() == ".jsonl":
        dataset = _load_jsonl(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        dataset = _load_csv(path)
    else:
        raise TrainingError(
            f"training data {path}: unknown format {path.suffix or '(no extension)'}; use a "
            "folder with sidecar .txt captions, a .jsonl or a .csv file"
        )
    if not dataset.items:
        raise TrainingError(
            f"training data {path} holds no usable pairs ({dataset.skipped} entries skipped: "
            "image file missing or caption empty); check the paths and captions"
        )
    return dataset


def _image_suffixes() -> frozenset[str]:
    from clipsearch.media.files import supported_extensions

    return supported_extensions()


def _load_folder(folder: Path) -> PairDataset:
    suffixes = _image_suffixes()
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    items: list[CaptionedImage] = []
    missing = 0
    for img in images:
        sidecar = img.with_suffix(".txt")
        if not sidecar.is_file():
            missing += 1
            continue
        try:
            caption = " ".join(sidecar.read_text(encoding="utf-8", errors="replace").split())
        except OSError:
            missing += 1
            continue
        if caption:
            items.append(CaptionedImage(img, caption))
        else:
            missing += 1
    if not items:
        for name in ("captions.jsonl", "captions.csv"):
            listing = folder / name
            if listing.is_file():
                return _load_jsonl(listing) if name.endswith("jsonl") else _load_csv(listing)
        if images:
            raise TrainingError(
                f"training data {folder}: {len(images)} images but no captions; put the "
                "caption of a.jpg in a.txt next to it, or add a captions.jsonl with "
                '{"path": ..., "caption": ...} lines'
            )
        raise TrainingError(
            f"training data {folder}: no images ({', '.join(sorted(suffixes))}) found; "
            "point at the folder that holds them"
        )
    return PairDataset(tuple(items), str(folder), missing)


def _pick_key(record: Mapping[str, Any], keys: Sequence[str]) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in record.items()}
    for k in keys:
        if k in lowered:
            return lowered[k]
    return None


def _pair_from_record(record: Mapping[str, Any], base: Path, where: str) -> CaptionedImage | None:
    raw_path = _pick_key(record, _PATH_KEYS)
    caption = _pick_key(record, _CAPTION_KEYS)
    if raw_path is None or caption is None:
        raise TrainingError(
            f"{where}: needs a path ({'/'.join(_PATH_KEYS)}) and a caption "
            f"({'/'.join(_CAPTION_KEYS)}); found keys {', '.join(map(str, record)) or 'none'}"
        )
    caption = " ".join(str(caption).split())
    image = Path(str(raw_path)).expanduser()
    if not image.is_absolute():
        image = base / image
    if not caption or not image.is_file():
        return None
    return CaptionedImage(image, caption)


def _load_jsonl(path: Path) -> PairDataset:
    items: list[CaptionedImage] = []
    skipped = 0
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TrainingError(f"cannot read captions file {path}: {e}") from e
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise TrainingError(
                f"{path}:{number}: not valid JSON ({e.msg}); each line must be an object such "
                'as {"path": "a.jpg", "caption": "a red circle"}'
            ) from e
        if not isinstance(record, dict):
            raise TrainingError(
                f"{path}:{number}: expected a JSON object, got {type(record).__name__}"
            )
        pair = _pair_from_record(record, path.parent, f"{path}:{number}")
        if pair is None:
            skipped += 1
        else:
            items.append(pair)
    return PairDataset(tuple(items), str(path), skipped)


def _load_csv(path: Path) -> PairDataset:
    items: list[CaptionedImage] = []
    skipped = 0
    try:
        with open(path, newline="", encoding="utf-8") as f:
            dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
            reader = csv.DictReader(f, dialect=dialect)
            if not reader.fieldnames:
                raise TrainingError(
                    f"captions file {path} is empty; it needs a path,caption header"
                )
            for number, row in enumerate(reader, 2):
                pair = _pair_from_record(row, path.parent, f"{path}:{number}")
                if pair is None:
                    skipped += 1
                else:
                    items.append(pair)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TrainingError(f"cannot read captions file {path}: {e}") from e
    return PairDataset(tuple(items), str(path), skipped)


# ---------------------------------------------------------------------------------------------
# Model set-up


def _model_config(name: str, model: torch.nn.Module) -> dict[str, Any]:
    """The open_clip model config that rebuilds ``model``, for ``open_clip_config.json``."""
    import open_clip
    from open_clip.transformer import QuickGELU

    if name.startswith("local-dir:"):
        with open(Path(name[len("local-dir:") :]) / CONFIG_NAME, encoding="utf-8") as f:
            cfg = json.load(f)["model_cfg"]
    elif name.startswith("hf-hub:"):
        cfg = hf_hub_model_config(name[len("hf-hub:") :])["model_cfg"]
    else:
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            raise TrainingError(f"model {name}: no open_clip config to export")
    cfg = dict(cfg)
    if any(isinstance(m, QuickGELU) for m in model.modules()):
        cfg["quick_gelu"] = True
    return cfg


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def export_model(
    model: torch.nn.Module,
    model_cfg: Mapping[str, Any],
    output_dir: str | os.PathLike[str],
    *,
    save_dtype: str = "fp32",
) -> Path:
    """Write ``model`` as a folder that open_clip loads with ``local-dir:``.

    Args:
        model: an open_clip CLIP model.
        model_cfg: its open_clip model config (``embed_dim``, ``vision_cfg``, ``text_cfg``...).
        output_dir: the folder; created when missing, existing model files are replaced.
        save_dtype: ``fp32`` or ``fp16`` for the floating-point weights.

    Returns:
        The folder.

    Raises:
        TrainingError: the folder cannot be written.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    out = Path(output_dir)
    dtype = torch.float16 if save_dtype == "fp16" else torch.float32
    tensors = {
        k: (v.detach().to("cpu", dtype=dtype) if v.is_floating_point() else v.detach().cpu())
        .contiguous()
        .clone()
        for k, v in model.state_dict().items()
    }
    config = {
        "model_cfg": _jsonable(dict(model_cfg)),
        "preprocess_cfg": _jsonable(dict(open_clip.get_model_preprocess_cfg(model))),
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (WEIGHTS_NAME + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        os.chmod(tmp, 0o644)  # safetensors creates files readable by the owner only
        os.replace(tmp, out / WEIGHTS_NAME)
        (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise TrainingError(f"cannot write the trained model to {out}: {e}") from e
    return out


# ---------------------------------------------------------------------------------------------
# Batches


def _augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Photometric jitter only: geometry stays, so "on the left" stays true, and hue stays, so
    "red" stays red."""
    if rng.random() < 0.8:
        img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.85, 1.15))
        img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.85, 1.15))
        img = ImageEnhance.Color(img).enhance(rng.uniform(0.9, 1.1))
    if rng.random() < 0.15:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.7)))
    return img


def _open(item: CaptionedImage) -> Image.Image:
    if isinstance(item.image, Image.Image):
        return item.image if item.image.mode == "RGB" else item.image.convert("RGB")
    from clipsearch.media.files import load_image

    return load_image(item.image)


def match_matrix(items: Sequence[CaptionedImage]) -> np.ndarray:
    """``M[i, j]`` is True when caption ``j`` fits picture ``i`` (see :class:`CaptionedImage`).

    Args:
        items: the pairs; the diagonal is always True.
    """
    n = len(items)
    image_facts = [it.image_facts for it in items]
    caption_facts = [it.caption_facts for it in items]
    if all(f is not None for f in image_facts) and all(f is not None for f in caption_facts):
        facts = [f or {} for f in image_facts]
        claimed = [f or {} for f in caption_facts]
        out = np.ones((n, n), dtype=bool)
        missing = object()
        for key in sorted({k for c in claimed for k in c}):
            claims = np.empty(n, dtype=object)
            claims[:] = [c.get(key, missing) for c in claimed]
            shown = np.empty(n, dtype=object)
            shown[:] = [f.get(key, missing) for f in facts]
            stated = np.array([c is not missing for c in claims])
            out &= (shown[:, None] == claims[None, :]) | ~stated[None, :]
        np.fill_diagonal(out, True)
        return out
    _, ids = np.unique([_caption_key(it.caption) for it in items], return_inverse=True)
    return ids[:, None] == ids[None, :]


def _caption_key(caption: str) -> str:
    return " ".join(caption.lower().split())


class _Batcher:
    """Turns a dataset or stream into batches of (pixels, tokens, matches), skipping pictures
    that cannot be read (each is reported once and remembered in ``bad``). ``cursor`` counts
    items consumed, so a resumed run continues where the checkpoint left off."""

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
        self.bad: set[str] = set()
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

    def next_batch(
        self, step: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Pixels, tokens, the match matrix and, with ``labels``, a (batch, keys) tensor of each
        picture's class index per key (-100 where it has none, which cross-entropy ignores)."""
        import torch

        rng = np.random.default_rng([self.seed, 1, step])
        pixels: list[torch.Tensor] = []
        kept: list[CaptionedImage] = []
        failures = 0
        while len(kept) < self.batch_size:
            item = self._next_item()
            try:
                if str(item.image) in self.bad:
                    raise ImageReadError(str(item.image), "unreadable (seen before)")
                img = _open(item)
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
                continue
            failures = 0
            if self.augment:
                img = _augment(img, rng)
            pixels.append(self.preprocess(img))
            kept.append(item)
        tokens = self.tokenizer([it.caption for it in kept])
        matches = torch.from_numpy(match_matrix(kept))
        labels = None
        if self._label_index:
            labels = torch.tensor(
                [
                    [
                        index.get((it.image_facts or {}).get(key), -100)
                        for key, index in self._label_index.items()
                    ]
                    for it in kept
                ],
                dtype=torch.long,
            )
        return torch.stack(pixels), tokens, matches, labels


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    matches: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over a batch, with several positives per row where captions match.

    Args:
        image_features: (B, D) L2-normalized image embeddings.
        text_features: (B, D) L2-normalized text embeddings.
        logit_scale: the temperature multiplier (already exponentiated).
        matches: (B, B) bool, ``matches[i, j]`` when caption ``j`` fits image ``i``; None means
            the identity, which gives exactly ``open_clip.ClipLoss``.
    """
    import torch
    import torch.nn.functional as F

    logits = logit_scale * image_features.float() @ text_features.float().T
    if matches is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    m = matches.to(logits.device, torch.float32)
    image_targets = m / m.sum(dim=1, keepdim=True)
    text_targets = m.T / m.T.sum(dim=1, keepdim=True)
    return (F.cross_entropy(logits, image_targets) + F.cross_entropy(logits.T, text_targets)) / 2


# ---------------------------------------------------------------------------------------------
# Evaluation


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
            images.append(_open(it))
            kept.append(it)
        except ImageReadError as e:
            log.warning("skipping unreadable validation image %s", e)
    if not kept:
        raise TrainingError("no validation picture could be read; check the validation files")
    return _metrics(encoder.encode_images(images, batch_size), encoder.encode_texts, kept)


def _metrics(
    image_emb: np.ndarray,
    encode_texts: Callable[[list[str]], np.ndarray],
    items: Sequence[CaptionedImage],
) -> RetrievalMetrics:
    match = match_matrix(items)  # [image i, caption j]
    captions: dict[str, int] = {}
    for j, it in enumerate(items):
        captions.setdefault(_caption_key(it.caption), j)
    reps = list(captions.values())
    text_emb = encode_texts([items[j].caption for j in reps])
    relevant = match[:, reps]  # images x distinct captions
    scores = image_emb @ text_emb.T
    t2i = recall_at_k(scores.T, relevant.T)
    i2t = recall_at_k(scores, relevant)
    return RetrievalMetrics(t2i[1], t2i[5], i2t[1], i2t[5], len(items), len(reps))


# ---------------------------------------------------------------------------------------------
# Training


def _resolve_data(data: Any) -> PairDataset | PairStream:
    if isinstance(data, PairDataset):
        if not data.items:
            raise TrainingError(f"training data {data.source} is empty; it needs at least 2 pairs")
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_pairs(data)
    if callable(data):
        return data
    if isinstance(data, Sequence):
        items = tuple(data)
        if not items:
            raise TrainingError("training data is empty; pass at least 2 pairs")
        if not all(isinstance(it, CaptionedImage) for it in items):
            raise TrainingError("training data in memory must be a sequence of CaptionedImage")
        return PairDataset(items, "memory")
    raise TrainingError(
        f"unsupported training data {type(data).__name__}; pass a path, a PairDataset, a list "
        "of CaptionedImage or a stream callable"
    )


def _split(
    data: PairDataset | PairStream, val_data: Any, config: TrainConfig
) -> tuple[PairDataset | PairStream, list[CaptionedImage], str]:
    if val_data is not None:
        val = _resolve_data(val_data)
        if callable(val) and not isinstance(val, PairDataset):
            stream = iter(val(config.seed + 7919))
            return data, [next(stream) for _ in range(config.val_size)], "given stream"
        assert isinstance(val, PairDataset)
        return data, list(val.items), f"given ({val.source})"
    if config.val_size == 0:
        return data, [], "none"
    if not isinstance(data, PairDataset):
        stream = iter(data(config.seed + 7919))
        return data, [next(stream) for _ in range(config.val_size)], "stream, separate seed"
    n = len(data.items)
    if n < 50:
        return data, list(data.items), "training pairs (dataset under 50 pairs)"
    n_val = min(config.val_size, n // 10)
    order = np.random.default_rng([config.seed, 3]).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = tuple(it for i, it in enumerate(data.items) if i not in val_idx)
    val = [data.items[i] for i in sorted(val_idx)]
    return replace(data, items=train), val, f"{n_val} pairs held out of {n}"


def _autocast_dtype(precision: str, device: str) -> torch.dtype | None:
    import torch

    if precision == "auto":
        if device == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return None
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device != "cuda":
            raise TrainingError(f"fp16 training needs a CUDA GPU, not {device}; use bf16 or fp32")
        return torch.float16
    return torch.bfloat16


def lr_factor(config: TrainConfig, step: int, elapsed: float = 0.0) -> float:
    """The learning-rate multiplier at ``step``: linear warmup, then cosine decay.

    Args:
        config: the run's settings.
        step: optimizer steps done so far.
        elapsed: seconds spent training so far; only used with ``time_limit_minutes``.
    """
    warm, total, floor = config.warmup_steps, config.steps, config.final_lr_fraction
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if config.time_limit_minutes:
        progress = max(progress, elapsed / (config.time_limit_minutes * 60))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # open_clip's rule: no decay for gains, biases, norms and the temperature.
        if p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def _checkpoints(folder: Path) -> list[Path]:
    return sorted(folder.glob(CHECKPOINT_GLOB))


def latest_checkpoint(config: TrainConfig) -> Path | None:
    """The newest checkpoint of a run, or None when it has none."""
    found = _checkpoints(config.checkpoints)
    return found[-1] if found else None


_RESUME_MUST_MATCH = ("model", "pretrained", "batch_size", "seed")


def train_clip(
    config: TrainConfig,
    data: TrainData,
    *,
    val_data: TrainData | None = None,
    progress: bool = True,
    on_eval: Callable[[int, RetrievalMetrics], None] | None = None,
) -> TrainResult:
    """Train an open_clip model contrastively and export it for ``local-dir:`` loading.

    Args:
        config: the run's settings.
        data: a folder with sidecar ``.txt`` captions, a ``.jsonl``/``.csv`` file, a
            :class:`PairDataset`, a list of :class:`CaptionedImage`, or a stream (a callable
            that takes a seed and yields pairs without end).
        val_data: validation pairs in any of the same forms; None takes them from ``data``
            (see ``TrainConfig.val_size``).
        progress: show a tqdm progress bar with the running loss.
        on_eval: called with (step, metrics) after each validation.

    Returns:
        What the run did, with the final validation recall.

    Raises:
        TrainingError: bad settings or data, nothing to resume from, or a checkpoint that
            belongs to another run.
        ModelLoadError: the model or its starting weights cannot be loaded.
    """
    import torch

    register_model_configs()
    source = _resolve_data(data)
    source, val_items, val_source = _split(source, val_data, config)
    if isinstance(source, PairDataset) and len(source.items) < 2:
        raise TrainingError(
            f"training data {source.source} has {len(source.items)} usable pair; a contrastive "
            "loss needs at least 2"
        )

    resume_from: dict[str, Any] | None = None
    ckpt_path: Path | None = None
    if config.resume:
        ckpt_path = latest_checkpoint(config)
        if ckpt_path is None:
            raise TrainingError(
                f"nothing to resume: no checkpoint in {config.checkpoints}; drop resume to "
                "start a new run"
            )
        resume_from = _read_checkpoint(ckpt_path)
        saved = resume_from["config"]
        changed = [k for k in _RESUME_MUST_MATCH if saved.get(k) != config.to_dict()[k]]
        if changed:
            raise TrainingError(
                f"checkpoint {ckpt_path} belongs to another run ({', '.join(changed)} differ); "
                "use the same settings or another checkpoint_dir"
            )

    threads_before = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            return _run(
                config, source, val_items, val_source, resume_from, ckpt_path, progress, on_eval
            )
    finally:
        torch.set_num_threads(threads_before)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated file, wrong format, unpickling refused
        raise TrainingError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to resume "
            "from an older one"
        ) from e


def _run(
    config: TrainConfig,
    source: PairDataset | PairStream,
    val_items: list[CaptionedImage],
    val_source: str,
    resume_from: dict[str, Any] | None,
    ckpt_path: Path | None,
    progress: bool,
    on_eval: Callable[[int, RetrievalMetrics], None] | None,
) -> TrainResult:
    import torch
    from tqdm.auto import tqdm

    from clipsearch.models.identity import (
        DEMO_DIR,
        DEMO_MODEL,
        HF_HUB_PREFIX,
        LOCAL_DIR_PREFIX,
        RANDOM_WEIGHTS,
    )
    from clipsearch.models.loading import load_encoder
    from clipsearch.models.runtime import pick_device

    started = time.monotonic()
    device = pick_device(config.device)
    name = config.model.strip()
    pretrained = config.pretrained
    if name == DEMO_MODEL:
        name = f"{LOCAL_DIR_PREFIX}{DEMO_DIR}"
    elif not name.startswith((LOCAL_DIR_PREFIX, HF_HUB_PREFIX)) and not pretrained:
        pretrained = RANDOM_WEIGHTS
    encoder = load_encoder(name, pretrained, device=device, precision="fp32")
    model = encoder.model
    model_cfg = _model_config(name, model)
    autocast_dtype = _autocast_dtype(config.precision, device)

    # The auxiliary classifier reads the unit-length embedding scaled by sqrt(dim), so that its
    # inputs have components of about unit size and ordinary learning rates move its logits.
    label_head = None
    label_keys = list(config.labels) if config.label_weight > 0 else []
    groups = _param_groups(model, config.weight_decay)
    if label_keys:
        torch.manual_seed(config.seed)
        label_head = torch.nn.ModuleList(
            torch.nn.Linear(encoder.dim, len(config.labels[k])) for k in label_keys
        ).to(device)
        groups.append({"params": list(label_head.parameters()), "weight_decay": 0.0})
    label_scale = math.sqrt(encoder.dim)

    optimizer = torch.optim.AdamW(
        groups,
        lr=config.lr,
        betas=config.betas,
        eps=config.eps,
        # The fused kernel is several times faster on CPU than the per-tensor loop.
        fused=device in ("cpu", "cuda"),
    )

    def set_lr(step: int, elapsed: float) -> float:
        lr = config.lr * lr_factor(config, step, elapsed)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    scaler = torch.amp.GradScaler("cuda") if autocast_dtype is torch.float16 else None

    start_step, cursor, losses, bad_images, elapsed_before = 0, 0, [], [], 0.0
    history: list[tuple[int, RetrievalMetrics]] = []
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        if label_head is not None:
            if not resume_from.get("label_head"):
                raise TrainingError(
                    f"checkpoint {ckpt_path} was written without the auxiliary label loss; "
                    "resume it with the settings it was started with"
                )
            label_head.load_state_dict(resume_from["label_head"])
        optimizer.load_state_dict(resume_from["optimizer"])
        elapsed_before = float(resume_from.get("train_seconds", 0.0))
        if scaler is not None and resume_from.get("scaler"):
            scaler.load_state_dict(resume_from["scaler"])
        start_step = int(resume_from["step"])
        cursor = int(resume_from["cursor"])
        losses = [float(x) for x in resume_from["losses"]]
        bad_images = [str(p) for p in resume_from.get("bad_images", [])]
        history = [(int(s), RetrievalMetrics(**m)) for s, m in resume_from.get("history", [])]
        log.info("resuming from %s at step %d", ckpt_path, start_step)

    batcher = _Batcher(
        source,
        encoder.preprocess,
        encoder.tokenizer,
        batch_size=config.batch_size,
        seed=config.seed,
        augment=config.augment,
        cursor=cursor,
        labels={k: config.labels[k] for k in label_keys},
    )
    batcher.bad = set(bad_images)
    label_hits: dict[str, list[float]] = {k: [] for k in label_keys}

    def save_checkpoint(step: int) -> Path:
        folder = config.checkpoints
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"step_{step:07d}.pt"
        state = {
            "step": step,
            "cursor": batcher.cursor,
            "model": model.state_dict(),
            "label_head": label_head.state_dict() if label_head is not None else None,
            "optimizer": optimizer.state_dict(),
            "train_seconds": elapsed(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "losses": list(losses),
            "bad_images": sorted(batcher.bad),
            "history": [(s, m.as_dict()) for s, m in history],
            "config": config.to_dict(),
        }
        tmp = path.with_suffix(".tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, path)
        except OSError as e:
            raise TrainingError(f"cannot write checkpoint {path}: {e}") from e
        for old in _checkpoints(folder)[: -config.keep_checkpoints]:
            old.unlink(missing_ok=True)
        return path

    def validate(step: int) -> RetrievalMetrics | None:
        if not val_items:
            return None
        model.eval()
        try:
            metrics = evaluate_pairs(encoder, val_items)
        finally:
            model.train()
        history.append((step, metrics))
        if on_eval is not None:
            on_eval(step, metrics)
        return metrics

    loop_started = time.monotonic()

    def elapsed() -> float:
        return elapsed_before + time.monotonic() - loop_started

    model.train()
    limit = config.time_limit_minutes * 60 if config.time_limit_minutes else None
    stopped_early = False
    step = start_step
    last_ckpt: Path | None = ckpt_path
    bar = tqdm(
        total=config.steps, initial=start_step, disable=not progress, desc="train", unit="step"
    )
    try:
        while step < config.steps:
            lr = set_lr(step, elapsed())
            pixels, tokens, matches, labels = batcher.next_batch(step)
            pixels, tokens = pixels.to(device), tokens.to(device)
            with torch.autocast(
                device_type="cuda" if device == "cuda" else "cpu",
                dtype=autocast_dtype or torch.float32,
                enabled=autocast_dtype is not None,
            ):
                image_features = model.encode_image(pixels, normalize=True)
                text_features = model.encode_text(tokens, normalize=True)
            loss = contrastive_loss(image_features, text_features, model.logit_scale.exp(), matches)
            if label_head is not None and labels is not None:
                labels = labels.to(device)
                scaled = image_features.float() * label_scale
                for j, (key, head) in enumerate(zip(label_keys, label_head, strict=True)):
                    target = labels[:, j]
                    known = target >= 0
                    if not bool(known.any()):
                        continue
                    logits = head(scaled[known])
                    loss = loss + config.label_weight * torch.nn.functional.cross_entropy(
                        logits, target[known]
                    )
                    hits = (logits.argmax(dim=1) == target[known]).float().mean()
                    label_hits[key].append(float(hits.item()))
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"the loss became {loss.item()} at step {step}; lower lr (now {config.lr}) "
                    "or use precision fp32"
                )
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if config.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, _LOGIT_SCALE_MAX)
            step += 1
            losses.append(float(loss.item()))
            bar.update(1)
            postfix = {
                "loss": f"{np.mean(losses[-20:]):.3f}",
                "lr": f"{lr:.2e}",
                "T": f"{model.logit_scale.exp().item():.1f}",
            }
            for key, seen in label_hits.items():
                if seen:
                    postfix[key] = f"{np.mean(seen[-50:]):.2f}"
            bar.set_postfix(postfix)
            if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                m = validate(step)
                if m is not None and progress:
                    bar.write(f"step {step}: {m}")
            if config.checkpoint_every and step % config.checkpoint_every == 0:
                last_ckpt = save_checkpoint(step)
            if limit is not None and elapsed() >= limit and step < config.steps:
                stopped_early = True
                log.warning(
                    "time limit of %.1f minutes reached at step %d of %d",
                    config.time_limit_minutes,
                    step,
                    config.steps,
                )
                break
    finally:
        bar.close()

    if step > start_step and (not last_ckpt or not last_ckpt.name.endswith(f"{step:07d}.pt")):
        last_ckpt = save_checkpoint(step)
    model.eval()
    metrics = validate(step)
    out = export_model(model, model_cfg, config.output_dir, save_dtype=config.save_dtype)
    return TrainResult(
        output_dir=out,
        steps=step,
        start_step=start_step,
        losses=tuple(losses),
        metrics=metrics,
        history=tuple(history),
        seconds=time.monotonic() - started,
        samples_seen=batcher.cursor,
        skipped_images=len(batcher.bad),
        checkpoint=last_ckpt,
        stopped_early=stopped_early,
        val_source=val_source,
        train_seconds=elapsed(),
        label_accuracy={k: float(np.mean(v[-50:])) for k, v in label_hits.items() if v},
    )


__all__ = [
    "CaptionedImage",
    "PairDataset",
    "PairStream",
    "RetrievalMetrics",
    "TrainConfig",
    "TrainData",
    "TrainResult",
    "TrainingError",
    "contrastive_loss",
    "evaluate_pairs",
    "export_model",
    "latest_checkpoint",
    "lr_factor",
    "load_pairs",
    "match_matrix",
    "recall_at_k",
    "register_model_configs",
    "train_clip",
]
