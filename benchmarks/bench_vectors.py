"""Vector search at scale: every index type against exact search and a NumPy ranking.

For N unit vectors of 512 dimensions, random (the pessimistic case: no structure to exploit)
and clustered (shaped like CLIP embeddings, see ``_common.clustered_unit``), this builds each
index type of ``clipsearch.store.vectors`` with the knobs ``plan_layout`` picks for N and reports,
for single queries on one thread as `clipsearch search` runs them:

* p50 latency, against the baseline of ranking every vector with NumPy in Python;
* recall@10 against exact search;
* the RAM the index takes in a fresh process that loads it (and its file size);
* the build time (IVF training included).

IVF-PQ re-ranks its candidates with the exact vectors from a real SQLite catalog, as in
clipsearch; its latency includes that read.

    python benchmarks/bench_vectors.py                     # 100k vectors, a few minutes
    python benchmarks/bench_vectors.py --n 1000000         # the 1M figures (tens of minutes)
    python benchmarks/bench_vectors.py --types hnsw --sweep  # latency/recall per efSearch
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    Row,
    clustered_unit,
    machine,
    percentile_ms,
    print_table,
    random_unit,
    ratio,
    run_child,
)

DIM = 512
K = 10

LOAD_SCRIPT = """
import sys
from pathlib import Path
def rss():
    import os
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
import faiss, numpy
from clipsearch.store.vectors import VectorIndex
before = rss()
vi, _ = VectorIndex.load(Path(sys.argv[1]), int(sys.argv[2]))
print(rss() - before)
"""


def make_catalog(folder: Path, vecs: np.ndarray):
    """A catalog holding the vectors under ids 1..N, written with plain SQL for speed."""
    from clipsearch.store.catalog import Catalog

    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    catalog = Catalog.open(folder / "catalog.sqlite", create=True)
    conn = catalog.engine.raw_connection()
    try:
        cur = conn.cursor()
        cur.execute("INSERT INTO roots (id, path) VALUES (1, '/photos')")
        for s in range(0, len(vecs), 50_000):
            block = vecs[s : s + 50_000]
            ids = range(s + 1, s + 1 + len(block))
            cur.executemany(
                "INSERT INTO images (id, root_id, rel, size, mtime_ns, sha256, width, height,"
                " indexed_at) VALUES (?, 1, ?, 1, 1, ?, 1, 1, 0)",
                [(i, f"IMG_{i:07d}.jpg", f"{i:064x}") for i in ids],
            )
            cur.executemany(
                "INSERT INTO vectors (image_id, data) VALUES (?, ?)",
                [(i, v.tobytes()) for i, v in zip(ids, block, strict=True)],
            )
            conn.commit()
    finally:
        conn.close()
    return catalog


def exact_truth(vecs: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    index = faiss.IndexFlatIP(vecs.shape[1])
    index.add(vecs)
    _, ids = index.search(queries, K)
    return ids + 1  # catalog ids start at 1


def numpy_baseline(vecs: np.ndarray, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        scores = vecs @ q
        top = np.argpartition(-scores, K)[:K]
        top = top[np.argsort(-scores[top])]
        _ = [(int(i), float(scores[i])) for i in top]
        times.append(time.perf_counter() - t)
    return percentile_ms(times)


def measure(vi, queries: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    times, hits = [], 0
    vi.search(queries[0], K)  # warm the caches
    for q, want in zip(queries, truth, strict=True):
        t = time.perf_counter()
        _, ids = vi.search(q[None, :], K)
        times.append(time.perf_counter() - t)
        hits += len(set(ids[0].tolist()) & set(want.tolist()))
    return percentile_ms(times), hits / (K * len(queries))


def run(kind: str, args: argparse.Namespace) -> list[Row]:
    from clipsearch.store.vectors import VectorIndex, catalog_vectors, plan_layout

    n = args.n
    t = time.perf_counter()
    if kind == "random":
        vecs = random_unit(n, DIM, seed=1)
        queries = random_unit(args.queries, DIM, seed=2)
    else:
        vecs, queries = clustered_unit(n, DIM, seed=1, queries=args.queries)
    ids = np.arange(1, n + 1, dtype=np.int64)
    truth = exact_truth(vecs, queries)
    folder = args.work / f"vectors-{kind}-{n}"
    catalog = make_catalog(folder, vecs)
    print(f"{kind}: data, truth and catalog in {time.perf_counter() - t:.0f}s", flush=True)
    base = numpy_baseline(vecs, queries[: min(50, len(queries))])
    rows = [Row(f"{kind}: NumPy ranking in Python (baseline)", f"{base:.2f} ms p50")]

    for name in args.types:
        layout = plan_layout(n, DIM, name)
        if name == "ivfpq" and args.pq_m:
            layout = dataclasses.replace(layout, pq_m=args.pq_m)
        t = time.perf_counter()
        training = None
        if layout.trained:
            from clipsearch.store.vectors import training_sample

            training = training_sample(catalog, layout)
        vi = VectorIndex.create(DIM, layout, training)
        for s in range(0, n, 100_000):
            vi.add(ids[s : s + 100_000], vecs[s : s + 100_000])
        build = time.perf_counter() - t
        vi.vector_source = catalog_vectors(catalog)
        save_dir = folder / name
        save_dir.mkdir(exist_ok=True)
        vi.save(save_dir, generation=0)
        size = (save_dir / "vectors.faiss").stat().st_size
        _, _, out = run_child([sys.executable, "-c", LOAD_SCRIPT, str(save_dir), str(DIM)])
        ram = int(out.strip())
        variants = [layout]
        if args.sweep and name == "hnsw":
            variants = [dataclasses.replace(layout, ef_search=e) for e in (32, 64, 128, 256, 512)]
        if args.sweep and layout.trained:
            variants = [
                dataclasses.replace(layout, nprobe=p)
                for p in sorted({4, 8, 16, 32, 64, 128, layout.nprobe})
                if p <= layout.nlist
            ]
        for v in variants:
            vi.layout = v
            p50, recall = measure(vi, queries, truth)
            knob = {
                "flat": "exact",
                "hnsw": f"M={v.m} efSearch={v.ef_search}",
                "ivf": f"nlist={v.nlist} nprobe={v.nprobe}",
                "ivfpq": f"nlist={v.nlist} nprobe={v.nprobe} PQ{v.pq_m}, re-ranked",
            }[name]
            rows.append(
                Row(
                    f"{kind}: {name} ({knob})",
                    f"{p50:.2f} ms p50, recall@10 {recall:.3f}",
                    f"{base:.2f} ms",
                    ratio(p50, base, higher_is_better=False),
                    f"{ram / 2**20:.0f} MiB RAM, {size / 2**20:.0f} MiB file, {build:.0f}s build",
                )
            )
        print(rows[-1], flush=True)
        del vi
    catalog.close()
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors")
    ap.add_argument("--queries", type=int, default=200, help="queries to time")
    ap.add_argument("--data", default="clustered,random", help="clustered, random or both")
    ap.add_argument("--types", default="flat,hnsw,ivf,ivfpq", help="index types to build")
    ap.add_argument("--sweep", action="store_true", help="also try other efSearch/nprobe")
    ap.add_argument("--pq-m", type=int, default=0, help="IVF-PQ bytes per vector (default: dim/8)")
    ap.add_argument("--keep", action="store_true", help="keep the catalogs and index files")
    ap.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench"))
    args = ap.parse_args()
    args.types = args.types.split(",")
    print(f"machine: {machine()}", flush=True)
    rows: list[Row] = []
    for kind in args.data.split(","):
        rows += run(kind, args)
    print_table(f"vector search, {args.n:,} x {DIM}-d, one query at a time, one thread", rows)


if __name__ == "__main__":
    main()
