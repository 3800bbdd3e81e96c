"""Which copy of a resource is newer, and the bookkeeping columns every current-state table carries.

The order of two copies of one resource (the rule the merge applies, in SQL and in Arrow alike):

1. both have a numeric ``meta.versionId``: the higher version wins;
2. otherwise both have ``meta.lastUpdated``: the later instant wins;
3. otherwise the copy from the run with the later ``transactionTime`` wins.

Equal means "the same copy": it is never rewritten, so merging one run twice changes nothing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

SOURCE = "_fhir_source"
TRANSACTION_TIME = "_fhir_transaction_time"
VERSION_ID = "_fhir_version_id"
LAST_UPDATED = "_fhir_last_updated"
BOOKKEEPING = (SOURCE, TRANSACTION_TIME, VERSION_ID, LAST_UPDATED)
#: Only in the merge source: "upsert" or "delete".
OPERATION = "_fhir_op"

_FRACTION = re.compile(r"(\.\d{6})\d+")
_MAX_VERSION_DIGITS = 18  # fits an int64


def parse_instant(text: object) -> datetime | None:
    """A FHIR instant/dateTime with a time zone as an aware UTC datetime; None when it is not one."""
    if not isinstance(text, str) or "T" not in text:
        return None
    try:
        value = datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00")))
    except ValueError:
        return None
    if value.tzinfo is None:
        return None  # a time without a zone cannot be ordered against others
    return value.astimezone(UTC)


def bookkeeping_fields() -> list[pa.Field]:
    import pyarrow as pa

    ts = pa.timestamp("us", tz="UTC")
    return [
        pa.field(SOURCE, pa.string()),
        pa.field(TRANSACTION_TIME, ts),
        pa.field(VERSION_ID, pa.int64()),
        pa.field(LAST_UPDATED, ts),
    ]


def version_ids(values: pa.Array) -> pa.Array:
    """``meta.versionId`` strings as int64 where they are plain numbers, else null."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = values.cast(pa.string())
    numeric = pc.and_(pc.utf8_is_digit(values), pc.less_equal(pc.utf8_length(values), _MAX_VERSION_DIGITS))
    return pc.if_else(numeric, values, pa.scalar(None, pa.string())).cast(pa.int64())


def instants(values: pa.Array) -> pa.Array:
    """``meta.lastUpdated`` strings as UTC timestamps (microseconds); null where not an instant."""
    import pyarrow as pa
    import pyarrow.compute as pc

    ts = pa.timestamp("us", tz="UTC")
    values = values.cast(pa.string())
    try:
        return pc.cast(values, ts)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        # Nanosecond fractions or a value that is not an instant: parse one by one.
        return pa.array([parse_instant(v) for v in values.to_pylist()], type=ts)


def newer_sql(s: str = "s", t: str = "t") -> str:
    """The rule above as a merge predicate: true when source row ``s`` is newer than target row ``t``."""
    v_s, v_t = f"{s}.{VERSION_ID}", f"{t}.{VERSION_ID}"
    lu_s, lu_t = f"{s}.{LAST_UPDATED}", f"{t}.{LAST_UPDATED}"
    both_v = f"({v_s} IS NOT NULL AND {v_t} IS NOT NULL)"
    both_lu = f"({lu_s} IS NOT NULL AND {lu_t} IS NOT NULL)"
    return (
        f"(({both_v} AND {v_s} > {v_t})"
        f" OR (NOT {both_v} AND {both_lu} AND {lu_s} > {lu_t})"
        f" OR (NOT {both_v} AND NOT {both_lu} AND {s}.{TRANSACTION_TIME} > {t}.{TRANSACTION_TIME}))"
    )


def deletes_sql(s: str = "s", t: str = "t") -> str:
    """A deletion applies to a row no later run wrote, and not to a copy updated after the deletion."""
    return (
        f"({t}.{TRANSACTION_TIME} <= {s}.{TRANSACTION_TIME} AND ({t}.{LAST_UPDATED} IS NULL OR "
        f"{s}.{LAST_UPDATED} IS NULL OR {t}.{LAST_UPDATED} <= {s}.{LAST_UPDATED}))"
    )


def newer_mask(
    s_version: pa.Array,
    s_updated: pa.Array,
    s_time: pa.Array,
    t_version: pa.Array,
    t_updated: pa.Array,
    t_time: pa.Array,
) -> pa.Array:
    """:func:`newer_sql` over Arrow arrays (nulls in ``t_*`` mean "no such row": always newer)."""
    import pyarrow.compute as pc

    both_v = pc.and_(pc.is_valid(s_version), pc.is_valid(t_version))
    both_lu = pc.and_(pc.is_valid(s_updated), pc.is_valid(t_updated))
    by_version = pc.and_(both_v, pc.fill_null(pc.greater(s_version, t_version), False))
    by_updated = pc.and_(pc.and_(pc.invert(both_v), both_lu), pc.fill_null(pc.greater(s_updated, t_updated), False))
    by_time = pc.and_(pc.and_(pc.invert(both_v), pc.invert(both_lu)), pc.fill_null(pc.greater(s_time, t_time), False))
    absent = pc.is_null(t_time)
    return pc.or_(absent, pc.or_(by_version, pc.or_(by_updated, by_time)))


def deletes_mask(d_time: pa.Array, d_updated: pa.Array, t_time: pa.Array, t_updated: pa.Array) -> pa.Array:
    """:func:`deletes_sql` over Arrow arrays (a null ``t_time`` means no row: nothing to delete)."""
    import pyarrow.compute as pc

    not_later_run = pc.fill_null(pc.less_equal(t_time, d_time), False)
    not_updated_after = pc.or_(
        pc.or_(pc.is_null(t_updated), pc.is_null(d_updated)), pc.fill_null(pc.less_equal(t_updated, d_updated), False)
    )
    return pc.and_(not_later_run, not_updated_after)
