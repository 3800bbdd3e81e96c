"""lowBoundary()/highBoundary() of dates, dateTimes and times as SQL: ``views/fhirpath/boundaries.py`` written
with DuckDB's string functions and regular expressions (RE2: ASCII ``\\d``, ``$`` only at the very end).

A date and a dateTime look alike in JSON: as in the evaluator, ``x.ofType(dateTime)`` says which, and
without that hint the text decides (a ``T`` makes a dateTime, ``hh:mm...`` a time, anything else a date).
Each expression is NULL where the evaluator's boundary is empty. Decimals are not here: the evaluator
counts the digits the number was written with (``1`` and ``1.0`` differ), which DuckDB's DOUBLE forgets.
"""

from __future__ import annotations

_DATE = r"\d{4}(-\d{2}(-\d{2})?)?"
_TIME = r"\d{2}(:\d{2}(:\d{2}(\.\d+)?)?)?"
_ZONE = r"(Z|[+-]\d{2}:\d{2})$"


def boundary_sql(value: str, high: bool, hint: str | None) -> str:
    """SQL for ``boundary(value, high, hint)`` of a string ``value`` (an SQL expression, NULL for empty)."""
    if hint in ("dateTime", "instant"):
        return _datetime(value, high)
    time = "" if hint == "date" else f"WHEN regexp_full_match({value}, '{_TIME}') THEN {_time(value, high)} "
    return f"(CASE WHEN contains({value}, 'T') THEN {_datetime(value, high)} {time}ELSE {_date(value, high)} END)"


def _date(value: str, high: bool) -> str:
    if high:
        month = f"strftime(last_day(CAST({value} || '-01' AS DATE)), '%Y-%m-%d')"
        year = f"{value} || '-12-31'"
    else:
        month, year = f"{value} || '-01'", f"{value} || '-01-01'"
    return (
        f"(CASE WHEN regexp_full_match({value}, '{_DATE}') THEN "
        f"(CASE length({value}) WHEN 10 THEN {value} WHEN 7 THEN {month} ELSE {year} END) END)"
    )


def _time(value: str, high: bool) -> str:
    """``hh[:mm[:ss[.fff]]]`` (already matched) filled to ``hh:mm:ss.fff``: the low or high end of the range."""
    fill, digit = ("59", "9") if high else ("00", "0")
    minute = f"coalesce(nullif(regexp_extract({value}, '^\\d{{2}}:(\\d{{2}})', 1), ''), '{fill}')"
    second = f"coalesce(nullif(regexp_extract({value}, '^\\d{{2}}:\\d{{2}}:(\\d{{2}})', 1), ''), '{fill}')"
    digits = f"nullif(regexp_extract({value}, '\\.(\\d+)$', 1), '')"
    fraction = f"coalesce(rpad(left({digits}, 3), 3, '{digit}'), '{digit * 3}')"
    return f"(left({value}, 2) || ':' || {minute} || ':' || {second} || '.' || {fraction})"


def _datetime(value: str, high: bool) -> str:
    """The date part's boundary, ``T``, the time's (or the whole day's) and the zone (or the widest one)."""
    cut = f"strpos({value}, 'T')"
    date_part = f"(CASE WHEN {cut} > 0 THEN left({value}, {cut} - 1) ELSE {value} END)"
    rest = f"(CASE WHEN {cut} > 0 THEN substr({value}, {cut} + 1) ELSE '' END)"
    zone = f"regexp_extract({rest}, '{_ZONE}', 1)"
    clock = f"left({rest}, length({rest}) - length({zone}))"
    whole_day = "'23:59:59.999'" if high else "'00:00:00.000'"
    time = (
        f"(CASE WHEN {clock} = '' THEN {whole_day} "
        f"WHEN regexp_full_match({clock}, '{_TIME}') THEN {_time(clock, high)} END)"
    )
    widest = "'-12:00'" if high else "'+14:00'"
    return f"({_date(date_part, high)} || 'T' || {time} || (CASE WHEN {zone} = '' THEN {widest} ELSE {zone} END))"
