"""Text search with a Hugging Face text tower, beside the CLIP-BPE default, in one run.

The multilingual model is a random-weight model of the real size of
``xlm-roberta-base-ViT-B-32`` (XLM-R base text tower: 12 layers, width 768, a tokenizer of
about 250k tokens trained on generated text; ViT-B-32 image tower), written as a ``local-dir:``
folder by make_hf_model.py. The baseline is the default model, ViT-B-16-quickgelu with random
weights planted in a private Hugging Face cache (as bench_search.py does), whose text queries
take the NumPy text tower. Both indexes hold the same N clustered 512-d vectors
(bench_search.build_index). Measured:

* warm: ``ImageIndex.search(text)`` p50, and the text encoding alone, as the CLI runs them
  (both text towers in NumPy, fp32, from their cache records); for reference, each model's
  text tower in torch, bf16 and fp32 (the path of HF towers that the NumPy one does not cover);
* cold: ``clipsearch search TEXT`` as a fresh process (p50 of several, interleaved), and where
  the HF model's cold process spends its time.

    python benchmarks/bench_search_hf.py              # 20k vectors
    python benchmarks/bench_search_hf.py --n 100000   # the figures of RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    Row,
    machine,
    percentile_ms,
    plant_default_model,
    print_table,
    ratio,
    run_child,
)
from bench_search import PHASES_SCRIPT, QUERIES, build_index, ensure_text_record  # noqa: E402
from make_hf_model import make_hf_model  # noqa: E402

# Queries the multilingual model reads (its tokenizer was trained on generated words, so these
# split into more, shorter pieces than with XLM-R's own: if anything, slower).
OTHER_SCRIPTS = [
    "해변에서 노는 강아지",
    "산 위의 일몰",
    "собака на пляже",
    "закат над горами",
    "浜辺の犬",
]


def warm_times(folder: Path, queries: list[str], precision: str) -> tuple[float, float, str]:
    """(search p50 ms, text encoding p50 ms, what encodes the text) for an index."""
    from clipsearch import ImageIndex

    with ImageIndex.open(folder, device="cpu", precision=precision) as index:
        index.search("warm up", k=10)
        encoder = index.text_encoder
        kind = f"{type(encoder).__name__}, {encoder.precision}"
        search, encode = [], []
        for q in queries:
            t = time.perf_counter()
            index.search(q, k=10)
            search.append(time.perf_counter() - t)
        for q in queries:
            t = time.perf_counter()
            index.embed_text(q)
            encode.append(time.perf_counter() - t)
    return percentile_ms(search), percentile_ms(encode), kind


def torch_text_ms(folder: Path, queries: list[str], precision: str) -> float:
    """Text encoding p50 of the index's model's text tower in torch (the path before the
    NumPy one, and the path of HF towers that hftower.py does not cover)."""
    from clipsearch import ImageIndex
    from clipsearch.models.loading import load_spec

    with ImageIndex.open(folder) as index:
        spec = index.spec
    encoder = load_spec(spec, device="cpu", precision=precision, towers="text")
    encoder.encode_texts(["warm up"])
    times = []
    for q in queries:
        t = time.perf_counter()
        encoder.encode_texts([q])
        times.append(time.perf_counter() - t)
    return percentile_ms(times)


def warm(hf: Path, clip: Path, n: int, queries: list[str]) -> list[Row]:
    hs, he, hkind = warm_times(hf, queries, "auto")
    cs, ce, ckind = warm_times(clip, queries, "auto")
    others = OTHER_SCRIPTS * (len(queries) // len(OTHER_SCRIPTS))
    ks, ke, _ = warm_times(hf, others, "auto")
    slower = {"higher_is_better": False}
    rows = [
        Row(
            f"warm text query p50, {n:,} images, flat (HF: {hkind}; CLIP: {ckind})",
            f"{hs:.1f} ms",
            f"{cs:.1f} ms",
            ratio(hs, cs, **slower),
        ),
        Row(
            "  of which text encoding p50",
            f"{he:.1f} ms",
            f"{ce:.1f} ms",
            ratio(he, ce, **slower),
        ),
        Row("  Korean, Russian, Japanese queries: search p50", f"{ks:.1f} ms", "-", "-"),
        Row("  Korean, Russian, Japanese queries: text encoding p50", f"{ke:.1f} ms", "-", "-"),
    ]
    for precision in ("bf16", "fp32"):
        hf_ms, clip_ms = (
            torch_text_ms(hf, queries, precision),
            torch_text_ms(clip, queries, precision),
        )
        rows.append(
            Row(
                f"  for reference: torch text tower, {precision}, text encoding p50",
                f"{hf_ms:.1f} ms",
                f"{clip_ms:.1f} ms",
                ratio(hf_ms, clip_ms, **slower),
            )
        )
    return rows


def cold(hf: Path, clip: Path, n: int, env: dict[str, str], repeat: int) -> list[Row]:
    query = "a dog on the beach"
    runs: dict[Path, list[float]] = {hf: [], clip: []}
    mem: dict[Path, float] = {hf: 0.0, clip: 0.0}
    for _ in range(repeat):  # interleaved, so both see the same machine load
        for folder in (hf, clip):
            argv = [sys.executable, "-m", "clipsearch", "--index", str(folder), "search", query]
            wall, rss, _ = run_child([*argv, "-k", "10"], env)
            runs[folder].append(wall)
            mem[folder] = max(mem[folder], rss)
    h, c = statistics.median(runs[hf]), statistics.median(runs[clip])
    spread = " vs ".join(f"{min(runs[f]):.2f}-{max(runs[f]):.2f} s" for f in (hf, clip))
    rows = [
        Row(
            f"cold `clipsearch search`, {n:,} images (p50 of {repeat}; range {spread})",
            f"{h:.2f} s",
            f"{c:.2f} s",
            ratio(h, c, higher_is_better=False),
            f"{mem[hf]:.0f} / {mem[clip]:.0f} MiB",
        )
    ]
    phases = []
    for _ in range(repeat):
        _, _, out = run_child([sys.executable, "-c", PHASES_SCRIPT, str(hf), query], env)
        phases.append(json.loads(out.strip().splitlines()[-1]))
    loaded = sorted({m for p in phases for m in p.pop("loaded")})
    for name in phases[0]:
        value = statistics.median(p[name] for p in phases)
        rows.append(Row(f"  HF: {name} (p50)", f"{value:.3f} s"))
    rows.append(Row("  HF: torch / open_clip / torchvision imported", ", ".join(loaded) or "none"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="vectors in each index")
    ap.add_argument("--queries", type=int, default=20, help="warm queries to time")
    ap.add_argument("--repeat", type=int, default=5, help="cold starts to time")
    ap.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench"))
    args = ap.parse_args()

    print(f"machine: {machine()}", flush=True)
    env = plant_default_model(args.work / "hf-cache")
    env["XDG_CACHE_HOME"] = str(args.work / "cache")  # clipsearch's text-tower record
    os.environ.update(env)
    model_dir = make_hf_model(args.work / "xlmr-base-vit-b-32")
    hf = args.work / f"search-index-hf-{args.n}"
    clip = args.work / f"search-index-{args.n}"  # the one bench_search.py builds
    build_index(hf, args.n, env, model=f"local-dir:{model_dir}")
    build_index(clip, args.n, env)
    ensure_text_record(hf)  # the NumPy XLM-R tower (models/hftower.py)
    ensure_text_record(clip)
    queries = (QUERIES * (args.queries // len(QUERIES) + 1))[: args.queries]
    rows = warm(hf, clip, args.n, queries)
    rows += cold(hf, clip, args.n, env, args.repeat)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}", flush=True)
    print_table(
        f"search, {args.n:,} images: HF text tower (random-weight XLM-R base + ViT-B-32, real "
        "size) against the CLIP-BPE default (ViT-B-16, random weights)",
        rows,
    )


if __name__ == "__main__":
    main()
