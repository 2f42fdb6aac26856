"""Near-duplicate images: groups of files with the same content or nearly the same vector.

Files whose bytes hash alike are joined first; then every pair of images at cosine similarity
at least the threshold (re-encodes, resizes, crops, small edits, bursts) joins their groups
(union-find). The pairs come from the vector index itself, by a k-nearest-neighbour self-join:
every stored vector is searched in batches for its ``k`` nearest neighbours, and the rows whose
``k``-th neighbour still reaches the threshold are searched again with a larger ``k``. This
works for every index type through :meth:`VectorIndex.search` (FAISS has no range search for
HNSW); it is exact for ``flat`` and has the recall of the index type otherwise. Each batch's
pairs are joined into the groups in NumPy and dropped, and ``k`` stops growing at
:data:`MAX_K`, so memory stays bounded by the batch whatever the threshold. Nothing is ever
deleted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsearch.errors import QueryError

if TYPE_CHECKING:  # the CLI imports this module for its defaults: keep it light
    from clipsearch.store.catalog import Catalog, StoredImage
    from clipsearch.store.vectors import VectorIndex

DEFAULT_THRESHOLD = 0.95
FIRST_K = 16  # neighbours asked for first; rows that need more ask again with GROW times as many
GROW = 4
BATCH = 1024  # query vectors per FAISS call
MAX_K = 4096  # neighbours per image at most (bounds the memory of a batch)

SAME_CONTENT = "same content"
SIMILAR = "similar"


@dataclass(frozen=True)
class DuplicateMember:
    """One image of a group.

    ``similarity`` is its cosine similarity to the group's first member, the one to keep
    (1.0 for that one); ``same_content`` tells whether its bytes hash like the kept file's.
    """

    id: int
    path: str
    width: int
    height: int
    size: int
    mtime_ns: int
    similarity: float
    same_content: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "path": self.path,
            "width": self.width,
            "height": self.height,
            "size": self.size,
            "mtime": self.mtime_ns / 1e9,
            "similarity": round(self.similarity, 6),
            "same_content": self.same_content,
        }


@dataclass(frozen=True)
class DuplicateGroup:
    """Near-identical images, the one to keep first (largest resolution, then oldest photo).

    ``reason`` is ``"same content"`` when every file has the same bytes, else ``"similar"``;
    ``min_similarity`` and ``max_similarity`` bound the other members' similarity to the kept
    one.
    """

    members: tuple[DuplicateMember, ...]
    reason: str
    min_similarity: float
    max_similarity: float

    @property
    def keep(self) -> DuplicateMember:
        return self.members[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "min_similarity": round(self.min_similarity, 6),
            "max_similarity": round(self.max_similarity, 6),
            "members": [m.to_dict() for m in self.members],
        }


def check_threshold(threshold: float) -> float:
    """The threshold as a float in (0, 1].

    Raises:
        QueryError: it is not a number in (0, 1].
    """
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise QueryError(f"threshold must be a number in (0, 1], not {threshold!r}") from None
    if not (0.0 < value <= 1.0) or math.isnan(value):
        raise QueryError(f"threshold must be in (0, 1] (a cosine similarity), not {threshold}")
    return value


def iter_pairs(
    index: VectorIndex,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    threshold: float,
    allowed: np.ndarray | None = None,
    *,
    first_k: int = FIRST_K,
    max_k: int = MAX_K,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pairs of indexed vectors at cosine similarity at least ``threshold``, batch by batch.

    Args:
        index: the vector index to search.
        blocks: (ids, unit vectors) of the images to pair up, the same ones the index holds
            (or those of ``allowed``), in blocks of any size.
        threshold: the least cosine similarity of a pair.
        allowed: only these ids may be paired (a path filter); None: any.
        first_k: neighbours asked for at first.
        max_k: neighbours asked for at most: an image with more near-identical neighbours
            than that is paired with the ``max_k`` nearest (which keeps memory bounded; its
            group is joined through them all the same).

    Yields:
        (a, b, score) arrays of one batch; a pair may come twice, once from each end.
    """
    for ids, vecs in _rebatch(blocks, BATCH):
        yield _pairs_of_batch(index, ids, vecs, threshold, allowed, first_k, max_k)


