"""Taking frames from video files with PyAV (the ``video`` extra), at reduced size.

A video gives one picture every ``interval`` seconds, and one more wherever the picture
changes a lot in between (a scene change), at most ``max_frames`` of them. Frames are decoded
in order; a probe a few times per interval is scaled to a tiny colour square to measure the
change (the mean absolute difference against the last frame taken), and only frames that are
taken are converted to RGB, at a size whose shorter side is the model's input. A video longer
than ``interval * max_frames`` gets a wider interval, and from 20 seconds apart only its
key frames are decoded, so that the work stays bounded whatever the length; a time limit
bounds it as well.

Every failure is an :class:`~clipsearch.errors.ImageReadError` with a specific reason: the file
is not a video, has no video stream, is truncated, or no frame of it decodes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from clipsearch.errors import ClipsearchError, ImageReadError, QueryError

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi"})
INSTALL_HINT = "pip install 'clipsearch[video]'"
DEFAULT_INTERVAL = 5.0  # seconds between frames taken
DEFAULT_MAX_FRAMES = 120  # frames taken from one video at most
MAX_SECONDS = 600.0  # wall-clock seconds spent decoding one video at most
SCENE_CHANGE = 0.1  # mean absolute difference (0..1) of the probes that counts as a new scene
PROBES_PER_INTERVAL = 4
KEYFRAMES_ONLY_AFTER = 20.0  # an interval this wide (seconds) decodes key frames only
_PROBE_SIDE = 16


def is_video(path: str) -> bool:
    """Whether the file's extension is a video's (see :data:`VIDEO_EXTENSIONS`)."""
    return os.path.splitext(path)[1].lower() in VIDEO_EXTENSIONS


def video_support() -> bool:
    """Whether PyAV is installed, so that videos can be indexed (without importing it)."""
    if "av" in sys.modules:  # imported already, or its import blocked (None)
        return sys.modules["av"] is not None
    return importlib.util.find_spec("av") is not None


@dataclass(frozen=True)
class VideoOptions:
    """Which frames to take from a video.

    Args:
        interval: seconds between frames taken (a scene change adds one in between).
        max_frames: frames taken from one video at most; a longer video gets a wider interval.
        max_seconds: wall-clock seconds spent decoding one video at most; the frames taken
            until then are kept.
    """

    interval: float = DEFAULT_INTERVAL
    max_frames: int = DEFAULT_MAX_FRAMES
    max_seconds: float = MAX_SECONDS

    def __post_init__(self) -> None:
        if not self.interval > 0:
            raise ClipsearchError(f"video interval must be above 0 seconds (got {self.interval})")
        if self.max_frames < 1:
            raise ClipsearchError(f"video max frames must be at least 1 (got {self.max_frames})")


@dataclass(frozen=True)
class VideoFrames:
    """The frames taken from one video: (seconds, RGB picture) pairs, in order."""

    width: int
    height: int
    duration: float | None
    frames: list[tuple[float, Image.Image]]


def hash_file(path: str, chunk: int = 1 << 20) -> tuple[str, os.stat_result]:
    """The SHA-256 of a file read in chunks (a video is never held whole), and its stat.

    Raises:
        ImageReadError: the file cannot be read.
    """
    digest = hashlib.sha256()
    try:
        with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_size == 0:
                raise ImageReadError(path, "empty file (0 bytes)")
            while block := f.read(chunk):
                digest.update(block)
    except OSError as e:
        raise ImageReadError(path, f"cannot read file: {e.strerror or e}") from e
    return digest.hexdigest(), st


def read_video_frames(path: str, side: int, options: VideoOptions = VideoOptions()) -> VideoFrames:
    """Decode the frames to index from a video file.

    Args:
        path: the video file.
        side: the shorter side of the pictures returned (the model's input size); frames are
            never converted to RGB at their full size.
        options: the interval, the bound on frames and the time limit.

    Raises:
        ImageReadError: with a specific reason (no PyAV, not a video, no video stream,
            truncated, no frame decodes).
    """
    av = _import_av(path)
    container = _open(av, path)
    with container:
        if not container.streams.video:
            raise ImageReadError(path, "no video stream (audio only, or not a video)")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = _duration(container, stream)
        interval = options.interval
        if duration is not None and duration / interval > options.max_frames:
            interval = duration / options.max_frames
        if interval >= KEYFRAMES_ONLY_AFTER:
            stream.codec_context.skip_frame = "NONKEY"
        width = stream.codec_context.width or 0
        height = stream.codec_context.height or 0
        picker = FramePicker(interval, options.max_frames)
        taken: list[tuple[float, Image.Image]] = []
        errors = 0
        last_error = ""
        deadline = time.monotonic() + options.max_seconds
        for item in _decoded(av, container, stream):
            if isinstance(item, Exception):
                errors += 1
                last_error = _ff_reason(item)
                if errors > 50 and not taken:
                    break
                continue
            t = _seconds(item, stream)
            width, height = width or item.width, height or item.height
            if picker.wants(t, lambda f=item: _probe(f)):
                taken.append((t, _picture(item, side)))
            if picker.done or time.monotonic() > deadline:
                break
    if not taken:
        why = f" ({errors} decoding errors, the last: {last_error})" if errors else ""
        raise ImageReadError(path, f"no frame of the video could be decoded{why}")
    first = taken[0][1]
    if (first.width > first.height) != (width > height):  # stored sideways, shown upright
        width, height = height, width
    return VideoFrames(width, height, duration, taken)


def read_video_frame(path: str, at: float, side: int) -> Image.Image:
    """The frame shown at ``at`` seconds (the last one before it), at reduced size.

    Raises:
        ImageReadError: the video cannot be read, or has no frame.
    """
    av = _import_av(path)
    container = _open(av, path)
    with container:
        if not container.streams.video:
            raise ImageReadError(path, "no video stream (audio only, or not a video)")
        stream = container.streams.video[0]
        if at > 0 and stream.time_base is not None:
            try:
                container.seek(int(at / stream.time_base), stream=stream, backward=True)
            except av.error.FFmpegError:
                container.seek(0)
        best = None
        for item in _decoded(av, container, stream):
            if isinstance(item, Exception):
                continue
            if best is not None and _seconds(item, stream) > at + 1e-6:
                break
            best = item
    if best is None:
        raise ImageReadError(path, "no frame of the video could be decoded")
    return _picture(best, side)


def format_time(seconds: float) -> str:
    """``83.4`` as ``1:23``, ``3725`` as ``1:02:05``: a time in a video, as players show it."""
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def parse_time(text: str) -> float:
    """Seconds from ``83``, ``83.5``, ``1:23`` or ``1:02:05``.

    Raises:
        QueryError: not a time.
    """
    parts = text.strip().split(":")
    try:
        if len(parts) > 3 or not all(parts):
            raise ValueError(text)
        values = [float(p) for p in parts]
    except ValueError:
        raise QueryError(f"time {text!r} is not SECONDS, M:SS or H:MM:SS") from None
    seconds = 0.0
    for value in values:
        seconds = seconds * 60 + value
    if not (seconds >= 0 and seconds < float("inf")):
        raise QueryError(f"time {text!r} must be 0 or more seconds")
    return seconds


class FramePicker:
    """Which decoded frames to take: the first, then one per interval, and one more where the
    probe differs from the last taken one by :data:`SCENE_CHANGE` or more."""

    def __init__(self, interval: float, max_frames: int):
        self.interval = interval
        self.max_frames = max_frames
        self.step = interval / PROBES_PER_INTERVAL
        self.count = 0
        self._last_time: float | None = None
        self._last_probe: np.ndarray | None = None
        self._next_probe = 0.0

    @property
    def done(self) -> bool:
        return self.count >= self.max_frames

    def wants(self, t: float, probe: Any) -> bool:
        """Whether to take the frame shown at ``t``; ``probe()`` gives its tiny RGB
        array and is called only at probe times."""
        if self.done or t < self._next_probe:
            return False
        self._next_probe = t + self.step
        small = probe()
        due = self._last_time is None or t >= self._last_time + self.interval - 1e-6
        if not due and self._last_probe is not None:
            due = scene_change(self._last_probe, small) >= SCENE_CHANGE
        if due:
            self.count += 1
            self._last_time, self._last_probe = t, small
        return due


def scene_change(a: np.ndarray, b: np.ndarray) -> float:
    """How much two tiny probes differ: their mean absolute difference, 0 to 1."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean()) / 255.0


def _decoded(av: Any, container: Any, stream: Any) -> Iterator[Any]:
    """Decoded frames, with each packet that fails to decode given as its exception."""
    try:
        packets = container.demux(stream)
        for packet in packets:
            try:
                yield from packet.decode()
            except (av.error.FFmpegError, ValueError) as e:
                yield e
    except (av.error.FFmpegError, ValueError) as e:  # the demuxer gave up (truncated data)
        yield e


def _probe(frame: Any) -> np.ndarray:
    small = frame.reformat(width=_PROBE_SIDE, height=_PROBE_SIDE, format="rgb24")
    return small.to_ndarray().astype(np.uint8)


def _picture(frame: Any, side: int) -> Image.Image:
    """The frame as RGB with its shorter side ``side`` (never enlarged), upright: a phone's
    portrait video is stored sideways with a rotation to apply (FFmpeg's display matrix)."""
    w, h = frame.width, frame.height
    scale = min(1.0, side / max(1, min(w, h)))
    size = max(1, round(w * scale)), max(1, round(h * scale))
    img = frame.reformat(width=size[0], height=size[1], format="rgb24").to_image()
    turn = _UPRIGHT.get(round(getattr(frame, "rotation", 0) or 0) % 360)
    return img if turn is None else img.transpose(turn)


# The display matrix's counterclockwise rotation of the stored frame -> what makes it upright
# (as ffplay shows it: the rotation applied, counterclockwise).
_UPRIGHT = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


def _seconds(frame: Any, stream: Any) -> float:
    if frame.pts is None or stream.time_base is None:
        return float(frame.time or 0.0)
    start = stream.start_time or 0
    return max(0.0, float((frame.pts - start) * stream.time_base))


def _duration(container: Any, stream: Any) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return None


def _open(av: Any, path: str) -> Any:
    try:
        return av.open(path, metadata_errors="ignore")
    except av.error.FFmpegError as e:
        kind = _container_magic(path)
        if kind:
            raise ImageReadError(path, f"truncated or corrupt {kind} file ({_ff_reason(e)})") from e
        raise ImageReadError(path, f"not a readable video ({_ff_reason(e)})") from e


def _container_magic(path: str) -> str | None:
    """The container a file's first bytes announce, for files FFmpeg could not open."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if head[4:8] == b"ftyp":
        return "MP4/QuickTime"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "Matroska/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    return None


def _import_av(path: str) -> Any:
    try:
        import av
    except ImportError as e:
        raise ImageReadError(path, f"videos need PyAV: {INSTALL_HINT}") from e
    return av


def _ff_reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e)
    text = " ".join(str(text).split())
    if "moov atom not found" in text or "End of file" in text:
        return f"truncated or incomplete file: {text}"
    return text
