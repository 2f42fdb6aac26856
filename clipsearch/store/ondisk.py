"""Inverted lists in a file: the ``ivf-ondisk`` vector index, for collections larger than RAM.

An IVF index keeps, for each of its k-means cells ("lists"), the ids and exact vectors that
fall in that cell, and a query scans the few lists nearest to it. Here the lists live in a
file of their own, written once and memory-mapped read-only, so RAM holds the cell centroids
(``4 * dim * nlist`` bytes: 8 MiB for 4096 lists of 512-d) and whatever part of the file the
page cache keeps. In the index folder:

    vectors.faiss             the FAISS head (the centroids and where each list lies in the
                              lists file, FAISS's OnDiskInvertedLists record), followed by the
                              *delta*: the lists of vectors added since the lists file was
                              written (serialized ArrayInvertedLists)
    vectors.<token>.ivfdata   the lists, each one its vectors then its ids; never modified

The head names its lists file by base name only and the file is opened next to vectors.faiss,
so the folder can be moved or copied. The lists file is never written in place (FAISS would
reuse freed space that an older vectors.faiss still points at): vectors added later go to the
delta, which lives in RAM and is saved inside vectors.faiss, and removed ones become tombstones
(:class:`~clipsearch.store.vectors.VectorIndex` keeps those). When the delta or the tombstones grow
past their limits, a save first writes a new lists file under a new token (base + delta -
tombstones, fsynced), then replaces vectors.faiss atomically, and deletes the old file only
after that, so vectors.faiss always names a lists file that exists and is complete.

Building never holds more than one shard of vectors in memory: the centroids are trained on a
sample, the stored vectors are streamed into in-RAM shards of :data:`SHARD_SIZE` vectors, each
shard is written to disk, and the shards are merged list by list into the lists file.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from clipsearch.errors import ClipsearchError

LISTS_SUFFIX = ".ivfdata"
SHARD_SIZE = 100_000  # vectors per shard while building: ~200 MB of 512-d vectors in RAM
DELTA_MAX = 50_000  # vectors kept in RAM beyond the lists file (~100 MB of 512-d) ...
DELTA_SHARE = 0.1  # ... or this share of the lists file, if smaller,
DELTA_MIN = 1_000  # but never fewer: a small collection is not rewritten on every save


def _faiss():
    import faiss

    return faiss


def lists_file_name() -> str:
    """A fresh name for a lists file: a new token each time, never reused."""
    return f"vectors.{secrets.token_hex(6)}{LISTS_SUFFIX}"


def delta_limit(base: int) -> int:
    """How many vectors may wait in the delta before a save merges them into the lists file."""
    return int(min(DELTA_MAX, max(DELTA_MIN, DELTA_SHARE * base)))


class OnDiskIVF:
    """An IVF-Flat inner-product index whose lists are in a memory-mapped file, with a delta
    of newer vectors in RAM.

    It offers what :class:`~clipsearch.store.vectors.VectorIndex` asks of a FAISS index (``d``,
    ``ntotal``, ``search`` with ``SearchParametersIVF``, ``add_with_ids``); it cannot remove
    ids (tombstones do). Search results equal those of one IVF index over all the vectors: the
    two parts share the coarse quantizer, so they scan the same lists.

    Args:
        head: a trained FAISS ``IndexIVFFlat``: its lists are the base (mapped from a file, or
            empty in RAM for an index that was never written).
        delta_lists: the lists of the delta (``ArrayInvertedLists``); empty when not given.
        lists_path: the file the base lists are mapped from.
    """

    def __init__(
        self, head: object, delta_lists: object | None = None, lists_path: Path | None = None
    ):
        faiss = _faiss()
        self.head = head
        self.ivf = faiss.extract_index_ivf(head)
        self.lists_path = lists_path
        self.d = int(head.d)
        nlist, code_size = int(self.ivf.nlist), int(self.ivf.code_size)
        if delta_lists is None:
            delta_lists = faiss.ArrayInvertedLists(nlist, code_size)
        delta = faiss.IndexIVFFlat(self.ivf.quantizer, self.d, nlist, faiss.METRIC_INNER_PRODUCT)
        delta.replace_invlists(delta_lists, True)
        delta_lists.thisown = False  # the delta index frees it
        delta.ntotal = delta_lists.compute_ntotal()
        self.delta = delta
        self._fd: int | None = None  # the lists file, to ask the kernel to read lists ahead
        self._spans: list[tuple[int, int]] = []  # (offset, bytes) of each list
        self._address = 0  # where the file is mapped
        lists = _ondisk_lists(self.ivf)
        if lists is not None and lists.totsize:
            self._spans = _list_spans(lists)
            if self._spans:
                self._fd = os.open(lists.filename, os.O_RDONLY)
                weakref.finalize(self, os.close, self._fd)
                self._address = int(faiss.rev_swig_ptr(lists.ptr, 1).ctypes.data)

    # --- what VectorIndex uses --------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        return int(self.head.ntotal) + int(self.delta.ntotal)

    @property
    def base_count(self) -> int:
        """Vectors in the lists file."""
        return int(self.head.ntotal)

    @property
    def delta_count(self) -> int:
        """Vectors added since the lists file was written (held in RAM)."""
        return int(self.delta.ntotal)

    @property
    def nlist(self) -> int:
        return int(self.ivf.nlist)

    @property
    def nprobe(self) -> int:
        return int(self.ivf.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self.ivf.nprobe = self.delta.nprobe = int(value)

    def add_with_ids(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self.delta.add_with_ids(
            np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, np.int64)
        )

    def ids(self) -> np.ndarray:
        """Every id in the lists file and the delta."""
        parts = [_list_ids(self.ivf.invlists), _list_ids(self.delta.invlists)]
        return np.concatenate(parts)

    def search(
        self, x: np.ndarray, k: int, params: object | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's ``search``: (scores, ids) of the k best per query, -1 where none is left."""
        faiss = _faiss()
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.d)
        n = len(x)
        if params is None:
            params = faiss.SearchParametersIVF(nprobe=self.nprobe)
        nprobe = max(1, min(self.nlist, int(params.nprobe) or self.nprobe))
        params.nprobe = nprobe
        parts = [p for p in (self.ivf, self.delta) if p.ntotal > 0]
        if not parts or n == 0:
            none = np.full((n, k), -np.finfo(np.float32).max, dtype=np.float32)
            return none, np.full((n, k), -1, dtype=np.int64)
        # One coarse assignment for both parts.
        coarse_d, coarse_i = self.ivf.quantizer.search(x, nprobe)
        if self._fd is not None and self.head.ntotal:
            self._read_ahead(coarse_i)
        found = []
        for part in parts:
            d_out, i_out = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
            part.search_preassigned_c(
                n,
                faiss.swig_ptr(x),
                k,
                faiss.swig_ptr(coarse_i),
                faiss.swig_ptr(coarse_d),
                faiss.swig_ptr(d_out),
                faiss.swig_ptr(i_out),
                False,
                params,
            )
            found.append((d_out, i_out))
        if len(found) == 1:
            return found[0]
        both_d = np.concatenate([f[0] for f in found], axis=1)
        both_i = np.concatenate([f[1] for f in found], axis=1)
        order = np.argsort(-both_d, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(both_d, order, 1), np.take_along_axis(both_i, order, 1)

    def _read_ahead(self, probed: np.ndarray) -> None:
        """Ask the kernel for every probed list that is not in the page cache, all at once:
        the reads overlap instead of waiting one page fault at a time (much faster on a cold
        cache, benchmarks/RESULTS.md). Cached lists are skipped: the kernel would look up each
        of their pages, a sizeable share of a warm query's scan."""
        for j in set(probed.ravel().tolist()) - {-1}:
            offset, nbytes = self._spans[j]
            if nbytes and not _resident(self._address + offset, nbytes):
                os.posix_fadvise(self._fd, offset, nbytes, os.POSIX_FADV_WILLNEED)

    # --- files ------------------------------------------------------------------------------

    def needs_merge(self, folder: Path) -> bool:
        """Whether saving into ``folder`` must first write a new lists file: there is none
        there yet, or the delta has outgrown :func:`delta_limit`."""
        path = self.lists_path
        if path is None or not path.is_file() or not _same_dir(path.parent, folder):
            return True
        return self.delta_count > delta_limit(self.base_count)

    def merged(self, folder: Path, drop: np.ndarray | None = None) -> OnDiskIVF:
        """A new index over a new lists file in ``folder``: this one's lists and delta, less
        the ids in ``drop``, with an empty delta. This index stays usable."""
        sources = [self.ivf.invlists, self.delta.invlists]
        return _write_index(self.ivf, sources, folder / lists_file_name(), drop)

    def to_bytes(self) -> np.ndarray:
        """vectors.faiss: the FAISS head, naming its lists file by base name, then the delta."""
        faiss = _faiss()
        lists = _ondisk_lists(self.ivf)
        if lists is None or self.lists_path is None:
            raise ValueError("this index has no lists file yet: merge it into a folder first")
        full = lists.filename
        lists.filename = self.lists_path.name
        try:
            head = faiss.serialize_index(self.head)
        finally:
            lists.filename = full
        writer = faiss.VectorIOWriter()
        faiss.write_InvertedLists(self.delta.invlists, writer)
        return np.concatenate([head, faiss.vector_to_array(writer.data)])

    @classmethod
    def from_bytes(cls, raw: np.ndarray, folder: Path) -> OnDiskIVF:
        """Read vectors.faiss bytes and map their lists file from ``folder``, read-only.

        Raises:
            ValueError: these bytes are not an on-disk IVF index.
            FileNotFoundError: the lists file is not in ``folder``.
        """
        faiss = _faiss()
        reader = faiss.VectorIOReader()
        faiss.copy_array_to_vector(np.ascontiguousarray(raw, dtype=np.uint8), reader.data)
        # SKIP_IVF_DATA: read the record of the lists without opening the file it names.
        head = faiss.read_index(reader, faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY)
        ivf = faiss.try_extract_index_ivf(head)
        lists = _ondisk_lists(ivf) if ivf is not None else None
        if lists is None:
            raise ValueError("not an on-disk IVF index")
        delta = faiss.read_InvertedLists(reader) if reader.rp < reader.data.size() else None
        path = folder / Path(lists.filename).name
        if not path.is_file():
            raise FileNotFoundError(f"lists file {path} is missing")
        if os.path.getsize(path) < lists.totsize:
            raise ValueError(f"lists file {path} is shorter than its index says")
        lists.filename = str(path)
        lists.read_only = True
        if lists.totsize:
            lists.do_mmap()
        return cls(head, delta, path)

    @classmethod
    def build(
        cls,
        trained: object,
        blocks: Iterable[tuple[np.ndarray, np.ndarray]],
        folder: Path | None = None,
        shard_size: int | None = None,
        count: int | None = None,
    ) -> OnDiskIVF:
        """An index of every (ids, vectors) block, built shard by shard into a lists file.

        Args:
            trained: an empty trained IVF-Flat index (the coarse quantizer).
            blocks: the vectors, streamed.
            folder: where the lists file goes (it is published by the next save of the index
                there); None: a private temporary folder, unlinked once the file is mapped.
            shard_size: vectors per shard held in RAM (default :data:`SHARD_SIZE`).
            count: how many vectors ``blocks`` holds, to check the disk space first.

        Raises:
            ClipsearchError: the disk has no room for the shards and the lists file.
        """
        if folder is None:
            with tempfile.TemporaryDirectory(prefix="clipsearch-vectors-") as tmp:
                return cls.build(trained, blocks, Path(tmp), shard_size, count)
        faiss = _faiss()
        need = 2 * (count or 0) * (int(faiss.extract_index_ivf(trained).code_size) + 8)
        if need > shutil.disk_usage(folder).free:  # the shards, then the lists file
            raise no_room(folder, need)
        shard_size = shard_size or SHARD_SIZE
        name = lists_file_name()
        work = folder / (name.removesuffix(LISTS_SUFFIX) + ".build")
        work.mkdir()
        try:
            shards = []  # each holds its lists, mapped from its shard file (the last in RAM)
            shard = faiss.clone_index(trained)
            for ids, vecs in blocks:
                shard.add_with_ids(
                    np.ascontiguousarray(vecs, dtype=np.float32),
                    np.ascontiguousarray(ids, dtype=np.int64),
                )
                if shard.ntotal >= shard_size:
                    path = work / f"shard{len(shards):05d}.faiss"
                    faiss.write_index(shard, str(path))
                    del shard
                    shards.append(faiss.read_index(str(path), faiss.IO_FLAG_MMAP))
                    shard = faiss.clone_index(trained)
            shards.append(shard)
            sources = [faiss.extract_index_ivf(s).invlists for s in shards]
            return _write_index(faiss.extract_index_ivf(trained), sources, folder / name, None)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def no_room(folder: Path, nbytes: int) -> ClipsearchError:
    return ClipsearchError(
        f"not enough disk space in {folder} for the vector index's lists file "
        f"({nbytes / 2**30:.1f} GiB); free some space and run the command again"
    )


def remove_unused_lists(folder: Path, keep: Path | None) -> None:
    """Delete lists files and build folders of ``folder`` other than ``keep``: replaced ones,
    and those of builds that were interrupted. Only the writer calls this, after it saved."""
    for path in folder.glob(f"vectors.*{LISTS_SUFFIX}"):
        if keep is None or path.name != keep.name:
            path.unlink(missing_ok=True)
    for path in folder.glob("vectors.*.build"):
        shutil.rmtree(path, ignore_errors=True)


def _write_index(template: object, sources: list, path: Path, drop: np.ndarray | None) -> OnDiskIVF:
    """Merge the lists of ``sources`` (less ``drop``) into a new lists file at ``path``, and
    an index head over it with the centroids of ``template``."""
    faiss = _faiss()
    lists, total = _write_lists(path, sources, int(template.nlist), int(template.code_size), drop)
    quantizer = faiss.clone_index(template.quantizer)
    head = faiss.IndexIVFFlat(quantizer, int(template.d), int(template.nlist), template.metric_type)
    head.own_fields = True
    quantizer.thisown = False
    head.replace_invlists(lists, True)
    lists.thisown = False
    head.ntotal = total
    head.nprobe = template.nprobe
    return OnDiskIVF(head, None, path)


def _write_lists(
    path: Path, sources: list, nlist: int, code_size: int, drop: np.ndarray | None
) -> tuple[object, int]:
    """Write the lists of every source, list after list, into a new file (FAISS's
    OnDiskInvertedLists layout, each list exactly its size); fsync it and its folder.

    Returns the mapped lists (read-only from now on) and how many vectors they hold.
    """
    faiss = _faiss()
    drop = None if drop is None or len(drop) == 0 else np.unique(np.asarray(drop, np.int64))
    keep: dict[tuple[int, int], np.ndarray] = {}  # (source, list) -> mask, where drop hits
    sizes = np.zeros(nlist, dtype=np.uint64)
    for s, src in enumerate(sources):
        for j in range(nlist):
            n = src.list_size(j)
            if n and drop is not None:
                mask = ~_members(faiss.rev_swig_ptr(src.get_ids(j), n), drop)
                if not mask.all():
                    keep[s, j] = mask
                    n = int(mask.sum())
            sizes[j] += n
    total = int(sizes.sum())
    nbytes = total * (code_size + 8)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        if nbytes:  # allocated now: a full disk fails here, not as a SIGBUS while writing
            try:
                os.posix_fallocate(fd, 0, nbytes)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise no_room(path.parent, nbytes) from None
                os.ftruncate(fd, nbytes)  # a file system that cannot allocate ahead
        lists = faiss.OnDiskInvertedLists(nlist, code_size, str(path))
        lists.set_all_lists_sizes(faiss.swig_ptr(sizes))
        lists.totsize = nbytes
        if nbytes:
            lists.do_mmap()
            for j in range(nlist):
                at = 0
                for s, src in enumerate(sources):
                    n = src.list_size(j)
                    if not n:
                        continue
                    mask = keep.get((s, j))
                    if mask is None:
                        lists.update_entries(j, at, n, src.get_ids(j), src.get_codes(j))
                        at += n
                        continue
                    ids = faiss.rev_swig_ptr(src.get_ids(j), n)[mask]
                    codes = faiss.rev_swig_ptr(src.get_codes(j), n * code_size)
                    codes = np.ascontiguousarray(codes.reshape(n, code_size)[mask])
                    if len(ids):
                        ids = np.ascontiguousarray(ids)
                        lists.update_entries(
                            j, at, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(codes)
                        )
                        at += len(ids)
        os.fsync(fd)  # the pages written through the mapping, before anything names the file
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)
    _fsync_dir(path.parent)
    lists.read_only = True
    return lists, total


