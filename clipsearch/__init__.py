"""clipsearch: semantic search for your own photos with CLIP, FAISS and SQLite.

The public Python API::

    from clipsearch import ImageIndex, Query

    with ImageIndex.open_or_create("indexes/photos") as index:
        index.add(["~/Pictures"])
        hits = index.search("a dog on the beach", k=5)
        hits = index.search(Query.text("beach") + 0.5 * Query.text("sunset") - Query.text("people"))
        hits = index.similar("~/Pictures/dog.jpg")
"""

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
    StyleTrainReport,
    TrainOptions,
    ZeroShotLabeller,
    classify_image,
)

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
