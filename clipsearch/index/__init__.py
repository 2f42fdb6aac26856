"""An index of a photo folder: :class:`ImageIndex`, the indexing pipeline and its executors
(local threads, Ray), queries, style labels and repair."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipsearch.index.imageindex import ImageIndex, IndexInfo, SearchResult

__all__ = ["ImageIndex", "IndexInfo", "SearchResult"]


def __getattr__(name: str):
    # Looked up on first use: the pipeline's workers import clipsearch.index.pipeline without
    # needing ImageIndex (and SQLAlchemy) behind it.
    if name in __all__:
        from clipsearch.index import imageindex

        return getattr(imageindex, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
