"""Training pairs and where they come from.

* a folder of images with sidecar captions: ``a.jpg`` is described by ``a.txt`` next to it
  (a folder with no sidecars but a ``captions.jsonl`` or ``captions.csv`` uses that file);
* a JSONL file with one ``{"path": ..., "caption": ...}`` object a line, or a CSV file with
  ``path`` and ``caption`` columns; relative paths are relative to the file's folder;
* pairs in memory (:class:`CaptionedImage` with a PIL image or a path);
* a stream: a callable that takes a seed and yields pairs without end, for generated data such
  as :mod:`clipsearch.demo.synth`. Consecutive items form a batch, so a stream decides what each
  batch holds (for example pictures that differ only in a detail, as hard negatives).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from PIL import Image

from clipsearch.errors import TrainingError
from clipsearch.training.config import TrainConfig

_PATH_KEYS = ("path", "image", "file", "filepath", "filename")
_CAPTION_KEYS = ("caption", "text", "title")
_VAL_STREAM_SEED_OFFSET = 7919
_SPLIT_MIN_PAIRS = 50


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

    def open_image(self) -> Image.Image:
        """The picture in RGB, read from its file when it is a path.

        Raises:
            ImageReadError: the file cannot be read or decoded.
        """
        if isinstance(self.image, Image.Image):
            return self.image if self.image.mode == "RGB" else self.image.convert("RGB")
        from clipsearch.media.files import load_image

        return load_image(self.image)


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
"""Anything :func:`clipsearch.training.contrastive.train_clip` trains on: a path, a dataset,
pairs in memory or a stream."""


def caption_key(caption: str) -> str:
    """The caption as pairs are matched by it: lower case, spaces collapsed."""
    return " ".join(caption.lower().split())


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
    _, ids = np.unique([caption_key(it.caption) for it in items], return_inverse=True)
    return ids[:, None] == ids[None, :]


# ---------------------------------------------------------------------------------------------
# Reading listings


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


def _sidecar_caption(image: Path) -> str:
    """The caption in ``image``'s ``.txt`` beside it, spaces collapsed; empty when none."""
    sidecar = image.with_suffix(".txt")
    if not sidecar.is_file():
        return ""
    try:
        return " ".join(sidecar.read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return ""


def _load_folder(folder: Path) -> PairDataset:
    from clipsearch.media.files import supported_extensions

    suffixes = supported_extensions()
    images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    items: list[CaptionedImage] = []
    for img in images:
        caption = _sidecar_caption(img)
        if caption:
            items.append(CaptionedImage(img, caption))
    if items:
        return PairDataset(tuple(items), str(folder), len(images) - len(items))
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


def _json_record(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise TrainingError(
            f"{path}:{number}: not valid JSON ({e.msg}); each line must be an object such "
            'as {"path": "a.jpg", "caption": "a red circle"}'
        ) from e
    if not isinstance(record, dict):
        raise TrainingError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
    return record


def _load_jsonl(path: Path) -> PairDataset:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TrainingError(f"cannot read captions file {path}: {e}") from e
    pairs = [
        _pair_from_record(_json_record(path, number, line), path.parent, f"{path}:{number}")
        for number, line in enumerate(lines, 1)
        if line.strip()
    ]
    items = tuple(p for p in pairs if p is not None)
    return PairDataset(items, str(path), len(pairs) - len(items))


def _load_csv(path: Path) -> PairDataset:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            dialect = "excel-tab" if path.suffix.lower() == ".tsv" else "excel"
            reader = csv.DictReader(f, dialect=dialect)
            if not reader.fieldnames:
                raise TrainingError(
                    f"captions file {path} is empty; it needs a path,caption header"
                )
            pairs = [
                _pair_from_record(row, path.parent, f"{path}:{number}")
                for number, row in enumerate(reader, 2)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise TrainingError(f"cannot read captions file {path}: {e}") from e
    items = tuple(p for p in pairs if p is not None)
    return PairDataset(items, str(path), len(pairs) - len(items))


# ---------------------------------------------------------------------------------------------
# Training and validation sources


def resolve_data(data: Any) -> PairDataset | PairStream:
    """Any form of :data:`TrainData` as a dataset or a stream.

    Raises:
        TrainingError: the data is empty, of an unsupported type, or cannot be read.
    """
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


def split_validation(
    data: PairDataset | PairStream, val_data: Any, config: TrainConfig
) -> tuple[PairDataset | PairStream, list[CaptionedImage], str]:
    """The training data, the validation pairs and, in words, where those came from.

    Given ``val_data`` is used as is (``val_size`` pairs of a stream); otherwise a stream gives
    ``val_size`` pairs from another seed and a dataset holds out at most a tenth of itself.
    """
    val_seed = config.seed + _VAL_STREAM_SEED_OFFSET
    if val_data is not None:
        val = resolve_data(val_data)
        if isinstance(val, PairDataset):
            return data, list(val.items), f"given ({val.source})"
        return data, _take(val(val_seed), config.val_size), "given stream"
    if config.val_size == 0:
        return data, [], "none"
    if not isinstance(data, PairDataset):
        return data, _take(data(val_seed), config.val_size), "stream, separate seed"
    n = len(data.items)
    if n < _SPLIT_MIN_PAIRS:
        return data, list(data.items), f"training pairs (dataset under {_SPLIT_MIN_PAIRS} pairs)"
    n_val = min(config.val_size, n // 10)
    order = np.random.default_rng([config.seed, 3]).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = tuple(it for i, it in enumerate(data.items) if i not in val_idx)
    val_items = [data.items[i] for i in sorted(val_idx)]
    return replace(data, items=train), val_items, f"{n_val} pairs held out of {n}"


def _take(stream: Iterator[CaptionedImage], n: int) -> list[CaptionedImage]:
    stream = iter(stream)
    return [next(stream) for _ in range(n)]
