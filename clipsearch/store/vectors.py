"""The FAISS inner-product index over the catalog's image ids.

Vectors are unit length, so the inner product is the cosine similarity. The index is a
cache of the catalog's vectors: it is saved atomically (temp file, fsync, rename) with a small
JSON sidecar naming the catalog generation it reflects, and :meth:`VectorIndex.sync` brings a
stale one up to date from the catalog by id-set difference. The ``ivf-ondisk`` type keeps its
inverted lists in a memory-mapped file of their own (see :mod:`clipsearch.store.ondisk`).
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsearch.errors import ClipsearchError, CorruptIndexError
from clipsearch.store.fileio import atomic_write
from clipsearch.store.ondisk import OnDiskIVF, remove_unused_lists
from clipsearch.threads import FAISS, limit_threads

if TYPE_CHECKING:
    from clipsearch.store.catalog import Catalog

log = logging.getLogger(__name__)

INDEX_FILE = "vectors.faiss"
STATE_FILE = "vectors.json"
INDEX_TYPES = ("flat", "hnsw", "ivf", "ivfpq", "ivf-ondisk")
INDEX_CHOICES = ("auto", *INDEX_TYPES)
TOMBSTONE_TYPES = ("hnsw", "ivf-ondisk")  # types that hide removed ids instead of deleting them

# The `auto` policy (measured in benchmarks/RESULTS.md): exact search scans every vector, and
# up to FLAT_MAX it still answers well within an interactive query; past that a graph (HNSW)
# answers much faster at high recall but keeps the full vectors and its links in RAM (see
# IndexLayout.bytes_per_vector); when that does not fit the memory budget, IVF-PQ keeps
# 128-byte codes and re-ranks its candidates with the exact vectors of the catalog; when even
# that does not fit, `ivf-ondisk` keeps only the centroids in RAM and maps its inverted lists
# from a file (bench_vectors.py, bench_ondisk.py).
FLAT_MAX = 250_000
DEFAULT_BUDGET_FRACTION = 0.25  # of physical RAM, for the vector index
REBUILD_FRACTION = 0.1  # past this share of tombstones HNSW is rebuilt, a lists file rewritten
RERANK_FACTOR = 20  # IVF-PQ fetches this many candidates per result to re-rank exactly
SMALL_FILTER = 2000  # a filter this selective is answered exactly from the stored vectors


def _faiss():  # importing faiss is slow: only commands that search pay for it
    import faiss

    return faiss


@dataclass(frozen=True)
class IndexLayout:
    """A FAISS index type and its knobs.

    Args:
        type: ``flat`` (exact), ``hnsw`` (graph over the exact vectors), ``ivf`` (inverted
            lists over the exact vectors), ``ivfpq`` (inverted lists of product-quantized
            codes, re-ranked with the exact vectors from the catalog) or ``ivf-ondisk`` (as
            ``ivf``, with the lists in a memory-mapped file: only the centroids take RAM).
        m: HNSW links per node.
        ef_construction: HNSW candidates kept while inserting.
        ef_search: HNSW candidates kept while searching.
        nlist: IVF lists (k-means cells); trained on the stored vectors.
        nprobe: IVF lists scanned per query.
        pq_m: IVF-PQ sub-quantizers (bytes per vector at 8 bits).
        pq_bits: bits per sub-quantizer code.
    """

    type: str = "flat"
    m: int = 32
    ef_construction: int = 64
    ef_search: int = 256
    nlist: int = 0
    nprobe: int = 0
    pq_m: int = 0
    pq_bits: int = 8

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.type!r}; choose from {INDEX_TYPES}")

    @property
    def trained(self) -> bool:
        """Whether the layout needs training on sample vectors before the first add."""
        return self.type in ("ivf", "ivfpq", "ivf-ondisk")

    @property
    def ondisk(self) -> bool:
        """Whether the inverted lists live in their own file (:mod:`clipsearch.store.ondisk`)."""
        return self.type == "ivf-ondisk"

    def factory(self) -> str:
        return {
            "flat": "IDMap2,Flat",
            "hnsw": f"IDMap2,HNSW{self.m},Flat",
            "ivf": f"IVF{self.nlist},Flat",
            "ivfpq": f"IVF{self.nlist},PQ{self.pq_m}x{self.pq_bits}",
            "ivf-ondisk": f"IVF{self.nlist},Flat",
        }[self.type]

    def bytes_per_vector(self, dim: int) -> int:
        """Estimated RAM per vector, ids and bookkeeping included (``ivf-ondisk``: none; its
        lists file is read through the page cache, and vectors added since it was written
        wait in RAM, at most ``clipsearch.store.ondisk.DELTA_MAX`` of them)."""
        if self.type == "ivf-ondisk":
            return 0
        if self.type == "flat":
            return 4 * dim + 8 + 48  # vector, id map, reverse-map hash entry
        if self.type == "hnsw":
            return 4 * dim + 8 + 48 + 2 * self.m * 4 + self.m * 4 // 2  # + level 0 and upper links
        if self.type == "ivf":
            return 4 * dim + 8
        return (self.pq_m * self.pq_bits + 7) // 8 + 8

    def memory_bytes(self, n: int, dim: int) -> int:
        fixed = 4 * dim * self.nlist if self.trained else 0  # coarse centroids
        return n * self.bytes_per_vector(dim) + fixed

    def to_dict(self) -> dict[str, int | str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> IndexLayout:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def memory_budget() -> int:
    """The default RAM budget for the vector index: a quarter of physical memory."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(total * DEFAULT_BUDGET_FRACTION)


