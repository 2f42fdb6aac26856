"""Vector indexes built from the catalog: the catalog comes along as the exact vector source
(small filters, IVF-PQ re-ranking), and a rebuild records its layout and saves it. Real FAISS
and SQLite."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.store.catalog import CATALOG_FILE, Catalog, NewImage
from clipsearch.store.vectors import (
    VectorIndex,
    open_index,
    rebuild_index,
    recorded_layout,
)

DIM = 32
N = 2000


@pytest.fixture
def store(tmp_path):
    """An index folder whose catalog holds N clustered unit vectors: (catalog, ids, vectors)."""
    folder = tmp_path / "idx"
    folder.mkdir()
    catalog = Catalog.open(folder / CATALOG_FILE, create=True)
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((20, DIM))
    x = centers[rng.integers(0, 20, N)] + 0.4 * rng.standard_normal((N, DIM))
    vecs = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    root, _ = catalog.adopt_roots("/photos")
    new = [NewImage(root, f"{i:05d}.jpg", 1, 1, "0" * 64, 1, 1) for i in range(N)]
    ids = np.asarray(catalog.commit_batch(new, vecs), dtype=np.int64)
    yield catalog, ids, vecs
    catalog.close()


def test_a_built_index_answers_small_filters_exactly_from_the_catalog(store):
    catalog, ids, vecs = store
    vi = VectorIndex.build(catalog, DIM, "ivfpq")
    assert vi.vector_source is not None
    allowed = ids[::400]  # five ids: searched by brute force over the stored vectors
    scores, got = vi.search(vecs[7], 3, allowed=allowed)
    exact = vecs[::400] @ vecs[7]
    order = np.argsort(-exact)[:3]
    assert got[0].tolist() == allowed[order].tolist()
    np.testing.assert_allclose(scores[0], exact[order], rtol=1e-5)


def test_a_built_ivfpq_index_reranks_with_exact_scores(store):
    catalog, ids, vecs = store
    vi = VectorIndex.build(catalog, DIM, "ivfpq")
    scores, got = vi.search(vecs[:20], 5)
    assert got[:, 0].tolist() == ids[:20].tolist()  # each vector finds itself first
    by_id = dict(zip(ids.tolist(), vecs, strict=True))
    for q, row_ids, row_scores in zip(vecs[:20], got, scores, strict=True):
        exact = [float(by_id[i] @ q) for i in row_ids.tolist()]
        np.testing.assert_allclose(row_scores, exact, rtol=1e-5)  # not PQ approximations


def test_compact_keeps_the_catalog_as_source(store):
    catalog, ids, vecs = store
    vi = VectorIndex.build(catalog, DIM, "hnsw")
    gone = ids[:400]
    vi.remove(gone)
    catalog.remove(gone.tolist())
    assert vi.needs_compaction
    vi.compact(catalog)
    assert not vi.tombstones and vi.ntotal == N - 400 and vi.vector_source is not None
    _, got = vi.search(vecs[500], 2, allowed=ids[495:505])
    assert got[0, 0] == ids[500]


def test_rebuild_index_records_its_layout_and_saves_it(store):
    catalog, ids, vecs = store
    folder = catalog.path.parent
    vi = rebuild_index(folder, catalog, DIM, "hnsw")
    assert vi.index_type == "hnsw" and vi.vector_source is not None
    assert recorded_layout(catalog) == vi.layout
    loaded, generation = VectorIndex.load(folder, DIM)
    assert generation == catalog.generation() and loaded.index_type == "hnsw"
    assert sorted(loaded.ids().tolist()) == sorted(ids.tolist())
    opened, _ = open_index(folder, catalog, DIM)
    assert opened.vector_source is not None
    catalog.remove(ids[:10].tolist())
    again = rebuild_index(folder, catalog, DIM)  # None: the layout the catalog records
    assert again.layout == vi.layout and again.ntotal == N - 10
    _, generation = VectorIndex.load(folder, DIM)
    assert generation == catalog.generation()


def test_a_reader_trusts_the_file_its_state_saved_and_a_writer_reads_every_byte(store, monkeypatch):
    import os
    import zlib

    from clipsearch.store import vectors

    catalog, ids, vecs = store
    folder = catalog.path.parent
    rebuild_index(folder, catalog, DIM, "flat")
    sums: list[int] = []
    crc32 = zlib.crc32
    monkeypatch.setattr(vectors.zlib, "crc32", lambda data: sums.append(1) or crc32(data))
    reader, generation = VectorIndex.load(folder, DIM, mmap=True)
    assert (generation, sums) == (catalog.generation(), [])  # no full read for a reader
    writer, generation = VectorIndex.load(folder, DIM, mmap=False)
    assert (generation, sums) == (catalog.generation(), [1])
    del reader, writer
    # The same bytes under another file (a copy, a rename of some other file): checked.
    path = folder / vectors.INDEX_FILE
    data = bytearray(path.read_bytes())
    path.unlink()
    path.write_bytes(bytes(data))
    sums.clear()
    _, generation = VectorIndex.load(folder, DIM, mmap=True)
    assert (generation, sums) == (catalog.generation(), [1])
    # Damaged in place: a changed mtime gives it away to the reader too.
    st = path.stat()
    data[-2048:-1024] = os.urandom(1024)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    fresh, generation = VectorIndex.load(folder, DIM, mmap=True)
    assert generation is None and fresh.ntotal == 0  # rebuilt from the catalog by the caller
