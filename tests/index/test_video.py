"""Videos in an index: frames as vectors of one file, found at the right time, kept
incrementally, resumed after an interruption, skipped without PyAV, and bad videos listed."""

from __future__ import annotations

import json
import shutil
import sqlite3
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import clipsearch.index.pipeline as pipeline_mod
from clipsearch import ImageIndex
from clipsearch.cli.main import main
from clipsearch.store.catalog import CATALOG_FILE
from tests.helpers import draw_image, make_video, shape_image
from tests.media.test_video import BAD_VIDEOS

pytest.importorskip("av")

INTERVAL = 2.0
SEGMENT = 4.0  # seconds per coloured shape; the second segment is green squares, 4 to 8 s


@pytest.fixture
def folder(tmp_path):
    photos = tmp_path / "photos"
    make_video(photos / "clips" / "holiday.mp4", seconds=SEGMENT)
    draw_image(photos / "yellow.png", "yellow", "circle")
    draw_image(photos / "purple.png", "purple", "triangle")
    return photos


@pytest.fixture
def index(tmp_path, tiny_model):
    with ImageIndex.open_or_create(tmp_path / "idx", model=tiny_model, device="cpu") as ix:
        yield ix


def add(index, folder, **kw):
    return index.add([folder], video_interval=INTERVAL, **kw)


def frame_rows(index) -> list[tuple[str, float | None, int | None]]:
    con = sqlite3.connect(index.path / CATALOG_FILE)
    try:
        return con.execute(
            "SELECT rel, frame_time, video_id FROM images ORDER BY rel, frame_time"
        ).fetchall()
    finally:
        con.close()


def assert_consistent(index) -> None:
    """FAISS holds exactly the catalog's ids: no frame lost, none left over."""
    assert sorted(index.vectors.ids()) == sorted(index.catalog.ids())


def green_query(tmp_path):
    path = tmp_path / "query" / "green.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    shape_image("green", "square").save(path)
    return path


def test_a_still_of_the_second_segment_finds_the_video_at_its_time(index, folder, tmp_path):
    report = add(index, folder)
    assert (report.added, report.failed) == (3, 0)
    assert len(index) == 3  # files; the video's frames are vectors of one file
    assert index.catalog.count() == 2 + 6
    assert_consistent(index)
    hits = index.similar(green_query(tmp_path), k=3)
    assert [h.path.endswith("holiday.mp4") for h in hits] == [True, False, False]
    assert SEGMENT - INTERVAL <= hits[0].frame_time <= 2 * SEGMENT + INTERVAL
    assert SEGMENT <= hits[0].frame_time < 2 * SEGMENT
    assert {h.frame_time for h in hits[1:]} == {None}


def test_each_video_comes_once_and_k_files_come_back(index, folder, tmp_path):
    make_video(folder / "second.mp4", seconds=SEGMENT)
    add(index, folder)
    hits = index.search("a green square", k=4)
    paths = [h.path for h in hits]
    assert len(paths) == len(set(paths)) == 4


def test_similar_from_a_frame_leaves_the_video_out(index, folder, tmp_path):
    shutil.copy(folder / "clips" / "holiday.mp4", folder / "copy.mp4")
    add(index, folder)
    video = folder / "clips" / "holiday.mp4"
    hits = index.similar(video, at=5.0, k=2)
    assert hits[0].path == str(folder / "copy.mp4")
    assert SEGMENT <= hits[0].frame_time < 2 * SEGMENT
    assert str(video) not in [h.path for h in hits]
    by_id = index.similar(hits[0].id, k=2)
    assert str(folder / "copy.mp4") not in [h.path for h in by_id]


