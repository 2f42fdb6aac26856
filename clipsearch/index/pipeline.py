"""The walk -> read -> decode -> encode -> commit pipeline, incremental and resumable.

One run:

1. lists every image below the given folders (cheap: names and stat only);
2. compares the listing with the catalog: unchanged files (same size and mtime) are skipped,
   files no longer on disk become *gone*, new and changed files become *candidates*;
3. reads each candidate once, hashes its bytes and, unless its content is already known,
   decodes and preprocesses it, in worker threads that run ahead of the model;
4. resolves each candidate: a content hash that belongs to a gone file is a *move* (the
   record follows the file and keeps its vector); anything else is encoded;
5. commits each batch in one transaction, then removes the gone files nobody moved into.

An interrupted run loses at most the batch in flight: the next run sees committed files as
unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np

from clipsearch.errors import ClipsearchError, ImageReadError
from clipsearch.index.devices import DeviceStage, RawJpeg, pipelined, resolve_decode
from clipsearch.media.batchdecode import as_input, batch_decodable
from clipsearch.media.files import (
    FoundFile,
    decode_image_sized,
    read_file,
    supported_extensions,
    walk_images,
)
from clipsearch.media.photometa import PhotoMeta, read_photo_meta
from clipsearch.media.video import (
    VIDEO_EXTENSIONS,
    VideoOptions,
    hash_file,
    is_video,
    read_video_frames,
    video_support,
)
from clipsearch.models.batchpre import TensorPreprocess
from clipsearch.models.runtime import BATCH_SIZES
from clipsearch.progress import Progress
from clipsearch.store.catalog import Catalog, NewImage

if TYPE_CHECKING:
    from clipsearch.models.cpuencoder import CpuImageEncoder
    from clipsearch.models.encoder import Encoder
    from clipsearch.store.vectors import VectorIndex


@dataclass(frozen=True)
class IndexOptions:
    """How to run the indexer.

    Args:
        exclude: glob patterns of files and folders to skip.
        include_hidden: index dot-files and descend into dot-folders.
        batch_size: images per model call and per catalog transaction (default: what suits
            the encoder's device, chosen when the model loads).
        workers: threads that read, decode and preprocess ahead of the model.
        save_every: seconds between saves of the FAISS file during a long run.
        draft: decode JPEGs at a reduced size (DCT scaling) that is still at least twice the
            model's input, instead of decoding every pixel: much faster on large photos, and
            the embedding stays close to the exact one (benchmarks/RESULTS.md).
        compile: run the image tower through ``torch.compile`` (see
            :meth:`clipsearch.models.encoder.Encoder.compile_image_tower`): a slow first batch, then
            faster ones; for runs of thousands of images.
        queue_bytes: how many bytes of image files may be read, decoded and waiting for the
            model at once (at least one file): large files (panoramas, big PNGs or TIFFs)
            then queue fewer at a time, and memory stays bounded whatever the folder holds.
        video: which frames to take from videos (see :class:`clipsearch.media.video.VideoOptions`).
        decode: where JPEGs are decoded: ``cpu`` (PIL, in the worker threads), ``device`` (in
            batches where the model runs, nvJPEG on CUDA; see :mod:`clipsearch.index.devices`)
            or ``auto`` (``device`` on CUDA, else ``cpu``).
        devices: encode on these devices (``cuda:0``, ``cuda:1``), each a share of every
            batch; empty: the model's own device.

    Raises:
        ClipsearchError: ``batch_size`` is below 1.
    """

    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    batch_size: int | None = None
    workers: int = max(1, min(4, (os.cpu_count() or 1)))
    save_every: float = 60.0
    draft: bool = True
    compile: bool = False
    queue_bytes: int = 128 << 20
    video: VideoOptions = VideoOptions()
    decode: str = "auto"
    devices: tuple[str, ...] = ()

    @property
    def torch_only(self) -> bool:
        """Whether these options ask for what only the torch encoder does: compiling,
        decoding on the device, several devices."""
        return self.compile or bool(self.devices) or self.decode == "device"

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ClipsearchError(f"batch size must be at least 1 (got {self.batch_size})")
        resolve_decode(self.decode, "cpu")  # refuses unknown names


@dataclass
class IndexReport:
    """What one indexing run did."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    skipped_videos: int = 0  # videos left alone because PyAV is not installed
    seconds: float = 0.0
    # what encoded the images: "numpy", "onnx" or "torch" (models.engines); None: nothing was
    engine: str | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)

    def include(self, other: IndexReport) -> None:
        """Add the counts and errors of another report (one batch's) to this one."""
        self.added += other.added
        self.updated += other.updated
        self.moved += other.moved
        self.removed += other.removed
        self.unchanged += other.unchanged
        self.failed += other.failed
        self.skipped_videos += other.skipped_videos
        self.errors.extend(other.errors)
        self.engine = other.engine or self.engine

    @property
    def encoded(self) -> int:
        return self.added + self.updated

    def changes(self) -> str:
        """What changed, in words: ``added 3, removed 1`` (the counts that are not zero)."""
        counts = {k: getattr(self, k) for k in ("added", "updated", "moved", "removed", "failed")}
        return ", ".join(f"{k} {n}" for k, n in counts.items() if n) or "no change"

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "skipped_videos": self.skipped_videos,
            "seconds": round(self.seconds, 3),
            "engine": self.engine,
        }


