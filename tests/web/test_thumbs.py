"""The thumbnail cache: bounded by size, least recently used out first, and whole under
concurrent writers (threads of one server, and two servers on one index)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.store.catalog import StoredImage
from clipsearch.web.thumbs import ThumbnailCache


def noise_images(folder: Path, n: int, size: int = 96) -> list[StoredImage]:
    """``n`` distinct pictures of noise (so that each thumbnail is some KB), as the catalog
    would record them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        path = folder / f"noise{i:02d}.png"
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        out.append(StoredImage(i + 1, str(folder), path.name, 0, 0, sha, size, size, 0, None, None))
    return out


def cached(folder: Path) -> dict[str, int]:
    """The thumbnails in the cache, by name, with their sizes (no temp files)."""
    return {p.name: p.stat().st_size for p in folder.glob("*/*") if not p.name.endswith(".tmp")}


def age(cache: ThumbnailCache, images: list[StoredImage], seconds_ago: float) -> None:
    for image in images:
        t = cache.file(image).stat().st_mtime - seconds_ago
        os.utime(cache.file(image), (t, t))


def test_the_cache_keeps_under_its_cap_dropping_the_least_recently_used(tmp_path):
    images = noise_images(tmp_path / "photos", 8)
    probe = ThumbnailCache(tmp_path / "probe", max_bytes=None)
    one = max(len(probe.make(i.path)) for i in images)
    cache = ThumbnailCache(tmp_path / "thumbs", max_bytes=5 * one)
    for n, image in enumerate(images[:5]):
        cache.get(image)
        age(cache, [image], 1000 - n)  # made in order, the first the longest ago
    assert len(cached(cache.folder)) == 5
    age(cache, images[:1], 100)  # the oldest, seen more than a minute ago...
    cache.get(images[0])  # ...is used again now: it becomes the most recent
    for image in images[5:]:
        cache.get(image)
    kept = cached(cache.folder)
    assert sum(kept.values()) <= 5 * one
    names = {cache.file(i).name: i.id for i in images}
    kept_ids = sorted(names[n] for n in kept)
    # the cap holds about four: the three new ones and the one used again stay
    assert {1, 6, 7, 8} <= set(kept_ids) and not {2, 3} & set(kept_ids), kept_ids
    # an evicted thumbnail is made again, the same
    assert cache.get(images[1]) == probe.make(images[1].path)


def test_threads_making_and_reading_thumbnails_at_once(tmp_path):
    images = noise_images(tmp_path / "photos", 24)
    probe = ThumbnailCache(tmp_path / "probe", max_bytes=None)
    expected = {i.id: probe.make(i.path) for i in images}
    one = max(len(b) for b in expected.values())
    cap = 8 * one
    cache = ThumbnailCache(tmp_path / "thumbs", max_bytes=cap)
    problems: list[str] = []

    def worker(seed: int) -> None:
        order = random.Random(seed).choices(images, k=60)
        for image in order:
            try:
                if cache.get(image) != expected[image.id]:
                    problems.append(f"image {image.id}: other bytes")
            except Exception as e:  # noqa: BLE001 - every failure is a finding
                problems.append(f"image {image.id}: {e!r}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert problems == []
    # a tenth of the cap counted between scans, and a thumbnail in flight per thread
    assert sum(cached(cache.folder).values()) <= cap * 1.1 + 6 * one
    assert cache.evict() is not None and sum(cached(cache.folder).values()) <= cap
    assert not list(cache.folder.glob("*/*.tmp"))


WRITER = """
import json, sys
from pathlib import Path
from clipsearch.store.catalog import StoredImage
from clipsearch.web.thumbs import ThumbnailCache

folder, cap, seed, records = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
images = [StoredImage(*r) for r in json.loads(Path(records).read_text())]
cache = ThumbnailCache(Path(folder), max_bytes=cap)
import random
rng = random.Random(seed)
for _ in range(3):
    rng.shuffle(images)
    for image in images:
        data = cache.get(image)
        assert data and data[:4] in (b"RIFF", b"\\xff\\xd8\\xff\\xe0"), data[:4]
print("ok")
"""


@pytest.mark.slow
def test_two_processes_share_one_cache(tmp_path):
    images = noise_images(tmp_path / "photos", 30)
    probe = ThumbnailCache(tmp_path / "probe", max_bytes=None)
    expected = {probe.file(i).name: probe.make(i.path) for i in images}
    one = max(len(b) for b in expected.values())
    cap = 10 * one
    records = tmp_path / "records.json"
    records.write_text(json.dumps([list(i.__dict__.values())[:11] for i in images]))
    folder = tmp_path / "thumbs"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2]), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(WRITER),
                str(folder),
                str(cap),
                str(n),
                str(records),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for n in range(2)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and out.strip() == "ok", err
    kept = cached(folder)
    assert kept and sum(kept.values()) <= cap * 1.2 + 2 * one
    for path in folder.glob("*/*"):  # every file is a whole thumbnail, the right one
        assert not path.name.endswith(".tmp")
        if path.name != ".lock":
            assert path.read_bytes() == expected[path.name]
            Image.open(io.BytesIO(path.read_bytes())).load()