def similar_pairs(
    index: VectorIndex,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    threshold: float,
    allowed: np.ndarray | None = None,
    *,
    first_k: int = FIRST_K,
    max_k: int = MAX_K,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of :func:`iter_pairs` in arrays, each pair once with ``a < b`` and its best
    score (all in memory: :func:`find_duplicates` joins them batch by batch instead)."""
    found = list(iter_pairs(index, blocks, threshold, allowed, first_k=first_k, max_k=max_k))
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    a = np.concatenate([f[0] for f in found])
    b = np.concatenate([f[1] for f in found])
    s = np.concatenate([f[2] for f in found])
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((-s, hi, lo))
    lo, hi, s = lo[order], hi[order], s[order]
    first = np.ones(len(lo), dtype=bool)
    first[1:] = (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])
    return lo[first], hi[first], s[first]


def _pairs_of_batch(
    index: VectorIndex,
    ids: np.ndarray,
    vecs: np.ndarray,
    threshold: float,
    allowed: np.ndarray | None,
    k: int,
    max_k: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pairs of one batch of query vectors, growing k for the rows that need it."""
    out_a, out_b, out_s = [], [], []
    rows = np.arange(len(ids))
    limit = min(max(index.ntotal, 1), max_k)
    while len(rows):
        k = min(k, limit)
        scores, nbrs = index.search(vecs[rows], k, allowed)
        hit = (scores >= threshold) & (nbrs >= 0) & (nbrs != ids[rows, None])
        r, c = np.nonzero(hit)
        out_a.append(ids[rows][r])
        out_b.append(nbrs[r, c])
        out_s.append(scores[r, c].astype(np.float32))
        # A full row whose last neighbour still reaches the threshold may have more.
        more = (nbrs[:, -1] >= 0) & (scores[:, -1] >= threshold)
        if k >= limit or not more.any():
            break
        rows, k = rows[more], k * GROW
        out_a, out_b, out_s = _drop_rows(out_a, out_b, out_s, ids[rows])
    return np.concatenate(out_a), np.concatenate(out_b), np.concatenate(out_s)


def _drop_rows(
    a: list[np.ndarray], b: list[np.ndarray], s: list[np.ndarray], again: np.ndarray
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Forget what the rows searched again found so far: the wider search finds it again."""
    aa, bb, ss = np.concatenate(a), np.concatenate(b), np.concatenate(s)
    keep = ~np.isin(aa, again)
    return [aa[keep]], [bb[keep]], [ss[keep]]


def _rebatch(
    blocks: Iterable[tuple[np.ndarray, np.ndarray]], size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for ids, vecs in blocks:
        for start in range(0, len(ids), size):
            yield ids[start : start + size], vecs[start : start + size]


class Components:
    """Connected groups of ids, joined pair by pair in NumPy (a union-find whose every label
    points at the least position of its group), so millions of pairs never meet a Python
    loop and none of them is kept.

    Args:
        ids: every id that may be joined.
    """

    def __init__(self, ids: np.ndarray):
        self.ids = np.unique(np.asarray(ids, dtype=np.int64))
        self.labels = np.arange(len(self.ids))

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        """Put ``a[i]`` and ``b[i]`` in one group, for every i (ids outside are ignored)."""
        pa, pb = self._positions(a, b)
        labels = self.labels
        while len(pa):
            ra, rb = labels[pa], labels[pb]
            apart = ra != rb
            if not apart.any():
                break
            pa, pb, ra, rb = pa[apart], pb[apart], ra[apart], rb[apart]
            low = np.minimum(ra, rb)
            np.minimum.at(labels, ra, low)  # labels only decrease: no cycles
            np.minimum.at(labels, rb, low)
            while True:  # point every label at its group's least position
                flat = labels[labels]
                if np.array_equal(flat, labels):
                    break
                labels = flat
        self.labels = labels

    def _positions(self, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        if not len(self.ids):
            return np.empty(0, np.int64), np.empty(0, np.int64)
        pa = np.minimum(np.searchsorted(self.ids, a), len(self.ids) - 1)
        pb = np.minimum(np.searchsorted(self.ids, b), len(self.ids) - 1)
        known = (self.ids[pa] == a) & (self.ids[pb] == b)
        return pa[known], pb[known]

    def groups(self) -> list[list[int]]:
        """The groups of two or more ids, each sorted."""
        order = np.argsort(self.labels, kind="stable")
        labels = self.labels[order]
        starts = np.flatnonzero(np.r_[True, labels[1:] != labels[:-1]])
        sizes = np.diff(np.r_[starts, len(labels)])
        return [
            self.ids[order[s : s + n]].tolist() for s, n in zip(starts, sizes, strict=True) if n > 1
        ]


def group_ids(
    pairs: tuple[np.ndarray, np.ndarray],
    same_hash: Iterable[Sequence[int]] = (),
) -> list[list[int]]:
    """Connected groups of ids from pairs and from lists of ids with equal hashes; only groups
    of two or more."""
    hashed = [np.asarray(g, dtype=np.int64) for g in same_hash]
    comps = Components(np.concatenate([pairs[0], pairs[1], *hashed]).astype(np.int64))
    _join_same(comps, hashed)
    comps.join(pairs[0], pairs[1])
    return comps.groups()


def _join_same(comps: Components, groups: Iterable[np.ndarray]) -> None:
    for g in groups:
        comps.join(np.full(len(g) - 1, g[0]), g[1:])


def keep_order(image: StoredImage) -> tuple[int, float, str]:
    """Sort key that puts the image to keep first: the most pixels, then the oldest photo (the
    date it was taken where the catalog knows it, else the file's modification time), then
    the path."""
    taken = image.meta.taken
    return (
        -image.width * image.height,
        taken if taken is not None else image.mtime_ns / 1e9,
        image.path,
    )


def describe_group(
    records: Sequence[StoredImage], vectors: dict[int, np.ndarray]
) -> DuplicateGroup:
    """A group's result: members keep-first, with their similarity to the kept image."""
    ordered = sorted(records, key=keep_order)
    keeper = ordered[0]
    kv = vectors.get(keeper.id)
    members = []
    for rec in ordered:
        vec = vectors.get(rec.id)
        sim = 1.0
        if rec is not keeper:
            sim = float(vec @ kv) if vec is not None and kv is not None else 0.0
        members.append(
            DuplicateMember(
                id=rec.id,
                path=rec.path,
                width=rec.width,
                height=rec.height,
                size=rec.size,
                mtime_ns=rec.mtime_ns,
                similarity=min(sim, 1.0),
                same_content=rec.sha256 == keeper.sha256,
            )
        )
    others = [m.similarity for m in members[1:]]
    same = all(m.same_content for m in members)
    return DuplicateGroup(
        members=tuple(members),
        reason=SAME_CONTENT if same else SIMILAR,
        min_similarity=min(others),
        max_similarity=max(others),
    )


def group_order(group: DuplicateGroup) -> tuple[int, bool, str]:
    """Largest group first; same-content groups before similar ones of the same size."""
    return (-len(group.members), group.reason != SAME_CONTENT, group.keep.path)


def find_duplicates(
    catalog: Catalog,
    index: VectorIndex,
    threshold: float = DEFAULT_THRESHOLD,
    allowed: np.ndarray | None = None,
) -> list[DuplicateGroup]:
    """Groups of near-identical images of a catalog, largest first, the one to keep first.

    Args:
        catalog: the images, their hashes and their stored vectors.
        index: the catalog's vector index, up to date.
        threshold: the least cosine similarity that makes two images near-identical.
        allowed: only these ids (a path filter); None: every image.
    """
    threshold = check_threshold(threshold)
    comps = Components(catalog.ids() if allowed is None else allowed)
    _join_same(comps, [np.asarray(g) for g in catalog.same_content(allowed)])
    blocks = catalog.iter_vectors(None if allowed is None else allowed.tolist())
    for a, b, _ in iter_pairs(index, blocks, threshold, allowed):
        comps.join(a, b)
    groups = comps.groups()
    wanted = [i for g in groups for i in g]
    records = catalog.images(wanted)
    vectors: dict[int, np.ndarray] = {}
    for ids, vecs in catalog.iter_vectors(wanted):
        vectors.update(zip(ids.tolist(), vecs, strict=True))
    out = []
    for g in groups:
        present = [records[i] for i in g if i in records]  # a writer may have removed some
        if len(present) > 1:
            out.append(describe_group(present, vectors))
    return sorted(out, key=group_order)
