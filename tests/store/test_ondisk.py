"""`ivf-ondisk`: inverted lists in a memory-mapped file, built shard by shard.

It answers exactly as an IVF index in RAM with the same centroids would (and as exact search
with every list probed); vectors added or removed after the build are found or hidden, before
and after a save and a reopen; a save merges them into a new lists file past their limits;
the index folder can be moved; an interrupted or killed save leaves the catalog and the FAISS
index holding the same ids. Real FAISS and SQLite throughout; timings live in
benchmarks/bench_ondisk.py.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from clipsearch import ImageIndex
from clipsearch.cli.main import main
from clipsearch.errors import ClipsearchError, CorruptIndexError
from clipsearch.store import ondisk
from clipsearch.store.catalog import CATALOG_FILE, Catalog, NewImage
from clipsearch.store.vectors import (
    INDEX_FILE,
    STATE_FILE,
    IndexLayout,
    VectorIndex,
    open_index,
    plan_layout,
    rebuild_index,
)
from tests.helpers import WriteCrash, crashing_writer, draw_image

DIM = 32
N = 3000
MIN_RECALL = 0.9  # recall@10 against exact search at the default nprobe, clustered vectors


def clustered(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).standard_normal((20, DIM))
    x = centers[rng.integers(0, 20, n)] + 0.4 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def add_images(catalog: Catalog, vecs: np.ndarray, tag: str = "a") -> np.ndarray:
    root, _ = catalog.adopt_roots("/photos")
    new = [NewImage(root, f"{tag}{i:05d}.jpg", 1, 1, "0" * 64, 1, 1) for i in range(len(vecs))]
    return np.asarray(catalog.commit_batch(new, vecs), dtype=np.int64)


@pytest.fixture
def store(tmp_path):
    """A catalog of N clustered vectors in an index folder: (catalog, ids, vectors)."""
    folder = tmp_path / "idx"
    folder.mkdir()
    catalog = Catalog.open(folder / CATALOG_FILE, create=True)
    vecs = clustered(N)
    ids = add_images(catalog, vecs)
    yield catalog, ids, vecs
    catalog.close()


def exact_top(catalog: Catalog, queries: np.ndarray, k: int) -> np.ndarray:
    ids = np.concatenate([i for i, _ in catalog.iter_vectors()])
    vecs = np.concatenate([v for _, v in catalog.iter_vectors()])
    order = np.argsort(-(queries @ vecs.T), axis=1, kind="stable")[:, :k]
    return ids[order]


def queries_near(vecs: np.ndarray, seed: int = 9) -> np.ndarray:
    q = vecs + 0.05 * clustered(len(vecs), seed=seed)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def probe_all(vi: VectorIndex) -> None:
    vi.layout = dataclasses.replace(vi.layout, nprobe=vi.layout.nlist)


def lists_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(f"vectors.*{ondisk.LISTS_SUFFIX}"))


def build(catalog: Catalog) -> VectorIndex:
    return rebuild_index(catalog.path.parent, catalog, DIM, "ivf-ondisk")  # as reindex


# --- answers ------------------------------------------------------------------------------


def test_built_shard_by_shard_it_answers_as_ivf_in_ram(store, monkeypatch):
    catalog, ids, vecs = store
    monkeypatch.setattr(ondisk, "SHARD_SIZE", 700)  # five shards, four of them on disk
    layout = plan_layout(N, DIM, "ivf-ondisk")
    disk = VectorIndex.build(catalog, DIM, layout, folder=catalog.path.parent)
    ram = VectorIndex.build(catalog, DIM, dataclasses.replace(layout, type="ivf"))
    assert (disk.index.base_count, disk.index.delta_count) == (N, 0)
    assert sorted(disk.ids().tolist()) == sorted(ids.tolist())
    assert not list(catalog.path.parent.glob("*.build"))  # the shards are gone

    queries = queries_near(vecs[:60])
    for nprobe in (layout.nprobe, layout.nlist):
        disk.layout = ram.layout = dataclasses.replace(layout, nprobe=nprobe)
        d_scores, d_ids = disk.search(queries, 10)
        r_scores, r_ids = ram.search(queries, 10)  # the same centroids: the same answers
        np.testing.assert_array_equal(d_ids, r_ids)
        np.testing.assert_allclose(d_scores, r_scores, rtol=1e-5, atol=1e-6)
        if nprobe == layout.nprobe:
            want = exact_top(catalog, queries, 10)
            recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(d_ids, want, strict=True)])
            assert recall >= MIN_RECALL, recall
    np.testing.assert_array_equal(d_ids, exact_top(catalog, queries, 10))  # every list probed


def test_adds_and_removals_after_the_build_survive_a_reopen(store):
    catalog, ids, vecs = store
    vi = build(catalog)
    first = lists_files(catalog.path.parent)
    new_vecs = clustered(200, seed=5)
    new_ids = add_images(catalog, new_vecs, tag="b")
    vi.add(new_ids, new_vecs)
    gone = np.concatenate([ids[:50], new_ids[:20]])
    catalog.remove(gone.tolist())
    assert vi.remove(gone) == 70 and vi.remove(gone) == 0
    assert vi.index.delta_count == 200 and len(vi.tombstones) == 70
    assert vi.ntotal == N + 130

    queries = queries_near(np.concatenate([vecs[:40], new_vecs[:40]]))
    want = exact_top(catalog, queries, 10)
    probe_all(vi)
    np.testing.assert_array_equal(vi.search(queries, 10)[1], want)
    allowed = np.concatenate([ids[:300], new_ids])  # a filter inside FAISS, tombstones too
    _, got = vi.search(queries, 10, allowed=allowed)
    assert set(got.ravel().tolist()) - {-1} <= set(allowed.tolist()) - set(gone.tolist())

    vi.save(catalog.path.parent, catalog.generation())  # below both limits: no new lists file
    assert lists_files(catalog.path.parent) == first
    loaded, generation = VectorIndex.load(catalog.path.parent, DIM, mmap=True)
    opened, _ = open_index(catalog.path.parent, catalog, DIM)
    for fresh in (loaded, opened):
        assert fresh.index_type == "ivf-ondisk" and fresh.tombstones == set(gone.tolist())
        assert sorted(fresh.ids().tolist()) == sorted(catalog.ids().tolist())
        probe_all(fresh)
        np.testing.assert_array_equal(fresh.search(queries, 10)[1], want)
    assert generation == catalog.generation()
    import faiss

    lists = faiss.downcast_InvertedLists(loaded.index.ivf.invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.read_only


def test_a_save_merges_delta_and_tombstones_past_their_limits(store, monkeypatch):
    catalog, ids, _ = store
    folder = catalog.path.parent
    monkeypatch.setattr(ondisk, "DELTA_MIN", 10)  # the delta limit is now 10% of the file
    vi = build(catalog)
    first = lists_files(folder)
    assert len(first) == 1 and ondisk.delta_limit(N) == N // 10

    extra = clustered(N // 10 + 50, seed=3)
    extra_ids = add_images(catalog, extra, tag="c")
    vi.add(extra_ids[:100], extra[:100])
    vi.save(folder, catalog.generation())
    assert lists_files(folder) == first and vi.index.delta_count == 100
    vi.add(extra_ids[100:], extra[100:])
    vi.save(folder, catalog.generation())
    second = lists_files(folder)
    assert len(second) == 1 and second != first  # the old file is deleted after the rename
    assert vi.index.delta_count == 0 and vi.index.base_count == N + len(extra)

    gone = ids[: N // 5]  # past REBUILD_FRACTION of tombstones
    catalog.remove(gone.tolist())
    vi.remove(gone)
    vi.save(folder, catalog.generation())
    assert lists_files(folder) not in (first, second) and len(lists_files(folder)) == 1
    assert not vi.tombstones and vi.index.base_count == catalog.count()
    back, generation = VectorIndex.load(folder, DIM)
    assert generation == catalog.generation() and not back.tombstones
    assert sorted(back.ids().tolist()) == sorted(catalog.ids().tolist())
    state = json.loads((folder / STATE_FILE).read_text())
    assert [state["lists_file"]] == lists_files(folder)
    probe_all(back)
    queries = queries_near(extra[:30])
    np.testing.assert_array_equal(back.search(queries, 10)[1], exact_top(catalog, queries, 10))


def test_a_reader_keeps_its_lists_file_while_the_writer_replaces_it(store):
    catalog, ids, vecs = store
    folder = catalog.path.parent
    build(catalog)
    reader, _ = VectorIndex.load(folder, DIM, mmap=True)
    probe_all(reader)
    queries = queries_near(vecs[:20])
    before = reader.search(queries, 10)[1]
    writer, _ = VectorIndex.load(folder, DIM)
    catalog.remove(ids[: N // 2].tolist())
    writer.remove(ids[: N // 2])
    writer.save(folder, catalog.generation())  # a new lists file; the reader's is unlinked
    assert not (folder / reader.index.lists_path.name).exists()
    np.testing.assert_array_equal(reader.search(queries, 10)[1], before)
    fresh, _ = VectorIndex.load(folder, DIM, mmap=True)
    assert fresh.ntotal == N - N // 2


def test_a_full_disk_is_one_clear_error_and_leaves_the_index_usable(store, monkeypatch):
    catalog, ids, vecs = store
    folder = catalog.path.parent
    real_usage = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real_usage(p)._replace(free=1000))
    with pytest.raises(ClipsearchError, match="not enough disk space"):
        VectorIndex.build(catalog, DIM, "ivf-ondisk", folder=folder)
    monkeypatch.undo()
    assert not list(folder.glob("vectors.*"))  # checked before training: nothing was written

    vi = build(catalog)
    first = lists_files(folder)
    vi.remove(ids[: N // 2])  # a save must now write a new lists file

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(ClipsearchError, match="not enough disk space"):
        vi.save(folder, catalog.generation())
    monkeypatch.undo()
    assert lists_files(folder) == first and not list(folder.glob("*.tmp"))
    back, _ = VectorIndex.load(folder, DIM)
    assert back.ntotal == N  # the last saved state; the catalog sync redoes the removal


def test_auto_goes_on_disk_only_when_ivfpq_does_not_fit_the_budget():
    gib = 1 << 30
    assert plan_layout(1_000_000, 512, "auto", 1 * gib).type == "ivfpq"
    layout = plan_layout(10_000_000, 512, "auto", 1 * gib)
    assert layout.type == "ivf-ondisk" and layout.ondisk and layout.trained
    assert layout == plan_layout(10_000_000, 512, "ivf-ondisk")
    assert layout.memory_bytes(10_000_000, 512) <= 64 << 20  # the centroids only
    assert plan_layout(12, 512, "ivf-ondisk").nlist == 1
    assert IndexLayout.from_dict(layout.to_dict()) == layout


# --- files --------------------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path):
    runner = CliRunner()

    def invoke(folder, *args):
        return runner.invoke(main, ["--index", str(folder), *map(str, args)])

    return invoke


def search_json(cli, folder, query="a red circle"):
    result = cli(folder, "search", query, "-k", "5", "--json")
    assert result.exit_code == 0, result.output
    return [(h["path"], round(h["score"], 4)) for h in json.loads(result.output)]


def test_the_index_folder_can_be_moved(cli, tmp_path, tiny_model, photo_dir):
    folder = tmp_path / "idx"
    assert cli(folder, "index", photo_dir, "--model", tiny_model).exit_code == 0
    result = cli(folder, "reindex", "--type", "ivf-ondisk")
    assert result.exit_code == 0 and "as ivf-ondisk" in result.output, result.output
    before = search_json(cli, folder)
    [name] = lists_files(folder)
    head = (folder / INDEX_FILE).read_bytes()
    assert name.encode() in head and str(tmp_path).encode() not in head  # the base name only

    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(folder, moved)
    proc = subprocess.run(  # a fresh process, started in another directory
        [sys.executable, "-m", "clipsearch", "--index", str(moved), "search", "a red circle"]
        + ["-k", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert [(h["path"], round(h["score"], 4)) for h in json.loads(proc.stdout)] == before

    draw_image(photo_dir / "new" / "purple_square.png", "purple", "square")
    result = cli(moved, "index", photo_dir, "--json")
    assert result.exit_code == 0 and json.loads(result.output)["added"] == 1, result.output
    with ImageIndex.open(moved) as index:
        assert index.vectors.index_type == "ivf-ondisk"
        assert sorted(index.vectors.ids().tolist()) == sorted(index.catalog.ids().tolist())
    assert lists_files(moved) == [name]  # one new vector waits in vectors.faiss
    assert search_json(cli, moved)[:3] == before[:3]


def test_a_missing_lists_file_says_run_repair(cli, tmp_path, tiny_model, photo_dir):
    folder = tmp_path / "idx"
    assert cli(folder, "index", photo_dir, "--model", tiny_model).exit_code == 0
    assert cli(folder, "reindex", "--type", "ivf-ondisk").exit_code == 0
    before = search_json(cli, folder)
    (folder / lists_files(folder)[0]).unlink()
    with pytest.raises(CorruptIndexError, match="clipsearch repair"):
        VectorIndex.load(folder, 512)
    result = cli(folder, "search", "a red circle")
    assert result.exit_code == 1 and "clipsearch repair" in result.output
    assert "Traceback" not in result.output
    result = cli(folder, "repair", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["vector_file"].startswith("unreadable")
    assert len(lists_files(folder)) == 1 and search_json(cli, folder) == before


# --- crashes ------------------------------------------------------------------------------


def assert_same_ids(folder: Path) -> None:
    with ImageIndex.open(folder) as index:
        assert sorted(index.vectors.ids().tolist()) == sorted(index.catalog.ids().tolist())


def test_an_interrupted_save_leaves_catalog_and_faiss_ids_equal(
    tmp_path, tiny_model, photo_dir, monkeypatch
):
    """Stop a save that merges: after it wrote the new lists file (before vectors.faiss), and
    after vectors.faiss (before vectors.json). The next open holds the catalog's ids, the next
    save deletes what the crash left behind."""
    import clipsearch.store.vectors as vectors_mod

    folder = tmp_path / "idx"
    with ImageIndex.create(folder, model=tiny_model) as index:
        index.add([photo_dir])
        index.reindex("ivf-ondisk")
    monkeypatch.setattr(ondisk, "DELTA_MIN", 0)  # 10% of 12 images: two new ones merge
    real = vectors_mod._atomic_write

    for allowed_writes, color in ((0, "purple"), (1, "orange")):
        for name in ("red_square.png", "green_circle.png"):
            draw_image(photo_dir / "shapes" / name, color, "triangle", size=70)
        monkeypatch.setattr(vectors_mod, "_atomic_write", crashing_writer(real, allowed_writes))
        with ImageIndex.open(folder) as index, pytest.raises(WriteCrash):
            index.add([photo_dir])
        monkeypatch.setattr(vectors_mod, "_atomic_write", real)
        assert len(lists_files(folder)) == 2  # the old one, still named, and the new one
        assert_same_ids(folder)
        with ImageIndex.open(folder) as index:
            assert index.add([photo_dir]).unchanged == 12
            assert index.vectors.index_type == "ivf-ondisk"
        state = json.loads((folder / STATE_FILE).read_text())
        assert lists_files(folder) == [state["lists_file"]]
        assert not list(folder.glob("*.tmp"))
        assert_same_ids(folder)


WRITER = """
import sys
from pathlib import Path

