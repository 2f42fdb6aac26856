"""Search latency end to end: a warm text query, and a cold `clipsearch search` process.

Builds an index of N clustered 512-d vectors (no images are needed to measure search) under
the default model, ViT-B-16-quickgelu, whose random weights are planted in a private Hugging
Face cache so everything loads offline exactly as the real weights do. clipsearch's own cache
(the text-tower record that lets text queries skip torch) is private too. Then, in one run:

* warm: `ImageIndex.search(text)` p50 (text encoding included: the ONNX Runtime text tower a
  process uses from its second query on, beside the NumPy one of its first query) against
  what a user would write: the full open_clip model in fp32 encoding the text, then every
  vector ranked with NumPy in Python; and, for reference, the torch text tower in bf16 that
  served text queries before the NumPy one;
* the read path, each part beside the way it was done before (same run, interleaved): the
  catalog's reads in plain sqlite3 against SQLAlchemy's ORM, the mapped vector file opened by
  its stamp against a crc32 of every byte, the NumPy text tower's last block on the pooled
  row against every position;
* cold: `clipsearch search TEXT` as a fresh process (wall time and peak RSS, p50 of several
  runs) against a plain script that imports open_clip, creates the full model, reads every
  vector from the catalog, encodes and ranks; then where the cold process spends its time.

    python benchmarks/bench_search.py              # 20k vectors, a minute or two
    python benchmarks/bench_search.py --n 100000   # the 100k figures of RESULTS.md
"""

from __future__ import annotations

import argparse
import json
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
    compile_package,
    machine,
    peak_rss_mib,
    percentile_ms,
    plant_default_model,
    print_table,
    ratio,
    run_child,
    run_child_cpu,
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


def build_index(folder: Path, n: int, env: dict[str, str], model: str | None = None) -> None:
    """An index of n clustered vectors with fake file records, saved flat, under ``model``
    (by default the default model, from the planted cache)."""
    from clipsearch import ImageIndex
    from clipsearch.store.catalog import NewImage

    marker = folder / f"built-{n}-v2"  # v2: vectors.json records the file's stamp
    if marker.exists():
        return
    shutil.rmtree(folder, ignore_errors=True)
    vecs, _ = clustered_unit(n, 512, seed=1)
    t = time.perf_counter()
    with ImageIndex.create(folder, model) as index:
        root, _ = index.catalog.adopt_roots("/photos")
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


def ensure_text_record(folder: Path) -> str:
    """Make sure the model has its text-tower record (written when torch loads it, as
    `clipsearch index` does); returns how the text queries will run."""
    from clipsearch import ImageIndex
    from clipsearch.models.texttower import cached_text_encoder

    with ImageIndex.open(folder, device="cpu") as index:
        if cached_text_encoder(index.spec, index.identity) is None:
            _ = index.encoder  # the torch load records the text tower
        if cached_text_encoder(index.spec, index.identity) is None:
            raise RuntimeError(f"{index.spec.describe()} got no text-tower record")
    return "NumPy fp32"


def warm(folder: Path, n: int, queries: list[str]) -> list[Row]:
    import open_clip
    import torch

    from clipsearch import ImageIndex
    from clipsearch.models.loading import load_spec
    from clipsearch.models.texttower import ONNX_THREADS, NumpyTextEncoder
    from clipsearch.store.catalog import Catalog
    from clipsearch.threads import BLAS, limit_threads

    rows = []
    with ImageIndex.open(folder, device="cpu", precision="auto") as index:
        index.search("warm up", k=10)  # a process's first query: the NumPy text tower
        encoder = index.text_encoder
        assert isinstance(encoder, NumpyTextEncoder)
        ntimes = []
        for q in queries:
            tokens = encoder.tokenizer([q])
            with limit_threads(1, BLAS):
                t = time.perf_counter()
                encoder.tower(tokens)
                ntimes.append(time.perf_counter() - t)
        t = time.perf_counter()
        assert encoder.warm(), "no ONNX Runtime text tower"  # what the second query does
        session = time.perf_counter() - t
        index.search("warm up again", k=10)  # the session's first run
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
        # The torch text tower at the default precision (bf16 here): the path before NumPy's.
        torch_text = load_spec(index.spec, device="cpu", precision="auto", towers="text")
        torch_text.encode_texts(["warm up"])
        ttimes = []
        for q in queries:
            t = time.perf_counter()
            torch_text.encode_texts([q])
            ttimes.append(time.perf_counter() - t)

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
            f"warm text query p50, {n:,} images (ONNX Runtime fp32 text, flat)",
            f"{ours:.1f} ms",
            f"{base:.1f} ms",
            ratio(ours, base, higher_is_better=False),
            mem,
        )
    )
    rows.append(
        Row(
            f"  of which text p50: ONNX Runtime fp32, {ONNX_THREADS} threads (base: NumPy, 1)",
            f"{percentile_ms(etimes):.1f} ms",
            f"{percentile_ms(ntimes):.1f} ms",
            ratio(percentile_ms(etimes), percentile_ms(ntimes), higher_is_better=False),
        )
    )
    rows.append(Row("  ONNX Runtime session, made once (second query)", f"{session:.2f} s"))
    rows.append(Row("  of which FAISS search p50 (1 thread)", f"{percentile_ms(ftimes):.2f} ms"))
    rows.append(
        Row(
            f"  for reference: torch text tower, {torch_text.precision}, 1 thread",
            f"{percentile_ms(ttimes):.1f} ms",
        )
    )
    return rows


