"""The date, camera and place filters over HTTP: the same results as the library, the fields in
each hit, and bad values answered 400 in one sentence."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from clipsearch import ImageIndex
from clipsearch.web import create_app
from tests.helpers import save_photo

NICE = (43.7102, 7.2620)


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_model) -> ImageIndex:
    root = tmp_path_factory.mktemp("dated") / "photos"
    for n, color in enumerate(["red", "green", "blue", "yellow", "purple", "orange"]):
        save_photo(
            root / f"{color}.jpg",
            color,
            taken=f"{2022 + n % 2}:08:0{n + 1} 10:00:00",
            offset="+02:00",
            make="Canon" if n < 3 else "SONY",
            model="EOS R6" if n < 3 else "ILCE-7M4",
            gps=NICE if n % 3 == 0 else None,
        )
    ix = ImageIndex.create(root.parent / "index", model=tiny_model)
    ix.add([root])
    yield ix
    ix.close()


@pytest.fixture(scope="module")
def client(index) -> TestClient:
    return TestClient(create_app(index), base_url="http://127.0.0.1")


def pairs(hits) -> list[tuple[int, float]]:
    if isinstance(hits, list):
        return [(h.id, h.score) for h in hits]
    assert hits.status_code == 200, hits.text
    return [(h["id"], h["score"]) for h in hits.json()["results"]]


@pytest.mark.parametrize(
    "where",
    [
        {"after": "2023"},
        {"before": "2023-01-01"},
        {"camera": "sony"},
        {"near": "43.71,7.26"},
        {"after": "2022-08-02", "before": "2023", "camera": "canon"},
    ],
)
def test_search_and_similar_filter_as_the_library_does(client, index, where):
    web = client.get("/api/search", params={"q": "a photo", "k": 50, **where})
    lib = index.search_indexed("a photo", k=50, **where)
    assert pairs(web) == pairs(lib) and 0 < len(lib) < 6
    first = int(index.catalog.ids()[0])
    web = client.get(f"/api/images/{first}/similar", params={"k": 50, **where})
    assert pairs(web) == pairs(index.similar(first, k=50, **where))


def test_hits_and_images_carry_the_date_camera_and_place(client, index):
    hits = client.get("/api/search", params={"q": "x", "k": 50, "near": "43.7,7.26"}).json()
    assert hits["count"] == 2
    for hit in hits["results"]:
        assert hit["taken"].endswith("10:00:00+02:00") and hit["taken_source"] == "exif"
        assert (hit["lat"], hit["lon"]) == NICE
        image = client.get(f"/api/images/{hit['id']}").json()
        assert {k: image[k] for k in ("taken", "camera", "lat")} == {
            k: hit[k] for k in ("taken", "camera", "lat")
        }


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"after": "yesterday"}, "is not a date"),
        ({"near": "1,2,3,4"}, "LAT,LON"),
        ({"after": "2024", "before": "2023"}, "no photo could match"),
        ({"camera": "  "}, "camera filter is empty"),
    ],
)
def test_bad_filters_are_answered_400(client, params, says):
    response = client.get("/api/search", params={"q": "x", **params})
    assert response.status_code == 400 and says in response.json()["detail"]
