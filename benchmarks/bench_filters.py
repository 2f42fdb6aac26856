"""The cost of the date, camera and place filters on a warm search.

An index of N clustered 512-d vectors (no images needed) with file records that carry dates
over ten years, one of ten cameras, and a GPS position for half of them (scattered over
Europe, some around Paris). Each figure is the p50 of ``ImageIndex.search_vector`` over the
same query vectors, k=10, against the unfiltered search measured in the same run: the
filters build an id allow-list from the catalog, then FAISS searches only those ids.

    python benchmarks/bench_filters.py              # 100k vectors, the figures of RESULTS.md
    python benchmarks/bench_filters.py --n 20000    # a quick look
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _common import Row, clustered_unit, machine, percentile_ms, print_table, ratio  # noqa: E402

CAMERAS = [("Canon", f"EOS {i}D") for i in range(5)] + [("SONY", f"ILCE-{i}") for i in range(5)]
START = 1_420_070_400.0  # 2015-01-01 UTC
YEAR = 365.25 * 86400


def build(folder: Path, n: int) -> None:
    from clipsearch import ImageIndex
    from clipsearch.media.photometa import PhotoMeta
    from clipsearch.store.catalog import NewImage

    rng = np.random.default_rng(2)
    vecs, _ = clustered_unit(n, 512, seed=1)
    with ImageIndex.create(folder, "demo") as index:
        root, _ = index.catalog.adopt_roots("/photos")
        for s in range(0, n, 5000):
            block = vecs[s : s + 5000]
            new = []
            for i in range(s, s + len(block)):
                make, model = CAMERAS[i % len(CAMERAS)]
                placed = rng.random() < 0.5
                paris = rng.random() < 0.1
                lat = 48.8566 + rng.normal(0, 0.05) if paris else rng.uniform(36, 60)
                lon = 2.3522 + rng.normal(0, 0.05) if paris else rng.uniform(-9, 25)
                meta = PhotoMeta(
                    taken=START + rng.uniform(0, 10 * YEAR),
                    taken_source="exif",
                    camera_make=make,
                    camera_model=model,
                    lat=lat if placed else None,
                    lon=lon if placed else None,
                )
                rel = f"{i // 1000:04d}/IMG_{i:07d}.jpg"
                new.append(NewImage(root, rel, 1, i, f"{i:064x}", 4000, 3000, meta))
            index.catalog.commit_batch(new, block)
        _ = index.vectors
        index.save_vectors()


def measure(folder: Path, n: int, repeat: int) -> list[Row]:
    from clipsearch import ImageIndex

    queries, _ = clustered_unit(repeat, 512, seed=7)
    cases = {
        "no filter (baseline)": {},
        "--after 2020 --before 2021 (1 year of 10)": {"after": "2020", "before": "2021"},
        "--after 2018 (7 years of 10)": {"after": "2018"},
        "--camera 'eos 3d' (1 camera of 10)": {"camera": "eos 3d"},
        "--near 48.86,2.35,10 (around Paris)": {"near": "48.86,2.35,10"},
        "--after 2018 --camera canon --near 48.86,2.35,10": {
            "after": "2018",
            "camera": "canon",
            "near": "48.86,2.35,10",
        },
        "--prefix /photos/0001 (for comparison)": {"path_prefix": "/photos/0001"},
    }
    rows, base = [], 0.0
    with ImageIndex.open(folder, device="cpu") as index:
        for label, where in cases.items():
            kept = matching(index, where)
            samples = []
            for q in queries:
                t = time.perf_counter()
                hits = index.search_vector(q, k=10, **where)
                samples.append(time.perf_counter() - t)
            p50 = percentile_ms(samples)
            base = base or p50
            rows.append(
                Row(
                    f"{label}: {kept:,} match, {len(hits)} hits",
                    f"{p50:.1f} ms",
                    f"{base:.1f} ms",
                    ratio(p50, base, higher_is_better=False),
                )
            )
    return rows


def matching(index, where: dict[str, str]) -> int:
    """How many images pass the filters."""
    from clipsearch.index.filters import Filters

    meta = Filters.parse(**{k: v for k, v in where.items() if k != "path_prefix"})
    ids = index.catalog.ids_matching(path_prefix=where.get("path_prefix"), **meta.catalog_args())
    return len(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-filters-"))
    try:
        t = time.perf_counter()
        build(folder / "index", args.n)
        print(f"built {args.n} records in {time.perf_counter() - t:.0f}s on {machine()}")
        rows = measure(folder / "index", args.n, args.repeat)
        print_table(f"Filtered warm search, {args.n:,} x 512-d, k=10, p50", rows)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
