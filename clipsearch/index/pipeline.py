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

import hashlib
import os
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from clipsearch.errors import ClipsearchError, ImageReadError
from clipsearch.media.files import FoundFile, decode_image_sized, read_file, walk_images
from clipsearch.progress import Progress
from clipsearch.store.catalog import Catalog, NewImage

if TYPE_CHECKING:
    from clipsearch.models.encoder import Encoder
    from clipsearch.store.vectors import VectorIndex


@dataclass(frozen=True)
class IndexOptions:
    """How to run the indexer.

    Args:
        exclude: glob patterns of files and folders to skip.
        include_hidden: index dot-files and descend into dot-folders.
        batch_size: images per model call and per catalog transaction.
        workers: threads that read, decode and preprocess ahead of the model.
        save_every: seconds between saves of the FAISS file during a long run.
        draft: decode JPEGs at a reduced size (DCT scaling) that is still at least twice the
            model's input, instead of decoding every pixel: 2-3x faster on 12 MP photos, and
            the embedding stays within cosine 0.995 of the exact one (benchmarks/RESULTS.md).
        compile: run the image tower through ``torch.compile`` (see
            :meth:`clipsearch.models.encoder.Encoder.compile_image_tower`): a slow first batch, then
            faster ones; for runs of thousands of images.
    """

    exclude: tuple[str, ...] = ()
    include_hidden: bool = False
    batch_size: int = 32
    workers: int = max(1, min(4, (os.cpu_count() or 1)))
    save_every: float = 60.0
    draft: bool = True
    compile: bool = False


