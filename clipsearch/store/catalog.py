"""The SQLite catalog: what is indexed, where it lives, its raw vector and what went wrong.

The catalog is the source of truth of an index. Every batch of the indexer is one
transaction that writes image rows and their float32 vectors together, so an interrupted run
loses at most the batch in flight. The FAISS file is derived from it (see ``vectors.py``).
Image ids are never reused (AUTOINCREMENT), and a re-encoded file gets a new id, so the set of
ids alone says what the FAISS index is missing or holds in excess.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import (
    ForeignKey,
    Index,
    LargeBinary,
    String,
    TypeDecorator,
    cast,
    create_engine,
    delete,
    event,
    func,
    literal,
    select,
    text,
    update,
)
from sqlalchemy.exc import DatabaseError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from clipsearch.errors import ClipsearchError, CorruptIndexError
from clipsearch.media.photometa import PhotoMeta, distance_km
from clipsearch.store.migrations import upgrade

CATALOG_FILE = "catalog.sqlite"


class Base(DeclarativeBase):
    """Today's schema, for queries. Catalogs are built and upgraded by the frozen steps of
    ``migrations.py``, never from these models; a change here needs a new step there."""


class FsPath(TypeDecorator):
    """A file path as text. A name that is not valid UTF-8 (``os.fsdecode`` gives it surrogate
    escapes) is stored as its raw bytes instead, so every path round-trips exactly."""

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


@dataclass(frozen=True)
class NewImage:
    """One encoded image, ready to be committed."""

    root_id: int
    rel: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    meta: PhotoMeta | None = None  # None: not read (the next run's backfill reads it)
    frame_time: float | None = None  # seconds into a video; None for a still image
    frame_of: int | None = None  # a video's later frame: the row in the batch of its file row


@dataclass(frozen=True)
class StoredImage:
    """What the catalog knows of one indexed file."""

    id: int
    root: str
    rel: str
    size: int
    mtime_ns: int
    sha256: str
    width: int
    height: int
    indexed_at: float
    style: str | None
    style_score: float | None
    meta: PhotoMeta = PhotoMeta()
    frame_time: float | None = None  # seconds into a video; None for a still image
    video_id: int | None = None  # for a video's later frames: the id of its file row

    @property
    def path(self) -> str:
        return str(Path(self.root, self.rel))

    @property
    def file_id(self) -> int:
        """The id of the file's row: its own, or its video's for a later frame."""
        return self.id if self.video_id is None else self.video_id


@dataclass(frozen=True)
class ErrorRecord:
    path: str
    reason: str
    at: float


class Catalog:
    """A SQLite catalog opened through SQLAlchemy 2.0 in WAL mode."""

    def __init__(self, path: Path):
        self.path = path
        self.engine = create_engine(f"sqlite:///{path}", future=True)
        event.listen(self.engine, "connect", _sqlite_pragmas)
        event.listen(self.engine, "handle_error", self._explain)

    def _explain(self, context: Any) -> ClipsearchError | None:
        """Say what SQLite's errors mean for the user; damage shows up in whatever reads the
        damaged page first."""
        msg = " ".join(str(context.original_exception).split())
        if "malformed" in msg or "not a database" in msg:
            return CorruptIndexError(
                f"catalog {self.path} is damaged ({msg}); restore it from a backup or delete "
                "the index folder and index again"
            )
        if "disk is full" in msg or "readonly database" in msg:
            return ClipsearchError(
                f"catalog {self.path}: {msg}; what was committed before is kept: make room or "
                "fix the permissions and run the same command again"
            )
        return None

    @classmethod
    def open(cls, path: Path, *, create: bool = False) -> Catalog:
        """Open a catalog, first applying the schema steps it lacks (see ``migrations.py``).

        Raises:
            CorruptIndexError: the file is missing, unreadable, or from a newer clipsearch.
            ClipsearchError: a schema step failed; the file is left as it was.
        """
        if not create and not path.is_file():
            raise CorruptIndexError(f"catalog {path} is missing")
        catalog = cls(path)
        try:
            with catalog.engine.connect() as conn:
                upgrade(conn, path)
        except DatabaseError as e:
            catalog.close()
            raise CorruptIndexError(
                f"catalog {path} is not a readable SQLite database ({_short(e)}); "
                "restore it from a backup or delete the index folder and index again"
            ) from e
        except BaseException:
            catalog.close()
            raise
        return catalog

    def close(self) -> None:
        self.engine.dispose()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # --- meta -------------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self.session() as s:
            row = s.get(Meta, key)
            return json.loads(row.value) if row else default

    def set_meta(self, **values: Any) -> None:
        with self.session() as s, s.begin():
            for key, value in values.items():
                _set_meta(s, key, value)

    def generation(self) -> int:
        """A counter bumped by every transaction that adds or removes image ids."""
        return int(self.get_meta("generation", 0))

    # --- roots and files --------------------------------------------------------------------

    def adopt_roots(self, path: str) -> tuple[int, list[int]]:
        """The id of the root folder ``path`` (added if new), after the images of every root
        inside it have become its own, so that no file has two records.

        Returns:
            (root id, ids of images dropped because the root already had their file).
        """
        inside = path.rstrip("/") + "/"
        dropped: list[int] = []
        with self.session() as s, s.begin():
            rid = _root_id(s, path)
            children = [(c, p) for c, p in s.execute(select(Root.id, Root.path)) if p != path]
            children = [(c, p[len(inside) :]) for c, p in children if p.startswith(inside)]
            if not children:
                return rid, []
            have = set(s.scalars(select(ImageRow.rel).where(ImageRow.root_id == rid, _FILE_ROW)))
            for child, sub in children:
                moves, twice = [], []
                rows = s.execute(
                    select(ImageRow.id, ImageRow.rel).where(ImageRow.root_id == child, _FILE_ROW)
                )
                for image_id, rel in rows.all():
                    if f"{sub}/{rel}" in have:
                        twice.append(image_id)
                    else:
                        have.add(f"{sub}/{rel}")
                        moves.append({"id": image_id, "root_id": rid, "rel": f"{sub}/{rel}"})
                if moves:
                    s.execute(update(ImageRow), moves)
                    _move_frames(s, [(m["id"], rid, m["rel"]) for m in moves])
                dropped += _with_frames(s, twice)
                self._delete_ids(s, twice)
                s.execute(delete(Root).where(Root.id == child))
            if dropped:
                _set_meta(s, "generation", _get_generation(s) + 1)
        return rid, dropped

    def roots(self) -> dict[int, str]:
        with self.session() as s:
            return dict(s.execute(select(Root.id, Root.path)).all())

    def files_under(self, root_id: int) -> dict[str, tuple[int, int, int, str]]:
        """rel path -> (id, size, mtime_ns, sha256) for one root."""
        with self.session() as s:
            rows = s.execute(
                select(
                    ImageRow.rel, ImageRow.id, ImageRow.size, ImageRow.mtime_ns, ImageRow.sha256
                ).where(ImageRow.root_id == root_id, _FILE_ROW)
            )
            return {rel: (i, size, mtime, sha) for rel, i, size, mtime, sha in rows}

    # --- writes -----------------------------------------------------------------------------

    def commit_batch(
        self,
        new: Sequence[NewImage],
        vectors: np.ndarray,
        *,
        remove_ids: Sequence[int] = (),
        moves: Sequence[tuple[int, int, str, int, int]] = (),
        clear_error_paths: Sequence[str] = (),
        errors: Sequence[tuple[str, str]] = (),
        styles: Sequence[tuple[str | None, float | None]] | None = None,
    ) -> list[int]:
        """Write one indexer batch in a single transaction; returns the new images' ids.

        Args:
            new: images to insert, in the order of ``vectors``' rows; a video's later frames
                come after its file row and point to it (``frame_of``).
            vectors: (len(new), dim) float32 unit vectors.
            remove_ids: images to delete (re-encoded files and files gone from disk), with the
                later frames of the videos among them.
            moves: (id, root_id, rel, size, mtime_ns) for files that moved and keep their vector
                (a video's frames follow its file row).
            clear_error_paths: paths whose earlier error no longer holds.
            errors: (path, reason) failures to record.
            styles: (style, style_score) of each new image, in the order of ``new``.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        labels = list(styles) if styles is not None else [(None, None)] * len(new)
        now = time.time()
        with self.session() as s, s.begin():
            if remove_ids:
                self._delete_ids(s, remove_ids)
            for image_id, root_id, rel, size, mtime_ns in moves:
                s.execute(
                    update(ImageRow)
                    .where((ImageRow.id == image_id) | (ImageRow.video_id == image_id))
                    .values(root_id=root_id, rel=rel, size=size, mtime_ns=mtime_ns)
                )
            rows = [
                ImageRow(
                    root_id=n.root_id,
                    rel=n.rel,
                    size=n.size,
                    mtime_ns=n.mtime_ns,
                    sha256=n.sha256,
                    width=n.width,
                    height=n.height,
                    indexed_at=now,
                    style=style,
                    style_score=style_score,
                    frame_time=n.frame_time,
                    **_meta_columns(n.meta),
                )
                for n, (style, style_score) in zip(new, labels, strict=True)
            ]
            # File rows first, so that each later frame can point to its video's id.
            s.add_all(r for r, n in zip(rows, new, strict=True) if n.frame_of is None)
            s.flush()
            for row, n in zip(rows, new, strict=True):
                if n.frame_of is not None:
                    row.video_id = rows[n.frame_of].id
                    s.add(row)
            s.flush()
            ids = [r.id for r in rows]
            pairs = zip(ids, vectors, strict=True)
            s.add_all(VectorRow(image_id=i, data=v.tobytes()) for i, v in pairs)
            for chunk in _chunks(list(clear_error_paths), 500):
                s.execute(delete(ErrorRow).where(ErrorRow.path.in_(chunk)))
            for path, reason in errors:
                _upsert_error(s, path, reason, now)
            if new or remove_ids:
                _set_meta(s, "generation", _get_generation(s) + 1)
        return ids

    def remove(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        with self.session() as s, s.begin():
            self._delete_ids(s, ids)
            _set_meta(s, "generation", _get_generation(s) + 1)

    def with_frames(self, ids: Sequence[int]) -> list[int]:
        """``ids`` and the ids of the later frames of the videos among them: what leaves the
        vector index when these files are removed."""
        with self.session() as s:
            return _with_frames(s, ids)

    @staticmethod
    def _delete_ids(s: Session, ids: Sequence[int]) -> None:
        """Delete images by id, a video's later frames with its file row."""
        for chunk in _chunks(_ints(ids), 500):
            frames = select(ImageRow.id).where(ImageRow.video_id.in_(chunk))
            s.execute(delete(VectorRow).where(VectorRow.image_id.in_(frames)))
            s.execute(delete(ImageRow).where(ImageRow.video_id.in_(chunk)))
            s.execute(delete(VectorRow).where(VectorRow.image_id.in_(chunk)))
            s.execute(delete(ImageRow).where(ImageRow.id.in_(chunk)))

    def record_errors(self, errors: Sequence[tuple[str, str]]) -> None:
        if not errors:
            return
        now = time.time()
        with self.session() as s, s.begin():
            for path, reason in errors:
                _upsert_error(s, path, reason, now)

    def set_styles(self, labels: Sequence[tuple[int, str | None, float | None]]) -> None:
        """Store (id, style, style_score) for many images in one transaction."""
        with self.session() as s, s.begin():
            s.execute(
                update(ImageRow),
                [{"id": i, "style": st, "style_score": sc} for i, st, sc in labels],
            )

    def files_without_meta(self) -> list[tuple[int, str, int]]:
        """(id, path, mtime_ns) of the images whose metadata was never read: those indexed
        before the catalog had these columns."""
        query = (
            select(ImageRow.id, Root.path, ImageRow.rel, ImageRow.mtime_ns)
            .join(Root, Root.id == ImageRow.root_id)
            .where(ImageRow.meta_read.is_(False), _FILE_ROW)
            .order_by(ImageRow.id)
        )
        with self.session() as s:
            return [(i, str(Path(root, rel)), mtime) for i, root, rel, mtime in s.execute(query)]

    def set_photo_meta(self, metas: Sequence[tuple[int, PhotoMeta]]) -> None:
        """Store the metadata of many images in one transaction, marking it read."""
        if metas:
            with self.session() as s, s.begin():
                s.execute(update(ImageRow), [{"id": i, **_meta_columns(m)} for i, m in metas])

    # --- reads ------------------------------------------------------------------------------

    def count(self) -> int:
        """How many vectors: images, and every frame taken from a video."""
        with self.session() as s:
            return int(s.scalar(select(func.count()).select_from(ImageRow)) or 0)

    def count_files(self) -> int:
        """How many files: images and videos, each once."""
        with self.session() as s:
            query = select(func.count()).select_from(ImageRow).where(_FILE_ROW)
            return int(s.scalar(query) or 0)

    def frames(self, file_id: int) -> list[tuple[int, float]]:
        """(id, frame_time) of every frame of a video's file row, in time order; empty for an
        image."""
        query = (
            select(ImageRow.id, ImageRow.frame_time)
            .where(
                ((ImageRow.id == file_id) | (ImageRow.video_id == file_id)),
                ImageRow.frame_time.is_not(None),
            )
            .order_by(ImageRow.frame_time)
        )
        if int(file_id) not in _SQLITE_INT:
            return []
        with self.session() as s:
            return [(i, float(t)) for i, t in s.execute(query)]

    def ids(self) -> np.ndarray:
        with self.session() as s:
            return np.fromiter(s.scalars(select(ImageRow.id)), dtype=np.int64)

    def iter_vectors(
        self, ids: Sequence[int] | None = None, batch: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids, vectors) blocks of the stored vectors, all of them or the given ids."""
        with self.session() as s:
            if ids is None:
                result = s.execute(
                    select(VectorRow.image_id, VectorRow.data).order_by(VectorRow.image_id)
                ).yield_per(batch)
                for part in result.partitions(batch):
                    yield _block(part)
            else:
                for chunk in _chunks(sorted(int(i) for i in ids), 500):
                    rows = s.execute(
                        select(VectorRow.image_id, VectorRow.data)
                        .where(VectorRow.image_id.in_(chunk))
                        .order_by(VectorRow.image_id)
                    ).all()
                    if rows:
                        yield _block(rows)

    def vector(self, image_id: int) -> np.ndarray | None:
        if int(image_id) not in _SQLITE_INT:
            return None
        with self.session() as s:
            data = s.scalar(select(VectorRow.data).where(VectorRow.image_id == image_id))
            return None if data is None else np.frombuffer(data, dtype=np.float32).copy()

    def images(self, ids: Sequence[int]) -> dict[int, StoredImage]:
        out: dict[int, StoredImage] = {}
        with self.session() as s:
            for chunk in _chunks(_ints(ids), 500):
                rows = s.execute(
                    select(ImageRow, Root.path)
                    .join(Root, Root.id == ImageRow.root_id)
                    .where(ImageRow.id.in_(chunk))
                ).all()
                for row, root in rows:
                    out[row.id] = _stored(row, root)
        return out

    def find_path(self, path: str) -> StoredImage | None:
        """The image stored for an absolute file path, if any root contains it."""
        with self.session() as s:
            for rid, root in s.execute(select(Root.id, Root.path)):
                try:
                    rel = Path(path).relative_to(root).as_posix()
                except ValueError:
                    continue
                query = select(ImageRow).where(ImageRow.root_id == rid, ImageRow.rel == rel)
                row = s.scalar(query.where(_FILE_ROW))
                if row is not None:
                    return _stored(row, root)
        return None

    def ids_matching(
        self,
        *,
        path_prefix: str | None = None,
        styles: Sequence[str] | None = None,
        taken_from: float | None = None,
        taken_until: float | None = None,
        camera: str | None = None,
        near: tuple[float, float, float] | None = None,
        stills: bool = False,
    ) -> np.ndarray:
        """Ids of images that pass every filter given.

        Args:
            path_prefix: the absolute path starts with this.
            styles: the style is one of these.
            taken_from: taken at or after this (UTC epoch seconds).
            taken_until: taken before this.
            camera: make and model hold this text, in any case.
            near: (lat, lon, km): taken at most km from there.
            stills: still images only, no video frames.
        """
        query = select(ImageRow.id).join(Root, Root.id == ImageRow.root_id)
        if stills:
            query = query.where(ImageRow.frame_time.is_(None))
        query = _where_meta(query, taken_from, taken_until, camera, near)
        if path_prefix is not None:
            # Compared as bytes: exact case, and names that are not UTF-8 (stored as BLOBs,
            # see FsPath) match too, which LIKE cannot do.
            head = path_prefix.encode("utf-8", "surrogateescape")
            full = cast(Root.path + "/" + ImageRow.rel, LargeBinary)
            query = query.where(func.substr(full, 1, len(head)) == literal(head, LargeBinary))
        if styles is not None:
            query = query.where(ImageRow.style.in_(list(styles)))
        with self.session() as s:
            if near is None:
                return np.fromiter(s.scalars(query), dtype=np.int64)
            rows = s.execute(query.add_columns(ImageRow.lat, ImageRow.lon)).all()
        if not rows:
            return np.zeros(0, dtype=np.int64)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        lat, lon = (np.asarray([r[c] for r in rows], dtype=np.float64) for c in (1, 2))
        return ids[distance_km(lat, lon, near[0], near[1]) <= near[2]]

    def same_content(self, ids: Sequence[int] | None = None) -> list[list[int]]:
        """Ids of files whose bytes hash alike, in groups of two or more (among ``ids`` only,
        when given), each group sorted."""
        query = (
            select(ImageRow.sha256, ImageRow.id)
            .where(
                _FILE_ROW,
                ImageRow.sha256.in_(
                    select(ImageRow.sha256)
                    .where(_FILE_ROW)
                    .group_by(ImageRow.sha256)
                    .having(func.count() > 1)
                ),
            )
            .order_by(ImageRow.sha256, ImageRow.id)
        )
        wanted = None if ids is None else set(_ints(ids))
        groups: dict[str, list[int]] = {}
        with self.session() as s:
            for sha, image_id in s.execute(query):
                if wanted is None or image_id in wanted:
                    groups.setdefault(sha, []).append(image_id)
        return [g for g in groups.values() if len(g) > 1]

    def style_counts(self) -> dict[str | None, int]:
        with self.session() as s:
            rows = s.execute(select(ImageRow.style, func.count()).group_by(ImageRow.style))
            return dict(rows.all())

    def errors(self) -> list[ErrorRecord]:
        with self.session() as s:
            rows = s.scalars(select(ErrorRow).order_by(ErrorRow.path))
            return [ErrorRecord(r.path, r.reason, r.at) for r in rows]

    def error_paths(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(ErrorRow.path)))

    def clear_errors(self, paths: Iterable[str]) -> None:
        with self.session() as s, s.begin():
            for chunk in _chunks(list(paths), 500):
                s.execute(delete(ErrorRow).where(ErrorRow.path.in_(chunk)))


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode never corrupts the file; a power cut may drop the last commits.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
    except Exception as e:  # a non-database file shows up here first
        raise OperationalError("PRAGMA", {}, e) from e
    finally:
        cur.close()


def _root_id(s: Session, path: str) -> int:
    """The id of a root folder, added if new."""
    rid = s.scalar(select(Root.id).where(Root.path == path))
    if rid is None:
        root = Root(path=path)
        s.add(root)
        s.flush()
        rid = root.id
    return rid


def _set_meta(s: Session, key: str, value: Any) -> None:
    s.merge(Meta(key=key, value=json.dumps(value)))


def _get_generation(s: Session) -> int:
    row = s.get(Meta, "generation")
    return int(json.loads(row.value)) if row else 0


def _upsert_error(s: Session, path: str, reason: str, at: float) -> None:
    row = s.scalar(select(ErrorRow).where(ErrorRow.path == path))
    if row is None:
        s.add(ErrorRow(path=path, reason=reason, at=at))
    else:
        row.reason, row.at = reason, at


def _stored(row: ImageRow, root: str) -> StoredImage:
    return StoredImage(
        id=row.id,
        root=root,
        rel=row.rel,
        size=row.size,
        mtime_ns=row.mtime_ns,
        sha256=row.sha256,
        width=row.width,
        height=row.height,
        indexed_at=row.indexed_at,
        style=row.style,
        style_score=row.style_score,
        meta=PhotoMeta(
            taken=row.taken,
            taken_source=row.taken_source,
            offset_min=row.taken_offset,
            camera_make=row.camera_make,
            camera_model=row.camera_model,
            lat=row.lat,
            lon=row.lon,
        ),
        frame_time=row.frame_time,
        video_id=row.video_id,
    )


_FILE_ROW = ImageRow.video_id.is_(None)  # a file's own row: an image, or a video's first frame


def _with_frames(s: Session, ids: Sequence[int]) -> list[int]:
    out = _ints(ids)
    for chunk in _chunks(list(out), 500):
        out += s.scalars(select(ImageRow.id).where(ImageRow.video_id.in_(chunk)))
    return out


def _move_frames(s: Session, moves: Sequence[tuple[int, int, str]]) -> None:
    """Later frames follow their video's file row to another root and path."""
    for video_id, root_id, rel in moves:
        s.execute(
            update(ImageRow).where(ImageRow.video_id == video_id).values(root_id=root_id, rel=rel)
        )


def _meta_columns(meta: PhotoMeta | None) -> dict[str, Any]:
    if meta is None:
        return {"meta_read": False}
    return {
        "taken": meta.taken,
        "taken_source": meta.taken_source,
        "taken_offset": meta.offset_min,
        "camera_make": meta.camera_make,
        "camera_model": meta.camera_model,
        "lat": meta.lat,
        "lon": meta.lon,
        "meta_read": True,
    }


def _where_meta(
    query: Any,
    taken_from: float | None,
    taken_until: float | None,
    camera: str | None,
    near: tuple[float, float, float] | None,
) -> Any:
    """``query`` narrowed by the photo metadata filters; ``near`` only to a bounding box, which
    the caller narrows to the circle."""
    if taken_from is not None:
        query = query.where(ImageRow.taken >= taken_from)
    if taken_until is not None:
        query = query.where(ImageRow.taken < taken_until)
    if camera is not None:
        make, model = ImageRow.camera_make, ImageRow.camera_model
        name = func.coalesce(make, "") + " " + func.coalesce(model, "")
        query = query.where(func.instr(func.lower(name), camera.lower()) > 0)
    if near is not None:
        lat, lon, km = near
        dlat = km / 111.0 + 1e-6
        query = query.where(ImageRow.lat.between(lat - dlat, lat + dlat))
        # Longitude degrees shrink towards the poles; near a pole or the antimeridian keep all.
        coslat = np.cos(np.radians(min(89.0, abs(lat) + dlat)))
        dlon = km / (111.0 * coslat) + 1e-6
        if abs(lat) + dlat < 89.0 and abs(lon) + dlon < 180.0:
            query = query.where(ImageRow.lon.between(lon - dlon, lon + dlon))
        else:
            query = query.where(ImageRow.lon.is_not(None))
    return query


def _block(rows: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    if len({len(r[1]) for r in rows}) > 1 or len(rows[0][1]) % 4:
        raise CorruptIndexError(
            "the catalog holds stored vectors of the wrong length; run `clipsearch repair`"
        )
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    return ids, vecs


_SQLITE_INT = range(-(2**63), 2**63)  # what an INTEGER column can hold


def _ints(ids: Iterable[Any]) -> list[int]:
    """Plain ints (SQLite binds numpy integers as blobs, which match no id), without those no
    SQLite integer can equal: binding them would raise OverflowError."""
    return [n for n in map(int, ids) if n in _SQLITE_INT]


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _short(e: BaseException) -> str:
    return " ".join(str(getattr(e, "orig", e)).split())[:200]
