"""Today's catalog schema as SQLAlchemy models, and the engine the catalog writes through.

The models name the tables and columns that :mod:`clipsearch.store.catalog` writes through
SQLAlchemy and reads with plain ``sqlite3`` (its read path never imports SQLAlchemy: a search
or an index run with nothing to do starts faster without it). Catalogs are built and
upgraded by the frozen steps of ``migrations.py``, never from these models; a change here
needs a new step there, and a test checks that both build the same schema and that the
catalog's reads agree with these models.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Engine,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    TypeDecorator,
    create_engine,
    event,
    text,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from clipsearch.errors import ClipsearchError


class Base(DeclarativeBase):
    """Today's schema, for queries and writes."""


class FsPath(TypeDecorator):
    """A file path as text. A name that is not valid UTF-8 (``os.fsdecode`` gives it surrogate
    escapes) is stored as its raw bytes instead, so every path round-trips exactly (the read
    path decodes such a BLOB the same way: ``catalog.fs_path``)."""

    impl = String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return value.encode("utf-8", "surrogateescape")
        return value

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        if isinstance(value, bytes):
            return value.decode("utf-8", "surrogateescape")
        return value


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(String)


class Root(Base):
    __tablename__ = "roots"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True)


class ImageRow(Base):
    __tablename__ = "images"
    __table_args__ = (
        Index(
            "ix_images_root_rel",
            "root_id",
            "rel",
            unique=True,
            sqlite_where=text("video_id IS NULL"),
        ),
        Index("ix_images_sha256", "sha256"),
        Index("ix_images_style", "style"),
        Index("ix_images_video_id", "video_id"),
        {"sqlite_autoincrement": True},
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    root_id: Mapped[int] = mapped_column(ForeignKey("roots.id"))
    rel: Mapped[str] = mapped_column(FsPath)
    size: Mapped[int]
    mtime_ns: Mapped[int]
    sha256: Mapped[str] = mapped_column(String(64))
    width: Mapped[int]
    height: Mapped[int]
    indexed_at: Mapped[float]
    style: Mapped[str | None] = mapped_column(String, default=None)
    style_score: Mapped[float | None] = mapped_column(default=None)
    taken: Mapped[float | None] = mapped_column(default=None)  # UTC epoch seconds
    taken_source: Mapped[str | None] = mapped_column(String, default=None)  # exif | mtime
    taken_offset: Mapped[int | None] = mapped_column(default=None)  # minutes east of UTC
    camera_make: Mapped[str | None] = mapped_column(String, default=None)
    camera_model: Mapped[str | None] = mapped_column(String, default=None)
    lat: Mapped[float | None] = mapped_column(default=None)
    lon: Mapped[float | None] = mapped_column(default=None)
    meta_read: Mapped[bool] = mapped_column(default=False, server_default=text("0"))
    frame_time: Mapped[float | None] = mapped_column(default=None)  # seconds into a video
    video_id: Mapped[int | None] = mapped_column(default=None)  # a frame's video file row


class VectorRow(Base):
    __tablename__ = "vectors"
    image_id: Mapped[int] = mapped_column(
        ForeignKey("images.id", ondelete="CASCADE"), primary_key=True
    )
    data: Mapped[bytes] = mapped_column(LargeBinary)


class ErrorRow(Base):
    __tablename__ = "errors"
    id: Mapped[int] = mapped_column(primary_key=True)
    path: Mapped[str] = mapped_column(FsPath, unique=True)
    reason: Mapped[str] = mapped_column(String)
    at: Mapped[float]


def create_catalog_engine(
    path: Path,
    pragmas: Callable[[Any], None],
    explain: Callable[[str], ClipsearchError | None],
) -> Engine:
    """The engine of a catalog file: ``pragmas(dbapi_connection)`` runs on each new
    connection, and ``explain(message)`` turns SQLite's errors into ours where it can."""
    engine = create_engine(f"sqlite:///{path}", future=True)

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        try:
            pragmas(dbapi_conn)
        except Exception as e:  # a non-database file shows up here first
            raise OperationalError("PRAGMA", {}, e) from e

    def on_error(context: Any) -> ClipsearchError | None:
        return explain(" ".join(str(context.original_exception).split()))

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "handle_error", on_error)
    return engine
