"""Shared helpers for the benchmarks: generated data, timing, memory and the results table.

Every benchmark makes its own data here (no downloads): photo-like JPEGs with texture and
noise, and random or clustered unit vectors that stand in for CLIP embeddings.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# --- machine -------------------------------------------------------------------------------


def machine() -> str:
    """`lscpu` model name, core count and RAM, for the results table's heading."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()[0]
    return f"{model}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, load average {load:.1f} at start"


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """This process's resident memory now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mib()


# --- the table -----------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    value: str
    baseline: str = "-"
    ratio: str = "-"
    memory: str = "-"


def ratio(value: float, baseline: float, higher_is_better: bool = True) -> str:
    if not baseline or not value:
        return "-"
    r = value / baseline if higher_is_better else baseline / value
    return f"{r:.2f}x"


def print_table(title: str, rows: Sequence[Row]) -> None:
    """A Markdown table: figure, clipsearch, baseline, ratio, peak memory."""
    header = Row("figure", "clipsearch", "baseline", "ratio", "peak memory")
    cells = [(r.figure, r.value, r.baseline, r.ratio, r.memory) for r in [header, *rows]]
    widths = [max(len(row[c]) for row in cells) for c in range(5)]

    def line(row: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"

    print(f"\n### {title}\n")
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))
    print(flush=True)


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best wall time of ``repeat`` calls (the least disturbed one on a shared machine)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def percentile_ms(samples: Iterable[float], q: float = 50) -> float:
    data = sorted(samples)
    if not data:
        return float("nan")
    if q == 50:
        return statistics.median(data) * 1000
    return data[min(len(data) - 1, int(len(data) * q / 100))] * 1000


# --- photo-like images ---------------------------------------------------------------------


def photo_like(seed: int, width: int = 4000, height: int = 3000):
    """A picture with the statistics of a photo: smooth regions, edges, texture and sensor
    noise, so JPEG sizes, decode times and resampling errors behave like real photos."""
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    sw, sh = max(8, width // 16), max(6, height // 16)
    # A sky-to-ground gradient with random colours.
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, sh)[:, None, None]
    base = (top * (1 - t) + bottom * t) * np.ones((1, sw, 1))
    img = Image.fromarray(base.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):  # objects: ellipses and polygons
        color = tuple(int(c) for c in rng.integers(0, 256, 3))
        x0, y0 = rng.integers(0, sw), rng.integers(0, sh)
        w, h = rng.integers(sw // 10, sw // 2), rng.integers(sh // 10, sh // 2)
        if rng.random() < 0.5:
            d.ellipse((x0, y0, x0 + w, y0 + h), fill=color)
        else:
            pts = [(int(x0 + rng.integers(-w, w)), int(y0 + rng.integers(-h, h))) for _ in range(5)]
            d.polygon(pts, fill=color)
    img = img.filter(ImageFilter.GaussianBlur(1.0))
    # Mid-frequency texture (foliage, fabric) at a quarter of the size, then upsample.
    mw, mh = max(8, width // 4), max(6, height // 4)
    mid = np.asarray(img.resize((mw, mh), Image.Resampling.BICUBIC), dtype=np.float32)
    mid += rng.standard_normal((mh, mw, 1), dtype=np.float32) * 14
    mid_img = Image.fromarray(np.clip(mid, 0, 255).astype(np.uint8))
    full = np.asarray(mid_img.resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    full += rng.standard_normal((height, width, 3), dtype=np.float32) * 5.0  # sensor noise
    return Image.fromarray(np.clip(full, 0, 255).astype(np.uint8))


def write_photos(folder: Path, n: int, width: int = 4000, height: int = 3000) -> list[Path]:
    """``n`` photo-like JPEGs (quality 90, like a phone camera), made once and reused."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"IMG_{i:05d}.jpg"
        if not p.exists():
            tmp = p.with_suffix(".tmp")
            photo_like(i, width, height).save(tmp, "JPEG", quality=90)
            tmp.rename(p)
        paths.append(p)
    return paths


# --- vectors -------------------------------------------------------------------------------


