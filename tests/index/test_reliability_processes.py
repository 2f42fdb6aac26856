"""Reliability across processes: `clipsearch index` killed with SIGKILL at random moments
loses nothing, searches keep working while another process indexes, and a second writer is
refused at once, also after the first one died.

Starting Python with torch and open_clip costs seconds, so the indexer runs are forked from a
"zygote": a process that imported them once and then forks a child per run. Each child runs
the real command line, `python -m clipsearch.cli.main ...`, through runpy; the test kills it with
SIGKILL like any other process. The last run of the crash test is a fresh
`python -m clipsearch.cli.main` process.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clipsearch import ImageIndex, IndexLockedError, IndexNotFoundError
from clipsearch.cli.main import main
from clipsearch.store.catalog import Catalog
from clipsearch.store.repair import quick_check
from clipsearch.store.vectors import VectorIndex, index_files_exist

SEED = int(os.environ.get("CLIPSEARCH_CRASH_SEED", "20240607"))

ZYGOTE = textwrap.dedent(
    """
    import json, os, runpy, sys, traceback
    import torch, open_clip, faiss  # the slow imports, paid once; no torch op runs here
    import clipsearch.index.imageindex  # not clipsearch.cli.main: runpy runs that as __main__

    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if "wait" in req:
            _, status = os.waitpid(req["wait"], 0)
            print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
            continue
        pid = os.fork()
        if pid:
            print(json.dumps({"pid": pid}), flush=True)
            continue
        code = 1
        try:
            for fd, name in ((1, "stdout"), (2, "stderr")):
                out = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(out, fd)
                os.close(out)
            if req.get("save_every") is not None:  # save the FAISS file after every batch
                import dataclasses
                from clipsearch.index import pipeline as indexer

                @dataclasses.dataclass(frozen=True)
                class Options(indexer.IndexOptions):
                    save_every: float = req["save_every"]

                clipsearch.index.imageindex.IndexOptions = Options
            sys.argv = ["clipsearch", *req["args"]]
            runpy.run_module("clipsearch.cli.main", run_name="__main__", alter_sys=True)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    """
)

# Every test here runs real processes (a forked indexer, kills): all of them are slow.
pytestmark = pytest.mark.slow


class Zygote:
    """Forks `clipsearch` command-line runs from a process that has imported torch already."""

    def __init__(self, cwd: Path):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the zygote process died")
        return json.loads(line)

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def start(self, args: list, logs: Path, save_every: float | None = None) -> int:
        """Start `clipsearch ARGS` in a child; returns its pid."""
        return self._ask(
            {
                "args": [str(a) for a in args],
                "stdout": str(logs.with_suffix(".out")),
                "stderr": str(logs.with_suffix(".err")),
                "save_every": save_every,
            }
        )["pid"]

    def wait(self, pid: int) -> int:
        """The child's exit code, or minus the signal that ended it."""
        return self._ask({"wait": pid})["status"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def zygote(tmp_path_factory) -> Iterator[Zygote]:
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


def write_photo(path: Path, rng: random.Random) -> None:
    """A small picture that no other photo of the test has."""
    size = rng.randrange(24, 48)
    pixels = np.frombuffer(rng.randbytes(size * size * 3), dtype=np.uint8).reshape(size, size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def wait_for_lock(index_dir: Path, pid: int, timeout: float = 60.0) -> bool:
    """Wait until process `pid` holds the index's write lock (it writes its pid there)."""
    deadline = time.monotonic() + timeout
    lock = index_dir / "lock"
    while time.monotonic() < deadline:
        try:
            if lock.read_text().strip() == str(pid):
                return True
        except OSError:
            pass
        time.sleep(0.01)
    return False


def wait_for_commit(index_dir: Path, target: int, pid: int, timeout: float = 60.0) -> None:
    """Wait until the catalog holds `target` images, or the indexer `pid` has exited."""
    deadline = time.monotonic() + timeout
    catalog = None
    try:
        while time.monotonic() < deadline:
            if catalog is None and (index_dir / "catalog.sqlite").exists():
                catalog = Catalog(index_dir / "catalog.sqlite")
            try:
                if catalog is not None and catalog.count() >= target:
                    return
            except Exception:  # still creating its tables
                pass
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] == "Z":
                return
            time.sleep(0.005)
    finally:
        if catalog is not None:
            catalog.close()
    raise AssertionError(f"indexer {pid} committed nothing in {timeout} s")


def check_after_crash(index_dir: Path, note: str) -> int:
    """Everything a crash must leave intact; returns the number of committed images."""
    if not (index_dir / "catalog.sqlite").exists():
        return 0  # killed before the index was created
    try:
        index = ImageIndex.open(index_dir)
    except IndexNotFoundError as e:  # killed while creating it: the next run finishes it
        assert "no finished index" in str(e), note
        return 0
    with index:
        catalog = index.catalog
        assert quick_check(catalog) == "ok", note
        ids = np.sort(catalog.ids())
        records = catalog.images(ids.tolist())
        paths = [r.path for r in records.values()]
        assert len(paths) == len(set(paths)), f"{note}: a path appears twice"
        if index_files_exist(index_dir):
            # The FAISS file on disk is whole, and whatever it holds the catalog holds too,
            # with the same vectors: ids are never reused, so sync can fix everything else.
            saved, generation = VectorIndex.load(index_dir, index.identity.dim)
            on_disk = np.sort(saved.ids())
            common = np.intersect1d(on_disk, ids)
            if generation == catalog.generation():
                assert np.array_equal(on_disk, ids), f"{note}: FAISS file claims to be current"
            for i in common[:: max(1, len(common) // 20)].tolist():
                assert np.array_equal(saved.index.reconstruct(i), catalog.vector(i)), note
        assert len(list(index_dir.glob("*.tmp"))) <= 2, f"{note}: temp files pile up"
        assert np.array_equal(np.sort(index.vectors.ids()), ids), f"{note}: sync failed"
        count = len(ids)
    info = CliRunner().invoke(main, ["--index", str(index_dir), "info", "--json"])
    assert info.exit_code == 0, f"{note}: {info.output}"
    assert json.loads(info.stdout)["count"] == count
    return count


def test_sigkill_at_random_moments_loses_nothing(zygote, tmp_path, tiny_model):
    rng = random.Random(SEED)
    photos = tmp_path / "photos"
    index_dir = tmp_path / "idx"
    for i in range(40):
        write_photo(photos / f"set{i % 3}" / f"p{i:04d}.png", rng)
    args = ["--index", index_dir, "index", photos, "--model", tiny_model, "--device", "cpu"]
    args += ["--batch-size", "2", "--workers", "1", "--json"]
    killed_mid_run = 0
    trials = 20
    after = 0
    for trial in range(trials):
        note = f"trial {trial} (CLIPSEARCH_CRASH_SEED={SEED})"
        if trial:  # the library changes between runs: new, rewritten and deleted photos
            files = sorted(photos.rglob("*.png"))
            for i in range(12):
                write_photo(photos / f"set{i % 3}" / f"t{trial:02d}_{i:02d}.png", rng)
            write_photo(rng.choice(files), rng)
            rng.choice(files).unlink(missing_ok=True)
        before = after  # changing files on disk changes nothing in the index
        save_every = 0.0 if trial % 2 else None
        pid = zygote.start(args, tmp_path / f"run{trial}", save_every=save_every)
        if trial % 4 == 0:  # any moment, model loading and index creation included
            time.sleep(rng.uniform(0.0, 1.5))
        else:  # after a random number of new images are committed: mid-run on any machine
            wait_for_commit(index_dir, before + rng.randint(1, 20), pid)
        os.kill(pid, signal.SIGKILL)
        status = zygote.wait(pid)
        assert status in (0, -signal.SIGKILL), (
            note,
            (tmp_path / f"run{trial}.err").read_text()[-2000:],
        )
        after = check_after_crash(index_dir, note)
        killed_mid_run += status == -signal.SIGKILL and after != before
    assert killed_mid_run >= trials // 3, "too few kills landed while images were committed"

    # The next run encodes exactly the files whose current content is not committed.
    on_disk = {str(p): p.stat() for p in photos.rglob("*.png")}
    with ImageIndex.open(index_dir) as index:
        stored = {r.path: r for r in index.catalog.images(index.catalog.ids().tolist()).values()}
    current = {
        p
        for p, st in on_disk.items()
        if p in stored and (stored[p].size, stored[p].mtime_ns) == (st.st_size, st.st_mtime_ns)
    }
    expected = {
        "added": len(on_disk.keys() - stored.keys()),
        "updated": len(on_disk.keys() & stored.keys()) - len(current),
        "moved": 0,
        "removed": len(stored.keys() - on_disk.keys()),
        "unchanged": len(current),
        "failed": 0,
        "skipped_videos": 0,
    }
    run = subprocess.run(
        [sys.executable, "-m", "clipsearch.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    summary.pop("seconds")
    summary.pop("engine")
    assert summary == expected
    assert check_after_crash(index_dir, "final run") == len(on_disk)
    saved, generation = VectorIndex.load(index_dir, 512)
    with ImageIndex.open(index_dir) as index:
        assert generation == index.catalog.generation()
        assert np.array_equal(np.sort(saved.ids()), np.sort(index.catalog.ids()))
    assert not list(index_dir.glob("*.tmp"))


def test_searches_keep_working_while_another_process_indexes(zygote, tmp_path, tiny_model):
    """The indexer is paused (SIGSTOP) at random points, in a transaction or a FAISS save as
    likely as not, and searched meanwhile: each search sees exactly what is committed."""
    rng = random.Random(SEED + 1)
    photos = tmp_path / "photos"
    for i in range(4):
        write_photo(photos / "first" / f"{i}.png", rng)
    index_dir = tmp_path / "idx"
    with ImageIndex.open_or_create(index_dir, model=tiny_model, device="cpu") as index:
        index.add([photos])
    for i in range(120):
        write_photo(photos / "later" / f"{i:03d}.png", rng)
    args = ["--index", index_dir, "index", photos, "--batch-size", "2", "--workers", "1"]
    pid = zygote.start(args, tmp_path / "indexer", save_every=0.0)
    assert wait_for_lock(index_dir, pid)

    # A second writer is refused at once, naming the one at work.
    result = CliRunner().invoke(main, ["--index", str(index_dir), "index", str(photos)])
    assert result.exit_code == 1
    assert f"is being written by process {pid}" in result.output

    def search(how: int, long_lived: ImageIndex) -> int:
        if how == 0:  # a fresh open, as every CLI call does
            with ImageIndex.open(index_dir, device="cpu") as fresh:
                return len(fresh.search("a photo", k=1000))
        if how == 1:
            return len(long_lived.search("a photo", k=1000))
        out = CliRunner().invoke(
            main, ["--index", str(index_dir), "search", "a photo", "-k", "1000", "--json"]
        )
        assert out.exit_code == 0, out.output
        return len(json.loads(out.stdout))

    counts: list[int] = []
    long_lived = ImageIndex.open(index_dir, device="cpu")
    try:
        committed = 4
        for _ in range(6):
            wait_for_commit(index_dir, committed + rng.randint(1, 12), pid)
            os.kill(pid, signal.SIGSTOP)
            try:
                committed = long_lived.count
                for how in range(3):
                    assert search(how, long_lived) == committed
                    counts.append(committed)
            finally:
                os.kill(pid, signal.SIGCONT)
        while not _exited(index_dir, pid):  # and while it runs on its own
            before = long_lived.count
            found = search(len(counts) % 3, long_lived)
            assert before <= found <= long_lived.count
            counts.append(found)
    finally:
        long_lived.close()
    assert zygote.wait(pid) == 0, (tmp_path / "indexer.err").read_text()
    with ImageIndex.open(index_dir, device="cpu") as index:
        assert len(index.search("a photo", k=1000)) == 124
    assert counts == sorted(counts), "a search saw fewer images than an earlier one"
    assert len(set(counts)) >= 6


def _exited(index_dir: Path, pid: int) -> bool:
    """The indexer has finished when its lock is free (the zygote reaps it later)."""
    import fcntl

    fd = os.open(index_dir / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from clipsearch.index.imageindex import ImageIndex

    with ImageIndex.open(sys.argv[1]) as index, index.writing():
        print("locked", flush=True)
        time.sleep(600)
    """
)


def test_lock_is_refused_at_once_and_released_when_its_holder_is_killed(
    tmp_path, tiny_model, photo_dir, monkeypatch
):
    index_dir = tmp_path / "idx"
    with ImageIndex.open_or_create(index_dir, model=tiny_model, device="cpu") as index:
        index.add([photo_dir])
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(index_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        import clipsearch.index.imageindex as index_mod

        def no_model(*a, **k):
            raise AssertionError("a refused writer must not load the model first")

        real_load_spec = index_mod.load_spec
        monkeypatch.setattr(index_mod, "load_spec", no_model)
        with ImageIndex.open(index_dir) as index:
            with pytest.raises(IndexLockedError, match=f"process {holder.pid}"):
                index.add([photo_dir])
            with pytest.raises(IndexLockedError):
                index.repair()
            assert len(index.search_vector(index.catalog.vector(1), k=50)) == 12  # reads work
        for command in (["index", photo_dir], ["repair"]):
            result = CliRunner().invoke(main, ["--index", str(index_dir), *map(str, command)])
            assert result.exit_code == 1
            assert f"is being written by process {holder.pid}" in result.output
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        monkeypatch.setattr(index_mod, "load_spec", real_load_spec)
        with ImageIndex.open(index_dir) as index:
            assert index.add([photo_dir]).unchanged == 12  # the kernel released the lock
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
