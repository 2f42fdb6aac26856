"""GET /api/duplicates: the library's groups, with thumbnail links; bad input answers 4xx."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clipsearch import ImageIndex
from clipsearch.web import create_app
from tests.helpers import draw_near_duplicates


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict[str, Path]:
    return draw_near_duplicates(tmp_path_factory.mktemp("web-dups") / "photos")


@pytest.fixture(scope="module")
def index(tmp_path_factory, photos):
    ix = ImageIndex.create(tmp_path_factory.mktemp("web-dups-index") / "idx", model="demo")
    ix.add([photos["base"].parent.parent])
    yield ix
    ix.close()


@pytest.fixture(scope="module")
def client(index) -> TestClient:
    return TestClient(create_app(index), base_url="http://127.0.0.1")


def paths(body: dict) -> list[list[str]]:
    return [[m["path"] for m in g["members"]] for g in body["groups"]]


def test_duplicates_match_the_library(client, index, photos):
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.values()}
    response = client.get("/api/duplicates")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 2
    assert paths(body) == [[m.path for m in g.members] for g in index.duplicates()]
    first = body["groups"][0]
    assert first["reason"] == "similar" and first["members"][0]["similarity"] == 1.0
    keep = first["members"][0]
    assert keep["path"] == str(photos["base"].resolve())
    assert client.get(keep["thumb_url"]).status_code == 200
    assert client.get(keep["image_url"]).content == photos["base"].read_bytes()
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.values()} == before


def test_threshold_prefix_and_limit(client, photos):
    strict = client.get("/api/duplicates", params={"threshold": 0.99}).json()
    assert str(photos["crop"].resolve()) not in sum(paths(strict), [])
    folder = f"{photos['jpeg'].parent.resolve()}/"
    under = client.get("/api/duplicates", params={"prefix": folder}).json()
    assert paths(under) == [[str(photos["jpeg"].resolve()), str(photos["crop"].resolve())]]
    one = client.get("/api/duplicates", params={"limit": 1}).json()
    assert one["count"] == 2 and len(one["groups"]) == 1


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"threshold": 0}, 422, "greater than 0"),
        ({"threshold": 1.5}, 422, "less than or equal to 1"),
        ({"threshold": "high"}, 422, "number"),
        ({"limit": 0}, 422, "greater than or equal to 1"),
        ({"prefix": "/not/indexed/anywhere"}, 400, "outside the indexed folders"),
    ],
)
def test_bad_input_answers_4xx(client, params, status, message):
    response = client.get("/api/duplicates", params=params)
    assert response.status_code == status, response.text
    assert message in response.text


def test_the_page_offers_a_duplicates_view(client):
    page = client.get("/").text
    assert 'id="dups"' in page
    script = client.get("/static/app.js").text
    assert "api/duplicates" in script
    assert "/api/duplicates" in client.get("/openapi.json").json()["paths"]