@dataclass
class Candidate:
    """A file to read and encode: new, or changed since it was indexed."""

    found: FoundFile
    old_id: int | None  # set when the file was indexed before with another size or mtime


@dataclass
class Prepared:
    """A candidate after reading: its content hash and its pixels (or vector), or its error."""

    cand: Candidate
    sha256: str = ""
    pixels: Any = None  # preprocessed (the encoder's kind), or None when the content is known
    width: int = 0
    height: int = 0
    error: str | None = None
    vector: np.ndarray | None = None  # set when a remote executor already encoded it
    meta: PhotoMeta | None = None  # date, camera and place, from the header only
    frame_time: float | None = None  # a video's: the time of the frame in ``pixels``/``vector``
    # A video's later frames: (seconds, preprocessed pixels, or its vector once encoded).
    frames: list[tuple[float, Any]] = field(default_factory=list)
    raw: RawJpeg | None = None  # a JPEG to decode in a batch on the device (index.devices)

    @property
    def rows(self) -> int:
        """How many vectors the file gives: one per frame taken."""
        return 1 + len(self.frames)

    @property
    def known(self) -> bool:
        """Read and hashed only: its bytes are those of a gone record, whose vector it gets."""
        return self.error is None and self.pixels is None and self.vector is None and not self.raw


class Executor(Protocol):
    """Somewhere else to read, decode and encode candidates (see ``distributed.py``)."""

    def prepared(
        self, candidates: list[Candidate], gone_shas: frozenset[str]
    ) -> Iterator[Prepared]: ...


class GoneFiles:
    """Records of files no longer where the catalog says, by content hash.

    Each record is claimed at most once: by a candidate with the same bytes (the record
    follows the file and keeps its vector), or by its own changed file (the record is
    replaced and its vector deleted). The unclaimed ones are removed at the end of the run.
    """

    def __init__(self, gone: dict[int, str]):
        self.ids = list(gone)
        self.by_sha: dict[str, list[int]] = {}
        for image_id, sha in gone.items():
            self.by_sha.setdefault(sha, []).append(image_id)
        self.shas = frozenset(self.by_sha)
        self.claimed: set[int] = set()
        self.moved: set[int] = set()  # claimed by content: they stay in the catalog

    def claim_content(self, sha256: str) -> int | None:
        """An unclaimed record with these bytes, now claimed; None when there is none."""
        source = next((i for i in self.by_sha.get(sha256, ()) if i not in self.claimed), None)
        if source is not None:
            self.claimed.add(source)
            self.moved.add(source)
        return source

    def claim(self, image_id: int) -> bool:
        """Claim one record; False when it was claimed before."""
        if image_id in self.claimed:
            return False
        self.claimed.add(image_id)
        return True

    def has_donor(self, sha256: str) -> bool:
        """Whether a record with these bytes moved, so that its vector stays to be copied."""
        return any(i in self.moved for i in self.by_sha.get(sha256, ()))

    def donor(self, sha256: str) -> int:
        """A record with these bytes that moved (see :meth:`has_donor`)."""
        return next(i for i in self.by_sha[sha256] if i in self.moved)

    def unclaimed(self) -> list[int]:
        return [i for i in self.ids if i not in self.claimed]


