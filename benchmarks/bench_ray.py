"""Local executor against Ray on this machine: throughput and the overhead per image.

Both index the same generated photo-like JPEGs into fresh indexes, in this process, with the
same model; Ray runs a local instance (started once, outside the timing, and reported on its
own line) with one encoder actor per core. The overhead per image is what Ray adds over the
local run: shipping file lists and vectors between processes and loading a model per actor.

    python benchmarks/bench_ray.py                          # demo model, 200 images
    python benchmarks/bench_ray.py --model ViT-B-16 --pretrained random --images 64
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import Row, machine, peak_rss_mib, print_table, ratio, write_photos  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1200)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--actors", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--shard-size", type=int, default=32)
    args = parser.parse_args()

    import ray

    from clipsearch import ImageIndex
    from clipsearch.index.distributed import RayOptions

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    photos = work / "photos"
    write_photos(photos, args.images, args.width, args.height)

    def run(name: str, executor: RayOptions | None) -> float:
        with ImageIndex.open_or_create(work / name, args.model, args.pretrained) as index:
            index.encoder  # noqa: B018 -- load the driver's model outside the timing
            start = time.perf_counter()
            report = index.add([photos], executor=executor)
            seconds = time.perf_counter() - start
            assert report.added == args.images, report
        return seconds

    local = run("local", None)
    started = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray_start = time.perf_counter() - started
    dist = run("ray", RayOptions(actors=args.actors, shard_size=args.shard_size))
    ray.shutdown()

    n = args.images
    overhead_ms = (dist - local) / n * 1000
    print(f"machine: {machine()}")
    print(f"{n} JPEGs of {args.width}x{args.height}, model {args.model} {args.pretrained or ''}")
    print_table(
        "Ray against the local executor",
        [
            Row("local executor, images/s", f"{n / local:.1f}"),
            Row(
                f"Ray, {args.actors} actors, shards of {args.shard_size}, images/s",
                f"{n / dist:.1f}",
                f"{n / local:.1f}",
                ratio(n / dist, n / local),
                f"{peak_rss_mib():.0f} MiB (driver)",
            ),
            Row("Ray overhead per image (incl. actor model loads)", f"{overhead_ms:.1f} ms"),
            Row("starting a local Ray instance (once)", f"{ray_start:.1f} s"),
        ],
    )


if __name__ == "__main__":
    main()
