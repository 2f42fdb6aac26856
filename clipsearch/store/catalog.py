"""The SQLite catalog: what is indexed, where it lives, its raw vector and what went wrong.

The catalog is the source of truth of an index. Every batch of the indexer is one
transaction that writes image rows and their float32 vectors together, so an interrupted run
loses at most the batch in flight. The FAISS file is derived from it (see ``vectors.py``).
Image ids are never reused (AUTOINCREMENT), and a re-encoded file gets a new id, so the set of
ids alone says what the FAISS index is missing or holds in excess.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import ClipsearchError, CorruptIndexError
from clipsearch.media.photometa import PhotoMeta, distance_km
from clipsearch.store import migrations

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.orm import Session

CATALOG_FILE = "catalog.sqlite"


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
    """A SQLite catalog in WAL mode: read with plain ``sqlite3``, written through SQLAlchemy.

    Reads (what a search or an index run with nothing to do needs) never import SQLAlchemy:
    each thread reads through its own ``sqlite3`` connection, one statement at a time, so it
    sees the last committed state. The first write (or :meth:`session`) creates the
    SQLAlchemy engine. The tables and columns are those of :mod:`clipsearch.store.schema`.
    """

    def __init__(self, path: Path):
        self.path = path
        self._engine: Engine | None = None
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine of the writes, created on first use."""
        if self._engine is None:
            from clipsearch.store.schema import create_catalog_engine

            self._engine = create_catalog_engine(self.path, _sqlite_pragmas, self._explain)
        return self._engine

    def _explain(self, message: str) -> ClipsearchError | None:
        """Say what SQLite's errors mean for the user; damage shows up in whatever reads the
        damaged page first."""
        if "malformed" in message or "not a database" in message:
            return CorruptIndexError(
                f"catalog {self.path} is damaged ({message}); restore it from a backup or delete "
                "the index folder and index again"
            )
        if "disk is full" in message or "readonly database" in message:
            return ClipsearchError(
                f"catalog {self.path}: {message}; what was committed before is kept: make room "
                "or fix the permissions and run the same command again"
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
            if not (path.is_file() and catalog._is_current()):
                catalog._upgrade()
        except BaseException:
            catalog.close()
            raise
        return catalog

    def _is_current(self) -> bool:
        """Whether the catalog records today's schema version (read without SQLAlchemy); any
        doubt is False, and :meth:`_upgrade` then says what is wrong."""
        try:
            row = (
                self._reader()
                .execute("SELECT value FROM meta WHERE \"key\" = 'schema_version'")
                .fetchone()
            )
            return row is not None and json.loads(row[0]) == len(migrations.MIGRATIONS)
        except (sqlite3.Error, ValueError, TypeError):
            return False

    def _upgrade(self) -> None:
        from sqlalchemy.exc import DatabaseError

        from clipsearch.store.migrations import upgrade

        try:
            with self.engine.connect() as conn:
                upgrade(conn, self.path)
        except DatabaseError as e:
            raise CorruptIndexError(
                f"catalog {self.path} is not a readable SQLite database ({_short(e)}); "
                "restore it from a backup or delete the index folder and index again"
            ) from e

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
        with self._lock:
            readers, self._readers = self._readers, []
            self._local = threading.local()
        for con in readers:
            con.close()

    def session(self) -> Session:
        from sqlalchemy.orm import Session

        return Session(self.engine, expire_on_commit=False)

    # --- the read path ----------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (autocommit: each statement sees the last commit)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            con.execute("PRAGMA busy_timeout=30000")
            with self._lock:
                self._readers.append(con)
                self._local.con = con
        return con

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        """All rows of one read statement; SQLite's errors explained as the writes' are."""
        try:
            return self._reader().execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            explained = self._explain(" ".join(str(e).split()))
            if explained is not None:
                raise explained from e
            raise

    def _iter_rows(self, sql: str, params: Sequence[Any] = (), batch: int = 4096) -> Iterator[list]:
        """The rows of one read statement, ``batch`` at a time."""
        try:
            cur = self._reader().execute(sql, params)
            while part := cur.fetchmany(batch):
                yield part
        except sqlite3.DatabaseError as e:
            explained = self._explain(" ".join(str(e).split()))
            if explained is not None:
                raise explained from e
            raise

    def _scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        rows = self._rows(sql, params)
        return rows[0][0] if rows else None

    # --- meta -------------------------------------------------------------------------------

    def get_meta(self, key: str, default: Any = None) -> Any:
        value = self._scalar('SELECT value FROM meta WHERE "key" = ?', (key,))
        return json.loads(value) if value is not None else default

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
        known = {p: rid for rid, p in self.roots().items()}
        if path in known and not any(p.startswith(inside) for p in known if p != path):
            return known[path], []  # nothing to write: no SQLAlchemy
        from sqlalchemy import delete, select, update

        from clipsearch.store.schema import ImageRow, Root

        dropped: list[int] = []
        with self.session() as s, s.begin():
            rid = _root_id(s, path)
            children = [(c, p) for c, p in s.execute(select(Root.id, Root.path)) if p != path]
            children = [(c, p[len(inside) :]) for c, p in children if p.startswith(inside)]
            if not children:
                return rid, []
            file_row = ImageRow.video_id.is_(None)
            have = set(s.scalars(select(ImageRow.rel).where(ImageRow.root_id == rid, file_row)))
            for child, sub in children:
                moves, twice = [], []
                rows = s.execute(
                    select(ImageRow.id, ImageRow.rel).where(ImageRow.root_id == child, file_row)
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
        return {rid: fs_path(p) for rid, p in self._rows("SELECT id, path FROM roots")}

    def files_under(self, root_id: int) -> dict[str, tuple[int, int, int, str]]:
        """rel path -> (id, size, mtime_ns, sha256) for one root."""
        rows = self._rows(
            f"SELECT rel, id, size, mtime_ns, sha256 FROM images WHERE root_id = ? AND {_FILE_ROW}",
            (root_id,),
        )
        return {fs_path(rel): (i, size, mtime, sha) for rel, i, size, mtime, sha in rows}

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
        from sqlalchemy import delete, update

        from clipsearch.store.schema import ErrorRow, ImageRow, VectorRow

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
        out = _ints(ids)
        for chunk in _chunks(list(out), 500):
            sql = f"SELECT id FROM images WHERE video_id IN ({_marks(chunk)})"
            out += [r[0] for r in self._rows(sql, chunk)]
        return out

    @staticmethod
    def _delete_ids(s: Session, ids: Sequence[int]) -> None:
        """Delete images by id, a video's later frames with its file row."""
        from sqlalchemy import delete, select

        from clipsearch.store.schema import ImageRow, VectorRow

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
        from sqlalchemy import update

        from clipsearch.store.schema import ImageRow

        with self.session() as s, s.begin():
            s.execute(
                update(ImageRow),
                [{"id": i, "style": st, "style_score": sc} for i, st, sc in labels],
            )

    def files_without_meta(self) -> list[tuple[int, str, int]]:
        """(id, path, mtime_ns) of the images whose metadata was never read: those indexed
        before the catalog had these columns."""
        rows = self._rows(
            "SELECT images.id, roots.path, images.rel, images.mtime_ns FROM images "
            "JOIN roots ON roots.id = images.root_id "
            f"WHERE images.meta_read = 0 AND {_FILE_ROW} ORDER BY images.id"
        )
        return [(i, str(Path(fs_path(root), fs_path(rel))), mtime) for i, root, rel, mtime in rows]

    def set_photo_meta(self, metas: Sequence[tuple[int, PhotoMeta]]) -> None:
        """Store the metadata of many images in one transaction, marking it read."""
        from sqlalchemy import update

        from clipsearch.store.schema import ImageRow

        if metas:
            with self.session() as s, s.begin():
                s.execute(update(ImageRow), [{"id": i, **_meta_columns(m)} for i, m in metas])

    # --- reads ------------------------------------------------------------------------------

    def count(self) -> int:
        """How many vectors: images, and every frame taken from a video."""
        return int(self._scalar("SELECT count(*) FROM images") or 0)

    def count_files(self) -> int:
        """How many files: images and videos, each once."""
        return int(self._scalar(f"SELECT count(*) FROM images WHERE {_FILE_ROW}") or 0)

    def frames(self, file_id: int) -> list[tuple[int, float]]:
        """(id, frame_time) of every frame of a video's file row, in time order; empty for an
        image."""
        if int(file_id) not in _SQLITE_INT:
            return []
        rows = self._rows(
            "SELECT id, frame_time FROM images WHERE (id = ? OR video_id = ?) "
            "AND frame_time IS NOT NULL ORDER BY frame_time",
            (int(file_id), int(file_id)),
        )
        return [(i, float(t)) for i, t in rows]

    def ids(self) -> np.ndarray:
        return np.fromiter((r[0] for r in self._rows("SELECT id FROM images")), dtype=np.int64)

    def iter_vectors(
        self, ids: Sequence[int] | None = None, batch: int = 4096
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids, vectors) blocks of the stored vectors, all of them or the given ids."""
        if ids is None:
            sql = "SELECT image_id, data FROM vectors ORDER BY image_id"
            for part in self._iter_rows(sql, batch=batch):
                yield _block(part)
            return
        for chunk in _chunks(sorted(_ints(ids)), 500):
            rows = self._rows(
                f"SELECT image_id, data FROM vectors WHERE image_id IN ({_marks(chunk)}) "
                "ORDER BY image_id",
                chunk,
            )
            if rows:
                yield _block(rows)

    def vector(self, image_id: int) -> np.ndarray | None:
        if int(image_id) not in _SQLITE_INT:
            return None
        data = self._scalar("SELECT data FROM vectors WHERE image_id = ?", (int(image_id),))
        return None if data is None else np.frombuffer(data, dtype=np.float32).copy()

    def images(self, ids: Sequence[int]) -> dict[int, StoredImage]:
        out: dict[int, StoredImage] = {}
        for chunk in _chunks(_ints(ids), 500):
            rows = self._rows(
                f"SELECT {_IMAGE_COLUMNS}, roots.path FROM images "
                f"JOIN roots ON roots.id = images.root_id WHERE images.id IN ({_marks(chunk)})",
                chunk,
            )
            for row in rows:
                out[row[0]] = _stored(row)
        return out

    def find_path(self, path: str) -> StoredImage | None:
        """The image stored for an absolute file path, if any root contains it."""
        for rid, root in self.roots().items():
            try:
                rel = Path(path).relative_to(root).as_posix()
            except ValueError:
                continue
            rows = self._rows(
                f"SELECT {_IMAGE_COLUMNS}, roots.path FROM images "
                "JOIN roots ON roots.id = images.root_id "
                f"WHERE images.root_id = ? AND images.rel = ? AND {_FILE_ROW}",
                (rid, _stored_path(rel)),
            )
            if rows:
                return _stored(rows[0])
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
        where, params = _where_meta(taken_from, taken_until, camera, near)
        if stills:
            where.append("images.frame_time IS NULL")
        if path_prefix is not None:
            # Compared as bytes: exact case, and names that are not UTF-8 (stored as BLOBs,
            # see schema.FsPath) match too, which LIKE cannot do.
            head = path_prefix.encode("utf-8", "surrogateescape")
            where.append("substr(CAST(roots.path || '/' || images.rel AS BLOB), 1, ?) = ?")
            params += [len(head), head]
        if styles is not None:
            where.append(f"images.style IN ({_marks(styles)})")
            params += list(styles)
        columns = "images.id" if near is None else "images.id, images.lat, images.lon"
        sql = f"SELECT {columns} FROM images JOIN roots ON roots.id = images.root_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._rows(sql, params)
        if near is None:
            return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return np.zeros(0, dtype=np.int64)
        ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        lat, lon = (np.asarray([r[c] for r in rows], dtype=np.float64) for c in (1, 2))
        return ids[distance_km(lat, lon, near[0], near[1]) <= near[2]]

    def same_content(self, ids: Sequence[int] | None = None) -> list[list[int]]:
        """Ids of files whose bytes hash alike, in groups of two or more (among ``ids`` only,
        when given), each group sorted."""
        rows = self._rows(
            f"SELECT sha256, id FROM images WHERE {_FILE_ROW} AND sha256 IN "
            f"(SELECT sha256 FROM images WHERE {_FILE_ROW} GROUP BY sha256 HAVING count(*) > 1) "
            "ORDER BY sha256, id"
        )
        wanted = None if ids is None else set(_ints(ids))
        groups: dict[str, list[int]] = {}
        for sha, image_id in rows:
            if wanted is None or image_id in wanted:
                groups.setdefault(sha, []).append(image_id)
        return [g for g in groups.values() if len(g) > 1]

    def style_counts(self) -> dict[str | None, int]:
        """Files per style label: an image by its own, a video once, by its first frame's."""
        return dict(
            self._rows(f"SELECT style, count(*) FROM images WHERE {_FILE_ROW} GROUP BY style")
        )

    def errors(self) -> list[ErrorRecord]:
        rows = self._rows("SELECT path, reason, at FROM errors ORDER BY path")
        return [ErrorRecord(fs_path(p), reason, at) for p, reason, at in rows]

    def error_paths(self) -> set[str]:
        return {fs_path(p) for (p,) in self._rows("SELECT path FROM errors")}

    def clear_errors(self, paths: Iterable[str]) -> None:
        paths = list(paths)
        if not paths:
            return
        from sqlalchemy import delete

        from clipsearch.store.schema import ErrorRow

        with self.session() as s, s.begin():
            for chunk in _chunks(paths, 500):
                s.execute(delete(ErrorRow).where(ErrorRow.path.in_(chunk)))


def _sqlite_pragmas(dbapi_conn: Any) -> None:
    """The settings of the write connections."""
    cur = dbapi_conn.cursor()
    try:
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode never corrupts the file; a power cut may drop the last commits.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def _root_id(s: Session, path: str) -> int:
    """The id of a root folder, added if new."""
    from sqlalchemy import select

    from clipsearch.store.schema import Root

    rid = s.scalar(select(Root.id).where(Root.path == path))
    if rid is None:
        root = Root(path=path)
        s.add(root)
        s.flush()
        rid = root.id
    return rid


def _set_meta(s: Session, key: str, value: Any) -> None:
    from clipsearch.store.schema import Meta

    s.merge(Meta(key=key, value=json.dumps(value)))


def _get_generation(s: Session) -> int:
    from clipsearch.store.schema import Meta

    row = s.get(Meta, "generation")
    return int(json.loads(row.value)) if row else 0


def _upsert_error(s: Session, path: str, reason: str, at: float) -> None:
    from sqlalchemy import select

    from clipsearch.store.schema import ErrorRow

    row = s.scalar(select(ErrorRow).where(ErrorRow.path == path))
    if row is None:
        s.add(ErrorRow(path=path, reason=reason, at=at))
    else:
        row.reason, row.at = reason, at


def fs_path(value: str | bytes) -> str:
    """A path column as read: a name that is not valid UTF-8 is stored as its raw bytes (see
    ``schema.FsPath``, which writes it)."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _stored_path(path: str) -> str | bytes:
    """A path as ``schema.FsPath`` stores it, for comparisons in plain SQL."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape")
    return path


# The columns of a StoredImage, in the order of _stored's row (then the root's path).
_IMAGE_COLUMNS = (
    "images.id, images.rel, images.size, images.mtime_ns, images.sha256, images.width, "
    "images.height, images.indexed_at, images.style, images.style_score, images.taken, "
    "images.taken_source, images.taken_offset, images.camera_make, images.camera_model, "
    "images.lat, images.lon, images.frame_time, images.video_id"
)


def _stored(row: Sequence[Any]) -> StoredImage:
    """A StoredImage from a row of _IMAGE_COLUMNS and the root's path."""
    (image_id, rel, size, mtime_ns, sha256, width, height, indexed_at, style, style_score) = row[
        :10
    ]
    taken, taken_source, offset, make, model, lat, lon, frame_time, video_id, root = row[10:]
    return StoredImage(
        id=image_id,
        root=fs_path(root),
        rel=fs_path(rel),
        size=size,
        mtime_ns=mtime_ns,
        sha256=sha256,
        width=width,
        height=height,
        indexed_at=indexed_at,
        style=style,
        style_score=style_score,
        meta=PhotoMeta(
            taken=taken,
            taken_source=taken_source,
            offset_min=offset,
            camera_make=make,
            camera_model=model,
            lat=lat,
            lon=lon,
        ),
        frame_time=frame_time,
        video_id=video_id,
    )


# In plain SQL, a file's own row: an image, or a video's first frame.
_FILE_ROW = "images.video_id IS NULL"


def _with_frames(s: Session, ids: Sequence[int]) -> list[int]:
    """``ids`` and their videos' later frames, inside a write transaction."""
    from sqlalchemy import select

    from clipsearch.store.schema import ImageRow

    out = _ints(ids)
    for chunk in _chunks(list(out), 500):
        out += s.scalars(select(ImageRow.id).where(ImageRow.video_id.in_(chunk)))
    return out


def _move_frames(s: Session, moves: Sequence[tuple[int, int, str]]) -> None:
    """Later frames follow their video's file row to another root and path."""
    from sqlalchemy import update

    from clipsearch.store.schema import ImageRow

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
    taken_from: float | None,
    taken_until: float | None,
    camera: str | None,
    near: tuple[float, float, float] | None,
) -> tuple[list[str], list[Any]]:
    """The conditions (SQL, parameters) of the photo metadata filters; ``near`` only to a
    bounding box, which the caller narrows to the circle."""
    where: list[str] = []
    params: list[Any] = []
    if taken_from is not None:
        where.append("images.taken >= ?")
        params.append(taken_from)
    if taken_until is not None:
        where.append("images.taken < ?")
        params.append(taken_until)
    if camera is not None:
        name = "coalesce(images.camera_make, '') || ' ' || coalesce(images.camera_model, '')"
        where.append(f"instr(lower({name}), ?) > 0")
        params.append(camera.lower())
    if near is not None:
        lat, lon, km = near
        dlat = km / 111.0 + 1e-6
        where.append("images.lat BETWEEN ? AND ?")
        params += [lat - dlat, lat + dlat]
        # Longitude degrees shrink towards the poles; near a pole or the antimeridian keep all.
        coslat = np.cos(np.radians(min(89.0, abs(lat) + dlat)))
        dlon = float(km / (111.0 * coslat) + 1e-6)
        if abs(lat) + dlat < 89.0 and abs(lon) + dlon < 180.0:
            where.append("images.lon BETWEEN ? AND ?")
            params += [lon - dlon, lon + dlon]
        else:
            where.append("images.lon IS NOT NULL")
    return where, params


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


def _marks(items: Sequence[Any]) -> str:
    """``?, ?, ?``: one placeholder per item."""
    return ", ".join("?" * len(items))


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _short(e: BaseException) -> str:
    return " ".join(str(getattr(e, "orig", e)).split())[:200]
