"""Search latency end to end: a warm text query, and a cold `clipsearch search` process.

Builds an index of N clustered 512-d vectors (no images are needed to measure search) under
the default model, ViT-B-16-quickgelu, whose random weights are planted in a private Hugging
Face cache so everything loads offline exactly as the real weights do. Then, in one run:

* warm: `ImageIndex.search(text)` p50 (text encoding included) against what a user would
  write: the full open_clip model in fp32 encoding the text, then every vector ranked with
  NumPy in Python;
* cold: `clipsearch search TEXT` as a fresh process (wall time and peak RSS) against a plain
  script that imports open_clip, creates the full model, reads every vector from the catalog,
  encodes and ranks.

    python benchmarks/bench_search.py              # 20k vectors, a minute or two
    python benchmarks/bench_search.py --n 100000   # the 100k figures of RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    Row,
    clustered_unit,
    machine,
    peak_rss_mib,
    percentile_ms,
    plant_default_model,
    print_table,
    ratio,
    run_child,
)

QUERIES = [
    "a dog on the beach",
    "sunset over the mountains",
    "a red car parked on a street",
    "children playing in the snow",
    "a plate of pasta",
    "an old church in a small town",
    "a cat sleeping on a sofa",
    "fireworks over a city at night",
    "a bicycle leaning against a wall",
    "people dancing at a wedding",
    "a lighthouse in the fog",
    "a bowl of fruit on a wooden table",
    "a waterfall in a green forest",
    "a birthday cake with candles",
    "a train crossing a bridge",
    "a snowy mountain cabin",
    "a crowded market street",
    "a portrait of an old man smiling",
    "boats in a harbour",
    "a field of sunflowers",
]

PLAIN_SCRIPT = """
import sqlite3, sys
import numpy as np
import open_clip, torch
name, tag, db, query = sys.argv[1:5]
model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag)
model.eval()
tokenizer = open_clip.get_tokenizer(name)
con = sqlite3.connect(db)
rows = con.execute("SELECT image_id, data FROM vectors ORDER BY image_id").fetchall()
ids = np.array([r[0] for r in rows])
vecs = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
with torch.no_grad():
    q = model.encode_text(tokenizer([query]))
q = torch.nn.functional.normalize(q, dim=-1)[0].numpy()
scores = vecs @ q
top = np.argsort(-scores)[:10]
for i in top:
    print(ids[i], scores[i])
