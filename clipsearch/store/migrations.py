"""The catalog's schema as numbered steps, each frozen the way it shipped.

A step issues the DDL of its version as plain SQL and never reads the ORM models of
``schema.py``: those describe today's schema, and an index made by an older clipsearch must
go through the very steps that built it and then the ones it lacks. A released step is never
edited. A change of schema is a new function appended to ``MIGRATIONS`` (one that adds a
column is an ``ALTER TABLE``), and the models in ``schema.py`` (and the plain-SQL reads of
``catalog.py``) change to match it; tests check that the steps and the models build the same
schema and that the catalog's reads agree with the models.

The version lives where it always has: the ``meta`` table, key ``schema_version``, a JSON
integer. A file without that table (a new, empty one) is version 0.

Steps run inside one transaction with ``PRAGMA foreign_keys`` on, which SQLite cannot switch
inside a transaction: a step that rebuilds a table other tables point to must account for it
(``PRAGMA defer_foreign_keys``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.errors import ClipsearchError, CorruptIndexError, IndexVersionError, one_line

if TYPE_CHECKING:  # the steps run on SQLAlchemy; SCHEMA_VERSION is read without it
    from sqlalchemy import Connection

Step = Callable[["Connection"], None]


def m001_initial(conn: Connection) -> None:
    """The first schema, as ``Base.metadata.create_all`` made it: roots, images, their raw
    vectors, indexing errors and the meta table. ``IF NOT EXISTS`` as create_all had, so a
    catalog whose creation was cut short before its version was recorded is finished."""
    for statement in _M001_DDL:
        conn.exec_driver_sql(statement)


_M001_DDL = (
    """CREATE TABLE IF NOT EXISTS meta (
        "key" VARCHAR NOT NULL,
        value VARCHAR NOT NULL,
        PRIMARY KEY ("key")
    )""",
    """CREATE TABLE IF NOT EXISTS roots (
        id INTEGER NOT NULL,
        path VARCHAR NOT NULL,
        PRIMARY KEY (id),
        UNIQUE (path)
    )""",
    """CREATE TABLE IF NOT EXISTS errors (
        id INTEGER NOT NULL,
        path VARCHAR NOT NULL,
        reason VARCHAR NOT NULL,
        at DOUBLE NOT NULL,
        PRIMARY KEY (id),
        UNIQUE (path)
    )""",
    """CREATE TABLE IF NOT EXISTS images (
        id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT,
        root_id INTEGER NOT NULL,
        rel VARCHAR NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        sha256 VARCHAR(64) NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        indexed_at DOUBLE NOT NULL,
        style VARCHAR,
        style_score DOUBLE,
        FOREIGN KEY(root_id) REFERENCES roots (id)
    )""",
    "CREATE INDEX IF NOT EXISTS ix_images_style ON images (style)",
    "CREATE INDEX IF NOT EXISTS ix_images_sha256 ON images (sha256)",
    "CREATE UNIQUE INDEX IF NOT EXISTS ix_images_root_rel ON images (root_id, rel)",
    """CREATE TABLE IF NOT EXISTS vectors (
        image_id INTEGER NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (image_id),
        FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE
    )""",
)


def m002_photo_meta(conn: Connection) -> None:
    """When, with what and where each photo was taken (EXIF, else the file's mtime). Rows
    that existed before have ``meta_read`` 0: the next indexing run reads their EXIF once."""
    for statement in _M002_DDL:
        conn.exec_driver_sql(statement)


_M002_DDL = (
    "ALTER TABLE images ADD COLUMN taken DOUBLE",
    "ALTER TABLE images ADD COLUMN taken_source VARCHAR",
    "ALTER TABLE images ADD COLUMN taken_offset INTEGER",
    "ALTER TABLE images ADD COLUMN camera_make VARCHAR",
    "ALTER TABLE images ADD COLUMN camera_model VARCHAR",
    "ALTER TABLE images ADD COLUMN lat DOUBLE",
    "ALTER TABLE images ADD COLUMN lon DOUBLE",
    "ALTER TABLE images ADD COLUMN meta_read BOOLEAN DEFAULT 0 NOT NULL",
)


def m003_video_frames(conn: Connection) -> None:
    """Video frames: each frame taken from a video is a row of its own (its own vector and
    FAISS id) with ``frame_time`` in seconds; the video's file row has ``video_id`` NULL and
    its other frames point to it, so only file rows are unique per path."""
    for statement in _M003_DDL:
        conn.exec_driver_sql(statement)


_M003_DDL = (
    "ALTER TABLE images ADD COLUMN frame_time DOUBLE",
    "ALTER TABLE images ADD COLUMN video_id INTEGER",
    "DROP INDEX ix_images_root_rel",
    "CREATE UNIQUE INDEX ix_images_root_rel ON images (root_id, rel) WHERE video_id IS NULL",
    "CREATE INDEX ix_images_video_id ON images (video_id)",
)


# MIGRATIONS[n - 1] brings a catalog from version n - 1 to version n.
MIGRATIONS: list[Step] = [m001_initial, m002_photo_meta, m003_video_frames]

# The version a catalog has once this clipsearch has opened it.
SCHEMA_VERSION = len(MIGRATIONS)


def stored_version(conn: Connection) -> int:
    """The schema version recorded in the catalog; 0 when it has none yet."""
    has_meta = conn.exec_driver_sql(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).first()
    if not has_meta:
        return 0
    value = conn.exec_driver_sql("SELECT value FROM meta WHERE \"key\" = 'schema_version'").scalar()
    return 0 if value is None else int(json.loads(value))


def upgrade(conn: Connection, catalog: Path) -> None:
    """Apply the steps the catalog lacks, in order, in one transaction with the version.

    A catalog already at the newest version is only read, so opening one for a search takes
    no write lock. An upgrade takes the write lock before it reads the version again: a second
    process opening the same old index waits, then finds nothing left to do. A step that
    fails leaves the catalog as it was.

    Args:
        conn: a connection to the catalog, in no transaction yet.
        catalog: the catalog's path, for messages.

    Raises:
        IndexVersionError: the catalog comes from a newer clipsearch.
        CorruptIndexError: its version is not a number.
        ClipsearchError: a step failed.
    """
    steps = list(MIGRATIONS)
    if _checked_version(conn, catalog, len(steps)) == len(steps):
        conn.rollback()
        return
    conn.exec_driver_sql("BEGIN IMMEDIATE")
    try:
        version = _checked_version(conn, catalog, len(steps))
        for number in range(version + 1, len(steps) + 1):
            _apply(conn, steps[number - 1], number, catalog)
        conn.exec_driver_sql(
            "INSERT OR REPLACE INTO meta (\"key\", value) VALUES ('schema_version', ?)",
            (json.dumps(len(steps)),),
        )
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


def _checked_version(conn: Connection, catalog: Path, known: int) -> int:
    try:
        version = stored_version(conn)
    except (TypeError, ValueError) as e:
        raise CorruptIndexError(
            f"catalog {catalog} records a schema version that is not a number ({one_line(e)}); "
            "restore it from a backup or delete the index folder and index again"
        ) from e
    if version > known:
        raise IndexVersionError(
            f"catalog {catalog} has schema version {version}, newer than this clipsearch "
            f"understands ({known}); upgrade clipsearch"
        )
    return version


def _apply(conn: Connection, step: Step, number: int, catalog: Path) -> None:
    try:
        step(conn)
    except ClipsearchError:
        raise
    except Exception as e:
        raise ClipsearchError(
            f"catalog {catalog}: schema step {number} ({step.__name__}) failed "
            f"({one_line(e)}); the catalog is left as it was, so the clipsearch that made it "
            "still opens it: report this error"
        ) from e
