"""The HTTP API, in process: searches agree with the library, limits answer 4xx, only indexed
images are served (by id), thumbnails are cached and revalidated."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from PIL import Image

from clipsearch import ImageIndex, Query, QueryError
from clipsearch.cli.main import main
from clipsearch.models.texttower import NumpyTextEncoder
from clipsearch.web import create_app
from clipsearch.web.app import MAX_UPLOAD_BYTES
from tests.helpers import draw_image

STYLES = ("photo", "sketch")


def build_photos(root: Path) -> Path:
    """12 shapes, a landscape JPEG stored sideways with an EXIF rotation, a TIFF, and a file
    that is deleted after indexing."""
    i = 0
    for color in ["red", "green", "blue", "yellow"]:
        for shape in ["circle", "square", "triangle"]:
            draw_image(root / ("a" if i % 2 else "b") / f"{color}_{shape}.png", color, shape)
            i += 1
    sideways = Image.new("RGB", (300, 100), (200, 40, 40))  # upright it is 100 x 300
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    sideways.save(root / "rotated.jpg", exif=exif)
    draw_image(root / "scan.tif", "purple", "square", fmt="TIFF")
    draw_image(root / "gone.png", "orange", "circle")
    return root


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_model) -> ImageIndex:
    tmp = tmp_path_factory.mktemp("web")
    photos = build_photos(tmp / "photos")
    ix = ImageIndex.create(tmp / "index", model=tiny_model)
    ix.add([photos])
    (photos / "gone.png").unlink()
    ids = sorted(int(i) for i in ix.catalog.ids())
    ix.catalog.set_styles([(i, STYLES[n % 2], 0.9) for n, i in enumerate(ids)])
    yield ix
    ix.close()


@pytest.fixture(scope="module")
def client(index) -> TestClient:
    return TestClient(create_app(index), base_url="http://127.0.0.1")


def id_of(index: ImageIndex, name: str) -> int:
    for image_id, rec in index.catalog.images(list(index.catalog.ids())).items():
        if Path(rec.path).name == name:
            return image_id
    raise LookupError(name)


def ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [h["id"] for h in response.json()["results"]]


# --- the page and the schema ----------------------------------------------------------------


def test_page_is_served_with_its_assets_and_loads_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200
    assert "text/html" in page.headers["content-type"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    for asset in ("static/app.js", "static/style.css"):
        assert asset in page.text
        response = client.get(f"/{asset}")
        assert response.status_code == 200
        assert "http://" not in response.text and "https://" not in response.text
    assert "http://" not in page.text and "https://" not in page.text


def test_openapi_schema_lists_the_api(client):
    schema = client.get("/openapi.json").json()
    for route in [
        "/api/search",
        "/api/search/image",
        "/api/images/{image_id}",
        "/api/images/{image_id}/similar",
        "/api/images/{image_id}/thumb",
        "/api/images/{image_id}/file",
        "/api/info",
        "/api/errors",
    ]:
        assert route in schema["paths"], route
    k = next(p for p in schema["paths"]["/api/search"]["get"]["parameters"] if p["name"] == "k")
    assert (k["schema"]["minimum"], k["schema"]["maximum"]) == (1, 200)
    assert client.get("/docs").status_code == 200  # Swagger UI, served from installed files


def test_info_and_errors(client, index):
    info = client.get("/api/info").json()
    assert info["count"] == index.count == 15
    assert info["styles"] == {"photo": 8, "sketch": 7}
    assert info["limits"]["max_k"] == 200
    errors = client.get("/api/errors")
    assert errors.status_code == 200 and errors.json() == []


# --- searching ------------------------------------------------------------------------------


def test_text_search_matches_the_library(client, index):
    response = client.get("/api/search", params={"q": "a red circle", "k": 5})
    hits = response.json()["results"]
    assert response.json()["count"] == 5
    assert [h["id"] for h in hits] == [h.id for h in index.search("a red circle", k=5)]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    first = hits[0]
    assert set(first) >= {"id", "path", "score", "style", "thumb_url", "image_url"}
    assert first["thumb_url"] == f"/api/images/{first['id']}/thumb"
    assert first["style"] in STYLES


def test_style_and_min_score_filter(client, index):
    hits = client.get("/api/search", params={"q": "shape", "k": 200, "style": "sketch"}).json()
    assert hits["count"] == 7
    assert {h["style"] for h in hits["results"]} == {"sketch"}
    both = client.get(
        "/api/search", params=[("q", "shape"), ("style", "photo"), ("style", "sketch")]
    )
    assert both.json()["count"] == 15
    best = hits["results"][0]["score"]
    above = client.get("/api/search", params={"q": "shape", "min_score": best - 1e-6}).json()
    assert above["count"] >= 1 and all(h["score"] >= best - 1e-6 for h in above["results"])


def test_similar_by_id_never_returns_the_image_itself(client, index):
    red = id_of(index, "red_circle.png")
    got = ids(client.get(f"/api/images/{red}/similar", params={"k": 4}))
    assert red not in got
    assert got == [h.id for h in index.similar(red, k=4)]
    assert client.get("/api/images/999999/similar").status_code == 404


def test_search_by_uploaded_image_finds_the_same_picture_first(client, index):
    image_id = id_of(index, "blue_square.png")
    data = Path(index.catalog.images([image_id])[image_id].path).read_bytes()
    response = client.post(
        "/api/search/image", params={"k": 3}, files={"image": ("mine.png", data, "image/png")}
    )
    hits = response.json()["results"]
    assert response.status_code == 200 and len(hits) == 3
    assert Path(hits[0]["path"]).name == "blue_square.png"
    assert hits[0]["score"] == pytest.approx(1.0, abs=1e-4)


def test_combined_query_with_image_ids_and_minus_terms(client, index):
    red = id_of(index, "red_circle.png")
    response = client.get(
        "/api/search",
        params={"q": "a circle", "plus": [f"0.5:@{red}"], "minus": ["blue"], "k": 200},
    )
    path = index.catalog.images([red])[red].path
    expected = index.search(Query.parse("a circle", [f"0.5:@{path}"], ["blue"]), k=200)
    # The same ranking as the library's, less the image the query is made of.
    assert ids(response) == [h.id for h in expected if h.id != red]
    upload = client.post(
        "/api/search/image",
        params={"minus": "red", "k": 200},
        files={"image": ("q.png", Path(path).read_bytes(), "image/png")},
    )
    assert upload.status_code == 200 and upload.json()["count"] == 15


@pytest.mark.parametrize(
    "term",
    ["@/etc/passwd", "@../../etc/passwd", "@photos/red_circle.png", "@%2e%2e%2fetc", "@"],
)
def test_image_terms_are_ids_never_paths(client, term):
    for params in ({"q": term}, {"q": "x", "plus": term}, {"q": "x", "minus": term}):
        response = client.get("/api/search", params=params)
        assert response.status_code == 400, (params, response.text)
        assert "root:" not in response.text


def test_unknown_image_id_in_a_term(client):
    response = client.get("/api/search", params={"q": "@999999"})
    assert response.status_code in (400, 404)
    assert "999999" in response.json()["detail"]


# --- the web is the Python API over HTTP ----------------------------------------------------


def pairs(hits) -> list[tuple[int, float]]:
    """(id, score) of library hits or of a web response's results."""
    if isinstance(hits, list):
        return [(h.id, h.score) for h in hits]
    assert hits.status_code == 200, hits.text
    return [(h["id"], h["score"]) for h in hits.json()["results"]]


