"""Vector indexes larger than RAM: `ivf-ondisk` against the same IVF held in RAM.

N clustered 512-d unit vectors (shaped like CLIP embeddings, ``_common.clustered_unit``) are
stored in a real SQLite catalog; each index type is then built from it with
``VectorIndex.build`` in a fresh process, as `clipsearch reindex` builds it, and opened for
queries in another fresh process, as a reader opens it. Both train their centroids on the
same sample, so they probe the same lists and return the same results: the figures compare
where the lists live. Reported, for `ivf-ondisk` against `ivf` in RAM (the baseline):

* build time, and the peak RSS of the build (training phase, then streaming phase);
* the resident memory of a process that opened the index (anonymous memory, which must fit
  in RAM, and file pages, which the page cache holds while there is room and drops when
  memory is short), before and after the queries;
* query p50, one query at a time on one thread, with a warm page cache and, for `ivf-ondisk`,
  cold (the lists file dropped from the page cache before each query);
* recall@10 against exact search, and the file sizes;

and from these, the RAM `ivf-ondisk` needs per million vectors.

    python benchmarks/bench_ondisk.py --n 20000        # seconds
    python benchmarks/bench_ondisk.py --n 1000000      # the RESULTS.md figures (~15 min here)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import Row, clustered_unit, machine, print_table, ratio, run_child  # noqa: E402
from bench_vectors import exact_truth, make_catalog  # noqa: E402

DIM = 512
K = 10

# Shared by both children: resident memory split into anonymous and file-backed pages, and
# a thread that records the peak of each while a phase runs.
MEMORY = """
import os, threading, time

def rss():
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out["RssAnon"], out["RssFile"]

class Peak:
    def __init__(self):
        self.anon = self.file = 0
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
    def run(self):
        while not self.stop:
            anon, file = rss()
            self.anon, self.file = max(self.anon, anon), max(self.file, file)
            time.sleep(0.02)
    def done(self):
        self.stop = True
        self.thread.join()
        anon, file = rss()
        return max(self.anon, anon), max(self.file, file)
"""

BUILD = (
    MEMORY
    + """
import json, sys, time
from pathlib import Path
from clipsearch.store.catalog import Catalog
from clipsearch.store.ondisk import OnDiskIVF
from clipsearch.store.vectors import VectorIndex, training_sample, plan_layout

catalog = Catalog.open(Path(sys.argv[1]) / "catalog.sqlite")
out, kind, dim = Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
base = rss()
# VectorIndex.build, step by step, to measure its two phases.
t = time.perf_counter()
peak = Peak()
layout = plan_layout(catalog.count(), dim, kind)
training = training_sample(catalog, layout)
sample_bytes = training.nbytes
vi = VectorIndex.create(dim, layout, training)
del training
train_peak = peak.done()
t_train = time.perf_counter() - t
peak = Peak()
if kind == "ivf-ondisk":
    vi.index = OnDiskIVF.build(vi.index.head, catalog.iter_vectors(), out)
else:
    for ids, vecs in catalog.iter_vectors():
        vi.add(ids, vecs)
stream_peak = peak.done()
vi.save(out, 0)
seconds = time.perf_counter() - t
print(json.dumps({
    "seconds": seconds, "train_seconds": t_train, "layout": vi.layout.to_dict(),
    "base": base, "train_peak": train_peak, "stream_peak": stream_peak,
    "sample_bytes": sample_bytes,
}))
"""
)

QUERY = (
    MEMORY
    + """
import ctypes, json, os, sys, time
from pathlib import Path
import numpy as np
import faiss
from clipsearch.store.vectors import VectorIndex

folder, dim = Path(sys.argv[1]), int(sys.argv[2])
queries, truth = np.load(sys.argv[3]), np.load(sys.argv[4])
cold = int(sys.argv[5])
base = rss()
t = time.perf_counter()
vi, _ = VectorIndex.load(folder, dim)  # as open_index does for IVF layouts
open_s = time.perf_counter() - t
opened = rss()

def timed(qs):
    times, hits = [], 0
    for q, want in zip(qs, truth, strict=False):
        t = time.perf_counter()
        _, ids = vi.search(q[None, :], 10)
        times.append(time.perf_counter() - t)
        hits += len(set(ids[0].tolist()) & set(want.tolist()))
    return times, hits / (10 * len(qs))

timed(queries)  # warm the page cache and the caches
warm, recall = timed(queries)
after = rss()

def evict():
    # Unmap our pages of the lists file, then drop the file from the page cache.
    lists = faiss.downcast_InvertedLists(vi.index.ivf.invlists)
    view = faiss.rev_swig_ptr(lists.ptr, lists.totsize)
    libc = ctypes.CDLL(None)
    libc.madvise(ctypes.c_void_p(view.ctypes.data), ctypes.c_size_t(lists.totsize), 4)
    fd = os.open(vi.index.lists_path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)

cold_times = []
for q in queries[:cold]:
    evict()
    t = time.perf_counter()
    vi.search(q[None, :], 10)
    cold_times.append(time.perf_counter() - t)
