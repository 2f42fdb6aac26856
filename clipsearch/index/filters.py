"""Filters on when, with what and where a photo was taken: ``after``, ``before``, ``camera``
and ``near``, parsed once for the CLI, the Python API and the web API alike.

Dates are ``2023``, ``2023-06``, ``2023-06-15`` or an ISO datetime (``2023-06-15T14:30``,
with or without an offset such as ``+02:00`` or ``Z``); without an offset they are this
machine's local time. ``after D`` keeps photos taken at or after the start of D; ``before D``
keeps those taken before the start of D: ``after 2023-06 before 2023-07`` is June 2023, and
``before 2023`` ends on 31 December 2022. A photo without an EXIF date is dated by its file's
modification time.

``camera`` keeps photos whose make and model hold the text, in any case. ``near`` is
``LAT,LON`` or ``LAT,LON,KM`` (default :data:`DEFAULT_KM`): photos with a GPS position at
most KM from there (great-circle distance). Photos without a position never pass it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from clipsearch.errors import QueryError

DEFAULT_KM = 10.0
_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{1,2}))?(?:-(\d{1,2}))?$")

DateLike = str | date | datetime | float | int


@dataclass(frozen=True)
class Filters:
    """Photo metadata filters, parsed; each applies only when set.

    Build one with :meth:`parse`, which checks every value.
    """

    taken_from: float | None = None  # UTC epoch seconds, inclusive
    taken_until: float | None = None  # exclusive
    camera: str | None = None
    near: tuple[float, float, float] | None = None  # (lat, lon, km)

    @classmethod
    def parse(
        cls,
        *,
        after: DateLike | None = None,
        before: DateLike | None = None,
        camera: str | None = None,
        near: str | tuple[float, ...] | None = None,
    ) -> Filters:
        """Check and convert the filters' values (see the module's docs for their forms).

        Args:
            after: keep photos taken at or after the start of this date.
            before: keep photos taken before the start of this date.
            camera: keep photos whose camera make and model hold this text (any case).
            near: ``"LAT,LON[,KM]"`` or a (lat, lon) or (lat, lon, km) tuple.

        Raises:
            QueryError: a value does not parse or is out of range.
        """
        start = None if after is None else parse_date(after, "after")
        end = None if before is None else parse_date(before, "before")
        if start is not None and end is not None and start >= end:
            raise QueryError(
                f"after {after} is not before {before}: no photo could match; give an earlier "
                "after or a later before"
            )
        if camera is not None:
            camera = " ".join(str(camera).split())
            if not camera:
                raise QueryError(
                    "camera filter is empty; give part of a make or model, like 'canon'"
                )
        return cls(start, end, camera, None if near is None else parse_near(near))

    @property
    def active(self) -> bool:
        values = (self.taken_from, self.taken_until, self.camera, self.near)
        return any(v is not None for v in values)

    def catalog_args(self) -> dict[str, Any]:
        """Keyword arguments of :meth:`clipsearch.store.catalog.Catalog.ids_matching`."""
        return {
            "taken_from": self.taken_from,
            "taken_until": self.taken_until,
            "camera": self.camera,
            "near": self.near,
        }


def parse_date(value: DateLike, what: str = "date") -> float:
    """UTC epoch seconds of the start of a date (see the module's docs).

    Raises:
        QueryError: it is not one of the accepted forms.
    """
    try:
        when = _to_datetime(value)
        if when.tzinfo is None:
            when = when.astimezone()  # this machine's local time
        return when.timestamp()
    except (ValueError, OverflowError, OSError, TypeError) as e:
        raise QueryError(
            f"{what} {value!r} is not a date: give YYYY, YYYY-MM, YYYY-MM-DD or an ISO "
            "datetime like 2023-06-15T14:30"
        ) from e


def _to_datetime(value: DateLike) -> datetime:
    if isinstance(value, bool):
        raise TypeError("a bool is not a date")
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(float(value)).astimezone()
    text = str(value).strip()
    match = _PARTIAL.match(text)
    if match:
        year, month, day = (int(g) if g else 1 for g in match.groups())
        return datetime(year, month, day)
    return datetime.fromisoformat(text.replace("z", "Z"))


def parse_near(value: str | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """(lat, lon, km) of ``"LAT,LON[,KM]"`` or a tuple.

    Raises:
        QueryError: not two or three numbers, or out of range.
    """
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError):
        numbers = []
    if len(numbers) not in (2, 3) or not all(math.isfinite(n) for n in numbers):
        raise QueryError(f"near {value!r}: give LAT,LON or LAT,LON,KM, like 48.85,2.35,5")
    lat, lon = numbers[0], numbers[1]
    km = numbers[2] if len(numbers) == 3 else DEFAULT_KM
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise QueryError(f"near {value!r}: latitude must be in -90..90 and longitude in -180..180")
    if km <= 0:
        raise QueryError(f"near {value!r}: the distance must be more than 0 km")
    return lat, lon, km
