"""ASGI middleware that keeps a local photo server local: host check, upload limit, headers.

- ``HostGuard`` answers 421 to requests whose ``Host`` is not one of the allowed names, so a web
  page elsewhere cannot reach a server on 127.0.0.1 through DNS rebinding.
- ``BodyLimit`` refuses request bodies over a size with 413, before they are read when the
  client says their length, and as soon as the limit is passed when it does not.
- ``ReadOnly`` refuses with 403 every request that could change something: any method but
  GET, HEAD and OPTIONS, except on the routes named as reads (search by an uploaded image).
  A route added later that writes is refused until it is named, not served until it is seen.
- ``SecurityHeaders`` adds a Content-Security-Policy that lets the page load nothing from
  outside this server, and asks browsers not to sniff types or send referrers.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "media-src 'self'; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


async def reply(
    send: Send,
    status: int,
    detail: str,
    headers: list[tuple[bytes, bytes]] = (),  # type: ignore[assignment]
) -> None:
    """Answer with the API's error model, ``{"detail": ...}``."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def route_path(scope: Scope) -> str:
    """The request's path below the app's mount point (``root_path``)."""
    path = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path or "/"


def _host_name(value: str) -> str:
    """The name part of a Host header: ``[::1]:8765`` -> ``::1``, ``Localhost:80`` ->
    ``localhost``."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class HostGuard:
    def __init__(self, app: ASGIApp, allowed: Iterable[str]):
        self.app = app
        self.allowed = {h.lower().strip("[]") for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = ""
            for name, value in scope["headers"]:
                if name == b"host":
                    host = _host_name(value.decode("latin-1"))
                    break
            if host not in self.allowed and not host.endswith(".localhost"):
                await reply(
                    send,
                    421,
                    f"this server answers to {', '.join(sorted(self.allowed))} only; "
                    "start it with --host to serve another address",
                )
                return
        await self.app(scope, receive, send)


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int, message: str):
        self.app = app
        self.limit = limit
        self.message = message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await reply(send, 413, self.message)
                return
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # Raised inside the route while it reads the body: the app answers 413.
                    raise HTTPException(413, self.message)
            return message

        await self.app(scope, limited, send)


class SecurityHeaders:
    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(n, v) for n, v in HEADERS if n not in present]
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        await self.app(scope, receive, with_headers)


READ_METHODS = ("GET", "HEAD", "OPTIONS")


class ReadOnly:
    def __init__(self, app: ASGIApp, reads: Iterable[str]):
        self.app = app
        self.reads = frozenset(p.rstrip("/") for p in reads)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] not in READ_METHODS
            and route_path(scope).rstrip("/") not in self.reads
        ):
            await reply(
                send,
                403,
                f"this server is read-only: {scope['method']} {route_path(scope)} would change "
                "the index; start `clipsearch serve` with --no-read-only on a trusted network",
            )
            return
        await self.app(scope, receive, send)
