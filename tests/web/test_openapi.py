"""The API describes itself truthfully: every documented example, sent to a server over a small
real index, gets the documented status and a body that matches the documented schema; requests
that break a documented constraint get the documented status, and requests that keep them all
are never refused; /docs is served from installed files and loads nothing from elsewhere."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from clipsearch import ImageIndex
from clipsearch.web import create_app
from clipsearch.web.access import Access
from clipsearch.web.openapi import swagger_dir
from tests.helpers import draw_image

STYLES = ("photo", "sketch")


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_model) -> Iterator[ImageIndex]:
    tmp = tmp_path_factory.mktemp("openapi")
    for color in ["red", "green", "blue"]:
        for shape in ["circle", "square"]:
            draw_image(tmp / "photos" / f"{color}_{shape}.png", color, shape)
    ix = ImageIndex.create(tmp / "index", model=tiny_model)
    ix.add([tmp / "photos"])
    ids = sorted(int(i) for i in ix.catalog.ids())
    assert ids[0] == 1  # the examples name image 1
    ix.catalog.set_styles([(i, STYLES[n % 2], 0.9) for n, i in enumerate(ids)])
    yield ix
    ix.close()


@pytest.fixture(scope="module", params=["loopback", "lan"])
def client(index, request) -> TestClient:
    """The API as served on this machine, and on a home network: behind a token, with limits
    of its own (--max-k, --max-upload), sent by a client that has the token."""
    if request.param == "loopback":
        return TestClient(create_app(index), base_url="http://127.0.0.1")
    access = Access(token="s3cret", read_only=True, max_k=50, max_upload=64 * 1024)
    app = create_app(index, access=access, allowed_hosts=None)
    headers = {"Authorization": "Bearer s3cret"}
    return TestClient(app, base_url="http://photos.lan", headers=headers)


@pytest.fixture(scope="module")
def schema(client) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


@dataclass
class Call:
    """One request built from an operation's documented examples."""

    method: str
    path: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)
    body: dict[str, Any] | None = None  # a multipart body example
    status: int = 200


