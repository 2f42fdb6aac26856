"""Query parsing and ranking: the term syntax the README documents."""

from __future__ import annotations

import numpy as np
import pytest

from clipsearch.errors import QueryError
from clipsearch.index.query import (
    Query,
    Term,
    check_k,
    combine,
    gather_terms,
    rank,
    require_positive,
)


@pytest.mark.parametrize(
    ("raw", "kind", "value", "weight"),
    [
        ("beach", "text", "beach", 1.0),
        ("2:sunset", "text", "sunset", 2.0),
        ("0.5: calm sea ", "text", "calm sea", 0.5),
        ("1e-1:fog", "text", "fog", 0.1),
        ("@photos/a.jpg", "image", "photos/a.jpg", 1.0),
        ("3:@photos/a.jpg", "image", "photos/a.jpg", 3.0),
        ("\\10:30 meeting", "text", "10:30 meeting", 1.0),
        ("\\@home", "text", "@home", 1.0),
        ("http://example.com", "text", "http://example.com", 1.0),
        ("a  red\tcircle", "text", "a red circle", 1.0),
    ],
)
def test_term_syntax(raw, kind, value, weight):
    t = Term.parse(raw)
    assert (t.kind, t.value, t.weight, t.negative) == (kind, value, weight, False)


@pytest.mark.parametrize("raw", ["", "  ", "2:", "@", "0:x", "1e999:x", "x" * 1001])
def test_bad_terms(raw):
    with pytest.raises(QueryError):
        Term.parse(raw)


def test_query_parse_needs_a_positive_term():
    with pytest.raises(QueryError, match="empty"):
        Query.parse(None, minus=["x"])
    q = Query.parse("a", plus=["2:b"], minus=["c"])
    assert [t.signed_weight for t in q.terms] == [1.0, 2.0, -1.0]


def test_query_algebra():
    q = Query.text("beach") + 0.5 * Query.text("sunset") - Query.image("x.jpg")
    assert [(t.kind, t.value, t.signed_weight) for t in q.terms] == [
        ("text", "beach", 1.0),
        ("text", "sunset", 0.5),
        ("image", "x.jpg", -1.0),
    ]
    assert q.texts == ["beach", "sunset"] and q.images == ["x.jpg"]


def test_combine_normalizes():
    terms = (Term("text", "a", 2.0), Term("text", "b", 1.0, negative=True))
    v = np.eye(3, dtype=np.float32)[:2]
    out = combine(terms, v)
    assert np.allclose(out, np.array([2, -1, 0]) / np.sqrt(5))
    with pytest.raises(QueryError, match="cancel out"):
        combine((Term("text", "a"), Term("text", "a", negative=True)), np.ones((2, 3)))


def test_rank_orders_filters_and_breaks_ties_by_id():
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.7], dtype=np.float32)
    ids = np.array([7, 3, 2, -1, 9])
    assert rank(scores, ids, 10) == [
        (3, pytest.approx(0.9)),
        (9, pytest.approx(0.7)),
        (2, 0.5),
        (7, 0.5),
    ]
    assert [i for i, _ in rank(scores, ids, 2, exclude=[3])] == [9, 2]
    assert [i for i, _ in rank(scores, ids, 10, min_score=0.6)] == [3, 9]


@pytest.mark.parametrize("k", [0, -1, 10_001, 1.5, True, "3"])
def test_check_k(k):
    with pytest.raises(QueryError):
        check_k(k)


def test_gather_terms_keeps_a_query_then_plus_then_minus():
    q = Query.text("beach") + 2 * Query.text("sunset")
    terms = gather_terms(q, plus="@42", minus=["0.5:people"])
    assert [(t.kind, t.value, t.weight, t.negative) for t in terms] == [
        ("text", "beach", 1.0, False),
        ("text", "sunset", 2.0, False),
        ("image", "42", 1.0, False),
        ("text", "people", 0.5, True),
    ]
    assert terms[2].indexed_id() == 42
    with pytest.raises(QueryError, match="by its id"):
        Term.parse("@photos/a.jpg").indexed_id()
    with pytest.raises(QueryError, match="give some text or an indexed image"):
        require_positive(gather_terms(None, minus=["people"]), "some text or an indexed image")
