"""Schema migrations: the frozen steps, old catalogs upgraded in place, newer ones refused, and
an upgrade that fails changing nothing. Real indexes on the tiny model, real SQLite."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine

from clipsearch import ImageIndex
from clipsearch.cli.main import main
from clipsearch.errors import ClipsearchError, CorruptIndexError, IndexVersionError
from clipsearch.store import migrations
from clipsearch.store.catalog import CATALOG_FILE, Catalog
from clipsearch.store.migrations import SCHEMA_VERSION, stored_version, upgrade
from clipsearch.store.schema import Base
from tests.helpers import draw_image, save_photo

# The first schema as clipsearch shipped it (Base.metadata.create_all of the first models),
# written out here independently of the code under test.
V1_DDL = """
CREATE TABLE meta ("key" VARCHAR NOT NULL, value VARCHAR NOT NULL, PRIMARY KEY ("key"));
CREATE TABLE roots (id INTEGER NOT NULL, path VARCHAR NOT NULL, PRIMARY KEY (id), UNIQUE (path));
CREATE TABLE errors (
    id INTEGER NOT NULL, path VARCHAR NOT NULL, reason VARCHAR NOT NULL, at DOUBLE NOT NULL,
    PRIMARY KEY (id), UNIQUE (path)
);
CREATE TABLE images (
    id INTEGER NOT NULL PRIMARY KEY AUTOINCREMENT, root_id INTEGER NOT NULL,
    rel VARCHAR NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    sha256 VARCHAR(64) NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    indexed_at DOUBLE NOT NULL, style VARCHAR, style_score DOUBLE,
    FOREIGN KEY(root_id) REFERENCES roots (id)
);
CREATE INDEX ix_images_style ON images (style);
CREATE INDEX ix_images_sha256 ON images (sha256);
CREATE UNIQUE INDEX ix_images_root_rel ON images (root_id, rel);
CREATE TABLE vectors (
    image_id INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (image_id),
    FOREIGN KEY(image_id) REFERENCES images (id) ON DELETE CASCADE
);
"""
V1_COLUMNS = {
    "meta": '"key", value',
    "roots": "id, path",
    "errors": "id, path, reason, at",
    "images": "id, root_id, rel, size, mtime_ns, sha256, width, height, indexed_at, style, "
    "style_score",
    "vectors": "image_id, data",
}


def schema(db: Path) -> list[tuple[str, str, str, str | None]]:
    """sqlite_master, its SQL with layout whitespace removed."""
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    con.close()
    return sorted((t, n, tbl, None if sql is None else _squeeze(sql)) for t, n, tbl, sql in rows)


def _squeeze(sql: str) -> str:
    return re.sub(r"\s*([(),])\s*", r"\1", " ".join(sql.split()))


def query(db: Path, sql: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def stored_version_of(db: Path) -> int:
    engine = create_engine(f"sqlite:///{db}")
    try:
        with engine.connect() as conn:
            return stored_version(conn)
    finally:
        engine.dispose()


def fresh_catalog(db: Path) -> Path:
    """A new catalog made by today's code."""
    Catalog.open(db, create=True).close()
    return db


def build_index(folder: Path, tiny_model: str, photos: Path) -> list[tuple[str, float]]:
    """A real index of four pictures made by today's code; returns a search's (path, score)."""
    for color, shape in [("red", "circle"), ("green", "square"), ("blue", "triangle")]:
        draw_image(photos / f"{color}_{shape}.png", color, shape)
    draw_image(photos / "sub" / "yellow_circle.png", "yellow", "circle")
    with ImageIndex.open_or_create(folder, model=tiny_model, device="cpu") as index:
        assert index.add([photos]).added == 4
        return hits(index)


def hits(index: ImageIndex) -> list[tuple[str, float]]:
    return [(h.path, round(h.score, 5)) for h in index.search("a red circle", k=10)]


def rewrite_as_v1(folder: Path) -> None:
    """Replace the index's catalog by one made with the first schema's DDL holding the same
    rows: the index folder an early clipsearch left behind."""
    catalog = folder / CATALOG_FILE
    old = catalog.with_name("today.sqlite")
    query(catalog, "PRAGMA journal_mode=DELETE")  # folds the WAL in, so the file is whole
    catalog.rename(old)
    con = sqlite3.connect(catalog)
    con.execute("PRAGMA journal_mode=WAL")
    con.executescript(V1_DDL)
    con.execute("ATTACH DATABASE ? AS today", (str(old),))
    for table, columns in V1_COLUMNS.items():
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM today.{table}")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.commit()
    con.execute("DETACH DATABASE today")
    con.close()
    old.unlink()