evicted = rss()
print(json.dumps({
    "base": base, "opened": opened, "after": after, "evicted": evicted, "open_s": open_s,
    "warm_ms": float(np.median(warm) * 1000), "recall": recall,
    "cold_ms": float(np.median(cold_times) * 1000) if cold_times else None,
}))
"""
)


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**20:.1f} MiB"


def folder_bytes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir() if p.name.startswith("vectors.")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="vectors")
    ap.add_argument("--queries", type=int, default=200, help="queries to time")
    ap.add_argument("--cold", type=int, default=50, help="queries timed on a cold page cache")
    ap.add_argument("--keep", action="store_true", help="keep the catalog and the indexes")
    ap.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench"))
    args = ap.parse_args()
    print(f"machine: {machine()}", flush=True)
    n = args.n
    work = args.work / f"ondisk-{n}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    t = time.perf_counter()
    vecs, queries = clustered_unit(n, DIM, seed=1, queries=args.queries)
    truth = exact_truth(vecs, queries)
    catalog = make_catalog(work / "catalog", vecs)
    catalog.close()
    del vecs
    np.save(work / "queries.npy", queries)
    np.save(work / "truth.npy", truth)
    print(f"data, truth and catalog in {time.perf_counter() - t:.0f}s", flush=True)

    got: dict[str, dict] = {}
    for kind in ("ivf-ondisk", "ivf"):
        out = work / kind
        out.mkdir()
        argv = [sys.executable, "-c", BUILD, str(work / "catalog"), str(out), kind, str(DIM)]
        _, build_peak, stdout = run_child(argv)
        build = json.loads(stdout)
        print(f"{kind}: built in {build['seconds']:.0f}s", flush=True)
        argv = [sys.executable, "-c", QUERY, str(out), str(DIM), str(work / "queries.npy")]
        argv += [str(work / "truth.npy"), str(args.cold if kind == "ivf-ondisk" else 0)]
        _, _, stdout = run_child(argv)
        got[kind] = {"build": build, "build_peak": build_peak * 2**20, **json.loads(stdout)}
        got[kind]["files"] = folder_bytes(out)
        print(f"{kind}: {got[kind]['warm_ms']:.2f} ms p50", flush=True)
        print(json.dumps(got[kind]), flush=True)  # the raw figures, for the record

    d, r = got["ivf-ondisk"], got["ivf"]
    layout = d["build"]["layout"]

    def anon(x: dict, key: str) -> int:
        return x[key][0] - x["base"][0]

    def file(x: dict, key: str) -> int:
        return x[key][1] - x["base"][1]

    def build_anon(x: dict, key: str) -> int:
        return x["build"][key][0] - x["build"]["base"][0]

    lists = sum(v for k, v in d["files"].items() if k.endswith(".ivfdata"))
    head = d["files"]["vectors.faiss"]
    rows = [
        Row(
            "build (train + add / stream shards + merge), s",
            f"{d['build']['seconds']:.0f} s (train {d['build']['train_seconds']:.0f})",
            f"{r['build']['seconds']:.0f} s (train {r['build']['train_seconds']:.0f})",
            ratio(d["build"]["seconds"], r["build"]["seconds"], higher_is_better=False),
        ),
        Row(
            "build peak RSS (whole process)",
            mib(d["build_peak"]),
            mib(r["build_peak"]),
            ratio(d["build_peak"], r["build_peak"], higher_is_better=False),
        ),
        Row(
            "  of it file pages: shards and lists file mapped (page cache)",
            mib(d["build"]["stream_peak"][1] - d["build"]["base"][1]),
            mib(r["build"]["stream_peak"][1] - r["build"]["base"][1]),
        ),
        Row(
            "  anonymous peak above the bare process: training / adding vectors",
            f"{mib(build_anon(d, 'train_peak'))} / {mib(build_anon(d, 'stream_peak'))}",
            f"{mib(build_anon(r, 'train_peak'))} / {mib(build_anon(r, 'stream_peak'))}",
            "-",
            f"training sample {mib(d['build']['sample_bytes'])}",
        ),
        Row(
            "opened for queries: anonymous RSS (must fit in RAM)",
            mib(anon(d, "opened")),
            mib(anon(r, "opened")),
            ratio(anon(d, "opened"), anon(r, "opened"), higher_is_better=False),
            f"open {d['open_s'] * 1000:.0f} ms vs {r['open_s'] * 1000:.0f} ms",
        ),
        Row(
            f"after {args.queries} queries: anonymous + file pages",
            f"{mib(anon(d, 'after'))} + {mib(file(d, 'after'))}",
            f"{mib(anon(r, 'after'))} + {mib(file(r, 'after'))}",
            "-",
            "file pages: page cache, evictable",
        ),
        Row(
            f"query p50, warm (nlist {layout['nlist']}, nprobe {layout['nprobe']})",
            f"{d['warm_ms']:.2f} ms",
            f"{r['warm_ms']:.2f} ms",
            ratio(d["warm_ms"], r["warm_ms"], higher_is_better=False),
        ),
        Row(
            "query p50, cold page cache (lists file evicted before each query)",
            f"{d['cold_ms']:.2f} ms" if d["cold_ms"] is not None else "-",
        ),
        Row("recall@10 vs exact", f"{d['recall']:.3f}", f"{r['recall']:.3f}"),
        Row(
            "files",
            f"lists {mib(lists)} + vectors.faiss {mib(head)}",
            f"vectors.faiss {mib(r['files']['vectors.faiss'])}",
        ),
    ]
    print_table(f"ivf-ondisk vs ivf in RAM, {n:,} x {DIM}-d, one query at a time", rows)
    nlist, nprobe = layout["nlist"], layout["nprobe"]
    print(
        f"ivf-ondisk memory at {n:,} vectors: querying needs {mib(anon(d, 'opened'))} of"
        f" anonymous RAM ({nlist} centroids: {mib(4 * DIM * nlist)}, growing with sqrt(N)) plus"
        f" page cache for the lists file ({mib(lists * 1e6 / n)} on disk per million vectors;"
        f" a query reads about nprobe/nlist = {nprobe}/{nlist} of it,"
        f" {mib(lists * nprobe / nlist)});"
        f" building needs {mib(build_anon(d, 'stream_peak'))} while adding vectors (one shard,"
        f" whatever N) and {mib(build_anon(d, 'train_peak'))} while training on"
        f" {32 * nlist:,} sample vectors (32 per list).",
        flush=True,
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