@dataclass
class IndexReport:
    """What one indexing run did."""

    added: int = 0
    updated: int = 0
    moved: int = 0
    removed: int = 0
    unchanged: int = 0
    failed: int = 0
    seconds: float = 0.0
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def encoded(self) -> int:
        return self.added + self.updated

    def to_dict(self) -> dict[str, Any]:
        return {
            "added": self.added,
            "updated": self.updated,
            "moved": self.moved,
            "removed": self.removed,
            "unchanged": self.unchanged,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class _Candidate:
    found: FoundFile
    old_id: int | None  # set when the file was indexed before with another size or mtime


@dataclass
class _Prepared:
    cand: _Candidate
    sha256: str = ""
    pixels: Any = None  # a preprocessed tensor, or None when the content is already known
    width: int = 0
    height: int = 0
    error: str | None = None
    vector: np.ndarray | None = None  # set when a remote executor already encoded it


class Executor(Protocol):
    """Somewhere else to read, decode and encode candidates (see ``distributed.py``)."""

    def prepared(
        self, candidates: list[_Candidate], gone_shas: frozenset[str]
    ) -> Iterator[_Prepared]: ...


class Indexer:
    """Runs one incremental indexing pass over some folders into a catalog and vector index."""

    def __init__(
        self,
        catalog: Catalog,
        vectors: VectorIndex,
        encoder: Callable[[], Encoder],
        options: IndexOptions,
        progress: Progress | None = None,
        save: Callable[[], None] | None = None,
        styles: Callable[[np.ndarray], Sequence[tuple[str, float]]] | None = None,
        executor: Executor | None = None,
    ):
        self.catalog = catalog
        self.vectors = vectors
        self._encoder_factory = encoder
        self._encoder: Encoder | None = None
        self.options = options
        self.progress = progress or Progress()
        self._save = save or (lambda: None)
        self._styles = styles  # (N, dim) vectors -> (style, probability) per row
        self._executor = executor

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = self._encoder_factory()
            if self.options.compile:
                self._encoder.compile_image_tower()
        return self._encoder

    def run(self, roots: Sequence[Path]) -> IndexReport:
        started = time.monotonic()
        report = IndexReport()
        walk_errors: list[tuple[str, str]] = []
        candidates: list[_Candidate] = []
        gone: dict[int, str] = {}  # id -> sha256 of files no longer where the catalog says
        scopes = [self._scope(root) for root in roots]
        for root_id, root_path, prefix, walk_root in scopes:
            known = self.catalog.files_under(root_id)
            in_scope = {rel: rec for rel, rec in known.items() if _under(rel, prefix)}
            unreadable: list[str] = []

            def on_error(path: str, reason: str, _u: list[str] = unreadable) -> None:
                walk_errors.append((path, reason))
                if reason.startswith("folder not readable"):
                    _u.append(path)

            seen: set[str] = set()
            for f in walk_images(
                walk_root,
                exclude=self.options.exclude,
                include_hidden=self.options.include_hidden,
                on_error=on_error,
            ):
                rel = f"{prefix}{f.rel}"
                found = FoundFile(root_path, rel, f.size, f.mtime_ns)
                seen.add(rel)
                rec = in_scope.get(rel)
                if rec is None:
                    candidates.append(_Candidate(found, None))
                elif rec[1] == f.size and rec[2] == f.mtime_ns:
                    report.unchanged += 1
                else:
                    candidates.append(_Candidate(found, rec[0]))
                    gone[rec[0]] = rec[3]
            skip_dirs = [
                os.path.relpath(u, root_path).replace(os.sep, "/") + "/" for u in unreadable
            ]
            for rel, (image_id, _, _, sha) in in_scope.items():
                if rel not in seen and not any(rel.startswith(d) for d in skip_dirs):
                    gone[image_id] = sha
        report.errors.extend(walk_errors)
        report.failed += len(walk_errors)
        self.catalog.record_errors(walk_errors)

        self.progress.start(len(candidates))
        try:
            self._process(candidates, gone, report)
        finally:
            self.progress.close()
            self._save()
        self._clear_stale_errors([walk for *_, walk in scopes], report)
        report.seconds = time.monotonic() - started
        return report

    def _clear_stale_errors(self, walked: Sequence[str], report: IndexReport) -> None:
        """Forget errors below the walked folders that this finished run did not meet again:
        the file was fixed, deleted or excluded. Errored files are retried on every run."""
        below = tuple(w.rstrip("/") + "/" for w in walked)
        reported = {path for path, _ in report.errors}
        stale = [p for p in self.catalog.error_paths() if p.startswith(below) and p not in reported]
        self.catalog.clear_errors(stale)

    def _scope(self, root: Path) -> tuple[int, str, str, str]:
        """(root_id, root path, rel prefix, folder to walk) for a folder to index.

        A folder inside an already indexed root is indexed as part of that root, and indexed
        roots inside a new one become part of it, so one file never gets two records.
        """
        path = str(root)
        for rid, existing in sorted(self.catalog.roots().items(), key=lambda kv: len(kv[1])):
            if path.startswith(existing.rstrip("/") + "/"):
                prefix = Path(path).relative_to(existing).as_posix() + "/"
                return rid, existing, prefix, path
        rid, duplicates = self.catalog.adopt_roots(path)
        if duplicates:
            self.vectors.remove(np.asarray(duplicates, dtype=np.int64))
        return rid, path, "", path

    def _process(
        self, candidates: list[_Candidate], gone: dict[int, str], report: IndexReport
    ) -> None:
        gone_by_sha: dict[str, list[int]] = {}
        for image_id, sha in gone.items():
            gone_by_sha.setdefault(sha, []).append(image_id)
        claimed: set[int] = set()
        last_save = time.monotonic()
        batch: list[_Prepared] = []
        with ThreadPoolExecutor(self.options.workers, thread_name_prefix="decode") as pool:
            if self._executor is not None:
                stream = self._executor.prepared(candidates, frozenset(gone_by_sha))
            else:
                if candidates:
                    self.encoder  # noqa: B018 -- load it here, not in several workers at once
                stream = self._prepare_all(pool, candidates, gone_by_sha)
            for prepared in stream:
                batch.append(prepared)
                if len(batch) >= self.options.batch_size:
                    self._commit(batch, gone_by_sha, claimed, report)
                    batch = []
                    if time.monotonic() - last_save > self.options.save_every:
                        self._save()
                        last_save = time.monotonic()
            if batch:
                self._commit(batch, gone_by_sha, claimed, report)
        leftover = [i for i in gone if i not in claimed]
        if leftover:
            self.catalog.remove(leftover)
            self.vectors.remove(np.asarray(leftover, dtype=np.int64))
            report.removed += len(leftover)

    def _prepare_all(
        self,
        pool: ThreadPoolExecutor,
        candidates: list[_Candidate],
        gone_by_sha: dict[str, list[int]],
    ) -> Iterator[_Prepared]:
        """Results in input order, with a bounded number of files in flight."""
        window = max(2 * self.options.batch_size, 2 * self.options.workers)
        pending: deque[Future[_Prepared]] = deque()
        it = iter(candidates)
        for cand in it:
            pending.append(pool.submit(self._prepare, cand, gone_by_sha))
            if len(pending) >= window:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(self._prepare, nxt, gone_by_sha))
            yield result

    def _prepare(self, cand: _Candidate, gone_by_sha: dict[str, list[int]]) -> _Prepared:
        return prepare_candidate(cand, self.encoder, self.options.draft, gone_by_sha)

    def _commit(
        self,
        batch: list[_Prepared],
        gone_by_sha: dict[str, list[int]],
        claimed: set[int],
        report: IndexReport,
    ) -> None:
        new: list[NewImage] = []
        to_encode: list[tuple[int, Any]] = []
        copy_from: list[tuple[int, int]] = []  # (position in new, source id)
        encoded_elsewhere: list[tuple[int, np.ndarray]] = []
        remove_ids: list[int] = []
        moves: list[tuple[int, int, str, int, int]] = []
        errors: list[tuple[str, str]] = []
        ok_paths: list[str] = []
        root_ids = {path: rid for rid, path in self.catalog.roots().items()}

        for p in batch:
            f = p.cand.found
            if p.error is not None:
                errors.append((f.path, p.error))
                continue
            ok_paths.append(f.path)
            rid = root_ids[f.root]
            source = next((i for i in gone_by_sha.get(p.sha256, ()) if i not in claimed), None)
            if source is not None:
                claimed.add(source)
                old = p.cand.old_id
                if old is not None and old != source and old not in claimed:
                    claimed.add(old)
                    remove_ids.append(old)
                    report.removed += 1
                moves.append((source, rid, f.rel, f.size, f.mtime_ns))
                if source == p.cand.old_id:
                    report.unchanged += 1  # touched, same bytes: only the mtime moved on
                else:
                    report.moved += 1
                continue
            if p.cand.old_id is not None and p.cand.old_id not in claimed:
                claimed.add(p.cand.old_id)
                remove_ids.append(p.cand.old_id)
            if p.vector is not None:
                encoded_elsewhere.append((len(new), p.vector))
                w, h = p.width, p.height
            elif p.pixels is None:
                # Its bytes equal a gone file that another candidate moved into first: a copy.
                donor = gone_by_sha[p.sha256][0]
                copy_from.append((len(new), donor))
                donor_rec = self.catalog.images([donor]).get(donor)
                w, h = (donor_rec.width, donor_rec.height) if donor_rec else (0, 0)
            else:
                to_encode.append((len(new), p.pixels))
                w, h = p.width, p.height
            new.append(NewImage(rid, f.rel, f.size, f.mtime_ns, p.sha256, w, h))
            if p.cand.old_id is None:
                report.added += 1
            else:
                report.updated += 1

        dim = self.vectors.dim
        matrix = np.zeros((len(new), dim), dtype=np.float32)
        if to_encode:
            import torch

            pixels = torch.stack([px for _, px in to_encode])
            encoded = self.encoder.encode_pixels(pixels)
            for (pos, _), vec in zip(to_encode, encoded, strict=True):
                matrix[pos] = vec
        for pos, vec in encoded_elsewhere:
            matrix[pos] = vec
        for pos, donor in copy_from:
            vec = self.catalog.vector(donor)
            if vec is not None:
                matrix[pos] = vec

        styles = self._styles(matrix) if self._styles is not None and new else None
        ids = self.catalog.commit_batch(
            new,
            matrix,
            remove_ids=remove_ids,
            moves=moves,
            clear_error_paths=ok_paths,
            errors=errors,
            styles=styles,
        )
        if remove_ids:
            self.vectors.remove(np.asarray(remove_ids, dtype=np.int64))
        self.vectors.add(np.asarray(ids, dtype=np.int64), matrix)
        report.failed += len(errors)
        report.errors.extend(errors)
        self.progress.advance(len(batch))


