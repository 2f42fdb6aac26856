"""The HTTP API and the page: a FastAPI app over one :class:`~clipsearch.ImageIndex`.

Routes (JSON unless noted; ``{id}`` is an image id, the only way to name an image)::

    GET  /                          the page (static/index.html)
    GET  /static/{file}             its script and style sheet
    GET  /api/info                  what the index holds, its style labels, the API's limits
    GET  /api/errors                files that could not be indexed, and why
    GET  /api/search                text and combined queries: q, plus, minus, k, min_score, style
    POST /api/search/image          search by an uploaded image (multipart field ``image``)
    GET  /api/images/{id}           one indexed image
    GET  /api/images/{id}/similar   images that look like it (never itself)
    GET  /api/images/{id}/thumb     a thumbnail (WebP, 256 px), cached in <index>/thumbs/
    GET  /api/images/{id}/file      the image or video file itself (videos with Range requests)
    GET  /openapi.json              the OpenAPI schema, with an example of every request
    GET  /docs                      Swagger UI over it, from files installed with the package

Query terms use the syntax of :mod:`clipsearch.index.query`, except that an image term names an
indexed image by id (``@42``, ``0.5:@42``): no path from a request ever reaches the file system.
Every search is a call of :class:`~clipsearch.ImageIndex` (``search_indexed``, ``similar``), so
the API gives the Python API's results and errors. Requests share one ImageIndex; the model and
FAISS take turns under a lock, and every search sees what a concurrently running indexer has
committed.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, BeforeValidator, Field

from clipsearch import __version__
from clipsearch.errors import ClipsearchError, ImageReadError, QueryError
from clipsearch.index.imageindex import ImageIndex, SearchResult, meta_fields
from clipsearch.index.query import MAX_K as QUERY_MAX_K
from clipsearch.index.query import MAX_QUERY_CHARS
from clipsearch.media.files import load_image
from clipsearch.store.catalog import StoredImage
from clipsearch.web import openapi as doc
from clipsearch.web.access import MAX_K as MAX_K  # re-exported: the default --max-k
from clipsearch.web.access import MAX_UPLOAD_BYTES, Access, size_text
from clipsearch.web.auth import TokenGuard
from clipsearch.web.guards import LOOPBACK_HOSTS, BodyLimit, HostGuard, ReadOnly, SecurityHeaders
from clipsearch.web.ratelimit import RateLimit
from clipsearch.web.thumbs import DEFAULT_CACHE_BYTES, THUMBS_DIR, ThumbnailCache

if TYPE_CHECKING:
    from clipsearch.index.watch import FolderWatcher

STATIC_DIR = doc.STATIC_DIR
DEFAULT_K = 24
MAX_TERMS = 16
UPLOAD_LIMIT = size_text(MAX_UPLOAD_BYTES)
# POST routes that only read: allowed on a read-only server (see guards.ReadOnly).
READ_POSTS = ("/api/search/image",)
# Formats every current browser shows; others (TIFF, HEIC, ...) are sent as JPEG.
BROWSER_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".avif": "image/avif",
    # Videos go as they are, with Range requests, for the page to play from a frame's time.
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
}
THUMB_CACHE_CONTROL = "private, max-age=86400"
FILE_CACHE_CONTROL = "private, max-age=3600"


# --- response models ------------------------------------------------------------------------


def _displayable(path: str) -> str:
    # A file name that is not UTF-8 comes from os.fsdecode with surrogates, which JSON cannot
    # carry. Shown with U+FFFD instead: paths here are for people, files are reached by id.
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = path.encode("utf-8", "replace")
    return raw.decode("utf-8", "replace")


ShownPath = Annotated[str, BeforeValidator(_displayable)]


class Hit(BaseModel):
    """One search result."""

    id: int
    path: ShownPath
    score: float = Field(description="Cosine similarity to the query, -1..1.")
    style: str | None = None
    style_score: float | None = None
    width: int
    height: int
    taken: str | None = Field(
        default=None,
        description="When it was taken, ISO 8601: EXIF's DateTimeOriginal (with its offset when "
        "the camera wrote one), else the file's modification time.",
    )
    taken_source: str | None = Field(default=None, description="'exif' or 'mtime'.")
    camera: str | None = Field(default=None, description="EXIF camera make and model.")
    lat: float | None = Field(default=None, description="GPS latitude, degrees.")
    lon: float | None = Field(default=None, description="GPS longitude, degrees.")
    frame_time: float | None = Field(
        default=None,
        description="For a video: the time of its best frame, in seconds (the thumbnail shows "
        "that frame; null for an image).",
    )
    thumb_url: str
    image_url: str


class Results(BaseModel):
    count: int
    results: list[Hit]


class ImageOut(BaseModel):
    """An indexed image."""

    id: int
    path: ShownPath
    style: str | None = None
    style_score: float | None = None
    width: int
    height: int
    taken: str | None = None
    taken_source: str | None = None
    camera: str | None = None
    lat: float | None = None
    lon: float | None = None
    frame_time: float | None = None
    thumb_url: str
    image_url: str
    similar_url: str


class Limits(BaseModel):
    max_k: int
    max_query_chars: int
    max_terms: int
    max_upload_bytes: int


class InfoOut(BaseModel):
    path: ShownPath
    count: int
    model: str
    pretrained: str | None
    weights_sha256: str | None
    dim: int
    image_size: int
    index_type: str
    roots: list[ShownPath]
    errors: int
    schema_version: int
    created: float
    text_sha256: str | None = Field(
        default=None,
        description="For a local-dir: model with a Hugging Face text tower: the checksum of its "
        "tokenizer and tower config files.",
    )
    styles: dict[str, int] = Field(description="Style label -> number of images with it.")
    unlabelled: int = Field(description="Images without a style label.")
    limits: Limits


class ErrorOut(BaseModel):
    path: ShownPath
    reason: str
    at: float


# --- the shared index -----------------------------------------------------------------------


class Service:
    """The index every request uses, the lock its model and FAISS index take turns under, and
    what clients may do."""

    def __init__(self, index: ImageIndex, access: Access, thumbs: ThumbnailCache):
        self.index = index
        self.access = access
        self.lock = threading.Lock()
        self.thumbs = thumbs

    def k(self, request: Request, k: int) -> int:
        """The number of results to give: ``k`` if the request asked for it, refused as FastAPI
        refuses a value past the schema's maximum (422) when over this server's --max-k (the
        schema states it, see ``_add_docs``); the default, cut to --max-k, if it did not."""
        limit = self.access.max_k
        if "k" not in request.query_params:
            return min(k, limit)
        if k > limit:
            raise RequestValidationError(
                [
                    {
                        "type": "less_than_equal",
                        "loc": ("query", "k"),
                        "msg": f"Input should be less than or equal to {limit}",
                        "input": k,
                        "ctx": {"le": limit},
                    }
                ]
            )
        return k

    def record(self, image_id: int) -> StoredImage:
        rec = self.index.catalog.images([image_id]).get(image_id)  # any int: none beyond SQLite's
        if rec is None:
            raise HTTPException(404, f"no image with id {image_id} in this index")
        return rec

    def search(
        self, style: Sequence[str], method: Callable[..., list[SearchResult]], *args, **kwargs
    ) -> list[SearchResult]:
        """Call one of the index's search methods with the style filter checked, in turn."""
        styles = self.index.styles.check(style) if style else None
        with self.lock:
            return method(*args, styles=styles, **kwargs)