def read_path(folder: Path, queries: list[str], rounds: int = 20) -> list[Row]:
    """The parts of the read path changed for issue #18, each beside the way it was done
    before, interleaved in this run: the catalog's reads in plain sqlite3 against SQLAlchemy's
    ORM, the mapped vector file opened by its stamp against a crc32 of every byte, and the
    NumPy text tower's last block on the pooled rows against all rows."""
    import zlib

    from sqlalchemy import func, select

    from clipsearch import ImageIndex
    from clipsearch.models.npmath import layer_norm
    from clipsearch.store.schema import ImageRow, Meta, Root
    from clipsearch.store.vectors import INDEX_FILE, VectorIndex

    def interleaved(ours, old) -> tuple[float, float]:
        a, b = [], []
        for _ in range(rounds):
            for fn, out in ((ours, a), (old, b)):
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
        return percentile_ms(a), percentile_ms(b)

    rows = []
    with ImageIndex.open(folder, device="cpu", precision="auto") as index:
        catalog, ids = index.catalog, index.catalog.ids()[:10].tolist()

        def plain() -> None:
            catalog.generation(), catalog.count(), catalog.images(ids)

        def orm() -> None:
            with catalog.session() as sess:
                sess.get(Meta, "generation"), sess.scalar(select(func.count(ImageRow.id)))
                sess.execute(
                    select(ImageRow, Root.path)
                    .join(Root, Root.id == ImageRow.root_id)
                    .where(ImageRow.id.in_(ids))
                ).all()

        ours, old = interleaved(plain, orm)
        rows.append(
            Row(
                "catalog reads of a search (generation, count, 10 records): sqlite3 vs SQLAlchemy",
                f"{ours:.2f} ms",
                f"{old:.2f} ms",
                ratio(ours, old, higher_is_better=False),
            )
        )

        def stamped() -> None:
            VectorIndex.load(folder, index.identity.dim, mmap=True)

        def checksummed() -> None:
            VectorIndex.load(folder, index.identity.dim, mmap=True)
            zlib.crc32(np.memmap(folder / INDEX_FILE, dtype=np.uint8, mode="r"))

        ours, old = interleaved(stamped, checksummed)
        rows.append(
            Row(
                "open the mapped vector index: by its stamp vs a crc32 of every byte",
                f"{ours:.2f} ms",
                f"{old:.2f} ms",
                ratio(ours, old, higher_is_better=False),
            )
        )
        encoder = index.text_encoder
        tower, tokens = encoder.tower, [encoder.tokenizer([q]) for q in queries]
        it = iter(range(10**9))

        def pooled_only() -> None:
            tower(tokens[next(it) % len(tokens)])

        def all_rows() -> None:  # every block over every position, then pool (the old way)
            tok = tokens[next(it) % len(tokens)]
            c, t = tower.config, tower.tensors
            end = int(np.asarray(tok).argmax(axis=1)[0])
            x = (
                t["token_embedding.weight"][tok[:, : end + 1]]
                + t["positional_embedding"][: end + 1]
            )
            x = x.reshape(end + 1, c.width)
            for i in range(c.layers):
                x = tower._block(i, x, end + 1, None)
            x = layer_norm(x[end:], t["ln_final.weight"], t["ln_final.bias"], c.ln_eps)
            _ = x @ t["text_projection"]

        from clipsearch.threads import BLAS, limit_threads

        with limit_threads(1, BLAS):
            ours, old = interleaved(pooled_only, all_rows)
        rows.append(
            Row(
                "NumPy text tower p50: last block on the pooled row vs on every position",
                f"{ours:.1f} ms",
                f"{old:.1f} ms",
                ratio(ours, old, higher_is_better=False),
            )
        )
    return rows


# Where a cold text search spends its time: the same steps as `clipsearch search`, timed.
PHASES_SCRIPT = """
import json, sys, time
t0 = time.perf_counter()
import numpy
t1 = time.perf_counter()
from clipsearch.cli.main import main
from clipsearch.index.imageindex import ImageIndex
t2 = time.perf_counter()
index = ImageIndex.open(sys.argv[1])
t3 = time.perf_counter()
encoder = index.text_encoder
t4 = time.perf_counter()
vec = index.embed_text(sys.argv[2])
t5 = time.perf_counter()
_ = index.vectors
t6 = time.perf_counter()
hits = index.search_vector(vec, k=10)
t7 = time.perf_counter()
loaded = [m for m in ("torch", "open_clip", "torchvision", "sqlalchemy") if m in sys.modules]
print(json.dumps({
    "import numpy": t1 - t0,
    "import clipsearch.cli.main and .index": t2 - t1,
    "open the catalog": t3 - t2,
    "text encoder: record, tokenizer tables, mapped weights": t4 - t3,
    "first text encoding (pages of the weights read in)": t5 - t4,
    "FAISS import, mapped index, checksum": t6 - t5,
    "search and catalog lookups": t7 - t6,
    "loaded": loaded,
}))
"""