def prepare_candidate(
    cand: _Candidate, encoder: Encoder, draft: bool, gone_shas: Container[str]
) -> _Prepared:
    """Read, hash, decode and preprocess one file; never raises for a bad file.

    A file whose bytes belong to a gone record is only hashed: its vector is already stored.
    """
    path = cand.found.path
    out = _Prepared(cand)
    try:
        data, st = read_file(path)
        if (st.st_size, st.st_mtime_ns) != (cand.found.size, cand.found.mtime_ns):
            # Rewritten since the walk: record the size and time of the bytes we encode.
            found = replace(cand.found, size=st.st_size, mtime_ns=st.st_mtime_ns)
            out.cand = _Candidate(found, cand.old_id)
        out.sha256 = hashlib.sha256(data).hexdigest()
        if out.sha256 in gone_shas:
            return out
        draft_size = 2 * encoder.image_size if draft else None
        img, (out.width, out.height) = decode_image_sized(data, path, draft_size=draft_size)
        out.pixels = encoder.preprocess(img)
    except ImageReadError as e:
        out.error = e.reason
    except ClipsearchError:
        raise
    except Exception as e:  # a preprocessing bug must not abort hours of indexing
        out.error = f"cannot preprocess image: {type(e).__name__}: {e}"
    return out


def _under(rel: str, prefix: str) -> bool:
    return not prefix or rel.startswith(prefix)


def check_roots(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Absolute folder paths for the given arguments, refusing ones that are not folders."""
    from clipsearch.errors import ClipsearchError as _E

    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.exists():
            raise _E(f"{raw}: no such folder")
        if not p.is_dir():
            raise _E(f"{raw}: is a file; clipsearch index takes folders")
        if not os.access(p, os.R_OK | os.X_OK):
            raise _E(f"{raw}: folder is not readable (permission denied)")
        resolved = p.resolve()
        if resolved not in out:
            out.append(resolved)
    return out