@pytest.fixture
def v1_index(tmp_path, tiny_model) -> tuple[Path, list[tuple[str, float]]]:
    """An index folder whose catalog has the first schema; and what searching it found."""
    folder = tmp_path / "idx"
    found = build_index(folder, tiny_model, tmp_path / "photos")
    rewrite_as_v1(folder)
    return folder, found


def add_note_column(conn) -> None:
    """The next step, as a later clipsearch might write it."""
    conn.exec_driver_sql("ALTER TABLE images ADD COLUMN note VARCHAR")
    conn.exec_driver_sql("UPDATE images SET note = 'from v1'")


def image_columns(db: Path) -> list[str]:
    return [row[1] for row in query(db, "PRAGMA table_info(images)")]


# --- the frozen steps ------------------------------------------------------------------------


def test_first_step_creates_the_first_schema_exactly(tmp_path):
    by_hand = tmp_path / "by_hand.sqlite"
    with sqlite3.connect(by_hand) as con:
        con.executescript(V1_DDL)
    con.close()
    engine = create_engine(f"sqlite:///{tmp_path / 'step1.sqlite'}")
    with engine.begin() as conn:
        migrations.MIGRATIONS[0](conn)
    engine.dispose()
    assert schema(tmp_path / "step1.sqlite") == schema(by_hand)


def test_steps_build_the_schema_of_todays_models(tmp_path):
    """create_all of the ORM models and the steps agree: a model changed without a new step,
    or a step without the model change, fails here."""
    engine = create_engine(f"sqlite:///{tmp_path / 'models.sqlite'}")
    Base.metadata.create_all(engine)
    engine.dispose()
    steps = fresh_catalog(tmp_path / "steps.sqlite")
    assert schema(steps) == schema(tmp_path / "models.sqlite")
    assert stored_version_of(steps) == SCHEMA_VERSION


def test_a_new_index_has_the_schema_of_the_steps(tmp_path, tiny_model):
    folder = tmp_path / "idx"
    build_index(folder, tiny_model, tmp_path / "photos")
    assert schema(folder / CATALOG_FILE) == schema(fresh_catalog(tmp_path / "steps.sqlite"))


# --- old indexes -----------------------------------------------------------------------------


def test_an_index_with_the_first_schema_opens_searches_and_grows(v1_index, tmp_path):
    folder, found = v1_index
    with ImageIndex.open(folder, device="cpu") as index:
        assert index.info().schema_version == SCHEMA_VERSION
        assert hits(index) == found
        draw_image(tmp_path / "photos" / "purple_square.png", "purple", "square")
        report = index.add([tmp_path / "photos"])
        assert (report.added, report.unchanged) == (1, 4)
        assert index.count == 5
        paths = [h.path for h in index.search("a purple square", k=10)]
        assert str(tmp_path / "photos" / "purple_square.png") in paths
    with ImageIndex.open(folder, device="cpu") as index:
        assert index.count == 5


def test_a_later_step_upgrades_a_v1_index_and_keeps_its_rows(v1_index, monkeypatch):
    folder, found = v1_index
    db = folder / CATALOG_FILE
    before = query(db, "SELECT id, root_id, rel, sha256 FROM images ORDER BY id")
    vectors = query(db, "SELECT image_id, data FROM vectors ORDER BY image_id")
    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, add_note_column])
    with ImageIndex.open(folder, device="cpu") as index:
        assert hits(index) == found
    assert stored_version_of(db) == SCHEMA_VERSION + 1
    assert "note" in image_columns(db)
    assert query(db, "SELECT id, root_id, rel, sha256 FROM images ORDER BY id") == before
    assert query(db, "SELECT image_id, data FROM vectors ORDER BY image_id") == vectors
    assert {n for (n,) in query(db, "SELECT note FROM images")} == {"from v1"}


def test_a_catalog_cut_short_before_its_version_is_finished(tmp_path):
    """The first clipsearch created the tables and recorded the version in two commits."""
    db = tmp_path / CATALOG_FILE
    with sqlite3.connect(db) as con:
        con.executescript(V1_DDL.split("CREATE TABLE errors")[0])
    con.close()
    Catalog.open(db).close()
    assert stored_version_of(db) == SCHEMA_VERSION
    assert schema(db) == schema(fresh_catalog(tmp_path / "fresh.sqlite"))


