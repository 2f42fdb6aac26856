"""From a photo written into a watched folder to its first appearance in a search result.

``clipsearch watch`` runs as a user runs it (its own process, the demo model) over a folder of
photo-like JPEGs. One at a time, a new photo is copied into the folder; a reader in this
process (an ``ImageIndex`` opened once, as ``clipsearch serve`` holds one) searches every
50 ms until the photo is among the results. The delay counts from the end of the copy.

Baseline, in the same run: what a user without ``watch`` does after saving a photo, a one-shot
``clipsearch index`` of the same folder (a fresh process: cold start, model load, the walk,
the encode), timed until it exits and the photo is searchable.

    python benchmarks/bench_watch.py                 # 24 photos, 5 new ones, settle 1.0 and 0.6
    python benchmarks/bench_watch.py --new 9
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _common import Row, machine, print_table, ratio, run_child, write_photos  # noqa: E402

from clipsearch import ImageIndex  # noqa: E402

CLI = [sys.executable, "-m", "clipsearch.cli.main"]
POLL = 0.05


def searchable(reader: ImageIndex, path: Path, timeout: float = 120.0) -> float:
    """Seconds until ``path`` is among the reader's search results."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        hits = reader.search("a photo", k=max(1, reader.count))
        if any(h.path == str(path) for h in hits):
            return time.perf_counter() - start
        time.sleep(POLL)
    raise RuntimeError(f"{path} not searchable after {timeout}s")


def watch_delays(index: Path, folder: Path, new: list[Path], settle: float) -> list[float]:
    """Start `clipsearch watch`, then copy each new photo in and time it into a search."""
    proc = subprocess.Popen(
        [*CLI, "--index", str(index), "watch", str(folder), "--settle", str(settle)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    delays = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the catch-up pass's line comes once the model is loaded
            if "unchanged" in line:
                break
        with ImageIndex.open(index, device="cpu") as reader:
            for src in new:
                dest = folder / f"{settle}-{src.name}"
                shutil.copyfile(src, dest)
                delays.append(searchable(reader, dest))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    return delays


def oneshot_times(index: Path, folder: Path, new: list[Path]) -> list[float]:
    """Copy each new photo in, then run a cold `clipsearch index` of the folder."""
    times = []
    with ImageIndex.open(index, device="cpu") as reader:
        for src in new:
            dest = folder / f"oneshot-{src.name}"
            shutil.copyfile(src, dest)
            wall, _, _ = run_child([*CLI, "--index", str(index), "index", str(folder)])
            t = time.perf_counter()
            searchable(reader, dest)
            times.append(wall + time.perf_counter() - t)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--photos", type=int, default=24, help="photos in the folder at the start")
    ap.add_argument("--new", type=int, default=5, help="photos written, per variant")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench")
    args = ap.parse_args()

    pool = write_photos(args.work / "watch-photos", args.photos + 3 * args.new, 1600, 1200)
    with tempfile.TemporaryDirectory() as tmp:
        folder, index = Path(tmp) / "photos", Path(tmp) / "idx"
        folder.mkdir()
        for p in pool[: args.photos]:
            shutil.copyfile(p, folder / p.name)
        run_child([*CLI, "--index", str(index), "index", str(folder), "--model", "demo"])
        new = [pool[args.photos + i :: args.new][:3] for i in range(args.new)]
        base = oneshot_times(index, folder, [n[0] for n in new])
        slow = watch_delays(index, folder, [n[1] for n in new], 1.0)
        fast = watch_delays(index, folder, [n[2] for n in new], 0.6)

    b = statistics.median(base)
    print(f"machine: {machine()}; {args.photos} photos 1600x1200 at the start, demo model")
    rows = [
        Row(
            f"write -> searchable, watch --settle {s} (median of {len(d)})",
            f"{statistics.median(d):.2f} s",
            f"{b:.2f} s",
            ratio(statistics.median(d), b, higher_is_better=False),
        )
        for s, d in ((1.0, slow), (0.6, fast))
    ]
    print_table("Watch: from a file written to its first search hit", rows)
    print("baseline: a cold `clipsearch index` of the folder after the write, until searchable")
    print(
        f"watch delays (s): settle 1.0 {[round(x, 2) for x in slow]}, "
        f"settle 0.6 {[round(x, 2) for x in fast]}; one-shot {[round(x, 2) for x in base]}"
    )


if __name__ == "__main__":
    main()