def _list_spans(lists: object) -> list[tuple[int, int]]:
    """(offset, bytes) of each list in the file, as :func:`_write_lists` lays them out (one
    after the other, each exactly its size); empty when the file is laid out otherwise."""
    entry = int(lists.code_size) + 8
    sizes = np.fromiter((lists.list_size(j) for j in range(lists.nlist)), np.int64, lists.nlist)
    nbytes = sizes * entry
    offsets = np.concatenate([[0], np.cumsum(nbytes)[:-1]])
    if int(nbytes.sum()) != int(lists.totsize):
        return []
    for j in np.flatnonzero(sizes)[[0, -1]] if sizes.any() else ():
        one = lists.lists.at(int(j))
        if (one.offset, one.capacity) != (offsets[j], sizes[j]):
            return []
    return list(zip(offsets.tolist(), nbytes.tolist(), strict=True))


_PAGE = os.sysconf("SC_PAGE_SIZE")
_libc = ctypes.CDLL(None, use_errno=True)
_libc.mincore.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p)
_libc.mincore.restype = ctypes.c_int


_pages = np.empty(0, dtype=np.uint8)  # mincore's answer; shared: a race only costs a read-ahead
_pages_at = 0


def _resident(address: int, nbytes: int) -> bool:
    """Whether every page of a mapped range is in memory (``mincore``: it reads our page
    tables, so a range we scanned before costs next to nothing)."""
    global _pages, _pages_at
    start = address - address % _PAGE
    length = address + nbytes - start
    count = (length + _PAGE - 1) // _PAGE
    if len(_pages) < count:
        _pages = np.empty(2 * count, dtype=np.uint8)
        _pages_at = _pages.ctypes.data
    if _libc.mincore(start, length, _pages_at) != 0:
        return False
    return bool((_pages[:count] & 1).all())


def _members(ids: np.ndarray, sorted_drop: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_drop, ids)
    pos[pos == len(sorted_drop)] = 0
    return sorted_drop[pos] == ids


def _list_ids(invlists: object) -> np.ndarray:
    faiss = _faiss()
    parts = [
        faiss.rev_swig_ptr(invlists.get_ids(j), invlists.list_size(j)).copy()
        for j in range(invlists.nlist)
        if invlists.list_size(j)
    ]
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def _ondisk_lists(ivf: object) -> object | None:
    faiss = _faiss()
    lists = faiss.downcast_InvertedLists(ivf.invlists)
    return lists if isinstance(lists, faiss.OnDiskInvertedLists) else None


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
