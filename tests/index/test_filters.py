"""Date, camera and place filters: parsing, and searches on a real index of generated photos
with EXIF (tiny open_clip model), alone and with style and prefix, on flat and HNSW."""

from __future__ import annotations

import os
from datetime import datetime, timezone

import pytest

from clipsearch import ImageIndex
from clipsearch.errors import QueryError
from clipsearch.index.filters import DEFAULT_KM, Filters, parse_date, parse_near
from tests.helpers import save_photo

PARIS, NICE = (48.8566, 2.3522), (43.7102, 7.2620)
COLORS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle"]
OLD_MTIME = datetime(2010, 3, 3, tzinfo=timezone.utc).timestamp()


def local(*parts: int) -> float:
    return datetime(*parts).astimezone().timestamp()


# --- parsing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start"),
    [
        ("2023", (2023, 1, 1)),
        ("2023-06", (2023, 6, 1)),
        ("2023-6", (2023, 6, 1)),
        ("2023-06-15", (2023, 6, 15)),
        ("2023-06-15T14:30", (2023, 6, 15, 14, 30)),
        ("2023-06-15 14:30:05", (2023, 6, 15, 14, 30, 5)),
    ],
)
def test_dates_in_local_time(text, start):
    assert parse_date(text) == local(*start)


def test_dates_with_offsets_and_objects():
    assert (
        parse_date("2023-06-15T14:30:00+02:00")
        == datetime(2023, 6, 15, 12, 30, tzinfo=timezone.utc).timestamp()
    )
    assert parse_date("2023-06-15T12:30:00Z") == parse_date("2023-06-15T14:30:00+02:00")
    assert parse_date(datetime(2023, 6, 15).date()) == local(2023, 6, 15)
    assert parse_date(1_700_000_000) == 1_700_000_000


@pytest.mark.parametrize("bad", ["", "june", "2023-13", "2023-02-30", "23", "2023/06/15", True])
def test_a_bad_date_is_one_clear_error(bad):
    with pytest.raises(QueryError, match="is not a date: give YYYY"):
        Filters.parse(after=bad)


def test_near_forms_and_errors():
    assert parse_near("48.85,2.35") == (48.85, 2.35, DEFAULT_KM)
    assert parse_near(" 48.85 , 2.35 , 0.5 ") == (48.85, 2.35, 0.5)
    assert parse_near((1, 2, 3)) == (1.0, 2.0, 3.0)
    assert parse_near("-33.87,-70.6,5") == (-33.87, -70.6, 5.0)
    for bad, says in [
        ("48.85", "LAT,LON"),
        ("a,b", "LAT,LON"),
        ("1,2,3,4", "LAT,LON"),
        ("nan,2", "LAT,LON"),
        ("91,0", "latitude"),
        ("0,181", "latitude"),
        ("0,0,0", "more than 0 km"),
    ]:
        with pytest.raises(QueryError, match=says):
            parse_near(bad)


def test_filters_refuse_an_empty_range_and_an_empty_camera():
    with pytest.raises(QueryError, match="no photo could match"):
        Filters.parse(after="2023-06", before="2023-06")
    with pytest.raises(QueryError, match="camera filter is empty"):
        Filters.parse(camera="  ")
    assert not Filters.parse().active
    assert Filters.parse(camera=" canon  eos ").camera == "canon eos"


# --- searching -------------------------------------------------------------------------------