def test_every_web_search_gives_the_python_apis_results(client, index):
    red = id_of(index, "red_circle.png")
    text = client.get("/api/search", params={"q": "a red circle", "k": 200})
    assert pairs(text) == pairs(index.search("a red circle", k=200))

    plus, minus = [f"0.5:@{red}", "2:green"], ["blue"]
    web = client.get("/api/search", params={"q": "a circle", "plus": plus, "minus": minus, "k": 7})
    assert pairs(web) == pairs(index.search_indexed("a circle", plus=plus, minus=minus, k=7))
    # The same query naming the image by its path: the same scores, less the image itself.
    path = index.catalog.images([red])[red].path
    by_path = index.search(Query.parse("a circle", [f"0.5:@{path}", "2:green"], minus), k=8)
    assert pairs(web) == [h for h in pairs(by_path) if h[0] != red][:7]

    filtered = client.get("/api/search", params={"q": "shape", "style": "sketch", "k": 9})
    assert pairs(filtered) == pairs(index.search("shape", styles=["sketch"], k=9))
    similar = client.get(f"/api/images/{red}/similar", params={"k": 5})
    assert pairs(similar) == pairs(index.similar(red, k=5))

    data = Path(path).read_bytes()
    upload = client.post(
        "/api/search/image",
        params={"plus": "a square", "minus": "red", "k": 6},
        files={"image": ("q.png", data, "image/png")},
    )
    expected = index.search_indexed(plus=["a square"], minus=["red"], image=data, k=6)
    assert pairs(upload) == pairs(expected)


