"""The decode queue is bounded by the bytes of the files in flight, not only by their count."""

from __future__ import annotations

import pytest

from clipsearch.index.pipeline import Candidate, Indexer, IndexOptions, Prepared
from clipsearch.media.files import FoundFile


class _Pool:
    """Runs each file at once and counts the bytes submitted and not yet taken back."""

    def __init__(self) -> None:
        self.now = self.most = 0

    def submit(self, fn, cand: Candidate, *args):
        self.now += cand.found.size
        self.most = max(self.most, self.now)
        return _Done(self, fn(cand, *args), cand.found.size)


class _Done:
    def __init__(self, pool: _Pool, value: Prepared, size: int):
        self.pool, self.value, self.size = pool, value, size

    def result(self) -> Prepared:
        self.pool.now -= self.size
        return self.value


def _run(sizes: list[int], queue_bytes: int) -> tuple[list[str], int]:
    """The order the files come out in, and the most bytes ever in flight."""
    options = IndexOptions(batch_size=4, workers=2, queue_bytes=queue_bytes)
    indexer = Indexer(None, lambda: None, lambda: None, options)  # type: ignore[arg-type]
    indexer._prepare = lambda cand, gone_shas: Prepared(cand)  # type: ignore[method-assign]
    cands = [Candidate(FoundFile("/r", f"{i}.jpg", s, 0), None) for i, s in enumerate(sizes)]
    pool = _Pool()
    order = [p.cand.found.rel for p in indexer._prepare_all(pool, cands, frozenset())]  # type: ignore[arg-type]
    return order, pool.most


@pytest.mark.parametrize("queue_bytes", [1, 100, 250, 10_000])
def test_files_in_flight_stay_under_the_byte_bound(queue_bytes):
    sizes = [100, 30, 200, 50, 50, 90, 10, 10, 300, 5]
    order, most = _run(sizes, queue_bytes)
    assert order == [f"{i}.jpg" for i in range(len(sizes))]  # input order, none lost
    # over the bound only by a single file alone in flight
    assert most <= max(queue_bytes, max(sizes))
    if queue_bytes >= sum(sizes):
        assert most > max(sizes)  # a generous bound lets several run ahead
