"""Keeping an index current while its folders change: :class:`FolderWatcher`.

watchdog reports file events; each changed path waits until it has been still (no event, the
same size and mtime) for ``settle`` seconds, so a file still being written is never read half
done. Once every changed path is still, they form one batch: the nearest existing folder of
each (never above a watched root) is indexed incrementally by :meth:`ImageIndex.add`, which adds new
files, re-encodes changed ones, follows moved ones by their content and drops deleted ones.
The index keeps its model loaded between batches. A file that fails to decode is listed in
the index's errors, as ``clipsearch index`` does, and tried again when it changes again.

It needs the ``watch`` extra (watchdog); :func:`require` says how to install it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from clipsearch.errors import ClipsearchError, IndexLockedError
from clipsearch.index.pipeline import IndexReport, check_roots
from clipsearch.media.files import supported_extensions
from clipsearch.media.video import VIDEO_EXTENSIONS, VideoOptions

if TYPE_CHECKING:
    from clipsearch.progress import Progress

log = logging.getLogger(__name__)

DEFAULT_SETTLE = 1.0  # seconds a file must stay unchanged before it is read
TICK = 0.1  # seconds between looks at the pending paths
MAX_WAIT = 10.0  # seconds a still file waits for others that keep changing


def require() -> None:
    """Raise a ClipsearchError that says how to install watchdog when it is missing."""
    if importlib.util.find_spec("watchdog") is None:
        raise ClipsearchError(
            "watching folders needs watchdog, not installed here; install the watch extra: "
            "pip install 'clipsearch[watch]'"
        )


class Indexable(Protocol):
    """What the watcher needs of an index (an :class:`~clipsearch.ImageIndex`)."""

    @property
    def encoder(self) -> object: ...

    def add(
        self,
        paths: Iterable[str | os.PathLike[str]],
        *,
        exclude: Sequence[str] = (),
        include_hidden: bool = False,
        video_interval: float = ...,
        video_max_frames: int = ...,
        progress: Progress | None = None,
    ) -> IndexReport: ...


@dataclass
class _Pending:
    """A changed path waiting to be still: when it last changed, and what stat said then."""

    changed: float
    signature: tuple[int, int] | None


def _signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None  # gone (or unreadable): a deletion, settled at once
    return (st.st_size, st.st_mtime_ns)


class FolderWatcher:
    """Watches folders and indexes what changes in them, batch by batch.

    Example::

        with ImageIndex.open_or_create("indexes/photos", model="demo") as index:
            watcher = FolderWatcher(index, ["~/Pictures"], on_batch=print)
            watcher.run()  # until Ctrl+C, or watcher.stop() from another thread

    Args:
        index: the index to keep current (its model stays loaded between batches).
        roots: folders to watch, recursively.
        exclude: glob patterns of files and folders to skip, as for :meth:`ImageIndex.add`.
        include_hidden: also index dot-files and dot-folders.
        video: which frames of videos to take (default: those of ``clipsearch index``).
        settle: seconds a changed file must stay unchanged (size and mtime) before it is read.
        on_batch: called with the report of each batch.

    Raises:
        ClipsearchError: a root is not a folder, or watchdog is not installed.
    """

    def __init__(
        self,
        index: Indexable,
        roots: Iterable[str | os.PathLike[str]],
        *,
        exclude: Sequence[str] = (),
        include_hidden: bool = False,
        video: VideoOptions | None = None,
        settle: float = DEFAULT_SETTLE,
        on_batch: Callable[[IndexReport], None] | None = None,
    ):
        require()
        if settle < 0:
            raise ClipsearchError(f"settle time must not be negative (got {settle})")
        self.index = index
        self.roots = check_roots(roots)
        self.exclude = tuple(exclude)
        self.include_hidden = include_hidden
        self.video = video or VideoOptions()
        self.settle = settle
        self.on_batch = on_batch or (lambda report: None)
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._extensions = supported_extensions() | VIDEO_EXTENSIONS
        self._observer: Any = None
        self._thread: threading.Thread | None = None

    # --- events -----------------------------------------------------------------------------

    def notice(self, path: str, is_directory: bool = False) -> None:
        """Note that ``path`` changed (watchdog calls this; so can a test or another source)."""
        path = os.fsdecode(path)
        if not is_directory and os.path.splitext(path)[1].lower() not in self._extensions:
            return
        if not any(_within(path, str(root)) for root in self.roots):
            return
        with self._lock:
            self._pending[path] = _Pending(time.monotonic(), _signature(path))

    def _handler(self) -> Any:
        from watchdog.events import FileSystemEventHandler

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: Any) -> None:
                if event.event_type in ("opened", "closed_no_write"):
                    return  # reads, ours included, change nothing
                if event.is_directory and event.event_type == "modified":
                    return  # its entries changed: they have events of their own
                watcher.notice(event.src_path, event.is_directory)
                dest = getattr(event, "dest_path", "")
                if dest:
                    watcher.notice(dest, event.is_directory)

        return Handler()

    # --- running ----------------------------------------------------------------------------

    def start(self, catch_up: bool = True) -> None:
        """Start watching, and indexing in a background thread; :meth:`stop` ends both.

        Args:
            catch_up: first index the roots once, incrementally, for what changed while
                nothing watched (the watching starts before it: nothing written meanwhile is
                missed).
        """
        self._start_observer()
        self._thread = threading.Thread(
            target=self._loop, args=(catch_up,), name="clipsearch-watch", daemon=True
        )
        self._thread.start()

    def run(self, catch_up: bool = True) -> None:
        """Watch and index in this thread until :meth:`stop` (or Ctrl+C, which propagates);
        ``catch_up`` as for :meth:`start`."""
        self._start_observer()
        try:
            self._loop(catch_up)
        finally:
            self._stop_observer()

    def _add(self, folders: Iterable[str | os.PathLike[str]]) -> IndexReport:
        return self.index.add(
            folders,
            exclude=self.exclude,
            include_hidden=self.include_hidden,
            video_interval=self.video.interval,
            video_max_frames=self.video.max_frames,
        )

    def catch_up(self) -> IndexReport:
        """Index the watched roots once, incrementally."""
        report = self._add(self.roots)
        self.on_batch(report)
        return report

    def stop(self, timeout: float | None = None) -> None:
        """Stop watching; a batch in progress is finished (and committed) first."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._stop_observer()

    def _start_observer(self) -> None:
        from watchdog.observers import Observer

        self._stop.clear()
        observer = Observer()
        handler = self._handler()
        for root in self.roots:
            observer.schedule(handler, str(root), recursive=True)
        observer.start()
        self._observer = observer

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join()

    def _loop(self, catch_up: bool) -> None:
        self.index.encoder  # noqa: B018 -- load the model now, not when the first photo comes
        owed = catch_up  # the catch-up pass, until it has run
        while True:
            pause = TICK
            try:
                if owed:
                    self.catch_up()
                    owed = False
                else:
                    self.process_settled()
            except IndexLockedError as e:  # another writer: wait for it, then try again
                log.warning("clipsearch watch: %s", e)
                pause = max(TICK, self.settle, 1.0)
            except ClipsearchError as e:  # keep watching; the next change tries again
                log.warning("clipsearch watch: %s", e)
            except Exception:  # a bug must not silently end a watch that runs for days
                log.exception("clipsearch watch: a batch failed; watching goes on")
            if self._stop.wait(pause):
                return

    # --- batches ----------------------------------------------------------------------------

    def settled(self, now: float | None = None) -> list[str]:
        """Take the pending paths once all of them have been still for ``settle`` seconds.

        Waiting for all, not each, keeps the two halves of a move in one batch (watchdog may
        report the old path of a move between folders a moment after the new one), so the
        moved file keeps its vector. Under a stream of changes that never pauses, the still
        ones go after :data:`MAX_WAIT` seconds all the same.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            ready = []
            for path, p in self._pending.items():
                sig = _signature(path)
                if sig != p.signature:  # still being written, events or not
                    p.signature, p.changed = sig, now
                elif now - p.changed >= self.settle:
                    ready.append(path)
            if not ready:
                return []
            oldest = min(self._pending[path].changed for path in ready)
            if len(ready) < len(self._pending) and now - oldest < self.settle + MAX_WAIT:
                return []
            for path in ready:
                del self._pending[path]
        return ready

    def process_settled(self) -> IndexReport | None:
        """Index the paths that have settled, as one batch; None when there were none."""
        ready = self.settled()
        if not ready:
            return None
        try:
            report = self._add(self.folders(ready))
        except IndexLockedError:
            with self._lock:  # another writer: try these again once it is done
                for path in ready:
                    self._pending.setdefault(path, _Pending(time.monotonic(), _signature(path)))
            raise
        self.on_batch(report)
        return report

    def folders(self, paths: Iterable[str]) -> list[str]:
        """The folders to index for some changed paths: each one's nearest existing folder
        inside its watched root, without folders inside others of the list."""
        found: set[str] = set()
        for path in paths:
            root = next(str(r) for r in self.roots if _within(path, str(r)))
            folder = path
            while folder != root and not os.path.isdir(folder):
                folder = os.path.dirname(folder)
            found.add(folder)
        ordered = sorted(found, key=len)
        kept: list[str] = []
        for folder in ordered:
            if not any(_within(folder, k) for k in kept):
                kept.append(folder)
        return kept


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


__all__ = ["DEFAULT_SETTLE", "FolderWatcher", "require"]