def test_an_image_given_as_bytes_or_pixels_is_the_indexed_ones(index):
    blue = id_of(index, "blue_square.png")
    path = Path(index.catalog.images([blue])[blue].path)
    from_bytes = index.embed_pixels(path.read_bytes(), "mine.png")
    from_pixels = index.embed_pixels(Image.open(path).convert("L"))  # any mode is made RGB
    assert float(from_bytes @ index.catalog.vector(blue)) == pytest.approx(1.0, abs=1e-4)
    assert float(from_pixels @ from_bytes) > 0.9  # grey, yet still the same square
    hits = index.search_indexed(image=path.read_bytes(), k=3)
    assert hits[0].id == blue and hits[0].score == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(QueryError, match=r"query image mine.png: not an image \(a text file\)"):
        index.embed_pixels(b"hello", "mine.png")
    with pytest.raises(QueryError, match="is empty"):
        index.search_indexed(image=b"", image_name="mine.png")


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ({"query": "@photos/a.png"}, "by its id, like @42"),
        ({"query": "x", "plus": ["@999999"]}, "no image with id 999999"),
        ({"query": "@99999999999999999999999"}, "no image with id 99999999999999999999999"),
        ({"minus": ["x"]}, "the query is empty"),
    ],
)
def test_search_indexed_refuses_paths_and_unknown_ids(index, query, says):
    with pytest.raises(QueryError, match=says):
        index.search_indexed(**query)


WEB_SEARCH = textwrap.dedent(
    """
    import json, sys
    from fastapi.testclient import TestClient
    from clipsearch.web.app import create_app
    with TestClient(create_app(sys.argv[1]), base_url="http://127.0.0.1") as client:
        response = client.get("/api/search", params=json.loads(sys.argv[2]))
    heavy = ["torch", "open_clip", "torchvision"]
    print(json.dumps({
        "status": response.status_code,
        "hits": [[h["id"], h["score"]] for h in response.json().get("results", [])],
        "loaded": [m for m in heavy if m in sys.modules],
    }))
    """
)


