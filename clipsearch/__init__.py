"""clipsearch: semantic search for your own photos with CLIP, FAISS and SQLite.

The public Python API::

    from clipsearch import ImageIndex, Query

    with ImageIndex.open_or_create("indexes/photos") as index:
        index.add(["~/Pictures"])
        hits = index.search("a dog on the beach", k=5)
        hits = index.search(Query.text("beach") + 0.5 * Query.text("sunset") - Query.text("people"))
        hits = index.similar("~/Pictures/dog.jpg")
"""

from typing import TYPE_CHECKING

# Names are imported on first use (PEP 562), so that `clipsearch --help` or a text search does
# not pay for modules it never touches (SQLAlchemy, torch through the style head, ...).
_EXPORTS = {
    "ErrorRecord": "catalog",
    "DEFAULT_MODEL": "encoder",
    "DEFAULT_PRETRAINED": "encoder",
    "Encoder": "encoder",
    "ModelSpec": "encoder",
    "load_encoder": "encoder",
    **dict.fromkeys(
        [
            "ClipsearchError",
            "CorruptIndexError",
            "EmptyIndexError",
            "ImageReadError",
            "IndexLockedError",
            "IndexMismatchError",
            "IndexNotFoundError",
            "ModelLoadError",
            "QueryError",
            "StyleError",
            "StyleHeadError",
        ],
        "errors",
    ),
    "ImageIndex": "index",
    "IndexInfo": "index",
    "SearchResult": "index",
    "IndexReport": "indexer",
    "Progress": "indexer",
    "Query": "search",
    "Term": "search",
    **dict.fromkeys(
        [
            "DEFAULT_STYLE_LABELS",
            "ClassMetrics",
            "IndexStyles",
            "Prediction",
            "StyleApplyReport",
            "StyleHead",
            "StyleMetrics",
            "StyleStats",
            "TrainOptions",
            "ZeroShotLabeller",
            "classify_image",
        ],
        "style",
    ),
    "StyleTrainReport": "styletrain",
}

if TYPE_CHECKING:
    from .catalog import ErrorRecord
    from .encoder import DEFAULT_MODEL, DEFAULT_PRETRAINED, Encoder, ModelSpec, load_encoder
    from .errors import (
        ClipsearchError,
        CorruptIndexError,
        EmptyIndexError,
        ImageReadError,
        IndexLockedError,
        IndexMismatchError,
        IndexNotFoundError,
        ModelLoadError,
        QueryError,
        StyleError,
        StyleHeadError,
    )
    from .index import ImageIndex, IndexInfo, SearchResult
    from .indexer import IndexReport, Progress
    from .search import Query, Term
    from .style import (
        DEFAULT_STYLE_LABELS,
        ClassMetrics,
        IndexStyles,
        Prediction,
        StyleApplyReport,
        StyleHead,
        StyleMetrics,
        StyleStats,
        TrainOptions,
        ZeroShotLabeller,
        classify_image,
    )
    from .styletrain import StyleTrainReport


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "DEFAULT_STYLE_LABELS",
    "ClassMetrics",
    "ClipsearchError",
    "CorruptIndexError",
    "EmptyIndexError",
    "Encoder",
    "ErrorRecord",
    "ImageIndex",
    "ImageReadError",
    "IndexStyles",
    "IndexInfo",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexReport",
    "ModelLoadError",
    "ModelSpec",
    "Prediction",
    "Progress",
    "Query",
    "QueryError",
    "SearchResult",
    "StyleApplyReport",
    "StyleError",
    "StyleHead",
    "StyleHeadError",
    "StyleMetrics",
    "StyleStats",
    "StyleTrainReport",
    "Term",
    "TrainOptions",
    "ZeroShotLabeller",
    "classify_image",
    "load_encoder",
]


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