# --- newer catalogs ----------------------------------------------------------------------------


def test_a_catalog_from_a_newer_clipsearch_is_refused_in_one_line(v1_index):
    folder, _ = v1_index
    db = folder / CATALOG_FILE
    Catalog.open(db).close()
    newer = SCHEMA_VERSION + 1
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(newer),))
    con.close()
    before = schema(db)
    with pytest.raises(IndexVersionError) as caught:
        ImageIndex.open(folder)
    assert isinstance(caught.value, CorruptIndexError)  # what callers caught before
    message = str(caught.value)
    assert "\n" not in message
    assert str(db) in message and f"schema version {newer}" in message
    assert f"understands ({SCHEMA_VERSION})" in message and "upgrade clipsearch" in message
    result = CliRunner().invoke(main, ["--index", str(folder), "info"])
    assert result.exit_code == 1
    assert "newer than this clipsearch" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert schema(db) == before and stored_version_of(db) == newer


def test_a_version_that_is_not_a_number_is_reported(tmp_path):
    db = fresh_catalog(tmp_path / CATALOG_FILE)
    with sqlite3.connect(db) as con:
        con.execute("UPDATE meta SET value = '\"two\"' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(CorruptIndexError, match="schema version that is not a number"):
        Catalog.open(db)


# --- atomic and idempotent ---------------------------------------------------------------------


def test_applying_the_steps_again_changes_nothing(v1_index, monkeypatch):
    folder, _ = v1_index
    db = folder / CATALOG_FILE
    runs = []

    def counted_step(conn) -> None:
        runs.append(1)
        add_note_column(conn)

    monkeypatch.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, counted_step])
    Catalog.open(db).close()
    after_first = (schema(db), query(db, "SELECT * FROM meta ORDER BY key"))
    Catalog.open(db).close()
    catalog = Catalog.open(db)
    try:
        with catalog.engine.connect() as conn:
            upgrade(conn, db)
    finally:
        catalog.close()
    assert runs == [1]
    assert (schema(db), query(db, "SELECT * FROM meta ORDER BY key")) == after_first


def alter_then_raise(conn) -> None:
    add_note_column(conn)
    conn.exec_driver_sql("CREATE TABLE later (id INTEGER)")
    raise RuntimeError("the step's bug")


def alter_then_bad_sql(conn) -> None:
    add_note_column(conn)
    conn.exec_driver_sql("ALTER TABLE images ADD COLUMN note VARCHAR")


def alter_then_interrupt(conn) -> None:
    add_note_column(conn)
    raise KeyboardInterrupt


@pytest.mark.parametrize(
    ("step", "raised", "says"),
    [
        (alter_then_raise, ClipsearchError, "the step's bug"),
        (alter_then_bad_sql, ClipsearchError, "duplicate column name: note"),
        (alter_then_interrupt, KeyboardInterrupt, ""),
    ],
)
def test_an_interrupted_upgrade_leaves_the_old_version(v1_index, monkeypatch, step, raised, says):
    folder, found = v1_index
    db = folder / CATALOG_FILE
    before = (schema(db), query(db, "SELECT * FROM meta ORDER BY key"))
    rows = query(db, "SELECT * FROM images ORDER BY id")
    with monkeypatch.context() as m:
        m.setattr(migrations, "MIGRATIONS", [*migrations.MIGRATIONS, step])
        with pytest.raises(raised) as caught:
            ImageIndex.open(folder)
    if raised is ClipsearchError:
        message = str(caught.value)
        assert "\n" not in message and says in message
        assert f"step {SCHEMA_VERSION + 1} ({step.__name__})" in message
        assert "left as it was" in message
    assert (schema(db), query(db, "SELECT * FROM meta ORDER BY key")) == before
    assert "note" not in image_columns(db)
    assert query(db, "SELECT * FROM images ORDER BY id") == rows
    with ImageIndex.open(folder, device="cpu") as index:
        assert hits(index) == found


# --- photo metadata of indexes made before step 2 -------------------------------------------


