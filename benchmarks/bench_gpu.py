"""Indexing 12 MP JPEGs on a GPU: the naive loop, clipsearch with CPU decoding, and clipsearch
with decoding on the device (nvJPEG), for ViT-B/32 and ViT-B/16 with random weights.

One command on a GPU machine (a few thousand photos, under 8 minutes):

    python benchmarks/bench_gpu.py

and the same steps on a CPU at tiny sizes (decoding "on the device" is then torchvision's
batched libjpeg-turbo path):

    python benchmarks/bench_gpu.py --device cpu --n 20 --size 640x480

It writes ``--distinct`` photo-like pictures and makes ``--n`` files of them, each with its
own JPEG comment, so every file has distinct bytes (no run skips one as known) and the same
decoding work as a camera's. Per model it prints, end to end (walk, read, hash, decode,
encode, SQLite commit, FAISS save; the model is loaded and warmed up before the clock starts):
img/s, the ratio to the naive loop measured in the same run, the peak GPU memory
(``torch.cuda.max_memory_allocated``), the mean GPU utilisation (``nvidia-smi`` sampled in a
thread) and the cosine of each path's vectors to the CPU fp32 path (PIL, exact decode).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _common import Row, machine, peak_rss_mib, photo_like, print_table, ratio  # noqa: E402

GOALS = {"ViT-B-32": 5000.0, "ViT-B-16": 2000.0}  # img/s on one datacenter GPU (issue #15)


# --- the photos ----------------------------------------------------------------------------


def _write_distinct(args: tuple[Path, int, int, int]) -> None:
    path, seed, width, height = args
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        photo_like(seed, width, height).save(tmp, "JPEG", quality=90)
        tmp.rename(path)


def write_photos(work: Path, n: int, distinct: int, width: int, height: int) -> Path:
    """``n`` JPEGs in a folder, made of ``distinct`` pictures, each file with its own comment
    segment (distinct bytes, identical decoding work)."""
    base = work / f"distinct-{width}x{height}"
    base.mkdir(parents=True, exist_ok=True)
    jobs = [(base / f"base_{i:03d}.jpg", i, width, height) for i in range(distinct)]
    # spawn: this process has set up CUDA already, and a fork of it must not inherit that.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(distinct, os.cpu_count() or 1), mp_context=spawn) as pool:
        list(pool.map(_write_distinct, jobs))
    sources = [p.read_bytes() for p, *_ in jobs]
    folder = work / f"photos-{n}-{width}x{height}"
    folder.mkdir(exist_ok=True)
    for i in range(n):
        path = folder / f"IMG_{i:05d}.jpg"
        if not path.exists():
            data = sources[i % distinct]
            comment = f"bench_gpu {i}".encode()
            segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
            path.write_bytes(data[:2] + segment + data[2:])
    return folder


def subset(folder: Path, names: list[str], dest: Path) -> Path:
    """Hard links to some of the photos in a folder of their own."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in names:
        os.link(folder / name, dest / name)
    return dest


def weights_file(work: Path, model: str) -> Path:
    """Random weights in a file, so every path encodes with the same ones."""
    path = work / f"{model}-random.safetensors"
    if not path.exists():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        state = {k: v.contiguous() for k, v in open_clip.create_model(model).state_dict().items()}
        save_file(state, str(path.with_suffix(".tmp")))
        path.with_suffix(".tmp").rename(path)
    return path


# --- GPU memory and utilisation ------------------------------------------------------------


