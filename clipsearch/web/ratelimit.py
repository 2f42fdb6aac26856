"""Rate limits per client address: token buckets, and the middleware that applies them.

A bucket holds up to ``burst`` tokens and gains ``rate`` a second; each request of a kind
takes one, and a request that finds its bucket empty is answered 429 with ``Retry-After``.
One client flooding searches or uploads then gets its share and no more, so the others keep
theirs of the model, which answers one request at a time. A 429 is sent after a pause
(``tarpit``, at most the wait), so that a client that retries at once on a kept-alive
connection costs the server a few answers a second rather than thousands.

Clients are told apart by their address as the socket sees it: behind a reverse proxy every
request comes from the proxy, and the proxy should limit instead.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Receive, Scope, Send

from clipsearch.web.guards import reply, route_path

MAX_CLIENTS = 10_000  # buckets kept; the least recently used are dropped (and so refilled)


@dataclass(frozen=True)
class Rate:
    """``per_second`` tokens a second, at most ``burst`` saved up."""

    per_second: float
    burst: int


@dataclass(frozen=True)
class RateLimits:
    """The limits per client address of a server (None: no limit of that kind)."""

    search: Rate | None = field(default_factory=lambda: Rate(4.0, 20))
    upload: Rate | None = field(default_factory=lambda: Rate(1.0, 5))
    failed_token: Rate | None = field(default_factory=lambda: Rate(0.1, 10))
    tarpit: float = 1.0  # seconds a 429 waits before it is sent


class Buckets:
    """Token buckets, one per key, thread-safe; memory is bounded by ``max_keys``."""

    def __init__(
        self,
        rate: Rate,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_CLIENTS,
    ):
        self.rate = rate
        self.clock = clock
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, stamp

    def _level(self, key: str, now: float) -> float:
        tokens, stamp = self._buckets.get(key, (float(self.rate.burst), now))
        return min(float(self.rate.burst), tokens + (now - stamp) * self.rate.per_second)

    def wait(self, key: str) -> float:
        """Seconds until ``key`` has a token (0: it has one now); takes nothing."""
        with self._lock:
            level = self._level(key, self.clock())
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate.per_second

    def take(self, key: str) -> float:
        """Take a token for ``key``: 0 when there was one, else the seconds until there is
        (and nothing is taken)."""
        with self._lock:
            now = self.clock()
            level = self._level(key, now)
            if level < 1.0:
                self._buckets[key] = (level, now)
                self._buckets.move_to_end(key)
                return (1.0 - level) / self.rate.per_second
            self._buckets[key] = (level - 1.0, now)
            self._buckets.move_to_end(key)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return 0.0


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else ""


async def too_many(send: Send, wait: float, what: str, tarpit: float = 0.0) -> None:
    """Answer 429, after ``tarpit`` seconds (at most ``wait``): the event loop serves others
    meanwhile."""
    if tarpit > 0:
        await asyncio.sleep(min(wait, tarpit))
    seconds = max(1, math.ceil(wait))
    await reply(
        send,
        429,
        f"too many {what} from your address; try again in {seconds} s",
        headers=[(b"retry-after", str(seconds).encode())],
    )


# Which requests take from which bucket: (method, path pattern, kind).
LIMITED = [
    ("POST", re.compile(r"/api/search/image/?"), "upload"),
    ("GET", re.compile(r"/api/search/?"), "search"),
    ("GET", re.compile(r"/api/images/\d+/similar/?"), "search"),
    ("GET", re.compile(r"/api/duplicates/?"), "search"),
]
WHAT = {"upload": "uploads", "search": "searches"}


def kind_of(method: str, path: str) -> str | None:
    """The kind of limit a request falls under, None for none."""
    for m, pattern, kind in LIMITED:
        if method == m and pattern.fullmatch(path):
            return kind
    return None


class RateLimit:
    """Answers 429 to searches and uploads from an address past its rate (see
    :class:`RateLimits`); everything else passes."""

    def __init__(
        self, app: ASGIApp, limits: RateLimits, clock: Callable[[], float] = time.monotonic
    ):
        self.app = app
        self.tarpit = limits.tarpit
        self.buckets = {
            kind: Buckets(rate, clock=clock)
            for kind, rate in (("search", limits.search), ("upload", limits.upload))
            if rate is not None
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            kind = kind_of(scope["method"], route_path(scope))
            buckets = self.buckets.get(kind) if kind else None
            if buckets is not None:
                wait = buckets.take(client_address(scope))
                if wait > 0:
                    await too_many(send, wait, WHAT[kind], self.tarpit)  # type: ignore[index]
                    return
        await self.app(scope, receive, send)
