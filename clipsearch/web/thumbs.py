"""Thumbnails of indexed images, made on first request and cached in the index folder.

A thumbnail is named after the content hash the catalog stores for its image (and, for a
video's frame, the frame's time), so files with the same bytes share one, a moved file keeps
its own, and a changed file (re-indexed: new hash) gets a new one. Files are written under a
temporary name and renamed into place, so a reader never sees half a thumbnail even when two
requests make the same one at once.

The cache has a size cap. A thumbnail's modification time is its last use (set when it is
served, at most once a minute, as atime is often not kept); when the cache grows past the cap,
the least recently used thumbnails are deleted until it is back under 90% of it. One process
evicts at a time (an ``flock`` on ``thumbs/.lock``; another that finds it taken skips its turn),
and every step tolerates a file that another process has just deleted or replaced: a reader
that loses its thumbnail to eviction makes it again. Between two scans a process counts what
it writes itself, and scans again at least every tenth of the cap it writes, so the cache
stays within the cap plus a tenth of it per writing process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

from PIL import Image, features

from clipsearch.media.files import load_image
from clipsearch.media.video import read_video_frame
from clipsearch.store.catalog import StoredImage
from clipsearch.store.fileio import atomic_write

THUMB_SIZE = 256
THUMBS_DIR = "thumbs"
# Bump when the way thumbnails are made changes, so browsers and the cache drop old ones.
THUMB_VERSION = 1
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
LOCK_FILE = ".lock"
LOW_WATER = 0.9  # eviction brings the cache down to this share of the cap
TOUCH_AFTER = 60.0  # seconds: a thumbnail served again later than this is marked as used
STALE_TEMP = 3600.0  # seconds: a temp file this old was left by a writer that died


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    size: int
    used: float  # mtime


class ThumbnailCache:
    """Thumbnails of at most ``size`` pixels a side in ``folder`` (WebP, or JPEG without it),
    at most about ``max_bytes`` of them (None: no cap)."""

    def __init__(
        self, folder: Path, size: int = THUMB_SIZE, max_bytes: int | None = DEFAULT_CACHE_BYTES
    ):
        self.folder = folder
        self.size = size
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes at the last scan plus those written since
        self._written = 0  # bytes written since the last scan

    @property
    def webp(self) -> bool:
        return bool(features.check("webp"))

    @property
    def media_type(self) -> str:
        return "image/webp" if self.webp else "image/jpeg"

    def etag(self, image: StoredImage) -> str:
        """A strong ETag: the thumbnail's bytes follow from the image content and these
        settings alone."""
        ext = "webp" if self.webp else "jpg"
        return f'"{image.sha256[:32]}{_at(image)}-{self.size}-v{THUMB_VERSION}.{ext}"'

    def file(self, image: StoredImage) -> Path:
        ext = "webp" if self.webp else "jpg"
        sha = image.sha256
        return self.folder / sha[:2] / f"{sha}{_at(image)}-{self.size}-v{THUMB_VERSION}.{ext}"

    def get(self, image: StoredImage) -> bytes:
        """The thumbnail's bytes, from the cache or made now (and cached when the folder is
        writable).

        Raises:
            ImageReadError: the image file is gone or cannot be decoded any more.
        """
        path = self.file(image)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            pass
        else:
            _touch(path)
            return data
        data = self.make(image.path, image.frame_time)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, data, durable=False)  # a lost thumbnail is made again
        except OSError:
            return data  # a read-only index still gets thumbnails, just not cached ones
        self._count(len(data))
        return data

    def make(self, path: str, frame_time: float | None = None) -> bytes:
        """Encode an upright (EXIF-oriented) RGB thumbnail of an image file, or of a video's
        frame at ``frame_time`` seconds."""
        if frame_time is not None:
            img = read_video_frame(path, frame_time, self.size)
        else:
            img = load_image(path, draft_size=self.size)
        img.thumbnail((self.size, self.size), Image.Resampling.LANCZOS)
        out = BytesIO()
        if self.webp:
            img.save(out, format="WEBP", quality=80, method=4)
        else:
            img.save(out, format="JPEG", quality=85, optimize=True)
        return out.getvalue()

    # --- the size cap -----------------------------------------------------------------------

    def _count(self, written: int) -> None:
        if self.max_bytes is None:
            return
        with self._lock:
            self._written += written
            if self._total is not None:
                self._total += written
            due = (
                self._total is None
                or self._total > self.max_bytes
                or self._written > self.max_bytes // 10
            )
        if due:
            self.evict()

    def entries(self) -> list[CacheEntry]:
        """The cached thumbnails now (temp files of writers that died long ago are deleted)."""
        out = []
        now = time.time()
        for path in self.folder.glob("*/*"):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # evicted or replaced while we looked
            if path.name.endswith(".tmp"):
                if now - st.st_mtime > STALE_TEMP:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                continue
            out.append(CacheEntry(path, st.st_size, st.st_mtime))
        return out

    def evict(self) -> int | None:
        """Bring the cache under its cap, least recently used first, unless another process
        is at it; returns the bytes left, or None when this call skipped its turn."""
        if self.max_bytes is None:
            return None
        try:
            lock = os.open(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError:
            return None
        try:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return None  # another process (or thread) is evicting
            entries = self.entries()
            total = sum(e.size for e in entries)
            if total > self.max_bytes:
                goal = int(self.max_bytes * LOW_WATER)
                for entry in sorted(entries, key=lambda e: e.used):
                    if total <= goal:
                        break
                    with contextlib.suppress(FileNotFoundError):
                        entry.path.unlink()
                    total -= entry.size
            with self._lock:
                self._total, self._written = total, 0
            return total
        finally:
            os.close(lock)  # releases the flock


def _touch(path: Path) -> None:
    """Mark a thumbnail as used now, at most once every TOUCH_AFTER seconds."""
    try:
        now = time.time()
        if now - path.stat().st_mtime > TOUCH_AFTER:
            os.utime(path, (now, now))
    except OSError:
        pass  # evicted meanwhile, or a read-only folder


def _at(image: StoredImage) -> str:
    """The part of a thumbnail's name that tells a video's frames apart (milliseconds)."""
    return "" if image.frame_time is None else f"-t{round(image.frame_time * 1000)}"