def cold(folder: Path, n: int, env: dict[str, str], repeat: int) -> list[Row]:
    ours, base = [], []
    ours_mem = base_mem = 0.0
    query = "a dog on the beach"
    cli = [sys.executable, "-m", "clipsearch", "--index", str(folder), "search", query, "-k", "10"]
    plain = [sys.executable, "-c", PLAIN_SCRIPT, "ViT-B-16-quickgelu", "dfn2b"]
    plain += [str(folder / "catalog.sqlite"), query]
    ours_cpu, base_cpu = [], []
    for _ in range(repeat):  # interleaved, so both see the same machine load
        wall, mem, cpu, out = run_child_cpu(cli, env)
        ours.append(wall)
        ours_cpu.append(cpu)
        ours_mem = max(ours_mem, mem)
        wall, mem, cpu, _ = run_child_cpu(plain, env)
        base.append(wall)
        base_cpu.append(cpu)
        base_mem = max(base_mem, mem)
    o, b = statistics.median(ours), statistics.median(base)
    oc, bc = statistics.median(ours_cpu), statistics.median(base_cpu)
    spread = f"{min(ours):.2f}-{max(ours):.2f} s vs {min(base):.2f}-{max(base):.2f} s"
    rows = [
        Row(
            f"cold `clipsearch search`, {n:,} images (p50 of {repeat}; range {spread})",
            f"{o:.2f} s",
            f"{b:.2f} s",
            ratio(o, b, higher_is_better=False),
            f"{ours_mem:.0f} / {base_mem:.0f} MiB",
        ),
        Row(
            "  CPU time (user + system) p50",
            f"{oc:.2f} s",
            f"{bc:.2f} s",
            ratio(oc, bc, higher_is_better=False),
        ),
    ]
    phases = []
    for _ in range(repeat):
        _, _, out = run_child([sys.executable, "-c", PHASES_SCRIPT, str(folder), query], env)
        phases.append(json.loads(out.strip().splitlines()[-1]))
    loaded = sorted({m for p in phases for m in p.pop("loaded")})
    for name in phases[0]:
        rows.append(Row(f"  {name} (p50)", f"{statistics.median(p[name] for p in phases):.3f} s"))
    rows.append(
        Row("  torch / open_clip / torchvision / sqlalchemy imported", ", ".join(loaded) or "none")
    )
    rows += import_rows(env, repeat)
    # For scale: what the plain approach pays before it computes anything.
    imports = run_importtime(env)
    for name in ("torch", "open_clip"):
        if name in imports:
            rows.append(Row(f"  (plain approach) import {name}", f"{imports[name]:.2f} s"))
    return rows


def import_rows(env: dict[str, str], repeat: int) -> list[Row]:
    """Importing what a cold search imports, against the same with SQLAlchemy's ORM (what the
    catalog imported before its reads moved to plain sqlite3); fresh processes, interleaved."""
    search = "import clipsearch.cli.main, clipsearch.cli.searching, clipsearch.index.imageindex"
    ours, old = [], []
    for _ in range(repeat):
        ours.append(run_child_cpu([sys.executable, "-c", search], env))
        old.append(run_child_cpu([sys.executable, "-c", f"import sqlalchemy.orm; {search}"], env))
    rows = []
    for i, what in ((0, "wall"), (2, "CPU")):
        o, b = (statistics.median(r[i] for r in runs) for runs in (ours, old))
        rows.append(
            Row(
                f"  process start + imports of a search vs with SQLAlchemy, {what} p50",
                f"{o:.3f} s",
                f"{b:.3f} s",
                ratio(o, b, higher_is_better=False),
            )
        )
    return rows


def run_importtime(env: dict[str, str]) -> dict[str, float]:
    import subprocess

    code = "import torch, open_clip"
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
        if len(parts) == 3 and parts[1].isdigit() and parts[2] in ("torch", "open_clip"):
            out[parts[2]] = int(parts[1]) / 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="vectors in the index")
    ap.add_argument("--queries", type=int, default=20, help="warm queries to time")
    ap.add_argument("--repeat", type=int, default=5, help="cold starts to time")
    ap.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench"))
    args = ap.parse_args()

    print(f"machine: {machine()}", flush=True)
    compile_package()
    env = plant_default_model(args.work / "hf-cache")
    env["XDG_CACHE_HOME"] = str(args.work / "cache")  # clipsearch's text-tower record
    os.environ.update(env)
    folder = args.work / f"search-index-{args.n}"
    build_index(folder, args.n, env)
    ensure_text_record(folder)
    queries = (QUERIES * (args.queries // len(QUERIES) + 1))[: args.queries]
    rows = warm(folder, args.n, queries)
    rows += read_path(folder, queries)
    rows += cold(folder, args.n, env, args.repeat)
    print_table(f"search, {args.n:,} images, ViT-B-16 (random weights)", rows)


if __name__ == "__main__":
    main()
