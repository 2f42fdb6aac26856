"""A second client's search latency while a first one floods the server, with and without
the per-address rate limit of `clipsearch serve` on a network (see clipsearch/web/ratelimit.py).

A server (create_app under uvicorn, in a process of its own) serves an index of N clustered
512-d vectors under the default model, ViT-B-16-quickgelu with random weights (as
bench_search.py: text queries run on the NumPy text tower). A flooding client, in another
process with FLOOD threads on keep-alive connections from 127.0.0.1, sends searches as fast as
the server answers; a second client, from 127.0.0.2 (another address to the server), sends
QUERIES searches one after another and times each. Three phases, each with a fresh server:

* idle: the second client alone (the baseline);
* flood, no limit: every flooding search is served, and takes its turn at the model;
* flood, limited: the server's default limits (4 searches a second, bursts of 20, per
  address): the flood is mostly answered 429 at once, without touching the model.

The second client searches about three times a second, as a person browsing might, within
the limit. The ratio is its p50 over the idle p50: 1.00x is no slower than an idle server.

    python benchmarks/bench_lan.py                 # 20k vectors, about a minute
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).parent))
from _common import Row, machine, percentile_ms, plant_default_model, print_table, ratio  # noqa: E402
from bench_search import QUERIES, build_index, ensure_text_record  # noqa: E402

SERVER = """
import json, sys
from clipsearch.web import create_app, server
from clipsearch.web.access import Access
from clipsearch.web.ratelimit import RateLimits
folder, limited = sys.argv[1], sys.argv[2] == "1"
access = Access(rate_limits=RateLimits() if limited else None)
app = create_app(folder, device="cpu", access=access, allowed_hosts=None)
sock = server.bind("0.0.0.0", 0)
print(sock.getsockname()[1], flush=True)
server.run(app, sock)
"""


def start_server(folder: Path, limited: bool) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(folder), "1" if limited else "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    for _ in range(600):  # the socket is bound; uvicorn listens once it has started
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            return proc, port
        except ConnectionRefusedError:
            time.sleep(0.05)
    raise RuntimeError("the server did not start")


def search(conn: http.client.HTTPConnection, query: str) -> int:
    conn.request("GET", "/api/search?" + urlencode({"q": query, "k": 24}))
    response = conn.getresponse()
    response.read()
    return response.status


def flood(port: int, threads: int, stop: mp.Event, counts: mp.Queue) -> None:  # type: ignore[valid-type]
    """Searches from 127.0.0.1 as fast as they are answered, on ``threads`` connections."""
    tally: dict[int, int] = {}
    lock = threading.Lock()

    def loop(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, source_address=("127.0.0.1", 0))
        i = 0
        while not stop.is_set():
            status = search(conn, f"{QUERIES[(n + i) % len(QUERIES)]} {i}")
            i += 1
            with lock:
                tally[status] = tally.get(status, 0) + 1

    workers = [threading.Thread(target=loop, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    counts.put(tally)


def second_client(port: int, queries: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.2", port, source_address=("127.0.0.2", 0))
    times = []
    for i in range(queries):
        t = time.perf_counter()
        status = search(conn, f"{QUERIES[i % len(QUERIES)]} {i}")
        times.append(time.perf_counter() - t)
        assert status == 200, status  # the second client stays within any limit
        time.sleep(0.3)  # a person browsing: about 3 searches a second, under the limit
    return times


def phase(folder: Path, limited: bool, flooders: int, queries: int) -> tuple[list[float], dict]:
    proc, port = start_server(folder, limited)
    try:
        warm = http.client.HTTPConnection("127.0.0.3", port, source_address=("127.0.0.3", 0))
        for q in QUERIES[:3]:
            search(warm, q)  # the text tower and the FAISS index are loaded
        stop, counts = mp.Event(), mp.Queue()
        flooder = None
        if flooders:
            flooder = mp.Process(target=flood, args=(port, flooders, stop, counts))
            flooder.start()
            time.sleep(1.0)  # the flood is under way (and a limited one past its burst)
        t = time.perf_counter()
        times = second_client(port, queries)
        elapsed = time.perf_counter() - t
        stop.set()
        tally = {}
        if flooder is not None:
            tally = counts.get(timeout=60)
            flooder.join()
            tally = {str(k): round(v / (elapsed + 1.0), 1) for k, v in sorted(tally.items())}
        return times, tally
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="vectors in the index")
    ap.add_argument("--queries", type=int, default=40, help="searches the second client times")
    ap.add_argument("--flood", type=int, default=4, help="threads of the flooding client")
    ap.add_argument("--work", type=Path, default=Path("/tmp/clipsearch-bench"))
    args = ap.parse_args()

    print(f"machine: {machine()}", flush=True)
    env = plant_default_model(args.work / "hf-cache")
    env["XDG_CACHE_HOME"] = str(args.work / "cache")
    env["OMP_NUM_THREADS"] = "1"
    os.environ.update(env)
    folder = args.work / f"search-index-{args.n}"
    build_index(folder, args.n, env)
    ensure_text_record(folder)

    idle, _ = phase(folder, limited=False, flooders=0, queries=args.queries)
    unlimited, served = phase(folder, False, args.flood, args.queries)
    limited, refused = phase(folder, True, args.flood, args.queries)
    print(f"flood, no limit: answers a second by status {json.dumps(served)}")
    print(f"flood, limited:  answers a second by status {json.dumps(refused)}")
    base = percentile_ms(idle)
    rows = [Row("second client p50, idle server", f"{base:.1f} ms", "-", "-")]
    for name, times in (("flood, no limit", unlimited), ("flood, rate-limited", limited)):
        p50 = percentile_ms(times)
        rows.append(
            Row(
                f"second client p50, {name} (p90 {percentile_ms(times, 90):.1f} ms)",
                f"{p50:.1f} ms",
                f"{base:.1f} ms (idle)",
                ratio(p50, base),  # how many times the idle latency
            )
        )
    print_table(
        f"a second client's search latency, {args.n:,} images, ViT-B-16 (random weights), "
        f"a flood of {args.flood} connections",
        rows,
    )


if __name__ == "__main__":
    main()
