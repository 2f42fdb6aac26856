"""ImageIndex end to end on the tiny model: incremental indexing, search and its options."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from clipsearch import (
    EmptyIndexError,
    ImageIndex,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    Query,
    QueryError,
)
from clipsearch.errors import ClipsearchError
from clipsearch.store.catalog import CATALOG_FILE
from tests.helpers import draw_image


@pytest.fixture
def index(tmp_path, tiny_model):
    with ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model, device="cpu") as idx:
        yield idx


def paths_of(index):
    return sorted(r.path for r in index.catalog.images(index.catalog.ids().tolist()).values())


def assert_consistent(index):
    """Catalog and FAISS hold the same ids, and no path twice."""
    reopened = ImageIndex.open(index.path)
    try:
        cat_ids = set(reopened.catalog.ids().tolist())
        assert set(reopened.vectors.ids().tolist()) == cat_ids
        paths = paths_of(reopened)
        assert len(paths) == len(set(paths))
    finally:
        reopened.close()


def test_add_then_rerun_is_incremental(index, photo_dir):
    report = index.add([photo_dir])
    assert (report.added, report.failed, report.unchanged) == (12, 0, 0)
    assert index.count == 12
    again = index.add([photo_dir])
    assert (again.added, again.updated, again.unchanged, again.removed) == (0, 0, 12, 0)
    assert_consistent(index)


def test_modified_file_is_reencoded_with_a_new_vector(index, photo_dir):
    index.add([photo_dir])
    target = photo_dir / "shapes" / "red_square.png"
    old = index.catalog.find_path(str(target))
    old_vec = index.catalog.vector(old.id)
    draw_image(target, "blue", "triangle", size=80)
    report = index.add([photo_dir])
    assert (report.updated, report.added, report.unchanged) == (1, 0, 11)
    new = index.catalog.find_path(str(target))
    assert new.id != old.id and (new.width, new.height) == (80, 80)
    assert not np.allclose(index.catalog.vector(new.id), old_vec)
    assert index.count == 12
    assert_consistent(index)


def test_touched_file_keeps_its_vector(index, photo_dir):
    index.add([photo_dir])
    target = photo_dir / "shapes" / "red_square.png"
    old = index.catalog.find_path(str(target))
    os.utime(target, ns=(old.mtime_ns + 10**9, old.mtime_ns + 10**9))
    report = index.add([photo_dir])
    assert (report.updated, report.added, report.unchanged) == (0, 0, 12)
    assert index.catalog.find_path(str(target)).id == old.id


def test_deleted_files_are_removed(index, photo_dir):
    index.add([photo_dir])
    (photo_dir / "shapes" / "red_square.png").unlink()
    shutil.rmtree(photo_dir / "more")
    report = index.add([photo_dir])
    assert report.removed == 7 and index.count == 5
    assert all("more/" not in p for p in paths_of(index))
    assert_consistent(index)


def test_renamed_and_moved_files_keep_their_vectors(index, photo_dir, monkeypatch):
    index.add([photo_dir])
    src = photo_dir / "shapes" / "red_square.png"
    old = index.catalog.find_path(str(src))
    dest = photo_dir / "renamed" / "favourite.png"
    dest.parent.mkdir()
    src.rename(dest)

    import clipsearch.index.pipeline as indexer_mod

    def no_decode(*a, **k):
        raise AssertionError("a moved file must not be decoded again")

    monkeypatch.setattr(indexer_mod, "decode_image_sized", no_decode)
    report = index.add([photo_dir])
    assert (report.moved, report.added, report.removed) == (1, 0, 0)
    moved = index.catalog.find_path(str(dest))
    assert moved.id == old.id
    assert index.catalog.find_path(str(src)) is None
    assert_consistent(index)


def test_interrupted_run_resumes_without_reencoding(index, photo_dir, monkeypatch):
    import clipsearch.index.pipeline as index_mod

    calls = {"n": 0}
    real = index_mod.Indexer._commit

    def crash_on_second(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(index_mod.Indexer, "_commit", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        index.add([photo_dir], batch_size=4)
    monkeypatch.setattr(index_mod.Indexer, "_commit", real)
    assert index.count == 4  # the first batch was committed
    assert_consistent(index)
    report = index.add([photo_dir], batch_size=4)
    assert (report.unchanged, report.added) == (4, 8)
    assert_consistent(index)


def test_bad_files_are_recorded_and_skipped(index, photo_dir):
    (photo_dir / "notes.jpg").write_text("this is not a picture")
    (photo_dir / "empty.png").write_bytes(b"")
    good = (photo_dir / "shapes" / "red_square.png").read_bytes()
    (photo_dir / "cut.png").write_bytes(good[: len(good) // 2])
    report = index.add([photo_dir])
    assert report.added == 12 and report.failed == 3
    reasons = {os.path.basename(e.path): e.reason for e in index.errors()}
    assert reasons["notes.jpg"].startswith("not an image (a text file)")
    assert reasons["empty.png"] == "empty file (0 bytes)"
    assert "truncated" in reasons["cut.png"] or "corrupt" in reasons["cut.png"]
    # Fixed files leave the errors table on the next run.
    (photo_dir / "cut.png").write_bytes(good)
    index.add([photo_dir])
    assert "cut.png" not in {os.path.basename(e.path) for e in index.errors()}


def test_exclude_and_hidden(index, photo_dir):
    draw_image(photo_dir / ".hidden" / "x.png")
    draw_image(photo_dir / ".dot.png")
    draw_image(photo_dir / "skip" / "y.png")
    draw_image(photo_dir / "UPPER.JPG", fmt="JPEG")
    report = index.add([photo_dir], exclude=["skip"])
    assert report.added == 13  # 12 + UPPER.JPG; no hidden, no excluded
    report = index.add([photo_dir], include_hidden=True, exclude=["skip"])
    assert report.added == 2


def test_subfolder_of_an_indexed_root_shares_its_records(index, photo_dir):
    index.add([photo_dir])
    report = index.add([photo_dir / "shapes"])
    assert report.unchanged == 6 and report.added == 0 and report.removed == 0
    assert index.count == 12
    assert len(index.catalog.roots()) == 1


def test_model_mismatch_is_refused(tmp_path, tiny_model, photo_dir):
    from tests.helpers import save_tiny_model

    other = save_tiny_model(tmp_path / "other", seed=42)
    with ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model) as idx:
        idx.add([photo_dir])
    with pytest.raises(IndexMismatchError, match="was built with model"):
        ImageIndex.open_or_create(tmp_path / "idx", model=f"local-dir:{other}")
    # Same weights in another folder are the same model.
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model.split(":", 1)[1], copy)
    ImageIndex.open_or_create(tmp_path / "idx", model=f"local-dir:{copy}").close()


def test_changed_weights_are_refused_on_use(tmp_path, photo_dir):
    from tests.helpers import save_tiny_model

    folder = save_tiny_model(tmp_path / "m", seed=1)
    with ImageIndex.open_or_create(tmp_path / "idx", model=f"local-dir:{folder}") as idx:
        idx.add([photo_dir])
    save_tiny_model(folder, seed=2)
    with ImageIndex.open(tmp_path / "idx") as idx, pytest.raises(IndexMismatchError):
        idx.search("anything")


def test_search_ranks_by_cosine_and_filters(index, photo_dir):
    index.add([photo_dir])
    hits = index.search("a red circle", k=5)
    assert len(hits) == 5
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    q = index.embed_text("a red circle")
    for h in hits:
        assert h.score == pytest.approx(float(index.catalog.vector(h.id) @ q), abs=1e-5)
        assert os.path.isabs(h.path)
    # k larger than the collection returns everything once
    assert len(index.search("x", k=100)) == 12
    only = index.search("x", k=100, path_prefix=str(photo_dir / "shapes"))
    assert len(only) == 6 and all("/shapes/" in h.path for h in only)
    cut = scores[2]
    assert all(h.score >= cut for h in index.search("a red circle", k=10, min_score=cut))


def test_combined_query_is_the_normalized_weighted_sum(index, photo_dir):
    index.add([photo_dir])
    img = str(photo_dir / "shapes" / "red_square.png")
    q = Query.parse("beach", plus=["2:sunset", f"@{img}"], minus=["0.5:people"])
    a, b, c, d = (
        index.embed_text("beach"),
        index.embed_text("sunset"),
        index.embed_image(img),
        index.embed_text("people"),
    )
    want = a + 2 * b + c - 0.5 * d
    want /= np.linalg.norm(want)
    assert np.allclose(index.query_vector(q), want, atol=1e-5)
    hits = index.search("beach", plus=["2:sunset", f"@{img}"], minus=["0.5:people"], k=3)
    assert hits[0].score == pytest.approx(float(index.catalog.vector(hits[0].id) @ want), abs=1e-5)


def test_a_query_object_takes_extra_minus_terms_alone(index, photo_dir):
    index.add([photo_dir])
    base = Query.text("a red square") + 0.5 * Query.text("a circle")
    with_minus = index.search(base, minus=["0.5:blue"], k=4)
    same = index.search(Query.parse("a red square", ["0.5:a circle"], ["0.5:blue"]), k=4)
    assert [(h.id, round(h.score, 5)) for h in with_minus] == [
        (h.id, round(h.score, 5)) for h in same
    ]
    assert with_minus != index.search(base, k=4)


def test_similar_never_returns_the_query_image(index, photo_dir):
    index.add([photo_dir])
    img = photo_dir / "shapes" / "red_square.png"
    hits = index.similar(img, k=20)
    assert len(hits) == 11 and str(img) not in {h.path for h in hits}
    by_id = index.similar(hits[0].id, k=3)
    assert hits[0].id not in {h.id for h in by_id}
    # An image from outside the index is encoded on the fly.
    outside = draw_image(index.path.parent / "outside.png", "red", "square")
    assert len(index.similar(outside, k=3)) == 3


def test_ties_are_broken_by_id(index, tmp_path):
    folder = tmp_path / "same"
    for i in range(5):
        draw_image(folder / f"{i}.png", "green", "square", background=(255, 255, 255 - i))
        draw_image(folder / f"copy{i}.png", "green", "square", background=(255, 255, 255 - i))
    index.add([folder])
    hits = index.search("green", k=10)
    for a, b in zip(hits, hits[1:], strict=False):
        assert (-a.score, a.id) <= (-b.score, b.id)


@pytest.mark.parametrize(
    ("kwargs", "err", "match"),
    [
        ({"query": "x", "k": 0}, QueryError, "at least 1"),
        ({"query": "x", "k": -3}, QueryError, "at least 1"),
        ({"query": "   "}, QueryError, "empty"),
        ({"query": None}, QueryError, "empty"),
        ({"query": "0:x"}, QueryError, "positive"),
        ({"query": "x", "minus": ["x"]}, QueryError, "cancel out"),
        ({"query": "@/no/such/image.jpg"}, QueryError, "no such file"),
    ],
)
def test_bad_queries_are_clear(index, photo_dir, kwargs, err, match):
    index.add([photo_dir])
    q = kwargs.pop("query")
    with pytest.raises(err, match=match):
        index.search(q, **kwargs)


def test_empty_index_and_missing_index(index, tmp_path):
    with pytest.raises(EmptyIndexError, match="is empty"):
        index.search("x")
    with pytest.raises(IndexNotFoundError, match="no index at"):
        ImageIndex.open(tmp_path / "nowhere")


def test_paths_must_be_folders(index, photo_dir):
    with pytest.raises(ClipsearchError, match="no such folder"):
        index.add([photo_dir / "nope"])
    with pytest.raises(ClipsearchError, match="is a file"):
        index.add([photo_dir / "shapes" / "red_square.png"])


def test_second_writer_is_refused(index, photo_dir):
    with index.writing():
        other = ImageIndex.open(index.path)
        with pytest.raises(IndexLockedError, match="is being written by process"):
            other.add([photo_dir])
        other.close()
    index.add([photo_dir])  # released


def test_stale_faiss_file_is_synced_on_open(index, photo_dir):
    index.add([photo_dir])
    saved = (index.path / "vectors.faiss").read_bytes()
    draw_image(photo_dir / "new.png", "purple", "circle")
    index.add([photo_dir])
    (index.path / "vectors.faiss").write_bytes(saved)  # as if the last save never happened
    with ImageIndex.open(index.path) as again:
        assert again.vectors.ntotal == 13
        assert len(again.search("x", k=50)) == 13


def test_catalog_file_is_an_index_directory(index):
    assert (index.path / CATALOG_FILE).is_file()


def test_remove_by_id_accepts_numpy_ids(index, photo_dir):
    index.add([photo_dir])
    ids = index.catalog.ids()[:3]
    assert index.remove(ids) == 3
    assert index.count == 9 and index.vectors.ntotal == 9
    assert not set(ids.tolist()) & set(index.catalog.ids().tolist())


def vector_at(index, path):
    return index.catalog.vector(index.catalog.find_path(str(path)).id)


def test_a_file_copied_then_moved_copies_the_stored_vector(index, photo_dir, monkeypatch):
    import clipsearch.index.pipeline as indexer_mod

    index.add([photo_dir])
    src = photo_dir / "shapes" / "red_square.png"
    old = index.catalog.find_path(str(src))
    old_vec = index.catalog.vector(old.id)
    for name in ("a.png", "b.png"):
        shutil.copy2(src, photo_dir / name)
    src.unlink()

    def no_decoding(*a, **k):
        raise AssertionError("known bytes were decoded again")

    monkeypatch.setattr(indexer_mod, "decode_image_sized", no_decoding)
    report = index.add([photo_dir], batch_size=1)
    assert (report.moved, report.added, report.removed, report.failed) == (1, 1, 0, 0)
    assert index.catalog.find_path(str(photo_dir / "a.png")).id == old.id  # the record moved
    copy = index.catalog.find_path(str(photo_dir / "b.png"))
    assert (copy.width, copy.height) == (old.width, old.height)
    np.testing.assert_array_equal(index.catalog.vector(copy.id), old_vec)
    assert_consistent(index)


@pytest.mark.parametrize("batch_size", [1, 32])
def test_swapped_files_each_get_the_vector_of_their_bytes(index, photo_dir, batch_size):
    index.add([photo_dir])
    a, b = photo_dir / "shapes" / "red_square.png", photo_dir / "shapes" / "blue_square.png"
    vec_a, vec_b = vector_at(index, a), vector_at(index, b)
    a.rename(photo_dir / "swap")
    b.rename(a)
    (photo_dir / "swap").rename(b)
    report = index.add([photo_dir], batch_size=batch_size)
    assert report.failed == 0 and index.count == 12
    np.testing.assert_allclose(vector_at(index, a), vec_b, atol=1e-5)
    np.testing.assert_allclose(vector_at(index, b), vec_a, atol=1e-5)
    assert_consistent(index)


def test_a_copy_of_a_file_edited_since_gets_the_old_bytes_vector(index, photo_dir):
    index.add([photo_dir])
    target = photo_dir / "shapes" / "red_square.png"
    old_vec = vector_at(index, target)
    backup = photo_dir / "zz" / "backup.png"  # walked after the edited file
    backup.parent.mkdir()
    shutil.copy2(target, backup)
    draw_image(target, "blue", "circle", size=80)
    report = index.add([photo_dir], batch_size=1)
    assert (report.updated, report.added, report.failed) == (1, 1, 0)
    np.testing.assert_allclose(vector_at(index, backup), old_vec, atol=1e-5)
    assert not np.allclose(vector_at(index, target), old_vec)
    assert_consistent(index)


def test_a_model_that_fails_to_load_stops_the_run_only_when_a_file_needs_it(
    tmp_path, tiny_model, photo_dir, monkeypatch
):
    import clipsearch.index.imageindex as imageindex_mod

    with ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model, device="cpu") as idx:
        idx.add([photo_dir])

    def broken(*args, **kwargs):
        raise RuntimeError("the model cannot load")

    monkeypatch.setattr(imageindex_mod, "load_spec", broken)
    monkeypatch.setattr(imageindex_mod, "load_image_encoder", broken)  # NumPy's way in too
    (photo_dir / "shapes" / "red_square.png").rename(photo_dir / "red_square.png")
    with ImageIndex.open(tmp_path / "idx") as idx:
        report = idx.add([photo_dir])  # a move: hashed only, no model
        assert (report.moved, report.unchanged, report.failed) == (1, 11, 0)
        draw_image(photo_dir / "new.png", "blue", "square", size=50)
        with pytest.raises(RuntimeError, match="cannot load"):
            idx.add([photo_dir])
        assert idx.errors() == []  # not a fault of the file: nothing recorded against it
        assert idx.count == 12