"""


def build_index(folder: Path, n: int, env: dict[str, str]) -> None:
    """An index of n clustered vectors with fake file records, saved flat."""
    from clipsearch import ImageIndex
    from clipsearch.catalog import NewImage

    marker = folder / f"built-{n}"
    if marker.exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    vecs, _ = clustered_unit(n, 512, seed=1)
    t = time.perf_counter()
    with ImageIndex.create(folder) as index:  # the default model, from the planted cache
        root = index.catalog.root_id("/photos")
        for s in range(0, n, 5000):
            block = vecs[s : s + 5000]
            new = [
                NewImage(root, f"{i // 1000:04d}/IMG_{i:07d}.jpg", 1, i, f"{i:064x}", 4000, 3000)
                for i in range(s, s + len(block))
            ]
            index.catalog.commit_batch(new, block)
        _ = index.vectors  # sync the FAISS index from the catalog
        index.save_vectors()
    marker.touch()
    print(f"built an index of {n} vectors in {time.perf_counter() - t:.0f}s", flush=True)


def warm(folder: Path, n: int, queries: list[str]) -> list[Row]:
    import open_clip
    import torch

    from clipsearch import ImageIndex
    from clipsearch.catalog import Catalog

    rows = []
    with ImageIndex.open(folder, device="cpu", precision="auto") as index:
        index.search("warm up", k=10)
        precision = index.text_encoder.precision
        times = []
        for q in queries:
            t = time.perf_counter()
            index.search(q, k=10)
            times.append(time.perf_counter() - t)
        ours = percentile_ms(times)
        # The same with the FAISS part alone, to show where the time goes.
        vec = index.embed_text(queries[0])
        ftimes = []
        for _ in range(len(queries)):
            t = time.perf_counter()
            index.vectors.search(vec[None, :], 18)
            ftimes.append(time.perf_counter() - t)
        etimes = []
        for q in queries:
            t = time.perf_counter()
            index.embed_text(q)
            etimes.append(time.perf_counter() - t)
        mem = f"{peak_rss_mib():.0f} MiB"

    # Baseline: the full model in fp32 and a NumPy ranking of every vector, per query.
    model, _, _ = open_clip.create_model_and_transforms("ViT-B-16-quickgelu", pretrained="dfn2b")
    model.eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16-quickgelu")
    catalog = Catalog.open(folder / "catalog.sqlite")
    blocks = list(catalog.iter_vectors())
    catalog.close()
    ids = np.concatenate([b[0] for b in blocks])
    vecs = np.concatenate([b[1] for b in blocks])
    base_times = []
    for q in [queries[0], *queries]:
        t = time.perf_counter()
        with torch.no_grad():
            f = model.encode_text(tokenizer([q]))
        f = torch.nn.functional.normalize(f, dim=-1)[0].numpy()
        scores = vecs @ f
        top = np.argsort(-scores)[:10]
        _ = [(int(ids[i]), float(scores[i])) for i in top]
        base_times.append(time.perf_counter() - t)
    base = percentile_ms(base_times[1:])
    rows.append(
        Row(
            f"warm text query p50, {n:,} images ({precision} text, flat)",
            f"{ours:.1f} ms",
            f"{base:.1f} ms",
            ratio(ours, base, higher_is_better=False),
            mem,
        )
    )
    rows.append(Row("  of which text encoding p50", f"{percentile_ms(etimes):.1f} ms"))
    rows.append(Row("  of which FAISS search p50 (1 thread)", f"{percentile_ms(ftimes):.2f} ms"))
    return rows


def cold(folder: Path, n: int, env: dict[str, str], repeat: int) -> list[Row]:
    ours, base = [], []
    ours_mem = base_mem = 0.0
    query = "a dog on the beach"
    cli = [sys.executable, "-m", "clipsearch", "--index", str(folder), "search", query, "-k", "10"]
    plain = [sys.executable, "-c", PLAIN_SCRIPT, "ViT-B-16-quickgelu", "dfn2b"]
    plain += [str(folder / "catalog.sqlite"), query]
    for _ in range(repeat):  # interleaved, so both see the same machine load
        wall, mem, out = run_child(cli, env)
        ours.append(wall)
        ours_mem = max(ours_mem, mem)
        wall, mem, _ = run_child(plain, env)
        base.append(wall)
        base_mem = max(base_mem, mem)
    o, b = statistics.median(ours), statistics.median(base)
    rows = [
        Row(
            f"cold `clipsearch search`, {n:,} images (median of {repeat})",
            f"{o:.2f} s",
            f"{b:.2f} s",
            ratio(o, b, higher_is_better=False),
            f"{ours_mem:.0f} / {base_mem:.0f} MiB",
        )
    ]
    # Where a cold start goes: the import times of the big modules.
    _, _, _ = run_child([sys.executable, "-c", "pass"], env)
    imports = run_importtime(env)
    for name in ("torch", "open_clip", "faiss", "sqlalchemy", "clipsearch"):
        if name in imports:
            rows.append(Row(f"  import {name}", f"{imports[name]:.2f} s"))
    return rows


def run_importtime(env: dict[str, str]) -> dict[str, float]:
    import subprocess

    code = "import clipsearch.cli, clipsearch.index, torch, open_clip, faiss"
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=True,
    )
    out: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[1].isdigit():
            name = parts[2]
            if name in ("torch", "open_clip", "faiss", "sqlalchemy", "clipsearch"):
                out[name] = int(parts[1]) / 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="vectors in the index")
    ap.add_argument("--queries", type=int, default=20, help="warm queries to time")
    ap.add_argument("--repeat", type=int, default=3, help="cold starts to time")
    ap.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench"))
    args = ap.parse_args()

    print(f"machine: {machine()}", flush=True)
    env = plant_default_model(args.work / "hf-cache")
    os.environ.update(env)
    folder = args.work / f"search-index-{args.n}"
    build_index(folder, args.n, env)
    queries = (QUERIES * (args.queries // len(QUERIES) + 1))[: args.queries]
    rows = warm(folder, args.n, queries)
    rows += cold(folder, args.n, env, args.repeat)
    print_table(f"search, {args.n:,} images, ViT-B-16 (random weights)", rows)


if __name__ == "__main__":
    main()
