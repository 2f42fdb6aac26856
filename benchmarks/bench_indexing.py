"""Indexing throughput on 12 MP JPEGs, end to end, against the loop a user would write.

Generates photo-like 4000x3000 JPEGs (about 3 MB each, made once and reused), then measures
in one run:

* the machine: a large fp32 and bf16 ``torch.matmul`` (the peak the encoder is compared to);
* decoding: a full decode against a DCT draft decode, per core, each with preprocessing, and
  the draft path in 2 worker threads against 2 worker processes;
* the ViT-B/16 image tower alone, fp32 and bf16, at several batch sizes, with its share of
  the matmul peak (17.6 G multiply-adds = 35.2 GFLOP per image);
* end to end, each in a fresh process: the naive loop (PIL open, open_clip preprocess,
  ``encode_image`` one image at a time, fp32) against ``ImageIndex.add`` (walk, read, hash,
  decode, encode, commit to SQLite, save FAISS) with the defaults, with ``compile=True``
  (its one-off compile timed apart, and the number of images after which it pays), and with
  the fast paths off (``exact_decode``, fp32);
* how far the fast paths move the embeddings: cosine of draft+bf16 vectors to exact+fp32.

    python benchmarks/bench_indexing.py                 # 32 images, a few minutes
    python benchmarks/bench_indexing.py --images 96 --tune
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import (  # noqa: E402
    Row,
    machine,
    peak_rss_mib,
    print_table,
    ratio,
    run_child,
    timed,
    write_photos,
)

MODEL = "ViT-B-16"
# ViT-B/16 at 224 px, one forward pass: 17.6 G multiply-adds (the "17.6 GFLOPs" of the ViT
# paper counts multiply-adds), so 35.2 GFLOP in the 2-per-FMA convention of the matmul peak.
GFLOPS_PER_IMAGE = 35.2


def weights_file(work: Path) -> Path:
    """Random ViT-B-16 weights in a file, so every process uses the same ones."""
    path = work / "vit-b-16-random.safetensors"
    if not path.exists():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = open_clip.create_model(MODEL)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(path.with_suffix(".tmp")))
        path.with_suffix(".tmp").rename(path)
    return path


# --- micro-benchmarks ----------------------------------------------------------------------


def matmul_peak() -> dict[str, float]:
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        n = 2048
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = timed(lambda a=a, b=b: [a @ b for _ in range(4)], repeat=5) / 4
        out[name] = 2 * n**3 / best / 1e9
    return out


def _prepare(path: str, draft: int | None, preprocess) -> object:
    from clipsearch.media.files import decode_image_sized, read_bytes

    img, _ = decode_image_sized(read_bytes(path), path, draft_size=draft)
    return preprocess(img).numpy()


_PROC_PREPROCESS = None


def _proc_init() -> None:
    global _PROC_PREPROCESS
    import open_clip

    _PROC_PREPROCESS = open_clip.image_transform(
        224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD
    )


def _proc_prepare(path: str) -> object:
    return _prepare(path, 448, _PROC_PREPROCESS)


def decoding(paths: list[Path]) -> list[Row]:
    import open_clip

    pre = open_clip.image_transform(
        224, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN, std=open_clip.OPENAI_DATASET_STD
    )
    files = [str(p) for p in paths[:12]]
    full = draft = 0.0
    for _ in range(3):  # interleaved, best of 3: the machine is shared
        full = max(full, len(files) / timed(lambda: [_prepare(f, None, pre) for f in files]))
        draft = max(draft, len(files) / timed(lambda: [_prepare(f, 448, pre) for f in files]))
    rows = [
        Row(
            "decode + preprocess, 1 core, draft vs full decode",
            f"{draft:.1f} img/s",
            f"{full:.1f} img/s",
            ratio(draft, full),
        )
    ]
    files = [str(p) for p in paths]
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda f: _prepare(f, 448, pre), files[:2]))
        t = time.perf_counter()
        list(pool.map(lambda f: _prepare(f, 448, pre), files))
        threads = len(files) / (time.perf_counter() - t)
    # spawn: a fork of a process whose OpenMP threads are running deadlocks.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=spawn, initializer=_proc_init) as pool:
        list(pool.map(_proc_prepare, files[:4]))
        t = time.perf_counter()
        list(pool.map(_proc_prepare, files, chunksize=2))
        procs = len(files) / (time.perf_counter() - t)
    rows.append(
        Row(
            "draft decode + preprocess, 2 threads vs 2 processes",
            f"{threads:.1f} img/s",
            f"{procs:.1f} img/s",
            ratio(threads, procs),
        )
    )
    return rows


def encoder(weights: Path, peak: dict[str, float], batches: list[int], rounds: int) -> list[Row]:
    import torch

    from clipsearch import load_encoder

    rows = []
    encoders = {
        p: load_encoder(MODEL, str(weights), device="cpu", precision=p) for p in ("fp32", "bf16")
    }
    results: dict[tuple[str, int], float] = {}
    for _ in range(rounds):  # interleaved rounds, best of each: the machine is shared
        for bs in batches:
            x = torch.randn(bs, 3, 224, 224)
            for precision, enc in encoders.items():
                enc.encode_pixels(x[:2])
                rate = bs / timed(lambda x=x, e=enc: e.encode_pixels(x))
                results[(precision, bs)] = max(results.get((precision, bs), 0.0), rate)
    del encoders
    for bs in batches:
        f32, b16 = results[("fp32", bs)], results[("bf16", bs)]
        rows.append(
            Row(
                f"ViT-B/16 image tower, batch {bs}, bf16 vs fp32",
                f"{b16:.2f} img/s ({b16 * GFLOPS_PER_IMAGE / peak['bf16']:.0%} of bf16 peak)",
                f"{f32:.2f} img/s ({f32 * GFLOPS_PER_IMAGE / peak['fp32']:.0%} of fp32 peak)",
                ratio(b16, f32),
            )
        )
    return rows


# --- end to end, each in its own process ---------------------------------------------------


def child_naive(args: argparse.Namespace) -> dict:
    import open_clip
    import torch
    from PIL import Image

    paths = sorted(args.photos.glob("*.jpg"))[: args.naive_images]
    weights = str(args.weights)
    model, _, preprocess = open_clip.create_model_and_transforms(MODEL, pretrained=weights)
    model.eval()
    t = time.perf_counter()
    vectors = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        with torch.no_grad():
            f = model.encode_image(preprocess(img).unsqueeze(0))
        vectors.append(torch.nn.functional.normalize(f, dim=-1)[0].numpy())
    np.save(args.out / "naive.npy", np.stack(vectors))
    seconds = time.perf_counter() - t
    return {"images": len(paths), "seconds": seconds, "peak_mib": peak_rss_mib()}


def child_index(args: argparse.Namespace) -> dict:
    from clipsearch import ImageIndex

    folder = args.out / f"index-{args.variant}"
    shutil.rmtree(folder, ignore_errors=True)
    opts = json.loads(args.options)
    compile_seconds = 0.0
    with ImageIndex.create(
        folder, MODEL, str(args.weights), device="cpu", precision=opts.pop("precision")
    ) as index:
        if opts.get("compile"):
            # Compile on a batch of the indexer's size first, timed apart: the rate below is
            # the steady state, and the compile is the one-off price reported next to it.
            import torch

            from clipsearch.models.runtime import default_batch_size

            t = time.perf_counter()
            index.encoder.compile_image_tower()
            n = opts.get("batch_size") or default_batch_size("cpu")
            index.encoder.encode_pixels(torch.zeros(n, 3, 224, 224))
            compile_seconds = time.perf_counter() - t
            assert index.encoder.compiled, "torch.compile failed; see the warning above"
        # Load the image tower and make the style labeller before the clock starts, as the
        # whole model was loaded by create() before the image tower had a record of its own:
        # the rate is the steady state, and the load a one-off reported next to it.
        t = time.perf_counter()
        index.styles.prepare()
        _ = index.image_encoder
        load_seconds = time.perf_counter() - t
        report = index.add([args.photos], **opts)
        vectors = {
            rec.rel: index.catalog.vector(i)
            for i, rec in index.catalog.images(index.catalog.ids().tolist()).items()
        }
    names = sorted(vectors)
    np.save(args.out / f"{args.variant}.npy", np.stack([vectors[n] for n in names]))
    return {
        "images": report.encoded,
        "seconds": report.seconds,
        "peak_mib": peak_rss_mib(),
        "compile_seconds": compile_seconds,
        "load_seconds": load_seconds,
    }


VARIANTS = {
    "default": {"precision": "auto"},
    "default-compile": {"precision": "auto", "compile": True},
    "exact-fp32": {"precision": "fp32", "exact_decode": True},
    "draft-fp32": {"precision": "fp32"},
    "exact-bf16": {"precision": "bf16", "exact_decode": True},
}
TUNING = {
    "default-batch8": {"precision": "auto", "batch_size": 8},
    "default-batch32": {"precision": "auto", "batch_size": 32},
    "default-workers1": {"precision": "auto", "workers": 1},
    "default-workers3": {"precision": "auto", "workers": 3},
    "default-omp-passive": {"precision": "auto", "env": {"OMP_WAIT_POLICY": "PASSIVE"}},
}


def spawn(what: str, args: argparse.Namespace, variant: str = "", options: dict | None = None):
    argv = [sys.executable, __file__, "--child", what, "--work", str(args.work)]
    argv += ["--images", str(args.images), "--naive-images", str(args.naive_images)]
    env = {}
    if variant:
        options = dict(options or {})
        env = options.pop("env", {})
        argv += ["--variant", variant, "--options", json.dumps(options)]
    _, _, out = run_child(argv, env)
    return json.loads(out.strip().splitlines()[-1])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--images", type=int, default=32, help="12 MP JPEGs to index")
    ap.add_argument("--naive-images", type=int, default=12, help="images for the naive loop")
    ap.add_argument("--tune", action="store_true", help="also try other batch sizes / workers")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved repetitions (best kept)")
    ap.add_argument("--skip-micro", action="store_true", help="only the end-to-end figures")
    ap.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--options", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.photos = args.work / f"photos-{args.images}"
    args.out = args.work / "indexing"
    args.weights = args.work / "vit-b-16-random.safetensors"
    if args.child:
        result = child_naive(args) if args.child == "naive" else child_index(args)
        print(json.dumps(result))
        return

    print(f"machine: {machine()}", flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    paths = write_photos(args.photos, args.images)
    weights_file(args.work)
    size = sum(p.stat().st_size for p in paths) / len(paths) / 2**20
    print(
        f"{len(paths)} photos of 4000x3000 ({size:.1f} MB each) ready in "
        f"{time.perf_counter() - t:.0f}s",
        flush=True,
    )

    rows: list[Row] = []
    peak = matmul_peak()
    rows.append(
        Row(
            "torch.matmul 2048^3 peak, bf16 vs fp32",
            f"{peak['bf16']:.0f} GFLOPS",
            f"{peak['fp32']:.0f} GFLOPS",
            ratio(peak["bf16"], peak["fp32"]),
        )
    )
    if not args.skip_micro:
        rows += decoding(paths)
        rows += encoder(args.weights, peak, [8, 16, 32], args.rounds)
        print_table("components", rows)

    naive: dict = {}
    results: dict[str, dict] = {}
    variants = {**VARIANTS, **(TUNING if args.tune else {})}
    for _ in range(args.rounds):  # interleaved rounds, best of each: the machine is shared
        r = spawn("naive", args)
        if not naive or r["images"] / r["seconds"] > naive["images"] / naive["seconds"]:
            naive = r
        for name, opts in variants.items():
            r = spawn("index", args, name, opts)
            best = results.get(name)
            if best is None or r["images"] / r["seconds"] > best["images"] / best["seconds"]:
                results[name] = r
            print(f"{name}: {r['images'] / r['seconds']:.2f} img/s", flush=True)
    naive_rate = naive["images"] / naive["seconds"]
    e2e = [
        Row(
            f"naive loop ({naive['images']} images, fp32, one at a time)",
            f"{naive_rate:.2f} img/s",
            memory=f"{naive['peak_mib']:.0f} MiB",
        )
    ]
    for name, r in results.items():
        rate = r["images"] / r["seconds"]
        after = f", after a {r['compile_seconds']:.0f} s compile" if r["compile_seconds"] else ""
        after += f"; model load {r.get('load_seconds', 0):.1f} s apart"
        e2e.append(
            Row(
                f"clipsearch index, {name} ({r['images']} images{after})",
                f"{rate:.2f} img/s",
                f"{naive_rate:.2f} img/s",
                ratio(rate, naive_rate),
                f"{r['peak_mib']:.0f} MiB",
            )
        )
    rate = results["default"]["images"] / results["default"]["seconds"]
    e2e.append(
        Row(
            "end to end default, model FLOPs as a share of the bf16 matmul peak",
            f"{rate * GFLOPS_PER_IMAGE:.0f} GFLOPS = {rate * GFLOPS_PER_IMAGE / peak['bf16']:.0%}",
        )
    )
    plain, compiled = results["default"], results["default-compile"]
    saved = plain["seconds"] / plain["images"] - compiled["seconds"] / compiled["images"]
    e2e.append(
        Row(
            "--compile pays for its compile after",
            f"{compiled['compile_seconds'] / saved:.0f} images" if saved > 0 else "never here",
        )
    )
    exact = np.load(args.out / "exact-fp32.npy")
    for name in ("default", "default-compile", "draft-fp32", "exact-bf16"):
        cos = cosines(np.load(args.out / f"{name}.npy"), exact)
        e2e.append(
            Row(
                f"cosine of {name} vectors to exact-fp32 (min / median)",
                f"{cos.min():.6f} / {np.median(cos):.6f}",
            )
        )
    print_table(f"indexing {len(paths)} 12 MP JPEGs, ViT-B/16, end to end", e2e)
    if not args.skip_micro:
        print_table("components", rows)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
