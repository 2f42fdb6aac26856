"""The server sees what is written to its index while it runs: its own watcher's batches
(`serve --watch`) and other processes' runs of index, style train and reindex."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("watchdog")

from fastapi.testclient import TestClient  # noqa: E402

from clipsearch import ImageIndex  # noqa: E402
from clipsearch.index.watch import FolderWatcher  # noqa: E402
from clipsearch.web.app import create_app  # noqa: E402
from tests.helpers import draw_image  # noqa: E402
from tests.index.test_watch import wait_for  # noqa: E402


@pytest.fixture
def index_dir(tmp_path, tiny_model, photo_dir):
    folder = tmp_path / "idx"
    with ImageIndex.create(folder, tiny_model, device="cpu") as index:
        index.add([photo_dir])
    return folder


def search_paths(client, q="a picture", k=100):
    r = client.get("/api/search", params={"q": q, "k": k})
    assert r.status_code == 200, r.text
    return {h["path"]: h for h in r.json()["results"]}


def cli(index_dir, *args):
    """Run the clipsearch command in another process, as a user's other terminal would."""
    run = subprocess.run(
        [sys.executable, "-m", "clipsearch.cli.main", "--index", str(index_dir), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_serve_watch_makes_a_saved_photo_searchable(index_dir, photo_dir):
    writer = ImageIndex.open(index_dir, device="cpu")
    watcher = FolderWatcher(writer, [photo_dir], settle=0.2)
    reader = ImageIndex.open(index_dir, device="cpu")
    app = create_app(reader, watcher=watcher)
    try:
        with TestClient(app, base_url="http://127.0.0.1") as client:
            assert len(search_paths(client)) == 12
            new = draw_image(photo_dir / "inbox" / "orange_square.png", "orange", "square")
            hit = wait_for(lambda: search_paths(client).get(str(new)))
            assert client.get(f"/api/images/{hit['id']}").status_code == 200
            assert client.get("/api/info").json()["count"] == 13
            (photo_dir / "inbox" / "orange_square.png").unlink()
            wait_for(lambda: str(new) not in search_paths(client))
        assert watcher._observer is None  # stopped with the app
    finally:
        reader.close()
        writer.close()


def two_kinds(root):
    for i in range(6):
        draw_image(root / "reds" / f"r{i}.png", "red", ["circle", "square", "triangle"][i % 3])
        draw_image(root / "blues" / f"b{i}.png", "blue", ["circle", "square", "triangle"][i % 3])
    return root


@pytest.mark.slow
def test_a_server_sees_another_process_index_train_and_reindex(index_dir, tmp_path):
    with ImageIndex.open(index_dir, device="cpu") as reader:
        client = TestClient(create_app(reader), base_url="http://127.0.0.1")
        assert len(search_paths(client)) == 12
        # New images indexed by another process.
        more = tmp_path / "more"
        for color in ("purple", "orange"):
            draw_image(more / f"{color}.png", color, "circle")
        cli(index_dir, "index", more)
        paths = search_paths(client)
        assert {str(more / "purple.png"), str(more / "orange.png")} <= paths.keys()
        assert client.get("/api/info").json()["count"] == 14
        # A style head trained by another process: its labels filter the server's searches.
        cli(index_dir, "style", "train", two_kinds(tmp_path / "train"))
        info = client.get("/api/info").json()
        assert set(info["styles"]) <= {"reds", "blues"} and sum(info["styles"].values()) == 14
        r = client.get("/api/search", params={"q": "x", "style": "reds", "k": 100})
        assert r.status_code == 200 and all(h["style"] == "reds" for h in r.json()["results"])
        # A reindex to lists on disk, then more images: the server's results stay whole.
        cli(index_dir, "reindex", "--type", "ivf-ondisk")
        draw_image(more / "yellow.png", "yellow", "square")
        cli(index_dir, "index", more)
        assert client.get("/api/info").json()["count"] == 15
        assert str(more / "yellow.png") in search_paths(client)
        assert len(search_paths(client)) == 15
    # A server started on the lists file follows the new lists file another run writes.
    with ImageIndex.open(index_dir, device="cpu") as reader:
        client = TestClient(create_app(reader), base_url="http://127.0.0.1")
        assert client.get("/api/info").json()["index_type"] == "ivf-ondisk"
        assert len(search_paths(client)) == 15
        for color in ("red", "green"):
            draw_image(more / f"late_{color}.png", color, "triangle")
        cli(index_dir, "index", more)
        paths = search_paths(client)
        assert {str(more / "late_red.png"), str(more / "late_green.png")} <= paths.keys()
        assert len(paths) == 17


@pytest.mark.slow
def test_a_watcher_labels_new_images_with_a_head_trained_meanwhile(index_dir, photo_dir, tmp_path):
    with ImageIndex.open(index_dir, device="cpu") as writer:
        watcher = FolderWatcher(writer, [photo_dir], settle=0.2)
        watcher.start()
        try:
            first = draw_image(photo_dir / "a.png", "green", "circle")
            rec = wait_for(lambda: writer.catalog.find_path(str(first)))
            assert rec.style not in {"reds", "blues"}  # zero-shot
            cli(index_dir, "style", "train", two_kinds(tmp_path / "train"))
            second = draw_image(photo_dir / "b.png", "red", "square")
            rec = wait_for(lambda: writer.catalog.find_path(str(second)))
            assert rec.style in {"reds", "blues"}
        finally:
            watcher.stop()