def _service(request: Request) -> Service:
    return request.app.state.service


Svc = Annotated[Service, Depends(_service)]


# --- parameters -----------------------------------------------------------------------------

K = Annotated[
    int,
    Query(ge=1, le=QUERY_MAX_K, description="How many results at most (the server's --max-k)."),
]
MinScore = Annotated[
    float | None, Query(ge=-1.0, le=1.0, description="Drop results below this cosine similarity.")
]
Styles = Annotated[
    list[str],
    Query(
        max_length=MAX_TERMS,
        description="Only images with this style label (repeatable; see /api/info).",
    ),
]
After = Annotated[
    str | None,
    Query(
        max_length=40,
        description="Only photos taken at or after the start of this date: YYYY, YYYY-MM, "
        "YYYY-MM-DD or an ISO datetime (the server's local time unless it has an offset).",
    ),
]
Before = Annotated[
    str | None,
    Query(
        max_length=40,
        description="Only photos taken before the start of this date (forms as for after): "
        "before=2023 ends on 2022-12-31.",
    ),
]
Camera = Annotated[
    str | None,
    Query(max_length=200, description="Only photos whose camera make and model hold this text."),
]
Near = Annotated[
    str | None,
    Query(
        max_length=80,
        description="LAT,LON or LAT,LON,KM: only photos with a GPS position at most KM "
        "(default 10) from there.",
    ),
]
Plus = Annotated[
    list[str],
    Query(
        max_length=MAX_TERMS,
        description="Terms to add: text, WEIGHT:text or @ID (an indexed image). Repeatable.",
    ),
]
Minus = Annotated[
    list[str], Query(max_length=MAX_TERMS, description="Terms to subtract (repeatable).")
]


