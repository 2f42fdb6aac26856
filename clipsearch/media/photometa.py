"""What a photo's EXIF says about when, with what and where it was taken.

Read from the header only (Pillow's ``getexif`` never decodes pixels). Values that cannot be
true are treated as absent, never as an error: a date outside :data:`YEARS` (cameras write
``0000:00:00`` or ``9999:...`` when their clock was never set) or that does not parse, a GPS
position out of range or with a zero denominator. A photo without a usable date gets the
file's modification time, marked as such (``taken_source == "mtime"``).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

YEARS = range(1900, 2101)  # dates outside these years are a camera's unset clock, not a date
EARTH_KM = 6371.0088

_EXIF_IFD, _GPS_IFD = 0x8769, 0x8825
_MAKE, _MODEL, _DATETIME = 0x010F, 0x0110, 0x0132
_ORIGINAL, _OFFSET_ORIGINAL = 0x9003, 0x9011


@dataclass(frozen=True)
class PhotoMeta:
    """When, with what and where a photo was taken; None where unknown.

    ``taken`` is UTC epoch seconds. ``taken_source`` says where it comes from: ``"exif"``
    (with ``offset_min``, the UTC offset in minutes, when the camera wrote one; without it
    the camera's clock is read as this machine's local time) or ``"mtime"`` (the file's
    modification time).
    """

    taken: float | None = None
    taken_source: str | None = None
    offset_min: int | None = None
    camera_make: str | None = None
    camera_model: str | None = None
    lat: float | None = None
    lon: float | None = None

    @property
    def camera(self) -> str | None:
        return camera_name(self.camera_make, self.camera_model)


def camera_name(make: str | None, model: str | None) -> str | None:
    """``make model``, without the make twice when the model starts with its first word
    (``NIKON CORPORATION`` + ``NIKON D750`` is ``NIKON D750``)."""
    if make and model and model.lower().startswith(make.split()[0].lower()):
        return model
    return " ".join(p for p in (make, model) if p) or None


def read_photo_meta(source: bytes | str, mtime_ns: int) -> PhotoMeta:
    """The metadata of an image file (its bytes or its path); never raises.

    Args:
        source: the file's bytes, or its path (only the header is read).
        mtime_ns: the file's modification time, the date when EXIF has none.
    """
    from PIL import Image

    try:
        fp: Any = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(fp) as img:
            exif = img.getexif()
            main = dict(exif)
            sub = dict(exif.get_ifd(_EXIF_IFD))
            gps = dict(exif.get_ifd(_GPS_IFD))
    except Exception:  # not an image, or EXIF too damaged to read: only the mtime is known
        main, sub, gps = {}, {}, {}
    taken, offset = _exif_date(sub.get(_ORIGINAL) or main.get(_DATETIME), sub.get(_OFFSET_ORIGINAL))
    lat, lon = _gps(gps)
    return PhotoMeta(
        taken=taken if taken is not None else mtime_ns / 1e9,
        taken_source="exif" if taken is not None else "mtime",
        offset_min=offset,
        camera_make=_text(main.get(_MAKE)),
        camera_model=_text(main.get(_MODEL)),
        lat=lat,
        lon=lon,
    )


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = " ".join(value.replace("\0", " ").split())
    return value[:200] or None


def _exif_date(raw: Any, raw_offset: Any) -> tuple[float | None, int | None]:
    """(UTC epoch seconds, offset minutes) of an EXIF ``YYYY:MM:DD HH:MM:SS``; (None, None)
    when it is not a usable date."""
    text = _text(raw)
    if text is None:
        return None, None
    try:
        when = datetime.strptime(text[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None, None
    if when.year not in YEARS:
        return None, None
    offset = _offset_minutes(_text(raw_offset))
    try:
        if offset is None:
            return when.astimezone().timestamp(), None  # naive: this machine's local time
        return when.replace(tzinfo=timezone(timedelta(minutes=offset))).timestamp(), offset
    except (OverflowError, OSError, ValueError):
        return None, None


def _offset_minutes(text: str | None) -> int | None:
    """Minutes of an EXIF offset ``+HH:MM``; None when absent or malformed."""
    if not text or len(text) != 6 or text[0] not in "+-" or text[3] != ":":
        return None
    hours, minutes = text[1:3], text[4:6]
    if not (hours.isdigit() and minutes.isdigit()) or int(hours) > 14 or int(minutes) > 59:
        return None
    total = int(hours) * 60 + int(minutes)
    return -total if text[0] == "-" else total


def _gps(gps: dict[int, Any]) -> tuple[float | None, float | None]:
    """(lat, lon) in degrees from a GPS IFD; (None, None) when absent or impossible."""
    try:
        lat = _degrees(gps[2], gps.get(1), "S")
        lon = _degrees(gps[4], gps.get(3), "W")
    except Exception:  # missing, zero denominators, wrong types
        return None, None
    if not (math.isfinite(lat) and math.isfinite(lon)):
        return None, None
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        return None, None
    return round(lat, 7), round(lon, 7)  # about a centimetre: more is rounding noise


def _degrees(dms: Any, ref: Any, negative: str) -> float:
    d, m, s = (float(x) for x in dms)
    value = d + m / 60 + s / 3600
    ref = _text(ref) or ""
    return -value if ref.upper().startswith(negative) else value


def distance_km(lat: Any, lon: Any, lat0: float, lon0: float) -> Any:
    """Great-circle (haversine) distance in km from (lat0, lon0); NumPy arrays or floats."""
    import numpy as np

    p1, p2 = np.radians(lat0), np.radians(lat)
    dp, dl = p2 - p1, np.radians(np.asarray(lon) - lon0)
    a = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