@pytest.mark.slow
def test_web_text_search_does_not_import_torch(tmp_path, tiny_model, photo_dir):
    with ImageIndex.create(tmp_path / "index", model=tiny_model, device="cpu") as ix:
        ix.add([photo_dir])
        assert isinstance(ix.text_encoder, NumpyTextEncoder)  # the model's record exists
        red = id_of(ix, "red_circle.png")
        style = next(s for s in ix.catalog.style_counts() if s)
    queries = [
        {"q": "a red circle", "k": 5},
        {"q": "a circle", "plus": [f"0.5:@{red}", "2:green"], "minus": ["blue"], "style": [style]},
    ]
    for params in queries:
        argv = [sys.executable, "-c", WEB_SEARCH, str(tmp_path / "index"), json.dumps(params)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        assert report["status"] == 200 and report["loaded"] == [], report
        with ImageIndex.open(tmp_path / "index") as ix:
            expected = ix.search_indexed(
                params["q"],
                plus=params.get("plus", ()),
                minus=params.get("minus", ()),
                styles=params.get("style"),
                k=params.get("k", 24),
            )
        # serve may answer even its first query with the ONNX Runtime text tower, made as it
        # starts; the library's first query here runs in NumPy: the same hits, scores within
        # the two towers' difference
        got, want = [tuple(h) for h in report["hits"]], pairs(expected)
        assert [i for i, _ in got] == [i for i, _ in want] and expected
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-5)


# --- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "status", "says"),
    [
        ({"q": "x", "k": 0}, 422, "greater than or equal to 1"),
        ({"q": "x", "k": 201}, 422, "less than or equal to 200"),
        ({"q": "x", "k": "ten"}, 422, "integer"),
        ({"q": "x" * 1001}, 422, "at most 1000 characters"),
        ({"q": "x", "plus": "y" * 1001}, 400, "the limit is 1000"),
        ({"q": "x", "min_score": 2}, 422, "less than or equal to 1"),
        ({"q": "x", "min_score": "nan"}, 422, "min_score"),
        ({"q": "x", "style": "watercolour"}, 400, "unknown style 'watercolour'"),
        ({}, 400, "the query is empty"),
        ({"q": "   "}, 400, "is empty"),
        ({"minus": "x"}, 400, "the query is empty"),
        ({"q": "0:x"}, 400, "weight"),
    ],
)
def test_search_limits(client, params, status, says):
    response = client.get("/api/search", params=params)
    assert response.status_code == status, response.text
    assert says in response.text


def test_k_at_the_limit_is_fine(client):
    assert client.get("/api/search", params={"q": "x", "k": 200}).json()["count"] == 15


def test_unknown_style_names_the_known_ones(client):
    detail = client.get("/api/search", params={"q": "x", "style": "oil"}).json()["detail"]
    assert "photo" in detail and "sketch" in detail
    assert "cartoon" in detail  # a label the labeller gives, though no image has it yet


def test_a_label_the_labeller_gives_filters_before_any_image_has_it(client, index):
    assert "cartoon" in index.styles.labels()
    assert "cartoon" not in index.catalog.style_counts()
    hits = client.get("/api/search", params={"q": "shape", "style": "cartoon"})
    assert hits.status_code == 200, hits.text
    assert hits.json()["count"] == 0


@pytest.mark.parametrize(
    ("data", "status", "says"),
    [
        (b"hello, world", 400, "not an image (a text file)"),
        (b"<html><body>hi</body></html>", 400, "not an image (an HTML page)"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, 400, "mine.png"),
        (b"", 400, "empty"),
        (b"\0" * (MAX_UPLOAD_BYTES + 1), 413, "larger than 20 MB"),
    ],
    ids=["text", "html", "broken-png", "empty", "too-large"],
)
def test_upload_limits(client, data, status, says):
    response = client.post("/api/search/image", files={"image": ("mine.png", data, "image/png")})
    assert response.status_code == status, response.text
    assert says in response.json()["detail"]


def test_oversized_upload_is_refused_before_it_is_read(client):
    big = {"image": ("big.jpg", b"\0" * (MAX_UPLOAD_BYTES + 128 * 1024), "image/jpeg")}
    assert client.post("/api/search/image", files=big).status_code == 413

    def chunks():  # no Content-Length: the limit applies while the body streams in
        for _ in range(22):
            yield b"\0" * (1024 * 1024)

    response = client.post(
        "/api/search/image",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=x"},
    )
    assert response.status_code == 413


def test_upload_needs_a_file(client):
    assert client.post("/api/search/image").status_code == 422


