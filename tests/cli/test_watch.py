"""`clipsearch watch` as a user runs it: a real process, real file events, Ctrl+C to stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.helpers import draw_image

pytest.importorskip("watchdog")


class Lines:
    """A process's stdout lines, read in a thread, waited for with a timeout."""

    def __init__(self, stream):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream):
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, text: str, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((line for line in self.lines if text in line), None)
            if hit is not None:
                return hit
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} within {timeout}s; got {self.lines}")


@pytest.mark.slow
def test_watch_indexes_then_follows_changes_until_ctrl_c(tmp_path, tiny_model, photo_dir):
    index_dir = tmp_path / "idx"
    args = ["--index", index_dir, "watch", photo_dir, "--model", tiny_model, "--settle", "0.2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipsearch.cli.main", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out = Lines(proc.stdout)
        out.wait_for("watching 1 folder")
        out.wait_for("added 12")  # the first, incremental pass
        draw_image(photo_dir / "new.png", "purple", "square")
        (photo_dir / "shapes" / "red_square.png").unlink()
        out.wait_for("added 1")
        if not any("removed 1" in line for line in out.lines):
            out.wait_for("removed 1")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped watching" in err
    search = subprocess.run(
        [sys.executable, "-m", "clipsearch.cli.main", "--index", str(index_dir)]
        + ["search", "x", "-k", "50", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    paths = {h["path"] for h in json.loads(search.stdout)}
    assert str(photo_dir / "new.png") in paths
    assert str(photo_dir / "shapes" / "red_square.png") not in paths
    assert len(paths) == 12


def test_watch_without_watchdog_says_what_to_install(run, indexed, monkeypatch):
    monkeypatch.setitem(sys.modules, "watchdog", None)
    for args in (["watch", indexed], ["serve", "--watch", indexed, "--port", "0"]):
        result = run(*args)
        assert result.exit_code == 1
        assert result.output.strip().splitlines() == [
            "clipsearch: error: watching folders needs watchdog, not installed here; install "
            "the watch extra: pip install 'clipsearch[watch]'"
        ]


@pytest.mark.slow
def test_serve_watch_shows_a_saved_photo_on_the_page(tmp_path, tiny_model, photo_dir):
    import re
    import urllib.parse
    import urllib.request

    index_dir = tmp_path / "idx"
    args = ["--index", index_dir, "index", photo_dir, "--model", tiny_model, "--device", "cpu"]
    subprocess.run([sys.executable, "-m", "clipsearch.cli.main", *map(str, args)], check=True)
    args = ["--index", index_dir, "serve", "--port", "0", "--watch", photo_dir, "--settle", "0.6"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "clipsearch.cli.main", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        out = Lines(proc.stdout)
        url = re.search(r"http://\S+/", out.wait_for("serving")).group(0)
        out.wait_for("unchanged 12")  # the watcher's catch-up pass
        new = draw_image(photo_dir / "saved.png", "purple", "triangle")

        def on_page():
            query = urllib.parse.urlencode({"q": "a picture", "k": 50})
            with urllib.request.urlopen(f"{url}api/search?{query}", timeout=30) as r:
                return str(new) in {h["path"] for h in json.load(r)["results"]}

        deadline = time.monotonic() + 60
        while not on_page():
            assert time.monotonic() < deadline, "the saved photo never showed up"
            time.sleep(0.1)
        out.wait_for("added 1")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