def random_unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Uniform random unit vectors: the pessimistic case for approximate search."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, 65536):
        block = rng.standard_normal((min(65536, n - s), dim), dtype=np.float32)
        out[s : s + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def clustered_unit(
    n: int, dim: int, seed: int = 0, clusters: int = 2000, queries: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors shaped like CLIP image embeddings, and held-out queries from the same mix.

    Real embeddings share a common direction (pairwise cosine ~0.5), group into topics of
    very different sizes (power law), and have sub-structure inside a topic. Here:
    ``normalize(0.7 mean + 0.6 topic + 0.35 subtopic + 0.35 noise)``, each part a random
    unit direction.
    """
    rng = np.random.default_rng(seed)

    def unit(k: int) -> np.ndarray:
        v = rng.standard_normal((k, dim), dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    mean = unit(1)[0]
    topics = unit(clusters)
    subs = unit(clusters * 8)
    sizes = 1.0 / np.arange(1, clusters + 1) ** 0.8
    sizes /= sizes.sum()
    total = n + queries
    out = np.empty((total, dim), dtype=np.float32)
    for s in range(0, total, 65536):
        m = min(65536, total - s)
        topic = rng.choice(clusters, size=m, p=sizes)
        sub = topic * 8 + rng.integers(0, 8, size=m)
        v = 0.7 * mean + 0.6 * topics[topic] + 0.35 * subs[sub] + 0.35 * unit(m)
        out[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    perm = rng.permutation(total)
    out = out[perm]
    return out[:n], out[n:]


# --- a model that loads like the default one -----------------------------------------------

DEFAULT_REPO = "apple/DFN2B-CLIP-ViT-B-16"  # where open_clip finds ViT-B-16-quickgelu dfn2b


def plant_default_model(cache: Path) -> dict[str, str]:
    """Random ViT-B-16-quickgelu weights laid out as the Hugging Face cache holds the default
    model's, so `clipsearch` loads them offline exactly as it loads the real ones (speed does
    not depend on the weights). Returns the environment that points at the cache."""
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    os.environ.update(env)  # before huggingface_hub is imported: it reads them once
    commit = "0" * 40
    snap = cache / f"models--{DEFAULT_REPO.replace('/', '--')}" / "snapshots" / commit
    weights = snap / "open_clip_model.safetensors"
    if not weights.exists():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-16-quickgelu")
        snap.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(weights.with_suffix(".tmp")))
        weights.with_suffix(".tmp").rename(weights)
        refs = snap.parent.parent / "refs"
        refs.mkdir(exist_ok=True)
        (refs / "main").write_text(commit)
    return env


def random_weights(work: Path, model: str) -> Path:
    """The random weights of an open_clip architecture (``torch.manual_seed(0)``), saved once
    as ``work/weights/<model>-random.safetensors`` (speed and memory do not depend on the
    weights)."""
    path = work / "weights" / f"{model}-random.safetensors"
    if not path.exists():
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        net = open_clip.create_model(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
    return path


def compile_package() -> None:
    """Write the bytecode of the clipsearch package being measured, as an installed package
    has it. A checkout run with PYTHONDONTWRITEBYTECODE set would otherwise compile every
    module it imports in every child process, and time that instead of the start-up."""
    import compileall

    import clipsearch

    compileall.compile_dir(Path(clipsearch.__file__).parent, quiet=1)


_LAUNCHER = """
import os, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(proc.pid, 0)
wall = time.perf_counter() - t
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {wall} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_child(argv: Sequence[str], env: dict[str, str] | None = None) -> tuple[float, float, str]:
    """Run a command; returns (wall seconds, its own peak RSS in MiB, stdout).

    Linux carries the peak RSS of a process across fork and exec, so a child of this (large)
    process would report at least our own peak: a small launcher starts it instead.
    """
    wall, rss, _, out = run_child_cpu(argv, env)
    return wall, rss, out


def run_child_cpu(
    argv: Sequence[str], env: dict[str, str] | None = None
) -> tuple[float, float, float, str]:
    """:func:`run_child`, with the CPU seconds (user + system) the command used third: on a
    shared machine they move far less than the wall time does."""
    import tempfile

    full_env = {**os.environ, **(env or {})}
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = os.path.join(tmp, "maxrss")
        proc = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, rss_file, *argv],
            capture_output=True,
            env=full_env,
            check=False,
        )
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(argv[:4])} failed ({proc.returncode}): {tail}")
        with open(rss_file) as f:
            maxrss, wall, cpu = f.read().split()
    return float(wall), int(maxrss) / 1024, float(cpu), proc.stdout.decode()
