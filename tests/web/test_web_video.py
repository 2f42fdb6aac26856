"""Videos over HTTP: hits carry frame_time, the thumbnail is the frame at that time, and the
file route plays the video with Range requests (206), only for indexed files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipsearch import ImageIndex
from clipsearch.web import create_app
from tests.helpers import draw_image, make_video, shape_image

pytest.importorskip("av")


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_model) -> ImageIndex:
    root = tmp_path_factory.mktemp("videos") / "photos"
    make_video(root / "holiday.mp4")
    draw_image(root / "yellow.png", "yellow", "circle")
    ix = ImageIndex.create(root.parent / "index", model=tiny_model)
    ix.add([root], video_interval=2.0)
    yield ix
    ix.close()


@pytest.fixture(scope="module")
def client(index) -> TestClient:
    return TestClient(create_app(index), base_url="http://127.0.0.1")


def green_frame_id(index) -> int:
    """The id of a frame of the second segment (green squares, 4 to 8 s)."""
    video = index.catalog.find_path(next(p for p in _paths(index) if p.endswith(".mp4")))
    return next(i for i, t in index.catalog.frames(video.id) if 4 <= t < 8)


def _paths(index) -> list[str]:
    return [r.path for r in index.catalog.images(index.catalog.ids().tolist()).values()]


def test_hits_carry_frame_time_and_a_thumbnail_of_that_frame(client, index):
    frame = green_frame_id(index)
    hits = client.get("/api/search", params={"q": f"@{frame}", "k": 5})
    assert hits.status_code == 200, hits.text
    results = hits.json()["results"]
    # The video itself is left out of a search from its own frame; the image has no time.
    assert [r["frame_time"] for r in results] == [None]
    red = index.catalog.frames(index.catalog.images([frame])[frame].file_id)[0][0]
    hits = client.get(f"/api/images/{red}/similar", params={"k": 5}).json()["results"]
    assert all(not h["path"].endswith(".mp4") for h in hits)
    record = client.get(f"/api/images/{frame}").json()
    assert 4 <= record["frame_time"] < 8
    thumb = client.get(record["thumb_url"])
    assert thumb.status_code == 200
    got = np.asarray(Image.open(io.BytesIO(thumb.content)).convert("RGB").resize((64, 64)))
    want = np.asarray(shape_image("green", "square"))
    assert np.abs(got.astype(int) - want.astype(int)).mean() < 20
    other = client.get(f"/api/images/{red}/thumb")
    assert other.headers["etag"] != thumb.headers["etag"]  # one thumbnail per frame


def test_the_video_file_answers_range_requests(client, index):
    frame = green_frame_id(index)
    record = client.get(f"/api/images/{frame}").json()
    whole = client.get(record["image_url"])
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
    part = client.get(record["image_url"], headers={"Range": "bytes=100-199"})
    assert part.status_code == 206
    assert part.content == whole.content[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{len(whole.content)}"


def test_only_indexed_files_are_served(client):
    assert client.get("/api/images/999999/file").status_code == 404