@pytest.fixture
def album(tmp_path, tiny_model):
    """18 JPEGs: 2021/2022/2023 (6 each, June), two cameras, Paris or Nice or no GPS, in two
    folders; plus 3 without a usable date (year 0, 9999, none), dated by an old mtime."""
    root = tmp_path / "album"
    expected = {}
    for i, (color, shape) in enumerate((c, s) for c in COLORS for s in SHAPES):
        year = 2021 + i % 3
        camera = ("Canon", "Canon EOS R5") if i % 2 else ("FUJIFILM", "X100V")
        place = [PARIS, NICE, None][i // 6]
        folder = "trips" if i < 9 else "home"
        path = save_photo(
            root / folder / f"{color}_{shape}.jpg",
            color,
            shape,
            taken=f"{year}:06:{10 + i:02d} 12:00:00",
            offset="+02:00",
            make=camera[0],
            model=camera[1],
            gps=place,
        )
        expected[str(path)] = (year, camera[1] if i % 2 else "FUJIFILM X100V", place)
    for name, taken in [("zero", "0000:00:00 00:00:00"), ("nines", "9999:12:31 23:59:59")]:
        path = save_photo(root / "undated" / f"{name}.jpg", "red", "square", taken=taken)
        os.utime(path, (OLD_MTIME, OLD_MTIME))
        expected[str(path)] = (2010, None, None)
    folder = tmp_path / "idx"
    with ImageIndex.open_or_create(folder, model=tiny_model, device="cpu") as index:
        assert index.add([root]).added == 20
    return folder, root, expected


def by_year(expected, *years):
    return {p for p, (y, _, _) in expected.items() if y in years}


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_every_filter_keeps_exactly_the_matching_photos(album, index_type):
    folder, root, expected = album
    with ImageIndex.open(folder, device="cpu") as index:
        if index_type != "flat":
            index.reindex(index_type)

        def paths(**filters):
            hits = index.search("a photo", k=50, **filters)
            return {h.path for h in hits}

        assert paths(after="2022", before="2023") == by_year(expected, 2022)
        assert paths(after="2023-01-01T00:00:00+14:00") == by_year(expected, 2023)
        assert paths(before="2021") == by_year(expected, 2010)
        assert paths(before=2000) == set()
        canon = {p for p, (_, cam, _) in expected.items() if cam == "Canon EOS R5"}
        assert paths(camera="canon eos") == canon
        assert paths(camera="x100") == {
            p for p, (_, c, _) in expected.items() if c == "FUJIFILM X100V"
        }
        near_paris = {p for p, (_, _, place) in expected.items() if place == PARIS}
        assert paths(near="48.86,2.35,5") == near_paris
        assert paths(near=(NICE[0], NICE[1] + 0.2)) == set()  # 16 km away: beyond 10 km
        assert len(paths(near=(NICE[0], NICE[1] + 0.2, 20))) == 6
        both = paths(near="48.86,2.35", camera="canon", after="2022")
        assert both == near_paris & canon & (by_year(expected, 2022, 2023))
        assert both  # the combination is not empty by construction


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
def test_filters_combine_with_style_and_prefix_and_return_k(album, index_type):
    folder, root, expected = album
    with ImageIndex.open(folder, device="cpu") as index:
        ids = {h.path: h.id for h in index.search("x", k=50)}
        photo = {p for n, p in enumerate(sorted(ids)) if n % 2 == 0}
        index.catalog.set_styles([(ids[p], "photo" if p in photo else "sketch", 0.9) for p in ids])
        if index_type != "flat":
            index.reindex(index_type)
        trips = str(root / "trips")
        want = {p for p in photo & by_year(expected, 2022, 2023) if p.startswith(trips)}
        assert len(want) >= 3  # by construction
        combined = {"path_prefix": trips, "styles": ["photo"], "after": "2022"}
        got = index.search("a red circle", k=50, **combined)
        assert {h.path for h in got} == want
        assert len(index.search("a red circle", k=2, **combined)) == 2
        # k results when k exist, for every filter and a query image
        for filters in ({"after": "2022"}, {"camera": "canon"}, {"near": "48.86,2.35"}):
            n = len(index.search("x", k=50, **filters))
            assert len(index.search("x", k=n, **filters)) == n
            assert len(index.search("x", k=n - 1, **filters)) == n - 1
        own = next(iter(by_year(expected, 2022)))
        similar = index.similar(own, k=50, after="2022", before="2023")
        assert {h.path for h in similar} == by_year(expected, 2022) - {own}
        assert index.similar(ids[own], k=50, camera="no such camera") == []


def test_results_carry_the_date_camera_and_place(album):
    folder, root, expected = album
    with ImageIndex.open(folder, device="cpu") as index:
        hits = index.search("x", k=50)
        assert len(hits) == 20
        for h in hits:
            year, camera, place = expected[h.path]
            assert h.taken.startswith(str(year))
            if year == 2010:
                assert (h.taken_source, h.camera, h.lat) == ("mtime", None, None)
            else:
                assert h.taken.endswith("12:00:00+02:00") and h.taken_source == "exif"
                assert h.camera == camera
                assert (h.lat, h.lon) == ((None, None) if place is None else pytest.approx(place))
            assert h.to_dict()["taken"] == h.taken


def test_search_indexed_takes_the_filters_too(album):
    folder, _, expected = album
    with ImageIndex.open(folder, device="cpu") as index:
        hits = index.search_indexed("x", k=50, before="2022", after="2021")
        assert {h.path for h in hits} == by_year(expected, 2021)
        with pytest.raises(QueryError, match="near"):
            index.search_indexed("x", near="north")
