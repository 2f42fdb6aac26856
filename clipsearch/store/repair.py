"""Checking an index and rebuilding its FAISS file from the catalog: `clipsearch repair`.

The catalog is the source of truth and the FAISS file a cache of its vectors, so a damaged,
missing or stale FAISS file is always rebuilt in full. What the catalog itself has lost cannot
be rebuilt from anything: a catalog that fails SQLite's integrity check must be restored from
a backup or indexed again. Images whose stored vector is missing or unusable are dropped from
the catalog and listed, so that the next `clipsearch index` run encodes them again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import delete, select

from clipsearch.errors import CorruptIndexError
from clipsearch.store.schema import ImageRow, VectorRow
from clipsearch.store.vectors import VectorIndex, index_files_exist, rebuild_index

if TYPE_CHECKING:
    from clipsearch.store.catalog import Catalog

UNIT_TOLERANCE = 1e-2  # stored vectors are unit length; fp16 models stay well within this


@dataclass(frozen=True)
class RepairReport:
    """What :meth:`ImageIndex.repair` found and did.

    Args:
        catalog_check: SQLite's quick_check verdict on the catalog, "ok" when sound.
        vector_file: the FAISS file as found: "ok", "stale", "missing" or "unreadable (...)".
        vectors: vectors in the rebuilt FAISS file.
        missing_vectors: paths of indexed images that had no stored vector.
        bad_vectors: paths of indexed images whose stored vector had the wrong length, or was
            not a finite unit vector.
        orphan_vectors: stored vectors that belonged to no image (deleted).
    """

    catalog_check: str
    vector_file: str
    vectors: int
    missing_vectors: tuple[str, ...] = ()
    bad_vectors: tuple[str, ...] = ()
    orphan_vectors: int = 0

    @property
    def dropped(self) -> int:
        """Images dropped from the catalog; `clipsearch index` encodes them again."""
        return len(self.missing_vectors) + len(self.bad_vectors)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["missing_vectors"] = list(self.missing_vectors)
        d["bad_vectors"] = list(self.bad_vectors)
        d["dropped"] = self.dropped
        return d


def repair_store(catalog: Catalog, folder: Path, dim: int) -> tuple[RepairReport, VectorIndex]:
    """Check the catalog, drop images without a usable vector, rebuild and save the FAISS file.

    The caller holds the index's write lock throughout.

    Returns:
        The report, and the rebuilt vector index (saved in ``folder``).

    Raises:
        CorruptIndexError: the catalog is damaged; it must be restored or indexed again.
    """
    verdict = quick_check(catalog)
    if verdict != "ok":
        raise CorruptIndexError(
            f"catalog {catalog.path} is damaged (SQLite integrity check: {verdict}); it "
            "cannot be repaired: restore it from a backup, or delete the index folder and "
            "index again"
        )
    vector_file = _vector_file_state(catalog, folder, dim)
    with catalog.session() as s:
        vector_ids = select(VectorRow.image_id)
        missing = list(s.scalars(select(ImageRow.id).where(ImageRow.id.not_in(vector_ids))))
        orphans = list(
            s.scalars(
                select(VectorRow.image_id).where(VectorRow.image_id.not_in(select(ImageRow.id)))
            )
        )
    bad = _unusable_vectors(catalog, dim, skip=set(orphans))
    drop = sorted(missing + bad)
    records = catalog.images(drop)
    if orphans:
        with catalog.session() as s, s.begin():
            s.execute(delete(VectorRow).where(VectorRow.image_id.in_(orphans)))
    catalog.remove(drop)
    rebuilt = rebuild_index(folder, catalog, dim)
    report = RepairReport(
        catalog_check=verdict,
        vector_file=vector_file,
        vectors=rebuilt.ntotal,
        missing_vectors=tuple(sorted(records[i].path for i in missing if i in records)),
        bad_vectors=tuple(sorted(records[i].path for i in bad if i in records)),
        orphan_vectors=len(orphans),
    )
    return report, rebuilt


def quick_check(catalog: Catalog, max_errors: int = 5) -> str:
    """SQLite's quick_check of the catalog: "ok", or its first findings joined by "; "."""
    with catalog.engine.connect() as conn:
        rows = [str(r[0]) for r in conn.exec_driver_sql(f"PRAGMA quick_check({max_errors})")]
    return "; ".join(rows) or "no answer"


def _vector_file_state(catalog: Catalog, folder: Path, dim: int) -> str:
    if not index_files_exist(folder):
        return "missing"
    try:
        saved, generation = VectorIndex.load(folder, dim)
    except CorruptIndexError as e:
        cause = e.__cause__
        return f"unreadable ({type(cause).__name__ if cause else e})"
    if generation != catalog.generation():
        return "stale"
    same = np.array_equal(np.sort(saved.ids()), np.sort(catalog.ids()))
    return "ok" if same else "stale"


def _unusable_vectors(catalog: Catalog, dim: int, skip: set[int], batch: int = 4096) -> list[int]:
    """Ids of the images whose stored vector has the wrong length or is not a unit vector."""
    bad: list[int] = []
    width = dim * 4
    with catalog.session() as s:
        result = s.execute(
            select(VectorRow.image_id, VectorRow.data).order_by(VectorRow.image_id)
        ).yield_per(batch)
        for part in result.partitions(batch):
            rows = [(int(i), data) for i, data in part if int(i) not in skip]
            bad += [i for i, data in rows if len(data) != width]
            rows = [(i, data) for i, data in rows if len(data) == width]
            if not rows:
                continue
            ids = np.fromiter((i for i, _ in rows), dtype=np.int64, count=len(rows))
            vecs = np.frombuffer(b"".join(d for _, d in rows), dtype=np.float32).reshape(-1, dim)
            with np.errstate(all="ignore"):
                norms = np.linalg.norm(vecs.astype(np.float64), axis=1)
            ok = np.isfinite(vecs).all(axis=1) & (np.abs(norms - 1.0) <= UNIT_TOLERANCE)
            bad += ids[~ok].tolist()
    return bad