def _url(request: Request, path: str) -> str:
    return request.scope.get("root_path", "").rstrip("/") + path


def _hits(request: Request, hits: Sequence[SearchResult]) -> Results:
    out = [
        Hit(
            **h.to_dict(),
            thumb_url=_url(request, f"/api/images/{h.id}/thumb"),
            image_url=_url(request, f"/api/images/{h.id}/file"),
        )
        for h in hits
    ]
    return Results(count=len(out), results=out)


def _not_modified(request: Request, etag: str) -> bool:
    header = request.headers.get("if-none-match")
    if not header:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


# --- routes ---------------------------------------------------------------------------------

Responses = dict[int | str, dict[str, object]]
SEARCH_RESPONSES: Responses = {200: doc.ok(found=doc.RESULTS), 400: doc.BAD_QUERY}
NOT_FOUND: Responses = {404: doc.NO_IMAGE}

router = APIRouter(prefix="/api")


@router.get(
    "/info",
    response_model=InfoOut,
    responses={200: doc.ok(photos=doc.INFO)},
    summary="What the index holds",
)
def info(svc: Svc) -> InfoOut:
    data = svc.index.info().to_dict()
    counts = svc.index.catalog.style_counts()
    return InfoOut(
        **data,
        styles={s: n for s, n in sorted(counts.items(), key=lambda x: str(x[0])) if s},
        unlabelled=counts.get(None, 0),
        limits=Limits(
            max_k=svc.access.max_k,
            max_query_chars=MAX_QUERY_CHARS,
            max_terms=MAX_TERMS,
            max_upload_bytes=svc.access.max_upload,
        ),
    )


@router.get(
    "/errors",
    response_model=list[ErrorOut],
    responses={200: doc.ok(one_failed=doc.FAILED)},
    summary="Files that could not be indexed",
)
def errors(svc: Svc) -> list[ErrorOut]:
    return [ErrorOut(path=r.path, reason=r.reason, at=r.at) for r in svc.index.errors()]


@router.get(
    "/search",
    response_model=Results,
    responses=SEARCH_RESPONSES,
    summary="Search by text or terms",
    openapi_extra={"x-clipsearch-constraints": [doc.ONE_OF_Q_PLUS]},
)
def search(
    request: Request,
    svc: Svc,
    q: Annotated[
        str | None,
        Query(
            max_length=MAX_QUERY_CHARS,
            description="The main term: text ('a dog on the beach'), WEIGHT:text, or @ID.",
        ),
    ] = None,
    plus: Plus = (),  # type: ignore[assignment]
    minus: Minus = (),  # type: ignore[assignment]
    k: K = DEFAULT_K,
    min_score: MinScore = None,
    style: Styles = (),  # type: ignore[assignment]
    after: After = None,
    before: Before = None,
    camera: Camera = None,
    near: Near = None,
) -> Results:
    """Rank indexed images by similarity to a weighted sum of terms: ``q`` and ``plus`` are
    added, ``minus`` subtracted. Images used as positive terms are left out of the results.

    At least one of ``q`` and ``plus`` must hold a term that is not blank; a request with
    neither is answered 400 (OpenAPI cannot require one of two parameters: the rule is also in
    ``x-clipsearch-constraints``)."""
    k = svc.k(request, k)
    index = svc.index
    where = {"after": after, "before": before, "camera": camera, "near": near}
    hits = svc.search(
        style,
        index.search_indexed,
        q or None,
        plus=plus,
        minus=minus,
        k=k,
        min_score=min_score,
        **where,
    )
    return _hits(request, hits)


