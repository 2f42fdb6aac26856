"""The catalog's read path (plain ``sqlite3``, no SQLAlchemy) agrees with SQLAlchemy's view of
today's models (``store/schema.py``), on real indexes: one made by today's code, with photo
metadata, a copied file, a name that is not UTF-8 and a file that failed; and one upgraded from
the first schema by the migration steps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from clipsearch import ImageIndex
from clipsearch.media.photometa import PhotoMeta, distance_km
from clipsearch.store.catalog import CATALOG_FILE, Catalog, StoredImage
from clipsearch.store.schema import ErrorRow, ImageRow, Meta, Root, VectorRow
from tests.helpers import draw_image, make_video, save_photo
from tests.store.test_migrations import rewrite_as_v1


def orm_images(catalog: Catalog) -> dict[int, StoredImage]:
    """Every image as SQLAlchemy reads it through the models."""
    with catalog.session() as s:
        rows = s.execute(select(ImageRow, Root.path).join(Root, Root.id == ImageRow.root_id))
        return {
            row.id: StoredImage(
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
            for row, root in rows
        }


def assert_reads_agree(catalog: Catalog) -> dict[int, StoredImage]:
    """Every read of the catalog against the same read through the SQLAlchemy models."""
    expected = orm_images(catalog)
    assert expected, "an empty catalog proves nothing"
    assert catalog.images(list(expected)) == expected
    assert catalog.count() == len(expected)
    assert sorted(catalog.ids().tolist()) == sorted(expected)
    with catalog.session() as s:
        roots = dict(s.execute(select(Root.id, Root.path)).all())
        meta = {m.key: m.value for m in s.scalars(select(Meta))}
        vectors = dict(s.execute(select(VectorRow.image_id, VectorRow.data)).all())
        errors = [(e.path, e.reason, e.at) for e in s.scalars(select(ErrorRow))]
        unread = s.scalars(
            select(ImageRow.id).where(ImageRow.meta_read.is_(False), ImageRow.video_id.is_(None))
        ).all()
    files = {i: r for i, r in expected.items() if r.video_id is None}
    assert catalog.count_files() == len(files)
    assert catalog.roots() == roots
    for key, value in meta.items():
        assert catalog.get_meta(key) == json.loads(value)
    for rid in roots:
        assert catalog.files_under(rid) == {
            r.rel: (i, r.size, r.mtime_ns, r.sha256)
            for i, r in files.items()
            if roots[rid] == r.root
        }
    blocks = list(catalog.iter_vectors())
    got = dict(
        zip(
            np.concatenate([b[0] for b in blocks]).tolist(),
            np.concatenate([b[1] for b in blocks]),
            strict=True,
        )
    )
    assert got.keys() == vectors.keys()
    for i, data in vectors.items():
        assert got[i].tobytes() == data
        assert catalog.vector(i).tobytes() == data
    some = sorted(vectors)[::2]
    assert [b for part in catalog.iter_vectors(some) for b in part[0].tolist()] == some
    assert sorted((e.path, e.reason, e.at) for e in catalog.errors()) == sorted(errors)
    assert catalog.error_paths() == {p for p, _, _ in errors}
    assert [i for i, _, _ in catalog.files_without_meta()] == sorted(unread)
    for i, path, mtime in catalog.files_without_meta():
        assert (path, mtime) == (expected[i].path, expected[i].mtime_ns)
    for image in files.values():
        assert catalog.find_path(image.path) == image
    for i in files:
        frames = sorted(
            (f.frame_time, f.id)
            for f in expected.values()
            if f.frame_time is not None and f.file_id == i
        )
        assert catalog.frames(i) == [(f, t) for t, f in frames]
        assert sorted(catalog.with_frames([i])) == sorted([i] + [f for _, f in frames if f != i])
    styles: dict[str | None, int] = {}
    for image in files.values():
        styles[image.style] = styles.get(image.style, 0) + 1
    assert catalog.style_counts() == styles
    by_sha: dict[str, list[int]] = {}
    for i, image in sorted(files.items()):
        by_sha.setdefault(image.sha256, []).append(i)
    assert sorted(catalog.same_content()) == sorted(g for g in by_sha.values() if len(g) > 1)
    return expected


def assert_filters_agree(catalog: Catalog, expected: dict[int, StoredImage], root: str) -> None:
    def ids(pred) -> list[int]:
        return sorted(i for i, r in expected.items() if pred(r))

    def matching(**kw) -> list[int]:
        return sorted(catalog.ids_matching(**kw).tolist())

    for prefix in (root, root + "/sub", root + "/caf", root + "/nothing"):
        assert matching(path_prefix=prefix) == ids(lambda r, p=prefix: r.path.startswith(p))
    assert matching(styles=["warm"]) == ids(lambda r: r.style == "warm")
    assert matching(styles=["warm", "cold"]) == ids(lambda r: r.style in ("warm", "cold"))
    t0 = 1_600_000_000.0
    assert matching(taken_from=t0) == ids(lambda r: r.meta.taken is not None and r.meta.taken >= t0)
    assert matching(taken_until=t0) == ids(lambda r: r.meta.taken is not None and r.meta.taken < t0)
    for camera in ("canon", "EOS", "pixel 7", "zz"):
        assert matching(camera=camera) == ids(
            lambda r, c=camera: (
                r.meta.camera_make is not None
                and c.lower() in f"{r.meta.camera_make} {r.meta.camera_model or ''}".lower()
            )
        )
    for near in ((48.8566, 2.3522, 10.0), (48.8566, 2.3522, 1000.0), (89.9, 0.0, 50.0)):
        assert matching(near=near) == ids(
            lambda r, n=near: (
                r.meta.lat is not None
                and distance_km(np.array([r.meta.lat]), np.array([r.meta.lon]), n[0], n[1])[0]
                <= n[2]
            )
        )
    assert matching(path_prefix=root + "/sub", camera="canon") == ids(
        lambda r: r.path.startswith(root + "/sub") and (r.meta.camera_make or "") == "Canon"
    )


@pytest.fixture
def photos(tmp_path) -> Path:
    root = tmp_path / "photos"
    save_photo(
        root / "paris.jpg",
        "red",
        "circle",
        taken="2021:06:01 10:00:00",
        make="Canon",
        model="EOS R5",
        gps=(48.8584, 2.2945),
    )
    save_photo(
        root / "sub" / "lyon.jpg",
        "blue",
        "square",
        taken="2019:01:01 08:00:00",
        make="Google",
        model="Pixel 7",
        gps=(45.764, 4.8357),
    )
    save_photo(root / "sub" / "old.jpg", "green", "triangle", make="Canon", model="EOS 5D")
    draw_image(root / "plain.png", "yellow", "circle")
    (root / "sub" / "copy.png").write_bytes((root / "plain.png").read_bytes())
    odd = os.fsencode(str(root)) + b"/caf\xe9.png"  # not UTF-8
    Path(os.fsdecode(odd)).write_bytes((root / "plain.png").read_bytes()[:-1] + b"\x00")
    (root / "broken.jpg").write_bytes(b"not a picture")
    return root


def test_reads_agree_with_the_models_on_a_new_index(tmp_path, tiny_model, photos):
    with ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model, device="cpu") as index:
        report = index.add([photos])
        assert report.added == 6
        ids = sorted(index.catalog.ids().tolist())
        index.catalog.set_styles([(i, ("warm", "cold", None)[i % 3], 0.5) for i in ids])
        catalog = index.catalog
        expected = assert_reads_agree(catalog)
        assert any("\udce9" in r.path for r in expected.values())  # the name that is not UTF-8
        assert catalog.errors() and catalog.same_content()
        assert sum(r.meta.lat is not None for r in expected.values()) == 2
        assert_filters_agree(catalog, expected, str(photos))


def test_reads_agree_with_the_models_after_the_migrations(tmp_path, tiny_model, photos):
    folder = tmp_path / "idx"
    with ImageIndex.open_or_create(folder, model=tiny_model, device="cpu") as index:
        assert index.add([photos]).added == 6
    rewrite_as_v1(folder)
    catalog = Catalog.open(folder / CATALOG_FILE)  # upgraded by the steps
    try:
        expected = assert_reads_agree(catalog)
        assert len(catalog.files_without_meta()) == 6  # the first schema had no metadata
        assert all(r.meta == PhotoMeta() for r in expected.values())
        assert_filters_agree(catalog, expected, str(photos))
    finally:
        catalog.close()
    with ImageIndex.open(folder, device="cpu") as index:  # the next run reads the metadata
        index.add([photos])
        assert_filters_agree(index.catalog, assert_reads_agree(index.catalog), str(photos))


def test_reads_agree_with_the_models_with_video_frames(tmp_path, tiny_model, photos):
    pytest.importorskip("av")
    make_video(photos / "clips" / "holiday.mp4")
    folder = tmp_path / "idx"
    with ImageIndex.open_or_create(folder, model=tiny_model, device="cpu") as index:
        index.add([photos])
        expected = assert_reads_agree(index.catalog)
        frames = [r for r in expected.values() if r.frame_time is not None]
        assert len(frames) >= 3 and sum(r.video_id is None for r in frames) == 1
        assert index.catalog.count_files() == 7
        stills = index.catalog.ids_matching(stills=True).tolist()
        assert sorted(stills) == sorted(i for i, r in expected.items() if r.frame_time is None)
        moved = photos / "moved"
        (photos / "clips").rename(moved)
        index.add([photos])  # the video moved: its frames follow it, nothing re-encoded
        after = assert_reads_agree(index.catalog)
        after_frames = [r for r in after.values() if r.frame_time is not None]
        assert {r.id for r in after_frames} == {r.id for r in frames}
        assert all(r.path.startswith(str(moved)) for r in after_frames)


def test_reads_come_from_each_thread_and_see_the_last_commit(tmp_path, tiny_model, photos):
    from concurrent.futures import ThreadPoolExecutor

    with ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model, device="cpu") as index:
        index.add([photos])
        catalog = index.catalog
        with ThreadPoolExecutor(4) as pool:
            counts = list(pool.map(lambda _: catalog.count(), range(16)))
        assert counts == [6] * 16
        catalog.remove(catalog.ids().tolist()[:2])  # a write, then reads on every connection
        with ThreadPoolExecutor(4) as pool:
            counts = list(pool.map(lambda _: catalog.count(), range(16)))
        assert counts == [4] * 16


def test_a_search_and_a_no_op_index_do_not_import_sqlalchemy(tmp_path, tiny_model, photos):
    folder = tmp_path / "idx"
    (photos / "broken.jpg").unlink()  # a file that failed is tried again on every run
    with ImageIndex.open_or_create(folder, model=tiny_model, device="cpu") as index:
        index.add([photos])
    script = textwrap.dedent(
        """
        import sys
        from clipsearch import ImageIndex
        with ImageIndex.open(sys.argv[1], device="cpu") as index:
            hits = index.search("a red circle", k=3, after="2000", camera="canon")
            report = index.add([sys.argv[2]])
        print(len(hits), report.added, report.unchanged, "sqlalchemy" in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(photos)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout.split()
    assert out == ["2", "0", "6", "False"]
