"""Reading when, with what and where a photo was taken from generated JPEGs with EXIF, and
never failing on values a camera with an unset clock or a broken GPS writes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from PIL import ImageFile
from PIL.TiffImagePlugin import IFDRational

from clipsearch.media.photometa import camera_name, distance_km, read_photo_meta
from tests.helpers import draw_image, save_photo

MTIME = 1_600_000_000.0


def test_date_with_offset_camera_and_place(tmp_path):
    path = save_photo(
        tmp_path / "a.jpg",
        taken="2023:06:15 14:30:00",
        offset="+02:00",
        make="Canon\0 ",
        model=" EOS R5 ",
        gps=(48.8584, -2.2945),
    )
    meta = read_photo_meta(path.read_bytes(), 0)
    expected = datetime(2023, 6, 15, 12, 30, tzinfo=timezone.utc).timestamp()
    assert (meta.taken, meta.taken_source, meta.offset_min) == (expected, "exif", 120)
    assert (meta.camera_make, meta.camera_model, meta.camera) == ("Canon", "EOS R5", "Canon EOS R5")
    assert meta.lat == pytest.approx(48.8584, abs=1e-6)
    assert meta.lon == pytest.approx(-2.2945, abs=1e-6)


def test_date_without_offset_is_local_time(tmp_path):
    path = save_photo(tmp_path / "a.jpg", taken="2021:01:02 03:04:05", offset="nonsense")
    meta = read_photo_meta(str(path), 0)
    assert meta.taken == datetime(2021, 1, 2, 3, 4, 5).astimezone().timestamp()
    assert (meta.taken_source, meta.offset_min) == ("exif", None)


@pytest.mark.parametrize(
    "taken", ["0000:00:00 00:00:00", "9999:12:31 23:59:59", "1850:01:01 00:00:00", "garbage", ""]
)
def test_an_impossible_date_falls_back_to_the_mtime(tmp_path, taken):
    path = save_photo(tmp_path / "a.jpg", taken=taken, make="Nikon", mtime=MTIME)
    meta = read_photo_meta(str(path), int(MTIME * 1e9))
    assert (meta.taken, meta.taken_source) == (MTIME, "mtime")
    assert meta.camera == "Nikon"  # the rest of the EXIF is kept


@pytest.mark.parametrize(
    "gps",
    [
        (95.0, 10.0),
        (10.0, 190.0),
        {
            1: "N",
            2: (IFDRational(1, 0), IFDRational(0, 1), IFDRational(0, 1)),
            3: "E",
            4: (1, 2, 3),
        },
        {1: "N", 2: (1.0, 2.0), 3: "E", 4: (1.0, 2.0, 3.0)},
        {1: "N", 2: (10.0, 0.0, 0.0)},
    ],
)
def test_an_impossible_position_is_absent(tmp_path, gps):
    path = save_photo(tmp_path / "a.jpg", taken="2020:05:05 05:05:05", gps=gps)
    meta = read_photo_meta(str(path), 0)
    assert (meta.lat, meta.lon) == (None, None)
    assert meta.taken_source == "exif"


def test_files_without_exif_or_not_images_get_the_mtime(tmp_path):
    png = draw_image(tmp_path / "a.png")
    for source in (str(png), png.read_bytes(), b"not an image", str(tmp_path / "gone.jpg")):
        meta = read_photo_meta(source, int(MTIME * 1e9))
        assert (meta.taken, meta.taken_source, meta.camera, meta.lat) == (
            MTIME,
            "mtime",
            None,
            None,
        )


def test_reading_the_metadata_decodes_no_pixels(tmp_path, monkeypatch):
    path = save_photo(tmp_path / "a.jpg", taken="2023:06:15 14:30:00", make="Fuji")

    def no_decoding(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert read_photo_meta(str(path), 0).camera == "Fuji"
    assert read_photo_meta(path.read_bytes(), 0).taken_source == "exif"


def test_camera_name_and_distance():
    assert camera_name("NIKON CORPORATION", "NIKON D750") == "NIKON D750"
    assert camera_name(None, "X100V") == "X100V"
    assert camera_name(None, None) is None
    paris, london = (48.8566, 2.3522), (51.5074, -0.1278)
    assert distance_km(*london, *paris) == pytest.approx(343.5, abs=1.0)
    assert distance_km(*paris, *paris) == 0


def test_offsets_west_of_utc(tmp_path):
    path = save_photo(tmp_path / "a.jpg", taken="2023:12:31 20:00:00", offset="-05:00")
    meta = read_photo_meta(str(path), 0)
    when = datetime(2023, 12, 31, 20, tzinfo=timezone(timedelta(hours=-5)))
    assert (meta.taken, meta.offset_min) == (when.timestamp(), -300)
