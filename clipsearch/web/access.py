"""Who may do what on a server: its token, read-only mode, request limits and rate limits.

:meth:`Access.for_host` gives the defaults for an address: a loopback server (only this
machine can reach it) needs no token and may write, a server others can reach needs a token
(generated when none is given) and is read-only, with searches and uploads rate-limited per
client address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from clipsearch.errors import ClipsearchError
from clipsearch.index.query import MAX_K as QUERY_MAX_K
from clipsearch.web.auth import QUERY_PARAM, new_token
from clipsearch.web.ratelimit import RateLimits
from clipsearch.web.server import is_loopback

MAX_K = 200
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
TOKEN_ENV = "CLIPSEARCH_TOKEN"


def size_text(n: int) -> str:
    """``20971520`` -> ``20 MB``, ``1536`` -> ``1536 bytes``: upload limits for people, in
    whole units where they are whole."""
    for unit, size in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} bytes"


@dataclass(frozen=True)
class Access:
    """What a server lets its clients do.

    Args:
        token: the token every request must show (see :mod:`clipsearch.web.auth`); None lets
            everyone in.
        read_only: refuse every request that could change the index (see
            :class:`~clipsearch.web.guards.ReadOnly`); the server then writes nothing but its
            thumbnail cache.
        max_k: the most results a request may ask for.
        max_upload: the largest image a search by upload takes, in bytes.
        rate_limits: limits per client address; None for none.
        token_generated: the token was made here and must be shown to the user once.
    """

    token: str | None = None
    read_only: bool = False
    max_k: int = MAX_K
    max_upload: int = MAX_UPLOAD_BYTES
    rate_limits: RateLimits | None = None
    token_generated: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        if not 1 <= self.max_k <= QUERY_MAX_K:
            raise ClipsearchError(f"max_k must be 1 to {QUERY_MAX_K} (got {self.max_k})")
        if self.max_upload < 1:
            raise ClipsearchError(f"max_upload must be at least 1 byte (got {self.max_upload})")
        if self.token is not None and not self.token.strip():
            raise ClipsearchError("the token is empty; give one, or none to have one made")

    @classmethod
    def for_host(
        cls,
        host: str,
        *,
        token: str | None = None,
        read_only: bool | None = None,
        max_k: int | None = None,
        max_upload: int | None = None,
    ) -> Access:
        """The access of a server listening on ``host``: a token is required off loopback
        (``token``, else a new one) and on loopback only when given;
        read-only by default off loopback; rate limits off loopback, and for wrong tokens
        whenever there is a token. (The command line reads ``token`` from --token or
        $CLIPSEARCH_TOKEN.)"""
        local = is_loopback(host)
        generated = token is None and not local
        if generated:
            token = new_token()
        if local:
            limits = RateLimits(search=None, upload=None) if token else None
        else:
            limits = RateLimits()
        return cls(
            token=token,
            read_only=(not local) if read_only is None else read_only,
            max_k=MAX_K if max_k is None else max_k,
            max_upload=MAX_UPLOAD_BYTES if max_upload is None else max_upload,
            rate_limits=limits,
            token_generated=generated,
        )

    def url(self, base: str) -> str:
        """The address to open: ``base`` with the token, when there is one."""
        if self.token is None:
            return base
        return f"{base}?{QUERY_PARAM}={quote(self.token, safe='')}"
