"""The token that guards a server others can reach, as Jupyter's does.

A request shows the token in one of three ways, the first present counting:

- ``?token=...`` in the address: the printed URL. A page (not /api/) asked for with the right
  one is answered with a redirect to the same address without it, setting a cookie, so the
  token leaves the address bar and the history; an API request is simply let through;
- ``Authorization: Bearer ...``: API clients;
- the cookie: the page, after that first visit. It is HttpOnly (the page's scripts never see
  it) and SameSite=Strict (no other site's page can make the browser send it), and named
  after the port, as cookies are shared by all ports of a host.

Tokens are compared with :func:`hmac.compare_digest`, whose time does not depend on where the
strings differ. A missing or wrong token gets 401, the same answer either way; a browser asking
for a page gets the login page (a form for the token, the one thing served without it). Wrong
tokens from one address are rate-limited (:class:`~clipsearch.web.ratelimit.RateLimits`):
once its bucket is empty, an address gets 429 and its guesses are not even compared.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from starlette.types import ASGIApp, Receive, Scope, Send

from clipsearch.web.guards import reply, route_path
from clipsearch.web.ratelimit import Buckets, Rate, client_address, too_many

COOKIE_PREFIX = "clipsearch_token_"
COOKIE_MAX_AGE = 30 * 24 * 3600
QUERY_PARAM = "token"
LOGIN_PAGE = Path(__file__).parent / "static" / "login.html"
UNAUTHORIZED = (
    "this server needs its token: open the address `clipsearch serve` printed (it ends in "
    "?token=...), or send the header 'Authorization: Bearer TOKEN'"
)


def new_token() -> str:
    """A fresh random token for a server that was given none."""
    return secrets.token_urlsafe(32)


def same_token(presented: str, token: str) -> bool:
    """Whether ``presented`` is ``token``, in a time that does not tell where they differ."""
    return hmac.compare_digest(presented.encode("utf-8"), token.encode("utf-8"))


def cookie_name(scope: Scope) -> str:
    server = scope.get("server")
    return f"{COOKIE_PREFIX}{server[1] if server and server[1] else 'default'}"


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name: value for name, value in scope["headers"]}


def _from_cookie(header: bytes, name: str) -> str | None:
    for part in header.decode("latin-1").split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def presented_token(scope: Scope) -> tuple[str | None, bool]:
    """The token a request shows (None: none) and whether it came in the address."""
    query = scope.get("query_string", b"").decode("latin-1")
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key == QUERY_PARAM:
            return value, True
    headers = _headers(scope)
    auth = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip(), False
    cookie = _from_cookie(headers.get(b"cookie", b""), cookie_name(scope))
    return cookie, False


def _without_token(scope: Scope) -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    kept = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != QUERY_PARAM]
    path = scope.get("root_path", "") + route_path(scope)
    return path + (f"?{urlencode(kept)}" if kept else "")


def _wants_page(scope: Scope) -> bool:
    path = route_path(scope)
    return scope["method"] in ("GET", "HEAD") and not (
        path.startswith("/api/") or path == "/openapi.json"
    )


class TokenGuard:
    """Lets through only requests that show ``token`` (see the module's docstring)."""

    def __init__(self, app: ASGIApp, token: str, failures: Rate | None = None, tarpit: float = 0.0):
        self.app = app
        self.token = token
        self.tarpit = tarpit
        self.failures = Buckets(failures) if failures is not None else None
        self.login_page = LOGIN_PAGE.read_bytes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        presented, in_address = presented_token(scope)
        address = client_address(scope)
        if presented is not None and self.failures is not None:
            wait = self.failures.wait(address)
            if wait > 0:
                await too_many(send, wait, "wrong tokens", self.tarpit)
                return
        if presented is not None and same_token(presented, self.token):
            if in_address and scope["type"] == "http" and _wants_page(scope):
                await self._set_cookie(scope, send, presented)
                return
            await self.app(scope, receive, send)
            return
        if presented is not None and self.failures is not None:
            self.failures.take(address)
        await self._refuse(scope, send)

    async def _set_cookie(self, scope: Scope, send: Send, token: str) -> None:
        cookie = (
            f"{cookie_name(scope)}={token}; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; "
            "SameSite=Strict"
        )
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", _without_token(scope).encode("latin-1")),
                    (b"set-cookie", cookie.encode("latin-1")),
                    (b"cache-control", b"no-store"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def _refuse(self, scope: Scope, send: Send) -> None:
        if scope["type"] != "http":  # a websocket: close it before it is accepted
            await send({"type": "websocket.close", "code": 1008})
            return
        challenge = [(b"www-authenticate", b'Bearer realm="clipsearch"')]
        if not _wants_page(scope):
            await reply(send, 401, UNAUTHORIZED, headers=challenge)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"text/html; charset=utf-8"),
                    (b"content-length", str(len(self.login_page)).encode()),
                    (b"cache-control", b"no-store"),
                    *challenge,
                ],
            }
        )
        await send({"type": "http.response.body", "body": self.login_page})
