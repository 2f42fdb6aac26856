"""Serving on a home network: the token guards every route but the login page, the cookie
flow drops it from the address, tokens are compared in constant time, a read-only server
refuses writes, --max-k and --max-upload hold, and the rate limits hold per client address."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from starlette.routing import Mount, Route

from clipsearch import ImageIndex
from clipsearch.cli.main import main
from clipsearch.errors import ClipsearchError
from clipsearch.web import auth, create_app, ratelimit, server
from clipsearch.web.access import MAX_K, Access
from clipsearch.web.app import READ_POSTS
from clipsearch.web.ratelimit import Buckets, Rate, RateLimits
from tests.helpers import draw_image

TOKEN = "s3cret-t0ken"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
LAN = "http://192.168.1.20:8765"


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_model) -> Iterator[ImageIndex]:
    tmp = tmp_path_factory.mktemp("lan")
    for color in ["red", "green", "blue"]:
        for shape in ["circle", "square"]:
            draw_image(tmp / "photos" / f"{color}_{shape}.png", color, shape)
    ix = ImageIndex.create(tmp / "index", model=tiny_model)
    ix.add([tmp / "photos"])
    yield ix
    ix.close()


def lan_client(index: ImageIndex, access: Access, address: str = "192.168.1.31") -> TestClient:
    app = create_app(index, access=access, allowed_hosts=None)
    return TestClient(app, base_url=LAN, client=(address, 50000), follow_redirects=False)


def png(index: ImageIndex) -> bytes:
    """The bytes of an indexed picture, the red circle, to upload."""
    return (index.path.parent / "photos" / "red_circle.png").read_bytes()


def every_request(app) -> Iterator[tuple[str, str]]:
    """(method, url) for every route of the app: the API's operations (from its schema) with
    an id filled in, and the routes left out of the schema: the page, the schema itself,
    /docs, and a file of each static mount."""
    for path, item in app.openapi()["paths"].items():
        for method in item:
            yield method.upper(), path.replace("{image_id}", "1")
    for route in app.routes:
        if isinstance(route, Mount):
            name = "app.js" if route.path == "/static" else "swagger-ui.css"
            yield "GET", f"{route.path}/{name}"
        elif isinstance(route, Route) and not route.include_in_schema:
            for method in sorted(route.methods - {"HEAD"}):
                yield method, route.path
    yield "GET", "/openapi.json"


# --- the token ------------------------------------------------------------------------------


def test_every_route_refuses_without_the_token_and_says_not_why(index):
    client = lan_client(index, Access(token=TOKEN))
    requests = list(every_request(client.app))
    assert ("GET", "/api/search") in requests and ("POST", "/api/search/image") in requests
    assert len(requests) >= 12
    shown = {
        "none": {},
        "wrong bearer": {"Authorization": "Bearer nope"},
        "wrong cookie": {"Cookie": "clipsearch_token_8765=nope"},
        "a prefix": {"Authorization": f"Bearer {TOKEN[:-1]}"},
        "basic": {"Authorization": f"Basic {TOKEN}"},
    }
    for method, url in requests:
        bodies = set()
        for how, headers in [*shown.items(), ("wrong query", {})]:
            params = {"token": "nope"} if how == "wrong query" else {}
            response = client.request(method, url, headers=headers, params=params)
            assert response.status_code == 401, (method, url, how, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            bodies.add(response.content)
        assert len(bodies) == 1, (method, url)  # a wrong token is not told from a missing one
        if url.startswith("/api/") or url == "/openapi.json":
            assert "token" in response.json()["detail"]
        else:  # a browser gets the login page, which shows nothing of the index
            assert response.headers["content-type"].startswith("text/html")
            assert 'name="token"' in response.text and str(index.path) not in response.text


def test_the_page_and_the_api_work_with_the_token(index):
    client = lan_client(index, Access(token=TOKEN))
    assert client.get("/api/info", headers=BEARER).json()["count"] == 6
    hits = client.get("/api/search", params={"q": "a red circle"}, headers=BEARER).json()
    assert hits["count"] == 6
    upload = {"image": ("mine.png", png(index), "image/png")}
    found = client.post("/api/search/image", files=upload, headers=BEARER)
    assert found.status_code == 200 and found.json()["results"][0]["path"].endswith(
        "red_circle.png"
    )
    thumb = client.get(hits["results"][0]["thumb_url"], headers=BEARER)
    assert thumb.status_code == 200 and thumb.headers["content-type"].startswith("image/")


def test_the_address_with_the_token_sets_a_strict_cookie_and_drops_the_token(index):
    client = lan_client(index, Access(token=TOKEN))
    opened = client.get("/", params={"token": TOKEN})
    assert opened.status_code == 303 and opened.headers["location"] == "/"
    assert opened.headers["cache-control"] == "no-store"
    cookie = opened.headers["set-cookie"]
    assert cookie.startswith(f"clipsearch_token_8765={TOKEN};")
    attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
    assert {"httponly", "path", "samesite"} <= attributes and "SameSite=Strict" in cookie
    # an API request with the token in its address is answered as it is
    assert client.get("/api/info", params={"token": TOKEN}).status_code == 200
    assert "set-cookie" not in client.get("/api/info", params={"token": TOKEN}).headers
    # other parameters stay in the address; only the token leaves it
    kept = client.get("/docs", params={"token": TOKEN, "x": "1"})
    assert kept.headers["location"] == "/docs?x=1"
    # the browser now sends the cookie: the page, its script and the API answer
    assert client.cookies.get("clipsearch_token_8765") == TOKEN
    page = client.get("/")
    assert page.status_code == 200 and "static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/api/search", params={"q": "blue"}).status_code == 200
    # the cookie of another port (another server on this host) is not this one's
    client.cookies.clear()
    client.cookies.set("clipsearch_token_9999", TOKEN)
    assert client.get("/api/info").status_code == 401


def test_tokens_are_compared_by_the_standard_constant_time_function(index, monkeypatch):
    calls = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    client = lan_client(index, Access(token=TOKEN))
    assert client.get("/api/info", headers={"Authorization": "Bearer guess"}).status_code == 401
    assert client.get("/api/info", headers=BEARER).status_code == 200
    assert calls == [(b"guess", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]
    # and its answer alone decides: a guess it accepted would get in
    monkeypatch.setattr(auth.hmac, "compare_digest", lambda a, b: True)
    assert client.get("/api/info", headers={"Authorization": "Bearer guess"}).status_code == 200


def test_the_host_check_still_holds_against_dns_rebinding(index):
    local = create_app(index, access=Access(token=TOKEN))  # loopback, with --token
    client = TestClient(local, base_url="http://127.0.0.1")
    assert client.get("/api/info", headers=BEARER).status_code == 200
    rebound = client.get("/api/info", headers={**BEARER, "host": "attacker.example:8765"})
    assert rebound.status_code == 421
    # off loopback any name is answered, but a rebound page has no token: the cookie belongs
    # to the server's own address, and is never sent from another site's page (Strict)
    lan = lan_client(index, Access(token=TOKEN))
    assert lan.get("/api/info", headers={"host": "attacker.example:8765"}).status_code == 401


def test_loopback_needs_no_token_unless_one_is_given(index):
    assert Access.for_host("127.0.0.1") == Access()
    client = TestClient(create_app(index, access=Access.for_host("127.0.0.1")))
    assert client.get("/api/info", headers={"host": "127.0.0.1"}).status_code == 200
    given = Access.for_host("localhost", token=TOKEN)
    assert given.token == TOKEN and not given.read_only and not given.token_generated
    assert given.rate_limits == RateLimits(search=None, upload=None)  # wrong tokens only


def test_a_server_others_can_reach_gets_a_token_read_only_and_rate_limits():
    one, two = Access.for_host("0.0.0.0"), Access.for_host("0.0.0.0")
    assert one.token and len(one.token) >= 40 and one.token != two.token
    assert one.token_generated and one.read_only and one.rate_limits == RateLimits()
    assert one.url("http://192.168.1.20:8765/") == f"http://192.168.1.20:8765/?token={one.token}"
    mine = Access.for_host("192.168.1.20", token=TOKEN, read_only=False, max_k=20)
    assert (mine.token, mine.read_only, mine.max_k, mine.token_generated) == (
        TOKEN,
        False,
        20,
        False,
    )
    with pytest.raises(ClipsearchError, match="empty"):
        Access.for_host("0.0.0.0", token=" ")


# --- read-only ------------------------------------------------------------------------------


def files_of(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "thumbs" not in p.relative_to(folder).parts
    }


def test_a_read_only_server_refuses_writes_and_writes_nothing_but_thumbnails(index):
    app = create_app(index, access=Access(read_only=True), allowed_hosts=None)

    # a route that would change the index, as a later version might add
    def relabel() -> dict[str, str]:
        return {"done": "relabelled"}

    app.router.add_api_route("/api/styles/relabel", relabel, methods=["POST"])
    client = TestClient(app, base_url=LAN)
    before = files_of(index.path)
    refused = client.post("/api/styles/relabel")
    assert refused.status_code == 403 and "read-only" in refused.json()["detail"]
    for method in ("PUT", "PATCH", "DELETE"):
        assert client.request(method, "/api/images/1").status_code == 403
    # the routes that only read still work, uploads to search by included
    assert client.get("/api/search", params={"q": "red"}).status_code == 200
    upload = {"image": ("mine.png", png(index), "image/png")}
    assert client.post("/api/search/image", files=upload).status_code == 200
    assert client.get("/api/images/1/thumb").status_code == 200
    assert client.get("/api/duplicates").status_code == 200
    assert files_of(index.path) == before
    assert any((index.path / "thumbs").rglob("*.webp")) or any(
        (index.path / "thumbs").rglob("*.jpg")
    )
    # every route that is not a GET is one named as a read
    posts = {m_u for m_u in every_request(create_app(index)) if m_u[0] != "GET"}
    assert posts == {("POST", p) for p in READ_POSTS}
    # the same route on a server that is not read-only runs
    writable = create_app(index, allowed_hosts=None)
    writable.router.add_api_route("/api/styles/relabel", relabel, methods=["POST"])
    assert TestClient(writable, base_url=LAN).post("/api/styles/relabel").status_code == 200


def test_a_read_only_server_cannot_watch_folders(index, tmp_path):
    with pytest.raises(ClipsearchError, match="read-only"):
        create_app(index, access=Access(read_only=True), watcher=object())  # type: ignore[arg-type]
    result = CliRunner().invoke(
        main, ["--index", str(index.path), "serve", "--host", "0.0.0.0", "--watch", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--no-read-only" in result.output


# --- limits ---------------------------------------------------------------------------------


def test_max_k_and_max_upload_override_the_limits(index):
    client = lan_client(index, Access(max_k=3, max_upload=2000))
    assert client.get("/api/search", params={"q": "red", "k": 3}).json()["count"] == 3
    over = client.get("/api/search", params={"q": "red", "k": 4})
    assert over.status_code == 422
    assert (
        over.json()["detail"][0]["loc"] == ["query", "k"] and "3" in over.json()["detail"][0]["msg"]
    )
    assert client.get("/api/images/1/similar", params={"k": 4}).status_code == 422
    info = client.get("/api/info").json()["limits"]
    assert (info["max_k"], info["max_upload_bytes"]) == (3, 2000)
    # without k, the default (24) is cut to the limit, as the schema says
    assert client.get("/api/images/1/similar").json()["count"] == 3
    schema = client.get("/openapi.json").json()
    k = next(p for p in schema["paths"]["/api/search"]["get"]["parameters"] if p["name"] == "k")
    assert (k["schema"]["maximum"], k["schema"]["default"]) == (3, 3)
    big = client.post("/api/search/image", files={"image": ("a.png", b"\0" * 2001, "image/png")})
    assert big.status_code == 413 and "2000 bytes" in big.json()["detail"]
    more = lan_client(index, Access(max_k=500))
    assert more.get("/api/search", params={"q": "red", "k": 400}).status_code == 200
    assert MAX_K == 200 and Access().max_k == MAX_K


# --- rate limits ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_bucket_refills_at_its_rate_up_to_its_burst():
    clock = Clock()
    buckets = Buckets(Rate(per_second=2.0, burst=3), clock=clock, max_keys=2)
    assert [buckets.take("a") for _ in range(3)] == [0, 0, 0]
    assert buckets.take("a") == pytest.approx(0.5)  # empty: half a second to the next token
    assert buckets.take("b") == 0  # another key has its own bucket
    clock.now += 0.5
    assert buckets.take("a") == 0 and buckets.take("a") > 0
    clock.now += 100  # refilled, but never past the burst
    assert [buckets.take("a") for _ in range(4)][-1] > 0
    buckets.take("c")  # a third key: the least recently used one ("b") is dropped
    assert set(buckets._buckets) == {"a", "c"}


def test_wrong_tokens_are_rate_limited_per_address(index):
    limits = RateLimits(failed_token=Rate(0.001, 3), tarpit=0.0)
    access = Access(token=TOKEN, rate_limits=limits)
    app = create_app(index, access=access, allowed_hosts=None)
    guesser = TestClient(app, base_url=LAN, client=("192.168.1.66", 1))
    wrong = {"Authorization": "Bearer guess"}
    assert [guesser.get("/api/info", headers=wrong).status_code for _ in range(3)] == [401] * 3
    refused = guesser.get("/api/info", headers=wrong)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 60
    assert "too many wrong tokens" in refused.json()["detail"]
    # once out of guesses, even the right token is not compared
    assert guesser.get("/api/info", headers=BEARER).status_code == 429
    # no token at all is no guess, and another address is not held back
    assert guesser.get("/api/info").status_code == 401
    other = TestClient(app, base_url=LAN, client=("192.168.1.20", 1))
    assert other.get("/api/info", headers=BEARER).status_code == 200


def test_searches_and_uploads_are_rate_limited_per_address(index, monkeypatch):
    pauses: list[float] = []

    async def pause(seconds: float) -> None:  # the tarpit, recorded instead of waited
        pauses.append(seconds)

    monkeypatch.setattr(ratelimit.asyncio, "sleep", pause)
    limits = RateLimits(search=Rate(0.001, 3), upload=Rate(0.001, 2))
    app = create_app(index, access=Access(rate_limits=limits), allowed_hosts=None)
    flood = TestClient(app, base_url=LAN, client=("192.168.1.66", 1))
    searches = [
        ("/api/search", {"q": "red"}),
        ("/api/images/1/similar", {}),
        ("/api/duplicates", {}),
    ]
    assert [flood.get(u, params=p).status_code for u, p in searches] == [200] * 3
    refused = flood.get("/api/search", params={"q": "red"})
    assert refused.status_code == 429 and "too many searches" in refused.json()["detail"]
    assert int(refused.headers["retry-after"]) >= 1
    assert pauses == [limits.tarpit]  # the 429 waited before it was sent
    upload = {"image": ("mine.png", png(index), "image/png")}
    assert [flood.post("/api/search/image", files=upload).status_code for _ in range(3)] == [
        200,
        200,
        429,
    ]
    # thumbnails, files and the page are not searches
    assert flood.get("/api/images/1/thumb").status_code == 200
    assert flood.get("/api/info").status_code == 200
    other = TestClient(app, base_url=LAN, client=("192.168.1.20", 1))
    assert other.get("/api/search", params={"q": "red"}).status_code == 200
    schema = other.get("/openapi.json").json()
    assert "429" in schema["paths"]["/api/search"]["get"]["responses"]
    assert "429" not in schema["paths"]["/api/images/{image_id}/thumb"]["get"]["responses"]


# --- the command ----------------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch) -> list[object]:
    """`serve` up to the point where it would run: the app it made, instead of running it."""
    apps: list[object] = []
    monkeypatch.setattr(server, "run", lambda app, sock: (apps.append(app), sock.close()))
    return apps


def test_serve_on_the_network_prints_the_address_with_a_new_token(index, served):
    args = ["--index", str(index.path), "serve", "--host", "0.0.0.0", "--port", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    urls = re.findall(r"(http://\S+/)\?token=(\S+)", result.output)
    assert urls and all(token == urls[0][1] for _, token in urls)
    assert "read-only" in result.output and "no TLS" in result.output
    client = TestClient(served[0], base_url=LAN)
    assert client.get("/api/info").status_code == 401
    auth_header = {"Authorization": f"Bearer {urls[0][1]}"}
    assert client.get("/api/info", headers=auth_header).status_code == 200
    assert client.post("/api/anything", headers=auth_header).status_code == 403  # read-only


def test_serve_takes_the_token_from_the_environment_and_does_not_print_it(index, served):
    args = ["--index", str(index.path), "serve", "--host", "0.0.0.0", "--port", "0"]
    env = {"CLIPSEARCH_TOKEN": TOKEN}
    result = CliRunner().invoke(main, [*args, "--no-read-only", "--max-k", "7"], env=env)
    assert result.exit_code == 0, result.output
    assert TOKEN not in result.output and "CLIPSEARCH_TOKEN" in result.output
    client = TestClient(served[0], base_url=LAN, headers=BEARER)
    assert client.get("/api/info").json()["limits"]["max_k"] == 7
    assert client.post("/api/anything").status_code == 404  # not read-only: no such route


def test_serve_on_loopback_has_no_token_unless_given(index, served):
    args = ["--index", str(index.path), "serve", "--port", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "token" not in result.output
    assert TestClient(served[0], base_url="http://127.0.0.1").get("/api/info").status_code == 200
    result = CliRunner().invoke(main, [*args, "--token", TOKEN, "--max-upload", "0.5"])
    assert result.exit_code == 0 and TOKEN not in result.output
    client = TestClient(served[1], base_url="http://127.0.0.1")
    assert client.get("/api/info").status_code == 401
    limits = client.get("/api/info", headers=BEARER).json()["limits"]
    assert limits["max_upload_bytes"] == 512 * 1024


def test_the_addresses_printed_for_other_devices(monkeypatch):
    monkeypatch.setattr(server, "_route_address", lambda family: "192.168.1.20")
    monkeypatch.setattr(server.socket, "gethostname", lambda: "localhost")  # loopback only
    sock = server.bind("0.0.0.0", 0)
    try:
        port = sock.getsockname()[1]
        assert server.network_urls(sock) == [f"http://192.168.1.20:{port}/"]
    finally:
        sock.close()
    local = server.bind("127.0.0.1", 0)
    try:
        assert server.network_urls(local) == []
    finally:
        local.close()