def test_the_next_index_run_reads_the_photo_metadata_of_old_rows_once(
    tmp_path, tiny_model, monkeypatch
):
    """An index made before the catalog kept dates, cameras and places gets them on its next
    `index` run, read from the files' EXIF: no re-encoding, no model load, vectors untouched."""
    from clipsearch.index import pipeline

    photos, folder = tmp_path / "photos", tmp_path / "idx"
    for n, color in enumerate(["red", "green", "blue"]):
        save_photo(
            photos / f"{color}.jpg",
            color,
            taken=f"2019:0{n + 1}:01 10:00:00",
            offset="+00:00",
            make="Canon",
            model="EOS 5D",
            gps=(45.0, 6.0 + n),
        )
    draw_image(photos / "plain.png", "yellow")
    with ImageIndex.open_or_create(folder, model=tiny_model, device="cpu") as index:
        assert index.add([photos]).added == 4
    rewrite_as_v1(folder)
    db = folder / CATALOG_FILE
    vectors = query(db, "SELECT image_id, data FROM vectors ORDER BY image_id")
    with ImageIndex.open(folder, device="cpu") as index:
        found = hits(index)
        assert all(h.taken is None and h.camera is None for h in index.search("x", k=9))
        assert len(index.catalog.files_without_meta()) == 4

    def no_model(self):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(ImageIndex, "encoder", property(no_model))
    with ImageIndex.open(folder, device="cpu") as index:
        report = index.add([photos])
        assert (report.unchanged, report.added, report.updated) == (4, 0, 0)
        assert hits(index) == found
        results = {Path(h.path).name: h for h in index.search("x", k=9)}
        assert results["green.jpg"].taken == "2019-02-01T10:00:00+00:00"
        assert (results["green.jpg"].camera, results["green.jpg"].lat) == ("Canon EOS 5D", 45.0)
        assert results["plain.png"].taken_source == "mtime"
        assert {Path(h.path).name for h in index.search("x", k=9, before="2019-02")} == {"red.jpg"}
    assert query(db, "SELECT image_id, data FROM vectors ORDER BY image_id") == vectors

    reads = []
    real = pipeline.read_photo_meta
    monkeypatch.setattr(pipeline, "read_photo_meta", lambda *a: reads.append(a) or real(*a))
    with ImageIndex.open(folder, device="cpu") as index:
        assert index.add([photos]).unchanged == 4
    assert reads == []  # marked as read: the backfill happens once


def test_the_backfill_waits_for_files_that_are_away(tmp_path, tiny_model):
    """Rows of a folder that is not there now (a drive not mounted) keep no guessed date: they
    are read once the folder is back."""
    photos, away, folder = tmp_path / "photos", tmp_path / "drive", tmp_path / "idx"
    save_photo(photos / "here.jpg", "red", taken="2020:01:01 12:00:00", make="Canon")
    save_photo(away / "away.jpg", "blue", taken="2021:01:01 12:00:00", make="Nikon")
    with ImageIndex.open_or_create(folder, model=tiny_model, device="cpu") as index:
        assert index.add([photos, away]).added == 2
    rewrite_as_v1(folder)
    away.rename(tmp_path / "unmounted")
    with ImageIndex.open(folder, device="cpu") as index:
        index.add([photos])
        assert [Path(p).name for _, p, _ in index.catalog.files_without_meta()] == ["away.jpg"]
    (tmp_path / "unmounted").rename(away)
    with ImageIndex.open(folder, device="cpu") as index:
        index.add([photos])
        assert index.catalog.files_without_meta() == []
        cameras = {Path(h.path).name: (h.camera, h.taken_source) for h in index.search("x")}
        assert cameras == {"here.jpg": ("Canon", "exif"), "away.jpg": ("Nikon", "exif")}


def test_an_index_of_schema_2_gains_video_frames(v1_index, tmp_path):
    """The catalog of the clipsearch before videos (steps 1 and 2) opens, is upgraded and
    indexes a video, while its images stay found."""
    pytest.importorskip("av")
    from tests.helpers import make_video

    folder, found = v1_index
    engine = create_engine(f"sqlite:///{folder / CATALOG_FILE}")
    with engine.begin() as conn:
        migrations.MIGRATIONS[1](conn)
        conn.exec_driver_sql("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    engine.dispose()
    assert "frame_time" not in image_columns(folder / CATALOG_FILE)
    make_video(tmp_path / "photos" / "clip.mp4")
    with ImageIndex.open(folder) as index:
        assert stored_version_of(folder / CATALOG_FILE) == SCHEMA_VERSION == 3
        assert hits(index) == found
        report = index.add([tmp_path / "photos"], video_interval=4.0)
        assert (report.added, report.unchanged) == (1, 4)
        assert len(index) == 5 and index.catalog.count() == 7
    assert schema(folder / CATALOG_FILE) == schema(fresh_catalog(tmp_path / "steps.sqlite"))
