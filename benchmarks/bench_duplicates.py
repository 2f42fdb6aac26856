"""Near-duplicates at scale: the FAISS k-NN self-join of ``clipsearch duplicates`` against a
NumPy all-pairs scan.

N clustered unit vectors of 512 dimensions (``_common.clustered_unit``, shaped like CLIP image
embeddings) with planted near-duplicates: groups of 2-5 noisy copies of some vectors, at cosine
~0.96-0.995 to their source (re-encodes, resizes, bursts). Every method finds all pairs at
cosine >= the threshold and joins them into groups (union-find), in a fresh process each:

* baseline: NumPy all-pairs in blocks (``X[block] @ X.T``, then the cells above the threshold):
  exact, the obvious way without an index;
* ``flat``: :func:`clipsearch.index.duplicates.similar_pairs` over an exact FAISS index;
* ``hnsw``: the same over an HNSW graph (its build time reported apart), with its recall of
  the exact pairs.

Memory is the peak growth of the process over the vectors it loaded (the index copy
included).

    python benchmarks/bench_duplicates.py               # 100k vectors, a few minutes
    python benchmarks/bench_duplicates.py --n 20000     # a quick look
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _common import Row, clustered_unit, machine, print_table, ratio, rss_mib, run_child  # noqa: E402

DIM = 512
BLOCK = 1024  # rows per block of the NumPy baseline (the batch of the self-join too)


def planted(n: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """``n`` clustered vectors, about 5% of them noisy copies of others; and how many copies."""
    rng = np.random.default_rng(seed + 1)
    x, _ = clustered_unit(n, DIM, seed=seed)
    sources = rng.choice(n // 2, size=n // 60, replace=False)
    copies, row = 0, n - 1
    for s in sources:
        for _ in range(rng.integers(1, 5)):  # groups of 2-5
            noise = rng.standard_normal(DIM).astype(np.float32)
            v = x[s] + rng.uniform(0.1, 0.3) * noise / np.linalg.norm(noise)
            x[row] = v / np.linalg.norm(v)
            row, copies = row - 1, copies + 1
    return x, copies


def numpy_pairs(x: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    a_parts, b_parts = [], []
    for start in range(0, len(x), BLOCK):
        sims = x[start : start + BLOCK] @ x.T
        r, c = np.nonzero(sims >= threshold)
        keep = start + r < c
        a_parts.append(start + r[keep])
        b_parts.append(c[keep])
    return np.concatenate(a_parts).astype(np.int64), np.concatenate(b_parts).astype(np.int64)


def child(method: str, data: Path, threshold: float, out: Path) -> None:
    from clipsearch.index.duplicates import Components, iter_pairs
    from clipsearch.store.vectors import IndexLayout, VectorIndex

    x = np.load(data)
    ids = np.arange(len(x), dtype=np.int64)
    loaded = rss_mib()
    build = 0.0
    comps = Components(ids)
    if method == "numpy":
        t = time.perf_counter()
        a, b = numpy_pairs(x, threshold)
        comps.join(a, b)
    else:  # as ImageIndex.duplicates runs it: batch by batch into the groups
        t = time.perf_counter()
        vi = VectorIndex.create(DIM, IndexLayout(method))
        vi.add(ids, x)
        build = time.perf_counter() - t
        t = time.perf_counter()
        parts = []
        for pa, pb, _ in iter_pairs(vi, [(ids, x)], threshold):
            comps.join(pa, pb)
            parts.append((np.minimum(pa, pb), np.maximum(pa, pb)))  # for the recall
        a = np.concatenate([p[0] for p in parts])
        b = np.concatenate([p[1] for p in parts])
    groups = comps.groups()
    seconds = time.perf_counter() - t
    np.save(out, np.stack([a, b]))
    report = {"seconds": seconds, "build": build, "loaded": loaded, "groups": len(groups)}
    print(json.dumps(report))


def measure(method: str, data: Path, threshold: float, tmp: Path) -> dict:
    out = tmp / f"{method}-pairs.npy"
    argv = [sys.executable, __file__, "--child", method, "--data", str(data)]
    _, peak, stdout = run_child([*argv, "--threshold", str(threshold), "--out", str(out)])
    report = json.loads(stdout.strip().splitlines()[-1])
    pairs = np.load(out)
    report["pairs"] = {(int(p), int(q)) for p, q in pairs.T}
    report["memory"] = peak - report["loaded"]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--threshold", type=float, default=0.95)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.threshold, args.out)
        return
    print(f"machine: {machine()}")
    x, copies = planted(args.n)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "vectors.npy"
        np.save(data, x)
        size = x.nbytes / 2**20
        del x
        base = measure("numpy", data, args.threshold, Path(tmp))
        results = {m: measure(m, data, args.threshold, Path(tmp)) for m in ("flat", "hnsw")}
    truth = base["pairs"]
    rows = [
        Row(
            f"NumPy all-pairs in blocks of {BLOCK} (baseline): {len(truth)} pairs, "
            f"{base['groups']} groups",
            f"{base['seconds']:.1f} s",
            memory=f"{base['memory']:.0f} MiB",
        )
    ]
    for method, r in results.items():
        found = len(r["pairs"] & truth) / max(len(truth), 1)
        extra = len(r["pairs"] - truth)
        rows.append(
            Row(
                f"{method} self-join: recall {found:.4f} of the pairs ({extra} not in the "
                f"baseline), {r['groups']} groups, index build {r['build']:.1f} s",
                f"{r['seconds']:.1f} s",
                f"{base['seconds']:.1f} s",
                ratio(r["seconds"], base["seconds"], higher_is_better=False),
                f"{r['memory']:.0f} MiB",
            )
        )
    title = (
        f"{args.n:,} clustered x {DIM}-d ({size:.0f} MiB), {copies} planted copies, "
        f"threshold {args.threshold}"
    )
    print_table(title, rows)


if __name__ == "__main__":
    main()