class Utilisation:
    """Mean GPU utilisation while in the ``with`` block, from ``nvidia-smi`` every 100 ms."""

    def __init__(self, device: str):
        self.enabled = device.startswith("cuda") and shutil.which("nvidia-smi") is not None
        self.samples: list[float] = []
        self._proc: subprocess.Popen[str] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Utilisation:
        if self.enabled:
            cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            self._proc = subprocess.Popen([*cmd, "-lms", "100"], stdout=subprocess.PIPE, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            # One line per GPU: the busiest one (the run uses the first unless --devices).
            fields = [f.strip() for f in line.split(",") if f.strip().isdigit()]
            if fields:
                self.samples.append(max(float(f) for f in fields))

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait()

    def text(self) -> str:
        return f"{np.mean(self.samples):.0f}%" if self.samples else "n/a"


def reset_memory(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def memory_text(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB GPU"
    return f"{peak_rss_mib():.0f} MiB RSS"


# --- the paths -----------------------------------------------------------------------------


def naive(model: str, weights: Path, folder: Path, n: int, device: str) -> tuple[float, dict]:
    """The loop a user would write: PIL, open_clip's preprocess, one image per call, fp32."""
    import open_clip
    import torch
    from PIL import Image

    paths = sorted(folder.glob("*.jpg"))[:n]
    net, _, preprocess = open_clip.create_model_and_transforms(model, pretrained=str(weights))
    net.eval().to(device)
    vectors = {}
    with torch.no_grad():
        net.encode_image(torch.zeros(1, 3, 224, 224, device=device))  # warm-up
        t = time.perf_counter()
        for p in paths:
            x = preprocess(Image.open(p).convert("RGB")).unsqueeze(0).to(device)
            f = torch.nn.functional.normalize(net.encode_image(x), dim=-1)
            vectors[p.name] = f[0].float().cpu().numpy()
        seconds = time.perf_counter() - t
    del net
    return len(paths) / seconds, vectors


def clipsearch_run(
    model: str,
    weights: Path,
    folder: Path,
    warm: Path,
    work: Path,
    args: argparse.Namespace,
    **add: object,
) -> dict:
    """``ImageIndex.add`` of the folder, after a warm-up run on a few photos."""
    from clipsearch import ImageIndex

    index_dir = work / "index"
    shutil.rmtree(index_dir, ignore_errors=True)
    precision = args.precision
    with ImageIndex.create(
        index_dir, model, str(weights), device=args.device, precision=precision
    ) as index:
        index.add([warm], workers=args.workers, **add)  # CUDA, cuDNN and nvJPEG set up
        reset_memory(args.device)
        with Utilisation(args.device) as util:
            report = index.add([folder], workers=args.workers, **add)
        records = index.catalog.images(index.catalog.ids().tolist())
        vectors = {
            Path(rec.path).name: index.catalog.vector(i)
            for i, rec in records.items()
            if Path(rec.path).parent == folder
        }
    assert report.failed == 0, report.errors[:3]
    return {
        "rate": report.encoded / report.seconds,
        "images": report.encoded,
        "memory": memory_text(args.device),
        "util": util.text(),
        "vectors": vectors,
    }


def reference(model: str, weights: Path, folder: Path, work: Path) -> dict[str, np.ndarray]:
    """The CPU fp32 path: PIL with every pixel decoded, fp32 on the CPU."""
    from clipsearch import ImageIndex

    index_dir = work / "reference"
    shutil.rmtree(index_dir, ignore_errors=True)
    with ImageIndex.create(index_dir, model, str(weights), device="cpu", precision="fp32") as idx:
        idx.add([folder], exact_decode=True, decode="cpu")
        records = idx.catalog.images(idx.catalog.ids().tolist())
        return {Path(rec.rel).name: idx.catalog.vector(i) for i, rec in records.items()}


def cosine_text(vectors: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> str:
    names = [n for n in ref if n in vectors]
    cos = np.array([float(vectors[n] @ ref[n]) for n in names])
    return f"{cos.min():.6f} / {np.median(cos):.6f} ({len(names)} images)" if names else "n/a"


def bench_model(model: str, folder: Path, args: argparse.Namespace) -> list[Row]:
    work = args.work / model
    work.mkdir(parents=True, exist_ok=True)
    weights = weights_file(args.work, model)
    names = sorted(p.name for p in folder.glob("*.jpg"))
    ref_folder = subset(folder, names[: args.ref_n], work / "ref-photos")
    warm = subset(folder, names[-min(len(names), args.warm) :], work / "warm-photos")
    ref = reference(model, weights, ref_folder, work)
    naive_rate, naive_vectors = naive(model, weights, folder, args.naive_n, args.device)
    rows = [
        Row(
            f"{model}: naive loop (PIL, preprocess, one image per call, fp32; {args.naive_n})",
            f"{naive_rate:.1f} img/s",
            memory=memory_text(args.device),
        ),
        Row(
            f"{model}: naive loop, cosine to CPU fp32 (min / median)",
            cosine_text(naive_vectors, ref),
        ),
    ]
    batched = "nvJPEG" if args.device.startswith("cuda") else "torchvision on the CPU"
    runs = {
        "CPU decoding (PIL, DCT draft)": {"decode": "cpu"},
        f"device decoding ({batched})": {"decode": "device"},
    }
    if args.devices:
        runs["device decoding on --devices"] = {"decode": "device", "devices": args.devices}
    goal = GOALS.get(model)
    for name, opts in runs.items():
        r = clipsearch_run(model, weights, folder, warm, work, args, **opts)
        print(f"{model} {name}: {r['rate']:.1f} img/s", flush=True)
        met = ""
        if goal and args.device.startswith("cuda"):
            met = f"; goal {goal:.0f}: {'met' if r['rate'] >= goal else 'not met'}"
        rows += [
            Row(
                f"{model}: clipsearch, {name} ({r['images']} images{met})",
                f"{r['rate']:.1f} img/s",
                f"{naive_rate:.1f} img/s",
                ratio(r["rate"], naive_rate),
                r["memory"],
            ),
            Row(f"{model}: {name}, GPU utilisation (mean)", r["util"]),
            Row(
                f"{model}: {name}, cosine to CPU fp32 (min / median)",
                cosine_text(r["vectors"], ref),
            ),
        ]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default=None, help="cuda (default where present) or cpu")
    ap.add_argument("--n", type=int, default=3000, help="JPEGs to index")
    ap.add_argument("--distinct", type=int, default=48, help="distinct pictures among them")
    ap.add_argument("--size", default="4000x3000", help="WIDTHxHEIGHT of the photos (12 MP)")
    ap.add_argument("--naive-n", type=int, default=100, help="images for the naive loop")
    ap.add_argument("--ref-n", type=int, default=32, help="images for the CPU fp32 reference")
    ap.add_argument("--photos", type=Path, help="a folder of JPEGs to use instead (sizes vary)")
    ap.add_argument("--precision", default="auto", help="of clipsearch's runs (auto: fp16 on CUDA)")
    ap.add_argument("--warm", type=int, default=64, help="images of the warm-up run")
    ap.add_argument("--models", default="ViT-B-32,ViT-B-16")
    ap.add_argument("--devices", default=None, help="also a run on these GPUs, e.g. 0,1")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench-gpu"))
    args = ap.parse_args()
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    width, height = (int(v) for v in args.size.lower().split("x"))
    args.naive_n, args.ref_n = min(args.naive_n, args.n), min(args.ref_n, args.n)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "no GPU used"
    print(f"machine: {machine()}; {gpu}; torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    if args.photos:  # real pictures instead of generated ones
        folder = args.photos.resolve()
        args.n = len(list(folder.glob("*.jpg")))
        with Image.open(next(folder.glob("*.jpg"))) as first:
            width, height = first.size
    else:
        folder = write_photos(args.work, args.n, min(args.distinct, args.n), width, height)
    size = sum(p.stat().st_size for p in folder.glob("*.jpg")) / args.n / 2**20
    print(
        f"{args.n} photos of {width}x{height} ({size:.1f} MB each) ready in "
        f"{time.perf_counter() - started:.0f}s",
        flush=True,
    )
    rows: list[Row] = []
    for model in args.models.split(","):
        rows += bench_model(model, folder, args)
    print_table(
        f"indexing {args.n} {width}x{height} JPEGs on {args.device} ({gpu}), end to end", rows
    )
    print(f"total {time.perf_counter() - started:.0f}s", flush=True)


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
