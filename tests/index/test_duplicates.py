"""Near-duplicates on the shipped demo model and generated pictures: groups, keep-first
order, threshold, prefix, every index type, bad input, and no file ever touched.

The demo model is used rather than the random tiny one: it was trained on pictures like
these, so near-duplicates and unrelated pictures fall far apart in its space, where a model
with random weights puts every picture within a hair of every other one.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from clipsearch import DuplicateGroup, ImageIndex, QueryError
from clipsearch.index.duplicates import Components, group_ids, iter_pairs, similar_pairs
from clipsearch.store.vectors import INDEX_TYPES, IndexLayout, VectorIndex
from tests.helpers import draw_near_duplicates, save_photo


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    return draw_near_duplicates(tmp_path_factory.mktemp("dups") / "photos")


@pytest.fixture(scope="module")
def index(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("dups-index") / "idx"
    with ImageIndex.create(folder, model="demo", device="cpu") as ix:
        ix.add([photos["base"].parent.parent])
        yield ix


def names(group: DuplicateGroup, photos: dict[str, Path]) -> list[str]:
    by_path = {str(p.resolve()): n for n, p in photos.items()}
    return [by_path[m.path] for m in group.members]


def brute_force_groups(index: ImageIndex, threshold: float) -> set[frozenset[str]]:
    """Connected groups from every pair of stored vectors and every equal hash, by NumPy."""
    ids = index.catalog.ids()
    records = index.catalog.images(ids.tolist())
    vecs = np.stack([index.catalog.vector(int(i)) for i in ids])
    sims = vecs @ vecs.T
    a, b = np.nonzero(np.triu(sims >= threshold, 1))
    hashes: dict[str, list[int]] = {}
    for i in ids.tolist():
        hashes.setdefault(records[i].sha256, []).append(i)
    groups = group_ids((ids[a], ids[b]), [h for h in hashes.values() if len(h) > 1])
    return {frozenset(records[i].path for i in g) for g in groups}


def as_sets(groups: list[DuplicateGroup]) -> set[frozenset[str]]:
    return {frozenset(m.path for m in g.members) for g in groups}


def test_groups_keep_the_largest_then_oldest_first(index, photos):
    groups = index.duplicates()
    assert [names(g, photos) for g in groups] == [
        ["base", "jpeg", "copy", "crop", "small"],  # 128 px by age, then 116, then 64 px
        ["blue", "blue_copy"],
    ]
    similar, same = groups
    assert (similar.reason, same.reason) == ("similar", "same content")
    assert [m.same_content for m in similar.members] == [True, False, True, False, False]
    assert similar.keep.similarity == 1.0 and similar.members[2].similarity == pytest.approx(1.0)
    others = [m.similarity for m in similar.members[1:]]
    assert similar.min_similarity == min(others) >= 0.95
    assert similar.max_similarity == max(others) <= 1.0
    assert (similar.keep.width, similar.keep.height) == (128, 128)


@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.95, 0.97, 0.99, 0.999, 1.0])
def test_groups_are_those_of_all_pairs_at_the_threshold(index, threshold):
    groups = index.duplicates(threshold)
    assert as_sets(groups) == brute_force_groups(index, threshold)
    sizes = [len(g.members) for g in groups]
    assert sizes == sorted(sizes, reverse=True)


def test_a_higher_threshold_leaves_the_crop_out(index, photos):
    loose = {n for g in index.duplicates(0.95) for n in names(g, photos)}
    strict = {n for g in index.duplicates(0.99) for n in names(g, photos)}
    assert "crop" in loose and "crop" not in strict
    assert {"base", "jpeg", "copy", "blue", "blue_copy"} <= strict


def test_prefix_keeps_only_images_under_it(index, photos):
    folder_b = photos["jpeg"].parent
    groups = index.duplicates(path_prefix=f"{folder_b}/")
    assert [names(g, photos) for g in groups] == [["jpeg", "crop"]]
    assert index.duplicates(path_prefix=str(folder_b.parent / "nothing-here")) == []
    with pytest.raises(QueryError, match="outside the indexed folders"):
        index.duplicates(path_prefix="/definitely/not/indexed")


@pytest.mark.parametrize("threshold", [0, -0.5, 1.01, 2, math.nan, "high"])
def test_a_threshold_outside_0_1_is_a_query_error(index, threshold):
    with pytest.raises(QueryError, match=r"threshold must be"):
        index.duplicates(threshold)


def test_an_empty_index_has_no_duplicates(tmp_path):
    with ImageIndex.create(tmp_path / "empty", model="demo", device="cpu") as ix:
        assert ix.duplicates() == []
        assert ix.duplicates(path_prefix=str(tmp_path)) == []


@pytest.mark.parametrize("index_type", [t for t in INDEX_TYPES if t != "flat"])
def test_every_index_type_finds_the_same_groups(index, photos, tmp_path, index_type):
    want = [names(g, photos) for g in index.duplicates()]
    shutil.copytree(index.path, tmp_path / "idx")
    with ImageIndex.open(tmp_path / "idx", device="cpu") as copy:
        copy.reindex(index_type)
        assert copy.vectors.index_type == index_type
        assert [names(g, photos) for g in copy.duplicates()] == want


def test_nothing_is_deleted_or_changed(index, photos):
    def snapshot():
        return {
            p: (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in photos.values()
        }

    before = snapshot()
    count = index.count
    for threshold in (0.5, 0.95, 1.0):
        index.duplicates(threshold)
    assert snapshot() == before
    assert index.count == count


# --- the self-join on synthetic vectors: the model is beside the point -----------------------


def clustered(n_clusters: int, size: int, dim: int = 64, spread: float = 0.02, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    x = np.repeat(centres, size, axis=0) + spread * rng.normal(size=(n_clusters * size, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


@pytest.mark.parametrize("layout", [IndexLayout("flat"), IndexLayout("hnsw")])
def test_k_grows_until_every_pair_of_a_large_cluster_is_found(layout):
    x = np.vstack([clustered(3, 40), clustered(50, 1, seed=1)])
    ids = np.arange(100, 100 + len(x), dtype=np.int64)
    vi = VectorIndex.create(x.shape[1], layout)
    vi.add(ids, x)
    a, b, s = similar_pairs(vi, [(ids, x)], 0.9, first_k=2)
    sims = x @ x.T
    ta, tb = np.nonzero(np.triu(sims >= 0.9, 1))
    assert len(ta) >= 3 * 40 * 39 // 2  # each cluster is one clique
    assert set(zip(a.tolist(), b.tolist(), strict=True)) == set(
        zip((ids[ta]).tolist(), (ids[tb]).tolist(), strict=True)
    )
    assert np.all(a < b) and np.all(s >= 0.9)
    np.testing.assert_allclose(s, sims[a - 100, b - 100], atol=1e-5)


def test_allowed_ids_limit_the_pairs():
    x = clustered(2, 10)
    ids = np.arange(len(x), dtype=np.int64)
    vi = VectorIndex.create(x.shape[1], IndexLayout("flat"))
    vi.add(ids, x)
    allowed = ids[::2]
    a, b, _ = similar_pairs(vi, [(allowed, x[allowed])], 0.9, allowed)
    assert set(a.tolist()) | set(b.tolist()) <= set(allowed.tolist())
    assert len(a) == 2 * (5 * 4 // 2)


def python_groups(n_ids: int, a: list[int], b: list[int]) -> set[frozenset[int]]:
    """Connected components by breadth-first search: the reference for Components."""
    edges: dict[int, set[int]] = {}
    for x, y in zip(a, b, strict=True):
        edges.setdefault(x, set()).add(y)
        edges.setdefault(y, set()).add(x)
    seen: set[int] = set()
    out = set()
    for start in edges:
        if start in seen:
            continue
        group, todo = set(), [start]
        while todo:
            x = todo.pop()
            if x not in group:
                group.add(x)
                todo.extend(edges[x] - group)
        seen |= group
        if len(group) > 1:
            out.add(frozenset(group))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_components_match_a_breadth_first_search(seed):
    rng = np.random.default_rng(seed)
    ids = rng.choice(10_000, size=400, replace=False) * 7  # sparse, unordered ids
    comps = Components(ids)
    a_all, b_all = [], []
    for _ in range(4):  # joined in several batches, as find_duplicates does
        a = rng.choice(ids, size=150)
        b = rng.choice(ids, size=150)
        comps.join(a, b)
        a_all += a.tolist()
        b_all += b.tolist()
    comps.join(np.array([-5, ids[0]]), np.array([ids[1], 10**9]))  # unknown ids: ignored
    got = {frozenset(g) for g in comps.groups()}
    assert got == python_groups(len(ids), a_all, b_all)
    assert all(g == sorted(g) for g in comps.groups())


def test_a_cluster_larger_than_max_k_is_still_one_group():
    x = clustered(1, 60)
    ids = np.arange(len(x), dtype=np.int64)
    vi = VectorIndex.create(x.shape[1], IndexLayout("flat"))
    vi.add(ids, x)
    comps = Components(ids)
    for a, b, _ in iter_pairs(vi, [(ids, x)], 0.9, first_k=2, max_k=8):
        assert len(a) <= len(ids) * 7
        comps.join(a, b)
    assert comps.groups() == [ids.tolist()]


def test_the_oldest_by_date_taken_is_kept_where_the_camera_says(tmp_path):
    folder = tmp_path / "photos"
    # the same picture twice: one taken in 2020 but copied last, one with only an older mtime
    early = save_photo(folder / "a.jpg", "green", "square", taken="2020:01:01 10:00:00")
    late = save_photo(folder / "b.jpg", "green", "square", mtime=1.6e9)  # 2020-09-13
    assert early.stat().st_mtime > late.stat().st_mtime
    with ImageIndex.create(tmp_path / "idx", model="demo", device="cpu") as ix:
        ix.add([folder])
        (group,) = ix.duplicates(0.99)
    assert [Path(m.path).name for m in group.members] == ["a.jpg", "b.jpg"]