import numpy as np

from clipsearch.store import ondisk
from clipsearch.store.catalog import Catalog, NewImage
from clipsearch.store.vectors import open_index

ondisk.DELTA_MIN = 0  # every save writes a new lists file
folder, dim, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
catalog = Catalog.open(folder / "catalog.sqlite")
vi, generation = open_index(folder, catalog, dim, mmap=False)
if generation != catalog.generation():
    vi.sync(catalog)
rng = np.random.default_rng(seed)
root, _ = catalog.adopt_roots("/photos")
for r in range(100000):
    v = rng.standard_normal((40, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    new = [NewImage(root, f"w{seed}-{r}-{i}.jpg", 1, 1, "0" * 64, 1, 1) for i in range(40)]
    vi.add(np.asarray(catalog.commit_batch(new, v)), v)
    gone = rng.choice(catalog.ids(), 15, replace=False)
    catalog.remove(gone.tolist())
    vi.remove(gone)
    vi.save(folder, catalog.generation())
    print(r, flush=True)
"""


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_loses_nothing(store):
    """SIGKILL a process that adds, removes and saves (merging into a new lists file each
    time) in a loop: whatever the moment, the saved index loads, holds the catalog's ids when
    it claims the catalog's generation, and syncs to them otherwise."""
    catalog, _, _ = store
    folder = catalog.path.parent
    build(catalog)
    rng = np.random.default_rng(0)
    saves = 0
    for trial in range(6):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(folder), str(DIM), str(trial)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = proc.stdout.readline()  # imports done, one save done
            assert line, proc.stderr.read()
            time.sleep(float(rng.uniform(0.0, 0.3)))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        saves += 1 + len(proc.stdout.read().splitlines())
        note = f"trial {trial}"
        saved, generation = VectorIndex.load(folder, DIM)
        want = sorted(catalog.ids().tolist())
        if generation == catalog.generation():
            assert sorted(saved.ids().tolist()) == want, note
        vi, generation = open_index(folder, catalog, DIM, mmap=False)
        if generation != catalog.generation():
            vi.sync(catalog)
        assert sorted(vi.ids().tolist()) == want, note
        assert len(lists_files(folder)) <= 2, note  # the named one and a killed merge's
        vi.save(folder, catalog.generation())
        assert len(lists_files(folder)) == 1 and not list(folder.glob("*.build")), note
    assert saves >= 12