@dataclass
class BatchPlan:
    """What one batch changes in the catalog, worked out before anything is encoded or written.

    Each row of ``new`` gets its vector from exactly one of ``pixels`` (encode here),
    ``vectors`` (a remote executor encoded it) or ``copies`` (the bytes of a gone record that
    another file moved into first). ``report`` counts what the batch does once committed.
    """

    new: list[NewImage] = field(default_factory=list)
    pixels: list[tuple[int, Any]] = field(default_factory=list)  # (row, preprocessed tensor)
    vectors: list[tuple[int, np.ndarray]] = field(default_factory=list)  # (row, vector)
    copies: list[tuple[int, int]] = field(default_factory=list)  # (row, gone record's id)
    remove_ids: list[int] = field(default_factory=list)
    moves: list[tuple[int, int, str, int, int]] = field(default_factory=list)
    ok_paths: list[str] = field(default_factory=list)
    report: IndexReport = field(default_factory=IndexReport)

    def fail(self, path: str, reason: str) -> None:
        self.report.errors.append((path, reason))
        self.report.failed += 1

    def move(self, p: Prepared, root_id: int, source: int, gone: GoneFiles) -> None:
        """The file has the bytes of gone record ``source``: that record follows it."""
        f, old = p.cand.found, p.cand.old_id
        self.ok_paths.append(f.path)
        self.moves.append((source, root_id, f.rel, f.size, f.mtime_ns))
        if old is not None and gone.claim(old):  # its own record, replaced by the moved one
            self.remove_ids.append(old)
            self.report.removed += 1
        if source == old:
            self.report.unchanged += 1  # touched, same bytes: only the mtime moved on
        else:
            self.report.moved += 1

    def insert(self, p: Prepared, root_id: int, gone: GoneFiles) -> None:
        """A new record for the file, replacing its own old one."""
        f, old = p.cand.found, p.cand.old_id
        self.ok_paths.append(f.path)
        if old is not None and gone.claim(old):
            self.remove_ids.append(old)
        row = len(self.new)
        if p.vector is not None:
            self.vectors.append((row, p.vector))
        elif p.known:  # its bytes are those of a gone record that another file moved into
            self.copies.append((row, gone.donor(p.sha256)))
        else:
            self.pixels.append((row, p.pixels))
        image = NewImage(root_id, f.rel, f.size, f.mtime_ns, p.sha256, p.width, p.height, p.meta)
        self.new.append(replace(image, frame_time=p.frame_time))
        for seconds, frame in p.frames:  # a video's later frames, tied to its file row
            # a vector (encoded remotely) is one row; pixels (array or tensor) are an image
            into = self.vectors if getattr(frame, "ndim", 0) == 1 else self.pixels
            into.append((len(self.new), frame))
            self.new.append(replace(image, frame_time=seconds, frame_of=row))
        if old is None:
            self.report.added += 1
        else:
            self.report.updated += 1


class _Scope(NamedTuple):
    """A folder to index, as part of the root that holds it."""

    root_id: int
    root: str
    prefix: str  # rel prefix of the folder inside the root ("" for the root itself)
    walk: str  # the folder to walk