@router.post(
    "/search/image",
    response_model=Results,
    responses={**SEARCH_RESPONSES, 400: doc.BAD_UPLOAD, 413: doc.TOO_LARGE},
    summary="Search by an uploaded image",
    openapi_extra={"x-clipsearch-constraints": doc.UPLOAD_SIZE},
)
def search_image(
    request: Request,
    svc: Svc,
    image: Annotated[
        UploadFile,
        File(
            description=f"An image file, not empty (an empty one is answered 400), at most "
            f"{UPLOAD_LIMIT} (413).",
            json_schema_extra={"minLength": 1, "maxLength": MAX_UPLOAD_BYTES},
        ),
    ],
    plus: Plus = (),  # type: ignore[assignment]
    minus: Minus = (),  # type: ignore[assignment]
    k: K = DEFAULT_K,
    min_score: MinScore = None,
    style: Styles = (),  # type: ignore[assignment]
    after: After = None,
    before: Before = None,
    camera: Camera = None,
    near: Near = None,
) -> Results:
    """Images that look like an uploaded one, optionally moved by ``plus``/``minus`` terms.
    The upload is only decoded and encoded, never stored."""
    k = svc.k(request, k)
    limit = svc.access.max_upload
    data = image.file.read(limit + 1)
    name = os.path.basename(image.filename or "") or "upload"
    if len(data) > limit:
        raise HTTPException(413, f"uploaded file {name} is larger than {size_text(limit)}")
    hits = svc.search(
        style,
        svc.index.search_indexed,
        plus=plus,
        minus=minus,
        image=data,
        image_name=name,
        k=k,
        min_score=min_score,
        after=after,
        before=before,
        camera=camera,
        near=near,
    )
    return _hits(request, hits)


@router.get(
    "/images/{image_id:int}",
    response_model=ImageOut,
    responses={200: doc.ok(image=doc.IMAGE), **NOT_FOUND},
    summary="One image",
)
def image_record(request: Request, svc: Svc, image_id: int) -> ImageOut:
    rec = svc.record(image_id)
    base = f"/api/images/{rec.id}"
    return ImageOut(
        id=rec.id,
        path=rec.path,
        style=rec.style,
        style_score=rec.style_score,
        width=rec.width,
        height=rec.height,
        **meta_fields(rec.meta),
        frame_time=rec.frame_time,
        thumb_url=_url(request, f"{base}/thumb"),
        image_url=_url(request, f"{base}/file"),
        similar_url=_url(request, f"{base}/similar"),
    )


@router.get(
    "/images/{image_id:int}/similar",
    response_model=Results,
    responses={**SEARCH_RESPONSES, **NOT_FOUND},
    summary="Images like an indexed one",
)
def similar(
    request: Request,
    svc: Svc,
    image_id: int,
    k: K = DEFAULT_K,
    min_score: MinScore = None,
    style: Styles = (),  # type: ignore[assignment]
    after: After = None,
    before: Before = None,
    camera: Camera = None,
    near: Near = None,
) -> Results:
    """Images that look like image ``image_id``, best first, never the image itself."""
    k = svc.k(request, k)
    svc.record(image_id)
    where = {"after": after, "before": before, "camera": camera, "near": near}
    hits = svc.search(style, svc.index.similar, image_id, k=k, min_score=min_score, **where)
    return _hits(request, hits)


class DuplicateOut(BaseModel):
    """One image of a group of near-duplicates."""

    id: int
    path: ShownPath
    width: int
    height: int
    size: int
    mtime: float
    similarity: float = Field(description="Cosine similarity to the image to keep.")
    same_content: bool = Field(description="Whether its bytes equal those of the image to keep.")
    thumb_url: str
    image_url: str


class DuplicateGroupOut(BaseModel):
    """Near-identical images, the one to keep first."""

    reason: str = Field(description="'same content' or 'similar'.")
    min_similarity: float
    max_similarity: float
    members: list[DuplicateOut]


class DuplicatesOut(BaseModel):
    count: int = Field(description="Groups found; at most `limit` of them are listed.")
    groups: list[DuplicateGroupOut]


