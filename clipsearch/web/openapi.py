"""What the API says about itself: the shared error model, documented examples, and /docs.

Every example of a request is a named ``openapi_examples`` entry on its parameters (and on the
upload's body); the parameters of one operation that share an example's name make one request,
and ``x-response-status`` says what the server answers to it (200 when absent). The image ids in
the examples are those of an index whose first image has id 1. tests/web/test_openapi.py sends
every example and checks each answer against the schema of its status.

Some constraints OpenAPI cannot say of separate query parameters, such as "``q`` or ``plus``";
an operation lists those in ``x-clipsearch-constraints`` (the rule in words, as a JSON Schema
over the query parameters where it is one, and the status a request that breaks it gets), and
its description says the same.

``/docs`` is Swagger UI from the files that the ``fastapi-offline`` package ships (the web
extra), served by this server under /static/swagger-ui/, and started by static/docs.js: the
page loads nothing from elsewhere, under the same Content-Security-Policy as the search page.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from clipsearch.web.access import Access, size_text
from clipsearch.web.auth import COOKIE_PREFIX, QUERY_PARAM, UNAUTHORIZED
from clipsearch.web.ratelimit import kind_of

STATIC_DIR = Path(__file__).parent / "static"
SWAGGER_PATH = "/static/swagger-ui"


class Problem(BaseModel):
    """Every error but a 422 (see HTTPValidationError): one sentence that says what to do."""

    detail: str = Field(description="What was wrong, and what to do about it.")


# --- examples of requests -------------------------------------------------------------------

OK = 200


def example(summary: str, value: Any, status: int = OK) -> dict[str, Any]:
    """An ``openapi_examples`` entry; ``status`` is what the server answers to the request."""
    out: dict[str, Any] = {"summary": summary, "value": value}
    if status != OK:
        out["x-response-status"] = status
    return out


ONE_OF_Q_PLUS = {
    "constraint": "at least one of q and plus holds a term that is not blank",
    "schema": {"anyOf": [{"required": ["q"]}, {"required": ["plus"]}]},
    "status": 400,
}
UPLOAD_SIZE = [
    {"constraint": "the image file is not empty", "keyword": "minLength", "status": 400},
    {"constraint": "the image file is at most 20 MB", "keyword": "maxLength", "status": 413},
]

SEARCH_EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "q": {
        "text": example("A text query", "a dog on the beach"),
        "combined": example("Text, plus an indexed image at half weight, minus text", "a dog"),
        "filtered": example("Only photos that score at least 0.1", "a dog"),
        "unknown style": example("A style no image can have: 400", "a dog", 400),
        "dated": example("Photos of summer 2023 taken near Nice with a Canon", "a dog"),
        "bad date": example("A date that does not parse: 400", "a dog", 400),
    },
    "plus": {
        "combined": example("Add image 1 at half weight", ["0.5:@1"]),
        "plus only": example("Only plus terms: no q needed", ["sunset", "0.5:@1"]),
    },
    "minus": {
        "combined": example("Subtract text", ["snow"]),
        "neither q nor plus": example("Only a minus term: 400, the query is empty", ["snow"], 400),
    },
    "k": {"text": example("Five results", 5), "filtered": example("Up to 50", 50)},
    "min_score": {"filtered": example("Cosine similarity at least 0.1", 0.1)},
    "style": {
        "filtered": example("Photos only", ["photo"]),
        "unknown style": example("A label the index does not know: 400", ["watercolour"], 400),
    },
    "after": {
        "dated": example("From June 2023 on", "2023-06"),
        "bad date": example("Not a date: 400", "last june", 400),
    },
    "before": {"dated": example("Before September 2023", "2023-09")},
    "camera": {"dated": example("A Canon", "canon")},
    "near": {"dated": example("Within 20 km of Nice", "43.70,7.26,20")},
}
UPLOAD_EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "k": {"like": example("Three results", 3), "refined": example("Ten results", 10)},
    "minus": {"refined": example("Less red", ["red"])},
}
# A body example with x-file stands for a real image file of that type; the value of the others
# is the file's content.
UPLOAD_BODY_EXAMPLES: dict[str, dict[str, Any]] = {
    "like": {
        "summary": "A JPEG, PNG, WebP, ... image",
        "value": {"image": "(the image file)"},
        "x-file": "image/png",
    },
    "empty": example("An empty file: 400", {"image": ""}, 400),
    "not an image": example("A text file: 400", {"image": "hello, world"}, 400),
}
IMAGE_ID_EXAMPLES = {
    "indexed": example("An indexed image", 1),
    "unknown": example("No image has this id: 404", 999999, 404),
}
SIMILAR_EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "image_id": {
        **IMAGE_ID_EXAMPLES,
        "filtered": example("Like image 1, photos only", 1),
        "dated": example("Like image 1, taken in 2023", 1),
        "bad place": example("Like image 1, near a place that is not one: 400", 1, 400),
    },
    "k": {"indexed": example("Four results", 4), "filtered": example("Up to 50", 50)},
    "style": {"filtered": example("Photos only", ["photo"])},
    "after": {"dated": example("Taken in 2023 or later", "2023")},
    "before": {"dated": example("Before 2024", "2024")},
    "near": {"bad place": example("A latitude out of range: 400", "95,0")},
}
DUPLICATES_EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "threshold": {
        "default": example("Cosine similarity at least 0.95", 0.95),
        "bursts": example("Looser: bursts and small edits too", 0.9),
    },
    "prefix": {
        "outside": example("A folder outside the indexed ones: 400", "/nowhere/else", 400),
    },
    "limit": {"default": example("At most 100 groups", 100)},
}


# --- responses ------------------------------------------------------------------------------

HIT = {
    "id": 7,
    "path": "/home/me/Pictures/beach/dog.jpg",
    "score": 0.31,
    "style": "photo",
    "style_score": 0.92,
    "width": 4032,
    "height": 3024,
    "taken": "2023-07-14T18:02:11+02:00",
    "taken_source": "exif",
    "camera": "Canon EOS R6",
    "lat": 43.6952,
    "lon": 7.2718,
    "thumb_url": "/api/images/7/thumb",
    "image_url": "/api/images/7/file",
}
RESULTS = {"count": 1, "results": [HIT]}
IMAGE = {
    **{k: v for k, v in HIT.items() if k != "score"},
    "similar_url": "/api/images/7/similar",
}
DUPLICATE_GROUP = {
    "reason": "similar",
    "min_similarity": 0.97,
    "max_similarity": 0.97,
    "members": [
        {
            "id": 7,
            "path": "/home/me/Pictures/beach/dog.jpg",
            "width": 4032,
            "height": 3024,
            "size": 2811342,
            "mtime": 1.7e9,
            "similarity": 1.0,
            "same_content": True,
            "thumb_url": "/api/images/7/thumb",
            "image_url": "/api/images/7/file",
        },
        {
            "id": 8,
            "path": "/home/me/Pictures/beach/dog-edited.jpg",
            "width": 2016,
            "height": 1512,
            "size": 611204,
            "mtime": 1.71e9,
            "similarity": 0.97,
            "same_content": False,
            "thumb_url": "/api/images/8/thumb",
            "image_url": "/api/images/8/file",
        },
    ],
}
DUPLICATES = {"count": 1, "groups": [DUPLICATE_GROUP]}
# FastAPI leaves out null values from the examples in its schema: these show none.
INFO = {
    "path": "/home/me/indexes/photos",
    "count": 1234,
    "model": "ViT-B-32",
    "pretrained": "laion2b_s34b_b79k",
    "weights_sha256": "3a4f0c4bd0e2b7c1f7b0a3e8d9c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8",
    "dim": 512,
    "image_size": 224,
    "index_type": "flat",
    "roots": ["/home/me/Pictures"],
    "errors": 1,
    "schema_version": 3,
    "created": 1.7e9,
    "styles": {"photo": 1100, "sketch": 34},
    "unlabelled": 100,
    "limits": {
        "max_k": 200,
        "max_query_chars": 1000,
        "max_terms": 16,
        "max_upload_bytes": 20971520,
    },
}
FAILED = [{"path": "/home/me/Pictures/broken.jpg", "reason": "cannot decode", "at": 1.7e9}]
VALIDATION = {
    "detail": [
        {
            "type": "less_than_equal",
            "loc": ["query", "k"],
            "msg": "Input should be less than or equal to 200",
            "input": "500",
            "ctx": {"le": 200},
        }
    ]
}


def json_examples(**named: Any) -> dict[str, Any]:
    """The ``content`` of a JSON response with these named example bodies."""
    return {"application/json": {"examples": {n: {"value": v} for n, v in named.items()}}}


def problem(description: str, **named: str) -> dict[str, Any]:
    """An error response: the shared model, and example details by name."""
    examples = {n.replace("_", " "): {"detail": d} for n, d in named.items()}
    return {"model": Problem, "description": description, "content": json_examples(**examples)}


def ok(**named: Any) -> dict[str, Any]:
    return {"description": "Success.", "content": json_examples(**named)}


NO_IMAGE = problem("No image with this id.", unknown_id="no image with id 999999 in this index")
BAD_QUERY = problem(
    "What the schema cannot say: neither q nor plus, a blank or malformed term, an image term "
    "that is not an indexed image's id, terms that cancel out, an unknown style label.",
    empty="the query is empty; give some text or an indexed image (@ID) to search",
    unknown_style="unknown style 'watercolour'; known labels: cartoon, painting, photo, sketch",
    bad_weight="term '0:x': the weight must be a positive finite number (subtract a term "
    "with --minus)",
)
BAD_UPLOAD = problem(
    "An empty file, a file that is not an image, or a query or style as for /api/search.",
    empty="query image mine.png is empty",
    not_an_image="query image mine.png is not an image (a text file)",
)
TOO_LARGE = problem("The upload is larger than 20 MB.", too_large="the upload is larger than 20 MB")
BAD_PREFIX = problem(
    "A prefix outside the indexed folders.",
    outside="prefix /nowhere/else is outside the indexed folders (/home/me/Pictures)",
)
GONE = problem(
    "No image with this id, or its file is gone from disk or broken.",
    unknown_id="no image with id 999999 in this index",
    gone="image 7: the file is no longer on disk",
)


NO_TOKEN = problem(
    "The token is missing or wrong (the same answer either way).", no_token=UNAUTHORIZED
)
RATE_LIMITED = problem(
    "Too many requests of this kind from your address; the Retry-After header says when to "
    "try again.",
    too_many="too many searches from your address; try again in 1 s",
)
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "The token `clipsearch serve` printed, or gave with --token.",
    },
    "cookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": f"{COOKIE_PREFIX}PORT",
        "description": "Set by opening the address with ?token=...; PORT is the server's port.",
    },
    "address": {
        "type": "apiKey",
        "in": "query",
        "name": QUERY_PARAM,
        "description": "The token in the address. A page (not /api/) is redirected (303) to "
        "the same address without it, setting the cookie.",
    },
}


# Request examples by operation ("METHOD /path" as in the schema) and parameter name.
PARAM_EXAMPLES: dict[str, dict[str, dict[str, dict[str, Any]]]] = {
    "get /api/search": SEARCH_EXAMPLES,
    "post /api/search/image": UPLOAD_EXAMPLES,
    "get /api/images/{image_id}": {"image_id": IMAGE_ID_EXAMPLES},
    "get /api/images/{image_id}/similar": SIMILAR_EXAMPLES,
    "get /api/images/{image_id}/thumb": {"image_id": IMAGE_ID_EXAMPLES},
    "get /api/images/{image_id}/file": {"image_id": IMAGE_ID_EXAMPLES},
    "get /api/duplicates": DUPLICATES_EXAMPLES,
}
BODY_EXAMPLES = {"post /api/search/image": UPLOAD_BODY_EXAMPLES}


def add_examples(schema: dict[str, Any]) -> dict[str, Any]:
    """Put the request examples into a generated OpenAPI schema (FastAPI declares a
    parameter's examples with the parameter, but the parameters here are shared by several
    operations, each with examples of its own)."""
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            key = f"{method} {path}"
            by_param = PARAM_EXAMPLES.get(key, {})
            for param in operation.get("parameters", []):
                if param["name"] in by_param:
                    param["examples"] = by_param[param["name"]]
            if key in BODY_EXAMPLES:
                body = operation["requestBody"]["content"]["multipart/form-data"]
                body["examples"] = BODY_EXAMPLES[key]
            _document_422(operation)
    return schema


def _document_422(operation: dict[str, Any]) -> None:
    """FastAPI's 422 (its own body: a list of errors), with an example; none where an
    operation has no parameter that could break its schema (an id in a path is an int or
    matches no route: 404)."""
    responses = operation["responses"]
    if "422" not in responses:
        return
    if not any(p["in"] == "query" for p in operation.get("parameters", [])):
        del responses["422"]
        return
    responses["422"]["description"] = "A parameter breaks its schema: a range, a length, a type."
    responses["422"]["content"]["application/json"]["examples"] = {
        "k too large": {"value": VALIDATION}
    }


# --- /docs ----------------------------------------------------------------------------------


def swagger_dir() -> Path | None:
    """The folder of Swagger UI's files that fastapi-offline ships; None without it."""
    try:
        folder = Path(str(files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        return None
    needed = ("swagger-ui-bundle.js", "swagger-ui.css")
    return folder if all((folder / f).is_file() for f in needed) else None


def describe_access(schema: dict[str, Any], access: Access) -> dict[str, Any]:
    """Make a generated schema say what this server allows: its --max-k and --max-upload,
    its token (the security schemes, and 401 on every operation) and its rate limits (429)."""
    if access.token is not None:
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        schema["security"] = [{name: []} for name in SECURITY_SCHEMES]
    limited = access.rate_limits is not None
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for param in operation.get("parameters", []):
                if param["name"] == "k" and param["in"] == "query":
                    param["schema"]["maximum"] = access.max_k
                    param["schema"]["default"] = min(param["schema"]["default"], access.max_k)
            if "requestBody" in operation:
                _describe_upload(schema, operation, access.max_upload)
            responses = operation["responses"]
            if access.token is not None:
                responses["401"] = _problem_schema(NO_TOKEN)
            kind = kind_of(method.upper(), path.replace("{image_id}", "1"))
            if limited and kind is not None and getattr(access.rate_limits, kind) is not None:
                responses["429"] = _problem_schema(RATE_LIMITED)
    return schema


def _problem_schema(response: dict[str, Any]) -> dict[str, Any]:
    content = response["content"]["application/json"]
    content = {**content, "schema": {"$ref": "#/components/schemas/Problem"}}
    return {"description": response["description"], "content": {"application/json": content}}


def _describe_upload(schema: dict[str, Any], operation: dict[str, Any], limit: int) -> None:
    ref = operation["requestBody"]["content"]["multipart/form-data"]["schema"].get("$ref", "")
    body = schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    image = body.get("properties", {}).get("image")
    if image is None:
        return
    text = size_text(limit)
    image["maxLength"] = limit
    image["description"] = (
        f"An image file, not empty (an empty one is answered 400), at most {text} (413)."
    )
    # Replaced, not edited: the generated schema shares these dicts with the module's.
    operation["x-clipsearch-constraints"] = [
        {**c, "constraint": f"the image file is at most {text}"}
        if c["keyword"] == "maxLength"
        else c
        for c in operation.get("x-clipsearch-constraints", [])
    ]
    if "413" in operation["responses"]:
        too_large = problem(
            f"The upload is larger than {text}.", too_large=f"the upload is larger than {text}"
        )
        operation["responses"]["413"] = _problem_schema(too_large)
