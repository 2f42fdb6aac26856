"""Ray under faults: what a lost node costs a job, and how soon a bad address fails.

On a ``ray.cluster_utils.Cluster`` in this process (a head without CPUs and two worker
nodes of one CPU, so that every actor runs on a node that can be removed), the same photos are
indexed twice into fresh indexes: once undisturbed (the baseline), once with one worker node
removed when the first shard is committed. A third run removes both workers and times how long
the driver takes to give up in one line (bounded by ``--timeout``). Before the cluster starts,
the CLI is run against a port where nothing listens and against one that accepts connections
and never answers, and the time to the one-line error is set against the ``--ray-timeout``.

    python benchmarks/bench_ray_faults.py                   # demo model, 48 JPEGs
    python benchmarks/bench_ray_faults.py --images 200 --shard-size 8
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import Row, machine, print_table, ratio, write_photos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def cli_seconds(work: Path, photos: Path, address: str, timeout: float) -> tuple[float, str]:
    """Wall time of `clipsearch index --executor ray` against ``address``, and its stderr."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "clipsearch", "--index", str(work / "cli-idx"), "index"]
    argv += [str(photos), "--executor", "ray", "--ray-address", address]
    argv += ["--ray-timeout", f"{timeout:g}"]
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout + 120)
    seconds = time.perf_counter() - start
    assert proc.returncode == 1, proc.stderr
    return seconds, proc.stderr.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lost(logging.Handler):
    """Counts the executor's "lost the encoder actor" warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "lost the encoder actor" in record.getMessage()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=15.0, help="--ray-timeout")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-ray-faults-"))
    photos = work / "photos"
    write_photos(photos, args.images, 640, 480)

    # The connection figures first: each in a fresh process, before this one starts Ray.
    refused, refused_err = cli_seconds(work, photos, f"127.0.0.1:{free_port()}", args.timeout)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        mute, mute_err = cli_seconds(work, photos, address, args.timeout)
    assert not (work / "cli-idx").exists()

    ray_dir = tempfile.mkdtemp(prefix="cs-ray-")  # short: Ray's socket paths must fit 107 bytes
    os.environ["RAY_TMPDIR"] = ray_dir
    from ray.cluster_utils import Cluster

    from clipsearch import ClusterUnavailableError, ImageIndex
    from clipsearch.index.raycluster import RayOptions
    from clipsearch.progress import Progress

    head = {"num_cpus": 0, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, connect=True, head_node_args=head)
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    lost = Lost()
    logging.getLogger("clipsearch").addHandler(lost)
    options = RayOptions(actors=2, shard_size=args.shard_size, timeout=args.timeout)

    class OnFirstCommit(Progress):
        def __init__(self, action):
            self.action, self.done = action, False

        def advance(self, n: int) -> None:
            if not self.done:
                self.done = True
                self.action()

    def run(name: str, progress: Progress | None = None) -> float:
        with ImageIndex.open_or_create(work / name, args.model) as index:
            start = time.perf_counter()
            report = index.add([photos], executor=options, progress=progress)
            seconds = time.perf_counter() - start
            assert report.added == args.images, report
        return seconds

    calm = run("calm")
    one_lost = run("one-lost", OnFirstCommit(lambda: cluster.remove_node(workers.pop())))
    retried = lost.count
    workers.append(cluster.add_node(num_cpus=1))
    cluster.wait_for_nodes()

    removed_at: list[float] = []

    def lose_all() -> None:
        while workers:
            cluster.remove_node(workers.pop())
        removed_at.append(time.perf_counter())

    with ImageIndex.open_or_create(work / "all-lost", args.model) as index:
        try:
            index.add([photos], executor=options, progress=OnFirstCommit(lose_all))
            raise AssertionError("the run should have stopped")
        except ClusterUnavailableError as e:
            give_up = time.perf_counter() - removed_at[0]
            give_up_line = str(e)
    import ray

    ray.shutdown()
    cluster.shutdown()
    shutil.rmtree(ray_dir, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)

    n = args.images
    print(f"machine: {machine()}")
    print(f"{n} JPEGs of 640x480, model {args.model}, shards of {args.shard_size}, 2 actors")
    print_table(
        "Ray under faults",
        [
            Row("undisturbed job, images/s", f"{n / calm:.1f}"),
            Row(
                f"one of 2 worker nodes lost at the first commit ({retried} shard retried), "
                "images/s",
                f"{n / one_lost:.1f}",
                f"{n / calm:.1f}",
                ratio(n / one_lost, n / calm),
            ),
            Row(
                "every worker lost: from the loss to the one-line error",
                f"{give_up:.1f} s",
                f"{args.timeout:g} s (bound)",
                f"{give_up / args.timeout:.2f}x",
            ),
            Row(
                "CLI, nothing listens at the address: start to the one-line error",
                f"{refused:.1f} s",
                f"{args.timeout:g} s (bound)",
                f"{refused / args.timeout:.2f}x",
            ),
            Row(
                "CLI, the address accepts and never answers: start to the one-line error",
                f"{mute:.1f} s",
                f"{args.timeout:g} s (bound)",
                f"{mute / args.timeout:.2f}x",
            ),
        ],
    )
    for line in (refused_err, mute_err, give_up_line):
        print(line)


if __name__ == "__main__":
    main()