@router.get(
    "/duplicates",
    response_model=DuplicatesOut,
    responses={200: doc.ok(found=doc.DUPLICATES), 400: doc.BAD_PREFIX},
    summary="Groups of near-identical images",
)
def duplicates(
    request: Request,
    svc: Svc,
    threshold: Annotated[
        float, Query(gt=0.0, le=1.0, description="Least cosine similarity of two duplicates.")
    ] = 0.95,
    prefix: Annotated[
        str | None,
        Query(max_length=4096, description="Only images whose absolute path starts with this."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000, description="How many groups at most.")] = 100,
) -> DuplicatesOut:
    """Groups of near-identical images, largest first, the image to keep first in each (the
    largest resolution, then the oldest file). Nothing is deleted."""
    with svc.lock:
        groups = svc.index.duplicates(threshold, path_prefix=prefix or None)
    out = []
    for g in groups[:limit]:
        data = g.to_dict()
        data["members"] = [
            DuplicateOut(
                **m,
                thumb_url=_url(request, f"/api/images/{m['id']}/thumb"),
                image_url=_url(request, f"/api/images/{m['id']}/file"),
            )
            for m in data["members"]
        ]
        out.append(DuplicateGroupOut(**data))
    return DuplicatesOut(count=len(groups), groups=out)


@router.get(
    "/images/{image_id:int}/thumb",
    response_class=Response,
    responses={
        200: {"content": {"image/webp": {}}, "description": "The thumbnail."},
        304: {"description": "Not modified: the If-None-Match tag is current."},
        404: doc.GONE,
    },
    summary="A thumbnail",
)
def thumbnail(request: Request, svc: Svc, image_id: int) -> Response:
    """An upright thumbnail at most 256 px a side, made on first request and cached in the
    index folder. Answers 304 to a matching ``If-None-Match``."""
    rec = svc.record(image_id)
    etag = svc.thumbs.etag(rec)
    headers = {"ETag": etag, "Cache-Control": THUMB_CACHE_CONTROL}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    try:
        data = svc.thumbs.get(rec)
    except ImageReadError as e:
        raise ImageReadError(f"image {image_id}", e.reason) from e
    return Response(data, media_type=svc.thumbs.media_type, headers=headers)


@router.get(
    "/images/{image_id:int}/file",
    response_class=Response,
    responses={
        200: {"content": {"image/*": {}}, "description": "The image file."},
        304: {"description": "Not modified: the If-None-Match tag is current."},
        404: doc.GONE,
    },
    summary="The image file",
)
def image_file(request: Request, svc: Svc, image_id: int) -> Response:
    """The indexed file as it is on disk now; formats browsers cannot show (TIFF, HEIC, ...)
    are sent as JPEG. Videos (and browser images) answer ``Range`` requests (206)."""
    rec = svc.record(image_id)
    path = Path(rec.path)
    try:
        st = path.stat()
    except OSError as e:
        raise ImageReadError(f"image {image_id}", "the file is no longer on disk") from e
    etag = f'"{st.st_size:x}-{st.st_mtime_ns:x}"'
    headers = {"ETag": etag, "Cache-Control": FILE_CACHE_CONTROL}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    media_type = BROWSER_TYPES.get(path.suffix.lower())
    if media_type is not None:
        return FileResponse(path, media_type=media_type, headers=headers, stat_result=st)
    try:
        img = load_image(path)
    except ImageReadError as e:
        raise ImageReadError(f"image {image_id}", e.reason) from e
    out = BytesIO()
    img.save(out, format="JPEG", quality=90)
    return Response(out.getvalue(), media_type="image/jpeg", headers=headers)


# --- the app --------------------------------------------------------------------------------


# The one place the library's errors become HTTP statuses; the closest class wins. Uploads
# that are not images are QueryErrors; an ImageReadError is an indexed file gone or broken.
ERROR_STATUS: dict[type[ClipsearchError], int] = {
    QueryError: 400,
    ImageReadError: 404,
    ClipsearchError: 500,
}


def _problem(status: int):
    def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handler


def _add_docs(app: FastAPI, access: Access) -> None:
    """The schema with its request examples and this server's access, and /docs: Swagger UI
    from installed files."""

    def schema() -> dict[str, object]:
        if app.openapi_schema is None:
            app.openapi_schema = doc.describe_access(doc.add_examples(FastAPI.openapi(app)), access)
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]
    swagger = doc.swagger_dir()
    if swagger is None:  # fastapi-offline is missing: no /docs (the schema is still served)
        return

    @app.get("/docs", include_in_schema=False)
    def docs() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html", headers={"Cache-Control": "no-cache"})

    app.mount(doc.SWAGGER_PATH, StaticFiles(directory=swagger), name="swagger-ui")


