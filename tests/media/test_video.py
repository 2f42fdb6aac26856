"""Taking frames from generated videos: the interval, scene changes, the bound, bad files."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.errors import ImageReadError, QueryError
from clipsearch.media.video import (
    FramePicker,
    VideoOptions,
    format_time,
    parse_time,
    read_video_frame,
    read_video_frames,
)
from tests.helpers import make_video, shape_image

pytest.importorskip("av")


def test_frames_every_interval_at_reduced_size(tmp_path):
    video = make_video(tmp_path / "a.mp4", size=96)
    taken = read_video_frames(str(video), 32, VideoOptions(interval=2.0))
    assert (taken.width, taken.height) == (96, 96)
    assert taken.duration == pytest.approx(12.0, abs=0.5)
    assert [t for t, _ in taken.frames] == pytest.approx([0, 2, 4, 6, 8, 10])
    assert {img.size for _, img in taken.frames} == {(32, 32)}


def test_a_scene_change_adds_a_frame_between_interval_points(tmp_path):
    video = make_video(tmp_path / "a.mp4")
    times = [t for t, _ in read_video_frames(str(video), 32, VideoOptions(interval=5.0)).frames]
    # 0 and 5 by the interval; the change to the third segment (at 8 s) is seen at its probe.
    assert times[:2] == pytest.approx([0, 5])
    assert any(8 <= t < 10 for t in times), times
    assert len(times) == 3


def test_the_frames_show_their_segment(tmp_path):
    video = make_video(tmp_path / "a.mp4")
    for t, img in read_video_frames(str(video), 64, VideoOptions(interval=4.0)).frames:
        want = np.asarray(
            shape_image(
                *[("red", "circle"), ("green", "square"), ("blue", "triangle")][int(t // 4)]
            )
        )
        got = np.asarray(img)
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 12, t


def test_the_number_of_frames_is_bounded(tmp_path):
    video = make_video(tmp_path / "a.mp4", seconds=8.0)  # 24 s
    taken = read_video_frames(str(video), 32, VideoOptions(interval=0.5, max_frames=4))
    assert len(taken.frames) == 4
    # The interval widens to cover the whole video rather than its start only.
    assert taken.frames[-1][0] >= 12


def test_the_time_limit_keeps_what_was_taken(tmp_path):
    video = make_video(tmp_path / "a.mp4")
    taken = read_video_frames(str(video), 32, VideoOptions(interval=1.0, max_seconds=0.0))
    assert len(taken.frames) == 1


def test_one_frame_at_a_time(tmp_path):
    video = make_video(tmp_path / "a.mp4")
    img = read_video_frame(str(video), 5.0, 64)
    want = np.asarray(shape_image("green", "square"))
    assert np.abs(np.asarray(img).astype(int) - want.astype(int)).mean() < 12


def test_the_picker_takes_scene_changes_only_when_large():
    picker = FramePicker(interval=10.0, max_frames=10)
    same = np.zeros((4, 4, 3), dtype=np.uint8)
    other = np.full((4, 4, 3), 200, dtype=np.uint8)
    assert picker.wants(0.0, lambda: same)
    assert not picker.wants(3.0, lambda: same)
    assert picker.wants(6.0, lambda: other)
    assert picker.wants(16.0, lambda: other)  # the interval, counted from the change


def test_times_read_and_print():
    assert format_time(83.4) == "1:23"
    assert format_time(3725) == "1:02:05"
    assert parse_time("1:23") == 83
    assert parse_time("83.5") == 83.5
    assert parse_time("1:02:05") == 3725
    for bad in ["", "a", "1::2", "-3", "1:2:3:4"]:
        with pytest.raises(QueryError):
            parse_time(bad)


def _audio_only(path):
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 8000
        for _ in range(8):
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def _undecodable(path):
    """A container whose video packets hold random bytes: no frame decodes."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w", format="matroska") as out:
        stream = out.add_stream("mpeg4", rate=4)
        stream.width = stream.height = 64
        for i in range(12):
            packet = av.Packet(rng.integers(0, 256, 300, dtype=np.uint8).tobytes())
            packet.stream = stream
            packet.pts = packet.dts = i
            out.mux(packet)
    return path


def _truncated(path):
    make_video(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    return path


BAD_VIDEOS = {
    "truncated": (_truncated, "truncated"),
    "audio only": (_audio_only, "no video stream"),
    "random bytes": (_random_bytes, "not a readable video"),
    "frames that never decode": (_undecodable, "no frame of the video could be decoded"),
}


@pytest.mark.parametrize("case", list(BAD_VIDEOS))
def test_bad_videos_raise_a_reason(tmp_path, case):
    make, says = BAD_VIDEOS[case]
    name = "bad.mkv" if case == "frames that never decode" else "bad.mp4"
    video = make(tmp_path / name)
    with pytest.raises(ImageReadError) as e:
        read_video_frames(str(video), 32)
    assert says in e.value.reason


def test_a_long_video_decodes_key_frames_only(tmp_path, monkeypatch):
    import clipsearch.media.video as video_mod

    video = make_video(tmp_path / "long.mp4", segments=[("red", "circle")] * 10, seconds=6, fps=2)
    decoded = []
    real = video_mod._decoded

    def counting(*args):
        for item in real(*args):
            decoded.append(item)
            yield item

    monkeypatch.setattr(video_mod, "_decoded", counting)
    taken = read_video_frames(str(video), 32, VideoOptions(interval=1.0, max_frames=2))
    assert len(taken.frames) == 2  # every 30 s: key frames are enough
    assert 2 <= len(decoded) < 20  # of the 60 frames up to 30 s, the key frames only