def plan_layout(
    n: int, dim: int, index_type: str = "auto", budget_bytes: int | None = None
) -> IndexLayout:
    """The layout for ``n`` vectors: the given type with knobs sized for ``n``, or for
    ``auto`` the fastest type that fits the memory budget.

    ``auto``: exact (``flat``) up to :data:`FLAT_MAX` vectors; above, ``hnsw`` when it fits
    ``budget_bytes`` (default :func:`memory_budget`), else ``ivfpq`` when that fits, else
    ``ivf-ondisk`` (only its centroids take RAM).
    """
    if index_type not in INDEX_CHOICES:
        raise ValueError(f"unknown index type {index_type!r}; choose from {INDEX_CHOICES}")
    n = max(int(n), 1)
    if index_type == "auto":
        budget = memory_budget() if budget_bytes is None else budget_bytes
        flat, hnsw = IndexLayout("flat"), IndexLayout("hnsw")
        if n <= FLAT_MAX and flat.memory_bytes(n, dim) <= budget:
            index_type = "flat"
        elif hnsw.memory_bytes(n, dim) <= budget:
            index_type = "hnsw"
        elif plan_layout(n, dim, "ivfpq").memory_bytes(n, dim) <= budget:
            index_type = "ivfpq"
        else:
            index_type = "ivf-ondisk"
    if not IndexLayout(index_type).trained:
        return IndexLayout(index_type)
    # ~4 sqrt(n) lists of at least ~39 training points each (FAISS's own rule of thumb),
    # a power of two; scanning 1/256 of the lists (at least 8) keeps recall@10 high on
    # embedding-like data (benchmarks/RESULTS.md).
    nlist = 1 << max(0, round(math.log2(4 * math.sqrt(n))))
    nlist = max(1, min(nlist, n // 39, 65536))
    nprobe = min(nlist, max(8, nlist // 256))
    if index_type in ("ivf", "ivf-ondisk"):
        return IndexLayout(index_type, nlist=nlist, nprobe=nprobe)
    pq_m = _pq_subquantizers(dim)
    pq_bits = 8 if n >= 256 * 39 else max(1, min(8, int(math.log2(n))))
    return IndexLayout("ivfpq", nlist=nlist, nprobe=nprobe, pq_m=pq_m, pq_bits=pq_bits)


def _pq_subquantizers(dim: int) -> int:
    """dim / 4 sub-quantizers (128 bytes for 512-d: half as many lose much recall@10 even
    after re-ranking, benchmarks/RESULTS.md), the largest divisor of dim up to that."""
    target = max(1, dim // 4)
    return next(m for m in range(target, 0, -1) if dim % m == 0)


class VectorIndex:
    """A FAISS inner-product index over image ids, of any :data:`INDEX_TYPES` layout.

    ``flat`` and ``hnsw`` wrap the FAISS index in ``IDMap2``; ``ivf``/``ivfpq`` keep the ids
    in their inverted lists; ``ivf-ondisk`` is a :class:`~clipsearch.store.ondisk.OnDiskIVF`. HNSW
    cannot delete, so removed ids become tombstones filtered at search time, and
    :meth:`compact` rebuilds the graph once they pass :data:`REBUILD_FRACTION`. ``ivf-ondisk``
    never changes its lists file either: its removed ids are tombstones too, and :meth:`save`
    writes a new lists file without them once they pass that share.

    Args:
        dim: vector width.
        index_type: the FAISS layout; ``flat`` is exact search.
        index: an existing FAISS index of that layout (a loaded file).
        layout: the knobs; defaults for ``index_type`` when not given.
        tombstones: ids removed from an HNSW graph or a lists file but still in it.
    """

    def __init__(
        self,
        dim: int,
        index_type: str = "flat",
        index: object | None = None,
        *,
        layout: IndexLayout | None = None,
        tombstones: Iterable[int] = (),
    ):
        layout = layout or IndexLayout(index_type)
        if layout.type != index_type:
            raise ValueError(f"layout {layout.type} given for index type {index_type}")
        faiss = _faiss()
        self.dim = dim
        self.layout = layout
        if index is None:
            if layout.trained:
                raise ValueError(f"a {index_type} index must be trained: use VectorIndex.create")
            index = faiss.index_factory(dim, layout.factory(), faiss.METRIC_INNER_PRODUCT)
            _configure(index, layout)
        self.index = index
        self.tombstones: set[int] = {int(i) for i in tombstones}
        self._tomb_sel: tuple[object, object] | None = None
        self._mmapped = False
        self.vector_source: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None
        """(ids) -> (ids, exact vectors) for those of them that exist: IVF-PQ re-ranks with it,
        and small filters are searched exactly with it. :meth:`build` and :func:`open_index`
        set it to the catalog's."""

    @property
    def index_type(self) -> str:
        return self.layout.type

    @property
    def exact(self) -> bool:
        return self.layout.type == "flat"

    @classmethod
    def create(
        cls, dim: int, layout: IndexLayout, training: np.ndarray | None = None
    ) -> VectorIndex:
        """An empty index of ``layout``; IVF layouts are trained on ``training`` vectors."""
        if not layout.trained:
            return cls(dim, layout.type, layout=layout)
        if training is None or len(training) == 0:
            raise ValueError(f"a {layout.type} index needs training vectors")
        faiss = _faiss()
        index = faiss.index_factory(dim, layout.factory(), faiss.METRIC_INNER_PRODUCT)
        training = np.ascontiguousarray(training, dtype=np.float32)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.min_points_per_centroid = 1  # small collections: no "too few points" warnings
        faiss.Clustering(dim, ivf.nlist, ivf.cp).train(training, ivf.quantizer)  # the cells
        if layout.type == "ivfpq":
            pq_index = faiss.downcast_index(index)
            pq_index.pq.cp.min_points_per_centroid = 1
            pq_index.do_polysemous_training = False  # only for Hamming filtering: unused, slow
        # The quantizer is trained, so this trains the PQ codebooks: many small k-means whose
        # threads mostly wait on each other, worse than one thread on a busy machine.
        with limit_threads(1, FAISS):
            index.train(training)
        _configure(index, layout)
        if layout.ondisk:  # no lists file yet: vectors go to the delta until the first save
            index = OnDiskIVF(index)
        return cls(dim, layout.type, index, layout=layout)

    @property
    def ntotal(self) -> int:
        """Vectors that searches can return (tombstones excluded)."""
        return int(self.index.ntotal) - len(self.tombstones)

    def ids(self) -> np.ndarray:
        faiss = _faiss()
        if isinstance(self.index, OnDiskIVF):
            ids = self.index.ids()
        elif self.layout.trained:
            invlists = faiss.extract_index_ivf(self.index).invlists
            parts = [
                faiss.rev_swig_ptr(invlists.get_ids(i), invlists.list_size(i)).copy()
                for i in range(invlists.nlist)
                if invlists.list_size(i)
            ]
            return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)
        else:
            ids = faiss.vector_to_array(self.index.id_map).astype(np.int64, copy=False)
        if self.tombstones:
            ids = ids[~np.isin(ids, np.fromiter(self.tombstones, np.int64))]
        return ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        self._ensure_owned()
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if self.layout.type in TOMBSTONE_TYPES:  # a graph or a lists file stays as is: hide them
            if isinstance(self.index, OnDiskIVF):
                stored = self.index.ids()
            else:
                stored = _faiss().vector_to_array(self.index.id_map)
            present = ids[np.isin(ids, stored)]
            fresh = {int(i) for i in present} - self.tombstones
            self.tombstones |= fresh
            self._tomb_sel = None
            return len(fresh)
        self._ensure_owned()
        return int(self.index.remove_ids(ids))

    @property
    def needs_compaction(self) -> bool:
        """Whether enough tombstones piled up that :meth:`compact` should rebuild (never for
        ``ivf-ondisk``: :meth:`save` drops them while it rewrites the lists file)."""
        if self.layout.ondisk:
            return False
        total = int(self.index.ntotal)
        return bool(self.tombstones) and len(self.tombstones) > REBUILD_FRACTION * total

    def compact(self, catalog: Catalog) -> None:
        """Rebuild a graph index without its tombstones, from the catalog's vectors."""
        if not self.tombstones:
            return
        fresh = VectorIndex.build(catalog, self.dim, self.layout)
        self.__dict__.update(fresh.__dict__)

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
        k = max(1, min(k, max(self.ntotal, 1)))
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            if not self.exact and self.vector_source is not None and len(allowed) <= SMALL_FILTER:
                return self._search_exact(queries, k, allowed)
        keep: list[object] = []  # SWIG selectors must outlive the search
        sel = None
        if allowed is not None:
            sel = faiss.IDSelectorBatch(allowed)
            keep.append(sel)
        if self.tombstones:
            sel = self._without_tombstones(sel, keep)
        share = 1.0 if allowed is None else max(len(allowed), 1) / max(self.ntotal, 1)
        fetch, rerank = k, False
        if self.layout.type == "flat":
            params = faiss.SearchParameters(sel=sel) if sel is not None else None
        elif self.layout.type == "hnsw":
            # A filter hides most nodes from the result list: widen the beam to match.
            ef = min(max(self.layout.ef_search, k, int(self.layout.ef_search / share)), 4096)
            params = faiss.SearchParametersHNSW(efSearch=ef, sel=sel)
        else:
            nlist = self.layout.nlist
            nprobe = min(nlist, max(self.layout.nprobe, math.ceil(self.layout.nprobe / share)))
            params = faiss.SearchParametersIVF(nprobe=nprobe, sel=sel)
            if self.layout.type == "ivfpq" and self.vector_source is not None:
                fetch = min(k * RERANK_FACTOR + 16, max(int(self.index.ntotal), 1))
                rerank = True
        # One query is latency-bound: extra OpenMP threads only add synchronisation cost.
        with limit_threads(1 if len(queries) == 1 else None, FAISS):
            scores, ids = self.index.search(queries, fetch, params=params)
        del keep
        if rerank:
            scores, ids = self._rerank(queries, ids, k)
        return scores, ids

    def _without_tombstones(self, sel: object | None, keep: list[object]) -> object:
        faiss = _faiss()
        if self._tomb_sel is None:
            batch = faiss.IDSelectorBatch(np.fromiter(self.tombstones, np.int64))
            self._tomb_sel = (batch, faiss.IDSelectorNot(batch))
        keep.append(self._tomb_sel)
        if sel is None:
            return self._tomb_sel[1]
        both = faiss.IDSelectorAnd(sel, self._tomb_sel[1])
        keep.append(both)
        return both

    def _rerank(self, queries: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, ...]:
        """Exact scores for approximate candidates, from the stored vectors."""
        assert self.vector_source is not None
        out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(queries), k), -1, dtype=np.int64)
        for row, (q, ids) in enumerate(zip(queries, cand, strict=True)):
            got, vecs = self.vector_source(ids[ids >= 0])
            if len(got) == 0:
                continue
            scores = vecs @ q
            order = np.lexsort((got, -scores))[:k]
            out_s[row, : len(order)], out_i[row, : len(order)] = scores[order], got[order]
        return out_s, out_i

    def _search_exact(
        self, queries: np.ndarray, k: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over a small allowed set, with the stored vectors."""
        assert self.vector_source is not None
        ids, vecs = self.vector_source(allowed)
        if self.tombstones and len(ids):
            live = ~np.isin(ids, np.fromiter(self.tombstones, np.int64))
            ids, vecs = ids[live], vecs[live]
        out_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_i = np.full((len(queries), k), -1, dtype=np.int64)
        if len(ids):
            scores = queries @ vecs.T
            for row in range(len(queries)):
                order = np.lexsort((ids, -scores[row]))[:k]
                out_s[row, : len(order)], out_i[row, : len(order)] = scores[row, order], ids[order]
        return out_s, out_i

    def _ensure_owned(self) -> None:
        """A memory-mapped index is read-only (FAISS aborts the process on a write): copy it
        into memory before the first change."""
        if self._mmapped:
            faiss = _faiss()
            self.index = faiss.deserialize_index(faiss.serialize_index(self.index))
            self._mmapped = False

    # --- persistence ------------------------------------------------------------------------

    def save(self, folder: Path, generation: int) -> None:
        """Write the index and its state atomically; a crash leaves the previous pair usable.

        An ``ivf-ondisk`` index first writes a new lists file when it has none in ``folder``,
        or when its delta or its tombstones outgrew their limits (:mod:`clipsearch.store.ondisk`).
        """
        for name in (INDEX_FILE, STATE_FILE):  # temp files of a writer that was killed
            for stale in folder.glob(f"{name}.*.tmp"):
                stale.unlink(missing_ok=True)
        lists_file = None
        if isinstance(self.index, OnDiskIVF):
            many_tombstones = len(self.tombstones) > REBUILD_FRACTION * int(self.index.ntotal)
            if many_tombstones or self.index.needs_merge(folder):
                drop = np.fromiter(self.tombstones, np.int64, len(self.tombstones))
                self.index = self.index.merged(folder, drop)
                self.tombstones = set()
                self._tomb_sel = None
            data = self.index.to_bytes()
            lists_file = self.index.lists_path
        else:
            data = _faiss().serialize_index(self.index)
        _atomic_write(folder / INDEX_FILE, data.tobytes())
        state = {
            "stamp": _file_stamp(folder / INDEX_FILE),
            "generation": generation,
            "ntotal": int(self.index.ntotal),  # tombstones included, as load() sees it
            "dim": self.dim,
            "index_type": self.index_type,
            "layout": self.layout.to_dict(),
            "tombstones": sorted(self.tombstones),
            "bytes": int(data.nbytes),
            "crc32": zlib.crc32(data),
        }
        if lists_file is not None:
            state["lists_file"] = lists_file.name
        _atomic_write(folder / STATE_FILE, json.dumps(state).encode())
        # Lists files that vectors.faiss no longer names: readers that mapped one keep it.
        remove_unused_lists(folder, lists_file)

    @classmethod
    def load(cls, folder: Path, dim: int, *, mmap: bool = False) -> tuple[VectorIndex, int | None]:
        """Load a saved index; returns it and the catalog generation it reflects (None when
        the state file does not vouch for this exact file).

        With ``mmap``, flat vectors are mapped from the file instead of copied into memory
        (fast start-up, pages shared between processes); the first change copies them in.
        The lists file of an ``ivf-ondisk`` index is always mapped, read-only.

        Raises:
            CorruptIndexError: the FAISS file is truncated, unreadable or of the wrong width,
                or the lists file it names is missing.
        """
        path = folder / INDEX_FILE
        state = _read_state(folder)
        ondisk_hint = bool(state) and (state.get("layout") or {}).get("type") == "ivf-ondisk"
        try:
            index, raw = _read_index_file(folder, mmap=mmap, ondisk_hint=ondisk_hint)
            layout = _layout_of(index)
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
        generation = None
        tombstones: list[int] = []
        if state and state.get("bytes") == raw.nbytes and state.get("ntotal") == index.ntotal:
            # A reader trusts the file that this state's save wrote (the same inode, size and
            # mtime); any other file, and every writer, pays for reading all its bytes.
            trusted = mmap and state.get("stamp") == _file_stamp(path)
            if not trusted and state.get("crc32") not in (None, zlib.crc32(raw)):
                # Damaged bytes, or a crash between the two renames of save(): the catalog
                # rebuilds it either way.
                log.warning(
                    "vector index %s does not match its checksum; rebuilding it from the catalog"
                    " (run `clipsearch repair` to save a good copy)",
                    path,
                )
                return cls(dim), None
            generation = int(state["generation"])
            if state.get("layout", {}).get("type") == layout.type:
                layout = IndexLayout.from_dict(state["layout"])
            tombstones = state.get("tombstones") or []
        elif layout.type in TOMBSTONE_TYPES:
            log.info("vector index %s: unknown tombstones; the catalog sync restores them", path)
        vi = cls(dim, layout.type, index, layout=layout, tombstones=tombstones)
        vi._mmapped = mmap and not layout.ondisk  # a lists file is never written: no copy
        return vi, generation

    @classmethod
    def build(
        cls,
        catalog: Catalog,
        dim: int,
        index_type: str | IndexLayout = "flat",
        *,
        budget_bytes: int | None = None,
        folder: Path | None = None,
    ) -> VectorIndex:
        """A fresh index of every vector in the catalog, with the catalog as its exact vector
        source.

        Args:
            catalog: where the vectors are stored.
            dim: their width.
            index_type: a type of :data:`INDEX_CHOICES` (sized for the catalog by
                :func:`plan_layout`) or an exact :class:`IndexLayout`.
            budget_bytes: the memory budget of ``auto``.
            folder: where ``ivf-ondisk`` writes its lists file, shard by shard: the index
                folder, where the next :meth:`save` publishes it. None: a private temporary
                folder (the file is mapped, then unlinked; a save copies it).

        Raises:
            ClipsearchError: ``ivf-ondisk`` finds no room on the disk for its files.
        """
        layout = index_type
        if not isinstance(layout, IndexLayout):
            layout = plan_layout(catalog.count(), dim, layout, budget_bytes)
        training = training_sample(catalog, layout) if layout.trained else None
        vi = cls.create(dim, layout, training)
        vi.vector_source = catalog_vectors(catalog)
        if isinstance(vi.index, OnDiskIVF):  # stream the vectors: never all of them in RAM
            del training
            count = catalog.count()
            vi.index = OnDiskIVF.build(vi.index.head, catalog.iter_vectors(), folder, count=count)
            return vi
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
            if vecs.shape[1] != self.dim:
                raise CorruptIndexError(
                    f"the catalog holds {vecs.shape[1]}-d vectors for a {self.dim}-d index; "
                    "run `clipsearch repair`"
                )
            self.add(ids, vecs)
            added += len(ids)
        return added, removed


def index_files_exist(folder: Path) -> bool:
    return (folder / INDEX_FILE).is_file()


def recorded_layout(catalog: Catalog) -> IndexLayout:
    """The layout the catalog records (``clipsearch reindex`` sets it; new indexes are flat)."""
    data = catalog.get_meta("index_layout")
    if data:
        return IndexLayout.from_dict(data)
    return IndexLayout(catalog.get_meta("index_type", "flat"))


def saved_index_is_current(folder: Path, catalog: Catalog) -> bool:
    """Whether the saved vector index reflects the catalog as it is now, in the layout it
    records, with no temp files of a killed writer beside it: a check without FAISS, so that a
    run that changed no ids can leave the file alone. Its bytes are checked when it loads."""
    state = _read_state(folder)
    if not state or state.get("generation") != catalog.generation():
        return False
    if (state.get("layout") or {}).get("type") != recorded_layout(catalog).type:
        return False
    try:
        if (folder / INDEX_FILE).stat().st_size != state.get("bytes"):
            return False
    except OSError:
        return False
    return not any(any(folder.glob(f"{n}.*.tmp")) for n in (INDEX_FILE, STATE_FILE))


def open_index(
    folder: Path, catalog: Catalog, dim: int, *, mmap: bool = True
) -> tuple[VectorIndex, int | None]:
    """The vector index of an index folder, ready to search and to sync.

    The saved file is used when it has the layout the catalog records; otherwise (missing,
    damaged, or left over from before a reindex) the index is rebuilt from the stored vectors.
    The catalog is attached as the exact vector source (re-ranking, small filters).

    Returns:
        The index and the catalog generation it reflects (None: sync it first).
    """
    layout = recorded_layout(catalog)
    vi: VectorIndex | None = None
    generation: int | None = None
    if index_files_exist(folder):
        vi, generation = VectorIndex.load(folder, dim, mmap=mmap and not layout.trained)
        if vi.index_type != layout.type:
            log.warning(
                "vector index %s is %s but the catalog records %s; rebuilding it",
                folder / INDEX_FILE,
                vi.index_type,
                layout.type,
            )
            vi = None
    if vi is None:
        if layout.trained or layout.type == "hnsw":
            generation = catalog.generation()  # before the build: a writer may commit during it
            # A writer (no mmap) builds a lists file into the folder, for its next save.
            vi = VectorIndex.build(catalog, dim, layout, folder=None if mmap else folder)
            return vi, generation
        vi, generation = VectorIndex(dim, layout.type, layout=layout), None
    vi.vector_source = catalog_vectors(catalog)
    return vi, generation


def rebuild_index(
    folder: Path,
    catalog: Catalog,
    dim: int,
    index_type: str | IndexLayout | None = None,
    *,
    budget_bytes: int | None = None,
) -> VectorIndex:
    """Build the vector index of an index folder afresh from the catalog, record its layout
    in the catalog and save it for the catalog's generation. The caller holds the write lock.

    Args:
        folder: the index folder.
        catalog: its catalog, the source of the vectors.
        dim: their width.
        index_type: as for :meth:`VectorIndex.build`; None: the layout the catalog records.
        budget_bytes: the memory budget of ``auto``.

    Returns:
        The new index, ready to search, with the catalog as its exact vector source.
    """
    generation = catalog.generation()
    layout = recorded_layout(catalog) if index_type is None else index_type
    vi = VectorIndex.build(catalog, dim, layout, budget_bytes=budget_bytes, folder=folder)
    catalog.set_meta(index_type=vi.layout.type, index_layout=vi.layout.to_dict())
    vi.save(folder, generation)
    return vi


def catalog_vectors(catalog: Catalog) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """(ids) -> (ids, vectors) of those ids the catalog stores."""

    def fetch(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        blocks = list(catalog.iter_vectors([int(i) for i in ids]))
        if not blocks:
            return np.empty(0, np.int64), np.empty((0, 0), np.float32)
        return np.concatenate([b[0] for b in blocks]), np.concatenate([b[1] for b in blocks])

    return fetch


def training_sample(catalog: Catalog, layout: IndexLayout, seed: int = 0) -> np.ndarray:
    """Stored vectors to train IVF cells and PQ codebooks on: 32 per cell, and enough for
    the PQ codebooks (2**bits centroids each), from a random sample of the ids."""
    ids = catalog.ids()
    want = max(layout.nlist * 32, (1 << layout.pq_bits) * 64 if layout.type == "ivfpq" else 0)
    if len(ids) > want:
        ids = np.random.default_rng(seed).choice(ids, size=want, replace=False)
    blocks = [vecs for _, vecs in catalog.iter_vectors(ids.tolist())]
    if not blocks:
        raise ValueError("no stored vectors to train the index on")
    return np.concatenate(blocks)


def _configure(index: object, layout: IndexLayout) -> None:
    faiss = _faiss()
    if layout.type == "hnsw":
        hnsw = faiss.downcast_index(index.index).hnsw  # type: ignore[attr-defined]
        hnsw.efConstruction = layout.ef_construction
        hnsw.efSearch = layout.ef_search
    elif layout.trained:
        faiss.extract_index_ivf(index).nprobe = layout.nprobe


def _layout_of(index: object) -> IndexLayout:
    """The layout of a FAISS index read from a file."""
    faiss = _faiss()
    if isinstance(index, OnDiskIVF):
        return IndexLayout("ivf-ondisk", nlist=index.nlist, nprobe=index.nprobe)
    if isinstance(index, (faiss.IndexIDMap2, faiss.IndexIDMap)):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSW):
            h = inner.hnsw
            return IndexLayout(
                "hnsw",
                m=int(h.nb_neighbors(1)),
                ef_construction=h.efConstruction,
                ef_search=h.efSearch,
            )
        if isinstance(inner, faiss.IndexFlat):
            return IndexLayout("flat")
    if isinstance(index, faiss.IndexIVFPQ):
        return IndexLayout(
            "ivfpq",
            nlist=index.nlist,
            nprobe=index.nprobe,
            pq_m=index.pq.M,
            pq_bits=index.pq.nbits,
        )
    if isinstance(index, faiss.IndexIVFFlat):
        return IndexLayout("ivf", nlist=index.nlist, nprobe=index.nprobe)
    raise ValueError(f"unsupported FAISS index {type(index).__name__}")


def _read_index_file(folder: Path, *, mmap: bool, ondisk_hint: bool) -> tuple[object, np.ndarray]:
    """The FAISS index in ``folder`` and the bytes it was read from.

    An ``ivf-ondisk`` head must be read without opening the lists file it names (FAISS would
    look for it in the current directory): the state file says when to expect one, and any
    other file that turns out to be one (a crash between the two renames of a reindex) is read
    again as one.
    """
    faiss = _faiss()
    path = folder / INDEX_FILE
    for attempt in range(3) if ondisk_hint else ():
        raw = np.fromfile(path, dtype=np.uint8)
        try:
            return OnDiskIVF.from_bytes(raw, folder), raw
        except FileNotFoundError:  # a writer replaced the lists file between our two reads
            if attempt == 2:
                raise
        except ValueError:
            break  # not an on-disk index after all
    raw = np.memmap(path, dtype=np.uint8, mode="r") if mmap else np.fromfile(path, np.uint8)
    try:
        if mmap:
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        else:
            index = faiss.deserialize_index(raw)
    except Exception as e:
        try:
            return OnDiskIVF.from_bytes(raw, folder), raw
        except Exception:
            raise e from None
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and isinstance(
        faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists
    ):
        del index, ivf  # mapped from the current directory by chance: map it from the folder
        return OnDiskIVF.from_bytes(raw, folder), raw
    return index, raw


def _file_stamp(path: Path) -> list[int] | None:
    """What identifies one written file: a rename keeps it, any rewrite or copy changes it."""
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def _read_state(folder: Path) -> dict | None:
    try:
        return json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


# Write failures a user can fix (room, quota, permissions, a read-only mount): one line.
_FIXABLE_WRITE_ERRORS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS}
)


def _atomic_write(path: Path, data: bytes) -> None:
    """:func:`clipsearch.store.fileio.atomic_write`, durable; a full disk, a quota or permissions
    raise a ClipsearchError, and the old file stays."""
    try:
        atomic_write(path, data)
    except OSError as e:
        if e.errno in _FIXABLE_WRITE_ERRORS:
            raise _write_error(path, len(data), e) from e
        raise


def _write_error(path: Path, nbytes: int, e: OSError) -> ClipsearchError:
    reason = e.strerror or str(e)
    return ClipsearchError(
        f"cannot write {path} ({nbytes / 2**20:.1f} MiB): {reason}; the previous file is kept "
        "and every image committed to the catalog stays there: make room or fix the "
        "permissions and run the same command again"
    )