def operations(schema: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            yield method, path, operation


def documented_calls(schema: dict[str, Any]) -> Iterator[Call]:
    """For each operation, one call per example name: the parameters (and body) that have an
    example of that name; an operation without examples is called once as it is."""
    for method, path, operation in operations(schema):
        params = operation.get("parameters", [])
        body = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data")
        body_examples = (body or {}).get("examples", {})
        names = {n for p in params for n in p.get("examples", {})} | set(body_examples)
        for name in sorted(names) or [""]:
            call = Call(method, path, name)
            for param in params:
                ex = param.get("examples", {}).get(name)
                if ex is not None:
                    call.params[param["name"]] = ex["value"]
                    call.status = ex.get("x-response-status", call.status)
            if body is not None:
                ex = body_examples.get(name) or next(iter(body_examples.values()))
                call.body = ex
                call.status = ex.get("x-response-status", call.status)
            yield call


def png_bytes(tmp: Path) -> bytes:
    draw_image(tmp / "upload.png", "blue", "square")
    return (tmp / "upload.png").read_bytes()


def send(client: TestClient, call: Call, image: bytes):
    query = {k: v for k, v in call.params.items() if f"{{{k}}}" not in call.path}
    url = call.path.format(**{k: v for k, v in call.params.items() if f"{{{k}}}" in call.path})
    if call.body is None:
        return client.request(call.method, url, params=query)
    content = image if "x-file" in call.body else call.body["value"]["image"].encode()
    files = {"image": ("upload.png", content, call.body.get("x-file", "image/png"))}
    return client.request(call.method, url, params=query, files=files)


def check_against_schema(schema: dict[str, Any], operation: dict[str, Any], response) -> None:
    """The status is documented for the operation, and the body matches its schema."""
    status = str(response.status_code)
    assert status in operation["responses"], (status, response.text)
    content = operation["responses"][status].get("content", {})
    kind = response.headers.get("content-type", "").split(";")[0]
    if kind == "application/json":
        body_schema = content["application/json"]["schema"]
        validator = Draft202012Validator({**body_schema, "components": schema["components"]})
        errors = [e.message for e in validator.iter_errors(response.json())]
        assert errors == [], (status, errors)
    else:
        documented = [re.escape(k).replace(r"\*", ".*") for k in content]
        assert any(re.fullmatch(d, kind) for d in documented), (kind, list(content))


def operation_of(schema: dict[str, Any], call: Call) -> dict[str, Any]:
    return schema["paths"][call.path][call.method]


# --- the documented examples ----------------------------------------------------------------


def test_every_documented_example_gets_its_documented_answer(client, schema, tmp_path):
    calls = list(documented_calls(schema))
    image = png_bytes(tmp_path)
    seen = set()
    for call in calls:
        response = send(client, call, image)
        assert response.status_code == call.status, (call, response.text)
        check_against_schema(schema, operation_of(schema, call), response)
        seen.add((call.path, call.status))
    # Every operation is exercised, and so are the documented 400s and 404s.
    assert {p for p, _ in seen} == set(schema["paths"])
    assert ("/api/search", 400) in seen and ("/api/search/image", 400) in seen
    assert ("/api/images/{image_id}/similar", 404) in seen
    assert len(calls) >= 20


def test_every_operation_documents_its_errors_with_the_shared_model(schema):
    for _, path, operation in operations(schema):
        if not operation.get("parameters") and "requestBody" not in operation:
            continue  # nothing a client sends can be wrong
        errors = {s: r for s, r in operation["responses"].items() if s.startswith("4")}
        queried = any(p["in"] == "query" for p in operation.get("parameters", []))
        assert ("422" in errors) == queried, path  # an id in a path matches or is a 404
        assert errors, path
        for status, response in errors.items():
            examples = response["content"]["application/json"]["examples"]
            assert examples, (path, status)
            if status != "422":
                ref = response["content"]["application/json"]["schema"]["$ref"]
                assert ref == "#/components/schemas/Problem", (path, status)


def test_documented_response_examples_match_their_schemas(schema):
    checked = 0
    for _, path, operation in operations(schema):
        for status, response in operation["responses"].items():
            media = response.get("content", {}).get("application/json", {})
            for name, ex in media.get("examples", {}).items():
                validator = Draft202012Validator(
                    {**media["schema"], "components": schema["components"]}
                )
                errors = [e.message for e in validator.iter_errors(ex["value"])]
                assert errors == [], (path, status, name, errors)
                checked += 1
    assert checked >= 10


def test_every_json_answer_has_an_example(schema):
    for _, path, operation in operations(schema):
        for status, response in operation["responses"].items():
            media = response.get("content", {}).get("application/json")
            if media is not None:
                assert media.get("examples"), (path, status)


def test_request_examples_match_their_parameter_schemas(schema):
    for _, path, operation in operations(schema):
        for param in operation.get("parameters", []):
            validator = Draft202012Validator({**param["schema"]})
            for name, ex in param.get("examples", {}).items():
                assert list(validator.iter_errors(ex["value"])) == [], (path, param["name"], name)


# --- constraints ----------------------------------------------------------------------------


def valid_call(schema: dict[str, Any], path: str, method: str) -> Call:
    return next(
        c
        for c in documented_calls(schema)
        if (c.path, c.method) == (path, method) and c.status == 200
    )


def bounds(param_schema: dict[str, Any]) -> Iterator[tuple[Any, bool]]:
    """Values at and just past each limit the schema states, and whether each is allowed."""
    options = param_schema.get("anyOf", [param_schema])
    for s in options:
        if "minimum" in s:
            yield s["minimum"], True
            yield s["minimum"] - 1, False
        if "maximum" in s:
            yield s["maximum"], True
            yield s["maximum"] + 1, False
        if "maxLength" in s:
            yield "x" * s["maxLength"], True
            yield "x" * (s["maxLength"] + 1), False
        if "maxItems" in s:
            yield ["x"] * (s["maxItems"] + 1), False


def test_values_past_a_documented_limit_are_refused_and_values_within_are_not(
    client, schema, tmp_path
):
    image = png_bytes(tmp_path)
    tried = 0
    for method, path, operation in operations(schema):
        for param in operation.get("parameters", []):
            for value, allowed in bounds(param["schema"]):
                call = valid_call(schema, path, method)
                call.params[param["name"]] = value
                response = send(client, call, image)
                tried += 1
                if allowed:
                    # the schema lets it through; a refusal for what the schema cannot say (a
                    # prefix outside the indexed folders) must be one the operation documents
                    status = response.status_code
                    assert status != 422, (path, param["name"], response.text)
                    assert status == 200 or str(status) in operation["responses"], (path, status)
                else:
                    assert response.status_code == 422, (path, param["name"], response.text)
                    locs = [e["loc"][-1] for e in response.json()["detail"]]
                    assert param["name"] in locs
                check_against_schema(schema, operation, response)
    assert tried >= 30


def test_the_upload_size_limits_are_documented_and_kept(client, schema, tmp_path):
    operation = schema["paths"]["/api/search/image"]["post"]
    ref = operation["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    image_schema = schema["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]["image"]
    statuses = {c["keyword"]: c["status"] for c in operation["x-clipsearch-constraints"]}
    sizes = {
        "minLength": image_schema["minLength"] - 1,
        "maxLength": image_schema["maxLength"] + 1,
    }
    for keyword, size in sizes.items():
        files = {"image": ("mine.png", b"\0" * size, "image/png")}
        response = client.post("/api/search/image", files=files)
        assert response.status_code == statuses[keyword], (keyword, response.text)
        assert str(response.status_code) in operation["responses"]
        check_against_schema(schema, operation, response)
    assert image_schema["minLength"] == 1


TERMS = st.sampled_from(["a red circle", "blue", "0.5:square", "@1", "2:@2", " ", ""])


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    q=st.none() | TERMS,
    plus=st.lists(TERMS, max_size=2),
    minus=st.lists(st.sampled_from(["snow", "a green triangle"]), max_size=2),
)
def test_q_or_plus_is_required_as_documented(client, schema, q, plus, minus):
    operation = schema["paths"]["/api/search"]["get"]
    (rule,) = operation["x-clipsearch-constraints"]
    # The rule is over the parameters that hold a term; an empty q is no q, and a blank term
    # (spaces) is a malformed one: 400 too, as documented.
    given_params = {"q": q} if q else {}
    if any(t.strip() for t in plus):
        given_params["plus"] = plus
    keeps_rule = Draft202012Validator(rule["schema"]).is_valid(given_params)
    blank = [t for t in [q or None, *plus] if t is not None and not t.strip()]
    params = {"q": q, "plus": plus, "minus": minus}
    response = client.get("/api/search", params={k: v for k, v in params.items() if v is not None})
    if keeps_rule and not blank:
        assert response.status_code == 200, (params, response.text)
    else:
        assert response.status_code == rule["status"], (params, response.text)
    check_against_schema(schema, operation, response)


# --- /docs ----------------------------------------------------------------------------------

URL = re.compile(r"""(?:src|href)=["']([^"']+)["']""")


def test_docs_page_is_served_from_installed_files_and_loads_nothing_from_elsewhere(client):
    assert swagger_dir() is not None, "fastapi-offline is in the web extra"
    page = client.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert not re.search(r"https?://", page.text)
    assert "<script>" not in page.text  # no inline script: the CSP would refuse it
    assets = [u for u in URL.findall(page.text) if not u.startswith("data:")]
    assert any(u.endswith("swagger-ui-bundle.js") for u in assets)
    for asset in assets:
        response = client.get(f"/{asset}")
        assert response.status_code == 200, asset
        assert len(response.content) > 100
    start = client.get("/static/docs.js").text
    assert "openapi.json" in start and not re.search(r"https?://", start)
