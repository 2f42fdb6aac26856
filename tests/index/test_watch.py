"""FolderWatcher with real watchdog events on a temp folder and the tiny model: files that
appear, change, move, vanish, arrive in halves, or cannot be decoded."""

from __future__ import annotations

import io
import os
import shutil
import time

import pytest
from PIL import Image

from clipsearch import ImageIndex
from clipsearch.errors import ClipsearchError
from clipsearch.index.watch import FolderWatcher
from tests.helpers import draw_image

pytest.importorskip("watchdog")

SETTLE = 0.6  # above watchdog's wait for the second half of a move (half a second)
TIMEOUT = 15.0


def wait_for(condition, timeout: float = TIMEOUT):
    """Poll ``condition`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not reached within {timeout}s: {condition.__doc__ or condition}")


@pytest.fixture
def watched(tmp_path, tiny_model, photo_dir):
    """An index of photo_dir with a running watcher; yields (index, watcher, reports)."""
    index = ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model, device="cpu")
    reports = []
    watcher = FolderWatcher(index, [photo_dir], settle=SETTLE, on_batch=reports.append)
    watcher.start()
    wait_for(lambda: reports)  # the catch-up pass
    try:
        yield index, watcher, reports
    finally:
        watcher.stop()
        index.close()


def found(index, path):
    return index.catalog.find_path(str(path))


def test_catch_up_indexes_what_is_there(watched):
    index, _, reports = watched
    assert (reports[0].added, reports[0].failed) == (12, 0)
    assert index.count == 12


def test_a_new_file_becomes_searchable(watched, photo_dir):
    index, _, reports = watched
    new = draw_image(photo_dir / "new" / "purple_circle.png", "purple", "circle")
    rec = wait_for(lambda: found(index, new))
    assert rec.id in {h.id for h in index.search("a purple circle", k=20)}
    assert index.count == 13
    wait_for(lambda: sum(r.added for r in reports[1:]) == 1)


def test_a_modified_file_is_reencoded(watched, photo_dir):
    index, _, reports = watched
    target = next(photo_dir.rglob("green_circle.png"))
    before = found(index, target)
    old_vec = index.catalog.vector(before.id)
    draw_image(target, "orange", "triangle")
    after = wait_for(lambda: (r := found(index, target)) and r.id != before.id and r)
    assert not (index.catalog.vector(after.id) == old_vec).all()
    assert index.count == 12


def test_a_moved_file_keeps_its_record_and_is_not_reencoded(watched, photo_dir):
    index, _, reports = watched
    src = next(photo_dir.rglob("blue_square.png"))
    before = found(index, src)
    dest = photo_dir / "elsewhere" / "renamed.png"
    dest.parent.mkdir()
    os.rename(src, dest)
    moved = wait_for(lambda: found(index, dest))
    assert moved.id == before.id
    assert found(index, src) is None
    wait_for(lambda: sum(r.moved for r in reports[1:]) == 1)  # reported after the commit
    assert sum(r.encoded for r in reports[1:]) == 0


def test_a_deleted_file_and_folder_are_removed(watched, photo_dir):
    index, _, _ = watched
    victim = next(photo_dir.rglob("red_circle.png"))
    victim.unlink()
    wait_for(lambda: found(index, victim) is None)
    assert index.count == 11
    shutil.rmtree(photo_dir / "shapes")
    wait_for(lambda: index.count == 5)
    assert all(not r.path.startswith(str(photo_dir / "shapes")) for r in index.search("x", k=20))


def test_a_file_written_in_halves_is_indexed_once_complete(tmp_path, tiny_model, photo_dir):
    index = ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model, device="cpu")
    reports = []
    watcher = FolderWatcher(index, [photo_dir], settle=1.0, on_batch=reports.append)
    watcher.start()
    try:
        wait_for(lambda: reports)
        buf = io.BytesIO()
        Image.new("RGB", (300, 300), (10, 200, 30)).save(buf, format="PNG")
        data = buf.getvalue()
        target = photo_dir / "slow.png"
        with open(target, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(0.4)  # a pause shorter than the settle time: the watcher waits on
            f.write(data[len(data) // 2 :])
        rec = wait_for(lambda: found(index, target))
        assert rec.size == len(data)
        assert index.errors() == []
        assert sum(r.failed for r in reports) == 0
    finally:
        watcher.stop()
        index.close()


def test_a_broken_image_is_listed_then_retried_when_it_changes(watched, photo_dir):
    index, _, _ = watched
    broken = photo_dir / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    wait_for(lambda: [e for e in index.errors() if e.path == str(broken)])
    assert found(index, broken) is None
    draw_image(broken, "yellow", "square")
    wait_for(lambda: found(index, broken))
    assert [e for e in index.errors() if e.path == str(broken)] == []


def test_other_files_are_ignored(watched, photo_dir):
    index, watcher, reports = watched
    (photo_dir / "notes.txt").write_text("hello")
    watcher.notice(str(photo_dir / "notes.txt"))
    assert watcher.settled(time.monotonic() + 10) == []


def test_folders_to_index_are_the_nearest_existing_ones(watched, photo_dir):
    _, watcher, _ = watched
    nested = photo_dir / "more" / "nested"
    paths = [str(nested / "a.png"), str(nested / "b.png"), str(photo_dir / "gone" / "x" / "c.png")]
    assert watcher.folders(paths) == [str(photo_dir)]
    assert watcher.folders(paths[:2]) == [str(nested)]


def test_a_missing_root_is_refused(tmp_path, tiny_model):
    index = ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model, device="cpu")
    with index, pytest.raises(ClipsearchError, match="no such folder"):
        FolderWatcher(index, [tmp_path / "nope"])


def test_a_batch_waits_until_every_pending_path_is_still(watched, photo_dir):
    _, watcher, _ = watched
    watcher.stop()  # drive it by hand: no background thread takes the paths
    a = draw_image(photo_dir / "a.png", "red", "circle")
    b = draw_image(photo_dir / "b.png", "blue", "circle")
    start = time.monotonic()
    watcher.notice(str(a))
    watcher.notice(str(b))
    watcher._pending[str(b)].changed = start + SETTLE  # b changed again later than a
    assert watcher.settled(start + SETTLE + 0.01) == []  # a is still, b is not yet
    assert sorted(watcher.settled(start + 2 * SETTLE + 0.01)) == sorted([str(a), str(b)])


def test_a_locked_index_is_caught_up_once_the_other_writer_is_done(tmp_path, tiny_model, photo_dir):
    index = ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model, device="cpu")
    other = ImageIndex.open(tmp_path / "idx", device="cpu")
    watcher = FolderWatcher(index, [photo_dir], settle=SETTLE)
    try:
        with other.writing():  # another writer holds the lock while the watch starts
            watcher.start()
            new = draw_image(photo_dir / "meanwhile.png", "orange", "circle")
            time.sleep(2 * SETTLE)  # let the watcher meet the lock (nothing waits on this)
            assert index.count == 0
        wait_for(lambda: found(index, new))
        wait_for(lambda: index.count == 13)
    finally:
        watcher.stop()
        other.close()
        index.close()