def test_cli_prints_the_time_and_json_carries_frame_time(index, folder, tmp_path):
    add(index, folder)
    index.close()
    runner = CliRunner()
    query = green_query(tmp_path)
    out = runner.invoke(main, ["--index", str(index.path), "similar", str(query), "-k", "1"])
    assert out.exit_code == 0, out.output
    assert "holiday.mp4 @ 0:0" in out.output
    out = runner.invoke(main, ["--index", str(index.path), "similar", str(query), "--json"])
    rows = json.loads(out.output)
    assert SEGMENT <= rows[0]["frame_time"] < 2 * SEGMENT
    assert [r["frame_time"] for r in rows[1:]] == [None, None]
    video = folder / "clips" / "holiday.mp4"
    out = runner.invoke(
        main, ["--index", str(index.path), "similar", str(video), "--at", "0:05", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert str(video) not in [r["path"] for r in json.loads(out.output)]
    out = runner.invoke(main, ["--index", str(index.path), "similar", str(video), "--at", "x"])
    assert out.exit_code == 1 and "clipsearch: error: time 'x'" in out.output


def test_a_changed_video_replaces_its_frames(index, folder):
    add(index, folder)
    video = folder / "clips" / "holiday.mp4"
    make_video(video, segments=[("blue", "triangle")], seconds=3.0)
    report = add(index, folder)
    assert (report.updated, report.added, report.removed) == (1, 0, 0)
    assert [t for rel, t, _ in frame_rows(index) if rel.endswith("mp4")] == [0.0, 2.0]
    assert_consistent(index)


def test_a_moved_video_keeps_its_frames(index, folder):
    add(index, folder)
    before = [(t, v) for rel, t, v in frame_rows(index) if rel.endswith("mp4")]
    (folder / "clips" / "holiday.mp4").rename(folder / "moved.mp4")
    report = add(index, folder)
    assert (report.moved, report.added, report.removed) == (1, 0, 0)
    after = [(rel, t, v) for rel, t, v in frame_rows(index) if rel.endswith("mp4")]
    assert {rel for rel, _, _ in after} == {"moved.mp4"}
    assert [(t, v) for _, t, v in after] == before
    assert_consistent(index)


def test_a_deleted_video_takes_its_frames_along(index, folder):
    add(index, folder)
    (folder / "clips" / "holiday.mp4").unlink()
    report = add(index, folder)
    assert report.removed == 1
    assert index.catalog.count() == 2
    assert_consistent(index)


def test_a_run_interrupted_inside_a_video_resumes_without_loss_or_duplicates(
    index, folder, monkeypatch
):
    make_video(folder / "zz_last.mp4", seconds=SEGMENT)
    real = pipeline_mod.read_video_frames
    calls = []

    def interrupted(path, *args, **kw):
        calls.append(path)
        if path.endswith("zz_last.mp4"):
            raise KeyboardInterrupt  # Ctrl-C while decoding the second video
        return real(path, *args, **kw)

    monkeypatch.setattr(pipeline_mod, "read_video_frames", interrupted)
    with pytest.raises(KeyboardInterrupt):
        add(index, folder, batch_size=1)
    monkeypatch.setattr(pipeline_mod, "read_video_frames", real)
    report = add(index, folder)
    assert report.added + report.unchanged == 4
    assert report.added >= 1
    rows = frame_rows(index)
    assert len(rows) == len(set(rows)) == 2 + 6 + 6
    assert sum(1 for _, _, v in rows if v is None) == 4  # one file row per file
    assert_consistent(index)


def test_without_pyav_videos_are_skipped_with_one_line(index, folder, monkeypatch):
    add(index, folder)  # the video was indexed while PyAV was there
    index.close()
    monkeypatch.setitem(sys.modules, "av", None)  # now `import av` fails
    make_video_free = folder / "new.mov"
    shutil.copy(folder / "clips" / "holiday.mp4", make_video_free)
    out = CliRunner().invoke(main, ["--index", str(index.path), "index", str(folder)])
    assert out.exit_code == 0, out.output
    assert "skipped 2 videos" in out.output
    assert "pip install 'clipsearch[video]'" in out.output
    assert "failed 0" in out.output and "removed 0" in out.output
    with ImageIndex.open(index.path) as again:
        assert again.errors() == []
        assert len(again) == 3  # the video indexed before stays


def test_bad_videos_are_listed_and_lose_nothing(index, folder, tmp_path):
    bad = folder / "bad"
    bad.mkdir()
    for case, (make, _) in BAD_VIDEOS.items():
        name = case.replace(" ", "_") + (".mkv" if case == "frames that never decode" else ".mp4")
        make(bad / name)
    report = add(index, folder)
    assert (report.added, report.failed) == (3, 4)
    reasons = {e.path.rsplit("/", 1)[1]: e.reason for e in index.errors()}
    for case, (_, says) in BAD_VIDEOS.items():
        name = case.replace(" ", "_")
        assert any(n.startswith(name) and says in r for n, r in reasons.items()), (case, reasons)
    assert_consistent(index)


def test_a_huge_video_is_bounded(index, tmp_path):
    long = tmp_path / "long"
    make_video(long / "long.mp4", segments=[("red", "circle")] * 10, seconds=6.0, fps=2)
    index.add([long], video_interval=0.5, video_max_frames=5)
    times = [t for _, t, _ in frame_rows(index)]
    assert len(times) == 5
    assert max(times) >= 30  # spread over the whole minute, not its first seconds
    assert np.all(np.diff(times) > 0)


def test_duplicates_leave_the_frames_of_a_video_alone(index, folder):
    shutil.copy(folder / "yellow.png", folder / "yellow copy.png")
    add(index, folder)
    video = index.catalog.find_path(str(folder / "clips" / "holiday.mp4"))
    (first, _), (second, _) = index.catalog.frames(video.id)[:2]  # both red circles
    alike = float(index.catalog.vector(first) @ index.catalog.vector(second))
    assert alike >= 0.99  # near-duplicates, were frames considered
    groups = index.duplicates(threshold=0.99)
    members = [m.path for g in groups for m in g.members]
    assert str(folder / "yellow copy.png") in members
    assert not [p for p in members if p.endswith(".mp4")]


def test_removing_a_video_by_id_removes_its_frames(index, folder):
    add(index, folder)
    video = index.catalog.find_path(str(folder / "clips" / "holiday.mp4"))
    assert index.remove([video.id]) == 1
    assert index.catalog.count() == 2
    assert_consistent(index)


def test_watch_takes_the_frames_it_is_told(index, folder, tmp_path, tiny_model):
    pytest.importorskip("watchdog")
    from clipsearch.index.watch import FolderWatcher
    from clipsearch.media.video import VideoOptions

    FolderWatcher(index, [folder], video=VideoOptions(interval=INTERVAL)).catch_up()
    with ImageIndex.open_or_create(tmp_path / "other", model=tiny_model, device="cpu") as other:
        add(other, folder)
        assert frame_rows(index) == frame_rows(other)
    video_frames = [r for r in frame_rows(index) if r[1] is not None]
    assert len(video_frames) >= 6  # every 2 s of 12 s; the default 5 s gives 3