# --- serving images -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "/api/images/..%2f..%2fetc%2fpasswd",
        "/api/images/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "/api/images/%2e%2e/%2e%2e/etc/passwd",
        "/api/images/%2Fetc%2Fpasswd",
        "/api/images//etc/passwd",
        "/api/images/etc/passwd/file",
        "/api/images/1/..%2f..%2f..%2fetc%2fpasswd",
        "/api/images/1%2f..%2f..%2fetc%2fpasswd/file",
        "/api/images/abc",
        "/api/images/abc/thumb",
        "/api/images/-1/file",
        "/api/images/1.5/thumb",
        "/api/images/0x1/file",
        "/api/images/99999999999999999999999/file",
        "/api/images/999999/thumb",
        "/static/..%2fapp.py",
        "/static/%2e%2e/app.py",
        "/static/%2e%2e%2f%2e%2e%2fcatalog.py",
        "/static//etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/etc/passwd",
    ],
)
def test_no_path_from_a_request_reaches_the_file_system(client, url):
    response = client.get(url)
    assert response.status_code == 404, response.text
    assert "root:" not in response.text and "import" not in response.text


def test_image_record(client, index):
    red = id_of(index, "red_circle.png")
    record = client.get(f"/api/images/{red}").json()
    assert record["id"] == red and record["path"].endswith("red_circle.png")
    assert record["similar_url"] == f"/api/images/{red}/similar"


