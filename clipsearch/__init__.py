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
    "ErrorRecord": "store.catalog",
    **dict.fromkeys(["DEFAULT_MODEL", "DEFAULT_PRETRAINED", "ModelSpec"], "models.identity"),
    "Encoder": "models.encoder",
    **dict.fromkeys(["load_encoder", "load_text_encoder"], "models.loading"),
    **dict.fromkeys(
        [
            "ClipsearchError",
            "ClusterUnavailableError",
            "ConfigError",
            "CorruptIndexError",
            "EmptyIndexError",
            "ImageReadError",
            "IndexLockedError",
            "IndexMismatchError",
            "IndexNotFoundError",
            "IndexVersionError",
            "LinkFolderError",
            "ModelLoadError",
            "QueryError",
            "StyleError",
            "StyleHeadError",
        ],
        "errors",
    ),
    **dict.fromkeys(["ImageIndex", "IndexInfo", "SearchResult"], "index.imageindex"),
    **dict.fromkeys(["DuplicateGroup", "DuplicateMember"], "index.duplicates"),
    "IndexReport": "index.pipeline",
    "FolderWatcher": "index.watch",
    **dict.fromkeys(["LinkReport", "link_results"], "index.links"),
    "Progress": "progress",
    **dict.fromkeys(["Query", "Term"], "index.query"),
    **dict.fromkeys(["IndexStyles", "StyleApplyReport", "StyleStats"], "index.styles"),
    **dict.fromkeys(
        ["DEFAULT_STYLE_LABELS", "Prediction", "ZeroShotLabeller", "classify_image"], "style.labels"
    ),
    **dict.fromkeys(["ClassMetrics", "StyleHead", "StyleMetrics", "TrainOptions"], "style.head"),
    "StyleTrainReport": "style.training",
    **dict.fromkeys(["Setting", "Settings", "resolve_settings"], "settings"),
}

if TYPE_CHECKING:
    from clipsearch.errors import (
        ClipsearchError,
        ClusterUnavailableError,
        ConfigError,
        CorruptIndexError,
        EmptyIndexError,
        ImageReadError,
        IndexLockedError,
        IndexMismatchError,
        IndexNotFoundError,
        IndexVersionError,
        LinkFolderError,
        ModelLoadError,
        QueryError,
        StyleError,
        StyleHeadError,
    )
    from clipsearch.index.duplicates import DuplicateGroup, DuplicateMember
    from clipsearch.index.imageindex import ImageIndex, IndexInfo, SearchResult
    from clipsearch.index.links import LinkReport, link_results
    from clipsearch.index.pipeline import IndexReport
    from clipsearch.index.query import Query, Term
    from clipsearch.index.styles import IndexStyles, StyleApplyReport, StyleStats
    from clipsearch.index.watch import FolderWatcher
    from clipsearch.models.encoder import Encoder
    from clipsearch.models.identity import DEFAULT_MODEL, DEFAULT_PRETRAINED, ModelSpec
    from clipsearch.models.loading import load_encoder, load_text_encoder
    from clipsearch.progress import Progress
    from clipsearch.settings import Setting, Settings, resolve_settings
    from clipsearch.store.catalog import ErrorRecord
    from clipsearch.style.head import ClassMetrics, StyleHead, StyleMetrics, TrainOptions
    from clipsearch.style.labels import (
        DEFAULT_STYLE_LABELS,
        Prediction,
        ZeroShotLabeller,
        classify_image,
    )
    from clipsearch.style.training import StyleTrainReport


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "DEFAULT_STYLE_LABELS",
    "ClassMetrics",
    "ClipsearchError",
    "ClusterUnavailableError",
    "ConfigError",
    "CorruptIndexError",
    "DuplicateGroup",
    "DuplicateMember",
    "EmptyIndexError",
    "Encoder",
    "ErrorRecord",
    "FolderWatcher",
    "ImageIndex",
    "ImageReadError",
    "IndexStyles",
    "IndexInfo",
    "IndexLockedError",
    "IndexMismatchError",
    "IndexNotFoundError",
    "IndexReport",
    "IndexVersionError",
    "LinkFolderError",
    "LinkReport",
    "ModelLoadError",
    "ModelSpec",
    "Prediction",
    "Progress",
    "Query",
    "QueryError",
    "SearchResult",
    "Setting",
    "Settings",
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
    "link_results",
    "load_encoder",
    "load_text_encoder",
    "resolve_settings",
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
