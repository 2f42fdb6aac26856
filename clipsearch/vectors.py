"""The FAISS inner-product index over the catalog's image ids.

Vectors are unit length, so the inner product is the cosine similarity. The index is a
cache of the catalog's vectors: it is saved atomically (temp file, fsync, rename) with a small
JSON sidecar naming the catalog generation it reflects, and :meth:`VectorIndex.sync` brings a
stale one up to date from the catalog by id-set difference.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import CorruptIndexError

if TYPE_CHECKING:
    from .catalog import Catalog

INDEX_FILE = "vectors.faiss"
STATE_FILE = "vectors.json"
INDEX_TYPES = ("flat",)


def _faiss():  # faiss costs ~0.3 s to import; only commands that search pay for it
    import faiss

    return faiss


class VectorIndex:
    """FAISS ``IDMap2,Flat`` index with cosine scores and deletions.

    Args:
        dim: vector width.
        index_type: the FAISS layout; ``flat`` is exact search.
    """

    def __init__(self, dim: int, index_type: str = "flat", index: object | None = None):
        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {index_type!r}; choose from {INDEX_TYPES}")
        faiss = _faiss()
        self.dim = dim
        self.index_type = index_type
        self.index = index or faiss.index_factory(dim, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def ids(self) -> np.ndarray:
        return _faiss().vector_to_array(self.index.id_map).astype(np.int64, copy=False)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        return int(self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def search(
        self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) per query; ids are -1 where fewer than k vectors qualify.

        Args:
            queries: (n, dim) float32 unit vectors.
            k: results per query.
            allowed: only these ids may be returned (a filter evaluated inside FAISS).
        """
        faiss = _faiss()
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(k, self.ntotal))
        params = None
        if allowed is not None:
            params = faiss.SearchParameters(
                sel=faiss.IDSelectorBatch(np.ascontiguousarray(allowed, dtype=np.int64))
            )
        # One query is latency-bound: extra OpenMP threads only add synchronisation cost.
        with _omp_threads(1 if len(queries) == 1 else None):
            scores, ids = self.index.search(queries, k, params=params)
        return scores, ids

    # --- persistence ------------------------------------------------------------------------

    def save(self, folder: Path, generation: int) -> None:
        """Write the index and its state atomically; a crash leaves the previous pair usable."""
        data = _faiss().serialize_index(self.index)
        _atomic_write(folder / INDEX_FILE, data.tobytes())
        state = {
            "generation": generation,
            "ntotal": self.ntotal,
            "dim": self.dim,
            "index_type": self.index_type,
            "bytes": int(data.nbytes),
        }
        _atomic_write(folder / STATE_FILE, json.dumps(state).encode())

    @classmethod
    def load(cls, folder: Path, dim: int) -> tuple[VectorIndex, int | None]:
        """Load a saved index; returns it and the catalog generation it reflects (None when
        the state file does not vouch for this exact file).

        Raises:
            CorruptIndexError: the FAISS file is truncated, unreadable or of the wrong width.
        """
        faiss = _faiss()
        path = folder / INDEX_FILE
        try:
            raw = np.fromfile(path, dtype=np.uint8)
            index = faiss.deserialize_index(raw)
        except Exception as e:
            raise CorruptIndexError(
                f"vector index {path} is unreadable ({type(e).__name__}); run `clipsearch repair`"
                " to rebuild it from the catalog"
            ) from e
        if index.d != dim:
            raise CorruptIndexError(
                f"vector index {path} holds {index.d}-d vectors but the catalog says {dim}; "
                "run `clipsearch repair`"
            )
        state = _read_state(folder)
        generation = None
        index_type = "flat"
        if state and state.get("bytes") == raw.nbytes and state.get("ntotal") == index.ntotal:
            generation = int(state["generation"])
            index_type = state.get("index_type", "flat")
        return cls(dim, index_type, index), generation

    @classmethod
    def build(cls, catalog: Catalog, dim: int, index_type: str = "flat") -> VectorIndex:
        """A fresh index of every vector in the catalog."""
        vi = cls(dim, index_type)
        for ids, vecs in catalog.iter_vectors():
            vi.add(ids, vecs)
        return vi

    def sync(self, catalog: Catalog) -> tuple[int, int]:
        """Add the catalog's vectors this index lacks and drop ids the catalog no longer has.

        Returns:
            (added, removed) counts.
        """
        have = self.ids()
        want = catalog.ids()
        missing = np.setdiff1d(want, have, assume_unique=True)
        extra = np.setdiff1d(have, want, assume_unique=True)
        removed = self.remove(extra)
        added = 0
        for ids, vecs in catalog.iter_vectors(missing.tolist()):
            self.add(ids, vecs)
            added += len(ids)
        return added, removed


def index_files_exist(folder: Path) -> bool:
    return (folder / INDEX_FILE).is_file()


def _read_state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _omp_threads(n: int | None) -> Iterator[None]:
    if n is None:
        yield
        return
    faiss = _faiss()
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
