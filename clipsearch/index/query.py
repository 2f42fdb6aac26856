"""Queries: parsing weighted text and image terms, combining them, and ranking results.

Term syntax (CLI and API alike)::

    TERM    := [WEIGHT ":"] ( "@" IMAGE_PATH | TEXT )
    WEIGHT  := a positive number, e.g. 2, 0.5, 1e-1 (a negative or zero one is an error)

``beach`` is a text term of weight 1, ``2:sunset`` weighs twice as much, ``@photos/a.jpg`` is
an image term, ``0.5:@photos/a.jpg`` a lighter one. A term that must start with a literal
``@`` or ``NUMBER:`` is written with a leading backslash (``\\@home``, ``\\10:30 meeting``).
Positive terms are added, negative terms subtracted, each scaled by its weight, and the sum
is normalized again: the query vector is a unit vector like every image vector.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from clipsearch.errors import QueryError

MAX_QUERY_CHARS = 1000
MAX_K = 10_000
_WEIGHT = re.compile(r"^\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*:(?!//)")


@dataclass(frozen=True)
class Term:
    """One part of a query: a text or an image path, its weight, and its sign."""

    kind: Literal["text", "image"]
    value: str
    weight: float = 1.0
    negative: bool = False

    @classmethod
    def parse(cls, raw: str, *, negative: bool = False) -> Term:
        """Parse ``[WEIGHT:](@PATH|TEXT)``; raises QueryError with the reason."""
        if not isinstance(raw, str):
            raise QueryError(f"a query term must be a string, not {type(raw).__name__}")
        weight = 1.0
        text = raw
        match = _WEIGHT.match(text)
        if match:
            weight = float(match.group(1))
            text = text[match.end() :]
        if not math.isfinite(weight) or weight <= 0:
            raise QueryError(
                f"term {raw!r}: the weight must be a positive finite number (subtract a term "
                "with --minus)"
            )
        if text.startswith("\\"):
            return cls._make("text", text[1:], weight, negative, raw)
        if text.startswith("@"):
            return cls._make("image", text[1:], weight, negative, raw)
        return cls._make("text", text, weight, negative, raw)

    def indexed_id(self) -> int:
        """The id of the indexed image an image term names as ``@42``.

        Raises:
            QueryError: the term names an image any other way (a path).
        """
        if not (self.value.isascii() and self.value.isdigit()):
            raise QueryError(
                f"image term @{self.value}: an image term names an indexed image by its id, "
                "like @42"
            )
        return int(self.value)

    @classmethod
    def _make(cls, kind: Literal["text", "image"], value: str, weight: float, neg: bool, raw: str):
        if kind == "text":
            value = " ".join(value.split())
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:  # bytes from a command line that are not UTF-8
                raise QueryError(f"term {raw!r} is not valid text (not UTF-8)") from e
        if not value.strip():
            what = "an image path after @" if kind == "image" else "some text"
            raise QueryError(f"term {raw!r} is empty; give {what}")
        if len(value) > MAX_QUERY_CHARS:
            raise QueryError(
                f"term is {len(value)} characters long; the limit is {MAX_QUERY_CHARS}"
            )
        return cls(kind, value, weight, neg)

    @property
    def signed_weight(self) -> float:
        return -self.weight if self.negative else self.weight


@dataclass(frozen=True)
class Query:
    """A weighted combination of text and image terms."""

    terms: tuple[Term, ...]

    @classmethod
    def parse(
        cls,
        query: str | Query | None = None,
        plus: Iterable[str] = (),
        minus: Iterable[str] = (),
    ) -> Query:
        """Build a query from a main term (or query) and extra positive and negative terms.

        Args:
            query: the main term, or a :class:`Query` (may be None when ``plus`` has terms).
            plus: more terms to add.
            minus: terms to subtract ("not like this").

        Raises:
            QueryError: a term is invalid, or no term is positive.
        """
        terms = gather_terms(query, plus, minus)
        require_positive(terms)
        return cls(tuple(terms))

    @classmethod
    def text(cls, text: str) -> Query:
        return cls((Term._make("text", text, 1.0, False, text),))

    @classmethod
    def image(cls, path: str) -> Query:
        return cls((Term._make("image", str(path), 1.0, False, str(path)),))

    def __add__(self, other: Query) -> Query:
        return Query(self.terms + other.terms)

    def __sub__(self, other: Query) -> Query:
        flipped = tuple(Term(t.kind, t.value, t.weight, not t.negative) for t in other.terms)
        return Query(self.terms + flipped)

    def __mul__(self, factor: float) -> Query:
        if not math.isfinite(factor) or factor <= 0:
            raise QueryError("a query can only be scaled by a positive finite number")
        return Query(
            tuple(Term(t.kind, t.value, t.weight * factor, t.negative) for t in self.terms)
        )

    __rmul__ = __mul__

    @property
    def texts(self) -> list[str]:
        return [t.value for t in self.terms if t.kind == "text"]

    @property
    def images(self) -> list[str]:
        return [t.value for t in self.terms if t.kind == "image"]


def gather_terms(
    query: str | Query | None, plus: Iterable[str] = (), minus: Iterable[str] = ()
) -> list[Term]:
    """The terms of a main term (or the terms of a :class:`Query`), then ``plus``, then
    ``minus`` (negated); a single string counts as one term.

    Raises:
        QueryError: a term is invalid.
    """
    plus = [plus] if isinstance(plus, str) else plus
    minus = [minus] if isinstance(minus, str) else minus
    if isinstance(query, Query):
        terms = list(query.terms)
    else:
        terms = [Term.parse(query)] if query is not None else []
    terms += [Term.parse(t) for t in plus]
    terms += [Term.parse(t, negative=True) for t in minus]
    return terms


def require_positive(terms: Sequence[Term], what: str = "some text or an image (@path)") -> None:
    """Refuse a query without a positive term: subtracting alone ranks nothing.

    Raises:
        QueryError: every term is negative, or there is none.
    """
    if all(t.negative for t in terms):
        raise QueryError(f"the query is empty; give {what} to search")


def combine(terms: Sequence[Term], vectors: np.ndarray) -> np.ndarray:
    """The weighted sum of the terms' unit vectors, normalized to unit length."""
    weights = np.asarray([t.signed_weight for t in terms], dtype=np.float64)
    total = (weights[:, None] * vectors.astype(np.float64)).sum(axis=0)
    norm = float(np.linalg.norm(total))
    if not math.isfinite(norm) or norm < 1e-6:
        raise QueryError(
            "the query's terms cancel out (the combined vector is zero); "
            "lower the weight of the --minus terms"
        )
    return (total / norm).astype(np.float32)