def _prepare_in_background(index: ImageIndex) -> threading.Thread:
    """:meth:`ImageIndex.prepare_text_queries` in a thread: quick text queries from the first
    one on, without delaying the server's start; the app joins it when it shuts down. A
    failure only means that queries make what they need themselves, as they would without
    it."""

    def prepare() -> None:
        with contextlib.suppress(ClipsearchError, OSError):
            index.prepare_text_queries()

    thread = threading.Thread(target=prepare, name="prepare-text-queries", daemon=True)
    thread.start()
    return thread


def create_app(
    index: ImageIndex | str | os.PathLike[str],
    *,
    device: str = "auto",
    precision: str = "fp32",
    allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS,
    watcher: FolderWatcher | None = None,
    access: Access | None = None,
    thumbs_max_bytes: int | None = DEFAULT_CACHE_BYTES,
) -> FastAPI:
    """The web page and JSON API over an index.

    Args:
        index: an open :class:`ImageIndex` (the caller closes it) or an index folder (opened
            now, closed when the app shuts down).
        device: where the model runs, for an index opened here.
        precision: the model's precision, for an index opened here.
        allowed_hosts: the names the server answers to (``Host`` header); None for any. The
            default serves this machine only and keeps other web sites out (DNS rebinding).
        watcher: a :class:`~clipsearch.index.watch.FolderWatcher` that keeps the index current
            (give it an :class:`ImageIndex` of its own for the same folder): started in a
            background thread with the app, stopped when it shuts down. Searches see each
            batch once it is committed.
        access: the token, read-only mode and limits (:class:`~clipsearch.web.access.Access`);
            the default lets everyone in, which suits a loopback server only. See
            ``Access.for_host``.
        thumbs_max_bytes: the thumbnail cache's size cap (least recently used thumbnails are
            dropped past it); None for no cap.

    Raises:
        IndexNotFoundError: no index at the given folder.
        ClipsearchError: a watcher for a read-only server.
    """
    access = access if access is not None else Access()
    if access.read_only and watcher is not None:
        raise ClipsearchError(
            "a read-only server cannot watch folders: --watch writes to the index; leave out "
            "--watch, or serve with --no-read-only on a trusted network"
        )
    owned = not isinstance(index, ImageIndex)
    opened = ImageIndex.open(index, device=device, precision=precision) if owned else index
    index = opened

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if watcher is not None:
            watcher.start()
        preparing = _prepare_in_background(opened)
        try:
            yield
        finally:
            if watcher is not None:
                watcher.stop()
            preparing.join()  # a session half made when the process exits aborts it
            if owned:
                opened.close()

    app = FastAPI(
        title="clipsearch",
        version=__version__,
        summary="Semantic search over your own photos.",
        description=__doc__,
        docs_url=None,  # FastAPI's docs pages load scripts from a CDN: /docs is ours, below
        redoc_url=None,
        lifespan=lifespan,
    )
    thumbs = ThumbnailCache(index.path / THUMBS_DIR, max_bytes=thumbs_max_bytes)
    app.state.service = Service(index, access, thumbs)
    app.include_router(router)
    for error, status in ERROR_STATUS.items():
        app.add_exception_handler(error, _problem(status))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    _add_docs(app, access)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    _add_guards(app, access, allowed_hosts)
    return app


def _add_guards(app: FastAPI, access: Access, allowed_hosts: Sequence[str] | None) -> None:
    """The middleware, the last added running first: the Host check, the headers, the token,
    the rate limits, read-only, and the body limit."""
    app.add_middleware(
        BodyLimit,
        limit=access.max_upload + 64 * 1024,  # the form's own bytes around the file
        message=f"the upload is larger than {size_text(access.max_upload)}",
    )
    if access.read_only:
        app.add_middleware(ReadOnly, reads=READ_POSTS)
    if access.rate_limits is not None:
        app.add_middleware(RateLimit, limits=access.rate_limits)
    if access.token is not None:
        limits = access.rate_limits
        app.add_middleware(
            TokenGuard,
            token=access.token,
            failures=limits.failed_token if limits else None,
            tarpit=limits.tarpit if limits else 0.0,
        )
    app.add_middleware(SecurityHeaders)
    if allowed_hosts is not None:
        app.add_middleware(HostGuard, allowed=allowed_hosts)