class Indexer:
    """Runs one incremental indexing pass over some folders into a catalog and vector index.

    The model loads only when a file must be encoded, and the vector index (FAISS) only when
    ids are added or removed: a run over unchanged or moved files needs neither. ``encoder``
    is told at most how many pictures the run will encode (None: it cannot tell, or the
    options need torch), so that a run can take the NumPy or ONNX Runtime image tower and
    never import torch (:func:`clipsearch.models.loading.load_image_encoder`).
    """

    def __init__(
        self,
        catalog: Catalog,
        vectors: Callable[[], VectorIndex],
        encoder: Callable[[int | None], Encoder | CpuImageEncoder],
        options: IndexOptions,
        progress: Progress | None = None,
        save: Callable[[], None] | None = None,
        styles: Callable[[np.ndarray], Sequence[tuple[str, float]]] | None = None,
        executor: Executor | None = None,
    ):
        self.catalog = catalog
        self._vectors_factory = vectors
        self._vectors: VectorIndex | None = None
        self._encoder_factory = encoder
        self._encoder: Encoder | CpuImageEncoder | None = None
        self._pictures: int | None = None  # at most how many this run encodes, once known
        self._encoder_error: Exception | None = None
        self._encoder_lock = threading.Lock()
        self.options = options
        self.progress = progress or Progress()
        self._save = save or (lambda: None)
        self._styles = styles  # (N, dim) vectors -> (style, probability) per row
        self._executor = executor
        self._stage: DeviceStage | None = None  # built once the model has loaded, if used

    @property
    def encoder(self) -> Encoder | CpuImageEncoder:
        """The model, loaded by the first decoding worker that needs it (once, under a lock)."""
        with self._encoder_lock:
            if self._encoder_error is not None:  # failed once: the other workers fail at once
                raise self._encoder_error
            if self._encoder is None:
                try:
                    encoder = self._encoder_factory(self._pictures)
                    if self.options.compile:
                        encoder.compile_image_tower()
                except Exception as e:
                    self._encoder_error = e
                    raise
                self._encoder = encoder
            return self._encoder

    @property
    def vectors(self) -> VectorIndex:
        """The vector index, loaded on first use. Load it before a catalog transaction that
        adds ids: loading syncs it with the catalog, and the ids would then be added twice."""
        if self._vectors is None:
            self._vectors = self._vectors_factory()
        return self._vectors

    @property
    def batch_size(self) -> int:
        """Images per batch: the option, else what suits the model's device once it is
        loaded; until then (files only hashed, as moves) the CPU's."""
        if self.options.batch_size is not None:
            return self.options.batch_size
        if self._stage is not None:
            return self._stage.batch_size
        if self._encoder is not None:
            return self._encoder.batch_size
        return BATCH_SIZES["cpu"]

    def run(self, roots: Sequence[Path]) -> IndexReport:
        started = time.monotonic()
        report = IndexReport()
        scopes = [self._scope(root) for root in roots]
        candidates, gone = self._diff(scopes, report)
        self._pictures = self._pictures_at_most(candidates)
        self.progress.start(len(candidates))
        try:
            self._process(candidates, GoneFiles(gone), report)
        finally:
            self.progress.close()
            self._save()
        self._backfill_meta()
        self._clear_stale_errors([scope.walk for scope in scopes], report)
        report.seconds = time.monotonic() - started
        report.engine = self._encoder.engine if self._encoder is not None else None
        return report

    def _pictures_at_most(self, candidates: Sequence[Candidate]) -> int | None:
        """At most how many pictures the run encodes (a video: its most frames; a moved file
        is only hashed, but counts until then); None where the options need torch anyway."""
        if self.options.torch_only:
            return None
        frames = self.options.video.max_frames
        return sum(frames if is_video(c.found.rel) else 1 for c in candidates)

    def _diff(
        self, scopes: Sequence[_Scope], report: IndexReport
    ) -> tuple[list[Candidate], dict[int, str]]:
        """Compare the folders on disk with the catalog: unchanged files are counted, new and
        changed ones become candidates, and records of files no longer there are gone
        (id -> sha256). Files and folders the walk cannot read are recorded as errors."""
        candidates: list[Candidate] = []
        gone: dict[int, str] = {}
        walk_errors: list[tuple[str, str]] = []
        for scope in scopes:
            self._diff_scope(scope, candidates, gone, walk_errors, report)
        report.errors.extend(walk_errors)
        report.failed += len(walk_errors)
        self.catalog.record_errors(walk_errors)
        return candidates, gone

    def _diff_scope(
        self,
        scope: _Scope,
        candidates: list[Candidate],
        gone: dict[int, str],
        errors: list[tuple[str, str]],
        report: IndexReport,
    ) -> None:
        known = self.catalog.files_under(scope.root_id)
        in_scope = {rel: rec for rel, rec in known.items() if _under(rel, scope.prefix)}
        unreadable: list[str] = []

        def on_error(path: str, reason: str) -> None:
            errors.append((path, reason))
            if reason.startswith("folder not readable"):
                unreadable.append(path)

        seen: set[str] = set()
        options = self.options
        videos: bool | None = None  # whether PyAV is there, once a video is met
        for f in walk_images(
            scope.walk,
            exclude=options.exclude,
            include_hidden=options.include_hidden,
            extensions=supported_extensions() | VIDEO_EXTENSIONS,
            on_error=on_error,
        ):
            rel = f"{scope.prefix}{f.rel}"
            seen.add(rel)
            if is_video(rel):
                videos = video_support() if videos is None else videos
                if not videos:  # kept as they are: neither errors nor gone
                    report.skipped_videos += 1
                    continue
            rec = in_scope.get(rel)
            if rec is not None and (rec[1], rec[2]) == (f.size, f.mtime_ns):
                report.unchanged += 1
                continue
            found = FoundFile(scope.root, rel, f.size, f.mtime_ns)
            candidates.append(Candidate(found, None if rec is None else rec[0]))
            if rec is not None:
                gone[rec[0]] = rec[3]
        # Files below a folder that could not be read are not gone: they were not seen.
        skip = tuple(os.path.relpath(u, scope.root).replace(os.sep, "/") + "/" for u in unreadable)
        for rel, (image_id, _, _, sha) in in_scope.items():
            if rel not in seen and not rel.startswith(skip):
                gone[image_id] = sha

    def _backfill_meta(self, batch: int = 500) -> None:
        """Read the date, camera and place of images indexed before the catalog kept them:
        their EXIF header only, never their pixels nor the model; once, as each is marked.
        A file not on disk now (a folder not walked, a drive not mounted) waits for a later run
        instead of being dated by its stored mtime for good."""
        todo = [row for row in self.catalog.files_without_meta() if os.path.isfile(row[1])]
        for start in range(0, len(todo), batch):
            part = todo[start : start + batch]
            self.catalog.set_photo_meta([(i, read_photo_meta(p, m)) for i, p, m in part])

    def _clear_stale_errors(self, walked: Sequence[str], report: IndexReport) -> None:
        """Forget errors below the walked folders that this finished run did not meet again:
        the file was fixed, deleted or excluded. Errored files are retried on every run."""
        below = tuple(w.rstrip("/") + "/" for w in walked)
        reported = {path for path, _ in report.errors}
        stale = [p for p in self.catalog.error_paths() if p.startswith(below) and p not in reported]
        self.catalog.clear_errors(stale)

    def _scope(self, root: Path) -> _Scope:
        """The scope of a folder to index.

        A folder inside an already indexed root is indexed as part of that root, and indexed
        roots inside a new one become part of it, so one file never gets two records.
        """
        path = str(root)
        for rid, existing in sorted(self.catalog.roots().items(), key=lambda kv: len(kv[1])):
            if path.startswith(existing.rstrip("/") + "/"):
                prefix = Path(path).relative_to(existing).as_posix() + "/"
                return _Scope(rid, existing, prefix, path)
        rid, duplicates = self.catalog.adopt_roots(path)  # with the frames of videos
        if duplicates:
            self.vectors.remove(np.asarray(duplicates, dtype=np.int64))
        return _Scope(rid, path, "", path)

    def _process(self, candidates: list[Candidate], gone: GoneFiles, report: IndexReport) -> None:
        last_save = time.monotonic()
        with ThreadPoolExecutor(self.options.workers, thread_name_prefix="decode") as pool:
            if self._executor is not None:
                stream = self._executor.prepared(candidates, gone.shas)
            else:
                stream = self._prepare_all(pool, candidates, gone.shas)
            try:
                for batch in pipelined(self._batches(stream), self._device_stage):
                    self._commit(batch, gone, report)
                    if time.monotonic() - last_save > self.options.save_every:
                        self._save()
                        last_save = time.monotonic()
            finally:
                if self._stage is not None:
                    self._stage.close()
        leftover = gone.unclaimed()
        if leftover:
            vectors = self.vectors  # loaded before the removal (see vectors)
            with_frames = self.catalog.with_frames(leftover)
            self.catalog.remove(leftover)
            vectors.remove(np.asarray(with_frames, dtype=np.int64))
            report.removed += len(leftover)

    def _batches(self, stream: Iterable[Prepared]) -> Iterator[list[Prepared]]:
        batch: list[Prepared] = []
        for prepared in stream:
            batch.append(prepared)
            if sum(p.rows for p in batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _device_decode(self) -> str | None:
        """The device that decodes JPEGs in batches, or None for PIL in the worker threads
        (asked once the model has loaded)."""
        encoder = self.encoder
        if resolve_decode(self.options.decode, encoder.device) != "device":
            return None
        return encoder.device if TensorPreprocess.supports(encoder.preprocess) else None

    def _device_stage(self) -> DeviceStage | None:
        """The stage that decodes and encodes on the devices, once the model has loaded;
        None where the local encoder does it all (PIL decoding, one device) or Ray does."""
        if self._stage is not None or self._executor is not None or self._encoder is None:
            return self._stage
        if self._device_decode() is None and not self.options.devices:
            return None
        self._stage = DeviceStage(self._encoder, self.options.devices, self.options.draft)
        return self._stage

    def _prepare_all(
        self, pool: ThreadPoolExecutor, candidates: list[Candidate], gone_shas: frozenset[str]
    ) -> Iterator[Prepared]:
        """Results in input order, with a bounded number of files in flight (the bound grows
        with the batch size once the model has loaded) and a bounded sum of the image files'
        sizes. A video weighs a whole batch: its frames are many pictures."""
        pending: deque[tuple[int, int, Future[Prepared]]] = deque()  # weight, bytes, result
        it = iter(candidates)
        nxt: Candidate | None = next(it, None)
        in_flight = 0

        def refill() -> None:
            nonlocal nxt, in_flight
            window = max(2 * self.batch_size, 2 * self.options.workers)
            while nxt is not None and sum(w for w, _, _ in pending) < window:
                video = is_video(nxt.found.rel)
                size = 0 if video else nxt.found.size  # a video's frames: its weight
                if pending and in_flight + size > self.options.queue_bytes:
                    return
                weight = self.batch_size if video else 1
                pending.append((weight, size, pool.submit(self._prepare, nxt, gone_shas)))
                in_flight += size
                nxt = next(it, None)

        refill()
        while pending:
            _, size, future = pending.popleft()
            result = future.result()
            in_flight -= size
            refill()
            yield result

    def _prepare(self, cand: Candidate, gone_shas: frozenset[str]) -> Prepared:
        return prepare_candidate(
            cand,
            lambda: self.encoder,
            self.options.draft,
            gone_shas,
            self.options.video,
            self._device_decode,
        )

    def _commit(self, batch: list[Prepared], gone: GoneFiles, report: IndexReport) -> None:
        """Plan one batch, then apply it in one catalog transaction."""
        plan = self._plan(batch, gone)
        self._apply(plan)
        report.include(plan.report)
        self.progress.advance(len(batch))

    def _plan(self, batch: list[Prepared], gone: GoneFiles) -> BatchPlan:
        """Resolve each prepared file: an error, a move of a gone record, or a new record."""
        plan = BatchPlan()
        root_ids = {path: rid for rid, path in self.catalog.roots().items()}
        for p in batch:
            source = gone.claim_content(p.sha256) if p.error is None else None
            if (
                source is None
                and p.known
                and (is_video(p.cand.found.rel) or not gone.has_donor(p.sha256))
            ):
                # Every record of its bytes was replaced in this run: no vector is left to
                # copy. A video's frames are never copied: a second copy is decoded again.
                p = self._prepare(p.cand, frozenset())
                stage = self._device_stage()
                if stage is not None and p.error is None:
                    stage([p])
            if p.error is not None:
                plan.fail(p.cand.found.path, p.error)
                continue
            root_id = root_ids[p.cand.found.root]
            if source is not None:
                plan.move(p, root_id, source, gone)
            else:
                plan.insert(p, root_id, gone)
        if plan.copies:  # a copy was not decoded: its size is the donor's
            donors = self.catalog.images([donor for _, donor in plan.copies])
            for row, donor in plan.copies:
                rec = donors.get(donor)
                size = (rec.width, rec.height) if rec else (0, 0)
                plan.new[row] = replace(plan.new[row], width=size[0], height=size[1])
        return plan

    def _apply(self, plan: BatchPlan) -> None:
        """Encode what the plan needs, commit it in one transaction, mirror it in the vectors.
        A batch of moves and errors only changes the catalog: the vectors keep their ids."""
        changes_ids = bool(plan.new or plan.remove_ids)
        vectors = self.vectors if changes_ids else None  # loaded before the commit
        matrix = self._vectors_of(plan)
        removed = self.catalog.with_frames(plan.remove_ids) if plan.remove_ids else []
        styles = self._styles(matrix) if self._styles is not None and plan.new else None
        ids = self.catalog.commit_batch(
            plan.new,
            matrix,
            remove_ids=plan.remove_ids,
            moves=plan.moves,
            clear_error_paths=plan.ok_paths,
            errors=plan.report.errors,
            styles=styles,
        )
        if vectors is None:
            return
        if removed:
            vectors.remove(np.asarray(removed, dtype=np.int64))
        if ids:
            vectors.add(np.asarray(ids, dtype=np.int64), matrix)

    def _vectors_of(self, plan: BatchPlan) -> np.ndarray:
        """One vector per new row: encoded here, encoded remotely, or copied."""
        if not plan.new:
            return np.zeros((0, 0), dtype=np.float32)  # its width is never read
        matrix = np.zeros((len(plan.new), self.vectors.dim), dtype=np.float32)
        step = self.batch_size
        for start in range(0, len(plan.pixels), step):  # a video's frames may be many
            part = plan.pixels[start : start + step]
            rows = [row for row, _ in part]
            matrix[rows] = self.encoder.encode_batch([px for _, px in part])
        for row, vec in plan.vectors:
            matrix[row] = vec
        for row, donor in plan.copies:
            vec = self.catalog.vector(donor)
            if vec is not None:
                matrix[row] = vec
        return matrix


def prepare_candidate(
    cand: Candidate,
    encoder: Callable[[], Encoder | CpuImageEncoder],
    draft: bool,
    gone_shas: Container[str],
    video: VideoOptions | None = None,
    device_decode: Callable[[], str | None] = lambda: None,
) -> Prepared:
    """Read, hash, decode and preprocess one file; never raises for a bad file.

    A file whose bytes belong to a gone record is only hashed: its vector is already stored,
    and ``encoder`` (which may load the model) is not called. A video gives the frames
    ``video`` asks for. Where ``device_decode()`` names a device, a JPEG its batched decoder
    takes is left undecoded, as ``raw`` bytes (pinned for CUDA), with its size from the
    header.
    """
    if is_video(cand.found.rel):
        return _prepare_video(cand, encoder, gone_shas, video or VideoOptions())
    path = cand.found.path
    out = Prepared(cand)
    data = b""
    with _file_errors(out):
        data, st = read_file(path)
        if (st.st_size, st.st_mtime_ns) != (cand.found.size, cand.found.mtime_ns):
            # Rewritten since the walk: record the size and time of the bytes we encode.
            found = replace(cand.found, size=st.st_size, mtime_ns=st.st_mtime_ns)
            out.cand = Candidate(found, cand.old_id)
        out.sha256 = hashlib.sha256(data).hexdigest()
        out.meta = read_photo_meta(data, out.cand.found.mtime_ns)
    if out.error is not None or out.sha256 in gone_shas:
        return out
    model = encoder()  # outside _file_errors: a model that cannot load stops the run
    device = device_decode()
    head = batch_decodable(data) if device is not None else None
    if head is not None:
        pin = str(device).startswith("cuda")
        out.raw = RawJpeg(as_input(data, pin=pin), head.orientation)
        out.width, out.height = head.upright_size
        return out
    with _file_errors(out):
        draft_size = 2 * model.image_size if draft else None
        img, (out.width, out.height) = decode_image_sized(data, path, draft_size=draft_size)
        out.pixels = model.preprocess(img)
    return out


def _prepare_video(
    cand: Candidate,
    encoder: Callable[[], Encoder | CpuImageEncoder],
    gone_shas: Container[str],
    video: VideoOptions,
) -> Prepared:
    """A video's hash (read in chunks, never held whole) and its frames, preprocessed."""
    path = cand.found.path
    out = Prepared(cand)
    with _file_errors(out):
        out.sha256, st = hash_file(path)
        if (st.st_size, st.st_mtime_ns) != (cand.found.size, cand.found.mtime_ns):
            found = replace(cand.found, size=st.st_size, mtime_ns=st.st_mtime_ns)
            out.cand = Candidate(found, cand.old_id)
        out.meta = read_photo_meta(path, out.cand.found.mtime_ns)
    if out.error is not None or out.sha256 in gone_shas:
        return out
    model = encoder()
    with _file_errors(out):
        taken = read_video_frames(path, model.image_size, video)
        out.width, out.height = taken.width, taken.height
        pixels = [(t, model.preprocess(img)) for t, img in taken.frames]
        (out.frame_time, out.pixels), out.frames = pixels[0], pixels[1:]
    return out


@contextlib.contextmanager
def _file_errors(out: Prepared) -> Iterator[None]:
    """Record what goes wrong with one file as its error, instead of raising."""
    try:
        yield
    except ImageReadError as e:
        out.error = e.reason
    except ClipsearchError:
        raise
    except Exception as e:  # a preprocessing bug must not abort hours of indexing
        out.error = f"cannot preprocess image: {type(e).__name__}: {e}"


def _under(rel: str, prefix: str) -> bool:
    return not prefix or rel.startswith(prefix)


def check_roots(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Absolute folder paths for the given arguments, refusing ones that are not folders."""
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise ClipsearchError(f"{raw}: no such folder")
        if not p.is_dir():
            raise ClipsearchError(f"{raw}: is a file; clipsearch index takes folders")
        if not os.access(p, os.R_OK | os.X_OK):
            raise ClipsearchError(f"{raw}: folder is not readable (permission denied)")
        resolved = p.resolve()
        if resolved not in out:
            out.append(resolved)
    return out