def test_thumbnails_are_upright_small_cached_and_revalidated(client, index):
    image_id = id_of(index, "rotated.jpg")
    first = client.get(f"/api/images/{image_id}/thumb")
    assert first.status_code == 200
    assert first.headers["content-type"] == "image/webp"
    assert "max-age" in first.headers["cache-control"]
    etag = first.headers["etag"]
    thumb = Image.open(io.BytesIO(first.content))
    assert thumb.size == (85, 256)  # EXIF-rotated to portrait, longest side 256
    cached = list((index.path / "thumbs").rglob("*.webp"))
    assert any(f.read_bytes() == first.content for f in cached)

    again = client.get(f"/api/images/{image_id}/thumb", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b"" and again.headers["etag"] == etag
    listed = client.get(f"/api/images/{image_id}/thumb", headers={"If-None-Match": f'"x", {etag}'})
    assert listed.status_code == 304
    stale = client.get(f"/api/images/{image_id}/thumb", headers={"If-None-Match": '"old"'})
    assert stale.status_code == 200 and stale.content == first.content


def test_thumbnails_come_from_the_cache(client, index):
    image_id = id_of(index, "green_square.png")
    first = client.get(f"/api/images/{image_id}/thumb").content
    cached = index.path / "thumbs"
    (target,) = [f for f in cached.rglob("*.webp") if f.read_bytes() == first]
    target.write_bytes(b"cached bytes")
    assert client.get(f"/api/images/{image_id}/thumb").content == b"cached bytes"
    target.unlink()


def test_full_image_by_id(client, index):
    image_id = id_of(index, "yellow_triangle.png")
    path = Path(index.catalog.images([image_id])[image_id].path)
    response = client.get(f"/api/images/{image_id}/file")
    assert response.status_code == 200 and response.content == path.read_bytes()
    assert response.headers["content-type"] == "image/png"
    again = client.get(
        f"/api/images/{image_id}/file", headers={"If-None-Match": response.headers["etag"]}
    )
    assert again.status_code == 304


def test_formats_browsers_cannot_show_are_sent_as_jpeg(client, index):
    response = client.get(f"/api/images/{id_of(index, 'scan.tif')}/file")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"


def test_an_indexed_file_gone_from_disk_is_404_not_500(client, index):
    image_id = id_of(index, "gone.png")
    for part in ("thumb", "file"):
        response = client.get(f"/api/images/{image_id}/{part}")
        assert response.status_code == 404
        assert f"image {image_id}" in response.json()["detail"]


# --- the server around the index ------------------------------------------------------------


def test_other_host_names_are_refused(index):
    local = TestClient(create_app(index), base_url="http://127.0.0.1")
    assert local.get("/api/info", headers={"host": "localhost:8765"}).status_code == 200
    assert local.get("/api/info", headers={"host": "[::1]:8765"}).status_code == 200
    rebound = local.get("/api/info", headers={"host": "attacker.example:8765"})
    assert rebound.status_code == 421 and "--host" in rebound.json()["detail"]
    anyone = TestClient(create_app(index, allowed_hosts=None), base_url="http://photos.lan")
    assert anyone.get("/api/info").status_code == 200


def test_sees_images_committed_by_a_concurrent_indexer(tmp_path, tiny_model):
    draw_image(tmp_path / "one" / "a.png", "red", "circle")
    with ImageIndex.create(tmp_path / "index", model=tiny_model) as writer:
        writer.add([tmp_path / "one"])
        with TestClient(create_app(tmp_path / "index"), base_url="http://127.0.0.1") as client:
            assert client.get("/api/search", params={"q": "x"}).json()["count"] == 1
            draw_image(tmp_path / "two" / "b.png", "blue", "square")
            writer.add([tmp_path / "one", tmp_path / "two"])
            assert client.get("/api/search", params={"q": "x"}).json()["count"] == 2
            assert client.get("/api/info").json()["count"] == 2


def test_empty_index_says_so(tmp_path, tiny_model):
    ImageIndex.create(tmp_path / "index", model=tiny_model).close()
    with TestClient(create_app(tmp_path / "index"), base_url="http://127.0.0.1") as client:
        response = client.get("/api/search", params={"q": "x"})
    assert response.status_code == 400 and "is empty" in response.json()["detail"]


def test_serve_needs_an_index(tmp_path):
    result = CliRunner().invoke(main, ["--index", str(tmp_path / "none"), "serve"])
    assert result.exit_code == 1
    assert "no index at" in result.output


def test_serve_without_the_web_extra_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails
    result = CliRunner().invoke(main, ["--index", str(tmp_path), "serve"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1
    assert "uvicorn" in result.output and "pip install 'clipsearch[web]'" in result.output


def test_file_names_that_are_not_utf8_are_shown_not_a_500(tmp_path, tiny_model):
    # Linux allows any bytes in a name; os.fsdecode keeps the undecodable ones as surrogates,
    # which JSON cannot carry. The API shows them as U+FFFD and still serves the file by id.
    folder = tmp_path / os.fsdecode(b"f\xeate")
    draw_image(folder / os.fsdecode(b"caf\xe9.png"), "red", "circle")
    (folder / os.fsdecode(b"bro\xffken.jpg")).write_bytes(b"\xff\xd8 not really a JPEG")
    with ImageIndex.create(tmp_path / "index", model=tiny_model) as ix:
        ix.add([folder])
    with TestClient(create_app(tmp_path / "index"), base_url="http://127.0.0.1") as client:
        hits = client.get("/api/search", params={"q": "a red circle"})
        assert hits.status_code == 200, hits.text
        (hit,) = hits.json()["results"]
        assert hit["path"].endswith("f\ufffdte/caf\ufffd.png")
        record = client.get(f"/api/images/{hit['id']}")
        assert record.status_code == 200 and record.json()["path"] == hit["path"]
        served = client.get(hit["image_url"])
        assert served.status_code == 200
        assert served.content == (folder / os.fsdecode(b"caf\xe9.png")).read_bytes()
        assert client.get(hit["thumb_url"]).status_code == 200
        errors = client.get("/api/errors")
        assert errors.status_code == 200, errors.text
        assert [e["path"].rsplit("/", 1)[-1] for e in errors.json()] == ["bro\ufffdken.jpg"]
        info = client.get("/api/info")
        assert info.status_code == 200, info.text
        assert info.json()["roots"][0].endswith("f\ufffdte")
