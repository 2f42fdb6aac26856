"""Catalog.same_content: files whose bytes hash alike, in groups, optionally among some ids."""

from __future__ import annotations

import numpy as np

from clipsearch.store.catalog import CATALOG_FILE, Catalog, NewImage


def test_same_content_groups_equal_hashes_only(tmp_path):
    catalog = Catalog.open(tmp_path / CATALOG_FILE, create=True)
    try:
        root, _ = catalog.adopt_roots("/photos")
        hashes = ["a" * 64, "b" * 64, "a" * 64, "c" * 64, "b" * 64, "a" * 64]
        new = [NewImage(root, f"{i}.jpg", 1, 1, h, 1, 1) for i, h in enumerate(hashes)]
        vecs = np.eye(len(new), 8, dtype=np.float32)
        ids = catalog.commit_batch(new, vecs)
        want_a = [ids[0], ids[2], ids[5]]
        want_b = [ids[1], ids[4]]
        assert sorted(catalog.same_content()) == sorted([want_a, want_b])
        assert catalog.same_content([ids[0], ids[5], ids[1]]) == [[ids[0], ids[5]]]
        assert catalog.same_content(np.asarray([ids[3]])) == []
    finally:
        catalog.close()
