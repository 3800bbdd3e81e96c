"""lowBoundary()/highBoundary() for decimals, dates, dateTimes and times (SQL on FHIR: experimental)."""

from __future__ import annotations

import calendar
import re
from decimal import Decimal
from typing import Any

# ASCII digits to the very end (\Z, not $, which also matches before a final newline): exactly what the SQL
# compiler's regular expressions (views/sql/boundaries.py) accept.
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?\Z", re.ASCII)
_TIME = re.compile(r"^(\d{2})(?::(\d{2})(?::(\d{2})(?:\.(\d+))?)?)?\Z", re.ASCII)
_ZONE = re.compile(r"(Z|[+-]\d{2}:\d{2})\Z", re.ASCII)


def boundary(value: Any, high: bool, type_hint: str | None = None) -> Any:
    if type(value) in (int, float):
        return _decimal(value, high)
    if not isinstance(value, str):
        return None
    if type_hint in ("dateTime", "instant") or "T" in value:
        return _datetime(value, high)
    if _TIME.match(value) and type_hint != "date":
        return _time(value, high)
    match = _DATE.match(value)
    if match is None:
        return None
    return _date(match, high)


def _decimal(value: float, high: bool) -> float | None:
    text = repr(value) if type(value) is float else str(value)
    if "e" in text or "E" in text:
        return None
    digits = len(text.split(".")[1]) if "." in text else 0
    half = Decimal(5) / Decimal(10) ** (digits + 1)
    exact = Decimal(text)
    return float(exact + half if high else exact - half)


def _date(match: re.Match[str], high: bool) -> str:
    year, month, day = match.group(1), match.group(2), match.group(3)
    if month is None:
        month = "12" if high else "01"
    if day is None:
        day = f"{calendar.monthrange(int(year), int(month))[1]:02d}" if high else "01"
    return f"{year}-{month}-{day}"


def _time(value: str, high: bool) -> str | None:
    match = _TIME.match(value)
    if match is None:
        return None
    hour, minute, second, fraction = match.groups()
    fill = "59" if high else "00"
    minute = minute or fill
    second = second or fill
    fraction = (fraction or ("999" if high else "000"))[:3].ljust(3, "9" if high else "0")
    return f"{hour}:{minute}:{second}.{fraction}"


def _datetime(value: str, high: bool) -> str | None:
    date_part, _, rest = value.partition("T")
    match = _DATE.match(date_part)
    if match is None:
        return None
    date = _date(match, high)
    zone = ""
    zone_match = _ZONE.search(rest)
    if zone_match:
        zone = zone_match.group(1)
        rest = rest[: zone_match.start()]
    time = _time(rest, high) if rest else ("23:59:59.999" if high else "00:00:00.000")
    if time is None:
        return None
    # Without a zone, the instant could be in any zone: the widest bounds are +14:00 and -12:00.
    return f"{date}T{time}{zone or ('-12:00' if high else '+14:00')}"