def path_filter(prefix: str, roots: Iterable[str]) -> str:
    """The absolute path prefix that a ``--prefix`` filter means.

    The prefix is compared as text with the absolute path of each indexed file: ``photos/2023``
    keeps ``photos/2023/a.jpg`` and ``photos/2023-06/b.jpg``; end it with ``/`` to keep one
    folder only. A relative prefix starts at the current folder, and symlinks in the part of
    it that exists are resolved, as they are for indexed folders.

    Raises:
        QueryError: no indexed folder lies under the prefix or holds it, so nothing could match.
    """
    try:
        full = str(Path(prefix).expanduser().resolve())
    except (OSError, RuntimeError, ValueError) as e:
        raise QueryError(f"path prefix {prefix!r} is not a usable path: {e}") from e
    if prefix.endswith(("/", os.sep)) and not full.endswith("/"):
        full += "/"
    folders = [r.rstrip("/") + "/" for r in roots]
    if folders and not any(full.startswith(r) or r.startswith(full) for r in folders):
        raise QueryError(
            f"path prefix {full} is outside the indexed folders ({', '.join(sorted(folders))});"
            " no image could match"
        )
    return full


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise QueryError(f"k must be a whole number, not {k!r}")
    if k <= 0:
        raise QueryError(f"k must be at least 1 (got {k})")
    if k > MAX_K:
        raise QueryError(f"k must be at most {MAX_K} (got {k})")
    return int(k)


def rank(
    scores: np.ndarray,
    ids: np.ndarray,
    k: int,
    *,
    min_score: float | None = None,
    exclude: Iterable[int] = (),
) -> list[tuple[int, float]]:
    """FAISS hits as (id, score), best first, ties broken by id, without excluded ids."""
    excluded = set(exclude)
    hits = [
        (int(i), float(s))
        for s, i in zip(scores, ids, strict=True)
        if i >= 0 and int(i) not in excluded and (min_score is None or s >= min_score)
    ]
    hits.sort(key=lambda h: (-h[1], h[0]))
    return hits[:k]
